"""PV power forecast with pvlib, vectorised over N systems × T time steps.

Model chain (PVWatts family, the same steps ``pvlib.modelchain.ModelChain.with_pvwatts`` runs):

1. sun position: NREL SPA (``pvlib.spa.solar_position_numpy``) with systems on axis 0 and time on axis 1;
2. if only GHI is given: Erbs decomposition to DNI/DHI (``pvlib.irradiance.erbs``);
3. transposition to the plane of array (the steps of ``pvlib.irradiance.get_total_irradiance``: Hay-Davies
   (default) or isotropic sky diffuse, ground diffuse, ``poa_components``; geometry computed once);
4. incidence-angle loss on the beam (``pvlib.iam.physical``), no spectral loss;
5. cell temperature (``pvlib.temperature.sapm_cell``, close-mount glass/glass default: rooftop, and hotter
   modules give less power, the conservative side for headroom);
6. DC power ``pvlib.pvsystem.pvwatts_dc`` (``gamma_pdc`` 1/K), then system losses (``losses_pct``);
7. inverter ``pvlib.inverter.pvwatts`` with its AC cap at ``inverter_kw``.

Power is zero while the sun is below the horizon. A clear-sky bound (Ineichen, low Linke turbidity, cell
at air temperature, plane irradiance at least the clear-sky GHI for diffuse skies) is computed with the
same chain; forecasts above ``bound × tolerance`` are flagged and, by default, clipped to the bound
(over-forecast PV would overstate headroom).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pvlib
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

ETA_INV_NOM = 0.96  # pvwatts inverter nominal efficiency (pvlib default)
DEFAULT_GAMMA_PDC = -0.004  # 1/K, crystalline silicon
SAPM_CLOSE_MOUNT = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["close_mount_glass_glass"]


@dataclass(frozen=True)
class PVFleet:
    """N PV systems as parallel arrays (axis 0 of every result).

    Angles in degrees (azimuth pvlib convention: 180 = south), ``kwp`` DC nameplate kW, ``inverter_kw``
    AC limit kW, ``losses_pct`` DC-side system losses %, ``gamma_pdc`` 1/K, ``altitude_m`` m.
    """

    system_ids: tuple[str, ...]
    latitude_deg: FloatArray
    longitude_deg: FloatArray
    tilt_deg: FloatArray
    azimuth_deg: FloatArray
    kwp: FloatArray
    inverter_kw: FloatArray
    losses_pct: FloatArray
    gamma_pdc: FloatArray
    altitude_m: FloatArray

    def __len__(self) -> int:
        return len(self.system_ids)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> PVFleet:
        """Build from dicts with keys id, latitude, longitude, tilt_deg, azimuth_deg, kwp and optional
        inverter_kw (default kwp), losses_pct (14), gamma_pdc (-0.004), altitude_m (0)."""
        rows = list(records)

        def col(key: str, default: float | None = None, fallback: str | None = None) -> FloatArray:
            values = []
            for r in rows:
                v = r.get(key)
                if v is None and fallback is not None:
                    v = r.get(fallback)
                if v is None:
                    if default is None:
                        raise ValueError(f"PV system {r.get('id')!r}: missing {key}")
                    v = default
                values.append(float(v))
            return np.asarray(values, dtype=float)

        return cls(
            system_ids=tuple(str(r["id"]) for r in rows),
            latitude_deg=col("latitude"),
            longitude_deg=col("longitude"),
            tilt_deg=col("tilt_deg"),
            azimuth_deg=col("azimuth_deg"),
            kwp=col("kwp"),
            inverter_kw=col("inverter_kw", fallback="kwp"),
            losses_pct=col("losses_pct", 14.0),
            gamma_pdc=col("gamma_pdc", DEFAULT_GAMMA_PDC),
            altitude_m=col("altitude_m", 0.0),
        )

    def take(self, index: slice | Sequence[int] | NDArray[np.intp]) -> PVFleet:
        """Subset of the fleet (a chunk or a sample)."""
        ids = np.asarray(self.system_ids, dtype=object)[index]
        return PVFleet(
            system_ids=tuple(str(i) for i in np.atleast_1d(ids)),
            latitude_deg=self.latitude_deg[index],
            longitude_deg=self.longitude_deg[index],
            tilt_deg=self.tilt_deg[index],
            azimuth_deg=self.azimuth_deg[index],
            kwp=self.kwp[index],
            inverter_kw=self.inverter_kw[index],
            losses_pct=self.losses_pct[index],
            gamma_pdc=self.gamma_pdc[index],
            altitude_m=self.altitude_m[index],
        )


@dataclass(frozen=True)
class WeatherGrid:
    """Weather on the evaluation times, each array shaped (T,) (same for all systems) or (N, T).

    GHI/DNI/DHI W/m² (DNI/DHI optional: decomposed from GHI with Erbs if absent), air temperature °C,
    wind speed m/s.
    """

    ghi_w_m2: FloatArray
    temp_air_c: FloatArray
    wind_speed_m_s: FloatArray
    dni_w_m2: FloatArray | None = None
    dhi_w_m2: FloatArray | None = None

    def take(self, index: slice | NDArray[np.intp]) -> WeatherGrid:
        """Rows for a subset of systems (no-op for arrays shared by all systems)."""

        def sub(a: FloatArray | None) -> FloatArray | None:
            return None if a is None else (a if a.ndim == 1 else a[index])

        def req(a: FloatArray) -> FloatArray:
            return a if a.ndim == 1 else a[index]

        return WeatherGrid(
            ghi_w_m2=req(self.ghi_w_m2),
            temp_air_c=req(self.temp_air_c),
            wind_speed_m_s=req(self.wind_speed_m_s),
            dni_w_m2=sub(self.dni_w_m2),
            dhi_w_m2=sub(self.dhi_w_m2),
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, use_decomposition: bool = False) -> WeatherGrid:
        """From a frame with ``ghi_w_m2``, ``temp_air_c``, optional ``wind_speed_m_s``/``dni_w_m2``/
        ``dhi_w_m2`` (the output of :func:`~gridcharge.forecasting.core.weather.resample_to`).
        Missing temperature → 20 °C, missing wind → 1 m/s (pvlib defaults), missing GHI → 0; slots
        without GHI do not force the GHI decomposition on the others (callers zero PV in such slots)."""
        n = len(frame)
        no_ghi = ~np.isfinite(frame["ghi_w_m2"].to_numpy(dtype=float)) if "ghi_w_m2" in frame else np.ones(n, bool)

        def get(col: str, default: float | None) -> FloatArray | None:
            if col in frame:
                values = frame[col].to_numpy(dtype=float)
                if default is not None:
                    values = np.where(np.isfinite(values), values, default)
                return values
            return None if default is None else np.full(n, default)

        dni = None if use_decomposition else get("dni_w_m2", None)
        dhi = None if use_decomposition else get("dhi_w_m2", None)
        dni = None if dni is None else np.where(no_ghi, 0.0, dni)
        dhi = None if dhi is None else np.where(no_ghi, 0.0, dhi)
        if dni is None or dhi is None or not (np.isfinite(dni).all() and np.isfinite(dhi).all()):
            dni = dhi = None
        ghi = get("ghi_w_m2", 0.0)
        temp = get("temp_air_c", 20.0)
        wind = get("wind_speed_m_s", 1.0)
        assert ghi is not None and temp is not None and wind is not None
        return cls(ghi_w_m2=ghi, temp_air_c=temp, wind_speed_m_s=wind, dni_w_m2=dni, dhi_w_m2=dhi)


def stack_weather(frames: Sequence[pd.DataFrame], system_cell: NDArray[np.intp]) -> WeatherGrid:
    """Per-system weather (N, T) from per-location frames (each as :meth:`WeatherGrid.from_frame` takes)
    and each system's location index. DNI/DHI are used only if every location has them."""
    grids = [WeatherGrid.from_frame(f) for f in frames]
    idx = np.asarray(system_cell, dtype=np.intp)

    def pick(arrays: list[FloatArray]) -> FloatArray:
        return np.stack(arrays)[idx]

    has_split = all(g.dni_w_m2 is not None and g.dhi_w_m2 is not None for g in grids)
    return WeatherGrid(
        ghi_w_m2=pick([g.ghi_w_m2 for g in grids]),
        temp_air_c=pick([g.temp_air_c for g in grids]),
        wind_speed_m_s=pick([g.wind_speed_m_s for g in grids]),
        dni_w_m2=pick([g.dni_w_m2 for g in grids if g.dni_w_m2 is not None]) if has_split else None,
        dhi_w_m2=pick([g.dhi_w_m2 for g in grids if g.dhi_w_m2 is not None]) if has_split else None,
    )


@dataclass(frozen=True)
class PVModelOptions:
    """Model choices. ``clearsky_tolerance`` multiplies the clear-sky bound (cloud enhancement);
    ``linke_turbidity`` of the bound (low = very clear = generous bound)."""

    transposition: str = "haydavies"
    albedo: float = 0.25
    temperature_params: Mapping[str, float] = field(default_factory=lambda: dict(SAPM_CLOSE_MOUNT))
    clearsky_tolerance: float = 1.25
    linke_turbidity: float = 2.0
    clip_to_clearsky: bool = True
    chunk_size: int = 1024


@dataclass(frozen=True)
class PVForecast:
    """AC power per system (axis 0, ``system_ids``) and evaluation time (axis 1, ``times``) in W."""

    system_ids: tuple[str, ...]
    times: pd.DatetimeIndex
    ac_w: FloatArray
    clearsky_ac_w: FloatArray
    implausible: NDArray[np.bool_]

    @property
    def n_implausible(self) -> int:
        return int(self.implausible.sum())


@dataclass(frozen=True)
class SunPosition:
    """Apparent zenith/azimuth in degrees, arrays (N, T) or (T,)."""

    apparent_zenith_deg: FloatArray
    azimuth_deg: FloatArray


def _unixtime_s(times: pd.DatetimeIndex) -> FloatArray:
    idx = pd.DatetimeIndex(times)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return idx.as_unit("ns").asi8.astype(float) / 1e9


def sun_position(
    times: pd.DatetimeIndex, latitude_deg: FloatArray, longitude_deg: FloatArray, altitude_m: FloatArray
) -> SunPosition:
    """NREL SPA for N locations × T times in one numpy pass (the time-only terms are computed once)."""
    unixtime = _unixtime_s(times)
    mid = pd.DatetimeIndex(times)[len(times) // 2]
    delta_t = float(pvlib.spa.calculate_deltat(mid.year, mid.month))
    lat = np.asarray(latitude_deg, dtype=float)[:, None]
    lon = np.asarray(longitude_deg, dtype=float)[:, None]
    alt = np.asarray(altitude_m, dtype=float)[:, None]
    pressure_hpa = pvlib.atmosphere.alt2pres(alt) / 100.0
    result = pvlib.spa.solar_position_numpy(unixtime, lat, lon, alt, pressure_hpa, 12.0, delta_t, 0.5667, 1)
    zenith_apparent, azimuth = result[0], result[4]
    shape = (lat.shape[0], unixtime.shape[0])
    return SunPosition(np.broadcast_to(zenith_apparent, shape), np.broadcast_to(azimuth, shape))


def _day_of_year(times: pd.DatetimeIndex) -> FloatArray:
    idx = pd.DatetimeIndex(times)
    return np.asarray(idx.day_of_year, dtype=float)


@dataclass(frozen=True)
class _Geometry:
    """Sun/plane geometry shared by the forecast and the clear-sky bound (computed once per chunk)."""

    aoi_deg: FloatArray
    iam: FloatArray
    beam_ratio: FloatArray  # Hay-Davies Rb = cos(aoi)⁺ / cos(zenith) (pvlib's clamp)
    dni_extra: FloatArray


def _geometry(fleet: PVFleet, sun: SunPosition, doy: FloatArray) -> _Geometry:
    tilt, surface_azimuth = fleet.tilt_deg[:, None], fleet.azimuth_deg[:, None]
    zenith, azimuth = sun.apparent_zenith_deg, sun.azimuth_deg
    cos_aoi = pvlib.irradiance.aoi_projection(tilt, surface_azimuth, zenith, azimuth)
    aoi_deg = np.degrees(np.arccos(np.clip(cos_aoi, -1.0, 1.0)))
    beam_ratio = np.maximum(cos_aoi, 0.0) / np.maximum(np.cos(np.radians(zenith)), 0.01745)
    return _Geometry(aoi_deg, pvlib.iam.physical(aoi_deg), beam_ratio, pvlib.irradiance.get_extra_radiation(doy))


def _dc_ac_chain(
    fleet: PVFleet,
    sun: SunPosition,
    geometry: _Geometry,
    doy: FloatArray,
    ghi: FloatArray,
    dni: FloatArray | None,
    dhi: FloatArray | None,
    temp_air: FloatArray,
    wind: FloatArray,
    options: PVModelOptions,
    cell_at_air_temperature: bool = False,
    effective_floor: FloatArray | None = None,
) -> FloatArray:
    """AC W (N, T) for given irradiance; shared by the forecast and the clear-sky bound (which passes
    ``effective_floor`` = clear-sky GHI: under overcast skies all light is diffuse and a plane facing away
    from the sun can see more than its clear-sky irradiance, but not more than the clear-sky global).

    The transposition is pvlib's ``get_total_irradiance`` taken apart so the geometry is computed once:
    ``haydavies``/``isotropic`` sky diffuse + ``get_ground_diffuse`` + ``poa_components``."""
    zenith = sun.apparent_zenith_deg
    if dni is None or dhi is None:
        parts = pvlib.irradiance.erbs(ghi, zenith, doy)
        dni, dhi = np.asarray(parts["dni"]), np.asarray(parts["dhi"])
    tilt = fleet.tilt_deg[:, None]
    if options.transposition == "haydavies":
        sky = pvlib.irradiance.haydavies(
            tilt, fleet.azimuth_deg[:, None], dhi, dni, geometry.dni_extra, projection_ratio=geometry.beam_ratio
        )
    elif options.transposition == "isotropic":
        sky = pvlib.irradiance.isotropic(tilt, dhi)
    else:
        raise ValueError(f"transposition {options.transposition!r}: use 'haydavies' or 'isotropic'")
    ground = pvlib.irradiance.get_ground_diffuse(tilt, ghi, options.albedo)
    poa = pvlib.irradiance.poa_components(geometry.aoi_deg, dni, sky, ground)
    poa_direct = np.asarray(poa["poa_direct"], dtype=float)
    poa_diffuse = np.asarray(poa["poa_diffuse"], dtype=float)
    effective = np.nan_to_num(np.clip(poa_direct * geometry.iam + poa_diffuse, 0.0, None))
    if effective_floor is not None:
        effective = np.maximum(effective, effective_floor)
    if cell_at_air_temperature:
        temp_cell = np.broadcast_to(temp_air, effective.shape)
    else:
        p = options.temperature_params
        poa_global = np.nan_to_num(np.asarray(poa["poa_global"], dtype=float))
        temp_cell = pvlib.temperature.sapm_cell(poa_global, temp_air, wind, p["a"], p["b"], p["deltaT"])
    pdc0 = fleet.kwp[:, None] * 1000.0
    dc = pvlib.pvsystem.pvwatts_dc(effective, temp_cell, pdc0, fleet.gamma_pdc[:, None])
    dc = dc * (1.0 - fleet.losses_pct[:, None] / 100.0)
    inverter_pdc0 = fleet.inverter_kw[:, None] * 1000.0 / ETA_INV_NOM
    ac = np.asarray(pvlib.inverter.pvwatts(dc, inverter_pdc0, eta_inv_nom=ETA_INV_NOM), dtype=float)
    ac = np.where(zenith < 90.0, ac, 0.0)
    return np.clip(np.nan_to_num(ac), 0.0, None)


def _clearsky_ghi_dni_dhi(
    sun: SunPosition, altitude_m: FloatArray, doy: FloatArray, linke_turbidity: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    zenith = sun.apparent_zenith_deg
    am_rel = pvlib.atmosphere.get_relative_airmass(zenith)
    alt = altitude_m[:, None]
    am_abs = pvlib.atmosphere.get_absolute_airmass(am_rel, pvlib.atmosphere.alt2pres(alt))
    dni_extra = pvlib.irradiance.get_extra_radiation(doy)
    cs = pvlib.clearsky.ineichen(zenith, am_abs, linke_turbidity, altitude=alt, dni_extra=dni_extra)
    ghi, dni, dhi = (np.nan_to_num(np.asarray(cs[k], dtype=float)) for k in ("ghi", "dni", "dhi"))
    return ghi, dni, dhi


def _forecast_chunk(
    fleet: PVFleet, times: pd.DatetimeIndex, weather: WeatherGrid, options: PVModelOptions
) -> tuple[FloatArray, FloatArray]:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _forecast_chunk_inner(fleet, times, weather, options)


def _forecast_chunk_inner(
    fleet: PVFleet, times: pd.DatetimeIndex, weather: WeatherGrid, options: PVModelOptions
) -> tuple[FloatArray, FloatArray]:
    n, t = len(fleet), len(times)
    sun = sun_position(times, fleet.latitude_deg, fleet.longitude_deg, fleet.altitude_m)
    doy = _day_of_year(times)

    def full(a: FloatArray | None) -> FloatArray | None:
        return None if a is None else np.broadcast_to(np.asarray(a, dtype=float), (n, t))

    ghi = full(weather.ghi_w_m2)
    temp = full(weather.temp_air_c)
    wind = full(weather.wind_speed_m_s)
    assert ghi is not None and temp is not None and wind is not None
    geometry = _geometry(fleet, sun, doy)
    ac = _dc_ac_chain(
        fleet, sun, geometry, doy, ghi, full(weather.dni_w_m2), full(weather.dhi_w_m2), temp, wind, options
    )
    cs_ghi, cs_dni, cs_dhi = _clearsky_ghi_dni_dhi(sun, fleet.altitude_m, doy, options.linke_turbidity)
    cs_ac = _dc_ac_chain(
        fleet,
        sun,
        geometry,
        doy,
        cs_ghi,
        cs_dni,
        cs_dhi,
        temp,
        wind,
        options,
        cell_at_air_temperature=True,
        effective_floor=cs_ghi,
    )
    return ac, cs_ac


def forecast_pv(
    fleet: PVFleet, times: pd.DatetimeIndex, weather: WeatherGrid, options: PVModelOptions | None = None
) -> PVForecast:
    """AC power forecast in W for every system × time (vectorised; systems processed in chunks of
    ``options.chunk_size`` only to bound memory). ``times`` are the instants to evaluate (use slot
    midpoints for slot averages); weather arrays must be on the same times."""
    opts = options or PVModelOptions()
    n, t = len(fleet), len(times)
    ac = np.zeros((n, t))
    cs_ac = np.zeros((n, t))
    for start in range(0, n, max(opts.chunk_size, 1)):
        chunk = slice(start, min(start + opts.chunk_size, n))
        ac[chunk], cs_ac[chunk] = _forecast_chunk(fleet.take(chunk), times, weather.take(chunk), opts)
    return _apply_clearsky_check(fleet, times, ac, cs_ac, opts)


def _apply_clearsky_check(
    fleet: PVFleet, times: pd.DatetimeIndex, ac: FloatArray, cs_ac: FloatArray, opts: PVModelOptions
) -> PVForecast:
    # Absolute slack of 1 % of kWp so twilight rounding noise is not flagged.
    bound = cs_ac * opts.clearsky_tolerance + 0.01 * fleet.kwp[:, None] * 1000.0
    implausible = ac > bound
    if opts.clip_to_clearsky:
        ac = np.minimum(ac, bound)
    return PVForecast(fleet.system_ids, pd.DatetimeIndex(times), ac, cs_ac, implausible)


def forecast_pv_loop(
    fleet: PVFleet, times: pd.DatetimeIndex, weather: WeatherGrid, options: PVModelOptions | None = None
) -> PVForecast:
    """Reference implementation: the same model, one system at a time with pandas/pvlib high-level calls.

    Used only by the benchmark (speed-up ratio) and by tests (it must agree with :func:`forecast_pv`).
    """
    opts = options or PVModelOptions()
    idx = pd.DatetimeIndex(times)
    n, t = len(fleet), len(idx)
    ac = np.zeros((n, t))
    cs_ac = np.zeros((n, t))
    for i in range(n):
        row = weather.take(np.array([i]))

        def series(a: FloatArray | None, row_i: FloatArray | None) -> pd.Series | None:
            if a is None or row_i is None:
                return None
            return pd.Series(np.asarray(row_i, dtype=float).reshape(-1), index=idx)

        ghi = series(weather.ghi_w_m2, row.ghi_w_m2)
        temp = series(weather.temp_air_c, row.temp_air_c)
        wind = series(weather.wind_speed_m_s, row.wind_speed_m_s)
        dni = series(weather.dni_w_m2, row.dni_w_m2)
        dhi = series(weather.dhi_w_m2, row.dhi_w_m2)
        assert ghi is not None and temp is not None and wind is not None
        alt = float(fleet.altitude_m[i])
        pressure = float(pvlib.atmosphere.alt2pres(alt))
        solpos = pvlib.solarposition.get_solarposition(
            idx, fleet.latitude_deg[i], fleet.longitude_deg[i], altitude=alt, pressure=pressure
        )
        zen, azi = solpos["apparent_zenith"], solpos["azimuth"]
        dni_extra = pvlib.irradiance.get_extra_radiation(idx)
        if dni is None or dhi is None:
            parts = pvlib.irradiance.erbs(ghi, zen, idx)
            dni, dhi = parts["dni"], parts["dhi"]
        am_abs = pvlib.atmosphere.get_absolute_airmass(pvlib.atmosphere.get_relative_airmass(zen), pressure)
        cs = pvlib.clearsky.ineichen(zen, am_abs, opts.linke_turbidity, altitude=alt, dni_extra=dni_extra)

        common = (fleet, i, zen, azi, dni_extra, temp, wind, opts)
        ac[i] = _loop_chain(*common, ghi, dni, dhi, at_air=False)
        cs_ghi = cs["ghi"].fillna(0)
        cs_ac[i] = _loop_chain(
            *common, cs_ghi, cs["dni"].fillna(0), cs["dhi"].fillna(0), at_air=True, effective_floor=cs_ghi
        )
    return _apply_clearsky_check(fleet, idx, ac, cs_ac, opts)


def _loop_chain(
    fleet: PVFleet,
    i: int,
    zen: pd.Series,
    azi: pd.Series,
    dni_extra: pd.Series,
    temp: pd.Series,
    wind: pd.Series,
    opts: PVModelOptions,
    ghi: pd.Series,
    dni: pd.Series,
    dhi: pd.Series,
    at_air: bool,
    effective_floor: pd.Series | None = None,
) -> FloatArray:
    """One system's AC W with pandas Series (reference for :func:`forecast_pv_loop`)."""
    p = opts.temperature_params
    poa = pvlib.irradiance.get_total_irradiance(
        fleet.tilt_deg[i],
        fleet.azimuth_deg[i],
        zen,
        azi,
        dni,
        ghi,
        dhi,
        dni_extra=dni_extra,
        albedo=opts.albedo,
        model=opts.transposition,
    )
    aoi = pvlib.irradiance.aoi(fleet.tilt_deg[i], fleet.azimuth_deg[i], zen, azi)
    eff = (poa["poa_direct"].fillna(0) * pvlib.iam.physical(aoi) + poa["poa_diffuse"].fillna(0)).clip(0)
    if effective_floor is not None:
        eff = np.maximum(eff, effective_floor)
    if at_air:
        tc = temp
    else:
        tc = pvlib.temperature.sapm_cell(poa["poa_global"].fillna(0), temp, wind, p["a"], p["b"], p["deltaT"])
    dc = pvlib.pvsystem.pvwatts_dc(eff, tc, fleet.kwp[i] * 1000.0, fleet.gamma_pdc[i])
    dc = dc * (1.0 - fleet.losses_pct[i] / 100.0)
    out = pvlib.inverter.pvwatts(dc, fleet.inverter_kw[i] * 1000.0 / ETA_INV_NOM, eta_inv_nom=ETA_INV_NOM)
    out = out.fillna(0).where(zen < 90.0, 0.0).clip(lower=0.0)
    return np.asarray(out.to_numpy(), dtype=float)
