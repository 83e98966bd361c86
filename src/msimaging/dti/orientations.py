"""Fibre orientations beyond the tensor: CSD fits and peaks images (MRtrix ``sh2peaks``).

* :func:`fit_csd` fits dipy's constrained spherical deconvolution (single-shell CSD with a
  response estimated from the data; multi-shell multi-tissue CSD when the DWI has two or more
  non-zero shells) and returns a :class:`CSDFit` (fODF SH coefficients + its peaks).
* :class:`Peaks` holds up to ``n_peaks`` fibre directions and amplitudes per voxel, built from
  a CSD fit (:func:`peaks_from_csd`), from a tensor fit (:func:`peaks_from_tensor`: ``v1``
  weighted by FA) or read from a user's peaks image (:func:`load_peaks`);
  :func:`save_peaks` writes one.

Every one of them is accepted by :func:`msimaging.dti.tracts.track` and
:func:`~msimaging.dti.tracts.bundle` in place of a :class:`~msimaging.dti.tensor.TensorFit`
(they expose the same ``fa``, ``v1`` and ``mask`` images).

Frames (the one place this is written down)
-------------------------------------------
* **In memory** (``CSDFit.shm_coeff``, ``Peaks.directions``, ``TensorFit.v1``): the **voxel
  frame**, axes along the image axes i, j, k, as dipy's tracking expects. The CSD is fitted
  with the gradient table of :class:`msimaging.io.DWI`, which converts FSL ``.bvec`` files to
  the voxel frame (x negated when the affine's determinant is positive), exactly as
  :func:`~msimaging.dti.tensor.fit_tensor` does, so CSD peaks and ``TensorFit.v1`` agree.
* **On disk** (:func:`save_peaks` / :func:`load_peaks`): the **MRtrix3 peaks convention**
  (``sh2peaks``, also written by TractSeg and read by MRtrix's ``peakscheck``): a 4-D image
  with ``3 * n_peaks`` volumes, peak ``p`` in volumes ``3p, 3p+1, 3p+2`` as an (x, y, z)
  vector in the **world (scanner RAS+) frame** of the image's affine; the amplitude is the
  vector's length; an absent peak is a zero vector (written) or NaN (accepted on reading,
  as ``sh2peaks`` writes). Conversion uses the rotation of the affine
  (:func:`msimaging.io.voxel_to_world_rotation`: ``world = R @ voxel``), so oblique grids and
  either sign of the determinant are handled; no FSL-style x flip applies to peaks.

Peaks of a CSD fit are the local maxima of the fODF on dipy's default hemisphere (362
directions), each refined to the best of the directions within 6 degrees of it on that
hemisphere subdivided once (1,442 directions, about 4 degrees apart), for all voxels at once
(vectorised, no per-voxel loop: 3 s for the 128,000 voxels of the default synthetic study,
13 s when searching the fine sphere directly), keeping up to ``n_peaks`` maxima at or above
``relative_peak_threshold`` times the voxel's largest one and at least
``min_separation_angle_deg`` apart (dipy's ``peak_directions`` rules, its defaults 0.5 and
25 degrees).

dipy is imported inside the functions that use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from msimaging.derivatives import atomic_path
from msimaging.errors import DependencyError, InputError
from msimaging.io import (
    DWI,
    ImageLike,
    check_same_grid,
    describe,
    load_dwi,
    load_image,
    voxel_to_world_rotation,
)

__all__ = [
    "CSDFit",
    "Peaks",
    "fit_csd",
    "load_peaks",
    "peaks_from_csd",
    "peaks_from_tensor",
    "save_peaks",
]

#: FA above which voxels are taken as single-fibre white matter for the response function.
RESPONSE_FA = 0.7
# Fewest voxels for a response estimate; below it the highest-FA voxels of the mask are used.
_MIN_RESPONSE_VOXELS = 50
# Voxels whose fODF is evaluated on the sphere at once (memory ~ chunk * 1,450 * 4 bytes
# per array).
_PEAK_CHUNK_VOXELS = 10_000
# Percentile of the first peak's amplitude that maps to 1 in the amplitude tracking metric.
_AMPLITUDE_PERCENTILE = 99.0


# --------------------------------------------------------------------------------------------
# Result objects
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class Peaks:
    """Fibre directions and amplitudes per voxel.

    Attributes
    ----------
    directions : ndarray, shape (X, Y, Z, n_peaks, 3), float32
        Unit directions in the **voxel frame** (sign arbitrary); zero vectors for absent
        peaks. Ordered by decreasing amplitude.
    values : ndarray, shape (X, Y, Z, n_peaks), float32
        Amplitudes (fODF value for CSD, FA for a tensor, vector length for a file); 0 absent.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the grid.
    mask : nibabel.Nifti1Image
        uint8 0/1: voxels where tracking may go.
    fa : nibabel.Nifti1Image
        float32 tracking metric compared with ``fa_threshold`` by
        :func:`~msimaging.dti.tracts.track`: FA when known (``fa_source == "fa"``), else the
        first peak's amplitude divided by its 99th percentile in the mask and clipped to
        [0, 1] (``fa_source == "amplitude"``).
    fa_source : {"fa", "amplitude"}
    source : str
        Where the peaks came from ("csd", "tensor" or the file name).
    """

    directions: np.ndarray
    values: np.ndarray
    affine: np.ndarray
    mask: nib.Nifti1Image
    fa: nib.Nifti1Image
    fa_source: str
    source: str

    @property
    def n_peaks(self) -> int:
        return int(self.directions.shape[3])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.directions.shape[:3])

    @property
    def v1(self) -> nib.Nifti1Image:
        """4-D (x, y, z, 3) float32: the largest peak's unit direction (voxel frame)."""
        return nib.Nifti1Image(self.directions[..., 0, :].astype(np.float32), self.affine)

    def world_directions(self) -> np.ndarray:
        """Unit directions (X, Y, Z, n_peaks, 3) in the world frame of the affine."""
        rotation = voxel_to_world_rotation(self.affine)
        return (self.directions.astype(np.float64) @ rotation.T).astype(np.float32)

    def to_mrtrix(self) -> nib.Nifti1Image:
        """The MRtrix3 ``sh2peaks`` image: (X, Y, Z, 3 * n_peaks) float32, world-frame vectors
        scaled by the amplitude, zeros for absent peaks (see the module notes)."""
        vectors = self.world_directions() * self.values[..., None]
        data = vectors.reshape(*self.shape, 3 * self.n_peaks).astype(np.float32)
        img = nib.Nifti1Image(data, self.affine)
        img.header.set_xyzt_units("mm")
        return img

    def __repr__(self) -> str:
        n_multi = int(((self.values > 0).sum(axis=3) >= 2).sum())
        return (
            f"Peaks({self.source}, shape={self.shape}, n_peaks={self.n_peaks}, "
            f"voxels with 2+ peaks={n_multi}, fa_source={self.fa_source!r})"
        )


@dataclass(frozen=True, repr=False)
class CSDFit:
    """A constrained spherical deconvolution fit.

    Attributes
    ----------
    shm_coeff : ndarray, shape (X, Y, Z, n_coefficients), float32
        fODF spherical-harmonic coefficients in dipy's default basis (``descoteaux07``,
        legacy), **voxel frame**; zero outside ``mask``.
    sh_order : int
        Maximum SH order.
    affine : ndarray, shape (4, 4)
    mask : nibabel.Nifti1Image
        uint8 0/1 fitted voxels (the tensor fit's mask).
    fa : nibabel.Nifti1Image
        FA of the tensor fitted to the same data: the tracking metric of
        :func:`~msimaging.dti.tracts.track` (the same FA threshold as for a tensor fit).
    peaks : Peaks
        The fODF peaks (see the module notes).
    model : {"csd", "msmt-csd"}
    response : tuple
        Single-shell: ``(eigenvalues (3,) mm²/s, S0)``; multi-shell: dipy's response object.
    n_response_voxels : int
        Voxels the response was estimated from (0 when ``response`` was given).
    n_directions : int
        Diffusion-weighted volumes used.
    """

    shm_coeff: np.ndarray
    sh_order: int
    affine: np.ndarray
    mask: nib.Nifti1Image
    fa: nib.Nifti1Image
    peaks: Peaks
    model: str
    response: Any
    n_response_voxels: int
    n_directions: int

    @property
    def v1(self) -> nib.Nifti1Image:
        """The largest fODF peak (voxel frame), as ``TensorFit.v1``."""
        return self.peaks.v1

    def __repr__(self) -> str:
        return (
            f"CSDFit({self.model}, sh_order={self.sh_order}, shape={self.peaks.shape}, "
            f"directions={self.n_directions}, response voxels={self.n_response_voxels})"
        )


# --------------------------------------------------------------------------------------------
# CSD
# --------------------------------------------------------------------------------------------
def default_sh_order(n_directions: int) -> int:
    """SH order used when none is given: 8 from 45 directions (45 coefficients), 6 from 28
    (28 coefficients), else 4. CSD's non-negativity constraint lets the fODF have more
    coefficients than there are measurements (Tournier et al. 2007: "super-resolved"), so 4
    (15 coefficients) is still usable with 12 directions."""
    if n_directions >= 45:
        return 8
    if n_directions >= 28:
        return 6
    return 4


def fit_csd(
    dwi: ImageLike | DWI,
    bvals: str | os.PathLike | np.ndarray | list | None = None,
    bvecs: str | os.PathLike | np.ndarray | list | None = None,
    mask: ImageLike | None = None,
    *,
    sh_order: int | None = None,
    response: Any = None,
    response_fa: float = RESPONSE_FA,
    tensor: Any = None,
    n_peaks: int = 3,
    relative_peak_threshold: float = 0.5,
    min_separation_angle_deg: float = 25.0,
    b0_threshold: float = 50.0,
    bvec_convention: str | None = None,
    n_jobs: int = 1,
) -> CSDFit:
    """Fit constrained spherical deconvolution (dipy) in every brain voxel.

    Parameters
    ----------
    dwi, bvals, bvecs, mask, b0_threshold, bvec_convention
        As in :func:`msimaging.dti.fit_tensor` (a path, image or loaded
        :class:`~msimaging.io.DWI`; FSL ``.bvec`` convention by default, converted to the
        voxel frame). Without ``mask`` the tensor fit's ``median_otsu`` mask is used.
    sh_order : int, optional
        Maximum even SH order of the fODF; default :func:`default_sh_order` of the number of
        diffusion-weighted volumes (8 from 45, 6 from 28, else 4).
    response : optional
        Single-shell: ``(eigenvalues, S0)`` as returned by dipy's response functions. Default:
        estimated from the data with ``dipy.reconst.csdeconv.response_from_mask_ssst`` on the
        voxels of the mask with FA > ``response_fa`` (at least 50 voxels: otherwise the 50
        highest-FA voxels). Multi-shell: dipy's 3-tissue response (default from
        ``dipy.reconst.mcsd.mask_for_response_msmt`` / ``response_from_mask_msmt``).
    response_fa : float
        FA threshold of the single-fibre voxels used for the response.
    tensor : msimaging.dti.TensorFit, optional
        A tensor fit of the same DWI (reused for FA, mask and the response voxels); fitted
        here (WLS) when omitted.
    n_peaks, relative_peak_threshold, min_separation_angle_deg
        Peak extraction (see :func:`peaks_from_csd`).
    n_jobs : int
        Processes for dipy's voxel-wise fit (``engine="joblib"`` when not 1; -1: all cores).
        dipy's CSD solves one small quadratic programme per voxel. Measured on this 2-core
        machine (shared): 22 s for the 128,000 mask voxels of the default synthetic study
        (sh_order 6, 30 directions; 3 s of it the peak search), 17 s for the 135,000 of the
        real Philips DWI (sh_order 4, 12 directions); ``n_jobs=2`` was not faster there
        (24 s: process start-up and data transfer). Pass a white-matter ``mask`` to fit
        fewer voxels.

    Returns
    -------
    CSDFit

    Raises
    ------
    InputError
        Invalid DWI, mask or parameters (messages name the file and the fix).
    DependencyError
        Multi-shell data without ``cvxpy`` (dipy's multi-shell CSD needs it).
    """
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, response_from_mask_ssst

    from msimaging.dti.tensor import fit_tensor

    if not isinstance(dwi, DWI):
        dwi = load_dwi(
            dwi, bvals, bvecs, b0_threshold=b0_threshold,
            bvec_convention="fsl" if bvec_convention is None else bvec_convention,
        )
    elif bvals is not None or bvecs is not None or bvec_convention is not None:
        raise InputError(
            "dwi is a loaded msimaging.io.DWI with its own gradient table; do not pass "
            "bvals=/bvecs=/bvec_convention= with it."
        )
    n_dirs = int((~dwi.b0_mask).sum())
    if sh_order is None:
        sh_order = default_sh_order(n_dirs)
    if isinstance(sh_order, bool) or not isinstance(sh_order, int | np.integer) or (
        sh_order < 2 or sh_order % 2
    ):
        raise InputError(f"sh_order must be an even integer >= 2, got {sh_order!r}.")
    sh_order = int(sh_order)
    if tensor is None:
        tensor = fit_tensor(dwi, mask=mask)
    elif mask is not None:
        raise InputError(
            "pass either mask= or tensor= to fit_csd, not both: with a tensor fit, its mask is "
            "the CSD mask (fit the tensor with your mask: fit_tensor(dwi, mask=mask))."
        )
    else:
        check_same_grid(dwi.img, tensor.fa, names=("dwi", "tensor.fa"))
    brain = np.asanyarray(tensor.mask.dataobj).astype(bool)
    fa = np.nan_to_num(np.asarray(tensor.fa.dataobj, np.float64))
    gtab = dwi.gradient_table()
    data = np.asanyarray(dwi.img.dataobj)
    shells = np.unique(np.round(dwi.bvals[~dwi.b0_mask], -2))
    n_response = 0
    if shells.size >= 2:
        model, response, n_response = _msmt_model(gtab, data, brain, fa, response, sh_order)
        kind = "msmt-csd"
    else:
        if response is None:
            response_fa = float(response_fa)
            single = brain & (fa > response_fa)
            if single.sum() < _MIN_RESPONSE_VOXELS:
                # Few very anisotropic voxels (low SNR, thick voxels): take the most
                # anisotropic ones rather than failing.
                order = np.argsort(np.where(brain, fa, -1.0), axis=None)[::-1]
                single = np.zeros(brain.shape, bool)
                single.flat[order[:_MIN_RESPONSE_VOXELS]] = True
            n_response = int(single.sum())
            response, _ = response_from_mask_ssst(gtab, data, single.astype(np.uint8))
        model = ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=sh_order)
        kind = "csd"
    # Fit the mask voxels only, as a (n, 1, 1, volumes) block: dipy loops over voxels.
    voxels = np.nonzero(brain)
    signal = np.asarray(data[voxels], np.float64)[:, None, None, :]
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int | np.integer) or n_jobs == 0:
        raise InputError(f"n_jobs must be a non-zero integer (-1: all cores), got {n_jobs!r}.")
    parallel = {} if n_jobs == 1 else {"engine": "joblib", "n_jobs": int(n_jobs)}
    coeff_flat = np.asarray(model.fit(signal, **parallel).shm_coeff)[:, 0, 0, :]
    if kind == "msmt-csd":
        # Keep the WM fODF only (dipy puts the isotropic compartments first).
        coeff_flat = coeff_flat[:, -_n_sh(sh_order):]
    shm = np.zeros((*brain.shape, coeff_flat.shape[1]), np.float32)
    # Voxels without signal (b0 of 0 in real data) give NaN fODFs: no fibre there.
    shm[voxels] = np.nan_to_num(coeff_flat, nan=0.0, posinf=0.0, neginf=0.0)
    peaks = peaks_from_csd(
        shm, sh_order, dwi.img.affine, brain, fa=tensor.fa, n_peaks=n_peaks,
        relative_peak_threshold=relative_peak_threshold,
        min_separation_angle_deg=min_separation_angle_deg,
    )
    return CSDFit(
        shm_coeff=shm, sh_order=sh_order, affine=np.asarray(dwi.img.affine, np.float64),
        mask=tensor.mask, fa=tensor.fa, peaks=peaks, model=kind, response=response,
        n_response_voxels=n_response, n_directions=n_dirs,
    )


def _n_sh(order: int) -> int:
    return (order + 1) * (order + 2) // 2


def _msmt_model(
    gtab: Any, data: np.ndarray, brain: np.ndarray, fa: np.ndarray, response: Any, order: int
) -> tuple[Any, Any, int]:
    try:
        import cvxpy  # noqa: F401  (dipy's multi-shell CSD solves its QP with cvxpy)
    except ImportError as exc:
        raise DependencyError(
            "multi-shell CSD (two or more non-zero b-value shells) needs cvxpy: "
            "pip install cvxpy; or pass the DWI of one shell to fit_csd."
        ) from exc
    from dipy.reconst.mcsd import (
        MultiShellDeconvModel,
        mask_for_response_msmt,
        multi_shell_fiber_response,
        response_from_mask_msmt,
    )

    n_voxels = 0
    if response is None:
        masked = np.where(brain[..., None], data, 0)
        wm, gm, csf = mask_for_response_msmt(gtab, masked, roi_radii=max(brain.shape))
        n_voxels = int(wm.sum())
        if min(wm.sum(), gm.sum(), csf.sum()) == 0:
            raise InputError(
                "multi-shell CSD: no voxel qualified as white matter, grey matter or CSF for "
                "the 3-tissue response (dipy mask_for_response_msmt); pass response=."
            )
        wm_r, gm_r, csf_r = response_from_mask_msmt(gtab, masked, wm, gm, csf)
        ubvals = np.unique(np.round(gtab.bvals, -2))
        response = multi_shell_fiber_response(order, ubvals, wm_r, gm_r, csf_r)
    return MultiShellDeconvModel(gtab, response, sh_order_max=order), response, n_voxels


# --------------------------------------------------------------------------------------------
# Peaks
# --------------------------------------------------------------------------------------------
def peaks_from_csd(
    shm_coeff: np.ndarray,
    sh_order: int,
    affine: np.ndarray,
    mask: np.ndarray,
    *,
    fa: nib.Nifti1Image | None = None,
    n_peaks: int = 3,
    relative_peak_threshold: float = 0.5,
    min_separation_angle_deg: float = 25.0,
) -> Peaks:
    """Peaks of fODFs given as SH coefficients (dipy ``descoteaux07`` legacy basis, voxel
    frame), for every mask voxel at once.

    Parameters
    ----------
    shm_coeff : ndarray (X, Y, Z, n_coefficients)
    sh_order : int
    affine : ndarray (4, 4)
    mask : bool ndarray (X, Y, Z)
    fa : nibabel image, optional
        FA on the grid (the tracking metric); default the amplitude metric (see :class:`Peaks`).
    n_peaks : int
        Most peaks kept per voxel.
    relative_peak_threshold : float
        Peaks below this fraction of the voxel's largest peak are dropped.
    min_separation_angle_deg : float
        Peaks closer than this (degrees, sign ignored) to a larger one are dropped.

    Returns
    -------
    Peaks
    """
    from dipy.core.sphere import HemiSphere
    from dipy.data import default_sphere
    from dipy.reconst.shm import sh_to_sf_matrix

    if isinstance(n_peaks, bool) or not isinstance(n_peaks, int | np.integer) or not (
        1 <= n_peaks <= 10
    ):
        raise InputError(f"n_peaks must be an integer in [1, 10], got {n_peaks!r}.")
    if not isinstance(relative_peak_threshold, int | float) or not (
        0.0 <= relative_peak_threshold <= 1.0
    ):
        raise InputError(
            f"relative_peak_threshold must be a number in [0, 1], got "
            f"{relative_peak_threshold!r}."
        )
    if not isinstance(min_separation_angle_deg, int | float) or not (
        0.0 <= min_separation_angle_deg <= 90.0
    ):
        raise InputError(
            f"min_separation_angle_deg must be a number in [0, 90], got "
            f"{min_separation_angle_deg!r}."
        )
    n_peaks = int(n_peaks)
    # Maxima are searched on dipy's 362-direction hemisphere, then each is refined on the
    # once-subdivided sphere (1,442 directions) among the fine directions around it.
    coarse = HemiSphere.from_sphere(default_sphere)
    fine = coarse.subdivide(n=1)
    basis = sh_to_sf_matrix(coarse, sh_order_max=sh_order, return_inv=False).astype(np.float32)
    fine_basis = sh_to_sf_matrix(fine, sh_order_max=sh_order, return_inv=False)
    fine_basis = np.concatenate([fine_basis, np.zeros((fine_basis.shape[0], 1))], axis=1)
    vertices = np.vstack([fine.vertices, np.full((1, 3), np.nan)])
    around = _fine_neighbourhood(coarse.vertices, fine.vertices)
    neighbours = _neighbour_table(coarse)
    cos_sep = np.cos(np.deg2rad(float(min_separation_angle_deg)))
    mask = np.asarray(mask, bool)
    voxels = np.flatnonzero(mask)
    directions = np.zeros((mask.size, n_peaks, 3), np.float32)
    values = np.zeros((mask.size, n_peaks), np.float32)
    coeff = np.asarray(shm_coeff).reshape(mask.size, -1)
    n_candidates = 3 * n_peaks
    for first in range(0, voxels.size, _PEAK_CHUNK_VOXELS):
        chunk = voxels[first : first + _PEAK_CHUNK_VOXELS]
        sh = coeff[chunk].astype(np.float32)
        odf = sh @ basis  # (n, V)
        # Local maxima: not below any neighbour on the (antipodally symmetric) hemisphere;
        # one pass per neighbour slot keeps memory at a few (n, V) arrays.
        padded = np.concatenate([odf, np.full((len(chunk), 1), -np.inf, np.float32)], axis=1)
        is_max = odf > 0
        for slot in range(neighbours.shape[1]):
            is_max &= odf >= padded[:, neighbours[:, slot]]
        score = np.where(is_max, odf, -np.inf)
        top = np.argpartition(-score, n_candidates, axis=1)[:, :n_candidates]
        found = np.isfinite(np.take_along_axis(score, top, axis=1))
        # Refine: fODF on the fine directions around each candidate (padding index -> 0).
        fine_index = around[top]  # (n, m, k)
        fine_odf = np.einsum("nc,cnmk->nmk", sh.astype(np.float64), fine_basis[:, fine_index])
        fine_odf[fine_index == len(fine.vertices)] = -np.inf
        best = np.argmax(fine_odf, axis=2)
        top_val = np.where(found, np.take_along_axis(fine_odf, best[..., None], 2)[..., 0],
                           -np.inf)
        top_idx = np.take_along_axis(fine_index, best[..., None], 2)[..., 0]
        order = np.argsort(-top_val, axis=1)
        top_val = np.take_along_axis(top_val, order, axis=1)
        top_dir = vertices[np.take_along_axis(top_idx, order, axis=1)]  # (n, m, 3)
        keep = np.isfinite(top_val) & (top_val >= relative_peak_threshold * top_val[:, :1])
        # Greedy separation over the few candidates (loop over candidates, not voxels).
        for i in range(1, n_candidates):
            cos = np.abs(np.einsum("nk,nmk->nm", top_dir[:, i], top_dir[:, :i]))
            keep[:, i] &= ~np.any((cos > cos_sep) & keep[:, :i], axis=1)
        rank = np.cumsum(keep, axis=1) - 1
        rows, cols = np.nonzero(keep & (rank < n_peaks))
        values[chunk[rows], rank[rows, cols]] = top_val[rows, cols]
        directions[chunk[rows], rank[rows, cols]] = top_dir[rows, cols]
    shape = mask.shape
    return _make_peaks(
        directions.reshape(*shape, n_peaks, 3), values.reshape(*shape, n_peaks),
        affine, mask, fa, "csd",
    )


def _fine_neighbourhood(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """(V_coarse, k) fine directions within 6 degrees of each coarse one (sign ignored),
    padded with index ``len(fine)``."""
    close = np.abs(coarse @ fine.T) > np.cos(np.deg2rad(6.0))
    count = close.sum(axis=1)
    table = np.full((len(coarse), int(count.max())), len(fine))
    rows, cols = np.nonzero(close)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
    table[rows, slot] = cols
    return table


def _neighbour_table(sphere: Any) -> np.ndarray:
    """(V, max_degree) vertex neighbours from the sphere's edges, padded with index V."""
    edges = np.asarray(sphere.edges)
    n = sphere.vertices.shape[0]
    pairs = np.concatenate([edges, edges[:, ::-1]])
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    degree = np.bincount(pairs[:, 0], minlength=n)
    slot = np.arange(len(pairs)) - np.repeat(np.cumsum(degree) - degree, degree)
    table = np.full((n, int(degree.max())), n)
    table[pairs[:, 0], slot] = pairs[:, 1]
    return table


def peaks_from_tensor(fit: Any) -> Peaks:
    """One peak per voxel from a :class:`~msimaging.dti.TensorFit`: ``v1`` with FA as its
    amplitude (so a saved tensor peaks image is ``v1_world * FA``)."""
    try:
        v1 = np.asarray(fit.v1.dataobj, np.float32)
        fa_img, mask_img = fit.fa, fit.mask
    except AttributeError as exc:
        raise InputError(
            f"fit must be a TensorFit (fa, v1, mask), got a {type(fit).__name__}."
        ) from exc
    fa = np.nan_to_num(np.asarray(fa_img.dataobj, np.float32))
    brain = np.asanyarray(mask_img.dataobj).astype(bool)
    values = np.where(brain, fa, 0.0).astype(np.float32)[..., None]
    directions = np.where(values[..., None] > 0, v1[..., None, :], 0.0).astype(np.float32)
    return _make_peaks(directions, values, fa_img.affine, brain, fa_img, "tensor")


def _make_peaks(
    directions: np.ndarray,
    values: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray,
    fa: Any,
    source: str,
) -> Peaks:
    affine = np.asarray(affine, np.float64)
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    if fa is None:
        first = values[..., 0]
        scale = np.percentile(first[mask], _AMPLITUDE_PERCENTILE) if mask.any() else 0.0
        metric = np.clip(first / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(first)
        fa_img, fa_source = nib.Nifti1Image(metric.astype(np.float32), affine), "amplitude"
    else:
        fa_img, fa_source = fa, "fa"
    return Peaks(directions, values, affine, mask_img, fa_img, fa_source, source)


def save_peaks(peaks: Peaks, path: str | os.PathLike[str]) -> Path:
    """Write peaks as an MRtrix3 ``sh2peaks`` image (world frame; see the module notes).

    Parameters
    ----------
    peaks : Peaks
    path : str or pathlib.Path
        ``.nii`` or ``.nii.gz`` destination (written atomically).

    Returns
    -------
    pathlib.Path
    """
    if not isinstance(peaks, Peaks):
        raise InputError(
            f"peaks must be a Peaks object (peaks_from_csd, peaks_from_tensor, load_peaks), "
            f"got a {type(peaks).__name__}."
        )
    final = Path(path)
    if not final.name.endswith((".nii", ".nii.gz")):
        raise InputError(f"path '{final}' must end in .nii or .nii.gz (a NIfTI peaks image).")
    with atomic_path(final) as tmp:
        nib.save(peaks.to_mrtrix(), str(tmp))
    return final


def load_peaks(
    peaks: ImageLike,
    *,
    reference: Any = None,
    fa: ImageLike | None = None,
    mask: ImageLike | None = None,
) -> Peaks:
    """Read a peaks image in the MRtrix3 ``sh2peaks`` convention (MRtrix, TractSeg, QSIPrep).

    Parameters
    ----------
    peaks : str, os.PathLike or nibabel image
        4-D image with ``3 * n_peaks`` volumes of world-frame (x, y, z) vectors whose length is
        the amplitude; NaN or zero vectors for absent peaks.
    reference : image, path, TensorFit or DWI, optional
        The grid the peaks must be on (e.g. the DWI they were computed from); checked.
    fa : image or path, optional
        FA on the same grid: the tracking metric (as for a tensor fit). Without it the
        normalised amplitude of the first peak is used (see :class:`Peaks`).
    mask : image or path, optional
        Tracking mask; default the voxels with at least one peak.

    Returns
    -------
    Peaks
        Directions converted to the voxel frame (``R.T @ world``).

    Raises
    ------
    InputError
        Unreadable file, not 4-D, a number of volumes that is not a multiple of 3, or a grid
        different from ``reference``/``fa``/``mask``; the message names the file.
    """
    what = describe(peaks, "peaks")
    img = load_image(peaks, name="peaks", ndim=4, allow_nonfinite=True)
    data = np.asarray(img.dataobj, np.float64)
    n_volumes = data.shape[3]
    if n_volumes % 3:
        raise InputError(
            f"{what} has {n_volumes} volumes, not a multiple of 3: a peaks image (MRtrix "
            "sh2peaks convention) holds one (x, y, z) vector per peak. Check that this is a "
            "peaks image and not an SH/fODF image (convert with MRtrix: sh2peaks fod.mif "
            "peaks.nii.gz)."
        )
    if reference is not None:
        # A TensorFit/CSDFit (its FA map), a loaded DWI (its image) or an image/path.
        ref_img = reference
        for attribute in ("fa", "img"):
            if isinstance(getattr(reference, attribute, None), nib.spatialimages.SpatialImage):
                ref_img = getattr(reference, attribute)
        check_same_grid(ref_img, img, names=("reference", "peaks"), _described=(None, what))
    affine = np.asarray(img.affine, np.float64)
    shape = data.shape[:3]
    vectors = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    vectors = vectors.reshape(*shape, n_volumes // 3, 3)
    amplitude = np.linalg.norm(vectors, axis=-1)
    present = amplitude > 0
    unit = np.divide(vectors, amplitude[..., None], out=np.zeros_like(vectors),
                     where=present[..., None])
    rotation = voxel_to_world_rotation(affine)
    voxel_dirs = unit @ rotation  # rows: Rᵀ d (world -> voxel frame)
    # Sort each voxel's peaks by decreasing amplitude (the tracker treats the first as main).
    order = np.argsort(-amplitude, axis=-1, kind="stable")
    amplitude = np.take_along_axis(amplitude, order, axis=-1)
    voxel_dirs = np.take_along_axis(voxel_dirs, order[..., None], axis=-2)
    reference_img = nib.Nifti1Image(np.zeros(shape, np.uint8), affine)
    if mask is None:
        brain = present.any(axis=-1)
    else:
        mask_img = load_image(mask, name="mask", ndim=3)
        check_same_grid(reference_img, mask_img, names=(what, "mask"), _described=(what, None))
        brain = np.asanyarray(mask_img.dataobj) > 0
    fa_img = None
    if fa is not None:
        fa_img = load_image(fa, name="fa", ndim=3, allow_nonfinite=True)
        check_same_grid(reference_img, fa_img, names=(what, "fa"), _described=(what, None))
        fa_img = nib.Nifti1Image(
            np.nan_to_num(np.asarray(fa_img.dataobj, np.float32)), affine
        )
    source = os.fspath(peaks) if isinstance(peaks, str | os.PathLike) else (
        img.get_filename() or "in-memory image"
    )
    return _make_peaks(
        voxel_dirs.astype(np.float32), amplitude.astype(np.float32), affine, brain, fa_img,
        source,
    )
