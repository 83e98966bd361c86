"""Issue 16 acceptance: the group level finds a planted subnetwork in a 4-subject, 3-visit study.

Synthetic study (tiny preset, seed 0): 4 subjects x sessions M0/M3/M6, a planted 14-node
subnetwork (``subnetwork_nodes=14``: the 14 default-subnetwork nodes nearest the lateral left
default-mode centroid: 11 left default mode, 3 left parietal) whose correlation rises linearly
to ``connectivity_delta_r=0.5`` at month 6 (0.25 at month 3). The tiny preset's 40 BOLD
volumes are too few for 4 subjects (measured on seed 0, default 26 nodes and 0.3 rise: no
component below p = 0.59), and so are 150 (14 nodes: none below p = 0.19 with a 0.3 rise; a
13-edge component, 77 % planted, with a 0.5 rise). The runs therefore have
``n_bold_volumes=450`` and a 0.5 rise (measured: one component of 60 / 62 edges, 93 / 92 %
planted, p = 1/216, on seeds 0 / 1; 300 volumes gave 80-89 % planted on seeds 0-3).

Only the fMRI participant level runs (connectomes), and the segmentation derivatives are then
removed so the group level skips lesion tracking (NBS does not use it); then the group level
with no configuration must choose the repeated-measures F over the three visits ((3!)^4 = 1,296
within-subject permutations, enumerated: smallest p = 1/216) and find a component with
p < 0.05 whose edges are >= 80 % planted (planted edges: pairs of planted nodes from the
ground truth). The paired first-vs-last design on the same connectomes has 2^4 = 16 sign
flips: its smallest attainable p is 1/16 one-sided (2/16 two-sided), and the tables and the
report must say that p < 0.05 is unattainable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msimaging.derivatives import DerivativesLayout

pytestmark = pytest.mark.timeout(600)

SESSIONS = ("M0", "M3", "M6")
N_SUBJECTS = 4


@pytest.fixture(scope="module")
def connectomes(tmp_path_factory):
    """The study, its truth and a derivatives folder with the fMRI participant level only."""
    from msimaging.datasets import make_synthetic_study
    from msimaging.pipeline import run_participant

    base = tmp_path_factory.mktemp("nbs_acceptance")
    bids = make_synthetic_study(
        base / "study", n_subjects=N_SUBJECTS, sessions=SESSIONS, seed=0, preset="tiny",
        subnetwork_nodes=14, connectivity_delta_r=0.5, n_bold_volumes=450,
    )
    truth = json.loads((bids / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    run = run_participant(bids, base / "participant", modalities=["fmri"], n_workers=1,
                          progress=False)
    assert run.ok
    # The group level would track lesions across visits (8 registrations, ~25 s of the ~35 s
    # of each group run): without the segmentation derivatives it skips them; NBS needs only
    # the connectomes and sessions.tsv.
    shutil.rmtree(bids / "derivatives" / "segmentation")
    return bids, base, truth


def _group(connectomes, name: str, **group):
    """run_group on a copy of the participant outputs, with options checked as a config."""
    from msimaging.pipeline import run_group
    from msimaging.pipeline.options import check_config

    bids, base, _ = connectomes
    out = base / name
    shutil.copytree(base / "participant", out)
    options = check_config({"group": group})["group"] if group else {}
    result = run_group(bids, out, progress=False, **options)
    return result, out


@pytest.fixture(scope="module")
def auto_run(connectomes):
    return _group(connectomes, "auto")


@pytest.fixture(scope="module")
def paired_run(connectomes):
    return _group(connectomes, "paired", nbs_design="paired", nbs_tail="right")


@pytest.fixture(scope="module")
def trend_run(connectomes):
    return _group(connectomes, "trend", nbs_design="trend", nbs_tail="right")


def _sidecar(out: Path, name: str = "fmri_nbs_components") -> dict:
    return json.loads(DerivativesLayout(out).group_table(name).with_suffix(".json").read_text())


def _planted_share(edges: pd.DataFrame, planted: set[int]) -> float:
    inside = edges["node_i"].isin(planted) & edges["node_j"].isin(planted)
    return float(inside.mean())


def test_truth_plants_14_nodes(connectomes):
    _, _, truth = connectomes
    nodes = truth["func"]["planted_nodes"]
    assert len(nodes) == 14
    assert len(truth["func"]["planted_edges"]) == 14 * 13 // 2
    assert truth["generator"]["effects"]["subnetwork_nodes"] == 14
    assert truth["generator"]["preset_settings"]["n_bold_volumes"] == 450


def test_group_level_without_config_finds_the_planted_subnetwork(connectomes, auto_run):
    _, _, truth = connectomes
    result, out = auto_run
    meta = _sidecar(out)
    assert meta["Design"] == "repeated_measures"
    assert meta["DesignReason"].startswith("auto: 3 visits")
    assert meta["Exact"] is True
    assert meta["PermutationSpace"] == 6 ** N_SUBJECTS  # (3!)^4 within-subject orders
    # The 3! relabellings of the visits reproduce the F map: smallest p = 1/(3!)^(n-1).
    assert meta["SmallestAttainableP"] == pytest.approx(1 / 6 ** (N_SUBJECTS - 1))
    assert meta["SignificanceAttainable"] is True
    assert meta["SubjectsDropped"] == []

    comps = pd.read_csv(DerivativesLayout(out).group_table("fmri_nbs_components"), sep="\t")
    edges = pd.read_csv(DerivativesLayout(out).group_table("fmri_nbs_edges"), sep="\t")
    planted = set(truth["func"]["planted_nodes"])
    significant = comps[comps["p_value"] < 0.05]
    assert len(significant) >= 1
    best = significant.iloc[0]
    share = _planted_share(edges[edges["component"] == best["component"]], planted)
    print(f"\nauto (repeated-measures F): component p = {best['p_value']:.4g}, "
          f"{int(best['n_edges'])} edges, {100 * share:.1f} % planted "
          f"({len(truth['func']['planted_edges'])} planted edges)")
    assert share >= 0.8
    assert result.nbs is not None and result.nbs.components[0].p_value < 0.05
    assert any(path.name.startswith("group_desc-nbsFM0M3M6_")
               for path in (out / "figures").glob("*.png"))


def test_pairwise_table_gives_direction_and_its_floor(auto_run):
    result, out = auto_run
    table = pd.read_csv(DerivativesLayout(out).group_table("fmri_nbs_pairwise"), sep="\t")
    assert list(zip(table["months_a"], table["months_b"], strict=True)) == [
        (0, 3), (0, 6), (3, 6)]
    assert set(result.nbs_pairwise) == {(0.0, 3.0), (0.0, 6.0), (3.0, 6.0)}
    # Two-sided paired NBS of 4 subjects: 2 of the 2^4 sign flips give the observed map.
    assert np.allclose(table["smallest_p"], 2 / 16)
    assert not table["significance_attainable"].any()
    assert (table["permutation_space"] == 16).all() and table["exact"].all()
    # The planted change is a rise: the first-vs-last pair's main component is positive.
    first_last = table[(table["months_a"] == 0) & (table["months_b"] == 6)].iloc[0]
    assert first_last["direction"] == "positive"


def test_report_says_which_design_ran_and_why(auto_run):
    result, _ = auto_run
    page = result.report.read_text()
    assert "repeated-measures F across every visit" in page
    assert "auto: 3 visits" in page
    assert "smallest attainable p = 0.00463" in page
    assert "No component can reach p &lt; 0.05" not in page
    assert "Every pair of visits" in page


def test_paired_first_vs_last_says_p_below_005_is_unattainable(paired_run):
    result, out = paired_run
    meta = _sidecar(out)
    assert meta["Design"] == "paired"
    assert meta["DesignReason"] == "set in the configuration ([group] nbs_design = 'paired')"
    assert meta["PermutationSpace"] == 16 and meta["Exact"] is True
    assert meta["SmallestAttainableP"] == pytest.approx(1 / 16)  # one-sided: 1 of 2^4 flips
    assert meta["SignificanceAttainable"] is False
    assert meta["Conclusion"].startswith(
        "No component can reach p < 0.05 with this design and n = 4")
    assert _sidecar(out, "fmri_nbs_edges")["SmallestAttainableP"] == pytest.approx(1 / 16)
    assert result.nbs.smallest_p == pytest.approx(1 / 16)
    assert all(c.p_value >= 0.05 for c in result.nbs.components)
    page = result.report.read_text()
    assert "No component can reach p &lt; 0.05 with this design and n = 4" in page
    assert "no component can reach p &lt; 0.05." in page  # the methods sentence
    figures = [p.name for p in (out / "figures").glob("group_desc-nbs*.png")]
    assert all(name.startswith("group_desc-nbsM0M6_") for name in figures)


def test_trend_design_from_config_finds_the_rise(connectomes, trend_run):
    """The within-subject trend over months, one-sided: 1,296 arrangements, floor 1/1,296."""
    _, _, truth = connectomes
    result, out = trend_run
    meta = _sidecar(out)
    assert meta["Design"] == "trend" and meta["Tail"] == "right"
    assert meta["PermutationSpace"] == 6 ** N_SUBJECTS and meta["Exact"] is True
    assert meta["SmallestAttainableP"] == pytest.approx(1 / 6 ** N_SUBJECTS)
    edges = pd.read_csv(DerivativesLayout(out).group_table("fmri_nbs_edges"), sep="\t")
    best = result.nbs.components[0]
    share = _planted_share(edges[edges["component"] == best.index],
                           set(truth["func"]["planted_nodes"]))
    print(f"\ntrend: component p = {best.p_value:.4g}, {best.n_edges} edges, "
          f"{100 * share:.1f} % planted")
    assert best.p_value < 0.05 and best.direction == "positive" and share >= 0.8


def test_subnetwork_nodes_picks_the_nodes_nearest_the_left_default_mode_centroid():
    """subnetwork_nodes=14 keeps 14 of the 26 default nodes: every kept node is nearer the
    centroid of the largest group (lateral left default mode) than every dropped one;
    out-of-range sizes are refused."""
    from msimaging.atlases.coordinates import load_seitzman_2018
    from msimaging.datasets import make_synthetic_study
    from msimaging.datasets.synthetic.functional import planted_subnetwork
    from msimaging.errors import InputError

    atlas = load_seitzman_2018()
    default = planted_subnetwork(atlas)
    nodes = planted_subnetwork(atlas, n_nodes=14)
    assert len(default) == 26 and len(nodes) == 14 and set(nodes) <= set(default)
    left_dmn = atlas[atlas["network"].str.contains("DefaultMode")
                     & (atlas["structure"] == "cortexL") & (atlas["x_mm"] <= -15)]
    assert len(left_dmn) == 18  # the documented largest group of the default subnetwork
    xyz = atlas[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    distance = np.linalg.norm(xyz - xyz[left_dmn.index].mean(axis=0), axis=1)
    dropped = sorted(set(default) - set(nodes))
    assert distance[nodes].max() < distance[dropped].min()
    assert (atlas.iloc[nodes]["hemisphere"] == "L").all()
    assert np.array_equal(planted_subnetwork(atlas, n_nodes=26), default)
    for bad in (1, 27, 14.0, True):
        with pytest.raises(InputError, match="subnetwork_nodes"):
            planted_subnetwork(atlas, n_nodes=bad)
    with pytest.raises(InputError, match="n_bold_volumes"):
        make_synthetic_study(Path("/nonexistent/never-written"), preset="tiny",
                             n_bold_volumes=5)


def test_node_table_names_the_component_nodes(auto_run):
    """group/fmri_nbs_nodes.tsv: exactly the nodes of the reported component, with the degree
    counted from the edge table, an AAL3 region or the label, and the network."""
    _, out = auto_run
    layout = DerivativesLayout(out)
    nodes = pd.read_csv(layout.group_table("fmri_nbs_nodes"), sep="\t")
    edges = pd.read_csv(layout.group_table("fmri_nbs_edges"), sep="\t")
    first = nodes[nodes["component"] == 0]
    comp = edges[edges["component"] == 0]
    degree = pd.concat([comp["node_i"], comp["node_j"]]).value_counts()
    assert set(first["node"]) == set(degree.index)
    assert dict(zip(first["node"], first["degree"], strict=True)) == degree.to_dict()
    assert first["degree"].is_monotonic_decreasing  # hubs first
    assert first["name"].notna().all() and first["network"].notna().all()
    page = (out / "report.html").read_text()
    hub = first.iloc[0]
    assert f"{hub['name']} · {hub['network']}" in page


def test_threshold_free_method_from_config(connectomes):
    """[group] nbs_method = "tfnbs" runs the same design with threshold-free inference: the
    significant edges (FWER per edge) are planted ones."""
    _, _, truth = connectomes
    result, out = _group(connectomes, "tfnbs", nbs_design="trend", nbs_method="tfnbs",
                         nbs_tail="right")
    assert _sidecar(out)["Method"] == "tfnbs"
    assert result.nbs.method == "tfnbs"
    edges = pd.read_csv(DerivativesLayout(out).group_table("fmri_nbs_edges"), sep="\t")
    significant = edges[edges["p_value"] < 0.05]
    share = _planted_share(significant, set(truth["func"]["planted_nodes"]))
    print(f"\ntrend TFNBS: {len(significant)} significant edges, {100 * share:.1f} % planted, "
          f"smallest p {edges['p_value'].min():.4g}")
    assert len(significant) > 0 and share >= 0.8
