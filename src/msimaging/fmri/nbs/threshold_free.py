"""Threshold-free NBS (TFNBS, Baggio et al. 2018): every edge scored by integrating the
extent of its component over a grid of thresholds (TFCE of Smith & Nichols 2009 on graphs).

The score of an edge with height ``s`` (``t``, ``-t`` or ``sqrt(F)``) is

    score = sum over grid heights h <= s of extent(h)^E * h^H * dh

where ``extent(h)`` is the number of edges of the component that holds the edge in the graph
of edges with height >= h. The grid ``h_1 < ... < h_n`` runs from ``start + dh`` to
``h_max`` in ``n`` equal steps of ``dh = (h_max - start) / n``; ``h_max`` is the largest
height of the observed map *and of every permutation*, so every permutation is scored on the
same grid (a grid taken from each map's own maximum, as the ``tfnbs`` package does during its
permutations, is not one statistic applied to every permutation).

Heights are on the z scale by default (``tfnbs_height="z"``): ``z = norm.isf(t.sf(t, df))``
(``norm.isf(f.sf(F, df1, df2))`` for F), as FSL's TFCE scores z maps. At small df the heavy
tails of t let one extreme null edge outscore any real component (t = 19 alone against a
12-node clique at t ~ 3); z compresses those tails. The transform is monotone with one df for
every edge, so an edge reaches a z grid height exactly when its native height (t or sqrt F)
reaches that height mapped back to the native scale: permutations are scored on native maps
against native cuts (no per-edge special function), with the z grid heights in the terms.
``tfnbs_height="t"`` scores t (sqrt F) itself, the ``tfnbs`` package's definition.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from msimaging.errors import InputError
from msimaging.fmri.nbs._constants import _GRID_RTOL
from msimaging.fmri.nbs.components import _edge_component_sizes, _upper_indices
from msimaging.fmri.nbs.glm import _design_product, _Model, _stat_at, _statistics, _supra


def _heights(model: _Model, product: np.ndarray, directions: tuple[int, ...]) -> np.ndarray:
    """Heights (n_directions, B, E): ``sign * t`` for t tests, ``sqrt(F)`` for F tests.

    ``sqrt(F)`` puts F maps on the scale of ``|t|`` (F = t^2 for one contrast row), so the
    start threshold and the height exponent mean the same for both statistics.
    """
    stats = _statistics(model, product)
    if model.r > 1:
        return np.sqrt(np.maximum(stats, 0.0))[None]
    return np.stack([sign * stats for sign in directions])


def _log_betainc(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """log of the regularised incomplete beta ``I_x(a, b)``, finite far into the tail.

    Where ``betainc`` underflows (extreme t or F at large df) the exact series form
    ``I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) 2F1(a + b, 1; a + 1; x)`` (DLMF 8.17.8) is
    taken in logs.
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = np.log(special.betainc(a, b, x))
    tiny = out < -700.0  # within a few decades of underflow (exp(-745) is the last double)
    if tiny.any():
        xt = x[tiny]
        with np.errstate(divide="ignore"):
            out[tiny] = (a * np.log(xt) + b * np.log1p(-xt) - math.log(a) - special.betaln(a, b)
                         + np.log(special.hyp2f1(a + b, 1.0, a + 1.0, xt)))
    return out


def _z_from_native(values: np.ndarray, model: _Model) -> np.ndarray:
    """z heights ``norm.isf(p)`` of native heights: ``p = t.sf(t, df)`` (signed t, so the
    negative direction is ``-t``), or ``p = f.sf(s**2, r, df)`` for ``s = sqrt(F)``.

    Computed from logs (``ndtri_exp``), so extreme statistics keep finite, ordered z.
    """
    values = np.asarray(values, dtype=np.float64)
    df = model.df
    if model.r == 1:
        size = np.abs(values)
        log_p = math.log(0.5) + _log_betainc(df / 2.0, 0.5, df / (df + size * size))
        return -np.sign(values) * special.ndtri_exp(log_p)
    f_values = np.maximum(values, 0.0) ** 2
    log_p = _log_betainc(df / 2.0, model.r / 2.0, df / (df + model.r * f_values))
    return -special.ndtri_exp(log_p)  # F = 0: p = 1, z = -inf (below every grid height)


def _ordered_keys(values: np.ndarray) -> np.ndarray:
    """int64 keys in the order of the doubles (adjacent doubles have adjacent keys)."""
    bits = np.asarray(values, dtype=np.float64).view(np.int64)
    return np.where(bits >= 0, bits, -(bits & np.int64(0x7FFFFFFFFFFFFFFF)))


def _from_keys(keys: np.ndarray) -> np.ndarray:
    bits = np.where(keys >= 0, keys, (-keys) | np.int64(-0x8000000000000000))
    return bits.astype(np.int64).view(np.float64)


def _native_cuts(levels: np.ndarray, native_top: float, model: _Model) -> np.ndarray:
    """Smallest native heights whose z reaches each z level (at most ``native_top``, the
    native height of the grid's top, which is set exactly).

    Bisection over the doubles themselves (64 halvings of their ordered bit patterns) with
    the z function of the observed map, so "native >= cut" and "z >= level" agree exactly.
    """
    levels = np.asarray(levels, dtype=np.float64)
    hi = np.full(len(levels), _ordered_keys(np.array([float(native_top)]))[0])
    low = -float(native_top) if model.r == 1 else 0.0
    lo = np.full(len(levels), _ordered_keys(np.array([low]))[0])
    for _ in range(66):  # invariant: z(hi) >= level (or hi = top); z(lo) < level
        mid = (lo & hi) + ((lo ^ hi) >> 1)  # floor((lo + hi) / 2) without overflow
        moving = mid != lo  # hi - lo > 1
        if not moving.any():
            break
        reach = _z_from_native(_from_keys(mid), model) >= levels
        hi = np.where(moving & reach, mid, hi)
        lo = np.where(moving & ~reach, mid, lo)
    cuts = _from_keys(hi)
    if len(cuts):
        cuts[-1] = float(native_top)
    return cuts


def _grid(start: float, h_max: float, n_steps: int) -> tuple[np.ndarray, float]:
    """Heights ``start + dh, ..., h_max`` (n_steps of them) and the step ``dh``.

    Empty when no height exceeds the start threshold (every score is then 0).
    """
    if not h_max > start:
        return np.zeros(0), 0.0
    dh = (h_max - start) / n_steps
    return np.linspace(start + dh, h_max, n_steps), float(dh)


def _cuts(grid: np.ndarray) -> np.ndarray:
    """Grid heights lowered by a relative 1e-10: heights that equal a grid height up to
    rounding reach it (the grid's top is the largest height itself, and a permutation that
    reproduces that map, a mirror image or relabelled visits, computes it with other
    rounding)."""
    return grid - _GRID_RTOL * np.maximum(np.abs(grid), 1.0)


def _tfnbs_scores(
    heights: np.ndarray,
    grid: np.ndarray,
    dh: float,
    extent_exponent: float,
    height_exponent: float,
    n_nodes: int,
    levels: np.ndarray | None = None,
) -> np.ndarray:
    """TFNBS scores (B, E) of a block of height maps (B, E) on a fixed grid.

    ``levels``: the grid in the units of ``heights`` when they differ from the grid's (native
    heights scored on a z grid: :func:`_native_cuts`); by default the grid itself.
    """
    n_block, n_edges = heights.shape
    scores = np.zeros(n_block * n_edges)
    if len(grid):
        cut = _cuts(grid if levels is None else levels)
        flat = heights.ravel()
        edges = np.flatnonzero(flat >= cut[0])
        scores[edges] = _scored_edges(edges, flat[edges], n_block, n_edges, grid, dh,
                                      extent_exponent, height_exponent, n_nodes, cut)
    return scores.reshape(n_block, n_edges)


def _scored_edges(
    edges: np.ndarray,
    values: np.ndarray,
    n_block: int,
    n_edges: int,
    grid: np.ndarray,
    dh: float,
    extent_exponent: float,
    height_exponent: float,
    n_nodes: int,
    cut: np.ndarray,
) -> np.ndarray:
    """Scores of the given entries of a block of maps.

    ``edges`` are the sorted flat indices ``b * n_edges + e`` of every entry whose height
    (``values``) reaches the first grid height; all other entries score 0. ``cut``: the grid
    heights in the units of ``values``, lowered by :func:`_cuts` (an entry reaches grid
    height k when ``value >= cut[k]``); the terms use the grid itself.

    One connected-components call per grid height over the whole block (the B graphs as
    one block-diagonal graph); only edges still active go on to the next, higher, height.
    An edge alone in its component stays alone at every higher height (the graphs are
    nested), so its remaining terms are added at once from cumulative sums and it leaves
    the loop: above the first few heights almost every active edge of a null map is such a
    single edge.
    """
    iu = _upper_indices(n_nodes)
    term = grid**height_exponent * dh  # an extent of 1 contributes h^H dh at each height
    cumulative = np.concatenate([[0.0], np.cumsum(term)])
    b_idx, e_idx = np.divmod(edges, n_edges)
    rows = b_idx * n_nodes + iu[0][e_idx]
    cols = b_idx * n_nodes + iu[1][e_idx]
    n_total = n_block * n_nodes
    scores = np.zeros(len(edges))
    active = np.arange(len(edges))  # positions into edges, still sorted
    for k in range(len(grid)):
        if k:
            active = active[values[active] >= cut[k]]
        if not len(active):
            break
        sizes = _edge_component_sizes(rows[active], cols[active], n_total)
        scores[active] += sizes**extent_exponent * term[k]
        single = sizes == 1.0
        if single.any():
            done = active[single]
            top = np.searchsorted(cut, values[done], side="right")  # heights <= the edge's
            scores[done] += cumulative[top] - cumulative[k + 1]
            active = active[~single]
    return scores


def _block_product(w: np.ndarray, model: _Model, perms: np.ndarray | None,
                   signs: np.ndarray | None) -> np.ndarray:
    design = _design_product(model, perms, signs, w.dtype)
    n_block = design.shape[0] // model.q.shape[1]
    return (design @ w).reshape(n_block, model.q.shape[1], w.shape[1])


def _monotone(model: _Model) -> bool:
    """Whether t is a monotone function of the tested part of the product alone (no
    nuisance direction moved by the permutations), so that maps are thresholded on the
    product and t is formed only where needed."""
    return model.r == 1 and model.n_variable_nuisance == 0


def _max_height_block(
    w: np.ndarray,
    model: _Model,
    perms: np.ndarray | None,
    signs: np.ndarray | None,
    directions: tuple[int, ...],
) -> np.ndarray:
    """Largest height of each permutation of a block (over the tested directions), (B, 1)."""
    product = _block_product(w, model, perms, signs)
    n_block = product.shape[0]
    if _monotone(model):
        rows = np.arange(n_block)
        tested = product[:, 0, :]
        tops = [
            _stat_at(model, product, rows,
                     (np.argmax if sign > 0 else np.argmin)(tested, axis=1), sign)
            for sign in directions
        ]
        return np.max(tops, axis=0)[:, None]
    stats = _statistics(model, product)
    if model.r > 1:
        return np.sqrt(np.maximum(stats.max(axis=1), 0.0))[:, None]
    return np.max([(sign * stats).max(axis=1) for sign in directions], axis=0)[:, None]


def _tfnbs_null_block(
    w: np.ndarray,
    model: _Model,
    perms: np.ndarray | None,
    signs: np.ndarray | None,
    directions: tuple[int, ...],
    grid: np.ndarray,
    dh: float,
    extent_exponent: float,
    height_exponent: float,
    n_nodes: int,
    cuts: np.ndarray,
) -> np.ndarray:
    """Largest TFNBS score per permutation and direction, shape (B, n_directions).

    ``cuts``: the grid in native heights (t or sqrt F), lowered by :func:`_cuts`; maps are
    compared with it in native units, so no per-edge z is formed.
    """
    product = _block_product(w, model, perms, signs)
    n_block, n_edges = product.shape[0], product.shape[2]
    out = np.zeros((n_block, len(directions)))
    if not len(grid):
        return out
    cut = float(cuts[0])
    # Both directions are scored together, as 2B maps (one connected-components call per
    # grid height for the whole block): direction d of permutation b is map d * B + b.
    parts, heights = [], []
    for d, sign in enumerate(directions):
        # Entries reaching the first grid height; heights (t or sqrt F) formed there only.
        b_idx, e_idx, values = _supra(model, product, cut if model.r == 1 else cut**2, sign)
        if values is None:
            values = _stat_at(model, product, b_idx, e_idx, sign)
        values = values.astype(np.float64)
        parts.append((d * n_block + b_idx.astype(np.int64)) * n_edges + e_idx)
        heights.append(np.sqrt(values) if model.r > 1 else values)
    edges = np.concatenate(parts)
    if not len(edges):
        return out
    scores = _scored_edges(edges, np.concatenate(heights), n_block * len(directions), n_edges,
                           grid, dh, extent_exponent, height_exponent, n_nodes, cuts)
    owner = edges // n_edges
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    d_idx, b_idx = np.divmod(owner[starts], n_block)
    out[b_idx, d_idx] = np.maximum.reduceat(scores, starts)
    return out


def _start_height(threshold: float | None, threshold_p: float | None, model: _Model,
                  default: float, height: str = "z") -> tuple[float, float]:
    """Start of the grid in height units (z, or t / sqrt F for ``height="t"``) and its
    uncorrected one-sided p.

    ``threshold`` is a statistic (t, or F for F tests) whatever the height scale;
    ``default`` is in height units (1.65: p = 0.05 one-sided on the z scale, at every df).
    """
    from scipy import stats

    if threshold is not None and threshold_p is not None:
        raise InputError("give threshold (a statistic) or threshold_p (a p-value), not both.")
    if threshold_p is not None:
        if not (isinstance(threshold_p, int | float) and 0.0 < float(threshold_p) < 1.0):
            raise InputError(f"threshold_p={threshold_p!r} must be a p-value in (0, 1).")
        if height == "z":
            return float(stats.norm.isf(threshold_p)), float(threshold_p)
        if model.r == 1:
            return float(stats.t.isf(threshold_p, model.df)), float(threshold_p)
        return math.sqrt(float(stats.f.isf(threshold_p, model.r, model.df))), float(threshold_p)
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
                or not math.isfinite(threshold) or threshold < 0:
            raise InputError(
                f"threshold={threshold!r}: with method='tfnbs' the threshold is where the "
                "integration starts; give a finite statistic value >= 0 (t, or F for F tests)."
            )
        native = float(threshold) if model.r == 1 else math.sqrt(float(threshold))
        start = float(_z_from_native(np.array([native]), model)[0]) if height == "z" \
            else native
    elif height == "z":
        return default, float(stats.norm.sf(default))
    else:
        start = default
    if model.r == 1:
        return start, float(stats.t.sf(float(threshold) if threshold is not None else start,
                                       model.df))
    f_value = float(threshold) if threshold is not None else start**2
    return start, float(stats.f.sf(f_value, model.r, model.df))
