"""The tract stage per visit on the default synthetic study: time and accuracy.

Generates the default study (2 subjects, visit M0; DWI 2.5 mm, 6 b0 + 30 directions,
SNR 25), runs :func:`msimaging.dti.dti_session` (fit + registrations) then
:func:`msimaging.dti.tract_session` (deterministic tracking of CST L/R, OR L/R, CC, seeded
from the definitions' ROIs and, second run, from the white matter around them; metrics;
profiles) and compares with the planted bundles. Targets (issue 5): Dice >= 0.6 with the planted
bundle masks, tract mean FA within ±0.02 of truth (the plain voxel mean over the tract mask and
the track-density-weighted mean are both reported), profile correlation >= 0.8 with the true
along-tract FA.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks._machine import machine_info, write_result

TRACTS = {"CC": 1, "CST_L": 2, "CST_R": 3, "OR_L": 4, "OR_R": 5}
# Default ROI seeding, and AFQ-style white-matter seeding around the waypoints.
SEEDINGS = {"rois": {}, "wm": {"seeds_per_voxel": 1}}


def _accuracy(stage, bundles, expected, sub, seeding) -> list[dict]:
    rows = []
    for name, code in TRACTS.items():
        mask = np.asanyarray(stage.bundles[name].mask().dataobj) > 0
        true = bundles == code
        whole = stage.metrics[(stage.metrics.tract == name)
                              & (stage.metrics.metric == "fa")
                              & (stage.metrics.part == "whole")].iloc[0]
        fa, fa_weighted = whole["mean"], whole["weighted_mean"]
        profile = stage.profiles[(stage.profiles.tract == name)
                                 & (stage.profiles.metric == "fa")]
        profile = profile.sort_values("node")["value"].to_numpy()
        true_profile = np.asarray(expected["profiles_fa"][name])
        r = (float(np.corrcoef(profile, true_profile)[0, 1])
             if profile.size == true_profile.size and np.isfinite(profile).all()
             else float("nan"))
        rows.append({
            "participant_id": sub, "seeding": seeding, "tract": name,
            "n_streamlines": stage.bundles[name].n_streamlines,
            "dice": float(2 * (mask & true).sum() / (mask.sum() + true.sum())),
            "fa": float(fa), "fa_truth": expected["regions"][name]["fa"],
            "fa_error": float(fa - expected["regions"][name]["fa"]),
            "fa_weighted": float(fa_weighted),
            "fa_weighted_error": float(fa_weighted - expected["regions"][name]["fa"]),
            "profile_r": r,
        })
    return rows


def main(n_subjects: int = 2) -> dict:
    from msimaging.bids import Study
    from msimaging.datasets import make_synthetic_study
    from msimaging.dti import dti_session, tract_session

    rows, timings = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_study(Path(tmp) / "study", n_subjects=n_subjects, sessions=("M0",))
        truth = json.loads((root / "sourcedata/ground_truth/ground_truth.json").read_text())
        for visit in Study(root):
            sub, ses = visit.participant_id, visit.session_id
            dseg = nib.load(visit.get("dseg"))
            wm = nib.Nifti1Image(
                (np.asanyarray(dseg.dataobj) == 3).astype(np.uint8), dseg.affine
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dti = dti_session(visit.get("dwi"), visit.get("t1w"), wm,
                                  visit.get("lesion_mask"), participant_id=sub, session_id=ses)
            bundles = np.asanyarray(nib.load(
                root / "sourcedata/ground_truth" / sub / ses / "dwi"
                / f"{sub}_{ses}_desc-bundles_dseg.nii.gz").dataobj)
            expected = truth["subjects"][sub]["sessions"][ses]["dwi"]
            for seeding, options in SEEDINGS.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    stage = tract_session(dti, tracts=list(TRACTS), seeding=seeding, **options)
                timings.append({
                    "participant_id": sub, "seeding": seeding,
                    "fit_tensor": dti.seconds["fit_tensor"],
                    "registration": dti.seconds["anat_to_dwi"] + dti.seconds["mni_registration"],
                    "tracking": stage.seconds["tracking"],
                    "metrics": stage.seconds["metrics"],
                })
                rows += _accuracy(stage, bundles, expected, sub, seeding)
    print(f"{'subject':8} {'seeding':7} {'tract':6} {'n':>5} {'Dice':>6} {'FA err':>7} "
          f"{'wFA err':>7} {'prof r':>7}")
    for row in rows:
        print(f"{row['participant_id']:8} {row['seeding']:7} {row['tract']:6} "
              f"{row['n_streamlines']:5d} {row['dice']:6.3f} {row['fa_error']:+7.3f} "
              f"{row['fa_weighted_error']:+7.3f} {row['profile_r']:7.3f}")
    targets = {"dice": 0.6, "fa_abs_error": 0.02, "profile_r": 0.8}
    seconds, met = {}, {}
    for seeding in SEEDINGS:
        mine = [r for r in rows if r["seeding"] == seeding]
        times = [t for t in timings if t["seeding"] == seeding]
        seconds[seeding] = {k: float(np.mean([t[k] for t in times]))
                            for k in ("fit_tensor", "registration", "tracking", "metrics")}
        met[seeding] = {
            "dice": all(r["dice"] >= targets["dice"] for r in mine),
            "fa": all(abs(r["fa_error"]) <= targets["fa_abs_error"] for r in mine),
            "fa_weighted": all(abs(r["fa_weighted_error"]) <= targets["fa_abs_error"]
                               for r in mine),
            "profile_r": all(r["profile_r"] >= targets["profile_r"] for r in mine),
        }
        print(f"{seeding}: mean seconds per visit:",
              {k: round(v, 2) for k, v in seconds[seeding].items()})
        print(f"{seeding}: targets met:", met[seeding])
    payload = {"benchmark": "tract_session", "description": __doc__.strip().splitlines()[0],
               "per_tract": rows, "seconds_per_visit": seconds, "targets": targets,
               "targets_met": met, "machine": machine_info()}
    write_result("tract_session", payload)
    return payload


if __name__ == "__main__":
    main()
