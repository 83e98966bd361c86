"""Network-Based Statistic: family-wise error rate of the longitudinal designs under the null.

Null studies of 4 subjects x 3 visits (months 0, 6, 12), 20 nodes (190 edges), no effect of
time: a subject effect N(0, 1) plus independent visit noise, Gaussian N(0, 0.5) or, as a
heavy-tailed variant, Student t with 3 df scaled to the same variance. Every design uses the
public function with exact enumeration of the (3!)^4 = 1,296 within-subject permutations:

* ``nbs_repeated_measures`` (F across the 3 visits; p-values are multiples of 6/1,296 since
  the 3! global relabellings of the visits tie);
* ``nbs_trend`` (within-subject linear trend over months, one-sided ``tail="right"``);
* ``nbs_trend(method="tfnbs")`` (threshold-free NBS on the trend t with z heights, the
  default; smallest FWER-corrected edge p per data set), when the engine provides it.

NBS designs use ``threshold_p=0.05`` and ``size="intensity"`` (a nearly continuous null
distribution, so the FWER sits close to its level). The FWER is the fraction of data sets
with any component (TFNBS: any edge) at p < 0.05; it must lie within 0.05 +- 2 SE,
SE = sqrt(0.05 * 0.95 / N), and P(smallest p <= alpha) must not exceed alpha + 2 SE at
alpha = 0.01, 0.02, 0.05, 0.1 (an exact permutation test never exceeds its level: with
1,296 permutations the attainable level at 0.05 is 64/1,296 = 0.0494 for the trend and
10/216 = 0.0463 for the F).

One core (BLAS limited to one thread, ``n_jobs=1``). ``tests/test_fmri_nbs_fwer.py`` runs
the Gaussian F and trend on 500 data sets.

Run: ``python -m benchmarks nbs_fwer`` or ``python -m benchmarks.bench_nbs_fwer``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

try:
    from benchmarks._machine import machine_info, write_result
except ModuleNotFoundError:  # run as a plain script: python benchmarks/bench_nbs_fwer.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks._machine import machine_info, write_result

N_DATASETS = 1000
N_NODES = 20
N_SUBJECTS = 4
MONTHS = (0.0, 6.0, 12.0)
ALPHA = 0.05
ALPHAS = (0.01, 0.02, 0.05, 0.1)
VISIT_SD = np.sqrt(0.5)
SEED = 16


def _null_study(rng: np.random.Generator, noise: str) -> np.ndarray:
    iu = np.triu_indices(N_NODES, k=1)
    n_edges = len(iu[0])
    shape = (N_SUBJECTS, len(MONTHS), n_edges)
    if noise == "gaussian":
        visits = VISIT_SD * rng.standard_normal(shape)
    else:  # Student t, 3 df (variance 3), scaled to the Gaussian's variance
        visits = VISIT_SD * rng.standard_t(3, shape) / np.sqrt(3.0)
    edges = (rng.standard_normal((N_SUBJECTS, 1, n_edges)) + visits).reshape(-1, n_edges)
    out = np.zeros((len(edges), N_NODES, N_NODES))
    out[:, iu[0], iu[1]] = edges
    return out + np.swapaxes(out, 1, 2)


def _smallest_p(result) -> float:
    """Smallest FWER-corrected p of a result: components, or edges for TFNBS."""
    edge_p = getattr(result, "edge_p_matrix", None)
    if getattr(result, "method", "nbs") == "tfnbs" and edge_p is not None:
        iu = np.triu_indices(result.n_nodes, k=1)
        return float(np.min(edge_p[iu], initial=1.0))
    return min((c.p_value for c in result.components), default=1.0)


def _designs():
    from msimaging.fmri.nbs import nbs_repeated_measures, nbs_trend

    nbs_options = {"threshold_p": 0.05, "size": "intensity", "n_jobs": 1}
    return {
        "repeated-measures F": lambda m, s, t: nbs_repeated_measures(m, s, t, **nbs_options),
        "trend": lambda m, s, t: nbs_trend(m, s, t, **nbs_options),
        "trend TFNBS": lambda m, s, t: nbs_trend(m, s, t, method="tfnbs", n_jobs=1),
    }


def _summary(p: np.ndarray, seconds: float, result) -> dict:
    n = len(p)
    se = float(np.sqrt(ALPHA * (1 - ALPHA) / n))
    fwer = float(np.mean(p < ALPHA))
    levels = []
    for alpha in ALPHAS:
        se_alpha = float(np.sqrt(alpha * (1 - alpha) / n))
        rate = float(np.mean(p <= alpha))
        levels.append({"alpha": alpha, "rate": rate, "se": se_alpha,
                       "within_alpha_plus_2se": rate <= alpha + 2 * se_alpha})
    return {
        "n_datasets": n,
        "fwer": fwer,
        "se": se,
        "fwer_minus_alpha_in_se": (fwer - ALPHA) / se,
        "within_2se": abs(fwer - ALPHA) <= 2 * se,
        "levels": levels,
        "n_permutations": result.n_permutations,
        "exact": bool(result.exact),
        "smallest_p": result.smallest_p,
        "seconds_per_dataset": seconds / n,
    }


def main() -> dict:
    from threadpoolctl import threadpool_limits

    from msimaging.errors import InputError, MSImagingWarning

    load_before = os.getloadavg()
    subject = np.repeat([f"sub-{k}" for k in range(N_SUBJECTS)], len(MONTHS))
    months = np.tile(MONTHS, N_SUBJECTS)
    designs = _designs()
    rows, notes = [], []
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        for noise in ("gaussian", "student-t3"):
            for name, run in designs.items():
                rng = np.random.default_rng(SEED)  # the same null studies for every design
                try:
                    run(_null_study(np.random.default_rng(0), noise), subject, months)
                except InputError as error:
                    if "not available" not in str(error):
                        raise
                    notes.append(f"{name}: skipped ({error})")
                    continue
                p = np.empty(N_DATASETS)
                start = time.perf_counter()
                for k in range(N_DATASETS):
                    result = run(_null_study(rng, noise), subject, months)
                    p[k] = _smallest_p(result)
                seconds = time.perf_counter() - start
                row = {"design": name, "noise": noise, **_summary(p, seconds, result)}
                rows.append(row)
                print(f"{name:<20} {noise:<10} FWER {row['fwer']:.4f} (SE {row['se']:.4f}, "
                      f"{row['fwer_minus_alpha_in_se']:+.2f} SE) N={N_DATASETS} "
                      f"perms={row['n_permutations']} exact={row['exact']} "
                      f"P(p<=a) " + ", ".join(f"{lv['alpha']}: {lv['rate']:.4f}"
                                              for lv in row["levels"])
                      + f"  {row['seconds_per_dataset'] * 1e3:.0f} ms/data set", flush=True)
    for note in dict.fromkeys(notes):
        print(note)
    load_after = os.getloadavg()
    payload = {
        "benchmark": "nbs_fwer",
        "description": __doc__.strip().splitlines()[0],
        "n_nodes": N_NODES,
        "n_subjects": N_SUBJECTS,
        "months": list(MONTHS),
        "alpha": ALPHA,
        "seed": SEED,
        "designs": rows,
        "tfnbs": "measured" if any(r["design"] == "trend TFNBS" for r in rows) else
                 "skipped: method='tfnbs' not available in this version",
        "notes": list(dict.fromkeys(notes)),
        "targets": {"fwer_within_alpha_pm_2se": True, "exact_never_exceeds_alpha_plus_2se": True},
        "met": {
            "fwer_within_2se": all(r["within_2se"] for r in rows),
            "exact_never_exceeds": all(lv["within_alpha_plus_2se"] for r in rows
                                       for lv in r["levels"]),
        },
        "one_core": True,
        "load_average_before_after": [load_before[0], load_after[0]],
        "machine": machine_info(),
    }
    path = write_result("nbs_fwer", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
