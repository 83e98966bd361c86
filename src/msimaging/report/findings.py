"""The report's "Key findings": each primary outcome in one row, and what n allows.

:func:`key_findings` turns the group tables (already read by :mod:`msimaging.report.html`) into
one row per primary outcome of the reference study (NAWM FA/RD, tract FA, the NBS component,
T2 lesion count and volume, brain and tissue volumes, EDSS): its change from baseline (median
over patients of each patient's % change from the first to the last visit), its exact p, n and
design. :func:`what_n_allows` says in one sentence whether a pairwise comparison can reach
significance with that many patients, from the exact null distributions of
:mod:`msimaging.stats` (never from a hard-coded table).
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from msimaging.errors import InputError, MSImagingWarning
from msimaging.stats import compare_visits, fdr_bh, friedman_exact, wilcoxon_exact

__all__ = [
    "KeyFindings",
    "friedman_floor",
    "key_findings",
    "key_findings_html",
    "what_n_allows",
    "wilcoxon_floor",
]

#: Tracts of the reference study (CST, optic radiation, corpus callosum), FA of the whole tract.
PRIMARY_TRACTS = ("CST_L", "CST_R", "OR_L", "OR_R", "CC")
#: Tissue volumes of the reference study shown as key findings (volumetry_tissue regions).
PRIMARY_VOLUMES = {"brain": "Brain volume", "cortical_gm": "Cortical GM volume",
                   "nawm": "NAWM volume"}


def wilcoxon_floor(n_patients: int, alternative: str = "two-sided") -> float:
    """Smallest p an exact Wilcoxon signed-rank (sign-flip) test can give with n pairs.

    Reached when every patient changes in the same direction; computed by
    :func:`msimaging.stats.wilcoxon_exact` on n distinct same-sign differences.
    """
    n = _check_n(n_patients, "n_patients", minimum=1)
    return float(wilcoxon_exact(np.zeros(n), np.arange(1.0, n + 1.0),
                                alternative=alternative)["smallest_p"])


def friedman_floor(n_patients: int, n_visits: int) -> float:
    """Smallest exact Friedman p with n patients and k visits (all rank the visits alike)."""
    n = _check_n(n_patients, "n_patients", minimum=2)
    k = _check_n(n_visits, "n_visits", minimum=2)
    ranked = np.tile(np.arange(k, dtype=float), (n, 1))
    return float(friedman_exact(ranked)["smallest_p"])


def _check_n(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def what_n_allows(n_patients: int, n_visits: int, *, alpha: float = 0.05) -> str:
    """One sentence: can a pairwise (and the Friedman) comparison reach p < alpha with n?

    The pairwise test is the exact two-sided Wilcoxon signed-rank test with Holm's correction
    over the k (k - 1) / 2 pairs of visits, as :func:`msimaging.stats.compare_visits` runs it.
    """
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be between 0 and 1, got {alpha!r}.")
    n = _check_n(n_patients, "n_patients", minimum=2)
    k = _check_n(n_visits, "n_visits", minimum=2)
    floor = wilcoxon_floor(n)
    n_pairs = k * (k - 1) // 2
    holm_floor = min(1.0, floor * n_pairs)  # the smallest p is multiplied by all m pairs
    # Exact sign-flip probabilities are multiples of 2^-n: show the floor as that fraction.
    frac = f"{round(floor * 2**n)}/{2**n} = " if floor > 0 and n <= 22 else ""
    smallest = (f"the smallest exact two-sided Wilcoxon p, all {n} changing in the same "
                f"direction, is {frac}{floor:.3g}")
    if floor >= alpha:
        text = f"With {n} patients no pairwise comparison can reach p < {alpha:g}: {smallest}"
    elif holm_floor >= alpha and n_pairs > 1:
        text = (f"With {n} patients one pairwise comparison alone can reach p < {alpha:g} "
                f"({smallest}), but not after Holm's correction over the {n_pairs} pairs of "
                f"visits ({holm_floor:.3g})")
    else:
        after = f" ({holm_floor:.3g} after Holm over {n_pairs} pairs)" if n_pairs > 1 else ""
        text = (f"With {n} patients a pairwise comparison can reach p < {alpha:g}: "
                f"{smallest}{after}")
    if k > 2:
        fried = friedman_floor(n, k)
        verb = "can" if fried < alpha else "cannot"
        text += f"; the Friedman test over the {k} visits {verb} (smallest p = {fried:.3g})"
    return text + "."


@dataclass(frozen=True)
class KeyFindings:
    """Primary outcomes, one row each, FDR-significant first.

    Attributes
    ----------
    table : DataFrame
        domain, outcome, change_pct, change_text, p_exact, p_fdr, significant, n, k_visits,
        design.
    sentences : tuple of str
        What n allows, one sentence per distinct (n, visits) design of the rows.
    alpha : float
    """

    table: pd.DataFrame
    sentences: tuple[str, ...] = field(default_factory=tuple)
    alpha: float = 0.05


def _visits_label(months: Any) -> str:
    return "/".join(f"M{float(m):g}" for m in months)


def _tidy(frame: pd.DataFrame, value: str, domain: str, outcome: str) -> pd.DataFrame:
    return pd.DataFrame({"participant_id": frame["participant_id"].astype(str).to_numpy(),
                         "months": pd.to_numeric(frame["months"], errors="coerce").to_numpy(),
                         "value": pd.to_numeric(frame[value], errors="coerce").to_numpy(),
                         "domain": domain, "outcome": outcome})


def _outcome_rows(tables: Mapping[str, pd.DataFrame | None],
                  clinical: pd.DataFrame | None) -> list[pd.DataFrame]:
    """Tidy rows (participant_id, months, value, domain, outcome) of each primary outcome."""
    parts: list[pd.DataFrame] = []
    nawm = tables.get("dti_nawm")
    if nawm is not None and {"roi", "metric", "mean", "months"} <= set(nawm.columns):
        for metric in ("fa", "rd"):
            for roi in ("NAWM", "NAWM_left", "NAWM_right"):
                sel = nawm[(nawm["roi"] == roi) & (nawm["metric"] == metric)]
                if not sel.empty:
                    parts.append(_tidy(sel, "mean", "DTI",
                                       f"{roi.replace('_', ' ')} {metric.upper()}"))
    tracts = tables.get("dti_tracts")
    if tracts is not None and {"tract", "metric", "mean", "months"} <= set(tracts.columns):
        whole = tracts[tracts["metric"] == "fa"]
        if "part" in whole.columns:
            whole = whole[whole["part"] == "whole"]
        if "n_streamlines" in whole.columns:
            whole = whole[whole["n_streamlines"] > 0]  # no tract found: no value
        for tract in PRIMARY_TRACTS:
            sel = whole[whole["tract"] == tract]
            if not sel.empty:
                parts.append(_tidy(sel, "mean", "DTI", f"{tract} FA"))
    load = tables.get("volumetry_lesion_load")
    if load is not None and {"location", "count", "volume_ml", "months"} <= set(load.columns):
        total = load[load["location"] == "total"]
        if total.empty:  # older tables: sum the locations
            total = (load.groupby(["participant_id", "months"], as_index=False)
                     [["count", "volume_ml"]].sum())
        parts.append(_tidy(total, "count", "Lesions", "T2 lesion count"))
        parts.append(_tidy(total, "volume_ml", "Lesions", "T2 lesion volume"))
    tissue = tables.get("volumetry_tissue")
    if tissue is not None and {"region", "volume_ml", "months"} <= set(tissue.columns):
        for region, label in PRIMARY_VOLUMES.items():
            sel = tissue[tissue["region"] == region]
            if not sel.empty:
                parts.append(_tidy(sel, "volume_ml", "Volumetry", label))
    if clinical is not None and {"measure", "value", "months"} <= set(clinical.columns):
        edss = clinical[clinical["measure"].astype(str).str.lower() == "edss"]
        if not edss.empty:
            parts.append(_tidy(edss, "value", "Clinical", "EDSS"))
    return parts


def _nbs_row(comps: pd.DataFrame | None, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    if comps is None or comps.empty or "p_value" not in comps.columns:
        return None
    best = comps.sort_values(["p_value", "n_edges"], ascending=[True, False]).iloc[0]
    months = meta.get("VisitsMonths") or []
    design = str(meta.get("Design", "paired")).replace("_", "-")
    space = meta.get("PermutationSpace")
    perms = (f", {space:,} {'exact ' if meta.get('Exact') else ''}permutations"
             if isinstance(space, int) else "")
    visits = f" over {_visits_label(months)}" if months else ""
    n = meta.get("Patients")
    return {"domain": "fMRI", "outcome": "NBS component (FWER p)", "change_pct": np.nan,
            "change_text": f"{int(best['n_edges'])} edges, {int(best['n_nodes'])} nodes",
            "p_exact": float(best["p_value"]), "n": int(n) if isinstance(n, int) else np.nan,
            "k_visits": len(months) if months else np.nan,
            "design": f"NBS {design}{visits}{perms}"}


def key_findings(tables: Mapping[str, pd.DataFrame | None], *,
                 clinical: pd.DataFrame | None = None,
                 nbs_meta: Mapping[str, Any] | None = None,
                 alpha: float = 0.05) -> KeyFindings:
    """One row per primary outcome: change from baseline (%), exact p, FDR, n, design.

    Parameters
    ----------
    tables : mapping of str to DataFrame or None
        Group tables by name (``dti_nawm``, ``dti_tracts``, ``volumetry_lesion_load``,
        ``volumetry_tissue``, ``fmri_nbs_components``), each with a ``months`` column.
    clinical : DataFrame, optional
        Tidy phenotype rows (:func:`msimaging.stats.read_phenotype`); EDSS is used.
    nbs_meta : mapping, optional
        The JSON sidecar of ``fmri_nbs_components`` (design, patients, visits, permutations).
    alpha : float
        Level of the Benjamini-Hochberg FDR over the primary outcomes listed.

    Returns
    -------
    KeyFindings
    """
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be between 0 and 1, got {alpha!r}.")
    rows: list[dict[str, Any]] = []
    parts = [p.dropna(subset=["months", "value"]) for p in _outcome_rows(tables, clinical)]
    parts = [p for p in parts if p["months"].nunique() >= 2]
    if parts:
        tidy = pd.concat(parts, ignore_index=True)
        order = list(dict.fromkeys(tidy["outcome"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MSImagingWarning)
            result = compare_visits(tidy, value="value", by=["outcome"], posthoc="none",
                                    alpha=alpha)
        tests = result.tests.set_index("outcome")
        changes = result.changes
        for outcome in order:
            sub = tidy[tidy["outcome"] == outcome]
            visits = sorted(sub["months"].unique())
            last = changes[(changes["outcome"] == outcome) & (changes["months"] == visits[-1])]
            pct = float(np.nanmedian(last["pct_change"])) if last["pct_change"].notna().any() \
                else np.nan
            test = tests.loc[outcome]
            n = int(test["n_subjects"])
            rows.append({
                "domain": str(sub["domain"].iloc[0]), "outcome": outcome, "change_pct": pct,
                "change_text": "n/a" if not np.isfinite(pct) else _pct(pct),
                "p_exact": float(test["p_exact"]), "n": n, "k_visits": len(visits),
                "design": f"Friedman exact over {_visits_label(visits)}, {n} patients",
            })
    nbs = _nbs_row(tables.get("fmri_nbs_components"), nbs_meta or {})
    if nbs is not None:
        rows.append(nbs)
    table = pd.DataFrame(rows, columns=["domain", "outcome", "change_pct", "change_text",
                                        "p_exact", "n", "k_visits", "design"])
    fdr = fdr_bh(table["p_exact"].to_numpy(float))
    table["p_fdr"] = fdr
    table["significant"] = np.nan_to_num(fdr, nan=1.0) < alpha
    # FDR-significant first (smallest p first), then the rest in the study's order.
    table["_rank"] = np.where(table["significant"], table["p_exact"], np.inf)
    table = (table.reset_index(names="_order").sort_values(["_rank", "_order"])
             .drop(columns=["_rank", "_order"]).reset_index(drop=True))
    designs = (table.dropna(subset=["n", "k_visits"])
               .query("n >= 2 and k_visits >= 2")[["n", "k_visits"]].astype(int))
    counts = designs.value_counts()
    sentences = tuple(what_n_allows(int(n), int(k), alpha=alpha) for n, k in counts.index)
    return KeyFindings(table=table, sentences=sentences, alpha=alpha)


def _pct(value: float) -> str:
    if value == 0:
        return "0 %"
    text = f"{value:+.1f}" if abs(value) >= 0.095 else f"{value:+.2f}"
    return text.replace("-", "\u2212") + " %"


def key_findings_html(findings: KeyFindings) -> str:
    """The ``<section id="key-findings">`` block (escaped text, no script)."""
    e = _escape
    table = findings.table
    head = ('<section id="key-findings"><h2>Key findings</h2>')
    if table.empty:
        return head + ('<p class="missing">No primary-outcome table (DTI, volumetry, lesions, '
                       "NBS or EDSS) was found.</p></section>")
    n_sig = int(table["significant"].sum())
    lead = (f"<p class=\"kf-lead\"><b>{n_sig} of {len(table)} primary outcomes</b> differ across "
            f"visits after FDR (Benjamini–Hochberg over these {len(table)}, "
            f"q &lt; {findings.alpha:g}; highlighted, listed first). Change: median over patients "
            "of each patient's % change from the first to the last visit. p: exact Friedman "
            "test across visits (NBS: component-wise FWER p).</p>")
    sentences = "".join(f'<p class="kf-n"><b>What n allows.</b> {e(s)}</p>'
                        for s in findings.sentences)
    rows = []
    for _, row in table.iterrows():
        cls = ' class="sig"' if row["significant"] else ""
        n = "" if not np.isfinite(row["n"]) else str(int(row["n"]))
        cells = [row["outcome"], row["change_text"], _p(row["p_exact"]), _p(row["p_fdr"]), n,
                 row["design"]]
        rows.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in (
        "Primary outcome", "Change from baseline", "p exact", "p FDR", "n", "Design"))
    return (head + lead + sentences + f'<table class="kf"><thead><tr>{header}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _p(value: Any) -> str:
    value = float(value)
    return "n/a" if not np.isfinite(value) else f"{value:.3g}"


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)
