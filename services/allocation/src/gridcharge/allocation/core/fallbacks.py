"""Grid-aware fallback schedules (pure, no I/O).

The topology guarantees Σ fallbacks ≤ every node's static limit, but not under a DSO window or a base-load
peak. Every cycle the allocator computes a fallback schedule per station on the wall-clock 15-min grid: per
slot, node capacity is handed out in a fixed order (charging stations first, then priority, then id, so it
is stable between cycles), each station keeping its nominal fallback while there is room, the rest what is
left (0 below 6 A). Idle stations under a busy node (cars held back by its capacity) get 0 with
``release_idle``: the capacity reserved for a car that might plug in there goes to the cars charging.
So if the allocator dies before or during a window, the stations still follow it by themselves.

Lowerings go out at once; raises at most every ``RELAX_S`` so forecast noise does not churn profiles (flash
writes) — except when a car arrives at a station whose fallback was lowered (raised at once).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
from gridcharge.allocation.core import profiles as P
from gridcharge.allocation.core.budget import Capacity, node_draw_w, station_phases
from gridcharge.allocation.core.failsafe import FALLBACK_KEY, Sent, StationLedger
from gridcharge.allocation.core.issuer import when
from gridcharge.command.v1 import command_pb2
from gridcharge.shared.topology import Topology

RELAX_S = 900.0  # a fallback schedule is raised again at most this often (s); lowered at once

Steps = list[tuple[float, float]]  # [(from POSIX s, A)]


@dataclass
class FallbackSchedules:
    """The fallback each station should hold: ``target[station]`` = [(from s, A)]."""

    topology: Topology
    release_idle: bool = True
    target: dict[str, Steps] = field(default_factory=dict)

    def compute(
        self,
        now: float,
        cap: Capacity,
        starts: list[float],
        charging: Collection[str],
        priority: Mapping[str, int],
        busy: Collection[str],
    ) -> None:
        """Schedules under which Σ fallbacks fits every node's capacity ``cap`` over the slots at ``starts``.

        ``charging``: stations with a car that wants energy; ``priority``: their highest session priority;
        ``busy``: nodes whose capacity held a car back (idle stations under them are released).
        """
        topo = self.topology
        nominal = {s.id: s.fallback_current_a for s in topo.stations}
        if self.release_idle and busy:
            for sid in nominal:
                if sid not in charging and any(n in busy for n in topo.station_path(sid)):
                    nominal[sid] = 0.0
        need = node_draw_w(topo, nominal)
        tight = {n: bool(np.any(cap.w[n] < need[n][:, None] - 1e-6)) for n in need}
        self.target = {sid: [(now, a)] for sid, a in nominal.items()}
        if not any(tight.values()):
            return
        affected = [sid for sid in nominal if any(tight[n] for n in topo.station_path(sid))]
        order = sorted(affected, key=lambda sid: (0 if sid in charging else 1, -priority.get(sid, 0), sid))
        room = {n: c.copy() for n, c in cap.w.items()}
        v = topo.nominal_voltage_v
        for sid in order:
            phases = station_phases(topo, sid)
            path = topo.station_path(sid)
            avail = np.min(np.stack([room[n][p] for n in path for p in phases]), axis=0) / v
            a = np.minimum(nominal[sid], np.maximum(avail, 0.0))
            a = np.array([P.quantise_a(x, min_a=min(P.MIN_RATE_A, nominal[sid])) for x in a])
            for n in path:
                for p in phases:
                    room[n][p] -= a * v
            steps = [(now, float(a[0]))]
            for k in range(1, len(starts)):
                if abs(a[k] - steps[-1][1]) > 1e-9:
                    steps.append((starts[k], float(a[k])))
            self.target[sid] = steps

    def payload(self, station_id: str, now: float, tgt: P.StationProfileTarget) -> command_pb2.SetChargingProfile:
        """The fallback as it should be installed now: nominal, or the grid-aware schedule."""
        st = self.topology.station_by_id[station_id]
        first = st.fallback_current_a
        steps = []
        for t, a in self.target.get(station_id, ()):
            if t <= now:
                first = a
            else:
                steps.append((when(t), a))
        return P.fallback_profile(first, when(now), tgt, steps)

    def outdated(self, led: StationLedger, now: float, tgt: P.StationProfileTarget, car_arrived: bool) -> str:
        """Whether the installed (or in-flight) fallback must be replaced by the target schedule: "lower",
        "raise" or "" (no).

        Lower anywhere → at once (the station could draw more than the grid allows if the allocator died).
        Higher only → when the one in force is at least ``RELAX_S`` old, or a car arrived (``car_arrived``)
        at a station whose fallback was lowered: it is what the car may count on.
        """
        cur = [
            x
            for x in [led.accepted.get(FALLBACK_KEY), *led.pending.values(), *led.uncertain.values()]
            if x is not None and x.key == FALLBACK_KEY
        ]
        # known installed but not what (a restart): it counts at its nominal value, as in the ledger
        newest = (
            max(cur, key=lambda x: x.sent_at)
            if cur
            else Sent("", FALLBACK_KEY, command_pb2.PROFILE_PURPOSE_STATION_MAX, 0, led.fallback_a, math.inf, -math.inf)
        )
        target = self.target.get(led.station_id, [])
        if len(target) <= 1 and len(newest.schedule) <= 1:
            # the common case, one value each: no profile needs building
            a = target[0][1] if target else self.topology.station_by_id[led.station_id].fallback_current_a
            want: tuple[tuple[float, float], ...] = ((now, P.quantise_a(a)),)  # as _periods sends it
        else:
            want = P.profile_schedule_a(self.payload(led.station_id, now, tgt), tgt)
        if len(want) == 1 and len(newest.schedule) <= 1:
            have = newest.limit_at(now)
            higher, lower = want[0][1] > have + 0.05, want[0][1] < have - 0.05
        else:
            probe = Sent("", FALLBACK_KEY, 0, 0, 0.0, math.inf, now, want)
            times = sorted(
                {now, *(t + 1.0 for t, _a in want if t > now), *(t + 1.0 for t, _a in newest.schedule if t > now)}
            )
            diffs = [probe.limit_at(t) - newest.limit_at(t) for t in times]
            higher, lower = max(diffs) > 0.05, min(diffs) < -0.05
        if lower:
            return "lower"
        arrived = car_arrived and newest.limit_at(now) < want[0][1] - 0.05
        return "raise" if higher and (arrived or now - newest.sent_at >= RELAX_S) else ""

    def value_now(self, station_id: str, now: float) -> float:
        """The target fallback now (A)."""
        a = self.topology.station_by_id[station_id].fallback_current_a
        for t, v in self.target.get(station_id, ()):
            if t <= now:
                a = v
        return a
