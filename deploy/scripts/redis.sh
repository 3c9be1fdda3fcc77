#!/usr/bin/env bash
# Local Redis for development and tests (Debian's redis-server, no persistence, loopback only).
#
#   deploy/scripts/redis.sh start     start on 127.0.0.1:$REDIS_PORT (reuse a Redis already answering PING)
#   deploy/scripts/redis.sh stop      stop the Redis this script started (no-op if none)
#   deploy/scripts/redis.sh restart   stop + start (the data is gone: there is no persistence)
#   deploy/scripts/redis.sh status    exit 0 if a Redis answers PING on the port
#
# redis-server comes from apt (`apt-get install redis-server`, as root) when it is not installed;
# `apt-get update` runs only if that install fails without it. systemd is not used: the binary is
# started directly as a daemon. Runtime files live in $GRIDCHARGE_RUN_DIR (default ~/.cache/gridcharge/run):
#   redis.pid, redis.log, redis/ (config + working dir),
#   redis.started-by-us (written only when `start` really started a new server; removed by `stop`).
#
# Environment: REDIS_PORT (6379), REDIS_START_TIMEOUT (30 s), GRIDCHARGE_RUN_DIR.
set -euo pipefail

PROG="redis.sh"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"   # HOME, RUN_DIR, say/warn/die, port_open, proc_alive, pid_of_ours, lock

STATE_DIR="$RUN_DIR/redis"
CONF="$STATE_DIR/redis.conf"
PID_FILE="$RUN_DIR/redis.pid"
LOG_FILE="$RUN_DIR/redis.log"
OUT_FILE="$RUN_DIR/redis.out"
MARKER="$RUN_DIR/redis.started-by-us"
LOCK_FILE="$RUN_DIR/redis.lock"
REDIS_PORT="${REDIS_PORT:-6379}"
START_TIMEOUT="${REDIS_START_TIMEOUT:-30}"
STOP_TIMEOUT=30

usage() {
  echo "usage: $PROG {start|stop|restart|status}   (see the header of ${BASH_SOURCE[0]})" >&2
  exit 2
}

for p in REDIS_PORT START_TIMEOUT; do
  [[ "${!p}" =~ ^[0-9]+$ ]] || die "$p must be a number, got '${!p}'"
done

# ---------------------------------------------------------------- prerequisites

apt_install() {
  # apt_install PKG...: only as root on a Debian-like machine; `apt-get update` only if needed.
  command -v apt-get >/dev/null 2>&1 || return 1
  [[ "$(id -u)" == 0 ]] || return 1
  say "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  say "apt-get install failed; running apt-get update and retrying"
  apt-get update -q >/dev/null 2>&1 || true
  apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

ensure_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return 0
  fi
  apt_install redis-server redis-tools ||
    die "redis-server/redis-cli not found and could not be installed (Debian: apt-get install redis-server, as root)"
  command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get install"
}

# ---------------------------------------------------------------- helpers

pong() {
  command -v redis-cli >/dev/null 2>&1 || return 1
  [[ "$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

# A redis-server whose working dir is ours (a system Redis on the same port is never touched).
is_our_redis() {
  local pid="$1"
  proc_alive "$pid" || return 1
  # redis-server sets its title to "redis-server 127.0.0.1:PORT"
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "redis-server.*:$REDIS_PORT\b" || return 1
  [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$STATE_DIR" ]]
}

redis_pid() { pid_of_ours "$PID_FILE" "redis-server" is_our_redis; }

show_logs() {
  local f
  for f in "$OUT_FILE" "$LOG_FILE"; do
    if [[ -s "$f" ]]; then
      echo "----- last lines of $f -----" >&2
      tail -n 25 "$f" >&2
    fi
  done
}

write_conf() {
  mkdir -p "$STATE_DIR"
  cat >"$CONF" <<EOF
# written by deploy/scripts/redis.sh: local Redis for development and tests
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
supervised no
pidfile $PID_FILE
logfile $LOG_FILE
loglevel notice
dir $STATE_DIR
# no persistence: nothing is saved, nothing is loaded
save ""
appendonly no
databases 16
EOF
}

# ---------------------------------------------------------------- commands

do_start() {
  local pid t0=$SECONDS
  mkdir -p "$RUN_DIR"
  ensure_redis

  if pid="$(redis_pid)"; then
    local deadline=$((SECONDS + START_TIMEOUT))
    until pong || ((SECONDS >= deadline)); do sleep 0.2; done
    pong || die "redis-server pid $pid is up but does not answer PING on 127.0.0.1:$REDIS_PORT (log: $LOG_FILE)"
    say "already running: redis-server pid $pid on 127.0.0.1:$REDIS_PORT (reused, not started now)"
    return 0
  fi
  if port_open "$REDIS_PORT"; then
    if pong; then
      say "already running: a Redis answers on 127.0.0.1:$REDIS_PORT (not started by this script; reused)"
      return 0
    fi
    die "port 127.0.0.1:$REDIS_PORT is in use by something that does not answer Redis PING (set REDIS_PORT)"
  fi

  write_conf
  rm -f "$MARKER" "$PID_FILE"
  echo "===== $(date -u '+%Y-%m-%dT%H:%M:%SZ') starting redis-server on 127.0.0.1:$REDIS_PORT" >>"$OUT_FILE"
  # daemonize yes: redis-server forks, writes $PID_FILE and returns; config errors land in $OUT_FILE
  if ! (cd "$STATE_DIR" && redis-server "$CONF" >>"$OUT_FILE" 2>&1 </dev/null 9>&-); then
    show_logs
    die "redis-server failed to start (logs above)"
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until pong; do
    if ((SECONDS >= deadline)); then
      show_logs
      if pid="$(redis_pid)"; then kill -KILL "$pid" 2>/dev/null || true; fi
      rm -f "$PID_FILE"
      die "redis-server did not answer PING on 127.0.0.1:$REDIS_PORT within ${START_TIMEOUT}s (logs above)"
    fi
    if ((SECONDS - t0 > 2)) && ! redis_pid >/dev/null; then
      show_logs
      die "redis-server exited during startup (logs above; $LOG_FILE)"
    fi
    sleep 0.1
  done
  pid="$(redis_pid)" || die "redis-server answers PING but its pid was not found (pid file $PID_FILE)"
  echo "$pid" >"$PID_FILE"
  {
    echo "pid=$pid"
    echo "port=$REDIS_PORT"
    echo "started_at=$(date -u '+%Y-%m-%dT%H:%M:%SZ')"
  } >"$MARKER"
  say "started redis-server $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'): pid $pid, redis://127.0.0.1:$REDIS_PORT/0, ready in $((SECONDS - t0)) s"
  say "wrote $MARKER (log: $LOG_FILE)"
}

do_stop() {
  local pid
  if ! pid="$(redis_pid)"; then
    rm -f "$PID_FILE" "$MARKER"
    if port_open "$REDIS_PORT"; then
      say "not running from $RUN_DIR (something else answers on 127.0.0.1:$REDIS_PORT: left alone)"
    else
      say "not running"
    fi
    return 0
  fi
  say "stopping redis-server pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while proc_alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.1
  done
  if proc_alive "$pid"; then
    warn "redis-server pid $pid still up after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while proc_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    proc_alive "$pid" && die "could not kill redis-server pid $pid"
  fi
  rm -f "$PID_FILE" "$MARKER"
  say "stopped"
}

do_status() {
  local pid
  if pong; then
    if pid="$(redis_pid)"; then
      say "running: pid $pid, redis://127.0.0.1:$REDIS_PORT/0"
    else
      say "running: a Redis answers on 127.0.0.1:$REDIS_PORT (not started by this script)"
    fi
    return 0
  fi
  if pid="$(redis_pid)"; then
    say "redis-server pid $pid is alive but does not answer PING on 127.0.0.1:$REDIS_PORT (log: $LOG_FILE)"
  else
    say "not running"
  fi
  return 1
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
[[ $# -eq 0 ]] || die "unexpected argument '$1' (usage: $PROG {start|stop|restart|status})"

case "$cmd" in
  start) lock "$LOCK_FILE" 120; do_start ;;
  stop) lock "$LOCK_FILE" 120; do_stop ;;
  restart) lock "$LOCK_FILE" 120; do_stop; do_start ;;
  status) do_status ;;
  *) usage ;;
esac
