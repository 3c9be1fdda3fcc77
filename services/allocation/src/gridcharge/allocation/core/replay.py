"""Replay: the planner in simulated time over a recorded session log (ACN-Data CSV), online MPC.

Every period (5 min by default) the planner sees only the sessions that have arrived and are still plugged
in (no future knowledge), plans over a horizon up to the latest known departure (capped), and the first
slot is applied; delivered energy is updated with what the car actually takes (it stops when full).
Pure apart from reading the CSV file given by path.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from gridcharge.allocation.core.model import (
    PHASES,
    Evse,
    FloatArray,
    NodeCapacity,
    Planner,
    PlannerConfig,
    PlanningProblem,
    Session,
    SlotGrid,
)
from gridcharge.allocation.core.planner import LpPlanner

SITE = "site"
ACN_VOLTAGE_V = 208.0
# The reference log, shipped inside this package (data/acn-caltech-2019-03/README.md: source and terms).
ACN_CALTECH_2019_03 = Path(__file__).resolve().parents[1] / "data" / "acn-caltech-2019-03" / "sessions.csv"


@dataclass(frozen=True)
class LoggedSession:
    """One recorded session: periods are indices of ``period_min`` slots since the log's first midnight."""

    session_id: str
    station_id: str
    arrival_period: int
    departure_period: int
    requested_kwh: float
    max_power_kw: float


@dataclass(frozen=True)
class SessionLog:
    """A parsed session log: sessions, period length (min) and the local start time of period 0."""

    sessions: list[LoggedSession]
    period_min: float
    start: datetime

    @property
    def horizon_periods(self) -> int:
        """Number of periods until the last departure."""
        return max((s.departure_period for s in self.sessions), default=0)


def read_sessions(sessions_csv: str | Path, period_min: float = 5.0, days: float | None = None) -> SessionLog:
    """Read an ACN-Data style CSV (the format of :data:`ACN_CALTECH_2019_03`; see its README.md).

    With ``period_min`` = 5 the file's ``arrival_period``/``departure_period`` columns are used; otherwise
    periods are recomputed from the local timestamps. ``days`` keeps sessions arriving in the first N days.
    """
    with open(sessions_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    local = [
        (
            datetime.fromisoformat(r["arrival"]).replace(tzinfo=None),
            datetime.fromisoformat(r["departure"]).replace(tzinfo=None),
        )
        for r in rows
    ]
    first = min(a for a, _ in local)
    start = datetime(first.year, first.month, first.day)
    out: list[LoggedSession] = []
    for r, (arr, dep) in zip(rows, local, strict=True):
        if abs(period_min - 5.0) < 1e-9 and r.get("arrival_period"):
            ap, dp = int(r["arrival_period"]), int(r["departure_period"])
        else:
            ap = int((arr - start).total_seconds() // (period_min * 60))
            dp = int((dep - start).total_seconds() // (period_min * 60))
        if days is not None and ap >= days * 1440 / period_min:
            continue
        out.append(
            LoggedSession(
                r["session_id"],
                r["station_id"],
                ap,
                max(dp, ap),
                float(r["requested_energy_kwh"]),
                float(r.get("max_power_kw") or 6.656),
            )
        )
    out.sort(key=lambda s: (s.arrival_period, s.session_id))
    return SessionLog(out, period_min, start)


def default_tariff(when: datetime) -> float:
    """Simple TOU tariff (currency/kWh, local time): peak 16–21 h 0.40, mid 8–16 h 0.22, else 0.12."""
    h = when.hour
    if 16 <= h < 21:
        return 0.40
    if 8 <= h < 16:
        return 0.22
    return 0.12


@dataclass
class ReplayResult:
    """Outcome of a replay. Energies in kWh, power in kW, cost in tariff currency."""

    session_ids: list[str]
    requested_kwh: FloatArray
    delivered_kwh: FloatArray
    power_kw: FloatArray  # [P] aggregate power per period (what the cars drew)
    commanded_kw: FloatArray  # [P] aggregate of the applied limits
    capacity_kw: FloatArray  # [P]
    period_min: float
    cost: float
    violations: int
    replans: int
    replan_s: FloatArray
    wall_s: float
    label: str = "gridcharge MPC"
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def requested_total_kwh(self) -> float:
        """Σ requested energy (kWh)."""
        return float(self.requested_kwh.sum())

    @property
    def delivered_total_kwh(self) -> float:
        """Σ delivered energy (kWh)."""
        return float(self.delivered_kwh.sum())

    @property
    def pct_delivered(self) -> float:
        """Delivered as % of requested."""
        return 100.0 * self.delivered_total_kwh / max(self.requested_total_kwh, 1e-12)

    @property
    def peak_kw(self) -> float:
        """Highest aggregate power over the replay (kW)."""
        return float(self.power_kw.max()) if self.power_kw.size else 0.0

    def summary(self) -> str:
        """Human-readable summary (one line per figure)."""
        p95 = float(np.percentile(self.replan_s, 95)) if self.replan_s.size else 0.0
        done = int((self.delivered_kwh >= self.requested_kwh * 0.999 - 1e-6).sum())
        cap_max = float(self.capacity_kw.max()) if self.capacity_kw.size else 0.0
        return "\n".join(
            [
                f"{self.label}: {len(self.session_ids)} sessions, {self.power_kw.size} periods of "
                f"{self.period_min:g} min",
                f"energy delivered {self.delivered_total_kwh:.1f} / {self.requested_total_kwh:.1f} kWh "
                f"({self.pct_delivered:.2f} %), sessions fully served {done}/{len(self.session_ids)}",
                f"peak {self.peak_kw:.2f} kW (cap max {cap_max:.2f} kW), cap violations {self.violations}",
                f"cost {self.cost:.2f} (TOU tariff)",
                f"replans {self.replans}, replan time p50 "
                f"{float(np.median(self.replan_s)) if self.replan_s.size else 0:.4f} s p95 {p95:.4f} s, "
                f"wall {self.wall_s:.1f} s",
            ]
        )


def _capacity_series(capacity_kw: float | Sequence[float] | FloatArray, periods: int) -> FloatArray:
    arr = np.asarray(capacity_kw, dtype=float)
    if arr.ndim == 0:
        return np.full(periods, float(arr))
    if arr.size < periods:
        arr = np.concatenate([arr, np.full(periods - arr.size, arr[-1])])
    return arr[:periods]


def run_replay(
    sessions_csv: str | Path,
    capacity_kw: float | Sequence[float] | FloatArray,
    period_min: float = 5.0,
    *,
    horizon_h: float = 24.0,
    days: float | None = None,
    tariff: Callable[[datetime], float] = default_tariff,
    optimise_cost: bool = False,
    planner: Planner | None = None,
    config: PlannerConfig | None = None,
    voltage_v: float = ACN_VOLTAGE_V,
    min_current_a: float = 6.0,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Online MPC replay of a session log under an aggregate cap.

    ``capacity_kw``: constant kW or one value per period. Each period: plan over the arrived, unfinished
    sessions (horizon until their latest departure, ≤ ``horizon_h``), apply the first slot, record what the
    cars draw. ``optimise_cost`` passes the tariff to the planner (stage 2); otherwise it is only reported.
    Stations are single-phase at ``voltage_v`` (ACN: 208 V), max current = max_power_kw / V.
    """
    log = read_sessions(sessions_csv, period_min, days)
    planner = planner or LpPlanner()
    cfg = config or PlannerConfig(fairness_weight=0.0)
    n = len(log.sessions)
    P = log.horizon_periods
    cap_kw = _capacity_series(capacity_kw, P)
    dt_h = period_min / 60.0
    horizon = max(1, round(horizon_h * 60 / period_min))
    requested_wh = np.array([s.requested_kwh * 1000.0 for s in log.sessions])
    delivered_wh = np.zeros(n)
    arrivals = np.array([s.arrival_period for s in log.sessions])
    departures = np.array([s.departure_period for s in log.sessions])
    imax = np.array([s.max_power_kw * 1000.0 / voltage_v for s in log.sessions])
    price_p = np.array([tariff(log.start + timedelta(minutes=period_min * p)) for p in range(P)])
    power_kw = np.zeros(P)
    commanded_kw = np.zeros(P)
    replan_s: list[float] = []
    violations = 0
    t_wall = time.perf_counter()
    evse_cache: dict[str, Evse] = {}
    for t in range(int(arrivals.min()) if n else 0, P):
        act = np.flatnonzero((arrivals <= t) & (departures > t) & (delivered_wh < requested_wh - 1e-6))
        if act.size == 0:
            continue
        T = int(min(horizon, departures[act].max() - t))
        evses = []
        sessions = []
        for i in act:
            ls = log.sessions[i]
            ev = evse_cache.get(ls.station_id)
            if ev is None:
                ev = evse_cache[ls.station_id] = Evse(
                    ls.station_id, (SITE,), (0,), max_current_a=math.inf, min_current_a=min_current_a
                )
            evses.append(ev)
            sessions.append(
                Session(
                    ls.session_id,
                    ls.station_id,
                    float(requested_wh[i]),
                    0,
                    int(departures[i] - t),
                    min_current_a,
                    float(imax[i]),
                    1,
                    voltage_v,
                    1.0,
                    float(delivered_wh[i]),
                )
            )
        cap_row = np.full((PHASES, T), np.inf)
        cap_row[0] = cap_kw[t : t + T] * 1000.0 if t + T <= P else _capacity_series(cap_kw[t:], T) * 1000.0
        problem = PlanningProblem(
            slots=SlotGrid(log.start + timedelta(minutes=period_min * t), T, period_min * 60.0),
            nodes=[NodeCapacity(SITE, cap_row, None, ("capacity_profile", "none", "none"))],
            evses=list({e.evse_id: e for e in evses}.values()),
            sessions=sessions,
            price_per_kwh=_capacity_series(price_p[t:], T) if optimise_cost else None,
            config=cfg,
        )
        t0 = time.perf_counter()
        plan = planner.plan(problem)
        replan_s.append(time.perf_counter() - t0)
        amps = plan.current_a[:, 0]
        cmd_w = amps * voltage_v
        drawn_wh = np.minimum(cmd_w * dt_h, requested_wh[act] - delivered_wh[act])
        delivered_wh[act] += drawn_wh
        commanded_kw[t] = float(cmd_w.sum()) / 1000.0
        power_kw[t] = float(drawn_wh.sum()) / dt_h / 1000.0
        if commanded_kw[t] > cap_kw[t] + 1e-6:
            violations += 1
        if progress is not None:
            progress(t, P)
    cost = float((power_kw * dt_h * price_p).sum())
    return ReplayResult(
        session_ids=[s.session_id for s in log.sessions],
        requested_kwh=requested_wh / 1000.0,
        delivered_kwh=delivered_wh / 1000.0,
        power_kw=power_kw,
        commanded_kw=commanded_kw,
        capacity_kw=cap_kw,
        period_min=period_min,
        cost=cost,
        violations=violations,
        replans=len(replan_s),
        replan_s=np.asarray(replan_s),
        wall_s=time.perf_counter() - t_wall,
    )
