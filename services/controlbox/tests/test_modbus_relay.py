"""The Modbus relay adapter against pymodbus's TCP server in a process of its own (deploy/scripts/modbus_box.py):
discrete inputs and coils, inverted contacts, a wrong unit id, an address past the end, a closed port."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gridcharge.controlbox.adapters.modbus import ModbusRelay, RelayUnavailable

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def box() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "deploy/scripts/modbus_box.py"),
            "--port",
            str(port),
            "--unit",
            "3",
            "--inputs",
            "0,1,0,0",
            "--coils",
            "1,0,0,0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        pytest.fail(f"modbus_box.py did not start: {line!r}")
    yield port
    proc.terminate()
    proc.wait(10)


async def test_reads_discrete_inputs_and_coils(box: int) -> None:
    cases = [
        ("discrete_input", 1, True, True),
        ("discrete_input", 0, True, False),
        ("discrete_input", 1, False, False),
        ("coil", 0, True, True),
        ("coil", 1, True, False),
    ]
    for kind, address, active_closed, expected in cases:
        relay = ModbusRelay("127.0.0.1", box, 3, address, kind, active_closed, timeout_s=2)
        try:
            assert await relay.read() is expected, (kind, address, active_closed)
            assert await relay.read() is expected  # the connection is reused
        finally:
            await relay.close()


@pytest.mark.parametrize(("unit", "address"), [(9, 0), (3, 60000)])
async def test_error_responses_are_unavailable(box: int, unit: int, address: int) -> None:
    relay = ModbusRelay("127.0.0.1", box, unit, address, "discrete_input", timeout_s=2)
    try:
        with pytest.raises(RelayUnavailable):
            await relay.read()
    finally:
        await relay.close()


async def test_closed_port_is_unavailable() -> None:
    relay = ModbusRelay("127.0.0.1", free_port(), 1, 0, "coil", timeout_s=1)
    with pytest.raises(RelayUnavailable):
        await relay.read()
    await relay.close()
