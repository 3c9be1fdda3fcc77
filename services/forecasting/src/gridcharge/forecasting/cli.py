"""Entry points the `gridcharge` CLI delegates to: `forecast backtest` and `bench forecast`."""

from __future__ import annotations

import argparse
import re
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCHMARKS_MD = Path("docs/benchmarks.md")
SECTION = "## Forecasting"


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


def record_bench(result: dict[str, Any], table: str, path: Path) -> None:
    """Replace the measured-figures block of the ``## Forecasting`` section (creating it if needed)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        "<!-- forecast-bench:start -->\n"
        f"Last `gridcharge bench forecast` run ({stamp}):\n\n```\n{table}\n```\n"
        "<!-- forecast-bench:end -->"
    )
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    elif "<!-- forecast-bench:start -->" in text:
        text = re.sub(r"<!-- forecast-bench:start -->.*?<!-- forecast-bench:end -->", lambda _: block, text,
                      flags=re.S)
    else:
        head, tail = text.split(SECTION, 1)
        nxt = re.search(r"\n## ", tail)
        cut = nxt.start() if nxt else len(tail)
        text = head + SECTION + tail[:cut].rstrip("\n") + f"\n\n{block}\n" + tail[cut:]
    path.write_text(text, encoding="utf-8")
