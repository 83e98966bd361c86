"""Pure-array simulator of diffusion-weighted MRI for the synthetic MS study.

The study generator gives, for every voxel of a subject's DWI grid, a tissue label, the
voxel's MNI coordinate (mm), a lesion flag and a hemisphere flag. This module turns those into
diffusion tensors, noise-free or Rician-noisy DWI signals and ground-truth tensor metrics:

1. :func:`gradient_scheme` — b-values (s/mm²) and unit gradient directions.
2. :data:`BUNDLES` and :func:`bundle_field` — white-matter bundles laid along their
   anatomical course in MNI space (corpus callosum, corticospinal tracts, optic radiations)
   and a smooth fibre-orientation field everywhere else.
3. :func:`tissue_tensors` — eigenvalues (mm²/s) and eigenvectors per voxel, with WM lesions
   and the planted longitudinal effect (radial diffusivity of left normal-appearing WM).
4. :func:`simulate_signal` and :func:`default_s0` — S = S0 exp(-b gᵀDg) with optional
   Rician noise.
5. :func:`tensor_metrics` and :func:`dwi_truth` — analytic FA, MD, AD, RD and region means
   for the ground truth.

Tissue label codes (shared with the study generator): 0 background, 1 CSF (extraventricular),
2 cortical GM, 3 cerebral WM, 4 deep GM, 5 lateral ventricles, 6 brainstem, 7 cerebellum.
Everything is vectorised over voxels (float64 internally) and chunked to bound memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType

import numpy as np

from msimaging.errors import InputError

__all__ = [
    "BUNDLES",
    "BUNDLE_CODES",
    "BUNDLE_PRIORITY",
    "CC_PARTS",
    "Bundle",
    "TissueDiffusivities",
    "bundle_field",
    "default_s0",
    "dwi_truth",
    "gradient_scheme",
    "simulate_signal",
    "tensor_metrics",
    "tissue_tensors",
]

# Tissue label codes (see the module docstring).
_BACKGROUND, _CSF, _CORTICAL_GM, _WM, _DEEP_GM, _VENTRICLES, _BRAINSTEM, _CEREBELLUM = range(8)
_N_LABELS = 8
_WM_LIKE = (_WM, _BRAINSTEM)

_CHUNK_ELEMENTS = 1_000_000  # points x segments per chunk in bundle_field (~24 MB per array)


# --------------------------------------------------------------------------------------------
# Gradient scheme
# --------------------------------------------------------------------------------------------
def gradient_scheme(
    n_b0: int = 6,
    n_directions: int = 30,
    bvals_s_mm2: Sequence[float] = (1000.0,),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Build a single- or multi-shell gradient scheme with interleaved b0 volumes.

    Directions of each shell are spread on the sphere by electrostatic repulsion of antipodal
    charge pairs (:func:`dipy.core.sphere.disperse_charges`) from a seeded random start, so the
    scheme is deterministic for a given ``seed``. b0 volumes are interleaved: the first volume
    is a b0 and the others are spread evenly through the acquisition.

    Parameters
    ----------
    n_b0 : int, default 6
        Number of b=0 volumes (at least 1).
    n_directions : int, default 30
        Number of gradient directions per shell (at least 6, enough for a tensor fit).
    bvals_s_mm2 : sequence of float, default (1000.0,)
        Non-zero b-value of each shell, in s/mm².
    seed : int, default 0
        Seed of the random start of the charge repulsion (each shell uses ``seed + shell``).

    Returns
    -------
    bvals : ndarray, shape (N,)
        b-values in s/mm², ``N = n_b0 + n_directions * len(bvals_s_mm2)``.
    bvecs : ndarray, shape (N, 3)
        Unit gradient directions; rows of b0 volumes are zero.

    Raises
    ------
    InputError
        If a count or b-value is invalid.
    """
    from dipy.core.sphere import HemiSphere, disperse_charges

    n_b0 = _check_int(n_b0, "n_b0", minimum=1)
    n_directions = _check_int(n_directions, "n_directions", minimum=6)
    shells = np.atleast_1d(np.asarray(bvals_s_mm2, dtype=np.float64))
    if shells.ndim != 1 or shells.size == 0 or not np.all(np.isfinite(shells) & (shells > 0)):
        raise InputError(
            f"bvals_s_mm2 must be a non-empty sequence of positive finite b-values in s/mm², "
            f"got {bvals_s_mm2!r}; pass e.g. (1000.0,) or (1000.0, 2000.0)."
        )

    dw_bvals, dw_bvecs = [], []
    for shell_index, b in enumerate(shells):
        rng = np.random.default_rng(seed + shell_index)
        start = rng.normal(size=(n_directions, 3))
        start /= np.linalg.norm(start, axis=1, keepdims=True)
        hemisphere, _ = disperse_charges(HemiSphere(xyz=start), 1000)
        vectors = hemisphere.vertices / np.linalg.norm(hemisphere.vertices, axis=1, keepdims=True)
        dw_bvecs.append(vectors)
        dw_bvals.append(np.full(n_directions, b))

    n_total = n_b0 + n_directions * shells.size
    is_b0 = np.zeros(n_total, dtype=bool)
    is_b0[np.floor(np.arange(n_b0) * n_total / n_b0).astype(int)] = True
    bvals = np.zeros(n_total)
    bvecs = np.zeros((n_total, 3))
    # Shells are interleaved too, so a truncated acquisition still samples every shell.
    order = np.argsort(np.tile(np.arange(n_directions), shells.size), kind="stable")
    bvals[~is_b0] = np.concatenate(dw_bvals)[order]
    bvecs[~is_b0] = np.concatenate(dw_bvecs)[order]
    return bvals, bvecs


# --------------------------------------------------------------------------------------------
# Bundles in MNI space
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    """A white-matter bundle: centre-line polylines in MNI space and a tube radius.

    Attributes
    ----------
    name : str
        Short bundle name ("CC", "CST_L", ...).
    code : int
        Code returned by :func:`bundle_field` (1 CC, 2 CST_L, 3 CST_R, 4 OR_L, 5 OR_R).
    polylines_mm : tuple of ndarray, each shape (k, 3)
        Centre lines in MNI mm (x right, y anterior, z superior), read-only. Projection tracts
        have a single polyline; the corpus callosum is a family of left-right polylines.
    radius_mm : float
        Radius of the tube around each polyline, in mm.
    """

    name: str
    code: int
    polylines_mm: tuple[np.ndarray, ...]
    radius_mm: float

    @property
    def polyline_mm(self) -> np.ndarray:
        """The principal centre line (the first polyline; for the CC the mid-body fibre)."""
        return self.polylines_mm[0]


def _frozen(points: Sequence[Sequence[float]], samples_per_mm: float = 0.5) -> np.ndarray:
    """A smooth centre line through the vertices (cubic spline over chord length, sampled
    every ~2 mm): real bundles bend gradually, and a tracker must be able to follow them."""
    from scipy.interpolate import make_interp_spline

    vertices = np.array(points, dtype=np.float64)
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(vertices, axis=0), axis=1))])
    degree = min(3, len(vertices) - 1)
    spline = make_interp_spline(chord, vertices, k=degree, bc_type=None)
    n = max(len(vertices), int(np.ceil(chord[-1] * samples_per_mm)) + 1)
    array = spline(np.linspace(0.0, chord[-1], n))
    array.setflags(write=False)
    return array


def _mirror(points: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[-x, y, z] for x, y, z in points]


# Corpus callosum: a family of left-right fibres, one per coronal position along the
# mid-sagittal arc of the callosum (approximate MNI152 values from published atlases, e.g. the
# JHU ICBM-DTI-81 labels): genu low and anterior (y ≈ +28, z ≈ 10), body highest over the
# lateral ventricles (z ≈ 22-24 around y ≈ 0), splenium low and posterior (y ≈ -38, z ≈ 12).
# Each fibre crosses the midline horizontally and rises as it fans out into the centrum
# semiovale, ending at x = ±40 mm. Adjacent fibres are 8 mm apart with a 5 mm tube radius, so
# the tubes overlap into one C-shaped (sagittal view) slab.
_CC_MIDLINE_YZ_MM = (
    (-4.0, 24.0),  # body (principal fibre, listed first)
    (28.0, 10.0),  # genu
    (20.0, 16.0),
    (12.0, 21.0),
    (4.0, 23.0),
    (-12.0, 24.0),
    (-20.0, 22.0),
    (-28.0, 18.0),
    (-36.0, 13.0),  # splenium
)
# Rise of each fibre (dz) with distance from the midline (x): fibres arch up and over the
# bodies of the lateral ventricles within ~18 mm of the midline, then run flat into the
# centrum semiovale (profile read off the WM of nilearn's ICBM152 2009a WM map).
_CC_LATERAL_PROFILE_MM = (
    (0.0, 0.0), (6.0, 3.0), (12.0, 9.0), (18.0, 14.0), (26.0, 17.0), (34.0, 18.0), (40.0, 18.0)
)


def _cc_fibre(y_mm: float, z_mm: float) -> list[list[float]]:
    half = [[x, y_mm, z_mm + dz] for x, dz in _CC_LATERAL_PROFILE_MM]
    return _mirror(half[:0:-1]) + half


# Corticospinal tract (left side, x < 0; mirrored for the right): approximate MNI152 course
# through pons/brainstem, cerebral peduncle, posterior limb of the internal capsule, corona
# radiata and precentral gyrus (hand/arm region), after published tractography atlases
# (e.g. Catani & Thiebaut de Schotten 2008; JHU white-matter atlas).
_CST_L_MM = (
    (-8.0, -25.0, -35.0),  # basis pontis / brainstem
    (-14.0, -18.0, -10.0),  # cerebral peduncle
    (-22.0, -12.0, 8.0),  # posterior limb of the internal capsule
    (-25.0, -15.0, 35.0),  # corona radiata
    (-35.0, -20.0, 60.0),  # precentral gyrus
)

# Optic radiation (left side; mirrored for the right): from the lateral geniculate nucleus
# laterally into the sagittal stratum, back lateral to the trigone and occipital horn of the
# lateral ventricle, and medially to the calcarine cortex at the occipital pole (course after
# Bürgel et al. 2006 and Caffarra et al. 2021). The intermediate vertices were traced through
# the white matter of nilearn's ICBM152 2009a WM probability map (WM > 0.95 at every vertex
# between the LGN and the pole), so the phantom bundle stays in WM; Meyer's loop (the
# anterior excursion into the temporal lobe) is left out.
_OR_L_MM = (
    (-22.0, -26.0, -5.0),  # lateral geniculate nucleus
    (-28.0, -30.0, -1.0),
    (-34.0, -35.0, 3.0),  # entering the sagittal stratum
    (-38.0, -42.0, 2.0),
    (-38.0, -50.0, 2.0),  # lateral to the trigone
    (-36.0, -58.0, 2.0),
    (-34.0, -68.0, 2.0),  # lateral to the occipital horn
    (-30.0, -78.0, 2.0),
    (-22.0, -86.0, 3.0),
    (-14.0, -92.0, 4.0),  # calcarine cortex, occipital pole
)

BUNDLES: Mapping[str, Bundle] = MappingProxyType(
    {
        "CC": Bundle("CC", 1, tuple(_frozen(_cc_fibre(y, z)) for y, z in _CC_MIDLINE_YZ_MM), 5.0),
        "CST_L": Bundle("CST_L", 2, (_frozen(_CST_L_MM),), 5.0),
        "CST_R": Bundle("CST_R", 3, (_frozen(_mirror(_CST_L_MM)),), 5.0),
        "OR_L": Bundle("OR_L", 4, (_frozen(_OR_L_MM),), 5.0),
        "OR_R": Bundle("OR_R", 5, (_frozen(_mirror(_OR_L_MM)),), 5.0),
    }
)
"""White-matter bundles in MNI152 space (mm), name -> :class:`Bundle`.

The centre lines are published-atlas-level *approximations* of each bundle's course (see the
comments in the source), good enough for a synthetic phantom, not an atlas.

- ``"CC"`` corpus callosum: left-right fibres crossing the midline at y = +28 (genu) to -36
  mm (splenium), z ≈ 10-24 mm, rising to x = ±40 mm; radius 5 mm.
- ``"CST_L"``/``"CST_R"`` corticospinal tracts: pons (±8, -25, -35) → cerebral peduncle
  (±14, -18, -10) → posterior limb of the internal capsule (±22, -12, 8) → corona radiata
  (±25, -15, 35) → precentral gyrus (±35, -20, 60); radius 5 mm.
- ``"OR_L"``/``"OR_R"`` optic radiations: lateral geniculate (±22, -26, -5) → sagittal
  stratum (±38, -42, 2) → lateral to the trigone and occipital horn (±34, -68, 2) →
  calcarine cortex (±14, -92, 4), traced through template WM (no Meyer's loop); radius 5 mm.
"""

BUNDLE_CODES: Mapping[str, int] = MappingProxyType({n: b.code for n, b in BUNDLES.items()})
"""Bundle name -> code of :func:`bundle_field` (0 means no bundle)."""

BUNDLE_PRIORITY: tuple[str, ...] = ("CST_L", "CST_R", "OR_L", "OR_R", "CC")
"""Order in which overlapping tubes are resolved in :func:`bundle_field` (first match wins).

Projection tracts come first so the corticospinal tracts stay continuous where the lateral
callosal fibres cross them in the corona radiata; the callosum keeps its midline."""

CC_PARTS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "genu": (15.0, np.inf),
        "body": (-25.0, 15.0),
        "splenium": (-np.inf, -25.0),
    }
)
"""Corpus-callosum sub-regions by MNI y (mm): ``(y_min, y_max)``, ``y_min < y <= y_max``."""


def bundle_field(
    mni_xyz_mm: np.ndarray, *, chunk_points: int | None = None, with_position: bool = False
) -> tuple[np.ndarray, ...]:
    """Bundle membership and fibre orientation at MNI coordinates.

    A point belongs to a bundle when its distance to one of the bundle's centre-line segments
    is at most the bundle's radius; where tubes overlap the first bundle in
    :data:`BUNDLE_PRIORITY` wins (CST_L, CST_R, OR_L, OR_R, then CC). Bundle points get the
    unit tangent of the nearest segment of that bundle. Every other point gets a smooth,
    deterministic orientation field (spherical angles varying as sines of the coordinates),
    so white matter outside the bundles is anisotropic with a slowly varying orientation.

    Parameters
    ----------
    mni_xyz_mm : array_like, shape (N, 3)
        MNI coordinates in mm.
    chunk_points : int, optional
        Points per chunk of the point-to-segment distances; by default chosen so a chunk holds
        about a million point-segment pairs.

    Returns
    -------
    bundle_code : ndarray of int8, shape (N,)
        0 none, 1 CC, 2 CST_L, 3 CST_R, 4 OR_L, 5 OR_R (see :data:`BUNDLE_CODES`).
    direction : ndarray of float64, shape (N, 3)
        Unit fibre direction in the MNI frame (the sign is arbitrary).
    position : ndarray of float64, shape (N,)
        Only with ``with_position=True``: relative arc length (0–1) of the closest point of
        the bundle's centre line, from its first to its last vertex; 0 outside bundles.

    Raises
    ------
    InputError
        If ``mni_xyz_mm`` is not a finite (N, 3) array.
    """
    points = _as_float_array(mni_xyz_mm, "mni_xyz_mm", shape=(None, 3))
    starts, ends, owners = _segments()
    n_points = points.shape[0]
    if chunk_points is None:
        chunk_points = max(1, _CHUNK_ELEMENTS // starts.shape[0])
    chunk_points = _check_int(chunk_points, "chunk_points", minimum=1)

    codes = np.zeros(n_points, dtype=np.int8)
    position = np.zeros(n_points)
    direction = _smooth_orientation(points)
    axes = ends - starts
    tangents = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    axis_length2 = np.einsum("sk,sk->s", axes, axes)
    arc_start, line_length = _segment_arcs()

    for first in range(0, n_points, chunk_points):
        chunk = points[first : first + chunk_points]
        offsets = chunk[:, None, :] - starts[None, :, :]  # (c, S, 3)
        t = np.clip(np.einsum("csk,sk->cs", offsets, axes) / axis_length2, 0.0, 1.0)
        offsets -= t[..., None] * axes  # now the vector from the closest centre-line point
        distance2 = np.einsum("csk,csk->cs", offsets, offsets)
        assigned = np.zeros(chunk.shape[0], dtype=bool)
        for name in BUNDLE_PRIORITY:
            bundle = BUNDLES[name]
            segment_index = np.flatnonzero(owners == bundle.code)
            own = distance2[:, segment_index]
            nearest = np.argmin(own, axis=1)
            inside = (own[np.arange(chunk.shape[0]), nearest] <= bundle.radius_mm**2) & ~assigned
            rows = first + np.flatnonzero(inside)
            codes[rows] = bundle.code
            segment = segment_index[nearest[inside]]
            direction[rows] = tangents[segment]
            along = t[np.flatnonzero(inside), segment] * np.sqrt(axis_length2[segment])
            position[rows] = (arc_start[segment] + along) / line_length[segment]
            assigned |= inside
    if with_position:
        return codes, direction, position
    return codes, direction


def _segment_arcs() -> tuple[np.ndarray, np.ndarray]:
    """Arc length (mm) at the start of each segment and the length of its polyline."""
    arc_start, line_length = [], []
    for bundle in BUNDLES.values():
        for line in bundle.polylines_mm:
            lengths = np.linalg.norm(np.diff(line, axis=0), axis=1)
            arc_start.append(np.concatenate([[0.0], np.cumsum(lengths)[:-1]]))
            line_length.append(np.full(lengths.size, lengths.sum()))
    return np.concatenate(arc_start), np.concatenate(line_length)


def _segments() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All centre-line segments: starts (S, 3), ends (S, 3), owning bundle code (S,)."""
    starts, ends, owners = [], [], []
    for bundle in BUNDLES.values():
        for line in bundle.polylines_mm:
            starts.append(line[:-1])
            ends.append(line[1:])
            owners.append(np.full(line.shape[0] - 1, bundle.code, dtype=np.int8))
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(owners)


def _smooth_orientation(points: np.ndarray) -> np.ndarray:
    """Smooth unit orientation field (wavelengths 60-110 mm) for WM outside the bundles."""
    x, y, z = points.T
    azimuth = np.pi * (x / 60.0) + 0.8 * np.sin(2.0 * np.pi * y / 90.0)
    polar = np.pi / 2.0 + (np.pi / 3.0) * np.sin(2.0 * np.pi * (z / 110.0 + x / 170.0))
    return np.stack(
        [np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)],
        axis=1,
    )


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TissueDiffusivities:
    """Diffusivities of each simulated tissue, in mm²/s (factors are dimensionless).

    Defaults are literature-plausible adult values at b ≈ 1000 s/mm² (e.g. Pierpaoli et al.
    1996; Mori & Zhang 2006; Werring et al. 1999 for MS lesions):

    ===========================  ==========  ==========  ========  ============
    tissue                       AD (mm²/s)  RD (mm²/s)  FA        MD (mm²/s)
    ===========================  ==========  ==========  ========  ============
    bundle WM (CC, CST, OR)      1.70e-3     0.30e-3     0.799     0.767e-3
    other cerebral WM, brainstem 1.40e-3     0.45e-3     0.618     0.767e-3
    cortical GM                  0.80e-3     0.80e-3     0         0.80e-3
    deep GM, cerebellum          0.75e-3     0.75e-3     0         0.75e-3
    CSF, lateral ventricles      3.0e-3      3.0e-3      0         3.0e-3
    lesion in bundle WM          1.955e-3    0.54e-3     0.674     1.012e-3
    lesion in other WM           1.61e-3     0.81e-3     0.405     1.077e-3
    ===========================  ==========  ==========  ========  ============

    Attributes
    ----------
    bundle_wm_ad_mm2_s, bundle_wm_rd_mm2_s : float
        Axial and radial diffusivity of WM inside a bundle tube.
    wm_ad_mm2_s, wm_rd_mm2_s : float
        Axial and radial diffusivity of other cerebral WM and of the brainstem.
    cortical_gm_md_mm2_s, deep_gm_md_mm2_s, cerebellum_md_mm2_s, csf_md_mm2_s : float
        Isotropic diffusivities of cortical GM, deep GM, cerebellum and CSF/ventricles.
    lesion_ad_factor, lesion_rd_factor : float
        Multipliers of the local normal-appearing WM AD and RD inside lesions.
    along_tract_rd_amplitude, along_tract_peak, along_tract_width : float
        Bundle RD varies along each bundle (when positions are given to
        :func:`tissue_tensors`): multiplied by ``1 + amplitude * exp(-((s - peak)/width)²)``
        at relative position ``s`` (0 at the bundle's start, 1 at its end: brainstem -> cortex
        for the CST, LGN -> calcarine for the OR, left -> right for the CC). With the
        defaults FA falls from 0.80 at the ends to 0.70 at 35% of the length.
    """

    bundle_wm_ad_mm2_s: float = 1.7e-3
    bundle_wm_rd_mm2_s: float = 0.30e-3
    wm_ad_mm2_s: float = 1.4e-3
    wm_rd_mm2_s: float = 0.45e-3
    cortical_gm_md_mm2_s: float = 0.80e-3
    deep_gm_md_mm2_s: float = 0.75e-3
    cerebellum_md_mm2_s: float = 0.75e-3
    csf_md_mm2_s: float = 3.0e-3
    lesion_ad_factor: float = 1.15
    lesion_rd_factor: float = 1.8
    along_tract_rd_amplitude: float = 0.5
    along_tract_peak: float = 0.35
    along_tract_width: float = 0.2

    def along_tract_rd_factor(self, position: np.ndarray) -> np.ndarray:
        """RD multiplier of bundle WM at a relative position along the bundle (0 = start).

        ``1 + amplitude * exp(-((position - peak) / width)²)``: an asymmetric bump, so the
        along-tract FA profile has a shape (and an orientation) that a profile method must
        reproduce.
        """
        bump = np.exp(-(((position - self.along_tract_peak) / self.along_tract_width) ** 2))
        return 1.0 + self.along_tract_rd_amplitude * bump

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
                raise InputError(
                    f"TissueDiffusivities.{field.name} must be a positive finite number, "
                    f"got {value!r}; diffusivities are in mm²/s (e.g. 1.0e-3)."
                )


def tissue_tensors(
    tissue: np.ndarray,
    bundle_code: np.ndarray,
    direction_mni: np.ndarray,
    lesion: np.ndarray,
    left: np.ndarray,
    *,
    left_nawm_rd_scale: float = 1.0,
    rotation: np.ndarray | None = None,
    params: TissueDiffusivities | None = None,
    bundle_position: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Diffusion tensors (eigen-decomposed) per voxel, in the subject's native frame.

    WM-like voxels (cerebral WM, label 3, and brainstem, label 6) are cylindrically symmetric
    tensors along ``direction_mni``: bundle values inside a bundle tube (``bundle_code > 0``),
    the other-WM values elsewhere. Lesion voxels in WM-like tissue get AD and RD multiplied by
    ``params.lesion_ad_factor`` and ``params.lesion_rd_factor`` (their local normal-appearing
    values); lesion flags on other tissues are ignored. GM, deep GM, cerebellum and CSF are
    isotropic; background is all zero.

    The planted longitudinal effect multiplies RD of every *non-lesion cerebral WM* voxel
    (label 3, bundles included, brainstem excluded) of the *left* hemisphere by
    ``left_nawm_rd_scale``; the right hemisphere, lesions and AD are unchanged.

    Parameters
    ----------
    tissue : array_like of int, shape (N,)
        Tissue labels 0-7 (see the module docstring).
    bundle_code : array_like of int, shape (N,)
        Bundle codes from :func:`bundle_field` (0 none).
    direction_mni : array_like, shape (N, 3)
        Fibre direction in the MNI frame (normalised here; used for WM-like voxels only).
    lesion : array_like of bool, shape (N,)
        Lesion flag.
    left : array_like of bool, shape (N,)
        Left-hemisphere flag.
    left_nawm_rd_scale : float, default 1.0
        RD multiplier of left normal-appearing cerebral WM (e.g. 0.96 at M3, 0.92 at M6).
    rotation : array_like, shape (3, 3), optional
        Orthogonal matrix mapping MNI-frame directions to the native frame
        (``native = rotation @ mni``); identity by default.
    params : TissueDiffusivities, optional
        Tissue diffusivities; :class:`TissueDiffusivities` defaults if omitted.
    bundle_position : array_like, shape (N,), optional
        Relative position along the bundle (0–1, from :func:`bundle_field` with
        ``with_position=True``); bundle RD then varies along the bundle
        (:meth:`TissueDiffusivities.along_tract_rd_factor`). Without it bundle RD is constant.

    Returns
    -------
    evals : ndarray, shape (N, 3)
        Eigenvalues in mm²/s, sorted in descending order.
    evecs : ndarray, shape (N, 3, 3)
        Eigenvectors in the native frame; ``evecs[i, :, k]`` belongs to ``evals[i, k]``.

    Raises
    ------
    InputError
        If shapes disagree, a label is unknown, the scale is not positive or the rotation
        is not orthogonal.
    """
    params = TissueDiffusivities() if params is None else params
    if not isinstance(params, TissueDiffusivities):
        raise InputError(
            f"params must be a TissueDiffusivities instance, got {type(params).__name__}; "
            "build one with TissueDiffusivities(...) or pass None for the defaults."
        )
    tissue = _as_labels(tissue, "tissue")
    n = tissue.shape[0]
    bundle_code = _as_int_array(bundle_code, "bundle_code", n)
    direction = _as_float_array(direction_mni, "direction_mni", shape=(n, 3))
    lesion = _as_bool_array(lesion, "lesion", n)
    left = _as_bool_array(left, "left", n)
    scale = float(left_nawm_rd_scale)
    if not (np.isfinite(scale) and scale > 0):
        raise InputError(
            f"left_nawm_rd_scale must be a positive finite factor, got {left_nawm_rd_scale!r}; "
            "use 1.0 for no effect (e.g. 0.92 for an 8% decrease)."
        )
    rotation = _check_rotation(rotation)

    # Axial and radial diffusivity per voxel; isotropic tissues have AD == RD.
    ad = np.zeros(n)
    rd = np.zeros(n)
    isotropic = {
        _CSF: params.csf_md_mm2_s,
        _VENTRICLES: params.csf_md_mm2_s,
        _CORTICAL_GM: params.cortical_gm_md_mm2_s,
        _DEEP_GM: params.deep_gm_md_mm2_s,
        _CEREBELLUM: params.cerebellum_md_mm2_s,
    }
    for label, value in isotropic.items():
        ad[tissue == label] = value
        rd[tissue == label] = value
    wm_like = np.isin(tissue, _WM_LIKE)
    in_bundle = wm_like & (bundle_code > 0)
    ad[wm_like] = params.wm_ad_mm2_s
    rd[wm_like] = params.wm_rd_mm2_s
    ad[in_bundle] = params.bundle_wm_ad_mm2_s
    rd[in_bundle] = params.bundle_wm_rd_mm2_s
    if bundle_position is not None:
        position = _as_float_array(bundle_position, "bundle_position", shape=(n,))
        rd[in_bundle] *= params.along_tract_rd_factor(position[in_bundle])
    lesioned = wm_like & lesion
    ad[lesioned] *= params.lesion_ad_factor
    rd[lesioned] *= params.lesion_rd_factor
    rd[(tissue == _WM) & left & ~lesion] *= scale

    norm = np.linalg.norm(direction, axis=1, keepdims=True)
    if np.any(norm[wm_like] == 0):
        raise InputError(
            "direction_mni has zero-length rows at WM voxels; pass unit fibre directions, "
            "e.g. the direction returned by bundle_field."
        )
    direction = np.divide(direction, norm, out=np.tile([1.0, 0.0, 0.0], (n, 1)), where=norm > 0)
    e1 = direction @ rotation.T
    e2, e3 = _orthonormal_complement(e1)
    evecs = np.stack([e1, e2, e3], axis=2)
    evals = np.stack([ad, rd, rd], axis=1)

    # Sort descending (RD can exceed AD only with extreme scale factors).
    order = np.argsort(-evals, axis=1, kind="stable")
    evals = np.take_along_axis(evals, order, axis=1)
    evecs = np.take_along_axis(evecs, order[:, None, :], axis=2)
    return evals, evecs


def _orthonormal_complement(e1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors completing each row of ``e1`` to a right-handed orthonormal basis."""
    helper = np.zeros_like(e1)
    helper[np.arange(e1.shape[0]), np.argmin(np.abs(e1), axis=1)] = 1.0
    e2 = np.cross(e1, helper)
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    return e2, np.cross(e1, e2)


# --------------------------------------------------------------------------------------------
# Signal
# --------------------------------------------------------------------------------------------
_DEFAULT_S0 = {
    _BACKGROUND: 0.0,
    _CSF: 3000.0,
    _CORTICAL_GM: 1200.0,
    _WM: 1000.0,
    _DEEP_GM: 1150.0,
    _VENTRICLES: 3000.0,
    _BRAINSTEM: 1000.0,
    _CEREBELLUM: 1150.0,
}
_LESION_S0_FACTOR = 1.5


def default_s0(tissue: np.ndarray, lesion: np.ndarray | None = None) -> np.ndarray:
    """T2-weighted b=0 intensity per voxel (arbitrary units).

    CSF and ventricles 3000, cortical GM 1200, deep GM and cerebellum 1150, cerebral WM and
    brainstem 1000, background 0. WM lesions are T2-hyperintense: with ``lesion`` given,
    lesion voxels in WM-like tissue get 1.5x their tissue value (1500).

    Parameters
    ----------
    tissue : array_like of int, shape (N,)
        Tissue labels 0-7.
    lesion : array_like of bool, shape (N,), optional
        Lesion flag.

    Returns
    -------
    ndarray of float64, shape (N,)
        b=0 intensities.
    """
    tissue = _as_labels(tissue, "tissue")
    lookup = np.array([_DEFAULT_S0[label] for label in range(_N_LABELS)])
    s0 = lookup[tissue]
    if lesion is not None:
        lesion = _as_bool_array(lesion, "lesion", tissue.shape[0])
        s0[lesion & np.isin(tissue, _WM_LIKE)] *= _LESION_S0_FACTOR
    return s0


def simulate_signal(
    evals: np.ndarray,
    evecs: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    s0: np.ndarray,
    *,
    snr: float | None = None,
    sigma: float | None = None,
    noise_reference: float | None = None,
    rng: np.random.Generator | int | None = None,
    chunk_voxels: int = 100_000,
) -> np.ndarray:
    """Diffusion-weighted signals S = S0 exp(-b gᵀDg), optionally with Rician noise.

    With noise, each measurement is ``|S + n1 + i n2|`` with ``n1, n2 ~ N(0, sigma²)``, so
    background voxels (S0 = 0) hold pure Rayleigh noise, as in magnitude images.

    Parameters
    ----------
    evals : array_like, shape (N, 3)
        Eigenvalues in mm²/s.
    evecs : array_like, shape (N, 3, 3)
        Eigenvectors as columns (``evecs[i, :, k]`` belongs to ``evals[i, k]``), in the frame
        of ``bvecs``.
    bvals : array_like, shape (M,)
        b-values in s/mm².
    bvecs : array_like, shape (M, 3)
        Gradient directions (unit norm for b > 0).
    s0 : array_like, shape (N,)
        Noise-free b=0 signal (see :func:`default_s0`).
    snr : float, optional
        Signal-to-noise ratio; ``sigma = noise_reference / snr``. Without ``snr`` or ``sigma``
        the signal is noise-free.
    sigma : float, optional
        Standard deviation of each Gaussian noise channel, as an alternative to ``snr``.
    noise_reference : float, optional
        Reference intensity for ``snr``; by default the median of the positive ``s0`` values
        (pass the median WM S0 to define SNR in white matter).
    rng : numpy.random.Generator or int, optional
        Random generator or seed, for reproducible noise.
    chunk_voxels : int, default 100000
        Voxels per chunk, to bound memory.

    Returns
    -------
    ndarray of float32, shape (N, M)
        Signals.

    Raises
    ------
    InputError
        If shapes disagree, values are invalid, or both ``snr`` and ``sigma`` are given.
    """
    evals = _as_float_array(evals, "evals", shape=(None, 3))
    n = evals.shape[0]
    evecs = _as_float_array(evecs, "evecs", shape=(n, 3, 3))
    bvals, bvecs = _check_gradients(bvals, bvecs)
    s0 = _as_float_array(s0, "s0", shape=(n,))
    if np.any(evals < 0) or np.any(s0 < 0):
        raise InputError(
            "evals and s0 must be non-negative; pass eigenvalues in mm²/s and b=0 intensities "
            "as returned by tissue_tensors and default_s0."
        )
    chunk_voxels = _check_int(chunk_voxels, "chunk_voxels", minimum=1)
    sigma = _noise_sigma(s0, snr, sigma, noise_reference)
    generator = np.random.default_rng(rng)

    # gᵀDg = B @ (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz) with B rows (gx², gy², gz², 2gxgy, 2gxgz, 2gygz).
    gx, gy, gz = bvecs.T
    design = bvals[:, None] * np.stack(
        [gx * gx, gy * gy, gz * gz, 2 * gx * gy, 2 * gx * gz, 2 * gy * gz], axis=1
    )
    out = np.empty((n, bvals.shape[0]), dtype=np.float32)
    for first in range(0, n, chunk_voxels):
        part = slice(first, first + chunk_voxels)
        tensor = np.einsum("nik,nk,njk->nij", evecs[part], evals[part], evecs[part])
        six = tensor[:, [0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
        signal = s0[part, None] * np.exp(-(six @ design.T))
        if sigma > 0:
            real = signal + generator.normal(0.0, sigma, signal.shape)
            imaginary = generator.normal(0.0, sigma, signal.shape)
            signal = np.hypot(real, imaginary)
        out[part] = signal
    return out


def _noise_sigma(
    s0: np.ndarray, snr: float | None, sigma: float | None, noise_reference: float | None
) -> float:
    if snr is not None and sigma is not None:
        raise InputError(
            f"simulate_signal got both snr={snr!r} and sigma={sigma!r}; pass only one of them."
        )
    if sigma is not None:
        sigma = float(sigma)
        if not (np.isfinite(sigma) and sigma >= 0):
            raise InputError(f"sigma must be a finite value >= 0, got {sigma!r}.")
        return sigma
    if snr is None:
        return 0.0
    snr = float(snr)
    if not (np.isfinite(snr) and snr > 0):
        raise InputError(f"snr must be a positive finite number, got {snr!r}; e.g. snr=20.")
    if noise_reference is None:
        positive = s0[s0 > 0]
        if positive.size == 0:
            raise InputError(
                "snr needs a noise reference but s0 has no positive values; pass "
                "noise_reference (e.g. the median WM S0) or sigma directly."
            )
        noise_reference = float(np.median(positive))
    noise_reference = float(noise_reference)
    if not (np.isfinite(noise_reference) and noise_reference > 0):
        raise InputError(
            f"noise_reference must be a positive finite intensity, got {noise_reference!r}."
        )
    return noise_reference / snr


# --------------------------------------------------------------------------------------------
# Metrics and truth tables
# --------------------------------------------------------------------------------------------
def tensor_metrics(evals: np.ndarray) -> dict[str, np.ndarray]:
    """Fractional anisotropy and mean, axial and radial diffusivity from eigenvalues.

    Parameters
    ----------
    evals : array_like, shape (..., 3)
        Eigenvalues in mm²/s (any order; sorted here).

    Returns
    -------
    dict
        ``"fa"`` (dimensionless, 0 where all eigenvalues are 0), ``"md"``, ``"ad"`` (largest
        eigenvalue) and ``"rd"`` (mean of the two smallest), in mm²/s; each of shape (...).
    """
    evals = np.asarray(evals, dtype=np.float64)
    if evals.ndim < 1 or evals.shape[-1] != 3:
        raise InputError(
            f"evals must have shape (..., 3), got {evals.shape}; pass the eigenvalues "
            "returned by tissue_tensors."
        )
    evals = -np.sort(-evals, axis=-1)
    l1, l2, l3 = evals[..., 0], evals[..., 1], evals[..., 2]
    numerator = (l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2
    denominator = l1**2 + l2**2 + l3**2
    fa = np.sqrt(
        0.5 * np.divide(numerator, denominator, out=np.zeros_like(l1), where=denominator > 0)
    )
    return {"fa": fa, "md": evals.mean(axis=-1), "ad": l1, "rd": (l2 + l3) / 2.0}


def dwi_truth(
    evals: np.ndarray, regions: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float | int | None]]:
    """Ground-truth mean FA, MD, AD and RD per region.

    Parameters
    ----------
    evals : array_like, shape (N, 3)
        Eigenvalues in mm²/s.
    regions : mapping of str to array_like of bool, shape (N,)
        Region name -> voxel mask.

    Returns
    -------
    dict
        Region -> ``{"fa", "md", "ad", "rd", "n_voxels"}`` (Python floats and int, ready for
        JSON); the means are ``None`` for an empty region.
    """
    evals = _as_float_array(evals, "evals", shape=(None, 3))
    metrics = tensor_metrics(evals)
    truth: dict[str, dict[str, float | int | None]] = {}
    for name, mask in regions.items():
        mask = _as_bool_array(mask, f"regions[{name!r}]", evals.shape[0])
        count = int(mask.sum())
        row: dict[str, float | int | None] = {
            key: (float(metrics[key][mask].mean()) if count else None)
            for key in ("fa", "md", "ad", "rd")
        }
        row["n_voxels"] = count
        truth[name] = row
    return truth


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------
def _check_int(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _as_float_array(value: object, name: str, *, shape: tuple[int | None, ...]) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name} must be a numeric array, got {type(value).__name__}.") from error
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=False)
    ):
        expected = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise InputError(
            f"{name} must have shape {expected} (one row per voxel), got {array.shape}."
        )
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or infinite values; pass finite numbers.")
    return array


def _as_int_array(value: object, name: str, n: int) -> np.ndarray:
    array = np.asarray(value)
    if array.shape != (n,) or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)
    ):
        raise InputError(
            f"{name} must be an integer array of shape ({n},), got dtype {array.dtype} and "
            f"shape {array.shape}."
        )
    return array.astype(np.int64)


def _as_labels(value: object, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(
            f"{name} must be a 1-D integer array of tissue labels, got dtype {array.dtype} "
            f"and shape {array.shape}; flatten the label image (e.g. labels[mask])."
        )
    if array.size and (array.min() < 0 or array.max() >= _N_LABELS):
        raise InputError(
            f"{name} holds labels outside 0-{_N_LABELS - 1} (found {array.min()}..{array.max()}); "
            "use 0 background, 1 CSF, 2 cortical GM, 3 WM, 4 deep GM, 5 ventricles, "
            "6 brainstem, 7 cerebellum."
        )
    return array.astype(np.int64)


def _as_bool_array(value: object, name: str, n: int) -> np.ndarray:
    array = np.asarray(value)
    if array.shape != (n,) or array.dtype != np.bool_:
        raise InputError(
            f"{name} must be a boolean array of shape ({n},), got dtype {array.dtype} and "
            f"shape {array.shape}."
        )
    return array


def _check_rotation(rotation: object) -> np.ndarray:
    if rotation is None:
        return np.eye(3)
    matrix = _as_float_array(rotation, "rotation", shape=(3, 3))
    if not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-6):
        raise InputError(
            "rotation must be an orthogonal 3x3 matrix (rotation @ rotation.T == I); pass the "
            "rotation part of the MNI-to-native transform, without scaling or shear."
        )
    return matrix


def _check_gradients(bvals: object, bvecs: object) -> tuple[np.ndarray, np.ndarray]:
    bvals = _as_float_array(bvals, "bvals", shape=(None,))
    bvecs = _as_float_array(bvecs, "bvecs", shape=(bvals.shape[0], 3))
    if np.any(bvals < 0):
        raise InputError("bvals must be >= 0 s/mm²; check the b-value file.")
    norms = np.linalg.norm(bvecs[bvals > 0], axis=1)
    if not np.allclose(norms, 1.0, atol=1e-4):
        raise InputError(
            "bvecs must have unit norm for every b > 0 volume; normalise them "
            "(bvecs / np.linalg.norm(bvecs, axis=1, keepdims=True))."
        )
    return bvals, bvecs
