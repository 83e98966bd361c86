"""Offline waypoint definitions of white-matter tracts in MNI152 (ICBM 2009 symmetric) space.

pyAFQ and TractSeg download their waypoint ROIs at run time and fail offline; msimaging ships
its own. Each tract is a handful of simple shapes in MNI mm (:class:`Sphere`, :class:`Box`
and unions of boxes) placed on published anatomy, not fitted to any phantom:

- **CST_L / CST_R** (corticospinal tract): cerebral peduncle -> posterior limb of the internal
  capsule (PLIC) -> dorsal precentral gyrus, the JHU protocol (Wakana et al. 2007) and the AFQ
  two-waypoint idea (Yeatman et al. 2012) with the capsular level added.
- **OR_L / OR_R** (optic radiation): lateral geniculate nucleus (LGN) -> sagittal stratum
  lateral to the atrium -> calcarine cortex, with the exclusions of Caffarra et al. (2021).
- **CC** (corpus callosum) and **CC_genu / CC_body / CC_splenium**: left hemisphere ->
  midsagittal corpus callosum -> right hemisphere (Wakana et al. 2007); the parts restrict the
  midsagittal waypoint to the anterior sixth, middle and posterior quarter of the callosum
  (Hofer & Frahm 2006).

The waypoints are ordered from the start to the end of the tract, which also orients tract
profiles. :meth:`TractDefinition.masks` rasterises the shapes on any voxel grid given the
grid's affine and a world-mm -> MNI-mm affine, so the ROIs land directly in a subject's DWI
space without warping an image. Left definitions are exact mirror images (x -> -x) of the
right ones; the template is symmetric.

Coordinates are in mm in the ICBM 2009 nonlinear symmetric template (origin at the anterior
commissure, +x right, +y anterior, +z superior). Shapes are generous (radii 7-9 mm, slabs
6 mm thick) so that they hold several voxels of 2-2.5 mm diffusion data.

References
----------
Bürgel U, et al. (2006). White matter fiber tracts of the human brain: three-dimensional
mapping at microscopic resolution, topography and intersubject variability. NeuroImage
29:1092-1105.
Caffarra S, et al. (2021). Development of the visual white matter pathways mediates
development of electrophysiological responses in visual cortex. Hum Brain Mapp
42:5785-5797.
Catani M, Thiebaut de Schotten M (2008). A diffusion tensor imaging tractography atlas for
virtual in vivo dissections. Cortex 44:1105-1132.
Hofer S, Frahm J (2006). Topography of the human corpus callosum revisited: comprehensive
fiber tractography using diffusion tensor magnetic resonance imaging. NeuroImage
32:989-994.
Holodny AI, et al. (2005). Diffusion tensor tractography of the motor white matter tracts in
man: current controversies and future directions. Ann N Y Acad Sci 1064:88-97.
Mori S, Wakana S, Nagae-Poetscher LM, van Zijl PCM (2005). MRI Atlas of Human White
Matter. Elsevier.
Wakana S, et al. (2007). Reproducibility of quantitative tractography methods applied to
cerebral white matter. NeuroImage 36:630-644.
Yeatman JD, et al. (2012). Tract profiles of white matter properties: automating
fiber-tract quantification. PLoS One 7:e49790.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from msimaging.errors import InputError

__all__ = [
    "ROLES",
    "TRACKING_KEYS",
    "TRACTS",
    "TRACT_NAMES",
    "Box",
    "Sphere",
    "TractDefinition",
    "Union",
    "tract_definitions",
]

#: The ROI roles of a tract definition, in the order :meth:`TractDefinition.masks` returns.
ROLES = ("seeds", "waypoints", "exclusions", "endpoints")

#: Tracking parameters a definition may recommend (:attr:`TractDefinition.tracking`).
TRACKING_KEYS = (
    "seeding", "seeds_per_voxel", "max_angle_deg", "clean", "waypoint_margin_mm",
    "core_distance",
)

# Voxels tested per chunk in masks(): bounds memory to ~100 MB whatever the grid size.
_CHUNK_VOXELS = 2_000_000


def _points(points_mm: Any) -> np.ndarray:
    points = np.asarray(points_mm, dtype=float)
    if points.ndim == 1 and points.shape[0] == 3:
        points = points[None, :]
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(
            f"points_mm must be an (N, 3) array of MNI coordinates in mm, got shape "
            f"{points.shape}: pass one row (x, y, z) per point."
        )
    return points


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    array = np.asarray(value, dtype=float)
    if array.shape != (3,) or not np.all(np.isfinite(array)):
        raise InputError(f"{name} must be three finite numbers (x, y, z) in mm, got {value!r}.")
    return (float(array[0]), float(array[1]), float(array[2]))


@dataclasses.dataclass(frozen=True)
class Sphere:
    """A ball in MNI mm: points with ``|p - center_mm| <= radius_mm``.

    Parameters
    ----------
    center_mm : sequence of 3 float
        Centre (x, y, z) in MNI mm.
    radius_mm : float
        Radius in mm (> 0).
    label : str, optional
        Anatomical name, shown in tables.
    """

    center_mm: tuple[float, float, float]
    radius_mm: float
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "center_mm", _triple(self.center_mm, "center_mm"))
        radius = float(self.radius_mm)
        if not np.isfinite(radius) or radius <= 0:
            raise InputError(f"radius_mm must be a positive number of mm, got {self.radius_mm!r}.")
        object.__setattr__(self, "radius_mm", radius)

    def contains(self, points_mm: Any) -> np.ndarray:
        """Whether each point (rows of an (N, 3) array in MNI mm) lies in the sphere."""
        offset = _points(points_mm) - np.asarray(self.center_mm)
        return np.einsum("ij,ij->i", offset, offset) <= self.radius_mm**2

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper corners of the axis-aligned bounding box in MNI mm."""
        centre = np.asarray(self.center_mm)
        return centre - self.radius_mm, centre + self.radius_mm

    def mirrored(self) -> Sphere:
        """The mirror image across the midsagittal plane (x -> -x)."""
        x, y, z = self.center_mm
        return Sphere((-x, y, z), self.radius_mm, _mirror_label(self.label))

    def describe(self) -> str:
        """The shape and its coordinates as text, e.g. ``"sphere c=(17, -20, -13) r=7"``."""
        return f"sphere c={_fmt(self.center_mm)} r={self.radius_mm:g}"


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned box in MNI mm: points with ``min_mm <= p <= max_mm`` on every axis.

    A box that is thin along one axis is a slab (a thick plane), e.g. a midsagittal slab
    ``Box((-3, y0, z0), (3, y1, z1))``.

    Parameters
    ----------
    min_mm, max_mm : sequence of 3 float
        Lower and upper corners (x, y, z) in MNI mm; ``min_mm < max_mm`` on every axis.
    label : str, optional
        Anatomical name, shown in tables.
    """

    min_mm: tuple[float, float, float]
    max_mm: tuple[float, float, float]
    label: str = ""

    def __post_init__(self) -> None:
        low = _triple(self.min_mm, "min_mm")
        high = _triple(self.max_mm, "max_mm")
        if not all(a < b for a, b in zip(low, high, strict=True)):
            raise InputError(
                f"min_mm must be below max_mm on every axis, got min_mm={low} and "
                f"max_mm={high}: swap or widen the bounds."
            )
        object.__setattr__(self, "min_mm", low)
        object.__setattr__(self, "max_mm", high)

    def contains(self, points_mm: Any) -> np.ndarray:
        """Whether each point (rows of an (N, 3) array in MNI mm) lies in the box."""
        points = _points(points_mm)
        return np.all((points >= self.min_mm) & (points <= self.max_mm), axis=1)

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper corners (``min_mm``, ``max_mm``) as arrays."""
        return np.asarray(self.min_mm), np.asarray(self.max_mm)

    def mirrored(self) -> Box:
        """The mirror image across the midsagittal plane (x -> -x)."""
        (x0, y0, z0), (x1, y1, z1) = self.min_mm, self.max_mm
        return Box((-x1, y0, z0), (-x0, y1, z1), _mirror_label(self.label))

    def describe(self) -> str:
        """The shape and its coordinates as text."""
        return f"box {_fmt(self.min_mm)}..{_fmt(self.max_mm)}"


@dataclasses.dataclass(frozen=True)
class Union:
    """Points inside any of several spheres or boxes (e.g. the arch of the corpus callosum).

    Parameters
    ----------
    parts : tuple of Sphere or Box
        The shapes; at least one.
    label : str, optional
        Anatomical name, shown in tables.
    """

    parts: tuple[Sphere | Box, ...]
    label: str = ""

    def __post_init__(self) -> None:
        parts = tuple(self.parts)
        if not parts or not all(isinstance(p, Sphere | Box) for p in parts):
            raise InputError(
                f"parts must be a non-empty sequence of Sphere or Box, got {self.parts!r}."
            )
        object.__setattr__(self, "parts", parts)

    def contains(self, points_mm: Any) -> np.ndarray:
        """Whether each point (rows of an (N, 3) array in MNI mm) lies in any part."""
        points = _points(points_mm)
        inside = np.zeros(points.shape[0], dtype=bool)
        for part in self.parts:
            inside |= part.contains(points)
        return inside

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper corners of the bounding box of all parts in MNI mm."""
        lows, highs = zip(*(p.bounds_mm() for p in self.parts), strict=True)
        return np.min(lows, axis=0), np.max(highs, axis=0)

    def mirrored(self) -> Union:
        """The mirror image across the midsagittal plane (x -> -x)."""
        return Union(tuple(p.mirrored() for p in self.parts), _mirror_label(self.label))

    def describe(self) -> str:
        """The shapes and their coordinates as text."""
        return " | ".join(p.describe() for p in self.parts)


Region = Sphere | Box | Union


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _mirror_label(label: str) -> str:
    swaps = {" right": " left", " left": " right", "right ": "left ", "left ": "right "}
    for old, new in swaps.items():
        if old in label:
            return label.replace(old, new)
    return label


def _matrix(value: Any, name: str) -> np.ndarray:
    matrix = np.asarray(getattr(value, "matrix", value), dtype=float)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(
            f"{name} must be a finite 4x4 affine matrix (or a transform with such a .matrix), "
            f"got shape {matrix.shape}."
        )
    if not np.allclose(matrix[3], (0, 0, 0, 1)):
        raise InputError(
            f"{name} must be an affine matrix whose last row is (0, 0, 0, 1), got "
            f"{matrix[3].tolist()}."
        )
    return matrix


def _shape(shape: Any) -> tuple[int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) < 3 or any(d <= 0 for d in dims):
        raise InputError(
            f"shape must be the grid's 3 positive voxel counts (extra dimensions are ignored), "
            f"got {shape!r}."
        )
    return dims[:3]  # type: ignore[return-value]


def _rasterise(
    region: Region, dims: tuple[int, int, int], vox_to_mni: np.ndarray, mni_to_vox: np.ndarray
) -> np.ndarray:
    """Boolean mask of the voxels whose centres (mapped to MNI mm) lie in ``region``."""
    mask = np.zeros(dims, dtype=bool)
    # Only the voxel block covering the region's bounding box is tested.
    low, high = region.bounds_mm()
    corners = np.array(
        [
            [(low, high)[a][0], (low, high)[b][1], (low, high)[c][2]]
            for a in (0, 1)
            for b in (0, 1)
            for c in (0, 1)
        ]
    )
    ijk = corners @ mni_to_vox[:3, :3].T + mni_to_vox[:3, 3]
    start = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, dims)
    stop = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 0, dims)
    if np.any(stop <= start):
        return mask
    block = tuple(int(b - a) for a, b in zip(start, stop, strict=True))
    plane = block[1] * block[2]
    jk = np.indices(block[1:]).reshape(2, -1).T + start[1:]
    step = max(1, _CHUNK_VOXELS // plane)  # whole i-slices per chunk: bounded memory
    for i0 in range(0, block[0], step):
        i1 = min(block[0], i0 + step)
        i = np.repeat(np.arange(start[0] + i0, start[0] + i1), plane)[:, None]
        voxels = np.hstack([i, np.tile(jk, (i1 - i0, 1))]).astype(float)
        inside = region.contains(voxels @ vox_to_mni[:3, :3].T + vox_to_mni[:3, 3])
        mask[start[0] + i0 : start[0] + i1, start[1] : stop[1], start[2] : stop[2]] = (
            inside.reshape(i1 - i0, *block[1:])
        )
    return mask


@dataclasses.dataclass(frozen=True)
class TractDefinition:
    """A tract as ordered waypoint ROIs plus seed, exclusion and endpoint ROIs, in MNI mm.

    Attributes
    ----------
    name : str
        Short name, e.g. ``"CST_L"``.
    description : str
        Anatomical description and rationale.
    references : tuple of str
        Sources of the anatomy.
    waypoints : tuple of Region
        Ordered from the start to the end of the tract; a streamline must pass through every
        one, and tract profiles run from the first to the last.
    seeds : tuple of Region
        Where to seed tractography.
    exclusions : tuple of Region
        A streamline entering any of them is rejected.
    endpoints : tuple of Region
        Optional regions where streamline ends are expected (empty when not used).
    position_axis : str
        The start -> end orientation of profiles, e.g. ``"inferior -> superior"``.
    tracking : mapping
        Recommended tracking parameters for this tract (keys of :data:`TRACKING_KEYS`:
        ``seeding``, ``seeds_per_voxel``, ``max_angle_deg``, ``clean``,
        ``waypoint_margin_mm``, ``core_distance``), used by
        :func:`msimaging.dti.tracts.bundle` for every parameter the caller leaves at ``None``.
        Empty: the library defaults.
    """

    name: str
    description: str
    references: tuple[str, ...]
    waypoints: tuple[Region, ...]
    seeds: tuple[Region, ...]
    exclusions: tuple[Region, ...] = ()
    endpoints: tuple[Region, ...] = ()
    position_axis: str = ""
    tracking: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tracking) - set(TRACKING_KEYS))
        if unknown:
            raise InputError(
                f"tracking of tract {self.name!r} has unknown parameter(s) {unknown}; "
                f"allowed: {', '.join(TRACKING_KEYS)}."
            )
        object.__setattr__(self, "tracking", MappingProxyType(dict(self.tracking)))
        for role in ROLES:
            regions = tuple(getattr(self, role))
            if not all(isinstance(r, Sphere | Box | Union) for r in regions):
                raise InputError(
                    f"{role} of tract {self.name!r} must contain only Sphere, Box or Union "
                    f"regions, got {regions!r}."
                )
            object.__setattr__(self, role, regions)
        object.__setattr__(self, "references", tuple(self.references))
        if len(self.waypoints) < 2:
            raise InputError(
                f"waypoints of tract {self.name!r} must hold at least 2 regions (start and "
                f"end), got {len(self.waypoints)}."
            )
        if not self.seeds:
            raise InputError(f"seeds of tract {self.name!r} must hold at least one region.")

    def regions(self) -> dict[str, tuple[Region, ...]]:
        """The regions of each role (keys in :data:`ROLES` order)."""
        return {role: getattr(self, role) for role in ROLES}

    def masks(self, shape: Any, affine: Any, to_mni: Any = None) -> dict[str, list[np.ndarray]]:
        """Rasterise every ROI on a voxel grid.

        A voxel belongs to a ROI when its centre, mapped to world mm by ``affine`` and then to
        MNI mm by ``to_mni``, lies inside the shape. Giving a subject's DWI grid and its
        DWI-world -> MNI affine places the definitions in DWI space without warping images.

        Parameters
        ----------
        shape : sequence of int
            Grid size (the first three values are used, so ``img.shape`` of a 4D image works).
        affine : (4, 4) array-like
            Voxel indices -> world mm of the grid (``img.affine``).
        to_mni : (4, 4) array-like or transform, optional
            World mm of the grid -> MNI mm (``.matrix`` of a transform is used). Identity when
            omitted, i.e. the grid is already in MNI space.

        Returns
        -------
        dict of str to list of ndarray of bool
            Keys ``"seeds"``, ``"waypoints"``, ``"exclusions"``, ``"endpoints"``; each a list
            of boolean masks of ``shape`` (3D), in the order of the definition (waypoints from
            start to end). Roles without regions map to an empty list.

        Raises
        ------
        InputError
            If ``shape``, ``affine`` or ``to_mni`` is malformed.
        """
        dims = _shape(shape)
        vox_to_mni = _matrix(affine, "affine")
        if to_mni is not None:
            vox_to_mni = _matrix(to_mni, "to_mni") @ vox_to_mni
        if abs(np.linalg.det(vox_to_mni[:3, :3])) < 1e-12:
            raise InputError(
                "affine (composed with to_mni) is singular: voxel axes must span 3D space; "
                "check the image header and the transform."
            )
        mni_to_vox = np.linalg.inv(vox_to_mni)
        regions = [(role, r) for role in ROLES for r in getattr(self, role)]
        flat = [_rasterise(r, dims, vox_to_mni, mni_to_vox) for _, r in regions]
        result: dict[str, list[np.ndarray]] = {role: [] for role in ROLES}
        for mask, (role, _) in zip(flat, regions, strict=True):
            result[role].append(mask)
        return result

    def coverage(
        self, shape: Any, affine: Any, to_mni: Any = None, *, spacing_mm: float = 1.0
    ) -> pd.DataFrame:
        """How much of each waypoint lies inside a grid's field of view.

        A diffusion slab often images part of the brain only (e.g. 32 slices of 2 mm): a
        waypoint beyond its edges cannot be crossed by any streamline, and the tract must be
        reported as "outside the field of view", not as "not found". Each waypoint is sampled
        on a regular MNI grid (``spacing_mm``); a sample is imaged when it maps (through
        ``to_mni`` and ``affine``) into the voxel grid, within half a voxel of its edge.

        Parameters
        ----------
        shape, affine, to_mni
            As in :meth:`masks`.
        spacing_mm : float
            Spacing of the MNI sample points (mm).

        Returns
        -------
        pandas.DataFrame
            One row per waypoint, in order: ``order``, ``label``, ``fov_fraction`` (share of
            the region's volume inside the grid, 0-1), ``imaged_z_min_mm`` and
            ``imaged_z_max_mm`` (the MNI z range the grid images on the vertical line through
            the region's centre; NaN when that line misses the grid).
        """
        dims = np.asarray(_shape(shape))
        vox_to_mni = _matrix(affine, "affine")
        if to_mni is not None:
            vox_to_mni = _matrix(to_mni, "to_mni") @ vox_to_mni
        mni_to_vox = np.linalg.inv(vox_to_mni)
        step = float(spacing_mm)
        if not np.isfinite(step) or step <= 0:
            raise InputError(f"spacing_mm must be a positive number of mm, got {spacing_mm!r}.")

        def imaged(points: np.ndarray) -> np.ndarray:
            ijk = points @ mni_to_vox[:3, :3].T + mni_to_vox[:3, 3]
            return np.all((ijk >= -0.5) & (ijk < dims - 0.5), axis=1)

        rows = []
        for order, region in enumerate(self.waypoints):
            low, high = region.bounds_mm()
            axes = [np.arange(a + step / 2, b, step) if b - a > step else np.array([(a + b) / 2])
                    for a, b in zip(low, high, strict=True)]
            grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
            grid = grid[region.contains(grid)]
            fraction = float(imaged(grid).mean()) if grid.size else 0.0
            centre = (np.asarray(low) + np.asarray(high)) / 2
            z = np.arange(-90.0, 110.0, step / 2)  # beyond the MNI152 brain's z extent
            line = np.column_stack([np.full_like(z, centre[0]), np.full_like(z, centre[1]), z])
            seen = z[imaged(line)]
            rows.append({
                "order": order,
                "label": region.label,
                "fov_fraction": fraction,
                "imaged_z_min_mm": float(seen.min()) if seen.size else np.nan,
                "imaged_z_max_mm": float(seen.max()) if seen.size else np.nan,
            })
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """The ROIs as a tidy table: one row per region (or part of a union).

        Returns
        -------
        pandas.DataFrame
            Columns ``tract``, ``role``, ``order`` (0-based within the role), ``label``,
            ``shape`` (``"sphere"`` or ``"box"``), ``x_mm``, ``y_mm``, ``z_mm`` (sphere centre
            or box centre), ``radius_mm`` (NaN for boxes), ``min_mm`` and ``max_mm`` (box
            corners as tuples; None for spheres).
        """
        rows = []
        for role in ROLES:
            for order, region in enumerate(getattr(self, role)):
                parts = region.parts if isinstance(region, Union) else (region,)
                for part in parts:
                    sphere = isinstance(part, Sphere)
                    centre = (
                        part.center_mm
                        if sphere
                        else tuple(
                            (a + b) / 2 for a, b in zip(part.min_mm, part.max_mm, strict=True)
                        )
                    )
                    rows.append(
                        {
                            "tract": self.name,
                            "role": role,
                            "order": order,
                            "label": part.label or region.label,
                            "shape": "sphere" if sphere else "box",
                            "x_mm": centre[0],
                            "y_mm": centre[1],
                            "z_mm": centre[2],
                            "radius_mm": part.radius_mm if sphere else np.nan,
                            "min_mm": None if sphere else part.min_mm,
                            "max_mm": None if sphere else part.max_mm,
                        }
                    )
        return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Anatomy. Right-hemisphere shapes are written out; left ones are their mirror images.
# --------------------------------------------------------------------------------------------

_WAKANA = (
    "Wakana S, et al. (2007). Reproducibility of quantitative tractography methods applied "
    "to cerebral white matter. NeuroImage 36:630-644."
)
_MORI = (
    "Mori S, Wakana S, Nagae-Poetscher LM, van Zijl PCM (2005). MRI Atlas of Human White "
    "Matter. Elsevier."
)
_CATANI = (
    "Catani M, Thiebaut de Schotten M (2008). A diffusion tensor imaging tractography atlas "
    "for virtual in vivo dissections. Cortex 44:1105-1132."
)
_YEATMAN = (
    "Yeatman JD, et al. (2012). Tract profiles of white matter properties: automating "
    "fiber-tract quantification. PLoS One 7:e49790."
)
_HOLODNY = (
    "Holodny AI, et al. (2005). Diffusion tensor tractography of the motor white matter "
    "tracts in man. Ann N Y Acad Sci 1064:88-97."
)
_CAFFARRA = (
    "Caffarra S, et al. (2021). Development of the visual white matter pathways mediates "
    "development of electrophysiological responses in visual cortex. Hum Brain Mapp "
    "42:5785-5797."
)
_BURGEL = (
    "Bürgel U, et al. (2006). White matter fiber tracts of the human brain: "
    "three-dimensional mapping at microscopic resolution, topography and intersubject "
    "variability. NeuroImage 29:1092-1105."
)
_HOFER = (
    "Hofer S, Frahm J (2006). Topography of the human corpus callosum revisited. "
    "NeuroImage 32:989-994."
)

# Whole-brain extent used for half-spaces written as boxes (beyond any MNI152 brain voxel).
_FAR = 150.0

# ---- Corticospinal tract (right) ----------------------------------------------------------
# Crus cerebri (cerebral peduncle) in the upper midbrain, where it leaves the internal capsule
# (the inferior JHU CST ROI of Wakana 2007 sits in the peduncle/pons; Mori 2005 atlas, midbrain
# plates): the descending fibres lie in the ventrolateral midbrain ~15-20 mm off the midline,
# 8-15 mm below the AC-PC plane. The centre sits at the top of that range, where a 7 mm sphere
# stays mostly in white matter of the ICBM 2009 template (lower, it takes in substantia nigra
# and the interpeduncular cistern).
_CST_PEDUNCLE_R = Sphere((16.0, -18.0, -10.0), 7.0, "cerebral peduncle right")
# PLIC between thalamus and lentiform nucleus, 2-10 mm above the AC-PC plane; the CST runs in
# its posterior half (Holodny 2005; Mori 2005 atlas, axial levels +4 to +12 mm).
_CST_PLIC_R = Sphere((23.0, -15.0, 8.0), 7.0, "posterior limb of internal capsule right")
# Dorsal precentral gyrus (M1, leg-to-hand territory) with its subjacent white matter, between
# the precentral sulcus (y ~ -5 mm) and the central sulcus (y ~ -30 mm) at z 45-68 mm (Mori
# 2005 surface plates; the superior JHU CST ROI of Wakana 2007 lies at this level).
_CST_PRECENTRAL_R = Box((12.0, -30.0, 45.0), (45.0, -6.0, 68.0), "precentral gyrus right")
# Midline above the pontomedullary junction: CST fibres decussate only in the lower medulla,
# so anything crossing x = 0 higher up is commissural (callosal) or transverse pontine.
_CST_MIDLINE = Box((-3.0, -_FAR, -45.0), (3.0, _FAR, _FAR), "midline above the medulla")
# Prefrontal lobe and the anterior limb of the internal capsule (frontopontine and anterior
# thalamic radiation fibres, which share the peduncle with the CST).
_CST_FRONTAL = Box((-_FAR, 15.0, -_FAR), (_FAR, _FAR, _FAR), "prefrontal lobe (y > 15 mm)")
_CST_ALIC_R = Box((8.0, 2.0, -4.0), (24.0, 15.0, 16.0), "anterior limb of internal capsule right")
# Parietal and occipital lobes and the cerebellum: parieto-/occipito-pontine and cerebellar
# streamlines, which also cross the peduncle.
_CST_POSTERIOR = Box(
    (-_FAR, -_FAR, -_FAR), (_FAR, -50.0, _FAR), "parieto-occipital lobes and cerebellum"
)

# ---- Optic radiation (right) --------------------------------------------------------------
# LGN: ventrolateral posterior thalamus, lateral to the cerebral peduncle, just above the
# hippocampal fissure (Bürgel 2006 histological maps; fMRI localisations agree within ~3 mm).
_OR_LGN_R = Sphere((22.0, -26.0, -5.0), 7.0, "lateral geniculate nucleus right")
# Optic radiation in the sagittal stratum lateral to the atrium/occipital horn (Bürgel 2006;
# Catani 2008): a coronal slab 6 mm thick at y = -45 mm.
_OR_STRATUM_R = Box((30.0, -48.0, -6.0), (42.0, -42.0, 12.0), "sagittal stratum right")
# Calcarine sulcus (V1) on the medial occipital surface, with the subjacent white matter into
# which the radiation fans out (Bürgel 2006; Catani 2008 occipital terminations).
_OR_CALCARINE_R = Sphere((13.0, -82.0, 4.0), 9.0, "calcarine cortex right")
# Exclusions after Caffarra et al. 2021 (pyAFQ OR definition): the midline (commissural
# fibres) and everything anterior to the LGN and Meyer's loop tip (y > 0: anterior commissure,
# uncinate and IFOF stems in the temporal stem). Added here: the parietal lobe above the
# radiation (thalamo-parietal fibres, SLF, cingulum) and the posterior fossa (cerebellum,
# brainstem, tectum).
_OR_MIDLINE = Box((-3.0, -_FAR, -_FAR), (3.0, _FAR, _FAR), "midline")
_OR_ANTERIOR = Box((-_FAR, 0.0, -_FAR), (_FAR, _FAR, _FAR), "anterior to y = 0 mm")
_OR_SUPERIOR = Box((-_FAR, -_FAR, 30.0), (_FAR, 0.0, _FAR), "parietal lobe (z > 30 mm)")
_OR_INFRATENTORIAL = Box(
    (-_FAR, -_FAR, -_FAR), (_FAR, -40.0, -22.0), "cerebellum (below the tentorium)"
)
_OR_BRAINSTEM = Box((-12.0, -45.0, -60.0), (12.0, -5.0, -10.0), "brainstem and tectum")

# ---- Corpus callosum -----------------------------------------------------------------------
# Midsagittal callosum (Wakana 2007 midsagittal ROI), 6 mm thick in x. Its anterior-posterior
# extent on the midsagittal plane of the ICBM 2009 template is y = -44 (splenium) to +34 mm
# (genu): 78 mm, the adult callosal length of 70-80 mm (Witelson 1989 Brain 112:799).
# Hofer & Frahm 2006 partition by fractions of that length: region I (anterior 1/6, prefrontal
# fibres) = genu, regions II-IV = body, region V (posterior 1/4, parietal/temporal/occipital
# fibres) = splenium; boundaries y = 34 - 78/6 = 21 and -44 + 78/4 = -24.5 mm, put at 20.5
# and -24.5 so that no 1 or 2 mm voxel centre sits on both sides. Within each part, boxes
# trace the callosal arch seen on the midsagittal plane of the ICBM 2009 template (Mori 2005
# plates) with ~2 mm margins: the genu's upper limb, rostrum and anterior bend; the body
# rising from z ~ 12 mm behind the genu to z ~ 20-30 mm; the splenium's thick posterior bulb
# at z ~ 5-25 mm. The lateral ventricles below the arch are left out.
_CC_GENU = Union(
    (
        Box((-3.0, 20.5, 9.0), (3.0, 23.5, 21.0), "genu upper limb"),
        Box((-3.0, 20.5, -5.0), (3.0, 23.5, 4.0), "rostrum"),
        Box((-3.0, 23.5, -5.0), (3.0, 36.0, 18.0), "genu bend"),
    ),
    "corpus callosum genu",
)
_CC_BODY = Union(
    (
        Box((-3.0, 8.0, 12.0), (3.0, 20.5, 27.0), "anterior body"),
        Box((-3.0, -24.5, 20.0), (3.0, 8.0, 31.0), "body"),
    ),
    "corpus callosum body",
)
_CC_SPLENIUM = Union(
    (
        Box((-3.0, -34.0, 15.0), (3.0, -24.5, 28.0), "isthmus-splenium"),
        Box((-3.0, -46.0, 5.0), (3.0, -34.0, 25.0), "splenium bulb"),
    ),
    "corpus callosum splenium",
)
# Callosal fibres fan out to the whole hemisphere; 16-22 mm off the midline they cross every
# sagittal plane above the basal ganglia (forceps minor, centrum semiovale, forceps major and
# tapetum), so the lateral waypoints are sagittal slabs (cf. Catani 2008 callosal dissection).
_CC_LATERAL_R = Box((16.0, -85.0, -5.0), (22.0, 50.0, 50.0), "right hemisphere sagittal slab")
# Below the callosum on the midline: anterior and posterior commissures, fornix columns,
# hypothalamus and third ventricle; and the posterior fossa (brainstem, cerebellum).
_CC_SUBCALLOSAL = Box((-3.0, -32.0, -40.0), (3.0, 16.0, 10.0), "midline below the callosum")
_CC_INFRATENTORIAL = Box(
    (-45.0, -_FAR, -_FAR), (45.0, -5.0, -20.0), "brainstem and cerebellum (z < -20 mm)"
)


# ---- Tracking policy per tract ----------------------------------------------------------
# The CST and the OR (without Meyer's loop, which these definitions do not trace) are single
# compact bundles that bend gradually: they are tracked from all the white matter around their
# waypoints (AFQ seeds the whole white matter, Yeatman 2012), with pyAFQ's default 30-degree
# limit per step, and cleaned of outlier streamlines by their Mahalanobis distance from the
# bundle core (AFQ's cleaning, Yeatman 2012; pyAFQ clean_bundle). The corpus callosum is not
# one core but a fan: its fibres leave the midline horizontally and arch up over the lateral
# ventricles into the centrum semiovale, a sharp turn, so it keeps the 45-degree limit and the
# seeds in its midsagittal waypoint, and is not cleaned by distance from a single core. On
# the default synthetic study (5 subjects) the OR's lowest Dice went from 0.53 (one setting
# for all tracts) to 0.64 and the largest tract FA error from 0.027 to 0.019; see
# benchmarks/bench_tract_session.py for the figures and their limits.
# Their waypoints are grown by 2 mm (one voxel of 2 mm data; nothing on a 2.5 mm grid) so that
# a course a voxel off the template's still counts. Measured (issue 17): on the real Philips
# DTI (2 mm) CST_R 71 -> 83 streamlines after cleaning; on the default synthetic study
# (2.5 mm) 3 mm would raise the OR's Dice from 0.72-0.83 to 0.85-0.89 but lower its worst
# profile r from 0.968 to 0.954 and raise its worst FA error from 0.019 to 0.0191, 4 mm to
# 0.932 and 0.021: the margin stays at one 2 mm voxel. The callosum is not grown: its
# lateral slabs are already generous and its midsagittal parts partition it along y.
# Compact bundles also take back the streamlines that miss one waypoint but run along the
# cleaned bundle's core (core_distance, see msimaging.dti.tracts.bundle): rim streamlines of
# a bundle whose end lies a few mm beyond a waypoint sphere (both phantoms' optic radiations
# end at the occipital pole, y = -92 to -94 mm, 10-12 mm from the calcarine sphere's centre).
# With the streamlines cut at the terminations (bundle(trim_at_terminations=True)), measured
# on the default study (5 subjects, benchmarks/bench_tract_session.py; tensor / CSD): tract
# rows meeting Dice >= 0.7, |FA error| <= 0.02, profile r >= 0.95 and >= 50 streamlines
# 21 -> 24 / 19 -> 24 of 25, fewest streamlines 51 -> 70 / 55 -> 73; SNR 15: rows with >= 50
# streamlines 24 -> 25 / 23 -> 24. On the second phantom every OR reaches Dice >= 0.79.
_COMPACT_BUNDLE = {"seeding": "wm", "seeds_per_voxel": 1, "max_angle_deg": 30.0, "clean": True,
                   "waypoint_margin_mm": 2.0, "core_distance": True}


def _cst(side: str) -> TractDefinition:
    peduncle, plic, precentral, alic = (
        _CST_PEDUNCLE_R,
        _CST_PLIC_R,
        _CST_PRECENTRAL_R,
        _CST_ALIC_R,
    )
    if side == "L":
        peduncle, plic, precentral, alic = (
            r.mirrored() for r in (peduncle, plic, precentral, alic)
        )
    hemisphere = "left" if side == "L" else "right"
    return TractDefinition(
        name=f"CST_{side}",
        description=(
            f"Corticospinal tract, {hemisphere}: from the cerebral peduncle through the "
            "posterior limb of the internal capsule to the dorsal precentral gyrus (JHU "
            "protocol, Wakana 2007). Midline, prefrontal/anterior-capsular and "
            "parieto-occipital/cerebellar streamlines are excluded."
        ),
        references=(_WAKANA, _MORI, _YEATMAN, _HOLODNY),
        waypoints=(peduncle, plic, precentral),
        seeds=(peduncle, plic, precentral),
        exclusions=(_CST_MIDLINE, _CST_FRONTAL, alic, _CST_POSTERIOR),
        endpoints=(precentral,),
        position_axis="inferior -> superior (cerebral peduncle -> PLIC -> precentral gyrus)",
        tracking=_COMPACT_BUNDLE,
    )


def _optic_radiation(side: str) -> TractDefinition:
    lgn, stratum, calcarine = _OR_LGN_R, _OR_STRATUM_R, _OR_CALCARINE_R
    if side == "L":
        lgn, stratum, calcarine = (r.mirrored() for r in (lgn, stratum, calcarine))
    hemisphere = "left" if side == "L" else "right"
    return TractDefinition(
        name=f"OR_{side}",
        description=(
            f"Optic radiation, {hemisphere}: from the lateral geniculate nucleus through the "
            "sagittal stratum lateral to the atrium to the calcarine cortex (V1), with the "
            "exclusions of Caffarra et al. 2021 (midline, anterior temporal/frontal lobe) "
            "plus the parietal lobe and the posterior fossa."
        ),
        references=(_CAFFARRA, _BURGEL, _CATANI, _YEATMAN),
        waypoints=(lgn, stratum, calcarine),
        seeds=(lgn, stratum, calcarine),
        exclusions=(
            _OR_MIDLINE,
            _OR_ANTERIOR,
            _OR_SUPERIOR,
            _OR_INFRATENTORIAL,
            _OR_BRAINSTEM,
        ),
        endpoints=(lgn, calcarine),
        position_axis="anterior -> posterior (LGN -> sagittal stratum -> calcarine cortex)",
        tracking=_COMPACT_BUNDLE,
    )


def _callosum(name: str, midsagittal: Region, part: str) -> TractDefinition:
    left = _CC_LATERAL_R.mirrored()
    return TractDefinition(
        name=name,
        description=(
            f"Corpus callosum{part}: from the left hemisphere through the midsagittal "
            "callosum to the right hemisphere (Wakana 2007 midsagittal ROI; parts after Hofer "
            "& Frahm 2006: genu = anterior sixth, splenium = posterior quarter). The "
            "subcallosal midline (anterior/posterior commissures, fornix) and the posterior "
            "fossa are excluded."
        ),
        references=(_WAKANA, _HOFER, _MORI, _CATANI),
        waypoints=(left, midsagittal, _CC_LATERAL_R),
        seeds=(midsagittal,),
        exclusions=(_CC_SUBCALLOSAL, _CC_INFRATENTORIAL),
        endpoints=(),
        position_axis="left -> right (left hemisphere -> midsagittal callosum -> right)",
    )


def _build() -> dict[str, TractDefinition]:
    whole = Union(
        _CC_GENU.parts + _CC_BODY.parts + _CC_SPLENIUM.parts, "corpus callosum midsagittal"
    )
    tracts = [
        _cst("L"),
        _cst("R"),
        _optic_radiation("L"),
        _optic_radiation("R"),
        _callosum("CC", whole, ""),
        _callosum("CC_genu", _CC_GENU, " (genu)"),
        _callosum("CC_body", _CC_BODY, " (body)"),
        _callosum("CC_splenium", _CC_SPLENIUM, " (splenium)"),
    ]
    return {t.name: t for t in tracts}


#: Read-only mapping of tract name -> :class:`TractDefinition`.
TRACTS: Mapping[str, TractDefinition] = MappingProxyType(_build())

#: Names of the shipped tracts, in a stable order.
TRACT_NAMES: tuple[str, ...] = tuple(TRACTS)


def tract_definitions(names: str | Iterable[str] | None = None) -> list[TractDefinition]:
    """Shipped tract definitions by name.

    Parameters
    ----------
    names : str or iterable of str, optional
        Names from :data:`TRACT_NAMES` (``"CST_L"``, ``"CST_R"``, ``"OR_L"``, ``"OR_R"``,
        ``"CC"``, ``"CC_genu"``, ``"CC_body"``, ``"CC_splenium"``). All of them when omitted.

    Returns
    -------
    list of TractDefinition
        In the order asked for.

    Raises
    ------
    InputError
        If a name is unknown.
    """
    if names is None:
        return list(TRACTS.values())
    wanted = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in TRACTS]
    if unknown:
        raise InputError(
            f"names: unknown tract(s) {unknown}; choose from {list(TRACT_NAMES)} "
            "(names are case-sensitive)."
        )
    return [TRACTS[n] for n in wanted]
