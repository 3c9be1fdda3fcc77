"""OCPP-side hardening: rate buckets that survive reconnects (per station id and per IP), back-off and
lockout after failed Basic auth, out-of-range timestamps, and the start-up warning for profile 0."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

import pytest
from gridcharge.gateway.adapters.credentials import hash_password
from prometheus_client import REGISTRY, generate_latest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from . import samples
from .conftest import BOOT_16, Gateway, RawClient, booted, open_client, start_gateway


async def stop(gw: Gateway) -> None:
    await gw.service.stop()
    await gw.bus.stop()


# ---- 6. rate limits outlive the connection -------------------------------------------------------------


async def test_reconnecting_does_not_refill_the_station_bucket() -> None:
    gw = await start_gateway(rate_limit_per_s=0.5, rate_burst=5, read_capabilities=False)
    try:
        c = await booted(gw, "CP1")  # 1 token
        for _ in range(4):
            assert (await c.call("Heartbeat", {}))[0] == 3  # 4 more: the burst is used up
        assert (await c.call("Heartbeat", {}))[2] == "GenericError"
        await c.close()
        c = await open_client(gw, "CP1")  # a new connection: still the same station
        res = await c.call("BootNotification", BOOT_16)
        assert res[2] == "GenericError" and "rate limit" in res[3]
        assert (await c.call("Heartbeat", {}))[2] == "GenericError"
        other = await booted(gw, "CP2")  # other stations keep their own allowance
        assert (await other.call("Heartbeat", {}))[0] == 3
        await c.close()
        await other.close()
    finally:
        await stop(gw)


async def test_one_source_ip_shares_a_bucket_across_station_ids() -> None:
    gw = await start_gateway(ip_rate_limit_per_s=0.5, ip_rate_burst=6, read_capabilities=False)
    try:
        answers = []
        for sid in ("CP1", "CP2", "CP3"):
            c = await open_client(gw, sid)
            answers.append(await c.call("BootNotification", BOOT_16))
            answers.append(await c.call("Heartbeat", {}))
            answers.append(await c.call("Heartbeat", {}))
            await c.close()
        assert [a[0] for a in answers[:6]] == [3] * 6
        assert [a[2] for a in answers[6:]] == ["GenericError"] * 3
        text = generate_latest(REGISTRY).decode()
        assert 'gridcharge_gateway_rate_limited_total{scope="ip"}' in text
    finally:
        await stop(gw)


# ---- 7. failed Basic auth: back-off, then lockout ----------------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def _status(url: str, user: str, password: str) -> int:
    try:
        ws = await connect(
            url,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            additional_headers=_basic(user, password),
        )
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "credentials.yaml"
    path.write_text(
        "".join(f'{sid}: "{hash_password("pw-" + sid, iterations=1000)}"\n' for sid in ("CP1", "CP2", "CP3", "CP4"))
    )
    return path


async def test_failed_auth_backs_off_then_locks_the_station_id(credentials: Path) -> None:
    gw = await start_gateway(
        security_profile=1,
        credentials_file=credentials,
        read_capabilities=False,
        auth_backoff_base_s=0.3,
        auth_backoff_max_s=0.3,
        auth_lockout_after=3,
        auth_lockout_s=60,
    )
    try:
        url = gw.url + "CP1"
        assert await _status(url, "CP1", "guess-1") == 401
        # right after a failure even the right password is refused, unchecked (back-off)
        try:
            await connect(url, subprotocols=["ocpp1.6"], additional_headers=_basic("CP1", "pw-CP1"))  # type: ignore[list-item]
            raise AssertionError("accepted during the back-off")
        except InvalidStatus as exc:
            assert exc.response.status_code == 401 and exc.response.headers["Retry-After"] == "1"
        await asyncio.sleep(0.35)
        assert await _status(url, "CP1", "pw-CP1") == 101  # the back-off is over
        for guess in ("guess-2", "guess-3", "guess-4"):
            await asyncio.sleep(0.35)
            assert await _status(url, "CP1", guess) == 401
        await asyncio.sleep(0.35)
        assert await _status(url, "CP1", "pw-CP1") == 401  # locked: 3 failures since the success
        assert await _status(gw.url + "CP2", "CP2", "pw-CP2") == 101  # other stations are not affected
        text = generate_latest(REGISTRY).decode()
        assert 'gridcharge_gateway_auth_lockouts_total{scope="station"}' in text
        assert 'gridcharge_gateway_auth_failures_total{outcome="locked"}' in text
        assert 'gridcharge_gateway_auth_failures_total{outcome="throttled"}' in text
        assert "CP1" not in text
    finally:
        await stop(gw)


async def test_failed_auth_from_one_ip_locks_the_ip(credentials: Path) -> None:
    gw = await start_gateway(
        security_profile=1,
        credentials_file=credentials,
        read_capabilities=False,
        auth_backoff_base_s=0.01,
        auth_backoff_max_s=0.01,
        auth_ip_lockout_after=3,
        auth_lockout_s=60,
    )
    try:
        for sid in ("CP1", "CP2", "CP3"):  # one guess at each of three stations
            assert await _status(gw.url + sid, sid, "guess") == 401
            await asyncio.sleep(0.02)
        assert await _status(gw.url + "CP4", "CP4", "pw-CP4") == 401  # the IP is locked
    finally:
        await stop(gw)


async def test_brute_force_rate_is_bounded(credentials: Path) -> None:
    """The reported attack: password guesses as fast as possible. With the default back-off only a few are
    checked in two seconds (1 s after the first failure, 2 s after the second); the rest get 401 unchecked."""
    gw = await start_gateway(security_profile=1, credentials_file=credentials, read_capabilities=False)

    def checked() -> float | None:
        return REGISTRY.get_sample_value("gridcharge_gateway_auth_failures_total", {"outcome": "bad_credentials"})

    try:
        before, attempts = checked() or 0.0, 0
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.0
        while loop.time() < end:
            attempts += 1
            assert await _status(gw.url + "CP1", "CP1", f"guess-{attempts}") == 401
        # even the right password, had it been the next guess, is refused unchecked
        assert await _status(gw.url + "CP1", "CP1", "pw-CP1") == 401
        after = checked()
        assert after is not None and attempts > 20 and after - before <= 2, (attempts, after, before)
    finally:
        await stop(gw)


# ---- 8. timestamps no UTC timestamp can hold -----------------------------------------------------------------

EXTREME = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T13:59:59+14:00"]


@pytest.mark.parametrize("ts", EXTREME)
async def test_out_of_range_timestamps_are_constraint_errors(
    gateway: Gateway, ts: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gridcharge")
    c16 = await booted(gateway, "CP1")
    c201 = await booted(gateway, "CS1", "ocpp2.0.1")
    cases: list[tuple[RawClient, str, dict[str, object]]] = [
        (c16, "StatusNotification", {**samples.V16["StatusNotification"], "timestamp": ts}),
        (c16, "StartTransaction", {**samples.V16["StartTransaction"], "timestamp": ts}),
        (c16, "MeterValues", {**samples.V16["MeterValues"], "meterValue": [{**samples.MV_16[0], "timestamp": ts}]}),
        (c201, "StatusNotification", {**samples.V201["StatusNotification"], "timestamp": ts}),
        (c201, "TransactionEvent", {**samples.V201["TransactionEvent"], "timestamp": ts}),
        (
            c201,
            "NotifyEVChargingNeeds",
            {"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "AC_three_phase", "departureTime": ts}},
        ),
        (c201, "NotifyEvent", {**samples.V201["NotifyEvent"], "generatedAt": ts}),
    ]
    for client, action, payload in cases:
        res = await client.call(action, payload)
        assert res[:3] == [4, res[1], "PropertyConstraintViolation"], (action, res)
        assert "date-time" in res[3]
    assert (await c16.call("Heartbeat", {}))[0] == 3 and (await c201.call("Heartbeat", {}))[0] == 3
    assert not caplog.records
    await c16.close()
    await c201.close()


# ---- 9. security profile 0 outside development -----------------------------------------------------------------


@pytest.mark.parametrize(("host", "profile", "warned"), [("0.0.0.0", 0, True), ("127.0.0.1", 0, False)])
async def test_profile_0_warns_at_start_up_unless_on_loopback(
    host: str, profile: int, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gridcharge")
    gw = await start_gateway(ocpp_host=host, security_profile=profile, read_capabilities=False)
    try:
        lines = [r for r in caplog.records if "security profile 0" in r.getMessage()]
        assert len(lines) == (1 if warned else 0)
        if warned:
            assert lines[0].levelno == logging.WARNING and "take over" in lines[0].getMessage()
    finally:
        await stop(gw)
