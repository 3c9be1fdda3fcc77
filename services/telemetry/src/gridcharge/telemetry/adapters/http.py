"""HTTP API of telemetry: grid-meter ingest for sites without their own Kafka producers, and node load.

POST /api/v1/meter-readings  one reading, a list, or {"readings": [...]} -> 202 {"accepted": n};
                             invalid input -> 422 {"detail": [{"loc": [...], "msg": "..."}]}
GET  /api/v1/node-load       latest per-node load (W per grid phase)
GET  /api/v1/node-load/{id}
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
from gridcharge.telemetry.core.ingest import IngestError, check_nodes, parse_json_readings
from gridcharge.telemetry.core.model import NodeLoadView

log = logging.getLogger(__name__)


def view_json(v: NodeLoadView) -> dict[str, Any]:
    def ph(p: tuple[float, float, float]) -> dict[str, float]:
        return {"L1": round(p[0], 1), "L2": round(p[1], 1), "L3": round(p[2], 1)}

    return {
        "node_id": v.node_id, "as_of": v.as_of_s, "load_w": ph(v.load_w), "worst_case_w": ph(v.worst_case_w),
        "ev_load_w": ph(v.ev_load_w), "base_load_w": ph(v.base_load_w), "limit_w": ph(v.limit_w),
        "metered": v.metered, "meter_fresh": v.meter_fresh, "stale_sources": v.stale_sources,
        "implausible_sources": v.implausible_sources,
        "ambient_temperature_c": None if math.isnan(v.ambient_c) else v.ambient_c,
    }


def build_router(bus: Bus, clock: Clock, known_nodes: set[str], producer: str,
                 latest: Callable[[], dict[str, NodeLoadView]]) -> APIRouter:
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

    return router
