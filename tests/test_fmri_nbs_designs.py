"""Longitudinal NBS designs: within-subject trend, pairwise visits, pairing checks, options.

Ground truth is computed here independently of the engine: per-edge least squares on
within-subject-centred data (numpy ``lstsq``) for the trend t statistic, a plain loop over
every within-subject arrangement of the months with networkx components for the exact
p-values, hand-picked pairs of visits for the pairwise design, and a planted subnetwork
whose connectivity rises linearly with time.
"""

from __future__ import annotations

import importlib
import inspect
import itertools

import networkx as nx
import numpy as np
import pytest

import msimaging.fmri
from msimaging.errors import DesignError, MSImagingWarning
from msimaging.fmri import Connectome
from msimaging.fmri.nbs import (
    nbs,
    nbs_one_sample,
    nbs_paired,
    nbs_pairwise,
    nbs_repeated_measures,
    nbs_trend,
    nbs_two_sample,
)
from nbs_data import quiet, symmetric

# ``msimaging.fmri.nbs`` as an attribute is the function nbs(); the package is the module.
nbs_package = importlib.import_module("msimaging.fmri.nbs")


def add_to_edges(matrix: np.ndarray, nodes: list[int], value: float) -> np.ndarray:
    out = matrix.copy()
    for i, j in itertools.combinations(nodes, 2):
        out[i, j] += value
        out[j, i] += value
    return out


def upper(stack: np.ndarray) -> np.ndarray:
    iu = np.triu_indices(stack.shape[1], k=1)
    return stack[:, iu[0], iu[1]]


def components(result) -> dict[frozenset, float]:
    return {frozenset(map(tuple, c.edges.tolist())): c.p_value for c in result.components}


def longitudinal(rng, months_by_subject: dict[str, list[float]], n_nodes: int,
                 slope: float = 0.0, planted: list[int] | None = None,
                 noise: float = np.sqrt(0.5)):
    """Subject effect + visit noise (+ a linear rise of ``slope`` per 12 months)."""
    mats, subject, months = [], [], []
    for sub, times in months_by_subject.items():
        base = symmetric(rng, 1, n_nodes)[0]
        for m in times:
            x = base + symmetric(rng, 1, n_nodes, noise)[0]
            if planted:
                x = add_to_edges(x, planted, slope * m / 12.0)
            mats.append(x)
            subject.append(sub)
            months.append(m)
    return np.array(mats), subject, months


# --------------------------------------------------------------------------------------------
# Independent ground truth: the trend t statistic and its exact permutation p
# --------------------------------------------------------------------------------------------
def trend_t(y: np.ndarray, subject: list[str], months: np.ndarray) -> np.ndarray:
    """Per-edge t of the months slope with one intercept per subject (lstsq on centred data).

    Centring y and months within subjects removes the intercepts (Frisch–Waugh); the error
    df is n_obs - n_subjects - 1 (lstsq on centred data alone would not know it).
    """
    subject = np.asarray(subject)
    yc, tc = y.astype(float).copy(), np.asarray(months, float).copy()
    for sub in np.unique(subject):
        rows = subject == sub
        yc[rows] -= yc[rows].mean(axis=0)
        tc[rows] -= tc[rows].mean()
    beta, rss, *_ = np.linalg.lstsq(tc[:, None], yc, rcond=None)
    df = len(tc) - len(np.unique(subject)) - 1
    se = np.sqrt(rss / df / (tc @ tc))
    return beta[0] / se


def max_component(stat: np.ndarray, n_nodes: int, threshold: float, sign: int,
                  intensity: bool) -> tuple[float, list[tuple[frozenset, float]]]:
    graph = nx.Graph()
    for e, (i, j) in enumerate(itertools.combinations(range(n_nodes), 2)):
        if sign * stat[e] > threshold:
            graph.add_edge(i, j, weight=sign * stat[e] - threshold)
    comps = []
    for nodes in nx.connected_components(graph):
        sub = graph.subgraph(nodes)
        size = (sum(w for _, _, w in sub.edges(data="weight")) if intensity
                else float(sub.number_of_edges()))
        comps.append((frozenset(tuple(sorted(e)) for e in sub.edges()), size))
    return max((s for _, s in comps), default=0.0), comps


def within_subject_arrangements(subject: list[str], months: list[float]) -> list[np.ndarray]:
    """Every within-subject permutation of the months (repeats included), identity first."""
    subject = np.asarray(subject)
    blocks = [np.flatnonzero(subject == s) for s in dict.fromkeys(subject.tolist())]
    months = np.asarray(months, float)
    out = []
    for orders in itertools.product(*(itertools.permutations(b) for b in blocks)):
        permuted = months.copy()
        for block, order in zip(blocks, orders, strict=True):
            permuted[block] = months[list(order)]
        out.append(permuted)
    return out


N_SMALL = 8


@pytest.mark.parametrize(("tail", "size"), [("right", "extent"), ("both", "intensity")])
def test_trend_statistic_and_exact_p_equal_brute_force(tail, size):
    rng = np.random.default_rng(5)
    # Unbalanced on purpose: different months and numbers of visits per subject.
    schedule = {"s0": [0.0, 6.0, 12.0], "s1": [0.0, 3.0, 12.0], "s2": [0.0, 6.0, 12.0, 24.0]}
    mats, subject, months = longitudinal(rng, schedule, N_SMALL, slope=1.5, planted=[0, 1, 2, 3])
    mats = np.array([add_to_edges(m, [5, 6, 7], -0.05 * t) for m, t in zip(mats, months,
                                                                         strict=True)])
    result = quiet(nbs_trend, mats, subject, months, threshold=2.0, tail=tail, size=size)
    y = upper(mats)
    expected_t = trend_t(y, subject, np.array(months))
    assert result.statistic == "t" and result.df == (len(months) - 3 - 1,)
    assert result.statistic_matrix[np.triu_indices(N_SMALL, 1)] == pytest.approx(expected_t,
                                                                                  rel=1e-9)
    assert result.exact and result.n_permutations == result.permutation_space == 6 * 6 * 24
    assert result.resampling == "permutation"
    assert result.parameters["design"] == "linear trend over months"

    directions = (1, -1) if tail == "both" else (1,)
    intensity = size == "intensity"
    observed = []
    for sign in directions:
        observed += max_component(expected_t, N_SMALL, 2.0, sign, intensity)[1]
    null = np.array([
        max(max_component(trend_t(y, subject, perm), N_SMALL, 2.0, s, intensity)[0]
            for s in directions)
        for perm in within_subject_arrangements(subject, months)
    ])
    expected = {edges: np.mean(null >= s - 1e-9) for edges, s in observed}
    assert expected and components(result) == pytest.approx(expected, abs=1e-12)


def test_trend_smallest_p_4_subjects_3_visits():
    rng = np.random.default_rng(1)
    schedule = {f"s{k}": [0.0, 6.0, 12.0] for k in range(4)}
    mats, subject, months = longitudinal(rng, schedule, 10)
    right = quiet(nbs_trend, mats, subject, months, threshold_p=0.05)
    assert right.exact and right.n_permutations == 6**4 == 1296
    assert right.smallest_p == pytest.approx(1 / 1296)
    # Two-sided: reversing every subject's (equally spaced) months mirrors the t map.
    both = quiet(nbs_trend, mats, subject, months, threshold_p=0.05, tail="both")
    assert both.smallest_p == pytest.approx(2 / 1296)
    # The repeated-measures F on the same data: 3! relabellings of the visits tie.
    f = quiet(nbs_repeated_measures, mats, subject, months, threshold_p=0.05)
    assert f.smallest_p == pytest.approx(6 / 1296)


def test_trend_drops_single_visit_subjects_with_a_warning_and_checks_months():
    rng = np.random.default_rng(2)
    schedule = {"s0": [0.0, 6.0, 12.0], "s1": [0.0, 6.0, 12.0], "s2": [6.0]}
    mats, subject, months = longitudinal(rng, schedule, 6)
    with pytest.warns(MSImagingWarning, match="'s2'.*single observation"):
        result = nbs_trend(mats, subject, months, threshold_p=0.05)
    assert result.n_observations == 6 and result.parameters["dropped_subjects"] == ["s2"]
    reference = quiet(nbs_trend, mats[:6], subject[:6], months[:6], threshold_p=0.05)
    np.testing.assert_allclose(result.statistic_matrix, reference.statistic_matrix)
    with pytest.raises(DesignError, match="single value"):
        quiet(nbs_trend, mats, subject, [3.0] * len(months))
    with pytest.raises(DesignError, match="do not vary within any subject"):
        quiet(nbs_trend, mats[:6], subject[:6], [0, 0, 0, 6, 6, 6])
    with pytest.raises(DesignError, match=r"months\[1\] = 'followup'"):
        quiet(nbs_trend, mats, subject, ["M0", "followup", *months[2:]])


# --------------------------------------------------------------------------------------------
# Pairwise visits equal nbs_paired on hand-picked pairs
# --------------------------------------------------------------------------------------------
def test_pairwise_equals_nbs_paired_on_the_pairs_picked_by_hand():
    rng = np.random.default_rng(3)
    n_nodes = 9
    schedule = {f"s{k}": [0.0, 6.0, 12.0] for k in range(5)}
    schedule["s4"] = [0.0, 12.0]  # misses M6: left out of the pairs with M6 only
    mats, subject, months = longitudinal(rng, schedule, n_nodes, slope=2.0, planted=[0, 1, 2])
    visit = [f"ses-M{int(m)}" for m in months]
    order = rng.permutation(len(visit))  # rows in any order
    mats, subject, visit = mats[order], [subject[k] for k in order], [visit[k] for k in order]
    out = quiet(nbs_pairwise, mats, subject, visit, threshold=2.0, tail="both")
    # chronological by months (M6 before M12, although "M12" < "M6" as text)
    assert list(out) == [("ses-M0", "ses-M6"), ("ses-M0", "ses-M12"), ("ses-M6", "ses-M12")]
    for (a, b), result in out.items():
        common = [s for s in sorted(set(subject)) if (s, a) in zip(subject, visit, strict=True)
                  and (s, b) in zip(subject, visit, strict=True)]
        pre = np.array([mats[list(zip(subject, visit, strict=True)).index((s, a))]
                        for s in common])
        post = np.array([mats[list(zip(subject, visit, strict=True)).index((s, b))]
                         for s in common])
        expected = quiet(nbs_paired, pre, post, threshold=2.0, tail="both")
        assert len(common) == (5 if (a, b) == ("ses-M0", "ses-M12") else 4)
        assert components(result) == pytest.approx(components(expected), abs=1e-12)
        np.testing.assert_allclose(result.statistic_matrix, expected.statistic_matrix)
        assert result.smallest_p == pytest.approx(2 / 2 ** len(common))
        assert result.parameters["design"] == "paired"
        assert result.parameters["visits"] == (a, b)
        assert sorted(result.parameters["subjects"]) == common


# --------------------------------------------------------------------------------------------
# Pairing checked against the connectomes' participant_id and session_id
# --------------------------------------------------------------------------------------------
def connectomes(rng, subjects, sessions, n_nodes=6):
    return [Connectome(symmetric(rng, 1, n_nodes)[0], None, participant_id=p, session_id=s)
            for p, s in zip(subjects, sessions, strict=True)]


def test_nbs_paired_refuses_mismatched_pairs():
    rng = np.random.default_rng(4)
    subs = ["sub-01", "sub-02", "sub-03", "sub-04"]
    pre = connectomes(rng, subs, ["ses-M0"] * 4)
    post = connectomes(rng, subs, ["ses-M12"] * 4)
    assert quiet(nbs_paired, pre, post, threshold_p=0.05).parameters["design"] == "paired"

    swapped = [post[0], post[2], post[1], post[3]]
    with pytest.raises(DesignError, match=r"pre\[1\] is participant 'sub-02' but post\[1\] is "
                                          r"participant 'sub-03'.*same order"):
        nbs_paired(pre, swapped)
    twice = [*pre[:3], pre[0]]
    with pytest.raises(DesignError, match=r"'sub-01' appears twice in pre \(pre\[0\] and "
                                          r"pre\[3\]\)"):
        nbs_paired(twice, [*post[:3], post[0]])
    mixed = post[:3] + connectomes(rng, ["sub-04"], ["ses-M6"])
    with pytest.raises(DesignError, match=r"post mixes sessions: post\[0\] is 'ses-M12' but "
                                          r"post\[3\] is 'ses-M6'"):
        nbs_paired(pre, mixed)
    same = connectomes(rng, subs, ["ses-M0"] * 4)
    with pytest.raises(DesignError, match=r"pre\[0\] and post\[0\] are the same session"):
        nbs_paired(pre, same)
    # ses-baseline and ses-M0 encode the same month: the same session
    baseline = connectomes(rng, subs, ["ses-baseline"] * 4)
    with pytest.raises(DesignError, match="same session"):
        nbs_paired(pre, baseline)
    # plain arrays carry no ids: nothing to check
    arrays = [c.matrix for c in swapped]
    assert quiet(nbs_paired, [c.matrix for c in pre], arrays, threshold_p=0.05) is not None


def test_subject_and_visit_default_to_the_connectomes_ids_and_are_checked():
    rng = np.random.default_rng(6)
    subs = [f"sub-{k:02d}" for k in range(1, 5)]
    sessions = ["ses-M0", "ses-M6", "ses-M12"]
    pairs = [(s, v) for s in subs for v in sessions]
    items = connectomes(rng, [p for p, _ in pairs], [v for _, v in pairs])
    subject = [p for p, _ in pairs]
    visit = [v for _, v in pairs]
    months = [float(v[5:]) for v in visit]

    by_ids = quiet(nbs_repeated_measures, items, threshold_p=0.05)
    by_hand = quiet(nbs_repeated_measures, [c.matrix for c in items], subject, visit,
                    threshold_p=0.05)
    np.testing.assert_allclose(by_ids.statistic_matrix, by_hand.statistic_matrix)
    assert by_ids.parameters["design"] == "repeated-measures F"
    # a recoding of the same grouping is accepted (visit numbers for session labels)
    recoded = quiet(nbs_repeated_measures, items, [s[4:] for s in subject],
                    [sessions.index(v) + 1 for v in visit], threshold_p=0.05)
    np.testing.assert_allclose(recoded.statistic_matrix, by_hand.statistic_matrix)

    trend = quiet(nbs_trend, items, threshold_p=0.05)
    trend_hand = quiet(nbs_trend, [c.matrix for c in items], subject, months, threshold_p=0.05)
    np.testing.assert_allclose(trend.statistic_matrix, trend_hand.statistic_matrix)
    assert trend.parameters["months"] == months
    # actual intervals that keep the sessions' order are fine
    jittered = [m + 0.3 for m in months]
    assert quiet(nbs_trend, items, months=jittered, threshold_p=0.05).df == (7.0,)

    pairwise = quiet(nbs_pairwise, items, threshold_p=0.05)
    assert list(pairwise) == [("ses-M0", "ses-M6"), ("ses-M0", "ses-M12"),
                              ("ses-M6", "ses-M12")]

    # disagreements name the observation
    wrong_subject = subject.copy()
    wrong_subject[4], wrong_subject[7] = wrong_subject[7], wrong_subject[4]
    with pytest.raises(DesignError, match=r"observation 4: subject\[4\] is 'sub-03' but "
                                          r"matrices\[4\] is participant_id 'sub-02'"):
        nbs_repeated_measures(items, wrong_subject, visit)
    wrong_visit = visit.copy()
    wrong_visit[1] = "ses-M12"
    with pytest.raises(DesignError, match=r"observation 1: visit\[1\] is 'ses-M12' but "
                                          r"matrices\[1\] is session_id 'ses-M6'"):
        nbs_pairwise(items, subject, wrong_visit)
    regrouped = [1, 2, 3] * 4
    regrouped[3] = 2
    with pytest.raises(DesignError, match=r"observation 3: visit\[3\] = 2 as visit\[1\], but "
                                          r"matrices\[3\] is session_id 'ses-M0'"):
        nbs_repeated_measures(items, visit=regrouped)
    regrouped[3] = 4
    with pytest.raises(DesignError, match=r"observation 3: matrices\[3\] and matrices\[0\] "
                                          r"are both session_id 'ses-M0' but visit gives 4"):
        nbs_repeated_measures(items, visit=regrouped)
    backwards = months.copy()
    backwards[0], backwards[2] = backwards[2], backwards[0]
    with pytest.raises(DesignError, match=r"observation 1: months\[1\] = 6 and months\[0\] = "
                                          r"12 \(subject 'sub-01'\)"):
        nbs_trend(items, months=backwards)
    unlabelled = connectomes(rng, subject, ["ses-followup"] * 12)
    with pytest.raises(DesignError, match=r"matrices\[0\] has session_id 'ses-followup', "
                                          r"which encodes no months.*pass months="):
        nbs_trend(unlabelled)
    plain = np.array([c.matrix for c in items])
    with pytest.raises(DesignError, match=r"subject was not given and matrices\[0\] carries no "
                                          r"participant_id.*pass subject="):
        nbs_repeated_measures(plain)
    with pytest.raises(DesignError, match="carries no session_id"):
        nbs_trend(plain, subject)


def test_sessions_encoding_the_same_months_are_one_visit():
    rng = np.random.default_rng(8)
    subs = ["sub-01", "sub-02", "sub-03"]
    sessions = {"sub-01": ["ses-baseline", "ses-M6", "ses-M12"],
                "sub-02": ["ses-M0", "ses-M06", "ses-Y1"],
                "sub-03": ["ses-M0", "ses-6m", "ses-M12"]}
    items = connectomes(rng, [s for s in subs for _ in range(3)],
                        [v for s in subs for v in sessions[s]])
    result = quiet(nbs_repeated_measures, items, threshold_p=0.05)
    assert result.parameters["visits"] == ["ses-baseline", "ses-M6", "ses-M12"]
    assert result.df == (2.0, 4.0)


# --------------------------------------------------------------------------------------------
# Options are keyword-only; the public names are kept
# --------------------------------------------------------------------------------------------
def test_options_are_keyword_only():
    rng = np.random.default_rng(9)
    mats = symmetric(rng, 6, 5)
    subject = ["a", "a", "a", "b", "b", "b"]
    months = [0, 6, 12] * 2
    design = np.column_stack([np.ones(6), np.arange(6.0)])
    calls = [
        lambda: nbs(mats, design, [0, 1], 3.0, 100),
        lambda: nbs_one_sample(mats, 3.0, None),
        lambda: nbs_paired(mats[:3], mats[3:], 3.0, None),
        lambda: nbs_two_sample(mats[:3], mats[3:], 3.0, None),
        lambda: nbs_repeated_measures(mats, subject, months, 3.0, None),
        lambda: nbs_trend(mats, subject, months, 3.0, None),
        lambda: nbs_pairwise(mats, subject, months, 3.0, None),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="positional"):
            call()
    leading = {"nbs": 4, "nbs_one_sample": 2, "nbs_paired": 3, "nbs_two_sample": 3,
               "nbs_repeated_measures": 4, "nbs_trend": 4, "nbs_pairwise": 4}
    for name, n_positional in leading.items():
        parameters = list(inspect.signature(getattr(nbs_package, name)).parameters.values())
        assert parameters[n_positional - 1].name == "threshold"
        assert all(p.kind is p.KEYWORD_ONLY for p in parameters[n_positional:]), name
        assert "n_permutations" in {p.name for p in parameters[n_positional:]}
        for option in ("method", "extent_exponent", "height_exponent", "networks"):
            assert option in {p.name for p in parameters[n_positional:]}, (name, option)


def test_public_names_are_kept():
    before = {"nbs", "nbs_one_sample", "nbs_paired", "nbs_two_sample", "nbs_repeated_measures",
              "NBSResult", "NBSComponent", "DEFAULT_THRESHOLD_P", "SIZE_MEASURES", "TAILS"}
    assert before | {"nbs_trend", "nbs_pairwise"} <= set(nbs_package.__all__)
    assert {"nbs_trend", "nbs_pairwise"} <= set(msimaging.fmri.__all__)
    for name in nbs_package.__all__:
        assert getattr(nbs_package, name) is not None


# --------------------------------------------------------------------------------------------
# Power on a planted rising subnetwork: 4 subjects x 3 visits
# --------------------------------------------------------------------------------------------
def test_planted_rising_subnetwork_is_found_by_trend_and_f_but_not_reachable_paired():
    n_nodes, planted_nodes, n_sims = 30, list(range(10)), 8
    planted = set(itertools.combinations(planted_nodes, 2))
    schedule = {f"sub-{k}": [0.0, 6.0, 12.0] for k in range(4)}
    found = {"trend": [], "F": []}
    for seed in range(n_sims):
        rng = np.random.default_rng(100 + seed)
        mats, subject, months = longitudinal(rng, schedule, n_nodes, slope=2.0,
                                             planted=planted_nodes)
        results = {
            "trend": quiet(nbs_trend, mats, subject, months, threshold_p=0.005),
            "F": quiet(nbs_repeated_measures, mats, subject, months, threshold_p=0.005),
        }
        for name, result in results.items():
            significant = result.significant(0.05)
            if significant:
                edges = {tuple(e) for e in significant[0].edges.tolist()}
                found[name].append(len(edges & planted) / len(edges))
        first = [k for k, m in enumerate(months) if m == 0.0]
        last = [k for k, m in enumerate(months) if m == 12.0]
        with pytest.warns(MSImagingWarning, match="smallest attainable p is 0.0625"):
            paired = nbs_paired(mats[first], mats[last], threshold_p=0.005)
        assert paired.smallest_p == 1 / 16 and paired.permutation_space == 16
        assert not paired.significant(0.05)
    for name, precisions in found.items():
        print(f"{name}: detected {len(precisions)}/{n_sims}, planted fraction of the edges "
              f"min {min(precisions):.3f} mean {np.mean(precisions):.3f}")
        assert len(precisions) >= n_sims - 1, name
        assert min(precisions) >= 0.8, name
