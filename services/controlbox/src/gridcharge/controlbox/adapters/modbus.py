"""The control box's contact over Modbus TCP (pymodbus client): one coil or discrete input, polled.

FNN control boxes and most DSO "Steuerboxen" expose their relay as a contact; a Modbus I/O module (or the box
itself) reports it as a discrete input (function 02) or a coil (function 01). `read()` says whether the dimming
contact is active (closed, or open with ``active_closed=False``) or raises ``RelayUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException


class RelayUnavailable(Exception):
    """The contact could not be read (no connection, timeout, Modbus exception response)."""


class ModbusRelay:
    """Reads one bit from a Modbus TCP device; reconnects by itself."""

    def __init__(
        self,
        host: str,
        port: int,
        unit: int,
        address: int,
        kind: str = "discrete_input",
        active_closed: bool = True,
        timeout_s: float = 2.0,
    ) -> None:
        self.host, self.port, self.unit, self.address = host, port, unit, address
        self.kind, self.active_closed, self.timeout_s = kind, active_closed, timeout_s
        self._client: AsyncModbusTcpClient | None = None

    def describe(self) -> str:
        return f"modbus://{self.host}:{self.port}/unit{self.unit}/{self.kind}/{self.address}"

    async def read(self) -> bool:
        """True when the contact commands dimming."""
        try:
            client = await self._connected()
            if self.kind == "coil":
                rr = await asyncio.wait_for(
                    client.read_coils(self.address, count=1, device_id=self.unit), self.timeout_s
                )
            else:
                rr = await asyncio.wait_for(
                    client.read_discrete_inputs(self.address, count=1, device_id=self.unit), self.timeout_s
                )
        except (ModbusException, OSError, TimeoutError) as exc:
            await self.close()
            raise RelayUnavailable(f"{self.describe()}: {type(exc).__name__}: {exc}"[:300]) from None
        if rr.isError() or not getattr(rr, "bits", None):
            raise RelayUnavailable(f"{self.describe()}: error response {rr}"[:300])
        closed = bool(rr.bits[0])
        return closed if self.active_closed else not closed

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is None or not self._client.connected:
            await self.close()
            # no retries or reconnect loop inside the client: the service polls again on its own schedule
            self._client = AsyncModbusTcpClient(
                self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0
            )
            if not await asyncio.wait_for(self._client.connect(), self.timeout_s + 1):
                raise OSError("connection refused or timed out")
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
