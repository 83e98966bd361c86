"""Family-wise error rate of the longitudinal NBS designs under the null hypothesis.

500 null data sets of 4 subjects x 3 visits (subject effect + independent Gaussian visit
noise, 20 nodes): the repeated-measures F and the within-subject trend, both with exact
enumeration of the (3!)^4 = 1,296 within-subject permutations. The fraction of data sets
with any component at p < 0.05 must lie within 0.05 +- 2 SE, and as an exact permutation test
never exceeds its level, P(smallest p <= alpha) <= alpha + 2 SE at several alphas.
``benchmarks/bench_nbs_fwer.py`` runs more data sets, a heavy-tailed variant and TFNBS.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from msimaging.errors import MSImagingWarning
from msimaging.fmri.nbs import nbs_repeated_measures, nbs_trend

N_DATASETS = 500
N_NODES = 20
N_SUBJECTS = 4
MONTHS = (0.0, 6.0, 12.0)
ALPHAS = (0.01, 0.02, 0.05, 0.1)


def null_study(rng: np.random.Generator) -> np.ndarray:
    """(n_subjects * n_visits, N, N) symmetric matrices with no effect of time."""
    iu = np.triu_indices(N_NODES, k=1)
    n_edges = len(iu[0])
    subject = rng.standard_normal((N_SUBJECTS, 1, n_edges))
    visits = np.sqrt(0.5) * rng.standard_normal((N_SUBJECTS, len(MONTHS), n_edges))
    edges = (subject + visits).reshape(-1, n_edges)
    out = np.zeros((len(edges), N_NODES, N_NODES))
    out[:, iu[0], iu[1]] = edges
    return out + np.swapaxes(out, 1, 2)


@pytest.fixture(scope="module")
def smallest_p() -> dict[str, np.ndarray]:
    """Smallest component p of every null data set (1 when there is no component)."""
    rng = np.random.default_rng(20240516)
    subject = np.repeat([f"sub-{k}" for k in range(N_SUBJECTS)], len(MONTHS))
    months = np.tile(MONTHS, N_SUBJECTS)
    out: dict[str, list[float]] = {"repeated-measures F": [], "trend": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        for _ in range(N_DATASETS):
            matrices = null_study(rng)
            # A lenient threshold and the intensity size make the largest-component null
            # distribution nearly continuous, so the FWER sits close to its level.
            f = nbs_repeated_measures(matrices, subject, months, threshold_p=0.05,
                                      size="intensity")
            trend = nbs_trend(matrices, subject, months, threshold_p=0.05, size="intensity")
            assert f.exact and trend.exact and f.n_permutations == trend.n_permutations == 1296
            for name, result in (("repeated-measures F", f), ("trend", trend)):
                out[name].append(min((c.p_value for c in result.components), default=1.0))
    return {name: np.array(values) for name, values in out.items()}


@pytest.mark.slow
@pytest.mark.parametrize("design", ["repeated-measures F", "trend"])
def test_fwer_within_two_standard_errors_of_alpha(smallest_p, design):
    alpha = 0.05
    rate = float(np.mean(smallest_p[design] < alpha))
    se = np.sqrt(alpha * (1 - alpha) / N_DATASETS)
    print(f"{design}: FWER {rate:.4f} over {N_DATASETS} null data sets (SE {se:.4f})")
    assert abs(rate - alpha) <= 2 * se


@pytest.mark.slow
@pytest.mark.parametrize("design", ["repeated-measures F", "trend"])
def test_exact_enumeration_never_exceeds_alpha(smallest_p, design):
    for alpha in ALPHAS:
        rate = float(np.mean(smallest_p[design] <= alpha))
        se = np.sqrt(alpha * (1 - alpha) / N_DATASETS)
        assert rate <= alpha + 2 * se, (design, alpha, rate)
