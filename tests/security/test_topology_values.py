"""Topology values that would load but poison the running cluster are refused at start-up with one line naming
file, key and problem (#15.6): NaN left a station stuck on fallback, inf made a node unlimited, a duplicate YAML
key silently replaced the first, `CP 1/x` could never connect, a bad time zone broke forecasting later."""

from __future__ import annotations

from pathlib import Path

import pytest
from gridcharge.gateway.adapters.server import STATION_ID as GATEWAY_STATION_ID
from gridcharge.gateway.adapters.server import station_from_path
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.topology import STATION_ID, load_topology

BASE = """\
site: {{id: s, timezone: {tz}}}
nominal_voltage_v: {voltage}
nodes:
  - {{id: {node}, kind: site, limit_w: [{limit}, 50000, 50000], safety_margin_pct: {margin}}}
stations:
  - {{id: {station}, node: {node}, max_current_a: {max_a}, fallback_current_a: 6}}
pv_systems:
  - {{id: roof, node: {node}, kwp: {kwp}}}
tariff: {{windows: [{{start: "{start}", end: "07:00", price_per_kwh: {price}}}]}}
"""
OK = dict(
    tz="Europe/Berlin",
    voltage="230",
    node="n1",
    limit="50000",
    margin="5",
    station="CP1",
    max_a="32",
    kwp="10",
    start="00:00",
    price="0.1",
)


def _load(tmp_path: Path, **over: str) -> None:
    text = BASE.format(**{**OK, **over})
    p = tmp_path / "topology.yaml"
    p.write_text(text)
    load_topology(p)


def test_the_base_document_loads(tmp_path: Path) -> None:
    _load(tmp_path)


@pytest.mark.parametrize(
    ("over", "key", "problem"),
    [
        ({"limit": ".nan"}, "nodes[0].limit_w[0]", "finite"),
        ({"limit": ".inf"}, "nodes[0].limit_w[0]", "finite"),
        ({"limit": "1e400"}, "nodes[0].limit_w[0]", "finite"),
        ({"limit": "-.inf"}, "nodes[0].limit_w[0]", "finite"),
        ({"limit": "NaN"}, "nodes[0].limit_w[0]", "finite"),
        ({"voltage": ".nan"}, "nominal_voltage_v", "finite"),
        ({"margin": ".nan"}, "nodes[0].safety_margin_pct", "finite"),
        ({"max_a": ".inf"}, "stations[0].max_current_a", "finite"),
        ({"kwp": "1e400"}, "pv_systems[0].kwp", "finite"),
        ({"price": ".nan"}, "tariff.windows[0].price_per_kwh", "finite"),
        ({"station": "'CP 1/x'"}, "stations[0].id", "can never connect"),
        ({"station": "'CP#1'"}, "stations[0].id", "can never connect"),
        ({"node": "'feeder 1'"}, "nodes[0].id", "API paths"),
        ({"node": "'a/b'"}, "nodes[0].id", "API paths"),
        ({"tz": "Mars/Olympus_Mons"}, "site.timezone", "unknown time zone"),
        ({"tz": "CEST"}, "site.timezone", "unknown time zone"),
        ({"tz": "../../etc/passwd"}, "site.timezone", "unknown time zone"),
        ({"start": "25:00"}, "tariff.windows[0].start", "HH:MM"),
    ],
)
def test_poisonous_value_is_one_line_naming_file_and_key(
    tmp_path: Path, over: dict[str, str], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, **over)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "topology.yaml") in msg
    assert err.value.key == key and problem in err.value.problem, msg


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "topology.yaml"
    p.write_text(
        "nodes:\n  - id: n1\n    kind: site\n    limit_w: [100, 100, 100]\n"
        "    limit_w: [1000000000, 1000000000, 1000000000]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_topology(p)
    assert err.value.key == "line 5, column 5" and "duplicate key 'limit_w' (first at line 4)" in err.value.problem


def test_duplicate_top_level_key_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "topology.yaml"
    p.write_text("nodes: [{id: a, limit_w: [1, 1, 1]}]\nnodes: [{id: b, limit_w: [9, 9, 9]}]\n")
    with pytest.raises(ConfigError, match="duplicate key 'nodes'"):
        load_topology(p)


def test_topology_and_gateway_agree_on_station_ids() -> None:
    assert STATION_ID.pattern == GATEWAY_STATION_ID.pattern
    for sid in ("CP1", "CP-0001", "a:b", "x" * 48, "CP 1/x", "CP#1", "x" * 49, "é"):
        assert bool(STATION_ID.fullmatch(sid)) == (station_from_path(f"/ocpp/{sid}") == sid), sid
