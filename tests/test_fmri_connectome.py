"""Connectomes: estimates against known population (partial) correlations, flagged nodes,
graph metrics against hand-computed values and against bctpy/networkx, BIDS round trip.

Ground truth comes from the generative covariance (numpy multivariate normal), analytic
formulas or independent libraries, never from the functions under test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import bct
import networkx as nx
import numpy as np
import pandas as pd
import pytest

from msimaging.derivatives import DerivativesWriter, read_relmat, read_table
from msimaging.errors import InputError, MSImagingWarning
from msimaging.fmri.connectome import (
    EDGE_COLUMNS,
    FISHER_Z_MAX_R,
    METRIC_COLUMNS,
    NODE_COLUMNS,
    Connectome,
    connectivity,
    load_connectome,
)

N_VOLUMES = 6000
# A 5-node population correlation with a chain of partial dependencies.
POPULATION = np.array(
    [
        [1.0, 0.6, 0.3, 0.1, 0.0],
        [0.6, 1.0, 0.5, 0.2, -0.2],
        [0.3, 0.5, 1.0, 0.4, 0.1],
        [0.1, 0.2, 0.4, 1.0, 0.3],
        [0.0, -0.2, 0.1, 0.3, 1.0],
    ]
)


def _signals(cov=POPULATION, n=N_VOLUMES, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return scale * rng.multivariate_normal(np.zeros(len(cov)), cov, size=n)


def _nodes(n):
    return pd.DataFrame(
        {
            "node": np.arange(n),
            "label": [f"roi{k}" for k in range(n)],
            "x_mm": np.linspace(-40, 40, n),
            "y_mm": np.zeros(n),
            "z_mm": np.zeros(n),
            "network": ["A", "A", "B", "B", "C", "C", "C", "A"][:n],
        }
    )


@dataclass(frozen=True)
class FakeTimeSeries:
    """Stands for msimaging.fmri.timeseries.TimeSeries (duck typing)."""

    data: np.ndarray
    nodes: pd.DataFrame
    tr_s: float = 2.0
    strategy: str = "test"
    participant_id: str | None = "sub-07"
    session_id: str | None = "ses-M3"


OFF = ~np.eye(5, dtype=bool)


# ------------------------------------------------------------------------------- estimates
def test_correlation_recovers_the_population_correlation():
    conn = connectivity(_signals(), fisher_z=False)
    assert conn.kind == "correlation" and not conn.fisher_z
    r = conn.matrix
    # Sampling SD of r is (1 - rho^2) / sqrt(n); 4.5 SD over 10 edges.
    tolerance = 4.5 * (1 - POPULATION**2) / np.sqrt(N_VOLUMES)
    assert np.all(np.abs(r - POPULATION)[OFF] < tolerance[OFF])
    np.testing.assert_allclose(np.diag(r), 1.0, atol=1e-12)
    np.testing.assert_allclose(r, r.T)


def test_correlation_is_the_sample_pearson_correlation_even_with_few_volumes():
    # 40 nodes, 30 volumes: Ledoit-Wolf shrinkage would pull every r towards 0.
    rng = np.random.default_rng(20)
    data = rng.standard_normal((30, 40)) + rng.standard_normal((30, 1))
    r = connectivity(data, fisher_z=False).matrix
    np.testing.assert_allclose(r, np.corrcoef(data, rowvar=False), atol=1e-12)


def test_fisher_z_is_arctanh_of_r_with_zero_diagonal():
    data = _signals(seed=1)
    r = connectivity(data, fisher_z=False).matrix
    z = connectivity(data).matrix
    np.testing.assert_allclose(z[OFF], np.arctanh(r[OFF]), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.diag(z), 0.0)
    # z has SD 1/sqrt(n - 3) around arctanh(rho), whatever rho.
    assert np.all(np.abs(z - np.arctanh(POPULATION * OFF))[OFF] < 4.5 / np.sqrt(N_VOLUMES - 3))


def test_fisher_z_clips_perfect_correlations():
    data = _signals(seed=2)
    data[:, 1] = 3.0 * data[:, 0] + 2.0  # |r| = 1 with node 0
    z = connectivity(data, kind="correlation").matrix
    assert np.isfinite(z).all()
    assert z[0, 1] == pytest.approx(np.arctanh(FISHER_Z_MAX_R), rel=1e-6)


def test_partial_correlation_matches_the_analytic_inverse_covariance():
    precision = np.linalg.inv(POPULATION)
    d = np.sqrt(np.diag(precision))
    expected = -precision / np.outer(d, d)
    conn = connectivity(_signals(seed=3), "partial correlation", fisher_z=False)
    se = 1.0 / np.sqrt(N_VOLUMES - 3 - (len(POPULATION) - 2))
    err = np.abs(np.arctanh(conn.matrix[OFF]) - np.arctanh(expected[OFF]))
    assert err.max() < 4.5 * se
    # Nodes 0 and 4 are nearly conditionally independent although marginally not exactly 0.
    assert abs(conn.matrix[0, 4] - expected[0, 4]) < 0.06


def test_covariance_keeps_signal_units():
    conn = connectivity(_signals(seed=4, scale=3.0), "covariance", fisher_z=True)
    assert conn.kind == "covariance" and conn.fisher_z is False  # z does not apply
    np.testing.assert_allclose(conn.matrix, 9.0 * POPULATION, atol=0.5)
    assert conn.matrix[0, 0] == pytest.approx(9.0, rel=0.06)


def test_tangent_needs_several_time_series_and_names_the_argument():
    with pytest.raises(InputError, match="timeseries"):
        connectivity(_signals(n=200), "tangent")
    with pytest.raises(InputError, match="at least 2"):
        connectivity([_signals(n=200)], "tangent")


def test_tangent_of_identical_sessions_is_zero_and_differences_are_antisymmetric():
    data = _signals(n=800, seed=5)
    same = connectivity([data, data, data], "tangent")
    assert isinstance(same, list) and len(same) == 3
    for conn in same:
        # Every session equals the group mean: log(I) = 0 in the tangent space.
        np.testing.assert_allclose(conn.matrix, 0.0, atol=1e-6)
        assert conn.kind == "tangent" and conn.fisher_z is False
    other = _signals(cov=np.eye(5), n=800, seed=6)
    pair = connectivity([data, other], "tangent")
    assert np.isfinite(pair[0].matrix).all()
    # Two sessions around their geometric mean sit at opposite tangent vectors.
    np.testing.assert_allclose(pair[0].matrix, -pair[1].matrix, atol=0.05)


def test_unknown_kind_and_bad_shapes_are_refused():
    with pytest.raises(InputError, match="kind"):
        connectivity(_signals(n=50), "pearson")
    with pytest.raises(InputError, match="2-D"):
        connectivity(np.zeros((2, 50, 5)))
    with pytest.raises(InputError, match="rows but the data have"):
        connectivity(_signals(n=50), nodes=_nodes(3))


# ---------------------------------------------------------------------------- flagged nodes
@pytest.mark.parametrize("kind", ["correlation", "partial correlation"])
def test_flagged_nan_node_does_not_propagate(kind):
    data = _signals(seed=7)
    with_nan = data.copy()
    with_nan[:, 2] = np.nan
    conn = connectivity(with_nan, kind, nodes=_nodes(5))
    reference = connectivity(np.delete(data, 2, axis=1), kind).matrix
    assert np.isnan(conn.matrix[2]).all() and np.isnan(conn.matrix[:, 2]).all()
    kept = np.delete(np.delete(conn.matrix, 2, axis=0), 2, axis=1)
    assert np.isfinite(kept).all()
    np.testing.assert_allclose(kept, reference, rtol=1e-12, atol=1e-12)
    assert conn.nodes.loc[2, "flagged"] and conn.nodes.loc[2, "flag_reason"] == "no signal"
    assert not conn.nodes["flagged"].drop(index=2).any()
    edges = conn.to_frame()
    touching = (edges["i"] == 2) | (edges["j"] == 2)
    assert edges.loc[touching, "weight"].isna().all()
    assert edges.loc[~touching, "weight"].notna().all()


def test_nodes_flagged_in_the_table_and_constant_nodes_are_left_out():
    data = _signals(seed=8)
    nodes = _nodes(5)
    nodes["flagged"] = [False, False, False, True, False]
    nodes["flag_reason"] = [None, None, None, "outside brain mask", None]
    data[:, 0] = 4.0
    with pytest.warns(MSImagingWarning, match="constant"):
        conn = connectivity(data, nodes=nodes)
    assert np.isnan(conn.matrix[[0, 3]]).all()
    assert conn.nodes.loc[3, "flag_reason"] == "outside brain mask"
    assert conn.nodes.loc[0, "flag_reason"] == "constant signal"
    assert np.isfinite(conn.matrix[np.ix_([1, 2, 4], [1, 2, 4])]).all()


def test_partly_missing_node_is_refused():
    data = _signals(n=100)
    data[10:20, 1] = np.nan
    with pytest.raises(InputError, match="NaN in some volumes"):
        connectivity(data)


def test_tangent_leaves_out_nodes_flagged_in_any_session():
    a, b = _signals(n=600, seed=9), _signals(n=600, seed=10)
    a[:, 0] = np.nan
    out = connectivity([a, b], "tangent")
    for conn in out:
        assert np.isnan(conn.matrix[0]).all()
        assert np.isfinite(conn.matrix[1:, 1:]).all()
    assert out[1].nodes.loc[0, "flagged"]


# ------------------------------------------------------------------------ inputs and tables
def test_timeseries_objects_and_lists_are_accepted():
    nodes = _nodes(5)
    ts = FakeTimeSeries(_signals(n=300), nodes)
    conn = connectivity(ts)
    assert (conn.participant_id, conn.session_id) == ("sub-07", "ses-M3")
    assert conn.nodes["label"].tolist() == nodes["label"].tolist()
    assert list(conn.nodes.columns[: len(NODE_COLUMNS)]) == list(NODE_COLUMNS)
    both = connectivity([ts, _signals(n=300, seed=1)], participant_id=[None, "sub-02"])
    assert [c.participant_id for c in both] == ["sub-07", "sub-02"]
    assert both[1].nodes["label"].tolist() == [f"node{k}" for k in range(5)]


def test_to_frame_is_the_upper_triangle_with_node_attributes():
    conn = connectivity(_signals(n=400), nodes=_nodes(5), participant_id="sub-01")
    edges = conn.to_frame()
    assert list(edges.columns) == list(EDGE_COLUMNS)
    assert len(edges) == 10 and (edges["i"] < edges["j"]).all()
    row = edges[(edges["i"] == 1) & (edges["j"] == 3)].iloc[0]
    assert row["weight"] == conn.matrix[1, 3]
    assert (row["label_i"], row["label_j"]) == ("roi1", "roi3")
    assert (row["network_i"], row["network_j"]) == ("A", "B")
    assert (row["hemisphere_i"], row["hemisphere_j"]) == ("L", "R")  # x = -20, +20 mm
    assert (edges["participant_id"] == "sub-01").all()


def test_edges_above_and_subgraph():
    matrix = np.array(
        [
            [0.0, 0.9, -0.8, 0.1],
            [0.9, 0.0, 0.3, 0.5],
            [-0.8, 0.3, 0.0, 0.2],
            [0.1, 0.5, 0.2, 0.0],
        ]
    )
    conn = Connectome(matrix, None, fisher_z=True)
    np.testing.assert_array_equal(conn.edges_above(0.25), [[0, 1], [1, 3], [1, 2]])
    np.testing.assert_array_equal(conn.edges_above(0.6, absolute=True), [[0, 1], [0, 2]])
    sub = conn.subgraph([(1, 0), (3, 1)])
    expected = np.zeros((4, 4))
    expected[0, 1] = expected[1, 0] = 0.9
    expected[1, 3] = expected[3, 1] = 0.5
    np.testing.assert_array_equal(sub.matrix, expected)
    mask = np.zeros((4, 4), bool)
    mask[2, 0] = True
    assert sub.subgraph(mask).matrix.sum() == 0  # (0, 2) is not in the subgraph
    np.testing.assert_array_equal(conn.subgraph(mask).matrix[0, 2], -0.8)
    with pytest.raises(InputError, match=r"0\.\.3"):
        conn.subgraph([(0, 4)])


def test_to_networkx_keeps_valid_nodes_attributes_and_threshold():
    data = _signals(n=500, seed=11)
    data[:, 4] = np.nan
    conn = connectivity(data, nodes=_nodes(5), participant_id="sub-01")
    graph = conn.to_networkx()
    assert sorted(graph.nodes) == [0, 1, 2, 3]
    assert graph.nodes[1]["label"] == "roi1" and graph.nodes[2]["network"] == "B"
    assert graph.number_of_edges() == 6
    assert graph.edges[0, 1]["weight"] == conn.matrix[0, 1]
    strong = conn.to_networkx(threshold=0.3)
    expected = {(i, j) for i in range(4) for j in range(i + 1, 4) if conn.matrix[i, j] > 0.3}
    assert {tuple(sorted(e)) for e in strong.edges} == expected
    assert graph.graph["participant_id"] == "sub-01"


def test_repr_html_summarises():
    conn = connectivity(_signals(n=300), nodes=_nodes(5), participant_id="sub-01")
    text = conn._repr_html_()
    assert "5 nodes" in text and "correlation" in text and "Fisher z" in text
    assert "<table>" in text and "<td>A</td>" in text


# ---------------------------------------------------------------------------- graph metrics
def _hand_graph():
    # Triangle 0-1-2, pendant 3 on 2, node 4 only negatively connected; all weights 0.5.
    w = np.zeros((5, 5))
    for i, j in [(0, 1), (0, 2), (1, 2), (2, 3)]:
        w[i, j] = w[j, i] = 0.5
    w[0, 4] = w[4, 0] = -0.3
    return Connectome(w, None, fisher_z=True, participant_id="sub-01")


def test_graph_metrics_of_a_hand_built_graph():
    table = _hand_graph().graph_metrics()
    assert list(table.columns) == list(METRIC_COLUMNS)
    np.testing.assert_array_equal(table["degree"], [2, 2, 3, 1, 0])
    np.testing.assert_allclose(table["strength"], [1.0, 1.0, 1.5, 0.5, 0.0])
    # Equal weights: weighted clustering = binary clustering; node 2 closes 1 of 3 pairs.
    np.testing.assert_allclose(table["clustering"], [1, 1, 1 / 3, 0, 0])
    # Node 2 is on the shortest paths 0-3 and 1-3: 2 of the (n-1)(n-2)/2 = 6 pairs.
    np.testing.assert_allclose(table["betweenness"], [0, 0, 1 / 3, 0, 0])
    # Local efficiency: node 2's neighbours 0, 1, 3 have one link (0-1) out of 3 pairs.
    np.testing.assert_allclose(table["local_efficiency"], [1, 1, 1 / 3, 0, 0])
    # Global: inverse distances (normalised weights 1) 4 pairs at 1, 2 pairs at 1/2, 4 at 0.
    assert table["global_efficiency"].iloc[0] == pytest.approx((4 + 2 * 0.5) / 10)
    assert table["density"].iloc[0] == pytest.approx(4 / 10)
    empty = _hand_graph().graph_metrics(threshold=0.6)
    assert (empty["degree"] == 0).all() and (empty["global_efficiency"] == 0).all()
    with pytest.raises(InputError, match="threshold must be >= 0"):
        _hand_graph().graph_metrics(threshold=-0.1)


def _random_connectome(n=24, seed=12):
    rng = np.random.default_rng(seed)
    w = rng.uniform(-0.3, 1.0, size=(n, n))
    w = np.triu(w, 1)
    w = w + w.T
    w[rng.random((n, n)) < 0.5] = 0.0  # sparse, asymmetric mask made symmetric below
    w = np.minimum(w, w.T)
    w[3, :] = w[:, 3] = np.nan  # one flagged node
    return Connectome(w, None, fisher_z=True)


def test_graph_metrics_agree_with_networkx_and_bctpy():
    conn = _random_connectome()
    table = conn.graph_metrics(threshold=0.1)
    valid = np.flatnonzero(conn.valid)
    assert table.loc[3, ["degree", "clustering", "betweenness"]].isna().all()
    graph = conn.to_networkx(threshold=0.1)
    assert sorted(graph.nodes) == valid.tolist()
    rows = table.loc[valid]
    np.testing.assert_array_equal(rows["degree"], [graph.degree(v) for v in valid])
    np.testing.assert_allclose(rows["strength"], [graph.degree(v, weight="weight") for v in valid])
    clustering = nx.clustering(graph, weight="weight")  # Onnela, weights / max weight
    np.testing.assert_allclose(rows["clustering"], [clustering[v] for v in valid], atol=1e-12)
    for _, _, data in graph.edges(data=True):
        data["length"] = 1.0 / data["weight"]
    betweenness = nx.betweenness_centrality(graph, weight="length", normalized=True)
    np.testing.assert_allclose(rows["betweenness"], [betweenness[v] for v in valid], atol=1e-12)
    # Efficiencies: bctpy's reference implementation on the normalised weights.
    w = nx.to_numpy_array(graph, nodelist=valid.tolist(), weight="weight")
    w /= w.max()
    np.testing.assert_allclose(rows["local_efficiency"], bct.efficiency_wei(w, local=True))
    assert rows["global_efficiency"].iloc[0] == pytest.approx(bct.efficiency_wei(w))
    np.testing.assert_allclose(rows["clustering"], bct.clustering_coef_wu(w), atol=1e-12)
    lengths = bct.weight_conversion(w, "lengths")
    n = len(valid)
    np.testing.assert_allclose(
        rows["betweenness"], bct.betweenness_wei(lengths) / ((n - 1) * (n - 2)), atol=1e-12
    )


def test_betweenness_counts_tied_shortest_paths_like_networkx():
    # A 4 x 4 grid with equal weights has many tied shortest paths.
    grid = nx.grid_2d_graph(4, 4)
    w = nx.to_numpy_array(grid) * 0.7
    table = Connectome(w, None).graph_metrics()
    expected = nx.betweenness_centrality(nx.from_numpy_array(w), normalized=True)
    np.testing.assert_allclose(table["betweenness"], [expected[k] for k in range(16)])


def test_density_threshold_keeps_the_strongest_fraction():
    conn = _random_connectome(n=30, seed=13)
    table = conn.graph_metrics(density=0.1)
    n = 29
    assert table["degree"].sum() / 2 == round(0.1 * n * (n - 1) / 2)
    assert table["density"].iloc[0] == pytest.approx(
        round(0.1 * n * (n - 1) / 2) / (n * (n - 1) / 2)
    )
    with pytest.raises(InputError, match="density"):
        conn.graph_metrics(density=1.5)


# ------------------------------------------------------------------------------ BIDS files
def test_save_load_round_trip_through_derivatives_writer(tmp_path):
    data = _signals(n=300, seed=14)
    data[:, 1] = np.nan
    nodes = _nodes(5)
    nodes["structure"] = ["cortexL"] * 5
    conn = connectivity(data, nodes=nodes, participant_id="sub-01", session_id="ses-M0")
    writer = DerivativesWriter(tmp_path / "derivatives", input_datasets=[tmp_path / "study"])
    path = conn.save(writer, atlas="Seitzman2018", parameters={"strategy": "simple"})
    func = tmp_path / "derivatives" / "sub-01" / "ses-M0" / "func"
    assert path == func / "sub-01_ses-M0_atlas-Seitzman2018_meas-pearsonz_relmat.tsv"
    node_file = func / "sub-01_ses-M0_atlas-Seitzman2018_nodes.tsv"
    assert node_file.is_file()
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["Kind"] == "correlation" and sidecar["FisherZ"] is True
    assert sidecar["Atlas"] == "Seitzman2018" and "Fisher z" in sidecar["Units"]
    assert sidecar["Parameters"] == {"strategy": "simple"}
    assert [n["label"] for n in sidecar["ExcludedNodes"]] == ["roi1"]
    # The files themselves: the flagged node is left out of the BEP017 matrix (finite values).
    stored = read_relmat(path)
    assert stored.shape == (4, 4) and np.isfinite(stored).all()
    assert read_table(node_file)["label"].tolist() == ["roi0", "roi2", "roi3", "roi4"]

    back = load_connectome(path)
    np.testing.assert_array_equal(back.matrix, conn.matrix)  # exact, NaN rows included
    assert (back.kind, back.fisher_z) == ("correlation", True)
    assert (back.participant_id, back.session_id) == ("sub-01", "ses-M0")
    pd.testing.assert_frame_equal(back.nodes, conn.nodes, check_dtype=False)
    assert Connectome.load(path).n_nodes == 5


def test_save_names_the_measure_and_needs_identifiers(tmp_path):
    writer = DerivativesWriter(tmp_path / "derivatives")
    conn = connectivity(_signals(n=200, scale=2.0), "covariance")
    with pytest.raises(InputError, match="participant_id"):
        conn.save(writer, atlas="Test")
    path = conn.save(writer, atlas="Test", participant_id="sub-02")
    assert path.name == "sub-02_atlas-Test_meas-covariance_relmat.tsv"
    back = load_connectome(path)
    assert back.kind == "covariance" and back.session_id is None
    np.testing.assert_array_equal(back.matrix, conn.matrix)
    with pytest.raises(InputError, match="atlas"):
        conn.save(writer, participant_id="sub-02")
