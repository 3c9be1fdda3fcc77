"""Checks of the deployment artefacts that need no cluster and no helm.

Used two ways:
- by ``deploy/scripts/check-deploy.sh`` (``make lint``) as a CLI:
    python deploy/scripts/deploy_checks.py static
    python deploy/scripts/deploy_checks.py manifests --kube-version 1.34.0 RENDERED.yaml...
    python deploy/scripts/deploy_checks.py topic-job RENDERED-TOPICS-JOB.yaml
- by ``tests/deploy/test_deploy_checks.py`` (pytest, part of ``make test``): the pure parts
  (metrics naming, dashboards, alert rules, chart rule copy) and the checks' own behaviour.

Every check returns a list of human-readable problems; empty means fine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]  # deploy/scripts/ -> repository root
DEVELOPING_MD = REPO / "docs" / "DEVELOPING.md"
METRICS_MD = REPO / "docs" / "metrics.md"
DASHBOARDS_DIR = REPO / "deploy" / "grafana"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
CHART = REPO / "helm" / "gridcharge"
CHART_ALERTS = CHART / "files" / "alerts.yaml"

# Labels whose values grow with the fleet: forbidden on every metric (docs/metrics.md, "Rules").
PER_STATION_LABELS = {
    "station",
    "station_id",
    "charge_point",
    "charge_point_id",
    "connector",
    "connector_id",
    "evse",
    "evse_id",
    "session",
    "session_id",
    "transaction",
    "transaction_id",
    "ev",
    "vehicle",
    "id_tag",
}
UNIT_SUFFIXES = {"watts": "_watts", "seconds": "_seconds", "joules": "_joules"}
FORBIDDEN_NAME_PARTS = ("_kw", "_kwh", "_wh", "_ms", "_milliseconds", "_minutes", "_hours", "_percent", "_kilo")
PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
}


# ----------------------------------------------------------------------------------------------- metrics


def _table_rows(text: str, header_first_cell: str) -> list[list[str]]:
    """Rows of the first markdown table whose header starts with ``header_first_cell``."""
    rows: list[list[str]] = []
    in_table = False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.strip().startswith("|") else None
        if cells is None:
            if in_table:
                break
            continue
        if not in_table:
            if cells[0].lower() == header_first_cell:
                in_table = True
            continue
        if set("".join(cells)) <= {"-", ":", " "}:
            continue
        rows.append(cells)
    return rows


def developing_metrics() -> dict[str, str]:
    """name -> type from the fixed table in docs/DEVELOPING.md."""
    text = DEVELOPING_MD.read_text()
    section = text.split("## Metrics", 1)[1]
    return {
        row[0].strip("`"): row[1]
        for row in _table_rows(section, "name")
        if row[0].startswith(("gridcharge_", "`gridcharge_"))
    }


def documented_metrics() -> dict[str, dict[str, Any]]:
    """name -> {type, unit, labels, meaning} from docs/metrics.md."""
    text = METRICS_MD.read_text()
    section = text.split("## Metrics", 1)[1]
    out: dict[str, dict[str, Any]] = {}
    for row in _table_rows(section, "name"):
        name = row[0].strip("`")
        # label values are written as (`a`/`b`): keep only the label names (the first backquoted word of each item)
        labels = [m.group(1) for m in re.finditer(r"(?:^|,\s*)`([a-z_]+)`", row[3])]
        out[name] = {"type": row[1], "unit": row[2], "labels": labels, "meaning": row[4] if len(row) > 4 else ""}
    return out


def exporter_metrics() -> set[str]:
    text = METRICS_MD.read_text()
    section = text.split("## Exporter metrics", 1)[1]
    return {row[0].strip("`") for row in _table_rows(section, "name")}


def known_series_names() -> set[str]:
    names: set[str] = set(exporter_metrics())
    for name, meta in documented_metrics().items():
        names.add(name)
        if meta["type"] == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def check_metric_naming(metrics: dict[str, dict[str, Any]] | None = None) -> list[str]:
    metrics = documented_metrics() if metrics is None else metrics
    problems: list[str] = []
    if not metrics:
        return ["docs/metrics.md: no metrics table found"]
    for name, m in metrics.items():
        kind, unit = m["type"], m["unit"]
        if not re.fullmatch(r"gridcharge_[a-z][a-z0-9]*(_[a-z0-9]+)*", name):
            problems.append(f"{name}: not snake_case with the gridcharge_ prefix")
        if kind not in {"counter", "gauge", "histogram", "summary"}:
            problems.append(f"{name}: unknown type {kind!r}")
        if (kind == "counter") != name.endswith("_total"):
            problems.append(f"{name}: counters (and only counters) end in _total")
        base = name.removesuffix("_total")
        if unit in UNIT_SUFFIXES and not base.endswith(UNIT_SUFFIXES[unit]):
            problems.append(f"{name}: unit {unit} but the name does not end in {UNIT_SUFFIXES[unit]}")
        for u, suffix in UNIT_SUFFIXES.items():
            if base.endswith(suffix) and unit != u:
                problems.append(f"{name}: name says {u} but unit column says {unit!r}")
        if any(part in name for part in FORBIDDEN_NAME_PARTS):
            problems.append(f"{name}: use base units (watts, seconds, joules), not scaled ones")
        if kind == "histogram" and not any(base.endswith(s) for s in UNIT_SUFFIXES.values()):
            problems.append(f"{name}: histograms need a unit suffix")
        if name.endswith("_info") and (kind != "gauge" or unit != "1"):
            problems.append(f"{name}: _info metrics are gauges of value 1")
        bad = PER_STATION_LABELS.intersection(m["labels"])
        if bad:
            problems.append(f"{name}: per-station labels are forbidden: {sorted(bad)}")
        if not m.get("meaning"):
            problems.append(f"{name}: no meaning documented")
    return problems


def check_metrics_match_developing() -> list[str]:
    fixed = developing_metrics()
    documented = documented_metrics()
    problems = [f"{n}: in DEVELOPING.md but not in docs/metrics.md" for n in sorted(set(fixed) - set(documented))]
    problems += [
        f"{n}: in docs/metrics.md but not in DEVELOPING.md (names are fixed there)"
        for n in sorted(set(documented) - set(fixed))
    ]
    for n in sorted(set(fixed) & set(documented)):
        if fixed[n] != documented[n]["type"]:
            problems.append(f"{n}: type {documented[n]['type']} in docs/metrics.md, {fixed[n]} in DEVELOPING.md")
    return problems


def metric_names_in_expr(expr: str) -> set[str]:
    """Series names a PromQL expression selects (good enough for our expressions, not a full parser)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names: set[str] = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        tok = m.group(0)
        before = s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before in ".$":
            continue
        if tok.lower() in PROMQL_KEYWORDS or s[m.end() :].lstrip().startswith("("):
            continue
        names.add(tok)
    return names


def _unknown_metrics(expr: str, known: set[str]) -> set[str]:
    return {n for n in metric_names_in_expr(expr) if n not in known}


# ----------------------------------------------------------------------------------------------- dashboards


def _panels(panels: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def check_dashboard(path: Path, known: set[str] | None = None) -> list[str]:
    known = known_series_names() if known is None else known
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return [f"{where}: invalid JSON: {e}"]
    problems = [f"{where}: missing key {k!r}" for k in ("panels", "title", "uid") if k not in d]
    if problems:
        return problems
    if not re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", d["uid"]):
        problems.append(f"{where}: uid {d['uid']!r} must be 1-40 of [a-zA-Z0-9_-]")
    if not d["panels"]:
        problems.append(f"{where}: no panels")
    ids = [p.get("id") for p in _panels(d["panels"])]
    if len(ids) != len(set(ids)) or None in ids:
        problems.append(f"{where}: panel ids must be present and unique")
    for var in d.get("templating", {}).get("list", []):
        q = var.get("definition") or (var.get("query") if isinstance(var.get("query"), str) else "")
        m = re.match(r"label_values\((.*),\s*[a-z_]+\)\s*$", q or "")
        if var.get("type") == "query" and m:
            for n in _unknown_metrics(m.group(1), known):
                problems.append(f"{where}: variable {var['name']}: unknown metric {n}")
    for p in _panels(d["panels"]):
        if p.get("type") == "row":
            continue
        if "gridPos" not in p or not p.get("title"):
            problems.append(f"{where}: panel {p.get('id')} needs title and gridPos")
        targets = p.get("targets", [])
        if not targets:
            problems.append(f"{where}: panel {p.get('title')!r} has no targets")
        for t in targets:
            expr = t.get("expr", "")
            if not expr.strip():
                problems.append(f"{where}: panel {p.get('title')!r} target {t.get('refId')} has no expr")
                continue
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                problems.append(f"{where}: panel {p.get('title')!r}: unbalanced brackets in {expr!r}")
            for n in sorted(_unknown_metrics(expr, known)):
                problems.append(f"{where}: panel {p.get('title')!r}: metric {n} is not in docs/metrics.md")
    return problems


def dashboard_paths() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def check_dashboards() -> list[str]:
    paths = dashboard_paths()
    if not paths:
        return [f"no dashboards in {DASHBOARDS_DIR}"]
    known = known_series_names()
    problems: list[str] = []
    uids: dict[str, Path] = {}
    for p in paths:
        problems += check_dashboard(p, known)
        try:
            uid = json.loads(p.read_text()).get("uid")
        except json.JSONDecodeError:
            continue
        if uid in uids:
            problems.append(f"{p.name}: uid {uid} also used by {uids[uid].name}")
        uids[uid] = p
    return problems


# ----------------------------------------------------------------------------------------------- alerts


def load_alert_groups(path: Path = ALERTS) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["groups"]


def check_alert_rules() -> list[str]:
    problems: list[str] = []
    known = known_series_names()
    names: set[str] = set()
    for group in load_alert_groups():
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            if name in names:
                problems.append(f"alerts.yaml: duplicate rule {name}")
            names.add(name)
            if "alert" in rule:
                if rule.get("labels", {}).get("severity") not in {"critical", "warning", "info"}:
                    problems.append(f"alerts.yaml: {name}: labels.severity must be critical|warning|info")
                for key in ("summary", "description"):
                    if not rule.get("annotations", {}).get(key):
                        problems.append(f"alerts.yaml: {name}: annotation {key} missing")
            for n in sorted(_unknown_metrics(rule.get("expr", ""), known)):
                problems.append(f"alerts.yaml: {name}: metric {n} is not in docs/metrics.md")
    required = {
        "GridchargeNodeOverLimit",
        "GridchargeFailsafeActive",
        "GridchargeLeaseRenewalsFailing",
        "GridchargeForecastsStale",
        "GridchargeGatewayRejectingConnections",
        "GridchargeNoAllocator",
    }
    problems += [f"alerts.yaml: required alert {a} missing" for a in sorted(required - names)]
    return problems


def check_chart_alerts_copy() -> list[str]:
    if not CHART_ALERTS.exists() or CHART_ALERTS.read_bytes() != ALERTS.read_bytes():
        return [
            f"{CHART_ALERTS.relative_to(REPO)} differs from {ALERTS.relative_to(REPO)}: "
            f"run `cp {ALERTS.relative_to(REPO)} {CHART_ALERTS.relative_to(REPO)}`"
        ]
    return []


# ----------------------------------------------------------------------------------------------- topics, compose

COMPOSE = REPO / "deploy" / "compose.yaml"
DAY_MS = 86_400_000


def chart_topics() -> dict[str, dict[str, Any]]:
    """name -> {cleanup, retention_ms, partitions} as the chart provisions them with default values."""
    kt = yaml.safe_load((CHART / "values.yaml").read_text())["kafkaTopics"]
    out = {}
    for t in kt["topics"]:
        partitions = t.get("partitions") or (
            kt["stationPartitions"] if t["scope"] == "station" else kt["nodePartitions"]
        )
        out[t["name"]] = {
            "cleanup": t["cleanupPolicy"],
            "retention_ms": t.get("retentionMs", -1),
            "partitions": partitions,
        }
    return out


def compose_topics() -> dict[str, dict[str, Any]]:
    """name -> {cleanup, retention_ms} from the kafka-init command of deploy/compose.yaml."""
    script = "\n".join(yaml.safe_load(COMPOSE.read_text())["services"]["kafka-init"]["command"])
    out = {}
    for m in re.finditer(r"^\s*t (\S+)\s+(\d+)(.*)$", script, re.M):
        rest = m.group(3)
        cleanup = re.search(r"cleanup\.policy=(\w+)", rest)
        days = re.search(r"retention\.ms=\$\$\(\((\d+)\*day\)\)|retention\.ms=\$\$(day)", rest)
        retention = -1
        if days:
            retention = (int(days.group(1)) if days.group(1) else 1) * DAY_MS
        out[m.group(1)] = {"cleanup": cleanup.group(1) if cleanup else None, "retention_ms": retention}
    return out


def check_compose() -> list[str]:
    problems: list[str] = []
    c = yaml.safe_load(COMPOSE.read_text())
    services = c.get("services", {})
    for required in ("kafka", "redis", "gateway", "telemetry", "forecasting", "allocation", "simulator"):
        if required not in services:
            problems.append(f"compose.yaml: service {required} missing")
    host_ports: dict[str, str] = {}
    for name, svc in services.items():
        if "image" not in svc and "build" not in svc:
            problems.append(f"compose.yaml: {name} has neither image nor build")
        deps = svc.get("depends_on", {})
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                problems.append(f"compose.yaml: {name} depends on unknown service {dep}")
        for cfg in svc.get("configs", []):
            src = cfg["source"] if isinstance(cfg, dict) else cfg
            if src not in c.get("configs", {}):
                problems.append(f"compose.yaml: {name} uses unknown config {src}")
        for port in svc.get("ports", []):
            host = str(port).rsplit(":", 1)[0]
            if host in host_ports and "observability" not in (svc.get("profiles") or []):
                problems.append(f"compose.yaml: host port {host} used by {name} and {host_ports[host]}")
            host_ports[host] = name
        env = svc.get("environment", {})
        if env.get("GRIDCHARGE_SERVICE") and env.get("GRIDCHARGE_BUS") != "kafka":
            problems.append(f"compose.yaml: {name} must run with GRIDCHARGE_BUS=kafka")
        from gridcharge.shared.config import known_env_vars

        for var in env:
            if var.startswith("GRIDCHARGE_") and var not in known_env_vars():
                problems.append(f"compose.yaml: {name}: {var} is not a gridcharge setting")
    ct, kt = compose_topics(), chart_topics()
    if set(ct) != set(kt):
        problems.append(f"compose.yaml topics differ from the chart's: {sorted(set(ct) ^ set(kt))}")
    for name in set(ct) & set(kt):
        if (ct[name]["cleanup"], ct[name]["retention_ms"]) != (kt[name]["cleanup"], kt[name]["retention_ms"]):
            problems.append(f"compose.yaml: {name} cleanup/retention {ct[name]} differs from the chart's {kt[name]}")
    return problems


def check_static() -> list[str]:
    return (
        check_metrics_match_developing()
        + check_metric_naming()
        + check_dashboards()
        + check_alert_rules()
        + check_chart_alerts_copy()
        + check_compose()
    )


# ----------------------------------------------------------------------------------------------- manifests

# Kinds from CRDs: kubernetes-validate has no schema for them; these minimal schemas check what the
# operators need (prometheus-operator, Strimzi).
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {"type": "object", "required": ["matchLabels"]},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                                "scrapeTimeout": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                        "properties": {
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": {"type": "string"},
                                        },
                                    },
                                }
                            },
                        },
                    }
                },
            },
        },
    },
    "KafkaTopic": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
            "metadata": {
                "type": "object",
                "required": ["name", "labels"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
                    "labels": {"type": "object", "required": ["strimzi.io/cluster"]},
                },
            },
            "spec": {
                "type": "object",
                "required": ["partitions", "replicas", "config"],
                "additionalProperties": False,
                "properties": {
                    "topicName": {"type": "string", "pattern": "^[a-zA-Z0-9._-]{1,249}$"},
                    "partitions": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                    "config": {
                        "type": "object",
                        "required": ["cleanup.policy"],
                        "properties": {"cleanup.policy": {"enum": ["delete", "compact", "compact,delete"]}},
                    },
                },
            },
        },
    },
}

POD_KINDS = {"Deployment": ("spec", "template", "spec"), "Job": ("spec", "template", "spec"), "Pod": ("spec",)}
SERVICE_ENV = {
    "GRIDCHARGE_KAFKA_BOOTSTRAP",
    "GRIDCHARGE_REDIS_URL",
    "GRIDCHARGE_TOPOLOGY",
    "GRIDCHARGE_HTTP_PORT",
    "GRIDCHARGE_OPS_PORT",
    "GRIDCHARGE_LOG_LEVEL",
}


def _dig(d: dict[str, Any], path: Iterable[str]) -> Any:
    for k in path:
        d = d.get(k, {}) if isinstance(d, dict) else {}
    return d


def check_pod_policy(doc: dict[str, Any]) -> list[str]:
    """Restricted Pod Security Standard + our conventions, on one rendered workload."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    spec = _dig(doc, POD_KINDS[kind])
    psc = spec.get("securityContext", {})
    where = f"{kind}/{name}"
    problems: list[str] = []
    component = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        cw = f"{where} container {c['name']}"
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem must be true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{cw}: capabilities.drop must include ALL")
        if sc.get("privileged"):
            problems.append(f"{cw}: privileged")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problems.append(f"{cw}: runAsNonRoot must be true")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{cw}: seccompProfile must be RuntimeDefault")
        if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits", {}).get("memory"):
            problems.append(f"{cw}: resources.requests and limits.memory are required")
        image = c.get("image", "")
        if image.endswith(":latest") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
            problems.append(f"{cw}: image {image!r} must be pinned (tag or digest, not latest)")
        if kind == "Deployment":
            if "/tmp" not in {m["mountPath"] for m in c.get("volumeMounts", [])}:
                problems.append(f"{cw}: needs a writable /tmp (emptyDir) with a read-only root filesystem")
            for probe, path in (
                ("startupProbe", "/healthz"),
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
            ):
                if _dig(c, (probe, "httpGet", "path")) != path:
                    problems.append(f"{cw}: {probe} must GET {path}")
                if _dig(c, (probe, "httpGet", "port")) != "ops":
                    problems.append(f"{cw}: {probe} must use the ops port (the API port may be under attack)")
            env = {e["name"]: e for e in c.get("env", [])}
            missing = SERVICE_ENV - set(env)
            if missing:
                problems.append(f"{cw}: env missing {sorted(missing)}")
            if (
                component == "gateway"
                and _dig(env.get("GRIDCHARGE_REPLICA_ID", {}), ("valueFrom", "fieldRef", "fieldPath"))
                != "metadata.name"
            ):
                problems.append(f"{cw}: GRIDCHARGE_REPLICA_ID must come from the pod name (fieldRef)")
            if component == "forecasting" and "GRIDCHARGE_WEATHER_BASE_URL" not in env:
                problems.append(f"{cw}: GRIDCHARGE_WEATHER_BASE_URL missing")
    if kind == "Deployment" and component == "allocation":
        if doc["spec"].get("replicas") not in (0, 1):
            problems.append(f"{where}: allocation must run at most one replica (one allocator commands stations)")
        if doc["spec"].get("strategy", {}).get("type") != "Recreate":
            problems.append(f"{where}: allocation needs strategy Recreate (old and new allocator must not overlap)")
    return problems


def _container_ports(docs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """component -> {port name: containerPort} of the release's Deployments."""
    out: dict[str, dict[str, int]] = {}
    for d in docs:
        if d.get("kind") != "Deployment":
            continue
        component = d["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
        for c in _dig(d, POD_KINDS["Deployment"]).get("containers", []):
            for port in c.get("ports", []):
                out.setdefault(component, {})[port.get("name", "")] = port["containerPort"]
    return out


def check_exposure(docs: list[dict[str, Any]]) -> list[str]:
    """Only the OCPP port may leave the cluster: a LoadBalancer/NodePort Service (or one with externalIPs) and an
    Ingress may carry nothing else; the operator API and the ops port stay on ClusterIP Services."""
    problems: list[str] = []
    for d in docs:
        kind, name = d.get("kind"), d.get("metadata", {}).get("name")
        if kind == "Service":
            spec = d.get("spec", {})
            if spec.get("type") in ("LoadBalancer", "NodePort") or spec.get("externalIPs"):
                for port in spec.get("ports", []):
                    if port.get("name") != "ocpp" or port.get("targetPort") != "ocpp":
                        problems.append(
                            f"Service/{name} ({spec.get('type')}) exposes port {port.get('name')!r}: "
                            "only OCPP may be on an externally reachable Service"
                        )
        elif kind == "Ingress":
            for rule in d.get("spec", {}).get("rules", []):
                for path in rule.get("http", {}).get("paths", []):
                    port = _dig(path, ("backend", "service", "port"))
                    if port.get("name") != "ocpp":
                        problems.append(f"Ingress/{name} routes to port {port}: only OCPP may be exposed")
    return problems


def check_network_policies(docs: list[dict[str, Any]]) -> list[str]:
    """NetworkPolicies are on: a default deny for the release's pods, and per component no ingress rule without
    `from` except for the gateway's OCPP port (stations connect from anywhere)."""
    workloads = [d for d in docs if d.get("kind") == "Deployment"]
    if not workloads:
        return []
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    problems: list[str] = []
    deny = [
        p
        for p in policies
        if set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        and "app.kubernetes.io/component" not in p["spec"].get("podSelector", {}).get("matchLabels", {})
    ]
    if not deny:
        problems.append("no default-deny NetworkPolicy for the release's pods (networkPolicy.enabled must stay on)")
    ports = _container_ports(docs)
    for component, named in ports.items():
        mine = [
            p
            for p in policies
            if p["spec"].get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == component
        ]
        if not mine:
            problems.append(f"{component}: no NetworkPolicy selects its pods")
        open_ok = {named["ocpp"]} if "ocpp" in named else set()
        for p in mine:
            for rule in p["spec"].get("ingress", []):
                rule_ports = {port.get("port") for port in rule.get("ports", [])}
                if not rule.get("from") and (not rule_ports or rule_ports - open_ok):
                    problems.append(
                        f"NetworkPolicy/{p['metadata']['name']}: ports {sorted(rule_ports, key=str)} "
                        "open to everyone; only the OCPP port may be"
                    )
    return problems


def check_env_names(docs: list[dict[str, Any]]) -> list[str]:
    """Every GRIDCHARGE_* variable the chart sets is one gridcharge reads (GRIDCHARGE_DATA_DIR was read by
    nobody; the services now refuse misspelt names at start-up, so a bad name would stop the pod)."""
    from gridcharge.shared.config import known_env_vars

    known = known_env_vars()
    problems: list[str] = []
    for d in docs:
        if d.get("kind") not in POD_KINDS:
            continue
        for c in _dig(d, POD_KINDS[d["kind"]]).get("containers", []):
            for e in c.get("env", []):
                if e["name"].startswith("GRIDCHARGE_") and e["name"] not in known:
                    problems.append(
                        f"{d['kind']}/{d['metadata']['name']} container {c['name']}: "
                        f"{e['name']} is not a gridcharge setting"
                    )
    return problems


def check_env_parses(docs: list[dict[str, Any]]) -> list[str]:
    """The env the chart gives each service parses into that service's settings, as the pod would see it (all
    strings; Secret references stand in as placeholders): GRIDCHARGE_SECURITY_PROFILE "1" once stopped start-up."""
    from gridcharge.forecasting.settings import ForecastingSettings
    from gridcharge.gateway.config import GatewaySettings
    from gridcharge.shared.config import Settings
    from gridcharge.shared.errors import ConfigError
    from gridcharge.telemetry.settings import TelemetrySettings

    classes: dict[str, type[Settings]] = {
        "gateway": GatewaySettings,
        "telemetry": TelemetrySettings,
        "forecasting": ForecastingSettings,
        "allocation": Settings,
    }
    problems: list[str] = []
    for d in docs:
        component = d.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component", "")
        if d.get("kind") != "Deployment" or component not in classes:
            continue
        for c in _dig(d, POD_KINDS["Deployment"]).get("containers", []):
            env = {
                e["name"]: str(e["value"]) if "value" in e else "placeholder-from-" + next(iter(e["valueFrom"]))
                for e in c.get("env", [])
            }
            if env.get("GRIDCHARGE_REDIS_URL", "").startswith("placeholder"):
                env["GRIDCHARGE_REDIS_URL"] = "redis://redis:6379/0"
            try:
                classes[component].from_env(env)
            except ConfigError as exc:
                problems.append(f"Deployment/{d['metadata']['name']}: the service would not start: {exc}")
    return problems


def check_manifests(paths: list[Path], kube_version: str) -> list[str]:
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    problems: list[str] = []
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if not docs:
            problems.append(f"{path.name}: rendered nothing")
        kinds: dict[str, list[dict[str, Any]]] = {}
        for doc in docs:
            where = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            kinds.setdefault(doc.get("kind"), []).append(doc)
            if doc.get("kind") in CRD_SCHEMAS:
                # CRD kind: not in the Kubernetes schemas; checked against our minimal schema instead.
                try:
                    jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
                except jsonschema.ValidationError as e:
                    problems.append(f"{where}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
            else:
                try:
                    kubernetes_validate.validate(doc, kube_version, strict=True)
                except ValidationError as e:
                    problems.append(f"{where}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
                except SchemaNotFoundError as e:
                    problems.append(f"{where}: {e.message}")
            if doc.get("kind") in POD_KINDS:
                problems += [f"{path.name}: {p}" for p in check_pod_policy(doc)]
        for rule in kinds.get("PrometheusRule", []):
            if rule["spec"]["groups"] != load_alert_groups():
                problems.append(f"{path.name}: PrometheusRule groups differ from deploy/prometheus/alerts.yaml")
        problems += [
            f"{path.name}: {p}"
            for p in check_exposure(docs)
            + check_network_policies(docs)
            + check_env_names(docs)
            + check_env_parses(docs)
        ]
        names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
        dupes = {n for n in names if names.count(n) > 1}
        problems += [f"{path.name}: duplicate resource {d}" for d in sorted(dupes, key=str)]
        if kinds.get("HorizontalPodAutoscaler"):
            for dep in kinds.get("Deployment", []):
                targets = {h["spec"]["scaleTargetRef"]["name"] for h in kinds["HorizontalPodAutoscaler"]}
                if dep["metadata"]["name"] in targets and "replicas" in dep["spec"]:
                    problems.append(
                        f"{path.name}: Deployment/{dep['metadata']['name']} sets replicas although an HPA scales it"
                    )
    return problems


def check_topic_job_script(rendered: Path) -> list[str]:
    """Run the topic Job's shell script against stub kafka-topics.sh/kafka-configs.sh and check the calls.

    The stubs log their arguments and report 1 partition for every topic, so the partition warning path
    runs too. Needs bash only (no Kafka).
    """
    import subprocess
    import tempfile

    jobs = [d for d in yaml.safe_load_all(rendered.read_text()) if d and d.get("kind") == "Job"]
    if len(jobs) != 1:
        return [f"{rendered.name}: expected one topic Job, found {len(jobs)}"]
    container = jobs[0]["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    with tempfile.TemporaryDirectory() as tmp:
        stub_dir, calls = Path(tmp) / "bin", Path(tmp) / "calls.log"
        stub_dir.mkdir()
        for tool in ("kafka-topics.sh", "kafka-configs.sh"):
            stub = stub_dir / tool
            stub.write_text(
                "#!/bin/bash\n"
                f'echo "{tool} $*" >> "{calls}"\n'
                'if [[ " $* " == *" --describe "* ]]; then echo "Topic: x PartitionCount: 1"; fi\n'
            )
            stub.chmod(0o755)
        script = script.replace("bin=/opt/kafka/bin", f"bin={stub_dir}")
        if f"bin={stub_dir}" not in script:
            return ["topic Job script no longer sets bin=/opt/kafka/bin; update check_topic_job_script"]
        proc = subprocess.run(
            ["/bin/bash", "-ec", script],
            env={"PATH": "/usr/bin:/bin", "BOOTSTRAP": env.get("BOOTSTRAP", "")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            return [f"topic Job script failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"]
        log = calls.read_text().splitlines()
    problems: list[str] = []
    values = yaml.safe_load((CHART / "values.yaml").read_text())["kafkaTopics"]
    for name, t in chart_topics().items():
        creates = [c for c in log if c.startswith("kafka-topics.sh") and "--create" in c and f"--topic {name} " in c]
        alters = [c for c in log if c.startswith("kafka-configs.sh") and f"--entity-name {name} " in c]
        if len(creates) != 1 or len(alters) != 1:
            problems.append(f"topic Job: {name} created {len(creates)}x, configured {len(alters)}x")
            continue
        create = creates[0]
        if "--if-not-exists" not in create or f"--config cleanup.policy={t['cleanup']}" not in create:
            problems.append(f"topic Job: {name}: create call lacks --if-not-exists or cleanup.policy: {create}")
        if f"--replication-factor {values['replicationFactor']}" not in create:
            problems.append(f"topic Job: {name}: wrong replication factor: {create}")
        if t["cleanup"] == "delete" and f"retention.ms={t['retention_ms']}" not in alters[0]:
            problems.append(f"topic Job: {name}: retention not set: {alters[0]}")
    if "not changed" not in proc.stderr:
        problems.append("topic Job: a partition-count mismatch did not print the warning")
    return problems


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("static", help="metrics naming, dashboards, alert rules, chart copy of the rules")
    mp = sub.add_parser("manifests", help="validate rendered manifests offline")
    mp.add_argument("--kube-version", default="1.34.0")
    mp.add_argument("files", nargs="+", type=Path)
    jp = sub.add_parser("topic-job", help="run the rendered topic Job's script against stub Kafka CLIs")
    jp.add_argument("file", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "static":
        problems = check_static()
    elif args.cmd == "topic-job":
        problems = check_topic_job_script(args.file)
    else:
        problems = check_manifests(args.files, args.kube_version)
    for p in problems:
        print(f"  FAIL {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
