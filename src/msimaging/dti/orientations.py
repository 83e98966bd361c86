"""Fibre orientations beyond the tensor: CSD fits and peaks images (MRtrix ``sh2peaks``).

* :func:`fit_csd` fits dipy's constrained spherical deconvolution (single-shell CSD with a
  response estimated from the data; multi-shell multi-tissue CSD when the DWI has two or more
  non-zero shells) and returns a :class:`CSDFit` (fODF SH coefficients + its peaks). By
  default only the voxels tracking can use are fitted (FA > 0.15, plus e.g. lesions):
  ``fit_region="mask"`` fits the whole mask. Single-shell CSD runs dipy's algorithm on
  thousands of voxels at once (the same results), optionally in threads.
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

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from msimaging.derivatives import atomic_path
from msimaging.errors import DependencyError, InputError, MSImagingWarning
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
#: ``fit_csd(fit_region="tracking")`` fits the voxels with FA above this (below the tracking
#: threshold, 0.2, so that tracking with a slightly lower ``fa_threshold`` is unchanged).
TRACKING_FIT_FA = 0.15
FIT_REGIONS = ("tracking", "mask")
# Multi-shell 3-tissue response voxels (tensor FA and MD in mm²/s): CSF is free water
# (MD ~3e-3), grey matter isotropic tissue with MD near 0.8e-3.
_CSF_MAX_FA, _CSF_MIN_MD = 0.1, 2.0e-3
_GM_MAX_FA, _GM_MD = 0.2, (0.5e-3, 1.2e-3)
# Fewest voxels for a response estimate; below it the highest-FA voxels of the mask are used.
_MIN_RESPONSE_VOXELS = 50
# Voxels whose fODF is evaluated on the sphere at once (memory ~ chunk * 1,450 * 4 bytes
# per array).
_PEAK_CHUNK_VOXELS = 10_000
# Voxels fitted at once by the batched CSD (memory ~ chunk * C^2 * 8 bytes, C = 45 at
# sh_order 8: 80 MB).
_FIT_CHUNK_VOXELS = 5_000
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
        legacy), **voxel frame**; zero outside the fitted voxels (``fit_region``).
    sh_order : int
        Maximum SH order.
    affine : ndarray, shape (4, 4)
    mask : nibabel.Nifti1Image
        uint8 0/1 tracking mask (the tensor fit's brain mask).
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
    fit_region : {"tracking", "mask"}
        Which voxels were fitted (see :func:`fit_csd`); the fODF is zero elsewhere.
    n_fitted_voxels : int
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
    fit_region: str = "mask"
    n_fitted_voxels: int = 0

    @property
    def v1(self) -> nib.Nifti1Image:
        """The largest fODF peak (voxel frame), as ``TensorFit.v1``."""
        return self.peaks.v1

    def __repr__(self) -> str:
        return (
            f"CSDFit({self.model}, sh_order={self.sh_order}, shape={self.peaks.shape}, "
            f"directions={self.n_directions}, response voxels={self.n_response_voxels}, "
            f"fitted voxels={self.n_fitted_voxels} ({self.fit_region}))"
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
    fit_region: str = "tracking",
    also_fit: ImageLike | None = None,
) -> CSDFit:
    """Fit constrained spherical deconvolution (dipy) where tracking can use it.

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
        highest-FA voxels). Multi-shell: dipy's 3-tissue response (``multi_shell_fiber_response``
        of the object ``dipy.reconst.mcsd.response_from_mask_msmt`` returns), by default
        from the mask voxels with white matter FA > ``response_fa``, grey matter FA < 0.2 and
        MD 0.5-1.2e-3 mm²/s, CSF FA < 0.1 and MD > 2e-3 mm²/s (tensor fitted to the b0s and
        the lowest shell).
    response_fa : float
        FA threshold of the single-fibre voxels used for the response.
    tensor : msimaging.dti.TensorFit, optional
        A tensor fit of the same DWI (reused for FA, mask and the response voxels); fitted
        here (WLS) when omitted.
    n_peaks, relative_peak_threshold, min_separation_angle_deg
        Peak extraction (see :func:`peaks_from_csd`).
    n_jobs : int
        Single-shell: threads for the batched fit (dipy's algorithm run on 5,000 voxels at a
        time, :func:`_csd_all_voxels`; -1: all cores). Multi-shell: processes for dipy's
        voxel-wise fit (``engine="joblib"``). Single-shell CSD costs ~110 us per voxel and
        thread (one small solve per voxel and iteration, ~5 iterations in white matter):
        14-22 s for the 108,000-128,000 brain voxels of the synthetic studies (sh_order 6),
        4-5 s for their ~40,000 ``fit_region="tracking"`` voxels; ``n_jobs=2`` cut the
        default study's CSD tract stage from 13.4 to 9.9 s on the 2-core machine while
        other jobs ran (load 3).
    fit_region : {"tracking", "mask"}
        ``"tracking"`` (default): fit only the mask voxels with FA > :data:`TRACKING_FIT_FA`
        (0.15) plus ``also_fit``; the fODF is zero and there are no peaks elsewhere (those
        voxels keep their place in ``mask``, the tracking mask). Deterministic tracking reads
        peaks only in voxels with FA above ``fa_threshold`` (default 0.2) or in lesions, so it
        is unchanged for any ``fa_threshold >= 0.15`` (the default study: 34-40% of the brain
        voxels, every tract identical to the whole-mask fit; benchmarks/
        bench_tract_session.py). Probabilistic tracking interpolates the SH trilinearly: at
        the edge of the region a grey-matter neighbour's (nearly isotropic) fODF counts as
        zero (phantom2: the same tracts within 2 streamlines and Dice 0.002). ``"mask"``: every
        mask voxel (as before; e.g. to save a whole-brain fODF or peaks image).
    also_fit : image or path, optional
        Voxels fitted whatever their FA with ``fit_region="tracking"``, e.g. the lesion mask
        (:func:`~msimaging.dti.tracts.track` lets streamlines cross lesions, whose FA may be
        low); must be on the DWI grid.

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
    if fit_region not in FIT_REGIONS:
        raise InputError(f"fit_region must be one of {FIT_REGIONS}, got {fit_region!r}.")
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
        model, response, n_response = _msmt_model(
            gtab, data, brain, response, sh_order, float(response_fa)
        )
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
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int | np.integer) or n_jobs == 0:
        raise InputError(f"n_jobs must be a non-zero integer (-1: all cores), got {n_jobs!r}.")
    fitted = brain
    if fit_region == "tracking":
        fitted = brain & (fa > TRACKING_FIT_FA)
        if also_fit is not None:
            extra = load_image(also_fit, name="also_fit", ndim=3)
            check_same_grid(dwi.img, extra, names=("dwi", "also_fit"))
            fitted |= brain & (np.asanyarray(extra.dataobj) > 0)
    voxels = np.nonzero(fitted)
    signal = np.asarray(data[voxels], np.float64)
    if kind == "msmt-csd":
        # dipy solves one quadratic programme per voxel (cvxpy), as a (n, 1, 1, volumes) block.
        parallel = {} if n_jobs == 1 else {"engine": "joblib", "n_jobs": int(n_jobs)}
        coeff_flat = np.asarray(
            model.fit(signal[:, None, None, :], **parallel).shm_coeff
        )[:, 0, 0, :]
        # Keep the WM fODF only (dipy puts the isotropic compartments first).
        coeff_flat = coeff_flat[:, -_n_sh(sh_order):]
    else:
        threads = (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)
        coeff_flat = _csd_all_voxels(model, signal, n_threads=threads)
    shm = np.zeros((*brain.shape, coeff_flat.shape[1]), np.float32)
    # Voxels without signal (b0 of 0 in real data) give NaN fODFs: no fibre there.
    shm[voxels] = np.nan_to_num(coeff_flat, nan=0.0, posinf=0.0, neginf=0.0)
    # Peaks are searched in the fitted voxels; the tracking mask stays the brain mask.
    peaks = peaks_from_csd(
        shm, sh_order, dwi.img.affine, fitted, fa=tensor.fa, n_peaks=n_peaks,
        relative_peak_threshold=relative_peak_threshold,
        min_separation_angle_deg=min_separation_angle_deg,
    )
    peaks = dataclasses.replace(peaks, mask=tensor.mask)
    return CSDFit(
        shm_coeff=shm, sh_order=sh_order, affine=np.asarray(dwi.img.affine, np.float64),
        mask=tensor.mask, fa=tensor.fa, peaks=peaks, model=kind, response=response,
        n_response_voxels=n_response, n_directions=n_dirs, fit_region=fit_region,
        n_fitted_voxels=int(fitted.sum()),
    )


def _csd_all_voxels(model: Any, signal: np.ndarray, n_threads: int = 1) -> np.ndarray:
    """dipy's single-shell CSD (``csdeconv``: Tournier et al. 2007's super-resolved
    iteration) for many voxels at once: ``signal`` (n, volumes) -> fODF SH (n, C).

    The same steps as ``dipy.reconst.csdeconv.csdeconv`` per voxel, run in lockstep on all
    voxels of a chunk: least-squares start, threshold ``tau`` times the mean fODF, then solve
    ``(P + H^T H) f = X^T s`` with ``H`` the regularisation-sphere rows where the fODF is below
    the threshold, until that set of rows stops changing (at most ``model.convergence``
    iterations). Only the voxels whose set changed are solved again, and ``H^T H`` is updated
    with the rows that changed. Matches dipy's voxel loop to rounding (tested). Single-threaded
    it is about as fast as dipy (both are bound by one small solve per voxel and iteration,
    about 5 iterations in white matter); numpy releases the GIL, so chunks run in
    ``n_threads`` threads without dipy's process start-up and data copies.
    """
    from concurrent.futures import ThreadPoolExecutor

    from scipy.linalg import LinAlgError, cho_factor

    design = model.R.diagonal() * model.B_dwi  # dipy's X: (directions, C)
    gram = design.T @ design
    try:
        factor = cho_factor(gram, lower=False)
    except LinAlgError:  # more coefficients than directions: dipy adds mu = 1e-5
        gram = gram + 1e-5 * np.eye(gram.shape[0])
        factor = cho_factor(gram, lower=False)
    reg = np.asarray(model.B_reg, np.float64)  # lambda-scaled basis on the sphere (R, C)
    setup = {
        "dwi": ~np.asarray(model.gtab.b0s_mask, bool), "design": design, "gram": gram,
        "factor": factor, "reg": reg, "tau": float(model.tau),
        "convergence": int(model.convergence),
        # Row r of the sphere adds outer(reg[r], reg[r]) to Q (flattened C*C).
        "outer": (reg[:, :, None] * reg[:, None, :]).reshape(reg.shape[0], -1),
    }
    chunks = [signal[i : i + _FIT_CHUNK_VOXELS]
              for i in range(0, signal.shape[0], _FIT_CHUNK_VOXELS)]
    if not chunks:
        return np.zeros((0, gram.shape[0]))
    with ThreadPoolExecutor(max_workers=max(1, min(n_threads, len(chunks)))) as pool:
        results = list(pool.map(lambda chunk: _csd_chunk(chunk, **setup), chunks))
    n_unconverged = sum(n for _, n in results)
    if n_unconverged:
        warnings.warn(
            f"fit_csd: {n_unconverged} voxel(s) did not converge in {model.convergence} "
            "iterations (their last estimate is kept, as dipy does).",
            MSImagingWarning,
            stacklevel=3,
        )
    return np.concatenate([coef for coef, _ in results])


def _csd_chunk(
    signal: np.ndarray, *, dwi, design, gram, factor, reg, tau, convergence, outer
) -> tuple[np.ndarray, int]:
    """One chunk of :func:`_csd_all_voxels`: (coefficients, voxels not converged)."""
    from scipy import sparse
    from scipy.linalg import cho_solve

    n_coef = gram.shape[0]
    n_low = min(15, n_coef)  # dipy's first threshold test uses the order-4 fODF
    rhs = signal[:, dwi] @ design  # X^T s per voxel
    coef = cho_solve(factor, rhs.T).T
    threshold = (reg[0, 0] * tau * coef[:, 0])[:, None]
    small = coef[:, :n_low] @ reg[:, :n_low].T < threshold
    smooth = ~small.any(axis=1)
    small[smooth] = coef[smooth] @ reg.T < threshold[smooth]
    active = np.flatnonzero(small.any(axis=1))
    q = gram.ravel() + small[active].astype(np.float64) @ outer  # (n, C*C)
    for _ in range(convergence):
        if not active.size:
            break
        solved = np.linalg.solve(q.reshape(-1, n_coef, n_coef), rhs[active][..., None])[..., 0]
        coef[active] = solved
        now_small = solved @ reg.T < threshold[active]
        delta = now_small.astype(np.int8) - small[active]
        small[active] = now_small
        changed = delta.any(axis=1)
        active, q, delta = active[changed], q[changed], delta[changed]
        # Rows that entered or left H: a sparse update of Q (few rows change).
        q += sparse.csr_matrix(delta.astype(np.float64)) @ outer
    return coef, int(active.size)


def _n_sh(order: int) -> int:
    return (order + 1) * (order + 2) // 2


def _msmt_model(
    gtab: Any,
    data: np.ndarray,
    brain: np.ndarray,
    response: Any,
    order: int,
    response_fa: float,
) -> tuple[Any, Any, int]:
    try:
        import cvxpy  # noqa: F401  (dipy's multi-shell CSD solves its QP with cvxpy)
    except ImportError as exc:
        raise DependencyError(
            "multi-shell CSD (two or more non-zero b-value shells) needs cvxpy, which is "
            "not installed: pip install 'msimaging[multishell]' (or pip install cvxpy); or "
            "pass the DWI of one shell to fit_csd."
        ) from exc
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel
    from dipy.reconst.mcsd import (
        MultiShellDeconvModel,
        multi_shell_fiber_response,
        response_from_mask_msmt,
    )

    n_voxels = 0
    if response is None:
        # Tissue voxels from a tensor fitted to the b0s and the lowest shell (higher shells
        # bias it: non-Gaussian diffusion, and CSF at the noise floor); dipy's
        # mask_for_response_msmt takes CSF as MD < 2e-3 mm²/s, which excludes free water.
        lowest = np.round(gtab.bvals, -2) <= np.unique(np.round(gtab.bvals[~gtab.b0s_mask], -2))[0]
        low = TensorModel(gradient_table(gtab.bvals[lowest], bvecs=gtab.bvecs[lowest]))
        fit = low.fit(np.asarray(data[brain][:, lowest], np.float64))
        fa, md_mm2_s = (np.zeros(brain.shape) for _ in range(2))
        fa[brain], md_mm2_s[brain] = np.nan_to_num(fit.fa), np.nan_to_num(fit.md)
        wm = brain & (fa > response_fa)
        csf = brain & (fa < _CSF_MAX_FA) & (md_mm2_s > _CSF_MIN_MD)
        gm = brain & (fa < _GM_MAX_FA) & (md_mm2_s > _GM_MD[0]) & (md_mm2_s < _GM_MD[1])
        n_voxels = int(wm.sum())
        if min(wm.sum(), gm.sum(), csf.sum()) == 0:
            raise InputError(
                f"multi-shell CSD: no voxel qualified for the 3-tissue response (white matter "
                f"FA > {response_fa:g}: {int(wm.sum())}, grey matter FA < {_GM_MAX_FA:g} and "
                f"MD {_GM_MD[0]:g}-{_GM_MD[1]:g} mm²/s: {int(gm.sum())}, CSF FA < "
                f"{_CSF_MAX_FA:g} and MD > {_CSF_MIN_MD:g}: {int(csf.sum())} voxels); give a "
                "mask that includes white matter, grey matter and CSF, or pass response=."
            )
        wm_r, gm_r, csf_r = response_from_mask_msmt(
            gtab, data, wm.astype(np.uint8), gm.astype(np.uint8), csf.astype(np.uint8)
        )
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
