"""Per-participant QC pages (msimaging.report.qc) on the tiny demo study.

Ground truth: the T1w-on-MNI overlay goes through the saved transform in the right direction
(the subject's head mask lands on the template brain mask, far better than the inverse
transform or no transform); every visit has each kind of figure as a real PNG; a visit
without fMRI says so; hostile labels are escaped and paths with spaces work.
"""

from __future__ import annotations

import base64
import html
import io
import re
import shutil
import urllib.parse

import nibabel as nib
import numpy as np
import pytest

from msimaging.errors import InputError
from msimaging.registration import load_transform, mni_template
from msimaging.report.qc import _resample, qc_links_html, t1w_on_template, write_qc_pages

pytestmark = pytest.mark.timeout(900)

KINDS = ("reg-mni", "reg-dwi", "nawm", "lesion", "tracts", "profiles", "fd", "nodes")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = 'sub-<img src=x onerror=alert(1)>"&'


def _sections(page: str) -> dict[str, str]:
    """Visit label -> the HTML of its section."""
    parts = re.findall(r'<section class="visit" id="([^"]+)">(.*?)</section>', page, re.S)
    return dict(parts)


def _images(section: str) -> list[tuple[str, bytes]]:
    return [(kind, base64.b64decode(data)) for kind, data in re.findall(
        r'<img class="qc-([a-z-]+)"[^>]*src="data:image/png;base64,([^"]+)"', section)]


@pytest.fixture(scope="module")
def demo(tiny_demo):
    out, proc = tiny_demo
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "derivatives" / "msimaging", out / "study"


@pytest.fixture(scope="module")
def altered(demo, tmp_path_factory):
    """A copy of sub-01 in folders with spaces: ses-M3 without any fMRI (derivatives and
    input), plus a participant with a hostile label (a copy of sub-01's ses-M0)."""
    deriv, study = demo
    root = tmp_path_factory.mktemp("qc") / "folder with spaces"
    new_deriv, new_study = root / "deriv ms", root / "study copy"
    shutil.copytree(deriv / "sub-01", new_deriv / "sub-01")
    shutil.copy(deriv / "dataset_description.json", new_deriv)
    shutil.copytree(deriv / "group", new_deriv / "group")
    shutil.copytree(study / "sub-01", new_study / "sub-01")
    shutil.copytree(study / "derivatives", new_study / "derivatives",
                    ignore=shutil.ignore_patterns("sub-02"))
    shutil.rmtree(new_deriv / "sub-01" / "ses-M3" / "func")
    (new_deriv / "sub-01" / "ses-M3" / "sub-01_ses-M3_desc-fmri_provenance.json").unlink()
    shutil.rmtree(new_study / "sub-01" / "ses-M3" / "func")
    shutil.rmtree(new_study / "derivatives" / "fmriprep" / "sub-01" / "ses-M3" / "func")
    shutil.copytree(deriv / "sub-01" / "ses-M0", new_deriv / HOSTILE / "ses-M0")
    pages = write_qc_pages(new_deriv, new_study, output_dir=root / "qc out")
    return new_deriv, root, pages


def test_one_page_per_participant_linked_from_the_report(demo):
    deriv, _ = demo
    report = (deriv / "report.html").read_text(encoding="utf-8")
    section = report[report.index('id="qc"'):]
    hrefs = re.findall(r'<a href="([^"]+)">(sub-[^<]+)</a>', section)
    participants = sorted(p.name for p in deriv.glob("sub-*") if p.is_dir())
    assert sorted(label for _, label in hrefs) == participants
    assert 'href="#qc"' in report  # the nav link
    for href, label in hrefs:
        assert not href.startswith(("/", "file:"))  # relative: the folder stays portable
        page = (deriv / urllib.parse.unquote(html.unescape(href))).resolve()
        assert page.is_file() and page.parent == (deriv / "qc").resolve()
        assert f"Quality control: {label}" in page.read_text(encoding="utf-8")


def test_every_visit_has_every_figure_as_a_real_png(demo):
    deriv, _ = demo
    for subject in sorted(deriv.glob("sub-*")):
        page = (deriv / "qc" / f"{subject.name}.html").read_text(encoding="utf-8")
        sections = _sections(page)
        assert sorted(sections) == sorted(p.name for p in subject.glob("ses-*"))
        for label, section in sections.items():
            images = _images(section)
            counts = {kind: sum(k == kind for k, _ in images) for kind in KINDS}
            assert counts == dict.fromkeys(KINDS, 1), (subject.name, label, counts)
            assert 'class="failed"' not in section
            for kind, data in images:
                assert data.startswith(PNG_SIGNATURE), kind
                assert len(data) > 5_000, (kind, len(data))
                from matplotlib.image import imread

                pixels = imread(io.BytesIO(data), format="png")
                assert min(pixels.shape[:2]) >= 150 and pixels[..., :3].std() > 0.05, kind


def test_t1w_on_mni_uses_the_transform_in_the_right_direction(demo):
    """The head mask (segmentation > 0) through the saved MNI<->T1w transform lands on the
    template brain mask: Dice > 0.9, and clearly better than the inverse matrix or none."""
    deriv, study = demo
    brain = np.asanyarray(mni_template("brain_mask", 2).dataobj) > 0
    reference = mni_template("t1", 2)
    for visit in ("ses-M0", "ses-M6"):
        anat = deriv / "sub-01" / visit / "anat"
        files = [*anat.glob("*from-MNI*_to-T1w*_xfm.txt"), *anat.glob("*MNIToT1w_xfm.json")]
        assert len(files) == 1, files
        transform = load_transform(files[0])
        seg = nib.load(next((study / "derivatives" / "segmentation" / "sub-01" / visit /
                             "anat").glob("*_dseg.nii.gz")))
        head = nib.Nifti1Image((np.asanyarray(seg.dataobj) > 0).astype(np.float32), seg.affine)

        def dice(img):
            warped = np.asanyarray(img.dataobj) > 0.5
            return 2 * (warped & brain).sum() / (warped.sum() + brain.sum())

        right = dice(t1w_on_template(head, transform, reference, order=0))
        # The same resampling with the matrix the other way round, and with no transform.
        wrong = dice(_resample(head, np.asarray(transform.matrix), reference.shape,
                               reference.affine, order=0))
        none = dice(_resample(head, np.eye(4), reference.shape, reference.affine, order=0))
        assert right > 0.9, right
        assert right > wrong + 0.1 and right > none + 0.05, (right, wrong, none)
        page = (deriv / "qc" / "sub-01.html").read_text(encoding="utf-8")
        stated = re.findall(r"Dice (\d\.\d\d)", _sections(page)[visit])
        assert stated and abs(float(stated[0]) - right) < 0.011


def test_visit_without_fmri_is_stated_and_other_visits_are_complete(altered):
    _, _, pages = altered
    page = pages["sub-01"].read_text(encoding="utf-8")
    sections = _sections(page)
    kinds = [k for k, _ in _images(sections["ses-M3"])]
    assert "fd" not in kinds and "nodes" not in kinds
    assert {"reg-mni", "reg-dwi", "nawm", "lesion", "tracts", "profiles"} <= set(kinds)
    assert "No fMRI for this visit" in sections["ses-M3"]
    for other in ("ses-M0", "ses-M6"):
        assert {k for k, _ in _images(sections[other])} == set(KINDS)
    assert 'class="failed"' not in page


def test_hostile_label_is_escaped_and_paths_with_spaces_work(altered):
    _, root, pages = altered
    assert set(pages) == {"sub-01", HOSTILE}
    hostile = pages[HOSTILE]
    assert hostile.parent == (root / "qc out") and re.fullmatch(r"sub-[A-Za-z0-9-]+\.html",
                                                                hostile.name)
    text = hostile.read_text(encoding="utf-8")
    assert "<img src=x" not in text and html.escape(HOSTILE) in text
    assert len(_images(_sections(text)["ses-M0"])) == len(KINDS)
    links = qc_links_html(pages, root / "report here.html")
    assert "<img src=x" not in links and html.escape(HOSTILE) in links
    for href in re.findall(r'href="([^"]+)"', links):
        assert (root / urllib.parse.unquote(html.unescape(href))).is_file()


def test_no_pyplot_figures_left_and_bad_folder_is_an_input_error(tmp_path, demo):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    deriv, study = demo
    small = tmp_path / "d"
    shutil.copytree(deriv / "sub-02" / "ses-M0", small / "sub-02" / "ses-M0")
    pages = write_qc_pages(small, study, output_dir=tmp_path / "qc")
    assert list(pages) == ["sub-02"] and plt.get_fignums() == before
    with pytest.raises(InputError, match="not a folder"):
        write_qc_pages(tmp_path / "nowhere")
