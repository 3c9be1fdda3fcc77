"""OCPP 1.6J station-initiated messages → bus events. Thin: mapping lives in `core.mapping`."""

from __future__ import annotations

from typing import Any

from gridcharge.gateway.core import mapping
from gridcharge.gateway.core.errors import Version
from gridcharge.gateway.handlers.base import StationSession
from ocpp.routing import on
from ocpp.v16.enums import Action

ACCEPTED_ID = {"idTagInfo": {"status": "Accepted"}}


class V16Session(StationSession):
    version = Version.V16

    @on(Action.boot_notification)
    async def on_boot_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        self.boot_status = self.ctx.boot_status_for(self.id)
        ev = self.event()
        ev.boot.CopyFrom(mapping.boot_16(p, self.boot_status))
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
        ev.status.CopyFrom(mapping.status_16(p))
        await self.publish(ev)
        return {}

    @on(Action.authorize)
    async def on_authorize(self, p: dict[str, Any]) -> dict[str, Any]:
        # Authorisation policy is not the gateway's job: every token is accepted and reported.
        ev = self.event()
        ev.authorize.id_token = mapping.text(p.get("idTag"), 20)
        ev.authorize.status = "Accepted"
        await self.publish(ev)
        return dict(ACCEPTED_ID)

    @on(Action.start_transaction)
    async def on_start_transaction(self, p: dict[str, Any]) -> dict[str, Any]:
        tx_id = await self.ctx.next_transaction_id()
        ev = self.event(mapping.parse_time(p.get("timestamp")))
        st = ev.transaction_started
        st.transaction_id = str(tx_id)
        st.evse_id = int(p["connectorId"])
        st.connector_id = 1
        st.id_token = mapping.text(p.get("idTag"), 20)
        st.meter_start_wh = float(p.get("meterStart", 0))
        await self.publish(ev)
        return {"transactionId": tx_id, **ACCEPTED_ID}

    @on(Action.stop_transaction)
    async def on_stop_transaction(self, p: dict[str, Any]) -> dict[str, Any]:
        tx_id = str(p["transactionId"])
        now = self.ctx.clock.now()
        for mv in mapping.meter_values(self.id, self.version, self.ctx.producer, now, 0, tx_id,
                                       p.get("transactionData", ())):
            await self.ctx.publish_meter(mv)
        ev = self.event(mapping.parse_time(p.get("timestamp")))
        ev.transaction_ended.transaction_id = tx_id
        ev.transaction_ended.meter_stop_wh = float(p.get("meterStop", 0))
        ev.transaction_ended.reason = mapping.text(p.get("reason", "Local"), 32)
        await self.publish(ev)
        return dict(ACCEPTED_ID) if "idTag" in p else {}

    @on(Action.meter_values)
    async def on_meter_values(self, p: dict[str, Any]) -> dict[str, Any]:
        tx = p.get("transactionId")
        for mv in mapping.meter_values(self.id, self.version, self.ctx.producer, self.ctx.clock.now(),
                                       int(p["connectorId"]), "" if tx is None else str(tx), p["meterValue"]):
            await self.ctx.publish_meter(mv)
        return {}

    @on(Action.data_transfer)
    async def on_data_transfer(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.data_transfer.CopyFrom(mapping.data_transfer(p))
        await self.publish(ev)
        return {"status": "UnknownVendorId"}   # no vendor extensions are implemented; the event is published
