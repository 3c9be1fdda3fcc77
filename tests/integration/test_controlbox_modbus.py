"""§14a end to end on real Kafka + Redis: a Modbus TCP control box (pymodbus's server, its own process, started
by deploy/scripts/modbus_box.py) whose contact the test flips over Modbus; the control-box service in its own
process (`python -m gridcharge.controlbox`) reads it and publishes the §14a ExternalLimit on Kafka; the allocation
service (in the test's process) binds the node's budget at that limit, with "§14a" as the binding constraint of
the session, and lifts it when the contact opens. Then the LPC input over HTTP: heartbeats stop → failsafe.
The station's side is what the gateway would publish (StationEvents, and CommandResults accepting every profile):
the gateway and OCPP are not what this test is about (tests/integration/test_allocation_kafka.py covers them)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from gridcharge.allocation.core.allocator import AllocatorConfig
from gridcharge.allocation.core.leases import LeasePolicy
from gridcharge.allocation.service import AllocationService
from gridcharge.command.v1 import command_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts as C
from gridcharge.shared.bus.base import Record
from gridcharge.shared.bus.kafka import KafkaBus
from gridcharge.shared.clock import RealClock
from gridcharge.shared.codec import to_timestamp
from gridcharge.shared.config import Settings
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.store.redis import RedisStore
from gridcharge.shared.topology import load_topology
from gridcharge.station.v1 import station_pb2
from pymodbus.client import AsyncModbusTcpClient

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "dso-energy-guard-integration-token-0000"
TOPOLOGY = """
nominal_voltage_v: 230
site: {id: home, timezone: Europe/Berlin, latitude: 52.5, longitude: 13.4}
nodes: [{id: home, kind: site, limit_a: [40, 40, 40], safety_margin_pct: 0}]
stations: [{id: WB1, node: home, ocpp: "1.6", max_current_a: 32, fallback_current_a: 6}]
"""
RELAY_LIMIT_W = 6000.0  # what the DSO's relay means here (≥ the 4.2 kW minimum of one device)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_for(pred: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.1)


@pytest.fixture
def modbus_box() -> Iterator[int]:
    """pymodbus's TCP server as the site's control box (a process of its own)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy/scripts/modbus_box.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            pytest.fail(f"Modbus control box did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def controlbox(tmp_path: Path, modbus_box: int, kafka_bootstrap: str, redis_url: str, unique: str) -> Iterator[str]:
    """`python -m gridcharge.controlbox` against the box and Kafka; yields its base URL."""
    topo = tmp_path / "topology.yaml"
    topo.write_text(TOPOLOGY)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDCHARGE_")}
    env.update(
        {
            "GRIDCHARGE_BUS": "kafka",
            "GRIDCHARGE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "GRIDCHARGE_REDIS_URL": redis_url,
            "GRIDCHARGE_TOPIC_PREFIX": f"t{unique}.",
            "GRIDCHARGE_STORE_PREFIX": f"t{unique}:",
            "GRIDCHARGE_TOPOLOGY": str(topo),
            "GRIDCHARGE_HTTP_HOST": "127.0.0.1",
            "GRIDCHARGE_HTTP_PORT": str(port),
            "GRIDCHARGE_REPLICA_ID": "it-controlbox",
            "GRIDCHARGE_API_TOKENS": f"guard:operator:{TOKEN}",
            "GRIDCHARGE_CONTROLBOX_NODE": "home",
            "GRIDCHARGE_CONTROLBOX_DEVICES": "1",
            "GRIDCHARGE_CONTROLBOX_RELAY": "modbus",
            "GRIDCHARGE_CONTROLBOX_MODBUS_PORT": str(modbus_box),
            "GRIDCHARGE_CONTROLBOX_MODBUS_KIND": "coil",
            "GRIDCHARGE_CONTROLBOX_MODBUS_ADDRESS": "3",
            "GRIDCHARGE_CONTROLBOX_MODBUS_POLL_S": "0.2",
            "GRIDCHARGE_CONTROLBOX_RELAY_LIMIT_W": str(RELAY_LIMIT_W),
            "GRIDCHARGE_CONTROLBOX_LPC": "http",
            "GRIDCHARGE_CONTROLBOX_LPC_HEARTBEAT_TIMEOUT_S": "4",
        }
    )
    log = (tmp_path / "controlbox.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridcharge.controlbox"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if proc.returncode not in (0, -15):
            print((tmp_path / "controlbox.log").read_text()[-3000:])


@pytest.fixture
async def allocation(kafka_bus: KafkaBus, redis_store: RedisStore, tmp_path: Path) -> AsyncIterator[AllocationService]:
    (tmp_path / "alloc-topology.yaml").write_text(TOPOLOGY)
    topology = load_topology(tmp_path / "alloc-topology.yaml")
    rt = Runtime(
        settings=Settings(bus="kafka", replica_id="it-alloc-14a"), bus=kafka_bus, store=redis_store, clock=RealClock()
    )
    cfg = AllocatorConfig(
        plan_interval_s=1.0, debounce_s=0.2, leases=LeasePolicy(epoch_s=120.0, renew_lead_s=20.0, clock_skew_s=2.0)
    )
    svc = AllocationService(rt, topology, cfg, tick_s=0.2)
    await svc.start()
    for sub in svc._subs:
        await sub.wait_assigned(60)
    yield svc
    await svc.stop()


def node_source(alloc: AllocationService) -> str:
    last = alloc.alloc.last
    return ",".join(last.capacity.source.get("home", ())) if last is not None else ""


def session_binding(alloc: AllocationService) -> str:
    last = alloc.alloc.last
    if last is None:
        return ""
    return ";".join(ex.binding.source for ex in last.explanations.values() if ex.binding is not None)


async def test_relay_and_lpc_to_the_allocation_budget(
    controlbox: str, modbus_box: int, kafka_bus: KafkaBus, allocation: AllocationService
) -> None:
    limits: list[grid_pb2.ExternalLimit] = []

    async def on_limit(rec: Record) -> None:
        limits.append(C.decode(grid_pb2.ExternalLimit, rec.value))

    async def station_accepts(rec: Record) -> None:
        """WB1 behind a gateway accepts every profile (the gateway's CommandResult, as it would publish it)."""
        cmd = C.decode(command_pb2.StationCommand, rec.value)
        res = command_pb2.CommandResult(
            command_id=cmd.command_id,
            station_id=cmd.station_id,
            generation=cmd.generation,
            command_key=cmd.command_key,
            outcome=command_pb2.COMMAND_OUTCOME_ACCEPTED,
        )
        await kafka_bus.publish(C.COMMAND_RESULTS.name, cmd.station_id, res.SerializeToString())

    sub = await kafka_bus.subscribe([C.EXTERNAL_LIMITS.name], "it-14a-observer", on_limit)
    gw = await kafka_bus.subscribe([C.COMMANDS.name], "it-14a-gateway", station_accepts)
    box = AsyncModbusTcpClient("127.0.0.1", port=modbus_box)
    api = httpx.AsyncClient(base_url=controlbox, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    heartbeats: asyncio.Task[None] | None = None
    try:
        await sub.wait_assigned(60)
        await gw.wait_assigned(60)
        assert await box.connect()

        async def ready() -> None:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if (await api.get("/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
            raise AssertionError("controlbox not ready within 60 s")

        async def beat() -> None:  # the DSO's energy guard: heartbeat every second
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    await api.post("/api/controlbox/heartbeat")
                await asyncio.sleep(1.0)

        await ready()
        heartbeats = asyncio.create_task(beat())
        await wait_for(lambda: bool(limits), what="the start-up withdrawal on Kafka")
        # a car charging at WB1 (the gateway's events, as it would publish them)
        for payload in (
            {"connected": station_pb2.Connected(replica_id="gw-0")},
            {"transaction_started": station_pb2.TransactionStarted(transaction_id="7", evse_id=1, connector_id=1)},
        ):
            ev = station_pb2.StationEvent(station_id="WB1", occurred_at=to_timestamp(RealClock().time()), **payload)
            await kafka_bus.publish(C.STATION_EVENTS.name, "WB1", ev.SerializeToString())
        await wait_for(lambda: len(allocation.alloc.book) == 1, what="the session in the allocator")
        for _ in range(100):
            if (await api.get("/api/controlbox/status")).json()["lpc"] == "unlimited_controlled":
                break
            await asyncio.sleep(0.1)
        assert (await api.get("/api/controlbox/status")).json()["lpc"] == "unlimited_controlled", "heartbeats seen"
        assert "§14a" not in node_source(allocation)

        # 1. the DSO closes the contact: the §14a limit on Kafka, the budget binds at it
        assert not (await box.write_coil(3, True, device_id=1)).isError()
        await wait_for(lambda: any(m.source == "§14a" and m.limit_w.l1 > 0 for m in limits), what="§14a limit")
        m = next(m for m in limits if m.source == "§14a" and m.limit_w.l1 > 0)
        assert m.node_id == "home" and m.limit_id == "§14a"
        assert m.limit_w.l1 + m.limit_w.l2 + m.limit_w.l3 == pytest.approx(RELAY_LIMIT_W)
        assert (await api.get("/api/controlbox/status")).json()["reason"] == "relay"
        await wait_for(lambda: "external:§14a" in node_source(allocation), what="budget bound by §14a")
        cap = allocation.alloc.last.capacity.w["home"] if allocation.alloc.last else None
        assert cap is not None and float(cap[:, 0].max()) == pytest.approx(RELAY_LIMIT_W / 3, rel=1e-6)
        await wait_for(lambda: "§14a" in session_binding(allocation), what="session bound by §14a")

        # 2. the contact opens: withdrawn, the budget is back at the node's rating
        n = len(limits)
        assert not (await box.write_coil(3, False, device_id=1)).isError()
        await wait_for(lambda: any(x.valid_to == x.valid_from for x in limits[n:]), what="withdrawal")
        await wait_for(lambda: "§14a" not in node_source(allocation), what="§14a lifted from the budget")

        # 3. LPC: the guard writes a limit, then its heartbeats stop → failsafe 4.2 kW
        r = await api.post("/api/controlbox/lpc", json={"active": True, "limit_w": 9000, "duration_s": 3600})
        assert r.status_code == 200 and r.json()["reason"] == "lpc"
        await wait_for(lambda: any(x.limit_w.l1 * 3 == pytest.approx(9000) for x in limits), what="LPC limit")
        heartbeats.cancel()
        n = len(limits)
        await wait_for(
            lambda: any(x.limit_w.l1 * 3 == pytest.approx(4200) for x in limits[n:]),
            timeout=15,
            what="LPC failsafe limit after the heartbeat stopped",
        )
        st = (await api.get("/api/controlbox/status")).json()
        assert st["lpc"] == "failsafe" and st["limit_w"] == 4200
        fs = next(x for x in limits[n:] if x.limit_w.l1 * 3 == pytest.approx(4200))
        assert fs.valid_to.ToSeconds() - fs.valid_from.ToSeconds() >= 7200 - 10  # the failsafe lasts 2 h
        await wait_for(lambda: "external:§14a" in node_source(allocation), what="failsafe binds the budget")
        metrics = (await api.get("/metrics")).text
        assert 'gridcharge_controlbox_dimming_active{node="home",reason="lpc_failsafe"} 1.0' in metrics
    finally:
        if heartbeats is not None:
            heartbeats.cancel()
        box.close()
        await api.aclose()
        await sub.stop()
        await gw.stop()
