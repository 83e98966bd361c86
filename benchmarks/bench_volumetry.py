"""Per-visit volumetry time on the default synthetic study, against reading its two images.

Uses an existing default study (``--study PATH``) or generates one into a temporary directory
(5 subjects x M0/M3/M6). Per visit, best of 3 repeats (``time.perf_counter``), the public
functions of :mod:`msimaging.volumetry` on the file paths, with their defaults
(``labels=None``: the convention read from the study's ``dseg.tsv``): :func:`tissue_volumes`
(dseg + lesion mask), :func:`lesion_table` and :func:`classify_lesions` (lesion mask + dseg) as a
breakdown, and the stage as the demo runs
it: :func:`volumetry_session` (all three from one lesion table) plus, per subject,
:func:`match_lesions` over the visits' lesion masks divided by the number of visits (a
per-visit share); that sum is the "total". The anchor, in the same run: reading the dseg and
the lesion mask with nibabel into numpy arrays (``np.asanyarray(nib.load(p).dataobj)``). The
ratio total / read says how many times the bare I/O the volumetry stage costs. Also checks the
results against the ground truth: tissue volumes to
1e-6 mL and lesion counts per location class.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from benchmarks._machine import machine_info, write_result

REPEATS = 3
TOLERANCE_ML = 1e-6
#: tissue_volumes region -> ground-truth key in ``tissue_volumes_ml``.
TISSUE_TRUTH = {
    "brain": "brain",
    "cortical_gm": "cortical GM",
    "deep_gm": "deep GM",
    "wm": "WM",
    "nawm": "NAWM",
    "abnormal_wm": "WM lesion",
    "icv": "ICV",
}
STAGES = (
    "tissue_volumes", "lesion_table", "classify_lesions", "volumetry_session",
    "match_lesions_share",
)


def _best(function: Callable[[], Any], repeats: int = REPEATS) -> tuple[float, Any, int]:
    """Best wall time of ``repeats`` calls, the last result and the number of warnings."""
    best, result, n_warnings = float("inf"), None, 0
    for _ in range(repeats):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            result = function()
            best = min(best, time.perf_counter() - start)
        n_warnings = len(caught)
    return best, result, n_warnings


def _read(dseg: Path, lesion: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.asanyarray(nib.load(dseg).dataobj), np.asanyarray(nib.load(lesion).dataobj)


def _visits(root: Path) -> dict[str, dict[str, tuple[Path, Path]]]:
    """sub -> ses -> (dseg, lesion mask), from ``derivatives/segmentation``."""
    out: dict[str, dict[str, tuple[Path, Path]]] = {}
    for dseg in sorted((root / "derivatives" / "segmentation").glob(
            "sub-*/ses-*/anat/sub-*_ses-*_dseg.nii.gz")):
        sub, ses = dseg.parts[-4], dseg.parts[-3]
        lesion = dseg.with_name(f"{sub}_{ses}_label-lesion_mask.nii.gz")
        out.setdefault(sub, {})[ses] = (dseg, lesion)
    return out


def _check(tissue: pd.DataFrame, classes: pd.DataFrame, truth: dict) -> dict[str, Any]:
    """Compare one visit's tissue volumes and lesion counts with the ground truth."""
    volumes = tissue.set_index("region")["volume_ml"]
    expected = truth["tissue_volumes_ml"]
    errors = {r: float(volumes[r] - expected[k]) for r, k in TISSUE_TRUTH.items()}
    counts = classes.set_index("location")["count"]
    lesions = truth["lesions"]
    truth_counts = {c: int(v["count"]) for c, v in lesions["by_class"].items()}
    truth_counts["total"] = int(lesions["count"])
    count_diff = {c: int(counts.get(c, 0)) - n for c, n in truth_counts.items()}
    return {
        "max_abs_volume_error_ml": max(abs(e) for e in errors.values()),
        "volumes_match": all(abs(e) <= TOLERANCE_ML for e in errors.values()),
        "lesion_counts_match": all(d == 0 for d in count_diff.values()),
        "volume_errors_ml": errors,
        "lesion_count_differences": count_diff,
    }


def main(study: str | Path | None = None, repeats: int = REPEATS) -> dict:
    from msimaging.volumetry import (
        classify_lesions,
        lesion_table,
        match_lesions,
        tissue_volumes,
        volumetry_session,
    )

    load_before = os.getloadavg()
    generation_s = None
    with tempfile.TemporaryDirectory() as tmp:
        if study is None:
            from msimaging.datasets import make_synthetic_study

            start = time.perf_counter()
            root = make_synthetic_study(Path(tmp) / "study", preset="default")
            generation_s = time.perf_counter() - start
        else:
            root = Path(study)
        truth = json.loads((root / "sourcedata/ground_truth/ground_truth.json").read_text())
        rows = []
        for sub, sessions in _visits(root).items():
            masks = {ses: lesion for ses, (_, lesion) in sessions.items()}
            match_s, tracks, match_warn = _best(lambda m=masks: match_lesions(m), repeats)
            for ses, (dseg, lesion) in sessions.items():
                read_s, _, _ = _best(lambda d=dseg, m=lesion: _read(d, m), repeats)
                tissue_s, tissue, tissue_warn = _best(
                    lambda d=dseg, m=lesion: tissue_volumes(d, m), repeats)
                table_s, table, table_warn = _best(
                    lambda d=dseg, m=lesion: lesion_table(m, d), repeats)
                class_s, classes, class_warn = _best(
                    lambda d=dseg, m=lesion: classify_lesions(m, d), repeats)
                session_s, _, session_warn = _best(
                    lambda d=dseg, m=lesion: volumetry_session(d, m), repeats)
                seconds = {
                    "tissue_volumes": tissue_s,
                    "lesion_table": table_s,
                    "classify_lesions": class_s,
                    "volumetry_session": session_s,
                    "match_lesions_share": match_s / len(sessions),
                }
                # The stage as the demo/pipeline runs it: one volumetry_session per visit
                # (volumes, lesion table, load from them) + its share of the subject's tracks.
                total = session_s + match_s / len(sessions)
                check = _check(tissue, classes, truth["subjects"][sub]["sessions"][ses])
                rows.append({
                    "participant_id": sub, "session_id": ses,
                    "read_seconds": read_s, **{f"{k}_seconds": v for k, v in seconds.items()},
                    "total_seconds": total, "ratio_total_over_read": total / read_s,
                    "n_lesions_table": len(table), "n_tracks_subject": len(tracks),
                    "n_warnings": tissue_warn + table_warn + class_warn + match_warn
                    + session_warn,
                    **check,
                })
                print(f"  {sub} {ses}: read {read_s * 1e3:.1f} ms, total {total * 1e3:.1f} ms",
                      flush=True)
    load_after = os.getloadavg()

    frame = pd.DataFrame(rows)
    timing = ["read_seconds", *(f"{s}_seconds" for s in STAGES), "total_seconds"]
    shown = frame[["participant_id", "session_id"]].copy()
    for column in timing:
        shown[column.removesuffix("_seconds") + "_ms"] = frame[column] * 1e3
    shown["ratio"] = frame["ratio_total_over_read"]
    shown["truth_ok"] = frame["volumes_match"] & frame["lesion_counts_match"]
    medians = {c: float(frame[c].median()) for c in timing}
    median_row = {"participant_id": "median", "session_id": ""}
    median_row.update({c.removesuffix("_seconds") + "_ms": medians[c] * 1e3 for c in timing})
    median_row.update(ratio=float(frame["ratio_total_over_read"].median()),
                      truth_ok=bool(shown["truth_ok"].all()))
    shown = pd.concat([shown, pd.DataFrame([median_row])], ignore_index=True)
    with pd.option_context("display.width", 200):
        print(shown.round(2).to_string(index=False))

    summary = {
        "n_visits": len(frame),
        "repeats": repeats,
        "median_seconds_per_visit": {c.removesuffix("_seconds"): v for c, v in medians.items()},
        "ratio_total_over_read_median": float(frame["ratio_total_over_read"].median()),
        "ratio_median_total_over_median_read": medians["total_seconds"] / medians["read_seconds"],
        "ratio_total_over_read_min": float(frame["ratio_total_over_read"].min()),
        "ratio_total_over_read_max": float(frame["ratio_total_over_read"].max()),
        "visits_volumes_match_truth": int(frame["volumes_match"].sum()),
        "visits_lesion_counts_match_truth": int(frame["lesion_counts_match"].sum()),
        "max_abs_volume_error_ml": float(frame["max_abs_volume_error_ml"].max()),
        "n_warnings": int(frame["n_warnings"].sum()),
        "volume_tolerance_ml": TOLERANCE_ML,
        "generation_seconds": generation_s,
        "load_average_1_5_15_min": {"before": list(load_before), "after": list(load_after)},
    }
    print(json.dumps(summary, indent=1))
    payload = {
        "benchmark": "volumetry",
        "description": __doc__.strip().splitlines()[0],
        "study": "generated (preset default)" if study is None else str(Path(study).resolve()),
        "anchor": "nibabel read of dseg + lesion mask into numpy arrays",
        "summary": summary,
        "per_visit": rows,
        "machine": machine_info(),
    }
    write_result("volumetry", payload)
    return payload


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--study", type=Path, default=None,
                        help="existing default synthetic study (default: generate one)")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    arguments = parser.parse_args()
    main(arguments.study, arguments.repeats)
