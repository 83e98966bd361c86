"""The demo's derivatives pass the official BIDS validator, and the pieces that make them valid.

The validator (``bids-validator-deno``, in the test extras) runs on the tiny demo's
derivatives and must report 0 errors; its warnings are printed (``pytest -s``) for the
closing note. Unit tests check, against hand-derived values, the ITK transform files
(RAS -> LPS, ITK's fixed -> moving convention), ``.bidsignore`` merging, portable ``Sources``
and the NIfTI units of written images.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msimaging.derivatives import (
    BIDSIGNORE_PATTERNS,
    DerivativesLayout,
    DerivativesWriter,
    merge_bidsignore,
    portable_source,
)
from msimaging.registration import (
    AffineTransform,
    itk_affine_text,
    load_transform,
    read_itk_affine,
)

pytestmark = pytest.mark.timeout(900)


def _validator() -> str:
    here = str(Path(sys.executable).parent)
    found = shutil.which("bids-validator-deno", path=os.pathsep.join(
        [here, os.environ.get("PATH", "")]))
    if found is None:
        pytest.fail("bids-validator-deno is not installed: it is in the test extras, install "
                    "it with `pip install -e '.[test]'` (or `pip install bids-validator-deno`).")
    return found


# --------------------------------------------------------------------------------------------
# The official validator on the demo's derivatives
# --------------------------------------------------------------------------------------------


def test_demo_derivatives_pass_the_bids_validator(tiny_demo):
    out, proc = tiny_demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    deriv = out / "derivatives" / "msimaging"
    run = subprocess.run([_validator(), str(deriv), "--format", "json"],
                         capture_output=True, text=True, timeout=600)
    assert run.stdout.strip(), run.stderr[-3000:]
    issues = json.loads(run.stdout)["issues"]["issues"]
    errors = [i for i in issues if i["severity"] == "error"]
    warnings = collections.Counter(
        (i["code"], i.get("subCode")) for i in issues if i["severity"] == "warning")
    print("\nBIDS validator warnings:", dict(sorted(warnings.items(), key=str)))
    assert errors == [], "\n".join(
        f"{i['code']} {i.get('subCode') or ''} {i['location']}" for i in errors[:40])
    # The derivatives carry their README (the writer adds one); authors cannot be known.
    assert not any(code == "README_FILE_MISSING" for code, _ in warnings), warnings


def test_demo_sources_are_portable_and_transforms_load(tiny_demo):
    out, proc = tiny_demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    deriv = out / "derivatives" / "msimaging"
    machine = str(out)
    for sidecar in deriv.rglob("sub-*/**/*.json"):
        if sidecar.name.endswith("_provenance.json"):
            continue  # the run record, which must name the inputs it checks
        meta = json.loads(sidecar.read_text())
        for key in ("Sources", "SpatialReference"):
            values = meta.get(key, [])
            for value in [values] if isinstance(values, str) else values:
                assert not value.startswith("/") and machine not in value, (sidecar, value)
                if key == "Sources":
                    assert value.startswith("bids:") or "/" not in value, (sidecar, value)
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["DatasetLinks"]["raw"] == (out / "study").resolve().as_uri()
    xfms = sorted(deriv.rglob("*_xfm.txt"))
    assert {p.name.split("_from-")[1] for p in xfms} >= {
        "MNI152NLin2009cAsym_to-T1w_mode-image_xfm.txt", "T1w_to-dwi_mode-image_xfm.txt",
        "sesM3_to-sesM0_mode-image_xfm.txt"}
    for path in xfms:
        assert path.read_text().startswith("#Insight Transform File V1.0\n")
        assert isinstance(load_transform(path), AffineTransform)
    assert not list(deriv.rglob("*_xfm.json")) or all(
        (p.with_suffix(".txt")).is_file() for p in deriv.rglob("*_xfm.json"))
    assert DerivativesLayout(deriv).group_table("visits").name == "visits.tsv"
    assert not (deriv / "group" / "sessions.tsv").exists()


# --------------------------------------------------------------------------------------------
# ITK transforms: hand-derived ground truth
# --------------------------------------------------------------------------------------------


def _rotation_x_90_plus_translation() -> np.ndarray:
    # RAS: y = R x + t with R a +90 degree rotation about x (y -> z), t = (10, 20, 30) mm.
    matrix = np.eye(4)
    matrix[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
    matrix[:3, 3] = [10, 20, 30]
    return matrix


def test_itk_text_of_known_ras_transform_is_the_hand_derived_lps_matrix():
    text = itk_affine_text(_rotation_x_90_plus_translation())
    lines = text.splitlines()
    assert lines[0] == "#Insight Transform File V1.0"
    assert lines[2] == "Transform: AffineTransform_double_3_3"
    # LPS = F R F with F = diag(-1, -1, 1): entries (1,2) and (2,1) change sign;
    # translation (-10, -20, 30).
    params = [float(v) for v in lines[3].removeprefix("Parameters: ").split()]
    assert params == [1, 0, 0, 0, 0, 1, 0, -1, 0, -10, -20, 30]
    assert lines[4] == "FixedParameters: 0.0 0.0 0.0"


def test_itk_file_with_centre_maps_points_as_itk_does(tmp_path):
    # ITK: y = A (x - c) + T + c in LPS. A = +90 degrees about z, c = (1, 2, 3), T = 0.
    # The centre is fixed; LPS c + e_x = (2, 2, 3) -> c + A e_x = (1, 3, 3).
    path = tmp_path / "ants_0GenericAffine.txt"
    path.write_text("#Insight Transform File V1.0\n#Transform 0\n"
                    "Transform: MatrixOffsetTransformBase_double_3_3\n"
                    "Parameters: 0 -1 0 1 0 0 0 0 1 0 0 0\nFixedParameters: 1 2 3\n")
    matrix = read_itk_affine(path)
    ras_points = np.array([[-1.0, -2.0, 3.0], [-2.0, -2.0, 3.0]])  # LPS c and c + e_x
    moved = ras_points @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(moved, [[-1.0, -2.0, 3.0], [-1.0, -3.0, 3.0]], atol=1e-12)


def test_transform_txt_round_trip_is_exact_and_old_json_still_loads(tmp_path):
    rng = np.random.default_rng(3)
    matrix = np.eye(4)
    matrix[:3, :] = rng.normal(size=(3, 4))
    grid = np.diag([2.0, 2.0, 2.0, 1.0])
    xfm = AffineTransform(matrix, (4, 5, 6), grid, (7, 8, 9), np.eye(4), kind="affine")
    path = xfm.save(tmp_path / "sub-01_from-T1w_to-dwi_mode-image_xfm.txt")
    assert path.suffix == ".txt" and (tmp_path / "sub-01_from-T1w_to-dwi_mode-image_xfm.json"
                                      ).is_file()
    for given in (path, path.with_suffix(".json")):  # the .txt or its sidecar
        loaded = load_transform(given)
        assert np.array_equal(loaded.matrix, matrix)  # exact: repr() round-trips floats
        assert loaded.static_shape == (4, 5, 6) and loaded.moving_shape == (7, 8, 9)
        np.testing.assert_array_equal(loaded.static_affine, grid)
        assert loaded.kind == "affine"
    # A derivative written by msimaging before the ITK files (all-JSON format 1).
    old = tmp_path / "sub-01_ses-M0_desc-T1wToDwi_xfm.json"
    old.write_text(json.dumps({
        "type": "affine", "format_version": 1, "kind": "rigid",
        "convention": "matrix maps static world mm to moving world mm (dipy)",
        "matrix": _rotation_x_90_plus_translation().tolist(),
        "static": {"shape": [4, 5, 6], "affine": np.eye(4).tolist()},
        "moving": {"shape": [7, 8, 9], "affine": np.eye(4).tolist()},
        "metric_value": 0.5, "quality": None}))
    legacy = load_transform(old)
    np.testing.assert_array_equal(legacy.matrix, _rotation_x_90_plus_translation())
    assert legacy.kind == "rigid" and legacy.metric_value == 0.5


def test_itk_file_without_sidecar_is_a_clear_error(tmp_path):
    path = tmp_path / "x_xfm.txt"
    path.write_text(itk_affine_text(np.eye(4)))
    from msimaging.errors import InputError

    with pytest.raises(InputError, match="no JSON sidecar"):
        load_transform(path)
    bad = tmp_path / "bad_xfm.txt"
    bad.write_text("not a transform\n")
    with pytest.raises(InputError, match="Insight Transform File"):
        read_itk_affine(bad)


# --------------------------------------------------------------------------------------------
# .bidsignore, Sources, units
# --------------------------------------------------------------------------------------------


def test_bidsignore_merges_keeps_user_lines_and_never_duplicates(tmp_path):
    root = tmp_path / "deriv"
    root.mkdir()
    (root / ".bidsignore").write_text("mystuff/\n*_dwimap.nii.gz\n")
    DerivativesWriter(root, input_datasets=[tmp_path / "study"])
    lines = (root / ".bidsignore").read_text().splitlines()
    assert lines[:2] == ["mystuff/", "*_dwimap.nii.gz"]
    assert lines.count("*_dwimap.nii.gz") == 1
    assert set(BIDSIGNORE_PATTERNS) <= set(lines)
    assert "*" not in lines and "**" not in lines and "sub-*" not in lines
    inode = (root / ".bidsignore").stat().st_ino
    DerivativesWriter(root, input_datasets=[tmp_path / "study"])
    merge_bidsignore(root, ["*_dwimap.json"])
    assert (root / ".bidsignore").stat().st_ino == inode  # nothing missing: not rewritten
    merge_bidsignore(root, ["*_new.tsv", "*_new.tsv"])
    assert (root / ".bidsignore").read_text().splitlines().count("*_new.tsv") == 1
    assert [p.name for p in root.iterdir() if ".tmp." in p.name] == []


def test_sources_become_bids_uris_never_machine_paths(tmp_path):
    study = tmp_path / "study"
    writer = DerivativesWriter(tmp_path / "deriv", input_datasets=[study])
    raw = study / "sub-01" / "ses-M0" / "dwi" / "sub-01_ses-M0_dwi.nii.gz"
    own = writer.root / "sub-01/ses-M0/dwi/sub-01_ses-M0_model-tensor_param-fa_dwimap.nii.gz"
    elsewhere = tmp_path / "templates" / "mni_t1.nii.gz"
    side = writer.write_sidecar(writer.root / "sub-01/ses-M0/dwi/sub-01_ses-M0_desc-x_mask.nii.gz",
                                {"Sources": [raw, own, elsewhere, "doi:10.1/abc"],
                                 "SpatialReference": raw})
    meta = json.loads(side.read_text())
    assert meta["Sources"] == [
        "bids:raw:sub-01/ses-M0/dwi/sub-01_ses-M0_dwi.nii.gz",
        "bids::sub-01/ses-M0/dwi/sub-01_ses-M0_model-tensor_param-fa_dwimap.nii.gz",
        "mni_t1.nii.gz",
        "doi:10.1/abc",
    ]
    assert meta["SpatialReference"] == "bids:raw:sub-01/ses-M0/dwi/sub-01_ses-M0_dwi.nii.gz"
    assert meta["Software"] == "msimaging"
    links = json.loads((writer.root / "dataset_description.json").read_text())["DatasetLinks"]
    assert links == {"raw": study.resolve().as_uri()}
    assert portable_source("bids:raw:sub-01/x.nii.gz", writer.root) == "bids:raw:sub-01/x.nii.gz"


def test_written_images_get_mm_units_without_touching_the_callers_image(tmp_path):
    writer = DerivativesWriter(tmp_path / "deriv")
    img = nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4))
    assert img.header.get_xyzt_units() == ("unknown", "unknown")
    path = writer.write_image(img, writer.path("01", "M0", "dwi", "mask", ".nii.gz", desc="x"))
    assert nib.load(path).header.get_xyzt_units()[0] == "mm"
    assert img.header.get_xyzt_units() == ("unknown", "unknown")
