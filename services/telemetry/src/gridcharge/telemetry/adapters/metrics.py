"""Telemetry metrics (names fixed in docs/DEVELOPING.md; `node` label only for grid nodes).

`gridcharge_node_limit_watts` is also exported by allocation (its effective limit, registered when its
module is imported). Telemetry's topology limit goes through a collector that registers no names and
emits the family only while nobody else has registered it — so the embedded single process, whatever
the import order, never registers or exposes that name twice.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric

NODE_LIMIT_NAME = "gridcharge_node_limit_watts"

NODE_LOAD = Gauge("gridcharge_node_load_watts", "Node load per grid phase, best estimate (W).", ["node", "phase"])
READINGS = Counter(
    "gridcharge_telemetry_readings_total", "Readings handled by telemetry, by kind and outcome.", ["kind", "outcome"]
)
STALE = Gauge("gridcharge_telemetry_stale_sources", "Stale stations and grid meters.", ["kind"])


class _NodeLimitCollector:
    """Per-phase topology limit of every node (W), unless another service owns the metric name."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], float] = {}

    def describe(self) -> list[Metric]:
        return []  # claim no name at registration time

    def collect(self) -> Iterator[Metric]:
        if getattr(REGISTRY, "_names_to_collectors", {}).get(NODE_LIMIT_NAME) is not None:
            return
        fam = GaugeMetricFamily(NODE_LIMIT_NAME, "Per-phase node limit (W).", labels=["node", "phase"])
        for (node, phase), v in sorted(self.values.items()):
            fam.add_metric([node, phase], v)
        yield fam


NODE_LIMIT = _NodeLimitCollector()
REGISTRY.register(NODE_LIMIT)


class _Labelled:
    def __init__(self, values: dict[tuple[str, str], float], key: tuple[str, str]) -> None:
        self.values, self.key = values, key

    def set(self, v: float) -> None:
        self.values[self.key] = v


class _LimitGauge:
    """`node_limit.labels(node=, phase=).set(v)` like a Gauge."""

    def labels(self, node: str, phase: str) -> _Labelled:
        return _Labelled(NODE_LIMIT.values, (node, phase))


class TelemetryMetrics:
    """The four telemetry metrics."""

    set_limits = True

    def __init__(self) -> None:
        self.node_load = NODE_LOAD
        self.node_limit = _LimitGauge()
        self.readings = READINGS
        self.stale = STALE
