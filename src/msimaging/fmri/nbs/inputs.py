"""Validation of the inputs of the Network-Based Statistic: edge data, design, contrast, labels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

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


def _edge_data(
    matrices: Any,
    name: str,
    *,
    nodes: pd.DataFrame | None = None,
    min_observations: int = 3,
) -> tuple[np.ndarray, int, pd.DataFrame | None]:
    """Upper-triangle edge values (n_observations, n_edges) float64, n_nodes, node table."""
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
    return y, n_nodes, table


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
