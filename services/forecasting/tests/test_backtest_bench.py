"""The backtest on the shipped sample and a tiny benchmark run (smoke tests of the CLI entry points)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gridcharge.forecasting.backtest import run_backtest
from gridcharge.forecasting.bench import format_bench, run_forecast_bench
from gridcharge.forecasting.cli import record_bench


def test_backtest_on_shipped_sample_beats_persistence() -> None:
    report = run_backtest()
    names = [s.name for s in report.scores]
    assert names == ["PV, recorded actual weather", "PV, recorded weather forecast", "base load (day-ahead, median)"]
    for s in report.scores:
        assert s.skill > 0.3, s
        assert 0 < s.rmse_pct < 10
    text = report.format()
    assert "SYNTHETIC" in text and "skill" in text


def test_bench_small_run_reports_speedup_and_agreement() -> None:
    r = run_forecast_bench(n_systems=60, horizon_h=6, loop_sample=5)
    assert r["n_steps"] == 24 and r["loop_sample"] == 5
    assert r["max_diff_pct_of_kwp"] < 0.1
    assert r["speedup"] > 1
    assert "speed-up" in format_bench(r)


def test_record_bench_touches_only_the_forecasting_section(tmp_path: Path) -> None:
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\n## Gateway\n\nfast\n\n## Forecasting\n\nintro\n\n## Allocation\n\nok\n")
    record_bench({}, "TABLE-1", md)
    record_bench({}, "TABLE-2", md)
    text = md.read_text()
    assert "TABLE-2" in text and "TABLE-1" not in text
    assert text.index("## Gateway") < text.index("TABLE-2") < text.index("## Allocation")
    assert "intro" in text and "fast" in text and "ok" in text
    assert argparse  # the CLI entry points take an argparse.Namespace
