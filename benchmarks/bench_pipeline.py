"""Participant-level throughput with 1 vs 2 Dask workers on the default synthetic study.

Runs :func:`msimaging.pipeline.run_participant` on the default study (5 patients x M0/M3/M6,
45 tasks: DTI + tracts, fMRI connectome, volumetry per visit) twice, from scratch each time:
with ``n_workers=1`` (in-process, where numpy may use both cores' BLAS threads), with one
single-threaded Dask worker process, and with an embedded LocalCluster of 2 such workers
(cluster start included). Reports the wall time of each, the speed-up (target >= 1.6x on 2 cores),
and the peak resident memory of the worker processes (each worker's peak over all the tasks it
ran bounds the peak of every one of those tasks; target < 4 GB so that two workers fit on an
8 GB laptop). Study discovery on a 1,000-visit tree is in ``bids_discovery.json``.

``python -m benchmarks.bench_pipeline [--study PATH]`` reuses an existing default study.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks._machine import machine_info, write_result


def _run(study: Path, out: Path, n_workers: int, scheduler: str | None = None):
    from msimaging.pipeline import run_participant

    start = time.perf_counter()
    run = run_participant(study, out, n_workers=n_workers, scheduler=scheduler, force=True,
                          progress=False)
    seconds = time.perf_counter() - start
    if not run.ok:
        raise RuntimeError(f"tasks failed:\n{run.failures.to_string()}")
    return seconds, run


def main(study: str | os.PathLike[str] | None = None) -> dict:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        generation = None
        if study is None:
            from msimaging.datasets import make_synthetic_study

            start = time.perf_counter()
            root = make_synthetic_study(Path(tmp) / "study", preset="default")
            generation = time.perf_counter() - start
        else:
            root = Path(study)
        one_s, one = _run(root, Path(tmp) / "out1", 1)
        # The same single-threaded worker process as in the 2-worker cluster, 1 of them:
        # the scaling of workers alone (the in-process run above also uses BLAS threads).
        from distributed import LocalCluster

        start = time.perf_counter()
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster:
            dask_one_s, _ = _run(root, Path(tmp) / "out1d", 1, cluster.scheduler_address)
        dask_one_s = time.perf_counter() - start  # with the cluster's start, as below
        two_s, two = _run(root, Path(tmp) / "out2", 2)
    by_modality = (two.tasks.groupby("modality")["seconds"].median().round(2).to_dict())
    peak_mb = float(two.tasks["peak_rss_mb"].max())
    summary = {
        "n_tasks": len(two.tasks),
        "seconds_1_worker": one_s,
        "seconds_2_workers": two_s,
        "speedup_2_over_1": one_s / two_s,
        "seconds_1_dask_worker": dask_one_s,
        "speedup_2_over_1_dask_worker": dask_one_s / two_s,
        "target_speedup": 1.6,
        "tasks_per_minute_2_workers": 60 * len(two.tasks) / two_s,
        "median_task_seconds_by_modality": by_modality,
        "peak_worker_rss_mb": peak_mb,
        "peak_rss_mb_in_process_run": float(one.tasks["peak_rss_mb"].max()),
        "target_peak_mb": 4096,
        "generation_seconds": generation,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
    }
    print(f"participant level, {summary['n_tasks']} tasks: in-process (--n-workers 1) "
          f"{one_s:.0f} s, 1 Dask worker {dask_one_s:.0f} s, 2 Dask workers {two_s:.0f} s; "
          f"speed-up {summary['speedup_2_over_1']:.2f}x over in-process, "
          f"{summary['speedup_2_over_1_dask_worker']:.2f}x over 1 Dask worker (target 1.6x); "
          f"peak worker RSS {peak_mb:.0f} MB (target < 4096 MB)")
    print(f"median task seconds by modality (2 workers): {by_modality}")
    result = {
        "benchmark": "pipeline",
        "description": __doc__.splitlines()[0],
        "summary": summary,
        "tasks_2_workers": two.tasks.to_dict("records"),
        "machine": machine_info(),
    }
    write_result("pipeline", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", help="an existing default synthetic study")
    main(parser.parse_args().study)
