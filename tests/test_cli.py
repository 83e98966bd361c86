"""The command line as a new user meets it: demo end to end, inventory, clear failures."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from msimaging.cli import EXIT_BIDS, EXIT_USAGE, main
from msimaging.datasets import make_example_layout

# The demo runs every stage on a tiny study in a subprocess: a loaded machine can take minutes.
pytestmark = pytest.mark.timeout(900)


def test_tiny_demos_and_writes_derivatives(tiny_demo):
    out, proc = tiny_demo
    assert proc.returncode == 0, proc.stderr
    deriv = out / "derivatives" / "msimaging"
    assert (deriv / "dataset_description.json").exists()
    sessions = pd.read_csv(deriv / "group" / "visits.tsv", sep="\t")
    assert sessions["months"].tolist() == [0.0, 3.0, 6.0] * 2
    tasks = pd.read_csv(deriv / "group" / "participant_tasks.tsv", sep="\t")
    assert len(tasks) == 6 * 3 and (tasks["status"] == "done").all()
    assert (deriv / "failures.tsv").read_text().startswith("participant_id")
    assert len(pd.read_csv(deriv / "failures.tsv", sep="\t")) == 0
    nawm = pd.read_csv(deriv / "group" / "dti_nawm.tsv", sep="\t")
    assert len(nawm) == 6 * 3 * 4  # visits x (NAWM, left, right) x (fa, md, ad, rd)
    rd = nawm[nawm.metric == "rd"].pivot_table(index="session_id", columns="roi", values="mean")
    # The planted fall of left-NAWM RD shows in the measured tables (tiny grid: coarse).
    assert rd.loc["ses-M6", "NAWM_left"] < rd.loc["ses-M0", "NAWM_left"]
    tracts = pd.read_csv(deriv / "group" / "dti_tracts.tsv", sep="\t")
    assert {"tract", "part", "n_streamlines", "months"} <= set(tracts.columns)
    relmats = sorted(deriv.glob("sub-*/ses-*/func/*_meas-pearsonz_relmat.tsv"))
    assert len(relmats) == 6
    # Volumetry: per-visit tables written, lesion counts and categories equal the truth.
    loads = pd.read_csv(deriv / "group" / "volumetry_lesion_load.tsv", sep="\t")
    assert len(loads) == 6 * 5
    assert "lesion counts per class equal the planted truth at 6/6 visits" in proc.stdout
    assert "lesion evolution categories equal the planted ones" in proc.stdout
    assert len(sorted(deriv.glob("sub-*/ses-*/anat/*_desc-tissue_volumes.tsv"))) == 6
    assert (deriv / "figures" / "group_desc-lesionevolution.png").stat().st_size > 10_000
    # Two patients are too few for the NBS: said, not hidden.
    assert "NBS skipped" in proc.stdout
    # Headline findings with exact tests, and the study report.
    assert "NAWM_left RD: median change" in proc.stdout and "Friedman exact p" in proc.stdout
    report = (deriv / "report.html").read_text()
    assert 'id="dti"' in report and 'id="clinical"' in report
    assert "Expanded Disability Status Scale" in report
    assert "Times: study generation" in proc.stdout
    # One MNI registration per subject, and nothing of its file lock left behind.
    assert len(sorted(deriv.glob("sub-*/anat/*_from-MNI152NLin2009cAsym_to-T1w_*xfm.txt"))) == 2
    assert not sorted(deriv.rglob("*.lock")), sorted(deriv.rglob("*.lock"))


def test_synth_command(tmp_path):
    assert main(["synth", str(tmp_path / "s"), "--preset", "tiny", "--n-subjects", "1",
                 "--sessions", "M0"]) == 0
    assert (tmp_path / "s" / "sourcedata" / "ground_truth" / "ground_truth.json").exists()


def test_demo_is_rerunnable_and_skips_finished_work(tiny_demo, capsys):
    out, _ = tiny_demo
    assert main(["demo", str(out), "--preset", "tiny", "--n-subjects", "2"]) == 0
    tasks = pd.read_csv(out / "derivatives" / "msimaging" / "group" / "participant_tasks.tsv",
                        sep="\t")
    assert (tasks["status"] == "skipped").all()


def test_inventory(tmp_path, capsys):
    root = make_example_layout(tmp_path / "bids", n_subjects=1, sessions=("M0", "M6"))
    assert main(["inventory", str(root)]) == 0
    text = capsys.readouterr().out
    assert "sub-01" in text and "ses-M6" in text and "6.0" in text


def test_inventory_of_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["inventory", str(tmp_path / "nowhere")]) == EXIT_BIDS
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err


def test_no_command_prints_help(capsys):
    assert main([]) == EXIT_USAGE
    text = capsys.readouterr().out
    assert "participant" in text and "msimaging demo" in text and "exit codes" in text


def test_help_explains_the_bids_app(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for words in ("BIDS_DIR", "OUTPUT_DIR", "--participant-label", "--n-workers",
                  "--scheduler", "--force", "failures.tsv"):
        assert words in text, words


def test_usage_error_exits_64(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["a", "b", "everything"])
    assert stop.value.code == EXIT_USAGE


def test_example_script_runs():
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "discover_study.py"
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("DWI(") == 6
