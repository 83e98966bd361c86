"""Result objects of the Network-Based Statistic: :class:`NBSComponent` and :class:`NBSResult`.

Plotting is imported inside :meth:`NBSResult.plot` only, so importing the results never
imports :mod:`msimaging.fmri.plotting`; plotting knows no result class (it takes a matrix and
a node table), so the two never import each other (import-linter contract in pyproject.toml).
Node names, degree and strength come from :mod:`msimaging.fmri.subnetwork`."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from msimaging.errors import InputError
from msimaging.fmri.nbs.inputs import _check_option
from msimaging.fmri.subnetwork import SUBNETWORK_COLUMNS, hub_label, subnetwork_table

if TYPE_CHECKING:
    import networkx


_NODE_COLUMNS = ("label", "network", "hemisphere", "x_mm", "y_mm", "z_mm")
_EDGE_COLUMNS = [
    "component",
    "direction",
    "node_i",
    "node_j",
    "label_i",
    "label_j",
    "network_i",
    "network_j",
    "statistic",
    "size",
    "p_value",
]
_COMPONENT_COLUMNS = [
    "component",
    "direction",
    "n_nodes",
    "n_edges",
    "size",
    "size_measure",
    "p_value",
    "hubs",
    "hub_degree",
    "top_network_pair",
]

# --------------------------------------------------------------------------------------------
# Result objects
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class NBSComponent:
    """One connected component of supra-threshold edges.

    Attributes
    ----------
    index : int
        Position in :attr:`NBSResult.components` (0 is the smallest p, then the largest size).
    direction : {"positive", "negative", "F"}
        ``"positive"``: edges with t > threshold; ``"negative"``: −t > threshold; ``"F"``.
    nodes : ndarray of int
        Node indices (sorted).
    edges : ndarray of int, shape (n_edges, 2)
        Node index pairs ``(i, j)`` with ``i < j``.
    statistics : ndarray of float, shape (n_edges,)
        The observed statistic (t or F, signed) of each edge.
    size : float
        Extent (number of edges) or intensity (sum of statistic − threshold, with −t for the
        negative direction), see :attr:`NBSResult.size_measure`.
    p_value : float
        FWER-corrected p-value.
    degree : ndarray of int
        Degree of each node of :attr:`nodes` within the component.
    node_labels : tuple of str, optional
        Labels of :attr:`nodes` when the node table has a ``label`` column.
    network_pairs : dict, optional
        Number of edges per unordered network pair ``(network_a, network_b)`` (sorted
        names), when the node table has a ``network`` column.
    """

    index: int
    direction: str
    nodes: np.ndarray
    edges: np.ndarray
    statistics: np.ndarray
    size: float
    p_value: float
    degree: np.ndarray
    node_labels: tuple[str, ...] | None = None
    network_pairs: dict[tuple[str, str], int] | None = None

    @property
    def n_edges(self) -> int:
        """Number of edges."""
        return len(self.edges)

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return len(self.nodes)

    @property
    def hubs(self) -> np.ndarray:
        """Node indices of highest degree within the component (ties all kept)."""
        if not len(self.nodes):
            return np.array([], dtype=int)
        return self.nodes[self.degree == self.degree.max()]

    @property
    def edge_list(self) -> list[tuple[int, int, float]]:
        """The edges as ``(i, j, statistic)`` tuples."""
        return [
            (int(i), int(j), float(s))
            for (i, j), s in zip(self.edges, self.statistics, strict=True)
        ]

    def __repr__(self) -> str:
        return (
            f"NBSComponent(index={self.index}, direction={self.direction!r}, "
            f"n_nodes={self.n_nodes}, n_edges={self.n_edges}, size={self.size:g}, "
            f"p_value={self.p_value:.4g})"
        )


@dataclass(frozen=True, eq=False)
class NBSResult:
    """Result of :func:`nbs` and its design-specific constructors.

    Attributes
    ----------
    components : tuple of NBSComponent
        Observed components, ordered by p-value then decreasing size (may be empty).
    statistic : {"t", "F"}
        The edge statistic.
    statistic_matrix : ndarray of float64, shape (n_nodes, n_nodes)
        Observed statistic of every edge (symmetric, zero diagonal).
    df : tuple of float
        Degrees of freedom: ``(df,)`` for t, ``(df_effect, df_error)`` for F.
    threshold : float
        Statistic threshold (edges strictly above it are supra-threshold).
    threshold_p : float
        The uncorrected one-sided p per edge that the threshold corresponds to.
    size_measure : {"extent", "intensity"}
        How component size is measured.
    tail : {"right", "left", "both"}
        Direction(s) tested.
    null_distribution : ndarray of float, shape (n_permutations,)
        Largest component size in each permutation (over both directions for
        ``tail="both"``); empty when there was no observed component (nothing to test).
    null_by_direction : dict of str to ndarray
        The same per direction (``"positive"``, ``"negative"`` or ``"F"``).
    n_permutations : int
        Permutations used (the whole space, identity included, when :attr:`exact`).
    permutation_space : int
        Number of distinct permutations (sign flips or design rearrangements) of the design.
    exact : bool
        Whether the whole space was enumerated (exact p-values).
    smallest_p : float
        Smallest p-value any component could get with these permutations.
    resampling : {"sign-flip", "permutation"}
        How the null distribution was built.
    design : ndarray, shape (n_observations, n_regressors)
        Full design matrix (covariates included).
    contrast : ndarray, shape (n_rows, n_regressors)
        Contrast (one row for t).
    design_columns : tuple of str
        Names of the design columns.
    exchange_blocks : ndarray, optional
        Exchange block of each observation.
    n_observations, n_nodes : int
    nodes : pandas.DataFrame, optional
        Node table (``label``, ``network``, ``hemisphere``, ``x_mm``, ``y_mm``, ``z_mm`` when
        known).
    seed : int or None
        Seed of the random permutations.
    parameters : dict
        Options of the run (requested permutations, workers, memory; for TFNBS the grid).
    method : {"nbs", "tfnbs", "constrained"}
        NBS (components of supra-threshold edges), threshold-free NBS, or constrained
        (network-level) NBS; see :mod:`msimaging.fmri.nbs`.
    edge_score_matrix : ndarray of float64, shape (n_nodes, n_nodes), optional
        TFNBS: the score of every edge (negative for the negative direction);
        constrained: the block statistic of every edge's network pair (mean t or mean F).
        None for ``method="nbs"``.
    edge_p_matrix : ndarray of float64, shape (n_nodes, n_nodes), optional
        FWER-corrected p of every edge (TFNBS) or of its block (constrained); 1 on the
        diagonal. None for ``method="nbs"``.
    network_table : pandas.DataFrame, optional
        Constrained NBS: one row per network pair and direction (``network_a, network_b,
        direction, n_edges, statistic, p_uncorrected, p_value``), by increasing p.
    """

    components: tuple[NBSComponent, ...]
    statistic: str
    statistic_matrix: np.ndarray
    df: tuple[float, ...]
    threshold: float
    threshold_p: float
    size_measure: str
    tail: str
    null_distribution: np.ndarray
    null_by_direction: dict[str, np.ndarray]
    n_permutations: int
    permutation_space: int
    exact: bool
    smallest_p: float
    resampling: str
    design: np.ndarray
    contrast: np.ndarray
    design_columns: tuple[str, ...]
    exchange_blocks: np.ndarray | None
    n_observations: int
    n_nodes: int
    nodes: pd.DataFrame | None = None
    seed: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    method: str = "nbs"
    edge_score_matrix: np.ndarray | None = None
    edge_p_matrix: np.ndarray | None = None
    network_table: pd.DataFrame | None = None

    # -- selections --------------------------------------------------------------------------
    def significant(self, alpha: float = 0.05) -> tuple[NBSComponent, ...]:
        """Components with ``p_value < alpha``."""
        return tuple(c for c in self.components if c.p_value < alpha)

    def edges_mask(self, component: int = 0) -> np.ndarray:
        """Boolean (n_nodes, n_nodes) symmetric mask of one component's edges.

        Parameters
        ----------
        component : int
            Index into :attr:`components` (0: the most significant).

        Returns
        -------
        ndarray of bool
            All False when there is no component (so plots can always call it).
        """
        mask = np.zeros((self.n_nodes, self.n_nodes), dtype=bool)
        if not self.components:
            return mask
        if not 0 <= component < len(self.components):
            raise InputError(
                f"component={component} does not exist: the result has "
                f"{len(self.components)} component(s), indices 0..{len(self.components) - 1}."
            )
        edges = self.components[component].edges
        mask[edges[:, 0], edges[:, 1]] = True
        mask[edges[:, 1], edges[:, 0]] = True
        return mask

    # -- figures -----------------------------------------------------------------------------
    def plot(
        self,
        style: str = "connectogram",
        *,
        component: int = 0,
        path: Any = None,
        view: str = "component",
        **kwargs: Any,
    ) -> Any:
        """Draw one component: by default its own nodes only, named by anatomy.

        ``view="component"`` draws the component's edges between its nodes only
        (:func:`msimaging.fmri.plotting.plot_subnetwork`): AAL3 names (``name · network`` for
        the hubs), node size = degree, node colour = strength (:meth:`node_table`), the fixed
        network colours. ``view="all"`` draws the whole statistic map over all nodes with the
        component highlighted (:func:`~msimaging.fmri.plotting.plot_connectogram`, ...).

        Parameters
        ----------
        style : {"connectogram", "adjacency", "glass_brain", "html"}
            The figure; ``"html"`` is nilearn's interactive 3-D view and needs ``path``.
        component : int
            Which component (0: the most significant).
        path : str or pathlib.Path, optional
            Where to save the figure (extension picks the format).
        view : {"component", "all"}, default "component"
            The component's nodes only, or every node with the component highlighted.
        **kwargs
            Passed to the plotting function (e.g. ``title``, ``n_hubs``; ``threshold`` with
            ``view="all"``).

        Returns
        -------
        matplotlib.figure.Figure or nilearn HTML view
        """
        from msimaging.fmri import plotting  # plotting knows no result class: no cycle

        style = _check_option(
            style, "style", ("connectogram", "adjacency", "glass_brain", "html")
        )
        view = _check_option(view, "view", ("component", "all"))
        if self.nodes is None:
            raise InputError(
                "this NBS result has no node table (coordinates, networks): the figures need "
                "one; pass Connectome objects (or nodes=...) to nbs()."
            )
        if style == "html" and path is None:
            raise InputError("style='html' writes a file: pass path='...html'.")
        label = f"{self.statistic} statistic"
        highlight = self.edges_mask(component)
        if view == "all" or not self.components:
            if view == "component":
                raise InputError(
                    "this NBS result has no component to draw (no supra-threshold edge); "
                    "use view='all' to draw the statistic map."
                )
            nodes = self.nodes.copy()
            nodes.attrs["weight_label"] = label
            statistic = _StatisticMap(self.statistic_matrix, nodes, f"NBS {self.statistic}")
            kwargs.setdefault(
                "title",
                f"NBS {self.statistic} map, component {component} "
                f"({int(highlight.sum() // 2)} edges)",
            )
            functions = {
                "connectogram": plotting.plot_connectogram,
                "adjacency": plotting.plot_adjacency,
                "glass_brain": plotting.plot_glass_brain,
            }
            if style == "html":
                return plotting.view_connectome_html(
                    statistic, path, highlight_edges=highlight, **kwargs
                )
            return functions[style](statistic, highlight_edges=highlight, path=path, **kwargs)
        comp = self.components[component]
        kwargs.setdefault(
            "title",
            f"NBS component {component} ({comp.direction}): {comp.n_nodes} nodes, "
            f"{comp.n_edges} edges, p = {comp.p_value:.3g}",
        )
        if style == "html":
            table = self.node_table(component).sort_values("node")
            members = table["node"].to_numpy()
            nodes = self.nodes.iloc[members].reset_index(drop=True)
            # Hover text of the 3-D view: "Frontal_Mid_2_L · DefaultMode".
            nodes["label"] = [
                hub_label(name, network)
                for name, network in zip(table["name"], table["network"], strict=True)
            ]
            sub_mask = highlight[np.ix_(members, members)]
            matrix = np.where(sub_mask, self.statistic_matrix[np.ix_(members, members)], 0.0)
            statistic = _StatisticMap(matrix, nodes, f"NBS {self.statistic}")
            return plotting.view_connectome_html(
                statistic, path, highlight_edges=sub_mask, **kwargs
            )
        return plotting.plot_subnetwork(
            self.statistic_matrix,
            self.nodes,
            comp.edges,
            style=style,
            weight_label=label,
            path=path,
            **kwargs,
        )

    # -- tables ------------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """Tidy edge table: one row per edge of every component.

        Columns: ``component, direction, node_i, node_j, label_i, label_j, network_i,
        network_j, statistic, size, p_value`` (labels and networks are missing without a node
        table).
        """
        labels = _node_column(self.nodes, "label", self.n_nodes)
        networks = _node_column(self.nodes, "network", self.n_nodes)
        rows = []
        for comp in self.components:
            for (i, j), stat in zip(comp.edges, comp.statistics, strict=True):
                rows.append(
                    {
                        "component": comp.index,
                        "direction": comp.direction,
                        "node_i": int(i),
                        "node_j": int(j),
                        "label_i": labels[i],
                        "label_j": labels[j],
                        "network_i": networks[i],
                        "network_j": networks[j],
                        "statistic": float(stat),
                        "size": comp.size,
                        "p_value": comp.p_value,
                    }
                )
        return pd.DataFrame(rows, columns=_EDGE_COLUMNS)

    def components_frame(self) -> pd.DataFrame:
        """One row per component: size, p-value, hubs and the network pair with most edges.

        ``hubs`` names the nodes of highest degree as ``"Frontal_Mid_2_L · DefaultMode"``
        (AAL3 region and network, see :meth:`node_table`; the node label when the region is
        unknown).
        """
        rows = []
        for comp in self.components:
            table = self.node_table(comp.index)
            hubs = table[table["degree"] == table["degree"].max()].sort_values("node")
            top_pair = None
            if comp.network_pairs:
                (a, b), _ = max(comp.network_pairs.items(), key=lambda kv: (kv[1], kv[0]))
                top_pair = f"{a}-{b}"
            rows.append(
                {
                    "component": comp.index,
                    "direction": comp.direction,
                    "n_nodes": comp.n_nodes,
                    "n_edges": comp.n_edges,
                    "size": comp.size,
                    "size_measure": self.size_measure,
                    "p_value": comp.p_value,
                    "hubs": ", ".join(
                        hub_label(row["name"], row["network"]) for _, row in hubs.iterrows()
                    ),
                    "hub_degree": int(comp.degree.max()) if comp.n_nodes else 0,
                    "top_network_pair": top_pair,
                }
            )
        return pd.DataFrame(rows, columns=_COMPONENT_COLUMNS)

    def node_table(self, component: int = 0) -> pd.DataFrame:
        """The nodes of one component, hubs first.

        Parameters
        ----------
        component : int
            Index into :attr:`components` (0: the most significant).

        Returns
        -------
        pandas.DataFrame
            One row per node of the component, sorted by decreasing degree (then
            ``|strength|``): ``node`` (matrix row), ``label``, ``anatomy`` (AAL3 region of the
            node's MNI centre; None without coordinates), ``name`` (unique readable name: the
            region, numbered over the whole atlas when it holds several nodes, else the label),
            ``network``, ``hemisphere``, ``degree`` (edges of the component at the node),
            ``strength`` (sum of the component's edge statistics at the node), ``x_mm``,
            ``y_mm``, ``z_mm``. Empty when there is no component.
        """
        if not self.components:
            return pd.DataFrame(columns=list(SUBNETWORK_COLUMNS))
        self.edges_mask(component)  # validates the index
        return subnetwork_table(
            self.statistic_matrix, self.nodes, self.components[component].edges
        )

    def summary(self, alpha: float = 0.05, *, n_hubs: int = 3) -> str:
        """Plain-text summary: the test, each significant component, one line for the rest.

        Parameters
        ----------
        alpha : float, default 0.05
            Components with ``p_value < alpha`` are listed one per line with their hubs
            (``"Frontal_Mid_2_L · DefaultMode"``); the others are summarised in one line.
        n_hubs : int, default 3
            Hubs named per significant component.

        Returns
        -------
        str
        """
        if not 0 < alpha <= 1:
            raise InputError(f"alpha must be in (0, 1], got {alpha!r}.")
        lines = [self._test_line()]
        if not self.components:
            return "\n".join([*lines, "No supra-threshold edge."])
        chosen = [c for c in self.components if c.p_value < alpha]
        rest = [c for c in self.components if c.p_value >= alpha]
        lines.append(f"{len(chosen)} significant component(s) at p < {alpha:g}"
                     + (":" if chosen else "."))
        for comp in chosen:
            table = self.node_table(comp.index).head(n_hubs)
            hubs = "; ".join(
                f"{hub_label(row['name'], row['network'])} (degree {int(row['degree'])})"
                for _, row in table.iterrows()
            )
            lines.append(
                f"  component {comp.index} ({comp.direction}): {comp.n_nodes} nodes, "
                f"{comp.n_edges} edges, size {comp.size:g}, p = {comp.p_value:.4g}; hubs: {hubs}"
            )
        if rest:
            n_edges = np.array([c.n_edges for c in rest])
            sizes = (
                "all single edges" if n_edges.max() == 1
                else f"{n_edges.min()}-{n_edges.max()} edges"
            )
            further = "further " if chosen else ""
            lines.append(
                f"{len(rest)} {further}component{'s' if len(rest) > 1 else ''} not significant "
                f"({sizes}, p >= {min(c.p_value for c in rest):.2g})."
            )
        return "\n".join(lines)

    def _test_line(self) -> str:
        design = self.parameters.get("design") if isinstance(self.parameters, dict) else None
        return (
            f"NBS {self.statistic}-test{f' ({design})' if design else ''}, "
            f"df {', '.join(f'{d:g}' for d in self.df)}, tail {self.tail}, threshold "
            f"{self.threshold:.4g} (uncorrected p {self.threshold_p:.3g}), size "
            f"{self.size_measure}; {self.n_permutations} "
            f"{'exact' if self.exact else 'random'} {self.resampling}s (space "
            f"{self.permutation_space}), smallest attainable p {self.smallest_p:.4g}."
        )

    def network_pair_counts(self, component: int = 0) -> pd.DataFrame:
        """Edges of one component per network pair (needs a node table with ``network``).

        Returns
        -------
        pandas.DataFrame
            Columns ``network_a, network_b, n_edges`` sorted by decreasing count.
        """
        if not self.components:
            return pd.DataFrame(columns=["network_a", "network_b", "n_edges"])
        self.edges_mask(component)  # validates the index
        pairs = self.components[component].network_pairs
        if pairs is None:
            raise InputError(
                "network_pair_counts needs node networks: pass a node table with a 'network' "
                "column (nodes=... or Connectome objects) to the NBS call."
            )
        table = pd.DataFrame(
            [(a, b, n) for (a, b), n in pairs.items()],
            columns=["network_a", "network_b", "n_edges"],
        )
        return table.sort_values(["n_edges", "network_a", "network_b"],
                                 ascending=[False, True, True], ignore_index=True)

    def to_networkx(self, component: int | None = None) -> networkx.Graph:
        """The component(s) as a :class:`networkx.Graph`.

        Parameters
        ----------
        component : int, optional
            One component; by default every component (edge attribute ``component``).

        Returns
        -------
        networkx.Graph
            Nodes carry the node-table columns (``label``, ``network``, ...) when known;
            edges carry ``statistic``, ``component`` and ``direction``.
        """
        import networkx as nx

        if component is not None and self.components:
            self.edges_mask(component)  # validates the index
        chosen = (
            self.components
            if component is None or not self.components
            else (self.components[component],)
        )
        graph = nx.Graph()
        graph.graph.update(
            statistic=self.statistic, threshold=self.threshold, size_measure=self.size_measure
        )
        for comp in chosen:
            for node in comp.nodes:
                graph.add_node(int(node), **self._node_attributes(int(node)))
            for (i, j), stat in zip(comp.edges, comp.statistics, strict=True):
                graph.add_edge(
                    int(i),
                    int(j),
                    statistic=float(stat),
                    component=comp.index,
                    direction=comp.direction,
                )
        return graph

    def _node_attributes(self, node: int) -> dict[str, Any]:
        if self.nodes is None:
            return {}
        row = self.nodes.iloc[node]
        return {
            str(k): (v.item() if isinstance(v, np.generic) else v)
            for k, v in row.items()
            if k in _NODE_COLUMNS or k == "node"
        }

    # -- display -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self, alpha: float = 0.05) -> str:
        text = self.summary(alpha).splitlines()
        head = f"<p><b>{html.escape(text[0])}</b></p>"
        if not self.components:
            return head + "<p>No supra-threshold edge.</p>"
        frame = self.components_frame()
        significant = frame[frame["p_value"] < alpha]
        body = (
            significant.to_html(index=False, float_format="%.4g")
            if len(significant)
            else f"<p>{html.escape(text[1])}</p>"
        )
        rest = f"<p>{html.escape(text[-1])}</p>" if len(significant) < len(frame) else ""
        return head + body + rest


@dataclass(frozen=True)
class _StatisticMap:
    """An edge statistic map as the figures take it (``matrix`` and ``nodes``)."""

    matrix: np.ndarray
    nodes: pd.DataFrame
    session_id: str | None = None
    kind: str = "covariance"  # no correlation-specific caption


def _node_column(nodes: pd.DataFrame | None, column: str, n_nodes: int) -> list[Any]:
    if nodes is None or column not in nodes.columns:
        return [None] * n_nodes
    return list(nodes[column])
