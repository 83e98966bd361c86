"""Network-Based Statistic: msimaging.fmri.nbs against bctpy's ``nbs_bct`` (the anchor), same run.

Same data, same threshold (t > 3.1, extent), 264 nodes (Power 2011 size, 34,716 edges), with a
planted 12-node subnetwork:

* paired, 5 subjects: ``bct.nbs_bct(post, pre, paired=True)`` with a few permutations, and
  ``nbs_paired(pre, post, exact=False)`` with 5,000 random sign flips (bctpy's scheme), plus
  the exact analysis (all 2^5 = 32 sign flips) that msimaging runs by default;
* two-sample, 10 vs 10: ``bct.nbs_bct(a, b)`` and ``nbs_two_sample(a, b)`` with 5,000
  random relabellings.

bctpy's seconds per permutation are its total time over (permutations + 1): its observed
pass costs one permutation. msimaging's are the total time of the public call (validation,
observed components and null distribution) over 5,000: the fixed costs count against it. The
ratio is bctpy / msimaging per permutation. Observed components must be identical edge sets.

A 1,000-node network (499,500 edges), paired 20 subjects, 5,000 permutations, runs in a fresh
process so that its peak RSS (``resource.getrusage``) is its own.

Everything runs on one core (BLAS limited to one thread with threadpoolctl, ``n_jobs=1``); the
machine's load average before and after is recorded because other work may use the other
core.

Run: ``python -m benchmarks nbs`` or ``python -m benchmarks.bench_nbs``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

try:
    from benchmarks._machine import machine_info, write_result
except ModuleNotFoundError:  # run as a plain script: python benchmarks/bench_nbs.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks._machine import machine_info, write_result

N_NODES = 264
N_PERMUTATIONS = 5000
BCT_PERMUTATIONS = 12
THRESHOLD = 3.1
PLANTED = list(range(12))
LARGE_NODES = 1000
LARGE_SUBJECTS = 20
ROOT = Path(__file__).resolve().parent.parent


def _stack(rng: np.random.Generator, n: int, n_nodes: int, dtype=np.float64) -> np.ndarray:
    iu = np.triu_indices(n_nodes, k=1)
    out = np.zeros((n, n_nodes, n_nodes), dtype=dtype)
    for k in range(n):
        out[k][iu] = rng.standard_normal(len(iu[0]))
        out[k] += out[k].T
    return out


def _plant(stack: np.ndarray, nodes: list[int], effect: float) -> np.ndarray:
    out = stack.copy()
    idx = np.ix_(range(len(out)), nodes, nodes)
    out[idx] += effect
    for node in nodes:
        out[:, node, node] -= effect
    return out


def _bct_components(adj: np.ndarray, pvals: np.ndarray) -> dict[frozenset, float]:
    iu = np.triu_indices(adj.shape[0], k=1)
    out = {}
    for value in np.unique(adj[iu]):
        if value:
            chosen = adj[iu] == value
            edges = frozenset(zip(iu[0][chosen].tolist(), iu[1][chosen].tolist(), strict=True))
            out[edges] = float(pvals[int(value) - 1])
    return out


def _ours(result) -> dict[frozenset, float]:
    return {frozenset(map(tuple, c.edges.tolist())): c.p_value for c in result.components}


def _compare(name: str, bct_call, ours_call) -> dict:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        pvals, adj, _ = bct_call()
    bct_s = time.perf_counter() - start
    start = time.perf_counter()
    result = ours_call()
    ours_s = time.perf_counter() - start
    theirs, mine = _bct_components(adj, pvals), _ours(result)
    largest = max(mine, key=len) if mine else frozenset()
    bct_per = bct_s / (BCT_PERMUTATIONS + 1)
    ours_per = ours_s / result.n_permutations
    return {
        "case": name,
        "bct_permutations": BCT_PERMUTATIONS,
        "bct_seconds": bct_s,
        "bct_seconds_per_permutation": bct_per,
        "msimaging_permutations": result.n_permutations,
        "msimaging_seconds": ours_s,
        "msimaging_seconds_per_permutation": ours_per,
        "ratio_per_permutation": bct_per / ours_per,
        "identical_components": set(theirs) == set(mine),
        "n_components": len(mine),
        "largest_component_edges": len(largest),
        "largest_p_bct": theirs.get(largest),
        "largest_p_msimaging": mine.get(largest),
        "smallest_p": result.smallest_p,
    }


def _large_case() -> dict:
    """1,000 nodes, paired 20 subjects, 5,000 permutations; call in a fresh process."""
    import resource

    from threadpoolctl import threadpool_limits

    from msimaging.fmri.nbs import nbs_paired

    rng = np.random.default_rng(1)
    pre = _stack(rng, LARGE_SUBJECTS, LARGE_NODES, np.float32)
    post = _plant(_stack(rng, LARGE_SUBJECTS, LARGE_NODES, np.float32), list(range(24)), 1.0)
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        result = nbs_paired(pre, post, threshold_p=0.001, n_permutations=N_PERMUTATIONS,
                            seed=0, n_jobs=1)
        seconds = time.perf_counter() - start
    return {
        "n_nodes": LARGE_NODES,
        "n_edges": LARGE_NODES * (LARGE_NODES - 1) // 2,
        "n_subjects": LARGE_SUBJECTS,
        "n_permutations": result.n_permutations,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_data_mb": before_mb,
        "input_mb": 2 * pre.nbytes / 2**20,
        "threshold": result.threshold,
        "n_components": len(result.components),
        "largest_p": result.components[0].p_value if result.components else None,
    }


def main() -> dict:
    import bct
    from threadpoolctl import threadpool_limits

    from msimaging.fmri.nbs import nbs_paired, nbs_two_sample

    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    pre = _stack(rng, 5, N_NODES)
    post = _plant(_stack(rng, 5, N_NODES), PLANTED, 1.5)
    a = _plant(_stack(rng, 10, N_NODES), PLANTED, 1.5)
    b = _stack(rng, 10, N_NODES)
    rows = []
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nbs_paired(pre[:3], post[:3], threshold=THRESHOLD)  # imports and warm-up
        rows.append(_compare(
            "paired 5 subjects",
            lambda: bct.nbs_bct(np.moveaxis(post, 0, -1), np.moveaxis(pre, 0, -1), THRESHOLD,
                                k=BCT_PERMUTATIONS, tail="right", paired=True, seed=0),
            lambda: nbs_paired(pre, post, threshold=THRESHOLD, n_permutations=N_PERMUTATIONS,
                               exact=False, seed=0),
        ))
        rows.append(_compare(
            "two-sample 10 vs 10",
            lambda: bct.nbs_bct(np.moveaxis(a, 0, -1), np.moveaxis(b, 0, -1), THRESHOLD,
                                k=BCT_PERMUTATIONS, tail="right", paired=False, seed=0),
            lambda: nbs_two_sample(a, b, threshold=THRESHOLD, n_permutations=N_PERMUTATIONS,
                                   seed=0),
        ))
        start = time.perf_counter()
        exact = nbs_paired(pre, post, threshold=THRESHOLD)
        exact_s = time.perf_counter() - start
    exact_row = {
        "case": "paired 5 subjects, exact (default)",
        "n_permutations": exact.n_permutations,
        "seconds": exact_s,
        "largest_p": exact.components[0].p_value if exact.components else None,
        "smallest_p": exact.smallest_p,
    }
    child = subprocess.run(
        [sys.executable, "-c",
         "import json; from benchmarks.bench_nbs import _large_case; "
         "print(json.dumps(_large_case()))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    large = json.loads(child.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()

    print(f"{'case':<22} {'bct s/perm':>11} {'ours s/perm':>12} {'ratio':>8} "
          f"{'ours 5000 perms s':>18} {'same comps':>10} {'p bct':>7} {'p ours':>8}")
    for row in rows:
        print(f"{row['case']:<22} {row['bct_seconds_per_permutation']:>11.3f} "
              f"{row['msimaging_seconds_per_permutation']:>12.2e} "
              f"{row['ratio_per_permutation']:>8.0f} {row['msimaging_seconds']:>18.2f} "
              f"{row['identical_components']!s:>10} {row['largest_p_bct']!s:>7} "
              f"{row['largest_p_msimaging']:>8.4f}")
    print(f"paired 5 exact: {exact_row['n_permutations']} sign flips in "
          f"{exact_row['seconds']:.3f} s, p = {exact_row['largest_p']}, smallest p "
          f"{exact_row['smallest_p']}")
    print(f"1,000 nodes ({large['n_edges']} edges), paired {large['n_subjects']}, "
          f"{large['n_permutations']} permutations: {large['seconds']:.1f} s, peak RSS "
          f"{large['peak_rss_mb']:.0f} MB (inputs {large['input_mb']:.0f} MB)")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")

    payload = {
        "benchmark": "nbs",
        "description": __doc__.strip().splitlines()[0],
        "threshold_t": THRESHOLD,
        "n_nodes": N_NODES,
        "comparisons": rows,
        "exact_paired": exact_row,
        "large": large,
        "targets": {
            "ratio_per_permutation_min": 300,
            "seconds_5000_permutations_264_nodes_max": 5.0,
            "large_seconds_max": 120.0,
            "large_peak_rss_mb_max": 2048,
        },
        "met": {
            "ratio": all(r["ratio_per_permutation"] >= 300 for r in rows),
            "speed_264": all(r["msimaging_seconds"] < 5.0 for r in rows),
            "large_time": large["seconds"] < 120.0,
            "large_memory": large["peak_rss_mb"] < 2048,
            "identical_components": all(r["identical_components"] for r in rows),
        },
        "one_core": True,
        "load_average_before_after": [load_before[0], load_after[0]],
        "machine": machine_info(),
    }
    path = write_result("nbs", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
