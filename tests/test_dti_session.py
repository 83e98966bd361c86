"""One visit's DTI stage on the tiny synthetic study at SNR 20, against the planted truth.

The planted RD change is checked on the default preset (tests/test_dti_acceptance.py): on the
tiny grid (5 mm, 14 volumes, ~1,200 NAWM voxels per side) the standard error of a change
between two visits is ~0.7 points, too close to the ±1 point target to test it there.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msimaging.bids import Study
from msimaging.derivatives import DerivativesWriter


@pytest.fixture(scope="module")
def results(snr20_study, tmp_path_factory):
    from joblib import Parallel, delayed

    root, truth = snr20_study
    study = Study(root)
    writer = DerivativesWriter(tmp_path_factory.mktemp("out") / "msimaging",
                               input_datasets=[root])
    visits = list(study)
    # The six visits are independent: one process each on the machine's cores.
    results = Parallel(n_jobs=2, backend="loky")(
        delayed(_visit)(visit.get("dwi"), visit.get("t1w"), visit.get("dseg"),
                        visit.get("lesion_mask"), visit.participant_id, visit.session_id,
                        writer)
        for visit in visits
    )
    out = {(visit.participant_id, visit.session_id): result
           for visit, result in zip(visits, results, strict=True)}
    return truth, out, writer


def _visit(dwi, t1w, dseg_path, lesion_mask, participant_id, session_id, writer):
    from msimaging.dti import dti_session

    dseg = nib.load(dseg_path)
    wm = nib.Nifti1Image((np.asanyarray(dseg.dataobj) == 3).astype(np.uint8), dseg.affine)
    return dti_session(dwi, t1w, wm, lesion_mask, participant_id=participant_id,
                       session_id=session_id, writer=writer)


def _value(result, roi, metric):
    table = result.table
    return float(table[(table.roi == roi) & (table.metric == metric)]["mean"].iloc[0])


def test_nawm_fa_and_md_match_truth(results):
    truth, out, _ = results
    for (sub, ses), result in out.items():
        expected = truth["subjects"][sub]["sessions"][ses]["dwi"]["regions"]
        for roi in ("NAWM_left", "NAWM_right"):
            fa, md = _value(result, roi, "fa"), _value(result, roi, "md")
            assert fa == pytest.approx(expected[roi]["fa"], abs=0.01), (sub, ses, roi)
            assert md == pytest.approx(expected[roi]["md"], rel=0.01), (sub, ses, roi)


def test_derivatives_written(results):
    _, out, writer = results
    result = out[("sub-01", "ses-M0")]
    assert (writer.root / "dataset_description.json").exists()
    for key in ("fa", "md", "ad", "rd", "brain_mask", "mask_NAWM_left", "table",
                "xfm_t1w_to_dwi", "xfm_mni_to_t1w"):
        assert result.outputs[key].exists(), key
    assert result.outputs["fa"].name == "sub-01_ses-M0_model-tensor_param-fa_dwimap.nii.gz"
    table = pd.read_csv(result.outputs["table"], sep="\t")
    assert set(table.roi) == {"NAWM", "NAWM_left", "NAWM_right"}
    sidecar = json.loads(result.outputs["fa"].with_name(
        result.outputs["fa"].name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["Model"]["Parameters"]["FitMethod"] == "wls"
