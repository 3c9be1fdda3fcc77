from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from gridcharge.shared.clock import SimClock, parse_duration
from gridcharge.shared.config import Settings
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.logging import JsonFormatter


def test_settings_from_env_and_overrides() -> None:
    s = Settings.from_env({"GRIDCHARGE_BUS": "kafka", "GRIDCHARGE_HTTP_PORT": "9100"}, http_port=9200)
    assert s.bus == "kafka" and s.http_port == 9200


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"GRIDCHARGE_HTTP_PORT": "eighty"})
    assert err.value.source == "environment" and err.value.key == "GRIDCHARGE_HTTP_PORT"
    with pytest.raises(ConfigError, match="GRIDCHARGE_BUS"):
        Settings.from_env({"GRIDCHARGE_BUS": "rabbit"})


async def test_sim_clock_wakes_sleepers_in_order_without_real_waiting() -> None:
    clock = SimClock(datetime(2026, 1, 1, tzinfo=UTC))
    woke: list[tuple[str, datetime]] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper("b", 7200)), asyncio.create_task(sleeper("a", 60))]
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await clock.advance(3 * 3600)
    assert loop.time() - t0 < 1.0
    assert [n for n, _ in woke] == ["a", "b"]
    assert woke[0][1] == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    assert clock.now() == datetime(2026, 1, 1, 3, tzinfo=UTC)
    await asyncio.gather(*tasks)


def test_sim_clock_requires_aware_start() -> None:
    with pytest.raises(ValueError):
        SimClock(datetime(2026, 1, 1))


def test_parse_duration() -> None:
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("90") == timedelta(seconds=90)


def test_json_logs_are_one_object_per_line_and_cap_untrusted_strings() -> None:
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("w\norld",), None)
    rec.station = "A" * 2000
    line = JsonFormatter("gateway").format(rec)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["msg"] == "hello w\norld" and doc["service"] == "gateway"
    assert len(doc["station"]) < 600
