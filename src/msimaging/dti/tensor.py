"""Diffusion tensor fitting: FA, MD, AD, RD, principal direction and a fit-quality map.

:func:`fit_tensor` fits the single-tensor model ``log S = log S0 - b gᵀDg`` in every voxel of
a brain mask and returns 3-D float32 maps in a small frozen :class:`TensorFit`.

Two engines share one interface:

* ``method="wls"`` / ``"ols"`` (default ``"wls"``): a vectorised numpy implementation. OLS is
  one pseudo-inverse applied to every voxel of a chunk; WLS uses the same weights as dipy's
  ``wls_fit_tensor`` (the squared signal predicted by the OLS fit) and solves the 7x7 weighted
  normal equations of all voxels of a chunk at once; eigenvalues come from the closed-form
  (trigonometric) solution of the 3x3 characteristic polynomial and the principal eigenvector
  from cross products of the rows of ``D - λ1 I``. It matches dipy's WLS/OLS to about 1e-10.
* ``method="dipy-wls"``, ``"dipy-ols"``, ``"nlls"``, ``"restore"``: dipy's
  ``TensorModel(gtab, fit_method=...)``, run chunk by chunk on the same floored signals.

Zero and negative values, one policy for every method (dipy's, so that the maps equal
dipy's; here nothing is silent):

* **Signals.** Every signal value in the mask below ``min_signal`` (default dipy's 1e-4, i.e.
  in practice the zeros and negative values of real b=1000 data, from scanner clipping or
  noise floors) is raised to it before the logarithm. The values are counted
  (``TensorFit.n_floored``), and so are the voxels holding at least one value <= 0
  (``TensorFit.nonpositive_signal`` map, ``n_nonpositive_signal_voxels``); a warning says
  so. Why a floor and not dropping the volume: the log-linear fits need every volume in
  every voxel of a chunk, and a floored value still tells the fit "very low signal".
* **Eigenvalues.** Eigenvalues below ``1e-6 / max(B)`` (dipy's ``min_diffusivity``, ``B`` the
  b-matrix entries in s/mm², i.e. 1e-9 mm²/s at b=1000) are clipped to it, and FA, MD, AD, RD
  are computed from the clipped values (as dipy does; RESTORE, which dipy does not clip, is
  clipped here too). Why: with a negative eigenvalue FA can exceed 1 and MD is biased low;
  the clipped tensor is the nearest physically possible one. Voxels whose fitted tensor had
  its smallest eigenvalue at or below the floor (not positive definite) are flagged
  (``TensorFit.negative_eigenvalue`` map) and counted (``n_negative_eigenvalue_voxels``): on
  real data they are noise, CSF or partial volume, and their eigenvectors are unreliable.

Frames. The tensor is fitted in the **voxel frame** of the DWI (the b-vectors of
:class:`msimaging.io.DWI`, read from FSL's convention by default), so ``TensorFit.v1`` and
the RGB channels of ``colour_fa`` follow the image axes i, j, k (what dipy's tracking and
viewers such as FSLeyes expect); ``TensorFit.v1_world`` gives the principal direction in
the world frame of the affine (scanner RAS+ for NIfTI: x = left-right, y = posterior-anterior,
z = inferior-superior for a head-first supine scan).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

from msimaging.errors import InputError, MSImagingWarning
from msimaging.io import (
    DWI,
    ImageLike,
    describe,
    load_dwi,
    load_mask,
    voxel_to_world_rotation,
)

__all__ = ["METHODS", "TensorFit", "fit_tensor"]

#: Accepted ``method`` values: our vectorised engine first, then dipy's fit methods.
METHODS = ("wls", "ols", "dipy-wls", "dipy-ols", "nlls", "restore")
_DIPY_FIT_METHOD = {"dipy-wls": "WLS", "dipy-ols": "OLS", "nlls": "NLLS", "restore": "RESTORE"}

#: dipy's ``MIN_POSITIVE_SIGNAL``: the default floor of the signal before its logarithm.
DEFAULT_MIN_SIGNAL = 1e-4
# dipy's eigenvalue floor is _EIGENVALUE_TOL / (largest b-matrix entry, at least 1).
_EIGENVALUE_TOL = 1e-6
# Brain mask when none is given: median filter radius 2 voxels, one pass, then Otsu.
MEDIAN_OTSU_PARAMS = {"median_radius": 2, "numpass": 1}
# Voxels whose two largest eigenvalues are this close (relative to λ1 - λ3) get their
# principal eigenvector from LAPACK instead of the closed form.
_DEGENERATE_GAP = 1e-3


@dataclass(frozen=True, repr=False)
class TensorFit:
    """Diffusion tensor maps of one DWI series.

    All maps are float32 images on the DWI grid and 0 outside ``mask``.

    Attributes
    ----------
    fa : nibabel.Nifti1Image
        Fractional anisotropy (dimensionless, 0-1).
    md, ad, rd : nibabel.Nifti1Image
        Mean, axial (λ1) and radial ((λ2 + λ3) / 2) diffusivity, in mm²/s when the b-values
        are in s/mm².
    v1 : nibabel.Nifti1Image
        4-D (x, y, z, 3): unit principal eigenvector in the **voxel frame** (components along
        the image axes i, j, k; its sign is arbitrary). See :attr:`v1_world` for the world
        frame.
    colour_fa : nibabel.Nifti1Image
        4-D (x, y, z, 3) RGB: ``|v1| * FA`` (voxel frame: red = i axis).
    residual : nibabel.Nifti1Image
        Quality map: root-mean-square difference between the measured (floored) signal and
        the signal predicted by the fitted tensor, divided by the fitted S0 (dimensionless;
        about sigma/S0 for a good fit, large in voxels with artefacts or partial volume).
    mask : nibabel.Nifti1Image
        uint8 0/1 mask of the fitted voxels.
    method : str
        The fit method (one of :data:`METHODS`).
    mask_source : str
        ``"given"`` or ``"median_otsu"`` (computed from the mean b0, see :func:`fit_tensor`).
    n_floored : int
        Number of signal values in the mask raised to ``min_signal`` before the fit.
    nonpositive_signal : nibabel.Nifti1Image or None
        uint8 0/1: mask voxels with at least one signal value <= 0 (any volume).
    negative_eigenvalue : nibabel.Nifti1Image or None
        uint8 0/1: mask voxels whose fitted tensor was not positive definite (smallest
        eigenvalue at or below the eigenvalue floor, then clipped to it).
    """

    fa: nib.Nifti1Image
    md: nib.Nifti1Image
    ad: nib.Nifti1Image
    rd: nib.Nifti1Image
    v1: nib.Nifti1Image
    colour_fa: nib.Nifti1Image
    residual: nib.Nifti1Image
    mask: nib.Nifti1Image
    method: str
    mask_source: str
    n_floored: int
    nonpositive_signal: nib.Nifti1Image | None = None
    negative_eigenvalue: nib.Nifti1Image | None = None

    @property
    def v1_world(self) -> nib.Nifti1Image:
        """4-D (x, y, z, 3) float32: unit principal eigenvector in the **world frame** of the
        affine (scanner RAS+ mm axes for NIfTI), ``R @ v1`` with ``R`` from
        :func:`msimaging.io.voxel_to_world_rotation`; sign arbitrary, 0 outside the mask."""
        rotation = voxel_to_world_rotation(self.v1.affine)
        v1 = np.asanyarray(self.v1.dataobj).astype(np.float64)
        return _image((v1 @ rotation.T).astype(np.float32), self.v1)

    @property
    def n_nonpositive_signal_voxels(self) -> int:
        """Mask voxels with at least one signal value <= 0."""
        return _count(self.nonpositive_signal)

    @property
    def n_negative_eigenvalue_voxels(self) -> int:
        """Mask voxels whose fitted tensor was not positive definite (eigenvalue clipped)."""
        return _count(self.negative_eigenvalue)

    @property
    def counts(self) -> dict[str, int]:
        """Quality counts for sidecars: fitted voxels, floored values, flagged voxels."""
        return {
            "n_voxels": self.n_voxels,
            "n_floored_values": int(self.n_floored),
            "n_nonpositive_signal_voxels": self.n_nonpositive_signal_voxels,
            "n_negative_eigenvalue_voxels": self.n_negative_eigenvalue_voxels,
        }

    @property
    def maps(self) -> dict[str, nib.Nifti1Image]:
        """The scalar maps ``{"fa", "md", "ad", "rd"}``."""
        return {"fa": self.fa, "md": self.md, "ad": self.ad, "rd": self.rd}

    @property
    def n_voxels(self) -> int:
        """Number of fitted voxels."""
        return int(np.count_nonzero(np.asanyarray(self.mask.dataobj)))

    def __repr__(self) -> str:
        return (
            f"TensorFit(method={self.method!r}, shape={self.fa.shape}, "
            f"voxels={self.n_voxels}, mask={self.mask_source!r}, floored={self.n_floored})"
        )


def fit_tensor(
    dwi: ImageLike | DWI,
    bvals: str | os.PathLike | np.ndarray | list | None = None,
    bvecs: str | os.PathLike | np.ndarray | list | None = None,
    mask: ImageLike | None = None,
    *,
    method: str = "wls",
    b0_threshold: float = 50.0,
    chunk_voxels: int = 50_000,
    min_signal: float | None = None,
    sigma: float | None = None,
    bvec_convention: str | None = None,
) -> TensorFit:
    """Fit a diffusion tensor in every brain voxel.

    Parameters
    ----------
    dwi : str, os.PathLike, nibabel image or msimaging.io.DWI
        4-D diffusion series (validated by :func:`msimaging.io.load_dwi`), or an already
        loaded :class:`~msimaging.io.DWI` (then ``bvals``/``bvecs`` must be omitted and its own
        ``b0_threshold`` is used).
    bvals, bvecs : path or array, optional
        FSL-style b-values (s/mm²) and b-vectors, as in :func:`~msimaging.io.load_dwi`; by
        default the ``.bval``/``.bvec`` files next to a ``.nii``/``.nii.gz`` path. Arrays
        follow the same convention as files (``bvec_convention``, FSL by default).
    mask : str, os.PathLike or nibabel image, optional
        Binary 3-D brain mask on the DWI grid. Without it, a mask is computed with dipy's
        ``median_otsu`` on the mean b0 (``median_radius=2``, ``numpass=1``: cheap, meant for
        QC-grade masks; pass a proper brain mask for analyses), keeping only voxels with a
        positive mean b0; ``TensorFit.mask_source`` records which was used.
    method : {"wls", "ols", "dipy-wls", "dipy-ols", "nlls", "restore"}
        ``"wls"`` (default) and ``"ols"`` use the vectorised engine of this module, which
        reproduces dipy's WLS/OLS; the others call ``dipy.reconst.dti.TensorModel`` with
        ``fit_method`` WLS, OLS, NLLS or RESTORE (NLLS and RESTORE run a non-linear
        optimisation voxel by voxel in dipy: far slower, meant for small volumes or checks).
    b0_threshold : float
        b-values (s/mm²) at or below this count as b0 volumes.
    chunk_voxels : int
        Voxels fitted at once; bounds the working memory to roughly
        ``chunk_voxels * n_volumes * 40`` bytes. Results do not depend on it.
    min_signal : float, optional
        Positive floor applied to every signal value in the mask before taking its logarithm;
        default dipy's ``1e-4``, so that every method sees the same data. Values below it
        (in practice zeros or negative values of the DW volumes) are counted in
        ``TensorFit.n_floored`` and reported with an :class:`~msimaging.errors.MSImagingWarning`.
    sigma : float, optional
        Noise standard deviation for ``method="restore"`` (same units as the signal). By
        default it is estimated with ``dipy.denoise.noise_estimate.estimate_sigma`` (``N=0``,
        i.e. Gaussian noise) on the b0 volumes, taking the median over them; pass it for
        multi-coil magnitude data or when the background is masked.
    bvec_convention : {"fsl", "voxel", "world"}, optional
        Frame of ``bvecs`` (see :func:`msimaging.io.load_dwi`); default ``"fsl"``: FSL's
        ``.bvec`` convention, x negated for images whose affine has a positive determinant.
        Not accepted with a loaded :class:`~msimaging.io.DWI` (its b-vectors are already in
        the voxel frame).

    Returns
    -------
    TensorFit
        FA, MD, AD, RD, principal eigenvector, colour FA and residual maps, and the mask.

    Raises
    ------
    InputError
        Invalid DWI or gradient table (see :func:`~msimaging.io.load_dwi`); fewer than 6
        non-collinear diffusion directions or a degenerate scheme; a mask on another grid or
        not binary; mask voxels whose mean b0 is not positive; an unknown ``method``; invalid
        ``chunk_voxels``, ``min_signal`` or ``sigma``.

    Warns
    -----
    MSImagingWarning
        When signal values in the mask were raised to ``min_signal``.

    Notes
    -----
    Eigenvalues below ``1e-6 / max(B)`` (dipy's floor; B the b-matrix entries) are clipped to
    it for every method (as dipy does, and for RESTORE too, which dipy leaves unclipped); FA,
    MD, AD and RD are computed from the clipped eigenvalues, and the voxels concerned are
    flagged in ``TensorFit.negative_eigenvalue``. ``v1`` is in the voxel frame,
    ``TensorFit.v1_world`` in the world frame. The input array is never converted as
    a whole: each chunk of voxels is copied to float64, so peak memory is the input array plus
    the output maps plus one chunk.

    Examples
    --------
    >>> fit = fit_tensor("sub-01_ses-M0_dwi.nii.gz", mask="sub-01_ses-M0_brainmask.nii.gz")
    ... # doctest: +SKIP
    >>> fit.fa.to_filename("sub-01_ses-M0_FA.nii.gz")  # doctest: +SKIP
    """
    method = _check_method(method)
    chunk_voxels = _check_chunk(chunk_voxels)
    min_signal = _check_min_signal(min_signal)
    if sigma is not None and method != "restore":
        raise InputError(
            f"sigma={sigma!r} is only used by method='restore' (got method={method!r}); "
            "drop it or choose method='restore'."
        )
    if isinstance(dwi, DWI):
        dwi_what = f"dwi '{dwi.source}'" if dwi.source != "in-memory image" else "dwi"
    else:
        dwi_what = describe(dwi, "dwi")
    series = _as_dwi(dwi, bvals, bvecs, b0_threshold, bvec_convention)
    img = series.img
    data = np.asanyarray(img.dataobj)
    bvals_arr, bvecs_arr = series.bvals, series.bvecs
    b0 = series.b0_mask

    design = _design_matrix(bvals_arr, bvecs_arr)
    _check_directions(design, bvals_arr, bvecs_arr, b0, series.b0_threshold)
    min_diffusivity = _EIGENVALUE_TOL / max(float(np.max(_b_matrix_entries(design))), 1.0)

    mean_b0 = _mean_b0(data, np.flatnonzero(b0))
    reference = dwi if isinstance(dwi, str | os.PathLike) else img
    mask_arr, mask_source = _brain_mask(mask, reference, dwi_what, mean_b0)
    _check_b0_in_mask(mean_b0, mask_arr, mask_source)
    del mean_b0

    voxels = np.nonzero(mask_arr)
    n_voxels = voxels[0].size
    spatial = data.shape[:3]
    outputs = {name: np.zeros(spatial, np.float32) for name in ("fa", "md", "ad", "rd", "res")}
    v1_map = np.zeros((*spatial, 3), np.float32)
    nonpositive = np.zeros(spatial, np.uint8)
    not_positive_definite = np.zeros(spatial, np.uint8)
    # Clipped eigenvalues equal the floor up to rounding: count those as at the floor too.
    floor_or_below = min_diffusivity * (1.0 + 1e-9)

    engine = (
        _FastEngine(design, method)
        if method in ("wls", "ols")
        else _DipyEngine(series, method, data, b0, min_signal, sigma)
    )
    n_floored = 0
    for first in range(0, n_voxels, chunk_voxels):
        where = tuple(axis[first : first + chunk_voxels] for axis in voxels)
        signal = np.asarray(data[where], dtype=np.float64)
        nonpositive[where] = np.any(signal <= 0, axis=1)
        low = signal < min_signal
        n_low = int(np.count_nonzero(low))
        if n_low:
            n_floored += n_low
            signal[low] = min_signal
        evals, v1, residual = engine.fit(signal)
        not_positive_definite[where] = evals.min(axis=1) <= floor_or_below
        np.maximum(evals, min_diffusivity, out=evals)
        metrics = _metrics(evals)
        for name in ("fa", "md", "ad", "rd"):
            outputs[name][where] = metrics[name]
        outputs["res"][where] = residual
        v1_map[where] = v1

    if n_floored:
        n_nonpositive = int(np.count_nonzero(nonpositive))
        warnings.warn(
            f"{dwi_what}: {n_floored} signal value(s) inside the mask were below "
            f"min_signal={min_signal:g} ({n_nonpositive} voxel(s) with a value <= 0; "
            "zeros or negative values, e.g. from scanner clipping "
            "or background in the mask) and were raised to it before the log-linear fit "
            "(dipy does the same silently). Many such values mean the mask includes "
            "background or the data are mis-scaled; check them or tighten the mask.",
            MSImagingWarning,
            stacklevel=2,
        )

    colour = np.abs(v1_map) * outputs["fa"][..., None]
    return TensorFit(
        fa=_image(outputs["fa"], img),
        md=_image(outputs["md"], img),
        ad=_image(outputs["ad"], img),
        rd=_image(outputs["rd"], img),
        v1=_image(v1_map, img),
        colour_fa=_image(colour, img),
        residual=_image(outputs["res"], img),
        mask=_image(mask_arr.astype(np.uint8), img),
        method=method,
        mask_source=mask_source,
        n_floored=n_floored,
        nonpositive_signal=_image(nonpositive, img),
        negative_eigenvalue=_image(not_positive_definite, img),
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _check_method(method: object) -> str:
    key = method.lower() if isinstance(method, str) else method
    if key not in METHODS:
        raise InputError(
            f"method={method!r} is not a tensor fit method; choose one of "
            f"{', '.join(repr(m) for m in METHODS)} ('wls' is the default and the fastest "
            "weighted fit)."
        )
    return key


def _check_chunk(chunk_voxels: object) -> int:
    if (
        isinstance(chunk_voxels, bool)
        or not isinstance(chunk_voxels, int | np.integer)
        or chunk_voxels < 1
    ):
        raise InputError(
            f"chunk_voxels must be a positive integer (voxels fitted at once), got "
            f"{chunk_voxels!r}; the default 50000 suits most machines."
        )
    return int(chunk_voxels)


def _check_min_signal(min_signal: object) -> float:
    if min_signal is None:
        return DEFAULT_MIN_SIGNAL
    try:
        value = float(min_signal)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InputError(f"min_signal must be a number, got {min_signal!r}.") from exc
    if not (np.isfinite(value) and value > 0):
        raise InputError(
            f"min_signal must be a positive finite signal value (the log needs S > 0), got "
            f"{min_signal!r}; leave it unset for dipy's default 1e-4."
        )
    return value


def _as_dwi(
    dwi: ImageLike | DWI,
    bvals: Any,
    bvecs: Any,
    b0_threshold: float,
    bvec_convention: str | None,
) -> DWI:
    if isinstance(dwi, DWI):
        if bvals is not None or bvecs is not None or bvec_convention is not None:
            raise InputError(
                "dwi is a loaded msimaging.io.DWI, which carries its own gradient table (in "
                "the voxel frame); do not pass bvals=/bvecs=/bvec_convention= with it (or "
                "pass the image instead of the DWI)."
            )
        return dwi
    convention = "fsl" if bvec_convention is None else bvec_convention
    return load_dwi(dwi, bvals, bvecs, b0_threshold=b0_threshold, bvec_convention=convention)


def _check_directions(
    design: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, b0: np.ndarray, threshold: float
) -> None:
    """Reject gradient tables that cannot determine the 6 tensor elements and S0."""
    vecs = bvecs[~b0]
    # Direction up to sign: flip so that the first clearly non-zero component is positive.
    first = np.argmax(np.abs(vecs) > 1e-6, axis=1)
    sign = np.sign(vecs[np.arange(len(vecs)), first])
    distinct = np.unique(np.round(vecs * sign[:, None], 4), axis=0)
    n_dirs = int(distinct.shape[0])
    if n_dirs < 6:
        raise InputError(
            f"bvecs: a tensor needs at least 6 non-collinear directions, got {n_dirs} "
            f"distinct direction(s) among {int((~b0).sum())} volume(s) with b > "
            f"b0_threshold={threshold:g} s/mm². Check the .bvec file (rows swapped or "
            "truncated?) or use a diffusion scheme with 6 or more directions."
        )
    norms = np.linalg.norm(design, axis=0)
    scaled = design / np.where(norms > 0, norms, 1.0)
    rank = int(np.linalg.matrix_rank(scaled))
    if rank < 7:
        raise InputError(
            f"bvecs: a tensor needs at least 6 non-collinear directions that are not "
            f"degenerate, but the {n_dirs} distinct directions leave the tensor "
            f"undetermined (design matrix rank {rank} < 7, e.g. all directions in one plane). "
            "Check the .bvec file or use a scheme with directions spread over the sphere."
        )


def _brain_mask(
    mask: ImageLike | None, reference: ImageLike, dwi_what: str, mean_b0: np.ndarray
) -> tuple[np.ndarray, str]:
    if mask is not None:
        loaded = load_mask(mask, name="mask", reference=reference, reference_name="dwi")
        return np.asanyarray(loaded.dataobj).astype(bool), "given"
    from dipy.segment.mask import median_otsu

    _, computed = median_otsu(mean_b0, **MEDIAN_OTSU_PARAMS)
    computed = computed & (mean_b0 > 0)
    if not computed.any():
        raise InputError(
            f"{dwi_what}: median_otsu found no brain voxel in the mean b0 image; pass "
            "mask= (a binary brain mask on the DWI grid)."
        )
    return computed, "median_otsu"


def _check_b0_in_mask(mean_b0: np.ndarray, mask: np.ndarray, mask_source: str) -> None:
    bad = mask & ~(mean_b0 > 0)
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        raise InputError(
            f"mask ({mask_source}) contains {n_bad} voxel(s) whose mean b0 signal is <= 0, "
            "where the tensor (log S/S0) is undefined; use a tighter brain mask, or check the "
            "scaling of the DWI (scl_slope/scl_inter, unsigned data read as signed)."
        )


# --------------------------------------------------------------------------------------------
# Design matrix and fits
# --------------------------------------------------------------------------------------------
def _design_matrix(bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """Rows ``(-b gx², -b gy², -b gz², -2b gxgy, -2b gxgz, -2b gygz, 1)``: log S = X β."""
    gx, gy, gz = bvecs.T
    quad = np.stack([gx * gx, gy * gy, gz * gz, 2 * gx * gy, 2 * gx * gz, 2 * gy * gz], axis=1)
    return np.hstack([-bvals[:, None] * quad, np.ones((bvals.size, 1))])


def _b_matrix_entries(design: np.ndarray) -> np.ndarray:
    """The b-matrix entries (s/mm²) and the constant column, as dipy uses for its floor."""
    return np.hstack([-design[:, :6], design[:, 6:]])


def _mean_b0(data: np.ndarray, b0_index: np.ndarray) -> np.ndarray:
    """Mean b0 image (float64), accumulated one volume at a time to bound memory."""
    total = np.zeros(data.shape[:3], np.float64)
    for volume in b0_index:
        total += data[..., volume]
    return total / b0_index.size


class _FastEngine:
    """Vectorised OLS/WLS: one pseudo-inverse (OLS), then batched 7x7 Cholesky solves (WLS)."""


    def __init__(self, design: np.ndarray, method: str) -> None:
        # Column equilibration keeps the 7x7 normal equations well conditioned (b ~ 1000).
        self.scale = np.linalg.norm(design, axis=0)
        self.design = design / self.scale
        self.pinv = np.linalg.pinv(self.design)
        self.weighted = method == "wls"
        # Twice the diffusion part of the design: exp(gamma @ this.T) = (S_ols / S0_ols)².
        self.twice_diffusion = 2.0 * self.design[:, :6]
        rows, cols = np.triu_indices(7)
        self.pairs_t = (self.design[:, rows] * self.design[:, cols]).T  # (28, g)

    def fit(self, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        log_s = np.log(signal)
        gamma = log_s @ self.pinv.T
        if self.weighted:
            gamma = self._wls(log_s, gamma)
        beta = gamma / self.scale
        evals, v1 = _eigen_sym3(beta[:, :6])
        diff = signal - np.exp(gamma @ self.design.T)
        residual = np.sqrt(np.einsum("ij,ij->i", diff, diff) / diff.shape[1])
        residual /= np.exp(beta[:, 6])
        return evals, v1, residual

    def _wls(self, log_s: np.ndarray, gamma_ols: np.ndarray) -> np.ndarray:
        # dipy's weights are the squared OLS-predicted signal; dividing them by the voxel's
        # fitted S0² leaves the solution unchanged and keeps the numbers near 1.
        w2 = np.exp(gamma_ols[:, :6] @ self.twice_diffusion.T)
        normal_t = self.pairs_t @ w2.T  # (28, n): upper triangle of Xᵀ W X per voxel
        rhs_t = self.design.T @ (w2 * log_s).T  # (7, n)
        solution, failed = _solve_spd(normal_t, rhs_t)
        gamma = solution.T
        if failed.any():
            # Numerically singular weighted system: minimum-norm solution, as dipy's pinv.
            w = np.sqrt(w2[failed])
            gamma[failed] = np.einsum(
                "nij,nj->ni", np.linalg.pinv(self.design * w[..., None]), w * log_s[failed]
            )
        return gamma


def _solve_spd(upper: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``A x = b`` for a stack of small symmetric positive-definite systems.

    Cholesky factorisation written over the matrix indices (m = 7: 7 x 7 loop iterations),
    each step a numpy operation over all systems at once.

    Parameters
    ----------
    upper : ndarray, shape (m(m+1)/2, n)
        Upper triangle of each ``A``, row-major (``numpy.triu_indices`` order).
    rhs : ndarray, shape (m, n)
        Right-hand sides.

    Returns
    -------
    x : ndarray, shape (m, n)
        Solutions (undefined where ``failed``).
    failed : ndarray of bool, shape (n,)
        Systems that are not numerically positive definite.
    """
    m = rhs.shape[0]
    position = {pair: k for k, pair in enumerate(zip(*np.triu_indices(m), strict=True))}
    factor: list[list[np.ndarray]] = [[] for _ in range(m)]  # factor[i][k] = L[i, k], k <= i
    inverse_diagonal = []
    failed = np.zeros(rhs.shape[1], dtype=bool)
    for j in range(m):
        pivot = upper[position[j, j]].copy()
        for k in range(j):
            pivot -= factor[j][k] * factor[j][k]
        bad = ~(pivot > 0)
        failed |= bad
        pivot[bad] = 1.0
        inverse = 1.0 / np.sqrt(pivot)
        inverse_diagonal.append(inverse)
        factor[j].append(1.0 / inverse)
        for i in range(j + 1, m):
            value = upper[position[j, i]].copy()
            for k in range(j):
                value -= factor[i][k] * factor[j][k]
            factor[i].append(value * inverse)
    y = []
    for i in range(m):
        value = rhs[i].copy()
        for k in range(i):
            value -= factor[i][k] * y[k]
        y.append(value * inverse_diagonal[i])
    x: list[np.ndarray] = [np.empty(0)] * m
    for i in reversed(range(m)):
        value = y[i]
        for k in range(i + 1, m):
            value = value - factor[k][i] * x[k]
        x[i] = value * inverse_diagonal[i]
    return np.stack(x), failed


class _DipyEngine:
    """dipy's TensorModel on one chunk of (already floored) signals."""


    def __init__(
        self,
        series: DWI,
        method: str,
        data: np.ndarray,
        b0: np.ndarray,
        min_signal: float,
        sigma: float | None,
    ) -> None:
        from dipy.reconst.dti import TensorModel

        gtab = series.gradient_table()
        kwargs: dict[str, Any] = {"return_S0_hat": True, "min_signal": min_signal}
        if method == "restore":
            kwargs["sigma"] = _restore_sigma(sigma, data, b0)
        self.model = TensorModel(gtab, fit_method=_DIPY_FIT_METHOD[method], **kwargs)
        self.design = _design_matrix(series.bvals, series.bvecs)

    def fit(self, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with warnings.catch_warnings():
            # dipy warns when NLLS falls back to OLS in a voxel; the residual map shows it.
            warnings.simplefilter("ignore", UserWarning)
            fitted = self.model.fit(signal)
        evals = np.array(fitted.evals, dtype=np.float64)
        v1 = np.asarray(fitted.evecs)[..., 0]
        tensor = np.asarray(fitted.quadratic_form)
        six = tensor[:, [0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
        s0 = np.asarray(fitted.S0_hat, dtype=np.float64).reshape(-1)
        predicted = s0[:, None] * np.exp(six @ self.design[:, :6].T)
        residual = np.sqrt(np.mean((signal - predicted) ** 2, axis=1)) / s0
        return evals, v1, residual


def _restore_sigma(sigma: float | None, data: np.ndarray, b0: np.ndarray) -> float:
    if sigma is not None:
        try:
            value = float(sigma)
        except (TypeError, ValueError) as exc:
            raise InputError(f"sigma must be a number, got {sigma!r}.") from exc
        if not (np.isfinite(value) and value > 0):
            raise InputError(
                f"sigma must be a positive finite noise standard deviation, got {sigma!r}."
            )
        return value
    from dipy.denoise.noise_estimate import estimate_sigma

    estimates = [
        float(estimate_sigma(np.asarray(data[..., k], np.float64), N=0)[0])
        for k in np.flatnonzero(b0)
    ]
    value = float(np.median(estimates))
    if not (np.isfinite(value) and value > 0):
        raise InputError(
            "method='restore' needs the noise level, but estimate_sigma on the b0 volumes "
            f"gave {value!r} (noise-free or background-masked data?); pass sigma= (noise "
            "standard deviation in signal units)."
        )
    return value


# --------------------------------------------------------------------------------------------
# Closed-form 3x3 symmetric eigen-decomposition and scalar metrics
# --------------------------------------------------------------------------------------------
def _eigen_sym3(six: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and principal eigenvector of symmetric 3x3 tensors.

    ``six`` holds ``(Dxx, Dyy, Dzz, Dxy, Dxz, Dyz)`` per row. Eigenvalues use the
    trigonometric solution of the characteristic polynomial (λ2 from the trace, which keeps
    MD exact); v1 is the largest cross product of two rows of ``D - λ1 I``. Voxels where
    λ1 - λ2 is below ``_DEGENERATE_GAP * (λ1 - λ3)`` (v1 ill-defined, e.g. isotropic) use
    ``numpy.linalg.eigh`` for v1.
    """
    xx, yy, zz, xy, xz, yz = six.T
    q = (xx + yy + zz) / 3.0
    a, b, c = xx - q, yy - q, zz - q
    off = xy * xy + xz * xz + yz * yz
    p = np.sqrt((a * a + b * b + c * c + 2.0 * off) / 6.0)
    inv = np.divide(1.0, p, out=np.zeros_like(p), where=p > 0)
    a, b, c, bxy, bxz, byz = a * inv, b * inv, c * inv, xy * inv, xz * inv, yz * inv
    det = a * (b * c - byz * byz) - bxy * (bxy * c - byz * bxz) + bxz * (bxy * byz - b * bxz)
    phi = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    l1 = q + 2.0 * p * np.cos(phi)
    l3 = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    l2 = 3.0 * q - l1 - l3
    evals = np.stack([l1, l2, l3], axis=1)

    r0 = np.stack([xx - l1, xy, xz], axis=1)
    r1 = np.stack([xy, yy - l1, yz], axis=1)
    r2 = np.stack([xz, yz, zz - l1], axis=1)
    crosses = np.stack([np.cross(r0, r1), np.cross(r0, r2), np.cross(r1, r2)], axis=1)
    norms2 = np.einsum("nkj,nkj->nk", crosses, crosses)
    best = np.argmax(norms2, axis=1)
    rows = np.arange(six.shape[0])
    v1 = crosses[rows, best]
    length = np.sqrt(norms2[rows, best])
    spread = l1 - l3
    degenerate = ~(l1 - l2 > _DEGENERATE_GAP * spread) | ~(length > 0)
    v1 /= np.where(degenerate, 1.0, length)[:, None]
    if degenerate.any():
        tensor = six[degenerate][:, [[0, 3, 4], [3, 1, 5], [4, 5, 2]]]
        _, vectors = np.linalg.eigh(tensor)
        v1[degenerate] = vectors[:, :, -1]
    return evals, v1


def _metrics(evals: np.ndarray) -> dict[str, np.ndarray]:
    """FA, MD, AD, RD from descending eigenvalues (dipy's formulas)."""
    l1, l2, l3 = evals.T
    norm2 = l1 * l1 + l2 * l2 + l3 * l3
    spread2 = (l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2
    fa = np.sqrt(0.5 * np.divide(spread2, norm2, out=np.zeros_like(norm2), where=norm2 > 0))
    return {"fa": fa, "md": (l1 + l2 + l3) / 3.0, "ad": l1, "rd": (l2 + l3) / 2.0}


def _count(mask: nib.Nifti1Image | None) -> int:
    return 0 if mask is None else int(np.count_nonzero(np.asanyarray(mask.dataobj)))


def _image(array: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    out = nib.Nifti1Image(np.asarray(array), reference.affine)
    out.header.set_xyzt_units(reference.header.get_xyzt_units()[0])
    return out
