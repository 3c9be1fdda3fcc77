#!/usr/bin/env bash
# `make up` / `make down`: the distributed cluster on this machine, each service its own process, on the
# real Kafka and Redis (the Makefile runs `make kafka redis` first), with the simulator's stations
# connecting to the gateway over OCPP.
#
#   deploy/scripts/up.sh [start]   start gateway, telemetry, forecasting, allocation and the simulator
#   deploy/scripts/up.sh stop      stop what `start` started (SIGTERM, then SIGKILL after 15 s)
#   deploy/scripts/up.sh status    list the processes and their ports
#
# Runtime files live in $UP_RUN_DIR (default ~/.cache/gridcharge/run/up): <name>.pid, <name>.log,
# topology.yaml (the scenario's topology), report/ (the simulator's report, written when it stops),
# api-token (an operator bearer token for the services' APIs, generated once, mode 600).
# Environment: SCENARIO (office), UP_DURATION (scenario length, default the scenario's own),
# GRIDCHARGE_TOPIC_PREFIX / GRIDCHARGE_STORE_PREFIX (default "up." / "up:" so runs never mix with tests),
# OCPP_PORT (9000), WEATHER_PORT (8090: the simulator serves the scenario's forecast weather there),
# UP_HTTP_PORT_BASE (8080): gateway HTTP 8080, telemetry 8081, forecasting 8082, allocation 8083 (DEVELOPING.md).
set -euo pipefail

PROG="up.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="$ROOT/.venv/bin/python"
if [[ -z "${HOME:-}" ]]; then
  HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
  export HOME
fi
RUN="${UP_RUN_DIR:-$HOME/.cache/gridcharge/run/up}"
SCENARIO="${SCENARIO:-office}"
OCPP_PORT="${OCPP_PORT:-9000}"
WEATHER_PORT="${WEATHER_PORT:-8090}"
SERVICES=(gateway telemetry forecasting allocation)
HTTP_BASE="${UP_HTTP_PORT_BASE:-8080}"
declare -A HTTP_PORT=([gateway]=$((HTTP_BASE)) [telemetry]=$((HTTP_BASE + 1)) [forecasting]=$((HTTP_BASE + 2))
                      [allocation]=$((HTTP_BASE + 3)))

say() { echo "$PROG: $*"; }
die() { echo "$PROG: error: $*" >&2; exit 1; }

alive() {  # alive NAME: the pid file names a running process
  local f="$RUN/$1.pid"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

launch() {  # launch NAME CMD...: start in the background with its own log and pid file
  local name="$1"; shift
  if alive "$name"; then
    say "$name already running (pid $(cat "$RUN/$name.pid"))"
    return
  fi
  nohup "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  say "$name started (pid $!, log $RUN/$name.log)"
}

wait_port() {  # wait_port PORT SECONDS
  local port="$1" deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.3
  done
  return 1
}

start() {
  [[ -x "$PY" ]] || die "no .venv: run 'make install' first"
  mkdir -p "$RUN"
  "$PY" -m gridcharge.simulator --scenario "$SCENARIO" --write-topology "$RUN/topology.yaml" \
    || die "cannot load scenario '$SCENARIO'"
  export GRIDCHARGE_BUS=kafka
  export GRIDCHARGE_TOPOLOGY="$RUN/topology.yaml"
  export GRIDCHARGE_TOPIC_PREFIX="${GRIDCHARGE_TOPIC_PREFIX:-up.}"
  export GRIDCHARGE_STORE_PREFIX="${GRIDCHARGE_STORE_PREFIX:-up:}"
  export GRIDCHARGE_OCPP_PORT="$OCPP_PORT"
  export GRIDCHARGE_WEATHER_BASE_URL="http://127.0.0.1:$WEATHER_PORT"
  export GRIDCHARGE_LOG_JSON="${GRIDCHARGE_LOG_JSON:-true}"
  # the operator APIs refuse changes without credentials: one generated operator token for this cluster
  if [[ ! -s "$RUN/api-token" ]]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$RUN/api-token")
  fi
  export GRIDCHARGE_API_TOKENS="up:operator:$(cat "$RUN/api-token")"
  local sim_args=(--scenario "$SCENARIO" --gateway "ws://127.0.0.1:$OCPP_PORT/ocpp" --bus kafka
                  --serve-weather "$WEATHER_PORT" --out "$RUN/report")
  if [[ -n "${UP_DURATION:-}" ]]; then sim_args+=(--duration "$UP_DURATION"); fi
  # the simulator first: it serves the weather the forecaster fetches; its stations retry until the gateway is up
  launch simulator "$PY" -m gridcharge.simulator "${sim_args[@]}"
  wait_port "$WEATHER_PORT" 60 || die "simulator did not come up (see $RUN/simulator.log)"
  for svc in "${SERVICES[@]}"; do
    GRIDCHARGE_HTTP_PORT="${HTTP_PORT[$svc]}" GRIDCHARGE_REPLICA_ID="$svc-0" launch "$svc" "$PY" -m "gridcharge.$svc"
  done
  wait_port "$OCPP_PORT" 60 || die "gateway did not open port $OCPP_PORT (see $RUN/gateway.log)"
  say "up: OCPP ws://127.0.0.1:$OCPP_PORT/ocpp/{station_id}, metrics on :$HTTP_BASE-$((HTTP_BASE + 3))/metrics, logs in $RUN"
  say "operator API token in $RUN/api-token: curl -H \"Authorization: Bearer \$(cat $RUN/api-token)\" ..."
  say "stop with 'make down' (the simulator writes its report to $RUN/report when it stops)"
}

stop() {
  local name pid
  for name in simulator "${SERVICES[@]}"; do
    [[ -f "$RUN/$name.pid" ]] || continue
    pid="$(cat "$RUN/$name.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
      say "$name stopped (pid $pid)"
    fi
    rm -f "$RUN/$name.pid"
  done
}

status() {
  local name rc=0
  for name in simulator "${SERVICES[@]}"; do
    if alive "$name"; then say "$name running (pid $(cat "$RUN/$name.pid"))"; else say "$name not running"; rc=3; fi
  done
  return $rc
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $PROG [start|stop|status]" ;;
esac
