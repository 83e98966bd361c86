"""Registration against the ground truth of the synthetic study (tiny preset, one session).

Truth: the T1w and DWI of a session share their world space (T1 -> DWI is the identity) and
the MNI -> native placement of the head is ``mni_to_native`` in ``ground_truth.json``.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from msimaging import registration as reg
from msimaging.errors import InputError

SUB, SES = "sub-01", "ses-M0"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One subject, one session, no head motion; the images and truth the tests need."""
    from msimaging.datasets import make_synthetic_study

    root = make_synthetic_study(
        tmp_path_factory.mktemp("registration") / "study",
        n_subjects=1,
        sessions=("M0",),
        seed=0,
        preset="tiny",
        head_motion=False,
    )
    truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    session = root / SUB / SES
    dwi = nib.load(session / "dwi" / f"{SUB}_{SES}_dwi.nii.gz")
    bvals = np.loadtxt(session / "dwi" / f"{SUB}_{SES}_dwi.bval")
    mean_b0 = nib.Nifti1Image(
        np.asanyarray(dwi.dataobj)[..., bvals <= 50].mean(axis=-1).astype(np.float32), dwi.affine
    )
    truth_dir = root / "sourcedata" / "ground_truth" / SUB / SES
    return {
        "root": root,
        "t1": nib.load(session / "anat" / f"{SUB}_{SES}_T1w.nii.gz"),
        "b0": mean_b0,
        "dseg": nib.load(
            root / "derivatives" / "segmentation" / SUB / SES / "anat" / f"{SUB}_{SES}_dseg.nii.gz"
        ),
        "truth_tissue": nib.load(truth_dir / "dwi" / f"{SUB}_{SES}_desc-tissue_dseg.nii.gz"),
        "mni_to_native": np.array(truth["subjects"][SUB]["mni_to_native"][SES]),
    }


@pytest.fixture(scope="module")
def t1_to_dwi(study):
    return reg.register_affine(study["t1"], study["b0"], transform="rigid")


@pytest.fixture(scope="module")
def template():
    # The tiny study's anatomy is derived from the 4 mm template.
    return reg.mni_template("t1", resolution_mm=4)


@pytest.fixture(scope="module")
def mni_to_t1(study, template):
    return reg.register_affine(template, study["t1"], transform="affine")


@pytest.fixture(scope="module")
def syn(study, template, mni_to_t1):
    return reg.register_syn(template, study["t1"], prealign=mni_to_t1)


def _world(img: nib.Nifti1Image, mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask)
    return ijk @ img.affine[:3, :3].T + img.affine[:3, 3]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def _zscore(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (data - data[mask].mean()) / data[mask].std()


# ---------------------------------------------------------------------------------------------
# Accuracy against the truth
# ---------------------------------------------------------------------------------------------


def test_t1_to_dwi_rigid_recovers_identity(study, t1_to_dwi):
    tissue = study["truth_tissue"]
    points = _world(tissue, np.asanyarray(tissue.dataobj) > 0)
    # The true static (DWI mm) -> moving (T1 mm) map is the identity.
    error_mm = np.linalg.norm(t1_to_dwi.transform_points(points) - points, axis=1)
    voxel_mm = float(tissue.header.get_zooms()[0])
    print(
        f"T1->DWI rigid: mean displacement {error_mm.mean():.3f} mm "
        f"({error_mm.mean() / voxel_mm:.3f} DWI voxel), max {error_mm.max():.3f} mm, "
        f"{t1_to_dwi.seconds:.2f} s"
    )
    assert t1_to_dwi.kind == "rigid"
    assert t1_to_dwi.metric_value is not None and t1_to_dwi.metric_value > 0
    assert error_mm.mean() < voxel_mm
    # Rigid: the 3x3 part stays a rotation.
    rotation = t1_to_dwi.matrix[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-6)


def test_mni_to_t1_affine_matches_truth(study, template, mni_to_t1):
    truth = study["mni_to_native"]
    voxel_mm = float(study["t1"].header.get_zooms()[0])
    mask = reg.mni_template("brain_mask", resolution_mm=4)
    mni_points = _world(mask, np.asanyarray(mask.dataobj) > 0)
    # MNI landmarks -> native mm, with the recovered map (moving -> static) and the truth.
    true_native = mni_points @ truth[:3, :3].T + truth[:3, 3]
    native_error = np.linalg.norm(
        mni_to_t1.transform_points(mni_points, inverse=True) - true_native, axis=1
    )
    # Native brain voxels -> MNI mm: the recovered matrix should equal inv(mni_to_native).
    dseg = study["dseg"]
    native_points = _world(dseg, np.asanyarray(dseg.dataobj) > 0)
    inverse = np.linalg.inv(truth)
    true_mni = native_points @ inverse[:3, :3].T + inverse[:3, 3]
    mni_error = np.linalg.norm(mni_to_t1.transform_points(native_points) - true_mni, axis=1)
    print(
        f"MNI->T1 affine: landmark error MNI->native {native_error.mean():.3f} mm "
        f"({native_error.mean() / voxel_mm:.3f} T1 voxel), native->MNI {mni_error.mean():.3f} "
        f"mm, max {max(native_error.max(), mni_error.max()):.3f} mm, {mni_to_t1.seconds:.2f} s"
    )
    # Accuracy where it matters, over the brain: mean landmark error under a tenth of a T1
    # voxel, worst under a quarter (measured: 0.113 mm mean, 0.261 mm max at 4 mm voxels;
    # linear part off by 0.0011 at most). Spread (issue 19): 9 runs in 4 processes, 6 of them
    # with the other core busy (`while 1: pass`), 1 and 2 BLAS threads, gave bit-identical
    # matrices: dipy's sparse sampling draws its jitter from a fixed seed and the optimiser is
    # serial, so load changes the time (2.4 -> 6.5 s), never the result. The bounds' margin
    # (3.5x on the mean, 4x on the worst, 4.5x on the linear part) is for code and data
    # changes, not for run-to-run noise, which is zero.
    assert native_error.mean() < 0.1 * voxel_mm
    assert mni_error.mean() < 0.1 * voxel_mm
    assert max(native_error.max(), mni_error.max()) < 0.25 * voxel_mm
    # Rotation/scale/shear part element by element (measured max difference 0.0015). The
    # translation column is the error at world (0, 0, 0), outside the brain, where tiny
    # linear-part differences are amplified: a 0.05 mm bound on it failed at 0.0504 mm while
    # the landmark error over the brain was 0.069 mm; the landmark bounds above cover it.
    np.testing.assert_allclose(mni_to_t1.matrix[:3, :3], inverse[:3, :3], atol=0.005)


def test_wm_dice_on_dwi_grid(study, t1_to_dwi):
    warped = t1_to_dwi.apply(study["dseg"], interpolation="nearest")
    tissue = study["truth_tissue"]
    assert warped.shape == tissue.shape
    np.testing.assert_allclose(warped.affine, tissue.affine)
    labels = np.asanyarray(warped.dataobj)
    dice = _dice(labels == 3, np.asanyarray(tissue.dataobj) == 3)
    print(f"WM Dice on the DWI grid (T1 dseg warped, nearest): {dice:.3f}")
    assert dice > 0.7


def test_composed_mni_to_dwi_places_template_mask(study, mni_to_t1, t1_to_dwi):
    mni_to_dwi = reg.compose(mni_to_t1, t1_to_dwi)
    np.testing.assert_allclose(mni_to_dwi.matrix, mni_to_t1.matrix @ t1_to_dwi.matrix)
    warped = mni_to_dwi.apply(reg.mni_template("brain_mask", 4), interpolation="nearest")
    tissue = np.asanyarray(study["truth_tissue"].dataobj)
    parenchyma = np.isin(tissue, (2, 3, 4, 5, 6, 8))  # GM, WM, deep GM, infratentorial, lesion
    covered = np.count_nonzero(np.asanyarray(warped.dataobj).astype(bool) & parenchyma)
    print(f"MNI brain mask covers {covered / parenchyma.sum():.3f} of the true parenchyma")
    assert covered / parenchyma.sum() > 0.9


def test_syn_reduces_dissimilarity(study, template, mni_to_t1, syn):
    static = study["t1"].get_fdata()
    mask = np.asanyarray(study["dseg"].dataobj) > 0
    target = _zscore(static, mask)
    affine_only = _zscore(mni_to_t1.apply(template).get_fdata(), mask)
    nonlinear = _zscore(syn.apply(template).get_fdata(), mask)
    msd_affine = float(np.mean((affine_only - target)[mask] ** 2))
    msd_syn = float(np.mean((nonlinear - target)[mask] ** 2))
    print(f"SyN: MSD of z-scored T1 {msd_affine:.4f} (affine) -> {msd_syn:.4f} (SyN)")
    assert msd_syn < msd_affine
    # The inverse warp brings the subject back onto the template grid.
    back = syn.apply_inverse(study["t1"])
    assert back.shape == template.shape
    tpl = template.get_fdata()
    inside = np.asanyarray(reg.mni_template("brain_mask", 4).dataobj) > 0
    r = np.corrcoef(back.get_fdata()[inside], tpl[inside])[0, 1]
    assert r > 0.9


# ---------------------------------------------------------------------------------------------
# Applying, saving, loading
# ---------------------------------------------------------------------------------------------


def test_nearest_keeps_labels_and_dtype(study, t1_to_dwi):
    dseg = study["dseg"]
    source = np.asanyarray(dseg.dataobj)
    warped = reg.apply_transform(dseg, t1_to_dwi, interpolation="nearest")
    out = np.asanyarray(warped.dataobj)
    assert out.dtype == source.dtype
    assert set(np.unique(out)) <= set(np.unique(source))
    linear = t1_to_dwi.apply(study["t1"])
    assert linear.get_fdata().dtype == np.float64 and linear.get_data_dtype() == np.float32


def test_apply_inverse_round_trip(study, t1_to_dwi):
    back = reg.apply_transform(study["b0"], t1_to_dwi, inverse=True)
    assert back.shape == study["t1"].shape
    np.testing.assert_allclose(back.affine, study["t1"].affine)
    direct = t1_to_dwi.apply_inverse(study["b0"]).get_fdata()
    np.testing.assert_array_equal(back.get_fdata(), direct)
    identity = t1_to_dwi.then(t1_to_dwi.inverse(), check_grid=False)
    np.testing.assert_allclose(identity.matrix, np.eye(4), atol=1e-10)


def test_affine_save_load_round_trip(tmp_path, study, t1_to_dwi):
    path = t1_to_dwi.save(tmp_path / "sub-01_from-T1w_to-dwi_xfm.json")
    loaded = reg.load_transform(path)
    assert isinstance(loaded, reg.AffineTransform)
    np.testing.assert_array_equal(loaded.matrix, t1_to_dwi.matrix)
    assert loaded.kind == "rigid" and loaded.static_shape == t1_to_dwi.static_shape
    np.testing.assert_array_equal(
        loaded.apply(study["t1"]).get_fdata(), t1_to_dwi.apply(study["t1"]).get_fdata()
    )
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_syn_save_load_round_trip(tmp_path, study, template, syn):
    path = syn.save(tmp_path / "syn.json")
    assert (tmp_path / "syn_forward.nii.gz").is_file()
    assert (tmp_path / "syn_backward.nii.gz").is_file()
    loaded = reg.load_transform(path)
    assert isinstance(loaded, reg.SyNTransform)
    np.testing.assert_array_equal(
        loaded.apply(template).get_fdata(), syn.apply(template).get_fdata()
    )
    np.testing.assert_array_equal(
        loaded.apply_inverse(study["t1"], interpolation="nearest").get_fdata(),
        syn.apply_inverse(study["t1"], interpolation="nearest").get_fdata(),
    )


# ---------------------------------------------------------------------------------------------
# Template
# ---------------------------------------------------------------------------------------------


def test_mni_template_grids_and_values():
    t1 = reg.mni_template("t1", 2)
    assert t1.shape == (98, 116, 94)
    # Voxel (0, 0, 0) is the centre of the first 2x2x2 block of the 1 mm grid.
    np.testing.assert_allclose(t1.affine[:3, 3], [-97.5, -133.5, -71.5])
    np.testing.assert_allclose(np.diag(t1.affine)[:3], [2, 2, 2])
    wm = reg.mni_template("wm", 4).get_fdata()
    assert wm.min() >= 0 and wm.max() <= 1
    mask = reg.mni_template("brain_mask", 4)
    data = np.asanyarray(mask.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) == {0, 1}
    ijk = np.round(np.linalg.inv(mask.affine) @ [0, -18, 18, 1]).astype(int)[:3]  # ventricles
    assert data[tuple(ijk)] == 1 and data[0, 0, 0] == 0
    volume_ml = data.sum() * 4**3 / 1000
    assert 1100 < volume_ml < 1900


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def test_four_d_input_is_rejected(study):
    four_d = nib.Nifti1Image(np.zeros((5, 5, 5, 3), np.float32), np.eye(4))
    with pytest.raises(InputError, match=r"moving .*4-D.*mean of the b0"):
        reg.register_affine(four_d, study["b0"])
    with pytest.raises(InputError, match="static"):
        reg.register_syn(study["t1"], four_d)


def test_bad_masks_are_rejected(study):
    empty = nib.Nifti1Image(np.zeros(study["b0"].shape, np.uint8), study["b0"].affine)
    with pytest.raises(InputError, match=r"static_mask .*empty"):
        reg.register_affine(study["t1"], study["b0"], static_mask=empty)
    other_grid = nib.Nifti1Image(np.ones(study["b0"].shape, np.uint8), study["b0"].affine)
    with pytest.raises(InputError, match=r"moving_mask.*not on the grid of moving"):
        reg.register_affine(study["t1"], study["b0"], moving_mask=other_grid)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"transform": "similarity"}, "transform"),
        ({"metric": "cc"}, "metric"),
        ({"init": "moments"}, "init"),
        ({"level_iters": (10, 10), "sigmas": (1.0,), "factors": (2, 1)}, "level_iters"),
        ({"sampling_proportion": 1.5}, "sampling_proportion"),
        ({"nbins": 2}, "nbins"),
    ],
)
def test_bad_arguments_are_named(study, kwargs, argument):
    with pytest.raises(InputError, match=argument):
        reg.register_affine(study["t1"], study["b0"], **kwargs)


def test_bad_apply_and_template_arguments(study, t1_to_dwi):
    with pytest.raises(InputError, match="interpolation"):
        t1_to_dwi.apply(study["t1"], interpolation="cubic")
    with pytest.raises(InputError, match="transform"):
        reg.apply_transform(study["t1"], np.eye(4))
    with pytest.raises(InputError, match="kind"):
        reg.mni_template("t2")
    with pytest.raises(InputError, match="resolution_mm"):
        reg.mni_template("t1", 2.5)
    with pytest.raises(InputError, match="metric"):
        reg.register_syn(study["t1"], study["t1"], metric="mi")
    with pytest.raises(InputError, match="prealign"):
        reg.register_syn(study["t1"], study["t1"], prealign=np.eye(3))
    with pytest.raises(InputError, match="does not start where"):
        t1_to_dwi.then(t1_to_dwi)


def test_load_transform_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        reg.load_transform(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "rotation"}')
    with pytest.raises(InputError, match="not an msimaging transform"):
        reg.load_transform(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot be read as JSON"):
        reg.load_transform(bad)


def test_masks_are_used_not_dropped(study):
    # dipy ignores masks (with a warning) when it samples sparsely; register_affine must not.
    import warnings

    b0 = study["b0"]
    data = b0.get_fdata()
    # A mask over one half of the head only: the metric then sees half the voxels.
    half = np.zeros(b0.shape, np.uint8)
    half[: b0.shape[0] // 2] = 1
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Mm]ask.*")
        masked = reg.register_affine(
            study["t1"], b0, transform="rigid", static_mask=nib.Nifti1Image(half, b0.affine)
        )
    assert data[half > 0].any()
    # Still the identity (same session), now estimated from half the head.
    tissue = study["truth_tissue"]
    points = _world(tissue, np.asanyarray(tissue.dataobj) > 0)
    error_mm = np.linalg.norm(masked.transform_points(points) - points, axis=1)
    assert error_mm.mean() < float(tissue.header.get_zooms()[0])
