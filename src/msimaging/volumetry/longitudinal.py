"""Lesions across visits: matching, evolution categories, one row per lesion track.

Masks of all visits are compared in one space: either they share a grid, or ``transforms``
gives, per follow-up visit, the registration from the first visit to it (e.g. a rigid
:func:`msimaging.registration.register_affine` of the T1w images); each visit's lesions are
then labelled and measured on the visit's own grid and only carried to the first visit's grid
(nearest neighbour) to find overlaps. Each visit is labelled with the same rules as
:func:`msimaging.volumetry.label_lesions`; lesions of any two visits that share a voxel are the
same *track* when they share a voxel at consecutive visits (connected components of that
overlap graph), so a lesion that merges with its neighbour or splits keeps one track, and a
lesion appearing where an earlier one has already shrunk away is new (counted against the
previous scan, as new T2 lesions are in trials).

Categories, from the first to the last visit
    ``new`` (absent at the first visit), ``disappeared`` (absent at the last), ``transient``
    (absent at both, present in between), ``merged`` (fewer components at the last visit),
    ``split`` (more components), ``enlarging`` (volume ratio last/first >= 1 + t and growth
    >= the floor), ``shrinking`` (ratio <= 1 / (1 + t) and loss >= the floor), ``stable``.
    The relative threshold ``t`` is symmetric in ratio: a lesion that enlarges by 30% from
    A to B shrinks by 23% from B to A.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from msimaging.errors import InputError
from msimaging.io import ImageLike, check_same_grid, load_mask
from msimaging.registration import AffineTransform, apply_transform
from msimaging.volumetry.lesions import _label, _size_limits
from msimaging.volumetry.tissue import voxel_volume_mm3

__all__ = ["CATEGORIES", "CHANGE_PRESETS", "match_lesions"]

CATEGORIES: tuple[str, ...] = (
    "new", "disappeared", "transient", "merged", "split", "enlarging", "shrinking", "stable",
)
#: Relative-change presets in %: LesionQuant 20, LST-AI author 30 (default), conservative 50.
CHANGE_PRESETS: dict[str, float] = {"lesionquant": 20.0, "lst-ai": 30.0, "conservative": 50.0}
#: Voxel side (mm) of the refined grid on which overlaps across grids are found.
_FINE_MM = 1.0


def _check_change(change_pct: Any) -> float:
    if isinstance(change_pct, str):
        if change_pct not in CHANGE_PRESETS:
            raise InputError(
                f"change_pct={change_pct!r} is not a preset; use a number of % or one of "
                f"{', '.join(f'{k} ({v:g}%)' for k, v in CHANGE_PRESETS.items())}."
            )
        return CHANGE_PRESETS[change_pct]
    if not isinstance(change_pct, int | float) or not math.isfinite(change_pct) or change_pct <= 0:
        raise InputError(f"change_pct must be a positive number of %, got {change_pct!r}.")
    return float(change_pct)


def _visits(masks: Any, visits: Sequence[str] | None) -> tuple[list[str], list[Any]]:
    if isinstance(masks, Mapping):
        if visits is not None:
            raise InputError("give visits either as the keys of masks or as visits=, not both.")
        labels, images = [str(k) for k in masks], list(masks.values())
    elif isinstance(masks, Sequence) and not isinstance(masks, str):
        images = list(masks)
        labels = [str(v) for v in visits] if visits is not None else [
            f"visit{k + 1}" for k in range(len(images))
        ]
        if len(labels) != len(images):
            raise InputError(
                f"visits has {len(labels)} labels for {len(images)} masks; give one per mask."
            )
    else:
        raise InputError(
            "masks must be a sequence of lesion masks in visit order, or a mapping visit -> "
            "mask (e.g. {'M0': path0, 'M6': path6})."
        )
    if len(images) < 2:
        raise InputError(f"match_lesions needs at least two visits, got {len(images)}.")
    if len(set(labels)) != len(labels):
        raise InputError(f"visit labels must be unique, got {labels}.")
    return labels, images


def match_lesions(
    masks: Sequence[ImageLike] | Mapping[str, ImageLike],
    *,
    visits: Sequence[str] | None = None,
    connectivity: int = 26,
    min_size: str | None = None,
    min_volume_mm3: float | None = None,
    min_extent_mm: float | None = None,
    min_voxels: int | None = None,
    threshold: float | None = None,
    change_pct: float | str = 30.0,
    min_change_mm3: float = 0.0,
    transforms: Mapping[str, Any] | None = None,
    tolerance_mm: float = 0.0,
    min_overlap_pct: float = 0.0,
    participant_id: str | None = None,
) -> pd.DataFrame:
    """Match lesions across visits and classify their evolution; one row per lesion track.

    Parameters
    ----------
    masks : sequence of images (visit order) or mapping visit -> image
        Lesion masks of one subject on one grid (see the module docstring).
    visits : sequence of str, optional
        Visit labels for a sequence of masks (default visit1, visit2, ...).
    connectivity, min_size, min_volume_mm3, min_extent_mm, min_voxels, threshold
        Lesion labelling, as in :func:`msimaging.volumetry.label_lesions`.
    change_pct : float or {"lesionquant", "lst-ai", "conservative"}
        Relative volume change (%) that makes a lesion enlarging (presets 20, 30, 50).
    min_change_mm3 : float
        Absolute floor: smaller volume changes are never enlarging/shrinking.
    transforms : mapping visit -> AffineTransform or SyNTransform, optional
        For masks on their own native grids: the transform from the first visit (static)
        to that visit (moving), e.g. ``register_affine(t1_visit, t1_first, transform="rigid")``.
        Each visit's lesions are labelled on its own grid (volumes are native), and the label
        image is carried to the first visit's grid (nearest neighbour) only to find overlaps.
        Visits without a transform must be on the first visit's grid.
    tolerance_mm : float
        Lesions of consecutive visits closer than this (mm, voxel to voxel) are matched even
        without a shared voxel: useful across grids, where a lesion of one or two voxels can
        land beside itself after resampling. 0 (default) requires overlap.
    min_overlap_pct : float
        Share (%) of the smaller of two lesions of consecutive visits that they must share to
        be matched; 0 (default) matches on any shared voxel. Across registered grids lesions
        that only touch share a sliver after resampling (on the synthetic head-motion study:
        1 % for two distinct lesions, >= 24 % for every true match), so ~10 % keeps them apart.
    participant_id : str, optional
        Copied into every row.

    Returns
    -------
    pandas.DataFrame
        One row per track: participant_id, track_id, category, first_visit, last_visit
        (visits where present), volume_first_mm3, volume_last_mm3, change_pct (NaN when
        absent at the first visit), then per visit ``n_lesions_<visit>``,
        ``volume_mm3_<visit>`` and ``lesion_ids_<visit>`` (ids in that visit's
        :func:`label_lesions` numbering, ``;``-separated).
    """
    labels, images = _visits(masks, visits)
    transforms = _check_transforms(transforms, labels)
    t = _check_change(change_pct) / 100.0
    if not isinstance(tolerance_mm, int | float) or not math.isfinite(tolerance_mm) or (
        tolerance_mm < 0
    ):
        raise InputError(f"tolerance_mm must be a number of mm >= 0, got {tolerance_mm!r}.")
    if (isinstance(min_overlap_pct, bool) or not isinstance(min_overlap_pct, int | float)
            or not 0 <= min_overlap_pct <= 100):
        raise InputError(
            f"min_overlap_pct must be a number of % between 0 and 100, got {min_overlap_pct!r}."
        )
    if not math.isfinite(min_change_mm3) or min_change_mm3 < 0:
        raise InputError(f"min_change_mm3 must be a number >= 0, got {min_change_mm3!r}.")
    limits = _size_limits(min_size, min_volume_mm3, min_extent_mm, min_voxels)
    # Overlaps across grids are found on the first visit's grid refined to voxels of <= 1 mm
    # (2x to 4x), so that lesions of a few voxels survive nearest-neighbour resampling.
    across_grids = any(isinstance(t, AffineTransform) for t in transforms.values())
    fine = 1
    ids_by_visit, counts_by_visit, voxel_by_visit = [], [], []
    reference = None
    for label, image in zip(labels, images, strict=True):
        img = load_mask(image, name=f"lesion mask of visit {label}", threshold=threshold,
                        allow_empty=True)
        ids, n, _ = _label(np.asanyarray(img.dataobj).astype(bool), img.affine, connectivity,
                           limits)
        counts_by_visit.append(np.bincount(ids.ravel(), minlength=n + 1))
        voxel_by_visit.append(voxel_volume_mm3(img))
        if reference is None:
            reference = img
            if across_grids:
                fine = _refinement(img)
        elif label in transforms:
            ids = _to_reference(ids, img, transforms[label], reference, label, fine)
        else:
            check_same_grid(
                reference, img, names=(f"lesion mask of visit {labels[0]}",
                                       f"lesion mask of visit {label}")
            )
        if fine > 1 and label not in transforms:
            ids = _repeat(ids, fine)
        ids_by_visit.append(ids)
    # Nodes: every lesion of every visit; edges: lesions of consecutive visits sharing a voxel
    # (new lesions are counted against the previous scan, as in clinical practice: a lesion
    # appearing where an earlier one had already shrunk away is new, not a split).
    offsets = np.cumsum([0] + [len(c) - 1 for c in counts_by_visit])
    n_nodes = int(offsets[-1])
    rows, cols = [], []
    zooms = np.asarray(reference.header.get_zooms()[:3], float) / fine
    for a in range(len(labels) - 1):
        ia, ib = ids_by_visit[a], ids_by_visit[a + 1]
        pairs = [_overlaps(ia, ib, min_overlap_pct / 100.0)]
        if tolerance_mm > 0:
            pairs.append(_overlaps(_near(ia, tolerance_mm, zooms), ib))
            pairs.append(_overlaps(ia, _near(ib, tolerance_mm, zooms)))
        pairs = np.concatenate(pairs, axis=1)
        rows.append(pairs[0] - 1 + offsets[a])
        cols.append(pairs[1] - 1 + offsets[a + 1])
    r = np.concatenate(rows) if rows else np.zeros(0, int)
    c = np.concatenate(cols) if cols else np.zeros(0, int)
    graph = sparse.coo_matrix((np.ones(r.size), (r, c)), shape=(n_nodes, n_nodes))
    n_tracks, track_of = connected_components(graph, directed=False)
    # Order tracks by where they first appear (visit, then lesion id): stable numbering.
    first_node = np.full(n_tracks, n_nodes, int)
    np.minimum.at(first_node, track_of, np.arange(n_nodes))
    order = np.argsort(first_node, kind="stable")
    rank = np.empty(n_tracks, int)
    rank[order] = np.arange(n_tracks)
    track_of = rank[track_of]

    n_per = np.zeros((n_tracks, len(labels)), int)
    vox_per = np.zeros((n_tracks, len(labels)), np.int64)
    voxel_mm3 = np.asarray(voxel_by_visit)
    members: list[list[list[int]]] = [[[] for _ in labels] for _ in range(n_tracks)]
    for v, counts in enumerate(counts_by_visit):
        node = np.arange(len(counts) - 1) + offsets[v]
        tr = track_of[node]
        np.add.at(n_per[:, v], tr, 1)
        np.add.at(vox_per[:, v], tr, counts[1:])
        for lesion_id, track in enumerate(tr, start=1):
            members[track][v].append(lesion_id)
    volumes = vox_per * voxel_mm3

    table = []
    for k in range(n_tracks):
        present = np.flatnonzero(n_per[k] > 0)
        first, last = volumes[k, 0], volumes[k, -1]
        row: dict[str, Any] = {
            "participant_id": participant_id,
            "track_id": k + 1,
            "category": _category(n_per[k, 0], n_per[k, -1], first, last, t, min_change_mm3),
            "first_visit": labels[present[0]],
            "last_visit": labels[present[-1]],
            "volume_first_mm3": float(first),
            "volume_last_mm3": float(last),
            "change_pct": float(100.0 * (last - first) / first) if first > 0 else np.nan,
        }
        for v, label in enumerate(labels):
            row[f"n_lesions_{label}"] = int(n_per[k, v])
            row[f"volume_mm3_{label}"] = float(volumes[k, v])
            row[f"lesion_ids_{label}"] = ";".join(map(str, members[k][v]))
        table.append(row)
    columns = [
        "participant_id", "track_id", "category", "first_visit", "last_visit",
        "volume_first_mm3", "volume_last_mm3", "change_pct",
        *(f"{what}_{label}" for label in labels
          for what in ("n_lesions", "volume_mm3", "lesion_ids")),
    ]
    out = pd.DataFrame(table, columns=columns)
    out.attrs.update(
        visits=labels, change_pct=100.0 * t, min_change_mm3=min_change_mm3,
        connectivity=connectivity, tolerance_mm=tolerance_mm, min_overlap_pct=min_overlap_pct,
    )
    return out


def _check_transforms(transforms: Any, labels: list[str]) -> dict[str, Any]:
    if transforms is None:
        return {}
    if not isinstance(transforms, Mapping):
        raise InputError("transforms must be a mapping visit -> transform (or None).")
    out = {}
    for key, transform in transforms.items():
        label = str(key)
        if label not in labels[1:]:
            raise InputError(
                f"transforms has visit {label!r}, which is not one of the follow-up visits "
                f"{labels[1:]} (the first visit, {labels[0]!r}, is the reference)."
            )
        if not hasattr(transform, "static_shape") or not hasattr(transform, "apply"):
            raise InputError(
                f"transforms[{label!r}] must be an AffineTransform or SyNTransform from "
                f"msimaging.registration, got {type(transform).__name__}."
            )
        out[label] = transform
    return out


def _overlaps(ia: np.ndarray, ib: np.ndarray, min_fraction: float = 0.0) -> np.ndarray:
    """Pairs (id in ia, id in ib) sharing voxels: at least ``min_fraction`` of the smaller."""
    both = (ia > 0) & (ib > 0)
    pairs, shared = np.unique(np.stack([ia[both], ib[both]]), axis=1, return_counts=True)
    if min_fraction > 0 and pairs.size:
        size_a, size_b = np.bincount(ia.ravel()), np.bincount(ib.ravel())
        smaller = np.minimum(size_a[pairs[0]], size_b[pairs[1]])
        pairs = pairs[:, shared >= min_fraction * smaller]
    return pairs


def _near(ids: np.ndarray, tolerance_mm: float, zooms: np.ndarray) -> np.ndarray:
    """Each voxel labelled with its nearest lesion when that lesion is within tolerance_mm."""
    if not ids.any():
        return ids
    dist, nearest = ndimage.distance_transform_edt(ids == 0, sampling=zooms,
                                                   return_indices=True)
    out = ids[tuple(nearest)]
    out[dist > tolerance_mm] = 0
    return out


def _refinement(img) -> int:
    """Refinement factor (2 to 4) that brings the grid's largest voxel side to <= 1 mm."""
    largest_mm = float(max(img.header.get_zooms()[:3]))
    return int(np.clip(np.ceil(largest_mm / _FINE_MM - 1e-6), 2, 4))


def _repeat(ids: np.ndarray, factor: int) -> np.ndarray:
    for axis in range(3):
        ids = np.repeat(ids, factor, axis=axis)
    return ids


def _to_reference(ids, img, transform, reference, label, fine: int) -> np.ndarray:
    if tuple(transform.static_shape) != tuple(reference.shape[:3]):
        raise InputError(
            f"transforms[{label!r}] maps to a grid of shape {tuple(transform.static_shape)}, "
            f"not the first visit's {tuple(reference.shape[:3])}; register the visit to the "
            "first visit (static = first visit)."
        )
    if fine > 1 and isinstance(transform, AffineTransform):
        # Fine voxel j lies inside coarse voxel floor(j / fine): centres at (j + 1/2)/fine - 1/2.
        refine = np.diag([1.0 / fine] * 3 + [1.0])
        refine[:3, 3] = 0.5 / fine - 0.5
        transform = AffineTransform(
            transform.matrix,
            tuple(int(n) * fine for n in transform.static_shape),
            np.asarray(transform.static_affine) @ refine,
            transform.moving_shape,
            transform.moving_affine,
        )
        fine = 1  # the refined grid is the transform's own
    carried = apply_transform(
        nib.Nifti1Image(ids.astype(np.int32), img.affine), transform, interpolation="nearest"
    )
    carried = np.rint(np.asanyarray(carried.dataobj)).astype(np.int32)
    # A SyN transform keeps its grid: refine its output instead.
    return _repeat(carried, fine) if fine > 1 else carried


def _category(n_first: int, n_last: int, first: float, last: float, t: float,
              floor: float) -> str:
    if n_first == 0 and n_last == 0:
        return "transient"
    if n_first == 0:
        return "new"
    if n_last == 0:
        return "disappeared"
    if n_last < n_first:
        return "merged"
    if n_last > n_first:
        return "split"
    if last >= (1.0 + t) * first and last - first >= floor:
        return "enlarging"
    if last <= first / (1.0 + t) and first - last >= floor:
        return "shrinking"
    return "stable"
