"""Core views -> bus records (grid.v1.NodeLoad, grid.v1.NodeLoadInterval); inputs are read by the core
with `gridcharge.shared.codec` (timestamps, per-phase values, the meter sample)."""

from __future__ import annotations

from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.codec import meta, phase_values, to_timestamp
from gridcharge.telemetry.core.history import LoadInterval
from gridcharge.telemetry.core.model import NodeLoadView


def node_load_msg(v: NodeLoadView, producer: str) -> grid_pb2.NodeLoad:
    return grid_pb2.NodeLoad(
        meta=meta(producer, v.as_of_s),
        node_id=v.node_id,
        as_of=to_timestamp(v.as_of_s),
        load_w=phase_values(v.load_w),
        worst_case_w=phase_values(v.worst_case_w),
        ev_load_w=phase_values(v.ev_load_w),
        base_load_w=phase_values(v.base_load_w),
        limit_w=phase_values(v.limit_w),
        metered=v.metered,
        stale_sources=v.stale_sources,
        implausible_sources=v.implausible_sources,
        ambient_temperature_c=v.ambient_c,
    )


def interval_msg(i: LoadInterval, producer: str, now_s: float) -> grid_pb2.NodeLoadInterval:
    return grid_pb2.NodeLoadInterval(
        meta=meta(producer, now_s),
        node_id=i.node_id,
        interval_start=to_timestamp(i.start_s),
        interval_s=i.interval_s,
        mean_load_w=phase_values(i.mean_load_w),
        mean_base_load_w=phase_values(i.mean_base_load_w),
        max_load_w=phase_values(i.max_load_w),
        mean_ambient_temperature_c=i.mean_ambient_c,
    )
