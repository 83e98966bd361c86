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
        df = read_table(path, dtype={"participant_id": str, "session_id": str})
        if "participant_id" not in df.columns:
            raise InputError(f"{str(path)!r} has no participant_id column.")
        if "session_id" not in df.columns:
            df["session_id"] = "n/a"
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
            if values.isna().all() or (values.isna() & df[column].notna()).any():
                skipped.append(f"{path.stem}.{column}")
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
