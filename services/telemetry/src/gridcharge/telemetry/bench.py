"""`python -m gridcharge.telemetry.bench [--stations N] [--transformers T]`: throughput of the pure core.

Measures meter values applied per second (decode included) and the time of one full node-load
snapshot (every node, every EVSE, staleness and worst case) on one core.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from gridcharge.shared.topology import parse_topology
from gridcharge.station.v1 import station_pb2
from gridcharge.telemetry.adapters.engine import Engine
from gridcharge.telemetry.adapters.metrics import TelemetryMetrics
from gridcharge.telemetry.core import TelemetryCore
from gridcharge.telemetry.testing import heartbeat, phase_power, status


def bench_topology(stations: int, transformers: int) -> dict[str, Any]:
    per_tx = max(1, stations // transformers)
    nodes: list[dict[str, Any]] = [{"id": "feeder", "kind": "feeder", "limit_a": [1e6] * 3, "metered": True}]
    sts: list[dict[str, Any]] = []
    rot = (["L1", "L2", "L3"], ["L2", "L3", "L1"], ["L3", "L1", "L2"])
    for t in range(transformers):
        nodes.append({"id": f"tx{t}", "kind": "transformer", "parent": "feeder", "limit_a": [1e5] * 3, "metered": True})
        for i in range(per_tx):
            sts.append({"id": f"s{t}-{i}", "node": f"tx{t}", "phase_map": rot[i % 3], "fallback_current_a": 1})
    return {"nodes": nodes, "stations": sts}


def run(stations: int, transformers: int, rounds: int) -> dict[str, float]:
    topo = parse_topology(bench_topology(stations, transformers))
    core = TelemetryCore(topo)
    engine = Engine(core, TelemetryMetrics(), "bench")
    t0 = 1_780_000_000.0
    for s in topo.stations:
        core.on_station_event(heartbeat(s.id, t0), t0)
        core.on_station_event(status(s.id, 1, t0, "Charging"), t0)
    records = []
    for r in range(rounds):
        for s in topo.stations:
            msg: station_pb2.MeterValues = phase_power(s.id, 1, t0 + 10 * (r + 1), 3000, 3000, 3000)
            records.append((t0 + 10 * (r + 1), msg.SerializeToString()))
    start = time.perf_counter()
    for now, value in records:
        engine.handle("gridcharge.station.meter-values.v1", value, now)
    ingest_s = time.perf_counter() - start
    now = t0 + 10 * rounds + 1
    start = time.perf_counter()
    n = 5
    for _ in range(n):
        core.node_loads(now)
    snap_s = (time.perf_counter() - start) / n
    return {
        "stations": len(topo.stations),
        "nodes": len(topo.nodes),
        "records": len(records),
        "ingest_per_s": len(records) / ingest_s,
        "snapshot_ms": snap_s * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stations", type=int, default=10_000)
    p.add_argument("--transformers", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    res = run(a.stations, a.transformers, a.rounds)
    print(
        f"telemetry core: {res['stations']} stations under {res['nodes']} nodes: "
        f"{res['ingest_per_s']:,.0f} meter values/s applied (decode included, {res['records']} records); "
        f"one node-load snapshot {res['snapshot_ms']:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
