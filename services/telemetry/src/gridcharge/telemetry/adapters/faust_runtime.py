"""Kafka runtime: a faust-streaming app run inside the service's event loop.

Agents read the input topics as raw bytes and decode protobuf themselves; every source whose state
changed is written to a changelog-backed table (`station-state`: EVSEs and stations, co-partitioned
with the station-keyed topics, 12 partitions; `grid-state`: grid meters and weather, 6 partitions).
After a (re)start faust replays the changelogs into the tables and `on_recover` loads them into the
core, so a restarted worker carries on with the state it had. Offsets are committed by faust after
each event, so records are not applied twice.

Node loads sum over every station, so one active worker must own all partitions (run one replica;
faust standbys can be added later). See docs/telemetry.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import faust
from gridcharge.shared import contracts as C
from gridcharge.shared.bus.kafka import KafkaBus
from gridcharge.shared.runtime import Runtime
from gridcharge.telemetry.adapters.bus_runtime import AfterRecord
from gridcharge.telemetry.adapters.engine import Engine
from gridcharge.telemetry.settings import TelemetrySettings

log = logging.getLogger(__name__)

STATION_TOPICS = (C.STATION_EVENTS, C.METER_VALUES, C.COMMANDS, C.COMMAND_RESULTS)
GRID_TOPICS = (C.GRID_METER_READINGS, C.WEATHER)
STOP_TIMEOUT_S = 30.0


class FaustRuntime:
    """faust.App with two agents and two tables, started with `app.start()` in the running loop."""

    kind = "faust"

    def __init__(
        self, rt: Runtime, engine: Engine, settings: TelemetrySettings, after: AfterRecord | None = None
    ) -> None:
        self.rt, self.engine, self.settings, self.after = rt, engine, settings, after
        self.prefix = settings.topic_prefix
        self.ready = False
        self._recovered: set[str] = set()
        self.mirror_failures = 0
        self._mirror_logged = -math.inf
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if settings.telemetry_datadir is not None:
            datadir = Path(settings.telemetry_datadir)
        else:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="gridcharge-telemetry-")
            datadir = Path(self._tmpdir.name)
        web_port = settings.telemetry_faust_web_port
        self.app = faust.App(
            self.prefix + settings.telemetry_group,
            broker=f"kafka://{settings.kafka_bootstrap}",
            store="memory://",
            datadir=str(datadir),
            autodiscover=False,
            web_enabled=web_port > 0,
            web_port=web_port or 6066,
            topic_replication_factor=1,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            table_standby_replicas=0,
        )
        self.station_table = self.app.Table("station-state", default=None, partitions=STATION_TOPICS[0].partitions)
        self.grid_table = self.app.Table("grid-state", default=None, partitions=GRID_TOPICS[0].partitions)
        self.station_table.on_recover(self._make_recover("station-state"))
        self.grid_table.on_recover(self._make_recover("grid-state"))
        station_src = self.app.topic(
            *(self.prefix + t.name for t in STATION_TOPICS), key_serializer="raw", value_serializer="raw"
        )
        grid_src = self.app.topic(
            *(self.prefix + t.name for t in GRID_TOPICS), key_serializer="raw", value_serializer="raw"
        )
        self.app.agent(station_src, name="telemetry-stations")(self._station_agent)
        self.app.agent(grid_src, name="telemetry-grid")(self._grid_agent)

    def _make_recover(self, name: str) -> Any:
        async def recovered() -> None:
            table = self.station_table if name == "station-state" else self.grid_table
            n = sum(
                1
                for key, value in table.items()
                if isinstance(key, str) and isinstance(value, dict) and self.engine.core.restore(key, value)
            )
            self.engine.core.take_dirty()
            self._recovered.add(name)
            log.info("telemetry state recovered from changelog", extra={"table": name, "entries": n})
            if len(self._recovered) == 2:
                self.ready = True

        return recovered

    async def _process(self, stream: Any, table: Any) -> None:
        """Apply each record, mirror changed source state into `table`, run the fast path. Nothing raised
        here may end the agent (faust would restart it into the same record: a crash loop).

        The three steps fail apart: a record that is applied runs the fast path (the limiter's NodeLoad)
        even when the changelog mirror fails — e.g. faust's PartitionsMismatch while the changelog topic is
        not yet in its metadata; keys not mirrored are kept and written with a later record."""
        plen = len(self.prefix)
        async for event in stream.events():
            try:
                value = event.value if isinstance(event.value, bytes | bytearray) else b""
                topic = event.message.topic[plen:]
                outcome = self.engine.handle(topic, bytes(value), self.rt.clock.time())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("telemetry agent could not apply a record; skipped")
                continue
            self._mirror(table)
            if self.after is not None:
                try:
                    rkey = event.key.decode("utf-8", "replace") if isinstance(event.key, bytes) else ""
                    await self.after(topic, rkey, outcome)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("telemetry fast path failed for a record")

    def _mirror(self, table: Any) -> None:
        """Write the changed keys this table owns into it (its changelog is the recovery state)."""
        dirty = self.engine.core.take_dirty()
        left = set(dirty)
        try:
            for key in dirty:
                owner = self.station_table if key.startswith(("evse/", "station/")) else self.grid_table
                if owner is table:
                    table[key] = self.engine.core.export(key)
                left.discard(key)
        except Exception as exc:
            self.engine.core.mark_dirty(left)
            self.mirror_failures += 1
            now = self.rt.clock.time()
            if now - self._mirror_logged >= 60.0:  # once a minute, not once per record
                self._mirror_logged = now
                log.warning(
                    "telemetry state not mirrored to its changelog yet; kept for the next record",
                    extra={
                        "table": getattr(table, "name", "?"),
                        "failures": self.mirror_failures,
                        "error": repr(exc)[:300],
                    },
                )

    async def _station_agent(self, stream: Any) -> None:
        await self._process(stream, self.station_table)

    async def _grid_agent(self, stream: Any) -> None:
        await self._process(stream, self.grid_table)

    async def start(self) -> None:
        if isinstance(self.rt.bus, KafkaBus):  # source topics must exist with their registry settings
            await self.rt.bus.ensure_topics([t.name for t in (*STATION_TOPICS, *GRID_TOPICS)])
        await self.app.start()
        log.info("faust telemetry worker started", extra={"app": self.app.conf.id})

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.ready:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("faust telemetry worker did not finish recovery")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.ready = False
        try:  # faust's shutdown can hang on a broker hiccup; the process must still stop
            await asyncio.wait_for(self.app.stop(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("faust worker did not stop in time; abandoned", extra={"timeout_s": STOP_TIMEOUT_S})
        except Exception:
            log.warning("faust worker stop failed", exc_info=True)
        if self._tmpdir is not None:
            with contextlib.suppress(Exception):
                self._tmpdir.cleanup()
