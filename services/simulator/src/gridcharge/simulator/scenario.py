"""Scenarios as YAML: a topology, a fleet of EV visits, weather, base loads, station quirks and timed events.

```yaml
name: office
start: "2026-06-03T04:00:00Z"     # simulated start (UTC)
duration: 18h
seed: 7
topology: {...}                    # the same format `gridcharge serve --config` reads (or topology_file:)
weather: {seed: 11, mean_clear_sky_index: 0.7, forecast_error: 0.15}
base_load: [{node: site, peak_kw: 45, profile: office, phase_split: [0.36, 0.33, 0.31]}]
fleet:   [{stations: "office-*", arrival: "08:30", arrival_std: 40m, departure: "17:00", departure_std: 60m,
           battery_kwh: [40, 80], arrival_soc: [0.2, 0.6], target_soc: [0.8, 0.9], max_current_a: [16, 32],
           phases: {3: 0.8, 1: 0.2}, visits: 1}]
quirks:  {office-07: {rate_units: [A]}, office-12: {rejects_profiles: true}}
events:  [{at: "14:00", kind: service_down, service: allocation, for: 30m},
          {at: "17:00", kind: limit, node: site, pct: 60, until: "20:00", announce: 3h}]
```
Times of day ("HH:MM") are in the site's time zone on the start date; durations take s/m/h/d suffixes.
Bad scenarios fail with a ConfigError naming the file and key.
"""

from __future__ import annotations

import fnmatch
import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from gridcharge.shared.clock import parse_duration
from gridcharge.shared.errors import ConfigError
from gridcharge.shared.topology import Topology, load_topology, parse_topology
from gridcharge.simulator.ev import Ev
from gridcharge.simulator.grid_signals import GridSignal, GridSignalSpec
from gridcharge.simulator.stations import Quirks
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeatherSpec(_M):
    seed: int = 11
    mean_clear_sky_index: float = Field(0.7, gt=0, le=1.1)
    forecast_error: float = Field(0.15, ge=0, le=1.0)  # std of the relative error of actual vs forecast GHI


class BaseLoadSpec(_M):
    node: str
    peak_kw: float = Field(ge=0)
    profile: Literal["office", "residential", "depot", "flat"] = "office"
    phase_split: tuple[float, float, float] = (0.34, 0.33, 0.33)
    noise: float = Field(0.05, ge=0, le=0.5)


class FleetSpec(_M):
    stations: str | list[str] = "*"
    arrival: str = "08:30"
    arrival_std: str = "40m"
    departure: str = "17:00"
    departure_std: str = "60m"
    min_stay: str = "2h"
    battery_kwh: tuple[float, float] = (40.0, 80.0)
    arrival_soc: tuple[float, float] = (0.2, 0.6)
    target_soc: tuple[float, float] = (0.8, 0.9)
    max_current_a: tuple[float, float] = (16.0, 32.0)
    phases: dict[int, float] = Field(default_factory=lambda: {3: 1.0})
    visits: int = Field(1, ge=1, le=4)
    share: float = Field(1.0, ge=0, le=1)  # fraction of EVSEs that get a car


class EventSpec(_M):
    at: str
    kind: Literal["service_down", "limit", "station_offline", "station_reboot", "gateway_down", "kafka_restart"]
    service: str | None = None
    node: str | None = None
    pct: float | None = Field(None, gt=0, le=200)
    until: str | None = None
    announce: str = "0s"
    station: str | None = None
    for_: str | None = Field(None, alias="for")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ScenarioSpec(_M):
    name: str
    description: str = ""
    start: datetime
    duration: str = "24h"
    seed: int = 1
    step: str = "20s"  # simulation step (sim time)
    meter_interval: str = "60s"  # station MeterValues interval (sim time)
    grid_meter_interval: str = "30s"
    topology: dict[str, Any] | None = None
    topology_file: str | None = None
    weather: WeatherSpec = Field(default_factory=WeatherSpec)
    base_load: tuple[BaseLoadSpec, ...] = ()
    fleet: tuple[FleetSpec, ...] = ()
    quirks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    events: tuple[EventSpec, ...] = ()
    grid_signals: tuple[GridSignalSpec, ...] = ()  # OpenADR events, §14a dimmings (grid_signals.py)


@dataclass(frozen=True)
class Visit:
    station_id: str
    evse_id: int
    ev: Ev


@dataclass(frozen=True)
class Event:
    at_s: float
    kind: str
    end_s: float | None = None
    announce_s: float | None = None
    service: str | None = None
    node: str | None = None
    pct: float | None = None
    station: str | None = None


@dataclass
class Scenario:
    spec: ScenarioSpec
    topology: Topology
    source: str
    start_s: float
    end_s: float
    visits: list[Visit] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    quirks: dict[str, Quirks] = field(default_factory=dict)
    grid_signals: list[GridSignal] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def step_s(self) -> float:
        return parse_duration(self.spec.step).total_seconds()

    def fresh_visits(self) -> list[Visit]:
        """Copies of the visits with clean EV state (a scenario can be run more than once)."""
        from dataclasses import replace

        return [Visit(v.station_id, v.evse_id, replace(v.ev)) for v in self.visits]


def _tod(text: str, day: datetime, tz: ZoneInfo, key: str, source: str) -> float:
    """'HH:MM' on the scenario's start day (site time zone), or an ISO timestamp -> POSIX s."""
    try:
        if len(text) <= 5 and ":" in text:
            hh, mm = text.split(":")
            local = day.astimezone(tz).replace(hour=int(hh), minute=int(mm), second=0, microsecond=0)
            return local.timestamp()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, TypeError):
        raise ConfigError(source, key, f"expected HH:MM or an ISO timestamp, got {text[:30]!r}") from None


def _dur(text: str, key: str, source: str) -> float:
    try:
        return parse_duration(text).total_seconds()
    except ValueError:
        raise ConfigError(source, key, f"expected a duration like 30s, 15m, 2h (got {text[:30]!r})") from None


def build_scenario(data: Any, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate a parsed scenario document and expand the fleet (deterministic for the seed)."""
    if not isinstance(data, dict):
        raise ConfigError(source, "(top level)", "expected a mapping")
    try:
        spec = ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key (typo?)" if err["type"] == "extra_forbidden" else str(err["msg"])
        raise ConfigError(source, key, msg) from None
    if spec.start.tzinfo is None:
        raise ConfigError(source, "start", "needs a time zone (e.g. 2026-06-03T04:00:00Z)")
    if spec.topology is not None:
        topo = parse_topology(spec.topology, f"{source}: topology")
    elif spec.topology_file is not None:
        topo = load_topology((base_dir or Path(".")) / spec.topology_file)
    else:
        raise ConfigError(source, "topology", "give topology: {...} or topology_file: PATH")
    tz = ZoneInfo(topo.site.timezone)
    start_s = spec.start.timestamp()
    end_s = start_s + _dur(spec.duration, "duration", source)
    for key, val in (
        ("step", spec.step),
        ("meter_interval", spec.meter_interval),
        ("grid_meter_interval", spec.grid_meter_interval),
    ):
        _dur(val, key, source)
    for i, b in enumerate(spec.base_load):
        if b.node not in topo.node_by_id:
            raise ConfigError(source, f"base_load[{i}].node", f"unknown node '{b.node}'")
    quirks: dict[str, Quirks] = {}
    for sid, q in spec.quirks.items():
        if sid not in topo.station_by_id:
            raise ConfigError(source, f"quirks.{sid}", "unknown station")
        try:
            kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in q.items()}
            quirks[sid] = Quirks(**kw)
        except TypeError as exc:
            raise ConfigError(source, f"quirks.{sid}", f"unknown quirk ({exc})") from None
    rng = random.Random(spec.seed)
    visits: list[Visit] = []
    day = spec.start
    for i, f in enumerate(spec.fleet):
        pats = [f.stations] if isinstance(f.stations, str) else f.stations
        stations = [s for s in topo.stations if any(fnmatch.fnmatch(s.id, p) for p in pats)]
        if not stations:
            raise ConfigError(source, f"fleet[{i}].stations", f"matches no station ({pats})")
        arr0 = _tod(f.arrival, day, tz, f"fleet[{i}].arrival", source)
        dep0 = _tod(f.departure, day, tz, f"fleet[{i}].departure", source)
        if dep0 <= arr0:
            dep0 += 86_400  # overnight (depot): departure the next morning
        a_std = _dur(f.arrival_std, f"fleet[{i}].arrival_std", source)
        d_std = _dur(f.departure_std, f"fleet[{i}].departure_std", source)
        min_stay = _dur(f.min_stay, f"fleet[{i}].min_stay", source)
        phase_opts, phase_w = list(f.phases.keys()), list(f.phases.values())
        for st in stations:
            for e in st.evses:
                if rng.random() > f.share:
                    continue
                span = (dep0 - arr0) / f.visits  # several visits split the window evenly
                for k in range(f.visits):
                    arr = arr0 + k * span + rng.gauss(0, a_std)
                    dep = arr0 + (k + 1) * span + rng.gauss(0, d_std)
                    if f.visits > 1:
                        dep = min(dep, arr0 + (k + 1) * span)
                    dep = max(dep, arr + min_stay)
                    arr = max(arr, start_s)
                    if dep - arr < 60 or arr >= end_s:
                        continue
                    battery = rng.uniform(*f.battery_kwh) * 1000
                    soc0 = rng.uniform(*f.arrival_soc)
                    target = max(soc0 + 0.01, rng.uniform(*f.target_soc))
                    ev = Ev(
                        ev_id=f"{st.id}/{e.id}/{k}",
                        battery_wh=battery,
                        arrival_soc=soc0,
                        target_soc=min(1.0, target),
                        arrival_s=arr,
                        departure_s=dep,
                        max_current_a=float(round(rng.uniform(*f.max_current_a))),
                        phases=rng.choices(phase_opts, phase_w)[0],
                        announces_needs=st.ocpp in ("2.0.1", "2.1"),
                    )
                    visits.append(Visit(st.id, e.id, ev))
    events: list[Event] = []
    for i, ev_spec in enumerate(spec.events):
        key = f"events[{i}]"
        at = _tod(ev_spec.at, day, tz, key + ".at", source)
        end = None
        if ev_spec.until is not None:
            end = _tod(ev_spec.until, day, tz, key + ".until", source)
        elif ev_spec.for_ is not None:
            end = at + _dur(ev_spec.for_, key + ".for", source)
        if ev_spec.node is not None and ev_spec.node not in topo.node_by_id:
            raise ConfigError(source, key + ".node", f"unknown node '{ev_spec.node}'")
        if ev_spec.station is not None and ev_spec.station not in topo.station_by_id:
            raise ConfigError(source, key + ".station", f"unknown station '{ev_spec.station}'")
        if ev_spec.kind == "limit" and (ev_spec.node is None or ev_spec.pct is None):
            raise ConfigError(source, key, "a limit event needs node and pct")
        events.append(
            Event(
                at_s=at,
                kind=ev_spec.kind,
                end_s=end,
                announce_s=at - _dur(ev_spec.announce, key + ".announce", source),
                service=ev_spec.service,
                node=ev_spec.node,
                pct=ev_spec.pct,
                station=ev_spec.station,
            )
        )
    visits.sort(key=lambda v: v.ev.arrival_s)
    return Scenario(
        spec,
        topo,
        source,
        start_s,
        end_s,
        visits,
        sorted(events, key=lambda e: e.at_s),
        quirks,
        _grid_signals(spec, topo, day, tz, source, end_s),
    )


def _grid_signals(
    spec: ScenarioSpec, topo: Topology, day: datetime, tz: ZoneInfo, source: str, end_s: float
) -> list[GridSignal]:
    """The `grid_signals:` entries with their times resolved and limits in W per phase."""
    out: list[GridSignal] = []
    for i, g in enumerate(spec.grid_signals):
        key = f"grid_signals[{i}]"
        if g.node not in topo.node_by_id:
            raise ConfigError(source, key + ".node", f"unknown node '{g.node}'")
        at = _tod(g.at, day, tz, key + ".at", source)
        if g.until is not None:
            end = _tod(g.until, day, tz, key + ".until", source)
        elif g.for_ is not None:
            end = at + _dur(g.for_, key + ".for", source)
        else:
            end = end_s
        if end <= at:
            raise ConfigError(source, key, "ends before it starts")
        announce = at - _dur(g.announce, key + ".announce", source)
        if g.kind == "openadr":
            node_lim = topo.limit_w(g.node)
            if g.limit_kw is not None:
                lim = (g.limit_kw * 1000 / 3,) * 3
            elif g.pct is not None:
                lim = (node_lim[0] * g.pct / 100, node_lim[1] * g.pct / 100, node_lim[2] * g.pct / 100)
            else:
                raise ConfigError(source, key, "an openadr signal needs limit_kw or pct")
            out.append(
                GridSignal(
                    "openadr",
                    g.node,
                    at,
                    end,
                    announce,
                    (lim[0], lim[1], lim[2]),
                    event_id=g.event_id or f"{g.node}-{i}",
                )
            )
        else:
            devices = g.devices or sum(1 for _ in topo.stations_under(g.node))
            out.append(GridSignal("§14a", g.node, at, end, at, None, max(1, devices), g.ems))
    return out


def scenario_path(name_or_path: str) -> Path:
    """A shipped scenario by name (office, depot, residential) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return SCENARIO_DIR / f"{name_or_path}.yaml"


def load_scenario(name_or_path: str, **overrides: Any) -> Scenario:
    """Load a scenario; `overrides` replace top-level keys (e.g. duration='2h' for a short run)."""
    p = scenario_path(name_or_path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        known = ", ".join(sorted(x.stem for x in SCENARIO_DIR.glob("*.yaml")))
        raise ConfigError(str(p), "(file)", f"cannot read ({exc.strerror}); shipped scenarios: {known}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(p), "(file)", f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if isinstance(data, dict):
        data.update({k: v for k, v in overrides.items() if v is not None})
    return build_scenario(data, str(p), p.parent)
