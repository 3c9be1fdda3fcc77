"""OCPP-J CALLERROR codes per protocol version and the mapping of JSON-schema failures onto them.

OCPP 1.6J and 2.0.1 spell some codes differently (1.6: "FormationViolation",
"OccurenceConstraintViolation"; 2.0.1: "FormatViolation", "OccurrenceConstraintViolation") and 2.0.1 adds
"RpcFrameworkError" and "MessageTypeNotSupported"; 2.1 uses the 2.0.1 codes. Descriptions are capped at 255
characters and never echo the station's payload.
"""

from __future__ import annotations

from enum import StrEnum

MAX_DESCRIPTION = 255


class Version(StrEnum):
    """OCPP protocol version as negotiated by WebSocket subprotocol."""

    V16 = "1.6"
    V201 = "2.0.1"
    V21 = "2.1"  # OCPP 2.1: the 2.0.1 messages plus the 2.1 ones (priority charging, DER, ...)

    @property
    def subprotocol(self) -> str:
        return "ocpp" + self.value

    @classmethod
    def from_subprotocol(cls, subprotocol: str | None) -> Version | None:
        return {"ocpp1.6": cls.V16, "ocpp2.0.1": cls.V201, "ocpp2.1": cls.V21}.get(subprotocol or "")


class Err(StrEnum):
    """Version-neutral error kinds; `code(version)` gives the wire spelling."""

    FORMAT = "FormatViolation"
    RPC_FRAMEWORK = "RpcFrameworkError"
    MESSAGE_TYPE = "MessageTypeNotSupported"
    NOT_IMPLEMENTED = "NotImplemented"
    NOT_SUPPORTED = "NotSupported"
    PROTOCOL = "ProtocolError"
    SECURITY = "SecurityError"
    OCCURRENCE = "OccurrenceConstraintViolation"
    PROPERTY = "PropertyConstraintViolation"
    TYPE = "TypeConstraintViolation"
    INTERNAL = "InternalError"
    GENERIC = "GenericError"

    def code(self, version: Version) -> str:
        if version is Version.V16:
            return _V16_CODES.get(self, self.value)
        return self.value


# 1.6 has neither RpcFrameworkError nor MessageTypeNotSupported: an unreadable frame is a
# FormationViolation and an unknown MessageTypeId a ProtocolError (the frame is not a valid PDU).
_V16_CODES = {
    Err.FORMAT: "FormationViolation",
    Err.RPC_FRAMEWORK: "FormationViolation",
    Err.MESSAGE_TYPE: "ProtocolError",
    Err.OCCURRENCE: "OccurenceConstraintViolation",
}

V16_CODES = frozenset(
    {
        "NotImplemented",
        "NotSupported",
        "InternalError",
        "ProtocolError",
        "SecurityError",
        "FormationViolation",
        "PropertyConstraintViolation",
        "OccurenceConstraintViolation",
        "TypeConstraintViolation",
        "GenericError",
    }
)
V201_CODES = frozenset(
    {
        "FormatViolation",
        "GenericError",
        "InternalError",
        "MessageTypeNotSupported",
        "NotImplemented",
        "NotSupported",
        "OccurrenceConstraintViolation",
        "PropertyConstraintViolation",
        "ProtocolError",
        "RpcFrameworkError",
        "SecurityError",
        "TypeConstraintViolation",
    }
)

# jsonschema keyword that failed -> error kind (OCPP-J §4.2.3 / 2.0.1 part 4 §4.3 wording).
_SCHEMA_KEYWORDS = {
    "type": Err.TYPE,
    "required": Err.OCCURRENCE,
    "minItems": Err.OCCURRENCE,
    "maxItems": Err.OCCURRENCE,
    "minProperties": Err.OCCURRENCE,
    "maxProperties": Err.OCCURRENCE,
    "enum": Err.PROPERTY,
    "maxLength": Err.PROPERTY,
    "minLength": Err.PROPERTY,
    "minimum": Err.PROPERTY,
    "maximum": Err.PROPERTY,
    "exclusiveMinimum": Err.PROPERTY,
    "exclusiveMaximum": Err.PROPERTY,
    "pattern": Err.PROPERTY,
    "format": Err.PROPERTY,
    "multipleOf": Err.PROPERTY,
    "additionalProperties": Err.FORMAT,
}


def schema_error_kind(keyword: str) -> Err:
    """Error kind for a failed JSON-schema keyword (anything unlisted is a FormatViolation)."""
    return _SCHEMA_KEYWORDS.get(keyword, Err.FORMAT)


def cap(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """Cap a description at `limit` characters, printable ASCII only (safe in logs and on the wire)."""
    out = "".join(c if " " <= c <= "~" else "?" for c in text[: limit + 1])
    return out if len(out) <= limit else out[: limit - 3] + "..."


def safe(value: object, limit: int = 64) -> str:
    """An untrusted station string for logs/API: length-capped, control and non-ASCII chars escaped."""
    text = value if isinstance(value, str) else repr(value)
    escaped = text[:limit].encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in escaped)
    return escaped + ("..." if len(text) > limit else "")
