"""Topology loading: good files load; each kind of mistake gives one clear line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.topology import load_topology

GOOD = """
site: {id: office, timezone: Europe/Berlin, latitude: 48.1, longitude: 11.6}
nominal_voltage_v: 230
nodes:
  - {id: trafo, kind: transformer, limit_a: [100, 100, 100], metered: true}
  - {id: panel, kind: panel, parent: trafo, limit_a: [63, 63, 63]}
stations:
  - {id: CP1, node: panel, fallback_current_a: 6}
  - {id: CP2, node: panel, phase_map: [L2], fallback_current_a: 10, evses: [{id: 1}]}
pv_systems:
  - {id: pv, node: trafo, kwp: 30}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "topology.yaml"
    p.write_text(text)
    return p


def test_good_topology_loads_with_paths_and_limits(tmp_path: Path) -> None:
    t = load_topology(write(tmp_path, GOOD))
    assert t.station_path("CP2") == ["panel", "trafo"]
    assert t.limit_w("panel") == pytest.approx((63 * 230,) * 3)
    assert t.fallback_draw_a("trafo") == (6.0, 16.0, 6.0)  # CP2 is single-phase on L2
    assert t.station_by_id["CP2"].evse_phases(1) == ("L2",)
    assert [s.id for s in t.stations_under("trafo")] == ["CP1", "CP2"]


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (("parent: trafo, limit_a: [63", "parent: trafx, limit_a: [63"), "nodes[1].parent", "unknown node 'trafx'"),
        (("{id: CP1, node: panel", "{id: CP1, node: nowhere"), "stations[0].node", "unknown node 'nowhere'"),
        (("limit_a: [63, 63, 63]", "limit_a: [63, -1, 63]"), "nodes[1]", "must not be negative"),
        (
            ("{id: trafo, kind: transformer,", "{id: trafo, kind: transformer, parent: panel,"),
            "nodes[0].parent",
            "cycle",
        ),
        (("limit_a: [63, 63, 63]", "limit_a: [63, 12, 63]"), "nodes[1].limit", "add up to 16.0 A on L2"),
        (("fallback_current_a: 10", "fallback_current_a: 40"), "stations[1]", "exceeds max_current_a"),
        (("{id: pv, node: trafo", "{id: pv, node: roof"), "pv_systems[0].node", "unknown node 'roof'"),
        (("kwp: 30", "kwp: 30, tilt: 20"), "pv_systems[0].tilt", "unknown key"),
        (("{id: CP2, node: panel", "{id: CP1, node: panel"), "stations[1].id", "duplicate station id 'CP1'"),
        (("phase_map: [L2]", "phase_map: [L2, L2]"), "stations[1].phase_map", "distinct"),
        (("kind: transformer", "kind: substation"), "nodes[0].kind", "Input should be"),
        (("limit_a: [100, 100, 100], metered", "metered"), "nodes[0]", "needs limit_a or limit_w"),
    ],
)
def test_each_mistake_names_file_key_and_problem(tmp_path: Path, edit: tuple[str, str], key: str, problem: str) -> None:
    assert edit[0] in GOOD
    path = write(tmp_path, GOOD.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(str(path) + ": ")
    assert err.value.key == key
    assert problem in err.value.problem


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes:\n  - {id: a, limit_a: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    assert "line" in err.value.key and "invalid YAML" in err.value.problem


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_topology(tmp_path / "nope.yaml")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_topology(write(tmp_path, "- just\n- a list\n"))
