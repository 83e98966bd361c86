"""NAWM regions and ROI tables against hand-computed truth on small grids."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from msimaging.dti.rois import ROI, nawm_rois, roi_stats
from msimaging.errors import InputError, MSImagingWarning

AFFINE = np.array([[2.0, 0, 0, -21.0], [0, 2.0, 0, -21.0], [0, 0, 2.0, -21.0], [0, 0, 0, 1]])
SHAPE = (22, 22, 22)  # voxel centres x = -21, -19, ..., 21 mm: 11 voxels each side of x = 0


def _img(data, affine=AFFINE):
    return nib.Nifti1Image(np.asarray(data), affine)


@pytest.fixture
def masks():
    wm = np.zeros(SHAPE, np.uint8)
    wm[2:20, 2:20, 2:20] = 1  # 18^3 voxels, 9 columns on each side of x = 0
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[4:6, 10:12, 10:12] = 1  # 8 voxels, left hemisphere (x = -13, -11 mm)
    return wm, lesion


def test_nawm_split_and_lesion_removal(masks):
    wm, lesion = masks
    identity = np.eye(4)
    whole, left, right = nawm_rois(_img(wm), _img(lesion), to_mni=identity)
    assert (whole.label, left.label, right.label) == ("NAWM", "NAWM_left", "NAWM_right")
    assert whole.n_voxels == 18**3 - 8
    assert left.n_voxels == 9 * 18 * 18 - 8
    assert right.n_voxels == 9 * 18 * 18


def test_midsagittal_plane_comes_from_the_mni_transform(masks):
    wm, _ = masks
    # The subject's midline sits at world x = +4 mm: MNI x = world x - 4.
    to_mni = np.eye(4)
    to_mni[0, 3] = -4.0
    _, left, right = nawm_rois(_img(wm), to_mni=to_mni)
    # Voxel centres with world x < 4 mm: x = -17 ... 3 -> 11 columns of the 18.
    assert left.n_voxels == 11 * 18 * 18
    assert right.n_voxels == 7 * 18 * 18


def test_perilesional_margin_in_mm(masks):
    wm, _ = masks
    single = np.zeros(SHAPE, np.uint8)
    single[10, 10, 10] = 1
    whole, _, _ = nawm_rois(_img(wm), _img(single), margin_mm=2.0, to_mni=np.eye(4))
    # 2 mm = one voxel: the lesion and its 6 face neighbours go.
    assert whole.n_voxels == 18**3 - 7
    whole, _, _ = nawm_rois(_img(wm), _img(single), margin_mm=2.9, to_mni=np.eye(4))
    # 2.83 mm = edge neighbours too: 1 + 6 + 12.
    assert whole.n_voxels == 18**3 - 19


def test_probability_wm_needs_threshold(masks):
    wm, _ = masks
    prob = wm * 0.8
    with pytest.raises(InputError, match="not binary"):
        nawm_rois(_img(prob.astype(np.float32)), to_mni=np.eye(4))
    whole, _, _ = nawm_rois(_img(prob.astype(np.float32)), to_mni=np.eye(4), wm_threshold=0.5)
    assert whole.n_voxels == 18**3


def test_roi_stats_matches_hand_computation(masks):
    wm, lesion = masks
    rois = nawm_rois(_img(wm), _img(lesion), to_mni=np.eye(4))
    x = np.indices(SHAPE)[0].astype(np.float32)  # map value = voxel index along x
    fa = np.where(x < 11, 0.4, 0.6).astype(np.float32)
    table = roi_stats({"fa": _img(fa), "md": _img(x * 1e-4)}, rois,
                      participant_id="sub-01", session_id="ses-M0")
    assert list(table.columns) == [
        "participant_id", "session_id", "roi", "hemisphere", "metric", "mean", "median", "sd",
        "n_voxels", "volume_mm3", "unit",
    ]
    row = table.set_index(["roi", "metric"])
    assert row.loc[("NAWM_left", "fa"), "mean"] == pytest.approx(0.4)
    assert row.loc[("NAWM_right", "fa"), "sd"] == pytest.approx(0.0, abs=1e-7)
    # Whole NAWM mean of x: right columns 11..19 (full), left columns 2..10 minus the lesion.
    cols_right = np.arange(11, 20)
    cols_left = np.arange(2, 11)
    total = 18 * 18 * (cols_right.sum() + cols_left.sum()) - 4 * (4 + 5)
    assert row.loc[("NAWM", "md"), "mean"] == pytest.approx(total / (18**3 - 8) * 1e-4)
    assert row.loc[("NAWM", "md"), "unit"] == "mm^2/s"
    assert row.loc[("NAWM", "fa"), "volume_mm3"] == pytest.approx((18**3 - 8) * 8.0)


def test_roi_stats_accepts_a_mapping_of_masks(masks):
    wm, _ = masks
    table = roi_stats({"fa": _img(np.ones(SHAPE, np.float32))}, {"WM": _img(wm)})
    assert table.loc[0, "hemisphere"] == "both" and table.loc[0, "mean"] == 1.0


def test_no_transform_warns(masks):
    wm, _ = masks
    with pytest.warns(MSImagingWarning, match="world x = 0"):
        nawm_rois(_img(wm))


def test_lesion_mask_on_another_grid_without_a_transform(masks):
    wm, lesion = masks
    other = AFFINE.copy()
    other[:3, 3] += 5.0
    with pytest.raises(InputError, match=r"lesion_mask.*not on the grid of wm_mask"):
        nawm_rois(_img(wm), _img(lesion, other), to_mni=np.eye(4))


def test_empty_wm_mask():
    with pytest.raises(InputError, match=r"wm_mask.*empty"):
        nawm_rois(_img(np.zeros(SHAPE, np.uint8)), to_mni=np.eye(4))


def test_all_wm_in_lesions():
    wm = np.zeros(SHAPE, np.uint8)
    wm[5, 5, 5] = 1
    with pytest.raises(InputError, match="no normal-appearing WM"):
        nawm_rois(_img(wm), _img(wm), to_mni=np.eye(4))


def test_one_hemisphere_only_is_an_error(masks):
    wm, _ = masks
    shift = np.eye(4)
    shift[0, 3] = 100.0  # everything lands at MNI x > 0
    with pytest.raises(InputError, match="NAWM left: no voxel"):
        nawm_rois(_img(wm), to_mni=shift)


def test_bad_arguments(masks):
    wm, _ = masks
    with pytest.raises(InputError, match="margin_mm"):
        nawm_rois(_img(wm), margin_mm=-1, to_mni=np.eye(4))
    with pytest.raises(InputError, match="to_mni must be a 4x4"):
        nawm_rois(_img(wm), to_mni=np.eye(3))
    rois = nawm_rois(_img(wm), to_mni=np.eye(4))
    small = _img(np.ones((5, 5, 5), np.float32))
    with pytest.raises(InputError, match=r"map 'fa'.*not on the grid"):
        roi_stats({"fa": small}, rois)
    with pytest.raises(InputError, match="non-empty sequence of ROI"):
        roi_stats({"fa": small}, [1, 2])
    assert isinstance(rois[0], ROI)
