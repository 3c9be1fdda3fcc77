"""The allocation service: bus in → Allocator → SetChargingProfile commands, plans and metrics out.

Inputs (consumer groups per replica, so a standby keeps the same state as the leader):
STATION_EVENTS, METER_VALUES, STATION_CAPABILITIES, COMMANDS (to see what a previous leader sent),
COMMAND_RESULTS, HEADROOM, EXTERNAL_LIMITS, PRICES; NODE_LOAD (also runs the fast limiter) in a group of its own.
Outputs (leader only): COMMANDS, SESSION_PLANS, NODE_PLANS, plans in the store.
A re-plan runs every ``plan_interval_s`` and ``debounce_s`` after any change that matters; its LP is
solved in a worker thread (`OffLoopPlanner`) so the fast limiter keeps reacting to NodeLoad meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

from fastapi import APIRouter
from gridcharge.allocation.adapters import codec
from gridcharge.allocation.adapters import metrics as M
from gridcharge.allocation.adapters.http import build_router
from gridcharge.allocation.core.allocator import Allocator, AllocatorConfig, PlanResult, ProfileCommand
from gridcharge.allocation.core.budget import violations
from gridcharge.allocation.core.model import Plan, Planner, PlanningProblem
from gridcharge.allocation.core.prices import PriceError, refusal
from gridcharge.command.v1 import command_pb2
from gridcharge.forecast.v1 import forecast_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts as C
from gridcharge.shared.bus.base import Outgoing, PublishError, Record, Subscription
from gridcharge.shared.clock import RealClock
from gridcharge.shared.codec import phase_tuple, timestamp_dt
from gridcharge.shared.leader import LeaderLease
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.topology import PHASES, Topology
from gridcharge.station.v1 import station_pb2

log = logging.getLogger(__name__)

PLAN_TTL_S = 900.0
FALLBACK_KEY = "allocation:fallback-installed"  # hash station -> "1": profiles persist across reboots (OCPP)
SESSIONS_KEY = "allocation:sessions"  # hash station/evse -> session JSON (survives a restart)
LEASE_KEY = "allocation:lease:"  # + station: worst-case station-cap lease {cap_a, until}
CAPS_KEY = "allocation:capabilities"  # hash station -> {units, max_periods} (survives a restart)
GATEWAY_CONNECTED_KEY = "gw:connected"  # the gateway registry: station -> replica|protocol|epoch|since
BASE_LOAD_REPLAN_W = 230.0  # a base-load change this big re-plans (≈ 1 A on a phase)

P3 = tuple[float, float, float]
SLOW_LIMITER_S = 0.25  # a limiter reaction slower than this is logged (with why)
STORE_BATCH = 64  # concurrent store writes per batch (the pool has 100)

INPUT_TOPICS = (
    C.STATION_EVENTS,
    C.METER_VALUES,
    C.STATION_CAPABILITIES,
    C.COMMANDS,
    C.COMMAND_RESULTS,
    C.NODE_LOAD,
    C.HEADROOM,
    C.EXTERNAL_LIMITS,
    C.PRICES,
)


class _ProblemCaptured(BaseException):
    """Ends a dry run of `Allocator.plan` once its planning problem is built. Control flow, not an error:
    a BaseException, so the allocator's `except Exception` around its planner does not take it for a
    planner failure. Before the planner, `Allocator.plan` only expires stale commands and ended external
    limits, which the real run would do anyway."""

    def __init__(self, problem: PlanningProblem) -> None:
        super().__init__("planning problem captured")
        self.problem = problem


def _sessions_of(problem: PlanningProblem) -> tuple[tuple[str, str], ...]:
    return tuple((s.session_id, s.evse_id) for s in problem.sessions)


class OffLoopPlanner:
    """The allocator's planner inside the service: solves in a worker thread instead of the event loop.

    `Allocator.plan` calls its planner synchronously, and the LP of 1,000 sessions takes seconds of CPU
    (HiGHS releases the GIL), during which no NodeLoad could reach the fast limiter. A re-plan therefore
    (1) runs `Allocator.plan` with `capturing` set: without a solved plan for its sessions it stops once
    the problem is built, (2) solves that problem in a thread (`solve`), and (3) runs `Allocator.plan`
    again, which gets the plan from (2) when its sessions are still the same (else back to (1); the
    last attempt solves on the loop, as before). Inputs that changed during (2) are planned with the next
    re-plan, as when the solve blocked the loop; the budget fit and the commands always use the current
    state. `threaded=False` (simulated time, where a solve takes no time anyway): solve on the loop, so
    runs stay deterministic.
    """

    def __init__(self, inner: Planner, threaded: bool = True) -> None:
        self.inner, self.threaded = inner, threaded
        self.capturing = False
        self._solved: tuple[tuple[tuple[str, str], ...], Plan] | None = None

    def plan(self, problem: PlanningProblem) -> Plan:
        solved, self._solved = self._solved, None
        if solved is not None and solved[0] == _sessions_of(problem):
            return solved[1]
        if self.capturing:
            raise _ProblemCaptured(problem)
        return self.inner.plan(problem)

    async def solve(self, problem: PlanningProblem) -> None:
        """Solve in a worker thread; the next `plan` call with the same sessions gets the result."""
        plan = await asyncio.to_thread(self.inner.plan, problem) if self.threaded else self.inner.plan(problem)
        self._solved = (_sessions_of(problem), plan)


class AllocationService:
    """Hosts one Allocator on a Runtime (bus, store, clock)."""

    name = "allocation"

    def __init__(
        self,
        rt: Runtime,
        topology: Topology,
        config: AllocatorConfig | None = None,
        planner: Planner | None = None,
        leader_ttl_s: float = 15.0,
        tick_s: float = 1.0,
    ) -> None:
        self.rt, self.topology = rt, topology
        if planner is None:
            from gridcharge.allocation.core.planner import LpPlanner

            planner = LpPlanner()
        # real time: solve in a thread and write to the store concurrently; simulated time (tests, the demo)
        # keeps every cycle on the loop without extra yields, so woken tasks finish within a clock step
        self.realtime = isinstance(rt.clock, RealClock)
        self.planner = OffLoopPlanner(planner, threaded=self.realtime)
        self._store_batch = STORE_BATCH if self.realtime else 1
        self.alloc = Allocator(topology, config, self.planner)
        self.cfg = self.alloc.cfg
        self.producer = f"allocation/{rt.settings.replica_id}"
        self.leader = LeaderLease(rt.store, rt.clock, rt.settings.replica_id, leader_ttl_s, key="allocation:leader")
        self.tick_s = tick_s
        self._subs: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self._dirty_since: float | None = None
        self._last_plan_at: float | None = None
        self._lock = asyncio.Lock()  # allocator decisions + their commands (plan apply, limiter)
        self._replan_lock = asyncio.Lock()  # one re-plan at a time
        self._wake = asyncio.Event()  # set when the plan turns dirty (real time: ends the idle wait)
        self._replan_done_at = -math.inf  # clock time the last re-plan ended
        self._planned_base_w: dict[str, tuple[float, float, float]] = {}
        # node -> ((load W, limit W) of its last NodeLoad, whether the limiter acted on it)
        self._limited_on: dict[str, tuple[tuple[P3, P3], bool]] = {}
        self.started = False
        self._handlers: dict[str, Callable[[Record], Awaitable[None]]] = {
            C.STATION_EVENTS.name: self._on_station_event,
            C.METER_VALUES.name: self._on_meter_values,
            C.STATION_CAPABILITIES.name: self._on_capabilities,
            C.COMMANDS.name: self._on_command,
            C.COMMAND_RESULTS.name: self._on_command_result,
            C.NODE_LOAD.name: self._on_node_load,
            C.HEADROOM.name: self._on_headroom,
            C.EXTERNAL_LIMITS.name: self._on_external_limit,
            C.PRICES.name: self._on_price,
        }
        self._router = build_router(self)

    @property
    def routers(self) -> list[APIRouter]:
        return [self._router]

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self._load_fallbacks()
        await self._restore()
        group = f"allocation.{self.rt.settings.replica_id}"
        self._subs.append(
            await self.rt.bus.subscribe([t.name for t in INPUT_TOPICS if t is not C.NODE_LOAD], group, self._dispatch)
        )
        # the limiter's input has its own consumer: a NodeLoad never waits behind a backlog of station traffic
        self._subs.append(await self.rt.bus.subscribe([C.NODE_LOAD.name], f"{group}.node-load", self._dispatch))
        await self.leader.renew()
        self.rt.health.add("allocation", lambda: self.started)
        self._task = asyncio.create_task(self._loop(), name="allocation-loop")
        self.started = True
        log.info("allocation started", extra={"stations": len(self.topology.stations), "leader": self.leader.is_leader})

    async def stop(self) -> None:
        self.started = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for s in self._subs:
            with contextlib.suppress(Exception):
                await s.stop()
        self._subs.clear()
        await self.leader.release()

    async def _load_fallbacks(self) -> None:
        """Which stations accepted their fallback before (a restart must not count them at hardware max)."""
        try:
            known = await self.rt.store.hgetall(FALLBACK_KEY)
        except Exception:
            log.warning("could not read installed fallbacks; all stations start at their worst case", exc_info=True)
            return
        for sid in known:
            led = self.alloc.ledgers.get(sid)
            if led is not None:
                led.fallback_installed = True

    async def _restore(self) -> None:
        """After a restart: sessions, leases a previous run may have installed, which stations are connected."""
        now = self.rt.clock.time()
        try:
            for blob in (await self.rt.store.hgetall(SESSIONS_KEY)).values():
                self.alloc.book.restore(blob)
            for sid in self.alloc.ledgers:
                raw = await self.rt.store.get(LEASE_KEY + sid)
                if raw is not None:
                    d = json.loads(raw)
                    phase_a = d.get("phase_a") or []
                    self.alloc.restore_lease(
                        sid, float(d["cap_a"]), float(d["until"]), now, [float(x) for x in phase_a][:3]
                    )
            for sid, blob in (await self.rt.store.hgetall(CAPS_KEY)).items():
                d = json.loads(blob)
                self.alloc.capabilities(sid, tuple(int(u) for u in d["units"]), int(d["max_periods"]))
            for sid, raw in (await self.rt.store.hgetall(GATEWAY_CONNECTED_KEY)).items():
                if sid in self.alloc.ledgers:
                    self.alloc.ledgers[sid].online = True
                    self.alloc.ledgers[sid].replica = raw.decode("utf-8", "replace").split("|", 1)[0][:64]
        except Exception:
            log.warning("could not restore state; starting from the bus only", exc_info=True)
        if self.alloc.book.sessions:
            log.info("restored sessions", extra={"sessions": len(self.alloc.book)})

    async def _persist(self) -> None:
        """Sessions to the store (leader only, once per cycle)."""
        try:
            blobs = {key: sess.dump() for key, sess in self.alloc.book.sessions.items()}
            await _batched(
                [self.rt.store.hset(SESSIONS_KEY, key, blob) for key, blob in blobs.items()], self._store_batch
            )
            gone = set(await self.rt.store.hgetall(SESSIONS_KEY)) - set(self.alloc.book.sessions)
            await _batched([self.rt.store.hdel(SESSIONS_KEY, key) for key in gone], self._store_batch)
        except Exception:
            log.warning("could not persist sessions", exc_info=True)

    async def _persist_lease(self, station_id: str) -> None:
        now = self.rt.clock.time()
        rec = self.alloc.lease_record(station_id, now)
        if rec is None:
            return
        cap_a, until, phase_a = rec
        with contextlib.suppress(Exception):
            await self.rt.store.set(
                LEASE_KEY + station_id,
                json.dumps({"cap_a": cap_a, "until": until, "phase_a": phase_a}).encode(),
                max(1.0, until - now),
            )

    def mark_dirty(self) -> None:
        if self._dirty_since is None:
            self._dirty_since = self.rt.clock.time()
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("allocation cycle failed")
            await self._idle()

    async def _idle(self) -> None:
        """Until the next tick (`tick_s`); in real time a change ends the wait once its debounce is over
        (not up to a tick later), but a re-plan still starts at least `tick_s` after the previous one ended."""
        if not self.realtime:
            await self.rt.clock.sleep(self.tick_s)
            return
        self._wake.clear()
        wait = self.tick_s
        if self._dirty_since is not None:
            due = max(self._dirty_since + self.cfg.debounce_s, self._replan_done_at + self.tick_s)
            wait = min(wait, max(0.0, due - self.rt.clock.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait)

    async def step(self) -> None:
        """One tick: renew leadership, re-plan when due or dirty (leader only)."""
        now = self.rt.clock.time()
        was = self.leader.is_leader
        if self.leader.last_check is None or now - self.leader.last_check >= self.leader.renew_every_s:
            await self.leader.renew()
        if not self.leader.is_leader:
            for led in self.alloc.ledgers.values():
                led.expire(now, self.cfg.command_timeout_s)
            return
        due = self._last_plan_at is None or now - self._last_plan_at >= self.cfg.plan_interval_s
        dirty = self._dirty_since is not None and now - self._dirty_since >= self.cfg.debounce_s
        if not was or due or dirty:
            await self.replan()

    # ---------------------------------------------------------------- planning
    async def replan(self) -> PlanResult:
        """Run a planning cycle now and publish its commands and plans.

        The LP is solved off the event loop (see OffLoopPlanner); `_lock` is held only to build the problem
        and to apply the plan and send its commands, so the limiter is never held up by a solve."""
        async with self._replan_lock:
            self._dirty_since = None
            await self._load_preferences()
            t0 = time.perf_counter()
            res: PlanResult | None = None
            capture = True
            phases: list[tuple[str, float]] = []
            for attempt in range(3):
                async with self._lock:
                    t_got = time.perf_counter()
                    self.planner.capturing = capture and attempt < 2
                    try:
                        now_dt = self.rt.clock.now()
                        res = self.alloc.plan(now_dt)
                    except _ProblemCaptured as cap:
                        problem = cap.problem
                        phases.append((f"prepare{attempt}", time.perf_counter() - t_got))
                    else:
                        self._last_plan_at = now_dt.timestamp()
                        t_sending = time.perf_counter()
                        await self._send(res.commands)
                        phases += [(f"apply{attempt}", t_sending - t_got), ("send", time.perf_counter() - t_sending)]
                        break
                    finally:
                        self.planner.capturing = False
                t_solve = time.perf_counter()
                try:
                    await self.planner.solve(problem)
                    phases.append((f"solve{attempt}", time.perf_counter() - t_solve))
                except Exception:  # solved again on the loop next, where a failure is handled as before
                    log.exception("planner failed in its worker thread")
                    capture = False
            assert res is not None
            if sum(d for name, d in phases if not name.startswith("solve")) > SLOW_LIMITER_S:
                log.info(
                    "planning lock held long",
                    extra={"phases": {k: round(v, 3) for k, v in phases}, "commands": len(res.commands)},
                )
            if res.plan is not None:
                M.PLAN_SOLVE_SECONDS.observe(res.plan.solve_time_s)
            log.debug(
                "planned",
                extra={
                    "sessions": len(self.alloc.book),
                    "commands": len(res.commands),
                    "seconds": round(time.perf_counter() - t0, 4),
                },
            )
            self._update_metrics(res)
            await self._publish_plans(res)
            await self._persist()
            self._replan_done_at = self.rt.clock.time()
            return res

    async def _send(self, cmds: list[ProfileCommand]) -> None:
        """Publish commands in order; generations and lease records are written to the store first
        (concurrently across profile slots, in order within one), then all commands go in one batch."""
        if not self.leader.is_leader:
            self._discard(cmds)
            return
        if not cmds:
            return
        msgs: dict[int, bytes] = {}
        slots: dict[tuple[str, str], list[int]] = {}
        for i, cmd in enumerate(cmds):
            slots.setdefault((cmd.station_id, cmd.command_key), []).append(i)

        async def prepare(idx: list[int]) -> None:
            for i in idx:
                cmd = cmds[i]
                try:
                    gen = await self.rt.store.incr(f"allocation:gen:{cmd.station_id}:{cmd.command_key}")
                    msg = codec.station_command(cmd, gen, self.producer, self.rt.clock.now())
                    if cmd.purpose == "station_lease":
                        await self._persist_lease(cmd.station_id)  # before it can be applied
                    msgs[i] = msg.SerializeToString()
                except Exception as exc:
                    self._send_failed(cmd, exc)

        if self.realtime:
            await asyncio.gather(*(prepare(idx) for idx in slots.values()))
        else:
            for idx in slots.values():
                await prepare(idx)
        order = sorted(msgs)
        failed: dict[int, BaseException] = {}
        try:
            await self.rt.bus.publish_many([Outgoing(C.COMMANDS.name, cmds[i].station_id, msgs[i]) for i in order])
        except PublishError as exc:
            failed = {order[j]: e for j, e in exc.failed.items()}
        except Exception as exc:
            failed = dict.fromkeys(order, exc)
        for i in order:
            if i in failed:
                self._send_failed(cmds[i], failed[i])
            else:
                M.COMMANDS.labels(purpose=cmds[i].purpose, outcome="sent").inc()
                M.PROFILE_WRITES.labels(purpose=cmds[i].purpose, reason=cmds[i].reason or "other").inc()

    def _send_failed(self, cmd: ProfileCommand, exc: BaseException) -> None:
        log.error("could not send command", extra={"station": cmd.station_id[:48]}, exc_info=exc)
        M.COMMANDS.labels(purpose=cmd.purpose, outcome="send_failed").inc()
        # not sent: it cannot have been applied
        self.alloc.ledgers[cmd.station_id].pending.pop(cmd.command_id, None)

    def _discard(self, cmds: list[ProfileCommand]) -> None:
        for cmd in cmds:
            self.alloc.ledgers[cmd.station_id].pending.pop(cmd.command_id, None)

    async def _publish_plans(self, res: PlanResult) -> None:
        try:
            out: list[Outgoing] = []
            for sp in codec.session_plans(self.alloc, res, self.producer):
                out.append(Outgoing(C.SESSION_PLANS.name, sp.session_id, sp.SerializeToString()))
            n_sessions = len(out)
            for np_ in codec.node_plans(self.alloc, res, self.producer):
                out.append(Outgoing(C.NODE_PLANS.name, np_.node_id, np_.SerializeToString()))
            await self.rt.bus.publish_many(out)
            await _batched(
                [
                    self.rt.store.set(
                        f"allocation:plan:{'session' if i < n_sessions else 'node'}:{o.key}", o.value, PLAN_TTL_S
                    )
                    for i, o in enumerate(out)
                ],
                self._store_batch,
            )
        except Exception:
            log.exception("could not publish plans")

    async def _load_preferences(self) -> None:
        """Operator/driver preferences live in the store so every replica plans with them."""
        try:
            prefs = await self.rt.store.hgetall(codec.PREFS_KEY)
        except Exception:
            log.warning("could not read preferences", exc_info=True)
            return
        for sid, blob in prefs.items():
            if self.alloc.book.by_id(sid) is None:
                continue
            codec.apply_preference_blob(self.alloc, sid, blob)

    def _update_metrics(self, res: PlanResult) -> None:
        now = res.at.timestamp()
        sessions = list(self.alloc.book.sessions.values())
        M.SESSIONS_ACTIVE.set(len(sessions))
        M.ENERGY_REQUESTED.set(sum(s.remaining_wh for s in sessions) * 3600.0)
        at_risk = 0
        binding: dict[tuple[str, str], int] = {}
        for s in sessions:
            ol = self.alloc.outlook(res, s)
            if ol is not None and not ol.will_complete:
                at_risk += 1
        at_risk += sum(1 for ex in res.explanations.values() if ex.clamped_by == "failsafe")
        for ex in res.explanations.values():
            b = ex.binding
            if b is not None and b.node_id in self.topology.node_by_id and 0 <= b.phase < 3:
                k = (b.node_id, PHASES[b.phase])
                binding[k] = binding.get(k, 0) + 1
        M.SESSIONS_AT_RISK.set(at_risk)
        for n in self.topology.nodes:
            for p, ph in enumerate(PHASES):
                M.BINDING_CONSTRAINTS.labels(node=n.id, phase=ph).set(binding.get((n.id, ph), 0))
                M.NODE_LIMIT.labels(node=n.id, phase=ph).set(float(res.capacity.w[n.id][p, 0]))
        for state, count in self.alloc.lease_counts(now).items():
            M.LEASES.labels(state=state).set(count)
        for why, count in res.deferred.items():
            M.WRITES_DEFERRED.labels(reason=why).inc(count)
        per_hour = sorted(self.alloc.writes_per_hour(now))
        if per_hour:
            M.STATION_WRITES_LAST_HOUR.labels(stat="max").set(per_hour[-1])
            M.STATION_WRITES_LAST_HOUR.labels(stat="p95").set(
                per_hour[min(len(per_hour) - 1, round(0.95 * (len(per_hour) - 1)))]
            )
            M.STATION_WRITES_LAST_HOUR.labels(stat="mean").set(sum(per_hour) / len(per_hour))
        cap_now = {n: c[:, 0] for n, c in res.capacity.w.items()}
        for nid, _p, _excess in violations(self.topology, cap_now, self.alloc.worst_case_ph(now)):
            M.NODE_LIMIT_VIOLATIONS.labels(node=nid).inc()

    # ---------------------------------------------------------------- handlers
    async def _dispatch(self, rec: Record) -> None:
        handler = self._handlers.get(rec.topic)
        if handler is not None:
            await handler(rec)

    async def _on_station_event(self, rec: Record) -> None:
        ev = C.decode(station_pb2.StationEvent, rec.value)
        now = self.rt.clock.now()
        ch = codec.apply_station_event(self.alloc, ev, now)
        if ch.commands:
            await self._send(ch.commands)
        for s in ch.ended:
            with contextlib.suppress(Exception):
                await self.rt.store.delete(f"allocation:plan:session:{s.session_id}")
                await self.rt.store.hdel(codec.PREFS_KEY, s.session_id)
        if ch.replan:
            self.mark_dirty()

    async def _on_meter_values(self, rec: Record) -> None:
        mv = C.decode(station_pb2.MeterValues, rec.value)
        now = self.rt.clock.now()
        s, delta_wh, cap_changed = codec.apply_meter_values(self.alloc, mv, now)
        if s is None:
            return
        if delta_wh > 0:
            M.ENERGY_DELIVERED.inc(delta_wh * 3600.0)
        if cap_changed:
            self.mark_dirty()  # give what it no longer takes to the others (or what it takes again back to it)

    async def _on_capabilities(self, rec: Record) -> None:
        caps = C.decode(station_pb2.StationCapabilities, rec.value)
        units = tuple(int(u) for u in caps.allowed_rate_units)
        if self.alloc.capabilities(caps.station_id, units, caps.max_periods_per_schedule):
            self.mark_dirty()
            with contextlib.suppress(Exception):
                await self.rt.store.hset(
                    CAPS_KEY,
                    caps.station_id,
                    json.dumps({"units": list(units), "max_periods": caps.max_periods_per_schedule}).encode(),
                )

    async def _on_command(self, rec: Record) -> None:
        cmd = C.decode(command_pb2.StationCommand, rec.value)
        if cmd.WhichOneof("payload") != "set_charging_profile" or cmd.meta.producer == self.producer:
            return
        sent_at = cmd.meta.produced_at.ToSeconds() if cmd.meta.HasField("produced_at") else self.rt.clock.time()
        self.alloc.observe_command(cmd.station_id, cmd.command_id, cmd.set_charging_profile, float(sent_at))

    async def _on_command_result(self, rec: Record) -> None:
        res = C.decode(command_pb2.CommandResult, rec.value)
        sent = None
        led = self.alloc.ledgers.get(res.station_id)
        if led is not None:
            sent = led.pending.get(res.command_id) or led.uncertain.get(res.command_id)
        had_fallback = led.fallback_installed if led is not None else True
        if self.alloc.command_result(res.station_id, res.command_id, res.outcome, self.rt.clock.time()):
            self.mark_dirty()
        if led is not None and led.fallback_installed and not had_fallback:
            with contextlib.suppress(Exception):
                await self.rt.store.hset(FALLBACK_KEY, res.station_id, b"1")
        if sent is not None:
            name = (
                command_pb2.CommandOutcome.Name(res.outcome)
                if res.outcome in command_pb2.CommandOutcome.values()
                else "UNKNOWN"
            )
            purpose = (
                "tx_profile"
                if sent.purpose != command_pb2.PROFILE_PURPOSE_STATION_MAX
                else ("fallback" if math.isinf(sent.valid_until) else "station_lease")
            )
            M.COMMANDS.labels(purpose=purpose, outcome=name.removeprefix("COMMAND_OUTCOME_").lower()).inc()
            if res.outcome != command_pb2.COMMAND_OUTCOME_ACCEPTED:
                log.info(
                    "profile command not accepted",
                    extra={
                        "station": res.station_id[:48],
                        "outcome": name,
                        "key": res.command_key[:64],
                        "error_code": res.error_code[:64],
                        "error": res.error_description[:200],
                    },
                )

    async def _on_node_load(self, rec: Record) -> None:
        nl = C.decode(grid_pb2.NodeLoad, rec.value)
        now = self.rt.clock.now()
        at = codec.message_time(nl.as_of, now)
        base = phase_tuple(nl.base_load_w)
        if not self.alloc.node_load(nl.node_id, phase_tuple(nl.load_w), base, at.timestamp()):
            return
        prev = self._planned_base_w.get(nl.node_id)
        if prev is None or max(abs(a - b) for a, b in zip(prev, base, strict=True)) >= BASE_LOAD_REPLAN_W:
            self._planned_base_w[nl.node_id] = base
            self.mark_dirty()
        if not self.leader.is_leader:
            return
        t_in = time.perf_counter()
        async with self._lock:
            t_locked = time.perf_counter()
            # the limiter acts once on a measurement: a snapshot that repeats the load (and limit) the limiter
            # just acted on predates that action; acting again would lower (or give back) the same excess twice
            seen = (phase_tuple(nl.load_w), self.alloc.capacity_limit_w(nl.node_id, now.timestamp()))
            if self._limited_on.get(nl.node_id) == (seen, True):
                return
            before = dict(self.alloc.grant_a)
            cmds = self.alloc.limit(nl.node_id, now)
            self._limited_on[nl.node_id] = (seen, bool(cmds))
            for key, a in self.alloc.grant_a.items():
                if key in before and a < before[key]:
                    M.LIMITER_ACTIONS.labels(action="lower").inc()
            t_decided = time.perf_counter()
            await self._send(cmds)
        t_sent = time.perf_counter()
        if cmds and t_sent - t_in > SLOW_LIMITER_S:
            log.info(
                "slow limiter reaction",
                extra={
                    "node": nl.node_id[:48],
                    "commands": len(cmds),
                    "lock_wait_s": round(t_locked - t_in, 3),
                    "decide_s": round(t_decided - t_locked, 3),
                    "send_s": round(t_sent - t_decided, 3),
                },
            )

    async def _on_headroom(self, rec: Record) -> None:
        hf = C.decode(forecast_pb2.HeadroomForecast, rec.value)
        now = self.rt.clock.now()
        start = (timestamp_dt(hf.start) or now).timestamp()
        produced = codec.message_time(hf.meta.produced_at, now).timestamp()
        slots = [phase_tuple(s.headroom_w) for s in hf.slots]
        sources = [s.binding_source[:48] for s in hf.slots]
        if self.alloc.headroom(hf.node_id, start, float(hf.step_s or 900), slots, sources, produced):
            self.mark_dirty()

    async def _on_external_limit(self, rec: Record) -> None:
        el = C.decode(grid_pb2.ExternalLimit, rec.value)
        if self.alloc.external_limit(codec.external_limit_window(el, self.rt.clock.now())):
            self.mark_dirty()

    async def _on_price(self, rec: Record) -> None:
        """An external price (OpenADR PRICE via gridsignals): planned with when it applies (core/prices.py); one
        that cannot be used is logged and withdraws what that id said before."""
        msg = C.decode(grid_pb2.PriceSignal, rec.value)
        try:
            price = codec.external_price(msg, self.rt.clock.now())
        except PriceError as exc:
            M.PRICE_SIGNALS.labels(outcome="invalid").inc()
            log.warning("price signal ignored", extra={"key": rec.key[:130], "error": str(exc)[:200]})
            return
        reason = refusal(self.topology, price) if price.intervals else ""
        if reason:
            M.PRICE_SIGNALS.labels(outcome="not_applicable").inc()
            log.warning("price signal not planned with", extra={"key": rec.key[:130], "reason": reason})
            price = replace(price, intervals=())
        else:
            M.PRICE_SIGNALS.labels(outcome="withdrawn" if not price.intervals else "applied").inc()
        if self.alloc.external_price(price):
            self.mark_dirty()


async def _batched(calls: list[Coroutine[Any, Any, None]], size: int) -> None:
    """Await store calls `size` at a time (concurrently within a batch; 1 = one after the other, no extra
    yields); raises the first error."""
    try:
        for i in range(0, len(calls), size):
            if size <= 1:
                await calls[i]
            else:
                await asyncio.gather(*calls[i : i + size])
    finally:
        for c in calls:  # not started after an error: close them, no "never awaited" warning
            c.close()
