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
"""

from __future__ import annotations

import math

import numpy as np

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
) -> np.ndarray:
    """TFNBS scores (B, E) of a block of height maps (B, E) on a fixed grid."""
    n_block, n_edges = heights.shape
    scores = np.zeros(n_block * n_edges)
    if len(grid):
        flat = heights.ravel()
        edges = np.flatnonzero(flat >= _cuts(grid)[0])
        scores[edges] = _scored_edges(edges, flat[edges], n_block, n_edges, grid, dh,
                                      extent_exponent, height_exponent, n_nodes)
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
) -> np.ndarray:
    """Scores of the given entries of a block of maps.

    ``edges`` are the sorted flat indices ``b * n_edges + e`` of every entry whose height
    (``values``) reaches the first grid height; all other entries score 0.

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
    cut = _cuts(grid)
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
) -> np.ndarray:
    """Largest TFNBS score per permutation and direction, shape (B, n_directions)."""
    product = _block_product(w, model, perms, signs)
    n_block, n_edges = product.shape[0], product.shape[2]
    out = np.zeros((n_block, len(directions)))
    if not len(grid):
        return out
    cut = float(_cuts(grid)[0])
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
                           grid, dh, extent_exponent, height_exponent, n_nodes)
    owner = edges // n_edges
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    d_idx, b_idx = np.divmod(owner[starts], n_block)
    out[b_idx, d_idx] = np.maximum.reduceat(scores, starts)
    return out


def _start_height(threshold: float | None, threshold_p: float | None, model: _Model,
                  default: float) -> tuple[float, float]:
    """Start of the grid in height units (t or sqrt F) and its uncorrected one-sided p."""
    from scipy import stats

    if threshold is not None and threshold_p is not None:
        raise InputError("give threshold (a statistic) or threshold_p (a p-value), not both.")
    if threshold_p is not None:
        if not (isinstance(threshold_p, int | float) and 0.0 < float(threshold_p) < 1.0):
            raise InputError(f"threshold_p={threshold_p!r} must be a p-value in (0, 1).")
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
        start = float(threshold) if model.r == 1 else math.sqrt(float(threshold))
    else:
        start = default
    if model.r == 1:
        return start, float(stats.t.sf(start, model.df))
    return start, float(stats.f.sf(start**2, model.r, model.df))
