"""Synthetic clinical outcomes of a longitudinal secondary-progressive MS study.

:func:`clinical_table` draws, for every participant and visit, disability (EDSS), fatigue
(FSS), cognition (PASAT, BVMT-R, SDMT) and serum cytokines (IL-10, IL-6) with planted trends
(:class:`ClinicalEffects`, all per month except the EDSS step), so the statistics layer has
known directions to find. :data:`CLINICAL_COLUMNS` documents every column (description, units,
range) for a BIDS phenotype JSON sidecar.

Model, per participant ``i`` and visit at ``m`` months (``m0`` = the first visit):

- EDSS: a baseline drawn uniformly from {4.5, 5.0, ..., 7.0}; every visit after the first
  adds ``edss_first_followup`` (a one-off step, then stable); kept on the 0.5 grid, 0–10;
- scores: ``baseline_i + slope * (m - m0) + noise``, with a subject baseline (between-subject
  SD) and visit noise (within-subject SD, times ``noise_scale``); PASAT, BVMT-R and SDMT are
  rounded to integers and FSS (mean of 9 items scored 1–7) to multiples of 1/9, all clipped to
  their ranges;
- cytokines: log-normal, ``log(value) = log(median_i) + log_slope * (m - m0) + noise``.

The default within-subject noise is small relative to six months of change, so the group
medians move in the planted direction from the first to the last visit for almost every seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from msimaging.errors import InputError

__all__ = [
    "CLINICAL_COLUMNS",
    "DEFAULT_CLINICAL_EFFECTS",
    "ClinicalEffects",
    "clinical_table",
]


@dataclass(frozen=True)
class ClinicalEffects:
    """Planted trends of the clinical outcomes (change per month unless stated).

    Parameters
    ----------
    edss_first_followup : float, default -0.5
        EDSS change at every visit after the first (a step at the first follow-up, then
        stable); a multiple of 0.5.
    fss_per_month : float, default -0.12
        Fatigue Severity Scale points per month (fatigue falls).
    pasat_per_month : float, default 1.0
        PASAT correct answers per month.
    bvmtr_per_month : float, default 0.5
        BVMT-R total recall points per month.
    sdmt_per_month : float, default 1.0
        SDMT correct answers per month.
    il10_log_per_month : float, default 0.05
        Change of ln(IL-10) per month (+5 %/month: anti-inflammatory IL-10 rises).
    il6_log_per_month : float, default -0.05
        Change of ln(IL-6) per month (pro-inflammatory IL-6 falls).
    noise_scale : float, default 1.0
        Multiplies every within-subject (visit-to-visit) noise SD; 0 gives exact trends.
    """

    edss_first_followup: float = -0.5
    fss_per_month: float = -0.12
    pasat_per_month: float = 1.0
    bvmtr_per_month: float = 0.5
    sdmt_per_month: float = 1.0
    il10_log_per_month: float = 0.05
    il6_log_per_month: float = -0.05
    noise_scale: float = 1.0


DEFAULT_CLINICAL_EFFECTS = ClinicalEffects()

#: Description, units and range of every column of :func:`clinical_table` (a BIDS phenotype
#: JSON sidecar: ``json.dump(CLINICAL_COLUMNS, fh)``).
CLINICAL_COLUMNS: dict[str, dict] = {
    "participant_id": {"Description": "Participant label (sub-<label>)."},
    "session_id": {"Description": "Session label (ses-<label>)."},
    "months": {
        "LongName": "Time since baseline",
        "Description": "Time of the visit since the first visit.",
        "Units": "months",
        "Range": [0, None],
    },
    "edss": {
        "LongName": "Expanded Disability Status Scale",
        "Description": "Kurtzke EDSS, 0 (normal) to 10 (death), in 0.5 steps; "
        "secondary-progressive MS here (4.0-7.0).",
        "Units": "score",
        "Range": [0.0, 10.0],
    },
    "fss": {
        "LongName": "Fatigue Severity Scale",
        "Description": "Mean of 9 items scored 1-7; higher is more fatigue.",
        "Units": "score",
        "Range": [1.0, 7.0],
    },
    "pasat": {
        "LongName": "Paced Auditory Serial Addition Test (3 s)",
        "Description": "Number of correct answers out of 60; higher is better.",
        "Units": "correct answers",
        "Range": [0, 60],
    },
    "bvmtr": {
        "LongName": "Brief Visuospatial Memory Test - Revised, total recall",
        "Description": "Sum of 3 learning trials (0-12 each); higher is better.",
        "Units": "score",
        "Range": [0, 36],
    },
    "sdmt": {
        "LongName": "Symbol Digit Modalities Test (oral)",
        "Description": "Number of correct substitutions in 90 s; higher is better.",
        "Units": "correct answers",
        "Range": [0, 110],
    },
    "il10_pg_ml": {
        "LongName": "Serum interleukin-10",
        "Description": "Serum IL-10 concentration (anti-inflammatory cytokine).",
        "Units": "pg/mL",
        "Range": [0.0, None],
    },
    "il6_pg_ml": {
        "LongName": "Serum interleukin-6",
        "Description": "Serum IL-6 concentration (pro-inflammatory cytokine).",
        "Units": "pg/mL",
        "Range": [0.0, None],
    },
}

# Score: (baseline mean, between-subject SD, within-subject SD, minimum, maximum).
_SCORES = {
    "fss": (5.0, 0.8, 0.2, 1.0, 7.0),
    "pasat": (38.0, 8.0, 1.5, 0, 60),
    "bvmtr": (20.0, 5.0, 0.8, 0, 36),
    "sdmt": (40.0, 8.0, 1.5, 0, 110),
}
# Cytokine: (population median pg/mL, between-subject log SD, within-subject log SD).
_CYTOKINES = {"il10_pg_ml": (3.0, 0.4, 0.08), "il6_pg_ml": (4.0, 0.4, 0.08)}
_EDSS_BASELINES = np.arange(4.5, 7.01, 0.5)


def _labels(name: str, values: Sequence[str]) -> list[str]:
    if isinstance(values, str):
        raise InputError(f"{name} must be a sequence of labels, not the single string {values!r}.")
    labels = [str(v) for v in values]
    if not labels:
        raise InputError(f"{name} is empty: pass at least one label.")
    if len(set(labels)) != len(labels):
        raise InputError(f"{name} has duplicate labels {labels}: each must be unique.")
    return labels


def clinical_table(
    participants: Sequence[str],
    sessions: Sequence[str],
    months: Sequence[float],
    rng: np.random.Generator | int | None = None,
    *,
    effects: ClinicalEffects = DEFAULT_CLINICAL_EFFECTS,
) -> pd.DataFrame:
    """Clinical outcomes for every participant and visit, with planted trends.

    Parameters
    ----------
    participants : sequence of str
        Participant labels, as written in the table (e.g. ``"sub-01"``).
    sessions : sequence of str
        Session labels (e.g. ``"ses-M0"``), the same for every participant.
    months : sequence of float
        Time of each session in months (same length as ``sessions``); trends are measured
        from the earliest.
    rng : numpy.random.Generator or int or None
        Random generator or seed.
    effects : ClinicalEffects, default DEFAULT_CLINICAL_EFFECTS
        The planted trends.

    Returns
    -------
    pandas.DataFrame
        One row per participant and session (participant-major, in the given orders), with the
        columns of :data:`CLINICAL_COLUMNS`: ``participant_id``, ``session_id``, ``months``,
        ``edss``, ``fss``, ``pasat``, ``bvmtr``, ``sdmt`` (integers), ``il10_pg_ml``,
        ``il6_pg_ml`` (2 decimals).

    Raises
    ------
    InputError
        If the labels are empty or duplicated, ``months`` does not match ``sessions`` or is not
        finite, or ``effects`` is not a :class:`ClinicalEffects`.
    """
    subjects = _labels("participants", participants)
    visits = _labels("sessions", sessions)
    months_arr = np.asarray(months, dtype=float).ravel()
    if months_arr.shape != (len(visits),) or not np.isfinite(months_arr).all():
        raise InputError(
            f"months must give one finite time (months) per session: {len(visits)} sessions "
            f"but months={list(np.asarray(months).ravel())}."
        )
    if not isinstance(effects, ClinicalEffects):
        raise InputError(
            f"effects must be a ClinicalEffects instance, got {type(effects).__name__}."
        )
    if not (np.isfinite(effects.noise_scale) and effects.noise_scale >= 0):
        raise InputError(f"effects.noise_scale must be >= 0, got {effects.noise_scale}.")
    rng = np.random.default_rng(rng)
    n_sub, n_vis = len(subjects), len(visits)
    elapsed = months_arr - months_arr.min()  # (n_vis,)
    follow_up = elapsed > 0
    noise = float(effects.noise_scale)

    table = pd.DataFrame(
        {
            "participant_id": np.repeat(subjects, n_vis),
            "session_id": np.tile(visits, n_sub),
            "months": np.tile(months_arr, n_sub),
        }
    )
    edss0 = rng.choice(_EDSS_BASELINES, size=(n_sub, 1))
    edss = edss0 + effects.edss_first_followup * follow_up[None, :]
    table["edss"] = np.clip(np.round(edss * 2.0) / 2.0, 0.0, 10.0).ravel()

    slopes = {
        "fss": effects.fss_per_month,
        "pasat": effects.pasat_per_month,
        "bvmtr": effects.bvmtr_per_month,
        "sdmt": effects.sdmt_per_month,
    }
    for column, (mean, between_sd, within_sd, low, high) in _SCORES.items():
        subject = mean + between_sd * rng.standard_normal((n_sub, 1))
        visit = noise * within_sd * rng.standard_normal((n_sub, n_vis))
        value = subject + slopes[column] * elapsed[None, :] + visit
        if column == "fss":
            value = np.round(np.clip(np.round(value * 9.0) / 9.0, low, high), 2)
        else:
            value = np.clip(np.rint(value), low, high).astype(np.int64)
        table[column] = value.ravel()

    log_slopes = {
        "il10_pg_ml": effects.il10_log_per_month,
        "il6_pg_ml": effects.il6_log_per_month,
    }
    for column, (median, between_sd, within_sd) in _CYTOKINES.items():
        log_value = (
            np.log(median)
            + between_sd * rng.standard_normal((n_sub, 1))
            + log_slopes[column] * elapsed[None, :]
            + noise * within_sd * rng.standard_normal((n_sub, n_vis))
        )
        # Two decimals, never below the 0.01 pg/mL display resolution.
        table[column] = np.maximum(np.round(np.exp(log_value), 2), 0.01).ravel()
    return table
