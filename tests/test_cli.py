"""The command line as a new user meets it: demo end to end, inventory, clear failures."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from msimaging.cli import EXIT_DATAERR, EXIT_USAGE, main
from msimaging.datasets import make_example_layout

# The demo runs every stage on a tiny study in a subprocess: a loaded machine can take minutes.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "msimaging", "demo", str(out), "--preset", "tiny",
         "--n-subjects", "2"],
        capture_output=True,
        text=True,
        timeout=850,  # a hang guard (below the module's pytest timeout), not a speed target
    )
    return out, proc


def test_demo_runs_and_writes_derivatives(demo_run):
    out, proc = demo_run
    assert proc.returncode == 0, proc.stderr
    assert "Not yet available" in proc.stdout  # says honestly what is missing
    deriv = out / "derivatives" / "msimaging"
    assert (deriv / "dataset_description.json").exists()
    sessions = pd.read_csv(deriv / "group" / "sessions.tsv", sep="\t")
    assert sessions["months"].tolist() == [0.0, 3.0, 6.0] * 2
    missing = pd.read_csv(deriv / "group" / "missing.tsv", sep="\t")
    assert missing.empty
    dwi = pd.read_csv(deriv / "group" / "dwi_validation.tsv", sep="\t")
    assert len(dwi) == 6 and (dwi["n_b0"] == 2).all()
    truth = pd.read_csv(deriv / "group" / "ground_truth_summary.tsv", sep="\t")
    m0, m6 = truth[truth.months == 0], truth[truth.months == 6]
    ratio = m6["RD_NAWM_left_um2_ms"].to_numpy() / m0["RD_NAWM_left_um2_ms"].to_numpy()
    assert np.allclose(ratio, 0.92, atol=0.01)  # lesions change the NAWM a little
    nawm = pd.read_csv(deriv / "group" / "dti_nawm.tsv", sep="\t")
    assert len(nawm) == 6 * 3 * 4  # visits x (NAWM, left, right) x (fa, md, ad, rd)
    rd = nawm[nawm.metric == "rd"].pivot_table(index="session_id", columns="roi", values="mean")
    # The planted fall of left-NAWM RD shows in the measured tables (tiny grid: coarse).
    assert rd.loc["ses-M6", "NAWM_left"] < rd.loc["ses-M0", "NAWM_left"]
    tracts = pd.read_csv(deriv / "group" / "dti_tracts.tsv", sep="\t")
    assert {"tract", "part", "n_streamlines"} <= set(tracts.columns)
    assert "NAWM radial diffusivity" in proc.stdout
    # fMRI step: every visit's connectome written (BEP017), the planted subnetwork tabulated,
    # the figures of one patient's change drawn.
    relmats = sorted(deriv.glob("sub-*/ses-*/func/*_meas-pearsonz_relmat.tsv"))
    assert len(relmats) == 6
    planted = pd.read_csv(deriv / "group" / "fmri_planted_subnetwork.tsv", sep="\t")
    assert len(planted) == 6 and planted["planted_mean_z"].notna().all()
    for suffix in ("adjacency.png", "connectogram.png", "glassbrain.png", "connectome.html"):
        figure = deriv / "figures" / f"sub-01_desc-changeM6minusM0_{suffix}"
        assert figure.stat().st_size > 10_000, suffix
    # Volumetry step: per-visit tables written, lesion counts equal the planted truth.
    loads = pd.read_csv(deriv / "group" / "volumetry_lesion_load.tsv", sep="\t")
    totals = loads[loads.location == "total"].set_index(["participant_id", "session_id"])
    planted = truth.set_index(["participant_id", "session_id"])["lesions"]
    assert totals["count"].sort_index().tolist() == planted.sort_index().tolist()
    assert len(sorted(deriv.glob("sub-*/ses-*/anat/*_desc-tissue_volumes.tsv"))) == 6
    tracks = pd.read_csv(deriv / "group" / "volumetry_lesion_tracks.tsv", sep="\t")
    assert set(tracks["participant_id"]) == {"sub-01", "sub-02"}
    assert "lesion counts per class equal the planted truth at 6/6 visits" in proc.stdout
    for name in ("sub-02_ses-M6_desc-lesions.png", "group_desc-lesionevolution.png"):
        assert (deriv / "figures" / name).stat().st_size > 10_000, name
    # Headline findings with exact tests, and the study report.
    assert "NAWM_left RD: median change" in proc.stdout and "Friedman exact p" in proc.stdout
    report = (deriv / "report.html").read_text()
    assert 'id="dti"' in report and 'id="clinical"' in report
    assert "Expanded Disability Status Scale" in report


def test_synth_command(tmp_path):
    assert main(["synth", str(tmp_path / "s"), "--preset", "tiny", "--n-subjects", "1",
                 "--sessions", "M0"]) == 0
    assert (tmp_path / "s" / "sourcedata" / "ground_truth" / "ground_truth.json").exists()


def test_demo_is_rerunnable(demo_run):
    out, _ = demo_run
    assert main(["demo", str(out)]) == 0


def test_inventory(tmp_path, capsys):
    root = make_example_layout(tmp_path / "bids", n_subjects=1, sessions=("M0", "M6"))
    assert main(["inventory", str(root)]) == 0
    text = capsys.readouterr().out
    assert "sub-01" in text and "ses-M6" in text and "6.0" in text


def test_inventory_of_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["inventory", str(tmp_path / "nowhere")]) == EXIT_DATAERR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err


def test_no_command_prints_help(capsys):
    assert main([]) == EXIT_USAGE
    assert "demo" in capsys.readouterr().out


def test_example_script_runs():
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "discover_study.py"
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("DWI(") == 6
