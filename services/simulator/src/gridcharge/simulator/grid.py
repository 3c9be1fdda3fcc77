"""The grid around the chargers: base load per node, PV output, and the grid-meter readings telemetry consumes.

Weather: the *forecast* the forecaster sees (served as an Open-Meteo-compatible response by
`weather_payload`, the same synthetic generator the forecasting package uses) and the *actual* weather,
which is the forecast with a smooth random relative error on irradiance (`forecast_error`). PV output is
pvlib's PVWatts chain on the actual weather, so PV forecast vs actual differ the way they do in the field.

All powers in W, per grid phase L1..L3; PV counts as negative load on its node.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.codec import meta, phase_values, to_timestamp
from gridcharge.shared.topology import PHASES, Topology
from gridcharge.simulator.scenario import BaseLoadSpec, WeatherSpec

_SHAPES = {
    # fraction of peak by local hour 0..23
    "office": [
        0.25,
        0.24,
        0.24,
        0.24,
        0.25,
        0.28,
        0.40,
        0.65,
        0.90,
        0.97,
        1.0,
        1.0,
        0.95,
        0.97,
        0.98,
        0.95,
        0.85,
        0.70,
        0.50,
        0.38,
        0.32,
        0.29,
        0.27,
        0.26,
    ],
    "residential": [
        0.35,
        0.30,
        0.28,
        0.27,
        0.28,
        0.33,
        0.50,
        0.62,
        0.55,
        0.45,
        0.42,
        0.45,
        0.50,
        0.45,
        0.42,
        0.45,
        0.55,
        0.75,
        0.95,
        1.0,
        0.92,
        0.78,
        0.60,
        0.45,
    ],
    "depot": [
        0.55,
        0.5,
        0.5,
        0.55,
        0.75,
        0.9,
        0.85,
        0.7,
        0.6,
        0.6,
        0.6,
        0.6,
        0.6,
        0.6,
        0.6,
        0.62,
        0.7,
        0.8,
        0.85,
        0.8,
        0.7,
        0.65,
        0.6,
        0.58,
    ],
    "flat": [1.0] * 24,
}


def base_load_shape(profile: str, local_hour: float) -> float:
    """Fraction of peak 0..1 of a load profile at a local hour (linear between hourly points)."""
    pts = _SHAPES[profile]
    h0 = math.floor(local_hour) % 24
    frac = local_hour - math.floor(local_hour)
    return pts[h0] * (1 - frac) + pts[(h0 + 1) % 24] * frac


@dataclass
class PvTrace:
    """15-min PV series of one node: forecast (from the forecast weather) and actual, W."""

    t0: float
    step_s: float
    forecast_w: np.ndarray
    actual_w: np.ndarray

    def at(self, t: float, actual: bool = True) -> float:
        arr = self.actual_w if actual else self.forecast_w
        x = (t - self.t0) / self.step_s - 0.5
        if x <= 0:
            return float(arr[0])
        i = int(x)
        if i >= len(arr) - 1:
            return float(arr[-1])
        f = x - i
        return float(arr[i] * (1 - f) + arr[i + 1] * f)


@dataclass
class Weather:
    """Forecast and actual 15-min weather for the site (pandas frames from the forecasting generator)."""

    forecast: Any
    actual: Any
    latitude: float
    longitude: float


def make_weather(topo: Topology, spec: WeatherSpec, start_s: float, days: int) -> Weather:
    """Forecast weather from the shared synthetic generator, actual = forecast with smooth GHI error."""
    from gridcharge.forecasting.synthetic import site_weather_15min

    day0 = datetime.fromtimestamp(start_s, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    lat, lon = topo.site.latitude, topo.site.longitude
    fc = site_weather_15min(
        lat, lon, day0.strftime("%Y-%m-%d"), days, seed=spec.seed, altitude_m=topo.site.altitude_m or 300.0
    )
    rng = np.random.default_rng(spec.seed + 100)
    err = np.zeros(len(fc))
    for i in range(1, len(err)):  # AR(1): forecast errors persist for hours
        err[i] = 0.9 * err[i - 1] + rng.normal(0.0, spec.forecast_error * math.sqrt(1 - 0.81))
    act = fc.copy()
    factor = np.clip(1.0 + err, 0.05, 1.6)
    for col in ("ghi_w_m2", "dni_w_m2", "dhi_w_m2"):
        act[col] = fc[col].to_numpy() * factor
    return Weather(fc, act, lat, lon)


def weather_payload(weather: Weather) -> dict[str, Any]:
    """The forecast as an Open-Meteo `/v1/forecast` response (what the forecaster's client parses)."""
    from gridcharge.forecasting.synthetic import open_meteo_payload

    return open_meteo_payload(weather.forecast, weather.latitude, weather.longitude)


def pv_traces(topo: Topology, weather: Weather) -> dict[str, PvTrace]:
    """Per node: summed PV of its systems (forecast and actual), W."""
    from gridcharge.forecasting.synthetic import pv_actual_w

    out: dict[str, PvTrace] = {}
    for p in topo.pv_systems:
        lat = p.latitude if p.latitude is not None else weather.latitude
        lon = p.longitude if p.longitude is not None else weather.longitude
        kw = {"kwp": p.kwp, "tilt_deg": p.tilt_deg, "azimuth_deg": p.azimuth_deg, "losses_pct": p.losses_pct}
        fc = pv_actual_w(weather.forecast, lat, lon, seed=1, **kw).to_numpy()
        act = pv_actual_w(weather.actual, lat, lon, seed=2, **kw).to_numpy()
        if p.inverter_kw is not None:
            fc, act = np.minimum(fc, p.inverter_kw * 1000), np.minimum(act, p.inverter_kw * 1000)
        t0 = weather.forecast.index[0].timestamp() - 450.0
        if p.node in out:
            out[p.node].forecast_w = out[p.node].forecast_w + fc
            out[p.node].actual_w = out[p.node].actual_w + act
        else:
            out[p.node] = PvTrace(t0, 900.0, fc, act)
    return out


@dataclass
class GridModel:
    """Per-node, per-phase load = base load (own and below) + EV load below − PV below, W."""

    topo: Topology
    base_loads: tuple[BaseLoadSpec, ...]
    pv: dict[str, PvTrace] = field(default_factory=dict)
    seed: int = 1
    _noise: dict[str, float] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._tz = ZoneInfo(self.topo.site.timezone)
        self._pv_phases = {p.node: p.phases for p in self.topo.pv_systems}

    def base_w(self, t: float) -> dict[str, tuple[float, float, float]]:
        """Base load per node (its own, not the subtree), W per phase; noise is smooth AR(1)."""
        local = datetime.fromtimestamp(t, self._tz)
        hour = local.hour + local.minute / 60 + local.second / 3600
        out: dict[str, tuple[float, float, float]] = {}
        for b in self.base_loads:
            n = 0.95 * self._noise.get(b.node, 0.0) + self._rng.gauss(0, b.noise * 0.3)
            self._noise[b.node] = n
            total = b.peak_kw * 1000 * base_load_shape(b.profile, hour) * max(0.0, 1 + n)
            s = sum(b.phase_split)
            prev = out.get(b.node, (0.0, 0.0, 0.0))
            out[b.node] = (
                prev[0] + total * b.phase_split[0] / s,
                prev[1] + total * b.phase_split[1] / s,
                prev[2] + total * b.phase_split[2] / s,
            )
        return out

    def pv_w(self, t: float, actual: bool = True) -> dict[str, tuple[float, float, float]]:
        """PV production per node (its own systems), W per phase (positive = production)."""
        out: dict[str, tuple[float, float, float]] = {}
        for node, trace in self.pv.items():
            w = trace.at(t, actual)
            phases = self._pv_phases.get(node, PHASES)
            vals = [w / len(phases) if ph in phases else 0.0 for ph in PHASES]
            out[node] = (vals[0], vals[1], vals[2])
        return out

    def node_loads(
        self, t: float, station_a: dict[str, tuple[float, float, float]]
    ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
        """(total load, EV load, PV) per node and phase, W, with subtrees summed."""
        v = self.topo.nominal_voltage_v
        own_base = self.base_w(t)
        own_pv = self.pv_w(t)
        total = {n.id: [0.0, 0.0, 0.0] for n in self.topo.nodes}
        ev = {n.id: [0.0, 0.0, 0.0] for n in self.topo.nodes}
        pv = {n.id: [0.0, 0.0, 0.0] for n in self.topo.nodes}
        for node_id, vals in own_base.items():
            for anc in self.topo.ancestors(node_id):
                for k in range(3):
                    total[anc][k] += vals[k]
        for node_id, vals in own_pv.items():
            for anc in self.topo.ancestors(node_id):
                for k in range(3):
                    total[anc][k] -= vals[k]
                    pv[anc][k] += vals[k]
        for sid, amps in station_a.items():
            for anc in self.topo.station_path(sid):
                for k in range(3):
                    total[anc][k] += amps[k] * v
                    ev[anc][k] += amps[k] * v
        return total, ev, pv


def meter_reading(
    node_id: str, t: float, load_w: list[float], voltage_v: float, ambient_c: float, producer: str = "simulator"
) -> bytes:
    """A GridMeterReading (power and current per phase) as the bytes published on GRID_METER_READINGS."""
    return grid_pb2.GridMeterReading(
        meta=meta(producer, t),
        node_id=node_id,
        meter_id=f"sim-meter-{node_id}",
        measured_at=to_timestamp(t),
        power_w=phase_values(load_w),
        current_a=phase_values([w / voltage_v for w in load_w]),
        voltage_v=phase_values((voltage_v,) * 3),
        ambient_temperature_c=ambient_c,
        has_current=True,
        has_voltage=True,
    ).SerializeToString()
