"""msimaging.pipeline — from a BIDS dataset to derivatives, study tables and the report.

- :func:`run_participant`: one task per (subject, visit, modality) on Dask (embedded
  LocalCluster, an existing scheduler, or in-process), resumable through provenance records,
  failures isolated and recorded in ``failures.tsv``.
- :func:`run_group`: study tables, lesion tracks, NBS (first vs last visit) and the report.
"""

from msimaging.pipeline.group import GroupRun, run_group
from msimaging.pipeline.run import ParticipantRun, check_labels, plan_tasks, run_participant
from msimaging.pipeline.tasks import MODALITIES, Task, TaskOutcome, run_task

__all__ = [
    "MODALITIES",
    "GroupRun",
    "ParticipantRun",
    "Task",
    "TaskOutcome",
    "check_labels",
    "plan_tasks",
    "run_group",
    "run_participant",
    "run_task",
]
