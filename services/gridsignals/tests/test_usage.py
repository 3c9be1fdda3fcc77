"""Node load → usage/demand report objects."""

from __future__ import annotations

import pytest
from gridcharge.gridsignals.core.usage import UsageAccumulator, usage_report


def test_time_weighted_mean_per_period() -> None:
    acc = UsageAccumulator()
    acc.add("site", 0, 10_000)
    acc.add("site", 60, 20_000)
    assert acc.take(120) == {"site": pytest.approx(15_000)}
    assert acc.take(180) == {"site": pytest.approx(20_000)}  # the last value holds
    acc.add("site", 100, 1)  # older than what we have: ignored
    assert acc.take(240) == {"site": pytest.approx(20_000)}


def test_report_object_usage_kwh_and_demand_kw() -> None:
    r = usage_report("ev-1", "p-1", "gridcharge", ["USAGE", "DEMAND", "PRICE"], {"site": 12_000.0}, 0, 900)
    assert r is not None and r["eventID"] == "ev-1" and r["clientName"] == "gridcharge"
    [res] = r["resources"]
    assert res["resourceName"] == "site" and res["intervalPeriod"]["duration"] == "PT900S"
    assert res["intervals"][0]["payloads"] == [{"type": "USAGE", "values": [3.0]}, {"type": "DEMAND", "values": [12.0]}]


def test_nothing_to_report() -> None:
    assert usage_report("e", "p", "c", ["PRICE"], {"site": 1.0}, 0, 900) is None
    assert usage_report("e", "p", "c", ["USAGE"], {}, 0, 900) is None
