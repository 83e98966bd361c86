"""Longitudinal statistics against exact enumeration, hand computations and planted effects."""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from msimaging.errors import InputError, MSImagingWarning
from msimaging.stats import (
    compare_visits,
    friedman_exact,
    holm,
    kendalls_w,
    read_phenotype,
    wilcoxon_exact,
)

# --------------------------------------------------------------------------------------------
# Exact tests
# --------------------------------------------------------------------------------------------


def _brute_force_friedman(data: np.ndarray) -> float:
    """P(sum R^2 >= observed) over every within-subject ordering, one at a time."""
    ranks = stats.rankdata(data, axis=1)
    observed = np.sum(ranks.sum(axis=0) ** 2)
    k = data.shape[1]
    hits = total = 0
    for combo in itertools.product(itertools.permutations(range(k)), repeat=data.shape[0]):
        r = sum(ranks[i][list(p)] for i, p in enumerate(combo))
        hits += np.sum(r**2) >= observed - 1e-9
        total += 1
    return hits / total


def test_friedman_identical_ranks_is_exactly_0_00077():
    data = np.tile([3.0, 2.0, 1.0], (5, 1)) + np.arange(5)[:, None]
    res = friedman_exact(data)
    assert res["p_value"] == pytest.approx(6 / 6**5)  # 0.000772
    assert f"{res['p_value']:.2g}" == "0.00077"
    assert res["p_chi2"] == pytest.approx(stats.friedmanchisquare(*data.T).pvalue)
    assert f"{res['p_chi2']:.2g}" == "0.0067"
    assert res["kendall_w"] == pytest.approx(1.0)
    assert res["smallest_p"] == pytest.approx(6 / 6**5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_friedman_exact_equals_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, k = (5, 3) if seed < 2 else (4, 4)
    data = rng.integers(0, 3, (n, k)).astype(float)  # many ties
    res = friedman_exact(data)
    assert res["p_value"] == pytest.approx(_brute_force_friedman(data), abs=1e-12)
    assert res["statistic"] == pytest.approx(stats.friedmanchisquare(*data.T).statistic)


def test_friedman_q_8_4_matches_the_published_exact_value():
    # Q = 8.4 with n = 5, k = 3: exact 0.0085 vs chi-square 0.0150 (see ANCHORS.md).
    data = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 3, 2]], float)
    res = friedman_exact(data)
    assert res["statistic"] == pytest.approx(8.4)
    assert res["p_value"] == pytest.approx(0.0085, abs=5e-5)
    assert res["p_chi2"] == pytest.approx(0.0150, abs=5e-5)


def test_friedman_exact_approaches_chi_square_for_large_n():
    rng = np.random.default_rng(7)
    data = rng.normal(size=(60, 3)) + np.array([0.0, 0.15, 0.3])
    res = friedman_exact(data)
    assert "exact" in res["method"]
    assert res["p_value"] == pytest.approx(res["p_chi2"], rel=0.1, abs=0.003)


def test_friedman_monte_carlo_when_too_large_is_seeded_and_close():
    rng = np.random.default_rng(8)
    data = rng.normal(size=(30, 5)) + np.linspace(0, 0.4, 5)
    a = friedman_exact(data, max_states=1000, n_resamples=20_000, seed=3)
    b = friedman_exact(data, max_states=1000, n_resamples=20_000, seed=3)
    assert "Monte Carlo" in a["method"] and a["p_value"] == b["p_value"]
    assert a["p_value"] == pytest.approx(a["p_chi2"], abs=0.02)


def test_kendalls_w_known_cases():
    assert kendalls_w(np.tile([1.0, 2.0, 3.0, 4.0], (6, 1))) == pytest.approx(1.0)
    # Two raters in perfect disagreement over 3 items... rows are raters, columns items.
    assert kendalls_w(np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])) == pytest.approx(0.0)
    # Hand computation (no ties): R = (5, 7, 6), S = sum (R - 6)^2 = 2, W = 12 S / (m^2 (k^3-k))
    data = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 1.0], [2.0, 1.0, 3.0], [0.0, 1.0, 0.5]])
    ranks = stats.rankdata(data, axis=1)
    r = ranks.sum(axis=0)
    s = np.sum((r - r.mean()) ** 2)
    assert kendalls_w(data) == pytest.approx(12 * s / (16 * (27 - 3)))


def test_wilcoxon_exact_equals_scipy_and_the_n5_floor():
    rng = np.random.default_rng(4)
    a = rng.normal(size=10)
    b = a + rng.normal(0.4, 1.0, 10)
    for alternative in ("two-sided", "greater", "less"):
        ours = wilcoxon_exact(a, b, alternative=alternative)["p_value"]
        ref = stats.wilcoxon(b - a, alternative=alternative, method="exact").pvalue
        assert ours == pytest.approx(ref, abs=1e-12)
    floor = wilcoxon_exact(np.zeros(5), np.arange(1.0, 6.0))
    assert floor["p_value"] == pytest.approx(0.0625) and floor["smallest_p"] == 0.0625
    one = wilcoxon_exact(np.zeros(5), np.arange(1.0, 6.0), alternative="greater")
    assert one["p_value"] == pytest.approx(1 / 32)


def test_wilcoxon_exact_with_ties_and_zeros_equals_enumeration():
    d = np.array([1.0, -1.0, 2.0, 2.0, 0.0, 3.0, -2.0])
    nonzero = d[d != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    observed = ranks[nonzero > 0].sum()
    flips = np.array(list(itertools.product([0, 1], repeat=nonzero.size)))
    w = flips @ ranks
    p_upper = np.mean(w >= observed - 1e-9)
    res = wilcoxon_exact(np.zeros(d.size), d, alternative="greater")
    assert res["p_value"] == pytest.approx(p_upper) and res["n_zero"] == 1


def test_holm_against_a_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm(np.array([0.5, 0.9])), [1.0, 1.0])


# --------------------------------------------------------------------------------------------
# compare_visits
# --------------------------------------------------------------------------------------------


def _tidy(values: dict[str, np.ndarray], months=(0, 3, 6)) -> pd.DataFrame:
    rows = []
    for measure, data in values.items():
        for i, row in enumerate(data):
            for m, v in zip(months, row, strict=True):
                rows.append({"participant_id": f"sub-{i + 1:02d}", "months": m,
                             "measure": measure, "value": v})
    return pd.DataFrame(rows)


def test_compare_visits_tables_and_notes():
    rising = np.array([[1.0, 2.0, 3.0], [2.0, 3.5, 4.0], [0.5, 1.0, 2.0], [3.0, 3.2, 3.9],
                       [1.0, 1.1, 1.3]])
    flat = np.array([[1.0, 1.2, 0.9], [2.0, 1.9, 2.1], [0.5, 0.6, 0.4], [3.0, 2.8, 3.1],
                     [1.0, 1.0, 1.05]])
    with pytest.warns(MSImagingWarning, match="smallest two-sided Wilcoxon p is 0.0625"):
        res = compare_visits(_tidy({"rising": rising, "flat": flat}))
    tests = res.tests.set_index("measure")
    assert tests.loc["rising", "p_exact"] == pytest.approx(6 / 6**5)
    assert tests.loc["rising", "significant"] and not tests.loc["flat", "significant"]
    assert tests.loc["rising", "kendall_w"] == pytest.approx(1.0)
    summary = res.summary.set_index(["measure", "months"])
    assert summary.loc[("rising", 6), "median"] == 3.0
    assert summary.loc[("rising", 0), "iqr"] == pytest.approx(2.0 - 1.0)
    changes = res.changes.set_index(["measure", "participant_id", "months"])
    assert changes.loc[("rising", "sub-01", 6), "pct_change"] == pytest.approx(200.0)
    post = res.posthoc[res.posthoc.measure == "rising"]
    assert len(post) == 3 and (post["p_exact"] == 0.0625).all()
    np.testing.assert_allclose(post["p_holm"], holm(post["p_exact"].to_numpy()))
    assert "VisitComparison(2 measures, 1 significant" in repr(res)
    assert "<table" in res._repr_html_()


def test_compare_visits_drops_incomplete_subjects_with_a_note():
    data = _tidy({"m": np.array([[1.0, 2.0, 3.0]] * 6) + np.arange(6)[:, None]})
    data = data[~((data.participant_id == "sub-06") & (data.months == 3))]
    with pytest.warns(MSImagingWarning, match="sub-06"):
        res = compare_visits(data)
    assert res.tests.loc[0, "n_subjects"] == 5 and res.tests.loc[0, "n_dropped"] == 1
    # The per-visit summary still counts sub-06 where it has data.
    assert res.summary.set_index("months").loc[0, "n"] == 6


def test_compare_visits_bad_inputs():
    data = _tidy({"m": np.array([[1.0, 2.0, 3.0]] * 5)})
    with pytest.raises(InputError, match="duplicate"):
        compare_visits(pd.concat([data, data.iloc[:1]]))
    bad = data.astype({"value": object})
    bad.loc[2, "value"] = "3,5"
    with pytest.raises(InputError, match=r"non-numeric.*'3,5'"):
        compare_visits(bad)
    with pytest.raises(InputError, match="single visit"):
        compare_visits(data[data.months == 0])
    with pytest.raises(InputError, match="no column 'visit'"):
        compare_visits(data, visit="visit")
    with pytest.raises(InputError, match="posthoc"):
        compare_visits(data, posthoc="some")


def test_mixed_model_reports_boundary_and_effects():
    pytest.importorskip("statsmodels")
    rng = np.random.default_rng(5)
    subjects = rng.normal(0, 2.0, (8, 1))
    data = subjects + np.array([0.0, 0.5, 1.0]) + rng.normal(0, 0.2, (8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = compare_visits(_tidy({"m": data}), mixed_model=True)
    mixed = res.mixed.set_index("term")
    assert mixed.loc["C(visit)[T.6]", "estimate"] == pytest.approx(1.0, abs=0.3)
    assert not mixed["boundary"].any() and mixed["converged"].all()
    # No between-subject variance at all: the boundary is reported, not hidden.
    flat = np.zeros((8, 1)) + np.array([0.0, 0.5, 1.0]) + rng.normal(0, 0.2, (8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = compare_visits(_tidy({"m": flat}), mixed_model=True)
    assert res.mixed["boundary"].all()
    assert any("boundary" in n for n in res.notes)


# --------------------------------------------------------------------------------------------
# The synthetic study: planted effects found, no-change measures not flagged
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured_nawm(tiny_study):
    """RD/FA measured in left/right NAWM of every visit (tensor fit on the noisy DWI, NAWM from
    the truth tissue map on the DWI grid, hemispheres from the subject's MNI transform)."""
    from msimaging.dti import fit_tensor, nawm_rois, roi_stats

    root, truth = tiny_study
    root = Path(root)
    rows = []
    for sub, subject in truth["subjects"].items():
        for ses, session in subject["sessions"].items():
            dwi = root / sub / ses / "dwi" / f"{sub}_{ses}_dwi.nii.gz"
            gt = root / "sourcedata" / "ground_truth" / sub / ses / "dwi"
            tissue = nib.load(gt / f"{sub}_{ses}_desc-tissue_dseg.nii.gz")
            wm = nib.Nifti1Image((np.asanyarray(tissue.dataobj) == 3).astype(np.uint8),
                                 tissue.affine)
            lesion = gt / f"{sub}_{ses}_label-lesion_mask.nii.gz"
            to_mni = np.linalg.inv(np.asarray(subject["mni_to_native"][ses]))
            fit = fit_tensor(dwi, mask=nib.Nifti1Image(
                (np.asanyarray(tissue.dataobj) > 0).astype(np.uint8), tissue.affine))
            rois = nawm_rois(wm, lesion, to_mni=to_mni)
            table = roi_stats({"rd": fit.maps["rd"], "fa": fit.maps["fa"]}, rois,
                              participant_id=sub, session_id=ses)
            rows.append(table.assign(months=session["months"]))
    return pd.concat(rows, ignore_index=True)


def test_planted_left_nawm_rd_fall_is_significant_and_right_is_not(measured_nawm):
    nawm = measured_nawm[measured_nawm.roi.isin(["NAWM_left", "NAWM_right"])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        res = compare_visits(nawm, value="mean", by=["roi", "metric"])
    tests = res.tests.set_index(["roi", "metric"])
    assert tests.loc[("NAWM_left", "rd"), "p_exact"] < 0.05
    assert tests.loc[("NAWM_left", "rd"), "significant"]
    assert tests.loc[("NAWM_right", "rd"), "p_exact"] >= 0.05
    assert not tests.loc[("NAWM_right", "rd"), "significant"]
    left = res.changes.set_index(["roi", "metric", "months"]).loc[("NAWM_left", "rd", 6.0)]
    assert left["pct_change"].median() == pytest.approx(-8.0, abs=2.0)


def test_planted_clinical_trends_are_detected(tiny_study):
    root, truth = tiny_study
    clinical = read_phenotype(root)
    assert set(clinical["unit"]) >= {"score"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        res = compare_visits(clinical, by=["measure"])
    tests = res.tests.set_index("measure")
    effects = truth["clinical"]["effects"]
    planted = {"edss": effects["edss_first_followup"], "fss": effects["fss_per_month"],
               "pasat": effects["pasat_per_month"], "sdmt": effects["sdmt_per_month"]}
    for measure, effect in planted.items():
        assert effect != 0
        assert tests.loc[measure, "significant"], measure
        median_change = res.changes.set_index(["measure", "months"]).loc[
            (measure, 6.0), "change"].median()
        assert np.sign(median_change) == np.sign(effect), measure


def test_no_change_measures_are_not_flagged(tiny_study):
    _, truth = tiny_study
    rows = []
    for sub, subject in truth["subjects"].items():
        for session in subject["sessions"].values():
            # ICV is constant by construction; add no noise: ties everywhere, p = 1.
            rows.append({"participant_id": sub, "months": session["months"], "measure": "icv",
                         "value": session["tissue_volumes_ml"]["ICV"]})
    res = compare_visits(pd.DataFrame(rows), posthoc="none")
    assert res.tests.loc[0, "p_exact"] == pytest.approx(1.0)
    assert not res.tests["significant"].any()


def test_read_phenotype_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="phenotype"):
        read_phenotype(tmp_path)
    (tmp_path / "phenotype").mkdir()
    (tmp_path / "phenotype" / "labs.tsv").write_text(
        "participant_id\tsession_id\tmonths\til6\tcomment\n"
        "sub-01\tses-M0\t0\t3.2\tok\nsub-01\tses-M6\t6\tn/a\tlate\n"
    )
    (tmp_path / "phenotype" / "labs.json").write_text(json.dumps({"il6": {"Units": "pg/mL"}}))
    with pytest.warns(MSImagingWarning, match="labs.comment"):
        table = read_phenotype(tmp_path)
    assert table["unit"].tolist() == ["pg/mL", "pg/mL"]
    assert table["value"].isna().tolist() == [False, True]
