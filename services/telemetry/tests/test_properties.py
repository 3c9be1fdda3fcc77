"""Property tests of the core (Hypothesis, bounded examples): whatever arrives, nothing crashes, the worst
case never falls below the best estimate, phase mapping conserves power, and unknown is never zero."""

from __future__ import annotations

import math

import pytest
from gridcharge.command.v1 import command_pb2
from gridcharge.shared.codec import MeterSample
from gridcharge.shared.topology import PHASES
from gridcharge.station.v1 import station_pb2
from gridcharge.telemetry.core import TelemetryCore
from gridcharge.telemetry.core.config import TelemetryConfig
from gridcharge.telemetry.core.readings import to_grid
from gridcharge.telemetry.testing import T0, event, grid, heartbeat, mv, result, set_profile, status, sv, topology
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

STATIONS = {"S1": [1], "S2": [1], "S3": [1, 2]}
finite = st.floats(min_value=-1e5, max_value=1e5, allow_nan=False)
anyfloat = st.one_of(finite, st.just(math.nan), st.just(math.inf))


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, object, float]:
    t = T0 + draw(st.floats(min_value=0, max_value=2000))
    sid = draw(st.sampled_from([*STATIONS, "ghost"]))
    evse = draw(st.sampled_from([0, 1, 2, 3]))
    kind = draw(st.sampled_from(["mv", "status", "hb", "tx", "end", "disc", "grid", "cmd", "res"]))
    if kind == "mv":
        vals = draw(
            st.lists(
                st.builds(
                    sv,
                    st.sampled_from(
                        [
                            "Power.Active.Import",
                            "Current.Import",
                            "Voltage",
                            "Energy.Active.Import.Register",
                            "Temperature",
                            "",
                        ]
                    ),
                    anyfloat,
                    st.sampled_from(["", "L1", "L2", "L3", "N", "L1-N", "L2-L3"]),
                    st.sampled_from(["W", "kW", "A", "V", "Wh", ""]),
                ),
                max_size=6,
            )
        )
        return "mv", mv(sid, evse, t, *vals), t
    if kind == "status":
        return "ev", status(sid, evse, t, draw(st.sampled_from(["Available", "Charging", "Faulted", "x"]))), t
    if kind == "hb":
        return "ev", heartbeat(sid, t), t
    if kind == "tx":
        return (
            "ev",
            event(
                sid,
                t,
                transaction_started=station_pb2.TransactionStarted(
                    transaction_id="t", evse_id=evse, meter_start_wh=draw(anyfloat)
                ),
            ),
            t,
        )
    if kind == "end":
        return (
            "ev",
            event(
                sid,
                t,
                transaction_ended=station_pb2.TransactionEnded(
                    transaction_id="t", evse_id=evse, meter_stop_wh=draw(anyfloat)
                ),
            ),
            t,
        )
    if kind == "disc":
        return "ev", event(sid, t, disconnected=station_pb2.Disconnected()), t
    if kind == "grid":
        return (
            "grid",
            grid(draw(st.sampled_from(["trafo", "panel", "x"])), t, draw(anyfloat), draw(finite), draw(finite)),
            t,
        )
    if kind == "cmd":
        return (
            "cmd",
            set_profile(
                sid,
                evse,
                draw(anyfloat),
                draw(st.sampled_from(["a", "b"])),
                purpose=draw(st.sampled_from(list(command_pb2.ProfilePurpose.values()))),
            ),
            t,
        )
    return (
        "res",
        result(
            sid, draw(st.sampled_from(["a", "b"])), draw(st.sampled_from(list(command_pb2.CommandOutcome.values())))
        ),
        t,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), max_size=40), st.floats(min_value=0, max_value=3000))
def test_any_sequence_keeps_invariants(msgs: list[tuple[str, object, float]], later: float) -> None:
    core = TelemetryCore(topology())
    for kind, msg, t in sorted(msgs, key=lambda m: m[2]):
        if kind == "mv":
            core.on_meter_values(msg, t)  # type: ignore[arg-type]
        elif kind == "ev":
            core.on_station_event(msg, t)  # type: ignore[arg-type]
        elif kind == "grid":
            core.on_grid_reading(msg, t)  # type: ignore[arg-type]
        elif kind == "cmd":
            core.on_command(msg, t)  # type: ignore[arg-type]
        else:
            core.on_command_result(msg, t)  # type: ignore[arg-type]
    now = T0 + later
    views = core.node_loads(now)
    for v in views.values():
        for k in range(3):
            assert math.isfinite(v.load_w[k]) and math.isfinite(v.worst_case_w[k])
            assert v.worst_case_w[k] >= v.load_w[k] - 1e-6
            assert v.ev_load_w[k] >= 0
    for s in core.topo.stations:
        for e in s.evses:
            assert core.worst_case_a(s, e.id, now) >= min(s.fallback_current_a, core._hw_a(s, e.id))
    # a disconnected station raises its node's worst case to (at least) its worst-case draw
    core.on_station_event(event("S2", now, disconnected=station_pb2.Disconnected()), now)
    trafo = core.node_loads(now)["trafo"]
    s2_worst_w = core.worst_case_a(core.topo.station_by_id["S2"], 1, now) * 230.0
    s2_best_w = core.evses[("S2", 1)].power_w[2]
    assert s2_worst_w >= 6 * 230.0 - 1e-6  # never zero: at least the fallback current
    assert trafo.worst_case_w[2] >= trafo.load_w[2] + s2_worst_w - s2_best_w - 1e-6


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=7000), min_size=3, max_size=3), st.permutations(["L1", "L2", "L3"]))
def test_phase_mapping_conserves_power(powers: list[float], phase_map: list[str]) -> None:
    sample = MeterSample(power_ph=[powers[0], powers[1], powers[2]])
    g = to_grid(sample, tuple(phase_map), 230.0, 32.0, TelemetryConfig())  # type: ignore[arg-type]
    assert not g.problem
    assert sum(g.power_w) == pytest.approx(sum(powers))
    for i, ph in enumerate(phase_map):
        assert g.power_w[PHASES.index(ph)] == powers[i]
