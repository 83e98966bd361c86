"""Acceptance on datasets laid out by other tools (issue 15): no configuration, planted truth.

The layouts (tests/foreign_layouts.py) follow the BIDS specification and the FreeSurfer,
fMRIPrep and FSL conventions, not our generator's: a FreeSurfer aseg with its ``dseg.tsv``,
fMRIPrep's anatomical outputs (``desc-aseg_dseg`` with the table at the derivatives root, the
3-class ``dseg``, ``label-*_probseg``, MNI-space copies, BOLD in two spaces), FSL FAST
(1 CSF, 2 GM, 3 WM, no table), visit labels that encode no time (months only in
``sessions.tsv``), and oblique scanner placements stored with det > 0 and det < 0.

The pipeline runs with no ``params``: every task must succeed, and tissue volumes, lesion
counts and volumes per location, lesion centroids and NAWM FA/MD must equal the truth within
the tolerances of the synthetic-study tests (volumes to a tenth of a voxel, test_volumetry;
NAWM FA ±0.01 and MD ±1 %, test_dti_session). Cost: volumetry and fMRI on 2 subjects x 3
visits per layout, DTI (registration: 7-20 s a visit) on 6 visits in all.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from foreign_layouts import LAYOUTS, ForeignStudy, build_foreign_study
from msimaging.bids import Study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SUBJECTS = ("sub-01", "sub-02")
#: Visits of sub-01 whose DTI task runs, per layout (index into the layout's sessions).
DTI_VISITS = {
    "freesurfer": (0, 2),
    "fmriprep": (0,),
    "fsl_fast": (0,),
    "oblique_pos": (0,),
    "oblique_neg": (2,),
}
#: Layouts whose WM is cerebral WM only, so the NAWM truth applies (FAST's WM holds the
#: brainstem too: its DTI task must succeed, but the planted NAWM is another region).
NAWM_TRUTH = ("freesurfer", "fmriprep", "oblique_pos", "oblique_neg")


@pytest.fixture(scope="module")
def layouts(tiny_study, tmp_path_factory):
    """Build each layout once (lazily): layout -> ForeignStudy."""
    root = tiny_study[0]
    base = tmp_path_factory.mktemp("foreign")
    cache: dict[str, ForeignStudy] = {}

    def get(layout: str) -> ForeignStudy:
        if layout not in cache:
            cache[layout] = build_foreign_study(root, base / layout, layout, subjects=SUBJECTS)
        return cache[layout]

    return get


def _run_layout(root: Path, base: Path, layout: str):
    """Build one layout (its own copy) and run the participant level on it with no params:
    volumetry and fMRI for every visit, DTI for the visits of DTI_VISITS."""
    from msimaging.pipeline import run_participant

    study = build_foreign_study(root, base / "study", layout, subjects=SUBJECTS)
    out = base / "out"
    first = run_participant(study.root, out, modalities=["volumetry", "fmri"],
                            n_workers=1, progress=False)
    sessions = sorted({v.session_id for v in study.visits},
                      key=lambda s: study.visit("sub-01", s).months)
    second = run_participant(study.root, out, modalities=["dti"],
                             participant_label=["sub-01"],
                             session_label=[sessions[k] for k in DTI_VISITS[layout]],
                             n_workers=1, progress=False)
    return study, out, pd.concat([first.tasks, second.tasks], ignore_index=True)


@pytest.fixture(scope="module")
def runs(tiny_study, tmp_path_factory):
    """The participant level on every layout (two layouts at a time, each in its own process
    and folders): layout -> (ForeignStudy, output folder, tasks table)."""
    from joblib import Parallel, delayed

    base = tmp_path_factory.mktemp("foreign_runs")
    results = Parallel(n_jobs=2, backend="loky")(
        delayed(_run_layout)(tiny_study[0], base / layout, layout) for layout in LAYOUTS
    )
    cache = dict(zip(LAYOUTS, results, strict=True))
    return cache.__getitem__


def _output(out: Path, sub: str, ses: str, pattern: str) -> Path:
    found = sorted((out / sub / ses).rglob(pattern))
    assert len(found) == 1, f"{sub} {ses}: expected one {pattern} in {out}, found {found}"
    return found[0]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"])


# --------------------------------------------------------------------------------------------
# The fixtures themselves plant the truth (numpy only: no msimaging code involved)
# --------------------------------------------------------------------------------------------

_ASEG_REGIONS = {
    "cortical_gm": (3, 42, 1028, 1029, 2028, 2029), "deep_gm": (10, 11, 12, 13, 49, 50, 51, 52),
    "lateral_ventricles": (4, 43), "brainstem": (16,), "cerebellum": (8, 47),
    "nawm": (2, 41), "abnormal_wm": (77,),
}
_THREE_REGIONS = {"fsl_fast": {"csf": (1,), "gm": (2,)}, "fmriprep": {"gm": (1,), "csf": (3,)}}


def _segmentation(study: ForeignStudy, sub: str, ses: str, suffix: str) -> nib.Nifti1Image:
    folder = study.root / "derivatives" / study.segmentation_pipeline / sub / ses / "anat"
    (path,) = folder.glob(f"{sub}_{ses}*{suffix}")
    return nib.load(path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fixture_plants_the_truth(layouts, layout):
    study = layouts(layout)
    for visit in study.visits:
        sub, ses = visit.participant_id, visit.session_id
        if layout == "fsl_fast":
            seg, regions = _segmentation(study, sub, ses, "_dseg.nii.gz"), _THREE_REGIONS[layout]
        elif layout == "fmriprep":
            seg, regions = _segmentation(study, sub, ses, "_desc-aseg_dseg.nii.gz"), _ASEG_REGIONS
        else:
            seg, regions = _segmentation(study, sub, ses, "_dseg.nii.gz"), _ASEG_REGIONS
        data = np.asanyarray(seg.dataobj)
        assert (np.linalg.det(seg.affine[:3, :3]) < 0) == visit.flipped
        for region, values in regions.items():
            volume = np.isin(data, values).sum() * visit.voxel_ml
            assert volume == pytest.approx(visit.volumes_ml[region], abs=1e-6), (ses, region)
        # Lesion mask components sit at the planted centroids moved by the world transform.
        (mask_path,) = (study.root / "derivatives").glob(f"*/{sub}/{ses}/anat/*mask.nii.gz"
                                                         if layout != "fmriprep" else
                                                         f"lesions/{sub}/{ses}/anat/*mask.nii.gz")
        mask_img = nib.load(mask_path)
        ids, n = ndimage.label(np.asanyarray(mask_img.dataobj) > 0, np.ones((3, 3, 3)))
        assert n == visit.lesions["count"]
        com = np.array(ndimage.center_of_mass(ids > 0, ids, range(1, n + 1)))
        world = com @ mask_img.affine[:3, :3].T + mask_img.affine[:3, 3]
        distance = np.linalg.norm(world[:, None] - visit.lesion_centroids_mm[None], axis=2)
        assert distance.min(axis=1).max() < 5e-3


# --------------------------------------------------------------------------------------------
# Dataset discovery (no pipeline)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_months_come_from_sessions_tsv(layouts, layout):
    study = layouts(layout)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "months from the session order" warning
        table = Study(study.root).sessions.set_index(["participant_id", "session_id"])
    for visit in study.visits:
        row = table.loc[(visit.participant_id, visit.session_id)]
        assert row["months"] == visit.months and row["months_source"] == "sessions.tsv"


def test_months_from_acq_time_alone(layouts, tmp_path):
    """sessions.tsv with only the column the BIDS specification defines for visit times,
    ``acq_time`` (ISO 8601 dates), and labels that encode no time: months from the dates."""
    study = layouts("freesurfer")
    root = tmp_path / "acq_time"
    shutil.copytree(study.root, root, ignore=shutil.ignore_patterns("*.nii.gz"))
    for sub in SUBJECTS:
        path = root / sub / f"{sub}_sessions.tsv"
        table = _read(path)
        path.write_text(table[["session_id", "acq_time"]].to_csv(sep="\t", index=False))
        # Images are not needed to read months: empty placeholders keep the copy small.
        for visit in study.visits:
            if visit.participant_id == sub:
                anat = root / sub / visit.session_id / "anat"
                (anat / f"{sub}_{visit.session_id}_T1w.nii.gz").touch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = Study(root).sessions.set_index(["participant_id", "session_id"])
    for visit in study.visits:
        got = table.loc[(visit.participant_id, visit.session_id), "months"]
        assert got == pytest.approx(visit.months, abs=0.1), (visit.session_id, got)


_LESION_SPELLINGS = {
    # BIDS derivatives, masks: label from the common image-derived labels (L = lesion).
    "bids_label_L": "derivatives/lst/sub-01/ses-01/anat/sub-01_ses-01_space-orig_label-L_mask",
    # BIDS derivatives example "desc-tumor_mask".
    "bids_desc": "derivatives/lst/sub-01/ses-01/anat/sub-01_ses-01_desc-lesion_mask",
    "bids_label_lesion": "derivatives/lst/sub-01/ses-01/anat/sub-01_ses-01_label-lesion_mask",
    # fMRIPrep / QSIPrep / ASLPrep documentation (BEP003 draft): raw anat, listed in .bidsignore.
    "fmriprep_docs": "sub-01/ses-01/anat/sub-01_ses-01_T1w_label-lesion_roi",
}


@pytest.mark.parametrize("spelling", sorted(_LESION_SPELLINGS))
def test_lesion_mask_spellings_are_found(tmp_path, spelling):
    """Lesion masks named per the BIDS derivatives masks section, and as the fMRIPrep docs
    ask users to name them (``sub-001_T1w_label-lesion_roi.nii.gz`` in raw ``anat``)."""
    root = tmp_path / "bids"
    (root / "sub-01" / "ses-01" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    nib.save(img, root / "sub-01" / "ses-01" / "anat" / "sub-01_ses-01_T1w.nii.gz")
    target = root / (_LESION_SPELLINGS[spelling] + ".nii.gz")
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, target)
    if spelling == "fmriprep_docs":
        (root / ".bidsignore").write_text("*lesion_roi.nii.gz\n")
    else:
        (root / "derivatives" / "lst" / "dataset_description.json").write_text(json.dumps(
            {"Name": "lesions", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
             "GeneratedBy": [{"Name": "LST-AI"}]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = Study(root).session("sub-01", "ses-01")
    assert session.has("lesion_mask"), f"{target.name} not recognised as a lesion mask"
    assert Path(session.get("lesion_mask")) == target


# --------------------------------------------------------------------------------------------
# The participant level with no configuration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_participant_task_succeeds(runs, layout):
    _, _, tasks = runs(layout)
    failed = tasks[tasks["status"] != "done"]
    assert failed.empty, "\n" + "\n".join(
        f"{r.participant_id} {r.session_id} {r.modality}: {r.error_type}: {r.message}"
        for r in failed.itertuples()
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tissue_volumes_equal_truth(runs, layout):
    study, out, _ = runs(layout)
    errors = []
    for visit in study.visits:
        sub, ses = visit.participant_id, visit.session_id
        got = _read(_output(out, sub, ses, "*desc-tissue_volumes.tsv")).set_index("region")
        for region, expected in visit.volumes_ml.items():
            if region not in got.index:
                errors.append(f"{sub} {ses} {region}: missing (regions: {list(got.index)})")
                continue
            value = float(got.loc[region, "volume_ml"])
            if abs(value - expected) >= 0.1 * visit.voxel_ml:
                errors.append(f"{sub} {ses} {region}: {value:.3f} mL, truth {expected:.3f} mL")
    assert not errors, "\n" + "\n".join(errors)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lesion_counts_and_volumes_per_location_equal_truth(runs, layout):
    study, out, _ = runs(layout)
    errors = []
    for visit in study.visits:
        sub, ses = visit.participant_id, visit.session_id
        load = _read(_output(out, sub, ses, "*desc-load_lesions.tsv")).set_index("location")
        truth = visit.lesions
        # Volumes to a tenth of a voxel: oblique affines are stored in float32, so the voxel
        # volume read back differs from the planted one by ~1e-7 (relative).
        tolerance_mm3 = 100.0 * visit.voxel_ml

        def same(count, volume, expected, tolerance_mm3=tolerance_mm3):
            return count == expected["count"] and (
                abs(volume - expected["volume_mm3"]) < tolerance_mm3)

        total = load.loc["total"]
        if not same(total["count"], total["volume_mm3"], truth):
            errors.append(f"{sub} {ses} total: {total['count']} lesions "
                          f"{total['volume_mm3']:.1f} mm3, truth {truth['count']} "
                          f"{truth['volume_mm3']:.1f} mm3")
        for location, expected in (truth["by_class"] or {}).items():
            if location not in load.index:
                errors.append(f"{sub} {ses} {location}: missing, truth {expected}")
            elif not same(load.loc[location, "count"], load.loc[location, "volume_mm3"],
                          expected):
                errors.append(f"{sub} {ses} {location}: {load.loc[location, 'count']} lesions "
                              f"{load.loc[location, 'volume_mm3']:.1f} mm3, truth "
                              f"{expected['count']} {expected['volume_mm3']:.1f} mm3")
        if truth["by_class"] is None:
            # FAST has no ventricles, no cortex/deep-GM split, no infratentorial label: the
            # location classes cannot be derived, so none may be claimed.
            claimed = load.drop(index="total")
            claimed = claimed[claimed.index != "unknown"]["count"].fillna(0)
            if claimed.sum() > 0:
                errors.append(f"{sub} {ses}: location classes claimed from a 3-class "
                              f"segmentation: {claimed[claimed > 0].to_dict()}")
    assert not errors, "\n" + "\n".join(errors)


@pytest.mark.parametrize("layout", ["freesurfer", "oblique_pos", "oblique_neg"])
def test_lesion_centroids_follow_the_scanner_placement(runs, layout):
    study, out, _ = runs(layout)
    for visit in study.visits:
        sub, ses = visit.participant_id, visit.session_id
        table = _read(_output(out, sub, ses, "*desc-table_lesions.tsv"))
        got = table[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy()
        assert len(got) == len(visit.lesion_centroids_mm), (sub, ses)
        distance = np.linalg.norm(got[:, None] - visit.lesion_centroids_mm[None], axis=2)
        assert distance.min(axis=1).max() < 5e-3, (sub, ses)


@pytest.mark.parametrize("layout", NAWM_TRUTH)
def test_nawm_fa_and_md_equal_truth(runs, layout):
    study, out, tasks = runs(layout)
    dti = tasks[tasks["modality"] == "dti"]
    errors = []
    for row in dti.itertuples():
        visit = study.visit(row.participant_id, row.session_id)
        paths = sorted((out / row.participant_id / row.session_id).rglob("*desc-nawm_stats.tsv"))
        if len(paths) != 1:
            errors.append(f"{row.participant_id} {row.session_id}: no NAWM table "
                          f"({row.status}: {row.message[:300]})")
            continue
        table = _read(paths[0]).set_index(["roi", "metric"])
        for roi in ("NAWM_left", "NAWM_right"):
            fa, md = table.loc[(roi, "fa"), "mean"], table.loc[(roi, "md"), "mean"]
            true_fa, true_md = visit.dwi[roi]["fa"], visit.dwi[roi]["md"]
            if not abs(fa - true_fa) <= 0.01 or not abs(md / true_md - 1) <= 0.01:
                errors.append(f"{row.participant_id} {row.session_id} {roi}: FA {fa:.4f} "
                              f"(truth {true_fa:.4f}), MD {md:.3e} (truth {true_md:.3e})")
    assert not dti.empty and not errors, "\n" + "\n".join(errors)


def test_fmriprep_bold_in_mni_space_is_the_one_used(runs):
    """Two preprocessed BOLDs per visit (MNI and T1w space): the MNI atlas needs the MNI one."""
    _, out, tasks = runs("fmriprep")
    fmri = tasks[tasks["modality"] == "fmri"]
    assert (fmri["status"] == "done").all(), fmri[["session_id", "message"]].to_string()
    for row in fmri.itertuples():
        (prov,) = (out / row.participant_id / row.session_id).glob("*desc-fmri_provenance.json")
        text = prov.read_text()
        assert "space-MNI152NLin2009cAsym_desc-preproc_bold" in text, prov
        assert "space-T1w_desc-preproc_bold" not in text, prov

