"""Session-scoped fixtures: the synthetic studies every module is tested against."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """The tiny preset, 5 subjects x M0/M3/M6, default effects (seed 0)."""
    from msimaging.datasets import make_synthetic_study

    root = make_synthetic_study(tmp_path_factory.mktemp("tiny") / "study", preset="tiny")
    truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    return root, truth


@pytest.fixture(scope="session")
def noise_free_dti(noise_free_study):
    """The DTI stage of the noise-free study's first visit (``dti_session`` with its dseg and
    lesion mask), shared by the tract-model test modules: (BIDS visit, DTISession)."""
    import warnings

    from msimaging.bids import Study
    from msimaging.dti import dti_session

    root, _ = noise_free_study
    visit = next(iter(Study(root)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dti = dti_session(visit.get("dwi"), visit.get("t1w"), seg=visit.get("dseg"),
                          lesion_mask=visit.get("lesion_mask"),
                          participant_id=visit.participant_id, session_id=visit.session_id)
    return visit, dti


@pytest.fixture(scope="session")
def noise_free_study(tmp_path_factory):
    """One subject, three visits, noise-free DWI signals: fits must reproduce the truth."""
    from msimaging.datasets import make_synthetic_study

    root = make_synthetic_study(
        tmp_path_factory.mktemp("noisefree") / "study", n_subjects=1, preset="tiny", snr=None
    )
    truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    return root, truth


@pytest.fixture(scope="session")
def snr20_study(tmp_path_factory):
    """Two subjects, M0/M3/M6, DWI at SNR 20 (the DTI acceptance condition), tiny grids."""
    from msimaging.datasets import make_synthetic_study

    root = make_synthetic_study(
        tmp_path_factory.mktemp("snr20") / "study", n_subjects=2, preset="tiny", snr=20.0,
        seed=1,
    )
    truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    return root, truth


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """``msimaging demo --preset tiny --n-subjects 2`` run once in a subprocess: (output folder,
    CompletedProcess). Shared by the CLI, BIDS-validator, report and QC tests; request it from
    a module marked ``pytest.mark.timeout(900)`` (a loaded machine can take minutes)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "msimaging", "demo", str(out), "--preset", "tiny",
         "--n-subjects", "2"],
        capture_output=True,
        text=True,
        timeout=850,  # a hang guard (below the modules' pytest timeout), not a speed target
    )
    return out, proc
