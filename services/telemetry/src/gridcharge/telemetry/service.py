"""The telemetry service: core + runtime (faust on Kafka, else the bus) + publisher + HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from fastapi import APIRouter
from gridcharge.shared import contracts as C
from gridcharge.shared.bus.base import Outgoing
from gridcharge.shared.leader import LeaderLease
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.topology import Topology
from gridcharge.telemetry.adapters.bus_runtime import BusRuntime
from gridcharge.telemetry.adapters.engine import Engine
from gridcharge.telemetry.adapters.http import build_router
from gridcharge.telemetry.adapters.metrics import TelemetryMetrics
from gridcharge.telemetry.core import NodeLoadView, Outcome, TelemetryCore
from gridcharge.telemetry.settings import TelemetrySettings

if TYPE_CHECKING:
    from gridcharge.telemetry.adapters.faust_runtime import FaustRuntime

log = logging.getLogger(__name__)


class TelemetryService:
    """Consumes station and grid data, publishes NodeLoad every `telemetry_snapshot_s` and 15-min history."""

    name = "telemetry"

    def __init__(self, rt: Runtime, topology: Topology, settings: TelemetrySettings) -> None:
        self.rt, self.topology, self.settings = rt, topology, settings
        self.producer = f"telemetry/{settings.replica_id}"
        self.metrics = TelemetryMetrics()
        self.core = TelemetryCore(topology, settings.core_config())
        self.engine = Engine(self.core, self.metrics, self.producer)
        self.mode = (
            "faust"
            if settings.telemetry_runtime == "faust"
            or (settings.telemetry_runtime == "auto" and settings.bus == "kafka")
            else "bus"
        )
        self.runtime: BusRuntime | FaustRuntime | None = None
        self.lease: LeaderLease | None = None
        if settings.bus == "kafka":  # several replicas possible: one active consumer (see _lease_loop)
            self.lease = LeaderLease(
                rt.store, rt.clock, settings.replica_id, settings.telemetry_lease_ttl_s, key="telemetry:leader"
            )
        self.latest: dict[str, NodeLoadView] = {}
        self._fast_pending: set[str] = set()
        self._fast_last = -1e18  # last fast computation
        self._fast_last_big = -1e18  # last one for a big move (see _after_record)
        self._fast_big = False  # a big move is pending
        self._fast_due = -1e18  # when the scheduled fast computation runs
        self._fast_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._starting: asyncio.Task[None] | None = None
        self._router = build_router(
            rt.bus, rt.clock, set(topology.node_by_id), self.producer, lambda: self.latest, lambda: self.core
        )

    @property
    def routers(self) -> list[APIRouter]:
        return [self._router]

    @property
    def ready(self) -> bool:
        """Consuming and recovered (the active worker), i.e. NodeLoad is being published."""
        return self.runtime is not None and self.runtime.ready

    @property
    def standby(self) -> bool:
        return self.lease is not None and not self.lease.is_leader

    async def start(self) -> None:
        if self.lease is None:
            self.runtime = BusRuntime(self.rt, self.engine, self.settings.telemetry_group, self._after_record)
            await self.runtime.start()
        else:
            self._tasks.append(asyncio.create_task(self._lease_loop(), name="telemetry-lease"))
        # a standby replica is healthy and ready to take over; the active one once its state is recovered
        self.rt.health.add("telemetry", lambda: self.ready or self.standby)
        self._tasks.append(asyncio.create_task(self._publish_loop(), name="telemetry-publish"))
        log.info(
            "telemetry started",
            extra={"runtime": self.mode, "nodes": len(self.topology.nodes), "stations": len(self.topology.stations)},
        )

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        await self._cancel_start()
        await self._stop_worker()
        if self.lease is not None:
            await self.lease.release()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait (real time) until this replica is the active, recovered worker."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.ready:
            if loop.time() > deadline:
                raise TimeoutError("telemetry did not become the active, recovered worker")
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ active/standby (on Kafka)
    async def _lease_loop(self) -> None:
        """Renew the lease every TTL/3 — never blocked by starting the worker (that runs as its own
        task), or the lease could lapse during a slow start and a second replica join the group."""
        assert self.lease is not None
        confirmed = False
        while True:
            leader = await self.lease.renew()
            starting = self._starting
            if leader and self.runtime is None and (starting is None or starting.done()):
                # two replicas racing for a free lease can both read it back as theirs only in a narrow
                # window: join the consumer group only on the second consecutive successful renewal
                if confirmed:
                    self._starting = asyncio.create_task(self._start_worker(), name="telemetry-worker-start")
                confirmed = True
            elif not leader:
                confirmed = False
                await self._cancel_start()
                if self.runtime is not None:
                    log.warning("telemetry lost its lease; stopping the worker")
                    await self._stop_worker()
            await self.rt.clock.sleep(self.lease.renew_every_s)

    async def _cancel_start(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting

    async def _start_worker(self) -> None:
        # a fresh core each term: the changelog is the state, not what this replica saw before
        self.core = TelemetryCore(self.topology, self.settings.core_config())
        self.engine = Engine(self.core, self.metrics, self.producer)
        runtime: BusRuntime | FaustRuntime
        if self.mode == "faust":
            from gridcharge.telemetry.adapters.faust_runtime import FaustRuntime

            runtime = FaustRuntime(self.rt, self.engine, self.settings, self._after_record)
        else:  # bus adapter on Kafka (GRIDCHARGE_TELEMETRY_RUNTIME=bus): state in memory only
            runtime = BusRuntime(self.rt, self.engine, self.settings.telemetry_group, self._after_record)
        self.runtime = runtime
        try:
            await runtime.start()
        except asyncio.CancelledError:
            await self._stop_worker()
            raise
        except Exception:
            log.exception("faust worker failed to start; retrying on the next lease renewal")
            await self._stop_worker()

    async def _stop_worker(self) -> None:
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            await runtime.stop()

    async def _publish_loop(self) -> None:
        period = self.settings.telemetry_snapshot_s
        while True:
            now = self.rt.clock.time()
            await self.rt.clock.sleep(period - (now % period) if period > 0 else 1.0)
            if not self.ready:
                continue  # state not recovered yet: publishing would understate the load
            try:
                await self.publish_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("telemetry publish failed; retrying next period")

    async def _after_record(self, topic: str, key: str, outcome: Outcome | None) -> None:
        """Fast path for the limiter: a grid-meter reading that moves its node's load by
        `telemetry_fast_delta` of the limit or across the limit (a big move), or that moves it by
        `telemetry_fast_near_delta` above `telemetry_fast_above` of it, is published at once (with the node's
        ancestors) instead of waiting up to one snapshot period. A full computation runs at most every
        `telemetry_fast_min_interval_s`, nodes that turn urgent meanwhile are batched — but a big move waits
        only for the last computation made for a big move: meters that sit near their limit and report every
        second do not hold back the one that jumps."""
        if topic != C.GRID_METER_READINGS.name or outcome is not Outcome.OK or not self.ready:
            return
        if key not in self.topology.node_by_id:
            return
        now = self.rt.clock.time()
        meter = self.core.meter_for(key, now)
        if meter is None:
            return
        limit = self.topology.limit_w(key)
        prev = self.latest.get(key)
        s = self.settings
        big = prev is None or any(
            abs(p - q) > s.telemetry_fast_delta * lim or (p > lim) != (q > lim)
            for p, q, lim in zip(meter.power_w, prev.load_w, limit, strict=True)
        )
        near = (
            any(
                p > s.telemetry_fast_above * lim and abs(p - q) > s.telemetry_fast_near_delta * lim
                for p, q, lim in zip(meter.power_w, prev.load_w, limit, strict=True)
            )
            if prev
            else False
        )
        if not big and not near:
            return
        self._fast_pending.add(key)
        self._fast_big = self._fast_big or big
        wait = (self._fast_last_big if big else self._fast_last) + s.telemetry_fast_min_interval_s - now
        if wait <= 0:
            await self._fast_flush()
        elif self._fast_task is None or self._fast_task.done() or self._fast_due > now + wait + 1e-6:
            self._fast_due = now + wait  # a big move does not wait for a later near one's task
            self._fast_task = asyncio.create_task(self._fast_flush(now + wait), name="telemetry-fast")
            self._tasks.append(self._fast_task)
            self._tasks = [t for t in self._tasks if not t.done() or t is self._fast_task]

    async def _fast_flush(self, due_s: float | None = None) -> None:
        if due_s is not None and due_s > self.rt.clock.time():
            await self.rt.clock.sleep(due_s - self.rt.clock.time())
        pending, self._fast_pending = self._fast_pending, set()
        big, self._fast_big = self._fast_big, False
        if not pending or not self.ready:
            return
        now = self.rt.clock.time()
        self._fast_last = now
        if big:
            self._fast_last_big = now
        views = self.core.node_loads(now)
        self.latest = {**self.latest, **views}
        nodes = list(dict.fromkeys(a for nid in sorted(pending) for a in self.topology.ancestors(nid)))
        await self._send(self.engine.node_load_records(views, nodes))

    async def _send(self, records: list[Outgoing]) -> None:
        """Publish in one batch (one broker round trip, not one per node), then mirror NodeLoad in the store."""
        await self.rt.bus.publish_many(records)
        ttl_s = max(self.settings.telemetry_nodeload_ttl_s, 3 * self.settings.telemetry_snapshot_s)
        for r in records:
            if r.topic == C.NODE_LOAD.name:
                await self.rt.store.set(f"nodeload:{r.key}", r.value, ttl_s=ttl_s)

    async def publish_once(self) -> dict[str, NodeLoadView]:
        """Compute node loads now and publish them (bus + store) with any closed history interval."""
        now = self.rt.clock.time()
        views, out = self.engine.snapshot(now)
        self.latest = views
        await self._send(out)
        return views
