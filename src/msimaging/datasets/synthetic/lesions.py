"""Synthetic white-matter lesions with known location class and evolution across visits.

Lesions are ellipsoids defined in MNI mm (centre, radii, orientation) with a size factor per
visit (0 = absent), rasterised on each native grid and clipped to the tissue their class lives
in. Every planted lesion is checked on the subject's anatomical grid at every visit where it is
present: it must form exactly one 26-connected component, must not touch another lesion, and
must fall in its intended class under the rule msimaging uses (McDonald 2017 / MAGNIMS, with
the order infratentorial > periventricular > juxtacortical > deep WM):

- infratentorial: in the brainstem or cerebellum;
- periventricular: touches the lateral ventricles (26-neighbourhood);
- juxtacortical: touches cortical GM (26-neighbourhood);
- deep WM: anything else.

Candidates that fail are redrawn, so the ground truth is what the rasterised masks contain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from msimaging.datasets.synthetic.anatomy import (
    BRAINSTEM,
    CEREBELLUM,
    CEREBRAL_WM,
    CORTICAL_GM,
    DEEP_GM,
    VENTRICLES,
    SubjectSpace,
    TemplateAnatomy,
)

__all__ = [
    "CATEGORIES",
    "CLASSES",
    "Lesion",
    "classify_lesion",
    "observed_category",
    "plant_lesions",
    "rasterise_lesions",
]

#: Location classes, in the order the rule checks them.
CLASSES = ("infratentorial", "periventricular", "juxtacortical", "deep_wm")
#: Planted evolutions across visits.
CATEGORIES = ("stable", "enlarging", "shrinking", "new", "disappearing")

_STRUCTURE_26 = np.ones((3, 3, 3), bool)
_INFRATENTORIAL = (BRAINSTEM, CEREBELLUM)
_MAX_SCALE = 1.35


@dataclass(frozen=True)
class Lesion:
    """One planted lesion.

    Attributes
    ----------
    lesion_id : int
        1-based id, the same at every visit (lesion matching across visits).
    location : str
        One of :data:`CLASSES`.
    category : str
        One of :data:`CATEGORIES`.
    centre_mni : tuple of 3 float
        Centre in MNI mm.
    radii_mm : tuple of 3 float
        Semi-axes in MNI mm at size factor 1.
    axes : tuple
        3x3 orientation (columns = ellipsoid axes) as nested tuples.
    scale_by_visit : tuple of float
        Size factor per visit (multiplies the radii); 0 means absent.
    """

    lesion_id: int
    location: str
    category: str
    centre_mni: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...]
    scale_by_visit: tuple[float, ...]


def _allowed(location: str, labels: np.ndarray) -> np.ndarray:
    if location == "infratentorial":
        return np.isin(labels, _INFRATENTORIAL)
    return labels == CEREBRAL_WM


def rasterise_lesions(
    lesions: list[Lesion] | tuple[Lesion, ...],
    visit: int,
    space: SubjectSpace,
    labels: np.ndarray,
    affine: np.ndarray,
) -> np.ndarray:
    """Lesion-id image (int16, 0 = none) on a native grid at one visit.

    Parameters
    ----------
    lesions : sequence of Lesion
    visit : int
        Visit index into ``Lesion.scale_by_visit``.
    space : SubjectSpace
        The subject's native space at this visit.
    labels : ndarray
        Tissue labels on the grid (lesions are clipped to their class's tissue).
    affine : ndarray (4, 4)
        Voxel to native mm of the grid.
    """
    out = np.zeros(labels.shape, np.int16)
    voxel_mm = float(np.abs(np.linalg.det(affine[:3, :3])) ** (1 / 3))
    inv_affine = np.linalg.inv(affine)
    to_native = space.mni_to_native
    from_native = np.linalg.inv(to_native)
    for lesion in lesions:
        factor = lesion.scale_by_visit[visit]
        if factor <= 0:
            continue
        radii = np.asarray(lesion.radii_mm) * factor
        centre_native = to_native[:3, :3] @ np.asarray(lesion.centre_mni) + to_native[:3, 3]
        reach = radii.max() * float(np.max(space.scale)) + 2 * voxel_mm
        lo = np.floor(inv_affine[:3, :3] @ (centre_native - reach) + inv_affine[:3, 3])
        hi = np.ceil(inv_affine[:3, :3] @ (centre_native + reach) + inv_affine[:3, 3])
        lo = np.clip(lo.astype(int), 0, np.array(labels.shape))
        hi = np.clip(hi.astype(int) + 1, 0, np.array(labels.shape))
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        ijk = np.indices(hi - lo).reshape(3, -1) + lo[:, None]
        native = affine[:3, :3] @ ijk + affine[:3, 3:4]
        mni = from_native[:3, :3] @ native + from_native[:3, 3:4]
        local = np.asarray(lesion.axes).T @ (mni - np.asarray(lesion.centre_mni)[:, None])
        inside = (np.sum((local / radii[:, None]) ** 2, axis=0) <= 1.0).reshape(hi - lo)
        inside &= _allowed(lesion.location, labels[box])
        region = out[box]
        region[inside & (region == 0)] = lesion.lesion_id
    return out


def classify_lesion(component: np.ndarray, labels: np.ndarray) -> str:
    """Location class of one lesion mask under the infratentorial > periventricular >
    juxtacortical > deep-WM rule (contact = 26-neighbourhood)."""
    ring = ndimage.binary_dilation(component, _STRUCTURE_26) & ~component
    # Lesion voxels may carry a lesion label in a segmentation: test the ring too.
    if np.isin(labels[component | ring], _INFRATENTORIAL).any():
        return "infratentorial"
    if (labels[ring] == VENTRICLES).any():
        return "periventricular"
    if (labels[ring] == CORTICAL_GM).any():
        return "juxtacortical"
    return "deep_wm"


def _check(ids: np.ndarray, lesion: Lesion, labels: np.ndarray, present: bool) -> bool:
    mask = ids == lesion.lesion_id
    if not present:
        return not mask.any()
    if not mask.any():
        return False
    # Work in the lesion's bounding box (+2 voxels): contact tests need only its neighbourhood.
    where = np.nonzero(mask)
    box = tuple(slice(max(int(w.min()) - 2, 0), int(w.max()) + 3) for w in where)
    mask, ids, labels = mask[box], ids[box], labels[box]
    _, n_components = ndimage.label(mask, _STRUCTURE_26)
    if n_components != 1:
        return False
    ring = ndimage.binary_dilation(mask, _STRUCTURE_26) & ~mask
    if np.any((ids[ring] != 0) & (ids[ring] != lesion.lesion_id)):
        return False  # touches another lesion: counts would merge
    return classify_lesion(mask, labels) == lesion.location


def observed_category(n_voxels: list[int] | tuple[int, ...]) -> str:
    """Evolution of a lesion from its voxel counts per visit (first vs last visit).

    new: absent at the first visit; disappearing: absent at the last; enlarging: at least
    +30% volume; shrinking: at least −25%; stable otherwise.
    """
    first, last = n_voxels[0], n_voxels[-1]
    if first == 0:
        return "new"
    if last == 0:
        return "disappearing"
    if last >= 1.3 * first:
        return "enlarging"
    if last <= 0.75 * first:
        return "shrinking"
    return "stable"


def _evolves_as_planned(trial: list[np.ndarray], lesion: Lesion) -> bool:
    if len(trial) == 1:
        return True
    counts = [int(np.count_nonzero(ids == lesion.lesion_id)) for ids in trial]
    return observed_category(counts) == lesion.category


def _scales(category: str, n_visits: int, rng: np.random.Generator) -> tuple[float, ...]:
    if n_visits == 1 or category == "stable":
        return (1.0,) * n_visits
    steps = np.arange(n_visits) / (n_visits - 1)
    if category == "enlarging":
        return tuple(1.0 + (_MAX_SCALE - 1.0) * steps)
    if category == "shrinking":
        return tuple(1.0 - 0.3 * steps)
    onset = int(rng.integers(1, n_visits))
    if category == "new":
        return tuple(0.0 if v < onset else 1.0 for v in range(n_visits))
    return tuple(1.0 if v < onset else 0.0 for v in range(n_visits))  # disappearing


_DISTANCES: dict[float, dict[str, np.ndarray]] = {}


def _distance_maps(anatomy: TemplateAnatomy) -> dict[str, np.ndarray]:
    """Distances in mm to each structure on the template grid (cached per template)."""
    if anatomy.voxel_mm not in _DISTANCES:
        labels = anatomy.labels
        vox = anatomy.voxel_mm
        infra = np.isin(labels, _INFRATENTORIAL)
        _DISTANCES[anatomy.voxel_mm] = {
            "ventricles": ndimage.distance_transform_edt(labels != VENTRICLES) * vox,
            "cortex": ndimage.distance_transform_edt(labels != CORTICAL_GM) * vox,
            "deep_gm": ndimage.distance_transform_edt(labels != DEEP_GM) * vox,
            "infratentorial": ndimage.distance_transform_edt(~infra) * vox,
            "supratentorial": ndimage.distance_transform_edt(infra | (labels == 0)) * vox,
        }
    return _DISTANCES[anatomy.voxel_mm]


def _candidates(anatomy: TemplateAnatomy, location: str, r_max: float) -> np.ndarray:
    """Template voxels where a lesion of the class, with largest radius r_max, can be centred."""
    labels = anatomy.labels
    dist = _distance_maps(anatomy)
    margin = r_max + anatomy.voxel_mm
    touch = max(0.6 * r_max, 1.5 * anatomy.voxel_mm)
    supra_wm = (labels == CEREBRAL_WM) & (dist["infratentorial"] > margin)
    # The class order makes contact with cortex irrelevant for periventricular lesions.
    if location == "periventricular":
        ok = supra_wm & (dist["ventricles"] <= touch)
    elif location == "juxtacortical":
        ok = supra_wm & (dist["cortex"] <= touch) & (dist["ventricles"] > margin)
    elif location == "deep_wm":
        ok = (
            supra_wm
            & (dist["ventricles"] > margin)
            & (dist["cortex"] > margin)
            & (dist["deep_gm"] > margin)
        )
    else:
        wm_like = (labels == BRAINSTEM) | ((labels == CEREBELLUM) & (anatomy.wm > 0.5))
        ok = wm_like & (dist["supratentorial"] > margin)
    return np.argwhere(ok)


def plant_lesions(
    anatomy: TemplateAnatomy,
    spaces: list[SubjectSpace],
    labels_by_visit: list[np.ndarray],
    affine: np.ndarray,
    rng: np.random.Generator,
    *,
    per_class: int = 3,
    radius_range_mm: tuple[float, float] = (2.0, 7.0),
    categories: tuple[str, ...] = CATEGORIES,
    max_tries: int = 60,
) -> tuple[list[Lesion], list[np.ndarray]]:
    """Plant ``per_class`` lesions of each class for one subject, verified at every visit.

    Parameters
    ----------
    anatomy : TemplateAnatomy
        Template (MNI) anatomy used to choose candidate centres.
    spaces : list of SubjectSpace
        The subject's native space at each visit (head position may differ).
    labels_by_visit : list of ndarray
        Tissue labels on the subject's anatomical grid at each visit.
    affine : ndarray
        Voxel to native mm of the anatomical grid.
    rng : numpy Generator
    per_class : int
        Lesions per location class.
    radius_range_mm : (float, float)
        Range of ellipsoid semi-axes in mm (size factor 1).
    categories : tuple of str
        Evolutions assigned in turn (see :data:`CATEGORIES`).

    Returns
    -------
    lesions : list of Lesion
    ids_by_visit : list of ndarray (int16)
        Lesion-id images on the anatomical grid, one per visit.

    Raises
    ------
    RuntimeError
        If a lesion cannot be placed (grid too coarse for the requested sizes).
    """
    n_visits = len(spaces)
    lesions: list[Lesion] = []
    ids_by_visit = [np.zeros(lab.shape, np.int16) for lab in labels_by_visit]
    r_lo, r_hi = radius_range_mm
    plan = [
        (location, categories[(k + i) % len(categories)])
        for i, location in enumerate(CLASSES)
        for k in range(per_class)
    ]
    for location, category in plan:
        # Sizes from a few voxels to large: log-uniform radii.
        mean_radius = float(np.exp(rng.uniform(np.log(r_lo), np.log(r_hi))))
        # Deep WM and the infratentorial WM are thin: large lesions there would touch
        # cortex, ventricles or the tentorium.
        if location == "deep_wm":
            mean_radius = min(mean_radius, max(r_lo, 0.35 * r_hi))
        elif location == "infratentorial":
            mean_radius = min(mean_radius, 0.6 * r_hi)
        growth = _MAX_SCALE if category == "enlarging" else 1.0
        candidates = _candidates(anatomy, location, mean_radius * 1.3 * growth)
        for _ in range(max_tries):
            if candidates.size == 0:
                break
            ijk = candidates[rng.integers(len(candidates))]
            centre = anatomy.affine[:3, :3] @ ijk + anatomy.affine[:3, 3]
            radii = mean_radius * rng.uniform(0.75, 1.3, 3)
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            lesion = Lesion(
                lesion_id=len(lesions) + 1,
                location=location,
                category=category,
                centre_mni=tuple(float(c) for c in centre),
                radii_mm=tuple(float(r) for r in radii),
                axes=tuple(tuple(float(v) for v in row) for row in q),
                scale_by_visit=_scales(category, n_visits, rng),
            )
            trial = []
            for v in range(n_visits):
                mine = rasterise_lesions([lesion], v, spaces[v], labels_by_visit[v], affine)
                if np.any((mine > 0) & (ids_by_visit[v] > 0)):
                    break  # overlaps an earlier lesion
                trial.append(np.where(mine > 0, mine, ids_by_visit[v]))
            if len(trial) == n_visits and _evolves_as_planned(trial, lesion) and all(
                _check(trial[v], lesion, labels_by_visit[v], lesion.scale_by_visit[v] > 0)
                for v in range(n_visits)
            ):
                lesions.append(lesion)
                ids_by_visit = trial
                break
        else:
            raise RuntimeError(
                f"could not place a {location} lesion of radius {mean_radius:.1f} mm in "
                f"{max_tries} tries; use a finer anatomical grid or another radius_range_mm"
            )
        if candidates.size == 0:
            raise RuntimeError(f"no candidate position for a {location} lesion")
    return lesions, ids_by_visit
