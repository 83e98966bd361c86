"""Tissue volumes from any segmentation, hard (label image) or soft (probability maps).

Every volume is a voxel count (hard) or a sum of probabilities (soft) times the voxel volume
read from the header. Lesions are handled one way everywhere: a lesion voxel counts as
*abnormal white matter* whatever the segmentation calls it (segmenters often label
T1-hypointense lesions as grey matter), so the classes stay mutually exclusive and

    brain = GM + WM (incl. lesions) + brainstem + cerebellum + other parenchyma
    WM    = NAWM + abnormal WM (+ the perilesional margin when one is excluded from NAWM)
    ICV   = brain + CSF (incl. ventricles)

hold exactly. Lesion voxels outside the brain (background, CSF) are not counted as lesions:
they raise a warning and are reported in their own row, ``lesion_outside_brain``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from msimaging.errors import InputError, MSImagingWarning
from msimaging.io import ImageLike, check_same_grid, describe, load_image, load_mask
from msimaging.segmentation import (
    CSF_CLASSES,
    GM_CLASSES,
    TISSUE_CLASSES,
    WM_CLASSES,
    LabelConvention,
    load_segmentation,
)

__all__ = ["REGIONS", "tissue_volumes", "volume_change"]

#: Regions reported by :func:`tissue_volumes`, in order, and the classes each needs.
REGIONS: dict[str, str] = {
    "brain": "brain parenchyma (GM + WM incl. lesions + brainstem + cerebellum)",
    "gm": "all grey matter",
    "cortical_gm": "cerebral cortex",
    "deep_gm": "basal ganglia and thalamus",
    "wm": "white matter including lesions",
    "nawm": "normal-appearing white matter (WM minus lesions and margin)",
    "abnormal_wm": "lesions (abnormal white matter)",
    "brainstem": "brainstem",
    "cerebellum": "cerebellum",
    "csf": "all CSF (incl. ventricles)",
    "lateral_ventricles": "lateral ventricles",
    "icv": "intracranial volume (brain + CSF)",
}
_NEEDS = {
    "cortical_gm": ("cortical_gm",),
    "deep_gm": ("deep_gm",),
    "brainstem": ("brainstem",),
    "cerebellum": ("cerebellum",),
    "lateral_ventricles": ("lateral_ventricles",),
}
_SOFT_KEYS = {"gm": "gm", "wm": "wm", "csf": "csf"}
_BACKGROUND = len(TISSUE_CLASSES)


def voxel_volume_mm3(img: nib.spatialimages.SpatialImage) -> float:
    """Voxel volume in mm³ from the image's affine."""
    return float(abs(np.linalg.det(np.asarray(img.affine)[:3, :3])))


def class_image(
    seg: ImageLike, labels: Any = None, *, name: str = "seg"
) -> tuple[np.ndarray, nib.Nifti1Image, LabelConvention]:
    """Tissue-class index per voxel (index into TISSUE_CLASSES; len(TISSUE_CLASSES) = background).

    The convention is resolved by :func:`msimaging.segmentation.resolve_convention`
    (``labels`` > the dataset's ``dseg.tsv`` > detection from the values > error). Raises
    InputError for non-integer values, negative values and label values the convention does
    not know (listing them).
    """
    segmentation = load_segmentation(seg, labels, name=name)
    return segmentation.classes, segmentation.img, segmentation.convention


def _lesion(lesion_mask, threshold, reference, ref_name) -> np.ndarray | None:
    if lesion_mask is None:
        return None
    img = load_mask(
        lesion_mask,
        name="lesion_mask",
        threshold=threshold,
        reference=reference,
        reference_name=ref_name,
        allow_empty=True,
    )
    return np.asanyarray(img.dataobj).astype(bool)


def _soft_maps(seg: Mapping, name: str) -> tuple[dict[str, np.ndarray], nib.Nifti1Image]:
    maps: dict[str, np.ndarray] = {}
    reference = None
    for key, value in seg.items():
        cls = _SOFT_KEYS.get(str(key).lower())
        if cls is None:
            raise InputError(
                f"{name} has a probability map {key!r}; soft volumes take the keys 'GM', 'WM' "
                "and 'CSF' (fMRIPrep/FAST probseg)."
            )
        img = load_image(value, name=f"{name}[{key!r}]", ndim=3)
        if reference is None:
            reference = img
        else:
            check_same_grid(reference, img, names=(f"{name} first map", f"{name}[{key!r}]"))
        data = np.asanyarray(img.dataobj).astype(np.float64)
        if data.min() < -1e-6 or data.max() > 1 + 1e-6:
            raise InputError(
                f"{describe(value, f'{name}[{key!r}]')} has values outside [0, 1] "
                f"({data.min():.3g} to {data.max():.3g}); probability maps are expected."
            )
        maps[cls] = np.clip(data, 0.0, 1.0)
    missing = {"gm", "wm", "csf"} - set(maps)
    if missing or reference is None:
        raise InputError(
            f"{name} must give the GM, WM and CSF probability maps; missing: "
            f"{', '.join(sorted(m.upper() for m in missing))}."
        )
    total = maps["gm"] + maps["wm"] + maps["csf"]
    if total.max() > 1.0 + 1e-3:
        raise InputError(
            f"the probability maps in {name} sum to more than 1 in some voxels (up to "
            f"{total.max():.3f}); they must be fractions of one voxel."
        )
    return maps, reference


def _margin(lesion: np.ndarray, margin_mm: float, zooms) -> np.ndarray:
    if margin_mm <= 0 or not lesion.any():
        return np.zeros_like(lesion)
    dist = ndimage.distance_transform_edt(~lesion, sampling=zooms)
    return (dist <= margin_mm) & ~lesion


def tissue_volumes(
    seg: ImageLike | Mapping[str, ImageLike],
    lesion_mask: ImageLike | None = None,
    *,
    labels: Any = None,
    lesion_threshold: float | None = None,
    margin_mm: float = 0.0,
    regions: tuple[str, ...] | None = None,
    participant_id: str | None = None,
    session_id: str | None = None,
) -> pd.DataFrame:
    """Tissue volumes in mL, hard (label image) or soft (probability maps), normalised by ICV.

    Parameters
    ----------
    seg : image, or mapping {'GM', 'WM', 'CSF'} -> probability image
        A label image (``dseg``, ``aseg``, FAST ``_seg`` ...) gives hard volumes (voxel count x
        voxel volume); a mapping of probability maps (``probseg``) gives soft volumes (sum of
        probabilities x voxel volume).
    lesion_mask : image, optional
        Lesion mask on the segmentation's grid. Lesion voxels count as abnormal WM whatever
        the segmentation labels them. Lesions labelled in the segmentation itself (FreeSurfer
        WM-hypointensities 77–79, SAMSEG 99, a ``Lesion`` row of the dseg.tsv) are always
        included.
    labels : str, LabelConvention or mapping, optional
        Label convention of a label image: ``"freesurfer"`` (``"aseg"``), ``"synthseg"``,
        ``"samseg"``, ``"fmriprep"``, ``"fsl_fast"``, ``"synthetic"``, or a mapping
        tissue class -> label values. Default: from the dataset, i.e. the segmentation's BIDS
        ``dseg.tsv`` (label names), else detected from the label values, else an error
        (see :func:`msimaging.segmentation.resolve_convention`).
    lesion_threshold : float, optional
        Binarise a lesion probability map at this value (required for non-binary masks).
    margin_mm : float
        Also exclude WM within this distance (mm) of a lesion from NAWM (a perilesional
        margin); it stays in WM, so WM = NAWM + abnormal WM + margin.
    regions : tuple of str, optional
        Regions to report (default: every region the convention supports, see
        :data:`REGIONS`). Asking for one the segmentation cannot give is an error.
    participant_id, session_id : str, optional
        Copied into every row.

    Returns
    -------
    pandas.DataFrame
        One row per region: participant_id, session_id, region, volume_ml, fraction_icv
        (volume / ICV), n_voxels (hard; for soft volumes the voxels with probability > 0),
        method (``hard``/``soft``). Absent tissue gives 0, never NaN.
    """
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise InputError(f"margin_mm must be a finite number >= 0, got {margin_mm!r}.")
    if isinstance(seg, Mapping):
        maps, ref = _soft_maps(seg, "seg")
        lesion = _lesion(lesion_mask, lesion_threshold, ref, "seg")
        fractions, method, available = _soft_fractions(maps, lesion), "soft", None
    else:
        classes, ref, convention = class_image(seg, labels)
        lesion = _lesion(lesion_mask, lesion_threshold, ref, "seg")
        fractions = _hard_fractions(classes, lesion)
        method, available = "hard", convention
    zooms = ref.header.get_zooms()[:3]
    voxel_ml = voxel_volume_mm3(ref) / 1000.0
    margin = _margin(lesion, margin_mm, zooms) if lesion is not None else None
    volumes = _region_volumes(fractions, margin, voxel_ml)
    wanted = _check_regions(regions, available)
    outside = volumes.pop("_lesion_outside_brain")
    if outside[0] > 0:
        warnings.warn(
            f"{outside[1]} lesion_mask voxels ({outside[0]:.3f} mL) lie outside the brain "
            "(background or CSF in the segmentation); they are not counted as lesions and are "
            "reported as region 'lesion_outside_brain'. Check the lesion mask's registration.",
            MSImagingWarning,
            stacklevel=2,
        )
        wanted = (*wanted, "lesion_outside_brain")
        volumes["lesion_outside_brain"] = outside
    icv = volumes["icv"][0]
    rows = [
        {
            "participant_id": participant_id,
            "session_id": session_id,
            "region": region,
            "volume_ml": volumes[region][0],
            "fraction_icv": volumes[region][0] / icv if icv > 0 else 0.0,
            "n_voxels": volumes[region][1],
            "method": method,
        }
        for region in wanted
    ]
    return pd.DataFrame(rows)


def _hard_fractions(classes: np.ndarray, lesion: np.ndarray | None):
    """Per-class voxel masks as 0/1 'fractions', with lesion voxels moved to 'lesion'."""
    idx = {c: k for k, c in enumerate(TISSUE_CLASSES)}
    out: dict[str, np.ndarray] = {}
    lesion_cls = classes == idx["lesion"]
    if lesion is not None:
        not_brain = [_BACKGROUND, *(idx[c] for c in CSF_CLASSES)]
        outside = lesion & np.isin(classes, not_brain)
        inside = lesion & ~outside
        lesion_cls = lesion_cls | inside
    else:
        outside = np.zeros(classes.shape, bool)
    for cls in TISSUE_CLASSES:
        if cls == "lesion":
            out[cls] = lesion_cls
        else:
            out[cls] = (classes == idx[cls]) & ~lesion_cls
    out["_outside"] = outside
    return out


def _soft_fractions(maps: dict[str, np.ndarray], lesion: np.ndarray | None):
    gm, wm, csf = maps["gm"], maps["wm"], maps["csf"]
    zero = np.zeros_like(gm)
    out = {cls: zero for cls in TISSUE_CLASSES}
    if lesion is not None:
        parenchyma = gm + wm
        out["lesion"] = np.where(lesion, parenchyma, 0.0)
        gm = np.where(lesion, 0.0, gm)
        wm = np.where(lesion, 0.0, wm)
        out["_outside"] = lesion & (parenchyma <= 0)
    else:
        out["_outside"] = np.zeros(gm.shape, bool)
    out["gm"], out["wm"], out["csf"] = gm, wm, csf
    return out


def _region_volumes(fractions, margin, voxel_ml) -> dict[str, tuple[float, int]]:
    def total(*classes: str, minus: np.ndarray | None = None) -> tuple[float, int]:
        s = 0.0
        n = 0
        for c in classes:
            f = fractions[c]
            if minus is not None:
                f = np.where(minus, 0, f)
            s += float(np.sum(f, dtype=np.float64))
            n += int(np.count_nonzero(f))
        return s * voxel_ml, n

    wm_classes = (*WM_CLASSES, "lesion")
    brain = (*GM_CLASSES, *wm_classes, "brainstem", "cerebellum", "other_brain")
    out = {
        "brain": total(*brain),
        "gm": total(*GM_CLASSES),
        "cortical_gm": total("cortical_gm"),
        "deep_gm": total("deep_gm"),
        "wm": total(*wm_classes),
        "nawm": total(*WM_CLASSES, minus=margin),
        "abnormal_wm": total("lesion"),
        "brainstem": total("brainstem"),
        "cerebellum": total("cerebellum"),
        "csf": total(*CSF_CLASSES),
        "lateral_ventricles": total("lateral_ventricles"),
    }
    out["icv"] = (out["brain"][0] + out["csf"][0], out["brain"][1] + out["csf"][1])
    outside = fractions["_outside"]
    n_out = int(np.count_nonzero(outside))
    out["_lesion_outside_brain"] = (n_out * voxel_ml, n_out)
    return out


def _check_regions(regions, convention: LabelConvention | None) -> tuple[str, ...]:
    def supported(region: str) -> bool:
        if convention is None:  # soft: GM / WM / CSF only
            return region not in _NEEDS
        return convention.has(*_NEEDS.get(region, ()))

    if regions is None:
        return tuple(r for r in REGIONS if supported(r))
    if isinstance(regions, str):
        regions = (regions,)
    for region in regions:
        if region not in REGIONS:
            raise InputError(
                f"regions: unknown region {region!r}; choose from {', '.join(REGIONS)}."
            )
        if not supported(region):
            source = "probability maps (GM/WM/CSF)" if convention is None else (
                f"the {convention.name!r} label convention"
            )
            raise InputError(
                f"regions: {region!r} needs the tissue class(es) {', '.join(_NEEDS[region])}, "
                f"which {source} does not have. Use a segmentation that separates them (e.g. "
                "FreeSurfer aseg, SynthSeg) or drop the region."
            )
    return tuple(regions)


def volume_change(
    volumes: pd.DataFrame,
    *,
    subject: str = "participant_id",
    visit: str = "months",
    value: str = "volume_ml",
) -> pd.DataFrame:
    """Change in volume from each subject's first visit, in mL and %, per region.

    This is a segmentation-based change (difference of two volumes), **not** SIENA's
    edge-displacement brain volume change: it carries the segmentation error of both visits.

    Parameters
    ----------
    volumes : DataFrame
        Rows from :func:`tissue_volumes` of several visits, with a subject column, a visit
        column (``months`` or any orderable column) and ``region``.
    subject, visit, value : str
        Column names.

    Returns
    -------
    pandas.DataFrame
        The input columns subject, visit, region, value plus baseline_ml, change_ml,
        change_pct (0 at baseline; NaN-free unless a baseline volume is 0).
    """
    if not isinstance(volumes, pd.DataFrame):
        raise InputError("volumes must be a pandas DataFrame from tissue_volumes().")
    for col in (subject, visit, "region", value):
        if col not in volumes.columns:
            raise InputError(
                f"volumes has no column {col!r} (columns: {', '.join(map(str, volumes.columns))})"
                "; add it (e.g. volumes['months'] = 6) or name the right one."
            )
    df = volumes[[subject, visit, "region", value]].copy()
    if df.duplicated([subject, visit, "region"]).any():
        raise InputError(
            "volumes has several rows for one subject, visit and region; keep one per visit."
        )
    df = df.sort_values([subject, "region", visit], kind="stable")
    baseline = df.groupby([subject, "region"], sort=False)[value].transform("first")
    df["baseline_ml"] = baseline
    df["change_ml"] = df[value] - baseline
    with np.errstate(divide="ignore", invalid="ignore"):
        df["change_pct"] = np.where(baseline > 0, 100.0 * df["change_ml"] / baseline, np.nan)
    return df.reset_index(drop=True)
