"""Every ```python block of README.md runs as written (issue 18: examples that never rot).

Each block runs in a **fresh namespace**: the README's sections are read (and copied) one at a
time, so every block starts with its own imports and loading lines. The working directory is
a temporary folder holding what the blocks refer to:

- ``study/``: the tiny synthetic study (the session's ``tiny_study``) copied with 3 of its 5
  patients x M0/M3/M6, a BIDS dataset with fMRIPrep-style and segmentation derivatives and
  ``phenotype/``;
- ``derivatives/msimaging/``: the pipeline's outputs on it (participant level fMRI only, the
  cheapest modality that feeds the NBS and the report; group level with 100 permutations).

An HTML comment right before a fence marks a block that cannot run in a test,
``<!-- readme-test: skip (reason) -->``, or one that shows a known library bug,
``<!-- readme-test: xfail (bug: ...) -->`` (strict: it must fail until the bug is fixed).
Figures use matplotlib's Agg backend.
"""

from __future__ import annotations

import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# the comment on the line(s) right before the fence: <!-- readme-test: skip (reason) -->
_MARK = re.compile(r"<!--[ \t]*readme-test:[ \t]*(skip|xfail)[ \t]*\(([^\n]*)\)[ \t]*-->\s*\Z")


@dataclass(frozen=True)
class Block:
    line: int  # README line number of the first code line
    code: str
    mark: str | None  # "skip", "xfail" or None
    reason: str

    @property
    def name(self) -> str:
        first = next((s for s in self.code.splitlines() if s.strip()), "")
        return f"README.md line {self.line}: {first.strip()}"


def readme_blocks(text: str) -> list[Block]:
    """The ```python blocks of ``text`` in order, with their readme-test marks."""
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip()
        mark = _MARK.search(before)
        line = text.count("\n", 0, match.start(1)) + 1
        blocks.append(Block(line, match.group(1), mark and mark.group(1),
                            mark.group(2).strip() if mark else ""))
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 8, [b.name for b in BLOCKS]
    assert sum(b.mark == "skip" for b in BLOCKS) <= 2, "skip is for blocks a test cannot run"


@pytest.fixture(scope="session")
def readme_folder(tiny_study, tmp_path_factory):
    """A folder with ``study/`` (the tiny study) and ``derivatives/msimaging/`` (its outputs)."""
    from msimaging.pipeline import run_group, run_participant

    folder = tmp_path_factory.mktemp("readme")
    keep = {"sub-01", "sub-02", "sub-03"}  # 3 of the 5 patients: the group level in seconds

    def other_subjects(parent, names):
        return [n for n in names if n.startswith("sub-") and n not in keep
                and (Path(parent) / n).is_dir()]

    shutil.copytree(tiny_study[0], folder / "study", ignore=other_subjects)
    output = folder / "derivatives" / "msimaging"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_participant(folder / "study", output, modalities=["fmri"], n_workers=1,
                              progress=False)
        assert run.ok, run.summary()
        run_group(folder / "study", output, n_permutations=100, n_jobs=1, progress=False)
    return folder


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}" for b in BLOCKS])
def test_readme_block_runs(block, readme_folder, monkeypatch):
    if block.mark == "skip":
        pytest.skip(f"{block.name}: {block.reason}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(readme_folder)
    # padded so that tracebacks give README.md's own line numbers
    code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the blocks may warn (e.g. p floors); not errors
            exec(code, {"__name__": "__readme__"})  # the README's own code
    except Exception as error:
        if block.mark == "xfail":
            pytest.xfail(f"{block.name}: {block.reason} ({type(error).__name__}: {error})")
        pytest.fail(f"{block.name} -> {type(error).__name__}: {error}", pytrace=True)
    finally:
        plt.close("all")
    if block.mark == "xfail":
        pytest.fail(f"{block.name} is marked xfail ({block.reason}) but ran: remove the mark")
