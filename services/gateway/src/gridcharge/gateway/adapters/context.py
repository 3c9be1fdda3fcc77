"""What a station session needs from the running gateway (bus, store, clock, policies, callbacks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gridcharge.gateway.config import GatewaySettings
from gridcharge.shared.bus.base import Bus
from gridcharge.shared.clock import Clock
from gridcharge.shared.contracts import METER_VALUES, STATION_EVENTS
from gridcharge.shared.store.base import Store
from gridcharge.station.v1 import station_pb2

if TYPE_CHECKING:
    from gridcharge.gateway.handlers.base import StationSession


class GatewayContext:
    def __init__(self, settings: GatewaySettings, bus: Bus, store: Store, clock: Clock,
                 known_stations: frozenset[str]) -> None:
        self.settings, self.bus, self.store, self.clock = settings, bus, store, clock
        self.known_stations = known_stations
        self.producer = f"gateway/{settings.replica_id}"
        self.on_boot_accepted: Callable[[StationSession], None] = lambda s: None

    def is_known(self, station_id: str) -> bool:
        return station_id in self.known_stations

    def boot_status_for(self, station_id: str) -> str:
        """Accepted for known stations; unknown ones per `unknown_stations` (reject = never got here)."""
        if self.is_known(station_id) or self.settings.unknown_stations == "accept":
            return "Accepted"
        return "Pending" if self.settings.unknown_stations == "pending" else "Rejected"

    async def publish_event(self, ev: station_pb2.StationEvent) -> None:
        await self.bus.publish(STATION_EVENTS.name, ev.station_id, ev.SerializeToString())

    async def publish_meter(self, mv: station_pb2.MeterValues) -> None:
        await self.bus.publish(METER_VALUES.name, mv.station_id, mv.SerializeToString())

    async def next_transaction_id(self) -> int:
        """1.6 transactionId: unique across replicas (a counter in the store), fits a 32-bit int."""
        return (await self.store.incr("gw:txid")) % 2_147_483_647 or 1
