"""Threshold-free and constrained NBS: msimaging.fmri.nbs against the ``tfnbs`` package 1.1.0
(the anchor), same run, identical input.

Data: 264 nodes (Power 2011 size, 34,716 edges), paired 8 subjects (post - pre), a planted
12-node subnetwork. Both packages get the same ``pre``/``post`` stacks.

* **Statistic.** tfnbs's paired t (``compute_t_stat_diff`` of ``post - pre``) against ours
  (``result.statistic_matrix``): maximum absolute difference.
* **Scores.** ``tfnbs.get_tfnbs_score`` (E = 0.5, H = 2, start 1.65, 100 steps) against our
  scoring on the same t map with the same grid (``start + dh .. max(t)``). The scores of a
  full TFNBS run differ by design: our grid's top is the largest height over the observed
  map *and every permutation* (one statistic for all permutations), tfnbs's is each map's
  own maximum.
* **Speed.** Seconds per permutation, both directions scored (tfnbs always scores both):
  tfnbs ``compute_null_dist`` (sequential, ``use_mp=False``) with its permutation default of
  10 grid steps and with 100 steps (our grid size), over a few permutations; ours the whole
  public call ``nbs_paired(..., method="tfnbs", tail="both", exact=False)`` over 2,000
  random sign flips, fixed costs (validation, observed map, the grid pass) included. The
  ratio is tfnbs / ours per permutation. Constrained NBS: tfnbs ``compute_p_val(method=
  "cnbs")`` against ``method="constrained"`` (the definitions differ: tfnbs averages only the
  positive part of t in a block and takes the raw maximum over blocks; see the package
  docstring), timed the same way.
* **Heights t against z** (``height_comparison``). The package comparisons above use
  ``tfnbs_height="t"`` (tfnbs's definition); msimaging's default is z. Power (fraction of data
  sets with a significant edge, FWER p < 0.05) and precision (share of the significant edges
  that are planted; pooled over data sets, and the mean over detecting data sets) over 10
  seeds each: the paired 264-node setting above (exact, 256 sign flips, ``tail="both"``) at
  effects 1.0, 1.5 and 2.0, and 4 subjects x 3 visits (months 0, 6, 12; 30 nodes, subject
  effect + visit noise of variance 0.5, 10 planted nodes rising by ``slope`` per 12 months)
  with the trend t and the repeated-measures F (exact, 1,296 arrangements).
* **Smallest p.** 5 paired subjects, a strong planted 40-node subnetwork: tfnbs's ``compute_p_val``
  reports p = 0 for the planted edges (the observed map is not counted in its null); ours
  reports the exact 1/32 (all 2^5 sign flips, identity included).

Everything runs on one core (threadpoolctl, ``n_jobs=1``, tfnbs without multiprocessing); the
load average before and after is recorded because other work may use the other core.

Run: ``python -m benchmarks nbs_tfnbs`` or ``python -m benchmarks.bench_nbs_tfnbs``.
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
except ModuleNotFoundError:  # run as a plain script: python benchmarks/bench_nbs_tfnbs.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks._machine import machine_info, write_result

N_NODES = 264
N_SUBJECTS = 8
N_PERMUTATIONS = 2000
TFNBS_PERMUTATIONS = 10
PLANTED = list(range(12))
NETWORK_SIZE = 22  # 12 equal networks for the constrained comparison


def _stack(rng: np.random.Generator, n: int, n_nodes: int) -> np.ndarray:
    iu = np.triu_indices(n_nodes, k=1)
    out = np.zeros((n, n_nodes, n_nodes))
    out[:, iu[0], iu[1]] = rng.standard_normal((n, len(iu[0])))
    return out + np.swapaxes(out, 1, 2)


def _plant(stack: np.ndarray, nodes: list[int], effect: float) -> np.ndarray:
    out = stack.copy()
    block = np.ix_(range(len(out)), nodes, nodes)
    out[block] += effect
    for node in nodes:
        out[:, node, node] -= effect
    return out


def _timed(call):
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def main() -> dict:
    try:
        import tfnbs
    except ImportError:  # the anchor is not a dependency of msimaging
        print("tfnbs is not installed: pip install --no-deps tfnbs==1.1.0 (its scoring and "
              "statistics modules need only numpy, scipy, pandas and scikit-learn); skipped.")
        return {}
    from tfnbs import pairwise_stats, tfnbs_score
    from threadpoolctl import threadpool_limits

    from msimaging.fmri.nbs import nbs_paired
    from msimaging.fmri.nbs.threshold_free import _grid, _tfnbs_scores

    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    pre = _stack(rng, N_SUBJECTS, N_NODES)
    post = _plant(_stack(rng, N_SUBJECTS, N_NODES), PLANTED, 1.0)
    iu = np.triu_indices(N_NODES, k=1)
    networks = np.repeat(np.arange(N_NODES // NETWORK_SIZE), NETWORK_SIZE)
    rows: dict = {}
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nbs_paired(pre[:4, :20, :20], post[:4, :20, :20], method="tfnbs")  # warm-up

        # -- statistic and scores on identical input --------------------------------------
        theirs_t = pairwise_stats.compute_t_stat_diff(post - pre)
        ours, ours_s = _timed(lambda: nbs_paired(
            pre, post, method="tfnbs", tail="both", n_permutations=N_PERMUTATIONS,
            exact=False, seed=0, n_jobs=1, tfnbs_height="t"))  # tfnbs's definition
        t_ours = ours.statistic_matrix
        t_diff = max(
            float(np.abs(np.maximum(t_ours, 0) - theirs_t["g2>g1"])[iu].max()),
            float(np.abs(np.maximum(-t_ours, 0) - theirs_t["g1>g2"])[iu].max()),
        )
        score_rows = []
        for n_steps in (10, 100):
            positive = theirs_t["g2>g1"]
            reference = tfnbs_score.get_tfnbs_score(positive, 0.5, 2.0, n_steps,
                                                    start_thres=1.65)[iu]
            grid, dh = _grid(1.65, float(t_ours[iu].max()), n_steps)
            mine = _tfnbs_scores(t_ours[iu][None], grid, dh, 0.5, 2.0, N_NODES)[0]
            score_rows.append({
                "n_steps": n_steps,
                "max_abs_difference": float(np.abs(mine - reference).max()),
                "max_relative_difference": float(
                    np.abs(mine - reference).max() / reference.max()),
                "largest_score": float(reference.max()),
                "n_scored_edges": int((reference > 0).sum()),
            })

        # -- speed: TFNBS ---------------------------------------------------------------
        speed = []
        for n_steps in (10, 100):
            _, seconds = _timed(lambda n=n_steps: pairwise_stats.compute_null_dist(
                pre, post, func=pairwise_stats.compute_t_stat_tfnbs_diffs,
                n_permutations=TFNBS_PERMUTATIONS, test_type="paired", random_state=0,
                use_mp=False, e=0.5, h=2.0, n=n, start_thres=1.65))
            per = seconds / TFNBS_PERMUTATIONS
            speed.append({
                "tfnbs_grid_steps": n_steps,
                "tfnbs_permutations": TFNBS_PERMUTATIONS,
                "tfnbs_seconds_per_permutation": per,
                "msimaging_grid_steps": ours.parameters["n_steps"],
                "msimaging_permutations": ours.n_permutations,
                "msimaging_seconds": ours_s,
                "msimaging_seconds_per_permutation": ours_s / ours.n_permutations,
                "ratio_per_permutation": per / (ours_s / ours.n_permutations),
            })
        planted = np.zeros((N_NODES, N_NODES), bool)
        planted[np.ix_(PLANTED, PLANTED)] = True
        planted_edges = planted[iu]
        significant = ours.edge_p_matrix[iu] < 0.05
        rows["tfnbs_run"] = {
            "tfnbs_height": "t",
            "n_permutations": ours.n_permutations,
            "h_max": ours.parameters["h_max"],
            "significant_edges": int(significant.sum()),
            "significant_planted_edges": int((significant & planted_edges).sum()),
            "planted_edges": int(planted_edges.sum()),
            "components": len(ours.significant()),
        }
        ours_z, ours_z_s = _timed(lambda: nbs_paired(
            pre, post, method="tfnbs", tail="both", n_permutations=N_PERMUTATIONS,
            exact=False, seed=0, n_jobs=1))
        significant = ours_z.edge_p_matrix[iu] < 0.05
        rows["tfnbs_run_z"] = {
            "tfnbs_height": ours_z.parameters["tfnbs_height"],
            "n_permutations": ours_z.n_permutations,
            "seconds_per_permutation": ours_z_s / ours_z.n_permutations,
            "h_max": ours_z.parameters["h_max"],
            "native_h_max": ours_z.parameters["native_h_max"],
            "significant_edges": int(significant.sum()),
            "significant_planted_edges": int((significant & planted_edges).sum()),
            "smallest_edge_p": float(ours_z.edge_p_matrix[iu].min()),
            "components": len(ours_z.significant()),
        }
        rows["height_comparison"] = _height_comparison()

        # -- speed: constrained ---------------------------------------------------------
        cnbs_perms = 20
        _, their_c_s = _timed(lambda: pairwise_stats.compute_p_val(
            pre, post, n_permutations=cnbs_perms, test_type="paired", method="cnbs",
            net_labels=networks, use_mp=False, random_state=0))
        ours_c, ours_c_s = _timed(lambda: nbs_paired(
            pre, post, method="constrained", networks=networks.astype(str), tail="both",
            n_permutations=N_PERMUTATIONS, exact=False, seed=0, n_jobs=1))
        rows["constrained_speed"] = {
            "tfnbs_permutations": cnbs_perms,
            "tfnbs_seconds_per_permutation": their_c_s / (cnbs_perms + 1),
            "msimaging_permutations": ours_c.n_permutations,
            "msimaging_seconds_per_permutation": ours_c_s / ours_c.n_permutations,
            "ratio_per_permutation": (their_c_s / (cnbs_perms + 1))
            / (ours_c_s / ours_c.n_permutations),
            "n_blocks": ours_c.parameters["n_blocks"],
            "significant_blocks": [
                f"{'-'.join(next(iter(c.network_pairs)))} ({c.n_edges} edges, planted "
                f"{int(planted[c.edges[:, 0], c.edges[:, 1]].sum())}) p={c.p_value:.4g}"
                for c in ours_c.significant()
            ],
        }

        # -- smallest p: 5 paired subjects ----------------------------------------------
        small_rng = np.random.default_rng(0)
        small_pre = _stack(small_rng, 5, N_NODES)
        small_post = _plant(_stack(small_rng, 5, N_NODES), list(range(40)), 3.0)
        theirs_p = pairwise_stats.compute_p_val(
            small_pre, small_post, n_permutations=32, test_type="paired", method="tfnbs",
            use_mp=False, random_state=0)["g2>g1"][iu]
        exact = nbs_paired(small_pre, small_post, method="tfnbs")
        rows["smallest_p_paired_5"] = {
            "tfnbs_min_p": float(theirs_p.min()),
            "tfnbs_edges_with_p_0": int((theirs_p == 0).sum()),
            "msimaging_min_p": float(exact.edge_p_matrix[iu].min()),
            "msimaging_smallest_attainable_p": exact.smallest_p,
            "msimaging_exact_permutations": exact.n_permutations,
        }
    load_after = os.getloadavg()
    payload = {
        "benchmark": "nbs_tfnbs",
        "n_nodes": N_NODES,
        "n_edges": len(iu[0]),
        "n_subjects": N_SUBJECTS,
        "statistic_max_abs_difference": t_diff,
        "scores_same_grid": score_rows,
        "tfnbs_speed": speed,
        **rows,
        "tfnbs_version": getattr(tfnbs, "__version__", None),
        "tfnbs_distribution_version": _distribution_version("tfnbs"),
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "machine": machine_info(),
    }
    path = write_result("nbs_tfnbs", payload)
    print(f"t statistic: max |difference| {t_diff:.2e}")
    for row in score_rows:
        print(f"scores, {row['n_steps']} steps: max |difference| {row['max_abs_difference']:.2e}"
              f" (relative {row['max_relative_difference']:.1e})")
    for row in speed:
        print(f"TFNBS per permutation: tfnbs ({row['tfnbs_grid_steps']} steps) "
              f"{row['tfnbs_seconds_per_permutation'] * 1e3:.1f} ms, msimaging (100 steps) "
              f"{row['msimaging_seconds_per_permutation'] * 1e3:.3f} ms: "
              f"{row['ratio_per_permutation']:.0f}x")
    c = rows["constrained_speed"]
    print(f"constrained per permutation: tfnbs {c['tfnbs_seconds_per_permutation'] * 1e3:.1f} "
          f"ms, msimaging {c['msimaging_seconds_per_permutation'] * 1e3:.3f} ms: "
          f"{c['ratio_per_permutation']:.0f}x")
    for row in rows["height_comparison"]:
        print(f"{row['setting']}, {row['tfnbs_height']}: power {row['power']:.2f}, precision "
              f"pooled {row['precision_pooled']}, planted edges found "
              f"{row['significant_planted_edges_mean']:.1f}/{row['planted_edges']}")
    s = rows["smallest_p_paired_5"]
    print(f"paired n=5: tfnbs min p {s['tfnbs_min_p']} ({s['tfnbs_edges_with_p_0']} edges at 0), "
          f"msimaging min p {s['msimaging_min_p']} (exact, 1/32)")
    print(f"load average before {load_before}, after {load_after}; wrote {path}")
    return payload


def _summary(results: list, planted: np.ndarray) -> dict:
    """Power and precision of TFNBS results against the planted edges (upper triangle)."""
    iu = np.triu_indices(len(planted), k=1)
    truth = planted[iu]
    detected, precisions, n_sig, n_planted = 0, [], 0, 0
    for result in results:
        significant = result.edge_p_matrix[iu] < 0.05
        if significant.any():
            detected += 1
            precisions.append(float((significant & truth).sum() / significant.sum()))
            n_sig += int(significant.sum())
            n_planted += int((significant & truth).sum())
    return {
        "n_datasets": len(results),
        "power": detected / len(results),
        "precision_pooled": n_planted / n_sig if n_sig else None,
        "precision_mean": float(np.mean(precisions)) if precisions else None,
        "precision_min": float(np.min(precisions)) if precisions else None,
        "significant_planted_edges_mean": n_planted / len(results),
        "significant_edges_mean": n_sig / len(results),
        "planted_edges": int(truth.sum()),
    }


def _longitudinal(rng: np.random.Generator, n_subjects: int, months: tuple[float, ...],
                  n_nodes: int, planted: list[int], slope: float):
    """Subject effect + visit noise (variance 0.5) + ``slope`` per 12 months on the planted
    subnetwork's edges."""
    mats, subject, visit_months = [], [], []
    for sub in range(n_subjects):
        base = _stack(rng, 1, n_nodes)[0]
        for m in months:
            mats.append(_plant((base + np.sqrt(0.5) * _stack(rng, 1, n_nodes)[0])[None],
                               planted, slope * m / 12.0)[0])
            subject.append(f"sub-{sub}")
            visit_months.append(m)
    return np.array(mats), subject, visit_months


def _height_comparison(n_seeds: int = 10) -> list[dict]:
    """TFNBS with z against t heights: power and precision on planted data."""
    from msimaging.fmri.nbs import nbs_paired, nbs_repeated_measures, nbs_trend

    rows = []
    planted = np.zeros((N_NODES, N_NODES), bool)
    planted[np.ix_(PLANTED, PLANTED)] = True
    np.fill_diagonal(planted, False)
    for effect in (1.0, 1.5, 2.0):
        for height in ("t", "z"):
            results = []
            for seed in range(n_seeds):
                rng = np.random.default_rng(1000 + seed)
                pre = _stack(rng, N_SUBJECTS, N_NODES)
                post = _plant(_stack(rng, N_SUBJECTS, N_NODES), PLANTED, effect)
                results.append(nbs_paired(pre, post, method="tfnbs", tail="both",
                                          tfnbs_height=height))
            rows.append({"setting": f"paired n={N_SUBJECTS}, {N_NODES} nodes, 12 planted "
                                    f"nodes, effect {effect}", "tfnbs_height": height,
                         "exact_permutations": results[0].n_permutations,
                         **_summary(results, planted)})
    n_nodes, rising = 30, list(range(10))
    planted = np.zeros((n_nodes, n_nodes), bool)
    planted[np.ix_(rising, rising)] = True
    np.fill_diagonal(planted, False)
    for design, function in (("trend", nbs_trend), ("repeated-measures F", nbs_repeated_measures)):
        for slope in (1.0, 2.0):
            for height in ("t", "z"):
                results = []
                for seed in range(n_seeds):
                    rng = np.random.default_rng(100 + seed)
                    mats, subject, months = _longitudinal(rng, 4, (0.0, 6.0, 12.0), n_nodes,
                                                          rising, slope)
                    results.append(function(mats, subject, months, method="tfnbs",
                                            tfnbs_height=height))
                rows.append({"setting": f"4 subjects x 3 visits, {design}, {n_nodes} nodes, "
                                        f"10 planted nodes rising {slope} per 12 months",
                             "tfnbs_height": height,
                             "exact_permutations": results[0].n_permutations,
                             **_summary(results, planted)})
    return rows


def _distribution_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
