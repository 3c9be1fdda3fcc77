"""The gateway as a hostable service: settings, registry, dispatcher, WebSocket server and operator API."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from fastapi import APIRouter
from gridcharge.gateway.adapters.authorization import AcceptAll, Authorizer, LocalList, Upstream, load_entries
from gridcharge.gateway.adapters.client_certs import ClientCerts, check_client_certs_dir
from gridcharge.gateway.adapters.context import GatewayContext
from gridcharge.gateway.adapters.dispatcher import Dispatcher
from gridcharge.gateway.adapters.http import build_profile_check_router, build_router
from gridcharge.gateway.adapters.profile_check import ProfileChecker
from gridcharge.gateway.adapters.registry import Registry
from gridcharge.gateway.adapters.server import OcppServer
from gridcharge.gateway.adapters.upstream import Proxy
from gridcharge.gateway.config import (
    GatewaySettings,
    check_gateway_files,
    gateway_settings,
    load_credentials,
    load_upstream_passwords,
)
from gridcharge.gateway.core.limits import StationFacts
from gridcharge.gateway.handlers.base import StationSession
from gridcharge.shared.contracts import (
    COMMAND_RESULTS,
    EXTERNAL_LIMITS,
    METER_VALUES,
    STATION_CAPABILITIES,
    STATION_EVENTS,
)
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.http import os_error_text
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.topology import Topology

PRODUCED_TOPICS = (STATION_EVENTS, METER_VALUES, STATION_CAPABILITIES, COMMAND_RESULTS, EXTERNAL_LIMITS)
log = logging.getLogger(__name__)


class GatewayService:
    """The OCPP gateway as a hostable service; `ocpp_port` is the bound port (settings.ocpp_port 0 = any)."""

    name = "gateway"

    def __init__(
        self, rt: Runtime, topology: Topology, settings: GatewaySettings | None = None, upstream: Upstream | None = None
    ) -> None:
        self.rt = rt
        self.settings = settings or gateway_settings(rt.settings)
        check_gateway_files(self.settings)
        self.credentials = load_credentials(self.settings.credentials_file)
        known = frozenset(s.id for s in topology.stations) | frozenset(self.credentials.hashes)
        self.registry = Registry(rt.store, self.settings.replica_id, rt.clock)
        self.authorizer = build_authorizer(self.settings, rt, upstream)
        facts = {
            s.id: StationFacts(s.id, s.node, len(s.phase_map), topology.nominal_voltage_v) for s in topology.stations
        }
        self.ctx = GatewayContext(
            self.settings,
            rt.bus,
            rt.store,
            rt.clock,
            known,
            self.registry,
            self.authorizer,
            facts,
            {s.id: [e.id for e in s.evses] for s in topology.stations},
        )
        self.sessions: dict[str, StationSession] = {}
        self.dispatcher = Dispatcher(self.ctx, self.registry, self.sessions)
        # the closed-loop profile check (docs/grid-interfaces.md): told of accepted writes, reports and events
        self.checker = ProfileChecker(self.ctx, self.sessions, self.dispatcher.enqueue)
        self.dispatcher.on_profile_written = self.checker.profile_written
        self.ctx.on_profiles_report = self.checker.collect_report
        self.ctx.event_observer = self.checker.observe
        self._check_router = build_profile_check_router(self.dispatcher)
        self.ctx.on_boot_accepted = self.dispatcher.read_capabilities
        self.ctx.on_unregistered_call = self.dispatcher.request_boot
        self.proxy = (
            Proxy(
                self.ctx,
                load_upstream_passwords(self.settings.upstream_passwords_file),
                upstream_client_certs(self.settings, [s.id for s in topology.stations]),
            )
            if self.settings.proxy_mode
            else None
        )
        self.server = OcppServer(self.ctx, self.registry, self.dispatcher, self.sessions, self.credentials, self.proxy)
        self._routers = [build_router(self.registry, self.dispatcher)]

    @property
    def routers(self) -> list[APIRouter]:
        return [*self._routers, self._check_router]

    @property
    def ocpp_port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        ensure = getattr(self.rt.bus, "ensure_topics", None)
        if ensure is not None:
            # create the topics we produce up front: the first publish to a missing topic is slow (admin
            # round trip, leader election) and would otherwise stall the first burst of stations
            await ensure([t.name for t in PRODUCED_TOPICS])
        await self.registry.start()
        await self.dispatcher.start()
        await self.checker.start()
        try:
            await self.server.start()
        except OSError as exc:
            raise ConfigError(
                "start-up",
                "GRIDCHARGE_OCPP_PORT",
                f"cannot listen on {self.settings.ocpp_host}:{self.settings.ocpp_port}: {os_error_text(exc)}",
            ) from None
        self.rt.health.add("gateway", lambda: self.server.server is not None)
        log.info("idToken authorization", extra={"mode": self.settings.authorization})
        if self.proxy is not None:
            # the host only, never the path or anything after it
            log.info(
                "proxy mode: stations relayed to the upstream CSMS",
                extra={
                    "upstream_host": urlsplit(self.settings.upstream_url).hostname,
                    "security_profile": self.settings.upstream_security_profile,
                },
            )

    async def stop(self) -> None:
        await self.server.stop()
        if self.proxy is not None:
            await self.proxy.stop()
        await self.dispatcher.stop()
        await self.registry.stop()
        await self.checker.stop()


def upstream_client_certs(settings: GatewaySettings, station_ids: list[str]) -> ClientCerts | None:
    """Profile 3 towards the upstream: every topology station needs its certificate at start-up (one line
    naming the file otherwise); those expiring within 14 days are named in a warning."""
    if settings.upstream_security_profile != 3 or settings.upstream_client_certs_dir is None:
        return None
    soon = check_client_certs_dir(settings.upstream_client_certs_dir, station_ids)
    if soon:
        log.warning(
            "upstream client certificates expire within 14 days",
            extra={"stations": ",".join(s[:48] for s in soon[:20]), "count": len(soon)},
        )
    return ClientCerts(settings.upstream_client_certs_dir, settings.upstream_ca_file)


def build_authorizer(settings: GatewaySettings, rt: Runtime, upstream: Upstream | None = None) -> Authorizer:
    """The idToken authorization source for `settings.authorization` (see adapters.authorization)."""
    if settings.authorization == "accept-all":
        log.debug(
            "authorization: accept-all (every idToken is Accepted; GRIDCHARGE_AUTHORIZATION=local-list "
            "checks tokens against a list)"
        )
        return AcceptAll()
    entries = load_entries(settings.id_tokens_file)
    log.debug("authorization: local-list", extra={"file_entries": len(entries), "upstream": upstream is not None})
    return LocalList(rt.store, rt.clock, entries, upstream, timeout_s=settings.cluster_timeout_s)
