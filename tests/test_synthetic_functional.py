"""Synthetic fMRI pieces (planted subnetwork, correlations, BOLD, confounds) and clinical table.

Ground truth is recomputed here from the atlas table and the generative model, never from the
functions under test.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from msimaging.atlases.coordinates import load_seitzman_2018
from msimaging.datasets.synthetic.clinical import (
    CLINICAL_COLUMNS,
    ClinicalEffects,
    clinical_table,
)
from msimaging.datasets.synthetic.functional import (
    CONFOUND_COLUMNS,
    DEFAULT_SPEC,
    NodeGroup,
    SubnetworkSpec,
    framewise_displacement,
    functional_truth,
    node_covariance,
    node_sphere_labels,
    planted_groups,
    planted_subnetwork,
    simulate_bold,
    simulate_node_signals,
)
from msimaging.errors import InputError, MSImagingWarning

MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


@pytest.fixture(scope="module")
def atlas():
    return load_seitzman_2018()


# ------------------------------------------------------------------------ planted subnetwork
def test_default_subnetwork_follows_the_spec(atlas):
    x, y, z = atlas["x_mm"], atlas["y_mm"], atlas["z_mm"]
    net, struct = atlas["network"], atlas["structure"]
    left_dmn = net.str.contains("DefaultMode") & (struct == "cortexL") & (x <= -15)
    left_parietal = (
        net.isin(["FrontoParietal", "DorsalAttention"]) & (x < -2) & (y <= -40) & (z >= 25)
    )
    right_phg = (
        (x >= 15)
        & (x <= 40)
        & y.between(-45, -10)
        & z.between(-30, 0)
        & struct.isin(["cortexR", "hippocampus", "amygdala"])
    )
    expected = np.flatnonzero(left_dmn | left_parietal | right_phg)

    nodes = planted_subnetwork(atlas)
    np.testing.assert_array_equal(nodes, expected)
    assert 15 <= nodes.size <= 30
    assert nodes.size == 26

    groups = planted_groups(atlas)
    assert {k: v.size for k, v in groups.items()} == {
        "left_dmn": 18,
        "left_parietal": 6,
        "right_parahippocampal": 2,
    }
    chosen = atlas.iloc[nodes]
    assert (chosen["x_mm"] < 0).sum() == 24
    assert set(chosen.loc[chosen["x_mm"] > 0, "structure"]) <= {"hippocampus", "cortexR"}
    assert not chosen.loc[groups["left_parietal"], "network"].eq("DefaultMode").any()


def test_custom_spec_and_nearest_node_fallback(atlas):
    nowhere = NodeGroup(
        name="nowhere", hemisphere="R", x_mm=(500.0, 600.0), fallback_mni=(25.0, -30.0, -15.0)
    )
    visual = NodeGroup(name="visual", networks=("visual",), hemisphere="L")
    nodes = planted_groups(atlas, SubnetworkSpec(groups=(nowhere, visual)))
    right = atlas[atlas["hemisphere"] == "R"]
    dist = np.linalg.norm(right[["x_mm", "y_mm", "z_mm"]].to_numpy() - [25, -30, -15], axis=1)
    assert nodes["nowhere"].tolist() == [right.index[np.argmin(dist)]]
    visual_left = (atlas["network"] == "Visual") & (atlas["hemisphere"] == "L")
    assert nodes["visual"].tolist() == np.flatnonzero(visual_left).tolist()
    empty = NodeGroup(name="empty", x_mm=(500.0, 600.0))
    with pytest.raises(InputError, match="selects 0 node"):
        planted_subnetwork(atlas, SubnetworkSpec(groups=(empty,)))
    with pytest.raises(InputError, match="structure"):
        planted_subnetwork(atlas.drop(columns="structure"), DEFAULT_SPEC)


# ---------------------------------------------------------------------------- correlations
def test_covariance_structure_and_planted_change(atlas):
    nodes = planted_subnetwork(atlas)
    before = node_covariance(atlas, planted_nodes=nodes, planted_delta_r=0.0)
    after = node_covariance(atlas, planted_nodes=nodes, planted_delta_r=0.2)
    for cov in (before, after):
        np.testing.assert_array_equal(cov, cov.T)
        np.testing.assert_array_equal(np.diag(cov), 1.0)
        assert np.linalg.eigvalsh(cov)[0] > 0

    planted = np.zeros((300, 300), bool)
    planted[np.ix_(nodes, nodes)] = True
    np.fill_diagonal(planted, False)
    np.testing.assert_allclose((after - before)[planted], 0.2, rtol=0, atol=1e-12)
    np.testing.assert_array_equal((after - before)[~planted], 0.0)

    net = atlas["network"].to_numpy()
    same = (net[:, None] == net[None, :]) & (net[:, None] != "unassigned")
    off = ~np.eye(300, dtype=bool)
    np.testing.assert_array_equal(before[same & off], 0.35)
    np.testing.assert_array_equal(before[~same & off], 0.05)


def test_covariance_shrinks_to_positive_definite(atlas):
    with pytest.warns(MSImagingWarning, match="not positive definite"):
        cov = node_covariance(atlas, within_network_r=0.3, between_network_r=-0.2)
    assert np.linalg.eigvalsh(cov)[0] >= 1e-3 - 1e-9
    np.testing.assert_allclose(np.diag(cov), 1.0)
    with pytest.raises(InputError, match="planted_delta_r"):
        node_covariance(atlas, planted_nodes=[80, 81], planted_delta_r=0.7)
    with pytest.raises(InputError, match="network"):
        node_covariance(atlas.drop(columns="network"))


def test_realised_correlation_approaches_population(atlas):
    nodes = planted_subnetwork(atlas)
    cov = node_covariance(atlas, planted_nodes=nodes, planted_delta_r=0.25)
    signals, realised = simulate_node_signals(cov, 5000, 2.0, np.random.default_rng(3))
    assert signals.shape == (5000, 300)
    np.testing.assert_allclose(signals.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(signals.std(axis=0), 1.0)
    np.testing.assert_allclose(realised, np.corrcoef(signals, rowvar=False))
    iu = np.triu_indices(300, 1)
    error = (realised - cov)[iu]
    # Low-pass filtering at 0.1 Hz (TR 2 s) leaves ~40 % of the samples independent: the
    # standard error of r is about (1 - r^2) / sqrt(0.4 * 5000) ~ 0.02.
    assert np.sqrt(np.mean(error**2)) < 0.03
    assert np.abs(error).max() < 0.15
    planted = np.zeros((300, 300), bool)
    planted[np.ix_(nodes, nodes)] = True
    assert (
        abs(
            realised[planted & ~np.eye(300, dtype=bool)].mean()
            - cov[planted][cov[planted] < 1].mean()
        )
        < 0.02
    )
    # Short runs: the realised matrix is far from the population (why the truth keeps both).
    _, short = simulate_node_signals(cov, 150, 2.0, 3)
    assert np.corrcoef(short[iu], cov[iu])[0, 1] < 0.8


def test_node_signals_are_deterministic(atlas):
    cov = node_covariance(atlas)
    a, _ = simulate_node_signals(cov, 50, 2.0, 7)
    b, _ = simulate_node_signals(cov, 50, 2.0, np.random.default_rng(7))
    c, _ = simulate_node_signals(cov, 50, 2.0, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    not_pd = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])
    with pytest.raises(InputError, match="positive definite"):
        simulate_node_signals(not_pd, 10, 2.0, 0)


# ------------------------------------------------------------------------------------ BOLD
VOXEL_MM = 6.0


@pytest.fixture(scope="module")
def phantom():
    """An ellipsoidal head on a 6 mm grid: CSF rim, GM shell, WM core, a CSF ventricle; 12
    nodes in 3 networks placed in the GM shell."""
    shape = (24, 30, 22)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = [-69.0, -102.0, -51.0]
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk * VOXEL_MM + affine[:3, 3]
    centre, radii = np.array([0.0, -15.0, 12.0]), np.array([66.0, 84.0, 60.0])
    rho = np.linalg.norm((xyz - centre) / radii, axis=1).reshape(shape)
    ventricle = (np.linalg.norm((xyz - [0, -10, 15]) / [14, 28, 12], axis=1) <= 1).reshape(shape)
    mask = rho <= 1.0
    csf = (mask & ((rho > 0.9) | ventricle)).astype(np.float32)
    gm = (mask & (rho > 0.7) & (csf == 0)).astype(np.float32)
    wm = (mask & (csf == 0) & (gm == 0)).astype(np.float32)
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    directions = np.stack([np.cos(angles), np.sin(angles), 0.4 * np.ones(12)], axis=1)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    nodes_mm = centre + 0.8 * directions * radii
    nodes = pd.DataFrame(nodes_mm, columns=["x_mm", "y_mm", "z_mm"])
    nodes["network"] = np.repeat(["A", "B", "C"], 4)
    return {
        "mask": mask,
        "affine": affine,
        "tissue": {"gm": gm, "wm": wm, "csf": csf},
        "atlas": nodes,
    }


def _simulate(phantom, seed=0, n_volumes=150, **kwargs):
    cov = node_covariance(phantom["atlas"], within_network_r=0.5)
    signals, _ = simulate_node_signals(cov, n_volumes, 2.0, seed)
    bold, confounds = simulate_bold(
        phantom["mask"],
        phantom["affine"],
        phantom["tissue"],
        phantom["atlas"],
        signals,
        sphere_radius_mm=9.0,
        rng=seed + 1,
        **kwargs,
    )
    return signals, bold, confounds


def test_bold_and_confounds_layout(phantom):
    _, bold, confounds = _simulate(phantom)
    mask = phantom["mask"]
    assert bold.dtype == np.float32 and bold.shape == (*mask.shape, 150)
    assert np.all(bold[~mask] == 0)
    voxels = bold[mask].astype(float)
    assert 500 < voxels.mean() < 1400
    assert list(confounds.columns) == list(CONFOUND_COLUMNS)
    assert len(confounds) == 150
    motion = confounds[MOTION].to_numpy()
    fd = confounds["framewise_displacement"].to_numpy()
    np.testing.assert_allclose(fd, framewise_displacement(motion))
    assert np.isnan(fd[0]) and 0.02 < np.nanmedian(fd) < 0.5
    for name in MOTION:
        column = confounds[f"{name}_derivative1"].to_numpy()
        assert np.isnan(column[0])
        np.testing.assert_allclose(column[1:], np.diff(confounds[name]))
    np.testing.assert_allclose(confounds["global_signal"], voxels.mean(axis=0), rtol=1e-6)
    # csf / white_matter: the mean signal of pure-tissue voxels outside the node spheres.
    outside = (
        node_sphere_labels(mask, phantom["affine"], phantom["atlas"], sphere_radius_mm=9.0)[mask]
        < 0
    )
    for column, tissue in (("csf", "csf"), ("white_matter", "wm")):
        pure = (phantom["tissue"][tissue][mask] >= 0.9) & outside
        np.testing.assert_allclose(confounds[column], voxels[pure].mean(axis=0), rtol=1e-6)


def test_framewise_displacement_hand_computed():
    motion = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.1, -0.2, 0.3, 0.01, 0.0, -0.02],
            [0.1, -0.2, 0.3, 0.01, 0.0, -0.02],
            [0.0, 0.0, 0.0, 0.0, 0.002, 0.0],
        ]
    )
    # |0.1|+|0.2|+|0.3| + 50*(0.01+0.02) = 2.1; no change = 0; 0.6 + 50*(0.01+0.002+0.02) = 2.2
    np.testing.assert_allclose(framewise_displacement(motion), [np.nan, 2.1, 0.0, 2.2])


def test_node_spheres(phantom):
    labels = node_sphere_labels(
        phantom["mask"], phantom["affine"], phantom["atlas"], sphere_radius_mm=9.0
    )
    assert set(np.unique(labels)) == set(range(-1, 12))
    ijk = np.argwhere(labels >= 0)
    xyz = ijk * VOXEL_MM + phantom["affine"][:3, 3]
    centres = phantom["atlas"][["x_mm", "y_mm", "z_mm"]].to_numpy()
    dist = np.linalg.norm(xyz[:, None, :] - centres[None], axis=2)
    assert np.all(dist.min(axis=1) <= 9.0)
    np.testing.assert_array_equal(dist.argmin(axis=1), labels[labels >= 0])
    assert np.all(labels[~phantom["mask"]] == -1)


def _sphere_means(data_tv, labels):
    return np.stack([data_tv[:, labels == k].mean(axis=1) for k in range(12)], axis=1)


def test_confound_regression_recovers_the_node_signals(phantom):
    signals, bold, confounds = _simulate(phantom)
    mask = phantom["mask"]
    labels = node_sphere_labels(mask, phantom["affine"], phantom["atlas"], sphere_radius_mm=9.0)[
        mask
    ]
    raw = bold[mask].T.astype(float)
    design = np.column_stack(
        [np.ones(150), confounds[[*MOTION, "csf", "white_matter"]].to_numpy()]
    )
    hat = design @ np.linalg.pinv(design)
    clean = raw - hat @ raw

    def match(data, truth):
        means = _sphere_means(data, labels)
        return np.array([np.corrcoef(means[:, k], truth[:, k])[0, 1] for k in range(12)])

    before = match(raw, signals)
    after = match(clean, signals)
    # Regression also removes the part of each (smooth) node signal that happens to lie in the
    # span of the 9 regressors; against that residualised truth the match is near the
    # white-noise limit.
    after_resid = match(clean, signals - hat @ signals)
    # Measured (seed 0): before median 0.59 (min 0.44), after 0.89 (min 0.78), against the
    # residualised truth 0.95 (min 0.91).
    assert np.median(before) < 0.7
    assert np.median(after) > 0.85 and after.min() > 0.7
    assert np.median(after_resid) > 0.92
    assert np.all(after > before)
    # Nothing left of the motion: residual correlation with the motion regressors.
    motion = confounds[MOTION].to_numpy()
    resid_means = _sphere_means(clean, labels)
    cross = np.corrcoef(np.column_stack([resid_means, motion]), rowvar=False)[:12, 12:]
    assert np.abs(cross).max() < 1e-6
    # Outside the spheres the cleaned voxels are white noise of the configured SD (10):
    # residual variance = noise_sd^2 (T - k) / T, k = 9 regressors.
    outside = labels < 0
    variance = clean[:, outside].var(axis=0).mean()
    assert variance == pytest.approx(100.0 * (150 - 9) / 150, rel=0.05)
    assert raw[:, outside].var(axis=0).mean() > 3 * variance


def test_without_structured_noise_cleaning_changes_little(phantom):
    signals, bold, _ = _simulate(phantom, motion_scale=0.0, physio_pct=0.0)
    mask = phantom["mask"]
    labels = node_sphere_labels(mask, phantom["affine"], phantom["atlas"], sphere_radius_mm=9.0)[
        mask
    ]
    means = _sphere_means(bold[mask].T.astype(float), labels)
    r = [np.corrcoef(means[:, k], signals[:, k])[0, 1] for k in range(12)]
    assert min(r) > 0.9


def test_bold_is_deterministic_and_validated(phantom):
    _, bold_a, conf_a = _simulate(phantom, seed=4, n_volumes=20)
    _, bold_b, conf_b = _simulate(phantom, seed=4, n_volumes=20)
    _, bold_c, _ = _simulate(phantom, seed=5, n_volumes=20)
    np.testing.assert_array_equal(bold_a, bold_b)
    pd.testing.assert_frame_equal(conf_a, conf_b)
    assert not np.array_equal(bold_a, bold_c)
    signals = np.zeros((20, 12))
    args = (phantom["mask"], phantom["affine"])
    with pytest.raises(InputError, match="lacks 'csf'"):
        simulate_bold(
            *args,
            {"gm": phantom["tissue"]["gm"], "wm": phantom["tissue"]["wm"]},
            phantom["atlas"],
            signals,
        )
    with pytest.raises(InputError, match="node_signals"):
        simulate_bold(*args, phantom["tissue"], phantom["atlas"], signals[:, :5])
    small = {k: v[:-1] for k, v in phantom["tissue"].items()}
    with pytest.raises(InputError, match="resample"):
        simulate_bold(*args, small, phantom["atlas"], signals)


# ------------------------------------------------------------------------------------ truth
def test_functional_truth_is_json_and_consistent(atlas):
    nodes = planted_subnetwork(atlas)
    covs = {
        v: node_covariance(atlas, planted_nodes=nodes, planted_delta_r=d)
        for v, d in (("M0", 0.0), ("M3", 0.1), ("M6", 0.2))
    }
    realised = {
        v: np.stack([simulate_node_signals(c, 60, 2.0, s)[1] for s in (1, 2)])
        for v, c in covs.items()
    }
    truth = functional_truth(atlas, nodes, covs, realised)
    text = json.dumps(truth)
    assert json.loads(text)["n_planted_edges"] == 26 * 25 // 2
    assert truth["planted_nodes"] == nodes.tolist()
    assert all(i < j and i in nodes and j in nodes for i, j in truth["planted_edges"])
    assert sum(node["planted"] for node in truth["nodes"]) == 26
    assert truth["nodes"][0]["network"] == "unassigned"
    population = truth["population"]
    assert population["M6"]["planted_change_r"] == pytest.approx(0.2)
    assert population["M3"]["planted_change_r"] == pytest.approx(0.1)
    assert population["M0"]["other_mean_r"] == pytest.approx(population["M6"]["other_mean_r"])
    assert truth["realised"]["M6"]["n_matrices"] == 2
    assert len(truth["realised"]["M0"]["planted_edge_r"]) == 325
    assert truth["realised"]["M6"]["planted_mean_r"] > truth["realised"]["M0"]["planted_mean_r"]


# --------------------------------------------------------------------------------- clinical
SUBJECTS = [f"sub-0{i}" for i in range(1, 6)]
SESSIONS = ["ses-M0", "ses-M3", "ses-M6"]


def test_clinical_table_ranges_and_trends():
    table = clinical_table(SUBJECTS, SESSIONS, [0, 3, 6], 0)
    assert list(table.columns) == list(CLINICAL_COLUMNS)
    assert len(table) == 15
    assert table["participant_id"].tolist()[:3] == ["sub-01"] * 3
    assert table["session_id"].tolist()[:3] == SESSIONS
    assert table["edss"].between(4.0, 7.0).all()
    assert np.all(table["edss"] * 2 == np.round(table["edss"] * 2))
    assert table["fss"].between(1, 7).all()
    for column, high in (("pasat", 60), ("bvmtr", 36), ("sdmt", 110)):
        assert table[column].dtype.kind == "i"
        assert table[column].between(0, high).all()
    assert (table[["il10_pg_ml", "il6_pg_ml"]] > 0).all().all()

    wide = table.pivot(index="participant_id", columns="session_id", values="edss")
    np.testing.assert_array_equal(wide["ses-M3"] - wide["ses-M0"], -0.5)
    np.testing.assert_array_equal(wide["ses-M6"], wide["ses-M3"])

    medians = table.groupby("session_id").median(numeric_only=True)
    change = medians.loc["ses-M6"] - medians.loc["ses-M0"]
    assert (change[["pasat", "bvmtr", "sdmt", "il10_pg_ml"]] > 0).all()
    assert (change[["edss", "fss", "il6_pg_ml"]] < 0).all()


def test_clinical_exact_trends_without_noise_and_determinism():
    effects = ClinicalEffects(noise_scale=0.0, pasat_per_month=2.0)
    table = clinical_table(SUBJECTS, SESSIONS, [0, 3, 6], 1, effects=effects)
    wide = table.pivot(index="participant_id", columns="session_id", values="il10_pg_ml")
    np.testing.assert_allclose(np.log(wide["ses-M6"] / wide["ses-M0"]), 0.3, atol=0.02)
    pasat = table.pivot(index="participant_id", columns="session_id", values="pasat")
    unclipped = pasat["ses-M6"] < 60
    assert np.all((pasat["ses-M6"] - pasat["ses-M0"])[unclipped] == 12)

    a = clinical_table(SUBJECTS, SESSIONS, [0, 3, 6], 9)
    b = clinical_table(SUBJECTS, SESSIONS, [0, 3, 6], np.random.default_rng(9))
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(clinical_table(SUBJECTS, SESSIONS, [0, 3, 6], 10))
    for spec in CLINICAL_COLUMNS.values():
        assert spec["Description"]
    json.dumps(CLINICAL_COLUMNS)
    with pytest.raises(InputError, match="months"):
        clinical_table(SUBJECTS, SESSIONS, [0, 3], 0)
    with pytest.raises(InputError, match="duplicate"):
        clinical_table(["sub-01", "sub-01"], SESSIONS, [0, 3, 6], 0)
