"""Bad input never hurts: error codes per version, unsupported actions, oversize frames, rate and
connection caps, and a hypothesis fuzz over frames and payloads for both versions."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gridcharge.gateway.core.errors import V16_CODES, V201_CODES
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import InvalidStatus

from . import samples
from .conftest import Gateway, booted, open_client, start_gateway


async def test_unknown_and_unsupported_actions(gateway: Gateway) -> None:
    c16 = await booted(gateway, "CP1")
    res = await c16.call("FooBar", {})
    assert res[2] == "NotImplemented"  # not known to the spec
    res = await c16.call("SetChargingProfile", {})  # known to 1.6, not accepted from a station
    assert res[2] == "NotSupported"
    res = await c16.call("RemoteStartTransaction", {"idTag": "T"})  # a CSMS-to-station message
    assert res[2] == "NotSupported"
    res = await c16.call("DiagnosticsStatusNotification", {"status": "Idle"})  # a station message: answered
    assert res == [3, res[1], {}]
    c201 = await booted(gateway, "CS1", "ocpp2.0.1")
    res = await c201.send_raw('[7,"u1","Heartbeat",{}]', "u1")
    assert res[:3] == [4, "u1", "MessageTypeNotSupported"]
    res = await c201.send_raw("{not json", "-1")
    assert res[:3] == [4, "-1", "RpcFrameworkError"]
    res = await c201.send_raw(b"\xff\xfe\x00", "-1")
    assert res[:3] == [4, "-1", "RpcFrameworkError"]
    res = await c16.send_raw("{not json", "-1")
    assert res[:3] == [4, "-1", "FormationViolation"]
    res = await c201.call("BootNotification", {"reason": "PowerUp"})
    assert res[2] == "OccurrenceConstraintViolation" and len(res[3]) <= 255
    res = await c16.call("StatusNotification", {"connectorId": "x" * 300, "errorCode": "NoError", "status": "x"})
    assert res[2] == "TypeConstraintViolation" and "xxx" not in res[3]
    assert (await c16.call("Heartbeat", {}))[0] == 3  # the connection still works
    await c16.close()
    await c201.close()


async def test_oversize_frame_closes_with_1009(gateway: Gateway) -> None:
    c = await booted(gateway, "CP2")
    await c.ws.send(json.dumps([2, "big", "DataTransfer", {"vendorId": "v", "data": "x" * 70_000}]))
    await asyncio.wait_for(c.ws.wait_closed(), 5)
    assert c.ws.close_code == 1009
    other = await booted(gateway, "CP3")  # others unaffected
    assert (await other.call("Heartbeat", {}))[0] == 3
    await other.close()


async def test_rate_limit_and_connection_caps() -> None:
    gw = await start_gateway(rate_limit_per_s=1, rate_burst=5, max_connections_per_ip=2, read_capabilities=False)
    try:
        c = await booted(gw, "CP1")
        answers = [await c.call("Heartbeat", {}) for _ in range(8)]
        errors = [a for a in answers if a[0] == 4]
        assert errors and errors[0][2] == "GenericError" and "rate limit" in errors[0][3]
        for i in range(40):  # a sustained flood is cut off with 1008
            await c.ws.send(json.dumps([2, f"f{i}", "Heartbeat", {}]))
        await asyncio.wait_for(c.ws.wait_closed(), 5)
        assert c.ws.close_code == 1008
        await asyncio.sleep(1.2)  # the station's bucket outlives the connection (1/s)
        c = await booted(gw, "CP1")  # and may come back once it has refilled
        c2 = await open_client(gw, "CP2")
        with pytest.raises(InvalidStatus) as exc:
            await open_client(gw, "CP3")
        assert exc.value.response.status_code == 503
        with pytest.raises(InvalidStatus) as exc:
            await open_client(gw, "NOT-IN-TOPOLOGY")
        assert exc.value.response.status_code in (404, 503)
        await c.close()
        await c2.close()
    finally:
        await gw.service.stop()
        await gw.bus.stop()


async def test_unknown_station_404_and_second_connection_replaces_first(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as exc:
        await open_client(gateway, "UNKNOWN-1")
    assert exc.value.response.status_code == 404
    first = await booted(gateway, "CP4")
    second = await booted(gateway, "CP4")
    await asyncio.sleep(0.2)
    assert first.ws.close_code == 4000
    assert (await second.call("Heartbeat", {}))[0] == 3
    assert not gateway.service.sessions["CP4"].closed and len(gateway.service.sessions) == 1
    await second.close()


async def test_pending_boot_policy_for_unknown_station() -> None:
    gw = await start_gateway(unknown_stations="pending", read_capabilities=False)
    try:
        c = await open_client(gw, "NEWCOMER")
        res = await c.call("BootNotification", samples.V16["BootNotification"])
        assert res[2]["status"] == "Pending"
        res = await c.call("Heartbeat", {})
        assert res[2] == "SecurityError"
        await c.close()
    finally:
        await gw.service.stop()
        await gw.bus.stop()


# ---- fuzz ----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=15,
)


def _mutate(draw: Any, payload: Any) -> Any:
    """Replace, drop or add one field somewhere in a valid payload."""
    if isinstance(payload, dict) and payload:
        key = draw(st.sampled_from(sorted(payload)))
        op = draw(st.sampled_from(["replace", "drop", "add", "recurse"]))
        out = dict(payload)
        if op == "replace":
            out[key] = draw(json_values)
        elif op == "drop":
            del out[key]
        elif op == "add":
            out[draw(st.text(max_size=10))] = draw(json_values)
        else:
            out[key] = _mutate(draw, payload[key])
        return out
    if isinstance(payload, list) and payload:
        i = draw(st.integers(0, len(payload) - 1))
        out_l = list(payload)
        out_l[i] = _mutate(draw, payload[i])
        return out_l
    return draw(json_values)


@st.composite
def frames(draw: Any, version: str) -> str | bytes:
    seeds = samples.V16 if version == "1.6" else samples.V201
    kind = draw(st.sampled_from(["text", "binary", "json", "shape", "mutated", "mutated", "valid"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values))
    uid = draw(st.text(min_size=0, max_size=40) | st.integers() | st.none())
    action = draw(st.sampled_from(sorted(seeds)) | st.text(max_size=30))
    if kind == "shape":
        mtype = draw(st.integers(-2, 9) | st.text(max_size=3) | st.none())
        tail = draw(st.lists(json_values, max_size=4))
        return json.dumps([mtype, uid, *tail][: draw(st.integers(0, 6))])
    action = draw(st.sampled_from(sorted(seeds)))
    payload = seeds[action] if kind == "valid" else _mutate(draw, seeds[action])
    return json.dumps([2, draw(st.text(min_size=1, max_size=36)), action, payload])


class FuzzRig:
    """A gateway and one booted station per version on a loop in a background thread (hypothesis
    drives sync test functions)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gw: Gateway = self.run(start_gateway(rate_limit_per_s=10_000, rate_burst=10_000, read_capabilities=False))
        self.clients: dict[str, Any] = {}
        self.n = 0

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def client(self, version: str) -> Any:
        sid = "CP5" if version == "1.6" else "CS2"
        c = self.clients.get(version)
        if c is None or c.ws.close_code is not None:
            c = self.clients[version] = await booted(self.gw, sid, "ocpp1.6" if version == "1.6" else "ocpp2.0.1")
            await c.detach()
        return c

    async def exchange(self, version: str, frame: str | bytes) -> list[list[Any]]:
        """Send `frame`, then a marker Heartbeat; return everything received before the marker's answer."""
        c = await self.client(version)
        self.n += 1
        marker = f"hb{self.n}"
        got: list[list[Any]] = []
        await c.ws.send(frame)
        await c.ws.send(json.dumps([2, marker, "Heartbeat", {}]))
        while True:
            msg = json.loads(await asyncio.wait_for(c.ws.recv(), 5))
            if msg[1] == marker:
                assert msg[0] == 3 or (msg[0] == 4 and msg[2] == "SecurityError"), msg
                if msg[0] == 4:  # a fuzzed BootNotification was rejected: boot again
                    boot = samples.V16 if version == "1.6" else samples.V201
                    await c.ws.send(json.dumps([2, marker + "b", "BootNotification", boot["BootNotification"]]))
                    assert json.loads(await asyncio.wait_for(c.ws.recv(), 5))[0] == 3
                return got
            got.append(msg)

    def close(self) -> None:
        async def _close() -> None:
            for c in self.clients.values():
                await c.ws.close()
            await self.gw.service.stop()
            await self.gw.bus.stop()

        self.run(_close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def rig() -> Iterator[FuzzRig]:
    r = FuzzRig()
    yield r
    r.close()


def _check(version: str, frame: str | bytes, got: list[list[Any]]) -> None:
    codes = V16_CODES if version == "1.6" else V201_CODES
    for msg in got:
        assert msg[0] in (3, 4), msg
        if msg[0] == 4:
            assert msg[2] in codes, msg
            assert isinstance(msg[3], str) and len(msg[3]) <= 255
    assert len(got) <= 1, got


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_fuzz_frames(rig: FuzzRig, version: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gridcharge")

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(frame=frames(version))
    def one(frame: str | bytes) -> None:
        _check(version, frame, rig.run(rig.exchange(version, frame)))

    one()
    # no handler blew up, the fuzzed connection and another station still work
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records[:3]

    async def others() -> None:
        other = await booted(rig.gw, "CP6")
        assert (await other.call("Heartbeat", {}))[0] == 3
        await other.close()

    rig.run(others())


# ---- timestamps at the edges of what a UTC timestamp can hold --------------------------------------------


@st.composite
def edge_timestamps(draw: Any) -> str:
    year = draw(st.sampled_from([1, 2, 1970, 2026, 9998, 9999]) | st.integers(1, 9999))
    month, day = draw(st.integers(1, 12)), draw(st.integers(1, 28))
    hh, mm, ss = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    off = draw(
        st.sampled_from(["Z", "+14:00", "-14:00", "+00:00"])
        | st.builds(
            lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
            st.sampled_from("+-"),
            st.integers(0, 14),
            st.sampled_from([0, 30, 45]),
        )
    )
    frac = draw(st.sampled_from(["", ".5", ".999999"]))
    return f"{year:04d}-{month:02d}-{day:02d}T{hh:02d}:{mm:02d}:{ss:02d}{frac}{off}"


def _with_timestamp(version: str, action: str, ts: str) -> dict[str, Any]:
    """A valid seed with every date-time field (per the official schema) set to `ts`."""
    from gridcharge.gateway.core import schemas as sch
    from gridcharge.gateway.core.errors import Version

    seeds = samples.V16 if version == "1.6" else samples.V201
    payload = json.loads(json.dumps(seeds[action]))
    v = Version.V16 if version == "1.6" else Version.V201

    def put(node: Any, path: tuple[str, ...]) -> None:
        head, rest = path[0], path[1:]
        items = (
            (node if isinstance(node, list) else [])
            if head == "*"
            else ([node] if isinstance(node, dict) and head in node else [])
        )
        for item in items:
            if head == "*":
                put(item, rest) if rest else None
            elif rest:
                put(item[head], rest)
            else:
                item[head] = ts

    for path in sch._datetime_paths(v, action, "req"):
        put(payload, path)
    return payload


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_fuzz_timestamps(rig: FuzzRig, version: str, caplog: pytest.LogCaptureFixture) -> None:
    """Regression (found by review): 0001-01-01T00:00:00+14:00 or 9999-12-31T23:59:59-14:00 reached the
    protobuf mapping and was answered InternalError with a traceback. Now: a CALLRESULT, or
    PropertyConstraintViolation when the UTC value is outside years 1..9999."""
    caplog.set_level(logging.ERROR, logger="gridcharge")
    seeds = samples.V16 if version == "1.6" else samples.V201
    with_dates = sorted(a for a in seeds if '"20' in json.dumps(seeds[a]) and a != "BootNotification")

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(action=st.sampled_from(with_dates), ts=edge_timestamps())
    @example(action="StatusNotification", ts="0001-01-01T00:00:00+14:00")
    @example(action="MeterValues", ts="9999-12-31T23:59:59-14:00")
    def one(action: str, ts: str) -> None:
        frame = json.dumps([2, "ts1", action, _with_timestamp(version, action, ts)])
        got = rig.run(rig.exchange(version, frame))
        _check(version, frame, got)
        assert len(got) == 1 and (got[0][0] == 3 or got[0][2] == "PropertyConstraintViolation"), (action, ts, got)

    one()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records[:3]
