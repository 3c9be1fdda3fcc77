"""One forecasting run for a grid: weather + PV fleet + load histories + external limits → headroom per node.

Pure: the service (``main.py``) gathers the inputs from the bus and publishes the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from gridcharge.forecasting.core.base_load import BaseLoadForecast, BaseLoadOptions, forecast_base_load
from gridcharge.forecasting.core.headroom import (
    PHASES,
    ExternalLimitSpec,
    HeadroomOptions,
    NodeHeadroom,
    NodeHeadroomInputs,
    compute_headroom,
    pv_per_node_phase,
)
from gridcharge.forecasting.core.pv import PVFleet, PVForecast, PVModelOptions, WeatherGrid, forecast_pv
from gridcharge.forecasting.core.rating import RatingParams
from gridcharge.forecasting.core.weather import slot_midpoints, slots_with_weather
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class NodeSpec:
    """A grid node as the forecast sees it. Limits W per phase."""

    node_id: str
    parent: str | None
    limit_w: tuple[float, float, float]
    rating: RatingParams | None = None
    thermal_nameplate_w: tuple[float, float, float] | None = None
    safety_margin_pct: float = 5.0
    metered: bool = False


@dataclass(frozen=True)
class GridModel:
    """Nodes, PV fleet and which PV feeds which node. ``pv_membership`` (nodes × systems) is 1 where the
    system is attached at or below the node; ``pv_phase_fraction`` (systems × 3) splits its power."""

    timezone: str
    latitude: float
    longitude: float
    nodes: tuple[NodeSpec, ...]
    fleet: PVFleet
    pv_membership: FloatArray
    pv_phase_fraction: FloatArray

    @staticmethod
    def build(
        timezone: str,
        latitude: float,
        longitude: float,
        nodes: Sequence[NodeSpec],
        fleet: PVFleet,
        pv_node: Sequence[str],
        pv_phases: Sequence[Sequence[str]],
    ) -> GridModel:
        """Derive membership and phase fractions from each system's node id and phase list."""
        parent = {n.node_id: n.parent for n in nodes}
        index = {n.node_id: i for i, n in enumerate(nodes)}
        membership = np.zeros((len(nodes), len(fleet)))
        fraction = np.zeros((len(fleet), 3))
        for s, (node_id, phases) in enumerate(zip(pv_node, pv_phases, strict=True)):
            cur: str | None = node_id
            while cur is not None:
                membership[index[cur], s] = 1.0
                cur = parent[cur]
            for ph in phases:
                fraction[s, PHASES.index(ph)] = 1.0 / len(phases)
        return GridModel(timezone, latitude, longitude, tuple(nodes), fleet, membership, fraction)


@dataclass(frozen=True)
class ForecastOptions:
    """Settings of a run. ``unknown_base_load_fraction``: share of the node limit assumed as base load
    when a metered node has no history yet (unknown means worst-ish case, flagged as degraded)."""

    pv: PVModelOptions = field(default_factory=PVModelOptions)
    base_load: BaseLoadOptions = field(default_factory=BaseLoadOptions)
    headroom: HeadroomOptions = field(default_factory=HeadroomOptions)
    unknown_base_load_fraction: float = 0.5


@dataclass(frozen=True)
class SiteForecast:
    """Result of one run on ``slot_starts``: headroom per node, PV per system and per node/phase (W).
    ``weather_available``: weather covered every slot; ``weather_missing`` (T,): the slots it did not cover."""

    slot_starts: pd.DatetimeIndex
    headroom: dict[str, NodeHeadroom]
    pv: PVForecast | None
    node_pv_w: FloatArray  # (nodes, 3, T)
    base_load: dict[str, list[BaseLoadForecast]]
    weather_available: bool
    weather_missing: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))


def forecast_site(
    model: GridModel,
    slot_starts: pd.DatetimeIndex,
    now: pd.Timestamp,
    weather_on_midpoints: pd.DataFrame | None,
    histories: Mapping[str, pd.DataFrame],
    external_limits: Mapping[str, Sequence[ExternalLimitSpec]],
    options: ForecastOptions | None = None,
    pv_weather: WeatherGrid | None = None,
) -> SiteForecast:
    """Headroom for every node.

    ``weather_on_midpoints``: weather resampled to the slot midpoints; a slot without GHI or temperature
    (NaN) has no weather, and so does every slot when it is None: PV 0 and ambient unknown (→ hot fallback of
    the dynamic rating) in exactly those slots, flagged per slot and as degraded. ``pv_weather``: per-system
    weather (N, T) on the midpoints when the PV systems are spread over several weather cells (default: the
    site weather for all; slots the site weather lacks get no PV whatever the cell weather says).
    ``histories[node]``: 15-min base load W with columns L1, L2, L3 (UTC).
    """
    opts = options or ForecastOptions()
    t = len(slot_starts)
    mids = slot_midpoints(slot_starts)
    pv: PVForecast | None = None
    covered = slots_with_weather(weather_on_midpoints, t)
    missing = ~covered
    if covered.any() and weather_on_midpoints is not None and len(model.fleet):
        grid = pv_weather if pv_weather is not None else WeatherGrid.from_frame(weather_on_midpoints)
        pv = forecast_pv(model.fleet, mids, grid, opts.pv)
        if missing.any():  # no weather, no PV credit: the worst case, in those slots only
            pv = replace(pv, ac_w=np.where(missing, 0.0, pv.ac_w), implausible=pv.implausible & covered)
        node_pv = pv_per_node_phase(pv.ac_w, model.pv_membership, model.pv_phase_fraction)
    else:
        node_pv = np.zeros((len(model.nodes), 3, t))
    if covered.any() and weather_on_midpoints is not None:
        ambient = np.where(covered, weather_on_midpoints["temp_air_c"].to_numpy(dtype=float), np.nan)
    else:
        ambient = np.full(t, np.nan)
    weather_reasons: list[str] = []
    if not covered.any():
        weather_reasons.append("no weather forecast")
    elif missing.any():
        first = pd.Timestamp(slot_starts[int(np.argmax(missing))])
        weather_reasons.append(
            f"no weather for {int(missing.sum())} of {t} slots (first {first:%Y-%m-%d %H:%M} "
            f"UTC): PV 0 and hot ambient there"
        )
    bl_opts = BaseLoadOptions(**{**opts.base_load.__dict__, "timezone": model.timezone})
    results: dict[str, NodeHeadroom] = {}
    base_loads: dict[str, list[BaseLoadForecast]] = {}
    for i, node in enumerate(model.nodes):
        reasons: list[str] = list(weather_reasons)
        history = histories.get(node.node_id)
        upper = np.zeros((3, t))
        forecasts: list[BaseLoadForecast] = []
        if history is not None and len(history):
            for p, ph in enumerate(PHASES):
                series = history[ph] if ph in history else pd.Series(dtype=float)
                fc = forecast_base_load(series, slot_starts, now, bl_opts)
                forecasts.append(fc)
                upper[p] = fc.upper_w
            if any(fc.method == "empty" for fc in forecasts):
                reasons.append("base load history empty")
        elif node.metered:
            upper[:] = np.asarray(node.limit_w, dtype=float)[:, None] * opts.unknown_base_load_fraction
            reasons.append("no base load history for metered node")
        base_loads[node.node_id] = forecasts
        inputs = NodeHeadroomInputs(
            node_id=node.node_id,
            nameplate_w=node.limit_w,
            base_load_upper_w=upper,
            pv_w=node_pv[i],
            ambient_c=ambient,
            rating=node.rating,
            thermal_nameplate_w=node.thermal_nameplate_w,
            safety_margin_pct=node.safety_margin_pct,
            external_limits=tuple(external_limits.get(node.node_id, ())),
            degraded_inputs=tuple(reasons),
            weather_missing=missing,
        )
        results[node.node_id] = compute_headroom(inputs, slot_starts, now, opts.headroom)
    return SiteForecast(pd.DatetimeIndex(slot_starts), results, pv, node_pv, base_loads, bool(covered.all()), missing)
