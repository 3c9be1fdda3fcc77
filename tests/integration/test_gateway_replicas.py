"""Two gateway processes (`python -m gridcharge.gateway`) on real Kafka + Redis: commands reach the
replica that owns the station; after the station reconnects to the other replica, ownership moves and the
old replica can no longer send; a station connected nowhere gets exactly one OFFLINE result; a station that
booted on one replica reconnects to the other without a new boot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.shared.bus.base import Record
from gridcharge.shared.contracts import COMMAND_RESULTS, COMMANDS, STATION_EVENTS, decode
from gridcharge.station.v1 import station_pb2
from websockets.asyncio.client import connect

pytestmark = [pytest.mark.kafka, pytest.mark.redis]
API_TOKEN = "integration-test-operator-token-0123456789"
Oc = command_pb2.CommandOutcome
TOPOLOGY = """
nodes:
  - {id: site, kind: site, limit_a: [400, 400, 400]}
stations:
  - {id: CP1, node: site}
  - {id: CP2, node: site}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    def __init__(self, replica: str, unique: str, topology: Path, log: Path, kafka: str, redis: str) -> None:
        self.replica, self.ocpp_port, self.http_port = replica, free_port(), free_port()
        env = {
            **os.environ,
            "GRIDCHARGE_BUS": "kafka",
            "GRIDCHARGE_KAFKA_BOOTSTRAP": kafka,
            "GRIDCHARGE_REDIS_URL": redis,
            "GRIDCHARGE_TOPIC_PREFIX": f"t{unique}.",
            "GRIDCHARGE_STORE_PREFIX": f"t{unique}:",
            "GRIDCHARGE_TOPOLOGY": str(topology),
            "GRIDCHARGE_REPLICA_ID": replica,
            "GRIDCHARGE_OCPP_HOST": "127.0.0.1",
            "GRIDCHARGE_OCPP_PORT": str(self.ocpp_port),
            "GRIDCHARGE_HTTP_HOST": "127.0.0.1",
            "GRIDCHARGE_HTTP_PORT": str(self.http_port),
            "GRIDCHARGE_CALL_TIMEOUT_S": "5",
            "GRIDCHARGE_API_TOKENS": f"it:operator:{API_TOKEN}",
        }
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridcharge.gateway"], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def url(self, station: str) -> str:
        return f"ws://127.0.0.1:{self.ocpp_port}/ocpp/{station}"

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"{self.replica} exited"
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{self.http_port}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.3)
        raise AssertionError(f"{self.replica} not ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def replicas(tmp_path: Path, unique: str, kafka_bootstrap: str, redis_url: str) -> Iterator[list[GatewayProcess]]:
    topo = tmp_path / "topology.yaml"
    topo.write_text(TOPOLOGY)
    procs = [
        GatewayProcess(r, unique, topo, tmp_path / f"{r}.log", kafka_bootstrap, redis_url) for r in ("gw-a", "gw-b")
    ]
    yield procs
    for p in procs:
        p.stop()


class Station:
    """Minimal 1.6 station: boots, answers GetConfiguration and SetChargingProfile, records CALLs."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.calls: list[list[Any]] = []
        self.answers: dict[str, asyncio.Future[list[Any]]] = {}
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg[0] == 2:
                    self.calls.append(msg)
                    payload = {
                        "GetConfiguration": {"configurationKey": []},
                        "SetChargingProfile": {"status": "Accepted"},
                    }.get(msg[2], {})
                    await self.ws.send(json.dumps([3, msg[1], payload]))
                elif msg[1] in self.answers:
                    self.answers[msg[1]].set_result(msg)

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        uid = f"{action}-{len(self.answers)}"
        self.answers[uid] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps([2, uid, action, payload]))
        return await asyncio.wait_for(self.answers[uid], 10)


async def boot(url: str) -> Station:
    st = Station(await connect(url, subprotocols=["ocpp1.6"]))  # type: ignore[list-item]
    res = await st.call("BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "X"})
    assert res[2]["status"] == "Accepted"
    return st


def profile_cmd(command_id: str, gen: int) -> command_pb2.StationCommand:
    cmd = command_pb2.StationCommand(
        command_id=command_id, station_id="CP1", generation=gen, command_key="profile/0/StationMax"
    )
    sp = cmd.set_charging_profile
    p = sp.profile
    p.profile_id, p.stack_level, p.purpose, p.kind = 1, 0, command_pb2.PROFILE_PURPOSE_STATION_MAX, "Absolute"
    p.rate_unit = common_pb2.RATE_UNIT_A
    p.periods.add(start_period_s=0, limit=16)
    return cmd


async def test_two_replicas_route_commands_to_the_owner(replicas: list[GatewayProcess], kafka_bus: Any) -> None:
    a, b = replicas
    results: list[command_pb2.CommandResult] = []
    events: list[station_pb2.StationEvent] = []

    async def on_result(rec: Record) -> None:
        results.append(decode(command_pb2.CommandResult, rec.value))

    async def on_event(rec: Record) -> None:
        events.append(decode(station_pb2.StationEvent, rec.value))

    await kafka_bus.ensure_topics([COMMANDS.name, COMMAND_RESULTS.name, STATION_EVENTS.name])
    await asyncio.gather(a.wait_ready(), b.wait_ready())
    for topic, handler in ((COMMAND_RESULTS.name, on_result), (STATION_EVENTS.name, on_event)):
        sub = await kafka_bus.subscribe([topic], f"test-{topic}", handler)
        await sub.wait_assigned()

    async def results_for(cid: str, n: int = 1, timeout: float = 30) -> list[command_pb2.CommandResult]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [r for r in results if r.command_id == cid]
            if len(got) >= n:
                return got
            await asyncio.sleep(0.1)
        raise AssertionError(f"no result for {cid}: {results}")

    st_a = await boot(a.url("CP1"))
    await kafka_bus.publish(COMMANDS.name, "CP1", profile_cmd("c1", 1).SerializeToString())
    (r1,) = await results_for("c1")
    assert r1.outcome == Oc.COMMAND_OUTCOME_ACCEPTED and r1.meta.producer == "gateway/gw-a"
    assert [c[2] for c in st_a.calls].count("SetChargingProfile") == 1

    # the station reconnects to replica b while its old socket on a is still open (half-open link)
    st_b = await boot(b.url("CP1"))
    await kafka_bus.publish(COMMANDS.name, "CP1", profile_cmd("c2", 2).SerializeToString())
    (r2,) = await results_for("c2")
    assert r2.outcome == Oc.COMMAND_OUTCOME_ACCEPTED and r2.meta.producer == "gateway/gw-b"
    await asyncio.sleep(2)  # give replica a every chance to (wrongly) send or answer too
    assert len([r for r in results if r.command_id == "c2"]) == 1
    assert [c[2] for c in st_a.calls].count("SetChargingProfile") == 1  # nothing more on the stale socket
    assert [c[2] for c in st_b.calls].count("SetChargingProfile") == 1
    await asyncio.wait_for(st_a.ws.wait_closed(), 10)  # a closed its stale socket
    connected = [e for e in events if e.WhichOneof("payload") == "connected" and e.station_id == "CP1"]
    assert [e.connected.replica_id for e in connected] == ["gw-a", "gw-b"]
    assert connected[1].connected.ownership_epoch > connected[0].connected.ownership_epoch

    # an older generation is never applied after a newer one, whichever replica holds the socket
    await kafka_bus.publish(COMMANDS.name, "CP1", profile_cmd("c3", 1).SerializeToString())
    (r3,) = await results_for("c3")
    assert r3.outcome == Oc.COMMAND_OUTCOME_SUPERSEDED

    # the operator API on replica a reaches the station on replica b through the bus
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
        listing = (await http.get(f"http://127.0.0.1:{a.http_port}/api/v1/stations")).json()
        assert [(s["station_id"], s["replica_id"]) for s in listing] == [("CP1", "gw-b")]
        resp = await http.post(
            f"http://127.0.0.1:{a.http_port}/api/v1/stations/CP1/commands/get_configuration",
            json={"keys": ["HeartbeatInterval"]},
        )
        assert resp.status_code == 200 and resp.json()["outcome"] == "COMMAND_OUTCOME_ACCEPTED"

    # disconnected everywhere: exactly one OFFLINE result
    await st_b.ws.close()
    await asyncio.sleep(1)
    await kafka_bus.publish(COMMANDS.name, "CP1", profile_cmd("c4", 4).SerializeToString())
    (r4,) = await results_for("c4")
    assert r4.outcome == Oc.COMMAND_OUTCOME_OFFLINE
    await asyncio.sleep(2)
    assert len([r for r in results if r.command_id == "c4"]) == 1

    # a boot is per station (Redis), not per connection: CP1 booted on b, reconnects to a without rebooting
    st_again = Station(await connect(a.url("CP1"), subprotocols=["ocpp1.6"]))  # type: ignore[list-item]
    res = await st_again.call("Heartbeat", {})
    assert res[0] == 3, res
    await st_again.ws.close()
