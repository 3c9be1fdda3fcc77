"""`gridcharge bench e2e` without a broker: one clear error naming each missing part, exit code 2, at once."""

from __future__ import annotations

import argparse
import socket
import time

import pytest
from gridcharge.simulator import bench_e2e


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_missing_kafka_and_redis_are_named_and_the_bench_stops_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kafka, redis = _closed_port(), _closed_port()
    monkeypatch.setenv("GRIDCHARGE_KAFKA_BOOTSTRAP", f"127.0.0.1:{kafka}")
    monkeypatch.setenv("GRIDCHARGE_REDIS_URL", f"redis://127.0.0.1:{redis}/0")
    t = time.monotonic()
    rc = bench_e2e.bench_main(argparse.Namespace(quick=True, meters_follow=False))
    err = capsys.readouterr().err
    assert rc == 2
    assert time.monotonic() - t < 20  # not the 3-minute wait for stations that can never connect
    assert f"Kafka at 127.0.0.1:{kafka} (GRIDCHARGE_KAFKA_BOOTSTRAP)" in err
    assert f"Redis at redis://127.0.0.1:{redis}/0 (GRIDCHARGE_REDIS_URL)" in err
    assert "make kafka redis" in err
