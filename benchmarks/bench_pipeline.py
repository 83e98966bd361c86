"""Participant level of the default synthetic study on 2 Dask workers: one MNI registration per
subject against one per visit, in the same run.

Runs :func:`msimaging.pipeline.run_participant` on the default study (5 patients x M0/M3/M6,
45 tasks: DTI + tracts, fMRI connectome, volumetry per visit) from scratch with
``[dti] mni_reference = "visit"`` (every visit registered to MNI on its own: the behaviour
measured at 164 s before issue 19) and ``"subject"`` (the subject's first visit registered to
MNI once, the other visits to its T1w, rigid at 3 mm, and the two composed), one after the
other in one process, each on an embedded LocalCluster of 2 single-threaded workers (cluster
start included). Reports for each: wall time, the ratio of the two (target >= 2x on 2 cores),
the machine's load average before and after, the peak resident memory of every task (the
task's own peak: the worker's peak is reset when a task starts), and accuracy against the
planted truth (``sourcedata/ground_truth/ground_truth.json``):

- registration per visit: the mean (and max) distance, over the brain voxels of the 2 mm MNI
  brain mask, between where the visit's MNI -> T1w transform
  (``sub-*_ses-*_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.txt``) and the truth's
  ``mni_to_native`` put them in the T1w (mm);
- NAWM (whole, left, right) and tract (CST, OR, CC...) FA against the planted regional FA:
  the mean absolute error per mode.

``python -m benchmarks.bench_pipeline [--study PATH] [--scaling]`` reuses an existing default
study; ``--scaling`` also times 1 in-process worker against 2 (the benchmark before issue 19).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._machine import machine_info, write_result

MODES = ("visit", "subject")
TARGET_RATIO = 2.0
#: The 2-worker time of the participant level before issue 19 (benchmarks/results, one
#: registration to MNI per visit).
BEFORE_SECONDS = 164.0


def _run(study: Path, out: Path, n_workers: int, mode: str, scheduler: str | None = None):
    from msimaging.pipeline import run_participant

    load = os.getloadavg()
    start = time.perf_counter()
    run = run_participant(study, out, n_workers=n_workers, scheduler=scheduler, force=True,
                          progress=False, params={"dti": {"mni_reference": mode}})
    seconds = time.perf_counter() - start
    if not run.ok:
        raise RuntimeError(f"tasks failed:\n{run.failures.to_string()}")
    return seconds, run, {"load_average_before": list(load),
                          "load_average_after": list(os.getloadavg())}


def registration_errors(study: Path, out: Path) -> pd.DataFrame:
    """Per visit: distance (mm) between the recovered and the true T1w positions of the MNI
    brain voxels (2 mm brain mask), mean and max."""
    from msimaging.registration import load_transform, mni_template

    truth = json.loads((study / "sourcedata" / "ground_truth" / "ground_truth.json")
                       .read_text(encoding="utf-8"))
    mask = mni_template("brain_mask", 2)
    mni = np.argwhere(np.asarray(mask.dataobj) > 0) @ mask.affine[:3, :3].T + mask.affine[:3, 3]
    rows = []
    for participant, subject in truth["subjects"].items():
        for session, matrix in subject["mni_to_native"].items():
            path = (out / participant / session / "anat" /
                    f"{participant}_{session}_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.txt")
            m2n = np.asarray(matrix, float)
            true_native = mni @ m2n[:3, :3].T + m2n[:3, 3]
            found = load_transform(path).transform_points(mni, inverse=True)
            error = np.linalg.norm(found - true_native, axis=1)
            rows.append({"participant_id": participant, "session_id": session,
                         "mean_error_mm": float(error.mean()), "max_error_mm": float(error.max())})
    return pd.DataFrame(rows)


def fa_errors(study: Path, out: Path) -> pd.DataFrame:
    """Per visit and region: measured FA (NAWM mean, tract weighted mean) minus the planted."""
    truth = json.loads((study / "sourcedata" / "ground_truth" / "ground_truth.json")
                       .read_text(encoding="utf-8"))
    rows = []
    for participant, subject in truth["subjects"].items():
        for session, visit in subject["sessions"].items():
            planted = visit["dwi"]["regions"]
            folder = out / participant / session / "dwi"
            stem = f"{participant}_{session}_model-tensor_desc-"
            nawm = pd.read_csv(folder / f"{stem}nawm_stats.tsv", sep="\t")
            for r in nawm[nawm["metric"] == "fa"].itertuples():
                region = {"both": "NAWM", "left": "NAWM_left", "right": "NAWM_right"}.get(
                    r.hemisphere, r.roi)
                if region in planted:
                    rows.append({"participant_id": participant, "session_id": session,
                                 "region": region, "kind": "nawm",
                                 "error": float(r.mean) - planted[region]["fa"]})
            tracts = pd.read_csv(folder / f"{stem}tracts_stats.tsv", sep="\t")
            whole = tracts[(tracts["metric"] == "fa") & (tracts["part"] == "whole")
                           & (tracts["n_streamlines"] > 0)]
            for r in whole.itertuples():
                if r.tract in planted:
                    rows.append({"participant_id": participant, "session_id": session,
                                 "region": r.tract, "kind": "tract",
                                 "error": float(r.weighted_mean) - planted[r.tract]["fa"]})
    return pd.DataFrame(rows)


def _accuracy(study: Path, out: Path) -> dict[str, Any]:
    reg = registration_errors(study, out)
    fa = fa_errors(study, out)
    by_kind = fa.assign(abs_error=fa["error"].abs()).groupby("kind")["abs_error"]
    return {
        "registration_mean_error_mm": float(reg["mean_error_mm"].mean()),
        "registration_worst_visit_mean_error_mm": float(reg["mean_error_mm"].max()),
        "registration_max_error_mm": float(reg["max_error_mm"].max()),
        "nawm_fa_mean_abs_error": float(by_kind.mean().get("nawm", np.nan)),
        "tract_fa_mean_abs_error": float(by_kind.mean().get("tract", np.nan)),
        "n_tract_rows": int(by_kind.size().get("tract", 0)),
        "registration_per_visit": reg.round(4).to_dict("records"),
    }


def _memory(run) -> dict[str, Any]:
    tasks = run.tasks
    return {
        "peak_task_rss_mb": float(tasks["peak_rss_mb"].max()),
        "peak_task_rss_mb_by_modality": tasks.groupby("modality")["peak_rss_mb"].max()
        .round(1).to_dict(),
    }


def main(study: str | os.PathLike[str] | None = None, scaling: bool = False) -> dict:
    from distributed import LocalCluster  # noqa: F401 (fail early without distributed)

    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        generation = None
        if study is None:
            from msimaging.datasets import make_synthetic_study

            start = time.perf_counter()
            root = make_synthetic_study(Path(tmp) / "study", preset="default")
            generation = time.perf_counter() - start
        else:
            root = Path(study)
        for mode in MODES:
            out = Path(tmp) / f"out_{mode}"
            seconds, run, load = _run(root, out, 2, mode)
            dti = run.tasks[run.tasks["modality"] == "dti"]
            runs[mode] = {
                "seconds_2_workers": seconds,
                **load,
                "n_tasks": len(run.tasks),
                "median_task_seconds_by_modality": run.tasks.groupby("modality")["seconds"]
                .median().round(2).to_dict(),
                "dti_worker_seconds": float(dti["seconds"].sum()),
                **_memory(run),
                "accuracy": _accuracy(root, out),
                "tasks": run.tasks.drop(columns=["message"]).to_dict("records"),
            }
            error_mm = runs[mode]["accuracy"]["registration_mean_error_mm"]
            print(f"mni_reference={mode}: {seconds:.0f} s on 2 workers, load "
                  f"{load['load_average_before'][0]:.1f} -> {load['load_average_after'][0]:.1f}"
                  f", registration error {error_mm:.3f} mm, peak task RSS "
                  f"{runs[mode]['peak_task_rss_mb']:.0f} MB", flush=True)
        scaling_result = None
        if scaling:
            one_s, _, load = _run(root, Path(tmp) / "out1", 1, "subject")
            scaling_result = {"seconds_1_worker_subject": one_s,
                              "speedup_2_over_1": one_s / runs["subject"]["seconds_2_workers"],
                              **load}
    old, new = runs["visit"]["seconds_2_workers"], runs["subject"]["seconds_2_workers"]
    summary = {
        "n_tasks": runs["subject"]["n_tasks"],
        "seconds_2_workers_visit": old,
        "seconds_2_workers_subject": new,
        "ratio_visit_over_subject": old / new,
        "target_ratio": TARGET_RATIO,
        "seconds_2_workers_before_issue19": BEFORE_SECONDS,
        "ratio_before_issue19_over_subject": BEFORE_SECONDS / new,
        "registration_mean_error_mm": {m: runs[m]["accuracy"]["registration_mean_error_mm"]
                                       for m in MODES},
        "nawm_fa_mean_abs_error": {m: runs[m]["accuracy"]["nawm_fa_mean_abs_error"]
                                   for m in MODES},
        "tract_fa_mean_abs_error": {m: runs[m]["accuracy"]["tract_fa_mean_abs_error"]
                                    for m in MODES},
        "peak_task_rss_mb": {m: runs[m]["peak_task_rss_mb"] for m in MODES},
        "target_peak_mb": 4096,
        "generation_seconds": generation,
        "scaling": scaling_result,
    }
    print(f"participant level, {summary['n_tasks']} tasks on 2 workers: one MNI registration "
          f"per visit {old:.0f} s, per subject {new:.0f} s: {old / new:.2f}x (target "
          f"{TARGET_RATIO}x); {BEFORE_SECONDS / new:.2f}x over the {BEFORE_SECONDS:.0f} s "
          "measured before issue 19")
    result = {
        "benchmark": "pipeline",
        "description": __doc__.splitlines()[0],
        "summary": summary,
        "runs": runs,
        "machine": machine_info(),
    }
    write_result("pipeline", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", help="an existing default synthetic study")
    parser.add_argument("--scaling", action="store_true",
                        help="also time 1 in-process worker (mni_reference = subject)")
    args = parser.parse_args()
    main(args.study, args.scaling)
