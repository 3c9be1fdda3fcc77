"""Proxy mode end to end (issue 13.4): simulator stations → gridcharge gateway (proxy mode, embedded bus and
store) → an independent upstream CSMS in its own process (`proxy_csms.py`, the `ocpp` library in strict
mode, HTTP Basic per station), for OCPP 1.6J and 2.0.1.

Shown per version: boot and heartbeat relayed (the station gets the upstream's interval and time); the
upstream rejects an idTag → the station gets it; a transaction start/stop passes through with the upstream's
transaction id (1.6) / idTokenInfo (2.0.1); the upstream's RemoteStart reaches the station; the upstream's
TxDefaultProfile reaches the station unchanged while gridcharge's station-cap lease sits at stack 1, and
the composite schedule the station reports to the upstream is the lower of the two; an upstream profile at
a reserved level is refused and a clear-all leaves gridcharge's profiles; with the upstream down the
station stays served (local boot/heartbeat answers, a transaction started and ended) and the queued
transaction messages reach the restarted upstream in order (1.6: with the upstream's new transaction id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.gateway.config import GatewaySettings
from gridcharge.gateway.service import GatewayService
from gridcharge.shared.bus.base import Record
from gridcharge.shared.bus.memory import MemoryBus
from gridcharge.shared.clock import RealClock
from gridcharge.shared.contracts import STATION_EVENTS, decode
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.store.memory import MemoryStore
from gridcharge.shared.topology import parse_topology
from gridcharge.simulator.ev import Ev
from gridcharge.simulator.stations import StationClient, StationModel
from gridcharge.station.v1 import station_pb2
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

pytestmark = pytest.mark.timeout(120)

CSMS = Path(__file__).with_name("proxy_csms.py")
PASSWORDS = {"PX16": "upstream-secret-16-aaaa", "PX201": "upstream-secret-201-bbbb"}
TOPOLOGY = parse_topology(
    {
        "nodes": [{"id": "site", "kind": "site", "limit_a": [200, 200, 200]}],
        "stations": [
            {"id": "PX16", "node": "site", "ocpp": "1.6", "max_current_a": 32},
            {"id": "PX201", "node": "site", "ocpp": "2.0.1", "max_current_a": 32},
        ],
    }
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Csms:
    """The upstream CSMS process: JSON lines out (what it received/got back), JSON lines in (CALLs to send)."""

    def __init__(self, port: int, passwords: Path | None, extra: list[str] | None = None) -> None:
        self.port, self.passwords, self.extra = port, passwords, extra or []
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CSMS),
            "--port",
            str(self.port),
            *(["--passwords", str(self.passwords)] if self.passwords is not None else []),
            *self.extra,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait(lambda m: m.get("event") == "listening", 20)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(json.loads(line))

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader

    def received(self, station: str, action: str) -> list[dict[str, Any]]:
        return [
            m["payload"]
            for m in self.lines
            if m.get("event") == "recv" and m["station"] == station and m["action"] == action
        ]

    async def wait(self, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = 0
        while True:
            for m in self.lines[seen:]:
                if pred(m):
                    return m
            seen = len(self.lines)
            if loop.time() > deadline:
                raise AssertionError(f"CSMS never reported it; last lines: {self.lines[-8:]}")
            await asyncio.sleep(0.02)

    async def call(self, station: str, action: str, **kwargs: Any) -> dict[str, Any]:
        """Send a CALL from the upstream to the station (through gridcharge); its answer (snake_case)."""
        assert self.proc is not None and self.proc.stdin is not None
        start = len(self.lines)
        self.proc.stdin.write(
            (json.dumps({"cmd": "call", "station": station, "action": action, "kwargs": kwargs}) + "\n").encode()
        )
        await self.proc.stdin.drain()
        got = await self.wait(
            lambda m: (
                m.get("event") in ("answer", "call_failed")
                and m.get("action") == action
                and self.lines.index(m) >= start
            ),
            15,
        )
        assert got["event"] == "answer", got
        return dict(got["payload"])


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Csms]:
    pw = tmp_path / "csms-passwords.json"
    pw.write_text(json.dumps(PASSWORDS))
    csms = Csms(free_port(), pw)
    await csms.start()
    yield csms
    await csms.stop()


@pytest.fixture
async def gateway(upstream: Csms, tmp_path: Path) -> AsyncIterator[tuple[GatewayService, list[Any]]]:
    secret = tmp_path / "upstream-passwords.yaml"  # the mounted Secret of the gateway
    secret.write_text("".join(f"{k}: {v}\n" for k, v in PASSWORDS.items()))
    settings = GatewaySettings(
        ocpp_port=0,
        ocpp_host="127.0.0.1",
        replica_id="gw-proxy",
        upstream_url=f"ws://127.0.0.1:{upstream.port}/ocpp",
        upstream_security_profile=1,
        upstream_passwords_file=secret,
        upstream_backoff_max_s=1.0,
        upstream_call_timeout_s=3.0,
        upstream_connect_timeout_s=3.0,
    )
    clock = RealClock()
    bus = MemoryBus()
    await bus.start()
    rt = Runtime(settings=settings, bus=bus, store=MemoryStore(clock), clock=clock)
    svc = GatewayService(rt, TOPOLOGY, settings)
    events: list[station_pb2.StationEvent] = []

    async def on_event(rec: Record) -> None:
        events.append(decode(station_pb2.StationEvent, rec.value))

    await bus.subscribe([STATION_EVENTS.name], "test-events", on_event)
    await svc.start()
    yield svc, events
    await svc.stop()
    await bus.stop()


async def until(pred: Any, timeout: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"not in time: {what}")
        await asyncio.sleep(0.02)


def lease(station: str, limit_a: float) -> command_pb2.StationCommand:
    """gridcharge's own station-cap lease (as allocation writes it: station max, stack 1, id 1001)."""
    now = datetime.now(UTC) - timedelta(seconds=60)
    ts = Timestamp()
    ts.FromDatetime(now)
    prof = command_pb2.ChargingProfile(
        profile_id=1001,
        stack_level=1,
        purpose=command_pb2.PROFILE_PURPOSE_STATION_MAX,
        kind="Absolute",
        valid_from=ts,
        start_schedule=ts,
        duration_s=3600,
        rate_unit=common_pb2.RATE_UNIT_A,
        periods=[command_pb2.SchedulePeriod(start_period_s=0, limit=limit_a, number_phases=3)],
    )
    return command_pb2.StationCommand(
        command_id=str(uuid.uuid4()),
        station_id=station,
        set_charging_profile=command_pb2.SetChargingProfile(evse_id=0, profile=prof),
    )


async def send_own(svc: GatewayService, cmd: command_pb2.StationCommand) -> command_pb2.CommandResult:
    fut: asyncio.Future[command_pb2.CommandResult] = asyncio.get_running_loop().create_future()
    svc.dispatcher.waiters[cmd.command_id] = fut
    await svc.dispatcher.submit(cmd)
    return await asyncio.wait_for(fut, 10)


def tx_default(version: str, profile_id: int, limit_a: float) -> dict[str, Any]:
    """The upstream's TxDefaultProfile at stack 0 (snake_case, as the `ocpp` library takes it)."""
    sched = {"charging_rate_unit": "A", "charging_schedule_period": [{"start_period": 0, "limit": limit_a}]}
    if version == "1.6":
        return {
            "connector_id": 1,
            "cs_charging_profiles": {
                "charging_profile_id": profile_id,
                "stack_level": 0,
                "charging_profile_purpose": "TxDefaultProfile",
                "charging_profile_kind": "Relative",
                "charging_schedule": sched,
            },
        }
    return {
        "evse_id": 1,
        "charging_profile": {
            "id": profile_id,
            "stack_level": 0,
            "charging_profile_purpose": "TxDefaultProfile",
            "charging_profile_kind": "Relative",
            "charging_schedule": [{"id": 1, **sched}],
        },
    }


def composite_limit(version: str, answer: dict[str, Any]) -> float:
    sched = answer["charging_schedule"] if version == "1.6" else answer["schedule"]
    return float(sched["charging_schedule_period"][0]["limit"])


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_station_through_gridcharge_to_upstream_csms(version: str, upstream: Csms, gateway: Any) -> None:
    svc, events = gateway
    sid = "PX16" if version == "1.6" else "PX201"
    v16 = version == "1.6"
    clock = RealClock()
    model = StationModel(next(s for s in TOPOLOGY.stations if s.id == sid))
    station = StationClient(
        model, [f"ws://127.0.0.1:{svc.ocpp_port}/ocpp"], clock, meter_interval_s=3600, reconnect_s=0.2
    )
    station.start()
    try:
        # ---- boot and heartbeat relayed -----------------------------------------------------------------
        await asyncio.wait_for(station.connected.wait(), 15)
        await upstream.wait(
            lambda m: m.get("event") == "recv" and m["station"] == sid and m["action"] == "BootNotification"
        )
        assert station.cp is not None
        boot = await station.cp.call(
            call16.BootNotification(charge_point_model="SimStation", charge_point_vendor="gridcharge")
            if v16
            else call201.BootNotification(
                charging_station={"model": "SimStation", "vendor_name": "gridcharge"}, reason="PowerUp"
            )
        )
        assert boot.status == "Accepted" and boot.interval == 77  # the upstream's interval, not ours
        hb = await station.cp.call(call16.Heartbeat() if v16 else call201.Heartbeat())
        assert hb.current_time.startswith("2030-01-01")
        assert upstream.received(sid, "Heartbeat")
        assert any(e.station_id == sid and e.WhichOneof("payload") == "heartbeat" for e in events)  # still observed

        # ---- authorization: the upstream decides ----------------------------------------------------------
        if v16:
            bad = await station.cp.call(call16.Authorize(id_tag="BADTAG"))
            good = await station.cp.call(call16.Authorize(id_tag="GOODTAG"))
            assert bad.id_tag_info["status"] == "Invalid" and good.id_tag_info["status"] == "Accepted"
        else:
            bad = await station.cp.call(call201.Authorize(id_token={"id_token": "BADTAG", "type": "ISO14443"}))
            assert bad.id_token_info["status"] == "Invalid"
        await until(
            lambda: any(
                e.WhichOneof("payload") == "authorize"
                and e.authorize.id_token == "BADTAG"
                and e.authorize.status == "Invalid"
                for e in events
            ),
            what="authorize event",
        )

        # ---- transaction start through the upstream -----------------------------------------------------
        now = clock.time()
        station.plug_in(1, Ev("ev1", 60_000, 0.2, 0.8, now - 1, now + 3600), now)
        await station.tick(clock.time())
        await upstream.wait(
            lambda m: (
                m.get("event") == "recv"
                and m["station"] == sid
                and m["action"] in ("StartTransaction", "TransactionEvent")
            )
        )
        tx = model.evses[1].tx
        assert tx is not None and model.evses[1].tx_reported
        if v16:
            assert int(tx.transaction_id) >= 7001  # the upstream's transaction id
            assert any(
                e.WhichOneof("payload") == "transaction_started"
                and e.transaction_started.transaction_id == tx.transaction_id
                for e in events
            )
        else:
            started = upstream.received(sid, "TransactionEvent")[0]
            assert started["transaction_info"]["transaction_id"] == tx.transaction_id

        # ---- upstream RemoteStart reaches the station ---------------------------------------------------
        if v16:
            ans = await upstream.call(sid, "RemoteStartTransaction", id_tag="REMOTE1", connector_id=1)
            assert station.remote_starts == [{"id_tag": "REMOTE1", "connector_id": 1}]
        else:
            ans = await upstream.call(
                sid,
                "RequestStartTransaction",
                remote_start_id=42,
                evse_id=1,
                id_token={"id_token": "REMOTE1", "type": "Central"},
            )
            assert station.remote_starts[0]["remote_start_id"] == 42
        assert ans["status"] == "Accepted"

        # ---- profiles: gridcharge's lease at stack 1, the upstream's TxDefault at stack 0, the lower wins ----
        res = await send_own(svc, lease(sid, 16.0))
        assert res.outcome == command_pb2.COMMAND_OUTCOME_ACCEPTED, res
        ans = await upstream.call(sid, "SetChargingProfile", **tx_default(version, 7, 10.0))
        assert ans["status"] == "Accepted"
        held = {p.profile_id: p for p in model.profiles.profiles}
        assert set(held) == {1001, 7}
        assert (held[7].stack_level, held[7].purpose, held[7].periods[0].limit) == (0, "TxDefault", 10.0)
        assert (held[1001].stack_level, held[1001].purpose, held[1001].periods[0].limit) == (1, "StationMax", 16.0)
        comp = (
            await upstream.call(sid, "GetCompositeSchedule", duration=300, connector_id=1, charging_rate_unit="A")
            if v16
            else await upstream.call(sid, "GetCompositeSchedule", duration=300, evse_id=1, charging_rate_unit="A")
        )
        assert composite_limit(version, comp) == 10.0  # the upstream's is lower
        res = await send_own(svc, lease(sid, 6.0))
        assert res.outcome == command_pb2.COMMAND_OUTCOME_ACCEPTED, res
        comp = (
            await upstream.call(sid, "GetCompositeSchedule", duration=300, connector_id=1, charging_rate_unit="A")
            if v16
            else await upstream.call(sid, "GetCompositeSchedule", duration=300, evse_id=1, charging_rate_unit="A")
        )
        assert composite_limit(version, comp) == 6.0  # now gridcharge's is lower

        # an upstream station maximum would override gridcharge's cap: refused, never reaches the station
        writes = len(station.profile_log)
        smax = tx_default(version, 8, 32.0)
        key = "cs_charging_profiles" if v16 else "charging_profile"
        smax[key]["charging_profile_purpose"] = "ChargePointMaxProfile" if v16 else "ChargingStationMaxProfile"
        smax["connector_id" if v16 else "evse_id"] = 0
        smax[key]["charging_profile_kind"] = "Absolute"
        smax[key]["stack_level"] = 2
        ans = await upstream.call(sid, "SetChargingProfile", **smax)
        assert ans["status"] == "Rejected" and len(station.profile_log) == writes
        # a clear-all from the upstream clears the upstream's profiles only
        ans = await upstream.call(sid, "ClearChargingProfile")
        assert ans["status"] == "Accepted"
        assert {p.profile_id for p in model.profiles.profiles} == {1001}

        # ---- transaction stop through the upstream ----------------------------------------------------
        station.model.evses[1].ev.departure_s = clock.time() - 1  # type: ignore[union-attr]
        await station.tick(clock.time())
        stop = await upstream.wait(
            lambda m: (
                m.get("event") == "recv"
                and m["station"] == sid
                and (
                    m["action"] == "StopTransaction"
                    or (m["action"] == "TransactionEvent" and m["payload"]["event_type"] == "Ended")
                )
            )
        )
        if v16:
            assert str(stop["payload"]["transaction_id"]) == tx.transaction_id
        else:
            assert stop["payload"]["transaction_info"]["transaction_id"] == tx.transaction_id

        # ---- upstream down: the station stays served, transaction messages are queued --------------------
        await upstream.stop()
        await asyncio.sleep(0.5)
        hb = await station.cp.call(call16.Heartbeat() if v16 else call201.Heartbeat())
        assert not hb.current_time.startswith("2030")  # answered by gridcharge
        now = clock.time()
        station.plug_in(1, Ev("ev2", 60_000, 0.2, 0.8, now - 1, now + 3600), now)
        await station.tick(clock.time())
        tx2 = model.evses[1].tx
        assert tx2 is not None and model.evses[1].tx_reported  # started while the upstream is away
        station.model.evses[1].ev.departure_s = clock.time() - 1  # type: ignore[union-attr]
        await station.tick(clock.time())
        assert station.connected.is_set() and model.evses[1].tx is None
        assert svc.proxy is not None and len(svc.proxy.links[sid].queue) >= 2

        # ---- upstream back: boot replayed, then the queue in order ----------------------------------------
        upstream.lines.clear()
        await upstream.start()
        if v16:
            stop = await upstream.wait(lambda m: m.get("event") == "recv" and m["action"] == "StopTransaction", 20)
            order = [m["action"] for m in upstream.lines if m.get("event") == "recv"]
            assert order[:3] == ["BootNotification", "StartTransaction", "StopTransaction"], order
            upstream_id = next(
                m for m in upstream.lines if m.get("event") == "recv" and m["action"] == "StartTransaction"
            )
            assert int(tx2.transaction_id) < 7001  # the station got a local id ...
            # ... and the upstream sees its own id in the StopTransaction
            assert stop["payload"]["transaction_id"] >= 7001 and upstream_id["payload"]["id_tag"] == "SIM"
        else:
            await upstream.wait(
                lambda m: (
                    m.get("event") == "recv"
                    and m["action"] == "TransactionEvent"
                    and m["payload"]["event_type"] == "Ended"
                ),
                20,
            )
            got = [(m["action"], m["payload"].get("event_type")) for m in upstream.lines if m.get("event") == "recv"]
            assert got[0] == ("BootNotification", None)
            assert [g for g in got if g[0] == "TransactionEvent"][:2] == [
                ("TransactionEvent", "Started"),
                ("TransactionEvent", "Ended"),
            ], got
            assert all(
                m["payload"]["transaction_info"]["transaction_id"] == tx2.transaction_id
                for m in upstream.lines
                if m.get("event") == "recv" and m["action"] == "TransactionEvent"
            )
        await until(lambda: len(svc.proxy.links[sid].queue) == 0, what="queue delivered")
        # and the link serves live traffic again
        await until(lambda: svc.proxy.links[sid].connected.is_set(), what="relinked")
        hb = await station.cp.call(call16.Heartbeat() if v16 else call201.Heartbeat())
        assert hb.current_time.startswith("2030-01-01")
    finally:
        await station.stop()


async def test_wrong_upstream_password_is_not_relayed_and_not_logged(
    upstream: Csms, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream refuses a wrong Basic password: the station is still served locally and the password
    appears in no log line."""
    secret = tmp_path / "wrong.yaml"
    secret.write_text("PX16: not-the-password-xyz\n")
    settings = GatewaySettings(
        ocpp_port=0,
        ocpp_host="127.0.0.1",
        replica_id="gw-proxy-bad",
        upstream_url=f"ws://127.0.0.1:{upstream.port}/ocpp",
        upstream_security_profile=1,
        upstream_passwords_file=secret,
        upstream_connect_timeout_s=2.0,
    )
    clock = RealClock()
    bus = MemoryBus()
    await bus.start()
    svc = GatewayService(Runtime(settings=settings, bus=bus, store=MemoryStore(clock), clock=clock), TOPOLOGY, settings)
    await svc.start()
    station = StationClient(
        StationModel(TOPOLOGY.stations[0]), [f"ws://127.0.0.1:{svc.ocpp_port}/ocpp"], clock, reconnect_s=0.2
    )
    caplog.set_level("DEBUG")
    station.start()
    try:
        await asyncio.wait_for(station.connected.wait(), 15)
        await upstream.wait(lambda m: m.get("event") == "auth_failed" and m["station"] == "PX16")
        assert station.cp is not None
        hb = await station.cp.call(call16.Heartbeat())
        assert not hb.current_time.startswith("2030")
        assert not upstream.received("PX16", "BootNotification")
        assert "not-the-password-xyz" not in caplog.text
    finally:
        await station.stop()
        await svc.stop()
        await bus.stop()


# ---- security profile 3 towards the upstream -----------------------------------------------------------


def _x509_name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(root: Path, stations: list[str]) -> dict[str, Path]:
    """A throwaway CA; the CSMS's server certificate for 127.0.0.1; a client certificate per station, CN =
    station id, in the layout gridcharge mounts (`client-certs/<id>.crt|.key`)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def issue(cn: str, key: Any, ca: bool = False, server: bool = False) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(_x509_name(cn))
            .issuer_name(_x509_name("upstream test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if server:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            b = b.add_extension(san, critical=False)
        return b.sign(ca_key, hashes.SHA256())

    def write(path: Path, cert: x509.Certificate, key: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name(path.name + ".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        path.with_name(path.name + ".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    write(root / "ca", issue("upstream test CA", ca_key, ca=True), ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    write(root / "server", issue("127.0.0.1", server_key, server=True), server_key)
    for sid in stations:
        key = ec.generate_private_key(ec.SECP256R1())
        write(root / "client-certs" / sid, issue(sid, key), key)
    return {
        "ca": root / "ca.crt",
        "server": root / "server.crt",
        "server_key": root / "server.key",
        "certs": root / "client-certs",
    }


@pytest.fixture
async def upstream_sp3(tmp_path: Path) -> AsyncIterator[tuple[Csms, dict[str, Path]]]:
    pki = make_pki(tmp_path / "pki", ["PX16", "PX201"])
    csms = Csms(
        free_port(),
        None,
        ["--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"]), "--client-ca", str(pki["ca"])],
    )
    await csms.start()
    yield csms, pki
    await csms.stop()


@pytest.fixture
async def gateway_sp3(upstream_sp3: tuple[Csms, dict[str, Path]]) -> AsyncIterator[GatewayService]:
    csms, pki = upstream_sp3
    settings = GatewaySettings(
        ocpp_port=0,
        ocpp_host="127.0.0.1",
        replica_id="gw-proxy-sp3",
        upstream_url=f"wss://127.0.0.1:{csms.port}/ocpp",
        upstream_security_profile=3,
        upstream_client_certs_dir=pki["certs"],
        upstream_ca_file=pki["ca"],
        upstream_backoff_max_s=1.0,
        upstream_call_timeout_s=3.0,
        upstream_connect_timeout_s=3.0,
    )
    clock = RealClock()
    bus = MemoryBus()
    await bus.start()
    svc = GatewayService(Runtime(settings=settings, bus=bus, store=MemoryStore(clock), clock=clock), TOPOLOGY, settings)
    await svc.start()
    yield svc
    await svc.stop()
    await bus.stop()


def _is_start(m: dict[str, Any], sid: str) -> bool:
    return m.get("event") == "recv" and m["station"] == sid and m["action"] in ("StartTransaction", "TransactionEvent")


def _is_stop(m: dict[str, Any], sid: str) -> bool:
    return (
        m.get("event") == "recv"
        and m["station"] == sid
        and (
            m["action"] == "StopTransaction"
            or (m["action"] == "TransactionEvent" and m["payload"]["event_type"] == "Ended")
        )
    )


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_profile_3_each_station_with_its_own_certificate(
    version: str, upstream_sp3: tuple[Csms, dict[str, Path]], gateway_sp3: GatewayService
) -> None:
    """Boot, authorization and a transaction through an upstream that requires client certificates: the
    upstream sees the station's own certificate (CN = station id), gridcharge sends no password."""
    csms, _ = upstream_sp3
    svc = gateway_sp3
    sid, v16 = ("PX16", True) if version == "1.6" else ("PX201", False)
    clock = RealClock()
    model = StationModel(next(s for s in TOPOLOGY.stations if s.id == sid))
    station = StationClient(
        model, [f"ws://127.0.0.1:{svc.ocpp_port}/ocpp"], clock, meter_interval_s=3600, reconnect_s=0.2
    )
    station.start()
    try:
        await asyncio.wait_for(station.connected.wait(), 15)
        conn = await csms.wait(lambda m: m.get("event") == "connected" and m["station"] == sid)
        assert conn["cn"] == sid and conn["subprotocol"] == ("ocpp1.6" if v16 else "ocpp2.0.1")
        await csms.wait(
            lambda m: m.get("event") == "recv" and m["station"] == sid and m["action"] == "BootNotification"
        )
        assert station.cp is not None
        boot = await station.cp.call(
            call16.BootNotification(charge_point_model="SimStation", charge_point_vendor="gridcharge")
            if v16
            else call201.BootNotification(
                charging_station={"model": "SimStation", "vendor_name": "gridcharge"}, reason="PowerUp"
            )
        )
        assert boot.status == "Accepted" and boot.interval == 77  # the upstream's
        if v16:
            bad = await station.cp.call(call16.Authorize(id_tag="BADTAG"))
            assert bad.id_tag_info["status"] == "Invalid"
        else:
            bad = await station.cp.call(call201.Authorize(id_token={"id_token": "BADTAG", "type": "ISO14443"}))
            assert bad.id_token_info["status"] == "Invalid"
        now = clock.time()
        station.plug_in(1, Ev("ev1", 60_000, 0.2, 0.8, now - 1, now + 3600), now)
        await station.tick(clock.time())
        await csms.wait(lambda m: _is_start(m, sid))
        tx = model.evses[1].tx
        assert tx is not None and model.evses[1].tx_reported
        if v16:
            assert int(tx.transaction_id) >= 7001  # the upstream's id
        station.model.evses[1].ev.departure_s = clock.time() - 1  # type: ignore[union-attr]
        await station.tick(clock.time())
        stop = await csms.wait(lambda m: _is_stop(m, sid))
        got_tx = stop["payload"]["transaction_id"] if v16 else stop["payload"]["transaction_info"]["transaction_id"]
        assert str(got_tx) == tx.transaction_id
        assert not [m for m in csms.lines if m.get("event") == "cert_refused"]
    finally:
        await station.stop()


async def test_profile_3_another_stations_certificate_is_refused(upstream_sp3: tuple[Csms, dict[str, Path]]) -> None:
    """The upstream of this test really checks what gridcharge relies on: PX201's (valid, same CA)
    certificate on PX16's path is refused in the WebSocket handshake and counted; no certificate at all
    fails the TLS handshake."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    csms, pki = upstream_sp3
    tls = ssl.create_default_context(cafile=str(pki["ca"]))
    tls.load_cert_chain(str(pki["certs"] / "PX201.crt"), str(pki["certs"] / "PX201.key"))
    with pytest.raises(InvalidStatus) as err:
        await connect(f"wss://127.0.0.1:{csms.port}/ocpp/PX16", ssl=tls, subprotocols=["ocpp1.6"])  # type: ignore[list-item]
    assert err.value.response.status_code == 403
    refused = await csms.wait(lambda m: m.get("event") == "cert_refused")
    assert (refused["station"], refused["cn"], refused["count"]) == ("PX16", "PX201", 1)
    bare = ssl.create_default_context(cafile=str(pki["ca"]))
    with pytest.raises(Exception):  # noqa: B017  (TLS alert or a closed connection, depending on TLS 1.2/1.3)
        ws = await connect(f"wss://127.0.0.1:{csms.port}/ocpp/PX16", ssl=bare, subprotocols=["ocpp1.6"])  # type: ignore[list-item]
        await ws.recv()
    assert not [m for m in csms.lines if m.get("event") == "connected"]


# ---- the offline queue on Redis, across a gateway restart ------------------------------------------------


async def proxy_gateway(store: Any, port: int, secret: Path, replica: str) -> tuple[GatewayService, MemoryBus]:
    settings = GatewaySettings(
        ocpp_port=0,
        ocpp_host="127.0.0.1",
        replica_id=replica,
        upstream_url=f"ws://127.0.0.1:{port}/ocpp",
        upstream_security_profile=1,
        upstream_passwords_file=secret,
        upstream_backoff_max_s=1.0,
        upstream_call_timeout_s=3.0,
        upstream_connect_timeout_s=2.0,
    )
    bus = MemoryBus()
    await bus.start()
    svc = GatewayService(Runtime(settings=settings, bus=bus, store=store, clock=RealClock()), TOPOLOGY, settings)
    await svc.start()
    return svc, bus


@pytest.mark.redis
@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_the_queue_survives_a_gateway_restart_on_redis(version: str, redis_store: Any, tmp_path: Path) -> None:
    """Upstream down: a transaction is queued in Redis by gateway A; A stops; the station connects to
    gateway B (same Redis); the upstream comes back → B delivers the queue in order, after the station's
    boot, 1.6 with the upstream's transaction id; the entries leave Redis, the 1.6 id map stays."""
    sid, v16 = ("PX16", True) if version == "1.6" else ("PX201", False)
    pw = tmp_path / "csms-passwords.json"
    pw.write_text(json.dumps(PASSWORDS))
    secret = tmp_path / "upstream-passwords.yaml"
    secret.write_text("".join(f"{k}: {v}\n" for k, v in PASSWORDS.items()))
    csms = Csms(free_port(), pw)  # not started yet: the upstream is down
    clock = RealClock()
    model = StationModel(next(s for s in TOPOLOGY.stations if s.id == sid))

    gw_a, bus_a = await proxy_gateway(redis_store, csms.port, secret, "gw-a")
    station = StationClient(
        model, [f"ws://127.0.0.1:{gw_a.ocpp_port}/ocpp"], clock, meter_interval_s=3600, reconnect_s=0.2
    )
    station.start()
    try:
        await asyncio.wait_for(station.connected.wait(), 15)
        now = clock.time()
        station.plug_in(1, Ev("ev1", 60_000, 0.2, 0.8, now - 1, now + 3600), now)
        await station.tick(clock.time())
        tx = model.evses[1].tx
        assert tx is not None and model.evses[1].tx_reported
        station.model.evses[1].ev.departure_s = clock.time() - 1  # type: ignore[union-attr]
        await station.tick(clock.time())
        assert model.evses[1].tx is None
        stored = await redis_store.hgetall(f"gw:upstream-queue:{sid}")
        queued = [json.loads(stored[k]) for k in sorted(stored, key=int)]
        kinds = [(q["a"], q["p"].get("eventType")) for q in queued]
        if v16:
            assert kinds[0] == ("StartTransaction", None) and kinds[-1] == ("StopTransaction", None), kinds
            assert int(tx.transaction_id) < 7001  # gridcharge's local id
        else:
            assert kinds[0] == ("TransactionEvent", "Started") and kinds[-1] == ("TransactionEvent", "Ended"), kinds
    finally:
        await station.stop()
    await gw_a.stop()  # the replica is gone; its memory with it
    await bus_a.stop()

    gw_b, bus_b = await proxy_gateway(redis_store, csms.port, secret, "gw-b")
    await csms.start()
    station = StationClient(
        model, [f"ws://127.0.0.1:{gw_b.ocpp_port}/ocpp"], clock, meter_interval_s=3600, reconnect_s=0.2
    )
    station.start()
    try:
        await csms.wait(lambda m: _is_stop(m, sid), 20)
        got = [m for m in csms.lines if m.get("event") == "recv" and m["station"] == sid]
        assert got[0]["action"] == "BootNotification"  # the station's last boot, replayed from Redis
        delivered = [
            (m["action"], m["payload"].get("event_type"))
            for m in got
            if m["action"] in ("StartTransaction", "StopTransaction", "TransactionEvent", "MeterValues")
        ]
        assert delivered[: len(kinds)] == kinds, delivered  # in the order they were queued
        if v16:
            start = next(m for m in got if m["action"] == "StartTransaction")
            stop = next(m for m in got if m["action"] == "StopTransaction")
            assert start["payload"]["id_tag"] == "SIM"
            upstream_id = int(stop["payload"]["transaction_id"])
            assert upstream_id >= 7001  # the upstream's own id, not the station's local one
            ids = await redis_store.hgetall(f"gw:upstream-txids:{sid}")
            assert ids == {tx.transaction_id: str(upstream_id).encode()}
        else:
            assert all(
                m["payload"]["transaction_info"]["transaction_id"] == tx.transaction_id
                for m in got
                if m["action"] == "TransactionEvent"
            )
        await until(lambda: gw_b.proxy is not None and not gw_b.proxy.links[sid].queue, what="queue delivered")
        assert await redis_store.hgetall(f"gw:upstream-queue:{sid}") == {}
    finally:
        await station.stop()
        await gw_b.stop()
        await bus_b.stop()
        await csms.stop()
