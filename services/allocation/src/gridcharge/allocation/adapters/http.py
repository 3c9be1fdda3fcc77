"""Operator HTTP API of the allocation service (FastAPI router, OpenAPI at /docs).

GET  /allocation/topology                      nodes with limits and current EV capacity, stations with state
GET  /allocation/limits                        effective per-node limits and the external limits in force
POST /allocation/limits                        a time-windowed external limit with a fallback (→ ExternalLimit)
DELETE /allocation/limits/{node_id}/{limit_id} withdraw it (publishes an empty window)
GET  /allocation/sessions                      active sessions
PUT  /allocation/sessions/{session_id}/preferences   departure, energy, priority
GET  /allocation/plan                          the latest plan per session with the explanation
"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from gridcharge.allocation.adapters.codec import PREFS_KEY, PreferencesIn, external_limit_window
from gridcharge.allocation.core.allocator import Allocator
from gridcharge.allocation.core.budget import ExternalLimitWindow
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts as C
from gridcharge.shared.audit import note_change
from gridcharge.shared.codec import meta, phase_values, to_timestamp
from gridcharge.shared.topology import PHASES
from gridcharge.shared.validation import bounded_datetime
from pydantic import BaseModel, Field, model_validator

if TYPE_CHECKING:
    from gridcharge.allocation.service import AllocationService

log = logging.getLogger(__name__)

PhaseTriple = Annotated[list[float], Field(min_length=3, max_length=3)]


class ExternalLimitIn(BaseModel):
    """A capacity limit for a node between ``valid_from`` and ``valid_to``; per-phase W or A."""

    node_id: str = Field(min_length=1, max_length=64)
    limit_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex[:12], min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$"
    )
    source: str = Field("operator", max_length=32)
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    limit_w: PhaseTriple | None = None
    limit_a: PhaseTriple | None = None
    fallback_limit_w: PhaseTriple | None = None
    stale_after_s: int = Field(0, ge=0, le=7 * 86400)

    @model_validator(mode="after")
    def _check(self) -> ExternalLimitIn:
        if (self.limit_w is None) == (self.limit_a is None):
            raise ValueError("give limit_w or limit_a (three per-phase values)")
        for v in (self.limit_w or self.limit_a or []) + (self.fallback_limit_w or []):
            if not math.isfinite(v) or v < 0:
                raise ValueError("limits must be finite and ≥ 0")
        bounded_datetime(self.valid_from, "valid_from")
        bounded_datetime(self.valid_to, "valid_to")
        if self.valid_from and self.valid_to and self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be after valid_from")
        return self


def _phases(values: tuple[float, float, float] | list[float]) -> dict[str, float]:
    return {ph: round(float(values[i]), 1) for i, ph in enumerate(PHASES)}


def build_router(svc: AllocationService) -> APIRouter:
    r = APIRouter(prefix="/allocation", tags=["allocation"])
    alloc = svc.alloc
    topo = svc.topology

    @r.get("/topology", summary="Grid nodes with limits and EV capacity now; stations with their state")
    def get_topology() -> dict[str, object]:
        now = svc.rt.clock.time()
        cap = alloc.capacity_now(now)
        wc = alloc.worst_case_ph(now)
        nodes = [
            {
                "id": n.id,
                "kind": n.kind,
                "parent": n.parent,
                "limit_w": _phases(topo.limit_w(n.id)),
                "ev_capacity_w": _phases(list(cap[n.id])),
                "metered": n.metered,
            }
            for n in topo.nodes
        ]
        stations = []
        for s in topo.stations:
            led = alloc.ledgers[s.id]
            stations.append(
                {
                    "id": s.id,
                    "node": s.node,
                    "phase_map": list(s.phase_map),
                    "max_current_a": s.max_current_a,
                    "fallback_current_a": s.fallback_current_a,
                    "online": led.online,
                    "fallback_installed": led.fallback_installed,
                    "worst_case_a": max(wc[s.id]),
                    # per station phase L1, L2, L3 (a lease in W on one phase counts most on L1)
                    "worst_case_phase_a": wc[s.id],
                    "failsafe": led.in_failsafe(now, alloc.cfg.failsafe_hold_s),
                    "last_failure": led.last_failure,
                    "station_cap_a": alloc.station_cap_a.get(s.id),
                }
            )
        return {
            "nominal_voltage_v": topo.nominal_voltage_v,
            "nodes": nodes,
            "stations": stations,
            "leader": svc.leader.is_leader,
        }

    @r.get("/limits", summary="Effective per-node limits and external limits")
    def get_limits() -> dict[str, object]:
        now = svc.rt.clock.time()
        cap = alloc.capacity_now(now)
        ext = [
            {
                "node_id": e.node_id,
                "limit_id": e.limit_id,
                **_window_json(e),
                "in_force_w": (_phases(v) if (v := e.value_at(now, now)) is not None else None),
            }
            for e in alloc.external.values()
        ]
        return {
            "nodes": {
                n.id: {"limit_w": _phases(alloc.capacity_limit_w(n.id, now)), "ev_capacity_w": _phases(list(cap[n.id]))}
                for n in topo.nodes
            },
            "external_limits": ext,
        }

    @r.post("/limits", status_code=202, summary="Set a time-windowed external limit (published on the bus)")
    async def post_limit(body: ExternalLimitIn, request: Request) -> dict[str, str]:
        if body.node_id not in topo.node_by_id:
            raise HTTPException(404, "unknown node")
        before = _limit_json(alloc, body.node_id, body.limit_id)
        now = svc.rt.clock.now()
        v = topo.nominal_voltage_v
        lim = body.limit_w or [a * v for a in body.limit_a or []]
        msg = grid_pb2.ExternalLimit(
            meta=meta(svc.producer, now),
            node_id=body.node_id,
            limit_id=body.limit_id,
            source=body.source,
            valid_from=to_timestamp(body.valid_from or now),
            limit_w=phase_values(lim),
            fallback_limit_w=phase_values(body.fallback_limit_w or lim),
            stale_after_s=body.stale_after_s,
        )
        if body.valid_to is not None:
            msg.valid_to.CopyFrom(to_timestamp(body.valid_to))
        await svc.rt.bus.publish(C.EXTERNAL_LIMITS.name, body.node_id, msg.SerializeToString())
        alloc.external_limit(external_limit_window(msg, now))
        svc.mark_dirty()
        note_change(
            request,
            f"node/{body.node_id}/external-limit/{body.limit_id}",
            before,
            _limit_json(alloc, body.node_id, body.limit_id),
        )
        return {"limit_id": body.limit_id}

    @r.delete("/limits/{node_id}/{limit_id}", status_code=202, summary="Withdraw an external limit")
    async def delete_limit(
        node_id: Annotated[str, Path(max_length=64)], limit_id: Annotated[str, Path(max_length=64)], request: Request
    ) -> dict[str, str]:
        if (node_id, limit_id) not in alloc.external:
            raise HTTPException(404, "no such limit")
        note_change(request, f"node/{node_id}/external-limit/{limit_id}", _limit_json(alloc, node_id, limit_id))
        now = svc.rt.clock.now()
        msg = grid_pb2.ExternalLimit(
            meta=meta(svc.producer, now),
            node_id=node_id,
            limit_id=limit_id,
            source="operator",
            valid_from=to_timestamp(now),
            valid_to=to_timestamp(now),
        )
        await svc.rt.bus.publish(C.EXTERNAL_LIMITS.name, node_id, msg.SerializeToString())
        alloc.remove_external_limit(node_id, limit_id)
        svc.mark_dirty()
        return {"limit_id": limit_id}

    @r.get("/sessions", summary="Active charging sessions")
    def get_sessions() -> list[dict[str, object]]:
        return [_session_json(alloc, s.session_id) for s in alloc.book.sessions.values()]

    @r.put("/sessions/{session_id:path}/preferences", summary="Set departure, energy and priority of a session")
    async def put_preferences(session_id: str, body: PreferencesIn, request: Request) -> dict[str, object]:
        if alloc.book.by_id(session_id) is None:
            raise HTTPException(404, "unknown session")
        keys = ("departure", "energy_needed_wh", "priority")
        before = {k: _session_json(alloc, session_id).get(k) for k in keys}
        alloc.book.set_preferences(session_id, body.departure, body.energy_wh, body.priority)
        await svc.rt.store.hset(PREFS_KEY, session_id, body.model_dump_json(exclude_none=True).encode())
        svc.mark_dirty()
        after = _session_json(alloc, session_id)
        note_change(request, f"session/{session_id}/preferences", before, {k: after.get(k) for k in keys})
        return after

    @r.get("/plan", summary="Latest plan per session with its explanation (binding constraint)")
    def get_plan() -> dict[str, object]:
        res = alloc.last
        if res is None:
            return {"at": None, "sessions": []}
        out = []
        for s in alloc.book.sessions.values():
            ex = res.explanations.get(s.session_id)
            ol = alloc.outlook(res, s)
            b = ex.binding if ex is not None else None
            out.append(
                {
                    "session_id": s.session_id,
                    "station_id": s.station_id,
                    "evse_id": s.evse_id,
                    "granted_a": ex.granted_a if ex else 0.0,
                    "planned_a": ex.planned_a if ex else 0.0,
                    "current_a_per_slot": [round(a, 1) for a in ol.current_a] if ol else [],
                    "planned_wh": round(ol.planned_wh, 1) if ol else 0.0,
                    "will_complete": ol.will_complete if ol else False,
                    "shortfall_wh": round(ol.shortfall_wh, 1) if ol else s.remaining_wh,
                    "explanation": {
                        "node": b.node_id if b else None,
                        "phase": PHASES[b.phase] if b and 0 <= b.phase < 3 else None,
                        "slot": b.slot if b else None,
                        "source": b.source if b else None,
                        "clamped_by": ex.clamped_by if ex else "",
                    },
                }
            )
        return {
            "at": res.at.isoformat(),
            "step_s": alloc.cfg.slot_s,
            "status": res.plan.status if res.plan else "",
            "solve_seconds": res.plan.solve_time_s if res.plan else 0.0,
            "error": res.error,
            "sessions": out,
        }

    return r


def _limit_json(alloc: Allocator, node_id: str, limit_id: str) -> dict[str, object] | None:
    """An external limit as the audit log shows it (None: there is none)."""
    e = alloc.external.get((node_id, limit_id))
    return _window_json(e) if e is not None else None


def _window_json(e: ExternalLimitWindow) -> dict[str, object]:
    return {
        "source": e.source,
        "valid_from": datetime.fromtimestamp(e.valid_from, UTC).isoformat(),
        "valid_to": None if math.isinf(e.valid_to) else datetime.fromtimestamp(e.valid_to, UTC).isoformat(),
        "limit_w": _phases(e.limit_w),
        "fallback_limit_w": _phases(e.fallback_limit_w),
    }


def _session_json(alloc: Allocator, session_id: str) -> dict[str, object]:
    s = alloc.book.by_id(session_id)
    if s is None:
        return {}
    return {
        "session_id": s.session_id,
        "station_id": s.station_id,
        "evse_id": s.evse_id,
        "transaction_id": s.transaction_id,
        "started_at": s.started_at.isoformat(),
        "departure": s.departure.isoformat(),
        "energy_needed_wh": s.energy_needed_wh,
        "delivered_wh": round(s.delivered_wh, 1),
        "min_current_a": s.min_current_a,
        "max_current_a": s.max_current_a,
        "phases": s.phases,
        "priority": s.priority,
        "measured_current_a": s.measured_current_a,
        "charging_state": s.charging_state,
        "granted_a": alloc.grant_a.get(f"{s.station_id}/{s.evse_id}"),
    }
