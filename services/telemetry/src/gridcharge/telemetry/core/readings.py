"""Map one station meter sample onto per-GRID-phase power and current, with plausibility checks.

The sample is parsed once, by `gridcharge.shared.codec.parse_meter_values` (defaults, scaling, phases).
Station-local phase i (L1, L2, L3 as the station reports them) lands on grid phase `phase_map[i]`
(topology: the station's or the EVSE's phase map). Precedence per phase: Power.Active.Import of that
phase; else Current.Import × Voltage (of that phase, else nominal); a total power with per-phase
currents is split in proportion to the currents, a total without them evenly over the mapped phases.
"""

from __future__ import annotations

from dataclasses import dataclass

from gridcharge.shared.codec import MeterSample
from gridcharge.shared.topology import PHASES, Phase
from gridcharge.telemetry.core.config import TelemetryConfig
from gridcharge.telemetry.core.model import P3


@dataclass(frozen=True)
class GridValues:
    """A sample mapped onto grid phases."""

    power_w: P3
    current_a: P3
    problem: str  # empty when plausible


def to_grid(
    sample: MeterSample, phase_map: tuple[Phase, ...], nominal_v: float, bound_a: float, cfg: TelemetryConfig
) -> GridValues:
    """Map a sample to grid phases and check it against `bound_a` (per-phase current allowed, A)."""
    n = len(phase_map)
    volts: list[float] = []
    for vph in sample.voltage_ph:  # a missing or absurdly low voltage falls back to nominal
        volts.append(vph if vph is not None and vph > 50 else nominal_v)
    problem = sample.invalid
    # phase-count consistency: nothing may flow on a station phase the map does not have
    for i in range(n, 3):
        for v, tol in (
            (sample.current_ph[i], cfg.phase_tolerance_a),
            (sample.power_ph[i], cfg.phase_tolerance_a * nominal_v),
        ):
            if v is not None and v > tol and not problem:
                problem = f"value on L{i + 1} but the phase map has {n} phase(s)"
    local_p: list[float] = [0.0] * n
    local_i: list[float] = [0.0] * n
    have_ph_power = any(sample.power_ph[i] is not None for i in range(n))
    have_ph_current = any(sample.current_ph[i] is not None for i in range(n))
    for i in range(n):
        cur = sample.current_ph[i] if sample.current_ph[i] is not None else sample.current_any
        if have_ph_power:
            p = sample.power_ph[i]
            local_p[i] = p if p is not None else (cur or 0.0) * volts[i]
        elif have_ph_current or sample.current_any is not None:
            local_p[i] = (cur or 0.0) * volts[i]
        elif sample.power_total is not None:
            local_p[i] = sample.power_total / n
        local_i[i] = cur if cur is not None else local_p[i] / volts[i]
    if not have_ph_power and sample.power_total is not None and (have_ph_current or sample.current_any is not None):
        est = sum(local_p)  # scale I×V to the measured total (power factor, real voltage)
        if est > 0:
            local_p = [p * sample.power_total / est for p in local_p]
    # plausibility
    for i in range(n):
        if problem:
            break
        if local_p[i] < -cfg.negative_tolerance_w or local_i[i] < -cfg.negative_tolerance_a:
            problem = f"negative reading on L{i + 1}"
        elif local_i[i] > bound_a * (1 + cfg.implausible_margin) + cfg.implausible_abs_margin_a:
            problem = f"current {local_i[i]:.1f} A on L{i + 1} above allowed {bound_a:.1f} A"
        elif local_p[i] > (bound_a * (1 + cfg.implausible_margin) + cfg.implausible_abs_margin_a) * volts[i] * 1.05:
            problem = f"power {local_p[i]:.0f} W on L{i + 1} above allowed {bound_a:.1f} A"
    power = [0.0, 0.0, 0.0]
    current = [0.0, 0.0, 0.0]
    for i, ph in enumerate(phase_map):
        k = PHASES.index(ph)
        power[k] += max(0.0, local_p[i])
        current[k] += max(0.0, local_i[i])
    return GridValues((power[0], power[1], power[2]), (current[0], current[1], current[2]), problem)
