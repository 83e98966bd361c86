"""The synthetic study: its ground truth equals what the written files contain.

Every check re-derives the truth from the files with independent code (scipy labelling, dipy
tensor fits, plain numpy), never by calling the generator's own helpers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from msimaging.bids import Study
from msimaging.errors import InputError

SESSIONS = ("ses-M0", "ses-M3", "ses-M6")
CUBE = np.ones((3, 3, 3), bool)


def _seg(root: Path, sub: str, ses: str, name: str) -> Path:
    return root / "derivatives" / "segmentation" / sub / ses / "anat" / f"{sub}_{ses}_{name}"


def _truth_file(root: Path, sub: str, ses: str, datatype: str, name: str) -> Path:
    base = root / "sourcedata" / "ground_truth" / sub / ses / datatype
    return base / f"{sub}_{ses}_{name}"


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


# --- layout and discovery ------------------------------------------------------------------


def test_study_is_discovered_with_months(tiny_study):
    root, _ = tiny_study
    study = Study(root)
    sessions = study.sessions
    assert len(sessions) == 15
    assert sessions["months"].tolist() == [0.0, 3.0, 6.0] * 5
    assert (sessions["months_source"] == "sessions.tsv").all()
    for kind in ("t1w", "flair", "dwi", "bold", "bold_preproc", "confounds", "bold_mask",
                 "dseg", "probseg", "lesion_mask"):
        assert sessions[kind].all(), kind
    assert study.missing().empty
    assert not study.problems


def test_raw_names_follow_bids(tiny_study):
    from bids_validator import BIDSValidator

    root, _ = tiny_study
    validator = BIDSValidator()
    raw = [
        p for p in root.rglob("*")
        if p.is_file() and "derivatives" not in p.parts and "sourcedata" not in p.parts
    ]
    assert len(raw) > 50
    bad = [p for p in raw if not validator.is_bids("/" + p.relative_to(root).as_posix())]
    assert not bad, bad[:5]


def test_participants_sessions_and_clinical_tables(tiny_study):
    root, truth = tiny_study
    participants = pd.read_csv(root / "participants.tsv", sep="\t")
    assert participants.columns.tolist() == ["participant_id", "age", "sex", "arm"]
    assert participants["participant_id"].tolist() == [f"sub-0{i}" for i in range(1, 6)]
    clinical = pd.read_csv(root / "phenotype" / "clinical.tsv", sep="\t")
    assert len(clinical) == 15
    assert json.loads((root / "phenotype" / "clinical.json").read_text())
    assert set(truth["subjects"]) == set(participants["participant_id"])


# --- anatomy and lesions ------------------------------------------------------------------


def test_tissue_volumes_equal_the_dseg_counts(tiny_study):
    root, truth = tiny_study
    labels = {int(k): v for k, v in truth["labels"].items()}
    for sub, subject in truth["subjects"].items():
        for ses in SESSIONS:
            img = nib.load(_seg(root, sub, ses, "dseg.nii.gz"))
            dseg = np.asanyarray(img.dataobj)
            voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
            volumes = subject["sessions"][ses]["tissue_volumes_ml"]
            for index, name in labels.items():
                if index:
                    assert volumes[name] == pytest.approx(np.sum(dseg == index) * voxel_ml)
            assert volumes["ICV"] == pytest.approx(np.sum(dseg > 0) * voxel_ml)
            assert volumes["NAWM"] == pytest.approx(np.sum(dseg == 3) * voxel_ml)


def _classify(component: np.ndarray, dseg: np.ndarray) -> str:
    """The location rule, written independently: infratentorial > periventricular >
    juxtacortical > deep WM, contact = 26-neighbourhood of the lesion."""
    ring = ndimage.binary_dilation(component, CUBE) & ~component
    if np.isin(dseg[ring], (6, 7)).any():  # lesion voxels themselves are labelled 8
        return "infratentorial"
    if (dseg[ring] == 5).any():
        return "periventricular"
    if (dseg[ring] == 2).any():
        return "juxtacortical"
    return "deep_wm"


def test_lesion_counts_volumes_and_classes_equal_the_masks(tiny_study):
    root, truth = tiny_study
    for sub, subject in truth["subjects"].items():
        lesions = subject["lesions"]
        assert {lesion["location"] for lesion in lesions} == {
            "periventricular", "juxtacortical", "deep_wm", "infratentorial"
        }
        for ses in SESSIONS:
            img = nib.load(_seg(root, sub, ses, "label-lesion_mask.nii.gz"))
            mask = np.asanyarray(img.dataobj).astype(bool)
            dseg = _data(_seg(root, sub, ses, "dseg.nii.gz"))
            voxel_mm3 = abs(np.linalg.det(img.affine[:3, :3]))
            components, n = ndimage.label(mask, CUBE)
            summary = subject["sessions"][ses]["lesions"]
            assert n == summary["count"]
            assert mask.sum() * voxel_mm3 == pytest.approx(summary["volume_mm3"])
            # Match every component to its planted lesion by centroid, then compare.
            present = [le for le in lesions if le["sessions"][ses]["present"]]
            assert len(present) == n
            by_class = {c: [0, 0.0] for c in summary["by_class"]}
            for label in range(1, n + 1):
                comp = components == label
                centroid = img.affine[:3, :3] @ np.argwhere(comp).mean(0) + img.affine[:3, 3]
                match = min(
                    present,
                    key=lambda le: np.linalg.norm(np.subtract(le["sessions"][ses]["centroid_mm"],
                                                              centroid)),
                )
                entry = match["sessions"][ses]
                assert np.allclose(entry["centroid_mm"], centroid, atol=1e-2)
                assert entry["n_voxels"] == comp.sum()
                assert entry["volume_mm3"] == pytest.approx(comp.sum() * voxel_mm3)
                assert _classify(comp, dseg) == match["location"]
                by_class[match["location"]][0] += 1
                by_class[match["location"]][1] += comp.sum() * voxel_mm3
            for cls, (count, volume) in by_class.items():
                assert summary["by_class"][cls]["count"] == count
                assert summary["by_class"][cls]["volume_mm3"] == pytest.approx(volume)


def test_lesion_evolution_across_visits(tiny_study):
    _, truth = tiny_study
    categories = [le["category"] for s in truth["subjects"].values() for le in s["lesions"]]
    assert set(categories) == {"stable", "enlarging", "shrinking", "new", "disappearing"}
    for subject in truth["subjects"].values():
        for lesion in subject["lesions"]:
            n = [lesion["sessions"][ses]["n_voxels"] for ses in SESSIONS]
            if lesion["category"] == "new":
                assert n[0] == 0 and n[-1] > 0
            elif lesion["category"] == "disappearing":
                assert n[0] > 0 and n[-1] == 0
            elif lesion["category"] == "enlarging":
                assert n[-1] >= 1.3 * n[0]
            elif lesion["category"] == "shrinking":
                assert n[-1] <= 0.75 * n[0]
            else:
                assert 0.75 * n[0] < n[-1] < 1.3 * n[0]


def test_lesions_are_hyperintense_on_flair_and_hypointense_on_t1(tiny_study):
    root, truth = tiny_study
    sub = next(iter(truth["subjects"]))
    anat = root / sub / "ses-M0" / "anat"
    mask = _data(_seg(root, sub, "ses-M0", "label-lesion_mask.nii.gz")).astype(bool)
    dseg = _data(_seg(root, sub, "ses-M0", "dseg.nii.gz"))
    flair = _data(anat / f"{sub}_ses-M0_FLAIR.nii.gz")
    t1 = _data(anat / f"{sub}_ses-M0_T1w.nii.gz")
    nawm = dseg == 3
    assert flair[mask].mean() > 1.5 * flair[nawm].mean()
    assert t1[mask].mean() < 0.8 * t1[nawm].mean()


# --- diffusion -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise_free_fits(noise_free_study):
    """dipy WLS fits of the noise-free DWI, with the truth regions on the DWI grid."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    root, truth = noise_free_study
    sub = "sub-01"
    out = {}
    for ses in SESSIONS:
        base = root / sub / ses / "dwi" / f"{sub}_{ses}_dwi"
        data = _data(Path(f"{base}.nii.gz"))
        gtab = gradient_table(np.loadtxt(f"{base}.bval"), bvecs=np.loadtxt(f"{base}.bvec"))
        tissue_img = nib.load(_truth_file(root, sub, ses, "dwi", "desc-tissue_dseg.nii.gz"))
        tissue = np.asanyarray(tissue_img.dataobj)
        lesion = _data(_truth_file(root, sub, ses, "dwi", "label-lesion_mask.nii.gz")) > 0
        bundles = _data(_truth_file(root, sub, ses, "dwi", "desc-bundles_dseg.nii.gz"))
        fit = TensorModel(gtab, fit_method="WLS").fit(data, mask=tissue > 0)
        # Hemispheres from the MNI x of each voxel centre, through the planted placement.
        inv = np.linalg.inv(np.array(truth["subjects"][sub]["mni_to_native"][ses]))
        ijk = np.indices(tissue.shape).reshape(3, -1).T
        native = ijk @ tissue_img.affine[:3, :3].T + tissue_img.affine[:3, 3]
        x_mni = (native @ inv[:3, :3].T + inv[:3, 3])[:, 0].reshape(tissue.shape)
        nawm = (tissue == 3) & ~lesion
        regions = {
            "NAWM": nawm,
            "NAWM_left": nawm & (x_mni < 0),
            "NAWM_right": nawm & (x_mni >= 0),
            "CC": bundles == 1,
            "CST_L": bundles == 2,
            "OR_R": bundles == 5,
        }
        maps = {"fa": fit.fa, "md": fit.md, "ad": fit.ad, "rd": fit.rd}
        out[f"{ses}_maps"] = {"rd": fit.rd, "ad": fit.ad, **regions}
        out[ses] = {
            name: {metric: float(values[region].mean()) for metric, values in maps.items()}
            | {"n_voxels": int(region.sum())}
            for name, region in regions.items()
        }
    return truth, out


def test_noise_free_dwi_reproduces_the_truth_tensors(noise_free_fits):
    truth, fitted = noise_free_fits
    for ses in SESSIONS:
        regions = fitted[ses]
        expected = truth["subjects"]["sub-01"]["sessions"][ses]["dwi"]["regions"]
        for name, values in regions.items():
            assert values["n_voxels"] == expected[name]["n_voxels"] > 0, name
            for metric in ("fa", "md", "ad", "rd"):
                assert values[metric] == pytest.approx(expected[name][metric], rel=1e-6), (
                    ses, name, metric
                )


def test_planted_rd_change_in_left_nawm_only(noise_free_fits):
    _, fitted = noise_free_fits
    base = fitted["ses-M0_maps"]
    for ses, expected in (("ses-M3", 0.96), ("ses-M6", 0.92)):
        later = fitted[f"{ses}_maps"]
        # Same head position at every visit: compare voxel by voxel where the tissue is
        # normal-appearing at both visits (lesions come and go).
        left = base["NAWM_left"] & later["NAWM_left"]
        right = base["NAWM_right"] & later["NAWM_right"]
        assert left.sum() > 100 and right.sum() > 100
        np.testing.assert_allclose(later["rd"][left] / base["rd"][left], expected, rtol=1e-6)
        np.testing.assert_allclose(later["rd"][right] / base["rd"][right], 1.0, rtol=1e-6)
        np.testing.assert_allclose(later["ad"][left] / base["ad"][left], 1.0, rtol=1e-6)


def test_noisy_dwi_has_the_configured_snr(tiny_study):
    root, truth = tiny_study
    sub = "sub-01"
    base = root / sub / "ses-M0" / "dwi" / f"{sub}_ses-M0_dwi"
    data = _data(Path(f"{base}.nii.gz"))
    bvals = np.loadtxt(f"{base}.bval")
    tissue = _data(_truth_file(root, sub, "ses-M0", "dwi", "desc-tissue_dseg.nii.gz"))
    lesion = _data(_truth_file(root, sub, "ses-M0", "dwi", "label-lesion_mask.nii.gz")) > 0
    b0 = data[..., bvals == 0]
    wm = (tissue == 3) & ~lesion
    # Noise SD across the b0 repeats in NAWM, where S0 = 1000: SNR = 1000 / sigma.
    sigma = np.sqrt(b0[wm].var(axis=1, ddof=1).mean())  # unbiased for sigma², unlike SD
    snr = truth["generator"]["effects"]["snr"]
    assert 1000 / sigma == pytest.approx(snr, rel=0.1)


# --- fMRI ----------------------------------------------------------------------------------


def test_planted_connectivity_change_in_population_matrices(tiny_study):
    root, truth = tiny_study
    func = truth["func"]
    folder = root / "sourcedata" / "ground_truth"
    pop = {ses: np.loadtxt(folder / name) for ses, name in func["population_relmat"].items()}
    planted = np.array(func["planted_nodes"])
    n = pop["ses-M0"].shape[0]
    is_planted = np.zeros((n, n), bool)
    is_planted[np.ix_(planted, planted)] = True
    np.fill_diagonal(is_planted, False)
    delta = truth["generator"]["effects"]["connectivity_delta_r"]
    assert len(func["planted_edges"]) == len(planted) * (len(planted) - 1) // 2
    for ses, fraction in (("ses-M3", 0.5), ("ses-M6", 1.0)):
        diff = pop[ses] - pop["ses-M0"]
        np.testing.assert_allclose(diff[is_planted], delta * fraction, atol=1e-6)
        np.testing.assert_allclose(diff[~is_planted], 0.0, atol=1e-6)


def _node_connectivity(root: Path, sub: str, ses: str, coords: np.ndarray) -> np.ndarray:
    """Correlation of confound-cleaned BOLD at the in-mask voxel nearest to each node."""
    prep = root / "derivatives" / "fmriprep" / sub / ses / "func"
    stem = f"{sub}_{ses}_task-rest"
    img = nib.load(prep / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    bold = np.asanyarray(img.dataobj)
    mask = _data(prep / f"{stem}_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz") > 0
    confounds = pd.read_csv(prep / f"{stem}_desc-confounds_timeseries.tsv", sep="\t")
    ijk = np.argwhere(mask)
    xyz = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    nearest = np.linalg.norm(xyz[:, None, :] - coords[None], axis=2).argmin(0)
    series = bold[tuple(ijk[nearest].T)].T.astype(float)
    columns = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf", "white_matter"]
    design = np.column_stack([np.ones(len(confounds)), confounds[columns].to_numpy()])
    cleaned = series - design @ np.linalg.lstsq(design, series, rcond=None)[0]
    return np.corrcoef(cleaned.T)


def test_planted_subnetwork_is_recoverable_from_the_written_bold(tiny_study):
    root, truth = tiny_study
    nodes = pd.DataFrame(truth["func"]["nodes"])
    coords = nodes[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    planted = np.array(truth["func"]["planted_nodes"])
    is_planted = np.zeros((len(coords),) * 2, bool)
    is_planted[np.ix_(planted, planted)] = True
    other = ~is_planted & ~np.eye(len(coords), dtype=bool)
    np.fill_diagonal(is_planted, False)
    for sub in truth["subjects"]:
        before = _node_connectivity(root, sub, "ses-M0", coords)
        after = _node_connectivity(root, sub, "ses-M6", coords)
        # Population change 0.3; sampling noise and voxel noise attenuate it on the tiny grid.
        assert after[is_planted].mean() - before[is_planted].mean() > 0.05, sub
        assert abs(after[other].mean() - before[other].mean()) < 0.03, sub


def test_fmriprep_outputs_are_consistent(tiny_study):
    root, _ = tiny_study
    prep = root / "derivatives" / "fmriprep" / "sub-01" / "ses-M0" / "func"
    stem = "sub-01_ses-M0_task-rest"
    bold = nib.load(prep / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    mask = _data(prep / f"{stem}_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz")
    confounds = pd.read_csv(prep / f"{stem}_desc-confounds_timeseries.tsv", sep="\t")
    assert bold.shape[:3] == mask.shape and bold.shape[3] == len(confounds)
    for column in ("trans_x", "rot_z", "framewise_displacement", "csf", "white_matter"):
        assert column in confounds
    raw = nib.load(root / "sub-01" / "ses-M0" / "func" / f"{stem}_bold.nii.gz")
    assert raw.shape[3] == bold.shape[3]
    sidecar = json.loads((root / "sub-01" / "ses-M0" / "func" / f"{stem}_bold.json").read_text())
    assert sidecar["RepetitionTime"] == 2.0
    # The NIfTI time step agrees with the sidecar (pixdim[4] in seconds) for both series.
    for image in (raw, bold):
        assert image.header.get_xyzt_units()[1] == "sec"
        assert image.header.get_zooms()[3] == pytest.approx(sidecar["RepetitionTime"])


# --- determinism and parameters -------------------------------------------------------------


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_files_other_seed_other_subjects(tmp_path):
    from msimaging.datasets import make_synthetic_study

    kwargs = {"n_subjects": 1, "sessions": ("M0", "M6"), "preset": "tiny"}
    a = _digest(make_synthetic_study(tmp_path / "a", seed=3, **kwargs))
    b = _digest(make_synthetic_study(tmp_path / "b", seed=3, **kwargs))
    c = _digest(make_synthetic_study(tmp_path / "c", seed=4, **kwargs))
    assert a == b
    assert a.keys() == c.keys()
    t1 = "sub-01/ses-M0/anat/sub-01_ses-M0_T1w.nii.gz"
    assert a[t1] != c[t1]


def test_bad_arguments_are_clear_errors(tmp_path):
    from msimaging.datasets import make_synthetic_study

    with pytest.raises(InputError, match=r"unknown effect parameter.*'snrr'"):
        make_synthetic_study(tmp_path / "x", preset="tiny", snrr=3)
    with pytest.raises(InputError, match="preset 'huge' is unknown"):
        make_synthetic_study(tmp_path / "x", preset="huge")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        make_synthetic_study(tmp_path / "full", preset="tiny")
    assert (tmp_path / "full" / "keep.txt").read_text() == "user data"


def test_head_motion_and_second_shell_options(tmp_path):
    from msimaging.datasets import make_synthetic_study

    root = make_synthetic_study(
        tmp_path / "moving", n_subjects=1, sessions=("M0", "M6"), preset="tiny",
        head_motion=True, second_shell=True,
    )
    truth = json.loads((root / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    placement = truth["subjects"]["sub-01"]["mni_to_native"]
    moved = np.array(placement["ses-M6"]) - np.array(placement["ses-M0"])
    assert np.abs(moved).max() > 0.01  # the head moved between visits
    bvals = np.loadtxt(root / "sub-01" / "ses-M0" / "dwi" / "sub-01_ses-M0_dwi.bval")
    assert set(np.unique(bvals)) == {0.0, 1000.0, 2000.0}
    # Lesion truth still equals the masks when the head moves.
    for ses in ("ses-M0", "ses-M6"):
        mask = _data(_seg(root, "sub-01", ses, "label-lesion_mask.nii.gz")) > 0
        _, n = ndimage.label(mask, CUBE)
        assert n == truth["subjects"]["sub-01"]["sessions"][ses]["lesions"]["count"]


def test_true_profiles_have_the_planted_along_tract_shape(noise_free_study):
    """FA dips where RD peaks (35% along each bundle from its start): within the waypoint span
    the dip lies in the first half, 0.1 below the ends of the bundle (FA 0.8)."""
    _, truth = noise_free_study
    profiles = truth["subjects"]["sub-01"]["sessions"]["ses-M0"]["dwi"]["profiles_fa"]
    assert set(profiles) == {"CC", "CST_L", "CST_R", "OR_L", "OR_R"}
    for name, values in profiles.items():
        values = np.asarray(values)
        assert values.size == 100, name
        assert int(np.argmin(values)) < 50, name
        assert values.max() - values.min() > 0.05, name
        assert values.min() > 0.6 and values.max() < 0.81, name
