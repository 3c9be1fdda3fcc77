"""Gateway test fixtures: a gateway on an ephemeral port over the in-process bus and store, and a raw
OCPP-J client helper (our own frames, so tests can send anything, including garbage)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from gridcharge.gateway.config import GatewaySettings
from gridcharge.gateway.service import GatewayService
from gridcharge.shared.bus.base import Record
from gridcharge.shared.bus.memory import MemoryBus
from gridcharge.shared.clock import RealClock
from gridcharge.shared.contracts import METER_VALUES, STATION_EVENTS, decode
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.store.memory import MemoryStore
from gridcharge.shared.topology import Topology, parse_topology
from gridcharge.station.v1 import station_pb2
from websockets.asyncio.client import ClientConnection, connect

STATIONS = [f"CP{i}" for i in range(1, 9)] + ["CS1", "CS2"]


def make_topology(stations: list[str] | None = None) -> Topology:
    ids = stations or STATIONS
    return parse_topology(
        {
            "nodes": [{"id": "site", "kind": "site", "limit_a": [2000, 2000, 2000]}],
            "stations": [{"id": s, "node": "site", "ocpp": "2.0.1" if s.startswith("CS") else "1.6"} for s in ids],
        }
    )


@dataclass
class Gateway:
    service: GatewayService
    bus: MemoryBus
    store: MemoryStore
    events: list[station_pb2.StationEvent] = field(default_factory=list)
    meters: list[station_pb2.MeterValues] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.service.ocpp_port}/ocpp/"

    def kinds(self, station_id: str) -> list[str]:
        return [str(e.WhichOneof("payload")) for e in self.events if e.station_id == station_id]

    async def wait_for(self, pred: Any, timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not pred():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.01)


async def start_gateway(
    *, bus: MemoryBus | None = None, store: Any = None, upstream: Any = None, **overrides: Any
) -> Gateway:
    """A gateway on an ephemeral port; pass `bus`/`store` to share them between replicas (or to swap in
    a failing adapter)."""
    settings = GatewaySettings(**{"ocpp_port": 0, "ocpp_host": "127.0.0.1", "replica_id": "gw-test", **overrides})
    clock = RealClock()
    if bus is None:
        bus = MemoryBus()
        await bus.start()
    store = store if store is not None else MemoryStore(clock)
    rt = Runtime(settings=settings, bus=bus, store=store, clock=clock)
    svc = GatewayService(rt, make_topology(), settings, **({"upstream": upstream} if upstream is not None else {}))
    gw = Gateway(svc, bus, store)

    async def on_event(rec: Record) -> None:
        gw.events.append(decode(station_pb2.StationEvent, rec.value))

    async def on_meter(rec: Record) -> None:
        gw.meters.append(decode(station_pb2.MeterValues, rec.value))

    await bus.subscribe([STATION_EVENTS.name], f"test-events-{settings.replica_id}", on_event)
    await bus.subscribe([METER_VALUES.name], f"test-meters-{settings.replica_id}", on_meter)
    await svc.start()
    return gw


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = await start_gateway()
    yield gw
    await gw.service.stop()
    await gw.bus.stop()


class RawClient:
    """A station speaking raw OCPP-J; answers our CALLs with `answers[action]` (default {})."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.answers: dict[str, Any] = {"GetConfiguration": {"configurationKey": []}, "GetVariables": None}
        self.received_calls: list[list[Any]] = []
        self._responses: dict[str, asyncio.Future[list[Any]]] = {}
        self._task = asyncio.create_task(self._reader())

    async def _reader(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg[0] == 2:
                    self.received_calls.append(msg)
                    ans = self.answers.get(msg[2], {})
                    if callable(ans):
                        ans = ans(msg)
                    if ans == "ignore":
                        continue
                    if ans is None and msg[2] == "GetVariables":
                        ans = {
                            "getVariableResult": [
                                {
                                    "attributeStatus": "Accepted",
                                    "component": d["component"],
                                    "variable": d["variable"],
                                    "attributeValue": {
                                        "Enabled": "true",
                                        "ProfileStackLevel": "8",
                                        "RateUnit": "A,W",
                                        "PeriodsPerSchedule": "24",
                                        "Entries": "16",
                                    }[d["variable"]["name"]],
                                }
                                for d in msg[3]["getVariableData"]
                            ]
                        }
                    await self.ws.send(json.dumps([3, msg[1], ans]))
                else:
                    fut = self._responses.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    else:
                        self.received_calls.append(msg)
        except Exception:
            pass

    async def call(self, action: str, payload: dict[str, Any], timeout: float = 5.0) -> list[Any]:
        uid = str(next(self.ids))
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._responses[uid] = fut
        await self.ws.send(json.dumps([2, uid, action, payload]))
        return await asyncio.wait_for(fut, timeout)

    async def send_raw(self, data: str | bytes, expect_id: str | None = None, timeout: float = 5.0) -> list[Any]:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._responses[expect_id or "-1"] = fut
        await self.ws.send(data)
        return await asyncio.wait_for(fut, timeout)

    async def detach(self) -> None:
        """Stop the background reader (the test reads `ws` itself from now on)."""
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def close(self) -> None:
        await self.ws.close()
        self._task.cancel()


async def open_client(gw: Gateway, station_id: str, subprotocol: str = "ocpp1.6", **kw: Any) -> RawClient:
    ws = await connect(gw.url + station_id, subprotocols=[subprotocol], **kw)  # type: ignore[list-item]
    return RawClient(ws)


BOOT_16 = {"chargePointVendor": "Acme", "chargePointModel": "X1"}
BOOT_201 = {"reason": "PowerUp", "chargingStation": {"model": "X2", "vendorName": "Acme"}}


async def booted(
    gw: Gateway, station_id: str, subprotocol: str = "ocpp1.6", answers: dict[str, Any] | None = None
) -> RawClient:
    c = await open_client(gw, station_id, subprotocol)
    c.answers.update(answers or {})
    res = await c.call("BootNotification", BOOT_16 if subprotocol == "ocpp1.6" else BOOT_201)
    assert res[0] == 3 and res[2]["status"] == "Accepted", res
    return c
