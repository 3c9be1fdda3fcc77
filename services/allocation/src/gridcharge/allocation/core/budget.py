"""Per-node, per-phase budgets: how much the chargers under each node may draw, and whether a set of
station caps fits (pure, no I/O).

The capacity of a node for EV charging in a slot is the smallest of
  its topology limit and every valid external limit (fallback value when the source went stale),
  less the safety margin, less the measured non-EV (base) load when telemetry is fresh,
  and the forecast headroom of that slot when a fresh forecast covers it.
Unknown means worst case: a metered node whose live load is stale and which has no fresh forecast
only gets the sum of the fallbacks under it (safe by construction of the topology).

Powers are W per grid phase (arrays of 3: L1, L2, L3); currents A per phase.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from gridcharge.shared.topology import PHASES, Topology

FloatArray = npt.NDArray[np.float64]

NODE_LOAD_STALE_S = 120.0  # live node load older than this is not trusted
HEADROOM_STALE_S = 3 * 3600.0  # a headroom forecast older than this is not trusted


@dataclass(frozen=True)
class ExternalLimitWindow:
    """A DSO/operator limit on a node: ``limit_w`` per phase between ``valid_from`` and ``valid_to``.

    After ``stale_after_s`` without an update the ``fallback_limit_w`` applies instead (0 = never stale).
    ``schedule`` lists later (start, limit_w) steps inside the window.
    """

    node_id: str
    limit_id: str
    source: str
    valid_from: float
    valid_to: float
    limit_w: tuple[float, float, float]
    fallback_limit_w: tuple[float, float, float]
    received_at: float
    stale_after_s: float = 0.0
    schedule: tuple[tuple[float, tuple[float, float, float]], ...] = ()
    station_id: str = ""  # set: binds that station (EVSE evse_id, 0 = all) only, never the node
    evse_id: int = 0

    def value_at(self, t: float, now: float) -> tuple[float, float, float] | None:
        """Limit in force at time ``t`` (POSIX s), judged at ``now``; None outside the window."""
        if not (self.valid_from <= t < self.valid_to):
            return None
        if self.stale_after_s > 0 and now - self.received_at > self.stale_after_s:
            return self.fallback_limit_w
        cur = self.limit_w
        for start, lim in self.schedule:
            if start <= t:
                cur = lim
        return cur


@dataclass
class NodeInputs:
    """Live inputs of one node: latest base load and headroom forecast."""

    base_load_w: tuple[float, float, float] | None = None
    load_w: tuple[float, float, float] | None = None
    load_at: float | None = None
    headroom_start: float | None = None
    headroom_step_s: float = 900.0
    headroom_w: list[tuple[float, float, float]] = field(default_factory=list)
    headroom_sources: list[str] = field(default_factory=list)
    headroom_at: float | None = None


@dataclass(frozen=True)
class Capacity:
    """EV capacity per node: ``w[node]`` is [3, T] W, ``source[node]`` the binding signal per phase."""

    w: dict[str, FloatArray]
    source: dict[str, tuple[str, str, str]]


@dataclass(frozen=True)
class _StationIndex:
    """Per topology: each station's path and grid phases, and the flat (node, phase) slots it loads.

    ``slot[start[r]:start[r] + count[r]]`` are the slots (node position × 3 + phase) of station row ``r``
    in the order the loops below visit them: path bottom-up, then the station's phases.
    """

    node_ids: tuple[str, ...]
    row: dict[str, int]
    path: tuple[tuple[str, ...], ...]
    phases: tuple[tuple[int, ...], ...]
    start: npt.NDArray[np.intp]
    count: npt.NDArray[np.intp]
    slot: npt.NDArray[np.intp]
    slots_of: tuple[tuple[int, ...], ...]  # per station row: its slots as plain ints (per-station loops)
    pos: npt.NDArray[np.intp]  # per slot: the station phase it belongs to (0 = the station's L1)
    pos_of: tuple[tuple[int, ...], ...]  # per station row: ``pos`` of its slots as plain ints


_INDEXES: OrderedDict[int, tuple[Topology, _StationIndex]] = OrderedDict()
_INDEXES_MAX = 16


def _index(topology: Topology) -> _StationIndex:
    """The station index of a (frozen) topology, built once; the cache holds the topology, so ids stay unique."""
    hit = _INDEXES.get(id(topology))
    if hit is not None and hit[0] is topology:
        _INDEXES.move_to_end(id(topology))
        return hit[1]
    node_ids = tuple(n.id for n in topology.nodes)
    node_pos = {nid: i for i, nid in enumerate(node_ids)}
    paths: list[tuple[str, ...]] = []
    phases: list[tuple[int, ...]] = []
    start: list[int] = []
    count: list[int] = []
    slot: list[int] = []
    pos: list[int] = []
    for st in topology.stations:
        path = tuple(topology.station_path(st.id))
        ph = tuple(PHASES.index(p) for p in st.phase_map)
        paths.append(path)
        phases.append(ph)
        start.append(len(slot))
        slot.extend(node_pos[nid] * 3 + p for nid in path for p in ph)
        pos.extend(i for _nid in path for i in range(len(ph)))
        count.append(len(slot) - start[-1])
    idx = _StationIndex(
        node_ids,
        {st.id: r for r, st in enumerate(topology.stations)},
        tuple(paths),
        tuple(phases),
        np.array(start, dtype=np.intp),
        np.array(count, dtype=np.intp),
        np.array(slot, dtype=np.intp),
        tuple(tuple(slot[a : a + n]) for a, n in zip(start, count, strict=True)),
        np.array(pos, dtype=np.intp),
        tuple(tuple(pos[a : a + n]) for a, n in zip(start, count, strict=True)),
    )
    _INDEXES[id(topology)] = (topology, idx)
    while len(_INDEXES) > _INDEXES_MAX:
        _INDEXES.popitem(last=False)
    return idx


def station_phases(topology: Topology, station_id: str) -> list[int]:
    """Grid phase indices a station is wired to."""
    ix = _index(topology)
    return list(ix.phases[ix.row[station_id]])


def node_capacity(
    topology: Topology,
    inputs: Mapping[str, NodeInputs],
    external: Iterable[ExternalLimitWindow],
    now: float,
    slot_starts: list[float],
    slot_s: float = 0.0,
) -> Capacity:
    """EV capacity of every node over the slots starting at ``slot_starts`` (POSIX s).

    With ``slot_s`` > 0 each slot gets the lowest value over its whole span [start, start + slot_s): a
    DSO window or forecast slot that begins inside a slot already binds it.
    """
    ext = list(external)
    T = len(slot_starts)
    v = topology.nominal_voltage_v
    out: dict[str, FloatArray] = {}
    src: dict[str, tuple[str, str, str]] = {}
    for node in topology.nodes:
        lim = np.array(topology.limit_w(node.id), dtype=float)
        cap = np.repeat(lim[:, None], T, axis=1)
        why = [["rating"] * T for _ in range(3)]
        for e in ext:
            if e.node_id != node.id or e.station_id:
                continue
            changes = [e.valid_from] + [start for start, _lim in e.schedule]
            for t, ts in enumerate(slot_starts):
                for at in [ts] + [c for c in changes if ts < c < ts + slot_s]:
                    val = e.value_at(at, now)
                    if val is None:
                        continue
                    for p in range(3):
                        if val[p] < cap[p, t]:
                            cap[p, t] = max(0.0, val[p])
                            why[p][t] = f"external:{e.limit_id}"
        cap *= 1.0 - node.safety_margin_pct / 100.0
        inp = inputs.get(node.id)
        load_fresh = inp is not None and inp.load_at is not None and now - inp.load_at <= NODE_LOAD_STALE_S
        fc_fresh = (
            inp is not None
            and inp.headroom_at is not None
            and bool(inp.headroom_w)
            and now - inp.headroom_at <= HEADROOM_STALE_S
        )
        if load_fresh and inp is not None and inp.base_load_w is not None:
            base = np.maximum(np.array(inp.base_load_w, dtype=float), 0.0)
            for p in range(3):
                for t in range(T):
                    if cap[p, t] - base[p] < cap[p, t]:
                        cap[p, t] = max(0.0, cap[p, t] - base[p])
                        if base[p] > 0:
                            why[p][t] = why[p][t] if why[p][t] != "rating" else "base_load"
        if fc_fresh and inp is not None and inp.headroom_start is not None:
            n_fc = len(inp.headroom_w)
            for t, ts in enumerate(slot_starts):
                first = int((ts - inp.headroom_start) // inp.headroom_step_s)
                last = int((ts + max(0.0, slot_s - 1.0) - inp.headroom_start) // inp.headroom_step_s)
                for k in sorted({min(max(first, 0), n_fc - 1), min(max(last, 0), n_fc - 1)}):
                    if last < 0:
                        continue
                    hw = inp.headroom_w[k]
                    for p in range(3):
                        if hw[p] < cap[p, t]:
                            cap[p, t] = max(0.0, hw[p])
                            why[p][t] = "headroom:" + (
                                inp.headroom_sources[k]
                                if k < len(inp.headroom_sources) and inp.headroom_sources[k]
                                else "forecast"
                            )
        if node.metered and not load_fresh and not fc_fresh:
            # unknown non-EV load: only what is safe by construction
            fb = np.array(topology.fallback_draw_a(node.id), dtype=float) * v
            for p in range(3):
                for t in range(T):
                    if fb[p] < cap[p, t]:
                        cap[p, t] = fb[p]
                        why[p][t] = "failsafe:stale_load"
        out[node.id] = cap
        src[node.id] = (why[0][0], why[1][0], why[2][0])
    return Capacity(out, src)


StationDraw = float | Sequence[float] | FloatArray
"""A station's current (A): one value for all its phases, or one per station phase (L1, L2, L3)."""


def node_draw_w(topology: Topology, station_caps_a: Mapping[str, StationDraw]) -> dict[str, FloatArray]:
    """Per-node, per-phase worst-case draw (W) if every station drew its cap (one value on all its phases, or
    one per station phase).

    Vectorised: one weighted bincount over the stations' (node, phase) slots, in the mapping's order, so
    every slot sums the same terms in the same order as a loop over stations, nodes and phases would.
    """
    ix = _index(topology)
    caps = {
        sid: (x if np.ndim(x) == 0 else np.asarray(x, dtype=np.float64).reshape(-1, 1))
        for sid, x in station_caps_a.items()
    }
    draw = _draw_flat(topology, caps, 1)[:, 0].reshape(-1, 3)
    return {nid: draw[i] for i, nid in enumerate(ix.node_ids)}


def _draw_flat(topology: Topology, caps_a: Mapping[str, object], k: int) -> FloatArray:
    """:func:`node_draw_w` at ``k`` moments: ``caps_a[station]`` is a value, [k] A (one per moment, all
    phases) or [phases, k] A (per station phase and moment); returns [3 × nodes, k] W, row = node position × 3
    + phase as in the station index."""
    ix = _index(topology)
    keep = [sid for sid in caps_a if sid in ix.row]
    sel = np.array([ix.row[sid] for sid in keep], dtype=np.intp)
    count = ix.count[sel]
    ends = np.cumsum(count)
    flat = np.repeat(ix.start[sel] - (ends - count), count) + np.arange(int(ends[-1]) if len(ends) else 0)
    slots = ix.slot[flat]
    raw = [caps_a[sid] for sid in keep]
    vals = np.empty((len(raw), k))
    per_phase = False
    for i, x in enumerate(raw):
        if isinstance(x, float | int):
            vals[i] = x
            continue
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim == 2:
            per_phase = True
            break
        vals[i] = arr
    if not per_phase:  # one value per moment on every phase (the common case): vectorised
        weights = np.repeat(vals, count, axis=0) * topology.nominal_voltage_v
    else:
        vals3 = np.zeros((len(raw), 3, k))
        for i, x in enumerate(raw):
            arr = np.asarray(x, dtype=np.float64)
            if arr.ndim == 2:
                vals3[i, : arr.shape[0]] = arr
            else:
                vals3[i] = np.broadcast_to(arr.reshape(-1) if arr.ndim else arr, (k,))
        weights = vals3[np.repeat(np.arange(len(keep)), count), ix.pos[flat]] * topology.nominal_voltage_v
    n = 3 * len(ix.node_ids)
    return np.stack([np.bincount(slots, weights=weights[:, j], minlength=n) for j in range(k)], axis=1)


def fit_caps(
    topology: Topology,
    capacity_w: Mapping[str, FloatArray],
    worst_case_a: Mapping[str, float | FloatArray],
    desired_a: Mapping[str, float],
    order: list[str],
    min_raise_a: float = 0.0,
    floor_a: Mapping[str, float | FloatArray] | None = None,
    keep: Collection[str] = (),
    raise_headroom_w: Mapping[str, float] | None = None,
    lower_order: list[str] | None = None,
    settled_a: Mapping[str, float | FloatArray] | None = None,
    lease_weights: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, float]:
    """Approve station caps so the worst case under every node stays within its capacity.

    ``worst_case_a``: what each station may draw now (A per phase). ``desired_a``: the caps wanted,
    ``order``: most important first. ``capacity_w`` is [3] W per node (the current slot).
    ``floor_a``: what each station may draw whatever cap it gets, at each moment: 0 while a lease sent now
    surely overrides the fallback, the fallback after that. A cap below it frees nothing at that moment.
    ``keep``: stations whose current state stays as it is (nothing is sent to them unless they must go
    lower): they count at their ``worst_case_a`` and are never raised.
    ``lower_order``: who goes down first where a node is over its capacity (default: ``order`` reversed).
    ``settled_a``: what stations with a lease in flight may draw once it is accepted ([K] A): the
    over-capacity check (step 2) counts them so, a lowering on its way is not made twice (default: the worst
    case).
    ``raise_headroom_w``: per node, W per phase that raises leave free (a hysteresis band): lowerings are
    needed only once the capacity is exceeded, so a base load that wobbles by less than the band does not
    lower and raise the same cars every cycle.
    ``lease_weights``: per station, what a lease sent now lets it draw on each of its phases per A of the cap
    (a lease in W on one phase: more than the cap on L1, less on L2 and L3; `profiles.phase_weights`);
    default 1 on every phase.

    Time-resolved: ``capacity_w`` may be [3, K] W per node and ``worst_case_a``/``floor_a`` [K] A per
    station, at the same K moments of a lease's lifetime (now, slot starts, fallback steps). A cap must
    fit at every moment; a cap below a moment's floor frees nothing at that moment, but may at another
    (a fallback that rises when a DSO window ends must not keep a car's lease at it during the window).
    ``worst_case_a`` and ``settled_a`` may also be [phases, K] A: per station phase (L1, L2, L3), per moment.

    1. Lowerings are always approved; they take effect only once accepted, so until then the old worst
       case stays counted for raises (and the new value for the check of step 2, as one in flight does).
    2. Where a node is over its capacity even after those (a limit dropped), stations under it are
       lowered further, least important first, each as far as needed.
    3. Raises are approved in ``order``, each only as far as every node/phase on the station's path
       still has room at every moment; one that cannot be granted keeps the current worst case.

    The per-station loops use plain floats (K is 1–3): numpy per station costs ~3× at 1,000 stations.
    """
    v = topology.nominal_voltage_v
    ix = _index(topology)
    k = 1
    for c in capacity_w.values():
        k = max(k, np.shape(c)[1] if np.ndim(c) == 2 else 1)
    for m in (worst_case_a, floor_a or {}, settled_a or {}):
        for x in m.values():
            if np.ndim(x) > 0:
                k = max(k, np.shape(x)[-1])
    K = range(k)
    # capacity as [3 × nodes][K] rows in the station index's slot order; a node without one never binds
    cap_arr = np.full((3 * len(ix.node_ids), k), math.inf)
    for i, nid in enumerate(ix.node_ids):
        given = capacity_w.get(nid)
        if given is not None:
            cap_arr[3 * i : 3 * i + 3] = np.asarray(given, dtype=np.float64).reshape(3, -1)
    cap: list[list[float]] = cap_arr.tolist()

    def row(x: float | FloatArray) -> list[float]:
        if isinstance(x, float | int) or np.ndim(x) == 0:
            return [float(x)] * k
        return [float(y) for y in np.broadcast_to(x, (k,))]

    def n_ph(sid: str) -> int:
        return len(ix.phases[ix.row[sid]])

    def rows(sid: str, x: float | FloatArray) -> list[list[float]]:
        """[phases][K] A of a station from a value, [K] or [phases, K] (plain lists: see the note above)."""
        if np.ndim(x) == 2:
            out = np.asarray(x, dtype=np.float64).tolist()
            return [r * k if len(r) == 1 else r for r in out[: n_ph(sid)]]
        r = row(x)
        return [list(r) for _ in range(n_ph(sid))]

    def compact(r: list[list[float]]) -> list[float] | list[list[float]]:
        """The same on every phase: one row (keeps `_draw_flat` on its vectorised path)."""
        return r[0] if all(x == r[0] for x in r) else r

    zero = [0.0] * k
    floors = {sid: row(x) for sid, x in (floor_a or {}).items()}
    # as given for the sums over all stations; as [phases][K] lists only for the stations the loops touch
    raw_wc = {sid: x for sid, x in worst_case_a.items() if sid in ix.row}
    raw_settled = {**raw_wc, **{sid: x for sid, x in (settled_a or {}).items() if sid in raw_wc}}
    wc = {sid: rows(sid, raw_wc[sid]) for sid in desired_a if sid in raw_wc}
    settled = {sid: rows(sid, raw_settled[sid]) for sid in desired_a if sid in raw_settled}
    wts: dict[str, list[float]] = {}
    for sid in desired_a:
        if sid in ix.row:
            w = list((lease_weights or {}).get(sid, ()))
            wts[sid] = [w[p] if p < len(w) else 1.0 for p in range(n_ph(sid))]

    def cur_of(sid: str, m: dict[str, list[list[float]]]) -> list[list[float]]:
        return m.get(sid) or [list(zero) for _ in range(n_ph(sid))]

    approved: dict[str, float] = {}
    kept = {sid for sid in keep if sid in desired_a}
    for sid, want in desired_a.items():
        if sid not in ix.row:
            continue
        cur0 = cur_of(sid, wc)
        if sid in kept or all(want * wts[sid][p] <= min(cur0[p]) + 1e-9 for p in range(len(cur0))):
            approved[sid] = want

    def eff(sid: str, a: float) -> list[list[float]]:
        """Worst case of a station per phase and moment once cap ``a`` is installed."""
        f = floors.get(sid, zero)
        return [[max(f[j], a * w) for j in K] for w in wts[sid]]

    band = [0.0] * (3 * len(ix.node_ids))
    for i, nid in enumerate(ix.node_ids):
        for p in range(3):
            band[3 * i + p] = (raise_headroom_w or {}).get(nid, 0.0)

    def shift(load: list[list[float]], sid: str, delta_a: list[list[float]]) -> None:
        r = ix.row[sid]
        for s, p in zip(ix.slots_of[r], ix.pos_of[r], strict=True):
            ld, d = load[s], delta_a[p]
            for j in K:
                ld[j] += d[j] * v

    def bound(sid: str, cur: list[list[float]], load: list[list[float]], headroom: bool) -> float:
        """Largest cap whose worst case fits on every node/phase of the station's path at every moment, each
        phase at most its current worst case plus the room left there (A)."""
        r = ix.row[sid]
        w = wts[sid]
        b = math.inf
        for s, p in zip(ix.slots_of[r], ix.pos_of[r], strict=True):
            ld, cp, c = load[s], cap[s], cur[p]
            hb = band[s] if headroom else 0.0
            for j in K:
                b = min(b, (c[j] + max(0.0, cp[j] - ld[j] - hb) / v) / w[p])
        return b

    target_arr = _draw_flat(
        topology,
        {**raw_settled, **{sid: compact(eff(sid, a)) for sid, a in approved.items() if sid not in kept}},
        k,
    )
    if np.any(target_arr > cap_arr + 1e-9):  # (usually nothing is over)
        target: list[list[float]] = target_arr.tolist()
        for sid in lower_order if lower_order is not None else list(reversed(order)):
            if sid not in desired_a or sid not in ix.row:
                continue
            r = ix.row[sid]
            hot = [
                (p, j, target[s][j] - cap[s][j])
                for s, p in zip(ix.slots_of[r], ix.pos_of[r], strict=True)
                for j in K
                if target[s][j] - cap[s][j] > 1e-9
            ]
            if hot:
                cur = cur_of(sid, settled) if sid in kept or sid not in approved else eff(sid, approved[sid])
                flo = floors.get(sid, zero)
                w = wts[sid]
                # as far as needed at every moment over capacity; below a moment's floor frees nothing there;
                # and no phase above what it may draw now (a lease in W may count more on L1 than one in A)
                new = min(max(cur[p][j] - over / v, flo[j]) / w[p] for p, j, over in hot)
                new = min(new, min(cur[p][j] / w[p] for p in range(len(w)) for _p, j, _o in hot))
                new = max(0.0, min(desired_a[sid], new))
                e = eff(sid, new)
                if any(e[p][j] < cur[p][j] - 1e-9 for p in range(len(e)) for j in K):
                    approved[sid] = new
                    kept.discard(sid)
                    shift(target, sid, [[e[p][j] - cur[p][j] for j in K] for p in range(len(e))])
    used: list[list[float]] = _draw_flat(topology, raw_wc, k).tolist()
    for sid in order:
        if sid not in desired_a or sid in approved or sid not in ix.row:
            continue
        want = desired_a[sid]
        cur = cur_of(sid, wc)
        w = wts[sid]
        # the largest cap the current worst case already covers, at each moment
        held = [min(cur[p][j] / w[p] for p in range(len(w))) for j in K]
        grant = min(want, bound(sid, cur, used, headroom=True))
        if grant < min(want, held[0]):
            # what it holds now (e.g. renewing a lease past its end) needs room, not the hysteresis band:
            # the band only holds back raises above the current value
            grant = max(grant, min(want, held[0], bound(sid, cur, used, headroom=False)))
        if max(held) <= grant < max(held) + min_raise_a:
            grant = min(want, max(held))  # a raise too small to be worth it (it fits: grant ≥ it)
        grant = max(0.0, grant)
        approved[sid] = grant
        # a raise only counts upwards: a lowering takes effect once accepted
        e = eff(sid, grant)
        up = [[max(e[p][j] - cur[p][j], 0.0) for j in K] for p in range(len(e))]
        shift(used, sid, up)
        wc[sid] = [[cur[p][j] + up[p][j] for j in K] for p in range(len(e))]
    return approved


def violations(
    topology: Topology,
    capacity_w: Mapping[str, FloatArray],
    worst_case_a: Mapping[str, StationDraw],
    tolerance_w: float = 1e-6,
) -> list[tuple[str, int, float]]:
    """(node, phase, excess W) wherever Σ worst-case draw exceeds the capacity ([3] W per node)."""
    draw = node_draw_w(topology, worst_case_a)
    out = []
    for nid, d in draw.items():
        cap = capacity_w.get(nid)
        if cap is None:
            continue
        for p in range(3):
            if d[p] > float(cap[p]) + tolerance_w:
                out.append((nid, p, float(d[p] - cap[p])))
    return out
