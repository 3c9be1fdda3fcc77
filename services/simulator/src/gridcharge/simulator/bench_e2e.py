"""`gridcharge bench e2e`: overload reaction time of the distributed cluster on real Kafka and Redis.

1,000 simulated connectors (100 stations of one EVSE under each of 10 transformers; `--quick`: 100 under 2)
charge under the allocator's leases. A trial injects one GridMeterReading that shows transformer k 20 % over
its limit and measures, at the stations, the time until every charging station under k has accepted a
profile that lowers its limit (gateway, telemetry and allocation run as their own processes, like `make up`).
In the same run, the floor: a bare Kafka produce→consume round trip on the same broker.
Figures: p50/p99 of the per-trial time (the slowest affected station) and of the per-station times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from gridcharge.shared import contracts
from gridcharge.shared.bus.base import Record
from gridcharge.shared.bus.kafka import KafkaBus
from gridcharge.shared.clock import RealClock
from gridcharge.shared.config import Settings
from gridcharge.shared.topology import Topology, parse_topology
from gridcharge.simulator.ev import Ev
from gridcharge.simulator.grid import meter_reading
from gridcharge.simulator.stations import StationClient, StationModel

BENCH_DOC = Path("docs/benchmarks.md")


def bench_topology(transformers: int, per_tx: int) -> dict[str, Any]:
    """`transformers` metered transformers, each with `per_tx` single-EVSE 3-phase 16 A stations."""
    nodes: list[dict[str, Any]] = [{"id": "feeder", "kind": "feeder", "limit_a": [1e6, 1e6, 1e6]}]
    stations = []
    for k in range(transformers):
        # limit: every station at 10 A, so the allocator's grants are above the fallback (6 A) and can be lowered
        lim = per_tx * 10.0
        nodes.append({"id": f"tx{k:02d}", "kind": "transformer", "parent": "feeder", "limit_a": [lim, lim, lim],
                      "metered": True})
        for i in range(per_tx):
            stations.append({"id": f"b{k:02d}-{i:03d}", "node": f"tx{k:02d}", "ocpp": "2.0.1" if i % 2 else "1.6",
                             "max_current_a": 16, "fallback_current_a": 6})
    return {"site": {"id": "bench"}, "nodes": nodes, "stations": stations}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


async def kafka_floor(bootstrap: str, prefix: str, n: int = 200) -> list[float]:
    """Bare produce→consume round trips (s) on the same broker: one record at a time, acks=all."""
    bus = KafkaBus(bootstrap, prefix=prefix, client_id="bench-floor")
    await bus.start()
    topic = "bench.floor"
    got: asyncio.Queue[float] = asyncio.Queue()

    async def handle(rec: Record) -> None:
        got.put_nowait(time.perf_counter())

    sub = await bus.subscribe([topic], "bench-floor", handle, from_beginning=False)
    await sub.wait_assigned()
    await asyncio.sleep(1.0)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await bus.publish(topic, f"k{i % 10}", b"x")
        t1 = await asyncio.wait_for(got.get(), 10)
        out.append(t1 - t0)
    await bus.stop()
    return out


class _Trace:
    """Producer timestamps of NodeLoad, commands and command results seen during the run (diagnostics only:
    where a trial's time goes; the figures come from the stations)."""

    TOPICS = (contracts.NODE_LOAD.name, contracts.COMMANDS.name, contracts.COMMAND_RESULTS.name)

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float]] = []   # (topic, key, producer timestamp s)

    async def handle(self, rec: Record) -> None:
        self.seen.append((rec.topic, rec.key, rec.timestamp_ms / 1000.0))

    def stages(self, t0: float, t1: float, node: str, stations: set[str]) -> str:
        """Seconds after `t0` (until `t1`): first NodeLoad of `node`, the bursts of commands to `stations`
        (start×count) and their last result."""
        nl = [t for topic, k, t in self.seen if topic == contracts.NODE_LOAD.name and k == node and t0 <= t <= t1]
        cmd = sorted(t for topic, k, t in self.seen
                     if topic == contracts.COMMANDS.name and k in stations and t0 <= t <= t1)
        res = [t for topic, k, t in self.seen
               if topic == contracts.COMMAND_RESULTS.name and k in stations and t0 <= t <= t1]
        bursts: list[list[float]] = []
        for t in cmd:
            if bursts and t - bursts[-1][-1] < 0.1:
                bursts[-1].append(t)
            else:
                bursts.append([t])
        first_nl = f"{min(nl) - t0:.3f}" if nl else "-"
        last_res = f"{max(res) - t0:.3f}" if res else "-"
        return (f"nodeload {first_nl}, commands " + " ".join(f"{b[0] - t0:.2f}×{len(b)}" for b in bursts)
                + f", last result {last_res}")


class _Procs:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, module: str, **extra: str) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", module], env={**self.env, **extra},
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


async def run_bench(transformers: int, per_tx: int, trials: int, bootstrap: str, redis_url: str, warmup: int = 1,
                    log: Any = print) -> dict[str, Any]:
    unique = uuid.uuid4().hex[:8]
    prefix = f"bench{unique}."
    workdir = Path(tempfile.mkdtemp(prefix="gridcharge-bench-e2e-"))
    topo_doc = bench_topology(transformers, per_tx)
    topo: Topology = parse_topology(topo_doc, "bench")
    (workdir / "topology.yaml").write_text(yaml.safe_dump(topo_doc), encoding="utf-8")
    ocpp_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDCHARGE_")}
    env.update({"GRIDCHARGE_BUS": "kafka", "GRIDCHARGE_TOPIC_PREFIX": prefix, "GRIDCHARGE_STORE_PREFIX":
                f"bench{unique}:", "GRIDCHARGE_TOPOLOGY": str(workdir / "topology.yaml"),
                "GRIDCHARGE_KAFKA_BOOTSTRAP": bootstrap, "GRIDCHARGE_REDIS_URL": redis_url,
                "GRIDCHARGE_LOG_LEVEL": "WARNING", "GRIDCHARGE_HTTP_HOST": "127.0.0.1",
                "GRIDCHARGE_OCPP_HOST": "127.0.0.1", "GRIDCHARGE_OCPP_PORT": str(ocpp_port),
                "GRIDCHARGE_WEATHER_BASE_URL": "http://127.0.0.1:9", "PYTHONUNBUFFERED": "1"})
    procs = _Procs(workdir, env)
    log(f"bench e2e: {len(topo.stations)} connectors under {transformers} transformers; logs in {workdir}")
    floor = await kafka_floor(bootstrap, prefix)
    for svc in ("gateway", "telemetry", "allocation"):
        procs.start(svc, f"gridcharge.{svc}", GRIDCHARGE_HTTP_PORT=str(_free_port()), GRIDCHARGE_REPLICA_ID=svc)
    clock = RealClock()
    bus = KafkaBus(bootstrap, prefix=prefix, client_id="bench-driver")
    await bus.start()
    trace = _Trace()
    await bus.subscribe(list(_Trace.TOPICS), "bench-trace", trace.handle, from_beginning=False)
    clients: dict[str, StationClient] = {}
    try:
        # a fleet does not connect in one millisecond: ramp up in batches (also keeps the gateway's Redis pool sane)
        batch = 50
        for i in range(0, len(topo.stations), batch):
            group = []
            for st in topo.stations[i:i + batch]:
                c = StationClient(StationModel(st, topo.nominal_voltage_v), [f"ws://127.0.0.1:{ocpp_port}/ocpp"],
                                  clock, meter_interval_s=30.0, response_timeout_s=30.0, reconnect_s=1.0)
                clients[st.id] = c
                group.append(c)
                c.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in group)), 30)
        deadline = time.monotonic() + 120
        while sum(c.connected.is_set() for c in clients.values()) < len(clients):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {sum(c.connected.is_set() for c in clients.values())} stations connected")
            await asyncio.sleep(0.5)
        log(f"bench e2e: {len(clients)} stations connected; plugging in cars")
        ids = list(clients)
        for i in range(0, len(ids), batch):
            now = clock.time()
            for sid in ids[i:i + batch]:
                clients[sid].plug_in(1, Ev(sid, 100_000, 0.2, 0.9, now, now + 8 * 3600, max_current_a=16), now)
            await asyncio.gather(*(clients[sid].tick(now) for sid in ids[i:i + batch]))
        log("bench e2e: all stations connected and charging; waiting for leases")

        async def physics() -> None:
            while True:
                t = clock.time()
                for c in clients.values():
                    c.model.step(t, 1.0)
                await asyncio.gather(*(c.tick(t) for c in clients.values()))
                await asyncio.sleep(1.0)

        loop_task = asyncio.create_task(physics())
        deadline = time.monotonic() + 240
        while True:
            tx = sum(1 for c in clients.values() if c.model.evses[1].limit_source == "Tx")
            if tx >= 0.95 * len(clients) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        log(f"bench e2e: {tx} of {len(clients)} stations under a Tx lease; starting {trials} trials")
        per_trial: list[float] = []
        per_station: list[float] = []
        affected: list[int] = []
        warm: list[float] = []
        misses = 0
        for n in range(warmup + trials):
            # the first overload(s) after start-up are warm-up: reported apart, not in the figures
            warming, trial = n < warmup, n - warmup
            k = n % transformers
            node = f"tx{k:02d}"
            under = [sid for sid in clients if topo.station_by_id[sid].node == node]
            limit = topo.limit_w(node)
            before = {sid: clients[sid].model.profiles.evse_limit_a(1, clock.time(), clients[sid].model.evses[1].tx,
                                                                    3, topo.nominal_voltage_v)[0] for sid in under}
            marks = {sid: len(clients[sid].profile_log) for sid in under}
            t0 = time.time()
            over = [lim * 1.2 for lim in limit]
            await bus.publish(contracts.GRID_METER_READINGS.name, node,
                              meter_reading(node, t0, over, topo.nominal_voltage_v, float("nan"), "bench"))
            # the limiter may lower only as many stations as the overload needs: a trial ends when every
            # station under k was lowered, or 3 s after the last lowering seen (at most 15 s)
            done: dict[str, float] = {}
            deadline = time.monotonic() + 15
            last_new = time.monotonic()
            while len(done) < len(under) and time.monotonic() < deadline:
                if done and time.monotonic() - last_new > 3.0:
                    break
                for sid in under:
                    if sid in done:
                        continue
                    c = clients[sid]
                    new = [t for t, ok, _ in c.profile_log[marks[sid]:] if ok]
                    lim_now = c.model.profiles.evse_limit_a(1, clock.time(), c.model.evses[1].tx, 3,
                                                            topo.nominal_voltage_v)[0]
                    b = before[sid]
                    if new and lim_now is not None and (b is None or lim_now < b - 1e-6):
                        done[sid] = new[-1] - t0
                        last_new = time.monotonic()
                await asyncio.sleep(0.005)
            if warming:
                warm.append(max(done.values()) if done else float("nan"))
            elif not done:
                misses += 1
            else:
                per_trial.append(max(done.values()))
                per_station.extend(done.values())
                affected.append(len(done))
            label = f"warm-up {n + 1}/{warmup}" if warming else f"trial {trial + 1}/{trials}"
            log(f"  {label} {node}: {len(done)}/{len(under)} lowered, slowest "
                f"{max(done.values()) if done else float('nan'):.3f} s; "
                f"{trace.stages(t0, time.time(), node, set(under))}")
            # back to normal: a reading well under the limit, and time for the allocator to re-grant
            await bus.publish(contracts.GRID_METER_READINGS.name, node,
                              meter_reading(node, time.time(), [lim * 0.3 for lim in limit],
                                            topo.nominal_voltage_v, float("nan"), "bench"))
            await asyncio.sleep(6.0)
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
    finally:
        await asyncio.gather(*(c.stop() for c in clients.values()), return_exceptions=True)
        await bus.stop()
        procs.stop()
    return {
        "connectors": len(topo.stations), "transformers": transformers, "trials": trials, "incomplete_trials": misses,
        "warmup_s": warm,
        "affected_mean": statistics.fmean(affected) if affected else 0.0, "per_transformer": per_tx,
        "trial_p50_s": _percentile(per_trial, 50), "trial_p99_s": _percentile(per_trial, 99),
        "station_p50_s": _percentile(per_station, 50), "station_p99_s": _percentile(per_station, 99),
        "floor_p50_s": _percentile(floor, 50), "floor_p99_s": _percentile(floor, 99),
        "floor_mean_s": statistics.fmean(floor) if floor else float("nan"),
    }


def format_result(r: dict[str, Any], cmd: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"\n### bench e2e — {when}\n\n"
        f"`{cmd}` on {platform.machine()} ({os.cpu_count()} cores, shared), real Kafka + Redis on loopback; "
        f"{r['connectors']} connectors under {r['transformers']} transformers, {r['trials']} trials "
        f"({r['incomplete_trials']} without any lowering) after {len(r.get('warmup_s', []))} warm-up trial(s) not "
        f"counted (slowest station: {', '.join(f'{w * 1000:.0f} ms' for w in r.get('warmup_s', [])) or '-'}); "
        f"{r['affected_mean']:.0f} of the {r['per_transformer']} charging stations under the overloaded transformer "
        f"were lowered on average. With {r['trials']} trials the p99 is the slowest trial.\n\n"
        "| measure | p50 | p99 |\n|---|---|---|\n"
        f"| overload reading → every affected station accepted its lowered profile (per trial) | "
        f"{r['trial_p50_s'] * 1000:.0f} ms | {r['trial_p99_s'] * 1000:.0f} ms |\n"
        f"| same, per station | {r['station_p50_s'] * 1000:.0f} ms | {r['station_p99_s'] * 1000:.0f} ms |\n"
        f"| floor: bare Kafka produce→consume round trip | {r['floor_p50_s'] * 1000:.1f} ms | "
        f"{r['floor_p99_s'] * 1000:.1f} ms |\n"
    )


def bench_main(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    quick = bool(getattr(args, "quick", False))
    transformers, per_tx, trials = (2, 50, 6) if quick else (10, 100, 20)
    result = asyncio.run(run_bench(transformers, per_tx, trials, settings.kafka_bootstrap, settings.redis_url))
    cmd = "gridcharge bench e2e" + (" --quick" if quick else "")
    text = format_result(result, cmd)
    print(text)
    if getattr(args, "record", False):
        _record(text)
    return 0


def _record(text: str) -> None:
    """Append under the `## End to end` section of docs/benchmarks.md (created if missing)."""
    doc = BENCH_DOC
    body = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    head = "## End to end"
    if head not in body:
        body = body.rstrip("\n") + f"\n\n{head}\n"
    start = body.index(head)
    nxt = body.find("\n## ", start + len(head))
    end = nxt if nxt != -1 else len(body)
    body = body[:end].rstrip("\n") + "\n" + text + body[end:]
    doc.write_text(body, encoding="utf-8")
