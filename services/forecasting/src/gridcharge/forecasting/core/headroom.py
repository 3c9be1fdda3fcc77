"""Headroom per node and phase over the forecast slots.

For every slot and phase (arrays shaped (3, T), phases L1..L3)::

    limit    = min(nameplate · K(θa) , external limit if one applies)
    headroom = limit − base load (upper value) + PV credit − safety margin

- K(θa) is the dynamic rating factor (:mod:`.rating`), 1 unless enabled for the node;
- external limits (DSO/operator) apply inside their validity window; a schedule refines the value over
  time; if the source has not been updated within ``stale_after_s`` the declared fallback applies from
  that moment on (also to future slots: if no update arrives, that is what will hold);
- base load is the conservative (upper quantile) forecast, per phase;
- PV credit is only ``pv_credit_factor`` of the forecast PV of systems at or below the node (a cloud can
  take the rest away);
- safety margin is ``safety_margin_pct`` % of the limit.

Headroom is not clipped at 0: a negative value says the base load alone is expected to exceed the limit.

``source`` per phase and slot names the binding term: ``rating`` (nameplate), ``ambient`` (dynamic rating
below nameplate), ``external:<limit_id>``, ``fallback`` (stale external source) and ``base_load`` when the
base load takes more of the limit than is left as headroom.

``weather_missing`` per slot (T,) marks slots the weather forecast does not cover: their PV is 0 and their
ambient temperature unknown (so a dynamic rating takes its hot fallback) — the worst case for those slots only;
:meth:`NodeHeadroom.slot_weather` says ``missing`` or ``forecast`` for each slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from gridcharge.forecasting.core.rating import RatingParams, rating_factor
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
PHASES = ("L1", "L2", "L3")


@dataclass(frozen=True)
class ExternalLimitSpec:
    """An external capacity limit on a node. Powers W per phase (L1, L2, L3); times UTC.

    ``valid_to`` None = open-ended. ``schedule`` is ((start, limit_w), ...) sorted by start: from each start
    the limit is that value (before the first start: ``limit_w``). ``stale_after_s`` 0 = never stale.
    ``fallback_limit_w`` None means the source declared no fallback: the last value keeps applying.
    """

    limit_id: str
    limit_w: tuple[float, float, float]
    updated_at: pd.Timestamp
    valid_from: pd.Timestamp | None = None
    valid_to: pd.Timestamp | None = None
    fallback_limit_w: tuple[float, float, float] | None = None
    stale_after_s: float = 0.0
    schedule: tuple[tuple[pd.Timestamp, tuple[float, float, float]], ...] = ()
    source: str = "dso"


@dataclass(frozen=True)
class NodeHeadroomInputs:
    """Everything the headroom of one node needs, already on the slot grid (T slots).

    ``nameplate_w`` per-phase node limit W (``thermal_nameplate_w``: the transformer's rating per phase W
    that the dynamic factor scales, if it differs from the node limit); ``base_load_upper_w`` (3, T) W;
    ``pv_w`` (3, T) forecast AC W of the PV at or below the node (before the credit factor);
    ``ambient_c`` (T,) °C (NaN = unknown); ``weather_missing`` (T,) True where no weather covers the slot
    (``pv_w`` 0 and ``ambient_c`` NaN there; None = weather for every slot).
    """

    node_id: str
    nameplate_w: tuple[float, float, float]
    base_load_upper_w: FloatArray
    pv_w: FloatArray
    ambient_c: FloatArray
    rating: RatingParams | None = None
    safety_margin_pct: float = 5.0
    external_limits: Sequence[ExternalLimitSpec] = ()
    degraded_inputs: tuple[str, ...] = ()
    thermal_nameplate_w: tuple[float, float, float] | None = None  # transformer rating K applies to
    weather_missing: NDArray[np.bool_] | None = None


@dataclass(frozen=True)
class HeadroomOptions:
    """``pv_credit_factor``: fraction of forecast PV counted as extra headroom (0 = none)."""

    pv_credit_factor: float = 0.5


@dataclass(frozen=True)
class NodeHeadroom:
    """Headroom of one node: arrays (3, T) in W, ``source`` (3, T) strings, ``ambient_c`` (T,) °C,
    ``weather_missing`` (T,) slots without weather (worst case used there)."""

    node_id: str
    slot_starts: pd.DatetimeIndex
    headroom_w: FloatArray
    limit_w: FloatArray
    rating_w: FloatArray
    base_load_w: FloatArray
    pv_credit_w: FloatArray
    margin_w: FloatArray
    ambient_c: FloatArray
    source: NDArray[np.str_]
    degraded: bool
    degraded_reasons: tuple[str, ...] = field(default=())
    weather_missing: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def slot_source(self) -> list[str]:
        """One source per slot: that of the phase with the least headroom."""
        worst = np.argmin(self.headroom_w, axis=0)
        return [str(self.source[p, t]) for t, p in enumerate(worst)]

    def slot_weather(self) -> list[str]:
        """Per slot where its PV and ambient came from: ``forecast``, or ``missing`` (PV 0, hot ambient)."""
        missing = self.weather_missing if len(self.weather_missing) else np.zeros(self.headroom_w.shape[1], bool)
        return ["missing" if m else "forecast" for m in missing]


def _phase3(values: Sequence[float]) -> FloatArray:
    arr = np.asarray(values, dtype=float).reshape(3, 1)
    return arr


def external_limit_w(
    spec: ExternalLimitSpec, slot_starts: pd.DatetimeIndex, now: pd.Timestamp
) -> tuple[FloatArray, NDArray[np.bool_], NDArray[np.bool_]]:
    """Limit of one external source on the slots: (limit W (3, T) with +inf where it does not apply,
    applies mask (T,), fallback-in-force mask (T,))."""
    t = len(slot_starts)
    starts = pd.DatetimeIndex(slot_starts)
    limit = np.broadcast_to(_phase3(spec.limit_w), (3, t)).copy()
    for sched_start, sched_limit in spec.schedule:
        limit[:, starts >= sched_start] = _phase3(sched_limit)
    applies = np.ones(t, dtype=bool)
    if spec.valid_from is not None:
        applies &= starts >= spec.valid_from
    if spec.valid_to is not None:
        applies &= starts < spec.valid_to
    fallback = np.zeros(t, dtype=bool)
    if spec.stale_after_s > 0 and spec.fallback_limit_w is not None:
        stale_at = spec.updated_at + pd.Timedelta(seconds=spec.stale_after_s)
        # Stale now → every slot; else from the moment it would go stale without an update.
        fallback = applies & ((starts >= stale_at) | (now >= stale_at))
        limit[:, fallback] = _phase3(spec.fallback_limit_w)
    limit[:, ~applies] = np.inf
    return limit, applies, fallback


def compute_headroom(
    inputs: NodeHeadroomInputs,
    slot_starts: pd.DatetimeIndex,
    now: pd.Timestamp,
    options: HeadroomOptions | None = None,
) -> NodeHeadroom:
    """Headroom (3, T) W of one node with the binding source of every phase and slot."""
    opts = options or HeadroomOptions()
    t = len(slot_starts)
    nameplate = np.broadcast_to(_phase3(inputs.nameplate_w), (3, t))
    k = rating_factor(inputs.ambient_c, inputs.rating)  # (T,)
    if inputs.thermal_nameplate_w is None:
        static_w = nameplate
        rating_w = nameplate * k[None, :]
    else:  # K scales the transformer's own rating; the node limit (e.g. a fuse) may be lower still
        thermal = np.broadcast_to(_phase3(inputs.thermal_nameplate_w), (3, t))
        static_w = np.minimum(nameplate, thermal)
        rating_w = np.minimum(nameplate, thermal * k[None, :])
    # "ambient" only where the temperature derating is what lowers the rating below its static value.
    source = np.where(rating_w < static_w * (1.0 - 1e-9), "ambient", "rating").astype("<U64")
    limit = rating_w.copy()
    reasons = list(inputs.degraded_inputs)
    for spec in inputs.external_limits:
        ext, _applies, fallback = external_limit_w(spec, slot_starts, now)
        lower = ext < limit
        limit = np.where(lower, ext, limit)
        label = np.where(fallback[None, :], "fallback", f"external:{spec.limit_id}")
        source = np.where(lower, np.broadcast_to(label, (3, t)), source)
        if fallback.any():
            reasons.append(f"external limit {spec.limit_id} stale: fallback used")
    base = np.asarray(inputs.base_load_upper_w, dtype=float).reshape(3, t)
    pv_credit = np.clip(np.asarray(inputs.pv_w, dtype=float).reshape(3, t), 0.0, None) * opts.pv_credit_factor
    margin = limit * (inputs.safety_margin_pct / 100.0)
    headroom = limit - base + pv_credit - margin
    source = np.where(base > headroom, "base_load", source)
    return NodeHeadroom(
        node_id=inputs.node_id,
        slot_starts=pd.DatetimeIndex(slot_starts),
        headroom_w=headroom,
        limit_w=limit,
        rating_w=rating_w,
        base_load_w=base,
        pv_credit_w=pv_credit,
        margin_w=margin,
        ambient_c=np.asarray(inputs.ambient_c, dtype=float),
        source=source,
        degraded=bool(reasons),
        degraded_reasons=tuple(reasons),
        weather_missing=(
            np.zeros(t, dtype=bool)
            if inputs.weather_missing is None
            else np.asarray(inputs.weather_missing, dtype=bool).reshape(t)
        ),
    )


def pv_per_node_phase(
    ac_w: FloatArray, membership: NDArray[np.float64], phase_fraction: NDArray[np.float64]
) -> FloatArray:
    """Sum PV per node and phase: ``ac_w`` (S, T) W, ``membership`` (Nn, S) 1 if the system is at or below
    the node, ``phase_fraction`` (S, 3) share of each system's power per phase → (Nn, 3, T) W."""
    nodes = membership.shape[0]
    out = np.empty((nodes, 3, ac_w.shape[1]))
    for p in range(3):  # three matrix products, not a loop over systems
        out[:, p, :] = membership @ (ac_w * phase_fraction[:, p : p + 1])
    return out
