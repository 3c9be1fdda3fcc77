"""Hypothesis state machine: random sessions, meters, command failures, offline stations, forecasts and
limit drops; after every step the worst-case draw under every node and phase stays within its capacity —
now and at every later moment until the last lease that may be in force has lapsed, with no further command:
the allocator may die after any step (safety principle 2).

The worst case of a station is what it may draw whatever happened to our commands (failsafe.py): leases
below the fallback free capacity only while surely valid, leases end on aligned epochs (leases.py) with the
station clocks off by up to the skew we allow. Where a limit dropped below what a station that does not
answer (offline, rejecting, silent, or not yet answered) still holds, nothing can lower it but time: that
excess is allowed only for such stations and only until their leases end — which is checked too (no lease
runs longer than ``LeasePolicy.max_lease_s``).

Stations accept A, W or both (random per example) and cars may draw on one phase: a single-phase car at a
three-phase station that accepts W gets its lease in W on one phase, which the budget counts per phase. So
the worst case is checked per station phase, and every lease a station is sent is checked against what its
payload lets the station draw on each phase — computed here from the payload, independently of the ledger.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
from gridcharge.allocation.core.allocator import Allocator, AllocatorConfig, ProfileCommand
from gridcharge.allocation.core.budget import ExternalLimitWindow, node_draw_w
from gridcharge.allocation.core.failsafe import LEASE_KEY
from gridcharge.allocation.core.leases import LeasePolicy
from gridcharge.allocation.core.model import Plan, PlanningProblem, SessionVerdict
from gridcharge.allocation.core.planner import LpPlanner
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.shared.topology import PHASES, Topology, parse_topology
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

T0 = datetime(2026, 6, 1, 6, 0, tzinfo=UTC).timestamp()
V = 230.0

TOPO: Topology = parse_topology(
    {
        "nominal_voltage_v": V,
        "nodes": [
            {"id": "site", "kind": "site", "limit_a": [63, 63, 63], "metered": True},
            {"id": "panelA", "kind": "panel", "parent": "site", "limit_a": [40, 40, 40]},
            {"id": "panelB", "kind": "panel", "parent": "site", "limit_a": [32, 25, 32]},
        ],
        "stations": [
            {"id": "a1", "node": "panelA", "max_current_a": 32, "fallback_current_a": 6},
            {
                "id": "a2",
                "node": "panelA",
                "max_current_a": 32,
                "fallback_current_a": 6,
                "evses": [{"id": 1}, {"id": 2, "phase_map": ["L2"]}],
            },
            {"id": "a3", "node": "panelA", "max_current_a": 16, "fallback_current_a": 8},
            {"id": "b1", "node": "panelB", "phase_map": ["L2"], "max_current_a": 32, "fallback_current_a": 10},
            {
                "id": "b2",
                "node": "panelB",
                "phase_map": ["L3", "L1", "L2"],
                "max_current_a": 32,
                "fallback_current_a": 6,
            },
        ],
    }
)
STATIONS = [s.id for s in TOPO.stations]
EVSES = [(s.id, e.id) for s in TOPO.stations for e in s.evses]
NODES = [n.id for n in TOPO.nodes]
MODES = ["accept", "accept", "reject", "silent", "callerror"]
UNITS = [(), (common_pb2.RATE_UNIT_A,), (common_pb2.RATE_UNIT_A, common_pb2.RATE_UNIT_W), (common_pb2.RATE_UNIT_W,)]
LOW_V = 0.9  # AllocatorConfig.low_voltage


def payload_bound_a(c: ProfileCommand, wired: int, hw_a: float) -> list[float]:
    """The most a station may draw on each of its phases under this station-max profile (A), from the payload
    alone: an A limit on every phase; a W limit is the total, all of which a single-phase car may take on L1
    and a k-phase car P/k on each of its first k phases, at a voltage down to LOW_V × nominal."""
    prof = c.payload.profile
    top = max(per.limit for per in prof.periods)
    if prof.rate_unit == common_pb2.RATE_UNIT_W:
        return [min(hw_a, top / (k * V * LOW_V)) for k in range(1, wired + 1)]
    return [min(hw_a, top)] * wired


class GreedyPlanner:
    """Asks for every session's maximum in every slot: the budget must hold whatever the planner says."""

    def plan(self, problem: PlanningProblem) -> Plan:
        evse = {e.evse_id: e for e in problem.evses}
        S, T = len(problem.sessions), problem.slots.count
        cur = np.zeros((S, T))
        for i, s in enumerate(problem.sessions):
            cur[i, :] = min(s.max_current_a, evse[s.evse_id].max_current_a)
        return Plan(
            problem.slots,
            [s.session_id for s in problem.sessions],
            cur,
            cur * V,
            [(0,)] * S,
            {},
            {s.session_id: SessionVerdict(s.session_id, 0, 0, 0, True, None) for s in problem.sessions},
            "greedy",
            0.0,
            0.0,
        )


class AllocationMachine(RuleBasedStateMachine):
    planner_factory = GreedyPlanner

    def __init__(self) -> None:
        super().__init__()
        self.t = T0
        # the production lease timing: a lease may span two 15-min slots (a limit announced for the second
        # one must bind it), and examples cross epoch boundaries and renewals
        self.cfg = AllocatorConfig(
            horizon_slots=4,
            command_timeout_s=60,
            failsafe_hold_s=120,
            leases=LeasePolicy(epoch_s=1200, renew_lead_s=240, clock_skew_s=30),
        )
        self.alloc = Allocator(TOPO, self.cfg, self.planner_factory())
        self.mode = dict.fromkeys(STATIONS, "accept")
        self.online = dict.fromkeys(STATIONS, False)
        self.tx_seq = 0

    # ------------------------------------------------------------ the simulated gateway + stations
    def deliver(self, cmds: list[ProfileCommand]) -> None:
        for c in cmds:
            led = self.alloc.ledgers[c.station_id]
            sent = led.pending.get(c.command_id)
            if sent is not None and sent.key == LEASE_KEY:
                # what the ledger will count for this lease is what its payload allows, phase by phase
                st_ = TOPO.station_by_id[c.station_id]
                want = payload_bound_a(c, len(st_.phase_map), st_.max_current_a)
                w = sent.weights or (1.0,) * len(want)
                got = [min(st_.max_current_a, sent.cap_a * w[p]) for p in range(len(want))]
                assert all(g >= x - 1e-6 for g, x in zip(got, want, strict=True)), (c.payload, got, want)
            if not self.online[c.station_id]:
                out = command_pb2.COMMAND_OUTCOME_OFFLINE
            else:
                m = self.mode[c.station_id]
                if m == "silent":
                    continue
                out = {
                    "accept": command_pb2.COMMAND_OUTCOME_ACCEPTED,
                    "reject": command_pb2.COMMAND_OUTCOME_REJECTED,
                    "callerror": command_pb2.COMMAND_OUTCOME_CALL_ERROR,
                }[m]
            self.alloc.command_result(c.station_id, c.command_id, out, self.t)

    def settle(self) -> None:
        """What the service does after a change: re-plan, send, take the answers; until quiet."""
        for _ in range(4):
            cmds = self.alloc.plan(datetime.fromtimestamp(self.t, UTC)).commands
            if not cmds:
                return
            self.deliver(cmds)

    # ------------------------------------------------------------ rules
    @initialize(units=st.lists(st.sampled_from(UNITS), min_size=len(STATIONS), max_size=len(STATIONS)))
    def boot_all(self, units: list[tuple[int, ...]]) -> None:
        for s, u in zip(STATIONS, units, strict=True):
            self.alloc.capabilities(s, u, 24)
        for s in STATIONS:
            self.online[s] = True
            self.deliver(self.alloc.station_online(s, self.t))
        self.settle()

    @rule(evse=st.sampled_from(EVSES), energy=st.floats(1000, 60000), prio=st.integers(0, 3))
    def start_session(self, evse: tuple[str, int], energy: float, prio: int) -> None:
        self.tx_seq += 1
        s = self.alloc.book.start(evse[0], evse[1], f"tx{self.tx_seq}", datetime.fromtimestamp(self.t, UTC))
        if s is not None:
            self.alloc.book.set_preferences(s.session_id, energy_wh=energy, priority=prio)
        self.settle()

    @precondition(lambda self: len(self.alloc.book) > 0)
    @rule(data=st.data())
    def end_session(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.alloc.book.sessions)))
        s = self.alloc.book.sessions[key]
        ended = self.alloc.book.end(s.station_id, s.evse_id, s.transaction_id)
        assert ended is not None
        self.alloc.session_ended(ended)
        self.settle()

    @rule(station=st.sampled_from(STATIONS), mode=st.sampled_from(MODES))
    def station_behaviour(self, station: str, mode: str) -> None:
        self.mode[station] = mode
        self.settle()

    @rule(station=st.sampled_from(STATIONS))
    def goes_offline(self, station: str) -> None:
        self.online[station] = False
        self.alloc.station_offline(station, self.t)
        self.settle()

    @rule(station=st.sampled_from(STATIONS))
    def comes_back(self, station: str) -> None:
        self.online[station] = True
        self.deliver(self.alloc.station_online(station, self.t))
        self.settle()

    @precondition(lambda self: len(self.alloc.book) > 0)
    @rule(data=st.data(), current=st.floats(0, 40), stops=st.booleans(), phases=st.sampled_from([None, 1, 1, 3]))
    def meter(self, data: st.DataObject, current: float, stops: bool, phases: int | None) -> None:
        key = data.draw(st.sampled_from(sorted(self.alloc.book.sessions)))
        s = self.alloc.book.sessions[key]
        if not stops:
            self.alloc.book.meter(
                s.station_id,
                s.evse_id,
                s.transaction_id,
                datetime.fromtimestamp(self.t, UTC),
                s.delivered_wh + current * V * 0.1,
                current,
                None,
                self.alloc.grant_a.get(key),
                phases_drawn=phases,
            )
        self.settle()

    @rule(node=st.sampled_from(NODES), frac=st.floats(0, 1.2), ev=st.floats(0, 1.2))
    def node_load(self, node: str, frac: float, ev: float) -> None:
        lim = TOPO.limit_w(node)
        base = tuple(frac * 0.5 * x for x in lim)
        load = tuple(b + ev * x for b, x in zip(base, lim, strict=True))
        self.alloc.node_load(node, load, base, self.t)  # type: ignore[arg-type]
        self.deliver(self.alloc.limit(node, datetime.fromtimestamp(self.t, UTC)))
        self.settle()

    @rule(node=st.sampled_from(NODES), frac=st.floats(0, 1.5), slots=st.integers(1, 8))
    def headroom_forecast(self, node: str, frac: float, slots: int) -> None:
        lim = TOPO.limit_w(node)
        hw = [(frac * lim[0], frac * lim[1], frac * lim[2])] * slots
        self.alloc.headroom(node, self.t, 900.0, hw, ["rating"] * slots, self.t)
        self.settle()

    @rule(
        node=st.sampled_from(NODES),
        frac=st.floats(0, 1),
        minutes=st.integers(1, 120),
        stale_after=st.sampled_from([0, 60, 600]),
        ahead=st.sampled_from([0, 0, 300, 900, 1200]),
    )
    def external_limit_drop(self, node: str, frac: float, minutes: int, stale_after: int, ahead: int) -> None:
        """A DSO limit now, or announced ``ahead`` seconds before it starts (inside a lease's lifetime)."""
        lim = TOPO.limit_w(node)
        val = (frac * lim[0], frac * lim[1], frac * lim[2])
        fb = (0.5 * lim[0], 0.5 * lim[1], 0.5 * lim[2])
        start = self.t + ahead
        self.alloc.external_limit(
            ExternalLimitWindow(
                node, f"dso{ahead}", "dso", start, start + minutes * 60, val, fb, self.t, float(stale_after)
            )
        )
        self.settle()

    @rule(seconds=st.sampled_from([1, 5, 30, 61, 130, 330, 700, 1000]))
    def time_passes(self, seconds: int) -> None:
        self.t += seconds
        self.settle()

    # ------------------------------------------------------------ the safety property
    def moments(self) -> list[float]:
        """Now and every later moment at which a worst case or a capacity may change, until every lease that
        may be in force has lapsed by any station clock; plus a 30-s grid over that span."""
        now, skew = self.t, self.cfg.leases.clock_skew_s
        end = now + self.cfg.leases.max_lease_s + skew + 1
        times = {now}
        for led in self.alloc.ledgers.values():
            times.update(led.lease_edges(now, end))
            times.update(led.change_times(now, end))
            for s in [*led.accepted.values(), *led.pending.values(), *led.uncertain.values()]:
                times.update(x for x in (s.valid_until - skew, s.valid_until + skew) if now < x < end)
        for e in self.alloc.external.values():
            times.update(x for x in (e.valid_from, e.valid_to) if now < x < end)
        k = 0.0
        while now + k < end:
            times.add(now + k)
            k += 30.0
        return sorted(times)

    @invariant()
    def worst_case_within_limits(self) -> None:
        now = self.t
        for t in self.moments():
            cap = self.alloc.capacity_at(now, t)
            wc = {sid: led.worst_case_ph(t) for sid, led in self.alloc.ledgers.items()}
            draw = node_draw_w(TOPO, wc)
            # floors in force then (a scheduled fallback may be lower than its nominal value for a while)
            floors = node_draw_w(TOPO, {s: led.floor_a(t) for s, led in self.alloc.ledgers.items()})
            for nid in NODES:
                # only stations that do not do what we ask may exceed, and only with leases they already hold
                troubled = {}
                for s in TOPO.stations_under(nid):
                    led = self.alloc.ledgers[s.id]
                    # (in flight = sent when it fitted, not answered yet: it may be applied any moment)
                    bad = (
                        not led.online
                        or led.uncertain
                        or led.pending
                        or (
                            led.failed_at is not None
                            and now - led.failed_at < self.cfg.leases.max_lease_s + self.cfg.command_timeout_s
                        )
                    )
                    troubled[s.id] = [max(0.0, x - led.floor_a(t)) if bad else 0.0 for x in wc[s.id]]
                excuse = node_draw_w(TOPO, troubled)[nid]
                for p in range(3):
                    allowed = max(float(cap[nid][p]), float(floors[nid][p])) + float(excuse[p]) + 1e-6
                    assert draw[nid][p] <= allowed, (
                        f"at now+{t - now:.0f} s {nid}/{PHASES[p]}: worst case {draw[nid][p]:.0f} W > {allowed:.0f} W "
                        f"(capacity {cap[nid][p]:.0f} W) wc={wc}"
                    )

    @invariant()
    def leases_are_bounded_in_time(self) -> None:
        for led in self.alloc.ledgers.values():
            for s in [*led.accepted.values(), *led.pending.values(), *led.uncertain.values()]:
                # only station-cap leases end; the fallback never does, a TxProfile dies with its transaction
                assert math.isfinite(s.valid_until) == (s.key == LEASE_KEY)
                if s.key == LEASE_KEY:
                    assert s.valid_until <= s.sent_at + self.cfg.leases.max_lease_s + 1e-6

    @invariant()
    def grants_respect_hardware(self) -> None:
        for key, a in self.alloc.grant_a.items():
            sid = key.split("/")[0]
            assert 0 <= a <= TOPO.station_by_id[sid].max_current_a + 1e-9
            assert a == 0 or a >= 6.0 - 1e-9


AllocationMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestAllocationSafety = AllocationMachine.TestCase


class LpAllocationMachine(AllocationMachine):
    """The same with the real HiGHS planner (fewer examples: each step solves LPs)."""

    planner_factory = LpPlanner  # type: ignore[assignment]


LpAllocationMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestAllocationSafetyLp = LpAllocationMachine.TestCase
