"""Field of view, waypoint margins and reasons of tract bundles, against analytic truth.

A grid that images only z >= 0 mm (MNI = world) cuts spheres at known heights: the imaged
share of a ball of radius r whose centre is h below the cut is 1 - cap(r - h) / volume, with
cap(a) = pi a^2 (3r - a) / 3. A tract whose waypoint lies wholly below the cut must come back
with ``status = "outside_fov"``, zero streamlines and a reason in every table row.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from msimaging.atlases.tracts import Sphere, TractDefinition
from msimaging.dti.tracts import bundle, tract_metrics, tract_profiles
from msimaging.errors import MSImagingWarning

SHAPE = (40, 40, 30)
# 1 mm voxels whose centres are at z = 0.5 ... 29.5 mm: the image covers z 0 to 30 mm.
AFFINE = np.array([[1.0, 0, 0, -20], [0, 1.0, 0, -20], [0, 0, 1.0, 0.5], [0, 0, 0, 1]])


def _imaged_share(radius: float, centre_z: float) -> float:
    below = max(0.0, min(2 * radius, radius - centre_z))  # cap height below z = 0
    cap = np.pi * below**2 * (3 * radius - below) / 3
    return 1 - cap / (4 / 3 * np.pi * radius**3)


def _definition(*waypoints: Sphere) -> TractDefinition:
    return TractDefinition("T", "test tract", (), waypoints=waypoints, seeds=waypoints[:1])


def _fit() -> SimpleNamespace:
    fa = np.full(SHAPE, 0.6, np.float32)
    v1 = np.zeros((*SHAPE, 3), np.float32)
    v1[..., 2] = 1
    return SimpleNamespace(
        fa=nib.Nifti1Image(fa, AFFINE), v1=nib.Nifti1Image(v1, AFFINE),
        mask=nib.Nifti1Image(np.ones(SHAPE, np.uint8), AFFINE),
    )


@pytest.mark.parametrize("centre_z", [0.0, 3.0, 8.0, -3.0])
def test_coverage_is_the_imaged_share_of_the_waypoint(centre_z):
    definition = _definition(Sphere((0, 0, centre_z), 6.0, "a"), Sphere((0, 0, 20), 6.0, "b"))
    table = definition.coverage(SHAPE, AFFINE, spacing_mm=0.5)
    expected = _imaged_share(6.0, centre_z)
    assert table["fov_fraction"].iloc[0] == pytest.approx(expected, abs=0.02)
    assert table["fov_fraction"].iloc[1] == 1.0
    # The imaged z range on the vertical line through the centre: 0 to 30 mm (within the
    # 0.25 mm step of the line).
    assert table["imaged_z_min_mm"].iloc[0] == pytest.approx(0.0, abs=0.3)
    assert table["imaged_z_max_mm"].iloc[0] == pytest.approx(30.0, abs=0.3)


def test_a_waypoint_below_the_image_gives_an_outside_fov_row_not_a_missing_one():
    fit = _fit()
    definition = _definition(Sphere((0, 0, -10), 5.0, "peduncle"), Sphere((0, 0, 20), 5.0, "b"))
    with pytest.warns(MSImagingWarning, match="'peduncle' outside the DWI field of view"):
        tract = bundle(fit, definition)
    assert tract.n_streamlines == 0 and tract.status == "outside_fov"
    assert "0% of it imaged" in tract.reason and "MNI z 0 to 30 mm" in tract.reason
    assert tract.parameters["waypoint_fov_fraction"] == [0.0, 1.0]
    metrics = tract_metrics({"fa": fit.fa}, tract)
    profiles = tract_profiles({"fa": fit.fa}, tract)
    for table in (metrics, profiles):
        assert len(table) > 0
        assert (table["status"] == "outside_fov").all()
        assert (table["reason"] == tract.reason).all()
        assert (table["n_streamlines"] == 0).all()
    assert metrics["mean"].isna().all()
    assert tract.to_frame()["status"].iloc[0] == "outside_fov"


def test_min_fov_fraction_decides_when_a_cut_waypoint_is_outside():
    fit = _fit()
    # Centre 4 mm below the cut, radius 6: 1 - cap(2)/V = 0.0741 of the ball is imaged.
    definition = _definition(Sphere((0, 0, -4), 6.0, "cut"), Sphere((0, 0, 20), 6.0, "b"))
    share = _imaged_share(6.0, -4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        low = bundle(fit, definition, min_fov_fraction=share + 0.02)
    assert low.status == "outside_fov" and "'cut' outside" in low.reason
    assert low.parameters["waypoint_fov_fraction"][0] == pytest.approx(share, abs=0.01)


def test_waypoint_margin_grows_waypoints_by_euclidean_mm_but_not_exclusions():
    fit = _fit()
    # A 0.4 mm ball holds one voxel centre (0.5 mm grid offset: the centre at z = 0.5).
    one = Sphere((0, 0, 10.5), 0.4, "one")
    exclusion = Sphere((0, 0, 20.5), 0.4, "x")
    definition = TractDefinition(
        "T", "test", (), waypoints=(one, Sphere((0, 0, -20), 1.0, "gone")), seeds=(one,),
        exclusions=(exclusion,),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        plain = bundle(fit, definition)
        grown = bundle(fit, definition, waypoint_margin_mm=2.0)
    assert plain.parameters["waypoint_voxels"] == [1, 0]
    # Integer points within 2 of the origin: 1 + 6 + 12 + 8 + 6 = 33.
    assert grown.parameters["waypoint_voxels"] == [33, 0]
    assert grown.parameters["waypoint_margin_mm"] == 2.0
    assert grown.status == "outside_fov"  # the second waypoint is below the image
