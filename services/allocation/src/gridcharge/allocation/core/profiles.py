"""The one place where SetChargingProfile content is built (pure, no I/O).

Profiles a station holds (fixed ids, so a resend replaces instead of duplicating):

| purpose      | evse | stack | id    | what                                                                   |
|--------------|------|-------|-------|------------------------------------------------------------------------|
| STATION_MAX  | 0    | 0     | 1000  | fallback at ``fallback_current_a``, no end: what the station may draw   |
|              |      |       |       | unsupervised (Σ fallbacks ≤ node limits, checked at topology load)      |
| STATION_MAX  | 0    | 1     | 1001  | lease: lifts the station cap to its grant until ``valid_to``            |
| TX           | n    | 1     | 3n01  | the grant of the transaction on EVSE n (stations with several EVSEs:     |
|              |      |       |       | splits the station cap; no end of its own, it dies with the transaction)|

A station max profile at a higher stack level prevails over the lower one while it is valid, so when
the allocator or the link dies the lease lapses and the station is back at its fallback by itself.
``valid_from``/``start_schedule`` lie ``BACKDATE_S`` in the past so clock skew and 1.6 stations that
start a schedule only at its exact start time never see a gap.

Rates: per-phase current limit in A, or total power in W = A × nominal voltage × phases (OCPP 1.6
§3.13 / 2.0.1 K01: a W limit is the total over the phases, an A limit is per phase).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.shared.codec import to_timestamp

STATION_MAX = command_pb2.PROFILE_PURPOSE_STATION_MAX
TX = command_pb2.PROFILE_PURPOSE_TX
TX_DEFAULT = command_pb2.PROFILE_PURPOSE_TX_DEFAULT
RATE_A = common_pb2.RATE_UNIT_A
RATE_W = common_pb2.RATE_UNIT_W

FALLBACK_STACK = 0
LEASE_STACK = 1
BACKDATE_S = 60
MIN_RATE_A = 6.0  # IEC 61851: below 6 A an AC EV cannot charge; send 0 instead
STEP_A = 0.1

_PURPOSE_NAME: dict[int, str] = {
    STATION_MAX: "ChargingStationMaxProfile",
    TX_DEFAULT: "TxDefaultProfile",
    TX: "TxProfile",
}
_PURPOSE_CODE: dict[int, int] = {STATION_MAX: 1, TX_DEFAULT: 2, TX: 3}


def profile_id(evse_id: int, purpose: int, stack_level: int) -> int:
    """Fixed profile id per (EVSE, purpose, stack level) within one station."""
    return _PURPOSE_CODE[purpose] * 1000 + evse_id * 10 + stack_level


def command_key(evse_id: int, purpose: int, stack_level: int) -> str:
    """Generation-ordering key of the command that installs that profile, e.g. ``profile/1/TxProfile/1``."""
    return f"profile/{evse_id}/{_PURPOSE_NAME[purpose]}/{stack_level}"


def rate_unit_for(allowed: Sequence[int]) -> common_pb2.RateUnit.ValueType:
    """A when the station accepts it (or says nothing), else W."""
    allowed = [u for u in allowed if u in (RATE_A, RATE_W)]
    return RATE_A if not allowed or RATE_A in allowed else RATE_W


def amps_to_watts(current_a: float, voltage_v: float, phases: int) -> float:
    """Total power (W) of a per-phase current limit (A) on ``phases`` phases at nominal ``voltage_v``."""
    return current_a * voltage_v * phases


def watts_to_amps(power_w: float, voltage_v: float, phases: int) -> float:
    """Per-phase current (A) of a total power (W) on ``phases`` phases at nominal ``voltage_v``."""
    return power_w / (voltage_v * max(1, phases))


def quantise_a(current_a: float, min_a: float = MIN_RATE_A, step_a: float = STEP_A) -> float:
    """Hardware granularity: round down to ``step_a``; below ``min_a`` becomes 0 (never rounds up)."""
    if not math.isfinite(current_a) or current_a <= 0:
        return 0.0
    q = math.floor(current_a / step_a + 1e-9) * step_a
    q = round(q, 3)
    return q if q >= min_a - 1e-9 else 0.0


@dataclass(frozen=True)
class StationProfileTarget:
    """How to express limits for one station: rate unit, phases, nominal voltage, max periods."""

    rate_unit: common_pb2.RateUnit.ValueType = RATE_A
    phases: int = 3
    voltage_v: float = 230.0
    max_periods: int = 24


def _limit(current_a: float, t: StationProfileTarget) -> float:
    """The limit in the station's unit, unrounded: the gateway rounds it down once, to the 0.1 the OCPP
    message carries (`gateway.core.profiles.round_limit`)."""
    if t.rate_unit == RATE_W:
        return amps_to_watts(current_a, t.voltage_v, t.phases)
    return current_a


def _periods(periods_a: Sequence[tuple[int, float]], t: StationProfileTarget) -> list[command_pb2.SchedulePeriod]:
    """(start offset s, per-phase A) → schedule periods: quantised, merged, at most ``max_periods``."""
    merged: list[tuple[int, float]] = []
    for start_s, a in sorted(periods_a):
        q = quantise_a(a)
        if merged and merged[-1][1] == q:
            continue
        if merged and merged[-1][0] == start_s:
            merged[-1] = (start_s, q)
            continue
        merged.append((max(0, int(start_s)), q))
    if not merged:
        merged = [(0, 0.0)]
    if merged[0][0] != 0:
        merged.insert(0, (0, 0.0))
    max_p = max(1, t.max_periods)
    while len(merged) > max_p:
        # fold the last two at the smaller limit: never raises any moment of the schedule
        _s_last, a_last = merged.pop()
        merged[-1] = (merged[-1][0], min(merged[-1][1], a_last))
    return [command_pb2.SchedulePeriod(start_period_s=s, limit=_limit(a, t), number_phases=t.phases) for s, a in merged]


def fallback_profile(
    fallback_a: float, now: datetime, t: StationProfileTarget, steps_a: Sequence[tuple[datetime, float]] = ()
) -> command_pb2.SetChargingProfile:
    """Station-wide fallback (ChargePointMaxProfile / ChargingStationMaxProfile), stack 0, no end.

    ``fallback_a`` applies from now; ``steps_a`` lists later (from, A) changes, e.g. a lower value over a
    DSO window and back. The schedule has no duration, so its last period holds until the next fallback.
    """
    start = now - timedelta(seconds=BACKDATE_S)
    periods = [(0, fallback_a)] + [(max(0, int((when - start).total_seconds())), a) for when, a in steps_a]
    return command_pb2.SetChargingProfile(
        evse_id=0,
        profile=command_pb2.ChargingProfile(
            profile_id=profile_id(0, STATION_MAX, FALLBACK_STACK),
            stack_level=FALLBACK_STACK,
            purpose=STATION_MAX,
            kind="Absolute",
            valid_from=to_timestamp(start),
            start_schedule=to_timestamp(start),
            rate_unit=t.rate_unit,
            periods=_periods(periods, t),
        ),
    )


def station_lease_profile(
    limit_a: float, now: datetime, lease_s: float, t: StationProfileTarget
) -> command_pb2.SetChargingProfile:
    """Station-wide lease (stack 1) lifting the station cap to ``limit_a`` per phase until now + lease."""
    start = now - timedelta(seconds=BACKDATE_S)
    duration = math.ceil(lease_s) + BACKDATE_S
    return command_pb2.SetChargingProfile(
        evse_id=0,
        profile=command_pb2.ChargingProfile(
            profile_id=profile_id(0, STATION_MAX, LEASE_STACK),
            stack_level=LEASE_STACK,
            purpose=STATION_MAX,
            kind="Absolute",
            valid_from=to_timestamp(start),
            valid_to=to_timestamp(now + timedelta(seconds=lease_s)),
            start_schedule=to_timestamp(start),
            duration_s=duration,
            rate_unit=t.rate_unit,
            periods=_periods([(0, limit_a)], t),
        ),
    )


def tx_profile(
    evse_id: int,
    transaction_id: str,
    schedule_a: Sequence[tuple[datetime, float]],
    now: datetime,
    lease_s: float | None,
    t: StationProfileTarget,
) -> command_pb2.SetChargingProfile:
    """TxProfile for one transaction: the planned per-phase current (A) from each time on.

    ``schedule_a`` lists (from, A) steps of the plan; with ``lease_s`` only the part inside the lease is
    sent and the profile ends with it; without, it has no end of its own (it dies with its transaction).
    The first step applies from the back-dated start.
    """
    start = now - timedelta(seconds=BACKDATE_S)
    end = now + timedelta(seconds=lease_s) if lease_s is not None else None
    steps: list[tuple[int, float]] = []
    for when, a in schedule_a:
        if end is not None and when >= end:
            break
        steps.append((max(0, int((when - start).total_seconds())), a))
    if steps:
        steps[0] = (0, steps[0][1]) if steps[0][0] <= BACKDATE_S else steps[0]
    prof = command_pb2.ChargingProfile(
        profile_id=profile_id(evse_id, TX, LEASE_STACK),
        stack_level=LEASE_STACK,
        purpose=TX,
        kind="Absolute",
        transaction_id=transaction_id,
        valid_from=to_timestamp(start),
        start_schedule=to_timestamp(start),
        rate_unit=t.rate_unit,
        periods=_periods(steps, t),
    )
    if end is not None and lease_s is not None:
        prof.valid_to.CopyFrom(to_timestamp(end))
        prof.duration_s = int(lease_s) + BACKDATE_S
    return command_pb2.SetChargingProfile(evse_id=evse_id, profile=prof)


def _amps(per: command_pb2.SchedulePeriod, unit: int, t: StationProfileTarget) -> float:
    """Per-phase current (A) of one period: a W limit over the period's ``numberPhases`` (else ``t.phases``)."""
    return watts_to_amps(per.limit, t.voltage_v, per.number_phases or t.phases) if unit == RATE_W else per.limit


def profile_limit_a(p: command_pb2.SetChargingProfile, t: StationProfileTarget) -> float:
    """Highest per-phase current (A) a profile allows at any time (for worst-case budgets)."""
    return max([_amps(per, p.profile.rate_unit, t) for per in p.profile.periods] or [0.0])


def profile_schedule_a(p: command_pb2.SetChargingProfile, t: StationProfileTarget) -> tuple[tuple[float, float], ...]:
    """(from POSIX s, per-phase A) of every period of an absolute profile, as the station will apply it."""
    start = p.profile.start_schedule.ToSeconds() if p.profile.HasField("start_schedule") else 0.0
    return tuple((start + per.start_period_s, float(_amps(per, p.profile.rate_unit, t))) for per in p.profile.periods)


def phase_weights(
    p: command_pb2.SetChargingProfile, t: StationProfileTarget, wired: int, low_voltage: float
) -> tuple[float, ...]:
    """Per station phase L1…L``wired``: the most the station may draw there per A of `profile_limit_a`.

    An A limit is per phase: 1 on every phase (``()``). A W limit bounds the total power P; its per-phase
    equivalent is P / (V · n) with n its ``numberPhases``, but a car on one phase may take all of P on L1,
    a two-phase car half of it on L1 and L2 (a single- or two-phase car loads L1 first, IEC 62196 type 2):
    on Lk at most P / (k · V_low) with V_low = ``low_voltage`` × nominal (a W limit draws more current when the
    voltage sags: EN 50160 allows −10 %), i.e. n / (k · ``low_voltage``) per A.
    """
    if p.profile.rate_unit != RATE_W:
        return ()
    n = max([per.number_phases or t.phases for per in p.profile.periods] or [t.phases])
    return tuple(n / (k * low_voltage) for k in range(1, wired + 1))
