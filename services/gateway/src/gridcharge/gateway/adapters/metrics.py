"""Gateway metrics (names fixed in docs/metrics.md; label values from closed sets, never station data)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTED = Gauge("gridcharge_gateway_connected_stations", "Open station WebSockets on this replica.", ["protocol"])
MESSAGES = Counter(
    "gridcharge_gateway_messages_total",
    "OCPP messages by action, direction and outcome.",
    ["action", "direction", "outcome"],
)
ROUNDTRIP = Histogram(
    "gridcharge_gateway_call_roundtrip_seconds",
    "CALL sent to a station until its answer.",
    ["action"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COMMANDS = Counter("gridcharge_gateway_commands_total", "Commands from the bus by outcome.", ["command", "outcome"])
REJECTED = Counter("gridcharge_gateway_rejected_connections_total", "WebSocket connections refused.", ["reason"])
BOOTS = Counter(
    "gridcharge_gateway_boots_total",
    "BootNotifications answered, by status and why not Accepted.",
    ["status", "reason"],
)
PROFILE_CHECKS = Counter(
    "gridcharge_gateway_profile_checks_total",
    "Closed-loop profile checks of stations, by outcome (ok, mismatch, incomplete).",
    ["outcome"],
)
PROFILE_MISMATCHES = Counter(
    "gridcharge_gateway_profile_mismatches_total",
    "Differences between the profiles a station accepted and what it applies, by kind "
    "(missing, higher_limit, altered, foreign, composite_higher).",
    ["kind"],
)
AUTH_FAILURES = Counter(
    "gridcharge_gateway_auth_failures_total",
    "Refused Basic-auth attempts: wrong credentials, or refused unchecked during a back-off or lockout.",
    ["outcome"],
)
AUTH_LOCKOUTS = Counter(
    "gridcharge_gateway_auth_lockouts_total",
    "Station ids or source IPs locked out after repeated failed authentication.",
    ["scope"],
)
RATE_LIMITED = Counter(
    "gridcharge_gateway_rate_limited_total",
    "Inbound frames refused by a rate limit, by the bucket that was empty.",
    ["scope"],
)
AUTHORIZATIONS = Counter("gridcharge_gateway_authorizations_total", "idToken authorization decisions.", ["status"])
UPSTREAM_CONNECTED = Gauge(
    "gridcharge_gateway_upstream_connections", "Open connections to the upstream CSMS (proxy mode), one per station."
)
UPSTREAM_MESSAGES = Counter(
    "gridcharge_gateway_upstream_messages_total",
    "Proxy mode: station messages relayed up (relayed/queued/delivered/local/...) and "
    "upstream CALLs relayed down (relayed/refused/adjusted/busy/...).",
    ["direction", "outcome"],
)
UPSTREAM_CONNECT_FAILURES = Counter(
    "gridcharge_gateway_upstream_connect_failures_total",
    "Proxy mode: failed connection attempts to the upstream CSMS, by reason "
    "(certificate/refused/tls/timeout/handshake/unreachable/other).",
    ["reason"],
)
UPSTREAM_QUEUED = Gauge(
    "gridcharge_gateway_upstream_queued_messages", "Transaction messages waiting for an unreachable upstream CSMS."
)
