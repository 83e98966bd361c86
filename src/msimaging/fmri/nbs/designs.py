"""Public entry points of the Network-Based Statistic: :func:`nbs` (any GLM design) and the
usual designs (one-sample, paired, two-sample, repeated measures, linear trend over months,
pairwise visit comparisons)."""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from msimaging.errors import DesignError, InputError, MSImagingWarning
from msimaging.fmri.nbs.engine import _run
from msimaging.fmri.nbs.inputs import (
    _check_observations,
    _check_pairing,
    _chronological,
    _contrast_matrix,
    _design_matrix,
    _edge_data,
    _Ids,
    _months_values,
    _n_columns,
    _observation_labels,
    _subject_key,
    _visit_key,
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
    tfnbs_height: str = "z",
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
    method : {"nbs", "tfnbs", "constrained"}
        Inference: components of supra-threshold edges (NBS, default), threshold-free NBS
        (every edge scored by integrating its component's extent over thresholds, FWER per
        edge) or constrained NBS (one mean statistic per pair of networks, FWER over the
        network pairs). See "Methods" in :mod:`msimaging.fmri.nbs`.
    extent_exponent, height_exponent : float
        TFNBS exponents E and H of ``extent^E * height^H`` (defaults 0.5 and 2.0).
    networks : str or sequence, optional
        Constrained NBS: a node-table column or one network label per node (default: the
        node table's ``network`` column).
    tfnbs_height : {"z", "t"}
        TFNBS height scale. ``"z"`` (default): ``z = norm.isf(p)`` of each edge's one-sided p
        (``t.sf(t, df)``, or ``f.sf(F, df1, df2)``), so that at small df one extreme edge of
        the heavy-tailed t no longer outscores a whole component; ``"t"``: the statistic
        itself (t, or sqrt(F)), the ``tfnbs`` package's definition. See "Methods" in
        :mod:`msimaging.fmri.nbs`.

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
    result = _run(
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
        tfnbs_height=tfnbs_height,
        networks=networks,
    )
    result.parameters["design"] = "general linear model"
    return result


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
    tfnbs_height: str = "z",
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
    method, extent_exponent, height_exponent, networks : optional
        Keyword-only options of the engine, as in :func:`nbs`.
    tfnbs_height : {"z", "t"}, optional
        TFNBS height scale, as in :func:`nbs` (default "z": the normal quantile of each
        edge's one-sided p; "t": the statistic itself, as the ``tfnbs`` package).

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
    result = _run(
        y, n_nodes, table, x, columns, c,
        threshold=threshold, threshold_p=threshold_p, n_permutations=n_permutations, size=size,
        tail=tail, exact=exact, exchange_blocks=exchange_blocks, sign_flips=sign_flips, seed=seed,
        n_jobs=n_jobs, memory_mb=memory_mb, progress=progress,
        method=method, extent_exponent=extent_exponent, height_exponent=height_exponent,
        tfnbs_height=tfnbs_height, networks=networks,
    )
    result.parameters["design"] = "one-sample"
    return result


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
    tfnbs_height: str = "z",
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
        The two visits of the same subjects, in the same order. When the items carry
        ``participant_id``/``session_id`` (:class:`~msimaging.fmri.Connectome`), the pairing
        is checked: ``pre[i]`` and ``post[i]`` must be the same participant, each participant
        once, ``pre`` (and ``post``) one session, and the two sessions different (sessions
        encoding the same months, ``ses-M0`` and ``ses-baseline``, are the same).
    threshold : float, optional
        Statistic threshold; see :func:`nbs` (``threshold_p`` also accepted).
    covariates : array (n_subjects, ...), optional
        Nuisance regressors of the differences (Freedman–Lane).
    threshold_p, n_permutations, size, tail, exact, exchange_blocks, sign_flips : optional
        Keyword-only options, as in :func:`nbs`.
    nodes, seed, n_jobs, memory_mb, progress : optional
        Keyword-only options, as in :func:`nbs`.
    method, extent_exponent, height_exponent, networks : optional
        Keyword-only options of the engine, as in :func:`nbs`.
    tfnbs_height : {"z", "t"}, optional
        TFNBS height scale, as in :func:`nbs` (default "z": the normal quantile of each
        edge's one-sided p; "t": the statistic itself, as the ``tfnbs`` package).

    Returns
    -------
    NBSResult
        ``parameters["design"]`` is ``"paired"``.

    Raises
    ------
    DesignError
        Mismatched pairs (different participants at one index, a participant twice, mixed
        or identical sessions), with the offending indices and ids.
    """
    y_pre, n_pre, table, ids_pre = _edge_data(pre, "pre", nodes=nodes, with_ids=True)
    y_post, n_post, table_post, ids_post = _edge_data(post, "post", nodes=nodes, with_ids=True)
    if y_pre.shape != y_post.shape:
        raise InputError(
            f"pre and post must have the same shape: pre has {y_pre.shape[0]} subjects x "
            f"{n_pre} nodes, post has {y_post.shape[0]} subjects x {n_post} nodes; pass the "
            "same subjects, in the same order, with the same nodes."
        )
    _check_pairing(ids_pre, ids_post)
    return _paired(
        y_post - y_pre, n_pre, table if table is not None else table_post, covariates,
        threshold=threshold, threshold_p=threshold_p, n_permutations=n_permutations, size=size,
        tail=tail, exact=exact, exchange_blocks=exchange_blocks, sign_flips=sign_flips, seed=seed,
        n_jobs=n_jobs, memory_mb=memory_mb, progress=progress,
        method=method, extent_exponent=extent_exponent, height_exponent=height_exponent,
        tfnbs_height=tfnbs_height, networks=networks,
    )


def _paired(
    y: np.ndarray, n_nodes: int, table: pd.DataFrame | None, covariates: Any, **options: Any
) -> NBSResult:
    """Paired design on the differences ``y`` (post - pre): sign flips of the subjects."""
    x, columns = _design_matrix(
        pd.DataFrame({"post-pre": np.ones(y.shape[0])}), y.shape[0], covariates
    )
    c = np.zeros((1, x.shape[1]))
    c[0, 0] = 1.0
    result = _run(y, n_nodes, table, x, columns, c, **options)
    result.parameters["design"] = "paired"
    return result


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
    tfnbs_height: str = "z",
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
    method, extent_exponent, height_exponent, networks : optional
        Keyword-only options of the engine, as in :func:`nbs`.
    tfnbs_height : {"z", "t"}, optional
        TFNBS height scale, as in :func:`nbs` (default "z": the normal quantile of each
        edge's one-sided p; "t": the statistic itself, as the ``tfnbs`` package).

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
    result = _run(
        y, n_a_nodes, table if table is not None else table_b, x, columns, c,
        threshold=threshold, threshold_p=threshold_p, n_permutations=n_permutations, size=size,
        tail=tail, exact=exact, exchange_blocks=exchange_blocks, sign_flips=sign_flips, seed=seed,
        n_jobs=n_jobs, memory_mb=memory_mb, progress=progress,
        method=method, extent_exponent=extent_exponent, height_exponent=height_exponent,
        tfnbs_height=tfnbs_height, networks=networks,
    )
    result.parameters["design"] = "two-sample"
    return result


def nbs_repeated_measures(
    matrices: Any,
    subject: Sequence[Any] | None = None,
    visit: Sequence[Any] | None = None,
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
    tfnbs_height: str = "z",
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
    subject, visit : sequence, optional
        Subject and visit label of each observation. Every subject must have every visit
        exactly once. By default the ``participant_id`` and ``session_id`` of the matrices
        (:class:`~msimaging.fmri.Connectome` objects); sessions encoding the same months
        (``ses-M0``, ``ses-baseline``) are the same visit. When given for connectomes, they
        must group the observations as the connectomes' ids do.
    threshold : float, optional
        F threshold; see :func:`nbs` (``threshold_p`` also accepted).
    covariates : array, optional
        Time-varying nuisance regressors (Freedman–Lane).
    threshold_p, n_permutations, size, tail, exact, nodes, seed, n_jobs, memory_mb, progress
        Keyword-only options, as in :func:`nbs` (``tail`` "right" only: F test).
    method, extent_exponent, height_exponent, networks : optional
        Keyword-only options of the engine, as in :func:`nbs`.
    tfnbs_height : {"z", "t"}, optional
        TFNBS height scale, as in :func:`nbs` (default "z": the normal quantile of each
        edge's one-sided p; "t": the statistic itself, as the ``tfnbs`` package).
    exchange_blocks, sign_flips : None
        Set by the design (visits are permuted within subjects); passing exchange blocks or
        ``sign_flips=True`` is an error.

    Returns
    -------
    NBSResult
        ``parameters["design"]`` is ``"repeated-measures F"``.

    Raises
    ------
    DesignError
        Fewer than 3 visits or 2 subjects, a subject missing a visit (or seen twice at one),
        labels missing for plain arrays, or labels that disagree with the connectomes' ids.
    """
    y, n_nodes, table, ids = _edge_data(matrices, "matrices", nodes=nodes, with_ids=True)
    n = y.shape[0]
    subject, visit = _subjects_and_visits(subject, visit, ids)
    subjects = list(dict.fromkeys(subject))
    visits = _chronological(visit)  # the F does not depend on the order; reports do
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
    result = _run(
        y, n_nodes, table, x, columns, c,
        threshold=threshold, threshold_p=threshold_p, n_permutations=n_permutations, size=size,
        tail=tail, exact=exact, exchange_blocks=np.asarray(subject, dtype=object),
        sign_flips=False, seed=seed, n_jobs=n_jobs, memory_mb=memory_mb, progress=progress,
        method=method, extent_exponent=extent_exponent, height_exponent=height_exponent,
        tfnbs_height=tfnbs_height, networks=networks,
    )
    result.parameters.update(design="repeated-measures F", visits=list(visits),
                             subjects=list(subjects))
    return result


def nbs_trend(
    matrices: Any,
    subject: Sequence[Any] | None = None,
    months: Sequence[Any] | None = None,
    threshold: float | None = None,
    *,
    covariates: Any = None,
    threshold_p: float | None = None,
    n_permutations: int = 5000,
    size: str = "extent",
    tail: str = "right",
    exact: bool | None = None,
    nodes: pd.DataFrame | None = None,
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
    """Longitudinal NBS of a within-subject linear trend over months.

    The most powerful test of a steady change: the design has one intercept per subject and
    a ``months`` column, and the t statistic tests its slope (df = n_observations −
    n_subjects − 1). Under the null hypothesis a subject's visits are exchangeable, so the
    months are permuted within each subject (subjects are exchange blocks; Freedman–Lane
    removes the subject intercepts). The permutation space is the product over subjects of
    the distinct arrangements of their months, (3!)^4 = 1,296 for 4 subjects x 3 visits,
    enumerated when no larger than ``n_permutations``: the smallest p is then 1/1,296
    one-sided, against 1/16 for the paired first-vs-last test of the same subjects.
    Subjects may have different numbers of visits and different months.

    Parameters
    ----------
    matrices : array (n_observations, n_nodes, n_nodes) or sequence
        One matrix per subject and visit (any order).
    subject : sequence, optional
        Subject label of each observation; by default the matrices' ``participant_id``
        (:class:`~msimaging.fmri.Connectome`). Subjects with a single observation carry no
        within-subject information: they are dropped with a warning (listed in
        ``parameters["dropped_subjects"]``).
    months : sequence, optional
        Months since baseline of each observation: numbers, or session labels that encode
        them (``ses-M06``, ``ses-Y1``, ``ses-baseline``). By default parsed from the
        matrices' ``session_id``. Actual intervals may differ from the labels (6.4 months
        for ``ses-M06``) but must order each subject's sessions as their labels do.
    threshold : float, optional
        t threshold; see :func:`nbs` (``threshold_p`` also accepted).
    covariates : array (n_observations, ...), optional
        Time-varying nuisance regressors (Freedman–Lane).
    threshold_p, n_permutations, size, exact, nodes, seed, n_jobs, memory_mb, progress
        Keyword-only options, as in :func:`nbs`.
    tail : {"right", "left", "both"}
        ``"right"``: connectivity rising with time; ``"left"``: falling; ``"both"``: either
        (two-sided; when reversing every subject's months mirrors the design, e.g. equally
        spaced visits, the smallest p doubles).
    method, extent_exponent, height_exponent, networks : optional
        Keyword-only options of the engine, as in :func:`nbs`.
    tfnbs_height : {"z", "t"}, optional
        TFNBS height scale, as in :func:`nbs` (default "z": the normal quantile of each
        edge's one-sided p; "t": the statistic itself, as the ``tfnbs`` package).

    Returns
    -------
    NBSResult
        ``parameters["design"]`` is ``"linear trend over months"``; ``parameters["months"]``
        and ``parameters["subjects"]`` record what was fitted.

    Raises
    ------
    DesignError
        Labels or months missing or disagreeing with the connectomes' ids, fewer than two
        distinct months, or months that vary within no subject.
    """
    y, n_nodes, table, ids = _edge_data(matrices, "matrices", nodes=nodes, with_ids=True)
    subject = _observation_labels(
        subject, ids.participant, name="subject", attribute="participant_id",
        matrices="matrices", key=_subject_key,
    )
    t = _months_values(months, ids.session, subject, "matrices")
    counts = Counter(subject)
    dropped = [sub for sub in dict.fromkeys(subject) if counts[sub] < 2]
    if dropped:
        warnings.warn(
            f"nbs_trend: subject(s) {', '.join(map(repr, dropped))} have a single observation, "
            "which carries no information on a within-subject trend; dropped.",
            MSImagingWarning,
            stacklevel=2,
        )
        keep = np.array([counts[sub] >= 2 for sub in subject])
        y, t = y[keep], t[keep]
        subject = [sub for sub, kept in zip(subject, keep, strict=True) if kept]
        if covariates is not None:
            covariates = (covariates.iloc[np.flatnonzero(keep)] if isinstance(
                covariates, pd.DataFrame) else np.asarray(covariates)[keep])
        _check_observations(len(subject), "matrices (subjects with >= 2 observations)")
    subjects = list(dict.fromkeys(subject))
    if len(np.unique(t)) < 2:
        raise DesignError(
            f"months has a single value ({t[0]:g}): a trend needs observations at >= 2 "
            "different times; check months (or the session labels)."
        )
    codes = np.array([subjects.index(sub) for sub in subject])
    spread = np.array([np.ptp(t[codes == k]) for k in range(len(subjects))])
    if not np.any(spread > 0):
        raise DesignError(
            "months do not vary within any subject (every subject was seen at one time "
            "only): a within-subject trend is not estimable; compare groups with "
            "nbs_two_sample instead."
        )
    frame = {"months": t}
    for k, sub in enumerate(subjects):
        frame[f"subject[{sub}]"] = (codes == k).astype(float)
    x, columns = _design_matrix(pd.DataFrame(frame), len(t), covariates)
    c = np.zeros((1, x.shape[1]))
    c[0, 0] = 1.0
    result = _run(
        y, n_nodes, table, x, columns, c,
        threshold=threshold, threshold_p=threshold_p, n_permutations=n_permutations, size=size,
        tail=tail, exact=exact, exchange_blocks=np.asarray(subject, dtype=object),
        sign_flips=False, seed=seed, n_jobs=n_jobs, memory_mb=memory_mb, progress=progress,
        method=method, extent_exponent=extent_exponent, height_exponent=height_exponent,
        tfnbs_height=tfnbs_height, networks=networks,
    )
    result.parameters.update(
        design="linear trend over months", months=t.tolist(), subjects=list(subjects),
        dropped_subjects=list(dropped),
    )
    return result


def nbs_pairwise(
    matrices: Any,
    subject: Sequence[Any] | None = None,
    visit: Sequence[Any] | None = None,
    threshold: float | None = None,
    *,
    threshold_p: float | None = None,
    n_permutations: int = 5000,
    size: str = "extent",
    tail: str = "both",
    exact: bool | None = None,
    nodes: pd.DataFrame | None = None,
    seed: int | None = None,
    n_jobs: int = 1,
    memory_mb: float = 256.0,
    progress: bool = False,
    method: str = "nbs",
    extent_exponent: float = 0.5,
    height_exponent: float = 2.0,
    tfnbs_height: str = "z",
    networks: Any = None,
) -> dict[tuple[Any, Any], NBSResult]:
    """Paired NBS of every pair of visits: the direction of a change found by an F test.

    For each pair of visits ``(a, b)``, ``a`` before ``b``, the paired analysis of
    ``post = b`` against ``pre = a`` (:func:`nbs_paired`) on the subjects seen at both.
    Each result has its own FWER (no correction across pairs) and its own smallest
    attainable p: with n subjects 2/2^n two-sided, so 4 subjects can never give p < 0.05;
    use :func:`nbs_repeated_measures` or :func:`nbs_trend` to find the effect and this
    function to describe it.

    Parameters
    ----------
    matrices : array (n_observations, n_nodes, n_nodes) or sequence
        One matrix per subject and visit (any order).
    subject, visit : sequence, optional
        Subject and visit labels of each observation; by default the matrices'
        ``participant_id`` and ``session_id``, as in :func:`nbs_repeated_measures`.
    threshold : float, optional
        t threshold; see :func:`nbs` (``threshold_p`` also accepted).
    tail : {"both", "right", "left"}
        ``"both"`` (default): increases and decreases as separate components with a
        two-sided FWER; ``"right"``: ``b > a``; ``"left"``: ``b < a``.
    threshold_p, n_permutations, size, exact, nodes, seed, n_jobs, memory_mb, progress
        Keyword-only options, as in :func:`nbs`.
    method, extent_exponent, height_exponent, networks : optional
        Keyword-only options of the engine, as in :func:`nbs`.
    tfnbs_height : {"z", "t"}, optional
        TFNBS height scale, as in :func:`nbs` (default "z": the normal quantile of each
        edge's one-sided p; "t": the statistic itself, as the ``tfnbs`` package).

    Returns
    -------
    dict
        ``{(visit_a, visit_b): NBSResult}`` in chronological order of the visits (by the
        months the labels encode, else by their natural order: ``M2`` before ``M10``).
        ``parameters`` of each result record ``design="paired"``, the ``visits`` and the
        ``subjects``.

    Raises
    ------
    DesignError
        Fewer than 2 visits, a subject seen twice at one visit, a pair of visits with fewer
        than 3 common subjects, or labels disagreeing with the connectomes' ids.
    """
    y, n_nodes, table, ids = _edge_data(matrices, "matrices", nodes=nodes, with_ids=True)
    subject, visit = _subjects_and_visits(subject, visit, ids)
    visits = _chronological(visit)
    if len(visits) < 2:
        raise DesignError(
            f"visit has {len(visits)} distinct value(s); nbs_pairwise needs at least 2 visits."
        )
    row: dict[tuple[Any, Any], int] = {}
    for k, key in enumerate(zip(subject, visit, strict=True)):
        if key in row:
            raise DesignError(
                f"subject {key[0]!r} has two observations at visit {key[1]!r} (matrices"
                f"[{row[key]}] and matrices[{k}]); keep one matrix per subject and visit."
            )
        row[key] = k
    subjects = list(dict.fromkeys(subject))
    out: dict[tuple[Any, Any], NBSResult] = {}
    for a, b in itertools.combinations(visits, 2):
        common = [sub for sub in subjects if (sub, a) in row and (sub, b) in row]
        if len(common) < 3:
            raise DesignError(
                f"visits {a!r} and {b!r} have {len(common)} subject(s) in common; a paired "
                "NBS needs at least 3. Drop the sparse visit from matrices."
            )
        pre = [row[(sub, a)] for sub in common]
        post = [row[(sub, b)] for sub in common]
        result = _paired(
            y[post] - y[pre], n_nodes, table, None,
            threshold=threshold, threshold_p=threshold_p, n_permutations=n_permutations,
            size=size, tail=tail, exact=exact, exchange_blocks=None, sign_flips=None,
            seed=seed, n_jobs=n_jobs, memory_mb=memory_mb, progress=progress,
            method=method, extent_exponent=extent_exponent, height_exponent=height_exponent,
            tfnbs_height=tfnbs_height, networks=networks,
        )
        result.parameters.update(visits=(a, b), subjects=list(common))
        out[(a, b)] = result
    return out


def _subjects_and_visits(
    subject: Sequence[Any] | None, visit: Sequence[Any] | None, ids: _Ids
) -> tuple[list[Any], list[Any]]:
    """Subject and visit labels, given or from the connectomes' ids (checked against them).

    Sessions taken from the ids that encode the same months (``ses-M0``, ``ses-baseline``)
    are one visit, named by its first label.
    """
    subject = _observation_labels(
        subject, ids.participant, name="subject", attribute="participant_id",
        matrices="matrices", key=_subject_key,
    )
    given = visit is not None
    visit = _observation_labels(
        visit, ids.session, name="visit", attribute="session_id", matrices="matrices",
        key=_visit_key,
    )
    if not given:
        first: dict[Any, Any] = {}
        visit = [first.setdefault(_visit_key(v), v) for v in visit]
    return subject, visit
