"""Proxy mode against a hostile upstream CSMS (a raw WebSocket server on loopback): bogus answers, garbage,
answers to unknown ids, frames over the size limit and a flood of CALLs are bounded; the station stays
served and other stations are not affected."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from websockets.asyncio.server import ServerConnection, serve

from .conftest import BOOT_16, Gateway, booted, start_gateway

Script = Callable[[ServerConnection, dict[str, Any]], Awaitable[None]]


class Hostile:
    """An upstream that runs `script` per connection; counts connections and what it got back."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.frames: list[Any] = []
        self.port = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        try:
            await self.script(ws, {"hostile": self})
        except Exception:
            pass


async def answer_bogus(ws: ServerConnection, _: dict[str, Any]) -> None:
    async for raw in ws:
        msg = json.loads(raw)
        if msg[0] == 2:
            await ws.send(json.dumps([3, msg[1], {"status": 5, "interval": "soon"}]))  # fails the schema


@pytest.fixture
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[Script], Awaitable[tuple[Gateway, Hostile]]]]:
    made: list[tuple[Gateway, Any]] = []

    async def _make(script: Script) -> tuple[Gateway, Hostile]:
        hostile = Hostile(script)
        server = await serve(
            hostile.handler,
            "127.0.0.1",
            0,
            subprotocols=["ocpp1.6", "ocpp2.0.1"],  # type: ignore[list-item]
            max_size=None,
        )
        hostile.port = int(next(iter(server.sockets)).getsockname()[1])
        gw = await start_gateway(
            upstream_url=f"ws://127.0.0.1:{hostile.port}/csms",
            upstream_security_profile=0,
            upstream_call_timeout_s=1.0,
            upstream_connect_timeout_s=2.0,
            upstream_backoff_max_s=1.0,
            read_capabilities=False,
        )
        made.append((gw, server))
        return gw, hostile

    yield _make
    for gw, server in made:
        await gw.service.stop()
        await gw.bus.stop()
        server.close()


async def test_bogus_answers_are_replaced_by_local_ones(make: Any) -> None:
    gw, hostile = await make(answer_bogus)
    before = (
        REGISTRY.get_sample_value("gridcharge_gateway_upstream_messages_total", {"direction": "up", "outcome": "bogus"})
        or 0.0
    )
    c = await booted(gw, "CP1")  # the upstream's Accepted/"soon" is not sent on
    assert hostile.connections == 1
    res = await c.call("BootNotification", BOOT_16)
    assert res[2]["status"] == "Accepted" and res[2]["interval"] == gw.service.settings.heartbeat_interval_s
    res = await c.call("Authorize", {"idTag": "T1"})
    assert res[0] == 3 and res[2]["idTagInfo"]["status"] == "Accepted"  # accept-all, the local policy
    after = REGISTRY.get_sample_value(
        "gridcharge_gateway_upstream_messages_total", {"direction": "up", "outcome": "bogus"}
    )
    assert after == before + 3  # all three answers came back, and were refused
    await c.close()


async def test_garbage_unknown_ids_and_oversized_frames_do_not_reach_the_station(make: Any) -> None:
    async def script(ws: ServerConnection, ctx: dict[str, Any]) -> None:
        hostile: Hostile = ctx["hostile"]
        await ws.send("not json at all")
        await ws.send(json.dumps([3, "no-such-call", {"status": "Accepted"}]))
        await ws.send(json.dumps([4, "also-unknown", "GenericError", "x", {}]))
        await ws.send(json.dumps([2, "u1", "NoSuchAction", {}]))
        await ws.send(json.dumps([2, "u2", "Reset", {"type": "Sideways"}]))  # fails the schema
        if hostile.connections == 1:
            await ws.send(json.dumps([2, "big", "DataTransfer", {"vendorId": "x", "data": "A" * 200_000}]))
        async for raw in ws:
            hostile.frames.append(json.loads(raw))

    gw, hostile = await make(script)
    c = await booted(gw, "CP1")
    await gw.wait_for(lambda: hostile.connections >= 2, 10)  # 1009 on the big frame, then a reconnect
    await gw.wait_for(lambda: sum(1 for f in hostile.frames if f[0] == 4) >= 2, 10)
    errors = {f[1]: f[2] for f in hostile.frames if f[0] == 4}
    assert errors["u1"] == "NotImplemented" and errors["u2"] in (
        "FormationViolation",
        "FormatViolation",
        "PropertyConstraintViolation",
    )
    assert [m for m in c.received_calls if m[0] == 2] == []  # nothing reached the station
    res = await c.call("Heartbeat", {})
    assert res[0] == 3
    await c.close()


async def test_a_flood_of_upstream_calls_is_bounded_and_other_stations_are_served(make: Any) -> None:
    async def script(ws: ServerConnection, ctx: dict[str, Any]) -> None:
        hostile: Hostile = ctx["hostile"]
        if ws.request is not None and ws.request.path.endswith("/CP1"):
            for i in range(400):
                await ws.send(json.dumps([2, f"f{i}", "Reset", {"type": "Soft"}]))
        async for raw in ws:
            msg = json.loads(raw)
            hostile.frames.append(msg)
            if msg[0] == 2:
                await ws.send(
                    json.dumps(
                        [3, msg[1], {"currentTime": "2030-01-01T00:00:00.000Z"} if msg[2] == "Heartbeat" else {}]
                    )
                )

    gw, hostile = await make(script)
    slow = await booted(gw, "CP1", answers={"Reset": "ignore"})  # the station never answers a Reset
    other = await booted(gw, "CP2")
    await asyncio.sleep(1.0)
    resets = [m for m in slow.received_calls if m[0] == 2 and m[2] == "Reset"]
    assert 1 <= len(resets) <= 8  # waiting calls are bounded
    busy = [f for f in hostile.frames if f[0] == 4 and f[3].startswith("busy")]
    assert len(busy) + len(resets) < 400  # the rest: rate limit or "busy"
    res = await other.call("Heartbeat", {}, timeout=2.0)
    assert res[2]["currentTime"].startswith("2030")  # CP2's link works normally
    await slow.close()
    await other.close()
