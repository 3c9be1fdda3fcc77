"""OCPP 2.1 station-initiated messages → bus events.

2.1 keeps every 2.0.1 message (boot, heartbeat, status, transactions, meter values, NotifyChargingLimit, ...)
with schemas that only add optional fields, so the 2.0.1 handlers serve it, validated against the 2.1
schemas (`core.schemas`). What 2.1 adds for grid-aware charging:
- NotifyPriorityCharging: the station started/stopped priority charging of a transaction → a
  `priority_charging` event the allocator serves first;
- NotifyChargingLimit's per-phase limits, setpoint-only periods and `isLocalGeneration` (`core.limits`).
Other 2.1-only messages (DER control, batteries, tariffs, periodic event streams) are answered NotSupported.
"""

from __future__ import annotations

from typing import Any

from gridcharge.gateway.core import mapping
from gridcharge.gateway.core.errors import Version
from gridcharge.gateway.handlers.v201 import V201Session
from gridcharge.station.v1 import station_pb2
from ocpp.routing import on
from ocpp.v21.enums import Action


class V21Session(V201Session):
    version = Version.V21

    @on(Action.notify_priority_charging)
    async def on_notify_priority_charging(self, p: dict[str, Any]) -> dict[str, Any]:
        ev = self.event()
        ev.priority_charging.CopyFrom(
            station_pb2.PriorityCharging(
                transaction_id=mapping.text(p.get("transactionId"), 36), activated=p.get("activated") is True
            )
        )
        await self.publish(ev)
        return {}
