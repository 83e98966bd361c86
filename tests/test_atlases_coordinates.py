"""Offline coordinate atlases read from nilearn's package data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from msimaging.atlases import coordinates
from msimaging.atlases.coordinates import (
    hemisphere_of,
    load_dosenbach_2010,
    load_power_2011,
    load_seitzman_2018,
)
from msimaging.errors import DependencyError, InputError

NILEARN_DATA = Path(importlib.util.find_spec("nilearn").origin).parent / "datasets" / "data"
COLUMNS = ["node", "x_mm", "y_mm", "z_mm"]


def test_seitzman_table_matches_the_packaged_files():
    atlas = load_seitzman_2018()
    assert len(atlas) == 300
    assert atlas["node"].tolist() == list(range(300))
    assert {*COLUMNS, "radius_mm", "network", "structure", "hemisphere"} <= set(atlas)

    rows = (NILEARN_DATA / "seitzman_2018_ROIs_300inVol_MNI_allInfo.txt").read_text().split("\n")
    x, y, z, radius, _, network = rows[1].split()
    assert atlas.loc[0, ["x_mm", "y_mm", "z_mm"]].tolist() == [float(x), float(y), float(z)]
    assert atlas.loc[0, "radius_mm"] == float(radius)
    assert atlas.loc[0, "network"] == network

    networks = set(atlas["network"]) - {"unassigned"}
    assert len(networks) == 13
    assert "DefaultMode" in networks
    assert (atlas["network"] == "DefaultMode").sum() == 67


def test_seitzman_structures_are_decoded_from_the_header():
    lines = (NILEARN_DATA / "seitzman_2018_ROIs_anatomicalLabels.txt").read_text().split()
    names = dict(item.split("=") for item in lines[0].split(","))
    codes = lines[1:]
    atlas = load_seitzman_2018()
    assert atlas["structure"].tolist() == [names[c] for c in codes]
    assert set(atlas["structure"]) <= {
        "cortexMid",
        "cortexL",
        "cortexR",
        "hippocampus",
        "amygdala",
        "basalGanglia",
        "thalamus",
        "cerebellum",
    }
    assert (atlas["structure"] == "cerebellum").sum() == 27


def test_power_and_dosenbach():
    power = load_power_2011()
    assert len(power) == 264
    assert {*COLUMNS, "hemisphere", "radius_mm"} <= set(power)
    assert power.loc[0, ["x_mm", "y_mm", "z_mm"]].tolist() == [-25.0, -98.0, -12.0]
    dosenbach = load_dosenbach_2010()
    assert len(dosenbach) == 160
    assert dosenbach.loc[0, ["x_mm", "y_mm", "z_mm"]].tolist() == [6.0, 64.0, 3.0]
    assert dosenbach.loc[0, "network"] == "default"
    assert dosenbach.loc[0, "region"] == "vmPFC"
    assert set(dosenbach["network"]) >= {"default", "fronto-parietal", "cerebellum"}


def test_hemisphere_rule():
    assert hemisphere_of([-30.0, -2.5, -2.0, 0.0, 1.9, 2.01, 40.0]).tolist() == [
        "L",
        "L",
        "M",
        "M",
        "M",
        "R",
        "R",
    ]
    atlas = load_seitzman_2018()
    x = atlas["x_mm"].to_numpy()
    assert np.all(atlas.loc[x < -2, "hemisphere"] == "L")
    assert np.all(atlas.loc[x > 2, "hemisphere"] == "R")
    assert (atlas["hemisphere"] == "M").sum() == (np.abs(x) <= 2).sum()


def test_results_are_independent_copies():
    first = load_seitzman_2018()
    first.loc[0, "x_mm"] = 999.0
    first["extra"] = 1
    second = load_seitzman_2018()
    assert second.loc[0, "x_mm"] == -56.16
    assert "extra" not in second


def test_missing_files_raise_clear_errors(monkeypatch):
    with pytest.raises(InputError, match="missing from nilearn"):
        coordinates._nilearn_data_file("no_such_atlas.csv")
    monkeypatch.setattr(coordinates.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DependencyError, match="pip install nilearn"):
        coordinates._nilearn_data_file("power_2011.csv")
