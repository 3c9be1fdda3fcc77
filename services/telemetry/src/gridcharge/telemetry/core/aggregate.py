"""The telemetry core: keeps per-source state and computes every node's per-phase load.

Rules (see docs/telemetry.md):
- an EVSE is *stale* when its station has not reported for the stale time (or disconnected), or when
  it is in a session and its meter values stopped; a station never heard of is stale too;
- a stale or implausible EVSE counts at its worst case in `worst_case_w`: its last accepted limit, else
  the hardware maximum (never zero), capped by an accepted station-wide limit;
- a node's load is its grid meter's reading while that meter is fresh and plausible; otherwise the sum
  of its children and EVSEs plus its non-EV (base) estimate; base load = meter − EV sum below it;
- between meter values an EVSE's draw is estimated from the accepted limits (a raise at once, a cut once the
  EV had `ev_follow_s` to follow it): an EV that drew its old limit draws the new one, any other at most it;
  so the base load (meter − EV) does not swing after a cut or a raise, and errs low while the EV follows;
- a fresh reading older than the last change of that estimate (taken before the EVs followed a cut, or
  before a raise) keeps the base it showed, and the load is that base plus the EVs' estimate now.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.forecast.v1 import forecast_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.codec import parse_meter_values, phase_tuple, timestamp_s
from gridcharge.shared.topology import PHASES, Station, Topology
from gridcharge.station.v1 import station_pb2
from gridcharge.telemetry.core.config import TelemetryConfig
from gridcharge.telemetry.core.model import (
    P3,
    ZERO3,
    EvseState,
    MeterState,
    NodeLoadView,
    Outcome,
    StationState,
    WeatherState,
    add3,
    max3,
    sub3,
)
from gridcharge.telemetry.core.readings import to_grid

log = logging.getLogger(__name__)

IDLE_STATUSES = ("Available", "Unavailable", "Faulted", "Reserved")
PURPOSES = {
    command_pb2.PROFILE_PURPOSE_TX: "tx",
    command_pb2.PROFILE_PURPOSE_TX_DEFAULT: "tx_default",
    command_pb2.PROFILE_PURPOSE_STATION_MAX: "station_max",
}
MAX_PENDING_COMMANDS = 64
STATION_MAX = "station_max"  # key of the stack-0 station max; stack n > 0 is kept as "station_max@n"


def station_max_key(stack: int) -> str:
    """Key of an accepted station maximum in `StationState.limits` (one per stack level)."""
    return STATION_MAX if stack <= 0 else f"{STATION_MAX}@{stack}"


def station_max_stack(key: str) -> int | None:
    """Stack level of a `StationState.limits` key, None when it is not a station maximum."""
    if key == STATION_MAX:
        return 0
    head, sep, tail = key.partition("@")
    return int(tail) if head == STATION_MAX and sep and tail.isdigit() else None


def _finite(*vals: float) -> bool:
    return all(math.isfinite(v) for v in vals)


class TelemetryCore:
    """State of every station, EVSE and grid meter of one topology; pure (time is passed in)."""

    def __init__(self, topology: Topology, config: TelemetryConfig | None = None) -> None:
        self.topo = topology
        self.cfg = config or TelemetryConfig()
        self.v = topology.nominal_voltage_v
        self.stations: dict[str, StationState] = {s.id: StationState(s.id) for s in topology.stations}
        self.evses: dict[tuple[str, int], EvseState] = {
            (s.id, e.id): EvseState(s.id, e.id) for s in topology.stations for e in s.evses
        }
        self.meters: dict[tuple[str, str], MeterState] = {}
        self.weather: WeatherState | None = None
        self._last_base: dict[str, P3] = {}
        # node -> (base W, anchored at s, sample time of the reading it came from s), kept while no EV follows a cut
        self._steady_base: dict[str, tuple[P3, float, float]] = {}
        self._dirty: set[str] = set()
        # bottom-up order: every child before its parent
        order: list[str] = []

        def visit(n: str) -> None:
            for c in topology.children[n]:
                visit(c)
            order.append(n)

        for root in topology.roots():
            visit(root.id)
        self._order = order
        self._evse_phase_idx: dict[str, list[tuple[int, tuple[int, ...]]]] = {
            s.id: [(e.id, tuple(PHASES.index(ph) for ph in s.evse_phases(e.id))) for e in s.evses]
            for s in topology.stations
        }
        self._stations_at: dict[str, list[Station]] = {n.id: [] for n in topology.nodes}
        for s in topology.stations:
            self._stations_at[s.node].append(s)

    # ------------------------------------------------------------------ state keys (faust tables)
    def take_dirty(self) -> set[str]:
        """Source keys changed since the last call (`evse/S/1`, `station/S`, `meter/N/M`, `weather/SITE`)."""
        out, self._dirty = self._dirty, set()
        return out

    def mark_dirty(self, keys: set[str]) -> None:
        """Keys whose state could not be mirrored yet: returned by the next `take_dirty`."""
        self._dirty |= keys

    def export(self, key: str) -> dict[str, Any] | None:
        """JSON-able state of one source key."""
        kind, _, rest = key.partition("/")
        if kind == "evse":
            sid, _, eid = rest.rpartition("/")
            ev = self.evses.get((sid, int(eid)))
            return ev.to_dict() if ev else None
        if kind == "station":
            st = self.stations.get(rest)
            return st.to_dict() if st else None
        if kind == "meter":
            node, _, mid = rest.partition("/")
            m = self.meters.get((node, mid))
            return m.to_dict() if m else None
        if kind == "weather":
            return self.weather.to_dict() if self.weather else None
        return None

    def restore(self, key: str, data: dict[str, Any]) -> bool:
        """Load one source's state (from a table); unknown or malformed entries are skipped."""
        kind = key.partition("/")[0]
        try:
            if kind == "evse":
                ev = EvseState.from_dict(data)
                if (ev.station_id, ev.evse_id) in self.evses:
                    self.evses[(ev.station_id, ev.evse_id)] = ev
                    return True
            elif kind == "station":
                st = StationState.from_dict(data)
                if st.station_id in self.stations:
                    self.stations[st.station_id] = st
                    return True
            elif kind == "meter":
                m = MeterState.from_dict(data)
                if m.node_id in self.topo.node_by_id:
                    self.meters[(m.node_id, m.meter_id)] = m
                    return True
            elif kind == "weather":
                self.weather = WeatherState.from_dict(data)
                return True
        except (TypeError, ValueError, KeyError) as exc:
            log.warning("skipping malformed state entry", extra={"key": key[:100], "error": repr(exc)[:200]})
        return False

    def keys(self) -> Iterator[str]:
        for sid, eid in self.evses:
            yield f"evse/{sid}/{eid}"
        for sid in self.stations:
            yield f"station/{sid}"
        for node, mid in self.meters:
            yield f"meter/{node}/{mid}"
        if self.weather:
            yield f"weather/{self.weather.site_id}"

    # ------------------------------------------------------------------ inputs
    def _at(self, ts: Timestamp, now_s: float) -> float:
        """Message time, clamped to now (station clocks may run ahead)."""
        t = timestamp_s(ts)
        if t is None or t > now_s:
            return now_s
        return t

    def _seen_station(self, st: StationState, at_s: float) -> None:
        st.last_seen_s = at_s if st.last_seen_s is None else max(st.last_seen_s, at_s)
        st.online = True
        self._dirty.add(f"station/{st.station_id}")

    def on_meter_values(self, mv: station_pb2.MeterValues, now_s: float) -> Outcome:
        """Apply one station MeterValues message."""
        station = self.topo.station_by_id.get(mv.station_id)
        if station is None:
            log.debug("meter values from unknown station", extra={"station": mv.station_id[:48]})
            return Outcome.IMPLAUSIBLE
        st = self.stations[station.id]
        at = self._at(mv.sampled_at, now_s)
        sample = parse_meter_values(mv.values)
        if now_s - at > self.cfg.stale_after(None) * 10:
            return Outcome.STALE  # a backlog far older than any stale time tells nothing about now
        self._seen_station(st, at)
        t_c = sample.temperature_c
        if t_c is not None and self.cfg.ambient_min_c <= t_c <= self.cfg.ambient_max_c:
            st.temperature_c, st.temperature_at_s = sample.temperature_c, at
        evse_id = mv.evse_id
        if evse_id == 0:
            if len(station.evses) != 1:
                return Outcome.OK  # station-wide meter of a multi-EVSE station: liveness/temperature only
            evse_id = station.evses[0].id
        ev = self.evses.get((station.id, evse_id))
        if ev is None:
            return Outcome.IMPLAUSIBLE
        if ev.last_sample_s is not None and at <= ev.last_sample_s:
            return Outcome.STALE  # duplicate or out of order
        if now_s - at > self.cfg.stale_after(ev.interval_s):
            return Outcome.STALE
        if ev.last_sample_s is not None:
            gap = at - ev.last_sample_s
            if gap < 3600:
                ev.interval_s = gap if ev.interval_s is None else 0.7 * ev.interval_s + 0.3 * gap
        ev.last_sample_s = at
        ev.last_seen_s = at if ev.last_seen_s is None else max(ev.last_seen_s, at)
        self._dirty.add(f"evse/{station.id}/{evse_id}")
        if mv.transaction_id and not ev.transaction_id:
            ev.transaction_id = mv.transaction_id[:64]
        problem = sample.invalid
        if sample.energy_wh is not None and not problem:
            if sample.energy_wh < 0:
                problem = "negative energy register"
            elif (
                ev.energy_register_wh is not None
                and sample.energy_wh < ev.energy_register_wh - 1.0
                and ev.transaction_id
            ):
                problem = "energy register went backwards"
            else:
                ev.energy_register_wh = sample.energy_wh
                if ev.transaction_id and ev.session_meter_start_wh is not None:
                    ev.session_energy_wh = max(0.0, sample.energy_wh - ev.session_meter_start_wh)
        if not problem and not sample.has_power_info:
            return Outcome.OK
        gv = to_grid(sample, station.evse_phases(evse_id), self.v, self._bound_a(station, ev, now_s), self.cfg)
        problem = problem or gv.problem
        if problem:
            if not ev.implausible:
                log.info(
                    "implausible meter values", extra={"station": station.id, "evse": evse_id, "reason": problem[:200]}
                )
            ev.implausible, ev.implausible_reason = True, problem[:200]
            return Outcome.IMPLAUSIBLE
        ev.power_w, ev.current_a, ev.measured = gv.power_w, gv.current_a, True
        ev.sample_limit_a = self._limit_at(station, ev, at)
        ev.implausible, ev.implausible_reason = False, ""
        return Outcome.OK

    def on_station_event(self, evt: station_pb2.StationEvent, now_s: float) -> Outcome:
        """Apply one station event (liveness, status, transactions)."""
        station = self.topo.station_by_id.get(evt.station_id)
        if station is None:
            return Outcome.IMPLAUSIBLE
        st = self.stations[station.id]
        at = self._at(evt.occurred_at, now_s)
        kind = evt.WhichOneof("payload")
        if kind == "disconnected":
            st.online = False
            self._dirty.add(f"station/{st.station_id}")
            return Outcome.OK
        self._seen_station(st, at)
        evse_id = 0
        if kind == "status":
            evse_id = evt.status.evse_id
        elif kind == "transaction_started":
            evse_id = evt.transaction_started.evse_id
        elif kind == "transaction_updated":
            evse_id = evt.transaction_updated.evse_id
        elif kind == "transaction_ended":
            evse_id = evt.transaction_ended.evse_id
        else:
            return Outcome.OK
        if evse_id == 0 and len(station.evses) == 1 and kind != "status":
            evse_id = station.evses[0].id
        if evse_id == 0:
            return Outcome.OK
        ev = self.evses.get((station.id, evse_id))
        if ev is None:
            return Outcome.IMPLAUSIBLE
        self._dirty.add(f"evse/{station.id}/{evse_id}")
        ev.last_seen_s = at if ev.last_seen_s is None else max(ev.last_seen_s, at)
        if kind == "status":
            ev.status = evt.status.status[:32]
            if ev.status in IDLE_STATUSES:
                self._zero(ev, at)
        elif kind == "transaction_started":
            ts = evt.transaction_started
            ev.transaction_id = ts.transaction_id[:64]
            ev.session_start_s = at
            ev.session_meter_start_wh = ts.meter_start_wh if _finite(ts.meter_start_wh) else None
            ev.session_energy_wh = 0.0
        elif kind == "transaction_updated":
            tu = evt.transaction_updated
            ev.charging_state = tu.charging_state[:32]
            if not ev.transaction_id:
                ev.transaction_id = tu.transaction_id[:64]
        elif kind == "transaction_ended":
            te = evt.transaction_ended
            start = ev.session_meter_start_wh
            if start is not None and _finite(te.meter_stop_wh) and te.meter_stop_wh >= start:
                ev.energy_delivered_wh += te.meter_stop_wh - start
            elif ev.session_energy_wh > 0:
                ev.energy_delivered_wh += ev.session_energy_wh
            ev.transaction_id, ev.charging_state = "", ""
            ev.session_start_s, ev.session_meter_start_wh, ev.session_energy_wh = None, None, 0.0
            self._zero(ev, at)
        return Outcome.OK

    @staticmethod
    def _zero(ev: EvseState, at_s: float) -> None:
        """The station says nothing flows (idle status or session ended) — unless a newer meter value
        (topics are not ordered against each other) already said otherwise."""
        if ev.last_sample_s is not None and ev.last_sample_s >= at_s:
            return
        ev.power_w, ev.current_a, ev.measured = ZERO3, ZERO3, True
        ev.sample_limit_a = None
        ev.implausible, ev.implausible_reason = False, ""

    def on_grid_reading(self, r: grid_pb2.GridMeterReading, now_s: float) -> Outcome:
        """Apply one grid-meter reading (per grid phase)."""
        node = self.topo.node_by_id.get(r.node_id)
        if node is None:
            return Outcome.IMPLAUSIBLE
        key = (node.id, r.meter_id[:64] or "main")
        m = self.meters.get(key)
        if m is None:
            m = self.meters[key] = MeterState(node.id, key[1])
        at = self._at(r.measured_at, now_s)
        if m.last_sample_s is not None and at <= m.last_sample_s:
            return Outcome.STALE
        if now_s - at > self.cfg.stale_after(m.interval_s):
            return Outcome.STALE
        if m.last_sample_s is not None and at - m.last_sample_s < 3600:
            gap = at - m.last_sample_s
            m.interval_s = gap if m.interval_s is None else 0.7 * m.interval_s + 0.3 * gap
        m.last_sample_s = at
        m.last_seen_s = at
        self._dirty.add(f"meter/{key[0]}/{key[1]}")
        power, current = phase_tuple(r.power_w), phase_tuple(r.current_a)
        limit_w = self.topo.limit_w(node.id)
        problem = ""
        if not _finite(*power) or (r.has_current and not _finite(*current)):
            problem = "non-finite value"
        elif any(abs(p) > self.cfg.meter_max_factor * max(lim, 1.0) for p, lim in zip(power, limit_w, strict=True)):
            problem = "power far above the node limit (unit error?)"
        elif r.has_current and any(c < -self.cfg.negative_tolerance_a for c in current):
            problem = "negative current"
        elif r.has_current and any(
            c > self.cfg.meter_max_factor * max(lim, 1.0)
            for c, lim in zip(current, self.topo.limit_a(node.id), strict=True)
        ):
            problem = "current far above the node limit"
        if problem:
            if not m.implausible:
                log.info("implausible grid meter reading", extra={"node": node.id, "reason": problem})
            m.implausible, m.implausible_reason = True, problem
            return Outcome.IMPLAUSIBLE
        m.power_w, m.trusted, m.implausible, m.implausible_reason = power, True, False, ""
        if r.has_current:
            m.current_a, m.has_current = current, True
        t = r.ambient_temperature_c
        if math.isfinite(t) and self.cfg.ambient_min_c <= t <= self.cfg.ambient_max_c and t != 0.0:
            m.ambient_c = t
        return Outcome.OK

    def on_weather(self, w: forecast_pb2.WeatherForecast, now_s: float) -> Outcome:
        """Keep the site's temperature forecast (ambient fallback for nodes without a sensor)."""
        start = timestamp_s(w.start)
        if start is None or w.step_s <= 0:
            return Outcome.IMPLAUSIBLE
        temps = [t if math.isfinite(t) else float("nan") for t in w.temperature_c]
        self.weather = WeatherState(w.site_id[:64], start, w.step_s, temps)
        self._dirty.add(f"weather/{self.weather.site_id}")
        return Outcome.OK

    # -------------------------------------------------------------- commands -> known limits
    def _profile_limit_a(self, station: Station, evse_id: int, prof: command_pb2.ChargingProfile) -> float | None:
        """Highest per-phase current (A) the profile allows over its schedule (worst case)."""
        if evse_id and evse_id in {e.id for e in station.evses}:
            nph_default = len(station.evse_phases(evse_id))
        else:
            nph_default = len(station.phase_map)
        best: float | None = None
        for p in prof.periods:
            if not math.isfinite(p.limit) or p.limit < 0:
                return None
            nph = p.number_phases if 1 <= p.number_phases <= 3 else nph_default
            a = p.limit / (self.v * nph) if prof.rate_unit == common_pb2.RATE_UNIT_W else p.limit
            best = a if best is None else max(best, a)
        return best

    def on_command(self, cmd: command_pb2.StationCommand, now_s: float) -> Outcome:
        """Remember SetChargingProfile / ClearChargingProfile commands until their result arrives."""
        station = self.topo.station_by_id.get(cmd.station_id)
        if station is None:
            return Outcome.IMPLAUSIBLE
        kind = cmd.WhichOneof("payload")
        entry: dict[str, Any]
        if kind == "set_charging_profile":
            scp = cmd.set_charging_profile
            prof = scp.profile
            limit = self._profile_limit_a(station, scp.evse_id, prof)
            if limit is None:
                return Outcome.IMPLAUSIBLE
            until = timestamp_s(prof.valid_to)
            start = timestamp_s(prof.start_schedule)
            if prof.duration_s > 0:
                end = (start if start is not None else now_s) + prof.duration_s
                until = end if until is None else min(until, end)
            purpose = PURPOSES.get(prof.purpose, "tx")
            evse_id = 0 if purpose == STATION_MAX else scp.evse_id
            entry = {
                "evse_id": evse_id,
                "purpose": purpose,
                "limit_a": limit,
                "until_s": until,
                "stack": max(0, prof.stack_level),
            }
        elif kind == "clear_charging_profile":
            ccp = cmd.clear_charging_profile
            entry = {
                "evse_id": max(0, ccp.evse_id),
                "purpose": PURPOSES.get(ccp.purpose),
                "limit_a": None,
                "until_s": None,
            }
        else:
            return Outcome.OK
        st = self.stations[station.id]
        st.pending[cmd.command_id[:64]] = entry
        while len(st.pending) > MAX_PENDING_COMMANDS:
            st.pending.pop(next(iter(st.pending)))
        self._dirty.add(f"station/{station.id}")
        return Outcome.OK

    def on_command_result(self, res: command_pb2.CommandResult, now_s: float) -> Outcome:
        """An accepted profile becomes the EVSE's (or station's) known limit; a timeout makes it unknown."""
        st = self.stations.get(res.station_id)
        if st is None:
            return Outcome.IMPLAUSIBLE
        answered = res.outcome in (
            command_pb2.COMMAND_OUTCOME_ACCEPTED,
            command_pb2.COMMAND_OUTCOME_REJECTED,
            command_pb2.COMMAND_OUTCOME_CALL_ERROR,
        )
        if answered:  # the station answered: it is alive
            self._seen_station(st, now_s)
        elif res.outcome == command_pb2.COMMAND_OUTCOME_OFFLINE:
            st.online = False
            self._dirty.add(f"station/{st.station_id}")
        entry = st.pending.pop(res.command_id, None)
        if entry is None:
            return Outcome.OK
        self._dirty.add(f"station/{st.station_id}")
        if res.outcome not in (command_pb2.COMMAND_OUTCOME_ACCEPTED, command_pb2.COMMAND_OUTCOME_TIMEOUT):
            return Outcome.OK  # not applied: what was known stays known
        evse_id, purpose = int(entry["evse_id"]), entry.get("purpose")
        station = self.topo.station_by_id[st.station_id]
        # what the command touches: (state, purpose) pairs
        targets: list[tuple[EvseState | StationState, str]] = []
        evse_states = [self.evses[(st.station_id, e.id)] for e in station.evses if evse_id == 0 or e.id == evse_id]
        if entry["limit_a"] is None:  # ClearChargingProfile: every matching purpose becomes unknown
            names = [purpose] if purpose else ["tx", "tx_default", "station_max"]
            if evse_id == 0:
                targets += [(st, n) for n in names if n in ("station_max", "tx_default")]
            targets += [(ev, n) for ev in evse_states for n in names if n in ("tx", "tx_default")]
        elif purpose == "station_max" or (evse_id == 0 and purpose == "tx_default"):
            targets.append((st, str(purpose)))
        else:
            targets += [(ev, str(purpose)) for ev in evse_states]
        for target, name in targets:
            accepted = res.outcome == command_pb2.COMMAND_OUTCOME_ACCEPTED and entry["limit_a"] is not None
            if name == STATION_MAX and accepted:  # one station max per stack level (OCPP: the highest wins)
                name = station_max_key(int(entry.get("stack", 0)))
            if accepted:
                lim, prev = float(entry["limit_a"]), target.limits.get(name)
                if (
                    prev
                    and prev[0] is not None
                    and prev[1] is not None
                    and self._active(prev, now_s) is not None
                    and abs(lim - prev[0]) <= 0.05
                ):  # a renewal: the EV has been following it since then
                    target.limits[name] = [lim, prev[1], entry["until_s"], self._from(prev)]
                else:
                    affected = (
                        [target]
                        if isinstance(target, EvseState)
                        else [self.evses[(st.station_id, e.id)] for e in station.evses]
                    )
                    before = [self._raw_limit_a(station, ev, now_s) for ev in affected]
                    target.limits[name] = [lim, now_s, entry["until_s"], None]
                    after = [self._raw_limit_a(station, ev, now_s) for ev in affected]
                    raised = all(a >= b - 1e-9 for a, b in zip(after, before, strict=True)) and any(
                        a > b + 0.05 for a, b in zip(after, before, strict=True)
                    )
                    # the estimate takes a raise at once and a cut once the EV had time to follow: in between
                    # it errs high, so base = meter − EV errs low (a lower base asks for raises, which wait)
                    target.limits[name][3] = now_s if raised else now_s + self.cfg.ev_follow_s
            elif name == STATION_MAX:  # cleared, or TIMEOUT: unknown -> hardware max (every stack level)
                for key in [k for k in target.limits if station_max_stack(k) is not None]:
                    target.limits.pop(key)
            else:  # cleared, or TIMEOUT: the station's state is unknown -> hardware max
                target.limits.pop(name, None)
            if isinstance(target, EvseState):
                self._dirty.add(f"evse/{target.station_id}/{target.evse_id}")
        return Outcome.OK

    # ------------------------------------------------------------------ derived values
    @staticmethod
    def _active(entry: list[float | None] | None, now_s: float) -> float | None:
        """The limit of a [limit_a, since_s, until_s] entry while it is valid, else None."""
        if not entry or entry[0] is None:
            return None
        until = entry[2]
        return None if until is not None and now_s > until else entry[0]

    def _hw_a(self, station: Station, evse_id: int) -> float:
        e = station.evse(evse_id)
        return min(e.max_current_a, station.max_current_a) if e.max_current_a else station.max_current_a

    def _entries(self, ev: EvseState) -> list[list[float | None]]:
        st = self.stations[ev.station_id]
        return [
            x
            for x in (
                ev.limits.get("tx"),
                ev.limits.get("tx_default") or st.limits.get("tx_default"),
                *(e for k, e in st.limits.items() if station_max_stack(k) is not None),
            )
            if x
        ]

    def _from(self, entry: list[float | None]) -> float:
        """When the estimate applies an accepted limit: at once for a raise, `ev_follow_s` after it was
        accepted for a cut (entries of older state without that time: as a cut)."""
        if len(entry) > 3 and entry[3] is not None:
            return entry[3]
        return (entry[1] if entry[1] is not None else -math.inf) + self.cfg.ev_follow_s

    def _raw_limit_a(self, station: Station, ev: EvseState, now_s: float) -> float:
        """What the accepted profiles let an EVSE draw now (A), the hardware max when nothing limits it."""
        lim = self.evse_limit_a(station, ev, now_s)
        hw = self._hw_a(station, ev.evse_id)
        return hw if lim is None else min(lim, hw)

    def station_max(self, st: StationState, now_s: float) -> tuple[float, float, float] | None:
        """(limit A, in force since, applied to the estimate from) of the station maximum in force now: of
        the accepted ones still valid, the highest stack level (OCPP); in force since it was accepted or a
        higher one lapsed (a lapse into a lower limit is a cut: the EV gets `ev_follow_s`)."""
        entries = [(stack, e) for k, e in st.limits.items() if (stack := station_max_stack(k)) is not None]
        live = [(stack, e) for stack, e in entries if self._active(e, now_s) is not None]
        if not live:
            return None
        top, entry = max(live, key=lambda x: x[0])
        lim = float(entry[0] or 0.0)
        since = entry[1] if entry[1] is not None else -math.inf
        start = self._from(entry)
        for stack, e in entries:
            if stack > top and e[2] is not None and since < e[2] <= now_s:
                since = e[2]
                start = e[2] + (self.cfg.ev_follow_s if lim < float(e[0] or 0.0) else 0.0)
        return lim, since, start

    def evse_limit_a(self, station: Station, ev: EvseState, now_s: float) -> float | None:
        """Per-phase current the accepted profiles allow an EVSE (A), None when unknown. A TX profile
        overrides TxDefault only while the session lasts, so the worst case is the higher of the two;
        the station maximum caps both."""
        st = self.stations[station.id]
        tx = self._active(ev.limits.get("tx"), now_s)
        dflt = self._active(ev.limits.get("tx_default") or st.limits.get("tx_default"), now_s)
        known = [x for x in (tx, dflt) if x is not None]
        lim = max(known) if known else None
        sm = self.station_max(st, now_s)
        if sm is not None:
            lim = sm[0] if lim is None else min(lim, sm[0])
        return lim

    def _bound_a(self, station: Station, ev: EvseState, now_s: float) -> float:
        """Per-phase current an EVSE may plausibly draw now (A): the hardware max, or the accepted limit
        once every accepted profile had `limit_grace_s` to take effect (a just-raised limit may already
        be drawn, a just-lowered one not yet)."""
        hw = self._hw_a(station, ev.evse_id)
        if any(e[1] is not None and now_s - e[1] < self.cfg.limit_grace_s for e in self._entries(ev)):
            return hw
        lim = self.evse_limit_a(station, ev, now_s)
        return hw if lim is None else min(hw, lim)

    def worst_case_a(self, station: Station, evse_id: int, now_s: float) -> float:
        """Per-phase current an EVSE may draw at worst (A): its accepted limit, but not below the station's
        fallback current (leases expire into the fallback profile, so a 0 A pause is no worst case);
        with no known limit the hardware max."""
        ev = self.evses[(station.id, evse_id)]
        hw = self._hw_a(station, evse_id)
        lim = self.evse_limit_a(station, ev, now_s)
        return hw if lim is None else min(hw, max(lim, station.fallback_current_a))

    def station_stale(self, st: StationState, now_s: float) -> bool:
        """Disconnected, never heard of, or silent longer than `station_silence_s` (idle stations only
        heartbeat; a live WebSocket is what the gateway's Connected/Disconnected events track)."""
        return not st.online or st.last_seen_s is None or now_s - st.last_seen_s > self.cfg.station_silence_s

    def evse_stale(self, ev: EvseState, st: StationState, now_s: float) -> bool:
        if self.station_stale(st, now_s):
            return True
        if ev.charging:
            if not ev.measured or ev.last_seen_s is None:
                return True
            return now_s - ev.last_seen_s > self.cfg.stale_after(ev.interval_s)
        return False

    def meter_fresh(self, m: MeterState, now_s: float) -> bool:
        return (
            m.trusted
            and not m.implausible
            and m.last_seen_s is not None
            and now_s - m.last_seen_s <= self.cfg.stale_after(m.interval_s)
        )

    def limit_sources(
        self, station: Station, ev: EvseState, now_s: float, early: bool = False
    ) -> list[tuple[float, float, bool]]:
        """The accepted limits the estimate of an EVSE applies at `now_s`: (limit A, accepted at, whether it
        is the station max) for the station max in force and for the Tx/TxDefault pair (the higher of the two
        in force, as for the worst case); a raise at once, a cut once the EV had `ev_follow_s` to follow it
        (before that, what it replaced is not known any more: the source is left out) — or with `early`, a
        cut at once too (the lower end of what the EV may draw while it follows)."""
        st = self.stations[station.id]
        out: list[tuple[float, float, bool]] = []
        sm = self.station_max(st, now_s)
        if sm is not None and now_s >= (sm[1] if early else sm[2]):
            out.append((sm[0], sm[1], True))
        live = [
            e
            for e in (ev.limits.get("tx"), ev.limits.get("tx_default") or st.limits.get("tx_default"))
            if e and self._active(e, now_s) is not None
        ]
        since = [e[1] for e in live if e[1] is not None]
        if live and len(since) == len(live) and now_s >= (max(since) if early else max(self._from(e) for e in live)):
            out.append((max(float(e[0] or 0.0) for e in live), max(since), False))
        return out

    def _following(self, station: Station, now_s: float) -> bool:
        """Whether an accepted cut at this station is within its `ev_follow_s` (the EV may be following it)."""
        st = self.stations[station.id]
        entries = [
            *st.limits.values(),
            *(e for eid, _ in self._evse_phase_idx[station.id] for e in self.evses[(station.id, eid)].limits.values()),
        ]
        return any(e and e[1] is not None and e[1] <= now_s < self._from(e) for e in entries)

    def _estimate_changed_s(self, station: Station, now_s: float) -> float:
        """When an accepted limit last changed what the estimate says this station draws (s; -inf: never):
        a raise when accepted, a cut once the EV had `ev_follow_s` to follow it, a lapse when it ended."""
        st = self.stations[station.id]
        entries = [
            *st.limits.values(),
            *(e for eid, _ in self._evse_phase_idx[station.id] for e in self.evses[(station.id, eid)].limits.values()),
        ]
        last = -math.inf
        for e in entries:
            if not e or e[1] is None:
                continue
            start = self._from(e)
            if start <= now_s:
                last = max(last, start)
            if e[2] is not None and e[2] <= now_s:
                last = max(last, e[2])
        return last

    def _limit_at(self, station: Station, ev: EvseState, at_s: float) -> float | None:
        """The limit (A per phase) an EVSE was under at `at_s`, None when unknown."""
        srcs = self.limit_sources(station, ev, at_s)
        return min(x[0] for x in srcs) if srcs else None

    def _estimate(self, station: Station, now_s: float, early: bool = False) -> tuple[list[P3], float | None]:
        """Estimated draw of each EVSE of a station between meter values (W per grid phase) and the cap of
        the station's total (W per phase, None: none applies).

        A sample taken once the EV had `ev_follow_s` to follow every accepted limit is trusted as it is.
        Otherwise a limit changed since (or was changing when it was taken): an EV that drew its limit then
        (within 10 %, at least 1 A), or was still following a change, is taken to draw the new limit (capped
        by the hardware) on the phases it used — a cut and a raise alike; an EV that drew less (tapering,
        full) draws its sample, capped by the new limit. The station max also caps the sum of its EVSEs
        when it changed after a sample. `early`: cuts count at once (see `limit_sources`)."""
        follow = self.cfg.ev_follow_s
        out: list[P3] = []
        total_cap: float | None = None
        for evse_id, phase_idx in self._evse_phase_idx[station.id]:
            ev = self.evses[(station.id, evse_id)]
            p, at = ev.power_w, ev.last_sample_s
            srcs = self.limit_sources(station, ev, now_s, early)
            newer = [x for x in srcs if at is not None and at < x[1] + follow]
            if not newer or at is None:
                out.append(p)
                continue
            if any(x[2] for x in newer):
                total_cap = next(x[0] for x in srcs if x[2]) * self.v
            w = min(min(x[0] for x in srcs), self._hw_a(station, evse_id)) * self.v
            q = [p[0], p[1], p[2]]
            was = ev.sample_limit_a
            drew = max((ev.current_a[k] for k in phase_idx), default=0.0)
            moving = any(x[1] <= at for x in newer)  # the sample was taken while the EV followed a change
            if ev.charging and (moving or (was is not None and drew >= was - max(1.0, 0.1 * was))):
                used = [k for k in phase_idx if ev.current_a[k] > 0.5] or list(phase_idx)
                for k in used:
                    q[k] = w
            else:
                for k in phase_idx:
                    q[k] = min(q[k], w)
            out.append((q[0], q[1], q[2]))
        return out, total_cap

    def _station_now(self, station: Station, now_s: float) -> tuple[P3, P3, P3, P3, int, int]:
        """(best W, low W, measured W, worst W, stale EVSEs, implausible EVSEs) of one station, per grid phase.

        Best = the estimate between meter values (`_estimate`); low = the same with the cuts the EVs may
        still be following already done (equal to best unless one is); measured = the last samples as they
        were (what the worst case builds on, unchanged by the estimate)."""
        st = self.stations[station.id]
        station_stale = self.station_stale(st, now_s)
        est, total_cap = self._estimate(station, now_s)
        low: P3 | None = None
        if self._following(station, now_s):
            est_lo, cap_lo = self._estimate(station, now_s, early=True)
            lo = [sum(q[k] for q in est_lo) for k in range(3)]
            if cap_lo is not None:
                lo = [min(x, cap_lo) for x in lo]
            low = (lo[0], lo[1], lo[2])
        e0 = e1 = e2 = b0 = b1 = b2 = w0 = w1 = w2 = 0.0
        stale_n = impl_n = 0
        for (evse_id, phase_idx), q in zip(self._evse_phase_idx[station.id], est, strict=True):
            ev = self.evses[(station.id, evse_id)]
            stale = station_stale or (
                ev.charging
                and (
                    not ev.measured
                    or ev.last_seen_s is None
                    or now_s - ev.last_seen_s > self.cfg.stale_after(ev.interval_s)
                )
            )
            p = ev.power_w
            b0, b1, b2 = b0 + p[0], b1 + p[1], b2 + p[2]
            e0, e1, e2 = e0 + q[0], e1 + q[1], e2 + q[2]
            stale_n += stale
            impl_n += ev.implausible
            if stale or ev.implausible or not ev.measured:
                w = self.worst_case_a(station, evse_id, now_s) * self.v
                r = [p[0], p[1], p[2]]
                for k in phase_idx:
                    r[k] = max(r[k], w)
                w0, w1, w2 = w0 + r[0], w1 + r[1], w2 + r[2]
            else:  # measured and fresh: what it drew, or the estimate when a raise lets it draw more now
                w0, w1, w2 = w0 + max(p[0], q[0]), w1 + max(p[1], q[1]), w2 + max(p[2], q[2])
        if total_cap is not None:  # the station max caps the station's total, shared by its EVSEs
            e0, e1, e2 = min(e0, total_cap), min(e1, total_cap), min(e2, total_cap)
        sm = self.station_max(st, now_s)
        if sm is not None:  # an accepted station-wide limit caps the station's total worst case
            # (not below the fallback: a lease below it — a paused car — lapses into it, as worst_case_a says)
            c = max(sm[0], station.fallback_current_a) * self.v
            w0, w1, w2 = max(b0, min(w0, c)), max(b1, min(w1, c)), max(b2, min(w2, c))
        best = (e0, e1, e2)
        low = best if low is None else (min(low[0], e0), min(low[1], e1), min(low[2], e2))
        return best, low, (b0, b1, b2), (w0, w1, w2), stale_n, impl_n

    def meter_for(
        self, node_id: str, now_s: float, index: dict[str, list[MeterState]] | None = None
    ) -> MeterState | None:
        """The node's freshest meter (fresh ones first), or None."""
        cands = (
            index.get(node_id, []) if index is not None else [m for m in self.meters.values() if m.node_id == node_id]
        )
        best: MeterState | None = None
        for m in cands:
            if best is None or (self.meter_fresh(m, now_s), m.last_seen_s or 0) > (
                self.meter_fresh(best, now_s),
                best.last_seen_s or 0,
            ):
                best = m
        return best

    def _station_ambient(self, station_ids: list[str], now_s: float) -> list[float]:
        temps = []
        for sid in station_ids:
            st = self.stations[sid]
            if (
                st.temperature_c is not None
                and st.temperature_at_s is not None
                and now_s - st.temperature_at_s <= 4 * self.cfg.stale_after(None)
            ):
                temps.append(st.temperature_c)
        return temps

    def node_loads(self, now_s: float) -> dict[str, NodeLoadView]:
        """Every node's load now (W per grid phase), children before parents."""
        st_now = {s.id: self._station_now(s, now_s) for s in self.topo.stations}
        meters_at: dict[str, list[MeterState]] = {}
        for m in self.meters.values():
            meters_at.setdefault(m.node_id, []).append(m)
        views: dict[str, NodeLoadView] = {}
        ev_best: dict[str, P3] = {}
        ev_low: dict[str, P3] = {}
        ev_seen: dict[str, P3] = {}
        ev_worst: dict[str, P3] = {}
        changed: dict[str, float] = {}  # node -> when the EV estimate below it last changed through a limit
        temps_under: dict[str, list[float]] = {}
        for nid in self._order:
            node = self.topo.node_by_id[nid]
            kids = self.topo.children[nid]
            d_best, d_low, d_seen, d_worst, stale, impl = ZERO3, ZERO3, ZERO3, ZERO3, 0, 0
            changed_s = max((changed[c] for c in kids), default=-math.inf)
            for s in self._stations_at[nid]:
                changed_s = max(changed_s, self._estimate_changed_s(s, now_s))
                sb, sl, ss, sw, sn, si = st_now[s.id]
                d_best, d_low, d_seen, d_worst = add3(d_best, sb), add3(d_low, sl), add3(d_seen, ss), add3(d_worst, sw)
                stale += sn
                impl += si
            e_best, e_low, e_seen, e_worst = d_best, d_low, d_seen, d_worst
            k_load, k_worst = ZERO3, ZERO3
            temps = self._station_ambient([s.id for s in self._stations_at[nid]], now_s)
            for c in kids:
                cv = views[c]
                e_best, e_worst = add3(e_best, ev_best[c]), add3(e_worst, ev_worst[c])
                e_seen, e_low = add3(e_seen, ev_seen[c]), add3(e_low, ev_low[c])
                k_load, k_worst = add3(k_load, cv.load_w), add3(k_worst, cv.worst_case_w)
                stale += cv.stale_sources
                impl += cv.implausible_sources
                temps += temps_under[c]
            ev_best[nid], ev_low[nid], ev_seen[nid], ev_worst[nid] = e_best, e_low, e_seen, e_worst
            changed[nid] = changed_s
            temps_under[nid] = temps
            ev_now = e_best
            meter = self.meter_for(nid, now_s, meters_at)
            fresh = meter is not None and self.meter_fresh(meter, now_s)
            if meter is not None and meter.implausible:
                impl += 1
            if fresh:
                assert meter is not None
                load = meter.power_w
                worst = add3(load, sub3(e_worst, e_seen))  # untrusted EVSEs may still ramp up
                ref = self._steady_base.get(nid)
                sample_s = meter.last_sample_s if meter.last_sample_s is not None else now_s
                if e_low == e_best and ref is not None and ref[2] >= sample_s and sample_s < changed_s:
                    # the reading predates what the EVs below were told since (a cut they have followed by now,
                    # a raise): the base it showed (derived from this very reading) stays, the estimate says
                    # what they draw now; the reading minus the EVs after a cut would count the cut as new base
                    # load (and the allocator would cut again, a second round, before the meter reports)
                    load = add3(ref[0], e_best)
                elif e_low == e_best:
                    self._steady_base[nid] = (sub3(load, e_best), now_s, sample_s)
                elif ref is not None and now_s - ref[1] <= self.cfg.stale_after_s:
                    # EVs below are following a cut: they draw between low and best; the meter tells how far
                    # they got if the base load stayed as it was (it moves only beyond what they explain)
                    lo_hi = zip(sub3(load, ref[0]), e_low, e_best, strict=True)
                    x0, x1, x2 = (min(hi, max(lo, x)) for x, lo, hi in lo_hi)
                    ev_now = (x0, x1, x2)
                    self._steady_base[nid] = (sub3(load, ev_now), ref[1], sample_s)  # what this reading proved
                base = sub3(load, ev_now)
                self._last_base[nid] = base
            else:
                if meter is not None or node.metered:
                    stale += int(meter is None or not meter.implausible)
                    est = self._last_base.get(nid, self.cfg.base_load_w.get(nid, ZERO3))
                else:
                    est = self.cfg.base_load_w.get(nid, ZERO3)
                load = add3(add3(k_load, d_best), est)
                worst = add3(add3(k_worst, d_worst), max3(est, ZERO3))
                if meter is not None and meter.trusted:
                    worst = max3(worst, meter.power_w)  # unknown means worst case: not below the last reading
                base = sub3(load, e_best)
            ambient = float("nan")
            if fresh and meter is not None and meter.ambient_c is not None:
                ambient = meter.ambient_c
            elif temps:
                ambient = sum(temps) / len(temps)
            views[nid] = NodeLoadView(
                node_id=nid,
                as_of_s=now_s,
                load_w=load,
                worst_case_w=max3(worst, load),
                ev_load_w=ev_now,
                base_load_w=base,
                limit_w=self.topo.limit_w(nid),
                metered=node.metered or meter is not None,
                meter_fresh=fresh,
                stale_sources=stale,
                implausible_sources=impl,
                ambient_c=ambient,
            )
        # nodes without any temperature source inherit their parent's, then the weather's
        site_t = self.weather.at(now_s) if self.weather else None
        for nid in reversed(self._order):  # parents before children
            v = views[nid]
            if math.isnan(v.ambient_c):
                parent = self.topo.node_by_id[nid].parent
                t = views[parent].ambient_c if parent is not None else float("nan")
                if math.isnan(t) and site_t is not None:
                    t = site_t
                if not math.isnan(t):
                    views[nid] = replace(v, ambient_c=t)
        return views

    def stale_counts(self, now_s: float) -> dict[str, int]:
        """Stale stations (any EVSE stale) and stale/missing meters, for gridcharge_telemetry_stale_sources."""
        stations = 0
        for s in self.topo.stations:
            st = self.stations[s.id]
            if any(self.evse_stale(self.evses[(s.id, e.id)], st, now_s) for e in s.evses):
                stations += 1
        meters = 0
        meters_at: dict[str, list[MeterState]] = {}
        for mm in self.meters.values():
            meters_at.setdefault(mm.node_id, []).append(mm)
        for nid in {n.id for n in self.topo.nodes if n.metered} | set(meters_at):
            m = self.meter_for(nid, now_s, meters_at)
            if m is None or not self.meter_fresh(m, now_s):
                meters += 1
        return {"station": stations, "meter": meters}
