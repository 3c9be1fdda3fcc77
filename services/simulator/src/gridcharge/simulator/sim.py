"""The simulation driver: a scenario's stations, EVs and grid stepped through time, with ground truth recorded.

Used by the embedded demo (SimClock, MemoryBus), by `make up` and by the end-to-end tests (real clock,
Kafka). Each `step(dt)` applies the profiles in force to every EV for `dt` seconds, records the true load of
every node and phase against its effective limit, publishes grid-meter readings and DSO limits, and lets the
stations report over OCPP. Events that concern the cluster (a service dying, a gateway replica or the broker
restarting) are handed to the `on_event` callback of whoever hosts the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from gridcharge.forecast.v1 import forecast_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.plan.v1 import plan_pb2
from gridcharge.shared import contracts
from gridcharge.shared.bus.base import Bus, Record
from gridcharge.shared.clock import Clock, parse_duration
from gridcharge.shared.codec import meta, phase_tuple, phase_values, to_timestamp
from gridcharge.shared.topology import PHASES
from gridcharge.simulator.ev import Ev
from gridcharge.simulator.grid import GridModel, Weather, make_weather, meter_reading, pv_traces
from gridcharge.simulator.grid_signals import GridSignals, signal_label
from gridcharge.simulator.offline import OfflineOptimum, offline_optimum
from gridcharge.simulator.scenario import Event, Scenario, Visit
from gridcharge.simulator.stations import Quirks, StationClient, StationModel

log = logging.getLogger(__name__)

EventHook = Callable[[Event, bool], Awaitable[None]]  # (event, started?) -> None
PLAN_FRESH_S = 150.0  # a session's plan older than this (the allocator re-plans every 60 s) no longer counts


@dataclass
class Violation:
    t: float
    node: str
    phase: str
    load_w: float
    limit_w: float


@dataclass
class SessionResult:
    ev_id: str
    station_id: str
    evse_id: int
    arrival_s: float
    departure_s: float
    need_wh: float
    delivered_wh: float
    feasible: bool
    optimum_wh: float | None = None  # what the offline optimum delivers to it (None: not computed)

    @property
    def site_feasible(self) -> bool:
        """Feasible for the car alone and completed by the offline optimum under the site's limits."""
        if self.optimum_wh is None:
            return self.feasible
        return self.feasible and self.optimum_wh >= self.need_wh - max(5.0, 0.01 * self.need_wh)

    @property
    def on_time(self) -> bool:
        return self.delivered_wh >= self.need_wh - max(5.0, 0.01 * self.need_wh)


@dataclass
class Recorder:
    """Ground truth per step: node load per phase vs effective limit, PV, headroom forecast, energy, cost."""

    nodes: list[str]
    t: list[float] = field(default_factory=list)
    load_w: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    limit_w: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    ev_w: dict[str, list[float]] = field(default_factory=dict)
    pv_w: dict[str, list[float]] = field(default_factory=dict)
    pv_forecast_w: dict[str, list[float]] = field(default_factory=dict)  # the forecaster's (HEADROOM pv_w)
    pv_weather_fc_w: dict[str, list[float]] = field(default_factory=dict)  # PV of the forecast weather
    headroom_w: dict[str, list[tuple[float, float, float] | None]] = field(default_factory=dict)
    base_w: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)  # load − EV, per phase
    energy_wh: float = 0.0
    cost: float = 0.0
    pv_energy_wh: float = 0.0
    pv_self_wh: float = 0.0
    violations: list[Violation] = field(default_factory=list)
    fallback_checks: list[tuple[float, str, float, float]] = field(default_factory=list)
    limit_source: dict[str, list[str]] = field(default_factory=dict)  # source of the lowest limit in force
    binding: list[dict[str, int]] = field(default_factory=list)  # sessions per binding source (grid signals)

    def __post_init__(self) -> None:
        for n in self.nodes:
            self.limit_source[n] = []
            self.load_w[n], self.limit_w[n], self.headroom_w[n], self.base_w[n] = [], [], [], []
            self.ev_w[n], self.pv_w[n], self.pv_forecast_w[n], self.pv_weather_fc_w[n] = [], [], [], []

    def peak(self, node: str) -> tuple[float, float, float]:
        rows = self.load_w[node]
        if not rows:
            return (0.0, 0.0, 0.0)
        return (max(r[0] for r in rows), max(r[1] for r in rows), max(r[2] for r in rows))


def price_at(tariff: Any, t: float, tz: ZoneInfo) -> float:
    """Energy price per kWh at `t` from the topology's time-of-use windows (local HH:MM, may wrap midnight)."""
    local = datetime.fromtimestamp(t, tz)
    mins = local.hour * 60 + local.minute
    for w in tariff.windows:
        a = int(w.start[:2]) * 60 + int(w.start[3:5])
        b = int(w.end[:2]) * 60 + int(w.end[3:5])
        if (a <= mins < b) if a < b else (mins >= a or mins < b):
            return float(w.price_per_kwh)
    return float(tariff.default_price_per_kwh)


def max_energy_wh(ev: Ev, hw_max_a: float, voltage_v: float, window_s: float) -> float:
    """Energy the EV could take alone at full power within `window_s` (taper included), Wh."""
    probe = Ev(
        ev.ev_id,
        ev.battery_wh,
        ev.arrival_soc,
        ev.target_soc,
        0.0,
        window_s,
        min(ev.max_current_a, hw_max_a),
        ev.min_current_a,
        ev.phases,
        ev.taper_soc,
    )
    t = 0.0
    while t < window_s and not probe.full:
        cur, ph = probe.draw_a(None)
        if cur <= 0:
            break
        probe.charge(cur, ph, 60.0, voltage_v)
        t += 60.0
    return probe.delivered_wh


class Simulation:
    """A scenario running against a gateway: stations, EVs, grid, events and the recorder."""

    def __init__(
        self,
        scenario: Scenario,
        clock: Clock,
        bus: Bus | None,
        gateway_urls: list[str],
        *,
        on_event: EventHook | None = None,
        weather: Weather | None = None,
        response_timeout_s: float = 10.0,
        reconnect_s: float = 0.5,
        producer: str = "simulator",
    ) -> None:
        self.sc, self.clock, self.bus, self.on_event = scenario, clock, bus, on_event
        self.topo = scenario.topology
        self.v = self.topo.nominal_voltage_v
        self.tz = ZoneInfo(self.topo.site.timezone)
        self.producer = producer
        days = max(1, math.ceil((scenario.end_s - scenario.start_s) / 86_400) + 1)
        self.weather = weather
        if self.weather is None and self.topo.pv_systems:
            self.weather = make_weather(self.topo, scenario.spec.weather, scenario.start_s, days)
        pv = pv_traces(self.topo, self.weather) if self.weather is not None else {}
        self.grid = GridModel(self.topo, scenario.spec.base_load, pv, seed=scenario.spec.seed)
        meter_s = parse_duration(scenario.spec.meter_interval).total_seconds()
        self.models: dict[str, StationModel] = {}
        self.clients: dict[str, StationClient] = {}
        for st in self.topo.stations:
            m = StationModel(st, self.v, scenario.quirks.get(st.id, Quirks()))
            self.models[st.id] = m
            self.clients[st.id] = StationClient(
                m,
                gateway_urls,
                clock,
                meter_interval_s=meter_s,
                response_timeout_s=response_timeout_s,
                reconnect_s=reconnect_s,
            )
        self.visits: list[Visit] = scenario.fresh_visits()
        self._pending = list(self.visits)
        self._events = [
            (e.announce_s if e.kind == "limit" and e.announce_s is not None else e.at_s, 0, e) for e in scenario.events
        ]
        self._events += [(e.end_s, 1, e) for e in scenario.events if e.end_s is not None and e.kind != "limit"]
        self._events.sort(key=lambda x: (x[0], x[1]))
        self.external: list[tuple[float, float, str, float]] = []  # (from, to, node, pct)
        self.rec = Recorder([n.id for n in self.topo.nodes])
        self._optimum: tuple[int, OfflineOptimum | None] | None = None
        self.headroom: dict[str, forecast_pb2.HeadroomForecast] = {}
        self._grid_meter_s = parse_duration(scenario.spec.grid_meter_interval).total_seconds()
        self._last_grid_meter = -math.inf
        self.service_down: set[str] = set()
        self._sub: Any = None
        self.signals = GridSignals(scenario.grid_signals, self.topo, producer) if scenario.grid_signals else None
        self.plan_binding: dict[str, tuple[str, float]] = {}  # session id -> (binding source label, heard at)
        self._plans_sub: Any = None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, connect_timeout_s: float = 20.0, watch_headroom: bool = True) -> int:
        """Connect every station; return how many connected within the timeout."""
        if self.bus is not None and watch_headroom:
            self._sub = await self.bus.subscribe(
                [contracts.HEADROOM.name], f"{self.producer}-headroom", self._on_headroom, from_beginning=False
            )
        if self.bus is not None and self.signals is not None:
            self._plans_sub = await self.bus.subscribe(
                [contracts.SESSION_PLANS.name], f"{self.producer}-plans", self._on_session_plan, from_beginning=False
            )
        for c in self.clients.values():
            c.start()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(c.connected.wait() for c in self.clients.values())), connect_timeout_s
            )
        except TimeoutError:
            pass
        return sum(1 for c in self.clients.values() if c.connected.is_set())

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.clients.values()), return_exceptions=True)
        if self._sub is not None:
            await self._sub.stop()
        if self._plans_sub is not None:
            await self._plans_sub.stop()

    async def _on_headroom(self, rec: Record) -> None:
        msg = contracts.decode(forecast_pb2.HeadroomForecast, rec.value)
        if msg.node_id in self.rec.nodes:
            self.headroom[msg.node_id] = msg

    async def _on_session_plan(self, rec: Record) -> None:
        msg = contracts.decode(plan_pb2.SessionPlan, rec.value)
        label = signal_label(msg.binding.source) if msg.HasField("binding") else "none"
        self.plan_binding[msg.session_id] = (label, self.clock.time())

    # -- ground truth ------------------------------------------------------------------------------
    def effective_limit_w(self, node: str, t: float) -> tuple[float, float, float]:
        return self.effective_limit(node, t)[0]

    def effective_limit(self, node: str, t: float) -> tuple[tuple[float, float, float], str]:
        """The node's limit per phase in force at ``t`` and its source (rating, dso, openadr, §14a)."""
        lim = self.topo.limit_w(node)
        pct = min((p for a, b, n, p in self.external if n == node and a <= t < b), default=100.0)
        out = (lim[0] * pct / 100, lim[1] * pct / 100, lim[2] * pct / 100)
        source = "dso" if pct < 100.0 else "rating"
        sig = self.signals.limit_at(node, t) if self.signals is not None else None
        if sig is not None and sum(sig[0]) < sum(out):
            out, source = sig
        return out, source

    def _headroom_at(self, node: str, t: float) -> tuple[tuple[float, float, float] | None, float | None]:
        f = self.headroom.get(node)
        if f is None or not f.slots or f.step_s <= 0:
            return None, None
        i = int((t - f.start.ToSeconds()) // f.step_s)
        if not 0 <= i < len(f.slots):
            return None, None
        s = f.slots[i]
        return phase_tuple(s.headroom_w), sum(phase_tuple(s.pv_w))

    # -- events ------------------------------------------------------------------------------------
    async def _fire(self, e: Event, starting: bool, t: float) -> None:
        log.info("scenario event", extra={"kind": e.kind, "starting": starting, "at": t})
        if e.kind == "limit":
            await self._publish_limit(e)
            return
        if e.kind == "station_offline" and e.station:
            c = self.clients[e.station]
            c.enabled = not starting
            if starting:
                await c.drop_connection()
            return
        if e.kind == "station_reboot" and e.station:
            self.models[e.station].reboot()
            await self.clients[e.station].drop_connection()
            return
        if e.kind == "service_down" and e.service:
            (self.service_down.add if starting else self.service_down.discard)(e.service)
        if self.on_event is not None:
            await self.on_event(e, starting)

    async def _publish_limit(self, e: Event) -> None:
        assert e.node is not None and e.pct is not None
        end = e.end_s if e.end_s is not None else self.sc.end_s
        self.external.append((e.at_s, end, e.node, e.pct))
        if self.bus is None:
            return
        lim = self.topo.limit_w(e.node)
        f = e.pct / 100
        msg = grid_pb2.ExternalLimit(
            meta=meta(self.producer, self.clock.time()),
            node_id=e.node,
            limit_id=f"sim-{e.node}-{int(e.at_s)}",
            source="dso",
            valid_from=to_timestamp(e.at_s),
            valid_to=to_timestamp(end),
            limit_w=phase_values([w * f for w in lim]),
            fallback_limit_w=phase_values([w * f for w in lim]),
        )
        await self.bus.publish(contracts.EXTERNAL_LIMITS.name, e.node, msg.SerializeToString())

    # -- stepping ----------------------------------------------------------------------------------
    async def step(self, dt_s: float) -> None:
        """Simulate [now, now + dt_s) and report; the caller advances the clock afterwards."""
        t = self.clock.time()
        while self._events and self._events[0][0] <= t:
            _, end, e = self._events.pop(0)
            await self._fire(e, end == 0, t)
        if self.signals is not None:
            for key, msg in self.signals.step(t):
                if self.bus is not None:
                    await self.bus.publish(contracts.EXTERNAL_LIMITS.name, key, msg.SerializeToString())
        while self._pending and self._pending[0].ev.arrival_s <= t:
            v = self._pending[0]
            if self.models[v.station_id].evses[v.evse_id].ev is not None:
                break  # previous car still there; retry next step
            self._pending.pop(0)
            self.clients[v.station_id].plug_in(v.evse_id, v.ev, t)
        wh = sum(m.step(t, dt_s) for m in self.models.values())
        currents = {sid: m.grid_currents_a() for sid, m in self.models.items()}
        total, ev, pv = self.grid.node_loads(t, currents)
        self._record(t, dt_s, wh, total, ev, pv)
        if self.bus is not None and t - self._last_grid_meter >= self._grid_meter_s:
            self._last_grid_meter = t
            ambient = self._ambient(t)
            for n in self.topo.nodes:
                if n.metered:
                    await self.bus.publish(
                        contracts.GRID_METER_READINGS.name,
                        n.id,
                        meter_reading(n.id, t, total[n.id], self.v, ambient, self.producer),
                    )
        await asyncio.gather(*(c.tick(t) for c in self.clients.values()))

    def _ambient(self, t: float) -> float:
        if self.weather is None:
            return math.nan
        w = self.weather.actual
        i = min(len(w) - 1, max(0, int((t - (w.index[0].timestamp() - 450)) // 900)))
        return float(w["temp_air_c"].iloc[i])

    def _record(
        self,
        t: float,
        dt_s: float,
        wh: float,
        total: dict[str, list[float]],
        ev: dict[str, list[float]],
        pv: dict[str, list[float]],
    ) -> None:
        r = self.rec
        fc_pv = self.grid.pv_w(t, actual=False)
        r.t.append(t)
        r.energy_wh += wh
        r.cost += wh / 1000 * price_at(self.topo.tariff, t, self.tz)
        if self.signals is not None:
            counts: dict[str, int] = {}
            for label, heard in self.plan_binding.values():
                if t - heard <= PLAN_FRESH_S:  # sessions that ended get no more plans
                    counts[label] = counts.get(label, 0) + 1
            r.binding.append(counts)
        for n in r.nodes:
            lim, why = self.effective_limit(n, t)
            r.limit_source[n].append(why)
            load = total[n]
            r.load_w[n].append((load[0], load[1], load[2]))
            r.base_w[n].append((load[0] - ev[n][0], load[1] - ev[n][1], load[2] - ev[n][2]))
            r.limit_w[n].append(lim)
            r.ev_w[n].append(sum(ev[n]))
            r.pv_w[n].append(sum(pv[n]))
            head, pv_fc = self._headroom_at(n, t)
            r.headroom_w[n].append(head)
            r.pv_forecast_w[n].append(pv_fc if pv_fc is not None else math.nan)
            r.pv_weather_fc_w[n].append(sum(fc_pv.get(n, (0.0, 0.0, 0.0))))
            for k, ph in enumerate(PHASES):
                if load[k] > lim[k] + 1e-6:
                    r.violations.append(Violation(t, n, ph, load[k], lim[k]))
        for root in self.topo.roots():
            gen = sum(pv[root.id])
            if gen > 0:
                demand = sum(total[root.id]) + gen
                r.pv_energy_wh += gen * dt_s / 3600
                r.pv_self_wh += min(gen, max(0.0, demand)) * dt_s / 3600

    # -- results -----------------------------------------------------------------------------------
    def optimum(self) -> OfflineOptimum | None:
        """The offline optimum of the run so far (computed once per recorded length)."""
        if self._optimum is None or self._optimum[0] != len(self.rec.t):
            try:
                self._optimum = (len(self.rec.t), offline_optimum(self))
            except Exception:  # a report without the reference is better than no report
                log.warning("offline optimum failed", exc_info=True)
                self._optimum = (len(self.rec.t), None)
        return self._optimum[1]

    def sessions(self) -> list[SessionResult]:
        opt = self.optimum()
        out = []
        for v in self.visits:
            if v.ev.arrival_s > self.clock.time():
                continue
            st = self.topo.station_by_id[v.station_id]
            hw = min(st.max_current_a, st.evse(v.evse_id).max_current_a or st.max_current_a)
            stay = v.ev.departure_s - v.ev.arrival_s
            feasible = max_energy_wh(v.ev, hw, self.v, stay * 0.8) >= v.ev.energy_need_wh
            out.append(
                SessionResult(
                    v.ev.ev_id,
                    v.station_id,
                    v.evse_id,
                    v.ev.arrival_s,
                    v.ev.departure_s,
                    v.ev.energy_need_wh,
                    v.ev.delivered_wh,
                    feasible,
                    opt.per_session_wh.get(v.ev.ev_id, 0.0) if opt is not None else None,
                )
            )
        return out

    def write_figures(self) -> dict[str, float]:
        """SetChargingProfile writes the stations received (flash wear): per station-hour over the run (mean
        and the busiest station) and the most any station got in one clock hour."""
        hours = max(1e-9, (self.clock.time() - self.sc.start_s) / 3600.0)
        per_station = [len(c.profile_log) for c in self.clients.values()]
        peak = 0
        for c in self.clients.values():
            buckets: dict[int, int] = {}
            for t, _ok, _why in c.profile_log:
                buckets[int(t // 3600)] = buckets.get(int(t // 3600), 0) + 1
            peak = max(peak, max(buckets.values(), default=0))
        n = max(1, len(per_station))
        return {
            "profile_writes": float(sum(per_station)),
            "writes_per_station_hour": sum(per_station) / n / hours,
            "writes_per_station_hour_max": max(per_station, default=0) / hours,
            "writes_peak_station_hour": float(peak),
        }

    def grid_signal_summary(self) -> list[dict[str, Any]]:
        """Per grid signal: its window and limit, the node's peak load and EV energy in the window (ground truth),
        and the most sessions the allocator said were bound by that source at once."""
        out: list[dict[str, Any]] = []
        if self.signals is None:
            return out
        r = self.rec
        for sig in self.signals.signals:
            idx = [i for i, t in enumerate(r.t) if sig.at_s <= t < sig.end_s]
            lim = [sum(r.limit_w[sig.node][i]) for i in idx if r.limit_source[sig.node][i] == sig.kind]
            dt = [(r.t[i + 1] if i + 1 < len(r.t) else self.clock.time()) - r.t[i] for i in idx]
            out.append(
                {
                    "kind": sig.kind,
                    "node": sig.node,
                    "from": datetime.fromtimestamp(sig.at_s, UTC).isoformat(),
                    "to": datetime.fromtimestamp(sig.end_s, UTC).isoformat(),
                    "limit_kw": min(lim) / 1000 if lim else None,
                    "peak_kw": max((sum(r.load_w[sig.node][i]) for i in idx), default=0.0) / 1000,
                    "ev_energy_kwh": sum(r.ev_w[sig.node][i] * d for i, d in zip(idx, dt, strict=True)) / 3.6e6,
                    "steps_binding": sum(1 for i in idx if r.binding[i].get(sig.kind, 0) > 0),
                    "steps": len(idx),
                    "sessions_bound_max": max((r.binding[i].get(sig.kind, 0) for i in idx), default=0),
                    # over the limit on the node during the window: in its first minute (an unannounced §14a
                    # dimming gives no notice) and later
                    "violations_first_minute": sum(
                        1
                        for v in r.violations
                        if v.node == sig.node and sig.at_s <= v.t < min(sig.end_s, sig.at_s + 60)
                    ),
                    "violations_later": sum(
                        1 for v in r.violations if v.node == sig.node and sig.at_s + 60 <= v.t < sig.end_s
                    ),
                }
            )
        return out

    def summary(self) -> dict[str, Any]:
        """Figures for the summary table and the HTML report."""
        ses = self.sessions()
        opt = self.optimum()
        feas = [s for s in ses if s.feasible]
        done = [s for s in ses if s.departure_s <= self.clock.time()]
        nodes = {}
        for n in self.rec.nodes:
            lim = self.topo.limit_w(n)
            peak = self.rec.peak(n)
            nodes[n] = {
                "peak_w": peak,
                "limit_w": lim,
                "violations": sum(1 for v in self.rec.violations if v.node == n),
            }
        return {
            "scenario": self.sc.name,
            "start": datetime.fromtimestamp(self.sc.start_s, UTC).isoformat(),
            "end": datetime.fromtimestamp(self.clock.time(), UTC).isoformat(),
            "sessions": len(ses),
            "sessions_finished": len(done),
            "sessions_feasible": len(feas),
            "sessions_on_time": sum(1 for s in done if s.on_time),
            "feasible_finished": sum(1 for s in feas if s in done),
            "feasible_on_time": sum(1 for s in feas if s in done and s.on_time),
            "site_feasible_finished": sum(1 for s in done if s.site_feasible),
            "site_feasible_on_time": sum(1 for s in done if s.site_feasible and s.on_time),
            "offline_optimum_kwh": opt.delivered_wh / 1000 if opt is not None else None,
            "energy_requested_kwh": sum(s.need_wh for s in ses) / 1000,
            "energy_delivered_kwh": sum(min(s.delivered_wh, s.need_wh) for s in ses) / 1000,
            "energy_total_kwh": self.rec.energy_wh / 1000,
            "pv_energy_kwh": self.rec.pv_energy_wh / 1000,
            "pv_self_consumption_pct": 100 * self.rec.pv_self_wh / self.rec.pv_energy_wh
            if self.rec.pv_energy_wh > 0
            else None,
            "ev_cost": self.rec.cost,
            "currency": self.topo.tariff.currency,
            "violations": len(self.rec.violations),
            "nodes": nodes,
            **self.write_figures(),
            "profiles_accepted": sum(c.stats.profiles_accepted for c in self.clients.values()),
            "profiles_rejected": sum(c.stats.profiles_rejected for c in self.clients.values()),
            "reconnects": sum(c.stats.disconnects for c in self.clients.values()),
            **({"grid_signals": self.grid_signal_summary()} if self.signals is not None else {}),
        }
