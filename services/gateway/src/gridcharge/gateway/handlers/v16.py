"""OCPP 1.6J station-initiated messages → bus events. Thin: mapping lives in `core.mapping`.

Every message a 1.6 station may send has a handler (core and the security whitepaper's additions), so
none is answered NotSupported.
"""

from __future__ import annotations

from typing import Any

from gridcharge.gateway.core import mapping
from gridcharge.gateway.core.authorization import id_tag_info_16
from gridcharge.gateway.core.errors import Version
from gridcharge.gateway.handlers.base import StationSession
from ocpp.routing import on
from ocpp.v16.enums import Action


class V16Session(StationSession):
    version = Version.V16

    @on(Action.boot_notification)
    async def on_boot_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        return await self.answer_boot(mapping.boot_16(p, ""))

    @on(Action.heartbeat)
    async def on_heartbeat(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.heartbeat.SetInParent()
        await self.publish(ev)
        return {"currentTime": self.now_iso()}

    @on(Action.status_notification)
    async def on_status_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event(mapping.parse_time(p.get("timestamp")))
        ev.status.CopyFrom(mapping.status_16(p))
        await self.publish(ev)
        return {}

    @on(Action.authorize)
    async def on_authorize(self, p: dict[str, Any]) -> dict[str, Any]:
        token = mapping.text(p.get("idTag"), 20)
        d = await self.authorize(token)
        ev = self.event()
        ev.authorize.id_token = token
        ev.authorize.status = self.upstream_status("idTagInfo") or d.status
        await self.publish(ev)
        return {"idTagInfo": id_tag_info_16(d)}

    @on(Action.start_transaction)
    async def on_start_transaction(self, p: dict[str, Any]) -> dict[str, Any]:
        token = mapping.text(p.get("idTag"), 20)
        d = await self.authorize(token)
        tx_id = await self.transaction_id_16()
        ev = self.event(mapping.parse_time(p.get("timestamp")))
        st = ev.transaction_started
        st.transaction_id = str(tx_id)
        st.evse_id = int(p["connectorId"])
        st.connector_id = 1
        st.id_token = token
        st.meter_start_wh = float(p.get("meterStart", 0))
        # published whatever the decision: the station has started the transaction (it stops it itself
        # when the idTag is not Accepted, per its StopTransactionOnInvalidId)
        await self.publish(ev)
        return {"transactionId": tx_id, "idTagInfo": id_tag_info_16(d)}

    @on(Action.stop_transaction)
    async def on_stop_transaction(self, p: dict[str, Any]) -> dict[str, Any]:
        tx_id = str(p["transactionId"])
        now = self.ctx.clock.now()
        for mv in mapping.meter_values(
            self.id, self.version, self.ctx.producer, now, 0, tx_id, p.get("transactionData", ())
        ):
            await self.ctx.publish_meter(mv)
        ev = self.event(mapping.parse_time(p.get("timestamp")))
        ev.transaction_ended.transaction_id = tx_id
        ev.transaction_ended.meter_stop_wh = float(p.get("meterStop", 0))
        ev.transaction_ended.reason = mapping.text(p.get("reason", "Local"), 32)
        await self.publish(ev)
        if "idTag" not in p:
            return {}
        return {"idTagInfo": id_tag_info_16(await self.authorize(mapping.text(p.get("idTag"), 20)))}

    @on(Action.meter_values)
    async def on_meter_values(self, p: dict[str, Any]) -> dict[str, Any]:
        tx = p.get("transactionId")
        for mv in mapping.meter_values(
            self.id,
            self.version,
            self.ctx.producer,
            self.ctx.clock.now(),
            int(p["connectorId"]),
            "" if tx is None else str(tx),
            p["meterValue"],
        ):
            await self.ctx.publish_meter(mv)
        return {}

    @on(Action.data_transfer)
    async def on_data_transfer(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.data_transfer.CopyFrom(mapping.data_transfer(p))
        await self.publish(ev)
        return {"status": "UnknownVendorId"}  # no vendor extensions are implemented; the event is published

    # ---- status reports and security (published as `notification` events for operators) ------------

    @on(Action.diagnostics_status_notification)
    async def on_diagnostics_status_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("DiagnosticsStatusNotification", p)
        return {}

    @on(Action.firmware_status_notification)
    async def on_firmware_status_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("FirmwareStatusNotification", p)
        return {}

    @on(Action.log_status_notification)
    async def on_log_status_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("LogStatusNotification", p)
        return {}

    @on(Action.signed_firmware_status_notification)
    async def on_signed_firmware_status_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        await self.notify("SignedFirmwareStatusNotification", p)
        return {}

    @on(Action.security_event_notification)
    async def on_security_event_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        self.log_security_event(p)
        await self.notify("SecurityEventNotification", p)
        return {}

    @on(Action.sign_certificate)
    async def on_sign_certificate(self, p: dict[str, Any]) -> dict[str, Any]:
        # no certificate authority is connected to sign the CSR: Rejected (the station keeps its certificate)
        await self.notify("SignCertificate", p)
        return {"status": "Rejected"}
