"""The price series the planner gets: the topology tariff in local time, external prices over it while they last,
which prices apply at all, bad price signals, and the live allocator moving energy to the cheap hours without
taking any away from a car."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from gridcharge.allocation.adapters.codec import external_price
from gridcharge.allocation.core.allocator import Allocator, AllocatorConfig
from gridcharge.allocation.core.prices import (
    ExternalPrice,
    PriceError,
    PriceInterval,
    checked,
    plan_prices,
    price_series,
    refusal,
    tariff_changes,
    tariff_price,
)
from gridcharge.command.v1 import command_pb2 as C
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.codec import to_timestamp
from gridcharge.shared.topology import Tariff, parse_topology

BERLIN = ZoneInfo("Europe/Berlin")
TARIFF = Tariff.model_validate(
    {
        "currency": "EUR",
        "default_price_per_kwh": 0.30,
        "windows": [
            {"start": "22:00", "end": "06:00", "price_per_kwh": 0.18},  # wraps midnight
            {"start": "17:00", "end": "21:00", "price_per_kwh": 0.40},
        ],
    }
)
H = 3600.0


def berlin(day: int, hour: int, minute: int = 0, month: int = 6) -> float:
    return datetime(2026, month, day, hour, minute, tzinfo=BERLIN).timestamp()


def ext(
    intervals: list[tuple[float, float, float]], received_at: float = 0.0, pid: str = "openadr-e1", node: str = ""
) -> ExternalPrice:
    return ExternalPrice(
        pid, "openadr", node, "EUR", tuple(PriceInterval(a, b, p) for a, b, p in intervals), received_at
    )


def test_tariff_windows_in_the_site_time_zone() -> None:
    assert tariff_price(TARIFF, BERLIN, berlin(3, 23)) == 0.18
    assert tariff_price(TARIFF, BERLIN, berlin(4, 5, 59)) == 0.18
    assert tariff_price(TARIFF, BERLIN, berlin(4, 6)) == 0.30
    assert tariff_price(TARIFF, BERLIN, berlin(4, 17)) == 0.40
    assert tariff_price(TARIFF, BERLIN, berlin(4, 21)) == 0.30
    # 17:00 in Berlin is 15:00 UTC in summer: the same tariff read in UTC would be wrong
    assert tariff_price(TARIFF, ZoneInfo("UTC"), berlin(4, 17)) == 0.30


def test_tariff_changes_follow_local_time_across_dst() -> None:
    # the night of 28-29 March 2026 (clocks go forward at 02:00): 17:00, 21:00, 22:00, 06:00 local
    start, end = berlin(28, 12, month=3), berlin(29, 12, month=3)
    got = tariff_changes(TARIFF, BERLIN, start, end)
    assert got == [berlin(28, 17, month=3), berlin(28, 21, month=3), berlin(28, 22, month=3), berlin(29, 6, month=3)]
    assert got[-1] - got[-2] == 7 * H  # 22:00 → 06:00 is 7 hours that night


def test_series_is_the_time_weighted_mean_per_slot() -> None:
    # 15-min slots from 16:50: the first slot has 10 min at 0.30 and 5 min at 0.40
    s = price_series(TARIFF, BERLIN, [], berlin(4, 16, 50), 3, 900)
    assert s == pytest.approx([(10 * 0.30 + 5 * 0.40) / 15, 0.40, 0.40])
    assert price_series(Tariff(), BERLIN, [], berlin(4, 0), 4, 900) == pytest.approx([0.30] * 4)


def test_external_prices_override_while_they_last_and_the_newest_wins() -> None:
    t0 = berlin(4, 12)
    older = ext([(t0 + H, t0 + 3 * H, 0.10)], received_at=1, pid="a")
    newer = ext([(t0 + 2 * H, t0 + 4 * H, 0.05)], received_at=2, pid="b")
    s = price_series(TARIFF, BERLIN, [older, newer], t0, 6, H)
    # 12-13 tariff 0.30; 13-14 older 0.10; 14-16 newer 0.05 (over older); 16-17 tariff; 17-18 peak
    assert s == pytest.approx([0.30, 0.10, 0.05, 0.05, 0.30, 0.40])
    # open-ended, and ended intervals no longer count
    assert price_series(TARIFF, BERLIN, [ext([(t0, math.inf, -0.02)])], t0, 2, H) == pytest.approx([-0.02] * 2)
    assert price_series(TARIFF, BERLIN, [ext([(t0 - 2 * H, t0, 0.01)])], t0, 1, H) == pytest.approx([0.30])
    # half a slot
    assert price_series(TARIFF, BERLIN, [ext([(t0 + 1800, t0 + H, 0.10)])], t0, 1, H) == pytest.approx([0.20])


def test_series_bad_arguments() -> None:
    assert price_series(TARIFF, BERLIN, [], 0.0, 0, 900).shape == (0,)
    with pytest.raises(ValueError, match="positive"):
        price_series(TARIFF, BERLIN, [], 0.0, 4, 0)


TOPO = parse_topology(
    {
        "site": {"timezone": "Europe/Berlin"},
        "nominal_voltage_v": 230,
        "nodes": [
            {"id": "trafo", "kind": "transformer", "limit_a": [100, 100, 100]},
            {"id": "site", "kind": "site", "parent": "trafo", "limit_a": [63, 63, 63]},
            {"id": "row-a", "kind": "panel", "parent": "site", "limit_a": [32, 32, 32]},
            {"id": "row-b", "kind": "panel", "parent": "site", "limit_a": [32, 32, 32]},
        ],
        "stations": [
            {"id": "a1", "node": "row-a", "max_current_a": 16, "fallback_current_a": 6},
            {"id": "b1", "node": "row-b", "max_current_a": 16, "fallback_current_a": 6},
        ],
        "tariff": {"currency": "EUR"},
    }
)


def test_which_prices_the_planner_can_use() -> None:
    assert refusal(TOPO, ext([(0, 1, 0.1)])) == ""  # the whole site
    assert refusal(TOPO, ext([(0, 1, 0.1)], node="site")) == ""
    assert refusal(TOPO, ext([(0, 1, 0.1)], node="trafo")) == ""  # above every station
    assert "every station" in refusal(TOPO, ext([(0, 1, 0.1)], node="row-a"))
    assert "unknown node" in refusal(TOPO, ext([(0, 1, 0.1)], node="nowhere"))
    usd = ExternalPrice("p", "openadr", "", "USD", (PriceInterval(0, 1, 0.1),), 0)
    assert "currency USD" in refusal(TOPO, usd)
    assert refusal(TOPO, ExternalPrice("p", "openadr", "", "", (PriceInterval(0, 1, 0.1),), 0)) == ""


@pytest.mark.parametrize(
    ("intervals", "error"),
    [
        ([(0, 10, math.nan)], "finite"),
        ([(0, 10, math.inf)], "finite"),
        ([(0, 10, 5000.0)], "finite"),
        ([(10, 10, 0.1)], "ends before"),
        ([(math.nan, 10, 0.1)], "ends before"),
        ([(0, 10, 0.1), (5, 20, 0.2)], "overlap"),
    ],
)
def test_bad_prices_are_refused_with_a_reason(intervals: list[tuple[float, float, float]], error: str) -> None:
    with pytest.raises(PriceError, match=error):
        checked(ext(intervals))


def test_checked_sorts_the_intervals() -> None:
    p = checked(ext([(10, 20, 0.2), (0, 10, 0.1)]))
    assert [iv.start for iv in p.intervals] == [0, 10]


NOW = datetime(2026, 6, 4, 10, 0, tzinfo=UTC)


def signal(*intervals: tuple[datetime, datetime | None, float], price_id: str = "openadr-e1") -> grid_pb2.PriceSignal:
    msg = grid_pb2.PriceSignal(price_id=price_id, source="openadr", currency="EUR")
    msg.meta.produced_at.CopyFrom(to_timestamp(NOW.timestamp() - 5))
    for a, b, p in intervals:
        iv = msg.intervals.add(start=to_timestamp(a.timestamp()), price_per_kwh=p)
        if b is not None:
            iv.end.CopyFrom(to_timestamp(b.timestamp()))
    return msg


def test_codec_reads_a_price_signal() -> None:
    p = external_price(signal((NOW, NOW + timedelta(hours=1), 0.2), (NOW + timedelta(hours=1), None, 0.1)), NOW)
    assert (p.price_id, p.source, p.node_id, p.currency) == ("openadr-e1", "openadr", "", "EUR")
    assert [(iv.start, iv.end, iv.price_per_kwh) for iv in p.intervals] == [
        (NOW.timestamp(), NOW.timestamp() + H, 0.2),
        (NOW.timestamp() + H, math.inf, 0.1),
    ]
    assert p.received_at == NOW.timestamp() - 5
    bad = grid_pb2.PriceSignal(price_id="x")
    bad.intervals.add(price_per_kwh=0.1)  # no start
    with pytest.raises(PriceError, match="no start"):
        external_price(bad, NOW)
    with pytest.raises(PriceError, match="price_id"):
        external_price(grid_pb2.PriceSignal(), NOW)
    with pytest.raises(PriceError, match="finite"):
        external_price(signal((NOW, None, float("nan"))), NOW)


ONE = parse_topology(
    {
        "site": {"timezone": "Europe/Berlin"},
        "nominal_voltage_v": 230,
        "nodes": [{"id": "site", "kind": "site", "limit_a": [32, 32, 32], "safety_margin_pct": 0}],
        "stations": [{"id": "c1", "node": "site", "max_current_a": 16, "fallback_current_a": 0}],
        "tariff": {"currency": "EUR", "default_price_per_kwh": 0.30},
    }
)
KWH_PER_SLOT = 16 * 230 * 3 / 1000 / 4  # 16 A on three phases for 15 minutes: 2.76 kWh


def planned(alloc: Allocator, energy_wh: float) -> np.ndarray:
    """Per-slot current of one car leaving in 4 h that needs ``energy_wh``, after the allocator's plan."""
    for c in alloc.station_online("c1", NOW.timestamp()):
        alloc.command_result(c.station_id, c.command_id, C.COMMAND_OUTCOME_ACCEPTED, NOW.timestamp())
    alloc.book.start("c1", 1, "tx-1", NOW)
    alloc.book.needs("c1", 1, NOW + timedelta(hours=4), energy_wh, 6.0, 16.0, 3)
    res = alloc.plan(NOW)
    assert res.plan is not None and res.error == ""
    return np.asarray(res.plan.current_a[0])


def test_the_plan_moves_energy_to_cheap_hours_and_never_loses_any() -> None:
    cheap_from, cheap_to = NOW + timedelta(hours=2), NOW + timedelta(hours=3)
    # flat tariff: the car charges at once
    flat = planned(Allocator(ONE, AllocatorConfig()), 4 * KWH_PER_SLOT * 1000)
    assert flat[:4] == pytest.approx([16.0] * 4) and flat[4:].sum() == pytest.approx(0.0)
    # an OpenADR price makes 12:00-13:00 UTC cheap: the same energy, in that hour
    alloc = Allocator(ONE, AllocatorConfig())
    assert alloc.external_price(external_price(signal((cheap_from, cheap_to, 0.05)), NOW))
    moved = planned(alloc, 4 * KWH_PER_SLOT * 1000)
    assert moved[8:12] == pytest.approx([16.0] * 4) and moved[:8].sum() + moved[12:].sum() == pytest.approx(0.0)
    # energy first: a car that needs 3 h of full power gets as much as without the price, cheap hour or not
    without = planned(Allocator(ONE, AllocatorConfig()), 12 * KWH_PER_SLOT * 1000)
    alloc = Allocator(ONE, AllocatorConfig())
    alloc.external_price(external_price(signal((cheap_from, cheap_to, 0.05)), NOW))
    full = planned(alloc, 12 * KWH_PER_SLOT * 1000)
    # (up to the planner's hardware rounding: one 0.1 A step in one slot, 17 Wh of 33 kWh — docs/planner.md)
    assert full.sum() >= without.sum() - 0.1 - 1e-9 and without.sum() >= 12 * 16.0 - 0.1 - 1e-9
    assert full[8:12] == pytest.approx([16.0] * 4)
    # the price withdrawn (no intervals): back to charging at once
    assert alloc.external_price(external_price(grid_pb2.PriceSignal(price_id="openadr-e1"), NOW))
    assert alloc.prices == {}


def test_the_allocator_keeps_prices_until_they_end() -> None:
    alloc = Allocator(ONE, AllocatorConfig())
    t = NOW.timestamp()
    first = ext([(t, t + H, 0.1)], received_at=t, pid="a")
    assert alloc.external_price(first) and not alloc.external_price(first)  # the same again changes nothing
    later = ext([(t + 2 * H, t + 3 * H, 0.1)], received_at=t + 2 * H, pid="b")
    alloc.external_price(later)
    assert set(alloc.prices) == {("", "b")}  # "a" ended an hour before
    assert plan_prices(ONE, alloc.prices.values(), t + 2 * H, 2, 1800) == pytest.approx([0.1, 0.1])
