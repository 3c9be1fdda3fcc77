"""The node-limit gauge never collides with allocation's, whatever the import order."""

from __future__ import annotations

from gridcharge.telemetry.adapters.metrics import NODE_LIMIT_NAME, TelemetryMetrics
from prometheus_client import REGISTRY, Gauge, generate_latest


def test_node_limit_yields_to_another_owner() -> None:
    m = TelemetryMetrics()
    m.node_limit.labels(node="nx", phase="L1").set(123.0)
    owned_elsewhere = REGISTRY._names_to_collectors.get(NODE_LIMIT_NAME) is not None
    text = generate_latest(REGISTRY).decode()
    if not owned_elsewhere:
        assert 'gridcharge_node_limit_watts{node="nx",phase="L1"} 123.0' in text
        other = Gauge(NODE_LIMIT_NAME, "registered later by another service", ["node", "phase"])  # must not raise
        try:
            other.labels(node="ny", phase="L2").set(1.0)
            text = generate_latest(REGISTRY).decode()
            assert text.count(f"# HELP {NODE_LIMIT_NAME} ") == 1
            assert 'node="nx"' not in text.split(f"# HELP {NODE_LIMIT_NAME} ")[1].split("# HELP")[0]
        finally:
            REGISTRY.unregister(other)
    else:
        assert text.count(f"# HELP {NODE_LIMIT_NAME} ") == 1
