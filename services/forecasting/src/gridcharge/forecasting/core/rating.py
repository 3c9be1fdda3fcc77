"""Dynamic transformer rating: ambient temperature → allowed loading factor K (conservative, steady state).

Model after the steady-state hot-spot equation of IEC 60076-7 (clause 8.2, ONAN defaults of its Table 5)::

    θh(K) = θa + Δθ_or · ((1 + R·K²) / (1 + R))^x + H·g_r · K^y

with θa ambient °C, Δθ_or top-oil rise at rated load (52 K), R ratio of load to no-load losses (6),
x oil exponent (0.8), H·g_r hot-spot-to-top-oil gradient at rated load (26 K), y winding exponent (1.3).
The allowed K is the largest K with θh(K) ≤ θh_max (98 °C: relative ageing rate 1 for non-thermally-upgraded
paper). With these defaults θh(1) = θa + 78 °C, so K = 1 exactly at θa = 20 °C.

Conservative choices: steady state only (no credit for thermal inertia / short overloads), K capped at
``k_max`` (default 1.0: dynamic rating can only *reduce* the nameplate), ambient unknown → the hottest
assumed ambient ``ambient_fallback_c``. Off by default per node: rating = nameplate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class RatingParams:
    """Thermal parameters (IEC 60076-7 ONAN defaults). Temperatures °C, rises/gradients K."""

    enabled: bool = False
    top_oil_rise_k: float = 52.0  # Δθ_or
    hot_spot_gradient_k: float = 26.0  # H·g_r
    loss_ratio: float = 6.0  # R
    oil_exponent: float = 0.8  # x
    winding_exponent: float = 1.3  # y
    hot_spot_max_c: float = 98.0  # θh_max
    k_max: float = 1.0  # never above nameplate unless configured
    ambient_fallback_c: float = 40.0  # used where the ambient forecast is missing (NaN)


def hot_spot_c(k: ArrayLike, ambient_c: ArrayLike, p: RatingParams) -> FloatArray:
    """Steady-state hot-spot temperature °C at loading factor ``k`` (p.u.) and ambient ``ambient_c`` °C."""
    k_arr = np.asarray(k, dtype=float)
    oil = p.top_oil_rise_k * ((1.0 + p.loss_ratio * k_arr**2) / (1.0 + p.loss_ratio)) ** p.oil_exponent
    winding = p.hot_spot_gradient_k * k_arr**p.winding_exponent
    return np.asarray(np.asarray(ambient_c, dtype=float) + oil + winding, dtype=float)


def allowed_loading_factor(
    ambient_c: ArrayLike, params: RatingParams | None = None, iterations: int = 50
) -> FloatArray:
    """Largest K (p.u. of nameplate) with θh(K) ≤ θh_max, element-wise, capped at ``k_max``.

    θh is increasing in K, so a vectorised bisection on [0, 3] converges to < 1e-12 p.u. in 50 steps.
    Ambient so hot that even K = 0 exceeds θh_max gives K = 0. NaN ambient → ``ambient_fallback_c``.
    """
    p = params or RatingParams()
    ambient = np.asarray(ambient_c, dtype=float)
    ambient = np.where(np.isfinite(ambient), ambient, p.ambient_fallback_c)
    lo = np.zeros_like(ambient)
    hi = np.full_like(ambient, 3.0)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        ok = hot_spot_c(mid, ambient, p) <= p.hot_spot_max_c
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    k = np.where(hot_spot_c(0.0, ambient, p) > p.hot_spot_max_c, 0.0, lo)
    return np.asarray(np.minimum(k, p.k_max), dtype=float)


def rating_factor(ambient_c: ArrayLike, params: RatingParams | None) -> FloatArray:
    """Multiplier on the nameplate limit: K(θa) if dynamic rating is enabled, else 1 everywhere."""
    ambient = np.asarray(ambient_c, dtype=float)
    if params is None or not params.enabled:
        return np.ones_like(ambient)
    return allowed_loading_factor(ambient, params)
