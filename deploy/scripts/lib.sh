# shellcheck shell=bash
# Shared by deploy/scripts/kafka.sh and deploy/scripts/redis.sh (sourced, not run). The caller sets PROG first.
#
#   HOME      filled in from the passwd database when unset (cron, systemd, `env -i`)
#   RUN_DIR   $GRIDCHARGE_RUN_DIR, default ~/.cache/gridcharge/run: pid files, logs, locks, state
#   say/warn/die, port_open, proc_alive, pid_of_ours, lock

if [[ -z "${HOME:-}" ]]; then
  HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
  export HOME
fi

RUN_DIR="${GRIDCHARGE_RUN_DIR:-$HOME/.cache/gridcharge/run}"

say() { echo "$PROG: $*"; }
warn() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: error: $*" >&2; exit 1; }

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# proc_alive PID: alive and not a zombie
proc_alive() {
  local pid="$1" state
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo X)"
  [[ "$state" != Z && "$state" != X ]]
}

# pid_of_ours PID_FILE NEEDLE IS_OURS: print the pid of the process this run dir owns and succeed, else fail.
# The pid file first; else a scan of the processes whose command line contains NEEDLE (one grep over /proc,
# no fork per process). IS_OURS is a function taking a pid: the ownership check (a process of the same
# program started by someone else is never touched).
pid_of_ours() {
  local pid_file="$1" needle="$2" is_ours="$3" pid="" f
  [[ -f "$pid_file" ]] && pid="$(cat "$pid_file" 2>/dev/null || true)"
  if [[ -n "$pid" ]] && "$is_ours" "$pid"; then
    echo "$pid"
    return 0
  fi
  for f in $(grep -l -a -F -e "$needle" /proc/[0-9]*/cmdline 2>/dev/null || true); do
    pid="${f#/proc/}"
    pid="${pid%/cmdline}"
    if "$is_ours" "$pid"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

# lock LOCK_FILE WAIT_S: serialise start/stop/restart of one program across processes (fd 9, held until exit)
lock() {
  mkdir -p "$RUN_DIR"
  exec 9>>"$1"
  flock -w "$2" 9 || die "another $PROG is still running (lock $1)"
}
