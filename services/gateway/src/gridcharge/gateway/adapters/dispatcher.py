"""Commands from the bus to station sockets, results back to the bus.

Routing: every replica consumes ALL partitions of the command topic with its own consumer group
`gateway-<replica_id>` and executes only commands for stations whose socket it holds (and owns per the
registry). A command for a station connected nowhere is answered OFFLINE by exactly one replica: the
first to claim `gw:offline:{command_id}` in the store. (Chosen over per-replica channels: no extra
topics, and a station moving between replicas needs no re-routing; the cost is that every replica reads
every command, which is small next to the station traffic.)

Per station one CALL is in flight; the rest wait in a FIFO queue. A queued command is answered
SUPERSEDED when a newer generation for the same `command_key` is queued behind it, or when the store
already holds a newer generation (`gw:gen:{station}:{key}` advanced with `set_if_newer`, so an older
generation is never applied after a newer one, across replicas too). Every command gets exactly one
CommandResult.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from gridcharge.command.v1 import command_pb2
from gridcharge.gateway.adapters.codec import capabilities_of, capabilities_record, command_result
from gridcharge.gateway.adapters.metrics import COMMANDS, ROUNDTRIP
from gridcharge.gateway.core import schemas
from gridcharge.gateway.core.boot import Registration, command_allowed, triggered_action
from gridcharge.gateway.core.commands import InvalidCommand, action_of, is_profile_command, outcome_of, to_request
from gridcharge.gateway.core.errors import Version, cap, safe
from gridcharge.gateway.core.frames import ErrorFrame
from gridcharge.gateway.core.profiles import Capabilities
from gridcharge.shared.bus.base import Record, Subscription
from gridcharge.shared.contracts import COMMAND_RESULTS, STATION_CAPABILITIES, decode
from gridcharge.shared.contracts import COMMANDS as COMMANDS_TOPIC
from gridcharge.station.v1 import station_pb2

if TYPE_CHECKING:
    from gridcharge.gateway.adapters.context import GatewayContext
    from gridcharge.gateway.adapters.registry import Registry
    from gridcharge.gateway.handlers.base import StationSession

log = logging.getLogger(__name__)
Oc = command_pb2.CommandOutcome
OUTCOME_LABEL: dict[int, str] = {
    Oc.COMMAND_OUTCOME_ACCEPTED: "accepted",
    Oc.COMMAND_OUTCOME_REJECTED: "rejected",
    Oc.COMMAND_OUTCOME_CALL_ERROR: "error",
    Oc.COMMAND_OUTCOME_TIMEOUT: "timeout",
    Oc.COMMAND_OUTCOME_OFFLINE: "not_connected",
    Oc.COMMAND_OUTCOME_INVALID: "invalid",
    Oc.COMMAND_OUTCOME_SUPERSEDED: "superseded",
    Oc.COMMAND_OUTCOME_EXPIRED: "expired",
    Oc.COMMAND_OUTCOME_NOT_OWNER: "not_owner",
}

Job = command_pb2.StationCommand | Callable[[], Awaitable[None]]

CAPS_16_KEYS = [
    "ChargeProfileMaxStackLevel",
    "ChargingScheduleAllowedChargingRateUnit",
    "ChargingScheduleMaxPeriods",
    "MaxChargingProfilesInstalled",
    "NumberOfConnectors",
]
CAPS_201_VARS = [
    ("SmartChargingCtrlr", "Enabled", ""),
    ("SmartChargingCtrlr", "ProfileStackLevel", ""),
    ("SmartChargingCtrlr", "RateUnit", ""),
    ("SmartChargingCtrlr", "PeriodsPerSchedule", ""),
    ("SmartChargingCtrlr", "Entries", "ChargingProfiles"),
]
RATE_NAMES = {"current": "A", "a": "A", "power": "W", "w": "W"}


def _int(v: Any) -> int | None:
    try:
        return int(str(v).strip()) if v is not None and len(str(v)) < 12 else None
    except ValueError:
        return None


def _units(v: Any) -> frozenset[str]:
    if not isinstance(v, str):
        return frozenset()
    return frozenset(RATE_NAMES[u] for u in (x.strip().lower() for x in v[:64].split(",")) if u in RATE_NAMES)


class Dispatcher:
    def __init__(self, ctx: GatewayContext, registry: Registry, sessions: dict[str, StationSession]) -> None:
        self.ctx, self.registry, self.sessions = ctx, registry, sessions
        self.waiters: dict[str, asyncio.Future[command_pb2.CommandResult]] = {}
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # the profile check: told of every profile write the station accepted (adapters.profile_check)
        self.on_profile_written: Callable[[StationSession, str, dict[str, Any]], Awaitable[None]] | None = None

    async def start(self) -> None:
        rid = self.ctx.settings.replica_id
        bus = self.ctx.bus
        self._subs.append(
            await bus.subscribe([COMMANDS_TOPIC.name], f"gateway-{rid}", self.on_command_record, from_beginning=False)
        )
        self._subs.append(
            await bus.subscribe(
                [COMMAND_RESULTS.name], f"gateway-api-{rid}", self.on_result_record, from_beginning=False
            )
        )
        for s in self._subs:
            await s.wait_assigned()

    async def stop(self) -> None:
        for s in self._subs:
            await s.stop()
        for t in list(self._tasks):
            t.cancel()

    # ---- intake ----------------------------------------------------------------------------------

    async def on_command_record(self, rec: Record) -> None:
        try:
            cmd = decode(command_pb2.StationCommand, rec.value)
        except DecodeError:
            log.warning("undecodable command dead-lettered", extra={"key": safe(rec.key)})
            raise
        await self.submit(cmd)

    async def submit(self, cmd: command_pb2.StationCommand) -> None:
        sess = self.sessions.get(cmd.station_id)
        if sess is None or sess.closed:
            if await self.registry.owner(cmd.station_id) is None and await self.ctx.store.set_if_newer(
                f"gw:offline:{cmd.command_id}", 1, b"", ttl_s=3600
            ):
                await self.finish(cmd, Oc.COMMAND_OUTCOME_OFFLINE, error_description="station not connected")
            return
        if cmd.command_key:
            # coalesce: a queued older generation of the same key will never be sent
            for queued in list(sess.queue):
                if (
                    isinstance(queued, command_pb2.StationCommand)
                    and queued.command_key == cmd.command_key
                    and queued.generation < cmd.generation
                ):
                    sess.queue.remove(queued)
                    await self.finish(
                        queued, Oc.COMMAND_OUTCOME_SUPERSEDED, error_description=f"generation {cmd.generation} queued"
                    )
        self.enqueue(sess, cmd)

    def enqueue(self, sess: StationSession, job: Job) -> None:
        sess.queue.append(job)
        if sess.worker is None or sess.worker.done():
            sess.worker = asyncio.create_task(self._work(sess), name="gw-station-queue")

    async def _work(self, sess: StationSession) -> None:
        while sess.queue:
            job = sess.queue.popleft()
            try:
                if isinstance(job, command_pb2.StationCommand):
                    await self.execute(sess, job)
                else:
                    await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("command job failed", extra={"station": safe(sess.id, 48)})
                if isinstance(job, command_pb2.StationCommand):
                    await self.finish(
                        job,
                        Oc.COMMAND_OUTCOME_CALL_ERROR,
                        error_code="InternalError",
                        error_description="gateway error",
                    )
        sess.worker = None

    def drain_offline(self, sess: StationSession) -> None:
        """On disconnect: everything still queued is answered OFFLINE."""
        jobs = [j for j in sess.queue if isinstance(j, command_pb2.StationCommand)]
        sess.queue.clear()
        for job in jobs:
            self._spawn(self.finish(job, Oc.COMMAND_OUTCOME_OFFLINE, error_description="station disconnected"))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- execution -------------------------------------------------------------------------------

    async def execute(self, sess: StationSession, cmd: command_pb2.StationCommand) -> None:
        try:
            action = action_of(cmd)
        except InvalidCommand as exc:
            await self.finish(cmd, Oc.COMMAND_OUTCOME_INVALID, error_code="InvalidCommand", error_description=str(exc))
            return
        if cmd.HasField("expires_at") and cmd.expires_at.ToNanoseconds() <= self.ctx.clock.time() * 1e9:
            await self.finish(
                cmd, Oc.COMMAND_OUTCOME_EXPIRED, action=action, error_description="expired before sending"
            )
            return
        # registration: wait (bounded) until a fresh connection's boot is decided, then only what its
        # status allows: nothing while Rejected or unregistered, a few reads/writes while Pending (core.boot)
        status = await self._registration(sess)
        if not command_allowed(status, sess.version, action):
            await self.finish(
                cmd,
                Oc.COMMAND_OUTCOME_INVALID,
                action=action,
                error_code="NotRegistered",
                error_description=f"{action} not sent: station registration is "
                f"{status.value or 'unknown (no BootNotification)'}",
            )
            return
        try:
            action, payload = to_request(cmd, sess.version, sess.capabilities)
        except InvalidCommand as exc:
            await self.finish(
                cmd, Oc.COMMAND_OUTCOME_INVALID, action=action, error_code="InvalidCommand", error_description=str(exc)
            )
            return
        violation = schemas.validate(sess.version, action, "req", payload)
        if violation is not None:
            await self.finish(
                cmd,
                Oc.COMMAND_OUTCOME_INVALID,
                action=action,
                error_code=violation.kind.code(sess.version),
                error_description=violation.description,
            )
            return
        if cmd.command_key:
            gen_key = f"gw:gen:{cmd.station_id}:{cmd.command_key}"
            if not await self.ctx.store.set_if_newer(gen_key, cmd.generation, b""):
                cur = await self.ctx.store.get_versioned(gen_key)
                if cur is not None and cur[0] > cmd.generation:
                    await self.finish(
                        cmd,
                        Oc.COMMAND_OUTCOME_SUPERSEDED,
                        action=action,
                        error_description=f"generation {cur[0]} already applied",
                    )
                    return
        # ownership is checked right before sending: after a move to another replica we must not send
        epoch = await self.registry.reassert(sess.id, sess.epoch, sess.version.subprotocol)
        if epoch is None:
            # a newer connection (on another replica) owns the station: this socket is stale. When that
            # owner is alive it answers the command itself (every replica sees every command), so only
            # count here; otherwise this is the one answer.
            self._spawn(self.ctx_close(sess))
            if await self.registry.owner(sess.id) is not None:
                COMMANDS.labels(command=action, outcome="not_owner").inc()
                return
            await self.finish(
                cmd,
                Oc.COMMAND_OUTCOME_NOT_OWNER,
                action=action,
                error_description="station is owned by a newer connection",
            )
            return
        sess.epoch = epoch
        await self._send(sess, cmd, action, payload)

    async def _registration(self, sess: StationSession) -> Registration:
        if not sess.registered.is_set():
            try:
                await asyncio.wait_for(sess.registered.wait(), self.ctx.settings.call_timeout_s)
            except TimeoutError:
                pass
        return sess.boot_status

    async def ctx_close(self, sess: StationSession) -> None:
        """Close a connection that lost ownership (the station is connected elsewhere)."""
        try:
            await sess.close(4001, "replaced by a newer connection")
        except Exception:
            pass

    async def _send(
        self, sess: StationSession, cmd: command_pb2.StationCommand, action: str, payload: dict[str, Any]
    ) -> None:
        t0 = time.monotonic()
        asked = triggered_action(sess.version, action, payload)
        if asked is not None:
            # allowed before the station answers: it may send the triggered message right after its answer
            sess.triggered.add(asked)
        try:
            answer = await sess.send_call(action, payload, self.ctx.settings.call_timeout_s)
        except TimeoutError:
            rt = time.monotonic() - t0
            unknown = is_profile_command(action)
            if unknown:
                await self.ctx.store.set(f"gw:profile-state:{sess.id}", b"unknown")
            await self.finish(
                cmd,
                Oc.COMMAND_OUTCOME_TIMEOUT,
                action=action,
                round_trip_s=rt,
                status="Unknown" if unknown else "",
                error_description=("no answer: profile state unknown" if unknown else "no answer"),
            )
            return
        except ConnectionError:
            await self.finish(cmd, Oc.COMMAND_OUTCOME_OFFLINE, action=action, error_description="station disconnected")
            return
        rt = time.monotonic() - t0
        ROUNDTRIP.labels(action=action).observe(rt)
        if isinstance(answer, ErrorFrame):
            await self.finish(
                cmd,
                Oc.COMMAND_OUTCOME_CALL_ERROR,
                action=action,
                round_trip_s=rt,
                error_code=cap(answer.code, 40),
                error_description=cap(answer.description),
            )
            return
        bad = schemas.validate(sess.version, action, "conf", answer.payload)
        if bad is not None:
            await self.finish(
                cmd,
                Oc.COMMAND_OUTCOME_CALL_ERROR,
                action=action,
                round_trip_s=rt,
                error_code=bad.kind.code(sess.version),
                error_description="invalid response: " + bad.description,
            )
            return
        outcome, status = outcome_of(action, answer.payload)
        if is_profile_command(action) and outcome == Oc.COMMAND_OUTCOME_ACCEPTED:
            await self.ctx.store.delete(f"gw:profile-state:{sess.id}")
            if self.on_profile_written is not None:
                await self.on_profile_written(sess, action, payload)

        await self.finish(
            cmd,
            outcome,
            action=action,
            status=status,
            round_trip_s=rt,
            response_json=json.dumps(answer.payload, separators=(",", ":"))[:16384],
        )

    async def finish(
        self,
        cmd: command_pb2.StationCommand,
        outcome: int,
        *,
        action: str = "",
        status: str = "",
        error_code: str = "",
        error_description: str = "",
        response_json: str = "",
        round_trip_s: float = 0.0,
    ) -> None:
        """Publish the one CommandResult of `cmd`."""
        if not action:
            try:
                action = action_of(cmd)
            except InvalidCommand:
                action = ""
        res = command_result(
            cmd,
            outcome,  # type: ignore[arg-type]
            self.ctx.producer,
            self.ctx.clock.time(),
            action=action,
            status=status,
            error_code=error_code,
            error_description=error_description,
            response_json=response_json,
            round_trip_s=round_trip_s,
        )
        COMMANDS.labels(command=action or "unknown", outcome=OUTCOME_LABEL.get(outcome, "error")).inc()
        fut = self.waiters.get(cmd.command_id)
        if fut is not None and not fut.done():
            fut.set_result(res)
        await self.ctx.bus.publish(COMMAND_RESULTS.name, cmd.station_id, res.SerializeToString())

    async def on_result_record(self, rec: Record) -> None:
        """Results from other replicas, for operator API requests waiting here."""
        if not self.waiters:
            return
        try:
            res = decode(command_pb2.CommandResult, rec.value)
        except DecodeError:
            return
        fut = self.waiters.get(res.command_id)
        if fut is not None and not fut.done():
            fut.set_result(res)

    # ---- registration recovery -------------------------------------------------------------------

    def request_boot(self, sess: StationSession) -> None:
        """A station with no known boot (never booted here, or its boot state expired) sent a CALL: ask it
        for a BootNotification (TriggerMessage) instead of answering SecurityError forever. A 2.0.1 station
        that still considers itself Accepted answers Rejected (F06.FR.17); it is then asked no more on this
        connection."""

        async def ask() -> None:
            try:
                await sess.send_call(
                    "TriggerMessage", {"requestedMessage": "BootNotification"}, self.ctx.settings.call_timeout_s
                )
            except (TimeoutError, ConnectionError):
                pass

        # not queued: a command at the head of the queue may be waiting for exactly this boot (send_call
        # still keeps one CALL in flight)
        self._spawn(ask())

    # ---- capabilities at boot --------------------------------------------------------------------

    async def restore_capabilities(self, sess: StationSession) -> None:
        """A reconnect without a boot: the capabilities read at the station's last boot, from the store (read
        again when missing)."""
        try:
            raw = await self.ctx.store.get(f"gw:caps:{sess.id}")
        except Exception:
            raw = None
        if raw is None:
            self.read_capabilities(sess)
            return
        try:
            caps = decode(station_pb2.StationCapabilities, raw)
        except DecodeError:
            self.read_capabilities(sess)
            return
        sess.capabilities = capabilities_of(caps)

    def read_capabilities(self, sess: StationSession) -> None:
        """Queue the capability read (runs before any command queued after the boot)."""
        if self.ctx.settings.read_capabilities:
            self.enqueue(sess, lambda: self._read_capabilities(sess))

    async def _read_capabilities(self, sess: StationSession) -> None:
        timeout = self.ctx.settings.capabilities_timeout_s
        read_at = self.ctx.clock.time()
        values: dict[str, Any] = {}
        complete = False
        evses, smart = 0, False
        try:
            if sess.version is Version.V16:
                ans = await sess.send_call("GetConfiguration", {"key": CAPS_16_KEYS}, timeout)
                if (
                    not isinstance(ans, ErrorFrame)
                    and schemas.validate(sess.version, "GetConfiguration", "conf", ans.payload) is None
                ):
                    for kv in ans.payload.get("configurationKey", []):
                        values[kv.get("key", "")] = kv.get("value")
                    complete = not ans.payload.get("unknownKey")
                stack = _int(values.get("ChargeProfileMaxStackLevel"))
                units = _units(values.get("ChargingScheduleAllowedChargingRateUnit"))
                periods = _int(values.get("ChargingScheduleMaxPeriods"))
                installed = _int(values.get("MaxChargingProfilesInstalled"))
                evses = _int(values.get("NumberOfConnectors")) or 0
                smart = bool(values)
            else:
                req = {
                    "getVariableData": [
                        {"component": {"name": c}, "variable": {"name": v, **({"instance": i} if i else {})}}
                        for c, v, i in CAPS_201_VARS
                    ]
                }
                ans = await sess.send_call("GetVariables", req, timeout)
                if (
                    not isinstance(ans, ErrorFrame)
                    and schemas.validate(sess.version, "GetVariables", "conf", ans.payload) is None
                ):
                    results = ans.payload.get("getVariableResult", [])
                    for r in results:
                        if r.get("attributeStatus") == "Accepted":
                            values[r["variable"]["name"]] = r.get("attributeValue")
                    complete = len(values) == len(CAPS_201_VARS)
                stack = _int(values.get("ProfileStackLevel"))
                units = _units(values.get("RateUnit"))
                periods = _int(values.get("PeriodsPerSchedule"))
                installed = _int(values.get("Entries"))
                smart = str(values.get("Enabled", "")).lower() == "true"
        except (TimeoutError, ConnectionError):
            stack = units = periods = installed = None  # type: ignore[assignment]
            units = frozenset()
        sess.capabilities = Capabilities(
            max_stack_level=stack, allowed_rate_units=units, max_periods=periods, max_profiles_installed=installed
        )
        data = capabilities_record(
            sess.id,
            sess.version,
            sess.capabilities,
            self.ctx.producer,
            read_at,
            number_of_evses=evses,
            supports_smart_charging=smart,
            read_complete=complete,
        ).SerializeToString()
        await self.ctx.store.set(f"gw:caps:{sess.id}", data)
        await self.ctx.bus.publish(STATION_CAPABILITIES.name, sess.id, data)
