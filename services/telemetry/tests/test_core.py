"""Unit tests of the pure telemetry core: phase mapping, aggregation, staleness, implausible data."""

from __future__ import annotations

import math

import pytest
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.forecast.v1 import forecast_pb2
from gridcharge.shared.codec import to_timestamp
from gridcharge.station.v1 import station_pb2
from gridcharge.telemetry.core import TelemetryConfig, TelemetryCore
from gridcharge.telemetry.core.model import Outcome
from gridcharge.telemetry.testing import (
    T0,
    event,
    grid,
    heartbeat,
    mv,
    phase_power,
    result,
    set_profile,
    status,
    sv,
    topology,
)

V = 230.0


def approx3(v: tuple[float, float, float], expected: tuple[float, float, float], abs_: float = 1e-6) -> bool:
    return all(a == pytest.approx(b, abs=abs_) for a, b in zip(v, expected, strict=True))


@pytest.fixture
def core() -> TelemetryCore:
    c = TelemetryCore(topology())
    for sid in ("S1", "S2", "S3"):
        c.on_station_event(heartbeat(sid, T0), T0)
    for sid, evse in (("S1", 1), ("S2", 1), ("S3", 1), ("S3", 2)):
        c.on_station_event(status(sid, evse, T0, "Available"), T0)
    return c


def test_rotated_three_phase_station_lands_on_grid_phases(core: TelemetryCore) -> None:
    assert core.on_meter_values(phase_power("S1", 1, T0 + 1, 1000, 2000, 3000), T0 + 1) is Outcome.OK
    ev = core.evses[("S1", 1)]
    # station L1 -> grid L2, L2 -> L3, L3 -> L1
    assert approx3(ev.power_w, (3000, 1000, 2000))
    views = core.node_loads(T0 + 2)
    assert approx3(views["panel"].ev_load_w, (3000, 1000, 2000))
    assert approx3(views["panel"].load_w, (3000, 1000, 2000))  # unmetered: sum of EVSEs (+ base 0)


def test_single_phase_station_and_evse_phase_map(core: TelemetryCore) -> None:
    core.on_meter_values(mv("S2", 1, T0 + 1, sv("Current.Import", 10, "L1", "A")), T0 + 1)
    assert approx3(core.evses[("S2", 1)].power_w, (0, 0, 10 * V))
    assert approx3(core.evses[("S2", 1)].current_a, (0, 0, 10))
    core.on_meter_values(mv("S3", 2, T0 + 1, sv("Power.Active.Import", 2300, "", "W")), T0 + 1)
    assert approx3(core.evses[("S3", 2)].power_w, (2300, 0, 0))


def test_total_power_split_by_per_phase_current(core: TelemetryCore) -> None:
    core.on_meter_values(
        mv(
            "S3",
            1,
            T0 + 1,
            sv("Power.Active.Import", 6000, "", "kW".replace("k", "")),
            sv("Current.Import", 10, "L1", "A"),
            sv("Current.Import", 10, "L2", "A"),
            sv("Current.Import", 0, "L3", "A"),
        ),
        T0 + 1,
    )
    assert approx3(core.evses[("S3", 1)].power_w, (3000, 3000, 0))


def test_kw_units_are_scaled(core: TelemetryCore) -> None:
    core.on_meter_values(mv("S3", 2, T0 + 1, sv("Power.Active.Import", 2.3, "", "kW")), T0 + 1)
    assert approx3(core.evses[("S3", 2)].power_w, (2300, 0, 0))


def test_metered_node_uses_meter_and_derives_base_load(core: TelemetryCore) -> None:
    core.on_meter_values(phase_power("S1", 1, T0 + 1, 1000, 1000, 1000), T0 + 1)
    core.on_meter_values(mv("S2", 1, T0 + 1, sv("Power.Active.Import", 2000, "L1", "W")), T0 + 1)
    assert core.on_grid_reading(grid("trafo", T0 + 1, 5000, 6000, 7000), T0 + 1) is Outcome.OK
    v = core.node_loads(T0 + 2)["trafo"]
    assert v.metered and v.meter_fresh
    assert approx3(v.load_w, (5000, 6000, 7000))
    assert approx3(v.ev_load_w, (1000, 1000, 3000))
    assert approx3(v.base_load_w, (4000, 5000, 4000))
    assert approx3(v.worst_case_w, v.load_w)
    assert v.stale_sources == 0 and v.implausible_sources == 0
    assert approx3(v.limit_w, (100 * V, 100 * V, 100 * V))


def test_unmetered_node_adds_configured_base_load() -> None:
    c = TelemetryCore(topology(), TelemetryConfig(base_load_w={"panel": (500.0, 500.0, 500.0)}))
    for sid in ("S1", "S3"):
        c.on_station_event(heartbeat(sid, T0), T0)
    for sid, evse in (("S1", 1), ("S3", 1), ("S3", 2)):
        c.on_station_event(status(sid, evse, T0, "Available"), T0)
    c.on_meter_values(phase_power("S1", 1, T0 + 1, 1000, 1000, 1000), T0 + 1)
    v = c.node_loads(T0 + 2)["panel"]
    assert approx3(v.load_w, (1500, 1500, 1500))
    assert approx3(v.base_load_w, (500, 500, 500))


def test_stale_meter_falls_back_to_children_plus_last_base(core: TelemetryCore) -> None:
    core.on_meter_values(phase_power("S1", 1, T0 + 1, 1000, 1000, 1000), T0 + 1)
    core.on_grid_reading(grid("trafo", T0 + 1, 5000, 5000, 5000), T0 + 1)
    core.node_loads(T0 + 2)  # remembers base = 4000 per phase
    for t in range(10, 200, 10):  # stations stay alive, meter goes quiet
        for sid in ("S1", "S2", "S3"):
            core.on_station_event(heartbeat(sid, T0 + t), T0 + t)
        core.on_meter_values(phase_power("S1", 1, T0 + t, 1000, 1000, 1000), T0 + t)
    tr = core.node_loads(T0 + 190)["trafo"]
    assert not tr.meter_fresh
    assert tr.stale_sources == 1
    assert approx3(tr.load_w, (5000, 5000, 5000))  # children 1000 + last base 4000
    assert core.stale_counts(T0 + 190) == {"station": 0, "meter": 1}


def test_metered_node_never_reported_counts_as_stale_meter(core: TelemetryCore) -> None:
    v = core.node_loads(T0 + 1)["trafo"]
    assert v.metered and not v.meter_fresh and v.stale_sources == 1


def test_stale_station_counted_at_hardware_max_never_zero(core: TelemetryCore) -> None:
    core.on_station_event(
        event(
            "S2",
            T0 + 1,
            transaction_started=station_pb2.TransactionStarted(transaction_id="tx1", evse_id=1, meter_start_wh=100),
        ),
        T0 + 1,
    )
    core.on_meter_values(mv("S2", 1, T0 + 2, sv("Power.Active.Import", 2000, "L1", "W")), T0 + 2)
    fresh = core.node_loads(T0 + 3)["trafo"]
    assert fresh.stale_sources == 1  # only the (never reported) trafo meter
    # 61 s later without meter values: the charging EVSE is stale -> worst case = 16 A × 230 V on grid L3
    later = T0 + 2 + 61
    v = core.node_loads(later)["trafo"]
    assert v.stale_sources == 2  # S2's EVSE + the trafo meter; idle stations are not stale
    assert approx3(v.worst_case_w, (0, 0, 16 * V))
    assert approx3(v.ev_load_w, (0, 0, 2000))  # best estimate keeps the last value
    assert core.stale_counts(later)["station"] == 1
    # idle stations become stale once silent longer than station_silence_s (900 s): then at hardware max
    much_later = T0 + 901
    v = core.node_loads(much_later)["panel"]
    assert approx3(v.worst_case_w, (80 * V, 64 * V, 64 * V))
    assert core.stale_counts(much_later)["station"] == 3


def test_command_results_tell_liveness(core: TelemetryCore) -> None:
    core.on_command_result(result("S1", "unknown-cmd", command_pb2.COMMAND_OUTCOME_ACCEPTED), T0 + 800)
    assert core.stations["S1"].last_seen_s == T0 + 800
    assert not core.station_stale(core.stations["S1"], T0 + 1000)
    core.on_command_result(result("S1", "other", command_pb2.COMMAND_OUTCOME_OFFLINE), T0 + 801)
    assert core.station_stale(core.stations["S1"], T0 + 802)


def test_stale_time_follows_reporting_interval(core: TelemetryCore) -> None:
    cfg = core.cfg
    assert cfg.stale_after(None) == 60
    assert cfg.stale_after(10) == 60
    assert cfg.stale_after(30) == 90  # 3 × interval when longer than the floor


def test_disconnected_station_is_stale_immediately(core: TelemetryCore) -> None:
    core.on_station_event(event("S3", T0 + 1, disconnected=station_pb2.Disconnected(reason="x")), T0 + 1)
    v = core.node_loads(T0 + 2)["panel"]
    assert v.stale_sources == 2  # both EVSEs of S3
    # EVSE 1: 32 A on L1, L2, L3; EVSE 2: 16 A on L1
    assert approx3(v.worst_case_w, (48 * V, 32 * V, 32 * V))


def test_unknown_station_with_no_report_is_worst_case() -> None:
    c = TelemetryCore(topology())
    v = c.node_loads(T0)["panel"]
    # S1 32 A on every phase, S3: 32 A on every phase + 16 A on L1
    assert approx3(v.worst_case_w, (80 * V, 64 * V, 64 * V))
    assert approx3(v.load_w, (0, 0, 0))


def test_accepted_profile_lowers_worst_case(core: TelemetryCore) -> None:
    core.on_command(set_profile("S1", 1, 10.0, "cmd-a"), T0 + 1)
    assert core.on_command_result(result("S1", "cmd-a", command_pb2.COMMAND_OUTCOME_ACCEPTED), T0 + 2) is Outcome.OK
    core.on_station_event(event("S1", T0 + 3, disconnected=station_pb2.Disconnected()), T0 + 3)
    v = core.node_loads(T0 + 4)["panel"]
    # S1 (disconnected) at its accepted 10 A on every phase; S3 is alive and Available: its measured 0
    assert approx3(v.worst_case_w, (10 * V, 10 * V, 10 * V))
    assert v.stale_sources == 1


def test_rejected_or_timed_out_profile(core: TelemetryCore) -> None:
    core.on_command(set_profile("S1", 1, 10.0, "a"), T0)
    core.on_command_result(result("S1", "a", command_pb2.COMMAND_OUTCOME_ACCEPTED), T0)
    core.on_command(set_profile("S1", 1, 8.0, "b"), T0)
    core.on_command_result(result("S1", "b", command_pb2.COMMAND_OUTCOME_REJECTED), T0)
    s1 = core.topo.station_by_id["S1"]
    assert core.worst_case_a(s1, 1, T0) == 10.0
    core.on_command(set_profile("S1", 1, 8.0, "c"), T0)
    core.on_command_result(result("S1", "c", command_pb2.COMMAND_OUTCOME_TIMEOUT), T0)
    assert core.worst_case_a(s1, 1, T0) == 32.0  # unknown -> hardware max
    st = core.stations["S1"]
    assert st.pending == {}


def test_station_wide_limit_in_watts_caps_station_worst_case(core: TelemetryCore) -> None:
    cmd = set_profile("S3", 0, 0, "sw", purpose=command_pb2.PROFILE_PURPOSE_STATION_MAX)
    cmd.set_charging_profile.profile.rate_unit = common_pb2.RATE_UNIT_W
    cmd.set_charging_profile.profile.periods[0].limit = 3 * 20 * V  # 20 A per phase on 3 phases
    core.on_command(cmd, T0)
    core.on_command_result(result("S3", "sw", command_pb2.COMMAND_OUTCOME_ACCEPTED), T0)
    assert core.stations["S3"].limits["station_max"][0] == pytest.approx(20.0)
    core.on_station_event(event("S3", T0 + 1, disconnected=station_pb2.Disconnected()), T0 + 1)
    v = core.node_loads(T0 + 2)["panel"]
    assert approx3(v.worst_case_w, (20 * V, 20 * V, 20 * V))


def test_tx_over_tx_default_and_evse0_default_per_evse(core: TelemetryCore) -> None:
    s3 = core.topo.station_by_id["S3"]
    # TxDefault on evse 0 applies to EACH EVSE (not a station total)
    core.on_command(set_profile("S3", 0, 6.0, "d", purpose=command_pb2.PROFILE_PURPOSE_TX_DEFAULT), T0)
    core.on_command_result(result("S3", "d", command_pb2.COMMAND_OUTCOME_ACCEPTED), T0)
    assert core.worst_case_a(s3, 1, T0) == 6.0 and core.worst_case_a(s3, 2, T0) == 6.0
    core.on_station_event(event("S3", T0 + 1, disconnected=station_pb2.Disconnected()), T0 + 1)
    assert approx3(core.node_loads(T0 + 2)["panel"].worst_case_w, (12 * V, 6 * V, 6 * V))
    # a TX lease above the default: worst case is the lease while valid, then the default again
    tx = set_profile("S3", 1, 20.0, "t")
    tx.set_charging_profile.profile.valid_to.CopyFrom(to_timestamp(T0 + 300))
    core.on_command(tx, T0)
    core.on_command_result(result("S3", "t", command_pb2.COMMAND_OUTCOME_ACCEPTED), T0)
    assert core.worst_case_a(s3, 1, T0 + 10) == 20.0
    assert core.worst_case_a(s3, 1, T0 + 301) == 6.0
    # a lower TxDefault sent later does not hide the TX lease still in force
    core.on_command(set_profile("S3", 1, 4.0, "d2", purpose=command_pb2.PROFILE_PURPOSE_TX_DEFAULT), T0 + 20)
    core.on_command_result(result("S3", "d2", command_pb2.COMMAND_OUTCOME_ACCEPTED), T0 + 20)
    assert core.worst_case_a(s3, 1, T0 + 30) == 20.0
    # ClearChargingProfile of everything: unknown -> hardware max
    clear = command_pb2.StationCommand(
        command_id="x", station_id="S3", clear_charging_profile=command_pb2.ClearChargingProfile(evse_id=-1)
    )
    core.on_command(clear, T0 + 40)
    core.on_command_result(result("S3", "x", command_pb2.COMMAND_OUTCOME_ACCEPTED), T0 + 40)
    assert core.worst_case_a(s3, 1, T0 + 41) == 32.0 and core.worst_case_a(s3, 2, T0 + 41) == 16.0


def test_expired_profile_reverts_to_hardware_max(core: TelemetryCore) -> None:
    cmd = set_profile("S2", 1, 6.0, "e")
    cmd.set_charging_profile.profile.valid_to.CopyFrom(to_timestamp(T0 + 100))
    core.on_command(cmd, T0)
    core.on_command_result(result("S2", "e", command_pb2.COMMAND_OUTCOME_ACCEPTED), T0)
    s2 = core.topo.station_by_id["S2"]
    assert core.worst_case_a(s2, 1, T0 + 50) == 6.0
    assert core.worst_case_a(s2, 1, T0 + 101) == 16.0


@pytest.mark.parametrize(
    "values, reason",
    [
        ((sv("Power.Active.Import", float("nan"), "L1", "W"),), "non-finite"),
        ((sv("Power.Active.Import", -500, "L1", "W"),), "negative"),
        ((sv("Current.Import", 40, "L1", "A"),), "above allowed"),  # 16 A station
        ((sv("Power.Active.Import", 20000, "", "W"),), "above allowed"),
        ((sv("Current.Import", 8, "L1", "A"), sv("Current.Import", 8, "L2", "A")), "phase map has 1"),
    ],
)
def test_implausible_readings_are_flagged_and_not_trusted(core: TelemetryCore, values: tuple, reason: str) -> None:
    core.on_meter_values(mv("S2", 1, T0 + 1, sv("Power.Active.Import", 1000, "L1", "W")), T0 + 1)
    assert core.on_meter_values(mv("S2", 1, T0 + 2, *values), T0 + 2) is Outcome.IMPLAUSIBLE
    ev = core.evses[("S2", 1)]
    assert ev.implausible and reason in ev.implausible_reason
    assert approx3(ev.power_w, (0, 0, 1000))  # last trusted value kept
    v = core.node_loads(T0 + 3)["trafo"]
    assert v.implausible_sources == 1
    assert v.worst_case_w[2] >= 16 * V  # untrusted -> worst case
    # a plausible reading clears the flag
    assert core.on_meter_values(mv("S2", 1, T0 + 4, sv("Power.Active.Import", 900, "L1", "W")), T0 + 4) is Outcome.OK
    assert not core.evses[("S2", 1)].implausible


def test_small_negative_noise_is_clamped(core: TelemetryCore) -> None:
    assert core.on_meter_values(mv("S2", 1, T0 + 1, sv("Power.Active.Import", -20, "L1", "W")), T0 + 1) is Outcome.OK
    assert approx3(core.evses[("S2", 1)].power_w, (0, 0, 0))


def test_accepted_limit_tightens_plausibility_after_grace(core: TelemetryCore) -> None:
    core.on_command(set_profile("S1", 1, 10.0, "g"), T0)
    core.on_command_result(result("S1", "g", command_pb2.COMMAND_OUTCOME_ACCEPTED), T0)
    high = mv("S1", 1, T0 + 5, sv("Current.Import", 20, "L1", "A"))
    assert core.on_meter_values(high, T0 + 5) is Outcome.OK  # within grace
    high2 = mv("S1", 1, T0 + 40, sv("Current.Import", 20, "L1", "A"))
    assert core.on_meter_values(high2, T0 + 40) is Outcome.IMPLAUSIBLE  # 20 A > 10 A + margin


def test_energy_register_backwards_is_implausible(core: TelemetryCore) -> None:
    core.on_station_event(
        event(
            "S2",
            T0,
            transaction_started=station_pb2.TransactionStarted(transaction_id="t", evse_id=1, meter_start_wh=1000),
        ),
        T0,
    )
    assert (
        core.on_meter_values(mv("S2", 1, T0 + 1, sv("Energy.Active.Import.Register", 1500, "", "Wh")), T0 + 1)
        is Outcome.OK
    )
    assert core.evses[("S2", 1)].session_energy_wh == 500
    assert core.on_meter_values(mv("S2", 1, T0 + 2, sv("", 1200, "", "Wh")), T0 + 2) is Outcome.IMPLAUSIBLE


def test_session_lifecycle_and_energy_delivered(core: TelemetryCore) -> None:
    core.on_station_event(
        event(
            "S2",
            T0,
            transaction_started=station_pb2.TransactionStarted(transaction_id="t9", evse_id=1, meter_start_wh=1000),
        ),
        T0,
    )
    core.on_meter_values(
        mv(
            "S2",
            1,
            T0 + 10,
            sv("Power.Active.Import", 3000, "L1", "W"),
            sv("Energy.Active.Import.Register", 3.5, "", "kWh"),
        ),
        T0 + 10,
    )
    ev = core.evses[("S2", 1)]
    assert ev.charging and ev.transaction_id == "t9" and ev.session_energy_wh == 2500
    core.on_station_event(
        event(
            "S2",
            T0 + 20,
            transaction_ended=station_pb2.TransactionEnded(transaction_id="t9", evse_id=1, meter_stop_wh=4000),
        ),
        T0 + 20,
    )
    assert ev.energy_delivered_wh == 3000 and not ev.charging
    assert approx3(ev.power_w, (0, 0, 0))


def test_charging_evse_without_meter_values_goes_stale(core: TelemetryCore) -> None:
    core.on_station_event(
        event("S2", T0, transaction_started=station_pb2.TransactionStarted(transaction_id="t", evse_id=1)), T0
    )
    core.on_meter_values(mv("S2", 1, T0 + 1, sv("Power.Active.Import", 3000, "L1", "W")), T0 + 1)
    for t in range(10, 120, 10):  # the station heartbeats but meter values stop
        core.on_station_event(heartbeat("S2", T0 + t), T0 + t)
    ev, st = core.evses[("S2", 1)], core.stations["S2"]
    assert not core.evse_stale(ev, st, T0 + 50)
    assert core.evse_stale(ev, st, T0 + 110)


def test_late_and_out_of_order_readings_are_stale(core: TelemetryCore) -> None:
    assert core.on_meter_values(phase_power("S2", 1, T0 + 10, 1000), T0 + 10) is Outcome.OK
    assert core.on_meter_values(phase_power("S2", 1, T0 + 5, 9000), T0 + 11) is Outcome.STALE
    assert core.on_meter_values(phase_power("S2", 1, T0 + 20, 2000), T0 + 200) is Outcome.STALE
    assert approx3(core.evses[("S2", 1)].power_w, (0, 0, 1000))


def test_implausible_grid_meter(core: TelemetryCore) -> None:
    assert core.on_grid_reading(grid("trafo", T0, 1e9, 0, 0), T0) is Outcome.IMPLAUSIBLE
    assert core.on_grid_reading(grid("trafo", T0 + 1, float("nan"), 0, 0), T0 + 1) is Outcome.IMPLAUSIBLE
    assert core.on_grid_reading(grid("nowhere", T0, 1, 1, 1), T0) is Outcome.IMPLAUSIBLE
    v = core.node_loads(T0 + 2)["trafo"]
    assert not v.meter_fresh and v.implausible_sources == 1
    # PV export (negative power) is plausible on a grid meter
    assert core.on_grid_reading(grid("trafo", T0 + 3, -2000, -2000, -2000), T0 + 3) is Outcome.OK


def test_unknown_station_and_evse(core: TelemetryCore) -> None:
    assert core.on_meter_values(phase_power("nope", 1, T0, 1), T0) is Outcome.IMPLAUSIBLE
    assert core.on_meter_values(phase_power("S1", 7, T0, 1), T0) is Outcome.IMPLAUSIBLE


def test_ambient_from_meter_stations_and_weather() -> None:
    c = TelemetryCore(topology())
    assert math.isnan(c.node_loads(T0)["panel"].ambient_c)
    w = forecast_pb2.WeatherForecast(
        site_id="site", start=to_timestamp(T0 - 900), step_s=900, temperature_c=[10, 12, 14]
    )
    c.on_weather(w, T0)
    assert c.node_loads(T0)["panel"].ambient_c == 12
    c.on_meter_values(mv("S1", 1, T0, sv("Temperature", 20, "", "Celsius", "Body")), T0)
    c.on_meter_values(
        mv("S3", 1, T0, sv("Temperature", 24, "", "Celsius", "Outlet"), sv("Temperature", 40, "", "Celsius", "EV")), T0
    )
    views = c.node_loads(T0)
    assert views["panel"].ambient_c == 22
    c.on_grid_reading(grid("trafo", T0, 0, 0, 0, ambient=31.5), T0)
    views = c.node_loads(T0 + 1)
    assert views["trafo"].ambient_c == 31.5
    assert views["panel"].ambient_c == 22


def test_state_round_trips_through_export_restore(core: TelemetryCore) -> None:
    core.on_meter_values(phase_power("S1", 1, T0 + 1, 1000, 2000, 3000), T0 + 1)
    core.on_grid_reading(grid("trafo", T0 + 1, 5000, 6000, 7000), T0 + 1)
    core.on_command(set_profile("S1", 1, 10.0, "x"), T0 + 1)
    dirty = core.take_dirty()
    assert {"evse/S1/1", "meter/trafo/m1", "station/S1"} <= dirty
    fresh = TelemetryCore(topology())
    import json

    for key in core.keys():
        data = core.export(key)
        assert data is not None
        assert fresh.restore(key, json.loads(json.dumps(data)))
    assert repr(fresh.node_loads(T0 + 2)) == repr(core.node_loads(T0 + 2))  # repr: NaN != NaN
    assert fresh.stations["S1"].pending["x"]["limit_a"] == 10.0
    assert not fresh.restore("evse/S1/1", {"station_id": "S1", "evse_id": "x", "bogus": 1})


# ---------------------------------------------------------------- EV draw between meter values after a cut
def _accept(
    core: TelemetryCore,
    station: str,
    evse: int,
    limit_a: float,
    cid: str,
    at: float,
    purpose: command_pb2.ProfilePurpose.ValueType = command_pb2.PROFILE_PURPOSE_STATION_MAX,
    stack: int = 1,
    until: float | None = T0 + 1200,
) -> None:
    """A profile (by default a stack-1 lease ending at T0 + 1200) sent and accepted at `at`."""
    cmd = set_profile(station, evse, limit_a, cid, purpose=purpose)
    cmd.set_charging_profile.profile.stack_level = stack
    if until is not None:
        cmd.set_charging_profile.profile.valid_to.CopyFrom(to_timestamp(until))
    core.on_command(cmd, at)
    core.on_command_result(result(station, cid, command_pb2.COMMAND_OUTCOME_ACCEPTED), at)


def _charging_s2(core: TelemetryCore, amps: float, base_l3: float) -> None:
    """S2 (single-phase, grid L3, under the metered trafo) charges at `amps` at T0+1; the meter sees it."""
    core.on_station_event(
        event(
            "S2",
            T0,
            transaction_started=station_pb2.TransactionStarted(transaction_id="t", evse_id=1, meter_start_wh=0),
        ),
        T0,
    )
    core.on_meter_values(phase_power("S2", 1, T0 + 1, amps * V, tx="t"), T0 + 1)
    core.on_grid_reading(grid("trafo", T0 + 1, 2000, 2000, base_l3 + amps * V), T0 + 1)
    assert core.node_loads(T0 + 1)["trafo"].base_load_w[2] == pytest.approx(base_l3)


def test_base_load_stays_put_after_an_accepted_cut(core: TelemetryCore) -> None:
    """The issue's case: a station-cap lease lowers S2 from 16 A to 8 A; the meter falls with the EV, the
    station's next MeterValues is 30-60 s away. Base = meter − EV must not drop by the cut."""
    base = 5000.0
    _charging_s2(core, 16.0, base)
    _accept(core, "S2", 0, 8.0, "cut", T0 + 10)
    core.on_grid_reading(grid("trafo", T0 + 16, 2000, 2000, base + 8 * V), T0 + 16)  # the EV followed
    v = core.node_loads(T0 + 16)["trafo"]
    assert v.base_load_w[2] == pytest.approx(base, abs=50)
    assert v.ev_load_w[2] == pytest.approx(8 * V)
    assert approx3(v.worst_case_w, v.load_w)  # all sources trusted: the worst case is the meter
    s2 = core.topo.station_by_id["S2"]
    assert core.worst_case_a(s2, 1, T0 + 16) == 8.0  # the worst-case path is unchanged


def test_estimate_waits_for_the_ev_to_follow_and_trusts_later_samples(core: TelemetryCore) -> None:
    _charging_s2(core, 16.0, 5000.0)
    _accept(core, "S2", 0, 8.0, "cut", T0 + 10)
    assert core.node_loads(T0 + 12)["trafo"].ev_load_w[2] == pytest.approx(16 * V)  # within ev_follow_s
    assert core.node_loads(T0 + 15)["trafo"].ev_load_w[2] == pytest.approx(8 * V)
    # a renewal at the same limit does not reopen the window
    _accept(core, "S2", 0, 8.0, "renewal", T0 + 20)
    assert core.node_loads(T0 + 21)["trafo"].ev_load_w[2] == pytest.approx(8 * V)
    # a sample taken after the EV had time to follow is the truth, even a little above the limit
    core.on_meter_values(phase_power("S2", 1, T0 + 25, 8.5 * V, tx="t"), T0 + 25)
    assert core.node_loads(T0 + 26)["trafo"].ev_load_w[2] == pytest.approx(8.5 * V)
    # a longer follow time is a setting
    slow = TelemetryCore(topology(), TelemetryConfig(ev_follow_s=10.0))
    slow.on_station_event(heartbeat("S2", T0), T0)
    _charging_s2(slow, 16.0, 5000.0)
    _accept(slow, "S2", 0, 8.0, "cut", T0 + 10)
    assert slow.node_loads(T0 + 16)["trafo"].ev_load_w[2] == pytest.approx(16 * V)
    assert slow.node_loads(T0 + 20)["trafo"].ev_load_w[2] == pytest.approx(8 * V)


def test_tx_cut_and_expired_lease(core: TelemetryCore) -> None:
    _charging_s2(core, 16.0, 5000.0)
    _accept(core, "S2", 1, 10.0, "tx", T0 + 10, purpose=command_pb2.PROFILE_PURPOSE_TX)
    assert core.node_loads(T0 + 20)["trafo"].ev_load_w[2] == pytest.approx(10 * V)
    # after the lease ends nothing caps the EV any more: the last sample is the estimate again
    assert core.node_loads(T0 + 1201)["trafo"].ev_load_w[2] == pytest.approx(16 * V)


def test_station_max_is_shared_by_the_stations_evses(core: TelemetryCore) -> None:
    """S3 (unmetered panel): EVSE 1 three-phase, EVSE 2 single-phase on grid L1, both at 16 A. The station
    max caps each EVSE and their sum per phase; a Tx limit caps its own EVSE only."""
    core.on_meter_values(phase_power("S3", 1, T0 + 1, 16 * V, 16 * V, 16 * V), T0 + 1)
    core.on_meter_values(phase_power("S3", 2, T0 + 1, 16 * V), T0 + 1)
    assert approx3(core.node_loads(T0 + 1)["panel"].ev_load_w, (32 * V, 16 * V, 16 * V))
    _accept(core, "S3", 0, 20.0, "max", T0 + 10)
    v = core.node_loads(T0 + 16)["panel"]
    assert approx3(v.ev_load_w, (20 * V, 16 * V, 16 * V), abs_=1e-3)
    assert approx3(v.load_w, v.ev_load_w, abs_=1e-3)
    _accept(core, "S3", 1, 10.0, "tx1", T0 + 20, purpose=command_pb2.PROFILE_PURPOSE_TX)
    v = core.node_loads(T0 + 26)["panel"]
    assert approx3(v.ev_load_w, (20 * V, 10 * V, 10 * V), abs_=1e-3)  # L1: 10 + 16 capped at 20
    _accept(core, "S3", 0, 12.0, "max2", T0 + 30)
    v = core.node_loads(T0 + 36)["panel"]
    assert approx3(v.ev_load_w, (12 * V, 10 * V, 10 * V), abs_=1e-3)
    assert approx3(v.worst_case_w, (32 * V, 16 * V, 16 * V), abs_=1e-3)  # worst case: measured, unchanged


def test_base_load_stays_put_after_an_accepted_raise(core: TelemetryCore) -> None:
    """The mirror case: S2 charges at its 8 A lease; the lease is raised to 16 A and the EV takes it. An EV
    that drew its limit draws the new one; base = meter − EV stays put."""
    base = 5000.0
    core.on_station_event(
        event(
            "S2",
            T0,
            transaction_started=station_pb2.TransactionStarted(transaction_id="t", evse_id=1, meter_start_wh=0),
        ),
        T0,
    )
    _accept(core, "S2", 0, 8.0, "lease", T0)
    core.on_meter_values(phase_power("S2", 1, T0 + 10, 7.9 * V, tx="t"), T0 + 10)
    core.on_grid_reading(grid("trafo", T0 + 10, 0, 0, base + 7.9 * V), T0 + 10)
    assert core.node_loads(T0 + 10)["trafo"].base_load_w[2] == pytest.approx(base)
    _accept(core, "S2", 0, 16.0, "raise", T0 + 20)
    # a raise counts at once: while the EV ramps up the estimate errs high and the base low, never high
    assert core.node_loads(T0 + 20)["trafo"].ev_load_w[2] == pytest.approx(16 * V)
    core.on_grid_reading(grid("trafo", T0 + 26, 0, 0, base + 16 * V), T0 + 26)
    v = core.node_loads(T0 + 26)["trafo"]
    assert v.base_load_w[2] == pytest.approx(base, abs=50)
    assert v.ev_load_w[2] == pytest.approx(16 * V)


def test_an_ev_below_its_limit_keeps_its_sample_after_a_raise(core: TelemetryCore) -> None:
    core.on_station_event(
        event(
            "S2",
            T0,
            transaction_started=station_pb2.TransactionStarted(transaction_id="t", evse_id=1, meter_start_wh=0),
        ),
        T0,
    )
    _accept(core, "S2", 0, 8.0, "lease", T0)
    core.on_meter_values(phase_power("S2", 1, T0 + 10, 4 * V, tx="t"), T0 + 10)  # tapering: 4 A of 8
    _accept(core, "S2", 0, 16.0, "raise", T0 + 20)
    assert core.node_loads(T0 + 26)["trafo"].ev_load_w[2] == pytest.approx(4 * V)
    _accept(core, "S2", 0, 3.0, "cut", T0 + 30)  # a cut below it still caps
    assert core.node_loads(T0 + 36)["trafo"].ev_load_w[2] == pytest.approx(3 * V)


def test_station_max_per_stack_level_the_lease_over_the_fallback(core: TelemetryCore) -> None:
    """The allocator's fallback (stack 0, no end) and station-cap lease (stack 1, until T0+1200): the lease
    is in force while valid, whatever order the two were accepted in; then the fallback again."""
    s2 = core.topo.station_by_id["S2"]
    core.on_station_event(
        event(
            "S2",
            T0,
            transaction_started=station_pb2.TransactionStarted(transaction_id="t", evse_id=1, meter_start_wh=0),
        ),
        T0,
    )
    _accept(core, "S2", 0, 6.0, "fallback", T0, stack=0, until=None)
    _accept(core, "S2", 0, 16.0, "lease", T0 + 1)
    core.on_meter_values(phase_power("S2", 1, T0 + 10, 16 * V, tx="t"), T0 + 10)
    # the fallback is rewritten (an idle floor released to 0 A): the lease still caps the station
    _accept(core, "S2", 0, 0.0, "fallback2", T0 + 20, stack=0, until=None)
    assert core.worst_case_a(s2, 1, T0 + 30) == 16.0
    assert core.node_loads(T0 + 30)["trafo"].ev_load_w[2] == pytest.approx(16 * V)
    # the lease lapses: the station is back at its fallback (0 A; the worst case keeps the station's floor)
    assert core.worst_case_a(s2, 1, T0 + 1201) == 6.0
    assert core.node_loads(T0 + 1201)["trafo"].ev_load_w[2] == pytest.approx(16 * V)  # the EV follows in 5 s
    assert core.node_loads(T0 + 1206)["trafo"].ev_load_w[2] == pytest.approx(0.0)
    # a timed-out station max makes every level unknown: hardware max
    cmd = set_profile("S2", 0, 8.0, "lost", purpose=command_pb2.PROFILE_PURPOSE_STATION_MAX)
    cmd.set_charging_profile.profile.stack_level = 1
    core.on_command(cmd, T0 + 1300)
    core.on_command_result(result("S2", "lost", command_pb2.COMMAND_OUTCOME_TIMEOUT), T0 + 1300)
    assert core.worst_case_a(s2, 1, T0 + 1301) == 16.0 and not core.stations["S2"].limits


def test_base_load_holds_while_the_ev_follows_a_cut(core: TelemetryCore) -> None:
    """Within `ev_follow_s` of a cut the EV may already have followed (the meter falls at once) or not yet:
    the meter decides, as far as the EV's move between its old and new draw explains it."""
    base = 5000.0
    _charging_s2(core, 16.0, base)  # steady: base known at T0+1
    _accept(core, "S2", 0, 8.0, "cut", T0 + 10)
    core.on_grid_reading(grid("trafo", T0 + 11, 2000, 2000, base + 8 * V), T0 + 11)  # followed within 1 s
    v = core.node_loads(T0 + 11)["trafo"]
    assert v.base_load_w[2] == pytest.approx(base, abs=1)
    assert v.ev_load_w[2] == pytest.approx(8 * V)
    # a base load that rises meanwhile is not hidden: beyond the EV's old draw the meter is base
    core.on_grid_reading(grid("trafo", T0 + 12, 2000, 2000, base + 3000 + 16 * V), T0 + 12)
    assert core.node_loads(T0 + 12)["trafo"].base_load_w[2] == pytest.approx(base + 3000, abs=1)
    # the EV has followed, the meter has not reported since: the base the meter proved stays
    assert core.node_loads(T0 + 16)["trafo"].base_load_w[2] == pytest.approx(base + 3000, abs=1)


def test_a_reading_older_than_a_cut_is_not_new_base_load(core: TelemetryCore) -> None:
    """The grid meter's last reading (20 % over, say) predates the cut it caused, and the meter is slow: once the
    EV had time to follow, the load is the base the reading showed plus what the EV is now told — not the old
    reading with the cut counted as base load (the allocator would cut again on it, a second round)."""
    base = 5000.0
    _charging_s2(core, 16.0, base)  # reading at T0+1, fresh for a minute
    _accept(core, "S2", 0, 8.0, "cut", T0 + 10)
    v = core.node_loads(T0 + 16)["trafo"]
    assert v.base_load_w[2] == pytest.approx(base, abs=1)
    assert v.load_w[2] == pytest.approx(base + 8 * V, abs=1)
    # a raise, still without a reading: the load counts it at once, the base does not fall by it
    _accept(core, "S2", 0, 16.0, "raise", T0 + 20)
    v = core.node_loads(T0 + 21)["trafo"]
    assert v.base_load_w[2] == pytest.approx(base, abs=1)
    assert v.load_w[2] == pytest.approx(base + 16 * V, abs=1)
    # the meter's next reading is the truth again: a base load that rose meanwhile shows at once
    core.on_grid_reading(grid("trafo", T0 + 22, 2000, 2000, base + 2000 + 16 * V), T0 + 22)
    v = core.node_loads(T0 + 22)["trafo"]
    assert v.base_load_w[2] == pytest.approx(base + 2000, abs=1)
    assert v.load_w[2] == pytest.approx(base + 2000 + 16 * V, abs=1)


def test_a_base_from_an_older_reading_never_replaces_a_newer_reading(core: TelemetryCore) -> None:
    """The base kept for a reading older than a cut must come from that reading: when the EVs were following
    cuts for longer than the base may be held, a new reading (base up 3 kW) is not hidden behind the base of
    the reading before it."""
    base = 5000.0
    _charging_s2(core, 16.0, base)  # the base of the reading at T0+1 is known
    _accept(core, "S2", 0, 8.0, "cut", T0 + 100)
    core.on_grid_reading(grid("trafo", T0 + 102, 2000, 2000, base + 3000 + 16 * V), T0 + 102)  # EV not yet
    core.node_loads(T0 + 102)
    v = core.node_loads(T0 + 106)["trafo"]  # the EV had time to follow; no reading since T0+102
    assert v.base_load_w[2] >= base + 3000 - 1
    assert v.load_w[2] >= base + 3000 + 8 * V - 1
