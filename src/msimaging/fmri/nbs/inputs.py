"""Validation of the inputs of the Network-Based Statistic: edge data, design, contrast, labels."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from msimaging.bids import months_from_label
from msimaging.errors import DesignError, InputError


# --------------------------------------------------------------------------------------------
# Validation of inputs
# --------------------------------------------------------------------------------------------
def _check_observations(n: int, name: str) -> None:
    if n < 3:
        raise InputError(
            f"{name} has {n} observation(s); NBS needs at least 3 (and more for a useful "
            "permutation distribution)."
        )


@dataclass(frozen=True)
class _Ids:
    """``participant_id`` and ``session_id`` carried by each observation (None: unknown)."""

    participant: tuple[str | None, ...]
    session: tuple[str | None, ...]

    @classmethod
    def unknown(cls, n: int) -> _Ids:
        return cls((None,) * n, (None,) * n)

    def take(self, rows: Sequence[int]) -> _Ids:
        return _Ids(tuple(self.participant[i] for i in rows),
                    tuple(self.session[i] for i in rows))


def _edge_data(
    matrices: Any,
    name: str,
    *,
    nodes: pd.DataFrame | None = None,
    min_observations: int = 3,
    with_ids: bool = False,
) -> Any:
    """Upper-triangle edge values (n_observations, n_edges) float64, n_nodes, node table.

    With ``with_ids=True`` a fourth element, :class:`_Ids`, gives the ``participant_id`` and
    ``session_id`` of every item that carries them (e.g. :class:`~msimaging.fmri.Connectome`;
    None for plain arrays), so that designs can check the pairing of observations.
    """
    table = None
    if isinstance(matrices, np.ndarray):
        stack = matrices
        items: Sequence[Any] = []
    else:
        if isinstance(matrices, str | bytes) or not isinstance(matrices, Sequence | tuple):
            try:
                matrices = list(matrices)
            except TypeError as exc:
                raise InputError(
                    f"{name} must be an array (n_observations, n_nodes, n_nodes) or a sequence "
                    f"of matrices or Connectome objects, got {type(matrices).__name__}."
                ) from exc
        items = list(matrices)
        stack = None
    if stack is None:
        arrays = []
        for k, item in enumerate(items):
            value = item.matrix if hasattr(item, "matrix") else item
            if table is None and getattr(item, "nodes", None) is not None:
                table = item.nodes
            try:
                arrays.append(np.asarray(value, dtype=np.float64))
            except (TypeError, ValueError) as exc:
                raise InputError(f"{name}[{k}] cannot be converted to numbers: {exc}.") from exc
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise InputError(
                f"{name} holds matrices of different shapes {sorted(shapes)}; every matrix "
                "must have the same nodes."
            )
        stack = np.stack(arrays) if arrays else np.empty((0, 0, 0))
        _check_node_tables(items, name)
    elif not np.issubdtype(stack.dtype, np.number) or np.iscomplexobj(stack):
        # Real numeric arrays are converted per observation below (no float64 copy of the
        # whole stack: 160 MB for 20 x 1000 x 1000).
        try:
            stack = np.asarray(stack, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} cannot be converted to numbers: {exc}.") from exc
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
        hint = ""
        if stack.ndim == 3 and stack.shape[0] == stack.shape[1]:
            hint = (
                " bctpy-style (n_nodes, n_nodes, n_observations) arrays: pass "
                "np.moveaxis(x, -1, 0)."
            )
        raise InputError(
            f"{name} must be (n_observations, n_nodes, n_nodes) square matrices, got shape "
            f"{stack.shape}.{hint}"
        )
    n, n_nodes, _ = stack.shape
    if min_observations >= 3:
        _check_observations(n, name)
    elif n < min_observations:
        raise InputError(f"{name} is empty: it needs at least {min_observations} matrix.")
    if n_nodes < 2:
        raise InputError(f"{name} has {n_nodes} node(s); NBS needs at least 2.")
    iu = np.triu_indices(n_nodes, k=1)
    y = np.empty((n, len(iu[0])), dtype=np.float64)
    for k in range(n):
        matrix = np.asarray(stack[k], dtype=np.float64)
        upper, lower = matrix[iu], matrix.T[iu]
        bad = ~np.isfinite(upper)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            off_diagonal = np.where(np.eye(n_nodes, dtype=bool), np.nan, matrix)
            rows_all_nan = np.flatnonzero((~np.isfinite(off_diagonal)).all(axis=1))
            extra = (
                f" Nodes {rows_all_nan.tolist()[:10]} have no finite edge (flagged nodes?): "
                "drop them from every matrix (and the node table)."
                if rows_all_nan.size
                else " Impute or drop the affected nodes in every matrix."
            )
            raise InputError(
                f"{name}[{k}] has {int(bad.sum())} non-finite (NaN/inf) edge(s), the first "
                f"between nodes {int(iu[0][first])} and {int(iu[1][first])}; NBS needs a value "
                f"for every edge of every observation.{extra}"
            )
        scale = max(1.0, float(np.abs(upper).max(initial=0.0)))
        asym = np.abs(upper - lower)
        if not np.all(np.isfinite(lower)) or asym.max(initial=0.0) > 1e-6 * scale:
            where = int(np.nanargmax(np.where(np.isfinite(asym), asym, np.inf)))
            raise InputError(
                f"{name}[{k}] is not symmetric: entry ({int(iu[0][where])}, "
                f"{int(iu[1][where])}) differs from its transpose by {asym[where]:.3g}; NBS "
                "needs undirected (symmetric) connectivity, e.g. (m + m.T) / 2."
            )
        y[k] = upper
    if nodes is not None:
        table = nodes
    if table is not None:
        if not isinstance(table, pd.DataFrame):
            raise InputError(f"nodes must be a pandas DataFrame, got {type(table).__name__}.")
        if len(table) != n_nodes:
            raise InputError(
                f"nodes has {len(table)} rows but {name} has {n_nodes} nodes; pass one row "
                "per node, in matrix order."
            )
        table = table.reset_index(drop=True)
    if not with_ids:
        return y, n_nodes, table
    if not items:
        return y, n_nodes, table, _Ids.unknown(n)
    ids = _Ids(
        tuple(_id_or_none(getattr(item, "participant_id", None)) for item in items),
        tuple(_id_or_none(getattr(item, "session_id", None)) for item in items),
    )
    return y, n_nodes, table, ids


def _id_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _check_node_tables(items: Sequence[Any], name: str) -> None:
    reference = None
    for k, item in enumerate(items):
        table = getattr(item, "nodes", None)
        if table is None or not isinstance(table, pd.DataFrame) or "label" not in table:
            continue
        labels = list(table["label"])
        if reference is None:
            reference = labels
        elif labels != reference:
            raise InputError(
                f"{name}[{k}] has a different node table (labels differ from {name}[0]); "
                "every matrix must have the same nodes in the same order."
            )


def _n_columns(design: Any) -> int:
    shape = np.shape(design)
    return 1 if len(shape) <= 1 else int(shape[1])


def _design_matrix(design: Any, n: int, covariates: Any) -> tuple[np.ndarray, tuple[str, ...]]:
    if isinstance(design, pd.DataFrame):
        columns = [str(col) for col in design.columns]
        values = design.to_numpy()
    else:
        values = design
        columns = None
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DesignError(f"design cannot be converted to numbers: {exc}.") from exc
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise DesignError(f"design must be a 2-D (n_observations, n_regressors) array, got "
                          f"shape {np.shape(values)}.")
    if x.shape[0] != n:
        raise DesignError(
            f"design has {x.shape[0]} rows but matrices has {n} observations; pass one design "
            "row per matrix."
        )
    columns = columns or [f"x{j}" for j in range(x.shape[1])]
    if covariates is not None:
        if isinstance(covariates, pd.DataFrame):
            cov_names = [str(col) for col in covariates.columns]
            cov = covariates.to_numpy(dtype=np.float64)
        else:
            try:
                cov = np.asarray(covariates, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DesignError(f"covariates cannot be converted to numbers: {exc}.") from exc
            cov = cov[:, None] if cov.ndim == 1 else cov
            cov_names = [f"covariate{j}" for j in range(cov.shape[1] if cov.ndim == 2 else 0)]
        if cov.ndim != 2 or cov.shape[0] != n:
            raise DesignError(
                f"covariates must have one row per observation ({n}), got shape {cov.shape}."
            )
        if not np.all(np.isfinite(cov)):
            raise DesignError("covariates has non-finite values (NaN/inf); impute or drop them.")
        x = np.hstack([x, cov])
        columns = columns + cov_names
    if not np.all(np.isfinite(x)):
        raise DesignError("design has non-finite values (NaN/inf).")
    rank = np.linalg.matrix_rank(x)
    if rank < x.shape[1]:
        what = "design (with covariates)" if covariates is not None else "design"
        raise DesignError(
            f"{what} is rank deficient: rank {rank} < {x.shape[1]} columns "
            f"({', '.join(columns)}); remove redundant columns (e.g. an intercept next to a "
            "full set of group indicators, or a constant covariate)."
        )
    if x.shape[0] - x.shape[1] < 1:
        raise DesignError(
            f"design has {x.shape[1]} columns for {x.shape[0]} observations: no degrees of "
            "freedom left for the error; use fewer regressors or more observations."
        )
    return x, tuple(columns)


def _contrast_matrix(contrast: Any, n_columns: int, n_covariates: int = 0) -> np.ndarray:
    try:
        c = np.asarray(contrast, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DesignError(f"contrast cannot be converted to numbers: {exc}.") from exc
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2:
        raise DesignError(f"contrast must be a vector or a matrix, got shape {c.shape}.")
    n_design = n_columns - n_covariates
    if c.shape[1] == n_design and n_covariates:
        c = np.hstack([c, np.zeros((c.shape[0], n_covariates))])
    if c.shape[1] != n_columns:
        raise DesignError(
            f"contrast has {c.shape[1]} weights per row but the design has {n_design} "
            f"columns{f' (+{n_covariates} covariates)' if n_covariates else ''}; pass one "
            "weight per design column."
        )
    if not np.all(np.isfinite(c)) or not np.any(c):
        raise DesignError("contrast must be finite and not all zero.")
    if np.linalg.matrix_rank(c) < c.shape[0]:
        raise DesignError(
            f"contrast rows are linearly dependent (rank {np.linalg.matrix_rank(c)} < "
            f"{c.shape[0]} rows); drop redundant rows."
        )
    return c


def _labels(values: Sequence[Any], name: str, n: int) -> list[Any]:
    values = list(np.asarray(values, dtype=object).ravel())
    if len(values) != n:
        raise DesignError(f"{name} has {len(values)} entries for {n} observations.")
    return values


def _natural_key(value: Any) -> tuple[Any, ...]:
    text = str(value)
    digits = "".join(ch for ch in text if ch.isdigit())
    return (int(digits) if digits else math.inf, text)


def _check_option(value: Any, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InputError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}.")
    return str(value)


# --------------------------------------------------------------------------------------------
# Pairing of observations: subjects and visits checked against the connectomes' ids
# --------------------------------------------------------------------------------------------
def _subject_key(value: Any) -> str:
    """Comparable form of a participant label: ``sub-01`` and ``01`` are the same subject."""
    text = str(value).strip()
    return text[4:] if text.startswith("sub-") else text


def _visit_key(value: Any) -> Any:
    """Comparable form of a visit label: its months when it encodes them (``ses-M06``,
    ``ses-6m`` and 6 are the same visit), else the label without ``ses-``."""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    months = months_from_label(text)
    if months is not None:
        return months
    return text[4:] if text.startswith("ses-") else text


def _chronological(labels: Sequence[Any]) -> list[Any]:
    """Distinct labels in time order: by months when every label encodes them, else by the
    natural order of the labels (``M2`` before ``M10``)."""
    distinct = list(dict.fromkeys(labels))
    keys = [_visit_key(v) for v in distinct]
    if all(isinstance(k, float) for k in keys):
        return [v for _, v in sorted(zip(keys, distinct, strict=True), key=lambda kv: kv[0])]
    return sorted(distinct, key=_natural_key)


def _observation_labels(
    given: Sequence[Any] | None,
    carried: tuple[str | None, ...],
    *,
    name: str,
    attribute: str,
    matrices: str,
    key: Callable[[Any], Any],
) -> list[Any]:
    """Labels of the observations: ``given``, checked against the ids the matrices carry,
    or the carried ids when ``given`` is None.

    Given labels may recode the ids (``"A"`` for ``sub-01``) but must group the observations
    as the ids do; a given label that is another observation's id is a swap and an error.
    """
    n = len(carried)
    if given is None:
        missing = [k for k, value in enumerate(carried) if value is None]
        if missing:
            raise DesignError(
                f"{name} was not given and {matrices}[{missing[0]}] carries no {attribute} "
                f"({len(missing)} of {n} observations have none): pass {name}= (one label "
                f"per matrix), or Connectome objects with {attribute} set."
            )
        return list(carried)
    labels = _labels(given, name, n)
    known = {key(value) for value in carried if value is not None}
    forward: dict[Any, tuple[int, str]] = {}
    backward: dict[Any, tuple[int, Any]] = {}
    for k, (label, value) in enumerate(zip(labels, carried, strict=True)):
        if value is None:
            continue
        mine, theirs = key(label), key(value)
        # A given text label equal to another observation's id is a swap; numbers may be
        # visit codes (1, 2, 3 for ses-M0, ses-M1, ses-M2), so only the grouping is checked.
        if mine != theirs and isinstance(label, str) and mine in known:
            raise DesignError(
                f"observation {k}: {name}[{k}] is {label!r} but {matrices}[{k}] is "
                f"{attribute} {value!r}; the labels are not in the order of the matrices. "
                f"Leave {name} unset to use the matrices' own {attribute}, or reorder it."
            )
        if mine in forward and forward[mine][1] != theirs:
            j, other = forward[mine][0], carried[forward[mine][0]]
            raise DesignError(
                f"observation {k}: {name}[{k}] = {label!r} as {name}[{j}], but {matrices}[{k}] "
                f"is {attribute} {value!r} and {matrices}[{j}] is {other!r}; {name} does not "
                f"match the matrices' {attribute}. Leave {name} unset to use them, or fix it."
            )
        if theirs in backward and backward[theirs][1] != mine:
            j, other = backward[theirs]
            raise DesignError(
                f"observation {k}: {matrices}[{k}] and {matrices}[{j}] are both {attribute} "
                f"{value!r} but {name} gives {label!r} and {labels[j]!r}; {name} does not "
                f"match the matrices' {attribute}. Leave {name} unset to use them, or fix it."
            )
        forward.setdefault(mine, (k, theirs))
        backward.setdefault(theirs, (k, mine))
    return labels


def _months_values(
    months: Sequence[Any] | None,
    carried: tuple[str | None, ...],
    subject: Sequence[Any],
    matrices: str,
) -> np.ndarray:
    """Months since baseline of every observation, from ``months`` (numbers or session
    labels) or parsed from the matrices' ``session_id``, checked against those labels."""
    n = len(carried)
    if months is None:
        out = np.empty(n)
        for k, session in enumerate(carried):
            value = None if session is None else months_from_label(session)
            if value is None:
                what = "carries no session_id" if session is None else (
                    f"has session_id {session!r}, which encodes no months (understood: "
                    "ses-M06, ses-6m, ses-Y1, ses-W4, ses-baseline)")
                raise DesignError(
                    f"months was not given and {matrices}[{k}] {what}; pass months= (months "
                    "since baseline of every matrix, e.g. from the sessions' acq_time)."
                )
            out[k] = value
        return out
    values = _labels(months, "months", n)
    out = np.empty(n)
    for k, value in enumerate(values):
        if isinstance(value, str):
            parsed = months_from_label(value)
            if parsed is None:
                raise DesignError(
                    f"months[{k}] = {value!r} is not a number of months nor a session label "
                    "that encodes one (ses-M06, ses-Y1...); pass numbers (months since "
                    "baseline)."
                )
            out[k] = parsed
        else:
            try:
                out[k] = float(value)
            except (TypeError, ValueError) as exc:
                raise DesignError(f"months[{k}] = {value!r} is not a number.") from exc
    if not np.all(np.isfinite(out)):
        k = int(np.flatnonzero(~np.isfinite(out))[0])
        raise DesignError(f"months[{k}] is {out[k]}; months must be finite numbers.")
    # Actual intervals may differ from the nominal label (6.4 months for ses-M06), but a
    # subject's sessions must come in the order their labels say.
    nominal = [None if s is None else months_from_label(s) for s in carried]
    for sub in dict.fromkeys(subject):
        rows = [k for k in range(n) if subject[k] == sub and nominal[k] is not None]
        for a, b in itertools.combinations(rows, 2):
            label_step, given_step = nominal[b] - nominal[a], out[b] - out[a]
            if label_step * given_step < 0 or (label_step == 0) != (given_step == 0):
                raise DesignError(
                    f"observation {b}: months[{b}] = {out[b]:g} and months[{a}] = {out[a]:g} "
                    f"(subject {sub!r}) are not in the order of the sessions {carried[b]!r} "
                    f"and {carried[a]!r} of {matrices}[{b}] and {matrices}[{a}]; months does "
                    "not match the matrices. Leave months unset to use the session labels, "
                    "or fix its order."
                )
    return out


def _check_pairing(pre: _Ids, post: _Ids) -> None:
    """pre[i] and post[i] must be the same subject at two different visits, each subject
    once, each side one visit (checked where the matrices carry their ids)."""
    fix = "pass the same subjects in the same order in pre and post"
    for i, (a, b) in enumerate(zip(pre.participant, post.participant, strict=True)):
        if a is not None and b is not None and _subject_key(a) != _subject_key(b):
            raise DesignError(
                f"pre[{i}] is participant {a!r} but post[{i}] is participant {b!r}: the "
                f"pairs are mismatched; {fix} (e.g. sort both by participant_id)."
            )
    for side, ids in (("pre", pre), ("post", post)):
        seen: dict[str, int] = {}
        for i, value in enumerate(ids.participant):
            if value is None:
                continue
            key = _subject_key(value)
            if key in seen:
                raise DesignError(
                    f"participant {value!r} appears twice in {side} ({side}[{seen[key]}] and "
                    f"{side}[{i}]); each subject must appear once in pre and once in post: "
                    f"{fix}."
                )
            seen[key] = i
        first: tuple[int, str] | None = None
        for i, value in enumerate(ids.session):
            if value is None:
                continue
            if first is None:
                first = (i, value)
            elif _visit_key(value) != _visit_key(first[1]):
                raise DesignError(
                    f"{side} mixes sessions: {side}[{first[0]}] is {first[1]!r} but {side}[{i}] "
                    f"is {value!r}; {side} must hold one visit of every subject. If this is "
                    f"intended (e.g. each subject's last visit), pass plain matrices "
                    f"([c.matrix for c in {side}]) to skip the check."
                )
    for i, (a, b) in enumerate(zip(pre.session, post.session, strict=True)):
        if a is not None and b is not None and _visit_key(a) == _visit_key(b):
            raise DesignError(
                f"pre[{i}] and post[{i}] are the same session ({a!r} and {b!r}): a paired "
                "test compares two different visits; pass the earlier visit as pre and the "
                "later one as post."
            )
