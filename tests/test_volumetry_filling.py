"""Lesion filling against ground truth on small synthetic images."""

from __future__ import annotations

import hashlib
import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from msimaging.errors import InputError, MSImagingWarning
from msimaging.volumetry.filling import fill_lesions

SHAPE = (30, 30, 30)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
AFFINE[:3, 3] = -15.0
LESION = (slice(12, 18), slice(12, 18), slice(12, 18))  # 6^3 = 216 voxels


def _img(data, affine=AFFINE):
    return nib.Nifti1Image(np.asarray(data), affine)


def _ring(lesion, inner_mm=1.0, outer_mm=3.0, voxel_mm=(1.0, 1.0, 1.0)):
    d = ndimage.distance_transform_edt(~lesion, sampling=voxel_mm)
    return (d > inner_mm) & (d <= outer_mm)


@pytest.fixture
def scene():
    """WM ~ N(100, 5) inside a zero background, one lesion block at 40."""
    rng = np.random.default_rng(123)
    t1 = np.zeros(SHAPE)
    t1[2:28, 2:28, 2:28] = rng.normal(100.0, 5.0, size=(26, 26, 26))
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[LESION] = 1
    t1[LESION] = 40.0
    return t1, lesion


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_filled_intensities_match_the_surrounding_wm(scene, no_warnings):
    t1, lesion = scene
    before = t1.copy()
    out = fill_lesions(_img(t1), _img(lesion), seed=0)
    filled = np.asanyarray(out.dataobj)
    inside = lesion.astype(bool)
    assert abs(filled[inside].mean() - 100.0) < 1.5
    assert 3.5 < filled[inside].std() < 6.5
    # Every filled value is a voxel value of the (1, 3] mm ring.
    assert np.isin(filled[inside], t1[_ring(inside)]).all()
    # Outside the lesion: bit for bit; the input array is untouched.
    assert filled[~inside].tobytes() == t1[~inside].tobytes()
    assert np.array_equal(t1, before)
    assert not np.shares_memory(filled, t1)
    assert filled.dtype == t1.dtype
    assert np.array_equal(out.affine, AFFINE)


def test_seed_makes_the_draws_reproducible(scene):
    t1, lesion = scene
    a = np.asanyarray(fill_lesions(_img(t1), _img(lesion), seed=7).dataobj)
    b = np.asanyarray(fill_lesions(_img(t1), _img(lesion), seed=7).dataobj)
    c = np.asanyarray(fill_lesions(_img(t1), _img(lesion), seed=8).dataobj)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_file_input_is_unchanged_and_header_kept(scene, tmp_path):
    t1, lesion = scene
    path = tmp_path / "t1.nii.gz"
    img = _img(t1.astype(np.float32))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    nib.save(_img(lesion), tmp_path / "lesion.nii.gz")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = fill_lesions(path, tmp_path / "lesion.nii.gz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert np.asanyarray(out.dataobj).dtype == np.float32
    assert out.get_data_dtype() == np.float32
    assert out.header.get_xyzt_units() == ("mm", "sec")
    assert np.allclose(out.affine, AFFINE)


def test_each_lesion_is_filled_from_its_own_ring(no_warnings):
    # Two lesions in regions of different intensity: each takes its neighbours' values.
    rng = np.random.default_rng(1)
    t1 = np.empty(SHAPE)
    t1[:15] = rng.normal(100.0, 1.0, size=(15, 30, 30))
    t1[15:] = rng.normal(200.0, 1.0, size=(15, 30, 30))
    lesion = np.zeros(SHAPE, bool)
    lesion[4:7, 10:13, 10:13] = True
    lesion[22:25, 10:13, 10:13] = True
    t1[lesion] = 10.0
    filled = np.asanyarray(fill_lesions(_img(t1), _img(lesion.astype(np.uint8))).dataobj)
    assert np.all(np.abs(filled[4:7, 10:13, 10:13] - 100.0) < 5)
    assert np.all(np.abs(filled[22:25, 10:13, 10:13] - 200.0) < 5)


def test_lesion_at_the_image_edge(no_warnings):
    rng = np.random.default_rng(2)
    t1 = rng.normal(100.0, 5.0, size=SHAPE)
    lesion = np.zeros(SHAPE, bool)
    lesion[0:3, 0:4, 10:14] = True
    t1[lesion] = 40.0
    filled = np.asanyarray(fill_lesions(_img(t1), _img(lesion.astype(np.uint8))).dataobj)
    assert np.isin(filled[lesion], t1[_ring(lesion)]).all()
    assert filled[~lesion].tobytes() == t1[~lesion].tobytes()


def test_wm_mask_restricts_sampling_to_wm(no_warnings):
    rng = np.random.default_rng(3)
    t1 = rng.normal(100.0, 5.0, size=SHAPE)
    lesion = np.zeros(SHAPE, bool)
    lesion[LESION] = True
    # A GM shell at 60 within 2 mm of the lesion: half of the (1, 3] mm ring.
    gm = ~lesion & (ndimage.distance_transform_edt(~lesion) <= 2.0)
    t1[gm] = rng.normal(60.0, 5.0, size=int(gm.sum()))
    t1[lesion] = 40.0
    wm = (~gm & ~lesion).astype(np.uint8)
    lesion_img = _img(lesion.astype(np.uint8))

    without = np.asanyarray(fill_lesions(_img(t1), lesion_img).dataobj)[lesion]
    assert np.isin(without, t1[gm]).any()
    with_wm = np.asanyarray(fill_lesions(_img(t1), lesion_img, wm_mask=_img(wm)).dataobj)
    assert np.isin(with_wm[lesion], t1[_ring(lesion) & wm.astype(bool)]).all()
    assert not np.isin(with_wm[lesion], t1[gm]).any()


def test_ring_grows_when_too_few_samples_then_falls_back_with_a_warning():
    rng = np.random.default_rng(4)
    t1 = rng.normal(100.0, 5.0, size=SHAPE)
    lesion = np.zeros(SHAPE, bool)
    lesion[LESION] = True
    # No WM within 5 mm of the lesion: the (1, 3] mm ring has no sample.
    near = ndimage.distance_transform_edt(~lesion) <= 5.0
    wm = (~near).astype(np.uint8)
    args = (_img(t1), _img(lesion.astype(np.uint8)))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grown = np.asanyarray(fill_lesions(*args, wm_mask=_img(wm)).dataobj)[lesion]
    # One 1 mm step beyond 5 mm holds enough WM: samples come from 5 < d <= 6 mm.
    d = ndimage.distance_transform_edt(~lesion)
    assert np.isin(grown, t1[(d > 5.0) & (d <= 6.0)]).all()

    with pytest.warns(MSImagingWarning, match=r"lesion 1 \(216 voxels"):
        fallback = fill_lesions(*args, wm_mask=_img(wm), max_ring_mm=4.0)
    values = np.asanyarray(fallback.dataobj)[lesion]
    assert np.isin(values, t1[wm.astype(bool)]).all()


def test_voxel_sizes_in_mm_are_honoured(no_warnings):
    # 1 x 1 x 3 mm voxels: a ring of 3 mm reaches one slice up and down, not two.
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    t1 = np.full(SHAPE, 100.0)
    t1[..., :13] = 500.0
    t1[..., 18:] = 500.0
    t1[..., 13:18] += np.arange(30 * 30 * 5).reshape(30, 30, 5) * 1e-3  # distinct values
    lesion = np.zeros(SHAPE, bool)
    lesion[13:17, 13:17, 15] = True
    t1[lesion] = 40.0
    out = fill_lesions(_img(t1, affine), _img(lesion.astype(np.uint8), affine), ring_mm=(0, 3))
    filled = np.asanyarray(out.dataobj)[lesion]
    assert np.all(filled < 200.0)
    assert np.isin(filled, t1[_ring(lesion, 0.0, 3.0, (1.0, 1.0, 3.0))]).all()


def test_integer_image_keeps_its_dtype(scene, no_warnings):
    t1, lesion = scene
    t1_int = np.round(t1).astype(np.int16)
    out = fill_lesions(_img(t1_int), _img(lesion))
    filled = np.asanyarray(out.dataobj)
    inside = lesion.astype(bool)
    assert filled.dtype == np.int16
    assert out.get_data_dtype() == np.int16
    assert np.isin(filled[inside], t1_int[_ring(inside)]).all()
    assert abs(filled[inside].mean() - 100.0) < 1.5
    assert np.array_equal(filled[~inside], t1_int[~inside])


def test_probability_lesion_mask_with_threshold(scene):
    t1, lesion = scene
    prob = lesion * 0.9 + 0.05
    expected = np.asanyarray(fill_lesions(_img(t1), _img(lesion), seed=3).dataobj)
    out = fill_lesions(_img(t1), _img(prob), threshold=0.5, seed=3)
    assert np.array_equal(np.asanyarray(out.dataobj), expected)


def test_empty_mask_returns_an_unchanged_copy(scene, no_warnings):
    t1, _ = scene
    out = fill_lesions(_img(t1), _img(np.zeros(SHAPE, np.uint8)))
    data = np.asanyarray(out.dataobj)
    assert data.tobytes() == t1.tobytes()
    assert not np.shares_memory(data, t1)


def test_several_lesions_all_filled_and_labelled_26_connected(scene, no_warnings):
    t1, _ = scene
    lesion = np.zeros(SHAPE, bool)
    lesion[6, 6, 6] = lesion[7, 7, 7] = True  # diagonal neighbours: one lesion
    lesion[20:22, 20:22, 20:22] = True
    t1 = t1.copy()
    t1[lesion] = 40.0
    filled = np.asanyarray(fill_lesions(_img(t1), _img(lesion.astype(np.uint8))).dataobj)
    assert np.all(filled[lesion] > 70.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ring_mm": (3.0, 1.0)}, "ring_mm"),
        ({"ring_mm": (-1.0, 2.0)}, "ring_mm"),
        ({"ring_mm": (1.0, np.inf)}, "ring_mm"),
        ({"ring_mm": (1.0,)}, "ring_mm"),
        ({"ring_mm": "wide"}, "ring_mm"),
        ({"max_ring_mm": 2.0}, "max_ring_mm"),
        ({"min_samples": 0}, "min_samples"),
        ({"seed": "abc"}, "seed"),
    ],
)
def test_bad_arguments(scene, kwargs, match):
    t1, lesion = scene
    with pytest.raises(InputError, match=match):
        fill_lesions(_img(t1), _img(lesion), **kwargs)


def test_bad_images(scene):
    t1, lesion = scene
    with pytest.raises(InputError, match=r"t1 .*4 dimensions"):
        fill_lesions(_img(np.stack([t1, t1], axis=-1)), _img(lesion))
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    with pytest.raises(InputError, match=r"lesion_mask .*not on the grid of t1"):
        fill_lesions(_img(t1), _img(lesion, shifted))
    with pytest.raises(InputError, match=r"lesion_mask .*not on the grid of t1"):
        fill_lesions(_img(t1), _img(lesion[:-1]))
    with pytest.raises(InputError, match=r"lesion_mask .*not binary.*threshold="):
        fill_lesions(_img(t1), _img(lesion * 0.7))
    with pytest.raises(InputError, match=r"wm_mask .*not on the grid of t1"):
        fill_lesions(_img(t1), _img(lesion), wm_mask=_img(lesion[:-1]))
    bad = t1.copy()
    bad[3, 3, 3] = np.nan
    with pytest.raises(InputError, match=r"t1 .*NaN"):
        fill_lesions(_img(bad), _img(lesion))
    with pytest.raises(InputError, match=r"no normal-appearing WM voxel"):
        fill_lesions(_img(t1), _img(lesion), wm_mask=_img(lesion))
