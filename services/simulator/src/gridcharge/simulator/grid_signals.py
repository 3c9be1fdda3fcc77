"""Grid-operator signals in a scenario (`grid_signals:`): an OpenADR capacity event on a node and a §14a EnWG
dimming of a site, injected on the bus as the real interfaces would publish them.

```yaml
grid_signals:
  - {kind: openadr, node: feeder, at: "11:00", until: "14:00", limit_kw: 60, announce: 2h, event_id: evt-1}
  - {kind: "§14a", node: site-b, at: "17:30", for: 90m, devices: 6}
```

- ``openadr``: the ExternalLimit the OpenADR VEN publishes for a capacity-limit event: source "openadr", limit id
  "openadr:<event>", the event's window, ``limit_kw`` in total over the phases (or ``pct`` of the node's limit),
  published ``announce`` before the window opens (the VTN sends events ahead).
- ``§14a`` (or ``14a``): the DSO's control box closes its relay at ``at`` and opens it at the end; the control-box
  core (`gridcharge.controlbox.core.dimming`) judges it with the statutory minimum for ``devices`` controllable
  devices behind the EMS (default: the stations under the node) and the control-box codec publishes the limit,
  exactly as `python -m gridcharge.controlbox` would with a Modbus relay.

Limits are W per phase; the ground truth of the run is the lowest limit in force, with its source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from gridcharge.controlbox.adapters.codec import external_limit, per_phase_w, record_key
from gridcharge.controlbox.core.dimming import DimmingRules, DimmingState, statutory_minimum_w
from gridcharge.grid.v1 import grid_pb2
from gridcharge.shared.codec import meta, phase_values, to_timestamp
from gridcharge.shared.topology import Topology
from pydantic import BaseModel, ConfigDict, Field

P3 = tuple[float, float, float]
SIGNAL_KINDS = ("openadr", "§14a")
CONTROLBOX_PUBLISH_S = 30.0  # as the control-box service (GRIDCHARGE_CONTROLBOX_PUBLISH_S default)
CONTROLBOX_HOLD_S = 300.0  # as GRIDCHARGE_CONTROLBOX_HOLD_S


class GridSignalSpec(BaseModel):
    """One `grid_signals:` entry of a scenario (times as in `events:`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: Literal["openadr", "§14a", "14a"]
    node: str
    at: str
    until: str | None = None
    for_: str | None = Field(None, alias="for")
    announce: str = "0s"
    limit_kw: float | None = Field(None, gt=0, le=100_000)  # openadr: total over the phases
    pct: float | None = Field(None, gt=0, le=200)  # openadr: or a share of the node's limit
    event_id: str = Field("", max_length=64)
    devices: int | None = Field(None, ge=1, le=10_000)  # §14a: controllable devices behind the EMS
    ems: bool = True


@dataclass(frozen=True)
class GridSignal:
    """A validated signal: window [at_s, end_s), per-phase limit (openadr) or device count (§14a)."""

    kind: Literal["openadr", "§14a"]
    node: str
    at_s: float
    end_s: float
    announce_s: float
    limit_w: P3 | None = None
    devices: int = 1
    ems: bool = True
    event_id: str = ""


def openadr_limit(sig: GridSignal, now: float, producer: str) -> grid_pb2.ExternalLimit:
    """The VEN's ExternalLimit for a capacity-limit event (source "openadr", the event's window)."""
    assert sig.limit_w is not None
    lim = phase_values(sig.limit_w)
    return grid_pb2.ExternalLimit(
        meta=meta(producer, now),
        node_id=sig.node,
        limit_id=f"openadr:{sig.event_id}"[:64],
        source="openadr",
        valid_from=to_timestamp(sig.at_s),
        valid_to=to_timestamp(sig.end_s),
        limit_w=lim,
        fallback_limit_w=lim,
    )


@dataclass
class _Dimming:
    sig: GridSignal
    state: DimmingState
    current_w: float | None = None
    published_at: float = -math.inf


@dataclass
class GridSignals:
    """Drives a scenario's signals step by step: the messages to publish now, and the limits in force."""

    signals: list[GridSignal]
    topology: Topology
    producer: str = "simulator"
    _announced: set[int] = field(default_factory=set)
    _dimmings: list[_Dimming] = field(default_factory=list)

    def __post_init__(self) -> None:
        for s in self.signals:
            if s.kind == "§14a":
                rules = DimmingRules(minimum_w=statutory_minimum_w(s.devices, s.ems), relay=True, relay_loss_s=0)
                self._dimmings.append(_Dimming(s, DimmingState(rules, s.announce_s)))

    def step(self, t: float) -> list[tuple[str, grid_pb2.ExternalLimit]]:
        """(key, message) to publish at ``t``: OpenADR events once announced, §14a limits as the control box."""
        out: list[tuple[str, grid_pb2.ExternalLimit]] = []
        for i, s in enumerate(self.signals):
            if s.kind == "openadr" and i not in self._announced and t >= s.announce_s:
                self._announced.add(i)
                out.append((s.node, openadr_limit(s, t, self.producer)))
        for d in self._dimmings:
            d.state.relay_read(d.sig.at_s <= t < d.sig.end_s, t)  # the box's contact, scripted
            now = d.state.evaluate(t)
            refresh = now.active and t - d.published_at >= CONTROLBOX_PUBLISH_S
            if now.limit_w != d.current_w or refresh:
                d.current_w, d.published_at = now.limit_w, t
                msg = external_limit(d.sig.node, now, t, CONTROLBOX_HOLD_S, self.producer)
                out.append((record_key(d.sig.node), msg))
        return out

    def limit_at(self, node: str, t: float) -> tuple[P3, str] | None:
        """The lowest signal limit on ``node`` in force at ``t`` (W per phase) and its source."""
        best: tuple[P3, str] | None = None
        for s in self.signals:
            if s.node != node or not (s.at_s <= t < s.end_s):
                continue
            lim: P3
            if s.kind == "openadr":
                assert s.limit_w is not None
                lim = s.limit_w
            else:
                lim = per_phase_w(statutory_minimum_w(s.devices, s.ems))
            if best is None or sum(lim) < sum(best[0]):
                best = (lim, s.kind)
        return best


def signal_label(source: str) -> str:
    """A binding-constraint source as the report groups it: "§14a", "openadr", "dso", or its first part."""
    if "§14a" in source:
        return "§14a"
    if "openadr" in source:
        return "openadr"
    if "external:sim-" in source:
        return "dso"
    return source.split(":", 1)[0] or "none"
