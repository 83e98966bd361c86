"""Tests of msimaging.datasets.layout.make_example_layout (the BIDS naming fixture)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from msimaging.bids import Study
from msimaging.datasets.layout import make_example_layout
from msimaging.errors import InputError, OutputError


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return make_example_layout(
        tmp_path_factory.mktemp("layout") / "bids",
        n_subjects=1,
        sessions=("M0", "M12"),
        qsiprep=True,
        image_shape=(5, 4, 3),
        n_dwi_volumes=9,
    )


def test_images_are_real_and_small(layout):
    t1w = nib.load(layout / "sub-01/ses-M0/anat/sub-01_ses-M0_T1w.nii.gz")
    assert t1w.shape == (5, 4, 3)
    assert np.isfinite(t1w.get_fdata()).all()
    bold = nib.load(layout / "sub-01/ses-M0/func/sub-01_ses-M0_task-rest_bold.nii.gz")
    assert bold.shape[:3] == (5, 4, 3) and bold.shape[3] > 1
    assert bold.header.get_zooms()[3] == pytest.approx(2.0)
    sidecar = json.loads(
        (layout / "sub-01/ses-M0/func/sub-01_ses-M0_task-rest_bold.json").read_text()
    )
    assert sidecar["RepetitionTime"] == pytest.approx(2.0)
    seg = layout / "derivatives/segmentation/sub-01/ses-M12/anat"
    probabilities = sum(
        nib.load(seg / f"sub-01_ses-M12_label-{label}_probseg.nii.gz").get_fdata()
        for label in ("GM", "WM", "CSF")
    )
    np.testing.assert_allclose(probabilities, 1.0, atol=1e-5)
    lesion = nib.load(seg / "sub-01_ses-M12_label-lesion_mask.nii.gz").get_fdata()
    assert set(np.unique(lesion)) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "where",
    [
        "sub-01/ses-M0/dwi/sub-01_ses-M0_dwi",
        "derivatives/qsiprep/sub-01/ses-M0/dwi/sub-01_ses-M0_space-ACPC_desc-preproc_dwi",
    ],
)
def test_gradient_tables(layout, where):
    bvals = np.loadtxt(layout / f"{where}.bval")
    bvecs = np.loadtxt(layout / f"{where}.bvec")
    assert bvals.tolist() == [0.0] + [1000.0] * 8
    assert bvecs.shape == (3, 9)
    np.testing.assert_allclose(np.linalg.norm(bvecs[:, 1:], axis=0), 1.0, atol=1e-5)
    assert nib.load(layout / f"{where}.nii.gz").shape == (5, 4, 3, 9)


def test_confounds_and_descriptions(layout):
    confounds = layout / (
        "derivatives/fmriprep/sub-01/ses-M0/func/sub-01_ses-M0_task-rest_desc-confounds_timeseries.tsv"
    )
    lines = confounds.read_text().splitlines()
    header = lines[0].split("\t")
    for column in ("trans_x", "rot_z", "framewise_displacement", "csf", "white_matter"):
        assert column in header
    assert lines[1].split("\t")[header.index("framewise_displacement")] == "n/a"
    for name in ("fmriprep", "qsiprep", "segmentation"):
        description = json.loads(
            (layout / "derivatives" / name / "dataset_description.json").read_text()
        )
        assert description["DatasetType"] == "derivative"
        assert description["GeneratedBy"][0]["Name"]
    sessions = (layout / "sub-01/sub-01_sessions.tsv").read_text().splitlines()
    assert sessions == ["session_id\tmonths", "ses-M0\t0", "ses-M12\t12"]


def test_study_reads_every_kind(layout):
    table = Study(layout).sessions
    assert table.iloc[:, 4:].all().all()


def test_deterministic_from_seed_and_placeholders(tmp_path):
    first = make_example_layout(tmp_path / "a", n_subjects=1, sessions=("M0",))
    again = make_example_layout(tmp_path / "b", n_subjects=1, sessions=("M0",))
    other = make_example_layout(tmp_path / "c", n_subjects=1, sessions=("M0",), seed=1)
    name = "sub-01/ses-M0/anat/sub-01_ses-M0_FLAIR.nii.gz"
    assert (first / name).read_bytes() == (again / name).read_bytes()
    assert (first / name).read_bytes() != (other / name).read_bytes()
    fast = make_example_layout(tmp_path / "d", n_subjects=1, sessions=("M0",), images=False)
    assert (fast / name).stat().st_size == 0
    assert (fast / "sub-01/ses-M0/dwi/sub-01_ses-M0_dwi.bval").stat().st_size > 0


def test_sessionless_missing_and_months_options(tmp_path):
    root = make_example_layout(
        tmp_path / "flat", n_subjects=2, sessions=None, missing=[("sub-02", None, "dseg")]
    )
    study = Study(root)
    assert study.sessions["session_id"].tolist() == [None, None]
    assert study.missing()[["participant_id", "kind"]].values.tolist() == [["sub-02", "dseg"]]
    timed = make_example_layout(
        tmp_path / "timed", n_subjects=1, sessions=("A", "B"), months=[0, 7.5]
    )
    assert Study(timed).sessions["months"].tolist() == [0.0, 7.5]


def test_argument_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputError, match="full"):
        make_example_layout(tmp_path / "full")
    with pytest.raises(InputError, match="missing"):
        make_example_layout(tmp_path / "a", missing=[("01", "M0", "dwi_preproc")])
    with pytest.raises(InputError, match="missing"):
        make_example_layout(tmp_path / "b", missing=[("07", "M0", "t1w")])
    with pytest.raises(InputError, match="months"):
        make_example_layout(tmp_path / "c", months=[0, 3])
    with pytest.raises(InputError, match="n_subjects"):
        make_example_layout(tmp_path / "d", n_subjects=0)
    with pytest.raises(InputError, match="sessions"):
        make_example_layout(tmp_path / "e", sessions=("M-0",))
