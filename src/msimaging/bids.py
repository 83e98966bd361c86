"""The BIDS study model: subjects x sessions x months, and the files each session holds.

:class:`Study` reads a BIDS dataset (raw data plus derivatives such as fMRIPrep, QSIPrep or a
segmentation tool) into a table of sessions, each with its time since baseline in months and
the files msimaging needs, grouped by *kind* (see :data:`KINDS`).

This module deliberately does not use ``pybids.BIDSLayout``. pybids indexes every file and
entity into a SQL database, which is very slow on large studies (963 subjects took 631 s,
pybids issues #285 and #609). msimaging only needs a handful of file kinds per session, so
:class:`Study` walks the tree with :func:`os.scandir` and classifies file names with one
regular expression and string comparisons: 1,000 sessions take well under a second. Importing
this module stays light (pandas is imported only when a table is asked for).

Months since baseline are taken, per session, from (1) the ``months`` (else ``timepoint``)
column of ``sub-<label>/sub-<label>_sessions.tsv``; else (2) its ``acq_time`` column, the
session acquisition time the BIDS specification defines for sessions files (ISO 8601
``YYYY-MM-DDThh:mm:ss``, dates possibly shifted to 1925 or earlier for anonymisation, the same
shift within a subject), used only when every session folder of the subject has one; else
(3) the session label (``M0``, ``M06``, ``month3``, ``baseline``, ``Y1``, ``week4``...; see
:func:`months_from_label`); else (4) the session order, with a
:class:`~msimaging.errors.MSImagingWarning`. The source used is kept in ``months_source``
(``"sessions.tsv"``, ``"sessions.tsv:acq_time"``, ``"label"`` or ``"order"``).

Months from ``acq_time`` are the days since the subject's earliest ``acq_time`` divided by
:data:`DAYS_PER_MONTH` (365.25 / 12), rounded to 0.1 month (about 3 days, finer than visit
scheduling and coarser than the hour-level noise of scan times), so that tables, the
"same months" check and reports all see the same value.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import stat
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from msimaging.errors import BIDSError, InputError, MSImagingWarning

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DAYS_PER_MONTH", "KINDS", "Session", "Study", "months_from_label", "parse_entities"]

#: File kinds a :class:`Session` can hold, in table order.
KINDS: tuple[str, ...] = (
    "t1w",
    "flair",
    "dwi",
    "bold",
    "dwi_preproc",
    "bold_preproc",
    "confounds",
    "bold_mask",
    "dseg",
    "probseg",
    "lesion_mask",
)

_DATATYPES = ("anat", "dwi", "func")
_IMAGE_EXTENSIONS = frozenset({".nii", ".nii.gz"})
_RAW = "raw"

# One regular expression splits a BIDS file name into entities, suffix and extension.
_NAME_RE = re.compile(
    r"^(?P<entities>sub-[A-Za-z0-9]+(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*)"
    r"_(?P<suffix>[A-Za-z0-9]+)(?P<extension>(?:\.[A-Za-z0-9]+)+)$"
)
# fMRIPrep, QSIPrep and ASLPrep tell users to put lesion masks in raw ``anat`` named after the
# image they were drawn on, following the BEP003 draft: ``sub-001[_ses-X]_T1w_label-lesion_roi``
# (listed in .bidsignore). The image suffix sits among the entities, which _NAME_RE rejects;
# pybids, and so fMRIPrep, simply skips that bare token. Only for ``roi``/``mask`` files and a
# known image suffix, so that other malformed names still fail to parse.
_SOURCE_IMAGE_SUFFIXES = "T1w|T2w|FLAIR|PDw|T2starw|PD|T2star|inplaneT1|inplaneT2"
_SOURCE_SUFFIX_NAME_RE = re.compile(
    r"^(?P<entities>sub-[A-Za-z0-9]+(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*)"
    rf"_(?:{_SOURCE_IMAGE_SUFFIXES})"
    r"(?P<more>(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)+)"
    r"_(?P<suffix>roi|mask)(?P<extension>(?:\.[A-Za-z0-9]+)+)$"
)
_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
_MONTHS_LABEL_RE = re.compile(
    r"""^(?:
        (?P<baseline>baseline|base|bl|bsl)
      | (?P<unit_first>m|mo|month|months|y|yr|year|years|w|wk|week|weeks)(?P<n_after>\d+)
      | (?P<n_before>\d+)(?P<unit_last>m|mo|month|months|y|yr|year|years|w|wk|week|weeks)
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
_MONTHS_PER_UNIT = {"m": 1.0, "y": 12.0, "w": 12.0 / 52.0}
_NATURAL_SPLIT_RE = re.compile(r"(\d+)")
_MISSING_VALUES = frozenset({"", "n/a", "na", "nan"})
#: Mean Gregorian month, in days: months since baseline from ``acq_time`` differences.
DAYS_PER_MONTH = 365.25 / 12.0
# Months from ``acq_time`` keep one decimal (0.1 month, about 3 days).
_ACQ_TIME_MONTHS_DECIMALS = 1
_ACQ_TIME = "acq_time"


def months_from_label(label: str) -> float | None:
    """Months since baseline encoded in a session label, or None when it encodes none.

    Parameters
    ----------
    label : str
        Session label, with or without the ``ses-`` prefix. Case is ignored.

    Returns
    -------
    float or None
        ``baseline``/``base``/``bl`` -> 0; ``M0``, ``M06``, ``m6``, ``month3``, ``months12``,
        ``6m`` -> the number of months; ``Y1``, ``year2`` -> 12 per year; ``W4``, ``week4``
        -> 12/52 month per week. None for anything else (e.g. ``1``, ``followup``).

    Examples
    --------
    >>> months_from_label("ses-M06"), months_from_label("Y2"), months_from_label("visit1")
    (6.0, 24.0, None)
    """
    if label.startswith("ses-"):
        label = label[4:]
    match = _MONTHS_LABEL_RE.match(label)
    if match is None:
        return None
    if match["baseline"]:
        return 0.0
    unit = (match["unit_first"] or match["unit_last"])[0].lower()
    number = int(match["n_after"] or match["n_before"])
    return float(number * _MONTHS_PER_UNIT[unit])


@dataclass(frozen=True)
class Session:
    """One session of one participant and the files found for it.

    Parameters
    ----------
    participant_id : str
        ``sub-<label>``.
    session_id : str or None
        ``ses-<label>``, or None for a dataset without session folders.
    months : float
        Months since baseline.
    months_source : str
        Where ``months`` came from: ``"sessions.tsv"`` (its ``months`` or ``timepoint``
        column), ``"sessions.tsv:acq_time"``, ``"label"`` or ``"order"``.
    files : Mapping[str, tuple[Path, ...]]
        Files per kind (every name of :data:`KINDS` is a key; absent kinds map to ``()``).
        A ``dwi``/``dwi_preproc`` image is listed only when its ``.bval`` and ``.bvec``
        (same name stem) sit next to it.
    origins : Mapping[Path, str]
        Dataset each file comes from: ``"raw"`` or the name of its derivatives folder
        (e.g. ``"fmriprep"``); used by ``get(..., pipeline=...)``.
    """

    participant_id: str
    session_id: str | None
    months: float
    months_source: str
    files: Mapping[str, tuple[Path, ...]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False, repr=False
    )
    origins: Mapping[Path, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False, repr=False, compare=False
    )

    def __repr__(self) -> str:
        kinds = ", ".join(kind for kind in KINDS if self.files.get(kind))
        return (
            f"Session({self.participant_id}, {self.session_id}, months={self.months:g} "
            f"[{self.months_source}], files: {kinds or 'none'})"
        )

    @property
    def name(self) -> str:
        """``sub-01 ses-M0`` (or ``sub-01`` without sessions), for messages."""
        if self.session_id is None:
            return self.participant_id
        return f"{self.participant_id} {self.session_id}"

    def has(self, kind: str) -> bool:
        """Whether at least one file of ``kind`` was found for this session."""
        _check_kind(kind, "kind")
        return bool(self.files.get(kind))

    def get(self, kind: str, *, pipeline: str | None = None, **entities: object) -> Path:
        """The single file of ``kind`` matching the given BIDS entities.

        Parameters
        ----------
        kind : str
            One of :data:`KINDS`, e.g. ``"bold_preproc"``.
        pipeline : str or None, optional
            Keep only files from this dataset: ``"raw"`` or a derivatives folder name such as
            ``"fmriprep"``. Useful when two pipelines write the same kind.
        **entities
            BIDS entities the file name must carry, e.g. ``space="MNI152NLin2009cAsym"``,
            ``label="GM"``, ``task="rest"``, ``run=1``.

        Returns
        -------
        Path

        Raises
        ------
        InputError
            When no file or more than one file matches; the message lists the candidates
            and says which entity tells them apart.
        """
        _check_kind(kind, "kind")
        candidates = self.files.get(kind, ())
        wanted = {key: str(value) for key, value in entities.items()}
        matches = []
        for path in candidates:
            if pipeline is not None and self.origins.get(path) != pipeline:
                continue
            parsed = _parse_name(path.name)
            found = parsed[0] if parsed else {}
            if all(_same_value(found.get(key), value) for key, value in wanted.items()):
                matches.append(path)
        if len(matches) == 1:
            return matches[0]
        asked = _describe_filter(kind, pipeline, wanted)
        if not matches:
            if candidates:
                listing = "; ".join(
                    f"{path.name} [{self.origins.get(path, '?')}]" for path in candidates
                )
                raise InputError(
                    f"{self.name}: no {asked} file. Files of kind {kind!r} here: {listing}. "
                    "Pass entities (and pipeline=) that match one of them."
                )
            present = [name for name in KINDS if self.files.get(name)]
            raise InputError(
                f"{self.name}: no {kind!r} file was found (kinds present here: "
                f"{', '.join(present) or 'none'}). Check the dataset with Study.missing(), "
                "or run the pipeline that produces it."
            )
        raise InputError(
            f"{self.name}: {len(matches)} files match {asked}: "
            f"{', '.join(str(path) for path in matches)}. {_how_to_choose(matches, self)}"
        )


def _same_value(found: str | None, wanted: str) -> bool:
    """Entity values match; index values compare as numbers (run=1 matches run-01)."""
    if found is None:
        return False
    if found.isdigit() and wanted.isdigit():
        return int(found) == int(wanted)
    return found == wanted


def _describe_filter(kind: str, pipeline: str | None, wanted: Mapping[str, str]) -> str:
    parts = [f"{key}={value!r}" for key, value in wanted.items()]
    if pipeline is not None:
        parts.append(f"pipeline={pipeline!r}")
    return f"{kind!r} ({', '.join(parts)})" if parts else repr(kind)


def _how_to_choose(paths: list[Path], session: Session) -> str:
    parsed = [(_parse_name(path.name) or ({}, "", ""))[0] for path in paths]
    keys = sorted({key for entities in parsed for key in entities})
    hints = []
    for key in keys:
        values = sorted({entities.get(key, "<none>") for entities in parsed})
        if len(values) > 1:
            example = next(value for value in values if value != "<none>")
            hints.append(f"{key}={example!r} (values here: {', '.join(values)})")
    if hints:
        return "Pass one of these entities to choose: " + "; ".join(hints) + "."
    origins = sorted({session.origins.get(path, "?") for path in paths})
    if len(origins) > 1:
        return f"They come from different datasets; pass pipeline= one of {origins}."
    return "They differ only by extension or folder: remove the duplicate file."


def _check_kind(kind: object, argument: str) -> str:
    if not isinstance(kind, str) or kind not in KINDS:
        raise InputError(
            f"{argument}={kind!r} is not a file kind msimaging knows; use one of "
            f"{', '.join(KINDS)}."
        )
    return kind


def parse_entities(name: str | os.PathLike[str]) -> dict[str, str]:
    """The BIDS entities of a file name (``{"sub": "01", "task": "rest", ...}``); ``{}`` when
    the name is not a BIDS name.

    Examples
    --------
    >>> parse_entities("sub-01_ses-M0_task-rest_space-MNI152NLin6Asym_desc-preproc_bold.nii.gz")
    {'sub': '01', 'ses': 'M0', 'task': 'rest', 'space': 'MNI152NLin6Asym', 'desc': 'preproc'}
    """
    parsed = _parse_name(os.path.basename(os.fspath(name)))
    return parsed[0] if parsed else {}


def _parse_name(name: str) -> tuple[dict[str, str], str, str] | None:
    """(entities, suffix, extension) of a BIDS file name, or None if it is not one.

    Also accepts the lesion-mask spelling of the fMRIPrep documentation,
    ``sub-001[_ses-X]_T1w_label-lesion_roi.nii.gz``: the image suffix in the middle is
    dropped, as pybids does (entities ``sub``, ``ses``, ``label``; suffix ``roi``).
    """
    match = _NAME_RE.match(name)
    if match is None:
        match = _SOURCE_SUFFIX_NAME_RE.match(name)
        if match is None:
            return None
        pairs = match["entities"].split("_") + match["more"][1:].split("_")
    else:
        pairs = match["entities"].split("_")
    entities = dict(pair.split("-", 1) for pair in pairs)
    return entities, match["suffix"], match["extension"]


def _natural_key(text: str) -> list[int | str]:
    # Digit runs sit at odd positions of re.split, so the types always line up.
    return [
        int(part) if index % 2 else part.lower()
        for index, part in enumerate(_NATURAL_SPLIT_RE.split(text))
    ]


def _classify(
    datatype: str, entities: Mapping[str, str], suffix: str, extension: str, derivative: bool
) -> str | None:
    """The kind of one file, or None when msimaging does not use it."""
    desc = entities.get("desc")
    if extension in _IMAGE_EXTENSIONS:
        if suffix in ("mask", "roi"):  # ``roi`` is the pre-1.5 BIDS name of lesion masks
            label = entities.get("label", "").lower()
            if label in ("lesion", "l") or (desc or "").lower() == "lesion":
                return "lesion_mask"
            if derivative and datatype == "func" and suffix == "mask" and desc == "brain":
                return "bold_mask"
            return None
        if datatype == "anat":
            if suffix == "dseg":
                return "dseg"
            if suffix == "probseg":
                return "probseg"
            if not derivative and desc is None:
                return {"T1w": "t1w", "FLAIR": "flair"}.get(suffix)
            return None
        if datatype == "dwi" and suffix == "dwi":
            if derivative:
                return "dwi_preproc" if desc == "preproc" else None
            return "dwi" if desc is None else None
        if datatype == "func" and suffix == "bold":
            if derivative:
                return "bold_preproc" if desc == "preproc" else None
            return "bold" if desc is None else None
        return None
    if (
        extension == ".tsv"
        and derivative
        and datatype == "func"
        and desc == "confounds"
        and suffix in ("timeseries", "regressors")  # ``regressors``: fMRIPrep < 20.2
    ):
        return "confounds"
    return None


# A problem: (participant_id, session_id or None, kind or None, message).
_Problem = tuple[str, str | None, str | None, str]
# A found file: (kind, path, ses entity or None, origin).
_Found = tuple[str, str, str | None, str]


def _scan_datatype(
    directory: str,
    datatype: str,
    participant_label: str,
    session_label: str | None,
    origin: str,
    problems: list[_Problem],
) -> list[_Found]:
    """Classify the files of one ``anat``/``dwi``/``func`` folder (missing folder: none)."""
    try:
        with os.scandir(directory) as entries:
            # not is_dir(): keeps DataLad/git-annex symlinks whose content is not fetched.
            names = [e.name for e in entries if e.name[0] != "." and not _is_dir(e)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError as error:
        raise _unreadable_folder(directory) from error
    derivative = origin != _RAW
    participant_id = f"sub-{participant_label}"
    present = set(names)
    found: list[_Found] = []
    for name in names:
        parsed = _parse_name(name)
        if parsed is None:
            continue
        entities, suffix, extension = parsed
        kind = _classify(datatype, entities, suffix, extension, derivative)
        if kind is None:
            continue
        path = directory + os.sep + name
        ses = entities.get("ses")
        session_id = f"ses-{session_label}" if session_label is not None else None
        if entities["sub"] != participant_label:
            problems.append(
                (
                    participant_id,
                    session_id,
                    kind,
                    f"{path}: the name says sub-{entities['sub']} but the file is in folder "
                    f"{participant_id}; rename or move it (the file was ignored)",
                )
            )
            continue
        if session_label is not None and ses is not None and ses != session_label:
            problems.append(
                (
                    participant_id,
                    session_id,
                    kind,
                    f"{path}: the name says ses-{ses} but the file is in folder "
                    f"ses-{session_label}; rename or move it (the file was ignored)",
                )
            )
            continue
        if kind in ("dwi", "dwi_preproc"):
            stem = name[: -len(extension)]
            absent = [ext for ext in (".bval", ".bvec") if stem + ext not in present]
            if absent:
                for ext in absent:
                    problems.append(
                        (
                            participant_id,
                            session_id if session_id is not None else _ses_id(ses),
                            kind,
                            f"missing {ext} next to {path}: the diffusion image cannot be "
                            f"used without its gradient table; add {stem}{ext} in the same "
                            "folder",
                        )
                    )
                continue
        found.append((kind, path, ses, origin))
    return found


def _ses_id(label: str | None) -> str | None:
    return None if label is None else f"ses-{label}"


def _scan_folder(
    folder: str,
    participant_label: str,
    session_label: str | None,
    origin: str,
    problems: list[_Problem],
) -> list[_Found]:
    """Classify the files of the ``anat``, ``dwi`` and ``func`` folders inside ``folder``."""
    found: list[_Found] = []
    for datatype in _DATATYPES:
        found += _scan_datatype(
            os.path.join(folder, datatype),
            datatype,
            participant_label,
            session_label,
            origin,
            problems,
        )
    return found


def _make_session(
    participant_id: str, session: str | None, items: list[_Found], months: float, source: str
) -> Session:
    files: dict[str, list[Path]] = {kind: [] for kind in KINDS}
    origins: dict[Path, str] = {}
    for kind, path, _, origin in items:
        as_path = Path(path)
        files[kind].append(as_path)
        origins[as_path] = origin
    return Session(
        participant_id=participant_id,
        session_id=_ses_id(session),
        months=months,
        months_source=source,
        files=MappingProxyType({kind: tuple(sorted(paths)) for kind, paths in files.items()}),
        origins=MappingProxyType(origins),
    )


def _scandir_names(directory: str) -> list[tuple[str, bool]]:
    """(name, is_dir) of the visible entries of a folder; [] when it does not exist."""
    try:
        with os.scandir(directory) as entries:
            return [(e.name, _is_dir(e)) for e in entries if e.name[0] != "."]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError as error:
        raise _unreadable_folder(directory) from error


def _is_dir(entry: os.DirEntry) -> bool:
    """``entry.is_dir()``, but a symbolic link loop is a BIDSError naming it (not a raw
    ``OSError: Too many levels of symbolic links``); a dangling link is not a folder."""
    try:
        return entry.is_dir()
    except OSError as error:
        raise BIDSError(
            f"{entry.path} is a symbolic link loop ({error.strerror or error}: it points "
            f"back to itself through {os.readlink(entry.path)!r}). Remove the link or make "
            "it point to a real file or folder."
        ) from error


def _unreadable_folder(directory: str) -> BIDSError:
    return BIDSError(
        f"Cannot list folder {directory}: permission denied. Give your user read and "
        "execute permission on it (chmod -R u+rX), or exclude that dataset."
    )


def _read_sessions_tsv(path: str) -> tuple[str, dict[str, float | datetime | None]] | None:
    """(column, value per session label) from a sessions.tsv; None values where unknown.

    The column is ``months``, else ``timepoint`` (values in months), else ``acq_time``
    (naive datetimes, UTC when the file gives an offset). Returns None when the file does not
    exist or has none of these columns (then labels are used). Raises BIDSError when it
    cannot be read or a value of the column used is malformed.
    """
    try:
        # Before opening: a FIFO would block forever, a device could be endless.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise BIDSError(
                f"{path} is not a regular file (a folder, FIFO or device). Replace it with a "
                "tab-separated text file with columns session_id and months, or delete it "
                "to infer months from session labels."
            )
        with open(path, "rb") as stream:
            raw = stream.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise BIDSError(
            f"Cannot read {path}: {error.strerror or error}. Make it a readable tab-separated "
            "file with columns session_id and months, or delete it to infer months from "
            "session labels."
        ) from error
    if b"\x00" in raw:
        raise BIDSError(
            f"{path} is a binary file, not a tab-separated table. Replace it with a text "
            "file whose header is 'session_id<TAB>months' and one row per session."
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BIDSError(
            f"{path} is not UTF-8 text (undecodable byte at position {error.start}). Save it "
            "as UTF-8 with a 'session_id<TAB>months' header."
        ) from error
    lines = [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), 1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    if not lines:
        raise BIDSError(
            f"{path} is empty. Write a header 'session_id<TAB>months' and one row per "
            "session, or delete the file to infer months from session labels."
        )
    header = [column.strip() for column in lines[0][1].split("\t")]
    if "session_id" not in header:
        hint = ""
        if len(header) == 1 and ("," in header[0] or " " in header[0]):
            hint = " The header looks comma- or space-separated: BIDS tables use tabs."
        raise BIDSError(
            f"{path} has no 'session_id' column (header on line {lines[0][0]}: "
            f"{lines[0][1]!r}).{hint} The first row must be a tab-separated header such as "
            "'session_id<TAB>months'."
        )
    column = next((name for name in ("months", "timepoint", _ACQ_TIME) if name in header), None)
    id_index = header.index("session_id")
    value_index = header.index(column) if column is not None else None
    table: dict[str, float | datetime | None] = {}
    for number, line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise BIDSError(
                f"{path}, line {number}: {len(fields)} tab-separated value(s) but the header "
                f"has {len(header)} column(s) ({', '.join(header)}). Give every row one value "
                "per column, separated by tabs (write n/a for an unknown value)."
            )
        session = fields[id_index].strip()
        if session.startswith("ses-"):
            session = session[4:]
        if not _LABEL_RE.match(session):
            raise BIDSError(
                f"{path}, line {number}, column 'session_id': {fields[id_index]!r} is not a "
                "session label. Write the folder name, e.g. ses-M0."
            )
        if session in table:
            raise BIDSError(
                f"{path}, line {number}: session ses-{session} is listed twice. Keep one row "
                "per session."
            )
        if value_index is None:
            table[session] = None
        elif column == _ACQ_TIME:
            table[session] = _acq_time_value(fields[value_index], path, number)
        else:
            table[session] = _months_value(fields[value_index], path, number, column or "")
    if column is None:
        return None
    return column, table


def _months_value(text: str, path: str, line: int, column: str) -> float | None:
    value = text.strip()
    if value.lower() in _MISSING_VALUES:
        return None
    try:
        months = float(value)
    except ValueError:
        # A timepoint column may hold labels such as "M3" or "baseline".
        months = months_from_label(value) if column == "timepoint" else None
        if months is None:
            raise BIDSError(
                f"{path}, line {line}, column {column!r}: {text!r} is not a number of months. "
                "Write a number such as 3 or 6.5 (or n/a when unknown)."
            ) from None
    if not math.isfinite(months):
        raise BIDSError(
            f"{path}, line {line}, column {column!r}: {text!r} is not a finite number of "
            "months. Write a number such as 3 (or n/a when unknown)."
        )
    return months


def _acq_time_value(text: str, path: str, line: int) -> datetime | None:
    """One ``acq_time`` cell: a naive datetime (offsets converted to UTC), None for n/a."""
    value = text.strip()
    if value.lower() in _MISSING_VALUES:
        return None
    try:
        # Python >= 3.11 reads the BIDS form YYYY-MM-DDThh:mm:ss[.ffffff][Z] and other ISO 8601
        # variants (date only, +hh:mm offsets); years such as 1800 (shifted dates) are fine.
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BIDSError(
            f"{path}, line {line}, column 'acq_time': {text!r} is not an ISO 8601 date-time. "
            "Write it as YYYY-MM-DDThh:mm:ss (e.g. 2021-03-04T10:00:00; dates shifted for "
            "anonymisation, e.g. 1867-06-15T13:45:30, are fine), n/a when unknown, or add a "
            "'months' column with the months since baseline."
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _months_from_acq_time(times: Mapping[str, datetime]) -> dict[str, float]:
    """Months since the earliest time, in mean Gregorian months, rounded to 0.1 month."""
    earliest = min(times.values())
    seconds_per_month = DAYS_PER_MONTH * 86400.0
    return {
        session: round(
            (moment - earliest).total_seconds() / seconds_per_month, _ACQ_TIME_MONTHS_DECIMALS
        )
        for session, moment in times.items()
    }


def _check_description(path: Path) -> None:
    """Warn (once, naming it) when dataset_description.json is not a JSON object with a Name:
    the dataset is read anyway, as for a missing one."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
        problem = None if isinstance(meta, dict) else "is not a JSON object"
    except (OSError, ValueError) as error:
        problem = f"is not valid JSON ({error})"
    if problem:
        warnings.warn(
            f"{path} {problem}, so {path.parent} may not be a BIDS dataset root. Reading it "
            "anyway; write a JSON object with Name and BIDSVersion to silence this warning.",
            MSImagingWarning,
            stacklevel=3,
        )


def _check_root(bids_root: object) -> Path:
    if not isinstance(bids_root, str | os.PathLike):
        raise BIDSError(
            f"bids_root={bids_root!r} is not a path. Pass the folder that holds "
            "dataset_description.json and the sub-* folders."
        )
    root = Path(bids_root).expanduser().absolute()
    if root.is_symlink() and not root.exists():
        raise BIDSError(
            f"bids_root {str(root)!r} is a symbolic link that leads nowhere (dangling, or a "
            f"loop through {os.readlink(root)!r}). Pass the real BIDS dataset folder."
        )
    if not root.exists():
        raise BIDSError(
            f"bids_root {str(root)!r} does not exist. Pass the folder that holds "
            "dataset_description.json and the sub-* folders."
        )
    if not root.is_dir():
        raise BIDSError(
            f"bids_root {str(root)!r} is a file, not a folder. Pass the BIDS dataset folder "
            "(the one that holds dataset_description.json)."
        )
    return root


def _derivative_roots(root: Path, derivatives: object) -> list[tuple[str, str]]:
    """(origin name, folder) of each derivatives dataset to read."""
    if derivatives is None or derivatives is False:
        return []
    if derivatives is True:
        container = root / "derivatives"
        folders = sorted(
            (
                os.path.join(container, name)
                for name, is_dir in _scandir_names(str(container))
                if is_dir
            ),
            key=_natural_key,
        )
    elif isinstance(derivatives, str | os.PathLike):
        folders = [_check_derivative_path(root, derivatives)]
    elif isinstance(derivatives, Iterable):
        folders = []
        for item in derivatives:
            if not isinstance(item, str | os.PathLike):
                raise InputError(
                    f"derivatives contains {item!r}, which is not a path. Pass True (every "
                    "folder in <bids_root>/derivatives), False, or a list of folders."
                )
            folders.append(_check_derivative_path(root, item))
    else:
        raise InputError(
            f"derivatives={derivatives!r} is not understood. Pass True (every folder in "
            "<bids_root>/derivatives), False, or a list of derivative dataset folders."
        )
    unique = list(dict.fromkeys(folders))
    names = [os.path.basename(folder) for folder in unique]
    return [
        (name if names.count(name) == 1 else folder, folder)
        for name, folder in zip(names, unique, strict=True)
    ]


def _check_derivative_path(root: Path, folder: str | os.PathLike[str]) -> str:
    path = Path(folder).expanduser()
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        path = root / path  # relative to the dataset, e.g. "derivatives/fmriprep"
    if not path.is_dir():
        raise BIDSError(
            f"Derivatives folder {str(path)!r} does not exist or is not a folder. Pass "
            "existing derivative dataset folders (absolute, or relative to bids_root)."
        )
    return str(path.absolute())


def _table(
    rows: list[tuple[object, ...]], columns: list[str], dtypes: Mapping[str, type]
) -> pd.DataFrame:
    """A DataFrame; ``session_id`` stays object so that None is not turned into NaN."""
    import pandas as pd

    return pd.DataFrame(
        {
            name: pd.Series(
                [row[index] for row in rows],
                dtype=object if name == "session_id" else dtypes.get(name, "str"),
            )
            for index, name in enumerate(columns)
        }
    )


@dataclass
class _MonthsNotes:
    """What month inference had to fall back on, gathered over subjects for one warning each.

    ``by_order``: (subject label, sessions placed by order); ``acq_time_ignored``: (path of
    the sessions.tsv, sessions without an acq_time).
    """

    by_order: list[tuple[str, list[str]]] = field(default_factory=list)
    acq_time_ignored: list[tuple[str, list[str]]] = field(default_factory=list)


def _warn_acq_time_ignored(ignored: list[tuple[str, list[str]]]) -> None:
    shown = "; ".join(
        f"{path} (no acq_time for {', '.join('ses-' + s for s in sessions)})"
        for path, sessions in ignored[:10]
    )
    if len(ignored) > 10:
        shown += f"; and {len(ignored) - 10} more subjects"
    warnings.warn(
        "Months since baseline are read from the acq_time column of a sessions.tsv only when "
        f"every session of the subject has one, so acq_time was ignored for: {shown}. Months "
        "come from the session labels (else the session order) instead. Fill in the missing "
        "acq_time values (YYYY-MM-DDThh:mm:ss) or add a 'months' column.",
        MSImagingWarning,
        stacklevel=3,
    )


def _warn_months_from_order(by_order: list[tuple[str, list[str]]]) -> None:
    shown = "; ".join(
        f"sub-{label} (sessions {', '.join('ses-' + s for s in sessions)})"
        for label, sessions in by_order[:10]
    )
    if len(by_order) > 10:
        shown += f"; and {len(by_order) - 10} more subjects"
    first = by_order[0][0]
    others = " (and likewise for the other subjects)" if len(by_order) > 1 else ""
    warnings.warn(
        "Months since baseline could not be read from sessions.tsv or from the session "
        f"labels for {shown}; using the session order (0, 1, 2, ...) instead. Add a 'months' "
        f"column to sub-{first}/sub-{first}_sessions.tsv{others} to give the real times.",
        MSImagingWarning,
        stacklevel=3,
    )


class Study:
    """A BIDS study: its subjects, their sessions in months, and the files of each session.

    Parameters
    ----------
    bids_root : str or os.PathLike
        Folder of the raw BIDS dataset (it holds ``dataset_description.json`` and the
        ``sub-*`` folders).
    derivatives : bool, None or list of path, default=True
        True: every folder in ``<bids_root>/derivatives/`` (e.g. ``fmriprep``,
        ``qsiprep``, a segmentation tool). False or None: raw data only. A list: these
        derivative dataset folders (absolute, or relative to ``bids_root``).

    Raises
    ------
    BIDSError
        When the root is missing or has no ``sub-*`` folder, or a ``sessions.tsv`` cannot be
        read or holds a malformed value in the column months are taken from (``months``,
        ``timepoint`` or ``acq_time``; the message names file, line, column and value).
        Missing files never raise: see :meth:`missing` and :attr:`problems`.

    Warns
    -----
    MSImagingWarning
        When ``dataset_description.json`` is absent, when a ``sessions.tsv`` has ``acq_time``
        but not for every session of its subject (``acq_time`` is then ignored for that
        subject), and when months had to be inferred from the session order.

    Notes
    -----
    Months since baseline come from the ``months``/``timepoint`` column of
    ``sub-<label>_sessions.tsv``, else its ``acq_time`` column, else session labels, else
    the session order (see the module documentation; the source is in ``months_source``).
    From ``acq_time``: days since the subject's earliest listed ``acq_time`` / (365.25 / 12),
    rounded to 0.1 month.

    Raw ``anat`` lesion masks named as the fMRIPrep documentation asks,
    ``sub-<label>[_ses-<label>]_T1w_label-lesion_roi.nii.gz``, are ``lesion_mask`` files.

    Derivative files in a subject-level ``sub-<label>/anat/`` folder (longitudinal anatomy
    from fMRIPrep or a segmentation tool) apply to every session of that subject, or only to
    session ``X`` when their name carries ``ses-X``.

    Examples
    --------
    >>> study = Study("/data/ms_study")  # doctest: +SKIP
    >>> study.sessions[["participant_id", "session_id", "months"]]  # doctest: +SKIP
    >>> session = study.session("01", "M3")  # doctest: +SKIP
    >>> session.get("bold_preproc", space="MNI152NLin2009cAsym")  # doctest: +SKIP
    """

    def __init__(
        self,
        bids_root: str | os.PathLike[str],
        derivatives: bool | Iterable[str | os.PathLike[str]] | None = True,
    ) -> None:
        root = _check_root(bids_root)
        self._root = root
        self._derivatives = _derivative_roots(root, derivatives)
        description = root / "dataset_description.json"
        if description.is_file():  # a FIFO or folder there is never opened
            _check_description(description)
        else:
            warnings.warn(
                f"{root / 'dataset_description.json'} is missing, so {root} may not be a BIDS "
                "dataset root. Reading it anyway; add a dataset_description.json with Name "
                "and BIDSVersion to silence this warning.",
                MSImagingWarning,
                stacklevel=2,
            )
        problems: list[_Problem] = []
        labels = []
        for name, is_dir in _scandir_names(str(root)):
            if not (is_dir and name.startswith("sub-")):
                continue
            if _LABEL_RE.match(name[4:]):
                labels.append(name[4:])
            else:
                problems.append(
                    (
                        name,
                        None,
                        None,
                        f"{root / name}: {name!r} is not a valid subject "
                        "folder name (sub-<alphanumeric label>); it was ignored",
                    )
                )
        if not labels:
            raise BIDSError(
                f"No sub-* folder in {root}. Pass the BIDS dataset root (the folder that "
                "holds dataset_description.json and sub-<label> folders)."
            )
        labels.sort(key=_natural_key)
        self._subjects = labels
        notes = _MonthsNotes()
        sessions: list[Session] = []
        for label in labels:
            sessions.extend(self._discover_subject(label, problems, notes))
        self._sessions = sessions
        self._index = {(s.participant_id, s.session_id): s for s in sessions}
        self._problems = problems
        if notes.acq_time_ignored:
            _warn_acq_time_ignored(notes.acq_time_ignored)
        if notes.by_order:
            _warn_months_from_order(notes.by_order)

    # -- discovery -----------------------------------------------------------------------
    def _discover_subject(
        self, label: str, problems: list[_Problem], notes: _MonthsNotes
    ) -> list[Session]:
        participant_id = f"sub-{label}"
        subject_dir = os.path.join(self._root, participant_id)
        entries = _scandir_names(subject_dir)
        session_labels = []
        for name, is_dir in entries:
            if not (is_dir and name.startswith("ses-")):
                continue
            if _LABEL_RE.match(name[4:]):
                session_labels.append(name[4:])
            else:
                message = f"{subject_dir}{os.sep}{name}: not a valid session folder name "
                message += "(ses-<alphanumeric label>); it was ignored"
                problems.append((participant_id, None, None, message))
        session_labels.sort(key=_natural_key)

        if session_labels:
            found = self._find_session_files(label, entries, session_labels, problems)
            months = self._session_months(subject_dir, label, session_labels, problems, notes)
        else:
            found = self._find_sessionless_files(label, problems)
            months = {None: (0.0, "order")}
        sessions = [
            _make_session(participant_id, session, items, *months[session])
            for session, items in found.items()
        ]
        sessions.sort(key=lambda s: (s.months, _natural_key(s.session_id or "")))
        return sessions

    def _find_sessionless_files(
        self, label: str, problems: list[_Problem]
    ) -> dict[str | None, list[_Found]]:
        participant_id = f"sub-{label}"
        items = _scan_folder(os.path.join(self._root, participant_id), label, None, _RAW, problems)
        for origin, folder in self._derivatives:
            derivative_subject = os.path.join(folder, participant_id)
            items += _scan_folder(derivative_subject, label, None, origin, problems)
            for name, is_dir in _scandir_names(derivative_subject):
                if is_dir and name.startswith("ses-"):
                    message = f"{derivative_subject}{os.sep}{name} has no matching raw session "
                    message += f"folder (the raw data of {participant_id} has no sessions); "
                    message += "it was ignored"
                    problems.append((participant_id, None, None, message))
        return {None: items}

    def _find_session_files(
        self,
        label: str,
        entries: list[tuple[str, bool]],
        session_labels: list[str],
        problems: list[_Problem],
    ) -> dict[str | None, list[_Found]]:
        participant_id = f"sub-{label}"
        subject_dir = os.path.join(self._root, participant_id)
        for name, is_dir in entries:
            if is_dir and name in _DATATYPES:
                message = f"{subject_dir}{os.sep}{name}: raw data outside the ses-* folders of "
                message += f"{participant_id} was ignored; move it into its session folder"
                problems.append((participant_id, None, None, message))
        found: dict[str | None, list[_Found]] = {
            session: _scan_folder(
                os.path.join(subject_dir, f"ses-{session}"), label, session, _RAW, problems
            )
            for session in session_labels
        }
        for origin, folder in self._derivatives:
            derivative_subject = os.path.join(folder, participant_id)
            for name, is_dir in _scandir_names(derivative_subject):
                if not is_dir:
                    continue
                path = os.path.join(derivative_subject, name)
                if name == "anat":
                    # Subject-level (longitudinal) anatomy: every session, or the one its
                    # name says.
                    for item in _scan_datatype(path, name, label, None, origin, problems):
                        for target in [item[2]] if item[2] is not None else session_labels:
                            if target in found:
                                found[target].append(item)
                elif name.startswith("ses-"):
                    if name[4:] in found:
                        found[name[4:]] += _scan_folder(path, label, name[4:], origin, problems)
                    else:
                        message = f"{path} has no matching raw session folder; it was ignored"
                        problems.append((participant_id, None, None, message))
        return found

    def _session_months(
        self,
        subject_dir: str,
        label: str,
        session_labels: list[str],
        problems: list[_Problem],
        notes: _MonthsNotes,
    ) -> dict[str | None, tuple[float, str]]:
        participant_id = f"sub-{label}"
        tsv = os.path.join(subject_dir, f"{participant_id}_sessions.tsv")
        column, table = _read_sessions_tsv(tsv) or (None, {})
        source = "sessions.tsv"
        if column == _ACQ_TIME:
            without = [session for session in session_labels if table.get(session) is None]
            if without:
                # Months from part of the visits plus labels for the rest would mix two
                # clocks (and the baseline may be among the visits without a time).
                notes.acq_time_ignored.append((tsv, without))
                table = {session: None for session in table}
            else:
                # Baseline: the earliest visit listed, even one without a folder (a visit
                # whose data are not shared still starts the subject's clock).
                times = {s: value for s, value in table.items() if isinstance(value, datetime)}
                table = _months_from_acq_time(times)
                source = f"sessions.tsv:{_ACQ_TIME}"
        for session in table:
            if session not in session_labels:
                problems.append(
                    (
                        participant_id,
                        None,
                        None,
                        f"{tsv} lists ses-{session} but there is no "
                        f"folder {participant_id}/ses-{session}; remove the row or add the data",
                    )
                )
        months: dict[str | None, tuple[float, str]] = {}
        unresolved = []
        for position, session in enumerate(session_labels):
            value = table.get(session)
            if value is not None:
                months[session] = (value, source)
                continue
            value = months_from_label(session)
            if value is not None:
                months[session] = (value, "label")
            else:
                months[session] = (float(position), "order")
                unresolved.append(session)
        if unresolved:
            notes.by_order.append((label, unresolved))
        seen: dict[float, str] = {}
        for session in session_labels:
            value = months[session][0]
            if value in seen:
                problems.append(
                    (
                        participant_id,
                        f"ses-{session}",
                        None,
                        f"{participant_id}: sessions "
                        f"ses-{seen[value]} and ses-{session} both fall at {value:g} months "
                        f"({months[session][1]}); give them distinct months in {tsv}",
                    )
                )
            else:
                seen[value] = session
        return months

    # -- public API ----------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """Absolute path of the raw BIDS dataset."""
        return self._root

    @property
    def derivatives(self) -> tuple[Path, ...]:
        """Derivative dataset folders that were read."""
        return tuple(Path(folder) for _, folder in self._derivatives)

    @property
    def subjects(self) -> list[str]:
        """Subject labels without the ``sub-`` prefix, naturally sorted."""
        return list(self._subjects)

    @property
    def problems(self) -> list[str]:
        """Messages about files that were found but cannot be used, and naming issues."""
        return [message for *_, message in self._problems]

    @property
    def sessions(self) -> pd.DataFrame:
        """One row per session, sorted by participant then months.

        Columns: ``participant_id``, ``session_id`` (None without sessions), ``months``
        (float), ``months_source``, then one bool column per kind of :data:`KINDS`.
        """
        rows = [
            (
                s.participant_id,
                s.session_id,
                s.months,
                s.months_source,
                *(bool(s.files[kind]) for kind in KINDS),
            )
            for s in self._sessions
        ]
        columns = ["participant_id", "session_id", "months", "months_source", *KINDS]
        return _table(rows, columns, {"months": float, **dict.fromkeys(KINDS, bool)})

    def session(self, participant: str, session: str | None = None) -> Session:
        """One session, by labels with or without the ``sub-``/``ses-`` prefixes.

        Parameters
        ----------
        participant : str
            ``"01"`` or ``"sub-01"``.
        session : str or None, optional
            ``"M3"`` or ``"ses-M3"``; may be omitted when the participant has one session.

        Returns
        -------
        Session
        """
        if not isinstance(participant, str):
            raise InputError(
                f"participant={participant!r} must be a label string such as '01' or 'sub-01'."
            )
        participant_id = participant if participant.startswith("sub-") else f"sub-{participant}"
        available = [s for s in self._sessions if s.participant_id == participant_id]
        if not available:
            shown = ", ".join(self._subjects[:10]) + (", ..." if len(self._subjects) > 10 else "")
            raise InputError(
                f"participant={participant!r}: no subject {participant_id} in {self._root}. "
                f"Subjects: {shown}."
            )
        labels = ", ".join(str(s.session_id) for s in available)
        if session is None:
            if len(available) == 1:
                return available[0]
            raise InputError(
                f"{participant_id} has {len(available)} sessions ({labels}); pass session= "
                "one of them."
            )
        if not isinstance(session, str):
            raise InputError(f"session={session!r} must be a label string such as 'M0'.")
        session_id = session if session.startswith("ses-") else f"ses-{session}"
        found = self._index.get((participant_id, session_id))
        if found is None:
            raise InputError(
                f"session={session!r}: {participant_id} has no {session_id}. Its sessions: "
                f"{labels}."
            )
        return found

    def missing(self, required: Iterable[str] | str | None = None) -> pd.DataFrame:
        """Pieces missing per session; never raises for missing data.

        Parameters
        ----------
        required : iterable of str, optional
            Kinds every session must have. By default, a kind is reported missing from a
            session when at least one other session of the study has it.

        Returns
        -------
        pandas.DataFrame
            Columns ``participant_id``, ``session_id``, ``months``, ``kind``, ``reason``; one
            row per absent kind and session, plus one per recorded problem (:attr:`problems`).
        """
        total = len(self._sessions)
        counts = {kind: sum(bool(s.files[kind]) for s in self._sessions) for kind in KINDS}
        if required is None:
            kinds = [kind for kind in KINDS if counts[kind] > 0]
        else:
            names = [required] if isinstance(required, str) else list(required)
            kinds = [_check_kind(kind, "required") for kind in dict.fromkeys(names)]
        by_session: dict[tuple[str, str | None], list[_Problem]] = {}
        loose: list[_Problem] = []
        for problem in self._problems:
            key = (problem[0], problem[1])
            (by_session.setdefault(key, []) if key in self._index else loose).append(problem)

        rows = []
        for s in self._sessions:
            key = (s.participant_id, s.session_id)
            problems = by_session.get(key, [])
            explained = {kind for _, _, kind, _ in problems}
            for kind in kinds:
                if s.files[kind] or kind in explained:
                    continue
                reason = (
                    "required but absent"
                    if required is not None
                    else f"absent here but present in {counts[kind]} of {total} sessions"
                )
                rows.append((s.participant_id, s.session_id, s.months, kind, reason))
            for _, _, kind, message in problems:
                rows.append((s.participant_id, s.session_id, s.months, kind, message))
        for participant_id, session_id, kind, message in loose:
            rows.append((participant_id, session_id, math.nan, kind, message))
        columns = ["participant_id", "session_id", "months", "kind", "reason"]
        return _table(rows, columns, {"months": float, "kind": object})

    def __iter__(self) -> Iterator[Session]:
        return iter(self._sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def __repr__(self) -> str:
        derived = ", ".join(origin for origin, _ in self._derivatives) or "none"
        problems = f", {len(self._problems)} problem(s)" if self._problems else ""
        return (
            f"<Study {str(self._root)!r}: {len(self._subjects)} subjects, "
            f"{len(self._sessions)} sessions, derivatives: {derived}{problems}>"
        )

    def _repr_html_(self, max_rows: int = 40) -> str:
        kinds = [kind for kind in KINDS if any(s.files[kind] for s in self._sessions)]
        head = "".join(
            f"<th>{html.escape(name)}</th>"
            for name in ("participant", "session", "months", "source", *kinds)
        )
        body = []
        for s in self._sessions[:max_rows]:
            cells = [s.participant_id, s.session_id or "", f"{s.months:g}", s.months_source]
            cells += ["✓" if s.files[kind] else "—" for kind in kinds]
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        more = len(self._sessions) - max_rows
        caption = html.escape(repr(self))
        note = f"<p>… {more} more sessions</p>" if more > 0 else ""
        return (
            f"<div><table><caption>{caption}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{note}</div>"
        )
