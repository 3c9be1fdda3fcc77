"""Entry points the `gridcharge` CLI delegates to: `forecast backtest` and `bench forecast`."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from gridcharge.shared.benchmarks import BENCHMARKS_MD, record


def backtest_main(args: argparse.Namespace) -> int:
    """`gridcharge forecast backtest [--data DIR]`: print the backtest table."""
    from gridcharge.forecasting.backtest import run_backtest

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    report = run_backtest(data_dir=getattr(args, "data", None))
    print(report.format())
    return 0


def bench_main(args: argparse.Namespace) -> int:
    """`gridcharge bench forecast [--quick] [--record]`: time 10,000 systems × 48 h (1,000 with --quick)."""
    from gridcharge.forecasting.bench import format_bench, run_forecast_bench

    warnings.filterwarnings("ignore", message=".*deprecated.*")
    quick = bool(getattr(args, "quick", False))
    result = run_forecast_bench(n_systems=1_000 if quick else 10_000, loop_sample=20 if quick else 100)
    table = format_bench(result)
    print(table)
    if getattr(args, "record", False):
        record_bench(result, table, BENCHMARKS_MD)
        print(f"recorded in {BENCHMARKS_MD}")
    return 0


def record_bench(result: dict[str, Any], table: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the measured-figures block of the ``## Forecasting`` section (shared recorder)."""
    record("Forecasting", "forecast-bench", "gridcharge bench forecast", f"```\n{table}\n```\n", path)
