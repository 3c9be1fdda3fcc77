"""`python -m gridcharge.telemetry.cli ingest --file readings.csv|json --bus kafka|memory`

Publishes grid-meter readings from a file to gridcharge.grid.meter-readings.v1 for sites without a
Kafka producer of their own (file format: gridcharge.telemetry.core.ingest). `--bus memory` only
validates and counts (nothing outside this process would see the records). Exit 0 = published,
2 = invalid input (every problem listed with its line), 1 = the bus failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gridcharge.shared import contracts as C
from gridcharge.shared.bus.base import Bus
from gridcharge.shared.bus.kafka import KafkaBus
from gridcharge.shared.bus.memory import MemoryBus
from gridcharge.shared.config import Settings
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.topology import load_topology
from gridcharge.telemetry.core.ingest import IngestError, ReadingIn, check_nodes, parse_file_text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gridcharge.telemetry.cli", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("ingest", help="publish grid-meter readings from a CSV or JSON file")
    i.add_argument("--file", required=True, type=Path, help="readings file (.csv or .json)")
    i.add_argument("--format", choices=["csv", "json"], default=None, help="default: from the file extension")
    i.add_argument("--bus", choices=["kafka", "memory"], default=None, help="default: GRIDCHARGE_BUS")
    i.add_argument(
        "--config",
        type=Path,
        default=None,
        help="topology YAML: reject readings of unknown nodes (default: GRIDCHARGE_TOPOLOGY if set)",
    )
    i.add_argument("--kafka-bootstrap", default=None)
    i.add_argument("--topic-prefix", default=None)
    return p


async def publish(readings: list[ReadingIn], bus: Bus, now_s: float, producer: str) -> int:
    await bus.start()
    try:
        for r in readings:
            await bus.publish(C.GRID_METER_READINGS.name, r.node_id, r.to_proto(now_s, producer).SerializeToString())
        await bus.flush()
    finally:
        await bus.stop()
    return len(readings)


def ingest(args: argparse.Namespace) -> int:
    settings = Settings.from_env(bus=args.bus, kafka_bootstrap=args.kafka_bootstrap, topic_prefix=args.topic_prefix)
    fmt = args.format or ("json" if args.file.suffix.lower() == ".json" else "csv")
    try:
        text = args.file.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"ingest: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        readings = parse_file_text(text, fmt)
        topo_path = args.config or settings.topology
        if topo_path is not None:
            check_nodes(readings, set(load_topology(topo_path).node_by_id))
    except IngestError as exc:
        print(f"ingest: {args.file}: {len(exc.errors)} problem(s):", file=sys.stderr)
        for e in exc.errors:
            print(f"  {'.'.join(str(x) for x in e['loc'])}: {e['msg']}", file=sys.stderr)
        return 2
    bus: Bus
    if settings.bus == "kafka":
        bus = KafkaBus(settings.kafka_bootstrap, prefix=settings.topic_prefix, client_id="telemetry-ingest")
    else:
        bus = MemoryBus()
    try:
        n = asyncio.run(publish(readings, bus, time.time(), f"telemetry-cli/{settings.replica_id}"))
    except Exception as exc:
        print(f"ingest: publishing failed: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
        return 1
    where = (
        f"kafka {settings.kafka_bootstrap} topic {settings.topic_prefix}{C.GRID_METER_READINGS.name}"
        if settings.bus == "kafka"
        else "the in-memory bus (validation only: nothing left this process)"
    )
    print(f"ingest: {n} reading(s) published to {where}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return ingest(args)
    except ConfigError as exc:
        print(f"ingest: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
