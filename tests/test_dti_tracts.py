"""Tractography, tract tables and profiles on a synthetic tube phantom with known truth.

The phantom: a 40x40x40 grid at 2 mm (world -40..38 mm) with isotropic background
(0.8e-3 mm²/s) and a 6 mm-radius tube of single-fibre tensors along a gentle arc in the
x-y plane, from y = -32 mm to y = +32 mm. Its axial diffusivity is constant and its radial
diffusivity rises towards the middle, so the true FA falls from about 0.77 at the ends to
about 0.5 in the middle. Signals are simulated at SNR 30 and fitted with ``fit_tensor``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from msimaging.datasets.synthetic.diffusion import gradient_scheme, simulate_signal
from msimaging.dti.tensor import fit_tensor
from msimaging.dti.tracts import (
    TractBundle,
    bundle,
    clean_bundle,
    plot_profiles,
    plot_tract_overlay,
    select,
    track,
    tract_metrics,
    tract_profiles,
    tracts_from_atlas,
)
from msimaging.errors import InputError, MSImagingWarning

N = 40
VOXEL_MM = 2.0
AFFINE = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
AFFINE[:3, 3] = -40.0
RADIUS_MM = 6.0
AD = 1.7e-3
ISO = 0.8e-3
ROLES = ("seeds", "waypoints", "exclusions", "endpoints")


def centreline(t: np.ndarray) -> np.ndarray:
    """World mm of the tube axis at t in [0, 1] (start at y = -32 mm)."""
    t = np.asarray(t, float)
    return np.stack([6.0 * np.sin(np.pi * t), -32.0 + 64.0 * t, np.zeros_like(t)], axis=-1)


def true_rd(t: np.ndarray) -> np.ndarray:
    return 0.3e-3 + 0.35e-3 * np.sin(np.pi * np.asarray(t))


def true_fa(t: np.ndarray) -> np.ndarray:
    rd = true_rd(t)
    md = (AD + 2 * rd) / 3
    return np.sqrt(1.5 * ((AD - md) ** 2 + 2 * (rd - md) ** 2) / (AD**2 + 2 * rd**2))


@dataclass(frozen=True)
class Phantom:
    fit: object
    tube: np.ndarray
    t_of_voxel: np.ndarray


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom()


def make_phantom() -> Phantom:
    t = np.linspace(0.0, 1.0, 2001)
    line = centreline(t)
    tangent = np.gradient(line, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    ijk = np.indices((N, N, N)).reshape(3, -1).T
    world = ijk * VOXEL_MM + AFFINE[:3, 3]
    distance, nearest = cKDTree(line).query(world)
    tube = (distance <= RADIUS_MM) & (nearest > 0) & (nearest < t.size - 1)
    evals = np.full((ijk.shape[0], 3), ISO)
    evecs = np.tile(np.eye(3), (ijk.shape[0], 1, 1))
    tt = t[nearest[tube]]
    evals[tube] = np.stack([np.full(tt.shape, AD), true_rd(tt), true_rd(tt)], axis=1)
    e1 = tangent[nearest[tube]]
    e2 = np.cross(e1, [0.0, 0.0, 1.0])
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    evecs[tube] = np.stack([e1, e2, np.cross(e1, e2)], axis=2)
    bvals, bvecs = gradient_scheme(n_b0=2, n_directions=30)
    s0 = np.full(ijk.shape[0], 1000.0)
    signal = simulate_signal(evals, evecs, bvals, bvecs, s0, snr=30.0, rng=0)
    dwi = nib.Nifti1Image(signal.reshape(N, N, N, -1), AFFINE)
    brain = np.zeros((N, N, N), np.uint8)
    brain[1:-1, 1:-1, 1:-1] = 1
    # The signal was simulated with gradients along the image axes: the voxel frame, not
    # FSL's (which negates x on this det > 0 grid).
    fit = fit_tensor(dwi, bvals, bvecs, nib.Nifti1Image(brain, AFFINE), bvec_convention="voxel")
    return Phantom(fit, tube.reshape(N, N, N), t[nearest].reshape(N, N, N))


def box(lo_mm, hi_mm):
    """A region: voxels whose centre lies in the world-mm box [lo, hi]."""

    def rasterise(shape, affine):
        ijk = np.indices(shape).reshape(3, -1).T
        world = ijk @ affine[:3, :3].T + affine[:3, 3]
        inside = np.all((world >= lo_mm) & (world <= hi_mm), axis=1)
        return inside.reshape(shape)

    return rasterise


@dataclass(frozen=True)
class StandInTract:
    """Same interface as msimaging.atlases.tracts.TractDefinition, for these tests."""

    name: str
    seeds: tuple = ()
    waypoints: tuple = ()
    exclusions: tuple = ()
    endpoints: tuple = ()

    def masks(self, shape, affine, to_mni=None):
        return {role: [region(shape, affine) for region in getattr(self, role)] for role in ROLES}


SEED = box((-12, -30, -12), (12, -26, 12))
FIRST = box((-40, -24, -40), (40, -22, 40))
LAST = box((-40, 22, -40), (40, 24, 40))
TUBE = StandInTract("tube", seeds=(SEED,), waypoints=(FIRST, LAST))


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def tube_bundle(phantom) -> TractBundle:
    return bundle(phantom.fit, TUBE)


# --------------------------------------------------------------------------------------------
# Tracking and selection
# --------------------------------------------------------------------------------------------
def test_deterministic_tracking_recovers_the_tube(phantom, tube_bundle):
    assert tube_bundle.n_streamlines == len(tube_bundle.streamlines) > 50
    mask = np.asanyarray(tube_bundle.mask().dataobj)
    assert mask.dtype == np.uint8
    score = dice(mask, phantom.tube)
    print(f"deterministic Dice = {score:.3f}")
    assert score >= 0.7
    density = np.asanyarray(tube_bundle.density().dataobj)
    assert density.dtype == np.int32 and density.max() <= tube_bundle.n_streamlines
    assert tube_bundle.parameters["method"] == "deterministic"
    assert tube_bundle.to_frame().loc[0, "n_streamlines"] == tube_bundle.n_streamlines
    # A streamline count works too; an invalid threshold is refused.
    assert dice(tube_bundle.mask(2).dataobj, phantom.tube) >= 0.7
    with pytest.raises(InputError, match="fraction"):
        tube_bundle.mask(1.5)


def test_white_matter_seeding_covers_the_tube(phantom, tube_bundle):
    # AFQ-style seeding of the white matter around the waypoints: more streamlines, and the
    # tube is still recovered (Dice against the planted tube, not against the ROI run).
    wm = bundle(phantom.fit, TUBE, seeding="wm", seeds_per_voxel=1)
    assert wm.parameters["seeding"] == "wm"
    assert wm.parameters["n_seed_voxels"] > tube_bundle.parameters["n_seed_voxels"]
    assert wm.n_streamlines > tube_bundle.n_streamlines
    assert dice(wm.mask().dataobj, phantom.tube) >= 0.7
    with pytest.raises(InputError, match="seeding"):
        bundle(phantom.fit, TUBE, seeding="everywhere")


def test_streamlines_run_from_first_to_last_waypoint(tube_bundle):
    first_y = np.array([s[0, 1] for s in tube_bundle.streamlines])
    last_y = np.array([s[-1, 1] for s in tube_bundle.streamlines])
    assert np.all(first_y < -22) and np.all(last_y > 22)
    # Cut strictly between the waypoints: from the last point in the first slab (y in
    # [-24, -22] mm) to the first point in the last slab ([22, 24] mm); a point is in a slab
    # when its nearest voxel centre is (2 mm voxels: up to 1 mm beyond the slab face).
    clipped = tube_bundle.between_waypoints()
    assert len(clipped) == tube_bundle.n_streamlines
    assert all(-23 <= s[0, 1] <= -21 and 21 <= s[-1, 1] <= 23 for s in clipped)
    # select() flips reversed input back; a definition with the waypoints swapped flips all.
    reversed_lines = [np.asarray(s)[::-1] for s in tube_bundle.streamlines]
    masks = TUBE.masks((N, N, N), AFFINE)
    again = select(reversed_lines, masks, AFFINE)
    assert len(again) == tube_bundle.n_streamlines
    assert all(np.allclose(a, b) for a, b in zip(again, tube_bundle.streamlines, strict=True))
    swapped = {**masks, "waypoints": masks["waypoints"][::-1]}
    assert all(s[0, 1] > s[-1, 1] for s in select(tube_bundle.streamlines, swapped, AFFINE))


def test_track_returns_world_mm_streamlines_in_length_range(phantom):
    seeds = SEED((N, N, N), AFFINE)
    lines = track(phantom.fit, seeds, min_length_mm=40.0, max_length_mm=100.0)
    lengths = np.array([np.linalg.norm(np.diff(s, axis=0), axis=1).sum() for s in lines])
    assert len(lines) > 50 and lengths.min() >= 40.0 and lengths.max() <= 100.0
    points = np.concatenate(list(lines))
    assert points[:, 1].min() < -28 and points[:, 1].max() > 28  # world mm, whole tube
    # Same seed, same streamlines.
    again = track(phantom.fit, seeds, min_length_mm=40.0, max_length_mm=100.0)
    assert all(np.array_equal(a, b) for a, b in zip(lines, again, strict=True))


@pytest.mark.parametrize(
    ("definition", "cause"),
    [
        (
            StandInTract(
                "wrong_waypoint",
                seeds=(SEED,),
                waypoints=(FIRST, box((20, -2, -40), (38, 2, 40))),
            ),
            "reaching each waypoint in order: [0-9]+, 0",
        ),
        (
            StandInTract(
                "excluded",
                seeds=(SEED,),
                waypoints=(FIRST, LAST),
                exclusions=(box((-40, -1, -40), (40, 1, 40)),),
            ),
            "touching each exclusion",
        ),
        (StandInTract("no_seed", seeds=(box((100, 100, 100), (101, 101, 101)),)), "seed"),
    ],
)
def test_unmet_definition_warns_and_gives_empty_rows(phantom, definition, cause):
    with pytest.warns(MSImagingWarning, match=f"tract '{definition.name}'.*{cause}"):
        empty = bundle(phantom.fit, definition)
    assert empty.n_streamlines == 0 and len(empty.streamlines) == 0
    assert not np.asanyarray(empty.mask().dataobj).any()
    table = tract_metrics(phantom.fit, empty)
    assert set(table["part"]) == {"whole"}
    assert (table["n_streamlines"] == 0).all() and (table["n_voxels"] == 0).all()
    assert table["mean"].isna().all()
    profile = tract_profiles(phantom.fit, empty, n_nodes=10)
    assert len(profile) == 40 and profile["value"].isna().all()
    assert (profile["n_streamlines"] == 0).all()


def test_probabilistic_tracking_recovers_the_tube(phantom):
    # Probabilistic tracking disperses: seed more densely, as one would in practice.
    prob = bundle(phantom.fit, TUBE, method="probabilistic", seeds_per_voxel=5)
    score = dice(prob.mask().dataobj, phantom.tube)
    print(f"probabilistic Dice = {score:.3f} ({prob.n_streamlines} streamlines)")
    assert prob.n_streamlines > 20
    assert score >= 0.7
    # A probabilistic streamline may turn back beyond a waypoint; between them it is oriented.
    assert all(s[0, 1] < s[-1, 1] for s in prob.between_waypoints())


def test_lesion_mask_lets_tracking_cross_a_low_fa_lesion(phantom):
    # Knock FA down in a slab across the tube: tracking stops there unless told it is a lesion.
    fa = np.asanyarray(phantom.fit.fa.dataobj).copy()
    slab = box((-40, -2, -40), (40, 2, 40))((N, N, N), AFFINE)
    fa[slab] = 0.05

    class LowFA:
        pass

    fit = LowFA()
    for name in ("v1", "mask", "ad", "rd"):
        setattr(fit, name, getattr(phantom.fit, name))
    fit.fa = nib.Nifti1Image(fa, AFFINE)
    with pytest.warns(MSImagingWarning, match="tract 'tube'"):
        assert bundle(fit, TUBE).n_streamlines == 0
    crossed = bundle(fit, TUBE, lesion_mask=slab.astype(np.uint8))
    assert crossed.n_streamlines > 50


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def test_tract_metrics_split_matches_hand_counts(phantom, tube_bundle):
    lesion = box((-40, -6, -40), (40, 6, 40))((N, N, N), AFFINE)
    table = tract_metrics(
        phantom.fit, tube_bundle, lesion_mask=nib.Nifti1Image(lesion.astype(np.uint8), AFFINE),
        participant_id="sub-01", session_id="ses-M0",
    )
    assert list(table.columns) == [
        "participant_id", "session_id", "tract", "part", "metric", "mean", "weighted_mean",
        "median", "sd", "n_voxels", "volume_mm3", "n_streamlines", "unit", "source", "status",
        "reason",
    ]
    assert len(table) == 3 * 4
    mask = np.asanyarray(tube_bundle.mask().dataobj).astype(bool)
    fa = np.asanyarray(phantom.fit.fa.dataobj).astype(np.float64)
    for part, region in [
        ("whole", mask), ("lesioned", mask & lesion), ("normal_appearing", mask & ~lesion)
    ]:
        row = table[(table["part"] == part) & (table["metric"] == "fa")].iloc[0]
        assert row["n_voxels"] == region.sum() > 0
        assert row["volume_mm3"] == pytest.approx(region.sum() * 8.0)
        assert row["mean"] == pytest.approx(fa[region].mean())
        # Track-density weighting: each voxel counts as often as streamlines cross it.
        density = np.asanyarray(tube_bundle.density().dataobj)[region].astype(np.float64)
        assert row["weighted_mean"] == pytest.approx(density @ fa[region] / density.sum())
        assert row["median"] == pytest.approx(np.median(fa[region]))
        assert row["n_streamlines"] == tube_bundle.n_streamlines
    whole = table[table["part"] == "whole"].set_index("metric")["n_voxels"]
    parts = table[table["part"] != "whole"].groupby("metric")["n_voxels"].sum()
    assert whole.sort_index().equals(parts.sort_index())
    assert set(table["unit"]) == {"unitless", "mm^2/s"}
    assert (table["source"] == "tractography").all()
    assert (table["participant_id"] == "sub-01").all()
    # The lesion-centred part has the lower FA of the tube's middle.
    fa_rows = table[table["metric"] == "fa"].set_index("part")["mean"]
    assert fa_rows["lesioned"] < fa_rows["normal_appearing"]


def test_fa_profile_follows_the_true_fa_along_the_tube(phantom, tube_bundle):
    from dipy.tracking.streamline import set_number_of_points

    profile = tract_profiles(
        phantom.fit, {"tube": tube_bundle}, participant_id="sub-01", session_id="ses-M0"
    )
    assert list(profile.columns) == [
        "participant_id", "session_id", "tract", "node", "metric", "value", "unit",
        "n_streamlines", "status", "reason",
    ]
    fa = profile[profile["metric"] == "fa"].sort_values("node")
    assert fa["node"].tolist() == list(range(100))
    clipped = tube_bundle.between_waypoints()
    core = np.mean(np.stack(list(set_number_of_points(clipped, 100))), axis=0)
    t = np.linspace(0, 1, 2001)
    _, nearest = cKDTree(centreline(t)).query(core)
    truth = true_fa(t[nearest])
    r = np.corrcoef(fa["value"], truth)[0, 1]
    print(f"FA profile correlation with truth r = {r:.3f}")
    assert r >= 0.9
    # Node 0 is at the first waypoint (start of the tube).
    assert core[0, 1] < core[-1, 1]


def test_profile_interpolates_only_from_the_tracked_white_matter(phantom, tube_bundle):
    # Analytic map: 1 in every voxel the tracker could follow, 0 elsewhere. Interpolating
    # within the tracked region must give exactly 1 at every node; plain trilinear
    # interpolation (dipy's afq_profile) dips below 1 wherever streamlines run next to the
    # tube's edge, and the FA profile is pulled towards the background there.
    region = tube_bundle.tracked_region
    assert region is not None and region.any()
    ones = {"x": nib.Nifti1Image(region.astype(np.float32), AFFINE)}
    masked = tract_profiles(ones, tube_bundle)["value"].to_numpy()
    plain = tract_profiles(ones, tube_bundle, within_tracked=False)["value"].to_numpy()
    np.testing.assert_allclose(masked, 1.0, atol=1e-9)
    assert plain.min() < 0.99
    # Against the true FA along the tube: the masked profile is closer at every quantile.
    from dipy.tracking.streamline import set_number_of_points

    core = np.mean(np.stack(list(set_number_of_points(tube_bundle.between_waypoints(), 100))),
                   axis=0)
    t = np.linspace(0, 1, 2001)
    truth = true_fa(t[cKDTree(centreline(t)).query(core)[1]])
    errors = {}
    for flag in (True, False):
        table = tract_profiles(phantom.fit, tube_bundle, within_tracked=flag)
        fa = table[table["metric"] == "fa"].sort_values("node")["value"].to_numpy()
        errors[flag] = np.abs(fa - truth)
    print(f"profile |FA error| mean: within tracked {errors[True].mean():.4f}, "
          f"plain {errors[False].mean():.4f}")
    assert errors[True].mean() < errors[False].mean()


def _with_outliers(tract: TractBundle) -> tuple[TractBundle, int]:
    """The tube bundle plus 6 planted outliers: 3 copies shifted 14 mm off the tube, 3 copies
    with a 20 mm detour in the middle (same ends, so only the distance test catches them)."""
    from dipy.tracking.streamline import Streamlines

    lines = [np.asarray(s) for s in tract.streamlines]
    planted = []
    for k in range(3):
        planted.append(lines[k] + np.array([0.0, 0.0, 14.0 + k]))
        bent = lines[k + 3].copy()
        u = np.linspace(0.0, 1.0, len(bent))
        bent[:, 2] += 20.0 * np.sin(np.pi * u) ** 4
        planted.append(bent)
    span = None
    if tract.waypoint_span is not None:
        span = np.concatenate([tract.waypoint_span, tract.waypoint_span[:6]])
    from dataclasses import replace

    out = replace(tract, streamlines=Streamlines(lines + planted),
                  n_streamlines=len(lines) + len(planted), waypoint_span=span)
    return out, len(lines)


def test_clean_bundle_removes_planted_outliers(tube_bundle):
    dirty, n_real = _with_outliers(tube_bundle)
    cleaned = clean_bundle(dirty)
    kept = {tuple(np.round(np.asarray(s)[len(s) // 2], 6)) for s in cleaned.streamlines}
    planted = [np.asarray(dirty.streamlines[i]) for i in range(n_real, dirty.n_streamlines)]
    # Ground truth: every planted outlier is gone, and most real streamlines stay.
    assert not any(tuple(np.round(p[len(p) // 2], 6)) in kept for p in planted)
    assert cleaned.n_streamlines >= 0.9 * n_real
    assert cleaned.parameters["n_cleaned"] == dirty.n_streamlines - cleaned.n_streamlines
    assert len(cleaned.waypoint_span) == cleaned.n_streamlines
    # Spans stay attached to their streamlines: the kept stretch still runs between waypoints.
    assert len(cleaned.between_waypoints()) == cleaned.n_streamlines
    # A bundle below min_streamlines is left alone; invalid settings are named.
    few = clean_bundle(dirty, min_streamlines=dirty.n_streamlines + 1)
    assert few.n_streamlines == dirty.n_streamlines and few.parameters["n_cleaned"] == 0
    with pytest.raises(InputError, match="distance_threshold"):
        clean_bundle(dirty, distance_threshold=-1)


def test_definition_tracking_recommendations_and_overrides(phantom):
    @dataclass(frozen=True)
    class Recommending(StandInTract):
        tracking: dict = None

    compact = Recommending("tube", seeds=(SEED,), waypoints=(FIRST, LAST),
                           tracking={"seeding": "wm", "seeds_per_voxel": 1,
                                     "max_angle_deg": 30.0, "clean": True})
    recommended = bundle(phantom.fit, compact)
    params = recommended.parameters
    assert (params["seeding"], params["seeds_per_voxel"], params["max_angle_deg"],
            params["clean"]) == ("wm", 1, 30.0, True)
    assert "n_cleaned" in params and params["n_selected"] >= recommended.n_streamlines
    assert dice(recommended.mask().dataobj, phantom.tube) >= 0.7
    # An explicit argument beats the recommendation; a definition without one gets defaults.
    explicit = bundle(phantom.fit, compact, seeding="rois", clean=False)
    assert explicit.parameters["seeding"] == "rois" and "n_cleaned" not in explicit.parameters
    plain = bundle(phantom.fit, TUBE)
    assert (plain.parameters["seeding"], plain.parameters["max_angle_deg"]) == ("rois", 45.0)
    with pytest.raises(InputError, match="clean"):
        bundle(phantom.fit, TUBE, clean="yes")


def test_tracts_from_atlas_counts_label_voxels(phantom):
    labels_img = np.zeros((N, N, N), np.int16)
    labels_img[phantom.tube] = 1
    labels_img[2:6, 2:6, 2:6] = 2
    atlas = nib.Nifti1Image(labels_img, AFFINE)
    lesion = np.zeros((N, N, N), bool)
    lesion[:, 18:22] = True
    table = tracts_from_atlas(
        phantom.fit, atlas, {1: "tube", 2: "corner"}, lesion_mask=lesion, session_id="ses-M0"
    )
    whole = table[(table["part"] == "whole") & (table["metric"] == "fa")].set_index("tract")
    assert whole.loc["tube", "n_voxels"] == phantom.tube.sum()
    assert whole.loc["corner", "n_voxels"] == 64
    lesioned = table[(table["part"] == "lesioned") & (table["metric"] == "md")]
    assert lesioned.set_index("tract").loc["tube", "n_voxels"] == (phantom.tube & lesion).sum()
    assert (table["source"] == "atlas").all() and (table["n_streamlines"] == 0).all()

    # The same tracts as a 4-D probability atlas in "MNI", brought over by a transform.
    class Identity:
        def __init__(self):
            self.calls = []

        def apply(self, img, *, interpolation="linear"):
            self.calls.append(interpolation)
            return img

    prob = np.stack([(labels_img == 1) * 0.9, (labels_img == 2) * 0.4], axis=-1)
    identity = Identity()
    table4 = tracts_from_atlas(
        phantom.fit, nib.Nifti1Image(prob.astype(np.float32), AFFINE), ["tube", "corner"],
        to_subject=identity, threshold=0.3,
    )
    assert identity.calls == ["linear"]
    counts = table4[table4["metric"] == "fa"].set_index("tract")["n_voxels"]
    assert counts["tube"] == phantom.tube.sum() and counts["corner"] == 64
    with pytest.warns(MSImagingWarning, match="'missing' has no voxel"):
        missing = tracts_from_atlas(phantom.fit, atlas, {7: "missing"})
    assert missing["mean"].isna().all() and (missing["n_voxels"] == 0).all()
    with pytest.raises(InputError, match="2 tract names"):
        tracts_from_atlas(phantom.fit, nib.Nifti1Image(prob, AFFINE), ["tube"])


# --------------------------------------------------------------------------------------------
# Files and figures
# --------------------------------------------------------------------------------------------
def test_trk_round_trip_keeps_streamlines(tube_bundle, tmp_path):
    from dipy.io.streamline import load_tractogram

    path = tube_bundle.save(tmp_path / "sub-01_tract-tube.trk")
    assert path.is_file() and not list(tmp_path.glob(".*tmp*"))
    loaded = load_tractogram(str(path), "same")
    loaded.to_rasmm()
    assert len(loaded.streamlines) == tube_bundle.n_streamlines
    for a, b in zip(loaded.streamlines, tube_bundle.streamlines, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)
    np.testing.assert_allclose(loaded.affine, AFFINE)
    with pytest.raises(InputError, match=r"\.trk"):
        tube_bundle.save(tmp_path / "tube.tck")


def test_figures_render_to_png(phantom, tube_bundle, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    overlay = tmp_path / "overlay.png"
    lesion = nib.Nifti1Image(
        box((-40, -6, -40), (40, 6, 40))((N, N, N), AFFINE).astype(np.uint8), AFFINE
    )
    fig = plot_tract_overlay(phantom.fit.fa, {"tube": tube_bundle, "lesion": lesion}, overlay)
    assert len(fig.axes) == 3
    # Each view is one RGB image: grey FA, tract voxels blended with their colour (alpha 0.6).
    masks = [np.asarray(tube_bundle.mask().dataobj) > 0, np.asarray(lesion.dataobj) > 0]
    fa = np.clip(np.asarray(phantom.fit.fa.dataobj, float), 0, 1)
    for axis, ax in enumerate(fig.axes[:3]):
        (image,) = ax.get_images()
        rgb = np.asarray(image.get_array())
        index = [slice(None)] * 3
        index[axis] = int(ax.get_title().split("voxel ")[1].rstrip(")"))
        inside = masks[0][tuple(index)].T | masks[1][tuple(index)].T
        assert inside.any()
        coloured = ~(np.isclose(rgb[..., 0], rgb[..., 1]) & np.isclose(rgb[..., 1], rgb[..., 2]))
        assert not coloured[~inside].any()  # grey outside the tracts
        np.testing.assert_allclose(rgb[~inside][:, 0], fa[tuple(index)].T[~inside])
        assert coloured[inside].mean() > 0.9  # tab10 colours are not grey
    assert overlay.is_file() and overlay.stat().st_size > 10_000
    visits = pd.concat(
        [
            tract_profiles(phantom.fit, tube_bundle, participant_id="sub-01", session_id=s)
            for s in ("ses-M0", "ses-M6")
        ]
    )
    profiles_png = tmp_path / "profiles.png"
    fig = plot_profiles(visits, "fa", profiles_png)
    assert len(fig.axes[0].get_lines()) == 2
    assert profiles_png.is_file() and profiles_png.stat().st_size > 10_000
    with pytest.raises(InputError, match="not in profile_table"):
        plot_profiles(visits, "qa")


def test_invalid_arguments_are_named(phantom, tube_bundle):
    seeds = SEED((N, N, N), AFFINE)
    with pytest.raises(InputError, match="method='tensor'"):
        track(phantom.fit, seeds, method="tensor")
    with pytest.raises(InputError, match="seeds_mask has shape"):
        track(phantom.fit, seeds[:-1])
    with pytest.raises(InputError, match="seeds_mask is empty"):
        track(phantom.fit, np.zeros_like(seeds))
    with pytest.raises(InputError, match="max_length_mm"):
        track(phantom.fit, seeds, min_length_mm=50.0, max_length_mm=40.0)
    with pytest.raises(InputError, match="masks"):
        bundle(phantom.fit, object())
    with pytest.raises(InputError, match="unique"):
        tract_metrics(phantom.fit, [tube_bundle, tube_bundle])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(tract_metrics(phantom.fit.maps, {"a": tube_bundle, "b": tube_bundle})) == 8


def test_vectorised_seeding_and_weights_equal_dipy():
    """The speed replacements give dipy's exact seeds and AFQ weights (reference: dipy)."""
    from dipy.stats.analysis import gaussian_weights
    from dipy.tracking.streamline import Streamlines
    from dipy.tracking.utils import random_seeds_from_mask

    from msimaging.dti.tracts import _gaussian_weights, _random_seeds_from_mask

    rng = np.random.default_rng(0)
    mask = rng.random((12, 10, 9)) < 0.2
    affine = np.diag([2.0, 2.5, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    for seed in (0, 7):
        expected = random_seeds_from_mask(mask, affine, seeds_count=3,
                                          seed_count_per_voxel=True, random_seed=seed)
        np.testing.assert_array_equal(_random_seeds_from_mask(mask, affine, 3, seed), expected)
    lines = Streamlines([np.cumsum(rng.normal(size=(int(rng.integers(20, 40)), 3)), axis=0)
                         + rng.normal(size=3) for _ in range(50)])
    np.testing.assert_allclose(_gaussian_weights(lines, 100),
                               gaussian_weights(lines, n_points=100), atol=1e-12)


def test_overlay_slices_show_the_most_tracts():
    from msimaging.dti.tracts import _busiest_slices

    shape = (20, 20, 20)
    a, b, c = (np.zeros(shape, bool) for _ in range(3))
    a[2:18, 4, 6] = True  # long, thin: many voxels in slice z = 6 only
    b[10, 15, 7:10] = True  # crosses z = 7..9
    c[5, 10, 9] = True  # a single voxel at z = 9
    centre = _busiest_slices([a, b, c], shape)
    assert centre[2] == 9  # b and c meet at z = 9 (a alone has more voxels at z = 6)
    assert centre[0] == 10 and centre[1] == 4  # x = 10: a and b; y = 4: only a, but most voxels
    assert list(_busiest_slices([np.zeros(shape, bool)], shape)) == [10, 10, 10]


def test_trimming_cuts_the_overshoot_beyond_the_terminations(phantom):
    """With endpoint ROIs equal to the first and last waypoints, each streamline starts at its
    first point in the first and ends at its last point in the last (the tube runs on 8 mm
    beyond each); the stretch between the waypoints (the profiles') is untouched."""
    ended = StandInTract("tube", seeds=(SEED,), waypoints=(FIRST, LAST),
                         endpoints=(FIRST, LAST))
    whole = bundle(phantom.fit, ended, trim_at_terminations=False)
    cut = bundle(phantom.fit, ended)
    assert cut.n_streamlines == whole.n_streamlines > 20
    y_first = np.array([s[0, 1] for s in cut.streamlines])
    y_last = np.array([s[-1, 1] for s in cut.streamlines])
    # Nearest voxel centre in the box (2 mm voxels, centres at even mm): y within [-25, -21]
    # and [21, 25].
    assert np.all((y_first >= -25) & (y_first <= -21)), y_first
    assert np.all((y_last >= 21) & (y_last <= 25)), y_last
    assert max(s[-1, 1] for s in whole.streamlines) > 26  # the untrimmed overshoot
    for a, b in zip(cut.between_waypoints(), whole.between_waypoints(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_core_distance_takes_back_rim_streamlines_that_miss_one_waypoint():
    """Hand-made bundle on a 1 mm grid: 20 straight streamlines along y within 0.8 mm of the
    axis pass three waypoints. Candidates: (a) parallel, 0.5 mm off the axis, stopping 2 mm
    before the last waypoint and stored reversed -> taken back, oriented along the bundle;
    (b) the same but only half as long (a fragment) -> refused; (c) leaving the bundle
    sideways to x = 12 mm before the last waypoint -> refused."""
    from dipy.tracking.streamline import Streamlines

    from msimaging.dti.tracts import _near_core, _selection

    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-10.0, -40.0, -10.0)
    shape = (21, 81, 21)

    def slab(y_lo, y_hi):
        return box((-2, y_lo, -2), (2, y_hi, 2))(shape, affine)

    masks = {"waypoints": [slab(-24, -22), slab(-1, 1), slab(22, 24)], "exclusions": [],
             "endpoints": []}
    rng = np.random.default_rng(0)
    y = np.arange(-30.0, 30.5, 0.5)
    offsets = rng.uniform(-0.55, 0.55, (20, 2))
    bundle_lines = [np.stack([np.full(y.shape, dx), y, np.full(y.shape, dz)], 1)
                    for dx, dz in offsets]
    short_y = np.arange(-30.0, 20.5, 0.5)
    near = np.stack([np.full(short_y.shape, 0.5), short_y, np.zeros(short_y.shape)], 1)[::-1]
    fragment = near[: near.shape[0] // 2]
    veer = np.stack([np.where(y > 10, 0.5 + (y - 10) * 0.6, 0.5), y, np.zeros(y.shape)], 1)
    veer = veer[veer[:, 0] <= 12.0]
    tracked = [*bundle_lines, near, fragment, veer]
    keep, flip, span, _ = _selection(tracked, masks, affine)
    np.testing.assert_array_equal(keep, np.arange(20))
    kept = Streamlines([tracked[i][::-1] if flip[i] else tracked[i] for i in keep])
    extra, extra_span = _near_core(tracked, keep, kept, span[keep], masks, affine)
    assert len(extra) == 1
    np.testing.assert_allclose(extra[0], near[::-1])  # oriented like the bundle (y rising)
    start, stop = extra_span[0]
    # The core's stretch between the first and last waypoints: y from -22/-23 to 20 (its end).
    assert -24 <= extra[0][start, 1] <= -21 and extra[0][stop, 1] == 20.0


def test_near_core_streamlines_count_in_the_mask_not_in_the_profile(tube_bundle):
    """Streamlines marked near_core (added by core_distance: they miss a waypoint) are part of
    the density and mask but have no waypoint-to-waypoint stretch: between_waypoints (the
    profiles) leaves them out."""
    from dataclasses import replace

    from dipy.tracking.streamline import Streamlines

    shifted = Streamlines([s + np.array([0.0, 0.0, 8.0]) for s in tube_bundle.streamlines])
    n = tube_bundle.n_streamlines
    both = replace(
        tube_bundle, streamlines=Streamlines([*tube_bundle.streamlines, *shifted]),
        n_streamlines=2 * n,
        waypoint_span=np.concatenate([tube_bundle.waypoint_span, tube_bundle.waypoint_span]),
        near_core=np.arange(2 * n) >= n,
    )
    assert len(both.between_waypoints()) == n
    for a, b in zip(both.between_waypoints(), tube_bundle.between_waypoints(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.asanyarray(both.density().dataobj).sum() > np.asanyarray(
        tube_bundle.density().dataobj).sum()


def test_grown_masks_equal_the_whole_grid_distance_transform():
    """Growing each ROI inside its bounding box (+ margin) gives exactly scipy's Euclidean
    distance transform over the whole grid, anisotropic voxels and grid edges included."""
    from scipy import ndimage

    from msimaging.dti.tracts import _grown_masks

    rng = np.random.default_rng(7)
    shape, zooms = (40, 46, 30), np.array([2.0, 2.5, 3.0])
    affine = np.diag([*zooms, 1.0])
    waypoints = []
    for _ in range(12):
        mask = np.zeros(shape, bool)
        centre = rng.integers(0, shape)
        radius = rng.integers(1, 5, 3)
        box = tuple(slice(max(c - r, 0), c + r) for c, r in zip(centre, radius, strict=True))
        mask[box] = True
        waypoints.append(mask)
    waypoints.append(np.zeros(shape, bool))  # an empty ROI stays empty
    exclusion = waypoints[0].copy()
    for margin_mm in (0.0, 2.0, 5.5):
        grown = _grown_masks({"waypoints": waypoints, "exclusions": [exclusion]}, affine,
                             margin_mm)
        for mask, got in zip(waypoints, grown["waypoints"], strict=True):
            expected = (ndimage.distance_transform_edt(~mask, sampling=zooms) <= margin_mm
                        if mask.any() else mask)
            np.testing.assert_array_equal(got, expected)
        assert grown["exclusions"][0] is exclusion  # exclusions are not grown
