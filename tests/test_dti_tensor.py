"""Tensor fitting (msimaging.dti.tensor) against analytic tensors and against dipy.

Ground truth: noise-free signals from ``dipy.sims.voxel.single_tensor`` (analytic FA/MD/AD/RD
from the simulated eigenvalues) and, on noisy data, dipy's own ``TensorModel`` fits of the
same signals.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel, design_matrix
from dipy.sims.voxel import single_tensor
from scipy.spatial.transform import Rotation

from msimaging.datasets.synthetic.diffusion import gradient_scheme, simulate_signal
from msimaging.dti.tensor import METHODS, TensorFit, _eigen_sym3, fit_tensor
from msimaging.errors import InputError, MSImagingWarning
from msimaging.io import load_dwi

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
FA_TOL = 1e-6  # absolute
REL_TOL = 1e-6  # relative, MD/AD/RD


def _data(fit: TensorFit, name: str) -> np.ndarray:
    return np.asanyarray(getattr(fit, name).dataobj).astype(np.float64)


def _analytic(evals: np.ndarray) -> dict[str, np.ndarray]:
    l1, l2, l3 = (-np.sort(-evals, axis=-1)).T
    fa = np.sqrt(
        0.5 * ((l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2) / (l1**2 + l2**2 + l3**2)
    )
    return {"fa": fa, "md": (l1 + l2 + l3) / 3, "ad": l1, "rd": (l2 + l3) / 2}


def _noise_free_tensors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (mm²/s) spanning FA 0 to ~0.9 (prolate, oblate, triaxial) and random frames."""
    rng = np.random.default_rng(seed)
    md = rng.uniform(0.6e-3, 1.2e-3, n)
    shapes = np.array(
        [
            [1.0, 1.0, 1.0],  # isotropic, FA 0
            [1.3, 0.85, 0.85],  # FA ~0.25
            [1.8, 0.6, 0.6],  # FA ~0.6
            [2.4, 0.3, 0.3],  # FA ~0.85
            [2.6, 0.25, 0.15],  # triaxial, FA ~0.9
            [1.4, 1.2, 0.4],  # oblate-ish triaxial
            [1.6, 0.9, 0.5],  # triaxial
        ]
    )
    evals = shapes[np.arange(n) % len(shapes)] * md[:, None]
    evecs = Rotation.random(n, random_state=seed).as_matrix()
    return evals, evecs


def _fsl(bvecs: np.ndarray) -> np.ndarray:
    """The FSL .bvec directions for voxel-frame ``bvecs`` on AFFINE: FSL reads an image whose
    affine has a positive determinant with its first axis reversed, so x is negated."""
    assert np.linalg.det(AFFINE[:3, :3]) > 0
    return bvecs * np.array([-1.0, 1.0, 1.0])


def _scheme(kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "single-shell":
        return gradient_scheme(n_b0=1, n_directions=32, bvals_s_mm2=(1000.0,), seed=1)
    return gradient_scheme(n_b0=1, n_directions=30, bvals_s_mm2=(1000.0, 2000.0), seed=2)


@pytest.fixture(scope="module", params=["single-shell", "two-shell"])
def noise_free(request):
    """4x4x2 voxels of analytic single-tensor signals (S0 = 1000)."""
    bvals, bvecs = _scheme(request.param)
    gtab = gradient_table(bvals, bvecs=bvecs)
    evals, evecs = _noise_free_tensors(32, seed=3)
    signal = np.stack(
        [single_tensor(gtab, 1000.0, evals=e, evecs=v) for e, v in zip(evals, evecs, strict=True)]
    )
    img = nib.Nifti1Image(signal.reshape(4, 4, 2, -1).astype(np.float32), AFFINE)
    mask = nib.Nifti1Image(np.ones((4, 4, 2), np.uint8), AFFINE)
    # Signals are simulated in the voxel frame (dipy); msimaging reads FSL .bvec directions.
    return img, bvals, _fsl(bvecs), mask, evals.reshape(4, 4, 2, 3), evecs.reshape(4, 4, 2, 3, 3)


@pytest.fixture(scope="module")
def noisy():
    """2000 random tensors, 1 b0 + 64 directions, Rician noise at SNR 20 (S0 = 1000)."""
    rng = np.random.default_rng(7)
    n = 2000
    bvals, bvecs = gradient_scheme(n_b0=1, n_directions=64, seed=4)
    evals = -np.sort(-rng.uniform(0.1e-3, 2.0e-3, (n, 3)), axis=1)
    evecs = Rotation.random(n, random_state=8).as_matrix()
    signal = simulate_signal(evals, evecs, bvals, bvecs, np.full(n, 1000.0), snr=20, rng=9)
    data = signal.reshape(20, 10, 10, -1)
    img = nib.Nifti1Image(data, AFFINE)
    mask = nib.Nifti1Image(np.ones((20, 10, 10), np.uint8), AFFINE)
    gtab = gradient_table(bvals, bvecs=bvecs)
    # dipy on float64: on float32 input dipy takes the log in float32 (~1e-6 FA noise).
    dipy_fits = {
        name: TensorModel(gtab, fit_method=name).fit(data.astype(np.float64))
        for name in ("WLS", "OLS")
    }
    return img, bvals, _fsl(bvecs), mask, dipy_fits


# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_noise_free_metrics_match_analytic_values(noise_free, method):
    img, bvals, bvecs, mask, evals, _ = noise_free
    kwargs = {"sigma": 5.0} if method == "restore" else {}
    fit = fit_tensor(img, bvals, bvecs, mask, method=method, **kwargs)
    truth = _analytic(evals.reshape(-1, 3))
    assert np.max(np.abs(_data(fit, "fa").ravel() - truth["fa"])) < FA_TOL
    for name in ("md", "ad", "rd"):
        relative = np.abs(_data(fit, name).ravel() - truth[name]) / truth[name]
        assert relative.max() < REL_TOL, name
    assert np.max(_data(fit, "residual")) < 1e-5
    assert fit.method == method


@pytest.mark.parametrize("method", ["wls", "ols", "dipy-wls"])
def test_v1_matches_true_principal_direction(noise_free, method):
    img, bvals, bvecs, mask, evals, evecs = noise_free
    fit = fit_tensor(img, bvals, bvecs, mask, method=method)
    order = np.argmax(evals, axis=-1)
    true_v1 = np.take_along_axis(evecs, order[..., None, None], axis=-1)[..., 0]
    anisotropic = _analytic(evals.reshape(-1, 3))["fa"].reshape(evals.shape[:3]) >= 0.5
    dots = np.abs(np.sum(_data(fit, "v1") * true_v1, axis=-1))
    assert anisotropic.sum() >= 10
    assert dots[anisotropic].min() > 0.999
    np.testing.assert_allclose(np.linalg.norm(_data(fit, "v1"), axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize(("ours", "dipy_name"), [("wls", "WLS"), ("ols", "OLS")])
def test_fast_engine_equals_dipy_on_noisy_data(noisy, ours, dipy_name):
    img, bvals, bvecs, mask, dipy_fits = noisy
    fit = fit_tensor(img, bvals, bvecs, mask, method=ours)
    reference = dipy_fits[dipy_name]
    assert np.max(np.abs(_data(fit, "fa") - reference.fa)) < FA_TOL
    for name in ("md", "ad", "rd"):
        expected = getattr(reference, name)
        relative = np.abs(_data(fit, name) - expected) / np.abs(expected)
        assert relative.max() < REL_TOL, name
    dots = np.abs(np.sum(_data(fit, "v1") * reference.evecs[..., 0], axis=-1))
    assert np.median(dots) > 1 - 1e-6


def test_dipy_methods_run_on_the_same_floored_data(noisy):
    img, bvals, bvecs, mask, dipy_fits = noisy
    fit = fit_tensor(img, bvals, bvecs, mask, method="dipy-wls")
    assert np.max(np.abs(_data(fit, "fa") - dipy_fits["WLS"].fa)) < FA_TOL


def test_residual_is_about_noise_over_s0(noisy):
    img, bvals, bvecs, mask, _ = noisy
    fit = fit_tensor(img, bvals, bvecs, mask)
    # sigma = 1000 / 20, S0 = 1000: about 0.05 (a little less: 7 fitted parameters).
    assert 0.04 < np.median(_data(fit, "residual")) < 0.06


def test_eigenvalue_floor_matches_dipy():
    """A tensor with a negative eigenvalue: both engines clip it to 1e-6 / max(b-matrix)."""
    bvals, bvecs = _scheme("single-shell")
    gtab = gradient_table(bvals, bvecs=bvecs)
    evals = np.array([1.5e-3, 0.5e-3, -0.2e-3])
    signal = single_tensor(gtab, 1000.0, evals=evals, evecs=np.eye(3))
    data = np.tile(signal, (2, 2, 2, 1))
    img = nib.Nifti1Image(data, AFFINE)
    fit = fit_tensor(
        img, bvals, _fsl(bvecs), nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), AFFINE)
    )
    reference = TensorModel(gtab).fit(data)
    floor = 1e-6 / -design_matrix(gtab).min()  # dipy's min_diffusivity
    assert 0.9e-9 < floor < 1.1e-9
    np.testing.assert_allclose(reference.evals[..., 2], floor)
    np.testing.assert_allclose(_data(fit, "rd"), (0.5e-3 + floor) / 2, rtol=1e-6)
    np.testing.assert_allclose(_data(fit, "fa"), reference.fa, atol=FA_TOL)
    np.testing.assert_allclose(_data(fit, "md"), reference.md, rtol=1e-6)
    assert fit.n_negative_eigenvalue_voxels == 8


@pytest.mark.parametrize("method", ["wls", "ols", "dipy-wls", "dipy-ols", "restore"])
def test_negative_eigenvalue_voxels_are_flagged_and_clipped_by_every_method(method):
    """7 voxels with a planted negative eigenvalue, 1 positive definite: exactly 7 flagged,
    and every method reports the clipped (non-negative) eigenvalue in RD."""
    bvals, bvecs = _scheme("single-shell")
    gtab = gradient_table(bvals, bvecs=bvecs)
    data = np.tile(
        single_tensor(gtab, 1000.0, evals=np.array([1.5e-3, 0.5e-3, -0.2e-3])), (2, 2, 2, 1)
    )
    data[0, 0, 0] = single_tensor(gtab, 1000.0, evals=np.array([1.5e-3, 0.5e-3, 0.2e-3]))
    planted = np.ones((2, 2, 2), bool)
    planted[0, 0, 0] = False
    kwargs = {"sigma": 1.0} if method == "restore" else {}
    fit = fit_tensor(
        nib.Nifti1Image(data, AFFINE), bvals, _fsl(bvecs),
        nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), AFFINE), method=method, **kwargs,
    )
    np.testing.assert_array_equal(_data(fit, "negative_eigenvalue").astype(bool), planted)
    assert fit.n_negative_eigenvalue_voxels == 7 and fit.n_nonpositive_signal_voxels == 0
    np.testing.assert_allclose(_data(fit, "rd")[planted], 0.25e-3, rtol=1e-4)
    np.testing.assert_allclose(_data(fit, "rd")[0, 0, 0], 0.35e-3, rtol=1e-4)


def test_closed_form_eigen_decomposition_matches_eigh():
    rng = np.random.default_rng(0)
    frames = Rotation.random(500, random_state=1).as_matrix()
    evals = rng.uniform(-0.5, 2.0, (500, 3))
    evals[:100, 1] = evals[:100, 2]  # two equal eigenvalues
    evals[100:150, 0] = evals[100:150, 1]  # degenerate principal pair
    evals[150:160] = 1.0  # isotropic
    tensors = np.einsum("nik,nk,njk->nij", frames, evals, frames)
    six = tensors[:, [0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
    ours, v1 = _eigen_sym3(six)
    reference, vectors = np.linalg.eigh(tensors)
    np.testing.assert_allclose(ours, reference[:, ::-1], atol=1e-7)
    np.testing.assert_allclose(ours.sum(axis=1), reference.sum(axis=1), atol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-12)
    gap = reference[:, 2] - reference[:, 1]
    clear = gap > 1e-2
    dots = np.abs(np.sum(v1 * vectors[:, :, 2], axis=1))
    assert dots[clear].min() > 1 - 1e-10
    # Wherever v1 is defined at all it is an eigenvector of λ1.
    np.testing.assert_allclose(np.einsum("nij,nj->ni", tensors, v1), ours[:, :1] * v1, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------------------------
def test_chunking_does_not_change_the_maps(noisy):
    img, bvals, bvecs, mask, _ = noisy
    small = fit_tensor(img, bvals, bvecs, mask, chunk_voxels=7)
    large = fit_tensor(img, bvals, bvecs, mask, chunk_voxels=100_000)
    for name in ("fa", "md", "ad", "rd", "v1", "residual"):
        np.testing.assert_allclose(_data(small, name), _data(large, name), rtol=1e-6, atol=0)


def test_result_object(noise_free):
    img, bvals, bvecs, _, _, _ = noise_free
    inside = np.zeros((4, 4, 2), np.uint8)
    inside[1:3, 1:3, :] = 1
    fit = fit_tensor(img, bvals, bvecs, nib.Nifti1Image(inside, AFFINE))
    assert set(fit.maps) == {"fa", "md", "ad", "rd"}
    for name in ("fa", "md", "ad", "rd", "residual"):
        image = getattr(fit, name)
        assert image.shape == (4, 4, 2)
        assert image.get_data_dtype() == np.float32
        np.testing.assert_array_equal(image.affine, AFFINE)
        assert np.all(_data(fit, name)[inside == 0] == 0)
    assert fit.v1.shape == fit.colour_fa.shape == (4, 4, 2, 3)
    np.testing.assert_allclose(
        _data(fit, "colour_fa"),
        np.abs(_data(fit, "v1")) * _data(fit, "fa")[..., None],
        rtol=1e-6,
    )
    assert fit.mask.get_data_dtype() == np.uint8
    assert fit.mask_source == "given" and fit.n_floored == 0 and fit.n_voxels == 8
    assert repr(fit) == (
        "TensorFit(method='wls', shape=(4, 4, 2), voxels=8, mask='given', floored=0)"
    )
    with pytest.raises(AttributeError):
        fit.method = "ols"  # frozen


def test_accepts_paths_and_loaded_dwi(noise_free, tmp_path):
    img, bvals, bvecs, mask, _, _ = noise_free
    path = tmp_path / "sub-01_dwi.nii.gz"
    img.to_filename(path)
    np.savetxt(tmp_path / "sub-01_dwi.bval", bvals[None], fmt="%g")
    np.savetxt(tmp_path / "sub-01_dwi.bvec", bvecs.T, fmt="%.8f")
    mask.to_filename(tmp_path / "mask.nii.gz")
    from_path = fit_tensor(path, mask=tmp_path / "mask.nii.gz")
    from_dwi = fit_tensor(load_dwi(img, bvals, bvecs), mask=mask)
    np.testing.assert_allclose(_data(from_path, "fa"), _data(from_dwi, "fa"), atol=1e-6)
    with pytest.raises(InputError, match="do not pass bvals"):
        fit_tensor(load_dwi(img, bvals, bvecs), bvals, bvecs)


def test_median_otsu_mask_is_computed_and_recorded():
    """A ball of tissue in Rayleigh background noise: the computed mask finds the ball."""
    bvals, bvecs = gradient_scheme(n_b0=2, n_directions=20, seed=5)
    shape = (24, 24, 16)
    grid = np.indices(shape).reshape(3, -1).T - (np.array(shape) - 1) / 2
    ball = np.sum((grid / [8.0, 8.0, 5.0]) ** 2, axis=1) <= 1.0
    n = ball.size
    evals = np.tile([1.5e-3, 0.4e-3, 0.4e-3], (n, 1))
    evecs = np.tile(np.eye(3), (n, 1, 1))
    s0 = np.where(ball, 1000.0, 0.0)
    signal = simulate_signal(evals, evecs, bvals, bvecs, s0, sigma=30.0, rng=0)
    img = nib.Nifti1Image(signal.reshape(*shape, -1), AFFINE)
    fit = fit_tensor(img, bvals, bvecs)
    computed = np.asanyarray(fit.mask.dataobj).astype(bool).ravel()
    assert fit.mask_source == "median_otsu"
    dice = 2 * np.sum(computed & ball) / (computed.sum() + ball.sum())
    assert dice > 0.9
    fa = _data(fit, "fa").ravel()
    assert np.all(fa[~computed] == 0)
    assert np.median(fa[computed & ball]) > 0.5


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------
def _image_for(bvals: np.ndarray, shape=(3, 3, 2)) -> nib.Nifti1Image:
    rng = np.random.default_rng(0)
    data = 500.0 + 50.0 * rng.random((*shape, bvals.size))
    data[..., bvals <= 50] = 1000.0
    return nib.Nifti1Image(data.astype(np.float32), AFFINE)


def test_five_directions_are_rejected():
    bvals = np.array([0.0] + [1000.0] * 5)
    bvecs = np.vstack([[0, 0, 0], Rotation.random(5, random_state=0).as_matrix()[:, 0]])
    with pytest.raises(InputError, match="at least 6 non-collinear directions, got 5"):
        fit_tensor(_image_for(bvals), bvals, bvecs)


def test_collinear_directions_are_rejected():
    axes = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)
    bvecs = np.vstack([[0, 0, 0], np.tile(axes, (6, 1))])
    bvals = np.array([0.0] + [1000.0] * 30)
    with pytest.raises(InputError, match="at least 6 non-collinear directions, got 3"):
        fit_tensor(_image_for(bvals), bvals, bvecs)


def test_coplanar_directions_are_rejected():
    angles = np.linspace(0, np.pi, 12, endpoint=False)
    plane = np.stack([np.cos(angles), np.sin(angles), np.zeros(12)], axis=1)
    bvecs = np.vstack([[0, 0, 0], plane])
    bvals = np.array([0.0] + [1000.0] * 12)
    with pytest.raises(InputError, match="rank 4 < 7"):
        fit_tensor(_image_for(bvals), bvals, bvecs)


def test_mask_on_another_grid_is_rejected(noise_free):
    img, bvals, bvecs, _, _, _ = noise_free
    wrong_shape = nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), AFFINE)
    with pytest.raises(InputError, match=r"mask .* is not on the grid of dwi"):
        fit_tensor(img, bvals, bvecs, wrong_shape)
    moved = AFFINE.copy()
    moved[:3, 3] = 5.0
    with pytest.raises(InputError, match="affines"):
        fit_tensor(img, bvals, bvecs, nib.Nifti1Image(np.ones((4, 4, 2), np.uint8), moved))


def test_non_positive_b0_in_mask_is_rejected(noise_free):
    img, bvals, bvecs, mask, _, _ = noise_free
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0, bvals <= 50] = 0.0
    data[1, 0, 0, bvals <= 50] = -3.0
    with pytest.raises(InputError, match=r"2 voxel.*mean b0 signal is <= 0.*tighter"):
        fit_tensor(nib.Nifti1Image(data, AFFINE), bvals, bvecs, mask)


def test_non_positive_dw_values_are_floored_with_a_warning(noise_free):
    img, bvals, bvecs, mask, _, _ = noise_free
    data = np.asanyarray(img.dataobj).copy()
    dw = np.flatnonzero(bvals > 50)
    data[0, 0, 0, dw[:2]] = 0.0
    data[2, 1, 1, dw[5]] = -1.0
    data[3, 3, 1, dw[3]] = 0.5e-4  # positive but below min_signal: floored, not non-positive
    with pytest.warns(MSImagingWarning, match=r"4 signal value.*\(2 voxel\(s\) with a value <= 0"):
        fit = fit_tensor(nib.Nifti1Image(data, AFFINE), bvals, bvecs, mask)
    assert fit.n_floored == 4
    expected = np.zeros((4, 4, 2), bool)
    expected[0, 0, 0] = expected[2, 1, 1] = True
    np.testing.assert_array_equal(_data(fit, "nonpositive_signal").astype(bool), expected)
    assert fit.counts == {
        "n_voxels": 32,
        "n_floored_values": 4,
        "n_nonpositive_signal_voxels": 2,
        "n_negative_eigenvalue_voxels": fit.n_negative_eigenvalue_voxels,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_tensor(img, bvals, bvecs, mask).n_floored == 0


def test_three_dimensional_image_is_rejected(noise_free):
    img, bvals, bvecs, _, _, _ = noise_free
    flat = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], AFFINE)
    with pytest.raises(InputError, match="dimensions"):
        fit_tensor(flat, bvals, bvecs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "fancy"}, "not a tensor fit method"),
        ({"chunk_voxels": 0}, "chunk_voxels"),
        ({"min_signal": -1.0}, "min_signal"),
        ({"sigma": 3.0}, "only used by method='restore'"),
        ({"method": "restore", "sigma": 0.0}, "sigma must be a positive"),
    ],
)
def test_invalid_arguments_are_rejected(noise_free, kwargs, match):
    img, bvals, bvecs, mask, _, _ = noise_free
    with pytest.raises(InputError, match=match):
        fit_tensor(img, bvals, bvecs, mask, **kwargs)


def test_restore_estimates_sigma_when_not_given():
    """RESTORE without sigma: estimate_sigma on the b0 volumes, close to the true noise."""
    bvals, bvecs = gradient_scheme(n_b0=3, n_directions=30, seed=6)
    n = 6 * 6 * 4
    rng = np.random.default_rng(11)
    evals = -np.sort(-rng.uniform(0.3e-3, 1.8e-3, (n, 3)), axis=1)
    evecs = Rotation.random(n, random_state=12).as_matrix()
    signal = simulate_signal(evals, evecs, bvals, bvecs, np.full(n, 1000.0), sigma=40.0, rng=13)
    img = nib.Nifti1Image(signal.reshape(6, 6, 4, -1), AFFINE)
    mask = nib.Nifti1Image(np.ones((6, 6, 4), np.uint8), AFFINE)
    robust = fit_tensor(img, bvals, bvecs, mask, method="restore")
    weighted = fit_tensor(img, bvals, bvecs, mask)
    assert np.median(np.abs(_data(robust, "fa") - _data(weighted, "fa"))) < 0.02
    with pytest.raises(InputError, match="pass sigma="):
        fit_tensor(
            nib.Nifti1Image(np.zeros((6, 6, 4, bvals.size), np.float32) + 1.0, AFFINE),
            bvals,
            bvecs,
            mask,
            method="restore",
        )


# --------------------------------------------------------------------------------------------
# Gradient frames: FSL .bvec convention, voxel frame, world frame
# --------------------------------------------------------------------------------------------
def _oblique_affine(flip_x: bool) -> np.ndarray:
    """2 mm oblique grid (20° about z, 10° about x); ``flip_x`` makes the determinant > 0."""
    rotation = Rotation.from_euler("zx", [20, 10], degrees=True).as_matrix()
    mirror = np.diag([1.0 if flip_x else -1.0, 1.0, 1.0])  # LAS-like (det < 0) by default
    affine = np.eye(4)
    affine[:3, :3] = rotation @ mirror * 2.0
    affine[:3, 3] = [90.0, -100.0, -60.0]
    return affine


@pytest.mark.parametrize("det_positive", [False, True])
def test_fsl_bvecs_give_the_planted_world_direction_on_oblique_grids(det_positive):
    """Tensors planted along world axes; the FSL .bvec built by hand from FSL's definition
    (image axes, x reversed when det > 0) must give v1_world along the planted axis; the same
    file read as voxel-frame (skipping the flip) mirrors it when det > 0."""
    affine = _oblique_affine(det_positive)
    assert (np.linalg.det(affine[:3, :3]) > 0) == det_positive
    rotation = affine[:3, :3] / 2.0  # voxel -> world for this shear-free grid
    bvals, world_bvecs = _scheme("single-shell")
    voxel_bvecs = world_bvecs @ rotation  # rows: Rᵀ g
    fsl_bvecs = voxel_bvecs * np.array([-1.0 if det_positive else 1.0, 1.0, 1.0])
    gtab = gradient_table(bvals, bvecs=voxel_bvecs)
    world_axes = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.6, 0.8, 0.0]])
    signal = []
    for axis in world_axes:
        frame = Rotation.align_vectors([axis], [[1.0, 0, 0]])[0].as_matrix()  # e1 = axis
        evecs_voxel = rotation.T @ frame
        signal.append(single_tensor(gtab, 1000.0, evals=[1.7e-3, 0.3e-3, 0.3e-3],
                                    evecs=evecs_voxel))
    data = np.asarray(signal, np.float32).reshape(4, 1, 1, -1)
    img = nib.Nifti1Image(data, affine)
    mask = nib.Nifti1Image(np.ones((4, 1, 1), np.uint8), affine)

    fit = fit_tensor(img, bvals, fsl_bvecs, mask)
    v1_world = np.asanyarray(fit.v1_world.dataobj)[:, 0, 0].astype(np.float64)
    np.testing.assert_allclose(np.abs(np.sum(v1_world * world_axes, axis=1)), 1.0, atol=1e-5)
    v1_voxel = np.asanyarray(fit.v1.dataobj)[:, 0, 0].astype(np.float64)
    np.testing.assert_allclose(np.abs(np.sum(v1_voxel * (world_axes @ rotation), 1)), 1.0,
                               atol=1e-5)
    # The same directions given in the world frame or the voxel frame agree.
    for given, convention in ((world_bvecs, "world"), (voxel_bvecs, "voxel")):
        other = fit_tensor(img, bvals, given, mask, bvec_convention=convention)
        np.testing.assert_allclose(
            np.abs(np.sum(np.asanyarray(other.v1_world.dataobj)[:, 0, 0] * v1_world, 1)), 1.0,
            atol=1e-5,
        )
    # Skipping FSL's flip (reading the .bvec as voxel-frame) is right only when det < 0.
    skipped = fit_tensor(img, bvals, fsl_bvecs, mask, bvec_convention="voxel")
    dots = np.abs(np.sum(np.asanyarray(skipped.v1_world.dataobj)[:, 0, 0] * world_axes, 1))
    if det_positive:
        assert dots.min() < 0.9  # mirrored: the oblique axes are no longer found
    else:
        np.testing.assert_allclose(dots, 1.0, atol=1e-5)


def test_bvec_convention_is_checked(noise_free):
    img, bvals, bvecs, mask, _, _ = noise_free
    with pytest.raises(InputError, match=r"bvec_convention='mrtrix'.*'fsl'.*'voxel'.*'world'"):
        fit_tensor(img, bvals, bvecs, mask, bvec_convention="mrtrix")
    with pytest.raises(InputError, match="do not pass bvals=/bvecs=/bvec_convention="):
        fit_tensor(load_dwi(img, bvals, bvecs), bvec_convention="fsl")
