"""Tests of msimaging.derivatives: names, sidecars, atomic writes, round-trips."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msimaging import derivatives
from msimaging._version import __version__
from msimaging.derivatives import (
    DerivativesWriter,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    bids_name,
    read_relmat,
    read_table,
    sidecar_path,
)
from msimaging.errors import InputError, OutputError

# Ground truth written out independently of the module: the entity order of the brief/BIDS.
BIDS_ORDER = [
    "sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "space", "res", "den",
    "model", "param", "atlas", "seg", "roi", "meas", "label", "desc",
]  # fmt: skip
NAME_RULE = re.compile(
    r"(?P<entities>(?:[a-z]+-[A-Za-z0-9]+_)+)(?P<suffix>[A-Za-z0-9]+)(?P<ext>(\.[A-Za-z0-9]+)+)"
)


def assert_bids_name(name: str) -> list[str]:
    """Check ``key-value_..._suffix.ext``, sub first, known entities in order, desc last."""
    match = NAME_RULE.fullmatch(name)
    assert match, f"{name!r} does not follow key-value_..._suffix.ext"
    keys = [pair.split("-")[0] for pair in match["entities"].rstrip("_").split("_")]
    assert keys[0] == "sub", name
    assert all(k in BIDS_ORDER for k in keys), name
    positions = [BIDS_ORDER.index(k) for k in keys]
    assert positions == sorted(positions) and len(set(keys)) == len(keys), name
    if "desc" in keys:
        assert keys[-1] == "desc", name
    return keys


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


@pytest.fixture
def img() -> nib.Nifti1Image:
    rng = np.random.default_rng(0)
    affine = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    return nib.Nifti1Image(rng.random((5, 6, 4)).astype(np.float32), affine)


@pytest.fixture
def writer(tmp_path: Path) -> DerivativesWriter:
    return DerivativesWriter(tmp_path / "study-derivatives", input_datasets=[tmp_path / "study"])


# --------------------------------------------------------------------------------------------
# Import weight
# --------------------------------------------------------------------------------------------


def test_import_does_not_pull_heavy_dependencies():
    code = (
        "import sys, msimaging, msimaging.derivatives; "
        "print(sorted(m for m in ('numpy', 'pandas', 'nibabel') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_all_is_sorted_and_public():
    assert set(derivatives.__all__) <= set(dir(derivatives))
    assert list(derivatives.__all__) == sorted(
        derivatives.__all__, key=lambda n: (not n.isupper(), n)
    )


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def test_bids_name_orders_entities_whatever_the_keyword_order():
    name = bids_name(
        "sub-01",
        "ses-M0",
        "mask",
        ".nii.gz",
        desc="brain",
        label="WM",
        meas="fa",
        roi="cst",
        atlas="AAL3",
        param="fa",
        model="tensor",
        res="2",
        space="MNI152NLin2009cAsym",
        run=1,
        dir="AP",
        rec="x",
        ce="gd",
        acq="hi",
        task="rest",
        den="91k",
        seg="aseg",
    )
    assert name == (
        "sub-01_ses-M0_task-rest_acq-hi_ce-gd_rec-x_dir-AP_run-1_space-MNI152NLin2009cAsym_"
        "res-2_den-91k_model-tensor_param-fa_atlas-AAL3_seg-aseg_roi-cst_meas-fa_label-WM_"
        "desc-brain_mask.nii.gz"
    )
    assert assert_bids_name(name) == BIDS_ORDER


def test_bids_name_prefixes_session_none_and_none_entities():
    assert bids_name("01", None, "dwi", ".nii.gz") == "sub-01_dwi.nii.gz"
    assert bids_name("sub-01", "M12", "T1w", "nii.gz", space=None) == "sub-01_ses-M12_T1w.nii.gz"
    assert bids_name("01", "ses-M0", "bold", ".nii.gz", desc="preproc", space="T1w") == (
        "sub-01_ses-M0_space-T1w_desc-preproc_bold.nii.gz"
    )


def test_raw_style_names_pass_the_bids_validator():
    validator = pytest.importorskip("bids_validator").BIDSValidator()
    for name, folder in [
        (bids_name("01", "M0", "dwi", ".nii.gz"), "dwi"),
        (bids_name("01", "M0", "T1w", ".nii.gz", run=1), "anat"),
        (bids_name("01", "M0", "bold", ".nii.gz", task="rest", dir="AP", run=2), "func"),
    ]:
        assert validator.is_bids(f"/sub-01/ses-M0/{folder}/{name}"), name


@pytest.mark.parametrize("value", ["a_b", "a-b", "a b", "a.b", "x/y", "fä"])
def test_invalid_entity_value_names_entity_value_and_fix(value):
    with pytest.raises(InputError) as info:
        bids_name("01", "M0", "dwimap", ".nii.gz", space=value)
    message = str(info.value)
    assert "'space'" in message and repr(value) in message
    cleaned = re.sub(r"[^A-Za-z0-9]", "", value)
    assert repr(cleaned) in message


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"participant": "01_a"}, "'01_a'"),
        ({"participant": 1}, "participant"),
        ({"session": "M-0"}, "'M-0'"),
        ({"suffix": "dwi_map"}, "suffix"),
        ({"extension": "nii gz"}, "extension"),
    ],
)
def test_invalid_labels_are_refused(kwargs, culprit):
    args = {"participant": "01", "session": "M0", "suffix": "dwi", "extension": ".nii.gz"}
    args.update(kwargs)
    with pytest.raises(InputError, match=re.escape(culprit)):
        bids_name(**args)


def test_unknown_entity_lists_the_allowed_ones():
    with pytest.raises(InputError) as info:
        bids_name("01", "M0", "dwi", ".nii.gz", hemi="L")
    message = str(info.value)
    assert "hemi" in message
    assert all(e in message for e in ("task", "space", "model", "param", "meas", "desc"))


def test_sub_and_ses_as_keywords_are_refused():
    with pytest.raises(InputError, match="participant"):
        bids_name("01", None, "dwi", ".nii.gz", sub="02")


def test_sidecar_path_strips_compound_extension(tmp_path):
    data = tmp_path / "sub-01_model-tensor_param-fa_dwimap.nii.gz"
    assert sidecar_path(data) == tmp_path / "sub-01_model-tensor_param-fa_dwimap.json"
    assert sidecar_path(tmp_path / "x.json") == tmp_path / "x.json"


def test_writer_path_layout(writer):
    path = writer.path("01", "M0", "anat", "mask", ".nii.gz", desc="brain", space="T1w")
    assert path.is_absolute()
    assert (
        path == writer.root / "sub-01/ses-M0/anat/sub-01_ses-M0_space-T1w_desc-brain_mask.nii.gz"
    )
    assert writer.path("sub-01", None, "dwi", "dwimap", ".nii.gz", param="fa") == (
        writer.root / "sub-01/dwi/sub-01_param-fa_dwimap.nii.gz"
    )
    with pytest.raises(InputError, match="datatype"):
        writer.path("01", "M0", "an/at", "mask", ".nii.gz")


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def test_atomic_writes_create_parents_and_return_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = atomic_write_text("a/b/c.txt", "héllo\n")
    assert path == tmp_path / "a/b/c.txt" and path.is_absolute()
    assert path.read_bytes() == "héllo\n".encode()
    assert atomic_write_bytes(path, b"\x00\x01") == path
    assert path.read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path) == []


def test_atomic_path_is_hidden_in_same_folder_with_real_extension(tmp_path):
    final = tmp_path / "sub-01_dwimap.nii.gz"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent
        assert tmp.name.startswith(".") and tmp.name.endswith(final.name)
        assert ".tmp" in tmp.name and not tmp.exists()
        tmp.write_bytes(b"data")
        assert not final.exists()
    assert final.read_bytes() == b"data"
    assert not tmp.exists()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_keeps_previous_file_and_leaves_no_temp(tmp_path, error):
    final = tmp_path / "out" / "table.tsv"
    atomic_write_text(final, "previous\n")
    before = final.read_bytes()
    with pytest.raises(error), atomic_path(final) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"partial con")
        raise error("disk full")
    assert final.read_bytes() == before
    assert sorted(p.name for p in final.parent.iterdir()) == ["table.tsv"]


def test_failed_rename_raises_output_error_and_keeps_previous_file(tmp_path, monkeypatch):
    final = tmp_path / "x.json"
    atomic_write_text(final, "{}\n")

    def failing_replace(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(derivatives.os, "replace", failing_replace)
    with pytest.raises(OutputError, match=re.escape(str(final))):
        atomic_write_text(final, '{"new": 1}\n')
    monkeypatch.undo()
    assert final.read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_body_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(OutputError, match="did not create"), atomic_path(tmp_path / "y.txt"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_parent_that_is_a_file_is_an_output_error(tmp_path):
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(OutputError, match="blocker"):
        atomic_write_text(tmp_path / "blocker" / "f.txt", "x")


class PartialImage(nib.Nifti1Image):
    """An image whose save writes half a file and then fails, like a full disk."""

    def to_filename(self, filename, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"\x1f\x8b partial gzip")
        raise OSError(28, "No space left on device")


def test_interrupted_image_write_keeps_previous_image_and_sidecar(writer, img):
    path = writer.write_dwimap(img, "01", "M0", "fa")
    sidecar = sidecar_path(path)
    image_before, sidecar_before = path.read_bytes(), sidecar.read_bytes()

    broken = PartialImage(np.zeros((5, 6, 4), np.float32), img.affine)
    with pytest.raises(OSError, match="No space"):
        writer.write_dwimap(broken, "01", "M0", "fa", parameters={"new": True})
    assert path.read_bytes() == image_before
    assert sidecar.read_bytes() == sidecar_before
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, sidecar.name])
    assert leftovers(writer.root) == []


def test_interrupted_first_image_write_leaves_nothing(writer, img):
    broken = PartialImage(np.zeros((2, 2, 2), np.float32), np.eye(4))
    target = writer.path("01", "M0", "anat", "mask", ".nii.gz", desc="brain")
    with pytest.raises(OSError):
        writer.write_image(broken, target, sidecar={"Type": "Brain"})
    assert list(target.parent.iterdir()) == []


def test_invalid_sidecar_is_refused_before_the_image_is_written(writer, img):
    target = writer.path("01", "M0", "anat", "mask", ".nii.gz", desc="brain")
    with pytest.raises(InputError, match="Threshold"):
        writer.write_image(img, target, sidecar={"Threshold": float("nan")})
    assert not target.exists()


# --------------------------------------------------------------------------------------------
# Output folder versus input datasets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inside", ["", "derivatives", "derivatives/msimaging"])
def test_output_inside_or_equal_to_input_is_refused(tmp_path, inside):
    study = tmp_path / "study"
    study.mkdir()
    output = study / inside if inside else study
    with pytest.raises(OutputError) as info:
        DerivativesWriter(output, input_datasets=[tmp_path / "other", study])
    message = str(info.value)
    assert str(study) in message and str(output) in message
    assert str(tmp_path / "study-derivatives") in message
    assert not (study / "dataset_description.json").exists()


def test_output_reaching_input_through_symlinks_is_refused(tmp_path):
    study = tmp_path / "study"
    (study / "sub-01").mkdir(parents=True)
    link_to_study = tmp_path / "link"
    link_to_study.symlink_to(study, target_is_directory=True)
    with pytest.raises(OutputError, match=re.escape(str(study))):
        DerivativesWriter(link_to_study / "derivatives", input_datasets=[study])
    # the input given through a symlink, the output given directly
    with pytest.raises(OutputError, match=re.escape(str(study))):
        DerivativesWriter(study / "derivatives", input_datasets=[link_to_study])
    # an output folder that is itself a symlink into the input
    out_link = tmp_path / "out"
    out_link.symlink_to(study / "sub-01", target_is_directory=True)
    with pytest.raises(OutputError):
        DerivativesWriter(out_link, input_datasets=[study])


def test_sibling_output_and_missing_inputs_are_accepted(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    writer = DerivativesWriter(tmp_path / "study-derivatives", input_datasets=[study])
    assert writer.root == (tmp_path / "study-derivatives").resolve()
    assert writer.root.is_dir()
    # "study2" shares a prefix with "study" but is not inside it
    DerivativesWriter(tmp_path / "study2", input_datasets=[study, tmp_path / "nope"])


def test_relative_write_into_an_input_is_refused(tmp_path, img):
    writer = DerivativesWriter(tmp_path, input_datasets=[tmp_path / "study"])
    with pytest.raises(OutputError, match="input dataset"):
        writer.write_image(img, "study/sub-01/anat/x.nii.gz")
    assert not (tmp_path / "study").exists()


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        DerivativesWriter(tmp_path / "file")


# --------------------------------------------------------------------------------------------
# dataset_description.json
# --------------------------------------------------------------------------------------------


def test_dataset_description_content(tmp_path):
    study = tmp_path / "study"
    writer = DerivativesWriter(tmp_path / "deriv", input_datasets=[study], pipeline_name="msi")
    description = json.loads((writer.root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["BIDSVersion"] == "1.9.0"
    assert description["Name"] == "msi"
    assert description["GeneratedBy"][0]["Name"] == "msimaging"
    assert description["GeneratedBy"][0]["Version"] == __version__
    assert description["SourceDatasets"] == [{"URL": study.resolve().as_uri()}]


def test_dataset_description_rewritten_only_when_different(tmp_path):
    root = tmp_path / "deriv"
    DerivativesWriter(root)
    desc = root / "dataset_description.json"
    inode = desc.stat().st_ino
    DerivativesWriter(root)
    assert desc.stat().st_ino == inode  # identical: not rewritten
    desc.write_text('{"Name": "old"}')
    DerivativesWriter(root)
    assert json.loads(desc.read_text())["DatasetType"] == "derivative"


# --------------------------------------------------------------------------------------------
# Images and diffusion maps
# --------------------------------------------------------------------------------------------


def test_write_dwimap_bep016_name_sidecar_and_round_trip(writer, img, tmp_path):
    source = tmp_path / "study/sub-01/ses-M0/dwi/sub-01_ses-M0_dwi.nii.gz"
    path = writer.write_dwimap(
        img,
        "sub-01",
        "ses-M0",
        "fa",
        space="MNI152NLin2009cAsym",
        parameters={
            "fit_method": "WLS",
            "b0_threshold": np.int64(50),
            "bvals": np.array([0, 1000]),
        },
        sources=[source],
    )
    assert path.is_absolute()
    assert path == writer.root / (
        "sub-01/ses-M0/dwi/sub-01_ses-M0_space-MNI152NLin2009cAsym_model-tensor_param-fa_dwimap.nii.gz"
    )
    assert assert_bids_name(path.name) == ["sub", "ses", "space", "model", "param"]

    loaded = nib.load(path)
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), np.asarray(img.dataobj))
    np.testing.assert_array_equal(loaded.affine, img.affine)

    sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["Model"] == {
        "Description": "tensor",
        "Parameters": {"fit_method": "WLS", "b0_threshold": 50, "bvals": [0, 1000]},
    }
    assert sidecar["Units"] == "unitless"
    assert sidecar["Sources"] == ["bids:raw:sub-01/ses-M0/dwi/sub-01_ses-M0_dwi.nii.gz"]
    assert sidecar["GeneratedBy"][0] == {"Name": "msimaging", "Version": __version__}
    assert sidecar["SoftwareVersion"] == __version__


def test_dwimap_default_units_and_unknown_param(writer, img):
    md = writer.write_dwimap(img, "01", None, "md")
    assert md.name == "sub-01_model-tensor_param-md_dwimap.nii.gz"
    assert json.loads(sidecar_path(md).read_text())["Units"] == "mm^2/s"
    with pytest.raises(InputError, match="units"):
        writer.write_dwimap(img, "01", None, "kurt")
    path = writer.write_dwimap(img, "01", None, "kurt", model="dki", units="unitless")
    assert path.name == "sub-01_model-dki_param-kurt_dwimap.nii.gz"


def test_write_image_validates_inputs(writer, img):
    with pytest.raises(InputError, match="Nifti1Image"):
        writer.write_image(np.zeros((2, 2, 2)), writer.root / "x.nii.gz")
    with pytest.raises(InputError, match=r"\.nii\.gz"):
        writer.write_image(img, writer.root / "x.mgz")


def test_write_image_relative_path_and_sidecar(writer, img):
    path = writer.write_image(img, "sub-01/anat/sub-01_desc-brain_mask.nii.gz", sidecar={"A": 1})
    assert path == writer.root / "sub-01/anat/sub-01_desc-brain_mask.nii.gz"
    assert json.loads(sidecar_path(path).read_text())["A"] == 1


def test_write_sidecar_serialises_numpy_and_paths_and_refuses_nan(writer, tmp_path):
    data = writer.root / "sub-01/anat/sub-01_T1w.nii.gz"
    path = writer.write_sidecar(
        data,
        {
            "Volume_mm3": np.float32(1.5),
            "Count": np.int16(3),
            "Flag": np.bool_(True),
            "Matrix": np.eye(2),
            "Template": tmp_path / "t.nii.gz",
            "Labels": ("a", "b"),
        },
    )
    assert path == writer.root / "sub-01/anat/sub-01_T1w.json"
    content = json.loads(path.read_text())
    assert content["Volume_mm3"] == 1.5 and content["Count"] == 3 and content["Flag"] is True
    assert content["Matrix"] == [[1.0, 0.0], [0.0, 1.0]]
    assert content["Template"] == str(tmp_path / "t.nii.gz")
    assert content["Labels"] == ["a", "b"]
    with pytest.raises(InputError, match=r"'Inner'.*inf"):
        writer.write_sidecar(data, {"Outer": {"Inner": np.float64(np.inf)}})
    with pytest.raises(InputError, match="object"):
        writer.write_sidecar(data, {"Thing": object()})


# --------------------------------------------------------------------------------------------
# Connectivity matrices
# --------------------------------------------------------------------------------------------


@pytest.fixture
def connectome():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 7)) * np.array([1, 1e-4, 1e3, 1, 1, 1, 1])
    matrix = np.corrcoef(x, rowvar=False) * np.array([1.0, 1e-6, 1e6, 1, 1, 1, 1])
    matrix = (matrix + matrix.T) / 2
    np.fill_diagonal(matrix, np.nan)
    nodes = pd.DataFrame(
        {
            "index": np.arange(1, 8),
            "name": [f"ROI{i}" for i in range(1, 8)],
            "x": rng.normal(size=7),
            "network": ["DMN", "DMN", "Vis", "Vis", "SMN", None, "SMN"],
        }
    )
    return matrix, nodes


def test_relmat_round_trip_files_and_sidecar(writer, connectome):
    matrix, nodes = connectome
    path = writer.write_relmat(
        matrix, nodes, "01", "M0", meas="pearson", atlas="Power2011", task="rest",
        space="MNI152NLin2009cAsym", parameters={"confounds": "simple"},
    )  # fmt: skip
    assert path.is_absolute()
    assert path.parent == writer.root / "sub-01/ses-M0/func"
    assert path.name == (
        "sub-01_ses-M0_task-rest_space-MNI152NLin2009cAsym_atlas-Power2011_meas-pearson_relmat.tsv"
    )
    node_file = path.with_name(
        "sub-01_ses-M0_task-rest_space-MNI152NLin2009cAsym_atlas-Power2011_nodes.tsv"
    )
    for name in (path.name, node_file.name):
        assert_bids_name(name)

    # read back with an independent reader: no header, tabs, n/a on the diagonal
    text = path.read_text()
    assert text.splitlines()[0].split("\t")[0] == "n/a"
    back = pd.read_csv(path, sep="\t", header=None, na_values=["n/a"]).to_numpy()
    assert back.shape == matrix.shape
    np.testing.assert_allclose(back, matrix, rtol=1e-9, atol=0, equal_nan=True)
    np.testing.assert_array_equal(read_relmat(path), matrix)

    pd.testing.assert_frame_equal(read_table(node_file), nodes, check_dtype=False)

    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["RelationshipMeasure"] == "pearson"
    assert sidecar["NodeFiles"] == [node_file.name]
    assert sidecar["Directed"] is False and sidecar["ValidDiagonal"] is False
    assert sidecar["Parameters"] == {"confounds": "simple"}
    assert sidecar["SoftwareVersion"] == __version__


def test_relmat_accepts_node_names_and_finite_diagonal(writer):
    matrix = np.array([[1.0, 0.5, 0.2], [0.4, 1.0, 0.1], [0.3, 0.2, 1.0]])
    path = writer.write_relmat(matrix, ["A", "B", "C"], "01", None, meas="granger", atlas="X")
    nodes = read_table(path.with_name("sub-01_atlas-X_nodes.tsv"))
    assert nodes["index"].tolist() == [1, 2, 3] and nodes["name"].tolist() == ["A", "B", "C"]
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["Directed"] is True and sidecar["ValidDiagonal"] is True
    np.testing.assert_array_equal(read_relmat(path), matrix)


@pytest.mark.parametrize(
    ("matrix", "nodes", "pattern"),
    [
        (np.zeros((3, 4)), ["a", "b", "c"], r"square.*\(3, 4\)"),
        (np.zeros((2, 2, 2)), ["a", "b"], r"square.*\(2, 2, 2\)"),
        (np.zeros((3, 3)), ["a", "b"], r"matrix has 3 rows.*nodes has 2 rows"),
        (np.array([[np.nan, np.nan], [0.1, np.nan]]), ["a", "b"], "off-diagonal"),
        (np.array([[0, np.inf], [0.1, 0]]), ["a", "b"], "off-diagonal"),
        (np.array([[np.inf, 0], [0, 0]]), ["a", "b"], "diagonal"),
        (np.zeros((2, 2)), pd.DataFrame({"label": ["a", "b"]}), "'index' or 'name'"),
        ([["a", "b"], ["c", "d"]], ["a", "b"], "matrix"),
    ],
)
def test_relmat_validation_names_the_culprit(writer, matrix, nodes, pattern):
    with pytest.raises(InputError, match=pattern):
        writer.write_relmat(matrix, nodes, "01", "M0", meas="pearson", atlas="A")
    assert not (writer.root / "sub-01").exists()


def test_relmat_invalid_entity_value(writer):
    with pytest.raises(InputError, match=r"'atlas'.*'Power_2011'.*'Power2011'"):
        writer.write_relmat(np.eye(2), ["a", "b"], "01", "M0", meas="pearson", atlas="Power_2011")


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tidy() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "participant_id": ["sub-01", "sub-01", "sub-02"],
            "session_id": ["ses-M0", "ses-M12", "ses-M0"],
            "months": [0, 12, 0],
            "measure": ["fa", "fa", "NA"],
            "value": [0.4512345678901234, np.nan, 1e-12],
        },
        index=[10, 11, 12],
    )


def test_table_round_trip_with_nan_as_na(writer, tidy):
    path = writer.write_table(tidy, "01", "M0", "dwi", "measures", desc="roi", atlas="JHU")
    assert path == writer.root / "sub-01/ses-M0/dwi/sub-01_ses-M0_atlas-JHU_desc-roi_measures.tsv"
    assert_bids_name(path.name)
    lines = path.read_text().splitlines()
    assert lines[0] == "participant_id\tsession_id\tmonths\tmeasure\tvalue"  # no index column
    assert lines[2].endswith("\tn/a")
    back = read_table(path)
    assert back["measure"].tolist() == ["fa", "fa", "NA"]  # only n/a means missing
    pd.testing.assert_frame_equal(back, tidy.reset_index(drop=True), check_dtype=False)


def test_group_table_and_sidecar(writer, tidy):
    path = writer.write_group_table(tidy, "dti_measures", sidecar={"value": {"Units": "unitless"}})
    assert path == writer.root / "group/dti_measures.tsv"
    assert writer.write_group_table(tidy, "dti_measures.tsv") == path
    assert json.loads((writer.root / "group/dti_measures.json").read_text())["value"] == {
        "Units": "unitless"
    }
    pd.testing.assert_frame_equal(read_table(path), tidy.reset_index(drop=True), check_dtype=False)
    with pytest.raises(InputError, match=r"'\.\./evil'"):
        writer.write_group_table(tidy, "../evil")


def test_table_validation(writer, tidy):
    with pytest.raises(InputError, match="DataFrame"):
        writer.write_table(tidy.to_dict(), "01", "M0", "dwi", "measures")
    with pytest.raises(InputError, match=r"'measure'.*tabs"):
        writer.write_table(tidy.assign(measure="a\tb"), "01", "M0", "dwi", "measures")
    duplicated = pd.concat([tidy, tidy[["months"]]], axis=1)
    with pytest.raises(InputError, match="months"):
        writer.write_table(duplicated, "01", "M0", "dwi", "measures")
    with pytest.raises(InputError, match="does not exist"):
        read_table(writer.root / "missing.tsv")


def test_every_written_file_follows_the_naming_rule(writer, img, connectome, tidy):
    matrix, nodes = connectome
    writer.write_dwimap(img, "01", "M0", "fa", space="MNI152NLin2009cAsym")
    writer.write_relmat(matrix, nodes, "01", "M0", meas="pearson", atlas="Power2011", task="rest")
    writer.write_table(tidy, "01", "M0", "anat", "volumes", desc="lesions", label="WM", run=1)
    writer.write_image(img, writer.path("01", "M0", "anat", "mask", ".nii.gz", desc="brain"))
    files = [p for p in writer.root.rglob("*") if p.is_file() and p.parent != writer.root]
    assert len(files) == 7
    for file in files:
        assert_bids_name(file.name)
        rel = file.relative_to(writer.root).parts
        assert rel[:2] == ("sub-01", "ses-M0") and rel[2] in {"anat", "dwi", "func"}
    assert leftovers(writer.root) == []
    assert sorted(os.listdir(writer.root)) == [".bidsignore", "README.md",
                                               "dataset_description.json", "sub-01"]


def test_readme_written_once_and_a_users_readme_never_touched(tmp_path):
    """BIDS recommends a README at the dataset root (the validator warns without one): the
    writer adds one naming its version and layout, and leaves any README already there."""
    from msimaging._version import __version__

    ours = DerivativesWriter(tmp_path / "a").root / "README.md"
    text = ours.read_text(encoding="utf-8")
    assert __version__ in text and "group/" in text and ".bidsignore" in text
    ours.write_text("edited by the user\n", encoding="utf-8")
    DerivativesWriter(tmp_path / "a")
    assert ours.read_text(encoding="utf-8") == "edited by the user\n"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README").write_text("theirs\n", encoding="utf-8")
    DerivativesWriter(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        ".bidsignore", "README", "dataset_description.json"]


def test_relmat_sidecar_symmetric_up_to_rounding_with_zero_diagonal(writer):
    """nilearn's correlation matrices differ from their transpose by ~2e-16 and Fisher z
    leaves a 0 diagonal: BEP017 Directed false, ValidDiagonal false (issue 18)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    matrix = (a + a.T) / 2
    np.fill_diagonal(matrix, 0.0)
    matrix[0, 1] += 2.2e-16 * 4  # rounding-level asymmetry
    assert not np.array_equal(matrix, matrix.T)
    path = writer.write_relmat(matrix, list("ABCD"), "02", None, meas="pearsonz", atlas="X")
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["Directed"] is False and sidecar["ValidDiagonal"] is False
    # a real asymmetry (1e-6 of the scale) is directed
    matrix[0, 1] += 1e-6
    path = writer.write_relmat(matrix, list("ABCD"), "03", None, meas="pearsonz", atlas="X")
    assert json.loads(sidecar_path(path).read_text())["Directed"] is True
