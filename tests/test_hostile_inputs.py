"""A sweep of hostile input FILES (issue 19): every case is typed or recovered, never worse.

Each case builds one malformed input in a temporary folder from a copy of the tiny synthetic
study (the session fixture's files are never modified), calls the public entry point a user
would, and classifies the outcome:

- ``typed``: an :mod:`msimaging.errors` error whose message names the culprit;
- ``recovered``: a result plus an :class:`MSImagingWarning`, the result checked against the
  truth (the same call on the valid input, or the planted value);
- ``ok``: a result equal to the truth (for inputs that must simply work: a path with spaces
  and non-ASCII characters, Nx3 b-vectors, fMRIPrep's n/a first FD row, an empty lesion mask);
- ``unnamed`` (typed but the message does not name the culprit), ``untyped`` (any other
  exception), ``silent`` (a result that differs from the truth), ``hang`` (no answer within
  the guard time; FIFOs are then released so the thread ends).

The per-case test asserts typed/recovered/ok; the summary asserts >= 40 cases, 0 untyped,
0 silent, 0 hangs and prints the table.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msimaging.errors import MSImagingError, MSImagingWarning

pytestmark = pytest.mark.timeout(300)

_GUARD_S = 20.0  # a case that has not answered by then is a hang
_SUB = "sub-01/ses-M0"
_DWI = f"{_SUB}/dwi/sub-01_ses-M0_dwi"
_T1 = f"{_SUB}/anat/sub-01_ses-M0_T1w.nii.gz"
_SEG_DIR = f"derivatives/segmentation/{_SUB}/anat"
_SEG = f"{_SEG_DIR}/sub-01_ses-M0_dseg"
_LESION = f"{_SEG_DIR}/sub-01_ses-M0_label-lesion_mask.nii.gz"
_FUNC = f"derivatives/fmriprep/{_SUB}/func/sub-01_ses-M0_task-rest"
_BOLD = f"{_FUNC}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
_CONFOUNDS = f"{_FUNC}_desc-confounds_timeseries.tsv"


# --------------------------------------------------------------------------------------------
# Building hostile files
# --------------------------------------------------------------------------------------------


@dataclass
class Env:
    """Where a case builds its files, and the valid source study (read-only)."""

    root: Path  # the tiny study (never written)
    tmp: Path  # this case's own folder

    def src(self, rel: str) -> Path:
        return self.root / rel

    def copy(self, rel: str, name: str | None = None) -> Path:
        """Copy one file of the study into the case folder (keeping the BIDS name)."""
        dst = self.tmp / (name or Path(rel).name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.src(rel), dst)
        return dst

    def dwi(self, stem: str = "sub-01_ses-M0_dwi") -> Path:
        """Copy the DWI with its .bval/.bvec (returns the .nii.gz path)."""
        for ext in (".nii.gz", ".bval", ".bvec"):
            self.copy(_DWI + ext, stem + ext)
        return self.tmp / f"{stem}.nii.gz"

    def seg(self) -> Path:
        """Copy the dseg with its dseg.tsv."""
        self.copy(_SEG + ".tsv")
        return self.copy(_SEG + ".nii.gz")

    def save(self, data: np.ndarray, like: str, name: str, dtype=None) -> Path:
        """A new image with ``data`` on the grid of the study file ``like``."""
        ref = nib.load(self.src(like))
        array = np.asarray(data, dtype=dtype)
        # nibabel wants int64 said explicitly (a 2**40 label needs it)
        img = nib.Nifti1Image(array, ref.affine,
                              dtype=array.dtype if array.dtype == np.int64 else None)
        img.header.set_xyzt_units(*ref.header.get_xyzt_units())
        if len(np.shape(data)) == 4:
            img.header.set_zooms((*ref.header.get_zooms()[:3], ref.header.get_zooms()[-1]))
        path = self.tmp / name
        img.to_filename(path)
        return path

    def data(self, rel: str) -> np.ndarray:
        return np.asanyarray(nib.load(self.src(rel)).dataobj)


def _nifti_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


def _patch_header(src: Path, dst: Path, **fields) -> Path:
    """Write ``src`` to ``dst`` with raw NIfTI header fields overwritten (no nibabel repair)."""
    raw = _nifti_bytes(src)
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]))
    for key, value in fields.items():
        header[key] = value
    out = header.binaryblock + raw[348:]
    dst.write_bytes(gzip.compress(out, compresslevel=1) if dst.name.endswith(".gz") else out)
    return dst


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    _FIFOS.append(path)
    return path


_FIFOS: list[Path] = []


def _release_fifos() -> None:
    """Open every FIFO for writing once, so a reader blocked on it gets EOF and returns."""
    for path in _FIFOS:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue  # no reader waiting
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    detail: str


def _classify(
    call: Callable[[], object], culprits: tuple[str, ...], check: Callable[[object], bool] | None
) -> Outcome:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call()
        except MSImagingError as exc:
            message = str(exc)
            if all(c in message for c in culprits):
                return Outcome("typed", f"{type(exc).__name__}: {message}")
            return Outcome("unnamed", f"{type(exc).__name__} not naming {culprits}: {message}")
        except Exception as exc:  # what the sweep is here to find
            return Outcome("untyped", f"{type(exc).__name__}: {exc}")
    ours = [str(w.message) for w in caught if issubclass(w.category, MSImagingWarning)]
    try:
        correct = check is not None and bool(check(result))
    except Exception as exc:
        return Outcome("silent", f"result could not be checked ({type(exc).__name__}: {exc})")
    if not correct:
        return Outcome("silent", f"result differs from the truth (warnings: {ours})")
    if ours:
        return Outcome("recovered", " | ".join(ours))
    return Outcome("ok", "result equals the truth")


CASES: dict[str, Callable[[Env], Outcome]] = {}


def case(name: str):
    def register(func):
        assert name not in CASES
        CASES[name] = func
        return func

    return register


# --------------------------------------------------------------------------------------------
# Entry points and truths
# --------------------------------------------------------------------------------------------


def _load_dwi(path, **kw):
    from msimaging.io import load_dwi

    return load_dwi(path, **kw)


def _fit(path, **kw):
    from msimaging.dti import fit_tensor

    return fit_tensor(path, **kw)


def _volumes(seg, lesion=None, **kw):
    from msimaging.volumetry import tissue_volumes

    return tissue_volumes(seg, lesion, **kw)


def _timeseries(bold, **kw):
    from msimaging.fmri import extract_timeseries

    kw.setdefault("strategy", None)
    return extract_timeseries(bold, "seitzman2018", **kw)


def _phenotype(root):
    from msimaging.stats.phenotype import read_phenotype

    return read_phenotype(root)


_TRUTH: dict[str, object] = {}


def _truth(key: str, make: Callable[[], object]) -> object:
    if key not in _TRUTH:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _TRUTH[key] = make()
    return _TRUTH[key]


def _same_dwi(env: Env) -> Callable[[object], bool]:
    truth = _truth("dwi", lambda: _load_dwi(env.src(_DWI + ".nii.gz")))

    def check(result) -> bool:
        return (
            np.array_equal(np.asanyarray(result.img.dataobj), np.asanyarray(truth.img.dataobj))
            and np.allclose(result.bvals, truth.bvals)
            and np.allclose(result.bvecs, truth.bvecs)
        )

    return check


def _same_volumes(env: Env, with_lesion: bool = True) -> Callable[[object], bool]:
    key = f"volumes-{with_lesion}"
    truth = _truth(key, lambda: _volumes(env.src(_SEG + ".nii.gz"),
                                         env.src(_LESION) if with_lesion else None))

    def check(result) -> bool:
        return np.allclose(result["volume_ml"].to_numpy(float), truth["volume_ml"].to_numpy(float))

    return check


def _never(_result) -> bool:
    return False  # any result is wrong: the input cannot give a correct one


# --------------------------------------------------------------------------------------------
# Cases: image files (any loader)
# --------------------------------------------------------------------------------------------


def _t1_load(path):
    from msimaging.io import load_image

    return load_image(path, name="t1w", ndim=3)


@case("image_zero_byte")
def _(env):
    path = env.tmp / "sub-01_T1w.nii.gz"
    path.write_bytes(b"")
    return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("image_truncated_gz")
def _(env):
    raw = env.src(_T1).read_bytes()
    path = env.tmp / "sub-01_T1w.nii.gz"
    path.write_bytes(raw[: len(raw) // 2])
    return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("image_truncated_nii")
def _(env):
    raw = _nifti_bytes(env.src(_T1))
    path = env.tmp / "sub-01_T1w.nii"
    path.write_bytes(raw[: len(raw) // 2])
    return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("image_text_named_nii_gz")
def _(env):
    path = env.tmp / "sub-01_T1w.nii.gz"
    path.write_text("this is not an image\n")
    return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("image_gzip_of_text")
def _(env):
    path = env.tmp / "sub-01_T1w.nii.gz"
    path.write_bytes(gzip.compress(b"hello " * 100))
    return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("image_directory_named_nii_gz")
def _(env):
    path = env.tmp / "sub-01_T1w.nii.gz"
    path.mkdir()
    return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("image_symlink_loop")
def _(env):
    a, b = env.tmp / "a_T1w.nii.gz", env.tmp / "b_T1w.nii.gz"
    a.symlink_to(b)
    b.symlink_to(a)
    return _classify(lambda: _t1_load(a), (a.name,), _never)


@case("image_dangling_symlink")
def _(env):
    a = env.tmp / "a_T1w.nii.gz"
    a.symlink_to(env.tmp / "nowhere.nii.gz")
    return _classify(lambda: _t1_load(a), (a.name,), _never)


@case("image_fifo")
def _(env):
    path = _fifo(env.tmp / "sub-01_T1w.nii.gz")
    return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("image_unreadable_file")
def _(env):
    path = env.copy(_T1)
    path.chmod(0)
    if os.geteuid() != 0:
        return _classify(lambda: _t1_load(path), (path.name,), _never)
    # Root reads a chmod 000 file (and no other user can run this venv), so the refusal the
    # kernel would give is injected where every reader meets it: open() of that file.
    import builtins
    from unittest import mock

    real_open = builtins.open

    def denied(file, *args, **kwargs):
        if isinstance(file, str | os.PathLike) and Path(file) == path:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    with mock.patch("builtins.open", denied):
        return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("image_nan_affine")
def _(env):
    path = _patch_header(env.src(_T1), env.tmp / "sub-01_T1w.nii.gz",
                         srow_x=[np.nan, 0, 0, 0])
    return _classify(lambda: _t1_load(path), (path.name, "affine"), _never)


@case("image_singular_affine")
def _(env):
    path = _patch_header(env.src(_T1), env.tmp / "sub-01_T1w.nii.gz", srow_z=[0, 0, 0, 5])
    return _classify(lambda: _t1_load(path), (path.name, "affine"), _never)


@case("image_huge_header")
def _(env):
    path = _patch_header(env.src(_T1), env.tmp / "sub-01_T1w.nii.gz",
                         dim=[3, 30000, 30000, 30000, 1, 1, 1, 1])
    return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("image_qform_zero_pixdim")
def _(env):
    # No sform: the affine comes from the qform, which a zero voxel size makes singular.
    path = _patch_header(env.src(_T1), env.tmp / "sub-01_T1w.nii.gz", sform_code=0,
                         pixdim=[1, 0, 0, 0, 1, 1, 1, 1])
    return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("t1_nan_voxels")
def _(env):
    data = env.data(_T1).astype(np.float32)
    data[10, 10, 10] = np.nan
    path = env.save(data, _T1, "sub-01_T1w.nii.gz")
    return _classify(lambda: _t1_load(path), (path.name, "NaN"), _never)


@case("t1_4d_where_3d_expected")
def _(env):
    data = np.stack([env.data(_T1)] * 2, axis=-1)
    path = env.save(data, _T1, "sub-01_T1w.nii.gz")
    return _classify(lambda: _t1_load(path), (path.name, "4 dimensions"), _never)


# --------------------------------------------------------------------------------------------
# Cases: diffusion series and gradient tables
# --------------------------------------------------------------------------------------------


def _bval(env: Env, text: str) -> Path:
    path = env.dwi()
    path.with_name(path.name.replace(".nii.gz", ".bval")).write_text(text)
    return path


def _bvec(env: Env, array_or_text) -> Path:
    path = env.dwi()
    target = path.with_name(path.name.replace(".nii.gz", ".bvec"))
    if isinstance(array_or_text, str):
        target.write_text(array_or_text)
    else:
        np.savetxt(target, array_or_text, fmt="%.8f")
    return path


def _bvecs(env: Env) -> np.ndarray:
    return np.loadtxt(env.src(_DWI + ".bvec"))  # 3 x N


def _bvals(env: Env) -> np.ndarray:
    return np.loadtxt(env.src(_DWI + ".bval"))


@case("dwi_nan_voxels")
def _(env):
    data = env.data(_DWI + ".nii.gz").astype(np.float32)
    data[5, 5, 5, 3] = np.nan
    path = env.dwi()
    env.save(data, _DWI + ".nii.gz", path.name)
    return _classify(lambda: _load_dwi(path), (path.name, "NaN"), _never)


@case("dwi_inf_voxels")
def _(env):
    data = env.data(_DWI + ".nii.gz").astype(np.float32)
    data[5, 5, 5, 0] = np.inf
    path = env.dwi()
    env.save(data, _DWI + ".nii.gz", path.name)
    return _classify(lambda: _load_dwi(path), (path.name, "infinite"), _never)


@case("dwi_3d_image")
def _(env):
    path = env.dwi()
    env.save(env.data(_DWI + ".nii.gz")[..., 0], _DWI + ".nii.gz", path.name)
    return _classify(lambda: _load_dwi(path), (path.name, "4-D"), _never)


@case("dwi_int16_overflow")
def _(env):
    # A converter that scaled the signal past 32767 and stored int16 wrapped it to negative
    # values; the truth is the same scaled series stored without overflow (uint16).
    scaled = env.data(_DWI + ".nii.gz").astype(np.int64) * 15
    assert scaled.max() > 32767
    truth_path = env.tmp / "truth" / "sub-01_ses-M0_dwi.nii.gz"
    truth_path.parent.mkdir()
    env.save(scaled.astype(np.uint16), _DWI + ".nii.gz", "truth/sub-01_ses-M0_dwi.nii.gz")
    path = env.dwi()
    env.save(scaled.astype(np.uint16).view(np.int16), _DWI + ".nii.gz", path.name)
    kw = {"bvals": env.src(_DWI + ".bval"), "bvecs": env.src(_DWI + ".bvec")}
    truth = _truth("fit-int16", lambda: _fit(truth_path, **kw))

    def check(fit) -> bool:
        return np.array_equal(np.asanyarray(fit.mask.dataobj), np.asanyarray(truth.mask.dataobj))

    return _classify(lambda: _fit(path), (path.name,), check)


@case("dwi_int16_overflow_scaled")
def _(env):
    # The same wrap behind a scl_slope: nibabel hands floats, the raw bits are gone.
    wrapped = (env.data(_DWI + ".nii.gz").astype(np.int64) * 15).astype(np.uint16)
    path = env.dwi()
    plain = env.save(wrapped.view(np.int16), _DWI + ".nii.gz", "plain.nii.gz")
    _patch_header(plain, path, scl_slope=2.0, scl_inter=0.0)
    return _classify(lambda: _fit(path), (path.name, "negative"), _never)


@case("dwi_small_negative_noise")
def _(env):
    # Noise-floor negatives (a denoised series) are not an overflow: same fit as clipped data.
    data = env.data(_DWI + ".nii.gz").astype(np.int16)
    noisy = data.copy()
    noisy[data == 0] = -3
    path = env.dwi()
    env.save(noisy, _DWI + ".nii.gz", path.name)
    truth = _truth("fit", lambda: _fit(env.src(_DWI + ".nii.gz")))

    def check(fit) -> bool:
        return np.array_equal(np.asanyarray(fit.mask.dataobj), np.asanyarray(truth.mask.dataobj))

    return _classify(lambda: _fit(path), (), check)


@case("dwi_bval_fifo")
def _(env):
    path = env.dwi()
    bval = path.with_name(path.name.replace(".nii.gz", ".bval"))
    bval.unlink()
    _fifo(bval)
    return _classify(lambda: _load_dwi(path), (bval.name,), _never)


@case("dwi_bvec_fifo")
def _(env):
    path = env.dwi()
    bvec = path.with_name(path.name.replace(".nii.gz", ".bvec"))
    bvec.unlink()
    _fifo(bvec)
    return _classify(lambda: _load_dwi(path), (bvec.name,), _never)


@case("dwi_image_fifo")
def _(env):
    path = env.dwi()
    path.unlink()
    _fifo(path)
    return _classify(lambda: _load_dwi(path), (path.name,), _never)


@case("dwi_bval_symlink_loop")
def _(env):
    path = env.dwi()
    bval = path.with_name(path.name.replace(".nii.gz", ".bval"))
    bval.unlink()
    other = env.tmp / "other.bval"
    bval.symlink_to(other)
    other.symlink_to(bval)
    return _classify(lambda: _load_dwi(path), (bval.name,), _never)


@case("bvals_count_mismatch")
def _(env):
    path = _bval(env, " ".join(f"{b:g}" for b in _bvals(env)[:-1]) + "\n")
    return _classify(lambda: _load_dwi(path), ("bval", "volumes"), _never)


@case("bvecs_count_mismatch")
def _(env):
    path = _bvec(env, _bvecs(env)[:, :-1])
    return _classify(lambda: _load_dwi(path), ("bvec", "volumes"), _never)


@case("bvecs_nx3_accepted")
def _(env):
    path = _bvec(env, _bvecs(env).T)
    return _classify(lambda: _load_dwi(path), (), _same_dwi(env))


@case("bvecs_two_rows")
def _(env):
    path = _bvec(env, _bvecs(env)[:2])
    return _classify(lambda: _load_dwi(path), (".bvec",), _never)


@case("bvecs_non_unit")
def _(env):
    vecs = _bvecs(env)
    vecs[:, 3] *= 1.5
    path = _bvec(env, vecs)
    return _classify(lambda: _load_dwi(path), (".bvec", "unit"), _never)


@case("bvecs_zero_for_b1000")
def _(env):
    vecs = _bvecs(env)
    vecs[:, 3] = 0.0
    path = _bvec(env, vecs)
    return _classify(lambda: _load_dwi(path), (".bvec", "zero-length"), _never)


@case("bvecs_nan")
def _(env):
    vecs = _bvecs(env)
    vecs[1, 4] = np.nan
    path = _bvec(env, vecs)
    return _classify(lambda: _load_dwi(path), (".bvec", "NaN"), _never)


@case("bvals_nan")
def _(env):
    bvals = _bvals(env).astype(object)
    bvals[3] = "nan"
    path = _bval(env, " ".join(map(str, bvals)) + "\n")
    return _classify(lambda: _load_dwi(path), (".bval",), _never)


@case("bvals_negative")
def _(env):
    bvals = _bvals(env)
    bvals[3] = -1000
    path = _bval(env, " ".join(f"{b:g}" for b in bvals) + "\n")
    return _classify(lambda: _load_dwi(path), (".bval", "negative"), _never)


@case("bvals_no_b0")
def _(env):
    bvals = _bvals(env)
    bvals[bvals == 0] = 1000
    vecs = _bvecs(env)
    vecs[:, np.linalg.norm(vecs, axis=0) < 0.5] = [[1.0], [0.0], [0.0]]
    _bvec(env, vecs)
    path = _bval(env, " ".join(f"{b:g}" for b in bvals) + "\n")
    return _classify(lambda: _load_dwi(path), (".bval", "no b0"), _never)


@case("bvals_garbage_text")
def _(env):
    path = _bval(env, "b-values: zero, then a thousand\n")
    return _classify(lambda: _load_dwi(path), (".bval",), _never)


@case("bvals_empty_file")
def _(env):
    path = _bval(env, "")
    return _classify(lambda: _load_dwi(path), (".bval",), _never)


@case("dwi_single_b0_only")
def _(env):
    path = env.dwi()
    env.save(env.data(_DWI + ".nii.gz")[..., :1], _DWI + ".nii.gz", path.name)
    _bval(env, "0\n")
    _bvec(env, "0\n0\n0\n")
    return _classify(lambda: _fit(path), (path.name,), _never)


@case("dwi_all_zero")
def _(env):
    path = env.dwi()
    env.save(np.zeros(env.data(_DWI + ".nii.gz").shape, np.int16), _DWI + ".nii.gz",
             path.name)
    return _classify(lambda: _fit(path), (path.name,), _never)


@case("dwi_mask_other_grid")
def _(env):
    path = env.dwi()
    mask = env.save(env.data(_LESION), _LESION, "mask.nii.gz")  # the T1 grid
    return _classify(lambda: _fit(path, mask=mask), ("mask.nii.gz", "grid"), _never)


# --------------------------------------------------------------------------------------------
# Cases: segmentations and lesion masks (tissue volumes)
# --------------------------------------------------------------------------------------------


@case("seg_nan_affine")
def _(env):
    seg = env.seg()
    _patch_header(env.src(_SEG + ".nii.gz"), seg, srow_y=[0, np.nan, 0, 0])
    return _classify(lambda: _volumes(seg), (seg.name, "affine"), _never)


@case("seg_singular_affine")
def _(env):
    seg = env.seg()
    _patch_header(env.src(_SEG + ".nii.gz"), seg, srow_z=[0, 0, 0, 3])
    return _classify(lambda: _volumes(seg), (seg.name, "affine"), _never)


@case("seg_huge_header")
def _(env):
    seg = env.seg()
    _patch_header(env.src(_SEG + ".nii.gz"), seg, dim=[3, 20000, 20000, 20000, 1, 1, 1, 1])
    return _classify(lambda: _volumes(seg), (seg.name,), _never)


@case("seg_label_2_pow_40")
def _(env):
    seg = env.seg()
    data = env.data(_SEG + ".nii.gz").astype(np.int64)
    data[1, 1, 1] = 2**40
    env.save(data, _SEG + ".nii.gz", seg.name)
    return _classify(lambda: _volumes(seg), (seg.name, str(2**40)), _never)


@case("seg_negative_pixdim")
def _(env):
    # The sform gives the voxel size (4 mm); a negative pixdim must not reach the margin
    # distance transform nor the volumes.
    seg = env.seg()
    _patch_header(env.src(_SEG + ".nii.gz"), seg, pixdim=[1, -4, -4, -4, 1, 1, 1, 1])
    lesion = env.src(_LESION)
    truth = _truth("margin", lambda: _volumes(env.src(_SEG + ".nii.gz"), lesion, margin_mm=4))

    def check(result) -> bool:
        return np.allclose(result["volume_ml"], truth["volume_ml"])

    return _classify(lambda: _volumes(seg, lesion, margin_mm=4), (seg.name,), check)


@case("seg_zero_pixdim_with_sform")
def _(env):
    seg = env.seg()
    _patch_header(env.src(_SEG + ".nii.gz"), seg, pixdim=[1, 0, 0, 0, 1, 1, 1, 1])
    lesion = env.src(_LESION)
    truth = _truth("margin", lambda: _volumes(env.src(_SEG + ".nii.gz"), lesion, margin_mm=4))

    def check(result) -> bool:
        return np.allclose(result["volume_ml"], truth["volume_ml"])

    return _classify(lambda: _volumes(seg, lesion, margin_mm=4), (seg.name,), check)


@case("seg_non_integer_values")
def _(env):
    seg = env.seg()
    data = env.data(_SEG + ".nii.gz").astype(np.float32)
    data[20, 20, 20] = 2.5
    env.save(data, _SEG + ".nii.gz", seg.name)
    return _classify(lambda: _volumes(seg), (seg.name, "non-integer"), _never)


@case("seg_negative_label")
def _(env):
    seg = env.seg()
    data = env.data(_SEG + ".nii.gz").astype(np.int16)
    data[20, 20, 20] = -3
    env.save(data, _SEG + ".nii.gz", seg.name)
    return _classify(lambda: _volumes(seg), (seg.name, "negative"), _never)


@case("seg_fifo")
def _(env):
    seg = env.seg()
    seg.unlink()
    _fifo(seg)
    return _classify(lambda: _volumes(seg), (seg.name,), _never)


@case("seg_label_table_fifo")
def _(env):
    from msimaging.segmentation import load_segmentation

    seg = env.seg()
    table = seg.with_name(seg.name.replace(".nii.gz", ".tsv"))
    table.unlink()
    _fifo(table)
    return _classify(lambda: load_segmentation(seg), (table.name,), _never)


@case("lesion_other_grid")
def _(env):
    seg = env.seg()
    lesion = env.save(env.data(_LESION)[:-2], _LESION, "lesion_mask.nii.gz")
    return _classify(lambda: _volumes(seg, lesion), ("lesion_mask.nii.gz", "grid"), _never)


@case("lesion_probabilistic")
def _(env):
    seg = env.seg()
    lesion = env.save(env.data(_LESION) * 0.8, _LESION, "lesion_mask.nii.gz", np.float32)
    return _classify(lambda: _volumes(seg, lesion), ("lesion_mask.nii.gz", "threshold"),
                     _never)


@case("lesion_probabilistic_thresholded")
def _(env):
    seg = env.seg()
    lesion = env.save(env.data(_LESION) * 0.8, _LESION, "lesion_mask.nii.gz", np.float32)
    return _classify(lambda: _volumes(seg, lesion, lesion_threshold=0.5), (),
                     _same_volumes(env))


@case("lesion_labelled_0_to_n")
def _(env):
    from scipy import ndimage

    seg = env.seg()
    ids, n = ndimage.label(env.data(_LESION))
    assert n > 1
    lesion = env.save(ids, _LESION, "lesion_mask.nii.gz", np.int16)
    return _classify(lambda: _volumes(seg, lesion), ("lesion_mask.nii.gz", "binary"), _never)


@case("lesion_empty")
def _(env):
    seg = env.seg()
    lesion = env.save(np.zeros_like(env.data(_LESION)), _LESION, "lesion_mask.nii.gz")
    return _classify(lambda: _volumes(seg, lesion), (), _same_volumes(env, with_lesion=False))


@case("lesion_nan")
def _(env):
    seg = env.seg()
    data = env.data(_LESION).astype(np.float32)
    data[0, 0, 0] = np.nan
    lesion = env.save(data, _LESION, "lesion_mask.nii.gz")
    return _classify(lambda: _volumes(seg, lesion), ("lesion_mask.nii.gz", "NaN"), _never)


# --------------------------------------------------------------------------------------------
# Cases: BOLD and confounds
# --------------------------------------------------------------------------------------------


def _bold_with_confounds(env: Env, table: pd.DataFrame | None = None) -> tuple[Path, Path]:
    bold = env.copy(_BOLD)
    confounds = env.copy(_CONFOUNDS)
    if table is not None:
        table.to_csv(confounds, sep="\t", index=False, na_rep="n/a")
    return bold, confounds


def _confounds_table(env: Env) -> pd.DataFrame:
    return pd.read_csv(env.src(_CONFOUNDS), sep="\t", na_values=["n/a"])


@case("bold_one_volume")
def _(env):
    bold = env.save(env.data(_BOLD)[..., :1], _BOLD, "bold.nii.gz")
    return _classify(lambda: _timeseries(bold), ("bold.nii.gz",), _never)


@case("bold_two_volumes")
def _(env):
    bold = env.save(env.data(_BOLD)[..., :2], _BOLD, "bold.nii.gz")
    return _classify(lambda: _timeseries(bold), ("bold.nii.gz", "volumes"), _never)


@case("bold_nan_voxels")
def _(env):
    data = env.data(_BOLD).copy()
    data[data.shape[0] // 2, data.shape[1] // 2, data.shape[2] // 2, 5] = np.nan
    bold = env.save(data, _BOLD, "bold.nii.gz")
    return _classify(lambda: _timeseries(bold), ("bold.nii.gz", "NaN"), _never)


@case("bold_3d")
def _(env):
    bold = env.save(env.data(_BOLD)[..., 0], _BOLD, "bold.nii.gz")
    return _classify(lambda: _timeseries(bold), ("bold.nii.gz", "4-D"), _never)


@case("confounds_missing_columns")
def _(env):
    table = _confounds_table(env).drop(columns=["csf", "white_matter"])
    bold, confounds = _bold_with_confounds(env, table)
    return _classify(lambda: _timeseries(bold, confounds=confounds, strategy="simple"),
                     (confounds.name, "csf"), _never)


@case("confounds_nan_rows")
def _(env):
    table = _confounds_table(env)
    table.loc[10, "trans_x"] = np.nan
    bold, confounds = _bold_with_confounds(env, table)
    return _classify(lambda: _timeseries(bold, confounds=confounds, strategy="simple"),
                     (confounds.name, "trans_x"), _never)


@case("confounds_first_fd_row_na")
def _(env):
    bold, confounds = _bold_with_confounds(env)
    assert pd.isna(_confounds_table(env)["framewise_displacement"][0])
    truth = _truth("ts-scrub", lambda: _timeseries(env.src(_BOLD), confounds=env.src(_CONFOUNDS),
                                                   strategy="scrubbing"))

    def check(ts) -> bool:
        return np.allclose(ts.data, truth.data)

    return _classify(lambda: _timeseries(bold, confounds=confounds, strategy="scrubbing"), (),
                     check)


@case("confounds_wrong_row_count")
def _(env):
    bold, confounds = _bold_with_confounds(env, _confounds_table(env).iloc[:-3])
    return _classify(lambda: _timeseries(bold, confounds=confounds, strategy="simple"),
                     (confounds.name, "rows"), _never)


@case("confounds_fifo")
def _(env):
    bold = env.copy(_BOLD)
    confounds = _fifo(env.tmp / "confounds.tsv")
    return _classify(lambda: _timeseries(bold, confounds=confounds, strategy="simple"),
                     (confounds.name,), _never)


@case("bold_mask_other_grid")
def _(env):
    bold = env.copy(_BOLD)
    mask = env.save(env.data(_LESION), _LESION, "mask.nii.gz")
    return _classify(lambda: _timeseries(bold, mask=mask), ("mask.nii.gz", "grid"), _never)


# --------------------------------------------------------------------------------------------
# Cases: phenotype tables
# --------------------------------------------------------------------------------------------


def _phenotype_root(env: Env, table: pd.DataFrame | None = None) -> tuple[Path, Path]:
    root = env.tmp / "study"
    (root / "phenotype").mkdir(parents=True)
    shutil.copyfile(env.src("dataset_description.json"), root / "dataset_description.json")
    shutil.copyfile(env.src("participants.tsv"), root / "participants.tsv")
    path = root / "phenotype" / "clinical.tsv"
    shutil.copyfile(env.src("phenotype/clinical.json"), root / "phenotype" / "clinical.json")
    if table is None:
        shutil.copyfile(env.src("phenotype/clinical.tsv"), path)
    else:
        table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return root, path


def _clinical(env: Env) -> pd.DataFrame:
    return pd.read_csv(env.src("phenotype/clinical.tsv"), sep="\t", dtype=str,
                       keep_default_na=False)


def _same_phenotype(env: Env, drop_measure: str | None = None) -> Callable[[object], bool]:
    truth = _truth("phenotype", lambda: _phenotype(env.root))

    def check(result) -> bool:
        expected = truth if drop_measure is None else truth[truth["measure"] != drop_measure]
        cols = ["participant_id", "session_id", "measure", "value"]
        a = result[cols].sort_values(cols[:3]).reset_index(drop=True)
        b = expected[cols].sort_values(cols[:3]).reset_index(drop=True)
        return a.equals(b)

    return check


@case("phenotype_non_numeric_outcome")
def _(env):
    table = _clinical(env)
    table.loc[4, "edss"] = "4,5"  # a comma decimal in one row
    root, _ = _phenotype_root(env, table)
    return _classify(lambda: _phenotype(root), (), _same_phenotype(env, drop_measure="edss"))


@case("phenotype_duplicated_rows_conflicting")
def _(env):
    table = _clinical(env)
    dup = table.iloc[[2]].copy()
    dup["edss"] = "9.5"
    root, path = _phenotype_root(env, pd.concat([table, dup], ignore_index=True))
    sub = str(table.loc[2, "participant_id"])
    return _classify(lambda: _phenotype(root), (path.name, sub), _never)


@case("phenotype_duplicated_rows_identical")
def _(env):
    table = _clinical(env)
    root, _ = _phenotype_root(env, pd.concat([table, table.iloc[[2]]], ignore_index=True))
    return _classify(lambda: _phenotype(root), (), _same_phenotype(env))


@case("phenotype_fifo_table")
def _(env):
    root, path = _phenotype_root(env)
    path.unlink()
    _fifo(path)
    return _classify(lambda: _phenotype(root), (path.name,), _never)


@case("phenotype_no_participant_id")
def _(env):
    root, path = _phenotype_root(env, _clinical(env).drop(columns=["participant_id"]))
    return _classify(lambda: _phenotype(root), (path.name, "participant_id"), _never)


@case("phenotype_json_garbage")
def _(env):
    root, path = _phenotype_root(env)
    path.with_suffix(".json").write_text("{not json")
    return _classify(lambda: _phenotype(root), ("clinical.json",), _never)


# --------------------------------------------------------------------------------------------
# Cases: more image headers, grids and gradient files
# --------------------------------------------------------------------------------------------


@case("image_unknown_datatype")
def _(env):
    path = _patch_header(env.src(_T1), env.tmp / "sub-01_T1w.nii.gz", datatype=9999)
    return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("image_vox_offset_past_end")
def _(env):
    raw = _nifti_bytes(env.src(_T1))
    plain = env.tmp / "plain.nii"
    plain.write_bytes(raw)
    path = _patch_header(plain, env.tmp / "sub-01_T1w.nii", vox_offset=len(raw) + 352)
    return _classify(lambda: _t1_load(path), (path.name,), _never)


@case("seg_4d")
def _(env):
    seg = env.seg()
    env.save(np.stack([env.data(_SEG + ".nii.gz")] * 2, axis=-1), _SEG + ".nii.gz", seg.name,
             np.int16)
    return _classify(lambda: _volumes(seg), (seg.name, "4 dimensions"), _never)


@case("lesion_symlink_loop")
def _(env):
    seg = env.seg()
    a, b = env.tmp / "lesion_mask.nii.gz", env.tmp / "other.nii.gz"
    a.symlink_to(b)
    b.symlink_to(a)
    return _classify(lambda: _volumes(seg, a), (a.name, "loop"), _never)


@case("lesion_fill_t1_other_grid")
def _(env):
    from msimaging.volumetry import fill_lesions

    t1 = env.save(env.data(_T1)[2:], _T1, "sub-01_T1w.nii.gz")
    lesion = env.copy(_LESION)
    return _classify(lambda: fill_lesions(t1, lesion), (lesion.name, "grid"), _never)


@case("bvals_one_per_line")
def _(env):
    path = _bval(env, "\n".join(f"{b:g}" for b in _bvals(env)) + "\n")
    return _classify(lambda: _load_dwi(path), (), _same_dwi(env))


@case("bvals_crlf_trailing_spaces")
def _(env):
    path = _bval(env, "  ".join(f"{b:g}" for b in _bvals(env)) + "   \r\n\r\n")
    return _classify(lambda: _load_dwi(path), (), _same_dwi(env))


@case("bvals_comma_separated")
def _(env):
    path = _bval(env, ",".join(f"{b:g}" for b in _bvals(env)) + "\n")
    return _classify(lambda: _load_dwi(path), (".bval",), _never)


@case("bvecs_directory")
def _(env):
    path = env.dwi()
    bvec = path.with_name(path.name.replace(".nii.gz", ".bvec"))
    bvec.unlink()
    bvec.mkdir()
    return _classify(lambda: _load_dwi(path), (bvec.name, "folder"), _never)


@case("confounds_directory")
def _(env):
    bold = env.copy(_BOLD)
    confounds = env.tmp / "confounds.tsv"
    confounds.mkdir()
    return _classify(lambda: _timeseries(bold, confounds=confounds, strategy="simple"),
                     (confounds.name, "folder"), _never)


@case("bold_inf_voxels")
def _(env):
    data = env.data(_BOLD).copy()
    data[data.shape[0] // 2, data.shape[1] // 2, data.shape[2] // 2, 7] = np.inf
    bold = env.save(data, _BOLD, "bold.nii.gz")
    return _classify(lambda: _timeseries(bold), ("bold.nii.gz", "infinite"), _never)


# --------------------------------------------------------------------------------------------
# Cases: paths that must simply work
# --------------------------------------------------------------------------------------------


@case("path_spaces_non_ascii_dwi")
def _(env):
    env.tmp = env.tmp / "Dossier été ü" / "sujet 01 ñ"
    env.tmp.mkdir(parents=True)
    path = env.dwi("sub-01_ses-M0_dwi")
    return _classify(lambda: _load_dwi(path), (), _same_dwi(env))


@case("path_spaces_non_ascii_volumes")
def _(env):
    env.tmp = env.tmp / "Étude à Zürich" / "données 1"
    env.tmp.mkdir(parents=True)
    seg = env.seg()
    lesion = env.copy(_LESION)
    return _classify(lambda: _volumes(seg, lesion), (), _same_volumes(env))


@case("path_spaces_non_ascii_phenotype")
def _(env):
    env.tmp = env.tmp / "Étude SEP ø"
    env.tmp.mkdir(parents=True)
    root, _ = _phenotype_root(env)
    return _classify(lambda: _phenotype(root), (), _same_phenotype(env))


@case("path_spaces_non_ascii_bold")
def _(env):
    # The fMRIPrep confounds next to the BOLD are found and read (nilearn's route) from a
    # folder with spaces and non-ASCII characters.
    env.tmp = env.tmp / "fMRI prétraité" / "séance 1"
    env.tmp.mkdir(parents=True)
    bold = env.copy(_BOLD)
    env.copy(_CONFOUNDS)
    env.copy(_BOLD.replace(".nii.gz", ".json"))
    truth = _truth("ts-simple", lambda: _timeseries(env.src(_BOLD), strategy="simple"))

    def check(ts) -> bool:
        return ts.confounds_used == truth.confounds_used and np.allclose(ts.data, truth.data)

    return _classify(lambda: _timeseries(bold, strategy="simple"), (), check)


# --------------------------------------------------------------------------------------------
# Running the sweep
# --------------------------------------------------------------------------------------------

_OUTCOMES: dict[str, Outcome] = {}


def _run(name: str, root: Path, tmp: Path) -> Outcome:
    if name in _OUTCOMES:
        return _OUTCOMES[name]
    box: list[Outcome] = []

    def target() -> None:
        try:
            box.append(CASES[name](Env(root=root, tmp=tmp)))
        except Exception as exc:  # a broken case, not a library outcome
            box.append(Outcome("case-error", f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=target, name=f"hostile-{name}", daemon=True)
    thread.start()
    thread.join(_GUARD_S)
    if thread.is_alive():
        _release_fifos()
        thread.join(5.0)
        outcome = Outcome("hang", f"no answer within {_GUARD_S:g} s")
    else:
        outcome = box[0]
    _OUTCOMES[name] = outcome
    return outcome


@pytest.fixture(scope="module")
def study_root(tiny_study):
    root, _ = tiny_study
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name, study_root, tmp_path):
    outcome = _run(name, study_root, tmp_path)
    assert outcome.kind in ("typed", "recovered", "ok"), (
        f"{name}: {outcome.kind}: {outcome.detail}"
    )


def test_hostile_inputs_summary(study_root, tmp_path_factory):
    for name in CASES:
        _run(name, study_root, tmp_path_factory.mktemp(name[:20]))
    kinds = [o.kind for o in _OUTCOMES.values()]
    width = max(map(len, CASES))
    print("\nhostile input sweep:")
    for name in CASES:
        o = _OUTCOMES[name]
        print(f"  {name:<{width}}  {o.kind:<10} {o.detail[:160]}")
    counts = {k: kinds.count(k) for k in sorted(set(kinds))}
    print(f"  totals: {counts}")
    assert len(CASES) >= 40
    for bad in ("untyped", "silent", "hang", "unnamed", "case-error"):
        assert kinds.count(bad) == 0, f"{bad}: {[n for n in CASES if _OUTCOMES[n].kind == bad]}"
