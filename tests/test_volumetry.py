"""Volumetry: tissue volumes, lesions, classes and lesion tracks against ground truth.

Ground truth comes from the synthetic study (rasterised planted lesions and labels) and from
small hand-built images whose answers are known by construction.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msimaging import volumetry as vol
from msimaging.errors import InputError, MSImagingWarning

# --------------------------------------------------------------------------------------------
# The synthetic study (tiny preset: 5 subjects x M0/M3/M6)
# --------------------------------------------------------------------------------------------

_TRUTH_REGIONS = {
    "brain": ("brain",),
    "cortical_gm": ("cortical GM",),
    "deep_gm": ("deep GM",),
    "wm": ("WM",),
    "nawm": ("NAWM",),
    "abnormal_wm": ("WM lesion",),
    "csf": ("CSF", "lateral ventricles"),
    "lateral_ventricles": ("lateral ventricles",),
    "brainstem": ("brainstem",),
    "cerebellum": ("cerebellum",),
    "icv": ("ICV",),
}


def _visits(root: Path):
    truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    for sub, subject in truth["subjects"].items():
        for ses, session in subject["sessions"].items():
            anat = root / "derivatives" / "segmentation" / sub / ses / "anat"
            yield sub, ses, subject, session, {
                "seg": anat / f"{sub}_{ses}_dseg.nii.gz",
                "lesion": anat / f"{sub}_{ses}_label-lesion_mask.nii.gz",
                "ids": root / "sourcedata" / "ground_truth" / sub / ses / "anat"
                / f"{sub}_{ses}_desc-lesionid_dseg.nii.gz",
            }


@pytest.fixture(scope="module")
def study(tiny_study):
    return list(_visits(Path(tiny_study[0])))


def test_tissue_volumes_equal_truth_to_the_voxel(study):
    for sub, ses, _, session, paths in study:
        table = vol.tissue_volumes(paths["seg"], paths["lesion"], participant_id=sub,
                                   session_id=ses)
        got = table.set_index("region")
        truth = session["tissue_volumes_ml"]
        voxel_ml = nib.load(paths["seg"]).header.get_zooms()[:3]
        voxel_ml = float(np.prod(voxel_ml)) / 1000.0
        for region, keys in _TRUTH_REGIONS.items():
            expected = sum(truth[k] for k in keys)
            # "to the voxel": the difference is below a tenth of a voxel.
            error = abs(got.loc[region, "volume_ml"] - expected)
            assert error < 0.1 * voxel_ml, (sub, ses, region)
        # NAWM and abnormal WM add up to WM (lesions included), exactly in voxels.
        assert got.loc["nawm", "n_voxels"] + got.loc["abnormal_wm", "n_voxels"] == got.loc[
            "wm", "n_voxels"
        ]
        assert got.loc["icv", "fraction_icv"] == pytest.approx(1.0)
        assert (table["participant_id"] == sub).all() and (table["method"] == "hard").all()


def test_lesion_counts_classes_and_volumes_equal_truth(study):
    for sub, ses, _, session, paths in study:
        classes = vol.classify_lesions(paths["lesion"], paths["seg"]).set_index("location")
        truth = session["lesions"]
        assert classes.loc["total", "count"] == truth["count"], (sub, ses)
        assert classes.loc["total", "volume_mm3"] == pytest.approx(truth["volume_mm3"])
        for location, expected in truth["by_class"].items():
            assert classes.loc[location, "count"] == expected["count"], (sub, ses, location)
            assert classes.loc[location, "volume_mm3"] == pytest.approx(expected["volume_mm3"])
        per_class = classes.drop(index="total")
        assert per_class["n_voxels"].sum() == classes.loc["total", "n_voxels"]
        assert per_class["count"].sum() == classes.loc["total", "count"]


def test_each_lesion_row_is_a_planted_lesion(study):
    for sub, ses, subject, _, paths in study:
        table = vol.lesion_table(paths["lesion"], paths["seg"])
        planted = {
            lesion["lesion_id"]: lesion for lesion in subject["lesions"]
            if lesion["sessions"][ses]["present"]
        }
        ids_img = nib.load(paths["ids"])
        ids = np.asarray(ids_img.dataobj)
        labelled = np.asarray(vol.label_lesions(paths["lesion"]).dataobj)
        assert len(table) == len(planted)
        for row in table.itertuples():
            under = np.unique(ids[labelled == row.lesion_id])
            assert under.size == 1 and under[0] in planted, (sub, ses, row.lesion_id)
            lesion = planted[int(under[0])]
            at = lesion["sessions"][ses]
            assert row.n_voxels == at["n_voxels"]
            assert row.location == lesion["location"]
            centroid = [row.centroid_x_mm, row.centroid_y_mm, row.centroid_z_mm]
            np.testing.assert_allclose(centroid, at["centroid_mm"], atol=2e-3)


def test_lesion_tracks_equal_the_planted_evolution(tiny_study):
    root = Path(tiny_study[0])
    truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    rename = {"disappearing": "disappeared"}
    for sub, subject in truth["subjects"].items():
        sessions = list(subject["sessions"])
        masks = {
            ses: root / "derivatives" / "segmentation" / sub / ses / "anat"
            / f"{sub}_{ses}_label-lesion_mask.nii.gz"
            for ses in sessions
        }
        tracks = vol.match_lesions(masks, participant_id=sub)
        assert len(tracks) == len(subject["lesions"])
        # Identify each track with the planted lesion under it (lesion ids per visit).
        ids = {
            ses: np.asarray(nib.load(
                root / "sourcedata" / "ground_truth" / sub / ses / "anat"
                / f"{sub}_{ses}_desc-lesionid_dseg.nii.gz").dataobj)
            for ses in sessions
        }
        labelled = {ses: np.asarray(vol.label_lesions(masks[ses]).dataobj) for ses in sessions}
        by_id = {lesion["lesion_id"]: lesion for lesion in subject["lesions"]}
        seen = set()
        for row in tracks.to_dict("records"):
            planted = set()
            for ses in sessions:
                for lid in filter(None, row[f"lesion_ids_{ses}"].split(";")):
                    planted |= set(np.unique(ids[ses][labelled[ses] == int(lid)]).tolist())
            assert len(planted) == 1, (sub, row)
            lesion = by_id[planted.pop()]
            seen.add(lesion["lesion_id"])
            assert row["category"] == rename.get(lesion["category"], lesion["category"])
            for ses in sessions:
                assert row[f"volume_mm3_{ses}"] == pytest.approx(
                    lesion["sessions"][ses]["volume_mm3"])
        assert seen == set(by_id)


# --------------------------------------------------------------------------------------------
# Hand-built images
# --------------------------------------------------------------------------------------------


def _img(data, zooms=(1.0, 1.0, 1.0)):
    return nib.Nifti1Image(np.asarray(data), np.diag([*zooms, 1.0]))


@pytest.mark.parametrize(
    ("touch", "expected"),
    [("corner", (2, 2, 1)), ("edge", (2, 1, 1)), ("face", (1, 1, 1))],
)
def test_connectivity_of_two_touching_cubes(touch, expected):
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    shift = {"corner": (3, 3, 3), "edge": (3, 3, 0), "face": (3, 0, 0)}[touch]
    lo = np.array([2, 2, 2]) + shift
    mask[lo[0]:lo[0] + 3, lo[1]:lo[1] + 3, lo[2]:lo[2] + 3] = 1
    got = tuple(
        int(np.asarray(vol.label_lesions(_img(mask), connectivity=c).dataobj).max())
        for c in (6, 18, 26)
    )
    assert got == expected
    # The same labelling is used by the table.
    assert len(vol.lesion_table(_img(mask), connectivity=6)) == expected[0]


# The phantom is drawn in the synthetic study's label values and an in-memory image has no
# dseg.tsv, so its convention is given explicitly (no default guesses it).
SYN = "synthetic"


def _phantom():
    """A labelled phantom (synthetic convention) with known lesion classes.

    x 0..39: a cortex sheet at x = 2..3 (label 2), WM (3), ventricles at x = 20..23 (5);
    a brainstem slab at z = 0..5 (6) below the cerebrum; CSF shell (1) at the border.
    """
    seg = np.zeros((40, 30, 30), np.int16)
    seg[1:39, 1:29, 1:29] = 1
    seg[2:38, 2:28, 6:28] = 3
    seg[2:4, 2:28, 6:28] = 2
    seg[20:24, 10:20, 12:22] = 5
    seg[10:30, 5:25, 1:6] = 6
    lesion = np.zeros(seg.shape, np.uint8)
    lesion[4:7, 10:13, 15:18] = 1     # touches cortex: juxtacortical (9 vox per slice -> 27)
    lesion[17:20, 12:15, 15:18] = 1   # touches ventricles at x=20: periventricular
    lesion[12:15, 10:13, 2:5] = 1     # inside brainstem: infratentorial
    lesion[30:32, 14:16, 16:18] = 1   # far from everything: deep WM
    lesion[9:11, 20:22, 20:22] = 1    # 2 voxels from cortex? no: x = 9 is 5 from x = 3: deep WM
    return seg, lesion


def test_classes_on_a_phantom_are_exclusive_and_sum_to_totals():
    seg, lesion = _phantom()
    table = vol.lesion_table(_img(lesion), _img(seg), labels=SYN)
    assert sorted(table["location"]) == [
        "deep_wm", "deep_wm", "infratentorial", "juxtacortical", "periventricular"
    ]
    summary = vol.classify_lesions(_img(lesion), _img(seg), labels=SYN).set_index("location")
    assert summary.loc["total", "count"] == 5
    assert summary.loc["total", "n_voxels"] == int(lesion.sum())
    assert summary.drop(index="total")["n_voxels"].sum() == int(lesion.sum())
    wm_voxels = int(((seg == 3) | (lesion > 0) & (seg != 1)).sum())
    assert summary.loc["total", "load_pct_wm"] == pytest.approx(100 * lesion.sum() / wm_voxels)


def test_contact_tolerance_and_lst_ai_order():
    seg, lesion = _phantom()
    deep = np.zeros_like(lesion)
    deep[16:18, 12:15, 15:18] = 1  # x 16..17: two voxels of WM between it and the ventricles
    assert vol.lesion_table(_img(deep), _img(seg), labels=SYN)["location"].tolist() == [
        "deep_wm"
    ]
    near = vol.lesion_table(_img(deep), _img(seg), labels=SYN, contact_mm=3.0)
    near = near["location"].tolist()
    assert near == ["periventricular"]
    # A brainstem lesion reaching the cerebral WM above and the cortex at its side.
    seg2 = seg.copy()
    seg2[8:10, 5:25, 1:6] = 2
    both = np.zeros_like(lesion)
    both[10:13, 10:13, 2:5] = 1
    assert vol.lesion_table(_img(both), _img(seg2), labels=SYN)["location"].tolist() == [
        "infratentorial"
    ]
    lst = vol.lesion_table(_img(both), _img(seg2), labels=SYN, order="lst-ai")
    lst = lst["location"].tolist()
    assert lst == ["juxtacortical"]


def test_empty_lesion_mask_gives_zeros_not_nan():
    seg, _ = _phantom()
    empty = np.zeros(seg.shape, np.uint8)
    summary = vol.classify_lesions(_img(empty), _img(seg), labels=SYN)
    assert len(summary) == 5
    numeric = summary[["count", "n_voxels", "volume_mm3", "volume_ml", "load_pct_icv",
                       "load_pct_wm"]]
    assert (numeric.to_numpy() == 0).all() and not numeric.isna().any().any()
    assert len(vol.lesion_table(_img(empty), _img(seg), labels=SYN)) == 0
    tracks = vol.match_lesions([_img(empty), _img(empty)])
    assert len(tracks) == 0
    volumes = vol.tissue_volumes(_img(seg), _img(empty), labels=SYN).set_index("region")
    assert volumes.loc["abnormal_wm", "volume_ml"] == 0.0


def test_random_images_classes_always_partition_the_lesions():
    rng = np.random.default_rng(3)
    seg, _ = _phantom()
    for _ in range(5):
        lesion = (rng.random(seg.shape) < 0.02) & np.isin(seg, (2, 3, 6))
        summary = vol.classify_lesions(_img(lesion.astype(np.uint8)), _img(seg), labels=SYN)
        summary = summary.set_index("location")
        assert summary.loc["total", "n_voxels"] == int(lesion.sum())
        assert summary.drop(index="total")[["count", "n_voxels"]].sum().tolist() == [
            summary.loc["total", "count"], summary.loc["total", "n_voxels"]
        ]


def test_minimum_size_presets():
    mask = np.zeros((30, 30, 30), np.uint8)
    mask[2, 2, 2:4] = 1          # 2 voxels, long axis 2 mm, 2 mm³
    mask[10, 10, 10:14] = 1      # 4 voxels in a line: 4 mm, 4 mm³
    mask[20:23, 20:23, 20:22] = 1  # 18 voxels: 3.6+ mm, 18 mm³
    mask[5:8, 20, 20] = 1        # 3 voxels: 3 mm, 3 mm³
    extent = vol.lesion_table(_img(mask))["extent_mm"].to_numpy()
    # Extent = farthest voxel centres + one voxel's span along that direction: the block's
    # centres are (2, 2, 1) mm apart (3 mm) and a unit voxel spans (2 + 2 + 1) / 3 mm along it.
    np.testing.assert_allclose(sorted(extent), [2.0, 3.0, 4.0, 3.0 + 5.0 / 3.0])

    def count(**kw):
        return int(np.asarray(vol.label_lesions(_img(mask), **kw).dataobj).max())

    assert count() == 4
    assert count(min_size="mcdonald") == 3  # drops the 2 mm lesion
    assert count(min_size="lst") == 1       # only the 18 mm³ lesion reaches 15 mm³
    assert count(min_size="nicms") == 1     # 5 voxels or more
    assert count(min_voxels=3) == 3
    # Anisotropic voxels (z = 2 mm): lines along z of 2 and 4 voxels are 4 and 8 mm long; the
    # block's centres are (2, 2, 2) mm apart, a 1x1x2 mm voxel spanning (1 + 1 + 2) / sqrt(3) mm
    # along that diagonal.
    aniso = vol.lesion_table(_img(mask, (1.0, 1.0, 2.0)))
    np.testing.assert_allclose(
        sorted(aniso["extent_mm"]), [3.0, 4.0, np.sqrt(12.0) + 4.0 / np.sqrt(3.0), 8.0]
    )


def test_match_lesions_merge_split_transient_and_thresholds():
    shape = (30, 30, 30)

    def blobs(*boxes):
        m = np.zeros(shape, np.uint8)
        for b in boxes:
            m[b] = 1
        return _img(m)

    a = np.s_[2:5, 2:5, 2:5]       # 27 voxels, grows to 36 (+33%)
    a_big = np.s_[2:6, 2:5, 2:5]
    b1, b2 = np.s_[10:12, 10:12, 10:12], np.s_[10:12, 13:15, 10:12]  # merge through a bridge
    bridge = np.s_[10:12, 10:15, 10:12]
    c = np.s_[20:24, 20:23, 20:23]  # splits into two
    c1, c2 = np.s_[20:21, 20:23, 20:23], np.s_[23:24, 20:23, 20:23]
    t = np.s_[25:27, 2:4, 2:4]      # only at the middle visit
    masks = {
        "M0": blobs(a, b1, b2, c),
        "M3": blobs(a, b1, b2, c, t),
        "M6": blobs(a_big, bridge, c1, c2),
    }
    tracks = vol.match_lesions(masks).set_index("track_id")
    assert sorted(tracks["category"]) == ["enlarging", "merged", "split", "transient"]
    grow = tracks[tracks["category"] == "enlarging"].iloc[0]
    assert grow["volume_first_mm3"] == 27 and grow["volume_last_mm3"] == 36
    assert grow["change_pct"] == pytest.approx(100 / 3)
    # +33% is not enlarging under the conservative 50% preset, nor with a 10 mm³ floor.
    cons = vol.match_lesions(masks, change_pct="conservative")
    assert "enlarging" not in set(cons["category"])
    floor = vol.match_lesions(masks, min_change_mm3=10.0)
    assert "enlarging" not in set(floor["category"])
    # Reverse time: the lesion shrinks by 25% <= 1/1.3 -> shrinking (symmetric threshold).
    reverse = vol.match_lesions(dict(reversed(list(masks.items()))))
    assert sorted(reverse["category"]) == ["merged", "shrinking", "split", "transient"]


def test_volume_change_from_baseline():
    rows = pd.DataFrame(
        {
            "participant_id": ["01"] * 4 + ["02"] * 2,
            "months": [6, 0, 6, 0, 0, 3],
            "region": ["brain", "brain", "wm", "wm", "brain", "brain"],
            "volume_ml": [990.0, 1000.0, 440.0, 400.0, 1200.0, 1212.0],
        }
    )
    change = vol.volume_change(rows).set_index(["participant_id", "region", "months"])
    assert change.loc[("01", "brain", 6), "change_pct"] == pytest.approx(-1.0)
    assert change.loc[("01", "wm", 6), "change_ml"] == pytest.approx(40.0)
    assert change.loc[("01", "wm", 0), "change_pct"] == 0.0
    assert change.loc[("02", "brain", 3), "change_pct"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Label conventions and soft volumes
# --------------------------------------------------------------------------------------------


def test_freesurfer_aseg_volumes():
    seg = np.zeros((10, 10, 10), np.int16)
    seg[0, :, :] = 24      # CSF: 100
    seg[1, :, :] = 3       # L cortex: 100
    seg[2, :, :] = 42      # R cortex: 100
    seg[3, :, :] = 2       # L WM: 100
    seg[4, :5, :] = 251    # CC: 50
    seg[4, 5:, :] = 77     # WM hypointensities (lesion): 50
    seg[5, :, :] = 4       # L lateral ventricle: 100
    seg[6, :, :] = 11      # caudate: 100
    seg[7, :, :] = 17      # hippocampus: 100
    seg[8, :, :] = 16      # brainstem: 100
    seg[9, :, :] = 8       # cerebellum cortex: 100
    table = vol.tissue_volumes(_img(seg, (2.0, 2.0, 2.0)), labels="freesurfer")
    got = table.set_index("region")["volume_ml"] / 0.008  # in voxels
    expected = {
        "cortical_gm": 200, "deep_gm": 100, "gm": 400, "wm": 200, "nawm": 150,
        "abnormal_wm": 50, "csf": 200, "lateral_ventricles": 100, "brainstem": 100,
        "cerebellum": 100, "brain": 800, "icv": 1000,
    }
    for region, n in expected.items():
        assert got[region] == pytest.approx(n), region
    # SynthSeg has no lesion label: 77 is unknown there, with a clear error.
    with pytest.raises(InputError, match="77"):
        vol.tissue_volumes(_img(seg), labels="synthseg")


@pytest.mark.parametrize(("convention", "gm", "wm", "csf"),
                         [("fmriprep", 1, 2, 3), ("fsl_fast", 2, 3, 1)])
def test_three_class_conventions(convention, gm, wm, csf):
    seg = np.zeros((6, 6, 6), np.int16)
    seg[0:2] = gm
    seg[2:5] = wm
    seg[5, :3] = csf
    lesion = np.zeros(seg.shape, np.uint8)
    lesion[3, 0, 0:4] = 1
    table = vol.tissue_volumes(_img(seg), _img(lesion), labels=convention)
    got = table.set_index("region")["n_voxels"]
    assert got["gm"] == 72 and got["wm"] == 108 and got["abnormal_wm"] == 4
    assert got["nawm"] == 104 and got["csf"] == 18 and got["icv"] == 198
    assert "cortical_gm" not in got.index
    with pytest.raises(InputError, match="cortical_gm"):
        vol.tissue_volumes(_img(seg), labels=convention, regions=("cortical_gm",))
    with pytest.raises(InputError, match="lateral_ventricles"):
        vol.classify_lesions(_img(lesion), _img(seg), labels=convention)


def test_custom_label_mapping_and_margin():
    seg = np.zeros((20, 20, 20), np.int16)
    seg[2:18, 2:18, 2:18] = 30
    seg[2:4, 2:18, 2:18] = 40
    lesion = np.zeros(seg.shape, np.uint8)
    lesion[10, 10, 10] = 1
    labels = {"cerebral_wm": [30], "cortical_gm": 40}
    table = vol.tissue_volumes(_img(seg), _img(lesion), labels=labels, margin_mm=1.0)
    got = table.set_index("region")["n_voxels"]
    # 1 mm margin = the 6 face neighbours, excluded from NAWM but kept in WM.
    assert got["wm"] == 14 * 16 * 16 and got["abnormal_wm"] == 1
    assert got["nawm"] == 14 * 16 * 16 - 1 - 6
    with pytest.raises(InputError, match="unknown tissue class"):
        vol.tissue_volumes(_img(seg), labels={"white": [30]})
    with pytest.raises(InputError, match="both"):
        vol.tissue_volumes(_img(seg), labels={"cerebral_wm": [30], "csf": [30]})


def test_soft_volumes_are_sums_of_probabilities():
    shape = (8, 8, 8)
    gm = np.full(shape, 0.25, np.float32)
    wm = np.full(shape, 0.5, np.float32)
    csf = np.full(shape, 0.25, np.float32)
    lesion = np.zeros(shape, np.uint8)
    lesion[0, 0, :4] = 1
    seg = {"GM": _img(gm, (2, 2, 2)), "WM": _img(wm, (2, 2, 2)), "CSF": _img(csf, (2, 2, 2))}
    table = vol.tissue_volumes(seg, _img(lesion, (2, 2, 2))).set_index("region")
    n = 512
    voxel_ml = 0.008
    assert (table["method"] == "soft").all()
    assert table.loc["icv", "volume_ml"] == pytest.approx(n * voxel_ml)
    assert table.loc["abnormal_wm", "volume_ml"] == pytest.approx(4 * 0.75 * voxel_ml)
    assert table.loc["nawm", "volume_ml"] == pytest.approx((n - 4) * 0.5 * voxel_ml)
    assert table.loc["gm", "volume_ml"] == pytest.approx((n - 4) * 0.25 * voxel_ml)
    assert table.loc["brain", "volume_ml"] == pytest.approx(n * 0.75 * voxel_ml)
    assert table.loc["csf", "fraction_icv"] == pytest.approx(0.25)


def test_soft_volumes_on_the_synthetic_probseg(study):
    _, _, _, session, paths = study[0]
    anat = paths["seg"].parent
    stem = paths["seg"].name.replace("_dseg.nii.gz", "")
    seg = {k: anat / f"{stem}_label-{k}_probseg.nii.gz" for k in ("GM", "WM", "CSF")}
    soft = vol.tissue_volumes(seg).set_index("region")["volume_ml"]
    hard_icv = session["tissue_volumes_ml"]["ICV"]
    # Partial-volume maps and hard labels agree on the intracranial volume within 5%.
    assert soft["icv"] == pytest.approx(hard_icv, rel=0.05)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(tmp_path):
    seg, lesion = _phantom()
    shifted = nib.Nifti1Image(lesion, np.diag([1.0, 1.0, 1.0, 1.0]) + np.eye(4) * 0)
    shifted.affine[0, 3] = 5.0
    shifted = nib.Nifti1Image(lesion, shifted.affine)
    with pytest.raises(InputError, match="not on the grid"):
        vol.tissue_volumes(_img(seg), shifted, labels=SYN)
    with pytest.raises(InputError, match="not on the grid"):
        vol.lesion_table(shifted, _img(seg), labels=SYN)
    prob = lesion.astype(np.float32) * 0.8
    path = tmp_path / "sub-01_lesionprob.nii.gz"
    nib.save(_img(prob), path)
    with pytest.raises(InputError, match=r"lesionprob.*threshold"):
        vol.lesion_table(path, _img(seg))
    assert len(vol.lesion_table(path, _img(seg), labels=SYN, threshold=0.5)) == 5
    with pytest.raises(InputError, match="fsl_fast"):
        vol.tissue_volumes(_img(seg), labels="spm12")
    with pytest.raises(InputError, match="connectivity"):
        vol.label_lesions(_img(lesion), connectivity=8)
    with pytest.raises(InputError, match="min_size"):
        vol.label_lesions(_img(lesion), min_size="mcdonalds")
    with pytest.raises(InputError, match="order"):
        vol.lesion_table(_img(lesion), _img(seg), order="magnims")
    with pytest.raises(InputError, match="change_pct"):
        vol.match_lesions([_img(lesion), _img(lesion)], change_pct="big")
    with pytest.raises(InputError, match="at least two"):
        vol.match_lesions([_img(lesion)])
    with pytest.raises(InputError, match="non-integer"):
        vol.tissue_volumes(_img(seg.astype(np.float32) + 0.5))
    with pytest.raises(InputError, match="margin_mm"):
        vol.tissue_volumes(_img(seg), margin_mm=-1)


def test_lesion_voxels_outside_the_brain_warn_and_are_counted_apart():
    seg, lesion = _phantom()
    lesion = lesion.copy()
    lesion[0, 0, 0:3] = 1  # background
    with pytest.warns(MSImagingWarning, match="outside the brain"):
        table = vol.tissue_volumes(_img(seg), _img(lesion), labels=SYN).set_index("region")
    assert table.loc["lesion_outside_brain", "n_voxels"] == 3
    assert table.loc["abnormal_wm", "n_voxels"] == int(lesion.sum()) - 3
    with pytest.warns(MSImagingWarning, match="outside the brain"):
        lesions = vol.lesion_table(_img(lesion), _img(seg), labels=SYN)
    assert len(lesions) == 5 and lesions.attrs["outside_brain_mm3"] == 3.0


def test_inputs_are_not_modified(tmp_path):
    seg, lesion = _phantom()
    paths = {"seg": tmp_path / "seg.nii.gz", "lesion": tmp_path / "lesion.nii.gz"}
    nib.save(_img(seg), paths["seg"])
    nib.save(_img(lesion), paths["lesion"])
    before = {k: p.read_bytes() for k, p in paths.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol.tissue_volumes(paths["seg"], paths["lesion"], labels=SYN)
        vol.classify_lesions(paths["lesion"], paths["seg"], labels=SYN)
        vol.match_lesions([paths["lesion"], paths["lesion"]])
    assert {k: p.read_bytes() for k, p in paths.items()} == before


def test_volumetry_session_writes_tables_that_equal_the_functions(study, tmp_path):
    from msimaging.derivatives import DerivativesWriter

    sub, ses, _, session, paths = study[0]
    writer = DerivativesWriter(tmp_path / "deriv", input_datasets=[paths["seg"].parents[5]])
    result = vol.volumetry_session(paths["seg"], paths["lesion"], participant_id=sub,
                                   session_id=ses, writer=writer)
    assert set(result.outputs) == {"volumes", "lesions", "load"}
    load = pd.read_csv(result.outputs["load"], sep="\t").set_index("location")
    assert load.loc["total", "count"] == session["lesions"]["count"]
    direct = vol.classify_lesions(paths["lesion"], paths["seg"])
    pd.testing.assert_frame_equal(
        result.load.drop(columns=["participant_id", "session_id"]),
        direct.drop(columns=["participant_id", "session_id"]),
    )
    assert "lesions=" in repr(result) and "<table" in result._repr_html_()
    with pytest.raises(InputError, match="lesion_table"):
        vol.lesion_load(pd.DataFrame(), result.volumes)


def test_match_lesions_across_grids_with_a_transform():
    from msimaging.registration import AffineTransform

    mask = np.zeros((20, 20, 20), np.uint8)
    mask[4:7, 4:7, 4:7] = 1
    mask[12:14, 12:14, 12:14] = 1
    first = _img(mask)
    # The follow-up grid is shifted by 3 voxels (head moved): same lesions, other voxels.
    # The big one grew by one slice.
    moved = np.roll(mask, 3, axis=0)
    moved[10, 4:7, 4:7] = 1
    shifted_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted_affine[0, 3] = -3.0
    follow = nib.Nifti1Image(moved, shifted_affine)
    with pytest.raises(InputError, match="not on the grid"):
        vol.match_lesions({"M0": first, "M6": follow})
    # static (M0) world mm -> moving (M6) world mm: the same anatomy, so the identity.
    transform = AffineTransform(np.eye(4), (20, 20, 20), first.affine, (20, 20, 20),
                                shifted_affine)
    tracks = vol.match_lesions({"M0": first, "M6": follow}, transforms={"M6": transform})
    assert sorted(tracks["category"]) == ["enlarging", "stable"]
    assert sorted(tracks["volume_mm3_M6"]) == [8.0, 36.0]
    with pytest.raises(InputError, match="follow-up"):
        vol.match_lesions({"M0": first, "M6": follow}, transforms={"M0": transform})


def test_match_tolerance_links_lesions_that_do_not_share_a_voxel():
    a = np.zeros((12, 12, 12), np.uint8)
    b = np.zeros_like(a)
    a[3:5, 3:5, 3:5] = 1
    b[6:8, 3:5, 3:5] = 1  # moved 3 voxels: a gap of 1 voxel (2 mm between voxel centres)
    strict = vol.match_lesions([_img(a), _img(b)])
    assert sorted(strict["category"]) == ["disappeared", "new"]
    near = vol.match_lesions([_img(a), _img(b)], tolerance_mm=2.0)
    assert near["category"].tolist() == ["stable"]
    assert vol.match_lesions([_img(a), _img(b)], tolerance_mm=1.9)["category"].size == 2
    with pytest.raises(InputError, match="tolerance_mm"):
        vol.match_lesions([_img(a), _img(b)], tolerance_mm=-1)


def test_lesion_figures_render_headless_with_truth_counts(study, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    sub, ses, _, session, paths = study[0]
    flair = paths["seg"].parents[5] / sub / ses / "anat" / f"{sub}_{ses}_FLAIR.nii.gz"
    path = tmp_path / "lesions.png"
    fig = vol.plot_lesions(flair, paths["lesion"], paths["seg"], path=path)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    for location, truth in session["lesions"]["by_class"].items():
        if truth["count"]:
            assert f"{location.replace('_', ' ')} ({truth['count']})" in legend
    assert path.stat().st_size > 10_000
    masks = {s: paths["lesion"].parents[2] / s / "anat"
             / paths["lesion"].name.replace(ses, s) for s in ("ses-M0", "ses-M3", "ses-M6")}
    tracks = vol.match_lesions(masks, participant_id=sub)
    fig = vol.plot_lesion_evolution(tracks, path=tmp_path / "evolution.svg")
    assert (tmp_path / "evolution.svg").read_text().startswith("<?xml")
    bars = sum(len(c) for c in fig.axes[0].containers)
    assert bars == tracks["category"].nunique()  # one bar per category for one patient
    with pytest.raises(InputError, match="must end with"):
        vol.plot_lesion_evolution(tracks, path=tmp_path / "evolution.jpg")
    with pytest.raises(InputError, match="match_lesions"):
        vol.plot_lesion_evolution(pd.DataFrame({"x": [1]}))
