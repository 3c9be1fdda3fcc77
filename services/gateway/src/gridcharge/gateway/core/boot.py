"""Registration rules (OCPP 1.6 §4.2, 2.0.1 B01–B03): which boot status a station gets, what it may send
before it is Accepted, and what we may send it.

A boot is per station, not per connection: a station that booted Accepted and reconnects without
rebooting is still Accepted (the status is kept in the registry, see adapters.registry). Before an
Accepted boot, any CALL other than BootNotification is answered with CALLERROR SecurityError, whatever the
action (2.0.1 B02.FR.09 for Pending, B03.FR.07 for Rejected; the same rule is applied to 1.6 and to a
station that has not booted at all). The one exception while Pending: a message the CSMS asked for with
TriggerMessage (or, 2.0.1, the NotifyReport that GetBaseReport/GetReport cause).

Pure: no I/O; the adapters pass in what they read from the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gridcharge.gateway.core.errors import Version


class Registration(StrEnum):
    NONE = ""  # no boot known for this station (or it expired)
    ACCEPTED = "Accepted"
    PENDING = "Pending"
    REJECTED = "Rejected"


class PendingReason(StrEnum):
    """Why a boot was not answered Accepted (a closed set: it is a metric label)."""

    NONE = "none"
    PROVISIONING = "provisioning"  # listed in `pending_stations`: held for `pending_hold_s`
    NOT_READY = "not_ready"  # store or bus unreachable: the station retries after the interval
    UNKNOWN_STATION = "unknown_station"  # `unknown_stations` = pending / rejected


# TriggerMessage requestedMessage -> the action the station then sends
_TRIGGERED = {
    Version.V16: {
        "BootNotification": "BootNotification",
        "DiagnosticsStatusNotification": "DiagnosticsStatusNotification",
        "FirmwareStatusNotification": "FirmwareStatusNotification",
        "Heartbeat": "Heartbeat",
        "MeterValues": "MeterValues",
        "StatusNotification": "StatusNotification",
    },
    Version.V201: {
        "BootNotification": "BootNotification",
        "LogStatusNotification": "LogStatusNotification",
        "FirmwareStatusNotification": "FirmwareStatusNotification",
        "Heartbeat": "Heartbeat",
        "MeterValues": "MeterValues",
        "SignChargingStationCertificate": "SignCertificate",
        "SignV2GCertificate": "SignCertificate",
        "SignCombinedCertificate": "SignCertificate",
        "StatusNotification": "StatusNotification",
        "TransactionEvent": "TransactionEvent",
        "PublishFirmwareStatusNotification": "PublishFirmwareStatusNotification",
    },
}
_TRIGGERED[Version.V21] = _TRIGGERED[Version.V201]

# While Pending the CSMS may read and change the station's configuration (1.6 §4.2; 2.0.1 B02.FR.01 names
# Get/SetVariables, the reports and TriggerMessage). Not allowed: remote start/stop (1.6 §4.2 "While in
# pending state, the following Central System initiated messages are not allowed: RemoteStartTransaction.req
# and RemoteStopTransaction.req"; 2.0.1 B02.FR.05, the station rejects them). Everything else is sent, so a
# station held Pending still gets its fallback charging profile (safety principle 1) before it is Accepted.
_NOT_WHILE_PENDING = frozenset(
    {"RemoteStartTransaction", "RemoteStopTransaction", "RequestStartTransaction", "RequestStopTransaction"}
)


def triggered_action(version: Version, action: str, payload: dict[str, Any]) -> str | None:
    """The station message a CSMS CALL asks for (a station answering it Accepted will send it)."""
    if action == "TriggerMessage":
        return _TRIGGERED[version].get(str(payload.get("requestedMessage", "")))
    if version is not Version.V16 and action in ("GetBaseReport", "GetReport"):
        return "NotifyReport"
    return None


def station_call_allowed(status: Registration, action: str, triggered: frozenset[str] | set[str]) -> bool:
    """May the station send `action` now? (False -> CALLERROR SecurityError, before any other check.)"""
    if action == "BootNotification" or status is Registration.ACCEPTED:
        return True
    return status is Registration.PENDING and action in triggered


def command_allowed(status: Registration, version: Version, action: str) -> bool:
    """May we send `action` to the station now? Nothing while Rejected (B03, 1.6 §4.2) or before a boot."""
    if status is Registration.ACCEPTED:
        return True
    if status is Registration.PENDING:
        return action not in _NOT_WHILE_PENDING
    return False


@dataclass(frozen=True, slots=True)
class BootDecision:
    status: Registration
    reason: PendingReason
    interval_s: int


def decide_boot(
    *,
    known: bool,
    unknown_policy: str,
    provisioning: bool,
    pending_since: float | None,
    now: float,
    hold_s: float,
    heartbeat_interval_s: int,
    pending_interval_s: int,
) -> BootDecision:
    """The answer to a BootNotification by policy (the adapter turns Accepted into Pending(not_ready) when it
    cannot record the boot or publish it).

    `provisioning`: the station is listed for a Pending boot; it is Accepted on its first boot at least
    `hold_s` after the first Pending answer of this boot sequence (`pending_since`, None = none yet), and
    the interval it gets ends the hold, so its retry is the one that is Accepted.
    """
    if not known and unknown_policy != "accept":
        if unknown_policy == "pending":
            return BootDecision(Registration.PENDING, PendingReason.UNKNOWN_STATION, pending_interval_s)
        return BootDecision(Registration.REJECTED, PendingReason.UNKNOWN_STATION, heartbeat_interval_s)
    if provisioning:
        left = hold_s if pending_since is None else hold_s - (now - pending_since)
        if left > 0:
            interval = max(1, min(pending_interval_s, int(left + 0.999)))
            return BootDecision(Registration.PENDING, PendingReason.PROVISIONING, interval)
    return BootDecision(Registration.ACCEPTED, PendingReason.NONE, heartbeat_interval_s)
