"""OCPP 2.0.1 station-initiated messages → bus events. Thin: mapping lives in `core.mapping`."""

from __future__ import annotations

from typing import Any

from gridcharge.gateway.core import limits, mapping
from gridcharge.gateway.core.authorization import id_token_info_201
from gridcharge.gateway.core.errors import Version
from gridcharge.gateway.handlers.base import StationSession
from gridcharge.shared.codec import parse_meter_values
from gridcharge.station.v1 import station_pb2
from ocpp.routing import on
from ocpp.v201.enums import Action

_CHARGING_STATE = {"Charging", "EVConnected", "SuspendedEV", "SuspendedEVSE", "Idle"}


class V201Session(StationSession):
    version = Version.V201

    @on(Action.boot_notification)
    async def on_boot_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        return await self.answer_boot(mapping.boot_201(p, ""))

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
        token = mapping.text(p["idToken"].get("idToken"), 36)
        d = await self.authorize(token, mapping.text(p["idToken"].get("type"), 20))
        ev = self.event()
        ev.authorize.id_token = token
        ev.authorize.status = self.upstream_status("idTokenInfo") or d.status
        await self.publish(ev)
        return {"idTokenInfo": id_token_info_201(d)}

    @on(Action.transaction_event)
    async def on_transaction_event(self, p: dict[str, Any]) -> dict[str, Any]:
        info = p["transactionInfo"]
        tx_id = mapping.text(info.get("transactionId"), 36)
        evse = p.get("evse") or {}
        evse_id = int(evse.get("id", 0))
        seq = int(p["seqNo"])
        kind = p["eventType"]
        # E01.FR.11/12: an idToken in a TransactionEvent is verified and the answer carries its idTokenInfo
        id_token = p.get("idToken")
        answer: dict[str, Any] = {}
        if id_token is not None:
            d = await self.authorize(mapping.text(id_token.get("idToken"), 36), mapping.text(id_token.get("type"), 20))
            answer = {"idTokenInfo": id_token_info_201(d)}
        ev = self.event(mapping.parse_time(p.get("timestamp")))
        if kind == "Started":
            ev.transaction_started.CopyFrom(
                station_pb2.TransactionStarted(
                    transaction_id=tx_id,
                    evse_id=evse_id,
                    connector_id=int(evse.get("connectorId", 0)),
                    id_token=mapping.text((p.get("idToken") or {}).get("idToken"), 36),
                    seq_no=seq,
                )
            )
        elif kind == "Ended":
            ev.transaction_ended.CopyFrom(
                station_pb2.TransactionEnded(
                    transaction_id=tx_id,
                    evse_id=evse_id,
                    reason=mapping.text(info.get("stoppedReason", ""), 32),
                    seq_no=seq,
                )
            )
        else:
            state = info.get("chargingState", "")
            ev.transaction_updated.CopyFrom(
                station_pb2.TransactionUpdated(
                    transaction_id=tx_id,
                    evse_id=evse_id,
                    charging_state=state if state in _CHARGING_STATE else "",
                    seq_no=seq,
                    trigger_reason=mapping.text(p.get("triggerReason"), 32),
                )
            )
        # duplicates (same seqNo) are answered but not published again; gaps are reordered
        if self.sequencer.seen(tx_id, seq):
            return answer
        for mv in mapping.meter_values(
            self.id, self.version, self.ctx.producer, self.ctx.clock.now(), evse_id, tx_id, p.get("meterValue", ())
        ):
            if kind == "Ended" and (stop_wh := parse_meter_values(mv.values).energy_wh) is not None:
                ev.transaction_ended.meter_stop_wh = stop_wh
            await self.ctx.publish_meter(mv)
        for r in self.sequencer.accept(tx_id, seq, ev, ended=kind == "Ended"):
            await self.publish(r)
        return answer

    @on(Action.meter_values)
    async def on_meter_values(self, p: dict[str, Any]) -> dict[str, Any]:
        for mv in mapping.meter_values(
            self.id, self.version, self.ctx.producer, self.ctx.clock.now(), int(p["evseId"]), "", p["meterValue"]
        ):
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
        # the limit binds this station: published as a station-scoped ExternalLimit the allocator respects
        facts = self.ctx.stations.get(self.id)
        if facts is not None:
            lim = limits.station_limit(facts, p, self.ctx.clock.now(), self.ctx.producer)
            if lim is not None:
                await self.ctx.publish_external_limit(lim)
        ev = self.event()
        ev.charging_limit.CopyFrom(mapping.charging_limit(p))
        await self.publish(ev)
        return {}

    @on(Action.cleared_charging_limit)
    async def on_cleared_charging_limit(self, p: dict[str, Any]) -> dict[str, Any]:
        facts = self.ctx.stations.get(self.id)
        if facts is not None:
            for lim in limits.cleared_limits(
                facts, p, self.ctx.evse_ids.get(self.id, []), self.ctx.clock.now(), self.ctx.producer
            ):
                await self.ctx.publish_external_limit(lim)
        await self.notify("ClearedChargingLimit", p)
        return {}

    @on(Action.report_charging_profiles)
    async def on_report_charging_profiles(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.charging_profiles_report.CopyFrom(mapping.profiles_report(p))
        await self.publish(ev)
        self.ctx.on_profiles_report(self, p)  # the answer to our profile check's GetChargingProfiles
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

    # ---- reports and status notifications (published as `notification` events for operators) ------

    @on(Action.notify_event)
    async def on_notify_event(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("NotifyEvent", p)  # N07/N08: always answered, with an empty NotifyEventResponse
        return {}

    @on(Action.notify_report)
    async def on_notify_report(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("NotifyReport", p)
        return {}

    @on(Action.notify_monitoring_report)
    async def on_notify_monitoring_report(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("NotifyMonitoringReport", p)
        return {}

    @on(Action.notify_display_messages)
    async def on_notify_display_messages(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("NotifyDisplayMessages", p)
        return {}

    @on(Action.notify_customer_information)
    async def on_notify_customer_information(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("NotifyCustomerInformation", p)
        return {}

    @on(Action.log_status_notification)
    async def on_log_status_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("LogStatusNotification", p)
        return {}

    @on(Action.firmware_status_notification)
    async def on_firmware_status_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("FirmwareStatusNotification", p)
        return {}

    @on(Action.publish_firmware_status_notification)
    async def on_publish_firmware_status_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("PublishFirmwareStatusNotification", p)
        return {}

    @on(Action.reservation_status_update)
    async def on_reservation_status_update(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("ReservationStatusUpdate", p)
        return {}

    @on(Action.security_event_notification)
    async def on_security_event_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        self.log_security_event(p)
        await self.notify("SecurityEventNotification", p)
        return {}

    # ---- certificates: no certificate authority or OCSP/ISO 15118 backend is connected ---------------

    @on(Action.sign_certificate)
    async def on_sign_certificate(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("SignCertificate", p)  # A02/A03: Rejected, the station keeps its certificate
        return {"status": "Rejected", "statusInfo": {"reasonCode": "NoCA"}}

    @on(Action.get_15118_ev_certificate)
    async def on_get_15118_ev_certificate(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Failed", "exiResponse": "", "statusInfo": {"reasonCode": "NoBackend"}}

    @on(Action.get_certificate_status)
    async def on_get_certificate_status(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Failed", "statusInfo": {"reasonCode": "NoOCSP"}}
