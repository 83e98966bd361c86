"""The engine of the Network-Based Statistic: observed statistics, the permutation null
distribution of the largest component, and component p-values."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from msimaging.errors import DesignError, InputError, MSImagingWarning
from msimaging.fmri.nbs._constants import (
    _BLOCK_OVERHEAD_BYTES,
    _INTENSITY_RTOL,
    METHODS,
    SIZE_MEASURES,
    TAILS,
)
from msimaging.fmri.nbs.components import _null_block, _observed_components
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
from msimaging.fmri.nbs.results import NBSComponent, NBSResult, _node_column


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
    networks: Any = None,
) -> NBSResult:
    n = y.shape[0]
    method = _check_option(method, "method", METHODS)
    if method != "nbs":  # TFNBS and constrained NBS: being implemented (issue 16)
        raise InputError(f"method={method!r} is not available yet; use method='nbs'.")
    size = _check_option(size, "size", SIZE_MEASURES)
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
    thr, thr_p = _threshold(threshold, threshold_p, model)
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
    found = []
    for sign in directions:
        for comp in _observed_components(stat, thr, sign, intensity, n_nodes):
            found.append((sign, *comp))
    smallest_p = _smallest_p(model, plan, directions, y.shape[0], rng)

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
    if smallest_p >= 0.05:
        warnings.warn(
            f"with this design only {plan.space} {plan.kind}s exist and the smallest "
            f"attainable p is {smallest_p:.3g}: no component can reach p < 0.05 "
            f"(tail={tail!r}). More observations are needed for a significant result.",
            MSImagingWarning,
            stacklevel=3,
        )
    matrix = np.zeros((n_nodes, n_nodes))
    iu = np.triu_indices(n_nodes, k=1)
    matrix[iu] = stat
    matrix.T[iu] = stat
    return NBSResult(
        components=components,
        statistic=model.statistic,
        statistic_matrix=matrix,
        df=(model.df,) if model.r == 1 else (float(model.r), model.df),
        threshold=thr,
        threshold_p=thr_p,
        size_measure=size,
        tail=tail,
        null_distribution=null,
        null_by_direction=null_by_direction,
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
        parameters={"n_permutations_requested": int(n_permutations), "n_jobs": n_jobs,
                    "memory_mb": float(memory_mb)},
    )


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
    n_edges = w.shape[1]
    rows = model.q.shape[1]
    workers = 1
    if n_jobs != 1:
        from joblib import effective_n_jobs

        workers = max(1, int(effective_n_jobs(n_jobs)))
    per_permutation = n_edges * (4 * rows + _BLOCK_OVERHEAD_BYTES)
    block = max(1, int(memory_mb * 2**20 / workers // per_permutation))
    block = min(block, max(1, math.ceil(plan.count / workers)))
    bounds = [(s, min(s + block, plan.count)) for s in range(0, plan.count, block)]
    args = (model, directions, threshold, intensity, n_nodes)
    if workers == 1:
        if progress:  # a bar over the permutation blocks, on stderr
            from tqdm import tqdm

            bounds = tqdm(bounds, desc=f"NBS permutations ({plan.count:,})", unit="block",
                          leave=False)
        parts = [_null_block(w, model, *plan.take(s, e), *args[1:]) for s, e in bounds]
    else:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=workers)(
            delayed(_null_block)(w, model, *plan.take(s, e), *args[1:]) for s, e in bounds
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
    iu = np.triu_indices(n_nodes, k=1)
    labels = _node_column(table, "label", n_nodes)
    networks = _node_column(table, "network", n_nodes)
    has_labels = table is not None and "label" in table.columns
    has_networks = table is not None and "network" in table.columns
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
    out = []
    for index, (p, _, sign, nodes, edge_idx, values, size) in enumerate(staged):
        edges = np.column_stack([iu[0][edge_idx], iu[1][edge_idx]])
        degree = np.bincount(edges.ravel(), minlength=n_nodes)[nodes]
        pairs = None
        if has_networks:
            pairs = dict(
                Counter(
                    tuple(sorted((str(networks[i]), str(networks[j])))) for i, j in edges
                )
            )
        out.append(
            NBSComponent(
                index=index,
                direction=names[sign],
                nodes=nodes,
                edges=edges,
                statistics=values.copy(),
                size=float(size),
                p_value=float(p),
                degree=degree,
                node_labels=tuple(str(labels[i]) for i in nodes) if has_labels else None,
                network_pairs=pairs,
            )
        )
    return tuple(out)
