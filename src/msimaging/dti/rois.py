"""Normal-appearing white matter regions and tidy ROI tables.

:func:`nawm_rois` builds NAWM (whole, left, right) from a white-matter mask and a lesion mask on
one grid: lesions, and optionally a perilesional margin in mm, are removed, and the hemispheres
are split at the subject's midsagittal plane, found by mapping every voxel to MNI space (x < 0
is left) through a subject-to-MNI transform such as the one :mod:`msimaging.registration`
estimates. :func:`roi_stats` turns maps and regions into one tidy row per region and metric.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from msimaging.errors import InputError, MSImagingWarning
from msimaging.io import ImageLike, check_same_grid, describe, load_image, load_mask

__all__ = ["ROI", "UNITS", "nawm_rois", "roi_stats"]

#: Units of the tensor metrics when b-values are in s/mm².
UNITS: dict[str, str] = {"fa": "unitless", "md": "mm^2/s", "ad": "mm^2/s", "rd": "mm^2/s"}

_HEMISPHERES = ("both", "left", "right")


@dataclass(frozen=True)
class ROI:
    """A named region on an image grid.

    Attributes
    ----------
    name : str
        Region name, e.g. ``"NAWM"``.
    hemisphere : {"both", "left", "right"}
    mask : nibabel.Nifti1Image
        uint8 0/1 image.
    """

    name: str
    hemisphere: str
    mask: nib.Nifti1Image

    @property
    def label(self) -> str:
        """Name with the hemisphere, e.g. ``NAWM_left``."""
        return self.name if self.hemisphere == "both" else f"{self.name}_{self.hemisphere}"

    @property
    def n_voxels(self) -> int:
        return int(np.count_nonzero(np.asanyarray(self.mask.dataobj)))

    def __repr__(self) -> str:
        return f"ROI({self.label!r}, n_voxels={self.n_voxels})"


def _world_to_mni(to_mni: Any) -> np.ndarray:
    matrix = getattr(to_mni, "matrix", to_mni)
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(
            f"to_mni must be a 4x4 matrix mapping the masks' world mm to MNI mm (or a transform "
            f"with such a .matrix), got shape {matrix.shape}."
        )
    return matrix


def nawm_rois(
    wm_mask: ImageLike,
    lesion_mask: ImageLike | None = None,
    *,
    margin_mm: float = 0.0,
    to_mni: Any = None,
    wm_threshold: float | None = None,
    name: str = "NAWM",
) -> tuple[ROI, ROI, ROI]:
    """Normal-appearing white matter: whole, left and right.

    Parameters
    ----------
    wm_mask : str, os.PathLike or nibabel image
        White-matter mask, or a WM probability map with ``wm_threshold``.
    lesion_mask : str, os.PathLike or nibabel image, optional
        Binary lesion mask on the same grid as ``wm_mask`` (bring it there first with
        :mod:`msimaging.registration`). Lesion voxels are removed from the WM.
    margin_mm : float
        Also remove WM within this distance (mm, Euclidean, voxel sizes from the header) of a
        lesion: a perilesional margin.
    to_mni : 4x4 array or transform, optional
        Maps world mm of the masks' grid to MNI mm (``.matrix`` of a transform is used). A voxel
        is left when its MNI x < 0. Without it, the world x = 0 plane is used, with a warning:
        only right for images already aligned to MNI.
    wm_threshold : float, optional
        Threshold for a probability ``wm_mask`` (voxels strictly above it are WM).
    name : str
        Region name in the returned ROIs.

    Returns
    -------
    (ROI, ROI, ROI)
        Whole, left and right NAWM.

    Raises
    ------
    InputError
        Empty WM mask, lesion mask on another grid, a negative margin, or an empty hemisphere.
    """
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise InputError(f"margin_mm must be a finite number >= 0, got {margin_mm!r}.")
    wm_img = load_mask(wm_mask, name="wm_mask", threshold=wm_threshold)
    wm = np.asanyarray(wm_img.dataobj).astype(bool)
    affine = wm_img.affine
    nawm = wm.copy()
    if lesion_mask is not None:
        check_same_grid(
            wm_img, lesion_mask, names=("wm_mask", "lesion_mask"),
            _described=(describe(wm_mask, "wm_mask"), describe(lesion_mask, "lesion_mask")),
        )
        lesion_img = load_mask(lesion_mask, name="lesion_mask", allow_empty=True)
        lesion = np.asanyarray(lesion_img.dataobj).astype(bool)
        if margin_mm > 0 and lesion.any():
            voxel_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
            lesion = ndimage.distance_transform_edt(~lesion, sampling=voxel_mm) <= margin_mm
        nawm &= ~lesion
    if not nawm.any():
        raise InputError(
            f"{describe(wm_mask, 'wm_mask')}: no normal-appearing WM voxel is left after "
            "removing lesions and margin; check the masks and margin_mm."
        )
    ijk = np.argwhere(nawm)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    if to_mni is None:
        warnings.warn(
            "nawm_rois: no to_mni transform given; hemispheres are split at world x = 0, which "
            "is the midsagittal plane only for MNI-aligned images. Pass the subject-to-MNI "
            "transform from msimaging.registration.",
            MSImagingWarning,
            stacklevel=2,
        )
        x_mni = world[:, 0]
    else:
        matrix = _world_to_mni(to_mni)
        x_mni = world @ matrix[0, :3] + matrix[0, 3]
    left = np.zeros_like(nawm)
    left[tuple(ijk[x_mni < 0].T)] = True
    right = nawm & ~left
    out = []
    for hemisphere, mask in zip(_HEMISPHERES, (nawm, left, right), strict=True):
        if not mask.any():
            raise InputError(
                f"{name} {hemisphere}: no voxel. The masks or the to_mni transform place all "
                "the white matter in one hemisphere; check the transform direction "
                "(world mm of the mask grid -> MNI mm)."
            )
        out.append(ROI(name, hemisphere, nib.Nifti1Image(mask.astype(np.uint8), affine)))
    return tuple(out)


def _as_rois(rois: Iterable[ROI] | Mapping[str, ImageLike]) -> list[ROI]:
    if isinstance(rois, Mapping):
        return [
            ROI(str(key), "both", load_mask(value, name=f"rois[{key!r}]"))
            for key, value in rois.items()
        ]
    out = list(rois)
    if not out or not all(isinstance(r, ROI) for r in out):
        raise InputError(
            "rois must be a non-empty sequence of ROI (from nawm_rois) or a mapping "
            "name -> mask image."
        )
    return out


def roi_stats(
    maps: Mapping[str, ImageLike] | Any,
    rois: Iterable[ROI] | Mapping[str, ImageLike],
    *,
    participant_id: str | None = None,
    session_id: str | None = None,
) -> pd.DataFrame:
    """Tidy table of map values within regions: one row per region and metric.

    Parameters
    ----------
    maps : mapping of metric name -> image, or an object with ``.maps`` (e.g. a TensorFit)
        Scalar maps on the regions' grid (e.g. fa, md, ad, rd).
    rois : sequence of ROI or mapping of name -> mask image
        Regions (a mapping gives hemisphere ``"both"``).
    participant_id, session_id : str, optional
        Copied into every row.

    Returns
    -------
    pandas.DataFrame
        Columns participant_id, session_id, roi, hemisphere, metric, mean, median, sd
        (ddof=1), n_voxels, volume_mm3, unit. Metric values are taken where the region is 1;
        NaN/Inf map values raise an error.
    """
    maps = getattr(maps, "maps", maps)
    if not isinstance(maps, Mapping) or not maps:
        raise InputError("maps must be a non-empty mapping metric -> image (or a TensorFit).")
    regions = _as_rois(rois)
    reference = regions[0].mask
    loaded = {}
    for metric, img in maps.items():
        image = load_image(img, name=f"maps[{metric!r}]", ndim=3)
        check_same_grid(reference, image, names=(f"roi {regions[0].label!r}", f"map {metric!r}"))
        loaded[metric] = np.asanyarray(image.dataobj)
    rows = []
    for roi in regions:
        check_same_grid(reference, roi.mask, names=(f"roi {regions[0].label!r}", roi.label))
        mask = np.asanyarray(roi.mask.dataobj).astype(bool)
        n = int(mask.sum())
        voxel_mm3 = float(abs(np.linalg.det(roi.mask.affine[:3, :3])))
        for metric, data in loaded.items():
            values = data[mask].astype(np.float64)
            rows.append(
                {
                    "participant_id": participant_id,
                    "session_id": session_id,
                    "roi": roi.label,
                    "hemisphere": roi.hemisphere,
                    "metric": metric,
                    "mean": float(values.mean()) if n else np.nan,
                    "median": float(np.median(values)) if n else np.nan,
                    "sd": float(values.std(ddof=1)) if n > 1 else np.nan,
                    "n_voxels": n,
                    "volume_mm3": n * voxel_mm3,
                    "unit": UNITS.get(metric, "n/a"),
                }
            )
    return pd.DataFrame(rows)
