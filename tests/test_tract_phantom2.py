"""The second tract phantom (issue 17, deliverable 4): its truth, and the tract acceptance on it.

The phantom (:mod:`msimaging.datasets.synthetic.phantom2`) re-draws the CST, OR (with Meyer's
loop) and CC from other landmarks, adds an SLF and callosal fibres that cross the CST, and
simulates crossing voxels with a multi-compartment signal. Its truth is checked against dipy's
multi-tensor simulator and the analytic tensor FA. The acceptance (issue 17) on one subject at
M0 (default preset, package defaults, tensor model): every tract >= 50 streamlines, Dice >= 0.7
with the planted tube, |FA error| <= 0.02, profile r >= 0.95; the same for CSD when
``msimaging.dti.orientations`` is importable (skipped otherwise). Targets that the tract stage does
not meet yet are strict xfails carrying the value measured when they were written, so a fix
shows up as an XPASS; the targets themselves are never loosened.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from msimaging.datasets.synthetic import diffusion, phantom2

TRACTS = ("CC", "CST_L", "CST_R", "OR_L", "OR_R")


# ---- the phantom's geometry and signal --------------------------------------------------------
def test_bundles_cross_where_drawn():
    """CST x SLF x CC in the left corona radiata; the OR's Meyer's loop reaches y = -8 mm."""
    names = list(phantom2.BUNDLES)
    member, direction, _ = phantom2.bundle_membership(np.array([[-30.0, -21.0, 33.0]]))
    inside = {names[b] for b in np.flatnonzero(member[0])}
    assert {"CST_L", "SLF_L"} <= inside
    grid = np.stack(np.meshgrid(np.arange(-40, -15, 2.0), np.arange(-30, -10, 2.0),
                                np.arange(30, 56, 2.0), indexing="ij"), -1).reshape(-1, 3)
    member, direction, _ = phantom2.bundle_membership(grid)
    cst, cc = names.index("CST_L"), names.index("CC")
    both = member[:, cst] & member[:, cc]
    assert both.sum() >= 5
    # Real crossings: the CST runs up, the callosal fibres left-right (angle > 45 degrees).
    cosine = np.abs(np.einsum("nk,nk->n", direction[both, cst], direction[both, cc]))
    assert np.all(cosine < np.cos(np.deg2rad(45)))
    loop = phantom2.BUNDLES["OR_L"].polylines_mm[1]
    assert loop[:, 1].max() >= -9.0 and phantom2.BUNDLES["OR_L"].polylines_mm[0][:, 1].max() < -20


def test_no_bundle_folds_onto_itself():
    """A tube of radius R can only follow a centre line whose radius of curvature is >= R
    everywhere (otherwise its inner fibres would cross). Curvature from each drawn centre
    line's own points (~2 mm steps of a cubic spline): turn angle per unit length. Meyer's
    loop tip was 1.8 mm for a 4 mm tube before it was redrawn as a round turn."""
    for name, bundle in phantom2.BUNDLES.items():
        for line in bundle.polylines_mm:
            step = np.diff(line, axis=0)
            seg = np.linalg.norm(step, axis=1)
            tangent = step / seg[:, None]
            turn = np.arccos(np.clip(np.einsum("ik,ik->i", tangent[1:], tangent[:-1]), -1, 1))
            radius = (seg[1:] + seg[:-1]) / 2 / np.maximum(turn, 1e-12)
            assert radius.min() >= bundle.radius_mm, (name, radius.min())


def test_crossing_signal_is_the_multi_tensor_sum():
    """A voxel in two bundles: dipy's multi_tensor with the two bundle tensors at 50/50."""
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import multi_tensor

    bvals, bvecs = diffusion.gradient_scheme(2, 30)
    point = np.array([[-30.0, -21.0, 33.0]])
    member, direction, position = phantom2.bundle_membership(point)
    sim = phantom2._simulate_visit(
        np.array([3]), np.array([False]), point, np.eye(3), bvals, bvecs, 1.0, None,
        np.random.default_rng(0))
    k = int(sim["count"][0])
    assert k >= 2
    present = np.flatnonzero(member[0])
    params = diffusion.TissueDiffusivities()
    evals = [np.array([params.bundle_wm_ad_mm2_s, *(2 * [params.bundle_wm_rd_mm2_s
                       * params.along_tract_rd_factor(position[0, b])])]) for b in present]
    angles = []
    for b in present:
        x, y, z = direction[0, b]
        angles.append((np.degrees(np.arccos(np.clip(z, -1, 1))), np.degrees(np.arctan2(y, x))))
    expected, _ = multi_tensor(gradient_table(bvals, bvecs=bvecs), np.array(evals),
                               S0=1000.0, angles=angles, fractions=[100.0 / k] * k, snr=None)
    np.testing.assert_allclose(sim["signal"][0], expected, rtol=1e-5)
    # The recorded truth FA of a crossing voxel is its noise-free tensor FA, below the bundle's.
    assert diffusion.tensor_metrics(sim["evals"])["fa"][0] < sim["compartment_fa"][0, present[0]]


def test_single_bundle_voxels_match_the_default_model():
    """Outside crossings a bundle voxel is the default study's single bundle tensor."""
    bvals, bvecs = diffusion.gradient_scheme(2, 30)
    point = np.array([[-38.0, -50.0, 0.0]])  # central optic radiation, sagittal stratum
    sim = phantom2._simulate_visit(
        np.array([3]), np.array([False]), point, np.eye(3), bvals, bvecs, 1.0, None,
        np.random.default_rng(0))
    assert sim["count"][0] == 1
    b = list(phantom2.BUNDLES).index("OR_L")
    fa = diffusion.tensor_metrics(sim["evals"])["fa"][0]
    assert fa == pytest.approx(sim["compartment_fa"][0, b], abs=1e-9)
    # Along-tract RD bump: FA between the bundle-WM extremes 0.70 and 0.80.
    assert 0.69 < fa < 0.81


# ---- acceptance on the phantom ----------------------------------------------------------------
@pytest.fixture(scope="module")
def visit(tmp_path_factory):
    """One default-preset phantom-2 visit (sub-01, M0) after the DTI stage."""
    from msimaging.bids import Study
    from msimaging.dti import dti_session

    root = phantom2.make_phantom2_study(
        tmp_path_factory.mktemp("phantom2") / "study", n_subjects=1, sessions=("M0",))
    truth = json.loads((root / "sourcedata/ground_truth/ground_truth.json").read_text())
    (bids_visit,) = list(Study(root))
    sub, ses = bids_visit.participant_id, bids_visit.session_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dti = dti_session(bids_visit.get("dwi"), bids_visit.get("t1w"),
                          seg=bids_visit.get("dseg"), lesion_mask=bids_visit.get("lesion_mask"),
                          participant_id=sub, session_id=ses)
    return {"dti": dti, "dwi": bids_visit.get("dwi"),
            "tubes": phantom2.tract_mask_truth(root, sub, ses),
            "expected": truth["subjects"][sub]["sessions"][ses]["dwi"]}


def test_drawn_bundles_are_continuous(visit):
    """Every centre-line point of every tracked bundle lies in its planted tube with bundle FA:
    no grey-matter gap of our coarse anatomy cuts a drawn bundle (the anatomy labels grey
    matter at the OR 12 mm from the LGN, at Meyer's loop tip and in the midbrain)."""
    dti = visit["dti"]
    fa = np.asanyarray(dti.fit.fa.dataobj)
    to_dwi = np.linalg.inv(np.asarray(dti.dwi_to_mni))
    to_voxel = np.linalg.inv(dti.fit.fa.affine) @ to_dwi
    for name in TRACTS:
        for line in phantom2.BUNDLES[name].polylines_mm:
            ijk = np.rint(line @ to_voxel[:3, :3].T + to_voxel[:3, 3]).astype(int)
            assert visit["tubes"][name][tuple(ijk.T)].all(), name
            # Noisy tensor FA (SNR 25): bundle voxels ~0.7-0.8, single-tensor crossings lower,
            # grey matter ~0.1.
            assert np.percentile(fa[tuple(ijk.T)], 2) > 0.3, name


def _rows(visit, bundles, metrics, profiles, model):
    rows = {}
    for name in TRACTS:
        tube = visit["tubes"][name]
        mask = np.asanyarray(bundles[name].mask().dataobj) > 0
        whole = metrics[(metrics.tract == name) & (metrics.metric == "fa")
                        & (metrics.part == "whole")].iloc[0]
        profile = profiles[(profiles.tract == name) & (profiles.metric == "fa")]
        profile = profile.sort_values("node")["value"].to_numpy()
        true_profile = np.asarray(visit["expected"]["profiles_fa"][name])
        rows[name] = {
            "n_streamlines": bundles[name].n_streamlines,
            "dice": 2 * (mask & tube).sum() / (mask.sum() + tube.sum()),
            "fa_error": whole["mean"] - visit["expected"]["regions"][name]["fa"],
            "profile_r": (np.corrcoef(profile, true_profile)[0, 1]
                          if profile.size == true_profile.size and np.isfinite(profile).all()
                          else np.nan),
        }
        print(model, name, {k: round(float(v), 4) for k, v in rows[name].items()})
    return rows


@pytest.fixture(scope="module")
def measured(visit):
    from msimaging.dti import tract_session

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stage = tract_session(visit["dti"], tracts=list(TRACTS))
    return _rows(visit, stage.bundles, stage.metrics, stage.profiles, "tensor")


@pytest.fixture(scope="module")
def measured_csd(visit):
    """CSD fit (dipy, response from the data) tracked with each tract's defaults, measured on
    the tensor maps, as the tract stage measures any model."""
    orientations = pytest.importorskip("msimaging.dti.orientations")
    from msimaging.atlases.tracts import tract_definitions
    from msimaging.dti.tracts import bundle, tract_metrics, tract_profiles

    dti = visit["dti"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csd = orientations.fit_csd(visit["dwi"], tensor=dti.fit)
        bundles = {d.name: bundle(csd, d, to_mni=dti.dwi_to_mni, lesion_mask=dti.lesion_mask)
                   for d in tract_definitions(list(TRACTS))}
    metrics = tract_metrics(dti.fit, bundles, lesion_mask=dti.lesion_mask)
    profiles = tract_profiles(dti.fit, bundles)
    return _rows(visit, bundles, metrics, profiles, "csd")


def _case(name, measured_value, met, near=False):
    # A miss within a rounding of the target (near=True) is not strict: another BLAS or CPU
    # can move it across the line, and an XPASS there would fail the suite for no change.
    marks = () if met else pytest.mark.xfail(
        strict=not near, reason=f"measured {measured_value} on sub-01 M0 (package defaults)")
    return pytest.param(name, marks=marks, id=name)


# Values measured on sub-01 ses-M0 (seed 0) after the phantom fixes of 2026-12-04: bundles carve
# their white matter (one-voxel grey-matter gaps cut the OR, CST and callosal fibres) and
# Meyer's loop turns with a radius of curvature >= its tube radius (it folded onto itself);
# tract stage with terminations trimming and core-distance recovery (CST/OR).
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [
    _case("CC", 497, True), _case("CST_L", 86, True), _case("CST_R", 84, True),
    _case("OR_L", 103, True), _case("OR_R", 92, True),
])
def test_tract_found_with_at_least_50_streamlines(measured, name):
    assert measured[name]["n_streamlines"] >= 50


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [
    _case("CC", 0.851, True), _case("CST_L", 0.711, True), _case("CST_R", 0.706, True),
    _case("OR_L", 0.811, True), _case("OR_R", 0.801, True),
])
def test_dice_with_planted_tube_at_least_07(measured, name):
    assert measured[name]["dice"] >= 0.7


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [
    _case("CC", -0.0065, True), _case("CST_L", -0.0140, True), _case("CST_R", -0.0065, True),
    _case("OR_L", -0.0145, True), _case("OR_R", -0.0099, True),
])
def test_tract_fa_within_002_of_truth(measured, name):
    assert abs(measured[name]["fa_error"]) <= 0.02


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [
    _case("CC", 0.998, True), _case("CST_L", 0.918, False), _case("CST_R", 0.848, False),
    _case("OR_L", 0.987, True), _case("OR_R", 0.906, False),
])
def test_profile_correlates_at_least_095(measured, name):
    assert measured[name]["profile_r"] >= 0.95


# CSD (fit_csd, tracked by bundle() with each tract's defaults): values measured on the same
# visit (2026-12-04, after the phantom fixes: no grey-matter gaps, Meyer's loop redrawn with a
# round tip). The profile misses are in partial crossings (CST x SLF x CC: the AFQ profile is
# core-weighted, the truth a cross-section mean) and, for OR_R, the longer Meyer's-loop
# streamlines shifting the nodes against the central line.
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [
    _case("CC", 500, True), _case("CST_L", 182, True), _case("CST_R", 173, True),
    _case("OR_L", 118, True), _case("OR_R", 86, True),
])
def test_csd_tract_found_with_at_least_50_streamlines(measured_csd, name):
    assert measured_csd[name]["n_streamlines"] >= 50


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [
    _case("CC", 0.877, True), _case("CST_L", 0.905, True), _case("CST_R", 0.896, True),
    _case("OR_L", 0.844, True), _case("OR_R", 0.794, True),
])
def test_csd_dice_with_planted_tube_at_least_07(measured_csd, name):
    assert measured_csd[name]["dice"] >= 0.7


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [
    _case("CC", -0.0058, True), _case("CST_L", -0.0069, True), _case("CST_R", -0.0138, True),
    _case("OR_L", -0.0145, True), _case("OR_R", -0.0047, True),
])
def test_csd_tract_fa_within_002_of_truth(measured_csd, name):
    assert abs(measured_csd[name]["fa_error"]) <= 0.02


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [
    _case("CC", 0.997, True), _case("CST_L", 0.931, False), _case("CST_R", 0.898, False),
    _case("OR_L", 0.988, True), _case("OR_R", 0.890, False),
])
def test_csd_profile_correlates_at_least_095(measured_csd, name):
    assert measured_csd[name]["profile_r"] >= 0.95
