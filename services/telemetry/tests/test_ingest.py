"""Ingest validation (JSON, CSV) and the ingest CLI on the in-memory bus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from gridcharge.telemetry import cli
from gridcharge.telemetry.core.ingest import IngestError, check_nodes, parse_csv_readings, parse_json_readings

CSV = (
    (
        "node_id,meter_id,measured_at,power_l1_w,power_l2_w,power_l3_w,current_l1_a,current_l2_a,current_l3_a,"
        "ambient_temperature_c\n"
    )
    + """trafo,scada,2026-06-01T12:00:00Z,1000,2000,3000,5,9,13,21.5
panel,,,10,20,30,,,,
"""
)


def test_csv_rows_become_readings() -> None:
    rs = parse_csv_readings(CSV)
    assert len(rs) == 2
    msg = rs[0].to_proto(0.0, "test")
    assert (msg.power_w.l1, msg.power_w.l3, msg.current_a.l2) == (1000, 3000, 9)
    assert msg.has_current and msg.ambient_temperature_c == 21.5 and msg.meter_id == "scada"
    assert msg.measured_at.seconds > 0
    second = rs[1].to_proto(123.0, "test")
    assert second.meter_id == "main" and not second.has_current and math.isnan(second.ambient_temperature_c)
    assert second.measured_at.seconds == 123


def test_csv_errors_name_the_line() -> None:
    with pytest.raises(IngestError) as ei:
        parse_csv_readings("node_id,power_l1_w,power_l2_w,power_l3_w\ntrafo,1,2,x\n,1,2,3\n")
    locs = [e["loc"][0] for e in ei.value.errors]
    assert "line 2" in locs and "line 3" in locs


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"node_id": "t", "power_w": [1, 2]}, "power_w"),
        ({"node_id": "t", "power_w": [1, 2, "nan"]}, "finite"),
        ({"node_id": "t", "power_w": [1, 2, 3], "current_a": [1, -2, 3]}, "negative"),
        ({"node_id": "t; drop", "power_w": [1, 2, 3]}, "node_id"),
        ({"node_id": "t", "power_w": [1, 2, 3], "extra": 1}, "extra"),
        ({"readings": []}, "readings"),
        ([], "between 1 and"),
    ],
)
def test_json_validation_errors(doc: object, needle: str) -> None:
    with pytest.raises(IngestError) as ei:
        parse_json_readings(doc)
    assert needle in json.dumps(ei.value.errors)


def test_unknown_nodes_rejected() -> None:
    rs = parse_json_readings([{"node_id": "a", "power_w": [1, 2, 3]}, {"node_id": "b", "power_w": [1, 2, 3]}])
    with pytest.raises(IngestError, match="unknown node 'b'"):
        check_nodes(rs, {"a"})


def test_cli_ingest_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.csv"
    f.write_text(CSV)
    assert cli.main(["ingest", "--file", str(f), "--bus", "memory"]) == 0
    assert "2 reading(s) published" in capsys.readouterr().out
    topo = tmp_path / "topo.yaml"
    topo.write_text(yaml.safe_dump({"nodes": [{"id": "trafo", "limit_a": [10, 10, 10]}]}))
    assert cli.main(["ingest", "--file", str(f), "--bus", "memory", "--config", str(topo)]) == 2
    assert "unknown node 'panel'" in capsys.readouterr().err
    j = tmp_path / "r.json"
    j.write_text('{"readings": [{"node_id": "trafo", "power_w": [1, 2, 3]}]}')
    assert cli.main(["ingest", "--file", str(j), "--bus", "memory", "--config", str(topo)]) == 0
    j.write_text("{not json")
    assert cli.main(["ingest", "--file", str(j), "--bus", "memory"]) == 2
    assert "invalid JSON" in capsys.readouterr().err
