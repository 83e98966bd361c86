"""The general linear model of the Network-Based Statistic: orthonormal bases of the
reparametrised design, edge statistics of a block of permutations, and thresholds."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from msimaging.errors import InputError, MSImagingWarning
from msimaging.fmri.nbs._constants import _RSS_FLOOR, DEFAULT_THRESHOLD_P


# --------------------------------------------------------------------------------------------
# The model: orthonormal bases of the reparametrised design
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Model:
    q: np.ndarray  # (n, r + n_var) columns: tested space, then nuisance that permutations move
    q_nuisance: np.ndarray  # (n, q) whole nuisance space (Freedman–Lane residuals)
    r: int  # rows of the contrast (1: t)
    df: float
    tested: np.ndarray  # X @ pinv(C): the tested regressors before orthogonalisation

    @property
    def statistic(self) -> str:
        return "t" if self.r == 1 else "F"

    @property
    def n_variable_nuisance(self) -> int:
        return self.q.shape[1] - self.r


def _orthonormal(a: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    if a.shape[1] == 0:
        return np.zeros((a.shape[0], 0))
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    return u[:, s > tol * max(1.0, s.max(initial=0.0))]


def _model(x: np.ndarray, c: np.ndarray, blocks: np.ndarray | None, flips: bool) -> _Model:
    """Beckmann partition X -> [X pinv(C), X null(C)] and bases for the permutation engine."""
    n, p = x.shape
    r = c.shape[0]
    tested = x @ np.linalg.pinv(c)  # (n, r)
    vt = np.linalg.svd(c)[2]
    null_c = vt[r:].T  # (p, p - r)
    z = x @ null_c
    q_z = _orthonormal(z)
    resid_tested = tested - q_z @ (q_z.T @ tested)
    # For t the sign matters (positive = contrast > 0); for F any basis of the space will do.
    q_i = resid_tested / np.linalg.norm(resid_tested) if r == 1 else _orthonormal(resid_tested)
    # Nuisance directions that every permutation leaves fixed (block indicators, when they lie
    # in the nuisance space) drop out: the permuted residuals stay orthogonal to them.
    q_var = q_z
    if not flips and q_z.shape[1]:
        block_ind = _block_indicators(blocks, n)
        inside = np.linalg.norm(block_ind - q_z @ (q_z.T @ block_ind)) < 1e-8 * math.sqrt(n)
        if inside:
            q_block = _orthonormal(block_ind)
            q_var = _orthonormal(q_z - q_block @ (q_block.T @ q_z))
    return _Model(
        q=np.hstack([q_i, q_var]), q_nuisance=q_z, r=r, df=float(n - p), tested=tested
    )


def _block_indicators(blocks: np.ndarray | None, n: int) -> np.ndarray:
    if blocks is None:
        return np.ones((n, 1))
    _, codes = np.unique(blocks, return_inverse=True)
    out = np.zeros((n, codes.max() + 1))
    out[np.arange(n), codes] = 1.0
    return out


def _constant_within_blocks(a: np.ndarray, blocks: np.ndarray | None) -> bool:
    codes = np.zeros(len(a), int) if blocks is None else np.unique(blocks, return_inverse=True)[1]
    for code in np.unique(codes):
        part = a[codes == code]
        if not np.allclose(part, part[0], rtol=1e-9, atol=1e-12 * max(1.0, np.abs(a).max())):
            return False
    return True

# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def _design_product(model: _Model, perms: np.ndarray | None, signs: np.ndarray | None,
                    dtype: Any) -> np.ndarray:
    """Stacked (B * n_rows, n) matrix whose product with the data gives Q' P_b W for all b."""
    q = model.q
    if perms is not None:
        stacked = q[perms]  # (B, n, rows): row i of Q moves to position perm[i]
    else:
        assert signs is not None
        stacked = q[None, :, :] * signs[:, :, None]
    b, n, rows = stacked.shape
    return np.ascontiguousarray(stacked.transpose(0, 2, 1).reshape(b * rows, n), dtype=dtype)


def _statistics(model: _Model, product: np.ndarray) -> np.ndarray:
    """Edge statistics (B, E) from the product (B, rows, E) of unit-norm data."""
    r = model.r
    tested = product[:, :r, :]
    ss_tested = np.einsum("brE,brE->bE", tested, tested) if r > 1 else tested[:, 0] ** 2
    rss = 1.0 - ss_tested
    if model.n_variable_nuisance:
        nuisance = product[:, r:, :]
        rss -= np.einsum("brE,brE->bE", nuisance, nuisance)
    rss = np.maximum(rss, _RSS_FLOOR)
    if r == 1:
        return tested[:, 0] * np.sqrt(model.df / rss)
    return (ss_tested / r) / (rss / model.df)


def _supra(
    model: _Model, product: np.ndarray, threshold: float, sign: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Indices (b, e) of supra-threshold edges in a block and their statistics (or None).

    Without nuisance directions moved by the permutations the statistic is a monotone
    function of the tested part alone (rss = 1 - ss_tested), so the threshold applies to the
    product directly and the statistic is formed only at supra-threshold edges.
    """
    r, df = model.r, model.df
    if model.n_variable_nuisance == 0 and r == 1:
        cut = threshold / math.sqrt(df + threshold**2)
        m = product[:, 0, :]
        mask = m > cut if sign > 0 else m < -cut
        b_idx, e_idx = np.divmod(np.flatnonzero(mask), mask.shape[1])
        return b_idx, e_idx, None
    stats = _statistics(model, product)
    if sign < 0:
        stats = -stats
    b_idx, e_idx = np.divmod(np.flatnonzero(stats > threshold), stats.shape[1])
    return b_idx, e_idx, stats[b_idx, e_idx]


def _stat_at(model: _Model, product: np.ndarray, b_idx: np.ndarray, e_idx: np.ndarray,
             sign: int) -> np.ndarray:
    values = product[b_idx, :, e_idx].astype(np.float64)  # (k, rows)
    ss = np.sum(values[:, : model.r] ** 2, axis=1)
    rss = np.maximum(1.0 - np.sum(values**2, axis=1), _RSS_FLOOR)
    if model.r == 1:
        return sign * values[:, 0] * np.sqrt(model.df / rss)
    return (ss / model.r) / (rss / model.df)

# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------
def _threshold(
    threshold: float | None, threshold_p: float | None, model: _Model
) -> tuple[float, float]:
    from scipy import stats

    if threshold is not None and threshold_p is not None:
        raise InputError("give threshold (a statistic) or threshold_p (a p-value), not both.")
    df = model.df
    if threshold is None:
        p = DEFAULT_THRESHOLD_P if threshold_p is None else threshold_p
        if not (isinstance(p, int | float) and 0.0 < float(p) < 1.0):
            raise InputError(f"threshold_p={threshold_p!r} must be a p-value in (0, 1).")
        value = (
            float(stats.t.isf(p, df)) if model.r == 1 else float(stats.f.isf(p, model.r, df))
        )
        return value, float(p)
    if not isinstance(threshold, int | float) or not math.isfinite(threshold) or threshold <= 0:
        raise InputError(
            f"threshold={threshold!r} must be a positive finite statistic value (t or F); "
            "for the negative direction use tail='left' with a positive threshold."
        )
    threshold = float(threshold)
    if model.r == 1:
        p = float(stats.t.sf(threshold, df))
        large = float(stats.norm.sf(threshold))
    else:
        p = float(stats.f.sf(threshold, model.r, df))
        large = float(stats.chi2.sf(threshold * model.r, model.r))
    if p > 2.0 * large:
        name = "t" if model.r == 1 else "F"
        warnings.warn(
            f"threshold={threshold:g} ({name}) at {df:g} degrees of freedom corresponds to an "
            f"uncorrected one-sided p of {p:.2g} per edge (p = {large:.2g} for a large "
            "sample): at small df a statistic threshold is liberal and lets many null edges "
            f"through. Pass threshold_p (e.g. threshold_p={DEFAULT_THRESHOLD_P}) for a "
            "df-aware threshold.",
            MSImagingWarning,
            stacklevel=4,
        )
    return threshold, p
