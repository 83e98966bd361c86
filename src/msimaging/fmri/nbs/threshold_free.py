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

import numpy as np

from msimaging.fmri.nbs._constants import _GRID_RTOL
from msimaging.fmri.nbs.components import _edge_component_sizes, _upper_indices
from msimaging.fmri.nbs.glm import _design_product, _Model, _statistics


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
    edges, values = _scored_edges(heights, grid, dh, extent_exponent, height_exponent, n_nodes)
    scores[edges] = values
    return scores.reshape(n_block, n_edges)


def _tfnbs_max(
    heights: np.ndarray,
    grid: np.ndarray,
    dh: float,
    extent_exponent: float,
    height_exponent: float,
    n_nodes: int,
) -> np.ndarray:
    """Largest TFNBS score of each map of a block (B,)."""
    n_block, n_edges = heights.shape
    out = np.zeros(n_block)
    edges, values = _scored_edges(heights, grid, dh, extent_exponent, height_exponent, n_nodes)
    if len(edges):
        owner = edges // n_edges
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        out[owner[starts]] = np.maximum.reduceat(values, starts)
    return out


def _scored_edges(
    heights: np.ndarray,
    grid: np.ndarray,
    dh: float,
    extent_exponent: float,
    height_exponent: float,
    n_nodes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (sorted) of the edges above the first grid height, and their scores.

    One connected-components call per grid height over the whole block (the B graphs as
    one block-diagonal graph); only edges still active go on to the next, higher, height.
    An edge alone in its component stays alone at every higher height (the graphs are
    nested), so its remaining terms are added at once from cumulative sums and it leaves
    the loop: above the first few heights almost every active edge of a null map is such a
    single edge.
    """
    n_edges = heights.shape[1]
    flat = heights.ravel()
    if not len(grid):
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    iu = _upper_indices(n_nodes)
    term = grid**height_exponent * dh  # an extent of 1 contributes h^H dh at each height
    cumulative = np.concatenate([[0.0], np.cumsum(term)])
    # Heights within 1e-10 (relative) of a grid height count as reaching it: the grid's top
    # is the largest height itself, and a permutation that reproduces that map (a mirror
    # image, relabelled visits) computes it with different rounding.
    cut = grid - _GRID_RTOL * np.maximum(np.abs(grid), 1.0)
    edges = np.flatnonzero(flat >= cut[0])
    values = flat[edges]
    b_idx, e_idx = np.divmod(edges, n_edges)
    rows = b_idx * n_nodes + iu[0][e_idx]
    cols = b_idx * n_nodes + iu[1][e_idx]
    n_total = heights.shape[0] * n_nodes
    scores = np.zeros(len(edges))
    active = np.arange(len(edges))  # positions into edges, still sorted
    for k in range(len(grid)):
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
    return edges, scores


def _block_product(w: np.ndarray, model: _Model, perms: np.ndarray | None,
                   signs: np.ndarray | None) -> np.ndarray:
    design = _design_product(model, perms, signs, w.dtype)
    n_block = design.shape[0] // model.q.shape[1]
    return (design @ w).reshape(n_block, model.q.shape[1], w.shape[1])


def _max_height_block(
    w: np.ndarray,
    model: _Model,
    perms: np.ndarray | None,
    signs: np.ndarray | None,
    directions: tuple[int, ...],
) -> np.ndarray:
    """Largest height of each permutation of a block (over the tested directions), (B, 1)."""
    heights = _heights(model, _block_product(w, model, perms, signs), directions)
    return heights.max(axis=(0, 2))[:, None]


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
    heights = _heights(model, _block_product(w, model, perms, signs), directions)
    return np.stack(
        [
            _tfnbs_max(h, grid, dh, extent_exponent, height_exponent, n_nodes)
            for h in heights
        ],
        axis=1,
    )


def _start_height(threshold: float | None, threshold_p: float | None, model: _Model,
                  default: float) -> tuple[float, float]:
    """Start of the grid in height units (t or sqrt F) and its uncorrected one-sided p."""
    import math

    from scipy import stats

    from msimaging.errors import InputError

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
