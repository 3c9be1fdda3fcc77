"""Charging planner: a two-stage (lexicographic) LP solved with HiGHS, then hardware rounding.

Pure: no I/O; the plan never depends on the clock (only ``solve_time_s`` is measured). Model: docs/planner.md.
Decision variables are the per-phase current x[s, t] (A) of session s in slot t, only between arrival and
departure. Power is
x · V_s · n_s (n_s = grid phases the EV loads); energy per slot is x · V_s · n_s · Δt_h (Wh).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import dataclass

import highspy
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from gridcharge.allocation.core.model import (
    PHASES,
    BindingConstraint,
    FloatArray,
    Plan,
    PlannerConfig,
    PlanningProblem,
    SessionVerdict,
)

IntArray = npt.NDArray[np.int64]
_EPS = 1e-6


@dataclass
class _Indexed:
    """The problem flattened into arrays (one entry per session, per node×phase row, per variable)."""

    T: int
    dt_h: float
    node_ids: list[str]
    cap_w: FloatArray  # [N*3, T], inf = no limit, clipped at ≥ 0
    sources: list[str]  # per node×phase row
    phases: list[tuple[int, ...]]  # grid phases loaded per session
    volt: FloatArray  # [S] V
    n_ph: FloatArray  # [S] phases loaded
    k_wh: FloatArray  # [S] Wh per A per slot
    imin: FloatArray  # [S] A
    imax: FloatArray  # [S] A
    arr: IntArray  # [S] first slot (clipped to horizon)
    dep: IntArray  # [S] slot after the last (clipped to horizon)
    late: IntArray  # [S] first slot of the session's reserve before departure (PlannerConfig.reserve_s)
    need_wh: FloatArray  # [S] remaining energy
    extra_wh: FloatArray  # [S] energy it may take beyond its need in spare capacity (Wh, may be inf)
    prio: FloatArray  # [S]
    row_ptr: IntArray  # [S+1] CSR pointer into row_idx
    row_idx: IntArray  # node×phase rows each session loads
    row_w: FloatArray  # per entry of row_idx: W per A the session puts on that row
    n_row: IntArray  # [S] rows per node of each session (its entries in row_idx come node by node)
    load_matrix: sp.csr_matrix  # [N*3, S] W per A
    cur: FloatArray  # [S] A the session holds now, nan = not known (move suppression)


def _index(problem: PlanningProblem) -> _Indexed:
    slots = problem.slots
    T = slots.count
    cfg = problem.config
    node_ids = [n.node_id for n in problem.nodes]
    node_pos = {nid: i for i, nid in enumerate(node_ids)}
    cap = np.full((len(node_ids) * PHASES, T), np.inf)
    sources: list[str] = []
    for i, node in enumerate(problem.nodes):
        c = np.asarray(node.capacity_w, dtype=float)
        if c.shape != (PHASES, T):
            raise ValueError(f"node {node.node_id}: capacity_w shape {c.shape}, expected {(PHASES, T)}")
        cap[i * PHASES : (i + 1) * PHASES] = np.maximum(np.nan_to_num(c, nan=0.0), 0.0)
        sources.extend(node.source)
    evses = {e.evse_id: e for e in problem.evses}
    S = len(problem.sessions)
    dwell = max(1, math.ceil(cfg.default_dwell_s / slots.duration_s))
    phases: list[tuple[int, ...]] = []
    volt = np.zeros(S)
    n_ph = np.zeros(S)
    imin = np.zeros(S)
    imax = np.zeros(S)
    arr = np.zeros(S, dtype=np.int64)
    dep = np.zeros(S, dtype=np.int64)
    late = np.zeros(S, dtype=np.int64)
    need = np.zeros(S)
    extra = np.zeros(S)
    prio = np.zeros(S)
    row_ptr = np.zeros(S + 1, dtype=np.int64)
    rows: list[int] = []
    row_w: list[float] = []
    n_row = np.zeros(S, dtype=np.int64)
    for s, sess in enumerate(problem.sessions):
        evse = evses.get(sess.evse_id)
        if evse is None:
            raise ValueError(f"session {sess.session_id}: unknown EVSE {sess.evse_id}")
        ph = tuple(evse.phase_map[: max(1, min(sess.phases_used, len(evse.phase_map)))])
        phases.append(ph)
        volt[s] = sess.voltage_v
        n_ph[s] = len(ph)
        imin[s] = max(sess.min_current_a, evse.min_current_a)
        imax[s] = max(0.0, min(sess.max_current_a, evse.max_current_a))
        if cfg.apply_min_current and imin[s] > imax[s] + 1e-9:
            imax[s] = 0.0  # the car cannot draw the hardware minimum: it cannot charge here at all
        d = sess.departure_slot if sess.departure_slot is not None else sess.arrival_slot + dwell
        arr[s] = min(max(sess.arrival_slot, 0), T)
        dep[s] = min(max(d, arr[s]), T)
        # the reserve: the last reserve_s before a departure inside the horizon, in whole slots (none for a
        # departure beyond it). Fixed, not a share of what is left: a share shrinks cycle after cycle and
        # stage 2 would follow it to the last minutes
        reserve = min(cfg.reserve_s, (dep[s] - arr[s]) * slots.duration_s)
        late[s] = dep[s] - math.floor(reserve / slots.duration_s + 1e-9) if d <= T else T
        need[s] = sess.remaining_wh
        extra[s] = max(0.0, sess.extra_wh) if not math.isnan(sess.extra_wh) else 0.0
        prio[s] = sess.priority
        if evse.load_weights:
            load = [(p, sess.voltage_v * w) for p, w in zip(evse.phase_map, evse.load_weights, strict=False) if w > 0]
        else:
            load = [(p, sess.voltage_v) for p in ph]
        n_row[s] = len(load)
        for nid in evse.node_path:
            if nid not in node_pos:
                raise ValueError(f"EVSE {evse.evse_id}: unknown node {nid}")
            rows.extend(node_pos[nid] * PHASES + p for p, _w in load)
            row_w.extend(w for _p, w in load)
        row_ptr[s + 1] = len(rows)
    row_idx = np.asarray(rows, dtype=np.int64)
    row_wa = np.asarray(row_w, dtype=float)
    k_wh = volt * n_ph * slots.duration_h
    counts = np.diff(row_ptr)
    load_matrix = sp.csr_matrix(
        (row_wa, (row_idx, np.repeat(np.arange(S), counts))),
        shape=(len(node_ids) * PHASES, S),
    )
    cur = np.array([problem.current_a.get(sess.session_id, math.nan) for sess in problem.sessions], dtype=float)
    return _Indexed(
        T,
        slots.duration_h,
        node_ids,
        cap,
        sources,
        phases,
        volt,
        n_ph,
        k_wh,
        imin,
        imax,
        arr,
        dep,
        late,
        need,
        extra,
        prio,
        row_ptr,
        row_idx,
        row_wa,
        n_row,
        load_matrix,
        cur,
    )


@dataclass
class _LpResult:
    x: FloatArray  # [S, T] A, continuous LP optimum
    status: str
    energy_kwh: float  # stage-1 priority-weighted energy (kWh)
    stages: int


def _blocks(T: int, fine_slots: int, factor: int) -> tuple[IntArray, IntArray]:
    """Start and end slot of each LP time block: the first ``fine_slots`` slots alone, then ``factor``."""
    if factor <= 1 or fine_slots >= T:
        s = np.arange(T, dtype=np.int64)
        return s, s + 1
    starts = np.concatenate([np.arange(fine_slots), np.arange(fine_slots, T, factor)]).astype(np.int64)
    ends = np.append(starts[1:], T).astype(np.int64)
    return starts, ends


def _node_parents(ix: _Indexed, sess: IntArray) -> IntArray | None:
    """Parent node index of every node as implied by the sessions' paths (−1 = top); None if the paths
    do not form one forest (a node with two different parents)."""
    N = len(ix.node_ids)
    parent = np.full(N, -2, dtype=np.int64)  # −2 = not on any path
    for s in sess:
        n_r = int(ix.n_row[s])
        path = ix.row_idx[ix.row_ptr[s] : ix.row_ptr[s + 1] : n_r] // PHASES
        for i, node in enumerate(path):
            par = int(path[i + 1]) if i + 1 < path.size else -1
            if parent[node] == -2:
                parent[node] = par
            elif parent[node] != par:
                return None
    return parent


def _direct_rows(
    ix: _Indexed,
    sess: IntArray,
    sess_local: IntArray,
    var_s: IntArray,
    var_b: IntArray,
    k_var: FloatArray,
    ub: FloatArray,
    cap_blk: FloatArray,
) -> tuple[sp.csc_matrix, FloatArray, FloatArray, FloatArray, int, int]:
    """Capacity rows Σ V·x ≤ C for every node on every session's path (one entry per var × path row)."""
    nv = var_s.size
    B = cap_blk.shape[1]
    reps = np.diff(ix.row_ptr)[var_s]
    var_rep = np.repeat(np.arange(nv), reps)
    off = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    entry = ix.row_ptr[var_s[var_rep]] + off
    node_row = ix.row_idx[entry]
    cap_flat = cap_blk.reshape(-1)
    key = node_row * B + var_b[var_rep]
    finite = np.isfinite(cap_flat[key])
    key, var_rep = key[finite], var_rep[finite]
    ukeys, crow = np.unique(key, return_inverse=True)
    n_cap = ukeys.size
    rows_i = np.concatenate([crow, n_cap + sess_local])
    cols_i = np.concatenate([var_rep, np.arange(nv)])
    vals = np.concatenate([ix.row_w[entry[finite]], k_var])
    n_rows = n_cap + sess.size
    A = sp.csc_matrix((vals, (rows_i, cols_i)), shape=(n_rows, nv))
    row_ub = np.concatenate([cap_flat[ukeys], ix.need_wh[sess] + ix.extra_wh[sess]])
    return A, np.full(n_rows, -highspy.kHighsInf), row_ub, ub, n_rows, nv


def _hierarchical_rows(
    ix: _Indexed,
    sess: IntArray,
    sess_local: IntArray,
    var_s: IntArray,
    var_b: IntArray,
    k_var: FloatArray,
    ub: FloatArray,
    cap_blk: FloatArray,
    parent: IntArray,
) -> tuple[sp.csc_matrix, FloatArray, FloatArray, FloatArray, int, int]:
    """Same constraints with a load variable L[n,φ,b] ≤ C per node: L_n = Σ V·x (sessions whose nearest node
    is n) + Σ L_child. Each x appears only in its nearest node's rows, so the matrix (and the interior point's
    normal equations) stay sparse however deep the tree and however many sessions share the top node."""
    nv = var_s.size
    N3, B = cap_blk.shape
    n_l = N3 * B
    # x entries: the first n_row rows of a session's row list belong to its nearest node
    reps = ix.n_row[var_s].astype(np.int64)
    var_rep = np.repeat(np.arange(nv), reps)
    off = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    entry = ix.row_ptr[var_s[var_rep]] + off
    node_row = ix.row_idx[entry]
    bal_x = node_row * B + var_b[var_rep]
    # L entries: −1 in its own balance row, +1 in the parent's
    l_idx = np.arange(n_l)
    l_node = (l_idx // B) // PHASES
    l_phase = (l_idx // B) % PHASES
    l_blk = l_idx % B
    has_par = parent[l_node] >= 0
    par_row = (parent[l_node[has_par]] * PHASES + l_phase[has_par]) * B + l_blk[has_par]
    n_bal = n_l
    rows_i = np.concatenate([bal_x, l_idx, par_row, n_bal + sess_local])
    cols_i = np.concatenate([var_rep, nv + l_idx, nv + l_idx[has_par], np.arange(nv)])
    vals = np.concatenate([ix.row_w[entry], -np.ones(n_l), np.ones(int(has_par.sum())), k_var])
    n_rows = n_bal + sess.size
    A = sp.csc_matrix((vals, (rows_i, cols_i)), shape=(n_rows, nv + n_l))
    cap = cap_blk.reshape(-1)
    col_ub = np.concatenate([ub, np.where(np.isfinite(cap), cap, highspy.kHighsInf)])
    row_lb = np.concatenate([np.zeros(n_bal), np.full(sess.size, -highspy.kHighsInf)])
    row_ub = np.concatenate([np.zeros(n_bal), ix.need_wh[sess] + ix.extra_wh[sess]])
    return A, row_lb, row_ub, col_ub, n_rows, nv + n_l


def _solve_lp(
    ix: _Indexed,
    cfg: PlannerConfig,
    price: FloatArray | None,
    pv_w: dict[int, FloatArray],
) -> _LpResult:
    """Build the sparse LP (vectorised) and solve it with HiGHS, lexicographically or weighted.

    Variables are per session per time block (a block = one slot, or ``coarse_factor`` slots after the
    first ``fine_slots``); a block's capacity is the minimum over its slots, so expanding a block's current
    to each of its slots never exceeds any slot's capacity.
    """
    T = ix.T
    S = len(ix.arr)
    active = (ix.dep > ix.arr) & (ix.need_wh + ix.extra_wh > _EPS) & (ix.imax > _EPS)
    x_full = np.zeros((S, T))
    if not active.any():
        return _LpResult(x_full, "empty", 0.0, 0)
    bs, be = _blocks(T, cfg.fine_slots, cfg.coarse_factor)
    B = bs.size
    block_of = np.repeat(np.arange(B), be - bs)
    sess = np.flatnonzero(active)
    b0 = block_of[ix.arr[sess]]
    b1 = block_of[ix.dep[sess] - 1] + 1
    length = b1 - b0
    var_s = np.repeat(sess, length)
    starts = np.cumsum(length) - length
    var_b = np.arange(int(length.sum())) - np.repeat(starts, length) + np.repeat(b0, length)
    # slots of the block the session is present in (arrival/departure may fall inside a block)
    avail = (np.minimum(ix.dep[var_s], be[var_b]) - np.maximum(ix.arr[var_s], bs[var_b])).astype(float)
    nv = var_s.size
    k_var = ix.k_wh[var_s] * avail  # Wh per A over the block
    ub = np.minimum(ix.imax[var_s], (ix.need_wh[var_s] + ix.extra_wh[var_s]) / k_var)
    cap_blk = np.minimum.reduceat(ix.cap_w, bs, axis=1) if B < T else ix.cap_w

    sess_local = np.searchsorted(sess, var_s)
    parent = _node_parents(ix, sess) if cfg.hierarchical else None
    if parent is not None:
        A, row_lb, row_ub, col_ub, n_rows, n_cols = _hierarchical_rows(
            ix, sess, sess_local, var_s, var_b, k_var, ub, cap_blk, parent
        )
    else:
        A, row_lb, row_ub, col_ub, n_rows, n_cols = _direct_rows(ix, sess, sess_local, var_s, var_b, k_var, ub, cap_blk)

    # stage 1: maximise Σ w·E·(1 + early·(T−t)/T)   (kWh)
    e_kwh = k_var / 1000.0
    w_e = ix.prio[var_s] * e_kwh
    early = (T - (bs[var_b] + be[var_b]) / 2.0) / T
    if cfg.urgency_weight > 0:
        # least-laxity tie-break: among equal energy, serve first the sessions with the least slack time
        lax = (ix.dep - ix.arr) - ix.need_wh / np.maximum(ix.imax * ix.k_wh, _EPS)  # slots
        urgency = 1.0 + cfg.urgency_weight * np.clip(1.0 - lax / T, 0.0, 1.0)
        early = early * urgency[var_s]
    c1 = -w_e * (1.0 + cfg.early_weight * early)
    # unknown needs (Session.extra_wh): a session's energy up to its need is worth what anyone's need is
    # worth (column g ≤ need, g ≤ its energy); beyond it, only capacity no need can use. Two-stage mode: its
    # currents carry no stage-1 value (g does), stage 1b maximises their energy with stage 1 held. One-solve
    # mode: they are worth ``extra_weight`` of a kWh of need
    g_var = ix.extra_wh[var_s] > _EPS
    g_loc = np.flatnonzero(ix.extra_wh[sess] > _EPS)
    has_extra = g_loc.size > 0

    has_price = price is not None and cfg.price_weight > 0 and float(np.ptp(price)) > 0
    want_fair = cfg.fairness_weight > 0 and sess.size > 1
    # move suppression: the first-block variable of each session that is present now and holds a known current
    first = np.flatnonzero((var_b == 0) & (ix.arr[var_s] == 0) & np.isfinite(ix.cur[var_s]))
    want_move = cfg.move_weight > 0 and first.size > 0
    secondary = has_price or bool(pv_w) or want_fair or want_move
    two_stage = cfg.two_stage if cfg.two_stage is not None else nv <= cfg.auto_threshold_vars
    exact_extra = has_extra and two_stage
    if has_extra:
        c1 = np.where(g_var, 0.0 if exact_extra else cfg.extra_weight * c1, c1)
    solver = cfg.solver
    if solver == "auto":
        solver = "choose" if nv <= cfg.auto_threshold_vars else "ipm"

    _swallow_banner()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(cfg.time_limit_s))
    h.setOptionValue("solver", solver)
    if solver == "ipm":
        h.setOptionValue("run_crossover", "off")  # an interior point is fine: rounding follows anyway
    for name, value in cfg.highs_options:
        h.setOptionValue(name, value)
    lp = highspy.HighsLp()
    lp.num_col_ = n_cols
    lp.num_row_ = n_rows
    lp.col_cost_ = np.concatenate([c1, np.zeros(n_cols - nv)])
    lp.col_lower_ = np.zeros(n_cols)
    lp.col_upper_ = col_ub
    lp.row_lower_ = row_lb
    lp.row_upper_ = row_ub
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data
    h.passModel(lp)
    g_col0, g_sess = _add_need_columns(h, ix, sess, sess_local, g_loc, g_var, k_var)
    n_g = g_sess.size
    g_cost = -ix.prio[g_sess] / 1000.0  # per Wh of need met
    if n_g:
        h.changeColsCost(n_g, (g_col0 + np.arange(n_g)).astype(np.int32), g_cost)

    p_blk = np.zeros(B)
    if price is not None:
        p_arr = np.asarray(price, dtype=float)[:T]
        p_blk = np.add.reduceat(p_arr, bs) / (be - bs)
    p_ref = max(float(np.mean(np.abs(p_blk))), 1e-3) if price is not None else 1.0

    def add_secondary(mult: float) -> None:
        """Add PV, fairness and move-suppression columns/rows, their objective scaled by ``mult``."""
        n_col = h.getNumCol()
        if want_move:
            # d_s ≥ cur_s − x_s,0: taking current away from a session costs move_weight × p_ref × kWh per A in
            # the block; giving it more does not (free capacity is used as early as before)
            m = first.size
            d_cost = mult * cfg.move_weight * p_ref * k_var[first] / 1000.0
            h.addCols(
                m,
                d_cost,
                np.zeros(m),
                np.full(m, highspy.kHighsInf),
                0,
                np.zeros(0, np.int32),
                np.zeros(0, np.int32),
                np.zeros(0),
            )
            g = np.clip(ix.cur[var_s[first]], 0.0, ub[first])
            idx = np.empty(2 * m, dtype=np.int32)
            idx[0::2], idx[1::2] = first, n_col + np.arange(m)  # −x − d ≤ −g
            val = np.tile(np.array([-1.0, -1.0]), m)
            h.addRows(m, np.full(m, -highspy.kHighsInf), -g, idx.size, (np.arange(m) * 2).astype(np.int32), idx, val)
            n_col += m
        # PV: u[n,b] ≤ surplus, u[n,b] ≤ Σ power of sessions below n; reward used surplus
        for node_row0, surplus in pv_w.items():
            under = np.asarray(ix.load_matrix[node_row0 : node_row0 + PHASES].sum(axis=0)).ravel() > 0
            sur_b = np.minimum.reduceat(surplus[:T], bs)
            ts = np.flatnonzero(sur_b > 0)
            if ts.size == 0 or not under.any():
                continue
            u_cost = -mult * (cfg.price_weight * p_blk[ts] + cfg.pv_weight * p_ref) * ix.dt_h / 1000.0
            u_cost = u_cost * (be - bs)[ts]
            h.addCols(
                ts.size,
                u_cost,
                np.zeros(ts.size),
                sur_b[ts],
                0,
                np.zeros(0, np.int32),
                np.zeros(0, np.int32),
                np.zeros(0),
            )
            if parent is not None:
                # hierarchical: the node's load is Σ_φ L[n,φ,b] — three entries per row
                l_cols = nv + ((node_row0 + np.arange(PHASES))[None, :] * B + ts[:, None])  # [ts, 3]
                idx2 = np.empty((ts.size, PHASES + 1), dtype=np.int32)
                idx2[:, 0] = n_col + np.arange(ts.size)
                idx2[:, 1:] = l_cols
                val2 = np.tile(np.array([1.0] + [-1.0] * PHASES), (ts.size, 1))
                h.addRows(
                    ts.size,
                    np.full(ts.size, -highspy.kHighsInf),
                    np.zeros(ts.size),
                    idx2.size,
                    (np.arange(ts.size) * (PHASES + 1)).astype(np.int32),
                    idx2.ravel(),
                    val2.ravel(),
                )
                n_col += ts.size
                continue
            slot_pos = np.full(B, -1)
            slot_pos[ts] = np.arange(ts.size)
            vi = np.flatnonzero(under[var_s] & (slot_pos[var_b] >= 0))
            r_of_v = slot_pos[var_b[vi]]
            order = np.argsort(r_of_v, kind="stable")
            vi, r_of_v = vi[order], r_of_v[order]
            # each row: u_col − Σ V·n·x ≤ 0
            counts_r = np.bincount(r_of_v, minlength=ts.size) + 1
            rs = np.cumsum(counts_r) - counts_r
            idx = np.empty(int(counts_r.sum()), dtype=np.int32)
            val = np.empty(idx.size)
            idx[rs] = n_col + np.arange(ts.size)
            val[rs] = 1.0
            fill = np.ones(idx.size, bool)
            fill[rs] = False
            idx[fill] = vi
            val[fill] = -(ix.volt * ix.n_ph)[var_s[vi]]
            h.addRows(
                ts.size,
                np.full(ts.size, -highspy.kHighsInf),
                np.zeros(ts.size),
                idx.size,
                rs.astype(np.int32),
                idx,
                val,
            )
            n_col += ts.size
        if want_fair:
            # fairness proxy (sparse, no max-min coupling): a bonus on each session's first
            # ``fair_share`` of its achievable energy — y_s ≤ share·target_s, y_s ≤ E_s — so among equals
            # everyone reaches that share before anyone gets more
            achievable = np.bincount(sess_local, weights=ub * k_var, minlength=sess.size)
            target = np.minimum(ix.need_wh[sess], achievable)
            ok = np.flatnonzero(target > _EPS)
            n_fr = ok.size
            y_cost = np.full(n_fr, -mult * cfg.fairness_weight * p_ref / 1000.0)
            h.addCols(
                n_fr,
                y_cost,
                np.zeros(n_fr),
                cfg.fair_share * target[ok],
                0,
                np.zeros(0, np.int32),
                np.zeros(0, np.int32),
                np.zeros(0),
            )
            pos = np.full(sess.size, -1)
            pos[ok] = np.arange(n_fr)
            vi = np.flatnonzero(pos[sess_local] >= 0)
            _add_energy_link_rows(h, n_col, n_fr, vi, pos[sess_local[vi]], k_var)

    price_cost = cfg.price_weight * p_blk[var_b] * e_kwh
    weighted = secondary and not two_stage
    if weighted:
        # one solve: secondary terms scaled to ≤ ~1 % of the energy value per kWh (see docs/planner.md)
        top = (
            cfg.price_weight * float(np.max(np.abs(p_blk)))
            + cfg.pv_weight * p_ref
            + cfg.fairness_weight * p_ref
            + (cfg.move_weight * p_ref if want_move else 0.0)
        )
        mult = cfg.weighted_secondary_share / max(top, 1e-12)
        h.changeColsCost(nv, np.arange(nv, dtype=np.int32), c1 + mult * price_cost)
        add_secondary(mult)
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    sol = h.getSolution()
    x = np.asarray(sol.col_value, dtype=float)
    if x.size < nv or not (status == "Optimal" or sol.value_valid):
        return _LpResult(x_full, status, 0.0, 1)
    # a non-optimal but valid primal point (time limit, imprecise IPM) is still used: rounding and the repair
    # pass keep it within every capacity; ``status`` tells the caller
    g_val = np.asarray(sol.col_value, dtype=float)[g_col0 : g_col0 + n_g]
    x = x[:nv]
    stages = 1
    committed = float(w_e[~g_var] @ x[~g_var] + ix.prio[g_sess] @ g_val / 1000.0)
    all_vars = np.arange(nv, dtype=np.int32)
    g_cols = (g_col0 + np.arange(n_g)).astype(np.int32)
    hold_row = -1
    if exact_extra:
        # stage 1b: as much of the sessions' extra as fits, earliest first, with stage 1 held within ε
        obj1 = float(h.getInfo().objective_function_value)
        h.addRow(
            -highspy.kHighsInf,
            obj1 + cfg.energy_tolerance * abs(obj1),
            nv + n_g,
            np.concatenate([all_vars, g_cols]),
            np.concatenate([c1, g_cost]),
        )
        hold_row = h.getNumRow() - 1
        h.changeColsCost(nv, all_vars, np.where(g_var, -w_e * (1.0 + cfg.early_weight * early), 0.0))
        h.changeColsCost(n_g, g_cols, np.zeros(n_g))
        h.run()
        sol_b = h.getSolution()
        xb = np.asarray(sol_b.col_value, dtype=float)
        if h.modelStatusToString(h.getModelStatus()) == "Optimal" and xb.size >= nv:
            x = xb[:nv]
            stages = 2
    e1 = float(w_e @ x)
    if secondary and two_stage:
        c2 = price_cost - cfg.early_weight * p_ref * early * w_e
        h.changeColsCost(nv, all_vars, c2)
        if exact_extra:
            # keep the needs met (within ε of stage 1) and the extra energy (within ε of stage 1b); stage 1's
            # quick-charge hold goes: stage 2 may move energy for price, PV and fairness as it always did
            h.changeRowBounds(hold_row, -highspy.kHighsInf, highspy.kHighsInf)
            known = np.flatnonzero(~g_var).astype(np.int32)
            h.addRow(
                (1.0 - cfg.energy_tolerance) * committed,
                highspy.kHighsInf,
                known.size + n_g,
                np.concatenate([known, g_cols]),
                np.concatenate([w_e[known], -g_cost]),
            )
            gv = np.flatnonzero(g_var).astype(np.int32)
            extra_e = float(w_e[gv] @ x[gv])
            h.addRow((1.0 - cfg.energy_tolerance) * extra_e, highspy.kHighsInf, gv.size, gv, w_e[gv])
        else:
            # keep weighted energy within ε of the stage-1 optimum
            h.addRow((1.0 - cfg.energy_tolerance) * e1, highspy.kHighsInf, nv, all_vars, w_e)
        _hold_reserves(h, ix, x, var_s, var_b, bs, be, k_var)
        add_secondary(1.0)
        h.run()
        status2 = h.modelStatusToString(h.getModelStatus())
        x2 = np.asarray(h.getSolution().col_value, dtype=float)
        if status2 == "Optimal" and x2.size >= nv:
            x = x2[:nv]
            stages += 1
    x = np.clip(x, 0.0, ub)
    # expand blocks to slots, only where the session is present
    seg = be[var_b] - bs[var_b]
    rep_v = np.repeat(np.arange(nv), seg)
    t_rep = np.arange(int(seg.sum())) - np.repeat(np.cumsum(seg) - seg, seg) + np.repeat(bs[var_b], seg)
    s_rep = var_s[rep_v]
    present = (t_rep >= ix.arr[s_rep]) & (t_rep < ix.dep[s_rep])
    x_full[s_rep[present], t_rep[present]] = x[rep_v[present]]
    return _LpResult(x_full, status, e1, stages)


def _add_need_columns(
    h: highspy.Highs,
    ix: _Indexed,
    sess: IntArray,
    sess_local: IntArray,
    g_loc: IntArray,
    g_var: npt.NDArray[np.bool_],
    k_var: FloatArray,
) -> tuple[int, IntArray]:
    """A column g_s ∈ [0, need_s] per session with an extra (``g_loc``, local indices) and the rows
    g_s − Σ_t k·x_{s,t} ≤ 0: g is the part of its energy that meets its need. Returns (first g column, the
    sessions' indices)."""
    g_col0 = h.getNumCol()
    g_sess = sess[g_loc]
    n_g = g_sess.size
    if n_g == 0:
        return g_col0, g_sess
    h.addCols(
        n_g,
        np.zeros(n_g),
        np.zeros(n_g),
        ix.need_wh[g_sess],
        0,
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
        np.zeros(0),
    )
    pos = np.full(sess.size, -1)
    pos[g_loc] = np.arange(n_g)
    vi = np.flatnonzero(g_var)
    _add_energy_link_rows(h, g_col0, n_g, vi, pos[sess_local[vi]], k_var)
    return g_col0, g_sess


def _add_energy_link_rows(
    h: highspy.Highs, col0: int, n: int, vi: IntArray, row_of_var: IntArray, k_var: FloatArray
) -> None:
    """Rows col0 + i − Σ k·x_v ≤ 0 over the variables ``vi`` with ``row_of_var`` = i: a column bounded by one
    session's energy (Wh). ``vi`` is sorted and each session's variables are contiguous in variable order."""
    counts_r = np.bincount(row_of_var, minlength=n) + 1
    rs = np.cumsum(counts_r) - counts_r
    idx = np.empty(int(counts_r.sum()), dtype=np.int32)
    val = np.empty(idx.size)
    idx[rs] = col0 + np.arange(n)
    val[rs] = 1.0
    fill = np.ones(idx.size, bool)
    fill[rs] = False
    idx[fill] = vi
    val[fill] = -k_var[vi]
    h.addRows(n, np.full(n, -highspy.kHighsInf), np.zeros(n), idx.size, rs.astype(np.int32), idx, val)


def _hold_reserves(
    h: highspy.Highs,
    ix: _Indexed,
    x: FloatArray,
    var_s: IntArray,
    var_b: IntArray,
    bs: IntArray,
    be: IntArray,
    k_var: FloatArray,
) -> None:
    """Stage 2 may not plan more energy in a session's reserve (its last slots before departure, ``late``)
    than stage 1 did: stage 1 fills the earliest slots it can, so price and PV move energy only within the
    rest of the stay. The reserve absorbs what the plan cannot know (forecast error, a car tapering, a late
    limit); energy only it can deliver stays in it."""
    # (a stay that is all reserve keeps stage 2's freedom: fairness may still share it between cars)
    rv = np.flatnonzero(((bs[var_b] + be[var_b]) / 2.0 >= ix.late[var_s]) & (ix.late[var_s] > ix.arr[var_s]))
    if rv.size == 0:
        return
    sess_ids, rows = np.unique(var_s[rv], return_inverse=True)
    used = np.bincount(rows, weights=k_var[rv] * x[rv], minlength=sess_ids.size)
    order = np.argsort(rows, kind="stable")
    idx = rv[order].astype(np.int32)
    val = k_var[rv][order]
    starts = np.searchsorted(rows[order], np.arange(sess_ids.size)).astype(np.int32)
    slack = 1e-6 * np.maximum(ix.need_wh[sess_ids], 1.0)  # Wh: solver noise, not a shift
    h.addRows(sess_ids.size, np.full(sess_ids.size, -highspy.kHighsInf), used + slack, idx.size, starts, idx, val)


def _round(ix: _Indexed, x_lp: FloatArray, cfg: PlannerConfig) -> FloatArray:
    """Hardware rounding: steps of ``current_step_a``, 0 or ≥ min current, never above any capacity.

    1. floor to the step (load only goes down);
    2. below-minimum currents → 0;
    3. per slot, in order (priority, was-charging-before, earliest departure): raise a zeroed session to
       its minimum if every node/phase on its path has the slack; then top up partly served sessions
       with the remaining slack (up to max current and remaining need).
    """
    step = cfg.current_step_a
    # floor to the step grid; values within 2 % of a step below a grid point (solver noise, or the few Wh
    # stage 2's tolerance lets it move to a cheaper slot) snap up — floored, they left a crumb of need that
    # the raise below turned into a minimum-current slot somewhere else; _repair removes any overshoot
    x = np.floor(x_lp / step + 2e-2) * step if step > 0 else x_lp.copy()
    x = np.minimum(x, ix.imax[:, None])
    # a car's own maximum (e.g. 31.73 A for 6.6 kW at 208 V) is not on the step grid: keep it exact
    at_max = x_lp >= ix.imax[:, None] - 1e-6
    x[at_max] = np.broadcast_to(ix.imax[:, None], x.shape)[at_max]
    if not cfg.apply_min_current and step <= 0:
        return x
    S, T = x.shape
    imin = ix.imin if cfg.apply_min_current else np.zeros(S)
    zeroed = (x > 0) & (x < imin[:, None] - 1e-9)
    x[zeroed] = 0.0
    slack = ix.cap_w - ix.load_matrix @ x  # [R, T]
    planned = (x * ix.k_wh[:, None]).sum(axis=1)
    # padded session→rows table; pad points at an extra row with infinite slack
    counts = np.diff(ix.row_ptr)
    width = int(counts.max()) if S else 0
    pad_row = ix.cap_w.shape[0]
    rows_tab = np.full((S, max(width, 1)), pad_row, dtype=np.int64)
    for s in np.flatnonzero(counts):
        rows_tab[s, : counts[s]] = ix.row_idx[ix.row_ptr[s] : ix.row_ptr[s + 1]]
    # W per A of each session on each row (0 where it does not load it; pad column 1: never binds)
    wmat = np.zeros((S, pad_row + 1))
    if S:
        wmat[:, :pad_row] = ix.load_matrix.T.toarray()
        wmat[:, pad_row] = 1.0
    wanted = x_lp > 1e-3
    crumbs = x_lp < max(step, 1e-3)  # e.g. the last few Wh of a session: only free room, never borrowed
    want_wh = ix.need_wh + ix.extra_wh  # an unknown need's extra is planned like need (Session.extra_wh)
    has_extra = ix.extra_wh > _EPS
    for t in range(T):
        sl = np.append(slack[:, t], np.inf)
        min_slack = sl[rows_tab].min(axis=1)
        prev_on = x[:, t - 1] > 0 if t > 0 else np.nan_to_num(ix.cur) > 0
        cand = np.flatnonzero(zeroed[:, t] | (wanted[:, t] & (x[:, t] == 0)))
        cand = cand[planned[cand] < want_wh[cand] - _EPS]
        topup = np.flatnonzero(
            (x[:, t] > 0)
            & (x[:, t] <= ix.imax - max(step, 1e-3))
            & (min_slack >= max(step, 1e-3) * ix.volt)
            & (planned < want_wh - max(step, 1e-3) * ix.k_wh)
        )
        for group, is_raise in ((cand, True), (topup, False)):
            if group.size == 0:
                continue
            # sessions beyond their need (an unknown need's extra) come last: they get what is left
            order = np.lexsort((ix.dep[group], ~prev_on[group], -ix.prio[group], has_extra[group]))
            for s in group[order]:
                r = rows_tab[s, : counts[s]]
                wr = wmat[s, r]
                room_a = float((sl[r] / wr).min()) if r.size else math.inf
                if is_raise:
                    add = imin[s]
                    # nothing is borrowed for crumbs; a session whose need is a guess (it has an extra) only
                    # from others whose need is a guess too: never from a known need
                    if bool(np.any(sl[r] < add * wr - 1e-6)) and (
                        crumbs[s, t]
                        or not _borrow(s, t, r, add * wr, x, sl, wmat, imin, ix, planned, step, bool(has_extra[s]))
                    ):
                        continue
                else:
                    add = min(ix.imax[s] - x[s, t], room_a, (want_wh[s] - planned[s]) / ix.k_wh[s])
                    if step > 0:
                        add = math.floor(add / step + 1e-6) * step
                    if add <= 1e-9:
                        continue
                x[s, t] += add
                sl[r] -= add * wr
                planned[s] += add * ix.k_wh[s]
        slack[:, t] = sl[:-1]
    return _repair(ix, x, imin, step)


def _repair(ix: _Indexed, x: FloatArray, imin: FloatArray, step: float) -> FloatArray:
    """Safety net: wherever a node/phase/slot is over capacity (e.g. after snapping solver noise), lower the
    sessions on it (lowest priority, latest departure first) by whole steps, to 0 if below minimum."""
    for _ in range(100):
        over = ix.cap_w - ix.load_matrix @ x < -1e-6
        if not over.any():
            return x
        for r, t in zip(*np.nonzero(over), strict=True):
            deficit = float((ix.load_matrix[r] @ x[:, t])[0] - ix.cap_w[r, t])
            lm = ix.load_matrix[r]
            w_of = dict(zip(lm.indices.tolist(), lm.data.tolist(), strict=True))
            users = lm.indices
            users = users[x[users, t] > 0]
            for s in users[np.lexsort((-ix.dep[users], ix.prio[users]))]:
                if deficit <= 1e-6:
                    break
                v = w_of[int(s)]
                new = x[s, t] - deficit / v
                new = math.floor(new / step) * step if step > 0 else new
                if new < imin[s] - 1e-9:
                    new = 0.0
                deficit -= (x[s, t] - max(new, 0.0)) * v
                x[s, t] = max(new, 0.0)
    return x


def _borrow(
    c: int,
    t: int,
    rows: IntArray,
    need_w: FloatArray,
    x: FloatArray,
    sl: FloatArray,
    wmat: FloatArray,
    imin: FloatArray,
    ix: _Indexed,
    planned: FloatArray,
    step: float,
    extra_only: bool = False,
) -> bool:
    """Make room for session ``c`` at its minimum in slot ``t`` by lowering others (not below their minimum).

    ``need_w``: what ``c`` needs on each of ``rows`` (W). ``wmat``: W per A of every session on every row.
    Only donors that load every deficient row are used, so lowering them frees capacity exactly where it
    is missing and can never overload anything. Lowest priority / latest departure give first; with
    ``extra_only`` only sessions with an unknown need (``extra_wh``) give, never a known need. Returns
    whether the room now suffices (``sl`` and ``x`` updated in place).
    """
    short = sl[rows] < need_w - 1e-6
    short_rows = rows[short]
    deficit = need_w[short] - sl[short_rows]  # W per short row
    donors = np.flatnonzero((wmat[:, short_rows] > 0).all(axis=1) & (x[:, t] > imin + max(step, 1e-3)))
    donors = donors[(donors != c) & (ix.prio[donors] <= ix.prio[c])]
    if extra_only:  # ``c``'s need is a guess: only from others whose need is a guess too
        donors = donors[ix.extra_wh[donors] > _EPS]
    if donors.size == 0:
        return False
    spare_w = (x[donors, t] - imin[donors])[:, None] * wmat[np.ix_(donors, short_rows)]
    if bool(np.any(spare_w.sum(axis=0) < deficit + 1e-6)):
        return False
    for d in donors[np.lexsort((-ix.dep[donors], ix.prio[donors]))]:
        if float(deficit.max()) <= 1e-6:
            break
        wd = wmat[d, short_rows]
        new = max(imin[d], x[d, t] - float((np.maximum(deficit, 0.0) / wd).max()))
        if step > 0:
            new = max(imin[d], math.floor(new / step + 1e-9) * step)
        red = x[d, t] - new
        if red <= 0:
            continue
        x[d, t] = new
        r = ix.row_idx[ix.row_ptr[d] : ix.row_ptr[d + 1]]
        sl[r] += red * wmat[d, r]
        planned[d] -= red * ix.k_wh[d]
        deficit = deficit - red * wd
    return bool(np.all(sl[rows] >= need_w - 1e-6))


def _verdicts(problem: PlanningProblem, ix: _Indexed, x: FloatArray, slack: FloatArray) -> dict[str, SessionVerdict]:
    """Per session: planned energy vs need, and the binding limit (first tight node/phase/slot)."""
    out: dict[str, SessionVerdict] = {}
    planned = (x * ix.k_wh[:, None]).sum(axis=1)
    step = max(problem.config.current_step_a, 1e-3)
    for s, sess in enumerate(problem.sessions):
        a, d = int(ix.arr[s]), int(ix.dep[s])
        need = float(ix.need_wh[s])
        got = min(float(planned[s]), need)
        short = max(0.0, need - got)
        complete = short <= max(1.0, 1e-3 * need)
        binding: BindingConstraint | None = None
        if d > a and need > _EPS:
            rows = ix.row_idx[ix.row_ptr[s] : ix.row_ptr[s + 1]]
            below_max = x[s, a:d] < ix.imax[s] - step
            tight_w = max(ix.imin[s], step) * ix.volt[s]
            if rows.size:
                sub = slack[rows, a:d]  # [r, window]
                tight = (sub < tight_w) & below_max[None, :]
                cols = np.flatnonzero(tight.any(axis=0))
                if cols.size:
                    # first slot where a node/phase on its path is full while the car could take more;
                    # reported even when it still completes (it explains why it charges slowly)
                    c = int(cols[0])
                    r = int(rows[int(np.argmin(np.where(tight[:, c], sub[:, c], np.inf)))])
                    binding = BindingConstraint(ix.node_ids[r // PHASES], r % PHASES, a + c, ix.sources[r])
            if binding is None and not complete:
                if ix.imax[s] * ix.k_wh[s] * (d - a) < need - _EPS:
                    binding = BindingConstraint("<window>", -1, d, "departure")
                elif not below_max.any():
                    binding = BindingConstraint("<ev>", -1, a, "ev_max_current")
                else:
                    binding = BindingConstraint("<rounding>", -1, a, "min_current")
        elif need > _EPS:
            binding = BindingConstraint("<window>", -1, d, "departure")
        out[sess.session_id] = SessionVerdict(sess.session_id, got, need, short, complete, binding)
    return out


_banner_lock = threading.Lock()
_banner_done = False


def _swallow_banner() -> None:
    """The first ``Highs()`` of a process prints the HiGHS banner straight to file descriptor 1, before any
    option can be set (``output_flag`` silences everything after it). Construct that first one once with fd 1
    pointed at /dev/null, so `gridcharge demo` and the services' stdout stay clean."""
    global _banner_done
    if _banner_done:
        return
    with _banner_lock:
        if _banner_done:
            return
        try:
            sys.stdout.flush()
            saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
        except OSError:  # no fd 1 to protect: nothing to do
            _banner_done = True
            return
        try:
            os.dup2(null, 1)
            highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(null)
            _banner_done = True


class LpPlanner:
    """Default planner: two-stage LP with HiGHS plus hardware rounding (see docs/planner.md)."""

    def plan(self, problem: PlanningProblem) -> Plan:
        """Plan per-phase currents for every session over ``problem.slots``; pure and deterministic."""
        t0 = time.perf_counter()
        cfg = problem.config
        ix = _index(problem)
        pos = {nid: i for i, nid in enumerate(ix.node_ids)}
        pv: dict[int, FloatArray] = {}
        for nid, series in problem.pv_surplus_w.items():
            if nid in pos:
                pv[pos[nid] * PHASES] = np.maximum(np.asarray(series, dtype=float)[: ix.T], 0.0)
        price = None if problem.price_per_kwh is None else np.asarray(problem.price_per_kwh, dtype=float)
        res = _solve_lp(ix, cfg, price, pv)
        x = _round(ix, res.x, cfg)
        load = ix.load_matrix @ x  # [R, T] W
        slack = ix.cap_w - load
        verdicts = _verdicts(problem, ix, x, slack)
        power = x * (ix.volt * ix.n_ph)[:, None]
        node_load = {nid: load[i * PHASES : (i + 1) * PHASES] for i, nid in enumerate(ix.node_ids)}
        return Plan(
            slots=problem.slots,
            session_ids=[s.session_id for s in problem.sessions],
            current_a=x,
            power_w=power,
            phases=ix.phases,
            node_load_w=node_load,
            verdicts=verdicts,
            status=res.status,
            objective_energy_wh=res.energy_kwh * 1000.0,
            solve_time_s=time.perf_counter() - t0,
            lp_current_a=res.x,
        )
