"""Tract acceptance on the second phantom (re-drawn bundles with crossings; issue 17).

Generates :func:`msimaging.datasets.synthetic.phantom2.make_phantom2_study` (default preset:
DWI 2.5 mm, 6 b0 + 30 directions, SNR 25; CST/OR/CC re-drawn from other landmarks, Meyer's
loop, an SLF crossing the CST, callosal fibres crossing the CST, multi-compartment signal),
runs :func:`msimaging.dti.dti_session` and the tract stage with the package defaults for each
available orientation model (``tensor``; ``csd`` when :func:`msimaging.dti.orientations.fit_csd`
exists: tracked with :func:`msimaging.dti.tracts.bundle` on the CSD fit, measured on the tensor
maps as :func:`msimaging.dti.tract_session` does), and compares every tract with the planted
truth:

- ``n_streamlines`` (target >= 50 after cleaning);
- ``dice`` with the bundle's full planted tube (crossing voxels included; ``dice_dseg``: with
  the single-label image, where the CST/OR win crossings, for reference), target >= 0.7;
- ``fa_error``: tract mean FA minus the bundle's true FA (noise-free single-tensor FA of each
  voxel, what a DTI map shows without noise), target |error| <= 0.02; ``fa_error_compartment``
  against the bundle's own compartment FA, for reference;
- ``profile_r``: correlation of the FA profile with the true along-tract FA, target >= 0.95;
- ``recall`` / ``precision``: share of the planted tube covered / of the tract mask in the tube.

For comparison the default study (same subjects' anatomy, first session only) is measured
with the same models and targets (``default_study_reference``).

Run ``python -m benchmarks.bench_tract_phantom2 [n_subjects] [sessions...]`` (default 2
subjects, M0 and M6).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks._machine import machine_info, write_result

TRACTS = ("CC", "CST_L", "CST_R", "OR_L", "OR_R")
TARGETS = {"n_streamlines": 50, "dice": 0.7, "fa_abs_error": 0.02, "profile_r": 0.95}
DSEG_CODES = {"CC": 1, "CST_L": 2, "CST_R": 3, "OR_L": 4, "OR_R": 5}


def csd_available() -> bool:
    try:
        from msimaging.dti.orientations import fit_csd  # noqa: F401
    except ImportError:
        return False
    return True


def accuracy(name, tract, metrics, profiles, tube, dseg, expected) -> dict:
    """One result row: the tract against its planted bundle."""
    mask = np.asanyarray(tract.mask().dataobj) > 0
    true = expected["regions"][name]
    row = {"tract": name, "n_streamlines": int(tract.n_streamlines),
           "dice": float(2 * (mask & tube).sum() / max(mask.sum() + tube.sum(), 1)),
           "dice_dseg": float(2 * (mask & dseg).sum() / max(mask.sum() + dseg.sum(), 1)),
           "recall": float((mask & tube).sum() / max(tube.sum(), 1)),
           "precision": float((mask & tube).sum() / max(mask.sum(), 1)),
           "fa_truth": true["fa"], "fa_truth_compartment": true.get("fa_compartment", true["fa"]),
           "fa": float("nan"), "fa_error": float("nan"), "fa_error_compartment": float("nan"),
           "profile_r": float("nan")}
    whole = metrics[(metrics.tract == name) & (metrics.metric == "fa")
                    & (metrics.part == "whole")]
    if len(whole) and np.isfinite(whole.iloc[0]["mean"]):
        fa = float(whole.iloc[0]["mean"])
        row.update(fa=fa, fa_error=fa - true["fa"],
                   fa_error_compartment=fa - row["fa_truth_compartment"])
    profile = profiles[(profiles.tract == name) & (profiles.metric == "fa")]
    profile = profile.sort_values("node")["value"].to_numpy()
    truth_profile = np.asarray(expected["profiles_fa"][name])
    if profile.size == truth_profile.size and np.isfinite(profile).all():
        row["profile_r"] = float(np.corrcoef(profile, truth_profile)[0, 1])
    row["meets"] = bool(row["n_streamlines"] >= TARGETS["n_streamlines"]
                        and row["dice"] >= TARGETS["dice"]
                        and abs(row["fa_error"]) <= TARGETS["fa_abs_error"]
                        and row["profile_r"] >= TARGETS["profile_r"])
    return row


def run_visit(visit, root: Path, truth: dict, models: tuple[str, ...],
              phantom: bool = True) -> tuple[list, dict]:
    """Every model's rows and seconds for one visit (``phantom=False``: the default study,
    whose planted tubes are the single-label ``desc-bundles_dseg``)."""
    from msimaging.datasets.synthetic.phantom2 import tract_mask_truth
    from msimaging.dti import dti_session, tract_session
    from msimaging.dti.tracts import bundle, tract_metrics, tract_profiles

    sub, ses = visit.participant_id, visit.session_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dti = dti_session(visit.get("dwi"), visit.get("t1w"), seg=visit.get("dseg"),
                          lesion_mask=visit.get("lesion_mask"), participant_id=sub,
                          session_id=ses)
    dseg = np.asanyarray(nib.load(
        root / "sourcedata/ground_truth" / sub / ses / "dwi"
        / f"{sub}_{ses}_desc-bundles_dseg.nii.gz").dataobj)
    tubes = (tract_mask_truth(root, sub, ses) if phantom
             else {name: dseg == code for name, code in DSEG_CODES.items()})
    expected = truth["subjects"][sub]["sessions"][ses]["dwi"]
    rows, seconds = [], {}
    for model in models:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if model == "tensor":
                stage = tract_session(dti, tracts=list(TRACTS))
                bundles, metrics, profiles = stage.bundles, stage.metrics, stage.profiles
            else:
                from msimaging.atlases.tracts import tract_definitions
                from msimaging.dti.orientations import fit_csd

                csd = fit_csd(visit.get("dwi"), tensor=dti.fit)
                bundles = {d.name: bundle(csd, d, to_mni=dti.dwi_to_mni,
                                          lesion_mask=dti.lesion_mask)
                           for d in tract_definitions(list(TRACTS))}
                ids = {"participant_id": sub, "session_id": ses}
                metrics = tract_metrics(dti.fit, bundles, lesion_mask=dti.lesion_mask, **ids)
                profiles = tract_profiles(dti.fit, bundles, **ids)
        seconds[model] = time.perf_counter() - start
        for name in TRACTS:
            row = accuracy(name, bundles[name], metrics, profiles, tubes[name],
                           dseg == DSEG_CODES[name], expected)
            rows.append({"participant_id": sub, "session_id": ses, "model": model, **row})
    return rows, seconds


def summary(rows: list[dict]) -> dict:
    def finite(key):
        return [r[key] for r in rows if np.isfinite(r[key])]

    return {
        "n_rows": len(rows),
        "n_found": sum(r["n_streamlines"] >= TARGETS["n_streamlines"] for r in rows),
        "n_dice_met": sum(r["dice"] >= TARGETS["dice"] for r in rows),
        "n_fa_met": sum(abs(r["fa_error"]) <= TARGETS["fa_abs_error"] for r in rows),
        "n_profile_met": sum(r["profile_r"] >= TARGETS["profile_r"] for r in rows),
        "n_all_met": sum(r["meets"] for r in rows),
        "min_n_streamlines": min(r["n_streamlines"] for r in rows),
        "min_dice": min(finite("dice"), default=float("nan")),
        "max_abs_fa_error": max(map(abs, finite("fa_error")), default=float("nan")),
        "min_profile_r": min(finite("profile_r"), default=float("nan")),
    }


def main(n_subjects: int = 2, sessions: tuple[str, ...] = ("M0", "M6")) -> dict:
    from msimaging.bids import Study
    from msimaging.datasets import make_synthetic_study
    from msimaging.datasets.synthetic.phantom2 import make_phantom2_study

    models = ("tensor", "csd") if csd_available() else ("tensor",)
    rows, seconds, default_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = make_phantom2_study(Path(tmp) / "study", n_subjects=n_subjects,
                                   sessions=sessions)
        generate = time.perf_counter() - start
        truth = json.loads((root / "sourcedata/ground_truth/ground_truth.json").read_text())
        for visit in Study(root):
            more, times = run_visit(visit, root, truth, models)
            rows += more
            seconds.append(times)
        # Reference: the default study's drawing, same subjects' anatomy, same targets.
        reference = make_synthetic_study(Path(tmp) / "default", n_subjects=n_subjects,
                                         sessions=sessions[:1])
        ref_truth = json.loads(
            (reference / "sourcedata/ground_truth/ground_truth.json").read_text())
        for visit in Study(reference):
            default_rows += run_visit(visit, reference, ref_truth, models, phantom=False)[0]
    print(f"{'study':8} {'model':7} {'subject':7} {'session':7} {'tract':6} {'n':>5} "
          f"{'Dice':>6} {'recall':>6} {'prec':>6} {'FA err':>7} {'FAc err':>7} {'prof r':>7}")
    for study, table in (("phantom2", rows), ("default", default_rows)):
        for r in table:
            print(f"{study:8} {r['model']:7} {r['participant_id']:7} {r['session_id']:7} "
                  f"{r['tract']:6} {r['n_streamlines']:5d} {r['dice']:6.3f} {r['recall']:6.3f} "
                  f"{r['precision']:6.3f} {r['fa_error']:+7.3f} "
                  f"{r['fa_error_compartment']:+7.3f} {r['profile_r']:7.3f}")
    result, reference_result = {}, {}
    for model in models:
        for out, table in ((result, rows), (reference_result, default_rows)):
            mine = [r for r in table if r["model"] == model]
            out[model] = {"summary": summary(mine), "per_tract": {
                name: summary([r for r in mine if r["tract"] == name]) for name in TRACTS}}
        print("phantom2", model, {k: (round(v, 3) if isinstance(v, float) else v)
                                  for k, v in result[model]["summary"].items()})
        print("default ", model, {k: (round(v, 3) if isinstance(v, float) else v)
                                  for k, v in reference_result[model]["summary"].items()})
    payload = {
        "benchmark": "tract_phantom2", "description": __doc__.strip().splitlines()[0],
        "study": {"n_subjects": n_subjects, "sessions": list(sessions), "preset": "default"},
        "models": list(models), "targets": TARGETS, "results": result, "per_visit": rows,
        "default_study_reference": {"sessions": list(sessions[:1]), "results": reference_result,
                                    "per_visit": default_rows},
        "seconds_generate_study": generate,
        "seconds_tract_stage_per_visit": {
            m: float(np.mean([s[m] for s in seconds])) for m in models},
        "machine": machine_info(),
    }
    write_result("tract_phantom2", payload)
    return payload


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 2, tuple(args[1:]) or ("M0", "M6"))
