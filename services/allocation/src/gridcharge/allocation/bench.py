"""Allocator benchmarks: online MPC vs acnportal EDF/LLF vs the offline LP optimum, and planner solve time.

``run_allocator_bench`` replays an ACN-Data session log under aggregate caps with
(a) our planner in online MPC (``core.replay.run_replay``),
(b) acnportal 0.3.3's ``SortedSchedulingAlgo`` with ``earliest_deadline_first`` / ``least_laxity_first``
    run through acnportal's own simulator (ACN-Sim) with one aggregate current constraint at 208 V,
(c) the offline optimum: one LP over the whole log that knows the future (continuous currents, no minimum
    current) — the physical limit.
``run_solve_time_bench`` times re-plans on a synthetic 3-phase tree (transformers × 100 EVSEs).
Run: ``python -m gridcharge.allocation.bench --help``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from gridcharge.allocation.core.model import (
    PHASES,
    Evse,
    NodeCapacity,
    PlannerConfig,
    PlanningProblem,
    Session,
    SlotGrid,
)
from gridcharge.allocation.core.planner import LpPlanner
from gridcharge.allocation.core.replay import (
    ACN_CALTECH_2019_03,
    ACN_VOLTAGE_V,
    SITE,
    ReplayResult,
    default_tariff,
    read_sessions,
    run_replay,
)

DEFAULT_SESSIONS = ACN_CALTECH_2019_03


@dataclass
class AlgoRow:
    """One (algorithm, cap) result of the allocator benchmark."""

    algo: str
    cap_kw: float
    delivered_kwh: float
    requested_kwh: float
    peak_kw: float
    violations: int
    run_s: float
    optimum_kwh: float = math.nan

    @property
    def pct_requested(self) -> float:
        """Delivered as % of requested energy."""
        return 100.0 * self.delivered_kwh / max(self.requested_kwh, 1e-12)

    @property
    def pct_optimum(self) -> float:
        """Delivered as % of the offline optimum at the same cap."""
        return 100.0 * self.delivered_kwh / self.optimum_kwh if self.optimum_kwh > 0 else math.nan


@dataclass
class AllocatorBench:
    """All rows of one benchmark run plus the rendered table."""

    rows: list[AlgoRow] = field(default_factory=list)
    sessions: int = 0
    periods: int = 0

    def table(self) -> str:
        """Markdown table of the results."""
        head = (
            "| cap kW | algorithm | delivered kWh | % of requested | % of optimum | peak kW | "
            "cap violations | run time s |\n|---:|---|---:|---:|---:|---:|---:|---:|"
        )
        lines = [head]
        for r in self.rows:
            lines.append(
                f"| {r.cap_kw:g} | {r.algo} | {r.delivered_kwh:.1f} | {r.pct_requested:.2f} | "
                f"{r.pct_optimum:.2f} | {r.peak_kw:.2f} | {r.violations} | {r.run_s:.1f} |"
            )
        return "\n".join(lines)


def offline_optimum(
    sessions_csv: str | Path, cap_kw: float, days: float | None = None, voltage_v: float = ACN_VOLTAGE_V
) -> AlgoRow:
    """The physical limit: one LP over the whole log knowing every arrival, departure and need.

    Continuous currents (no 6 A minimum), so it upper-bounds every online scheduler.
    """
    t0 = time.perf_counter()
    log = read_sessions(sessions_csv, 5.0, days)
    T = log.horizon_periods
    cap = np.full((PHASES, T), np.inf)
    cap[0] = cap_kw * 1000.0
    evses = {s.station_id: Evse(s.station_id, (SITE,), (0,), math.inf, 0.0) for s in log.sessions}
    sessions = [
        Session(
            s.session_id,
            s.station_id,
            s.requested_kwh * 1000.0,
            s.arrival_period,
            s.departure_period,
            0.0,
            s.max_power_kw * 1000.0 / voltage_v,
            1,
            voltage_v,
        )
        for s in log.sessions
    ]
    cfg = PlannerConfig(
        two_stage=False, early_weight=0.0, current_step_a=0.0, apply_min_current=False, time_limit_s=600.0
    )
    problem = PlanningProblem(
        SlotGrid(log.start, T, 300.0), [NodeCapacity(SITE, cap)], list(evses.values()), sessions, config=cfg
    )
    plan = LpPlanner().plan(problem)
    delivered = float(sum(v.planned_wh for v in plan.verdicts.values())) / 1000.0
    peak = float(plan.node_load_w[SITE][0].max()) / 1000.0
    viol = int((plan.node_load_w[SITE][0] > cap_kw * 1000.0 + 1e-3).sum())
    return AlgoRow(
        "offline LP optimum",
        cap_kw,
        delivered,
        sum(s.requested_kwh for s in log.sessions),
        peak,
        viol,
        time.perf_counter() - t0,
    )


def _shim_pkg_resources() -> None:
    """acnportal 0.3.3 imports ``pkg_resources`` (setuptools) only to read its own version for JSON
    serialisation; without setuptools in the venv, give it a minimal stand-in backed by importlib.metadata.
    """
    import importlib.metadata
    import sys
    import types

    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        mod = types.ModuleType("pkg_resources")

        def require(name: str) -> list[Any]:
            return [types.SimpleNamespace(version=importlib.metadata.version(name))]

        mod.require = require  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = mod


def run_acnportal(
    sessions_csv: str | Path,
    cap_kw: float,
    sort: str = "edf",
    days: float | None = None,
    voltage_v: float = ACN_VOLTAGE_V,
) -> AlgoRow:
    """EDF or LLF from acnportal 0.3.3 run through ACN-Sim with one aggregate current constraint.

    Stations are continuous ``EVSE``s (0…32 A — acnportal's default, slightly more freedom than our
    0-or-≥6 A), EVs have an ideal ``Battery`` limited to the session's max power.
    """
    _shim_pkg_resources()
    from acnportal import acnsim  # dev dependency, imported lazily
    from acnportal.algorithms import SortedSchedulingAlgo, earliest_deadline_first, least_laxity_first

    t0 = time.perf_counter()
    log = read_sessions(sessions_csv, 5.0, days)
    network = acnsim.ChargingNetwork()
    stations = sorted({s.station_id for s in log.sessions})
    for sid in stations:
        network.register_evse(acnsim.models.EVSE(sid, max_rate=32.0), voltage_v, 0.0)
    limit_a = cap_kw * 1000.0 / voltage_v
    network.add_constraint(acnsim.Current(stations), limit_a, name="aggregate")
    events = []
    for s in log.sessions:
        if s.departure_period <= s.arrival_period:
            continue
        battery = acnsim.Battery(1000.0, 0.0, s.max_power_kw)
        ev = acnsim.EV(s.arrival_period, s.departure_period, s.requested_kwh, s.station_id, s.session_id, battery)
        events.append(acnsim.PluginEvent(s.arrival_period, ev))
    queue = acnsim.EventQueue(events)
    fn = {"edf": earliest_deadline_first, "llf": least_laxity_first}[sort]
    algo = SortedSchedulingAlgo(fn)
    start = log.start.replace(tzinfo=ZoneInfo("America/Los_Angeles"))
    sim = acnsim.Simulator(network, algo, queue, start, period=5, verbose=False)
    sim.run()
    agg_a = np.asarray(acnsim.aggregate_current(sim), dtype=float)
    delivered = sum(min(ev.energy_delivered, ev.requested_energy) for ev in sim.ev_history.values())
    return AlgoRow(
        f"acnportal {sort.upper()}",
        cap_kw,
        float(delivered),
        sum(s.requested_kwh for s in log.sessions),
        float(agg_a.max()) * voltage_v / 1000.0,
        int((agg_a > limit_a + 1e-4).sum()),
        time.perf_counter() - t0,
    )


def _mpc_row(res: ReplayResult, cap_kw: float) -> AlgoRow:
    return AlgoRow(
        "gridcharge MPC (online)",
        cap_kw,
        res.delivered_total_kwh,
        res.requested_total_kwh,
        res.peak_kw,
        res.violations,
        res.wall_s,
    )


def run_allocator_bench(
    sessions_csv: str | Path = DEFAULT_SESSIONS,
    caps_kw: Sequence[float] = (20, 30, 50),
    days: float | None = None,
    algos: Sequence[str] = ("mpc", "edf", "llf", "optimum"),
) -> AllocatorBench:
    """Compare MPC, acnportal EDF/LLF and the offline optimum at each cap in one run."""
    bench = AllocatorBench()
    log = read_sessions(sessions_csv, 5.0, days)
    bench.sessions, bench.periods = len(log.sessions), log.horizon_periods
    for cap in caps_kw:
        rows: list[AlgoRow] = []
        if "optimum" in algos:
            rows.append(offline_optimum(sessions_csv, cap, days))
        if "mpc" in algos:
            rows.append(_mpc_row(run_replay(sessions_csv, cap, days=days), cap))
        for sort in ("edf", "llf"):
            if sort in algos:
                rows.append(run_acnportal(sessions_csv, cap, sort, days))
        opt = next((r.delivered_kwh for r in rows if r.algo.startswith("offline")), math.nan)
        for r in rows:
            r.optimum_kwh = opt
        bench.rows.extend(rows)
    return bench


# --------------------------------------------------------------------------- solve-time benchmark


def synthetic_problem(
    n_sessions: int, seed: int = 0, slots: int = 96, slot_s: float = 900.0, evses_per_transformer: int = 100
) -> PlanningProblem:
    """A realistic DSO-scale re-plan: site → transformers → 100 EVSEs each, three phases, mixed EVs.

    Transformers: 250 kW (≈ 362 A/phase at 230 V) minus a daily base-load shape; the site feeder 80 % of
    the transformers' sum; EVSEs on rotated phase maps; 40 % single-phase 16–32 A EVs, 60 % three-phase
    16 A; needs 5–60 kWh, departures 2–24 h, TOU price and PV surplus on a third of the transformers.
    """
    rng = np.random.default_rng(seed)
    n_tr = max(1, math.ceil(n_sessions / evses_per_transformer))
    hours = (np.arange(slots) * slot_s / 3600.0) % 24
    base = 0.35 + 0.25 * np.exp(-((hours - 19.0) ** 2) / 8.0) + 0.15 * np.exp(-((hours - 8.0) ** 2) / 4.0)
    tr_cap_w = 250e3 / 3
    nodes = [
        NodeCapacity(
            SITE,
            np.full((PHASES, slots), 0.8 * n_tr * tr_cap_w * 0.7),
            None,
            ("feeder_rating", "feeder_rating", "feeder_rating"),
        )
    ]
    pv: dict[str, Any] = {}
    for k in range(n_tr):
        head = tr_cap_w * (1.0 - base * rng.uniform(0.8, 1.2))
        nodes.append(
            NodeCapacity(
                f"tr{k}", np.tile(head, (PHASES, 1)), SITE, ("transformer_rating", "transformer_rating", "dso_limit")
            )
        )
        if k % 3 == 0:
            pv[f"tr{k}"] = np.clip(60e3 * np.sin(np.pi * (hours - 7.0) / 12.0), 0.0, None)
    evses = []
    sessions = []
    rotations = ((0, 1, 2), (1, 2, 0), (2, 0, 1))
    for i in range(n_sessions):
        tr = i // evses_per_transformer
        evses.append(Evse(f"ev{i}", (f"tr{tr}", SITE), rotations[i % 3], 32.0, 6.0))
        one_phase = rng.random() < 0.4
        need = rng.uniform(5e3, 60e3)
        dep = int(rng.integers(8, slots + 1))
        sessions.append(
            Session(
                f"s{i}",
                f"ev{i}",
                need,
                int(rng.integers(0, 4)) if rng.random() < 0.2 else 0,
                dep,
                6.0,
                float(rng.choice([16.0, 32.0])) if one_phase else 16.0,
                1 if one_phase else 3,
                230.0,
                float(rng.choice([1.0, 1.0, 1.0, 2.0])),
                float(rng.uniform(0, 0.3) * need),
            )
        )
    price = np.array([default_tariff(datetime(2026, 1, 1) + timedelta(hours=float(h))) for h in hours])
    return PlanningProblem(SlotGrid(datetime(2026, 1, 1), slots, slot_s), nodes, evses, sessions, price, pv)


DEFAULT_VARIANTS: dict[str, PlannerConfig] = {
    "exact (96 × 15 min)": PlannerConfig(time_limit_s=60.0),
    "blocks (8 × 15 min, then 1 h)": PlannerConfig(coarse_factor=4, time_limit_s=60.0),
    "blocks (4 × 15 min, then 1 h), IPM weighted": PlannerConfig(
        coarse_factor=4, fine_slots=4, auto_threshold_vars=0, time_limit_s=60.0
    ),
}


def run_solve_time_bench(
    sizes: Sequence[int] = (100, 1000, 3000, 10000),
    repeats: int = 10,
    timeout_s: float = 60.0,
    variants: dict[str, PlannerConfig] | None = None,
) -> list[dict[str, Any]]:
    """p50/p95/max re-plan time (s) of ``LpPlanner.plan`` per problem size and planner variant.

    Each run is a fresh synthetic problem (seed = run index). Sizes above 1,000 run ``max(2, repeats // 5)``
    times. A variant stops growing once a plan hits ``timeout_s`` (HiGHS time limit) — reported as timeout.
    """
    out: list[dict[str, Any]] = []
    planner = LpPlanner()
    for label, base_cfg in (variants or DEFAULT_VARIANTS).items():
        cfg = replace(base_cfg, time_limit_s=timeout_s)
        for n in sizes:
            times: list[float] = []
            cpu: list[float] = []
            viol = 0
            timed_out = False
            energy = 0.0
            reps = repeats if n <= 1000 else max(2, repeats // 5)
            for r in range(reps):
                prob = replace(synthetic_problem(n, seed=r), config=cfg)
                t0, c0 = time.perf_counter(), time.process_time()
                plan = planner.plan(prob)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                energy += sum(v.planned_wh for v in plan.verdicts.values()) / 1000.0
                for node in prob.nodes:
                    viol += int((plan.node_load_w[node.node_id] > node.capacity_w + 1e-6).sum())
                if plan.status != "Optimal":
                    timed_out = True
                    break
            arr = np.asarray(times)
            out.append(
                {
                    "variant": label,
                    "sessions": n,
                    "runs": arr.size,
                    "p50_s": float(np.median(arr)),
                    "p95_s": float(np.percentile(arr, 95)),
                    "max_s": float(arr.max()),
                    "cpu_p50_s": float(np.median(cpu)),
                    "cpu_p95_s": float(np.percentile(cpu, 95)),
                    "violations": viol,
                    "timeout": timed_out,
                    "planned_kwh_per_run": energy / arr.size,
                }
            )
            if timed_out:
                break
    return out


def solve_time_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``run_solve_time_bench`` output."""
    lines = [
        "| variant | sessions | runs | p50 s | p95 s | max s | CPU p50 s | CPU p95 s | planned kWh/run "
        "| limit violations |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p95 = f"timeout at {r['max_s']:.0f} s" if r.get("timeout") else f"{r['p95_s']:.3f}"
        lines.append(
            f"| {r.get('variant', '')} | {int(r['sessions'])} | {int(r['runs'])} | {r['p50_s']:.3f} | "
            f"{p95} | {r['max_s']:.3f} | {r.get('cpu_p50_s', 0.0):.3f} | {r.get('cpu_p95_s', 0.0):.3f} | "
            f"{r.get('planned_kwh_per_run', 0.0):.0f} | "
            f"{int(r['violations'])} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m gridcharge.allocation.bench [allocator|solve-time] ...``."""
    ap = argparse.ArgumentParser(prog="python -m gridcharge.allocation.bench")
    ap.add_argument("which", choices=["allocator", "solve-time"], nargs="?", default="allocator")
    ap.add_argument("--sessions", default=str(DEFAULT_SESSIONS))
    ap.add_argument("--caps-kw", default="20,30,50")
    ap.add_argument("--days", type=float, default=None)
    ap.add_argument("--algos", default="mpc,edf,llf,optimum")
    ap.add_argument("--sizes", default="100,1000,3000,10000")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument(
        "--variant",
        action="append",
        default=None,
        help="solve-time: only variants whose label starts with this (repeatable)",
    )
    args = ap.parse_args(argv)
    if args.which == "allocator":
        bench = run_allocator_bench(
            args.sessions, [float(c) for c in args.caps_kw.split(",")], args.days, args.algos.split(",")
        )
        print(f"{bench.sessions} sessions, {bench.periods} periods of 5 min")
        print(bench.table())
    else:
        variants = {
            k: v for k, v in DEFAULT_VARIANTS.items() if not args.variant or any(k.startswith(p) for p in args.variant)
        }
        rows = run_solve_time_bench([int(s) for s in args.sizes.split(",")], args.repeats, variants=variants)
        print(solve_time_table(rows))


if __name__ == "__main__":
    main()
