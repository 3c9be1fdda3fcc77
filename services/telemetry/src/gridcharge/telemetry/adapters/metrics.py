"""Telemetry metrics (names fixed in docs/DEVELOPING.md; `node` label only for grid nodes).

`gridcharge_node_limit_watts` is also exported by allocation (its effective limit). Collectors are
looked up before they are created, at service construction time, so whichever service registers the
name first owns it and the embedded single process never registers a name twice.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge


def _existing(name: str) -> Any:
    return getattr(REGISTRY, "_names_to_collectors", {}).get(name)


def gauge(name: str, doc: str, labels: list[str]) -> tuple[Gauge, bool]:
    """(gauge, created_here) — an already registered collector of that name is reused."""
    found = _existing(name)
    if found is not None:
        return found, False
    return Gauge(name, doc, labels), True


def counter(name: str, doc: str, labels: list[str]) -> Counter:
    found = _existing(name) or _existing(name.removesuffix("_total"))
    if found is not None:
        return found
    return Counter(name, doc, labels)


class TelemetryMetrics:
    """The four telemetry metrics; `set_limits` is False when another service owns the limit gauge."""

    def __init__(self) -> None:
        self.node_load, _ = gauge("gridcharge_node_load_watts", "Node load per grid phase, best estimate (W).",
                                  ["node", "phase"])
        self.node_limit, self.set_limits = gauge("gridcharge_node_limit_watts",
                                                 "Per-phase node limit (W).", ["node", "phase"])
        self.readings = counter("gridcharge_telemetry_readings_total",
                                "Readings handled by telemetry, by kind and outcome.", ["kind", "outcome"])
        self.stale, _ = gauge("gridcharge_telemetry_stale_sources", "Stale stations and grid meters.", ["kind"])
