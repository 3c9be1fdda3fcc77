"""HTTP API of telemetry: grid-meter ingest for sites without their own Kafka producers, and node load.

POST /api/v1/meter-readings  one reading, a list, or {"readings": [...]} -> 202 {"accepted": n};
                             invalid input -> 422 {"detail": [{"loc": [...], "msg": "..."}]}
GET  /api/v1/node-load       latest per-node load (W per grid phase)
GET  /api/v1/node-load/{id}
GET  /api/v1/evses           per-EVSE power/current per grid phase, session, energy, staleness
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, HTTPException
from gridcharge.shared import contracts as C
from gridcharge.shared.bus.base import Bus
from gridcharge.shared.clock import Clock
from gridcharge.telemetry.core import TelemetryCore
from gridcharge.telemetry.core.ingest import IngestError, check_nodes, parse_json_readings
from gridcharge.telemetry.core.model import NodeLoadView

log = logging.getLogger(__name__)


def view_json(v: NodeLoadView) -> dict[str, Any]:
    def ph(p: tuple[float, float, float]) -> dict[str, float]:
        return {"L1": round(p[0], 1), "L2": round(p[1], 1), "L3": round(p[2], 1)}

    return {
        "node_id": v.node_id,
        "as_of": v.as_of_s,
        "load_w": ph(v.load_w),
        "worst_case_w": ph(v.worst_case_w),
        "ev_load_w": ph(v.ev_load_w),
        "base_load_w": ph(v.base_load_w),
        "limit_w": ph(v.limit_w),
        "metered": v.metered,
        "meter_fresh": v.meter_fresh,
        "stale_sources": v.stale_sources,
        "implausible_sources": v.implausible_sources,
        "ambient_temperature_c": None if math.isnan(v.ambient_c) else v.ambient_c,
    }


def evses_json(core: TelemetryCore, now_s: float) -> list[dict[str, Any]]:
    out = []
    for s in core.topo.stations:
        st = core.stations[s.id]
        for e in s.evses:
            ev = core.evses[(s.id, e.id)]
            out.append(
                {
                    "station_id": s.id,
                    "evse_id": e.id,
                    "node_id": s.node,
                    "power_w": dict(zip(("L1", "L2", "L3"), (round(x, 1) for x in ev.power_w), strict=True)),
                    "current_a": dict(zip(("L1", "L2", "L3"), (round(x, 2) for x in ev.current_a), strict=True)),
                    "status": ev.status,
                    "transaction_id": ev.transaction_id or None,
                    "session_energy_wh": round(ev.session_energy_wh, 1),
                    "energy_delivered_wh": round(ev.energy_delivered_wh, 1),
                    "stale": core.evse_stale(ev, st, now_s),
                    "implausible": ev.implausible_reason or None,
                    "worst_case_a": core.worst_case_a(s, e.id, now_s),
                    "last_sample_at": ev.last_sample_s,
                }
            )
    return out


def build_router(
    bus: Bus,
    clock: Clock,
    known_nodes: set[str],
    producer: str,
    latest: Callable[[], dict[str, NodeLoadView]],
    core: Callable[[], TelemetryCore] | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["telemetry"])

    @router.post("/meter-readings", status_code=202)
    async def ingest(payload: Any = Body(...)) -> dict[str, int]:
        """Publish grid-meter readings to gridcharge.grid.meter-readings.v1 (keyed by node)."""
        try:
            readings = parse_json_readings(payload)
            check_nodes(readings, known_nodes)
        except IngestError as exc:
            raise HTTPException(status_code=422, detail=exc.errors) from None
        now = clock.time()
        for r in readings:
            await bus.publish(C.GRID_METER_READINGS.name, r.node_id, r.to_proto(now, producer).SerializeToString())
        log.info("meter readings ingested over HTTP", extra={"count": len(readings)})
        return {"accepted": len(readings)}

    @router.get("/node-load")
    async def node_load() -> dict[str, Any]:
        return {"nodes": [view_json(v) for v in latest().values()]}

    @router.get("/node-load/{node_id}")
    async def node_load_one(node_id: str) -> dict[str, Any]:
        v = latest().get(node_id)
        if v is None:
            raise HTTPException(status_code=404, detail="unknown node or no snapshot yet")
        return view_json(v)

    @router.get("/evses")
    async def evses() -> dict[str, Any]:
        if core is None:
            raise HTTPException(status_code=404, detail="not available")
        return {"evses": evses_json(core(), clock.time())}

    return router
