"""Connectome figures render headless from a realistic 300-node Seitzman-like connectome.

Checks what is drawn against quantities computed here from the matrix and the atlas (edge
counts above a percentile, hemisphere sides, the matrix values), and that the HTML view is
self-contained.
"""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure

from msimaging.atlases.coordinates import load_seitzman_2018
from msimaging.datasets.synthetic.functional import (
    node_covariance,
    planted_subnetwork,
    simulate_node_signals,
)
from msimaging.errors import InputError
from msimaging.fmri.connectome import Connectome, connectivity
from msimaging.fmri.plotting import (
    network_colors,
    plot_adjacency,
    plot_connectogram,
    plot_glass_brain,
    view_connectome_html,
)

FLAGGED = 7


@pytest.fixture(scope="module")
def atlas():
    return load_seitzman_2018()


@pytest.fixture(scope="module")
def planted(atlas):
    return planted_subnetwork(atlas)


@pytest.fixture(scope="module")
def conn(atlas, planted):
    cov = node_covariance(atlas, planted_nodes=planted, planted_delta_r=0.3)
    signals, _ = simulate_node_signals(cov, 150, 2.0, rng=0)
    signals[:, FLAGGED] = np.nan
    return connectivity(signals, nodes=atlas, participant_id="sub-01", session_id="ses-M0")


@pytest.fixture(scope="module")
def planted_pairs(planted):
    i, j = np.triu_indices(len(planted), k=1)
    return np.column_stack([planted[i], planted[j]])


def _upper(conn):
    i, j = np.triu_indices(conn.n_nodes, k=1)
    return conn.matrix[i, j]


def _png_ok(path, min_bytes=20_000):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 400


def _coloured_edges(fig):
    """The one LineCollection coloured by edge weight (it has a data array)."""
    (edges,) = [
        c
        for c in fig.axes[0].collections
        if isinstance(c, LineCollection) and c.get_array() is not None
    ]
    return edges


# ------------------------------------------------------------------------------- adjacency
def test_adjacency_png_shows_the_matrix_ordered_by_network(conn, atlas, planted_pairs, tmp_path):
    path = tmp_path / "adjacency.png"
    fig = plot_adjacency(conn, highlight_edges=planted_pairs, path=path)
    assert isinstance(fig, Figure)
    _png_ok(path)
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (300, 300)
    shown = np.ma.filled(image.astype(float), np.nan)
    off = conn.matrix[~np.eye(300, dtype=bool)]
    # The same values (a permutation of rows and columns), diagonal hidden.
    np.testing.assert_array_equal(
        np.sort(shown[np.isfinite(shown)]), np.sort(off[np.isfinite(off)])
    )
    # Network labels with their node counts, from the atlas.
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    counts = atlas["network"].value_counts()
    assert {f"{name} ({n})" for name, n in counts.items()} <= texts
    # Networks are contiguous blocks: the permuted matrix's row networks change 13 times.
    strip = fig.axes[1].images[0].get_array().ravel()
    assert np.count_nonzero(np.diff(strip)) == atlas["network"].nunique() - 1
    highlighted = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert len(highlighted[0].get_offsets()) == len(planted_pairs)


def test_adjacency_svg_and_bad_extension(conn, tmp_path):
    small = conn.subgraph(conn.edges_above(0.5))
    path = tmp_path / "adjacency.svg"
    plot_adjacency(small, path=path)
    assert "<svg" in path.read_text()[:2000]
    with pytest.raises(InputError, match="view_connectome_html"):
        plot_adjacency(small, path=tmp_path / "adjacency.html")


# ---------------------------------------------------------------------------- connectogram
def test_connectogram_draws_the_strongest_edges_with_mirrored_hemispheres(conn, atlas, tmp_path):
    path = tmp_path / "connectogram.png"
    fig = plot_connectogram(conn, threshold="99%", path=path)
    _png_ok(path)
    ax = fig.axes[0]
    weights = _upper(conn)
    finite = np.abs(weights[np.isfinite(weights)])
    expected = int(np.sum(finite >= np.percentile(finite, 99)))
    assert len(_coloured_edges(fig).get_segments()) == expected
    # Left-hemisphere nodes on the left half, right ones on the right (midline: by x sign).
    nodes = next(c for c in ax.collections if isinstance(c, PathCollection))
    x = nodes.get_offsets()[:, 0]
    valid = np.ones(300, bool)
    valid[FLAGGED] = False
    hemisphere = atlas["hemisphere"].to_numpy()[valid]
    assert np.all(x[hemisphere == "L"] < 0) and np.all(x[hemisphere == "R"] > 0)


def test_connectogram_highlight_colours_only_the_subnetwork(conn, planted_pairs, tmp_path):
    fig = plot_connectogram(conn, highlight_edges=planted_pairs, path=tmp_path / "c.png")
    coloured = _coloured_edges(fig)
    assert len(coloured.get_segments()) == len(planted_pairs)
    np.testing.assert_allclose(
        np.sort(coloured.get_array()),
        np.sort(conn.matrix[planted_pairs[:, 0], planted_pairs[:, 1]]),
    )
    mask = np.zeros((300, 300), bool)
    mask[planted_pairs[:, 0], planted_pairs[:, 1]] = True
    fig_mask = plot_connectogram(conn, highlight_edges=mask)
    assert len(_coloured_edges(fig_mask).get_segments()) == len(planted_pairs)
    with pytest.raises(InputError, match="highlight_edges"):
        plot_connectogram(conn, highlight_edges=np.zeros((3, 3), bool))
    with pytest.raises(InputError, match="percentile"):
        plot_connectogram(conn, threshold="top1")


def test_connectogram_without_coordinates_uses_the_whole_circle():
    rng = np.random.default_rng(0)
    conn = connectivity(rng.standard_normal((100, 12)))
    fig = plot_connectogram(conn, threshold=0.0)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert "node0" in texts and "Left" not in texts  # labels for small graphs, no sides
    assert isinstance(conn.plot("adjacency"), Figure)
    with pytest.raises(InputError, match="style"):
        conn.plot("chord")


# ------------------------------------------------------------------------- nilearn figures
def test_glass_brain_png(conn, planted_pairs, tmp_path):
    path = tmp_path / "glass.png"
    fig = plot_glass_brain(conn, highlight_edges=planted_pairs, node_color="weight", path=path)
    assert isinstance(fig, Figure)
    _png_ok(path)
    with pytest.raises(InputError, match="node_color"):
        plot_glass_brain(conn, node_color="degree")
    no_coords = Connectome(np.eye(3) * 0 + 0.2, None)
    with pytest.raises(InputError, match="coordinates"):
        plot_glass_brain(no_coords)


def test_view_connectome_html_is_self_contained(conn, tmp_path):
    path = tmp_path / "connectome.html"
    view = view_connectome_html(conn, path, threshold="99.5%")
    text = path.read_text(encoding="utf-8")
    assert view.get_standalone() == text
    assert len(text) > 1_000_000  # jQuery, plotly and the brain mesh are inlined
    # No external script, stylesheet or icon: the page opens offline. (nilearn's template
    # links a favicon on GitHub; view_connectome_html removes it. The inlined plotly code
    # contains URL strings, e.g. documentation links, that are never fetched for this plot.)
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", text, flags=re.IGNORECASE)
    assert tags and not [t for t in tags if re.search(r"(?:src|href)\s*=", t, re.IGNORECASE)]
    assert "connectomeInfo" in text
    with pytest.raises(InputError, match="html"):
        view_connectome_html(conn, tmp_path / "connectome.png")


def test_network_colors_are_distinct_with_unassigned_grey(atlas):
    colors = network_colors(atlas)
    assert list(colors)[-1] == "unassigned" and colors["unassigned"] == "#bdbdbd"
    assert len(set(colors.values())) == len(colors) == 14


def test_figures_take_any_object_with_matrix_and_nodes(conn, atlas):
    # plotting knows no Connectome class (no import cycle): a plain matrix + atlas table works
    # and draws the same edges as the Connectome it came from.
    from types import SimpleNamespace

    plain = SimpleNamespace(matrix=np.array(conn.matrix), nodes=atlas)
    drawn = _coloured_edges(plot_connectogram(plain, threshold="99%")).get_segments()
    expected = _coloured_edges(plot_connectogram(conn, threshold="99%")).get_segments()
    assert len(drawn) == len(expected) > 0
    with pytest.raises(InputError, match=r"\.matrix"):
        plot_adjacency(np.eye(3))
