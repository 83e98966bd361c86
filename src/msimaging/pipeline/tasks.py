"""Participant-level tasks: one per (subject, visit, modality), resumable and isolated.

A task carries the paths of its inputs, resolved once in the parent process from the run's one
:class:`~msimaging.bids.Study` (:func:`msimaging.pipeline.plan_tasks`), so a worker never scans
the dataset. It calls the library (:func:`dti_session` +
:func:`tract_session`, :func:`extract_timeseries` + :func:`connectivity`,
:func:`volumetry_session`) and writes derivatives through :class:`DerivativesWriter` (every
file atomically). Last of all it writes a *provenance* record: the identity of every input
file (path, size, modification time), the parameters, the msimaging version and the outputs
with their sizes. A task whose provenance matches is skipped; a task killed part-way has no
provenance and runs again, overwriting its partial outputs. :func:`run_task` never raises: a
failure is returned as an outcome with the error type and message, so one broken visit never
stops a batch.
"""

from __future__ import annotations

import json
import os
import resource
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from msimaging._version import __version__
from msimaging.derivatives import DerivativesLayout, DerivativesWriter, atomic_write_text

__all__ = ["MODALITIES", "Task", "TaskOutcome", "is_up_to_date", "provenance_path", "run_task"]

#: Modalities a participant-level task can run, and the BIDS kinds each reads (see
#: :func:`msimaging.pipeline.inputs.resolve_inputs` for which are optional).
MODALITIES: dict[str, tuple[str, ...]] = {
    "dti": ("dwi", "t1w", "dseg", "probseg", "lesion_mask"),
    "fmri": ("bold_preproc", "confounds", "bold_mask"),
    "volumetry": ("dseg", "probseg", "lesion_mask"),
}
#: Default parameters per modality; the provenance records the effective (merged) ones, so
#: a value given explicitly and the same default are the same run.
DEFAULTS: dict[str, dict[str, Any]] = {
    # Tract figures (overlay + profiles) for each subject's first visit only: QC at a
    # fraction of the cost; "all" draws every visit, "none" none.
    # labels None: the segmentation's convention comes from the dataset (its dseg.tsv, else
    # detected from the values; msimaging.segmentation); a name or mapping overrides it.
    # tract_model: the fibre orientations tracked, "tensor" or "csd" (dipy CSD on the visit's
    # DWI); metrics always on the tensor maps. A user's peaks image per visit is a library
    # feature (msimaging.dti.tract_session(model=path)), not a config key.
    # mni_reference: "subject" registers each subject's reference visit (its first, the
    # input "t1w_reference") to MNI once and every other visit to that visit's T1w (rigid,
    # 3 mm); "visit" registers every visit to MNI on its own (the behaviour before issue 19).
    "dti": {"method": "wls", "margin_mm": 0.0, "labels": None, "figures": "first",
            "tract_model": "tensor", "mni_reference": "subject"},
    "fmri": {"atlas": "seitzman2018", "strategy": "simple", "kind": "correlation"},
    "volumetry": {"labels": None},
}


def effective_params(modality: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The defaults of ``modality`` updated with the user's parameters for it."""
    return {**DEFAULTS[modality], **dict(params or {}).get(modality, {})}


@dataclass(frozen=True)
class Task:
    """One unit of participant-level work, with everything it needs to run on a worker.

    Parameters
    ----------
    participant_id, session_id, modality : str
        Which visit and analysis.
    inputs : tuple of (str, str)
        ``(role, absolute path)`` of every input file (see
        :func:`msimaging.pipeline.inputs.resolve_inputs`); their identity enters the
        provenance record.
    first_visit : bool
        Whether this is the subject's earliest visit (QC figures are drawn there).
    error : str
        Why the inputs could not be found at planning time; the task then fails with this
        message (as an ``InputNotFoundError``) without running, and the others run.
    """

    participant_id: str
    session_id: str | None
    modality: str
    inputs: tuple[tuple[str, str], ...] = ()
    first_visit: bool = False
    error: str = ""

    @property
    def name(self) -> str:
        return " ".join(x for x in (self.participant_id, self.session_id, self.modality) if x)

    @property
    def input_paths(self) -> dict[str, Path]:
        """``{role: Path}`` of the inputs."""
        return {role: Path(path) for role, path in self.inputs}


@dataclass
class TaskOutcome:
    """What happened to a task: ``done``, ``skipped`` (up to date) or ``failed``."""

    participant_id: str
    session_id: str | None
    modality: str
    status: str
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    error_type: str = ""
    message: str = ""
    details: str = ""
    outputs: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["n_outputs"] = len(out.pop("outputs"))
        out.pop("details")
        return out


def provenance_path(output_dir: Path, task: Task) -> Path:
    """Where a task's provenance record lives (inside the subject/session folder)."""
    return DerivativesLayout(output_dir).provenance(task.participant_id, task.session_id,
                                                    task.modality)


def _identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _record(inputs: dict[str, Path], params: dict[str, Any], outputs: list[Path]) -> dict:
    return {
        "msimaging_version": __version__,
        "parameters": params,
        "inputs": {k: _identity(Path(p)) for k, p in sorted(inputs.items())},
        "outputs": [{"path": str(p), "size": Path(p).stat().st_size} for p in outputs
                    if Path(p).exists()],
    }


def _up_to_date(path: Path, inputs: dict[str, Path], params: dict[str, Any]) -> bool:
    if not path.is_file():
        return False
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if saved.get("msimaging_version") != __version__ or saved.get("parameters") != params:
        return False
    try:
        current = {k: _identity(Path(p)) for k, p in sorted(inputs.items())}
    except OSError:
        return False
    if saved.get("inputs") != current:
        return False
    for out in saved.get("outputs", []):
        p = Path(out["path"])
        if not p.is_file() or p.stat().st_size != out["size"]:
            return False
    return True


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM), so the peak read
    # after the task is this task's, not the worker's over all the tasks it ran.
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as stream:
            stream.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere ru_maxrss (kB on Linux, bytes on macOS): the process's peak so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def is_up_to_date(
    task: Task, output_dir: str | os.PathLike[str], params: dict[str, Any] | None
) -> bool:
    """Whether ``task`` can be skipped: its provenance matches inputs, parameters, version
    and outputs. Cheap (file metadata only), so the scheduler never sees finished tasks."""
    if task.error:
        return False  # let the task fail and report the problem
    return _up_to_date(provenance_path(Path(output_dir), task), task.input_paths,
                       effective_params(task.modality, params))


class _Visit:
    """What a runner needs to know of the visit (the BIDS Session is not shipped to workers)."""

    def __init__(self, participant_id: str, session_id: str | None) -> None:
        self.participant_id = participant_id
        self.session_id = session_id


def run_task(
    task: Task,
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    params: dict[str, Any] | None = None,
    *,
    force: bool = False,
) -> TaskOutcome:
    """Run one task (or skip it when its outputs are up to date); never raises.

    Reads only the files the task carries (no scan of ``bids_dir``, which is recorded as the
    source dataset of the outputs)."""
    from msimaging.pipeline.inputs import InputNotFoundError

    started = time.perf_counter()
    _reset_peak_rss()
    outcome = TaskOutcome(task.participant_id, task.session_id, task.modality, "failed")
    output = Path(output_dir)
    try:
        if task.error:
            raise InputNotFoundError(task.error)
        session = _Visit(task.participant_id, task.session_id)
        first_visit = task.first_visit
        inputs = task.input_paths
        prov = provenance_path(output, task)
        settings = effective_params(task.modality, params)
        if not force and _up_to_date(prov, inputs, settings):
            outcome.status = "skipped"
            return outcome
        writer = DerivativesWriter(output, input_datasets=[bids_dir])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outputs = _RUNNERS[task.modality](session, inputs, writer, settings, first_visit)
        outcome.message = "; ".join(dict.fromkeys(str(w.message) for w in caught))[:2000]
        record = _record(inputs, settings, outputs)
        atomic_write_text(prov, json.dumps(record, indent=1))
        outcome.outputs = [str(p) for p in outputs]
        outcome.status = "done"
    except Exception as exc:  # one broken visit must not stop the batch
        outcome.error_type = type(exc).__name__
        outcome.message = str(exc)[:2000]
        outcome.details = traceback.format_exc()
    finally:
        outcome.seconds = time.perf_counter() - started
        outcome.peak_rss_mb = _peak_rss_mb()
    return outcome


# --------------------------------------------------------------------------------------------
# Modalities
# --------------------------------------------------------------------------------------------


def _labels(inputs, params) -> Any:
    """The label convention: the config's, else the table found when the task was planned
    (the one its provenance records), else None (detected from the values)."""
    if params.get("labels") is not None or "dseg.tsv" not in inputs:
        return params.get("labels")
    from msimaging.segmentation import convention_from_table

    return convention_from_table(inputs["dseg.tsv"])


def _run_dti(session, inputs, writer, params, first_visit: bool) -> list[Path]:
    from msimaging.dti import dti_session, tract_session
    from msimaging.errors import InputError

    # White matter from the segmentation (convention from labels=, else the dataset), else
    # from fMRIPrep/FAST's WM probability map; no lesion mask means NAWM = WM.
    if "dseg" in inputs:
        wm = {"seg": inputs["dseg"], "labels": _labels(inputs, params)}
    elif "probseg_WM" in inputs:
        wm = {"wm_mask": inputs["probseg_WM"]}
    else:
        raise InputError(
            f"{session.participant_id} {session.session_id or ''}: DTI needs the white matter: "
            "a segmentation (dseg) or a label-WM_probseg; found "
            f"{', '.join(k for k in inputs if k.startswith('probseg')) or 'neither'}."
        )
    mni, extra = None, []
    if params.get("mni_reference", "subject") == "subject":
        mni, extra = _subject_mni(session, inputs, writer, first_visit)
    dti = dti_session(
        inputs["dwi"], inputs["t1w"], lesion_mask=inputs.get("lesion_mask"), **wm,
        participant_id=session.participant_id, session_id=session.session_id, writer=writer,
        method=params["method"], margin_mm=params["margin_mm"], mni_to_anat=mni,
    )
    figures = params["figures"] in (True, "all") or (params["figures"] == "first"
                                                     and first_visit)
    stage = tract_session(dti, writer=writer, figures=figures,
                          model=params.get("tract_model", "tensor"))
    return [*dti.outputs.values(), *stage.outputs.values(), *extra]


def _subject_mni(session, inputs, writer, first_visit: bool) -> tuple[Any, list[Path]]:
    """The visit's MNI -> T1w transform through the subject's one MNI registration.

    The reference T1w (input ``t1w_reference``: the subject's first visit's, given by
    :func:`msimaging.pipeline.plan_tasks`) is registered to MNI once per subject
    (:func:`msimaging.registration.subject_mni_transform`, under a file lock: the first task
    computes, concurrent ones wait and read) and saved as
    ``sub-<p>/anat/sub-<p>_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.txt``; another
    visit's T1w is registered to the reference (rigid, 3 mm) and that transform is written
    as ``..._from-<ses>T1w_to-T1w_mode-image_xfm.txt`` in the visit's anat folder.
    Returns ``(None, [])`` when no reference is known (a task planned without one): the
    visit is then registered to MNI on its own.
    """
    from msimaging import registration

    t1w = inputs["t1w"]
    reference = inputs.get("t1w_reference") or (t1w if first_visit else None)
    if reference is None:
        return None, []
    participant = session.participant_id
    path = writer.path(participant, None, "anat", "xfm", ".txt", mode="image",
                       **{"from": "MNI152NLin2009cAsym", "to": "T1w"})
    subject = registration.subject_mni_transform(
        reference, path, metadata={"Sources": writer.portable_sources([str(reference)])})
    same = Path(reference).resolve() == Path(t1w).resolve()
    to_mni, within = registration.visit_mni_transform(t1w, subject, reference,
                                                      same_image=same)
    outputs = [path]
    if within is not None:
        ref_session = _session_of(reference)
        label = f"{ref_session.replace('-', '')}T1w" if ref_session else "referenceT1w"
        within_path = writer.path(participant, session.session_id, "anat", "xfm", ".txt",
                                  mode="image", **{"from": label, "to": "T1w"})
        outputs.append(within.save(within_path, metadata={
            "Description": "The subject's reference T1w -> this visit's T1w (rigid, mutual "
                           "information); composed with the subject's MNI transform",
            "Sources": writer.portable_sources([str(reference), str(t1w)])}))
    return to_mni, outputs


def _session_of(path: Any) -> str | None:
    """``ses-M0`` from a BIDS file name, or None."""
    for part in Path(path).name.split("_"):
        if part.startswith("ses-"):
            return part
    return None


def _run_fmri(session, inputs, writer, params, first_visit: bool) -> list[Path]:
    from msimaging.bids import parse_entities
    from msimaging.fmri import connectivity, extract_timeseries

    atlas = params["atlas"]
    series = extract_timeseries(
        inputs["bold_preproc"], str(inputs.get("atlas", atlas)),
        confounds=inputs.get("confounds"), strategy=params["strategy"],
        mask=inputs.get("bold_mask"),
    )
    conn = connectivity(series, kind=params["kind"], fisher_z=True)
    # Output names carry the input run's real task- (a task-fa run is not "rest").
    task = parse_entities(inputs["bold_preproc"]).get("task")
    path = conn.save(writer, atlas=_atlas_label(atlas), task=task,
                     participant_id=session.participant_id, session_id=session.session_id)
    return [path]


def _atlas_label(atlas: str) -> str:
    """``seitzman2018`` -> ``Seitzman2018``; a label image: its ``atlas-`` entity, else the
    letters and digits of its file name."""
    import re

    name = Path(atlas).name
    if name != atlas or name.endswith((".nii", ".nii.gz", ".mgz")):
        stem = name.split(".")[0]
        entities = dict(p.split("-", 1) for p in stem.split("_") if "-" in p)
        label = re.sub(r"[^A-Za-z0-9]", "", entities.get("atlas") or stem)
        return label[:1].upper() + label[1:]
    return atlas.capitalize().replace("_", "")


def _run_volumetry(session, inputs, writer, params, first_visit: bool) -> list[Path]:
    from msimaging.errors import InputError
    from msimaging.volumetry import volumetry_session

    if "dseg" not in inputs:
        raise InputError(
            f"{session.participant_id} {session.session_id or ''}: volumetry needs a label "
            "image (dseg: FreeSurfer/SynthSeg/SAMSEG aseg, fMRIPrep or FAST); probability maps "
            "alone give no lesion locations. Found only "
            f"{', '.join(k for k in inputs if k.startswith('probseg'))}."
        )
    result = volumetry_session(
        inputs["dseg"], inputs["lesion_mask"], labels=_labels(inputs, params),
        participant_id=session.participant_id, session_id=session.session_id, writer=writer,
    )
    return list(result.outputs.values())


_RUNNERS = {"dti": _run_dti, "fmri": _run_fmri, "volumetry": _run_volumetry}
