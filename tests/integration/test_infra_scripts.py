"""The infrastructure scripts themselves: deploy/scripts/kafka.sh and deploy/scripts/redis.sh.

Each test runs its own broker/server on free loopback ports with a private run dir, so it never
touches the shared Kafka/Redis that `make kafka` / `make redis` started (the jar cache is shared).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "scripts" / "kafka.sh"
REDIS_SH = REPO / "deploy" / "scripts" / "redis.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(script: Path, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(script), *args],
        env=env,
        cwd="/",  # the scripts must work from any cwd
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script.name} {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def kafka_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    port = _free_port()
    controller_port = _free_port()
    while controller_port == port:
        controller_port = _free_port()
    env.update(
        GRIDCHARGE_RUN_DIR=str(tmp_path / "run"),
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(controller_port),
    )
    yield env
    _run(KAFKA_SH, "stop", env=env, check=False)


@pytest.fixture
def redis_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env.update(GRIDCHARGE_RUN_DIR=str(tmp_path / "run"), REDIS_PORT=str(_free_port()))
    yield env
    _run(REDIS_SH, "stop", env=env, check=False)


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v, partition=0)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, group: str, n: int) -> list[bytes]:
    """Read up to n records as `group` and commit what was read."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        got: list[bytes] = []
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=1000, max_records=n - len(got))
            got += [m.value for msgs in batch.values() for m in msgs]
            if len(got) >= n:
                break
        await consumer.commit()
        return got
    finally:
        await consumer.stop()


async def _topics(bootstrap: str) -> set[str]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return set(await consumer.topics())
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_kafka_script_start_restart_keeps_data_stop(kafka_env: dict[str, str]) -> None:
    if shutil.which(kafka_env.get("JAVA", "java")) is None:
        pytest.fail("java not found: kafka.sh needs Java 17+")
    run_dir = Path(kafka_env["GRIDCHARGE_RUN_DIR"])
    marker = run_dir / "kafka.started-by-us"
    bootstrap = f"127.0.0.1:{kafka_env['KAFKA_PORT']}"

    out = _run(KAFKA_SH, "start", env=kafka_env).stdout
    assert "started Kafka" in out
    assert marker.exists()
    assert (run_dir / "kafka.pid").exists()

    again = _run(KAFKA_SH, "start", env=kafka_env).stdout
    assert "already running" in again
    assert _run(KAFKA_SH, "status", env=kafka_env).returncode == 0

    topic, group = f"infra-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    await _produce(bootstrap, topic, [f"m{i}".encode() for i in range(6)])
    assert await _consume(bootstrap, topic, group, 3) == [b"m0", b"m1", b"m2"]

    _run(KAFKA_SH, "restart", env=kafka_env)
    # the log and the group's committed offset survive the restart
    assert await _consume(bootstrap, topic, group, 3) == [b"m3", b"m4", b"m5"]
    assert await _consume(bootstrap, topic, f"{group}-new", 6) == [f"m{i}".encode() for i in range(6)]

    assert "stopped" in _run(KAFKA_SH, "stop", env=kafka_env).stdout
    assert not marker.exists()
    assert _run(KAFKA_SH, "status", env=kafka_env, check=False).returncode != 0
    assert "not running" in _run(KAFKA_SH, "stop", env=kafka_env).stdout

    # --fresh wipes the data
    _run(KAFKA_SH, "start", "--fresh", env=kafka_env)
    assert topic not in await _topics(bootstrap)


@pytest.mark.redis
def test_redis_script_start_idempotent_stop(redis_env: dict[str, str]) -> None:
    port = redis_env["REDIS_PORT"]
    run_dir = Path(redis_env["GRIDCHARGE_RUN_DIR"])
    marker = run_dir / "redis.started-by-us"

    assert "started redis-server" in _run(REDIS_SH, "start", env=redis_env).stdout
    assert marker.exists()
    assert "already running" in _run(REDIS_SH, "start", env=redis_env).stdout
    assert _run(REDIS_SH, "status", env=redis_env).returncode == 0

    def cli(*args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", port, *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert cli("set", "k", "v") == "OK"
    assert cli("get", "k") == "v"
    assert cli("config", "get", "appendonly").splitlines()[-1] == "no"

    _run(REDIS_SH, "restart", env=redis_env)
    assert cli("get", "k") == ""  # no persistence, by design

    assert "stopped" in _run(REDIS_SH, "stop", env=redis_env).stdout
    assert not marker.exists()
    assert _run(REDIS_SH, "status", env=redis_env, check=False).returncode != 0
