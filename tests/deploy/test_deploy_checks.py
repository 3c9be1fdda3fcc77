"""Fast, pure checks of the deployment artefacts (no helm, no cluster): run in `make test`.

The checks live in deploy/scripts/deploy_checks.py (the tool check-deploy.sh runs); these tests call it.
The helm/promtool/kubernetes-validate parts run in deploy/scripts/check-deploy.sh (`make lint`).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "deploy" / "scripts"
sys.path.insert(0, str(SCRIPTS))
import deploy_checks as dc  # noqa: E402


def _load_script(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------- the tool


def test_the_checking_tool_lives_under_deploy_and_runs_from_anywhere(tmp_path: Path) -> None:
    """check-deploy.sh runs it as a script; it finds the repository from its own path, not the cwd."""
    assert Path(dc.__file__).resolve() == SCRIPTS / "deploy_checks.py"
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "deploy_checks.py"), "static"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


def test_check_deploy_runs_only_scripts_that_exist() -> None:
    text = (SCRIPTS / "check-deploy.sh").read_text()
    called = re.findall(r'"\$PY" (\S+\.py)', text) + re.findall(r"bash (deploy/scripts/\S+\.sh)", text)
    assert "deploy/scripts/deploy_checks.py" in called
    assert [c for c in called if not (REPO / c).is_file()] == []
    assert "tests/" not in text  # the deployment tooling does not live in the test tree


# ----------------------------------------------------------------------------------------------- metrics


def test_metrics_doc_lists_exactly_the_fixed_metrics() -> None:
    assert len(dc.developing_metrics()) >= 27
    assert dc.check_metrics_match_developing() == []


def test_metric_names_follow_prometheus_conventions() -> None:
    assert dc.check_metric_naming() == []


def test_metrics_doc_states_no_per_station_labels_rule() -> None:
    assert "No per-station labels" in dc.METRICS_MD.read_text()


@pytest.mark.parametrize(
    ("name", "kind", "unit", "labels", "expected"),
    [
        ("gridcharge_commands", "counter", "commands", [], "end in _total"),
        ("gridcharge_sessions_total", "gauge", "sessions", [], "end in _total"),
        ("gridcharge_node_load_kw", "gauge", "watts", ["node"], "does not end in _watts"),
        ("gridcharge_solve_ms", "histogram", "seconds", [], "base units"),
        ("gridcharge_connector_power_watts", "gauge", "watts", ["station_id"], "per-station labels"),
        ("gridchargeNodeLoadWatts", "gauge", "watts", [], "snake_case"),
        ("node_load_watts", "gauge", "watts", [], "gridcharge_ prefix"),
        ("gridcharge_plan_solve", "histogram", "seconds", [], "histograms need a unit suffix"),
        ("gridcharge_age_seconds", "gauge", "minutes", [], "name says seconds"),
    ],
)
def test_naming_check_rejects_bad_metrics(name: str, kind: str, unit: str, labels: list[str], expected: str) -> None:
    problems = dc.check_metric_naming({name: {"type": kind, "unit": unit, "labels": labels, "meaning": "x"}})
    assert any(expected in p for p in problems), problems


def test_documented_labels_are_parsed_without_label_values() -> None:
    m = dc.documented_metrics()
    assert m["gridcharge_bus_messages_total"]["labels"] == ["topic", "direction"]
    assert m["gridcharge_plan_solve_seconds"]["labels"] == []


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (node) (rate(gridcharge_bus_messages_total{topic=~"a|b"}[5m]))', {"gridcharge_bus_messages_total"}),
        (
            "histogram_quantile(0.95, sum by (le) (rate(gridcharge_plan_solve_seconds_bucket[$__rate_interval])))",
            {"gridcharge_plan_solve_seconds_bucket"},
        ),
        (
            "max by (node, phase) (a_watts) > on (node, phase) min by (node, phase) (b_watts) offset 15m",
            {"a_watts", "b_watts"},
        ),
        ("count(x > 0) or vector(0)", {"x"}),
        ('absent(gridcharge_build_info{service="allocation"}) and 1e3 < 2', {"gridcharge_build_info"}),
    ],
)
def test_metric_names_in_expr(expr: str, names: set[str]) -> None:
    assert dc.metric_names_in_expr(expr) == names


# ----------------------------------------------------------------------------------------------- dashboards


def test_dashboards_exist_for_every_topic() -> None:
    titles = " ".join(json.loads(p.read_text())["title"].lower() for p in dc.dashboard_paths())
    for word in ("fleet", "headroom", "allocation", "forecast vs actual", "kafka"):
        assert word in titles


def test_dashboards_are_valid_and_use_documented_metrics() -> None:
    assert dc.check_dashboards() == []


def test_dashboards_cover_the_required_views() -> None:
    exprs = " ".join(
        t["expr"]
        for p in dc.dashboard_paths()
        for panel in dc._panels(json.loads(p.read_text())["panels"])
        for t in panel.get("targets", [])
    )
    for metric in (
        "gridcharge_gateway_connected_stations",  # fleet & connections
        "gridcharge_node_load_watts",  # load per node and phase
        "gridcharge_node_limit_watts",  # ... vs limit
        "gridcharge_headroom_watts",
        "gridcharge_binding_constraints",
        "gridcharge_sessions_at_risk",
        "gridcharge_allocation_commands_total",  # command outcomes
        "gridcharge_gateway_commands_total",
        "kafka_consumergroup_lag",  # consumer lag (kafka-exporter)
    ):
        assert metric in exprs, metric
    assert "offset 15m" in exprs  # forecast vs actual compares the forecast made one slot earlier


def test_dashboard_check_catches_problems(tmp_path: Path) -> None:
    bad = {
        "title": "x",
        "uid": "has spaces",
        "panels": [
            {
                "id": 1,
                "type": "timeseries",
                "title": "a",
                "gridPos": {},
                "targets": [{"refId": "A", "expr": "rate(gridcharge_nope_total[5m])"}],
            },
            {
                "id": 1,
                "type": "timeseries",
                "title": "b",
                "gridPos": {},
                "targets": [{"refId": "A", "expr": "sum(gridcharge_sessions_active"}],
            },
        ],
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    problems = " | ".join(dc.check_dashboard(path))
    assert "gridcharge_nope_total" in problems
    assert "uid" in problems
    assert "unique" in problems
    assert "unbalanced" in problems
    path.write_text("{not json")
    assert "invalid JSON" in dc.check_dashboard(path)[0]
    path.write_text(json.dumps({"title": "x"}))
    assert any("'uid'" in p for p in dc.check_dashboard(path))


# ----------------------------------------------------------------------------------------------- alerts


def test_alert_rules_cover_the_required_alerts_and_use_documented_metrics() -> None:
    assert dc.check_alert_rules() == []


def test_chart_prometheus_rule_source_is_identical_to_alerts_file() -> None:
    assert dc.check_chart_alerts_copy() == []


# ----------------------------------------------------------------------------------------------- chart values


def _schema() -> dict[str, Any]:
    return json.loads((dc.CHART / "values.schema.json").read_text())


def _values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_values_schema_is_a_valid_schema_and_strict_at_top_level() -> None:
    schema = _schema()
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("ci_file", sorted((REPO / "helm" / "gridcharge" / "ci").glob("*.yaml")), ids=lambda p: p.name)
def test_default_and_ci_values_satisfy_the_schema(ci_file: Path) -> None:
    values = _merge(_values(dc.CHART / "values.yaml"), _values(ci_file))
    jsonschema.validate(values, _schema())


@pytest.mark.parametrize(
    "override",
    [
        {"gatway": {"replicaCount": 2}},
        {"gateway": {"autoscalling": {"enabled": False}}},
        {"allocation": {"replicaCount": 2}},
        {"logLevel": "TRACE"},
        {"kafkaTopics": {"topics": [{"name": "x.v1", "key": "k", "scope": "node", "cleanupPolicy": "delete"}]}},
        {"stationCredentials": {"stations": {"CP1": "plain-password"}}},
        {"apiAuth": {"tokens": {"ui": {"role": "operator", "sha256": "abc"}}}},
        {"apiAuth": {"tokens": {"ui": {"role": "admin", "sha256": "0" * 64}}}},
        {"apiAuth": {"tokens": {"ui": {"role": "operator", "token": "plain"}}}},
        {"apiAuth": {"oidc": {"jwksUrl": "http://idp.example/jwks"}}},
        {"apiAuth": {"oidc": {"algorithms": "HS256"}}},
        {"apiAuth": {"oidc": {"roleMap": "admins=root"}}},
        {"opsPort": 0},
        {"gridsignals": {"vtnUrl": "https://ven:secret@vtn.example"}},
        {"gridsignals": {"vtnUrl": "ftp://vtn.example"}},
        {"gridsignals": {"nodeMap": {"a,b": "site"}}},
        {"gridsignals": {"fallbackWatts": {"site": -1}}},
        {"gridsignals": {"fallbackWatts": {"site": "1/2"}}},
        {"gridsignals": {"clientSecret": "plain"}},
    ],
    ids=[
        "top-level-typo",
        "nested-typo",
        "two-allocators",
        "bad-log-level",
        "delete-without-retention",
        "plain-station-password",
        "token-not-a-digest",
        "unknown-role",
        "plain-token",
        "http-jwks",
        "hmac-alg",
        "bad-role-map",
        "ops-port-0",
        "vtn-url-with-credentials",
        "vtn-url-not-http",
        "vtn-node-map-comma",
        "vtn-negative-fallback",
        "vtn-fallback-two-phases",
        "vtn-plain-client-secret",
    ],
)
def test_values_schema_rejects_mistakes(override: dict[str, Any]) -> None:
    values = _merge(_values(dc.CHART / "values.yaml"), override)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, _schema())


def test_chart_topics_match_the_contract_registry() -> None:
    from gridcharge.shared import contracts

    registry = {t.name: t for t in contracts.ALL_TOPICS}
    chart = dc.chart_topics()
    assert set(chart) == set(registry)
    for name, t in registry.items():
        assert chart[name]["cleanup"] == ("compact" if t.compacted else "delete"), name
        if not t.compacted:
            assert chart[name]["retention_ms"] == t.retention_ms, name
        assert chart[name]["partitions"] == t.partitions, name


def test_compose_is_consistent_with_the_chart() -> None:
    assert dc.check_compose() == []


@pytest.mark.parametrize("where", ["chart", "compose"])
def test_example_topologies_load(where: str) -> None:
    from gridcharge.shared import topology

    if where == "chart":
        text = _values(dc.CHART / "values.yaml")["topology"]["content"]
    else:
        text = yaml.safe_load(dc.COMPOSE.read_text())["configs"]["topology"]["content"]
    topo = topology.parse_topology(yaml.safe_load(text), where)
    assert topo.nodes and topo.stations


def test_chart_readme_is_up_to_date_and_every_value_documented() -> None:
    readme = _load_script("chart_readme", REPO / "deploy" / "scripts" / "chart_readme.py")
    text, undocumented = readme.render(dc.CHART)
    assert undocumented == []
    assert (dc.CHART / "README.md").read_text() == text, "run: python deploy/scripts/chart_readme.py"


def test_pod_policy_check_flags_insecure_workloads() -> None:
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "x", "labels": {"app.kubernetes.io/component": "allocation"}},
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{"name": "c", "image": "img:latest", "securityContext": {}}]}},
        },
    }
    problems = " | ".join(dc.check_pod_policy(deployment))
    for expected in (
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "drop must include ALL",
        "runAsNonRoot",
        "seccompProfile",
        "resources",
        "pinned",
        "/tmp",
        "startupProbe",
        "at most one replica",
        "Recreate",
    ):
        assert expected in problems, expected


# ----------------------------------------------------------------------------------------------- exposure


def _svc(name: str, kind: str, *ports: str) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": kind, "ports": [{"name": p, "port": 1, "targetPort": p} for p in ports]},
    }


def _deployment(component: str, **ports: int) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": component, "labels": {"app.kubernetes.io/component": component}},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": component,
                            "ports": [{"name": n, "containerPort": p} for n, p in ports.items()],
                            "env": [{"name": "GRIDCHARGE_DATA_DIR", "value": "/x"}],
                        }
                    ]
                }
            }
        },
    }


def _policy(component: str | None, *ingress: dict[str, Any]) -> dict[str, Any]:
    labels = {"app.kubernetes.io/component": component} if component else {}
    return {
        "kind": "NetworkPolicy",
        "metadata": {"name": component or "deny"},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "gridcharge", **labels}},
            "policyTypes": ["Ingress", "Egress"],
            **({"ingress": list(ingress)} if ingress else {}),
        },
    }


def test_exposure_check_allows_only_ocpp_outside_the_cluster() -> None:
    assert dc.check_exposure([_svc("ocpp", "LoadBalancer", "ocpp"), _svc("api", "ClusterIP", "http", "ops")]) == []
    problems = dc.check_exposure([_svc("gw", "LoadBalancer", "ocpp", "http"), _svc("np", "NodePort", "ops")])
    assert len(problems) == 2 and "'http'" in problems[0] and "'ops'" in problems[1]
    ingress = {
        "kind": "Ingress",
        "metadata": {"name": "i"},
        "spec": {"rules": [{"http": {"paths": [{"backend": {"service": {"name": "gw", "port": {"name": "http"}}}}]}}]},
    }
    assert "only OCPP" in dc.check_exposure([ingress])[0]


def test_network_policy_check() -> None:
    gw = _deployment("gateway", ocpp=9000, http=8080, ops=9100)
    ok = [
        gw,
        _policy(None),
        _policy(
            "gateway", {"ports": [{"port": 9000}]}, {"ports": [{"port": 9100}], "from": [{"namespaceSelector": {}}]}
        ),
    ]
    assert dc.check_network_policies(ok) == []
    assert "default-deny" in " ".join(dc.check_network_policies([gw]))
    open_api = [gw, _policy(None), _policy("gateway", {"ports": [{"port": 8080}]})]
    assert "open to everyone" in " ".join(dc.check_network_policies(open_api))
    open_all = [gw, _policy(None), _policy("gateway", {})]
    assert "open to everyone" in " ".join(dc.check_network_policies(open_all))


def test_env_name_check_flags_variables_nobody_reads() -> None:
    problems = dc.check_env_names([_deployment("telemetry", http=8081)])
    assert problems and "GRIDCHARGE_DATA_DIR is not a gridcharge setting" in problems[0]


def test_env_parse_check_runs_the_services_settings() -> None:
    gw = _deployment("gateway", ocpp=9000)
    container = gw["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [
        {"name": "GRIDCHARGE_SECURITY_PROFILE", "value": "2"},
        {"name": "GRIDCHARGE_REPLICA_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    assert dc.check_env_parses([gw]) == []
    container["env"][0]["value"] = "7"
    assert "GRIDCHARGE_SECURITY_PROFILE" in dc.check_env_parses([gw])[0]
