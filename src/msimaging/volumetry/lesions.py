"""T2 lesions: labelling, one row per lesion, location classes and lesion load.

Counting
    Lesions are connected components of the lesion mask (``connectivity`` 6, 18 or 26; 26 is
    the LST / WMH-challenge convention and the default). The same labelling is used for
    counts, volumes, classes and the longitudinal matching, so the numbers always agree.
    Minimum-size presets: ``"mcdonald"`` (long axis >= 3 mm), ``"lst"`` (>= 15 mm³, LST drops
    smaller ones), ``"nicms"`` (>= 5 voxels).

Location (``order="mcdonald"``, the default; McDonald 2017 / MAGNIMS 2016)
    Classes are mutually exclusive and checked in the order
    infratentorial > periventricular > juxtacortical > deep WM:

    - infratentorial: the lesion lies mostly in the brainstem or cerebellum (more of its
      voxels and contact ring in infratentorial than in supratentorial brain tissue);
    - periventricular: it touches the *lateral* ventricles;
    - juxtacortical: it touches the *supratentorial* cortex;
    - deep WM: anything else.

    "Touches" means a structure voxel in the lesion's 26-neighbourhood (default) or, with
    ``contact_mm``, within that distance in mm of a lesion voxel. ``order="lst-ai"`` uses the
    LST-AI order periventricular > juxtacortical > infratentorial (any contact) > deep WM, for
    comparison with LST-AI results.

Load
    Per class: count, volume (mm³, mL) and load as % of intracranial volume and % of white
    matter including lesions; the classes sum exactly to the totals, and no lesions give 0.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist

from msimaging.errors import InputError, MSImagingWarning
from msimaging.io import ImageLike, load_mask
from msimaging.segmentation import (
    CSF_CLASSES,
    INFRATENTORIAL_CLASSES,
    TISSUE_CLASSES,
)
from msimaging.volumetry.tissue import class_image, tissue_volumes, voxel_volume_mm3

__all__ = [
    "CLASSES",
    "MIN_SIZE_PRESETS",
    "classify_lesions",
    "label_lesions",
    "lesion_load",
    "lesion_table",
]

#: Location classes, in the default (McDonald) order.
CLASSES: tuple[str, ...] = ("infratentorial", "periventricular", "juxtacortical", "deep_wm")
#: Minimum-size presets: name -> keyword arguments.
MIN_SIZE_PRESETS: dict[str, dict[str, float]] = {
    "mcdonald": {"min_extent_mm": 3.0},
    "lst": {"min_volume_mm3": 15.0},
    "nicms": {"min_voxels": 5},
}
_ORDERS = ("mcdonald", "lst-ai")
_CONNECTIVITY = {6: 1, 18: 2, 26: 3}
_IDX = {c: k for k, c in enumerate(TISSUE_CLASSES)}
_BACKGROUND = len(TISSUE_CLASSES)
_SUPRA_BRAIN = [
    _IDX[c] for c in ("cortical_gm", "deep_gm", "other_gm", "cerebral_wm", "other_brain")
]
_INFRA = [_IDX[c] for c in INFRATENTORIAL_CLASSES]
_NOT_BRAIN = [_BACKGROUND, *(_IDX[c] for c in CSF_CLASSES)]


def _structure(connectivity: Any) -> np.ndarray:
    if connectivity not in _CONNECTIVITY:
        raise InputError(
            f"connectivity must be 6 (faces), 18 (faces + edges) or 26 (faces + edges + "
            f"corners), got {connectivity!r}."
        )
    return ndimage.generate_binary_structure(3, _CONNECTIVITY[connectivity])


def _size_limits(min_size, min_volume_mm3, min_extent_mm, min_voxels) -> dict[str, float]:
    limits: dict[str, float] = {}
    if min_size is not None:
        if min_size not in MIN_SIZE_PRESETS:
            raise InputError(
                f"min_size={min_size!r} is not a preset; use one of "
                f"{', '.join(MIN_SIZE_PRESETS)} or the min_volume_mm3 / min_extent_mm / "
                "min_voxels arguments."
            )
        limits.update(MIN_SIZE_PRESETS[min_size])
    for name, value in (
        ("min_volume_mm3", min_volume_mm3),
        ("min_extent_mm", min_extent_mm),
        ("min_voxels", min_voxels),
    ):
        if value is None:
            continue
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise InputError(f"{name} must be a finite number >= 0, got {value!r}.")
        limits[name] = float(value)
    return limits


def _extents(ids: np.ndarray, n: int, affine: np.ndarray) -> np.ndarray:
    """Long-axis extent (mm) of each lesion: the largest distance between two of its voxel
    centres plus the voxel's own span along that direction."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out = np.zeros(n)
    for k, box in enumerate(ndimage.find_objects(ids, max_label=n)):
        if box is None:
            continue
        ijk = np.argwhere(ids[box] == k + 1) + [s.start for s in box]
        pts = ijk @ affine[:3, :3].T
        if len(pts) > 200:
            # A flat lesion (all points in a plane) has no hull: keep every point.
            with contextlib.suppress(QhullError):
                pts = pts[ConvexHull(pts).vertices]
        if len(pts) == 1:
            out[k] = float(zooms.max())
            continue
        d = cdist(pts, pts)
        i, j = np.unravel_index(int(np.argmax(d)), d.shape)
        direction = pts[j] - pts[i]
        direction /= np.linalg.norm(direction)
        # Span of one voxel (the parallelepiped A [-1/2, 1/2]^3) along the direction.
        span = float(np.abs(affine[:3, :3].T @ direction).sum())
        out[k] = float(d[i, j]) + span
    return out


def _label(
    mask: np.ndarray, affine: np.ndarray, connectivity: int, limits: dict[str, float]
) -> tuple[np.ndarray, int, int]:
    ids, n = ndimage.label(mask, _structure(connectivity))
    if n == 0 or not limits:
        return ids.astype(np.int32), int(n), 0
    counts = np.bincount(ids.ravel(), minlength=n + 1)[1:]
    keep = np.ones(n, bool)
    if "min_voxels" in limits:
        keep &= counts >= limits["min_voxels"]
    if "min_volume_mm3" in limits:
        voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
        keep &= counts * voxel_mm3 >= limits["min_volume_mm3"] - 1e-9
    if "min_extent_mm" in limits:
        keep &= _extents(ids, n, affine) >= limits["min_extent_mm"] - 1e-9
    relabel = np.zeros(n + 1, np.int32)
    relabel[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[ids], int(keep.sum()), int(n - keep.sum())


def label_lesions(
    lesion_mask: ImageLike,
    *,
    connectivity: int = 26,
    min_size: str | None = None,
    min_volume_mm3: float | None = None,
    min_extent_mm: float | None = None,
    min_voxels: int | None = None,
    threshold: float | None = None,
) -> nib.Nifti1Image:
    """Label the lesions of a mask as connected components.

    Parameters
    ----------
    lesion_mask : image
        Binary lesion mask, or a lesion probability map with ``threshold``.
    connectivity : {6, 18, 26}
        Voxels sharing a face (6), also an edge (18), also a corner (26) are one lesion.
    min_size : {"mcdonald", "lst", "nicms"}, optional
        Minimum-size preset (see :data:`MIN_SIZE_PRESETS`); combined with the explicit limits.
    min_volume_mm3, min_extent_mm, min_voxels : float, optional
        Drop lesions smaller than these (volume, long-axis extent, voxel count).
    threshold : float, optional
        Binarise a probability map (voxels strictly above it); required for non-binary input.

    Returns
    -------
    nibabel.Nifti1Image
        int32 image, 0 = no lesion, lesions numbered 1..n in scan order.
    """
    limits = _size_limits(min_size, min_volume_mm3, min_extent_mm, min_voxels)
    img = load_mask(lesion_mask, name="lesion_mask", threshold=threshold, allow_empty=True)
    mask = np.asanyarray(img.dataobj).astype(bool)
    ids, _, _ = _label(mask, img.affine, connectivity, limits)
    out = nib.Nifti1Image(ids, img.affine)
    out.header.set_xyzt_units(*img.header.get_xyzt_units())
    return out


def _check_order(order: Any) -> str:
    if order not in _ORDERS:
        raise InputError(f"order must be one of {', '.join(_ORDERS)}, got {order!r}.")
    return order


def _check_contact(contact_mm: Any) -> float | None:
    if contact_mm is None:
        return None
    if not isinstance(contact_mm, int | float) or not math.isfinite(contact_mm) or contact_mm <= 0:
        raise InputError(
            f"contact_mm must be a positive number of mm (or None for the 26-neighbourhood), "
            f"got {contact_mm!r}."
        )
    return float(contact_mm)


def _classify(
    ids: np.ndarray, n: int, classes: np.ndarray, zooms, contact_mm: float | None, order: str
) -> list[str]:
    pad = 1 if contact_mm is None else math.ceil(contact_mm / min(zooms)) + 1
    cube = np.ones((3, 3, 3), bool)
    shape = ids.shape
    out = []
    for k, box in enumerate(ndimage.find_objects(ids, max_label=n)):
        grown = tuple(
            slice(max(s.start - pad, 0), min(s.stop + pad, size))
            for s, size in zip(box, shape, strict=True)
        )
        lesion = ids[grown] == k + 1
        if contact_mm is None:
            near = ndimage.binary_dilation(lesion, cube)
        else:
            near = ndimage.distance_transform_edt(~lesion, sampling=zooms) <= contact_mm
        touched = classes[grown][near]
        infra = int(np.isin(touched, _INFRA).sum())
        supra = int(np.isin(touched, _SUPRA_BRAIN).sum())
        ventricles = bool((touched == _IDX["lateral_ventricles"]).any())
        cortex = bool((touched == _IDX["cortical_gm"]).any())
        if order == "mcdonald":
            if infra > supra:
                out.append("infratentorial")
            elif ventricles:
                out.append("periventricular")
            elif cortex:
                out.append("juxtacortical")
            else:
                out.append("deep_wm")
        elif ventricles:
            out.append("periventricular")
        elif cortex:
            out.append("juxtacortical")
        elif infra:
            out.append("infratentorial")
        else:
            out.append("deep_wm")
    return out


def _prepare(
    lesion_mask, seg, labels, threshold
) -> tuple[np.ndarray, nib.Nifti1Image, np.ndarray | None, Any, int]:
    """Lesion mask (outside-brain voxels removed, with a warning), its image and classes."""
    mask_img = load_mask(
        lesion_mask,
        name="lesion_mask",
        threshold=threshold,
        reference=seg,
        reference_name="seg",
        allow_empty=True,
    )
    mask = np.asanyarray(mask_img.dataobj).astype(bool)
    if seg is None:
        return mask, mask_img, None, None, 0
    classes, _, convention = class_image(seg, labels)
    outside = mask & np.isin(classes, _NOT_BRAIN)
    n_out = int(outside.sum())
    if n_out:
        warnings.warn(
            f"{n_out} lesion_mask voxels ({n_out * voxel_volume_mm3(mask_img):.1f} mm³) lie "
            "outside the brain (background or CSF in seg); they are left out of the lesions and "
            "reported as outside_brain_mm3 in the table's attrs. Check the mask's registration.",
            MSImagingWarning,
            stacklevel=3,
        )
        mask = mask & ~outside
    return mask, mask_img, classes, convention, n_out


def lesion_table(
    lesion_mask: ImageLike,
    seg: ImageLike | None = None,
    *,
    labels: Any = None,
    connectivity: int = 26,
    min_size: str | None = None,
    min_volume_mm3: float | None = None,
    min_extent_mm: float | None = None,
    min_voxels: int | None = None,
    threshold: float | None = None,
    contact_mm: float | None = None,
    order: str = "mcdonald",
    participant_id: str | None = None,
    session_id: str | None = None,
    locations: bool = True,
) -> pd.DataFrame:
    """One row per lesion: id, volume, centroid, long-axis extent and location class.

    Parameters
    ----------
    lesion_mask : image
        Binary lesion mask (or probability map with ``threshold``).
    seg : image, optional
        Label image on the mask's grid; needed for the location class (which uses the
        lateral ventricles, cortex, brainstem and cerebellum, so a GM/WM/CSF-only
        segmentation such as FAST cannot classify). Without it ``location`` is ``"unknown"``.
    labels : str, LabelConvention or mapping, optional
        Label convention of ``seg``; default from the dataset (``dseg.tsv``, else detected;
        see :func:`msimaging.volumetry.tissue_volumes`).
    connectivity, min_size, min_volume_mm3, min_extent_mm, min_voxels, threshold
        As in :func:`label_lesions`.
    contact_mm : float, optional
        Contact distance for the location rules (default: the 26-neighbourhood).
    order : {"mcdonald", "lst-ai"}
        Class order (see the module docstring).
    participant_id, session_id : str, optional
        Copied into every row.
    locations : bool
        Derive location classes from ``seg`` (default). False: ``seg`` only removes lesion
        voxels outside the brain and every ``location`` is ``"unknown"``; for GM/WM/CSF-only
        segmentations (FAST, fMRIPrep ``dseg``), which cannot tell the classes apart.

    Returns
    -------
    pandas.DataFrame
        participant_id, session_id, lesion_id, n_voxels, volume_mm3, centroid_x_mm,
        centroid_y_mm, centroid_z_mm (world mm), extent_mm, location. ``attrs`` holds
        ``outside_brain_mm3`` and ``n_removed`` (lesions below the minimum size).
    """
    table, _, _ = _lesions(
        lesion_mask, seg, labels=labels, connectivity=connectivity, min_size=min_size,
        min_volume_mm3=min_volume_mm3, min_extent_mm=min_extent_mm, min_voxels=min_voxels,
        threshold=threshold, contact_mm=contact_mm, order=order, locations=locations,
    )
    table["participant_id"] = participant_id
    table["session_id"] = session_id
    return table


def _lesions(
    lesion_mask, seg, *, labels=None, connectivity=26, min_size=None,
    min_volume_mm3=None, min_extent_mm=None, min_voxels=None, threshold=None, contact_mm=None,
    order="mcdonald", locations=True,
) -> tuple[pd.DataFrame, np.ndarray, nib.Nifti1Image]:
    """The lesion table, the lesion-id array it numbers, and the mask image."""
    order = _check_order(order)
    contact = _check_contact(contact_mm)
    limits = _size_limits(min_size, min_volume_mm3, min_extent_mm, min_voxels)
    mask, img, classes, convention, n_out = _prepare(lesion_mask, seg, labels, threshold)
    if classes is not None and not locations:
        classes = None  # outside-brain voxels are already removed; no location classes
    if classes is not None:
        missing = [
            c for c in ("lateral_ventricles", "cortical_gm", "brainstem", "cerebellum")
            if not convention.has(c)
        ]
        if missing:
            raise InputError(
                f"seg (labels={convention.name!r}) has no {', '.join(missing)} label, which "
                "the lesion location rules need. Use a segmentation that labels them "
                "(FreeSurfer aseg, SynthSeg, SAMSEG, the synthetic study) or pass "
                "locations=False (or seg=None) for a table without locations."
            )
    affine = np.asarray(img.affine)
    ids, n, removed = _label(mask, affine, connectivity, limits)
    voxel_mm3 = voxel_volume_mm3(img)
    counts = np.bincount(ids.ravel(), minlength=n + 1)[1:]
    index = np.arange(1, n + 1)
    com = np.array(ndimage.center_of_mass(ids > 0, ids, index)).reshape(-1, 3)
    world = com @ affine[:3, :3].T + affine[:3, 3] if n else np.zeros((0, 3))
    zooms = img.header.get_zooms()[:3]
    location = (
        _classify(ids, n, classes, zooms, contact, order) if classes is not None
        else ["unknown"] * n
    )
    table = pd.DataFrame(
        {
            "participant_id": pd.Series([None] * n, dtype=object),
            "session_id": pd.Series([None] * n, dtype=object),
            "lesion_id": index,
            "n_voxels": counts.astype(int),
            "volume_mm3": counts * voxel_mm3,
            "centroid_x_mm": world[:, 0],
            "centroid_y_mm": world[:, 1],
            "centroid_z_mm": world[:, 2],
            "extent_mm": _extents(ids, n, affine),
            "location": pd.Series(location, dtype=object),
        }
    )
    table.attrs.update(
        outside_brain_mm3=n_out * voxel_mm3, n_removed=removed, connectivity=connectivity,
        order=order, voxel_mm3=voxel_mm3,
    )
    return table, ids, img


def classify_lesions(
    lesion_mask: ImageLike,
    seg: ImageLike,
    *,
    labels: Any = None,
    connectivity: int = 26,
    min_size: str | None = None,
    min_volume_mm3: float | None = None,
    min_extent_mm: float | None = None,
    min_voxels: int | None = None,
    threshold: float | None = None,
    contact_mm: float | None = None,
    order: str = "mcdonald",
    participant_id: str | None = None,
    session_id: str | None = None,
) -> pd.DataFrame:
    """Lesion count, volume and load per location class, plus the total.

    Arguments as in :func:`lesion_table` (``seg`` is required).

    Returns
    -------
    pandas.DataFrame
        One row per class in :data:`CLASSES` and a ``total`` row: participant_id, session_id,
        location, count, n_voxels, volume_mm3, volume_ml, load_pct_icv (lesion volume as % of the
        intracranial volume), load_pct_wm (% of white matter including lesions). The classes
        sum exactly to the total; no lesions give zeros, never NaN.
    """
    table = lesion_table(
        lesion_mask,
        seg,
        labels=labels,
        connectivity=connectivity,
        min_size=min_size,
        min_volume_mm3=min_volume_mm3,
        min_extent_mm=min_extent_mm,
        min_voxels=min_voxels,
        threshold=threshold,
        contact_mm=contact_mm,
        order=order,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)  # already said by lesion_table
        volumes = tissue_volumes(
            seg, lesion_mask, labels=labels, lesion_threshold=threshold, regions=("wm", "icv")
        )
    return lesion_load(table, volumes, participant_id=participant_id, session_id=session_id)


def lesion_load(
    table: pd.DataFrame,
    volumes: pd.DataFrame,
    *,
    participant_id: str | None = None,
    session_id: str | None = None,
) -> pd.DataFrame:
    """Per-class lesion count, volume and load from a :func:`lesion_table` and the visit's
    :func:`~msimaging.volumetry.tissue_volumes` (regions ``wm`` and ``icv``); what
    :func:`classify_lesions` returns, without reading the images again."""
    if not isinstance(table, pd.DataFrame) or "voxel_mm3" not in table.attrs:
        raise InputError("table must be the DataFrame lesion_table() returned (with its attrs).")
    if not isinstance(volumes, pd.DataFrame) or not {"wm", "icv"} <= set(
        volumes.get("region", ())
    ):
        raise InputError("volumes must be tissue_volumes() rows including regions 'wm', 'icv'.")
    by_region = volumes.set_index("region")["volume_ml"]
    icv_mm3, wm_mm3 = by_region["icv"] * 1000.0, by_region["wm"] * 1000.0
    grouped = table.groupby("location")["n_voxels"].agg(["count", "sum"])
    voxel_mm3 = float(table.attrs["voxel_mm3"])
    rows = []
    for location in (*CLASSES, "total"):
        if location == "total":
            count, n_voxels = len(table), int(table["n_voxels"].sum())
        elif location in grouped.index:
            count = int(grouped.loc[location, "count"])
            n_voxels = int(grouped.loc[location, "sum"])
        else:
            count, n_voxels = 0, 0
        volume = n_voxels * voxel_mm3
        rows.append(
            {
                "participant_id": participant_id,
                "session_id": session_id,
                "location": location,
                "count": int(count),
                "n_voxels": n_voxels,
                "volume_mm3": volume,
                "volume_ml": volume / 1000.0,
                "load_pct_icv": 100.0 * volume / icv_mm3 if icv_mm3 > 0 else 0.0,
                "load_pct_wm": 100.0 * volume / wm_mm3 if wm_mm3 > 0 else 0.0,
            }
        )
    out = pd.DataFrame(rows)
    out.attrs.update(table.attrs)
    return out
