"""Synthetic anatomy: tissue labels derived from the MNI ICBM152 2009a templates in nilearn.

The templates ship inside nilearn's package data (T1, GM and WM maps at 1 mm, values 0–255),
so nothing is downloaded. From them we derive, on a template grid of ``template_mm`` voxels:

- tissue probabilities (GM, WM and CSF = 1 − GM − WM inside the intracranial mask);
- hard labels (:data:`LABELS`): CSF, cortical GM, cerebral WM, deep GM, lateral ventricles,
  brainstem and cerebellum.

The deep-GM, ventricle and infratentorial rules are coarse approximations of MNI anatomy
(boxes and ellipsoids at published MNI locations), good enough for a synthetic study whose
ground truth is always computed from the rasterised labels, never from these rules.

A subject lives in its own native space: :class:`SubjectSpace` maps MNI to native world
coordinates with a rotation, an anisotropic scaling and a translation, and images are sampled
on axis-aligned native grids through its inverse.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from msimaging.registration import mni_template

__all__ = [
    "DSEG_LABELS",
    "LABELS",
    "SubjectSpace",
    "TemplateAnatomy",
    "random_subject_space",
    "template_anatomy",
]

#: Tissue labels of the synthetic anatomy (also the ``dseg`` labels, with 8 = WM lesion).
LABELS: dict[int, str] = {
    0: "background",
    1: "CSF",
    2: "cortical GM",
    3: "cerebral WM",
    4: "deep GM",
    5: "lateral ventricles",
    6: "brainstem",
    7: "cerebellum",
}
DSEG_LABELS: dict[int, str] = {**LABELS, 8: "WM lesion"}

CSF, CORTICAL_GM, CEREBRAL_WM, DEEP_GM, VENTRICLES, BRAINSTEM, CEREBELLUM, LESION = range(1, 9)

# Deep GM nuclei (left hemisphere centres, MNI mm; mirrored for the right) and radii in mm,
# approximations from the Harvard-Oxford subcortical atlas centroids.
_DEEP_GM = {
    "caudate": ((-13.0, 12.0, 10.0), (5.0, 14.0, 10.0)),
    "putamen": ((-25.0, 2.0, 1.0), (6.0, 15.0, 10.0)),
    "pallidum": ((-19.0, -3.0, 0.0), (4.0, 7.0, 6.0)),
    "thalamus": ((-11.0, -18.0, 7.0), (8.0, 14.0, 9.0)),
}


@dataclass(frozen=True)
class TemplateAnatomy:
    """Labels and tissue maps on an MNI template grid.

    Attributes
    ----------
    labels : ndarray of int8
        :data:`LABELS` codes.
    gm, wm, csf : ndarray of float32
        Tissue probabilities (0–1), summing to 1 inside the intracranial mask.
    t1 : ndarray of float32
        ICBM152 T1 intensity (0–255).
    affine : ndarray (4, 4)
        Voxel to MNI mm.
    voxel_mm : float
    """

    labels: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    t1: np.ndarray
    affine: np.ndarray
    voxel_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.labels.shape

    def mni_coordinates(self) -> np.ndarray:
        """MNI mm coordinates of every voxel, shape (*shape, 3)."""
        ijk = np.indices(self.shape, dtype=np.float64).reshape(3, -1)
        xyz = self.affine[:3, :3] @ ijk + self.affine[:3, 3:4]
        return xyz.T.reshape(*self.shape, 3)


@functools.lru_cache(maxsize=4)
def template_anatomy(template_mm: int = 2) -> TemplateAnatomy:
    """Derive the labelled template anatomy on a ``template_mm`` MNI grid (cached).

    Parameters
    ----------
    template_mm : int
        Voxel size of the template grid in mm (an integer: the 1 mm templates are averaged in
        blocks).
    """
    factor = int(template_mm)
    if factor < 1 or factor != template_mm:
        raise ValueError(f"template_mm must be a positive integer, got {template_mm!r}")
    # nilearn's 1 mm maps, block-averaged (GM/WM as probabilities 0-1).
    maps = {kind: np.asarray(mni_template(kind, factor).dataobj) for kind in ("gm", "wm")}
    t1_img = mni_template("t1", factor)
    t1 = np.asarray(t1_img.dataobj)
    affine = t1_img.affine.copy()

    gm, wm = maps["gm"], maps["wm"]
    parenchyma = gm + wm
    # Intracranial: the closed, hole-filled parenchyma (brings in ventricles and sulcal CSF).
    closing = max(1, round(6 / factor))
    intracranial = ndimage.binary_closing(parenchyma > 0.2, iterations=closing)
    intracranial = ndimage.binary_fill_holes(intracranial)
    scale = np.maximum(parenchyma, 1.0)
    gm, wm = gm / scale, wm / scale
    csf = np.where(intracranial, 1.0 - gm - wm, 0.0).astype(np.float32)
    gm = np.where(intracranial, gm, 0.0).astype(np.float32)
    wm = np.where(intracranial, wm, 0.0).astype(np.float32)

    xyz = np.moveaxis(
        (affine[:3, :3] @ np.indices(gm.shape).reshape(3, -1) + affine[:3, 3:4]).reshape(
            3, *gm.shape
        ),
        0,
        -1,
    )
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]

    labels = np.zeros(gm.shape, np.int8)
    tissue = np.argmax(np.stack([csf, gm, wm]), axis=0)
    labels[intracranial & (tissue == 0)] = CSF
    labels[intracranial & (tissue == 1)] = CORTICAL_GM
    labels[intracranial & (tissue == 2)] = CEREBRAL_WM

    # Lateral ventricles: CSF deep inside the brain, in the box the ventricles occupy.
    depth_mm = ndimage.distance_transform_edt(intracranial) * factor
    ventricle_box = (np.abs(x) < 30) & (y > -48) & (y < 30) & (z > -4) & (z < 32)
    ventricles = (labels == CSF) & ventricle_box & (depth_mm > 18) & (np.abs(x) > 1.5)
    labels[ventricles] = VENTRICLES

    # Deep GM nuclei: ellipsoids over parenchyma.
    deep = np.zeros(gm.shape, bool)
    for (cx, cy, cz), (rx, ry, rz) in _DEEP_GM.values():
        for sign in (1.0, -1.0):
            deep |= (
                ((x - sign * cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2
            ) <= 1.0
    labels[deep & ((labels == CORTICAL_GM) | (labels == CEREBRAL_WM))] = DEEP_GM

    # Infratentorial: a brainstem box, and below a tentorium sloping up towards the back.
    tentorium_z = np.clip(-20.0 + 12.0 * (-40.0 - y) / 40.0, -20.0, -8.0)
    brainstem = (np.abs(x) < 13) & (y > -42) & (y < -12) & (z < -8)
    cerebellum = (y < -40) & (z < tentorium_z) & ~brainstem
    parenchymal = intracranial & (labels != CSF) & (labels != VENTRICLES)
    labels[parenchymal & cerebellum] = CEREBELLUM
    labels[parenchymal & brainstem] = BRAINSTEM

    return TemplateAnatomy(
        labels=labels,
        gm=gm,
        wm=wm,
        csf=csf,
        t1=t1.astype(np.float32),
        affine=affine,
        voxel_mm=float(factor),
    )


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class SubjectSpace:
    """A subject's native space: ``native_mm = rotation @ diag(scale) @ mni_mm + translation``.

    Attributes
    ----------
    rotation : ndarray (3, 3)
    scale : ndarray (3,)
        Head size relative to MNI along x, y, z.
    translation_mm : ndarray (3,)
    """

    rotation: np.ndarray
    scale: np.ndarray
    translation_mm: np.ndarray

    @property
    def mni_to_native(self) -> np.ndarray:
        """4x4 affine from MNI mm to native mm."""
        out = np.eye(4)
        out[:3, :3] = self.rotation @ np.diag(self.scale)
        out[:3, 3] = self.translation_mm
        return out

    def moved(self, rotation_deg: np.ndarray, translation_mm: np.ndarray) -> SubjectSpace:
        """The same head after a small rigid movement in the scanner (another visit)."""
        extra = _rotation(np.deg2rad(rotation_deg))
        return SubjectSpace(
            rotation=extra @ self.rotation,
            scale=self.scale,
            translation_mm=extra @ self.translation_mm + translation_mm,
        )

    def grid(self, anatomy: TemplateAnatomy, voxel_mm: float, margin_mm: float = 8.0):
        """An axis-aligned native grid (shape, affine) that holds the whole intracranial volume."""
        ijk = np.argwhere(anatomy.labels > 0)
        corners = np.array([ijk.min(0), ijk.max(0)], float)
        box = np.array(np.meshgrid(*corners.T, indexing="ij")).reshape(3, -1)
        mni = anatomy.affine[:3, :3] @ box + anatomy.affine[:3, 3:4]
        native = self.mni_to_native[:3, :3] @ mni + self.mni_to_native[:3, 3:4]
        lo = native.min(axis=1) - margin_mm
        hi = native.max(axis=1) + margin_mm
        shape = tuple(int(np.ceil(s)) for s in (hi - lo) / voxel_mm)
        affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
        affine[:3, 3] = lo
        return shape, affine

    def native_to_mni(self, native_mm: np.ndarray) -> np.ndarray:
        """MNI coordinates of native points, shape (..., 3)."""
        inverse = np.linalg.inv(self.mni_to_native)
        return native_mm @ inverse[:3, :3].T + inverse[:3, 3]

    def sample(
        self,
        anatomy: TemplateAnatomy,
        shape: tuple[int, int, int],
        affine: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Resample the template onto a native grid.

        Returns labels (nearest neighbour), gm/wm/csf/t1 (trilinear) and the MNI coordinate of
        every native voxel (``mni_mm``, shape (*shape, 3)).
        """
        ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
        native = (affine[:3, :3] @ ijk + affine[:3, 3:4]).T
        mni = self.native_to_mni(native)
        tpl_inv = np.linalg.inv(anatomy.affine)
        tpl_ijk = (mni @ tpl_inv[:3, :3].T + tpl_inv[:3, 3]).T
        out = {
            "labels": ndimage.map_coordinates(
                anatomy.labels, tpl_ijk, order=0, mode="constant", cval=0
            ).reshape(shape),
            "mni_mm": mni.reshape(*shape, 3),
        }
        for key in ("gm", "wm", "csf", "t1"):
            out[key] = (
                ndimage.map_coordinates(
                    getattr(anatomy, key), tpl_ijk, order=1, mode="constant", cval=0.0
                )
                .reshape(shape)
                .astype(np.float32)
            )
        return out


def random_subject_space(
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 6.0,
    max_translation_mm: float = 6.0,
    scale_range: tuple[float, float] = (0.93, 1.05),
) -> SubjectSpace:
    """Draw a subject's native space: random rigid position and mild anisotropic scaling."""
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    return SubjectSpace(
        rotation=_rotation(angles),
        scale=rng.uniform(*scale_range, 3),
        translation_mm=rng.uniform(-max_translation_mm, max_translation_mm, 3),
    )
