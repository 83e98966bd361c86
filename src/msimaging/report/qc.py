"""Per-participant quality-control pages: one self-contained HTML page per participant.

:func:`write_qc_pages` reads what the participant level wrote (``sub-*/ses-*/`` maps, masks,
transforms, tract masks and profiles, node tables, provenance records) and the BIDS input
dataset it names (T1w, FLAIR, DWI, segmentation and fMRIPrep confounds) and writes
``qc/sub-<label>.html`` with one section per visit:

- registration: the T1w resampled onto the MNI template through the saved MNI<->T1w transform
  and onto the mean b0 through the saved T1w->DWI transform, drawn as edges (a misregistration
  shows as edges off the anatomy), with the brain overlap (Dice) on the template;
- FA with the NAWM (left/right) mask contours; the lesion mask on the FLAIR (or T1w);
- tract masks on FA and the FA profiles of every visit;
- fMRI: framewise displacement (FD) over time with the censoring threshold, and node signal
  quality (sphere voxels in the brain mask, temporal SNR at the node centre, flagged nodes).

Figures are PNG data URIs, so each page is one file that opens offline from any folder (the
report's Content-Security-Policy allows only ``data:`` images). Missing or failed pieces are
stated on the page; a figure that cannot be drawn never stops the page. Every text from inputs
(labels, file names, error messages) goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from msimaging._version import __version__
from msimaging.derivatives import DerivativesLayout, atomic_write_text
from msimaging.errors import InputError, MSImagingError

__all__ = ["qc_links_html", "write_qc_pages"]

#: Figure resolution: QC needs to show alignment, not print quality (keeps pages small).
_DPI = 80
#: FD above this (mm) is censored by the default ``scrubbing`` strategy (Power 2012).
_DEFAULT_FD_THRESHOLD_MM = 0.5
#: MNI grid the pipeline registers to (msimaging.registration.mni_template, 2 mm).
_MNI_RESOLUTION_MM = 2

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #0072B2;padding-bottom:.2em;
margin-top:2em}h3{margin-top:1.2em}
figure{margin:.8em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
.missing{color:#999;font-style:italic}.failed{color:#b00020}nav a{margin-right:1em}
"""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _png_bytes(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _figure(kind: str, data: bytes, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f'<figure class="qc-{_e(kind)}"><img class="qc-{_e(kind)}" alt="{_e(caption)}" '
            f'src="{uri}"><figcaption>{_e(caption)}</figcaption></figure>')


def _safe_stem(participant_id: str) -> str:
    """A file name for the page: the label when it is plain BIDS (letters and digits), else
    its letters and digits plus a short hash (hostile or odd labels stay distinct and safe)."""
    label = participant_id.removeprefix("sub-")
    if re.fullmatch(r"[A-Za-z0-9]+", label):
        return f"sub-{label}"
    digest = hashlib.sha1(participant_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"sub-{re.sub(r'[^A-Za-z0-9]', '', label)[:40]}-{digest}"


def _anchor(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else float("nan")


def _load(path: Path | None) -> nib.Nifti1Image | None:
    return None if path is None else nib.load(str(path))


def _data(img: nib.Nifti1Image) -> np.ndarray:
    return np.asanyarray(img.dataobj)


# --------------------------------------------------------------------------------------------
# Resampling through saved transforms (numbers the tests check against ground truth)
# --------------------------------------------------------------------------------------------
def _resample(
    img: nib.Nifti1Image,
    out_to_in_mm: np.ndarray,
    out_shape: tuple[int, ...],
    out_affine: np.ndarray,
    *,
    order: int = 1,
) -> nib.Nifti1Image:
    """``img`` read at ``out_to_in_mm @ out_affine @ ijk`` for every output voxel."""
    data = np.asanyarray(img.dataobj).astype(np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    vox = np.linalg.inv(img.affine) @ out_to_in_mm @ out_affine
    warped = ndimage.affine_transform(data, vox, output_shape=tuple(out_shape[:3]), order=order,
                                      mode="constant", cval=0.0)
    return nib.Nifti1Image(warped, out_affine)


def _same_grid(shape: tuple[int, ...], affine: np.ndarray, img: nib.Nifti1Image) -> bool:
    return tuple(shape[:3]) == tuple(img.shape[:3]) and np.allclose(affine, img.affine,
                                                                    atol=1e-3)


def _moving_to_static_matrix(transform: Any, native: nib.Nifti1Image, native_is: str) -> Any:
    """The matrix from the *other* space's mm to ``native``'s mm, or None for a non-affine.

    msimaging transforms map static mm -> moving mm (dipy). Which side the native image is on
    is read from the grids stored with the transform when they match ``native``; otherwise
    from the name (``native_is`` = "static" or "moving").
    """
    matrix = getattr(transform, "matrix", None)
    if matrix is None:
        return None
    matrix = np.asarray(matrix, dtype=np.float64)
    static_shape = getattr(transform, "static_shape", None)
    moving_shape = getattr(transform, "moving_shape", None)
    if static_shape is not None and _same_grid(static_shape, transform.static_affine, native):
        native_is = "static"
    elif moving_shape is not None and _same_grid(moving_shape, transform.moving_affine,
                                                 native):
        native_is = "moving"
    # other mm -> native mm: static->moving is `matrix`, so moving->static is its inverse.
    return np.linalg.inv(matrix) if native_is == "static" else matrix


def t1w_on_template(
    t1w: nib.Nifti1Image, transform: Any, reference: nib.Nifti1Image, *,
    native_is: str = "static", order: int = 1,
) -> nib.Nifti1Image:
    """Resample a native image (T1w or a mask on its grid) onto ``reference``'s grid.

    Parameters
    ----------
    t1w : nibabel image
        Image in the native (T1w) space.
    transform : AffineTransform or SyNTransform
        From :func:`msimaging.registration.load_transform` (``desc-MNIToT1w`` or a
        T1w->DWI transform).
    reference : nibabel image
        The target grid (MNI template, mean b0, ...).
    native_is : {"static", "moving"}
        The side of the transform the native image is on when the stored grids do not say
        (MNIToT1w: the T1w is static; T1wToDwi: the T1w is moving).
    order : int
        Spline order (0 for masks).

    Returns
    -------
    nibabel.Nifti1Image
        On ``reference``'s grid.
    """
    ref_to_native = _moving_to_static_matrix(transform, t1w, native_is)
    if ref_to_native is not None:
        return _resample(t1w, ref_to_native, reference.shape, reference.affine, order=order)
    # Non-affine (SyN): let the transform resample, in the direction that leaves the native
    # space, then onto the reference grid.
    interpolation = "nearest" if order == 0 else "linear"
    moved = (transform.apply_inverse(t1w, interpolation=interpolation) if native_is == "static"
             else transform.apply(t1w, interpolation=interpolation))
    return _resample(moved, np.eye(4), reference.shape, reference.affine, order=order)


# --------------------------------------------------------------------------------------------
# Finding a visit's files
# --------------------------------------------------------------------------------------------
@dataclass
class _Visit:
    participant_id: str
    session_id: str | None
    folder: Path
    months: float | None = None
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.session_id or "(no session)"

    def files(self, datatype: str, pattern: str) -> list[Path]:
        folder = self.folder / datatype
        return sorted(folder.glob(pattern)) if folder.is_dir() else []

    def first(self, datatype: str, pattern: str) -> Path | None:
        found = self.files(datatype, pattern)
        return found[0] if found else None


class _Inputs:
    """Resolves a visit's input files: provenance record first, then the BIDS dataset."""

    def __init__(self, folder: Path, bids_dir: Path | None) -> None:
        self.folder = folder
        self.bids_dir = bids_dir

    def resolve(self, entry: Any) -> Path | None:
        raw = entry.get("path") if isinstance(entry, dict) else entry
        if not isinstance(raw, str) or not raw:
            return None
        raw = re.sub(r"^bids:[^:]*:", "", raw)  # BIDS URI: dataset-relative path
        path = Path(raw)
        if path.is_absolute():
            return path if path.is_file() else None
        bases = [self.folder, self.folder.parent]
        if self.bids_dir is not None:
            bases = [self.bids_dir, *sorted((self.bids_dir / "derivatives").glob("*")), *bases]
        for base in bases:
            if (base / path).is_file():
                return base / path
        return None

    def find(self, visit: _Visit, modality: str, key: str, datatype: str,
             pattern: str, *, derived: bool = False) -> Path | None:
        """From the provenance input ``key`` of ``modality``, else a BIDS glob."""
        inputs = visit.provenance.get(modality, {}).get("inputs", {})
        found = self.resolve(inputs.get(key)) if isinstance(inputs, dict) else None
        if found is not None or self.bids_dir is None:
            return found
        rel = Path(visit.participant_id)
        if visit.session_id:
            rel = rel / visit.session_id
        roots = sorted((self.bids_dir / "derivatives").glob("*")) if derived else [self.bids_dir]
        for root in roots:
            folder = root / rel / datatype
            if folder.is_dir():
                hits = sorted(folder.glob(pattern))
                if hits:
                    return hits[0]
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _visits(layout: DerivativesLayout) -> dict[str, list[_Visit]]:
    """Participants -> visits (ordered by months when group/visits.tsv says, else by name)."""
    months: dict[tuple[str, str], float] = {}
    # group/visits.tsv (group/sessions.tsv before it was renamed: a reserved BIDS name).
    table = next((t for t in (layout.group_table(n) for n in ("visits", "sessions"))
                  if t.is_file()), None)
    if table is not None:
        try:
            sessions = pd.read_csv(table, sep="\t", dtype={"participant_id": str,
                                                           "session_id": str})
            for row in sessions.itertuples(index=False):
                months[(str(row.participant_id), str(row.session_id))] = float(row.months)
        except (ValueError, AttributeError, pd.errors.ParserError):
            months = {}
    failures: dict[tuple[str, str], list[str]] = {}
    if layout.failures.is_file():
        try:
            failed = pd.read_csv(layout.failures, sep="\t", dtype=str, keep_default_na=False)
            for row in failed.to_dict("records"):
                key = (row.get("participant_id", ""), row.get("session_id", ""))
                failures.setdefault(key, []).append(
                    f"{row.get('modality', '?')}: {row.get('error_type', '')} "
                    f"{row.get('message', '')}".strip())
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            failures = {}
    out: dict[str, list[_Visit]] = {}
    for subject in sorted(p for p in layout.root.glob("sub-*") if p.is_dir()):
        sessions = sorted(p for p in subject.glob("ses-*") if p.is_dir())
        visits = [_Visit(subject.name, s.name, s) for s in sessions] or [
            _Visit(subject.name, None, subject)]
        for visit in visits:
            key = (visit.participant_id, visit.session_id or "")
            visit.months = months.get(key)
            visit.failures = failures.get(key, []) + failures.get(
                (visit.participant_id.removeprefix("sub-"),
                 (visit.session_id or "").removeprefix("ses-")), [])
            for record in visit.folder.glob("*_provenance.json"):
                match = re.search(r"_desc-([A-Za-z0-9]+)_provenance\.json$", record.name)
                if match:
                    visit.provenance[match.group(1)] = _read_json(record)
        visits.sort(key=lambda v: (v.months is None, v.months or 0.0, v.label))
        out[subject.name] = visits
    return out


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _new_figure(width_in: float, height_in: float) -> Any:
    # A bare Figure (no pyplot): nothing is registered in pyplot's global state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in))


def _edges_figure(background: nib.Nifti1Image, edges: nib.Nifti1Image, title: str,
                  **kwargs: Any) -> bytes:
    from nilearn import plotting

    fig = _new_figure(9, 3.2)
    display = plotting.plot_img(background, figure=fig, display_mode="ortho", title=title,
                                cmap="gray", colorbar=False, annotate=True,
                                draw_cross=False, black_bg=True, **kwargs)
    display.add_edges(edges, color="r")
    data = _png_bytes(fig)

    return data


def _contours_figure(background: nib.Nifti1Image, layers: list[tuple[nib.Nifti1Image, str]],
                     title: str, *, display_mode: str = "ortho", cut_coords: Any = None,
                     vmax: float | None = None) -> bytes:
    from nilearn import plotting

    fig = _new_figure(9 if display_mode == "ortho" else 11, 3.2)
    display = plotting.plot_img(background, figure=fig, display_mode=display_mode,
                                cut_coords=cut_coords, title=title, cmap="gray", vmin=0,
                                vmax=vmax, colorbar=False, draw_cross=False, black_bg=True)
    for mask, colour in layers:
        if np.asanyarray(mask.dataobj).any():
            display.add_contours(mask, levels=[0.5], colors=[colour], linewidths=1.2)
    data = _png_bytes(fig)

    return data


def _profiles_figure(table: pd.DataFrame, metric: str) -> bytes:
    """Small multiples of one metric's profiles, one panel per tract (a lighter layout than
    msimaging.dti.tracts.plot_profiles: fixed margins instead of constrained layout)."""
    rows = table[table["metric"] == metric]
    if rows.empty:
        raise InputError(f"the profile table has no {metric!r} rows.")
    tracts = list(dict.fromkeys(rows["tract"]))
    n_cols = min(3, len(tracts))
    n_rows = -(-len(tracts) // n_cols)
    fig = _new_figure(9, 1.7 * n_rows + 0.4)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.1 / n_rows, top=1 - 0.12 / n_rows,
                        hspace=0.55, wspace=0.25)
    for k, tract in enumerate(tracts):
        ax = fig.add_subplot(n_rows, n_cols, k + 1)
        line = rows[rows["tract"] == tract].sort_values("node")
        if line["value"].notna().any():
            ax.plot(line["node"], line["value"], color="#0072B2", lw=1.2)
        else:
            ax.text(0.5, 0.5, "not found (no streamlines)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, color="#999")
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(str(tract), fontsize=9, pad=2)
        ax.tick_params(labelsize=7)
        if k % n_cols == 0:
            ax.set_ylabel(metric.upper(), fontsize=8)
    return _png_bytes(fig)


def _mean_b0(dwi_path: Path) -> nib.Nifti1Image | None:
    img = nib.load(str(dwi_path))
    if img.ndim != 4:
        return None
    bval_path = Path(re.sub(r"\.nii(\.gz)?$", ".bval", str(dwi_path)))
    index = [0]
    if bval_path.is_file():
        bvals = np.loadtxt(bval_path, ndmin=1)
        low = np.flatnonzero(bvals <= 50)
        index = list(low) if low.size else [0]
    data = np.asanyarray(img.dataobj)[..., index].astype(np.float32).mean(axis=-1)
    return nib.Nifti1Image(data, img.affine)


def _robust_max(img: nib.Nifti1Image) -> float:
    values = np.asanyarray(img.dataobj)
    nonzero = values[values > 0]
    return float(np.percentile(nonzero, 99)) if nonzero.size else 1.0


# --------------------------------------------------------------------------------------------
# Page sections (each returns HTML; failures become stated messages)
# --------------------------------------------------------------------------------------------
def _guard(what: str, build: Callable[[], str]) -> str:
    """Run one figure builder; an error becomes a sentence on the page, never a crash."""
    try:
        return build()
    except (MSImagingError, OSError, ValueError, TypeError, KeyError, IndexError,
            RuntimeError, MemoryError, nib.filebasedimages.ImageFileError) as exc:
        return f'<p class="failed">{_e(what)} could not be drawn: {_e(type(exc).__name__)}: ' \
               f"{_e(exc)}</p>"


def _transform_file(visit: _Visit, datatype: str, names: tuple[str, ...]) -> Path | None:
    # The ITK text file first (its .json is then the sidecar; load_transform reads both).
    found = sorted(visit.files(datatype, "*_xfm.*"), key=lambda p: (p.suffix != ".txt", p.name))
    for path in found:
        if path.suffix not in (".json", ".txt") or "tofirstvisit" in path.name.lower():
            continue
        if any(name.lower() in path.name.lower() for name in names):
            return path
    return None


def _load_transform(path: Path) -> Any:
    from msimaging.registration import load_transform

    return load_transform(path)


def _section_registration(visit: _Visit, inputs: _Inputs, cache: dict[str, Any]) -> str:
    out = ["<h3>Registration</h3>"]
    t1w_path = inputs.find(visit, "dti", "t1w", "anat", "*_T1w.nii*")
    if t1w_path is None:
        return out[0] + _missing("No T1w found (neither in the DTI provenance record nor in "
                                 "the BIDS dataset): no registration overlay.")
    xfm_mni = _transform_file(visit, "anat", ("MNIToT1w", "from-MNI", "to-MNI"))

    def mni() -> str:
        if xfm_mni is None:
            return _missing("No MNI<->T1w transform (anat/*_xfm.json or *_xfm.txt).")
        template, brain = cache["mni"]()
        t1w = nib.load(str(t1w_path))
        transform = _load_transform(xfm_mni)
        native_is = "moving" if re.search(r"from-T1w|T1wToMNI", xfm_mni.name) else "static"
        warped = t1w_on_template(t1w, transform, template, native_is=native_is)
        caption = (f"T1w ({t1w_path.name}) resampled onto the MNI152 2009a template through "
                   f"{xfm_mni.name}: red edges of the T1w over the template.")
        dseg = inputs.find(visit, "dti", "dseg", "anat", "*_dseg.nii*", derived=True)
        if dseg is not None:
            head = (_data(nib.load(str(dseg))) > 0).astype(np.float32)
            mask = t1w_on_template(nib.Nifti1Image(head, t1w.affine), transform, template,
                                   native_is=native_is, order=0)
            dice = _dice(_data(mask) > 0.5, _data(brain) > 0)
            caption += f" Brain overlap with the template brain mask: Dice {dice:.2f}."
        return _figure("reg-mni", _edges_figure(template, warped, "T1w on MNI"), caption)

    out.append(_guard("T1w on MNI", mni))
    xfm_dwi = _transform_file(visit, "dwi", ("T1wToDwi", "to-dwi", "from-T1w"))

    def dwi() -> str:
        if xfm_dwi is None:
            return _missing("No T1w->DWI transform (dwi/*_xfm.json or *_xfm.txt).")
        dwi_path = inputs.find(visit, "dti", "dwi", "dwi", "*_dwi.nii*")
        background = _mean_b0(dwi_path) if dwi_path is not None else None
        what = "mean b0"
        if background is None:
            background = _load(visit.first("dwi", "*param-fa_dwimap.nii*"))
            what = "FA"
        if background is None:
            return _missing("Neither the DWI series nor an FA map was found.")
        t1w = nib.load(str(t1w_path))
        native_is = "static" if re.search(r"from-dwi|DwiToT1w", xfm_dwi.name, re.I) else "moving"
        warped = t1w_on_template(t1w, _load_transform(xfm_dwi), background, native_is=native_is)
        return _figure("reg-dwi", _edges_figure(background, warped, f"T1w on DWI ({what})",
                                                vmax=_robust_max(background)),
                       f"T1w resampled onto the {what} through {xfm_dwi.name}: red edges of the "
                       "T1w over the diffusion image.")

    out.append(_guard("T1w on DWI", dwi))
    return "".join(out)


def _section_dti(visit: _Visit) -> str:
    out = ["<h3>Diffusion: FA and normal-appearing white matter</h3>"]
    fa_path = visit.first("dwi", "*model-tensor_param-fa_dwimap.nii*") or visit.first(
        "dwi", "*param-fa_dwimap.nii*")
    if fa_path is None:
        return out[0] + _missing("No FA map (dwi/*_param-fa_dwimap.nii.gz): DTI did not run "
                                 "or failed for this visit.")
    left = visit.first("dwi", "*_desc-NAWMleft_mask.nii*")
    right = visit.first("dwi", "*_desc-NAWMright_mask.nii*")

    def nawm() -> str:
        fa = nib.load(str(fa_path))
        layers = [(nib.load(str(p)), c) for p, c in ((left, "#E69F00"), (right, "#56B4E9"))
                  if p is not None]
        if not layers:
            return _missing("No NAWM masks (dwi/*_desc-NAWMleft_mask, NAWMright).")
        sizes = ", ".join(f"{name} {int((_data(img) > 0).sum())} voxels" for name, (img, _)
                          in zip(("left", "right"), layers, strict=False))
        return _figure("nawm", _contours_figure(fa, layers, "FA + NAWM", vmax=1.0),
                       f"FA (0-1) with the NAWM masks: left orange, right blue ({sizes}).")

    out.append(_guard("FA and NAWM", nawm))
    return "".join(out)


def _section_lesions(visit: _Visit, inputs: _Inputs) -> str:
    out = ["<h3>Lesions</h3>"]
    lesion_path = inputs.find(visit, "volumetry", "lesion_mask", "anat", "*label-lesion*mask.nii*",
                              derived=True) or inputs.find(
        visit, "dti", "lesion_mask", "anat", "*label-lesion*mask.nii*", derived=True)
    if lesion_path is None:
        return out[0] + _missing("No lesion mask for this visit (volumetry provenance or "
                                 "derivatives/*/anat/*_label-lesion_mask.nii.gz).")
    background_path = inputs.find(visit, "volumetry", "flair", "anat", "*_FLAIR.nii*")
    what = "FLAIR"
    if background_path is None:
        background_path = inputs.find(visit, "dti", "t1w", "anat", "*_T1w.nii*")
        what = "T1w"

    def lesions() -> str:
        if background_path is None:
            return _missing("Neither a FLAIR nor a T1w was found to draw the lesions on.")
        background = nib.load(str(background_path))
        lesion = nib.load(str(lesion_path))
        mask = _data(lesion) > 0
        volume_ml = mask.sum() * abs(np.linalg.det(lesion.affine[:3, :3])) / 1000.0
        n = ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]
        if n == 0:
            cuts: Any = 5
        else:
            # Axial slices with the most lesion voxels (up to 6), in world z (mm).
            per_slice = mask.sum(axis=(0, 1))
            slices = np.sort(np.argsort(per_slice)[::-1][: min(6, int((per_slice > 0).sum()))])
            centre = np.array(mask.shape[:2]) / 2
            cuts = [float((lesion.affine @ [*centre, k, 1])[2]) for k in slices]
        image = _contours_figure(background, [(lesion, "#ff3030")], f"Lesions on {what}",
                                 display_mode="z", cut_coords=cuts,
                                 vmax=_robust_max(background))
        return _figure("lesion", image, f"Lesion mask ({lesion_path.name}) in red on the {what}: "
                       f"{n} lesion(s), {volume_ml:.2f} mL.")

    out.append(_guard("Lesion map", lesions))
    return "".join(out)


def _section_tracts(visit: _Visit) -> str:
    from msimaging.dti.session import tract_desc
    from msimaging.dti.tracts import plot_tract_overlay

    out = ["<h3>Tracts</h3>"]
    model = str(visit.provenance.get("dti", {}).get("parameters", {}).get("tract_model",
                                                                          "tensor"))
    try:
        suffix = tract_desc("", model)
    except InputError:
        suffix = ""
    fa_path = visit.first("dwi", "*param-fa_dwimap.nii*")
    masks = {
        m.group(1): path for path in visit.files("dwi", "*_desc-tract*_mask.nii*")
        if (m := re.search(rf"_desc-tract([A-Za-z0-9]+?){re.escape(suffix)}_mask\.nii",
                           path.name))
    }
    if fa_path is None or not masks:
        out.append(_missing(f"No tract masks ({model} tracking: dwi/*_desc-tract*{suffix}"
                            "_mask.nii.gz) for this visit."))
    else:
        def overlay() -> str:
            fig = plot_tract_overlay(fa_path, {k: nib.load(str(v)) for k, v in masks.items()})
            fig.set_dpi(_DPI)
            empty = [k for k, v in masks.items() if not _data(nib.load(str(v))).any()]
            note = f" Empty: {', '.join(empty)}." if empty else ""
            return _figure("tracts", _png_bytes(fig),
                           f"{len(masks)} tract masks ({model} tracking) on FA.{note}")

        out.append(_guard("Tract overlay", overlay))
    profiles_path = visit.first("dwi", f"*_desc-profiles{suffix}_stats.tsv")
    if profiles_path is None:
        out.append(_missing(f"No tract profiles (dwi/*_desc-profiles{suffix}_stats.tsv)."))
    else:
        def profiles() -> str:
            table = pd.read_csv(profiles_path, sep="\t", na_values=["n/a"])
            table = table.drop(columns=["participant_id", "session_id"], errors="ignore")
            if table.dropna(subset=["value"]).empty:
                return _missing("The tract profile table has no values (no tract found).")
            return _figure("profiles", _profiles_figure(table, "fa"), f"FA profiles along "
                           f"each tract (nodes from the first to the last waypoint) from "
                           f"{profiles_path.name}.")

        out.append(_guard("Tract profiles", profiles))
    return "".join(out)


def _fd_threshold(visit: _Visit) -> float:
    parameters = visit.provenance.get("fmri", {}).get("parameters", {})
    value = parameters.get("fd_threshold_mm") if isinstance(parameters, dict) else None
    return float(value) if isinstance(value, int | float) else _DEFAULT_FD_THRESHOLD_MM


def _section_fmri(visit: _Visit, inputs: _Inputs) -> str:
    out = ["<h3>fMRI: motion and node signal quality</h3>"]
    confounds = inputs.find(visit, "fmri", "confounds", "func",
                            "*desc-confounds_timeseries.tsv", derived=True)
    nodes_path = visit.first("func", "*_nodes.tsv")
    if confounds is None and nodes_path is None:
        return out[0] + _missing("No fMRI for this visit: no confounds file in the input "
                                 "dataset and no node table (func/*_nodes.tsv) in the "
                                 "derivatives.")
    threshold = _fd_threshold(visit)

    def motion() -> str:
        if confounds is None:
            return _missing("No fMRIPrep confounds file (desc-confounds_timeseries.tsv): FD "
                            "cannot be shown.")
        table = pd.read_csv(confounds, sep="\t", na_values=["n/a", "N/A", ""])
        if "framewise_displacement" not in table.columns:
            return _missing(f"{confounds.name} has no framewise_displacement column.")
        fd = table["framewise_displacement"].to_numpy(dtype=np.float64)
        over = np.nan_to_num(fd, nan=0.0) > threshold
        fig = _new_figure(9, 2.6)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(np.arange(fd.size), fd, color="#0072B2", lw=1)
        ax.axhline(threshold, color="#D55E00", ls="--", lw=1,
                   label=f"threshold {threshold:g} mm")
        ax.plot(np.flatnonzero(over), fd[over], "o", color="#D55E00", ms=3)
        ax.set_xlabel("volume")
        ax.set_ylabel("FD (mm)")
        ax.legend(loc="upper right", fontsize="small")
        fig.tight_layout()
        return _figure("fd", _png_bytes(fig), (
            f"Framewise displacement (Power 2012) from {confounds.name}: mean "
            f"{np.nanmean(fd):.3f} mm, max {np.nanmax(fd):.3f} mm, {int(over.sum())} of "
            f"{fd.size} volumes ({100 * over.mean():.1f} %) above {threshold:g} mm."))

    out.append(_guard("FD trace", motion))

    def node_quality() -> str:
        if nodes_path is None:
            return _missing("No node table (func/*_nodes.tsv): the connectome was not "
                            "computed for this visit.")
        nodes = pd.read_csv(nodes_path, sep="\t", na_values=["n/a"], keep_default_na=True)
        bold = inputs.find(visit, "fmri", "bold_preproc", "func", "*desc-preproc_bold.nii*",
                           derived=True)
        tsnr = _node_tsnr(bold, nodes) if bold is not None else None
        panels = [c for c in ("n_voxels",) if c in nodes.columns] + (
            ["tSNR"] if tsnr is not None else [])
        if not panels:
            return _missing(f"{nodes_path.name} holds no per-node quality column (n_voxels) "
                            "and no BOLD image was found for the tSNR.")
        flagged = (nodes["flagged"].astype(str).str.lower() == "true").to_numpy() if (
            "flagged" in nodes.columns) else np.zeros(len(nodes), bool)
        fig = _new_figure(9, 2.4 * len(panels))
        x = np.arange(len(nodes))
        for k, name in enumerate(panels):
            ax = fig.add_subplot(len(panels), 1, k + 1)
            values = tsnr if name == "tSNR" else nodes[name].to_numpy(dtype=np.float64)
            ax.scatter(x[~flagged], values[~flagged], s=6, color="#0072B2", label="kept")
            if flagged.any():
                ax.scatter(x[flagged], values[flagged], s=14, color="#D55E00", marker="x",
                           label="flagged")
            ax.set_ylabel("voxels in sphere" if name == "n_voxels" else "tSNR at centre")
            ax.set_xlabel("node")
            ax.legend(loc="lower right", fontsize="small")
        fig.tight_layout()
        reasons = ""
        if flagged.any() and "flag_reason" in nodes.columns:
            counts = nodes.loc[flagged, "flag_reason"].fillna("?").value_counts()
            reasons = " (" + "; ".join(f"{r}: {c}" for r, c in counts.items()) + ")"
        extra = (f", median tSNR {np.nanmedian(tsnr):.1f}" if tsnr is not None else "")
        return _figure("nodes", _png_bytes(fig), (
            f"Node signal quality from {nodes_path.name}: {len(nodes)} nodes, "
            f"{int(flagged.sum())} flagged{reasons}{extra}."))

    out.append(_guard("Node signal quality", node_quality))
    return "".join(out)


def _node_tsnr(bold_path: Path, nodes: pd.DataFrame) -> np.ndarray | None:
    """Temporal SNR (mean / SD over time) of the BOLD voxel at each node centre (MNI mm)."""
    if not {"x_mm", "y_mm", "z_mm"} <= set(nodes.columns):
        return None
    img = nib.load(str(bold_path))
    if img.ndim != 4:
        return None
    points = nodes[["x_mm", "y_mm", "z_mm"]].to_numpy(np.float64)
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(img.affine), points)).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(img.shape[:3])), axis=1)
    series = np.asarray(img.dataobj, dtype=np.float32)[tuple(ijk[inside].T)]  # (n, time)
    sd = series.std(axis=1)
    out = np.full(len(nodes), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[inside] = np.where(sd > 0, series.mean(axis=1) / sd, 0.0)
    return out


# --------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------
def _mni_cache() -> Callable[[], tuple[nib.Nifti1Image, nib.Nifti1Image]]:
    loaded: list[tuple[nib.Nifti1Image, nib.Nifti1Image]] = []

    def get() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
        if not loaded:
            from msimaging.registration import mni_template

            loaded.append((mni_template("t1", _MNI_RESOLUTION_MM),
                           mni_template("brain_mask", _MNI_RESOLUTION_MM)))
        return loaded[0]

    return get


def _visit_html(visit: _Visit, inputs: _Inputs, cache: dict[str, Any]) -> str:
    anchor = _anchor(visit.label)
    months = f" (month {visit.months:g})" if visit.months is not None else ""
    out = [f'<section class="visit" id="{_e(anchor)}"><h2>Visit {_e(visit.label)}{_e(months)}'
           "</h2>"]
    if visit.failures:
        items = "".join(f"<li>{_e(f)}</li>" for f in visit.failures)
        out.append(f'<div class="failed"><b>Failed tasks in the last run:</b><ul>{items}</ul>'
                   "</div>")
    out += [
        _section_registration(visit, inputs, cache),
        _section_dti(visit),
        _section_lesions(visit, inputs),
        _guard("Tracts", lambda: _section_tracts(visit)),
        _section_fmri(visit, inputs),
        "</section>",
    ]
    return "".join(out)


#: One MNI template cache per worker process (loky reuses its workers across visits).
_WORKER_CACHE: dict[str, Any] = {}


def _visit_html_alone(visit: _Visit, inputs: _Inputs) -> str:
    """One visit's sections in a worker process (the process's MNI template cache)."""
    if "mni" not in _WORKER_CACHE:
        _WORKER_CACHE["mni"] = _mni_cache()
    return _visit_html(visit, inputs, _WORKER_CACHE)


def _visit_sections(visits: list[_Visit], inputs: _Inputs, cache: dict[str, Any],
                    n_jobs: int) -> list[str]:
    """Every visit's sections, in order; visits are independent, so with ``n_jobs != 1`` they
    are drawn in joblib processes (figures are CPU-bound matplotlib: threads would not help)."""
    from joblib import Parallel, delayed, effective_n_jobs

    workers = min(effective_n_jobs(n_jobs), len(visits))
    if workers <= 1:
        return [_visit_html(v, inputs, cache) for v in visits]
    return list(Parallel(n_jobs=workers, backend="loky")(
        delayed(_visit_html_alone)(v, inputs) for v in visits))


def _page(participant_id: str, visits: list[_Visit], body: str, report_href: str | None
          ) -> str:
    nav = "".join(f'<a href="#{_e(_anchor(v.label))}">{_e(v.label)}</a>' for v in visits)
    back = f'<p><a href="{_e(report_href)}">Back to the study report</a></p>' if (
        report_href) else ""
    title = f"Quality control: {participant_id}"
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>{back}<p>msimaging {_e(__version__)}. {len(visits)} visit(s). "
        "Registration overlays show the T1w's edges in red: they should follow the "
        "anatomy underneath.</p>"
        f"<nav>{nav}</nav>{body}</body></html>"
    )


def _href(target: Path, start: Path) -> str:
    """A relative, URL-quoted link (spaces and odd characters in folder names work)."""
    relative = os.path.relpath(target, start)
    return urllib.parse.quote(Path(relative).as_posix())


def write_qc_pages(
    derivatives_dir: str | os.PathLike[str],
    bids_dir: str | os.PathLike[str] | None = None,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    n_jobs: int = -1,
) -> dict[str, Path]:
    """Write one quality-control page per participant (``qc/sub-<label>.html``).

    Parameters
    ----------
    derivatives_dir : path
        The msimaging derivatives folder (``sub-*/ses-*/`` from the participant level).
    bids_dir : path, optional
        The BIDS input dataset (T1w, FLAIR, DWI, ``derivatives/`` with the segmentation and
        fMRIPrep confounds). Default: the input named in the derivatives'
        ``dataset_description.json``; input files named in the provenance records are used
        first either way.
    output_dir : path, optional
        Where the pages go (default ``<derivatives_dir>/qc``).
    report : path, optional
        The study report the pages link back to (default ``<derivatives_dir>/report.html``).
    progress : callable, optional
        Called with one message per participant written.
    n_jobs : int
        Processes drawing the visits' figures (joblib; -1 = all cores, 1 = in this process).

    Returns
    -------
    dict
        Participant id (``"sub-01"``) -> page written (atomically), in participant order.

    Raises
    ------
    InputError
        ``derivatives_dir`` is not a folder.
    """
    folder = Path(derivatives_dir)
    if not folder.is_dir():
        raise InputError(
            f"derivatives_dir {str(folder)!r} is not a folder; give the msimaging derivatives "
            "folder (the one with sub-*/ and group/)."
        )
    layout = DerivativesLayout(folder)
    if bids_dir is None:
        from msimaging.report.html import _input_dataset

        bids_dir = _input_dataset(folder)
    bids_path = Path(bids_dir) if bids_dir is not None else None
    out_dir = Path(output_dir) if output_dir is not None else folder / "qc"
    report_path = Path(report) if report is not None else layout.report
    report_href = _href(report_path.resolve(), out_dir.resolve())
    inputs = _Inputs(layout.root, bids_path)
    cache: dict[str, Any] = {"mni": _mni_cache()}
    pages: dict[str, Path] = {}
    by_participant = _visits(layout)
    start = time.perf_counter()
    # All visits of all participants at once: the work balances over the processes.
    everything = [v for visits in by_participant.values() for v in visits]
    sections = iter(_visit_sections(everything, inputs, cache, n_jobs))
    for participant_id, visits in by_participant.items():
        body = "".join(next(sections) for _ in visits)
        page = _page(participant_id, visits, body, report_href)
        pages[participant_id] = atomic_write_text(out_dir / f"{_safe_stem(participant_id)}.html",
                                                  page)
        if progress is not None:
            progress(f"QC page {participant_id}: {len(visits)} visit(s), "
                     f"{time.perf_counter() - start:.1f} s since the QC pages started")
    return pages


def qc_links_html(pages: dict[str, Path], report_path: str | os.PathLike[str]) -> str:
    """The report's "Quality control" section: one relative link per participant page.

    Parameters
    ----------
    pages : dict
        From :func:`write_qc_pages`.
    report_path : path
        The report file the links are written into (links are relative to its folder).

    Returns
    -------
    str
        An HTML section with ``id="qc"``.
    """
    start = Path(report_path).resolve().parent
    if not pages:
        return ('<h2 id="qc">Quality control</h2><p class="missing">No participant folder '
                "(sub-*) in the derivatives: no QC page.</p>")
    items = "".join(f'<li><a href="{_e(_href(path.resolve(), start))}">{_e(pid)}</a></li>'
                    for pid, path in pages.items())
    return ('<h2 id="qc">Quality control</h2><p>One page per participant: registration '
            "overlays (T1w on MNI, T1w on DWI), FA with the NAWM masks, lesion maps, tracts and "
            "profiles of every visit, fMRI motion (FD) and node signal quality.</p>"
            f"<ul>{items}</ul>")
