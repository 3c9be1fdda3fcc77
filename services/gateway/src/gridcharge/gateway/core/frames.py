"""OCPP-J RPC framing: parse one WebSocket message into a CALL, CALLRESULT or CALLERROR, or say
which CALLERROR answers it. Unlike the `ocpp` library, nothing unreadable is dropped silently.

Frames: CALL `[2, id, action, {payload}]`, CALLRESULT `[3, id, {payload}]`,
CALLERROR `[4, id, code, description, {details}]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gridcharge.gateway.core.errors import Err, Version, cap

MAX_ID_LEN = 36  # both versions: messageId is at most 36 characters
UNREADABLE_ID = "-1"


@dataclass(slots=True)
class CallFrame:
    unique_id: str
    action: str
    payload: dict[str, Any]


@dataclass(slots=True)
class ResultFrame:
    unique_id: str
    payload: dict[str, Any]


@dataclass(slots=True)
class ErrorFrame:
    unique_id: str
    code: str
    description: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class BadFrame:
    """A frame we cannot process. `respond` is False for broken CALLRESULT/CALLERROR frames (never
    answered: a CALLERROR to a response would start a ping-pong)."""

    unique_id: str
    kind: Err
    description: str
    respond: bool = True


Frame = CallFrame | ResultFrame | ErrorFrame | BadFrame


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_frame(raw: str | bytes) -> Frame:
    """Parse one message; never raises."""
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return BadFrame(UNREADABLE_ID, Err.RPC_FRAMEWORK, "Message is not valid UTF-8")
    try:
        msg = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return BadFrame(UNREADABLE_ID, Err.RPC_FRAMEWORK, "Message is not valid JSON")
    if not isinstance(msg, list) or not msg:
        return BadFrame(UNREADABLE_ID, Err.RPC_FRAMEWORK, "Message is not a JSON array")
    uid = msg[1] if len(msg) > 1 else None
    readable = isinstance(uid, str) and 0 < len(uid) <= MAX_ID_LEN
    unique_id: str = uid if readable else UNREADABLE_ID  # type: ignore[assignment]
    mtype = msg[0]
    if not isinstance(mtype, int) or isinstance(mtype, bool):
        return BadFrame(unique_id, Err.RPC_FRAMEWORK, "MessageTypeId is not an integer")
    if mtype == 2:
        if not readable:
            return BadFrame(UNREADABLE_ID, Err.RPC_FRAMEWORK, "MessageId missing, not a string or too long")
        if len(msg) != 4 or not isinstance(msg[2], str):
            return BadFrame(unique_id, Err.RPC_FRAMEWORK, "CALL must be [2, id, action, payload]")
        if not isinstance(msg[3], dict):
            return BadFrame(unique_id, Err.FORMAT, "CALL payload is not a JSON object")
        return CallFrame(unique_id, msg[2], msg[3])
    if mtype == 3:
        if not readable or len(msg) != 3 or not isinstance(msg[2], dict):
            return BadFrame(unique_id, Err.RPC_FRAMEWORK, "malformed CALLRESULT", respond=False)
        return ResultFrame(unique_id, msg[2])
    if mtype == 4:
        if not readable or len(msg) != 5 or not isinstance(msg[2], str) or not isinstance(msg[3], str):
            return BadFrame(unique_id, Err.RPC_FRAMEWORK, "malformed CALLERROR", respond=False)
        details = msg[4] if isinstance(msg[4], dict) else {}
        return ErrorFrame(unique_id, msg[2], msg[3], details)
    return BadFrame(unique_id, Err.MESSAGE_TYPE, f"MessageTypeId {cap(str(mtype), 20)} is not supported")


def call_error(unique_id: str, kind: Err, description: str, version: Version) -> str:
    """Serialise a CALLERROR with the version's spelling of `kind` and a capped description."""
    return json.dumps([4, unique_id, kind.code(version), cap(description), {}], separators=(",", ":"))


def call_result(unique_id: str, payload: dict[str, Any]) -> str:
    return json.dumps([3, unique_id, payload], separators=(",", ":"))


def call(unique_id: str, action: str, payload: dict[str, Any]) -> str:
    return json.dumps([2, unique_id, action, payload], separators=(",", ":"))
