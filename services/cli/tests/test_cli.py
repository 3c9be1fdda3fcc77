"""The `gridcharge` command: sub-commands exist, errors are one clear line, replay runs end to end."""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import types
from pathlib import Path

import gridcharge.allocation
import pytest
from gridcharge.allocation.bench import DEFAULT_SESSIONS
from gridcharge.allocation.cli import find_acn_sessions
from gridcharge.cli.main import build_parser, main


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridcharge.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_subcommands_named_in_the_architecture_exist() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"serve", "demo", "replay", "bench", "forecast"} <= set(sub.choices)


def test_serve_with_a_bad_topology_names_file_key_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("nodes:\n  - {id: a, limit_a: [10, 10, -5]}\n")
    r = run("serve", "--config", str(bad))
    assert r.returncode == 2
    assert f"{bad}: nodes[0]: limit must not be negative" in r.stderr


def test_unknown_service_is_rejected(tmp_path: Path) -> None:
    good = tmp_path / "t.yaml"
    good.write_text("nodes:\n  - {id: a, limit_a: [10, 10, 10]}\n")
    r = run("serve", "--config", str(good), "--services", "gateway,billing")
    assert r.returncode == 2 and "--services" in r.stderr


def test_a_missing_piece_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gridcharge.simulator.demo", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"gridcharge\.simulator\.demo"):
        main(["demo"])


def test_serve_fails_loudly_when_a_service_does_not_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "t.yaml"
    good.write_text("nodes:\n  - {id: a, limit_a: [10, 10, 10]}\n")
    monkeypatch.setitem(sys.modules, "gridcharge.allocation.main", None)
    with pytest.raises(ImportError, match=r"gridcharge\.allocation\.main"):
        main(["serve", "--config", str(good)])
    broken = types.ModuleType("gridcharge.forecasting.main")  # imports, but has no create_service
    monkeypatch.setitem(sys.modules, "gridcharge.forecasting.main", broken)
    with pytest.raises(AttributeError, match="create_service"):
        main(["serve", "--config", str(good), "--services", "forecasting"])


def test_reference_sessions_ship_inside_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found from any working directory, inside the installed package: no `shared` directory beside the checkout."""
    monkeypatch.chdir(tmp_path)
    path = find_acn_sessions()
    assert path == DEFAULT_SESSIONS
    assert path.is_relative_to(Path(gridcharge.allocation.__file__).resolve().parent / "data")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 954 and rows[0]["max_power_kw"] == "6.6"
    readme = (path.parent / "README.md").read_text(encoding="utf-8")
    for source_or_terms in (
        "https://ev.caltech.edu/dataset",
        "acnportal-experiments",
        "Terms of use",
        "doi:10.1145/3307772.3328313",
    ):
        assert source_or_terms in readme


def test_replay_on_one_day_of_acn_data(tmp_path: Path) -> None:
    r = run("replay", "--sessions", str(find_acn_sessions()), "--capacity-kw", "30", "--days", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cap violations 0" in r.stdout and "energy delivered" in r.stdout


def test_serve_runs_the_control_box_when_configured(tmp_path: Path) -> None:
    """GRIDCHARGE_CONTROLBOX_NODE adds the §14a control box to `serve`; a bad value is one line naming it."""
    import os

    good = tmp_path / "t.yaml"
    good.write_text("nodes:\n  - {id: a, limit_a: [10, 10, 10]}\n")
    env = {**os.environ, "GRIDCHARGE_CONTROLBOX_NODE": "nowhere", "GRIDCHARGE_CONTROLBOX_LPC": "http"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gridcharge.cli",
            "serve",
            "--config",
            str(good),
            "--http-port",
            "0",
            "--ocpp-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "GRIDCHARGE_CONTROLBOX_NODE: unknown node 'nowhere'" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3  # one clear line (plus log lines before it, if any)


def test_serve_runs_the_openadr_ven_when_configured(tmp_path: Path) -> None:
    """GRIDCHARGE_OPENADR_VTN_URL adds the OpenADR VEN (gridsignals) to `serve`; without its client id start-up
    stops with one line naming the missing setting (so the VEN was really built)."""
    import os

    good = tmp_path / "t.yaml"
    good.write_text("nodes:\n  - {id: a, limit_a: [10, 10, 10]}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDCHARGE_OPENADR_")}
    env["GRIDCHARGE_OPENADR_VTN_URL"] = "http://127.0.0.1:9/openadr3"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gridcharge.cli",
            "serve",
            "--config",
            str(good),
            "--http-port",
            "0",
            "--ocpp-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "GRIDCHARGE_OPENADR_CLIENT_ID" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3
