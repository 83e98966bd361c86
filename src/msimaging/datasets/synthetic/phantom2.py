"""A second tract phantom: bundles re-drawn independently of the default study, with crossings.

The default study (:mod:`msimaging.datasets.synthetic.diffusion`) draws one tube per tract
and, where tubes overlap, gives the voxel to a single bundle (single-tensor signal). The tract
stage's defaults were developed on that drawing. This phantom asks whether they survive another
one (issue 17, deliverable 4):

- **other landmarks** (approximate MNI152 mm, chosen without looking at the waypoint
  definitions of :mod:`msimaging.atlases.tracts`):

  * CST: lower pons (±9, -27, -30) -> cerebral peduncle (±16, -16, -12) -> posterior third of
    the posterior limb of the internal capsule (±24, -18, 10) -> corona radiata (±29, -21, 30),
    bending medially in the centrum semiovale (±27, -22, 45) to the dorsomedial precentral gyrus
    (±21, -20, 62) (leg/trunk territory; the default drawing ends laterally in the hand area at
    (±35, -20, 60)). An S-shaped course, radius 4.5 mm (default 5).
  * OR: two fibre families from the lateral geniculate nucleus (±23, -25, -6): the central
    bundle runs laterally and back into the sagittal stratum (±39, -42, -1) and on to the
    calcarine cortex at (±10, -94, 3); the anterior bundle forms **Meyer's loop**, running
    forward over the roof of the temporal horn to its tip at y = -8 mm (±34, -8, -12) before
    turning back to join the stratum (a round turn: its radius of curvature, >= 4.7 mm,
    is at least the tube's radius, as for every bundle here). Radius 4 mm (default 5, no
    Meyer's loop).
  * CC: thicker (radius 6 mm, default 5); genu lower (y = +29, z = 4; default z = 10),
    splenium more posterior (y = -41, z = 12; default -36), body higher (z = 25-26; default
    24), midline points read off the WM of the ICBM152 midsagittal plane; fibres rise more
    steeply and further (27 mm at x = ±44 mm, default 18 mm at ±40), so the body fibres
    cross the CST in the corona radiata.
  * SLF (superior longitudinal fasciculus, not a tracked tract: a crossing bundle only):
    antero-posterior at x ≈ ±34, z ≈ 30-34 from y = +22 to -52, arching down posteriorly,
    radius 4.5 mm; it crosses the CST in the corona radiata (a three-way crossing with the
    callosal fibres) and passes above the OR.

- **crossing-fibre signal**: a WM voxel inside k bundle tubes holds k compartments of equal
  volume fraction 1/k, each a cylindrical bundle tensor along its own bundle (same
  diffusivities, along-tract RD bump, lesion and planted-effect rules as the default study),
  and its signal is the volume-weighted sum ``S0 Σ f_j exp(-b gᵀ D_j g)`` (the multi-tensor
  model of dipy.sims.voxel.multi_tensor, vectorised). Single-bundle and non-bundle voxels are
  exactly as in the default study.

- **bundles carve their white matter**: a tube voxel that the anatomy labels cortical or deep
  grey matter gets bundle signal (never CSF or ventricles). The bundles were drawn without
  looking at our coarse anatomy and cross its grey matter in a few voxels (OR 12 mm from the
  LGN and at Meyer's loop tip, CST in the midbrain, callosal fibres); left grey, each was a
  one-voxel FA gap (~0.1) that cut the drawn bundle in two, which no real bundle has. The
  anatomy images and the tissue truth keep the grey-matter labels.

:func:`make_phantom2_study` writes the default study's images (anatomy, lesions, BOLD, clinical
table) with :func:`make_synthetic_study` and then replaces every visit's DWI and its DWI truth.

Ground truth (``ground_truth.json`` ``dwi`` section per visit, same keys as the default
study, so the same evaluation code works): ``regions`` -> {fa, md, ad, rd, n_voxels} where
``fa`` etc. are those of the **noise-free single-tensor fit** of each voxel's signal (what a
DTI map shows without noise; equal to the compartment values outside crossings) and each
bundle region is the bundle's whole tube (crossing voxels included), plus
``fa_compartment`` (mean FA of the bundle's own compartment) per bundle; ``profiles_fa``
(noise-free tensor FA) and ``profiles_fa_compartment`` per tract, 100 nodes between the first
and last waypoints as in the default study. Images: ``desc-bundles_dseg`` (one label per
voxel, first bundle of :data:`PRIORITY` wins, as in the default study) and
``desc-bundles_mask`` (4-D, one full tube per volume in the order of
``truth["tract_geometry"]["bundles"]``): evaluate Dice against the latter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import nibabel as nib
import numpy as np

from msimaging.datasets.synthetic import diffusion
from msimaging.errors import InputError

__all__ = [
    "BUNDLES",
    "PRIORITY",
    "PhantomBundle",
    "bundle_membership",
    "make_phantom2_study",
    "tract_mask_truth",
]

_CORTICAL_GM, _WM, _DEEP_GM, _BRAINSTEM = 2, 3, 4, 6
# Grey matter a drawn bundle may pass through (see _simulate_visit); never CSF or ventricles.
_CARVED = (_CORTICAL_GM, _DEEP_GM)
_CHUNK_ELEMENTS = 2_000_000  # points x segments per distance chunk


@dataclass(frozen=True)
class PhantomBundle:
    """A bundle of the second phantom: centre lines (MNI mm), the relative position along the
    bundle at every centre-line point, and a tube radius.

    Attributes
    ----------
    name : str
    code : int
        Label in ``desc-bundles_dseg`` (1 CC, 2/3 CST L/R, 4/5 OR L/R, 6/7 SLF L/R).
    polylines_mm : tuple of ndarray (k, 3)
        The first is the principal centre line (profiles are defined along it).
    positions : tuple of ndarray (k,)
        Relative position (0-1) at each point; the principal line's is its arc fraction, a
        branch that merges into it (Meyer's loop) reaches the principal's value at the merge.
    radius_mm : float
    """

    name: str
    code: int
    polylines_mm: tuple[np.ndarray, ...]
    positions: tuple[np.ndarray, ...]
    radius_mm: float


def _spline(points: Sequence[Sequence[float]], samples_per_mm: float = 0.5) -> np.ndarray:
    """Smooth centre line through the vertices (cubic spline over chord length, ~2 mm steps)."""
    from scipy.interpolate import make_interp_spline

    vertices = np.array(points, dtype=np.float64)
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(vertices, axis=0), axis=1))])
    spline = make_interp_spline(chord, vertices, k=min(3, len(vertices) - 1))
    n = max(len(vertices), int(np.ceil(chord[-1] * samples_per_mm)) + 1)
    return spline(np.linspace(0.0, chord[-1], n))


def _arc(line: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])


def _mirror(points: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[-x, y, z] for x, y, z in points]


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    array.setflags(write=False)
    return array


# CST, left (mirrored for the right). See the module docstring for the landmarks.
_CST_L = (
    (-9.0, -27.0, -30.0),  # lower pons
    (-16.0, -16.0, -12.0),  # cerebral peduncle (crus)
    (-24.0, -18.0, 10.0),  # posterior third of the PLIC
    (-29.0, -21.0, 30.0),  # corona radiata
    (-27.0, -22.0, 45.0),  # centrum semiovale, bending medially
    (-21.0, -20.0, 62.0),  # dorsomedial precentral gyrus
)
# OR, left: central bundle (principal) and Meyer's loop (branch joining it in the stratum).
_OR_CENTRAL_L = (
    (-23.0, -25.0, -6.0),  # lateral geniculate nucleus
    (-31.0, -30.0, -4.0),
    (-39.0, -42.0, -1.0),  # sagittal stratum, lateral to the atrium
    (-37.0, -58.0, 1.0),
    (-31.0, -73.0, 3.0),
    (-21.0, -86.0, 4.0),
    (-10.0, -94.0, 3.0),  # calcarine cortex
)
# The tip is drawn as a round turn (vertices on a ~5 mm arc around it): through the three
# landmarks alone the spline turned with a 1.8 mm radius of curvature, less than the tube's
# 4 mm radius, i.e. a bundle folding onto itself, which no fibre bundle can do.
_OR_MEYER_L = (
    (-23.0, -25.0, -6.0),  # lateral geniculate nucleus
    (-26.5, -18.0, -8.5),
    (-28.5, -12.0, -10.5),
    (-31.0, -8.8, -11.5),
    (-34.0, -8.0, -12.0),  # Meyer's loop tip over the temporal horn
    (-37.0, -8.8, -11.5),
    (-39.5, -12.0, -11.0),
    (-40.5, -18.0, -9.5),
    (-41.0, -30.0, -5.0),
    (-39.0, -42.0, -1.0),  # joins the central bundle in the sagittal stratum
    (-37.0, -58.0, 1.0),  # merged (a central-line vertex: no kink where they meet)
)
# CC: midsagittal (y, z) of each left-right fibre and its rise with distance from the midline.
_CC_MIDLINE_YZ = (
    (-8.0, 26.0),  # body (principal)
    (29.0, 4.0),  # genu
    (24.0, 12.0),
    (12.0, 22.0),
    (2.0, 26.0),
    (-18.0, 25.0),
    (-28.0, 22.0),
    (-36.0, 18.0),
    (-41.0, 12.0),  # splenium
)
_CC_RISE = ((0.0, 0.0), (8.0, 4.0), (14.0, 10.0), (20.0, 17.0), (28.0, 23.0), (36.0, 26.0),
            (44.0, 27.0))
# SLF, left: anterior (frontal) -> posterior (parietal), arching down at the back.
_SLF_L = (
    (-32.0, 22.0, 30.0),
    (-34.0, 2.0, 34.0),
    (-34.0, -20.0, 34.0),
    (-35.0, -38.0, 31.0),
    (-34.0, -52.0, 24.0),
)


def _cc_fibre(y_mm: float, z_mm: float) -> list[list[float]]:
    half = [[x, y_mm, z_mm + dz] for x, dz in _CC_RISE]
    return _mirror(half[:0:-1]) + half


def _single(name: str, code: int, vertices, radius_mm: float) -> PhantomBundle:
    line = _spline(vertices)
    arc = _arc(line)
    return PhantomBundle(name, code, (_frozen(line),), (_frozen(arc / arc[-1]),), radius_mm)


def _callosum() -> PhantomBundle:
    lines = [_spline(_cc_fibre(y, z)) for y, z in _CC_MIDLINE_YZ]
    positions = [_arc(line) / _arc(line)[-1] for line in lines]
    return PhantomBundle("CC", 1, tuple(map(_frozen, lines)), tuple(map(_frozen, positions)), 6.0)


def _optic_radiation(name: str, code: int, central, meyer) -> PhantomBundle:
    main = _spline(central)
    arc = _arc(main)
    main_position = arc / arc[-1]
    loop = _spline(meyer)
    # The loop reaches the principal line's position at the merge point, then follows it.
    merge = np.argmin(np.linalg.norm(main - np.asarray(meyer[-1]), axis=1))
    loop_arc = _arc(loop)
    loop_position = main_position[merge] * loop_arc / loop_arc[-1]
    tail = main[merge + 1:]
    loop = np.vstack([loop, tail])
    loop_position = np.concatenate([loop_position, main_position[merge + 1:]])
    return PhantomBundle(
        name, code, (_frozen(main), _frozen(loop)),
        (_frozen(main_position), _frozen(loop_position)), 4.0,
    )


BUNDLES: Mapping[str, PhantomBundle] = MappingProxyType({
    "CC": _callosum(),
    "CST_L": _single("CST_L", 2, _CST_L, 4.5),
    "CST_R": _single("CST_R", 3, _mirror(_CST_L), 4.5),
    "OR_L": _optic_radiation("OR_L", 4, _OR_CENTRAL_L, _OR_MEYER_L),
    "OR_R": _optic_radiation("OR_R", 5, _mirror(_OR_CENTRAL_L), _mirror(_OR_MEYER_L)),
    "SLF_L": _single("SLF_L", 6, _SLF_L, 4.5),
    "SLF_R": _single("SLF_R", 7, _mirror(_SLF_L), 4.5),
})
"""The second phantom's bundles, name -> :class:`PhantomBundle` (MNI152 mm)."""

PRIORITY: tuple[str, ...] = ("CST_L", "CST_R", "OR_L", "OR_R", "CC", "SLF_L", "SLF_R")
"""Label order of ``desc-bundles_dseg`` where tubes overlap (first wins); the signal of such
voxels is a crossing (all bundles present), only the single-label image needs an order."""

TRACKED = ("CC", "CST_L", "CST_R", "OR_L", "OR_R")


def bundle_membership(mni_xyz_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which bundle tubes contain each point, with each bundle's direction and position there.

    Parameters
    ----------
    mni_xyz_mm : array_like, shape (N, 3)

    Returns
    -------
    member : ndarray of bool, shape (N, B)
        B = len(BUNDLES), in the order of :data:`BUNDLES`.
    direction : ndarray, shape (N, B, 3)
        Unit tangent of the nearest centre-line segment of each bundle (MNI frame).
    position : ndarray, shape (N, B)
        Relative position along each bundle (0-1) of the nearest centre-line point.
    """
    points = np.asarray(mni_xyz_mm, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or not np.all(np.isfinite(points)):
        raise InputError(
            f"mni_xyz_mm must be a finite (N, 3) array of MNI coordinates in mm, got shape "
            f"{points.shape}."
        )
    n, n_bundles = points.shape[0], len(BUNDLES)
    member = np.zeros((n, n_bundles), bool)
    direction = np.zeros((n, n_bundles, 3))
    position = np.zeros((n, n_bundles))
    for b, bundle in enumerate(BUNDLES.values()):
        starts = np.concatenate([line[:-1] for line in bundle.polylines_mm])
        axes = np.concatenate([np.diff(line, axis=0) for line in bundle.polylines_mm])
        pos0 = np.concatenate([p[:-1] for p in bundle.positions])
        pos1 = np.concatenate([p[1:] for p in bundle.positions])
        length2 = np.einsum("sk,sk->s", axes, axes)
        tangents = axes / np.sqrt(length2)[:, None]
        # Cheap pre-filter: only points within the bundle's bounding box (+ radius) matter.
        low = np.minimum(starts, starts + axes).min(0) - bundle.radius_mm
        high = np.maximum(starts, starts + axes).max(0) + bundle.radius_mm
        near = np.flatnonzero(np.all((points >= low) & (points <= high), axis=1))
        chunk = max(1, _CHUNK_ELEMENTS // starts.shape[0])
        for first in range(0, near.size, chunk):
            rows = near[first:first + chunk]
            offsets = points[rows, None, :] - starts[None]
            t = np.clip(np.einsum("csk,sk->cs", offsets, axes) / length2, 0.0, 1.0)
            offsets -= t[..., None] * axes
            distance2 = np.einsum("csk,csk->cs", offsets, offsets)
            nearest = np.argmin(distance2, axis=1)
            pick = np.arange(rows.size)
            inside = distance2[pick, nearest] <= bundle.radius_mm**2
            segment = nearest[inside]
            hit = rows[inside]
            member[hit, b] = True
            direction[hit, b] = tangents[segment]
            tt = t[pick[inside], segment]
            position[hit, b] = pos0[segment] + tt * (pos1[segment] - pos0[segment])
    return member, direction, position


def _waypoint_span(bundle: PhantomBundle) -> tuple[float, float]:
    """Positions along the principal line where it leaves the tract definition's first
    waypoint and enters its last (as in the default study's truth); a waypoint the line
    misses falls back to the line point nearest to the waypoint's centre."""
    from msimaging.atlases.tracts import TRACTS

    line, pos = bundle.polylines_mm[0], bundle.positions[0]
    arc = _arc(line)
    fine = np.linspace(0.0, arc[-1], max(2, int(np.ceil(arc[-1] / 0.25)) + 1))
    points = np.column_stack([np.interp(fine, arc, line[:, k]) for k in range(3)])
    fine_pos = np.interp(fine, arc, pos)
    definition = TRACTS[bundle.name]
    ends = []
    for region, pick in ((definition.waypoints[0], np.max), (definition.waypoints[-1], np.min)):
        inside = np.asarray(region.contains(points), bool)
        if inside.any():
            ends.append(float(pick(fine_pos[inside])))
        else:
            low, high = region.bounds_mm()
            centre = (np.asarray(low) + np.asarray(high)) / 2.0
            ends.append(float(fine_pos[np.argmin(np.linalg.norm(points - centre, axis=1))]))
    return ends[0], ends[1]


def _profile(fa: np.ndarray, position: np.ndarray, span: tuple[float, float],
             n_nodes: int = 100) -> list[float]:
    """Gaussian-kernel (SD 3 % of the span) means of FA by position, at n_nodes nodes."""
    start, end = span
    nodes = start + (end - start) * (np.arange(n_nodes) + 0.5) / n_nodes
    weights = np.exp(-0.5 * ((position[:, None] - nodes[None]) / (0.03 * abs(end - start))) ** 2)
    return np.round((weights * fa[:, None]).sum(0) / np.maximum(weights.sum(0), 1e-12),
                    6).tolist()


def _tensor_fit_evals(signal: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """Eigenvalues of the log-linear least-squares tensor fit of noise-free signals (N, M)."""
    gx, gy, gz = bvecs.T
    design = np.column_stack([
        np.ones_like(bvals),
        -bvals[:, None] * np.stack([gx * gx, gy * gy, gz * gz, 2 * gx * gy, 2 * gx * gz,
                                    2 * gy * gz], axis=1),
    ])
    coef = np.linalg.lstsq(design, np.log(np.maximum(signal, 1e-12)).T, rcond=None)[0].T
    d = coef[:, 1:]
    tensor = np.stack([d[:, [0, 3, 4]], d[:, [3, 1, 5]], d[:, [4, 5, 2]]], axis=1)
    return np.linalg.eigvalsh(tensor)[:, ::-1]


def _polar_rotation(mni_to_native: np.ndarray) -> np.ndarray:
    """Rotation part of ``rotation @ diag(scale)`` (polar decomposition)."""
    u, _, vt = np.linalg.svd(np.asarray(mni_to_native)[:3, :3])
    return u @ vt


def _simulate_visit(
    tissue: np.ndarray, lesion: np.ndarray, mni: np.ndarray, rotation: np.ndarray,
    bvals: np.ndarray, bvecs: np.ndarray, rd_scale: float, snr: float | None,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Multi-compartment DWI of one visit (flat voxel arrays) and its truth arrays."""
    n = tissue.size
    names = list(BUNDLES)
    candidate = np.isin(tissue, (_WM, _BRAINSTEM, *_CARVED))
    member = np.zeros((n, len(names)), bool)
    direction = np.zeros((n, len(names), 3))
    position = np.zeros((n, len(names)))
    member[candidate], direction[candidate], position[candidate] = bundle_membership(
        mni[candidate])
    count = member.sum(1)
    # Bundles carve their own white matter: the anatomy is a coarse drawing, and the bundles
    # were drawn from other landmarks, so a tube crosses voxels our anatomy labels grey matter
    # (OR 12 mm from the LGN and at Meyer's loop tip, CST in the midbrain, callosal fibres
    # near the cingulate). Left as grey matter they cut every drawn bundle in two with a
    # one-voxel FA gap (FA ~0.1) that no FA-thresholded tracker crosses, which no real bundle
    # has. Such voxels get bundle (WM) signal; the anatomy images and the tissue truth keep
    # their labels, as a real segmentation misses thin WM between grey structures.
    tissue = np.where(np.isin(tissue, _CARVED) & (count > 0), _WM, tissue)
    left = mni[:, 0] < 0
    s0 = diffusion.default_s0(tissue, lesion)
    reference = float(np.median(s0[tissue == _WM]))

    # Background model (no bundle): exactly the default study's smooth WM field and tissues.
    field = diffusion._smooth_orientation(mni)
    evals, evecs = diffusion.tissue_tensors(
        tissue, np.zeros(n, np.int64), field, lesion, left, left_nawm_rd_scale=rd_scale,
        rotation=rotation,
    )
    signal = diffusion.simulate_signal(evals, evecs, bvals, bvecs, s0).astype(np.float64)
    apparent = evals.copy()
    compartment_fa = np.zeros((n, len(names)))
    in_any = count > 0
    signal[in_any] = 0.0
    for b, name in enumerate(names):
        rows = np.flatnonzero(member[:, b])
        if rows.size == 0:
            continue
        ev, vec = diffusion.tissue_tensors(
            tissue[rows], np.full(rows.size, BUNDLES[name].code, np.int64), direction[rows, b],
            lesion[rows], left[rows], left_nawm_rd_scale=rd_scale, rotation=rotation,
            bundle_position=position[rows, b],
        )
        fraction = 1.0 / count[rows]
        signal[rows] += diffusion.simulate_signal(ev, vec, bvals, bvecs, s0[rows] * fraction)
        compartment_fa[rows, b] = diffusion.tensor_metrics(ev)["fa"]
        single = count[rows] == 1
        apparent[rows[single]] = ev[single]
    crossing = np.flatnonzero(count > 1)
    if crossing.size:
        apparent[crossing] = _tensor_fit_evals(signal[crossing], bvals, bvecs)
    if snr is not None:
        sigma = reference / float(snr)
        noisy = np.hypot(signal + rng.normal(0.0, sigma, signal.shape),
                         rng.normal(0.0, sigma, signal.shape))
        out = np.clip(np.rint(noisy), 0, 32767).astype(np.int16)
    else:
        out = signal.astype(np.float32)
    return {"signal": out, "member": member, "position": position, "evals": apparent,
            "compartment_fa": compartment_fa, "count": count}


def tract_mask_truth(root: str | Path, participant_id: str, session_id: str) -> dict[str, Any]:
    """Full planted tube of every bundle of a phantom-2 visit, on the visit's DWI grid.

    Returns
    -------
    dict
        Bundle name -> boolean 3-D array (crossing voxels belong to every bundle present).
    """
    root = Path(root)
    truth = json.loads((root / "sourcedata/ground_truth/ground_truth.json").read_text())
    names = truth.get("tract_geometry", {}).get("bundles")
    if names is None:
        raise InputError(
            f"{root} is not a phantom-2 study (ground_truth.json has no 'tract_geometry'); "
            "create it with make_phantom2_study."
        )
    path = (root / "sourcedata/ground_truth" / participant_id / session_id / "dwi"
            / f"{participant_id}_{session_id}_desc-bundles_mask.nii.gz")
    masks = np.asanyarray(nib.load(path).dataobj) > 0
    return {name: masks[..., k] for k, name in enumerate(names)}


def _description() -> dict[str, Any]:
    return {
        "name": "alternate",
        "bundles": list(BUNDLES),
        "codes": {name: b.code for name, b in BUNDLES.items()},
        "radius_mm": {name: b.radius_mm for name, b in BUNDLES.items()},
        "tracked": list(TRACKED),
        "crossing_model": "equal volume fractions 1/k of k cylindrical bundle tensors",
        "fa_truth": "noise-free single-tensor fit of each voxel's signal (fa_compartment: the "
                    "bundle's own compartment)",
        "mask_file": "sub-XX/ses-YY/dwi/sub-XX_ses-YY_desc-bundles_mask.nii.gz (4-D, one "
                     "volume per bundle in 'bundles' order)",
        "landmarks_mm": {
            "CST_L": [list(p) for p in _CST_L], "OR_L_central": [list(p) for p in _OR_CENTRAL_L],
            "OR_L_meyer": [list(p) for p in _OR_MEYER_L],
            "CC_midline_yz": [list(p) for p in _CC_MIDLINE_YZ],
            "CC_rise_xdz": [list(p) for p in _CC_RISE], "SLF_L": [list(p) for p in _SLF_L],
        },
    }


def make_phantom2_study(
    root: str | Path,
    n_subjects: int = 2,
    sessions: Sequence[str] = ("M0",),
    seed: int = 0,
    preset: str = "default",
    **effects: Any,
) -> Path:
    """Write a synthetic study whose DWI holds the second phantom's bundles and crossings.

    Everything but the DWI (anatomy, lesions, BOLD, clinical table, head placement) is the
    default study's (:func:`msimaging.datasets.make_synthetic_study` with the same
    arguments); each visit's DWI series and its ``dwi`` ground truth are then re-simulated with
    :data:`BUNDLES` (see the module docstring for the truth keys and files).

    Parameters
    ----------
    root, n_subjects, sessions, seed, preset, **effects
        As for :func:`msimaging.datasets.make_synthetic_study`.

    Returns
    -------
    Path
        The dataset root.
    """
    from msimaging.datasets.synthetic.study import make_synthetic_study
    from msimaging.io import bvecs_to_voxel

    root = make_synthetic_study(root, n_subjects, sessions, seed, preset, **effects)
    truth_path = root / "sourcedata/ground_truth/ground_truth.json"
    truth = json.loads(truth_path.read_text())
    names = list(BUNDLES)
    for s_index, (sub, subject) in enumerate(sorted(truth["subjects"].items())):
        for v_index, (ses, visit) in enumerate(sorted(subject["sessions"].items())):
            truth_dir = root / "sourcedata/ground_truth" / sub / ses / "dwi"
            stem = f"{sub}_{ses}"
            dwi_path = root / sub / ses / "dwi" / f"{stem}_dwi.nii.gz"
            dwi_img = nib.load(dwi_path)
            affine, shape = dwi_img.affine, dwi_img.shape[:3]
            bvals = np.loadtxt(dwi_path.with_name(f"{stem}_dwi.bval"), ndmin=1)
            bvecs = bvecs_to_voxel(np.loadtxt(dwi_path.with_name(f"{stem}_dwi.bvec")).T,
                                   affine, "fsl")
            tissue = np.asanyarray(
                nib.load(truth_dir / f"{stem}_desc-tissue_dseg.nii.gz").dataobj
            ).astype(np.int64).ravel()
            lesion = np.asanyarray(
                nib.load(truth_dir / f"{stem}_label-lesion_mask.nii.gz").dataobj
            ).ravel() > 0
            mni_to_native = np.asarray(subject["mni_to_native"][ses])
            ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
            native = affine[:3, :3] @ ijk + affine[:3, 3:4]
            inverse = np.linalg.inv(mni_to_native)
            mni = (inverse[:3, :3] @ native + inverse[:3, 3:4]).T
            dwi_truth = visit["dwi"]
            rng = np.random.default_rng([seed, 17, s_index, v_index])
            sim = _simulate_visit(
                tissue, lesion, mni, _polar_rotation(mni_to_native), bvals, bvecs,
                float(dwi_truth["left_nawm_rd_scale"]), dwi_truth.get("snr"), rng,
            )
            nib.save(nib.Nifti1Image(sim["signal"].reshape(*shape, -1), affine, dwi_img.header),
                     dwi_path)

            member = sim["member"]
            nawm = (tissue == _WM) & ~lesion
            left = mni[:, 0] < 0
            regions = {"NAWM": nawm, "NAWM_left": nawm & left, "NAWM_right": nawm & ~left}
            regions.update({name: member[:, b] for b, name in enumerate(names)})
            for part, (y_lo, y_hi) in diffusion.CC_PARTS.items():
                regions[f"CC_{part}"] = (regions["CC"] & (mni[:, 1] >= y_lo)
                                         & (mni[:, 1] < y_hi))
            table = diffusion.dwi_truth(sim["evals"], regions)
            fa = diffusion.tensor_metrics(sim["evals"])["fa"]
            profiles, profiles_compartment = {}, {}
            for b, name in enumerate(names):
                inside = member[:, b]
                table[name]["fa_compartment"] = (
                    float(sim["compartment_fa"][inside, b].mean()) if inside.any() else None)
                table[name]["n_crossing_voxels"] = int((inside & (sim["count"] > 1)).sum())
                if name in TRACKED and inside.any():
                    span = _waypoint_span(BUNDLES[name])
                    profiles[name] = _profile(fa[inside], sim["position"][inside, b], span)
                    profiles_compartment[name] = _profile(
                        sim["compartment_fa"][inside, b], sim["position"][inside, b], span)
            labels = np.zeros(tissue.size, np.int16)
            for name in reversed(PRIORITY):  # first of PRIORITY written last, so it wins
                labels[member[:, names.index(name)]] = BUNDLES[name].code
            nib.save(nib.Nifti1Image(labels.reshape(shape), affine),
                     truth_dir / f"{stem}_desc-bundles_dseg.nii.gz")
            nib.save(nib.Nifti1Image(member.reshape(*shape, -1).astype(np.uint8), affine),
                     truth_dir / f"{stem}_desc-bundles_mask.nii.gz")
            visit["dwi"] = {
                "left_nawm_rd_scale": dwi_truth["left_nawm_rd_scale"],
                "snr": dwi_truth.get("snr"),
                "regions": table,
                "profiles_fa": profiles,
                "profiles_fa_compartment": profiles_compartment,
            }
    truth["generator"]["tract_geometry"] = "alternate"
    truth["tract_geometry"] = _description()
    truth_path.write_text(json.dumps(truth, indent=1))
    return root
