"""Parsed OpenADR events → the external limits gridcharge applies per node, and what to publish or withdraw.

Meaning of the fields as the consumers use them (allocation ``core/budget.py``, forecasting ``core/headroom.py``):
``limit_w`` applies from ``valid_from`` to the first ``schedule`` step, each step from its start, until
``valid_to``; once the producer has been silent for ``stale_after_s`` the consumers apply ``fallback_limit_w``
instead. The VEN re-publishes every limit after each successful poll of the VTN, so "silent" means "the VTN
(or the VEN) has been unreachable for that long". A limit whose window is empty (``valid_to == valid_from``)
withdraws the limit with that id. Pure: times are POSIX s, powers W per phase.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gridcharge.gridsignals.core.oadr import P3, IntervalLimit, ParsedEvent

SOURCE = "openadr"
FALLBACK_LIMIT_ID = "openadr-fallback"
DEFAULT_KEY = "*"
MAX_LIMIT_ID = 64  # allocation keeps 64 characters of a limit id


@dataclass(frozen=True)
class NodeMap:
    """Which topology nodes an event limits: keys are event targets (VEN, resource or group names), program
    names or ``*`` (every event no other key matched). An event limits every node one of its targets maps to;
    with no matching target, the node of its program; else the ``*`` node; else none (it is ignored)."""

    by_key: Mapping[str, str]

    def nodes_for(self, targets: Iterable[str], program_name: str) -> list[str]:
        nodes = list(dict.fromkeys(self.by_key[t] for t in targets if t in self.by_key))
        if nodes:
            return nodes
        for key in (program_name, DEFAULT_KEY):
            if key and key in self.by_key:
                return [self.by_key[key]]
        return []


@dataclass(frozen=True)
class LimitSpec:
    """One ExternalLimit to publish (source ``openadr``); ``valid_to`` inf = open-ended."""

    node_id: str
    limit_id: str
    valid_from: float
    valid_to: float
    limit_w: P3
    fallback_w: P3 | None
    stale_after_s: float
    schedule: tuple[tuple[float, P3], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.node_id, self.limit_id)

    def withdrawn(self, now: float) -> LimitSpec:
        """The message that withdraws this limit: the same id with an empty window at ``now``."""
        return LimitSpec(self.node_id, self.limit_id, now, now, self.limit_w, None, 0.0)


def limit_id(event_id: str, block: int) -> str:
    """``openadr-<event id>`` (``-<n>`` for the n-th block of an event with gaps), at most 64 characters."""
    base = f"openadr-{event_id}" + (f"-{block}" if block else "")
    if len(base) <= MAX_LIMIT_ID:
        return base
    return f"openadr-{hashlib.sha256(event_id.encode()).hexdigest()[:40]}" + (f"-{block}" if block else "")


def contiguous_blocks(intervals: Iterable[IntervalLimit]) -> list[list[IntervalLimit]]:
    """Intervals in time order split where a gap leaves no limit (a schedule step cannot say "no limit")."""
    blocks: list[list[IntervalLimit]] = []
    for iv in sorted(intervals, key=lambda i: i.start):
        if blocks and iv.start <= blocks[-1][-1].end:
            blocks[-1].append(iv)
        else:
            blocks.append([iv])
    return blocks


def event_limits(
    event: ParsedEvent,
    program_name: str,
    nodes: NodeMap,
    fallback_w: Mapping[str, P3],
    stale_after_s: float,
    now: float,
) -> list[LimitSpec]:
    """The limits one event sets: per mapped node, one limit per contiguous block of capacity intervals that
    has not ended at ``now``. Overlapping intervals: the later start wins from its start (schedule order)."""
    out: list[LimitSpec] = []
    targets = nodes.nodes_for(event.targets, program_name)
    for b, block in enumerate(contiguous_blocks(event.limits)):
        valid_to = max(iv.end for iv in block)
        if valid_to <= now:
            continue
        first, rest = block[0], block[1:]
        schedule = tuple((iv.start, iv.limit_w) for iv in rest)
        for node_id in targets:
            out.append(
                LimitSpec(
                    node_id,
                    limit_id(event.event_id, b),
                    first.start,
                    valid_to,
                    first.limit_w,
                    fallback_w.get(node_id),
                    stale_after_s,
                    schedule,
                )
            )
    return out


def fallback_limits(fallback_w: Mapping[str, P3], since: float) -> list[LimitSpec]:
    """While the VTN is unreachable past the configured time: each configured node's fallback, open-ended,
    never stale (it is the fallback)."""
    return [
        LimitSpec(node_id, FALLBACK_LIMIT_ID, since, math.inf, w, None, 0.0)
        for node_id, w in sorted(fallback_w.items())
    ]


@dataclass(frozen=True)
class Changes:
    """What to put on the bus: limits to (re)publish and limits to withdraw."""

    publish: list[LimitSpec]
    withdraw: list[LimitSpec]


def reconcile(
    published: Mapping[tuple[str, str], LimitSpec], desired: Iterable[LimitSpec], now: float, heartbeat: bool
) -> Changes:
    """Desired limits vs what is on the bus. ``heartbeat`` (after a successful poll): publish every desired
    limit again so its consumers see the source is alive; otherwise only new or changed ones. Limits no longer
    desired (event deleted or cancelled, fallback over) are withdrawn."""
    want = {s.key: s for s in desired}
    publish = [s for k, s in want.items() if heartbeat or published.get(k) != s]
    withdraw = [published[k].withdrawn(now) for k in published if k not in want]
    return Changes(publish, withdraw)
