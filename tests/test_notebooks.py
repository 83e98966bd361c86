"""The notebook gallery (examples/notebooks) runs headless and shows every figure (issue 18).

Each notebook is executed with nbclient in a fresh temporary working folder (it makes its own
synthetic data there), on an ipykernel started with this interpreter (``sys.executable``, so the
kernel imports the msimaging under test, not whatever ``python`` comes first on PATH). A run
passes when no cell raises and every cell tagged ``figure`` displays a real PNG image (or, for an
interactive 3-D view, HTML). The kernel runs with ``MPLBACKEND=Agg``: pyplot's inline backend
cannot show anything, so an image can only come from msimaging's own display objects, as in a
user's fresh notebook.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import struct
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GALLERY = Path(__file__).resolve().parents[1] / "examples" / "notebooks"
NOTEBOOKS = (
    "01_dti_and_tracts.ipynb",
    "02_connectomes_nbs_networkx.ipynb",
    "03_volumetry_lesion_tracks.ipynb",
    "04_longitudinal_clinical_stats.ipynb",
    "05_batch_bids_dask.ipynb",
    "06_power_analysis.ipynb",
)
CELL_TIMEOUT_S = 600  # a hang guard, not a speed target (each notebook takes 20-50 s)
FIGURE_TAG = "figure"


def _is_figure(cell) -> bool:
    return cell.cell_type == "code" and FIGURE_TAG in cell.metadata.get("tags", [])


def _png_size(data: str) -> tuple[int, int]:
    """(width, height) of a base64 PNG, read from its IHDR chunk; raises if not a PNG."""
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR", "not a PNG image"
    return struct.unpack(">II", raw[16:24])


def test_gallery_is_the_six_notebooks():
    """A notebook added or removed is noticed here (and must be added to NOTEBOOKS)."""
    assert sorted(p.name for p in GALLERY.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean(name):
    """nbformat 4, valid, no outputs, explained by markdown, with at least one figure cell."""
    nb = nbformat.read(GALLERY / name, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        f"{name} is stored with outputs: clear them (Kernel > Restart & Clear Output)"
    )
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 3
    assert sum(_is_figure(c) for c in nb.cells) >= 1, f"{name} has no cell tagged 'figure'"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A kernel spec that starts ipykernel with this very interpreter."""
    spec_dir = tmp_path_factory.mktemp("kernels") / "msimaging-gallery"
    spec_dir.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "msimaging gallery (test)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return spec_dir.parent


def _end_process_group(pids: list[int]) -> None:
    """End what the kernel left running in its own process group (e.g. joblib's reusable
    loky workers, idle for minutes after ``run_group``, holding the test's output pipes)."""
    for pid in pids:
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            # the kernel is gone: its group id was its pid (jupyter starts a new session)
            group = pid
        if group != os.getpgrp():  # never our own group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)


def _execute(name: str, tmp_path: Path, kernel_dir: Path) -> tuple[object, float, str]:
    """Run one notebook: (the executed notebook, seconds, the error text or "")."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    nb = nbformat.read(GALLERY / name, as_version=4)
    work = tmp_path / "work"
    scratch = tmp_path / "tmp"  # the kernel's (and Dask workers') temporary files
    work.mkdir(parents=True)
    scratch.mkdir()
    env = {**os.environ, "MPLBACKEND": "Agg", "TMPDIR": str(scratch),
           "IPYTHONDIR": str(scratch / "ipython")}
    km = AsyncKernelManager(kernel_name="msimaging-gallery",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    kernel_pids = []
    client = nbclient.NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, allow_errors=False,
        resources={"metadata": {"path": str(work)}},
        on_notebook_start=lambda **_: kernel_pids.append(km.provisioner.pid),
    )
    started = time.perf_counter()
    error = ""
    try:
        client.execute(env=env)  # raises CellExecutionError, with the traceback, if a cell fails
    except Exception as exc:  # reported by the notebook's own test
        error = f"{type(exc).__name__}: {exc}"
    finally:
        _end_process_group(kernel_pids)
    return nb, time.perf_counter() - started, error


@pytest.fixture(scope="module")
def executed(tmp_path_factory, kernel_dir):
    """Every notebook, run two at a time (each in its own kernel and working folder), and the
    gallery folder's listing before and after."""
    from joblib import Parallel, delayed

    gallery_before = sorted(p.name for p in GALLERY.iterdir())
    runs = Parallel(n_jobs=2, backend="loky")(
        delayed(_execute)(name, tmp_path_factory.mktemp(name.split("_")[0]), kernel_dir)
        for name in NOTEBOOKS
    )
    gallery_after = sorted(p.name for p in GALLERY.iterdir())
    return dict(zip(NOTEBOOKS, runs, strict=True)), gallery_before, gallery_after


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_shows_its_figures(name, executed):
    runs, gallery_before, gallery_after = executed
    nb, seconds, error = runs[name]
    print(f"{name}: {seconds:.1f} s")
    assert not error, f"{name}: {error}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]

    figures = [c for c in nb.cells if _is_figure(c)]
    assert figures
    for cell in figures:
        shown = [o for o in cell.outputs if o.output_type in ("execute_result", "display_data")]
        pngs = [o.data["image/png"] for o in shown if "image/png" in o.data]
        html = [o.data["text/html"] for o in shown if "text/html" in o.data]
        last_line = cell.source.splitlines()[-1]
        outputs = [o.get("data", {}).get("text/plain", o.output_type) for o in cell.outputs]
        assert pngs or html, (
            f"{name}: the figure cell ending in {last_line!r} displayed no image; its "
            f"outputs: {outputs}"
        )
        for png in pngs:
            width, height = _png_size(png)
            assert width >= 200 and height >= 150, (name, last_line, width, height)

    # What the notebooks made is in their working folders, nothing in the repository.
    assert gallery_after == gallery_before
