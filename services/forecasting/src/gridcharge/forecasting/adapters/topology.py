"""Thin adapter: the shared topology (``gridcharge.shared.topology``) → the forecasting core's GridModel."""

from __future__ import annotations

from dataclasses import fields

from gridcharge.forecasting.core.pv import PVFleet
from gridcharge.forecasting.core.rating import RatingParams
from gridcharge.forecasting.core.site import GridModel, NodeSpec
from gridcharge.shared.topology import Rating, Topology

# Names accepted in a node's `rating.params` (YAML) → RatingParams fields.
_PARAM_ALIASES = {
    "delta_theta_or_k": "top_oil_rise_k",
    "top_oil_rise_k": "top_oil_rise_k",
    "hgr_k": "hot_spot_gradient_k",
    "hot_spot_gradient_k": "hot_spot_gradient_k",
    "r": "loss_ratio",
    "loss_ratio": "loss_ratio",
    "x": "oil_exponent",
    "oil_exponent": "oil_exponent",
    "y": "winding_exponent",
    "winding_exponent": "winding_exponent",
    "theta_h_max_c": "hot_spot_max_c",
    "hot_spot_max_c": "hot_spot_max_c",
    "ambient_fallback_c": "ambient_fallback_c",
}


def rating_params(rating: Rating | None) -> RatingParams | None:
    """RatingParams from a node's ``rating:`` block (None/``dynamic: false`` → nameplate only)."""
    if rating is None or not rating.dynamic:
        return None
    known = {f.name for f in fields(RatingParams)}
    values: dict[str, float] = {}
    for key, value in rating.params.items():
        name = _PARAM_ALIASES.get(key.lower(), key)
        if name not in known:
            raise ValueError(f"unknown rating parameter {key!r}; known: {sorted(_PARAM_ALIASES)}")
        values[name] = float(value)
    return RatingParams(enabled=True, k_max=rating.max_loading_factor, **values)


def grid_model_from_topology(topology: Topology) -> GridModel:
    """Nodes with per-phase W limits and dynamic-rating settings, the PV fleet (site location where a
    system has none) and PV membership/phase split."""
    nodes = []
    for n in topology.nodes:
        thermal = None
        if n.rating is not None and n.rating.nameplate_kva is not None:
            per_phase = n.rating.nameplate_kva * 1000.0 / 3.0  # kVA ≈ kW at unity power factor
            thermal = (per_phase, per_phase, per_phase)
        nodes.append(
            NodeSpec(
                node_id=n.id,
                parent=n.parent,
                limit_w=topology.limit_w(n.id),
                rating=rating_params(n.rating),
                thermal_nameplate_w=thermal,
                safety_margin_pct=n.safety_margin_pct,
                metered=n.metered,
            )
        )
    site = topology.site
    fleet = PVFleet.from_records(
        {
            "id": p.id,
            "latitude": p.latitude if p.latitude is not None else site.latitude,
            "longitude": p.longitude if p.longitude is not None else site.longitude,
            "tilt_deg": p.tilt_deg,
            "azimuth_deg": p.azimuth_deg,
            "kwp": p.kwp,
            "inverter_kw": p.inverter_kw,
            "losses_pct": p.losses_pct,
            "altitude_m": site.altitude_m,
        }
        for p in topology.pv_systems
    )
    return GridModel.build(
        site.timezone,
        site.latitude,
        site.longitude,
        nodes,
        fleet,
        [p.node for p in topology.pv_systems],
        [tuple(p.phases) for p in topology.pv_systems],
    )
