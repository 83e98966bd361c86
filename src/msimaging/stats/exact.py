"""Exact permutation distributions for small repeated-measures designs.

* Friedman: under the null hypothesis each subject's values are exchangeable across visits, so
  each of the k! orderings of a subject's within-subject ranks is equally likely. The test
  statistic depends only on the visits' rank sums R_j; their exact joint distribution is built
  subject by subject (a convolution over the k! rank permutations of each subject, merging
  equal rank-sum vectors), which stays small where the (k!)^n enumeration would not: n = 5,
  k = 3 has 7,776 orderings but 51 distinct rank-sum vectors. Ties (mid-ranks) are handled
  exactly: the tie correction of Friedman's Q is the same for every permutation, so
  P(Q >= q) = P(sum R_j^2 >= observed).
* Wilcoxon signed-rank: all 2^n sign assignments of the non-zero differences' mid-ranks.

SciPy's ``friedmanchisquare`` uses the chi-square approximation, which SciPy calls unreliable
below n = 10 (5 subjects x 3 visits with identical ranks: exact 0.00077, chi-square 0.0067).
"""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
from scipy import stats

from msimaging.errors import InputError

__all__ = [
    "friedman_exact",
    "holm",
    "kendalls_w",
    "wilcoxon_exact",
]

#: Largest number of distinct rank-sum states kept before switching to Monte Carlo.
MAX_STATES = 2_000_000
#: Largest n for the full 2^n enumeration of the Wilcoxon signed-rank test.
MAX_WILCOXON_N = 22


def _check_matrix(data: np.ndarray, name: str) -> np.ndarray:
    data = np.asarray(data, dtype=float)
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 2:
        raise InputError(
            f"{name} must be a subjects x visits array with at least 2 subjects and 2 visits, "
            f"got shape {data.shape}."
        )
    if not np.all(np.isfinite(data)):
        raise InputError(f"{name} has missing or non-finite values; drop incomplete subjects.")
    return data


def _friedman_q(ranks: np.ndarray) -> tuple[float, float]:
    """Tie-corrected Friedman Q (as SciPy computes it) and the tie correction factor."""
    n, k = ranks.shape
    rank_sums = ranks.sum(axis=0)
    q = 12.0 / (n * k * (k + 1)) * np.sum(rank_sums**2) - 3.0 * n * (k + 1)
    ties = 0.0
    for row in ranks:
        _, counts = np.unique(row, return_counts=True)
        ties += float(np.sum(counts**3 - counts))
    correction = 1.0 - ties / (n * k * (k * k - 1))
    return (float(q / correction) if correction > 0 else 0.0), correction


def friedman_exact(
    data: np.ndarray,
    *,
    n_resamples: int = 20_000,
    seed: int = 0,
    max_states: int = MAX_STATES,
) -> dict[str, float | str | int]:
    """Friedman test with an exact permutation p (or a seeded Monte Carlo one when too large).

    Parameters
    ----------
    data : array (n_subjects, k_visits)
        Complete cases only.
    n_resamples : int
        Monte Carlo permutations when the exact distribution would exceed ``max_states``.
    seed : int
        Seed of the Monte Carlo permutations.

    Returns
    -------
    dict
        ``statistic`` (tie-corrected Q), ``p_value`` (exact or Monte Carlo),
        ``p_chi2`` (the chi-square approximation, k - 1 df), ``method``, ``kendall_w``,
        ``smallest_p`` (the smallest p the design can give), ``n``, ``k``.
    """
    data = _check_matrix(data, "data")
    n, k = data.shape
    ranks = stats.rankdata(data, axis=1)
    q, _ = _friedman_q(ranks)
    twice = np.rint(2 * ranks).astype(np.int64)  # mid-ranks are halves: work in integers
    observed = int(np.sum(twice.sum(axis=0) ** 2))
    p_chi2 = float(stats.chi2.sf(q, k - 1))
    out: dict[str, float | str | int] = {"statistic": q, "p_chi2": p_chi2, "n": n, "k": k,
                                         "kendall_w": kendalls_w(data)}
    dist = _rank_sum_distribution(twice, max_states)
    if dist is not None:
        values, probs = dist
        p = float(probs[values >= observed].sum())
        out.update(
            p_value=min(1.0, p),
            method=f"exact ({math.factorial(k)}^{n} = {math.factorial(k) ** n:,} orderings)",
            smallest_p=float(probs[values >= values.max()].sum()),
        )
        return out
    rng = np.random.default_rng(seed)
    hits = 0
    remaining = n_resamples
    while remaining:
        batch = min(remaining, 5000)
        perm = rng.permuted(np.broadcast_to(twice, (batch, n, k)), axis=2)
        sums = np.sum(perm.sum(axis=1) ** 2, axis=1)
        hits += int(np.count_nonzero(sums >= observed))
        remaining -= batch
    out.update(
        p_value=(hits + 1) / (n_resamples + 1),
        method=f"Monte Carlo ({n_resamples:,} within-subject permutations, seed {seed})",
        smallest_p=1.0 / (n_resamples + 1),
    )
    return out


def _rank_sum_distribution(
    twice: np.ndarray, max_states: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact distribution of sum_j R_j^2 (R in doubled ranks), or None when too large."""
    k = twice.shape[1]
    perms = np.array(list(permutations(range(k))))
    states = np.zeros((1, k), np.int64)
    probs = np.ones(1)
    for row in twice:
        options = row[perms]  # (k!, k): this subject's rank vectors, each with prob 1/k!
        grown = (states[:, None, :] + options[None, :, :]).reshape(-1, k)
        weights = np.repeat(probs / len(perms), len(perms))
        if grown.shape[0] > 4 * max_states:
            return None
        states, inverse = np.unique(grown, axis=0, return_inverse=True)
        probs = np.bincount(inverse.ravel(), weights=weights, minlength=len(states))
        if len(states) > max_states:
            return None
    values = np.sum(states**2, axis=1)
    order = np.argsort(values)
    return values[order], probs[order]


def kendalls_w(data: np.ndarray) -> float:
    """Kendall's coefficient of concordance W (tie-corrected) = Q / (n (k - 1))."""
    data = _check_matrix(data, "data")
    n, k = data.shape
    q, _ = _friedman_q(stats.rankdata(data, axis=1))
    return float(q / (n * (k - 1)))


def wilcoxon_exact(
    before: np.ndarray, after: np.ndarray, *, alternative: str = "two-sided"
) -> dict[str, float | str | int]:
    """Wilcoxon signed-rank test of ``after - before`` with an exact p (all sign flips).

    Zero differences are dropped (Wilcoxon's convention); tied absolute differences get
    mid-ranks, and the exact distribution uses those mid-ranks. ``alternative`` "greater"
    means after > before.

    Returns
    -------
    dict
        ``statistic`` (W+, the sum of positive ranks), ``p_value``, ``n`` (non-zero pairs),
        ``n_zero``, ``method``, ``smallest_p``.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise InputError(
            f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}."
        )
    d = np.asarray(after, float) - np.asarray(before, float)
    if d.ndim != 1 or not np.all(np.isfinite(d)):
        raise InputError("before and after must be 1-D arrays of finite paired values.")
    nonzero = d[d != 0]
    n = nonzero.size
    out: dict[str, float | str | int] = {"n": n, "n_zero": int(d.size - n)}
    if n == 0:
        out.update(statistic=0.0, p_value=1.0, method="no non-zero differences",
                   smallest_p=1.0)
        return out
    ranks = stats.rankdata(np.abs(nonzero))
    twice = np.rint(2 * ranks).astype(np.int64)
    w_plus2 = int(twice[nonzero > 0].sum())
    total2 = int(twice.sum())
    out["statistic"] = w_plus2 / 2.0
    if n <= MAX_WILCOXON_N:
        # Distribution of W+ (doubled) over the 2^n sign assignments, by convolution.
        counts = np.zeros(total2 + 1)
        counts[0] = 1.0
        for r in twice:
            shifted = np.zeros_like(counts)
            shifted[r:] = counts[: counts.size - r]
            counts = (counts + shifted) / 2.0
        upper = float(counts[w_plus2:].sum())   # P(W+ >= observed)
        lower = float(counts[: w_plus2 + 1].sum())  # P(W+ <= observed)
        nonzero_probs = counts[counts > 0]
        extreme = float(nonzero_probs[-1])  # P(W+ = max) = P(W+ = 0) = 2^-n
        if alternative == "greater":
            p, smallest = upper, extreme
        elif alternative == "less":
            p, smallest = lower, extreme
        else:
            p, smallest = min(1.0, 2.0 * min(upper, lower)), min(1.0, 2.0 * extreme)
        out.update(p_value=p, method=f"exact (2^{n} = {2 ** n:,} sign assignments)",
                   smallest_p=smallest)
        return out
    res = stats.wilcoxon(nonzero, alternative=alternative, method="approx")
    out.update(p_value=float(res.pvalue), method="normal approximation (n > 22)",
               smallest_p=0.0)
    return out


def fdr_bh(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values over the finite entries; NaN stays NaN (a test
    that could not run is not part of the family)."""
    from scipy import stats as _sp

    p = np.asarray(p_values, float)
    if p.ndim != 1:
        raise InputError("p_values must be 1-D.")
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = _sp.false_discovery_control(p[ok], method="bh")
    return out


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(p_values, float)
    if p.ndim != 1:
        raise InputError("p_values must be 1-D.")
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.maximum.accumulate(adjusted)
    out = np.empty(m)
    out[order] = adjusted
    return out
