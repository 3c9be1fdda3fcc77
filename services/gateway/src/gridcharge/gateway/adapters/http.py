"""Operator HTTP API (mounted on the service's HTTP edge; OpenAPI docs at /docs).

- `GET /api/v1/stations`: stations connected to any live replica, with protocol and owner replica.
- `GET /api/v1/stations/{station_id}/profile-check`: the last closed-loop profile check of the station (what it
  applies against what it accepted; `adapters.profile_check`), from any replica.
- `POST /api/v1/stations/{station_id}/commands/{action}`: send one command (body: the command's fields
  as in `command.v1` proto JSON, e.g. `{"keys": ["HeartbeatInterval"]}` for get_configuration) through
  the bus like any other producer, wait for its CommandResult and return it as JSON.

Charging limits are the allocator's alone (docs/security.md, "Station commands"): this passthrough refuses
SetChargingProfile and ClearChargingProfile, settings that switch smart charging off or shrink what a station
can hold (SmartChargingCtrlr variables, 1.6 smart-charging keys), and the `generation`/`command_key` ordering
parameters. An operator who set a profile, or a generation above the allocator's, for the allocator's own
command key made every later allocator command for it SUPERSEDED: the allocator then believed a station was
at 0 A while it drew 32 A. Manual limits go through the allocation API instead (POST /allocation/limits for
a node, PUT /allocation/sessions/{id}/preferences for a session), which keeps them inside the budget.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Query, Request
from google.protobuf import json_format
from gridcharge.command.v1 import command_pb2
from gridcharge.gateway.adapters.dispatcher import Dispatcher
from gridcharge.gateway.adapters.profile_check import result_key
from gridcharge.gateway.adapters.registry import Registry
from gridcharge.gateway.adapters.server import STATION_ID
from gridcharge.gateway.core.commands import ACTIONS
from gridcharge.shared.audit import note_change
from gridcharge.shared.contracts import COMMANDS
from pydantic import BaseModel

BY_OCPP_NAME = {v: k for k, v in ACTIONS.items()}
ALLOCATOR_ONLY = {"set_charging_profile", "clear_charging_profile"}
ORDERING_PARAMS = ("generation", "command_key")
# OCPP 1.6 configuration keys of the Smart Charging profile: changing them can make a station refuse or drop
# the allocator's profiles (fewer stack levels, periods or profiles; another rate unit).
SMART_CHARGING_KEYS_16 = frozenset(
    {
        "chargeprofilemaxstacklevel",
        "chargingscheduleallowedchargingrateunit",
        "chargingschedulemaxperiods",
        "maxchargingprofilesinstalled",
        "connectorswitch3to1phasesupported",
    }
)
SMART_CHARGING_COMPONENT_201 = "smartchargingctrlr"  # e.g. SmartChargingCtrlr.Enabled=false turns it off


def refused(field: str, body: dict[str, Any]) -> str | None:
    """Why the passthrough must not send this command (None = it may)."""
    if field in ALLOCATOR_ONLY:
        return (
            f"{field} is reserved for the allocator (it owns every charging profile); set limits with "
            "POST /allocation/limits (a node) or PUT /allocation/sessions/{id}/preferences (a session)"
        )
    if field == "change_configuration" and str(body.get("key", "")).strip().lower() in SMART_CHARGING_KEYS_16:
        return f"configuration key {str(body.get('key'))[:64]!r} belongs to smart charging, which the allocator owns"
    if field == "set_variables":
        for v in body.get("variables") or []:
            if isinstance(v, dict) and str(v.get("component", "")).strip().lower() == SMART_CHARGING_COMPONENT_201:
                return "SmartChargingCtrlr variables belong to smart charging, which the allocator owns"
    return None


class StationInfo(BaseModel):
    station_id: str
    protocol: str
    replica_id: str
    ownership_epoch: int
    connected_since: float  # POSIX s


def build_router(registry: Registry, dispatcher: Dispatcher) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["gateway"])

    @router.get("/stations", response_model=list[StationInfo])
    async def stations() -> list[StationInfo]:
        """Stations connected to a live gateway replica."""
        return [
            StationInfo(
                station_id=sid,
                protocol=o.protocol,
                replica_id=o.replica_id,
                ownership_epoch=o.epoch,
                connected_since=o.since,
            )
            for sid, o in await registry.connected()
        ]

    @router.post("/stations/{station_id}/commands/{action}")
    async def command(
        request: Request,
        station_id: str,
        action: str,
        body: dict[str, Any] = Body(default_factory=dict, description="command fields (command.v1 proto JSON)"),
        timeout_s: float = Query(35.0, gt=0, le=300),
    ) -> dict[str, Any]:
        """Send `action` (snake_case like get_configuration, or the OCPP name) and return the CommandResult.

        Not for charging profiles: those are the allocator's (403; use the allocation API)."""
        given = [p for p in ORDERING_PARAMS if p in request.query_params]
        if given:
            raise HTTPException(
                422,
                f"{'/'.join(given)} cannot be set through the operator API: generations and "
                "command keys order the allocator's own commands",
            )
        if not STATION_ID.fullmatch(station_id):
            raise HTTPException(404, "unknown station id")
        field = action if action in ACTIONS else BY_OCPP_NAME.get(action)
        if field is None:
            raise HTTPException(404, f"unknown command; one of {sorted(set(ACTIONS) - ALLOCATOR_ONLY)}")
        reason = refused(field, body)
        if reason is not None:
            raise HTTPException(403, reason)
        cmd = command_pb2.StationCommand(command_id=uuid.uuid4().hex, station_id=station_id)
        try:
            json_format.ParseDict(body, getattr(cmd, field))
        except json_format.ParseError as exc:
            raise HTTPException(422, f"invalid command body: {str(exc)[:200]}") from None
        getattr(cmd, field).SetInParent()
        cmd.meta.producer = "gateway-api"
        cmd.meta.trace_id = cmd.command_id
        fut: asyncio.Future[command_pb2.CommandResult] = asyncio.get_running_loop().create_future()
        dispatcher.waiters[cmd.command_id] = fut
        target = f"station/{station_id}/{ACTIONS[field]}"
        try:
            await dispatcher.ctx.bus.publish(COMMANDS.name, station_id, cmd.SerializeToString())
            res = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            note_change(request, target, after={"command_id": cmd.command_id, "outcome": "no result in time"})
            raise HTTPException(504, "no command result in time") from None
        finally:
            dispatcher.waiters.pop(cmd.command_id, None)
        out = json_format.MessageToDict(
            res, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        note_change(request, target, after={k: out.get(k) for k in ("command_id", "outcome", "status", "error_code")})
        return out

    return router


def build_profile_check_router(dispatcher: Dispatcher) -> APIRouter:
    """`GET /api/v1/stations/{station_id}/profile-check` (read from the store: any replica answers)."""
    router = APIRouter(prefix="/api/v1", tags=["gateway"])

    @router.get("/stations/{station_id}/profile-check")
    async def profile_check(station_id: str) -> dict[str, Any]:
        """The station's last profile check: `ok`, `complete`, `checked_at` and each mismatch (kind, EVSE, stack
        level, profile id, the limit sent and the one the station applies, unit). 404 before the first check."""
        if not STATION_ID.fullmatch(station_id):
            raise HTTPException(404, "unknown station id")
        raw = await dispatcher.ctx.store.get(result_key(station_id))
        if raw is None:
            raise HTTPException(404, "no profile check of this station yet")
        out: dict[str, Any] = json.loads(raw)
        out["station_id"] = station_id
        return out

    return router
