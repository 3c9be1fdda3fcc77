"""Pure planning core of the allocation service: model types, the HiGHS LP planner and replay."""

from gridcharge.allocation.core.model import (
    BindingConstraint,
    Evse,
    NodeCapacity,
    Plan,
    Planner,
    PlannerConfig,
    PlanningProblem,
    ProfilePeriod,
    Session,
    SessionVerdict,
    SlotGrid,
    merge_periods,
)
from gridcharge.allocation.core.planner import LpPlanner
from gridcharge.allocation.core.replay import ReplayResult, read_sessions, run_replay

__all__ = [
    "BindingConstraint",
    "Evse",
    "LpPlanner",
    "NodeCapacity",
    "Plan",
    "Planner",
    "PlannerConfig",
    "PlanningProblem",
    "ProfilePeriod",
    "ReplayResult",
    "Session",
    "SessionVerdict",
    "SlotGrid",
    "merge_periods",
    "read_sessions",
    "run_replay",
]
