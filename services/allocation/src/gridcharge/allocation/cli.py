"""Entry points the `gridcharge` CLI delegates to: `replay` and `bench allocator`."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from gridcharge.allocation.core.replay import ACN_CALTECH_2019_03, run_replay
from gridcharge.shared.benchmarks import record


def find_acn_sessions() -> Path:
    """The reference ACN-Data file shipped in this package (independent of the working directory)."""
    if not ACN_CALTECH_2019_03.is_file():
        raise FileNotFoundError(f"{ACN_CALTECH_2019_03} is missing from the installed package; pass --sessions")
    return ACN_CALTECH_2019_03


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty() and (done % 50 == 0 or done == total):
        print(f"\r  replay {done}/{total} periods", end="" if done < total else "\n", file=sys.stderr)


def replay_main(args: argparse.Namespace) -> int:
    """`gridcharge replay --sessions CSV --capacity-kw X [--period-min 5] [--days N] [--out DIR]`."""
    res = run_replay(args.sessions, args.capacity_kw, args.period_min, days=args.days, progress=_progress)
    print(res.summary())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "sessions.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["session_id", "requested_kwh", "delivered_kwh"])
            for sid, req, got in zip(res.session_ids, res.requested_kwh, res.delivered_kwh, strict=True):
                w.writerow([sid, f"{req:.4f}", f"{got:.4f}"])
        with (out / "periods.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["period", "power_kw", "capacity_kw"])
            for i, (p, c) in enumerate(zip(res.power_kw, res.capacity_kw, strict=True)):
                w.writerow([i, f"{p:.4f}", f"{c:.4f}"])
        print(f"wrote {out}/sessions.csv and {out}/periods.csv")
    return 0 if res.violations == 0 else 1


def bench_main(args: argparse.Namespace) -> int:
    """`gridcharge bench allocator [--quick] [--record] [--sessions CSV]`: quality vs acnportal and the
    offline optimum on ACN-Data, then re-plan time against problem size."""
    from gridcharge.allocation.bench import run_allocator_bench, run_solve_time_bench, solve_time_table

    sessions = Path(args.sessions) if getattr(args, "sessions", None) else find_acn_sessions()
    quick = bool(getattr(args, "quick", False))
    days = 3.0 if quick else None
    bench = run_allocator_bench(sessions, (20.0, 30.0, 50.0), days)
    quality = f"{bench.sessions} sessions, {bench.periods} periods of 5 min\n\n{bench.table()}"
    print(quality)
    sizes = (100, 1000) if quick else (100, 1000, 3000, 10000)
    timing = solve_time_table(run_solve_time_bench(sizes, repeats=5 if quick else 10))
    print()
    print(timing)
    if getattr(args, "record", False):
        cmd = "gridcharge bench allocator" + (" --quick" if quick else "")
        record(
            "Allocation",
            "allocator-bench",
            cmd,
            f"{quality}\n\nRe-plan time (24 h of 15-min slots, "
            f"10 transformers × 100 EVSEs, three phases):\n\n{timing}\n",
        )
        print("recorded in docs/benchmarks.md")
    return 0
