"""Compare visits on any tidy table, honestly at n = 5.

:func:`compare_visits` takes rows ``subject, visit, value`` (plus any columns that name the
measure: ``measure``, ``roi``, ``metric``, ...) from imaging tables (DTI, fMRI, volumetry) or
clinical and laboratory tables alike, and gives for every measure:

* per visit: n, median, quartiles (IQR), mean;
* per subject and visit: change and % change from the subject's baseline;
* Friedman across visits with an **exact** permutation p (:mod:`msimaging.stats.exact`), the
  chi-square p flagged as approximate, Kendall's W and the smallest p the design can give;
* pairwise exact Wilcoxon signed-rank tests (all pairs or each visit against baseline, one- or
  two-sided) with Holm's correction within the measure;
* Benjamini–Hochberg FDR across the family of measures;
* optionally a linear mixed model (statsmodels ``MixedLM``) with convergence and boundary
  diagnostics.

Subjects missing a visit are dropped from the exact tests (with a note; the mixed model keeps
them); duplicate rows, non-numeric values and a single visit are errors.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from msimaging.errors import DependencyError, InputError, MSImagingWarning
from msimaging.stats.exact import fdr_bh, friedman_exact, holm, wilcoxon_exact

__all__ = ["VisitComparison", "compare_visits"]

_MEASURE_COLUMNS = ("measure", "roi", "region", "metric", "tract", "location", "part",
                    "hemisphere")


@dataclass(frozen=True)
class VisitComparison:
    """Result of :func:`compare_visits` (all tables tidy, one row per measure [and visit]).

    Attributes
    ----------
    by : tuple of str
        Columns that identify a measure.
    summary : DataFrame
        Per measure and visit: n, median, q1, q3, iqr, mean.
    changes : DataFrame
        Per measure, subject and visit: value, baseline, change, pct_change.
    tests : DataFrame
        Per measure: n_subjects (complete cases), n_dropped, k_visits, friedman_q, p_exact,
        p_method, p_chi2_approx, kendall_w, smallest_p, p_fdr, significant, note.
    posthoc : DataFrame
        Per measure and pair of visits: n, statistic (W+), p_exact, p_holm, alternative,
        median_change, smallest_p.
    mixed : DataFrame or None
        Per measure and fixed effect: estimate, se, p, converged, boundary, note.
    notes : tuple of str
        What the user must know (dropped subjects, unattainable significance, ...).
    alpha : float
    """

    by: tuple[str, ...]
    summary: pd.DataFrame
    changes: pd.DataFrame
    tests: pd.DataFrame
    posthoc: pd.DataFrame
    mixed: pd.DataFrame | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    alpha: float = 0.05

    def to_frame(self) -> pd.DataFrame:
        """The per-measure test table."""
        return self.tests.copy()

    def significant(self) -> pd.DataFrame:
        """Measures whose exact Friedman p is below alpha after FDR."""
        return self.tests[self.tests["significant"]].copy()

    def __repr__(self) -> str:
        n_sig = int(self.tests["significant"].sum()) if len(self.tests) else 0
        return (
            f"VisitComparison({len(self.tests)} measures, {n_sig} significant at FDR "
            f"{self.alpha:g}, {len(self.notes)} notes)"
        )

    def _repr_html_(self) -> str:
        cols = [*self.by, "n_subjects", "k_visits", "friedman_q", "p_exact", "p_chi2_approx",
                "kendall_w", "p_fdr", "significant"]
        table = self.tests[[c for c in cols if c in self.tests.columns]]
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<p><b>{html.escape(repr(self))}</b></p>"
            + table.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}")
            + (f"<ul>{notes}</ul>" if notes else "")
        )


def _check_columns(table: Any, subject: str, visit: str, value: str, by: Sequence[str]):
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"table must be a pandas DataFrame, got {type(table).__name__}.")
    for col in (subject, visit, value, *by):
        if col not in table.columns:
            raise InputError(
                f"table has no column {col!r} (columns: {', '.join(map(str, table.columns))}); "
                "name the subject, visit and value columns with subject=, visit=, value=."
            )


def _numeric(table: pd.DataFrame, column: str) -> pd.Series:
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna() & table[column].notna()
    if bad.any():
        examples = ", ".join(repr(v) for v in table.loc[bad, column].unique()[:3])
        raise InputError(
            f"column {column!r} has non-numeric values ({examples}, {int(bad.sum())} rows); "
            "fix or remove them (missing values may be left empty or 'n/a')."
        )
    return values.astype(float)


def compare_visits(
    table: pd.DataFrame,
    measure: str | Sequence[str] | None = None,
    *,
    value: str = "value",
    subject: str = "participant_id",
    visit: str = "months",
    by: Sequence[str] | None = None,
    baseline: Any = None,
    posthoc: str = "all",
    alternative: str = "two-sided",
    alpha: float = 0.05,
    n_resamples: int = 20_000,
    seed: int = 0,
    mixed_model: bool = False,
) -> VisitComparison:
    """Compare visits for one or many measures of a tidy table.

    Parameters
    ----------
    table : DataFrame
        One row per subject, visit (and measure).
    measure : str or sequence of str, optional
        Keep only these measures (values of the ``measure`` column, or of the single ``by``
        column).
    value, subject, visit : str
        Column names (visit: any orderable column, e.g. ``months`` or ``session_id``).
    by : sequence of str, optional
        Columns that identify a measure (default: those of ``measure, roi, region, metric,
        tract, location, part, hemisphere`` present in the table).
    baseline : visit value, optional
        Reference visit for changes and ``posthoc="baseline"`` (default: the first visit).
    posthoc : {"all", "baseline", "none"}
        Pairs for the exact Wilcoxon tests.
    alternative : {"two-sided", "greater", "less"}
        Of the Wilcoxon tests; "greater" means the later visit is higher.
    alpha : float
        Significance level (after FDR across measures).
    n_resamples, seed : int
        Monte Carlo permutations when the exact Friedman distribution is too large.
    mixed_model : bool
        Also fit ``value ~ C(visit)`` with a random intercept per subject (statsmodels).

    Returns
    -------
    VisitComparison
    """
    if by is None:
        by = [c for c in _MEASURE_COLUMNS if c in getattr(table, "columns", ())]
    by = list(by)
    _check_columns(table, subject, visit, value, by)
    if posthoc not in ("all", "baseline", "none"):
        raise InputError(f"posthoc must be 'all', 'baseline' or 'none', got {posthoc!r}.")
    if alternative not in ("two-sided", "greater", "less"):
        raise InputError(
            f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}."
        )
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be between 0 and 1, got {alpha!r}.")
    df = table[[subject, visit, value, *by]].copy()
    df[value] = _numeric(df, value)
    if measure is not None:
        wanted = [measure] if isinstance(measure, str) else list(measure)
        column = "measure" if "measure" in by else (by[0] if len(by) == 1 else None)
        if column is None:
            raise InputError("measure= needs a 'measure' column or a single by= column.")
        df = df[df[column].isin(wanted)]
        if df.empty:
            raise InputError(f"no rows for measure {wanted} in column {column!r}.")
    df = df.dropna(subset=[value])
    key = [*by, subject, visit]
    dup = df.duplicated(key, keep=False)
    if dup.any():
        example = df.loc[dup, key].iloc[0].to_dict()
        raise InputError(
            f"table has {int(dup.sum())} duplicate rows for one subject, visit and measure "
            f"(e.g. {example}); keep one row each, or add the column that tells them apart "
            "to by=."
        )
    visits = sorted(df[visit].unique(), key=_sort_key)
    if len(visits) < 2:
        raise InputError(
            f"the table has a single visit ({visits[0] if visits else 'none'}) in column "
            f"{visit!r}; comparing visits needs at least two."
        )
    if baseline is None:
        baseline = visits[0]
    elif baseline not in visits:
        raise InputError(f"baseline={baseline!r} is not one of the visits {visits}.")

    notes: list[str] = []
    summaries, changes, tests, pairs, mixed = [], [], [], [], []
    groups = df.groupby(by, sort=True, dropna=False) if by else [((), df)]
    for name, group in groups:
        ident = dict(zip(by, name if isinstance(name, tuple) else (name,), strict=True))
        label = ", ".join(f"{k}={v}" for k, v in ident.items()) or value
        wide = group.pivot(index=subject, columns=visit, values=value)
        wide = wide.reindex(columns=[v for v in visits if v in wide.columns])
        summaries.append(_summary(wide, ident, visit))
        changes.append(_changes(wide, ident, subject, visit, value, baseline))
        complete = wide.dropna()
        dropped = sorted(set(wide.index) - set(complete.index))
        row: dict[str, Any] = {**ident, "n_subjects": len(complete), "n_dropped": len(dropped),
                               "k_visits": wide.shape[1]}
        note = ""
        if dropped:
            note = (f"{len(dropped)} subject(s) without every visit dropped from the exact "
                    f"tests: {', '.join(map(str, dropped))}")
            notes.append(f"{label}: {note}")
        if len(complete) >= 2 and wide.shape[1] >= 2:
            res = friedman_exact(complete.to_numpy(), n_resamples=n_resamples, seed=seed)
            row.update(friedman_q=res["statistic"], p_exact=res["p_value"],
                       p_method=res["method"], p_chi2_approx=res["p_chi2"],
                       kendall_w=res["kendall_w"], smallest_p=res["smallest_p"])
            if res["smallest_p"] > alpha:
                msg = (f"with {len(complete)} complete subjects and {wide.shape[1]} visits the "
                       f"smallest attainable Friedman p is {res['smallest_p']:.3g} > alpha "
                       f"{alpha:g}: no result can be significant")
                notes.append(f"{label}: {msg}")
                note = "; ".join(filter(None, [note, msg]))
            if posthoc != "none":
                pairs.append(_posthoc(complete, ident, posthoc, baseline, alternative, alpha,
                                      label, notes))
        else:
            row.update(friedman_q=np.nan, p_exact=np.nan, p_method="not enough subjects",
                       p_chi2_approx=np.nan, kendall_w=np.nan, smallest_p=np.nan)
            note = "; ".join(filter(None, [note, "fewer than 2 complete subjects: no test"]))
        row["note"] = note
        tests.append(row)
        if mixed_model:
            mixed.append(_mixed(group, ident, subject, visit, value, label, notes))
    tests_df = pd.DataFrame(tests)
    fdr = fdr_bh(tests_df["p_exact"].to_numpy(float))
    tests_df["p_fdr"] = fdr
    tests_df["significant"] = np.nan_to_num(fdr, nan=1.0) < alpha
    posthoc_df = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame()
    # One warning per distinct message, listing the measures it concerns.
    grouped: dict[str, list[str]] = {}
    for note in dict.fromkeys(notes):
        label, _, message = note.partition(": ")
        grouped.setdefault(message, []).append(label)
    for message, labels in grouped.items():
        shown = ", ".join(labels[:4]) + (f" and {len(labels) - 4} more" if len(labels) > 4 else "")
        warnings.warn(f"{shown}: {message}", MSImagingWarning, stacklevel=2)
    return VisitComparison(
        by=tuple(by),
        summary=pd.concat(summaries, ignore_index=True),
        changes=pd.concat(changes, ignore_index=True),
        tests=tests_df,
        posthoc=posthoc_df,
        mixed=pd.concat(mixed, ignore_index=True) if mixed else None,
        notes=tuple(dict.fromkeys(notes)),
        alpha=alpha,
    )


def _sort_key(v: Any):
    return (0, float(v), "") if isinstance(v, int | float | np.number) else (1, 0.0, str(v))


def _summary(wide: pd.DataFrame, ident: dict, visit: str) -> pd.DataFrame:
    q = wide.quantile([0.25, 0.5, 0.75])
    return pd.DataFrame(
        {
            **{k: [v] * wide.shape[1] for k, v in ident.items()},
            visit: list(wide.columns),
            "n": wide.notna().sum().to_numpy(),
            "median": q.loc[0.5].to_numpy(),
            "q1": q.loc[0.25].to_numpy(),
            "q3": q.loc[0.75].to_numpy(),
            "iqr": (q.loc[0.75] - q.loc[0.25]).to_numpy(),
            "mean": wide.mean().to_numpy(),
        }
    )


def _changes(wide, ident, subject, visit, value, baseline) -> pd.DataFrame:
    long = wide.reset_index().melt(id_vars=subject, var_name=visit, value_name=value)
    base = wide[baseline] if baseline in wide.columns else pd.Series(np.nan, index=wide.index)
    long["baseline"] = long[subject].map(base)
    long["change"] = long[value] - long["baseline"]
    with np.errstate(divide="ignore", invalid="ignore"):
        long["pct_change"] = np.where(long["baseline"] != 0,
                                      100.0 * long["change"] / long["baseline"], np.nan)
    for k, v in ident.items():
        long.insert(0, k, v)
    return long.dropna(subset=[value])


def _posthoc(complete, ident, mode, baseline, alternative, alpha, label, notes) -> pd.DataFrame:
    cols = list(complete.columns)
    if mode == "baseline":
        pairs = [(baseline, v) for v in cols if v != baseline]
    else:
        pairs = list(combinations(cols, 2))
    rows = []
    for a, b in pairs:
        res = wilcoxon_exact(complete[a].to_numpy(), complete[b].to_numpy(),
                             alternative=alternative)
        rows.append({**ident, "visit_a": a, "visit_b": b, "n": res["n"],
                     "n_zero": res["n_zero"], "statistic": res["statistic"],
                     "p_exact": res["p_value"], "method": res["method"],
                     "smallest_p": res["smallest_p"], "alternative": alternative,
                     "median_change": float(np.median(complete[b] - complete[a]))})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p_exact"].to_numpy())
    smallest = float(out["smallest_p"].min()) * len(out)
    if smallest > alpha:
        notes.append(
            f"{label}: with n = {len(complete)} the smallest {alternative} Wilcoxon p is "
            f"{out['smallest_p'].min():.4g} ({min(1.0, smallest):.4g} after Holm over "
            f"{len(out)} pairs) > alpha {alpha:g}: no pairwise comparison can be significant"
        )
    return out


def _mixed(group, ident, subject, visit, value, label, notes) -> pd.DataFrame:
    try:
        import statsmodels.formula.api as smf
    except ImportError as exc:
        raise DependencyError(
            "mixed_model=True needs statsmodels: pip install 'msimaging[stats]' (or pip "
            "install statsmodels)."
        ) from exc
    data = pd.DataFrame({"y": group[value].to_numpy(float),
                         "visit": group[visit].astype(str).to_numpy(),
                         "subject": group[subject].astype(str).to_numpy()})
    order = sorted(group[visit].unique(), key=_sort_key)
    data["visit"] = pd.Categorical(data["visit"], categories=[str(v) for v in order])
    rows = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = smf.mixedlm("y ~ C(visit)", data, groups=data["subject"]).fit(reml=True)
        except (ValueError, np.linalg.LinAlgError) as exc:
            notes.append(f"{label}: mixed model failed ({exc})")
            return pd.DataFrame([{**ident, "term": None, "note": f"failed: {exc}"}])
    cov_re = float(np.asarray(fit.cov_re).ravel()[0]) if np.size(fit.cov_re) else 0.0
    # statsmodels can return a tiny non-zero variance at the boundary (statsmodels #10239):
    # trust its own boundary warning as well as the estimate.
    boundary = cov_re <= 1e-6 * max(float(fit.scale), 1e-12) or any(
        "boundary" in str(w.message).lower() for w in caught
    )
    converged = bool(getattr(fit, "converged", True)) and not any(
        "converge" in str(w.message).lower() for w in caught
    )
    note = []
    if boundary:
        note.append("random-intercept variance at the boundary (0): estimates equal OLS, "
                    "subject effects not identified")
    if not converged:
        note.append("did not converge: do not trust these estimates")
    if note:
        notes.append(f"{label}: mixed model " + "; ".join(note))
    for term in fit.fe_params.index:
        rows.append({**ident, "term": term, "estimate": float(fit.fe_params[term]),
                     "se": float(fit.bse_fe[term]), "p": float(fit.pvalues[term]),
                     "subject_variance": cov_re, "converged": converged,
                     "boundary": bool(boundary), "note": "; ".join(note)})
    return pd.DataFrame(rows)
