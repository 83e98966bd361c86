"""Tract outputs of several tracking models in one derivatives folder (issue 17).

Each model writes its own names (tensor: the names written before other models existed; CSD:
``desc-...CSD``; peaks: ``desc-...Peaks`` or ``model_label``), rerunning one model overwrites
only its files, and the group level gathers the tables of the configured ``tract_model``.

Tiny noise-free study (session fixture), one visit, one dti_session and one CSD fit for the
module (~15 s); the group level runs without its lesion tracks (unrelated registrations).
"""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

from msimaging.derivatives import DerivativesLayout, DerivativesWriter, read_table, sidecar_path
from msimaging.errors import InputError

TENSOR_TRACTS = ["CST_L", "CC"]
CSD_TRACTS = ["CST_L"]  # a different set: the group table shows which model it holds


@pytest.fixture(scope="module")
def visit(noise_free_study, noise_free_dti):
    from msimaging.dti.orientations import fit_csd

    root, truth = noise_free_study
    visit, dti = noise_free_dti
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csd = fit_csd(dti.dwi, tensor=dti.fit)  # fitted once, passed as model=
    regions = truth["subjects"][visit.participant_id]["sessions"][visit.session_id]["dwi"][
        "regions"]
    return dti, csd, regions, root


def _track(dti, writer, model, tracts, **kwargs):
    from msimaging.dti import tract_session

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tract_session(dti, tracts=tracts, model=model, writer=writer, **kwargs)


@pytest.fixture(scope="module")
def both(visit, tmp_path_factory):
    """Tensor, then CSD, into one folder."""
    dti, csd, _, root = visit
    out = tmp_path_factory.mktemp("both") / "out"
    writer = DerivativesWriter(out, input_datasets=[root])
    tensor = _track(dti, writer, "tensor", TENSOR_TRACTS, figures=True)
    snapshot = {k: p.read_bytes() for k, p in tensor.outputs.items()}
    return tensor, _track(dti, writer, csd, CSD_TRACTS, figures=True), snapshot, out


def _fa(table: pd.DataFrame, tract: str) -> float:
    row = table[(table.tract == tract) & (table.metric == "fa") & (table.part == "whole")]
    return float(row["mean"].iloc[0])


def test_tensor_names_are_unchanged(both):
    tensor = both[0]
    names = {k: p.name for k, p in tensor.outputs.items()}
    assert names["metrics"] == "sub-01_ses-M0_model-tensor_desc-tracts_stats.tsv"
    assert names["profiles"] == "sub-01_ses-M0_model-tensor_desc-profiles_stats.tsv"
    assert names["trk_CST_L"] == "sub-01_ses-M0_desc-CSTL_tractography.trk"
    assert names["mask_CST_L"] == "sub-01_ses-M0_desc-tractCSTL_mask.nii.gz"
    assert names["figure_overlay"] == "sub-01_ses-M0_desc-tracts_overlay.png"


def test_csd_after_tensor_keeps_both_sets(both, visit):
    tensor, csd, snapshot, _ = both
    regions = visit[2]
    names = {k: p.name for k, p in csd.outputs.items()}
    assert names["metrics"] == "sub-01_ses-M0_model-tensor_desc-tractsCSD_stats.tsv"
    assert names["profiles"] == "sub-01_ses-M0_model-tensor_desc-profilesCSD_stats.tsv"
    assert names["trk_CST_L"] == "sub-01_ses-M0_desc-CSTLCSD_tractography.trk"
    assert names["mask_CST_L"] == "sub-01_ses-M0_desc-tractCSTLCSD_mask.nii.gz"
    assert names["figure_overlay"] == "sub-01_ses-M0_desc-tractsCSD_overlay.png"
    assert not set(csd.outputs.values()) & set(tensor.outputs.values())
    # Every tensor file is still there, byte for byte.
    for key, path in tensor.outputs.items():
        assert path.read_bytes() == snapshot[key], key
    for stage, model in ((tensor, "tensor"), (csd, "csd")):
        for key in ("metrics", "profiles", "mask_CST_L", "trk_CST_L"):
            side = json.loads(sidecar_path(stage.outputs[key]).read_text())
            assert side["TrackingModel"] == model, (model, key)
            assert side["TrackingModelLabel"] == ("CSD" if model == "csd" else "")
        # Both tables on disk measure the planted CST (metrics on the tensor maps).
        table = read_table(stage.outputs["metrics"])
        assert abs(_fa(table, "CST_L") - regions["CST_L"]["fa"]) < 0.1, model
    assert set(read_table(tensor.outputs["metrics"]).tract) == set(TENSOR_TRACTS)
    assert set(read_table(csd.outputs["metrics"]).tract) == set(CSD_TRACTS)


def test_rerun_overwrites_only_its_own_files(visit, tmp_path):
    dti, csd, _, root = visit
    writer = DerivativesWriter(tmp_path / "out", input_datasets=[root])
    tensor = _track(dti, writer, "tensor", CSD_TRACTS)
    first = _track(dti, writer, csd, CSD_TRACTS)
    assert first.bundles["CST_L"].n_streamlines > 0
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tensor.outputs.values()}
    # Rerun CSD with an FA threshold nothing passes: the CST is not found this time.
    again = _track(dti, writer, csd, CSD_TRACTS, fa_threshold=0.99)
    assert again.bundles["CST_L"].n_streamlines == 0
    assert again.outputs["metrics"] == first.outputs["metrics"]
    rows = read_table(again.outputs["metrics"])
    assert (rows.n_streamlines == 0).all() and (rows.status != "found").all()
    # Its stale streamlines file went with it; the tensor's files were not touched.
    assert not first.outputs["trk_CST_L"].exists()
    assert not sidecar_path(first.outputs["trk_CST_L"]).exists()
    for path, (mtime, data) in before.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data, path.name


def test_peaks_and_own_labels(visit, tmp_path):
    from msimaging.dti.orientations import peaks_from_tensor

    dti, _, _, root = visit
    writer = DerivativesWriter(tmp_path / "out", input_datasets=[root])
    peaks = peaks_from_tensor(dti.fit)
    plain = _track(dti, writer, peaks, ["CC"])
    own = _track(dti, writer, peaks, ["CC"], model_label="MRtrix")
    assert plain.outputs["metrics"].name.endswith("_model-tensor_desc-tractsPeaks_stats.tsv")
    assert own.outputs["metrics"].name.endswith("_model-tensor_desc-tractsMRtrix_stats.tsv")
    assert own.outputs["trk_CC"].name.endswith("_desc-CCMRtrix_tractography.trk")
    assert plain.outputs["trk_CC"].is_file() and own.outputs["trk_CC"].is_file()
    side = json.loads(sidecar_path(own.outputs["metrics"]).read_text())
    assert side["TrackingModel"] == "peaks" and side["TrackingModelLabel"] == "MRtrix"
    for bad in ("", "Tract_Seg", "d\u00e9sc", 3):
        with pytest.raises(InputError, match="letters and digits"):
            _track(dti, writer, "tensor", ["CC"], model_label=bad)


# --- group level ----------------------------------------------------------------------------


@pytest.fixture
def quick_group(monkeypatch):
    """run_group without the lesion tracks (between-visit registrations, unrelated here)."""
    from msimaging.pipeline import group

    monkeypatch.setattr(group, "_lesion_tracks", lambda *args, **kwargs: None)

    def run(root, out, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return group.run_group(root, out, report=False, progress=False, n_jobs=1, **kwargs)

    return run


def _group_tracts(out) -> tuple[pd.DataFrame, dict]:
    path = DerivativesLayout(out).group_table("dti_tracts")
    return read_table(path), json.loads(sidecar_path(path).read_text())


def test_group_gathers_the_configured_model(both, visit, quick_group):
    root, out = visit[3], both[3]
    for model, tracts in (("csd", CSD_TRACTS), ("tensor", TENSOR_TRACTS)):
        quick_group(root, out, tract_model=model)
        table, side = _group_tracts(out)
        assert set(table.tract) == set(tracts), model
        assert side["TrackingModel"] == model
    # Without tract_model: the [dti] tract_model the participant level recorded.
    record = DerivativesLayout(out).provenance("sub-01", "M0", "dti")
    record.write_text(json.dumps({"parameters": {"tract_model": "csd"}}))
    try:
        quick_group(root, out)
        assert set(_group_tracts(out)[0].tract) == set(CSD_TRACTS)
    finally:
        record.unlink()
    quick_group(root, out)  # no record: tensor, the default
    assert set(_group_tracts(out)[0].tract) == set(TENSOR_TRACTS)
    with pytest.raises(InputError, match="tract_model 'peaks' is not one of"):
        quick_group(root, out, tract_model="peaks")


def test_group_warns_when_only_another_model_ran(visit, tmp_path, quick_group):
    from msimaging.pipeline.group import TractModelWarning

    dti, _, _, root = visit
    out = tmp_path / "out"
    _track(dti, DerivativesWriter(out, input_datasets=[root]), "tensor", ["CC"])
    with pytest.warns(TractModelWarning, match=r"no \*_desc-tractsCSD_stats\.tsv but tract "
                      r"tables of tensor \(sub-01/ses-M0\)"):
        result = quick_group(root, out, tract_model="csd")
    assert "dti_tracts" not in result.tables  # never the tensor's rows under the CSD name
    assert any("tract_model = 'csd'" in note for note in result.notes)
