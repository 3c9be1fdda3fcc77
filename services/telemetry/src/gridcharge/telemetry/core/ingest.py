"""Validation of externally supplied grid-meter readings (HTTP ingest, CLI files) -> GridMeterReading.

JSON shape (one object, a list, or {"readings": [...]}):
    {"node_id": "trafo-1", "meter_id": "scada-7", "measured_at": "2026-06-01T12:00:00Z",
     "power_w": [12000, 11000, 13000], "current_a": [52, 48, 57], "voltage_v": [231, 230, 232],
     "ambient_temperature_c": 21.5}
CSV columns: node_id, meter_id, measured_at, power_l1_w, power_l2_w, power_l3_w, optional
current_l1_a.., voltage_l1_v.., ambient_temperature_c. Values are per grid phase in W, A, V, °C.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from typing import Annotated, Any

from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.codec import meta, phase_values, to_timestamp
from gridcharge.shared.validation import bounded_datetime
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

MAX_BATCH = 5000


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


Finite = Annotated[float, AfterValidator(_finite)]
Phases = tuple[Finite, Finite, Finite]


class ReadingIn(BaseModel):
    """One grid-meter reading, per grid phase (L1, L2, L3)."""

    model_config = ConfigDict(extra="forbid")

    node_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
    meter_id: str = Field("main", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
    measured_at: datetime | None = None  # default: time of ingest
    power_w: Phases
    current_a: Phases | None = None
    voltage_v: Phases | None = None
    ambient_temperature_c: Finite | None = Field(None, ge=-60, le=80)

    @field_validator("measured_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("needs a timezone (e.g. 2026-06-01T12:00:00Z)")
        return bounded_datetime(v, "measured_at")  # year 1 or 9999 would overflow the protobuf Timestamp: 500

    @field_validator("current_a")
    @classmethod
    def _non_negative(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and any(x < 0 for x in v):
            raise ValueError("currents are magnitudes and must not be negative")
        return v

    def to_proto(self, now_s: float, producer: str) -> grid_pb2.GridMeterReading:
        msg = grid_pb2.GridMeterReading(
            meta=meta(producer, now_s),
            node_id=self.node_id,
            meter_id=self.meter_id,
            measured_at=to_timestamp(self.measured_at or now_s),
            power_w=phase_values(self.power_w),
            ambient_temperature_c=self.ambient_temperature_c if self.ambient_temperature_c is not None else math.nan,
        )
        if self.current_a is not None:
            msg.current_a.CopyFrom(phase_values(self.current_a))
            msg.has_current = True
        if self.voltage_v is not None:
            msg.voltage_v.CopyFrom(phase_values(self.voltage_v))
            msg.has_voltage = True
        return msg


class ReadingBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    readings: list[ReadingIn] = Field(min_length=1, max_length=MAX_BATCH)


_LIST = TypeAdapter(list[ReadingIn])


class IngestError(ValueError):
    """Readings that failed validation; `errors` lists {loc, msg} per problem."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        first = errors[0] if errors else {"loc": [], "msg": "no readings"}
        super().__init__(
            f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}"
            + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
        )


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:50]]


def parse_json_readings(data: Any) -> list[ReadingIn]:
    """One reading, a list, or {"readings": [...]}; raises IngestError."""
    try:
        if isinstance(data, dict) and "readings" in data:
            return ReadingBatch.model_validate(data).readings
        if isinstance(data, list):
            if not 1 <= len(data) <= MAX_BATCH:
                raise IngestError([{"loc": [], "msg": f"between 1 and {MAX_BATCH} readings per request"}])
            return _LIST.validate_python(data)
        return [ReadingIn.model_validate(data)]
    except ValidationError as exc:
        raise IngestError(_errors(exc)) from None


def check_nodes(readings: list[ReadingIn], known: set[str]) -> None:
    """Raise IngestError for readings of nodes the topology does not have."""
    errs = [
        {"loc": [i, "node_id"], "msg": f"unknown node '{r.node_id}'"}
        for i, r in enumerate(readings)
        if r.node_id not in known
    ]
    if errs:
        raise IngestError(errs)


def _row_phases(row: dict[str, str], fmt: str) -> list[str] | None:
    vals = [row.get(fmt.format(n=n), "").strip() for n in (1, 2, 3)]
    if not any(vals):
        return None
    return vals


def parse_csv_readings(text: str) -> list[ReadingIn]:
    """CSV with a header row (see module doc); raises IngestError naming the line."""
    out: list[ReadingIn] = []
    errors: list[dict[str, Any]] = []
    reader = csv.DictReader(io.StringIO(text))
    for line, row in enumerate(reader, start=2):
        doc: dict[str, Any] = {
            "node_id": (row.get("node_id") or "").strip(),
            "power_w": _row_phases(row, "power_l{n}_w"),
        }
        if (row.get("meter_id") or "").strip():
            doc["meter_id"] = row["meter_id"].strip()
        if (row.get("measured_at") or "").strip():
            doc["measured_at"] = row["measured_at"].strip()
        for key, fmt in (("current_a", "current_l{n}_a"), ("voltage_v", "voltage_l{n}_v")):
            vals = _row_phases(row, fmt)
            if vals is not None:
                doc[key] = vals
        if (row.get("ambient_temperature_c") or "").strip():
            doc["ambient_temperature_c"] = row["ambient_temperature_c"].strip()
        try:
            out.append(ReadingIn.model_validate(doc))
        except ValidationError as exc:
            errors += [{"loc": [f"line {line}", *e["loc"]], "msg": e["msg"]} for e in exc.errors()]
    if errors:
        raise IngestError(errors[:50])
    if not out:
        raise IngestError([{"loc": [], "msg": "no readings in file"}])
    return out


def parse_file_text(text: str, fmt: str) -> list[ReadingIn]:
    """`fmt` is 'json' or 'csv'."""
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IngestError([{"loc": [f"line {exc.lineno}"], "msg": f"invalid JSON: {exc.msg}"}]) from None
        return parse_json_readings(data)
    return parse_csv_readings(text)
