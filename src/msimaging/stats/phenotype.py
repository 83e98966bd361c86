"""Clinical and laboratory tables from a BIDS dataset's ``phenotype/`` folder, as tidy rows.

BIDS keeps per-visit assessments in ``phenotype/<name>.tsv`` (one row per participant and
session) with a ``<name>.json`` data dictionary (``LongName``, ``Units``, ``Description``).
:func:`read_phenotype` turns every numeric column into tidy rows ``participant_id, session_id,
months, measure, value, unit, long_name, table`` — the shape :func:`compare_visits` takes, the
same as the imaging tables.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from msimaging.derivatives import read_table
from msimaging.errors import InputError, MSImagingWarning
from msimaging.io import check_input_file

__all__ = ["read_phenotype"]

_ID_COLUMNS = ("participant_id", "session_id", "months", "acq_time", "age", "sex")


def _months_from_sessions(root: Path) -> dict[tuple[str, str], float]:
    from msimaging.bids import Study

    try:
        sessions = Study(root).sessions
    except Exception:  # no sessions known: months must come from the phenotype table
        return {}
    return {
        (str(r.participant_id), str(r.session_id)): float(r.months)
        for r in sessions.itertuples()
        if r.months is not None and np.isfinite(r.months)
    }


def _drop_duplicate_rows(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Drop exact repeats of a participant/session row (warning); conflicting ones are errors."""
    # Visits are told apart by session_id, or by months in a table without sessions.
    keys = ["participant_id", "session_id", *(["months"] if "months" in df.columns else [])]
    repeated = df.duplicated(keys, keep=False)
    if not repeated.any():
        return df
    exact = df.duplicated(keep="first")
    conflicting = df[repeated].drop_duplicates().duplicated(keys, keep=False)
    if conflicting.any():
        rows = df[repeated].drop_duplicates()
        pairs = rows[conflicting][keys[:2]].drop_duplicates().to_numpy().tolist()
        shown = ", ".join(f"{p}/{s}" for p, s in pairs[:5])
        raise InputError(
            f"phenotype table {str(path)!r} has several rows with different values for "
            f"participant/session {shown}{' ...' if len(pairs) > 5 else ''}; keep one row per "
            "participant and session (add a session_id column if these are different visits)."
        )
    pairs = df[exact][keys[:2]].to_numpy().tolist()
    warnings.warn(
        f"phenotype table {str(path)!r} repeats identical rows for participant/session "
        f"{', '.join(f'{p}/{s}' for p, s in pairs[:5])}{' ...' if len(pairs) > 5 else ''}; "
        "each was counted once.",
        MSImagingWarning,
        stacklevel=3,
    )
    return df[~exact].reset_index(drop=True)


def read_phenotype(
    bids_root: str | os.PathLike[str],
    tables: list[str] | None = None,
) -> pd.DataFrame:
    """Read ``phenotype/*.tsv`` into tidy rows.

    Parameters
    ----------
    bids_root : path
        The BIDS dataset.
    tables : list of str, optional
        Table names (file stems) to read; default: all.

    Returns
    -------
    pandas.DataFrame
        participant_id, session_id, months, measure, value, unit, long_name, table. Months come
        from the table's ``months`` column, else from the dataset's sessions. Non-numeric
        columns are left out with a warning naming them (``attrs["skipped"]``).
    """
    root = Path(bids_root)
    folder = root / "phenotype"
    if not folder.is_dir():
        raise InputError(
            f"{str(folder)!r} does not exist: the dataset has no phenotype tables. Put clinical "
            "tables there as <name>.tsv (+ <name>.json), one row per participant and session."
        )
    paths = sorted(folder.glob("*.tsv"))
    if tables is not None:
        paths = [p for p in paths if p.stem in set(tables)]
        missing = set(tables) - {p.stem for p in paths}
        if missing:
            raise InputError(f"phenotype tables not found: {', '.join(sorted(missing))}.")
    if not paths:
        raise InputError(f"{str(folder)!r} has no .tsv tables.")
    months_lookup = None
    rows, skipped = [], []
    for path in paths:
        check_input_file(path, f"phenotype table {str(path)!r}")
        df = read_table(path, dtype={"participant_id": str, "session_id": str})
        if "participant_id" not in df.columns:
            raise InputError(
                f"{str(path)!r} has no participant_id column; the first column of a BIDS "
                "phenotype table must be participant_id (sub-<label>)."
            )
        if "session_id" not in df.columns:
            df["session_id"] = "n/a"
        df = _drop_duplicate_rows(df, path)
        dictionary = {}
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                dictionary = json.loads(sidecar.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"{str(sidecar)!r} is not valid JSON: {exc}.") from exc
        if "months" in df.columns:
            months = pd.to_numeric(df["months"], errors="coerce")
        else:
            if months_lookup is None:
                months_lookup = _months_from_sessions(root)
            months = pd.Series(
                [months_lookup.get((p, s), np.nan)
                 for p, s in zip(df["participant_id"], df["session_id"], strict=True)],
                index=df.index,
            )
        for column in df.columns:
            if column in _ID_COLUMNS:
                continue
            values = pd.to_numeric(df[column], errors="coerce")
            bad = values.isna() & df[column].notna()
            if values.isna().all() or bad.any():
                where = ""
                if bad.any() and not values[~bad].isna().all():
                    # A mostly numeric outcome: name the cells that are not numbers.
                    cells = [f"{df['participant_id'].iloc[i]}/{df['session_id'].iloc[i]}: "
                             f"{df[column].iloc[i]!r}" for i in np.flatnonzero(bad)[:5]]
                    where = (f" (non-numeric value(s) {'; '.join(cells)}"
                             f"{' ...' if bad.sum() > 5 else ''}: fix them in {str(path)!r}, "
                             "writing n/a for a missing value)")
                skipped.append(f"{path.stem}.{column}{where}")
                continue
            info = dictionary.get(column, {}) if isinstance(dictionary, dict) else {}
            info = info if isinstance(info, dict) else {}
            rows.append(pd.DataFrame({
                "participant_id": df["participant_id"].to_numpy(),
                "session_id": df["session_id"].to_numpy(),
                "months": months.to_numpy(),
                "measure": column,
                "value": values.to_numpy(float),
                "unit": str(info.get("Units", "n/a")),
                "long_name": str(info.get("LongName", column)),
                "table": path.stem,
            }))
    if skipped:
        warnings.warn(
            f"non-numeric phenotype columns left out of the tidy table: {', '.join(skipped)}",
            MSImagingWarning,
            stacklevel=2,
        )
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["participant_id", "session_id", "months", "measure", "value", "unit",
                 "long_name", "table"])
    out.attrs["skipped"] = skipped
    return out
