"""Group level: gather the participant outputs, run the group analyses, write the report.

:func:`run_group` reads what the participant level wrote (per-visit tables, connectomes),
concatenates it into study tables under ``group/``, tracks lesions across each subject's visits
(:func:`msimaging.volumetry.match_lesions`), runs the Network-Based Statistic on the first vs
the last visit (paired), and builds the HTML report (:func:`msimaging.report.build_report`).
It runs on whatever succeeded: visits listed in ``failures.tsv`` (or without outputs) are
left out, and ``group/excluded.tsv`` says which and why.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from msimaging.derivatives import (
    PARTICIPANT_OUTPUTS,
    DerivativesLayout,
    DerivativesWriter,
    read_table,
)
from msimaging.errors import InputError, MSImagingWarning

__all__ = ["GroupRun", "run_group"]

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

    def __repr__(self) -> str:
        return (f"GroupRun({len(self.tables)} tables, {len(self.excluded)} exclusions, "
                f"report={self.report})")


def _gather(output: Path, name: str) -> pd.DataFrame:
    frames = [read_table(p, dtype={"participant_id": str, "session_id": str})
              for p in DerivativesLayout(output).participant_outputs(name)]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_group(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    nbs_threshold_p: float = 0.001,
    nbs_tail: str = "both",
    n_permutations: int = 5000,
    report: bool = True,
    progress: bool = True,
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
        "right" tests an increase from the first to the last visit.
    n_permutations : int
        NBS permutations when the exact sign-flip enumeration is larger.
    report : bool
        Build ``report.html``.
    progress : bool
        Show progress of the NBS permutations.

    Returns
    -------
    GroupRun
    """
    from msimaging.bids import Study

    started = time.perf_counter()
    output = Path(output_dir).resolve()
    if not output.is_dir():
        raise InputError(
            f"output_dir {str(output)!r} does not exist: run the participant level first "
            "(msimaging BIDS_DIR OUTPUT_DIR participant)."
        )
    writer = DerivativesWriter(output, input_datasets=[bids_dir])
    study = Study(bids_dir)
    sessions = study.sessions[["participant_id", "session_id", "months"]]
    tables: dict[str, Path] = {
        "sessions": writer.write_group_table(
            sessions, "sessions", sidecar={"Description": "Sessions of the BIDS dataset"})
    }
    notes: list[str] = []
    excluded = _excluded(output, study)
    for name in _TABLES:
        frame = _gather(output, name)
        if not frame.empty:
            frame = frame.merge(sessions, on=["participant_id", "session_id"], how="left")
            tables[name] = writer.write_group_table(
                frame, name, sidecar={"Description": "All visits' "
                                      f"{PARTICIPANT_OUTPUTS[name]} tables"})
    tracks = _lesion_tracks(study, excluded, notes)
    if tracks is not None:
        tables["volumetry_lesion_tracks"] = writer.write_group_table(
            tracks, "volumetry_lesion_tracks",
            sidecar={"Description": "Lesion tracks across visits (match_lesions)"})
        _lesion_figure(tracks, output)
    nbs = _nbs(output, sessions, writer, tables, nbs_threshold_p, nbs_tail, n_permutations,
               progress, notes)
    tables["excluded"] = writer.write_group_table(
        excluded, "excluded",
        sidecar={"Description": "Visits and modalities left out of the group level"})
    report_path = None
    if report:
        from msimaging.report import build_report

        report_path = build_report(output, bids_dir=bids_dir)
    return GroupRun(tables, excluded, report_path, nbs, time.perf_counter() - started, notes)


def _excluded(output: Path, study) -> pd.DataFrame:
    rows = []
    failures = DerivativesLayout(output).failures
    if failures.is_file() and failures.stat().st_size:
        table = read_table(failures, dtype=str)
        for row in table.itertuples():
            rows.append({"participant_id": row.participant_id, "session_id": row.session_id,
                         "modality": row.modality,
                         "reason": f"failed: {row.error_type}: {row.message}"})
    return pd.DataFrame(rows, columns=["participant_id", "session_id", "modality", "reason"])


def _lesion_tracks(study, excluded: pd.DataFrame, notes: list[str]) -> pd.DataFrame | None:
    from msimaging.volumetry import match_lesions

    failed = {(r.participant_id, r.session_id) for r in excluded.itertuples()
              if r.modality == "volumetry"}
    frames = []
    for participant in sorted({s.participant_id for s in study}):
        masks = {}
        for session in study:
            if (session.participant_id != participant or not session.has("lesion_mask")
                    or (participant, session.session_id) in failed):
                continue
            masks[session.session_id] = session.get("lesion_mask")
        if len(masks) < 2:
            continue
        try:
            frames.append(match_lesions(masks, participant_id=participant))
        except InputError as exc:
            notes.append(f"{participant}: lesion tracks skipped ({exc})")
    return pd.concat(frames, ignore_index=True) if frames else None


def _lesion_figure(tracks: pd.DataFrame, output: Path) -> None:
    from msimaging.volumetry import plot_lesion_evolution

    plot_lesion_evolution(tracks, path=output / "figures" / "group_desc-lesionevolution.png")


def _nbs(output, sessions, writer, tables, threshold_p, tail, n_permutations, progress,
         notes):
    from msimaging.fmri import load_connectome, nbs_paired

    relmats = DerivativesLayout(output).participant_outputs("fmri_connectome")
    if not relmats:
        return None
    months = {(r.participant_id, r.session_id): r.months for r in sessions.itertuples()}
    by_subject: dict[str, dict[float, Path]] = {}
    for path in relmats:
        parts = path.name.split("_")
        key = (parts[0], parts[1])
        if key in months:
            by_subject.setdefault(key[0], {})[months[key]] = path
    visits = sorted({m for v in by_subject.values() for m in v})
    if len(visits) < 2:
        return None
    first, last = visits[0], visits[-1]
    pairs = [(v[first], v[last]) for v in by_subject.values() if first in v and last in v]
    if len(pairs) < 3:
        notes.append(f"NBS skipped: {len(pairs)} subjects have connectomes at months "
                     f"{first:g} and {last:g} (3 needed)")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        before = [load_connectome(a) for a, _ in pairs]
        after = [load_connectome(b) for _, b in pairs]
        result = nbs_paired(before, after, threshold_p=threshold_p, tail=tail,
                            n_permutations=n_permutations, progress=progress)
    label = f"M{first:g}M{last:g}"
    meta = {"Description": f"NBS components, paired month {first:g} vs {last:g}",
            "ThresholdP": threshold_p, "Tail": tail, "Patients": len(pairs),
            "SmallestAttainableP": result.smallest_p}
    tables["fmri_nbs_components"] = writer.write_group_table(
        result.components_frame(), "fmri_nbs_components", sidecar=meta)
    tables["fmri_nbs_edges"] = writer.write_group_table(
        result.to_frame(), "fmri_nbs_edges", sidecar=meta)
    if result.components:
        for style, suffix in (("adjacency", "adjacency"), ("connectogram", "connectogram"),
                              ("glass_brain", "glassbrain")):
            result.plot(style, path=output / "figures" / f"group_desc-nbs{label}_{suffix}.png")
    return result
