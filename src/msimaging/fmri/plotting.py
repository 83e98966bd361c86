"""Figures of a :class:`~msimaging.fmri.connectome.Connectome`.

* :func:`plot_adjacency`: the weighted adjacency matrix ordered by network (then hemisphere,
  then anterior to posterior), with network separators, colour strips and labels.
* :func:`plot_connectogram`: a circular connectogram, left hemisphere on the left half and
  right hemisphere mirrored on the right half, networks as coloured arcs, the strongest (or the
  highlighted) edges as Bezier curves coloured by weight.
* :func:`plot_glass_brain`: nilearn's :func:`~nilearn.plotting.plot_connectome` glass brain,
  node size = degree and node colour = network or strength of the drawn edges.
* :func:`view_connectome_html`: nilearn's interactive 3-D
  :func:`~nilearn.plotting.view_connectome`, saved as one self-contained HTML file.

Every function accepts ``highlight_edges`` — a subset of edges to show, e.g. a significant
subnetwork: ``(i, j)`` matrix positions or a boolean ``(n_nodes, n_nodes)`` mask — and returns
its figure object; with ``path`` it also saves it atomically, in the format given by the
extension (``.png``, ``.svg`` or ``.pdf`` for the static figures, ``.html`` for the 3-D view).

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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from msimaging.derivatives import atomic_path, atomic_write_text
from msimaging.errors import DependencyError, InputError
from msimaging.fmri.connectome import Connectome, _edge_mask

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "network_colors",
    "plot_adjacency",
    "plot_connectogram",
    "plot_glass_brain",
    "view_connectome_html",
]

_FIGURE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
_UNASSIGNED_COLOR = "#bdbdbd"
_MISSING_COLOR = "#e0e0e0"
_HEMISPHERE_RANK = {"L": 0, "M": 1, "R": 2}
# nilearn's page template links its favicon on GitHub: the only external URL in the file.
_FAVICON = re.compile(r"<link\s+rel=\"icon\"[^>]*>", re.IGNORECASE | re.DOTALL)


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------
def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a core dependency
        raise DependencyError(
            "Plotting needs matplotlib: pip install 'msimaging[report]' (or pip install "
            "matplotlib)."
        ) from exc
    return matplotlib, Figure


def _as_connectome(connectome: Any) -> Connectome:
    if isinstance(connectome, Connectome):
        return connectome
    if hasattr(connectome, "matrix") and hasattr(connectome, "nodes"):
        return Connectome(
            matrix=connectome.matrix,
            nodes=connectome.nodes,
            kind=getattr(connectome, "kind", "correlation"),
            fisher_z=getattr(connectome, "fisher_z", False),
        )
    raise InputError(
        f"connectome must be a Connectome (from msimaging.fmri.connectivity), got "
        f"{type(connectome).__name__}."
    )


def _network_order(nodes: pd.DataFrame) -> list[str]:
    """Networks in order of first appearance, ``unassigned`` last."""
    names = list(dict.fromkeys(nodes["network"].astype(str)))
    return [n for n in names if n.lower() != "unassigned"] + [
        n for n in names if n.lower() == "unassigned"
    ]


def network_colors(nodes: pd.DataFrame) -> dict[str, str]:
    """The colour of each network, as used by every figure of this module.

    Parameters
    ----------
    nodes : pandas.DataFrame
        Node table with a ``network`` column (e.g. :attr:`Connectome.nodes`).

    Returns
    -------
    dict of str to str
        Network name to hex colour, in the figures' network order (first appearance,
        ``unassigned`` last and grey). Up to 18 networks get distinct colours; more cycle.
    """
    matplotlib, _ = _matplotlib()
    if not isinstance(nodes, pd.DataFrame) or "network" not in nodes:
        raise InputError("nodes must be a DataFrame with a 'network' column.")
    tab20 = matplotlib.colormaps["tab20"].colors
    # Dark shades first, then light ones; tab20's greys (14, 15) are kept for "unassigned".
    palette = [tab20[k] for k in range(0, 20, 2) if k != 14] + [
        tab20[k] for k in range(1, 20, 2) if k != 15
    ]
    colors = {}
    k = 0
    for name in _network_order(nodes):
        if name.lower() == "unassigned":
            colors[name] = _UNASSIGNED_COLOR
        else:
            colors[name] = matplotlib.colors.to_hex(palette[k % len(palette)])
            k += 1
    return colors


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
    conn: Connectome, threshold: Any, highlight_edges: Any
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


def _kind_label(conn: Connectome) -> str:
    return f"{conn.kind} (Fisher z)" if conn.fisher_z else conn.kind


def _who(conn: Connectome) -> str:
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
    connectome: Connectome,
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
    connectome : Connectome
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
    matplotlib.figure.Figure
    """
    matplotlib, figure_cls = _matplotlib()
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap

    conn = _as_connectome(connectome)
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


def _weight_label(conn: Connectome) -> str:
    # A caller drawing another edge quantity (e.g. an NBS t map) names it in the node table.
    if conn.nodes.attrs.get("weight_label"):
        return str(conn.nodes.attrs["weight_label"])
    return {
        True: "Fisher z",
        False: {"covariance": "covariance", "tangent": "tangent-space value"}.get(conn.kind, "r"),
    }[conn.fisher_z]


def _default_title(conn: Connectome, what: str) -> str:
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
    connectome: Connectome,
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
    connectome : Connectome
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
    matplotlib.figure.Figure
    """
    matplotlib, figure_cls = _matplotlib()
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    conn = _as_connectome(connectome)
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
        for (x, y), angle, label in zip(xy, np.degrees(theta), nodes["label"], strict=True):
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
    conn: Connectome, threshold: Any, highlight_edges: Any, node_color: str
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
        "labels": nodes["label"].astype(str).tolist(),
        "vmax": vmax if vmax > 0 else 1.0,
        "n_edges": len(weight),
        "cutoff": cutoff,
        "highlighted": highlight_edges is not None,
    }


def plot_glass_brain(
    connectome: Connectome,
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
    connectome : Connectome
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
    matplotlib.figure.Figure
        Node size is proportional to the degree in the drawn graph (nodes without drawn edges
        are small dots).
    """
    matplotlib, figure_cls = _matplotlib()
    from matplotlib.patches import Patch
    from nilearn.plotting import plot_connectome

    conn = _as_connectome(connectome)
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


def view_connectome_html(
    connectome: Connectome,
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
    connectome : Connectome
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
    conn = _as_connectome(connectome)
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
    view.html = _FAVICON.sub("", view.html)
    atomic_write_text(path, view.get_standalone())
    return view
