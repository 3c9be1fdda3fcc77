"""Registry epochs on the in-memory store, and command-queue semantics (expiry, coalescing, one in flight)."""

from __future__ import annotations

from gridcharge.command.v1 import command_pb2
from gridcharge.gateway.adapters.registry import Registry
from gridcharge.shared.clock import RealClock
from gridcharge.shared.contracts import COMMANDS
from gridcharge.shared.store.memory import MemoryStore

from .conftest import Gateway, booted
from .test_end_to_end import collect_results, tx_profile_cmd

Oc = command_pb2.CommandOutcome


async def test_registry_ownership_moves_and_old_owner_cannot_release() -> None:
    store, clock = MemoryStore(), RealClock()
    a, b = Registry(store, "gw-a", clock), Registry(store, "gw-b", clock)
    await a.start()
    await b.start()
    ea = await a.claim("CP1", "ocpp1.6")
    assert await a.is_owner("CP1", ea) and (await a.owner("CP1")).replica_id == "gw-a"  # type: ignore[union-attr]
    eb = await b.claim("CP1", "ocpp1.6")
    assert eb > ea and not await a.is_owner("CP1", ea) and await b.is_owner("CP1", eb)
    await a.release("CP1", ea)  # stale release changes nothing
    assert await b.is_owner("CP1", eb)
    assert await a.reassert("CP1", ea, "ocpp1.6") is None
    assert [(s, o.replica_id) for s, o in await a.connected()] == [("CP1", "gw-b")]
    await b.release("CP1", eb)
    assert await a.owner("CP1") is None and await a.connected() == []
    # a release that raced with a reconnect: the live connection re-claims on its next command
    ec = await b.claim("CP1", "ocpp1.6")
    raced = await store.incr("gw:epoch:CP1")  # what a stale replica's release writes
    await store.set_if_newer("gw:owner:CP1", raced, b"")
    ec2 = await b.reassert("CP1", ec, "ocpp1.6")
    assert ec2 is not None and ec2 > raced and await b.is_owner("CP1", ec2)
    await a.stop()  # a dead replica's stations count as offline
    await b.claim("CP2", "ocpp1.6")
    await b.stop()
    assert await Registry(store, "gw-c", clock).owner("CP2") is None


async def test_expired_and_coalesced_commands(gateway: Gateway) -> None:
    results = await collect_results(gateway)
    seen: list[str] = []

    def slow_answer(msg: list[object]) -> object:
        seen.append(str(msg[1]))
        return "ignore" if len(seen) == 1 else {"status": "Accepted"}

    c = await booted(gateway, "CP5", answers={"SetChargingProfile": slow_answer})
    gateway.service.settings.__dict__["call_timeout_s"] = 0.5
    first = tx_profile_cmd("CP5", "1", 10, gen=1, command_id="k1")  # in flight, never answered
    queued_old = tx_profile_cmd("CP5", "1", 11, gen=2, command_id="k2")
    queued_new = tx_profile_cmd("CP5", "1", 12, gen=3, command_id="k3")
    expired = command_pb2.StationCommand(command_id="k4", station_id="CP5")
    expired.reset.type = "Soft"
    expired.expires_at.FromSeconds(1)
    await gateway.bus.publish(COMMANDS.name, "CP5", first.SerializeToString())
    await gateway.wait_for(lambda: len(seen) == 1)
    for cmd in (queued_old, queued_new, expired):
        await gateway.bus.publish(COMMANDS.name, "CP5", cmd.SerializeToString())
    await gateway.wait_for(lambda: len(results) == 4)
    by_id = {r.command_id: r for r in results}
    assert by_id["k2"].outcome == Oc.COMMAND_OUTCOME_SUPERSEDED  # a newer generation was queued behind it
    assert by_id["k1"].outcome == Oc.COMMAND_OUTCOME_TIMEOUT
    assert by_id["k3"].outcome == Oc.COMMAND_OUTCOME_ACCEPTED
    assert by_id["k4"].outcome == Oc.COMMAND_OUTCOME_EXPIRED
    assert len(seen) == 2  # k2 and k4 never sent
    await c.close()
