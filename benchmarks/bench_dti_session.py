"""The per-visit DTI stage on the default synthetic study at SNR 20: time and accuracy.

Generates the default study (5 subjects x M0/M3/M6, DWI 2.5 mm, 6 b0 + 30 directions, SNR 20),
runs :func:`msimaging.dti.dti_session` on every visit (WLS fit, T1w->DWI rigid, MNI->T1w
affine, NAWM regions) and compares with the planted truth:

- NAWM left/right mean FA (absolute error; target ±0.01) and MD (relative; target ±1%);
- the planted left-NAWM RD change (−4% at M3, −8% at M6; target within ±1 point) and no change
  in the right NAWM (target within ±1 point).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._machine import machine_info, write_result


def _mean(table, roi, metric) -> float:
    return float(table[(table.roi == roi) & (table.metric == metric)]["mean"].iloc[0])


def main(n_subjects: int = 5) -> dict:
    import json

    from msimaging.bids import Study
    from msimaging.datasets import make_synthetic_study
    from msimaging.dti import dti_session

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = make_synthetic_study(Path(tmp) / "study", n_subjects=n_subjects, snr=20.0)
        generation_s = time.perf_counter() - start
        truth = json.loads((root / "sourcedata/ground_truth/ground_truth.json").read_text())
        results = {}
        for visit in Study(root):
            start = time.perf_counter()
            result = dti_session(
                visit.get("dwi"), visit.get("t1w"), seg=visit.get("dseg"),
                lesion_mask=visit.get("lesion_mask"),
                participant_id=visit.participant_id, session_id=visit.session_id,
            )
            results[(visit.participant_id, visit.session_id)] = (
                result, time.perf_counter() - start
            )
            print(f"  {visit.name}: {results[(visit.participant_id, visit.session_id)][1]:.1f} s",
                  flush=True)

    rows, changes = [], []
    for (sub, ses), (result, _) in results.items():
        expected = truth["subjects"][sub]["sessions"][ses]["dwi"]["regions"]
        for roi in ("NAWM_left", "NAWM_right"):
            rows.append({
                "participant_id": sub, "session_id": ses, "roi": roi,
                "fa_error": _mean(result.table, roi, "fa") - expected[roi]["fa"],
                "md_error_pct": 100 * (_mean(result.table, roi, "md") / expected[roi]["md"] - 1),
            })
        if ses != "ses-M0":
            base = results[(sub, "ses-M0")][0].table
            planted = 100 * (
                expected["NAWM_left"]["rd"]
                / truth["subjects"][sub]["sessions"]["ses-M0"]["dwi"]["regions"]["NAWM_left"]["rd"]
                - 1
            )
            for roi in ("NAWM_left", "NAWM_right"):
                measured = 100 * (_mean(result.table, roi, "rd") / _mean(base, roi, "rd") - 1)
                target = planted if roi == "NAWM_left" else 0.0
                changes.append({
                    "participant_id": sub, "session_id": ses, "roi": roi,
                    "rd_change_pct": measured, "planted_pct": target,
                    "error_points": measured - target,
                })
    steps = {}
    for result, _ in results.values():
        for step, seconds in result.seconds.items():
            steps.setdefault(step, []).append(seconds)
    per_visit = [seconds for _, seconds in results.values()]
    summary = {
        "max_abs_fa_error": max(abs(r["fa_error"]) for r in rows),
        "max_abs_md_error_pct": max(abs(r["md_error_pct"]) for r in rows),
        "max_abs_rd_change_error_points": max(abs(c["error_points"]) for c in changes),
        "per_visit_seconds_mean": float(np.mean(per_visit)),
        "per_visit_seconds_max": float(np.max(per_visit)),
        "step_seconds_mean": {k: float(np.mean(v)) for k, v in steps.items()},
        "generation_seconds": generation_s,
        "targets": {"fa_abs": 0.01, "md_pct": 1.0, "rd_change_points": 1.0},
    }
    print(json.dumps(summary, indent=2))
    for c in changes:
        print(f"  {c['participant_id']} {c['session_id']} {c['roi']:10s} RD change "
              f"{c['rd_change_pct']:+.2f}% (planted {c['planted_pct']:+.2f}%)")
    payload = {
        "benchmark": "dti_session",
        "description": __doc__.strip().splitlines()[0],
        "summary": summary,
        "nawm_accuracy": rows,
        "rd_changes": changes,
        "machine": machine_info(),
    }
    write_result("dti_session", payload)
    return payload


if __name__ == "__main__":
    main()
