"""Resource limits of the HTTP edge on real sockets: body size (#15.2), header/body deadlines and connection caps
(#15.3, slowloris). Short limits here so the tests run in seconds; the defaults are in Settings."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import APIRouter, Body
from gridcharge.shared.auth import ApiAuth
from gridcharge.shared.http import EdgeLimits, Health, HttpServer, create_app

TOKEN = "limits-test-operator-token-000000000"
LIMITS = EdgeLimits(
    max_body_bytes=64 * 1024,
    header_timeout_s=0.5,
    body_timeout_s=1.0,
    keepalive_timeout_s=1.0,
    max_connections=20,
    max_connections_per_ip=10,
)
received: list[int] = []


def _router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")

    @r.post("/readings", status_code=202)
    async def readings(payload: Any = Body(...)) -> dict[str, int]:
        received.append(len(payload))
        return {"accepted": len(payload)}

    return r


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    app = create_app("t", Health(), [_router()], auth=ApiAuth.with_tokens(ops=("operator", TOKEN)), limits=LIMITS)
    srv = HttpServer(app, "127.0.0.1", 0, LIMITS)
    await srv.start()
    yield srv
    await srv.stop()


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _response(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    return await asyncio.wait_for(reader.read(65536), timeout)


def _post_head(length: int | None) -> bytes:
    size = f"content-length: {length}\r\n" if length is not None else "transfer-encoding: chunked\r\n"
    return (
        f"POST /api/v1/readings HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {TOKEN}\r\n"
        f"content-type: application/json\r\n{size}\r\n"
    ).encode()


async def test_declared_oversize_body_is_refused_before_it_is_sent(server: HttpServer) -> None:
    reader, writer = await _open(server.port)
    writer.write(_post_head(59 * 1024 * 1024))  # 59 MiB announced, nothing sent
    await writer.drain()
    resp = await _response(reader)
    assert resp.startswith(b"HTTP/1.1 413") and b"connection: close" in resp.lower()
    assert await reader.read() == b""  # and the connection is closed
    writer.close()


async def test_chunked_oversize_body_is_cut_off_while_streaming(server: HttpServer) -> None:
    """No Content-Length: the edge counts while the body streams and answers 413 long before 59 MiB are in."""
    reader, writer = await _open(server.port)
    writer.write(_post_head(None))
    chunk = b"[" + b"1," * 8191 + b"1]"
    answer = asyncio.create_task(reader.read(65536))  # read while sending: the answer comes mid-upload
    sent = 0
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        while sent < 59 * 1024 * 1024 and not answer.done():
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0)  # let the answer in
    status = (await asyncio.wait_for(answer, 5))[:12]
    assert status == b"HTTP/1.1 413"
    print(f"chunked upload: 413 after {sent} bytes sent (limit {LIMITS.max_body_bytes})")
    assert sent < 8 * 1024 * 1024, f"{sent} bytes went in before the 413"  # kernel buffers, not the server
    writer.close()


async def test_body_within_the_limit_is_accepted(server: HttpServer) -> None:
    body = b"[" + b"1," * 1000 + b"1]"
    reader, writer = await _open(server.port)
    writer.write(_post_head(len(body)) + body)
    await writer.drain()
    assert (await _response(reader)).startswith(b"HTTP/1.1 202")
    writer.close()


async def test_half_sent_headers_are_closed_after_the_header_timeout(server: HttpServer) -> None:
    t0 = time.monotonic()
    conns = [await _open(server.port) for _ in range(5)]
    for _, w in conns:
        w.write(b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-slow: ")  # never finished
        await w.drain()
    for r, w in conns:
        resp = await _response(r, timeout=5)
        assert resp.startswith(b"HTTP/1.1 408"), resp
        assert await r.read() == b""
        w.close()
    assert time.monotonic() - t0 < 0.5 + 2.0
    assert server.guard.total == 0


async def test_idle_connection_without_any_request_is_closed(server: HttpServer) -> None:
    reader, writer = await _open(server.port)
    assert (await _response(reader, timeout=5)).startswith(b"HTTP/1.1 408")
    writer.close()


async def test_trickled_body_is_cut_after_the_body_timeout(server: HttpServer) -> None:
    reader, writer = await _open(server.port)
    writer.write(_post_head(1000) + b"[1,")
    await writer.drain()
    t0 = time.monotonic()
    with pytest.raises((ConnectionResetError, BrokenPipeError, AssertionError, TimeoutError)):
        for _ in range(40):  # one byte every 100 ms: would take 100 s
            await asyncio.sleep(0.1)
            writer.write(b"1")
            await writer.drain()
            assert not reader.at_eof()
    assert time.monotonic() - t0 < 1.0 + 2.0
    writer.close()


async def test_connection_cap_per_client_and_total(server: HttpServer) -> None:
    held = [await _open(server.port) for _ in range(LIMITS.max_connections_per_ip)]
    await asyncio.sleep(0.05)
    reader, writer = await _open(server.port)  # one too many from this address
    assert (await _response(reader)).startswith(b"HTTP/1.1 503")
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    reader, writer = await _open(server.port)  # freed again
    writer.write(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
    assert (await _response(reader)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_keep_alive_requests_still_work(server: HttpServer) -> None:
    reader, writer = await _open(server.port)
    for _ in range(3):
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        await writer.drain()
        assert (await _response(reader)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.6)  # longer than the header timeout, between requests
    writer.close()


async def test_busy_port_is_a_one_line_config_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        srv = HttpServer(create_app("t", Health()), "127.0.0.1", port)
        from gridcharge.shared.errors import ConfigError

        with pytest.raises(ConfigError) as err:
            await srv.start()
    assert err.value.key == "GRIDCHARGE_HTTP_PORT" and "in use" in err.value.problem
