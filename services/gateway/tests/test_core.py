"""Pure core: framing, error codes, profile rules and mapping, command mapping, seqNo ordering, meter scaling."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.gateway.core import schemas
from gridcharge.gateway.core.commands import InvalidCommand, outcome_of, to_request
from gridcharge.gateway.core.errors import Err, Version, cap, safe
from gridcharge.gateway.core.frames import BadFrame, CallFrame, ErrorFrame, ResultFrame, call_error, parse_frame
from gridcharge.gateway.core.mapping import meter_values, sampled_value
from gridcharge.gateway.core.profiles import Capabilities, InvalidProfile, round_limit, set_charging_profile_payload
from gridcharge.gateway.core.transactions import TransactionSequencer

V16, V201 = Version.V16, Version.V201


@pytest.mark.parametrize(
    ("raw", "uid", "kind"),
    [
        ("not json", "-1", Err.RPC_FRAMEWORK),
        (b"\xff\xfe", "-1", Err.RPC_FRAMEWORK),
        ("{}", "-1", Err.RPC_FRAMEWORK),
        ("[]", "-1", Err.RPC_FRAMEWORK),
        ('[2, 5, "Heartbeat", {}]', "-1", Err.RPC_FRAMEWORK),
        ('[2, "a", "Heartbeat"]', "a", Err.RPC_FRAMEWORK),
        ('[2, "a", "Heartbeat", []]', "a", Err.FORMAT),
        ('[7, "a", "Heartbeat", {}]', "a", Err.MESSAGE_TYPE),
        ('["2", "a", "Heartbeat", {}]', "a", Err.RPC_FRAMEWORK),
        ('[2, "a", "Heartbeat", {"x": NaN}]', "-1", Err.RPC_FRAMEWORK),
        ("[" * 100_000, "-1", Err.RPC_FRAMEWORK),
    ],
)
def test_bad_frames(raw: str | bytes, uid: str, kind: Err) -> None:
    f = parse_frame(raw)
    assert isinstance(f, BadFrame) and f.unique_id == uid and f.kind is kind and f.respond


def test_good_frames() -> None:
    assert parse_frame('[2,"1","Heartbeat",{}]') == CallFrame("1", "Heartbeat", {})
    assert parse_frame('[3,"1",{"a":1}]') == ResultFrame("1", {"a": 1})
    assert parse_frame('[4,"1","NotSupported","x",{}]') == ErrorFrame("1", "NotSupported", "x", {})
    assert isinstance(parse_frame('[3,"1"]'), BadFrame) and not parse_frame('[3,"1"]').respond  # type: ignore[union-attr]


def test_error_codes_per_version() -> None:
    assert Err.FORMAT.code(V16) == "FormationViolation" and Err.FORMAT.code(V201) == "FormatViolation"
    assert Err.OCCURRENCE.code(V16) == "OccurenceConstraintViolation"
    assert Err.MESSAGE_TYPE.code(V201) == "MessageTypeNotSupported" and Err.MESSAGE_TYPE.code(V16) == "ProtocolError"
    msg = json.loads(call_error("x", Err.TYPE, "d" * 1000, V16))
    assert msg[:3] == [4, "x", "TypeConstraintViolation"] and len(msg[3]) <= 255


def test_cap_and_safe() -> None:
    assert len(cap("é\n" * 500)) <= 255 and cap("a\x00b") == "a?b"
    assert safe("\x1b[31mred\n") == "\\x1b[31mred\\x0a" and len(safe("x" * 500)) <= 67


def test_schema_violation_codes() -> None:
    v = schemas.validate(V16, "BootNotification", "req", {"chargePointVendor": "a"})
    assert v is not None and v.kind is Err.OCCURRENCE
    v = schemas.validate(V16, "BootNotification", "req", {"chargePointVendor": 1, "chargePointModel": "m"})
    assert v is not None and v.kind is Err.TYPE
    v = schemas.validate(V16, "BootNotification", "req", {"chargePointVendor": "a" * 21, "chargePointModel": "m"})
    assert v is not None and v.kind is Err.PROPERTY and "a" * 21 not in v.description
    v = schemas.validate(V201, "Heartbeat", "req", {"x": 1})
    assert v is not None and v.kind is Err.FORMAT


def test_integers_beyond_32_bits_are_a_type_violation() -> None:
    """OCPP integers are 32-bit; the JSON schemas set no bound (found by the fuzz test: a 2.0.1 seqNo of
    ~4.8e48 reached the protobuf mapping and became an InternalError)."""
    tx = {
        "eventType": "Started",
        "timestamp": "2026-06-01T08:00:00Z",
        "triggerReason": "CablePluggedIn",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "t1"},
        "evse": {"id": 1, "connectorId": 1},
    }
    assert schemas.validate(V201, "TransactionEvent", "req", tx) is None
    huge = 4786968280569109711252255621997371689109295202304
    for bad in ({**tx, "seqNo": 2**31}, {**tx, "evse": {"id": -(2**31) - 1}}, {**tx, "seqNo": huge}):
        v = schemas.validate(V201, "TransactionEvent", "req", bad)
        assert v is not None and v.kind is Err.TYPE, bad
    assert schemas.validate(V201, "TransactionEvent", "req", {**tx, "seqNo": 2**31 - 1}) is None
    v = schemas.validate(
        V16,
        "StartTransaction",
        "req",
        {"connectorId": 1, "idTag": "a", "meterStart": 2**40, "timestamp": "2026-06-01T08:00:00Z"},
    )
    assert v is not None and v.kind is Err.TYPE and "meterStart" in v.description


def _profile(**kw: object) -> command_pb2.SetChargingProfile:
    sp = command_pb2.SetChargingProfile(evse_id=1)
    p = sp.profile
    p.profile_id, p.stack_level, p.purpose, p.kind = 3, 1, command_pb2.PROFILE_PURPOSE_TX_DEFAULT, "Absolute"
    p.rate_unit = common_pb2.RATE_UNIT_A
    p.periods.add(start_period_s=0, limit=16.09)
    p.periods.add(start_period_s=900, limit=6.25)
    for k, v in kw.items():
        setattr(p, k, v)
    return sp


def test_round_limit_down_with_decimal() -> None:
    assert round_limit(16.09) == 16.0 and round_limit(7.3) == 7.3 and round_limit(0.29999) == 0.2
    assert round_limit(32.0) == 32.0
    assert round_limit(16.1 * 230 * 3) == 11109.0  # binary representation, not a lower limit


def test_profile_mapping_16_and_201_validate_against_schema() -> None:
    out = set_charging_profile_payload(_profile(), Capabilities(), V16)
    assert out["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][1] == {
        "startPeriod": 900,
        "limit": 6.2,
    }
    assert schemas.validate(V16, "SetChargingProfile", "req", out) is None
    out = set_charging_profile_payload(_profile(), Capabilities(), V201)
    assert out["chargingProfile"]["chargingSchedule"][0]["chargingRateUnit"] == "A"
    assert schemas.validate(V201, "SetChargingProfile", "req", out) is None


@pytest.mark.parametrize(
    ("mutate", "caps", "why"),
    [
        (lambda p: p.periods[0].__setattr__("start_period_s", 5), Capabilities(), "start at 0"),
        (lambda p: p.periods[1].__setattr__("start_period_s", 0), Capabilities(), "ascend"),
        (lambda p: None, Capabilities(allowed_rate_units=frozenset({"W"})), "rate unit"),
        (lambda p: None, Capabilities(max_periods=1), "periods above"),
        (lambda p: None, Capabilities(max_stack_level=0), "stack level"),
        (lambda p: p.__setattr__("purpose", command_pb2.PROFILE_PURPOSE_TX), Capabilities(), "transaction id"),
        (lambda p: p.__setattr__("transaction_id", "5"), Capabilities(), "only allowed on a TxProfile"),
        (lambda p: p.periods[0].__setattr__("limit", float("nan")), Capabilities(), "finite"),
        (lambda p: p.__setattr__("rate_unit", 0), Capabilities(), "rate unit not set"),
    ],
)
def test_profile_rules(mutate: object, caps: Capabilities, why: str) -> None:
    sp = _profile()
    mutate(sp.profile)  # type: ignore[operator]
    with pytest.raises(InvalidProfile, match=why):
        set_charging_profile_payload(sp, caps, V16)


def test_station_max_profile_must_target_evse_0() -> None:
    sp = _profile(purpose=command_pb2.PROFILE_PURPOSE_STATION_MAX)
    with pytest.raises(InvalidProfile, match="EVSE 0"):
        set_charging_profile_payload(sp, Capabilities(), V201)
    sp.evse_id = 0
    out = set_charging_profile_payload(sp, Capabilities(), V201)
    assert out["chargingProfile"]["chargingProfilePurpose"] == "ChargingStationMaxProfile"


def test_command_mapping_per_version() -> None:
    cmd = command_pb2.StationCommand(command_id="1", station_id="s")
    cmd.get_variables.variables.add(component="SmartChargingCtrlr", variable="Enabled")
    with pytest.raises(InvalidCommand, match=r"does not exist in OCPP 1\.6"):
        to_request(cmd, V16, Capabilities())
    action, payload = to_request(cmd, V201, Capabilities())
    assert action == "GetVariables" and schemas.validate(V201, action, "req", payload) is None
    r = command_pb2.StationCommand(command_id="2", station_id="s")
    r.reset.type = "Hard"
    assert to_request(r, V201, Capabilities()) == ("Reset", {"type": "Immediate"})
    rejected = (command_pb2.COMMAND_OUTCOME_REJECTED, "Rejected")
    assert outcome_of("SetChargingProfile", {"status": "Rejected"}) == rejected
    assert outcome_of("Reset", {"status": "Scheduled"})[0] == command_pb2.COMMAND_OUTCOME_ACCEPTED


def test_sequencer_dedupes_and_orders() -> None:
    s: TransactionSequencer[int] = TransactionSequencer(max_buffer=3)
    assert s.accept("t", 0, 0) == [0]
    assert s.accept("t", 0, 0) == []  # duplicate
    assert s.accept("t", 2, 2) == []  # gap: buffered
    assert s.accept("t", 1, 1) == [1, 2]  # gap filled: released in order
    assert s.accept("t", 5, 5) == []
    assert s.accept("t", 6, 6, ended=True) == [5, 6]  # Ended flushes
    assert s.seen("t", 6) and s.accept("t", 6, 6) == []


def test_meter_scaling() -> None:
    v = sampled_value({"value": 7.5, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "kW"}}, V201)
    assert v is not None and v.value == 7500 and v.unit == "W"
    v = sampled_value(
        {"value": 12, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh", "multiplier": 3}},
        V201,
    )
    assert v is not None and v.value == 12000
    assert sampled_value({"value": "abc"}, V16) is None
    v = sampled_value({"value": "3"}, V16)
    assert v is not None and v.measurand == "Energy.Active.Import.Register" and v.unit == "Wh"
    mvs = list(
        meter_values(
            "s",
            V16,
            "p",
            datetime(2026, 1, 1, tzinfo=UTC),
            1,
            "",
            [{"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": "1", "phase": "L2", "unit": "kWh"}]}],
        )
    )
    assert mvs[0].values[0].value == 1000 and mvs[0].values[0].phase == "L2"
