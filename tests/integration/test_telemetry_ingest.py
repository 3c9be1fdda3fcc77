"""The ingest CLI publishes GridMeterReading records to the REAL Kafka broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts as C
from gridcharge.shared.bus.base import Record
from gridcharge.telemetry import cli

pytestmark = pytest.mark.kafka


async def test_cli_ingest_to_kafka(kafka_bus: Any, unique: str, tmp_path: Path) -> None:
    f = tmp_path / "readings.json"
    f.write_text(
        '[{"node_id": "trafo", "meter_id": "m7", "power_w": [100, 200, 300]},'
        ' {"node_id": "panel", "power_w": [1, 2, 3], "measured_at": "2026-06-01T00:00:00+02:00"}]'
    )
    args = [
        "ingest",
        "--file",
        str(f),
        "--bus",
        "kafka",
        "--kafka-bootstrap",
        kafka_bus.bootstrap,
        "--topic-prefix",
        kafka_bus.prefix,
    ]
    assert await asyncio.to_thread(cli.main, args) == 0
    got: list[grid_pb2.GridMeterReading] = []

    async def collect(rec: Record) -> None:
        got.append(C.decode(grid_pb2.GridMeterReading, rec.value))

    sub = await kafka_bus.subscribe([C.GRID_METER_READINGS.name], f"read-{unique}", collect)
    try:
        for _ in range(300):
            if len(got) == 2:
                break
            await asyncio.sleep(0.1)
    finally:
        await sub.stop()
    by_node = {r.node_id: r for r in got}
    assert by_node["trafo"].power_w.l3 == 300 and by_node["trafo"].meter_id == "m7"
    assert by_node["panel"].measured_at.seconds == 1780264800  # 2026-06-01T00:00+02:00 = 2026-05-31T22:00Z
