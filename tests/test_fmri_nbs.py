"""Network-Based Statistic: ground truth from bctpy, brute force, null and planted simulations.

Every check compares the engine with something independent of it: bctpy's ``nbs_bct`` on the
same data, a plain loop over every permutation and edge with ``scipy.stats`` statistics and
networkx components, the nominal FWER on null data, and a planted subnetwork.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from types import SimpleNamespace

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from msimaging.errors import DesignError, InputError, MSImagingWarning
from msimaging.fmri.nbs import (
    NBSResult,
    nbs,
    nbs_one_sample,
    nbs_paired,
    nbs_repeated_measures,
    nbs_two_sample,
)
from nbs_data import plant, quiet, symmetric


# --------------------------------------------------------------------------------------------
# Brute force: a plain loop over permutations and edges
# --------------------------------------------------------------------------------------------
def brute_max_size(stat: np.ndarray, n_nodes: int, threshold: float, sign: int,
                   intensity: bool) -> tuple[float, list[tuple[frozenset, float]]]:
    graph = nx.Graph()
    for e, (i, j) in enumerate(itertools.combinations(range(n_nodes), 2)):
        if sign * stat[e] > threshold:
            graph.add_edge(i, j, weight=sign * stat[e] - threshold)
    comps = []
    for nodes in nx.connected_components(graph):
        sub = graph.subgraph(nodes)
        size = (
            sum(w for _, _, w in sub.edges(data="weight")) if intensity
            else float(sub.number_of_edges())
        )
        comps.append((frozenset(tuple(sorted(e)) for e in sub.edges()), size))
    return max((s for _, s in comps), default=0.0), comps


def brute_p_values(stat_fn, permutations, data, n_nodes, threshold, directions, intensity):
    """Exact p of each observed component (identity = permutations[0])."""
    observed = stat_fn(data, permutations[0])
    comps = []
    for sign in directions:
        comps += brute_max_size(observed, n_nodes, threshold, sign, intensity)[1]
    null = []
    for perm in permutations:
        stat = stat_fn(data, perm)
        null.append(max(brute_max_size(stat, n_nodes, threshold, s, intensity)[0]
                        for s in directions))
    null = np.array(null)
    return {edges: np.sum(null >= size - 1e-9) / len(null) for edges, size in comps}, null


def upper(stack: np.ndarray) -> np.ndarray:
    iu = np.triu_indices(stack.shape[1], k=1)
    return stack[:, iu[0], iu[1]]


def ours(result: NBSResult) -> dict[frozenset, float]:
    return {
        frozenset(map(tuple, c.edges.tolist())): c.p_value for c in result.components
    }


# --------------------------------------------------------------------------------------------
# Exactness: enumeration equals brute force
# --------------------------------------------------------------------------------------------
N_SMALL = 9


@pytest.mark.parametrize(
    ("tail", "size"), [("right", "extent"), ("both", "extent"), ("left", "intensity")]
)
def test_paired_enumeration_equals_brute_force(tail, size):
    rng = np.random.default_rng(11)
    n = 6
    pre = symmetric(rng, n, N_SMALL)
    post = plant(symmetric(rng, n, N_SMALL), [0, 1, 2, 3], 1.2)
    post = plant(post, [5, 6, 7], -1.2)
    result = quiet(nbs_paired, pre, post, threshold=2.0, tail=tail, size=size)
    assert result.exact and result.n_permutations == 2**n == result.permutation_space
    assert result.resampling == "sign-flip"

    diff = upper(post) - upper(pre)
    flips = [np.array(s) for s in itertools.product([1, -1], repeat=n)]

    def t_paired(data, signs):
        return np.array([stats.ttest_1samp(signs * data[:, e], 0.0).statistic
                         for e in range(data.shape[1])])

    directions = {"right": (1,), "left": (-1,), "both": (1, -1)}[tail]
    expected, null = brute_p_values(t_paired, flips, diff, N_SMALL, 2.0, directions,
                                    size == "intensity")
    assert expected  # the planted effects give components
    got = ours(result)
    assert set(got) == set(expected)
    for edges, p in expected.items():
        assert got[edges] == pytest.approx(p, abs=1e-12)
    np.testing.assert_allclose(np.sort(result.null_distribution), np.sort(null), rtol=1e-5,
                               atol=1e-5)  # float32 permutation engine
    assert result.smallest_p == (2 if tail == "both" else 1) / 2**n


def test_two_sample_enumeration_equals_brute_force():
    rng = np.random.default_rng(5)
    a = plant(symmetric(rng, 4, N_SMALL), [0, 1, 2, 3, 4], 1.5)
    b = symmetric(rng, 4, N_SMALL)
    result = quiet(nbs_two_sample, a, b, threshold=2.0)
    assert result.exact and result.n_permutations == 70  # 8 choose 4
    assert result.resampling == "permutation"
    data = np.concatenate([upper(a), upper(b)])
    groups = [np.array(c) for c in itertools.combinations(range(8), 4)]  # group a members

    def t_two(values, members):
        mask = np.zeros(8, bool)
        mask[members] = True
        return np.array([stats.ttest_ind(values[mask, e], values[~mask, e]).statistic
                         for e in range(values.shape[1])])

    expected, _ = brute_p_values(t_two, groups, data, N_SMALL, 2.0, (1,), False)
    assert expected and ours(result) == pytest.approx(expected, abs=1e-12)
    # equal groups: swapping the labels mirrors t, so one-sided the identity alone is extreme
    assert result.smallest_p == pytest.approx(1 / 70)


def test_repeated_measures_enumeration_equals_brute_force():
    rng = np.random.default_rng(8)
    n_sub, visits = 3, ["M0", "M6", "M12"]
    subject_effect = symmetric(rng, n_sub, N_SMALL)
    stacks, subject, visit = [], [], []
    for v, label in enumerate(visits):
        stack = subject_effect + 0.4 * symmetric(rng, n_sub, N_SMALL)
        stacks.append(plant(stack, [0, 1, 2, 3], 0.8 * v))
        subject += [f"s{i}" for i in range(n_sub)]
        visit += [label] * n_sub
    matrices = np.concatenate(stacks)
    result = quiet(nbs_repeated_measures, matrices, subject, visit, threshold=4.0)
    assert result.statistic == "F" and result.df == (2.0, 4.0)
    assert result.exact and result.n_permutations == 6**3

    y = upper(matrices).reshape(3, n_sub, -1).transpose(1, 0, 2)  # (subject, visit, edge)
    orders = list(itertools.product(itertools.permutations(range(3)), repeat=n_sub))

    def rm_f(values, order):
        data = np.stack([values[s, list(o)] for s, o in enumerate(order)])  # (sub, visit, E)
        grand = data.mean(axis=(0, 1))
        ss_visit = n_sub * ((data.mean(axis=0) - grand) ** 2).sum(axis=0)
        ss_subject = 3 * ((data.mean(axis=1) - grand) ** 2).sum(axis=0)
        ss_error = ((data - grand) ** 2).sum(axis=(0, 1)) - ss_visit - ss_subject
        return (ss_visit / 2) / (ss_error / ((n_sub - 1) * 2))

    expected, _ = brute_p_values(rm_f, orders, y, N_SMALL, 4.0, (1,), False)
    assert expected and ours(result) == pytest.approx(expected, abs=1e-12)
    # the 3! global relabellings of the visits reproduce the F map: 6 / 216 = 1/(3!)^(n-1)
    assert result.smallest_p == pytest.approx(1 / 36)


def test_one_sample_with_covariate_freedman_lane_equals_brute_force():
    rng = np.random.default_rng(21)
    n = 7
    age = rng.normal(size=n)
    data = symmetric(rng, n, N_SMALL) + 0.8 * age[:, None, None] * symmetric(rng, 1, N_SMALL)
    data = plant(data, [0, 1, 2, 3], 1.3)
    result = quiet(nbs_one_sample, data, threshold=2.0, covariates=age)
    assert result.exact and result.n_permutations == 2**n
    y = upper(data)
    # Freedman–Lane: the nuisance model is age alone (the tested regressor is the mean)
    fitted = np.outer(age, age @ y) / (age @ age)
    resid = y - fitted
    flips = [np.array(s) for s in itertools.product([1, -1], repeat=n)]

    def t_intercept(values, signs):
        out = []
        for e in range(values.shape[1]):
            fit = stats.linregress(age, signs * resid[:, e] + fitted[:, e])
            out.append(fit.intercept / fit.intercept_stderr)
        return np.array(out)

    expected, _ = brute_p_values(t_intercept, flips, y, N_SMALL, 2.0, (1,), False)
    assert expected and ours(result) == pytest.approx(expected, abs=1e-12)
    # and the observed t map is the OLS t of the intercept
    observed = t_intercept(y, np.ones(n))
    iu = np.triu_indices(N_SMALL, k=1)
    np.testing.assert_allclose(result.statistic_matrix[iu], observed, rtol=1e-9)


def test_two_sample_covariate_random_permutations_match_brute_force_statistic():
    rng = np.random.default_rng(3)
    a, b = symmetric(rng, 6, N_SMALL), symmetric(rng, 7, N_SMALL)
    cov = rng.normal(size=13)
    result = quiet(nbs_two_sample, a, b, threshold=1.5, covariates=cov, n_permutations=300,
                   seed=0)
    assert not result.exact and result.n_permutations == 300
    assert result.permutation_space == 13 * 12 * 11 * 10 * 9 * 8 * 7 * 6 * 5 * 4 * 3 * 2
    x = np.column_stack([np.r_[np.ones(6), np.zeros(7)], np.r_[np.zeros(6), np.ones(7)], cov])
    y = np.concatenate([upper(a), upper(b)])
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    sigma2 = (resid**2).sum(axis=0) / (13 - 3)
    c = np.array([1.0, -1.0, 0.0])
    t = (c @ beta) / np.sqrt(sigma2 * (c @ np.linalg.inv(x.T @ x) @ c))
    iu = np.triu_indices(N_SMALL, k=1)
    np.testing.assert_allclose(result.statistic_matrix[iu], t, rtol=1e-9)
    assert result.smallest_p == pytest.approx(1 / 301)


def test_smallest_p_documented_floors():
    rng = np.random.default_rng(0)
    pre, post = symmetric(rng, 5, 12), symmetric(rng, 5, 12)
    one = quiet(nbs_paired, pre, post, threshold=1.0, tail="right")
    two = quiet(nbs_paired, pre, post, threshold=1.0, tail="both")
    assert one.smallest_p == 1 / 32 and two.smallest_p == 2 / 32 == 0.0625
    assert min(c.p_value for c in two.components) >= 0.0625
    visits = np.concatenate([symmetric(rng, 5, 8) for _ in range(3)])
    rm = quiet(nbs_repeated_measures, visits, list(range(5)) * 3, [0] * 5 + [1] * 5 + [2] * 5,
               threshold=1.0, n_permutations=8000)
    assert rm.exact and rm.n_permutations == 6**5
    assert rm.smallest_p == pytest.approx(1 / 6**4)  # 0.00077
    # exact=False draws at random even when the space is small (as MATLAB NBS / bctpy)
    drawn = quiet(nbs_paired, pre, post, threshold=1.0, exact=False, n_permutations=400,
                  seed=0)
    assert not drawn.exact and drawn.n_permutations == 400 and drawn.permutation_space == 32
    assert drawn.smallest_p == pytest.approx(1 / 32, abs=0.02)  # identity drawn ~1/32 times
    with pytest.raises(InputError, match="exact=True"):
        nbs_paired(symmetric(rng, 21, 6), symmetric(rng, 21, 6), exact=True)


def test_f_contrast_equals_one_way_anova_and_extra_sum_of_squares_with_covariate():
    rng = np.random.default_rng(17)
    groups = np.repeat([0, 1, 2], 6)
    data = symmetric(rng, 18, N_SMALL)
    data[groups == 2] = plant(data[groups == 2], [0, 1, 2, 3, 4], 2.0)
    design = np.column_stack([groups == g for g in range(3)]).astype(float)
    contrast = [[1, -1, 0], [0, 1, -1]]
    result = quiet(nbs, data, design, contrast, threshold=5.0, n_permutations=300, seed=0)
    y = upper(data)
    anova = np.array([stats.f_oneway(*(y[groups == g, e] for g in range(3))).statistic
                      for e in range(y.shape[1])])
    iu = np.triu_indices(N_SMALL, k=1)
    assert result.statistic == "F" and result.df == (2.0, 15.0)
    np.testing.assert_allclose(result.statistic_matrix[iu], anova, rtol=1e-9)
    assert result.components and result.components[0].p_value < 0.05

    age = rng.normal(size=18)
    adjusted = quiet(nbs, data, design, contrast, threshold=5.0, covariates=age,
                     n_permutations=300, seed=0)
    full = np.column_stack([design, age])
    reduced = np.column_stack([np.ones(18), age])

    def rss(x):
        return ((y - x @ np.linalg.lstsq(x, y, rcond=None)[0]) ** 2).sum(axis=0)

    f_manual = ((rss(reduced) - rss(full)) / 2) / (rss(full) / (18 - 4))
    np.testing.assert_allclose(adjusted.statistic_matrix[iu], f_manual, rtol=1e-9)
    assert adjusted.df == (2.0, 14.0) and not adjusted.exact
    # the largest null component is never larger than the number of edges
    assert adjusted.null_distribution.max() <= len(iu[0])


# --------------------------------------------------------------------------------------------
# bctpy on the same data
# --------------------------------------------------------------------------------------------
def bct_components(adj: np.ndarray, pvals: np.ndarray) -> dict[frozenset, float]:
    iu = np.triu_indices(adj.shape[0], k=1)
    out = {}
    for value in np.unique(adj[iu]):
        if value == 0:
            continue
        chosen = adj[iu] == value
        edges = frozenset(zip(iu[0][chosen].tolist(), iu[1][chosen].tolist(), strict=True))
        out[edges] = float(pvals[int(value) - 1])  # bctpy labels component i as i + 1
    return out


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("tail", ["right", "left"])
def test_matches_bctpy(paired, tail):
    bct = pytest.importorskip("bct")
    rng = np.random.default_rng(100 + 2 * paired + (tail == "left"))
    n_nodes, n, k_bct = 30, 8, 40
    x = symmetric(rng, n, n_nodes)
    y = symmetric(rng, n, n_nodes)
    # a strong planted component and a weak one (intermediate p)
    x = plant(x, [0, 1, 2, 3, 4, 5], 1.4 if tail == "right" else -1.4)
    x = plant(x, [20, 21, 22], 0.9 if tail == "right" else -0.9)
    threshold = 2.6
    with contextlib.redirect_stdout(io.StringIO()):
        pvals, adj, null_bct = bct.nbs_bct(
            np.moveaxis(x, 0, -1), np.moveaxis(y, 0, -1), threshold, k=k_bct, tail=tail,
            paired=paired, seed=0,
        )
    if paired:  # bctpy's paired t is of x - y: our post - pre with pre = y, post = x
        result = quiet(nbs_paired, y, x, threshold=threshold, tail=tail, n_permutations=2000,
                       seed=1)
    else:
        result = quiet(nbs_two_sample, x, y, threshold=threshold, tail=tail,
                       n_permutations=2000, seed=1)
    expected = bct_components(adj, pvals)
    got = ours(result)
    assert set(got) == set(expected)  # identical observed components (edge sets)
    assert max(len(e) for e in got) >= 10
    for edges, p_bct in expected.items():
        # Monte-Carlo error: bctpy used k_bct permutations, we used 2000
        se = np.sqrt(max(got[edges] * (1 - got[edges]), 1 / k_bct) / k_bct)
        assert abs(got[edges] - p_bct) <= 4 * se + 1 / k_bct, (len(edges), got[edges], p_bct)
    # same null distribution of the largest component (means within 4 SE)
    spread = np.sqrt(null_bct.var() / k_bct + result.null_distribution.var() / 2000) + 0.05
    assert abs(null_bct.mean() - result.null_distribution.mean()) <= 4 * spread


def test_tail_both_keeps_directions_apart():
    rng = np.random.default_rng(4)
    pre = symmetric(rng, 10, 20)
    post = plant(plant(symmetric(rng, 10, 20), [0, 1, 2, 3], 1.5), [3, 4, 5, 6], -1.5)
    result = quiet(nbs_paired, pre, post, threshold_p=0.01, tail="both", n_permutations=500,
                   seed=0)
    directions = {c.direction for c in result.components}
    assert directions == {"positive", "negative"}
    for comp in result.components:
        signs = np.sign(comp.statistics)
        assert np.all(signs == (1 if comp.direction == "positive" else -1))
    pos = max((c for c in result.components if c.direction == "positive"), key=lambda c: c.size)
    neg = max((c for c in result.components if c.direction == "negative"), key=lambda c: c.size)
    assert 3 in pos.nodes and 3 in neg.nodes  # they share node 3 and are still separate
    assert set(result.null_by_direction) == {"positive", "negative"}
    np.testing.assert_array_equal(
        result.null_distribution,
        np.maximum(result.null_by_direction["positive"], result.null_by_direction["negative"]),
    )


# --------------------------------------------------------------------------------------------
# FWER under the null and power on a planted subnetwork
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fwer_under_the_null_random_permutations():
    rng = np.random.default_rng(2024)
    n_datasets, n_nodes, alpha = 1000, 20, 0.05
    rejections = 0
    for k in range(n_datasets):
        pre, post = symmetric(rng, 12, n_nodes), symmetric(rng, 12, n_nodes)
        result = quiet(nbs_paired, pre, post, threshold_p=0.05, size="intensity",
                       n_permutations=200, seed=k)
        assert not result.exact
        rejections += any(c.p_value <= alpha for c in result.components)
    rate = rejections / n_datasets
    se = np.sqrt(alpha * (1 - alpha) / n_datasets)
    print(f"FWER paired n=12 random: {rate:.4f} (alpha {alpha} +- 2 SE {2 * se:.4f})")
    assert abs(rate - alpha) <= 2 * se


@pytest.mark.slow
def test_fwer_under_the_null_exact_paired_n5():
    rng = np.random.default_rng(7)
    n_datasets, n_nodes, alpha = 600, 20, 0.05
    one_sided = two_sided = 0
    smallest_two_sided = 1.0
    for _ in range(n_datasets):
        pre, post = symmetric(rng, 5, n_nodes), symmetric(rng, 5, n_nodes)
        right = quiet(nbs_paired, pre, post, threshold_p=0.05)
        both = quiet(nbs_paired, pre, post, threshold_p=0.05, tail="both")
        assert right.exact and both.exact
        one_sided += any(c.p_value <= alpha for c in right.components)
        two_sided += any(c.p_value <= alpha for c in both.components)
        smallest_two_sided = min([smallest_two_sided] + [c.p_value for c in both.components])
    print(f"FWER exact paired n=5: one-sided {one_sided / n_datasets:.4f}, two-sided "
          f"{two_sided / n_datasets:.4f}, smallest two-sided p {smallest_two_sided}")
    assert one_sided / n_datasets <= alpha
    assert two_sided == 0 and smallest_two_sided >= 0.0625


def test_power_and_precision_on_a_planted_subnetwork():
    rng = np.random.default_rng(99)
    n_sims, n, n_nodes, d = 40, 12, 30, 0.85
    planted_nodes = list(range(8))
    planted = {tuple(e) for e in itertools.combinations(planted_nodes, 2)}
    detected, precisions, recalls = 0, [], []
    for k in range(n_sims):
        pre = symmetric(rng, n, n_nodes, scale=np.sqrt(0.5))
        post = plant(symmetric(rng, n, n_nodes, scale=np.sqrt(0.5)), planted_nodes, d)
        result = quiet(nbs_paired, pre, post, threshold_p=0.01, n_permutations=500, seed=k)
        significant = result.significant(0.05)
        if significant:
            detected += 1
            edges = {tuple(e) for e in significant[0].edges.tolist()}
            precisions.append(len(edges & planted) / len(edges))
            recalls.append(len(edges & planted) / len(planted))
    power = detected / n_sims
    print(f"power {power:.3f}, precision {np.mean(precisions):.3f} (min "
          f"{np.min(precisions):.3f}), recall {np.mean(recalls):.3f}")
    assert power >= 0.9
    assert np.mean(precisions) >= 0.8


# --------------------------------------------------------------------------------------------
# Thresholds, options and result objects
# --------------------------------------------------------------------------------------------
def test_threshold_p_is_df_aware_and_liberal_t_warns():
    rng = np.random.default_rng(1)
    pre, post = symmetric(rng, 5, 10), plant(symmetric(rng, 5, 10), [0, 1, 2], 3.0)
    result = quiet(nbs_paired, pre, post, threshold_p=0.01)
    assert result.threshold == pytest.approx(stats.t.isf(0.01, 4))
    assert result.threshold_p == 0.01
    with pytest.warns(MSImagingWarning, match=r"threshold=3\.1.*4 degrees.*p of 0\.018"):
        liberal = nbs_paired(pre, post, threshold=3.1)
    assert liberal.threshold_p == pytest.approx(stats.t.sf(3.1, 4))
    default = quiet(nbs_paired, pre, post)
    assert default.threshold_p == 0.001 and default.threshold == pytest.approx(
        stats.t.isf(0.001, 4))


def test_no_supra_threshold_edge_gives_an_empty_result():
    rng = np.random.default_rng(2)
    pre, post = symmetric(rng, 6, 10), symmetric(rng, 6, 10)
    result = quiet(nbs_paired, pre, post, threshold=50.0)
    assert result.components == () and result.null_distribution.size == 0
    assert not result.edges_mask().any()
    assert result.to_frame().empty and result.components_frame().empty
    assert "No supra-threshold edge" in result._repr_html_()
    assert result.to_networkx().number_of_edges() == 0


def test_result_tables_graph_and_masks_with_node_tables():
    rng = np.random.default_rng(12)
    n_nodes = 16
    nodes = pd.DataFrame({
        "label": [f"n{i}" for i in range(n_nodes)],
        "network": ["DMN"] * 4 + ["VIS"] * 4 + ["SMN"] * 8,
        "hemisphere": ["L", "R"] * 8,
        "x_mm": rng.normal(size=n_nodes), "y_mm": 0.0, "z_mm": 0.0,
    })
    pre = [SimpleNamespace(matrix=m, nodes=nodes) for m in symmetric(rng, 10, n_nodes)]
    post_stack = plant(symmetric(rng, 10, n_nodes), [0, 1, 2, 5, 6], 2.0)
    post = [SimpleNamespace(matrix=m, nodes=nodes) for m in post_stack]
    result = quiet(nbs_paired, pre, post, threshold_p=0.005, n_permutations=300, seed=0)
    comp = result.components[0]
    assert comp.p_value < 0.05 and set(comp.nodes) <= {0, 1, 2, 5, 6} | set(range(n_nodes))
    assert comp.node_labels == tuple(f"n{i}" for i in comp.nodes)
    assert sum(comp.network_pairs.values()) == comp.n_edges
    assert comp.degree.sum() == 2 * comp.n_edges
    assert set(comp.hubs) <= set(comp.nodes)
    assert comp.edge_list[0][:2] == tuple(comp.edges[0])

    mask = result.edges_mask(0)
    assert mask.shape == (n_nodes, n_nodes) and (mask == mask.T).all()
    assert mask.sum() == 2 * comp.n_edges and mask[tuple(comp.edges.T)].all()

    frame = result.to_frame()
    assert list(frame.columns[:4]) == ["component", "direction", "node_i", "node_j"]
    first = frame[frame.component == 0]
    assert len(first) == comp.n_edges
    assert set(first.label_i) | set(first.label_j) == set(comp.node_labels)
    np.testing.assert_allclose(
        first.statistic, result.statistic_matrix[first.node_i, first.node_j]
    )
    table = result.components_frame()
    assert table.loc[0, "n_edges"] == comp.n_edges and table.loc[0, "p_value"] == comp.p_value
    pairs = result.network_pair_counts(0)
    assert pairs.n_edges.sum() == comp.n_edges

    graph = result.to_networkx(0)
    assert graph.number_of_edges() == comp.n_edges
    assert graph.nodes[int(comp.nodes[0])]["label"] == f"n{comp.nodes[0]}"
    assert "<table" in result._repr_html_() and "smallest attainable p" in result._repr_html_()
    with pytest.raises(InputError, match="component=99"):
        result.edges_mask(99)


def test_result_plots_the_statistic_map_with_the_component_highlighted(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from msimaging.atlases.coordinates import load_seitzman_2018

    rng = np.random.default_rng(3)
    nodes = load_seitzman_2018().iloc[:24].reset_index(drop=True)
    pre = symmetric(rng, 10, 24)
    post = plant(symmetric(rng, 10, 24), [0, 1, 2, 3, 4], 2.0)
    result = quiet(nbs_paired, pre, post, threshold_p=0.005, n_permutations=200, seed=0,
                   nodes=nodes)
    assert result.components
    for style in ("connectogram", "adjacency", "glass_brain"):
        path = tmp_path / f"nbs_{style}.png"
        fig = result.plot(style, path=path)
        assert path.stat().st_size > 5000 and fig is not None
    labels = [ax.yaxis.label.get_text() for ax in result.plot("adjacency").axes]
    assert "t statistic" in labels  # the colour bar names what is drawn
    html = tmp_path / "nbs.html"
    result.plot("html", path=html)
    assert html.stat().st_size > 10_000
    with pytest.raises(InputError, match="style"):
        result.plot("pie")
    bare = quiet(nbs_paired, pre, post, threshold_p=0.005, n_permutations=50, seed=0)
    with pytest.raises(InputError, match="node table"):
        bare.plot()


def test_general_glm_matches_two_sample_and_parallel_is_reproducible():
    rng = np.random.default_rng(6)
    a = plant(symmetric(rng, 9, 14), [0, 1, 2, 3], 1.5)
    b = symmetric(rng, 9, 14)
    design = np.column_stack([np.r_[np.ones(9), np.zeros(9)], np.ones(18)])
    general = quiet(nbs, np.concatenate([a, b]), design, [1, 0], threshold=2.5,
                    n_permutations=400, seed=3)
    two = quiet(nbs_two_sample, a, b, threshold=2.5, n_permutations=400, seed=3)
    np.testing.assert_allclose(general.statistic_matrix, two.statistic_matrix, rtol=1e-9)
    assert ours(general).keys() == ours(two).keys()
    parallel = quiet(nbs, np.concatenate([a, b]), design, [1, 0], threshold=2.5,
                     n_permutations=400, seed=3, n_jobs=2, memory_mb=0.05)
    np.testing.assert_array_equal(parallel.null_distribution, general.null_distribution)


# --------------------------------------------------------------------------------------------
# Bad inputs: the error type, and a message naming the argument
# --------------------------------------------------------------------------------------------
def test_bad_inputs():
    rng = np.random.default_rng(0)
    good = symmetric(rng, 6, 8)
    design = np.ones((6, 1))

    asymmetric = good.copy()
    asymmetric[2, 0, 1] += 1.0
    with pytest.raises(InputError, match=r"matrices\[2\] is not symmetric"):
        nbs(asymmetric, design, [1])

    with_nan = good.copy()
    with_nan[3, 1, 4] = with_nan[3, 4, 1] = np.nan
    with pytest.raises(InputError, match=r"matrices\[3\] has 1 non-finite"):
        nbs(with_nan, design, [1])

    with pytest.raises(DesignError, match="design is rank deficient"):
        nbs(good, np.column_stack([np.ones(6), np.ones(6)]), [1, 0])

    with pytest.raises(DesignError, match="contrast has 3 weights"):
        nbs(good, np.column_stack([np.ones(6), rng.normal(size=6)]), [1, 0, 0])

    with pytest.raises(InputError, match="matrices has 2 observation"):
        nbs(good[:2], np.ones((2, 1)), [1])

    with pytest.raises(InputError, match="pre and post must have the same shape"):
        nbs_paired(good, good[:5])
    with pytest.raises(InputError, match="pre and post"):
        nbs_paired(good, symmetric(rng, 6, 9))

    with pytest.raises(DesignError, match="design has 5 rows"):
        nbs(good, np.ones((5, 1)), [1])
    with pytest.raises(InputError, match="tail='up'"):
        nbs(good, design, [1], tail="up")
    with pytest.raises(InputError, match="size='edges'"):
        nbs(good, design, [1], size="edges")
    with pytest.raises(InputError, match="threshold=-2"):
        nbs(good, design, [1], threshold=-2.0)
    with pytest.raises(InputError, match="threshold_p"):
        nbs(good, design, [1], threshold_p=1.5)
    with pytest.raises(InputError, match="bctpy-style"):
        nbs(np.moveaxis(symmetric(rng, 8, 6), 0, -1)[:, :, :8], design, [1])
    with pytest.raises(DesignError, match="exchange_blocks has 4 entries"):
        nbs(good, design, [1], exchange_blocks=[0, 0, 1, 1])
    with pytest.raises(DesignError, match=r"visit.*at least 3 visits"):
        nbs_repeated_measures(good, [0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1])
    with pytest.raises(DesignError, match=r"subject 1 has 0 observation.*visit 2"):
        nbs_repeated_measures(good, [0, 0, 0, 1, 1, 2], [0, 1, 2, 0, 1, 2])


def test_flagged_node_message_points_at_the_node():
    rng = np.random.default_rng(0)
    good = symmetric(rng, 5, 8)
    good[1, 3, :] = np.nan
    good[1, :, 3] = np.nan
    with pytest.raises(InputError, match=r"Nodes \[3\] have no finite edge"):
        nbs_one_sample(good)


def test_planted_subnetwork_of_the_synthetic_study_is_found():
    """The synthetic study's planted subnetwork (left DMN, left parietal, right
    parahippocampal nodes of Seitzman 2018; +0.15 r at M3, +0.3 at M6), five patients, node
    signals drawn as the study draws them (150 volumes, TR 2 s): found by the one-sided paired
    test M0 < M6 (exact, 32 sign flips) and by the F-test across M0/M3/M6 (visits permuted
    within patients), with hubs among the planted nodes. The full pipeline from BOLD is
    measured in benchmarks/bench_connectome.py."""
    from msimaging.atlases.coordinates import load_seitzman_2018
    from msimaging.datasets.synthetic.functional import (
        node_covariance,
        planted_subnetwork,
        simulate_node_signals,
    )
    from msimaging.fmri import connectivity

    atlas = load_seitzman_2018()
    planted = np.asarray(planted_subnetwork(atlas))
    rng = np.random.default_rng(2026)
    visits = {"M0": 0.0, "M3": 0.15, "M6": 0.3}
    covs = {v: node_covariance(atlas, planted_nodes=planted, planted_delta_r=d)
            for v, d in visits.items()}
    conns = {
        (s, v): connectivity(simulate_node_signals(covs[v], 150, 2.0, rng)[0], nodes=atlas,
                             fisher_z=True)
        for s in range(5) for v in visits
    }
    is_planted = np.zeros((len(atlas),) * 2, bool)
    is_planted[np.ix_(planted, planted)] = True

    paired = quiet(nbs_paired, [conns[(s, "M0")] for s in range(5)],
                   [conns[(s, "M6")] for s in range(5)], threshold_p=0.001)
    rm = quiet(nbs_repeated_measures, [conns[k] for k in conns], [s for s, _ in conns],
               [v for _, v in conns], threshold_p=0.001, n_permutations=2000, seed=0)
    for name, result, floor in (("paired", paired, 1 / 32), ("F", rm, 1 / 2000)):
        best = result.components[0]
        mask = np.triu(result.edges_mask(0), 1)
        precision = (mask & is_planted).sum() / mask.sum()
        recall = (mask & is_planted).sum() / np.triu(is_planted, 1).sum()
        print(f"\n{name}: {best.n_edges} edges, p = {best.p_value:.4f}, precision "
              f"{precision:.2f}, recall {recall:.2f}, hubs {list(best.hubs)}")
        assert best.p_value <= 0.05 and result.smallest_p >= floor - 1e-12
        assert set(best.hubs) <= set(planted)
        assert precision >= 0.5
    # Five patients, one-sided: the exact p of the planted component is the floor 1/32.
    assert paired.exact and paired.components[0].p_value == pytest.approx(1 / 32)
