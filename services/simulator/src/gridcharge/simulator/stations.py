"""Simulated charging stations: a station model (EVSEs, plugged EVs, transactions, installed profiles,
meter registers) and OCPP 1.6J / 2.0.1 / 2.1 clients on the `ocpp` library that connect it to a gateway.

`StationModel` is pure (time passed in, POSIX s). `StationClient` owns the WebSocket: it connects,
boots, answers the CSMS's calls (smart-charging profile handlers translate OCPP into the model) and
sends transactions, charging needs and meter values when the simulation driver calls `tick()`.
Configurable quirks reproduce real-world misbehaviour (see `Quirks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

import websockets
from gridcharge.shared.clock import Clock
from gridcharge.shared.codec import iso_utc
from gridcharge.shared.topology import PHASES, Phase, Station
from gridcharge.simulator.ev import Ev
from gridcharge.simulator.profiles import (
    OCPP16_PURPOSE,
    OCPP201_PURPOSE,
    ProfileError,
    ProfileStore,
    Transaction,
    parse_ocpp_profile,
)
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as res16
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as res21
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as res201
from websockets.typing import Subprotocol

log = logging.getLogger(__name__)

_PURPOSE_IN: dict[str, str] = {
    "ChargePointMaxProfile": "StationMax",
    "ChargingStationMaxProfile": "StationMax",
    "TxDefaultProfile": "TxDefault",
    "TxProfile": "Tx",
}


@dataclass(frozen=True)
class Quirks:
    """Real-world station misbehaviour, per station."""

    rejects_profiles: bool = False
    rate_units: tuple[str, ...] = ("A", "W")  # ("A",) = A-only, ("W",) = W-only
    max_periods: int = 24  # rejects schedules with more periods
    ignores_valid_to: bool = False  # keeps applying expired Tx leases
    forgets_profiles_on_reboot: bool = True  # a reboot wipes installed profiles (most stations do)
    stale_meter_after_s: float | None = None  # stops sending meter values this long after start
    implausible_factor: float = 1.0  # reported currents/powers are multiplied by this
    max_stack_level: int = 8
    ignores_profiles: bool = False  # answers Accepted to SetChargingProfile but installs nothing


@dataclass
class EvseState:
    evse_id: int
    phase_map: tuple[Phase, ...]
    max_current_a: float
    ev: Ev | None = None
    tx: Transaction | None = None
    register_wh: float = 0.0  # Energy.Active.Import.Register
    current_a: float = 0.0  # per phase, drawn now
    phases_used: int = 0
    limit_a: float | None = None  # what the profiles allow now (None = no limit)
    limit_source: str = "none"
    tx_reported: bool = False  # the CSMS knows about the transaction
    needs_sent: bool = False
    seq_no: int = 0
    priority: bool = False  # 2.1 priority charging active


@dataclass
class StationModel:
    """One station's physics and profile state. Pure: the client and the driver call it with a time."""

    cfg: Station
    voltage_v: float = 230.0
    quirks: Quirks = field(default_factory=Quirks)
    profiles: ProfileStore = field(default_factory=ProfileStore)
    evses: dict[int, EvseState] = field(default_factory=dict)
    local_tx_seq: int = 0

    def __post_init__(self) -> None:
        self.profiles.max_stack_level = self.quirks.max_stack_level
        self.profiles.ignore_valid_to = self.quirks.ignores_valid_to
        if not self.evses:
            for e in self.cfg.evses:
                self.evses[e.id] = EvseState(
                    e.id,
                    self.cfg.evse_phases(e.id),
                    min(e.max_current_a or self.cfg.max_current_a, self.cfg.max_current_a),
                )

    @property
    def station_id(self) -> str:
        return self.cfg.id

    def active_tx(self, evse_id: int) -> Transaction | None:
        return self.evses[evse_id].tx if evse_id in self.evses else None

    def install_profile(self, data: dict[str, Any], evse_id: int, now: float) -> tuple[bool, str]:
        """SetChargingProfile: (accepted, reason)."""
        if self.quirks.rejects_profiles:
            return False, "quirk: rejects profiles"
        if self.quirks.ignores_profiles:
            return True, "quirk: accepted, not installed"
        if evse_id != 0 and evse_id not in self.evses:
            return False, "unknown EVSE"
        try:
            prof = parse_ocpp_profile(data, evse_id, now)
            if prof.rate_unit not in self.quirks.rate_units:
                raise ProfileError(f"rate unit {prof.rate_unit} not supported")
            if len(prof.periods) > self.quirks.max_periods:
                raise ProfileError("too many periods")
            self.profiles.install(prof, self.active_tx(evse_id) if evse_id else None)
        except ProfileError as exc:
            return False, str(exc)
        return True, ""

    def grid_currents_a(self) -> tuple[float, float, float]:
        """Current per grid phase A drawn by the station now."""
        acc = [0.0, 0.0, 0.0]
        for e in self.evses.values():
            for ph in e.phase_map[: e.phases_used]:
                acc[PHASES.index(ph)] += e.current_a
        return (acc[0], acc[1], acc[2])

    def step(self, t: float, dt_s: float) -> float:
        """Apply the profiles in force at `t`, let the EVs draw for `dt_s`; return energy Wh delivered."""
        demand: dict[int, tuple[float, int]] = {}
        for e in self.evses.values():
            if e.ev is None:
                e.current_a, e.phases_used, e.limit_a, e.limit_source = 0.0, 0, None, "none"
                continue
            lim, n_ph, src = self.profiles.evse_limit_a(e.evse_id, t, e.tx, e.ev.phases, self.voltage_v)
            e.limit_a, e.limit_source = lim, src
            hw = e.max_current_a
            offered = hw if lim is None else min(lim, hw)
            demand[e.evse_id] = e.ev.draw_a(offered, min(n_ph or 3, len(e.phase_map)))
        st = self.profiles.station_limit(t)
        st_lim = st[0] if st is not None else None
        # the station maximum caps every phase (A) or the station's total power (W: a single-phase car may
        # take all of it on one phase, as a station that measures its phases does): scale the EVSEs evenly
        cap, total_w = self.cfg.max_current_a, math.inf
        if st is not None and st[1] == "W":
            total_w = max(0.0, st[0])
        elif st is not None:
            cap = min(cap, st[0])
        per_phase = [0.0, 0.0, 0.0]
        for eid, (cur, nph) in demand.items():
            for ph in self.evses[eid].phase_map[:nph]:
                per_phase[PHASES.index(ph)] += cur
        scale = min(1.0, cap / max(per_phase)) if max(per_phase, default=0.0) > 0 else 1.0
        if sum(per_phase) > 0:
            scale = min(scale, total_w / (self.voltage_v * sum(per_phase)))
        total = 0.0
        for e in self.evses.values():
            if e.evse_id not in demand or e.ev is None:
                continue
            cur, nph = demand[e.evse_id]
            cur *= scale
            if 0 < cur < e.ev.min_current_a - 1e-9:
                cur = 0.0
            e.current_a, e.phases_used = cur, (nph if cur > 0 else 0)
            wh = e.ev.charge(cur, nph, dt_s, self.voltage_v)
            e.register_wh += wh
            total += wh
            if st_lim is not None and e.limit_source == "none":
                e.limit_source = "StationMax"
        return total

    def meter_sample(self, e: EvseState) -> list[tuple[str, str, float, str]]:
        """(measurand, phase, value, unit) of one EVSE; quirks can make values implausible."""
        f = self.quirks.implausible_factor
        out: list[tuple[str, str, float, str]] = []
        for i, ph in enumerate(("L1", "L2", "L3")[: len(e.phase_map)]):
            amps = e.current_a if i < e.phases_used else 0.0
            out.append(("Current.Import", ph, round(amps * f, 2), "A"))
            out.append(("Power.Active.Import", ph, round(amps * self.voltage_v * f, 1), "W"))
            out.append(("Voltage", ph + "-N", self.voltage_v, "V"))
        out.append(("Power.Active.Import", "", round(e.current_a * e.phases_used * self.voltage_v * f, 1), "W"))
        out.append(("Energy.Active.Import.Register", "", round(e.register_wh, 1), "Wh"))
        if e.ev is not None:
            out.append(("SoC", "", round(e.ev.soc * 100, 1), "Percent"))
        return out

    def reboot(self) -> None:
        if self.quirks.forgets_profiles_on_reboot:
            self.profiles.forget_all()


# -- OCPP clients ----------------------------------------------------------------------------------------


class _Handlers16(Cp16):
    """CSMS -> station calls for 1.6J; thin, everything goes to the model."""

    client: StationClient

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any) -> Any:
        ok, why = self.client.model.install_profile(cs_charging_profiles, connector_id, self.client.clock.time())
        self.client.note_profile(ok, why)
        return res16.SetChargingProfile(status="Accepted" if ok else "Rejected")

    @on("ClearChargingProfile")
    async def on_clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> Any:
        purpose = _PURPOSE_IN.get(charging_profile_purpose or "")
        done = self.client.model.profiles.clear(id, connector_id, purpose, stack_level)  # type: ignore[arg-type]
        return res16.ClearChargingProfile(status="Accepted" if done else "Unknown")

    @on("GetCompositeSchedule")
    async def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        m, now = self.client.model, self.client.clock.time()
        if connector_id != 0 and connector_id not in m.evses:
            return res16.GetCompositeSchedule(status="Rejected")
        pts = m.profiles.composite_schedule(connector_id, now, duration, m.active_tx(connector_id), 3, m.voltage_v)
        periods = [{"start_period": off, "limit": round(min(lim, m.cfg.max_current_a), 1)} for off, lim in pts]
        return res16.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=iso_utc(now),
            charging_schedule={
                "duration": duration,
                "start_schedule": iso_utc(now),
                "charging_rate_unit": "A",
                "charging_schedule_period": periods,
            },
        )

    @on("GetConfiguration")
    async def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        conf = self.client.config16()
        wanted = key or list(conf)
        known = [{"key": k, "readonly": True, "value": conf[k]} for k in wanted if k in conf]
        unknown = [k for k in wanted if k not in conf]
        return res16.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on("ChangeConfiguration")
    async def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        if key == "MeterValueSampleInterval" and value.isdigit():
            self.client.meter_interval_s = max(1.0, float(value))
            return res16.ChangeConfiguration(status="Accepted")
        return res16.ChangeConfiguration(status="NotSupported")

    @on("TriggerMessage")
    async def on_trigger_message(self, requested_message: str, connector_id: int | None = None, **_: Any) -> Any:
        if requested_message in ("MeterValues", "StatusNotification", "Heartbeat", "BootNotification"):
            self.client.triggered.append(requested_message)
            return res16.TriggerMessage(status="Accepted")
        return res16.TriggerMessage(status="NotImplemented")

    @on("Reset")
    async def on_reset(self, type: str, **_: Any) -> Any:
        self.client.reboot_requested = True
        return res16.Reset(status="Accepted")

    @on("RemoteStartTransaction")
    async def on_remote_start_transaction(self, id_tag: str, connector_id: int | None = None, **_: Any) -> Any:
        # recorded for the driver (a car must be plugged in before a transaction starts)
        self.client.remote_starts.append({"id_tag": id_tag, "connector_id": connector_id})
        return res16.RemoteStartTransaction(status="Accepted")


class _Handlers201(Cp201):
    """CSMS -> station calls for 2.0.1."""

    client: StationClient

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        ok, why = self.client.model.install_profile(charging_profile, evse_id, self.client.clock.time())
        self.client.note_profile(ok, why)
        return res201.SetChargingProfile(
            status="Accepted" if ok else "Rejected", status_info=None if ok else {"reason_code": "InvalidProfile"}
        )

    @on("ClearChargingProfile")
    async def on_clear_charging_profile(
        self, charging_profile_id: int | None = None, charging_profile_criteria: dict[str, Any] | None = None, **_: Any
    ) -> Any:
        c = charging_profile_criteria or {}
        purpose = _PURPOSE_IN.get(c.get("charging_profile_purpose") or "")
        done = self.client.model.profiles.clear(
            charging_profile_id,
            c.get("evse_id"),
            purpose,  # type: ignore[arg-type]
            c.get("stack_level"),
        )
        return res201.ClearChargingProfile(status="Accepted" if done else "Unknown")

    @on("GetCompositeSchedule")
    async def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        m, now = self.client.model, self.client.clock.time()
        if evse_id != 0 and evse_id not in m.evses:
            return res201.GetCompositeSchedule(status="Rejected")
        pts = m.profiles.composite_schedule(evse_id, now, duration, m.active_tx(evse_id), 3, m.voltage_v)
        periods = [{"start_period": off, "limit": round(min(lim, m.cfg.max_current_a), 1)} for off, lim in pts]
        return res201.GetCompositeSchedule(
            status="Accepted",
            schedule={
                "evse_id": evse_id,
                "duration": duration,
                "schedule_start": iso_utc(now),
                "charging_rate_unit": "A",
                "charging_schedule_period": periods,
            },
        )

    @on("GetChargingProfiles")
    async def on_get_charging_profiles(
        self, request_id: int, charging_profile: dict[str, Any], evse_id: int | None = None, **_: Any
    ) -> Any:
        has = bool(self.client.model.profiles.profiles)
        if has:
            self.client.triggered.append(f"ReportChargingProfiles:{request_id}")
        return res201.GetChargingProfiles(status="Accepted" if has else "NoProfiles")

    @on("GetVariables")
    async def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        known = self.client.variables201()
        out = []
        for d in get_variable_data:
            comp, var = d["component"]["name"], d["variable"]["name"]
            val = known.get((comp, var))
            out.append(
                {
                    "attribute_status": "Accepted" if val is not None else "UnknownVariable",
                    "component": d["component"],
                    "variable": d["variable"],
                    **({"attribute_value": val} if val is not None else {}),
                }
            )
        return res201.GetVariables(get_variable_result=out)

    @on("SetVariables")
    async def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        out = []
        for d in set_variable_data:
            comp, var = d["component"]["name"], d["variable"]["name"]
            ok = (comp, var) == ("SampledDataCtrlr", "TxUpdatedInterval") and str(d["attribute_value"]).isdigit()
            if ok:
                self.client.meter_interval_s = max(1.0, float(d["attribute_value"]))
            out.append(
                {
                    "attribute_status": "Accepted" if ok else "Rejected",
                    "component": d["component"],
                    "variable": d["variable"],
                }
            )
        return res201.SetVariables(set_variable_result=out)

    @on("TriggerMessage")
    async def on_trigger_message(self, requested_message: str, evse: dict[str, Any] | None = None, **_: Any) -> Any:
        if requested_message in ("MeterValues", "StatusNotification", "Heartbeat", "BootNotification"):
            self.client.triggered.append(requested_message)
            return res201.TriggerMessage(status="Accepted")
        return res201.TriggerMessage(status="NotImplemented")

    @on("Reset")
    async def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> Any:
        self.client.reboot_requested = True
        return res201.Reset(status="Accepted")

    @on("RequestStartTransaction")
    async def on_request_start_transaction(
        self, id_token: dict[str, Any], remote_start_id: int, evse_id: int | None = None, **_: Any
    ) -> Any:
        self.client.remote_starts.append({"id_token": id_token, "remote_start_id": remote_start_id, "evse_id": evse_id})
        return res201.RequestStartTransaction(status="Accepted")


@dataclass
class ClientStats:
    connects: int = 0
    disconnects: int = 0
    profiles_accepted: int = 0
    profiles_rejected: int = 0
    calls_failed: int = 0


class StationClient:
    """Connects one StationModel to a gateway over OCPP and keeps it connected (reconnect with back-off)."""

    def __init__(
        self,
        model: StationModel,
        urls: list[str],
        clock: Clock,
        *,
        meter_interval_s: float = 60.0,
        heartbeat_s: float = 300.0,
        response_timeout_s: float = 10.0,
        reconnect_s: float = 0.5,
    ) -> None:
        self.model, self.urls, self.clock = model, urls, clock
        self.meter_interval_s, self.heartbeat_s = meter_interval_s, heartbeat_s
        self.response_timeout_s, self.reconnect_s = response_timeout_s, reconnect_s
        self.cp: _Handlers16 | _Handlers201 | _Handlers21 | None = None
        self.connected = asyncio.Event()
        self.enabled = True  # False: the station is unplugged from the network (event)
        self.triggered: list[str] = []
        self.reboot_requested = False
        self.stats = ClientStats()
        self.started_at = clock.time()
        self._last_meter = -math.inf
        self._last_heartbeat = clock.time()
        self._task: asyncio.Task[None] | None = None
        self._ws: Any = None
        self._url_index = random.randrange(len(urls)) if urls else 0
        self.profile_log: list[tuple[float, bool, str]] = []
        self.remote_starts: list[dict[str, Any]] = []  # RemoteStart/RequestStartTransaction received

    @property
    def v201(self) -> bool:
        """Speaks OCPP 2.0.1 or 2.1 (2.1 keeps every 2.0.1 message)."""
        return self.model.cfg.ocpp in ("2.0.1", "2.1")

    @property
    def v21(self) -> bool:
        return self.model.cfg.ocpp == "2.1"

    def note_profile(self, ok: bool, why: str) -> None:
        if ok:
            self.stats.profiles_accepted += 1
        else:
            self.stats.profiles_rejected += 1
        self.profile_log.append((self.clock.time(), ok, why))

    def config16(self) -> dict[str, str]:
        q = self.model.quirks
        units = ",".join({"A": "Current", "W": "Power"}[u] for u in q.rate_units)
        return {
            "ChargeProfileMaxStackLevel": str(q.max_stack_level),
            "ChargingScheduleAllowedChargingRateUnit": units,
            "ChargingScheduleMaxPeriods": str(q.max_periods),
            "MaxChargingProfilesInstalled": "10",
            "NumberOfConnectors": str(len(self.model.evses)),
            "SupportedFeatureProfiles": "Core,SmartCharging,RemoteTrigger",
            "MeterValueSampleInterval": str(int(self.meter_interval_s)),
            "HeartbeatInterval": str(int(self.heartbeat_s)),
        }

    def variables201(self) -> dict[tuple[str, str], str]:
        q = self.model.quirks
        return {
            ("SmartChargingCtrlr", "Enabled"): "true",
            ("SmartChargingCtrlr", "Available"): "true",
            ("SmartChargingCtrlr", "ProfileStackLevel"): str(q.max_stack_level),
            ("SmartChargingCtrlr", "RateUnit"): ",".join(q.rate_units),
            ("SmartChargingCtrlr", "PeriodsPerSchedule"): str(q.max_periods),
            ("SmartChargingCtrlr", "EntriesChargingProfiles"): "10",
            ("SmartChargingCtrlr", "LimitChangeSignificance"): "0",
            ("SampledDataCtrlr", "TxUpdatedInterval"): str(int(self.meter_interval_s)),
            ("EVSE", "Count"): str(len(self.model.evses)),
        }

    # -- connection --------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"station-{self.model.station_id}")

    async def stop(self) -> None:
        self.enabled = False
        task = self._task
        while task is not None and not task.done():
            # Python 3.11's asyncio.wait_for (inside the `ocpp` library's call) swallows a cancellation that
            # arrives as the answer does; the task then waits on its open socket for good. Closing the socket
            # ends that wait, and the cancellation is repeated until it is taken.
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
            if not task.done():
                await self._close()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close()

    async def _close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def drop_connection(self) -> None:
        """Quirk/event: the station's link goes down (it reconnects while `enabled`)."""
        await self._close()

    async def _run(self) -> None:
        sub = Subprotocol("ocpp2.1" if self.v21 else "ocpp2.0.1" if self.v201 else "ocpp1.6")
        while True:
            if not self.enabled or not self.urls:
                await asyncio.sleep(self.reconnect_s)
                continue
            url = self.urls[self._url_index % len(self.urls)].rstrip("/") + "/" + self.model.station_id
            try:
                async with websockets.connect(
                    url, subprotocols=[sub], open_timeout=5, ping_interval=None, close_timeout=1
                ) as ws:
                    self._ws = ws
                    cls = _Handlers21 if self.v21 else _Handlers201 if self.v201 else _Handlers16
                    cp = cls(self.model.station_id, ws, response_timeout=self.response_timeout_s)
                    cp.client = self
                    self.cp = cp
                    reader = asyncio.create_task(cp.start())
                    try:
                        await self._on_connected()
                        await reader
                    finally:
                        reader.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await reader
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("station link failed", extra={"station": self.model.station_id, "error": repr(exc)[:200]})
            if self.connected.is_set():
                self.stats.disconnects += 1
            self.connected.clear()
            self.cp, self._ws = None, None
            for e in self.model.evses.values():
                e.needs_sent = False
            self._url_index += 1  # try the next replica
            await asyncio.sleep(self.reconnect_s * (0.5 + random.random()))

    async def _on_connected(self) -> None:
        now = self.clock.time()
        if self.v201:
            await self._call(
                call201.BootNotification(
                    charging_station={"model": "SimStation", "vendor_name": "gridcharge", "firmware_version": "sim-1"},
                    reason="PowerUp",
                )
            )
            for e in self.model.evses.values():
                await self._call(
                    call201.StatusNotification(
                        timestamp=iso_utc(now),
                        connector_status="Occupied" if e.ev else "Available",
                        evse_id=e.evse_id,
                        connector_id=1,
                    )
                )
        else:
            await self._call(
                call16.BootNotification(
                    charge_point_model="SimStation", charge_point_vendor="gridcharge", firmware_version="sim-1"
                )
            )
            for e in self.model.evses.values():
                await self._call(
                    call16.StatusNotification(
                        connector_id=e.evse_id,
                        error_code="NoError",
                        status="Charging" if e.ev else "Available",
                        timestamp=iso_utc(now),
                    )
                )
        self.stats.connects += 1
        self.connected.set()
        for e in self.model.evses.values():  # transactions that started offline
            if e.tx is not None and not e.tx_reported:
                await self._start_tx(e)
        self._last_meter = -math.inf

    async def _call(self, payload: Any) -> Any:
        cp = self.cp
        if cp is None:
            return None
        try:
            return await cp.call(payload)
        except Exception as exc:
            self.stats.calls_failed += 1
            log.debug("call failed", extra={"station": self.model.station_id, "error": repr(exc)[:200]})
            return None

    # -- driven by the simulation ------------------------------------------------------------------
    def plug_in(self, evse_id: int, ev: Ev, now: float) -> None:
        e = self.model.evses[evse_id]
        e.ev = ev
        self.model.local_tx_seq += 1
        e.tx = Transaction(f"{self.model.station_id}-{self.model.local_tx_seq}", evse_id, now)
        e.tx_reported, e.needs_sent, e.seq_no = False, False, 0

    async def tick(self, now: float) -> None:
        """Report what changed: started/ended transactions, charging needs, meter values, heartbeats."""
        if self.reboot_requested:
            self.reboot_requested = False
            self.model.reboot()
            await self._close()
            return
        for e in self.model.evses.values():
            if e.ev is not None and not e.ev.present(now):
                await self._end_tx(e, now)
        if not self.connected.is_set():
            return
        for e in self.model.evses.values():
            if e.tx is not None and not e.tx_reported:
                await self._start_tx(e)
            if self.v201 and e.tx is not None and e.ev is not None and e.ev.announces_needs and not e.needs_sent:
                await self._send_needs(e)
        stale = (
            self.model.quirks.stale_meter_after_s is not None
            and now - self.started_at > self.model.quirks.stale_meter_after_s
        )
        trig = self.triggered
        self.triggered = []
        if (now - self._last_meter >= self.meter_interval_s or "MeterValues" in trig) and not stale:
            self._last_meter = now
            for e in self.model.evses.values():
                if e.tx is not None and e.tx_reported:
                    await self._send_meter(e, now)
        for t in trig:
            if t == "Heartbeat":
                await self._call(call201.Heartbeat() if self.v201 else call16.Heartbeat())
            elif t == "StatusNotification":
                for e in self.model.evses.values():
                    await self._status(e, now)
            elif t.startswith("ReportChargingProfiles:"):
                await self._report_profiles(int(t.split(":")[1]))
            elif t.startswith("NotifyPriorityCharging:"):
                _n, evse, act = t.split(":")
                await self.notify_priority(int(evse), act == "1")
        if now - self._last_heartbeat >= self.heartbeat_s:
            self._last_heartbeat = now
            await self._call(call201.Heartbeat() if self.v201 else call16.Heartbeat())

    async def raw_call(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Send a CALL with a payload already in OCPP JSON (camelCase), unconverted: the `ocpp` library's
        snake→camel conversion cannot spell some 2.1 fields (`limit_L2` becomes `limitL2`). The answer's
        payload, or None on a CALLERROR, timeout or no link."""
        cp = self.cp
        if cp is None:
            return None
        from ocpp.messages import Call, MessageType

        call = Call(unique_id=f"raw{random.getrandbits(32)}", action=action, payload=payload)
        try:
            async with cp._call_lock:
                await cp._send(call.to_json())
                res = await cp._get_specific_response(call.unique_id, self.response_timeout_s)
        except Exception as exc:
            self.stats.calls_failed += 1
            log.debug("raw call failed", extra={"station": self.model.station_id, "error": repr(exc)[:200]})
            return None
        if res.message_type_id != MessageType.CallResult:
            return None
        out: dict[str, Any] = res.payload
        return out

    async def notify_priority(self, evse_id: int, activated: bool) -> bool:
        """2.1: the driver pressed the station's priority button (or UsePriorityCharging was accepted): tell
        the CSMS with NotifyPriorityCharging. False when there is no transaction or no 2.1 link."""
        e = self.model.evses.get(evse_id)
        if not self.v21 or e is None or e.tx is None or not e.tx_reported:
            return False
        e.priority = activated
        r = await self._call(call21.NotifyPriorityCharging(transaction_id=e.tx.transaction_id, activated=activated))
        return r is not None

    async def _status(self, e: EvseState, now: float) -> None:
        if self.v201:
            await self._call(
                call201.StatusNotification(
                    timestamp=iso_utc(now),
                    evse_id=e.evse_id,
                    connector_id=1,
                    connector_status="Occupied" if e.ev else "Available",
                )
            )
        else:
            st = ("Charging" if e.current_a > 0 else "SuspendedEVSE") if e.ev else "Available"
            await self._call(
                call16.StatusNotification(
                    connector_id=e.evse_id, error_code="NoError", status=st, timestamp=iso_utc(now)
                )
            )

    async def _start_tx(self, e: EvseState) -> None:
        assert e.tx is not None
        t = e.tx.started_at
        if self.v201:
            e.seq_no += 1
            r = await self._call(
                call201.TransactionEvent(
                    event_type="Started",
                    timestamp=iso_utc(t),
                    trigger_reason="CablePluggedIn",
                    seq_no=e.seq_no,
                    transaction_info={"transaction_id": e.tx.transaction_id, "charging_state": "EVConnected"},
                    evse={"id": e.evse_id, "connector_id": 1},
                    id_token={"id_token": "SIM" + e.tx.transaction_id[-8:], "type": "Central"},
                    meter_value=[
                        {
                            "timestamp": iso_utc(t),
                            "sampled_value": [
                                {
                                    "value": round(e.register_wh, 1),
                                    "measurand": "Energy.Active.Import.Register",
                                    "context": "Transaction.Begin",
                                }
                            ],
                        }
                    ],
                )
            )
            e.tx_reported = r is not None
            await self._status(e, t)
        else:
            await self._status(e, t)
            r = await self._call(
                call16.StartTransaction(
                    connector_id=e.evse_id, id_tag="SIM", meter_start=int(e.register_wh), timestamp=iso_utc(t)
                )
            )
            if r is not None:
                # 1.6: the CSMS assigns the transaction id; Tx profiles carry it
                tx_id = str(r.transaction_id)
                e.tx = Transaction(tx_id, e.evse_id, t)
                e.tx_reported = True

    async def _send_needs(self, e: EvseState) -> None:
        ev = e.ev
        assert ev is not None
        r = await self._call(
            call201.NotifyEVChargingNeeds(
                evse_id=e.evse_id,
                charging_needs={
                    "requested_energy_transfer": "AC_three_phase" if ev.phases == 3 else "AC_single_phase",
                    "departure_time": iso_utc(ev.departure_s),
                    "ac_charging_parameters": {
                        "energy_amount": int(ev.energy_need_wh),
                        "ev_min_current": int(ev.min_current_a),
                        "ev_max_current": int(ev.max_current_a),
                        "ev_max_voltage": 400,
                    },
                },
            )
        )
        e.needs_sent = r is not None

    async def _end_tx(self, e: EvseState, now: float) -> None:
        tx = e.tx
        e.ev, e.current_a, e.phases_used = None, 0.0, 0
        e.tx = None
        if tx is None:
            return
        self.model.profiles.end_transaction(tx.transaction_id)
        if not e.tx_reported or not self.connected.is_set():
            return  # never reported (or offline): nothing the CSMS could match; a real station would queue
        if self.v201:
            e.seq_no += 1
            await self._call(
                call201.TransactionEvent(
                    event_type="Ended",
                    timestamp=iso_utc(now),
                    trigger_reason="EVDeparted",
                    seq_no=e.seq_no,
                    transaction_info={
                        "transaction_id": tx.transaction_id,
                        "stopped_reason": "EVDisconnected",
                        "charging_state": "Idle",
                    },
                    evse={"id": e.evse_id, "connector_id": 1},
                    meter_value=[
                        {
                            "timestamp": iso_utc(now),
                            "sampled_value": [
                                {
                                    "value": round(e.register_wh, 1),
                                    "measurand": "Energy.Active.Import.Register",
                                    "context": "Transaction.End",
                                }
                            ],
                        }
                    ],
                )
            )
        else:
            tx_id = int(tx.transaction_id) if tx.transaction_id.isdigit() else 0
            await self._call(
                call16.StopTransaction(
                    meter_stop=int(e.register_wh), timestamp=iso_utc(now), transaction_id=tx_id, reason="EVDisconnected"
                )
            )
        e.tx_reported = False
        await self._status(e, now)

    async def _send_meter(self, e: EvseState, now: float) -> None:
        sample = self.model.meter_sample(e)
        assert e.tx is not None
        if self.v201:
            sv: list[dict[str, Any]] = []
            for meas, ph, val, unit in sample:
                d: dict[str, Any] = {
                    "value": val,
                    "measurand": meas,
                    "context": "Sample.Periodic",
                    "unit_of_measure": {"unit": unit},
                }
                if ph:
                    d["phase"] = ph
                if meas == "SoC":
                    d["location"] = "EV"
                sv.append(d)
            e.seq_no += 1
            await self._call(
                call201.TransactionEvent(
                    event_type="Updated",
                    timestamp=iso_utc(now),
                    trigger_reason="MeterValuePeriodic",
                    seq_no=e.seq_no,
                    transaction_info={
                        "transaction_id": e.tx.transaction_id,
                        "charging_state": "Charging" if e.current_a > 0 else "SuspendedEVSE",
                    },
                    evse={"id": e.evse_id, "connector_id": 1},
                    meter_value=[{"timestamp": iso_utc(now), "sampled_value": sv}],
                )
            )
        else:
            sv16: list[dict[str, Any]] = []
            for meas, ph, val, unit in sample:
                d16: dict[str, Any] = {"value": str(val), "measurand": meas, "context": "Sample.Periodic", "unit": unit}
                if ph:
                    d16["phase"] = ph
                if meas == "SoC":
                    d16["location"] = "EV"
                sv16.append(d16)
            tx_id = int(e.tx.transaction_id) if e.tx.transaction_id.isdigit() else None
            await self._call(
                call16.MeterValues(
                    connector_id=e.evse_id,
                    transaction_id=tx_id,
                    meter_value=[{"timestamp": iso_utc(now), "sampled_value": sv16}],
                )
            )

    async def _report_profiles(self, request_id: int) -> None:
        profs = self.model.profiles.profiles
        by_evse: dict[int, list[dict[str, Any]]] = {}
        for p in profs:
            by_evse.setdefault(p.evse_id, []).append(
                {
                    "id": p.profile_id,
                    "stack_level": p.stack_level,
                    "charging_profile_purpose": OCPP201_PURPOSE[p.purpose],
                    "charging_profile_kind": p.kind,
                    "charging_schedule": [
                        {
                            "id": 1,
                            "charging_rate_unit": p.rate_unit,
                            "charging_schedule_period": [
                                {"start_period": per.start_s, "limit": per.limit} for per in p.periods
                            ],
                        }
                    ],
                }
            )
        if not by_evse:  # asked while holding nothing (the answer was Accepted before a reboot): one empty report
            return
        items = list(by_evse.items())
        for i, (evse_id, lst) in enumerate(items):
            await self._call(
                call201.ReportChargingProfiles(
                    request_id=request_id,
                    charging_limit_source="CSO",
                    evse_id=evse_id,
                    charging_profile=lst,
                    tbc=i < len(items) - 1,
                )
            )


class _Handlers21(_Handlers201):
    """CSMS -> station calls for 2.1: the 2.0.1 ones (validated against the 2.1 schemas) plus priority charging."""

    _call = call21
    _call_result = res21
    _ocpp_version = "2.1"

    @on("UsePriorityCharging")
    async def on_use_priority_charging(self, transaction_id: str, activate: bool, **_: Any) -> Any:
        e = next((e for e in self.client.model.evses.values() if e.tx and e.tx.transaction_id == transaction_id), None)
        if e is None:
            return res21.UsePriorityCharging(status="Rejected")
        self.client.triggered.append(f"NotifyPriorityCharging:{e.evse_id}:{int(activate)}")
        return res21.UsePriorityCharging(status="Accepted")


__all__ = ["OCPP16_PURPOSE", "EvseState", "Quirks", "StationClient", "StationModel"]
