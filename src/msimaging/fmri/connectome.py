"""Functional connectomes: estimation, tidy tables, graphs, graph metrics and BIDS files.

:func:`connectivity` turns node time series (a :class:`~msimaging.fmri.timeseries.TimeSeries`,
or any object with ``data`` and ``nodes`` attributes, or a plain ``(n_volumes, n_nodes)`` array)
into a :class:`Connectome`: the weighted adjacency matrix with its node table. The estimate is
nilearn's :class:`~nilearn.connectome.ConnectivityMeasure` (``"correlation"``,
``"partial correlation"``, ``"tangent"`` or ``"covariance"``) and correlations are Fisher
z-transformed by default.

Flagged nodes
-------------
A node whose time series is all NaN (the no-signal nodes that ``extract_timeseries`` flags), that
is ``flagged`` in the node table, or whose signal is constant is *left out of the estimate*: the
matrix is computed from the other nodes only (so the partial correlations are conditioned on
them alone) and the node's row and column are NaN. No NaN ever reaches another edge. Such nodes
are marked ``flagged`` with a ``flag_reason`` in :attr:`Connectome.nodes`, appear with NaN
weights in :meth:`Connectome.to_frame`, are absent from :meth:`Connectome.to_networkx` and get
NaN metrics in :meth:`Connectome.graph_metrics`.

Graph metrics
-------------
Computed on the positive weights above a threshold (bctpy conventions, Rubinov & Sporns 2010):
degree and strength (``bct.degrees_und``, ``bct.strengths_und``), weighted clustering
(``bct.clustering_coef_wu``, Onnela et al. 2005), weighted local efficiency (Wang et al. 2016,
the formula of ``bct.efficiency_wei(local=True)``), weighted global efficiency (the formula of
``bct.efficiency_wei``) and betweenness centrality on connection lengths ``1 / w`` (Brandes
2001). bctpy's efficiencies and betweenness run their shortest paths in pure Python (5–12 s per
measure at 300 nodes), so the same formulas are evaluated here with scipy's compiled Dijkstra
and a Brandes accumulation vectorised over source nodes; the tests check them against bctpy
and networkx.

numpy and pandas are imported at module level; nilearn, scipy, networkx and bctpy inside the
functions that use them.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from msimaging.derivatives import read_relmat, read_table, sidecar_path
from msimaging.errors import DependencyError, InputError, MSImagingWarning
from msimaging.fmri.subnetwork import NODE_COLUMNS, _edge_mask, _node_table

if TYPE_CHECKING:
    import networkx as nx

    from msimaging.derivatives import DerivativesWriter

__all__ = [
    "EDGE_COLUMNS",
    "FISHER_Z_MAX_R",
    "KINDS",
    "METRIC_COLUMNS",
    "NODE_COLUMNS",
    "Connectome",
    "connectivity",
    "load_connectome",
]

#: Accepted ``kind`` values of :func:`connectivity` (nilearn's names).
KINDS: tuple[str, ...] = ("correlation", "partial correlation", "tangent", "covariance")

#: Kinds whose values are correlations, to which the Fisher z-transform applies.
_CORRELATION_KINDS = ("correlation", "partial correlation")

#: Correlations are clipped to ``[-FISHER_Z_MAX_R, FISHER_Z_MAX_R]`` before ``arctanh``, so
#: ``|r| = 1`` (two identical signals) gives ``|z| = arctanh(1 - 1e-7) ≈ 8.4`` instead of inf.
FISHER_Z_MAX_R = 1.0 - 1e-7

#: Columns of :meth:`Connectome.to_frame`.
EDGE_COLUMNS: tuple[str, ...] = (
    "participant_id",
    "session_id",
    "i",
    "j",
    "label_i",
    "label_j",
    "network_i",
    "network_j",
    "hemisphere_i",
    "hemisphere_j",
    "weight",
    "kind",
)

#: Columns of :meth:`Connectome.graph_metrics`.
METRIC_COLUMNS: tuple[str, ...] = (
    "participant_id",
    "session_id",
    "node",
    "label",
    "network",
    "hemisphere",
    "degree",
    "strength",
    "clustering",
    "local_efficiency",
    "betweenness",
    "global_efficiency",
    "density",
)

# BEP017 ``meas`` labels written by Connectome.save (a "z" marks Fisher z values).
_MEAS = {
    "correlation": "pearson",
    "partial correlation": "partialcorr",
    "tangent": "tangent",
    "covariance": "covariance",
}
# Columns write_relmat needs in a node table; added on save, dropped again on load.
_BEP017_NODE_COLUMNS = ("index", "name")
# Source nodes per chunk of the vectorised Brandes betweenness: bounds the (chunk, n, n) array.
_BRANDES_CHUNK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------------
# Node tables
# --------------------------------------------------------------------------------------------
def _flag(nodes: pd.DataFrame, mask: np.ndarray, reason: str) -> None:
    new = mask & ~nodes["flagged"].to_numpy()
    nodes.loc[new, "flagged"] = True
    nodes.loc[new, "flag_reason"] = reason


# --------------------------------------------------------------------------------------------
# Inputs of connectivity()
# --------------------------------------------------------------------------------------------
@dataclass
class _Subject:
    data: np.ndarray
    nodes: pd.DataFrame
    participant_id: str | None
    session_id: str | None
    excluded: np.ndarray


def _per_item(value: Any, n_items: int, argument: str) -> list[Any]:
    if isinstance(value, list | tuple):
        if len(value) != n_items:
            raise InputError(
                f"{argument} has {len(value)} entries but timeseries has {n_items}; give one "
                "per time series or a single value for all."
            )
        return list(value)
    return [value] * n_items


def _subject(item: Any, nodes: Any, participant_id: Any, session_id: Any, where: str) -> _Subject:
    if hasattr(item, "data") and hasattr(item, "nodes"):
        data = item.data
        nodes = item.nodes if nodes is None else nodes
        participant_id = participant_id or getattr(item, "participant_id", None)
        session_id = session_id or getattr(item, "session_id", None)
    else:
        data = item
    try:
        data = np.array(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{where} must be a TimeSeries (with .data and .nodes) or a numeric array of shape "
            f"(n_volumes, n_nodes); it cannot be converted to numbers: {exc}."
        ) from exc
    if data.ndim != 2:
        raise InputError(
            f"{where} must be 2-D (n_volumes, n_nodes), got shape {data.shape}; pass several "
            "subjects or sessions as a list of 2-D arrays."
        )
    n_volumes, n_nodes = data.shape
    if n_volumes < 3 or n_nodes < 2:
        raise InputError(
            f"{where} has shape {data.shape}: connectivity needs at least 3 volumes (rows) and "
            "2 nodes (columns). Transpose it if volumes are in columns."
        )
    table = _node_table(nodes, n_nodes)
    if np.isinf(data).any():
        raise InputError(f"{where} contains infinite values; check the signal extraction.")
    missing = np.isnan(data)
    all_nan = missing.all(axis=0)
    partial = missing.any(axis=0) & ~all_nan
    if partial.any():
        labels = table.loc[partial, "label"].tolist()
        raise InputError(
            f"{where} has NaN in some volumes of {int(partial.sum())} node(s) ({labels[:5]}): a "
            "node must be either fully measured or all NaN (flagged). Drop or interpolate the "
            "bad volumes (scrubbing) for every node at once."
        )
    _flag(table, all_nan, "no signal")
    spread = np.zeros(n_nodes)
    spread[~all_nan] = np.ptp(data[:, ~all_nan], axis=0)
    scale = np.abs(data[:, ~all_nan]).max() if (~all_nan).any() else 0.0
    constant = ~all_nan & (spread <= 1e-12 * (1.0 + scale))
    if constant.any():
        warnings.warn(
            f"{where}: {int(constant.sum())} node(s) have a constant signal "
            f"({table.loc[constant, 'label'].tolist()[:5]}); they are left out of the estimate "
            "and their rows/columns are NaN.",
            MSImagingWarning,
            stacklevel=3,
        )
        _flag(table, constant, "constant signal")
    excluded = table["flagged"].to_numpy(bool).copy()
    if (~excluded).sum() < 2:
        raise InputError(
            f"{where}: only {int((~excluded).sum())} node(s) have a usable signal; "
            "connectivity needs at least 2."
        )
    return _Subject(data, table, participant_id, session_id, excluded)


def _check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}.")
    return kind


def connectivity(
    timeseries: Any,
    kind: str = "correlation",
    *,
    fisher_z: bool = True,
    nodes: pd.DataFrame | Sequence[pd.DataFrame] | None = None,
    participant_id: str | Sequence[str | None] | None = None,
    session_id: str | Sequence[str | None] | None = None,
    cov_estimator: Any = None,
) -> Connectome | list[Connectome]:
    """Estimate functional connectivity between nodes from their time series.

    Parameters
    ----------
    timeseries : TimeSeries, ndarray or list of them
        One session's node time series — an object with ``data`` (``(n_volumes, n_nodes)``;
        flagged no-signal nodes are all-NaN columns) and ``nodes`` (node table) attributes, such
        as :class:`msimaging.fmri.timeseries.TimeSeries`, or a plain numeric array of that
        shape — or a list of them (several sessions or subjects; required for ``"tangent"``).
    kind : {"correlation", "partial correlation", "tangent", "covariance"}
        The measure, as in :class:`nilearn.connectome.ConnectivityMeasure`. ``"tangent"``
        (Varoquaux et al. 2010) projects each matrix onto the tangent space at the group mean
        and needs at least 2 time series in one list.
    fisher_z : bool, default=True
        For ``"correlation"`` and ``"partial correlation"``: return ``z = arctanh(r)`` with the
        diagonal set to 0. Correlations are first clipped to ``±``:data:`FISHER_Z_MAX_R` so that
        ``|r| = 1`` gives ``|z| ≈ 8.4`` rather than infinity. Ignored (recorded as False) for
        ``"tangent"`` and ``"covariance"``.
    nodes : pandas.DataFrame or list of them, optional
        Node table (one row per column: ``node``, ``label``, ``x_mm``, ``y_mm``, ``z_mm``,
        ``hemisphere``, ``network``, ``region``, ``flagged``, ``flag_reason``; missing columns
        get defaults). Overrides the time series' own ``nodes``; required for nothing, but
        plots need coordinates and networks.
    participant_id, session_id : str or list of str, optional
        Identifiers (``"sub-01"``, ``"ses-M0"``) stored in the result; default to the time
        series' own attributes. For a list input, one value for all or one per item.
    cov_estimator : sklearn covariance estimator, optional
        Passed to :class:`~nilearn.connectome.ConnectivityMeasure`. By default
        ``"correlation"`` and ``"covariance"`` use the sample covariance
        (:class:`~sklearn.covariance.EmpiricalCovariance`: plain Pearson r, which Ledoit-Wolf
        shrinkage would bias towards 0, by about 25% at 300 nodes and 150 volumes), while
        ``"partial correlation"`` and ``"tangent"``, which invert the covariance, use
        nilearn's default Ledoit-Wolf shrinkage so that it stays invertible with fewer
        volumes than nodes (partial correlations are then shrunk towards 0 accordingly).

    Returns
    -------
    Connectome or list of Connectome
        One per time series (a list when ``timeseries`` is a list). Nodes that are all-NaN,
        ``flagged`` or constant are left out of the estimate and have NaN rows and columns
        (see the module notes); every other edge is finite.

    Raises
    ------
    InputError
        On an unknown ``kind``, ``"tangent"`` with fewer than 2 time series, arrays that are
        not 2-D, partly-NaN node series, or node tables of the wrong length.

    Warns
    -----
    MSImagingWarning
        When a node's signal is constant (it is then left out like a flagged node).

    Examples
    --------
    >>> conn = connectivity(ts, "partial correlation")  # doctest: +SKIP
    >>> conn.to_frame().head()  # doctest: +SKIP
    """
    kind = _check_kind(kind)
    if not isinstance(fisher_z, bool | np.bool_):
        raise InputError(f"fisher_z must be True or False, got {fisher_z!r}.")
    is_list = isinstance(timeseries, list | tuple)
    items = list(timeseries) if is_list else [timeseries]
    if not items:
        raise InputError("timeseries is an empty list; give at least one time series.")
    if kind == "tangent" and len(items) < 2:
        raise InputError(
            "kind='tangent' needs at least 2 time series passed together as a list in "
            "timeseries (the tangent space is centred on their group mean); got "
            f"{'a list of 1' if is_list else 'a single time series'}. Use kind='correlation' "
            "for one session."
        )
    node_items = (
        _per_item(nodes, len(items), "nodes")
        if isinstance(nodes, list | tuple)
        else [nodes] * len(items)
    )
    pids = _per_item(participant_id, len(items), "participant_id")
    sids = _per_item(session_id, len(items), "session_id")
    subjects = [
        _subject(
            item, node_items[k], pids[k], sids[k], f"timeseries[{k}]" if is_list else "timeseries"
        )
        for k, item in enumerate(items)
    ]
    if kind == "tangent":
        sizes = {s.data.shape[1] for s in subjects}
        if len(sizes) > 1:
            raise InputError(
                f"kind='tangent' needs the same nodes in every time series, got node counts "
                f"{sorted(sizes)}."
            )
        # One common node set: a node flagged in any session is left out of all of them.
        common = np.logical_or.reduce([s.excluded for s in subjects])
        for s in subjects:
            _flag(s.nodes, common & ~s.excluded, "flagged in another session (tangent)")
            s.excluded = common
        if (~common).sum() < 2:
            raise InputError("kind='tangent': fewer than 2 nodes are usable in every session.")
    estimates = _estimate(subjects, kind, cov_estimator)
    apply_z = bool(fisher_z) and kind in _CORRELATION_KINDS
    out = []
    for s, estimate in zip(subjects, estimates, strict=True):
        n = s.data.shape[1]
        keep = ~s.excluded
        if apply_z:
            estimate = np.arctanh(np.clip(estimate, -FISHER_Z_MAX_R, FISHER_Z_MAX_R))
            np.fill_diagonal(estimate, 0.0)
        matrix = np.full((n, n), np.nan)
        matrix[np.ix_(keep, keep)] = estimate
        out.append(
            Connectome(
                matrix=matrix,
                nodes=s.nodes,
                kind=kind,
                fisher_z=apply_z,
                participant_id=s.participant_id,
                session_id=s.session_id,
            )
        )
    return out if is_list else out[0]


def _estimate(subjects: list[_Subject], kind: str, cov_estimator: Any) -> list[np.ndarray]:
    try:
        from nilearn.connectome import ConnectivityMeasure
    except ImportError as exc:  # pragma: no cover - nilearn is a core dependency
        raise DependencyError(
            "connectivity needs nilearn: pip install nilearn (a core dependency of msimaging)."
        ) from exc

    def measure() -> Any:
        from sklearn.base import clone
        from sklearn.covariance import EmpiricalCovariance, LedoitWolf

        if cov_estimator is not None:
            estimator = clone(cov_estimator)
        elif kind in ("correlation", "covariance"):
            # Plain Pearson r / sample covariance: Ledoit-Wolf would shrink every correlation
            # (by ~25% at 300 nodes and 150 volumes).
            estimator = EmpiricalCovariance()
        else:
            # Partial correlation and tangent invert the covariance: shrinkage keeps it
            # invertible when there are fewer volumes than nodes (nilearn's default).
            estimator = LedoitWolf(store_precision=False)
        # Covariance keeps the signal units; the other kinds are scale-free.
        return ConnectivityMeasure(
            cov_estimator=estimator, kind=kind, standardize=kind != "covariance"
        )

    if kind == "tangent":
        keep = ~subjects[0].excluded
        matrices = measure().fit_transform([s.data[:, keep] for s in subjects])
        return [np.array(m, dtype=np.float64) for m in matrices]
    # The other kinds are per-session: each uses its own usable nodes.
    return [
        np.array(measure().fit_transform([s.data[:, ~s.excluded]])[0], dtype=np.float64)
        for s in subjects
    ]


def _check_number(value: Any, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise InputError(f"{argument} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{argument} must be finite, got {value}.")
    return value


# --------------------------------------------------------------------------------------------
# The result object
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Connectome:
    """A weighted connectivity matrix with its node table.

    Attributes
    ----------
    matrix : ndarray of float64, shape (n_nodes, n_nodes)
        Symmetric weights (read-only). Rows and columns of flagged nodes are NaN. For Fisher z
        correlations the diagonal is 0.
    nodes : pandas.DataFrame
        One row per matrix row, columns :data:`NODE_COLUMNS` first (``node``, ``label``,
        ``x_mm``, ``y_mm``, ``z_mm``, ``hemisphere``, ``network``, ``region``, ``flagged``,
        ``flag_reason``), then any others given.
    kind : str
        One of :data:`KINDS`.
    fisher_z : bool
        Whether the weights are Fisher z values (``arctanh(r)``).
    participant_id, session_id : str or None
        Identifiers, e.g. ``"sub-01"`` and ``"ses-M0"``.
    """

    matrix: np.ndarray
    nodes: pd.DataFrame
    kind: str = "correlation"
    fisher_z: bool = False
    participant_id: str | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        try:
            matrix = np.array(self.matrix, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"matrix cannot be converted to numbers: {exc}.") from exc
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
            raise InputError(
                f"matrix must be a square (n_nodes, n_nodes) array with n_nodes >= 2, got "
                f"shape {matrix.shape}."
            )
        if not np.allclose(matrix, matrix.T, equal_nan=True, rtol=1e-6, atol=1e-9):
            raise InputError("matrix must be symmetric (undirected connectivity).")
        _check_kind(self.kind)
        nodes = _node_table(self.nodes, matrix.shape[0])
        off = matrix.copy()
        np.fill_diagonal(off, np.nan)
        _flag(nodes, np.isnan(off).all(axis=1), "no signal")
        matrix.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "fisher_z", bool(self.fisher_z))

    # -- basic properties ---------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        """Number of nodes (matrix rows), flagged ones included."""
        return int(self.matrix.shape[0])

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of the nodes that have measured edges (not all-NaN rows)."""
        off = np.array(self.matrix)
        np.fill_diagonal(off, np.nan)
        return ~np.isnan(off).all(axis=1)

    @property
    def unit(self) -> str:
        """Units of the weights, as written to the sidecar."""
        if self.kind == "covariance":
            return "signal units squared"
        if self.fisher_z:
            return "unitless (Fisher z = arctanh r)"
        if self.kind == "tangent":
            return "unitless (tangent space)"
        return "unitless (r)"

    def __repr__(self) -> str:
        n_flagged = int((~self.valid).sum())
        z = ", Fisher z" if self.fisher_z else ""
        who = " ".join(str(x) for x in (self.participant_id, self.session_id) if x)
        return (
            f"Connectome({self.kind}{z}, {self.n_nodes} nodes"
            f"{f', {n_flagged} flagged' if n_flagged else ''}{f', {who}' if who else ''})"
        )

    # -- tables -------------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """Tidy edge table: one row per node pair ``i < j`` (the upper triangle).

        Returns
        -------
        pandas.DataFrame
            Columns :data:`EDGE_COLUMNS`: ``participant_id``, ``session_id``, ``i``, ``j``
            (matrix positions), ``label_i``, ``label_j``, ``network_i``, ``network_j``,
            ``hemisphere_i``, ``hemisphere_j``, ``weight`` (NaN for edges of flagged nodes)
            and ``kind``.
        """
        i, j = np.triu_indices(self.n_nodes, k=1)
        labels = self.nodes["label"].to_numpy(object)
        networks = self.nodes["network"].to_numpy(object)
        hemispheres = self.nodes["hemisphere"].to_numpy(object)
        return pd.DataFrame(
            {
                "participant_id": self.participant_id,
                "session_id": self.session_id,
                "i": i,
                "j": j,
                "label_i": labels[i],
                "label_j": labels[j],
                "network_i": networks[i],
                "network_j": networks[j],
                "hemisphere_i": hemispheres[i],
                "hemisphere_j": hemispheres[j],
                "weight": self.matrix[i, j],
                "kind": self.kind,
            },
            columns=list(EDGE_COLUMNS),
        )

    def edges_above(self, threshold: float = 0.0, *, absolute: bool = False) -> np.ndarray:
        """Node pairs whose weight is above a threshold, strongest first.

        Parameters
        ----------
        threshold : float, default=0.0
            Keep edges with ``weight > threshold`` (``|weight| > threshold`` when
            ``absolute``).
        absolute : bool, default=False
            Compare absolute weights (keeps strong negative edges too).

        Returns
        -------
        ndarray of int, shape (k, 2)
            Pairs ``(i, j)`` with ``i < j`` (matrix positions), sorted by decreasing (absolute)
            weight; accepted by :meth:`subgraph` and the plots' ``highlight_edges``.
        """
        threshold = _check_number(threshold, "threshold")
        i, j = np.triu_indices(self.n_nodes, k=1)
        weight = self.matrix[i, j]
        score = np.abs(weight) if absolute else weight
        with np.errstate(invalid="ignore"):
            keep = score > threshold  # NaN compares False: flagged edges never pass
        order = np.argsort(-score[keep], kind="stable")
        return np.column_stack([i[keep][order], j[keep][order]]).astype(np.intp)

    def subgraph(self, edges: Any) -> Connectome:
        """The same nodes with only the given edges (all other weights set to 0).

        Parameters
        ----------
        edges : sequence of (int, int) or ndarray of bool
            ``(i, j)`` matrix positions (order and duplicates do not matter) or a boolean
            ``(n_nodes, n_nodes)`` mask, e.g. a significant subnetwork.

        Returns
        -------
        Connectome
            Weights kept on ``edges``, 0 elsewhere; flagged nodes stay NaN.
        """
        mask = _edge_mask(edges, self.n_nodes)
        matrix = np.where(mask, self.matrix, 0.0)
        invalid = ~self.valid
        matrix[invalid, :] = np.nan
        matrix[:, invalid] = np.nan
        return Connectome(
            matrix=matrix,
            nodes=self.nodes,
            kind=self.kind,
            fisher_z=self.fisher_z,
            participant_id=self.participant_id,
            session_id=self.session_id,
        )

    # -- graphs -------------------------------------------------------------------------------
    def to_networkx(self, threshold: float | None = None, absolute: bool = False) -> nx.Graph:
        """An undirected :class:`networkx.Graph` of the valid nodes and non-zero edges.

        Parameters
        ----------
        threshold : float, optional
            Keep only edges with ``weight > threshold`` (``|weight| > threshold`` when
            ``absolute``); None keeps every finite non-zero edge.
        absolute : bool, default=False
            Use ``|weight|`` both for the threshold and as the edge ``weight``.

        Returns
        -------
        networkx.Graph
            Nodes are matrix positions with the node-table columns as attributes (flagged
            nodes are left out); edges carry ``weight``; graph attributes hold ``kind``,
            ``fisher_z``, ``participant_id`` and ``session_id``.
        """
        nx = _networkx()
        if threshold is not None:
            threshold = _check_number(threshold, "threshold")
        graph = nx.Graph(
            kind=self.kind,
            fisher_z=self.fisher_z,
            participant_id=self.participant_id,
            session_id=self.session_id,
        )
        valid = np.flatnonzero(self.valid)
        records = self.nodes.iloc[valid].to_dict("records")
        graph.add_nodes_from(zip(valid.tolist(), records, strict=True))
        i, j = np.triu_indices(self.n_nodes, k=1)
        weight = self.matrix[i, j]
        if absolute:
            weight = np.abs(weight)
        with np.errstate(invalid="ignore"):
            keep = np.isfinite(weight) & (weight != 0)
            if threshold is not None:
                keep &= weight > threshold
        graph.add_weighted_edges_from(
            zip(i[keep].tolist(), j[keep].tolist(), weight[keep].tolist(), strict=True)
        )
        return graph

    def graph_metrics(
        self, threshold: float = 0.0, *, density: float | None = None
    ) -> pd.DataFrame:
        """Per-node graph measures of the thresholded positive-weight graph.

        Parameters
        ----------
        threshold : float, default=0.0
            Keep edges with ``weight > threshold`` (>= 0: negative weights are always
            discarded, as bctpy's weighted measures require).
        density : float, optional
            Instead of ``threshold``, keep the strongest positive edges making up this fraction
            of all possible edges among the valid nodes (``bct.threshold_proportional``),
            in (0, 1].

        Returns
        -------
        pandas.DataFrame
            Columns :data:`METRIC_COLUMNS`, one row per node (NaN metrics for flagged nodes):
            ``degree`` and ``strength`` (sum of kept weights), ``clustering`` (Onnela weighted
            clustering, ``bct.clustering_coef_wu``), ``local_efficiency`` (weighted, Wang et
            al. 2016), ``betweenness`` (fraction of shortest paths, lengths ``1 / w``,
            normalised by ``(n-1)(n-2)/2``), and per graph ``global_efficiency`` (weighted) and
            ``density`` (fraction of possible edges kept). Clustering and efficiencies use the
            weights divided by the largest kept weight (bctpy requires weights in [0, 1]).
            ``attrs`` holds ``threshold``, ``density`` and ``global_efficiency``.

        Raises
        ------
        InputError
            On a negative ``threshold`` or a ``density`` outside (0, 1].
        """
        bct = _bct()
        threshold = _check_number(threshold, "threshold")
        if threshold < 0:
            raise InputError(
                f"threshold must be >= 0 (weighted graph measures need positive weights), got "
                f"{threshold}."
            )
        valid = self.valid
        w = np.array(self.matrix[np.ix_(valid, valid)])
        np.fill_diagonal(w, 0.0)
        w = np.where(np.isfinite(w) & (w > 0), w, 0.0)
        if density is not None:
            density = _check_number(density, "density")
            if not 0 < density <= 1:
                raise InputError(f"density must be in (0, 1], got {density}.")
            w = bct.threshold_proportional(w, density, copy=True)
        else:
            w[w <= threshold] = 0.0
        n = w.shape[0]
        degree = bct.degrees_und(w).astype(np.float64)
        strength = bct.strengths_und(w).astype(np.float64)
        top = w.max()
        normalised = w / top if top > 0 else w
        clustering = bct.clustering_coef_wu(normalised)
        local = _local_efficiency(normalised)
        global_efficiency = _global_efficiency(normalised)
        betweenness = _betweenness(w)
        if n > 2:
            betweenness = betweenness * 2.0 / ((n - 1) * (n - 2))
        realised = float(np.count_nonzero(np.triu(w, 1)) / (n * (n - 1) / 2))

        def full(values: np.ndarray) -> np.ndarray:
            out = np.full(self.n_nodes, np.nan)
            out[valid] = values
            return out

        table = pd.DataFrame(
            {
                "participant_id": self.participant_id,
                "session_id": self.session_id,
                "node": self.nodes["node"].to_numpy(),
                "label": self.nodes["label"].to_numpy(object),
                "network": self.nodes["network"].to_numpy(object),
                "hemisphere": self.nodes["hemisphere"].to_numpy(object),
                "degree": full(degree),
                "strength": full(strength),
                "clustering": full(np.asarray(clustering, dtype=np.float64).ravel()),
                "local_efficiency": full(local),
                "betweenness": full(betweenness),
                "global_efficiency": global_efficiency,
                "density": realised,
            },
            columns=list(METRIC_COLUMNS),
        )
        table.attrs.update(
            threshold=None if density is not None else threshold,
            density=realised,
            global_efficiency=global_efficiency,
        )
        return table

    # -- files --------------------------------------------------------------------------------
    def save(
        self,
        writer: DerivativesWriter,
        *,
        atlas: str | None = None,
        meas: str | None = None,
        participant_id: str | None = None,
        session_id: str | None = None,
        task: str | None = None,
        space: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        sources: Sequence[str | os.PathLike[str]] = (),
    ) -> Path:
        """Write the matrix, node table and sidecar with :class:`DerivativesWriter` (BEP017).

        Files in ``sub-<p>/[ses-<s>/]func/``: ``..._atlas-<a>_meas-<m>_relmat.tsv``,
        ``..._atlas-<a>_nodes.tsv`` and ``..._atlas-<a>_meas-<m>_relmat.json``. BEP017 matrices
        hold finite values, so flagged (all-NaN) nodes are left out of both TSV files and
        listed with their node-table rows under ``ExcludedNodes`` in the sidecar;
        :func:`load_connectome` puts them back as NaN rows.

        Parameters
        ----------
        writer : msimaging.derivatives.DerivativesWriter
            The output dataset.
        atlas : str, optional
            Atlas label (letters and digits, e.g. ``"Seitzman2018"``); defaults to
            ``nodes.attrs["atlas"]`` with other characters removed.
        meas : str, optional
            Measure label; defaults to ``pearson``, ``partialcorr``, ``tangent`` or
            ``covariance``, with a trailing ``z`` for Fisher z values (``pearsonz``).
        participant_id, session_id : str, optional
            Override the connectome's own identifiers.
        task, space : str, optional
            Further BIDS entities.
        parameters : dict, optional
            Estimation settings (e.g. the confound strategy), stored under ``Parameters``.
        sources : sequence of str or pathlib.Path, default=()
            Files the matrix was computed from.

        Returns
        -------
        pathlib.Path
            Absolute path of the ``_relmat.tsv`` file.

        Raises
        ------
        InputError
            If no participant or atlas label is known, or a label is not BIDS-valid.
        """
        participant = participant_id or self.participant_id
        session = session_id or self.session_id
        if participant is None:
            raise InputError(
                "participant_id is unknown: pass participant_id='sub-01' to save() (or to "
                "connectivity())."
            )
        if atlas is None:
            raw = self.nodes.attrs.get("atlas")
            atlas = re.sub(r"[^A-Za-z0-9]", "", str(raw)) if raw else None
            if not atlas:
                raise InputError(
                    "atlas is unknown: pass atlas='Seitzman2018' (letters and digits) to save()."
                )
        if meas is None:
            meas = _MEAS[self.kind] + ("z" if self.fisher_z else "")
        valid = self.valid
        nodes = self.nodes.loc[valid].copy()
        added = [c for c in _BEP017_NODE_COLUMNS if c not in nodes.columns]
        if "index" in added:
            nodes.insert(0, "index", nodes["node"].to_numpy())
        if "name" in added:
            nodes.insert(1, "name", nodes["label"].to_numpy())
        relmat = writer.write_relmat(
            self.matrix[np.ix_(valid, valid)],
            nodes,
            participant,
            session,
            meas=meas,
            atlas=atlas,
            task=task,
            space=space,
            parameters=parameters,
            sources=sources,
        )
        sidecar = sidecar_path(relmat)
        metadata = json.loads(sidecar.read_text(encoding="utf-8"))
        metadata.update(
            {
                "Description": f"{self.kind} between node time series"
                + (", Fisher z-transformed (arctanh), diagonal 0" if self.fisher_z else ""),
                "Kind": self.kind,
                "FisherZ": self.fisher_z,
                "Units": self.unit,
                "NodeIndexColumns": added,
                "ExcludedNodes": _json_records(self.nodes.loc[~valid]),
            }
        )
        writer.write_sidecar(relmat, metadata)
        return relmat

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Connectome:
        """Read a connectome written by :meth:`save` (see :func:`load_connectome`)."""
        return load_connectome(path)

    # -- display ------------------------------------------------------------------------------
    def plot(self, style: str = "adjacency", **kwargs: Any) -> Any:
        """Draw the connectome with :mod:`msimaging.fmri.plotting`.

        Parameters
        ----------
        style : {"adjacency", "connectogram", "glass_brain"}
            Which figure.
        **kwargs
            Passed to :func:`~msimaging.fmri.plotting.plot_adjacency`,
            :func:`~msimaging.fmri.plotting.plot_connectogram` or
            :func:`~msimaging.fmri.plotting.plot_glass_brain`.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from msimaging.fmri import plotting

        functions = {
            "adjacency": plotting.plot_adjacency,
            "connectogram": plotting.plot_connectogram,
            "glass_brain": plotting.plot_glass_brain,
        }
        if style not in functions:
            raise InputError(f"style must be one of {sorted(functions)}, got {style!r}.")
        return functions[style](self, **kwargs)

    def _repr_html_(self) -> str:
        valid = self.valid
        i, j = np.triu_indices(self.n_nodes, k=1)
        weight = self.matrix[i, j]
        finite = np.isfinite(weight)
        mean = float(weight[finite].mean()) if finite.any() else float("nan")
        networks = self.nodes["network"].to_numpy(object)
        within = finite & (networks[i] == networks[j])
        edges = pd.DataFrame({"network": networks[i][within], "weight": weight[within]})
        summary = (
            edges.groupby("network")["weight"]
            .agg(["mean", "size"])
            .join(self.nodes.loc[valid, "network"].value_counts().rename("nodes"), how="outer")
            .sort_values("mean", ascending=False, na_position="last")
            .head(5)
        )
        summary["nodes"] = summary["nodes"].fillna(0).astype(int)
        rows = "".join(
            f"<tr><td>{html.escape(str(name))}</td><td>{int(row['nodes'])}</td>"
            f"<td>{row['mean']:.3f}</td></tr>"
            for name, row in summary.iterrows()
        )
        who = " ".join(html.escape(str(x)) for x in (self.participant_id, self.session_id) if x)
        z = " (Fisher z)" if self.fisher_z else ""
        flagged = int((~valid).sum())
        return (
            "<div class='msimaging-connectome'>"
            f"<strong>Connectome</strong> {who}<br>"
            f"{self.n_nodes} nodes ({flagged} flagged), kind: {html.escape(self.kind)}{z}, "
            f"mean off-diagonal weight: {mean:.3f}"
            "<table><thead><tr><th>network</th><th>nodes</th><th>mean within-network weight"
            f"</th></tr></thead><tbody>{rows}</tbody></table></div>"
        )


def _json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    records = []
    for record in frame.to_dict("records"):
        clean = {}
        for key, value in record.items():
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            clean[str(key)] = value
        records.append(clean)
    return records


_ENTITY = re.compile(r"(?:^|_)(sub|ses)-([A-Za-z0-9]+)")


def load_connectome(path: str | os.PathLike[str]) -> Connectome:
    """Read a connectome written by :meth:`Connectome.save`.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``..._relmat.tsv`` file; its ``.json`` sidecar and node table (named in the
        sidecar's ``NodeFiles``) must sit next to it.

    Returns
    -------
    Connectome
        With ``kind`` and ``fisher_z`` from the sidecar, ``participant_id``/``session_id`` from
        the file name (``"sub-01"``, ``"ses-M0"``) and the excluded (flagged) nodes restored as
        NaN rows and columns at their original positions.

    Raises
    ------
    InputError
        If a file is missing or inconsistent.
    """
    relmat = Path(os.path.abspath(os.fspath(path)))
    sidecar = sidecar_path(relmat)
    if not sidecar.is_file():
        raise InputError(
            f"The sidecar {str(sidecar)!r} of {relmat.name!r} is missing; it holds the kind and "
            "node table name. Write connectomes with Connectome.save()."
        )
    try:
        metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"The sidecar {str(sidecar)!r} is not valid JSON: {exc}.") from exc
    matrix = read_relmat(relmat)
    node_files = metadata.get("NodeFiles") or []
    if not node_files:
        raise InputError(f"The sidecar {str(sidecar)!r} names no NodeFiles.")
    nodes = read_table(relmat.parent / node_files[0], dtype={"label": str, "name": str})
    if len(nodes) != matrix.shape[0]:
        raise InputError(
            f"{node_files[0]!r} has {len(nodes)} rows but {relmat.name!r} has "
            f"{matrix.shape[0]}: they were not written together."
        )
    nodes = nodes.drop(columns=[c for c in metadata.get("NodeIndexColumns", []) if c in nodes])
    excluded = pd.DataFrame(metadata.get("ExcludedNodes") or [], columns=nodes.columns)
    if len(excluded):
        # Put the flagged nodes back at their original positions (ordered by ``node``).
        full_nodes = pd.concat([nodes, excluded], ignore_index=True)
        order = np.argsort(full_nodes["node"].to_numpy(), kind="stable")
        full_nodes = full_nodes.iloc[order].reset_index(drop=True)
        kept = np.argsort(order)[: len(nodes)]
        full = np.full((len(full_nodes), len(full_nodes)), np.nan)
        full[np.ix_(kept, kept)] = matrix
        matrix, nodes = full, full_nodes
    entities = dict(_ENTITY.findall(relmat.name))
    kind = metadata.get("Kind", "correlation")
    return Connectome(
        matrix=matrix,
        nodes=nodes,
        kind=kind,
        fisher_z=bool(metadata.get("FisherZ", False)),
        participant_id=f"sub-{entities['sub']}" if "sub" in entities else None,
        session_id=f"ses-{entities['ses']}" if "ses" in entities else None,
    )


# --------------------------------------------------------------------------------------------
# Graph measures (bctpy formulas, compiled shortest paths)
# --------------------------------------------------------------------------------------------
def _global_efficiency(w: np.ndarray) -> float:
    """Weighted global efficiency: mean inverse shortest length (lengths ``1 / w``)."""
    from scipy.sparse.csgraph import dijkstra

    n = w.shape[0]
    if n < 2:
        return float("nan")
    lengths = np.divide(1.0, w, out=np.zeros_like(w), where=w > 0)
    distance = dijkstra(lengths, directed=False)
    inverse = np.divide(1.0, distance, out=np.zeros_like(distance), where=distance > 0)
    return float(inverse.sum() / (n * (n - 1)))


def _local_efficiency(w: np.ndarray) -> np.ndarray:
    """Weighted local efficiency (Wang et al. 2016; ``bct.efficiency_wei(local=True)``).

    ``E(u) = sum_{j != h in N(u)} (w_uj w_uh)^(1/3) / d_jh(N(u)) / (k (k - 1))`` with ``d``
    the shortest length within the neighbourhood, lengths ``(1 / w)^(1/3)``.
    """
    from scipy.sparse.csgraph import shortest_path

    lengths = np.divide(1.0, w, out=np.zeros_like(w), where=w > 0) ** (1.0 / 3.0)
    cube = np.cbrt(w)
    out = np.zeros(w.shape[0])
    for u in range(w.shape[0]):  # one all-pairs search per neighbourhood (nodes, not edges)
        neighbours = np.flatnonzero(w[u] > 0)
        k = neighbours.size
        if k < 2:
            continue
        # "auto": Floyd-Warshall for dense neighbourhoods, Dijkstra for sparse ones.
        distance = shortest_path(lengths[np.ix_(neighbours, neighbours)], directed=False)
        inverse = np.divide(1.0, distance, out=np.zeros_like(distance), where=distance > 0)
        weights = cube[u, neighbours]
        out[u] = float(weights @ inverse @ weights) / (k * (k - 1))
    return out


def _betweenness(w: np.ndarray) -> np.ndarray:
    """Unnormalised betweenness of an undirected weighted graph, lengths ``1 / w`` (Brandes).

    Shortest-path counts and dependencies are accumulated for a chunk of source nodes at once
    (one numpy step per distance rank), with ties counted as in networkx/bctpy. Each unordered
    pair counts once (networkx's ``normalized=False``; bctpy's value is twice this).
    """
    from scipy.sparse.csgraph import dijkstra

    n = w.shape[0]
    out = np.zeros(n)
    if n < 3 or not (w > 0).any():
        return out
    lengths = np.divide(1.0, w, out=np.full_like(w, np.inf), where=w > 0)
    distance = dijkstra(np.where(np.isfinite(lengths), lengths, 0.0), directed=False)
    scale = np.nanmax(np.where(np.isfinite(distance), distance, np.nan))
    tolerance = 1e-10 * max(scale, 1.0)
    chunk = max(1, _BRANDES_CHUNK_ELEMENTS // (n * n))
    for start in range(0, n, chunk):
        sources = np.arange(start, min(start + chunk, n))
        rows = np.arange(sources.size)
        d = distance[sources]  # (c, n)
        # pred[s, u, v]: u precedes v on a shortest path from s (inf - inf -> NaN -> False).
        with np.errstate(invalid="ignore"):
            pred = np.abs(d[:, :, None] + lengths[None, :, :] - d[:, None, :]) <= tolerance
        order = np.argsort(d, axis=1, kind="stable")
        sigma = np.zeros((sources.size, n))
        sigma[rows, sources] = 1.0
        for r in range(1, n):
            v = order[:, r]
            sigma[rows, v] += np.einsum("su,su->s", pred[rows, :, v], sigma)
        delta = np.zeros((sources.size, n))
        for r in range(n - 1, 0, -1):
            target = order[:, r]
            reached = sigma[rows, target] > 0
            coefficient = np.zeros(sources.size)
            coefficient[reached] = (1.0 + delta[rows, target][reached]) / sigma[rows, target][
                reached
            ]
            delta += pred[rows, :, target] * sigma * coefficient[:, None]
        delta[rows, sources] = 0.0
        out += delta.sum(axis=0)
    return out / 2.0


def _bct() -> Any:
    try:
        import bct
    except ImportError as exc:  # pragma: no cover - bctpy is a core dependency
        raise DependencyError(
            "Graph metrics need bctpy: pip install bctpy (a core dependency of msimaging)."
        ) from exc
    return bct


def _networkx() -> Any:
    try:
        import networkx
    except ImportError as exc:  # pragma: no cover - networkx is a core dependency
        raise DependencyError(
            "to_networkx needs networkx: pip install networkx (a core dependency of msimaging)."
        ) from exc
    return networkx
