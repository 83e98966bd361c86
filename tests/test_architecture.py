"""The layered architecture: every module is placed in the import-linter contract, and
``import msimaging`` (and the shared-core modules used by the CLI) stay light."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import msimaging

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "msimaging"
HEAVY = ("numpy", "scipy", "pandas", "nibabel", "dipy", "nilearn", "matplotlib", "bids", "bct")


def _contract_layers() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = [
        c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"
    ]
    names = set()
    for layer in contract["layers"]:
        names.update(part.strip() for part in layer.replace(":", "|").split("|"))
    return names


def test_every_module_is_placed_in_a_layer():
    modules = {
        f"msimaging.{p.stem if p.is_file() else p.name}"
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and not p.stem.startswith("_"))
        or (p.is_dir() and (p / "__init__.py").exists())
    }
    unplaced = modules - _contract_layers()
    assert not unplaced, f"add these to the layers contract in pyproject.toml: {unplaced}"


def test_science_subpackages_exist_and_are_lazy():
    for name in ("dti", "fmri", "volumetry", "stats", "pipeline", "report"):
        assert (PACKAGE / name / "__init__.py").exists()
        assert name in msimaging.__all__
    assert msimaging.__version__


def test_import_msimaging_is_light():
    code = (
        "import sys, msimaging, msimaging.errors, msimaging.bids, msimaging.derivatives;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"heavy modules imported at import time: {out}"


def test_lazy_attribute_access_imports_subpackage():
    code = "import msimaging, sys; msimaging.stats; print('msimaging.stats' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "True"
