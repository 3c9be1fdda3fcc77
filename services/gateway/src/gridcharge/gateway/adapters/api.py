"""Operator HTTP API (mounted on the service's HTTP edge; OpenAPI docs at /docs).

- `GET /api/v1/stations`: stations connected to any live replica, with protocol and owner replica.
- `POST /api/v1/stations/{station_id}/commands/{action}`: send one command (body: the command's fields
  as in `command.v1` proto JSON, e.g. `{"profile": {...}, "evseId": 1}` for set_charging_profile) through
  the bus like any other producer, wait for its CommandResult and return it as JSON.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Query
from google.protobuf import json_format
from gridcharge.command.v1 import command_pb2
from gridcharge.gateway.adapters.dispatcher import Dispatcher
from gridcharge.gateway.adapters.registry import Registry
from gridcharge.gateway.adapters.server import STATION_ID
from gridcharge.gateway.core.commands import ACTIONS
from gridcharge.shared.contracts import COMMANDS
from pydantic import BaseModel

BY_OCPP_NAME = {v: k for k, v in ACTIONS.items()}


class StationInfo(BaseModel):
    station_id: str
    protocol: str
    replica_id: str
    ownership_epoch: int
    connected_since: float   # POSIX s


def build_router(registry: Registry, dispatcher: Dispatcher) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["gateway"])

    @router.get("/stations", response_model=list[StationInfo])
    async def stations() -> list[StationInfo]:
        """Stations connected to a live gateway replica."""
        return [StationInfo(station_id=sid, protocol=o.protocol, replica_id=o.replica_id, ownership_epoch=o.epoch,
                            connected_since=o.since) for sid, o in await registry.connected()]

    @router.post("/stations/{station_id}/commands/{action}")
    async def command(
        station_id: str, action: str,
        body: dict[str, Any] = Body(default_factory=dict, description="command fields (command.v1 proto JSON)"),
        generation: int = Query(0, ge=0), command_key: str = Query("", max_length=128),
        timeout_s: float = Query(35.0, gt=0, le=300),
    ) -> dict[str, Any]:
        """Send `action` (snake_case like set_charging_profile, or the OCPP name) and return the CommandResult."""
        if not STATION_ID.fullmatch(station_id):
            raise HTTPException(404, "unknown station id")
        field = action if action in ACTIONS else BY_OCPP_NAME.get(action)
        if field is None:
            raise HTTPException(404, f"unknown command; one of {sorted(ACTIONS)}")
        cmd = command_pb2.StationCommand(command_id=uuid.uuid4().hex, station_id=station_id, generation=generation,
                                         command_key=command_key)
        try:
            json_format.ParseDict(body, getattr(cmd, field))
        except json_format.ParseError as exc:
            raise HTTPException(422, f"invalid command body: {str(exc)[:200]}") from None
        getattr(cmd, field).SetInParent()
        cmd.meta.producer = "gateway-api"
        cmd.meta.trace_id = cmd.command_id
        fut: asyncio.Future[command_pb2.CommandResult] = asyncio.get_running_loop().create_future()
        dispatcher.waiters[cmd.command_id] = fut
        try:
            await dispatcher.ctx.bus.publish(COMMANDS.name, station_id, cmd.SerializeToString())
            res = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise HTTPException(504, "no command result in time") from None
        finally:
            dispatcher.waiters.pop(cmd.command_id, None)
        return json_format.MessageToDict(res, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    return router
