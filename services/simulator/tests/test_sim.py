"""The simulation's ground truth without any cluster: stations with no profile charge unlimited, the recorder
counts every crossing of the effective limit (DSO limits included), tariffs and sessions are accounted."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gridcharge.shared.clock import SimClock
from gridcharge.simulator.scenario import load_scenario
from gridcharge.simulator.sim import Simulation, price_at


async def test_no_profile_means_no_limit_and_violations_are_recorded() -> None:
    sc = load_scenario("office", start="2026-06-03T07:00:00Z", duration="20m")
    clock = SimClock(datetime.fromtimestamp(sc.start_s, UTC))
    sim = Simulation(sc, clock, None, [])  # no gateway: no profiles ever arrive
    while clock.time() < sc.end_s:
        await sim.step(20)
        await clock.advance(20)
    charging = [m for m in sim.models.values() if any(e.current_a > 0 for e in m.evses.values())]
    assert charging and all(e.limit_source == "none" for m in charging for e in m.evses.values() if e.ev)
    # uncontrolled cars at up to 32 A cross the 160 A car-park limit: the recorder must see it
    assert any(v.node == "carpark" for v in sim.rec.violations)
    s = sim.summary()
    assert s["violations"] == len(sim.rec.violations) and s["energy_total_kwh"] > 0


async def test_dso_limit_lowers_the_effective_limit_in_its_window() -> None:
    sc = load_scenario("residential")
    sim = Simulation(sc, SimClock(datetime.fromtimestamp(sc.start_s, UTC)), None, [])
    ev = next(e for e in sc.events if e.kind == "limit")
    await sim._publish_limit(ev)
    full = sc.topology.limit_w("feeder")
    assert sim.effective_limit_w("feeder", ev.at_s - 1) == full
    assert sim.effective_limit_w("feeder", ev.at_s + 1)[0] == full[0] * 0.6
    assert ev.end_s is not None and sim.effective_limit_w("feeder", ev.end_s + 1) == full


def test_tariff_windows() -> None:
    sc = load_scenario("office")
    tz = ZoneInfo("Europe/Berlin")
    noon = datetime(2026, 6, 3, 12, 0, tzinfo=tz).timestamp()
    night = datetime(2026, 6, 3, 23, 0, tzinfo=tz).timestamp()
    assert price_at(sc.topology.tariff, noon, tz) == 0.22
    assert price_at(sc.topology.tariff, night, tz) == sc.topology.tariff.default_price_per_kwh
