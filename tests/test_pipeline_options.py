"""Options checked before any work, input choice by BIDS entities, one scan per run, inventory.

Every bad-option case must stop with its exit code and a message naming the culprit before
any task runs: no output folder content (no failures.tsv, no provenance) is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from msimaging.cli import EXIT_DATAERR, EXIT_LABEL, EXIT_USAGE, build_app_parser, main
from msimaging.datasets import make_example_layout
from msimaging.derivatives import DerivativesLayout
from msimaging.pipeline import plan_tasks
from msimaging.pipeline.inputs import InputChoiceError, inventory

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def layout(tmp_path) -> Path:
    return make_example_layout(tmp_path / "bids", n_subjects=2, sessions=("M0", "M6"))


def _run(layout: Path, tmp_path: Path, *options: str) -> int:
    return main([str(layout), str(tmp_path / "out"), "participant", "--n-workers", "1",
                 "--no-progress", *options])


def _nothing_ran(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not (out / "failures.tsv").exists()
    assert not list(out.rglob("*_provenance.json")) if out.exists() else True


def _config(tmp_path: Path, text: str, suffix: str = ".toml") -> str:
    path = tmp_path / f"config{suffix}"
    path.write_text(text)
    return str(path)


# -- A. options checked before any work ------------------------------------------------------


def test_unknown_atlas_exits_64_naming_the_known_atlases(layout, tmp_path, capsys):
    assert _run(layout, tmp_path, "--atlas", "seitzman") == EXIT_USAGE
    err = capsys.readouterr().err
    assert "'seitzman'" in err
    for name in ("seitzman2018", "power2011", "dosenbach2010"):
        assert name in err
    _nothing_ran(tmp_path)


@pytest.mark.parametrize(("text", "key", "known"), [
    ('[fmri]\nstrateg = "simple"\n', "strateg", ["atlas", "strategy", "kind"]),
    ("[volumetry]\nlables = 3\n", "lables", ["labels"]),
    ("[group]\nnbs_tails = \"right\"\n", "nbs_tails", ["nbs_tail", "n_permutations"]),
])
def test_unknown_config_key_exits_64_naming_it_and_the_known_keys(layout, tmp_path, capsys,
                                                                  text, key, known):
    assert _run(layout, tmp_path, "--config", _config(tmp_path, text)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"unknown key {key!r}" in err
    for name in known:
        assert name in err
    _nothing_ran(tmp_path)


def test_unknown_config_section_exits_64(layout, tmp_path, capsys):
    path = _config(tmp_path, json.dumps({"tractography": {}}), ".json")
    assert _run(layout, tmp_path, "--config", path) == EXIT_USAGE
    assert "'tractography'" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "shown"), [
    ('[fmri]\nstrategy = "scrub"\n', ["'simple'", "'scrubbing'", "'compcor'"]),
    ('[fmri]\nkind = "pearson"\n', ["'correlation'", "'partial correlation'", "'tangent'"]),
    ('[dti]\nmethod = "fast"\n', ["'wls'", "'ols'", "'restore'"]),
    ('[group]\nnbs_threshold_p = 2.0\n', ["probability"]),
    ('[group]\nn_permutations = "many"\n', ["integer"]),
    ('[fmri]\natlas = "powers"\n', ["power2011"]),
    ('[group]\nnbs_design = "anova"\n',
     ["'auto'", "'repeated_measures'", "'trend'", "'paired'", "'pairwise'"]),
])
def test_bad_config_value_exits_64_with_the_library_choices(layout, tmp_path, capsys, text,
                                                             shown):
    assert _run(layout, tmp_path, "--config", _config(tmp_path, text)) == EXIT_USAGE
    err = capsys.readouterr().err
    for word in shown:
        assert word in err
    _nothing_ran(tmp_path)


def test_choices_come_from_the_library():
    from msimaging.dti import METHODS
    from msimaging.fmri import KINDS, STRATEGIES
    from msimaging.pipeline.options import _choices

    choices = _choices()
    assert choices[("fmri", "strategy")] == tuple(STRATEGIES)
    assert choices[("fmri", "kind")] == tuple(KINDS)
    assert choices[("dti", "method")] == tuple(METHODS)


def test_nbs_design_from_config_and_command_line(tmp_path):
    """[group] nbs_design is checked and normalised; --nbs-design offers the same designs
    and wins over the config file."""
    from msimaging.cli import check_options
    from msimaging.pipeline.group import NBS_DESIGNS
    from msimaging.pipeline.options import check_config, known_parameters

    assert known_parameters()["group"]["nbs_design"] == "auto"
    assert check_config({"group": {"nbs_design": "Paired"}})["group"]["nbs_design"] == "paired"
    parser = build_app_parser()
    flag = next(a for a in parser._actions if "--nbs-design" in a.option_strings)
    assert tuple(flag.choices) == NBS_DESIGNS
    config = _config(tmp_path, '[group]\nnbs_design = "trend"\n')
    args = parser.parse_args(["bids", "out", "group", "--config", config])
    assert check_options(args)["group"] == {"nbs_design": "trend"}
    args = parser.parse_args(["bids", "out", "group", "--config", config,
                              "--nbs-design", "repeated_measures"])
    assert check_options(args)["group"] == {"nbs_design": "repeated_measures"}


def test_unknown_and_partly_unknown_session_labels_exit_17(layout, tmp_path, capsys):
    assert _run(layout, tmp_path, "--session-label", "M12") == EXIT_LABEL
    assert "ses-M12" in capsys.readouterr().err
    assert _run(layout, tmp_path, "--session-label", "M0", "M9", "M6") == EXIT_LABEL
    err = capsys.readouterr().err
    assert "ses-M9 not found" in err and "ses-M0, ses-M6" in err  # names the unknown only
    assert _run(layout, tmp_path, "--participant-label", "01", "07") == EXIT_LABEL
    assert "sub-07" in capsys.readouterr().err
    _nothing_ran(tmp_path)


def test_bids_apps_spellings_of_the_label_options(layout):
    args = build_app_parser().parse_args(
        ["b", "o", "participant", "--participant_label", "02", "--session_label", "M6"])
    assert args.participant_label == ["02"] and args.session_label == ["M6"]
    tasks = plan_tasks(layout, participant_label=args.participant_label,
                       session_label=args.session_label, modalities=["volumetry"])
    assert [(t.participant_id, t.session_id) for t in tasks] == [("sub-02", "ses-M6")]


# -- B. choosing inputs ----------------------------------------------------------------------


def _two_dwi_runs(layout: Path) -> None:
    """Every visit gets dir-AP and dir-PA DWI runs instead of one (BIDS dwi naming)."""
    for dwi in list(layout.glob("sub-*/ses-*/dwi/*_dwi.nii.gz")):
        stem = dwi.name[: -len("_dwi.nii.gz")]
        for direction in ("AP", "PA"):
            for ext in (".nii.gz", ".bval", ".bvec"):
                shutil.copy(dwi.parent / f"{stem}_dwi{ext}",
                            dwi.parent / f"{stem}_dir-{direction}_dwi{ext}")
        for ext in (".nii.gz", ".bval", ".bvec"):
            (dwi.parent / f"{stem}_dwi{ext}").unlink()


def test_two_dwi_runs_need_a_choice_listed_before_any_work(layout, tmp_path, capsys):
    _two_dwi_runs(layout)
    assert _run(layout, tmp_path, "--modalities", "dti") == EXIT_DATAERR
    err = capsys.readouterr().err
    assert "sub-01_ses-M0_dir-AP_dwi.nii.gz" in err and "sub-01_ses-M0_dir-PA_dwi.nii.gz" in err
    assert "--bids-filter dwi:dir=AP" in err and "nothing was run" in err
    _nothing_ran(tmp_path)


def _dwi_of(tasks) -> set[str]:
    return {Path(dict(t.inputs)["dwi"]).name.split("_")[2] for t in tasks}


def test_dwi_run_chosen_by_command_line_filter_file_or_config(layout, tmp_path):
    from msimaging.pipeline.inputs import parse_filter_args, read_filter_file
    from msimaging.pipeline.options import check_config

    _two_dwi_runs(layout)
    tasks = plan_tasks(layout, modalities=["dti"], filters=parse_filter_args(["dwi:dir=PA"]))
    assert _dwi_of(tasks) == {"dir-PA"} and len(tasks) == 4
    assert all(dict(t.inputs)["dwi.bvec"].endswith("dir-PA_dwi.bvec") for t in tasks)
    path = tmp_path / "filter.json"  # fMRIPrep's spelling: pybids long entity names
    path.write_text(json.dumps({"dwi": {"datatype": "dwi", "direction": "AP"}}))
    assert _dwi_of(plan_tasks(layout, modalities=["dti"],
                              filters=read_filter_file(path))) == {"dir-AP"}
    config = check_config({"inputs": {"dwi": {"dir": "AP"}}})
    assert _dwi_of(plan_tasks(layout, modalities=["dti"],
                              filters=config["inputs"])) == {"dir-AP"}


def test_filter_matching_nothing_and_bad_filters_are_errors(layout, tmp_path, capsys):
    _two_dwi_runs(layout)
    with pytest.raises(InputChoiceError, match="values present: dir: AP, PA"):
        plan_tasks(layout, modalities=["dti"], filters={"dwi": {"dir": "LR"}})
    assert _run(layout, tmp_path, "--bids-filter", "dwi:phase=AP") == EXIT_USAGE
    assert "unknown entity 'phase'" in capsys.readouterr().err
    assert _run(layout, tmp_path, "--bids-filter", "diffusion:dir=AP") == EXIT_USAGE
    assert "unknown input 'diffusion'" in capsys.readouterr().err
    assert _run(layout, tmp_path, "--bids-filter", "dwi=AP") == EXIT_USAGE
    _nothing_ran(tmp_path)


def _func(layout: Path) -> list[Path]:
    return sorted(layout.glob("derivatives/fmriprep/sub-*/ses-*/func"))


def test_coordinate_atlas_needs_mni_bold(layout, tmp_path, capsys):
    for func in _func(layout):  # fMRIPrep run with --output-spaces T1w only
        for path in func.iterdir():
            path.rename(path.with_name(path.name.replace("MNI152NLin2009cAsym", "T1w")))
    assert _run(layout, tmp_path, "--modalities", "fmri") == EXIT_DATAERR
    err = capsys.readouterr().err
    assert "MNI152" in err and "space T1w" in err and "--output-spaces" in err
    _nothing_ran(tmp_path)


def test_mni_bold_chosen_among_spaces_and_task_filter(layout):
    for func in _func(layout):  # a T1w-space copy of every run, and a second task
        for path in list(func.iterdir()):
            for old, new in (("MNI152NLin2009cAsym", "T1w"), ("task-rest", "task-fa")):
                if old in path.name:
                    shutil.copy(path, path.with_name(path.name.replace(old, new)))
    with pytest.raises(InputChoiceError, match="task"):
        plan_tasks(layout, modalities=["fmri"])  # rest or fa?
    tasks = plan_tasks(layout, modalities=["fmri"], filters={"bold": {"task": "fa"}})
    for task in tasks:
        inputs = dict(task.inputs)
        assert "task-fa_space-MNI152NLin2009cAsym_desc-preproc_bold" in inputs["bold_preproc"]
        assert "task-fa_desc-confounds" in inputs["confounds"]
        assert "task-fa_space-MNI152NLin2009cAsym_desc-brain_mask" in inputs["bold_mask"]


def test_label_image_atlas_in_another_space_is_refused(layout, tmp_path):
    import nibabel as nib
    import numpy as np

    bold = next(layout.glob("derivatives/fmriprep/sub-01/ses-M0/func/*_bold.nii.gz"))
    ref = nib.load(bold)
    far = ref.affine.copy()
    far[:3, 3] += 500.0  # same grid, 500 mm away: not the BOLD's space
    labels = np.ones(ref.shape[:3], np.int16)
    nib.save(nib.Nifti1Image(labels, far), tmp_path / "far.nii.gz")
    with pytest.raises(InputChoiceError, match="not in the same space"):
        plan_tasks(layout, modalities=["fmri"],
                   params={"fmri": {"atlas": str(tmp_path / "far.nii.gz")}})
    nib.save(nib.Nifti1Image(labels, ref.affine), tmp_path / "near.nii.gz")
    tasks = plan_tasks(layout, modalities=["fmri"],
                       params={"fmri": {"atlas": str(tmp_path / "near.nii.gz")}})
    assert all(dict(t.inputs)["atlas"].endswith("near.nii.gz") for t in tasks)
    # A space- entity in the atlas name must match the BOLD's.
    nib.save(nib.Nifti1Image(labels, ref.affine), tmp_path / "atlas-X_space-T1w_dseg.nii.gz")
    with pytest.raises(InputChoiceError, match="space-T1w BOLD"):
        plan_tasks(layout, modalities=["fmri"],
                   params={"fmri": {"atlas": str(tmp_path / "atlas-X_space-T1w_dseg.nii.gz")}})


def test_fmri_output_carries_the_input_task(tiny_study, tmp_path):
    from msimaging.pipeline import run_participant

    src, _ = tiny_study
    bids = tmp_path / "study"
    shutil.copytree(src, bids, ignore=lambda folder, names: [
        n for n in names if n.startswith("sub-") and n != "sub-01"
        and (Path(folder) / n).is_dir()])
    for path in list(bids.rglob("*task-rest*")):
        path.rename(path.with_name(path.name.replace("task-rest", "task-fa")))
    run = run_participant(bids, tmp_path / "out", modalities=["fmri"], session_label=["M0"],
                          n_workers=1, progress=False)
    assert run.ok, run.failures.to_string()
    relmats = DerivativesLayout(tmp_path / "out").participant_outputs("fmri_connectome")
    assert relmats and all("_task-fa_" in p.name for p in relmats)


# -- C. one Study per run ----------------------------------------------------------------------


def test_dataset_is_scanned_once_per_run(layout, tmp_path, monkeypatch):
    import msimaging.bids
    from msimaging.pipeline import run_participant

    built = []
    original = msimaging.bids.Study.__init__

    def counting(self, *args, **kwargs):
        built.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(msimaging.bids.Study, "__init__", counting)
    run = run_participant(layout, tmp_path / "out", modalities=["fmri", "volumetry"],
                          n_workers=1, progress=False)
    assert len(run.tasks) == 8
    assert len(built) == 1  # not once per task
    # The example layout's images are tiny placeholders, so every task stops when it reads
    # its data: it got there with the paths it carried (each message names a dataset file),
    # not by looking them up again. Provenance and resume on real data: test_pipeline.py.
    assert (run.tasks["status"] == "failed").all()
    assert all(str(layout) in message for message in run.tasks["message"])


# -- D. inventory ----------------------------------------------------------------------------


def test_inventory_names_the_tool_and_bids_path_of_missing_inputs(layout, capsys):
    for path in layout.glob("derivatives/*/sub-01/ses-M6/anat/*lesion*"):
        path.unlink()
    for path in layout.glob("derivatives/fmriprep/sub-02/ses-M0/func/*"):
        path.unlink()
    for path in layout.glob("derivatives/*/sub-02/ses-M6/anat/*seg*"):
        path.unlink()
    from msimaging.bids import Study

    visits, missing = inventory(Study(layout))
    table = visits.set_index(["participant_id", "session_id"])
    assert table.loc[("sub-01", "ses-M6"), "dti"] == "ready"  # no lesion mask needed
    assert table.loc[("sub-01", "ses-M6"), "volumetry"] == "missing lesion_mask"
    assert table.loc[("sub-02", "ses-M0"), "fmri"] == "missing bold, confounds"
    assert table.loc[("sub-02", "ses-M6"), "dti"] == "missing dseg"
    assert (table.loc[("sub-01", "ses-M0"), ["dti", "fmri", "volumetry"]] == "ready").all()
    row = missing[(missing.participant_id == "sub-01") & (missing.input == "lesion_mask")]
    assert row["expected_path"].tolist() == [
        "derivatives/lst-ai/sub-01/ses-M6/anat/sub-01_ses-M6_label-lesion_mask.nii.gz"]
    assert main(["inventory", str(layout)]) == 0
    out = capsys.readouterr().out
    assert ("derivatives/fmriprep/sub-02/ses-M0/func/sub-02_ses-M0_task-rest_space-"
            "MNI152NLin2009cAsym_desc-preproc_bold.nii.gz") in out
    assert "LST-AI" in out and "sub-01_ses-M6_label-lesion_mask.nii.gz" in out
    assert "desc-aseg_dseg" in out and "FreeSurfer" in out and "fMRIPrep" in out


def test_python_api_checks_the_atlas_before_any_work(layout, tmp_path):
    """run_participant called from Python (no CLI checks): an unknown atlas name or a missing
    label-image path is a typed error naming the known atlases, before anything is written."""
    from msimaging.errors import InputError
    from msimaging.pipeline import run_participant

    for atlas in ("nowhere_atlas.nii.gz", "seitzman"):
        with pytest.raises(InputError, match="seitzman2018"):
            run_participant(layout, tmp_path / "out", modalities=["fmri"],
                            params={"fmri": {"atlas": atlas}}, n_workers=1, progress=False)
    _nothing_ran(tmp_path)


def test_nbs_method_from_config_and_command_line(tmp_path):
    """[group] nbs_method takes the library's methods (checked before any work); --nbs-method
    offers the same ones and wins over the config file."""
    from msimaging.cli import check_options
    from msimaging.fmri.nbs import METHODS
    from msimaging.pipeline.options import ConfigError, check_config, known_parameters

    assert known_parameters()["group"]["nbs_method"] == "nbs"
    assert check_config({"group": {"nbs_method": "TFNBS"}})["group"]["nbs_method"] == "tfnbs"
    with pytest.raises(ConfigError, match="constrained"):
        check_config({"group": {"nbs_method": "tfce"}})
    parser = build_app_parser()
    flag = next(a for a in parser._actions if "--nbs-method" in a.option_strings)
    assert tuple(flag.choices) == METHODS
    config = _config(tmp_path, '[group]\nnbs_method = "constrained"\n')
    args = parser.parse_args(["bids", "out", "group", "--config", config,
                              "--nbs-method", "tfnbs"])
    assert check_options(args)["group"] == {"nbs_method": "tfnbs"}
