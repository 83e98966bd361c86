"""Validated loaders: good inputs load exactly, bad inputs raise InputError naming the culprit."""

from __future__ import annotations

import gzip
import warnings

import nibabel as nib
import numpy as np
import pytest

from msimaging.errors import InputError
from msimaging.io import (
    DWI,
    bvecs_from_voxel,
    bvecs_to_voxel,
    check_same_grid,
    fsl_flips_x,
    load_dwi,
    load_image,
    load_mask,
    voxel_to_world_rotation,
)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
# FSL reads an image whose affine has a positive determinant (like AFFINE) with its first
# axis reversed, so an FSL .bvec's x component is the negated voxel-frame x.
FSL_TO_VOXEL = np.array([-1.0, 1.0, 1.0])


def _bvecs(n_dirs: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n_dirs, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def dwi_files(tmp_path):
    """A valid 5x5x5 series: 2 b0 + 6 directions at b=1000, FSL 3xN bvecs."""
    rng = np.random.default_rng(1)
    data = rng.uniform(100, 200, size=(5, 5, 5, 8)).astype(np.float32)
    bvals = np.array([0, 1000, 1000, 1000, 5, 1000, 1000, 1000], float)
    vecs = np.zeros((8, 3))
    vecs[bvals > 50] = _bvecs(6)
    path = tmp_path / "sub-01_dwi.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    np.savetxt(tmp_path / "sub-01_dwi.bval", bvals[None], fmt="%g")
    np.savetxt(tmp_path / "sub-01_dwi.bvec", vecs.T, fmt="%.8f")
    return path, data, bvals, vecs


def _save(tmp_path, name, data, affine=AFFINE):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


# --- good inputs -----------------------------------------------------------------------------


def test_load_dwi_reads_sidecars_and_returns_exact_table(dwi_files):
    path, data, bvals, vecs = dwi_files
    dwi = load_dwi(path)
    assert isinstance(dwi, DWI)
    np.testing.assert_array_equal(dwi.bvals, bvals)
    np.testing.assert_allclose(dwi.bvecs, vecs * FSL_TO_VOXEL, atol=1e-7)
    np.testing.assert_allclose(dwi.bvecs_in("fsl"), vecs, atol=1e-7)
    assert dwi.bvec_convention == "fsl" and any("x negated" in n for n in dwi.notes)
    np.testing.assert_array_equal(np.asanyarray(dwi.img.dataobj), data)
    np.testing.assert_array_equal(dwi.b0_mask, bvals <= 50)
    assert dwi.source == str(path)
    gtab = dwi.gradient_table()
    np.testing.assert_array_equal(gtab.b0s_mask, bvals <= 50)


def test_load_dwi_accepts_nx3_bvecs_and_normalises_within_tolerance(dwi_files):
    path, _, bvals, vecs = dwi_files
    scaled = vecs * 1.02  # 2% off unit norm: a rounding-level deviation
    dwi = load_dwi(path, bvals, scaled)  # Nx3 array
    np.testing.assert_allclose(np.linalg.norm(dwi.bvecs[bvals > 50], axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(dwi.bvecs, vecs * FSL_TO_VOXEL, atol=1e-12)
    assert dwi.notes and "normalised" in dwi.notes[0]


def test_load_image_does_not_modify_in_memory_input():
    data = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    img = nib.Nifti1Image(data.copy(), AFFINE)
    out = load_image(img, ndim=3)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    np.testing.assert_array_equal(out.affine, AFFINE)


def test_probability_mask_needs_explicit_threshold(tmp_path):
    prob = np.zeros((4, 4, 4), np.float32)
    prob[1:3, 1:3, 1:3] = 0.8
    prob[0, 0, 0] = 0.3
    path = _save(tmp_path, "prob.nii.gz", prob)
    with pytest.raises(InputError, match=r"prob\.nii\.gz.*not binary.*threshold=0\.5"):
        load_mask(path, name="wm_mask")
    mask = load_mask(path, threshold=0.5)
    assert int(np.asanyarray(mask.dataobj).sum()) == 8  # the 2x2x2 block only


def test_same_grid_within_tolerance_passes(tmp_path):
    a = nib.Nifti1Image(np.zeros((4, 4, 4)), AFFINE)
    shifted = AFFINE.copy()
    shifted[0, 3] += 1e-5
    check_same_grid(a, nib.Nifti1Image(np.zeros((4, 4, 4, 2)), shifted))


# --- bad inputs: each names the culprit ------------------------------------------------------


def test_bval_count_mismatch(dwi_files, tmp_path):
    path, _, bvals, _ = dwi_files
    bad = tmp_path / "short.bval"
    np.savetxt(bad, bvals[None, :-1], fmt="%g")
    with pytest.raises(InputError, match=r"short\.bval.*7 values.*8 volumes"):
        load_dwi(path, bad, tmp_path / "sub-01_dwi.bvec")


def test_bvec_count_mismatch(dwi_files, tmp_path):
    path, _, _, vecs = dwi_files
    bad = tmp_path / "short.bvec"
    np.savetxt(bad, vecs[:-2].T, fmt="%.8f")
    with pytest.raises(InputError, match=r"short\.bvec.*6 directions.*8 volumes"):
        load_dwi(path, tmp_path / "sub-01_dwi.bval", bad)


def test_3d_image_given_as_dwi(tmp_path, dwi_files):
    _, _, bvals, vecs = dwi_files
    path = _save(tmp_path, "t1.nii.gz", np.ones((5, 5, 5), np.float32))
    with pytest.raises(InputError, match=r"dwi 't1\.nii\.gz'|t1\.nii\.gz.*3 dimensions.*4-D"):
        load_dwi(path, bvals, vecs)


def test_zero_norm_bvec_at_positive_b(dwi_files):
    path, _, bvals, vecs = dwi_files
    vecs = vecs.copy()
    vecs[2] = 0.0
    with pytest.raises(
        InputError, match=r"bvecs: zero-length gradient direction at volume\(s\) 2"
    ):
        load_dwi(path, bvals, vecs)


def test_no_b0(dwi_files):
    path, _, bvals, vecs = dwi_files
    bvals = np.full_like(bvals, 1000.0)
    vecs = _bvecs(8)
    with pytest.raises(InputError, match=r"bvals: no b0 volume.*b0_threshold=50"):
        load_dwi(path, bvals, vecs)


def test_nan_volume(tmp_path, dwi_files):
    _, data, bvals, vecs = dwi_files
    data = data.copy()
    data[1, 1, 1, 3] = np.nan
    path = _save(tmp_path, "nan_dwi.nii.gz", data)
    with pytest.raises(InputError, match=r"nan_dwi\.nii\.gz.*1 NaN.*volume\(s\) 3"):
        load_dwi(path, bvals, vecs)


def test_bvecs_not_unit_beyond_tolerance(dwi_files):
    path, _, bvals, vecs = dwi_files
    with pytest.raises(InputError, match=r"bvecs.*not unit vectors.*norm 1000"):
        load_dwi(path, bvals, vecs * 1000.0)  # scaled by the b-value


def test_missing_bval_file(dwi_files):
    path, *_ = dwi_files
    (path.parent / "sub-01_dwi.bval").unlink()
    with pytest.raises(InputError, match=r"sub-01_dwi\.bval' does not exist"):
        load_dwi(path)


def test_unparseable_bvec_file(dwi_files):
    path, *_ = dwi_files
    (path.parent / "sub-01_dwi.bvec").write_text("0 1 x\n0 0 1\n")
    with pytest.raises(InputError, match=r"sub-01_dwi\.bvec.*cannot be parsed"):
        load_dwi(path)


def test_truncated_nifti_gz(tmp_path, dwi_files):
    path, *_ = dwi_files
    raw = path.read_bytes()
    truncated = tmp_path / "truncated_dwi.nii.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"truncated_dwi\.nii\.gz.*(truncated|cannot be read)"):
        load_image(truncated)


def test_corrupt_file_not_an_image(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti header" * 3))
    with pytest.raises(InputError, match=r"notes\.nii\.gz.*cannot be read"):
        load_image(path)


def test_missing_image_file(tmp_path):
    with pytest.raises(InputError, match=r"lesion_mask '.*absent\.nii\.gz' does not exist"):
        load_mask(tmp_path / "absent.nii.gz", name="lesion_mask")


def test_mask_on_another_grid(tmp_path):
    ref = _save(tmp_path, "fa.nii.gz", np.ones((5, 5, 5), np.float32))
    mask = _save(tmp_path, "wm.nii.gz", np.ones((4, 5, 5), np.uint8))
    msg = r"wm_mask '.*wm\.nii\.gz' is not on the grid of fa.*\(4, 5, 5\)"
    with pytest.raises(InputError, match=msg):
        load_mask(mask, name="wm_mask", reference=ref, reference_name="fa")


def test_affine_mismatch_reports_mm(tmp_path):
    a = _save(tmp_path, "a.nii.gz", np.ones((5, 5, 5), np.float32))
    moved = AFFINE.copy()
    moved[1, 3] = 3.0  # 3 mm translation along y
    b = _save(tmp_path, "b.nii.gz", np.ones((5, 5, 5), np.float32), moved)
    with pytest.raises(InputError, match=r"b\.nii\.gz.*affines differ.*up to 3 mm"):
        check_same_grid(a, b, names=("dwi", "mask"))


def test_empty_mask(tmp_path):
    path = _save(tmp_path, "empty.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match=r"empty\.nii\.gz.*is empty"):
        load_mask(path)


def test_empty_after_threshold(tmp_path):
    path = _save(tmp_path, "low.nii.gz", np.full((4, 4, 4), 0.2, np.float32))
    with pytest.raises(InputError, match=r"low\.nii\.gz.*empty.*above threshold 0\.5"):
        load_mask(path, threshold=0.5)


def test_non_binary_mask(tmp_path):
    data = np.zeros((4, 4, 4), np.int16)
    data[0, 0, 0] = 1
    data[1, 1, 1] = 7
    path = _save(tmp_path, "labels.nii.gz", data)
    with pytest.raises(InputError, match=r"labels\.nii\.gz.*not binary.*\(7\)"):
        load_mask(path)


def test_wrong_input_type():
    msg = r"image \(a ndarray\) must be a file path or a nibabel image"
    with pytest.raises(InputError, match=msg):
        load_image(np.zeros((3, 3, 3)))


def test_in_memory_dwi_needs_gradients():
    img = nib.Nifti1Image(np.ones((3, 3, 3, 4), np.float32), AFFINE)
    with pytest.raises(InputError, match=r"dwi \(in-memory image\).*pass bvals= and bvecs="):
        load_dwi(img)


def test_valid_inputs_raise_no_warning(dwi_files):
    path, *_ = dwi_files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dwi(path)


# --- gradient frames -------------------------------------------------------------------------


def _oblique(det_positive: bool, zooms=(2.0, 2.5, 3.0)) -> np.ndarray:
    """An oblique affine (rotation of 30° about (1, 2, 3)) with anisotropic voxels."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(30.0)
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([zooms[0] * (1 if det_positive else -1), *zooms[1:]])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return affine, rotation


@pytest.mark.parametrize("det_positive", [False, True])
def test_bvec_frames_follow_fsl_definition_on_oblique_grids(tmp_path, det_positive):
    """A physical (world) gradient direction written to an FSL .bvec by FSL's definition
    (image axes, x reversed when det > 0) is read back as that world direction."""
    affine, rotation = _oblique(det_positive)
    mirror = np.diag([1.0 if det_positive else -1.0, 1.0, 1.0])
    voxel_to_world = rotation @ mirror  # the affine's columns divided by the voxel sizes
    np.testing.assert_allclose(voxel_to_world_rotation(affine), voxel_to_world, atol=1e-12)
    assert fsl_flips_x(affine) == det_positive
    world = np.vstack([np.zeros(3), _bvecs(6, seed=3)])
    voxel = world @ voxel_to_world  # rows: Rᵀ g
    fsl = voxel * (FSL_TO_VOXEL if det_positive else 1.0)
    bvals = np.array([0.0] + [1000.0] * 6)
    img = nib.Nifti1Image(np.ones((3, 3, 3, 7), np.float32), affine)
    path = _save(tmp_path, "sub-01_dwi.nii.gz", np.ones((3, 3, 3, 7), np.float32), affine)
    np.savetxt(tmp_path / "sub-01_dwi.bval", bvals[None], fmt="%g")
    np.savetxt(tmp_path / "sub-01_dwi.bvec", fsl.T, fmt="%.10f")
    dwi = load_dwi(path)
    np.testing.assert_allclose(dwi.bvecs, voxel, atol=1e-9)
    np.testing.assert_allclose(dwi.bvecs_in("world"), world, atol=1e-9)
    np.testing.assert_allclose(dwi.bvecs_in("fsl"), fsl, atol=1e-9)
    for given, convention in ((voxel, "voxel"), (world, "world"), (fsl, "fsl")):
        again = load_dwi(img, bvals, given, bvec_convention=convention)
        np.testing.assert_allclose(again.bvecs, voxel, atol=1e-9)
        assert again.bvec_convention == convention
        np.testing.assert_allclose(
            bvecs_from_voxel(bvecs_to_voxel(given, affine, convention), affine, convention),
            given, atol=1e-12,
        )
    # dipy's gradient table is in the voxel frame.
    np.testing.assert_allclose(dwi.gradient_table().bvecs, voxel, atol=1e-9)


def test_bvec_convention_and_affine_are_checked(dwi_files):
    path = dwi_files[0]
    with pytest.raises(InputError, match=r"bvec_convention='ras'.*choose 'fsl'"):
        load_dwi(path, bvec_convention="ras")
    with pytest.raises(InputError, match="affine is singular"):
        fsl_flips_x(np.diag([2.0, 0.0, 2.0, 1.0]))
    with pytest.raises(InputError, match=r"affine must be a finite \(4, 4\)"):
        voxel_to_world_rotation(np.eye(2))
