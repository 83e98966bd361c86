"""The registration pyramid does what its arguments say (issue 19's speed work).

dipy's ``AffineRegistration`` always runs its finest level on the static image itself (it
ignores the last factor), so :func:`msimaging.registration.register_affine` resamples the
static image to that factor first; ``early_levels`` stops the stages before the final one at
a coarser level. Checked against what dipy's metric is given (the grid of every level) and
against a planted affine (analytic ground truth), plus the Dask workers' environment.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from dipy.align import imaffine
from scipy import ndimage
from scipy.spatial.transform import Rotation

from msimaging import registration as reg
from msimaging.errors import InputError


def _head(shape=(60, 68, 56), voxel_mm=2.0, seed=0) -> nib.Nifti1Image:
    """An asymmetric smooth 'head': ellipsoids of different intensities plus texture."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    centre = np.array(shape) / 2
    data = np.zeros(shape, np.float32)
    for offset, radii, value in (((0, 0, 0), (18, 22, 16), 1.0), ((4, -6, 2), (8, 7, 6), 2.5),
                                 ((-7, 5, -3), (5, 9, 4), 0.4), ((2, 12, 6), (4, 4, 3), 3.0)):
        inside = ((((grid - centre - offset) / radii) ** 2).sum(axis=-1)) <= 1
        data[inside] = value
    data += ndimage.gaussian_filter(rng.normal(size=shape), 2).astype(np.float32) * 0.3
    data = ndimage.gaussian_filter(data, 1.0)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -np.array(shape) * voxel_mm / 2
    return nib.Nifti1Image(data, affine)


def _moved(static: nib.Nifti1Image, planted: np.ndarray) -> nib.Nifti1Image:
    """moving(x) = static(inv(planted) x): the static mm -> moving mm map is ``planted``."""
    return reg.AffineTransform(np.linalg.inv(planted), static.shape, static.affine,
                               static.shape, static.affine).apply(static, interpolation="linear")


def _planted(scales=(1.0, 1.0, 1.0)) -> np.ndarray:
    planted = np.eye(4)
    rotation = Rotation.from_euler("xyz", [6, -4, 5], degrees=True).as_matrix()
    planted[:3, :3] = rotation @ np.diag(scales)
    planted[:3, 3] = [3.0, -4.0, 2.5]
    return planted


@pytest.fixture(scope="module")
def pair():
    """Static head and the same head moved by a planted rigid transform."""
    static = _head()
    planted = _planted()
    return static, _moved(static, planted), planted


def _error_mm(fitted: np.ndarray, planted: np.ndarray, img: nib.Nifti1Image) -> float:
    mask = np.asarray(img.dataobj) > 0.5
    points = np.argwhere(mask) @ img.affine[:3, :3].T + img.affine[:3, 3]
    error = (fitted - planted)[:3]
    return float(np.linalg.norm(points @ error[:, :3].T + error[:, 3], axis=1).mean())


@pytest.fixture()
def level_shapes(monkeypatch):
    """The static grid dipy's metric is set up with, in call order."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    setup = imaffine.MutualInformationMetric.setup

    def spy(self, transform, static, *args, **kwargs):
        shapes.append((type(transform).__name__, tuple(static.shape)))
        return setup(self, transform, static, *args, **kwargs)

    monkeypatch.setattr(imaffine.MutualInformationMetric, "setup", spy)
    return shapes


def test_last_factor_is_honoured(pair, level_shapes):
    static, moving, _ = pair
    reg.register_affine(moving, static, transform="translation", level_iters=(50, 20),
                        sigmas=(1.0, 0.0), factors=(4, 2))
    # Two levels at 4x and 2x the static voxel (dipy alone would run the second on 1x).
    expected = [tuple(s // f for s in static.shape) for f in (4, 2)]
    assert [shape for _, shape in level_shapes] == expected


@pytest.mark.parametrize(("early_levels", "translation", "rigid"), [(1, 1, 1), ((1, 2), 1, 2)])
def test_early_levels_stop_the_early_stages_short(pair, level_shapes, early_levels,
                                                  translation, rigid):
    """One number for every early stage, or one per stage: each stops at its level."""
    static, moving, _ = pair
    reg.register_affine(moving, static, transform="affine", early_levels=early_levels)
    full = [tuple(s // f for s in static.shape) for f in (4, 2)] + [static.shape]
    stages = {}
    for name, shape in level_shapes:
        stages.setdefault(name, []).append(shape)
    assert stages["TranslationTransform3D"] == full[:translation]
    assert stages["RigidTransform3D"] == full[:rigid]
    assert stages["AffineTransform3D"] == full


@pytest.mark.parametrize("early_levels", [None, 1])
def test_early_levels_recover_the_planted_rigid_motion(pair, early_levels):
    static, moving, planted = pair
    fitted = reg.register_affine(moving, static, transform="rigid", early_levels=early_levels)
    error = _error_mm(fitted.matrix, planted, static)
    print(f"rigid, early_levels={early_levels}: mean error {error:.3f} mm")
    assert error < 0.1  # 2 mm voxels: a twentieth of a voxel (measured 0.01-0.02 mm)


def test_early_levels_keep_the_affine_accuracy():
    """A planted rotation + shift + 2-4 % scaling: translation and rigid at the coarsest level
    only end as close to the truth as every stage at every level (dipy's mutual information
    leaves the same ~0.4 mm bias in both: interpolation bias of the affine fit)."""
    static = _head()
    planted = _planted((1.04, 0.97, 1.02))
    moving = _moved(static, planted)
    errors = {
        early: _error_mm(reg.register_affine(moving, static, transform="affine",
                                             early_levels=early).matrix, planted, static)
        for early in (None, 1)
    }
    print(f"affine: mean error {errors}")
    assert errors[None] < 1.0 and errors[1] < 1.0  # half a voxel
    assert errors[1] <= errors[None] + 0.05


@pytest.fixture()
def evaluations(monkeypatch):
    """How many times dipy's optimiser evaluates the mutual information."""
    count = {"n": 0}
    evaluate = imaffine.MutualInformationMetric.distance_and_gradient

    def spy(self, params):
        count["n"] += 1
        return evaluate(self, params)

    monkeypatch.setattr(imaffine.MutualInformationMetric, "distance_and_gradient", spy)
    return count


def test_ftol_stops_sooner_and_keeps_the_planted_motion(pair, evaluations):
    """The default tolerance (1e-7) against scipy's (2.2e-9): fewer evaluations of the
    metric, the planted rigid motion still recovered to a twentieth of a voxel."""
    static, moving, planted = pair
    found, counts = {}, {}
    for ftol in (reg.DEFAULT_FTOL, reg.SCIPY_FTOL):
        evaluations["n"] = 0
        found[ftol] = _error_mm(
            reg.register_affine(moving, static, transform="rigid", ftol=ftol).matrix,
            planted, static)
        counts[ftol] = evaluations["n"]
    print(f"rigid: errors {found}, metric evaluations {counts}")
    assert counts[reg.DEFAULT_FTOL] < counts[reg.SCIPY_FTOL]
    assert found[reg.DEFAULT_FTOL] < 0.1


@pytest.mark.parametrize("value", [0, 1, -1e-7, True, "1e-7"])
def test_bad_ftol_is_named(pair, value):
    static, moving, _ = pair
    with pytest.raises(InputError, match="ftol"):
        reg.register_affine(moving, static, ftol=value)


@pytest.mark.parametrize("value", [0, 4, 1.5, True, "1", (1,), (1, 2, 3), (0, 1), (1, "2")])
def test_bad_early_levels_are_named(pair, value):
    static, moving, _ = pair
    with pytest.raises(InputError, match="early_levels"):
        reg.register_affine(moving, static, early_levels=value)


def test_dask_workers_keep_glibc_dynamic_mmap_and_our_environment():
    """The embedded cluster's workers run without Dask's MALLOC_TRIM_THRESHOLD_ (30 % slower
    DTI visits) but with one BLAS thread, and our own process's environment is unchanged."""
    pytest.importorskip("distributed")
    from msimaging.pipeline.run import _client

    before = dict(os.environ)
    client, cluster = _client(None, 1)
    try:
        env = client.run(lambda: {k: os.environ.get(k) for k in
                                  ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")})
    finally:
        client.close()
        cluster.close()
    (worker_env,) = env.values()
    assert worker_env["MALLOC_TRIM_THRESHOLD_"] == before.get("MALLOC_TRIM_THRESHOLD_")
    assert worker_env["OMP_NUM_THREADS"] == "1"
    assert dict(os.environ) == before
