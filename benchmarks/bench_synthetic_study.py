"""Time and peak memory of ``make_synthetic_study`` for the ``tiny`` and ``default`` presets.

Budgets from the synthetic-study issue: default (5 subjects x 3 visits) within 90 s and 600 MB
on a 2-core machine; tiny within 5 s. Each preset runs in a fresh interpreter (so imports and
the template loading count, as they do for a user) and reports its own peak RSS. The figures
are compared with the budgets as ratios (< 1 means within budget).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

from benchmarks._machine import machine_info, write_result

BUDGETS = {"tiny": {"seconds": 5.0}, "default": {"seconds": 90.0, "peak_rss_mb": 600.0}}

_CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from msimaging.datasets import make_synthetic_study
root = make_synthetic_study(sys.argv[1], preset=sys.argv[2])
seconds = time.perf_counter() - start
size = sum(p.stat().st_size for p in root.rglob('*') if p.is_file())
print(json.dumps({
    "seconds": seconds,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "disk_mb": size / 2**20,
}))
"""


def run(preset: str, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, f"{tmp}/study", preset],
                capture_output=True, text=True, check=True,
            )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    result = {"runs": runs, "best": best, "budget": BUDGETS[preset]}
    result["ratio_to_budget"] = {k: best[k] / v for k, v in BUDGETS[preset].items()}
    return result


def main() -> dict:
    results = {"tiny": run("tiny", repeats=3), "default": run("default", repeats=1)}
    print(f"{'preset':8} {'seconds':>8} {'peak MB':>8} {'disk MB':>8}  ratio to budget")
    for preset, r in results.items():
        b = r["best"]
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in r["ratio_to_budget"].items())
        print(
            f"{preset:8} {b['seconds']:8.2f} {b['peak_rss_mb']:8.0f} {b['disk_mb']:8.0f}  {ratios}"
        )
    payload = {
        "benchmark": "synthetic_study",
        "description": __doc__.strip().splitlines()[0],
        "presets": results,
        "machine": machine_info(),
    }
    write_result("synthetic_study", payload)
    return payload


if __name__ == "__main__":
    main()
