"""Tunables of the telemetry core (times in s, powers in W, margins as fractions)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TelemetryConfig:
    """How telemetry judges freshness and plausibility.

    A meter source (charging EVSE, grid meter) is stale when it has not reported for
    `max(stale_after_s, stale_interval_factor × its observed reporting interval)` seconds; a station is
    stale when disconnected, never heard of, or silent (no event at all) for `station_silence_s`.
    A reading is implausible when it is NaN/inf, negative beyond
    the tolerances, above the hardware maximum (or the accepted limit) by more than
    `implausible_margin` (fraction) + `implausible_abs_margin_a`, or shows current on phases the
    EVSE's phase map does not have.
    Between meter values an EVSE's draw is estimated as its last sample, capped by an accepted lower limit
    once the EV had `ev_follow_s` to follow it (IEC 61851: within 5 s of a PWM change); `limit_grace_s`
    bounds the worst case instead (how long a station may take before a reading above the limit is
    implausible).
    """

    snapshot_interval_s: float = 5.0
    history_interval_s: int = 900
    stale_after_s: float = 60.0
    stale_interval_factor: float = 3.0
    implausible_margin: float = 0.10
    implausible_abs_margin_a: float = 1.0
    negative_tolerance_w: float = 50.0  # small negative readings are meter noise, clamped to 0
    negative_tolerance_a: float = 0.5
    phase_tolerance_a: float = 0.5  # current tolerated on a phase the EVSE does not use
    station_silence_s: float = 900.0  # a connected station silent this long is stale (3 × OCPP heartbeat)
    limit_grace_s: float = 30.0  # time a station gets to apply an accepted lower limit
    ev_follow_s: float = 5.0  # time an EV takes to follow an accepted lower limit (estimate)
    meter_max_factor: float = 3.0  # grid meter |value| above factor × node limit is implausible
    base_load_w: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # unmetered nodes
    ambient_min_c: float = -50.0
    ambient_max_c: float = 70.0

    def stale_after(self, interval_s: float | None) -> float:
        """Seconds without a report after which a source with this reporting interval is stale."""
        if interval_s is None:
            return self.stale_after_s
        return max(self.stale_after_s, self.stale_interval_factor * interval_s)
