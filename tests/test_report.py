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
    for section in ("cohort", "dti", "fmri", "volumetry", "clinical", "methods"):
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
        "return Array.from(document.querySelectorAll('h2')).map(h => h.id)")
    assert sections == ["cohort", "dti", "fmri", "volumetry", "clinical", "methods"]
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
