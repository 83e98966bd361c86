"""Network-Based Statistic (Zalesky, Fornito & Bullmore 2010) on stacks of connectivity matrices.

:func:`nbs` fits a general linear model at every edge of a stack of connectivity matrices,
thresholds the edge statistics, finds the connected components of the supra-threshold edges
and gives each component a family-wise error (FWER) corrected p-value from the permutation
distribution of the largest component. :func:`nbs_paired`, :func:`nbs_two_sample`,
:func:`nbs_one_sample` and :func:`nbs_repeated_measures` build the usual designs.

Conventions
-----------
* **Statistic.** A contrast vector gives a t statistic, a contrast matrix with several rows
  an F statistic (both the ordinary least-squares GLM statistics; the two-sample t is the
  pooled-variance t and the paired t the one-sample t of the differences, as in MATLAB NBS
  and bctpy's ``nbs_bct``).
* **Threshold.** An edge is supra-threshold when its statistic is *strictly* above the
  threshold (``t > threshold``; ``-t > threshold`` for the negative direction), as in bctpy.
  The threshold is a statistic value (``threshold=3.1``) or an uncorrected one-sided p-value
  per edge (``threshold_p=0.001``, the default) converted with the model's degrees of
  freedom. A t threshold of 3.1 is p = 0.001 only for large samples: at 4 degrees of freedom
  it is p = 0.018, and on null data (264 nodes, paired n = 5) hundreds of edges pass and
  form one giant component; such thresholds raise an :class:`~msimaging.errors.MSImagingWarning`
  giving the uncorrected p they correspond to.
* **Component size.** ``size="extent"``: the number of edges of the component;
  ``size="intensity"``: the sum over its edges of (statistic − threshold), the "Intensity"
  of MATLAB NBS. Components have at least one edge (isolated nodes are not components).
* **Tails.** ``tail="right"`` tests a positive contrast (t > threshold), ``"left"`` a
  negative one (−t > threshold). ``"both"`` runs the positive and the negative analyses
  *separately*: every component is either positive or negative, never a merged mixture (as
  bctpy's ``tail="both"`` does by thresholding |t|). Their p-values come from one null
  distribution, the largest component of either direction in each permutation, so the FWER
  is controlled over both directions together: these are two-sided p-values. F tests have
  only ``"right"``.
* **Permutations.** Nuisance regressors (every part of the design that the contrast does not
  test, including ``covariates``) are handled by Freedman–Lane: the residuals of the
  nuisance-only model are permuted (or sign-flipped) and the full model is refitted.
  Designs whose tested regressors are constant within every exchange block (one-sample,
  paired differences) use sign flips (of whole blocks when exchange blocks are given);
  others permute observations (within exchange blocks when given).
* **Exact inference.** When the whole permutation space is no larger than
  ``n_permutations`` (2^n sign flips; the distinct rearrangements of the design rows, e.g.
  ``n choose n1`` for two samples or ``(k!)^n`` for k visits permuted within n subjects) it
  is enumerated, identity included, and the p-value of a component is the exact fraction
  ``#{permutations with max component size >= observed size} / #permutations``. Otherwise
  ``n_permutations`` permutations are drawn at random with ``seed`` and
  ``p = (1 + count) / (1 + n_permutations)``.
* **Smallest attainable p.** Every result reports ``smallest_p``: the number of permutations
  that reproduce the observed statistic map (the identity, and its mirror image for
  two-sided tests or relabelled visits for repeated measures) over the number of
  permutations. With 5 paired subjects there are 2^5 = 32 sign flips: one-sided the
  smallest p is 1/32 = 0.031; two-sided (``tail="both"``) the flip of every sign mirrors the
  observed map, so the smallest p is 2/32 = 0.0625 and a two-sided claim needs p < 0.0625
  at best, which is never below 0.05. Three visits in 5 subjects give (3!)^5 = 7,776
  within-subject permutations, of which the 3! global relabellings of the visits reproduce
  the F map: the smallest p is 1/(3!)^4 = 0.00077.

Speed and memory
----------------
All edges and a block of permutations are processed at once by matrix algebra. With ``Q`` an
orthonormal basis of the (reparametrised) design and ``W`` the nuisance residuals of the
data, normalised per edge, the statistics of B permutations come from one product
``(Q' P_b)_b @ W`` (for sign flips ``P_b`` is a diagonal of signs: ``S @ W``); the threshold
is applied to it without forming the statistic where possible. Components are found by one
``scipy.sparse.csgraph.connected_components`` call per block (the B supra-threshold graphs
as one block-diagonal graph). The block size follows a memory budget (``memory_mb``, 256 MB
by default, shared by the ``n_jobs`` workers) and blocks run in parallel with joblib. The
edge data of the permutation engine are float32: the per-edge normalisation bounds every
entry of the product by 1, so the statistics have a relative error near 1e-6; the observed
statistics are computed in float64.
"""

from __future__ import annotations

import functools
import html
import itertools
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from msimaging.errors import DesignError, InputError, MSImagingWarning

if TYPE_CHECKING:
    import networkx

__all__ = [
    "DEFAULT_THRESHOLD_P",
    "SIZE_MEASURES",
    "TAILS",
    "NBSComponent",
    "NBSResult",
    "nbs",
    "nbs_one_sample",
    "nbs_paired",
    "nbs_repeated_measures",
    "nbs_two_sample",
]

#: Accepted ``size`` values: number of edges, or sum of (statistic − threshold).
SIZE_MEASURES = ("extent", "intensity")
#: Accepted ``tail`` values.
TAILS = ("right", "left", "both")
#: Uncorrected one-sided p per edge used when neither ``threshold`` nor ``threshold_p`` is
#: given (the df-aware version of MATLAB NBS's t = 3.1, which is p = 0.001 for large samples).
DEFAULT_THRESHOLD_P = 0.001

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
# Residual sums of squares (of unit-norm edge data) are floored here: a perfect fit gives a
# huge, finite statistic instead of a division by zero.
_RSS_FLOOR = 1e-12
# Relative tolerance when comparing intensity sizes computed in float32 (permutations) with
# the float64 observed size, so that permutations reproducing the observed map count.
_INTENSITY_RTOL = 1e-5
# Bytes per edge and permutation of the block engine besides the product itself (a mask and
# up to five float32 temporaries on the general path).
_BLOCK_OVERHEAD_BYTES = 24
# Largest permutation space that exact=True enumerates.
_MAX_ENUMERATION = 1_000_000


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
        self, style: str = "connectogram", *, component: int = 0, path: Any = None, **kwargs: Any
    ) -> Any:
        """Draw the edge statistic map with one component highlighted.

        The map (t or F per edge) is wrapped in a :class:`msimaging.fmri.Connectome` with the
        result's node table and drawn by the connectome figures of
        :mod:`msimaging.fmri.plotting`.

        Parameters
        ----------
        style : {"connectogram", "adjacency", "glass_brain", "html"}
            ``plot_connectogram``, ``plot_adjacency``, ``plot_glass_brain`` or
            ``view_connectome_html`` (which needs ``path``).
        component : int
            Which component to highlight (0: the most significant).
        path : str or pathlib.Path, optional
            Where to save the figure (extension picks the format).
        **kwargs
            Passed to the plotting function (e.g. ``threshold``, ``title``).

        Returns
        -------
        matplotlib.figure.Figure or nilearn HTML view
        """
        from msimaging.fmri import plotting
        from msimaging.fmri.connectome import Connectome

        functions = {
            "connectogram": plotting.plot_connectogram,
            "adjacency": plotting.plot_adjacency,
            "glass_brain": plotting.plot_glass_brain,
            "html": plotting.view_connectome_html,
        }
        style = _check_option(style, "style", tuple(functions))
        if self.nodes is None:
            raise InputError(
                "this NBS result has no node table (coordinates, networks): the figures need "
                "one; pass Connectome objects (or nodes=...) to nbs()."
            )
        nodes = self.nodes.copy()
        for column, default in (("node", None), ("flagged", False), ("flag_reason", "")):
            if column not in nodes:
                nodes[column] = np.arange(self.n_nodes) if column == "node" else default
        nodes.attrs["weight_label"] = f"{self.statistic} statistic"
        statistic = Connectome(
            self.statistic_matrix, nodes, kind="covariance", fisher_z=False,
            session_id=f"NBS {self.statistic}",
        )
        highlight = self.edges_mask(component)
        kwargs.setdefault("title", f"NBS {self.statistic} map, component {component} "
                                   f"({int(highlight.sum() // 2)} edges)")
        if style == "html":
            if path is None:
                raise InputError("style='html' writes a file: pass path='...html'.")
            return functions[style](statistic, path, highlight_edges=highlight, **kwargs)
        return functions[style](statistic, highlight_edges=highlight, path=path, **kwargs)

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
        """One row per component: size, p-value, hubs and the network pair with most edges."""
        labels = _node_column(self.nodes, "label", self.n_nodes)
        rows = []
        for comp in self.components:
            hubs = comp.hubs
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
                        str(labels[h]) if labels[h] is not None else str(h) for h in hubs
                    ),
                    "hub_degree": int(comp.degree.max()) if comp.n_nodes else 0,
                    "top_network_pair": top_pair,
                }
            )
        return pd.DataFrame(rows, columns=_COMPONENT_COLUMNS)

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
        return (
            f"NBSResult({self.statistic}-test, tail={self.tail!r}, "
            f"threshold={self.threshold:.4g} (p={self.threshold_p:.2g}), "
            f"size={self.size_measure!r}, components={len(self.components)}, "
            f"n_permutations={self.n_permutations}{' exact' if self.exact else ''}, "
            f"smallest_p={self.smallest_p:.4g})"
        )

    def _repr_html_(self) -> str:
        head = (
            f"<p><b>NBS</b> {html.escape(self.statistic)}-test "
            f"(df {', '.join(f'{d:g}' for d in self.df)}), tail {html.escape(self.tail)}, "
            f"threshold {self.threshold:.4g} (uncorrected p {self.threshold_p:.3g}), "
            f"size {html.escape(self.size_measure)}; {self.n_permutations} "
            f"{'exact ' if self.exact else 'random '}{html.escape(self.resampling)}s "
            f"(space {self.permutation_space}); smallest attainable p "
            f"{self.smallest_p:.4g}.</p>"
        )
        if not self.components:
            return head + "<p>No supra-threshold edge.</p>"
        return head + self.components_frame().to_html(index=False, float_format="%.4g")


def _node_column(nodes: pd.DataFrame | None, column: str, n_nodes: int) -> list[Any]:
    if nodes is None or column not in nodes.columns:
        return [None] * n_nodes
    return list(nodes[column])


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------
def nbs(
    matrices: Any,
    design: Any,
    contrast: Any,
    threshold: float | None = None,
    *,
    threshold_p: float | None = None,
    n_permutations: int = 5000,
    size: str = "extent",
    tail: str = "right",
    exact: bool | None = None,
    exchange_blocks: Sequence[Any] | np.ndarray | None = None,
    covariates: Any = None,
    sign_flips: bool | None = None,
    nodes: pd.DataFrame | None = None,
    seed: int | None = None,
    n_jobs: int = 1,
    memory_mb: float = 256.0,
    progress: bool = False,
) -> NBSResult:
    """Network-Based Statistic of a general linear model over a stack of connectivity matrices.

    Parameters
    ----------
    matrices : array (n_observations, n_nodes, n_nodes) or sequence
        Symmetric connectivity matrices, one per observation: a 3-D array, a sequence of 2-D
        arrays, or a sequence of objects with a ``matrix`` attribute and optionally a
        ``nodes`` table (e.g. :class:`msimaging.fmri.Connectome`). Only the upper triangle
        (without the diagonal) is used; it must be finite.
    design : array (n_observations, n_regressors) or pandas.DataFrame
        Design matrix, full column rank. Include an intercept (or group indicators that sum
        to one): permutation tests assume the model explains the mean.
    contrast : array (n_regressors,) or (n_rows, n_regressors)
        A vector (or one row) gives a t test of ``contrast @ beta``; several rows an F test
        of ``contrast @ beta = 0``. Covariates get zero weights automatically.
    threshold : float, optional
        Statistic threshold (t or F); edges strictly above it are supra-threshold. A t
        threshold of 3.1 at small df is liberal: a warning gives its uncorrected p.
    threshold_p : float, optional
        Uncorrected one-sided p per edge instead of ``threshold``, converted with the
        model's df (``scipy.stats.t.isf`` / ``f.isf``). Default (neither given): 0.001.
    n_permutations : int
        Random permutations; when the whole permutation space is not larger, it is
        enumerated instead (exact p-values).
    exact : bool, optional
        None (default): enumerate when the space is no larger than ``n_permutations``.
        False: always draw ``n_permutations`` at random (as MATLAB NBS and bctpy do).
        True: always enumerate (an error above 1,000,000 permutations).
    size : {"extent", "intensity"}
        Component size: number of edges, or sum of (statistic − threshold).
    tail : {"right", "left", "both"}
        Positive contrast, negative contrast, or both as separate analyses with a common
        (two-sided) FWER. F tests: "right" only.
    exchange_blocks : sequence, optional
        Block label of each observation: permutations stay within blocks (sign flips flip
        whole blocks).
    covariates : array (n_observations,) or (n_observations, n_covariates), optional
        Nuisance regressors appended to the design (Freedman–Lane).
    sign_flips : bool, optional
        Force sign flips (True) or permutations (False). By default sign flips are used when
        the tested regressors are constant within every exchange block (one-sample and
        paired-difference designs), where permutations could not change the statistic.
    nodes : pandas.DataFrame, optional
        Node table (one row per node: ``label``, ``network``, ``hemisphere``, ``x_mm``,
        ``y_mm``, ``z_mm``); taken from the matrices' ``nodes`` when not given.
    seed : int, optional
        Seed of the random permutations.
    n_jobs : int
        Parallel workers (joblib) for the permutation blocks; -1: all cores.
    memory_mb : float
        Memory budget (MB) of the permutation blocks, shared by the workers.
    progress : bool
        Show a progress bar (tqdm, stderr) over the permutation blocks (one worker).

    Returns
    -------
    NBSResult

    Raises
    ------
    InputError
        Non-symmetric or non-finite matrices, fewer than 3 observations, bad argument values.
    DesignError
        Design of the wrong shape or rank deficient, contrast of the wrong length, no
        degrees of freedom left, invalid exchange blocks.
    """
    y, n_nodes, table = _edge_data(matrices, "matrices", nodes=nodes)
    x, columns = _design_matrix(design, y.shape[0], covariates)
    c = _contrast_matrix(contrast, x.shape[1], n_covariates=x.shape[1] - _n_columns(design))
    return _run(
        y,
        n_nodes,
        table,
        x,
        columns,
        c,
        threshold=threshold,
        threshold_p=threshold_p,
        n_permutations=n_permutations,
        size=size,
        tail=tail,
        exact=exact,
        exchange_blocks=exchange_blocks,
        sign_flips=sign_flips,
        seed=seed,
        n_jobs=n_jobs,
        memory_mb=memory_mb,
        progress=progress,
    )


def nbs_one_sample(
    matrices: Any,
    threshold: float | None = None,
    *,
    covariates: Any = None,
    **kwargs: Any,
) -> NBSResult:
    """NBS of the mean edge value against zero, by sign flips (``tail="right"``: mean > 0).

    Parameters
    ----------
    matrices : array (n_observations, n_nodes, n_nodes) or sequence
        As in :func:`nbs` (e.g. per-subject differences of two conditions).
    threshold : float, optional
        Statistic threshold; see :func:`nbs` (``threshold_p`` also accepted).
    covariates : array, optional
        Nuisance regressors (Freedman–Lane, sign flips of the nuisance residuals).
    **kwargs
        Any other keyword of :func:`nbs` (``threshold_p``, ``n_permutations``, ``size``,
        ``tail``, ``seed``, ``n_jobs``, ...).

    Returns
    -------
    NBSResult
    """
    y, n_nodes, table = _edge_data(matrices, "matrices", nodes=kwargs.pop("nodes", None))
    x, columns = _design_matrix(
        pd.DataFrame({"mean": np.ones(y.shape[0])}), y.shape[0], covariates
    )
    c = np.zeros((1, x.shape[1]))
    c[0, 0] = 1.0
    return _run(y, n_nodes, table, x, columns, c, threshold=threshold, **_defaults(kwargs))


def nbs_paired(
    pre: Any,
    post: Any,
    threshold: float | None = None,
    *,
    covariates: Any = None,
    **kwargs: Any,
) -> NBSResult:
    """Paired NBS of ``post - pre`` by sign flips of the subjects' differences.

    ``tail="right"`` tests post > pre (an increase), ``"left"`` post < pre. The t statistic
    is the paired t (one-sample t of the differences), as bctpy's
    ``nbs_bct(post, pre, paired=True)``. With n subjects there are 2^n sign flips, so
    the smallest p is 1/2^n one-sided and 2/2^n two-sided (n = 5: 0.031 and 0.0625).

    Parameters
    ----------
    pre, post : array (n_subjects, n_nodes, n_nodes) or sequence
        The two visits of the same subjects, in the same order.
    threshold : float, optional
        Statistic threshold; see :func:`nbs` (``threshold_p`` also accepted).
    covariates : array (n_subjects, ...), optional
        Nuisance regressors of the differences (Freedman–Lane).
    **kwargs
        Any other keyword of :func:`nbs`.

    Returns
    -------
    NBSResult
    """
    node_table = kwargs.pop("nodes", None)
    y_pre, n_pre, table = _edge_data(pre, "pre", nodes=node_table)
    y_post, n_post, table_post = _edge_data(post, "post", nodes=node_table)
    if y_pre.shape != y_post.shape:
        raise InputError(
            f"pre and post must have the same shape: pre has {y_pre.shape[0]} subjects x "
            f"{n_pre} nodes, post has {y_post.shape[0]} subjects x {n_post} nodes; pass the "
            "same subjects, in the same order, with the same nodes."
        )
    y = y_post - y_pre
    x, columns = _design_matrix(
        pd.DataFrame({"post-pre": np.ones(y.shape[0])}), y.shape[0], covariates
    )
    c = np.zeros((1, x.shape[1]))
    c[0, 0] = 1.0
    return _run(
        y, n_pre, table if table is not None else table_post, x, columns, c,
        threshold=threshold, **_defaults(kwargs),
    )


def nbs_two_sample(
    a: Any,
    b: Any,
    threshold: float | None = None,
    *,
    covariates: Any = None,
    **kwargs: Any,
) -> NBSResult:
    """Two-sample NBS (pooled-variance t) by permutation of the group labels.

    ``tail="right"`` tests a > b, as bctpy's ``nbs_bct(a, b, tail="right")``. The design
    has one indicator column per group and the contrast ``[1, -1]``. With ``n_a + n_b``
    observations there are ``(n_a + n_b) choose n_a`` distinct relabellings, enumerated
    when no more than ``n_permutations``.

    Parameters
    ----------
    a, b : array (n_observations, n_nodes, n_nodes) or sequence
        The two groups.
    threshold : float, optional
        Statistic threshold; see :func:`nbs` (``threshold_p`` also accepted).
    covariates : array (n_a + n_b, ...), optional
        Nuisance regressors, rows of ``a`` first then ``b`` (Freedman–Lane).
    **kwargs
        Any other keyword of :func:`nbs`.

    Returns
    -------
    NBSResult
    """
    node_table = kwargs.pop("nodes", None)
    y_a, n_a_nodes, table = _edge_data(a, "a", nodes=node_table, min_observations=1)
    y_b, n_b_nodes, table_b = _edge_data(b, "b", nodes=node_table, min_observations=1)
    if n_a_nodes != n_b_nodes:
        raise InputError(
            f"a and b must have the same nodes: a has {n_a_nodes} nodes, b has {n_b_nodes}."
        )
    y = np.concatenate([y_a, y_b])
    _check_observations(y.shape[0], "a and b together")
    group = np.r_[np.ones(len(y_a)), np.zeros(len(y_b))]
    x, columns = _design_matrix(
        pd.DataFrame({"a": group, "b": 1.0 - group}), y.shape[0], covariates
    )
    c = np.zeros((1, x.shape[1]))
    c[0, :2] = [1.0, -1.0]
    return _run(
        y, n_a_nodes, table if table is not None else table_b, x, columns, c,
        threshold=threshold, **_defaults(kwargs),
    )


def nbs_repeated_measures(
    matrices: Any,
    subject: Sequence[Any],
    visit: Sequence[Any],
    threshold: float | None = None,
    *,
    covariates: Any = None,
    **kwargs: Any,
) -> NBSResult:
    """Repeated-measures NBS: F test of any difference between >= 3 visits.

    The design has one column per visit and one per subject (but the first); the contrast
    has the k − 1 successive visit differences. Visits are permuted within each subject
    (subjects are exchange blocks): (k!)^n permutations, of which k! reproduce the observed
    F map, so the smallest p is 1/(k!)^(n−1) (n = 5, k = 3: 0.00077).

    Parameters
    ----------
    matrices : array (n_observations, n_nodes, n_nodes) or sequence
        One matrix per subject and visit (any order).
    subject, visit : sequence
        Subject and visit label of each observation. Every subject must have every visit
        exactly once.
    threshold : float, optional
        F threshold; see :func:`nbs` (``threshold_p`` also accepted).
    covariates : array, optional
        Time-varying nuisance regressors (Freedman–Lane).
    **kwargs
        Any other keyword of :func:`nbs` but ``tail`` other than "right".

    Returns
    -------
    NBSResult
    """
    y, n_nodes, table = _edge_data(matrices, "matrices", nodes=kwargs.pop("nodes", None))
    n = y.shape[0]
    subject = _labels(subject, "subject", n)
    visit = _labels(visit, "visit", n)
    subjects = list(dict.fromkeys(subject))
    visits = sorted(set(visit), key=_natural_key)
    if len(visits) < 3:
        raise DesignError(
            f"visit has {len(visits)} distinct value(s) ({', '.join(map(str, visits))}); "
            "nbs_repeated_measures needs at least 3 visits. For 2 visits use nbs_paired, "
            "which also gives the direction of the change."
        )
    counts = Counter(zip(subject, visit, strict=True))
    for sub in subjects:
        for vis in visits:
            if counts[(sub, vis)] != 1:
                raise DesignError(
                    f"subject {sub!r} has {counts[(sub, vis)]} observation(s) at visit "
                    f"{vis!r}; nbs_repeated_measures needs every subject at every visit "
                    "exactly once (drop incomplete subjects)."
                )
    if len(subjects) < 2:
        raise DesignError("subject has one value: the repeated-measures F needs >= 2 subjects.")
    frame = {f"visit[{v}]": np.array([vv == v for vv in visit], float) for v in visits}
    for sub in subjects[1:]:
        frame[f"subject[{sub}]"] = np.array([s == sub for s in subject], float)
    x, columns = _design_matrix(pd.DataFrame(frame), n, covariates)
    k = len(visits)
    c = np.zeros((k - 1, x.shape[1]))
    for row in range(k - 1):
        c[row, row] = 1.0
        c[row, row + 1] = -1.0
    options = _defaults(kwargs)
    if "exchange_blocks" in kwargs:
        raise InputError(
            "exchange_blocks is set by nbs_repeated_measures (the subjects); do not pass it."
        )
    return _run(
        y, n_nodes, table, x, columns, c, threshold=threshold,
        **{**options, "exchange_blocks": np.asarray(subject, dtype=object), "sign_flips": False},
    )


# --------------------------------------------------------------------------------------------
# Validation of inputs
# --------------------------------------------------------------------------------------------
def _defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    allowed = {
        "threshold_p",
        "n_permutations",
        "size",
        "tail",
        "exact",
        "exchange_blocks",
        "sign_flips",
        "seed",
        "n_jobs",
        "memory_mb",
        "progress",
    }
    unknown = set(kwargs) - allowed
    if unknown:
        raise InputError(
            f"unknown keyword argument(s) {sorted(unknown)}; accepted: {sorted(allowed)}."
        )
    return kwargs


def _check_observations(n: int, name: str) -> None:
    if n < 3:
        raise InputError(
            f"{name} has {n} observation(s); NBS needs at least 3 (and more for a useful "
            "permutation distribution)."
        )


def _edge_data(
    matrices: Any,
    name: str,
    *,
    nodes: pd.DataFrame | None = None,
    min_observations: int = 3,
) -> tuple[np.ndarray, int, pd.DataFrame | None]:
    """Upper-triangle edge values (n_observations, n_edges) float64, n_nodes, node table."""
    table = None
    if isinstance(matrices, np.ndarray):
        stack = matrices
        items: Sequence[Any] = []
    else:
        if isinstance(matrices, str | bytes) or not isinstance(matrices, Sequence | tuple):
            try:
                matrices = list(matrices)
            except TypeError as exc:
                raise InputError(
                    f"{name} must be an array (n_observations, n_nodes, n_nodes) or a sequence "
                    f"of matrices or Connectome objects, got {type(matrices).__name__}."
                ) from exc
        items = list(matrices)
        stack = None
    if stack is None:
        arrays = []
        for k, item in enumerate(items):
            value = item.matrix if hasattr(item, "matrix") else item
            if table is None and getattr(item, "nodes", None) is not None:
                table = item.nodes
            try:
                arrays.append(np.asarray(value, dtype=np.float64))
            except (TypeError, ValueError) as exc:
                raise InputError(f"{name}[{k}] cannot be converted to numbers: {exc}.") from exc
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise InputError(
                f"{name} holds matrices of different shapes {sorted(shapes)}; every matrix "
                "must have the same nodes."
            )
        stack = np.stack(arrays) if arrays else np.empty((0, 0, 0))
        _check_node_tables(items, name)
    elif not np.issubdtype(stack.dtype, np.number) or np.iscomplexobj(stack):
        # Real numeric arrays are converted per observation below (no float64 copy of the
        # whole stack: 160 MB for 20 x 1000 x 1000).
        try:
            stack = np.asarray(stack, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} cannot be converted to numbers: {exc}.") from exc
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
        hint = ""
        if stack.ndim == 3 and stack.shape[0] == stack.shape[1]:
            hint = (
                " bctpy-style (n_nodes, n_nodes, n_observations) arrays: pass "
                "np.moveaxis(x, -1, 0)."
            )
        raise InputError(
            f"{name} must be (n_observations, n_nodes, n_nodes) square matrices, got shape "
            f"{stack.shape}.{hint}"
        )
    n, n_nodes, _ = stack.shape
    if min_observations >= 3:
        _check_observations(n, name)
    elif n < min_observations:
        raise InputError(f"{name} is empty: it needs at least {min_observations} matrix.")
    if n_nodes < 2:
        raise InputError(f"{name} has {n_nodes} node(s); NBS needs at least 2.")
    iu = np.triu_indices(n_nodes, k=1)
    y = np.empty((n, len(iu[0])), dtype=np.float64)
    for k in range(n):
        matrix = np.asarray(stack[k], dtype=np.float64)
        upper, lower = matrix[iu], matrix.T[iu]
        bad = ~np.isfinite(upper)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            off_diagonal = np.where(np.eye(n_nodes, dtype=bool), np.nan, matrix)
            rows_all_nan = np.flatnonzero((~np.isfinite(off_diagonal)).all(axis=1))
            extra = (
                f" Nodes {rows_all_nan.tolist()[:10]} have no finite edge (flagged nodes?): "
                "drop them from every matrix (and the node table)."
                if rows_all_nan.size
                else " Impute or drop the affected nodes in every matrix."
            )
            raise InputError(
                f"{name}[{k}] has {int(bad.sum())} non-finite (NaN/inf) edge(s), the first "
                f"between nodes {int(iu[0][first])} and {int(iu[1][first])}; NBS needs a value "
                f"for every edge of every observation.{extra}"
            )
        scale = max(1.0, float(np.abs(upper).max(initial=0.0)))
        asym = np.abs(upper - lower)
        if not np.all(np.isfinite(lower)) or asym.max(initial=0.0) > 1e-6 * scale:
            where = int(np.nanargmax(np.where(np.isfinite(asym), asym, np.inf)))
            raise InputError(
                f"{name}[{k}] is not symmetric: entry ({int(iu[0][where])}, "
                f"{int(iu[1][where])}) differs from its transpose by {asym[where]:.3g}; NBS "
                "needs undirected (symmetric) connectivity, e.g. (m + m.T) / 2."
            )
        y[k] = upper
    if nodes is not None:
        table = nodes
    if table is not None:
        if not isinstance(table, pd.DataFrame):
            raise InputError(f"nodes must be a pandas DataFrame, got {type(table).__name__}.")
        if len(table) != n_nodes:
            raise InputError(
                f"nodes has {len(table)} rows but {name} has {n_nodes} nodes; pass one row "
                "per node, in matrix order."
            )
        table = table.reset_index(drop=True)
    return y, n_nodes, table


def _check_node_tables(items: Sequence[Any], name: str) -> None:
    reference = None
    for k, item in enumerate(items):
        table = getattr(item, "nodes", None)
        if table is None or not isinstance(table, pd.DataFrame) or "label" not in table:
            continue
        labels = list(table["label"])
        if reference is None:
            reference = labels
        elif labels != reference:
            raise InputError(
                f"{name}[{k}] has a different node table (labels differ from {name}[0]); "
                "every matrix must have the same nodes in the same order."
            )


def _n_columns(design: Any) -> int:
    shape = np.shape(design)
    return 1 if len(shape) <= 1 else int(shape[1])


def _design_matrix(design: Any, n: int, covariates: Any) -> tuple[np.ndarray, tuple[str, ...]]:
    if isinstance(design, pd.DataFrame):
        columns = [str(col) for col in design.columns]
        values = design.to_numpy()
    else:
        values = design
        columns = None
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DesignError(f"design cannot be converted to numbers: {exc}.") from exc
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise DesignError(f"design must be a 2-D (n_observations, n_regressors) array, got "
                          f"shape {np.shape(values)}.")
    if x.shape[0] != n:
        raise DesignError(
            f"design has {x.shape[0]} rows but matrices has {n} observations; pass one design "
            "row per matrix."
        )
    columns = columns or [f"x{j}" for j in range(x.shape[1])]
    if covariates is not None:
        if isinstance(covariates, pd.DataFrame):
            cov_names = [str(col) for col in covariates.columns]
            cov = covariates.to_numpy(dtype=np.float64)
        else:
            try:
                cov = np.asarray(covariates, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DesignError(f"covariates cannot be converted to numbers: {exc}.") from exc
            cov = cov[:, None] if cov.ndim == 1 else cov
            cov_names = [f"covariate{j}" for j in range(cov.shape[1] if cov.ndim == 2 else 0)]
        if cov.ndim != 2 or cov.shape[0] != n:
            raise DesignError(
                f"covariates must have one row per observation ({n}), got shape {cov.shape}."
            )
        if not np.all(np.isfinite(cov)):
            raise DesignError("covariates has non-finite values (NaN/inf); impute or drop them.")
        x = np.hstack([x, cov])
        columns = columns + cov_names
    if not np.all(np.isfinite(x)):
        raise DesignError("design has non-finite values (NaN/inf).")
    rank = np.linalg.matrix_rank(x)
    if rank < x.shape[1]:
        what = "design (with covariates)" if covariates is not None else "design"
        raise DesignError(
            f"{what} is rank deficient: rank {rank} < {x.shape[1]} columns "
            f"({', '.join(columns)}); remove redundant columns (e.g. an intercept next to a "
            "full set of group indicators, or a constant covariate)."
        )
    if x.shape[0] - x.shape[1] < 1:
        raise DesignError(
            f"design has {x.shape[1]} columns for {x.shape[0]} observations: no degrees of "
            "freedom left for the error; use fewer regressors or more observations."
        )
    return x, tuple(columns)


def _contrast_matrix(contrast: Any, n_columns: int, n_covariates: int = 0) -> np.ndarray:
    try:
        c = np.asarray(contrast, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DesignError(f"contrast cannot be converted to numbers: {exc}.") from exc
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2:
        raise DesignError(f"contrast must be a vector or a matrix, got shape {c.shape}.")
    n_design = n_columns - n_covariates
    if c.shape[1] == n_design and n_covariates:
        c = np.hstack([c, np.zeros((c.shape[0], n_covariates))])
    if c.shape[1] != n_columns:
        raise DesignError(
            f"contrast has {c.shape[1]} weights per row but the design has {n_design} "
            f"columns{f' (+{n_covariates} covariates)' if n_covariates else ''}; pass one "
            "weight per design column."
        )
    if not np.all(np.isfinite(c)) or not np.any(c):
        raise DesignError("contrast must be finite and not all zero.")
    if np.linalg.matrix_rank(c) < c.shape[0]:
        raise DesignError(
            f"contrast rows are linearly dependent (rank {np.linalg.matrix_rank(c)} < "
            f"{c.shape[0]} rows); drop redundant rows."
        )
    return c


def _labels(values: Sequence[Any], name: str, n: int) -> list[Any]:
    values = list(np.asarray(values, dtype=object).ravel())
    if len(values) != n:
        raise DesignError(f"{name} has {len(values)} entries for {n} observations.")
    return values


def _natural_key(value: Any) -> tuple[Any, ...]:
    text = str(value)
    digits = "".join(ch for ch in text if ch.isdigit())
    return (int(digits) if digits else math.inf, text)


def _check_option(value: Any, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InputError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}.")
    return str(value)


# --------------------------------------------------------------------------------------------
# The model: orthonormal bases of the reparametrised design
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Model:
    q: np.ndarray  # (n, r + n_var) columns: tested space, then nuisance that permutations move
    q_nuisance: np.ndarray  # (n, q) whole nuisance space (Freedman–Lane residuals)
    r: int  # rows of the contrast (1: t)
    df: float
    tested: np.ndarray  # X @ pinv(C): the tested regressors before orthogonalisation

    @property
    def statistic(self) -> str:
        return "t" if self.r == 1 else "F"

    @property
    def n_variable_nuisance(self) -> int:
        return self.q.shape[1] - self.r


def _orthonormal(a: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    if a.shape[1] == 0:
        return np.zeros((a.shape[0], 0))
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    return u[:, s > tol * max(1.0, s.max(initial=0.0))]


def _model(x: np.ndarray, c: np.ndarray, blocks: np.ndarray | None, flips: bool) -> _Model:
    """Beckmann partition X -> [X pinv(C), X null(C)] and bases for the permutation engine."""
    n, p = x.shape
    r = c.shape[0]
    tested = x @ np.linalg.pinv(c)  # (n, r)
    vt = np.linalg.svd(c)[2]
    null_c = vt[r:].T  # (p, p - r)
    z = x @ null_c
    q_z = _orthonormal(z)
    resid_tested = tested - q_z @ (q_z.T @ tested)
    # For t the sign matters (positive = contrast > 0); for F any basis of the space will do.
    q_i = resid_tested / np.linalg.norm(resid_tested) if r == 1 else _orthonormal(resid_tested)
    # Nuisance directions that every permutation leaves fixed (block indicators, when they lie
    # in the nuisance space) drop out: the permuted residuals stay orthogonal to them.
    q_var = q_z
    if not flips and q_z.shape[1]:
        block_ind = _block_indicators(blocks, n)
        inside = np.linalg.norm(block_ind - q_z @ (q_z.T @ block_ind)) < 1e-8 * math.sqrt(n)
        if inside:
            q_block = _orthonormal(block_ind)
            q_var = _orthonormal(q_z - q_block @ (q_block.T @ q_z))
    return _Model(
        q=np.hstack([q_i, q_var]), q_nuisance=q_z, r=r, df=float(n - p), tested=tested
    )


def _block_indicators(blocks: np.ndarray | None, n: int) -> np.ndarray:
    if blocks is None:
        return np.ones((n, 1))
    _, codes = np.unique(blocks, return_inverse=True)
    out = np.zeros((n, codes.max() + 1))
    out[np.arange(n), codes] = 1.0
    return out


def _constant_within_blocks(a: np.ndarray, blocks: np.ndarray | None) -> bool:
    codes = np.zeros(len(a), int) if blocks is None else np.unique(blocks, return_inverse=True)[1]
    for code in np.unique(codes):
        part = a[codes == code]
        if not np.allclose(part, part[0], rtol=1e-9, atol=1e-12 * max(1.0, np.abs(a).max())):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Permutation sets
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    kind: str  # "sign-flip" or "permutation"
    perms: np.ndarray | None  # (K, n) row indices of the design
    signs: np.ndarray | None  # (K, n) +-1
    exact: bool
    space: int

    @property
    def count(self) -> int:
        arr = self.perms if self.perms is not None else self.signs
        assert arr is not None
        return len(arr)

    def take(self, start: int, stop: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.perms is not None:
            return self.perms[start:stop], None
        assert self.signs is not None
        return None, self.signs[start:stop]


def _plan(
    x: np.ndarray,
    blocks: np.ndarray | None,
    flips: bool,
    n_permutations: int,
    rng: np.random.Generator,
    exact: bool | None = None,
) -> _Plan:
    n = x.shape[0]
    codes = np.zeros(n, int) if blocks is None else np.unique(blocks, return_inverse=True)[1]
    n_blocks = int(codes.max()) + 1
    if flips:
        units = codes if blocks is not None else np.arange(n)
        n_units = int(units.max()) + 1
        space = 2**n_units
        if _enumerate(space, n_permutations, exact):
            k = np.arange(space)[:, None]
            bits = (k >> np.arange(n_units)[None, :]) & 1  # row 0: identity
            unit_signs = 1 - 2 * bits
            exact = True
        else:
            unit_signs = rng.choice(np.array([-1, 1]), size=(n_permutations, n_units))
            exact = False
        return _Plan("sign-flip", None, unit_signs[:, units].astype(np.int8), exact, space)
    # Distinct rearrangements of the design rows within each block (multiset permutations).
    _, row_type = np.unique(x.round(12), axis=0, return_inverse=True)
    row_type = row_type.ravel()
    members = [np.flatnonzero(codes == b) for b in range(n_blocks)]
    space = 1
    for idx in members:
        space *= _multinomial(Counter(row_type[idx].tolist()).values())
    if space == 1:
        raise DesignError(
            "exchange_blocks (or the design) allow no permutation that changes the design: "
            "every block holds one observation or identical design rows; check the blocks, "
            "or use sign flips (sign_flips=True) for one-sample designs."
        )
    if _enumerate(space, n_permutations, exact):
        per_block = [_arrangements(idx, row_type[idx]) for idx in members]
        perms = np.empty((space, n), dtype=np.int32)
        for k, combo in enumerate(itertools.product(*per_block)):
            for idx, arrangement in zip(members, combo, strict=True):
                perms[k, idx] = arrangement
        return _Plan("permutation", perms, None, True, space)
    # Random: shuffle the positions of every block independently.
    order = np.argsort(codes, kind="stable")
    keys = codes[order][None, :] + rng.random((n_permutations, n))
    shuffled = order[np.argsort(keys, axis=1)]
    perms = np.empty((n_permutations, n), dtype=np.int32)
    perms[:, order] = shuffled
    return _Plan("permutation", perms, None, False, space)


def _enumerate(space: int, n_permutations: int, exact: bool | None) -> bool:
    if exact is True and space > _MAX_ENUMERATION:
        raise InputError(
            f"exact=True: the permutation space has {space} elements, too many to enumerate "
            f"(limit {_MAX_ENUMERATION:,}); use exact=None with random permutations."
        )
    return bool(exact) or (exact is None and space <= n_permutations)


def _multinomial(counts: Any) -> int:
    counts = list(counts)
    out = math.factorial(sum(counts))
    for c in counts:
        out //= math.factorial(c)
    return out


def _arrangements(indices: np.ndarray, types: np.ndarray) -> list[np.ndarray]:
    """Every distinct arrangement of a block's design rows, identity first.

    Each arrangement gives, for every position of the block, the observation whose design
    row moves there; observations with identical rows are taken in order.
    """
    pools: dict[int, list[int]] = {}
    for index, kind in zip(indices.tolist(), types.tolist(), strict=True):
        pools.setdefault(kind, []).append(index)
    out = []
    for sequence in _multiset_permutations(types.tolist()):
        taken = {kind: iter(pool) for kind, pool in pools.items()}
        out.append(np.array([next(taken[kind]) for kind in sequence], dtype=np.int32))
    identity = next(i for i, a in enumerate(out) if np.array_equal(a, indices))
    out.insert(0, out.pop(identity))
    return out


def _multiset_permutations(items: list[int]) -> list[list[int]]:
    counts = Counter(items)
    kinds = sorted(counts)
    result: list[list[int]] = []
    current: list[int] = []

    def recurse() -> None:
        if len(current) == len(items):
            result.append(current.copy())
            return
        for kind in kinds:
            if counts[kind]:
                counts[kind] -= 1
                current.append(kind)
                recurse()
                current.pop()
                counts[kind] += 1

    recurse()
    return result


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def _design_product(model: _Model, perms: np.ndarray | None, signs: np.ndarray | None,
                    dtype: Any) -> np.ndarray:
    """Stacked (B * n_rows, n) matrix whose product with the data gives Q' P_b W for all b."""
    q = model.q
    if perms is not None:
        stacked = q[perms]  # (B, n, rows): row i of Q moves to position perm[i]
    else:
        assert signs is not None
        stacked = q[None, :, :] * signs[:, :, None]
    b, n, rows = stacked.shape
    return np.ascontiguousarray(stacked.transpose(0, 2, 1).reshape(b * rows, n), dtype=dtype)


def _statistics(model: _Model, product: np.ndarray) -> np.ndarray:
    """Edge statistics (B, E) from the product (B, rows, E) of unit-norm data."""
    r = model.r
    tested = product[:, :r, :]
    ss_tested = np.einsum("brE,brE->bE", tested, tested) if r > 1 else tested[:, 0] ** 2
    rss = 1.0 - ss_tested
    if model.n_variable_nuisance:
        nuisance = product[:, r:, :]
        rss -= np.einsum("brE,brE->bE", nuisance, nuisance)
    rss = np.maximum(rss, _RSS_FLOOR)
    if r == 1:
        return tested[:, 0] * np.sqrt(model.df / rss)
    return (ss_tested / r) / (rss / model.df)


def _supra(
    model: _Model, product: np.ndarray, threshold: float, sign: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Indices (b, e) of supra-threshold edges in a block and their statistics (or None).

    Without nuisance directions moved by the permutations the statistic is a monotone
    function of the tested part alone (rss = 1 - ss_tested), so the threshold applies to the
    product directly and the statistic is formed only at supra-threshold edges.
    """
    r, df = model.r, model.df
    if model.n_variable_nuisance == 0 and r == 1:
        cut = threshold / math.sqrt(df + threshold**2)
        m = product[:, 0, :]
        mask = m > cut if sign > 0 else m < -cut
        b_idx, e_idx = np.divmod(np.flatnonzero(mask), mask.shape[1])
        return b_idx, e_idx, None
    stats = _statistics(model, product)
    if sign < 0:
        stats = -stats
    b_idx, e_idx = np.divmod(np.flatnonzero(stats > threshold), stats.shape[1])
    return b_idx, e_idx, stats[b_idx, e_idx]


def _stat_at(model: _Model, product: np.ndarray, b_idx: np.ndarray, e_idx: np.ndarray,
             sign: int) -> np.ndarray:
    values = product[b_idx, :, e_idx].astype(np.float64)  # (k, rows)
    ss = np.sum(values[:, : model.r] ** 2, axis=1)
    rss = np.maximum(1.0 - np.sum(values**2, axis=1), _RSS_FLOOR)
    if model.r == 1:
        return sign * values[:, 0] * np.sqrt(model.df / rss)
    return (ss / model.r) / (rss / model.df)


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------
def _block_max_sizes(
    b_idx: np.ndarray,
    e_idx: np.ndarray,
    weights: np.ndarray | None,
    n_block: int,
    n_nodes: int,
    iu: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Largest component size of each of the block's graphs, all in one block-diagonal graph."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    out = np.zeros(n_block)
    if not len(e_idx):
        return out
    offset = b_idx.astype(np.int64) * n_nodes
    rows = offset + iu[0][e_idx]
    cols = offset + iu[1][e_idx]
    total = n_block * n_nodes
    graph = csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(total, total))
    _, labels = connected_components(graph, directed=False)
    present, comp = np.unique(labels[rows], return_inverse=True)
    sizes = np.bincount(comp, weights=weights, minlength=len(present))
    owner = np.zeros(len(present), dtype=np.int64)
    owner[comp] = b_idx
    np.maximum.at(out, owner, sizes)
    return out


def _null_block(
    w: np.ndarray,
    model: _Model,
    perms: np.ndarray | None,
    signs: np.ndarray | None,
    directions: tuple[int, ...],
    threshold: float,
    intensity: bool,
    n_nodes: int,
) -> np.ndarray:
    """Largest component size per permutation and direction, shape (B, n_directions)."""
    iu = _upper_indices(n_nodes)
    design = _design_product(model, perms, signs, w.dtype)
    n_block = design.shape[0] // model.q.shape[1]
    product = (design @ w).reshape(n_block, model.q.shape[1], w.shape[1])
    out = np.zeros((n_block, len(directions)))
    for d, sign in enumerate(directions):
        b_idx, e_idx, stats = _supra(model, product, threshold, sign)
        weights = None
        if intensity:
            if stats is None:
                stats = _stat_at(model, product, b_idx, e_idx, sign)
            weights = stats.astype(np.float64) - threshold
        out[:, d] = _block_max_sizes(b_idx, e_idx, weights, n_block, n_nodes, iu)
    return out


@functools.lru_cache(maxsize=4)
def _upper_indices(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n_nodes, k=1)


def _observed_components(
    stat: np.ndarray,
    threshold: float,
    sign: int,
    intensity: bool,
    n_nodes: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """(nodes, edge indices, statistics, size) of each observed component of one direction."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    iu = np.triu_indices(n_nodes, k=1)
    supra = np.flatnonzero(sign * stat > threshold)
    if not len(supra):
        return []
    rows, cols = iu[0][supra], iu[1][supra]
    graph = csr_matrix((np.ones(len(supra), np.int8), (rows, cols)), shape=(n_nodes, n_nodes))
    _, labels = connected_components(graph, directed=False)
    out = []
    for label in np.unique(labels[rows]):
        edges = supra[labels[rows] == label]
        nodes = np.unique(np.r_[iu[0][edges], iu[1][edges]])
        values = stat[edges]
        size = float(np.sum(sign * values - threshold)) if intensity else float(len(edges))
        out.append((nodes, edges, values, size))
    return out


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------
def _threshold(
    threshold: float | None, threshold_p: float | None, model: _Model
) -> tuple[float, float]:
    from scipy import stats

    if threshold is not None and threshold_p is not None:
        raise InputError("give threshold (a statistic) or threshold_p (a p-value), not both.")
    df = model.df
    if threshold is None:
        p = DEFAULT_THRESHOLD_P if threshold_p is None else threshold_p
        if not (isinstance(p, int | float) and 0.0 < float(p) < 1.0):
            raise InputError(f"threshold_p={threshold_p!r} must be a p-value in (0, 1).")
        value = (
            float(stats.t.isf(p, df)) if model.r == 1 else float(stats.f.isf(p, model.r, df))
        )
        return value, float(p)
    if not isinstance(threshold, int | float) or not math.isfinite(threshold) or threshold <= 0:
        raise InputError(
            f"threshold={threshold!r} must be a positive finite statistic value (t or F); "
            "for the negative direction use tail='left' with a positive threshold."
        )
    threshold = float(threshold)
    if model.r == 1:
        p = float(stats.t.sf(threshold, df))
        large = float(stats.norm.sf(threshold))
    else:
        p = float(stats.f.sf(threshold, model.r, df))
        large = float(stats.chi2.sf(threshold * model.r, model.r))
    if p > 2.0 * large:
        name = "t" if model.r == 1 else "F"
        warnings.warn(
            f"threshold={threshold:g} ({name}) at {df:g} degrees of freedom corresponds to an "
            f"uncorrected one-sided p of {p:.2g} per edge (p = {large:.2g} for a large "
            "sample): at small df a statistic threshold is liberal and lets many null edges "
            f"through. Pass threshold_p (e.g. threshold_p={DEFAULT_THRESHOLD_P}) for a "
            "df-aware threshold.",
            MSImagingWarning,
            stacklevel=4,
        )
    return threshold, p


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------
def _run(
    y: np.ndarray,
    n_nodes: int,
    table: pd.DataFrame | None,
    x: np.ndarray,
    columns: tuple[str, ...],
    c: np.ndarray,
    *,
    threshold: float | None = None,
    threshold_p: float | None = None,
    n_permutations: int = 5000,
    size: str = "extent",
    tail: str = "right",
    exact: bool | None = None,
    exchange_blocks: Any = None,
    sign_flips: bool | None = None,
    seed: int | None = None,
    n_jobs: int = 1,
    memory_mb: float = 256.0,
    progress: bool = False,
) -> NBSResult:
    n = y.shape[0]
    size = _check_option(size, "size", SIZE_MEASURES)
    tail = _check_option(tail, "tail", TAILS)
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int | np.integer) \
            or n_permutations < 1:
        raise InputError(f"n_permutations={n_permutations!r} must be a positive integer.")
    if not isinstance(memory_mb, int | float) or memory_mb <= 0:
        raise InputError(f"memory_mb={memory_mb!r} must be a positive number of megabytes.")
    blocks = None
    if exchange_blocks is not None:
        blocks = np.asarray(exchange_blocks, dtype=object).ravel()
        if len(blocks) != n:
            raise DesignError(
                f"exchange_blocks has {len(blocks)} entries for {n} observations; give the "
                "block (e.g. subject) of every observation."
            )
        blocks = np.asarray([str(b) for b in blocks])
    if c.shape[0] > 1 and tail != "right":
        raise InputError(f"tail={tail!r}: an F test (contrast with several rows) has only "
                         "tail='right'.")
    tested = x @ np.linalg.pinv(c)
    flips = _constant_within_blocks(tested, blocks) if sign_flips is None else bool(sign_flips)
    model = _model(x, c, blocks, flips)
    ones_fit = x @ np.linalg.lstsq(x, np.ones(n), rcond=None)[0]
    if np.linalg.norm(np.ones(n) - ones_fit) > 1e-8 * math.sqrt(n):
        warnings.warn(
            "design does not include an intercept (nor columns summing to one): the "
            "permutation test assumes the model explains each edge's mean; add a column of "
            "ones.",
            MSImagingWarning,
            stacklevel=3,
        )
    thr, thr_p = _threshold(threshold, threshold_p, model)
    rng = np.random.default_rng(seed)
    if exact not in (None, True, False):
        raise InputError(f"exact={exact!r} must be None (automatic), True or False.")
    plan = _plan(x, blocks, flips, int(n_permutations), rng, exact)
    if model.r == 1:
        directions = {"right": (1,), "left": (-1,), "both": (1, -1)}[tail]
        names = {1: "positive", -1: "negative"}
    else:
        directions = (1,)
        names = {1: "F"}
    intensity = size == "intensity"

    # Freedman–Lane: residuals of the nuisance-only model, normalised per edge.
    w = y - model.q_nuisance @ (model.q_nuisance.T @ y)
    norms = np.sqrt(np.einsum("nE,nE->E", w, w))
    scale = np.abs(y).max(axis=0) * math.sqrt(n)
    constant = norms <= 1e-10 * np.maximum(scale, 1e-300)
    norms[constant] = 1.0
    w /= norms
    w[:, constant] = 0.0

    observed_product = (model.q.T @ w)[None]  # identity permutation, float64
    stat = _statistics(model, observed_product)[0]
    stat[constant] = 0.0
    found = []
    for sign in directions:
        for comp in _observed_components(stat, thr, sign, intensity, n_nodes):
            found.append((sign, *comp))
    smallest_p = _smallest_p(model, plan, directions, y.shape[0], rng)

    null_by_direction: dict[str, np.ndarray] = {names[s]: np.zeros(0) for s in directions}
    null = np.zeros(0)
    if found:
        w32 = np.ascontiguousarray(w, dtype=np.float32)
        null_dirs = _null_distribution(
            w32, model, plan, directions, thr, intensity, n_nodes, n_jobs, memory_mb,
            progress,
        )
        if plan.exact:  # permutation 0 is the identity: the observed statistic itself
            for d, sign in enumerate(directions):
                sizes = [comp[4] for comp in found if comp[0] == sign]
                null_dirs[0, d] = max(sizes, default=0.0)
        null = null_dirs.max(axis=1)
        null_by_direction = {names[s]: null_dirs[:, d] for d, s in enumerate(directions)}
    components = _components(found, null, plan, thr, intensity, table, n_nodes, names)
    if smallest_p >= 0.05:
        warnings.warn(
            f"with this design only {plan.space} {plan.kind}s exist and the smallest "
            f"attainable p is {smallest_p:.3g}: no component can reach p < 0.05 "
            f"(tail={tail!r}). More observations are needed for a significant result.",
            MSImagingWarning,
            stacklevel=3,
        )
    matrix = np.zeros((n_nodes, n_nodes))
    iu = np.triu_indices(n_nodes, k=1)
    matrix[iu] = stat
    matrix.T[iu] = stat
    return NBSResult(
        components=components,
        statistic=model.statistic,
        statistic_matrix=matrix,
        df=(model.df,) if model.r == 1 else (float(model.r), model.df),
        threshold=thr,
        threshold_p=thr_p,
        size_measure=size,
        tail=tail,
        null_distribution=null,
        null_by_direction=null_by_direction,
        n_permutations=plan.count,
        permutation_space=plan.space,
        exact=plan.exact,
        smallest_p=smallest_p,
        resampling=plan.kind,
        design=x,
        contrast=c,
        design_columns=columns,
        exchange_blocks=blocks,
        n_observations=n,
        n_nodes=n_nodes,
        nodes=table,
        seed=seed,
        parameters={"n_permutations_requested": int(n_permutations), "n_jobs": n_jobs,
                    "memory_mb": float(memory_mb)},
    )


def _smallest_p(
    model: _Model, plan: _Plan, directions: tuple[int, ...], n: int, rng: np.random.Generator
) -> float:
    """Fraction of the permutations that reproduce the observed statistic map.

    Tested on random probe data: a permutation that gives the identity's statistics (or
    their mirror image, for two-sided tests) on generic data does so on any data.
    """
    probe_rng = np.random.default_rng(rng.integers(2**63))
    probe = probe_rng.standard_normal((n, 8))
    probe -= model.q_nuisance @ (model.q_nuisance.T @ probe)
    probe /= np.linalg.norm(probe, axis=0)
    reference = _statistics(model, (model.q.T @ probe)[None])[0]
    same = 0
    step = 4096
    for start in range(0, plan.count, step):
        perms, signs = plan.take(start, start + step)
        design = _design_product(model, perms, signs, np.float64)
        k = design.shape[0] // model.q.shape[1]
        stats = _statistics(model, (design @ probe).reshape(k, model.q.shape[1], -1))
        hit = np.all(np.isclose(stats, reference, rtol=1e-7, atol=1e-9), axis=1)
        if len(directions) == 2:
            hit |= np.all(np.isclose(stats, -reference, rtol=1e-7, atol=1e-9), axis=1)
        same += int(hit.sum())
    if plan.exact:
        return same / plan.count
    return (1 + same) / (1 + plan.count)


def _null_distribution(
    w: np.ndarray,
    model: _Model,
    plan: _Plan,
    directions: tuple[int, ...],
    threshold: float,
    intensity: bool,
    n_nodes: int,
    n_jobs: int,
    memory_mb: float,
    progress: bool = False,
) -> np.ndarray:
    n_edges = w.shape[1]
    rows = model.q.shape[1]
    workers = 1
    if n_jobs != 1:
        from joblib import effective_n_jobs

        workers = max(1, int(effective_n_jobs(n_jobs)))
    per_permutation = n_edges * (4 * rows + _BLOCK_OVERHEAD_BYTES)
    block = max(1, int(memory_mb * 2**20 / workers // per_permutation))
    block = min(block, max(1, math.ceil(plan.count / workers)))
    bounds = [(s, min(s + block, plan.count)) for s in range(0, plan.count, block)]
    args = (model, directions, threshold, intensity, n_nodes)
    if workers == 1:
        if progress:  # a bar over the permutation blocks, on stderr
            from tqdm import tqdm

            bounds = tqdm(bounds, desc=f"NBS permutations ({plan.count:,})", unit="block",
                          leave=False)
        parts = [_null_block(w, model, *plan.take(s, e), *args[1:]) for s, e in bounds]
    else:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=workers)(
            delayed(_null_block)(w, model, *plan.take(s, e), *args[1:]) for s, e in bounds
        )
    return np.concatenate(parts, axis=0)


def _components(
    found: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, float]],
    null: np.ndarray,
    plan: _Plan,
    threshold: float,
    intensity: bool,
    table: pd.DataFrame | None,
    n_nodes: int,
    names: dict[int, str],
) -> tuple[NBSComponent, ...]:
    iu = np.triu_indices(n_nodes, k=1)
    labels = _node_column(table, "label", n_nodes)
    networks = _node_column(table, "network", n_nodes)
    has_labels = table is not None and "label" in table.columns
    has_networks = table is not None and "network" in table.columns
    staged = []
    for sign, nodes, edge_idx, values, size in found:
        if intensity:
            tol = _INTENSITY_RTOL * (size + len(edge_idx) * threshold)
            count = int(np.sum(null >= size - tol))
        else:
            count = int(np.sum(null >= size))
        p = count / len(null) if plan.exact else (1 + count) / (1 + len(null))
        staged.append((p, -size, sign, nodes, edge_idx, values, size))
    staged.sort(key=lambda item: (item[0], item[1], -item[2]))
    out = []
    for index, (p, _, sign, nodes, edge_idx, values, size) in enumerate(staged):
        edges = np.column_stack([iu[0][edge_idx], iu[1][edge_idx]])
        degree = np.bincount(edges.ravel(), minlength=n_nodes)[nodes]
        pairs = None
        if has_networks:
            pairs = dict(
                Counter(
                    tuple(sorted((str(networks[i]), str(networks[j])))) for i, j in edges
                )
            )
        out.append(
            NBSComponent(
                index=index,
                direction=names[sign],
                nodes=nodes,
                edges=edges,
                statistics=values.copy(),
                size=float(size),
                p_value=float(p),
                degree=degree,
                node_labels=tuple(str(labels[i]) for i in nodes) if has_labels else None,
                network_pairs=pairs,
            )
        )
    return tuple(out)
