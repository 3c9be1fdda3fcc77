"""Grid signals in scenarios: the messages the OpenADR VEN and the §14a control box would publish (pure), and
the grid-signals demo on the embedded cluster: both limits bind the allocator (its binding constraint names the
source) and the nodes stay under them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from gridcharge.shared.errors import ConfigError
from gridcharge.simulator.demo import run_demo
from gridcharge.simulator.grid_signals import GridSignals, signal_label
from gridcharge.simulator.scenario import SCENARIO_DIR, build_scenario, load_scenario
from gridcharge.simulator.summary import format_summary


def scenario_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SCENARIO_DIR / "grid-signals.yaml").read_text(encoding="utf-8"))
    return data


def test_shipped_scenario_and_its_signals() -> None:
    sc = load_scenario("grid-signals")
    openadr, dim = sc.grid_signals
    assert (openadr.kind, openadr.node, openadr.limit_w) == ("openadr", "feeder", (12000.0, 12000.0, 12000.0))
    assert openadr.at_s - openadr.announce_s == 7200
    assert (dim.kind, dim.node, dim.devices, dim.end_s - dim.at_s) == ("§14a", "site-b", 4, 5400)


def test_signal_messages_as_the_interfaces_publish_them() -> None:
    sc = load_scenario("grid-signals")
    gs = GridSignals(sc.grid_signals, sc.topology)
    openadr, dim = sc.grid_signals
    assert gs.step(openadr.announce_s - 20) == []
    ((key, m),) = gs.step(openadr.announce_s)  # announced once, two hours ahead
    assert (key, m.source, m.limit_id, m.node_id) == ("feeder", "openadr", "openadr:feeder-peak-1", "feeder")
    assert (m.valid_from.ToSeconds(), m.valid_to.ToSeconds()) == (openadr.at_s, openadr.end_s)
    assert gs.step(openadr.announce_s + 20) == []
    ((key, m),) = gs.step(dim.at_s)  # the relay closes
    assert (key, m.source, m.limit_id) == ("site-b/§14a", "§14a", "§14a")
    assert m.limit_w.l1 * 3 == pytest.approx(4200 + 3 * 4200 * 0.7)  # 4 devices behind an EMS: 13.02 kW
    assert gs.step(dim.at_s + 20) == []
    assert len(gs.step(dim.at_s + 40)) == 1  # refreshed every 30 s like the service
    ((key, m),) = gs.step(dim.end_s)  # the relay opens: withdrawn
    assert m.valid_to == m.valid_from
    assert gs.limit_at("site-b", dim.at_s + 1) == ((4340.0, 4340.0, 4340.0), "§14a")
    assert gs.limit_at("feeder", openadr.at_s) == ((12000.0, 12000.0, 12000.0), "openadr")
    assert gs.limit_at("feeder", openadr.end_s) is None
    assert [
        signal_label(s)
        for s in ("external:§14a", "budget:external:openadr:x", "external:sim-grid-1", "headroom:forecast", "")
    ] == ["§14a", "openadr", "dso", "headroom", "none"]


@pytest.mark.parametrize(
    ("signal", "key"),
    [
        ({"kind": "openadr", "node": "nowhere", "at": "11:00", "limit_kw": 5}, r"grid_signals\[0\]\.node"),
        ({"kind": "openadr", "node": "feeder", "at": "11:00"}, "limit_kw or pct"),
        ({"kind": "§14a", "node": "site-b", "at": "11:00", "until": "10:00"}, "ends before it starts"),
        ({"kind": "ripple", "node": "site-b", "at": "11:00"}, r"grid_signals\.0\.kind"),
        ({"kind": "§14a", "node": "site-b", "at": "11:00", "devices": 0}, r"grid_signals\.0\.devices"),
    ],
)
def test_bad_signals_name_the_key(signal: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_scenario({**scenario_data(), "grid_signals": [signal]}, "s.yaml")


async def test_grid_signals_demo_binds_both_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenario compressed to 2.5 h: the OpenADR event 11:00–11:45 on the feeder, the §14a dimming
    12:00–12:40 on site-b, the cars there from 10:30."""
    monkeypatch.delenv("GRIDCHARGE_TELEMETRY_SNAPSHOT_S", raising=False)
    data = scenario_data()
    data.update(start="2026-06-03T08:15:00Z", duration="150m")
    for f in data["fleet"]:
        f.update(arrival="10:30", arrival_std="10m", departure="16:00", departure_std="10m")
    data["grid_signals"] = [
        {
            "kind": "openadr",
            "node": "feeder",
            "at": "11:00",
            "until": "11:45",
            "limit_kw": 36,
            "announce": "30m",
            "event_id": "e1",
        },
        {"kind": "§14a", "node": "site-b", "at": "12:00", "until": "12:40", "devices": 4},
    ]
    sc = build_scenario(data, "grid-signals (test)")
    summary = await run_demo(sc, tmp_path, http_port=0, progress=False)
    openadr, dim = summary["grid_signals"]
    assert openadr["limit_kw"] == pytest.approx(36.0) and dim["limit_kw"] == pytest.approx(13.02)
    # the allocator names the source as the binding constraint for most of each window
    assert openadr["steps_binding"] >= 0.5 * openadr["steps"] and openadr["sessions_bound_max"] >= 2
    assert dim["steps_binding"] >= 0.5 * dim["steps"] and dim["sessions_bound_max"] >= 2
    # the nodes stay under the limits: an announced event at all times; the unannounced dimming after the
    # step in which the contact closed (the stations are cut within it)
    assert openadr["peak_kw"] <= 36.0 + 1e-6
    assert openadr["violations_first_minute"] == openadr["violations_later"] == dim["violations_later"] == 0
    assert summary["violations"] == dim["violations_first_minute"] <= 3 * 3  # at most the first minute
    assert dim["ev_energy_kwh"] > 0 and openadr["ev_energy_kwh"] > 0
    assert (tmp_path / "grid-signals.png").stat().st_size > 0
    assert "§14a" in format_summary(summary) and "openadr" in (tmp_path / "index.html").read_text(encoding="utf-8")
