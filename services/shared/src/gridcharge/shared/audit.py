"""Audit trail of the operator APIs: every authenticated change request, published on the bus and logged.

The HTTP edge records who (the authenticated principal), what (method, path, query, the body's first 4 KiB) and
the outcome (status) of every POST/PUT/PATCH/DELETE; an API handler adds what it knows about the change with
`note_change` (target, state before and after). Published on `gridcharge.audit.events.v1` keyed by service, so
one service's events stay in order, and logged on the `gridcharge.audit` logger (a SIEM can read either).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from fastapi import Request
from gridcharge.audit.v1 import audit_pb2
from gridcharge.shared.auth import Principal
from gridcharge.shared.bus.base import Bus
from gridcharge.shared.clock import Clock, RealClock
from gridcharge.shared.codec import meta
from gridcharge.shared.contracts import AUDIT_EVENTS

log = logging.getLogger("gridcharge.audit")

NOTE_KEY = "gridcharge.audit"
PRINCIPAL_KEY = "gridcharge.principal"
MAX_FIELD_BYTES = 4096


def note_change(request: Request, target: str, before: Any = None, after: Any = None) -> None:
    """Tell the audit log what a request changed (JSON-able before/after state; None = unknown or absent)."""
    request.scope.setdefault("state", {})[NOTE_KEY] = {"target": target, "before": before, "after": after}


def principal_of(request: Request) -> Principal | None:
    p = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    return p if isinstance(p, Principal) else None


def _json(value: Any) -> str:
    if value is None:
        return ""
    text = json.dumps(value, default=str, sort_keys=True, separators=(",", ":"))
    return _cut(text)


def _cut(text: str) -> str:
    data = text.encode()
    return text if len(data) <= MAX_FIELD_BYTES else data[:MAX_FIELD_BYTES].decode(errors="ignore") + "…"


class AuditSink:
    """Publishes and logs audit events; a bus failure is logged, never fails the request (it already ran)."""

    def __init__(self, bus: Bus | None, service: str, producer: str, clock: Clock | None = None) -> None:
        self.bus, self.service, self.producer = bus, service, producer
        self.clock = clock or RealClock()

    def event(
        self,
        principal: Principal,
        client: str,
        method: str,
        path: str,
        query: str,
        body: bytes,
        status: int,
        note: dict[str, Any] | None,
    ) -> audit_pb2.AuditEvent:
        ev = audit_pb2.AuditEvent(
            event_id=uuid.uuid4().hex,
            service=self.service,
            method=method,
            path=path[:512],
            query=_cut(query),
            request_json=_cut(body.decode("utf-8", errors="replace")),
            status_code=status,
            actor=audit_pb2.Actor(
                subject=principal.subject,
                name=principal.name,
                role=principal.role,
                method=principal.method,
                client_address=client[:64],
            ),
        )
        ev.meta.CopyFrom(meta(self.producer, self.clock.now(), trace_id=ev.event_id))
        if note:
            ev.target = str(note.get("target", ""))[:256]
            ev.before_json = _json(note.get("before"))
            ev.after_json = _json(note.get("after"))
        return ev

    async def record(self, ev: audit_pb2.AuditEvent) -> None:
        log.info(
            "operator API change",
            extra={
                "audit_event": ev.event_id,
                "actor": ev.actor.subject,
                "actor_name": ev.actor.name,
                "role": ev.actor.role,
                "auth": ev.actor.method,
                "client": ev.actor.client_address,
                "method": ev.method,
                "path": ev.path,
                "query": ev.query,
                "status": ev.status_code,
                "target": ev.target,
                "before": ev.before_json,
                "after": ev.after_json,
                "api_service": ev.service,
            },
        )
        if self.bus is None:
            return
        try:
            await self.bus.publish(AUDIT_EVENTS.name, self.service, ev.SerializeToString())
        except Exception:
            log.exception(
                "audit event not published on the bus (it is in this log)", extra={"audit_event": ev.event_id}
            )
