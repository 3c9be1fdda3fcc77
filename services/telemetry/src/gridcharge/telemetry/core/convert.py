"""Core views -> protobuf contracts (grid.v1.NodeLoad, grid.v1.NodeLoadInterval)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from gridcharge.common.v1 import common_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.telemetry.core.history import LoadInterval
from gridcharge.telemetry.core.model import P3, NodeLoadView


def pv(v: P3) -> common_pb2.PhaseValues:
    return common_pb2.PhaseValues(l1=v[0], l2=v[1], l3=v[2])


def ts(t_s: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(round(t_s * 1e9))
    return out


def meta(producer: str, now_s: float) -> common_pb2.Meta:
    return common_pb2.Meta(producer=producer, produced_at=ts(now_s))


def node_load_msg(v: NodeLoadView, producer: str) -> grid_pb2.NodeLoad:
    return grid_pb2.NodeLoad(
        meta=meta(producer, v.as_of_s), node_id=v.node_id, as_of=ts(v.as_of_s), load_w=pv(v.load_w),
        worst_case_w=pv(v.worst_case_w), ev_load_w=pv(v.ev_load_w), base_load_w=pv(v.base_load_w),
        limit_w=pv(v.limit_w), metered=v.metered, stale_sources=v.stale_sources,
        implausible_sources=v.implausible_sources, ambient_temperature_c=v.ambient_c,
    )


def interval_msg(i: LoadInterval, producer: str, now_s: float) -> grid_pb2.NodeLoadInterval:
    return grid_pb2.NodeLoadInterval(
        meta=meta(producer, now_s), node_id=i.node_id, interval_start=ts(i.start_s), interval_s=i.interval_s,
        mean_load_w=pv(i.mean_load_w), mean_base_load_w=pv(i.mean_base_load_w), max_load_w=pv(i.max_load_w),
        mean_ambient_temperature_c=i.mean_ambient_c,
    )
