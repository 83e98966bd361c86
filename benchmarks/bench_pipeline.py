"""Participant level of the default synthetic study on 2 Dask workers: the code before issue 19
against today's, in the same run.

Runs :func:`msimaging.pipeline.run_participant` on the default study (5 patients x M0/M3/M6,
45 tasks: DTI + tracts, fMRI connectome, volumetry per visit) from scratch, three times one
after the other, each on an embedded LocalCluster of 2 single-threaded workers (cluster start
included):

- ``before``: the anchor, the package as it was before issue 19 (commit
  :data:`BASELINE_COMMIT`, checked out into a temporary git worktree and run in a subprocess
  whose ``PYTHONPATH`` puts its ``src`` first): one MNI registration per visit, measured at
  164 s when the issue was filed;
- ``visit``: today's code with ``[dti] mni_reference = "visit"`` (every visit registered to
  MNI on its own);
- ``subject``: today's default (the subject's first visit registered to MNI once, the other
  visits to its T1w, rigid at 3 mm, and the two composed).

Reports for each: wall time, the ratios (target: ``before`` / ``subject`` >= 2 on 2 cores),
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
study; ``--scaling`` also times 1 in-process worker against 2. Without git or the anchor
commit (a source tarball), the ``before`` run is skipped and the ratio uses the 164 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._machine import machine_info, write_result

MODES = ("visit", "subject")
TARGET_RATIO = 2.0
#: The last commit before issue 19 (its participant level registers every visit to MNI).
BASELINE_COMMIT = "755465b"
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


def _anchor_source(tmp: Path) -> Path | None:
    """A git worktree of :data:`BASELINE_COMMIT`, or None (no git, not a clone)."""
    repo = Path(__file__).resolve().parents[1]
    target = tmp / "baseline_source"
    try:
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(target),
                        BASELINE_COMMIT], check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"anchor run skipped: no worktree of {BASELINE_COMMIT} ({exc})", flush=True)
        return None
    return target


def _drop_anchor_source(source: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(source)],
                   check=False, capture_output=True, timeout=120)


def _run_anchor(source: Path, study: Path, out: Path) -> tuple[float, pd.DataFrame, dict]:
    """The participant level of the package at :data:`BASELINE_COMMIT`, in a subprocess."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(source / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_pipeline", "--anchor-child", str(study),
         str(out)], env=env, cwd=Path(__file__).resolve().parents[1], check=True,
        capture_output=True, text=True)
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    if not payload["package"].startswith(str(source)):
        raise RuntimeError(f"the anchor ran {payload['package']}, not the worktree {source}")
    tasks = pd.DataFrame(payload["tasks"])
    return payload["seconds"], tasks, payload["load"]


def _anchor_child(study: str, out: str) -> None:
    """Inside the anchor's subprocess: today's call of the old ``run_participant``."""
    import msimaging
    from msimaging.pipeline import run_participant

    load = os.getloadavg()
    start = time.perf_counter()
    run = run_participant(study, out, n_workers=2, force=True, progress=False)
    seconds = time.perf_counter() - start
    if not run.ok:
        raise RuntimeError(f"tasks failed:\n{run.failures.to_string()}")
    print(json.dumps({
        "package": msimaging.__file__, "seconds": seconds,
        "load": {"load_average_before": list(load),
                 "load_average_after": list(os.getloadavg())},
        "tasks": run.tasks.drop(columns=["message"]).to_dict("records")}, default=str))


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


def _memory(tasks: pd.DataFrame) -> dict[str, Any]:
    return {
        "peak_task_rss_mb": float(tasks["peak_rss_mb"].max()),
        "peak_task_rss_mb_by_modality": tasks.groupby("modality")["peak_rss_mb"].max()
        .round(1).to_dict(),
    }


def _summary(study: Path, out: Path, seconds: float, tasks: pd.DataFrame,
             load: dict) -> dict[str, Any]:
    dti = tasks[tasks["modality"] == "dti"]
    return {
        "seconds_2_workers": seconds,
        **load,
        "n_tasks": len(tasks),
        "median_task_seconds_by_modality": tasks.groupby("modality")["seconds"]
        .median().round(2).to_dict(),
        "dti_worker_seconds": float(dti["seconds"].sum()),
        **_memory(tasks),
        "accuracy": _accuracy(study, out),
        "tasks": tasks.drop(columns=["message"], errors="ignore").to_dict("records"),
    }


def _say(name: str, run: dict[str, Any]) -> None:
    print(f"{name}: {run['seconds_2_workers']:.0f} s on 2 workers, load "
          f"{run['load_average_before'][0]:.1f} -> {run['load_average_after'][0]:.1f}, "
          f"registration error {run['accuracy']['registration_mean_error_mm']:.4f} mm, NAWM "
          f"FA error {run['accuracy']['nawm_fa_mean_abs_error']:.4f}, tract FA error "
          f"{run['accuracy']['tract_fa_mean_abs_error']:.4f}, peak task RSS "
          f"{run['peak_task_rss_mb']:.0f} MB", flush=True)


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
        source = _anchor_source(Path(tmp))
        try:
            if source is not None:
                out = Path(tmp) / "out_before"
                seconds, tasks, load = _run_anchor(source, root, out)
                runs["before"] = _summary(root, out, seconds, tasks, load)
                _say("before (commit " + BASELINE_COMMIT + ")", runs["before"])
        finally:
            if source is not None:
                _drop_anchor_source(source)
        for mode in MODES:
            out = Path(tmp) / f"out_{mode}"
            seconds, run, load = _run(root, out, 2, mode)
            runs[mode] = _summary(root, out, seconds, run.tasks, load)
            _say(f"mni_reference={mode}", runs[mode])
        scaling_result = None
        if scaling:
            one_s, _, load = _run(root, Path(tmp) / "out1", 1, "subject")
            scaling_result = {"seconds_1_worker_subject": one_s,
                              "speedup_2_over_1": one_s / runs["subject"]["seconds_2_workers"],
                              **load}
    old, new = runs["visit"]["seconds_2_workers"], runs["subject"]["seconds_2_workers"]
    before = runs["before"]["seconds_2_workers"] if "before" in runs else BEFORE_SECONDS
    modes = [m for m in ("before", *MODES) if m in runs]
    summary = {
        "n_tasks": runs["subject"]["n_tasks"],
        "seconds_2_workers_before_issue19": before,
        "before_issue19_measured_in_this_run": "before" in runs,
        "seconds_2_workers_visit": old,
        "seconds_2_workers_subject": new,
        "ratio_before_issue19_over_subject": before / new,
        "ratio_visit_over_subject": old / new,
        "target_ratio": TARGET_RATIO,
        "seconds_2_workers_when_issue19_was_filed": BEFORE_SECONDS,
        "registration_mean_error_mm": {m: runs[m]["accuracy"]["registration_mean_error_mm"]
                                       for m in modes},
        "nawm_fa_mean_abs_error": {m: runs[m]["accuracy"]["nawm_fa_mean_abs_error"]
                                   for m in modes},
        "tract_fa_mean_abs_error": {m: runs[m]["accuracy"]["tract_fa_mean_abs_error"]
                                    for m in modes},
        "peak_task_rss_mb": {m: runs[m]["peak_task_rss_mb"] for m in modes},
        "target_peak_mb": 4096,
        "generation_seconds": generation,
        "scaling": scaling_result,
    }
    print(f"participant level, {summary['n_tasks']} tasks on 2 workers: before issue 19 "
          f"{before:.0f} s{'' if 'before' in runs else ' (not measured here)'}, today "
          f"{new:.0f} s: {before / new:.2f}x (target {TARGET_RATIO}x); one MNI registration "
          f"per visit today {old:.0f} s ({old / new:.2f}x)")
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
    parser.add_argument("--anchor-child", nargs=2, metavar=("STUDY", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.anchor_child:
        _anchor_child(*args.anchor_child)
    else:
        main(args.study, args.scaling)
