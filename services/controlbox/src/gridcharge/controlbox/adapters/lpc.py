"""The EEBUS-style LPC input: the energy guard's writes as a small HTTP API, or a JSON file an EEBUS sidecar
(e.g. one built on eebus-go) rewrites.

HTTP (operator API, the shared bearer-token/OIDC edge; writes need the operator role — give the energy guard a
token of its own: ``gridcharge api-token dso-energy-guard --role operator``):

    POST /api/controlbox/lpc        {"active": true, "limit_w": 4200, "duration_s": 3600}   write the limit
                                    (+ optional "failsafe_limit_w", "failsafe_duration_s"); counts as a heartbeat
    POST /api/controlbox/heartbeat  the energy guard's heartbeat (at least every 60 s; lost after 120 s)
    GET  /api/controlbox/status     the limit in force, LPC and relay state

File (``GRIDCHARGE_CONTROLBOX_LPC_FILE``): the same JSON object as the POST body, at most 4 KiB; every change of
the file (content or modification time) counts as a heartbeat, so the sidecar rewrites it at every heartbeat.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException
from gridcharge.controlbox.core.dimming import MAX_LIMIT_W
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from gridcharge.controlbox.service import ControlboxService

MAX_FILE_BYTES = 4096
MAX_DURATION_S = 7 * 86_400.0


class LpcWrite(BaseModel):
    """One write of the energy guard. Powers W (total over the phases), durations s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    active: bool
    limit_w: float | None = Field(None, ge=0, le=MAX_LIMIT_W)
    duration_s: float | None = Field(None, ge=0, le=MAX_DURATION_S)  # None/0 = until further notice
    failsafe_limit_w: float | None = Field(None, ge=0, le=MAX_LIMIT_W)
    failsafe_duration_s: float | None = Field(None, ge=0, le=MAX_DURATION_S)  # clamped to 2–24 h

    @field_validator("limit_w", "duration_s", "failsafe_limit_w", "failsafe_duration_s")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _limit_when_active(self) -> LpcWrite:
        if self.active and self.limit_w is None:
            raise ValueError("an active limit needs limit_w")
        return self


def build_router(svc: ControlboxService) -> APIRouter:
    r = APIRouter(prefix="/api/controlbox", tags=["controlbox"])

    @r.get("/status", summary="§14a limit in force, LPC and relay state")
    def status() -> dict[str, Any]:
        return svc.status()

    @r.post("/lpc", summary="EEBUS LPC: write the active consumption limit (W) and optionally the failsafe values")
    async def lpc(body: LpcWrite) -> dict[str, Any]:
        if svc.settings.controlbox_lpc != "http":
            raise HTTPException(409, "the LPC HTTP input is not configured (GRIDCHARGE_CONTROLBOX_LPC=http)")
        await svc.lpc_write(body, "http")
        return svc.status()

    @r.post("/heartbeat", summary="EEBUS LPC: the energy guard's heartbeat")
    async def heartbeat() -> dict[str, Any]:
        if svc.settings.controlbox_lpc != "http":
            raise HTTPException(409, "the LPC HTTP input is not configured (GRIDCHARGE_CONTROLBOX_LPC=http)")
        await svc.lpc_heartbeat("http")
        return svc.status()

    return r


class LpcFile:
    """Reads the sidecar's JSON file; `poll()` returns a new write (or None when unchanged) and raises ValueError
    on a file that is too large or not a valid write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[float, bytes] | None = None

    def poll(self) -> LpcWrite | None:
        try:
            st = self.path.stat()
            if st.st_size > MAX_FILE_BYTES:
                raise ValueError(f"{self.path}: larger than {MAX_FILE_BYTES} bytes")
            with self.path.open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"{self.path}: larger than {MAX_FILE_BYTES} bytes")
        key = (st.st_mtime, data)
        if key == self._seen:
            return None
        self._seen = key
        try:
            return LpcWrite.model_validate_json(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise ValueError(f"{self.path}: {where}: {err['msg']}"[:300]) from None
