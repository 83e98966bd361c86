"""The study report: built from tables and figures, opened in a real headless Chromium.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them); where they cannot be installed the browser tests are skipped with that reason, and the
static checks still run.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msimaging.derivatives import DerivativesWriter
from msimaging.report import build_report

SCRIPT = "<script>window.__pwned = 1; document.title = 'pwned'</script>"
IMG = '"><img src=x onerror="window.__pwned = 2">'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _png(tmp: Path, name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


@pytest.fixture(scope="module")
def study_outputs(tmp_path_factory):
    """Derivatives of a 5-patient, 3-visit study with planted effects, plus hostile text in a
    participant label, a phenotype column name, a phenotype value and a sidecar."""
    root = tmp_path_factory.mktemp("report")
    bids = root / "study"
    (bids / "phenotype").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    rng = np.random.default_rng(0)
    subjects = [f"sub-{i:02d}" for i in range(1, 5)] + [f"sub-05{IMG}"]
    months = [0.0, 3.0, 6.0]
    sessions = pd.DataFrame(
        [{"participant_id": s, "session_id": f"ses-M{m:g}", "months": m}
         for s in subjects for m in months])
    writer = DerivativesWriter(root / "deriv", input_datasets=[bids])
    writer.write_group_table(sessions, "sessions")
    nawm = []
    for s in subjects:
        for m in months:
            for roi, slope in (("NAWM_left", -0.004), ("NAWM_right", 0.0)):
                for metric, base in (("rd", 0.0005), ("fa", 0.45)):
                    change = slope * m if metric == "rd" else 0.0
                    nawm.append({"participant_id": s, "session_id": f"ses-M{m:g}", "roi": roi,
                                 "metric": metric,
                                 "mean": base * (1 + change + rng.normal(0, 0.002))})
    writer.write_group_table(pd.DataFrame(nawm), "dti_nawm")
    volumes = [{"participant_id": s, "session_id": f"ses-M{m:g}", "region": r,
                "volume_ml": v + rng.normal(0, 1)}
               for s in subjects for m in months for r, v in (("brain", 1200), ("icv", 1500))]
    writer.write_group_table(pd.DataFrame(volumes), "volumetry_tissue")
    comps = pd.DataFrame([{"component": 0, "direction": "positive", "n_nodes": 4,
                           "n_edges": 3, "size": 3, "p_value": 0.03, "hubs": SCRIPT}])
    writer.write_group_table(comps, "fmri_nbs_components",
                             sidecar={"ThresholdP": SCRIPT, "Tail": "right"})
    for name in ("group_desc-nbsM0M6_adjacency.png", "group_desc-lesionevolution.png"):
        _png(writer.root / "figures", name)
    clinical = pd.DataFrame(
        [{"participant_id": s, "session_id": f"ses-M{m:g}", "months": m,
          "edss": 6.0 - 0.5 * (m > 0) + 0.0 * i, f"score{SCRIPT}": 10 + m + i,
          "comment": SCRIPT if i == 0 else "ok"}
         for i, s in enumerate(subjects) for m in months])
    clinical.to_csv(bids / "phenotype" / "clinical.tsv", sep="\t", index=False)
    (bids / "phenotype" / "clinical.json").write_text(json.dumps(
        {"edss": {"Units": f"score{IMG}", "LongName": SCRIPT}}))
    report = build_report(writer.root)
    return report, bids


def test_report_is_self_contained_and_escaped(study_outputs):
    report, _ = study_outputs
    text = report.read_text(encoding="utf-8")
    for section in ("key-findings", "cohort", "dti", "fmri", "volumetry", "clinical",
                    "methods", "glossary"):
        assert f'id="{section}"' in text
    # Offline: no external resource, every image embedded.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert text.count('src="data:image/png;base64,') >= 3
    # Escaped, never raw.
    assert "<script" not in text.lower()
    assert "onerror=" not in text.replace("onerror=&quot;", "")
    assert html.escape(SCRIPT) in text and html.escape(IMG, quote=True) in text
    # The planted left-NAWM RD fall is reported significant, the right one not.
    assert "NAWM_left" in text and "Methods" in text


def test_report_statistics_match_compare_visits(study_outputs):
    from msimaging.stats import compare_visits

    report, _ = study_outputs
    text = report.read_text(encoding="utf-8")
    nawm = pd.read_csv(report.parent / "group" / "dti_nawm.tsv", sep="\t")
    nawm["months"] = nawm["session_id"].str.removeprefix("ses-M").astype(float)
    with pytest.warns(Warning):
        res = compare_visits(nawm, value="mean", by=["roi", "metric"])
    tests = res.tests.set_index(["roi", "metric"])
    assert tests.loc[("NAWM_left", "rd"), "significant"]
    assert not tests.loc[("NAWM_right", "rd"), "significant"]
    # The highlighted rows of the report are the significant ones.
    rows = re.findall(r'<tr class="sig"><td>([^<]*)</td><td>([^<]*)</td>', text)
    assert ("NAWM_left", "rd") in rows and ("NAWM_right", "rd") not in rows


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium and ChromeDriver are not installed (Debian: apt-get install "
                    "chromium chromium-driver); .ci/run installs them")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_report_opens_in_chromium_without_errors_and_runs_no_script(study_outputs, browser):
    report, _ = study_outputs
    browser.get(report.resolve().as_uri())
    assert browser.title == "msimaging study report"  # a script would have renamed it
    assert browser.execute_script("return window.__pwned === undefined")
    # Escaping, not only the Content-Security-Policy: no script or onerror element exists.
    assert browser.execute_script(
        "return document.querySelectorAll('script, [onerror]').length") == 0
    sections = browser.execute_script(
        "return Array.from(document.querySelectorAll('h2')).map(h => h.id || h.parentElement.id)")
    # "qc" (per-subject QC pages, tested in test_report_qc.py) sits before Methods when present.
    assert [s for s in sections if s != "qc"] == [
        "key-findings", "cohort", "dti", "fmri", "volumetry", "clinical", "methods", "glossary"]
    images = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    assert len(images) >= 3 and all(images)
    body = browser.find_element("tag name", "body").text
    assert SCRIPT in body  # shown as text
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe


def test_demo_style_report_without_optional_tables(tmp_path):
    writer = DerivativesWriter(tmp_path / "deriv", input_datasets=[tmp_path / "study"])
    writer.write_group_table(pd.DataFrame({"participant_id": ["sub-01"], "session_id":
                                           ["ses-M0"], "months": [0.0]}), "sessions")
    report = build_report(writer.root, tmp_path / "out" / "r.html")
    text = report.read_text()
    assert "No DTI tables" in text and "No phenotype tables" in text


def test_report_bad_input(tmp_path):
    from msimaging.errors import InputError

    with pytest.raises(InputError, match="not a folder"):
        build_report(tmp_path / "nowhere")


_TENSOR_OVERLAY = "sub-01_ses-M0_desc-tracts_overlay.png"
_CSD_OVERLAY = "sub-01_ses-M0_desc-tractsCSD_overlay.png"


@pytest.mark.parametrize("model, shown, hidden", [
    ("csd", _CSD_OVERLAY, _TENSOR_OVERLAY), ("tensor", _TENSOR_OVERLAY, _CSD_OVERLAY),
])
def test_report_shows_the_overlay_of_the_gathered_tracking_model(tmp_path, model, shown, hidden):
    """Tensor and CSD overlays side by side (issue 17: model-specific names): the report shows
    the one of the model whose tables the group level gathered (group sidecar TrackingModel)."""
    writer = DerivativesWriter(tmp_path / "deriv", input_datasets=[tmp_path / "study"])
    sessions = [f"ses-M{m}" for m in (0, 6)]
    writer.write_group_table(pd.DataFrame({"participant_id": ["sub-01"] * 2,
                                           "session_id": sessions, "months": [0.0, 6.0]}),
                             "sessions")
    writer.write_group_table(pd.DataFrame(
        [{"participant_id": "sub-01", "session_id": s, "roi": "NAWM", "metric": "fa",
          "mean": 0.45} for s in sessions]), "dti_nawm")
    writer.write_group_table(pd.DataFrame(
        [{"participant_id": "sub-01", "session_id": s, "tract": "CST_L", "part": "whole",
          "metric": "fa", "mean": 0.6, "n_streamlines": 80} for s in sessions]),
        "dti_tracts", sidecar={"TrackingModel": model})
    for name in (shown, hidden):
        _png(writer.root / "figures", name)
    text = build_report(writer.root, tmp_path / "r.html").read_text()
    assert shown in text and hidden not in text
    assert f"({model} tracking)" in text


# --- Key findings first (issue 18) -----------------------------------------------------------

#: Floors worked out by hand, not by the code under test: the exact Friedman p when all n
#: patients rank k visits alike is (1/k!)^(n-1); the exact two-sided Wilcoxon (sign-flip) p
#: when all n change the same way is 2/2^n, and Holm over m pairs multiplies it by m.
FRIEDMAN_FLOOR_5x3 = (1 / 6) ** 4
WILCOXON_FLOOR_5 = 2 / 2**5
HOLM_FLOOR_5x3 = 3 * WILCOXON_FLOOR_5


def _parse_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every rendered <table> as (header cells, body rows of cell text)."""
    from html.parser import HTMLParser

    tables: list[tuple[list[str], list[list[str]]]] = []

    class Parser(HTMLParser):
        def __init__(self):
            super().__init__()
            self.cell: list[str] | None = None
            self.row: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                tables.append(([], []))
            elif tag == "tr":
                self.row = []
            elif tag in ("td", "th"):
                self.cell = []

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.row.append(("th" if tag == "th" else "td", "".join(self.cell).strip()))
                self.cell = None
            elif tag == "tr" and tables:
                head, body = tables[-1]
                if all(kind == "th" for kind, _ in self.row):
                    head.extend(text for _, text in self.row)
                else:
                    body.append([text for _, text in self.row])

    Parser().feed(text)
    return tables


def _key_findings_rows(text: str) -> dict[str, list[str]]:
    section = text[text.index('<section id="key-findings">'):]
    section = section[:section.index("</section>")]
    (head, body), = _parse_tables(section)
    assert head[:5] == ["Primary outcome", "Change from baseline", "p exact", "p FDR", "n"]
    return {row[0]: row for row in body}


def _pct(cell: str) -> float:
    return float(cell.replace("\u2212", "-").removesuffix(" %"))


def test_key_findings_come_first_with_the_planted_effect(study_outputs):
    report, _ = study_outputs
    text = report.read_text(encoding="utf-8")
    # The first section after the title and nav, before the cohort table.
    first_h2 = text.index("<h2")
    assert text.index('<section id="key-findings">') < first_h2 < text.index('id="cohort"')
    assert text.index("</nav>") < text.index('<section id="key-findings">')
    rows = _key_findings_rows(text)
    planted = rows["NAWM left RD"]
    # Planted: RD falls 0.4 %/month in every patient, so -2.4 % at month 6 (noise 0.2 %).
    assert _pct(planted[1]) == pytest.approx(-2.4, abs=0.4)
    # Every patient ranks M0 > M3 > M6: the exact Friedman p is its floor, (1/3!)^4.
    assert float(planted[2]) == pytest.approx(FRIEDMAN_FLOOR_5x3, rel=2e-3)
    assert planted[4] == "5" and planted[5] == "Friedman exact over M0/M3/M6, 5 patients"
    # FDR-significant rows first: the planted one leads, the null right-NAWM RD is not first.
    order = list(rows)
    sig = re.findall(r'<tr class="sig"><td>([^<]*)</td>',
                     text[text.index('<section id="key-findings">'):text.index("</section>")])
    assert order[:len(sig)] == sig and "NAWM left RD" in sig
    assert "NAWM right RD" not in sig
    assert abs(_pct(rows["NAWM right RD"][1])) < 0.5
    # EDSS planted -0.5 from 6.0 in every patient: -8.3 %.
    assert _pct(rows["EDSS"][1]) == pytest.approx(-100 * 0.5 / 6.0, abs=0.05)
    assert "NBS component (FWER p)" in rows and rows["NBS component (FWER p)"][2] == "0.03"
    # What n allows, for n = 5.
    assert ("With 5 patients no pairwise comparison can reach p &lt; 0.05: the smallest exact "
            "two-sided Wilcoxon p, all 5 changing in the same direction, is 2/32 = 0.0625"
            in text)


@pytest.mark.parametrize("n, k, allows, fraction, holm", [
    (5, 3, False, "2/32 = 0.0625", None),
    (6, 3, "alone", "2/64 = 0.0312", "0.0938"),
    (8, 3, True, "2/256 = 0.00781", "0.0234"),
    (5, 2, False, "2/32 = 0.0625", None),
])
def test_what_n_allows(n, k, allows, fraction, holm):
    from msimaging.report.findings import what_n_allows

    text = what_n_allows(n, k)
    assert text.startswith(f"With {n} patients")
    assert fraction in text
    assert ("no pairwise comparison can reach p < 0.05" in text) == (allows is False)
    if allows == "alone":
        assert "alone can reach p < 0.05" in text and f"over the 3 pairs of visits ({holm})" \
            in text
    elif allows:
        assert "a pairwise comparison can reach p < 0.05" in text
        assert f"({holm} after Holm over 3 pairs)" in text
    # Friedman over 3 visits: floor (1/6)^(n-1), well below 0.05 from n = 3.
    if k == 3:
        assert f"the Friedman test over the 3 visits can (smallest p = {(1/6)**(n-1):.3g})" \
            in text
    else:
        assert "Friedman" not in text


def test_what_n_allows_bad_input():
    from msimaging.errors import InputError
    from msimaging.report.findings import what_n_allows

    with pytest.raises(InputError, match="n_patients"):
        what_n_allows(1, 3)
    with pytest.raises(InputError, match="alpha"):
        what_n_allows(5, 3, alpha=1.5)


def _nawm_study(root: Path, n_patients: int) -> Path:
    """Sessions and NAWM tables only: left RD falls 1 %/month in every patient."""
    rng = np.random.default_rng(1)
    subjects = [f"sub-{i:02d}" for i in range(1, n_patients + 1)]
    months = [0.0, 3.0, 6.0]
    writer = DerivativesWriter(root / "deriv", input_datasets=[root / "study"])
    writer.write_group_table(pd.DataFrame(
        [{"participant_id": s, "session_id": f"ses-M{m:g}", "months": m}
         for s in subjects for m in months]), "sessions")
    writer.write_group_table(pd.DataFrame(
        [{"participant_id": s, "session_id": f"ses-M{m:g}", "roi": roi, "metric": "rd",
          "mean": 5e-4 * (1 - (0.01 * m if roi == "NAWM_left" else 0) + rng.normal(0, 1e-3))}
         for s in subjects for m in months for roi in ("NAWM_left", "NAWM_right")]),
        "dti_nawm")
    return writer.root


@pytest.mark.parametrize("n_patients", [5, 8])
def test_report_sentence_follows_n(tmp_path, n_patients):
    """The n sentence is computed: 5 patients cannot reach p < 0.05 pairwise, 8 can; the
    pairwise table is one sentence at n = 5 (every p at its floor) and a table at n = 8."""
    text = build_report(_nawm_study(tmp_path, n_patients), tmp_path / "r.html").read_text()
    rows = _key_findings_rows(text)
    assert _pct(rows["NAWM left RD"][1]) == pytest.approx(-6.0, abs=0.3)
    assert float(rows["NAWM left RD"][2]) == pytest.approx((1 / 6) ** (n_patients - 1),
                                                           rel=2e-3)
    assert rows["NAWM left RD"][4] == str(n_patients)
    if n_patients == 5:
        assert "With 5 patients no pairwise comparison can reach p &lt; 0.05" in text
        assert "3 of 3 comparisons sit at the floor p = 0.0625" in text
        assert "p Holm" not in text
    else:
        assert "With 8 patients a pairwise comparison can reach p &lt; 0.05" in text
        assert "2/256 = 0.00781 (0.0234 after Holm over 3 pairs)" in text
        # Every patient falls at every step: again all at the (now lower) floor, one sentence.
        assert "3 of 3 comparisons sit at the floor p = 0.00781" in text


def test_no_table_whose_every_p_sits_at_its_floor(study_outputs):
    report, _ = study_outputs
    text = report.read_text(encoding="utf-8")
    floors = (FRIEDMAN_FLOOR_5x3, WILCOXON_FLOOR_5, HOLM_FLOOR_5x3)
    tables = _parse_tables(text)
    assert len(tables) >= 5
    checked = 0
    for head, body in tables:
        p_cols = [i for i, h in enumerate(head)
                  if re.match(r"(p\b|p_value$|best_p$)", h, flags=re.I)]
        values = [float(row[i]) for row in body for i in p_cols
                  if i < len(row) and re.fullmatch(r"[0-9.e-]+", row[i])]
        if not values:
            continue
        checked += 1
        at_floor = [any(np.isclose(v, f, rtol=5e-3) for f in floors) for v in values]
        assert not all(at_floor), (head, body)
    assert checked >= 4
    # The planted measure's pairwise table (every p 0.0625, Holm 0.188) became one sentence.
    assert "3 of 3 comparisons sit at the floor p = 0.0625" in text


def test_approximate_p_and_notes_are_collapsed(study_outputs):
    report, _ = study_outputs
    text = report.read_text(encoding="utf-8")
    # The chi-square p only inside <details>.
    for match in re.finditer(r"p chi2 \(approx\.\)", text):
        before = text[:match.start()]
        assert before.rfind("<details") > before.rfind("</details>")
    assert "p chi2 (approx.)" in text
    # Each note once, with the count of measures it concerns.
    notes = re.findall(r'<details class="note">.*?</ul></details>', text, flags=re.S)
    assert notes
    for block in notes:
        messages = re.findall(r"<li>([^<]*)", block)
        assert len(messages) == len(set(messages))
    wilcoxon = "no pairwise comparison can be significant"
    dti = text[text.index('id="dti"'):text.index('id="fmri"')]
    assert dti.count(wilcoxon) == 1
    # 2 ROIs x 2 metrics in the DTI table share the note.
    assert "&times;4 measures" in dti


def test_glossary_lists_the_abbreviations_used(study_outputs):
    report, _ = study_outputs
    text = report.read_text(encoding="utf-8")
    glossary = text[text.index('id="glossary"'):]
    terms = re.findall(r"<dt>([^<]*)</dt>", glossary)
    for term in ("NAWM", "FA", "RD", "EDSS", "NBS", "FDR", "FWER"):
        assert term in terms
    # Only those that appear: nothing here mentions BOLD, SPMS, PASAT or the optic radiation.
    for term in ("BOLD", "SPMS", "PASAT", "OR", "CST"):
        assert term not in terms
    assert terms == sorted(terms, key=str.lower)


def test_key_findings_visible_without_scrolling_in_chromium(study_outputs, browser, tmp_path):
    """At a 1400 x 900 viewport the whole key-findings block is on the first screen."""
    import os

    report, _ = study_outputs
    browser.set_window_size(1400, 900)
    inner = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    browser.set_window_size(2800 - inner[0], 1800 - inner[1])  # the viewport, not the window
    browser.get(report.resolve().as_uri())
    assert browser.execute_script("return [window.innerWidth, window.innerHeight]") == [1400,
                                                                                         900]
    top, bottom, height = browser.execute_script(
        "const r = document.getElementById('key-findings').getBoundingClientRect();"
        "return [r.top, r.bottom, r.height]")
    assert 0 <= top < bottom <= 900 and height > 150
    first = browser.execute_script(
        "return document.querySelector('h1 ~ section, h1 ~ h2').id || "
        "document.querySelector('h1 ~ section, h1 ~ h2').parentElement.id")
    assert first == "key-findings"
    shots = Path(os.environ.get("MSIMAGING_SHOTS_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    top_png = shots / "after_report_top.png"
    assert browser.save_screenshot(str(top_png)) and top_png.stat().st_size > 10_000
    full_height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1400, "height": int(min(full_height, 16_000)), "deviceScaleFactor": 1,
        "mobile": False})
    try:
        full_png = shots / "after_report_full.png"
        assert browser.save_screenshot(str(full_png)) and full_png.stat().st_size > 10_000
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
