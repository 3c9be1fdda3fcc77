"""Charging sessions as the allocator knows them: one per active transaction (pure, no I/O).

A session is created by TransactionStarted, refined by ChargingNeeds (EV or driver) and operator
preferences, fed by meter values (energy delivered, current drawn) and removed by TransactionEnded.
Whatever the driver did not give comes from ``topology.session_defaults``. Units are in the names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from gridcharge.shared.topology import SessionDefaults, Station

# Meter samples older than this no longer tell what a connector draws (s).
METER_STALE_S = 180.0
# A car drawing at least DRAW_MARGIN_A less than it is given, for DRAW_SAMPLES fresh samples in a row, takes
# less than it is given (taper, a full battery, an on-board charger smaller than the station): it is capped
# at what it draws + DRAW_MARGIN_A, once. The cap stays until the car draws within RELEASE_MARGIN_A of it
# (it may take more: released) or twice the margin below it (it tapered on: capped again) — so a tapering car
# costs a few writes, not one per cycle.
DRAW_MARGIN_A = 2.0
DRAW_SAMPLES = 2
RELEASE_MARGIN_A = 0.75
NOT_DRAWING_A = 1.0  # below this (A) the car draws nothing: full or waiting
SETTLE_S = 15.0  # a sample this soon after its grant changed may predate the change: not judged


def session_key(station_id: str, evse_id: int) -> str:
    """Id of the connector a session runs on: ``station/evse``."""
    return f"{station_id}/{evse_id}"


@dataclass
class SessionState:
    """One active charging session on one EVSE.

    ``energy_needed_wh`` is the total the driver wants in this session; ``delivered_wh`` what the meter
    counted since the start. Currents are per phase (A).
    """

    session_id: str
    station_id: str
    evse_id: int
    transaction_id: str
    started_at: datetime
    departure: datetime
    energy_needed_wh: float
    min_current_a: float
    max_current_a: float
    phases: int
    priority: int
    delivered_wh: float = 0.0
    meter_start_wh: float | None = None
    measured_current_a: float | None = None  # highest phase current from the latest sample
    measured_power_w: float | None = None
    measured_at: datetime | None = None
    charging_state: str = "Charging"
    draw_cap_a: float | None = None  # learnt from the meter: the car takes about this at most (A)
    below_samples: int = 0  # fresh samples in a row clearly below what the car may draw
    at_cap_samples: int = 0  # fresh samples in a row at the learnt cap
    phases_seen: int | None = None  # phases the car drew on in the latest sample that told
    user_set: set[str] = field(default_factory=set)  # fields a driver/operator set explicitly
    need_guessed: bool = True  # energy_needed_wh is the site default, not from the EV or a driver
    departure_guessed: bool = True  # departure is the site default, not from the EV or a driver
    priority_before: int | None = None  # set while OCPP 2.1 priority charging raised `priority` (restored after)

    @property
    def remaining_wh(self) -> float:
        """Energy still wanted (Wh, ≥ 0)."""
        return max(0.0, self.energy_needed_wh - self.delivered_wh)

    def dump(self) -> bytes:
        """JSON of what must survive a restart (live meter state is re-learnt from the next samples)."""
        return json.dumps(
            {
                "session_id": self.session_id,
                "station_id": self.station_id,
                "evse_id": self.evse_id,
                "transaction_id": self.transaction_id,
                "started_at": self.started_at.isoformat(),
                "departure": self.departure.isoformat(),
                "energy_needed_wh": self.energy_needed_wh,
                "min_current_a": self.min_current_a,
                "max_current_a": self.max_current_a,
                "phases": self.phases,
                "priority": self.priority,
                "delivered_wh": self.delivered_wh,
                "meter_start_wh": self.meter_start_wh,
                "user_set": sorted(self.user_set),
                "need_guessed": self.need_guessed,
                "departure_guessed": self.departure_guessed,
                "priority_before": self.priority_before,
            }
        ).encode()

    def meter_fresh(self, now: datetime) -> bool:
        return self.measured_at is not None and (now - self.measured_at).total_seconds() <= METER_STALE_S

    def draw_limit_a(self, now: datetime) -> float | None:
        """The learnt draw cap (A) while the meter is fresh; None = the car takes what it is given."""
        return self.draw_cap_a if self.meter_fresh(now) else None

    def judge_draw(self, granted_a: float) -> bool:
        """Update the learnt draw cap from the latest sample against ``granted_a`` (what the car may draw);
        True when the cap changed (the capacity it frees or needs goes to the plan)."""
        m = self.measured_current_a
        if m is None:
            return False
        if self.draw_cap_a is not None:
            if self.draw_cap_a <= 0:  # drew nothing: it woke up once it draws on what it is offered
                at_cap = granted_a > 0 and m >= NOT_DRAWING_A
            else:  # (offered less than its cap, drawing that says nothing new)
                at_cap = granted_a >= self.draw_cap_a - 0.05 and m >= self.draw_cap_a - RELEASE_MARGIN_A
            if at_cap:
                self.below_samples = 0
                self.at_cap_samples += 1
                if self.at_cap_samples >= DRAW_SAMPLES:  # it takes what it gets: it may take more
                    self.draw_cap_a, self.at_cap_samples = None, 0
                    return True
                return False
        offered = granted_a if self.draw_cap_a is None else min(granted_a, self.draw_cap_a)
        self.at_cap_samples = 0
        gap = DRAW_MARGIN_A if self.draw_cap_a is None else 2 * DRAW_MARGIN_A
        if offered >= max(self.min_current_a, NOT_DRAWING_A) and m < offered - gap:
            self.below_samples += 1
        else:
            self.below_samples = 0
        if self.below_samples < DRAW_SAMPLES:
            return False
        self.below_samples = 0
        self.draw_cap_a = 0.0 if m < NOT_DRAWING_A else max(m + DRAW_MARGIN_A, self.min_current_a)
        return True


class SessionBook:
    """All active sessions of the stations in one topology, keyed by ``station/evse``.

    Every method is tolerant: unknown stations/EVSEs and nonsense values are ignored and reported
    by a False/None return so the caller can log and count them.
    """

    def __init__(self, stations: dict[str, Station], defaults: SessionDefaults, voltage_v: float = 230.0):
        self.stations = stations
        self.defaults = defaults
        self.voltage_v = voltage_v
        self.sessions: dict[str, SessionState] = {}
        # needs that arrived before their transaction (2.0.1 may send them first), per station/evse
        self._early_needs: dict[str, dict[str, float | datetime | int]] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def _evse_ok(self, station_id: str, evse_id: int) -> Station | None:
        st = self.stations.get(station_id)
        if st is None or evse_id not in {e.id for e in st.evses}:
            return None
        return st

    def start(
        self, station_id: str, evse_id: int, transaction_id: str, now: datetime, meter_start_wh: float = 0.0
    ) -> SessionState | None:
        """A transaction started (or a duplicate start was replayed): create or keep the session."""
        if evse_id == 0:
            evse_id = 1  # 1.6 stations with one connector sometimes report connector 0
        st = self._evse_ok(station_id, evse_id)
        if st is None or not transaction_id:
            return None
        key = session_key(station_id, evse_id)
        cur = self.sessions.get(key)
        if cur is not None and cur.transaction_id == transaction_id:
            return cur
        evse = st.evse(evse_id)
        max_a = min(evse.max_current_a or st.max_current_a, st.max_current_a)
        d = self.defaults
        s = SessionState(
            session_id=f"{station_id}/{evse_id}/{transaction_id}",
            station_id=station_id,
            evse_id=evse_id,
            transaction_id=transaction_id,
            started_at=now,
            departure=now + timedelta(hours=d.departure_after_h),
            energy_needed_wh=d.energy_wh,
            min_current_a=max(evse.min_current_a, 0.0),
            max_current_a=max_a,
            phases=len(st.evse_phases(evse_id)),
            priority=d.priority,
            meter_start_wh=meter_start_wh if math.isfinite(meter_start_wh) and meter_start_wh >= 0 else None,
        )
        self.sessions[key] = s
        early = self._early_needs.pop(key, None)
        if early:
            self._apply_needs(s, early)
        return s

    def end(self, station_id: str, evse_id: int, transaction_id: str) -> SessionState | None:
        """A transaction ended: drop its session (matched by transaction id when the EVSE is unknown)."""
        for key, s in list(self.sessions.items()):
            if s.station_id == station_id and (
                s.transaction_id == transaction_id or (not transaction_id and s.evse_id == evse_id)
            ):
                return self.sessions.pop(key)
        return None

    def drop_station(self, station_id: str) -> list[SessionState]:
        """Forget every session of a station (it rebooted: its transactions are gone)."""
        gone = [k for k, s in self.sessions.items() if s.station_id == station_id]
        return [self.sessions.pop(k) for k in gone]

    def find(self, station_id: str, evse_id: int = 0, transaction_id: str = "") -> SessionState | None:
        if transaction_id:
            for s in self.sessions.values():
                if s.station_id == station_id and s.transaction_id == transaction_id:
                    return s
        if evse_id:
            return self.sessions.get(session_key(station_id, evse_id))
        return None

    def by_id(self, session_id: str) -> SessionState | None:
        for s in self.sessions.values():
            if s.session_id == session_id:
                return s
        return None

    def update_state(self, station_id: str, evse_id: int, transaction_id: str, charging_state: str) -> bool:
        s = self.find(station_id, evse_id, transaction_id)
        if s is None:
            return False
        s.charging_state = charging_state[:32]
        return True

    def needs(
        self,
        station_id: str,
        evse_id: int,
        departure: datetime | None,
        energy_wh: float,
        min_current_a: float,
        max_current_a: float,
        phases: int,
    ) -> bool:
        """EV charging needs (0/None = not given). Kept for later if the transaction has not started."""
        if self._evse_ok(station_id, evse_id if evse_id else 1) is None:
            return False
        vals: dict[str, float | datetime | int] = {}
        if departure is not None:
            vals["departure"] = departure
        if math.isfinite(energy_wh) and 0 < energy_wh < 1e7:
            vals["energy_needed_wh"] = energy_wh
        if math.isfinite(min_current_a) and 0 < min_current_a <= 80:
            vals["min_current_a"] = min_current_a
        if math.isfinite(max_current_a) and 0 < max_current_a <= 1000:
            vals["max_current_a"] = max_current_a
        if 1 <= phases <= 3:
            vals["phases"] = phases
        s = self.find(station_id, evse_id or 1)
        if s is None:
            self._early_needs[session_key(station_id, evse_id or 1)] = vals
            return True
        self._apply_needs(s, vals)
        return True

    def _apply_needs(self, s: SessionState, vals: dict[str, float | datetime | int]) -> None:
        st = self.stations[s.station_id]
        hw_max = min(st.evse(s.evse_id).max_current_a or st.max_current_a, st.max_current_a)
        hw_phases = len(st.evse_phases(s.evse_id))
        for k, v in vals.items():
            if k in s.user_set and k in ("departure", "energy_needed_wh"):
                continue  # the driver's explicit choice wins over what the EV reports
            if k == "max_current_a" and isinstance(v, int | float):
                v = min(float(v), hw_max)
            if k == "phases" and isinstance(v, int | float):
                v = min(int(v), hw_phases)
                s.user_set.add("phases")  # the EV said so: the meter does not overrule it
            if k == "energy_needed_wh":
                s.need_guessed = False
            if k == "departure":
                s.departure_guessed = False
            setattr(s, k, v)
        if s.min_current_a > s.max_current_a:
            s.min_current_a = s.max_current_a

    def set_preferences(
        self,
        session_id: str,
        departure: datetime | None = None,
        energy_wh: float | None = None,
        priority: int | None = None,
    ) -> SessionState | None:
        """Driver/operator preferences; they override what the EV reported."""
        s = self.by_id(session_id)
        if s is None:
            return None
        if departure is not None:
            s.departure = departure
            s.user_set.add("departure")
            s.departure_guessed = False
        if energy_wh is not None and math.isfinite(energy_wh) and energy_wh >= 0:
            s.energy_needed_wh = energy_wh
            s.user_set.add("energy_needed_wh")
            s.need_guessed = False
        if priority is not None and priority >= 0:
            s.priority = priority
        return s

    def priority_charging(
        self, station_id: str, transaction_id: str, activated: bool, level: int
    ) -> SessionState | None:
        """OCPP 2.1 NotifyPriorityCharging: while active the session's priority is at least ``level`` (the
        planner gives weighted energy and the limiter cuts in priority order, so it is served first); when it
        stops, the priority it had before comes back (a driver/operator change meanwhile is kept)."""
        s = self.find(station_id, 0, transaction_id)
        if s is None:
            return None
        if activated and s.priority_before is None:
            s.priority_before = s.priority
            s.priority = max(s.priority, level)
        elif not activated and s.priority_before is not None:
            if s.priority == max(s.priority_before, level):
                s.priority = s.priority_before
            s.priority_before = None
        return s

    def meter(
        self,
        station_id: str,
        evse_id: int,
        transaction_id: str,
        at: datetime,
        energy_register_wh: float | None,
        current_a: float | None,
        power_w: float | None,
        granted_a: float | None,
        granted_since: datetime | None = None,
        phases_drawn: int | None = None,
    ) -> SessionState | None:
        """Apply one meter sample; returns the session it belongs to (None when it matches none).

        ``granted_a``: what the car may draw now; ``granted_since``: since when (a sample taken before the
        grant could take effect says nothing about it). ``phases_drawn``: on how many phases the car draws
        (per-phase currents): a car drawing on fewer phases than its EVSE has (a single-phase car on a
        three-phase point) is planned on those, twice in a row and unless the EV or driver said otherwise."""
        s = self.find(station_id, evse_id, transaction_id)
        if s is None:
            return None
        if s.measured_at is not None and at < s.measured_at:
            return s  # out of order: keep the newer sample
        if energy_register_wh is not None and math.isfinite(energy_register_wh) and energy_register_wh >= 0:
            if s.meter_start_wh is None:
                s.meter_start_wh = energy_register_wh
            s.delivered_wh = max(s.delivered_wh, energy_register_wh - s.meter_start_wh)
            if s.need_guessed and s.remaining_wh <= 0:
                # nobody told us what this car needs (OCPP 1.6): the default is a guess, not a cap, so
                # a car that reached it may take another default's worth; a full car stops drawing by itself
                s.energy_needed_wh = s.delivered_wh + self.defaults.energy_wh
        if current_a is not None and math.isfinite(current_a) and 0 <= current_a < 1000:
            s.measured_current_a = current_a
        elif power_w is not None and math.isfinite(power_w) and 0 <= power_w < 1e6:
            s.measured_current_a = power_w / (self.voltage_v * max(1, s.phases))
        if power_w is not None and math.isfinite(power_w):
            s.measured_power_w = power_w
        s.measured_at = at
        if phases_drawn is not None and 1 <= phases_drawn < s.phases and "phases" not in s.user_set:
            if s.phases_seen == phases_drawn:
                s.phases = phases_drawn
            s.phases_seen = phases_drawn
        if granted_a is not None and (granted_since is None or (at - granted_since).total_seconds() >= SETTLE_S):
            s.judge_draw(granted_a)
        return s

    def restore(self, blob: bytes) -> SessionState | None:
        """Re-create a session saved with ``dump`` (after a restart); bad or foreign blobs give None."""
        try:
            d = json.loads(blob)
            s = SessionState(
                session_id=str(d["session_id"]),
                station_id=str(d["station_id"]),
                evse_id=int(d["evse_id"]),
                transaction_id=str(d["transaction_id"]),
                started_at=datetime.fromisoformat(d["started_at"]),
                departure=datetime.fromisoformat(d["departure"]),
                energy_needed_wh=float(d["energy_needed_wh"]),
                min_current_a=float(d["min_current_a"]),
                max_current_a=float(d["max_current_a"]),
                phases=int(d["phases"]),
                priority=int(d["priority"]),
                delivered_wh=float(d["delivered_wh"]),
                meter_start_wh=None if d.get("meter_start_wh") is None else float(d["meter_start_wh"]),
                user_set=set(d.get("user_set", [])),
                need_guessed=bool(d.get("need_guessed", True)),
                departure_guessed=bool(d.get("departure_guessed", True)),
                priority_before=None if d.get("priority_before") is None else int(d["priority_before"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if self._evse_ok(s.station_id, s.evse_id) is None or s.started_at.tzinfo is None:
            return None
        key = session_key(s.station_id, s.evse_id)
        if key in self.sessions:
            return None
        self.sessions[key] = s
        return s

    def snapshot(self) -> list[SessionState]:
        """Copies of all sessions (for the API and plans)."""
        return [replace(s, user_set=set(s.user_set)) for s in self.sessions.values()]
