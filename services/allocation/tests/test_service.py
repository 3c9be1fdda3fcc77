"""The allocation service in process: MemoryBus + MemoryStore + SimClock, a fake gateway answering commands."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from gridcharge.allocation.main import create_service
from gridcharge.allocation.service import AllocationService
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.plan.v1 import plan_pb2
from gridcharge.shared import contracts as C
from gridcharge.shared.auth import ApiAuth
from gridcharge.shared.bus.base import Record
from gridcharge.shared.bus.memory import MemoryBus
from gridcharge.shared.clock import SimClock
from gridcharge.shared.config import Settings
from gridcharge.shared.http import create_app
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.store.memory import MemoryStore
from gridcharge.shared.topology import Topology, parse_topology
from gridcharge.station.v1 import station_pb2

START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def topo(limit_a: float = 40.0, stations: int = 3) -> Topology:
    return parse_topology(
        {
            "nominal_voltage_v": 230,
            "nodes": [{"id": "site", "kind": "site", "limit_a": [limit_a] * 3, "safety_margin_pct": 0}],
            "stations": [
                {"id": f"cs{i}", "node": "site", "max_current_a": 32, "fallback_current_a": 6}
                for i in range(1, stations + 1)
            ],
        }
    )


def ts(when: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(when)
    return t


@dataclass
class FakeGateway:
    """Answers every command with ``outcome(station)``; records what it saw."""

    bus: MemoryBus
    outcome: Callable[[command_pb2.StationCommand], int] = lambda cmd: command_pb2.COMMAND_OUTCOME_ACCEPTED
    commands: list[command_pb2.StationCommand] = field(default_factory=list)

    async def handle(self, rec: Record) -> None:
        cmd = C.decode(command_pb2.StationCommand, rec.value)
        self.commands.append(cmd)
        out = self.outcome(cmd)
        if out == -1:  # silent: no answer at all
            return
        res = command_pb2.CommandResult(
            command_id=cmd.command_id,
            station_id=cmd.station_id,
            generation=cmd.generation,
            command_key=cmd.command_key,
            outcome=command_pb2.CommandOutcome.ValueType(out),
        )
        await self.bus.publish(C.COMMAND_RESULTS.name, cmd.station_id, res.SerializeToString())

    def profiles(self, station: str, purpose: int) -> list[command_pb2.SetChargingProfile]:
        return [
            c.set_charging_profile
            for c in self.commands
            if c.station_id == station and c.set_charging_profile.profile.purpose == purpose
        ]

    def leases(self, station: str) -> list[command_pb2.SetChargingProfile]:
        """The station-cap leases (station max, stack 1): a one-EVSE station's grant."""
        return [
            p for p in self.profiles(station, command_pb2.PROFILE_PURPOSE_STATION_MAX) if p.profile.stack_level == 1
        ]


@dataclass
class Env:
    rt: Runtime
    clock: SimClock
    bus: MemoryBus
    svc: AllocationService
    gw: FakeGateway

    async def publish_event(self, station: str, **payload: object) -> None:
        ev = station_pb2.StationEvent(station_id=station, occurred_at=ts(self.clock.now()), **payload)  # type: ignore[arg-type]
        await self.bus.publish(C.STATION_EVENTS.name, station, ev.SerializeToString())
        await self.bus.flush()

    async def run(self, seconds: float) -> None:
        for _ in range(int(seconds)):
            await self.clock.advance(1.0)
            await self.bus.flush()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = SimClock(START)
    bus = MemoryBus()
    rt = Runtime(settings=Settings(replica_id="alloc-a"), bus=bus, store=MemoryStore(clock), clock=clock)
    svc = create_service(rt, topo())
    assert isinstance(svc, AllocationService)
    await bus.start()
    gw = FakeGateway(bus)
    await bus.subscribe([C.COMMANDS.name], "fake-gateway", gw.handle)
    await svc.start()
    yield Env(rt, clock, bus, svc, gw)
    await svc.stop()
    await bus.stop()


async def connect(env: Env, station: str) -> None:
    await env.publish_event(station, connected=station_pb2.Connected(replica_id="gw-0"))


async def connect_all(env: Env) -> None:
    """Stations never heard of count at their hardware maximum; connect them all first."""
    for s in env.svc.topology.stations:
        await connect(env, s.id)


async def start_tx(env: Env, station: str, tx: str, evse: int = 1) -> None:
    await env.publish_event(
        station, transaction_started=station_pb2.TransactionStarted(transaction_id=tx, evse_id=evse, connector_id=1)
    )


async def test_fallback_at_connect_then_leases_for_a_session(env: Env) -> None:
    await connect_all(env)
    fb = env.gw.profiles("cs1", command_pb2.PROFILE_PURPOSE_STATION_MAX)
    assert len(fb) == 1
    p = fb[0].profile
    assert fb[0].evse_id == 0 and p.stack_level == 0 and p.profile_id == 1000
    assert p.periods[0].limit == 6.0 and p.rate_unit == common_pb2.RATE_UNIT_A
    assert not p.HasField("valid_to")  # the fallback never ends
    assert p.valid_from.ToDatetime(tzinfo=UTC) < START  # valid from slightly in the past

    await start_tx(env, "cs1", "42")
    await env.run(3)
    leases = env.gw.leases("cs1")
    assert leases, "a station-cap lease is sent after the debounce"
    first = leases[0].profile
    assert leases[0].evse_id == 0 and first.profile_id == 1001 and first.stack_level == 1
    # alone on a 40 A site: first the two idle stations may each draw their 6 A fallback, so 28 A; the site
    # held the car back, so the idle stations' fallbacks are released (0 A) ...
    assert first.periods[0].limit == 28.0
    for idle in ("cs2", "cs3"):
        fbs = [c for c in env.gw.profiles(idle, command_pb2.PROFILE_PURPOSE_STATION_MAX) if c.profile.stack_level == 0]
        assert [c.profile.periods[0].limit for c in fbs] == [6.0, 0.0]
    # ... and the car gets its 32 A once the write budget allows the next raise (a minute after the first)
    await env.run(50)
    assert len(env.gw.leases("cs1")) == 1
    await env.run(15)
    t = env.gw.leases("cs1")[-1].profile
    assert t.periods[0].limit == 32.0
    # the lease ends on the epoch boundary (08:20 UTC with 20-min epochs), not a fixed time after sending
    assert t.valid_to.ToDatetime(tzinfo=UTC) == START + timedelta(minutes=20)
    assert not env.gw.profiles("cs1", command_pb2.PROFILE_PURPOSE_TX), "one EVSE: the station cap is the grant"

    # the command envelope: key, generation, uuid
    cmd = env.gw.commands[-1]
    assert cmd.command_key.startswith("profile/") and cmd.generation >= 1 and len(cmd.command_id) == 32


async def test_generations_increase_and_lease_is_renewed_once_per_epoch(env: Env) -> None:
    await connect_all(env)
    await start_tx(env, "cs1", "1")
    await env.run(70)
    n0 = len(env.gw.leases("cs1"))
    await env.run(900)  # 08:16: the renewal window of the 08:20 boundary opens
    leases = [c for c in env.gw.commands if c.set_charging_profile.profile.stack_level == 1 and c.station_id == "cs1"]
    assert len(leases) == n0 + 1, "one renewal"
    assert leases[-1].set_charging_profile.profile.valid_to.ToDatetime(tzinfo=UTC) == START + timedelta(minutes=40)
    gens = [c.generation for c in leases]
    assert gens == sorted(gens) and len(set(gens)) == len(gens)
    assert len({c.set_charging_profile.profile.profile_id for c in leases}) == 1  # resend replaces
    await env.run(1200)
    assert (
        len([c for c in env.gw.commands if c.set_charging_profile.profile.stack_level == 1 and c.station_id == "cs1"])
        == n0 + 2
    ), "and one more an epoch later"


async def test_equal_sessions_share_the_site_limit(env: Env) -> None:
    await connect_all(env)
    for s in ("cs1", "cs2", "cs3"):
        await start_tx(env, s, "t" + s)
    await env.run(3)
    # what each station holds: a lease, or its fallback where the plan did not raise it
    grants = {s: env.svc.alloc.grant_a[f"{s}/1"] for s in ("cs1", "cs2", "cs3")}
    assert sum(grants.values()) <= 40.0 + 1e-6
    assert all(g == 0 or g >= 6.0 for g in grants.values())
    assert sum(grants.values()) >= 40.0 - 6.0 - 0.5  # the site is used (one idle floor may stay reserved)
    assert not any(env.gw.profiles(s, command_pb2.PROFILE_PURPOSE_TX) for s in ("cs1", "cs2", "cs3"))


async def test_rejecting_station_is_budgeted_at_worst_case(env: Env) -> None:
    def outcome(cmd: command_pb2.StationCommand) -> int:
        lease = cmd.set_charging_profile.profile.stack_level == 1
        if cmd.station_id == "cs2" and lease:
            return command_pb2.COMMAND_OUTCOME_REJECTED
        return command_pb2.COMMAND_OUTCOME_ACCEPTED

    env.gw.outcome = outcome
    await connect_all(env)
    await start_tx(env, "cs2", "tcs2")  # cs2 first: it is raised above its fallback (and refuses)
    await env.run(3)
    for s in ("cs1", "cs3"):
        await start_tx(env, s, "t" + s)
    await env.run(3)
    now = env.clock.time()
    wc = env.svc.alloc.worst_case_a(now)
    assert env.svc.alloc.ledgers["cs2"].in_failsafe(now, 120)
    assert wc["cs2"] == 6.0  # its fallback: the last limit it accepted
    assert sum(wc.values()) <= 40.0 + 1e-6
    # re-planned within one cycle: the others share what cs2 cannot take
    await env.run(61)
    caps = env.svc.alloc.last.station_caps_a if env.svc.alloc.last else {}
    assert caps.get("cs1", 0) + caps.get("cs3", 0) >= 40.0 - 6.0 - 0.5

    # a station that never answers: its lease counts until the lease ends
    env.gw.outcome = lambda cmd: -1 if cmd.station_id == "cs1" else command_pb2.COMMAND_OUTCOME_ACCEPTED
    await env.run(200)
    now = env.clock.time()
    assert sum(env.svc.alloc.worst_case_a(now).values()) <= 40.0 + 1e-6


async def test_plans_published_and_api(env: Env) -> None:
    plans: list[plan_pb2.SessionPlan] = []

    async def on_plan(rec: Record) -> None:
        plans.append(C.decode(plan_pb2.SessionPlan, rec.value))

    await env.bus.subscribe([C.SESSION_PLANS.name], "plans", on_plan)
    await connect_all(env)
    await start_tx(env, "cs1", "7")
    await env.publish_event(
        "cs1",
        charging_needs=station_pb2.ChargingNeeds(
            evse_id=1, energy_amount_wh=11000, departure_time=ts(START + timedelta(hours=2))
        ),
    )
    await env.run(3)
    assert plans and plans[-1].session_id == "cs1/1/7" and plans[-1].energy_needed_wh == 11000
    assert await env.rt.store.get("allocation:plan:session:cs1/1/7") is not None

    app = create_app(
        "t",
        env.rt.health,
        env.svc.routers,
        auth=ApiAuth.with_tokens(ops=("operator", "allocation-test-operator-token-00")),
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"Authorization": "Bearer allocation-test-operator-token-00"},
    ) as c:
        r = await c.get("/allocation/sessions")
        assert r.status_code == 200 and r.json()[0]["energy_needed_wh"] == 11000
        r = await c.put("/allocation/sessions/cs1/1/7/preferences", json={"energy_wh": 5000, "priority": 3})
        assert r.status_code == 200 and r.json()["priority"] == 3
        r = await c.post("/allocation/limits", json={"node_id": "site", "limit_a": [20, 20, 20], "limit_id": "dso1"})
        assert r.status_code == 202
        r = await c.post("/allocation/limits", json={"node_id": "nowhere", "limit_a": [20, 20, 20]})
        assert r.status_code == 404
        await env.run(3)
        r = await c.get("/allocation/plan")
        body = r.json()
        assert body["sessions"][0]["granted_a"] <= 20.0
        r = await c.get("/allocation/limits")
        assert r.json()["nodes"]["site"]["limit_w"]["L1"] == pytest.approx(20 * 230)
        r = await c.get("/allocation/topology")
        assert r.json()["stations"][0]["online"] is True
        r = await c.delete("/allocation/limits/site/dso1")
        assert r.status_code == 202
        assert (await c.get("/openapi.json")).status_code == 200
        metrics = (await c.get("/metrics")).text
        for name in (
            "gridcharge_plan_solve_seconds",
            "gridcharge_sessions_active",
            "gridcharge_sessions_at_risk",
            "gridcharge_binding_constraints",
            "gridcharge_allocation_commands_total",
            "gridcharge_leases",
            "gridcharge_energy_requested_joules",
            "gridcharge_node_limit_watts",
        ):
            assert name in metrics, name


async def test_limiter_lowers_at_once_on_overload(env: Env) -> None:
    await connect_all(env)
    await start_tx(env, "cs1", "1")
    await env.run(65)
    assert env.gw.leases("cs1")[-1].profile.periods[0].limit == 32.0
    # base load appears: 30 A on every phase measured, limit 40 A
    v = 230.0
    nl = grid_pb2.NodeLoad(
        node_id="site",
        as_of=ts(env.clock.now()),
        load_w=common_pb2.PhaseValues(l1=62 * v, l2=62 * v, l3=62 * v),
        base_load_w=common_pb2.PhaseValues(l1=30 * v, l2=30 * v, l3=30 * v),
    )
    await env.bus.publish(C.NODE_LOAD.name, "site", nl.SerializeToString())
    await env.bus.flush()
    lim = env.gw.leases("cs1")[-1].profile.periods[0].limit
    assert lim <= 40 * 0.98 - 30 + 0.1  # lowered within the same message, margin 2 %


async def test_standby_does_not_command(env: Env) -> None:
    clock2 = env.clock
    rt2 = Runtime(settings=Settings(replica_id="alloc-b"), bus=env.bus, store=env.rt.store, clock=clock2)
    svc2 = AllocationService(rt2, env.svc.topology)
    await svc2.start()
    try:
        assert env.svc.leader.is_leader and not svc2.leader.is_leader
        await connect_all(env)
        await start_tx(env, "cs1", "1")
        await env.run(3)
        producers = {c.meta.producer for c in env.gw.commands}
        assert producers == {"allocation/alloc-a"}
        # the standby saw the leader's commands and results: same worst case
        assert svc2.alloc.worst_case_a(env.clock.time()) == env.svc.alloc.worst_case_a(env.clock.time())
        # leader goes away: standby takes over after the lease TTL
        await env.svc.stop()
        await env.run(20)
        assert svc2.leader.is_leader
    finally:
        await svc2.stop()


async def test_restart_restores_sessions_leases_and_connections(env: Env) -> None:
    await connect_all(env)
    await start_tx(env, "cs1", "1")
    await env.run(3)
    cap = env.svc.alloc.worst_case_a(env.clock.time())["cs1"]
    assert cap > 6.0
    await env.rt.store.hset("gw:connected", "cs1", b"gw-0|ocpp1.6|1|0")
    await env.svc.stop()
    # a new process: fresh bus (nothing replayed), same store
    bus2 = MemoryBus()
    await bus2.start()
    rt2 = Runtime(settings=Settings(replica_id="alloc-c"), bus=bus2, store=env.rt.store, clock=env.clock)
    svc2 = AllocationService(rt2, env.svc.topology)
    await svc2.start()
    try:
        now = env.clock.time()
        assert "cs1/1" in svc2.alloc.book.sessions
        led = svc2.alloc.ledgers["cs1"]
        assert led.online and led.fallback_installed
        assert svc2.alloc.worst_case_a(now)["cs1"] == cap  # the lease it may still hold counts
        assert svc2.alloc.worst_case_a(now + 1300)["cs1"] == 6.0  # until it ends
    finally:
        await svc2.stop()
        await bus2.stop()


async def test_watt_only_station_gets_its_fallback_again_in_watts(env: Env) -> None:
    def outcome(cmd: command_pb2.StationCommand) -> int:
        p = cmd.set_charging_profile.profile
        ok = cmd.station_id != "cs1" or p.rate_unit == common_pb2.RATE_UNIT_W
        return command_pb2.COMMAND_OUTCOME_ACCEPTED if ok else command_pb2.COMMAND_OUTCOME_INVALID

    env.gw.outcome = outcome
    await connect_all(env)
    assert not env.svc.alloc.ledgers["cs1"].fallback_installed
    caps = station_pb2.StationCapabilities(
        station_id="cs1", allowed_rate_units=[common_pb2.RATE_UNIT_W], max_periods_per_schedule=5
    )
    await env.bus.publish(C.STATION_CAPABILITIES.name, "cs1", caps.SerializeToString())
    await env.bus.flush()
    await env.run(3)  # within the debounce, not after the fail-safe hold
    assert env.svc.alloc.ledgers["cs1"].fallback_installed
    fb = env.gw.profiles("cs1", command_pb2.PROFILE_PURPOSE_STATION_MAX)[-1].profile
    assert fb.rate_unit == common_pb2.RATE_UNIT_W and fb.periods[0].limit == 6 * 230 * 3


async def test_late_disconnect_from_the_old_replica_is_ignored(env: Env) -> None:
    await connect_all(env)
    await env.publish_event("cs1", connected=station_pb2.Connected(replica_id="gw-1"))
    await env.publish_event("cs1", disconnected=station_pb2.Disconnected(replica_id="gw-0", reason="replica died"))
    assert env.svc.alloc.ledgers["cs1"].online
    await env.publish_event("cs1", disconnected=station_pb2.Disconnected(replica_id="gw-1", reason="closed"))
    assert not env.svc.alloc.ledgers["cs1"].online


async def test_bad_input_is_skipped_and_the_service_keeps_working(env: Env) -> None:
    from gridcharge.forecast.v1 import forecast_pb2

    nan = float("nan")
    bad: list[tuple[str, bytes]] = [
        (t.name, b"\xff\x00garbage") for t in (C.STATION_EVENTS, C.METER_VALUES, C.COMMAND_RESULTS, C.NODE_LOAD)
    ]
    bad += [
        (
            C.STATION_EVENTS.name,
            station_pb2.StationEvent(station_id="x" * 5000, connected=station_pb2.Connected()).SerializeToString(),
        ),
        (
            C.STATION_EVENTS.name,
            station_pb2.StationEvent(
                station_id="cs1",
                charging_needs=station_pb2.ChargingNeeds(
                    evse_id=99, energy_amount_wh=nan, departure_time=Timestamp(seconds=2**40)
                ),
            ).SerializeToString(),
        ),
        (
            C.STATION_EVENTS.name,
            station_pb2.StationEvent(
                station_id="cs1", transaction_started=station_pb2.TransactionStarted(transaction_id="", evse_id=-3)
            ).SerializeToString(),
        ),
        (
            C.METER_VALUES.name,
            station_pb2.MeterValues(
                station_id="cs1",
                evse_id=1,
                values=[station_pb2.SampledValue(measurand="Energy.Active.Import.Register", value=nan)],
            ).SerializeToString(),
        ),
        (
            C.NODE_LOAD.name,
            grid_pb2.NodeLoad(node_id="site", load_w=common_pb2.PhaseValues(l1=nan)).SerializeToString(),
        ),
        (C.HEADROOM.name, forecast_pb2.HeadroomForecast(node_id="site", step_s=-5).SerializeToString()),
        (C.EXTERNAL_LIMITS.name, grid_pb2.ExternalLimit(node_id="nowhere").SerializeToString()),
        (
            C.STATION_CAPABILITIES.name,
            station_pb2.StationCapabilities(
                station_id="cs1", allowed_rate_units=[common_pb2.RateUnit.ValueType(77)], max_periods_per_schedule=-1
            ).SerializeToString(),
        ),
        (C.COMMAND_RESULTS.name, command_pb2.CommandResult(station_id="cs1", command_id="unknown").SerializeToString()),
    ]
    for topic, value in bad:
        await env.bus.publish(topic, "k", value)
    await env.bus.flush()
    await connect_all(env)
    await start_tx(env, "cs1", "ok")
    await env.run(3)
    assert env.gw.leases("cs1"), "still planning after bad input"
