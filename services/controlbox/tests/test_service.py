"""The control-box service on the in-process bus and a SimClock: relay and LPC inputs → ExternalLimit messages."""

from __future__ import annotations

import pytest
from gridcharge.controlbox.adapters.codec import LIMIT_ID, SOURCE
from gridcharge.controlbox.settings import ControlboxSettings
from gridcharge.shared.config import Settings
from gridcharge.shared.errors import ConfigError

from .conftest import EnvFactory, topology


def total_w(msg: object) -> float:
    lim = msg.limit_w  # type: ignore[attr-defined]
    return float(lim.l1 + lim.l2 + lim.l3)


async def test_relay_closed_publishes_the_minimum_and_open_withdraws(make_env: EnvFactory) -> None:
    env = await make_env(controlbox_devices=2)
    first = env.limits[-1]
    assert first.valid_to.ToSeconds() == first.valid_from.ToSeconds()  # start-up: nothing dimmed, withdrawn
    env.relay.closed = True
    await env.run(2)
    m = env.limits[-1]
    assert (m.node_id, m.source, m.limit_id) == ("connection", SOURCE, LIMIT_ID)
    assert total_w(m) == pytest.approx(4200 + 4200 * 0.8)  # two devices behind the EMS
    assert m.valid_to.ToSeconds() - m.valid_from.ToSeconds() == 300  # open-ended: the hold window
    assert m.fallback_limit_w == m.limit_w
    n = len(env.limits)
    await env.run(31)
    assert len(env.limits) > n and total_w(env.limits[-1]) > 0  # refreshed while dimming
    env.relay.closed = False
    await env.run(2)
    m = env.limits[-1]
    assert m.valid_to.ToSeconds() == m.valid_from.ToSeconds()
    assert env.svc.status()["dimmed"] is False


async def test_unreadable_relay_dims_after_the_loss_time(make_env: EnvFactory) -> None:
    env = await make_env(controlbox_relay_loss_s=10)
    env.relay.fail = True
    await env.run(9)
    assert not env.svc.status()["dimmed"]
    await env.run(3)
    st = env.svc.status()
    assert st["dimmed"] and st["reason"] == "relay_unreadable" and st["relay"] == "unreadable"
    env.relay.fail = False
    await env.run(2)
    assert not env.svc.status()["dimmed"]


async def test_lpc_heartbeat_loss_publishes_failsafe_with_its_end(make_env: EnvFactory) -> None:
    from gridcharge.controlbox.adapters.lpc import LpcWrite

    env = await make_env(controlbox_relay="off", controlbox_lpc="http")
    await env.svc.lpc_write(LpcWrite(active=True, limit_w=5000, duration_s=600), "http")
    await env.rt.bus.flush()
    assert total_w(env.limits[-1]) == pytest.approx(5000)
    for _ in range(3):
        await env.run(60)
        await env.svc.lpc_heartbeat("http")
    await env.run(121)  # no heartbeat for > 120 s
    st = env.svc.status()
    assert st["lpc"] == "failsafe" and st["limit_w"] == 4200
    m = env.limits[-1]
    assert total_w(m) == pytest.approx(4200)
    assert m.valid_to.ToSeconds() - m.valid_from.ToSeconds() == pytest.approx(7200 - 1, abs=2)


def test_settings_fail_with_one_line_naming_the_key() -> None:
    base = Settings.from_env({}, bus="memory")
    with pytest.raises(ConfigError, match="GRIDCHARGE_CONTROLBOX_NODE"):
        ControlboxSettings.from_env(
            {}, **base.model_dump(), controlbox_node="nowhere", controlbox_relay="modbus"
        ).rules(topology())
    with pytest.raises(ConfigError, match="GRIDCHARGE_CONTROLBOX_RELAY"):
        ControlboxSettings.from_env({}, **base.model_dump(), controlbox_node="connection").rules(topology())
    with pytest.raises(ConfigError, match="GRIDCHARGE_CONTROLBOX_LPC_FAILSAFE_DURATION_S"):
        ControlboxSettings.from_env({"GRIDCHARGE_CONTROLBOX_LPC_FAILSAFE_DURATION_S": "3600"})
    with pytest.raises(ConfigError, match="GRIDCHARGE_CONTROLBOX_MODBUS_KIND"):
        ControlboxSettings.from_env({"GRIDCHARGE_CONTROLBOX_MODBUS_KIND": "register"})
    s = ControlboxSettings.from_env(
        {
            "GRIDCHARGE_CONTROLBOX_NODE": "connection",
            "GRIDCHARGE_CONTROLBOX_RELAY": "modbus",
            "GRIDCHARGE_CONTROLBOX_DEVICES": "3",
            "GRIDCHARGE_CONTROLBOX_EMS": "false",
            "GRIDCHARGE_CONTROLBOX_MODBUS_PORT": "5020",
        }
    )
    assert s.rules(topology()).minimum_w == 3 * 4200 and s.controlbox_modbus_port == 5020
