"""Usage reports back to the VTN: node load (W) heard on the bus → OpenADR report objects. Pure.

A report is sent for each event that asks for one (its ``reportDescriptors`` name USAGE and/or DEMAND) and that
limits at least one node, once per report period: one resource per limited node (``resourceName`` = node id),
one interval covering the period. DEMAND is the mean power (kW) over the period, USAGE the energy (kWh) —
OpenADR's meanings of the two payload types. Without a sample in the period the node is left out (unknown is
not reported as zero).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

REPORTED_TYPES = ("USAGE", "DEMAND")


@dataclass
class UsageAccumulator:
    """Time-weighted mean of each node's total load (sum of phases, W) since the last ``take``."""

    _sum_ws: dict[str, float] = field(default_factory=dict)
    _span_s: dict[str, float] = field(default_factory=dict)
    _last: dict[str, tuple[float, float]] = field(default_factory=dict)

    def add(self, node_id: str, at: float, load_w: float) -> None:
        """A load sample at ``at`` (POSIX s); the previous value holds until this one (step function)."""
        prev = self._last.get(node_id)
        if prev is not None and at > prev[0]:
            dt = min(at - prev[0], 900.0)  # a long silence is not counted at the stale value
            self._sum_ws[node_id] = self._sum_ws.get(node_id, 0.0) + prev[1] * dt
            self._span_s[node_id] = self._span_s.get(node_id, 0.0) + dt
        if prev is None or at >= prev[0]:
            self._last[node_id] = (at, load_w)

    def take(self, now: float) -> dict[str, float]:
        """Mean W per node over the period up to ``now``, then start a new period."""
        for node_id, (at, w) in list(self._last.items()):
            if now > at:
                dt = min(now - at, 900.0)
                self._sum_ws[node_id] = self._sum_ws.get(node_id, 0.0) + w * dt
                self._span_s[node_id] = self._span_s.get(node_id, 0.0) + dt
                self._last[node_id] = (now, w)
        out = {n: self._sum_ws[n] / s for n, s in self._span_s.items() if s > 0}
        self._sum_ws.clear()
        self._span_s.clear()
        return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    return f"PT{max(1, round(seconds))}S"


def usage_report(
    event_id: str,
    program_id: str,
    client_name: str,
    report_types: Iterable[str],
    mean_w: Mapping[str, float],
    start: float,
    end: float,
) -> dict[str, Any] | None:
    """The report object for one event over [start, end) (POSIX s), or None when there is nothing to say."""
    kinds = [k for k in report_types if k in REPORTED_TYPES]
    if not kinds or not mean_w or end <= start:
        return None
    hours = (end - start) / 3600.0
    resources = []
    for node_id, w in sorted(mean_w.items()):
        kw = w / 1000.0
        payloads = [{"type": k, "values": [round(kw * hours if k == "USAGE" else kw, 6)]} for k in kinds]
        resources.append(
            {
                "resourceName": node_id,
                "intervalPeriod": {"start": _iso(start), "duration": _duration(end - start)},
                "intervals": [{"id": 0, "payloads": payloads}],
            }
        )
    return {
        "objectType": "REPORT",
        "programID": program_id,  # OpenADR 3.0 requires it; 3.1 VTNs ignore it
        "eventID": event_id,
        "clientName": client_name,
        "reportName": f"gridcharge-{'-'.join(k.lower() for k in kinds)}",
        "payloadDescriptors": [
            {
                "objectType": "REPORT_PAYLOAD_DESCRIPTOR",
                "payloadType": k,
                "readingType": "SUMMED" if k == "USAGE" else "MEAN",
                "units": "KWH" if k == "USAGE" else "KW",
            }
            for k in kinds
        ],
        "resources": resources,
    }
