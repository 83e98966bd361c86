"""The engine of the Network-Based Statistic: observed statistics, the permutation null
distribution of the largest component, and component p-values."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from msimaging.errors import DesignError, InputError, MSImagingWarning
from msimaging.fmri.nbs._constants import (
    _BLOCK_OVERHEAD_BYTES,
    _INTENSITY_RTOL,
    _REPORT_ALPHA,
    _SCORE_RTOL,
    _TFNBS_START,
    _TFNBS_STEPS,
    METHODS,
    SIZE_MEASURES,
    TAILS,
    TFNBS_HEIGHTS,
)
from msimaging.fmri.nbs.components import (
    _null_block,
    _observed_components,
    _upper_indices,
)
from msimaging.fmri.nbs.constrained import (
    _averaging_matrix,
    _blocks,
    _constrained_null_block,
    _network_labels,
    _standardised_max_fwer,
)
from msimaging.fmri.nbs.glm import (
    _constant_within_blocks,
    _design_product,
    _Model,
    _model,
    _statistics,
    _threshold,
)
from msimaging.fmri.nbs.inputs import _check_option
from msimaging.fmri.nbs.permutations import _Plan, _plan
from msimaging.fmri.nbs.results import NBSComponent, NBSResult
from msimaging.fmri.nbs.threshold_free import (
    _cuts,
    _grid,
    _heights,
    _max_height_block,
    _native_cuts,
    _start_height,
    _tfnbs_null_block,
    _tfnbs_scores,
    _z_from_native,
)


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------
def _run(
    y: np.ndarray,
    n_nodes: int,
    table: pd.DataFrame | None,
    x: np.ndarray,
    columns: tuple[str, ...],
    c: np.ndarray,
    *,
    threshold: float | None = None,
    threshold_p: float | None = None,
    n_permutations: int = 5000,
    size: str = "extent",
    tail: str = "right",
    exact: bool | None = None,
    exchange_blocks: Any = None,
    sign_flips: bool | None = None,
    seed: int | None = None,
    n_jobs: int = 1,
    memory_mb: float = 256.0,
    progress: bool = False,
    method: str = "nbs",
    extent_exponent: float = 0.5,
    height_exponent: float = 2.0,
    tfnbs_height: str = "z",
    networks: Any = None,
) -> NBSResult:
    n = y.shape[0]
    method = _check_option(method, "method", METHODS)
    tfnbs_height = _check_option(tfnbs_height, "tfnbs_height", TFNBS_HEIGHTS)
    size = _check_option(size, "size", SIZE_MEASURES)
    if method != "nbs" and size != "extent":
        raise InputError(f"size={size!r} applies to method='nbs' only; leave size unset "
                         f"with method={method!r}.")
    for name, value in (("extent_exponent", extent_exponent),
                        ("height_exponent", height_exponent)):
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or value < 0:
            raise InputError(f"{name}={value!r} must be a finite number >= 0 (TFNBS "
                             "exponents; defaults 0.5 for extent, 2.0 for height).")
    if networks is not None and method != "constrained":
        raise InputError(f"networks= applies to method='constrained' only (method={method!r}).")
    tail = _check_option(tail, "tail", TAILS)
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int | np.integer) \
            or n_permutations < 1:
        raise InputError(f"n_permutations={n_permutations!r} must be a positive integer.")
    if not isinstance(memory_mb, int | float) or memory_mb <= 0:
        raise InputError(f"memory_mb={memory_mb!r} must be a positive number of megabytes.")
    blocks = None
    if exchange_blocks is not None:
        blocks = np.asarray(exchange_blocks, dtype=object).ravel()
        if len(blocks) != n:
            raise DesignError(
                f"exchange_blocks has {len(blocks)} entries for {n} observations; give the "
                "block (e.g. subject) of every observation."
            )
        blocks = np.asarray([str(b) for b in blocks])
    if c.shape[0] > 1 and tail != "right":
        raise InputError(f"tail={tail!r}: an F test (contrast with several rows) has only "
                         "tail='right'.")
    tested = x @ np.linalg.pinv(c)
    flips = _constant_within_blocks(tested, blocks) if sign_flips is None else bool(sign_flips)
    model = _model(x, c, blocks, flips)
    ones_fit = x @ np.linalg.lstsq(x, np.ones(n), rcond=None)[0]
    if np.linalg.norm(np.ones(n) - ones_fit) > 1e-8 * math.sqrt(n):
        warnings.warn(
            "design does not include an intercept (nor columns summing to one): the "
            "permutation test assumes the model explains each edge's mean; add a column of "
            "ones.",
            MSImagingWarning,
            stacklevel=3,
        )
    if method == "nbs":
        thr, thr_p = _threshold(threshold, threshold_p, model)
    elif method == "tfnbs":
        thr, thr_p = _start_height(threshold, threshold_p, model, _TFNBS_START, tfnbs_height)
    else:
        if threshold is not None or threshold_p is not None:
            raise InputError("method='constrained' has no threshold (every edge of a "
                             "network pair counts); leave threshold and threshold_p unset.")
        thr, thr_p = math.nan, math.nan
        labels = _network_labels(networks, table, n_nodes)
    rng = np.random.default_rng(seed)
    if exact not in (None, True, False):
        raise InputError(f"exact={exact!r} must be None (automatic), True or False.")
    plan = _plan(x, blocks, flips, int(n_permutations), rng, exact)
    if model.r == 1:
        directions = {"right": (1,), "left": (-1,), "both": (1, -1)}[tail]
        names = {1: "positive", -1: "negative"}
    else:
        directions = (1,)
        names = {1: "F"}
    intensity = size == "intensity"

    # Freedman–Lane: residuals of the nuisance-only model, normalised per edge.
    w = y - model.q_nuisance @ (model.q_nuisance.T @ y)
    norms = np.sqrt(np.einsum("nE,nE->E", w, w))
    scale = np.abs(y).max(axis=0) * math.sqrt(n)
    constant = norms <= 1e-10 * np.maximum(scale, 1e-300)
    norms[constant] = 1.0
    w /= norms
    w[:, constant] = 0.0

    observed_product = (model.q.T @ w)[None]  # identity permutation, float64
    stat = _statistics(model, observed_product)[0]
    stat[constant] = 0.0
    smallest_p = _smallest_p(model, plan, directions, y.shape[0], rng)
    common = dict(
        statistic=model.statistic,
        statistic_matrix=_symmetric(stat, n_nodes),
        df=(model.df,) if model.r == 1 else (float(model.r), model.df),
        threshold=thr,
        threshold_p=thr_p,
        tail=tail,
        n_permutations=plan.count,
        permutation_space=plan.space,
        exact=plan.exact,
        smallest_p=smallest_p,
        resampling=plan.kind,
        design=x,
        contrast=c,
        design_columns=columns,
        exchange_blocks=blocks,
        n_observations=n,
        n_nodes=n_nodes,
        nodes=table,
        seed=seed,
        method=method,
    )
    parameters = {"n_permutations_requested": int(n_permutations), "n_jobs": n_jobs,
                  "memory_mb": float(memory_mb)}
    if smallest_p >= 0.05:
        warnings.warn(
            f"with this design only {plan.space} {plan.kind}s exist and the smallest "
            f"attainable p is {smallest_p:.3g}: no "
            f"{'component' if method == 'nbs' else 'edge or block'} can reach p < 0.05 "
            f"(tail={tail!r}). More observations are needed for a significant result.",
            MSImagingWarning,
            stacklevel=3,
        )
    if method == "tfnbs":
        stat_obs = stat.copy()
        return _run_tfnbs(
            w, model, plan, directions, names, observed_product, constant, stat_obs, thr,
            float(extent_exponent), float(height_exponent), tfnbs_height, table, n_nodes,
            n_jobs, memory_mb, progress, common, parameters,
        )
    if method == "constrained":
        return _run_constrained(
            w, model, plan, directions, names, observed_product, constant, stat, labels,
            table, n_nodes, n_jobs, memory_mb, progress, common, parameters,
        )
    found = []
    for sign in directions:
        for comp in _observed_components(stat, thr, sign, intensity, n_nodes):
            found.append((sign, *comp))

    null_by_direction: dict[str, np.ndarray] = {names[s]: np.zeros(0) for s in directions}
    null = np.zeros(0)
    if found:
        w32 = np.ascontiguousarray(w, dtype=np.float32)
        null_dirs = _null_distribution(
            w32, model, plan, directions, thr, intensity, n_nodes, n_jobs, memory_mb,
            progress,
        )
        if plan.exact:  # permutation 0 is the identity: the observed statistic itself
            for d, sign in enumerate(directions):
                sizes = [comp[4] for comp in found if comp[0] == sign]
                null_dirs[0, d] = max(sizes, default=0.0)
        null = null_dirs.max(axis=1)
        null_by_direction = {names[s]: null_dirs[:, d] for d, s in enumerate(directions)}
    components = _components(found, null, plan, thr, intensity, table, n_nodes, names)
    return NBSResult(
        components=components,
        size_measure=size,
        null_distribution=null,
        null_by_direction=null_by_direction,
        parameters=parameters,
        **common,
    )


def _symmetric(values: np.ndarray, n_nodes: int, diagonal: float = 0.0) -> np.ndarray:
    matrix = np.full((n_nodes, n_nodes), diagonal)
    iu = _upper_indices(n_nodes)
    matrix[iu] = values
    matrix.T[iu] = values
    return matrix


def _smallest_p(
    model: _Model, plan: _Plan, directions: tuple[int, ...], n: int, rng: np.random.Generator
) -> float:
    """Fraction of the permutations that reproduce the observed statistic map.

    Tested on random probe data: a permutation that gives the identity's statistics (or
    their mirror image, for two-sided tests) on generic data does so on any data.
    """
    probe_rng = np.random.default_rng(rng.integers(2**63))
    probe = probe_rng.standard_normal((n, 8))
    probe -= model.q_nuisance @ (model.q_nuisance.T @ probe)
    probe /= np.linalg.norm(probe, axis=0)
    reference = _statistics(model, (model.q.T @ probe)[None])[0]
    same = 0
    step = 4096
    for start in range(0, plan.count, step):
        perms, signs = plan.take(start, start + step)
        design = _design_product(model, perms, signs, np.float64)
        k = design.shape[0] // model.q.shape[1]
        stats = _statistics(model, (design @ probe).reshape(k, model.q.shape[1], -1))
        hit = np.all(np.isclose(stats, reference, rtol=1e-7, atol=1e-9), axis=1)
        if len(directions) == 2:
            hit |= np.all(np.isclose(stats, -reference, rtol=1e-7, atol=1e-9), axis=1)
        same += int(hit.sum())
    if plan.exact:
        return same / plan.count
    return (1 + same) / (1 + plan.count)


def _null_distribution(
    w: np.ndarray,
    model: _Model,
    plan: _Plan,
    directions: tuple[int, ...],
    threshold: float,
    intensity: bool,
    n_nodes: int,
    n_jobs: int,
    memory_mb: float,
    progress: bool = False,
) -> np.ndarray:
    per_permutation = w.shape[1] * (4 * model.q.shape[1] + _BLOCK_OVERHEAD_BYTES)
    return _map_blocks(
        _null_block, w, model, plan, (directions, threshold, intensity, n_nodes),
        per_permutation, n_jobs, memory_mb, progress, "NBS permutations",
    )


def _map_blocks(
    worker: Callable[..., np.ndarray],
    w: np.ndarray,
    model: _Model,
    plan: _Plan,
    args: tuple[Any, ...],
    per_permutation_bytes: float,
    n_jobs: int,
    memory_mb: float,
    progress: bool,
    description: str,
) -> np.ndarray:
    """``worker(w, model, perms, signs, *args)`` over blocks of the plan, rows concatenated.

    The block size follows the memory budget shared by the workers; blocks run in parallel
    with joblib when ``n_jobs != 1``.
    """
    workers = 1
    if n_jobs != 1:
        from joblib import effective_n_jobs

        workers = max(1, int(effective_n_jobs(n_jobs)))
    block = max(1, int(memory_mb * 2**20 / workers // per_permutation_bytes))
    block = min(block, max(1, math.ceil(plan.count / workers)))
    bounds = [(s, min(s + block, plan.count)) for s in range(0, plan.count, block)]
    if workers == 1:
        if progress:  # a bar over the permutation blocks, on stderr
            from tqdm import tqdm

            bounds = tqdm(bounds, desc=f"{description} ({plan.count:,})", unit="block",
                          leave=False)
        parts = [worker(w, model, *plan.take(s, e), *args) for s, e in bounds]
    else:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=workers)(
            delayed(worker)(w, model, *plan.take(s, e), *args) for s, e in bounds
        )
    return np.concatenate(parts, axis=0)


def _components(
    found: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, float]],
    null: np.ndarray,
    plan: _Plan,
    threshold: float,
    intensity: bool,
    table: pd.DataFrame | None,
    n_nodes: int,
    names: dict[int, str],
) -> tuple[NBSComponent, ...]:
    staged = []
    for sign, nodes, edge_idx, values, size in found:
        if intensity:
            tol = _INTENSITY_RTOL * (size + len(edge_idx) * threshold)
            count = int(np.sum(null >= size - tol))
        else:
            count = int(np.sum(null >= size))
        p = count / len(null) if plan.exact else (1 + count) / (1 + len(null))
        staged.append((p, -size, sign, nodes, edge_idx, values, size))
    staged.sort(key=lambda item: (item[0], item[1], -item[2]))
    return tuple(
        _component(index, names[sign], nodes, edge_idx, values, size, p, table, n_nodes)
        for index, (p, _, sign, nodes, edge_idx, values, size) in enumerate(staged)
    )


def _component(
    index: int,
    direction: str,
    nodes: np.ndarray,
    edge_idx: np.ndarray,
    values: np.ndarray,
    size: float,
    p: float,
    table: pd.DataFrame | None,
    n_nodes: int,
) -> NBSComponent:
    iu = _upper_indices(n_nodes)
    edges = np.column_stack([iu[0][edge_idx], iu[1][edge_idx]])
    degree = np.bincount(edges.ravel(), minlength=n_nodes)[nodes]
    pairs = None
    if table is not None and "network" in table.columns:
        names, codes = np.unique([str(v) for v in table["network"]], return_inverse=True)
        a, b = codes.ravel()[edges[:, 0]], codes.ravel()[edges[:, 1]]
        keys = np.minimum(a, b) * len(names) + np.maximum(a, b)
        unique, first, counts = np.unique(keys, return_index=True, return_counts=True)
        order = np.argsort(first, kind="stable")  # first appearance, as a Counter
        pairs = {
            (str(names[unique[k] // len(names)]), str(names[unique[k] % len(names)])):
            int(counts[k]) for k in order
        }
    labels = None
    if table is not None and "label" in table.columns:
        column = list(table["label"])
        labels = tuple(str(column[i]) for i in nodes)
    return NBSComponent(
        index=index,
        direction=direction,
        nodes=nodes,
        edges=edges,
        statistics=values.copy(),
        size=float(size),
        p_value=float(p),
        degree=degree,
        node_labels=labels,
        network_pairs=pairs,
    )


def _edge_set_components(edge_idx: np.ndarray, n_nodes: int) -> list[np.ndarray]:
    """Edge indices of each connected component of the graph made of the given edges."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(edge_idx):
        return []
    iu = _upper_indices(n_nodes)
    rows, cols = iu[0][edge_idx], iu[1][edge_idx]
    graph = csr_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n_nodes, n_nodes))
    _, labels = connected_components(graph, directed=False)
    comp = labels[rows]
    order = np.argsort(comp, kind="stable")
    cuts = np.flatnonzero(np.diff(comp[order])) + 1
    return np.split(edge_idx[order], cuts)


def _p_from_null(null: np.ndarray, observed: np.ndarray, exact: bool) -> np.ndarray:
    """FWER p of each observed value against the null of maxima (>= with a relative
    tolerance, so that permutations reproducing the observed map count)."""
    ordered = np.sort(null)
    count = len(null) - np.searchsorted(ordered, observed - _SCORE_RTOL * np.abs(observed),
                                        side="left")
    return count / len(null) if exact else (1 + count) / (1 + len(null))


def _reported(p: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Which entries become components: p < 0.05, or (when none) those with the smallest p
    (unless it is 1).

    The fallback shows the best attainable evidence (e.g. the 1/2^n floor of a small paired
    design) instead of an empty result.
    """
    chosen = eligible & (p < _REPORT_ALPHA)
    if not chosen.any() and eligible.any() and p[eligible].min() < 1.0:
        chosen = eligible & (p <= p[eligible].min() * (1 + 1e-12))
    return chosen


_HEIGHT_DEFINITIONS = {
    ("z", True): "z = norm.isf(t.sf(t, df)) (-t for the negative direction)",
    ("z", False): "z = norm.isf(f.sf(F, df1, df2))",
    ("t", True): "t (-t for the negative direction)",
    ("t", False): "sqrt(F)",
}


def _run_tfnbs(
    w: np.ndarray,
    model: _Model,
    plan: _Plan,
    directions: tuple[int, ...],
    names: dict[int, str],
    observed_product: np.ndarray,
    constant: np.ndarray,
    stat: np.ndarray,
    start: float,
    extent_exponent: float,
    height_exponent: float,
    height: str,
    table: pd.DataFrame | None,
    n_nodes: int,
    n_jobs: int,
    memory_mb: float,
    progress: bool,
    common: dict[str, Any],
    parameters: dict[str, Any],
) -> NBSResult:
    n_edges = w.shape[1]
    rows = model.q.shape[1]
    # Native heights (sign * t, or sqrt F); on the z scale every comparison with the grid is
    # made in native units against the grid mapped back (the transform is monotone, one df).
    native = _heights(model, observed_product, directions)[:, 0, :]  # (n_dirs, E)
    native[:, constant] = 0.0
    to_height = (lambda v: _z_from_native(v, model)) if height == "z" else (lambda v: v)
    scores = np.zeros_like(native)
    null_dirs = np.zeros((0, len(directions)))
    native_max = float(native.max(initial=0.0))
    grid, dh = np.zeros(0), 0.0
    h_max = float(to_height(np.array([native_max]))[0])
    if h_max > start:
        # Pass 1: the grid's top is the largest height of every map (observed and
        # permuted), so that one grid, hence one statistic, serves every permutation.
        per_permutation = n_edges * (8 * rows + 8 * len(directions) + 16)
        tops = _map_blocks(_max_height_block, w, model, plan, (directions,), per_permutation,
                           n_jobs, memory_mb, False, "TFNBS grid")
        native_max = max(native_max, float(tops.max()))
        h_max = float(to_height(np.array([native_max]))[0])
        grid, dh = _grid(start, h_max, _TFNBS_STEPS)
        levels = _native_cuts(grid, native_max, model) if height == "z" else grid
        scores = np.stack([
            _tfnbs_scores(h[None], grid, dh, extent_exponent, height_exponent, n_nodes,
                          levels=levels)[0]
            for h in native
        ])
        # Pass 2: the largest score of every permutation.
        # product (float64), a mask and the entries above the grid's start per direction
        per_permutation = n_edges * (8 * rows + 8 * len(directions) + 16)
        null_dirs = _map_blocks(
            _tfnbs_null_block, w, model, plan,
            (directions, grid, dh, extent_exponent, height_exponent, n_nodes, _cuts(levels)),
            per_permutation, n_jobs, memory_mb, progress, "TFNBS permutations",
        )
        if plan.exact:  # permutation 0 is the identity: the observed map itself
            null_dirs[0] = scores.max(axis=1)
    null = null_dirs.max(axis=1)
    best = scores.argmax(axis=0)  # an edge scores in one direction only (start >= 0)
    edge_scores = scores[best, np.arange(n_edges)]
    signs = np.asarray(directions)[best]
    p = _p_from_null(null, edge_scores, plan.exact) if len(null) else np.ones(n_edges)
    chosen = _reported(p, edge_scores > 0)
    staged = []
    for d, sign in enumerate(directions):
        for edge_idx in _edge_set_components(np.flatnonzero(chosen & (best == d)), n_nodes):
            iu = _upper_indices(n_nodes)
            nodes = np.unique(np.r_[iu[0][edge_idx], iu[1][edge_idx]])
            size = float(edge_scores[edge_idx].max())
            staged.append((float(p[edge_idx].min()), -size, -sign, sign, nodes, edge_idx))
    staged.sort(key=lambda item: item[:3])
    components = tuple(
        _component(index, names[sign], nodes, edge_idx, stat[edge_idx], -neg_size, p_comp,
                   table, n_nodes)
        for index, (p_comp, neg_size, _, sign, nodes, edge_idx) in enumerate(staged)
    )
    parameters = dict(
        parameters,
        tfnbs_height=height,
        height_definition=_HEIGHT_DEFINITIONS[height, model.r == 1],
        start_height=float(start),
        n_steps=_TFNBS_STEPS,
        dh=float(dh),
        h_max=float(h_max),
        native_h_max=native_max,
        extent_exponent=extent_exponent,
        height_exponent=height_exponent,
        report_alpha=_REPORT_ALPHA,
    )
    return NBSResult(
        components=components,
        size_measure="tfnbs",
        null_distribution=null,
        null_by_direction={names[s]: null_dirs[:, d] for d, s in enumerate(directions)},
        parameters=parameters,
        edge_score_matrix=_symmetric(signs * edge_scores, n_nodes),
        edge_p_matrix=_symmetric(p, n_nodes, diagonal=1.0),
        **common,
    )


def _run_constrained(
    w: np.ndarray,
    model: _Model,
    plan: _Plan,
    directions: tuple[int, ...],
    names: dict[int, str],
    observed_product: np.ndarray,
    constant: np.ndarray,
    stat: np.ndarray,
    labels: np.ndarray,
    table: pd.DataFrame | None,
    n_nodes: int,
    n_jobs: int,
    memory_mb: float,
    progress: bool,
    common: dict[str, Any],
    parameters: dict[str, Any],
) -> NBSResult:
    n_edges = w.shape[1]
    rows = model.q.shape[1]
    block, pairs = _blocks(labels, n_nodes)
    n_blocks = len(pairs)
    averaging = _averaging_matrix(block, n_blocks)
    means = np.asarray(averaging.T @ stat)  # (n_blocks,) mean t or mean F per network pair
    observed = np.concatenate([sign * means for sign in directions])
    per_permutation = n_edges * (8 * rows + 24) + 16 * len(observed)
    null = _map_blocks(_constrained_null_block, w, model, plan, (directions, averaging),
                       per_permutation, n_jobs, memory_mb, progress, "cNBS permutations")
    if plan.exact:  # permutation 0 is the identity
        null[0] = observed
    fwer, uncorrected, max_null = _standardised_max_fwer(null, observed, plan.exact, _SCORE_RTOL)
    n_edges_block = np.bincount(block, minlength=n_blocks)
    frame = pd.DataFrame({
        "network_a": [a for _ in directions for a, _ in pairs],
        "network_b": [b for _ in directions for _, b in pairs],
        "direction": [names[s] for s in directions for _ in pairs],
        "n_edges": np.tile(n_edges_block, len(directions)),
        "statistic": np.tile(means, len(directions)),
        "p_uncorrected": uncorrected,
        "p_value": fwer,
    })
    order = np.lexsort((-observed, fwer))
    chosen = _reported(fwer, np.ones(len(fwer), bool))
    components = []
    for k in order[chosen[order]]:
        d, b = divmod(int(k), n_blocks)
        edge_idx = np.flatnonzero(block == b)
        iu = _upper_indices(n_nodes)
        nodes = np.unique(np.r_[iu[0][edge_idx], iu[1][edge_idx]])
        comp = _component(len(components), names[directions[d]], nodes, edge_idx,
                          stat[edge_idx], observed[k], fwer[k], table, n_nodes)
        # the block's own network pair (networks may come from the argument, not the table)
        components.append(dataclasses.replace(comp, network_pairs={pairs[b]: len(edge_idx)}))
    edge_p = fwer.reshape(len(directions), n_blocks).min(axis=0)[block]
    parameters = dict(parameters, block_statistic="mean t" if model.r == 1 else "mean F",
                      fwer="largest block statistic standardised by its permutation mean and SD",
                      n_blocks=n_blocks, report_alpha=_REPORT_ALPHA)
    null_block = null.reshape(len(null), len(directions), n_blocks)
    return NBSResult(
        components=tuple(components),
        size_measure="block mean",
        null_distribution=max_null,
        null_by_direction={names[s]: null_block[:, d].max(axis=1)
                           for d, s in enumerate(directions)},
        parameters=parameters,
        edge_score_matrix=_symmetric(means[block], n_nodes),
        edge_p_matrix=_symmetric(edge_p, n_nodes, diagonal=1.0),
        network_table=frame.iloc[order].reset_index(drop=True),
        **common,
    )
