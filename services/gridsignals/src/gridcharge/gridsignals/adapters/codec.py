"""Core values ⇄ bus records: LimitSpec → ExternalLimit, PriceSpec → PriceSignal (source ``openadr``), NodeLoad →
(node, time, W)."""

from __future__ import annotations

import math

from gridcharge.grid.v1 import grid_pb2
from gridcharge.gridsignals.core.limits import SOURCE, LimitSpec
from gridcharge.gridsignals.core.prices import PriceSpec
from gridcharge.shared.codec import meta, phase_tuple, phase_values, timestamp_dt, to_timestamp


def external_limit(spec: LimitSpec, producer: str, now: float) -> grid_pb2.ExternalLimit:
    """One ExternalLimit; an open-ended window has no ``valid_to``; no fallback: the field stays unset (the
    consumers then keep the limit itself when it goes stale)."""
    msg = grid_pb2.ExternalLimit(
        meta=meta(producer, now),
        node_id=spec.node_id,
        limit_id=spec.limit_id,
        source=SOURCE,
        valid_from=to_timestamp(spec.valid_from),
        limit_w=phase_values(spec.limit_w),
        stale_after_s=math.ceil(spec.stale_after_s),
        schedule=[
            grid_pb2.TimedLimit(start=to_timestamp(start), limit_w=phase_values(w)) for start, w in spec.schedule
        ],
    )
    if math.isfinite(spec.valid_to):
        msg.valid_to.CopyFrom(to_timestamp(spec.valid_to))
    if spec.fallback_w is not None:
        msg.fallback_limit_w.CopyFrom(phase_values(spec.fallback_w))
    return msg


def record_key(spec: LimitSpec) -> str:
    """Bus key ``node_id/limit_id``: log compaction keeps every limit of a node, not only its newest record."""
    return f"{spec.node_id}/{spec.limit_id}"


def price_signal(spec: PriceSpec, producer: str, now: float) -> grid_pb2.PriceSignal:
    """One PriceSignal; an open-ended interval has no ``end``; no intervals = the price is withdrawn."""
    msg = grid_pb2.PriceSignal(
        meta=meta(producer, now),
        price_id=spec.price_id,
        source=SOURCE,
        node_id=spec.node_id,
        currency=spec.currency,
    )
    for iv in spec.intervals:
        out = msg.intervals.add(start=to_timestamp(iv.start), price_per_kwh=iv.price_per_kwh)
        if math.isfinite(iv.end):
            out.end.CopyFrom(to_timestamp(iv.end))
    return msg


def price_record_key(spec: PriceSpec) -> str:
    """Bus key ``node_id/price_id`` (``*/price_id`` for the whole site): compaction keeps every price."""
    return f"{spec.node_id or '*'}/{spec.price_id}"


def node_load_sample(msg: grid_pb2.NodeLoad) -> tuple[str, float, float] | None:
    """(node id, POSIX s, total W over the phases) of a NodeLoad; None when it has no time or a bad value."""
    at = timestamp_dt(msg.as_of)
    total = sum(phase_tuple(msg.load_w))
    if at is None or not msg.node_id or not math.isfinite(total):
        return None
    return msg.node_id, at.timestamp(), total
