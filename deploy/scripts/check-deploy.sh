#!/usr/bin/env bash
# Offline checks of everything under Dockerfile, helm/, deploy/: no cluster, no container engine.
#
#   deploy/scripts/check-deploy.sh        (called by `make lint`)
#
# 1. tools: helm, promtool, hadolint, shellcheck, compose-check (deploy/scripts/install-k8s-tools.sh; cached)
# 2. hadolint Dockerfile
# 3. helm lint --strict, with the default values and every helm/gridcharge/ci/*.yaml
# 4. helm template for the same cases + cases that must FAIL (schema typos, unsafe values);
#    helm package, and the packaged chart still renders the PrometheusRule from files/alerts.yaml
# 5. rendered manifests: kubernetes-validate (strict) for built-in kinds, minimal schemas for the CRD
#    kinds ServiceMonitor, PrometheusRule, KafkaTopic, plus security/probe/env policy checks; exposure (only
#    OCPP on a LoadBalancer/NodePort/Ingress), NetworkPolicies on, every GRIDCHARGE_* name a real setting;
#    the topic Job's shell script run against stub kafka-topics.sh/kafka-configs.sh
# 6. promtool check rules + promtool test rules on deploy/prometheus/
# 7. dashboards, metric names, alert rules vs docs/metrics.md, chart copy of the rules, compose structure
# 8. chart README generated from values.yaml is up to date; shellcheck of these scripts
# Env: KUBE_VERSION (default 1.34.0), VENV (default <repo>/.venv), GRIDCHARGE_SKIP_HADOLINT=1.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 2
CHART=helm/gridcharge
KUBE_VERSION="${KUBE_VERSION:-1.34.0}"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/gridcharge-check-deploy.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT
T0=$SECONDS
failed=()

[[ -x "$PY" ]] || { echo "check-deploy: no python at $PY (run 'make install' or set VENV)" >&2; exit 2; }

# run NAME CMD...: runs a step, prints OK/FAIL and the step's output only on failure.
run() {
  local name="$1"; shift
  local log="$OUT/step.log" t=$SECONDS
  if "$@" >"$log" 2>&1; then
    printf '  ok    %-58s %3ss\n' "$name" $((SECONDS - t))
  else
    printf '  FAIL  %-58s %3ss\n' "$name" $((SECONDS - t))
    sed 's/^/        /' "$log" | tail -40
    failed+=("$name")
  fi
}
# must_fail NAME PATTERN CMD...: the command must fail and say PATTERN (a negative test).
must_fail() {
  local name="$1" pattern="$2"; shift 2
  local log="$OUT/neg.log"
  if "$@" >"$log" 2>&1; then
    printf '  FAIL  %-58s (was accepted)\n' "$name"; failed+=("$name")
  elif ! grep -qiE "$pattern" "$log"; then
    printf '  FAIL  %-58s (failed for another reason)\n' "$name"; sed 's/^/        /' "$log" | tail -5
    failed+=("$name")
  else
    printf '  ok    %-58s\n' "$name"
  fi
}

echo "== tools"
t=$SECONDS
if ! BIN="$(bash deploy/scripts/install-k8s-tools.sh 2>"$OUT/tools.log" | tail -1)"; then
  cat "$OUT/tools.log" >&2
  echo "check-deploy: FAILED to install helm/promtool (deploy/scripts/install-k8s-tools.sh)" >&2
  exit 2
fi
export PATH="$BIN:$PATH"
printf '  ok    %-58s %3ss\n' "helm $(helm version --template '{{.Version}}'), $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3)" $((SECONDS - t))

echo "== Dockerfile"
if [[ "${GRIDCHARGE_SKIP_HADOLINT:-0}" == 1 ]]; then
  echo "  skip  hadolint (GRIDCHARGE_SKIP_HADOLINT=1)"
else
  run "hadolint Dockerfile" hadolint Dockerfile
fi
dockerfile_conventions() {
  grep -q "^USER 10001" Dockerfile && grep -q "uv sync --frozen --no-dev" Dockerfile &&
    grep -q "^ARG PYTHON_IMAGE=python:3.11-slim" Dockerfile && grep -qF "FROM \${PYTHON_IMAGE} AS runtime" Dockerfile
}
run "Dockerfile: non-root 10001, slim runtime, uv sync --frozen" dockerfile_conventions

echo "== helm lint"
cases=("default:")
for f in "$CHART"/ci/*.yaml; do cases+=("$(basename "$f" .yaml):$f"); done
for c in "${cases[@]}"; do
  name="${c%%:*}" file="${c#*:}"
  run "helm lint --strict ($name)" helm lint --strict "$CHART" ${file:+-f "$file"} --kube-version "$KUBE_VERSION"
done

echo "== helm template"
render() { local out="$1"; shift; helm template gridcharge "$CHART" --namespace gridcharge --kube-version "$KUBE_VERSION" "$@" >"$out"; }
rendered=()
for c in "${cases[@]}"; do
  name="${c%%:*}" file="${c#*:}"
  run "helm template ($name)" render "$OUT/rendered-$name.yaml" ${file:+-f "$file"}
  rendered+=("$OUT/rendered-$name.yaml")
done
# OCPP exposed through a LoadBalancer (the documented way without an Ingress): the manifests step checks that
# only the OCPP port is on it and that the NetworkPolicies keep the operator API closed
run "helm template (gateway.service.type=LoadBalancer)" render "$OUT/rendered-loadbalancer.yaml" \
  --set gateway.service.type=LoadBalancer --set gateway.service.externalTrafficPolicy=Local
rendered+=("$OUT/rendered-loadbalancer.yaml")
tpl() { helm template gridcharge "$CHART" --kube-version "$KUBE_VERSION" "$@"; }
must_fail "rejects a top-level typo (gatway.replicaCount)" "additional properties" tpl --set gatway.replicaCount=2
must_fail "rejects a nested typo (gateway.autoscalling)" "additional properties" tpl --set gateway.autoscalling.enabled=false
must_fail "rejects a second allocator (allocation.replicaCount=2)" "allocation/replicaCount" tpl --set allocation.replicaCount=2
must_fail "rejects ingress timeout <= OCPP heartbeat" "longer than the OCPP heartbeat" \
  tpl --set ingress.enabled=true --set ingress.websocketTimeoutSeconds=60
must_fail "rejects Strimzi topics and topic Job together" "alternatives" \
  tpl --set kafkaTopics.strimzi.enabled=true --set kafkaTopics.job.enabled=true
must_fail "rejects min.insync.replicas > replication" "must not exceed" tpl --set kafkaTopics.minInsyncReplicas=4
must_fail "rejects a delete topic without retention" "retentionMs" \
  tpl --set-json 'kafkaTopics.topics=[{"name":"x.v1","key":"k","scope":"node","cleanupPolicy":"delete"}]'

must_fail "rejects a plain station password (hashes only)" "pbkdf2_sha256" \
  tpl --set stationCredentials.stations.CP1=plain-password
must_fail "rejects an API token entry that is not a SHA-256 digest" "sha256" \
  tpl --set-json 'apiAuth.tokens={"ui":{"role":"operator","sha256":"abc"}}'
must_fail "rejects an unknown API role" "role" \
  tpl --set-json 'apiAuth.tokens={"ui":{"role":"admin","sha256":"'"$(printf '0%.0s' {1..64})"'"}}'
must_fail "rejects a plain-http JWKS URL" "jwksUrl" tpl --set apiAuth.oidc.jwksUrl=http://idp.example/jwks
must_fail "rejects an OIDC issuer without audience/JWKS" "needs apiAuth.oidc.audience" \
  tpl --set apiAuth.oidc.issuer=https://idp.example
must_fail "rejects a symmetric OIDC algorithm" "algorithms" tpl --set apiAuth.oidc.algorithms=HS256
must_fail "rejects the OpenADR VEN without a VTN URL" "gridsignals.vtnUrl is required" \
  tpl --set gridsignals.enabled=true
must_fail "rejects the OpenADR VEN without its credentials Secret" "credentials.existingSecret is required" \
  tpl --set gridsignals.enabled=true --set gridsignals.vtnUrl=https://vtn.example
must_fail "rejects the OpenADR VEN without a node map" "nodeMap is required" \
  tpl --set gridsignals.enabled=true --set gridsignals.vtnUrl=https://vtn.example \
  --set gridsignals.credentials.existingSecret=ven
must_fail "rejects credentials in the VTN URL" "vtnUrl" \
  tpl -f "$CHART/ci/gridsignals-values.yaml" --set gridsignals.vtnUrl=https://ven:secret@vtn.example
must_fail "rejects a VEN fallback time not above its poll time" "longer than gridsignals.pollSeconds" \
  tpl -f "$CHART/ci/gridsignals-values.yaml" --set gridsignals.fallbackAfterSeconds=60
must_fail "rejects upstream profile 3 without client certificates" "needs gateway.upstream.clientCertsSecret" \
  tpl --set gateway.upstream.url=wss://csms.example/ocpp --set gateway.upstream.securityProfile=3
must_fail "rejects an upstream profile below the stations'" "below the stations' security profile" \
  tpl --set gateway.upstream.url=ws://csms.example/ocpp --set gateway.upstream.securityProfile=1 \
  --set gateway.terminateTLS=true --set tls.enabled=true --set tls.existingSecret=t \
  --set stationCredentials.existingSecret=s

packaged_rule_renders() {
  helm package "$CHART" -d "$OUT/pkg" >/dev/null &&
    tar -tzf "$OUT"/pkg/gridcharge-*.tgz | grep -q "gridcharge/files/alerts.yaml" &&
    ! tar -tzf "$OUT"/pkg/gridcharge-*.tgz | grep -q "README.tmpl.md" &&
    helm template gridcharge "$OUT"/pkg/gridcharge-*.tgz --kube-version "$KUBE_VERSION" \
      --set monitoring.prometheusRule.enabled=true | grep -q "alert: GridchargeNoAllocator"
}
run "helm package; packaged chart renders the PrometheusRule" packaged_rule_renders

echo "== manifests (kubernetes $KUBE_VERSION, strict; CRD kinds against minimal schemas)"
run "kubernetes-validate + policy (${#rendered[@]} renders)" \
  "$PY" deploy/scripts/deploy_checks.py manifests --kube-version "$KUBE_VERSION" "${rendered[@]}"

run "topic Job script against stub Kafka CLIs" \
  "$PY" deploy/scripts/deploy_checks.py topic-job "$OUT/rendered-topics-job-values.yaml"

echo "== prometheus rules"
run "promtool check rules deploy/prometheus/alerts.yaml" promtool check rules deploy/prometheus/alerts.yaml
run "promtool test rules deploy/prometheus/alerts.test.yaml" promtool test rules deploy/prometheus/alerts.test.yaml

echo "== compose"
run "deploy/compose.yaml against the Compose spec (compose-go)" compose-check deploy/compose.yaml

echo "== dashboards, metrics, rules, compose"
run "deploy_checks static" "$PY" deploy/scripts/deploy_checks.py static

echo "== chart README"
run "helm/gridcharge/README.md up to date" "$PY" deploy/scripts/chart_readme.py --check

if command -v shellcheck >/dev/null; then
  run "shellcheck deploy/scripts/*.sh" shellcheck deploy/scripts/check-deploy.sh deploy/scripts/install-k8s-tools.sh
fi

echo
if ((${#failed[@]})); then
  echo "check-deploy: FAILED (${#failed[@]}) in $((SECONDS - T0))s:" >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "check-deploy: all checks passed in $((SECONDS - T0))s"
