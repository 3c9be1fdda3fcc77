"""An independent upstream CSMS for the proxy-mode tests, run as its own process.

Written with the `ocpp` library only (its ChargePoint routing and schema validation of every message in and
out, the library's strict mode), nothing from gridcharge. Stations connect to ws://127.0.0.1:PORT/<id>
with subprotocol ocpp1.6 or ocpp2.0.1 and HTTP Basic `<id>:<password>` (from --passwords, a JSON file).

Security profile 3 (--tls-cert, --tls-key, --client-ca): wss only, a client certificate signed by the
client CA is required in the TLS handshake (ssl.CERT_REQUIRED), its subject CN must be the station id of
the path (else 403, reported as {"event": "cert_refused", "station", "cn", "count"}), no password.

Behaviour the tests look for: BootNotification Accepted with interval 77; Heartbeat time 2030-01-01; idTag /
idToken "BADTAG" is Invalid (Authorize) or Blocked (transactions), every other Accepted; 1.6 transaction
ids from 7001; 2.0.1 idTokenInfo carries chargingPriority 3.

Control on stdin, one JSON object a line: {"cmd": "call", "station", "action", "kwargs" (snake_case)}
sends a CALL to that station. Reports on stdout, one JSON object a line: {"event": "listening"},
{"event": "connected", "station", "subprotocol"}, {"event": "recv", "station", "action", "payload"}
(snake_case), {"event": "answer", "station", "action", "payload"} or {"event": "call_failed", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import itertools
import json
import ssl
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as res16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as res201
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

STATIONS: dict[str, Any] = {}
TX_IDS = itertools.count(7001)
PASSWORDS: dict[str, str] = {}
CLIENT_CERTS = False  # profile 3: the TLS client certificate (CN = station id) instead of Basic
REFUSED = itertools.count(1)


def emit(**kw: Any) -> None:
    print(json.dumps(kw, default=str), flush=True)


class Csms16(Cp16):
    def _seen(self, action: str, **kw: Any) -> None:
        emit(event="recv", station=self.id, action=action, payload=kw)

    @on("BootNotification")
    async def boot(self, **kw: Any) -> Any:
        self._seen("BootNotification", **kw)
        return res16.BootNotification(current_time="2030-01-01T00:00:00Z", interval=77, status="Accepted")

    @on("Heartbeat")
    async def heartbeat(self, **kw: Any) -> Any:
        self._seen("Heartbeat", **kw)
        return res16.Heartbeat(current_time="2030-01-01T00:00:00Z")

    @on("StatusNotification")
    async def status(self, **kw: Any) -> Any:
        self._seen("StatusNotification", **kw)
        return res16.StatusNotification()

    @on("Authorize")
    async def authorize(self, id_tag: str, **kw: Any) -> Any:
        self._seen("Authorize", id_tag=id_tag, **kw)
        return res16.Authorize(id_tag_info={"status": "Invalid" if id_tag == "BADTAG" else "Accepted"})

    @on("StartTransaction")
    async def start_tx(self, id_tag: str, **kw: Any) -> Any:
        self._seen("StartTransaction", id_tag=id_tag, **kw)
        return res16.StartTransaction(
            transaction_id=next(TX_IDS), id_tag_info={"status": "Blocked" if id_tag == "BADTAG" else "Accepted"}
        )

    @on("StopTransaction")
    async def stop_tx(self, **kw: Any) -> Any:
        self._seen("StopTransaction", **kw)
        return res16.StopTransaction()

    @on("MeterValues")
    async def meter(self, **kw: Any) -> Any:
        self._seen("MeterValues", **kw)
        return res16.MeterValues()


class Csms201(Cp201):
    def _seen(self, action: str, **kw: Any) -> None:
        emit(event="recv", station=self.id, action=action, payload=kw)

    @on("BootNotification")
    async def boot(self, **kw: Any) -> Any:
        self._seen("BootNotification", **kw)
        return res201.BootNotification(current_time="2030-01-01T00:00:00Z", interval=77, status="Accepted")

    @on("Heartbeat")
    async def heartbeat(self, **kw: Any) -> Any:
        self._seen("Heartbeat", **kw)
        return res201.Heartbeat(current_time="2030-01-01T00:00:00Z")

    @on("StatusNotification")
    async def status(self, **kw: Any) -> Any:
        self._seen("StatusNotification", **kw)
        return res201.StatusNotification()

    @on("Authorize")
    async def authorize(self, id_token: dict[str, Any], **kw: Any) -> Any:
        self._seen("Authorize", id_token=id_token, **kw)
        bad = id_token.get("id_token") == "BADTAG"
        return res201.Authorize(id_token_info={"status": "Invalid" if bad else "Accepted"})

    @on("TransactionEvent")
    async def tx_event(self, **kw: Any) -> Any:
        self._seen("TransactionEvent", **kw)
        token = kw.get("id_token")
        if token is None:
            return res201.TransactionEvent()
        bad = token.get("id_token") == "BADTAG"
        return res201.TransactionEvent(id_token_info={"status": "Blocked" if bad else "Accepted"}, charging_priority=3)

    @on("NotifyEVChargingNeeds")
    async def needs(self, **kw: Any) -> Any:
        self._seen("NotifyEVChargingNeeds", **kw)
        return res201.NotifyEVChargingNeeds(status="Accepted")

    @on("MeterValues")
    async def meter(self, **kw: Any) -> Any:
        self._seen("MeterValues", **kw)
        return res201.MeterValues()


def peer_cn(connection: ServerConnection) -> str | None:
    obj = connection.transport.get_extra_info("ssl_object")
    cert = obj.getpeercert() if obj is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def check_auth(connection: ServerConnection, request: Request) -> Response | None:
    station = request.path.strip("/").split("/")[-1]
    if CLIENT_CERTS:
        cn = peer_cn(connection)
        if cn != station:
            emit(event="cert_refused", station=station, cn=cn, count=next(REFUSED))
            return connection.respond(HTTPStatus.FORBIDDEN, "Forbidden\n")
        return None
    header = request.headers.get("Authorization", "")
    want = "Basic " + base64.b64encode(f"{station}:{PASSWORDS.get(station, '')}".encode()).decode()
    if station not in PASSWORDS or header != want:
        emit(event="auth_failed", station=station)
        return connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
    return None


async def on_connect(ws: ServerConnection) -> None:
    assert ws.request is not None
    station = ws.request.path.strip("/").split("/")[-1]
    cls = Csms201 if ws.subprotocol == "ocpp2.0.1" else Csms16
    cp = cls(station, ws)
    STATIONS[station] = cp
    emit(event="connected", station=station, subprotocol=ws.subprotocol, cn=peer_cn(ws))
    try:
        await cp.start()
    except Exception:
        pass
    finally:
        if STATIONS.get(station) is cp:
            del STATIONS[station]
        emit(event="disconnected", station=station)


async def do_call(req: dict[str, Any]) -> None:
    cp = STATIONS.get(req["station"])
    if cp is None:
        emit(event="call_failed", station=req["station"], action=req["action"], error="not connected")
        return
    module = call201 if isinstance(cp, Cp201) else call16
    try:
        res = await cp.call(getattr(module, req["action"])(**req.get("kwargs", {})), suppress=False)
        emit(event="answer", station=req["station"], action=req["action"], payload=dataclasses.asdict(res))
    except Exception as exc:
        emit(event="call_failed", station=req["station"], action=req["action"], error=f"{type(exc).__name__}: {exc}")


async def control() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = set()
    while line := await reader.readline():
        req = json.loads(line)
        if req.get("cmd") == "call":
            t = asyncio.create_task(do_call(req))
            tasks.add(t)
            t.add_done_callback(tasks.discard)


async def main(port: int, tls: ssl.SSLContext | None) -> None:
    async with serve(
        on_connect,
        "127.0.0.1",
        port,
        subprotocols=["ocpp2.0.1", "ocpp1.6"],  # type: ignore[list-item]
        process_request=check_auth,
        ssl=tls,
    ):
        emit(event="listening", port=port)
        await control()
        await asyncio.Future()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--passwords")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--client-ca")
    args = ap.parse_args()
    if args.passwords:
        PASSWORDS.update(json.loads(Path(args.passwords).read_text(encoding="utf-8")))
    context = None
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(args.client_ca)
            CLIENT_CERTS = True
    asyncio.run(main(args.port, context))
