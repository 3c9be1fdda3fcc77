"""What a station session needs from the running gateway (bus, store, clock, policies, callbacks)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gridcharge.gateway.adapters.authorization import AcceptAll, Authorizer
from gridcharge.gateway.adapters.metrics import BOOTS
from gridcharge.gateway.config import GatewaySettings
from gridcharge.gateway.core.boot import BootDecision, PendingReason, Registration, decide_boot
from gridcharge.gateway.core.errors import safe
from gridcharge.gateway.core.limits import StationFacts, record_key
from gridcharge.gateway.core.ratelimit import BucketTable
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.bus.base import Bus
from gridcharge.shared.clock import Clock
from gridcharge.shared.contracts import EXTERNAL_LIMITS, METER_VALUES, STATION_EVENTS
from gridcharge.shared.store.base import Store
from gridcharge.station.v1 import station_pb2

if TYPE_CHECKING:
    from gridcharge.gateway.adapters.registry import Registry
    from gridcharge.gateway.handlers.base import StationSession

log = logging.getLogger(__name__)


class GatewayContext:
    def __init__(
        self,
        settings: GatewaySettings,
        bus: Bus,
        store: Store,
        clock: Clock,
        known_stations: frozenset[str],
        registry: Registry | None = None,
        authorizer: Authorizer | None = None,
        stations: dict[str, StationFacts] | None = None,
        evse_ids: dict[str, list[int]] | None = None,
    ) -> None:
        self.settings, self.bus, self.store, self.clock = settings, bus, store, clock
        self.known_stations = known_stations
        self.registry = registry
        self.authorizer: Authorizer = authorizer or AcceptAll()
        self.stations = stations or {}  # topology facts of known stations (node, phases, voltage)
        self.evse_ids = evse_ids or {}
        self.producer = f"gateway/{settings.replica_id}"
        self.on_boot_accepted: Callable[[StationSession], None] = lambda s: None
        self.on_unregistered_call: Callable[[StationSession], None] = lambda s: None
        # profile check (adapters.profile_check): reports collected, events observed
        self.on_profiles_report: Callable[[StationSession, dict[str, Any]], None] = lambda s, p: None
        self.event_observer: Callable[[station_pb2.StationEvent], None] = lambda ev: None
        # rate buckets outlive connections (a reconnect must not refill them); per replica, in process
        self.station_buckets: BucketTable[str] = BucketTable(settings.rate_limit_per_s, settings.rate_burst)
        self.ip_buckets: BucketTable[str] = BucketTable(settings.ip_rate_limit_per_s, settings.ip_rate_burst)

    def is_known(self, station_id: str) -> bool:
        return station_id in self.known_stations

    # ---- registration -----------------------------------------------------------------------------

    async def _bounded(self, coro: object) -> object:
        return await asyncio.wait_for(coro, self.settings.cluster_timeout_s)  # type: ignore[arg-type]

    async def register_boot(self, sess: StationSession, boot: station_pb2.Boot) -> BootDecision:
        """Decide a BootNotification, record it for the station and publish the `boot` event.

        Accepted needs the cluster: the boot recorded in the store and the event acknowledged by the bus,
        each within `cluster_timeout_s`. Otherwise the station is answered Pending with the pending
        interval and retries (B02): better than an InternalError, and the retry is Accepted once both work.
        """
        st = self.settings
        sid = sess.id
        now = self.clock.time()
        provisioning = st.is_pending_station(sid) and (self.is_known(sid) or st.unknown_stations == "accept")
        not_ready = BootDecision(Registration.PENDING, PendingReason.NOT_READY, st.pending_interval_s)
        try:
            since = None
            if provisioning and self.registry is not None:
                since = await self._bounded(
                    self.registry.pending_since(sid, now, st.pending_hold_s + 10 * st.pending_interval_s)
                )
            d = decide_boot(
                known=self.is_known(sid),
                unknown_policy=st.unknown_stations,
                provisioning=provisioning,
                pending_since=since if isinstance(since, float) else None,
                now=now,
                hold_s=st.pending_hold_s,
                heartbeat_interval_s=st.heartbeat_interval_s,
                pending_interval_s=st.pending_interval_s,
            )
            if self.registry is not None:
                await self._bounded(self.registry.set_boot_state(sid, d.status, st.boot_state_ttl_s))
                if provisioning and d.status is Registration.ACCEPTED:
                    await self._bounded(self.registry.clear_pending(sid))  # the next boot is held again
        except Exception as exc:
            log.warning(
                "boot answered Pending: store not available", extra={"station": safe(sid, 48), "error": repr(exc)[:200]}
            )
            d = not_ready
        boot.registration_status = d.status.value
        ev = sess.event()
        ev.boot.CopyFrom(boot)
        try:
            await self._bounded(self.publish_event(ev))
        except Exception as exc:
            if d.status is Registration.ACCEPTED:
                log.warning(
                    "boot answered Pending: bus not available",
                    extra={"station": safe(sid, 48), "error": repr(exc)[:200]},
                )
                d = not_ready
                if self.registry is not None:
                    try:
                        await self._bounded(self.registry.set_boot_state(sid, d.status, st.boot_state_ttl_s))
                    except Exception:
                        pass
            else:
                log.warning("boot event not published", extra={"station": safe(sid, 48)})
        BOOTS.labels(status=d.status.value.lower(), reason=d.reason.value).inc()
        return d

    async def restore_registration(self, station_id: str) -> Registration:
        """A new connection's registration: the station's last boot status (any replica), refreshed so it
        lasts `boot_state_ttl_s` from now. NONE when unknown or the store does not answer."""
        if self.registry is None:
            return Registration.NONE
        try:
            status = await self._bounded(self.registry.boot_state(station_id))
            assert isinstance(status, Registration)
            if status is not Registration.NONE:
                await self._bounded(self.registry.set_boot_state(station_id, status, self.settings.boot_state_ttl_s))
            return status
        except Exception:
            log.warning("boot state not readable; the station must boot", extra={"station": safe(station_id, 48)})
            return Registration.NONE

    async def touch_registration(self, sess: StationSession) -> None:
        """Keep the boot status `boot_state_ttl_s` beyond the last contact (on disconnect, and now and then on
        a long-lived connection); only by the connection that owns the station, so a stale socket cannot
        overwrite a newer boot made elsewhere."""
        if self.registry is None or sess.boot_status is Registration.NONE or not sess.epoch:
            return
        try:
            if await self._bounded(self.registry.is_owner(sess.id, sess.epoch)):
                await self._bounded(
                    self.registry.set_boot_state(sess.id, sess.boot_status, self.settings.boot_state_ttl_s)
                )
        except Exception:
            pass

    # ---- bus ----------------------------------------------------------------------------------------

    async def publish_event(self, ev: station_pb2.StationEvent) -> None:
        self.event_observer(ev)
        await self.bus.publish(STATION_EVENTS.name, ev.station_id, ev.SerializeToString())

    async def publish_meter(self, mv: station_pb2.MeterValues) -> None:
        await self.bus.publish(METER_VALUES.name, mv.station_id, mv.SerializeToString())

    async def publish_external_limit(self, msg: grid_pb2.ExternalLimit) -> None:
        await self.bus.publish(EXTERNAL_LIMITS.name, record_key(msg), msg.SerializeToString())

    async def next_transaction_id(self) -> int:
        """1.6 transactionId: unique across replicas (a counter in the store), fits a 32-bit int."""
        return (await self.store.incr("gw:txid")) % 2_147_483_647 or 1
