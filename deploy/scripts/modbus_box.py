"""A §14a control box on Modbus TCP for tests and demos: pymodbus's own TCP server (from the lock, installed by
`make install`) holding the box's contacts.

    .venv/bin/python deploy/scripts/modbus_box.py --port 5020 [--unit 1] [--coils 0,0,0,0] [--inputs 0,0,0,0]

Coils are writable over Modbus (a test or an operator flips the "relay" with function 05, like the DSO's
control box switching its contact); discrete inputs are fixed at start (`--inputs`), as a box wired to a
digital input reports them. Prints `ready <port>` on stdout once it listens; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def _bits(text: str) -> list[bool]:
    return [part.strip() not in ("", "0", "false", "False") for part in text.split(",")]


async def run(port: int, unit: int, coils: list[bool], inputs: list[bool]) -> None:
    device = SimDevice(
        unit,
        simdata=(
            [SimData(0, values=coils, datatype=DataType.BITS)],  # coils (function 01/05/15)
            [SimData(0, values=inputs, datatype=DataType.BITS)],  # discrete inputs (function 02)
            [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)],
        ),
    )
    server = ModbusTcpServer(device, address=("127.0.0.1", port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(server.serve_forever())
    for _ in range(200):
        await asyncio.sleep(0.025)
        if server.transport is not None:
            break
    print(f"ready {port}", flush=True)
    await stop.wait()
    await server.shutdown()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=5020)
    p.add_argument("--unit", type=int, default=1)
    p.add_argument("--coils", default="0,0,0,0,0,0,0,0")
    p.add_argument("--inputs", default="0,0,0,0,0,0,0,0")
    a = p.parse_args(argv)
    asyncio.run(run(a.port, a.unit, _bits(a.coils), _bits(a.inputs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
