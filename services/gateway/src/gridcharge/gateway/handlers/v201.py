"""OCPP 2.0.1 station-initiated messages → bus events. Thin: mapping lives in `core.mapping`."""

from __future__ import annotations

from typing import Any

from gridcharge.gateway.core import mapping
from gridcharge.gateway.core.errors import Version
from gridcharge.gateway.handlers.base import StationSession
from gridcharge.station.v1 import station_pb2
from ocpp.routing import on
from ocpp.v201.enums import Action

_CHARGING_STATE = {"Charging", "EVConnected", "SuspendedEV", "SuspendedEVSE", "Idle"}


class V201Session(StationSession):
    version = Version.V201

    @on(Action.boot_notification)
    async def on_boot_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        self.boot_status = self.ctx.boot_status_for(self.id)
        ev = self.event()
        ev.boot.CopyFrom(mapping.boot_201(p, self.boot_status))
        await self.publish(ev)
        return {"status": self.boot_status, "currentTime": self.now_iso(),
                "interval": self.ctx.settings.heartbeat_interval_s}

    def after_BootNotification(self) -> None:
        if self.boot_status == "Accepted":
            self.ctx.on_boot_accepted(self)

    @on(Action.heartbeat)
    async def on_heartbeat(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.heartbeat.SetInParent()
        await self.publish(ev)
        return {"currentTime": self.now_iso()}

    @on(Action.status_notification)
    async def on_status_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event(mapping.parse_time(p.get("timestamp")))
        ev.status.CopyFrom(mapping.status_201(p))
        await self.publish(ev)
        return {}

    @on(Action.authorize)
    async def on_authorize(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.authorize.id_token = mapping.text(p["idToken"].get("idToken"), 36)
        ev.authorize.status = "Accepted"
        await self.publish(ev)
        return {"idTokenInfo": {"status": "Accepted"}}

    @on(Action.transaction_event)
    async def on_transaction_event(self, p: dict[str, Any]) -> dict[str, Any]:
        info = p["transactionInfo"]
        tx_id = mapping.text(info.get("transactionId"), 36)
        evse = p.get("evse") or {}
        evse_id = int(evse.get("id", 0))
        seq = int(p["seqNo"])
        kind = p["eventType"]
        ev = self.event(mapping.parse_time(p.get("timestamp")))
        if kind == "Started":
            ev.transaction_started.CopyFrom(station_pb2.TransactionStarted(
                transaction_id=tx_id, evse_id=evse_id, connector_id=int(evse.get("connectorId", 0)),
                id_token=mapping.text((p.get("idToken") or {}).get("idToken"), 36), seq_no=seq))
        elif kind == "Ended":
            ev.transaction_ended.CopyFrom(station_pb2.TransactionEnded(
                transaction_id=tx_id, evse_id=evse_id, reason=mapping.text(info.get("stoppedReason", ""), 32),
                seq_no=seq))
        else:
            state = info.get("chargingState", "")
            ev.transaction_updated.CopyFrom(station_pb2.TransactionUpdated(
                transaction_id=tx_id, evse_id=evse_id, charging_state=state if state in _CHARGING_STATE else "",
                seq_no=seq, trigger_reason=mapping.text(p.get("triggerReason"), 32)))
        # duplicates (same seqNo) are answered but not published again; gaps are reordered
        if self.sequencer.seen(tx_id, seq):
            return {}
        for mv in mapping.meter_values(self.id, self.version, self.ctx.producer, self.ctx.clock.now(), evse_id,
                                       tx_id, p.get("meterValue", ())):
            if kind == "Ended":
                for v in mv.values:
                    if v.measurand == "Energy.Active.Import.Register" and not v.phase:
                        ev.transaction_ended.meter_stop_wh = v.value
            await self.ctx.publish_meter(mv)
        for r in self.sequencer.accept(tx_id, seq, ev, ended=kind == "Ended"):
            await self.publish(r)
        return {}

    @on(Action.meter_values)
    async def on_meter_values(self, p: dict[str, Any]) -> dict[str, Any]:
        for mv in mapping.meter_values(self.id, self.version, self.ctx.producer, self.ctx.clock.now(),
                                       int(p["evseId"]), "", p["meterValue"]):
            await self.ctx.publish_meter(mv)
        return {}

    @on(Action.notify_ev_charging_needs)
    async def on_notify_ev_charging_needs(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.charging_needs.CopyFrom(mapping.charging_needs(p))
        await self.publish(ev)
        return {"status": "Accepted"}

    @on(Action.notify_charging_limit)
    async def on_notify_charging_limit(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.charging_limit.CopyFrom(mapping.charging_limit(p))
        await self.publish(ev)
        return {}

    @on(Action.report_charging_profiles)
    async def on_report_charging_profiles(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.charging_profiles_report.CopyFrom(mapping.profiles_report(p))
        await self.publish(ev)
        return {}

    @on(Action.notify_ev_charging_schedule)
    async def on_notify_ev_charging_schedule(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.ev_charging_schedule.CopyFrom(mapping.ev_schedule(p))
        await self.publish(ev)
        return {"status": "Accepted"}

    @on(Action.data_transfer)
    async def on_data_transfer(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.data_transfer.CopyFrom(mapping.data_transfer(p))
        await self.publish(ev)
        return {"status": "UnknownVendorId"}
