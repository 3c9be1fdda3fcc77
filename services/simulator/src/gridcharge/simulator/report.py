"""The demo report: PNG plots (node load per phase vs limit and headroom forecast, PV forecast vs actual,
per-session energy vs need), summary.json and a one-page index.html that shows them together.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from gridcharge.simulator.sim import Simulation
from gridcharge.simulator.summary import format_summary

_COLORS = ("tab:blue", "tab:orange", "tab:green")


def _times(ts: list[float]) -> Any:
    """Matplotlib date numbers for POSIX seconds."""
    return mdates.date2num([datetime.fromtimestamp(t, UTC) for t in ts])


def plot_node(sim: Simulation, node: str, path: Path) -> None:
    """Load per phase (kW) against the effective limit and the headroom forecast (+ load = limit - headroom)."""
    r = sim.rec
    t = _times(r.t)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for k, ph in enumerate(("L1", "L2", "L3")):
        ax.plot(t, [row[k] / 1000 for row in r.load_w[node]], color=_COLORS[k], lw=1.0, label=f"load {ph}")
        ax.plot(
            t,
            [row[k] / 1000 for row in r.limit_w[node]],
            color=_COLORS[k],
            lw=1.4,
            ls="--",
            label=f"limit {ph}" if k == 0 else None,
        )
    head = r.headroom_w[node]
    if any(h is not None for h in head):
        avail = [(sum(h) / 3 / 1000 if h is not None else float("nan")) for h in head]
        ax.plot(t, avail, color="tab:purple", lw=1.0, alpha=0.8, label="headroom forecast (mean/phase)")
    ax.plot(t, [e / 3000 for e in r.ev_w[node]], color="grey", lw=0.8, alpha=0.7, label="EV load (mean/phase)")
    ax.set_title(f"node {node}: load per phase vs limit")
    ax.set_ylabel("kW per phase")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=sim.tz))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_pv(sim: Simulation, path: Path) -> bool:
    r = sim.rec
    nodes = [n for n in r.nodes if any(v > 0 for v in r.pv_w[n]) and n in sim.grid.pv]
    if not nodes:
        return False
    t = _times(r.t)
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for n in nodes:
        ax.plot(t, [v / 1000 for v in r.pv_w[n]], lw=1.2, label=f"{n} actual")
        ax.plot(t, [v / 1000 for v in r.pv_weather_fc_w[n]], lw=1.0, ls=":", label=f"{n} PV of the forecast weather")
        if any(v == v for v in r.pv_forecast_w[n]):  # NaN when no headroom forecast was seen
            ax.plot(
                t,
                [v / 1000 for v in r.pv_forecast_w[n]],
                lw=1.2,
                ls="--",
                label=f"{n} forecaster's PV (headroom forecast)",
            )
    ax.set_title("PV: forecast vs actual")
    ax.set_ylabel("kW")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=sim.tz))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_sessions(sim: Simulation, path: Path) -> None:
    ses = sim.sessions()
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.22 * len(ses) + 1)))
    labels = [s.ev_id for s in ses]
    ax.barh(labels, [s.need_wh / 1000 for s in ses], color="lightgrey", label="need")
    ax.barh(
        labels,
        [s.delivered_wh / 1000 for s in ses],
        color=["tab:green" if s.on_time else ("tab:red" if s.site_feasible else "tab:orange") for s in ses],
        height=0.5,
        label="delivered",
    )
    if any(s.optimum_wh is not None for s in ses):
        ax.scatter(
            [(s.optimum_wh or 0.0) / 1000 for s in ses],
            labels,
            marker="|",
            color="black",
            s=60,
            label="offline optimum",
            zorder=3,
        )
    ax.set_xlabel("kWh")
    ax.set_title(
        "per session: energy by departure vs need (red: short though the offline optimum completes it, "
        "orange: infeasible at the site)",
        fontsize=9,
    )
    ax.tick_params(axis="y", labelsize=6)
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


_SOURCE_COLORS = {"openadr": "tab:red", "§14a": "tab:purple", "dso": "tab:brown"}


def plot_grid_signals(sim: Simulation, path: Path) -> bool:
    """Per node a grid signal touches: its total limit over time with the source in force (shaded), load and EV
    load; below, how many sessions the allocator said each source bound. False when the scenario has none."""
    if sim.signals is None or not sim.rec.t:
        return False
    r = sim.rec
    t = _times(r.t)
    nodes = sorted({s.node for s in sim.signals.signals})
    fig, axes = plt.subplots(len(nodes) + 1, 1, figsize=(10, 2.8 * (len(nodes) + 1)), sharex=True)
    for ax, node in zip(axes, nodes, strict=False):
        ax.plot(t, [sum(x) / 1000 for x in r.limit_w[node]], color="black", lw=1.4, ls="--", label="limit in force")
        ax.plot(t, [sum(x) / 1000 for x in r.load_w[node]], color="tab:blue", lw=1.0, label="load")
        ax.plot(t, [e / 1000 for e in r.ev_w[node]], color="grey", lw=0.8, label="EV load")
        for src, color in _SOURCE_COLORS.items():
            on = [s == src for s in r.limit_source[node]]
            if any(on):
                ax.fill_between(
                    t,
                    0,
                    1,
                    where=on,
                    transform=ax.get_xaxis_transform(),
                    color=color,
                    alpha=0.12,
                    label=f"limit source: {src}",
                )
        ax.set_title(f"node {node}: total limit (all phases) by source, load, EV load", fontsize=9)
        ax.set_ylabel("kW")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=3, loc="upper left")
    ax = axes[-1]
    labels = sorted({k for row in r.binding for k in row}, key=lambda k: (k not in _SOURCE_COLORS, k))
    others = iter(("tab:blue", "tab:orange", "tab:green", "tab:olive", "tab:cyan", "tab:pink", "tab:gray"))
    for k in labels:
        color = _SOURCE_COLORS.get(k) or next(others, "black")
        ax.plot(t, [row.get(k, 0) for row in r.binding], lw=1.6 if k in _SOURCE_COLORS else 0.9, color=color, label=k)
    ax.set_title("sessions per binding constraint (the allocator's explanation, SessionPlan.binding)", fontsize=9)
    ax.set_ylabel("sessions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=sim.tz))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_report(sim: Simulation, summary: dict[str, Any], out: Path) -> Path:
    """Write plots, summary.json, sessions.csv and index.html into `out`; return the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    images: list[tuple[str, str]] = []
    for n in sim.rec.nodes:
        name = f"node-{n}.png"
        plot_node(sim, n, out / name)
        images.append((name, f"Node {n}: load per phase vs limit and headroom forecast"))
    if plot_grid_signals(sim, out / "grid-signals.png"):
        images.insert(
            0,
            (
                "grid-signals.png",
                "Grid signals: the limit in force by source (OpenADR, §14a), load, and the sessions each source bound",
            ),
        )
    if plot_pv(sim, out / "pv.png"):
        images.append(("pv.png", "PV forecast vs actual"))
    plot_sessions(sim, out / "sessions.png")
    images.append(("sessions.png", "Energy delivered vs need per session"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    with (out / "sessions.csv").open("w", encoding="utf-8") as f:
        f.write(
            "ev_id,station_id,evse_id,arrival,departure,need_wh,delivered_wh,feasible,optimum_wh,"
            "site_feasible,on_time\n"
        )
        for s in sim.sessions():
            opt = "" if s.optimum_wh is None else f"{s.optimum_wh:.0f}"
            f.write(
                f"{s.ev_id},{s.station_id},{s.evse_id},{datetime.fromtimestamp(s.arrival_s, UTC).isoformat()},"
                f"{datetime.fromtimestamp(s.departure_s, UTC).isoformat()},{s.need_wh:.0f},"
                f"{s.delivered_wh:.0f},{s.feasible},{opt},{s.site_feasible},{s.on_time}\n"
            )
    figs = "\n".join(
        f'<figure><img src="{html.escape(n)}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
        for n, c in images
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gridcharge demo: {html.escape(summary["scenario"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
pre{{background:#f6f6f6;padding:1em;font-size:13px}} img{{max-width:100%}} figure{{margin:1.5em 0}}
figcaption{{color:#555;font-size:13px}}</style></head><body>
<h1>gridcharge demo — {html.escape(summary["scenario"])}</h1>
<p>{html.escape(sim.sc.spec.description)}</p>
<pre>{html.escape(format_summary(summary))}</pre>
{figs}
<p>Data: <a href="summary.json">summary.json</a>, <a href="sessions.csv">sessions.csv</a>.</p>
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
