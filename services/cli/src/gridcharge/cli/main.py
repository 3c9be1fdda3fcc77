"""The `gridcharge` command: serve, demo, replay, bench, forecast, api-token.

Sub-commands import their service lazily so `gridcharge --help` stays fast. A service that is missing
or fails to import is an error of the install: the command that needs it fails with the import's traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from gridcharge.shared.errors import ConfigError

SERVICES = ("gateway", "telemetry", "forecasting", "allocation")
OPTIONAL_SERVICES = ("controlbox", "gridsignals")  # by default only when configured (GRIDCHARGE_CONTROLBOX_NODE,
#                                                    GRIDCHARGE_OPENADR_VTN_URL)


def _factory(name: str) -> Callable[..., object]:
    """``create_service`` of ``gridcharge.<name>.main``; ImportError/AttributeError propagate."""
    mod = importlib.import_module(f"gridcharge.{name}.main")
    factory: Callable[..., object] = mod.create_service
    return factory


def cmd_serve(args: argparse.Namespace) -> int:
    from gridcharge.shared.config import check_environment
    from gridcharge.shared.service import load_settings_and_topology, serve

    for warning in check_environment():
        print(f"gridcharge: warning: {warning}", file=sys.stderr)
    settings, topology = load_settings_and_topology(
        topology=args.config,
        bus=args.bus,
        http_port=args.http_port,
        ocpp_port=args.ocpp_port,
    )
    names = args.services.split(",") if args.services else list(SERVICES)
    if not args.services and os.environ.get("GRIDCHARGE_CONTROLBOX_NODE"):
        names.append("controlbox")
    if not args.services and os.environ.get("GRIDCHARGE_OPENADR_VTN_URL"):
        names.append("gridsignals")
    unknown = [n for n in names if n not in SERVICES + OPTIONAL_SERVICES]
    if unknown:
        raise ConfigError(
            "command line", "--services", f"unknown service(s) {unknown}; known: {SERVICES + OPTIONAL_SERVICES}"
        )
    factories = [_factory(n) for n in names]
    asyncio.run(serve(factories, settings, topology))  # type: ignore[arg-type]
    return 0


def _delegate(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    """A sub-command that imports ``module`` when it runs and calls ``module.func(args)``."""

    def run(args: argparse.Namespace) -> int:
        fn = getattr(importlib.import_module(module), func)
        return int(fn(args) or 0)

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gridcharge", description="Grid-aware load management for EV charging.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run some or all services")
    s.add_argument("--config", required=True, help="topology YAML")
    s.add_argument("--bus", choices=["memory", "kafka"], default=None)
    s.add_argument(
        "--services",
        default=None,
        help=f"comma-separated subset of {','.join(SERVICES + OPTIONAL_SERVICES)} "
        "(controlbox / gridsignals: by default when GRIDCHARGE_CONTROLBOX_NODE / "
        "GRIDCHARGE_OPENADR_VTN_URL is set)",
    )
    s.add_argument("--http-port", type=int, default=None)
    s.add_argument("--ocpp-port", type=int, default=None)
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo", help="embedded cluster + simulated stations over a simulated day")
    d.add_argument("--scenario", default="office", help="scenario name or YAML path")
    d.add_argument("--out", default="reports/demo", help="report directory")
    d.add_argument("--speed", type=float, default=None, help="simulated seconds per real second")
    d.add_argument("--http-port", type=int, default=8080)
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_delegate("gridcharge.simulator.demo", "cli_main"))

    r = sub.add_parser("replay", help="allocation on a recorded session log in simulated time")
    r.add_argument(
        "--sessions", required=True, help="session CSV (ACN-Data format; a sample ships in gridcharge/allocation/data/)"
    )
    r.add_argument("--capacity-kw", type=float, required=True)
    r.add_argument("--period-min", type=int, default=5)
    r.add_argument("--days", type=float, default=None, help="replay only the first N days")
    r.add_argument("--out", default=None, help="write per-session and per-slot CSVs here")
    r.set_defaults(func=_delegate("gridcharge.allocation.cli", "replay_main"))

    b = sub.add_parser("bench", help="benchmarks (figures go to docs/benchmarks.md)")
    b.add_argument("what", choices=["gateway", "allocator", "forecast", "e2e", "control"])
    b.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    b.add_argument("--record", action="store_true", help="append the figures to docs/benchmarks.md")
    b.add_argument(
        "--meters-follow",
        action="store_true",
        help="e2e: grid meters follow the stations' draw; a trial steps the base load up",
    )
    b.add_argument("--sessions", default=None, help="allocator: session CSV (default: the shipped ACN-Data sample)")
    b.add_argument(
        "--baseline",
        default=None,
        metavar="DIR",
        help="control: the code to compare with, a checkout with its own .venv",
    )
    b.add_argument(
        "--baseline-ref",
        default=None,
        metavar="REF",
        help="control: the code to compare with, a git ref (temporary worktree + make install)",
    )
    b.add_argument(
        "--cases", default=None, help="control: comma-separated cases or groups (all, step, fleet, demos; default all)"
    )
    b.add_argument("--repeat", type=int, default=1, help="control: runs per case and side (medians are shown)")
    b.add_argument("--jobs", type=int, default=1, help="control: children at once (default 1: sequential)")
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("api-token", help="make an operator API token and its GRIDCHARGE_API_TOKENS_FILE entry")
    t.add_argument("name", help="who holds the token (shows in the audit log)")
    t.add_argument("--role", choices=["read-only", "operator"], default="read-only")
    t.set_defaults(func=cmd_api_token)

    f = sub.add_parser("forecast", help="forecast tools")
    fsub = f.add_subparsers(dest="forecast_command", required=True)
    bt = fsub.add_parser("backtest", help="score PV and base-load forecasts against recorded actuals")
    bt.add_argument("--data", default=None, help="recorded data directory (default: the shipped sample)")
    bt.set_defaults(func=_delegate("gridcharge.forecasting.cli", "backtest_main"))
    return p


BENCH_MODULES = {
    "gateway": "gridcharge.gateway.bench",
    "allocator": "gridcharge.allocation.cli",
    "forecast": "gridcharge.forecasting.cli",
    "e2e": "gridcharge.simulator.bench_e2e",
    "control": "gridcharge.simulator.bench_control",
}


def cmd_api_token(args: argparse.Namespace) -> int:
    from gridcharge.shared.auth import token_cli

    return token_cli([args.name, "--role", args.role])


def cmd_bench(args: argparse.Namespace) -> int:
    return _delegate(BENCH_MODULES[args.what], "bench_main")(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"gridcharge: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
