"""The segmentation model against label images built by hand from the published conventions.

Every image here follows a tool's documentation, not msimaging's synthetic generator:
FreeSurfer ``aseg`` values and ``FreeSurferColorLUT.txt`` names, fMRIPrep's derivatives
(``desc-aseg_dseg`` described by ``desc-aseg_dseg.tsv`` at the derivative root, the 3-class
``dseg`` with 1 GM, 2 WM, 3 CSF and no table, ``label-WM_probseg``), FSL FAST's ``_seg``
(1 CSF, 2 GM, 3 WM, no table) and SAMSEG (aseg values plus 99 = Lesions). The truth is the
voxel count planted for each label.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msimaging import segmentation as sg
from msimaging import volumetry as vol
from msimaging.errors import InputError

# FreeSurferColorLUT.txt rows used below (value, name), as FreeSurfer 7 prints them.
_LUT = {
    0: "Unknown",
    2: "Left-Cerebral-White-Matter",
    3: "Left-Cerebral-Cortex",
    4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent",
    7: "Left-Cerebellum-White-Matter",
    8: "Left-Cerebellum-Cortex",
    10: "Left-Thalamus",
    11: "Left-Caudate",
    12: "Left-Putamen",
    14: "3rd-Ventricle",
    16: "Brain-Stem",
    17: "Left-Hippocampus",
    21: "Line-1",  # in the LUT, never in an aseg: an unmapped name that is not present
    24: "CSF",
    41: "Right-Cerebral-White-Matter",
    42: "Right-Cerebral-Cortex",
    43: "Right-Lateral-Ventricle",
    47: "Right-Cerebellum-Cortex",
    49: "Right-Thalamus-Proper",  # the FreeSurfer 6 spelling
    77: "WM-hypointensities",
    99: "Lesions",  # SAMSEG
    251: "CC_Posterior",
    253: "CC_Central",
    255: "CC_Anterior",
    258: "Soft_Nonbrain_Tissue",  # SAMSEG, outside the intracranial volume
}


def _slabs(counts: dict[int, int], shape=(20, 20, 20)) -> np.ndarray:
    """A label image holding exactly ``counts[v]`` voxels of each value v (rest 0)."""
    flat = np.zeros(int(np.prod(shape)), np.int16)
    start = 0
    for value, n in counts.items():
        flat[start:start + n] = value
        start += n
    return flat.reshape(shape)


def _save(data, path: Path, zooms=(1.0, 1.0, 1.0), dtype=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data) if dtype is None else np.asarray(data, dtype)
    nib.save(nib.Nifti1Image(arr, np.diag([*zooms, 1.0])), path)
    return path


def _table(path: Path, rows: dict[int, str], extra_columns: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["index\tname" + ("\tabbreviation\tcolor" if extra_columns else "")]
    for value, name in rows.items():
        lines.append(f"{value}\t{name}" + (f"\tn/a\t#{value % 256:02x}0000" if extra_columns
                                            else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def _dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "hand-built", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}))
    return root


def _head(shape=(40, 40, 40), order=("gm", "wm", "csf"), values=(1, 2, 3)):
    """A spherical head: WM core (r < 9), a small central CSF 'ventricle' (r < 2.5), a GM
    shell (9 <= r < 13) and a CSF shell (13 <= r < 16); labelled with ``values`` in
    ``order``. Returns the image data and the planted voxel count per class."""
    grid = np.indices(shape).astype(float) - (np.asarray(shape)[:, None, None, None] - 1) / 2
    r = np.sqrt((grid ** 2).sum(axis=0))
    cls = {
        "wm": (r < 9) & (r >= 2.5),
        "gm": (r >= 9) & (r < 13),
        "csf": ((r >= 13) & (r < 16)) | (r < 2.5),
    }
    data = np.zeros(shape, np.int16)
    for name, value in zip(order, values, strict=True):
        data[cls[name]] = value
    return data, {name: int(mask.sum()) for name, mask in cls.items()}


def _n(table, region) -> int:
    return int(table.set_index("region").loc[region, "n_voxels"])


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("Left-Cerebral-White-Matter", "cerebral_wm"),
    ("right cerebral white matter", "cerebral_wm"),   # SynthSeg's volumes CSV spelling
    ("Left-Cerebral-Cortex", "cortical_gm"),
    ("ctx-lh-superiorfrontal", "cortical_gm"),        # aparc+aseg parcel
    ("wm-rh-insula", "cerebral_wm"),                  # wmparc parcel
    ("Left-UnsegmentedWhiteMatter", "cerebral_wm"),
    ("CC_Mid_Posterior", "cerebral_wm"),
    ("Left-Lateral-Ventricle", "lateral_ventricles"),
    ("Right-Inf-Lat-Vent", "lateral_ventricles"),
    ("left inferior lateral ventricle", "lateral_ventricles"),
    ("3rd-Ventricle", "csf"),
    ("CSF", "csf"),
    ("Left-Thalamus-Proper", "deep_gm"),
    ("Right-Thalamus", "deep_gm"),
    ("Left-Accumbens-area", "deep_gm"),
    ("Left-VentralDC", "other_gm"),
    ("Brain-Stem", "brainstem"),
    ("Left-Cerebellum-Cortex", "cerebellum"),
    ("WM-hypointensities", "lesion"),
    ("Lesions", "lesion"),                            # SAMSEG
    ("GM", "gm"), ("WM", "wm"), ("White Matter", "wm"),   # fMRIPrep / FAST / BIDS
    ("Gray Matter", "gm"), ("BG", "background"),
    ("Unknown", "background"), ("Skull", "background"), ("Soft_Nonbrain_Tissue", "background"),
    ("cerebral WM", "cerebral_wm"), ("cortical GM", "cortical_gm"),  # the synthetic study
    ("lateral ventricles", "lateral_ventricles"), ("WM lesion", "lesion"),
    ("Line-1", None), ("Left-F3orb", None),
])
def test_names_map_to_tissue_classes(name, expected):
    assert sg.tissue_class(name) == expected


# --------------------------------------------------------------------------------------------
# FreeSurfer aseg with a dseg.tsv
# --------------------------------------------------------------------------------------------

_ASEG_COUNTS = {2: 700, 41: 650, 251: 20, 253: 15, 255: 25, 77: 30, 3: 500, 42: 480,
                4: 60, 43: 55, 5: 8, 14: 12, 24: 400, 10: 40, 49: 42, 11: 30, 12: 33,
                17: 25, 16: 90, 8: 110, 47: 100, 7: 35}


def _expected_aseg(c):
    wm = c[2] + c[41] + c[251] + c[253] + c[255]
    gm = c[3] + c[42] + c[10] + c[49] + c[11] + c[12] + c[17]
    csf = c[4] + c[43] + c[5] + c[14] + c[24]
    brain = wm + c[77] + gm + c[16] + c[8] + c[47] + c[7]
    return {
        "wm": wm + c[77], "nawm": wm, "abnormal_wm": c[77], "cortical_gm": c[3] + c[42],
        "deep_gm": c[10] + c[49] + c[11] + c[12], "gm": gm, "csf": csf,
        "lateral_ventricles": c[4] + c[43] + c[5], "brainstem": c[16],
        "cerebellum": c[8] + c[47] + c[7], "brain": brain, "icv": brain + csf,
    }


def test_freesurfer_aseg_with_its_dseg_tsv(tmp_path):
    root = _dataset(tmp_path / "freesurfer")
    seg = _save(_slabs(_ASEG_COUNTS), root / "sub-01" / "ses-baseline" / "anat"
                / "sub-01_ses-baseline_dseg.nii.gz", zooms=(2.0, 2.0, 2.0))
    table_path = _table(seg.with_name("sub-01_ses-baseline_dseg.tsv"), _LUT, extra_columns=True)
    assert sg.find_label_table(seg) == table_path
    convention = sg.resolve_convention(seg)
    assert convention.source == f"dseg.tsv:{table_path}"
    assert convention.unknown == {21: "Line-1"}  # listed but absent: harmless
    table = vol.tissue_volumes(seg)
    for region, n in _expected_aseg(_ASEG_COUNTS).items():
        assert _n(table, region) == n, region
        got_ml = table.set_index("region").loc[region, "volume_ml"]
        assert got_ml == pytest.approx(n * 0.008), region
    masks = sg.load_segmentation(seg)
    assert int(masks.wm.sum()) == _expected_aseg(_ASEG_COUNTS)["nawm"]
    assert int(masks.cortex.sum()) == _ASEG_COUNTS[3] + _ASEG_COUNTS[42]
    assert int(masks.lesion.sum()) == _ASEG_COUNTS[77]
    assert int(masks.lateral_ventricles.sum()) == 123
    assert "Left-Cerebral-White-Matter" not in masks.describe()  # values, not names
    # Without the table the same image is detected as FreeSurfer from its values.
    bare = _save(_slabs(_ASEG_COUNTS), tmp_path / "elsewhere" / "aseg.nii.gz")
    assert sg.find_label_table(bare) is None
    detected = sg.resolve_convention(bare)
    assert detected.name == "freesurfer" and detected.source.startswith("detected")
    assert _n(vol.tissue_volumes(bare), "nawm") == _expected_aseg(_ASEG_COUNTS)["nawm"]


def test_a_present_value_with_an_unmapped_name_is_an_error(tmp_path):
    seg = _save(_slabs({2: 10, 21: 5, 3: 10}), tmp_path / "sub-01_dseg.nii.gz")
    _table(tmp_path / "sub-01_dseg.tsv", _LUT)
    with pytest.raises(InputError, match=r"21 \('Line-1'\)"):
        vol.tissue_volumes(seg)
    with pytest.raises(InputError, match="Line-1"):
        sg.convention_from_table(tmp_path / "sub-01_dseg.tsv", strict=True)


def test_samseg_lesions_and_nonbrain_labels(tmp_path):
    counts = {2: 300, 41: 280, 3: 200, 42: 190, 4: 30, 43: 28, 24: 100, 16: 40, 99: 17,
              77: 6, 258: 120}
    seg = _save(_slabs(counts), tmp_path / "samseg" / "seg.nii.gz")
    # No table: 258 (soft non-brain tissue) is not an aseg value, so nothing is guessed.
    with pytest.raises(InputError, match="258"):
        vol.tissue_volumes(seg)
    _table(tmp_path / "samseg" / "seg.tsv", _LUT)   # same-stem table next to the image
    table = vol.tissue_volumes(seg)
    assert _n(table, "abnormal_wm") == 17 + 6
    assert _n(table, "nawm") == 300 + 280
    assert _n(table, "icv") == sum(v for k, v in counts.items() if k != 258)
    # Without the non-brain label the values alone say SAMSEG (99 = Lesions).
    no_head = {k: v for k, v in counts.items() if k != 258}
    bare = _save(_slabs(no_head), tmp_path / "bare" / "seg.nii.gz")
    convention = sg.resolve_convention(bare)
    assert convention.name == "samseg" and "99" in convention.source
    assert int(sg.load_segmentation(bare).lesion.sum()) == 17 + 6


# --------------------------------------------------------------------------------------------
# fMRIPrep: desc-aseg_dseg (table inherited from the root), dseg (1 GM 2 WM 3 CSF), probseg
# --------------------------------------------------------------------------------------------


def test_fmriprep_layout(tmp_path):
    root = _dataset(tmp_path / "derivatives" / "fmriprep")
    root_table = _table(root / "desc-aseg_dseg.tsv", _LUT)
    anat = root / "sub-01" / "anat"
    aseg = _save(_slabs(_ASEG_COUNTS), anat / "sub-01_desc-aseg_dseg.nii.gz")
    head, planted = _head(order=("gm", "wm", "csf"), values=(1, 2, 3))
    dseg = _save(head, anat / "sub-01_dseg.nii.gz")
    # BIDS inheritance: the root table describes desc-aseg_dseg, not the 3-class dseg.
    assert sg.find_label_table(aseg) == root_table
    assert sg.find_label_table(dseg) is None
    assert _n(vol.tissue_volumes(aseg), "cortical_gm") == _ASEG_COUNTS[3] + _ASEG_COUNTS[42]
    convention = sg.resolve_convention(dseg)
    assert convention.name == "fmriprep" and convention.source.startswith("detected")
    table = vol.tissue_volumes(dseg)
    assert _n(table, "wm") == planted["wm"]
    assert _n(table, "gm") == planted["gm"]
    assert _n(table, "csf") == planted["csf"]
    # label-WM_probseg: WM where the probability is above 0.5.
    rng = np.random.default_rng(0)
    prob = np.where(head == 2, rng.uniform(0.55, 1.0, head.shape),
                    rng.uniform(0.0, 0.45, head.shape)).astype(np.float32)
    probseg = _save(prob, anat / "sub-01_label-WM_probseg.nii.gz")
    wm = sg.white_matter(probseg)
    assert wm.n_voxels == planted["wm"] and "probability map > 0.5" in wm.source
    assert sg.white_matter(probseg, threshold=0.9).n_voxels == int((prob > 0.9).sum())
    from_seg = sg.white_matter(dseg)
    assert from_seg.n_voxels == planted["wm"] and "'fmriprep'" in from_seg.source


# --------------------------------------------------------------------------------------------
# FSL FAST (no table): told from fMRIPrep by anatomy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zooms", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)])
def test_fsl_fast_is_detected_by_anatomy(tmp_path, zooms):
    head, planted = _head(order=("csf", "gm", "wm"), values=(1, 2, 3))
    seg = _save(head, tmp_path / "T1_brain_seg.nii.gz", zooms=zooms)
    convention = sg.resolve_convention(seg)
    assert convention.name == "fsl_fast", convention.source
    table = vol.tissue_volumes(seg)
    assert _n(table, "wm") == planted["wm"]
    assert _n(table, "gm") == planted["gm"]
    assert _n(table, "csf") == planted["csf"]
    # Labels 1-3 in an order neither tool writes (WM outermost): an error, no guess.
    odd, _ = _head(order=("wm", "gm", "csf"), values=(1, 2, 3))
    with pytest.raises(InputError, match=r"fmriprep.*fsl_fast"):
        sg.resolve_convention(_save(odd, tmp_path / "odd.nii.gz"))


_REAL_T1W = (Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "ms_lesions"
             / "patient07_mni" / "T1w.nii.gz")


@pytest.mark.skipif(not _REAL_T1W.is_file(), reason="real MS T1w not available")
def test_three_class_order_is_recovered_on_a_real_brain():
    """A real brain-extracted MS T1w (Lesjak et al. 2017), split into three intensity classes
    (1-D k-means: CSF dark, GM mid, WM bright) and written in FAST's and in fMRIPrep's order:
    the depth rule must name each, whatever the ventricles' size."""
    img = nib.load(_REAL_T1W)
    t1 = np.asanyarray(img.dataobj).astype(np.float32)
    brain = t1 > 0
    values = t1[brain]
    centres = np.percentile(values, [10, 50, 90])
    for _ in range(20):
        nearest = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        centres = np.array([values[nearest == k].mean() for k in range(3)])
    rank = np.argsort(np.argsort(centres))[nearest]  # 0 CSF, 1 GM, 2 WM
    for name, codes in (("fsl_fast", (1, 2, 3)), ("fmriprep", (3, 1, 2))):
        data = np.zeros(t1.shape, np.int16)
        data[brain] = np.asarray(codes)[rank]
        assert sg.detect_convention(data, zooms=img.header.get_zooms()[:3]).name == name


def test_volumetry_session_on_fast_leaves_locations_unknown(tmp_path):
    head, planted = _head(order=("csf", "gm", "wm"), values=(1, 2, 3))
    seg = _save(head, tmp_path / "T1_brain_seg.nii.gz")
    lesion = np.zeros(head.shape, np.uint8)
    lesion[18:21, 18:21, 24:26] = 1   # 18 voxels of WM (r 4.5-6.6)
    lesion[22:24, 12:14, 20:22] = 1   # 8 voxels of WM
    assert (head[lesion > 0] == 3).all()
    lesion_path = _save(lesion, tmp_path / "lesion.nii.gz")
    result = vol.volumetry_session(seg, lesion_path)
    assert result.lesions["location"].tolist() == ["unknown", "unknown"]
    load = result.load.set_index("location")
    assert load.loc["total", "count"] == 2 and load.loc["total", "n_voxels"] == 26
    assert load.drop(index="total")["count"].sum() == 0  # no class claimed
    volumes = result.volumes.set_index("region")["n_voxels"]
    assert volumes["abnormal_wm"] == 26 and volumes["nawm"] == planted["wm"] - 26


# --------------------------------------------------------------------------------------------
# Precedence: labels= > dseg.tsv > detection
# --------------------------------------------------------------------------------------------


def test_table_beats_detection_and_labels_beat_the_table(tmp_path):
    head, planted = _head(order=("gm", "wm", "csf"), values=(1, 2, 3))  # fMRIPrep-like
    seg = _save(head, tmp_path / "sub-01_dseg.nii.gz")
    assert _n(vol.tissue_volumes(seg), "wm") == planted["wm"]  # detected fMRIPrep
    # A table that says otherwise wins over the anatomy...
    _table(tmp_path / "sub-01_dseg.tsv", {0: "Background", 1: "White Matter",
                                          2: "Grey Matter", 3: "CSF"})
    assert sg.resolve_convention(seg).source.startswith("dseg.tsv:")
    assert _n(vol.tissue_volumes(seg), "wm") == planted["gm"]
    # ... and explicit labels (the --config) win over the table.
    given = sg.resolve_convention(seg, "fmriprep")
    assert given.source == "given"
    assert _n(vol.tissue_volumes(seg, labels="fmriprep"), "wm") == planted["wm"]
    custom = vol.tissue_volumes(seg, labels={"wm": [3], "gm": [1, 2]})
    assert _n(custom, "wm") == planted["csf"]


def test_unknown_values_error_lists_values_and_conventions(tmp_path):
    seg = _save(_slabs({1: 10, 5: 10, 9: 10}), tmp_path / "mystery.nii.gz")
    with pytest.raises(InputError) as info:
        vol.tissue_volumes(seg)
    message = str(info.value)
    for needle in ("mystery.nii.gz", "1, 5, 9", "freesurfer", "fmriprep", "fsl_fast",
                   "samseg", "labels="):
        assert needle in message, needle


@pytest.mark.parametrize(("text", "match"), [
    ("value\tname\n1\tWM\n", "'index'"),
    ("index\tlabel\n1\tWM\n", "'name'"),
    ("index\tname\n1.5\tWM\n", "non-negative integers"),
    ("index\tname\n1\tWM\n1\tGM\n", "more than once"),
    ("index\tname\n1\t\n", "empty 'name'"),
])
def test_malformed_label_tables(tmp_path, text, match):
    seg = _save(_slabs({1: 10}), tmp_path / "sub-01_dseg.nii.gz")
    (tmp_path / "sub-01_dseg.tsv").write_text(text)
    with pytest.raises(InputError, match=match) as info:
        vol.tissue_volumes(seg)
    assert "sub-01_dseg.tsv" in str(info.value)


def test_old_imports_still_work():
    from msimaging.volumetry.labels import CONVENTIONS, LabelConvention, label_convention

    assert CONVENTIONS is sg.CONVENTIONS and LabelConvention is sg.LabelConvention
    assert label_convention("aseg").classes == sg.CONVENTIONS["freesurfer"].classes


# --------------------------------------------------------------------------------------------
# DTI: WM from the segmentation, no lesion mask
# --------------------------------------------------------------------------------------------


def test_dti_without_lesion_mask_nawm_is_wm(snr20_study, tmp_path):
    from msimaging.bids import Study
    from msimaging.derivatives import DerivativesWriter
    from msimaging.dti import dti_session

    root, truth = snr20_study
    visit = next(iter(Study(root)))
    writer = DerivativesWriter(tmp_path / "out", input_datasets=[root])
    result = dti_session(visit.get("dwi"), visit.get("t1w"), seg=visit.get("dseg"),
                         participant_id=visit.participant_id, session_id=visit.session_id,
                         writer=writer)
    assert result.nawm_definition.startswith("no lesion mask: NAWM = WM")
    assert "dseg.tsv:" in result.wm_source  # the study's own table named the WM label
    # NAWM is every WM voxel of the DWI grid: nothing removed.
    nawm = next(r for r in result.rois if r.label == "NAWM")
    assert f" {nawm.n_voxels} on the DWI grid" in result.wm_source
    sidecar = json.loads(result.outputs["table"].with_suffix("").with_suffix(".json")
                         .read_text())
    assert sidecar["NAWMDefinition"] == result.nawm_definition
    assert sidecar["LesionMask"] is None
    expected = truth["subjects"][visit.participant_id]["sessions"][visit.session_id]
    expected = expected["dwi"]["regions"]
    table = result.table
    for roi in ("NAWM_left", "NAWM_right"):
        fa = float(table[(table.roi == roi) & (table.metric == "fa")]["mean"].iloc[0])
        assert fa == pytest.approx(expected[roi]["fa"], abs=0.01), roi


def test_dti_names_an_empty_wm_before_any_work(snr20_study):
    from msimaging.bids import Study
    from msimaging.dti import dti_session

    root, _ = snr20_study
    visit = next(iter(Study(root)))
    # A convention whose WM labels are absent from the image: the error names the file,
    # the convention and the voxel count instead of blaming the transform.
    with pytest.raises(InputError, match=r"WM mask from seg .*dseg.nii.gz.*has 0 voxels"):
        dti_session(visit.get("dwi"), visit.get("t1w"), seg=visit.get("dseg"),
                    labels={"cerebral_wm": [99], "csf": [1, 2, 3, 4, 5, 6, 7, 8]})
    with pytest.raises(InputError, match="exactly one"):
        dti_session(visit.get("dwi"), visit.get("t1w"))
