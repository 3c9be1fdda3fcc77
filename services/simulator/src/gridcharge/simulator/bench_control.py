"""`gridcharge bench control`: control quality of the allocator, measured on the embedded cluster in simulated
time, side by side with an older version of the code in one run.

Every case runs the embedded cluster (gateway, telemetry, forecasting, allocation in one Host on the in-process
bus and store, SimClock) with stations connecting over real OCPP WebSockets on loopback — as `gridcharge demo`
does — and measures on the simulation's ground truth (its recorder: true load per node and phase, every step)
and at the stations (`StationClient.profile_log`: one entry per SetChargingProfile a station received). Grid
meters follow the stations' real draw: a meter reading is base load + what the EVs draw under the profiles
they hold, so the allocator's actions feed back into what telemetry sees (a closed loop).

Cases (`CASES`; `--quick` runs a small, short variant of each, for tests and smoke runs):

- ``overload``: 20 three-phase stations (32 A, 6 A fallback) under one metered 400 A transformer with a flat
  base load of 20 % of its limit; cars want their maximum. At T (60 min in) the base load steps up by 30 %
  of the limit. Overshoot, time above the limit, recovery, settling time, writes per station.
- ``limit-raise``: the same site under an open-ended DSO limit of 60 % that is withdrawn at T: rise time to
  90 % of the new usable level, overshoot (must be 0), settling time, writes.
- ``fleet-idle``: 40 three-phase 16 A stations under one metered 150 kW transformer, every car plugged in but
  full (draws 0 W, announces nothing): SetChargingProfile per station per minute over the hour after a
  10-min start-up. ``fleet-charging``: the same with cars that draw what they are granted; also the peak
  aggregate load vs the limit.
- ``demo-office``, ``demo-depot``, ``demo-residential``: the shipped scenarios run to the end (no real-time
  cut), the demo's driver loop: % of the offline optimum, feasible sessions on time, violations, writes per
  station-hour.

The same file runs under both code versions: the parent (`bench_main`) starts it as a child process
(``python -P bench_control.py --json --case NAME``) with this interpreter and with the baseline tree's
``.venv/bin/python``; the child imports whatever ``gridcharge`` that interpreter has installed and prints one
JSON object (`CONTRACT`) on stdout. So the child uses only APIs present in both versions (shims below: the
older ``load_factories`` returned a tuple; writes are counted from ``profile_log``, not from the newer summary
keys). Times are POSIX seconds (simulated) unless named ``real_s``; currents A per phase; loads W per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gridcharge.common.v1 import common_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts
from gridcharge.shared.clock import SimClock
from gridcharge.shared.config import Settings
from gridcharge.shared.runtime import build_runtime
from gridcharge.simulator.demo import (
    SERVICES,
    EmbeddedCluster,
    free_port,
    load_factories,
    settle,
    start_weather_server,
)
from gridcharge.simulator.ev import Ev
from gridcharge.simulator.grid import make_weather, weather_payload
from gridcharge.simulator.scenario import Scenario, Visit, build_scenario, load_scenario
from gridcharge.simulator.sim import Simulation

CONTRACT = "gridcharge-bench-control/1"
SNAPSHOT_ENV = "GRIDCHARGE_TELEMETRY_SNAPSHOT_S"
START = "2026-06-03T08:00:00Z"  # simulated start of the synthetic cases (a Wednesday, daytime)
BENCH_DOC = Path("docs/benchmarks.md")
SECTION = "## Control quality"
V = 230.0  # nominal phase voltage of the synthetic sites


def ts(t: float) -> Any:
    """A protobuf Timestamp of POSIX seconds ``t``, built here: the harness also runs under older trees, which
    had no shared codec (and a `ts` of their own in the simulator's grid module)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    out = Timestamp()
    out.FromNanoseconds(round(t * 1e9))
    return out


log = logging.getLogger("gridcharge.bench_control")


# ================================================================================ child: running one case


@dataclass
class Write:
    """One SetChargingProfile a station received: what it said (limit in A per phase) and whether it took it."""

    t: float
    station: str
    evse: int
    purpose: str
    stack: int
    limit_a: float | None
    valid_to: float | None
    ok: bool


@dataclass
class Run:
    """A finished drive: the simulation (ground truth, stations), every profile write, real seconds."""

    sim: Simulation
    writes: list[Write]
    real_s: float
    connected: int


@dataclass
class CaseResult:
    """A case's figures (numbers, None = never reached), details (diagnostics) and the run they came from."""

    figures: dict[str, Any]
    detail: dict[str, Any]
    run: Run


Hook = Callable[[Simulation], Awaitable[None]]


def _factories() -> dict[str, Callable[..., Any]]:
    """`create_service` per service; the older `load_factories` returned (found, missing)."""
    got: Any = load_factories(SERVICES)
    if isinstance(got, tuple):
        found, missing = got
        if missing:
            raise ImportError(f"services not built: {missing}")
        return dict(found)
    return dict(got)


def _parse_time(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _describe(station: str, data: dict[str, Any], evse_id: int, now: float, ok: bool) -> Write:
    """What a SetChargingProfile payload (snake_case, 1.6 or 2.0.1) asks for now, as a `Write`."""
    limit: float | None = None
    try:
        sched = data["charging_schedule"]
        if isinstance(sched, list):
            sched = sched[0]
        periods = sched["charging_schedule_period"]
        start = _parse_time(sched.get("start_schedule")) or now
        cur = periods[0]
        for p in periods:  # the period in force now
            if start + float(p["start_period"]) <= now:
                cur = p
        limit = float(cur["limit"])
        if sched.get("charging_rate_unit") == "W":
            limit /= V * float(cur.get("number_phases") or 3)
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    return Write(
        now,
        station,
        evse_id,
        str(data.get("charging_profile_purpose", "?")).replace("Profile", ""),
        int(data.get("stack_level", -1) or 0),
        limit,
        _parse_time(data.get("valid_to")),
        ok,
    )


def _tap_writes(sim: Simulation) -> list[Write]:
    """Record what every station is asked to install (profile_log says only when and whether it took it)."""
    out: list[Write] = []
    for sid, model in sim.models.items():
        orig = model.install_profile

        def install(
            data: dict[str, Any], evse_id: int, now: float, _orig: Any = orig, _sid: str = sid
        ) -> tuple[bool, str]:
            ok, why = _orig(data, evse_id, now)
            out.append(_describe(_sid, data, evse_id, now, ok))
            return ok, why

        model.install_profile = install  # type: ignore[method-assign]
    return out


def _settings(ocpp_port: int, weather_url: str) -> Settings:
    return Settings.from_env(
        {},
        bus="memory",
        http_host="127.0.0.1",
        http_port=0,
        ocpp_host="127.0.0.1",
        ocpp_port=ocpp_port,
        weather_base_url=weather_url,
        log_level="WARNING",
        log_json=False,
        replica_id="bench",
    )


async def drive(
    sc: Scenario,
    *,
    fine: Sequence[tuple[float, float]] = (),
    fine_step_s: float = 1.0,
    hooks: Sequence[tuple[float, Hook]] = (),
    prepare: Callable[[Simulation], None] | None = None,
    snapshot_s: float | None = None,
) -> Run:
    """Run a scenario on the embedded cluster to its end, the way `run_demo` does (same services, settings,
    settle between steps) but without the real-time cut and the report. Steps are the scenario's `step`,
    `fine_step_s` inside the `fine` windows [from, to); `hooks` run once, before the first step at or after
    their time; `prepare` sees the Simulation before it starts. `snapshot_s`: telemetry's NodeLoad period
    (default as the demo: max(5 s, step))."""
    factories = _factories()
    clock = SimClock(datetime.fromtimestamp(sc.start_s, UTC))
    days = max(1, int((sc.end_s - sc.start_s) // 86_400) + 3)
    weather = make_weather(sc.topology, sc.spec.weather, sc.start_s, days)
    weather_srv = await start_weather_server(weather_payload(weather))
    settings = _settings(free_port(), f"http://127.0.0.1:{weather_srv.port}")
    old_snapshot = os.environ.get(SNAPSHOT_ENV)
    os.environ[SNAPSHOT_ENV] = str(snapshot_s if snapshot_s is not None else max(5.0, sc.step_s))
    rt = build_runtime(settings, clock)
    cluster = EmbeddedCluster(rt, sc.topology, factories, http=False)
    sim = Simulation(
        sc,
        clock,
        rt.bus,
        [f"ws://127.0.0.1:{settings.ocpp_port}/ocpp"],
        on_event=cluster.on_event,
        weather=weather,
        response_timeout_s=10.0,
        reconnect_s=0.05,
    )
    writes = _tap_writes(sim)
    if prepare is not None:
        prepare(sim)
    pending = sorted(hooks, key=lambda h: h[0])
    real0 = time.monotonic()
    await cluster.start()
    try:
        connected = await sim.start(connect_timeout_s=10.0)
        while clock.time() < sc.end_s:
            t = clock.time()
            while pending and pending[0][0] <= t + 1e-6:
                await pending.pop(0)[1](sim)
            dt = sc.step_s
            for a, b in fine:
                if a <= t < b:
                    dt = min(fine_step_s, b - t)
                elif t < a:
                    dt = min(dt, a - t)
            if pending:
                dt = min(dt, max(1e-3, pending[0][0] - t))
            dt = min(dt, sc.end_s - t)
            await sim.step(dt)
            await clock.advance(dt)
            await settle(rt)
        return Run(sim, writes, time.monotonic() - real0, connected)
    finally:
        await sim.stop()
        await cluster.stop()
        await weather_srv.stop()
        if old_snapshot is None:
            os.environ.pop(SNAPSHOT_ENV, None)
        else:
            os.environ[SNAPSHOT_ENV] = old_snapshot


# -- ground truth ----------------------------------------------------------------------------------------


@dataclass
class Series:
    """One node's recorded load and effective limit per step (W per phase); `dt` = the step's length (s)."""

    t: list[float]
    dt: list[float]
    load: list[tuple[float, float, float]]
    limit: list[tuple[float, float, float]]

    @classmethod
    def of(cls, sim: Simulation, node: str) -> Series:
        t = list(sim.rec.t)
        end = sim.clock.time()
        dt = [b - a for a, b in zip(t, [*t[1:], end], strict=True)]
        return cls(t, dt, list(sim.rec.load_w[node]), list(sim.rec.limit_w[node]))

    def ratio(self, i: int, limit: tuple[float, float, float] | None = None) -> float:
        """Worst phase's load / limit at step i."""
        lim = limit or self.limit[i]
        return max(self.load[i][k] / lim[k] if lim[k] > 0 else math.inf for k in range(3))

    def over_w(self, i: int) -> float:
        """Load above the limit at step i, W summed over the phases over it."""
        return sum(max(0.0, self.load[i][k] - self.limit[i][k]) for k in range(3))

    def idx(self, a: float, b: float = math.inf) -> list[int]:
        return [i for i, x in enumerate(self.t) if a <= x < b]


def _settle_time(s: Series, t0: float, final: float, band: float) -> float | None:
    """Seconds from t0 until the worst-phase load ratio stays ≤ 1 and within ± band of `final` (ratios of the
    limit) to the end of the run; None if it never does."""
    idx = s.idx(t0)
    last_bad = None
    for i in idx:
        r = s.ratio(i)
        if r > 1.0 + 1e-9 or abs(r - final) > band:
            last_bad = i
    if last_bad is None:
        return 0.0
    if last_bad == idx[-1]:
        return None
    return s.t[last_bad] + s.dt[last_bad] - t0


def _writes_between(run: Run, a: float, b: float) -> dict[str, int]:
    """SetChargingProfile received per station in [a, b) (from `profile_log`, present in every version)."""
    return {sid: sum(1 for t, _ok, _reason in c.profile_log if a <= t < b) for sid, c in run.sim.clients.items()}


def _why(run: Run, a: float, b: float, top: int = 3) -> list[dict[str, Any]]:
    """The `top` stations with the most writes in [a, b): per write kind (first / lower / raise / same limit)
    and profile, and the limits they were sent (A per phase, relative time s from a)."""
    prev: dict[tuple[str, int, str, int], float | None] = {}
    kinds: dict[str, dict[str, int]] = {}
    seq: dict[str, list[tuple[float, str, float | None]]] = {}
    for w in sorted(run.writes, key=lambda w: w.t):
        key = (w.station, w.evse, w.purpose, w.stack)
        before = prev.get(key, "none")
        prev[key] = w.limit_a
        if not a <= w.t < b:
            continue
        if before == "none":
            kind = "first"
        elif w.limit_a is None or before is None or abs(w.limit_a - float(before)) < 0.05:
            kind = "same"
        else:
            kind = "lower" if w.limit_a < float(before) else "raise"
        tag = f"{w.purpose}/{w.stack}" if w.evse == 0 else f"{w.purpose}/evse{w.evse}"
        d = kinds.setdefault(w.station, {})
        d[f"{kind} {tag}"] = d.get(f"{kind} {tag}", 0) + 1
        seq.setdefault(w.station, []).append((round(w.t - a), tag, None if w.limit_a is None else round(w.limit_a, 1)))
    busiest = sorted(kinds, key=lambda sid: (-sum(kinds[sid].values()), sid))[:top]
    return [
        {"station": sid, "writes": sum(kinds[sid].values()), "kinds": kinds[sid], "sequence": seq[sid][:40]}
        for sid in busiest
    ]


def _per_station(counts: dict[str, int], scale: float) -> tuple[float, float, str]:
    """(mean, max, busiest station id) of per-station counts × scale."""
    if not counts:
        return 0.0, 0.0, ""
    sid = max(sorted(counts), key=lambda k: counts[k])
    return statistics.fmean(counts.values()) * scale, counts[sid] * scale, sid


# -- synthetic sites -------------------------------------------------------------------------------------


def _site(stations: list[dict[str, Any]], node: dict[str, Any], energy_wh: float) -> dict[str, Any]:
    return {
        "site": {
            "id": "bench",
            "name": "control bench",
            "timezone": "UTC",
            "latitude": 48.78,
            "longitude": 9.18,
            "altitude_m": 250,
        },
        "nodes": [node],
        "stations": stations,
        "session_defaults": {"departure_after_h": 12, "energy_wh": energy_wh},
    }


def _doc(
    name: str,
    topology: dict[str, Any],
    duration_s: float,
    base_kw: float,
    *,
    noise: float,
    step: str,
    meter_interval: str = "60s",
    grid_meter_interval: str = "1s",
) -> dict[str, Any]:
    return {
        "name": name,
        "start": START,
        "duration": f"{int(duration_s)}s",
        "seed": 5,
        "step": step,
        "meter_interval": meter_interval,
        "grid_meter_interval": grid_meter_interval,
        "topology": topology,
        "base_load": [{"node": "tx", "peak_kw": base_kw, "profile": "flat", "phase_split": [1, 1, 1], "noise": noise}],
    }


def _cars(
    sc: Scenario, *, battery_wh: float, soc: float, target: float, max_a: float, announce: bool | None = None
) -> None:
    """One car per station, plugged in at the start, leaving 12 h later; `announce` None = 2.0.1 stations
    announce their needs, 1.6 cannot."""
    for st in sc.topology.stations:
        ann = st.ocpp == "2.0.1" if announce is None else announce
        ev = Ev(
            ev_id=f"{st.id}/1/0",
            battery_wh=battery_wh,
            arrival_soc=soc,
            target_soc=target,
            arrival_s=sc.start_s,
            departure_s=sc.start_s + 12 * 3600,
            max_current_a=max_a,
            phases=3,
            announces_needs=ann,
        )
        sc.visits.append(Visit(st.id, 1, ev))


@dataclass(frozen=True)
class StepSite:
    """The step-response site: `n` three-phase 32 A stations (6 A fallback), limit 20 A per station per phase,
    flat base load `base_pct` of the limit, event at `event_s` after the start (the overload case adds
    `step_pct` of the limit to the base load then), run until `after_s` past it, writes counted over
    `window_s` around it (half before, half after), 1-s steps from 10 s before it to `fine_s` after."""

    n: int = 20
    base_pct: float = 20.0
    step_pct: float = 30.0
    event_s: float = 3600.0
    after_s: float = 1800.0
    window_s: float = 3600.0
    fine_s: float = 300.0

    @property
    def limit_a(self) -> float:
        return 20.0 * self.n

    def scenario(self, name: str) -> Scenario:
        stations = [
            {
                "id": f"s{i:02d}",
                "node": "tx",
                "ocpp": "2.0.1" if i % 2 else "1.6",
                "max_current_a": 32,
                "fallback_current_a": 6,
            }
            for i in range(1, self.n + 1)
        ]
        node = {"id": "tx", "kind": "transformer", "limit_a": [self.limit_a] * 3, "metered": True}
        base_kw = 3 * self.limit_a * V * self.base_pct / 100 / 1000
        sc = build_scenario(
            _doc(name, _site(stations, node, 150_000.0), self.event_s + self.after_s, base_kw, noise=0.0, step="5s"),
            f"<bench {name}>",
        )
        _cars(sc, battery_wh=150_000.0, soc=0.1, target=0.95, max_a=32.0)
        return sc


def _step_quick() -> StepSite:
    """Small and short (the event 20 min in: both versions hold the cars near their floors for the first
    ~15 min); the overload step is larger (60 %) so it overloads the node whatever the cars draw then
    (fallbacks alone are 30 %, plus 20 % base)."""
    return StepSite(n=6, step_pct=60.0, event_s=1200.0, after_s=600.0, window_s=1200.0, fine_s=120.0)


def _margin(sc: Scenario) -> float:
    return float(sc.topology.node_by_id["tx"].safety_margin_pct)


async def case_overload(quick: bool = False) -> CaseResult:
    """Base load steps up by 30 % of the limit at T; the meter shows base + the stations' real draw."""
    site = _step_quick() if quick else StepSite()
    sc = site.scenario("bench-overload")
    t_ev = sc.start_s + site.event_s
    step_w = site.limit_a * V * site.step_pct / 100

    def prepare(sim: Simulation) -> None:
        orig = sim.grid.base_w

        def base_w(t: float) -> dict[str, tuple[float, float, float]]:
            out = dict(orig(t))
            if t >= t_ev:
                b = out.get("tx", (0.0, 0.0, 0.0))
                out["tx"] = (b[0] + step_w, b[1] + step_w, b[2] + step_w)
            return out

        sim.grid.base_w = base_w  # type: ignore[method-assign]

    run = await drive(sc, fine=[(t_ev - 10.0, t_ev + site.fine_s)], prepare=prepare, snapshot_s=5.0)
    s = Series.of(run.sim, "tx")
    after = s.idx(t_ev)
    before = s.idx(t_ev - 600.0, t_ev)
    peak_i = max(after, key=s.ratio)
    back = next((i for i in after if s.ratio(i) <= 1.0 + 1e-9), None)
    recovery_s = None if back is None else s.t[back] - t_ev
    later = [i for i in after if back is not None and i > back]
    final_idx = s.idx(s.t[-1] + s.dt[-1] - 600.0)
    final = statistics.fmean(s.ratio(i) for i in final_idx)
    band = 0.02
    w_a, w_b = t_ev - site.window_s / 2, t_ev + site.window_s / 2
    mean_w, max_w, busiest = _per_station(_writes_between(run, w_a, w_b), 3600.0 / site.window_s)
    mean_10, max_10, _ = _per_station(_writes_between(run, t_ev, t_ev + 600.0), 1.0)
    figures = {
        "stations_connected": run.connected,
        "level_before_pct": 100 * statistics.fmean(s.ratio(i) for i in before),
        "peak_overshoot_pct": 100 * (s.ratio(peak_i) - 1.0),
        "peak_overshoot_kw": max(s.over_w(i) for i in after) / 1000,
        "seconds_over_limit": sum(s.dt[i] for i in after if s.ratio(i) > 1.0 + 1e-9),
        "recovery_s": recovery_s,
        "reovershoot_pct": 100 * max(0.0, max((s.ratio(i) - 1.0 for i in later), default=0.0)),
        "settling_s": _settle_time(s, t_ev, final, band),
        "final_level_pct": 100 * final,
        "lowest_after_recovery_pct": 100 * min((s.ratio(i) for i in later), default=math.nan),
        "writes_per_station_hour": mean_w,
        "writes_per_station_hour_max": max_w,
        "writes_per_station_10min_after": mean_10,
        "writes_per_station_10min_after_max": max_10,
        "violation_steps": len(run.sim.rec.violations),
    }
    detail = {
        "limit_kw": 3 * site.limit_a * V / 1000,
        "step_kw": 3 * step_w / 1000,
        "step_pct": site.step_pct,
        "stations": site.n,
        "settling_band_pct": 100 * band,
        "margin_pct": _margin(sc),
        "busiest_station": busiest,
        "why": _why(run, w_a, w_b),
        "real_s": run.real_s,
    }
    return CaseResult(figures, detail, run)


async def case_limit_raise(quick: bool = False) -> CaseResult:
    """An open-ended DSO limit of 60 % on the transformer is withdrawn at T (empty window, as the operator API's
    DELETE does): how fast and how cleanly the cars take the room."""
    site = _step_quick() if quick else StepSite()
    sc = site.scenario("bench-limit-raise")
    t_ev = sc.start_s + site.event_s
    pct = 60.0
    lim_id = "bench-dso"
    full = (site.limit_a * V,) * 3

    async def publish(sim: Simulation, valid_from: float, valid_to: float) -> None:
        f = pct / 100
        msg = grid_pb2.ExternalLimit(
            meta=common_pb2.Meta(producer="bench", produced_at=ts(sim.clock.time())),
            node_id="tx",
            limit_id=lim_id,
            source="dso",
            valid_from=ts(valid_from),
            valid_to=ts(valid_to),
            limit_w=common_pb2.PhaseValues(l1=full[0] * f, l2=full[1] * f, l3=full[2] * f),
            fallback_limit_w=common_pb2.PhaseValues(l1=full[0] * f, l2=full[1] * f, l3=full[2] * f),
        )
        assert sim.bus is not None
        await sim.bus.publish(contracts.EXTERNAL_LIMITS.name, "tx", msg.SerializeToString())

    async def impose(sim: Simulation) -> None:
        sim.external.append((sc.start_s, t_ev, "tx", pct))  # ground truth: 60 % until T
        await publish(sim, sc.start_s, sc.end_s + 86_400)  # the allocator is not told when it ends

    async def withdraw(sim: Simulation) -> None:
        await publish(sim, t_ev, t_ev)  # empty window = withdrawn

    run = await drive(
        sc, fine=[(t_ev - 10.0, t_ev + site.fine_s)], hooks=[(sc.start_s, impose), (t_ev, withdraw)], snapshot_s=5.0
    )
    s = Series.of(run.sim, "tx")
    after = s.idx(t_ev)
    before = s.idx(t_ev - 600.0, t_ev)
    lvl0 = statistics.fmean(s.ratio(i, full) for i in before)
    usable = 1.0 - _margin(sc) / 100
    target = lvl0 + 0.9 * (usable - lvl0)
    rise_i = next((i for i in after if s.ratio(i, full) >= target - 1e-9), None)
    final_idx = s.idx(s.t[-1] + s.dt[-1] - 600.0)
    final = statistics.fmean(s.ratio(i, full) for i in final_idx)
    band = 0.02
    w_a, w_b = t_ev - site.window_s / 2, t_ev + site.window_s / 2
    mean_w, max_w, busiest = _per_station(_writes_between(run, w_a, w_b), 3600.0 / site.window_s)
    mean_10, max_10, _ = _per_station(_writes_between(run, t_ev, t_ev + 600.0), 1.0)

    def level_at(dt_s: float) -> float | None:
        i = next((i for i in after if s.t[i] >= t_ev + dt_s), None)
        return None if i is None else 100 * s.ratio(i, full)

    figures = {
        "stations_connected": run.connected,
        "level_before_pct": 100 * lvl0,
        "level_1min_pct": level_at(60.0),
        "level_5min_pct": level_at(300.0),
        "level_15min_pct": level_at(900.0),
        "rise_s": None if rise_i is None else s.t[rise_i] - t_ev,
        "overshoot_pct": 100 * max(0.0, max(s.ratio(i) for i in after) - 1.0),
        "seconds_over_limit": sum(s.dt[i] for i in after if s.ratio(i) > 1.0 + 1e-9),
        "settling_s": _settle_time(s, t_ev, final, band),
        "final_level_pct": 100 * final,
        "writes_per_station_hour": mean_w,
        "writes_per_station_hour_max": max_w,
        "writes_per_station_10min_after": mean_10,
        "writes_per_station_10min_after_max": max_10,
        "violation_steps": len(run.sim.rec.violations),
    }
    detail = {
        "limit_kw": 3 * site.limit_a * V / 1000,
        "dso_pct": pct,
        "usable_pct": 100 * usable,
        "rise_target_pct": 100 * target,
        "settling_band_pct": 100 * band,
        "stations": site.n,
        "busiest_station": busiest,
        "why": _why(run, w_a, w_b),
        "real_s": run.real_s,
    }
    return CaseResult(figures, detail, run)


@dataclass(frozen=True)
class FleetSite:
    """`n` three-phase 16 A stations (fallback `fallback_a`) under one metered transformer of `limit_kw` with a
    flat, noisy base load of 10 % of it; start-up `startup_s`, then `measure_s` counted."""

    n: int = 40
    limit_kw: float = 150.0
    fallback_a: float = 0.0
    startup_s: float = 600.0
    measure_s: float = 3600.0

    def scenario(self, name: str, energy_wh: float) -> Scenario:
        stations = [
            {
                "id": f"f{i:02d}",
                "node": "tx",
                "ocpp": "2.0.1" if i % 2 else "1.6",
                "max_current_a": 16,
                "fallback_current_a": self.fallback_a,
            }
            for i in range(1, self.n + 1)
        ]
        per_phase_w = self.limit_kw * 1000 / 3
        node = {"id": "tx", "kind": "transformer", "limit_w": [per_phase_w] * 3, "metered": True}
        return build_scenario(
            _doc(
                name,
                _site(stations, node, energy_wh),
                self.startup_s + self.measure_s,
                0.1 * self.limit_kw,
                noise=0.05,
                step="5s",
                grid_meter_interval="5s",
            ),
            f"<bench {name}>",
        )


def _fleet_quick() -> FleetSite:
    return FleetSite(n=8, limit_kw=30.0, startup_s=300.0, measure_s=600.0)


async def _fleet(drawing: bool, quick: bool) -> CaseResult:
    site = _fleet_quick() if quick else FleetSite()
    name = "bench-fleet-charging" if drawing else "bench-fleet-idle"
    sc = site.scenario(name, 20_000.0)
    if drawing:
        _cars(sc, battery_wh=100_000.0, soc=0.1, target=0.9, max_a=16.0, announce=False)
    else:
        _cars(sc, battery_wh=60_000.0, soc=0.8, target=0.8, max_a=16.0, announce=False)  # full: draws 0 W
    run = await drive(sc, snapshot_s=5.0)
    s = Series.of(run.sim, "tx")
    t_m = sc.start_s + site.startup_s
    meas = s.idx(t_m)
    minutes = site.measure_s / 60
    mean_m, max_m, busiest = _per_station(_writes_between(run, t_m, sc.end_s), 1.0 / minutes)
    mean_s, max_s, _ = _per_station(_writes_between(run, sc.start_s, t_m), 1.0)
    base = statistics.fmean(sum(b) for b in run.sim.rec.base_w["tx"])
    limit_w = 3 * site.limit_kw * 1000 / 3
    usable_ev = limit_w * (1 - _margin(sc) / 100) - base
    ev_mean = statistics.fmean(run.sim.rec.ev_w["tx"][i] for i in meas)
    figures = {
        "stations_connected": run.connected,
        "writes_per_station_min": mean_m,
        "writes_per_station_min_max": max_m,
        "writes_per_station_startup": mean_s,
        "writes_per_station_startup_max": max_s,
        "peak_load_pct": 100 * max(s.ratio(i) for i in range(len(s.t))),
        "seconds_over_limit": sum(s.dt[i] for i in range(len(s.t)) if s.ratio(i) > 1.0 + 1e-9),
        "violation_steps": len(run.sim.rec.violations),
        "ev_load_kw_mean": ev_mean / 1000,
        "ev_load_of_usable_pct": 100 * ev_mean / usable_ev if usable_ev > 0 else math.nan,
        "energy_kwh": run.sim.rec.energy_wh / 1000,
    }
    detail = {
        "limit_kw": site.limit_kw,
        "stations": site.n,
        "fallback_a": site.fallback_a,
        "startup_min": site.startup_s / 60,
        "measure_min": minutes,
        "busiest_station": busiest,
        "why": _why(run, t_m, sc.end_s),
        "real_s": run.real_s,
    }
    return CaseResult(figures, detail, run)


async def case_fleet_idle(quick: bool = False) -> CaseResult:
    """40 stations whose cars are plugged in and full: nothing to do but keep the leases alive."""
    return await _fleet(False, quick)


async def case_fleet_charging(quick: bool = False) -> CaseResult:
    """40 stations whose cars draw their grant (need more than the transformer can give in the hour)."""
    return await _fleet(True, quick)


# the quick demo: a busy half hour of each scenario
_DEMO_QUICK = {
    "office": ("2026-06-03T06:30:00Z", "30m"),
    "depot": ("2026-06-03T17:45:00Z", "30m"),
    "residential": ("2026-06-03T15:00:00Z", "30m"),
}


async def _demo(name: str, quick: bool) -> CaseResult:
    if quick:
        start, dur = _DEMO_QUICK[name]
        sc = load_scenario(name, start=start, duration=dur)
    else:
        sc = load_scenario(name)
    t0 = time.monotonic()
    run = await drive(sc)
    summary = run.sim.summary()
    real_s = time.monotonic() - t0
    opt = summary.get("offline_optimum_kwh")
    hours = (run.sim.clock.time() - sc.start_s) / 3600
    mean_h, max_h, busiest = _per_station(_writes_between(run, -math.inf, math.inf), 1.0 / hours)
    peak_hour, peak_at = 0, (sc.start_s, "")
    for sid, c in sorted(run.sim.clients.items()):
        buckets: dict[int, int] = {}
        for t, _ok, _reason in c.profile_log:
            buckets[int(t // 3600)] = buckets.get(int(t // 3600), 0) + 1
        for hour, n in sorted(buckets.items()):
            if n > peak_hour:
                peak_hour, peak_at = n, (hour * 3600.0, sid)
    hour_why = [
        w for w in _why(run, peak_at[0], peak_at[0] + 3600.0, top=len(run.sim.clients)) if w["station"] == peak_at[1]
    ]
    now = run.sim.clock.time()
    late = [
        {
            "ev": r.ev_id,
            "need_kwh": round(r.need_wh / 1000, 1),
            "delivered_kwh": round(r.delivered_wh / 1000, 1),
            "optimum_kwh": None if r.optimum_wh is None else round(r.optimum_wh / 1000, 1),
        }
        for r in run.sim.sessions()
        if r.feasible and r.departure_s <= now and not r.on_time
    ]
    figures = {
        "stations_connected": run.connected,
        "of_optimum_pct": 100 * summary["energy_delivered_kwh"] / opt if opt else None,
        "delivered_kwh": summary["energy_delivered_kwh"],
        "optimum_kwh": opt,
        "requested_kwh": summary["energy_requested_kwh"],
        "feasible_finished": summary["feasible_finished"],
        "feasible_late": summary["feasible_finished"] - summary["feasible_on_time"],
        "site_feasible_late": summary["site_feasible_finished"] - summary["site_feasible_on_time"],
        "violation_steps": summary["violations"],
        "writes_per_station_hour": mean_h,
        "writes_per_station_hour_max": max_h,
        "writes_peak_station_clock_hour": float(peak_hour),
        "profiles_rejected": summary["profiles_rejected"],
        "real_s": real_s,
    }
    detail = {
        "scenario": name,
        "start": summary["start"],
        "end": summary["end"],
        "busiest_station": busiest,
        "why": _why(run, sc.start_s, math.inf, top=2),
        "sessions": summary["sessions"],
        "late": late,
        "peak_hour": {
            "station": peak_at[1],
            "hour_utc": datetime.fromtimestamp(peak_at[0], UTC).strftime("%H:%M"),
            "kinds": hour_why[0]["kinds"] if hour_why else {},
        },
    }
    return CaseResult(figures, detail, run)


async def case_demo_office(quick: bool = False) -> CaseResult:
    """The shipped office scenario to its end."""
    return await _demo("office", quick)


async def case_demo_depot(quick: bool = False) -> CaseResult:
    """The shipped depot scenario to its end."""
    return await _demo("depot", quick)


async def case_demo_residential(quick: bool = False) -> CaseResult:
    """The shipped residential scenario to its end."""
    return await _demo("residential", quick)


CaseFn = Callable[..., Awaitable[CaseResult]]
CASES: dict[str, CaseFn] = {
    "overload": case_overload,
    "limit-raise": case_limit_raise,
    "fleet-idle": case_fleet_idle,
    "fleet-charging": case_fleet_charging,
    "demo-office": case_demo_office,
    "demo-depot": case_demo_depot,
    "demo-residential": case_demo_residential,
}
GROUPS = {
    "all": list(CASES),
    "step": ["overload", "limit-raise"],
    "fleet": ["fleet-idle", "fleet-charging"],
    "demos": ["demo-office", "demo-depot", "demo-residential"],
}


def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats become None (a figure that was never reached)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _modules() -> dict[str, str]:
    """Where this interpreter's gridcharge packages live (the parent checks it ran the version it meant)."""
    import gridcharge.allocation
    import gridcharge.simulator

    return {
        "allocation": str(Path(gridcharge.allocation.__file__ or "").resolve()),
        "simulator": str(Path(gridcharge.simulator.__file__ or "").resolve()),
    }


def write_trace(run: Run, node: str, path: Path) -> None:
    """CSV of one node per step (diagnostics): time from the start (s), load and limit per phase (W), EV and
    base load (W), writes received by all stations in that step."""
    s = Series.of(run.sim, node)
    t0 = run.sim.sc.start_s
    counts: dict[int, int] = {}
    for c in run.sim.clients.values():
        for t, _ok, _reason in c.profile_log:
            i = max(0, next((k for k in range(len(s.t)) if s.t[k] + s.dt[k] > t), len(s.t) - 1))
            counts[i] = counts.get(i, 0) + 1
    lines = ["t_s,load_l1_w,load_l2_w,load_l3_w,limit_l1_w,limit_l2_w,limit_l3_w,ev_w,base_w,writes"]
    for i, t in enumerate(s.t):
        lines.append(
            ",".join(
                f"{x:.1f}"
                for x in (t - t0, *s.load[i], *s.limit[i], run.sim.rec.ev_w[node][i], sum(run.sim.rec.base_w[node][i]))
            )
            + f",{counts.get(i, 0)}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


async def run_case(name: str, quick: bool = False, trace: Path | None = None) -> dict[str, Any]:
    """Run one case in this process; the child's JSON document (`CONTRACT`). `trace`: also write the first
    node's per-step CSV there (`write_trace`)."""
    t0 = time.monotonic()
    res = await CASES[name](quick)
    if trace is not None:
        write_trace(res.run, res.run.sim.rec.nodes[0], trace)
    return _clean(
        {
            "contract": CONTRACT,
            "case": name,
            "quick": quick,
            "figures": res.figures,
            "detail": res.detail,
            "real_s": time.monotonic() - t0,
            "python": platform.python_version(),
            "modules": _modules(),
        }
    )


def child_main(argv: Sequence[str] | None = None) -> int:
    """`python -P bench_control.py --case NAME [--quick] [--json]`: run one case, print its figures."""
    p = argparse.ArgumentParser(prog="bench_control.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--case", required=True, choices=sorted(CASES))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (the parent's contract)")
    p.add_argument("--trace", default=None, help="write the per-step load of the first node as CSV here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    doc = asyncio.run(run_case(a.case, a.quick, Path(a.trace) if a.trace else None))
    if a.json:
        sys.stdout.write(json.dumps(doc, allow_nan=False) + "\n")
    else:
        for k, v in doc["figures"].items():
            print(f"{k:<40}{v}")
    return 0


# ================================================================================ parent: side by side


@dataclass(frozen=True)
class Figure:
    """How a figure is shown: label, format, and the issue's target (op, value) if any."""

    label: str
    fmt: str = "{:.1f}"
    target: tuple[str, float] | None = None


FIGURES: dict[str, dict[str, Figure]] = {
    "overload": {
        "stations_connected": Figure("stations connected", "{:.0f}"),
        "level_before_pct": Figure("load before the step, % of limit"),
        "peak_overshoot_pct": Figure("peak overshoot, % of limit (the step itself is +30 %)"),
        "peak_overshoot_kw": Figure("peak overshoot, kW (3 phases)"),
        "seconds_over_limit": Figure("time above the limit, s", "{:.0f}"),
        "recovery_s": Figure("back within the limit after, s", "{:.0f}"),
        "reovershoot_pct": Figure("overshoot after the recovery, % of limit", "{:.1f}", ("<=", 0.0)),
        "settling_s": Figure("settling time (±2 % of limit around the final level), s", "{:.0f}"),
        "final_level_pct": Figure("final level, % of limit"),
        "lowest_after_recovery_pct": Figure("lowest load after the recovery, % of limit"),
        "writes_per_station_hour": Figure("writes/station in the hour around the step (mean)", "{:.2f}", ("<=", 6.0)),
        "writes_per_station_hour_max": Figure(
            "writes/station in the hour around the step (busiest)", "{:.2f}", ("<=", 6.0)
        ),
        "writes_per_station_10min_after": Figure("writes/station in the 10 min after the step (mean)", "{:.2f}"),
        "writes_per_station_10min_after_max": Figure("writes/station in the 10 min after the step (busiest)", "{:.0f}"),
        "violation_steps": Figure("steps above the limit (whole run)", "{:.0f}"),
    },
    "limit-raise": {
        "stations_connected": Figure("stations connected", "{:.0f}"),
        "level_before_pct": Figure("load before, % of the full limit (DSO limit 60 %)"),
        "level_1min_pct": Figure("load 1 min after, % of limit"),
        "level_5min_pct": Figure("load 5 min after, % of limit"),
        "level_15min_pct": Figure("load 15 min after, % of limit"),
        "rise_s": Figure("rise time to 90 % of the way to the usable level (95 %), s", "{:.0f}"),
        "overshoot_pct": Figure("overshoot, % of limit", "{:.1f}", ("<=", 0.0)),
        "seconds_over_limit": Figure("time above the limit after the raise, s", "{:.0f}", ("<=", 0.0)),
        "settling_s": Figure("settling time (±2 % of limit around the final level), s", "{:.0f}"),
        "final_level_pct": Figure("final level, % of limit"),
        "writes_per_station_hour": Figure("writes/station in the hour around the raise (mean)", "{:.2f}", ("<=", 6.0)),
        "writes_per_station_hour_max": Figure(
            "writes/station in the hour around the raise (busiest)", "{:.2f}", ("<=", 6.0)
        ),
        "writes_per_station_10min_after": Figure("writes/station in the 10 min after the raise (mean)", "{:.2f}"),
        "writes_per_station_10min_after_max": Figure(
            "writes/station in the 10 min after the raise (busiest)", "{:.0f}"
        ),
        "violation_steps": Figure("steps above the limit (whole run)", "{:.0f}", ("<=", 0.0)),
    },
    "fleet-idle": {},
    "fleet-charging": {},
    "demo": {
        "stations_connected": Figure("stations connected", "{:.0f}"),
        "of_optimum_pct": Figure("delivered, % of the offline optimum", "{:.1f}", (">=", 99.0)),
        "delivered_kwh": Figure("delivered (of need), kWh"),
        "optimum_kwh": Figure("offline optimum, kWh"),
        "feasible_finished": Figure("feasible sessions (departed)", "{:.0f}"),
        "feasible_late": Figure("feasible sessions late", "{:.0f}", ("<=", 0.0)),
        "site_feasible_late": Figure("feasible at this site, late", "{:.0f}", ("<=", 0.0)),
        "violation_steps": Figure("limit violations (steps)", "{:.0f}", ("<=", 0.0)),
        "writes_per_station_hour": Figure("writes per station-hour (mean)", "{:.2f}", ("<=", 6.0)),
        "writes_per_station_hour_max": Figure("writes per station-hour (busiest station)", "{:.2f}", ("<=", 6.0)),
        "writes_peak_station_clock_hour": Figure("most writes to a station in one clock hour", "{:.0f}"),
        "profiles_rejected": Figure("profiles rejected by stations", "{:.0f}"),
        "real_s": Figure("real time, s", "{:.0f}"),
    },
}
_FLEET = {
    "stations_connected": Figure("stations connected", "{:.0f}"),
    "writes_per_station_min": Figure("writes/station/min after start-up (mean)", "{:.3f}", ("<=", 0.2)),
    "writes_per_station_min_max": Figure("writes/station/min after start-up (busiest)", "{:.3f}", ("<=", 0.2)),
    "writes_per_station_startup": Figure("writes/station during start-up (mean)", "{:.1f}"),
    "writes_per_station_startup_max": Figure("writes/station during start-up (busiest)", "{:.0f}"),
    "peak_load_pct": Figure("peak load, % of limit", "{:.1f}", ("<=", 100.0)),
    "seconds_over_limit": Figure("time above the limit, s", "{:.0f}", ("<=", 0.0)),
    "violation_steps": Figure("steps above the limit", "{:.0f}", ("<=", 0.0)),
    "ev_load_kw_mean": Figure("mean EV load after start-up, kW"),
    "ev_load_of_usable_pct": Figure("mean EV load, % of usable (limit − margin − base)"),
    "energy_kwh": Figure("energy delivered, kWh"),
}
FIGURES["fleet-idle"] = dict(_FLEET)
FIGURES["fleet-charging"] = dict(_FLEET)

TITLES = {
    "overload": "overload step: base load +30 % of the limit at T (20 stations, 400 A transformer, meters follow "
    "the draw)",
    "limit-raise": "limit raise: a DSO limit of 60 % withdrawn at T (same site)",
    "fleet-idle": "fleet not drawing: 40 stations under 150 kW, cars plugged in and full (1 h after a 10-min start-up)",
    "fleet-charging": "fleet drawing: 40 stations under 150 kW, cars draw their grant (1 h after a 10-min start-up)",
    "demo-office": "office demo (05:00–24:00 local) to its end",
    "demo-depot": "depot demo (16:00–07:00 local) to its end",
    "demo-residential": "residential demo (05:00–24:00 local) to its end",
}


def figures_of(case: str) -> dict[str, Figure]:
    return FIGURES["demo" if case.startswith("demo-") else case]


@dataclass
class Version:
    """One side of the comparison: an interpreter and the tree it imports gridcharge from."""

    label: str  # before | after
    python: str
    root: Path
    ident: str = ""


@dataclass
class Outcome:
    """A child's result (or its failure)."""

    case: str
    label: str
    doc: dict[str, Any] | None
    error: str = ""
    real_s: float = 0.0
    log: str = ""


HARNESS = Path(__file__).resolve()


def _git(root: Path, *args: str) -> str:
    r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    return r.stdout.strip()


def tree_root(path: Path) -> Path:
    """The working tree holding `path` (the directory with `.git`, a file in a worktree)."""
    for p in [path, *path.parents]:
        if (p / ".git").exists():
            return p
    return path.parent


def identify(root: Path) -> str:
    """`<short sha>` of the tree, `+changes` if tracked files differ from it."""
    sha = _git(root, "rev-parse", "--short", "HEAD") or "?"
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    return sha + ("+changes" if dirty else "")


def child_env() -> dict[str, str]:
    """The children's environment: no GRIDCHARGE_* (a developer's settings would skew one side), no virtualenv
    or PYTHONPATH leaking from this process, a fixed hash seed (same iteration order of sets in both runs)."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDCHARGE_") and k not in drop}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0"})
    return env


def parse_child_output(stdout: str) -> dict[str, Any]:
    """The child's JSON document: the last stdout line that is a JSON object with our contract."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("contract") != CONTRACT:
                raise ValueError(f"child spoke {doc.get('contract')!r}, expected {CONTRACT!r}")
            if not isinstance(doc.get("figures"), dict):
                raise ValueError("child document has no figures")
            return dict(doc)
    raise ValueError("no JSON document on the child's stdout")


def run_child(version: Version, case: str, quick: bool, logdir: Path, tag: str, timeout_s: float = 3 * 3600) -> Outcome:
    """Run the harness for one case under `version`'s interpreter; check it imported that version's code."""
    cmd = [version.python, "-P", str(HARNESS), "--json", "--case", case] + (["--quick"] if quick else [])
    logfile = logdir / f"{case}-{version.label}-{tag}.log"
    t0 = time.monotonic()
    try:
        with logfile.open("w", encoding="utf-8") as err:
            r = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=child_env(),
                cwd=str(version.root),
                timeout=timeout_s,
                check=False,
            )
    except subprocess.TimeoutExpired:
        return Outcome(
            case, version.label, None, f"timed out after {timeout_s:.0f} s", time.monotonic() - t0, str(logfile)
        )
    real = time.monotonic() - t0
    if r.returncode != 0:
        tail = logfile.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        return Outcome(case, version.label, None, f"exit {r.returncode}: {' | '.join(tail)[:300]}", real, str(logfile))
    logfile.with_suffix(".json").write_text(r.stdout, encoding="utf-8")
    try:
        doc = parse_child_output(r.stdout)
    except ValueError as exc:
        return Outcome(case, version.label, None, str(exc), real, str(logfile))
    alloc = Path(str(doc.get("modules", {}).get("allocation", "")))
    if version.root.resolve() not in alloc.resolve().parents:
        return Outcome(
            case,
            version.label,
            None,
            f"{version.python} imported gridcharge.allocation from {alloc}, not from {version.root}",
            real,
            str(logfile),
        )
    return Outcome(case, version.label, doc, "", real, str(logfile))


def median_figures(docs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per figure, the median over repeated runs; a run that never reached it (None) counts as +∞, and a
    median of +∞ is None again (reported as never)."""
    keys: list[str] = []
    for d in docs:
        keys += [k for k in d["figures"] if k not in keys]
    out: dict[str, float | None] = {}
    for k in keys:
        med = float(
            statistics.median(math.inf if d["figures"].get(k) is None else float(d["figures"][k]) for d in docs)
        )
        out[k] = med if math.isfinite(med) else None
    return out


def _fmt(fig: Figure, v: float | None) -> str:
    if v is None:
        return "never"
    return fig.fmt.format(v)


def _cell(fig: Figure, key: str, med: float | None, docs: list[dict[str, Any]]) -> str:
    """The median, and with several runs their range: `41.2 (40.1–83.0)` (`never` is above every number)."""
    text = _fmt(fig, med)
    vals = [d["figures"].get(key) for d in docs]
    if len(vals) > 1:
        finite = [float(v) for v in vals if v is not None]
        lo = min(finite) if finite else None  # "never" sorts above every number
        hi = None if len(finite) < len(vals) else max(finite)
        if lo != hi:
            text += f" ({_fmt(fig, lo)}–{_fmt(fig, hi)})"
    return text


def _meets(fig: Figure, v: float | None) -> str:
    if fig.target is None:
        return ""
    if v is None:
        return "✗"
    op, goal = fig.target
    ok = v <= goal + 1e-9 if op == "<=" else v >= goal - 1e-9
    return "✓" if ok else "✗"


def table(case: str, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """Markdown table: figure | before | after | after/before | target (✓/✗ for before, after)."""
    figs = figures_of(case)
    b = median_figures(before) if before else {}
    a = median_figures(after) if after else {}
    rows = ["| figure | before | after | after/before | target (before, after) |", "|---|---:|---:|---:|---|"]
    for key, fig in figs.items():
        if key not in a and key not in b:
            continue
        vb, va = b.get(key), a.get(key)
        ratio = "—"
        if vb is not None and va is not None and abs(vb) > 1e-9:
            ratio = f"{va / vb:.2f}"
        tgt = ""
        if fig.target is not None:
            tgt = (
                f"{fig.target[0].replace('<=', '≤').replace('>=', '≥')} {fig.target[1]:g} "
                f"({_meets(fig, vb) if before else '-'}, {_meets(fig, va) if after else '-'})"
            )
        sb = _cell(fig, key, vb, before) if before else "failed"
        sa = _cell(fig, key, va, after) if after else "failed"
        rows.append(f"| {fig.label} | {sb} | {sa} | {ratio} | {tgt} |")
    return "\n".join(rows)


def why_lines(docs: list[dict[str, Any]], label: str) -> list[str]:
    """Of the first run: the busiest stations' writes, the busiest clock hour, feasible sessions that were late."""
    out = []

    def kinds(d: dict[str, int]) -> str:
        return ", ".join(f"{n} {k}" for k, n in sorted(d.items(), key=lambda kv: -kv[1]))

    for d in docs[:1]:
        detail = d.get("detail", {})
        for w in detail.get("why", [])[:2]:
            out.append(
                f"- {label}: {w['station']} got {w['writes']} writes in the counted window ({kinds(w['kinds'])})"
            )
        peak = detail.get("peak_hour")
        if peak and peak.get("station"):
            out.append(
                f"- {label}: most in one clock hour: {peak['station']} {peak['hour_utc']} UTC ({kinds(peak['kinds'])})"
            )
        for s in detail.get("late", []):
            out.append(
                f"- {label}: feasible session late: {s['ev']} got {s['delivered_kwh']} of {s['need_kwh']} kWh "
                f"(offline optimum {s['optimum_kwh']})"
            )
    return out


def report(
    cases: list[str],
    results: dict[tuple[str, str], list[Outcome]],
    versions: dict[str, Version],
    repeat: int,
    quick: bool,
    cmd: str,
) -> str:
    """The whole side-by-side report (markdown)."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    head = (
        f"\n### bench control — {when}\n\n`{cmd}` on {platform.machine()} ({os.cpu_count()} cores, shared; "
        f"load average {load:.1f} at the end); before = `{versions['before'].ident}` "
        f"({versions['before'].root}), after = `{versions['after'].ident}` ({versions['after'].root}); "
        + (f"median of {repeat} runs per side; " if repeat > 1 else "one run per side; ")
        + ("quick variants (smaller and shorter than the titles say); " if quick else "")
        + "all figures in simulated time on ground truth except real time.\n"
    )
    parts = [head]
    for case in cases:
        before = [o.doc for o in results.get((case, "before"), []) if o.doc is not None]
        after = [o.doc for o in results.get((case, "after"), []) if o.doc is not None]
        parts.append(f"\n**{case}** — {TITLES.get(case, case)}\n")
        parts.append(table(case, before, after))
        notes = why_lines(before, "before") + why_lines(after, "after")
        for o in results.get((case, "before"), []) + results.get((case, "after"), []):
            if o.doc is None:
                notes.append(f"- {o.label} failed: {o.error} (log: {o.log})")
        if notes:
            parts.append("\n" + "\n".join(notes))
        parts.append("")
    return "\n".join(parts)


def record(text: str, doc: Path = BENCH_DOC) -> None:
    """Append `text` at the end of the `## Control quality` section of docs/benchmarks.md (created if missing)."""
    body = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    if SECTION not in body:
        body = body.rstrip("\n") + f"\n\n{SECTION}\n"
    start = body.index(SECTION)
    nxt = body.find("\n## ", start + len(SECTION))
    end = nxt if nxt != -1 else len(body)
    body = body[:end].rstrip("\n") + "\n" + text.rstrip("\n") + "\n" + body[end:]
    doc.write_text(body, encoding="utf-8")


def select_cases(spec: str | None) -> list[str]:
    """Case names from a comma list of names and groups (all, step, fleet, demos)."""
    out: list[str] = []
    for part in (spec or "all").split(","):
        part = part.strip()
        names = GROUPS.get(part, [part] if part in CASES else None)
        if names is None:
            raise SystemExit(
                f"gridcharge bench control: unknown case {part!r}; cases: {', '.join(CASES)}; "
                f"groups: {', '.join(GROUPS)}"
            )
        out += [n for n in names if n not in out]
    return out


@contextlib.contextmanager
def baseline_tree(directory: str | None, ref: str | None, log: Callable[[str], None]) -> Any:
    """The baseline's root: DIR as given, or a temporary `git worktree` of REF with `make install` run in it
    (removed afterwards)."""
    if directory is not None:
        yield Path(directory).resolve()
        return
    assert ref is not None
    here = tree_root(HARNESS)
    tmp = Path(tempfile.mkdtemp(prefix="gridcharge-baseline-")) / "tree"
    log(f"bench control: git worktree {tmp} at {ref}; make install there")
    subprocess.run(
        ["git", "-C", str(here), "worktree", "add", "--detach", str(tmp), ref], check=True, stdout=subprocess.DEVNULL
    )
    try:
        subprocess.run(["make", "-C", str(tmp), "install"], check=True, stdout=subprocess.DEVNULL)
        yield tmp
    finally:
        subprocess.run(["git", "-C", str(here), "worktree", "remove", "--force", str(tmp)], check=False)
        shutil.rmtree(tmp.parent, ignore_errors=True)


def compare(
    cases: list[str],
    versions: dict[str, Version],
    *,
    quick: bool = False,
    repeat: int = 1,
    jobs: int = 1,
    runner: Callable[..., Outcome] = run_child,
    log: Callable[[str], None] = print,
) -> dict[tuple[str, str], list[Outcome]]:
    """Run every case `repeat` times under both versions (before first, then after, case by case; `jobs` > 1
    runs that many children at once). Returns the outcomes per (case, before|after)."""
    logdir = Path(tempfile.mkdtemp(prefix="gridcharge-bench-control-"))
    plan = [(case, label, rep) for case in cases for rep in range(repeat) for label in ("before", "after")]
    results: dict[tuple[str, str], list[Outcome]] = {}

    def one(item: tuple[str, str, int]) -> Outcome:
        case, label, rep = item
        o = runner(versions[label], case, quick, logdir, str(rep))
        state = "ok" if o.doc is not None else f"FAILED ({o.error})"
        log(f"bench control: {case} {label} run {rep + 1}/{repeat}: {state}, {o.real_s:.0f} s real")
        return o

    log(f"bench control: {len(plan)} runs, their stderr and JSON in {logdir}")
    if jobs <= 1:
        outcomes = [one(item) for item in plan]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            outcomes = list(pool.map(one, plan))
    for (case, label, _rep), o in zip(plan, outcomes, strict=True):
        results.setdefault((case, label), []).append(o)
    return results


def bench_main(args: argparse.Namespace) -> int:
    """`gridcharge bench control [--baseline DIR | --baseline-ref REF] [--cases ...] [--repeat N] [--jobs N]
    [--quick] [--record]`."""
    directory, ref = getattr(args, "baseline", None), getattr(args, "baseline_ref", None)
    if (directory is None) == (ref is None):
        print(
            "gridcharge bench control: give the code to compare with: --baseline DIR (a checkout with its own "
            ".venv) or --baseline-ref REF (a git ref; a temporary worktree is installed)",
            file=sys.stderr,
        )
        return 2
    cases = select_cases(getattr(args, "cases", None))
    quick = bool(getattr(args, "quick", False))
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    jobs = max(1, int(getattr(args, "jobs", 1) or 1))

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with baseline_tree(directory, ref, say) as base_root:
        py = base_root / ".venv" / "bin" / "python"
        if not py.exists():
            print(f"gridcharge bench control: {py} not found (run `make install` in {base_root})", file=sys.stderr)
            return 2
        here = tree_root(HARNESS)
        versions = {
            "before": Version("before", str(py), base_root, identify(base_root)),
            "after": Version("after", sys.executable, here, identify(here)),
        }
        results = compare(cases, versions, quick=quick, repeat=repeat, jobs=jobs, log=say)
    cmd = "gridcharge bench control " + " ".join(
        ([f"--baseline {directory}"] if directory else [f"--baseline-ref {ref}"])
        + ([f"--cases {args.cases}"] if getattr(args, "cases", None) else [])
        + ([f"--repeat {repeat}"] if repeat > 1 else [])
        + ([f"--jobs {jobs}"] if jobs > 1 else [])
        + (["--quick"] if quick else [])
    )
    text = report(cases, results, versions, repeat, quick, cmd)
    print(text)
    if getattr(args, "record", False):
        record(text)
    failed = [o for outs in results.values() for o in outs if o.doc is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(child_main())
