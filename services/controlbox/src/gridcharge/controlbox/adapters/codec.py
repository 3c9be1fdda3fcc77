"""Dimming → ExternalLimit on ``gridcharge.grid.external-limits.v1``, key ``<node id>/§14a``.

The topic is compacted: a key of its own keeps the §14a limit next to a DSO or OpenADR limit on the same node
(keyed by the node id) instead of replacing it in the log a restarting consumer reads.

``limit_id`` and ``source`` are both "§14a": the allocator's binding constraint reads ``external:§14a`` and the
limit is replaced (not added to) by the next message. An active limit's window runs to its known end or
``hold_s`` ahead (re-published before then); its fallback is the same limit, so a control-box service that
dies while dimming leaves the site dimmed until the window ends. The end of a dimming is an empty window
(valid_to = valid_from), which withdraws the limit.
"""

from __future__ import annotations

from gridcharge.controlbox.core.dimming import Dimming
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.codec import meta, phase_values, to_timestamp

LIMIT_ID = "§14a"
SOURCE = "§14a"


def record_key(node_id: str) -> str:
    """The record key of a node's §14a limit."""
    return f"{node_id}/{LIMIT_ID}"


def per_phase_w(total_w: float) -> tuple[float, float, float]:
    """The total limit split evenly over L1–L3 (W per phase)."""
    return (total_w / 3, total_w / 3, total_w / 3)


def external_limit(node_id: str, d: Dimming, now: float, hold_s: float, producer: str) -> grid_pb2.ExternalLimit:
    """The ExternalLimit that says ``d`` for ``node_id`` from ``now`` on (an empty window when not dimmed)."""
    msg = grid_pb2.ExternalLimit(
        meta=meta(producer, now), node_id=node_id, limit_id=LIMIT_ID, source=SOURCE, valid_from=to_timestamp(now)
    )
    if d.limit_w is None:
        msg.valid_to.CopyFrom(to_timestamp(now))
        return msg
    end = d.until if d.until is not None else now + hold_s
    msg.valid_to.CopyFrom(to_timestamp(max(end, now + 1.0)))
    lim = phase_values(per_phase_w(d.limit_w))
    msg.limit_w.CopyFrom(lim)
    msg.fallback_limit_w.CopyFrom(lim)
    return msg
