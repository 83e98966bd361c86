"""Tests of msimaging.bids: discovery of sessions, months and files in a BIDS study.

Expected values are written out by hand (file names, months), not derived from the code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from msimaging.bids import KINDS, Session, Study, months_from_label, parse_entities
from msimaging.datasets.layout import make_example_layout
from msimaging.errors import BIDSError, InputError, MSImagingWarning

MNI = "MNI152NLin2009cAsym"


def write_tree(root: Path, files: dict[str, str | bytes] | list[str], *, description=True):
    """Create a BIDS-like tree: relative path -> content ('' for an empty file)."""
    root.mkdir(parents=True, exist_ok=True)
    if description:
        (root / "dataset_description.json").write_text(
            json.dumps({"Name": "test", "BIDSVersion": "1.9.0"})
        )
    items = files.items() if isinstance(files, dict) else ((name, "") for name in files)
    for relative, content in items:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def anat_sessions(subject: str, sessions: list[str]) -> list[str]:
    return [f"sub-{subject}/ses-{s}/anat/sub-{subject}_ses-{s}_T1w.nii.gz" for s in sessions]


# -- the 2 subjects x 3 sessions example, with sub-02 ses-M3 bold_preproc left out -----------
@pytest.fixture(scope="module")
def example_root(tmp_path_factory) -> Path:
    return make_example_layout(
        tmp_path_factory.mktemp("example") / "bids",
        n_subjects=2,
        sessions=("M0", "M3", "M6"),
        missing=[("02", "M3", "bold_preproc")],
    )


@pytest.fixture(scope="module")
def study(example_root) -> Study:
    return Study(example_root)


def test_example_subjects_sessions_and_months(study, example_root):
    assert study.root == example_root.absolute()
    assert study.subjects == ["01", "02"]
    assert len(study) == 6
    table = study.sessions
    assert list(table.columns[:4]) == ["participant_id", "session_id", "months", "months_source"]
    assert list(table.columns[4:]) == list(KINDS)
    assert table["participant_id"].tolist() == ["sub-01"] * 3 + ["sub-02"] * 3
    assert table["session_id"].tolist() == ["ses-M0", "ses-M3", "ses-M6"] * 2
    assert table["months"].tolist() == [0.0, 3.0, 6.0, 0.0, 3.0, 6.0]
    assert set(table["months_source"]) == {"sessions.tsv"}
    assert study.problems == []
    assert {p.name for p in study.derivatives} == {"fmriprep", "segmentation"}


def test_example_presence_table(study):
    table = study.sessions.set_index(["participant_id", "session_id"])
    for kind in ("t1w", "flair", "dwi", "bold", "confounds", "bold_mask", "dseg", "probseg"):
        assert table[kind].all(), kind
    assert table["lesion_mask"].all()
    assert not table["dwi_preproc"].any()  # no QSIPrep in this layout
    assert not table.loc[("sub-02", "ses-M3"), "bold_preproc"]
    assert table["bold_preproc"].sum() == 5


def test_missing_reports_exactly_the_planted_piece(study):
    missing = study.missing()
    assert list(missing.columns) == ["participant_id", "session_id", "months", "kind", "reason"]
    assert len(missing) == 1
    row = missing.iloc[0]
    assert (row.participant_id, row.session_id, row.months, row.kind) == (
        "sub-02",
        "ses-M3",
        3.0,
        "bold_preproc",
    )
    assert "5 of 6" in row.reason


def test_missing_with_required_kinds(study):
    missing = study.missing(required=["dwi_preproc", "t1w"])
    assert len(missing) == 6
    assert set(missing["kind"]) == {"dwi_preproc"}
    assert set(missing["reason"]) == {"required but absent"}
    with pytest.raises(InputError, match="required='tensor'"):
        study.missing(required="tensor")


def test_session_files_are_the_expected_paths(study, example_root):
    session = study.session("01", "M3")
    assert isinstance(session, Session)
    assert (session.participant_id, session.session_id) == ("sub-01", "ses-M3")
    assert (session.months, session.months_source) == (3.0, "sessions.tsv")
    root = example_root.absolute()
    fmriprep = root / "derivatives/fmriprep/sub-01/ses-M3/func"
    expected_bold = fmriprep / f"sub-01_ses-M3_task-rest_space-{MNI}_desc-preproc_bold.nii.gz"
    assert session.get("bold_preproc") == expected_bold
    assert session.get("bold_preproc", space=MNI, task="rest") == expected_bold
    assert session.get("bold_mask") == fmriprep / (
        f"sub-01_ses-M3_task-rest_space-{MNI}_desc-brain_mask.nii.gz"
    )
    assert session.get("confounds") == fmriprep / (
        "sub-01_ses-M3_task-rest_desc-confounds_timeseries.tsv"
    )
    assert session.get("dwi") == root / "sub-01/ses-M3/dwi/sub-01_ses-M3_dwi.nii.gz"
    assert session.get("t1w") == root / "sub-01/ses-M3/anat/sub-01_ses-M3_T1w.nii.gz"
    assert session.get("flair") == root / "sub-01/ses-M3/anat/sub-01_ses-M3_FLAIR.nii.gz"
    segmentation = root / "derivatives/segmentation/sub-01/ses-M3/anat"
    assert session.get("probseg", label="GM") == segmentation / (
        "sub-01_ses-M3_label-GM_probseg.nii.gz"
    )
    assert session.get("lesion_mask") == segmentation / ("sub-01_ses-M3_label-lesion_mask.nii.gz")
    assert len(session.files["probseg"]) == 3
    assert session.files["dwi_preproc"] == ()
    assert session.has("dseg") and not session.has("dwi_preproc")
    assert session.origins[expected_bold] == "fmriprep"


def test_get_errors_name_the_kind_and_the_fix(study):
    session = study.session("sub-02", "ses-M3")
    with pytest.raises(InputError, match="'bold_preproc'") as none:
        session.get("bold_preproc")
    assert "sub-02 ses-M3" in str(none.value)
    with pytest.raises(InputError, match="label=") as several:
        session.get("probseg")
    message = str(several.value)
    assert "3 files match 'probseg'" in message
    assert "label-GM" in message and "label-WM" in message and "label-CSF" in message
    with pytest.raises(InputError, match="space='T1w'") as wrong_entity:
        study.session("01", "M0").get("bold_preproc", space="T1w")
    assert f"space-{MNI}" in str(wrong_entity.value)  # lists what exists
    with pytest.raises(InputError, match="not a file kind"):
        session.get("bolds")


def test_prefix_handling_and_lookup_errors(study):
    assert study.session("sub-01", "ses-M6") is study.session("01", "M6")
    assert study.session("01", "ses-M6") is study.session("sub-01", "M6")
    with pytest.raises(InputError, match="sub-03"):
        study.session("03", "M0")
    with pytest.raises(InputError, match="ses-M9"):
        study.session("01", "M9")
    with pytest.raises(InputError, match="session="):
        study.session("01")


def test_iteration_repr_and_html(study):
    sessions = list(study)
    assert [(s.participant_id, s.session_id) for s in sessions][:3] == [
        ("sub-01", "ses-M0"),
        ("sub-01", "ses-M3"),
        ("sub-01", "ses-M6"),
    ]
    assert "2 subjects, 6 sessions" in repr(study)
    assert "fmriprep" in repr(study)
    page = study._repr_html_()
    assert page.count("<tr>") == 7 and "<table>" in page
    assert "sub-02" in repr(study.session("02", "M0"))


def test_raw_file_names_pass_the_bids_validator(example_root):
    from bids_validator import BIDSValidator

    validator = BIDSValidator()
    checked = 0
    for directory, subdirs, files in os.walk(example_root):
        subdirs[:] = [d for d in subdirs if d != "derivatives"]
        for name in files:
            relative = "/" + Path(directory, name).relative_to(example_root).as_posix()
            assert validator.is_bids(relative), relative
            checked += 1
    # 3 top-level + 2 sessions.tsv + 6 sessions x (T1w, FLAIR, dwi x3, bold x2)
    assert checked >= 3 + 2 + 6 * 7


def test_derivatives_argument(example_root):
    raw_only = Study(example_root, derivatives=False)
    assert raw_only.derivatives == ()
    assert not raw_only.sessions["bold_preproc"].any()
    assert raw_only.sessions["bold"].all()
    only_fmriprep = Study(example_root, derivatives=["derivatives/fmriprep"])
    assert only_fmriprep.sessions["bold_preproc"].sum() == 5
    assert not only_fmriprep.sessions["dseg"].any()
    with pytest.raises(BIDSError, match="nowhere"):
        Study(example_root, derivatives=[example_root / "nowhere"])


def test_import_stays_light():
    code = "import sys, msimaging.bids; sys.exit('pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- months ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("label", "months"),
    [
        ("M0", 0.0),
        ("M3", 3.0),
        ("M06", 6.0),
        ("m6", 6.0),
        ("month3", 3.0),
        ("months12", 12.0),
        ("ses-M24", 24.0),
        ("baseline", 0.0),
        ("BL", 0.0),
        ("base", 0.0),
        ("Y1", 12.0),
        ("year2", 24.0),
        ("W4", 4 * 12 / 52),
        ("week4", 4 * 12 / 52),
        ("visit1", None),
        ("1", None),
        ("followup", None),
    ],
)
def test_months_from_label(label, months):
    assert months_from_label(label) == (pytest.approx(months) if months is not None else None)


def test_months_from_labels_without_sessions_tsv(tmp_path):
    root = write_tree(tmp_path, anat_sessions("01", ["baseline", "M06", "Y1", "week4"]))
    table = Study(root).sessions
    assert table["session_id"].tolist() == ["ses-baseline", "ses-week4", "ses-M06", "ses-Y1"]
    assert table["months"].tolist() == pytest.approx([0.0, 4 * 12 / 52, 6.0, 12.0])
    assert set(table["months_source"]) == {"label"}


def test_timepoint_column_and_unprefixed_session_ids(tmp_path):
    files = anat_sessions("01", ["A", "B"])
    root = write_tree(
        tmp_path,
        {
            **dict.fromkeys(files, ""),
            "sub-01/sub-01_sessions.tsv": "session_id\ttimepoint\nB\t12\nA\t0\n",
        },
    )
    table = Study(root).sessions
    assert table["session_id"].tolist() == ["ses-A", "ses-B"]
    assert table["months"].tolist() == [0.0, 12.0]
    assert set(table["months_source"]) == {"sessions.tsv"}


def test_sessions_tsv_months_win_over_labels_and_gaps_fall_back_to_labels(tmp_path):
    files = anat_sessions("01", ["M0", "M3", "M12"])
    tsv = "session_id\tage\tmonths\nses-M0\t40\t0\nses-M3\t40\t3.5\n"  # ses-M12 not listed
    root = write_tree(tmp_path, {**dict.fromkeys(files, ""), "sub-01/sub-01_sessions.tsv": tsv})
    table = Study(root).sessions
    assert table["months"].tolist() == [0.0, 3.5, 12.0]
    assert table["months_source"].tolist() == ["sessions.tsv", "sessions.tsv", "label"]


def test_unparseable_labels_fall_back_to_order_with_a_warning(tmp_path):
    root = write_tree(
        tmp_path,
        anat_sessions("01", ["visit10", "visit2", "visit1"]) + anat_sessions("02", ["M0", "M6"]),
    )
    with pytest.warns(MSImagingWarning, match="sub-01") as record:
        study = Study(root)
    message = str(record[0].message)
    assert "ses-visit1" in message and "ses-visit10" in message
    assert "months" in message and "sub-01_sessions.tsv" in message
    assert "sub-02" not in message
    table = study.sessions
    first = table[table.participant_id == "sub-01"]
    assert first["session_id"].tolist() == ["ses-visit1", "ses-visit2", "ses-visit10"]
    assert first["months"].tolist() == [0.0, 1.0, 2.0]
    assert set(first["months_source"]) == {"order"}
    assert table[table.participant_id == "sub-02"]["months_source"].tolist() == ["label"] * 2


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b"\x00\x89PNG\r\n\x1a\n\x00\x00garbage", "binary"),
        (b"session_id\tmonths\nses-M0\t\xff\xfe\n", "UTF-8"),
        ("session_id\tmonths\nses-M0\t0\t1\n", "line 2"),
        ("session_id\tmonths\nses-M0\n", "line 2"),
        ("visit\tmonths\nM0\t0\n", "'session_id'"),
        ("session_id,months\nses-M0,0\n", "tab"),
        ("session_id\tmonths\nses-M0\tthree\n", "column 'months'"),
        ("session_id\tmonths\nses-M0\tinf\n", "column 'months'"),
        ("session_id\tmonths\nses-M0\t0\nses-M0\t3\n", "twice"),
        ("", "empty"),
    ],
)
def test_unreadable_sessions_tsv_raises_naming_the_file(tmp_path, content, where):
    files = dict.fromkeys(anat_sessions("01", ["M0"]), "")
    root = write_tree(tmp_path, {**files, "sub-01/sub-01_sessions.tsv": content})
    with pytest.raises(BIDSError, match=r"sub-01_sessions\.tsv") as error:
        Study(root)
    assert where in str(error.value)


def test_na_months_fall_back_to_the_label(tmp_path):
    files = dict.fromkeys(anat_sessions("01", ["M0", "M6"]), "")
    tsv = "session_id\tmonths\nses-M0\t0\nses-M6\tn/a\n"
    root = write_tree(tmp_path, {**files, "sub-01/sub-01_sessions.tsv": tsv})
    assert Study(root).sessions["months_source"].tolist() == ["sessions.tsv", "label"]


# -- months from acq_time (BIDS sessions file: "Session acquisition time", ISO 8601) ------------
def _acq_time_tree(tmp_path, sessions: list[str], tsv: str) -> Path:
    files = dict.fromkeys(anat_sessions("01", sessions), "")
    return write_tree(tmp_path, {**files, "sub-01/sub-01_sessions.tsv": tsv})


def test_months_from_acq_time_alone(tmp_path):
    # Labels encode no time and are listed out of order; expected months worked by hand:
    # 91 d 0.5 h / 30.4375 d = 2.99 -> 3.0; 364 d 22.5 h -> 11.99 -> 12.0; 45 d -> 1.48 -> 1.5.
    tsv = (
        "session_id\tacq_time\tage\n"
        "ses-third\t2022-03-15T08:00:00\t41\n"
        "ses-first\t2021-03-15T09:30:00\t40\n"
        "ses-second\t2021-06-14T10:00:00\t40\n"
        "ses-extra\t2021-04-29T09:30:00.250000\t40\n"
    )
    root = _acq_time_tree(tmp_path, ["third", "first", "second", "extra"], tsv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither the order nor the acq_time fallback warns
        table = Study(root).sessions
    assert table["session_id"].tolist() == ["ses-first", "ses-extra", "ses-second", "ses-third"]
    assert table["months"].tolist() == [0.0, 1.5, 3.0, 12.0]
    assert set(table["months_source"]) == {"sessions.tsv:acq_time"}


def test_months_from_shifted_acq_time_with_utc_offsets(tmp_path):
    # Anonymised dates (BIDS: shifted to 1925 or earlier). 1800 is not a leap year:
    # 1 Jan -> 1 Mar is 59 days = 1.94 -> 1.9 months (60 days would give 2.0).
    # 1800-01-31T00:00+02:00 is 1800-01-30T22:00Z: 29 d 22 h = 0.98 -> 1.0 month.
    tsv = (
        "session_id\tacq_time\n"
        "ses-a\t1800-01-01T00:00:00Z\n"
        "ses-b\t1800-01-31T00:00:00+02:00\n"
        "ses-c\t1800-03-01\n"
    )
    root = _acq_time_tree(tmp_path, ["a", "b", "c"], tsv)
    session = Study(root).session("01", "c")
    assert (session.months, session.months_source) == (1.9, "sessions.tsv:acq_time")
    assert Study(root).sessions["months"].tolist() == [0.0, 1.0, 1.9]


def test_months_column_wins_over_acq_time(tmp_path):
    tsv = "session_id\tacq_time\tmonths\nses-a\t2021-01-01T00:00:00\t0\nses-b\tgarbage\t6\n"
    root = _acq_time_tree(tmp_path, ["a", "b"], tsv)
    table = Study(root).sessions  # acq_time is not read at all, so its bad value is harmless
    assert table["months"].tolist() == [0.0, 6.0]
    assert set(table["months_source"]) == {"sessions.tsv"}


def test_acq_time_baseline_is_the_earliest_listed_visit(tmp_path):
    # ses-screen has no folder (its data are not shared) but still starts the clock: 30 days.
    tsv = (
        "session_id\tacq_time\n"
        "ses-screen\t2020-01-01T10:00:00\n"
        "ses-v1\t2020-01-31T10:00:00\n"
        "ses-v2\t2020-04-30T10:00:00\n"
    )
    study = Study(_acq_time_tree(tmp_path, ["v1", "v2"], tsv))
    assert study.sessions["months"].tolist() == [1.0, 3.9]  # 30 d -> 0.99; 120 d -> 3.94
    assert any("ses-screen" in problem for problem in study.problems)


@pytest.mark.parametrize(
    ("second", "sessions"),
    [("n/a", ["M0", "M6"]), (None, ["M0", "M6"])],  # n/a, or the session not listed at all
)
def test_partial_acq_time_is_ignored_with_a_warning(tmp_path, second, sessions):
    rows = "ses-M0\t2021-01-01T00:00:00\n" + (f"ses-M6\t{second}\n" if second else "")
    root = _acq_time_tree(tmp_path, sessions, "session_id\tacq_time\n" + rows)
    with pytest.warns(MSImagingWarning, match="acq_time") as record:
        table = Study(root).sessions
    message = str(record[0].message)
    assert "sub-01_sessions.tsv" in message and "ses-M6" in message and "ses-M0" not in message
    # Not months from one clock for M0 and labels for M6: labels for both.
    assert table["months"].tolist() == [0.0, 6.0]
    assert set(table["months_source"]) == {"label"}


def test_partial_acq_time_without_labels_falls_back_to_order(tmp_path):
    tsv = "session_id\tacq_time\nses-b\t2021-01-01T00:00:00\nses-a\tn/a\n"
    root = _acq_time_tree(tmp_path, ["a", "b"], tsv)
    with pytest.warns(MSImagingWarning) as record:
        table = Study(root).sessions
    messages = [str(r.message) for r in record]
    assert any("acq_time was ignored" in m for m in messages)
    assert any("session order" in m for m in messages)
    assert table["months"].tolist() == [0.0, 1.0]
    assert set(table["months_source"]) == {"order"}


@pytest.mark.parametrize(
    "value",
    ["2021-13-01T00:00:00", "03/04/2021", "yesterday", "10:00:00", "2021-02-30"],
)
def test_malformed_acq_time_raises_naming_file_line_column_and_value(tmp_path, value):
    tsv = f"session_id\tacq_time\nses-a\t2021-01-01T00:00:00\nses-b\t{value}\n"
    root = _acq_time_tree(tmp_path, ["a", "b"], tsv)
    with pytest.raises(BIDSError, match=r"sub-01_sessions\.tsv, line 3") as error:
        Study(root)
    message = str(error.value)
    assert "column 'acq_time'" in message and repr(value) in message
    assert "YYYY-MM-DDThh:mm:ss" in message


def test_identical_acq_times_are_a_problem(tmp_path):
    tsv = "session_id\tacq_time\nses-a\t2021-01-01T09:00:00\nses-b\t2021-01-01T09:00:00\n"
    study = Study(_acq_time_tree(tmp_path, ["a", "b"], tsv))
    assert study.sessions["months"].tolist() == [0.0, 0.0]
    assert any("both fall at 0 months" in problem for problem in study.problems)


# -- lesion masks as the fMRIPrep / QSIPrep / ASLPrep docs name them --------------------------
def test_parse_entities_skips_the_source_image_suffix_of_lesion_rois():
    assert parse_entities("sub-001_T1w_label-lesion_roi.nii.gz") == {
        "sub": "001",
        "label": "lesion",
    }
    assert parse_entities("sub-01_ses-M0_FLAIR_space-orig_label-L_mask.nii.gz") == {
        "sub": "01",
        "ses": "M0",
        "space": "orig",
        "label": "L",
    }
    # Only for roi/mask files after a known image suffix: other odd names stay unparsed.
    assert parse_entities("sub-01_foo_label-lesion_roi.nii.gz") == {}
    assert parse_entities("sub-01_T1w_label-lesion_bold.nii.gz") == {}
    assert parse_entities("sub-01_T1w_roi.nii.gz") == {}


def test_lesion_rois_named_as_the_fmriprep_docs_ask(tmp_path):
    anat = "sub-01/ses-M0/anat"
    root = write_tree(
        tmp_path,
        {
            f"{anat}/sub-01_ses-M0_T1w.nii.gz": "",
            f"{anat}/sub-01_ses-M0_T1w_label-lesion_roi.nii.gz": "",
            f"{anat}/sub-01_ses-M0_T1w_label-WM_roi.nii.gz": "",  # an roi, not a lesion
            f"{anat}/sub-01_ses-M0_foo_label-lesion_roi.nii.gz": "",  # not a BIDS name
            "sub-01/ses-M3/anat/sub-01_ses-M3_T1w.nii.gz": "",
            "sub-01/ses-M3/anat/sub-01_ses-M6_T1w_label-lesion_roi.nii.gz": "",  # misplaced
            # BIDS 1.4 / BEP003 derivative spelling, suffix roi.
            "derivatives/lst/sub-01/ses-M3/anat/sub-01_ses-M3_label-lesion_roi.nii.gz": "",
            ".bidsignore": "*lesion_roi.nii.gz\n",
        },
    )
    study = Study(root)
    first, second = study.session("01", "M0"), study.session("01", "M3")
    assert first.get("lesion_mask") == root.absolute() / anat / (
        "sub-01_ses-M0_T1w_label-lesion_roi.nii.gz"
    )
    assert [p.name for p in first.files["t1w"]] == ["sub-01_ses-M0_T1w.nii.gz"]
    assert first.get("lesion_mask", pipeline="raw", label="lesion").parent.name == "anat"
    assert second.get("lesion_mask").name == "sub-01_ses-M3_label-lesion_roi.nii.gz"
    assert any(
        "sub-01_ses-M6_T1w_label-lesion_roi" in p and "folder ses-M3" in p for p in study.problems
    )


def test_lesion_roi_entities_agree_with_pybids():
    """pybids (what fMRIPrep uses to find the mask) reads the same entities and suffix."""
    layout = pytest.importorskip("bids.layout")
    name = "sub-01_ses-M0_T1w_label-lesion_roi.nii.gz"
    theirs = layout.parse_file_entities(f"/sub-01/ses-M0/anat/{name}")
    assert (theirs["subject"], theirs["session"], theirs["label"], theirs["suffix"]) == (
        "01",
        "M0",
        "lesion",
        "roi",
    )
    assert parse_entities(name) == {"sub": "01", "ses": "M0", "label": "lesion"}


# -- root validation ---------------------------------------------------------------------------
def test_missing_root_raises(tmp_path):
    with pytest.raises(BIDSError, match="does-not-exist"):
        Study(tmp_path / "does-not-exist")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(BIDSError, match=r"file\.txt"):
        Study(tmp_path / "file.txt")


def test_root_without_subjects_raises(tmp_path):
    write_tree(tmp_path, ["README"])
    with pytest.raises(BIDSError, match="No sub-"):
        Study(tmp_path)


def test_missing_dataset_description_warns(tmp_path):
    write_tree(tmp_path, anat_sessions("01", ["M0"]), description=False)
    with pytest.warns(MSImagingWarning, match="dataset_description.json"):
        study = Study(tmp_path)
    assert len(study) == 1


# -- files -------------------------------------------------------------------------------------
def test_dwi_without_bval_is_a_problem_not_a_file(tmp_path):
    dwi = "sub-01/ses-M0/dwi/sub-01_ses-M0_dwi"
    ok = "sub-01/ses-M3/dwi/sub-01_ses-M3_dwi"
    root = write_tree(
        tmp_path,
        [f"{dwi}.nii.gz", f"{dwi}.bvec", f"{ok}.nii.gz", f"{ok}.bval", f"{ok}.bvec"],
    )
    study = Study(root)
    assert study.sessions["dwi"].tolist() == [False, True]
    assert len(study.problems) == 1
    assert "missing .bval next to" in study.problems[0]
    assert "sub-01_ses-M0_dwi.nii.gz" in study.problems[0]
    missing = study.missing()
    assert missing[["session_id", "kind"]].values.tolist() == [["ses-M0", "dwi"]]
    assert "missing .bval" in missing["reason"].iloc[0]


def test_subject_level_anat_derivatives_apply_to_every_session(tmp_path):
    segmentation = "derivatives/seg/sub-01/anat"
    root = write_tree(
        tmp_path,
        [
            *anat_sessions("01", ["M0", "M12"]),
            f"{segmentation}/sub-01_dseg.nii.gz",
            f"{segmentation}/sub-01_label-WM_probseg.nii.gz",
            f"{segmentation}/sub-01_ses-M12_label-lesion_mask.nii.gz",
        ],
    )
    study = Study(root)
    dseg = root.absolute() / segmentation / "sub-01_dseg.nii.gz"
    assert study.session("01", "M0").get("dseg") == dseg
    assert study.session("01", "M12").get("dseg") == dseg
    assert study.sessions["probseg"].tolist() == [True, True]
    # a subject-level file that names its session belongs to that session only
    assert study.sessions["lesion_mask"].tolist() == [False, True]


def test_classification_rules(tmp_path):
    func = "derivatives/fmriprep/sub-01/ses-M0/func"
    root = write_tree(
        tmp_path,
        [
            "sub-01/ses-M0/anat/sub-01_ses-M0_T1w.nii.gz",
            "sub-01/ses-M0/anat/sub-01_ses-M0_T1w.json",  # sidecar: not an image
            "sub-01/ses-M0/anat/sub-01_ses-M0_label-L_mask.nii.gz",  # raw lesion mask
            "sub-01/ses-M0/anat/.sub-01_ses-M0_FLAIR.nii.gz",  # hidden
            "sub-01/ses-M0/anat/notes.txt",
            "sub-01/ses-M0/anat/sub-01_ses-M0_FLAIR.nii",
            "sub-01/ses-M0/func/sub-01_ses-M0_task-rest_run-01_bold.nii.gz",
            f"{func}/sub-01_ses-M0_task-rest_desc-confounds_regressors.tsv",  # fMRIPrep < 20.2
            f"{func}/sub-01_ses-M0_task-rest_space-T1w_desc-preproc_bold.nii.gz",
            f"{func}/sub-01_ses-M0_task-rest_space-{MNI}_desc-preproc_bold.nii.gz",
            f"{func}/sub-01_ses-M0_task-rest_space-{MNI}_desc-aseg_dseg.nii.gz",  # not anat
            "derivatives/fmriprep/sub-01/ses-M0/anat/sub-01_ses-M0_desc-preproc_T1w.nii.gz",
            "derivatives/seg/sub-01/ses-M0/anat/sub-01_ses-M0_desc-Lesion_mask.nii.gz",
        ],
    )
    session = Study(root).session("01", "M0")
    assert [p.name for p in session.files["t1w"]] == ["sub-01_ses-M0_T1w.nii.gz"]
    assert [p.name for p in session.files["flair"]] == ["sub-01_ses-M0_FLAIR.nii"]
    assert session.get("bold", run=1).name == "sub-01_ses-M0_task-rest_run-01_bold.nii.gz"
    assert session.get("confounds").name.endswith("desc-confounds_regressors.tsv")
    assert session.get("bold_preproc", space="T1w").name.startswith("sub-01_ses-M0_task-rest_sp")
    assert len(session.files["lesion_mask"]) == 2
    assert session.get("lesion_mask", pipeline="raw").name == "sub-01_ses-M0_label-L_mask.nii.gz"
    assert session.get("lesion_mask", pipeline="seg").name.endswith("desc-Lesion_mask.nii.gz")
    assert session.files["dseg"] == ()
    with pytest.raises(InputError, match="space="):
        session.get("bold_preproc")


def test_sessionless_dataset(tmp_path):
    root = write_tree(
        tmp_path,
        [
            "sub-01/anat/sub-01_T1w.nii.gz",
            "sub-02/anat/sub-02_T1w.nii.gz",
            "derivatives/seg/sub-02/anat/sub-02_dseg.nii.gz",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        study = Study(root)
    table = study.sessions
    assert table["session_id"].tolist() == [None, None]
    assert table["months"].tolist() == [0.0, 0.0]
    assert table["dseg"].tolist() == [False, True]
    assert study.session("02").get("dseg").name == "sub-02_dseg.nii.gz"
    assert study.missing()[["participant_id", "kind"]].values.tolist() == [["sub-01", "dseg"]]


def test_misplaced_files_are_reported(tmp_path):
    root = write_tree(
        tmp_path,
        [
            "sub-01/ses-M0/anat/sub-02_ses-M0_T1w.nii.gz",  # wrong subject in the name
            "sub-01/ses-M3/anat/sub-01_ses-M3_T1w.nii.gz",
            "derivatives/seg/sub-01/ses-M9/anat/sub-01_ses-M9_dseg.nii.gz",  # no raw session
        ],
    )
    study = Study(root)
    assert study.sessions["t1w"].tolist() == [False, True]
    assert any("sub-02" in p and "folder sub-01" in p for p in study.problems)
    assert any("ses-M9" in p and "no matching raw session" in p for p in study.problems)


def test_mixed_sessionless_and_sessions_keep_none(tmp_path):
    root = write_tree(
        tmp_path, ["sub-01/anat/sub-01_T1w.nii.gz", *anat_sessions("02", ["M0", "M6"])]
    )
    table = Study(root).sessions
    assert table["session_id"].tolist() == [None, "ses-M0", "ses-M6"]
    assert table["months"].tolist() == [0.0, 0.0, 6.0]


def test_files_agree_with_pybids(study, example_root):
    """An independent index (pybids) finds the same files for every kind."""
    bids = pytest.importorskip("bids")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layout = bids.BIDSLayout(example_root, validate=False, derivatives=True)
    images = [".nii", ".nii.gz"]
    queries = {
        "t1w": {"scope": "raw", "suffix": "T1w", "extension": images},
        "flair": {"scope": "raw", "suffix": "FLAIR", "extension": images},
        "dwi": {"scope": "raw", "suffix": "dwi", "extension": images},
        "bold": {"scope": "raw", "suffix": "bold", "extension": images},
        "bold_preproc": {
            "scope": "derivatives",
            "suffix": "bold",
            "desc": "preproc",
            "extension": images,
        },
        "bold_mask": {"scope": "derivatives", "suffix": "mask", "desc": "brain"},
        "confounds": {"scope": "derivatives", "suffix": "timeseries", "desc": "confounds"},
        "dseg": {"scope": "derivatives", "suffix": "dseg"},
        "probseg": {"scope": "derivatives", "suffix": "probseg"},
        "lesion_mask": {"scope": "derivatives", "suffix": "mask", "label": "lesion"},
    }
    for kind, query in queries.items():
        expected = {Path(f).absolute() for f in layout.get(return_type="filename", **query)}
        ours = {path for session in study for path in session.files[kind]}
        assert ours == expected, kind
