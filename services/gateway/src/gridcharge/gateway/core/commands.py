"""StationCommand (version-neutral) → OCPP request (action, payload) and OCPP response → outcome.

A command that does not fit the station's protocol version or breaks a profile rule raises
InvalidCommand: it is answered INVALID and never sent.
"""

from __future__ import annotations

from typing import Any

from gridcharge.command.v1 import command_pb2
from gridcharge.gateway.core.errors import Version
from gridcharge.gateway.core.profiles import (
    PURPOSE,
    RATE_UNIT,
    Capabilities,
    InvalidProfile,
    set_charging_profile_payload,
)

Outcome = command_pb2.CommandOutcome

# command payload field → OCPP action (also the operator API's {action} names)
ACTIONS = {
    "set_charging_profile": "SetChargingProfile",
    "clear_charging_profile": "ClearChargingProfile",
    "get_composite_schedule": "GetCompositeSchedule",
    "get_charging_profiles": "GetChargingProfiles",
    "get_variables": "GetVariables",
    "set_variables": "SetVariables",
    "get_configuration": "GetConfiguration",
    "change_configuration": "ChangeConfiguration",
    "trigger_message": "TriggerMessage",
    "reset": "Reset",
    "use_priority_charging": "UsePriorityCharging",
}
_V2 = frozenset({Version.V201, Version.V21})
ONLY = {
    "GetChargingProfiles": _V2,
    "GetVariables": _V2,
    "SetVariables": _V2,
    "GetConfiguration": frozenset({Version.V16}),
    "ChangeConfiguration": frozenset({Version.V16}),
    "UsePriorityCharging": frozenset({Version.V21}),
}
# statuses that mean the station did (or will do) what was asked
ACCEPTING = frozenset({"Accepted", "RebootRequired", "Scheduled", "NoProfiles"})


class InvalidCommand(ValueError):
    pass


def action_of(cmd: command_pb2.StationCommand) -> str:
    which = cmd.WhichOneof("payload")
    if which is None:
        raise InvalidCommand("command has no payload")
    return ACTIONS[which]


def _var(v: command_pb2.VariableRef) -> dict[str, Any]:
    comp: dict[str, Any] = {"name": v.component}
    var: dict[str, Any] = {"name": v.variable}
    if v.instance:
        var["instance"] = v.instance
    out: dict[str, Any] = {"component": comp, "variable": var}
    if v.attribute_type:
        out["attributeType"] = v.attribute_type
    return out


def to_request(cmd: command_pb2.StationCommand, version: Version, caps: Capabilities) -> tuple[str, dict[str, Any]]:
    """(action, payload) for the station; raises InvalidCommand."""
    action = action_of(cmd)
    if version not in ONLY.get(action, (version,)):
        raise InvalidCommand(f"{action} does not exist in OCPP {version.value}")
    v16 = version is Version.V16
    p: dict[str, Any]
    if action == "SetChargingProfile":
        try:
            return action, set_charging_profile_payload(cmd.set_charging_profile, caps, version)
        except InvalidProfile as exc:
            raise InvalidCommand(str(exc)) from None
    if action == "ClearChargingProfile":
        c = cmd.clear_charging_profile
        purpose = PURPOSE[version].get(c.purpose)
        if v16:
            p = {}
            if c.profile_id:
                p["id"] = c.profile_id
            if c.evse_id >= 0:
                p["connectorId"] = c.evse_id
            if purpose:
                p["chargingProfilePurpose"] = purpose
            if c.stack_level >= 0:
                p["stackLevel"] = c.stack_level
            return action, p
        crit: dict[str, Any] = {}
        if c.evse_id >= 0:
            crit["evseId"] = c.evse_id
        if purpose:
            crit["chargingProfilePurpose"] = purpose
        if c.stack_level >= 0:
            crit["stackLevel"] = c.stack_level
        p = {"chargingProfileCriteria": crit} if crit else {}
        if c.profile_id:
            p["chargingProfileId"] = c.profile_id
        return action, p
    if action == "GetCompositeSchedule":
        g = cmd.get_composite_schedule
        p = {"connectorId" if v16 else "evseId": g.evse_id, "duration": g.duration_s}
        if g.rate_unit in RATE_UNIT:
            p["chargingRateUnit"] = RATE_UNIT[g.rate_unit]
        return action, p
    if action == "GetChargingProfiles":
        gp = cmd.get_charging_profiles
        criterion: dict[str, Any] = {}
        if gp.purpose in PURPOSE[version]:
            criterion["chargingProfilePurpose"] = PURPOSE[version][gp.purpose]
        p = {"requestId": gp.request_id, "chargingProfile": criterion}
        if gp.evse_id >= 0:
            p["evseId"] = gp.evse_id
        return action, p
    if action == "GetVariables":
        if not cmd.get_variables.variables:
            raise InvalidCommand("GetVariables needs at least one variable")
        return action, {"getVariableData": [_var(v) for v in cmd.get_variables.variables]}
    if action == "SetVariables":
        if not cmd.set_variables.variables:
            raise InvalidCommand("SetVariables needs at least one variable")
        return action, {
            "setVariableData": [{**_var(v), "attributeValue": v.value} for v in cmd.set_variables.variables]
        }
    if action == "GetConfiguration":
        keys = list(cmd.get_configuration.keys)
        return action, {"key": keys} if keys else {}
    if action == "ChangeConfiguration":
        return action, {"key": cmd.change_configuration.key, "value": cmd.change_configuration.value}
    if action == "TriggerMessage":
        t = cmd.trigger_message
        p = {"requestedMessage": t.requested_message}
        if t.evse_id > 0:
            p.update({"connectorId": t.evse_id} if v16 else {"evse": {"id": t.evse_id}})
        return action, p
    if action == "UsePriorityCharging":
        u = cmd.use_priority_charging
        if not u.transaction_id:
            raise InvalidCommand("UsePriorityCharging needs a transaction id")
        return action, {"transactionId": u.transaction_id[:36], "activate": u.activate}
    if action == "Reset":
        kind = cmd.reset.type or ("Soft" if v16 else "OnIdle")
        swap = {"Immediate": "Hard", "OnIdle": "Soft"} if v16 else {"Hard": "Immediate", "Soft": "OnIdle"}
        kind = swap.get(kind, kind)
        return action, {"type": kind}
    raise InvalidCommand(f"unsupported action {action}")


def outcome_of(action: str, payload: dict[str, Any]) -> tuple[int, str]:
    """(CommandOutcome, status) for a station's CALLRESULT payload."""
    status = payload.get("status")
    if action == "GetConfiguration":
        return Outcome.COMMAND_OUTCOME_ACCEPTED, "Accepted"
    if action in ("GetVariables", "SetVariables"):
        key = "getVariableResult" if action == "GetVariables" else "setVariableResult"
        statuses = [r.get("attributeStatus", "") for r in payload.get(key, []) if isinstance(r, dict)]
        ok = bool(statuses) and all(s in ACCEPTING for s in statuses)
        return (
            Outcome.COMMAND_OUTCOME_ACCEPTED if ok else Outcome.COMMAND_OUTCOME_REJECTED,
            "Accepted" if ok else next((s for s in statuses if s not in ACCEPTING), "Rejected")[:32],
        )
    if not isinstance(status, str):
        return Outcome.COMMAND_OUTCOME_ACCEPTED, ""
    ok = status in ACCEPTING
    return (Outcome.COMMAND_OUTCOME_ACCEPTED if ok else Outcome.COMMAND_OUTCOME_REJECTED), status[:32]


def is_profile_command(action: str) -> bool:
    """Commands whose timeout leaves the station's charging-profile state unknown."""
    return action in ("SetChargingProfile", "ClearChargingProfile")
