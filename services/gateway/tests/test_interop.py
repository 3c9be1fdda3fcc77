"""Interop with an independent OCPP implementation: the npm package `ocpp-rpc` in strict mode validates
every message in both directions against the official OCPP 1.6 and 2.0.1 JSON schemas. The station sends
every station-initiated message we handle; the gateway sends every command type; no schema error is
allowed on either side."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from gridcharge.command.v1 import command_pb2
from gridcharge.common.v1 import common_pb2
from gridcharge.shared.contracts import COMMANDS

from . import samples
from .conftest import Gateway
from .test_end_to_end import collect_results

INTEROP = Path(__file__).parent / "interop"
Oc = command_pb2.CommandOutcome


@pytest.fixture(scope="module")
def node_client() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: the ocpp-rpc interop client cannot run")
    if not (INTEROP / "node_modules" / "ocpp-rpc").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=INTEROP, check=True, timeout=300, capture_output=True
        )
    return INTEROP / "client.js"


def commands(station: str, v16: bool) -> list[command_pb2.StationCommand]:
    out = []

    def new(field: str) -> command_pb2.StationCommand:
        cmd = command_pb2.StationCommand(command_id=f"{station}-{field}", station_id=station)
        getattr(cmd, field).SetInParent()
        out.append(cmd)
        return cmd

    for purpose, evse in ((command_pb2.PROFILE_PURPOSE_STATION_MAX, 0), (command_pb2.PROFILE_PURPOSE_TX_DEFAULT, 1)):
        cmd = new("set_charging_profile")
        cmd.command_id += str(purpose)
        sp = cmd.set_charging_profile
        sp.evse_id = evse
        p = sp.profile
        p.profile_id, p.stack_level, p.purpose, p.kind = purpose, 1, purpose, "Absolute"
        p.rate_unit = common_pb2.RATE_UNIT_A
        p.start_schedule.FromSeconds(1_780_000_000)
        p.valid_to.FromSeconds(1_790_000_000)
        p.min_charging_rate = 6
        p.periods.add(start_period_s=0, limit=16.37, number_phases=3)
        p.periods.add(start_period_s=3600, limit=8)
    c = new("clear_charging_profile").clear_charging_profile
    c.profile_id, c.evse_id, c.stack_level = 1, -1, -1
    g = new("get_composite_schedule").get_composite_schedule
    g.evse_id, g.duration_s, g.rate_unit = 1, 3600, common_pb2.RATE_UNIT_A
    new("trigger_message").trigger_message.requested_message = "StatusNotification"
    new("reset").reset.type = "Soft"
    if v16:
        new("get_configuration").get_configuration.keys.append("HeartbeatInterval")
        cc = new("change_configuration").change_configuration
        cc.key, cc.value = "HeartbeatInterval", "120"
    else:
        gp = new("get_charging_profiles").get_charging_profiles
        gp.request_id, gp.evse_id = 9, 1
        new("get_variables").get_variables.variables.add(component="OCPPCommCtrlr", variable="HeartbeatInterval")
        new("set_variables").set_variables.variables.add(
            component="OCPPCommCtrlr", variable="HeartbeatInterval", value="120"
        )
    return out


@pytest.mark.parametrize(("station", "protocol"), [("CP8", "ocpp1.6"), ("CS2", "ocpp2.0.1")])
async def test_ocpp_rpc_strict_client(
    gateway: Gateway, node_client: Path, tmp_path: Path, station: str, protocol: str
) -> None:
    results = await collect_results(gateway)
    v16 = protocol == "ocpp1.6"
    sample_file = tmp_path / "samples.json"
    sample_file.write_text(json.dumps(samples.V16 if v16 else samples.V201))
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(node_client),
        f"ws://127.0.0.1:{gateway.service.ocpp_port}/ocpp",
        station,
        protocol,
        str(sample_file),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"READY", line
        cmds = commands(station, v16)
        for cmd in cmds:
            await gateway.bus.publish(COMMANDS.name, station, cmd.SerializeToString())
        await gateway.wait_for(lambda: len(results) == len(cmds), timeout=20)
        bad = [
            (r.action, r.outcome, r.error_code, r.error_description)
            for r in results
            if r.outcome != Oc.COMMAND_OUTCOME_ACCEPTED
        ]
        assert not bad
        proc.stdin.write(b"done\n")
        await proc.stdin.drain()
        summary = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert summary["errors"] == []
    expected = {
        "GetConfiguration" if v16 else "GetVariables",
        "SetChargingProfile",
        "ClearChargingProfile",
        "GetCompositeSchedule",
        "TriggerMessage",
        "Reset",
    }
    assert expected <= set(summary["received"])
    kinds = set(gateway.kinds(station))
    assert {"boot", "heartbeat", "status", "authorize", "data_transfer", "transaction_started"} <= kinds
    if not v16:
        assert {"charging_needs", "charging_limit", "charging_profiles_report", "ev_charging_schedule"} <= kinds
