"""Allocation metrics (names fixed in docs/DEVELOPING.md; no per-station labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PLAN_SOLVE_SECONDS = Histogram(
    "gridcharge_plan_solve_seconds",
    "Wall time of one planner run (s).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
ENERGY_REQUESTED = Gauge("gridcharge_energy_requested_joules", "Energy still requested by active sessions (J).")
ENERGY_DELIVERED = Counter(
    "gridcharge_energy_delivered_joules_total", "Energy delivered to EVs, from meter values (J)."
)
SESSIONS_ACTIVE = Gauge("gridcharge_sessions_active", "Active charging sessions.")
SESSIONS_AT_RISK = Gauge("gridcharge_sessions_at_risk", "Sessions the plan does not complete by departure.")
BINDING_CONSTRAINTS = Gauge(
    "gridcharge_binding_constraints",
    "Sessions whose binding constraint is this node and phase.",
    ["node", "phase"],
)
COMMANDS = Counter(
    "gridcharge_allocation_commands_total",
    "Profile commands by purpose and outcome (sent, accepted, ...).",
    ["purpose", "outcome"],
)
LEASES = Gauge("gridcharge_leases", "Station-cap leases by state.", ["state"])
PROFILE_WRITES = Counter(
    "gridcharge_profile_writes_total",
    "SetChargingProfile writes sent to stations (flash writes), by purpose and why.",
    ["purpose", "reason"],
)
WRITES_DEFERRED = Counter(
    "gridcharge_profile_writes_deferred_total",
    "Raises held back by the per-station write budget (per planning cycle and station), by rule.",
    ["reason"],
)
STATION_WRITES_LAST_HOUR = Gauge(
    "gridcharge_station_profile_writes_last_hour",
    "SetChargingProfile writes per station in the last hour across the stations (max, p95, mean).",
    ["stat"],
)
LIMITER_ACTIONS = Counter("gridcharge_limiter_actions_total", "Fast-limiter changes.", ["action"])
NODE_LIMIT = Gauge(
    "gridcharge_node_limit_watts", "Effective per-phase node limit for EV charging (W).", ["node", "phase"]
)
NODE_LIMIT_VIOLATIONS = Counter(
    "gridcharge_node_limit_violations_total",
    "Planning cycles where the worst-case draw exceeded a node limit.",
    ["node"],
)
PRICE_SIGNALS = Counter(
    "gridcharge_allocation_price_signals_total",
    "External price signals received, by what the planner does with them (applied/withdrawn/not_applicable/invalid).",
    ["outcome"],
)
