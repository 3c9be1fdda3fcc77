"""Kafka broker restart in the middle of a run (`bash deploy/scripts/kafka.sh restart`): no command is lost
(every StationCommand on the bus gets a CommandResult) and none is applied out of order (per station and
command key, the generations the stations accepted only ever increase).

Timeline (real time): cars arrive at 5 s and charge under short leases (so the allocator keeps commanding);
the broker restarts at 30 s; the allocator is stopped at 95 s so the last commands can drain; at 120 s the
run ends and both topics are read back from the broker.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from gridcharge.command.v1 import command_pb2
from gridcharge.shared import contracts
from gridcharge.shared.bus.base import Record
from gridcharge.simulator.scenario import Scenario, build_scenario, scenario_path

sys.path.insert(0, str(Path(__file__).parent))
from harness import ROOT, Cluster, Timeline, require_infra, run_timeline

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(600)]
Oc = command_pb2.CommandOutcome


def _scenario() -> Scenario:
    data = yaml.safe_load(scenario_path("office").read_text(encoding="utf-8"))
    now = datetime.now(UTC).replace(microsecond=0)

    def at(s: float) -> str:
        return (now + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")

    data.update(
        {
            "start": at(0),
            "duration": "120s",
            "step": "1s",
            "meter_interval": "5s",
            "grid_meter_interval": "2s",
            "events": [],
            "fleet": [
                {
                    "stations": "office-*",
                    "arrival": at(5),
                    "arrival_std": "2s",
                    "departure": at(115),
                    "departure_std": "2s",
                    "min_stay": "60s",
                    "battery_kwh": [20, 20],
                    "arrival_soc": [0.5, 0.5],
                    "target_soc": [0.6, 0.6],
                    "max_current_a": [16, 32],
                    "share": 0.5,
                }
            ],
        }
    )
    return build_scenario(data, "office (kafka restart, e2e)")


async def _read_topic(bootstrap: str, prefix: str, topic: str, idle_s: float = 4.0) -> list[Record]:
    from gridcharge.shared.bus.kafka import KafkaBus

    bus = KafkaBus(bootstrap, prefix=prefix, client_id="e2e-reader")
    await bus.start()
    got: list[Record] = []
    last = time.monotonic()

    async def handle(rec: Record) -> None:
        nonlocal last
        got.append(rec)
        last = time.monotonic()

    sub = await bus.subscribe([topic], f"reader-{uuid.uuid4().hex[:8]}", handle, from_beginning=True)
    await sub.wait_assigned()
    while time.monotonic() - last < idle_s:  # noqa: ASYNC110 - idle detection, not an event
        await asyncio.sleep(0.2)
    await bus.stop()
    return got


def test_kafka_restart_no_command_lost_none_out_of_order() -> None:
    require_infra()
    unique = uuid.uuid4().hex[:10]
    workdir = Path(tempfile.mkdtemp(prefix=f"e2e-kafka-{unique}-"))
    cluster = Cluster(_scenario(), unique, workdir, gateways=1, lease_s=20.0, make_scenario=_scenario)
    restart: dict[str, Any] = {}

    async def restart_kafka(tl: Timeline) -> None:
        t = time.monotonic()
        res = await asyncio.to_thread(
            subprocess.run,
            ["bash", "deploy/scripts/kafka.sh", "restart"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        restart.update(rc=res.returncode, seconds=time.monotonic() - t, err=res.stderr[-500:])

    def stop_allocator(tl: Timeline) -> None:
        cluster.procs["allocation"].stop()

    try:
        asyncio.run(
            run_timeline(cluster, [(30.0, "kafka_restart", restart_kafka), (95.0, "allocator_stopped", stop_allocator)])
        )
    except Exception:
        for name in cluster.procs:
            print(f"--- {name} ---\n{cluster.tail(name)}")
        raise
    assert restart.get("rc") == 0, f"kafka.sh restart failed: {restart}"
    bootstrap = os.environ.get("GRIDCHARGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    cmds = asyncio.run(_read_topic(bootstrap, cluster.prefix, contracts.COMMANDS.name))
    results = asyncio.run(_read_topic(bootstrap, cluster.prefix, contracts.COMMAND_RESULTS.name))
    commands = {contracts.decode(command_pb2.StationCommand, r.value).command_id for r in cmds}
    decoded = [contracts.decode(command_pb2.CommandResult, r.value) for r in results]
    answered = {r.command_id for r in decoded}
    assert commands, "the allocator sent no command"
    lost = commands - answered
    assert not lost, f"{len(lost)} of {len(commands)} commands never got a result (logs in {workdir})"
    # results of one station share a partition (key = station id), so their order is the order applied
    applied: dict[tuple[str, str], int] = {}
    out_of_order = []
    for r in decoded:
        if r.outcome != Oc.COMMAND_OUTCOME_ACCEPTED or not r.command_key:
            continue
        key = (r.station_id, r.command_key)
        if key in applied and r.generation <= applied[key]:
            out_of_order.append((key, applied[key], r.generation))
        applied[key] = max(applied.get(key, 0), r.generation)
    assert not out_of_order, f"applied out of order: {out_of_order[:5]}"
