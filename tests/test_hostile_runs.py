"""Hostile RUNS (issue 19): odd BIDS trees, command-line misuse, crashes and concurrent runs.

Every case builds its hostile tree from a copy of one or two subjects of the ``tiny_study``
fixture, runs the command line in this process (a subprocess where a kill is needed) or the
Python API, and classifies the outcome:

* ``typed``: an ``msimaging.errors`` error, or a documented exit code (16, 17, 18, 64, 65,
  130) with an ``error:`` line naming the culprit (file, argument, label);
* ``recovered``: success with a warning, the result checked;
* ``ok``: success and a correct result where nothing is wrong to warn about;
* ``untyped``: exit 1 or any other exception (a raw traceback), or an error not naming the
  culprit;
* ``silent``: success with a wrong or missing result, or anything written inside the input;
* ``hang``: no answer within the guard's time (SIGALRM in this process, a timeout for
  subprocesses).

Each case asserts its own class; ``test_sweep_summary`` asserts >= 25 cases, 0 untyped,
0 silent and 0 hangs over the whole sweep.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from msimaging.cli import main
from msimaging.errors import MSImagingError

pytestmark = pytest.mark.timeout(300)

_TEMP = re.compile(r"^\.[0-9a-f]{16}\.tmp\.")
_DOCUMENTED = {16, 17, 18, 64, 65, 130}
RESULTS: dict[str, tuple[str, str]] = {}


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _guard(seconds: float):
    """Raise _Hang in this (main) thread after ``seconds``: a blocking open() of a FIFO is
    interrupted too (the handler raises, so the system call is not retried)."""
    def alarm(signum, frame):
        raise _Hang(f"no answer after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (not following links): what must never change."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _temp_files(root: Path) -> list[str]:
    return [os.path.join(f, n) for f, _, names in os.walk(root) for n in names
            if _TEMP.match(n)]


@dataclass
class Ctx:
    """One case's tmp folder and the source study."""

    tmp: Path
    source: Path
    input: Path | None = None

    def tree(self, subjects=("sub-01",), sessions=None, modalities=("anat",),
             name="study") -> Path:
        """Copy ``subjects`` (``sessions`` only, ``anat``/``func`` folders only) of the study."""
        src, dst = self.source, self.tmp / name
        dst.mkdir(parents=True)
        for item in ("dataset_description.json", "participants.tsv", "participants.json",
                     "README"):
            shutil.copy2(src / item, dst / item)
        shutil.copytree(src / "phenotype", dst / "phenotype")

        def ignore(folder, names):
            drop = [n for n in names if n in ("anat", "dwi", "func") and n not in modalities]
            if sessions is not None:
                drop += [n for n in names if n.startswith("ses-") and n not in sessions]
            return drop

        for sub in subjects:
            shutil.copytree(src / sub, dst / sub, ignore=ignore)
            for der in ("fmriprep", "segmentation"):
                folder = src / "derivatives" / der
                (dst / "derivatives" / der).mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / "dataset_description.json",
                             dst / "derivatives" / der / "dataset_description.json")
                shutil.copytree(folder / sub, dst / "derivatives" / der / sub, ignore=ignore)
        if sessions is not None:  # keep sessions.tsv consistent with the folders kept
            for tsv in dst.glob("sub-*/sub-*_sessions.tsv"):
                rows = tsv.read_text().splitlines()
                tsv.write_text("\n".join([rows[0]] + [r for r in rows[1:]
                                                      if r.split("\t")[0] in sessions]) + "\n")
        self.input = dst
        return dst

    def out(self, name="out") -> Path:
        return self.tmp / name

    # -- runners ----------------------------------------------------------------------------
    def cli(self, argv: list[str], culprit: str | list[str],
            check: Callable[[], bool] | None = None, timeout: float = 60) -> tuple[str, str]:
        """Run ``msimaging ARGV`` in this process and classify the outcome."""
        before = _snapshot(self.input) if self.input else None
        err, out = io.StringIO(), io.StringIO()
        try:
            # main() prints warnings as "warning: ..." lines; under pytest they are recorded
            # instead, so both are gathered into the text classified.
            with _guard(timeout), contextlib.redirect_stderr(err), \
                    contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as said:
                code = main([str(a) for a in argv])
            err.write("".join(f"warning: {w.message}\n" for w in said
                              if issubclass(w.category, UserWarning)))
        except _Hang as exc:
            return "hang", str(exc)
        except SystemExit as exc:  # argparse
            code = exc.code
        except MSImagingError as exc:
            return self._named(f"error: {exc}", culprit, "raised")
        except BaseException as exc:
            return "untyped", f"{type(exc).__name__}: {exc}"
        return self._classify(code, err.getvalue(), culprit, check, before)

    def call(self, fn: Callable[[], object], culprit: str | list[str],
             check: Callable[[object], bool] | None = None,
             timeout: float = 60) -> tuple[str, str]:
        """Run the Python API and classify the outcome."""
        before = _snapshot(self.input) if self.input else None
        try:
            with _guard(timeout), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = fn()
        except _Hang as exc:
            return "hang", str(exc)
        except MSImagingError as exc:
            return self._named(f"{type(exc).__name__}: {exc}", culprit, "raised")
        except BaseException as exc:
            return "untyped", f"{type(exc).__name__}: {exc}"
        said = [str(w.message) for w in caught
                if issubclass(w.category, UserWarning)]
        return self._success(lambda: check(result) if check else True,
                             "\n".join(f"warning: {s}" for s in said), before)

    def _named(self, message: str, culprit, how: str) -> tuple[str, str]:
        names = [culprit] if isinstance(culprit, str) else culprit
        if all(n in message for n in names):
            return "typed", f"{how}: {message[:300]}"
        return "untyped", f"{how} without naming {names}: {message[:300]}"

    def _classify(self, code, stderr, culprit, check, before) -> tuple[str, str]:
        if code == 0:
            return self._success(check or (lambda: True), stderr, before)
        if self.input is not None and _snapshot(self.input) != before:
            return "silent", f"exit {code} but wrote inside the input"
        if code in _DOCUMENTED and "error" in stderr:
            kind, detail = self._named(stderr, culprit, f"exit {code}")
            return kind, detail
        return "untyped", f"exit {code}: {stderr[-600:]}"

    def _success(self, check, said, before) -> tuple[str, str]:
        if self.input is not None and _snapshot(self.input) != before:
            changed = set(_snapshot(self.input).items()) ^ set(before.items())
            return "silent", f"wrote inside the input: {sorted(changed)[:3]}"
        try:
            good = check()
        except Exception as exc:
            return "silent", f"success but the result check failed: {type(exc).__name__}: {exc}"
        if not good:
            return "silent", f"success with a wrong or missing result. {said[-300:]}"
        if "warning" in said:
            return "recovered", said[-300:]
        return "ok", "success, result checked"


def _participant(study: Path, out: Path, *extra) -> list:
    return [study, out, "participant", "--modalities", "volumetry", "--n-workers", "1",
            "--no-progress", *extra]


def _tissue(out: Path) -> pd.DataFrame:
    from msimaging.pipeline.group import _gather

    return _gather(out, "volumetry_tissue")


def _n_tissue_files(out: Path) -> int:
    return len(list(out.glob("sub-*/ses-*/anat/*_desc-tissue_volumes.tsv")))


def _lock_holder(out: Path, seconds: float) -> subprocess.Popen:
    """Another process that holds the lock of ``out`` for ``seconds``."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "try:\n"
        "    from msimaging.derivatives import OutputLock\n"
        "    lock = OutputLock(Path(sys.argv[1]), what='participant')\n"
        "    lock.acquire()\n"
        "except ImportError:\n"
        "    lock = None\n"
        "print('held', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "if lock is not None:\n"
        "    lock.release()\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, str(out), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


# --------------------------------------------------------------------------------------------
# The cases: each returns (class, detail)
# --------------------------------------------------------------------------------------------


def case_fifo_sessions_tsv(c: Ctx):
    study = c.tree()
    tsv = study / "sub-01" / "sub-01_sessions.tsv"
    tsv.unlink()
    os.mkfifo(tsv)
    return c.cli(_participant(study, c.out()), "sub-01_sessions.tsv", timeout=20)


def case_fifo_participants_tsv(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    (study / "participants.tsv").unlink()
    os.mkfifo(study / "participants.tsv")
    out = c.out()
    return c.cli(_participant(study, out), "participants.tsv",
                 check=lambda: _n_tissue_files(out) == 1, timeout=20)


def case_fifo_config(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    os.mkfifo(c.tmp / "config.json")
    return c.cli(_participant(study, c.out(), "--config", c.tmp / "config.json"),
                 "config.json", timeout=20)


def case_fifo_failures_tsv_in_output(c: Ctx):
    """The group level reads failures.tsv: a FIFO there must not hang it."""
    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    assert main([str(a) for a in _participant(study, out)]) == 0
    (out / "failures.tsv").unlink()
    os.mkfifo(out / "failures.tsv")
    from msimaging.pipeline import run_group

    return c.call(lambda: run_group(study, out, report=False, progress=False),
                  "failures.tsv", timeout=30)


def case_symlink_loop_in_anat(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    os.symlink("loop.nii.gz", study / "sub-01" / "ses-M0" / "anat" / "loop.nii.gz")
    return c.cli(_participant(study, c.out()), "loop.nii.gz", timeout=20)


def case_symlink_loop_subject(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    os.symlink("sub-09", study / "sub-09")
    return c.cli(_participant(study, c.out()), "sub-09", timeout=20)


def case_symlink_loop_output(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    os.symlink("out", c.tmp / "out")
    return c.cli(_participant(study, c.out()), str(c.out()), timeout=20)


def case_unreachable_scheduler(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    return c.cli(_participant(study, c.out(), "--scheduler", "tcp://127.0.0.1:9"),
                 "tcp://127.0.0.1:9", timeout=40)


def case_malformed_scheduler(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    return c.cli(_participant(study, c.out(), "--scheduler", "not an address"),
                 "--scheduler", timeout=40)


def case_output_parent_is_file(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    (c.tmp / "afile").write_text("x")
    return c.cli(_participant(study, c.tmp / "afile" / "out"), "afile", timeout=20)


def case_output_under_proc(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    return c.cli(_participant(study, "/proc/msimaging-out"), "/proc/msimaging-out",
                 timeout=20)


def case_output_logs_is_file(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    out.mkdir()
    (out / "logs").write_text("not a folder")
    return c.cli(_participant(study, out), "logs", timeout=20)


def case_output_is_file(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    c.out().write_text("x")
    return c.cli(_participant(study, c.out()), str(c.out()), timeout=20)


def case_logs_symlink_into_input(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    out.mkdir()
    os.symlink(study / "sub-01", out / "logs")
    return c.cli(_participant(study, out), "logs", timeout=20)


def case_subject_symlink_into_input(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    out.mkdir()
    os.symlink(study / "derivatives", out / "sub-01")
    return c.cli(_participant(study, out), "sub-01", timeout=20)


def case_group_symlink_into_input(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    assert main([str(a) for a in _participant(study, out)]) == 0
    shutil.rmtree(out / "group")
    os.symlink(study, out / "group")
    from msimaging.pipeline import run_group

    return c.call(lambda: run_group(study, out, report=False, progress=False), "group",
                  timeout=30)


def case_output_is_input(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    return c.cli(_participant(study, study), str(study), timeout=20)


def case_output_inside_input(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    return c.cli(_participant(study, study / "derivatives" / "msimaging"), str(study),
                 timeout=20)


def case_half_written_temp_file(c: Ctx):
    """A temp file left by a SIGKILL: removed at start-up, and never read as data."""
    from msimaging.derivatives import DerivativesLayout

    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    assert main([str(a) for a in _participant(study, out)]) == 0
    rows = len(_tissue(out))
    real = next(out.glob("sub-01/ses-M0/anat/*_desc-tissue_volumes.tsv"))
    stale = real.with_name(f".{'ab' * 8}.tmp.{real.name}")
    stale.write_text(real.read_text()[: len(real.read_text()) // 2])
    # Readers skip it even before any clean-up ...
    assert stale not in DerivativesLayout(out).participant_outputs("volumetry_tissue")
    assert len(_tissue(out)) == rows
    # ... and the next run removes it.
    return c.cli(_participant(study, out), "",
                 check=lambda: not stale.exists() and len(_tissue(out)) == rows
                 and not _temp_files(out), timeout=30)


def case_lock_held_by_other_run(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    holder = _lock_holder(out, 30)
    try:
        return c.cli(_participant(study, out), [str(holder.pid), str(out)],
                     check=lambda: False, timeout=20)
    finally:
        holder.kill()
        holder.wait()


def case_force_on_locked_folder(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    holder = _lock_holder(out, 30)
    try:
        return c.cli(_participant(study, out, "--force"), [str(holder.pid), str(out)],
                     check=lambda: False, timeout=20)
    finally:
        holder.kill()
        holder.wait()


def case_wait_for_lock(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    holder = _lock_holder(out, 2)
    try:
        return c.cli(_participant(study, out, "--wait"), "",
                     check=lambda: holder.poll() is not None and _n_tissue_files(out) == 1,
                     timeout=30)
    finally:
        holder.kill()
        holder.wait()


def case_stale_lock_taken_over(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    out.mkdir()
    import socket

    from msimaging.derivatives import LOCK_NAME

    pid = _dead_pid()
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                             "started": "2026-01-01T00:00:00"}))
    return c.cli(_participant(study, out), str(pid),
                 check=lambda: _n_tissue_files(out) == 1 and not (out / LOCK_NAME).exists(),
                 timeout=30)


def case_unknown_participant(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    return c.cli(_participant(study, c.out(), "--participant-label", "07"), "sub-07")


def case_invalid_participant_label(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    return c.cli(_participant(study, c.out(), "--participant-label", "../01"), "../01")


def case_session_filter_matches_nothing(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    return c.cli(_participant(study, c.out(), "--session-label", "M12"), "ses-M12")


def case_sessions_tsv_duplicate_rows(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    (study / "sub-01" / "sub-01_sessions.tsv").write_text(
        "session_id\tmonths\nses-M0\t0\nses-M0\t0\n")
    return c.cli(_participant(study, c.out()), ["sub-01_sessions.tsv", "line 3"])


def case_sessions_tsv_non_numeric_months(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    (study / "sub-01" / "sub-01_sessions.tsv").write_text(
        "session_id\tmonths\nses-M0\tbaseline\n")
    return c.cli(_participant(study, c.out()), ["sub-01_sessions.tsv", "baseline"])


def case_duplicate_visit_months(c: Ctx):
    """Two visits at the same month would be merged by every longitudinal table."""
    study = c.tree(sessions=("ses-M0", "ses-M3"))
    (study / "sub-01" / "sub-01_sessions.tsv").write_text(
        "session_id\tmonths\nses-M0\t0\nses-M3\t0\n")
    return c.cli(_participant(study, c.out()), ["sub-01_sessions.tsv", "ses-M3"])


def case_subject_without_session(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    (study / "sub-02").mkdir()
    out = c.out()
    return c.cli(_participant(study, out), "sub-02",
                 check=lambda: _n_tissue_files(out) == 1)


def case_empty_dataset(c: Ctx):
    study = c.tmp / "study"
    study.mkdir()
    shutil.copy2(c.source / "dataset_description.json", study)
    c.input = study
    return c.cli(_participant(study, c.out()), str(study))


def case_missing_dataset_description(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    (study / "dataset_description.json").unlink()
    out = c.out()
    return c.cli(_participant(study, out), "dataset_description.json",
                 check=lambda: _n_tissue_files(out) == 1)


def case_invalid_dataset_description(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    (study / "dataset_description.json").write_text("{not json")
    out = c.out()
    return c.cli(_participant(study, out), "dataset_description.json",
                 check=lambda: _n_tissue_files(out) == 1)


def case_bids_dir_missing(c: Ctx):
    return c.cli(_participant(c.tmp / "nowhere", c.out()), "nowhere")


def case_n_workers_zero(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    return c.cli([study, c.out(), "participant", "--modalities", "volumetry",
                  "--n-workers", "0", "--no-progress"], "--n-workers")


def case_n_workers_negative(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    return c.cli([study, c.out(), "participant", "--modalities", "volumetry",
                  "--n-workers", "-2", "--no-progress"], "--n-workers")


def case_unknown_modality(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    return c.cli([study, c.out(), "participant", "--modalities", "pet"], "pet")


def case_unknown_modality_api(c: Ctx):
    from msimaging.pipeline import run_participant

    study = c.tree(sessions=("ses-M0",))
    return c.call(lambda: run_participant(study, c.out(), modalities=["pet"], n_workers=1,
                                          progress=False), "pet")


def case_config_is_directory(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    (c.tmp / "conf.toml").mkdir()
    return c.cli(_participant(study, c.out(), "--config", c.tmp / "conf.toml"), "conf.toml")


def case_config_invalid_toml(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    (c.tmp / "conf.toml").write_text("[fmri\nstrategy = ")
    return c.cli(_participant(study, c.out(), "--config", c.tmp / "conf.toml"), "conf.toml")


def case_group_one_subject(c: Ctx):
    """The group level with one subject: every statistic is undefined; say so."""
    from msimaging.pipeline import run_group

    study = c.tree(sessions=("ses-M0", "ses-M6"))
    out = c.out()
    assert main([str(a) for a in _participant(study, out)]) == 0

    def check(result):
        table = pd.read_csv(result.tables["volumetry_tissue"], sep="\t")
        return (any("1 subject" in n for n in result.notes)
                and len(table) == len(_tissue(out)) > 0)

    return c.call(lambda: run_group(study, out, report=True, progress=False), "1 subject",
                  check=check, timeout=120)


def case_spaces_and_non_ascii_path(c: Ctx):
    """A study under 'études cliniques/MS study' end to end, report phenotype included."""
    from msimaging.pipeline import run_group
    from msimaging.report.html import _input_dataset

    c.tmp = c.tmp / "études cliniques"
    study = c.tree(subjects=("sub-01", "sub-02"), sessions=("ses-M0", "ses-M6"),
                   name="MS study ü")
    out = c.tmp / "dérivées msimaging"

    def run():
        assert main([str(a) for a in _participant(study, out)]) == 0
        return run_group(study, out, report=True, progress=False)

    def check(result):
        page = Path(result.report).read_text(encoding="utf-8")
        return (_n_tissue_files(out) == 4 and _input_dataset(out) == study
                and "No phenotype tables" not in page and 'id="clinical"' in page)

    return c.call(run, "", check=check, timeout=150)


def case_fifo_phenotype_table(c: Ctx):
    """The report reads phenotype/*.tsv: a FIFO there is refused, not read forever."""
    from msimaging.pipeline import run_group

    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    assert main([str(a) for a in _participant(study, out)]) == 0
    (study / "phenotype" / "clinical.tsv").unlink()
    os.mkfifo(study / "phenotype" / "clinical.tsv")
    return c.call(lambda: run_group(study, out, report=True, progress=False), "clinical.tsv",
                  timeout=60)


def case_group_while_locked(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    assert main([str(a) for a in _participant(study, out)]) == 0
    holder = _lock_holder(out, 30)
    try:
        return c.cli([study, out, "group", "--no-progress"], [str(holder.pid), str(out)],
                     check=lambda: False, timeout=20)
    finally:
        holder.kill()
        holder.wait()


def case_lock_of_killed_run(c: Ctx):
    """A run killed by SIGKILL leaves its lock file: the next run takes it over."""
    from msimaging.derivatives import LOCK_NAME

    study = c.tree(sessions=("ses-M0",))
    out = c.out()
    holder = _lock_holder(out, 30)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_NAME).exists()
    return c.cli(_participant(study, out), str(holder.pid),
                 check=lambda: _n_tissue_files(out) == 1 and not (out / LOCK_NAME).exists(),
                 timeout=30)


def case_sessions_tsv_symlink_loop(c: Ctx):
    study = c.tree(sessions=("ses-M0",))
    tsv = study / "sub-01" / "sub-01_sessions.tsv"
    tsv.unlink()
    os.symlink(tsv.name, tsv)
    return c.cli(_participant(study, c.out()), "sub-01_sessions.tsv", timeout=20)


def case_bids_dir_symlink_loop(c: Ctx):
    os.symlink("study", c.tmp / "study")
    return c.cli(_participant(c.tmp / "study", c.out()), str(c.tmp / "study"), timeout=20)


CASES: dict[str, Callable[[Ctx], tuple[str, str]]] = {
    name.removeprefix("case_"): fn for name, fn in dict(globals()).items()
    if name.startswith("case_")
}
#: The acceptable classes: "ok" only where nothing is wrong (or the hostile part is unread).
EXPECTED = {name: {"typed", "recovered"} for name in CASES}
EXPECTED["half_written_temp_file"] = {"recovered", "ok"}
EXPECTED["fifo_participants_tsv"] = {"typed", "recovered", "ok"}
EXPECTED["wait_for_lock"] = {"recovered", "ok"}
EXPECTED["spaces_and_non_ascii_path"] = {"ok", "recovered"}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case(name, tiny_study, tmp_path):
    ctx = Ctx(tmp_path, tiny_study[0])
    started = time.perf_counter()
    try:
        kind, detail = CASES[name](ctx)
    except Exception as exc:  # the case's own set-up failed: counts against the sweep
        kind, detail = "untyped", f"set-up failed: {type(exc).__name__}: {exc}"
    RESULTS[name] = (kind, f"{time.perf_counter() - started:.1f} s: {detail}")
    print(f"\nCASE {name:36s} {kind:9s} {detail[:160]!r}")
    for out in tmp_path.rglob("out"):
        if out.is_dir() and not out.is_symlink():
            assert not _temp_files(out), f"{name}: temp files left in {out}"
    assert kind in EXPECTED[name], f"{name}: {kind}: {detail}"


# --------------------------------------------------------------------------------------------
# Kills mid-run (subprocesses)
# --------------------------------------------------------------------------------------------


def _start(study: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "msimaging", *map(str, _participant(study, out))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_first_output(proc: subprocess.Popen, out: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(out.glob("sub-01/ses-*/anat/*")):
            return
        time.sleep(0.005)
    raise AssertionError(f"no output appeared in {out} (exit {proc.poll()})")


@pytest.fixture(scope="module")
def reference(tiny_study, tmp_path_factory):
    """One subject x 2 visits, volumetry: an uninterrupted participant + group run."""
    from msimaging.pipeline import run_group

    ctx = Ctx(tmp_path_factory.mktemp("reference"), tiny_study[0])
    study = ctx.tree(sessions=("ses-M0", "ses-M6"))
    out = ctx.out()
    assert main([str(a) for a in _participant(study, out)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = run_group(study, out, report=False, progress=False)
    return study, out, group


def _group_tables(out: Path) -> dict[str, pd.DataFrame]:
    """The group tables without what measures time (task records, seconds per step)."""
    return {p.stem: pd.read_csv(p, sep="\t").drop(columns="seconds", errors="ignore")
            for p in sorted((out / "group").glob("*.tsv")) if p.stem != "participant_tasks"}


def test_sigkill_mid_write_then_rerun(reference, tiny_study, tmp_path):
    """SIGKILL while the first outputs are being written, then the same command again: no
    stale file anywhere and group tables identical to the uninterrupted run."""
    from msimaging.pipeline import run_group

    _, ref_out, _ = reference
    ctx = Ctx(tmp_path, tiny_study[0])
    study = ctx.tree(sessions=("ses-M0", "ses-M6"))
    out = ctx.out()
    before = _snapshot(study)
    proc = _start(study, out)
    try:
        _wait_for_first_output(proc, out)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    # A kill mid-write leaves the half-written temp file the issue found: plant one too, so
    # that the rerun is tested on it whatever moment the kill hit.
    anat = next(out.glob("sub-01/ses-*/anat"))
    (anat / f".{'cd' * 8}.tmp.sub-01_ses-M0_desc-tissue_volumes.tsv").write_text(
        "participant_id\tsession_id\tlabel\nsub-01\tses-M0\t")
    with _guard(120):
        assert main([str(a) for a in _participant(study, out)]) == 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_group(study, out, report=False, progress=False)
    assert _snapshot(study) == before, "the input changed"
    assert not _temp_files(out), _temp_files(out)
    from msimaging.derivatives import LOCK_NAME

    assert not (out / LOCK_NAME).exists()
    got, want = _group_tables(out), _group_tables(ref_out)
    assert sorted(got) == sorted(want)
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=False, rtol=1e-9,
                                      obj=name)
    RESULTS["sigkill_mid_write_then_rerun"] = ("recovered", "rerun: group tables identical")


def test_sigint_mid_run_releases_lock(tiny_study, tmp_path):
    """Ctrl-C mid-run: exit 130 with its message, no temp file left, the lock released."""
    from msimaging.derivatives import LOCK_NAME

    ctx = Ctx(tmp_path, tiny_study[0])
    study = ctx.tree(sessions=("ses-M0", "ses-M6"))
    out = ctx.out()
    proc = _start(study, out)
    try:
        _wait_for_first_output(proc, out)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        RESULTS["sigint_mid_run"] = ("hang", "no exit 60 s after SIGINT")
        raise
    finally:
        proc.kill()
    if proc.returncode == 0:  # finished before the signal arrived: nothing to interrupt
        kind = "ok"
    elif proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr:
        kind = "typed"
    else:
        kind = "untyped"
    RESULTS["sigint_mid_run"] = (kind, f"exit {proc.returncode}: {stderr[-300:]}")
    print(f"\nCASE sigint_mid_run {kind} exit {proc.returncode}: {stderr[-300:]!r}")
    assert kind in ("typed", "ok"), stderr
    assert not _temp_files(out)
    assert not (out / LOCK_NAME).exists()


def test_sweep_summary():
    """Runs last: the whole sweep, >= 25 cases, 0 untyped, 0 silent, 0 hangs."""
    if len(RESULTS) < len(CASES):
        pytest.skip("only part of the sweep ran (-k); the summary needs all of it")
    counts = pd.Series([kind for kind, _ in RESULTS.values()]).value_counts().to_dict()
    table = "\n".join(f"  {name:40s} {kind:10s} {detail[:150]}"
                      for name, (kind, detail) in sorted(RESULTS.items()))
    print(f"\nhostile runs: {len(RESULTS)} cases, {counts}\n{table}")
    assert len(RESULTS) >= 25
    assert counts.get("untyped", 0) == 0, table
    assert counts.get("silent", 0) == 0, table
    assert counts.get("hang", 0) == 0, table
