"""Tracts on a real human brain (../shared/realdata/dwi_philips), never copied here.

Philips Ingenia Elition X, 112x112x32 at 2 mm, 5 b~0 + 12 directions at b=1000. The slab is
32 x 2 mm and tilted against MNI (about 14 degrees about x after the affine registration of
the mean b0 to the ICBM152 template): it images MNI z of about -6 to +59 mm at the CST
(y -20), 9 to 74 mm at the calcarine cortex (y -82). So the brainstem, the cerebral
peduncles below z -6 mm and the calcarine cortex and Meyer's loop are not imaged.

Ground truth is anatomy and geometry, never the code's own output:

* the field of view: which waypoint lies inside the image follows from the grid and the
  registration (checked against the MNI z range imaged, computed here from the affine);
* the corpus callosum crosses the midline left-right (its fibres at x = 0 run along x);
* the corticospinal tract runs inferior-superior in the corona radiata, lateral to the
  lateral ventricles (found from MD, CSF > 2e-3 mm^2/s, not from the tracts), in its own
  hemisphere;
* a tract whose waypoint is beyond the image has an explicit reason row, never a missing row.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "dwi_philips"
DWI = DATA / "dwi.nii.gz"

pytestmark = pytest.mark.skipif(
    not DWI.exists(),
    reason=f"real DWI not found at {DATA} (the shared real-data folder beside the project); "
    "these tests need it and never download anything",
)

FOUND = ("CST_L", "CST_R", "CC", "CC_genu", "CC_body", "CC_splenium")
OUTSIDE = ("OR_L", "OR_R")


@pytest.fixture(scope="module")
def real():
    from msimaging import registration
    from msimaging.atlases.tracts import tract_definitions
    from msimaging.dti.tensor import fit_tensor
    from msimaging.dti.tracts import bundle, tract_metrics, tract_profiles

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # floored signals: tested in test_dti_realdata
        fit = fit_tensor(DWI)
    img = nib.load(DWI)
    bvals = np.loadtxt(DATA / "dwi.bval")
    b0 = nib.Nifti1Image(
        np.asanyarray(img.dataobj)[..., bvals <= 50].mean(axis=-1).astype(np.float32),
        img.affine,
    )
    to_mni = np.asarray(registration.register_to_mni(b0, resolution_mm=2).matrix)
    definitions = {d.name: d for d in tract_definitions()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundles = {name: bundle(fit, d, to_mni=to_mni) for name, d in definitions.items()}
    metrics = tract_metrics(fit, bundles, participant_id="sub-philips")
    profiles = tract_profiles(fit, bundles, participant_id="sub-philips")
    for name, b in bundles.items():
        print(f"{name:12} {b.n_streamlines:5d} {b.status:12} {b.reason}")
    return {
        "fit": fit, "to_mni": to_mni, "bundles": bundles, "definitions": definitions,
        "metrics": metrics, "profiles": profiles, "warnings": caught,
    }


def _to_mni(points: np.ndarray, to_mni: np.ndarray) -> np.ndarray:
    return points @ to_mni[:3, :3].T + to_mni[:3, 3]


def _imaged_z_range(real, x_mm: float, y_mm: float) -> tuple[float, float]:
    """MNI z imaged on the vertical line (x, y): from the grid and affines only."""
    affine = real["fit"].fa.affine
    mni_to_vox = np.linalg.inv(real["to_mni"] @ affine)
    z = np.arange(-90.0, 110.0, 0.25)
    line = np.column_stack([np.full_like(z, x_mm), np.full_like(z, y_mm), z])
    ijk = line @ mni_to_vox[:3, :3].T + mni_to_vox[:3, 3]
    inside = np.all((ijk >= -0.5) & (ijk < np.array(real["fit"].fa.shape) - 0.5), axis=1)
    return float(z[inside].min()), float(z[inside].max())


def test_field_of_view_excludes_the_peduncles_and_the_calcarine_cortex(real):
    definitions = real["definitions"]
    peduncle = definitions["CST_R"].waypoints[0]
    calcarine = definitions["OR_R"].waypoints[-1]
    low, high = _imaged_z_range(real, *peduncle.center_mm[:2])
    # The slab stops above the peduncle's centre and below the vertex.
    assert peduncle.center_mm[2] < low < peduncle.center_mm[2] + peduncle.radius_mm
    assert 50 < high < 68
    low_calcarine, _ = _imaged_z_range(real, *calcarine.center_mm[:2])
    assert low_calcarine > calcarine.center_mm[2]
    coverage = definitions["OR_R"].coverage(real["fit"].fa.shape, real["fit"].fa.affine,
                                            real["to_mni"])
    print(coverage.to_string())
    assert coverage["fov_fraction"].iloc[-1] < 0.25  # calcarine: mostly below the slab
    assert coverage["imaged_z_min_mm"].iloc[-1] == pytest.approx(low_calcarine, abs=0.5)
    cc = definitions["CC"].coverage(real["fit"].fa.shape, real["fit"].fa.affine, real["to_mni"])
    assert cc["fov_fraction"].iloc[1] == 1.0  # the midsagittal callosum is fully imaged


def test_every_tract_in_the_field_of_view_is_found_after_cleaning(real):
    bundles = real["bundles"]
    counts = {name: bundles[name].n_streamlines for name in FOUND}
    assert all(n >= 50 for n in counts.values()), counts
    assert all(bundles[name].status == "found" for name in FOUND)
    # The CST is cleaned (its recommendation) and its peduncle waypoint is only partly imaged.
    for name in ("CST_L", "CST_R"):
        assert "n_cleaned" in bundles[name].parameters
        assert "cerebral peduncle" in bundles[name].reason
        assert "cut at the image's edge" in bundles[name].reason
    assert all(bundles[name].reason == "" for name in FOUND if name.startswith("CC"))


def test_tracts_outside_the_field_of_view_have_reason_rows(real):
    bundles, metrics, profiles = real["bundles"], real["metrics"], real["profiles"]
    assert set(metrics["tract"]) == set(bundles) == set(profiles["tract"])
    for name in OUTSIDE:
        assert bundles[name].n_streamlines == 0
        assert bundles[name].status == "outside_fov"
        assert "calcarine cortex" in bundles[name].reason
        assert "DWI field of view" in bundles[name].reason
        rows = metrics[metrics["tract"] == name]
        assert (rows["n_streamlines"] == 0).all() and rows["mean"].isna().all()
        assert (rows["status"] == "outside_fov").all()
        assert (rows["reason"] == bundles[name].reason).all()
        assert (profiles[profiles["tract"] == name]["status"] == "outside_fov").all()
        messages = [str(w.message) for w in real["warnings"]]
        assert any(f"tract {name!r}" in m and "field of view" in m for m in messages)
    assert (metrics[metrics["tract"].isin(FOUND)]["status"] == "found").all()


def test_callosal_streamlines_cross_the_midline_left_right(real):
    to_mni = real["to_mni"]
    for name in ("CC", "CC_genu", "CC_body", "CC_splenium"):
        directions = []
        for line in real["bundles"][name].streamlines:
            x = _to_mni(np.asarray(line), to_mni)[:, 0]
            crossing = np.flatnonzero(np.diff(np.sign(x)) != 0)
            assert crossing.size, name  # every streamline joins the hemispheres
            k = int(crossing[0])
            step = np.asarray(line[min(k + 2, len(line) - 1)]) - np.asarray(line[max(k - 1, 0)])
            directions.append(np.abs(step) / np.linalg.norm(step))
        directions = np.asarray(directions)
        share = np.mean(directions[:, 0] > 0.8)  # world x: left-right
        print(f"{name}: {share:.2f} of streamlines run left-right (|dx| > 0.8) at x = 0")
        assert share > 0.8, (name, share)


def test_cst_runs_superior_inferior_lateral_to_the_ventricles(real):
    fit, to_mni = real["fit"], real["to_mni"]
    affine = fit.fa.affine
    md = np.asanyarray(fit.md.dataobj)
    brain = np.asanyarray(fit.mask.dataobj) > 0
    ijk = np.indices(md.shape).reshape(3, -1).T
    mni = _to_mni(ijk @ affine[:3, :3].T + affine[:3, 3], to_mni).reshape(*md.shape, 3)
    # Lateral ventricles at the corona radiata level: CSF (MD > 2e-3 mm^2/s) near the midline.
    level = (mni[..., 2] >= 20) & (mni[..., 2] <= 35)
    ventricle = brain & level & (md > 2e-3) & (np.abs(mni[..., 0]) < 25) & (
        np.abs(mni[..., 1] + 10) < 30)
    assert ventricle.sum() > 20
    for name, sign in (("CST_L", -1), ("CST_R", 1)):
        points, tangents = [], []
        for line in real["bundles"][name].streamlines:
            line = np.asarray(line)
            step = np.gradient(line, axis=0)
            points.append(_to_mni(line, to_mni))
            tangents.append(step / np.linalg.norm(step, axis=1, keepdims=True))
        points, tangents = np.concatenate(points), np.concatenate(tangents)
        corona = (points[:, 2] >= 20) & (points[:, 2] <= 35)
        assert corona.sum() > 100
        # Superior-inferior: world z dominates the direction in the corona radiata.
        vertical = np.mean(np.abs(tangents[corona, 2]) > 0.7)
        # In its own hemisphere and lateral to the ventricles at the same level.
        side = np.mean(np.sign(points[corona, 0]) == sign)
        beyond = np.percentile(np.abs(mni[ventricle][:, 0][
            np.sign(mni[ventricle][:, 0]) == sign]), 90)
        lateral = np.mean(np.abs(points[corona, 0]) > beyond)
        print(f"{name}: vertical {vertical:.2f}, own side {side:.2f}, lateral to the "
              f"ventricle (|x| > {beyond:.1f} mm) {lateral:.2f}")
        assert vertical > 0.7 and side == 1.0 and lateral > 0.9, name
