"""CSD fits, MRtrix peaks images and tracking from them (msimaging.dti.orientations).

Ground truth comes from the simulation: tubes of single-tensor signal laid along known
*world* directions (signals computed from world-frame gradients, then written with FSL
b-vectors for each grid), and dipy's ``multi_tensor`` for crossings.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest

from msimaging.errors import InputError, MSImagingWarning
from msimaging.io import bvecs_from_voxel, bvecs_to_voxel, load_dwi

SHAPE = (24, 24, 14)
AD, RD, ISO = 1.7e-3, 0.3e-3, 0.8e-3  # mm²/s
S0 = 100.0


def _scheme(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Two b0 and ``n`` electrostatically spread directions at b=1000 (world frame)."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    rng = np.random.default_rng(3)
    hemi = HemiSphere(theta=np.pi * rng.random(n), phi=2 * np.pi * rng.random(n))
    hemi, _ = disperse_charges(hemi, 2000)
    bvals = np.r_[0.0, 0.0, np.full(n, 1000.0)]
    return bvals, np.vstack([np.zeros((2, 3)), hemi.vertices])


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _rotation(axis: str, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _grids() -> dict[str, np.ndarray]:
    """The same physical field of view on a det<0 grid, its x-flipped det>0 twin (voxel
    centres at the same world positions) and an oblique grid (rotated 20° and 10°)."""
    neg = np.diag([-2.0, 2.0, 2.0, 1.0])
    neg[:3, 3] = [23.0, -23.0, -13.0]
    pos = neg.copy()
    pos[0, 0] = 2.0
    pos[0, 3] = neg[0, 3] + neg[0, 0] * (SHAPE[0] - 1)
    oblique = np.eye(4)
    oblique[:3, :3] = _rotation("z", 20) @ _rotation("x", 10) * 2.0
    oblique[:3, 3] = -oblique[:3, :3] @ (np.array(SHAPE) - 1) / 2
    return {"det<0": neg, "det>0": pos, "oblique": oblique}


def _world_centres(affine: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    return ijk.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]


def _tubes(affine: np.ndarray, directions, radius_mm: float = 5.0) -> list[np.ndarray]:
    """Boolean masks of tubes through the world origin along each world direction."""
    xyz = _world_centres(affine)
    out = []
    for d in directions:
        along = xyz @ d
        out.append((np.linalg.norm(xyz - along[:, None] * d, axis=1) < radius_mm).reshape(SHAPE))
    return out


def _simulate(affine, directions, *, sigma: float = 0.0, seed: int = 0):
    """DWI image + FSL bvals/bvecs: fibres along world ``directions`` in their tubes (equal
    mix where tubes overlap), isotropic elsewhere; optional Gaussian noise."""
    bvals, g_world = _scheme()
    tubes = _tubes(affine, directions)
    signal = np.zeros((*SHAPE, bvals.size))
    count = np.zeros(SHAPE)
    for d, tube in zip(directions, tubes, strict=True):
        tensor = RD * np.eye(3) + (AD - RD) * np.outer(d, d)
        q = np.einsum("ni,ij,nj->n", g_world, tensor, g_world)
        signal[tube] += np.exp(-bvals * q)
        count += tube
    iso = np.exp(-bvals * ISO)
    signal = np.where(count[..., None] > 0, signal / np.maximum(count, 1)[..., None], iso)
    signal *= S0
    if sigma:
        signal += np.random.default_rng(seed).normal(0, sigma, signal.shape)
    img = nib.Nifti1Image(np.abs(signal).astype(np.float32), affine)
    fsl = bvecs_from_voxel(bvecs_to_voxel(g_world, affine, "world"), affine, "fsl")
    return img, bvals, fsl, tubes


def _fit(affine, directions, **kwargs):
    from msimaging.dti.orientations import fit_csd

    img, bvals, fsl, tubes = _simulate(affine, directions, **kwargs)
    dwi = load_dwi(img, bvals, fsl.T)
    # Fit the tubes and 4 mm around them only (dipy's CSD loops over voxels).
    brain = np.any(_tubes(affine, directions, radius_mm=9.0), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        fit = fit_csd(dwi, mask=nib.Nifti1Image(brain.astype(np.uint8), affine))
    return fit, tubes, dwi


def _mask(streamlines, affine, fa=None) -> np.ndarray:
    """Voxels crossed by a streamline, within FA >= 0.2 when ``fa`` is given (the tracked
    region, as :func:`msimaging.dti.tracts.bundle` defines a bundle's voxels)."""
    from msimaging.dti.tracts import TractBundle

    region = None if fa is None else np.asarray(fa.dataobj) >= 0.2
    tract = TractBundle("t", streamlines, len(streamlines), affine, SHAPE,
                        tracked_region=region)
    return np.asanyarray(tract.mask(1).dataobj).astype(bool)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def _world_voxels(mask: np.ndarray, affine: np.ndarray) -> set[tuple[float, ...]]:
    xyz = np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]
    return {tuple(p) for p in np.round(xyz, 3)}


def _track(source, seeds, **kwargs):
    from msimaging.dti.tracts import track

    kwargs = {"min_length_mm": 10.0, "seeds_per_voxel": 3, **kwargs}
    return track(source, seeds, **kwargs)


TUBE = _unit([1.0, 0.6, 0.3])
CROSSING = [_unit([1.0, 0.4, 0.2]), _unit(_rotation("z", 70) @ _unit([1.0, 0.4, 0.2]))]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """CSD fits of the same oblique tube on the three grids, their peaks saved and read."""
    from msimaging.dti.orientations import load_peaks, save_peaks

    folder = tmp_path_factory.mktemp("peaks")
    out = {}
    for name, affine in _grids().items():
        fit, (tube,), _ = _fit(affine, [TUBE])
        path = save_peaks(fit.peaks, folder / f"peaks_{len(out)}.nii.gz")
        out[name] = (affine, fit, load_peaks(path, fa=fit.fa), tube, path)
    return out


@pytest.mark.parametrize("grid", ["det<0", "det>0", "oblique"])
def test_saved_peaks_point_along_the_true_world_direction(frames, grid):
    _, fit, loaded, tube, path = frames[grid]
    assert fit.model == "csd" and fit.sh_order == 6  # 30 directions
    for peaks in (fit.peaks, loaded):
        world = peaks.world_directions()[..., 0, :][tube]
        assert np.abs(world @ TUBE).min() > 0.99
    # On disk: the raw file's first triplet is the world vector (MRtrix convention).
    raw = np.asanyarray(nib.load(path).dataobj)[..., :3][tube]
    amplitude = np.linalg.norm(raw, axis=1)
    assert (amplitude > 0).all()
    assert np.abs((raw / amplitude[:, None]) @ TUBE).min() > 0.99


def test_bundle_from_peaks_is_the_same_world_voxels_on_flipped_grids(frames):
    masks = {}
    for grid in ("det<0", "det>0"):
        affine, _, loaded, tube, _ = frames[grid]
        # Seeds fill the tube so that the bundle fills it (sampling noise stays small).
        mask = _mask(_track(loaded, tube, seeds_per_voxel=1), affine)
        assert _dice(mask, tube) >= 0.8
        masks[grid] = _world_voxels(mask, affine)
    a, b = masks["det<0"], masks["det>0"]
    assert 2 * len(a & b) / (len(a) + len(b)) >= 0.95


def test_csd_recovers_a_simulated_crossing():
    """dipy multi_tensor crossing at 70° (truth from the simulation, voxel frame)."""
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import multi_tensor

    from msimaging.dti.orientations import fit_csd

    bvals, bvecs = _scheme()
    gtab = gradient_table(bvals, bvecs=bvecs)
    evals = np.array([[AD, RD, RD], [AD, RD, RD]])
    rng = np.random.default_rng(7)
    single = np.array([multi_tensor(gtab, evals, S0=S0, angles=[(90, 0), (90, 0)],
                                    fractions=[50, 50], snr=40, rng=rng)[0] for _ in range(64)])
    crossing_angles = [(90, 0), (90, 70)]
    cross = np.array([multi_tensor(gtab, evals, S0=S0, angles=crossing_angles,
                                   fractions=[50, 50], snr=40, rng=rng)[0] for _ in range(64)])
    data = np.concatenate([single, cross]).reshape(8, 4, 4, -1).astype(np.float32)
    dwi = load_dwi(nib.Nifti1Image(data, np.eye(4)), bvals, bvecs, bvec_convention="voxel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        fit = fit_csd(dwi, mask=nib.Nifti1Image(np.ones((8, 4, 4), np.uint8), np.eye(4)))
    assert fit.n_response_voxels >= 50
    truth = np.array([[np.cos(np.deg2rad(p)), np.sin(np.deg2rad(p)), 0.0] for _, p in
                      crossing_angles])
    directions = fit.peaks.directions[4:].reshape(-1, 3, 3)  # crossing voxels
    values = fit.peaks.values[4:].reshape(-1, 3)
    assert ((values > 0).sum(axis=1) >= 2).mean() >= 0.9
    # Each true fibre: angle to the nearest of the two largest peaks.
    cos = np.abs(np.einsum("vpk,fk->vfp", directions[:, :2], truth)).max(axis=2)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert np.median(angle) < 5.0
    assert (angle < 10.0).all(axis=1).mean() >= 0.9
    # The vectorised peak search agrees with dipy's peak_directions on the same fODFs.
    from dipy.core.sphere import HemiSphere
    from dipy.data import default_sphere
    from dipy.direction import peak_directions
    from dipy.reconst.shm import sh_to_sf

    fine = HemiSphere.from_sphere(default_sphere).subdivide(n=1)
    odfs = sh_to_sf(fit.shm_coeff[4:].reshape(-1, fit.shm_coeff.shape[-1]), fine,
                    sh_order_max=fit.sh_order)
    for voxel, odf in enumerate(odfs):
        reference, _, _ = peak_directions(odf, fine, relative_peak_threshold=0.5,
                                          min_separation_angle=25)
        ours = directions[voxel][values[voxel] > 0]
        assert len(ours) == len(reference)
        assert np.abs(np.sum(ours * reference, axis=1)).min() > np.cos(np.deg2rad(4.0))


@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    """Two tubes crossing at 70° along oblique world directions (noise sigma 2.5: SNR 40),
    on the oblique grid: a peaks frame error (a flip or a missing rotation) turns them."""
    affine = _grids()["oblique"]
    fit, tubes, dwi = _fit(affine, CROSSING, sigma=2.5)
    along = (_world_centres(affine) @ CROSSING[0]).reshape(SHAPE)
    seeds = tubes[0] & ~tubes[1] & (along < -10)
    return affine, fit, tubes, seeds, dwi, along, tmp_path_factory.mktemp("crossing")


def test_peaks_file_from_csd_reproduces_csd_tracking(crossing):
    from msimaging.dti.orientations import load_peaks, save_peaks

    affine, fit, tubes, seeds, dwi, along, folder = crossing
    path = save_peaks(fit.peaks, folder / "csd_peaks.nii.gz")
    loaded = load_peaks(path, fa=fit.fa, reference=dwi)
    model = _mask(_track(fit, seeds), affine, fit.fa)
    from_file = _mask(_track(loaded, seeds), affine, fit.fa)
    # The bundle goes through the crossing and beyond it, along the first tube.
    assert (model & tubes[0] & ~tubes[1] & (along > 10)).sum() > 10
    assert _dice(model, from_file) >= 0.9


def test_hand_written_mrtrix_peaks_reproduce_csd_tracking(crossing):
    """A peaks file written by hand from the true world directions (MRtrix convention,
    independent of save_peaks) tracks the bundle the CSD fit tracks."""
    from msimaging.dti.orientations import load_peaks

    affine, fit, tubes, seeds, _, _, folder = crossing
    directions = CROSSING
    data = np.zeros((*SHAPE, 6), np.float32)
    data[tubes[0], 0:3] = directions[0]
    only_second = tubes[1] & ~tubes[0]
    data[only_second, 0:3] = directions[1]
    data[tubes[0] & tubes[1], 3:6] = 0.9 * directions[1]
    data[~(tubes[0] | tubes[1])] = np.nan  # absent peaks as sh2peaks writes them
    path = folder / "by_hand.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    loaded = load_peaks(path)  # no FA: the normalised amplitude is the tracking metric
    assert loaded.fa_source == "amplitude"
    model = _mask(_track(fit, seeds), affine, fit.fa)
    by_hand = _mask(_track(loaded, seeds), affine, fit.fa)
    assert _dice(model, by_hand) >= 0.9


def test_tensor_peaks_reproduce_tensor_tracking(tmp_path):
    from msimaging.dti import fit_tensor
    from msimaging.dti.orientations import load_peaks, peaks_from_tensor, save_peaks

    affine = _grids()["det>0"]
    img, bvals, fsl, (tube,) = _simulate(affine, [TUBE])
    tensor = fit_tensor(img, bvals, fsl.T)
    path = save_peaks(peaks_from_tensor(tensor), tmp_path / "tensor_peaks.nii.gz")
    raw = np.asanyarray(nib.load(path).dataobj)[tube]
    assert np.allclose(np.linalg.norm(raw, axis=1), np.asarray(tensor.fa.dataobj)[tube], atol=1e-5)
    assert np.abs((raw / np.linalg.norm(raw, axis=1)[:, None]) @ TUBE).min() > 0.99
    loaded = load_peaks(path, fa=tensor.fa, mask=tensor.mask)
    centre = np.linalg.norm(_world_centres(affine), axis=1).reshape(SHAPE) < 3.0
    from_tensor = _mask(_track(tensor, centre), affine)
    assert from_tensor.sum() > 100
    assert _dice(from_tensor, _mask(_track(loaded, centre), affine)) >= 0.9


def test_bad_peaks_files_name_the_file(tmp_path, frames):
    from msimaging.dti.orientations import load_peaks

    affine = _grids()["det<0"]
    four = tmp_path / "four_volumes.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 4), np.float32), affine), four)
    with pytest.raises(InputError, match=r"four_volumes\.nii\.gz.*multiple of 3"):
        load_peaks(four)
    other = tmp_path / "other_grid.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10, 3), np.float32), affine), other)
    with pytest.raises(InputError, match=r"other_grid\.nii\.gz.*not on the grid"):
        load_peaks(other, reference=frames["det<0"][1])
    with pytest.raises(InputError, match="probabilistic"):
        _track(frames["det<0"][2], np.ones(SHAPE, bool), method="probabilistic")


def test_fit_csd_rejects_bad_parameters_and_multishell_without_cvxpy(monkeypatch):
    import sys

    from msimaging.dti.orientations import fit_csd
    from msimaging.errors import DependencyError

    affine = _grids()["det<0"]
    img, bvals, fsl, _ = _simulate(affine, [TUBE])
    with pytest.raises(InputError, match="sh_order"):
        fit_csd(img, bvals, fsl.T, sh_order=5)
    with pytest.raises(InputError, match="fit_region"):
        fit_csd(img, bvals, fsl.T, fit_region="wm")
    # Two non-zero shells select dipy's multi-shell CSD, which needs cvxpy: hide it.
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    two_shells = np.where(bvals > 0, np.r_[0, 0, np.tile([1000.0, 2000.0], 15)], 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        with pytest.raises(DependencyError, match=r"cvxpy.*pip install 'msimaging\[multishell\]'"):
            fit_csd(img, two_shells, fsl.T)


@pytest.mark.parametrize("sh_order", [6, 8])
def test_batched_csd_matches_dipy_voxel_loop(sh_order):
    """fit_csd runs dipy's csdeconv on thousands of voxels at once: the reference is dipy's
    own per-voxel fit with the same response (sh_order 8 has more coefficients than the 30
    directions: dipy's regularised start)."""
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel

    from msimaging.dti.orientations import fit_csd

    affine = _grids()["oblique"]
    img, bvals, fsl, _ = _simulate(affine, CROSSING, sigma=2.5)
    dwi = load_dwi(img, bvals, fsl.T)
    brain = np.any(_tubes(affine, CROSSING, radius_mm=9.0), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_csd(dwi, mask=nib.Nifti1Image(brain.astype(np.uint8), affine),
                      sh_order=sh_order, fit_region="mask", n_jobs=2)
        model = ConstrainedSphericalDeconvModel(dwi.gradient_table(), fit.response,
                                                sh_order_max=sh_order)
        data = np.asanyarray(dwi.img.dataobj)[brain].astype(np.float64)
        reference = np.asarray(model.fit(data[:, None, None, :]).shm_coeff)[:, 0, 0]
    assert fit.n_fitted_voxels == brain.sum() > 1000
    scale = np.abs(reference).max()
    np.testing.assert_allclose(fit.shm_coeff[brain], reference, atol=1e-5 * scale)
    assert not fit.shm_coeff[~brain].any()


def test_tracking_region_fits_what_tracking_reads():
    """The default fit_region="tracking" fits FA > 0.15 (and also_fit) only: the same fODF
    and peaks there as the whole-mask fit, nothing elsewhere, and the same streamlines."""
    from msimaging.dti.orientations import TRACKING_FIT_FA, fit_csd

    affine = _grids()["det<0"]
    img, bvals, fsl, (tube,) = _simulate(affine, [TUBE], sigma=2.5)
    dwi = load_dwi(img, bvals, fsl.T)
    brain = np.any(_tubes(affine, [TUBE], radius_mm=9.0), axis=0)
    extra = np.zeros(SHAPE, bool)
    extra[:3, :3, :3] = True  # isotropic voxels (FA ~0) fitted on request, e.g. lesions
    brain |= extra
    mask = nib.Nifti1Image(brain.astype(np.uint8), affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        full = fit_csd(dwi, mask=mask, fit_region="mask")
        fast = fit_csd(dwi, mask=mask, also_fit=nib.Nifti1Image(extra.astype(np.uint8), affine))
    fa = np.asarray(full.fa.dataobj)
    region = brain & ((fa > TRACKING_FIT_FA) | extra)
    assert fast.fit_region == "tracking" and fast.n_fitted_voxels == region.sum()
    assert tube.sum() <= (region & tube).sum() + 5  # the tube is (almost all) fitted
    assert (brain & ~region).sum() > 500  # and most of the isotropic surround is not
    np.testing.assert_array_equal(fast.shm_coeff[region], full.shm_coeff[region])
    assert not fast.shm_coeff[~region].any() and not fast.peaks.values[~region].any()
    assert np.abs(fast.shm_coeff[extra]).sum() > 0
    np.testing.assert_array_equal(fast.peaks.directions[region], full.peaks.directions[region])
    assert np.array_equal(np.asarray(fast.mask.dataobj), np.asarray(full.mask.dataobj))
    assert np.array_equal(np.asarray(fast.peaks.mask.dataobj), brain.astype(np.uint8))
    centre = np.linalg.norm(_world_centres(affine), axis=1).reshape(SHAPE) < 4.0
    a, b = _track(full, centre), _track(fast, centre)
    assert len(a) == len(b) > 20
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_multishell_csd_resolves_a_crossing():
    """Three shells (b = 1000, 2000, 3000 s/mm², 30 directions each) from dipy's
    multi_tensor at SNR 50: single-fibre voxels along x, 90-degree crossings x/y, grey-matter
    (D = 0.8e-3 mm²/s) and CSF (D = 3e-3 mm²/s) voxels for the 3-tissue response estimated
    from the data. Bounds: the peak search refines on a ~4-degree sphere (discretisation
    < 3 degrees) and noise at SNR 50 adds about one; a frame or axis error would be 90
    degrees off, a failed deconvolution one blurred peak."""
    pytest.importorskip("cvxpy")
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import multi_tensor

    from msimaging.dti.orientations import fit_csd

    _, directions = _scheme()
    shells = (1000.0, 2000.0, 3000.0)
    bvals = np.r_[np.zeros(3), np.repeat(shells, 30)]
    bvecs = np.vstack([np.zeros((3, 3)), np.tile(directions[2:], (3, 1))])
    gtab = gradient_table(bvals, bvecs=bvecs)
    rng = np.random.default_rng(3)
    wm = [AD, 0.2e-3, 0.2e-3]

    def voxels(evals, angles, fractions):
        return [multi_tensor(gtab, np.array(evals), S0=S0, angles=angles, fractions=fractions,
                             snr=50, rng=rng)[0] for _ in range(16)]

    data = np.array(
        voxels([wm], [(90, 0)], [100]) + voxels([wm, wm], [(90, 0), (90, 90)], [50, 50])
        + voxels([[0.8e-3] * 3], [(0, 0)], [100]) + voxels([[3.0e-3] * 3], [(0, 0)], [100])
    ).reshape(4, 4, 4, -1).astype(np.float32)
    dwi = load_dwi(nib.Nifti1Image(data, np.eye(4)), bvals, bvecs, bvec_convention="voxel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_csd(dwi, mask=nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)))
    assert fit.model == "msmt-csd" and fit.sh_order == 8 and fit.n_response_voxels == 16
    # The anisotropic voxels (FA > 0.15) are fitted, grey matter (FA ~0.03) is not; CSF at
    # the noise floor of b = 3000 has a noisy tensor FA (up to ~0.2): some of it is fitted.
    assert 32 <= fit.n_fitted_voxels < 48
    directions = fit.peaks.directions.reshape(64, 3, 3)
    values = fit.peaks.values.reshape(64, 3)
    x, y = np.eye(3)[0], np.eye(3)[1]

    def angle_deg(d, truth):
        return np.degrees(np.arccos(np.clip(np.abs(d @ truth), 0.0, 1.0)))

    assert ((values[:16] > 0).sum(axis=1) == 1).all()
    assert angle_deg(directions[:16, 0], x).max() < 5.0
    assert ((values[16:32] > 0).sum(axis=1) == 2).all()
    errors = np.stack([np.minimum(angle_deg(directions[16:32, 0], t),
                                  angle_deg(directions[16:32, 1], t)) for t in (x, y)])
    assert errors.max() < 6.0 and np.median(errors) < 4.0
    assert not values[32:48].any()  # grey matter: not fitted, no peaks
