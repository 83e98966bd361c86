"""The DWI simulator of the synthetic study, checked against independent ground truth:
dipy tensor fits, dipy metric formulas, anatomy of the bundles and Rician statistics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel, fractional_anisotropy, mean_diffusivity
from scipy.spatial.transform import Rotation
from scipy.stats import rice

from msimaging.datasets.synthetic.diffusion import (
    BUNDLE_CODES,
    BUNDLE_PRIORITY,
    BUNDLES,
    CC_PARTS,
    TissueDiffusivities,
    bundle_field,
    default_s0,
    dwi_truth,
    gradient_scheme,
    simulate_signal,
    tensor_metrics,
    tissue_tensors,
)
from msimaging.errors import InputError

WM, BRAINSTEM = 3, 6


@pytest.fixture(scope="module")
def scheme():
    return gradient_scheme(n_b0=6, n_directions=30, bvals_s_mm2=(1000.0,), seed=0)


def _points_on_polylines(name: str, per_segment: int = 4) -> np.ndarray:
    """Points along every centre line of a bundle (interior of each segment)."""
    fractions = (np.arange(per_segment) + 0.5) / per_segment
    points = []
    for line in BUNDLES[name].polylines_mm:
        starts, ends = line[:-1], line[1:]
        points.append(
            (starts[:, None, :] + fractions[None, :, None] * (ends - starts)[:, None, :]).reshape(
                -1, 3
            )
        )
    return np.concatenate(points)


def _not_claimed_earlier(name: str, points: np.ndarray) -> np.ndarray:
    """Points not inside a tube of a bundle with higher priority (which would win there)."""
    keep = np.ones(len(points), dtype=bool)
    for other in BUNDLE_PRIORITY[: BUNDLE_PRIORITY.index(name)]:
        for line in BUNDLES[other].polylines_mm:
            dense = np.concatenate([np.linspace(a, b, 200) for a, b in itertools.pairwise(line)])
            distance = np.linalg.norm(points[:, None, :] - dense[None], axis=2).min(axis=1)
            keep &= distance > BUNDLES[other].radius_mm + 0.5
    return keep


# ------------------------------------------------------------------ gradient scheme
def test_gradient_scheme_counts_norms_and_spread(scheme):
    bvals, bvecs = scheme
    assert bvals.shape == (36,) and bvecs.shape == (36, 3)
    b0 = bvals == 0
    assert b0.sum() == 6 and b0[0]
    assert not b0[:6].all()  # interleaved, not all at the start
    assert np.all(bvecs[b0] == 0)
    np.testing.assert_allclose(np.linalg.norm(bvecs[~b0], axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(bvals[~b0], 1000.0)
    unit = bvecs[~b0]
    cosine = np.abs(unit @ unit.T)  # antipodal directions are the same measurement
    np.fill_diagonal(cosine, 0.0)
    assert np.degrees(np.arccos(cosine.max())) > 15.0


def test_gradient_scheme_multishell_and_deterministic():
    bvals, bvecs = gradient_scheme(n_b0=3, n_directions=20, bvals_s_mm2=(1000.0, 2500.0))
    assert bvals.shape == (43,)
    assert (bvals == 0).sum() == 3
    assert (bvals == 1000).sum() == 20 and (bvals == 2500).sum() == 20
    again = gradient_scheme(n_b0=3, n_directions=20, bvals_s_mm2=(1000.0, 2500.0))
    np.testing.assert_array_equal(bvecs, again[1])
    with pytest.raises(InputError, match="bvals_s_mm2"):
        gradient_scheme(bvals_s_mm2=(-5.0,))
    with pytest.raises(InputError, match="n_directions"):
        gradient_scheme(n_directions=3)


# ------------------------------------------------------------------ metrics
def test_tensor_metrics_match_dipy_formulas():
    rng = np.random.default_rng(1)
    evals = rng.uniform(0.05e-3, 3e-3, size=(500, 3))
    metrics = tensor_metrics(evals)
    np.testing.assert_allclose(metrics["fa"], fractional_anisotropy(evals), atol=1e-12)
    np.testing.assert_allclose(metrics["md"], mean_diffusivity(evals), rtol=1e-12)
    ordered = np.sort(evals, axis=1)[:, ::-1]
    np.testing.assert_allclose(metrics["ad"], ordered[:, 0], rtol=1e-12)
    np.testing.assert_allclose(metrics["rd"], ordered[:, 1:].mean(axis=1), rtol=1e-12)
    zero = tensor_metrics(np.zeros((2, 3)))
    np.testing.assert_array_equal(zero["fa"], 0.0)
    # Closed form for a cylinder: FA = (AD - RD) / sqrt(AD² + 2 RD²) = 1.4 / sqrt(3.07).
    assert tensor_metrics(np.array([1.7e-3, 0.3e-3, 0.3e-3]))["fa"] == pytest.approx(
        0.7990222, abs=1e-7
    )


# ------------------------------------------------------------------ bundles
@pytest.mark.parametrize("name", list(BUNDLES))
def test_points_on_each_polyline_belong_to_their_bundle(name):
    points = _points_on_polylines(name)
    points = points[_not_claimed_earlier(name, points)]
    assert len(points) >= 5
    code, direction = bundle_field(points)
    np.testing.assert_array_equal(code, BUNDLE_CODES[name])
    np.testing.assert_allclose(np.linalg.norm(direction, axis=1), 1.0, atol=1e-12)


def test_bundle_directions_follow_anatomy():
    # Corpus callosum at the midline: left-right.
    midline = np.array([[0.0, y, z] for y, z in [(28, 10), (0, 23), (-20, 22), (-36, 13)]])
    code, direction = bundle_field(midline)
    np.testing.assert_array_equal(code, BUNDLE_CODES["CC"])
    assert np.all(np.abs(direction[:, 0]) > 0.9)
    # Corticospinal tracts at the internal capsule / corona radiata: superior-inferior.
    for side, sign in (("L", -1.0), ("R", 1.0)):
        capsule = np.array([[sign * 23.0, -13.0, 15.0], [sign * 24.0, -14.0, 25.0]])
        code, direction = bundle_field(capsule)
        np.testing.assert_array_equal(code, BUNDLE_CODES[f"CST_{side}"])
        assert np.all(np.abs(direction[:, 2]) > 0.9)
        # Optic radiations lateral to the trigone: anterior-posterior.
        trigone = np.array([[sign * 37.5, -50.0, 2.0], [sign * 35.0, -62.0, 2.0]])
        code, direction = bundle_field(trigone)
        np.testing.assert_array_equal(code, BUNDLE_CODES[f"OR_{side}"])
        assert np.all(np.abs(direction[:, 1]) > 0.9)


def test_far_points_have_no_bundle_and_smooth_orientation():
    far = np.array([[60.0, 60.0, 60.0], [0.0, 60.0, -40.0], [-50.0, -20.0, -30.0]])
    code, direction = bundle_field(far)
    np.testing.assert_array_equal(code, 0)
    np.testing.assert_allclose(np.linalg.norm(direction, axis=1), 1.0, atol=1e-12)
    # Smooth: neighbours 1 mm apart differ by a few degrees at most.
    line = np.column_stack([np.linspace(40, 70, 31), np.full(31, 40.0), np.full(31, 50.0)])
    _, direction = bundle_field(line)
    assert np.all(np.abs(np.sum(direction[1:] * direction[:-1], axis=1)) > np.cos(np.radians(8)))


def test_bundle_field_chunking_does_not_change_the_result():
    rng = np.random.default_rng(2)
    points = rng.uniform([-60, -100, -40], [60, 60, 70], size=(3000, 3))
    code_a, dir_a = bundle_field(points)
    code_b, dir_b = bundle_field(points, chunk_points=7)
    np.testing.assert_array_equal(code_a, code_b)
    np.testing.assert_array_equal(dir_a, dir_b)
    assert np.unique(code_a).size > 1


def test_cc_parts_split_the_callosum_by_y():
    assert set(CC_PARTS) == {"genu", "body", "splenium"}
    assert CC_PARTS["genu"][0] == 15.0 and CC_PARTS["splenium"][1] == -25.0
    ys = np.array([fibre[0, 1] for fibre in BUNDLES["CC"].polylines_mm])
    assert ys.max() > 25 and ys.min() < -35


# ------------------------------------------------------------------ tensors + signal vs dipy
@pytest.fixture(scope="module")
def known_voxels():
    """Points on every bundle plus one voxel of every other tissue, lesions included."""
    points = np.concatenate(
        [
            _points_on_polylines(n, 2)[_not_claimed_earlier(n, _points_on_polylines(n, 2))]
            for n in BUNDLES
        ]
    )
    n_bundle = len(points)
    extra = np.array([[50.0, 40.0, 40.0]] * 9)  # far from all bundles
    points = np.concatenate([points, extra])
    code, direction = bundle_field(points)
    tissue = np.concatenate([np.full(n_bundle, WM), [1, 2, 3, 4, 5, 6, 7, 3, 3]])
    lesion = np.zeros(len(points), dtype=bool)
    lesion[[3, n_bundle + 7]] = True  # a lesion in a bundle and one in other WM
    left = points[:, 0] < 0
    return tissue, code, direction, lesion, left, n_bundle


@pytest.mark.parametrize("fit_method", ["WLS", "OLS"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_noise_free_signal_fitted_by_dipy_recovers_the_tensors(
    scheme, known_voxels, fit_method, dtype
):
    bvals, bvecs = scheme
    tissue, code, direction, lesion, left, n_bundle = known_voxels
    rotation = Rotation.random(random_state=3).as_matrix()
    evals, evecs = tissue_tensors(
        tissue, code, direction, lesion, left, left_nawm_rd_scale=0.92, rotation=rotation
    )
    # The gradients are given in the native frame, where the tensors are.
    signal = simulate_signal(evals, evecs, bvals, bvecs, default_s0(tissue, lesion))
    assert signal.dtype == np.float32
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs), fit_method=fit_method).fit(
        signal.astype(dtype).astype(np.float64)
    )
    truth = tensor_metrics(evals)
    np.testing.assert_allclose(fit.fa, truth["fa"], atol=1e-6)
    np.testing.assert_allclose(fit.md, truth["md"], rtol=1e-6)
    np.testing.assert_allclose(fit.ad, truth["ad"], rtol=1e-6)
    np.testing.assert_allclose(fit.rd, truth["rd"], rtol=1e-6)
    # Principal eigenvector = the bundle tangent, rotated into the native frame.
    expected = direction[:n_bundle] @ rotation.T
    dot = np.abs(np.sum(fit.evecs[:n_bundle, :, 0] * expected, axis=1))
    assert np.all(dot > 0.9999)


def test_default_tissue_values_and_lesions():
    params = TissueDiffusivities()
    tissue = np.array([0, 1, 2, 3, 3, 4, 5, 6, 7, 3, 3, 2])
    code = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0])
    lesion = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=bool)
    evals, evecs = tissue_tensors(
        tissue, code, np.tile([0.0, 0.0, 1.0], (12, 1)), lesion, np.zeros(12, dtype=bool)
    )
    np.testing.assert_array_equal(evals[0], 0.0)
    np.testing.assert_allclose(evals[[1, 6]], 3.0e-3)
    np.testing.assert_allclose(evals[2], 0.80e-3)
    np.testing.assert_allclose(evals[[5, 8]], 0.75e-3)
    np.testing.assert_allclose(evals[3], [1.4e-3, 0.45e-3, 0.45e-3])
    np.testing.assert_allclose(evals[7], [1.4e-3, 0.45e-3, 0.45e-3])  # brainstem
    np.testing.assert_allclose(evals[4], [1.7e-3, 0.3e-3, 0.3e-3])
    np.testing.assert_allclose(evals[9], [1.4e-3 * 1.15, 0.45e-3 * 1.8, 0.45e-3 * 1.8])
    np.testing.assert_allclose(evals[10], [1.7e-3 * 1.15, 0.3e-3 * 1.8, 0.3e-3 * 1.8])
    np.testing.assert_allclose(evals[11], 0.80e-3)  # lesion flag outside WM is ignored
    assert params.lesion_rd_factor == 1.8
    metrics = tensor_metrics(evals)
    assert metrics["fa"][4] == pytest.approx(0.799, abs=1e-3)
    assert metrics["fa"][3] == pytest.approx(0.618, abs=1e-3)
    assert metrics["fa"][9] < metrics["fa"][3] and metrics["md"][9] > metrics["md"][3]
    # Eigenvectors: orthonormal, first one along the fibre.
    gram = np.einsum("nij,nik->njk", evecs, evecs)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(3), gram.shape), atol=1e-12)
    np.testing.assert_allclose(np.abs(evecs[3, :, 0]), [0.0, 0.0, 1.0], atol=1e-12)


def test_planted_effect_scales_only_left_nawm_radial_diffusivity():
    rng = np.random.default_rng(4)
    n = 400
    tissue = rng.choice([2, 3, 6], size=n)
    code = rng.choice([0, 1, 2], size=n)
    direction = rng.normal(size=(n, 3))
    lesion = rng.random(n) < 0.2
    left = rng.random(n) < 0.5
    base, _ = tissue_tensors(tissue, code, direction, lesion, left)
    for scale in (0.96, 0.92):
        scaled, _ = tissue_tensors(tissue, code, direction, lesion, left, left_nawm_rd_scale=scale)
        before, after = tensor_metrics(base), tensor_metrics(scaled)
        target = (tissue == WM) & left & ~lesion
        assert target.sum() > 20
        np.testing.assert_allclose(after["rd"][target], scale * before["rd"][target], rtol=1e-14)
        np.testing.assert_array_equal(after["rd"][~target], before["rd"][~target])
        np.testing.assert_array_equal(after["ad"], before["ad"])
        assert np.all(after["fa"][target] > before["fa"][target])


def test_tissue_tensors_rejects_bad_inputs():
    ones = np.ones(3, dtype=bool)
    args = (np.array([3, 3, 3]), np.zeros(3, int), np.tile([1.0, 0, 0], (3, 1)), ones, ones)
    with pytest.raises(InputError, match="rotation"):
        tissue_tensors(*args, rotation=np.diag([1.0, 2.0, 1.0]))
    with pytest.raises(InputError, match="left_nawm_rd_scale"):
        tissue_tensors(*args, left_nawm_rd_scale=0.0)
    with pytest.raises(InputError, match="tissue"):
        tissue_tensors(np.array([3, 9, 3]), *args[1:])
    with pytest.raises(InputError, match="lesion"):
        tissue_tensors(*args[:3], np.ones(2, dtype=bool), ones)
    with pytest.raises(InputError, match="lesion_rd_factor"):
        TissueDiffusivities(lesion_rd_factor=-1.0)


# ------------------------------------------------------------------ noise
def test_rician_noise_statistics_and_reproducibility(scheme):
    bvals, bvecs = scheme
    n = 20_000
    tissue = np.full(n, 2)  # uniform isotropic GM region
    evals, evecs = tissue_tensors(
        tissue,
        np.zeros(n, int),
        np.tile([1.0, 0, 0], (n, 1)),
        np.zeros(n, bool),
        np.zeros(n, bool),
    )
    s0 = np.full(n, 1000.0)
    signal = simulate_signal(evals, evecs, bvals, bvecs, s0, snr=20, rng=5, chunk_voxels=3000)
    sigma = 1000.0 / 20
    b0 = signal[:, bvals == 0].astype(np.float64).ravel()
    expected = rice(b=1000.0 / sigma, scale=sigma)
    assert b0.mean() == pytest.approx(expected.mean(), rel=0.01)
    assert b0.std() == pytest.approx(expected.std(), rel=0.03)
    # Diffusion-weighted volumes: low SNR, where the Rician bias is visible.
    dw = signal[:, 1].astype(np.float64)
    expected_dw = rice(b=1000.0 * np.exp(-0.8) / sigma, scale=sigma)
    assert dw.mean() == pytest.approx(expected_dw.mean(), rel=0.02)
    assert dw.std() == pytest.approx(expected_dw.std(), rel=0.04)
    # Background (S0 = 0): Rayleigh noise, mean sigma * sqrt(pi / 2).
    background = simulate_signal(
        np.zeros((n, 3)), evecs, bvals, bvecs, np.zeros(n), sigma=sigma, rng=6
    )
    assert background.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.01)
    assert np.all(background > 0)
    # Reproducible with the same seed, different with another.
    again = simulate_signal(evals, evecs, bvals, bvecs, s0, snr=20, rng=5, chunk_voxels=3000)
    np.testing.assert_array_equal(signal, again)
    other = simulate_signal(evals, evecs, bvals, bvecs, s0, snr=20, rng=7, chunk_voxels=3000)
    assert not np.array_equal(signal, other)
    # The same sigma given directly or via snr and a reference intensity.
    direct = simulate_signal(evals, evecs, bvals, bvecs, s0, sigma=sigma, rng=5, chunk_voxels=3000)
    np.testing.assert_array_equal(signal, direct)
    with pytest.raises(InputError, match="only one"):
        simulate_signal(evals, evecs, bvals, bvecs, s0, snr=20, sigma=sigma)


def test_noise_free_signal_is_the_stejskal_tanner_decay(scheme):
    bvals, bvecs = scheme
    evals = np.array([[1.7e-3, 0.3e-3, 0.3e-3]])
    evecs = np.eye(3)[None]
    signal = simulate_signal(evals, evecs, bvals, bvecs, np.array([1000.0]))[0]
    adc = 1.7e-3 * bvecs[:, 0] ** 2 + 0.3e-3 * (bvecs[:, 1] ** 2 + bvecs[:, 2] ** 2)
    np.testing.assert_allclose(signal, 1000.0 * np.exp(-bvals * adc), rtol=1e-6)


# ------------------------------------------------------------------ s0 and truth tables
def test_default_s0_per_tissue():
    s0 = default_s0(np.arange(8))
    np.testing.assert_array_equal(s0, [0, 3000, 1200, 1000, 1150, 3000, 1000, 1150])
    lesioned = default_s0(np.array([3, 2]), np.array([True, True]))
    np.testing.assert_array_equal(lesioned, [1500, 1200])


def test_dwi_truth_region_means():
    evals = np.array([[1.7e-3, 0.3e-3, 0.3e-3], [1.4e-3, 0.45e-3, 0.45e-3], [3e-3] * 3])
    truth = dwi_truth(
        evals,
        {
            "wm": np.array([True, True, False]),
            "csf": np.array([False, False, True]),
            "none": np.zeros(3, dtype=bool),
        },
    )
    assert truth["wm"]["n_voxels"] == 2
    assert truth["wm"]["ad"] == pytest.approx((1.7e-3 + 1.4e-3) / 2)
    assert truth["wm"]["rd"] == pytest.approx((0.3e-3 + 0.45e-3) / 2)
    assert truth["wm"]["fa"] == pytest.approx(np.mean(fractional_anisotropy(evals[:2])), abs=1e-12)
    assert truth["csf"] == pytest.approx(
        {"fa": 0.0, "md": 3e-3, "ad": 3e-3, "rd": 3e-3, "n_voxels": 1}, rel=1e-12
    )
    assert truth["none"] == {"fa": None, "md": None, "ad": None, "rd": None, "n_voxels": 0}
