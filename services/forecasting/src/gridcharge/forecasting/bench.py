"""`gridcharge bench forecast`: vectorised PV forecast for many systems vs the per-system loop.

The loop reference (:func:`~gridcharge.forecasting.core.pv.forecast_pv_loop`) runs the same model one
system at a time with pandas/pvlib's high-level calls; it is timed on a sample of systems and extrapolated
linearly to the full fleet (its cost per system does not depend on the fleet size). Weather is synthetic
(clear sky × a random clear-sky index per system and step); generating it is not timed. Both wall and
process CPU time are reported: on a shared machine the CPU-time ratio is the stable one.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import pvlib
from gridcharge.forecasting.core.pv import PVFleet, PVModelOptions, WeatherGrid, forecast_pv, forecast_pv_loop
from gridcharge.forecasting.core.weather import slot_midpoints, slot_starts


def synthetic_fleet(n_systems: int, seed: int = 0) -> PVFleet:
    """Rooftop-like systems spread over Germany: 2–500 kWp (log-uniform), tilt 0–45°, azimuth 90–270°."""
    rng = np.random.default_rng(seed)
    kwp = np.exp(rng.uniform(np.log(2.0), np.log(500.0), n_systems))
    return PVFleet(
        system_ids=tuple(f"pv{i}" for i in range(n_systems)),
        latitude_deg=rng.uniform(47.5, 54.5, n_systems),
        longitude_deg=rng.uniform(6.0, 14.5, n_systems),
        tilt_deg=rng.uniform(0.0, 45.0, n_systems),
        azimuth_deg=rng.uniform(90.0, 270.0, n_systems),
        kwp=kwp,
        inverter_kw=kwp * rng.uniform(0.8, 1.0, n_systems),
        losses_pct=rng.uniform(10.0, 16.0, n_systems),
        gamma_pdc=np.full(n_systems, -0.004),
        altitude_m=rng.uniform(0.0, 600.0, n_systems),
    )


def synthetic_weather(times: pd.DatetimeIndex, n_systems: int, seed: int = 1) -> WeatherGrid:
    """GHI only (so the Erbs decomposition is exercised) = Ineichen clear sky at the fleet's centre ×
    a per-system, per-step clear-sky index; temperature and wind per system."""
    rng = np.random.default_rng(seed)
    loc = pvlib.location.Location(51.0, 10.0, "UTC", 200.0)
    cs_ghi = loc.get_clearsky(times, model="ineichen")["ghi"].to_numpy()
    kc = np.clip(rng.uniform(0.3, 1.0, (n_systems, 1)) + rng.normal(0, 0.1, (n_systems, len(times))), 0.05, 1.1)
    hour = np.asarray(times.hour + times.minute / 60.0)
    temp = rng.uniform(10, 25, (n_systems, 1)) + 5 * np.sin((hour - 9) / 24 * 2 * np.pi)[None, :]
    wind = rng.uniform(0.5, 6.0, (n_systems, len(times)))
    return WeatherGrid(ghi_w_m2=cs_ghi[None, :] * kc, temp_air_c=temp, wind_speed_m_s=wind)


def run_forecast_bench(
    n_systems: int = 10_000,
    horizon_h: int = 48,
    step_min: int = 15,
    loop_sample: int = 100,
    start: str = "2026-06-21T00:00Z",
    seed: int = 0,
) -> dict[str, Any]:
    """Time the vectorised forecast of ``n_systems`` × (``horizon_h`` h / ``step_min`` min) and the
    per-system loop on ``loop_sample`` systems (extrapolated). Returns figures (seconds, ratios)."""
    times = slot_midpoints(slot_starts(pd.Timestamp(start), horizon_h, step_min))
    fleet = synthetic_fleet(n_systems, seed)
    weather = synthetic_weather(times, n_systems, seed + 1)
    opts = PVModelOptions()

    t0, c0 = time.perf_counter(), time.process_time()
    vec = forecast_pv(fleet, times, weather, opts)
    vectorised_s, vectorised_cpu_s = time.perf_counter() - t0, time.process_time() - c0

    k = min(loop_sample, n_systems)
    sample = np.arange(k)
    sub_fleet, sub_weather = fleet.take(sample), weather.take(sample)
    t0, c0 = time.perf_counter(), time.process_time()
    loop = forecast_pv_loop(sub_fleet, times, sub_weather, opts)
    loop_sample_s, loop_sample_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    loop_extrapolated_s = loop_sample_s * n_systems / k
    loop_extrapolated_cpu_s = loop_sample_cpu_s * n_systems / k

    diff = np.abs(vec.ac_w[:k] - loop.ac_w) / (fleet.kwp[:k, None] * 1000.0)
    return {
        "n_systems": n_systems,
        "n_steps": len(times),
        "horizon_h": horizon_h,
        "step_min": step_min,
        "vectorised_s": vectorised_s,
        "system_steps_per_s": n_systems * len(times) / vectorised_s,
        "loop_sample": k,
        "loop_sample_s": loop_sample_s,
        "loop_extrapolated_s": loop_extrapolated_s,
        "speedup": loop_extrapolated_s / vectorised_s,
        "vectorised_cpu_s": vectorised_cpu_s,
        "loop_sample_cpu_s": loop_sample_cpu_s,
        "loop_extrapolated_cpu_s": loop_extrapolated_cpu_s,
        "speedup_cpu": loop_extrapolated_cpu_s / max(vectorised_cpu_s, 1e-9),
        "max_diff_pct_of_kwp": float(diff.max() * 100.0),
        "implausible_flags": vec.n_implausible,
        "fleet_peak_ac_mw": float(vec.ac_w.sum(axis=0).max() / 1e6),
    }


def format_bench(r: dict[str, Any]) -> str:
    """Printable table of :func:`run_forecast_bench` figures."""
    rows = [
        ("PV systems × steps", f"{r['n_systems']:,} × {r['n_steps']} ({r['horizon_h']} h at {r['step_min']} min)"),
        (
            "vectorised (all systems)",
            f"{r['vectorised_s']:.2f} s wall, {r['vectorised_cpu_s']:.2f} s CPU"
            f"  ({r['system_steps_per_s'] / 1e6:.2f} M system-steps/s wall)",
        ),
        (
            "per-system loop (sample)",
            f"{r['loop_sample_s']:.2f} s wall, {r['loop_sample_cpu_s']:.2f} s CPU for {r['loop_sample']} systems",
        ),
        (
            "per-system loop (extrapolated)",
            f"{r['loop_extrapolated_s']:.1f} s wall, {r['loop_extrapolated_cpu_s']:.1f} s CPU"
            f" for {r['n_systems']:,} systems",
        ),
        ("speed-up", f"{r['speedup_cpu']:.0f}× on CPU time ({r['speedup']:.0f}× on wall time)"),
        ("max |vectorised − loop|", f"{r['max_diff_pct_of_kwp']:.4f} % of kWp"),
        ("fleet peak AC", f"{r['fleet_peak_ac_mw']:.1f} MW; clear-sky flags: {r['implausible_flags']}"),
    ]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a.ljust(width)}  {b}" for a, b in rows)
