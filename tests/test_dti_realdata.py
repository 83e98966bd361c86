"""Tensor fitting on a real human DWI (../shared/realdata/dwi_philips), never copied here.

Philips Ingenia Elition X, 112x112x32 at 2 mm, 5 b~0 + 12 directions at b=1000, affine with a
negative determinant, FSL-convention .bvec (dcm2niix). Ground truth:

* dipy's ``TensorModel`` (same WLS method, dipy's own FSL reader, dipy's voxel-frame gradient
  table, which equals the FSL .bvec on this det < 0 image);
* anatomy: the corpus callosum at the midline runs left-right and the corticospinal tract in
  the corona radiata runs inferior-superior, in world (scanner) space;
* FSL's definition of the .bvec: a copy flipped along the first axis (affine adjusted so
  that every voxel keeps its world position, determinant now positive) read with the SAME
  .bvec file must give the same world-space directions.

Regions are found from FA and the image geometry only (never from the eigenvectors):
the midline is the world-x centre of the brain mask, the corpus callosum the largest
connected set of FA > 0.5 voxels within 3 mm of it, and the corticospinal box is placed
relative to the corpus callosum (bounds of the CST corona-radiata waypoint of
``msimaging.atlases.tracts``, MNI x 12-45 mm, y -30 to -6 mm, z 45-68 mm, rescaled by the
subject's callosal length and anchored at its top and anterior-posterior centre).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from msimaging.dti.tensor import fit_tensor

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "dwi_philips"
DWI = DATA / "dwi.nii.gz"

pytestmark = pytest.mark.skipif(
    not DWI.exists(),
    reason=f"real DWI not found at {DATA} (the shared real-data folder beside the project); "
    "these tests need it and never download anything",
)

MNI_CC_LENGTH_MM = 77.0  # genu front (y +35) to splenium back (y -42) in MNI space


def _data(img: nib.Nifti1Image) -> np.ndarray:
    return np.asanyarray(img.dataobj).astype(np.float64)


def _fit(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the floored-signal warning is tested via counts
        return fit_tensor(path, **kwargs)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The original fit, dipy's fit, and fits of a det > 0 copy with the same .bvec."""
    from dipy.core.gradients import gradient_table
    from dipy.io import read_bvals_bvecs
    from dipy.reconst.dti import TensorModel

    original = _fit(DWI)
    img = nib.load(DWI)
    assert np.linalg.det(img.affine[:3, :3]) < 0
    mask = _data(original.mask) > 0
    bvals, bvecs = read_bvals_bvecs(str(DATA / "dwi.bval"), str(DATA / "dwi.bvec"))
    # det < 0: dipy's voxel frame is the FSL .bvec as written. The file has 6 decimals (norms
    # 1 ± 1e-6); msimaging normalises the diffusion directions, so dipy gets them normalised.
    weighted = bvals > 50
    bvecs[weighted] /= np.linalg.norm(bvecs[weighted], axis=1, keepdims=True)
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=50)
    reference = TensorModel(gtab, fit_method="WLS").fit(img.get_fdata(), mask=mask)

    # det > 0 copy: data reversed along i, affine composed with the index flip, so every
    # voxel keeps its world position; the .bvec file is copied unchanged (FSL's definition).
    folder = tmp_path_factory.mktemp("dwi_det_positive")
    n_i = img.shape[0]
    index_flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    index_flip[0, 3] = n_i - 1
    flipped_affine = img.affine @ index_flip
    # float64, unscaled: the very numbers nibabel gives for the original (no re-quantising).
    flipped = nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1].astype(np.float64), flipped_affine)
    flipped.set_sform(flipped_affine, code=1)
    flipped.set_qform(flipped_affine, code=1)
    path = folder / "dwi.nii.gz"
    flipped.to_filename(path)
    shutil.copy(DATA / "dwi.bval", folder / "dwi.bval")
    shutil.copy(DATA / "dwi.bvec", folder / "dwi.bvec")
    assert np.linalg.det(nib.load(path).affine[:3, :3]) > 0
    flipped_mask = nib.Nifti1Image(mask[::-1].astype(np.uint8), flipped_affine)
    positive = _fit(path, mask=flipped_mask)
    # What the code did before: the FSL .bvec taken as voxel-frame, without FSL's x flip.
    no_flip = _fit(path, mask=flipped_mask, bvec_convention="voxel")
    return {
        "fit": original, "dipy": reference, "mask": mask, "positive": positive,
        "no_flip": no_flip, "affine": img.affine, "raw": np.asanyarray(img.dataobj),
        "gtab": gtab,
    }


def _regions(fit) -> dict[str, np.ndarray]:
    """Corpus callosum at the midline and the corticospinal tract in the corona radiata."""
    fa = _data(fit.fa)
    brain = _data(fit.mask) > 0
    affine = fit.fa.affine
    ijk = np.indices(fa.shape).reshape(3, -1).T
    x, y, z = (ijk @ affine[:3, :3].T + affine[:3, 3]).T.reshape(3, *fa.shape)
    dx = x - x[brain].mean()  # world mm from the midline (brain-mask centre)
    midline_wm = brain & (np.abs(dx) <= 3.0) & (fa > 0.5)
    labels, n = ndimage.label(midline_wm, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum(midline_wm, labels, range(1, n + 1))
    cc = labels == 1 + int(np.argmax(sizes))
    length = y[cc].max() - y[cc].min()
    centre_y, top_z = (y[cc].max() + y[cc].min()) / 2, z[cc].max()
    scale = length / MNI_CC_LENGTH_MM
    # CST corona-radiata waypoint: MNI |x| 12-45, y -30..-6 (i.e. 0.34..0.03 callosal
    # lengths behind the callosal centre at y -3.5), z 45-68 (18-41 mm above the callosal
    # top at z 27), mapped with the subject's callosal landmarks.
    cst = (
        brain & (fa > 0.4)
        & (np.abs(dx) >= 12 * scale) & (np.abs(dx) <= 45 * scale)
        & (y >= centre_y - 0.34 * length) & (y <= centre_y - 0.03 * length)
        & (z >= top_z + 18 * scale) & (z <= top_z + 41 * scale)
    )
    return {"cc": cc, "cst": cst}


def test_tensor_maps_equal_dipy_where_positive_definite(real):
    fit, reference, mask = real["fit"], real["dipy"], real["mask"]
    positive = mask & (_data(fit.negative_eigenvalue) == 0)
    assert positive.sum() > 0.95 * mask.sum()
    assert np.max(np.abs(_data(fit.fa) - reference.fa)[positive]) < 1e-6
    for name in ("md", "ad", "rd"):
        ours, theirs = _data(getattr(fit, name))[positive], getattr(reference, name)[positive]
        assert np.max(np.abs(ours - theirs) / theirs) < 1e-6, name
    # Eigenvectors up to sign, where the principal direction is defined (λ1 - λ2 > 1% of λ1).
    evals = reference.evals
    defined = positive & (evals[..., 0] - evals[..., 1] > 0.01 * evals[..., 0])
    dots = np.abs(np.sum(_data(fit.v1) * reference.evecs[..., 0], axis=-1))[defined]
    assert 1 - dots.min() < 1e-6


def test_nonpositive_signals_and_negative_eigenvalues_are_counted(real):
    from dipy.reconst.dti import design_matrix

    fit, mask, raw, reference = real["fit"], real["mask"], real["raw"], real["dipy"]
    nonpositive = np.any(raw <= 0, axis=-1) & mask
    assert fit.n_nonpositive_signal_voxels == int(nonpositive.sum()) > 0
    np.testing.assert_array_equal(_data(fit.nonpositive_signal) > 0, nonpositive)
    assert fit.n_floored == int(np.count_nonzero(raw[mask] <= 0))
    # dipy clips eigenvalues below its floor to the floor: those voxels are ours, flagged.
    floor = 1e-6 / -design_matrix(real["gtab"]).min()  # dipy's min_diffusivity
    clipped = mask & (reference.evals[..., 2] <= floor * (1 + 1e-6))
    assert fit.n_negative_eigenvalue_voxels == int(clipped.sum()) > 0
    assert fit.counts["n_negative_eigenvalue_voxels"] == fit.n_negative_eigenvalue_voxels


def test_principal_directions_follow_the_anatomy_in_world_space(real):
    fit = real["fit"]
    regions = _regions(fit)
    v1 = np.abs(_data(fit.v1_world))
    cc, cst = v1[regions["cc"]], v1[regions["cst"]]
    assert len(cc) > 100 and len(cst) > 100
    # Corpus callosum: left-right (world x); corticospinal: inferior-superior (world z).
    assert np.mean(cc[:, 0] > 0.8) > 0.9
    assert np.mean(cst[:, 2] > 0.8) > 0.7
    assert np.mean(cc[:, 2] > 0.8) < 0.05 and np.mean(cst[:, 0] > 0.8) < 0.1


def test_det_positive_copy_with_the_same_fsl_bvec_gives_the_same_world_directions(real):
    fit, positive, no_flip, mask = real["fit"], real["positive"], real["no_flip"], real["mask"]
    # The copy's voxel i holds the original voxel n-1-i: same world position.
    fa_copy = _data(positive.fa)[::-1]
    assert np.max(np.abs(fa_copy - _data(fit.fa))) < 1e-6
    original = _data(fit.v1_world)
    copy = _data(positive.v1_world)[::-1]
    evals_gap = _data(fit.ad) - _data(fit.rd)  # λ1 well separated from the others
    defined = mask & (evals_gap > 0.05 * _data(fit.ad))
    sign = np.sign(np.sum(original * copy, axis=-1, keepdims=True))
    assert np.max(np.abs(original - sign * copy)[defined]) < 1e-5
    # Skipping FSL's x flip (reading the .bvec as voxel-frame, as before) mirrors them.
    mirrored = _data(no_flip.v1_world)[::-1]
    dots = np.abs(np.sum(original * mirrored, axis=-1))[defined & (_data(fit.fa) > 0.3)]
    assert np.mean(dots < 0.9) > 0.3
    np.testing.assert_allclose(_data(no_flip.fa)[::-1], _data(fit.fa), atol=1e-6)
