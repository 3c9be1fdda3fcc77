"""Proxy mode: the offline queue survives the gateway (embedded in-process store here; real Redis in
tests/integration/test_proxy_upstream.py).

A station's transaction messages queued while the upstream is down are in the shared store before the
station is answered; a second gateway instance on the same store (a restart, or another replica) delivers
them in order once the upstream is back, after the station's last boot, with the upstream's 1.6 transaction
id in the later messages; delivered entries leave the store; the id map stays. At the bound the oldest
meter update leaves the store too (counted); unreadable entries are dropped, counted, and do not block the
queue behind them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gridcharge.shared.clock import RealClock
from gridcharge.shared.store.memory import MemoryStore
from prometheus_client import REGISTRY
from websockets.asyncio.server import Server, ServerConnection, serve

from .conftest import Gateway, booted, start_gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Csms:
    """A plain upstream that answers what the tests send and records it in order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[tuple[str, str, dict[str, Any]]] = []
        self.tx_ids = itertools.count(9001)
        self.server: Server | None = None

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        station = ws.request.path.rsplit("/", 1)[-1]
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] != 2:
                continue
            action, payload = msg[2], msg[3]
            self.got.append((station, action, payload))
            answer: dict[str, Any] = {}
            if action == "BootNotification":
                answer = {"status": "Accepted", "interval": 77, "currentTime": "2030-01-01T00:00:00.000Z"}
            elif action == "StartTransaction":
                answer = {"transactionId": next(self.tx_ids), "idTagInfo": {"status": "Accepted"}}
            elif action == "Heartbeat":
                answer = {"currentTime": "2030-01-01T00:00:00.000Z"}
            await ws.send(json.dumps([3, msg[1], answer]))

    async def start(self) -> None:
        self.server = await serve(self.handler, "127.0.0.1", self.port, subprotocols=["ocpp1.6"])  # type: ignore[list-item]

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def actions(self, station: str) -> list[str]:
        return [a for s, a, _ in self.got if s == station]


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    c = Csms(free_port())
    yield c
    c.stop()


async def _gateway(store: MemoryStore, csms: Csms, replica: str, **kw: Any) -> Gateway:
    return await start_gateway(
        store=store,
        replica_id=replica,
        upstream_url=f"ws://127.0.0.1:{csms.port}/csms",
        upstream_security_profile=0,
        upstream_connect_timeout_s=1.0,
        upstream_call_timeout_s=2.0,
        upstream_backoff_max_s=0.5,
        read_capabilities=False,
        **kw,
    )


async def _stop(gw: Gateway) -> None:
    await gw.service.stop()
    await gw.bus.stop()


def _counted(outcome: str) -> float:
    labels = {"direction": "up", "outcome": outcome}
    return REGISTRY.get_sample_value("gridcharge_gateway_upstream_messages_total", labels) or 0.0


async def until(pred: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "not in time"
        await asyncio.sleep(0.02)


START = {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": "2030-01-01T00:00:00Z"}
METER = [{"timestamp": "2030-01-01T00:05:00Z", "sampledValue": [{"value": "1000"}]}]


async def test_the_queue_of_a_stopped_gateway_is_delivered_by_the_next_one(csms: Csms) -> None:
    store = MemoryStore(RealClock())
    gw1 = await _gateway(store, csms, "gw-a")
    c = await booted(gw1, "CP1")
    start = await c.call("StartTransaction", START, timeout=10)
    local_tx = start[2]["transactionId"]
    assert start[2]["idTagInfo"]["status"] == "Accepted"  # gridcharge's local answer
    for _ in range(2):
        await c.call("MeterValues", {"connectorId": 1, "transactionId": local_tx, "meterValue": METER})
    stop = {"transactionId": local_tx, "meterStop": 2000, "timestamp": "2030-01-01T00:10:00Z"}
    await c.call("StopTransaction", stop)
    queued = await store.hgetall("gw:upstream-queue:CP1")
    assert [json.loads(queued[k])["a"] for k in sorted(queued, key=int)] == [
        "StartTransaction",
        "MeterValues",
        "MeterValues",
        "StopTransaction",
    ]  # in the store before the station got its answers
    await c.close()
    await _stop(gw1)  # a restart: the first instance's memory is gone

    await csms.start()
    gw2 = await _gateway(store, csms, "gw-b")
    try:
        c2 = await booted(gw2, "CP1")  # the station reconnects (here to the other instance)
        await until(lambda: "StopTransaction" in csms.actions("CP1"))
        got = [(a, p) for s, a, p in csms.got if s == "CP1"]
        assert [a for a, _ in got][:5] == [
            "BootNotification",  # the last boot, replayed from the store before the queue
            "StartTransaction",
            "MeterValues",
            "MeterValues",
            "StopTransaction",
        ]
        upstream_id = 9001
        assert all(p["transactionId"] == upstream_id for a, p in got if a in ("MeterValues", "StopTransaction"))
        await until(lambda: not store._h.get("gw:upstream-queue:CP1"))
        assert await store.hgetall("gw:upstream-txids:CP1") == {str(local_tx): str(upstream_id).encode()}
        # the id map serves the live link too: a remote stop by the upstream's id reaches the station by its own
        link = gw2.service.proxy.links["CP1"]  # type: ignore[union-attr]
        assert link.tx_ids.for_station("RemoteStopTransaction", {"transactionId": upstream_id}) == {
            "transactionId": local_tx
        }
        await c2.close()
    finally:
        await _stop(gw2)


async def test_at_the_bound_the_oldest_meter_update_leaves_the_store_and_is_counted(csms: Csms) -> None:
    store = MemoryStore(RealClock())
    gw = await _gateway(store, csms, "gw-a", upstream_queue_max=3)
    try:
        c = await booted(gw, "CP2")
        local_tx = (await c.call("StartTransaction", START, timeout=10))[2]["transactionId"]
        dropped = _counted("dropped")
        for minute in range(3):
            mv = [{"timestamp": f"2030-01-01T00:0{minute}:00Z", "sampledValue": [{"value": str(minute)}]}]
            await c.call("MeterValues", {"connectorId": 1, "transactionId": local_tx, "meterValue": mv})
        stored = await store.hgetall("gw:upstream-queue:CP2")
        entries = [json.loads(stored[k]) for k in sorted(stored, key=int)]
        assert len(entries) == 3 and entries[0]["a"] == "StartTransaction"
        assert [e["p"]["meterValue"][0]["sampledValue"][0]["value"] for e in entries[1:]] == ["1", "2"]
        assert _counted("dropped") == dropped + 1
        await c.close()
    finally:
        await _stop(gw)


async def test_an_unreadable_entry_is_dropped_and_does_not_block_the_queue(csms: Csms) -> None:
    store = MemoryStore(RealClock())
    await store.hset("gw:upstream-queue:CP3", "1", b"{not json")
    await store.hset("gw:upstream-queue:CP3", "2", b'{"a":"Reset","p":{}}')
    good = {"a": "StopTransaction", "p": {"transactionId": 5, "meterStop": 1, "timestamp": "2030-01-01T00:00:00Z"}}
    await store.hset("gw:upstream-queue:CP3", "3", json.dumps(good).encode())
    unreadable = _counted("unreadable")
    await csms.start()
    gw = await _gateway(store, csms, "gw-a")
    try:
        c = await booted(gw, "CP3")
        await until(lambda: "StopTransaction" in csms.actions("CP3"))
        assert "Reset" not in csms.actions("CP3") and _counted("unreadable") == unreadable + 2
        await until(lambda: not store._h.get("gw:upstream-queue:CP3"))
        await c.close()
    finally:
        await _stop(gw)


async def test_a_station_that_moved_gets_its_queue_delivered_once_by_its_new_replica(csms: Csms) -> None:
    """Replica A still holds the queue of a station that disconnected from it (its link waits to deliver);
    the station reconnects to replica B, whose link reads the same queue from the store. When the upstream
    comes back, B delivers it and A's link, seeing the station on B, does not: each message reaches the
    upstream once."""
    store = MemoryStore(RealClock())
    gw_a = await _gateway(store, csms, "gw-a")
    gw_b = await _gateway(store, csms, "gw-b")
    try:
        c = await booted(gw_a, "CP4")
        local_tx = (await c.call("StartTransaction", START, timeout=10))[2]["transactionId"]
        await c.call(
            "StopTransaction", {"transactionId": local_tx, "meterStop": 5, "timestamp": "2030-01-01T00:10:00Z"}
        )
        await c.close()
        await until(lambda: gw_a.service.proxy is not None and gw_a.service.proxy.links["CP4"].draining)
        c2 = await booted(gw_b, "CP4")
        assert len(gw_b.service.proxy.links["CP4"].queue) == 2  # type: ignore[union-attr]
        await csms.start()
        await until(lambda: "StopTransaction" in csms.actions("CP4"))
        await until(lambda: "CP4" not in gw_a.service.proxy.links)  # type: ignore[union-attr]
        await asyncio.sleep(1.0)  # A had every chance to deliver too
        actions = csms.actions("CP4")
        assert actions.count("StartTransaction") == 1 and actions.count("StopTransaction") == 1, actions
        assert actions.count("BootNotification") == 1  # A never opened a second upstream connection for CP4
        assert actions.index("StartTransaction") < actions.index("StopTransaction")
        await c2.close()
    finally:
        await _stop(gw_a)
        await _stop(gw_b)
