"""A generator of small, correctly named BIDS trees for tests, the demo and benchmarks.

:func:`make_example_layout` is a *naming and discovery* fixture: raw data plus fMRIPrep-,
QSIPrep- and segmentation-style derivatives whose file names follow BIDS, holding tiny random
images. It has no anatomy and no planted effects; the synthetic longitudinal study with ground
truth is ``make_synthetic_study`` (a later issue).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from msimaging._version import __version__
from msimaging.bids import KINDS, months_from_label
from msimaging.errors import InputError, OutputError

__all__ = ["make_example_layout"]

_BIDS_VERSION = "1.9.0"
_TASK = "rest"
_TEMPLATE = "MNI152NLin2009cAsym"
_REPETITION_TIME_S = 2.0
_N_BOLD_VOLUMES = 10
_B_VALUE_S_MM2 = 1000
_CONFOUND_COLUMNS = (
    "trans_x",
    "trans_y",
    "trans_z",
    "rot_x",
    "rot_y",
    "rot_z",
    "framewise_displacement",
    "csf",
    "white_matter",
)
_VOXEL_SIZE_MM = {"anat": 1.0, "dwi": 2.0, "func": 3.0}


def make_example_layout(
    root: str | os.PathLike[str],
    n_subjects: int = 2,
    sessions: Sequence[str] | None = ("M0", "M3", "M6"),
    *,
    months: Sequence[float] | Mapping[str, float] | None = None,
    sessions_tsv: bool = True,
    fmriprep: bool = True,
    qsiprep: bool = False,
    segmentation: bool = True,
    missing: Iterable[tuple[str, str | None, str]] = (),
    images: bool = True,
    image_shape: tuple[int, int, int] = (4, 4, 4),
    n_dwi_volumes: int = 7,
    seed: int = 0,
) -> Path:
    """Write a small BIDS dataset with derivatives and return its root.

    Raw data per session: ``anat`` T1w and FLAIR, ``dwi`` with ``.bval`` (one b=0 then
    b=1000 s/mm²) and ``.bvec`` (3 x N unit vectors), ``func`` resting-state bold with a
    ``_bold.json`` sidecar (RepetitionTime). Derivatives, each with its own
    ``dataset_description.json`` (``DatasetType: derivative``):

    - ``derivatives/fmriprep``: ``space-MNI152NLin2009cAsym_desc-preproc_bold``,
      ``desc-brain_mask`` and ``desc-confounds_timeseries.tsv`` (motion, framewise
      displacement, csf, white_matter);
    - ``derivatives/qsiprep`` (when ``qsiprep``): ``space-ACPC_desc-preproc_dwi`` with
      ``.bval``/``.bvec``;
    - ``derivatives/segmentation``: ``dseg``, ``label-{GM,WM,CSF}_probseg`` and
      ``label-lesion_mask``.

    This is a naming/discovery fixture with random voxels, not the synthetic study with
    planted effects (``make_synthetic_study``).

    Parameters
    ----------
    root : str or os.PathLike
        Folder to create; it must not exist or be empty.
    n_subjects : int, default=2
        Number of subjects, labelled ``01``, ``02``, ... (zero-padded to the same width).
    sessions : sequence of str or None, default=("M0", "M3", "M6")
        Session labels (without ``ses-``). Empty or None: a dataset without sessions.
    months : sequence of float or mapping, optional
        Months since baseline written to ``sessions.tsv``, one per session (or a mapping
        label -> months). Default: parsed from the labels, else the session index.
    sessions_tsv : bool, default=True
        Write ``sub-<label>/sub-<label>_sessions.tsv`` (``session_id``, ``months``).
    fmriprep, qsiprep, segmentation : bool
        Which derivative datasets to write.
    missing : iterable of (participant, session, kind)
        Pieces to leave out, e.g. ``[("02", "M3", "bold_preproc")]``; labels with or without
        prefix, ``kind`` one of :data:`msimaging.bids.KINDS` (``session`` None without
        sessions).
    images : bool, default=True
        Write tiny real NIfTI images (gzip level 1). False: empty placeholder files, enough
        for discovery and much faster for large benchmark trees.
    image_shape : tuple of 3 int, default=(4, 4, 4)
        Spatial shape of every image (voxels).
    n_dwi_volumes : int, default=7
        Diffusion volumes: one b=0 and ``n_dwi_volumes - 1`` directions.
    seed : int, default=0
        Random seed; each file's content depends only on the seed and the file's identity.

    Returns
    -------
    Path
        The dataset root.

    Examples
    --------
    >>> from msimaging.bids import Study
    >>> planted = [("02", "M3", "bold_preproc")]
    >>> root = make_example_layout("bids", missing=planted)  # doctest: +SKIP
    >>> Study(root).missing()[["participant_id", "session_id", "kind"]]  # doctest: +SKIP
      participant_id session_id          kind
    0         sub-02     ses-M3  bold_preproc
    """
    root = Path(root)
    subject_labels, session_labels, months_by_session, skip = _check_arguments(
        root,
        n_subjects,
        sessions,
        months,
        missing,
        image_shape,
        n_dwi_volumes,
        qsiprep=qsiprep,
        fmriprep=fmriprep,
        segmentation=segmentation,
    )
    writer = _Writer(images=images, image_shape=tuple(image_shape), seed=seed)

    root.mkdir(parents=True, exist_ok=True)
    _write_json(
        root / "dataset_description.json",
        {
            "Name": "msimaging example layout",
            "BIDSVersion": _BIDS_VERSION,
            "DatasetType": "raw",
            "Authors": ["msimaging.datasets.make_example_layout"],
        },
    )
    (root / "README").write_text(
        "Small BIDS tree written by msimaging.datasets.make_example_layout: random voxels, "
        "for testing file discovery only.\n"
    )
    rng = np.random.default_rng(seed)
    participants = ["participant_id\tage\tsex"]
    for label in subject_labels:
        age = int(rng.integers(20, 60))
        sex = "F" if rng.random() < 0.7 else "M"
        participants.append(f"sub-{label}\t{age}\t{sex}")
    _write_text(root / "participants.tsv", "\n".join(participants) + "\n")
    _write_json(
        root / "task-rest_bold.json",
        {"TaskName": _TASK, "RepetitionTime": _REPETITION_TIME_S},
    )

    derivatives = []
    if fmriprep:
        derivatives.append(("fmriprep", "fMRIPrep-style example derivatives"))
    if qsiprep:
        derivatives.append(("qsiprep", "QSIPrep-style example derivatives"))
    if segmentation:
        derivatives.append(("segmentation", "Tissue and lesion segmentation example"))
    for name, description in derivatives:
        folder = root / "derivatives" / name
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(
            folder / "dataset_description.json",
            {
                "Name": description,
                "BIDSVersion": _BIDS_VERSION,
                "DatasetType": "derivative",
                "GeneratedBy": [
                    {
                        # Unique per dataset: pybids uses this name as the query scope.
                        "Name": f"msimaging-example-{name}",
                        "Version": __version__,
                        "Description": (
                            f"{name}-style file names with random voxels, written by "
                            "msimaging.datasets.make_example_layout"
                        ),
                    }
                ],
                "SourceDatasets": [{"URL": "../../"}],
            },
        )

    session_list: list[str | None] = list(session_labels) or [None]
    for subject_index, subject in enumerate(subject_labels):
        if session_labels and sessions_tsv:
            rows = ["session_id\tmonths"]
            rows += [f"ses-{s}\t{months_by_session[s]:g}" for s in session_labels]
            _write_text(
                root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv", "\n".join(rows) + "\n"
            )
        for session_index, session in enumerate(session_list):
            identity = (subject_index, session_index)
            keep = {kind for kind in KINDS if (subject, session, kind) not in skip}
            writer.session(
                root,
                subject,
                session,
                identity,
                keep,
                fmriprep,
                qsiprep,
                segmentation,
                n_dwi_volumes,
            )
    return root


def _check_arguments(
    root: Path,
    n_subjects: object,
    sessions: object,
    months: object,
    missing: object,
    image_shape: object,
    n_dwi_volumes: object,
    *,
    qsiprep: bool,
    fmriprep: bool,
    segmentation: bool,
) -> tuple[list[str], list[str], dict[str, float], set[tuple[str, str | None, str]]]:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise OutputError(
            f"root {str(root)!r} already exists and is not an empty folder; pass a new or "
            "empty folder so the example does not mix with other files."
        )
    if not isinstance(n_subjects, int) or isinstance(n_subjects, bool) or n_subjects < 1:
        raise InputError(f"n_subjects={n_subjects!r} must be a positive integer, e.g. 2.")
    width = max(2, len(str(n_subjects)))
    subject_labels = [f"{index:0{width}d}" for index in range(1, n_subjects + 1)]

    if sessions is None:
        session_labels: list[str] = []
    elif isinstance(sessions, str) or not isinstance(sessions, Iterable):
        raise InputError(
            f"sessions={sessions!r} must be a sequence of labels such as ('M0', 'M3'), or "
            "None for a dataset without sessions."
        )
    else:
        session_labels = [str(s)[4:] if str(s).startswith("ses-") else str(s) for s in sessions]
    for label in session_labels:
        if not label.isalnum() or not label.isascii():
            raise InputError(
                f"sessions contains {label!r}: BIDS labels are letters and digits only "
                "(e.g. 'M0', 'M12')."
            )
    if len(set(session_labels)) != len(session_labels):
        raise InputError(f"sessions={sessions!r} repeats a label; give each session once.")

    if months is None:
        parsed = [months_from_label(label) for label in session_labels]
        values = parsed if None not in parsed else [float(i) for i in range(len(session_labels))]
        months_by_session = dict(zip(session_labels, values, strict=True))
    elif isinstance(months, Mapping):
        absent = [label for label in session_labels if label not in months]
        if absent:
            raise InputError(
                f"months has no value for session(s) {absent}; give one per session label."
            )
        months_by_session = {label: float(months[label]) for label in session_labels}
    else:
        values = list(months)  # type: ignore[call-overload]
        if len(values) != len(session_labels):
            raise InputError(
                f"months has {len(values)} value(s) but there are {len(session_labels)} "
                "sessions; give one value per session, in the order of `sessions`."
            )
        months_by_session = {
            label: float(value) for label, value in zip(session_labels, values, strict=True)
        }

    produced = {"t1w", "flair", "dwi", "bold"}
    if fmriprep:
        produced |= {"bold_preproc", "bold_mask", "confounds"}
    if qsiprep:
        produced.add("dwi_preproc")
    if segmentation:
        produced |= {"dseg", "probseg", "lesion_mask"}
    skip = set()
    for item in missing:  # type: ignore[attr-defined]
        if not (isinstance(item, Sequence) and len(item) == 3):
            raise InputError(
                f"missing contains {item!r}; give (participant, session, kind) tuples, e.g. "
                "('02', 'M3', 'bold_preproc')."
            )
        participant, session, kind = item
        participant = str(participant).removeprefix("sub-")
        session = None if session is None else str(session).removeprefix("ses-")
        if participant not in subject_labels:
            raise InputError(
                f"missing names participant {item[0]!r}, which the layout does not have "
                f"(participants: {', '.join(subject_labels[:5])}...)."
            )
        valid_sessions = session_labels or [None]
        if session not in valid_sessions:
            raise InputError(
                f"missing names session {item[1]!r}, which the layout does not have "
                f"(sessions: {valid_sessions})."
            )
        if kind not in produced:
            raise InputError(
                f"missing names kind {kind!r}; with these options the layout writes "
                f"{sorted(produced)}."
            )
        skip.add((participant, session, kind))

    if (
        not isinstance(image_shape, Sequence)
        or len(image_shape) != 3
        or not all(isinstance(n, int) and n >= 1 for n in image_shape)
    ):
        raise InputError(f"image_shape={image_shape!r} must be 3 positive integers.")
    if not isinstance(n_dwi_volumes, int) or n_dwi_volumes < 2:
        raise InputError(
            f"n_dwi_volumes={n_dwi_volumes!r} must be an integer >= 2 (one b=0 plus at "
            "least one direction)."
        )
    return subject_labels, session_labels, months_by_session, skip


class _Writer:
    """Writes the files of one session; holds the per-call options."""

    def __init__(self, *, images: bool, image_shape: tuple[int, ...], seed: int) -> None:
        self.images = images
        self.shape = image_shape
        self.seed = seed

    def session(
        self,
        root: Path,
        subject: str,
        session: str | None,
        identity: tuple[int, int],
        keep: set[str],
        fmriprep: bool,
        qsiprep: bool,
        segmentation: bool,
        n_dwi_volumes: int,
    ) -> None:
        relative = Path(f"sub-{subject}") / (f"ses-{session}" if session else "")
        prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        raw = root / relative
        rng = np.random.default_rng([self.seed, *identity])

        if "t1w" in keep:
            self.image(raw / "anat" / f"{prefix}_T1w.nii.gz", "anat", rng, scale=1000.0)
        if "flair" in keep:
            self.image(raw / "anat" / f"{prefix}_FLAIR.nii.gz", "anat", rng, scale=800.0)
        if "dwi" in keep:
            self.dwi(raw / "dwi" / f"{prefix}_dwi", n_dwi_volumes, rng)
        if "bold" in keep:
            bold = raw / "func" / f"{prefix}_task-{_TASK}_bold"
            self.image(
                bold.with_name(bold.name + ".nii.gz"), "func", rng, n_volumes=_N_BOLD_VOLUMES
            )
            _write_json(
                bold.with_name(bold.name + ".json"),
                {"TaskName": _TASK, "RepetitionTime": _REPETITION_TIME_S},
            )

        if fmriprep:
            func = root / "derivatives" / "fmriprep" / relative / "func"
            stem = f"{prefix}_task-{_TASK}_space-{_TEMPLATE}"
            if "bold_preproc" in keep:
                self.image(
                    func / f"{stem}_desc-preproc_bold.nii.gz",
                    "func",
                    rng,
                    n_volumes=_N_BOLD_VOLUMES,
                )
                _write_json(
                    func / f"{stem}_desc-preproc_bold.json",
                    {"RepetitionTime": _REPETITION_TIME_S, "SkullStripped": False},
                )
            if "bold_mask" in keep:
                self.image(func / f"{stem}_desc-brain_mask.nii.gz", "func", rng, mask=True)
            if "confounds" in keep:
                self.confounds(func / f"{prefix}_task-{_TASK}_desc-confounds_timeseries.tsv", rng)
        if qsiprep and "dwi_preproc" in keep:
            dwi = root / "derivatives" / "qsiprep" / relative / "dwi"
            self.dwi(dwi / f"{prefix}_space-ACPC_desc-preproc_dwi", n_dwi_volumes, rng)
        if segmentation:
            anat = root / "derivatives" / "segmentation" / relative / "anat"
            if "dseg" in keep:
                self.image(anat / f"{prefix}_dseg.nii.gz", "anat", rng, labels=3)
            if "probseg" in keep:
                self.probseg(anat, prefix, rng)
            if "lesion_mask" in keep:
                self.image(anat / f"{prefix}_label-lesion_mask.nii.gz", "anat", rng, lesion=True)

    # -- files ---------------------------------------------------------------------------
    def image(
        self,
        path: Path,
        datatype: str,
        rng: np.random.Generator,
        *,
        n_volumes: int | None = None,
        scale: float = 100.0,
        mask: bool = False,
        labels: int = 0,
        lesion: bool = False,
        data: np.ndarray | None = None,
    ) -> None:
        if not self.images:
            _write_bytes(path, b"")
            return
        shape = self.shape + ((n_volumes,) if n_volumes else ())
        if data is not None:
            pass
        elif mask:
            data = np.ones(shape, dtype=np.uint8)
        elif labels:
            data = rng.integers(0, labels + 1, size=shape, dtype=np.uint8)
        elif lesion:
            data = (rng.random(shape) < 0.1).astype(np.uint8)
        else:
            data = (scale * (1.0 + 0.1 * rng.standard_normal(shape))).astype(np.float32)
        _write_nifti(
            path, data, _VOXEL_SIZE_MM[datatype], _REPETITION_TIME_S if n_volumes else None
        )

    def probseg(self, anat: Path, prefix: str, rng: np.random.Generator) -> None:
        # Tissue probabilities that sum to one in every voxel.
        weights = rng.random((3, *self.shape)).astype(np.float32) if self.images else None
        if weights is not None:
            weights /= weights.sum(axis=0)
        for index, label in enumerate(("GM", "WM", "CSF")):
            path = anat / f"{prefix}_label-{label}_probseg.nii.gz"
            self.image(path, "anat", rng, data=None if weights is None else weights[index])

    def dwi(self, stem: Path, n_volumes: int, rng: np.random.Generator) -> None:
        directions = rng.standard_normal((3, n_volumes - 1))
        directions /= np.linalg.norm(directions, axis=0)
        bvecs = np.concatenate([np.zeros((3, 1)), directions], axis=1)
        bvals = [0] + [_B_VALUE_S_MM2] * (n_volumes - 1)
        if self.images:
            b0 = 1000.0 * (1.0 + 0.05 * rng.standard_normal(self.shape))
            signal = np.exp(-_B_VALUE_S_MM2 * 0.0008) * b0
            data = np.concatenate(
                [b0[..., None], np.repeat(signal[..., None], n_volumes - 1, axis=-1)], axis=-1
            ).astype(np.float32)
            _write_nifti(stem.with_name(stem.name + ".nii.gz"), data, _VOXEL_SIZE_MM["dwi"], None)
        else:
            _write_bytes(stem.with_name(stem.name + ".nii.gz"), b"")
        _write_text(stem.with_name(stem.name + ".bval"), " ".join(map(str, bvals)) + "\n")
        _write_text(
            stem.with_name(stem.name + ".bvec"),
            "\n".join(" ".join(f"{v:.6f}" for v in row) for row in bvecs) + "\n",
        )

    def confounds(self, path: Path, rng: np.random.Generator) -> None:
        values = 0.01 * rng.standard_normal((_N_BOLD_VOLUMES, len(_CONFOUND_COLUMNS)))
        fd = _CONFOUND_COLUMNS.index("framewise_displacement")
        values[:, fd] = np.abs(values[:, fd])
        lines = ["\t".join(_CONFOUND_COLUMNS)]
        for row_index, row in enumerate(values):
            cells = [f"{v:.6f}" for v in row]
            if row_index == 0:
                cells[fd] = "n/a"  # as fMRIPrep: no displacement before the first volume
            lines.append("\t".join(cells))
        _write_text(path, "\n".join(lines) + "\n")


def _write_nifti(
    path: Path, data: np.ndarray, voxel_size_mm: float, repetition_time_s: float | None
) -> None:
    import nibabel as nib

    affine = np.diag([voxel_size_mm] * 3 + [1.0])
    affine[:3, 3] = -voxel_size_mm * (np.asarray(data.shape[:3]) - 1) / 2.0
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    if repetition_time_s is not None:
        zooms = image.header.get_zooms()
        image.header.set_zooms((*zooms[:3], repetition_time_s))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    # gzip level 1 and mtime 0: fast and byte-for-byte reproducible.
    _write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))


def _write_bytes(path: Path, content: bytes) -> None:
    try:
        path.write_bytes(content)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _write_json(path: Path, payload: Mapping[str, object]) -> None:
    _write_text(path, json.dumps(payload, indent=2) + "\n")
