"""The grid as a tree of nodes with per-phase limits, stations with EVSEs and phase maps, PV systems.

Loaded from YAML and validated at start-up: unknown references, cycles, negative limits and station
fallback limits that could add up to more than a node's limit are errors that name the file and key.
Limits are per phase, in A (at the topology's nominal phase-to-neutral voltage) or in W.

Values that would load but poison the running cluster are refused too, each with one line naming file, key
and problem: NaN/infinite numbers (`.nan`, `.inf`, `1e400`: NaN left a station stuck on its fallback, inf made
a node unlimited), duplicate YAML keys (YAML keeps the last one silently), station ids the gateway would never
accept on its OCPP URL, node ids that cannot appear in an API path, unknown time zones, malformed tariff times.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from gridcharge.shared.errors import ConfigError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Phase = Literal["L1", "L2", "L3"]
PHASES: tuple[Phase, Phase, Phase] = ("L1", "L2", "L3")
NodeKind = Literal["feeder", "transformer", "site", "panel", "circuit"]
# What the gateway accepts as {station_id} in ws://HOST/ocpp/{station_id} (OCPP 2.0.1 identifierString plus what
# 1.6 deployments use); gateway/adapters/server.py STATION_ID must stay equal (a test compares them).
STATION_ID_PATTERN = r"[A-Za-z0-9*\-_=:+|@.]{1,48}"
STATION_ID = re.compile(STATION_ID_PATTERN)
# Node ids appear in API paths (/allocation/limits/{node_id}/...), Kafka keys and metric labels.
NODE_ID = re.compile(r"[^\s/?#%\\\x00-\x1f\x7f]{1,64}")
HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]|24:00")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Site(_Model):
    id: str = "site"
    name: str = ""
    timezone: str = "UTC"
    latitude: float = Field(0.0, ge=-90, le=90)
    longitude: float = Field(0.0, ge=-180, le=180)
    altitude_m: float = Field(0.0, ge=-500, le=9000)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Europe/Berlin or UTC)") from None
        return v


class Rating(_Model):
    """Transformer rating; `dynamic` turns on the ambient-temperature model (forecasting)."""

    dynamic: bool = False
    nameplate_kva: float | None = Field(None, gt=0)
    max_loading_factor: float = Field(1.0, gt=0, le=2.0)
    params: dict[str, float] = Field(default_factory=dict)


class Node(_Model):
    """A grid node (feeder, transformer, site, panel, circuit) with a per-phase limit."""

    id: str = Field(min_length=1)
    kind: NodeKind = "panel"
    parent: str | None = None
    limit_a: tuple[float, float, float] | None = None  # per-phase current limit, A
    limit_w: tuple[float, float, float] | None = None  # per-phase power limit, W
    metered: bool = False  # a grid meter reports this node's load
    rating: Rating | None = None
    safety_margin_pct: float = Field(5.0, ge=0, lt=100)

    @field_validator("id", "parent")
    @classmethod
    def _node_id(cls, v: str | None) -> str | None:
        if v is not None and not NODE_ID.fullmatch(v):
            raise ValueError(
                f"node id {v[:80]!r} must be 1-64 characters without spaces, '/', '?', '#', '%' or "
                "control characters (it appears in API paths and Kafka keys)"
            )
        return v

    @model_validator(mode="after")
    def _one_limit(self) -> Node:
        if self.limit_a is None and self.limit_w is None:
            raise ValueError("needs limit_a or limit_w (per-phase list of three numbers)")
        if self.limit_a is not None and self.limit_w is not None:
            raise ValueError("give limit_a or limit_w, not both")
        for v in self.limit_a or self.limit_w or ():
            if v < 0:
                raise ValueError(f"limit must not be negative (got {v})")
        return self


class Evse(_Model):
    id: int = Field(ge=1)
    phase_map: tuple[Phase, ...] | None = None  # grid phase of the EVSE's L1[, L2, L3]; default: station's
    max_current_a: float | None = Field(None, gt=0)
    min_current_a: float = Field(6.0, ge=0)


class Station(_Model):
    """A charging station attached to a grid node; its fallback limit is what it may draw unsupervised."""

    id: str = Field(min_length=1, max_length=48)
    node: str
    ocpp: Literal["1.6", "2.0.1", "2.1"] = "1.6"
    phase_map: tuple[Phase, ...] = ("L1", "L2", "L3")  # grid phase of the station's L1, L2, L3
    max_current_a: float = Field(32.0, gt=0)
    fallback_current_a: float = Field(6.0, ge=0)  # station-wide fallback per phase, A
    evses: tuple[Evse, ...] = Field(default_factory=lambda: (Evse(id=1),))

    @field_validator("id")
    @classmethod
    def _station_id(cls, v: str) -> str:
        if not STATION_ID.fullmatch(v):
            raise ValueError(
                f"station id {v[:80]!r} can never connect: the gateway accepts 1-48 of "
                "A-Z a-z 0-9 * - _ = : + | @ . in ws://HOST/ocpp/{station_id}"
            )
        return v

    @field_validator("phase_map")
    @classmethod
    def _phase_map(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not 1 <= len(v) <= 3 or len(set(v)) != len(v):
            raise ValueError("phase_map lists 1 to 3 distinct grid phases (L1, L2, L3)")
        return v

    @model_validator(mode="after")
    def _check(self) -> Station:
        if self.fallback_current_a > self.max_current_a:
            raise ValueError("fallback_current_a exceeds max_current_a")
        ids = [e.id for e in self.evses]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate EVSE ids {ids}")
        for e in self.evses:
            if e.phase_map and not set(e.phase_map) <= set(self.phase_map):
                raise ValueError(f"evse {e.id} phase_map {list(e.phase_map)} not within station phase_map")
        return self

    def evse_phases(self, evse_id: int) -> tuple[Phase, ...]:
        """Grid phases an EVSE can load."""
        for e in self.evses:
            if e.id == evse_id:
                return e.phase_map or self.phase_map
        raise KeyError(f"station {self.id} has no EVSE {evse_id}")

    def evse(self, evse_id: int) -> Evse:
        for e in self.evses:
            if e.id == evse_id:
                return e
        raise KeyError(f"station {self.id} has no EVSE {evse_id}")


class PvSystem(_Model):
    id: str
    node: str
    kwp: float = Field(gt=0)
    tilt_deg: float = Field(30.0, ge=0, le=90)
    azimuth_deg: float = Field(180.0, ge=0, lt=360)
    losses_pct: float = Field(14.0, ge=0, lt=100)
    inverter_kw: float | None = Field(None, gt=0)
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    phases: tuple[Phase, ...] = ("L1", "L2", "L3")


class TariffWindow(_Model):
    start: str  # "HH:MM" local time
    end: str
    price_per_kwh: float

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not HHMM.fullmatch(v):
            raise ValueError(f"{v[:20]!r} is not a time of day HH:MM (00:00-24:00)")
        return v


class Tariff(_Model):
    currency: str = "EUR"
    default_price_per_kwh: float = 0.30
    windows: tuple[TariffWindow, ...] = ()


class SessionDefaults(_Model):
    """What the planner assumes when a driver gave no departure or energy."""

    departure_after_h: float = Field(8.0, gt=0)
    energy_wh: float = Field(20000.0, ge=0)
    priority: int = Field(1, ge=0)


class Topology(_Model):
    site: Site = Field(default_factory=Site)
    nominal_voltage_v: float = Field(230.0, gt=0)
    nodes: tuple[Node, ...]
    stations: tuple[Station, ...] = ()
    pv_systems: tuple[PvSystem, ...] = ()
    tariff: Tariff = Field(default_factory=Tariff)
    session_defaults: SessionDefaults = Field(default_factory=SessionDefaults)

    # -- derived views -------------------------------------------------------------------------
    @cached_property
    def node_by_id(self) -> dict[str, Node]:
        return {n.id: n for n in self.nodes}

    @cached_property
    def station_by_id(self) -> dict[str, Station]:
        return {s.id: s for s in self.stations}

    @cached_property
    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            if n.parent is not None:
                out[n.parent].append(n.id)
        return out

    def roots(self) -> list[Node]:
        return [n for n in self.nodes if n.parent is None]

    def ancestors(self, node_id: str) -> list[str]:
        """The node itself and every node above it, bottom-up."""
        path = []
        cur: str | None = node_id
        while cur is not None:
            path.append(cur)
            cur = self.node_by_id[cur].parent
        return path

    def station_path(self, station_id: str) -> list[str]:
        """Grid nodes a station's current flows through, bottom-up."""
        return self.ancestors(self.station_by_id[station_id].node)

    def stations_under(self, node_id: str) -> Iterator[Station]:
        for s in self.stations:
            if node_id in self.station_path(s.id):
                yield s

    def limit_w(self, node_id: str) -> tuple[float, float, float]:
        """Per-phase limit of a node in W."""
        n = self.node_by_id[node_id]
        if n.limit_w is not None:
            return n.limit_w
        assert n.limit_a is not None
        v = self.nominal_voltage_v
        return (n.limit_a[0] * v, n.limit_a[1] * v, n.limit_a[2] * v)

    def limit_a(self, node_id: str) -> tuple[float, float, float]:
        """Per-phase limit of a node in A."""
        n = self.node_by_id[node_id]
        if n.limit_a is not None:
            return n.limit_a
        w = self.limit_w(node_id)
        v = self.nominal_voltage_v
        return (w[0] / v, w[1] / v, w[2] / v)

    def fallback_draw_a(self, node_id: str) -> tuple[float, float, float]:
        """Worst-case per-phase current under a node if every station falls back to its fallback limit."""
        acc = [0.0, 0.0, 0.0]
        for s in self.stations_under(node_id):
            for ph in s.phase_map:
                acc[PHASES.index(ph)] += s.fallback_current_a
        return (acc[0], acc[1], acc[2])

    # -- validation ----------------------------------------------------------------------------
    @model_validator(mode="after")
    def _references(self) -> Topology:
        ids: set[str] = set()
        for i, n in enumerate(self.nodes):
            if n.id in ids:
                raise _Located(f"nodes[{i}].id", f"duplicate node id '{n.id}'")
            ids.add(n.id)
        for i, n in enumerate(self.nodes):
            if n.parent is not None and n.parent not in ids:
                raise _Located(f"nodes[{i}].parent", f"unknown node '{n.parent}'")
        for i, n in enumerate(self.nodes):  # cycles: walking up must end at a root
            seen, cur = {n.id}, n.parent
            while cur is not None:
                if cur in seen:
                    raise _Located(f"nodes[{i}].parent", f"cycle through node '{cur}'")
                seen.add(cur)
                cur = next(m.parent for m in self.nodes if m.id == cur)
        sids: set[str] = set()
        for i, s in enumerate(self.stations):
            if s.id in sids:
                raise _Located(f"stations[{i}].id", f"duplicate station id '{s.id}'")
            sids.add(s.id)
            if s.node not in ids:
                raise _Located(f"stations[{i}].node", f"unknown node '{s.node}'")
        for i, p in enumerate(self.pv_systems):
            if p.node not in ids:
                raise _Located(f"pv_systems[{i}].node", f"unknown node '{p.node}'")
        for i, n in enumerate(self.nodes):  # safety principle 1: Σ fallbacks ≤ node limit
            draw = self.fallback_draw_a(n.id)
            lim = self.limit_a(n.id)
            for k, ph in enumerate(PHASES):
                if draw[k] > lim[k] + 1e-9:
                    raise _Located(
                        f"nodes[{i}].limit",
                        f"station fallback limits under '{n.id}' add up to {draw[k]:.1f} A on {ph}, "
                        f"above the node limit {lim[k]:.1f} A (lower fallback_current_a)",
                    )
        return self


class _Located(ValueError):
    """A semantic error with the YAML key path it concerns."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


def _loc_to_key(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_one_limit()]",) or part.startswith("function-"):
            continue
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def parse_topology(data: Any, source: str = "<topology>") -> Topology:
    """Validate a parsed YAML document; raise ConfigError(source, key, problem)."""
    if not isinstance(data, dict):
        raise ConfigError(source, "(top level)", "expected a mapping with 'nodes', 'stations', ...")
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _Located):
            raise ConfigError(source, ctx_err.key, ctx_err.problem) from None
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        elif err["type"] == "finite_number":
            msg = f"must be a finite number (got {err.get('input')!r})"
        raise ConfigError(source, _loc_to_key(tuple(err["loc"])), msg) from None


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (plain YAML keeps the last one without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                first = seen[key].start_mark
                raise _DuplicateKey(
                    None, None, f"duplicate key {str(key)[:64]!r} (first at line {first.line + 1})", key_node.start_mark
                )
            if isinstance(key, Hashable):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_topology(path: str | Path) -> Topology:
    """Load and validate a topology YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), "(file)", f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(str(p), where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_topology(data, str(p))
