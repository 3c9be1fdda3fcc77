"""Input and output types of the charging planner (pure data, no I/O).

Units are in the names: ``_w`` watts, ``_wh`` watt-hours, ``_a`` amperes, ``_v`` volts, ``_s`` seconds.
Grid phases are indexed 0, 1, 2 (L1, L2, L3). Slots are indexed 0 … T-1 from ``SlotGrid.start``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

PHASES = 3
DEFAULT_SLOT_S = 900.0
DEFAULT_MIN_CURRENT_A = 6.0
DEFAULT_DWELL_S = 8 * 3600.0


@dataclass(frozen=True)
class SlotGrid:
    """The planning horizon: ``count`` consecutive slots of ``duration_s`` seconds from ``start``."""

    start: datetime
    count: int
    duration_s: float = DEFAULT_SLOT_S

    @property
    def duration_h(self) -> float:
        """Slot length in hours (converts W to Wh per slot)."""
        return self.duration_s / 3600.0

    def slot_start(self, index: int) -> datetime:
        """Start time of slot ``index``."""
        return self.start + timedelta(seconds=self.duration_s * index)

    def index_of(self, when: datetime) -> int:
        """Slot index containing ``when`` (may be < 0 or ≥ count)."""
        return int((when - self.start).total_seconds() // self.duration_s)


@dataclass(frozen=True)
class NodeCapacity:
    """A grid node (transformer, feeder, fuse, site) and its per-phase headroom.

    ``capacity_w`` has shape [3, T]: power the chargers below this node may draw on each grid phase in each
    slot, after base load and forecasts (``inf`` = unconstrained). ``source`` labels each phase row
    (e.g. ``"transformer_rating"``, ``"dso_limit"``, ``"fuse"``) so the plan can say why a car is slow.
    """

    node_id: str
    capacity_w: FloatArray
    parent_id: str | None = None
    source: tuple[str, str, str] = ("rating", "rating", "rating")

    @classmethod
    def from_amps(
        cls,
        node_id: str,
        limit_a: float | Sequence[float] | FloatArray,
        slots: int,
        voltage_v: float = 230.0,
        parent_id: str | None = None,
        source: str | tuple[str, str, str] = "rating",
    ) -> NodeCapacity:
        """Build from a per-phase current limit in A (scalar, [3] or [3, T]) at ``voltage_v`` V."""
        arr = np.asarray(limit_a, dtype=float)
        cap = np.broadcast_to(arr.reshape(-1, 1) if arr.ndim == 1 else arr, (PHASES, slots)) * voltage_v
        src = (source, source, source) if isinstance(source, str) else source
        return cls(node_id, np.array(cap, dtype=float), parent_id, src)


@dataclass(frozen=True)
class Evse:
    """A charge point connector.

    ``node_path`` lists the ids of every node whose limit applies, nearest first (e.g. feeder, transformer,
    site). ``phase_map`` gives the grid phase wired to the connector's L1, L2, L3 (rotation allowed); a
    single-phase connector has one entry. An EV using k phases loads ``phase_map[:k]``.
    """

    evse_id: str
    node_path: tuple[str, ...]
    phase_map: tuple[int, ...] = (0, 1, 2)
    max_current_a: float = 32.0
    min_current_a: float = DEFAULT_MIN_CURRENT_A
    max_periods: int = 24
    # what the capacity counts per A of the car's current on each of L1, L2, L3 (a station cap in W: more than
    # the current on L1, less on the others, whatever phases the car uses); () = the phases the car loads, 1 each
    load_weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class Session:
    """A plugged-in (or announced) EV.

    ``arrival_slot``/``departure_slot`` bound the slots it may charge in: arrival … departure-1.
    ``departure_slot=None`` means the driver gave none: the planner uses ``PlannerConfig.default_dwell_s``.
    Current limits are per phase; power = current × ``voltage_v`` × phases loaded.
    ``extra_wh`` (Wh, may be ``inf``): energy the car may take beyond its need in capacity nobody with a need
    can use — for a need nobody gave (OCPP 1.6, no driver input) the site's default is a floor, not a cap.
    The planner gives it lexicographically after every need (docs/planner.md, "Unknown needs").
    """

    session_id: str
    evse_id: str
    energy_needed_wh: float
    arrival_slot: int = 0
    departure_slot: int | None = None
    min_current_a: float = DEFAULT_MIN_CURRENT_A
    max_current_a: float = 32.0
    phases_used: int = 3
    voltage_v: float = 230.0
    priority: float = 1.0
    delivered_wh: float = 0.0
    extra_wh: float = 0.0

    @property
    def remaining_wh(self) -> float:
        """Energy still needed (Wh, ≥ 0)."""
        return max(0.0, self.energy_needed_wh - self.delivered_wh)


@dataclass(frozen=True)
class PlannerConfig:
    """Tuning of the planner objective and of the hardware rounding.

    Lexicographic scheme (see docs/planner.md): stage 1 maximises priority-weighted energy (plus
    ``early_weight`` preference for earlier slots); stage 2 keeps weighted energy ≥ (1−``energy_tolerance``)
    × optimum and minimises cost − ``pv_weight``·PV used − fairness. ``two_stage=None`` (auto): two stages
    up to ``auto_threshold_vars`` LP variables, above that one weighted solve whose secondary terms are
    scaled to ≤ ``weighted_secondary_share`` of the energy value per kWh. ``solver="auto"``: HiGHS' choice
    (dual simplex) for small LPs, interior point without crossover above the threshold.
    ``coarse_factor`` > 1 merges slots after the first ``fine_slots`` into blocks of that many slots in
    the LP (block capacity = minimum over its slots, so never exceeded); 1 = exact.
    ``move_weight``: move suppression — each A a session's first-slot current is below what it holds now
    (``PlanningProblem.current_a``) costs this × the reference price of that current's energy in one slot,
    in the secondary objective: among plans delivering the same energy one that takes nothing away from a
    car wins, so a re-plan does not shuffle capacity between equal cars (every shuffle is profile writes).
    Raises are not penalised: free capacity is used as early as before.
    ``reserve_s``: each session's last ``reserve_s`` before a departure in the horizon is a reserve: stage 2
    plans no more energy there than stage 1 (which fills the earliest slots it can), so price and PV cannot
    move energy into it; 0 turns it off.
    ``extra_weight``: in the one-solve mode only, the value of a kWh of a session's ``extra_wh`` relative to a
    kWh of need (the two-stage mode gives extra energy exactly after every need, with a stage of its own).
    """

    default_dwell_s: float = DEFAULT_DWELL_S
    early_weight: float = 1e-3
    urgency_weight: float = 1.0
    energy_tolerance: float = 1e-6
    two_stage: bool | None = None
    price_weight: float = 1.0
    pv_weight: float = 0.05
    fairness_weight: float = 0.1
    fair_share: float = 0.5
    current_step_a: float = 0.1
    apply_min_current: bool = True
    time_limit_s: float = 30.0
    solver: str = "auto"
    auto_threshold_vars: int = 20_000
    weighted_secondary_share: float = 1e-2
    fine_slots: int = 8
    coarse_factor: int = 1
    move_weight: float = 0.5
    reserve_s: float = 3600.0
    extra_weight: float = 2e-2
    hierarchical: bool = True
    highs_options: tuple[tuple[str, str | float | int | bool], ...] = ()


@dataclass(frozen=True)
class PlanningProblem:
    """Everything the planner needs; pure data.

    ``price_per_kwh`` has shape [T] (currency/kWh, default zero); ``pv_surplus_w`` maps node id → [T] PV
    surplus W at that node (charging is preferred while it lasts); ``current_a`` what each session holds
    now (A per phase, on the planner's scale), for move suppression.
    """

    slots: SlotGrid
    nodes: Sequence[NodeCapacity]
    evses: Sequence[Evse]
    sessions: Sequence[Session]
    price_per_kwh: FloatArray | None = None
    pv_surplus_w: Mapping[str, FloatArray] = field(default_factory=dict)
    config: PlannerConfig = field(default_factory=PlannerConfig)
    current_a: Mapping[str, float] = field(default_factory=dict)  # session id → A it holds now (move suppression)


@dataclass(frozen=True)
class BindingConstraint:
    """Why a session gets less than it asks for: the tight limit (node, phase, slot, source).

    ``node_id`` is ``"<ev>"`` with source ``"ev_max_current"`` when the car's own maximum limits it, or
    ``"<window>"`` with source ``"departure"`` when the time window is simply too short.
    """

    node_id: str
    phase: int
    slot: int
    source: str


@dataclass(frozen=True)
class SessionVerdict:
    """Planned outcome of one session: energy by departure, shortfall (Wh) and what limits it."""

    session_id: str
    planned_wh: float
    remaining_wh: float
    shortfall_wh: float
    will_complete: bool
    binding: BindingConstraint | None


@dataclass(frozen=True)
class ProfilePeriod:
    """One period of a charging profile: from ``start_slot`` on, at most ``limit_a`` per phase."""

    start_slot: int
    limit_a: float


@dataclass
class Plan:
    """Result of one planning run.

    ``current_a`` [S, T] per-phase current of each session (rows in ``session_ids`` order) after hardware
    rounding (0 or ≥ min current, ``current_step_a`` steps); ``power_w`` [S, T] total power;
    ``node_load_w`` maps node id → [3, T] planned load; ``verdicts`` one per session.
    """

    slots: SlotGrid
    session_ids: list[str]
    current_a: FloatArray
    power_w: FloatArray
    phases: list[tuple[int, ...]]
    node_load_w: dict[str, FloatArray]
    verdicts: dict[str, SessionVerdict]
    status: str
    objective_energy_wh: float
    solve_time_s: float
    lp_current_a: FloatArray | None = None

    def row(self, session_id: str) -> int:
        """Row of ``session_id`` in the arrays (an index built on first use: a list search per call was
        O(sessions²) per cycle)."""
        rows = self.__dict__.get("_rows")
        if rows is None or len(rows) != len(self.session_ids):
            rows = {sid: i for i, sid in enumerate(self.session_ids)}
            object.__setattr__(self, "_rows", rows)
        return int(rows[session_id])

    def first_slot_current_a(self) -> dict[str, float]:
        """Per-phase current limit (A) for each session in slot 0 — what a limiter/replay applies now."""
        return {sid: float(self.current_a[i, 0]) for i, sid in enumerate(self.session_ids)}

    def profile(self, session_id: str, max_periods: int = 24) -> list[ProfilePeriod]:
        """Charging profile of a session as ≤ ``max_periods`` periods.

        Consecutive equal slots are merged first; if still too many, the adjacent pair whose merge loses the
        least energy is merged, taking the smaller limit, so a profile never exceeds the plan in any slot.
        """
        return merge_periods(self.current_a[self.row(session_id)], max_periods)


def merge_periods(current_a: FloatArray, max_periods: int) -> list[ProfilePeriod]:
    """Compress a per-slot current series (A) into ≤ ``max_periods`` periods, never raising any slot."""
    values = np.asarray(current_a, dtype=float)
    starts: list[int] = []
    limits: list[float] = []
    lengths: list[int] = []
    for t, v in enumerate(values):
        if limits and abs(limits[-1] - v) < 1e-9:
            lengths[-1] += 1
        else:
            starts.append(t)
            limits.append(float(v))
            lengths.append(1)
    while len(limits) > max(1, max_periods):
        # energy lost (A·slots) when merging period i with i+1 at the smaller limit
        loss = [
            abs(limits[i] - limits[i + 1]) * (lengths[i] if limits[i] > limits[i + 1] else lengths[i + 1])
            for i in range(len(limits) - 1)
        ]
        i = int(np.argmin(loss))
        limits[i] = min(limits[i], limits[i + 1])
        lengths[i] += lengths[i + 1]
        del starts[i + 1], limits[i + 1], lengths[i + 1]
        # neighbours may now be equal: fold them too
        j = 0
        while j < len(limits) - 1:
            if abs(limits[j] - limits[j + 1]) < 1e-9:
                lengths[j] += lengths[j + 1]
                del starts[j + 1], limits[j + 1], lengths[j + 1]
            else:
                j += 1
    return [ProfilePeriod(s, lim) for s, lim in zip(starts, limits, strict=True)]


class Planner(Protocol):
    """Anything that turns a PlanningProblem into a Plan (the HiGHS LP planner is the default)."""

    def plan(self, problem: PlanningProblem) -> Plan:
        """Plan charging currents over the horizon; pure, no I/O."""
        ...
