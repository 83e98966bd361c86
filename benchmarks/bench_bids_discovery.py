"""BIDS discovery: msimaging.bids.Study against pybids BIDSLayout (the anchor), same run.

Generates a placeholder tree (empty image files) of 200 subjects x 5 sessions with raw,
fMRIPrep-style and segmentation derivatives, times ``Study(root)`` (best of 3), and times
``BIDSLayout(root, validate=False, derivatives=True)`` in a fresh process on a 20 x 5 subset
(and on the full tree when that is projected to finish within about 3 minutes). The ratio is
pybids seconds per session / msimaging seconds per session.

Run: ``python -m benchmarks bids_discovery`` or ``python -m benchmarks.bench_bids_discovery``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from benchmarks._machine import write_result
except ModuleNotFoundError:  # run as a plain script: python benchmarks/bench_bids_discovery.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks._machine import write_result

from msimaging.bids import Study
from msimaging.datasets.layout import make_example_layout

SESSIONS = ("M0", "M3", "M6", "M12", "M24")
N_SUBJECTS_FULL = 200
N_SUBJECTS_SUBSET = 20
REPEATS = 3
PYBIDS_FULL_LIMIT_S = 180.0

_PYBIDS_CHILD = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from bids import BIDSLayout
start = time.perf_counter()
layout = BIDSLayout(sys.argv[1], validate=False, derivatives=True)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "files": len(layout.get(return_type="filename"))}))
"""


def _make_tree(root: Path, n_subjects: int) -> tuple[Path, float]:
    start = time.perf_counter()
    make_example_layout(
        root, n_subjects=n_subjects, sessions=SESSIONS, images=False, qsiprep=False
    )
    return root, time.perf_counter() - start


def _time_study(root: Path) -> tuple[float, Study]:
    best = float("inf")
    study = None
    for _ in range(REPEATS):
        start = time.perf_counter()
        study = Study(root)
        best = min(best, time.perf_counter() - start)
    assert study is not None
    return best, study


def _time_pybids(root: Path, timeout_s: float) -> dict | None:
    """Seconds for BIDSLayout in a fresh process (import excluded), or None on timeout."""
    try:
        completed = subprocess.run(
            [sys.executable, "-c", _PYBIDS_CHILD, str(root)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
    except subprocess.TimeoutExpired:
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> dict:
    with tempfile.TemporaryDirectory(prefix="msimaging-bench-bids-") as folder:
        full_root, full_make_s = _make_tree(Path(folder) / "full", N_SUBJECTS_FULL)
        subset_root, _ = _make_tree(Path(folder) / "subset", N_SUBJECTS_SUBSET)

        study_full_s, study = _time_study(full_root)
        n_full = len(study)
        n_files = sum(len(paths) for session in study for paths in session.files.values())
        import pandas  # noqa: F401 - keep the one-off pandas import out of the table timing

        start = time.perf_counter()
        study.sessions  # noqa: B018 - time building the table as well
        table_s = time.perf_counter() - start
        study_subset_s, subset_study = _time_study(subset_root)
        n_subset = len(subset_study)

        pybids_subset = _time_pybids(subset_root, timeout_s=600.0)
        assert pybids_subset is not None
        projected_full_s = pybids_subset["seconds"] * n_full / n_subset
        pybids_full = None
        if projected_full_s <= 1.5 * PYBIDS_FULL_LIMIT_S:
            pybids_full = _time_pybids(full_root, timeout_s=PYBIDS_FULL_LIMIT_S)

    ours_per_session = study_full_s / n_full
    ratio_subset = (pybids_subset["seconds"] / n_subset) / (study_subset_s / n_subset)
    ratio_full = pybids_full["seconds"] / study_full_s if pybids_full else None
    payload = {
        "benchmark": "bids_discovery",
        "description": (
            "Study(root) vs pybids BIDSLayout(root, validate=False, derivatives=True) on a "
            "placeholder BIDS tree (raw + fmriprep + segmentation), 5 sessions per subject"
        ),
        "msimaging": {
            "sessions": n_full,
            "files_classified": n_files,
            "seconds_best_of_3": study_full_s,
            "seconds_per_session": ours_per_session,
            "sessions_table_seconds": table_s,
            "subset_sessions": n_subset,
            "subset_seconds_best_of_3": study_subset_s,
            "tree_generation_seconds": full_make_s,
        },
        "pybids": {
            "subset_sessions": n_subset,
            "subset_seconds": pybids_subset["seconds"],
            "subset_files_indexed": pybids_subset["files"],
            "seconds_per_session": pybids_subset["seconds"] / n_subset,
            "full_sessions": n_full,
            "full_seconds": pybids_full["seconds"] if pybids_full else None,
            "full_note": (
                "measured"
                if pybids_full
                else f"not run to the end (projected {projected_full_s:.0f} s, limit "
                f"{PYBIDS_FULL_LIMIT_S:.0f} s)"
            ),
        },
        "ratio_pybids_over_msimaging_per_session": {
            "same_100_session_tree": ratio_subset,
            "full_tree": ratio_full,
            "pybids_subset_vs_msimaging_full": (pybids_subset["seconds"] / n_subset)
            / ours_per_session,
        },
    }
    path = write_result("bids_discovery", payload)

    rows = [
        ("msimaging Study", n_full, study_full_s),
        ("msimaging Study", n_subset, study_subset_s),
        ("pybids BIDSLayout", n_subset, pybids_subset["seconds"]),
    ]
    if pybids_full:
        rows.append(("pybids BIDSLayout", n_full, pybids_full["seconds"]))
    print(f"{'tool':<20}{'sessions':>10}{'seconds':>12}{'ms/session':>13}")
    for tool, sessions, seconds in rows:
        print(f"{tool:<20}{sessions:>10}{seconds:>12.3f}{1000 * seconds / sessions:>13.3f}")
    print(f"ratio pybids/msimaging per session, same {n_subset}-session tree: {ratio_subset:.0f}x")
    if ratio_full:
        print(f"ratio pybids/msimaging, full {n_full}-session tree: {ratio_full:.0f}x")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
