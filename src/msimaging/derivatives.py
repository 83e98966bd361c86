"""BIDS-derivative names, sidecars and atomic writes: the one module that knows them.

Everything msimaging writes goes through here, so that file names follow one rule (BIDS entity
order, ``desc`` last), every data file gets a JSON sidecar with provenance, and no reader ever
sees a half-written file: data are written to a hidden temporary file in the destination folder,
flushed to disk and renamed over the final path in one step (:func:`os.replace`).

Diffusion maps follow the BEP016 draft (``..._model-tensor_param-fa_dwimap.nii.gz``) and
connectivity matrices the BEP017 draft (``..._atlas-<a>_meas-<m>_relmat.tsv`` plus a node table).
Both drafts may still change; keeping all naming here means a change touches one file.

numpy, pandas and nibabel are imported inside the functions that need them, so that
``import msimaging`` stays light.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import socket
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msimaging._version import __version__
from msimaging.errors import InputError, MSImagingWarning, OutputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from nibabel.spatialimages import SpatialImage

__all__ = [
    "ENTITIES",
    "GROUP_TABLES",
    "LOCK_NAME",
    "PARTICIPANT_OUTPUTS",
    "DerivativesLayout",
    "DerivativesWriter",
    "OutputKind",
    "OutputLock",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "bids_name",
    "check_output_links",
    "merge_bidsignore",
    "portable_source",
    "read_relmat",
    "read_table",
    "remove_temp_files",
    "save_figure",
    "sidecar_path",
]

#: BIDS entities msimaging writes, in the order they appear in a file name (``desc`` last).
ENTITIES: tuple[str, ...] = (
    "sub",
    "ses",
    "task",
    "acq",
    "ce",
    "rec",
    "dir",
    "run",
    "space",
    "res",
    "den",
    "model",
    "param",
    "atlas",
    "seg",
    "roi",
    "meas",
    "label",
    "from",
    "to",
    "mode",
    "desc",
)

BIDS_VERSION = "1.9.0"
NA_REP = "n/a"

_LABEL = re.compile(r"[A-Za-z0-9]+")
_EXTENSION = re.compile(r"(\.[A-Za-z0-9]+)+")
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_IMAGE_EXTENSIONS = (".nii.gz", ".nii")

# Units of the tensor maps when b-values are in s/mm² (the BIDS convention).
_DWIMAP_UNITS = {
    "fa": "unitless",
    "ga": "unitless",
    "mode": "unitless",
    "md": "mm^2/s",
    "ad": "mm^2/s",
    "rd": "mm^2/s",
}

#: Key of the (first) input dataset in ``DatasetLinks``, used in ``bids:raw:...`` Sources.
RAW_LINK = "raw"

#: What msimaging writes that BIDS (1.10, the official validator's schema) does not define
#: yet, one ``.bidsignore`` pattern each, as narrow as the names allow: draft BEP suffixes
#: (BEP016 dwimap, BEP017 relmat/nodes, BEP014 xfm), tables and streamlines with no BIDS
#: suffix, provenance records, and the study-level folders/files outside the BIDS tree.
#: Folders are named without a trailing '/': the validator (2.x) then ignores the folder
#: entry itself, not only the files in it.
BIDSIGNORE_PATTERNS: tuple[str, ...] = (
    "/report.html",
    "/failures.tsv",
    "/figures",
    "/group",
    "/logs",
    "/qc",
    "/sub-*/*_provenance.json",
    "/sub-*/ses-*/*_provenance.json",
    "*_dwimap.nii.gz",
    "*_dwimap.json",
    "*_relmat.tsv",
    "*_relmat.json",
    "*_nodes.tsv",
    "*_timeseries.tsv",
    "*_timeseries.json",
    "*_xfm.txt",
    "*_xfm.json",
    "*_xfm_forward.nii.gz",
    "*_xfm_backward.nii.gz",
    "*_tractography.trk",
    "*_tractography.json",
    "*_stats.tsv",
    "*_stats.json",
    "*_volumes.tsv",
    "*_volumes.json",
    "*_lesions.tsv",
    "*_lesions.json",
)
_BIDSIGNORE_HEADER = "# msimaging: outputs BIDS does not define yet (draft BEPs, tables, report)"


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def _absolute(path: str | os.PathLike[str], argument: str = "path") -> Path:
    if not isinstance(path, str | os.PathLike):
        raise InputError(
            f"{argument} must be a file path (str or pathlib.Path), got {type(path).__name__}."
        )
    # abspath, not resolve: a symlink at the final path is replaced, not followed.
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"Cannot create the folder {str(path.parent)!r} for {path.name!r}: {exc}. "
            "Check that no file sits where a folder is expected and that you may write there."
        ) from exc


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Give a temporary path to write to, then move it onto ``path`` in one step.

    The temporary file is hidden and lives in the destination folder (so the final rename never
    crosses file systems); its name ends with the real file name, so writers that infer the
    format from the extension (``nibabel``, ``pandas``) still work. On success the file is
    flushed to disk and renamed over ``path`` with :func:`os.replace`. On any exception the
    temporary file is removed and the exception re-raised: ``path`` is then untouched, and a
    file previously there stays intact.

    Parameters
    ----------
    path : str or pathlib.Path
        Final destination. Missing parent folders are created.

    Yields
    ------
    pathlib.Path
        Absolute temporary path in the same folder, e.g.
        ``.<random>.tmp.sub-01_model-tensor_param-fa_dwimap.nii.gz``. It does not exist yet;
        the body of the ``with`` block must create it.

    Raises
    ------
    OutputError
        If the folder cannot be created, the body created no file, or the final rename fails.

    Examples
    --------
    >>> with atomic_path("out/sub-01_dwimap.nii.gz") as tmp:  # doctest: +SKIP
    ...     img.to_filename(tmp)
    """
    final = _absolute(path)
    _make_parent(final)
    tmp = final.with_name(f".{secrets.token_hex(8)}.tmp.{final.name}")
    try:
        yield tmp
        if not tmp.is_file():
            raise OutputError(
                f"Nothing was written for {str(final)!r}: the writer did not create the "
                f"temporary file {tmp.name!r}. Write to the path yielded by atomic_path()."
            )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise OutputError(
                f"Cannot move the new file onto {str(final)!r}: {exc}. Check that the path is "
                "not a folder and that you may write there; any previous file is unchanged."
            ) from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(final.parent)


_FIGURE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def save_figure(fig: Any, path: str | os.PathLike[str] | None, *, dpi: int = 150) -> Path | None:
    """Save a matplotlib figure atomically, in the format its extension names.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or os.PathLike or None
        ``.png``, ``.svg`` or ``.pdf``; None saves nothing.
    dpi : int
        Resolution of raster output.

    Returns
    -------
    pathlib.Path or None
        The absolute path written.
    """
    if path is None:
        return None
    if not isinstance(path, str | os.PathLike):
        raise InputError(f"path must be a file path, got {type(path).__name__}.")
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in _FIGURE_FORMATS:
        raise InputError(
            f"path {os.fspath(path)!r} must end with {', '.join(_FIGURE_FORMATS)} (the figure "
            "format is taken from the extension)."
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=_FIGURE_FORMATS[suffix], dpi=dpi)
    return _absolute(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Parameters
    ----------
    path : str or pathlib.Path
        Destination file; missing parent folders are created.
    data : bytes
        Content to write.

    Returns
    -------
    pathlib.Path
        Absolute path of the written file.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(
            f"data must be bytes, got {type(data).__name__}; use atomic_write_text() for str."
        )
    final = _absolute(path)
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return final


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, with ``\\n`` line endings on every platform.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination file; missing parent folders are created.
    text : str
        Content to write.
    encoding : str, default="utf-8"
        Text encoding.

    Returns
    -------
    pathlib.Path
        Absolute path of the written file.
    """
    if not isinstance(text, str):
        raise InputError(
            f"text must be str, got {type(text).__name__}; use atomic_write_bytes() for bytes."
        )
    return atomic_write_bytes(path, text.encode(encoding))


# --------------------------------------------------------------------------------------------
# Crash safety: temp files left by a kill, output links into the input, one run per folder
# --------------------------------------------------------------------------------------------

#: Name of a temporary file of :func:`atomic_path` (``.<16 hex>.tmp.<final name>``).
TEMP_FILE = re.compile(r"^\.[0-9a-f]{16}\.tmp\..")

#: The lock file of a run, in the output folder (hidden: BIDS tools ignore dot files).
LOCK_NAME = ".msimaging.lock"


def remove_temp_files(root: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files a killed run left under ``root`` (see :func:`atomic_path`).

    Only names of the form ``.<16 hex>.tmp.<name>`` are removed; links are not followed.
    Call it while holding the folder's :class:`OutputLock`, so that the temp files of a run
    in progress are never touched.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    removed = []
    for folder, _, names in os.walk(_absolute(root, "root")):
        for name in names:
            if TEMP_FILE.match(name):
                path = Path(folder) / name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def check_output_links(root: str | os.PathLike[str],
                       inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse an output folder where a link leads into an input dataset.

    Every entry under ``root`` (and ``root`` itself) is resolved: a symbolic link (a ``logs``
    or ``sub-01`` link, say) whose target is inside one of ``inputs`` would make the next
    write land in the input dataset.

    Raises
    ------
    OutputError
        Naming the link, its target and the input dataset.
    """
    sources = []
    for source in _as_list_of_str(inputs, "inputs"):
        with contextlib.suppress(OSError, RuntimeError):
            sources.append(_absolute(source).resolve())
    top = _absolute(root, "root")

    def refuse_if_inside(path: Path) -> None:
        try:
            real = path.resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise OutputError(
                f"{str(path)!r} in the output folder is a symbolic link loop ({exc}); remove "
                "the link or make it point to a folder."
            ) from exc
        for source in sources:
            if real.is_relative_to(source):
                raise OutputError(
                    f"{str(path)!r} in the output folder is a link to {str(real)!r}, inside "
                    f"the input dataset {str(source)!r}: writing there would change the "
                    "input. Remove the link (or point it outside the input dataset)."
                )

    refuse_if_inside(top)
    for folder, dirs, files in os.walk(top):  # links are listed, not followed
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink():
                refuse_if_inside(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """One msimaging run at a time per output folder.

    The lock is an ``fcntl.flock`` on ``<output>/.msimaging.lock``, which records the holder
    (pid, host, level, start time). The kernel releases a flock when its process dies, even by
    SIGKILL, so a lock is never stuck; the file such a process leaves behind is *stale* and
    the next run takes it over with a warning. A run that cannot take the lock raises
    :class:`~msimaging.errors.OutputError` naming the holder, or waits (``wait=True``).

    Parameters
    ----------
    root : path
        The output folder (created if missing).
    what : str
        The run taking the lock ("participant", "group"), recorded for the message.
    wait : bool or float
        False: refuse at once when another run holds the lock; True: wait for it; a number:
        wait at most that many seconds.
    """

    def __init__(self, root: str | os.PathLike[str], *, what: str = "run",
                 wait: bool | float = False) -> None:
        self.root = _absolute(root, "root")
        self.path = self.root / LOCK_NAME
        self.what = what
        self.wait = wait
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"OutputLock({str(self.path)!r}, held={self._fd is not None})"

    def _holder(self, fd: int) -> dict[str, Any]:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            data = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _describe(holder: Mapping[str, Any]) -> str:
        if not holder:
            return "another process"
        level = f"{holder['what']} " if holder.get("what") else ""
        return (f"the msimaging {level}run of pid {holder.get('pid')} on host "
                f"{holder.get('host')}, started {holder.get('started')}")

    def acquire(self) -> OutputLock:
        """Take the lock (see the class); returns self."""
        import fcntl

        _make_parent(self.path)
        deadline = (math.inf if self.wait is True else
                    time.monotonic() + float(self.wait or 0))
        said = False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o644)
            except OSError as exc:
                raise OutputError(
                    f"Cannot create the lock file {str(self.path)!r}: {exc}. Check that the "
                    "output folder is writable and that no folder or link has that name."
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise OutputError(
                        f"The output folder {str(self.root)!r} is in use by "
                        f"{self._describe(holder)} (lock {str(self.path)!r}). Two runs on one "
                        "folder would compute tasks twice and overwrite each other's records "
                        "(--force does not change that): wait for it to finish, pass --wait "
                        "to wait for it, or choose another output folder."
                    ) from None
                if not said:
                    print(f"waiting for {self._describe(holder)} to release "
                          f"{str(self.path)!r} ...", flush=True)
                    said = True
                time.sleep(0.2)
                continue
            except OSError as exc:  # a file system without locks
                os.close(fd)
                raise OutputError(
                    f"Cannot lock {str(self.path)!r}: {exc}. Use an output folder on a local "
                    "file system."
                ) from exc
            try:  # the holder removed the file between our open and flock: start again
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        previous = self._holder(fd)
        if previous:
            alive = (previous.get("host") == socket.gethostname()
                     and isinstance(previous.get("pid"), int) and _pid_alive(previous["pid"]))
            state = "still running but no longer holds it" if alive else "no longer running"
            warnings.warn(
                f"took over a stale lock of {str(self.root)!r} left by "
                f"{self._describe(previous)} ({state}: killed or crashed?); its temporary "
                "files are removed and its unfinished tasks run again.",
                MSImagingWarning, stacklevel=3,
            )
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode("utf-8"))
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and release the lock (no-op when not held)."""
        if self._fd is None:
            return
        # Unlink while still holding it: a waiter then sees another inode and starts again.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def _clean_label(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", value)


def _check_label(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(
            f"{what} must be a str label of letters and digits, got {type(value).__name__} "
            f"{value!r}."
        )
    if isinstance(value, int):
        if value < 0:
            raise InputError(f"{what} must not be negative, got {value}.")
        value = str(value)
    if not _LABEL.fullmatch(value):
        cleaned = _clean_label(value)
        hint = f"use {cleaned!r} instead" if cleaned else "use letters and digits only"
        raise InputError(
            f"{what} {value!r} is not a valid BIDS label: only letters and digits are allowed "
            f"(no '_', '-', '.', spaces or other characters, which separate entities in file "
            f"names); {hint}."
        )
    return value


def _subject_label(participant: Any) -> str:
    if isinstance(participant, str) and participant.startswith("sub-"):
        participant = participant[4:]
    if not isinstance(participant, str):
        raise InputError(
            f"participant must be a str label such as '01' or 'sub-01', got "
            f"{type(participant).__name__} {participant!r} (an int would lose leading zeros)."
        )
    return _check_label(participant, "participant label")


def _session_label(session: Any) -> str | None:
    if session is None:
        return None
    if isinstance(session, str) and session.startswith("ses-"):
        session = session[4:]
    if not isinstance(session, str):
        raise InputError(
            f"session must be a str label such as 'M0' or 'ses-M0' (or None), got "
            f"{type(session).__name__} {session!r}."
        )
    return _check_label(session, "session label")


def _check_extension(extension: Any) -> str:
    if not isinstance(extension, str):
        raise InputError(f"extension must be a str such as '.nii.gz', got {extension!r}.")
    ext = extension if extension.startswith(".") else f".{extension}"
    if not _EXTENSION.fullmatch(ext):
        raise InputError(
            f"extension {extension!r} is not valid: use a dot followed by letters and digits, "
            "e.g. '.nii.gz', '.tsv' or '.json'."
        )
    return ext


def bids_name(
    participant: str,
    session: str | None,
    suffix: str,
    extension: str,
    **entities: str | int | None,
) -> str:
    """Build a BIDS file name with the entities in BIDS order and ``desc`` last.

    Parameters
    ----------
    participant : str
        Participant label, with or without the ``sub-`` prefix (``"01"`` or ``"sub-01"``).
    session : str or None
        Session label, with or without the ``ses-`` prefix; None for single-session data.
    suffix : str
        BIDS suffix, e.g. ``"dwimap"``, ``"relmat"``, ``"mask"`` (letters and digits).
    extension : str
        File extension with its leading dot, e.g. ``".nii.gz"``.
    **entities : str, int or None
        Further entities by key (``space="MNI152NLin2009cAsym"``, ``desc="brain"``); None values
        are left out. Allowed keys are those of :data:`ENTITIES` except ``sub`` and ``ses``.

    Returns
    -------
    str
        The file name, e.g. ``"sub-01_ses-M0_model-tensor_param-fa_dwimap.nii.gz"``.

    Raises
    ------
    InputError
        On an unknown entity, or a label/suffix that is not purely letters and digits.

    Examples
    --------
    >>> bids_name("01", "M0", "mask", ".nii.gz", desc="brain", space="T1w")
    'sub-01_ses-M0_space-T1w_desc-brain_mask.nii.gz'
    """
    for key in ("sub", "ses"):
        if key in entities:
            raise InputError(
                f"Entity {key!r} was passed as a keyword; pass the "
                f"{'participant' if key == 'sub' else 'session'} label as the "
                f"{'first' if key == 'sub' else 'second'} argument instead."
            )
    unknown = sorted(set(entities) - set(ENTITIES))
    if unknown:
        raise InputError(
            f"Unknown BIDS entit{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
            f"allowed entities are: {', '.join(e for e in ENTITIES if e not in ('sub', 'ses'))}."
        )
    parts = [f"sub-{_subject_label(participant)}"]
    ses = _session_label(session)
    if ses is not None:
        parts.append(f"ses-{ses}")
    for key in ENTITIES[2:]:
        value = entities.get(key)
        if value is not None:
            parts.append(f"{key}-{_check_label(value, f'entity {key!r} value')}")
    parts.append(_check_label(suffix, "suffix"))
    return "_".join(parts) + _check_extension(extension)


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Return the JSON sidecar path of a data file (the same name with ``.json``).

    Parameters
    ----------
    path : str or pathlib.Path
        Data file, e.g. ``.../sub-01_model-tensor_param-fa_dwimap.nii.gz``.

    Returns
    -------
    pathlib.Path
        Absolute path, e.g. ``.../sub-01_model-tensor_param-fa_dwimap.json``. A ``.json`` path
        is returned unchanged.
    """
    final = _absolute(path)
    stem = final.name.split(".", 1)[0]
    if not stem:
        raise InputError(f"path {str(final)!r} has no file name before its extension.")
    return final.with_name(f"{stem}.json")


# --------------------------------------------------------------------------------------------
# JSON and TSV
# --------------------------------------------------------------------------------------------


def _jsonable(obj: Any, where: str) -> Any:
    """Convert numpy scalars/arrays, Paths and tuples to JSON types; refuse NaN and objects."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise InputError(
                f"Metadata {where} is {obj}, which JSON cannot store; use None for a missing "
                "value or a string such as 'inf'."
            )
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise InputError(
                    f"Metadata keys must be str; {where} has key {key!r} "
                    f"({type(key).__name__}). Convert the key with str()."
                )
            out[key] = _jsonable(value, f"{where}[{key!r}]")
        return out
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=str) if isinstance(obj, set | frozenset) else obj
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if type(obj).__module__ == "numpy":
        import numpy as np

        if isinstance(obj, np.ndarray):
            return _jsonable(obj.tolist(), where)
        if isinstance(obj, np.generic):
            return _jsonable(obj.item(), where)
    raise InputError(
        f"Metadata {where} has type {type(obj).__name__}, which cannot be written to JSON; "
        "use str, int, float, bool, None, lists, dicts, numpy numbers/arrays or paths."
    )


def _json_text(metadata: Mapping[str, Any], where: str) -> str:
    return json.dumps(_jsonable(metadata, where), indent=2, ensure_ascii=False) + "\n"


def _check_frame(df: Any, argument: str) -> pd.DataFrame:
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise InputError(
            f"{argument} must be a pandas DataFrame, got {type(df).__name__}; build one with "
            "pandas.DataFrame(...)."
        )
    columns = [str(c) for c in df.columns]
    if len(df.columns) == 0:
        raise InputError(f"{argument} has no columns; a TSV table needs at least one column.")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise InputError(
            f"{argument} has duplicated column names {duplicated}; rename them so each column "
            "is unique."
        )
    bad = [c for c in columns if not c or re.search(r"[\t\r\n]", c)]
    if bad:
        raise InputError(
            f"{argument} has column names {bad!r} that are empty or contain tabs/newlines; "
            "rename them."
        )
    for column in df.columns:
        series = df[column]
        if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
            text = series.dropna().astype(str)
            if text.str.contains(r"[\t\r\n]", regex=True).any():
                raise InputError(
                    f"{argument} column {str(column)!r} has values with tabs or newlines, which "
                    "would break the TSV file; replace them (e.g. with spaces)."
                )
    return df


def _table_text(df: pd.DataFrame) -> str:
    return df.to_csv(sep="\t", na_rep=NA_REP, index=False, lineterminator="\n")


def _check_regular(file: Path, what: str) -> None:
    """Refuse what is not a regular file before opening it (a FIFO would block forever)."""
    import stat

    try:
        mode = os.stat(file).st_mode
    except FileNotFoundError:
        raise InputError(
            f"{what} {str(file)!r} does not exist; check the path (write it with "
            "DerivativesWriter.write_table)."
        ) from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, permissions
        raise InputError(f"{what} {str(file)!r} cannot be opened: {exc}.") from exc
    if not stat.S_ISREG(mode):
        raise InputError(
            f"{what} {str(file)!r} is not a regular file (a folder, FIFO or device); "
            "replace it with the file, or delete it."
        )


def read_table(path: str | os.PathLike[str], *, dtype: Any = None) -> pd.DataFrame:
    """Read a BIDS TSV table written by msimaging, with ``n/a`` read back as NaN.

    Only ``n/a`` and empty cells count as missing: strings such as ``"NA"`` or ``"nan"`` stay
    strings.

    Parameters
    ----------
    path : str or pathlib.Path
        TSV file with a header row.
    dtype : type or dict, optional
        Passed to :func:`pandas.read_csv`, e.g. ``{"session_id": str}`` to keep ``"01"``.

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    file = _absolute(path)
    _check_regular(file, "Table")
    try:
        return pd.read_csv(
            file, sep="\t", na_values=[NA_REP, ""], keep_default_na=False, dtype=dtype
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(
            f"Table {str(file)!r} cannot be read as a tab-separated table: {exc}."
        ) from exc


def read_relmat(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a headerless ``*_relmat.tsv`` matrix (``n/a`` read as NaN).

    Parameters
    ----------
    path : str or pathlib.Path
        File written by :meth:`DerivativesWriter.write_relmat`.

    Returns
    -------
    numpy.ndarray
        Square float64 matrix.
    """
    import pandas as pd

    file = _absolute(path)
    if not file.is_file():
        raise InputError(f"Matrix file {str(file)!r} does not exist; check the path.")
    try:
        frame = pd.read_csv(
            file,
            sep="\t",
            header=None,
            na_values=[NA_REP],
            keep_default_na=False,
            dtype="float64",
        )
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(
            f"Matrix file {str(file)!r} is not a tab-separated table of numbers: {exc}."
        ) from exc
    matrix = frame.to_numpy()
    if matrix.shape[0] != matrix.shape[1]:
        raise InputError(f"Matrix file {str(file)!r} is not square: shape {matrix.shape}.")
    return matrix


# --------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------


#: README spellings BIDS accepts at a dataset's root.
_README_NAMES = ("README", "README.md", "README.rst", "README.txt")
_README_TEXT = """# {name} derivatives

Written by msimaging {version} (longitudinal imaging analysis in multiple sclerosis).

- `sub-<label>/ses-<label>/{{anat,dwi,func}}/`: per-visit outputs of the participant level
  (tensor maps and NAWM/tract tables, tract masks and streamlines, connectivity matrices and
  node tables, tissue volumes and lesion tables, ITK transforms `*_xfm.txt`), each with a
  JSON sidecar (Sources as BIDS URIs: `bids:raw:` is the input dataset of
  `dataset_description.json`'s DatasetLinks).
- `group/`: study tables of the group level (visits, DTI, volumetry, lesion tracks, NBS).
- `figures/`, `qc/` and `report.html`: figures, per-participant quality-control pages and
  the study report; `logs/` and `failures.tsv`: what each run did and what failed.
- `.bidsignore` lists the outputs BIDS does not define yet (draft BEP suffixes and tables).
"""


def merge_bidsignore(root: str | os.PathLike[str], patterns: Iterable[str]) -> Path:
    """Add ``patterns`` to ``root/.bidsignore``, keeping its lines and never duplicating one.

    Lines already in the file (the user's own included) stay, in their order; missing
    patterns are appended under a one-line msimaging comment. The file is rewritten
    atomically, and only when a line is missing.

    Parameters
    ----------
    root : str or os.PathLike
        Root of the derivative dataset.
    patterns : iterable of str
        ``.bidsignore`` (gitignore-style) patterns, one per line, e.g. ``"*_dwimap.nii.gz"``.

    Returns
    -------
    pathlib.Path
        Absolute path of the ``.bidsignore`` file.
    """
    path = _absolute(root, "root") / ".bidsignore"
    wanted = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip() or "\n" in pattern:
            raise InputError(
                f".bidsignore pattern {pattern!r} must be a non-empty one-line str such as "
                "'*_dwimap.nii.gz'."
            )
        wanted.append(pattern.strip())
    try:
        old = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    except (OSError, UnicodeDecodeError) as exc:
        raise OutputError(f"Cannot read {str(path)!r} to extend it: {exc}.") from exc
    present = {line.strip() for line in old}
    missing = list(dict.fromkeys(p for p in wanted if p not in present))
    if not missing and path.is_file():
        return path
    lines = list(old)
    if missing and _BIDSIGNORE_HEADER not in present:
        lines.append(_BIDSIGNORE_HEADER)
    lines += missing
    return atomic_write_text(path, "\n".join(lines) + "\n")


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(?![\\/])")  # bids:, https:, doi: (not C:\)


def portable_source(
    source: str | os.PathLike[str],
    root: str | os.PathLike[str],
    links: Mapping[str, str | os.PathLike[str]] = {},
) -> str:
    """A ``Sources`` entry that does not depend on the machine: a BIDS URI.

    A file inside the derivative dataset becomes ``bids::<relative path>``; one inside an input
    dataset ``bids:<key>:<relative path>`` (the key names the dataset in ``DatasetLinks``);
    a URI (``bids:``, ``https:``, ``doi:``...) is kept; any other path is reduced to its file
    name, since an absolute path is meaningless on another machine.

    Parameters
    ----------
    source : str or os.PathLike
        A file path or URI.
    root : str or os.PathLike
        Root of the derivative dataset.
    links : mapping of str to path, optional
        ``DatasetLinks`` keys and the folders they name, e.g. ``{"raw": "/data/study"}``.

    Returns
    -------
    str

    Examples
    --------
    >>> portable_source("/data/study/sub-01/dwi/sub-01_dwi.nii.gz", "/data/deriv",
    ...                 {"raw": "/data/study"})
    'bids:raw:sub-01/dwi/sub-01_dwi.nii.gz'
    """
    if not isinstance(source, str | os.PathLike):
        raise InputError(f"Sources must hold str or paths, got {type(source).__name__}.")
    text = os.fspath(source)
    if _URI.match(text):
        return text
    path = _absolute(text, "source")
    real = path.resolve()
    for key, folder in (("", root), *links.items()):
        base = _absolute(folder, "folder")
        for candidate, origin in ((path, base), (real, base.resolve())):
            if candidate.is_relative_to(origin):
                return f"bids:{key}:{candidate.relative_to(origin).as_posix()}"
    return path.name


def _symmetric(values: np.ndarray) -> bool:
    """Symmetric up to rounding: |m - m^T| <= 1e-12 * max|m| off the NaN entries."""
    import numpy as np

    finite = np.isfinite(values) & np.isfinite(values.T)
    if not np.array_equal(np.isnan(values), np.isnan(values.T)):
        return False
    if not finite.any():
        return True
    scale = max(1.0, float(np.abs(values[finite]).max()))
    return bool(np.abs(values - values.T)[finite].max() <= 1e-12 * scale)


def _as_list_of_str(values: Any, argument: str) -> list[str]:
    if isinstance(values, str | os.PathLike):
        values = [values]
    try:
        items = list(values)
    except TypeError:
        raise InputError(
            f"{argument} must be a sequence of str or paths, got {type(values).__name__}."
        ) from None
    out = []
    for item in items:
        if not isinstance(item, str | os.PathLike):
            raise InputError(
                f"{argument} must hold str or paths, got {type(item).__name__} {item!r}."
            )
        out.append(os.fspath(item))
    return out


def _with_units(img: SpatialImage) -> SpatialImage:
    """The image with millimetres (and seconds) in its NIfTI header when they are unset.

    Affines are in mm, so "unknown" units only hide that; a new header is made rather than
    changing the caller's image.
    """
    import nibabel as nib

    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        return img
    space, time = img.header.get_xyzt_units()
    if space != "unknown" and (time != "unknown" or len(img.shape) < 4):
        return img
    header = img.header.copy()
    header.set_xyzt_units("mm" if space == "unknown" else space,
                          "sec" if time == "unknown" else time)
    return img.__class__(img.dataobj, img.affine, header)


def _check_parameters(parameters: Any) -> dict[str, Any]:
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise InputError(
            f"parameters must be a dict of settings (e.g. {{'fit_method': 'WLS'}}), got "
            f"{type(parameters).__name__}."
        )
    return dict(parameters)


class DerivativesWriter:
    """Write BIDS derivatives (images, tables, matrices, sidecars) under one output folder.

    Creating the writer creates ``output_dir`` and writes its ``dataset_description.json``
    (only when absent or different). Every write is atomic (see :func:`atomic_path`) and every
    data file can carry a JSON sidecar with msimaging's version. Paths returned are absolute.

    Parameters
    ----------
    output_dir : str or pathlib.Path
        Root of the derivative dataset. Must not be inside (or equal to) any input dataset,
        after resolving symlinks; use a sibling folder such as ``<input>/../<input>-derivatives``.
    input_datasets : sequence of str or pathlib.Path, default=()
        Datasets the derivatives are computed from; recorded as ``SourceDatasets`` and
        protected from being written into. They need not exist.
    pipeline_name : str, default="msimaging"
        ``Name`` of the derivative dataset in ``dataset_description.json``.

    Raises
    ------
    OutputError
        If ``output_dir`` is inside an input dataset, is a file, or cannot be created.

    Examples
    --------
    >>> writer = DerivativesWriter("study-derivatives", input_datasets=["study"])  # doctest: +SKIP
    >>> writer.write_dwimap(fa_img, "01", "M0", "fa")  # doctest: +SKIP
    PosixPath('.../sub-01/ses-M0/dwi/sub-01_ses-M0_model-tensor_param-fa_dwimap.nii.gz')
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        input_datasets: Iterable[str | os.PathLike[str]] = (),
        pipeline_name: str = "msimaging",
    ) -> None:
        if not isinstance(pipeline_name, str) or not pipeline_name.strip():
            raise InputError(f"pipeline_name must be a non-empty str, got {pipeline_name!r}.")
        try:
            root = _absolute(output_dir, "output_dir").resolve()
            inputs = tuple(
                _absolute(p, "input_datasets").resolve()
                for p in _as_list_of_str(input_datasets, "input_datasets")
            )
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise OutputError(
                f"output_dir {os.fspath(output_dir)!r} or an input dataset cannot be resolved: "
                f"{exc}. Remove the symbolic link loop, or choose another folder."
            ) from exc
        for source in inputs:
            if root.is_relative_to(source):
                where = "the same folder as" if root == source else "inside"
                raise OutputError(
                    f"output_dir {str(root)!r} is {where} the input dataset {str(source)!r}; "
                    "writing there would mix derivatives into the input data. Choose a folder "
                    f"outside it, e.g. {str(source.parent / (source.name + '-derivatives'))!r}."
                )
        if root.exists() and not root.is_dir():
            raise OutputError(
                f"output_dir {str(root)!r} exists and is not a folder; choose another path."
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"Cannot create output_dir {str(root)!r}: {exc}.") from exc
        self._root = root
        self._inputs = inputs
        self._pipeline_name = pipeline_name
        self._write_description()
        merge_bidsignore(root, BIDSIGNORE_PATTERNS)
        self._write_readme()

    def __repr__(self) -> str:
        return (
            f"DerivativesWriter({str(self._root)!r}, input_datasets="
            f"{[str(p) for p in self._inputs]!r}, pipeline_name={self._pipeline_name!r})"
        )

    @property
    def root(self) -> Path:
        """Absolute, resolved root folder of the derivative dataset."""
        return self._root

    @property
    def input_datasets(self) -> tuple[Path, ...]:
        """Resolved input dataset folders."""
        return self._inputs

    @property
    def pipeline_name(self) -> str:
        """Name recorded in ``dataset_description.json``."""
        return self._pipeline_name

    # -- provenance ---------------------------------------------------------------------------

    @staticmethod
    def _generated_by() -> list[dict[str, str]]:
        return [{"Name": "msimaging", "Version": __version__}]

    def dataset_description(self) -> dict[str, Any]:
        """Return the content of ``dataset_description.json`` for this writer.

        Returns
        -------
        dict
            ``Name``, ``BIDSVersion``, ``DatasetType`` ("derivative"), ``GeneratedBy`` and,
            when input datasets were given, ``SourceDatasets`` (``file://`` URLs).
        """
        description: dict[str, Any] = {
            "Name": self._pipeline_name,
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": self._generated_by(),
        }
        if self._inputs:
            description["SourceDatasets"] = [{"URL": p.as_uri()} for p in self._inputs]
            # The one place that says where the inputs are: Sources use bids:raw:<path>.
            description["DatasetLinks"] = {
                key: folder.as_uri() for key, folder in self._links().items()
            }
        return description

    def _links(self) -> dict[str, Path]:
        """``DatasetLinks`` keys of the input datasets: ``raw``, then ``raw2``, ``raw3``..."""
        return {
            RAW_LINK if i == 0 else f"{RAW_LINK}{i + 1}": folder
            for i, folder in enumerate(self._inputs)
        }

    def portable_sources(self, sources: Any) -> list[str]:
        """``sources`` as BIDS URIs (see :func:`portable_source`), order and duplicates kept."""
        return [portable_source(s, self._root, self._links())
                for s in _as_list_of_str(sources, "Sources")]

    def _write_readme(self) -> None:
        """A README for the derivative dataset (BIDS recommends one), written once: a README
        already there (the user's own, any BIDS spelling) is never touched."""
        if any((self._root / name).exists() for name in _README_NAMES):
            return
        atomic_write_text(self._root / "README.md", _README_TEXT.format(
            name=self._pipeline_name, version=__version__))

    def _write_description(self) -> None:
        path = self._root / "dataset_description.json"
        wanted = self.dataset_description()
        if path.is_file():
            try:
                if json.loads(path.read_text(encoding="utf-8")) == wanted:
                    return
            except (OSError, ValueError):
                pass  # unreadable or invalid: rewrite it
        atomic_write_text(path, _json_text(wanted, "dataset_description"))

    # -- paths --------------------------------------------------------------------------------

    def _target(self, path: str | os.PathLike[str]) -> Path:
        """Absolute destination (relative paths are taken from the root), never in an input."""
        if not isinstance(path, str | os.PathLike):
            raise InputError(
                f"path must be a file path (str or pathlib.Path), got {type(path).__name__}."
            )
        raw = Path(os.path.expanduser(os.fspath(path)))
        final = _absolute(raw if raw.is_absolute() else self._root / raw)
        real = final.resolve()
        for source in self._inputs:
            if real.is_relative_to(source):
                raise OutputError(
                    f"Refusing to write {str(final)!r}: it is inside the input dataset "
                    f"{str(source)!r}. Write under the output folder {str(self._root)!r}."
                )
        return final

    def path(
        self,
        participant: str,
        session: str | None,
        datatype: str,
        suffix: str,
        extension: str,
        **entities: str | int | None,
    ) -> Path:
        """Return ``root/sub-<p>[/ses-<s>]/<datatype>/<bids_name>`` (nothing is written).

        Parameters
        ----------
        participant, session, suffix, extension, **entities
            As in :func:`bids_name`.
        datatype : str
            BIDS datatype folder, e.g. ``"anat"``, ``"dwi"``, ``"func"``.

        Returns
        -------
        pathlib.Path
            Absolute path of the file.
        """
        name = bids_name(participant, session, suffix, extension, **entities)
        if not isinstance(datatype, str) or not _LABEL.fullmatch(datatype):
            raise InputError(
                f"datatype {datatype!r} is not valid: use a BIDS datatype folder name such as "
                "'anat', 'dwi' or 'func'."
            )
        folder = self._root / f"sub-{_subject_label(participant)}"
        ses = _session_label(session)
        if ses is not None:
            folder = folder / f"ses-{ses}"
        return folder / datatype / name

    # -- writers ------------------------------------------------------------------------------

    def _sidecar_text(self, metadata: Mapping[str, Any] | None, where: str) -> str:
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InputError(f"{where} must be a dict of metadata, got {type(metadata).__name__}.")
        content: dict[str, Any] = {
            "GeneratedBy": self._generated_by(),
            "Software": "msimaging",  # BEP017's Software/SoftwareVersion pair
            "SoftwareVersion": __version__,
        }
        content.update(metadata or {})
        for key in ("Sources", "SpatialReference"):
            value = content.get(key)
            if isinstance(value, str | os.PathLike):
                content[key] = (self.portable_sources([value])[0] if key == "SpatialReference"
                                else self.portable_sources([value]))
            elif isinstance(value, list | tuple):
                content[key] = self.portable_sources(value)
        return _json_text(content, where)

    def write_sidecar(
        self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None
    ) -> Path:
        """Write the JSON sidecar ``<stem>.json`` next to a data file.

        The sidecar holds ``GeneratedBy`` (msimaging and its version) and ``SoftwareVersion``,
        then the given keys (which win on a clash). numpy numbers and arrays and paths are
        converted; NaN and infinity are refused because JSON cannot hold them.

        Parameters
        ----------
        path : str or pathlib.Path
            The data file (or the ``.json`` path itself); relative paths are from the root.
        metadata : dict, optional
            Keys to store.

        Returns
        -------
        pathlib.Path
            Absolute path of the sidecar.
        """
        target = sidecar_path(self._target(path))
        return atomic_write_text(target, self._sidecar_text(metadata, "metadata"))

    def write_image(
        self,
        img: SpatialImage,
        path: str | os.PathLike[str],
        *,
        sidecar: Mapping[str, Any] | None = None,
    ) -> Path:
        """Save a nibabel image atomically, with a JSON sidecar when ``sidecar`` is given.

        Parameters
        ----------
        img : nibabel.spatialimages.SpatialImage
            Image to save, e.g. a :class:`nibabel.Nifti1Image`.
        path : str or pathlib.Path
            Destination ending in ``.nii.gz`` (or ``.nii``); relative paths are from the root.
            Use :meth:`path` to build it.
        sidecar : dict, optional
            Metadata for the sidecar (see :meth:`write_sidecar`).

        Returns
        -------
        pathlib.Path
            Absolute path of the image.
        """
        from nibabel.spatialimages import SpatialImage

        if not isinstance(img, SpatialImage):
            raise InputError(
                f"img must be a nibabel image, got {type(img).__name__}; wrap an array with "
                "nibabel.Nifti1Image(data, affine)."
            )
        target = self._target(path)
        if not target.name.endswith(_IMAGE_EXTENSIONS):
            raise InputError(
                f"Image path {str(target)!r} must end with '.nii.gz' (or '.nii'); build it with "
                "DerivativesWriter.path(..., extension='.nii.gz')."
            )
        # Validate the sidecar before writing anything, so a bad key leaves no orphan image.
        text = None if sidecar is None else self._sidecar_text(sidecar, "sidecar")
        img = _with_units(img)
        with atomic_path(target) as tmp:
            img.to_filename(tmp)
        if text is not None:
            atomic_write_text(sidecar_path(target), text)
        return target

    def write_dwimap(
        self,
        img: SpatialImage,
        participant: str,
        session: str | None,
        param: str,
        *,
        model: str = "tensor",
        space: str | None = None,
        units: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        sources: Iterable[str | os.PathLike[str]] = (),
    ) -> Path:
        """Write a diffusion parameter map with its BEP016 name and sidecar.

        Name: ``sub-<p>[_ses-<s>][_space-<space>]_model-<model>_param-<param>_dwimap.nii.gz``
        in ``dwi/``.

        Parameters
        ----------
        img : nibabel.spatialimages.SpatialImage
            The map.
        participant, session : str, str or None
            Labels, with or without ``sub-``/``ses-``.
        param : str
            Parameter label, e.g. ``"fa"``, ``"md"``, ``"ad"``, ``"rd"``.
        model : str, default="tensor"
            Model label; also the ``Model.Description`` in the sidecar.
        space : str, optional
            Space label, e.g. ``"MNI152NLin2009cAsym"``.
        units : str, optional
            Units of the values; defaults to ``"unitless"`` for fa/ga/mode and ``"mm^2/s"`` for
            md/ad/rd (b-values in s/mm²). Required for other parameters.
        parameters : dict, optional
            Fit settings, stored as ``Model.Parameters``.
        sources : sequence of str or pathlib.Path, default=()
            Files the map was computed from, stored as ``Sources``.

        Returns
        -------
        pathlib.Path
            Absolute path of the image; the sidecar is next to it.
        """
        param_label = _check_label(param, "param")
        if units is None:
            units = _DWIMAP_UNITS.get(param_label.lower())
            if units is None:
                raise InputError(
                    f"No default units for param {param_label!r}; pass units= (e.g. "
                    f"'unitless' or 'mm^2/s'). Defaults exist for {sorted(_DWIMAP_UNITS)}."
                )
        elif not isinstance(units, str):
            raise InputError(f"units must be a str such as 'mm^2/s', got {units!r}.")
        if not isinstance(model, str):
            raise InputError(f"model must be a str label such as 'tensor', got {model!r}.")
        path = self.path(
            participant,
            session,
            "dwi",
            "dwimap",
            ".nii.gz",
            space=space,
            model=model,
            param=param_label,
        )
        metadata = {
            "Model": {"Description": model, "Parameters": _check_parameters(parameters)},
            "Units": units,
            "Sources": _as_list_of_str(sources, "sources"),
        }
        return self.write_image(img, path, sidecar=metadata)

    def write_relmat(
        self,
        matrix: Any,
        nodes: pd.DataFrame | Iterable[str],
        participant: str,
        session: str | None,
        *,
        meas: str,
        atlas: str,
        task: str | None = None,
        space: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        sources: Iterable[str | os.PathLike[str]] = (),
    ) -> Path:
        """Write a connectivity matrix, its node table and sidecar (BEP017 draft).

        Files in ``func/``: ``..._atlas-<a>_meas-<m>_relmat.tsv`` (square, no header,
        tab-separated, shortest repr that round-trips each float, ``n/a`` on a NaN diagonal),
        ``..._atlas-<a>_nodes.tsv`` (with header) and ``..._relmat.json``.

        The sidecar's ``Directed`` is ``false`` for a matrix symmetric up to rounding (the
        largest |m - mᵀ| at most 1e-12 of its largest |value|: nilearn's correlations differ
        from their transpose by ~2e-16), and ``ValidDiagonal`` is ``false`` when the
        diagonal is NaN or all zero (self-connections not defined, e.g. the 0 diagonal of
        Fisher-z correlations).

        Parameters
        ----------
        matrix : array-like of shape (n_nodes, n_nodes)
            Finite values; the diagonal may be NaN (undefined self-connections).
        nodes : pandas.DataFrame or sequence of str
            One row per node, with at least an ``index`` or ``name`` column; a sequence of
            names becomes ``index`` (1..n) and ``name`` columns.
        participant, session : str, str or None
            Labels, with or without ``sub-``/``ses-``.
        meas : str
            Measure label, e.g. ``"pearson"``, ``"partialcorr"``.
        atlas : str
            Atlas label, e.g. ``"Power2011"``.
        task, space : str, optional
            Further entities.
        parameters : dict, optional
            Settings of the estimate (e.g. confound strategy), stored as ``Parameters``.
        sources : sequence of str or pathlib.Path, default=()
            Files the matrix was computed from.

        Returns
        -------
        pathlib.Path
            Absolute path of the ``_relmat.tsv`` file.
        """
        import numpy as np
        import pandas as pd

        try:
            values = np.asarray(matrix, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"matrix cannot be converted to numbers: {exc}.") from exc
        if values.ndim != 2 or values.shape[0] != values.shape[1]:
            raise InputError(
                f"matrix must be a square 2-D array (n_nodes, n_nodes), got shape {values.shape}."
            )
        if not isinstance(nodes, pd.DataFrame):
            if isinstance(nodes, str):
                raise InputError("nodes must be a DataFrame or a sequence of names, not a str.")
            names = _as_list_of_str(nodes, "nodes")
            nodes = pd.DataFrame({"index": np.arange(1, len(names) + 1), "name": names})
        nodes = _check_frame(nodes, "nodes")
        if not {"index", "name"} & {str(c) for c in nodes.columns}:
            raise InputError(
                f"nodes needs an 'index' or 'name' column, got columns {list(nodes.columns)}."
            )
        if len(nodes) != values.shape[0]:
            raise InputError(
                f"matrix has {values.shape[0]} rows (shape {values.shape}) but nodes has "
                f"{len(nodes)} rows; give one node row per matrix row."
            )
        off = ~np.eye(values.shape[0], dtype=bool)
        if not np.isfinite(values[off]).all():
            n_bad = int((~np.isfinite(values[off])).sum())
            raise InputError(
                f"matrix has {n_bad} non-finite off-diagonal values (shape {values.shape}); "
                "only the diagonal may be NaN. Check the time series for constant signals."
            )
        diagonal = np.diagonal(values)
        if np.isinf(diagonal).any():
            raise InputError(
                "matrix has infinite values on its diagonal; use NaN for undefined "
                "self-connections."
            )
        entities = {"task": task, "space": space, "atlas": atlas}
        relmat = self.path(participant, session, "func", "relmat", ".tsv", meas=meas, **entities)
        node_file = self.path(participant, session, "func", "nodes", ".tsv", **entities)
        relmat, node_file = self._target(relmat), self._target(node_file)
        metadata = {
            "RelationshipMeasure": meas,
            "Atlas": atlas,
            "Weighted": True,
            "Directed": not _symmetric(values),
            "ValidDiagonal": bool(np.isfinite(diagonal).all() and np.any(diagonal != 0)),
            "StorageFormat": "Full",
            "NodeFiles": [node_file.name],
            "Parameters": _check_parameters(parameters),
            "Sources": _as_list_of_str(sources, "sources"),
        }
        sidecar = self._sidecar_text(metadata, "relmat metadata")
        # repr() is the shortest text that reads back as the same float64.
        lines = [
            "\t".join(NA_REP if math.isnan(v) else repr(v) for v in row) for row in values.tolist()
        ]
        atomic_write_text(node_file, _table_text(nodes))
        atomic_write_text(relmat, "\n".join(lines) + "\n")
        atomic_write_text(sidecar_path(relmat), sidecar)
        return relmat

    def write_table(
        self,
        df: pd.DataFrame,
        participant: str,
        session: str | None,
        datatype: str,
        suffix: str,
        *,
        sidecar: Mapping[str, Any] | None = None,
        **entities: str | int | None,
    ) -> Path:
        """Write a per-session TSV table (``n/a`` for missing values, no index).

        Parameters
        ----------
        df : pandas.DataFrame
            The table; its index is not written.
        participant, session, datatype, suffix, **entities
            As in :meth:`path`.
        sidecar : dict, optional
            Metadata (e.g. column descriptions) for the JSON sidecar.

        Returns
        -------
        pathlib.Path
            Absolute path of the TSV file.
        """
        df = _check_frame(df, "df")
        path = self.path(participant, session, datatype, suffix, ".tsv", **entities)
        return self._write_tsv(df, path, sidecar)

    def write_group_table(
        self, df: pd.DataFrame, name: str, *, sidecar: Mapping[str, Any] | None = None
    ) -> Path:
        """Write a study-level TSV table to ``root/group/<name>.tsv``.

        Parameters
        ----------
        df : pandas.DataFrame
            The table; its index is not written.
        name : str
            File name without folder, e.g. ``"dti_roi_measures"`` (letters, digits, ``_`` and
            ``-``; a trailing ``.tsv`` is accepted).
        sidecar : dict, optional
            Metadata for the JSON sidecar ``group/<name>.json``.

        Returns
        -------
        pathlib.Path
            Absolute path of the TSV file.
        """
        df = _check_frame(df, "df")
        if not isinstance(name, str):
            raise InputError(f"name must be a str such as 'dti_measures', got {name!r}.")
        stem = name.removesuffix(".tsv")
        if not _GROUP_NAME.fullmatch(stem):
            cleaned = re.sub(r"[^A-Za-z0-9_-]", "", stem).lstrip("_-")
            hint = f"e.g. {cleaned!r}" if cleaned else "e.g. 'dti_measures'"
            raise InputError(
                f"Group table name {name!r} is not valid: use letters, digits, '_' and '-' "
                f"only, starting with a letter or digit ({hint})."
            )
        return self._write_tsv(df, self._root / "group" / f"{stem}.tsv", sidecar)

    def _write_tsv(self, df: pd.DataFrame, path: Path, sidecar: Mapping[str, Any] | None) -> Path:
        target = self._target(path)
        text = None if sidecar is None else self._sidecar_text(sidecar, "sidecar")
        atomic_write_text(target, _table_text(df))
        if text is not None:
            atomic_write_text(sidecar_path(target), text)
        return target


# --------------------------------------------------------------------------------------------
# The layout of msimaging's derivatives folder, for readers (pipeline, report, command line)
# --------------------------------------------------------------------------------------------

_BIDS_FILE = re.compile(
    r"^(?P<entities>sub-[A-Za-z0-9]+(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*)"
    r"_(?P<suffix>[A-Za-z0-9]+)(?P<extension>(?:\.[A-Za-z0-9]+)+)$"
)


@dataclass(frozen=True)
class OutputKind:
    """One kind of per-visit output file, described by its BIDS parts instead of a glob.

    Parameters
    ----------
    datatype : str
        Folder under the visit (``"anat"``, ``"dwi"``, ``"func"``).
    suffix, extension : str
        BIDS suffix and extension, e.g. ``"stats"`` and ``".tsv"``.
    entities : tuple of (str, str)
        Entity values the name must carry, e.g. ``(("model", "tensor"), ("desc", "nawm"))``.
    """

    datatype: str
    suffix: str
    extension: str
    entities: tuple[tuple[str, str], ...] = ()

    def matches(self, name: str) -> bool:
        """Whether the file name ``name`` is an output of this kind."""
        match = _BIDS_FILE.match(name)
        if match is None or match["suffix"] != self.suffix or match["extension"] != self.extension:
            return False
        found = dict(pair.split("-", 1) for pair in match["entities"].split("_"))
        return all(found.get(key) == value for key, value in self.entities)


#: Per-visit outputs the group level gathers, by the name of the study table they feed.
PARTICIPANT_OUTPUTS: Mapping[str, OutputKind] = {
    "dti_nawm": OutputKind("dwi", "stats", ".tsv", (("model", "tensor"), ("desc", "nawm"))),
    "dti_tracts": OutputKind("dwi", "stats", ".tsv", (("model", "tensor"), ("desc", "tracts"))),
    "volumetry_tissue": OutputKind("anat", "volumes", ".tsv", (("desc", "tissue"),)),
    "volumetry_lesion_load": OutputKind("anat", "lesions", ".tsv", (("desc", "load"),)),
    "fmri_connectome": OutputKind("func", "relmat", ".tsv"),
}

#: Study tables written under ``group/`` (``<name>.tsv`` + ``<name>.json``).
GROUP_TABLES: tuple[str, ...] = (
    "visits",
    "participant_tasks",
    "dti_nawm",
    "dti_tracts",
    "volumetry_tissue",
    "volumetry_lesion_load",
    "volumetry_lesion_tracks",
    "volumetry_lesion_registration",
    "fmri_nbs_components",
    "fmri_nbs_edges",
    "excluded",
)


#: Group tables renamed since: new name -> old name (``sessions`` clashed with BIDS's
#: reserved sessions file).
_LEGACY_GROUP_TABLES: Mapping[str, str] = {"visits": "sessions"}


class DerivativesLayout:
    """Where things are in an msimaging derivatives folder: the one description readers use.

    Writers put files there (:class:`DerivativesWriter`); the pipeline, the report and the
    command line read them back through this class instead of each spelling its own globs.

    Parameters
    ----------
    root : str or os.PathLike
        The msimaging derivatives folder.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = _absolute(root, "root")

    def __repr__(self) -> str:
        return f"DerivativesLayout({str(self.root)!r})"

    @property
    def group_dir(self) -> Path:
        """``group/``: the study tables."""
        return self.root / "group"

    @property
    def figures_dir(self) -> Path:
        """``figures/``: study and QC figures."""
        return self.root / "figures"

    @property
    def logs_dir(self) -> Path:
        """``logs/``: one log per run."""
        return self.root / "logs"

    @property
    def failures(self) -> Path:
        """``failures.tsv``: the participant tasks that failed in the last run."""
        return self.root / "failures.tsv"

    @property
    def report(self) -> Path:
        """``report.html``: the study report."""
        return self.root / "report.html"

    def group_table(self, name: str) -> Path:
        """``group/<name>.tsv`` for one of :data:`GROUP_TABLES` (or another valid name)."""
        stem = name.removesuffix(".tsv")
        if not _GROUP_NAME.fullmatch(stem):
            raise InputError(
                f"group table name {name!r} is not valid; known tables: {', '.join(GROUP_TABLES)}."
            )
        path = self.group_dir / f"{stem}.tsv"
        legacy = self.group_dir / f"{_LEGACY_GROUP_TABLES.get(stem, stem)}.tsv"
        # Derivatives written before the rename keep working.
        return legacy if not path.is_file() and legacy.is_file() else path

    def session_dir(self, participant: str, session: str | None) -> Path:
        """``sub-<p>[/ses-<s>]``: the folder of one visit."""
        folder = self.root / f"sub-{_subject_label(participant)}"
        ses = _session_label(session)
        return folder if ses is None else folder / f"ses-{ses}"

    def provenance(self, participant: str, session: str | None, modality: str) -> Path:
        """Provenance record of one participant-level task (in the visit folder)."""
        stem = "_".join(
            x for x in (f"sub-{_subject_label(participant)}",
                        None if session is None else f"ses-{_session_label(session)}") if x
        )
        return self.session_dir(participant, session) / f"{stem}_desc-{modality}_provenance.json"

    def participant_outputs(self, kind: str | OutputKind) -> list[Path]:
        """Every per-visit file of ``kind`` (a name of :data:`PARTICIPANT_OUTPUTS` or an
        :class:`OutputKind`), in ``sub-*/ses-*/<datatype>/`` and ``sub-*/<datatype>/``,
        sorted by path. One ``os.scandir`` per folder, no recursive glob."""
        if isinstance(kind, str):
            if kind not in PARTICIPANT_OUTPUTS:
                raise InputError(
                    f"unknown output kind {kind!r}; known: {', '.join(PARTICIPANT_OUTPUTS)}."
                )
            kind = PARTICIPANT_OUTPUTS[kind]
        found: list[Path] = []
        for subject in _visible_dirs(self.root, "sub-"):
            folders = [subject / kind.datatype]
            folders += [ses / kind.datatype for ses in _visible_dirs(subject, "ses-")]
            for folder in folders:
                found += [folder / name for name in _visible_files(folder) if kind.matches(name)]
        return sorted(found)


def _visible_dirs(folder: Path, prefix: str) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries
                          if e.name.startswith(prefix) and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _visible_files(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return [e.name for e in entries if e.name[0] != "." and not e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
