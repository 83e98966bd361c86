"""One visit's volumetry: tissue volumes, lesion table and lesion load, written as derivatives.

:func:`volumetry_session` is what the demo and the pipeline run per (subject, visit); lesion
tracks across visits (:func:`msimaging.volumetry.match_lesions`) are a per-subject step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from msimaging.errors import InputError
from msimaging.io import ImageLike, describe
from msimaging.segmentation import resolve_convention
from msimaging.volumetry.lesions import lesion_load, lesion_table
from msimaging.volumetry.tissue import tissue_volumes

__all__ = ["VolumetrySession", "volumetry_session"]

#: Classes the lesion location rules need (see :mod:`msimaging.volumetry.lesions`).
_LOCATION_CLASSES = ("lateral_ventricles", "cortical_gm", "brainstem", "cerebellum")


@dataclass(frozen=True)
class VolumetrySession:
    """Results of :func:`volumetry_session`.

    Attributes
    ----------
    participant_id, session_id : str or None
    volumes : pandas.DataFrame
        :func:`tissue_volumes` rows.
    lesions : pandas.DataFrame
        :func:`lesion_table` rows (one per lesion).
    load : pandas.DataFrame
        :func:`classify_lesions` rows (per class and total).
    seconds : float
        Wall time.
    outputs : dict
        Paths written, by kind (empty without a writer).
    """

    participant_id: str | None
    session_id: str | None
    volumes: pd.DataFrame
    lesions: pd.DataFrame
    load: pd.DataFrame
    seconds: float
    outputs: dict[str, Path] = field(default_factory=dict)

    def __repr__(self) -> str:
        total = self.load.set_index("location").loc["total"]
        return (
            f"VolumetrySession({self.participant_id}, {self.session_id}, "
            f"lesions={int(total['count'])}, lesion_volume_ml={total['volume_ml']:.2f}, "
            f"seconds={self.seconds:.2f})"
        )

    def _repr_html_(self) -> str:
        return (
            f"<p><b>{self!r}</b></p>"
            + self.load.to_html(index=False, escape=True)
            + self.volumes.to_html(index=False, escape=True)
        )


def volumetry_session(
    seg: ImageLike,
    lesion_mask: ImageLike,
    *,
    labels: Any = None,
    participant_id: str | None = None,
    session_id: str | None = None,
    writer: Any = None,
    **lesion_options: Any,
) -> VolumetrySession:
    """Tissue volumes, lesion table and lesion load of one visit.

    Parameters
    ----------
    seg : image
        Label image (see :func:`tissue_volumes` for conventions). With a GM/WM/CSF-only
        convention (FSL FAST, fMRIPrep ``dseg``) lesions get location ``"unknown"`` (the
        rules need ventricles, cortex, brainstem and cerebellum) and the sidecar says so.
    lesion_mask : image
        Lesion mask on the segmentation's grid.
    labels : str, LabelConvention or mapping, optional
        Label convention of ``seg``. Default: from the dataset (the segmentation's BIDS
        ``dseg.tsv``, else detected from its values, else an error listing them; see
        :func:`msimaging.segmentation.resolve_convention`). Explicit labels win.
    participant_id, session_id : str, optional
        Copied into every row; ``participant_id`` is required with a writer.
    writer : DerivativesWriter, optional
        Writes ``anat/..._desc-tissue_volumes.tsv``, ``..._desc-lesions_lesions.tsv`` and
        ``..._desc-load_lesions.tsv`` with sidecars naming the inputs and parameters.
    **lesion_options
        Passed to :func:`lesion_table` (connectivity, min_size, contact_mm, order, ...).

    Returns
    -------
    VolumetrySession
    """
    started = time.perf_counter()
    # Resolve the convention once (table read or detection), then share it.
    labels = resolve_convention(seg, labels)
    volumes = tissue_volumes(
        seg, lesion_mask, labels=labels, participant_id=participant_id, session_id=session_id,
        lesion_threshold=lesion_options.get("threshold"),
    )
    # GM/WM/CSF-only conventions (FAST, fMRIPrep dseg) cannot place lesions: the table then
    # says "unknown" rather than failing the visit or guessing.
    locations = labels.has(*_LOCATION_CLASSES)
    lesions = lesion_table(
        lesion_mask, seg, labels=labels, participant_id=participant_id, session_id=session_id,
        locations=locations, **lesion_options,
    )
    load = lesion_load(lesions, volumes, participant_id=participant_id, session_id=session_id)
    outputs: dict[str, Path] = {}
    if writer is not None:
        if participant_id is None:
            raise InputError("participant_id is required to write derivatives (writer=...).")
        sources = [describe(seg, "seg"), describe(lesion_mask, "lesion_mask")]
        parameters = {
            "LabelConvention": labels.name,
            "LabelConventionSource": labels.source,
            "LesionLocations": "derived" if locations else (
                "not derived: the segmentation has no "
                f"{'/'.join(c for c in _LOCATION_CLASSES if not labels.has(c))} label"
            ),
            **{k: v for k, v in lesion_options.items() if v is not None},
        }
        for key, df, suffix, desc, text in (
            ("volumes", volumes, "volumes", "tissue", "Tissue volumes in mL (hard labels)"),
            ("lesions", lesions, "lesions", "table", "One row per lesion"),
            ("load", load, "lesions", "load", "Lesion count, volume and load per class"),
        ):
            outputs[key] = writer.write_table(
                df, participant_id, session_id, "anat", suffix, desc=desc,
                sidecar={"Description": text, "Sources": sources, "Parameters": parameters},
            )
    return VolumetrySession(
        participant_id, session_id, volumes, lesions, load, time.perf_counter() - started,
        outputs,
    )
