"""Synthetic resting-state fMRI: node signals with planted connectivity, BOLD and confounds.

The pieces are pure array functions; writing files is the caller's job.

1. :func:`planted_subnetwork` picks the nodes whose mutual connectivity changes between visits
   (default :data:`DEFAULT_SPEC`: left default mode network, left parietal cortex and right
   parahippocampal region of the Seitzman 2018 atlas — the subnetwork reported to strengthen
   after treatment).
2. :func:`node_covariance` builds a network-structured population correlation matrix and raises
   the planted nodes' mutual correlations by ``planted_delta_r``.
3. :func:`simulate_node_signals` draws node time series with exactly that population
   correlation (BOLD-like low-pass filtered) and returns their realised correlation too: with
   150 volumes the realised matrix differs visibly from the population one, so a simulation's
   truth keeps both and recovered connectomes are compared with the realised one.
4. :func:`simulate_bold` turns node signals into a 4-D image on an MNI grid, with tissue
   baselines, physiological (CSF/WM) noise, rigid head motion artefacts and white noise, and
   returns the fMRIPrep-style confounds table that removes the structured noise.
5. :func:`functional_truth` summarises the ground truth as JSON-serialisable data.

Generative model of an in-mask voxel ``v`` at volume ``t`` (intensities in arbitrary scanner
units)::

    bold[v, t] = b[v]                                   tissue baseline
               + a[v] * s[node(v), t]                   node signal (node-sphere voxels only)
               + c[v] * csf_source[t] + w[v] * wm_source[t]     physiological noise
               + sum_m g[v, m] * motion[t, m]           first-order motion artefact
               + noise_sd * e[v, t]                     white noise, e ~ N(0, 1)

The motion artefact is the first-order Taylor term of the baseline image moved rigidly,
``-grad b(x) . d(x, t)`` with ``d`` the displacement of voxel ``x`` under the six rigid
parameters (small-angle rotations about the MNI origin), so it is *linear* in the six motion
parameters: regressing them out removes it exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import signal as sps
from scipy.spatial import cKDTree

from msimaging.errors import InputError, MSImagingWarning

__all__ = [
    "BASELINE_INTENSITY",
    "CONFOUND_COLUMNS",
    "DEFAULT_SPEC",
    "NodeGroup",
    "SubnetworkSpec",
    "framewise_displacement",
    "functional_truth",
    "node_covariance",
    "node_sphere_labels",
    "planted_groups",
    "planted_subnetwork",
    "simulate_bold",
    "simulate_node_signals",
]

_INF = math.inf

#: Baseline BOLD intensity (arbitrary units) of pure tissue; partial-volume voxels mix them by
#: their tissue probabilities; in-mask voxels without any tissue probability get "other".
BASELINE_INTENSITY: dict[str, float] = {"gm": 1000.0, "wm": 800.0, "csf": 1300.0, "other": 600.0}

_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")

#: Columns of the confounds table returned by :func:`simulate_bold`, named as in fMRIPrep.
CONFOUND_COLUMNS: tuple[str, ...] = (
    *_MOTION,
    "framewise_displacement",
    "csf",
    "white_matter",
    "global_signal",
    *(f"{name}_derivative1" for name in _MOTION),
)

# Tissue-mean confounds: voxels at least this probable, outside node spheres (fMRIPrep uses
# thresholded, eroded tissue masks); a probability-weighted mean if fewer than _MIN_VOXELS.
_TISSUE_THRESHOLD = 0.9
_MIN_VOXELS = 10


# --------------------------------------------------------------------------------------------
# Planted subnetwork
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeGroup:
    """A rule selecting atlas nodes; all given conditions must hold (intervals are closed).

    Parameters
    ----------
    name : str
        Label of the group (used in breakdowns and the truth file).
    networks : tuple of str, default ()
        The node's ``network`` must contain one of these substrings (case-insensitive);
        empty means any network.
    exclude_networks : tuple of str, default ()
        ... and none of these substrings.
    structures : tuple of str, default ()
        Allowed ``structure`` labels (exact); empty means any. Needs a ``structure`` column.
    hemisphere : {"L", "R", None}, default None
        Required value of the ``hemisphere`` column, if given.
    x_mm, y_mm, z_mm : tuple of float, default (-inf, inf)
        Closed MNI coordinate intervals (mm).
    abs_x_mm : tuple of float, default (0, inf)
        Closed interval for ``|x_mm|`` (distance from the midline).
    fallback_mni : tuple of float or None, default None
        If no node satisfies the rule, take the single node nearest to this MNI point among the
        nodes of ``hemisphere`` (all nodes if ``hemisphere`` is None). None: the group may be
        empty.
    """

    name: str
    networks: tuple[str, ...] = ()
    exclude_networks: tuple[str, ...] = ()
    structures: tuple[str, ...] = ()
    hemisphere: str | None = None
    x_mm: tuple[float, float] = (-_INF, _INF)
    y_mm: tuple[float, float] = (-_INF, _INF)
    z_mm: tuple[float, float] = (-_INF, _INF)
    abs_x_mm: tuple[float, float] = (0.0, _INF)
    fallback_mni: tuple[float, float, float] | None = None

    def mask(self, atlas: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the atlas rows satisfying the rule (no fallback).

        Parameters
        ----------
        atlas : pandas.DataFrame
            Node table with ``x_mm``, ``y_mm``, ``z_mm`` and, as the rule needs them,
            ``network``, ``structure`` and ``hemisphere`` columns.

        Returns
        -------
        ndarray of bool, shape (n_nodes,)
        """
        x, y, z = (atlas[c].to_numpy(float) for c in ("x_mm", "y_mm", "z_mm"))
        keep = (
            _between(x, self.x_mm)
            & _between(y, self.y_mm)
            & _between(z, self.z_mm)
            & _between(np.abs(x), self.abs_x_mm)
        )
        if self.networks or self.exclude_networks:
            net = atlas["network"].astype(str).str.lower()
            if self.networks:
                keep &= _contains_any(net, self.networks)
            if self.exclude_networks:
                keep &= ~_contains_any(net, self.exclude_networks)
        if self.structures:
            keep &= atlas["structure"].isin(self.structures).to_numpy()
        if self.hemisphere is not None:
            keep &= (atlas["hemisphere"] == self.hemisphere).to_numpy()
        return keep


def _between(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return (values >= bounds[0]) & (values <= bounds[1])


def _contains_any(names: pd.Series, parts: tuple[str, ...]) -> np.ndarray:
    hits = np.zeros(len(names), bool)
    for part in parts:
        hits |= names.str.contains(part.lower(), regex=False).to_numpy()
    return hits


@dataclass(frozen=True)
class SubnetworkSpec:
    """Which nodes form the planted subnetwork: the union of some :class:`NodeGroup` rules.

    Parameters
    ----------
    groups : tuple of NodeGroup
    description : str
    """

    groups: tuple[NodeGroup, ...]
    description: str = ""


#: The default planted subnetwork on the Seitzman 2018 atlas (26 nodes):
#:
#: - ``left_dmn`` (18): network contains "DefaultMode", left cortex (``structure`` cortexL),
#:   ``x_mm <= -15`` — lateral left DMN; the midline DMN nodes (|x| < 15 mm) are left out so
#:   the group is lateralised and the subnetwork stays near 25 nodes;
#: - ``left_parietal`` (6): left hemisphere, ``y_mm <= -40``, ``z_mm >= 25``, in a
#:   FrontoParietal or DorsalAttention network (not DMN) — intraparietal/superior parietal;
#: - ``right_parahippocampal`` (2): right hemisphere, ``15 <= |x_mm| <= 40``,
#:   ``-45 <= y_mm <= -10``, ``-30 <= z_mm <= 0``, structure cortexR/hippocampus/amygdala
#:   (not cerebellum) — the medial temporal lobe around the parahippocampal gyrus; if empty,
#:   the right-hemisphere node nearest MNI (25, -30, -15).
DEFAULT_SPEC = SubnetworkSpec(
    groups=(
        NodeGroup(
            name="left_dmn",
            networks=("DefaultMode",),
            structures=("cortexL",),
            hemisphere="L",
            x_mm=(-_INF, -15.0),
        ),
        NodeGroup(
            name="left_parietal",
            networks=("FrontoParietal", "DorsalAttention"),
            exclude_networks=("DefaultMode",),
            hemisphere="L",
            y_mm=(-_INF, -40.0),
            z_mm=(25.0, _INF),
        ),
        NodeGroup(
            name="right_parahippocampal",
            structures=("cortexR", "hippocampus", "amygdala"),
            hemisphere="R",
            abs_x_mm=(15.0, 40.0),
            y_mm=(-45.0, -10.0),
            z_mm=(-30.0, 0.0),
            fallback_mni=(25.0, -30.0, -15.0),
        ),
    ),
    description="left default mode network + left parietal + right parahippocampal region",
)


def _check_atlas(atlas: pd.DataFrame, name: str = "atlas", columns=("x_mm", "y_mm", "z_mm")):
    if not isinstance(atlas, pd.DataFrame):
        raise InputError(
            f"{name} must be a pandas DataFrame of nodes (e.g. from "
            f"msimaging.atlases.coordinates.load_seitzman_2018()), got {type(atlas).__name__}."
        )
    missing = [c for c in columns if c not in atlas.columns]
    if missing:
        raise InputError(
            f"{name} lacks the column(s) {missing}: pass a node table with {list(columns)} "
            "(msimaging.atlases.coordinates loaders provide them)."
        )
    if len(atlas) < 2:
        raise InputError(f"{name} has {len(atlas)} node(s): a connectome needs at least 2.")


def planted_groups(atlas: pd.DataFrame, spec: SubnetworkSpec = DEFAULT_SPEC) -> dict:
    """Nodes selected by each group of a subnetwork spec.

    Parameters
    ----------
    atlas : pandas.DataFrame
        Node table (see :func:`msimaging.atlases.coordinates.load_seitzman_2018`).
    spec : SubnetworkSpec, default DEFAULT_SPEC

    Returns
    -------
    dict of str to ndarray of int
        Sorted row positions (equal to ``node`` for msimaging's atlas tables) per group name.
    """
    _check_atlas(atlas)
    if not isinstance(spec, SubnetworkSpec) or not spec.groups:
        raise InputError("spec must be a SubnetworkSpec with at least one NodeGroup.")
    out = {}
    for group in spec.groups:
        try:
            mask = group.mask(atlas)
        except KeyError as exc:
            raise InputError(
                f"spec group {group.name!r} needs the atlas column {exc.args[0]!r}: use a "
                "node table that has it or drop that condition from the group."
            ) from None
        nodes = np.flatnonzero(mask)
        if nodes.size == 0 and group.fallback_mni is not None:
            pool = np.ones(len(atlas), bool)
            if group.hemisphere is not None:
                pool = (atlas["hemisphere"] == group.hemisphere).to_numpy()
            xyz = atlas[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
            dist = np.linalg.norm(xyz - np.asarray(group.fallback_mni, float), axis=1)
            nodes = np.array([np.flatnonzero(pool)[np.argmin(dist[pool])]])
        out[group.name] = nodes
    return out


def planted_subnetwork(
    atlas: pd.DataFrame, spec: SubnetworkSpec = DEFAULT_SPEC, n_nodes: int | None = None
) -> np.ndarray:
    """Row positions of the planted subnetwork's nodes (union of the spec's groups).

    Parameters
    ----------
    atlas : pandas.DataFrame
        Node table with ``x_mm``, ``y_mm``, ``z_mm`` and the columns the spec uses
        (``network``, ``structure``, ``hemisphere`` for :data:`DEFAULT_SPEC`).
    spec : SubnetworkSpec, default DEFAULT_SPEC
        The selection rules; pass your own to plant another subnetwork.
    n_nodes : int, optional
        Keep only this many of the spec's nodes (2 <= ``n_nodes`` <= the spec's node count):
        the ``n_nodes`` nodes of the union nearest (Euclidean distance of their MNI
        coordinates) to the centroid of the spec's largest group (the first in spec order on a
        tie), distance ties broken by the lower row position. Deterministic, and it keeps a
        compact subnetwork: with :data:`DEFAULT_SPEC` on Seitzman 2018 and ``n_nodes=14``,
        11 of the 18 lateral left default-mode nodes and 3 of the 6 left parietal ones.
        None keeps every node.

    Returns
    -------
    ndarray of int
        Sorted unique row positions (26 nodes for :data:`DEFAULT_SPEC` on Seitzman 2018).

    Raises
    ------
    InputError
        If the selection is empty, ``n_nodes`` is out of range, or the atlas lacks a column
        the spec needs.
    """
    groups = planted_groups(atlas, spec)
    nodes = np.unique(np.concatenate([g for g in groups.values()]))
    if nodes.size < 2:
        raise InputError(
            f"spec selects {nodes.size} node(s) of the atlas: a planted subnetwork needs at "
            "least 2; widen the groups' coordinate intervals or networks."
        )
    if n_nodes is None:
        return nodes.astype(np.intp)
    if (isinstance(n_nodes, bool) or not isinstance(n_nodes, int | np.integer)
            or not 2 <= n_nodes <= nodes.size):
        raise InputError(
            f"n_nodes (subnetwork_nodes) must be an integer from 2 to {nodes.size} (the nodes "
            f"the spec selects), got {n_nodes!r}; use None to plant every node of the spec."
        )
    largest = max(groups.values(), key=len)  # max keeps the first of equal-sized groups
    xyz = atlas[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    centroid = xyz[largest].mean(axis=0)
    dist = np.linalg.norm(xyz[nodes] - centroid, axis=1)
    order = np.lexsort((nodes, dist))  # by distance, then by row position
    return np.sort(nodes[order[: int(n_nodes)]]).astype(np.intp)


# --------------------------------------------------------------------------------------------
# Population correlation and node signals
# --------------------------------------------------------------------------------------------
def _check_r(name: str, value: float) -> float:
    value = float(value)
    if not -1.0 < value < 1.0:
        raise InputError(f"{name} must lie strictly between -1 and 1, got {value}.")
    return value


def node_covariance(
    atlas: pd.DataFrame,
    *,
    within_network_r: float = 0.35,
    between_network_r: float = 0.05,
    planted_nodes=None,
    planted_delta_r: float = 0.0,
    min_eigenvalue: float = 1e-3,
) -> np.ndarray:
    """Network-structured population correlation matrix with a planted change.

    Parameters
    ----------
    atlas : pandas.DataFrame
        Node table with a ``network`` column. Nodes whose network is ``"unassigned"``
        (case-insensitive) or missing are each their own network.
    within_network_r : float, default 0.35
        Correlation between two nodes of the same network.
    between_network_r : float, default 0.05
        Correlation between nodes of different networks.
    planted_nodes : array-like of int, optional
        Row positions of the planted subnetwork (see :func:`planted_subnetwork`).
    planted_delta_r : float, default 0.0
        Added to the correlation of every pair of distinct planted nodes.
    min_eigenvalue : float, default 1e-3
        Smallest eigenvalue accepted as positive definite.

    Returns
    -------
    ndarray of float, shape (n_nodes, n_nodes)
        Symmetric, unit diagonal, positive definite.

    Warns
    -----
    MSImagingWarning
        If the matrix was not positive definite and was shrunk towards the identity,
        ``(1 - lam) * C + lam * I`` with the smallest ``lam`` reaching ``min_eigenvalue``;
        every off-diagonal value is then scaled by ``1 - lam`` (so the planted change is too).
    """
    _check_atlas(atlas, columns=("network",))
    within = _check_r("within_network_r", within_network_r)
    between = _check_r("between_network_r", between_network_r)
    delta = float(planted_delta_r)
    n = len(atlas)
    names = atlas["network"].astype(str).str.strip()
    unassigned = (
        names.str.lower().isin(["unassigned", "nan", "none", ""]) | atlas["network"].isna()
    ).to_numpy()
    codes = pd.factorize(names)[0].astype(np.int64)
    codes[unassigned] = -1 - np.arange(unassigned.sum())  # singleton networks
    same = codes[:, None] == codes[None, :]
    cov = np.where(same, within, between)
    if planted_nodes is not None:
        planted = _check_nodes(planted_nodes, n)
        cov[np.ix_(planted, planted)] += delta
    np.fill_diagonal(cov, 1.0)
    off = cov[~np.eye(n, dtype=bool)]
    if np.any(np.abs(off) >= 1.0):
        raise InputError(
            f"planted_delta_r={delta} pushes planted correlations to {off.max():.3f} (|r| must "
            "stay below 1): lower planted_delta_r or within/between_network_r."
        )
    lowest = float(np.linalg.eigvalsh(cov)[0])
    if lowest < min_eigenvalue:
        lam = (min_eigenvalue - lowest) / (1.0 - lowest)
        warnings.warn(
            f"The correlation matrix was not positive definite (smallest eigenvalue "
            f"{lowest:.4f}); shrunk towards the identity by {lam:.4f}, which scales every "
            "off-diagonal correlation (and the planted change) by the same factor.",
            MSImagingWarning,
            stacklevel=2,
        )
        cov = (1.0 - lam) * cov + lam * np.eye(n)
    return cov


def _check_nodes(nodes, n: int) -> np.ndarray:
    nodes = np.unique(np.asarray(nodes, dtype=np.int64).ravel())
    if nodes.size and (nodes.min() < 0 or nodes.max() >= n):
        raise InputError(
            f"planted_nodes must be row positions in 0..{n - 1}, got values from {nodes.min()} "
            f"to {nodes.max()}."
        )
    return nodes


def _lowpass(data: np.ndarray, tr_s: float, lowpass_hz: float | None) -> np.ndarray:
    nyquist_hz = 0.5 / tr_s
    if lowpass_hz is None or lowpass_hz >= nyquist_hz or data.shape[0] < 4:
        return data
    sos = sps.butter(2, lowpass_hz, btype="low", fs=1.0 / tr_s, output="sos")
    # Zero-phase, the same linear operator on every column: lag-0 cross-correlations are kept.
    return sps.sosfiltfilt(sos, data, axis=0, padlen=min(9, data.shape[0] - 1))


def _standardise(data: np.ndarray) -> np.ndarray:
    data = data - data.mean(axis=0)
    return data / data.std(axis=0)


def simulate_node_signals(
    cov: np.ndarray,
    n_volumes: int,
    tr_s: float,
    rng: np.random.Generator | int | None = None,
    *,
    lowpass_hz: float | None = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian node time series with a given population correlation.

    White Gaussian vectors ``z_t ~ N(0, cov)`` (Cholesky factor) are low-pass filtered in time
    with one zero-phase Butterworth filter (order 2) applied identically to every node, so the
    population correlation at every volume stays exactly ``cov`` while the series get BOLD-like
    autocorrelation. Each series is then standardised (mean 0, SD 1).

    Parameters
    ----------
    cov : ndarray, shape (n_nodes, n_nodes)
        Population correlation (symmetric positive definite, unit diagonal).
    n_volumes : int
        Number of volumes T (>= 3).
    tr_s : float
        Repetition time in seconds.
    rng : numpy.random.Generator or int or None
        Random generator or seed.
    lowpass_hz : float or None, default 0.1
        Cut-off frequency in Hz; None (or >= Nyquist) disables filtering.

    Returns
    -------
    signals : ndarray of float, shape (n_volumes, n_nodes)
        Standardised node signals.
    realised : ndarray of float, shape (n_nodes, n_nodes)
        Their sample correlation (what a perfect extraction would recover).
    """
    cov = np.asarray(cov, dtype=float)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or cov.shape[0] < 2:
        raise InputError(f"cov must be a square (n_nodes, n_nodes) matrix, got {cov.shape}.")
    if not np.allclose(cov, cov.T) or not np.allclose(np.diag(cov), 1.0):
        raise InputError("cov must be a symmetric correlation matrix with unit diagonal.")
    n_volumes = int(n_volumes)
    if n_volumes < 3:
        raise InputError(f"n_volumes must be at least 3, got {n_volumes}.")
    if not tr_s > 0:
        raise InputError(f"tr_s must be a positive repetition time in seconds, got {tr_s}.")
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise InputError(
            "cov is not positive definite: build it with node_covariance(), which guarantees it."
        ) from None
    rng = np.random.default_rng(rng)
    white = rng.standard_normal((n_volumes, cov.shape[0])) @ chol.T
    signals = _standardise(_lowpass(white, float(tr_s), lowpass_hz))
    realised = np.corrcoef(signals, rowvar=False)
    return signals, realised


# --------------------------------------------------------------------------------------------
# BOLD
# --------------------------------------------------------------------------------------------
def framewise_displacement(motion, head_radius_mm: float = 50.0) -> np.ndarray:
    """Framewise displacement (Power et al. 2012).

    ``FD_t = |dtx| + |dty| + |dtz| + r (|drx| + |dry| + |drz|)`` with ``d`` the backward
    difference and rotations converted to arc length on a sphere of radius ``r``.

    Parameters
    ----------
    motion : array-like, shape (T, 6)
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad).
    head_radius_mm : float, default 50.0

    Returns
    -------
    ndarray, shape (T,)
        FD in mm; the first value is NaN (n/a, as in fMRIPrep).
    """
    motion = np.asarray(motion, dtype=float)
    if motion.ndim != 2 or motion.shape[1] != 6:
        raise InputError(f"motion must have shape (T, 6), got {motion.shape}.")
    step = np.abs(np.diff(motion, axis=0))
    fd = step[:, :3].sum(axis=1) + head_radius_mm * step[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def _voxel_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def node_sphere_labels(
    mask_mni: np.ndarray,
    affine: np.ndarray,
    atlas: pd.DataFrame,
    *,
    sphere_radius_mm: float = 6.0,
) -> np.ndarray:
    """Which node's sphere each in-mask voxel belongs to.

    Parameters
    ----------
    mask_mni : ndarray of bool, 3-D
        Brain mask on the MNI grid.
    affine : ndarray, shape (4, 4)
        Voxel to MNI mm.
    atlas : pandas.DataFrame
        Node table with ``x_mm``, ``y_mm``, ``z_mm``.
    sphere_radius_mm : float, default 6.0
        Voxel centres within this distance of a node centre belong to it; where spheres
        overlap, to the nearest node.

    Returns
    -------
    ndarray of int32, same shape as ``mask_mni``
        Row position of the node, -1 outside every sphere (and outside the mask).
    """
    mask = _check_mask(mask_mni)
    affine = _check_affine(affine)
    _check_atlas(atlas)
    labels = np.full(mask.shape, -1, np.int32)
    labels[mask] = _sphere_index(mask, affine, atlas, float(sphere_radius_mm))
    return labels


def _sphere_index(mask, affine, atlas, radius_mm: float) -> np.ndarray:
    if not radius_mm > 0:
        raise InputError(f"sphere_radius_mm must be positive, got {radius_mm}.")
    tree = cKDTree(atlas[["x_mm", "y_mm", "z_mm"]].to_numpy(float))
    dist, idx = tree.query(_voxel_mm(mask, affine), k=1, distance_upper_bound=radius_mm)
    return np.where(np.isfinite(dist), idx, -1).astype(np.int32)


def _check_mask(mask_mni) -> np.ndarray:
    mask = np.asarray(mask_mni)
    if mask.ndim != 3:
        raise InputError(f"mask_mni must be a 3-D array, got {mask.ndim} dimension(s).")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise InputError("mask_mni must be boolean (or 0/1): threshold it first.")
        mask = mask.astype(bool)
    if not mask.any():
        raise InputError("mask_mni is empty: pass a brain mask with at least one voxel.")
    return mask


def _check_affine(affine) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}.")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError("affine is singular: pass the voxel-to-MNI affine of the grid.")
    return affine


def _smooth_source(rng, n_volumes: int, tr_s: float) -> np.ndarray:
    # Physiological fluctuations: low-frequency noise (< 0.15 Hz) plus a slow sinusoid
    # (aliased respiration / vasomotion), standardised.
    low = _lowpass(rng.standard_normal((n_volumes, 1)), tr_s, 0.15)[:, 0]
    t_s = np.arange(n_volumes) * tr_s
    slow = np.sin(2 * np.pi * rng.uniform(0.01, 0.04) * t_s + rng.uniform(0, 2 * np.pi))
    return _standardise((low / low.std() + slow)[:, None])[:, 0]


def _motion_parameters(rng, n_volumes: int, motion_scale: float) -> np.ndarray:
    # Random walks: ~0.03 mm and ~0.0006 rad (0.03 mm at 50 mm) steps, with rare jerks.
    step_sd = np.array([0.03, 0.03, 0.03, 6e-4, 6e-4, 6e-4])
    steps = rng.standard_normal((n_volumes, 6)) * step_sd
    jerks = rng.random((n_volumes, 1)) < 0.02
    steps += jerks * rng.standard_normal((n_volumes, 6)) * step_sd * 8.0
    steps[0] = 0.0
    return np.cumsum(steps, axis=0) * motion_scale


def _motion_loadings(baseline_vol, mask, affine, xyz_mm) -> np.ndarray:
    """(V, 6) d(intensity)/d(motion parameter): first-order effect of a rigid displacement."""
    grad_ijk = np.stack([g[mask] for g in np.gradient(baseline_vol)], axis=1)
    grad_mm = grad_ijk @ np.linalg.inv(affine[:3, :3])  # dI/dx_world = dI/dijk . dijk/dx
    gx, gy, gz = grad_mm.T
    x, y, z = xyz_mm.T
    # Displacements for small rotations about the x, y, z axes: (0,-z,y), (z,0,-x), (-y,x,0).
    return -np.stack([gx, gy, gz, -gy * z + gz * y, gx * z - gz * x, -gx * y + gy * x], axis=1)


def _tissue_mean_weights(prob: np.ndarray, outside_spheres: np.ndarray, name: str):
    weights = ((prob >= _TISSUE_THRESHOLD) & outside_spheres).astype(float)
    if weights.sum() < _MIN_VOXELS:
        weights = prob * outside_spheres
    if not weights.sum() > 0:
        raise InputError(
            f"tissue_probs[{name!r}] is zero in every in-mask voxel outside the node spheres: "
            "the confound cannot be computed; pass real tissue probabilities."
        )
    return weights / weights.sum()


def simulate_bold(
    mask_mni: np.ndarray,
    affine: np.ndarray,
    tissue_probs: Mapping[str, np.ndarray],
    atlas: pd.DataFrame,
    node_signals: np.ndarray,
    *,
    sphere_radius_mm: float = 6.0,
    tr_s: float = 2.0,
    signal_pct: float = 1.0,
    physio_pct: float = 1.0,
    motion_scale: float = 1.0,
    noise_sd: float = 10.0,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Synthesise a preprocessed (MNI-space) BOLD run and its fMRIPrep-style confounds.

    See the module docstring for the generative model. Everything is vectorised over voxels:
    one (V, 8) x (8, T) product for the physiological and motion terms and one gather for the
    node signals; memory is about two float32 arrays of T x V.

    Parameters
    ----------
    mask_mni : ndarray of bool, 3-D
        Brain mask on the MNI functional grid; voxels outside stay 0.
    affine : ndarray, shape (4, 4)
        Voxel to MNI mm of the grid.
    tissue_probs : mapping with keys "gm", "wm", "csf"
        3-D tissue probability maps on the same grid (0–1).
    atlas : pandas.DataFrame
        Node table (``x_mm``, ``y_mm``, ``z_mm``), one row per column of ``node_signals``.
    node_signals : ndarray, shape (T, n_nodes)
        Node time series (e.g. from :func:`simulate_node_signals`), standardised.
    sphere_radius_mm : float, default 6.0
        In-mask voxels within this distance of a node centre carry the node's signal (the
        nearest node where spheres overlap; see :func:`node_sphere_labels`).
    tr_s : float, default 2.0
        Repetition time (s).
    signal_pct : float, default 1.0
        Node-signal SD in percent of the voxel's baseline.
    physio_pct : float, default 1.0
        Scale of the physiological noise in percent of the baseline: a voxel's loading on the
        CSF source is ``physio_pct * (1 + 2 p_csf) * u`` % and on the WM source
        ``physio_pct * (1 + p_wm) * u'`` %, with ``u, u'`` log-normal voxel factors (median 1).
    motion_scale : float, default 1.0
        Multiplies the motion parameters (0 = no motion). At 1, FD is about 0.1–0.2 mm with
        rare jerks of ~0.5 mm.
    noise_sd : float, default 10.0
        SD of the voxel white noise (1 % of the GM baseline of 1000).
    rng : numpy.random.Generator or int or None
        Random generator or seed.

    Returns
    -------
    bold : ndarray of float32, shape (*mask_mni.shape, T)
    confounds : pandas.DataFrame
        :data:`CONFOUND_COLUMNS`. ``trans_*`` in mm, ``rot_*`` in rad (the true parameters),
        ``framewise_displacement`` in mm (Power 2012, 50 mm radius; NaN first row),
        ``*_derivative1`` backward differences (NaN first row). ``csf`` and ``white_matter``
        are, as in fMRIPrep, the mean BOLD signal of the tissue's voxels — those with
        probability >= 0.9, outside every node sphere (a probability-weighted mean if fewer than
        10 such voxels) — so they contain the physiological sources plus a little averaged
        white noise and motion; ``global_signal`` is the mean over the mask. Regressing the six
        motion parameters, ``csf`` and ``white_matter`` (and an intercept) out of the voxels
        removes the physiological and motion terms up to the tissue means' averaged noise.
    """
    mask = _check_mask(mask_mni)
    affine = _check_affine(affine)
    _check_atlas(atlas)
    probs = {}
    for key in ("gm", "wm", "csf"):
        if key not in tissue_probs:
            raise InputError(
                f"tissue_probs lacks {key!r}: pass a mapping with 'gm', 'wm' and 'csf' "
                "probability maps on the mask's grid."
            )
        prob = np.asarray(tissue_probs[key], dtype=np.float32)
        if prob.shape != mask.shape:
            raise InputError(
                f"tissue_probs[{key!r}] has shape {prob.shape} but mask_mni has {mask.shape}: "
                "resample the tissue maps onto the functional grid."
            )
        if not np.isfinite(prob[mask]).all():
            raise InputError(f"tissue_probs[{key!r}] has non-finite values inside the mask.")
        probs[key] = np.clip(prob[mask], 0.0, 1.0)
    signals = np.asarray(node_signals, dtype=np.float32)
    if signals.ndim != 2 or signals.shape[1] != len(atlas) or signals.shape[0] < 2:
        raise InputError(
            f"node_signals must have shape (T >= 2, n_nodes={len(atlas)}), got {signals.shape}."
        )
    if not np.isfinite(signals).all():
        raise InputError("node_signals has non-finite values.")
    for name, value in (
        ("signal_pct", signal_pct),
        ("physio_pct", physio_pct),
        ("motion_scale", motion_scale),
        ("noise_sd", noise_sd),
    ):
        if not (np.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {value}.")
    if not tr_s > 0:
        raise InputError(f"tr_s must be a positive repetition time in seconds, got {tr_s}.")
    rng = np.random.default_rng(rng)
    n_volumes = signals.shape[0]

    xyz_mm = _voxel_mm(mask, affine)
    total = probs["gm"] + probs["wm"] + probs["csf"]
    mixed = sum(probs[k] * BASELINE_INTENSITY[k] for k in ("gm", "wm", "csf"))
    baseline = np.where(
        total > 0, mixed / np.maximum(total, 1e-6), BASELINE_INTENSITY["other"]
    ).astype(np.float32)
    baseline_vol = np.zeros(mask.shape, np.float32)
    baseline_vol[mask] = baseline

    # Structured noise: sources (T, 8) and voxel loadings (V, 8).
    motion = _motion_parameters(rng, n_volumes, float(motion_scale))
    physio = np.stack([_smooth_source(rng, n_volumes, tr_s) for _ in range(2)], axis=1)
    voxel_factor = rng.lognormal(0.0, 0.3, size=(mask.sum(), 2))
    physio_loadings = (physio_pct / 100.0) * baseline[:, None] * voxel_factor
    physio_loadings[:, 0] *= 1.0 + 2.0 * probs["csf"]
    physio_loadings[:, 1] *= 1.0 + probs["wm"]
    loadings = np.concatenate(
        [_motion_loadings(baseline_vol, mask, affine, xyz_mm), physio_loadings], axis=1
    ).astype(np.float32)
    sources = np.concatenate([motion, physio], axis=1).astype(np.float32)

    data = rng.standard_normal((xyz_mm.shape[0], n_volumes), dtype=np.float32)
    data *= np.float32(noise_sd)
    data += baseline[:, None]
    data += loadings @ sources.T
    node = _sphere_index(mask, affine, atlas, float(sphere_radius_mm))
    inside = np.flatnonzero(node >= 0)
    amplitude = (signal_pct / 100.0) * baseline[inside]
    data[inside] += amplitude[:, None].astype(np.float32) * signals[:, node[inside]].T

    outside = node < 0
    confounds = pd.DataFrame(motion, columns=list(_MOTION))
    confounds["framewise_displacement"] = framewise_displacement(motion)
    confounds["csf"] = _tissue_mean_weights(probs["csf"], outside, "csf") @ data
    confounds["white_matter"] = _tissue_mean_weights(probs["wm"], outside, "wm") @ data
    confounds["global_signal"] = data.mean(axis=0, dtype=np.float64)
    derivatives = np.vstack([np.full((1, 6), np.nan), np.diff(motion, axis=0)])
    for column, values in zip(_MOTION, derivatives.T, strict=True):
        confounds[f"{column}_derivative1"] = values
    confounds = confounds[list(CONFOUND_COLUMNS)]

    bold = np.zeros((*mask.shape, n_volumes), np.float32)
    bold[mask] = data
    return bold, confounds


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------
def _edge_summary(matrix: np.ndarray, rows, cols, other) -> dict:
    planted = matrix[..., rows, cols]
    rest = matrix[..., other[0], other[1]]
    return {
        "planted_mean_r": float(planted.mean()),
        "planted_sd_r": float(planted.std()),
        "other_mean_r": float(rest.mean()),
        "other_sd_r": float(rest.std()),
    }


def functional_truth(
    atlas: pd.DataFrame,
    planted_nodes,
    cov_by_visit: Mapping[str, np.ndarray],
    realised_by_visit: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """JSON-serialisable ground truth of a functional simulation.

    Parameters
    ----------
    atlas : pandas.DataFrame
        Node table.
    planted_nodes : array-like of int
        Row positions of the planted subnetwork.
    cov_by_visit : mapping of str to ndarray (n_nodes, n_nodes)
        Population correlation per visit (e.g. ``{"M0": ..., "M3": ..., "M6": ...}``).
    realised_by_visit : mapping of str to ndarray, optional
        Realised node-signal correlations, keyed by any label (a visit, or
        ``"sub-01_ses-M0"``); a value is (n_nodes, n_nodes) or a stack
        (n_subjects, n_nodes, n_nodes), summarised over the stack.

    Returns
    -------
    dict
        ``nodes`` (one record per node: ``node``, coordinates, ``network``, ``structure``,
        ``hemisphere`` when present, and ``planted``), ``planted_nodes``, ``planted_edges``
        (pairs ``[i, j]``, ``i < j``, among planted nodes), ``population`` (per visit:
        ``planted_edge_r`` in the order of ``planted_edges``, ``planted_mean_r``,
        ``other_mean_r`` and ``planted_change_r`` from the first visit) and ``realised`` (per
        key: mean/SD of planted and other edges, and ``planted_edge_r`` averaged over a stack).
    """
    _check_atlas(atlas)
    n = len(atlas)
    planted = _check_nodes(planted_nodes, n)
    rows, cols = np.triu_indices(n, k=1)
    is_planted = np.zeros(n, bool)
    is_planted[planted] = True
    planted_edge = is_planted[rows] & is_planted[cols]
    p_rows, p_cols = rows[planted_edge], cols[planted_edge]
    other = (rows[~planted_edge], cols[~planted_edge])

    def _matrix(name, key, value, stacked: bool) -> np.ndarray:
        value = np.asarray(value, dtype=float)
        ok = value.shape[-2:] == (n, n) and value.ndim in ((2, 3) if stacked else (2,))
        if not ok or not np.isfinite(value).all():
            raise InputError(
                f"{name}[{key!r}] must be a finite ({n}, {n}) matrix"
                f"{' or a stack of them' if stacked else ''}, got shape {value.shape}."
            )
        return value

    columns = [
        c
        for c in (
            "node",
            "x_mm",
            "y_mm",
            "z_mm",
            "radius_mm",
            "network",
            "structure",
            "hemisphere",
        )
        if c in atlas.columns
    ]
    records = atlas[columns].astype(object).to_dict(orient="records")
    nodes = [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in rec.items()}
        | {"planted": bool(flag)}
        for rec, flag in zip(records, is_planted, strict=True)
    ]
    population = {}
    first = None
    for key, value in cov_by_visit.items():
        cov = _matrix("cov_by_visit", key, value, stacked=False)
        summary = _edge_summary(cov, p_rows, p_cols, other)
        first = summary["planted_mean_r"] if first is None else first
        population[str(key)] = {
            "planted_edge_r": cov[p_rows, p_cols].tolist(),
            "planted_mean_r": summary["planted_mean_r"],
            "other_mean_r": summary["other_mean_r"],
            "planted_change_r": summary["planted_mean_r"] - first,
        }
    realised = {}
    for key, value in (realised_by_visit or {}).items():
        mat = _matrix("realised_by_visit", key, value, stacked=True)
        realised[str(key)] = _edge_summary(mat, p_rows, p_cols, other) | {
            "planted_edge_r": mat[..., p_rows, p_cols]
            .reshape(-1, p_rows.size)
            .mean(axis=0)
            .tolist(),
            "n_matrices": int(mat.reshape(-1, n, n).shape[0]),
        }
    return {
        "atlas": str(atlas.attrs.get("atlas", "unknown")),
        "n_nodes": int(n),
        "nodes": nodes,
        "planted_nodes": planted.tolist(),
        "planted_edges": np.stack([p_rows, p_cols], axis=1).tolist(),
        "n_planted_edges": int(p_rows.size),
        "population": population,
        "realised": realised,
    }
