"""The grid-signals service: an OpenADR 3 VEN polling its VTN and keeping ExternalLimits on the bus.

Every ``poll_s`` (injected clock): fetch the followed programs and their events, turn the capacity-limit
intervals into ExternalLimits (``gridcharge.grid.external-limits.v1``, key ``node_id/limit_id``, source
``openadr``), publish them all again (the heartbeat the consumers' ``stale_after_s`` watches) and withdraw the
ones whose event is gone. When a poll fails the last known limits stay; once the VTN has been unreachable for
``fallback_after_s`` the configured fallback of each node is published as a limit of its own until the VTN
answers again. PRICE intervals become PriceSignals (``gridcharge.grid.prices.v1``, key ``node_id/price_id``),
published when they change and withdrawn when their event is gone; they have no fallback (a known price stays
the price while the VTN is unreachable). Usage: node load (``gridcharge.grid.node-load.v1``) averaged per report
period and posted as a report to every event that asks for USAGE/DEMAND.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import APIRouter
from gridcharge.grid.v1 import grid_pb2
from gridcharge.gridsignals.adapters import metrics as M
from gridcharge.gridsignals.adapters.codec import (
    external_limit,
    node_load_sample,
    price_record_key,
    price_signal,
    record_key,
)
from gridcharge.gridsignals.adapters.vtn import VtnError
from gridcharge.gridsignals.core.limits import LimitSpec, NodeMap, event_limits, fallback_limits, reconcile
from gridcharge.gridsignals.core.link import Transition, VtnLink
from gridcharge.gridsignals.core.oadr import P3, EventError, ParsedEvent, parse_event
from gridcharge.gridsignals.core.prices import PriceSpec, event_prices, reconcile_prices
from gridcharge.gridsignals.core.usage import UsageAccumulator, usage_report
from gridcharge.shared import contracts
from gridcharge.shared.bus.base import Record, Subscription
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.topology import Topology

log = logging.getLogger(__name__)


class Vtn(Protocol):
    """What the service needs of a VTN (the httpx adapter; tests may pass another)."""

    async def programs(self) -> list[dict[str, Any]]: ...

    async def events(self, program_id: str) -> list[dict[str, Any]]: ...

    async def post_report(self, report: dict[str, Any]) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class VenOptions:
    """What to follow and how: ``programs`` empty = every program the VEN may see; times in s."""

    node_map: NodeMap
    fallback_w: Mapping[str, P3] = field(default_factory=dict)
    programs: frozenset[str] = frozenset()
    ven_name: str = "gridcharge"
    poll_s: float = 60.0
    fallback_after_s: float = 900.0
    report_s: float = 900.0


@dataclass(frozen=True)
class KnownEvent:
    event: ParsedEvent
    program_name: str


class GridSignalsService:
    """OpenADR VEN → ExternalLimits; usage → VTN reports."""

    name = "gridsignals"

    def __init__(self, rt: Runtime, topology: Topology, vtn: Vtn, options: VenOptions) -> None:
        self.rt, self.topology, self.vtn, self.options = rt, topology, vtn, options
        self.producer = f"gridsignals/{rt.settings.replica_id}"
        self.link = VtnLink(options.fallback_after_s, rt.clock.time())
        self.events: dict[str, KnownEvent] = {}
        self.published: dict[tuple[str, str], LimitSpec] = {}
        self.published_prices: dict[tuple[str, str], PriceSpec] = {}
        self.usage = UsageAccumulator()
        self.last_report_at = rt.clock.time()
        self._seen: set[tuple[str, str]] = set()
        self._subs: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def routers(self) -> list[APIRouter]:
        return []

    async def start(self) -> None:
        group = f"gridsignals-{self.rt.settings.replica_id}-{uuid.uuid4().hex[:8]}"
        self._subs.append(
            await self.rt.bus.subscribe([contracts.NODE_LOAD.name], group, self.on_node_load, from_beginning=False)
        )
        M.VTN_UP.set(0)
        M.FALLBACK_ACTIVE.set(0)
        M.VTN_UNREACHABLE_S.set_function(lambda: self.link.unreachable_for_s(self.rt.clock.time()))
        self.rt.health.add("openadr-ven", lambda: self._task is not None and not self._task.done())
        self._task = asyncio.create_task(self._loop(), name="gridsignals-ven")
        log.info(
            "OpenADR VEN started",
            extra={
                "poll_s": self.options.poll_s,
                "fallback_after_s": self.options.fallback_after_s,
                "programs": sorted(self.options.programs) or "all",
            },
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.stop()
        with contextlib.suppress(Exception):
            await self.vtn.aclose()

    async def on_node_load(self, record: Record) -> None:
        msg = contracts.decode(grid_pb2.NodeLoad, record.value)
        sample = node_load_sample(msg)
        if sample is not None:
            self.usage.add(*sample)

    # -- the poll -----------------------------------------------------------------------------------
    async def fetch(self) -> dict[str, KnownEvent]:
        """Every event of the followed programs, parsed; unusable events are counted and skipped."""
        out: dict[str, KnownEvent] = {}
        for program in await self.vtn.programs():
            pid, pname = program.get("id"), program.get("programName")
            if not isinstance(pid, str) or not isinstance(pname, str):
                continue
            if self.options.programs and pname not in self.options.programs:
                continue
            for raw in await self.vtn.events(pid):
                seen = (str(raw.get("id"))[:128], str(raw.get("modificationDateTime"))[:64])
                first = seen not in self._seen
                try:
                    ev = parse_event(raw)
                except EventError as exc:
                    if first:
                        M.EVENTS.labels(outcome="invalid").inc()
                        log.warning(
                            "OpenADR event ignored",
                            extra={"event_id": seen[0], "program": pname, "error": str(exc)[:200]},
                        )
                        self._seen.add(seen)
                    continue
                out[ev.event_id] = KnownEvent(ev, pname)
                if first:
                    self._seen.add(seen)
                    self._count(ev, pname)
        if len(self._seen) > 10_000:
            self._seen = set()
        return out

    def _count(self, ev: ParsedEvent, program_name: str) -> None:
        if ev.prices:
            M.EVENTS.labels(outcome="price").inc()
            tariff_currency = self.topology.tariff.currency
            if ev.currency and ev.currency != tariff_currency:
                log.warning(
                    "OpenADR prices in %s, the topology's tariff is in %s: the allocator will not plan with them",
                    ev.currency,
                    tariff_currency,
                    extra={"event_id": ev.event_id, "program": program_name},
                )
        elif ev.has_price:
            M.EVENTS.labels(outcome="export_price").inc()
            log.info(
                "OpenADR EXPORT_PRICE ignored: gridcharge does not feed energy back",
                extra={"event_id": ev.event_id, "program": program_name},
            )
        if not ev.limits:
            if not ev.has_price:
                M.EVENTS.labels(outcome="no_limit").inc()
        elif not self.options.node_map.nodes_for(ev.targets, program_name):
            M.EVENTS.labels(outcome="unmapped").inc()
            log.warning(
                "OpenADR capacity limit for no configured node (GRIDCHARGE_OPENADR_NODE_MAP)",
                extra={"event_id": ev.event_id, "program": program_name, "targets": list(ev.targets)},
            )
        else:
            M.EVENTS.labels(outcome="limit").inc()

    async def poll_once(self) -> None:
        """One cycle: fetch (or fail), update the link state, put the resulting limits on the bus."""
        try:
            events = await self.fetch()
        except VtnError as exc:
            M.REQUESTS.labels(kind="poll", outcome="error").inc()
            self._log(self.link.failure(self.rt.clock.time(), str(exc)))
        else:
            M.REQUESTS.labels(kind="poll", outcome="ok").inc()
            self.events = events
            now = self.rt.clock.time()
            self._log(self.link.success(now))
            M.VTN_LAST_SUCCESS.set(now)
        M.VTN_UP.set(1 if self.link.state == "up" else 0)
        M.FALLBACK_ACTIVE.set(1 if self.link.in_fallback else 0)
        await self.publish_limits()
        await self.publish_prices()

    def desired_limits(self, now: float) -> list[LimitSpec]:
        o = self.options
        out = [
            spec
            for k in self.events.values()
            for spec in event_limits(k.event, k.program_name, o.node_map, o.fallback_w, o.fallback_after_s, now)
        ]
        if self.link.in_fallback:
            out.extend(fallback_limits(o.fallback_w, self.link.last_success_at or self.link.started_at))
        return out

    async def publish_limits(self) -> None:
        now = self.rt.clock.time()
        changes = reconcile(self.published, self.desired_limits(now), now, heartbeat=self.link.state == "up")
        for spec in changes.publish:
            msg = external_limit(spec, self.producer, now)
            await self.rt.bus.publish(contracts.EXTERNAL_LIMITS.name, record_key(spec), msg.SerializeToString())
            if self.published.get(spec.key) != spec:
                M.LIMIT_UPDATES.labels(action="set").inc()
                log.info(
                    "OpenADR limit set",
                    extra={
                        "node": spec.node_id,
                        "limit_id": spec.limit_id,
                        "limit_w": list(spec.limit_w),
                        "valid_from": _iso(spec.valid_from),
                        "valid_to": _iso(spec.valid_to),
                    },
                )
            self.published[spec.key] = spec
        for spec in changes.withdraw:
            msg = external_limit(spec, self.producer, now)
            await self.rt.bus.publish(contracts.EXTERNAL_LIMITS.name, record_key(spec), msg.SerializeToString())
            M.LIMIT_UPDATES.labels(action="withdraw").inc()
            log.info("OpenADR limit withdrawn", extra={"node": spec.node_id, "limit_id": spec.limit_id})
            del self.published[spec.key]
        M.LIMITS_ACTIVE.set(len(self.published))

    def desired_prices(self, now: float) -> list[PriceSpec]:
        return [
            spec
            for k in self.events.values()
            for spec in event_prices(k.event, k.program_name, self.options.node_map, now)
        ]

    async def publish_prices(self) -> None:
        """Prices that are new or changed go on the bus; prices of events that are gone are withdrawn. No
        heartbeat: consumers keep a price until its intervals end."""
        now = self.rt.clock.time()
        changes = reconcile_prices(self.published_prices, self.desired_prices(now))
        for spec in changes.publish:
            msg = price_signal(spec, self.producer, now)
            await self.rt.bus.publish(contracts.PRICES.name, price_record_key(spec), msg.SerializeToString())
            M.PRICE_UPDATES.labels(action="set").inc()
            log.info(
                "OpenADR prices set",
                extra={
                    "node": spec.node_id or "site",
                    "price_id": spec.price_id,
                    "currency": spec.currency,
                    "intervals": len(spec.intervals),
                    "from": _iso(spec.intervals[0].start),
                    "to": _iso(spec.intervals[-1].end),
                },
            )
            self.published_prices[spec.key] = spec
        for spec in changes.withdraw:
            msg = price_signal(spec, self.producer, now)
            await self.rt.bus.publish(contracts.PRICES.name, price_record_key(spec), msg.SerializeToString())
            M.PRICE_UPDATES.labels(action="withdraw").inc()
            log.info("OpenADR prices withdrawn", extra={"node": spec.node_id or "site", "price_id": spec.price_id})
            del self.published_prices[spec.key]
        M.PRICES_ACTIVE.set(len(self.published_prices))

    def _log(self, t: Transition | None) -> None:
        if t is None:
            return
        if t.after == "up":
            log.info("OpenADR VTN reachable", extra={"was": t.before})
        elif t.after == "unreachable":
            log.warning(
                "OpenADR VTN unreachable: keeping the last known limits until their windows end; "
                "fallback limits after %.0f s",
                self.options.fallback_after_s,
                extra={"error": t.error},
            )
        elif t.after == "fallback":
            log.error(
                "OpenADR VTN unreachable for %.0f s: fallback limits apply (GRIDCHARGE_OPENADR_FALLBACK_W)",
                self.link.unreachable_for_s(t.at),
                extra={"error": t.error, "nodes": sorted(self.options.fallback_w)},
            )

    # -- usage reports ---------------------------------------------------------------------------------
    async def report_once(self) -> int:
        """Post one usage report per event that asks for one; returns how many the VTN accepted."""
        now = self.rt.clock.time()
        start, self.last_report_at = self.last_report_at, now
        means = self.usage.take(now)
        sent = 0
        o = self.options
        for k in self.events.values():
            if not k.event.report_types:
                continue
            nodes = o.node_map.nodes_for(k.event.targets, k.program_name)
            report = usage_report(
                k.event.event_id,
                k.event.program_id,
                o.ven_name,
                k.event.report_types,
                {n: means[n] for n in nodes if n in means},
                start,
                now,
            )
            if report is None:
                continue
            try:
                await self.vtn.post_report(report)
            except VtnError as exc:
                M.REQUESTS.labels(kind="report", outcome="error").inc()
                log.warning(
                    "OpenADR usage report not delivered", extra={"event_id": k.event.event_id, "error": str(exc)[:200]}
                )
            else:
                M.REQUESTS.labels(kind="report", outcome="ok").inc()
                sent += 1
        return sent

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll_once()
                if (
                    self.options.report_s > 0
                    and self.link.state == "up"
                    and self.rt.clock.time() - self.last_report_at >= self.options.report_s
                ):
                    await self.report_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("OpenADR VEN cycle failed; retrying at the next poll")
            await self.rt.clock.sleep(self.options.poll_s)


def _iso(t: float) -> str | None:
    try:
        return datetime.fromtimestamp(t, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return None
