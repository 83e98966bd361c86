"""One self-contained HTML report of a study, built from tidy tables and saved figures.

:func:`build_report` reads what the analyses wrote (``<derivatives>/group/*.tsv`` and
``<derivatives>/figures/*.png``; clinical tables from the BIDS dataset's ``phenotype/``), runs
the longitudinal statistics (:func:`msimaging.stats.compare_visits`) and writes one HTML file
with every figure embedded (base64), no scripts and no external resource, so it opens offline
and can be regenerated at any time without recomputing the images.

Security: every piece of text that comes from input files (participant and session labels,
phenotype values and column names, table cells, JSON sidecars) goes through
:func:`html.escape` (tables through pandas with ``escape=True``), and the page declares a
Content-Security-Policy that forbids scripts.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd

from msimaging._version import __version__
from msimaging.derivatives import DerivativesLayout, atomic_write_text, read_table
from msimaging.errors import InputError, MSImagingWarning
from msimaging.report.findings import key_findings, key_findings_html, what_n_allows
from msimaging.stats import VisitComparison, compare_visits, read_phenotype

__all__ = ["build_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #0072B2;padding-bottom:.2em;
margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f4f8}td:first-child,th:first-child{text-align:left}
tr.sig td{background:#fff3d6;font-weight:600}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
.note{background:#f7f7f7;border-left:4px solid #E69F00;padding:.4em .8em;font-size:.9em}
.missing{color:#999;font-style:italic}nav a{margin-right:1em}
#key-findings h2{margin-top:.8em}#key-findings p{margin:.3em 0;font-size:.9em}
table.kf{font-size:.8em;margin:.4em 0}table.kf td{padding:2px 6px}
table.kf td:nth-child(6),table.kf th:nth-child(6){text-align:left}
table.kf td:nth-child(6){color:#444}
details{margin:.4em 0;font-size:.9em}details summary{cursor:pointer;color:#0b5394}
.floor{background:#eef4fa;border-left:4px solid #0072B2;padding:.3em .8em;font-size:.9em}
dl.glossary dt{font-weight:600;float:left;clear:left;width:6em}dl.glossary dd{margin-left:7em}
"""


def _e(value: Any) -> str:
    """Escape text from inputs for HTML (content and attributes)."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return "n/a"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _table(df: pd.DataFrame, *, highlight: Iterable[bool] | None = None) -> str:
    """An escaped HTML table; rows flagged in ``highlight`` get class 'sig'."""
    if df is None or df.empty:
        return '<p class="missing">(no rows)</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    flags = list(highlight) if highlight is not None else [False] * len(df)
    rows = []
    for flag, (_, row) in zip(flags, df.iterrows(), strict=True):
        cells = "".join(f"<td>{_e(_fmt(v))}</td>" for v in row.to_numpy())
        rows.append(f'<tr class="sig">{cells}</tr>' if flag else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _visit_label(value: Any) -> str:
    return f"M{value:g}" if isinstance(value, float | int | np.number) else str(value)


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_html(data: bytes, caption: str) -> str:
    return (f'<figure><img alt="{_e(caption)}" src="{_png_data_uri(data)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _fig_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _trajectories(panels: list[tuple[str, pd.DataFrame]], value: str, subject: str,
                  visit: str, unit: str = "") -> bytes:
    """Small multiples: one line per subject, the median in black."""
    from matplotlib.figure import Figure

    n = len(panels)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), constrained_layout=True)
    for k, (title, frame) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        wide = frame.pivot_table(index=subject, columns=visit, values=value, aggfunc="mean")
        x = np.asarray(wide.columns, dtype=float)
        for _, series in wide.iterrows():
            ax.plot(x, series.to_numpy(float), color="#0072B2", alpha=0.45, marker="o", ms=3,
                    lw=1)
        ax.plot(x, wide.median().to_numpy(float), color="black", lw=2.2, marker="s", ms=4,
                label="median")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{visit}")
        if unit:
            ax.set_ylabel(unit, fontsize=8)
        ax.set_xticks(x)
    return _fig_bytes(fig)


def _stats_table(result: VisitComparison, visit: str) -> tuple[pd.DataFrame, list[bool]]:
    """Medians per visit next to the test results, one row per measure."""
    by = list(result.by)
    medians = result.summary.pivot_table(index=by, columns=visit, values="median") if by else (
        result.summary.set_index(visit)[["median"]].T)
    medians.columns = [f"median {_visit_label(c)}" for c in medians.columns]
    tests = result.tests.set_index(by) if by else result.tests
    # The chi-square p is approximate at small n: it goes to a collapsible block instead.
    cols = ["n_subjects", "friedman_q", "p_exact", "kendall_w", "p_fdr"]
    table = medians.join(tests[cols]).reset_index() if by else pd.concat(
        [medians.reset_index(drop=True), tests[cols].reset_index(drop=True)], axis=1)
    table = table.rename(columns={"p_exact": "p exact",
                                  "p_fdr": "p FDR", "kendall_w": "Kendall W",
                                  "friedman_q": "Friedman Q", "n_subjects": "n"})
    flags = tests["significant"].reindex(table.set_index(by).index).tolist() if by else list(
        tests["significant"])
    return table, flags


def _at_floor(p: pd.Series, floor: pd.Series) -> np.ndarray:
    """Which p-values equal the smallest p their test could give (the test's floor)."""
    return np.isclose(p.to_numpy(float), floor.to_numpy(float), rtol=1e-9, atol=0.0)


def _stats_html(result: VisitComparison, table: pd.DataFrame, flags: list[bool]) -> str:
    """A Friedman table; when every exact p sits at its floor, one sentence replaces the
    p columns (the medians stay), and the approximate chi-square p goes into details."""
    tests = result.tests
    out = []
    ok = tests["p_exact"].notna()
    if ok.any() and _at_floor(tests.loc[ok, "p_exact"], tests.loc[ok, "smallest_p"]).all():
        floors = ", ".join(_fmt(float(v)) for v in sorted(tests.loc[ok, "smallest_p"].unique()))
        out.append(f'<p class="floor">Every measure below has the smallest exact Friedman p '
                   f"its design allows (p = {_e(floors)}: every patient ranks the visits in the "
                   "same order).</p>")
        table = table.drop(columns=[c for c in ("p exact", "p FDR") if c in table.columns])
    out.append(_table(table, highlight=flags))
    out.append(_approx_p_details(result))
    return "".join(out)


def _approx_p_details(result: VisitComparison) -> str:
    by = list(result.by)
    tests = result.tests
    if "p_chi2_approx" not in tests.columns or not tests["p_chi2_approx"].notna().any():
        return ""
    approx = tests[[*by, "n_subjects", "p_chi2_approx"]].rename(
        columns={"p_chi2_approx": "p chi2 (approx.)", "n_subjects": "n"})
    return ("<details><summary>Approximate p (chi-square; for comparison only, unreliable "
            f"below n = 10)</summary>{_table(approx)}</details>")


def _posthoc_html(result: VisitComparison) -> str:
    """Pairwise exact Wilcoxon tests (Holm) of the measures whose Friedman test is significant.

    When no pair can reach alpha after Holm (the floor is too high for n) or every p sits at
    its floor, the table collapses into one sentence saying so.
    """
    if result.posthoc.empty or not result.tests["significant"].any():
        return ""
    by = list(result.by)
    keys = result.tests.loc[result.tests["significant"], by]
    post = result.posthoc.merge(keys, on=by) if by else result.posthoc
    n_pairs = post.groupby(by).size() if by else pd.Series([len(post)])
    holm_floor = (post["smallest_p"].min() * int(n_pairs.max()))
    at_floor = _at_floor(post["p_exact"], post["smallest_p"])
    if at_floor.all() or holm_floor >= result.alpha:
        n = int(post["n"].max())
        k = int(result.tests["k_visits"].max())
        floor = float(post["smallest_p"].min())
        others = post.loc[~at_floor, "p_exact"]
        rest = (f"; the other {len(others)} {'has' if len(others) == 1 else 'have'} p &ge; "
                f"{_e(_fmt(float(others.min())))}" if len(others) else "")
        return (f'<p class="floor"><b>Pairwise post hoc</b> (exact two-sided Wilcoxon, Holm '
                f"within each measure) for the {len(keys)} significant measure(s): "
                f"{int(at_floor.sum())} of {len(post)} comparisons sit at the floor p = "
                f"{_e(_fmt(floor))} (every patient changed in the same direction){rest}. "
                f"{_e(what_n_allows(max(n, 2), max(k, 2), alpha=result.alpha))}</p>")
    cols = [*by, "visit_a", "visit_b", "n", "median_change", "p_exact", "p_holm"]
    table = post[cols].rename(columns={"visit_a": "from", "visit_b": "to", "p_exact": "p exact",
                                       "p_holm": "p Holm", "median_change": "median change"})
    return ("<p>Pairwise exact Wilcoxon signed-rank tests (two-sided, Holm-corrected within the "
            "measure) for the significant measures:</p>" + _table(table))


def _compare(table: pd.DataFrame, notes: list[str], **kwargs: Any) -> VisitComparison | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        try:
            result = compare_visits(table, **kwargs)
        except InputError as exc:
            notes.append(f"statistics skipped: {exc}")
            return None
    notes.extend(result.notes)
    return result


def _read_group(folder: Path, name: str) -> pd.DataFrame | None:
    path = DerivativesLayout(folder).group_table(name)
    if not path.is_file():
        return None
    return read_table(path, dtype={"participant_id": str, "session_id": str})


def _with_months(df: pd.DataFrame, sessions: pd.DataFrame | None) -> pd.DataFrame:
    if "months" in df.columns or sessions is None or "session_id" not in df.columns:
        return df
    lookup = sessions[["participant_id", "session_id", "months"]]
    return df.merge(lookup, on=["participant_id", "session_id"], how="left")


def _notes_html(notes: list[str]) -> str:
    """Notes in a collapsible block, each distinct message once with the number of measures
    it concerns (the measures themselves one click further)."""
    if not notes:
        return ""
    grouped: dict[str, list[str]] = {}
    for note in notes:
        label, sep, message = note.partition(": ")
        if not sep or "=" not in label:
            grouped.setdefault(note, [])
            continue
        grouped.setdefault(message, [])
        if label not in grouped[message]:
            grouped[message].append(label)
    items = []
    for message, labels in grouped.items():
        item = f"<li>{_e(message)}"
        if len(labels) == 1:
            item += f" <i>({_e(labels[0])})</i>"
        elif labels:
            item += (f" <details><summary>&times;{len(labels)} measures</summary>"
                     f"<i>{_e('; '.join(labels))}</i></details>")
        items.append(item + "</li>")
    return (f'<details class="note"><summary><b>Notes</b> ({len(grouped)})</summary>'
            f"<ul>{''.join(items)}</ul></details>")


def _missing(what: str) -> str:
    return f'<p class="missing">{_e(what)}</p>'


def _saved_figures(folder: Path, pattern: str) -> list[Path]:
    # Not hidden files: a killed run's half-written .<hex>.tmp.<name> is not a figure.
    return sorted(p for p in DerivativesLayout(folder).figures_dir.glob(pattern)
                  if not p.name.startswith("."))


def _section_dti(folder: Path, sessions, alpha: float, notes: list[str]) -> str:
    out = ['<h2 id="dti">Diffusion (DTI)</h2>']
    nawm = _read_group(folder, "dti_nawm")
    if nawm is None:
        return out[0] + _missing("No DTI tables (group/dti_nawm.tsv) were found.")
    nawm = _diffusivities_in_um2_ms(_with_months(nawm, sessions))
    nawm = nawm[nawm["roi"].isin(["NAWM_left", "NAWM_right", "NAWM"])]
    local: list[str] = []
    result = _compare(nawm, local, value="mean", by=["roi", "metric"], alpha=alpha)
    out.append("<h3>Normal-appearing white matter</h3><p>FA unitless; MD, AD, RD in "
               "µm²/ms (10⁻³ mm²/s).</p>")
    if result is not None:
        table, flags = _stats_table(result, "months")
        out.append(_stats_html(result, table, flags) + _posthoc_html(result))
        panels = [(f"{roi} {metric.upper()}", nawm[(nawm.roi == roi) & (nawm.metric == metric)])
                  for metric in ("rd", "fa") for roi in ("NAWM_left", "NAWM_right")
                  if ((nawm.roi == roi) & (nawm.metric == metric)).any()]
        if panels:
            out.append(_figure_html(
                _trajectories(panels, "mean", "participant_id", "months"),
                "NAWM RD and FA per patient (blue) and median (black) across visits"))
    tracts = _read_group(folder, "dti_tracts")
    out.append("<h3>Tracts</h3>")
    if tracts is not None and not tracts.empty:
        tracts = _diffusivities_in_um2_ms(_with_months(tracts, sessions))
        whole = tracts[(tracts.get("part", "whole") == "whole")
                       & (tracts["n_streamlines"] > 0)] if "n_streamlines" in tracts else tracts
        whole = whole[whole["metric"].isin(["fa", "md", "rd"])]
        result = _compare(whole, local, value="mean", by=["tract", "metric"], alpha=alpha)
        if result is not None:
            table, flags = _stats_table(result, "months")
            out.append(_stats_html(result, table, flags) + _posthoc_html(result))
        # The overlay of the model whose tables the group level gathered (desc-tracts for
        # the tensor, desc-tractsCSD for CSD, ...).
        from msimaging.dti.session import tract_desc

        model = str(_nbs_meta(folder, "dti_tracts").get("TrackingModel", "tensor"))
        try:
            desc = tract_desc("tracts", model)
        except InputError:
            desc = "tracts"
        for path in _saved_figures(folder, f"*_desc-{desc}_overlay.png")[:1]:
            out.append(_figure_html(
                path.read_bytes(), f"Tract masks on FA ({model} tracking): {path.name}"))
    else:
        out.append(_missing("No tract table (group/dti_tracts.tsv)."))
    notes.extend(local)
    return "".join(out) + _notes_html(local)


def _diffusivities_in_um2_ms(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    diffusivity = df["metric"].isin(["md", "ad", "rd"])
    for column in ("mean", "median"):
        if column in df.columns:
            df.loc[diffusivity, column] = df.loc[diffusivity, column] * 1e3
    return df


def _nbs_meta(folder: Path, name: str = "fmri_nbs_components") -> dict[str, Any]:
    """The JSON sidecar of an NBS table ({} when absent or unreadable)."""
    sidecar = DerivativesLayout(folder).group_table(name).with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _nbs_design_html(meta: dict[str, Any]) -> str:
    """Which design ran, why, its permutation space and smallest attainable p (plainly)."""
    if not meta.get("Design"):
        return ""
    space = meta.get("PermutationSpace")
    exact = "exact enumeration" if meta.get("Exact") else "random permutations"
    smallest = meta.get("SmallestAttainableP")
    months = ", ".join(_fmt(m) for m in meta.get("VisitsMonths", []))
    out = [f"<p><b>Design:</b> {_e(meta.get('DesignDescription', meta['Design']))} "
           f"(<code>{_e(meta['Design'])}</code>), months {_e(months)}, "
           f"{_e(meta.get('Patients'))} subjects. <b>Why:</b> {_e(meta.get('DesignReason'))}. "
           f"<b>Permutations:</b> {_e(f'{space:,}' if isinstance(space, int) else space)} "
           f"({_e(exact)}); smallest attainable p = {_e(_fmt(smallest))}.</p>"]
    dropped = meta.get("SubjectsDropped") or []
    if dropped:
        out.append(f"<p>Left out (without the visits this design needs): "
                   f"{_e(', '.join(map(str, dropped)))}.</p>")
    if isinstance(smallest, int | float) and smallest >= 0.05:
        out.append(f'<p class="note"><b>No component can reach p &lt; 0.05 with this design '
                   f"and n = {_e(meta.get('Patients'))}</b>: the smallest attainable p is "
                   f"{_e(_fmt(smallest))}, whatever the data. A design that uses every visit "
                   "(<code>nbs_design = \"repeated_measures\"</code> or <code>\"trend\"</code>) "
                   "or more subjects is needed for a significant result.</p>")
    return "".join(out)


def _nbs_components_html(comps: pd.DataFrame) -> str:
    """Significant components in full (or the 3 largest when none), one line for the rest."""
    if comps.empty:
        return "<h3>Components</h3><p>No supra-threshold edge: no component.</p>"
    significant = comps["p_value"] < 0.05
    shown = comps[significant] if significant.any() else comps.head(3)
    rest = comps.drop(shown.index)
    out = ["<h3>Components</h3>", _table(shown, highlight=shown["p_value"] < 0.05)]
    if not rest.empty:
        out.append(f"<p>{len(rest)} further component(s), {int(rest['n_edges'].sum())} edge(s) "
                   f"in all (largest {int(rest['n_edges'].max())} edge(s)), every p &ge; "
                   f"{_e(_fmt(float(rest['p_value'].min())))}.</p>")
    return "".join(out)


def _nbs_hubs_html(nodes: pd.DataFrame) -> str:
    """Hubs of the first reported component named by anatomy and network (10 highest degree)."""
    first = nodes[nodes["component"] == nodes["component"].min()]

    def name(row: Any) -> str:
        network = row.get("network")
        if isinstance(network, str) and network.strip().lower() not in ("", "unassigned"):
            return f"{row['name']} · {network}"
        return str(row["name"])

    hubs = pd.DataFrame({
        "node": first["node"].astype(int),
        "region · network": [name(row) for _, row in first.iterrows()],
        "degree": first["degree"].astype(int),
        "strength": first["strength"].round(2),
        "MNI (x, y, z) mm": [f"({x:.0f}, {y:.0f}, {z:.0f})" for x, y, z in
                             zip(first["x_mm"], first["y_mm"], first["z_mm"], strict=True)],
    }).head(10)
    return (f"<h3>Hubs (highest degree in component {int(first['component'].iloc[0])}, "
            f"{len(first)} nodes; all nodes in group/fmri_nbs_nodes.tsv)</h3>" + _table(hubs))


def _section_fmri(folder: Path, notes: list[str]) -> str:
    out = ['<h2 id="fmri">Functional connectivity (NBS)</h2>']
    comps = _read_group(folder, "fmri_nbs_components")
    if comps is None:
        out.append(_missing("No NBS result (group/fmri_nbs_components.tsv)."))
    else:
        out.append(_nbs_design_html(_nbs_meta(folder)))
        out.append(_nbs_components_html(comps))
        edges = _read_group(folder, "fmri_nbs_edges")
        nodes = _read_group(folder, "fmri_nbs_nodes")
        if nodes is not None and not nodes.empty:
            out.append(_nbs_hubs_html(nodes))
        elif edges is not None and not edges.empty:
            first = edges[edges["component"] == edges["component"].min()]
            degree = pd.concat([first["node_i"], first["node_j"]]).value_counts()
            labels = {}
            for side in ("i", "j"):
                for node, label, network in zip(first[f"node_{side}"], first[f"label_{side}"],
                                                first[f"network_{side}"], strict=True):
                    labels[int(node)] = (label, network)
            hubs = pd.DataFrame(
                [{"node": int(n), "label": labels[int(n)][0], "network": labels[int(n)][1],
                  "degree": int(d)} for n, d in degree.head(10).items()])
            out.append("<h3>Hubs (highest degree in the first component)</h3>" + _table(hubs))
    pairwise = _read_group(folder, "fmri_nbs_pairwise")
    if (pairwise is not None and not pairwise.empty and {"best_p", "smallest_p"}
            <= set(pairwise.columns) and pairwise["best_p"].notna().all()
            and _at_floor(pairwise["best_p"], pairwise["smallest_p"]).all()):
        # Nothing to read in a table of floors: say it once.
        out.append("<h3>Every pair of visits (paired NBS)</h3><p class=\"floor\">In every pair "
                   f"of visits ({len(pairwise)}) the best component sits at the floor p = "
                   f"{_e(', '.join(_fmt(float(v)) for v in pairwise['smallest_p'].unique()))}"
                   " of its paired design (all patients changing in the same direction).</p>")
    elif pairwise is not None and not pairwise.empty:
        out.append("<h3>Every pair of visits (paired NBS: direction of the change)</h3>"
                   "<p>positive: connectivity higher at the later visit. p-values are "
                   "corrected over edges within each pair, not across pairs; a pair whose "
                   "smallest attainable p is &ge; 0.05 cannot show p &lt; 0.05.</p>"
                   + _table(pairwise, highlight=pairwise["best_p"].fillna(1.0) < 0.05))
    for path in _saved_figures(folder, "group_desc-nbs*.png"):
        out.append(_figure_html(path.read_bytes(), f"NBS component: {path.name}"))
    planted = _read_group(folder, "fmri_planted_subnetwork")
    if planted is not None:
        out.append("<h3>Planted subnetwork (synthetic study)</h3>")
        out.append(_table(planted.pivot_table(index="session_id", values="planted_mean_z",
                                              aggfunc="median").reset_index()))
    return "".join(out)


def _section_volumetry(folder: Path, sessions, alpha: float, notes: list[str]) -> str:
    out = ['<h2 id="volumetry">Volumetry and lesions</h2>']
    local: list[str] = []
    volumes = _read_group(folder, "volumetry_tissue")
    if volumes is None:
        return out[0] + _missing("No volumetry tables (group/volumetry_tissue.tsv).")
    volumes = _with_months(volumes, sessions)
    result = _compare(volumes, local, value="volume_ml", by=["region"], alpha=alpha)
    out.append("<h3>Tissue volumes (mL; segmentation-based, not SIENA)</h3>")
    if result is not None:
        table, flags = _stats_table(result, "months")
        out.append(_stats_html(result, table, flags) + _posthoc_html(result))
    load = _read_group(folder, "volumetry_lesion_load")
    if load is not None:
        load = _with_months(load, sessions)
        out.append("<h3>T2 lesions per location</h3>")
        counts = load.pivot_table(index="location", columns="months", values="count",
                                  aggfunc="median")
        counts.columns = [f"median count {_visit_label(c)}" for c in counts.columns]
        out.append(_table(counts.reset_index()))
        res = _compare(load, local, value="volume_ml", by=["location"], alpha=alpha)
        if res is not None:
            table, flags = _stats_table(res, "months")
            out.append("<p>Lesion volume (mL) per location:</p>"
                       + _stats_html(res, table, flags))
    tracks = _read_group(folder, "volumetry_lesion_tracks")
    if tracks is not None and not tracks.empty:
        out.append("<h3>Lesion evolution</h3>")
        out.append(_table(pd.crosstab(tracks["participant_id"], tracks["category"])
                          .reset_index()))
    for pattern, caption in (("group_desc-lesionevolution.png", "Lesion tracks"),
                             ("*_desc-lesions.png", "Lesions by location")):
        for path in _saved_figures(folder, pattern)[:1]:
            out.append(_figure_html(path.read_bytes(), f"{caption}: {path.name}"))
    notes.extend(local)
    return "".join(out) + _notes_html(local)


def _section_clinical(bids_dir: Path | None, alpha: float, notes: list[str]) -> str:
    out = ['<h2 id="clinical">Clinical and laboratory outcomes</h2>']
    if bids_dir is None or not (bids_dir / "phenotype").is_dir():
        return out[0] + _missing("No phenotype tables (BIDS phenotype/*.tsv).")
    local: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MSImagingWarning)
        clinical = read_phenotype(bids_dir)
    local.extend(str(w.message) for w in caught)
    if clinical.empty:
        return out[0] + _missing("The phenotype tables have no numeric columns.") + _notes_html(
            local)
    result = _compare(clinical, local, value="value", by=["measure"], alpha=alpha)
    if result is not None:
        table, flags = _stats_table(result, "months")
        units = clinical.drop_duplicates("measure").set_index("measure")[["long_name", "unit"]]
        table = table.merge(units, left_on="measure", right_index=True, how="left")
        out.append(_stats_html(result, table, flags) + _posthoc_html(result))
        panels = [(f"{m} ({units.loc[m, 'unit']})", clinical[clinical.measure == m])
                  for m in result.tests["measure"]]
        out.append(_figure_html(
            _trajectories(panels, "value", "participant_id", "months"),
            "Clinical outcomes per patient (blue) and median (black)"))
    notes.extend(local)
    return "".join(out) + _notes_html(local)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"msimaging": __version__}
    for name in ("numpy", "scipy", "pandas", "nibabel", "dipy", "nilearn", "bctpy", "networkx",
                 "statsmodels", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _methods(folder: Path, alpha: float) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    nbs = ""
    meta = _nbs_meta(folder)
    if meta:
        design = meta.get("DesignDescription") or "paired design"
        smallest = meta.get("SmallestAttainableP")
        floor = ""
        if isinstance(smallest, int | float):
            floor = (f" The smallest attainable p with this design and n = "
                     f"{_e(meta.get('Patients'))} is {_e(_fmt(smallest))}"
                     + ("; no component can reach p &lt; 0.05." if smallest >= 0.05 else "."))
        resampling = ("exact enumeration of the" if meta.get("Exact")
                      else "random draws from the")
        space = meta.get("PermutationSpace")
        nbs = (" Changes in functional connectivity were tested with the Network-Based "
               f"Statistic ({_e(design)}; primary threshold p = {_e(meta.get('ThresholdP'))}, "
               f"tail {_e(meta.get('Tail'))}), chosen because: {_e(meta.get('DesignReason'))}."
               " Component-wise FWER p-values came from "
               f"{resampling} {_e(f'{space:,}' if isinstance(space, int) else space)} "
               f"permutations.{floor}")
    return (
        '<h2 id="methods">Methods</h2><p>'
        "Diffusion tensors were fitted by weighted least squares and averaged in normal-appearing "
        "white matter (white matter minus T2 lesions, split into hemispheres in MNI space) and "
        "in tract masks from deterministic tractography between offline anatomical waypoints. "
        "Tissue volumes were computed from the segmentation with lesion voxels counted as "
        "abnormal white matter; lesions are 26-connected components classified as "
        "infratentorial, periventricular, juxtacortical or deep white matter (McDonald 2017 "
        f"order).{nbs} Each measure was compared across visits with the Friedman test; p-values "
        "are exact, from the permutation distribution of within-subject rank orderings (full "
        "enumeration, or 20,000 seeded Monte Carlo permutations when too large); the chi-square "
        "approximation is shown for comparison only. Effect sizes are Kendall's W. Pairwise "
        "post hoc tests are exact Wilcoxon signed-rank tests with Holm's correction; p-values "
        f"were corrected across the measures of each table by Benjamini–Hochberg FDR (alpha "
        f"{alpha:g}). Subjects without every visit were left out of the exact tests. "
        f"Software: {_e(versions)}.</p>"
    )


def _key_findings_section(folder: Path, sessions: pd.DataFrame | None,
                          bids_dir: Path | None, alpha: float) -> str:
    """The "Key findings" block: primary outcomes first (see :mod:`.findings`)."""
    names = ("dti_nawm", "dti_tracts", "volumetry_lesion_load", "volumetry_tissue")
    tables: dict[str, pd.DataFrame | None] = {}
    for name in names:
        frame = _read_group(folder, name)
        tables[name] = None if frame is None else _with_months(frame, sessions)
    tables["fmri_nbs_components"] = _read_group(folder, "fmri_nbs_components")
    clinical = None
    if bids_dir is not None and (bids_dir / "phenotype").is_dir():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MSImagingWarning)
            try:
                clinical = read_phenotype(bids_dir)
            except InputError:
                clinical = None  # the clinical section reports why
    try:
        found = key_findings(tables, clinical=clinical, nbs_meta=_nbs_meta(folder), alpha=alpha)
    except InputError as exc:
        return ('<section id="key-findings"><h2>Key findings</h2>'
                + _missing(f"Key findings could not be computed: {exc}") + "</section>")
    return key_findings_html(found)


#: Abbreviations the report may use; the glossary lists those that appear.
GLOSSARY = {
    "AD": "axial diffusivity (largest tensor eigenvalue)",
    "BOLD": "blood-oxygen-level-dependent (fMRI) signal",
    "BVMT-R": "Brief Visuospatial Memory Test, revised",
    "CC": "corpus callosum",
    "CSD": "constrained spherical deconvolution",
    "CSF": "cerebrospinal fluid",
    "CST": "corticospinal tract",
    "DTI": "diffusion tensor imaging",
    "EDSS": "Expanded Disability Status Scale (Kurtzke, 0-10)",
    "FA": "fractional anisotropy",
    "FDR": "false discovery rate (Benjamini-Hochberg)",
    "FLAIR": "fluid-attenuated inversion recovery MRI",
    "fMRI": "functional MRI",
    "FSS": "Fatigue Severity Scale",
    "FWER": "family-wise error rate",
    "GM": "grey matter",
    "ICV": "intracranial volume",
    "IL": "interleukin",
    "IQR": "interquartile range",
    "MD": "mean diffusivity",
    "MNI": "Montreal Neurological Institute template space",
    "MS": "multiple sclerosis",
    "NAWM": "normal-appearing white matter (white matter minus T2 lesions)",
    "NBS": "Network-Based Statistic (component-wise FWER over edges)",
    "OR": "optic radiation",
    "PASAT": "Paced Auditory Serial Addition Test",
    "RD": "radial diffusivity (mean of the two smaller tensor eigenvalues)",
    "SDMT": "Symbol Digit Modalities Test",
    "SIENA": "structural image evaluation using normalisation of atrophy (FSL)",
    "SPMS": "secondary progressive multiple sclerosis",
    "T2": "T2-weighted MRI (lesions are T2-hyperintense)",
    "WM": "white matter",
}


def _glossary_html(page: str) -> str:
    """The abbreviations of :data:`GLOSSARY` that appear in the page's visible text."""
    import re

    visible = re.sub(r"<style>.*?</style>|<[^>]+>", " ", page, flags=re.S)
    visible = re.sub(r'src="data:[^"]*"', " ", visible)
    used = [k for k in GLOSSARY
            if re.search(rf"(?<![A-Za-z0-9-]){re.escape(k)}(?![A-Za-z0-9-])", visible)]
    if not used:
        return ""
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(GLOSSARY[k])}</dd>"
                    for k in sorted(used, key=str.lower))
    return f'<h2 id="glossary">Glossary</h2><dl class="glossary">{items}</dl>'


def build_report(
    derivatives_dir: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    bids_dir: str | os.PathLike[str] | None = None,
    title: str = "msimaging study report",
    alpha: float = 0.05,
) -> Path:
    """Write the study report (one self-contained HTML file) from saved tables and figures.

    Parameters
    ----------
    derivatives_dir : path
        The msimaging derivatives folder (with ``group/*.tsv`` and ``figures/``).
    output : path, optional
        The HTML file (default ``<derivatives_dir>/report.html``).
    bids_dir : path, optional
        The BIDS dataset, for clinical tables in ``phenotype/`` (default: the first input
        dataset named in ``dataset_description.json``, when it exists).
    title : str
    alpha : float
        Significance level after FDR.

    Returns
    -------
    pathlib.Path
        The report written (atomically).
    """
    folder = Path(derivatives_dir)
    if not folder.is_dir():
        raise InputError(
            f"derivatives_dir {str(folder)!r} is not a folder; give the msimaging derivatives "
            "folder (the one with group/ and figures/)."
        )
    if bids_dir is None:
        bids_dir = _input_dataset(folder)
    bids_path = Path(bids_dir) if bids_dir is not None else None
    out_path = Path(output) if output is not None else DerivativesLayout(folder).report
    sessions = _read_group(folder, "visits")
    notes: list[str] = []
    cohort = ['<h2 id="cohort">Cohort and visits</h2>']
    if sessions is not None:
        visits = sessions.pivot_table(index="participant_id", columns="months",
                                      values="session_id", aggfunc="first")
        visits.columns = [f"month {c:g}" for c in visits.columns]
        cohort.append(f"<p>{sessions['participant_id'].nunique()} participants, "
                      f"{len(sessions)} visits.</p>")
        cohort.append(_table(visits.fillna("missing").reset_index()))
    else:
        cohort.append(_missing("No sessions table (group/visits.tsv)."))
    body = [
        _key_findings_section(folder, sessions, bids_path, alpha),
        "".join(cohort),
        _section_dti(folder, sessions, alpha, notes),
        _section_fmri(folder, notes),
        _section_volumetry(folder, sessions, alpha, notes),
        _section_clinical(bids_path, alpha, notes),
        _methods(folder, alpha),
    ]
    # Per-participant QC pages next to the report (relative links keep the folder portable).
    from msimaging.report.qc import qc_links_html, write_qc_pages

    qc_pages = write_qc_pages(folder, bids_path, output_dir=out_path.parent / "qc",
                              report=out_path)
    body.insert(-1, qc_links_html(qc_pages, out_path))
    nav = "".join(f'<a href="#{k}">{v}</a>' for k, v in (
        ("key-findings", "Key findings"), ("cohort", "Cohort"), ("dti", "DTI"),
        ("fmri", "fMRI"), ("volumetry", "Volumetry"), ("clinical", "Clinical"),
        ("qc", "Quality control"), ("methods", "Methods"), ("glossary", "Glossary")))
    body.append(_glossary_html(nav + "".join(body)))
    created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p>Generated {created} by msimaging {_e(__version__)} from "
        f"<code>{_e(folder.resolve())}</code>. Highlighted rows: FDR-corrected exact p &lt; "
        f"{alpha:g}.</p><nav>{nav}</nav>{''.join(body)}</body></html>"
    )
    return atomic_write_text(out_path, page)


def _input_dataset(folder: Path) -> Path | None:
    description = folder / "dataset_description.json"
    if not description.is_file():
        return None
    try:
        meta = json.loads(description.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    for entry in meta.get("SourceDatasets", []) or []:
        url = entry.get("URL", "") if isinstance(entry, dict) else ""
        # as_uri() percent-encodes spaces and non-ASCII letters: decode them back.
        path = Path(url2pathname(urlparse(url).path)) if url.startswith("file:") else None
        if path is not None and path.is_dir():
            return path
    return None
