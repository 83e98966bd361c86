"""Threshold-free NBS and constrained (network-level) NBS against independent ground truth.

TFNBS scores are recomputed here with networkx components at every grid height and compared
with the ``tfnbs`` package (1.1.0, when installed) on the same statistic map; exact p-values
are recomputed by a plain loop over every sign flip (or within-subject arrangement) with
``scipy.stats`` statistics; the FWER is measured on null data; constrained NBS is checked
against block means computed by hand (pandas) and a planted within-network change.
"""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from msimaging.errors import InputError, MSImagingWarning
from msimaging.fmri.nbs import nbs_one_sample, nbs_paired, nbs_repeated_measures
from msimaging.fmri.nbs.threshold_free import _grid, _tfnbs_scores
from nbs_data import plant, quiet, symmetric

START = 1.65  # the documented default start of the grid
STEPS = 100  # the documented number of grid steps


def upper(stack: np.ndarray) -> np.ndarray:
    iu = np.triu_indices(stack.shape[-1], k=1)
    return stack[..., iu[0], iu[1]]


# --------------------------------------------------------------------------------------------
# Brute force: TFCE on a graph with networkx, one threshold at a time
# --------------------------------------------------------------------------------------------
def brute_scores(heights: np.ndarray, n_nodes: int, grid: np.ndarray, dh: float,
                 e: float = 0.5, h: float = 2.0) -> np.ndarray:
    edges = list(itertools.combinations(range(n_nodes), 2))
    out = np.zeros(len(edges))
    for level in grid:
        graph = nx.Graph()
        graph.add_edges_from(edge for k, edge in enumerate(edges) if heights[k] >= level)
        for nodes in nx.connected_components(graph):
            sub = graph.subgraph(nodes)
            extent = sub.number_of_edges()
            for i, j in sub.edges():
                out[edges.index((min(i, j), max(i, j)))] += extent**e * level**h * dh
    return out


def z_of_t(t: np.ndarray, df: float) -> np.ndarray:
    """z heights as documented: the normal quantile of the edge's one-sided t p-value."""
    return stats.norm.isf(stats.t.sf(t, df))


def z_of_f(f: np.ndarray, df1: float, df2: float) -> np.ndarray:
    return stats.norm.isf(stats.f.sf(f, df1, df2))


def brute_grid(h_max: float) -> tuple[np.ndarray, float]:
    dh = (h_max - START) / STEPS
    return START + dh * np.arange(1, STEPS + 1), dh


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("e", "h"), [(0.5, 2.0), (0.4, 3.0), (1.0, 1.0)])
def test_scores_equal_networkx_brute_force(e, h):
    rng = np.random.default_rng(3)
    n_nodes = 10
    n_edges = n_nodes * (n_nodes - 1) // 2
    maps = rng.gamma(2.0, 1.2, size=(3, n_edges))  # three maps scored in one block
    maps[1, :12] += 4.0  # a larger, taller component in one of them
    grid, dh = _grid(START, float(maps.max()), STEPS)
    ours = _tfnbs_scores(maps, grid, dh, e, h, n_nodes)
    for k in range(3):
        np.testing.assert_allclose(ours[k], brute_scores(maps[k], n_nodes, grid, dh, e, h),
                                   rtol=1e-10, atol=1e-12)
    assert (ours[maps < grid[0]] == 0).all() and (ours[1] > 0).sum() > 12


def test_scores_equal_the_tfnbs_package_on_the_same_map():
    score = pytest.importorskip("tfnbs.tfnbs_score")
    rng = np.random.default_rng(11)
    n_nodes = 60
    t = upper(stats.ttest_1samp(plant(symmetric(rng, 6, n_nodes), list(range(10)), 1.0),
                                0.0).statistic[None])[0]
    matrix = np.zeros((n_nodes, n_nodes))
    iu = np.triu_indices(n_nodes, k=1)
    matrix[iu] = np.maximum(t, 0.0)  # tfnbs scores one direction: negative t set to 0
    matrix += matrix.T
    for n_steps in (10, 100):
        reference = score.get_tfnbs_score(matrix, 0.5, 2.0, n_steps, start_thres=START)[iu]
        grid, dh = _grid(START, float(t.max()), n_steps)  # tfnbs's grid: top = map max
        ours = _tfnbs_scores(t[None], grid, dh, 0.5, 2.0, n_nodes)[0]
        assert reference.max() > 0
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-9 * reference.max())


def test_z_heights_equal_scipy_and_stay_ordered_in_the_far_tail():
    rng = np.random.default_rng(9)
    n, n_nodes = 8, 12
    diff = symmetric(rng, n, n_nodes) + 0.8
    result = quiet(nbs_one_sample, diff, method="tfnbs", tail="both", n_permutations=50,
                   exact=False, seed=1)
    t = stats.ttest_1samp(upper(diff), 0.0).statistic
    z = z_of_t(t, n - 1)  # independent: scipy's t.sf then norm.isf
    assert result.parameters["tfnbs_height"] == "z"
    assert result.parameters["h_max"] >= z.max() - 1e-9  # observed map is part of the grid
    assert result.parameters["native_h_max"] == pytest.approx(
        z_inverse := stats.t.isf(stats.norm.sf(result.parameters["h_max"]), n - 1), rel=1e-9)
    assert z_inverse >= t.max() - 1e-9
    # the engine's transform itself, where scipy's p underflows (t = 1e6 at df 200) too
    from msimaging.fmri.nbs.glm import _Model
    from msimaging.fmri.nbs.threshold_free import _z_from_native

    def model(r, df):
        return _Model(q=np.zeros((3, r)), q_nuisance=np.zeros((3, 0)), r=r, df=df, tested=None)

    values = np.array([-6.0, -1.0, 0.0, 0.7, 1.65, 3.0, 12.0, 40.0, 1e3, 1e6])
    for df in (4.0, 30.0, 200.0):
        ours = _z_from_native(values, model(1, df))
        # scipy's sf of a negative t is 1 - tiny (digits lost): use z(-t) = -z(t) there
        reference = np.sign(values) * z_of_t(np.abs(values), df)
        finite = np.abs(reference) < 30  # where scipy's p is representable with digits left
        np.testing.assert_allclose(ours[finite], reference[finite], rtol=1e-10, atol=1e-10)
        assert np.all(np.isfinite(ours)) and np.all(np.diff(ours) > 0)
    root_f = np.sqrt([0.3, 2.0, 9.0, 1e3, 1e12])
    ours = _z_from_native(root_f, model(2, 100.0))
    np.testing.assert_allclose(ours[:3], z_of_f(root_f[:3] ** 2, 2, 100), rtol=1e-10)
    assert np.all(np.isfinite(ours)) and np.all(np.diff(ours) > 0)
    with pytest.raises(InputError, match="tfnbs_height"):
        quiet(nbs_one_sample, diff, method="tfnbs", tfnbs_height="p")


# --------------------------------------------------------------------------------------------
# Exact p-values: enumeration equals brute force
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height", ["z", "t"])
@pytest.mark.parametrize("tail", ["right", "both"])
def test_exact_paired_p_equals_brute_force_over_every_sign_flip(tail, height):
    rng = np.random.default_rng(5)
    n, n_nodes = 5, 7
    pre = symmetric(rng, n, n_nodes)
    post = plant(symmetric(rng, n, n_nodes), [0, 1, 2, 3], 1.5)
    result = quiet(nbs_paired, pre, post, method="tfnbs", tail=tail, tfnbs_height=height)
    assert result.exact and result.n_permutations == 32 and result.method == "tfnbs"
    assert result.parameters["tfnbs_height"] == height

    diff = upper(post - pre)
    flips = [np.array(s) for s in itertools.product([1, -1], repeat=n)]
    t_maps = [stats.ttest_1samp(s[:, None] * diff, 0.0).statistic for s in flips]
    signs = (1, -1) if tail == "both" else (1,)
    # heights of each direction: z of the one-sided p of sign * t (df = n - 1), or t itself
    h_maps = {sign: [z_of_t(sign * t, n - 1) if height == "z" else sign * t for t in t_maps]
              for sign in signs}
    h_max = max(float(h.max()) for sign in signs for h in h_maps[sign])
    grid, dh = brute_grid(h_max)
    null = np.array([
        max(brute_scores(h_maps[sign][k], n_nodes, grid, dh).max() for sign in signs)
        for k in range(len(t_maps))
    ])
    observed = {sign: brute_scores(h_maps[sign][0], n_nodes, grid, dh) for sign in signs}
    best = np.max([observed[s] for s in signs], axis=0)
    expected_p = np.array([np.sum(null >= s - 1e-9 * s) / 32 for s in best])
    signed = np.where(observed[1] >= best, best, -best) if tail == "both" else best

    np.testing.assert_allclose(result.parameters["h_max"], h_max, rtol=1e-9)
    np.testing.assert_allclose(upper(result.edge_score_matrix), signed, rtol=1e-8)
    np.testing.assert_allclose(upper(result.edge_p_matrix), expected_p, rtol=0, atol=1e-12)
    # components: connected edges with p < 0.05, p = smallest edge p, size = largest score
    for comp in result.components:
        idx = [list(itertools.combinations(range(n_nodes), 2)).index(tuple(e))
               for e in comp.edges.tolist()]
        assert comp.p_value == pytest.approx(expected_p[idx].min())
        assert comp.size == pytest.approx(best[idx].max())


def test_smallest_p_counts_the_identity_paired_n5():
    rng = np.random.default_rng(8)
    n_nodes = 20
    pre = symmetric(rng, 5, n_nodes)
    post = plant(symmetric(rng, 5, n_nodes), list(range(8)), 6.0)
    result = nbs_paired(pre, post, method="tfnbs")
    assert result.smallest_p == 1 / 32
    assert result.components[0].p_value == 1 / 32  # never 0: the identity is a permutation
    assert result.edge_p_matrix.min() == 1 / 32
    planted = np.zeros((n_nodes, n_nodes), bool)
    planted[:8, :8] = True
    assert (result.edge_p_matrix[planted & ~np.eye(n_nodes, dtype=bool)] < 0.05).mean() > 0.9
    with pytest.warns(MSImagingWarning, match="smallest attainable p is 0.0625"):
        both = nbs_paired(pre, post, method="tfnbs", tail="both")
    assert both.components[0].p_value == 2 / 32  # the all-flipped map mirrors the observed


@pytest.mark.parametrize("height", ["z", "t"])
def test_repeated_measures_scores_z_or_sqrt_f_and_exact_p_equals_brute_force(height):
    rng = np.random.default_rng(21)
    n_sub, k, n_nodes = 3, 3, 6
    subject = np.repeat(np.arange(n_sub), k)
    visit = np.tile(np.arange(k), n_sub)
    stack = symmetric(rng, n_sub * k, n_nodes)
    stack[visit == 2] = plant(stack[visit == 2], [0, 1, 2], 2.0)
    result = quiet(nbs_repeated_measures, stack, subject, visit, method="tfnbs",
                   tfnbs_height=height)
    assert result.exact and result.n_permutations == 216

    y = upper(stack).reshape(n_sub, k, -1)  # rows ordered subject-major, visits 0..2

    def rm_f(data):  # two-way (subject x visit) ANOVA F of the visit effect, per edge
        grand = data.mean(axis=(0, 1))
        ss_visit = n_sub * ((data.mean(axis=0) - grand) ** 2).sum(axis=0)
        resid = data - data.mean(axis=1, keepdims=True) - data.mean(axis=0) + grand
        ss_error = (resid**2).sum(axis=(0, 1))
        return (ss_visit / (k - 1)) / (ss_error / ((k - 1) * (n_sub - 1)))

    orders = list(itertools.permutations(range(k)))
    f_maps = [rm_f(np.stack([y[s, list(o)] for s, o in enumerate(combo)]))
              for combo in itertools.product(orders, repeat=n_sub)]
    np.testing.assert_allclose(f_maps[0], upper(result.statistic_matrix), rtol=1e-8)
    df1, df2 = k - 1, (k - 1) * (n_sub - 1)
    heights = [z_of_f(f, df1, df2) if height == "z" else np.sqrt(f) for f in f_maps]
    grid, dh = brute_grid(max(float(h.max()) for h in heights))
    null = np.array([brute_scores(h, n_nodes, grid, dh).max() for h in heights])
    observed = brute_scores(heights[0], n_nodes, grid, dh)
    expected_p = np.array([np.sum(null >= s - 1e-9 * s) / len(null) for s in observed])
    np.testing.assert_allclose(upper(result.edge_score_matrix), observed, rtol=1e-8)
    np.testing.assert_allclose(upper(result.edge_p_matrix), expected_p, atol=1e-12)
    assert result.edge_p_matrix.min() >= result.smallest_p == 6 / 216


def test_covariate_freedman_lane_p_equals_brute_force():  # z heights, df = n - 2
    rng = np.random.default_rng(31)
    n, n_nodes = 6, 7
    age = rng.normal(size=n)
    data = symmetric(rng, n, n_nodes) + 0.8 * age[:, None, None] * symmetric(rng, 1, n_nodes)
    data = plant(data, [0, 1, 2, 3], 1.2)
    result = quiet(nbs_one_sample, data, covariates=age, method="tfnbs")
    assert result.exact and result.n_permutations == 2**n
    y = upper(data)
    x = np.column_stack([np.ones(n), age])
    unscaled = np.linalg.inv(x.T @ x)[0, 0]
    # Freedman-Lane: flip the residuals of the nuisance-only model (age) and refit
    fitted = np.outer(age, age @ y) / (age @ age)
    resid = y - fitted

    def t_intercept(values):
        beta, rss = np.linalg.lstsq(x, values, rcond=None)[:2]
        return beta[0] / np.sqrt(rss / (n - 2) * unscaled)

    t_maps = [t_intercept(np.array(f)[:, None] * resid + fitted)
              for f in itertools.product([1, -1], repeat=n)]
    z_maps = [z_of_t(t, n - 2) for t in t_maps]
    grid, dh = brute_grid(max(float(z.max()) for z in z_maps))
    null = np.array([brute_scores(z, n_nodes, grid, dh).max() for z in z_maps])
    observed = brute_scores(z_maps[0], n_nodes, grid, dh)
    expected_p = np.array([np.sum(null >= s - 1e-9 * s) / len(null) for s in observed])
    np.testing.assert_allclose(upper(result.statistic_matrix), t_maps[0], rtol=1e-9)
    np.testing.assert_allclose(upper(result.edge_score_matrix), observed, rtol=1e-8)
    np.testing.assert_allclose(upper(result.edge_p_matrix), expected_p, atol=1e-12)


# --------------------------------------------------------------------------------------------
# FWER under the null (exact paired n = 6: 64 sign flips; the attainable level is 3/64)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fwer_under_the_null_exact_paired_n6():
    rng = np.random.default_rng(2026)
    n_datasets, n_nodes, alpha = 600, 16, 0.05
    networks = np.repeat(["A", "B", "C", "D"], 4)
    tfnbs_hits = constrained_hits = 0
    for _ in range(n_datasets):
        pre, post = symmetric(rng, 6, n_nodes), symmetric(rng, 6, n_nodes)
        tf = quiet(nbs_paired, pre, post, method="tfnbs")
        cn = quiet(nbs_paired, pre, post, method="constrained", networks=networks)
        assert tf.exact and cn.exact and tf.n_permutations == 64
        tfnbs_hits += bool(tf.significant(alpha))
        constrained_hits += bool(cn.significant(alpha))
    se = np.sqrt(alpha * (1 - alpha) / n_datasets)
    rates = tfnbs_hits / n_datasets, constrained_hits / n_datasets
    print(f"FWER exact paired n=6, {n_datasets} null data sets: TFNBS (z) {rates[0]:.4f}, "
          f"constrained {rates[1]:.4f} (alpha {alpha}, 2 SE {2 * se:.4f}; attainable 3/64)")
    for rate in rates:
        assert abs(rate - alpha) <= 2 * se


@pytest.mark.slow
def test_fwer_under_the_null_exact_repeated_measures_4x3():
    rng = np.random.default_rng(43)
    n_datasets, n_nodes, alpha = 600, 10, 0.05
    subject, visit = np.repeat(np.arange(4), 3), np.tile(np.arange(3), 4)
    hits = 0
    for _ in range(n_datasets):
        result = quiet(nbs_repeated_measures, symmetric(rng, 12, n_nodes), subject, visit,
                       method="tfnbs")
        assert result.exact and result.n_permutations == 1296
        hits += bool(result.significant(alpha))
    rate, se = hits / n_datasets, np.sqrt(alpha * (1 - alpha) / n_datasets)
    print(f"FWER TFNBS (z heights) exact repeated measures 4x3, {n_datasets} null data sets: "
          f"{rate:.4f} (alpha {alpha}, 2 SE {2 * se:.4f}; attainable 60/1296 = 0.0463)")
    assert abs(rate - alpha) <= 2 * se


# --------------------------------------------------------------------------------------------
# Constrained (network-level) NBS
# --------------------------------------------------------------------------------------------
NETWORKS = ["DMN"] * 6 + ["VIS"] * 5 + ["SMN"] * 7


def test_constrained_block_means_equal_hand_computation_and_planted_block_is_found():
    rng = np.random.default_rng(13)
    n, n_nodes = 7, len(NETWORKS)
    pre = symmetric(rng, n, n_nodes)
    post = plant(symmetric(rng, n, n_nodes), list(range(6)), 1.2)  # DMN-DMN only
    nodes = pd.DataFrame({"label": [f"n{i}" for i in range(n_nodes)], "network": NETWORKS})
    result = nbs_paired(pre, post, method="constrained", nodes=nodes)
    assert result.exact and result.n_permutations == 128

    iu = np.triu_indices(n_nodes, k=1)
    t = stats.ttest_1samp(upper(post - pre), 0.0).statistic
    net = np.asarray(NETWORKS)
    pairs = [sorted((net[i], net[j])) for i, j in zip(*iu, strict=True)]
    frame = pd.DataFrame({"a": [a for a, _ in pairs], "b": [b for _, b in pairs], "t": t})
    hand = frame.groupby(["a", "b"])["t"].agg(["mean", "size"])
    table = result.network_table.set_index(["network_a", "network_b"])
    assert len(table) == len(hand) == 6
    for (a, b), row in hand.iterrows():
        assert table.loc[(a, b), "statistic"] == pytest.approx(row["mean"], rel=1e-9)
        assert table.loc[(a, b), "n_edges"] == row["size"]

    significant = result.significant()
    assert len(significant) == 1
    comp = significant[0]
    assert comp.network_pairs == {("DMN", "DMN"): 15} and comp.n_edges == 15
    assert set(comp.nodes.tolist()) == set(range(6))
    assert comp.size == pytest.approx(hand.loc[("DMN", "DMN"), "mean"])
    others = result.network_table.query("network_a != 'DMN' or network_b != 'DMN'")
    assert (others.p_value >= 0.05).all()
    # the per-edge views broadcast the block's statistic and p
    assert result.edge_score_matrix[0, 1] == pytest.approx(hand.loc[("DMN", "DMN"), "mean"])
    assert result.edge_p_matrix[0, 1] == comp.p_value and result.edge_p_matrix[0, 0] == 1.0


def test_constrained_networks_from_column_name_or_sequence_agree():
    rng = np.random.default_rng(4)
    n_nodes = len(NETWORKS)
    pre, post = symmetric(rng, 6, n_nodes), symmetric(rng, 6, n_nodes)
    nodes = pd.DataFrame({"label": [f"n{i}" for i in range(n_nodes)], "system": NETWORKS})
    by_column = quiet(nbs_paired, pre, post, method="constrained", nodes=nodes,
                      networks="system")
    by_sequence = quiet(nbs_paired, pre, post, method="constrained", networks=NETWORKS)
    pd.testing.assert_frame_equal(by_column.network_table, by_sequence.network_table)
    assert by_sequence.components  # the smallest-p block(s) when none reaches 0.05
    for comp in by_sequence.components:  # the block's pair even without a node table
        ((a, b), count), = comp.network_pairs.items()
        assert count == comp.n_edges and {NETWORKS[i] for i in comp.nodes} == {a, b}


def test_bad_options():
    rng = np.random.default_rng(0)
    pre, post = symmetric(rng, 5, 8), symmetric(rng, 5, 8)
    with pytest.raises(InputError, match="network"):
        quiet(nbs_paired, pre, post, method="constrained")  # no node table, no networks
    with pytest.raises(InputError, match="one network label per node"):
        quiet(nbs_paired, pre, post, method="constrained", networks=["A"] * 7)
    with pytest.raises(InputError, match="no network for node"):
        quiet(nbs_paired, pre, post, method="constrained", networks=["A"] * 7 + [None])
    with pytest.raises(InputError, match="threshold"):
        quiet(nbs_paired, pre, post, method="constrained", networks=["A"] * 8, threshold=2.0)
    with pytest.raises(InputError, match="method='constrained' only"):
        quiet(nbs_paired, pre, post, networks=["A"] * 8)
    with pytest.raises(InputError, match="size='intensity'"):
        quiet(nbs_paired, pre, post, method="tfnbs", size="intensity")
    with pytest.raises(InputError, match="extent_exponent"):
        quiet(nbs_paired, pre, post, method="tfnbs", extent_exponent=-1.0)
    with pytest.raises(InputError, match="method"):
        quiet(nbs_paired, pre, post, method="tfce")
