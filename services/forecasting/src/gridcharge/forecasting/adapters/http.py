"""Operator HTTP API of the forecasting service (FastAPI router, OpenAPI at /docs).

GET /api/forecast/headroom/{node_id}   the latest headroom forecast of a node, per 15-min slot
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, HTTPException
from gridcharge.forecasting.adapters.codec import STEP_S

if TYPE_CHECKING:
    from gridcharge.forecasting.service import ForecastingService


def build_router(svc: ForecastingService) -> APIRouter:
    router = APIRouter(prefix="/api/forecast", tags=["forecast"])

    @router.get("/headroom/{node_id}")
    def headroom(node_id: str) -> dict[str, Any]:
        """The latest headroom forecast of a node: W per phase per 15-min slot, with the binding source."""
        if svc.last is None or node_id not in svc.last.headroom:
            raise HTTPException(404, f"no forecast for node {node_id!r}")
        h = svc.last.headroom[node_id]
        return {
            "node_id": node_id,
            "start": h.slot_starts[0].isoformat(),
            "step_s": STEP_S,
            "degraded": h.degraded,
            "degraded_reasons": list(h.degraded_reasons),
            "headroom_w": np.round(h.headroom_w.T, 1).tolist(),
            "source": h.slot_source(),
            "weather": h.slot_weather(),
        }

    return router
