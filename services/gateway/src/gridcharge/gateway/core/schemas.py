"""JSON-schema validation of OCPP payloads against the official schemas shipped with the `ocpp` library.

Validation is synchronous (the library's default hops to a thread pool for every message, which costs
more than the validation itself) and uses validators compiled to Python code by `fastjsonschema` (about
ten times faster than `jsonschema` on this hot path). `format` keywords (date-time, uri) are not enforced,
as with the `ocpp` library; timestamps are parsed leniently where they are used. The three 1.6 schemas with
`multipleOf: 0.1` are checked with `jsonschema` on Decimal values (0.3 is not a float multiple of 0.1).
Errors map to version-correct CALLERROR kinds with a description that names the failed rule and the field
path, never the station's values.
"""

from __future__ import annotations

import decimal
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import fastjsonschema
import ocpp
from gridcharge.gateway.core.errors import Err, Version, cap, schema_error_kind
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError

_SCHEMA_ROOT = os.path.dirname(ocpp.__file__)
# 1.6 schemas with `multipleOf: 0.1` must be checked on Decimal values (0.3 is not a float multiple of 0.1)
_DECIMAL_16 = {("SetChargingProfile", "req"), ("RemoteStartTransaction", "req"), ("GetCompositeSchedule", "conf")}


@dataclass(frozen=True, slots=True)
class SchemaViolation:
    kind: Err
    description: str


def _schema_dir(version: Version) -> str:
    folder = {Version.V16: "v16", Version.V201: "v201", Version.V21: "v21"}[version]
    return os.path.join(_SCHEMA_ROOT, folder, "schemas")


@cache
def known_actions(version: Version) -> frozenset[str]:
    """Every action the version defines (either direction)."""
    names = os.listdir(_schema_dir(version))
    suffix = ".json" if version is Version.V16 else "Request.json"
    return frozenset(n[: -len(suffix)] for n in names if n.endswith(suffix) and not n.endswith("Response.json"))


@cache
def _compiled(version: Version, action: str, part: str) -> Any:
    """fastjsonschema validator function, or None when the action is unknown."""
    if action not in known_actions(version):
        return None
    with open(_schema_path(version, action, part), encoding="utf-8-sig") as f:
        schema = json.load(f)
    return fastjsonschema.compile(schema, use_formats=False)


def _schema_path(version: Version, action: str, part: str) -> str:
    if version is Version.V16:
        name = action + ("Response" if part == "conf" else "")
    else:
        name = action + ("Response" if part == "conf" else "Request")
    return os.path.join(_schema_dir(version), name + ".json")


@cache
def _validator(version: Version, action: str, part: str) -> Draft4Validator | None:
    """part: 'req' (the CALL payload) or 'conf' (the CALLRESULT payload)."""
    if action not in known_actions(version):
        return None
    with open(_schema_path(version, action, part), encoding="utf-8-sig") as f:
        text = f.read()
    parse_float: Any = decimal.Decimal if version is Version.V16 and (action, part) in _DECIMAL_16 else float
    return Draft4Validator(json.loads(text, parse_float=parse_float))


def _needs_decimal(version: Version, action: str, part: str) -> bool:
    return version is Version.V16 and (action, part) in _DECIMAL_16


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _int_out_of_range(value: Any, path: str = "", depth: int = 0) -> str | None:
    """Path of the first integer outside 32 bits (OCPP integers are 32-bit; the schemas set no bound)."""
    if depth > 64:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return path if not INT32_MIN <= value <= INT32_MAX else None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _int_out_of_range(v, f"{path}/{k}", depth + 1)
        if found is not None:
            return found
    return None


@cache
def _datetime_paths(version: Version, action: str, part: str) -> tuple[tuple[str, ...], ...]:
    """Paths of the schema's `format: date-time` fields ("*" = every item of an array)."""
    if action not in known_actions(version):
        return ()
    with open(_schema_path(version, action, part), encoding="utf-8-sig") as f:
        schema = json.load(f)
    definitions = schema.get("definitions", {})
    found: list[tuple[str, ...]] = []

    def walk(node: Any, path: tuple[str, ...], refs: frozenset[str]) -> None:
        if not isinstance(node, dict) or len(path) > 16:
            return
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            if ref not in refs:
                walk(definitions.get(ref.rsplit("/", 1)[1]), path, refs | {ref})
            return
        if node.get("format") == "date-time":
            found.append(path)
        for key, sub in (node.get("properties") or {}).items():
            walk(sub, (*path, key), refs)
        if isinstance(node.get("items"), dict):
            walk(node["items"], (*path, "*"), refs)

    walk(schema, (), frozenset())
    return tuple(found)


def _unrepresentable(value: str) -> bool:
    """A readable ISO 8601 date-time whose UTC value is outside years 1..9999 (e.g. 0001-01-01T00:00:00+14:00).

    Unreadable values are left alone: `format` is not enforced (as in the `ocpp` library) and such
    timestamps fall back to the receive time where they are used."""
    if len(value) > 40:
        return False
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return False
    if dt.tzinfo is None:
        return False
    try:
        dt.astimezone(UTC)
    except OverflowError:
        return True
    return False


def _bad_datetime(payload: Any, path: tuple[str, ...], at: str = "") -> str | None:
    if not path:
        return at if isinstance(payload, str) and _unrepresentable(payload) else None
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(payload, list):
            for i, item in enumerate(payload):
                found = _bad_datetime(item, rest, f"{at}/{i}")
                if found is not None:
                    return found
        return None
    if isinstance(payload, dict) and head in payload:
        return _bad_datetime(payload[head], rest, f"{at}/{head}")
    return None


def validate(version: Version, action: str, part: str, payload: dict[str, Any]) -> SchemaViolation | None:
    """Check `payload` of `action` ('req' or 'conf'); None when valid."""
    bad = _check_schema(version, action, part, payload)
    if bad is not None:
        return bad
    where = _int_out_of_range(payload)
    if where is not None:
        return SchemaViolation(Err.TYPE, cap(f"{action}: integer outside 32 bits at '{cap(where, 120)}'"))
    for path in _datetime_paths(version, action, part):
        where = _bad_datetime(payload, path)
        if where is not None:
            # a date-time no UTC timestamp can hold: a property (value range) violation, never an InternalError
            return SchemaViolation(Err.PROPERTY, cap(f"{action}: date-time out of range at '{cap(where, 120)}'"))
    return None


def _check_schema(version: Version, action: str, part: str, payload: dict[str, Any]) -> SchemaViolation | None:
    if _needs_decimal(version, action, part):
        return _validate_decimal(version, action, part, payload)
    check = _compiled(version, action, part)
    if check is None:
        return SchemaViolation(Err.NOT_IMPLEMENTED, f"no schema for {action}")
    try:
        check(payload)
    except fastjsonschema.JsonSchemaValueException as err:
        path = "/".join(str(p) for p in (err.path or [])[1:])
        return SchemaViolation(
            schema_error_kind(str(err.rule)), cap(f"{action}: '{err.rule}' violated at '/{cap(path, 120)}'")
        )
    except Exception:  # generated code meeting input it did not foresee: still a violation, never a crash
        return SchemaViolation(Err.FORMAT, f"{action}: payload not valid")
    return None


def _validate_decimal(version: Version, action: str, part: str, payload: dict[str, Any]) -> SchemaViolation | None:
    validator = _validator(version, action, part)
    assert validator is not None
    payload = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
    try:
        err = next(validator.iter_errors(payload), None)
    except RecursionError:
        return SchemaViolation(Err.FORMAT, f"{action}: payload nested too deeply")
    if err is None:
        return None
    assert isinstance(err, ValidationError)
    path = "/".join(str(p) for p in err.absolute_path)
    return SchemaViolation(
        schema_error_kind(str(err.validator)), cap(f"{action}: '{err.validator}' violated at '/{cap(path, 120)}'")
    )
