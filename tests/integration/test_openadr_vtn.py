"""The OpenADR VEN against a real OpenADR 3 VTN (LF Energy OpenLEADR-rs from crates.io, on PostgreSQL) and real
Kafka: a DSO creates a program and a capacity-limit event as the business-logic (BL) client through the VTN's
API; the production VEN code (httpx client + service) picks it up and an ExternalLimit with the event's windows
appears on Kafka; the allocation core's budget shows it binding with source openadr; a usage report reaches the
VTN; the VTN is stopped: the last known limit stays, then the configured fallback applies. A PRICE event goes
the whole way: VTN → VEN → PriceSignal on Kafka → the allocation service (production code on the same Kafka and
Redis) → its price series and the plan, which puts a car's energy into the event's cheap hour.

`deploy/scripts/openadr-vtn.sh start` installs the VTN on first use (a cargo build, several minutes) and starts it;
when that fails the test FAILS with the script's output (no skip).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gridcharge.allocation.adapters.codec import external_limit_window
from gridcharge.allocation.core.allocator import AllocatorConfig
from gridcharge.allocation.core.budget import node_capacity
from gridcharge.allocation.core.leases import LeasePolicy
from gridcharge.allocation.core.prices import plan_prices
from gridcharge.allocation.service import AllocationService
from gridcharge.command.v1 import command_pb2
from gridcharge.grid.v1 import grid_pb2
from gridcharge.gridsignals.adapters.vtn import VtnClient
from gridcharge.gridsignals.core.limits import FALLBACK_LIMIT_ID, NodeMap
from gridcharge.gridsignals.service import GridSignalsService, VenOptions
from gridcharge.shared import contracts
from gridcharge.shared.bus.base import Record
from gridcharge.shared.bus.kafka import KafkaBus
from gridcharge.shared.clock import RealClock
from gridcharge.shared.codec import meta, phase_values, timestamp_dt, to_timestamp
from gridcharge.shared.config import Settings
from gridcharge.shared.runtime import Runtime
from gridcharge.shared.store.memory import MemoryStore
from gridcharge.shared.store.redis import RedisStore
from gridcharge.shared.topology import parse_topology
from gridcharge.station.v1 import station_pb2

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(3000)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "scripts" / "openadr-vtn.sh"
RUN_DIR = Path(os.environ.get("GRIDCHARGE_RUN_DIR", Path.home() / ".cache" / "gridcharge" / "run"))
TOPOLOGY = parse_topology(
    {
        "nominal_voltage_v": 230,
        "nodes": [{"id": "site", "kind": "site", "limit_a": [63, 63, 63], "safety_margin_pct": 0}],
        "stations": [{"id": "CP1", "node": "site", "max_current_a": 32, "fallback_current_a": 6}],
    }
)
FALLBACK_W = 3_000.0
FALLBACK_AFTER_S = 8.0


def _script(cmd: str) -> subprocess.CompletedProcess[str]:
    # first use builds the VTN with cargo: allow for it (measured ~7 min on 2 busy cores)
    return subprocess.run([str(SCRIPT), cmd], capture_output=True, text=True, timeout=2400, check=False)


@pytest.fixture
def vtn() -> Iterator[dict[str, str]]:
    started = _script("start")
    if started.returncode != 0:
        pytest.fail(
            f"the OpenADR VTN did not start (deploy/scripts/openadr-vtn.sh start):\n"
            f"{started.stdout[-2000:]}\n{started.stderr[-3000:]}"
        )
    env = dict(line.split("=", 1) for line in (RUN_DIR / "openadr-vtn.env").read_text().split())
    yield env
    _script("stop")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _bl(env: dict[str, str]) -> httpx.AsyncClient:
    """An HTTP client logged in as the DSO's business logic."""
    base = env["OPENADR_VTN_URL"]
    async with httpx.AsyncClient() as c:
        tok = await c.post(
            f"{base}/auth/token",
            data={"grant_type": "client_credentials"},
            auth=(env["OPENADR_BL_CLIENT_ID"], env["OPENADR_BL_CLIENT_SECRET"]),
        )
    tok.raise_for_status()
    return httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {tok.json()['access_token']}"}, timeout=10
    )


async def _until(what: str, check: Callable[[], Awaitable[Any] | Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def kafka(kafka_bootstrap: str, unique: str) -> AsyncIterator[KafkaBus]:
    bus = KafkaBus(kafka_bootstrap, prefix=f"t{unique}.")
    await bus.start()
    yield bus
    await bus.stop()


async def test_vtn_event_to_kafka_limit_report_and_fallback(vtn: dict[str, str], kafka: KafkaBus, unique: str) -> None:
    bl = await _bl(vtn)
    program_name = f"gc-dso-{unique}"
    r = await bl.post("/programs", json={"objectType": "PROGRAM", "programName": program_name})
    assert r.status_code == 201, r.text
    program_id = r.json()["id"]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    r = await bl.post(
        "/events",
        json={
            "objectType": "EVENT",
            "programID": program_id,
            "eventName": "feeder congestion",
            "intervalPeriod": {"start": _iso(start), "duration": "PT1H"},
            "payloadDescriptors": [
                {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KW"}
            ],
            "reportDescriptors": [{"payloadType": "USAGE"}],
            "intervals": [
                {"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [30]}]},
                {"id": 1, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [15]}]},
            ],
        },
    )
    assert r.status_code == 201, r.text
    event_id = r.json()["id"]

    # everything the VEN puts on Kafka, read back by an independent consumer
    limits: list[grid_pb2.ExternalLimit] = []

    async def on_limit(rec: Record) -> None:
        limits.append(contracts.decode(grid_pb2.ExternalLimit, rec.value))

    sub = await kafka.subscribe([contracts.EXTERNAL_LIMITS.name], f"t{unique}-check", on_limit)
    clock = RealClock()
    rt = Runtime(settings=Settings(bus="kafka", replica_id="it"), bus=kafka, store=MemoryStore(clock), clock=clock)
    client = VtnClient(vtn["OPENADR_VTN_URL"], vtn["OPENADR_VEN_CLIENT_ID"], vtn["OPENADR_VEN_CLIENT_SECRET"], clock)
    svc = GridSignalsService(
        rt,
        TOPOLOGY,
        client,
        VenOptions(
            node_map=NodeMap({program_name: "site"}),
            fallback_w={"site": (FALLBACK_W,) * 3},
            programs=frozenset({program_name}),
            poll_s=1.0,
            fallback_after_s=FALLBACK_AFTER_S,
            report_s=2.0,
        ),
    )
    await svc.start()
    try:
        # 1. the event's limit on Kafka with the event's windows: 30 kW total = 10 kW per phase, then 5 kW
        el = await _until(
            "the OpenADR limit on Kafka",
            lambda: next((m for m in limits if m.limit_id == f"openadr-{event_id}" and m.valid_to.seconds), None),
            30,
        )
        assert (el.node_id, el.source) == ("site", "openadr")
        assert timestamp_dt(el.valid_from) == start and timestamp_dt(el.valid_to) == start + timedelta(hours=2)
        assert (el.limit_w.l1, el.limit_w.l2, el.limit_w.l3) == pytest.approx((10_000, 10_000, 10_000))
        assert [(timestamp_dt(s.start), s.limit_w.l1) for s in el.schedule] == [
            (start + timedelta(hours=1), pytest.approx(5_000))
        ]
        assert el.fallback_limit_w.l1 == FALLBACK_W and el.stale_after_s == FALLBACK_AFTER_S

        # 2. the allocation core's budget: the limit binds (site rating 63 A x 230 V = 14.5 kW per phase)
        now = time.time()
        window = external_limit_window(el, datetime.now(UTC))
        cap = node_capacity(TOPOLOGY, {}, [window], now, [now, start.timestamp() + 3600 + 60])
        assert window.source == "openadr"
        assert cap.source["site"] == (f"external:openadr-{event_id}",) * 3
        assert cap.w["site"][:, 0] == pytest.approx([10_000] * 3)
        assert cap.w["site"][:, 1] == pytest.approx([5_000] * 3)

        # 3. node load on the bus → a usage report at the VTN
        async def load_and_reports() -> list[dict[str, Any]]:
            nl = grid_pb2.NodeLoad(
                meta=meta("test", time.time()),
                node_id="site",
                as_of=to_timestamp(time.time()),
                load_w=phase_values((4_000, 4_000, 4_000)),
            )
            await kafka.publish(contracts.NODE_LOAD.name, "site", nl.SerializeToString())
            got = await bl.get("/reports", params={"eventID": event_id})
            return (
                [
                    x
                    for x in got.json()
                    if x["clientName"] == "gridcharge"
                    and x["resources"]
                    and x["resources"][0]["intervals"][0]["payloads"][0]["values"][0] > 0
                ]
                if got.status_code == 200
                else []
            )

        [report, *_] = await _until("a usage report at the VTN", load_and_reports, 30)
        res = report["resources"][0]
        assert res["resourceName"] == "site"
        assert res["intervals"][0]["payloads"][0]["type"] == "USAGE"

        # 4. the VTN goes away: the last known limit stays (no withdrawal) ...
        stopped = _script("stop")
        assert stopped.returncode == 0, stopped.stderr
        lost_at = time.monotonic()
        await _until("the VEN to notice", lambda: svc.link.state == "unreachable", 15)
        n_before = len(limits)
        await asyncio.sleep(2)
        assert svc.link.state == "unreachable" and (svc.link.unreachable_for_s(time.time()) < FALLBACK_AFTER_S)
        assert not [m for m in limits[n_before:] if m.valid_to == m.valid_from]  # nothing withdrawn
        assert (("site", f"openadr-{event_id}")) in svc.published
        # ... then the configured fallback: a limit of its own on Kafka, and the event's limit gone stale
        fb = await _until(
            "the fallback limit on Kafka",
            lambda: next((m for m in limits if m.limit_id == FALLBACK_LIMIT_ID and m.source == "openadr"), None),
            30,
        )
        assert time.monotonic() - lost_at >= FALLBACK_AFTER_S - 2.0
        assert (fb.node_id, fb.limit_w.l1, fb.HasField("valid_to")) == ("site", FALLBACK_W, False)
        now = time.time()
        windows = [
            external_limit_window(m, datetime.now(UTC))
            for m in limits
            if m.limit_id in (f"openadr-{event_id}", FALLBACK_LIMIT_ID)
        ]
        latest = {w.limit_id: w for w in windows}  # the newest record of each limit, as a consumer keeps
        cap = node_capacity(TOPOLOGY, {}, latest.values(), now, [now])
        assert cap.w["site"][:, 0] == pytest.approx([FALLBACK_W] * 3)
        assert cap.source["site"][0].startswith("external:openadr-")
        assert svc.link.in_fallback
    finally:
        await svc.stop()
        await sub.stop()
        await bl.aclose()


PRICE_TOPOLOGY = parse_topology(
    {
        "site": {"timezone": "Europe/Berlin"},
        "nominal_voltage_v": 230,
        "nodes": [{"id": "site", "kind": "site", "limit_a": [63, 63, 63], "safety_margin_pct": 0}],
        # no fallback floor: everything the car gets is planned (a floor would be its base in every slot)
        "stations": [{"id": "CP1", "node": "site", "max_current_a": 32, "fallback_current_a": 0}],
        "tariff": {"currency": "EUR", "default_price_per_kwh": 0.30},
    }
)


@pytest.mark.redis
async def test_vtn_price_event_reaches_the_allocator_plan(
    vtn: dict[str, str], kafka: KafkaBus, redis_store: RedisStore, unique: str
) -> None:
    bl = await _bl(vtn)
    program_name = f"gc-prices-{unique}"
    r = await bl.post("/programs", json={"objectType": "PROGRAM", "programName": program_name})
    assert r.status_code == 201, r.text
    program_id = r.json()["id"]
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    hourly = [400, 400, 50, 400]  # EUR/MWh: the third hour is cheap
    r = await bl.post(
        "/events",
        json={
            "objectType": "EVENT",
            "programID": program_id,
            "eventName": "day-ahead prices",
            "intervalPeriod": {"start": _iso(start), "duration": "PT1H"},
            "payloadDescriptors": [
                {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "PRICE", "units": "MWH", "currency": "EUR"}
            ],
            "intervals": [{"id": i, "payloads": [{"type": "PRICE", "values": [v]}]} for i, v in enumerate(hourly)],
        },
    )
    assert r.status_code == 201, r.text
    event_id = r.json()["id"]
    cheap_from, cheap_to = start + timedelta(hours=2), start + timedelta(hours=3)

    prices: list[grid_pb2.PriceSignal] = []

    async def on_price(rec: Record) -> None:
        prices.append(contracts.decode(grid_pb2.PriceSignal, rec.value))

    async def station_accepts(rec: Record) -> None:
        """CP1 behind a gateway accepts every profile (the gateway's CommandResult, as it would publish it)."""
        cmd = contracts.decode(command_pb2.StationCommand, rec.value)
        res = command_pb2.CommandResult(
            command_id=cmd.command_id,
            station_id=cmd.station_id,
            generation=cmd.generation,
            command_key=cmd.command_key,
            outcome=command_pb2.COMMAND_OUTCOME_ACCEPTED,
        )
        await kafka.publish(contracts.COMMAND_RESULTS.name, cmd.station_id, res.SerializeToString())

    sub = await kafka.subscribe([contracts.PRICES.name], f"t{unique}-prices", on_price)
    gw = await kafka.subscribe([contracts.COMMANDS.name], f"t{unique}-gateway", station_accepts)
    clock = RealClock()
    alloc_rt = Runtime(settings=Settings(bus="kafka", replica_id="it-alloc"), bus=kafka, store=redis_store, clock=clock)
    allocation = AllocationService(
        alloc_rt,
        PRICE_TOPOLOGY,
        AllocatorConfig(
            plan_interval_s=1.0, debounce_s=0.2, leases=LeasePolicy(epoch_s=120.0, renew_lead_s=20.0, clock_skew_s=2.0)
        ),
        tick_s=0.2,
    )
    ven_rt = Runtime(
        settings=Settings(bus="kafka", replica_id="it-ven"), bus=kafka, store=MemoryStore(clock), clock=clock
    )
    client = VtnClient(vtn["OPENADR_VTN_URL"], vtn["OPENADR_VEN_CLIENT_ID"], vtn["OPENADR_VEN_CLIENT_SECRET"], clock)
    ven = GridSignalsService(
        ven_rt,
        PRICE_TOPOLOGY,
        client,
        VenOptions(
            node_map=NodeMap({program_name: "site"}), programs=frozenset({program_name}), poll_s=1.0, report_s=0
        ),
    )
    await allocation.start()
    for s in allocation._subs:
        await s.wait_assigned(60)
    await ven.start()
    try:
        # 1. the VEN's PriceSignal on Kafka: EUR/MWh → EUR/kWh, the event's hourly windows, scoped to the mapped node
        msg = await _until("the OpenADR prices on Kafka", lambda: next(iter(prices), None), 30)
        assert (msg.price_id, msg.source, msg.node_id, msg.currency) == (
            f"openadr-{event_id}",
            "openadr",
            "site",
            "EUR",
        )
        assert [(timestamp_dt(iv.start), timestamp_dt(iv.end)) for iv in msg.intervals] == [
            (start + timedelta(hours=h), start + timedelta(hours=h + 1)) for h in range(4)
        ]
        assert [iv.price_per_kwh for iv in msg.intervals] == pytest.approx([0.40, 0.40, 0.05, 0.40])

        # 2. the allocation service keeps it and its price series has the cheap hour in local slots
        key = ("site", f"openadr-{event_id}")
        await _until("the price in the allocator", lambda: key in allocation.alloc.prices, 30)
        t0 = time.time()
        series = plan_prices(PRICE_TOPOLOGY, allocation.alloc.prices.values(), t0, 16, 900)
        slot_mid = t0 + 900 * np.arange(16) + 450
        in_cheap = (slot_mid >= cheap_from.timestamp() + 450) & (slot_mid < cheap_to.timestamp() - 450)
        assert series[in_cheap] == pytest.approx(0.05) and in_cheap.sum() >= 3
        assert series[slot_mid < cheap_from.timestamp() - 450] == pytest.approx(0.40)

        # 3. a car that needs 15 kWh by 4 h from now (22 kW at most): the plan charges it in the cheap hour
        now = clock.time()
        for payload in (
            {"connected": station_pb2.Connected(replica_id="gw-0")},
            {"transaction_started": station_pb2.TransactionStarted(transaction_id="7", evse_id=1, connector_id=1)},
            {
                "charging_needs": station_pb2.ChargingNeeds(
                    evse_id=1,
                    departure_time=to_timestamp(now + 4 * 3600),
                    energy_amount_wh=15_000,
                    ev_max_current_a=32,
                    phases=3,
                )
            },
        ):
            ev = station_pb2.StationEvent(station_id="CP1", occurred_at=to_timestamp(clock.time()), **payload)
            await kafka.publish(contracts.STATION_EVENTS.name, "CP1", ev.SerializeToString())

        needs_known_at: list[float] = []

        def planned() -> tuple[np.ndarray, list[float]] | None:
            # a plan made with the car's needs: one made between TransactionStarted and ChargingNeeds (a
            # consumer batch boundary under load) plans the site's default need as early as it can
            if not needs_known_at:
                s = next(iter(allocation.alloc.book.sessions.values()), None)
                if s is None or s.need_guessed or s.departure_guessed:
                    return None
                needs_known_at.append(clock.time())
            last = allocation.alloc.last
            if last is None or last.at.timestamp() < needs_known_at[0] or last.plan is None:
                return None
            if not last.plan.session_ids:
                return None
            amps = np.asarray(last.plan.current_a[0])
            if amps.sum() <= 0:
                return None
            return amps, last.slot_starts

        amps, slot_starts = await _until("a plan for the car", planned, 60)
        starts = np.asarray(slot_starts[: amps.size])
        cheap = (starts >= cheap_from.timestamp() - 1) & (starts + 900 <= cheap_to.timestamp() + 1)
        energy_wh = amps * 230 * 3 * 0.25
        assert energy_wh.sum() >= 15_000 - 20  # all of it (up to one rounding step)
        assert energy_wh[cheap].sum() >= 0.9 * energy_wh.sum(), (amps.round(1).tolist(), cheap.tolist())
        assert amps[starts + 900 <= cheap_from.timestamp()].sum() == pytest.approx(0.0)  # nothing in the dear hours

        # 4. the event deleted at the VTN: the price is withdrawn on Kafka and in the allocator
        r = await bl.delete(f"/events/{event_id}")
        assert r.status_code in (200, 204), r.text
        await _until("the withdrawal on Kafka", lambda: any(not m.intervals for m in prices), 30)
        await _until("the price gone from the allocator", lambda: key not in allocation.alloc.prices, 30)
    finally:
        await ven.stop()
        await allocation.stop()
        await sub.stop()
        await gw.stop()
        await bl.aclose()
