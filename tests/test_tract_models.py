"""tract_session with another orientation model: CSD fitted to the visit's DWI, a peaks image
(MRtrix sh2peaks convention) or an already computed model; metrics always on the tensor maps;
the model named in the stage and the sidecars; the pipeline's ``[dti] tract_model`` key.

Tiny noise-free study (session fixture), one visit, one dti_session for the module."""

from __future__ import annotations

import dataclasses
import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from msimaging.derivatives import DerivativesWriter, sidecar_path
from msimaging.errors import InputError

TRACTS = ["CST_L", "OR_L"]
CODES = {"CC": 1, "CST_L": 2, "CST_R": 3, "OR_L": 4, "OR_R": 5}  # the planted bundle labels


@pytest.fixture(scope="module")
def visit(noise_free_study, noise_free_dti):
    root, truth = noise_free_study
    visit, dti = noise_free_dti
    sub, ses = visit.participant_id, visit.session_id
    planted = np.asanyarray(nib.load(
        root / "sourcedata/ground_truth" / sub / ses / "dwi"
        / f"{sub}_{ses}_desc-bundles_dseg.nii.gz").dataobj)
    regions = truth["subjects"][sub]["sessions"][ses]["dwi"]["regions"]
    return dti, planted, regions, root


@pytest.fixture(scope="module")
def csd_stage(visit, tmp_path_factory):
    from msimaging.dti import tract_session

    dti, _, _, root = visit
    writer = DerivativesWriter(tmp_path_factory.mktemp("csd") / "out", input_datasets=[root])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tract_session(dti, tracts=TRACTS, model="csd", writer=writer)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _whole_fa(stage, name: str) -> float:
    m = stage.metrics
    return float(m[(m.tract == name) & (m.metric == "fa") & (m.part == "whole")]["mean"].iloc[0])


def test_csd_tracks_the_planted_bundles(visit, csd_stage):
    _, planted, regions, _ = visit
    assert csd_stage.model == "csd"
    # 30 directions -> sh_order 6 (default_sh_order); response from the tensor's FA.
    assert csd_stage.model_details["SHOrder"] == csd_stage.orientations.sh_order >= 4
    assert csd_stage.model_details["ResponseVoxels"] >= 50
    assert csd_stage.seconds["orientation_model"] > 0
    for name in TRACTS:
        tract = csd_stage.bundles[name]
        assert tract.n_streamlines > 0, name
        mask = np.asanyarray(tract.mask().dataobj) > 0
        # Tiny 5 mm grid: the tensor reaches 0.84 (CST) / 0.79 (OR) here.
        assert _dice(mask, planted == CODES[name]) >= 0.6, name
        # Metrics on the tensor maps: the planted tract FA, as for tensor tracking.
        assert abs(_whole_fa(csd_stage, name) - regions[name]["fa"]) < 0.1, name


def test_metrics_use_the_tensor_maps_not_the_models_fa(visit):
    """A Peaks model whose FA is a constant 0.95 tracks like the tensor (same directions)
    but its FA must not leak into the metrics: they stay at the planted FA."""
    from msimaging.dti import tract_session
    from msimaging.dti.orientations import peaks_from_tensor

    dti, _, regions, _ = visit
    peaks = peaks_from_tensor(dti.fit)
    brain = np.asanyarray(dti.fit.mask.dataobj) > 0
    fake_fa = nib.Nifti1Image(np.where(brain, 0.95, 0).astype(np.float32), dti.fit.fa.affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stage = tract_session(dti, tracts=["CST_L"], model=dataclasses.replace(peaks, fa=fake_fa))
    assert stage.model == "peaks"
    assert stage.bundles["CST_L"].n_streamlines > 0
    fa = _whole_fa(stage, "CST_L")
    assert abs(fa - regions["CST_L"]["fa"]) < 0.1 and fa < 0.9


def test_peaks_image_reproduces_the_csd_tracts(visit, csd_stage, tmp_path):
    """Issue 17: tracking from a peaks image written from a model = tracking from the model
    (Dice >= 0.9), through the MRtrix file convention (world frame on disk)."""
    from msimaging.dti import tract_session
    from msimaging.dti.orientations import save_peaks

    dti = visit[0]
    path = save_peaks(csd_stage.orientations.peaks, tmp_path / "peaks.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stage = tract_session(dti, tracts=TRACTS, model=path)
    assert stage.model == "peaks" and stage.model_details["PeaksFile"] == str(path)
    for name in TRACTS:
        a = np.asanyarray(stage.bundles[name].mask().dataobj) > 0
        b = np.asanyarray(csd_stage.bundles[name].mask().dataobj) > 0
        assert _dice(a, b) >= 0.9, name


def test_sidecars_name_the_tracking_model(csd_stage):
    out = csd_stage.outputs
    for key in ("metrics", "profiles", "mask_CST_L", "trk_CST_L"):
        side = json.loads(sidecar_path(out[key]).read_text())
        assert side["TrackingModel"] == "csd", key
        assert side["SHOrder"] == csd_stage.orientations.sh_order, key
        assert side["ResponseVoxels"] == csd_stage.orientations.n_response_voxels, key


def test_bad_models_are_input_errors(visit, tmp_path):
    from msimaging.dti import tract_session

    dti = visit[0]
    with pytest.raises(InputError, match=r"missing_peaks\.nii\.gz.*'tensor', 'csd'"):
        tract_session(dti, tracts=["CC"], model=str(tmp_path / "missing_peaks.nii.gz"))
    with pytest.raises(InputError, match="needs the visit's DWI"):
        tract_session(dataclasses.replace(dti, dwi=None), tracts=["CC"], model="csd")
    with pytest.raises(InputError, match="only applies to model='csd'"):
        tract_session(dti, tracts=["CC"], csd={"sh_order": 4})
    with pytest.raises(InputError, match="tensor= or mask="):
        tract_session(dti, tracts=["CC"], model="csd", csd={"mask": dti.fit.mask})
    # A peaks image on another grid (one voxel fewer along x).
    shape = dti.fit.fa.shape
    other = nib.Nifti1Image(np.zeros((shape[0] - 1, *shape[1:], 3), np.float32),
                            dti.fit.fa.affine)
    nib.save(other, tmp_path / "other_grid.nii.gz")
    with pytest.raises(InputError, match=r"grid|shape"):
        tract_session(dti, tracts=["CC"], model=tmp_path / "other_grid.nii.gz")


def test_pipeline_tract_model_key():
    from msimaging.pipeline.options import ConfigError, check_config
    from msimaging.pipeline.tasks import DEFAULTS

    assert DEFAULTS["dti"]["tract_model"] == "tensor"
    assert check_config({"dti": {"tract_model": "CSD"}})["dti"]["tract_model"] == "csd"
    with pytest.raises(ConfigError, match=r"tract_model.*'tensor', 'csd'"):
        check_config({"dti": {"tract_model": "peaks.nii.gz"}})


def test_pipeline_passes_tract_model_to_tract_session(monkeypatch):
    """The [dti] task hands its tract_model to tract_session (library calls replaced)."""
    import types

    import msimaging.dti as dti_module
    from msimaging.pipeline import tasks

    seen = {}
    fake_dti = types.SimpleNamespace(outputs={})
    monkeypatch.setattr(dti_module, "dti_session", lambda *a, **k: fake_dti)

    def fake_tract_session(dti, **kwargs):
        seen.update(kwargs)
        return types.SimpleNamespace(outputs={})

    monkeypatch.setattr(dti_module, "tract_session", fake_tract_session)
    session = types.SimpleNamespace(participant_id="sub-01", session_id="ses-M0")
    # mni_reference "visit": dti_session (faked here) registers to MNI itself, so the task
    # needs no writer for the subject's saved MNI transform.
    params = {**tasks.DEFAULTS["dti"], "tract_model": "csd", "mni_reference": "visit"}
    tasks._run_dti(session, {"dwi": "d", "t1w": "t", "dseg": "s"}, None, params, True)
    assert seen["model"] == "csd"
