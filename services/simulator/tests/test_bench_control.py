"""`gridcharge bench control`: the quick variant of each kind of case runs on the embedded cluster and yields
sane figures (behaviour, not speed), and the contract between the parent and the child process holds."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gridcharge.simulator import bench_control as bc


async def test_overload_detects_the_step_it_injected() -> None:
    res = await bc.case_overload(quick=True)
    f = res.figures
    assert f["stations_connected"] == 6
    # ground truth: the base load jumps by step_pct of the limit at T, and with it the load the meter shows
    s = bc.Series.of(res.run.sim, "tx")
    t_ev = res.run.sim.sc.start_s + 1200.0
    i = next(k for k, t in enumerate(s.t) if t >= t_ev)
    step = res.detail["step_pct"] / 100
    base = res.run.sim.rec.base_w["tx"]
    assert base[i][0] - base[i - 1][0] == pytest.approx(step * s.limit[i][0])
    assert s.ratio(i) == pytest.approx(s.ratio(i - 1) + step, abs=1e-6)
    # ... and the figures see the overshoot it injected
    assert f["peak_overshoot_pct"] >= 100 * (s.ratio(i) - 1) - 1e-6 > 0
    assert f["peak_overshoot_kw"] > 0 and f["seconds_over_limit"] > 0 and f["violation_steps"] >= 1
    assert f["recovery_s"] is None or f["recovery_s"] > 0
    # the writes counted are the stations' own log
    a, b = res.run.sim.sc.start_s + 600.0, res.run.sim.sc.start_s + 1800.0  # 20 min around T (20 min in)
    n = sum(1 for c in res.run.sim.clients.values() for t, _ok, _w in c.profile_log if a <= t < b)
    assert f["writes_per_station_hour"] == pytest.approx(n / 6 * 3600 / 1200)
    assert len(res.run.writes) == sum(len(c.profile_log) for c in res.run.sim.clients.values())


async def test_limit_raise_lets_the_cars_take_the_room() -> None:
    res = await bc.case_limit_raise(quick=True)
    f = res.figures
    assert f["level_before_pct"] <= 60.0 + 1e-6  # under the DSO limit of 60 % (ground truth)
    assert f["final_level_pct"] > f["level_before_pct"]  # the cars took some of the room (how fast: the bench)
    assert f["overshoot_pct"] >= 0 and f["seconds_over_limit"] >= 0
    assert f["rise_s"] is None or f["rise_s"] >= 0


async def test_fleet_idle_counts_writes_and_nothing_is_drawn() -> None:
    res = await bc.case_fleet_idle(quick=True)
    f = res.figures
    assert f["stations_connected"] == 8
    assert f["energy_kwh"] == 0 and f["ev_load_kw_mean"] == 0  # full cars draw nothing
    assert f["writes_per_station_startup"] > 0  # at least the fallbacks went out
    sim = res.run.sim
    t_m = sim.sc.start_s + 300.0
    n = sum(1 for c in sim.clients.values() for t, _ok, _w in c.profile_log if t >= t_m)
    assert f["writes_per_station_min"] == pytest.approx(n / 8 / 10)
    assert f["violation_steps"] == 0 and f["peak_load_pct"] < 100


async def test_quick_demo_reports_share_of_optimum() -> None:
    res = await bc.case_demo_office(quick=True)
    f = res.figures
    assert f["stations_connected"] == 20
    assert f["optimum_kwh"] > 0 and 0 < f["of_optimum_pct"] <= 100.5
    assert f["feasible_late"] >= 0 and f["writes_per_station_hour"] > 0
    assert set(bc.FIGURES["demo"]) <= set(f)
    assert isinstance(res.detail["late"], list) and len(res.detail["late"]) == f["feasible_late"]
    peak = res.detail["peak_hour"]
    assert sum(peak["kinds"].values()) == f["writes_peak_station_clock_hour"]


def test_child_process_contract() -> None:
    """The parent runs the file as a script (`-P`: its directory does not shadow packages) and reads one JSON
    document whose figures cover every row the parent shows."""
    r = subprocess.run(
        [sys.executable, "-P", str(bc.HARNESS), "--json", "--case", "fleet-idle", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env=bc.child_env(),
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = bc.parse_child_output(r.stdout)
    json.dumps(doc, allow_nan=False)
    assert doc["case"] == "fleet-idle" and doc["quick"] is True
    assert set(bc.figures_of("fleet-idle")) <= set(doc["figures"])
    assert Path(doc["modules"]["allocation"]).is_relative_to(bc.tree_root(bc.HARNESS))


def test_parse_child_output_rejects_foreign_output() -> None:
    good = {"contract": bc.CONTRACT, "case": "x", "figures": {"a": 1.0}}
    assert bc.parse_child_output("log line\n" + json.dumps(good) + "\n")["figures"] == {"a": 1.0}
    with pytest.raises(ValueError, match="spoke"):
        bc.parse_child_output(json.dumps({**good, "contract": "other/9"}))
    with pytest.raises(ValueError, match="no JSON"):
        bc.parse_child_output("Traceback ...\n")


def test_run_child_checks_which_code_it_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {
        "contract": bc.CONTRACT,
        "case": "overload",
        "figures": {"x": 1.0},
        "modules": {"allocation": "/elsewhere/services/allocation/src/gridcharge/allocation/__init__.py"},
    }

    def fake_run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[1:3] == ["-P", str(bc.HARNESS)] and "--json" in cmd
        assert not any(k.startswith("GRIDCHARGE_") for k in kw["env"])
        return subprocess.CompletedProcess(cmd, 0, json.dumps(doc) + "\n", "")

    monkeypatch.setenv("GRIDCHARGE_LOG_LEVEL", "DEBUG")
    monkeypatch.setattr(bc.subprocess, "run", fake_run)
    out = bc.run_child(bc.Version("before", "/usr/bin/python3", tmp_path), "overload", True, tmp_path, "0")
    assert out.doc is None and "not from" in out.error
    doc["modules"] = {"allocation": str(tmp_path / "services/allocation/src/gridcharge/allocation/__init__.py")}
    out = bc.run_child(bc.Version("before", "/usr/bin/python3", tmp_path), "overload", True, tmp_path, "0")
    assert out.doc is not None and out.doc["figures"] == {"x": 1.0}


def _doc(**figures: float | None) -> dict[str, Any]:
    return {
        "contract": bc.CONTRACT,
        "case": "c",
        "figures": figures,
        "detail": {"why": [{"station": "s01", "writes": 9, "kinds": {"lower Tx/evse1": 5, "raise Tx/evse1": 4}}]},
    }


def test_compare_report_and_record(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    def runner(version: bc.Version, case: str, quick: bool, logdir: Path, tag: str) -> bc.Outcome:
        calls.append((case, version.label))
        w = 0.4 if version.label == "before" else 0.05
        return bc.Outcome(
            case,
            version.label,
            _doc(
                writes_per_station_min=w + 0.01 * int(tag),
                writes_per_station_min_max=w,
                peak_load_pct=99.0,
                seconds_over_limit=0.0,
            ),
            real_s=1.0,
        )

    versions = {
        "before": bc.Version("before", "py", tmp_path, "28abc91"),
        "after": bc.Version("after", "py", tmp_path, "1d5f577"),
    }
    res = bc.compare(["fleet-idle"], versions, repeat=3, runner=runner, log=lambda _m: None)
    assert calls == [("fleet-idle", "before"), ("fleet-idle", "after")] * 3
    text = bc.report(["fleet-idle"], res, versions, 3, False, "gridcharge bench control --baseline X")
    assert "median of 3 runs" in text and "28abc91" in text and "1d5f577" in text
    row = next(x for x in text.splitlines() if x.startswith("| writes/station/min after start-up (mean)"))
    # medians (range of the runs), ratio of the medians, targets
    assert row.split("|")[2:6] == [" 0.410 (0.400–0.420) ", " 0.060 (0.050–0.070) ", " 0.15 ", " ≤ 0.2 (✗, ✓) "]
    row = next(x for x in text.splitlines() if x.startswith("| writes/station/min after start-up (busiest)"))
    assert row.split("|")[2:4] == [" 0.400 ", " 0.050 "]  # equal runs: no range
    assert "s01 got 9 writes" in text
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Control quality\n\nmethod\n\n## Gateway\n\ngw\n", encoding="utf-8")
    bc.record(text, doc)
    body = doc.read_text(encoding="utf-8")
    assert body.index("method") < body.index("### bench control") < body.index("## Gateway")


def test_median_and_never() -> None:
    m = bc.median_figures([_doc(a=1.0, b=None, c=None), _doc(a=3.0, b=2.0, c=None), _doc(a=2.0, b=2.0, c=5.0)])
    assert m == {"a": 2.0, "b": 2.0, "c": None}  # never = +inf
    assert bc._fmt(bc.Figure("x"), None) == "never"


def test_case_selection() -> None:
    assert bc.select_cases("step,demo-depot") == ["overload", "limit-raise", "demo-depot"]
    assert bc.select_cases(None) == list(bc.CASES)
    with pytest.raises(SystemExit, match="unknown case"):
        bc.select_cases("nope")


def test_cli_needs_a_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    from gridcharge.cli.main import main

    assert main(["bench", "control"]) == 2
    assert "--baseline" in capsys.readouterr().err
    assert bc.bench_main(argparse.Namespace(baseline="/nonexistent", baseline_ref=None, cases="overload")) == 2
