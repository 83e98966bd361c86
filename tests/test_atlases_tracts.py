"""Offline tract waypoint definitions against independent anatomical landmarks.

Landmarks (MNI mm) used here are NOT the values the ROIs were built from:

- JHU ICBM-DTI-81 white-matter labels (Mori et al. 2008 NeuroImage 40:570; Oishi et al.
  2008), reference points of FSL's ``JHU-labels.xml`` converted from FSL MNI152 1 mm voxels
  (x = 90 - i, y = j - 126, z = k - 72): cerebral peduncle R (15, -19, -12), corticospinal
  tract R in the pons (8, -23, -29), PLIC R (24, -18, 13), superior corona radiata R
  (27, -17, 24), posterior thalamic radiation (incl. optic radiation) R (33, -62, 1), genu of
  the corpus callosum (-3, 26, 5), body (-5, -26, 25), splenium (5, -37, 16).
- Hand knob of the precentral gyrus (Yousry et al. 1997 Brain 120:141): about (±37, -21, 58).
- Lateral geniculate nucleus from fMRI localisations (e.g. Kastner et al. 2004 J Neurophysiol
  91:2765; Schneider et al. 2004): about (±22, -24, -6).
- Area 17 / V1 (Amunts et al. 2000 NeuroImage 11:66): along the calcarine sulcus at
  |x| ~ 4-20, y ~ -105 to -60, z ~ -15 to 20 mm.
- Tissue maps: nilearn's packaged ICBM152 2009a symmetric GM/WM probability maps (0-255).
"""

from __future__ import annotations

import importlib.resources
import math

import nibabel as nib
import numpy as np
import pytest

from msimaging.atlases import tracts
from msimaging.atlases.tracts import (
    ROLES,
    TRACT_NAMES,
    TRACTS,
    Box,
    Sphere,
    TractDefinition,
    Union,
    tract_definitions,
)
from msimaging.errors import InputError

# ---- independent landmarks (right hemisphere; left = mirror) ------------------------------
JHU_CEREBRAL_PEDUNCLE_R = (15.0, -19.0, -12.0)
JHU_CST_PONS_R = (8.0, -23.0, -29.0)
JHU_PLIC_R = (24.0, -18.0, 13.0)
JHU_SUPERIOR_CORONA_RADIATA_R = (27.0, -17.0, 24.0)
JHU_POSTERIOR_THALAMIC_RADIATION_R = (33.0, -62.0, 1.0)
JHU_CC_GENU = (-3.0, 26.0, 5.0)
JHU_CC_BODY = (-5.0, -26.0, 25.0)
JHU_CC_SPLENIUM = (5.0, -37.0, 16.0)
HAND_KNOB_R = (37.0, -21.0, 58.0)  # Yousry 1997
LGN_R = (22.0, -24.0, -6.0)  # fMRI localisations
V1_RANGE_R = ((4.0, 20.0), (-105.0, -60.0), (-15.0, 20.0))  # Amunts 2000, |x|, y, z

PAIRS = (("CST_L", "CST_R"), ("OR_L", "OR_R"))
CC_PARTS = ("CC_genu", "CC_body", "CC_splenium")


def _high_x(region):
    return region.bounds_mm()[1][0]


def _low_x(region):
    return region.bounds_mm()[0][0]


def _inside(region, point) -> bool:
    return bool(region.contains(np.asarray([point], dtype=float))[0])


def _centroid_mm(mask, affine):
    ijk = np.argwhere(mask)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).mean(axis=0)


# ---- template fixtures ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def template():
    """ICBM152 2009a WM/GM probabilities (0-1) on a 2 mm grid, symmetric about x = 0."""
    data = importlib.resources.files("nilearn") / "datasets" / "data"
    maps = {}
    for tissue in ("wm", "gm"):
        img = nib.load(str(data / f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz"))
        maps[tissue] = np.asarray(img.dataobj)[::2, ::2, ::2] / 255.0
        affine = img.affine.copy()
    affine[:3, :3] *= 2.0
    x = affine[0, 3] + affine[0, 0] * np.arange(maps["wm"].shape[0])
    assert np.allclose(x, -x[::-1])  # the grid is mirror-symmetric, so flips are exact
    return maps["wm"], maps["gm"], affine


@pytest.fixture(scope="module")
def masks(template):
    wm, _, affine = template
    return {name: TRACTS[name].masks(wm.shape, affine) for name in TRACT_NAMES}


# ---- registry --------------------------------------------------------------------------------
def test_registry_names_and_lookup():
    expected = ("CST_L", "CST_R", "OR_L", "OR_R", "CC", "CC_genu", "CC_body", "CC_splenium")
    assert expected == TRACT_NAMES
    assert [t.name for t in tract_definitions()] == list(TRACT_NAMES)
    assert [t.name for t in tract_definitions(["OR_R", "CST_L"])] == ["OR_R", "CST_L"]
    assert [t.name for t in tract_definitions("CC")] == ["CC"]
    with pytest.raises(TypeError):
        TRACTS["X"] = TRACTS["CC"]  # type: ignore[index]
    for tract in TRACTS.values():
        assert tract.references and tract.description and tract.position_axis
        assert len(tract.waypoints) >= 2 and tract.seeds


def test_unknown_names_raise_input_error():
    with pytest.raises(InputError, match=r"names.*'CST_X'.*CST_L"):
        tract_definitions(["CST_L", "CST_X"])
    with pytest.raises(InputError, match="case-sensitive"):
        tract_definitions("cc")


def test_shapes_contain_and_validate():
    sphere = Sphere((1, 2, 3), 2)
    assert sphere.contains([[1, 2, 3], [1, 2, 5], [1, 2, 5.01]]).tolist() == [True, True, False]
    box = Box((0, 0, 0), (1, 2, 3))
    assert box.contains([[0, 0, 0], [1, 2, 3], [0.5, 2.1, 1]]).tolist() == [True, True, False]
    union = Union((sphere, box))
    assert union.contains([[1, 2, 4.5], [0.5, 1, 1], [9, 9, 9]]).tolist() == [True, True, False]
    assert sphere.contains([1, 2, 3]).tolist() == [True]  # a single point is accepted
    assert Box((1, 0, 0), (2, 1, 1)).mirrored() == Box((-2, 0, 0), (-1, 1, 1))
    with pytest.raises(InputError, match="radius_mm"):
        Sphere((0, 0, 0), 0)
    with pytest.raises(InputError, match="center_mm"):
        Sphere((0, 0), 1)
    with pytest.raises(InputError, match="min_mm must be below max_mm"):
        Box((0, 0, 0), (1, 0, 1))
    with pytest.raises(InputError, match=r"points_mm must be an \(N, 3\)"):
        sphere.contains(np.zeros((4, 2)))
    with pytest.raises(InputError, match="parts"):
        Union(())
    with pytest.raises(InputError, match="waypoints"):
        TractDefinition("T", "d", (), waypoints=(sphere,), seeds=(sphere,))


# ---- corticospinal tract -------------------------------------------------------------------
@pytest.mark.parametrize("side", ["L", "R"])
def test_cst_waypoints_match_independent_landmarks(side):
    sign = -1.0 if side == "L" else 1.0

    def lm(point):
        return (sign * point[0], point[1], point[2])

    peduncle, plic, precentral = TRACTS[f"CST_{side}"].waypoints
    assert _inside(peduncle, lm(JHU_CEREBRAL_PEDUNCLE_R))
    assert _inside(plic, lm(JHU_PLIC_R))
    assert _inside(precentral, lm(HAND_KNOB_R))
    # Inferior -> superior: peduncle above the pontine CST, the PLIC above the peduncle, the
    # superior corona radiata between the PLIC and the motor cortex.
    z = [float(np.mean(r.bounds_mm(), axis=0)[2]) for r in (peduncle, plic, precentral)]
    assert JHU_CST_PONS_R[2] < z[0] < z[1] < JHU_SUPERIOR_CORONA_RADIATA_R[2] < z[2]
    assert TRACTS[f"CST_{side}"].endpoints == (precentral,)


# ---- optic radiation -------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["L", "R"])
def test_or_waypoints_match_independent_landmarks(side):
    sign = -1.0 if side == "L" else 1.0
    lgn, stratum, calcarine = TRACTS[f"OR_{side}"].waypoints
    assert _inside(lgn, (sign * LGN_R[0], *LGN_R[1:]))
    centre = np.asarray(calcarine.center_mm)
    (x_lo, x_hi), (y_lo, y_hi), (z_lo, z_hi) = V1_RANGE_R
    assert x_lo <= abs(centre[0]) <= x_hi and y_lo <= centre[1] <= y_hi
    assert z_lo <= centre[2] <= z_hi and np.sign(centre[0]) == sign
    # Anterior -> posterior; the JHU posterior thalamic radiation point lies between the
    # stratum waypoint and the calcarine cortex, at the stratum's distance from the midline.
    y = [float(np.mean(r.bounds_mm(), axis=0)[1]) for r in (lgn, stratum, calcarine)]
    assert y[0] > y[1] > JHU_POSTERIOR_THALAMIC_RADIATION_R[1] > y[2]
    low, high = stratum.bounds_mm()
    assert low[0] <= sign * JHU_POSTERIOR_THALAMIC_RADIATION_R[0] <= high[0]


# ---- corpus callosum -------------------------------------------------------------------------
def test_cc_midsagittal_waypoint_spans_genu_to_splenium():
    left, mid, right = TRACTS["CC"].waypoints
    low, high = mid.bounds_mm()
    assert low[0] < 0 < high[0] and high[0] - low[0] <= 8  # a midsagittal slab
    for landmark in (JHU_CC_GENU, JHU_CC_BODY, JHU_CC_SPLENIUM):
        assert _inside(mid, (0.0, *landmark[1:]))  # JHU points projected on x = 0
    assert high[1] - low[1] >= 75  # adult callosal length ~ 70-80 mm
    # Left -> right: a waypoint in each hemisphere, mirror images of each other.
    assert _high_x(left) < 0 < _low_x(right)
    assert left == right.mirrored()
    assert TRACTS["CC"].seeds == (mid,)


def test_cc_parts_follow_the_landmarks_and_share_the_lateral_waypoints():
    genu, body, splenium = (TRACTS[name].waypoints[1] for name in CC_PARTS)
    assert _inside(genu, (0.0, *JHU_CC_GENU[1:]))
    assert _inside(splenium, (0.0, *JHU_CC_SPLENIUM[1:]))
    # The JHU body label reaches back into the isthmus, which Hofer & Frahm's posterior
    # quarter (our splenium) starts to include: its point is within 2 mm of the boundary.
    assert _inside(body, (0.0, JHU_CC_BODY[1] + 2.0, JHU_CC_BODY[2]))
    centres_y = [np.mean(r.bounds_mm(), axis=0)[1] for r in (genu, body, splenium)]
    assert centres_y[0] > centres_y[1] > centres_y[2]
    for name in CC_PARTS:
        part = TRACTS[name]
        assert part.waypoints[0] == TRACTS["CC"].waypoints[0]
        assert part.waypoints[2] == TRACTS["CC"].waypoints[2]
        assert part.exclusions == TRACTS["CC"].exclusions


def test_cc_parts_partition_the_midsagittal_waypoint():
    # 1 mm grid over the midline; the part boundaries (y = 20.5, -24.5) avoid voxel centres.
    shape = (9, 91, 46)
    affine = np.array([[1.0, 0, 0, -4], [0, 1, 0, -50], [0, 0, 1, -10], [0, 0, 0, 1]])
    whole = TRACTS["CC"].masks(shape, affine)["waypoints"][1]
    parts = [TRACTS[name].masks(shape, affine)["waypoints"][1] for name in CC_PARTS]
    assert whole.sum() > 1000
    assert np.array_equal(parts[0] | parts[1] | parts[2], whole)
    assert sum(int(p.sum()) for p in parts) == int(whole.sum())  # disjoint


# ---- symmetry and consistency ------------------------------------------------------------
@pytest.mark.parametrize(("left", "right"), PAIRS)
def test_left_definitions_mirror_right(left, right, masks):
    for role in ROLES:
        regions_l = getattr(TRACTS[left], role)
        regions_r = getattr(TRACTS[right], role)
        assert regions_l == tuple(r.mirrored() for r in regions_r)
        for mask_l, mask_r in zip(masks[left][role], masks[right][role], strict=True):
            assert mask_l.any()
            assert np.array_equal(mask_l, mask_r[::-1])


def test_cc_masks_are_symmetric(masks):
    for name in ("CC", *CC_PARTS):
        left, mid, right = masks[name]["waypoints"]
        assert np.array_equal(left, right[::-1])
        assert np.array_equal(mid, mid[::-1])


@pytest.mark.parametrize("name", TRACT_NAMES)
def test_no_waypoint_or_seed_touches_an_exclusion(name, masks):
    excluded = np.zeros_like(masks[name]["waypoints"][0])
    for mask in masks[name]["exclusions"]:
        excluded |= mask
    for role in ("waypoints", "seeds", "endpoints"):
        for mask in masks[name][role]:
            assert mask.any()
            assert not (mask & excluded).any()


# ---- against the ICBM152 2009a tissue maps -----------------------------------------------
@pytest.mark.parametrize("name", ["CST_L", "CST_R", "OR_L", "OR_R"])
def test_intermediate_waypoints_lie_in_white_matter(name, template, masks):
    wm, gm, _ = template
    for mask in masks[name]["waypoints"][1:-1]:
        assert wm[mask].mean() > 0.65
        assert wm[mask].mean() > 2 * gm[mask].mean()


@pytest.mark.parametrize("name", ["CST_L", "CST_R", "OR_L", "OR_R"])
def test_first_waypoint_is_deep_white_or_grey_nucleus(name, template, masks):
    # Peduncle (white) or LGN (thalamic grey): mostly brain tissue, little CSF.
    wm, gm, _ = template
    first = masks[name]["waypoints"][0]
    assert (wm[first] + gm[first]).mean() > 0.85
    assert wm[first].mean() > 0.5


@pytest.mark.parametrize("name", ["CST_L", "CST_R", "OR_L", "OR_R"])
def test_cortical_endpoints_touch_grey_matter(name, template, masks):
    wm, gm, _ = template
    last = masks[name]["waypoints"][-1]
    assert (gm[last] > 0.5).mean() > 0.2  # cortex
    assert (wm[last] > 0.5).mean() > 0.2  # and the white matter entering it
    if name.startswith("OR"):  # V1 is the destination: grey matter dominates
        assert gm[last].mean() >= 0.4


def test_cc_midsagittal_waypoint_covers_the_callosum(template, masks):
    wm, gm, affine = template
    mid = masks["CC"]["waypoints"][1]
    assert wm[mid].mean() > gm[mid].mean()
    # Callosal core on the midsagittal plane: WM > 0.8 (the fornix peaks at ~0.65) within
    # |x| <= 2 mm, above the brainstem and below the cingulate sulci.
    ijk = np.indices(wm.shape).reshape(3, -1).T
    xyz = (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*wm.shape, 3)
    core = (
        (wm > 0.8)
        & (np.abs(xyz[..., 0]) <= 2)
        & (xyz[..., 1] > -50)
        & (xyz[..., 1] < 40)
        & (xyz[..., 2] > -8)
        & (xyz[..., 2] < 32)
    )
    assert core.sum() > 100
    assert (mid & core).sum() / core.sum() > 0.9
    lateral = masks["CC"]["waypoints"][0]
    assert wm[lateral].mean() > 0.6


# ---- rasterisation on other grids -----------------------------------------------------------
def _rotation_z(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def test_masks_on_rotated_scaled_grid_follow_to_mni():
    tract = TRACTS["CST_R"]
    # A 2.5 mm "subject" grid whose world frame is rotated 25 degrees, scaled 1.1x and shifted
    # relative to MNI: to_mni maps subject world mm -> MNI mm.
    to_mni = _rotation_z(25.0) @ np.diag([1.1, 1.1, 1.1, 1.0])
    to_mni[:3, 3] = (4.0, -6.0, 3.0)
    shape = (72, 72, 64)
    affine = np.diag([2.5, 2.5, 2.5, 1.0])
    affine[:3, 3] = (-90.0, -90.0, -80.0)
    rotated = tract.masks(shape, affine, to_mni=to_mni)
    mni_2mm = np.diag([2.0, 2.0, 2.0, 1.0])
    mni_2mm[:3, 3] = (-90.0, -126.0, -72.0)
    direct = tract.masks((91, 109, 91), mni_2mm)

    world_to_mni = to_mni @ affine
    for role in ROLES:
        for region, mask_r, mask_d in zip(
            getattr(tract, role), rotated[role], direct[role], strict=True
        ):
            if not isinstance(region, Sphere):
                continue
            # The ROI moved with the transform: its voxels map back onto the sphere centre...
            centre_r = _centroid_mm(mask_r, world_to_mni)
            centre_d = _centroid_mm(mask_d, mni_2mm)
            assert np.linalg.norm(centre_r - region.center_mm) < 1.0
            assert np.linalg.norm(centre_d - region.center_mm) < 0.5
            # ... and covers the same MNI volume (voxel volume 2.5^3 * 1.1^3 mm^3 in MNI).
            volume = 4 / 3 * math.pi * region.radius_mm**3
            assert mask_r.sum() * (2.5 * 1.1) ** 3 == pytest.approx(volume, rel=0.2)
            assert mask_d.sum() * 8 == pytest.approx(volume, rel=0.2)
    # to_mni is the same as folding the transform into the affine.
    folded = tract.masks(shape, world_to_mni)
    for role in ROLES:
        for a, b in zip(rotated[role], folded[role], strict=True):
            assert np.array_equal(a, b)


def test_masks_match_pointwise_tests_and_chunking(monkeypatch):
    tract = TRACTS["OR_R"]
    shape = (30, 40, 20)
    affine = _rotation_z(-10.0) @ np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = (-10.0, -100.0, -30.0)
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    full = tract.masks((*shape, 7), affine)  # a 4D shape: extra dimensions are ignored
    monkeypatch.setattr(tracts, "_CHUNK_VOXELS", 50)
    chunked = tract.masks(shape, affine)
    for role in ROLES:
        for region, a, b in zip(getattr(tract, role), full[role], chunked[role], strict=True):
            expected = region.contains(xyz).reshape(shape)
            assert a.shape == shape
            assert np.array_equal(a, expected)
            assert np.array_equal(b, expected)


def test_masks_reject_bad_grids():
    tract = TRACTS["CC"]
    with pytest.raises(InputError, match="shape"):
        tract.masks((10, 10), np.eye(4))
    with pytest.raises(InputError, match="affine"):
        tract.masks((10, 10, 10), np.eye(3))
    with pytest.raises(InputError, match="to_mni"):
        tract.masks((10, 10, 10), np.eye(4), to_mni=np.full((4, 4), np.nan))
    with pytest.raises(InputError, match="singular"):
        tract.masks((10, 10, 10), np.diag([1.0, 0.0, 1.0, 1.0]))
    assert tract.masks((4, 4, 4), np.eye(4))["endpoints"] == []


def test_to_frame_lists_every_shape():
    frame = TRACTS["CC"].to_frame()
    assert set(frame["role"]) == {"seeds", "waypoints", "exclusions"}
    assert (frame["tract"] == "CC").all()
    n_mid = len(TRACTS["CC"].waypoints[1].parts)
    assert len(frame) == 2 + n_mid + n_mid + 2  # two lateral slabs, mid parts, seeds, excl.
    assert {"x_mm", "y_mm", "z_mm", "radius_mm", "min_mm", "max_mm", "label"} <= set(frame)


def test_tracking_recommendations_are_checked():
    from msimaging.atlases.tracts import TRACKING_KEYS, TRACTS, Sphere, TractDefinition

    a, b = Sphere((0.0, 0.0, 0.0), 5.0), Sphere((0.0, 20.0, 0.0), 5.0)
    with pytest.raises(InputError, match="max_angle"):
        TractDefinition("x", "", (), waypoints=(a, b), seeds=(a,),
                        tracking={"max_angle": 30})
    for definition in TRACTS.values():
        assert set(definition.tracking) <= set(TRACKING_KEYS)
    # Compact bundles are cleaned around one core; the callosal fan is not.
    assert TRACTS["OR_L"].tracking["clean"] and TRACTS["CST_R"].tracking["clean"]
    assert not TRACTS["CC"].tracking.get("clean", False)
