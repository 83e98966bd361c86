"""Public entry points of the Network-Based Statistic: :func:`nbs` (any GLM design) and the
usual designs (one-sample, paired, two-sample, repeated measures)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from msimaging.errors import DesignError, InputError
from msimaging.fmri.nbs.engine import _run
from msimaging.fmri.nbs.inputs import (
    _check_observations,
    _contrast_matrix,
    _design_matrix,
    _edge_data,
    _labels,
    _n_columns,
    _natural_key,
)
from msimaging.fmri.nbs.results import NBSResult


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------
def nbs(
    matrices: Any,
    design: Any,
    contrast: Any,
    threshold: float | None = None,
    *,
    threshold_p: float | None = None,
    n_permutations: int = 5000,
    size: str = "extent",
    tail: str = "right",
    exact: bool | None = None,
    exchange_blocks: Sequence[Any] | np.ndarray | None = None,
    covariates: Any = None,
    sign_flips: bool | None = None,
    nodes: pd.DataFrame | None = None,
    seed: int | None = None,
    n_jobs: int = 1,
    memory_mb: float = 256.0,
    progress: bool = False,
    method: str = "nbs",
    extent_exponent: float = 0.5,
    height_exponent: float = 2.0,
    networks: Any = None,
) -> NBSResult:
    """Network-Based Statistic of a general linear model over a stack of connectivity matrices.

    Parameters
    ----------
    matrices : array (n_observations, n_nodes, n_nodes) or sequence
        Symmetric connectivity matrices, one per observation: a 3-D array, a sequence of 2-D
        arrays, or a sequence of objects with a ``matrix`` attribute and optionally a
        ``nodes`` table (e.g. :class:`msimaging.fmri.Connectome`). Only the upper triangle
        (without the diagonal) is used; it must be finite.
    design : array (n_observations, n_regressors) or pandas.DataFrame
        Design matrix, full column rank. Include an intercept (or group indicators that sum
        to one): permutation tests assume the model explains the mean.
    contrast : array (n_regressors,) or (n_rows, n_regressors)
        A vector (or one row) gives a t test of ``contrast @ beta``; several rows an F test
        of ``contrast @ beta = 0``. Covariates get zero weights automatically.
    threshold : float, optional
        Statistic threshold (t or F); edges strictly above it are supra-threshold. A t
        threshold of 3.1 at small df is liberal: a warning gives its uncorrected p.
    threshold_p : float, optional
        Uncorrected one-sided p per edge instead of ``threshold``, converted with the
        model's df (``scipy.stats.t.isf`` / ``f.isf``). Default (neither given): 0.001.
    n_permutations : int
        Random permutations; when the whole permutation space is not larger, it is
        enumerated instead (exact p-values).
    exact : bool, optional
        None (default): enumerate when the space is no larger than ``n_permutations``.
        False: always draw ``n_permutations`` at random (as MATLAB NBS and bctpy do).
        True: always enumerate (an error above 1,000,000 permutations).
    size : {"extent", "intensity"}
        Component size: number of edges, or sum of (statistic − threshold).
    tail : {"right", "left", "both"}
        Positive contrast, negative contrast, or both as separate analyses with a common
        (two-sided) FWER. F tests: "right" only.
    exchange_blocks : sequence, optional
        Block label of each observation: permutations stay within blocks (sign flips flip
        whole blocks).
    covariates : array (n_observations,) or (n_observations, n_covariates), optional
        Nuisance regressors appended to the design (Freedman–Lane).
    sign_flips : bool, optional
        Force sign flips (True) or permutations (False). By default sign flips are used when
        the tested regressors are constant within every exchange block (one-sample and
        paired-difference designs), where permutations could not change the statistic.
    nodes : pandas.DataFrame, optional
        Node table (one row per node: ``label``, ``network``, ``hemisphere``, ``x_mm``,
        ``y_mm``, ``z_mm``); taken from the matrices' ``nodes`` when not given.
    seed : int, optional
        Seed of the random permutations.
    n_jobs : int
        Parallel workers (joblib) for the permutation blocks; -1: all cores.
    memory_mb : float
        Memory budget (MB) of the permutation blocks, shared by the workers.
    progress : bool
        Show a progress bar (tqdm, stderr) over the permutation blocks (one worker).

    Returns
    -------
    NBSResult

    Raises
    ------
    InputError
        Non-symmetric or non-finite matrices, fewer than 3 observations, bad argument values.
    DesignError
        Design of the wrong shape or rank deficient, contrast of the wrong length, no
        degrees of freedom left, invalid exchange blocks.
    """
    y, n_nodes, table = _edge_data(matrices, "matrices", nodes=nodes)
    x, columns = _design_matrix(design, y.shape[0], covariates)
    c = _contrast_matrix(contrast, x.shape[1], n_covariates=x.shape[1] - _n_columns(design))
    return _run(
        y,
        n_nodes,
        table,
        x,
        columns,
        c,
        threshold=threshold,
        threshold_p=threshold_p,
        n_permutations=n_permutations,
        size=size,
        tail=tail,
        exact=exact,
        exchange_blocks=exchange_blocks,
        sign_flips=sign_flips,
        seed=seed,
        n_jobs=n_jobs,
        memory_mb=memory_mb,
        progress=progress,
        method=method,
        extent_exponent=extent_exponent,
        height_exponent=height_exponent,
        networks=networks,
    )


def nbs_one_sample(
    matrices: Any,
    threshold: float | None = None,
    *,
    covariates: Any = None,
    threshold_p: float | None = None,
    n_permutations: int = 5000,
    size: str = "extent",
    tail: str = "right",
    exact: bool | None = None,
    exchange_blocks: Sequence[Any] | np.ndarray | None = None,
    sign_flips: bool | None = None,
    nodes: pd.DataFrame | None = None,
    seed: int | None = None,
    n_jobs: int = 1,
    memory_mb: float = 256.0,
    progress: bool = False,
    method: str = "nbs",
    extent_exponent: float = 0.5,
    height_exponent: float = 2.0,
    networks: Any = None,
) -> NBSResult:
    """NBS of the mean edge value against zero, by sign flips (``tail="right"``: mean > 0).

    Parameters
    ----------
    matrices : array (n_observations, n_nodes, n_nodes) or sequence
        As in :func:`nbs` (e.g. per-subject differences of two conditions).
    threshold : float, optional
        Statistic threshold; see :func:`nbs` (``threshold_p`` also accepted).
    covariates : array, optional
        Nuisance regressors (Freedman–Lane, sign flips of the nuisance residuals).
    threshold_p, n_permutations, size, tail, exact, exchange_blocks, sign_flips : optional
        Keyword-only options, as in :func:`nbs`.
    nodes, seed, n_jobs, memory_mb, progress : optional
        Keyword-only options, as in :func:`nbs`.

    Returns
    -------
    NBSResult
    """
    y, n_nodes, table = _edge_data(matrices, "matrices", nodes=nodes)
    x, columns = _design_matrix(
        pd.DataFrame({"mean": np.ones(y.shape[0])}), y.shape[0], covariates
    )
    c = np.zeros((1, x.shape[1]))
    c[0, 0] = 1.0
    return _run(
        y, n_nodes, table, x, columns, c,
        threshold=threshold, threshold_p=threshold_p, n_permutations=n_permutations, size=size,
        tail=tail, exact=exact, exchange_blocks=exchange_blocks, sign_flips=sign_flips, seed=seed,
        n_jobs=n_jobs, memory_mb=memory_mb, progress=progress,
        method=method, extent_exponent=extent_exponent, height_exponent=height_exponent,
        networks=networks,
    )


def nbs_paired(
    pre: Any,
    post: Any,
    threshold: float | None = None,
    *,
    covariates: Any = None,
    threshold_p: float | None = None,
    n_permutations: int = 5000,
    size: str = "extent",
    tail: str = "right",
    exact: bool | None = None,
    exchange_blocks: Sequence[Any] | np.ndarray | None = None,
    sign_flips: bool | None = None,
    nodes: pd.DataFrame | None = None,
    seed: int | None = None,
    n_jobs: int = 1,
    memory_mb: float = 256.0,
    progress: bool = False,
    method: str = "nbs",
    extent_exponent: float = 0.5,
    height_exponent: float = 2.0,
    networks: Any = None,
) -> NBSResult:
    """Paired NBS of ``post - pre`` by sign flips of the subjects' differences.

    ``tail="right"`` tests post > pre (an increase), ``"left"`` post < pre. The t statistic
    is the paired t (one-sample t of the differences), as bctpy's
    ``nbs_bct(post, pre, paired=True)``. With n subjects there are 2^n sign flips, so
    the smallest p is 1/2^n one-sided and 2/2^n two-sided (n = 5: 0.031 and 0.0625).

    Parameters
    ----------
    pre, post : array (n_subjects, n_nodes, n_nodes) or sequence
        The two visits of the same subjects, in the same order.
    threshold : float, optional
        Statistic threshold; see :func:`nbs` (``threshold_p`` also accepted).
    covariates : array (n_subjects, ...), optional
        Nuisance regressors of the differences (Freedman–Lane).
    threshold_p, n_permutations, size, tail, exact, exchange_blocks, sign_flips : optional
        Keyword-only options, as in :func:`nbs`.
    nodes, seed, n_jobs, memory_mb, progress : optional
        Keyword-only options, as in :func:`nbs`.

    Returns
    -------
    NBSResult
    """
    y_pre, n_pre, table = _edge_data(pre, "pre", nodes=nodes)
    y_post, n_post, table_post = _edge_data(post, "post", nodes=nodes)
    if y_pre.shape != y_post.shape:
        raise InputError(
            f"pre and post must have the same shape: pre has {y_pre.shape[0]} subjects x "
            f"{n_pre} nodes, post has {y_post.shape[0]} subjects x {n_post} nodes; pass the "
            "same subjects, in the same order, with the same nodes."
        )
    y = y_post - y_pre
    x, columns = _design_matrix(
        pd.DataFrame({"post-pre": np.ones(y.shape[0])}), y.shape[0], covariates
    )
    c = np.zeros((1, x.shape[1]))
    c[0, 0] = 1.0
    return _run(
        y, n_pre, table if table is not None else table_post, x, columns, c,
        threshold=threshold, threshold_p=threshold_p, n_permutations=n_permutations, size=size,
        tail=tail, exact=exact, exchange_blocks=exchange_blocks, sign_flips=sign_flips, seed=seed,
        n_jobs=n_jobs, memory_mb=memory_mb, progress=progress,
        method=method, extent_exponent=extent_exponent, height_exponent=height_exponent,
        networks=networks,
    )


def nbs_two_sample(
    a: Any,
    b: Any,
    threshold: float | None = None,
    *,
    covariates: Any = None,
    threshold_p: float | None = None,
    n_permutations: int = 5000,
    size: str = "extent",
    tail: str = "right",
    exact: bool | None = None,
    exchange_blocks: Sequence[Any] | np.ndarray | None = None,
    sign_flips: bool | None = None,
    nodes: pd.DataFrame | None = None,
    seed: int | None = None,
    n_jobs: int = 1,
    memory_mb: float = 256.0,
    progress: bool = False,
    method: str = "nbs",
    extent_exponent: float = 0.5,
    height_exponent: float = 2.0,
    networks: Any = None,
) -> NBSResult:
    """Two-sample NBS (pooled-variance t) by permutation of the group labels.

    ``tail="right"`` tests a > b, as bctpy's ``nbs_bct(a, b, tail="right")``. The design
    has one indicator column per group and the contrast ``[1, -1]``. With ``n_a + n_b``
    observations there are ``(n_a + n_b) choose n_a`` distinct relabellings, enumerated
    when no more than ``n_permutations``.

    Parameters
    ----------
    a, b : array (n_observations, n_nodes, n_nodes) or sequence
        The two groups.
    threshold : float, optional
        Statistic threshold; see :func:`nbs` (``threshold_p`` also accepted).
    covariates : array (n_a + n_b, ...), optional
        Nuisance regressors, rows of ``a`` first then ``b`` (Freedman–Lane).
    threshold_p, n_permutations, size, tail, exact, exchange_blocks, sign_flips : optional
        Keyword-only options, as in :func:`nbs`.
    nodes, seed, n_jobs, memory_mb, progress : optional
        Keyword-only options, as in :func:`nbs`.

    Returns
    -------
    NBSResult
    """
    y_a, n_a_nodes, table = _edge_data(a, "a", nodes=nodes, min_observations=1)
    y_b, n_b_nodes, table_b = _edge_data(b, "b", nodes=nodes, min_observations=1)
    if n_a_nodes != n_b_nodes:
        raise InputError(
            f"a and b must have the same nodes: a has {n_a_nodes} nodes, b has {n_b_nodes}."
        )
    y = np.concatenate([y_a, y_b])
    _check_observations(y.shape[0], "a and b together")
    group = np.r_[np.ones(len(y_a)), np.zeros(len(y_b))]
    x, columns = _design_matrix(
        pd.DataFrame({"a": group, "b": 1.0 - group}), y.shape[0], covariates
    )
    c = np.zeros((1, x.shape[1]))
    c[0, :2] = [1.0, -1.0]
    return _run(
        y, n_a_nodes, table if table is not None else table_b, x, columns, c,
        threshold=threshold, threshold_p=threshold_p, n_permutations=n_permutations, size=size,
        tail=tail, exact=exact, exchange_blocks=exchange_blocks, sign_flips=sign_flips, seed=seed,
        n_jobs=n_jobs, memory_mb=memory_mb, progress=progress,
        method=method, extent_exponent=extent_exponent, height_exponent=height_exponent,
        networks=networks,
    )


def nbs_repeated_measures(
    matrices: Any,
    subject: Sequence[Any],
    visit: Sequence[Any],
    threshold: float | None = None,
    *,
    covariates: Any = None,
    threshold_p: float | None = None,
    n_permutations: int = 5000,
    size: str = "extent",
    tail: str = "right",
    exact: bool | None = None,
    exchange_blocks: None = None,
    sign_flips: bool | None = None,
    nodes: pd.DataFrame | None = None,
    seed: int | None = None,
    n_jobs: int = 1,
    memory_mb: float = 256.0,
    progress: bool = False,
    method: str = "nbs",
    extent_exponent: float = 0.5,
    height_exponent: float = 2.0,
    networks: Any = None,
) -> NBSResult:
    """Repeated-measures NBS: F test of any difference between >= 3 visits.

    The design has one column per visit and one per subject (but the first); the contrast
    has the k − 1 successive visit differences. Visits are permuted within each subject
    (subjects are exchange blocks): (k!)^n permutations, of which k! reproduce the observed
    F map, so the smallest p is 1/(k!)^(n−1) (n = 5, k = 3: 0.00077).

    Parameters
    ----------
    matrices : array (n_observations, n_nodes, n_nodes) or sequence
        One matrix per subject and visit (any order).
    subject, visit : sequence
        Subject and visit label of each observation. Every subject must have every visit
        exactly once.
    threshold : float, optional
        F threshold; see :func:`nbs` (``threshold_p`` also accepted).
    covariates : array, optional
        Time-varying nuisance regressors (Freedman–Lane).
    threshold_p, n_permutations, size, tail, exact, nodes, seed, n_jobs, memory_mb, progress
        Keyword-only options, as in :func:`nbs` (``tail`` "right" only: F test).
    exchange_blocks, sign_flips : None
        Set by the design (visits are permuted within subjects); passing exchange blocks or
        ``sign_flips=True`` is an error.

    Returns
    -------
    NBSResult
    """
    y, n_nodes, table = _edge_data(matrices, "matrices", nodes=nodes)
    n = y.shape[0]
    subject = _labels(subject, "subject", n)
    visit = _labels(visit, "visit", n)
    subjects = list(dict.fromkeys(subject))
    visits = sorted(set(visit), key=_natural_key)
    if len(visits) < 3:
        raise DesignError(
            f"visit has {len(visits)} distinct value(s) ({', '.join(map(str, visits))}); "
            "nbs_repeated_measures needs at least 3 visits. For 2 visits use nbs_paired, "
            "which also gives the direction of the change."
        )
    counts = Counter(zip(subject, visit, strict=True))
    for sub in subjects:
        for vis in visits:
            if counts[(sub, vis)] != 1:
                raise DesignError(
                    f"subject {sub!r} has {counts[(sub, vis)]} observation(s) at visit "
                    f"{vis!r}; nbs_repeated_measures needs every subject at every visit "
                    "exactly once (drop incomplete subjects)."
                )
    if len(subjects) < 2:
        raise DesignError("subject has one value: the repeated-measures F needs >= 2 subjects.")
    frame = {f"visit[{v}]": np.array([vv == v for vv in visit], float) for v in visits}
    for sub in subjects[1:]:
        frame[f"subject[{sub}]"] = np.array([s == sub for s in subject], float)
    x, columns = _design_matrix(pd.DataFrame(frame), n, covariates)
    k = len(visits)
    c = np.zeros((k - 1, x.shape[1]))
    for row in range(k - 1):
        c[row, row] = 1.0
        c[row, row + 1] = -1.0
    if exchange_blocks is not None:
        raise InputError(
            "exchange_blocks is set by nbs_repeated_measures (the subjects); do not pass it."
        )
    if sign_flips:
        raise InputError(
            "sign_flips=True does not apply to nbs_repeated_measures: visits are permuted "
            "within subjects; leave sign_flips unset."
        )
    return _run(
        y, n_nodes, table, x, columns, c,
        threshold=threshold, threshold_p=threshold_p, n_permutations=n_permutations, size=size,
        tail=tail, exact=exact, exchange_blocks=np.asarray(subject, dtype=object),
        sign_flips=False, seed=seed, n_jobs=n_jobs, memory_mb=memory_mb, progress=progress,
        method=method, extent_exponent=extent_exponent, height_exponent=height_exponent,
        networks=networks,
    )
