"""The BIDS pipeline: Dask execution, resuming after SIGKILL, failure isolation, safe labels.

Each test copies the session-scoped tiny study (the input is never modified) and runs only
what it needs: fMRI and volumetry are fast; DTI is included where the test is about it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from msimaging.cli import EXIT_LABEL, EXIT_TASKS_FAILED, main
from msimaging.derivatives import read_table
from msimaging.errors import InputError, MSImagingWarning
from msimaging.pipeline import run_group, run_participant

pytestmark = pytest.mark.timeout(900)


def _copy(tiny_study, tmp_path, subjects=("sub-01", "sub-02")) -> Path:
    """A copy of the tiny study with some of its subjects (raw, derivatives, phenotype)."""
    src, _ = tiny_study
    dst = tmp_path / "study"

    def ignore(folder, names):
        return [n for n in names if n.startswith("sub-") and n not in subjects
                and os.path.isdir(os.path.join(folder, n))]

    shutil.copytree(src, dst, ignore=ignore)
    return dst


def _valid_outputs(output: Path) -> int:
    """Every provenance record's outputs exist with their recorded size and load."""
    checked = 0
    for prov in output.glob("sub-*/ses-*/*_provenance.json"):
        record = json.loads(prov.read_text())
        for out in record["outputs"]:
            path = Path(out["path"])
            assert path.stat().st_size == out["size"], path
            if path.name.endswith(".nii.gz"):
                nib.load(path).get_fdata()
            elif path.suffix == ".tsv":
                read_table(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            checked += 1
    assert not list(output.rglob(".*.tmp.*")), "temporary files left behind"
    return checked


def test_local_cluster_two_workers_and_scheduler_address(tiny_study, tmp_path):
    from distributed import LocalCluster

    bids = _copy(tiny_study, tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        run = run_participant(bids, tmp_path / "out", modalities=["fmri", "volumetry"],
                              scheduler=cluster.scheduler_address, progress=False)
        assert run.ok, run.failures.to_string()
        assert (run.tasks["status"] == "done").all() and len(run.tasks) == 12
        # The same through the command line, --scheduler to that cluster: all up to date.
        code = main([str(bids), str(tmp_path / "out"), "participant", "--modalities", "fmri",
                     "volumetry", "--scheduler", cluster.scheduler_address, "--no-progress"])
        assert code == 0
    tasks = pd.read_csv(tmp_path / "out" / "group" / "participant_tasks.tsv", sep="\t")
    assert (tasks["status"] == "skipped").all()
    # An embedded cluster of 2 workers, forced: every task recomputed on it.
    run = run_participant(bids, tmp_path / "out", modalities=["volumetry"], n_workers=2,
                          force=True, progress=False)
    assert run.n_workers == 2 and (run.tasks["status"] == "done").all()
    assert _valid_outputs(tmp_path / "out") > 0
    # The group level on what the participant level wrote.
    group = run_group(bids, tmp_path / "out", progress=False, n_permutations=100)
    assert {"volumetry_tissue", "volumetry_lesion_load", "volumetry_lesion_tracks",
            "excluded"} <= set(group.tables)
    assert group.report is not None and group.report.stat().st_size > 10_000
    assert any("NBS skipped" in n for n in group.notes)  # 2 subjects < 3
    # joblib's worker processes (lesion-track registrations, QC pages) do not outlive it
    # (loky's one resource tracker stays with our process, as it does for any joblib user).
    import psutil

    def command(process) -> str:
        try:
            return " ".join(process.cmdline())
        except psutil.Error:  # ended (or a zombie) since it was listed: not a live worker
            return ""

    loky = [c for c in map(command, psutil.Process().children(recursive=True))
            if "loky" in c and "resource_tracker" not in c]
    assert not loky, loky


def test_sigkill_then_restart_skips_finished_work(tiny_study, tmp_path):
    bids = _copy(tiny_study, tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "msimaging", str(bids), str(out), "participant",
           "--n-workers", "1", "--no-progress", "--modalities", "volumetry", "fmri", "dti"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    # Kill once a few tasks (fMRI and volumetry are fast, DTI slower) have finished.
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(out.glob("sub-*/ses-*/*_provenance.json"))) >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name for p in out.glob("sub-*/ses-*/*_provenance.json")}
    assert 4 <= len(finished) < 18
    _valid_outputs(out)
    code = main([str(bids), str(out), "participant", "--n-workers", "1", "--no-progress",
                 "--modalities", "volumetry", "fmri", "dti"])
    assert code == 0
    tasks = pd.read_csv(out / "group" / "participant_tasks.tsv", sep="\t")
    assert (tasks["status"] == "skipped").sum() == len(finished)
    assert (tasks["status"] == "done").sum() == 18 - len(finished)
    assert _valid_outputs(out) > 0
    assert len(list(out.glob("sub-*/ses-*/*_provenance.json"))) == 18


def test_broken_visits_are_recorded_and_the_rest_completes(tiny_study, tmp_path):
    bids = _copy(tiny_study, tmp_path, subjects=("sub-01", "sub-02", "sub-03"))
    dwi = bids / "sub-02" / "ses-M3" / "dwi" / "sub-02_ses-M3_dwi.nii.gz"
    data = dwi.read_bytes()
    dwi.write_bytes(data[: len(data) // 3])  # truncated
    func = bids / "derivatives" / "fmriprep" / "sub-03" / "ses-M6" / "func"
    for bold in func.glob("*desc-preproc_bold.nii.gz"):
        bold.unlink()  # missing BOLD
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--n-workers", "2", "--no-progress"])
    assert code == EXIT_TASKS_FAILED
    failures = pd.read_csv(out / "failures.tsv", sep="\t")
    assert sorted(zip(failures.participant_id, failures.session_id, failures.modality,
                      strict=True)) == [("sub-02", "ses-M3", "dti"), ("sub-03", "ses-M6", "fmri")]
    assert failures["message"].str.len().min() > 10 and failures["error_type"].notna().all()
    tasks = pd.read_csv(out / "group" / "participant_tasks.tsv", sep="\t")
    assert (tasks["status"] == "done").sum() == 27 - 2
    log = next((out / "logs").glob("*_participant.log")).read_text()
    assert "sub-02 ses-M3 dti: failed" in log and "Traceback" in log
    group = run_group(bids, out, progress=False, n_permutations=100)
    excluded = group.excluded
    assert len(excluded) == 2 and excluded["reason"].str.startswith("failed").all()
    nawm = pd.read_csv(out / "group" / "dti_nawm.tsv", sep="\t")
    assert ("sub-02", "ses-M3") not in set(zip(nawm.participant_id, nawm.session_id,
                                               strict=True))
    # sub-03 lost its M6 connectome: 2 patients left, too few for the NBS, and it says so.
    assert group.nbs is None and any("NBS skipped: 2 subjects" in n for n in group.notes)


@pytest.mark.parametrize("label", ["../../x", "01/..", "sub-0 1", "x;rm"])
def test_unsafe_labels_are_refused(tiny_study, tmp_path, label, capsys):
    bids = _copy(tiny_study, tmp_path, subjects=("sub-01",))
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--participant-label", label])
    assert code == EXIT_LABEL
    assert "not a valid BIDS label" in capsys.readouterr().err
    assert not out.exists() or not any(out.rglob("*.tsv"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="letters and digits"):
        run_participant(bids, out, session_label=[label])


def test_unknown_participant_and_output_inside_input(tiny_study, tmp_path, capsys):
    bids = _copy(tiny_study, tmp_path, subjects=("sub-01",))
    assert main([str(bids), str(tmp_path / "o"), "participant", "--participant-label",
                 "99"]) == EXIT_LABEL
    assert "sub-99" in capsys.readouterr().err
    assert main([str(bids), str(bids / "derivatives" / "msimaging"), "participant"]) == 18


def test_config_file_parameters_are_part_of_provenance(tiny_study, tmp_path):
    bids = _copy(tiny_study, tmp_path, subjects=("sub-01",))
    out = tmp_path / "out"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"fmri": {"strategy": "simple"}}))
    args = [str(bids), str(out), "participant", "--modalities", "fmri", "--n-workers", "1",
            "--no-progress", "--config", str(config)]
    assert main(args) == 0
    assert main(args) == 0
    tasks = pd.read_csv(out / "group" / "participant_tasks.tsv", sep="\t")
    assert (tasks["status"] == "skipped").all()
    config.write_text(json.dumps({"fmri": {"strategy": "simple", "kind": "covariance"}}))
    assert main(args) == 0
    tasks = pd.read_csv(out / "group" / "participant_tasks.tsv", sep="\t")
    assert (tasks["status"] == "done").all()  # new parameters: recomputed
    config.write_text(json.dumps({"tractography": {}}))
    assert main(args) == 64  # an unknown config section is a usage error, like unknown keys


def test_warnings_raised_in_tasks_are_said_in_the_main_process(tiny_study, tmp_path,
                                                               monkeypatch):
    """A warning inside a task (e.g. the atlas lookup missing in a worker) is recorded in the
    task table and said once by the main process, with where to read all of them."""
    import warnings

    from msimaging.pipeline import tasks

    bids = _copy(tiny_study, tmp_path, subjects=("sub-01",))
    real = tasks._RUNNERS["volumetry"]

    def warn_then_run(*args):
        warnings.warn("AAL3 lookup unavailable: labels fall back to ROI numbers", UserWarning,
                      stacklevel=1)
        return real(*args)

    monkeypatch.setitem(tasks._RUNNERS, "volumetry", warn_then_run)
    with pytest.warns(MSImagingWarning) as said:
        run = run_participant(bids, tmp_path / "out", modalities=["volumetry"], n_workers=1,
                              progress=False)
    assert (run.tasks["status"] == "done").all()
    assert run.tasks["message"].str.contains("AAL3 lookup unavailable").all()
    texts = [str(w.message) for w in said if issubclass(w.category, MSImagingWarning)]
    assert any(f"{len(run.tasks)} of {len(run.tasks)} finished tasks raised warnings" in m
               and "AAL3 lookup unavailable" in m and "participant_tasks.tsv" in m
               for m in texts), texts
