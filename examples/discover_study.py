"""Discover a BIDS study, list what each visit holds, and validate its diffusion data.

Usage::

    python examples/discover_study.py [BIDS_DIR]

Without an argument, a small example dataset is generated in a temporary folder.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from msimaging.bids import Study
from msimaging.datasets import make_example_layout
from msimaging.errors import InputError
from msimaging.io import load_dwi


def main(bids_dir: Path) -> None:
    study = Study(bids_dir)
    print(study)
    print(study.sessions[["participant_id", "session_id", "months", "months_source"]])
    print("\nMissing pieces:\n", study.missing())
    for visit in study:
        if not visit.has("dwi"):
            continue
        try:
            print(load_dwi(visit.get("dwi")))
        except InputError as exc:  # one bad visit never stops the others
            print(f"skipped {visit.name}: {exc}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(make_example_layout(Path(tmp) / "bids", missing=[("02", "M3", "bold_preproc")]))
