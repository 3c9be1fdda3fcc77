"""The control-box service: reads the site's §14a inputs, runs the dimming state machine, publishes the limit.

Inputs: the relay over Modbus TCP (polled every ``controlbox_modbus_poll_s``), LPC writes and heartbeats over
HTTP or from a file. Output: an ``ExternalLimit`` (source and limit id "§14a") for ``controlbox_node`` on
``gridcharge.grid.external-limits.v1`` whenever the limit in force changes, re-published every
``controlbox_publish_s`` while dimming, and a withdrawal (empty window) when it ends and at start-up when
nothing is dimmed (a limit left by an earlier run is cleared). Everything runs on the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, Protocol

from fastapi import APIRouter
from gridcharge.controlbox.adapters.codec import external_limit, record_key
from gridcharge.controlbox.adapters.lpc import LpcFile, LpcWrite, build_router
from gridcharge.controlbox.adapters.metrics import DIMMING_ACTIVE, DIMMING_LIMIT_W, INPUT_READS, LIMITS_PUBLISHED
from gridcharge.controlbox.core.dimming import Dimming, DimmingState
from gridcharge.controlbox.settings import ControlboxSettings
from gridcharge.shared import contracts
from gridcharge.shared.codec import iso_utc
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.topology import Topology

log = logging.getLogger(__name__)

TICK_S = 1.0
REASONS = ("relay", "relay_unreadable", "lpc", "lpc_failsafe")


class RelayReader(Protocol):
    """The control box's contact (adapters.modbus.ModbusRelay, or a scripted one in tests and the demo)."""

    def describe(self) -> str: ...

    async def read(self) -> bool: ...

    async def close(self) -> None: ...


class ControlboxService:
    """Stateful shell around :class:`~gridcharge.controlbox.core.dimming.DimmingState`."""

    name = "controlbox"

    def __init__(
        self,
        rt: Runtime,
        topology: Topology,
        settings: ControlboxSettings,
        relay: RelayReader | None = None,
        lpc_file: LpcFile | None = None,
    ) -> None:
        self.rt, self.topology, self.settings = rt, topology, settings
        self.node = settings.controlbox_node
        self.rules = settings.rules(topology)
        self.state = DimmingState(self.rules, rt.clock.time())
        self.relay, self.lpc_file = relay, lpc_file
        self.producer = f"controlbox/{rt.settings.replica_id}"
        self.current: Dimming | None = None
        self.published_at = -math.inf
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._router = build_router(self)
        self.started = False

    # -- Service protocol -----------------------------------------------------------------------------
    @property
    def routers(self) -> list[APIRouter]:
        return [self._router]

    async def start(self) -> None:
        if self.relay is not None:
            await self._poll_relay()
        await self.update(force=True)
        self._tasks.append(asyncio.create_task(self._loop(), name="controlbox-loop"))
        if self.relay is not None:
            self._tasks.append(asyncio.create_task(self._relay_loop(), name="controlbox-relay"))
        if self.lpc_file is not None:
            self._tasks.append(asyncio.create_task(self._file_loop(), name="controlbox-lpc-file"))
        self.rt.health.add("controlbox", lambda: self.started)
        self.started = True
        log.info(
            "controlbox started",
            extra={
                "node": self.node,
                "minimum_w": self.rules.minimum_w,
                "relay": self.relay.describe() if self.relay else "off",
                "lpc": self.settings.controlbox_lpc,
            },
        )

    async def stop(self) -> None:
        self.started = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.relay is not None:
            await self.relay.close()

    # -- inputs ---------------------------------------------------------------------------------------
    async def lpc_write(self, w: LpcWrite, via: str) -> None:
        now = self.rt.clock.time()
        if w.failsafe_limit_w is not None or w.failsafe_duration_s is not None:
            self.state.lpc_failsafe_values(w.failsafe_limit_w, w.failsafe_duration_s, now)
        self.state.lpc_command(w.active, w.limit_w, w.duration_s, now)
        INPUT_READS.labels(input=f"lpc_{via}", outcome="ok").inc()
        await self.update()

    async def lpc_heartbeat(self, via: str) -> None:
        self.state.heartbeat(self.rt.clock.time())
        INPUT_READS.labels(input=f"lpc_{via}", outcome="heartbeat").inc()
        await self.update()

    async def _poll_relay(self) -> None:
        assert self.relay is not None
        try:
            active = await self.relay.read()
        except Exception as exc:  # any failure of the box or the link: the state machine judges the loss
            INPUT_READS.labels(input="relay", outcome="error").inc()
            log.warning("control box relay unreadable", extra={"error": str(exc)[:300]})
            return
        INPUT_READS.labels(input="relay", outcome="ok").inc()
        self.state.relay_read(active, self.rt.clock.time())

    async def _relay_loop(self) -> None:
        while True:
            await self.rt.clock.sleep(self.settings.controlbox_modbus_poll_s)
            await self._poll_relay()
            await self.update()

    async def _file_loop(self) -> None:
        assert self.lpc_file is not None
        while True:
            try:
                w = self.lpc_file.poll()
            except (ValueError, OSError) as exc:
                INPUT_READS.labels(input="lpc_file", outcome="invalid").inc()
                log.warning("LPC file refused", extra={"error": str(exc)[:300]})
                w = None
            if w is not None:
                await self.lpc_write(w, "file")
            await self.rt.clock.sleep(TICK_S)

    # -- output ---------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await self.rt.clock.sleep(TICK_S)
            try:
                await self.update()
            except Exception:  # the bus may be down for a moment: next tick tries again
                log.warning("controlbox update failed", exc_info=True)

    async def update(self, force: bool = False) -> Dimming:
        """Evaluate the state machine; publish when the limit changed, or to refresh an active one."""
        async with self._lock:
            now = self.rt.clock.time()
            d = self.state.evaluate(now)
            changed = d != self.current
            refresh = d.active and now - self.published_at >= self.settings.controlbox_publish_s
            if force or changed or refresh:
                msg = external_limit(self.node, d, now, self.settings.controlbox_hold_s, self.producer)
                await self.rt.bus.publish(
                    contracts.EXTERNAL_LIMITS.name, record_key(self.node), msg.SerializeToString()
                )
                LIMITS_PUBLISHED.labels(kind="limit" if d.active else "withdraw").inc()
                self.published_at = now
                if changed and (d.active or self.current is not None):
                    log.info(
                        "§14a dimming " + ("in force" if d.active else "ended"),
                        extra={"node": self.node, "limit_w": d.limit_w, "reason": d.reason},
                    )
                self.current = d
            DIMMING_LIMIT_W.labels(node=self.node).set(d.limit_w if d.limit_w is not None else math.nan)
            for r in REASONS:
                DIMMING_ACTIVE.labels(node=self.node, reason=r).set(1.0 if d.reason == r else 0.0)
            return d

    def status(self) -> dict[str, Any]:
        now = self.rt.clock.time()
        d = self.state.evaluate(now)
        hb = self.state.heartbeat_at
        return {
            "node_id": self.node,
            "dimmed": d.active,
            "limit_w": d.limit_w,
            "reason": d.reason,
            "until": iso_utc(d.until) if d.until is not None else None,
            "minimum_w": self.rules.minimum_w,
            "relay": self.state.relay_state(now),
            "lpc": self.state.lpc_state(now),
            "last_heartbeat": iso_utc(hb) if hb is not None else None,
            "failsafe_limit_w": self.state.failsafe_limit_w,
            "failsafe_duration_s": self.state.failsafe_duration_s,
        }
