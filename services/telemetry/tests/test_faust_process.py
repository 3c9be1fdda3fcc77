"""The faust agent loop without a broker: a record that is applied runs the fast path even when mirroring
its state into the table's changelog fails (faust raised PartitionsMismatch for every grid reading while
the changelog topic was missing from its metadata, so the limiter's NodeLoad waited for the next snapshot);
the keys not mirrored are kept and written with a later record."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gridcharge.shared import contracts as C
from gridcharge.shared.bus.memory import MemoryBus
from gridcharge.shared.clock import SimClock
from gridcharge.shared.config import Settings
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.store.memory import MemoryStore
from gridcharge.telemetry.adapters.faust_runtime import FaustRuntime
from gridcharge.telemetry.core import Outcome
from gridcharge.telemetry.service import TelemetryService
from gridcharge.telemetry.settings import TelemetrySettings
from gridcharge.telemetry.testing import T0, grid, topology


@dataclass
class _Msg:
    topic: str


@dataclass
class _Event:
    key: bytes
    value: bytes
    message: _Msg


class _Stream:
    def __init__(self, events: list[_Event]) -> None:
        self._events = events

    async def events(self) -> AsyncIterator[_Event]:
        for e in self._events:
            yield e


class _Table(dict[str, Any]):
    """Refuses writes until ``fail`` runs out, as faust's table did without changelog metadata."""

    name = "grid-state"

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail

    def __setitem__(self, key: str, value: Any) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("PartitionsMismatch: changelog topic has 0 partitions")
        super().__setitem__(key, value)


async def test_fast_path_runs_when_the_changelog_mirror_fails() -> None:
    clock = SimClock(datetime.fromtimestamp(T0, UTC))
    settings = TelemetrySettings(topic_prefix="p.")
    rt = Runtime(settings=Settings(), bus=MemoryBus(), store=MemoryStore(clock), clock=clock)
    svc = TelemetryService(rt, topology(), settings)
    seen: list[tuple[str, str, Outcome | None]] = []

    async def after(topic: str, key: str, outcome: Outcome | None) -> None:
        seen.append((topic, key, outcome))

    runtime = FaustRuntime(rt, svc.engine, settings, after)
    table = _Table(fail=2)
    runtime.grid_table = table  # type: ignore[assignment]
    topic = "p." + C.GRID_METER_READINGS.name
    events = [
        _Event(b"trafo", grid("trafo", T0 - 2 + i, 1000.0 * (i + 1), 0.0, 0.0).SerializeToString(), _Msg(topic))
        for i in range(3)
    ]
    await runtime._process(_Stream(events), table)
    # every reading reached the fast path, failures or not
    assert [(t, k, o) for t, k, o in seen] == [(C.GRID_METER_READINGS.name, "trafo", Outcome.OK)] * 3
    assert runtime.mirror_failures == 2
    # the meter's state was kept and mirrored once the table took writes: the latest reading
    assert list(table) == ["meter/trafo/m1"]
    assert table["meter/trafo/m1"] == svc.engine.core.export("meter/trafo/m1")
