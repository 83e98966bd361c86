"""One visit's DTI stage: tensor maps, anatomy in DWI space, NAWM regions and their table.

:func:`dti_session` chains the library functions the way a study needs them:

1. fit the tensor (:func:`msimaging.dti.fit_tensor`; brain mask from ``median_otsu`` unless
   given);
2. register the T1w to the mean b0 (rigid, mutual information) and bring the WM and lesion
   masks into DWI space (linear interpolation gives each DWI voxel's WM/lesion fraction;
   NAWM keeps voxels > 90% WM and < 10% lesion, to avoid partial volume);
3. register the MNI ICBM152 T1 template (shipped in nilearn) to the T1w (affine), which gives
   every DWI voxel an MNI x and so the midsagittal plane;
4. build NAWM whole/left/right (:func:`msimaging.dti.nawm_rois`) and the tidy table
   (:func:`msimaging.dti.roi_stats`);
5. optionally write maps, masks, transforms and the table through a
   :class:`msimaging.derivatives.DerivativesWriter`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from msimaging import registration
from msimaging.derivatives import sidecar_path
from msimaging.dti.rois import ROI, nawm_rois, roi_stats
from msimaging.dti.tensor import TensorFit, fit_tensor
from msimaging.dti.tracts import (
    TractBundle,
    bundle,
    plot_profiles,
    plot_tract_overlay,
    tract_metrics,
    tract_profiles,
)
from msimaging.errors import InputError, MSImagingWarning
from msimaging.io import DWI, ImageLike, check_same_grid, describe, load_dwi, load_image
from msimaging.segmentation import TissueMask, white_matter

__all__ = [
    "TRACT_MODELS",
    "TRACT_MODEL_LABELS",
    "DTISession",
    "TractStage",
    "dti_session",
    "tract_desc",
    "tract_session",
]

_ANAT_TO_DWI = ("rigid", "affine", "identity")
_MNI_REGISTRATION = ("affine", "rigid")


@dataclass(frozen=True)
class DTISession:
    """Everything one visit's DTI stage produced.

    Attributes
    ----------
    participant_id, session_id : str or None
    fit : TensorFit
        FA/MD/AD/RD maps, v1, colour FA, residual QC map and brain mask.
    rois : tuple of ROI
        NAWM whole, left and right on the DWI grid.
    table : pandas.DataFrame
        :func:`roi_stats` rows (one per region and metric).
    anat_to_dwi : AffineTransform or None
        T1w -> DWI registration (``matrix`` maps DWI world mm to T1w world mm); None when
        the grids were taken as aligned (``anat_to_dwi="identity"``).
    mni_to_anat : AffineTransform
        MNI template -> T1w registration (``matrix`` maps T1w world mm to MNI mm).
    dwi_to_mni : ndarray (4, 4)
        DWI world mm -> MNI mm (used for the hemisphere split and to place tract ROIs).
    lesion_mask : nibabel image or None
        The lesion mask on the DWI grid (voxels > ``lesion_fraction`` lesion).
    wm_source : str
        What the white matter was made from (file, label convention and its source, WM
        label values, or probability threshold) and its voxel counts.
    nawm_definition : str
        How NAWM was defined, e.g. ``"NAWM = WM minus lesion mask"`` or
        ``"no lesion mask: NAWM = WM"`` (also written to the table's sidecar).
    dwi : DWI or None
        The diffusion series the tensor was fitted to (kept so that
        :func:`tract_session` can fit another orientation model, e.g. CSD, to the same data;
        an image loaded from a path keeps its data on disk until used).
    seconds : dict
        Wall time of each step.
    outputs : dict
        Paths written, by kind (empty without a writer).
    """

    participant_id: str | None
    session_id: str | None
    fit: TensorFit
    rois: tuple[ROI, ...]
    table: pd.DataFrame
    anat_to_dwi: Any
    mni_to_anat: Any
    dwi_to_mni: np.ndarray
    lesion_mask: nib.Nifti1Image | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    wm_source: str = ""
    nawm_definition: str = ""
    dwi: DWI | None = None

    def __repr__(self) -> str:
        nawm = {r.label: r.n_voxels for r in self.rois}
        return (
            f"DTISession({self.participant_id}, {self.session_id}, method={self.fit.method!r}, "
            f"rois={nawm}, seconds={sum(self.seconds.values()):.1f})"
        )


def _mean_b0(dwi: DWI) -> nib.Nifti1Image:
    data = np.asanyarray(dwi.img.dataobj)
    b0 = np.flatnonzero(dwi.b0_mask)
    mean = data[..., b0].astype(np.float32).mean(axis=-1)
    return nib.Nifti1Image(mean, dwi.img.affine)


def _to_dwi(
    img: ImageLike,
    transform: Any,
    reference: nib.Nifti1Image,
    name: str,
    threshold: float | None,
    min_fraction: float,
) -> nib.Nifti1Image:
    """A mask (or probability map with ``threshold``) on the DWI grid.

    The 0/1 mask is resampled with linear interpolation, which gives the fraction of each DWI
    voxel covered by the mask; voxels covered more than ``min_fraction`` are kept.
    """
    loaded = load_image(img, name=name, ndim=3)
    data = np.asanyarray(loaded.dataobj).astype(np.float32)
    if threshold is not None:
        data = (data > threshold).astype(np.float32)
    source = nib.Nifti1Image(data, loaded.affine)
    if transform is None:
        from nilearn.image import resample_to_img

        moved = resample_to_img(
            source, reference, interpolation="continuous", force_resample=True,
            copy_header=True,
        )
    else:
        moved = transform.apply(source, interpolation="linear")
    inside = np.asanyarray(moved.dataobj) > min_fraction
    return nib.Nifti1Image(inside.astype(np.uint8), reference.affine)


def dti_session(
    dwi: ImageLike | DWI,
    t1w: ImageLike,
    wm_mask: ImageLike | None = None,
    lesion_mask: ImageLike | None = None,
    *,
    seg: ImageLike | None = None,
    labels: Any = None,
    bvals: Any = None,
    bvecs: Any = None,
    participant_id: str | None = None,
    session_id: str | None = None,
    method: str = "wls",
    brain_mask: ImageLike | None = None,
    wm_threshold: float | None = None,
    margin_mm: float = 0.0,
    min_wm_fraction: float = 0.9,
    lesion_fraction: float = 0.1,
    anat_to_dwi: str = "rigid",
    mni_registration: str = "affine",
    template_resolution_mm: int = 2,
    mni_to_anat: registration.AffineTransform | None = None,
    writer: Any = None,
    progress: Callable[[str], None] | None = None,
) -> DTISession:
    """Run one visit's DTI stage and return maps, NAWM regions and the tidy table.

    Parameters
    ----------
    dwi : path, nibabel image or DWI
        Diffusion series; ``bvals``/``bvecs`` as in :func:`msimaging.io.load_dwi`.
    t1w : path or image
        The visit's T1-weighted image (brain-extracted or not; see ``brain_mask``).
    wm_mask : path or image, optional
        White matter on the T1w grid: a 0/1 mask, a probability map (BIDS
        ``label-WM_probseg``, thresholded at ``wm_threshold``, default 0.5) or a label image
        (as ``seg``). Give ``wm_mask`` or ``seg``.
    lesion_mask : path or image, optional
        Binary lesion mask on the T1w grid. Without one, NAWM = WM (lesions labelled in
        ``seg`` itself are still outside WM) and the table's sidecar says so.
    seg : path or image, optional
        Segmentation on the T1w grid (``dseg``, ``desc-aseg_dseg``, FAST ``_seg`` ...): WM is
        its ``cerebral_wm`` + ``wm`` classes (:func:`msimaging.segmentation.white_matter`).
    labels : str, LabelConvention or mapping, optional
        Label convention of ``seg``. Default: from the dataset (its BIDS ``dseg.tsv``, else
        detected from the values; :func:`msimaging.segmentation.resolve_convention`).
    participant_id, session_id : str, optional
        Labels for the table and the derivative names.
    method : str
        Tensor fitting method (see :func:`msimaging.dti.fit_tensor`).
    brain_mask : path or image, optional
        Brain mask on the DWI grid for the fit (default: ``median_otsu``).
    wm_threshold : float, optional
        Threshold of a probability ``wm_mask`` (default 0.5: more likely WM than not).
    margin_mm : float
        Perilesional margin removed from the NAWM (mm).
    min_wm_fraction : float
        A DWI voxel counts as WM when more than this fraction of it is WM on the T1w grid
        (linear interpolation of the 0/1 mask). The default 0.9 keeps partial-volume voxels
        at the GM/CSF border out of the NAWM: on the default synthetic study (2.5 mm DWI)
        0.5 biases NAWM FA by −0.036 and 0.9 by +0.003.
    lesion_fraction : float
        A DWI voxel is lesion (excluded from NAWM) when more than this fraction of it is
        lesion on the T1w grid.
    anat_to_dwi : {"rigid", "affine", "identity"}
        How the T1w reaches DWI space: registered (rigid or affine, mutual information) or
        taken as already aligned in world coordinates (e.g. after QSIPrep's AC-PC alignment).
    mni_registration : {"affine", "rigid"}
        MNI template -> T1w registration used for the midsagittal plane.
    template_resolution_mm : int
        Resolution of the MNI template used for that registration.
    mni_to_anat : AffineTransform, optional
        An MNI -> T1w transform already computed for this visit (static = this T1w's grid,
        ``matrix`` maps T1w mm -> MNI mm), e.g. the subject's one registration composed with
        this visit's within-subject one
        (:func:`msimaging.registration.visit_mni_transform`); the MNI registration is then
        skipped (``mni_registration`` and ``template_resolution_mm`` are unused).
    writer : DerivativesWriter, optional
        When given, maps, masks, transforms and the table are written (atomically).
    progress : callable, optional
        Receives a short message at each step.
    """
    if anat_to_dwi not in _ANAT_TO_DWI:
        raise InputError(f"anat_to_dwi must be one of {_ANAT_TO_DWI}, got {anat_to_dwi!r}.")
    if mni_registration not in _MNI_REGISTRATION:
        raise InputError(
            f"mni_registration must be one of {_MNI_REGISTRATION}, got {mni_registration!r}."
        )
    say = progress or (lambda message: None)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = now - clock
        clock = now

    series = dwi if isinstance(dwi, DWI) else load_dwi(dwi, bvals, bvecs)
    t1 = load_image(t1w, name="t1w", ndim=3)
    wm = _white_matter(wm_mask, seg, labels, wm_threshold)  # fails fast, before any fit
    say("fitting tensors")
    fit = fit_tensor(series, mask=brain_mask, method=method)
    lap("fit_tensor")

    b0 = _mean_b0(series)
    transform = None
    if anat_to_dwi != "identity":
        say(f"registering T1w to DWI ({anat_to_dwi})")
        # dipy's default pyramid (10, 5, 2.5 mm on a 2.5 mm b0). A two-level pyramid (5, 2.5
        # mm) was tried for speed (issue 19): no faster on a quiet machine, and the NAWM FA
        # error of the default study rose from 0.00298 to 0.00309.
        # scipy's tolerance, not DEFAULT_FTOL: 1e-7 was 11 % faster and nearer the truth's
        # placement (0.093 mm against 0.107) but raised the NAWM FA error of the default
        # study from 0.00298 to 0.00307.
        transform = registration.register_affine(t1, b0, transform=anat_to_dwi,
                                                 ftol=registration.SCIPY_FTOL)
    wm_dwi = _to_dwi(wm.img, transform, b0, "wm_mask", None, min_wm_fraction)
    n_wm_dwi = int(np.count_nonzero(np.asanyarray(wm_dwi.dataobj)))
    wm_source = (
        f"WM mask from {wm.source}: {wm.n_voxels} voxels on the T1w grid, {n_wm_dwi} on the "
        f"DWI grid (> {min_wm_fraction:g} WM)"
    )
    if n_wm_dwi == 0:
        raise InputError(
            f"{wm_source}. No DWI voxel is white matter after the T1w -> DWI step "
            f"(anat_to_dwi={anat_to_dwi!r}): check that the T1w and the DWI show the same "
            "head (registration), or lower min_wm_fraction for very coarse DWI."
        )
    lesion_dwi = (
        None
        if lesion_mask is None
        else _to_dwi(lesion_mask, transform, b0, "lesion_mask", None, lesion_fraction)
    )
    lap("anat_to_dwi")

    if mni_to_anat is None:
        say(f"registering the MNI template to T1w ({mni_registration})")
        # Brain-extracted, sanity-checked (RegistrationError when implausible); to_mni.quality
        # holds the measured scales / rotation / Dice for the sidecar.
        to_mni = registration.register_to_mni(
            t1, transform=mni_registration, resolution_mm=template_resolution_mm
        )
    else:
        to_mni = _given_mni(mni_to_anat, t1)
    dwi_to_anat = np.eye(4) if transform is None else np.asarray(transform.matrix)
    dwi_to_mni = np.asarray(to_mni.matrix) @ dwi_to_anat
    lap("mni_registration")

    say("NAWM regions and table")
    if lesion_mask is None:
        nawm_definition = "no lesion mask: NAWM = WM"
        if wm.convention is not None and wm.convention.has("lesion"):
            nawm_definition += " (voxels the segmentation labels as lesion are not WM)"
    else:
        nawm_definition = "NAWM = WM minus lesion mask" + (
            f" and a {margin_mm:g} mm margin" if margin_mm > 0 else ""
        )
    try:
        rois = nawm_rois(wm_dwi, lesion_dwi, margin_mm=margin_mm, to_mni=dwi_to_mni)
    except InputError as exc:
        # Name what the regions were built from: an empty or wrong WM is the usual cause.
        raise InputError(f"{exc} Inputs: {wm_source}; {nawm_definition}.") from None
    table = roi_stats(fit, rois, participant_id=participant_id, session_id=session_id)
    table.attrs["nawm_definition"] = nawm_definition
    _check_wm_fa(table, wm_source)
    lap("rois")

    outputs: dict[str, Path] = {}
    if writer is not None:
        outputs = _write(
            writer, series, fit, rois, table, transform, to_mni, participant_id, session_id,
            method, margin_mm,
        )
        _add_to_sidecar(writer, outputs.get("table"), {
            "WhiteMatter": wm_source,
            "LesionMask": None if lesion_mask is None else describe(lesion_mask, "lesion_mask"),
            "NAWMDefinition": nawm_definition,
        })
        lap("write")
    return DTISession(
        participant_id=participant_id,
        session_id=session_id,
        fit=fit,
        rois=rois,
        table=table,
        anat_to_dwi=transform,
        mni_to_anat=to_mni,
        dwi_to_mni=dwi_to_mni,
        lesion_mask=lesion_dwi,
        seconds=seconds,
        outputs=outputs,
        wm_source=wm_source,
        nawm_definition=nawm_definition,
        dwi=series,
    )


def _given_mni(transform: Any, t1: nib.Nifti1Image) -> Any:
    """Check a precomputed MNI -> T1w transform is an affine on this visit's T1w grid."""
    if not isinstance(transform, registration.AffineTransform):
        raise InputError(
            f"mni_to_anat must be an AffineTransform (MNI -> this visit's T1w), got "
            f"{type(transform).__name__}; see msimaging.registration.visit_mni_transform."
        )
    same = transform.static_shape == tuple(t1.shape[:3]) and np.allclose(
        transform.static_affine, t1.affine, atol=1e-3
    )
    if not same:
        raise InputError(
            f"mni_to_anat's static grid {transform.static_shape} is not the grid of the T1w "
            f"{tuple(t1.shape[:3])} (or their affines differ): it belongs to another image. "
            "Give the transform of this visit (visit_mni_transform(t1w, ...))."
        )
    return transform


def _white_matter(wm_mask, seg, labels, threshold) -> TissueMask:
    """The WM mask on the T1w grid from ``wm_mask`` or ``seg``, checked non-empty."""
    if (wm_mask is None) == (seg is None):
        raise InputError(
            "dti_session needs the white matter from exactly one of wm_mask= (a 0/1 mask or "
            "a label-WM_probseg probability map) and seg= (a segmentation such as dseg or "
            f"desc-aseg_dseg); got {'neither' if wm_mask is None else 'both'}."
        )
    image, name = (wm_mask, "wm_mask") if seg is None else (seg, "seg")
    wm = white_matter(image, labels, threshold=threshold, name=name)
    if wm.n_voxels == 0:
        raise InputError(
            f"WM mask from {wm.source} has 0 voxels: nothing to measure. Check that the file "
            "is the white matter (or the segmentation's convention: pass labels= or a "
            "dseg.tsv naming its labels)."
        )
    return wm


#: NAWM mean FA below this is not white matter (cortex and CSF are ~0.1-0.2).
_MIN_WM_FA = 0.2


def _check_wm_fa(table: pd.DataFrame, wm_source: str) -> None:
    fa = table[(table["roi"] == "NAWM") & (table["metric"] == "fa")]["mean"]
    if len(fa) and float(fa.iloc[0]) < _MIN_WM_FA:
        warnings.warn(
            f"NAWM mean FA is {float(fa.iloc[0]):.3f}, low for white matter (usually > 0.3): "
            f"check that the WM is right ({wm_source}); a wrong label convention (e.g. "
            "cortex or CSF labels taken as WM) or a failed T1w -> DWI registration gives this.",
            MSImagingWarning,
            stacklevel=3,
        )


def _add_to_sidecar(writer: Any, path: Path | None, extra: dict[str, Any]) -> None:
    """Merge ``extra`` into the JSON sidecar of an already written file."""
    if path is None:
        return
    side = sidecar_path(path)
    try:
        metadata = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
    except (OSError, ValueError):
        metadata = {}
    metadata.update(extra)
    writer.write_sidecar(path, metadata)


def _xfm_ext(transform: Any) -> str:
    """ITK text for affines; SyN warps keep msimaging's JSON + displacement fields."""
    return ".txt" if isinstance(transform, registration.AffineTransform) else ".json"


def _write(
    writer, series, fit, rois, table, transform, to_mni, participant, session, method, margin_mm
) -> dict[str, Path]:
    if participant is None:
        raise InputError("participant_id is required to write derivatives (writer=...).")
    sources = [series.source] if series.source != "in-memory image" else []
    # The zero/negative-value policy of fit_tensor, counted inside the brain mask.
    quality = {
        "FittedVoxels": fit.n_voxels,
        "FlooredSignalValues": int(fit.n_floored),
        "NonPositiveSignalVoxels": fit.n_nonpositive_signal_voxels,
        "NegativeEigenvalueVoxels": fit.n_negative_eigenvalue_voxels,
        "BvecConvention": series.bvec_convention,
    }
    parameters = {"FitMethod": method, "BrainMask": fit.mask_source, **quality}
    out: dict[str, Path] = {}
    for param, img in fit.maps.items():
        out[param] = writer.write_dwimap(
            img, participant, session, param, model="tensor", parameters=parameters,
            sources=sources,
        )
    # Masks on the DWI grid: BIDS mask metadata (Type, Sources, SpatialReference).
    reference = {"SpatialReference": sources[0]} if sources else {}
    out["brain_mask"] = writer.write_image(
        fit.mask,
        writer.path(participant, session, "dwi", "mask", ".nii.gz", desc="brain"),
        sidecar={"Type": "Brain", "Description": "Brain mask of the tensor fit",
                 "Sources": sources, **reference, **quality},
    )
    for roi in rois:
        label = roi.label.replace("_", "")
        out[f"mask_{roi.label}"] = writer.write_image(
            roi.mask,
            writer.path(participant, session, "dwi", "mask", ".nii.gz", desc=label),
            sidecar={"Type": "ROI", "Description": f"{roi.label} on the DWI grid",
                     "Sources": sources, **reference, "PerilesionalMarginMM": margin_mm},
        )
    if transform is not None:
        path = writer.path(participant, session, "dwi", "xfm", _xfm_ext(transform),
                           mode="image", **{"from": "T1w", "to": "dwi"})
        out["xfm_t1w_to_dwi"] = transform.save(path)
    path = writer.path(participant, session, "anat", "xfm", _xfm_ext(to_mni), mode="image",
                       **{"from": "MNI152NLin2009cAsym", "to": "T1w"})
    out["xfm_mni_to_t1w"] = to_mni.save(path)
    out["table"] = writer.write_table(
        table, participant, session, "dwi", "stats", model="tensor", desc="nawm",
        sidecar={"Description": "Tensor metrics in normal-appearing white matter",
                 "FitMethod": method, "PerilesionalMarginMM": margin_mm, **quality},
    )
    return out



@dataclass(frozen=True)
class TractStage:
    """One visit's tract stage.

    Attributes
    ----------
    bundles : dict
        Tract name -> :class:`~msimaging.dti.tracts.TractBundle`.
    metrics : pandas.DataFrame
        Whole-tract (and lesioned / normal-appearing) FA/MD/AD/RD rows, with n_streamlines.
    profiles : pandas.DataFrame
        100-node along-tract profiles.
    seconds : dict
        Wall time of the orientation model (``orientation_model``: the CSD fit or reading a
        peaks image; ~0 for the tensor, already fitted), of tracking (all tracts) and of the
        metrics.
    outputs : dict
        Paths written, by kind (empty without a writer).
    model : str
        Orientation model tracked: ``"tensor"``, ``"csd"`` (or ``"msmt-csd"``) or
        ``"peaks"``. Metrics and profiles always come from the tensor maps.
    model_details : dict
        What the tracking model was, as written to the sidecars (``TrackingModel``; for CSD
        ``SHOrder``, ``ResponseVoxels``, ``Directions``; for peaks ``PeaksFile``).
    orientations : TensorFit, CSDFit or Peaks, optional
        The orientation model tracked.
    """

    bundles: dict[str, TractBundle]
    metrics: pd.DataFrame
    profiles: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    model: str = "tensor"
    model_details: dict[str, Any] = field(default_factory=dict)
    orientations: Any = None

    def __repr__(self) -> str:
        counts = {name: b.n_streamlines for name, b in self.bundles.items()}
        return (
            f"TractStage(model={self.model!r}, streamlines={counts}, "
            f"seconds={sum(self.seconds.values()):.1f})"
        )


#: Orientation models :func:`tract_session` fits itself (a peaks path is also accepted).
TRACT_MODELS = ("tensor", "csd")

#: The tracking model's label in the ``desc`` of the tract outputs, by model family: the
#: tensor adds nothing (the names written before other models existed), single- and
#: multi-shell CSD share "CSD" (the pipeline's ``tract_model = "csd"`` gives either, by the
#: data's shells; the sidecar's ``TrackingModel`` says which), a peaks image "Peaks".
TRACT_MODEL_LABELS: dict[str, str] = {"tensor": "", "csd": "CSD", "msmt-csd": "CSD",
                                      "peaks": "Peaks"}


def tract_desc(base: str, model: str = "tensor", *, label: str | None = None) -> str:
    """The ``desc`` entity of a tract output tracked with ``model``.

    Tract outputs are measured on the tensor maps whatever the tracking model, so their
    ``model-`` entity (BEP016: the model whose parameters a file holds) stays ``tensor`` and
    the tracking model goes in ``desc``: ``<base><label>``.

    Parameters
    ----------
    base : str
        The tensor-tracking ``desc``: ``"tracts"`` (metrics table), ``"profiles"``,
        ``"tractCSTL"`` (mask), ``"CSTL"`` (streamlines).
    model : str
        Tracking model: a key of :data:`TRACT_MODEL_LABELS` (``"tensor"``, ``"csd"``,
        ``"msmt-csd"``, ``"peaks"``).
    label : str, optional
        A label of your own instead of the model's (letters and digits, e.g. ``"TractSeg"``
        for a TractSeg peaks image next to MRtrix ones).

    Returns
    -------
    str
        E.g. ``tract_desc("tracts", "csd") == "tractsCSD"``; ``tract_desc("tracts") ==
        "tracts"``.
    """
    if label is None:
        if model not in TRACT_MODEL_LABELS:
            raise InputError(
                f"model {model!r} has no output label; known: {', '.join(TRACT_MODEL_LABELS)} "
                "(or give label=, letters and digits)."
            )
        label = TRACT_MODEL_LABELS[model]
    elif not (isinstance(label, str) and label.isascii() and label.isalnum()):
        raise InputError(
            f"model_label {label!r} must be letters and digits only (it becomes part of the "
            "BIDS desc entity), e.g. 'TractSeg' or 'MRtrix'."
        )
    return f"{base}{label}"


def _orientations(dti: DTISession, model: Any, csd: Any) -> tuple[Any, str, dict[str, Any]]:
    """The orientation model to track, its name and the details for the sidecars."""
    from msimaging.dti.orientations import CSDFit, Peaks, fit_csd, load_peaks

    if csd is not None and not (isinstance(model, str) and model == "csd"):
        raise InputError(
            f"csd= (fit_csd options) was given with model={model!r}; it only applies to "
            "model='csd'."
        )
    if isinstance(model, CSDFit | Peaks):
        # Precomputed (e.g. a CSD fitted once and tracked with several settings).
        check_same_grid(dti.fit.fa, model.fa, names=("dti.fit.fa", "model.fa"))
        orientations = model
    elif isinstance(model, str) and model == "tensor":
        return dti.fit, "tensor", {"TrackingModel": "tensor"}
    elif isinstance(model, str) and model == "csd":
        if dti.dwi is None:
            raise InputError(
                "tract_session(model='csd') needs the visit's DWI, but this DTISession has "
                "none (dwi=None: not built by dti_session). Build it with dti_session, or fit "
                "the CSD yourself and pass it: model=fit_csd(dwi, tensor=dti.fit)."
            )
        options = dict(csd or {})
        if "tensor" in options or "mask" in options:
            raise InputError(
                "csd= must not hold tensor= or mask=: the CSD is fitted with the visit's "
                "tensor fit (dti.fit) and its brain mask; to fit another mask, fit the CSD "
                "yourself and pass model=fit_csd(...)."
            )
        if dti.lesion_mask is not None:
            # Streamlines may cross lesions whatever their FA: fit the CSD there too.
            options.setdefault("also_fit", dti.lesion_mask)
        orientations = fit_csd(dti.dwi, tensor=dti.fit, **options)
    elif isinstance(model, str | os.PathLike):
        path = Path(model).expanduser()
        if not path.is_file():
            raise InputError(
                f"model={os.fspath(model)!r} is neither one of {TRACT_MODELS} nor an existing "
                "peaks image: give 'tensor', 'csd' or the path of a 4-D peaks image in the "
                "MRtrix sh2peaks convention on the DWI grid."
            )
        orientations = load_peaks(path, reference=dti.fit.fa, fa=dti.fit.fa,
                                  mask=dti.fit.mask)
    else:
        raise InputError(
            f"model must be one of {TRACT_MODELS}, a peaks image path, a CSDFit or Peaks; got "
            f"{type(model).__name__}."
        )
    if isinstance(orientations, CSDFit):
        return orientations, orientations.model, {
            "TrackingModel": orientations.model,
            "SHOrder": orientations.sh_order,
            "ResponseVoxels": orientations.n_response_voxels,
            "Directions": orientations.n_directions,
            "FitRegion": orientations.fit_region,
        }
    return orientations, "peaks", {"TrackingModel": "peaks", "PeaksFile": orientations.source}


def tract_session(
    dti: DTISession,
    *,
    tracts: Any = None,
    method: str = "deterministic",
    model: Any = "tensor",
    csd: dict[str, Any] | None = None,
    writer: Any = None,
    model_label: str | None = None,
    figures: bool = False,
    progress: Callable[[str], None] | None = None,
    **tracking: Any,
) -> TractStage:
    """Track the offline tract definitions in one visit and measure them.

    The definitions (:mod:`msimaging.atlases.tracts`, MNI space) are placed on the DWI grid
    through the visit's DWI->MNI affine from :func:`dti_session` (no image warping), tracked
    along the fibre directions of the chosen orientation ``model``
    (:func:`msimaging.dti.tracts.bundle`), and measured whole and split into lesioned /
    normal-appearing parts with the visit's lesion mask.

    Parameters
    ----------
    dti : DTISession
        The visit's DTI stage (fit, DWI->MNI affine, lesion mask, DWI).
    tracts : str or sequence of str, optional
        Tract names (default: CST_L, CST_R, OR_L, OR_R, CC, CC_genu, CC_body, CC_splenium).
    method : {"deterministic", "probabilistic"}
        Probabilistic tracking needs the tensor or a CSD (not a peaks image).
    model : {"tensor", "csd"}, path, CSDFit or Peaks
        Fibre orientations tracked:

        * ``"tensor"`` (default): the principal eigenvector of ``dti.fit``;
        * ``"csd"``: :func:`msimaging.dti.orientations.fit_csd` on the visit's DWI
          (``dti.dwi``) with ``tensor=dti.fit`` (its brain mask, FA and response voxels);
          multi-shell CSD where the DWI has several shells;
        * a path to a peaks image in the MRtrix ``sh2peaks`` convention (MRtrix, TractSeg,
          QSIPrep) on the DWI grid, read with :func:`~msimaging.dti.orientations.load_peaks`
          (FA and mask from ``dti.fit``);
        * an already computed ``CSDFit`` or ``Peaks`` on the DWI grid.

        Whatever the model, the metrics and profiles are measured on the tensor maps
        (``dti.fit``). The pipeline's ``[dti] tract_model`` offers "tensor" and "csd"; a
        peaks image per visit is a library-level feature (call this function).
    csd : dict, optional
        Options of :func:`~msimaging.dti.orientations.fit_csd` for ``model="csd"``
        (``sh_order``, ``response_fa``, ``n_jobs``, ``n_peaks``...; not ``tensor``/``mask``).
    writer : DerivativesWriter, optional
        Writes streamlines (.trk), tract masks, the metrics and profile tables (and figures
        with ``figures=True``); their sidecars name the tracking model (``TrackingModel``,
        ``TrackingModelLabel``; for CSD ``SHOrder`` and ``ResponseVoxels``; for peaks
        ``PeaksFile``). Each tracking model has its own file names, so several models can be
        written into one derivatives folder and rerunning one overwrites only its own files.
        The tables keep ``model-tensor`` (BEP016's ``model`` names the model whose
        parameters the file holds: FA/MD/AD/RD of the tensor, whatever was tracked) and the
        tracking model is appended to ``desc`` (:func:`tract_desc`, labels
        :data:`TRACT_MODEL_LABELS`); the tensor's names are unchanged::

            tensor (default)                        CSD (single- or multi-shell)
            *_model-tensor_desc-tracts_stats.tsv    *_model-tensor_desc-tractsCSD_stats.tsv
            *_model-tensor_desc-profiles_stats.tsv  *_model-tensor_desc-profilesCSD_stats.tsv
            *_desc-CSTL_tractography.trk            *_desc-CSTLCSD_tractography.trk
            *_desc-tractCSTL_mask.nii.gz            *_desc-tractCSTLCSD_mask.nii.gz
            figures/*_desc-tracts_overlay.png       figures/*_desc-tractsCSD_overlay.png

        A peaks image gives ``...Peaks`` (``desc-tractsPeaks``), or ``model_label``.
        A tract not found removes that model's streamlines file of an earlier run.
    model_label : str, optional
        Your own label for the tracking model in the file names instead of the model's
        (letters and digits), e.g. ``"TractSeg"`` and ``"MRtrix"`` for two peaks images of
        one visit, which would otherwise share ``Peaks``. Without a writer it is unused.
    **tracking
        Passed to :func:`msimaging.dti.tracts.bundle` (seeding, seeds_per_voxel, seed_fa,
        seed_margin_mm, step_size_mm, fa_threshold, max_angle_deg, min_length_mm,
        max_length_mm, clean, waypoint_margin_mm, min_fov_fraction, seed, n_jobs). Seeding,
        seeds per voxel, the turn limit, cleaning and the waypoint margin left out take each
        tract's recommendation (CST and OR: white-matter seeding, 30 degrees, AFQ cleaning,
        waypoints grown by 2 mm; CC: seeds in the midsagittal callosum, 45 degrees).

    Every requested tract gets its rows: a tract that is not found, or whose waypoint lies
    outside the DWI field of view (a slab that misses the brainstem or the occipital pole),
    has ``n_streamlines = 0`` and its ``status`` and ``reason`` in every metrics and profile
    row (:attr:`msimaging.dti.tracts.TractBundle.reason`).

    Raises
    ------
    InputError
        An unknown ``model`` (neither a model name nor an existing file), a peaks image on
        another grid, ``model="csd"`` on a DTISession without its DWI, ``csd=`` with another
        model.
    """
    from msimaging.atlases.tracts import tract_definitions

    say = progress or (lambda message: None)
    definitions = tract_definitions(tracts)  # fails fast on unknown names, before any fit
    if model_label is not None:
        tract_desc("tracts", label=model_label)  # fails fast on a bad label, before any fit
    start = time.perf_counter()
    if not (isinstance(model, str) and model == "tensor"):
        say(f"orientation model: {model if isinstance(model, str) else type(model).__name__}")
    orientations, model_name, details = _orientations(dti, model, csd)
    fitted = time.perf_counter()
    bundles = {}
    for definition in definitions:
        say(f"tracking {definition.name}")
        bundles[definition.name] = bundle(
            orientations, definition, to_mni=dti.dwi_to_mni, lesion_mask=dti.lesion_mask,
            method=method, **tracking,
        )
    tracked = time.perf_counter()
    ids = {"participant_id": dti.participant_id, "session_id": dti.session_id}
    # Metrics from the tensor maps whatever the tracking model (FA/MD/AD/RD are tensor
    # quantities; the bundle only decides where to measure).
    metrics = tract_metrics(dti.fit, bundles, lesion_mask=dti.lesion_mask, **ids)
    profiles = tract_profiles(dti.fit, bundles, **ids)
    seconds = {"orientation_model": fitted - start, "tracking": tracked - fitted,
               "metrics": time.perf_counter() - tracked}
    outputs: dict[str, Path] = {}
    if writer is not None:
        label = TRACT_MODEL_LABELS.get(model_name, "") if model_label is None else model_label
        outputs = _write_tracts(writer, dti, bundles, metrics, profiles, method, figures,
                                {**details, "TrackingModelLabel": label}, label)
    return TractStage(
        bundles=bundles, metrics=metrics, profiles=profiles, seconds=seconds, outputs=outputs,
        model=model_name, model_details=details, orientations=orientations,
    )


def _write_tracts(
    writer, dti, bundles, metrics, profiles, method, figures, details, label
) -> dict[str, Path]:
    """Write one tracking model's outputs; names end in that model's ``label``
    (:func:`tract_desc`), so other models' files in the folder are left alone."""
    participant, session = dti.participant_id, dti.session_id
    if participant is None:
        raise InputError("participant_id is required to write derivatives (writer=...).")

    def desc(base: str) -> str:
        return tract_desc(base, label=label) if label else base

    out: dict[str, Path] = {}
    # Tract masks are on the FA map's grid, made from the tensor fit's streamlines.
    fa_map = (dti.outputs or {}).get("fa")
    reference = {"Sources": [fa_map], "SpatialReference": fa_map} if fa_map else {}
    for name, tract in bundles.items():
        tract_label = name.replace("_", "")
        path = writer.path(participant, session, "dwi", "tractography", ".trk",
                           desc=desc(tract_label))
        if tract.n_streamlines:
            out[f"trk_{name}"] = tract.save(path)
            writer.write_sidecar(path, {"Tract": name, "Method": method, **details,
                                        "Parameters": tract.parameters})
        else:
            # An earlier run of this model found the tract: its streamlines would outlive
            # the mask and table rows that now say "not found".
            for stale in (path, sidecar_path(path)):
                stale.unlink(missing_ok=True)
        out[f"mask_{name}"] = writer.write_image(
            tract.mask(),
            writer.path(participant, session, "dwi", "mask", ".nii.gz",
                        desc=desc(f"tract{tract_label}")),
            sidecar={"Type": "ROI", "Description": f"Voxels the {name} streamlines cross",
                     **reference, "Tract": name, "NStreamlines": tract.n_streamlines,
                     "Status": tract.status, "Reason": tract.reason, **details},
        )
    out["metrics"] = writer.write_table(
        metrics, participant, session, "dwi", "stats", model="tensor", desc=desc("tracts"),
        sidecar={"Description": "Tract metrics (whole, lesioned, normal-appearing) on the "
                 "tensor maps", "Method": method, **details},
    )
    out["profiles"] = writer.write_table(
        profiles, participant, session, "dwi", "stats", model="tensor",
        desc=desc("profiles"),
        sidecar={"Description": "100-node along-tract profiles (AFQ-style weighting) on the "
                 "tensor maps", **details},
    )
    if figures:
        figure_dir = writer.root / "figures"
        stem = f"{participant}_{session}" if session else participant
        out["figure_overlay"] = figure_dir / f"{stem}_desc-{desc('tracts')}_overlay.png"
        plot_tract_overlay(dti.fit.fa, list(bundles.values()), out["figure_overlay"])
        out["figure_profiles"] = figure_dir / f"{stem}_desc-{desc('profiles')}_plot.png"
        plot_profiles(profiles, "fa", out["figure_profiles"])
    return out
