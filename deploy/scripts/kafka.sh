#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker + controller) for development and tests.
#
#   deploy/scripts/kafka.sh start [--fresh]   start on 127.0.0.1:$KAFKA_PORT (reuse a broker already up)
#   deploy/scripts/kafka.sh stop              stop the broker this script started (no-op if none)
#   deploy/scripts/kafka.sh restart [--fresh] stop + start; keeps the data unless --fresh
#   deploy/scripts/kafka.sh status            exit 0 if a broker serves metadata on the port
#
# The broker comes from Maven Central through Maven (deploy/local-kafka/pom.xml), copied once into
# $GRIDCHARGE_CACHE/kafka-<version>/libs (default ~/.cache/gridcharge); nothing is written into the repo.
# Runtime files live in $GRIDCHARGE_RUN_DIR (default ~/.cache/gridcharge/run):
#   kafka.pid, kafka.log (broker log), kafka.out (JVM stdout/stderr), kafka/ (config + data),
#   kafka.started-by-us (written only when `start` really started a new broker; removed by `stop`).
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_START_TIMEOUT (120 s),
#   KAFKA_HEAP_OPTS ("-Xms256m -Xmx768m"), JAVA (java on PATH), MVN (mvn on PATH),
#   GRIDCHARGE_CACHE, GRIDCHARGE_RUN_DIR.
set -euo pipefail

PROG="kafka.sh"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
KAFKA_SRC="$REPO_ROOT/deploy/local-kafka"
POM="$KAFKA_SRC/pom.xml"

# shellcheck source=deploy/scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"   # HOME, RUN_DIR, say/warn/die, port_open, proc_alive, pid_of_ours, lock

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n 1)"
CACHE_ROOT="${GRIDCHARGE_CACHE:-$HOME/.cache/gridcharge}"
CACHE="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS="$CACHE/libs"
LIBS_STAMP="$LIBS/.gridcharge-complete"
STATE_DIR="$RUN_DIR/kafka"
DATA_DIR="$STATE_DIR/data"
CONFIG="$STATE_DIR/server.properties"
TOOLS_CONFIG="$STATE_DIR/admin-client.properties"
PID_FILE="$RUN_DIR/kafka.pid"
LOG_FILE="$RUN_DIR/kafka.log"
OUT_FILE="$RUN_DIR/kafka.out"
MARKER="$RUN_DIR/kafka.started-by-us"
LOCK_FILE="$RUN_DIR/kafka.lock"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
STOP_TIMEOUT=30
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"

usage() {
  echo "usage: $PROG {start|stop|restart|status} [--fresh]   (see the header of ${BASH_SOURCE[0]})" >&2
  exit 2
}

[[ -n "$KAFKA_VERSION" ]] || die "cannot read <kafka.version> from $POM"
for p in KAFKA_PORT KAFKA_CONTROLLER_PORT START_TIMEOUT; do
  [[ "${!p}" =~ ^[0-9]+$ ]] || die "$p must be a number, got '${!p}'"
done
[[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"

# ---------------------------------------------------------------- prerequisites

apt_install() {
  # apt_install PKG...: only as root on a Debian-like machine; `apt-get update` only if needed.
  command -v apt-get >/dev/null 2>&1 || return 1
  [[ "$(id -u)" == 0 ]] || return 1
  say "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  apt-get update -q >/dev/null 2>&1 || true
  apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

java_major() {
  local v
  v="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)"
  v="${v#1.}"
  echo "${v%%[.+-]*}"
}

ensure_java() {
  if ! command -v "$JAVA" >/dev/null 2>&1; then
    apt_install default-jre-headless ||
      die "no Java found ('$JAVA'); install Java 17+ (Debian: apt-get install default-jre-headless) or set JAVA"
  fi
  local major
  major="$(java_major)"
  [[ "$major" =~ ^[0-9]+$ ]] || die "cannot tell the version of '$JAVA' ($("$JAVA" -version 2>&1 | head -n 1))"
  ((major >= 17)) || die "Kafka $KAFKA_VERSION needs Java 17+, '$JAVA' is Java $major (set JAVA to a newer one)"
}

ensure_maven() {
  command -v "$MVN" >/dev/null 2>&1 && return 0
  apt_install maven || die "Maven not found ('$MVN'); install it (Debian: apt-get install maven) or set MVN"
}

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

libs_ready() { [[ -f "$LIBS_STAMP" && "$(cat "$LIBS_STAMP")" == "$(pom_hash)" ]]; }

ensure_libs() {
  libs_ready && return 0
  ensure_maven
  mkdir -p "$CACHE"
  local tmp="$CACHE/libs.tmp.$$" mvn_log="$CACHE/maven.log" t0=$SECONDS
  rm -rf "$tmp"
  say "fetching Kafka $KAFKA_VERSION with Maven into $LIBS (once; log: $mvn_log)"
  if ! "$MVN" -q -B -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvn_log" 2>&1; then
    rm -rf "$tmp"
    tail -n 30 "$mvn_log" >&2 || true
    die "Maven could not fetch Kafka $KAFKA_VERSION (full log: $mvn_log)"
  fi
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "Maven ran but no kafka_2.13 jar landed in $tmp"
  pom_hash >"$tmp/.gridcharge-complete"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  say "Kafka $KAFKA_VERSION fetched ($(find "$LIBS" -name "*.jar" | wc -l) jars, $((SECONDS - t0)) s)"
}

# ---------------------------------------------------------------- helpers

# A short-lived JVM running one of Kafka's own CLI classes (quiet logging, fast startup).
TOOL_JVM_OPTS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true)
kafka_tool() {
  "$JAVA" "${TOOL_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$KAFKA_SRC/tools-log4j2.xml" -cp "$LIBS/*" "$@"
}

write_tools_config() {
  mkdir -p "$STATE_DIR"
  cat >"$TOOLS_CONFIG" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=10000
socket.connection.setup.timeout.ms=2000
socket.connection.setup.timeout.max.ms=2000
EOF
}

# A broker serves metadata on the port (Kafka's own TopicCommand --list asks for it).
broker_ready() {
  port_open "$KAFKA_PORT" || return 1
  [[ -f "$TOOLS_CONFIG" ]] || write_tools_config
  timeout 30 "$JAVA" "${TOOL_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$KAFKA_SRC/tools-log4j2.xml" \
    -cp "$LIBS/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list \
    --command-config "$TOOLS_CONFIG" >/dev/null 2>&1
}

is_our_broker() {
  local pid="$1"
  proc_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "kafka.Kafka $CONFIG"
}

# The pid of the broker started from this run dir: the pid file, else a scan of /proc.
broker_pid() {
  local pid
  pid="$(pid_of_ours "$PID_FILE" "kafka.Kafka" is_our_broker)" || return 1
  [[ "$(cat "$PID_FILE" 2>/dev/null || true)" == "$pid" ]] || echo "$pid" >"$PID_FILE"
  echo "$pid"
}

LOG_MARK=0  # lines kafka.log had before this start: show only what the new broker wrote
show_logs() {
  if [[ -s "$OUT_FILE" ]]; then
    echo "----- last lines of $OUT_FILE -----" >&2
    tail -n 20 "$OUT_FILE" >&2
  fi
  if [[ -s "$LOG_FILE" ]]; then
    local from=$((LOG_MARK + 1))
    (($(wc -l <"$LOG_FILE") >= LOG_MARK)) || from=1
    echo "----- last lines of $LOG_FILE -----" >&2
    tail -n "+$from" "$LOG_FILE" | tail -n 40 >&2
  fi
}

render_config() {
  mkdir -p "$STATE_DIR" "$DATA_DIR"
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
      -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
      -e "s|@KAFKA_DATA_DIR@|$DATA_DIR|g" \
      "$KAFKA_SRC/server.properties" >"$CONFIG"
  # the broker keeps its own copy of the log config: it must not depend on the checkout staying put
  cp "$KAFKA_SRC/log4j2.xml" "$STATE_DIR/log4j2.xml"
  write_tools_config
}

format_storage() {
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    return 0
  fi
  local cluster_id
  cluster_id="$(kafka_tool kafka.tools.StorageTool random-uuid)" || die "could not generate a cluster id"
  say "formatting $DATA_DIR (cluster id $cluster_id)"
  kafka_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$CONFIG" --ignore-formatted >/dev/null ||
    die "kafka.tools.StorageTool format failed for $DATA_DIR"
  echo "$cluster_id" >"$STATE_DIR/cluster.id"
}

# ---------------------------------------------------------------- commands

wait_ready() {
  # wait_ready PID: until the broker serves metadata; on failure show logs, stop it, fail
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! proc_alive "$pid"; then
      show_logs
      rm -f "$PID_FILE"
      die "Kafka exited during startup (logs above; $LOG_FILE, $OUT_FILE)"
    fi
    # cheap port poll first; the JVM-based metadata check only once the listener is up
    if port_open "$KAFKA_PORT"; then
      broker_ready && return 0
      sleep 0.5
    else
      sleep 0.25
    fi
  done
  show_logs
  warn "Kafka did not serve metadata on 127.0.0.1:$KAFKA_PORT within ${START_TIMEOUT}s; stopping it"
  do_stop >&2 || true
  die "Kafka start timed out (logs above; $LOG_FILE)"
}

do_start() {
  local fresh="$1" pid t0=$SECONDS
  mkdir -p "$RUN_DIR"
  ensure_java
  ensure_libs

  if pid="$(broker_pid)"; then
    local running_port
    running_port="$(sed -n 's|^listeners=PLAINTEXT://[^:]*:\([0-9]*\).*|\1|p' "$CONFIG" 2>/dev/null || true)"
    if [[ -n "$running_port" && "$running_port" != "$KAFKA_PORT" ]]; then
      die "the broker of $RUN_DIR (pid $pid) listens on port $running_port, not $KAFKA_PORT;" \
        "stop it first or use another GRIDCHARGE_RUN_DIR"
    fi
    if [[ "$fresh" == 1 ]]; then
      say "--fresh: stopping the running broker (pid $pid) to wipe its data"
      do_stop
    else
      if ! broker_ready; then
        say "broker pid $pid is starting; waiting for it"
        wait_ready "$pid"
      fi
      say "already running: broker pid $pid on 127.0.0.1:$KAFKA_PORT (reused, not started now)"
      return 0
    fi
  fi

  if port_open "$KAFKA_PORT"; then
    if broker_ready; then
      [[ "$fresh" == 1 ]] &&
        die "--fresh: a broker not started by this script answers on 127.0.0.1:$KAFKA_PORT; stop it first"
      say "already running: a Kafka broker answers on 127.0.0.1:$KAFKA_PORT (not started by this script; reused)"
      return 0
    fi
    die "port 127.0.0.1:$KAFKA_PORT is in use by something that is not a Kafka broker (set KAFKA_PORT)"
  fi
  if port_open "$KAFKA_CONTROLLER_PORT"; then
    die "controller port 127.0.0.1:$KAFKA_CONTROLLER_PORT is already in use (set KAFKA_CONTROLLER_PORT)"
  fi

  if [[ "$fresh" == 1 ]]; then
    say "--fresh: wiping $DATA_DIR"
    rm -rf "$DATA_DIR"
  fi
  render_config
  format_storage

  rm -f "$MARKER"
  LOG_MARK="$( (wc -l <"$LOG_FILE") 2>/dev/null || echo 0)"
  {
    echo "===== $(date -u '+%Y-%m-%dT%H:%M:%SZ') starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT"
  } >>"$OUT_FILE"
  # setsid: the broker outlives this shell and is not hit by signals sent to the caller's process group
  # shellcheck disable=SC2086
  nohup setsid "$JAVA" $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dkafka.logs.dir="$RUN_DIR" -Dlog4j2.configurationFile="$STATE_DIR/log4j2.xml" \
    -cp "$LIBS/*" kafka.Kafka "$CONFIG" >>"$OUT_FILE" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"
  wait_ready "$pid"
  {
    echo "pid=$pid"
    echo "port=$KAFKA_PORT"
    echo "controller_port=$KAFKA_CONTROLLER_PORT"
    echo "started_at=$(date -u '+%Y-%m-%dT%H:%M:%SZ')"
  } >"$MARKER"
  say "started Kafka $KAFKA_VERSION: pid $pid, bootstrap 127.0.0.1:$KAFKA_PORT, ready in $((SECONDS - t0)) s"
  say "wrote $MARKER (log: $LOG_FILE)"
}

do_stop() {
  local pid
  if ! pid="$(broker_pid)"; then
    rm -f "$PID_FILE" "$MARKER"
    if port_open "$KAFKA_PORT"; then
      say "not running from $RUN_DIR (something else answers on 127.0.0.1:$KAFKA_PORT: left alone)"
    else
      say "not running"
    fi
    return 0
  fi
  say "stopping Kafka pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while proc_alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.5
  done
  if proc_alive "$pid"; then
    warn "Kafka pid $pid still up after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while proc_alive "$pid" && ((SECONDS < deadline)); do
      sleep 0.2
    done
    proc_alive "$pid" && die "could not kill Kafka pid $pid"
  fi
  # the listeners close with the process; wait briefly so an immediate start can bind again
  deadline=$((SECONDS + 10))
  while port_open "$KAFKA_PORT" && ((SECONDS < deadline)); do
    sleep 0.2
  done
  rm -f "$PID_FILE" "$MARKER"
  say "stopped"
}

do_status() {
  local pid
  if pid="$(broker_pid)"; then
    if libs_ready && broker_ready; then
      say "running: pid $pid, bootstrap 127.0.0.1:$KAFKA_PORT"
      return 0
    fi
    say "pid $pid is alive but does not serve metadata on 127.0.0.1:$KAFKA_PORT (starting or stuck; log: $LOG_FILE)"
    return 1
  fi
  if port_open "$KAFKA_PORT"; then
    if ! libs_ready || broker_ready; then
      say "running: something answers on 127.0.0.1:$KAFKA_PORT (not started by this script)"
      return 0
    fi
    say "127.0.0.1:$KAFKA_PORT is open but is not a Kafka broker"
    return 1
  fi
  say "not running"
  return 1
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
fresh=0
for arg in "$@"; do
  case "$arg" in
    --fresh) fresh=1 ;;
    -h | --help) usage ;;
    *) die "unknown argument '$arg' (usage: $PROG {start|stop|restart|status} [--fresh])" ;;
  esac
done

case "$cmd" in
  start) lock "$LOCK_FILE" 300; do_start "$fresh" ;;
  stop) lock "$LOCK_FILE" 300; do_stop ;;
  restart) lock "$LOCK_FILE" 300; do_stop; do_start "$fresh" ;;
  status) do_status ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
