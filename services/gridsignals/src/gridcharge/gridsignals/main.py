"""Wiring of the grid-signals service: settings → VTN client → GridSignalsService; ``main`` for ``python -m``."""

from __future__ import annotations

from gridcharge.gridsignals.adapters.vtn import VtnClient
from gridcharge.gridsignals.core.limits import NodeMap
from gridcharge.gridsignals.service import GridSignalsService, VenOptions
from gridcharge.gridsignals.settings import GridSignalsSettings, parse_fallback_w, parse_pairs
from gridcharge.shared.config import ENV_PREFIX
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.service import run_service
from gridcharge.shared.topology import Topology

DEFAULT_HTTP_PORT = 8084  # when run alone; the embedded process serves all on 8080


def options_from_settings(settings: GridSignalsSettings, topology: Topology) -> VenOptions:
    """Settings → VenOptions, checked against the topology (a node that does not exist is a config error)."""
    node_map = parse_pairs(settings.openadr_node_map)
    fallback = parse_fallback_w(settings.openadr_fallback_w)
    known = topology.node_by_id
    for key, nodes in (("OPENADR_NODE_MAP", list(node_map.values())), ("OPENADR_FALLBACK_W", list(fallback))):
        unknown = sorted({n for n in nodes if n not in known})
        if unknown:
            raise ConfigError("environment", ENV_PREFIX + key, f"unknown topology node(s) {unknown[:5]}")
    if not node_map:
        raise ConfigError(
            "environment",
            ENV_PREFIX + "OPENADR_NODE_MAP",
            "empty: say which node each event target or program limits (e.g. '*=transformer-1')",
        )
    if settings.openadr_poll_s >= settings.openadr_fallback_after_s:
        raise ConfigError(
            "environment",
            ENV_PREFIX + "OPENADR_FALLBACK_AFTER_S",
            f"must be longer than GRIDCHARGE_OPENADR_POLL_S ({settings.openadr_poll_s:g} s)",
        )
    return VenOptions(
        node_map=NodeMap(node_map),
        fallback_w=fallback,
        programs=frozenset(p.strip() for p in settings.openadr_programs.split(",") if p.strip()),
        ven_name=settings.openadr_ven_name,
        poll_s=settings.openadr_poll_s,
        fallback_after_s=settings.openadr_fallback_after_s,
        report_s=settings.openadr_report_s,
    )


def create_service(rt: Runtime, topology: Topology) -> GridSignalsService:
    """Factory used by `gridcharge serve` and `python -m gridcharge.gridsignals`; needs a VTN URL."""
    settings = GridSignalsSettings.from_env(**rt.settings.model_dump())
    if not settings.openadr_vtn_url:
        raise ConfigError("environment", ENV_PREFIX + "OPENADR_VTN_URL", "not set: the OpenADR VEN needs its VTN")
    if not settings.openadr_client_id:
        raise ConfigError("environment", ENV_PREFIX + "OPENADR_CLIENT_ID", "not set: the VEN's OAuth2 client id")
    try:
        secret = settings.client_secret()
    except OSError as exc:
        raise ConfigError(
            "environment", ENV_PREFIX + "OPENADR_CLIENT_SECRET_FILE", f"cannot read: {exc.strerror}"
        ) from None
    options = options_from_settings(settings, topology)
    vtn = VtnClient(
        settings.openadr_vtn_url,
        settings.openadr_client_id,
        secret,
        rt.clock,
        token_url=settings.openadr_token_url,
        timeout_s=settings.openadr_timeout_s,
        max_response_bytes=settings.openadr_max_response_bytes,
    )
    return GridSignalsService(rt, topology, vtn, options)


create_service.service_name = "gridsignals"  # type: ignore[attr-defined]


def main() -> int:
    """Run the grid-signals service alone (HTTP on GRIDCHARGE_HTTP_PORT, default 8084)."""
    return run_service("gridsignals", [create_service], DEFAULT_HTTP_PORT)
