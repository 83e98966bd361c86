"""``make_synthetic_study``: a longitudinal MS study as BIDS, with planted effects and truth.

Layout written under ``root``::

    dataset_description.json  participants.tsv(+.json)  README
    phenotype/clinical.tsv(+.json)
    sub-XX/sub-XX_sessions.tsv                                 session_id, months
    sub-XX/ses-YY/anat/sub-XX_ses-YY_{T1w,FLAIR}.nii.gz
    sub-XX/ses-YY/dwi/sub-XX_ses-YY_dwi.{nii.gz,bval,bvec,json}
    sub-XX/ses-YY/func/sub-XX_ses-YY_task-rest_bold.{nii.gz,json}
    derivatives/fmriprep/sub-XX/ses-YY/func/
        ..._task-rest_space-MNI152NLin2009cAsym_desc-{preproc_bold.nii.gz,brain_mask.nii.gz}
        ..._task-rest_desc-confounds_timeseries.{tsv,json}
    derivatives/segmentation/sub-XX/ses-YY/anat/
        ..._dseg.{nii.gz,tsv}  ..._label-{GM,WM,CSF}_probseg.nii.gz  ..._label-lesion_mask.nii.gz
    sourcedata/ground_truth/ground_truth.json                 (schema below)
    sourcedata/ground_truth/sub-XX/ses-YY/{anat,dwi,func}/... truth images and matrices

The ground truth lives in ``sourcedata/`` so that BIDS tools and :class:`msimaging.bids.Study`
never mistake it for data.

``ground_truth.json`` schema (version 1)
----------------------------------------
- ``schema_version``, ``generator`` (msimaging version, seed, preset, every effect parameter),
  ``labels`` (dseg index -> name), ``lesion_classes``, ``lesion_categories``.
- ``subjects``: ``sub-XX`` ->
  - ``mni_to_native`` per session (4x4, the rigid+scaling placement of the head; the images
    are sampled through it, so registration can be checked against it),
  - ``lesions``: list of {``lesion_id``, ``location``, ``category``, ``centre_mni``,
    ``radii_mm``, ``sessions``: ``ses-YY`` -> {``present``, ``n_voxels``, ``volume_mm3``,
    ``centroid_mm`` (native world, on the anatomical grid)}},
  - ``sessions``: ``ses-YY`` -> {``months``,
    ``tissue_volumes_ml`` (per dseg label name, plus ``NAWM``, ``WM`` = NAWM + lesions,
    ``brain`` = parenchyma incl. lesions, ``ICV``),
    ``lesions`` {``count``, ``volume_mm3``, ``by_class`` class -> {``count``, ``volume_mm3``}},
    ``dwi`` {``left_nawm_rd_scale``, ``regions``: name -> {fa, md, ad, rd, n_voxels}} for
    NAWM, NAWM_left, NAWM_right, the bundles CC (+ genu/body/splenium), CST_L/R, OR_L/R
    (bundles include their lesioned voxels), ``profiles_fa``: bundle -> 100 FA values
    strictly between the first and last waypoints of the tract definition (from leaving
    the first to entering the last: CST cerebral peduncle -> precentral gyrus, OR LGN ->
    calcarine, CC left -> right centrum semiovale), and ``func``
    {``planted_delta_r``, ``realised_mean_r_planted``, ``realised_mean_r_other``}}.
- ``func``: atlas name, node table, ``planted_nodes`` (all 26 of the default subnetwork, or
  the ``subnetwork_nodes`` chosen), ``planted_edges`` (i < j),
  ``population_r_planted`` per session, and the file names of the true population
  correlation matrices.
- ``clinical``: the planted effects on the clinical table.

Every number is computed from the rasterised images that were written, never from the
generating parameters.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from msimaging._version import __version__
from msimaging.atlases.coordinates import load_seitzman_2018
from msimaging.datasets.synthetic import clinical, diffusion, functional
from msimaging.datasets.synthetic.anatomy import (
    BRAINSTEM,
    CEREBELLUM,
    CEREBRAL_WM,
    CORTICAL_GM,
    CSF,
    DEEP_GM,
    DSEG_LABELS,
    LESION,
    VENTRICLES,
    SubjectSpace,
    random_subject_space,
    template_anatomy,
)
from msimaging.datasets.synthetic.lesions import CATEGORIES, CLASSES, plant_lesions
from msimaging.derivatives import atomic_path, atomic_write_text, bids_name
from msimaging.errors import InputError

__all__ = ["PRESETS", "Effects", "Preset", "make_synthetic_study"]

SCHEMA_VERSION = 1
_MNI_SPACE = "MNI152NLin2009cAsym"
_TASK = "rest"
_STRUCTURE_26 = np.ones((3, 3, 3), bool)
_DWI_CHUNK = 50_000  # voxels per chunk when simulating DWI and resampling BOLD


@dataclass(frozen=True)
class Preset:
    """Grid sizes and acquisition settings of a synthetic study.

    Attributes
    ----------
    template_mm : int
        Voxel size of the MNI template the anatomy is derived on.
    anat_voxel_mm, dwi_voxel_mm : float
        Native grids of the anatomical and diffusion images.
    func_template_mm : int
        MNI grid of the fMRIPrep-style BOLD (and of the native raw BOLD).
    n_b0, n_directions : int
        Diffusion scheme (per shell for the directions).
    n_bold_volumes : int
        Resting-state volumes; ``tr_s`` their repetition time.
    lesions_per_class : int
        Lesions planted per location class and subject.
    lesion_radius_mm : (float, float)
        Range of lesion semi-axes.
    """

    template_mm: int
    anat_voxel_mm: float
    dwi_voxel_mm: float
    func_template_mm: int
    n_b0: int
    n_directions: int
    n_bold_volumes: int
    tr_s: float
    lesions_per_class: int
    lesion_radius_mm: tuple[float, float]


PRESETS: dict[str, Preset] = {
    "default": Preset(
        template_mm=2,
        anat_voxel_mm=2.0,
        dwi_voxel_mm=2.5,
        func_template_mm=4,
        n_b0=6,
        n_directions=30,
        n_bold_volumes=150,
        tr_s=2.0,
        lesions_per_class=3,
        lesion_radius_mm=(2.0, 7.0),
    ),
    "tiny": Preset(
        template_mm=4,
        anat_voxel_mm=4.0,
        dwi_voxel_mm=5.0,
        func_template_mm=8,
        n_b0=2,
        n_directions=12,
        n_bold_volumes=40,
        tr_s=2.0,
        lesions_per_class=3,
        lesion_radius_mm=(3.2, 12.0),
    ),
}


@dataclass(frozen=True)
class Effects:
    """Planted effects and acquisition parameters a user may change (keyword arguments)."""

    snr: float | None = 25.0
    left_nawm_rd_change: float = -0.08
    connectivity_delta_r: float = 0.3
    effect_months: float = 6.0
    head_motion: bool = False
    second_shell: bool = False
    lesions_per_class: int | None = None
    within_network_r: float = 0.35
    between_network_r: float = 0.05
    bold_motion_scale: float = 1.0
    head_scale_drift: float = 0.0
    subnetwork_nodes: int | None = None
    n_bold_volumes: int | None = None

    def fraction(self, months: float) -> float:
        """Share of the full effect reached at ``months`` (linear, capped at 1)."""
        return float(np.clip(months / self.effect_months, 0.0, 1.0)) if self.effect_months else 1.0


def _months(label: str, index: int) -> float:
    from msimaging.bids import months_from_label

    value = months_from_label(label)
    return float(index) if value is None else value


def _save(img: nib.Nifti1Image, path: Path) -> Path:
    """Write a NIfTI atomically; nibabel streams gzip (level 1, mtime 0: same seed, same bytes)."""
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def _json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _tsv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, frame.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n"))


def _matrix_tsv(path: Path, matrix: np.ndarray) -> None:
    """A square matrix as headerless TSV, written atomically."""
    text = "\n".join("\t".join(map("{:.8f}".format, row)) for row in matrix.tolist())
    atomic_write_text(path, text + "\n")


def _image(
    data: np.ndarray, affine: np.ndarray, *, xyz_units: str = "mm", tr_s: float | None = None
) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units(xyz_units, "sec")
    if tr_s is not None:  # a 4-D series: its time step (pixdim[4]) is the repetition time
        img.header.set_zooms((*img.header.get_zooms()[:3], float(tr_s)))
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img


# --------------------------------------------------------------------------------------------
# Anatomy and lesions
# --------------------------------------------------------------------------------------------


def _tissue_volumes_ml(dseg: np.ndarray, voxel_ml: float) -> dict[str, float]:
    counts = np.bincount(dseg.ravel().astype(np.int64), minlength=len(DSEG_LABELS))
    vols = {DSEG_LABELS[k]: float(counts[k] * voxel_ml) for k in DSEG_LABELS if k}
    nawm = counts[CEREBRAL_WM]
    parenchyma = sum(counts[k] for k in (CORTICAL_GM, CEREBRAL_WM, DEEP_GM, BRAINSTEM,
                                          CEREBELLUM, LESION))
    vols["NAWM"] = float(nawm * voxel_ml)
    vols["WM"] = float((nawm + counts[LESION]) * voxel_ml)
    vols["brain"] = float(parenchyma * voxel_ml)
    vols["ICV"] = float((parenchyma + counts[CSF] + counts[VENTRICLES]) * voxel_ml)
    return vols


def _lesion_truth(ids: np.ndarray, lesions, affine: np.ndarray) -> tuple[dict, dict]:
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    present_ids = [lesion.lesion_id for lesion in lesions]  # planted ids
    counts = np.bincount(ids.ravel().astype(np.int64), minlength=max(present_ids, default=0) + 1)
    visible = [i for i in present_ids if counts[i]]
    centroids = dict(
        zip(visible, ndimage.center_of_mass(ids > 0, ids, visible) if visible else [],
            strict=True)
    )
    per_lesion = {}
    by_class = {c: {"count": 0, "volume_mm3": 0.0} for c in CLASSES}
    for lesion in lesions:
        n = int(counts[lesion.lesion_id])
        centroid = centroids.get(lesion.lesion_id)
        entry = {"present": n > 0, "n_voxels": n, "volume_mm3": n * voxel_mm3}
        entry["centroid_mm"] = (
            (affine[:3, :3] @ np.asarray(centroid) + affine[:3, 3]).round(3).tolist()
            if n
            else None
        )
        per_lesion[lesion.lesion_id] = entry
        if n:
            by_class[lesion.location]["count"] += 1
            by_class[lesion.location]["volume_mm3"] += n * voxel_mm3
    summary = {
        "count": sum(c["count"] for c in by_class.values()),
        "volume_mm3": sum(c["volume_mm3"] for c in by_class.values()),
        "by_class": by_class,
    }
    return per_lesion, summary


def _anat_images(sampled: dict, ids: np.ndarray, rng: np.random.Generator):
    labels = sampled["labels"]
    lesion = ids > 0
    brain = labels > 0
    # T1w from the ICBM152 T1 (lesions T1-hypointense, like GM), FLAIR from tissue fractions
    # (CSF dark, GM brighter than WM, lesions hyperintense).
    t1 = sampled["t1"] * 4.0
    t1[lesion] = 0.62 * np.median(t1[labels == CEREBRAL_WM])
    flair = 300.0 * sampled["gm"] + 220.0 * sampled["wm"] + 40.0 * sampled["csf"]
    flair[lesion] = 520.0
    t1 = t1 + rng.normal(0.0, 8.0, t1.shape)
    flair = np.where(brain, flair, 0.0) + rng.normal(0.0, 5.0, flair.shape)
    return np.abs(t1).astype(np.float32), np.abs(flair).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------


def make_synthetic_study(
    root: str | Path,
    n_subjects: int = 5,
    sessions: Sequence[str] = ("M0", "M3", "M6"),
    seed: int = 0,
    preset: str = "default",
    *,
    progress: Callable[[str], None] | None = None,
    **effects: Any,
) -> Path:
    """Write a synthetic longitudinal MS study (BIDS + derivatives + ground truth).

    Parameters
    ----------
    root : str or Path
        Folder to create; it must not exist or be empty.
    n_subjects : int
        Number of participants (``sub-01`` ...).
    sessions : sequence of str
        Session labels; the visit time in months is parsed from them (``M3`` -> 3) and
        written to ``sessions.tsv``. Labels without months are numbered 0, 1, 2...
    seed : int
        Random seed: the same seed gives identical files.
    preset : {"default", "tiny"}
        ``default``: 2 mm anatomy, 2.5 mm DWI (6 b0 + 30 directions), 4 mm MNI BOLD with 150
        volumes. ``tiny``: 4 mm / 5 mm (2 b0 + 12 directions) / 8 mm and 40 volumes,
        for unit tests.
    progress : callable, optional
        Called with a short message as each subject and visit is written.
    **effects
        Planted effects and acquisition settings (see ``Effects``): ``snr`` (DWI b0 SNR in
        WM, None for noise-free signals; default 25), ``left_nawm_rd_change`` (relative RD
        change of left-hemisphere NAWM at ``effect_months``; default −0.08, so −4% at
        month 3), ``connectivity_delta_r`` (rise of the planted subnetwork's correlation at
        ``effect_months``; default 0.3, half of it at month 3), ``effect_months`` (6),
        ``head_motion`` (small head-position changes between visits; False),
        ``second_shell`` (add b=2000; False), ``lesions_per_class`` (preset value),
        ``within_network_r`` (0.35), ``between_network_r`` (0.05), ``bold_motion_scale`` (1),
        ``head_scale_drift`` (relative scale change of the head's image at each later visit
        vs the first, drawn per axis from [-d, -d/2] or [d/2, d], e.g. 0.01 for the ~1 %
        gradient-calibration drift of real scanners; 0 = none; independent of
        ``head_motion``), ``subnetwork_nodes`` (plant only this many of the default
        subnetwork's 26 nodes: those nearest the centroid of its largest group, the lateral
        left default mode network, see :func:`functional.planted_subnetwork`; None = all 26),
        ``n_bold_volumes`` (resting-state volumes per visit; preset value: more volumes give
        less noisy connectomes, e.g. to detect the planted change with few subjects).

    Returns
    -------
    Path
        The dataset root. The ground truth is ``root/sourcedata/ground_truth/ground_truth.json``.
    """
    if preset not in PRESETS:
        raise InputError(f"preset {preset!r} is unknown; choose one of {sorted(PRESETS)}.")
    unknown = set(effects) - set(Effects.__dataclass_fields__)
    if unknown:
        raise InputError(
            f"unknown effect parameter(s) {sorted(unknown)}; the parameters are "
            f"{sorted(Effects.__dataclass_fields__)}."
        )
    if not isinstance(n_subjects, int) or n_subjects < 1:
        raise InputError(f"n_subjects must be a positive integer, got {n_subjects!r}.")
    sessions = [s.removeprefix("ses-") for s in sessions]
    if not sessions or len(set(sessions)) != len(sessions):
        raise InputError(f"sessions must be distinct labels, got {sessions!r}.")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise InputError(
            f"root '{root}' exists and is not empty; give a new folder (nothing is overwritten)."
        )
    cfg = PRESETS[preset]
    eff = Effects(**effects)
    drift = eff.head_scale_drift
    if isinstance(drift, bool) or not isinstance(drift, int | float) or not 0 <= drift <= 0.1:
        raise InputError(
            f"head_scale_drift must be a relative scale change between 0 and 0.1 (e.g. 0.01 "
            f"for 1 %), got {drift!r}."
        )
    if eff.lesions_per_class is not None:
        cfg = replace(cfg, lesions_per_class=eff.lesions_per_class)
    if eff.n_bold_volumes is not None:
        volumes = eff.n_bold_volumes
        if isinstance(volumes, bool) or not isinstance(volumes, int) or volumes < 10:
            raise InputError(
                f"n_bold_volumes must be an integer of at least 10 (volumes per resting-state "
                f"run), got {volumes!r}."
            )
        cfg = replace(cfg, n_bold_volumes=volumes)
    say = progress or (lambda message: None)

    rng = np.random.default_rng(seed)
    months = [_months(s, i) for i, s in enumerate(sessions)]
    participants = [f"{i + 1:02d}" for i in range(n_subjects)]
    anatomy = template_anatomy(cfg.template_mm)
    func_anatomy = template_anatomy(cfg.func_template_mm)

    # Shared across subjects: the gradient scheme, the atlas and planted subnetwork.
    shells = (1000.0, 2000.0) if eff.second_shell else (1000.0,)
    bvals, bvecs = diffusion.gradient_scheme(cfg.n_b0, cfg.n_directions, shells, seed=seed)
    atlas = load_seitzman_2018()
    planted = functional.planted_subnetwork(atlas, n_nodes=eff.subnetwork_nodes)
    cov_by_session = {
        s: functional.node_covariance(
            atlas,
            within_network_r=eff.within_network_r,
            between_network_r=eff.between_network_r,
            planted_nodes=planted,
            planted_delta_r=eff.connectivity_delta_r * eff.fraction(m),
        )
        for s, m in zip(sessions, months, strict=True)
    }

    _write_top_level(root, participants, rng)
    truth: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generator": {
            "msimaging_version": __version__,
            "seed": seed,
            "preset": preset,
            "preset_settings": asdict(cfg),
            "effects": asdict(eff),
            "sessions": sessions,
            "months": months,
        },
        "labels": {str(k): v for k, v in DSEG_LABELS.items()},
        "lesion_classes": list(CLASSES),
        "lesion_categories": list(CATEGORIES),
        "subjects": {},
    }
    truth_dir = root / "sourcedata" / "ground_truth"

    for participant in participants:
        sub = f"sub-{participant}"
        say(f"{sub}: anatomy and lesions")
        base = random_subject_space(rng)
        spaces = [base]
        for _ in sessions[1:]:
            space = (
                base.moved(rng.uniform(-1.5, 1.5, 3), rng.uniform(-1.5, 1.5, 3))
                if eff.head_motion
                else base
            )
            if eff.head_scale_drift:
                # Scanner scale drift: the image of the head is scaled by 1 + delta per axis
                # (|delta| between d/2 and d), so visits differ by an affine, not a rigid map.
                delta = eff.head_scale_drift * rng.uniform(0.5, 1.0, 3) * rng.choice([-1, 1], 3)
                space = replace(space, scale=space.scale * (1.0 + delta))
            spaces.append(space)
        _tsv(
            root / sub / f"{sub}_sessions.tsv",
            pd.DataFrame({"session_id": [f"ses-{s}" for s in sessions], "months": months}),
        )
        anat_shape, anat_affine = base.grid(anatomy, cfg.anat_voxel_mm)
        # Without head motion every visit shares one space: sample each grid once.
        cache: dict[tuple, Any] = {}
        anat_sampled = [
            _cached(cache, ("anat", id(sp)), sp.sample, anatomy, anat_shape, anat_affine)
            for sp in spaces
        ]
        lesions, ids_by_visit = plant_lesions(
            anatomy,
            spaces,
            [s["labels"] for s in anat_sampled],
            anat_affine,
            rng,
            per_class=cfg.lesions_per_class,
            radius_range_mm=cfg.lesion_radius_mm,
        )
        dwi_shape, dwi_affine = base.grid(anatomy, cfg.dwi_voxel_mm)
        subject_truth: dict[str, Any] = {
            "mni_to_native": {},
            "lesions": [
                {
                    "lesion_id": lesion.lesion_id,
                    "location": lesion.location,
                    "category": lesion.category,
                    "centre_mni": list(lesion.centre_mni),
                    "radii_mm": list(lesion.radii_mm),
                    "sessions": {},
                }
                for lesion in lesions
            ],
            "sessions": {},
        }
        for v, (ses, month) in enumerate(zip(sessions, months, strict=True)):
            say(f"{sub} ses-{ses}: anat, dwi, func")
            space = spaces[v]
            subject_truth["mni_to_native"][f"ses-{ses}"] = space.mni_to_native.round(6).tolist()
            session_truth = _write_anat(
                root, truth_dir, participant, ses, anat_sampled[v], ids_by_visit[v],
                anat_affine, lesions, subject_truth, rng,
            )
            session_truth["months"] = month
            session_truth["dwi"] = _write_dwi(
                root, truth_dir, participant, ses, space, anatomy, lesions, v, cache,
                dwi_shape, dwi_affine, bvals, bvecs,
                1.0 + eff.left_nawm_rd_change * eff.fraction(month), eff.snr, rng,
            )
            session_truth["func"] = _write_func(
                root, truth_dir, participant, ses, space, func_anatomy, atlas, planted,
                cov_by_session[ses], cfg, eff, rng,
            )
            session_truth["func"]["planted_delta_r"] = eff.connectivity_delta_r * eff.fraction(
                month
            )
            subject_truth["sessions"][f"ses-{ses}"] = session_truth
        truth["subjects"][sub] = subject_truth

    say("clinical table and ground truth")
    table = clinical.clinical_table(
        [f"sub-{p}" for p in participants], [f"ses-{s}" for s in sessions], months, rng
    )
    _tsv(root / "phenotype" / "clinical.tsv", table)
    _json(root / "phenotype" / "clinical.json", clinical.CLINICAL_COLUMNS)
    truth["clinical"] = {"effects": asdict(clinical.DEFAULT_CLINICAL_EFFECTS)}
    truth["func"] = _func_truth(truth_dir, atlas, planted, cov_by_session, sessions)
    _json(truth_dir / "ground_truth.json", truth)
    return root


def _write_top_level(root: Path, participants: list[str], rng: np.random.Generator) -> None:
    _json(
        root / "dataset_description.json",
        {
            "Name": "msimaging synthetic longitudinal MS study",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "Authors": ["msimaging make_synthetic_study"],
            "GeneratedBy": [{"Name": "msimaging", "Version": __version__}],
        },
    )
    (root / "README").write_text(
        "Synthetic longitudinal MS study generated by msimaging.datasets.make_synthetic_study.\n"
        "Ground truth: sourcedata/ground_truth/ground_truth.json\n"
    )
    n = len(participants)
    _tsv(
        root / "participants.tsv",
        pd.DataFrame(
            {
                "participant_id": [f"sub-{p}" for p in participants],
                "age": rng.integers(32, 56, n),
                "sex": rng.choice(["F", "M"], n, p=[0.65, 0.35]),
                "arm": ["treatment"] * n,
            }
        ),
    )
    _json(
        root / "participants.json",
        {
            "age": {"Description": "age at baseline", "Units": "year"},
            "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
            "arm": {"Description": "trial arm"},
        },
    )
    for name in ("fmriprep", "segmentation"):
        _json(
            root / "derivatives" / name / "dataset_description.json",
            {
                "Name": f"msimaging synthetic {name} outputs",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "msimaging-synthetic", "Version": __version__}],
            },
        )


def _write_anat(
    root, truth_dir, participant, ses, sampled, ids, affine, lesions, subject_truth, rng
) -> dict[str, Any]:
    sub = f"sub-{participant}"
    anat = root / sub / f"ses-{ses}" / "anat"
    seg = root / "derivatives" / "segmentation" / sub / f"ses-{ses}" / "anat"
    t1, flair = _anat_images(sampled, ids, rng)
    _save(_image(t1, affine), anat / bids_name(participant, ses, "T1w", ".nii.gz"))
    _save(_image(flair, affine), anat / bids_name(participant, ses, "FLAIR", ".nii.gz"))
    dseg = sampled["labels"].astype(np.int16)
    dseg[ids > 0] = LESION
    _save(_image(dseg, affine), seg / bids_name(participant, ses, "dseg", ".nii.gz"))
    _tsv(
        seg / bids_name(participant, ses, "dseg", ".tsv"),
        pd.DataFrame({"index": list(DSEG_LABELS), "name": list(DSEG_LABELS.values())}),
    )
    for label, key in (("GM", "gm"), ("WM", "wm"), ("CSF", "csf")):
        _save(
            _image(sampled[key], affine),
            seg / bids_name(participant, ses, "probseg", ".nii.gz", label=label),
        )
    _save(
        _image((ids > 0).astype(np.uint8), affine),
        seg / bids_name(participant, ses, "mask", ".nii.gz", label="lesion"),
    )
    _save(
        _image(ids, affine),
        truth_dir / sub / f"ses-{ses}" / "anat"
        / bids_name(participant, ses, "dseg", ".nii.gz", desc="lesionid"),
    )
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    per_lesion, summary = _lesion_truth(ids, lesions, affine)
    for entry in subject_truth["lesions"]:
        entry["sessions"][f"ses-{ses}"] = per_lesion[entry["lesion_id"]]
    return {"tissue_volumes_ml": _tissue_volumes_ml(dseg, voxel_ml), "lesions": summary}


def _cached(cache: dict, key: tuple, func: Callable, *args: Any) -> Any:
    if key not in cache:
        cache[key] = func(*args)
    return cache[key]


def _dwi_geometry(space: SubjectSpace, anatomy, shape, affine) -> dict[str, np.ndarray]:
    """Tissue, MNI coordinates and fibre field of every voxel of a DWI grid."""
    sampled = space.sample(anatomy, shape, affine)
    tissue = sampled["labels"].ravel()
    mni = sampled["mni_mm"].reshape(-1, 3)
    # Fibre directions matter only where tissue is anisotropic (cerebral WM and brainstem).
    wm_like = np.isin(tissue, (CEREBRAL_WM, BRAINSTEM))
    bundle = np.zeros(tissue.shape, np.int8)
    direction = np.zeros((tissue.size, 3))
    direction[:, 0] = 1.0
    position = np.zeros(tissue.size)
    bundle[wm_like], direction[wm_like], position[wm_like] = diffusion.bundle_field(
        mni[wm_like], with_position=True
    )
    return {
        "labels": sampled["labels"], "tissue": tissue, "mni": mni,
        "bundle": bundle, "direction": direction, "position": position,
    }


def _waypoint_span(name: str) -> tuple[float, float]:
    """Relative positions along the bundle's principal centre line where it leaves the first
    waypoint of the matching tract definition (msimaging.atlases.tracts) and where it enters
    the last one: profiles run strictly between the waypoints, as
    ``TractBundle.between_waypoints`` cuts each streamline (last point in the first waypoint,
    first point in the last waypoint). A waypoint the centre line misses falls back to the
    centre-line point nearest to the waypoint's centre."""
    from msimaging.atlases.tracts import TRACTS

    line = diffusion.BUNDLES[name].polyline_mm
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])
    # Resample the centre line every ~0.25 mm so entry and exit are found to that precision.
    fine = np.linspace(0.0, arc[-1], max(2, int(np.ceil(arc[-1] / 0.25)) + 1))
    points = np.column_stack([np.interp(fine, arc, line[:, k]) for k in range(3)])
    ends = []
    first, last = TRACTS[name].waypoints[0], TRACTS[name].waypoints[-1]
    for region, pick in ((first, np.max), (last, np.min)):
        inside = np.asarray(region.contains(points), bool)
        if inside.any():
            ends.append(float(pick(fine[inside])) / arc[-1])
        else:
            low, high = region.bounds_mm()
            centre = (np.asarray(low) + np.asarray(high)) / 2.0
            ends.append(fine[np.argmin(np.linalg.norm(points - centre, axis=1))] / arc[-1])
    return ends[0], ends[1]


def _profiles(
    fa: np.ndarray, bundle: np.ndarray, position: np.ndarray, n_nodes: int = 100
) -> dict[str, list[float]]:
    """True along-bundle FA at ``n_nodes`` equally spaced positions between the first and last
    waypoints of each tract definition: Gaussian-kernel (SD 3% of that span) means of the
    FA of the bundle's voxels, by their position along the bundle."""
    out = {}
    for name, code in diffusion.BUNDLE_CODES.items():
        inside = bundle == code
        if not inside.any():
            out[name] = []
            continue
        start, end = _waypoint_span(name)
        nodes = start + (end - start) * (np.arange(n_nodes) + 0.5) / n_nodes
        sd = 0.03 * abs(end - start)
        weights = np.exp(-0.5 * ((position[inside][:, None] - nodes[None]) / sd) ** 2)
        out[name] = np.round(
            (weights * fa[inside][:, None]).sum(0) / np.maximum(weights.sum(0), 1e-12), 6
        ).tolist()
    return out


def _write_dwi(
    root, truth_dir, participant, ses, space: SubjectSpace, anatomy, lesions, visit, cache,
    shape, affine, bvals, bvecs, rd_scale, snr, rng,
) -> dict[str, Any]:
    from msimaging.datasets.synthetic.lesions import rasterise_lesions
    from msimaging.io import bvecs_from_voxel

    sub = f"sub-{participant}"
    geometry = _cached(cache, ("dwi", id(space)), _dwi_geometry, space, anatomy, shape, affine)
    tissue, mni, bundle = geometry["tissue"], geometry["mni"], geometry["bundle"]
    lesion = rasterise_lesions(lesions, visit, space, geometry["labels"], affine) > 0
    lesion_flat = lesion.ravel()
    left = mni[:, 0] < 0
    s0 = diffusion.default_s0(tissue, lesion_flat)
    reference = float(np.median(s0[tissue == CEREBRAL_WM]))
    # Voxel chunks bound the memory of the tensors and signals (~60 MB per chunk).
    signal = np.empty((tissue.size, bvals.size), np.int16 if snr is not None else np.float32)
    evals = np.empty((tissue.size, 3))
    for start in range(0, tissue.size, _DWI_CHUNK):
        part = slice(start, start + _DWI_CHUNK)
        evals[part], evecs = diffusion.tissue_tensors(
            tissue[part], bundle[part], geometry["direction"][part], lesion_flat[part],
            left[part], left_nawm_rd_scale=rd_scale, rotation=space.rotation,
            bundle_position=geometry["position"][part],
        )
        chunk = diffusion.simulate_signal(
            evals[part], evecs, bvals, bvecs, s0[part], snr=snr, noise_reference=reference,
            rng=rng,
        )
        if snr is not None:
            # Like scanners, store noisy magnitudes as int16 (rounding error 0.3 ≪ noise SD);
            # noise-free signals stay float32 so that fits reproduce the truth to 1e-6.
            np.rint(chunk, out=chunk)
            np.clip(chunk, 0, 32767, out=chunk)
        signal[part] = chunk
    dwi_dir = root / sub / f"ses-{ses}" / "dwi"
    stem = bids_name(participant, ses, "dwi", ".nii.gz").removesuffix(".nii.gz")
    _save(_image(signal.reshape(*shape, -1), affine), dwi_dir / f"{stem}.nii.gz")
    (dwi_dir / f"{stem}.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    # Signals were simulated with voxel-frame gradients; the .bvec follows FSL's convention
    # (x negated on this det > 0 grid), as every FSL/BIDS reader expects.
    fsl_bvecs = bvecs_from_voxel(bvecs, affine, "fsl")
    (dwi_dir / f"{stem}.bvec").write_text(
        "\n".join(" ".join(f"{v:.8f}" for v in row) for row in fsl_bvecs.T) + "\n"
    )
    _json(
        dwi_dir / f"{stem}.json",
        {"EchoTime": 0.089, "RepetitionTime": 8.0, "PhaseEncodingDirection": "j-"},
    )

    nawm = (tissue == CEREBRAL_WM) & ~lesion_flat
    codes = diffusion.BUNDLE_CODES
    regions = {
        "NAWM": nawm,
        "NAWM_left": nawm & left,
        "NAWM_right": nawm & ~left,
        **{name: bundle == code for name, code in codes.items()},
    }
    for part, (y_lo, y_hi) in diffusion.CC_PARTS.items():
        regions[f"CC_{part}"] = (bundle == codes["CC"]) & (mni[:, 1] >= y_lo) & (mni[:, 1] < y_hi)
    bundles = np.zeros(tissue.shape, np.int16)
    for name, code in codes.items():
        bundles[regions[name]] = code
    _save(
        _image(bundles.reshape(shape), affine),
        truth_dir / sub / f"ses-{ses}" / "dwi"
        / bids_name(participant, ses, "dseg", ".nii.gz", desc="bundles"),
    )
    _save(
        _image(tissue.reshape(shape).astype(np.int16), affine),
        truth_dir / sub / f"ses-{ses}" / "dwi"
        / bids_name(participant, ses, "dseg", ".nii.gz", desc="tissue"),
    )
    _save(
        _image(lesion.astype(np.uint8), affine),
        truth_dir / sub / f"ses-{ses}" / "dwi"
        / bids_name(participant, ses, "mask", ".nii.gz", label="lesion"),
    )
    fa = diffusion.tensor_metrics(evals)["fa"]
    return {
        "left_nawm_rd_scale": rd_scale,
        "snr": snr,
        "regions": diffusion.dwi_truth(evals, regions),
        "profiles_fa": _profiles(fa, bundle, geometry["position"]),
    }


def _write_func(
    root, truth_dir, participant, ses, space: SubjectSpace, anatomy, atlas, planted, cov,
    cfg: Preset, eff: Effects, rng,
) -> dict[str, Any]:
    sub = f"sub-{participant}"
    signals, realised = functional.simulate_node_signals(cov, cfg.n_bold_volumes, cfg.tr_s, rng)
    mask = anatomy.labels > 0
    bold, confounds = functional.simulate_bold(
        mask,
        anatomy.affine,
        {"gm": anatomy.gm, "wm": anatomy.wm, "csf": anatomy.csf},
        atlas,
        signals,
        tr_s=cfg.tr_s,
        motion_scale=eff.bold_motion_scale,
        rng=rng,
    )
    prep = root / "derivatives" / "fmriprep" / sub / f"ses-{ses}" / "func"
    entities = {"task": _TASK, "space": _MNI_SPACE}
    _save(
        _image(bold, anatomy.affine, tr_s=cfg.tr_s),
        prep / bids_name(participant, ses, "bold", ".nii.gz", desc="preproc", **entities),
    )
    _json(
        prep / bids_name(participant, ses, "bold", ".json", desc="preproc", **entities),
        {"RepetitionTime": cfg.tr_s, "TaskName": _TASK, "SkullStripped": True},
    )
    _save(
        _image(mask.astype(np.uint8), anatomy.affine),
        prep / bids_name(participant, ses, "mask", ".nii.gz", desc="brain", **entities),
    )
    _tsv(
        prep / bids_name(participant, ses, "timeseries", ".tsv", task=_TASK, desc="confounds"),
        confounds,
    )
    # Raw BOLD in the subject's native space: nearest-neighbour resampling of the MNI series.
    shape, affine = space.grid(anatomy, float(cfg.func_template_mm))
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    mni = space.native_to_mni((affine[:3, :3] @ ijk + affine[:3, 3:4]).T)
    inv = np.linalg.inv(anatomy.affine)
    src = np.rint(mni @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    inside = np.flatnonzero(np.all((src >= 0) & (src < np.array(anatomy.shape)), axis=1))
    source = np.ravel_multi_index(src[inside].T, anatomy.shape)
    flat = bold.reshape(-1, bold.shape[3])
    # Scanners write integers: int16 (values ~1000 with noise SD ~10, so rounding is harmless).
    raw_int = np.zeros((int(np.prod(shape)), bold.shape[3]), np.int16)
    for start in range(0, inside.size, _DWI_CHUNK):
        part = slice(start, start + _DWI_CHUNK)
        raw_int[inside[part]] = np.clip(np.rint(flat[source[part]]), -32768, 32767)
    func_dir = root / sub / f"ses-{ses}" / "func"
    _save(
        _image(raw_int.reshape(*shape, -1), affine, tr_s=cfg.tr_s),
        func_dir / bids_name(participant, ses, "bold", ".nii.gz", task=_TASK),
    )
    _json(
        func_dir / bids_name(participant, ses, "bold", ".json", task=_TASK),
        {"RepetitionTime": cfg.tr_s, "TaskName": _TASK},
    )
    # The realised correlation of the node signals actually generated (truth for recovery).
    realised_path = (
        truth_dir / sub / f"ses-{ses}" / "func"
        / bids_name(participant, ses, "relmat", ".tsv", atlas="seitzman2018", meas="realised")
    )
    _matrix_tsv(realised_path, realised)
    iu = np.triu_indices(len(atlas), 1)
    is_planted = np.isin(iu[0], planted) & np.isin(iu[1], planted)
    values = realised[iu]
    return {
        "realised_mean_r_planted": float(values[is_planted].mean()),
        "realised_mean_r_other": float(values[~is_planted].mean()),
        "realised_relmat": str(realised_path.relative_to(truth_dir)),
    }


def _func_truth(truth_dir: Path, atlas, planted, cov_by_session, sessions) -> dict[str, Any]:
    out = functional.functional_truth(atlas, planted, cov_by_session, {})
    out["atlas"] = "seitzman2018"
    out["population_relmat"] = {}
    for ses in sessions:
        path = truth_dir / f"population_ses-{ses}_relmat.tsv"
        _matrix_tsv(path, cov_by_session[ses])
        out["population_relmat"][f"ses-{ses}"] = path.name
    return out
