"""Proxy mode, security profile 2 towards the upstream: wss with the upstream's certificate verified against
the configured CA (an untrusted certificate is never talked to) and HTTP Basic with the station's upstream
password."""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from .conftest import BOOT_16, open_client, start_gateway
from .test_security import pki  # noqa: F401  (the test PKI: CA, server certificate for 127.0.0.1)


async def _upstream(certs: dict[str, Path], seen: list[Any]) -> Any:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs["server"]), str(certs["server_key"]))

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append(ws.request.headers.get("Authorization"))
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] == 2 and msg[2] == "BootNotification":
                await ws.send(
                    json.dumps(
                        [3, msg[1], {"status": "Accepted", "interval": 77, "currentTime": "2030-01-01T00:00:00.000Z"}]
                    )
                )

    return await serve(handler, "127.0.0.1", 0, ssl=ctx, subprotocols=["ocpp1.6"])  # type: ignore[list-item]


async def _boot_interval(certs: dict[str, Path], tmp_path: Path, ca: bool) -> tuple[int, list[Any]]:
    seen: list[Any] = []
    server = await _upstream(certs, seen)
    port = int(next(iter(server.sockets)).getsockname()[1])
    pw = tmp_path / "upstream-passwords.yaml"
    pw.write_text("CP1: upstream-pw-123456\n")
    gw = await start_gateway(
        upstream_url=f"wss://127.0.0.1:{port}/csms",
        upstream_passwords_file=pw,
        upstream_ca_file=certs["ca"] if ca else None,
        upstream_connect_timeout_s=2.0,
        read_capabilities=False,
    )
    try:
        c = await open_client(gw, "CP1")
        res = await c.call("BootNotification", BOOT_16, timeout=10)
        await c.close()
        return int(res[2]["interval"]), seen
    finally:
        await gw.service.stop()
        await gw.bus.stop()
        server.close()


async def test_verified_upstream_gets_basic_auth_and_relays(pki: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    interval, seen = await _boot_interval(pki, tmp_path, ca=True)
    assert interval == 77
    assert seen == ["Basic " + base64.b64encode(b"CP1:upstream-pw-123456").decode()]


async def test_untrusted_upstream_certificate_is_refused(pki: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    interval, seen = await _boot_interval(pki, tmp_path, ca=False)
    assert seen == []  # the handshake failed before any HTTP: no password sent
    assert interval == 300  # the station is served locally
