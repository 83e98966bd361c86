"""Participant level on Dask: plan the tasks, run them, record failures, logs and a summary.

Execution (:func:`run_participant`):

* ``scheduler="tcp://host:8786"``: an existing Dask cluster (e.g. from dask-jobqueue on
  SLURM/PBS, see the README);
* ``n_workers=1``: in this process, one task after the other (no cluster);
* otherwise an embedded :class:`distributed.LocalCluster` of ``n_workers`` single-threaded
  worker processes (default: one per core, at most the number of tasks).

Tasks never raise (:func:`msimaging.pipeline.tasks.run_task`); a worker that dies (killed, out
of memory) is recorded as a failure of its task too. Every run writes
``logs/<timestamp>_participant.log`` and ``failures.tsv`` (empty when all succeeded) and
``group/participant_tasks.tsv`` (one row per task: status, time, peak memory).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from msimaging.derivatives import (
    DerivativesLayout,
    DerivativesWriter,
    OutputLock,
    atomic_write_text,
    check_output_links,
    remove_temp_files,
)
from msimaging.errors import BIDSError, InputError, LabelError, MSImagingWarning, OutputError
from msimaging.pipeline.tasks import MODALITIES, Task, TaskOutcome, is_up_to_date, run_task

__all__ = ["ParticipantRun", "check_labels", "check_scheduler", "plan_tasks", "prepare_output",
           "resolve_output", "run_participant"]

_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_FAILURE_COLUMNS = ["participant_id", "session_id", "modality", "error_type", "message"]
_PRIORITY = {"dti": 2, "fmri": 1, "volumetry": 0}


@dataclass(frozen=True)
class ParticipantRun:
    """Result of :func:`run_participant`."""

    tasks: pd.DataFrame
    failures: pd.DataFrame
    log: Path
    seconds: float
    n_workers: int

    @property
    def ok(self) -> bool:
        return self.failures.empty

    def summary(self) -> pd.DataFrame:
        """Tasks per modality and status."""
        if self.tasks.empty:
            return pd.DataFrame(columns=["modality", "status", "tasks"])
        return (self.tasks.groupby(["modality", "status"]).size().rename("tasks")
                .reset_index())

    def __repr__(self) -> str:
        counts = self.tasks["status"].value_counts().to_dict() if len(self.tasks) else {}
        return (f"ParticipantRun({len(self.tasks)} tasks {counts}, {self.seconds:.0f} s, "
                f"{self.n_workers} workers)")


def check_labels(labels: Iterable[str] | None, what: str, prefix: str) -> list[str] | None:
    """Validate BIDS labels (alphanumeric), accepting them with or without the prefix."""
    if labels is None:
        return None
    out = []
    for label in labels:
        raw = str(label)
        bare = raw.removeprefix(prefix)
        if not _LABEL.fullmatch(bare):
            raise LabelError(
                f"{what} {raw!r} is not a valid BIDS label: labels are letters and digits only "
                f"(e.g. '01' or '{prefix}01'), so that no path outside the output folder can "
                "ever be written."
            )
        out.append(f"{prefix}{bare}")
    return out


def _check_known(asked: list[str] | None, found: Sequence[str], what: str, bids_dir) -> None:
    """Every asked label must exist: a partly unknown list is an error naming the unknown."""
    if not asked:
        return
    missing = [label for label in asked if label not in set(found)]
    if missing:
        shown = ", ".join(sorted(set(found), key=str)[:30])
        raise LabelError(
            f"{what}(s) {', '.join(missing)} not found in {bids_dir} (of {', '.join(asked)} "
            f"asked); the dataset has {shown}. Check the spelling, or leave them out."
        )


def plan_tasks(
    bids_dir: str | os.PathLike[str],
    *,
    participant_label: Sequence[str] | None = None,
    session_label: Sequence[str] | None = None,
    modalities: Sequence[str] = tuple(MODALITIES),
    params: dict[str, Any] | None = None,
    filters: dict[str, dict[str, str | None]] | None = None,
    study: Any = None,
) -> list[Task]:
    """Tasks for the selected subjects, sessions and modalities (in study order), each with
    its input files resolved from one scan of the dataset.

    Parameters
    ----------
    bids_dir : path
        The BIDS dataset.
    participant_label, session_label : sequence of str, optional
        Labels with or without ``sub-``/``ses-``. Every one must exist (a session label must
        exist for at least one selected participant).
    modalities : sequence of {"dti", "fmri", "volumetry"}
    params : dict, optional
        Per-modality parameters (the fMRI atlas and confound strategy decide inputs).
    filters : dict, optional
        Input filters ``{"dwi": {"dir": "AP"}, "bold": {"task": "rest"}}`` (see
        :mod:`msimaging.pipeline.inputs`).
    study : msimaging.bids.Study, optional
        An already scanned study of ``bids_dir`` (else it is scanned here, once).

    Raises
    ------
    LabelError
        Invalid or unknown participant/session labels.
    InputChoiceError
        Several files match an input at some visit, a filter matches nothing, or BOLD runs are
        not in the atlas's space: listed together, before any task runs.
    """
    from msimaging.bids import Study
    from msimaging.pipeline.inputs import (
        InputChoiceError,
        InputNotFoundError,
        check_filters_match,
        resolve_inputs,
    )
    from msimaging.pipeline.tasks import effective_params

    for modality in modalities:
        if modality not in MODALITIES:
            raise InputError(
                f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}."
            )
    participants = check_labels(participant_label, "participant label", "sub-")
    sessions = check_labels(session_label, "session label", "ses-")
    if study is None:
        study = Study(bids_dir)
    _check_known(participants, [s.participant_id for s in study], "participant", bids_dir)
    chosen = [s for s in study if participants is None or s.participant_id in participants]
    _check_known(sessions, [str(s.session_id) for s in chosen], "session", bids_dir)
    filters = filters or {}
    check_filters_match(study, filters)
    first = {}
    for s in study:  # earliest visit of each subject, over all its visits
        if s.participant_id not in first or s.months < first[s.participant_id].months:
            first[s.participant_id] = s
    # The atlas is checked once (a known name in canonical form, or a readable label image)
    # also when run_participant is called from Python, where no CLI check ran.
    atlas = None
    if "fmri" in modalities:
        from msimaging.pipeline.options import check_atlas

        atlas = check_atlas(effective_params("fmri", params)["atlas"],
                            where="params['fmri']['atlas']")
    tasks, problems, empty = [], [], []
    for s in chosen:
        if sessions is not None and s.session_id not in sessions:
            continue
        if not any(s.files.values()):  # e.g. a subject folder with no session and no file
            empty.append(f"{s.participant_id} {s.session_id or ''}".strip())
            continue
        for modality in modalities:
            settings = effective_params(modality, params)
            inputs, error = {}, ""
            try:
                inputs = resolve_inputs(s, modality, filters=filters,
                                        atlas=atlas if modality == "fmri" else None,
                                        params=settings)
            except InputNotFoundError as exc:
                error = str(exc)
            except InputChoiceError as exc:
                problems.append(f"{modality}: {exc}")
            tasks.append(Task(s.participant_id, s.session_id, modality,
                              tuple((k, str(v)) for k, v in inputs.items()),
                              first[s.participant_id].session_id == s.session_id, error))
    # DTI registers one T1w per subject to MNI (its first planned visit's, first visits
    # before others) and the other visits to it: that reference is an input of every DTI
    # task of the subject, so its provenance changes with it (issue 19).
    from dataclasses import replace

    references: dict[str, str] = {}
    for t in sorted(tasks, key=lambda t: not t.first_visit):
        if t.modality == "dti" and dict(t.inputs).get("t1w"):
            references.setdefault(t.participant_id, dict(t.inputs)["t1w"])
    tasks = [replace(t, inputs=(*t.inputs, ("t1w_reference", references[t.participant_id])))
             if t.modality == "dti" and dict(t.inputs).get("t1w") else t for t in tasks]
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InputChoiceError(
            f"inputs cannot be chosen at {len(problems)} task(s){more}, nothing was run:\n  "
            + "\n  ".join(problems[:10])
        )
    if not tasks:
        raise BIDSError(
            f"no session of {bids_dir} matches participant {participant_label} and session "
            f"{session_label}" + (f" with any file ({', '.join(empty)} have none)" if empty
                                  else "") + "."
        )
    if empty:
        warnings.warn(
            f"{', '.join(empty)} in {bids_dir} ha{'s' if len(empty) == 1 else 've'} no data "
            "file (no session folder, or empty ones): skipped. Add the data, or remove the "
            "empty folder(s).", MSImagingWarning, stacklevel=2)
    if study.problems:
        more = f" (and {len(study.problems) - 5} more)" if len(study.problems) > 5 else ""
        warnings.warn(
            f"{len(study.problems)} problem(s) in {bids_dir}{more}: "
            + "; ".join(study.problems[:5]), MSImagingWarning, stacklevel=2)
    return tasks


def check_scheduler(scheduler: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast, naming ``--scheduler``, when the Dask scheduler's address is malformed or
    nothing answers there (instead of a raw ``distributed`` traceback after 30 s)."""
    import socket

    from msimaging.pipeline.options import ConfigError

    if scheduler is None:
        return
    how = ("Give the address the scheduler printed (e.g. tcp://10.0.0.5:8786), or leave "
           "--scheduler out to use an embedded cluster.")
    match = re.fullmatch(r"(?:(tcp|tls)://)?\[?([A-Za-z0-9_.:-]+?)\]?:(\d{1,5})/?",
                         scheduler.strip())
    if match is None:
        if re.fullmatch(r"(inproc|ucx|ws|wss)://\S+", scheduler.strip()):
            return  # other transports: let distributed check them
        raise ConfigError(f"--scheduler {scheduler!r} is not a scheduler address. {how}")
    host, port = match[2], int(match[3])
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--scheduler {scheduler!r}: no Dask scheduler answers at {host}:{port} ({exc}). "
            f"Start it (dask scheduler), check the host and port and the firewall. {how}"
        ) from exc


def resolve_output(output_dir: str | os.PathLike[str]) -> Path:
    """The output folder with every link resolved; a symbolic link loop is an OutputError."""
    try:
        return Path(output_dir).resolve()
    except (OSError, RuntimeError) as exc:
        raise OutputError(
            f"output_dir {os.fspath(output_dir)!r} cannot be resolved: {exc}. Remove the "
            "symbolic link loop, or choose another output folder."
        ) from exc


def prepare_output(output: Path, bids_dir, *, what: str, wait: bool | float,
                   logger: logging.Logger | None = None) -> OutputLock:
    """Before a run writes anything: refuse links into the input, take the folder's lock
    and remove the temporary files of a killed run (see :class:`OutputLock`)."""
    check_output_links(output, [bids_dir])
    lock = OutputLock(output, what=what, wait=wait).acquire()
    try:
        removed = remove_temp_files(output)
    except BaseException:
        lock.release()
        raise
    if removed:
        message = (f"removed {len(removed)} temporary file(s) a killed run left in {output} "
                   f"(e.g. {removed[0]})")
        if logger is not None:
            logger.warning(message)
        warnings.warn(message, MSImagingWarning, stacklevel=3)
    return lock


def _logger(output: Path, level: str) -> tuple[logging.Logger, Path]:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = DerivativesLayout(output).logs_dir / f"{stamp}_{level}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"Cannot create the log folder {str(path.parent)!r}: {exc}. Remove or rename "
            "what is in the way (a file named 'logs'?), or choose another output folder."
        ) from exc
    logger = logging.getLogger(f"msimaging.run.{stamp}.{level}")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    return logger, path


def _client(scheduler: str | None, n_workers: int):
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler, timeout="30s"), None
    import dask

    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which also switches off
    # glibc's dynamic mmap threshold: every array over 128 kB is then mmap'ed and unmapped
    # again, paying its page faults at each allocation. Our tasks allocate large temporary
    # arrays all the time: a DTI visit took 8.7-9.0 s with it against 6.4-7.0 s without,
    # in the same process setting. The workers keep the other variables (one BLAS thread);
    # None unsets a variable in Dask's configuration. The nanny writes these variables into
    # our own process's environment before spawning (where they would then reach the group
    # level's joblib workers): the environment is put back as it was.
    before = dict(os.environ)
    try:
        with dask.config.set(
            {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
        ):
            cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True,
                dashboard_address=None, memory_limit=0, silence_logs=logging.ERROR,
            )
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        os.environ.update(before)
    return Client(cluster), cluster


def run_participant(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    participant_label: Sequence[str] | None = None,
    session_label: Sequence[str] | None = None,
    modalities: Sequence[str] = tuple(MODALITIES),
    params: dict[str, Any] | None = None,
    n_workers: int | None = None,
    scheduler: str | None = None,
    force: bool = False,
    progress: bool = True,
    filters: dict[str, dict[str, str | None]] | None = None,
    study: Any = None,
    wait: bool | float = False,
) -> ParticipantRun:
    """Run the participant level: every (subject, visit, modality) task, resumably.

    Parameters
    ----------
    bids_dir : path
        BIDS dataset (raw + derivatives such as fMRIPrep and a segmentation).
    output_dir : path
        The msimaging derivatives folder (never inside ``bids_dir``).
    participant_label, session_label : sequence of str, optional
        Labels with or without ``sub-``/``ses-``; letters and digits only.
    modalities : sequence of {"dti", "fmri", "volumetry"}
    params : dict, optional
        Per-modality parameters, e.g. ``{"fmri": {"atlas": "power2011"}}``; part of the
        provenance, so changing them recomputes.
    n_workers : int, optional
        Worker processes of the embedded cluster (default: CPU count); 1 runs in-process.
    scheduler : str, optional
        Address of an existing Dask scheduler; overrides ``n_workers``.
    force : bool
        Recompute tasks whose outputs are up to date.
    progress : bool
        Show a progress bar (tqdm) on stderr.
    filters : dict, optional
        Input filters when a visit has several files of a kind, e.g.
        ``{"dwi": {"dir": "AP"}}`` (see :mod:`msimaging.pipeline.inputs`).
    study : msimaging.bids.Study, optional
        The dataset already scanned (e.g. by the command line's checks); else scanned here.
    wait : bool or float
        When another run holds the output folder's lock: False refuses (OutputError naming
        it), True waits for it, a number waits at most that many seconds.

    Returns
    -------
    ParticipantRun

    Raises
    ------
    OutputError
        The output folder is inside the input, has a link into it, cannot be written, or
        another run holds its lock. A lock left by a killed run is taken over (with an
        MSImagingWarning) and the temporary files such a run left are removed.
    """
    from msimaging.pipeline.options import ConfigError

    if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int)
                                  or n_workers < 1):
        raise ConfigError(f"--n-workers/n_workers must be a whole number >= 1, got "
                          f"{n_workers!r}.")
    check_scheduler(scheduler)
    started = time.perf_counter()
    output = resolve_output(output_dir)
    # Everything is checked (labels, inputs, spaces) before the output folder is touched
    # and before any cluster starts; the dataset is scanned once, here.
    tasks = plan_tasks(bids_dir, participant_label=participant_label,
                       session_label=session_label, modalities=modalities, params=params,
                       filters=filters, study=study)
    DerivativesWriter(output, input_datasets=[bids_dir])  # refuses output inside the input
    lock = prepare_output(output, bids_dir, what="participant", wait=wait)
    try:
        return _run_locked(tasks, bids_dir, output, params, force, scheduler, n_workers,
                           progress, started)
    finally:
        lock.release()


def _run_locked(tasks, bids_dir, output, params, force, scheduler, n_workers, progress,
                started) -> ParticipantRun:
    logger, log_path = _logger(output, "participant")
    skipped = [] if force else [t for t in tasks if is_up_to_date(t, output, params)]
    done = set(skipped)
    todo = [t for t in tasks if t not in done]
    n_workers = max(1, min(n_workers or os.cpu_count() or 1, max(len(todo), 1)))
    logger.info("msimaging participant level: %d tasks (%d up to date), %s", len(tasks),
                len(skipped), f"scheduler {scheduler}" if scheduler else f"{n_workers} workers")
    bar = _progress(len(tasks), progress)
    outcomes: list[TaskOutcome] = []

    def finished(outcome: TaskOutcome) -> None:
        outcomes.append(outcome)
        level = logging.ERROR if outcome.status == "failed" else logging.INFO
        logger.log(level, "%s %s %s: %s in %.1f s (peak %.0f MB)%s",
                   outcome.participant_id, outcome.session_id, outcome.modality,
                   outcome.status, outcome.seconds, outcome.peak_rss_mb,
                   f" - {outcome.error_type}: {outcome.message}" if outcome.error_type else "")
        if outcome.details:
            logger.error(outcome.details)
        bar.set_postfix_str(f"{outcome.participant_id} {outcome.session_id} "
                            f"{outcome.modality} {outcome.status}", refresh=False)
        bar.update(1)

    for task in skipped:
        finished(TaskOutcome(task.participant_id, task.session_id, task.modality, "skipped"))
    if todo and scheduler is None and n_workers == 1:
        for task in todo:
            finished(run_task(task, bids_dir, output, params, force=force))
    elif todo:
        _run_on_dask(todo, bids_dir, output, params, force, scheduler, n_workers, finished)
    bar.close()
    _remove_subject_locks(output)
    table = pd.DataFrame([o.row() for o in outcomes])
    # Keys without NaN: a visit of a subject without sessions has session_id None.
    order = {(t.participant_id, t.session_id or "", t.modality): k
             for k, t in enumerate(tasks)}
    table["_order"] = [order[(r.participant_id, r.session_id if isinstance(r.session_id, str)
                              else "", r.modality)] for r in table.itertuples()]
    table = table.sort_values("_order").drop(columns="_order").reset_index(drop=True)
    failures = table.loc[table["status"] == "failed", _FAILURE_COLUMNS].reset_index(drop=True)
    atomic_write_text(DerivativesLayout(output).failures,
                      failures.to_csv(sep="\t", index=False, na_rep="n/a"))
    writer = DerivativesWriter(output, input_datasets=[bids_dir])
    writer.write_group_table(table, "participant_tasks",
                             sidecar={"Description": "Participant-level tasks of the last run",
                                      "Log": str(log_path)})
    seconds = time.perf_counter() - started
    logger.info("finished in %.1f s: %s", seconds, table["status"].value_counts().to_dict())
    # Warnings raised inside the workers (e.g. a missing atlas lookup) are recorded per task;
    # say so once here, in the main process, or nobody sees them.
    warned = table[(table["status"] == "done") & (table["message"].fillna("") != "")]
    if len(warned):
        first = warned.iloc[0]
        said = (f"{len(warned)} of {int((table['status'] == 'done').sum())} finished tasks "
                f"raised warnings (all of them in group/participant_tasks.tsv, column "
                f"'message'); the first: {first['participant_id']} {first['session_id']} "
                f"{first['modality']}: {str(first['message'])[:300]}")
        logger.warning(said)
        warnings.warn(said, MSImagingWarning, stacklevel=2)
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    return ParticipantRun(table, failures, log_path, seconds,
                          0 if scheduler else n_workers)


def _remove_subject_locks(output: Path) -> None:
    """The lock files of the subjects' MNI registrations
    (:func:`msimaging.registration.subject_mni_transform`): every task has ended and this run
    holds the output folder's lock, so nobody waits on them any more."""
    from msimaging.registration import subject_lock_path

    for transform in output.glob("sub-*/anat/*_xfm.txt"):
        try:
            subject_lock_path(transform).unlink(missing_ok=True)
        except OSError:  # not ours to remove: harmless, it only serialises registrations
            continue


def _run_on_dask(tasks, bids_dir, output, params, force, scheduler, n_workers, finished):
    from distributed import as_completed

    client, cluster = _client(scheduler, n_workers)
    try:
        # Longest tasks first (DTI, then fMRI, then volumetry), so that the short ones fill
        # the workers at the end instead of one long task running alone.
        def priority(task: Task) -> int:
            # A subject's first DTI visit first: its other visits reuse its MNI registration
            # (they would wait for it on its lock).
            return _PRIORITY.get(task.modality, 0) + (task.modality == "dti" and task.first_visit)

        futures = {
            client.submit(run_task, task, str(bids_dir), str(output), params, force=force,
                          key=f"msimaging-{task.participant_id}-{task.session_id}-"
                              f"{task.modality}-{time.time_ns()}", pure=False,
                          priority=priority(task)): task
            # Submitted in priority order too: idle workers take tasks as they arrive, before
            # a later, higher-priority one is seen.
            for task in sorted(tasks, key=lambda t: -priority(t))
        }
        for future in as_completed(futures):
            task = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # the worker died (killed, out of memory, ...)
                outcome = TaskOutcome(task.participant_id, task.session_id, task.modality,
                                      "failed", error_type=type(exc).__name__,
                                      message=str(exc)[:2000])
            finished(outcome)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="participant tasks", unit="task", dynamic_ncols=True)
