"""Bus records ⇄ forecasting core values: ExternalLimit → ExternalLimitSpec in, HeadroomForecast and
WeatherForecast out. Times are pandas Timestamps here (exact nanoseconds); timestamps, Meta and per-phase
values go through `gridcharge.shared.codec`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp
from gridcharge.forecast.v1 import forecast_pb2
from gridcharge.forecasting.core.headroom import ExternalLimitSpec, NodeHeadroom
from gridcharge.forecasting.core.weather import WeatherSeries, resample_to, slot_midpoints, slot_starts
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.codec import meta, phase_tuple, phase_values, timestamp_ns, to_timestamp

STEP_S = 900


def pd_time(t: Timestamp) -> pd.Timestamp | None:
    """A Timestamp as a UTC pandas Timestamp (exact); None when unset."""
    ns = timestamp_ns(t)
    return pd.Timestamp(ns, unit="ns", tz="UTC") if ns is not None else None


def external_limit_from_proto(msg: grid_pb2.ExternalLimit, received_at: pd.Timestamp) -> ExternalLimitSpec:
    """ExternalLimit contract → core spec (``updated_at``: producer time, else when we received it)."""
    produced = pd_time(msg.meta.produced_at) if msg.HasField("meta") else None
    return ExternalLimitSpec(
        limit_id=msg.limit_id or msg.source or "external",
        limit_w=phase_tuple(msg.limit_w),
        updated_at=produced or received_at,
        valid_from=pd_time(msg.valid_from),
        valid_to=pd_time(msg.valid_to),
        fallback_limit_w=phase_tuple(msg.fallback_limit_w) if msg.HasField("fallback_limit_w") else None,
        stale_after_s=float(msg.stale_after_s),
        schedule=tuple(
            (start, phase_tuple(s.limit_w))
            for s in sorted(msg.schedule, key=lambda s: s.start.ToNanoseconds())
            if (start := pd_time(s.start)) is not None
        ),
        source=msg.source or "external",
    )


def headroom_message(
    h: NodeHeadroom, producer: str, produced_at: pd.Timestamp, weather_as_of: pd.Timestamp | None
) -> forecast_pb2.HeadroomForecast:
    """NodeHeadroom → HeadroomForecast contract (one slot per 15 min, binding and weather source per slot)."""
    sources = h.slot_source()
    weather = h.slot_weather()
    slots = [
        forecast_pb2.HeadroomSlot(
            headroom_w=phase_values(h.headroom_w[:, t]),
            rating_w=phase_values(h.limit_w[:, t]),
            base_load_w=phase_values(h.base_load_w[:, t]),
            pv_w=phase_values(h.pv_credit_w[:, t]),
            ambient_temperature_c=float(h.ambient_c[t]) if np.isfinite(h.ambient_c[t]) else float("nan"),
            binding_source=sources[t],
            weather_source=weather[t],
        )
        for t in range(h.headroom_w.shape[1])
    ]
    msg = forecast_pb2.HeadroomForecast(
        meta=meta(producer, produced_at),
        node_id=h.node_id,
        start=to_timestamp(h.slot_starts[0]),
        step_s=STEP_S,
        slots=slots,
        degraded=h.degraded,
    )
    if weather_as_of is not None:
        msg.weather_as_of.CopyFrom(to_timestamp(weather_as_of))
    return msg


def weather_message(
    w: WeatherSeries, site_id: str, producer: str, now: pd.Timestamp, provider: str
) -> forecast_pb2.WeatherForecast:
    """The weather used, on the 15-min grid from the current slot (``WeatherForecast`` contract)."""
    starts = slot_starts(now, 48.0)
    frame = resample_to(w, slot_midpoints(starts))

    def col(name: str) -> list[float]:
        return [float(x) for x in frame[name]] if name in frame else []

    return forecast_pb2.WeatherForecast(
        meta=meta(producer, now),
        site_id=site_id,
        latitude=w.latitude,
        longitude=w.longitude,
        start=to_timestamp(starts[0]),
        step_s=STEP_S,
        temperature_c=col("temp_air_c"),
        ghi_w_m2=col("ghi_w_m2"),
        dni_w_m2=col("dni_w_m2"),
        dhi_w_m2=col("dhi_w_m2"),
        cloud_cover_pct=col("cloud_cover_pct"),
        wind_speed_m_s=col("wind_speed_m_s"),
        provider=provider,
    )
