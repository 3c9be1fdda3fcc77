"""OpenADR event JSON → capacity-limit intervals, including hostile and malformed input."""

from __future__ import annotations

import math
from typing import Any

import pytest
from gridcharge.gridsignals.core.oadr import EventError, parse_duration_s, parse_event, parse_time_s
from hypothesis import given, settings
from hypothesis import strategies as st

T0 = parse_time_s("2026-12-05T14:00:00Z")


def event(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "id": "ev-1",
        "programID": "prog-1",
        "eventName": "evening peak",
        "intervalPeriod": {"start": "2026-12-05T14:00:00Z", "duration": "PT1H"},
        "payloadDescriptors": [
            {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KW"}
        ],
        "intervals": [
            {"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [30]}]},
            {"id": 1, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [15]}]},
        ],
    }
    ev.update(over)
    return ev


def test_durations() -> None:
    assert parse_duration_s("PT15M") == 900
    assert parse_duration_s("P1DT2H") == 26 * 3600
    assert parse_duration_s("PT0.5S") == 0.5
    assert parse_duration_s("P9999Y") == math.inf
    for bad in ("", "P", "PT", "15M", "PT-1H", 15, "P" + "1" * 80 + "D"):
        with pytest.raises(EventError):
            parse_duration_s(bad)


def test_times_need_a_zone() -> None:
    assert parse_time_s("2026-12-05T15:00:00+01:00") == T0
    with pytest.raises(EventError):
        parse_time_s("2026-12-05T14:00:00")


def test_sequential_intervals_total_kw_split_over_phases() -> None:
    ev = parse_event(event())
    assert [(i.start - T0, i.end - T0) for i in ev.limits] == [(0, 3600), (3600, 7200)]
    assert ev.limits[0].limit_w == pytest.approx((10_000, 10_000, 10_000))
    assert ev.limits[1].limit_w == pytest.approx((5_000, 5_000, 5_000))
    assert not ev.has_price and ev.report_types == ()


def test_per_phase_values_units_and_own_periods() -> None:
    ev = parse_event(
        event(
            payloadDescriptors=[{"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "W"}],
            intervals=[
                {
                    "id": 0,
                    "intervalPeriod": {"start": "2026-12-05T16:00:00Z", "duration": "PT30M"},
                    "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [1000, 2000, 3000]}],
                }
            ],
        )
    )
    assert ev.limits[0].start == T0 + 7200 and ev.limits[0].end == T0 + 9000
    assert ev.limits[0].limit_w == (1000.0, 2000.0, 3000.0)


def test_open_ended_and_targets_of_both_versions() -> None:
    ev = parse_event(
        event(
            intervalPeriod={"start": "2026-12-05T14:00:00Z"}, intervals=[event()["intervals"][0]], targets=["feeder-7"]
        )
    )
    assert ev.limits[0].end == math.inf and ev.targets == ("feeder-7",)
    ev30 = parse_event(event(targets=[{"type": "RESOURCE_NAME", "values": ["tr-1", "tr-2"]}]))
    assert ev30.targets == ("tr-1", "tr-2")


def test_price_and_report_requests_are_noted() -> None:
    ev = parse_event(
        event(
            intervals=[{"id": 0, "payloads": [{"type": "PRICE", "values": [0.31]}]}],
            reportDescriptors=[{"payloadType": "USAGE"}, {"payloadType": "DEMAND"}, {"payloadType": "USAGE"}],
        )
    )
    assert ev.has_price and ev.limits == () and ev.report_types == ("USAGE", "DEMAND")
    assert [(p.start - T0, p.end - T0, p.price_per_kwh) for p in ev.prices] == [(0, 3600, 0.31)]


def test_price_intervals_units_and_currency() -> None:
    ev = parse_event(
        event(
            payloadDescriptors=[{"payloadType": "PRICE", "units": "MWH", "currency": "eur"}],
            intervals=[
                {"id": 0, "payloads": [{"type": "PRICE", "values": [310]}]},
                {"id": 1, "payloads": [{"type": "PRICE", "values": [-20]}]},  # surplus: negative prices are real
                {
                    "id": 2,
                    "intervalPeriod": {"start": "2026-12-05T18:00:00Z", "duration": "P9999Y"},  # until further notice
                    "payloads": [{"type": "PRICE", "values": [120]}, {"type": "EXPORT_PRICE", "values": [50]}],
                },
            ],
        )
    )
    assert ev.currency == "EUR" and ev.limits == ()
    assert [(p.start - T0, p.end - T0) for p in ev.prices] == [(0, 3600), (3600, 7200), (4 * 3600, math.inf)]
    assert [p.price_per_kwh for p in ev.prices] == pytest.approx([0.31, -0.02, 0.12])


def test_export_price_alone_is_noted_not_used() -> None:
    ev = parse_event(event(intervals=[{"id": 0, "payloads": [{"type": "EXPORT_PRICE", "values": [0.08]}]}]))
    assert ev.has_price and ev.prices == () and ev.currency == ""


def test_limits_and_prices_in_one_event() -> None:
    ev = parse_event(
        event(
            intervals=[
                {
                    "id": 0,
                    "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [30]}, {"type": "PRICE", "values": [0.5]}],
                }
            ]
        )
    )
    assert len(ev.limits) == 1 and [p.price_per_kwh for p in ev.prices] == [0.5]


@pytest.mark.parametrize(
    "bad",
    [
        {"id": ""},
        {"id": "x" * 129},
        {"programID": None},
        {"intervals": "many"},
        {"intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [-1]}]}]},
        {"intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": ["10"]}]}]},
        {"intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [float("nan")]}]}]},
        {"intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [True]}]}]},
        {"intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [1, 2]}]}]},
        {"intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [1e12]}]}]},
        {"payloadDescriptors": [{"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "HP"}]},
        {"intervals": [{"id": i, "payloads": []} for i in range(5000)]},
        {"intervalPeriod": None, "intervals": [{"id": 0, "payloads": []}]},
        {"intervalPeriod": {"start": "yesterday"}},
        {"targets": "all"},
        {"intervals": [{"id": 0, "payloads": [{"type": "PRICE", "values": [0.3, 0.4]}]}]},
        {"intervals": [{"id": 0, "payloads": [{"type": "PRICE", "values": ["0.3"]}]}]},
        {"intervals": [{"id": 0, "payloads": [{"type": "PRICE", "values": [float("inf")]}]}]},
        {"intervals": [{"id": 0, "payloads": [{"type": "PRICE", "values": [5000]}]}]},
        {"intervals": [{"id": 0, "payloads": [{"type": "PRICE", "values": None}]}]},
        {
            "payloadDescriptors": [{"payloadType": "PRICE", "units": "KW"}],
            "intervals": [{"id": 0, "payloads": [{"type": "PRICE", "values": [0.3]}]}],
        },
        {
            "payloadDescriptors": [{"payloadType": "PRICE", "currency": "euro"}],
            "intervals": [{"id": 0, "payloads": [{"type": "PRICE", "values": [0.3]}]}],
        },
    ],
)
def test_malformed_events_are_refused_with_a_reason(bad: dict[str, Any]) -> None:
    with pytest.raises(EventError):
        parse_event(event(**bad))


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "programID",
                "intervalPeriod",
                "intervals",
                "targets",
                "payloadDescriptors",
                "reportDescriptors",
                "eventName",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_hostile_json_never_crashes(raw: dict[str, Any]) -> None:
    try:
        ev = parse_event({**event(), **raw})
    except EventError:
        return
    for iv in ev.limits:
        assert iv.end > iv.start and all(0 <= w <= 1e9 for w in iv.limit_w)
    for p in ev.prices:
        assert p.end > p.start and math.isfinite(p.price_per_kwh) and abs(p.price_per_kwh) <= 1000
