"""The tract stage end to end on the tiny synthetic study: it runs, writes derivatives, and a
tract that is not found gives a warning and zero rows instead of an exception."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msimaging.bids import Study
from msimaging.derivatives import DerivativesWriter
from msimaging.errors import MSImagingWarning


@pytest.fixture(scope="module")
def stage(noise_free_study, tmp_path_factory):
    from msimaging.dti import dti_session, tract_session

    root, truth = noise_free_study
    visit = next(iter(Study(root)))
    dseg = nib.load(visit.get("dseg"))
    wm = nib.Nifti1Image((np.asanyarray(dseg.dataobj) == 3).astype(np.uint8), dseg.affine)
    writer = DerivativesWriter(tmp_path_factory.mktemp("tracts") / "out", input_datasets=[root])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dti = dti_session(visit.get("dwi"), visit.get("t1w"), wm, visit.get("lesion_mask"),
                          participant_id=visit.participant_id, session_id=visit.session_id)
        result = tract_session(dti, writer=writer, figures=True)
    return result, caught, truth


def test_every_tract_has_rows_and_counts(stage):
    result, _, _ = stage
    metrics = result.metrics
    assert set(metrics.tract) == {"CST_L", "CST_R", "OR_L", "OR_R", "CC", "CC_genu", "CC_body",
                                  "CC_splenium"}
    for name, tract in result.bundles.items():
        rows = metrics[(metrics.tract == name) & (metrics.part == "whole")]
        assert (rows.n_streamlines == tract.n_streamlines).all()
        if tract.n_streamlines == 0:
            assert (rows.n_voxels == 0).all() and rows["mean"].isna().all()
        else:
            assert (rows.n_voxels > 0).all() and rows["mean"].notna().all()


def test_missing_tracts_warn_by_name(stage):
    result, caught, _ = stage
    empty = [name for name, b in result.bundles.items() if b.n_streamlines == 0]
    messages = [str(w.message) for w in caught if issubclass(w.category, MSImagingWarning)]
    for name in empty:
        assert any(f"tract {name!r}" in m for m in messages), name


def test_tracts_found_have_truth_like_fa(stage):
    result, _, truth = stage
    regions = truth["subjects"]["sub-01"]["sessions"]["ses-M0"]["dwi"]["regions"]
    found = [n for n in ("CST_L", "CST_R", "CC") if result.bundles[n].n_streamlines]
    assert found, "no tract found on the tiny noise-free study"
    for name in found:
        fa = result.metrics[(result.metrics.tract == name) & (result.metrics.metric == "fa")
                            & (result.metrics.part == "whole")]["mean"].iloc[0]
        # Coarse grid (5 mm): partial tracking, but the tract is bundle-like WM.
        assert fa > 0.5 and abs(fa - regions[name]["fa"]) < 0.15, (name, fa)


def test_derivatives_and_figures_written(stage):
    result, _, _ = stage
    out = result.outputs
    for key in ("metrics", "profiles", "figure_overlay", "figure_profiles"):
        assert out[key].exists() and out[key].stat().st_size > 1000, key
    profiles = pd.read_csv(out["profiles"], sep="\t")
    assert {"tract", "node", "metric", "value"} <= set(profiles.columns)
    for name, tract in result.bundles.items():
        assert out[f"mask_{name}"].exists()
        if tract.n_streamlines:
            assert out[f"trk_{name}"].exists()
