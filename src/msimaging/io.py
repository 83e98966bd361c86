"""Validated loading of images, masks and diffusion gradient tables.

Every public function accepts a path or an in-memory nibabel image, checks its input up front
and raises :class:`msimaging.errors.InputError` with a message that names the file or
argument, says what is wrong and how to fix it: a corrupt file, a 3-D image passed as DWI or a
mask on another grid never reaches numpy as a cryptic traceback or a silent wrong number.

Inputs are never modified: loaders return new in-memory images.

Gradient frames. b-vectors are read in FSL's convention by default (the ``.bvec`` of FSL,
BIDS, dcm2niix and MRtrix3 ``-fslgrad``: along the image axes, the x component negated when
the affine's determinant is positive, because FSL reads such images with the first axis
reversed) and held in :class:`DWI` in the **voxel frame** (the image's i, j, k axes, dipy's
convention). :func:`voxel_to_world_rotation` turns voxel-frame directions into world
(scanner RAS+) directions; :func:`bvecs_to_voxel` / :func:`bvecs_from_voxel` convert between
the ``"fsl"``, ``"voxel"`` and ``"world"`` conventions.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from msimaging.errors import InputError, MSImagingWarning

if TYPE_CHECKING:
    from dipy.core.gradients import GradientTable

__all__ = [
    "BVEC_CONVENTIONS",
    "DWI",
    "MAX_IMAGE_BYTES",
    "ImageLike",
    "bvecs_from_voxel",
    "bvecs_to_voxel",
    "check_input_file",
    "check_same_grid",
    "describe",
    "fsl_flips_x",
    "load_dwi",
    "load_image",
    "load_mask",
    "read_bvals_bvecs",
    "voxel_to_world_rotation",
]

ImageLike = str | os.PathLike | nib.spatialimages.SpatialImage

_NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: Largest image (bytes of voxel data in memory) a loader reads; a header claiming more is
#: refused before any data is read (a corrupt header must not end in a bare MemoryError).
#: Override with the environment variable ``MSIMAGING_MAX_IMAGE_BYTES``.
MAX_IMAGE_BYTES = 16 * 2**30

#: How b-vectors given to :func:`load_dwi` are to be read (see :func:`bvecs_to_voxel`).
BVEC_CONVENTIONS = ("fsl", "voxel", "world")


def describe(img: Any, name: str) -> str:
    """Return how to name an input in a message: ``name 'path'`` or ``name (in-memory image)``."""
    if isinstance(img, str | os.PathLike):
        return f"{name} '{os.fspath(img)}'"
    if not isinstance(img, nib.spatialimages.SpatialImage):
        return f"{name} (a {type(img).__name__})"
    filename = img.get_filename()
    if filename:
        return f"{name} '{filename}'"
    return f"{name} (in-memory image)"


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """Check that ``path`` is an existing, readable regular file, before anything opens it.

    A FIFO, socket or device named like an input would block a reader forever (or read
    endless data), a symbolic link loop or a folder would end in a raw ``OSError``: each is
    refused here, with one ``os.stat`` and no read.

    Parameters
    ----------
    path : str or os.PathLike
        The input file.
    what : str
        How to name it in messages (e.g. ``"bval file 'sub-01_dwi.bval'"``).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InputError
        Missing file, dangling symlink, symlink loop, folder, non-regular file, no permission.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                f"{what} is a symbolic link loop (a link that points back to itself through "
                "other links); replace it with the file itself or a link to it."
            ) from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise InputError(
                f"{what} cannot be opened: permission denied; make it readable "
                "(chmod a+r) or copy it somewhere you can read."
            ) from exc
        if os.path.islink(path):
            raise InputError(
                f"{what} is a symbolic link to '{os.readlink(path)}', which does not exist; "
                "fix the link or give the file itself."
            ) from exc
        raise InputError(
            f"{what} does not exist; check the path (and the working directory)."
        ) from exc
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} is a folder, not a file; give the file itself.")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else (
            "a socket" if stat.S_ISSOCK(info.st_mode) else "a device or special file")
        raise InputError(
            f"{what} is {kind}, not a regular file: reading it could block forever, so it is "
            "refused; give a regular file (copy the data into one)."
        )
    if not os.access(path, os.R_OK):
        raise InputError(
            f"{what} cannot be opened: permission denied; make it readable (chmod a+r) or "
            "copy it somewhere you can read."
        )
    return path


def _max_image_bytes() -> int:
    value = os.environ.get("MSIMAGING_MAX_IMAGE_BYTES")
    try:
        return int(float(value)) if value else MAX_IMAGE_BYTES
    except ValueError:
        return MAX_IMAGE_BYTES


def _check_geometry(img: nib.spatialimages.SpatialImage, what: str) -> None:
    """Header-only checks: a plausible size and an invertible, finite affine (no data read)."""
    shape = tuple(int(s) for s in img.shape)
    if any(s <= 0 for s in shape):
        raise InputError(
            f"{what} has a header with an empty dimension (shape {shape}); re-export the file."
        )
    dtype = np.dtype(img.get_data_dtype())
    header = img.header
    slope, inter = header.get_slope_inter() if hasattr(header, "get_slope_inter") else (None,
                                                                                        None)
    scaled = slope not in (None, 1.0) or inter not in (None, 0.0)
    itemsize = max(dtype.itemsize, 8) if scaled else dtype.itemsize  # scaled data are float
    n_bytes = int(np.prod(np.array(shape, dtype=np.float64))) * itemsize
    limit = _max_image_bytes()
    if n_bytes > limit:
        raise InputError(
            f"{what} has a header claiming shape {shape} of {dtype} ({n_bytes / 2**30:.3g} GiB "
            f"in memory), more than the {limit / 2**30:.3g} GiB msimaging reads; the header is "
            "probably corrupt (re-export the file). If the image really is this large, set the "
            "environment variable MSIMAGING_MAX_IMAGE_BYTES."
        )
    if img.affine is None:
        return  # an in-memory image without affine: nibabel gives it the header's default
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        raise InputError(
            f"{what} has a non-finite (NaN or infinite) affine in its header (sform/qform); "
            "the image has no position in space. Fix the header (e.g. copy the affine of the "
            "image it was made from: nibabel img.set_sform/set_qform, or fslcpgeom)."
        )
    det = float(np.linalg.det(affine[:3, :3]))
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not abs(det) > 1e-6 * max(float(np.prod(zooms)), 1e-300) or not abs(det) > 1e-12:
        raise InputError(
            f"{what} has a singular affine in its header (sform/qform determinant {det:.3g}; "
            f"voxel sizes {np.round(zooms, 4).tolist()} mm): voxels have no volume and no "
            "orientation. Fix the header (e.g. copy the affine of the image it was made from: "
            "nibabel img.set_sform/set_qform, or fslcpgeom)."
        )


def _raw_pixdim_problem(path: Path, loaded: nib.spatialimages.SpatialImage) -> str | None:
    """A zero voxel size in the header nibabel silently set to 1 mm (qform images only)."""
    header = loaded.header
    if not isinstance(header, nib.Nifti1Header) or int(header["sform_code"]) > 0:
        return None  # the sform gives the geometry; pixdim is not used
    try:
        with nib.openers.ImageOpener(path) as fileobj:
            raw = nib.Nifti1Header.from_fileobj(fileobj, check=False)
    except Exception:  # the header was read once already; nothing to add
        return None
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=float)
    if np.all(np.isfinite(pixdim)) and np.all(pixdim != 0):
        return None
    return (
        f"has voxel size(s) {pixdim.tolist()} (pixdim) and no sform, so its affine comes from "
        "a zero or non-finite voxel size (nibabel replaces it by 1 mm, a silent wrong size); "
        "fix the header's pixdim (e.g. fslcpgeom from the image it was made from)"
    )


def _check_file_size(path: Path, img: nib.spatialimages.SpatialImage, what: str) -> None:
    """An uncompressed NIfTI shorter than its header says is truncated (no data read)."""
    if not path.name.endswith(".nii") or not isinstance(img.header, nib.Nifti1Header):
        return
    expected = int(img.header.get_data_offset()) + int(np.prod(img.shape)) * np.dtype(
        img.get_data_dtype()).itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise InputError(
            f"{what} is truncated: its header needs {expected} bytes but the file has "
            f"{actual}; re-copy or re-export the file."
        )


def _read(img: ImageLike, what: str) -> nib.spatialimages.SpatialImage:
    """Open ``img`` and read its data into memory, turning any failure into InputError."""
    if isinstance(img, str | os.PathLike):
        path = check_input_file(img, what)
        try:
            loaded = nib.load(path)
        except Exception as exc:  # nibabel raises many types for unreadable files
            raise InputError(
                f"{what} cannot be read as an image ({type(exc).__name__}: {exc}); "
                "check that it is a complete NIfTI file (re-copy or re-export it)."
            ) from exc
        _check_geometry(loaded, what)
        problem = _raw_pixdim_problem(path, loaded)
        if problem:
            raise InputError(f"{what} {problem}.")
        _check_file_size(path, loaded, what)
    elif isinstance(img, nib.spatialimages.SpatialImage):
        loaded = img
        _check_geometry(loaded, what)
    else:
        raise InputError(
            f"{what} must be a file path or a nibabel image, not {type(img).__name__}; "
            "pass e.g. 'sub-01_dwi.nii.gz' or nibabel.load(...)."
        )
    try:
        data = np.asanyarray(loaded.dataobj)
    except (EOFError, zlib.error, OSError, ValueError, MemoryError) as exc:
        raise InputError(
            f"{what} is truncated or corrupt: its data cannot be read ({type(exc).__name__}: "
            f"{exc}); re-copy or re-export the file."
        ) from exc
    return nib.Nifti1Image(data, loaded.affine, _nifti_header(loaded))


def _nifti_header(img: nib.spatialimages.SpatialImage) -> nib.Nifti1Header | None:
    header = img.header
    if isinstance(header, nib.Nifti1Header):
        header = header.copy()
        # The data are already scaled by nibabel; keep the header from rescaling them again.
        header.set_slope_inter(None, None)
        return header
    return None


def _check_finite(data: np.ndarray, what: str) -> None:
    if not np.issubdtype(data.dtype, np.floating):
        return
    finite = np.isfinite(data)
    if finite.all():
        return
    n_bad = int(data.size - np.count_nonzero(finite))
    where = ""
    if data.ndim == 4:
        bad_volumes = np.flatnonzero(~finite.all(axis=(0, 1, 2)))
        shown = ", ".join(str(v) for v in bad_volumes[:10])
        where = f" in volume(s) {shown}{' ...' if bad_volumes.size > 10 else ''} (0-based)"
    raise InputError(
        f"{what} contains {n_bad} NaN or infinite voxel value(s){where}; "
        "fix or drop those volumes upstream (msimaging never fills them silently)."
    )


def load_image(
    img: ImageLike,
    *,
    name: str = "image",
    ndim: int | tuple[int, ...] | None = None,
    allow_nonfinite: bool = False,
) -> nib.Nifti1Image:
    """Load and validate an image.

    Parameters
    ----------
    img : str, os.PathLike or nibabel image
        The image, as a file path (``.nii``/``.nii.gz`` or anything nibabel reads) or an
        in-memory image.
    name : str
        What the image is, used in error messages (e.g. ``"dwi"``, ``"lesion_mask"``).
    ndim : int or tuple of int, optional
        Accepted numbers of dimensions; a 4-D image with a single volume counts as 3-D.
    allow_nonfinite : bool
        Accept NaN/Inf voxels (default: reject them).

    Returns
    -------
    nibabel.Nifti1Image
        A new in-memory image with its data loaded (the input is not modified).

    Raises
    ------
    InputError
        Missing, truncated or corrupt file; wrong number of dimensions; NaN/Inf values.
    """
    what = describe(img, name)
    out = _read(img, what)
    data = np.asanyarray(out.dataobj)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if data.ndim == 4 and data.shape[3] == 1 and 3 in allowed:
            data = data[..., 0]
            out = nib.Nifti1Image(data, out.affine, out.header)
        if data.ndim not in allowed:
            raise InputError(
                f"{what} has {data.ndim} dimensions (shape {data.shape}) but "
                f"{' or '.join(f'{d}-D' for d in allowed)} is expected; check that the right "
                "file was given."
            )
    if not allow_nonfinite:
        _check_finite(data, what)
    return out


def load_mask(
    mask: ImageLike,
    *,
    name: str = "mask",
    threshold: float | None = None,
    reference: ImageLike | None = None,
    reference_name: str = "reference",
    allow_empty: bool = False,
) -> nib.Nifti1Image:
    """Load a binary mask, or binarise a probability map with an explicit threshold.

    Parameters
    ----------
    mask : str, os.PathLike or nibabel image
        3-D mask. Without ``threshold`` its values must be 0 and 1 (or boolean).
    name : str
        What the mask is, used in error messages.
    threshold : float, optional
        Voxels strictly above it are in the mask. Required for probability maps: msimaging
        never guesses a threshold.
    reference : str, os.PathLike or nibabel image, optional
        The mask must be on the grid of this image (see :func:`check_same_grid`).
    reference_name : str
        What the reference is, used in error messages.
    allow_empty : bool
        Accept a mask with no voxel (default: reject it).

    Returns
    -------
    nibabel.Nifti1Image
        A ``uint8`` 0/1 image on the mask's grid.
    """
    what = describe(mask, name)
    img = load_image(mask, name=name, ndim=3)
    data = np.asanyarray(img.dataobj)
    if threshold is not None:
        if not np.isfinite(threshold):
            raise InputError(f"threshold for {what} must be a finite number, not {threshold!r}.")
        binary = data > threshold
    else:
        values = np.unique(data)
        extra = values[(values != 0) & (values != 1)]
        if extra.size:
            shown = ", ".join(f"{v:g}" for v in extra[:5])
            raise InputError(
                f"{what} is not binary: it contains values other than 0 and 1 ({shown}"
                f"{' ...' if extra.size > 5 else ''}). If it is a probability map, pass "
                "threshold=0.5 (or your choice); if it is a label map, select the label first."
            )
        binary = data.astype(bool)
    if not allow_empty and not binary.any():
        detail = f" above threshold {threshold:g}" if threshold is not None else ""
        raise InputError(
            f"{what} is empty: no voxel{detail}. Check that the right file was given"
            f"{' or lower the threshold' if threshold is not None else ''}."
        )
    out = nib.Nifti1Image(binary.astype(np.uint8), img.affine)
    out.header.set_xyzt_units(*img.header.get_xyzt_units())
    if reference is not None:
        check_same_grid(
            reference, out, names=(reference_name, name), _described=(None, what)
        )
    return out


def _grid(img: ImageLike, name: str) -> tuple[tuple[int, ...], np.ndarray, str]:
    what = describe(img, name)
    if isinstance(img, str | os.PathLike):
        path = check_input_file(img, what)
        try:
            img = nib.load(path)
        except Exception as exc:
            raise InputError(
                f"{what} cannot be read as an image ({type(exc).__name__}: {exc}); "
                "check that it is a complete NIfTI file."
            ) from exc
    if not isinstance(img, nib.spatialimages.SpatialImage):
        raise InputError(f"{what} must be a file path or a nibabel image.")
    _check_geometry(img, what)
    return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, float), what


def check_same_grid(
    a: ImageLike,
    b: ImageLike,
    *,
    names: tuple[str, str] = ("first image", "second image"),
    atol_mm: float = 1e-3,
    _described: tuple[str | None, str | None] = (None, None),
) -> None:
    """Check that two images share a voxel grid (spatial shape and affine).

    The affine difference is measured where it matters: the largest displacement, in mm,
    of any corner of the grid mapped through the two affines.

    Parameters
    ----------
    a, b : str, os.PathLike or nibabel image
        Images to compare (only the first three dimensions count).
    names : (str, str)
        What the images are, used in error messages.
    atol_mm : float
        Largest accepted corner displacement in mm.

    Raises
    ------
    InputError
        Different spatial shapes, or affines that place the grid more than ``atol_mm`` apart.
    """
    shape_a, aff_a, what_a = _grid(a, names[0])
    shape_b, aff_b, what_b = _grid(b, names[1])
    what_a = _described[0] or what_a
    what_b = _described[1] or what_b
    fix = (
        "resample one onto the other (e.g. nilearn.image.resample_to_img(img, reference, "
        "interpolation='nearest') for masks) or use the files from the same processing space."
    )
    if shape_a != shape_b:
        raise InputError(
            f"{what_b} is not on the grid of {what_a}: shape {shape_b} vs {shape_a}; {fix}"
        )
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape_a], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    shift_mm = float(np.max(np.linalg.norm((aff_a @ corners - aff_b @ corners)[:3], axis=0)))
    if not shift_mm <= atol_mm:
        raise InputError(
            f"{what_b} is not on the grid of {what_a}: same shape {shape_a} but the affines "
            f"differ, placing voxels up to {shift_mm:.3g} mm apart (tolerance {atol_mm:g} mm); "
            f"{fix}"
        )


def _sidecar(dwi: ImageLike, ext: str) -> Path | None:
    if not isinstance(dwi, str | os.PathLike):
        return None
    path = os.fspath(dwi)
    for suffix in _NIFTI_SUFFIXES:
        if path.endswith(suffix):
            return Path(path[: -len(suffix)] + ext)
    return None


def _read_numbers(path: Path, what: str) -> np.ndarray:
    if not os.path.lexists(path):
        raise InputError(
            f"{what} '{path}' does not exist; diffusion data need FSL-style .bval and .bvec "
            "files next to the image (or pass bvals=/bvecs= explicitly)."
        )
    check_input_file(path, f"{what} '{path}'")
    try:
        text = path.read_text()
        rows = [line.split() for line in text.splitlines() if line.strip()]
        widths = {len(r) for r in rows}
        if not rows or len(widths) != 1:
            raise ValueError("rows of different lengths" if rows else "file is empty")
        return np.array(rows, dtype=float)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{what} '{path}' cannot be parsed as a table of numbers ({exc}); it must hold "
            "whitespace-separated numbers, one row (bval) or three rows/columns (bvec)."
        ) from exc


def read_bvals_bvecs(
    bvals: str | os.PathLike | np.ndarray | list,
    bvecs: str | os.PathLike | np.ndarray | list,
) -> tuple[np.ndarray, np.ndarray]:
    """Read b-values and b-vectors from FSL files or arrays, without validating them.

    Returns ``bvals`` with shape (N,) and ``bvecs`` as given but as a float array (3xN or Nx3).
    """
    if isinstance(bvals, str | os.PathLike):
        bvals = _read_numbers(Path(bvals), "bval file")
    if isinstance(bvecs, str | os.PathLike):
        bvecs = _read_numbers(Path(bvecs), "bvec file")
    try:
        bvals_arr = np.asarray(bvals, dtype=float)
        bvecs_arr = np.asarray(bvecs, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"bvals/bvecs must be numeric arrays ({exc}).") from exc
    if bvals_arr.ndim == 2 and 1 in bvals_arr.shape:
        bvals_arr = bvals_arr.ravel()
    if bvals_arr.ndim != 1:
        raise InputError(
            f"bvals must be one row of numbers, got an array of shape {bvals_arr.shape}; "
            "check that the .bval and .bvec files were not swapped."
        )
    return bvals_arr, bvecs_arr


def _linear_part(affine: Any, name: str = "affine") -> np.ndarray:
    try:
        matrix = np.asarray(affine, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a numeric (4, 4) or (3, 3) matrix ({exc}).") from exc
    if matrix.shape not in ((4, 4), (3, 3)) or not np.all(np.isfinite(matrix)):
        raise InputError(
            f"{name} must be a finite (4, 4) voxel-to-world matrix (or its (3, 3) linear "
            f"part), got shape {matrix.shape}; pass the image's affine (img.affine)."
        )
    linear = matrix[:3, :3]
    if not abs(np.linalg.det(linear)) > 1e-12:
        raise InputError(
            f"{name} is singular (determinant {np.linalg.det(linear):.3g}): the image has no "
            "valid orientation; fix the header (qform/sform) of the file."
        )
    return linear


def fsl_flips_x(affine: Any) -> bool:
    """Whether FSL reads the image with its first voxel axis reversed.

    FSL treats every image as radiological (voxel-to-world determinant < 0); an image whose
    affine has a positive determinant is read with its first (i) axis reversed, and the x
    component of an FSL ``.bvec`` refers to that reversed axis. MRtrix3 (``-fslgrad``),
    dcm2niix and FSL's FDT documentation follow the same rule.

    Parameters
    ----------
    affine : array_like, shape (4, 4) or (3, 3)
        Voxel-to-world matrix of the image the b-vectors belong to.

    Returns
    -------
    bool
        True when ``det(affine[:3, :3]) > 0``.
    """
    return bool(np.linalg.det(_linear_part(affine)) > 0)


def voxel_to_world_rotation(affine: Any) -> np.ndarray:
    """Orthogonal matrix taking directions in the voxel frame to the world frame.

    The voxel frame has its axes along the image's voxel axes i, j, k (unit length, so voxel
    sizes do not matter); the world frame is the affine's output space (for NIfTI, scanner
    or template RAS+ mm). The matrix is the orthogonal polar factor of ``affine[:3, :3]``:
    exactly ``affine[:3, :3] / voxel_sizes`` for any affine without shear (oblique or not,
    determinant of either sign), and the nearest orthogonal matrix otherwise.

    Parameters
    ----------
    affine : array_like, shape (4, 4) or (3, 3)
        Voxel-to-world matrix.

    Returns
    -------
    ndarray, shape (3, 3)
        ``R`` with ``world = R @ voxel`` (``det(R)`` has the sign of ``det(affine)``).
    """
    u, _, vt = np.linalg.svd(_linear_part(affine))
    return u @ vt


def _check_convention(convention: object) -> str:
    if convention not in BVEC_CONVENTIONS:
        raise InputError(
            f"bvec_convention={convention!r} is not known; choose 'fsl' (FSL/BIDS .bvec: "
            "image axes, x reversed when the affine's determinant is positive; the default), "
            "'voxel' (image axes as stored, dipy's convention) or 'world' (scanner/world "
            "axes of the affine, as in MRtrix3's -grad tables)."
        )
    return str(convention)


def _flip_x(vectors: np.ndarray) -> np.ndarray:
    out = np.array(vectors, dtype=float, copy=True)
    out[:, 0] = -out[:, 0]
    return out


def bvecs_to_voxel(bvecs: Any, affine: Any, convention: str = "fsl") -> np.ndarray:
    """Convert gradient directions (N, 3) to the image's voxel frame.

    Parameters
    ----------
    bvecs : array_like, shape (N, 3)
        Directions, one row per volume.
    affine : array_like, shape (4, 4)
        Voxel-to-world matrix of the image the directions belong to.
    convention : {"fsl", "voxel", "world"}
        ``"fsl"``: FSL's ``.bvec`` convention (also BIDS, dcm2niix, MRtrix3 ``-fslgrad``):
        image axes, with x negated when ``det(affine[:3, :3]) > 0`` (see
        :func:`fsl_flips_x`); ``"voxel"``: already in the voxel frame (dipy's
        ``gradient_table`` convention); ``"world"``: in the world frame of the affine.

    Returns
    -------
    ndarray, shape (N, 3)
        Directions in the voxel frame (a new array).
    """
    convention = _check_convention(convention)
    vectors = np.asarray(bvecs, dtype=float)
    if convention == "voxel":
        return vectors.copy()
    if convention == "world":
        return vectors @ voxel_to_world_rotation(affine)  # rows: Rᵀ g
    return _flip_x(vectors) if fsl_flips_x(affine) else vectors.copy()


def bvecs_from_voxel(bvecs: Any, affine: Any, convention: str = "fsl") -> np.ndarray:
    """Inverse of :func:`bvecs_to_voxel`: voxel-frame directions (N, 3) to ``convention``.

    Use ``convention="fsl"`` to write a ``.bvec`` file that FSL, MRtrix3 and msimaging read
    back as the same physical directions (rows of the result are the file's columns).
    """
    convention = _check_convention(convention)
    vectors = np.asarray(bvecs, dtype=float)
    if convention == "voxel":
        return vectors.copy()
    if convention == "world":
        return vectors @ voxel_to_world_rotation(affine).T  # rows: R g
    return _flip_x(vectors) if fsl_flips_x(affine) else vectors.copy()


@dataclass(frozen=True)
class DWI:
    """A validated diffusion-weighted series with its gradient table.

    Attributes
    ----------
    img : nibabel.Nifti1Image
        4-D image, one volume per gradient.
    bvals : ndarray, shape (N,)
        b-values in s/mm².
    bvecs : ndarray, shape (N, 3)
        Unit gradient directions **in the voxel frame** (the image's i, j, k axes; zero rows
        allowed for b0 volumes), whatever convention they were given in: this is the frame
        of dipy's ``gradient_table`` and of every tensor fitted from them.
        :meth:`bvecs_in` gives them in the world or FSL convention.
    b0_threshold : float
        Volumes with b-value at or below it count as b0.
    source : str
        Where the data came from (file path or "in-memory image").
    notes : tuple of str
        What was adjusted on loading (normalised vectors, an FSL x flip).
    bvec_convention : {"fsl", "voxel", "world"}
        The convention the b-vectors were read in (see :func:`bvecs_to_voxel`).
    """

    img: nib.Nifti1Image
    bvals: np.ndarray
    bvecs: np.ndarray
    b0_threshold: float
    source: str = "in-memory image"
    notes: tuple[str, ...] = field(default=())
    bvec_convention: str = "voxel"

    def bvecs_in(self, convention: str = "world") -> np.ndarray:
        """The gradient directions (N, 3) in ``"world"`` (default), ``"fsl"`` or ``"voxel"``.

        ``"world"`` is the affine's output frame (scanner RAS+ for NIfTI): the physical
        direction of each gradient. ``"fsl"`` is what a ``.bvec`` file for this image must
        hold (write its transpose).
        """
        return bvecs_from_voxel(self.bvecs, self.img.affine, convention)

    @property
    def b0_mask(self) -> np.ndarray:
        """Boolean array, True for b0 volumes."""
        return self.bvals <= self.b0_threshold

    @property
    def n_volumes(self) -> int:
        return int(self.bvals.size)

    def gradient_table(self) -> GradientTable:
        """The dipy gradient table of this series, in the voxel frame as dipy expects (dipy is
        imported here, on first use)."""
        from dipy.core.gradients import gradient_table

        return gradient_table(self.bvals, bvecs=self.bvecs, b0_threshold=self.b0_threshold)

    def __repr__(self) -> str:
        shells = np.unique(np.round(self.bvals[~self.b0_mask], -2)).astype(int).tolist()
        return (
            f"DWI({self.source}, shape={self.img.shape}, b0={int(self.b0_mask.sum())}, "
            f"directions={int((~self.b0_mask).sum())}, shells={shells})"
        )


def _unwrap_overflow(img: nib.Nifti1Image, what: str) -> tuple[nib.Nifti1Image, str | None]:
    """Undo a signed-integer overflow in a magnitude image (DWI), with a warning.

    A converter that scales the signal past 32767 and stores int16 wraps the brightest voxels
    to large negative values; a magnitude image has none, so values below half the type's
    negative range can only be a wrap. When every negative value is such a wrap, the stored
    bits are read as unsigned (exact for signals below 2x the signed maximum); a mix with
    small negative values is ambiguous and refused.
    """
    data = np.asanyarray(img.dataobj)
    if data.dtype.kind == "f" and data.size:
        # Scaled integers (scl_slope) arrive as floats: the raw bits are gone, so a wrap can
        # only be refused. Noise-floor negatives of processed data are a few % of the peak.
        low, high = float(data.min()), float(data.max())
        if high > 0 and low < -0.25 * high:
            raise InputError(
                f"{what} has strongly negative values (down to {low:.6g}, peak {high:.6g}): "
                "a magnitude image has none, so the values probably overflowed the stored "
                "integer type before scaling (scl_slope). Re-convert the DICOMs storing a "
                "wider type (e.g. dcm2niix keeps uint16/float)."
            )
        return img, None
    if data.dtype.kind != "i" or data.dtype.itemsize > 4:
        return img, None
    info = np.iinfo(data.dtype)
    low = data.min()
    if low >= 0:
        return img, None
    half = -(info.max // 2)
    negative = data < 0
    n_negative = int(np.count_nonzero(negative))
    if low > half:
        return img, None  # small negatives (noise): not a wrap; fit_tensor floors them
    if np.any(negative & (data > half)):
        raise InputError(
            f"{what} holds {data.dtype} values down to {int(low)} mixed with small negative "
            "values: a magnitude image has no negative values, and these look like an integer "
            "overflow (values above the type's maximum wrapped around) that cannot be undone "
            "unambiguously. Re-convert the DICOMs storing a wider type (e.g. dcm2niix keeps "
            "uint16/float) or check the scaling."
        )
    unsigned = data.view(np.dtype(f"u{data.dtype.itemsize}"))
    out = nib.Nifti1Image(unsigned, img.affine, img.header)
    out.set_data_dtype(unsigned.dtype)
    note = (
        f"{n_negative} voxel value(s) of {what} were negative (down to {int(low)}): an "
        f"overflow of the signed {data.dtype} type (signals above {info.max} wrapped around); "
        f"the data were read as unsigned {unsigned.dtype}, which restores signals up to "
        f"{np.iinfo(unsigned.dtype).max}. Re-convert the data storing a wider type to be sure"
    )
    warnings.warn(note + ".", MSImagingWarning, stacklevel=3)
    return out, note


def load_dwi(
    dwi: ImageLike,
    bvals: str | os.PathLike | np.ndarray | list | None = None,
    bvecs: str | os.PathLike | np.ndarray | list | None = None,
    *,
    b0_threshold: float = 50.0,
    bvec_norm_tolerance: float = 0.05,
    bvec_convention: str = "fsl",
) -> DWI:
    """Load and validate a diffusion-weighted series and its gradient table.

    Parameters
    ----------
    dwi : str, os.PathLike or nibabel image
        4-D diffusion series.
    bvals, bvecs : path or array, optional
        FSL-style b-values (one row) and b-vectors (3xN or Nx3). When omitted and ``dwi`` is a
        path, the ``.bval``/``.bvec`` files with the same stem are used. Files and arrays are
        read alike, in the convention ``bvec_convention``.
    b0_threshold : float
        b-values (s/mm²) at or below this count as b0 volumes; at least one is required.
    bvec_norm_tolerance : float
        b-vectors of diffusion-weighted volumes whose norm differs from 1 by at most this are
        normalised; larger deviations are rejected.
    bvec_convention : {"fsl", "voxel", "world"}
        Frame of the given b-vectors. ``"fsl"`` (default): FSL's ``.bvec`` convention, which
        BIDS, dcm2niix and MRtrix3 (``-fslgrad``) share: directions along the image axes,
        with the x component referring to the reversed first axis when the affine's
        determinant is positive (FSL reads every image as radiological), so the voxel-frame
        directions are the file's with x negated when ``det(affine[:3, :3]) > 0``.
        ``"voxel"``: already along the image axes as stored (dipy's convention: what
        ``dipy.core.gradients.gradient_table`` expects). ``"world"``: physical directions in
        the affine's world frame (scanner RAS+; MRtrix3's ``-grad`` tables are in this frame).

    Returns
    -------
    DWI
        The image (data loaded), b-values (N,) and unit b-vectors (N, 3) in the voxel frame.

    Raises
    ------
    InputError
        Not 4-D; NaN/Inf data; strongly negative values that cannot be undone (see Notes);
        missing, non-regular or unparseable .bval/.bvec; counts that disagree;
        zero or non-unit b-vectors at b > ``b0_threshold``; no b0 volume; negative b-values.

    Warns
    -----
    MSImagingWarning
        When signed integer data hold large negative values that can only be an overflow
        (signals above 32767 stored as int16 wrap to negative values) and none small ones:
        the stored bits are read as unsigned (exact up to 65535), and ``DWI.notes`` says so.
    """
    what = describe(dwi, "dwi")
    bvec_convention = _check_convention(bvec_convention)
    if bvals is None or bvecs is None:
        if _sidecar(dwi, ".bval") is None:
            raise InputError(
                f"{what}: bvals and bvecs are required for an in-memory image or a file that "
                "is not .nii/.nii.gz; pass bvals= and bvecs= (arrays or FSL files)."
            )
        bvals = _sidecar(dwi, ".bval") if bvals is None else bvals
        bvecs = _sidecar(dwi, ".bvec") if bvecs is None else bvecs
    bvals_arr, bvecs_arr = read_bvals_bvecs(bvals, bvecs)
    bval_src = f"bvals '{bvals}'" if isinstance(bvals, str | os.PathLike) else "bvals"
    bvec_src = f"bvecs '{bvecs}'" if isinstance(bvecs, str | os.PathLike) else "bvecs"

    img = load_image(dwi, name="dwi", ndim=4)
    img, wrap_note = _unwrap_overflow(img, what)
    n_vol = img.shape[3]
    if not np.all(np.isfinite(bvals_arr)) or np.any(bvals_arr < 0):
        raise InputError(f"{bval_src} contains negative or non-finite b-values; fix the file.")
    if bvals_arr.size != n_vol:
        raise InputError(
            f"{bval_src} has {bvals_arr.size} values but {what} has {n_vol} volumes; "
            "use the .bval written with this image (volumes may have been dropped or merged)."
        )
    if bvecs_arr.ndim != 2 or 3 not in bvecs_arr.shape:
        raise InputError(
            f"{bvec_src} must have 3 rows (FSL) or 3 columns, got shape {bvecs_arr.shape}."
        )
    # FSL writes 3xN; accept Nx3. A 3x3 table is read as FSL's 3xN.
    vecs = bvecs_arr.T if bvecs_arr.shape[0] == 3 else bvecs_arr
    if vecs.shape[0] != n_vol:
        raise InputError(
            f"{bvec_src} has {vecs.shape[0]} directions but {what} has {n_vol} volumes "
            f"(and {bvals_arr.size} b-values); use the .bvec written with this image."
        )
    if not np.all(np.isfinite(vecs)):
        raise InputError(f"{bvec_src} contains NaN or infinite values; fix the file.")
    b0 = bvals_arr <= b0_threshold
    if not b0.any():
        raise InputError(
            f"{bval_src}: no b0 volume (smallest b-value {bvals_arr.min():g} s/mm² is above "
            f"b0_threshold={b0_threshold:g}); tensor fitting needs at least one b0. If your "
            "b0 volumes have a small nominal b-value, raise b0_threshold."
        )
    norms = np.linalg.norm(vecs, axis=1)
    zero = ~b0 & (norms < 1e-6)
    if zero.any():
        idx = np.flatnonzero(zero)
        raise InputError(
            f"{bvec_src}: zero-length gradient direction at volume(s) "
            f"{', '.join(map(str, idx[:10]))} (0-based) whose b-value is "
            f"{bvals_arr[idx[0]]:g} s/mm² > b0_threshold={b0_threshold:g}; the direction is "
            "unknown. Fix the .bvec or drop those volumes."
        )
    off = ~b0 & (np.abs(norms - 1.0) > bvec_norm_tolerance)
    if off.any():
        idx = np.flatnonzero(off)
        raise InputError(
            f"{bvec_src}: gradient directions are not unit vectors at volume(s) "
            f"{', '.join(map(str, idx[:10]))} (0-based; norm {norms[idx[0]]:.4g}, tolerance "
            f"±{bvec_norm_tolerance:g}). Normalise them (some scanners scale b-vectors by the "
            "b-value; then divide by the norm and check the .bval) or raise "
            "bvec_norm_tolerance if you trust them."
        )
    unit = vecs.copy()
    unit[~b0] /= norms[~b0, None]
    notes = [wrap_note] if wrap_note else []
    if (np.abs(norms[~b0] - 1.0) > 1e-6).any():
        deviation = float(np.max(np.abs(norms[~b0] - 1.0)))
        notes.append(f"b-vectors normalised (largest norm deviation {deviation:.2g})")
    try:
        unit = bvecs_to_voxel(unit, img.affine, bvec_convention)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from exc
    if bvec_convention == "fsl" and fsl_flips_x(img.affine):
        notes.append(
            "FSL b-vectors: x negated to the voxel frame (affine determinant > 0, which FSL "
            "reads with the first axis reversed)"
        )
    if isinstance(dwi, str | os.PathLike):
        source = os.fspath(dwi)
    else:
        source = dwi.get_filename() or "in-memory image"
    return DWI(
        img=img,
        bvals=bvals_arr,
        bvecs=unit,
        b0_threshold=float(b0_threshold),
        source=source,
        notes=tuple(notes),
        bvec_convention=bvec_convention,
    )
