"""The forecasting service: keeps the inputs it hears on the bus, runs the core, publishes headroom.

Inputs: node base-load history (``gridcharge.grid.node-load-history.v1``), latest node load
(``gridcharge.grid.node-load.v1``, anchors the base-load forecast), external limits
(``gridcharge.grid.external-limits.v1``) and weather (HTTP API or a recorded file).
Outputs: ``HeadroomForecast`` per node on ``gridcharge.forecast.headroom.v1`` (compacted, key node id)
and in the store under ``forecast:headroom:<node_id>``; ``WeatherForecast`` on ``gridcharge.forecast.weather.v1``.

Recomputes every 15 min (on the injected clock), on new weather and on new external limits.
Every replica consumes all history with its own consumer group (each needs every node's history; the
output is idempotent, so replicas can run side by side).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
from fastapi import APIRouter
from gridcharge.forecasting.adapters.codec import external_limit_from_proto, headroom_message, pd_time, weather_message
from gridcharge.forecasting.adapters.http import build_router
from gridcharge.forecasting.adapters.metrics import (
    FORECAST_AGE_S,
    FORECAST_RUNS,
    HEADROOM_W,
    PV_FORECAST_W,
    WEATHER_MISSING_SLOTS,
)
from gridcharge.forecasting.adapters.topology import grid_model_from_topology
from gridcharge.forecasting.adapters.weather import WeatherUnavailable
from gridcharge.forecasting.core.headroom import PHASES, ExternalLimitSpec
from gridcharge.forecasting.core.pv import stack_weather
from gridcharge.forecasting.core.site import ForecastOptions, GridModel, SiteForecast, forecast_site
from gridcharge.forecasting.core.weather import (
    WeatherSeries,
    resample_to,
    slot_midpoints,
    slot_starts,
    slots_with_weather,
)
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared import contracts
from gridcharge.shared.bus.base import Record, Subscription
from gridcharge.shared.codec import phase_tuple
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.topology import Topology

log = logging.getLogger(__name__)

STORE_KEY = "forecast:headroom:{node_id}"


class WeatherSource(Protocol):
    """Where weather comes from (the HTTP API or a recorded file)."""

    name: str

    async def get(self, latitude: float, longitude: float) -> WeatherSeries: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ServiceOptions:
    """Timing (s) and horizon (h) of the service; ``weather_max_age_s``: older weather is not used."""

    horizon_h: float = 48.0
    recompute_s: float = 900.0
    weather_refresh_s: float = 3600.0
    weather_max_age_s: float = 12 * 3600.0
    history_days: int = 35
    weather_cell_deg: float = 0.1  # PV systems further apart than this get their own weather
    forecast: ForecastOptions = field(default_factory=ForecastOptions)


class ForecastingService:
    """Stateful shell around :func:`~gridcharge.forecasting.core.site.forecast_site`."""

    name = "forecasting"

    def __init__(
        self, rt: Runtime, topology: Topology, weather: WeatherSource | None, options: ServiceOptions | None = None
    ) -> None:
        self.rt = rt
        self.topology = topology
        self.model: GridModel = grid_model_from_topology(topology)
        self.weather_source = weather
        self.options = options or ServiceOptions()
        self.producer = f"forecasting/{rt.settings.replica_id}"
        self._history: dict[str, dict[pd.Timestamp, tuple[float, float, float]]] = {}
        self._latest: dict[str, tuple[pd.Timestamp, tuple[float, float, float]]] = {}
        self._limits: dict[str, dict[str, ExternalLimitSpec]] = {}
        self._weather: WeatherSeries | None = None
        # Weather cells of the PV systems (site cell first); systems in other cells get their own weather.
        site = topology.site
        cell = self.options.weather_cell_deg
        cells = [(round(site.latitude / cell) * cell, round(site.longitude / cell) * cell)]
        self._system_cell = np.zeros(len(self.model.fleet), dtype=np.intp)
        for i, (lat, lon) in enumerate(zip(self.model.fleet.latitude_deg, self.model.fleet.longitude_deg, strict=True)):
            key = (round(float(lat) / cell) * cell, round(float(lon) / cell) * cell)
            if key not in cells:
                cells.append(key)
            self._system_cell[i] = cells.index(key)
        self._cells = cells
        self._cell_weather: dict[int, WeatherSeries] = {}
        self._weather_at: float | None = None
        self._weather_attempt_at: float | None = None
        self.last: SiteForecast | None = None
        self._missing_slots_logged: int | None = None
        self.last_run_at: float | None = None
        self._trigger = asyncio.Event()
        self._subs: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self._router = build_router(self)

    # -- Service protocol -----------------------------------------------------------------------
    @property
    def routers(self) -> list[APIRouter]:
        return [self._router]

    async def start(self) -> None:
        bus, group = self.rt.bus, f"forecasting-{self.rt.settings.replica_id}-{uuid.uuid4().hex[:8]}"
        self._subs.append(await bus.subscribe([contracts.NODE_LOAD_HISTORY.name], group + "-h", self.on_history))
        self._subs.append(
            await bus.subscribe([contracts.NODE_LOAD.name], group + "-l", self.on_node_load, from_beginning=False)
        )
        self._subs.append(await bus.subscribe([contracts.EXTERNAL_LIMITS.name], group + "-x", self.on_external_limit))
        clock = self.rt.clock
        FORECAST_AGE_S.labels(kind="headroom").set_function(
            lambda: clock.time() - self.last_run_at if self.last_run_at is not None else float("nan")
        )
        FORECAST_AGE_S.labels(kind="weather").set_function(
            lambda: clock.time() - self._weather_at if self._weather_at is not None else float("nan")
        )
        FORECAST_AGE_S.labels(kind="base_load").set_function(self._base_load_age_s)
        self.rt.health.add("forecast", lambda: self.last_run_at is not None)
        self._task = asyncio.create_task(self._loop(), name="forecasting-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.stop()
        if self.weather_source is not None:
            with contextlib.suppress(Exception):
                await self.weather_source.aclose()

    # -- bus handlers ---------------------------------------------------------------------------
    async def on_history(self, record: Record) -> None:
        msg = contracts.decode(grid_pb2.NodeLoadInterval, record.value)
        start = pd_time(msg.interval_start)
        if start is None or msg.node_id not in self.model_node_ids:
            return
        hist = self._history.setdefault(msg.node_id, {})
        hist[start] = phase_tuple(msg.mean_base_load_w)
        cutoff = self._now() - pd.Timedelta(days=self.options.history_days)
        if len(hist) > 2 * 96 * self.options.history_days:  # prune occasionally, not on every record
            for t in [t for t in hist if t < cutoff]:
                del hist[t]

    async def on_node_load(self, record: Record) -> None:
        msg = contracts.decode(grid_pb2.NodeLoad, record.value)
        at = pd_time(msg.as_of)
        if at is not None and msg.node_id in self.model_node_ids:
            self._latest[msg.node_id] = (at, phase_tuple(msg.base_load_w))

    async def on_external_limit(self, record: Record) -> None:
        msg = contracts.decode(grid_pb2.ExternalLimit, record.value)
        if msg.node_id not in self.model_node_ids or msg.station_id:
            return  # a station-scoped limit (from the station) is not node headroom; the allocator applies it
        spec = external_limit_from_proto(msg, self._now())
        self._limits.setdefault(msg.node_id, {})[spec.limit_id] = spec
        self._trigger.set()

    # -- the run ----------------------------------------------------------------------------------
    @property
    def model_node_ids(self) -> set[str]:
        return {n.node_id for n in self.model.nodes}

    def _now(self) -> pd.Timestamp:
        return pd.Timestamp(self.rt.clock.time(), unit="s", tz="UTC")

    def _base_load_age_s(self) -> float:
        times = [max(h) for h in self._history.values() if h] + [t for t, _ in self._latest.values()]
        return (self._now() - max(times)).total_seconds() if times else float("nan")

    def histories(self) -> dict[str, pd.DataFrame]:
        """Per-node base-load history (W per phase, UTC), the latest live value appended."""
        out: dict[str, pd.DataFrame] = {}
        for node_id in self.model_node_ids:
            rows = dict(self._history.get(node_id, {}))
            if node_id in self._latest:
                at, values = self._latest[node_id]
                rows[at] = values
            if rows:
                index = pd.DatetimeIndex(sorted(rows))
                out[node_id] = pd.DataFrame([rows[t] for t in index], index=index, columns=list(PHASES))
        return out

    async def refresh_weather(self, force: bool = False) -> bool:
        """Fetch weather if due; True if new weather arrived. Failures keep the previous forecast until it
        is older than ``weather_max_age_s``."""
        if self.weather_source is None:
            return False
        now_s = self.rt.clock.time()
        due = self._weather_attempt_at is None or now_s - self._weather_attempt_at >= self.options.weather_refresh_s
        if not (force or due):
            return False
        self._weather_attempt_at = now_s
        site = self.topology.site
        try:
            weather = await self.weather_source.get(site.latitude, site.longitude)
        except (WeatherUnavailable, OSError, ValueError) as exc:
            FORECAST_RUNS.labels(kind="weather", outcome="error").inc()
            log.warning("weather unavailable", extra={"error": str(exc)[:300]})
            if self._weather_at is not None and now_s - self._weather_at > self.options.weather_max_age_s:
                self._weather = None
            return False
        self._weather, self._weather_at = weather, now_s
        self._cell_weather = {}
        for c, (lat, lon) in enumerate(self._cells[1:], start=1):
            try:  # a missing cell falls back to the site weather for its systems
                self._cell_weather[c] = await self.weather_source.get(lat, lon)
            except (WeatherUnavailable, OSError, ValueError) as exc:
                log.warning("weather unavailable for a PV cell", extra={"cell": [lat, lon], "error": str(exc)[:200]})
        FORECAST_RUNS.labels(kind="weather", outcome="ok").inc()
        msg = weather_message(weather, site.id, self.producer, self._now(), self.weather_source.name)
        await self.rt.bus.publish(contracts.WEATHER.name, site.id, msg.SerializeToString())
        return True

    async def run_once(self) -> SiteForecast:
        """Compute and publish headroom for every node now."""
        now = self._now()
        slots = slot_starts(now, self.options.horizon_h)
        # Slots the weather does not cover stay NaN: the core takes the worst case for those slots only.
        weather_frame = resample_to(self._weather, slot_midpoints(slots)) if self._weather is not None else None
        covered = slots_with_weather(weather_frame, len(slots))
        self._report_missing_weather(slots, covered, weather_frame is not None)
        pv_weather = None
        if weather_frame is not None and covered.any() and len(self._cells) > 1:
            frames = [weather_frame]
            for c in range(1, len(self._cells)):
                cell_frame = (
                    resample_to(self._cell_weather[c], slot_midpoints(slots)).reindex(columns=weather_frame.columns)
                    if c in self._cell_weather
                    else weather_frame
                )
                # a slot the cell's weather lacks takes the site's weather for it (as a missing cell does)
                has = slots_with_weather(cell_frame, len(slots))
                cell_frame = cell_frame.where(np.broadcast_to(has[:, None], cell_frame.shape), weather_frame)
                frames.append(cell_frame)
            pv_weather = stack_weather(frames, self._system_cell)
        for specs in self._limits.values():  # forget limits whose window has passed
            for limit_id in [k for k, v in specs.items() if v.valid_to is not None and v.valid_to <= now]:
                del specs[limit_id]
        limits = {node: list(specs.values()) for node, specs in self._limits.items()}
        try:
            result = await asyncio.to_thread(
                forecast_site,
                self.model,
                slots,
                now,
                weather_frame,
                self.histories(),
                limits,
                self.options.forecast,
                pv_weather,
            )
        except Exception:
            FORECAST_RUNS.labels(kind="headroom", outcome="error").inc()
            log.exception("headroom forecast failed")
            raise
        weather_as_of = (
            pd.Timestamp(self._weather_at, unit="s", tz="UTC")
            if self._weather_at is not None and covered.any()
            else None
        )
        degraded = False
        for i, node in enumerate(self.model.nodes):
            h = result.headroom[node.node_id]
            degraded |= h.degraded
            payload = headroom_message(h, self.producer, now, weather_as_of).SerializeToString()
            await self.rt.bus.publish(contracts.HEADROOM.name, node.node_id, payload)
            await self.rt.store.set(STORE_KEY.format(node_id=node.node_id), payload)
            for p, ph in enumerate(PHASES):
                HEADROOM_W.labels(node=node.node_id, phase=ph).set(float(h.headroom_w[p, 0]))
            PV_FORECAST_W.labels(node=node.node_id).set(float(result.node_pv_w[i, :, 0].sum()))
        FORECAST_RUNS.labels(kind="headroom", outcome="fallback" if degraded else "ok").inc()
        metered = {n.node_id for n in self.model.nodes if n.metered}
        bl_fallback = any(
            not result.base_load[node_id] or any(f.method in ("empty", "constant") for f in result.base_load[node_id])
            for node_id in metered
        )
        FORECAST_RUNS.labels(kind="base_load", outcome="fallback" if bl_fallback else "ok").inc()
        self.last, self.last_run_at = result, self.rt.clock.time()
        return result

    def _report_missing_weather(self, slots: pd.DatetimeIndex, covered: np.ndarray, have_weather: bool) -> None:
        """Metric of the slots without weather; a warning when slots start to miss it (not at every change of
        their number: the horizon moves past the provider's data one slot at a time)."""
        missing = int((~covered).sum())
        WEATHER_MISSING_SLOTS.set(missing)
        before, self._missing_slots_logged = self._missing_slots_logged, missing
        if missing == before or (missing > 0 and (before or 0) > 0):
            return
        if missing == 0:
            log.info("weather covers every forecast slot again", extra={"slots": len(slots)})
        elif have_weather:
            first = pd.Timestamp(slots[int(np.argmax(~covered))])
            log.warning(
                "weather missing for some forecast slots: PV 0 and hot ambient there",
                extra={
                    "missing_slots": missing,
                    "slots": len(slots),
                    "first_missing": first.isoformat(),
                    "weather_ends": self._weather.frame.index.max().isoformat()
                    if self._weather is not None and len(self._weather.frame)
                    else None,
                },
            )

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh_weather()
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("forecasting run failed; retrying at the next tick")
            now_s = self.rt.clock.time()
            delay = self.options.recompute_s - (now_s % self.options.recompute_s) + 1.0
            refresh_in = (
                self.options.weather_refresh_s - (now_s - self._weather_attempt_at)
                if self._weather_attempt_at is not None
                else delay
            )
            sleeper = asyncio.create_task(self.rt.clock.sleep(max(0.0, min(delay, refresh_in))))
            trigger = asyncio.create_task(self._trigger.wait())
            try:
                await asyncio.wait({sleeper, trigger}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, trigger):
                    task.cancel()
                self._trigger.clear()
