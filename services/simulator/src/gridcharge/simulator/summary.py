"""The demo's summary table: shared by `gridcharge demo` (printed) and the report (index.html)."""

from __future__ import annotations

from typing import Any


def format_summary(s: dict[str, Any]) -> str:
    """The summary table printed at the end of the demo."""
    cur = s.get("currency", "")
    pv = s.get("pv_self_consumption_pct")
    lines = [
        f"scenario {s['scenario']}: {s['start'][:16]} -> {s['end'][:16]} UTC, {s['real_seconds']:.0f} s real time"
        + (" (cut short)" if s.get("cut_short") else ""),
        "",
        f"  {'energy requested':<28}{s['energy_requested_kwh']:>10.1f} kWh",
        f"  {'energy delivered (of need)':<28}{s['energy_delivered_kwh']:>10.1f} kWh",
    ]
    if s.get("offline_optimum_kwh"):
        opt = s["offline_optimum_kwh"]
        lines.append(
            f"  {'offline optimum (of need)':<28}{opt:>10.1f} kWh   (delivered: "
            f"{100 * s['energy_delivered_kwh'] / opt:.1f} % of it)"
        )
    lines += [
        f"  {'sessions on time (departed)':<28}{s['sessions_on_time']:>6d} / {s['sessions_finished']:<3d}"
        f"(feasible: {s['feasible_on_time']} / {s['feasible_finished']}; at this site: "
        f"{s.get('site_feasible_on_time', '-')} / {s.get('site_feasible_finished', '-')})",
        f"  {'PV self-consumption':<28}{(f'{pv:.0f} %' if pv is not None else 'n/a'):>10}",
        f"  {'EV energy cost':<28}{s['ev_cost']:>10.2f} {cur}",
        f"  {'limit violations':<28}{s['violations']:>10d}",
        f"  {'profiles accepted/rejected':<28}{s['profiles_accepted']:>6d} / {s['profiles_rejected']}",
        f"  {'profile writes/station-hour':<28}{s.get('writes_per_station_hour', 0.0):>10.2f}   (busiest station "
        f"{s.get('writes_per_station_hour_max', 0.0):.2f}; most in one clock hour "
        f"{s.get('writes_peak_station_hour', 0.0):.0f})",
        "",
        f"  {'node':<14}{'phase':<7}{'peak kW':>9}{'limit kW':>10}{'peak/limit':>12}",
    ]
    for node, d in s["nodes"].items():
        for k, ph in enumerate(("L1", "L2", "L3")):
            peak, lim = d["peak_w"][k], d["limit_w"][k]
            ratio = peak / lim * 100 if lim else 0.0
            lines.append(f"  {node:<14}{ph:<7}{peak / 1000:>9.1f}{lim / 1000:>10.1f}{ratio:>11.0f}%")
    if s.get("grid_signals"):
        lines += [
            "",
            f"  {'signal':<10}{'node':<10}{'window (UTC)':<14}{'limit kW':>9}{'peak kW':>9}"
            f"{'EV kWh':>8}  binding (allocator)",
        ]
        for g in s["grid_signals"]:
            lim = f"{g['limit_kw']:.1f}" if g.get("limit_kw") is not None else "-"
            bound = f"{g['steps_binding']}/{g['steps']} steps, up to {g['sessions_bound_max']} sessions"
            lines.append(
                f"  {g['kind']:<10}{g['node']:<10}{g['from'][11:16]}-{g['to'][11:16]}   {lim:>9}"
                f"{g['peak_kw']:>9.1f}{g['ev_energy_kwh']:>8.1f}  {bound}"
            )
    return "\n".join(lines)
