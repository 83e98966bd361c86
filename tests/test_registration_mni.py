"""MNI registration with a sanity check (``register_to_mni``), against planted and real truth.

Truth: the synthetic T1w places MNI at ``mni_to_native`` (``ground_truth.json``); its oblique
(20 degree) and x-flipped (det < 0) copies hold the same head in the same world, so the
world transform must not change. A whole-head version adds CSF, skull, scalp and a neck
around the planted brain. Real scans (``../shared/realdata``, never copied): the Philips
mean b0 (whole-head, 2 mm, det < 0, oblique, a 64 mm slab) and an MS patient's T1w already
on the 1 mm MNI grid, whose brain extents give the expected scales independently of any
registration.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from msimaging import registration as reg
from msimaging.errors import InputError, RegistrationError, RegistrationWarning

SUB, SES = "sub-01", "ses-M0"
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata"
DWI = REAL / "dwi_philips" / "dwi.nii.gz"
PATIENT_T1W = REAL / "ms_lesions" / "patient07_mni" / "T1w.nii.gz"
needs_dwi = pytest.mark.skipif(not DWI.exists(), reason=f"real DWI not found at {DWI}")
needs_patient = pytest.mark.skipif(
    not PATIENT_T1W.exists(), reason=f"real T1w not found at {PATIENT_T1W}"
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from msimaging.datasets import make_synthetic_study

    root = make_synthetic_study(
        tmp_path_factory.mktemp("mni") / "study",
        n_subjects=1,
        sessions=("M0",),
        seed=0,
        preset="tiny",
        head_motion=False,
    )
    truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    seg = root / "derivatives" / "segmentation" / SUB / SES / "anat" / f"{SUB}_{SES}_dseg.nii.gz"
    return {
        "t1": nib.load(root / SUB / SES / "anat" / f"{SUB}_{SES}_T1w.nii.gz"),
        "dseg": nib.load(seg),
        "mni_to_native": np.array(truth["subjects"][SUB]["mni_to_native"][SES]),
    }


@pytest.fixture(scope="module")
def registered(study):
    return reg.register_to_mni(study["t1"], resolution_mm=4)


def _landmark_error_mm(transform: reg.AffineTransform, mni_to_native: np.ndarray) -> float:
    """Mean distance between recovered and true native positions of MNI brain voxels."""
    mask = reg.mni_template("brain_mask", 4)
    mni = np.argwhere(np.asarray(mask.dataobj) > 0) @ mask.affine[:3, :3].T + mask.affine[:3, 3]
    true_native = mni @ mni_to_native[:3, :3].T + mni_to_native[:3, 3]
    found = transform.transform_points(mni, inverse=True)
    return float(np.linalg.norm(found - true_native, axis=1).mean())


def _print(name: str, transform: reg.AffineTransform, extra: str = "") -> None:
    q = transform.quality
    print(
        f"{name}: scales {q['scales']}, rotation {q['rotation_deg']} deg, shear "
        f"{q['shear_deg']} deg, brain Dice {q['brain_dice']}, mask {q['brain_mask_source']!r}, "
        f"{q['seconds']} s {extra}"
    )


# ---------------------------------------------------------------------------------------------
# Synthetic truth
# ---------------------------------------------------------------------------------------------


def test_synthetic_t1w_matches_truth(study, registered):
    error = _landmark_error_mm(registered, study["mni_to_native"])
    _print("synthetic T1w", registered, f"landmark error {error:.3f} mm")
    quality = registered.quality
    assert quality["passed"] and quality["problems"] == []
    assert error < 1.0  # a quarter of the 4 mm voxel
    # Scales of native -> MNI are the inverse of the planted head scales.
    truth_scales = np.sort(1 / np.linalg.svd(study["mni_to_native"][:3, :3])[1])[::-1]
    np.testing.assert_allclose(quality["scales"], truth_scales, atol=0.03)
    # The transform keeps the subject's own grid as its static grid.
    assert registered.static_shape == study["t1"].shape
    np.testing.assert_allclose(registered.static_affine, study["t1"].affine)


def _oblique(t1: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same head on a grid rotated 20 degrees (about x, then 10 about z) in the world."""
    rotation = np.eye(4)
    rotation[:3, :3] = Rotation.from_euler("xz", [20, 10], degrees=True).as_matrix()
    grid = reg.AffineTransform(np.eye(4), t1.shape, rotation @ t1.affine, t1.shape, t1.affine)
    return grid.apply(t1)


def _x_flipped(t1: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same voxels stored in reverse x order with a det < 0 affine: same world image."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = t1.shape[0] - 1
    return nib.Nifti1Image(np.asarray(t1.dataobj)[::-1], t1.affine @ flip)


@pytest.mark.parametrize("grid", ["oblique", "x_flipped"])
def test_same_head_on_other_grids_gives_same_world_transform(study, registered, grid):
    img = _oblique(study["t1"]) if grid == "oblique" else _x_flipped(study["t1"])
    if grid == "oblique":
        assert np.degrees(nib.affines.obliquity(img.affine)).max() > 15
    else:
        assert np.linalg.det(img.affine) < 0
    moved = reg.register_to_mni(img, resolution_mm=4)
    error = _landmark_error_mm(moved, study["mni_to_native"])
    _print(f"{grid} T1w", moved, f"landmark error {error:.3f} mm")
    assert moved.quality["passed"]
    assert error < 1.0
    np.testing.assert_allclose(moved.matrix[:3, :3], registered.matrix[:3, :3], atol=0.02)


def _whole_head(study) -> nib.Nifti1Image:
    """The synthetic brain inside CSF, skull, scalp and a neck, on a grid padded by 40 mm."""
    pad, voxel_mm = 10, 4.0
    t1, labels = study["t1"], np.asarray(study["dseg"].dataobj)
    data = np.pad(np.asarray(t1.dataobj, np.float32), pad)
    brain = np.pad(labels > 0, pad)
    affine = t1.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    wm = float(np.median(data[np.pad(labels == 3, pad)]))
    outside_mm = ndimage.distance_transform_edt(~brain) * voxel_mm
    head = data.copy()
    head[~brain & (outside_mm <= 4)] = 0.15 * wm  # CSF
    head[(outside_mm > 4) & (outside_mm <= 10)] = 0.08 * wm  # skull
    head[(outside_mm > 10) & (outside_mm <= 16)] = 1.3 * wm  # scalp fat, brighter than WM
    ijk = np.argwhere(brain)
    i, j, k = np.indices(head.shape)
    centre = ijk[:, :2].mean(axis=0) - [0, 5]
    neck = (((i - centre[0]) / 12) ** 2 + ((j - centre[1]) / 14) ** 2 <= 1) & (
        k < ijk[:, 2].min() + 6
    )
    head[neck & (outside_mm > 4)] = 0.6 * wm
    noise = np.random.default_rng(0).normal(0.0, 8.0, head.shape)
    return nib.Nifti1Image(np.abs(head + noise).astype(np.float32), affine)


def test_whole_head_is_skull_stripped_then_matches_truth(study):
    moved = reg.register_to_mni(_whole_head(study), resolution_mm=4)
    error = _landmark_error_mm(moved, study["mni_to_native"])
    _print("whole-head T1w", moved, f"landmark error {error:.3f} mm")
    assert "skull stripped" in moved.quality["brain_mask_source"]
    assert moved.quality["passed"]
    assert error < 2.0


# ---------------------------------------------------------------------------------------------
# Real scans
# ---------------------------------------------------------------------------------------------


@needs_dwi
def test_real_whole_head_b0_passes_with_plausible_scales():
    from dipy.segment.mask import median_otsu

    dwi = nib.load(DWI)
    bvals = np.loadtxt(DWI.with_name("dwi.bval"))
    b0 = nib.Nifti1Image(
        np.asanyarray(dwi.dataobj)[..., bvals <= 50].mean(axis=-1).astype(np.float32),
        dwi.affine,
    )
    assert np.linalg.det(b0.affine) < 0
    moved = reg.register_to_mni(b0, resolution_mm=3)
    _print("real mean b0", moved)
    quality = moved.quality
    assert quality["passed"]
    assert min(quality["scales"]) > 0.85 and max(quality["scales"]) < 1.2
    assert quality["rotation_deg"] < 20
    # Independently of the check: the template brain lands on the b0's own brain mask at 2 mm.
    _, own = median_otsu(b0.get_fdata(), median_radius=2, numpass=1)
    warped = np.asarray(moved.apply(reg.mni_template("brain_mask", 2)).dataobj) > 0.5
    dice = 2 * np.count_nonzero(own & warped) / (own.sum() + warped.sum())
    print(f"  Dice at 2 mm with the b0's median_otsu mask: {dice:.3f}")
    assert dice > 0.85


@needs_patient
def test_real_t1w_in_mni_space_comes_out_near_identity():
    moved = reg.register_to_mni(PATIENT_T1W, resolution_mm=3)
    quality = moved.quality
    # The patient's brain is smaller than the template's: the brain extents (0.5-99.5th
    # percentiles of the brain voxels) give the expected per-axis scale without registration.
    img = nib.load(PATIENT_T1W)
    mask = reg.mni_template("brain_mask", 2)

    def extent_mm(image, inside):
        world = np.argwhere(inside) @ image.affine[:3, :3].T + image.affine[:3, 3]
        return np.percentile(world, 99.5, axis=0) - np.percentile(world, 0.5, axis=0)

    expected = extent_mm(mask, np.asarray(mask.dataobj) > 0) / extent_mm(
        img, np.asarray(img.dataobj) != 0
    )
    translation = np.linalg.norm(quality["translation_mm"])
    _print(
        "patient07 T1w (MNI grid)",
        moved,
        f"translation {translation:.2f} mm, diagonal {np.diag(moved.matrix)[:3].round(3)}, "
        f"extent ratios {expected.round(3)}",
    )
    assert quality["passed"] and quality["brain_extracted_input"]
    assert quality["rotation_deg"] < 5
    assert translation < 10
    np.testing.assert_allclose(np.diag(moved.matrix)[:3], expected, atol=0.1)


# ---------------------------------------------------------------------------------------------
# Failures are loud
# ---------------------------------------------------------------------------------------------


def test_scrambled_image_raises_registration_error(study):
    scrambled = np.asarray(study["t1"].dataobj).ravel().copy()
    np.random.default_rng(1).shuffle(scrambled)
    img = nib.Nifti1Image(scrambled.reshape(study["t1"].shape), study["t1"].affine)
    with pytest.raises(RegistrationError, match=r"failed its sanity check.*brain Dice") as info:
        reg.register_to_mni(img, resolution_mm=4, restarts=False)
    quality = info.value.transform.quality
    print(f"scrambled: {quality['problems']}")
    assert not quality["passed"] and quality["brain_dice"] < 0.6
    assert "brain_mask=" in str(info.value)  # says what to do


def test_bad_start_warns_when_asked_and_keeps_the_measures(study):
    # The failure: one axis squashed to half and a large rotation, here forced.
    bad = np.eye(4)
    bad[:3, :3] = Rotation.from_euler("x", 60, degrees=True).as_matrix() @ np.diag([1, 1, 0.5])
    with pytest.warns(RegistrationWarning, match=r"sanity check.*(scales|rotation)"):
        moved = reg.register_to_mni(
            study["t1"], resolution_mm=4, init=bad, restarts=False, on_failure="warn"
        )
    print(f"bad start: {moved.quality['problems']}")
    assert not moved.quality["passed"]
    assert moved.quality["attempts"] == [
        {"start": "init", "passed": False, "mi": moved.metric_value}
    ]
    error = _landmark_error_mm(moved, study["mni_to_native"])
    assert error > 5.0  # it really is wrong: the check is not crying wolf


def test_check_measures_and_saved_quality(tmp_path, registered):
    path = registered.save(tmp_path / "xfm.json")
    loaded = reg.load_transform(path)
    assert loaded.quality == json.loads(json.dumps(registered.quality))
    # The measures on known matrices: a mirror, a 40 degree turn, a squashed axis, a shear.
    brain = np.ones((4, 4, 4), bool)
    cases = {
        "mirror": np.diag([-1.0, 1.0, 1.0, 1.0]),
        "rotation": np.eye(4),
        "scale": np.diag([1.0, 1.0, 0.48, 1.0]),
        "shear": np.eye(4),
    }
    cases["rotation"][:3, :3] = Rotation.from_euler("z", 40, degrees=True).as_matrix()
    cases["shear"][0, 1] = np.tan(np.radians(20))
    expected = {
        "mirror": "mirrors",
        "rotation": "rotation 40.0 deg",
        "scale": "scales",
        "shear": "shear 20.0 deg",
    }
    for name, matrix in cases.items():
        quality = reg._affine_quality(matrix, np.eye(4), brain, brain, reg.MNI_CHECK_BOUNDS)
        assert not quality["passed"], name
        assert any(expected[name] in problem for problem in quality["problems"]), name
    # An oblique grid widens the rotation allowed by its own obliquity.
    oblique = np.eye(4)
    oblique[:3, :3] = Rotation.from_euler("x", 20, degrees=True).as_matrix()
    turned = np.eye(4)
    turned[:3, :3] = Rotation.from_euler("x", 40, degrees=True).as_matrix()
    quality = reg._affine_quality(turned, oblique, brain, brain, reg.MNI_CHECK_BOUNDS)
    assert quality["passed"] and quality["grid_obliquity_deg"] == pytest.approx(20.0)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"on_failure": "ignore"}, "on_failure"),
        ({"transform": "translation"}, "transform"),
        ({"bounds": {"max_scale": 0.9}}, "max_scale"),
        ({"bounds": {"min_dise": 0.5}}, "bounds"),
        ({"resolution_mm": 2.5}, "resolution_mm"),
    ],
)
def test_bad_arguments_are_named(study, kwargs, argument):
    with pytest.raises(InputError, match=argument):
        reg.register_to_mni(study["t1"], **kwargs)
