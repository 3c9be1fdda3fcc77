"""`gridcharge bench gateway`: simulated stations over real WebSockets on loopback against one gateway
process (validation on), events to the in-process bus and, in a second run, to real Kafka; the same load
against a bare `websockets` echo server in the same run gives the ratio.

Processes: the server under test (gateway or echo) and the load generator run as separate processes,
pinned to different cores when there are at least two. Phases per server:
1. open N connections and boot each station (BootNotification); RSS of the server process before and
   after gives the memory per connection;
2. closed loop: C connections each send MeterValues (4 sampled values) and wait for the answer, for T s →
   inbound CALL/s (the maximum this server sustains with this client);
3. open loop at 1,000 CALL/s spread over all connections for T s → p50/p99 latency. Gateway-added latency =
   gateway percentile − echo percentile at the same rate.
Settings changed for the bench (stated in the output): capability reads off (the simulated stations do
not answer GetConfiguration), unknown stations accepted, per-station rate limit 1,000/s, per-IP rate limit
off (every simulated station connects from 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METER = {
    "connectorId": 1,
    "transactionId": 1,
    "meterValue": [
        {
            "timestamp": "2026-06-01T10:00:00Z",
            "sampledValue": [
                {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
                {"value": "10.1", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                {"value": "230.1", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
                {"value": "1234", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            ],
        }
    ],
}
BOOT = {"chargePointVendor": "Bench", "chargePointModel": "Sim"}


def raise_nofile() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin(cpu: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {cpu})


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---- servers ---------------------------------------------------------------------------------------


async def serve_echo(port: int, max_size: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            async for msg in ws:
                await ws.send(msg)

    async with serve(
        echo,
        "127.0.0.1",
        port,
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        compression=None,
        max_size=max_size,
        max_queue=4,
        ping_interval=60,
        ping_timeout=60,
        server_header=None,
    ):
        await asyncio.Future()


# ---- load generator --------------------------------------------------------------------------------


@dataclass
class LoadResult:
    connections: int = 0
    failed_connections: int = 0
    closed_loop_calls_per_s: float = 0.0
    closed_loop_errors: int = 0
    open_loop_rate: float = 0.0
    open_loop_sent: int = 0
    open_loop_answered: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    boot_s: float = 0.0
    notes: list[str] = field(default_factory=list)


class Conn:
    __slots__ = ("n", "pending", "task", "ws")

    def __init__(self, ws: Any) -> None:
        self.ws, self.n = ws, 0
        self.pending: dict[str, asyncio.Future[str]] = {}
        self.task = asyncio.create_task(self.read())

    async def read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                uid = raw[raw.index('"') + 1 : raw.index('"', raw.index('"') + 1)]
                fut = self.pending.pop(uid, None)
                if fut is not None and not fut.done():
                    fut.set_result(raw)

    async def send(self, action: str, payload: dict[str, Any]) -> asyncio.Future[str]:
        """Send a CALL; the returned future resolves with the raw answer."""
        self.n += 1
        uid = f"m{self.n}"
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending[uid] = fut
        await self.ws.send(json.dumps([2, uid, action, payload], separators=(",", ":")))
        return fut


async def loadgen(url: str, n: int, concurrency: int, seconds: float, rate: float) -> LoadResult:
    from websockets.asyncio.client import connect

    res = LoadResult()
    conns: list[Conn] = []
    gate = asyncio.Semaphore(100)

    async def open_one(i: int) -> None:
        async with gate:
            try:
                ws = await connect(
                    f"{url}BENCH{i:06d}",
                    subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                    compression=None,
                    max_queue=4,
                    ping_interval=None,
                    open_timeout=120,
                )
                c = Conn(ws)
                await asyncio.wait_for(await c.send("BootNotification", BOOT), 60)
                conns.append(c)
            except Exception as exc:
                res.failed_connections += 1
                if len(res.notes) < 3:
                    res.notes.append(f"connect failed: {type(exc).__name__}: {str(exc)[:100]}")

    t0 = time.perf_counter()
    await asyncio.gather(*(open_one(i) for i in range(n)))
    res.boot_s = time.perf_counter() - t0
    res.connections = len(conns)
    print(f"CONNECTED {len(conns)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # orchestrator measured RSS

    # closed loop
    stop_at = time.perf_counter() + seconds
    done = 0

    async def worker(c: Conn) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            fut = await c.send("MeterValues", METER)
            try:
                raw = await asyncio.wait_for(fut, 30)
            except TimeoutError:
                c.pending.clear()
                res.closed_loop_errors += 1
                continue
            if raw.startswith("[4"):
                res.closed_loop_errors += 1
            done += 1

    workers = conns[:concurrency]
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in workers), return_exceptions=True)
    res.closed_loop_calls_per_s = done / (time.perf_counter() - t0)
    await asyncio.sleep(1)

    # open loop at `rate`
    lat: list[float] = []
    tick = 0.01
    per_tick = rate * tick
    sent = 0
    owed = 0.0
    futs: list[asyncio.Future[Any]] = []

    def record(t_send: float) -> Any:
        return lambda f: lat.append(time.perf_counter() - t_send) if not f.cancelled() else None

    start = time.perf_counter()
    next_t = start
    idx = 0
    while time.perf_counter() - start < seconds:
        owed += per_tick
        tried = 0
        while owed >= 1 and tried < len(conns):
            c = conns[idx % len(conns)]
            idx += 1
            tried += 1
            if c.pending:  # one CALL in flight per station (OCPP rule): skip a busy one
                continue
            t_send = time.perf_counter()
            f = await c.send("MeterValues", METER)
            f.add_done_callback(record(t_send))
            futs.append(f)
            sent += 1
            owed -= 1
        owed = min(owed, per_tick)  # all stations busy: the server is saturated, do not build a backlog
        next_t += tick
        await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
    elapsed = time.perf_counter() - start
    await asyncio.wait(futs, timeout=10)
    res.open_loop_rate = sent / elapsed
    res.open_loop_sent, res.open_loop_answered = sent, len(lat)
    res.p50_ms, res.p99_ms = pct(lat, 0.50) * 1e3, pct(lat, 0.99) * 1e3
    for c in conns:
        with contextlib.suppress(Exception):
            await c.ws.close()
    return res


def loadgen_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rate", type=float, default=1000)
    a = p.parse_args(argv)
    raise_nofile()
    pin(1)
    res = asyncio.run(loadgen(a.url, a.connections, a.concurrency, a.seconds, a.rate))
    print("RESULT " + json.dumps(asdict(res)), flush=True)
    return 0


# ---- orchestration ---------------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    server_rss_before_kib: int
    server_rss_after_kib: int
    load: LoadResult

    @property
    def rss_per_conn_kib(self) -> float:
        return (self.server_rss_after_kib - self.server_rss_before_kib) / max(1, self.load.connections)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise RuntimeError("server did not open its port")


def run_target(target: str, n: int, concurrency: int, seconds: float, workdir: Path) -> Run:
    port = free_port()
    env = dict(os.environ)
    if target == "echo":
        cmd = [sys.executable, "-m", "gridcharge.gateway.bench", "serve-echo", str(port)]
        url = f"ws://127.0.0.1:{port}/ocpp/"
    else:
        topo = workdir / "topology.yaml"
        topo.write_text("nodes:\n  - {id: site, kind: site, limit_a: [400, 400, 400]}\n")
        tag = f"bench{int(time.time())}"
        env.update(
            {
                "GRIDCHARGE_TOPOLOGY": str(topo),
                "GRIDCHARGE_OCPP_HOST": "127.0.0.1",
                "GRIDCHARGE_OCPP_PORT": str(port),
                "GRIDCHARGE_HTTP_HOST": "127.0.0.1",
                "GRIDCHARGE_HTTP_PORT": "0",
                "GRIDCHARGE_UNKNOWN_STATIONS": "accept",
                "GRIDCHARGE_READ_CAPABILITIES": "false",
                "GRIDCHARGE_RATE_LIMIT_PER_S": "1000",
                "GRIDCHARGE_RATE_BURST": "1000",
                "GRIDCHARGE_IP_RATE_LIMIT_PER_S": "1000000",
                "GRIDCHARGE_IP_RATE_BURST": "1000000",
                "GRIDCHARGE_MAX_CONNECTIONS_PER_IP": "50000",
                "GRIDCHARGE_MAX_CONNECTIONS": "50000",
                "GRIDCHARGE_LOG_LEVEL": "WARNING",
                "GRIDCHARGE_REPLICA_ID": "bench",
                "GRIDCHARGE_BUS": "kafka" if target == "gateway+kafka" else "memory",
                "GRIDCHARGE_TOPIC_PREFIX": tag + ".",
                "GRIDCHARGE_STORE_PREFIX": tag + ":",
            }
        )
        cmd = [sys.executable, "-m", "gridcharge.gateway.bench", "serve-gateway"]
        url = f"ws://127.0.0.1:{port}/ocpp/"
    log = (workdir / f"{target}.log").open("wb")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, server)
        time.sleep(1.0)
        before = rss_kib(server.pid)
        gen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gridcharge.gateway.bench",
                "loadgen",
                url,
                "--connections",
                str(n),
                "--concurrency",
                str(concurrency),
                "--seconds",
                str(seconds),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert gen.stdout is not None and gen.stdin is not None
        line = gen.stdout.readline()
        if not line.startswith("CONNECTED"):
            raise RuntimeError(f"load generator failed: {line!r}")
        time.sleep(2.0)
        after = rss_kib(server.pid)
        gen.stdin.write("go\n")
        gen.stdin.flush()
        result = None
        for line in gen.stdout:
            if line.startswith("RESULT "):
                result = LoadResult(**json.loads(line[7:]))
        gen.wait(60)
        if result is None:
            raise RuntimeError("load generator gave no result")
        return Run(target, before, after, result)
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def serve_gateway_main() -> int:
    raise_nofile()
    pin(0)
    from gridcharge.gateway.main import main

    main()
    return 0


def _kafka_up() -> bool:
    from gridcharge.shared.config import Settings

    host, port = Settings.from_env().kafka_bootstrap.split(",")[0].rsplit(":", 1)
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 2):
        return True
    return False


def render(runs: list[Run], n: int, concurrency: int, seconds: float, cmdline: str) -> str:
    echo = next((r for r in runs if r.target == "echo"), None)
    lines = [
        "| server | connections held | RSS/conn KiB | max CALL/s (closed loop, "
        f"{concurrency} conns) | errors | rate sent/s | p50 ms | p99 ms | added p50 / p99 ms | ratio to echo |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ld = r.load
        added = ratio = "—"
        if echo is not None and r is not echo:
            added = f"{ld.p50_ms - echo.load.p50_ms:.2f} / {ld.p99_ms - echo.load.p99_ms:.2f}"
            ratio = f"{ld.closed_loop_calls_per_s / max(1e-9, echo.load.closed_loop_calls_per_s):.2f}"
        lines.append(
            f"| {r.target} | {ld.connections}/{ld.connections + ld.failed_connections} | "
            f"{r.rss_per_conn_kib:.1f} | {ld.closed_loop_calls_per_s:,.0f} | {ld.closed_loop_errors} | "
            f"{ld.open_loop_rate:,.0f} | {ld.p50_ms:.2f} | {ld.p99_ms:.2f} | {added} | {ratio} |"
        )
    notes = [n_ for r in runs for n_ in r.load.notes]
    body = "\n".join(lines)
    meta = (
        f"`{cmdline}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f} at the end: the machine is shared), {n:,} stations, "
        f"{seconds:.0f} s per phase."
    )
    return meta + "\n\n" + body + ("\n\nNotes: " + "; ".join(notes) if notes else "") + "\n"


SECTION_HEAD = "## Gateway"


def record(text: str, path: Path = Path("docs/benchmarks.md")) -> None:
    """Replace (or add) the '## Gateway' results block in docs/benchmarks.md, leaving other sections alone."""
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start_marker, end_marker = "<!-- gateway-bench:start -->", "<!-- gateway-bench:end -->"
    block = f"{start_marker}\n{text}{end_marker}"
    if start_marker in doc and end_marker in doc:
        pre, rest = doc.split(start_marker, 1)
        doc = pre + block + rest.split(end_marker, 1)[1]
    elif SECTION_HEAD in doc:  # at the end of the section, before the next "## " heading
        head = doc.index(SECTION_HEAD)
        nxt = doc.find("\n## ", head + len(SECTION_HEAD))
        end = len(doc) if nxt < 0 else nxt + 1
        doc = doc[:end].rstrip("\n") + "\n\n" + block + "\n" + ("\n" + doc[end:] if end < len(doc) else "")
    else:
        doc = doc.rstrip("\n") + f"\n\n{SECTION_HEAD}\n\n{block}\n"
    path.write_text(doc, encoding="utf-8")


def bench_main(args: Any) -> int:
    quick = bool(getattr(args, "quick", False))
    n = 500 if quick else 10_000
    concurrency = 200 if quick else 1_000
    seconds = 5.0 if quick else 10.0
    targets = ["echo", "gateway"] + (["gateway+kafka"] if _kafka_up() else [])
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as d:
        for t in targets:
            print(f"bench gateway: {t}: {n} connections ...", file=sys.stderr, flush=True)
            try:
                runs.append(run_target(t, n, concurrency, seconds, Path(d)))
            except Exception as exc:
                print(f"bench gateway: {t} failed: {exc}", file=sys.stderr)
                with contextlib.suppress(Exception):
                    print((Path(d) / f"{t}.log").read_text()[-2000:], file=sys.stderr)
    if "gateway+kafka" not in targets:
        print("bench gateway: Kafka not reachable; the Kafka run was skipped", file=sys.stderr)
    cmdline = "gridcharge bench gateway" + (" --quick" if quick else "")
    text = render(runs, n, concurrency, seconds, cmdline)
    print(text)
    if getattr(args, "record", False):
        record(text)
    return 0 if runs else 1


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "serve-echo":
        raise_nofile()
        pin(0)
        asyncio.run(serve_echo(int(sys.argv[2]), 65_536))
    elif mode == "serve-gateway":
        sys.exit(serve_gateway_main())
    elif mode == "loadgen":
        sys.exit(loadgen_main(sys.argv[2:]))
    else:
        sys.exit(bench_main(argparse.Namespace(quick="--quick" in sys.argv, record="--record" in sys.argv)))
