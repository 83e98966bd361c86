"""Foreign BIDS layouts built from the synthetic study, for the "any dataset" acceptance tests.

:func:`build_foreign_study` rewrites (a subset of) the synthetic study into a dataset laid out
the way other tools write it, following their published conventions rather than our
generator's, and returns the planted truth translated to that layout:

``freesurfer``
    FreeSurfer ``aseg`` labels (FreeSurferColorLUT values and names: 2/41 cerebral WM, 3/42
    cortex, 4/43 lateral ventricles, 8/47 cerebellum cortex, 10/49 thalamus, 11/50 caudate,
    12/51 putamen, 13/52 pallidum, 16 brain-stem, 24 CSF, 77 WM-hypointensities for lesions),
    hemispheres split at the subject's mid-sagittal plane (MNI x = 0 through the true
    MNI-to-native transform), in ``derivatives/freesurfer`` as
    ``..._space-orig_desc-aseg_dseg.nii.gz`` with a BIDS ``dseg.tsv`` (index, name, color)
    next to it; the lesion mask from a separate tool in ``derivatives/lst`` named with the BIDS
    common-derived label for lesions, ``..._space-orig_label-L_mask.nii.gz``. Sessions
    ``01/02/03``.
``fmriprep``
    fMRIPrep's anatomical outputs (docs/outputs.rst of nipreps/fmriprep; file list of an
    OpenNeuro fMRIPrep derivative): ``_desc-preproc_T1w``, ``_desc-brain_mask``, ``_dseg``
    (BIDS common labels 1 GM, 2 WM, 3 CSF), ``_label-{GM,WM,CSF}_probseg``,
    ``_desc-aseg_dseg`` and ``_desc-aparcaseg_dseg`` (no table next to them: fMRIPrep writes
    ``desc-aseg_dseg.tsv`` / ``desc-aparcaseg_dseg.tsv`` at the dataset root), MNI-space
    ``_space-MNI152NLin2009cAsym_{desc-preproc_T1w,dseg}``; func in both
    ``space-MNI152NLin2009cAsym`` and ``space-T1w`` (``--output-spaces MNI152NLin2009cAsym
    T1w``). Session-wise anatomy (fMRIPrep >= 24 ``--subject-anatomical-reference
    sessionwise``). Lesion mask in ``derivatives/lesions`` as ``..._desc-lesion_mask``
    (the BIDS derivatives example ``desc-tumor_mask``). Sessions ``baseline/followup1/
    followup2``.
``fsl_fast``
    FSL FAST hard segmentation (``_seg``: 1 CSF, 2 GM, 3 WM) as ``..._dseg.nii.gz`` with no
    table at all, in ``derivatives/fsl``; lesion mask ``..._label-lesion_mask``. Sessions
    ``initial/interim/closing`` (alphabetical order is not time order).
``oblique_pos`` / ``oblique_neg``
    The ``freesurfer`` layout with every native image of a visit re-placed in the scanner by
    one rigid world transform per visit (about 17-20 degrees; affines only, data unchanged).
    ``oblique_neg`` also stores every native image with the first voxel axis reversed (data
    flipped along i, affine adjusted so that world positions are unchanged), so the
    determinant of its affines is negative (dcm2niix's usual LAS storage) while the
    generator's and ``oblique_pos``'s are positive. The DWI ``.bvec`` file is copied
    unchanged: in FSL's convention (bvecs in voxel axes, x flipped when the determinant is
    positive) the same file is valid for both storages.

Every layout keeps the raw data (T1w, FLAIR, DWI, BOLD) and fMRIPrep-style MNI BOLD, and writes
months only in ``sub-<label>_sessions.tsv`` (``session_id``, ``acq_time``, ``months``; the
labels encode no time). The truth returned is copied from the synthetic ground truth (voxel
counts of the written images, NAWM tensor metrics), regrouped for the layout's label
convention and moved by the world transform: nothing is computed by msimaging.

Sources: BIDS specification, derivatives "Imaging data types" (masks, discrete segmentations,
common image-derived labels, ``<matches>.tsv`` label tables) and ``sessions.tsv``;
FreeSurferColorLUT.txt; fMRIPrep docs/outputs.rst and workflows.rst (lesion masks).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = ["LAYOUTS", "ForeignStudy", "VisitTruth", "build_foreign_study", "rotation_matrix"]

LAYOUTS = ("freesurfer", "fmriprep", "fsl_fast", "oblique_pos", "oblique_neg")

#: New session labels per layout (months stay 0, 3, 6 of the source study, in sessions.tsv).
SESSION_LABELS = {
    "freesurfer": ("01", "02", "03"),
    "fmriprep": ("baseline", "followup1", "followup2"),
    "fsl_fast": ("initial", "interim", "closing"),
    "oblique_pos": ("01", "02", "03"),
    "oblique_neg": ("01", "02", "03"),
}

# FreeSurferColorLUT.txt (FreeSurfer 7): value -> (name, RGB).
FS_LUT: dict[int, tuple[str, tuple[int, int, int]]] = {
    0: ("Unknown", (0, 0, 0)),
    2: ("Left-Cerebral-White-Matter", (245, 245, 245)),
    3: ("Left-Cerebral-Cortex", (205, 62, 78)),
    4: ("Left-Lateral-Ventricle", (120, 18, 134)),
    5: ("Left-Inf-Lat-Vent", (196, 58, 250)),
    7: ("Left-Cerebellum-White-Matter", (220, 248, 164)),
    8: ("Left-Cerebellum-Cortex", (230, 148, 34)),
    10: ("Left-Thalamus", (0, 118, 14)),
    11: ("Left-Caudate", (122, 186, 220)),
    12: ("Left-Putamen", (236, 13, 176)),
    13: ("Left-Pallidum", (12, 48, 255)),
    14: ("3rd-Ventricle", (204, 182, 142)),
    15: ("4th-Ventricle", (42, 204, 164)),
    16: ("Brain-Stem", (119, 159, 176)),
    17: ("Left-Hippocampus", (220, 216, 20)),
    18: ("Left-Amygdala", (103, 255, 255)),
    24: ("CSF", (60, 60, 60)),
    26: ("Left-Accumbens-area", (255, 165, 0)),
    28: ("Left-VentralDC", (165, 42, 42)),
    30: ("Left-vessel", (160, 32, 240)),
    31: ("Left-choroid-plexus", (0, 200, 200)),
    41: ("Right-Cerebral-White-Matter", (245, 245, 245)),
    42: ("Right-Cerebral-Cortex", (205, 62, 78)),
    43: ("Right-Lateral-Ventricle", (120, 18, 134)),
    44: ("Right-Inf-Lat-Vent", (196, 58, 250)),
    46: ("Right-Cerebellum-White-Matter", (220, 248, 164)),
    47: ("Right-Cerebellum-Cortex", (230, 148, 34)),
    49: ("Right-Thalamus", (0, 118, 14)),
    50: ("Right-Caudate", (122, 186, 220)),
    51: ("Right-Putamen", (236, 13, 176)),
    52: ("Right-Pallidum", (13, 48, 255)),
    53: ("Right-Hippocampus", (220, 216, 20)),
    54: ("Right-Amygdala", (103, 255, 255)),
    58: ("Right-Accumbens-area", (255, 165, 0)),
    60: ("Right-VentralDC", (165, 42, 42)),
    62: ("Right-vessel", (160, 32, 240)),
    63: ("Right-choroid-plexus", (0, 200, 221)),
    72: ("5th-Ventricle", (120, 190, 150)),
    77: ("WM-hypointensities", (200, 70, 255)),
    85: ("Optic-Chiasm", (234, 169, 30)),
    251: ("CC_Posterior", (0, 0, 64)),
    252: ("CC_Mid_Posterior", (0, 0, 112)),
    253: ("CC_Central", (0, 0, 160)),
    254: ("CC_Mid_Anterior", (0, 0, 208)),
    255: ("CC_Anterior", (0, 0, 255)),
    1028: ("ctx-lh-superiorfrontal", (20, 220, 160)),
    1029: ("ctx-lh-superiorparietal", (20, 180, 140)),
    2028: ("ctx-rh-superiorfrontal", (20, 220, 160)),
    2029: ("ctx-rh-superiorparietal", (20, 180, 140)),
}
_ASEG_TABLE_VALUES = tuple(v for v in FS_LUT if v < 1000)
_APARCASEG_TABLE_VALUES = tuple(v for v in FS_LUT if v not in (3, 42))

# Truth tissue names of the synthetic ground truth (``truth["labels"]``) grouped per convention.
_SYNTHETIC_NAMES = ("CSF", "cortical GM", "cerebral WM", "deep GM", "lateral ventricles",
                    "brainstem", "cerebellum", "WM lesion")
# Three-class conventions (FSL FAST, fMRIPrep dseg): which synthetic tissue goes where.
_THREE_CLASS = {
    "CSF": "csf", "lateral ventricles": "csf",
    "cortical GM": "gm", "deep GM": "gm", "cerebellum": "gm",
    "cerebral WM": "wm", "brainstem": "wm", "WM lesion": "wm",
}
_FAST_VALUES = {"csf": 1, "gm": 2, "wm": 3}  # FSL FAST _seg (T1 input)
_BIDS_COMMON_VALUES = {"gm": 1, "wm": 2, "csf": 3}  # BIDS common labels, fMRIPrep _dseg

_MNI = "MNI152NLin2009cAsym"
_BASELINE_DATE = datetime(2021, 3, 15, 9, 30)
_DAYS_PER_MONTH = 365.25 / 12.0

# One rigid scanner placement per visit for the oblique layouts: (axis, degrees, shift mm).
_OBLIQUE = (
    ((1.0, 0.4, 0.2), 18.0, (4.0, -3.0, 6.0)),
    ((0.3, 1.0, -0.5), -17.0, (-5.0, 2.0, 3.0)),
    ((-0.6, 0.2, 1.0), 20.0, (2.0, 6.0, -4.0)),
)


@dataclass(frozen=True)
class VisitTruth:
    """The planted truth of one visit, expressed in the foreign layout.

    Attributes
    ----------
    participant_id, session_id : str
        ``sub-XX`` and the new ``ses-<label>``.
    source_session : str
        The session of the synthetic study it was made from.
    months : float
    voxel_ml : float
        Anatomical voxel volume (tolerance of hard volumes: a tenth of it).
    volumes_ml : dict
        msimaging region name -> true volume in mL, for the regions the layout's
        segmentation can define.
    lesions : dict
        ``count``, ``volume_mm3`` and ``by_class`` (location -> count, volume_mm3); by_class
        is None when the segmentation has no ventricles / cortex / infratentorial labels.
    lesion_centroids_mm : ndarray (n, 3)
        World centroids of the lesions present, after the layout's world transform.
    dwi : dict
        Region -> {fa, md, ad, rd, n_voxels} of the ground truth (NAWM, NAWM_left, ...).
    world : ndarray (4, 4)
        World transform applied to this visit's native images (identity when not oblique).
    flipped : bool
        Whether native images are stored with the first voxel axis reversed.
    """

    participant_id: str
    session_id: str
    source_session: str
    months: float
    voxel_ml: float
    volumes_ml: dict[str, float]
    lesions: dict[str, Any]
    lesion_centroids_mm: np.ndarray
    dwi: dict[str, dict[str, float]]
    world: np.ndarray
    flipped: bool


@dataclass(frozen=True)
class ForeignStudy:
    """A foreign-layout dataset and its truth (one :class:`VisitTruth` per visit)."""

    root: Path
    layout: str
    visits: list[VisitTruth] = field(default_factory=list)
    segmentation_pipeline: str = ""

    def visit(self, participant_id: str, session_id: str) -> VisitTruth:
        for v in self.visits:
            if v.participant_id == participant_id and v.session_id == session_id:
                return v
        raise KeyError((participant_id, session_id))


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def rotation_matrix(axis: Sequence[float], degrees: float) -> np.ndarray:
    """Rotation about ``axis`` by ``degrees`` (Rodrigues), 3x3."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _world_transform(index: int, centre_mm: np.ndarray) -> np.ndarray:
    axis, degrees, shift = _OBLIQUE[index % len(_OBLIQUE)]
    out = np.eye(4)
    out[:3, :3] = rotation_matrix(axis, degrees)
    # Rotate about the head centre, then shift: a plausible oblique scanner placement.
    out[:3, 3] = centre_mm - out[:3, :3] @ centre_mm + np.asarray(shift)
    return out


def _flip_first_axis(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Store the image with voxel axis i reversed; world positions are unchanged."""
    flip = np.eye(4)
    flip[0, 0] = -1.0
    flip[0, 3] = data.shape[0] - 1
    return np.ascontiguousarray(data[::-1]), affine @ flip


@dataclass(frozen=True)
class _Placement:
    world: np.ndarray
    flip: bool

    def image(self, data: np.ndarray, affine: np.ndarray, header=None) -> nib.Nifti1Image:
        if self.flip:
            data, affine = _flip_first_axis(data, affine)
        affine = self.world @ affine
        img = nib.Nifti1Image(data, affine, header=header)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        return img


def _native_mni(affine: np.ndarray, shape: tuple[int, ...], mni_to_native: np.ndarray):
    """MNI coordinates (..., 3) of every voxel of a native grid (true transform)."""
    ijk = np.indices(shape[:3], dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    inverse = np.linalg.inv(mni_to_native)
    mni = inverse[:3, :3] @ world + inverse[:3, 3:4]
    return mni.T.reshape(*shape[:3], 3)


# --------------------------------------------------------------------------------------------
# Label conventions
# --------------------------------------------------------------------------------------------


def _names(labels: np.ndarray, table: dict[str, str]) -> dict[str, np.ndarray]:
    """Boolean mask per synthetic tissue name (from the ground truth's label table)."""
    by_name = {name: int(value) for value, name in table.items()}
    missing = set(_SYNTHETIC_NAMES) - set(by_name)
    if missing:
        raise KeyError(f"ground truth labels lack {sorted(missing)}: {table}")
    return {name: labels == by_name[name] for name in _SYNTHETIC_NAMES}


def _aseg(masks: dict[str, np.ndarray], mni: np.ndarray, *, aparc: bool = False) -> np.ndarray:
    """FreeSurfer aseg (or aparc+aseg) values from the synthetic tissues."""
    x, y = mni[..., 0], mni[..., 1]
    left = x < 0.0  # MNI is RAS: negative x is the left hemisphere
    out = np.zeros(left.shape, np.int16)

    def side(mask, left_value, right_value):
        out[mask & left] = left_value
        out[mask & ~left] = right_value

    side(masks["cerebral WM"], 2, 41)
    if aparc:  # a coarse two-parcel cortex: frontal (y >= 0) and parietal
        frontal = y >= 0.0
        side(masks["cortical GM"] & frontal, 1028, 2028)
        side(masks["cortical GM"] & ~frontal, 1029, 2029)
    else:
        side(masks["cortical GM"], 3, 42)
    side(masks["lateral ventricles"], 4, 43)
    side(masks["cerebellum"], 8, 47)
    # Deep GM split into nuclei by MNI position (thalamus posterior, caudate medial,
    # putamen lateral, pallidum between): the total is what the truth checks.
    deep = masks["deep GM"]
    thalamus = deep & (y < -8.0)
    caudate = deep & ~thalamus & (np.abs(x) < 17.0)
    putamen = deep & ~thalamus & (np.abs(x) >= 22.0)
    pallidum = deep & ~thalamus & ~caudate & ~putamen
    side(thalamus, 10, 49)
    side(caudate, 11, 50)
    side(putamen, 12, 51)
    side(pallidum, 13, 52)
    out[masks["brainstem"]] = 16
    out[masks["CSF"]] = 24
    out[masks["WM lesion"]] = 77
    return out


def _three_class(masks: dict[str, np.ndarray], values: dict[str, int]) -> np.ndarray:
    out = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for name, cls in _THREE_CLASS.items():
        out[masks[name]] = values[cls]
    return out


def _lut_table(values: Sequence[int]) -> pd.DataFrame:
    return pd.DataFrame({
        "index": list(values),
        "name": [FS_LUT[v][0] for v in values],
        "color": ["#{:02x}{:02x}{:02x}".format(*FS_LUT[v][1]) for v in values],
    })


# --------------------------------------------------------------------------------------------
# Truth
# --------------------------------------------------------------------------------------------


def _volumes_truth(tissue_ml: dict[str, float], convention: str) -> dict[str, float]:
    t = tissue_ml
    common = {
        "brain": t["brain"],
        "abnormal_wm": t["WM lesion"],
        "csf": t["CSF"] + t["lateral ventricles"],
        "icv": t["ICV"],
    }
    if convention == "aseg":
        return {
            **common,
            "gm": t["cortical GM"] + t["deep GM"],
            "cortical_gm": t["cortical GM"],
            "deep_gm": t["deep GM"],
            "wm": t["WM"],
            "nawm": t["NAWM"],
            "brainstem": t["brainstem"],
            "cerebellum": t["cerebellum"],
            "lateral_ventricles": t["lateral ventricles"],
        }
    # Three classes: cerebellum counted as GM, brainstem as WM (see _THREE_CLASS).
    return {
        **common,
        "gm": t["cortical GM"] + t["deep GM"] + t["cerebellum"],
        "wm": t["WM"] + t["brainstem"],
        "nawm": t["NAWM"] + t["brainstem"],
    }


def _lesion_centroids(subject: dict, source_session: str, world: np.ndarray) -> np.ndarray:
    points = [
        lesion["sessions"][source_session]["centroid_mm"]
        for lesion in subject["lesions"]
        if lesion["sessions"][source_session]["present"]
    ]
    points = np.asarray(points, float).reshape(-1, 3)
    return points @ world[:3, :3].T + world[:3, 3]


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _tsv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(frame.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n"))


def _save(img: nib.Nifti1Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def _derivative_description(path: Path, name: str, version: str, description: str) -> None:
    _json(path / "dataset_description.json", {
        "Name": description,
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": name, "Version": version}],
        "SourceDatasets": [{"URL": "bids::"}],
    })


def _renamed(name: str, old: str, new: str) -> str:
    return name.replace(f"_ses-{old}_", f"_ses-{new}_")


def build_foreign_study(
    source: str | Path,
    dest: str | Path,
    layout: str,
    *,
    subjects: Sequence[str] | None = None,
) -> ForeignStudy:
    """Rewrite the synthetic study at ``source`` into ``layout`` at ``dest``.

    Parameters
    ----------
    source : path
        Root of a study written by ``make_synthetic_study`` (3 visits per subject).
    dest : path
        New folder (must not exist).
    layout : {"freesurfer", "fmriprep", "fsl_fast", "oblique_pos", "oblique_neg"}
    subjects : sequence of str, optional
        ``sub-XX`` to keep (default: all).

    Returns
    -------
    ForeignStudy
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: choose from {LAYOUTS}")
    source, dest = Path(source), Path(dest)
    if dest.exists():
        raise FileExistsError(dest)
    truth = json.loads((source / "sourcedata" / "ground_truth" / "ground_truth.json").read_text())
    keep = list(subjects) if subjects is not None else sorted(truth["subjects"])
    old_sessions = [f"{s}" for s in truth["generator"]["sessions"]]
    new_sessions = SESSION_LABELS[layout]
    if len(old_sessions) != len(new_sessions):
        raise ValueError(f"the source study must have {len(new_sessions)} visits")
    rename = dict(zip(old_sessions, new_sessions, strict=True))
    oblique = layout.startswith("oblique")
    convention = "three" if layout == "fsl_fast" else "aseg"
    seg_pipeline = {"freesurfer": "freesurfer", "fmriprep": "fmriprep", "fsl_fast": "fsl",
                    "oblique_pos": "freesurfer", "oblique_neg": "freesurfer"}[layout]

    _write_top_level(source, dest, keep, rename)
    visits: list[VisitTruth] = []
    for sub in keep:
        subject = truth["subjects"][sub]
        months = [subject["sessions"][f"ses-{s}"]["months"] for s in old_sessions]
        _write_sessions_tsv(dest / sub / f"{sub}_sessions.tsv", new_sessions, months)
        for index, (old, new) in enumerate(rename.items()):
            session_truth = subject["sessions"][f"ses-{old}"]
            t1_path = source / sub / f"ses-{old}" / "anat" / f"{sub}_ses-{old}_T1w.nii.gz"
            t1 = nib.load(t1_path)
            centre = t1.affine[:3, :3] @ ((np.array(t1.shape[:3]) - 1) / 2) + t1.affine[:3, 3]
            world = _world_transform(index, centre) if oblique else np.eye(4)
            place = _Placement(world, flip=layout == "oblique_neg")
            _write_raw(source, dest, sub, old, new, place)
            _write_func_derivatives(source, dest, sub, old, new, place, layout)
            mni_to_native = np.asarray(subject["mni_to_native"][f"ses-{old}"], float)
            _write_segmentation(source, dest, sub, old, new, place, layout, truth["labels"],
                                mni_to_native)
            visits.append(VisitTruth(
                participant_id=sub,
                session_id=f"ses-{new}",
                source_session=f"ses-{old}",
                months=float(session_truth["months"]),
                voxel_ml=float(abs(np.linalg.det(t1.affine[:3, :3]))) / 1000.0,
                volumes_ml=_volumes_truth(session_truth["tissue_volumes_ml"], convention),
                lesions={
                    "count": session_truth["lesions"]["count"],
                    "volume_mm3": session_truth["lesions"]["volume_mm3"],
                    "by_class": (session_truth["lesions"]["by_class"]
                                 if convention == "aseg" else None),
                },
                lesion_centroids_mm=_lesion_centroids(subject, f"ses-{old}", world),
                dwi=session_truth["dwi"]["regions"],
                world=world,
                flipped=place.flip,
            ))
    _write_derivative_descriptions(dest, layout)
    return ForeignStudy(dest, layout, visits, seg_pipeline)


def _write_top_level(source: Path, dest: Path, keep: list[str], rename: dict[str, str]):
    dest.mkdir(parents=True)
    description = json.loads((source / "dataset_description.json").read_text())
    description["Name"] = "Longitudinal MS study (foreign-layout acceptance fixture)"
    _json(dest / "dataset_description.json", description)
    (dest / "README").write_text("Foreign-layout fixture built by tests/foreign_layouts.py.\n")
    participants = pd.read_csv(source / "participants.tsv", sep="\t", dtype=str)
    _tsv(dest / "participants.tsv", participants[participants.participant_id.isin(keep)])
    shutil.copy(source / "participants.json", dest / "participants.json")
    clinical = pd.read_csv(source / "phenotype" / "clinical.tsv", sep="\t", dtype=str)
    clinical = clinical[clinical.participant_id.isin(keep)].copy()
    clinical["session_id"] = [f"ses-{rename[s.removeprefix('ses-')]}"
                              for s in clinical["session_id"]]
    _tsv(dest / "phenotype" / "clinical.tsv", clinical)
    shutil.copy(source / "phenotype" / "clinical.json", dest / "phenotype" / "clinical.json")


def _write_sessions_tsv(path: Path, labels: Sequence[str], months: Sequence[float]) -> None:
    """BIDS sessions.tsv: session_id, acq_time (ISO 8601) and months since baseline."""
    acq = [(_BASELINE_DATE + timedelta(days=round(m * _DAYS_PER_MONTH))).isoformat()
           for m in months]
    _tsv(path, pd.DataFrame({"session_id": [f"ses-{s}" for s in labels], "acq_time": acq,
                             "months": [float(m) for m in months]}))
    _json(path.with_suffix(".json"), {
        "acq_time": {"Description": "date and time of the first acquisition of the visit"},
        "months": {"Description": "time since the baseline visit", "Units": "month"},
    })


def _copy_image(src: Path, dst: Path, place: _Placement) -> None:
    img = nib.load(src)
    data = np.asanyarray(img.dataobj)
    _save(place.image(data, img.affine, header=img.header.copy()), dst)


def _write_raw(source, dest, sub, old, new, place: _Placement) -> None:
    for datatype in ("anat", "dwi", "func"):
        folder = source / sub / f"ses-{old}" / datatype
        for path in sorted(folder.iterdir()):
            target = dest / sub / f"ses-{new}" / datatype / _renamed(path.name, old, new)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.name.endswith(".nii.gz"):
                _copy_image(path, target, place)
            else:  # .json sidecars, .bval and the FSL-convention .bvec: valid as they are
                shutil.copy(path, target)


def _write_func_derivatives(source, dest, sub, old, new, place: _Placement, layout: str):
    src = source / "derivatives" / "fmriprep" / sub / f"ses-{old}" / "func"
    out = dest / "derivatives" / "fmriprep" / sub / f"ses-{new}" / "func"
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):  # MNI-space outputs: independent of scanner placement
        shutil.copy(path, out / _renamed(path.name, old, new))
    if layout == "fmriprep":
        # --output-spaces MNI152NLin2009cAsym T1w: the BOLD also in the subject's T1w space.
        raw = dest / sub / f"ses-{new}" / "func" / f"{sub}_ses-{new}_task-rest_bold.nii.gz"
        img = nib.load(raw)
        stem = f"{sub}_ses-{new}_task-rest_space-T1w"
        _save(img, out / f"{stem}_desc-preproc_bold.nii.gz")
        tr_s = float(img.header.get_zooms()[3])
        _json(out / f"{stem}_desc-preproc_bold.json",
              {"RepetitionTime": tr_s, "TaskName": "rest", "SkullStripped": False})
        mask = (np.asanyarray(img.dataobj).std(axis=-1) > 0).astype(np.uint8)
        _save(nib.Nifti1Image(mask, img.affine), out / f"{stem}_desc-brain_mask.nii.gz")


def _write_segmentation(source, dest, sub, old, new, place, layout, labels_table, mni_to_native):
    seg_dir = source / "derivatives" / "segmentation" / sub / f"ses-{old}" / "anat"
    dseg = nib.load(seg_dir / f"{sub}_ses-{old}_dseg.nii.gz")
    labels = np.asanyarray(dseg.dataobj)
    affine = dseg.affine
    masks = _names(labels, labels_table)
    mni = _native_mni(affine, labels.shape, mni_to_native)
    lesion = nib.load(seg_dir / f"{sub}_ses-{old}_label-lesion_mask.nii.gz")
    lesion_data = (np.asanyarray(lesion.dataobj) > 0).astype(np.uint8)
    stem = f"{sub}_ses-{new}"

    if layout in ("freesurfer", "oblique_pos", "oblique_neg"):
        anat = dest / "derivatives" / "freesurfer" / sub / f"ses-{new}" / "anat"
        aseg = _aseg(masks, mni)
        _save(place.image(aseg, affine), anat / f"{stem}_space-orig_desc-aseg_dseg.nii.gz")
        present = [v for v in FS_LUT if v in set(np.unique(aseg).tolist())]
        _tsv(anat / f"{stem}_space-orig_desc-aseg_dseg.tsv", _lut_table(present))
        lst = dest / "derivatives" / "lst" / sub / f"ses-{new}" / "anat"
        _save(place.image(lesion_data, affine), lst / f"{stem}_space-orig_label-L_mask.nii.gz")
    elif layout == "fmriprep":
        anat = dest / "derivatives" / "fmriprep" / sub / f"ses-{new}" / "anat"
        t1 = nib.load(source / sub / f"ses-{old}" / "anat" / f"{sub}_ses-{old}_T1w.nii.gz")
        t1_data = np.asanyarray(t1.dataobj).astype(np.float32)
        brain = (labels > 0).astype(np.uint8)
        _save(place.image(t1_data, affine), anat / f"{stem}_desc-preproc_T1w.nii.gz")
        _save(place.image(brain, affine), anat / f"{stem}_desc-brain_mask.nii.gz")
        three = _three_class(masks, _BIDS_COMMON_VALUES)
        _save(place.image(three, affine), anat / f"{stem}_dseg.nii.gz")
        for label in ("GM", "WM", "CSF"):
            prob = nib.load(seg_dir / f"{sub}_ses-{old}_label-{label}_probseg.nii.gz")
            _save(place.image(np.asanyarray(prob.dataobj).astype(np.float32), affine),
                  anat / f"{stem}_label-{label}_probseg.nii.gz")
        _save(place.image(_aseg(masks, mni), affine), anat / f"{stem}_desc-aseg_dseg.nii.gz")
        _save(place.image(_aseg(masks, mni, aparc=True), affine),
              anat / f"{stem}_desc-aparcaseg_dseg.nii.gz")
        _write_mni_anat(anat, stem, three, t1_data, affine, mni_to_native)
        lesions = dest / "derivatives" / "lesions" / sub / f"ses-{new}" / "anat"
        _save(place.image(lesion_data, affine), lesions / f"{stem}_desc-lesion_mask.nii.gz")
    elif layout == "fsl_fast":
        anat = dest / "derivatives" / "fsl" / sub / f"ses-{new}" / "anat"
        _save(place.image(_three_class(masks, _FAST_VALUES), affine), anat / f"{stem}_dseg.nii.gz")
        lesions = dest / "derivatives" / "lesions" / sub / f"ses-{new}" / "anat"
        _save(place.image(lesion_data, affine), lesions / f"{stem}_label-lesion_mask.nii.gz")


def _write_mni_anat(anat, stem, three, t1_data, affine, mni_to_native, voxel_mm=4.0):
    """fMRIPrep's default MNI152NLin2009cAsym anatomical outputs (through the true transform)."""
    shape = (46, 55, 46)
    mni_affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    mni_affine[:3, 3] = (-90.0, -126.0, -72.0)
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    mni = mni_affine[:3, :3] @ ijk + mni_affine[:3, 3:4]
    native = mni_to_native[:3, :3] @ mni + mni_to_native[:3, 3:4]
    inverse = np.linalg.inv(affine)
    src = inverse[:3, :3] @ native + inverse[:3, 3:4]
    dseg = ndimage.map_coordinates(three, src, order=0, mode="constant").reshape(shape)
    t1 = ndimage.map_coordinates(t1_data, src, order=1, mode="constant").reshape(shape)
    space = f"space-{_MNI}"
    for data, name in ((dseg.astype(np.uint8), f"{stem}_{space}_dseg.nii.gz"),
                       (t1.astype(np.float32), f"{stem}_{space}_desc-preproc_T1w.nii.gz")):
        img = nib.Nifti1Image(data, mni_affine)
        img.header.set_qform(mni_affine, code=4)
        img.header.set_sform(mni_affine, code=4)
        _save(img, anat / name)


def _write_derivative_descriptions(dest: Path, layout: str) -> None:
    derivatives = dest / "derivatives"
    _derivative_description(derivatives / "fmriprep", "fMRIPrep", "24.1.1",
                            "fMRIPrep - fMRI PREProcessing workflow")
    if layout == "fmriprep":
        # fMRIPrep writes the FreeSurfer lookup tables once, at its dataset root.
        _tsv(derivatives / "fmriprep" / "desc-aseg_dseg.tsv", _lut_table(_ASEG_TABLE_VALUES))
        _tsv(derivatives / "fmriprep" / "desc-aparcaseg_dseg.tsv",
             _lut_table(_APARCASEG_TABLE_VALUES))
        _derivative_description(derivatives / "lesions", "LST-AI", "1.1.0",
                                "White-matter lesion segmentation")
    elif layout == "fsl_fast":
        _derivative_description(derivatives / "fsl", "FSL FAST", "6.0.7",
                                "FSL FAST tissue segmentation")
        _derivative_description(derivatives / "lesions", "LST-AI", "1.1.0",
                                "White-matter lesion segmentation")
    else:
        _derivative_description(derivatives / "freesurfer", "FreeSurfer", "7.4.1",
                                "FreeSurfer aseg in BIDS")
        _derivative_description(derivatives / "lst", "LST-AI", "1.1.0",
                                "White-matter lesion segmentation")
