"""Runs the closed-loop profile check (`core.profile_check`) against connected stations.

Cadence (`docs/grid-interfaces.md`): `profile_check_delay_s` after every profile write the station accepted
(writes within that delay share one check), and a slow audit every `profile_audit_interval_s`; at most
`profile_checks_per_hour` per station (a check is reads only — GetChargingProfiles and GetCompositeSchedule
write nothing to the station's flash — but stations are real hardware on thin links). A check runs in the
station's command queue, so it never overlaps a command: 2.0.1/2.1 GetChargingProfiles, then the station's
ReportChargingProfiles (collected by request id until `tbc` is false), then GetCompositeSchedule of the
station (EVSE 0); 1.6 (no GetChargingProfiles) the composite schedule only.

What the station accepted is kept per station in the store (`gw:sent-profiles:{station}`), so a reconnect to
another replica keeps it; the last result too (`gw:profile-check:{station}`, read by the operator API).
A mismatch is logged, counted (`gridcharge_gateway_profile_mismatches_total{kind}`) and published as a
`profile_check` station event: the allocator budgets the station at its worst case and sends its profiles
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from typing import TYPE_CHECKING, Any

from gridcharge.gateway.adapters.metrics import PROFILE_CHECKS, PROFILE_MISMATCHES
from gridcharge.gateway.core import schemas
from gridcharge.gateway.core.errors import Version, safe
from gridcharge.gateway.core.frames import ErrorFrame
from gridcharge.gateway.core.profile_check import (
    CheckResult,
    CheckSchedule,
    Mismatch,
    ProfileBook,
    compare_composite,
    compare_profiles,
    composite_now,
    reported_profiles,
    sent_profile,
)
from gridcharge.station.v1 import station_pb2

if TYPE_CHECKING:
    from gridcharge.gateway.adapters.context import GatewayContext
    from gridcharge.gateway.handlers.base import StationSession

log = logging.getLogger(__name__)
COMPOSITE_DURATION_S = 300  # long enough to show the limit now; short answers from small stations
MAX_REPORTS = 32  # ReportChargingProfiles messages collected per request (bounds a hostile station)
_request_ids = itertools.count(1)


def book_key(station_id: str) -> str:
    return f"gw:sent-profiles:{station_id}"


def result_key(station_id: str) -> str:
    return f"gw:profile-check:{station_id}"


class ProfileChecker:
    """Per replica: books and schedules of the stations connected here, and the loop that runs the checks."""

    def __init__(self, ctx: GatewayContext, sessions: dict[str, StationSession], enqueue: Any) -> None:
        self.ctx, self.sessions, self.enqueue = ctx, sessions, enqueue
        st = ctx.settings
        self.enabled = st.profile_check
        self.skew_s = st.profile_check_skew_s
        self.books: dict[str, ProfileBook] = {}
        self.schedules: dict[str, CheckSchedule] = {}
        self.running: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    def _schedule(self, station_id: str) -> CheckSchedule:
        s = self.schedules.get(station_id)
        if s is None:
            st = self.ctx.settings
            s = self.schedules[station_id] = CheckSchedule(
                st.profile_check_delay_s, st.profile_audit_interval_s, st.profile_checks_per_hour
            )
        return s

    async def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._loop(), name="gw-profile-check")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._tasks):
            t.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- inputs --------------------------------------------------------------------------------------

    async def book(self, station_id: str) -> ProfileBook:
        b = self.books.get(station_id)
        if b is None:
            raw = None
            with contextlib.suppress(Exception):
                raw = await self.ctx.store.get(book_key(station_id))
            b = self.books.setdefault(station_id, ProfileBook.load(raw))
        return b

    async def _save(self, station_id: str, book: ProfileBook) -> None:
        with contextlib.suppress(Exception):
            await self.ctx.store.set(book_key(station_id), book.dump())

    async def profile_written(self, sess: StationSession, action: str, payload: dict[str, Any]) -> None:
        """The station accepted our SetChargingProfile / ClearChargingProfile `payload`."""
        if not self.enabled:
            return
        now = self.ctx.clock.time()
        book = await self.book(sess.id)
        if action == "SetChargingProfile":
            p = sent_profile(sess.version, payload, now)
            if p is None:
                return
            book.accepted(p)
        else:
            book.cleared(sess.version, payload)
        await self._save(sess.id, book)
        self._schedule(sess.id).after_write(now)

    def observe(self, ev: station_pb2.StationEvent) -> None:
        """Station events on their way to the bus: a connection (re)loads the station's book from the store
        (another replica may have written it), an ended transaction takes its TxProfiles with it."""
        if not self.enabled:
            return
        kind = ev.WhichOneof("payload")
        if kind == "connected":
            self.books.pop(ev.station_id, None)
        elif kind == "disconnected":
            self.schedules.pop(ev.station_id, None)
        elif kind == "transaction_ended":
            self._spawn(self._tx_ended(ev.station_id, ev.transaction_ended.transaction_id))

    async def _tx_ended(self, station_id: str, transaction_id: str) -> None:
        book = await self.book(station_id)
        before = len(book.profiles)
        book.transaction_ended(transaction_id)
        if len(book.profiles) != before:
            await self._save(station_id, book)

    def collect_report(self, sess: StationSession, p: dict[str, Any]) -> None:
        """A ReportChargingProfiles (validated): part of the answer to our GetChargingProfiles request."""
        waiter = sess.profile_reports.get(p.get("requestId"))
        if waiter is None:
            return
        reports, done = waiter
        if len(reports) < MAX_REPORTS:
            reports.append(p)
        if not p.get("tbc") or len(reports) >= MAX_REPORTS:
            if not done.done():
                done.set_result(None)

    # ---- the loop ------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self.ctx.clock.sleep(1.0)
            now = self.ctx.clock.time()
            for sid, sched in list(self.schedules.items()):
                at = sched.next_due(now)
                sess = self.sessions.get(sid)
                if at is None or at > now or sid in self.running or sess is None or sess.closed:
                    continue
                self.running.add(sid)
                sched.ran(now)
                self.enqueue(sess, lambda s=sess: self._run(s))

    async def check_now(self, sess: StationSession) -> CheckResult:
        """Run one check at once (tests; the loop queues `_run`)."""
        self._schedule(sess.id).ran(self.ctx.clock.time())
        return await self.check(sess)

    async def _run(self, sess: StationSession) -> None:
        try:
            await self.check(sess)
        finally:
            self.running.discard(sess.id)

    async def check(self, sess: StationSession) -> CheckResult:
        """Read the station's profiles and composite schedules, compare, record, publish."""
        timeout = self.ctx.settings.call_timeout_s
        book = await self.book(sess.id)
        mismatches: list[Mismatch] = []
        complete, reason = True, ""
        try:
            if sess.version is not Version.V16:
                reports = await self._get_profiles(sess, timeout)
                if reports is None:
                    complete, reason = False, "GetChargingProfiles/ReportChargingProfiles not answered"
                else:
                    mismatches += compare_profiles(book, reported_profiles(reports), self.ctx.clock.time(), self.skew_s)
            # the station's composite (EVSE 0) against our station maximum: what the budget counts. Per-EVSE
            # TxProfiles only split the station cap (and an upstream CSMS in proxy mode may stack its own above
            # them), so their composites are not judged; a missing TxProfile still shows in the report.
            unit = next((p.rate_unit for p in book.profiles.values() if p.purpose == "StationMax"), "A")
            comp = await self._composite(sess, 0, unit, timeout)
            if comp is None:
                complete, reason = False, reason or "GetCompositeSchedule not answered"
            else:
                mm = compare_composite(book, 0, comp, self.ctx.clock.time(), self.skew_s)
                if mm is not None:
                    mismatches.append(mm)
        except (TimeoutError, ConnectionError) as exc:
            complete, reason = False, type(exc).__name__
        result = CheckResult(self.ctx.clock.time(), complete, tuple(mismatches), reason)
        await self._record(sess, result)
        return result

    async def _get_profiles(self, sess: StationSession, timeout: float) -> list[dict[str, Any]] | None:
        rid = next(_request_ids) % 2_147_483_647
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        reports: list[dict[str, Any]] = []
        sess.profile_reports[rid] = (reports, done)
        try:
            ans = await sess.send_call("GetChargingProfiles", {"requestId": rid, "chargingProfile": {}}, timeout)
            if (
                isinstance(ans, ErrorFrame)
                or schemas.validate(sess.version, "GetChargingProfiles", "conf", ans.payload) is not None
            ):
                return None
            status = ans.payload.get("status")
            if status == "NoProfiles":
                return []
            if status != "Accepted":
                return None
            try:
                await asyncio.wait_for(done, timeout)
            except TimeoutError:
                return None  # Accepted, but the reports did not come (all of them) in time
            return reports
        finally:
            sess.profile_reports.pop(rid, None)

    async def _composite(self, sess: StationSession, evse: int, unit: str, timeout: float) -> tuple[float, str] | None:
        key = "connectorId" if sess.version is Version.V16 else "evseId"
        ans = await sess.send_call(
            "GetCompositeSchedule", {key: evse, "duration": COMPOSITE_DURATION_S, "chargingRateUnit": unit}, timeout
        )
        if (
            isinstance(ans, ErrorFrame)
            or schemas.validate(sess.version, "GetCompositeSchedule", "conf", ans.payload) is not None
        ):
            return None
        return composite_now(sess.version, ans.payload, self.ctx.clock.time())

    async def _record(self, sess: StationSession, result: CheckResult) -> None:
        outcome = "incomplete" if not result.complete else ("ok" if result.ok else "mismatch")
        PROFILE_CHECKS.labels(outcome=outcome).inc()
        for m in result.mismatches:
            PROFILE_MISMATCHES.labels(kind=m.kind).inc()
        if result.mismatches:
            log.warning(
                "station does not apply the profiles it accepted",
                extra={
                    "station": safe(sess.id, 48),
                    "mismatches": [
                        f"{m.kind} evse={m.evse_id} stack={m.stack_level} id={m.profile_id} sent={m.sent_limit:g} "
                        f"reported={m.reported_limit:g}{m.rate_unit}"
                        for m in result.mismatches[:8]
                    ],
                },
            )
        elif not result.complete:
            log.info("profile check incomplete", extra={"station": safe(sess.id, 48), "reason": result.reason})
        with contextlib.suppress(Exception):
            await self.ctx.store.set(
                result_key(sess.id),
                json.dumps(result.as_json()).encode(),
                ttl_s=max(3 * 3600.0, 3 * self.ctx.settings.profile_audit_interval_s),
            )
        ev = sess.event()
        ev.profile_check.CopyFrom(
            station_pb2.ProfileCheck(
                ok=result.ok,
                complete=result.complete,
                mismatches=[
                    station_pb2.ProfileMismatch(
                        kind=m.kind,
                        evse_id=m.evse_id,
                        stack_level=m.stack_level,
                        profile_id=m.profile_id,
                        purpose=m.purpose[:32],
                        sent_limit=m.sent_limit,
                        reported_limit=m.reported_limit,
                        rate_unit=m.rate_unit[:2],
                    )
                    for m in result.mismatches[:32]
                ],
            )
        )
        with contextlib.suppress(Exception):
            await sess.publish(ev)
