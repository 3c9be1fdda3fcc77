"""The embedded demo on a shortened office scenario (what `make demo` runs, one simulated hour), scenarios
and the grid model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest
from gridcharge.shared.errors import ConfigError
from gridcharge.simulator.demo import SERVICES, cli_main, run_demo
from gridcharge.simulator.grid import base_load_shape
from gridcharge.simulator.scenario import build_scenario, load_scenario
from gridcharge.simulator.summary import format_summary


@pytest.mark.parametrize("name", ["office", "depot", "residential"])
def test_shipped_scenarios_load(name: str) -> None:
    sc = load_scenario(name)
    assert sc.visits and sc.end_s > sc.start_s
    assert all(v.station_id in sc.topology.station_by_id for v in sc.visits)
    assert load_scenario(name).visits[0].ev.arrival_s == sc.visits[0].ev.arrival_s  # deterministic


def test_bad_scenario_names_the_key() -> None:
    data = {
        "name": "x",
        "start": "2026-06-01T00:00:00Z",
        "topology": {"nodes": [{"id": "n", "limit_a": [1, 1, 1]}]},
        "events": [{"at": "10:00", "kind": "limit", "node": "nope", "pct": 50}],
    }
    with pytest.raises(ConfigError, match=r"events\[0\]\.node"):
        build_scenario(data, "s.yaml")
    with pytest.raises(ConfigError, match="fleet"):
        build_scenario({**data, "events": [], "fleet": [{"stations": "zzz*"}]}, "s.yaml")


def test_base_load_shapes_are_fractions() -> None:
    for prof in ("office", "residential", "depot", "flat"):
        assert all(0 <= base_load_shape(prof, h / 4) <= 1 for h in range(96))


async def test_demo_short_office_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDCHARGE_TELEMETRY_SNAPSHOT_S", raising=False)
    sc = load_scenario("office", start="2026-06-03T06:00:00Z", duration="40m")
    summary = await run_demo(sc, tmp_path, http_port=0, progress=False)
    assert "GRIDCHARGE_TELEMETRY_SNAPSHOT_S" not in os.environ  # the demo's setting does not leak out
    assert summary["services"] == sorted(SERVICES) == ["allocation", "forecasting", "gateway", "telemetry"]
    assert summary["stations_connected_at_start"] == 20
    assert summary["violations"] == 0
    assert summary["energy_total_kwh"] > 0
    for f in ("index.html", "node-grid.png", "node-carpark.png", "sessions.png", "summary.json", "sessions.csv"):
        assert (tmp_path / f).stat().st_size > 0
    text = format_summary(summary)
    assert "grid" in text and "limit violations" in text
    assert summary["profiles_accepted"] > 0
    # the offline optimum knows the future and ignores margins and fallbacks: an upper bound
    assert summary["offline_optimum_kwh"] >= summary["energy_delivered_kwh"] - 1e-6 > 0


async def test_demo_fails_when_allocation_does_not_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No demo without the allocator: a service that does not import stops the run before anything starts."""
    monkeypatch.setitem(sys.modules, "gridcharge.allocation.main", None)
    monkeypatch.delenv("GRIDCHARGE_TELEMETRY_SNAPSHOT_S", raising=False)
    sc = load_scenario("office", start="2026-06-03T06:00:00Z", duration="10m")
    with pytest.raises(ImportError, match=r"gridcharge\.allocation\.main"):
        await run_demo(sc, tmp_path, http_port=0, progress=False)
    assert os.listdir(tmp_path) == []  # no report of a run without allocation
    assert "GRIDCHARGE_TELEMETRY_SNAPSHOT_S" not in os.environ


async def test_residential_dso_window_is_never_crossed(tmp_path: Path) -> None:
    """The feeder limit drops to 60 % at 17:00 local (15:00 UTC), announced 3 h ahead: 24 fallbacks of 6 A
    (33 kW per phase) alone would exceed it, so the allocator must lower them and pause cars as needed."""
    sc = load_scenario("residential", start="2026-06-03T13:50:00Z", duration="150m")
    summary = await run_demo(sc, None, http_port=0, progress=False)
    assert {"gateway", "allocation"} <= set(summary["services"])
    assert summary["violations"] == 0, summary["nodes"]["feeder"]
    assert summary["energy_total_kwh"] > 5  # cars did charge in the window


def test_cli_main_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(
        scenario="residential",
        out=str(tmp_path / "r"),
        speed=None,
        http_port=0,
        no_progress=True,
        duration="10m",
        start=None,
    )
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "energy requested" in out and "feeder" in out
