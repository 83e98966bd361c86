"""Which files a participant task reads: filters, the atlas space check, and the inventory.

Inputs are resolved once, in the parent process, from the one :class:`~msimaging.bids.Study`
of the run; each :class:`~msimaging.pipeline.tasks.Task` then carries its file paths, so no
worker ever scans the dataset again.

Choosing among several files
----------------------------
When a visit holds several files of one kind (two DWI runs ``dir-AP`` and ``dir-PA``, BOLD
runs of two tasks, fMRIPrep outputs in two spaces), the user chooses with BIDS entities:

* command line: ``--bids-filter dwi:dir=AP bold:task=rest,space=MNI152NLin2009cAsym``;
* ``--bids-filter-file filter.json`` (fMRIPrep's spelling):
  ``{"dwi": {"direction": "AP"}, "bold": {"task": "rest"}, "t1w": {"acquisition": null}}``
  (pybids long names such as ``acquisition`` are accepted; ``null`` means "entity absent");
* ``--config``: ``[inputs.dwi]`` ``dir = "AP"`` (TOML) or ``{"inputs": {"dwi": {"dir": "AP"}}}``.

Without a filter, several matches are an error before any work, listing the candidates,
the entity that tells them apart and the option to use. Only two choices are made for the
user, both documented: derivative anatomy in a template space (``space-MNI152...``) is left out
when a native-space file exists (segmentations and lesion masks must lie on the subject's
grid), and among several native segmentations fMRIPrep's/FreeSurfer's ``desc-aseg`` is
preferred. For the fMRI task the BOLD's ``space-`` entity must match the atlas: the coordinate
atlases are in MNI152 space, so only ``space-MNI152*`` runs qualify.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from msimaging.bids import parse_entities
from msimaging.errors import InputError
from msimaging.segmentation import find_label_table

__all__ = [
    "FILTER_ENTITIES",
    "FILTER_KINDS",
    "PRODUCERS",
    "InputChoiceError",
    "InputNotFoundError",
    "check_filters",
    "check_filters_match",
    "inventory",
    "parse_filter_args",
    "read_filter_file",
    "resolve_inputs",
]

#: Filter names (``--bids-filter NAME:...``) and the :data:`msimaging.bids.KINDS` they select.
FILTER_KINDS: dict[str, str] = {
    "t1w": "t1w",
    "flair": "flair",
    "dwi": "dwi",
    "bold": "bold_preproc",
    "dseg": "dseg",
    "probseg": "probseg",
    "lesion_mask": "lesion_mask",
}
#: Entities a filter may set.
FILTER_ENTITIES: tuple[str, ...] = (
    "task", "acq", "ce", "rec", "dir", "run", "echo", "space", "res", "den", "desc", "label",
)
# pybids' long entity names, as in fMRIPrep's --bids-filter-file.
_LONG_NAMES = {
    "acquisition": "acq", "ceagent": "ce", "reconstruction": "rec", "direction": "dir",
    "description": "desc", "resolution": "res", "density": "den",
}
# Keys of an fMRIPrep filter file that only restate the kind; accepted and ignored.
_IMPLIED_KEYS = frozenset({"datatype", "suffix", "extension", "scope"})
# Entities that identify a BOLD run (not its space or processing).
_RUN_ENTITIES = ("task", "acq", "ce", "rec", "dir", "run", "echo")
_NATIVE_SPACES = (None, "T1w", "orig", "native")
_FILTER_HINT = ("--bids-filter {name}:{key}={value} (or [inputs.{name}] {key} = \"{value}\" in "
                "--config)")


class InputNotFoundError(InputError):
    """A visit lacks an input a task needs: that task fails, the others run."""


class InputChoiceError(InputError):
    """Inputs cannot be chosen unambiguously (several matches, wrong space): raised before
    any work, since the same fix (a filter) applies to every visit."""


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------


def check_filters(filters: Any, where: str) -> dict[str, dict[str, str | None]]:
    """Normalise ``{name: {entity: value}}`` filters; unknown names/entities are errors."""
    from msimaging.pipeline.options import ConfigError

    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise ConfigError(f"{where} must map input names ({', '.join(FILTER_KINDS)}) to "
                          f"entities, e.g. {{\"dwi\": {{\"dir\": \"AP\"}}}}; got {filters!r}.")
    out: dict[str, dict[str, str | None]] = {}
    for name, entities in filters.items():
        if name not in FILTER_KINDS:
            raise ConfigError(f"{where}: unknown input {name!r}; the inputs that can be "
                              f"filtered are {', '.join(FILTER_KINDS)}.")
        if not isinstance(entities, Mapping):
            raise ConfigError(f"{where}: {name} must map entities to values, e.g. "
                              f"{{\"dir\": \"AP\"}}; got {entities!r}.")
        wanted: dict[str, str | None] = {}
        for key, value in entities.items():
            key = _LONG_NAMES.get(str(key), str(key))
            if key in _IMPLIED_KEYS:
                continue
            if key not in FILTER_ENTITIES:
                raise ConfigError(f"{where}: {name} filter has unknown entity {key!r}; the "
                                  f"entities are {', '.join(FILTER_ENTITIES)} (subjects and "
                                  "sessions are chosen with --participant-label and "
                                  "--session-label).")
            if value is not None:
                value = str(value).removeprefix(f"{key}-")
                if not value.isalnum():
                    raise ConfigError(f"{where}: {name} {key}={value!r} is not a BIDS label "
                                      "(letters and digits only).")
            wanted[key] = value
        out[name] = wanted
    return out


def parse_filter_args(tokens: Iterable[str] | None) -> dict[str, dict[str, str | None]]:
    """``["dwi:dir=AP", "bold:task=rest,run=1"]`` -> ``{"dwi": {"dir": "AP"}, ...}``."""
    from msimaging.pipeline.options import ConfigError

    out: dict[str, dict[str, Any]] = {}
    for token in tokens or ():
        name, sep, rest = token.partition(":")
        pairs = [p for p in rest.split(",") if p]
        if not sep or not pairs or any("=" not in p for p in pairs):
            raise ConfigError(f"--bids-filter {token!r} is not NAME:ENTITY=VALUE[,ENTITY=VALUE]"
                              f" (e.g. dwi:dir=AP or bold:task=rest,run=1); NAME is one of "
                              f"{', '.join(FILTER_KINDS)}.")
        out.setdefault(name, {}).update(p.split("=", 1) for p in pairs)
    return check_filters(out, "--bids-filter")


def read_filter_file(path: str | Path) -> dict[str, dict[str, str | None]]:
    """Read an fMRIPrep-style ``--bids-filter-file`` (JSON)."""
    from msimaging.pipeline.options import ConfigError

    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--bids-filter-file {str(path)!r} cannot be read: {exc}.") from exc
    except ValueError as exc:
        raise ConfigError(f"--bids-filter-file {str(path)!r} is not valid JSON: {exc}.") from exc
    return check_filters(data, f"--bids-filter-file {str(path)!r}")


def merge_filters(*layers: Mapping[str, Mapping[str, str | None]]) -> dict[str, dict]:
    """Later layers win entity by entity (config < filter file < command line)."""
    out: dict[str, dict] = {}
    for layer in layers:
        for name, entities in layer.items():
            out.setdefault(name, {}).update(entities)
    return out


def _matches(entities: Mapping[str, str], wanted: Mapping[str, str | None]) -> bool:
    for key, value in wanted.items():
        found = entities.get(key)
        if value is None:
            if found is not None:
                return False
        elif found is None or not (found == value or (found.isdigit() and value.isdigit()
                                     and int(found) == int(value))):
            return False
    return True


def check_filters_match(study: Any, filters: Mapping[str, Mapping[str, str | None]]) -> None:
    """A filter that matches no file anywhere in the study is a typo: say so before work."""
    for name, wanted in filters.items():
        if not wanted:
            continue
        kind = FILTER_KINDS[name]
        files = [p for s in study for p in s.files.get(kind, ())]
        if not files or any(_matches(parse_entities(p.name), wanted) for p in files):
            continue
        present = {key: sorted({parse_entities(p.name).get(key) or "<none>" for p in files})
                   for key in wanted}
        shown = "; ".join(f"{k}: {', '.join(v)}" for k, v in present.items())
        raise InputChoiceError(
            f"the {name} filter {_show_filter(wanted)} matches none of the {len(files)} {kind} "
            f"file(s) of the study (values present: {shown}); fix the filter."
        )


def _show_filter(wanted: Mapping[str, str | None]) -> str:
    return ",".join(f"{k}={'<absent>' if v is None else v}" for k, v in wanted.items())


# --------------------------------------------------------------------------------------------
# Resolution of one visit's inputs
# --------------------------------------------------------------------------------------------


def _differences(paths: Sequence[Path]) -> list[tuple[str, list[str]]]:
    parsed = [parse_entities(p.name) for p in paths]
    keys = sorted({k for e in parsed for k in e} - {"sub", "ses"})
    out = []
    for key in keys:
        values = sorted({e.get(key) or "<none>" for e in parsed})
        if len(values) > 1:
            out.append((key, values))
    return out


def _ambiguous(session: Any, name: str, paths: Sequence[Path]) -> InputChoiceError:
    listing = ", ".join(p.name for p in paths)
    diffs = _differences(paths)
    if diffs:
        key, values = next(((k, v) for k, v in diffs if k in FILTER_ENTITIES), diffs[0])
        example = next(v for v in values if v != "<none>")
        how = (f"they differ by {'; '.join(f'{k} ({chr(44).join(v)})' for k, v in diffs)}: "
               f"choose with {_FILTER_HINT.format(name=name, key=key, value=example)}")
    else:
        how = "they differ only by folder or pipeline: remove the duplicate"
    return InputChoiceError(f"{session.name}: {len(paths)} {name} files match: {listing}; {how}.")


def _candidates(session: Any, kind: str, wanted: Mapping[str, str | None]) -> list[Path]:
    return [p for p in session.files.get(kind, ()) if _matches(parse_entities(p.name), wanted)]


def _prefer_native(paths: list[Path], wanted: Mapping[str, str | None]) -> list[Path]:
    """Drop template-space anatomy when a native one exists (unless the user set space)."""
    if "space" in wanted:
        return paths
    native = [p for p in paths if parse_entities(p.name).get("space") in _NATIVE_SPACES]
    return native or paths


def _one(session: Any, name: str, paths: list[Path], required: bool, kind: str,
         wanted: Mapping[str, str | None]) -> Path | None:
    if len(paths) == 1:
        return paths[0]
    if len(paths) > 1:
        raise _ambiguous(session, name, paths)
    if not required:
        return None
    present = session.files.get(kind, ())
    if present and wanted:
        raise InputNotFoundError(
            f"{session.name}: no {name} file matches the filter {_show_filter(wanted)}; files "
            f"here: {', '.join(p.name for p in present)}."
        )
    raise InputNotFoundError(
        f"{session.name}: no {name} file ({_where(name, session)}); produced by "
        f"{PRODUCERS[name][0]}. Run `msimaging inventory` to see what each visit lacks."
    )


def _segmentation(session: Any, filters: Mapping[str, Mapping], required: bool
                  ) -> dict[str, Path]:
    """``dseg`` and/or ``probseg_<label>`` (one per tissue label)."""
    out: dict[str, Path] = {}
    wanted = filters.get("dseg", {})
    dsegs = _prefer_native(_candidates(session, "dseg", wanted), wanted)
    if len(dsegs) > 1 and "desc" not in wanted:
        # fMRIPrep writes desc-aseg and desc-aparcaseg (and FAST's plain dseg): aseg is the
        # FreeSurfer whole-brain segmentation with ventricles, which NAWM needs.
        aseg = [p for p in dsegs if parse_entities(p.name).get("desc") == "aseg"]
        dsegs = aseg or dsegs
    dseg = _one(session, "dseg", dsegs, False, "dseg", wanted)
    if dseg is not None:
        out["dseg"] = dseg
        # The label table that names the labels (same stem, or inherited from a parent
        # folder such as fMRIPrep's desc-aseg_dseg.tsv): part of the provenance, so editing
        # it re-runs the task.
        table = find_label_table(dseg)
        if table is not None:
            out["dseg.tsv"] = table
    wanted = filters.get("probseg", {})
    by_label: dict[str, list[Path]] = {}
    for path in _prefer_native(_candidates(session, "probseg", wanted), wanted):
        by_label.setdefault(parse_entities(path.name).get("label", ""), []).append(path)
    for label, paths in sorted(by_label.items()):
        if label:
            out[f"probseg_{label}"] = _one(session, "probseg", paths, True, "probseg", wanted)
    if required and "dseg" not in out and not any(k.startswith("probseg_") for k in out):
        _one(session, "dseg", [], True, "dseg", filters.get("dseg", {}))  # raises
    return out


def _bold(session: Any, filters: Mapping[str, Mapping], atlas: str | None,
          space: str | None) -> Path:
    from msimaging.pipeline.options import ATLAS_SPACE_PREFIX

    wanted = filters.get("bold", {})
    paths = _candidates(session, "bold_preproc", wanted)
    if not paths:
        return _one(session, "bold", [], True, "bold_preproc", wanted)  # raises
    if space is not None and "space" not in wanted:
        def ok(p: Path) -> bool:
            found = parse_entities(p.name).get("space") or ""
            return found.startswith(space) if space == ATLAS_SPACE_PREFIX else found == space
        fitting = [p for p in paths if ok(p)]
        if not fitting:
            spaces = sorted({parse_entities(p.name).get("space") or "<none>" for p in paths})
            need = "space-MNI152*" if space == ATLAS_SPACE_PREFIX else f"space-{space}"
            raise InputChoiceError(
                f"{session.name}: the atlas {atlas!r} is in {space} space but the BOLD runs "
                f"here are in space {', '.join(spaces)} ({', '.join(p.name for p in paths)}). "
                f"It needs {need} BOLD (fMRIPrep --output-spaces "
                f"{'MNI152NLin2009cAsym' if space == ATLAS_SPACE_PREFIX else space}), or an "
                "--atlas label image in the BOLD's space."
            )
        paths = fitting
    return _one(session, "bold", paths, True, "bold_preproc", wanted)


def _same_run(session: Any, kind: str, bold: Path, keep_space: bool) -> list[Path]:
    ref = parse_entities(bold.name)
    keys = (*_RUN_ENTITIES, "space", "res", "den") if keep_space else _RUN_ENTITIES
    out = []
    for path in session.files.get(kind, ()):
        found = parse_entities(path.name)
        if all(found.get(k) == ref.get(k) for k in keys):
            out.append(path)
    return out


def resolve_inputs(
    session: Any,
    modality: str,
    *,
    filters: Mapping[str, Mapping[str, str | None]] | None = None,
    atlas: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """The files one participant task reads, keyed by role.

    Keys: ``dti``: ``dwi``, ``dwi.bval``, ``dwi.bvec``, ``t1w``, ``dseg`` (+ ``dseg.tsv``)
    and/or ``probseg_<label>``, optional ``lesion_mask``; ``fmri``: ``bold_preproc``,
    ``confounds`` (unless ``strategy`` is None), optional ``bold_mask`` and ``atlas`` (a
    label image); ``volumetry``: ``dseg``/``probseg_<label>``, ``lesion_mask``.

    Raises
    ------
    InputNotFoundError
        A needed file is absent at this visit (the task fails; others run).
    InputChoiceError
        Several files match, or the BOLD is not in the atlas space (fix before any work).
    """
    filters = filters or {}
    params = params or {}
    out: dict[str, Path] = {}
    if modality == "dti":
        wanted = filters.get("dwi", {})
        dwi = _one(session, "dwi", _candidates(session, "dwi", wanted), True, "dwi", wanted)
        out["dwi"] = dwi
        stem = dwi.name[: -len(".nii.gz")] if dwi.name.endswith(".gz") else dwi.stem
        for ext in (".bval", ".bvec"):
            out[f"dwi{ext}"] = dwi.with_name(stem + ext)  # Study lists a DWI only with both
        wanted = filters.get("t1w", {})
        out["t1w"] = _one(session, "t1w", _candidates(session, "t1w", wanted), True, "t1w",
                          wanted)
        out.update(_segmentation(session, filters, required=True))
        lesion = _lesion(session, filters, required=False)
        if lesion is not None:
            out["lesion_mask"] = lesion
    elif modality == "fmri":
        from msimaging.pipeline.options import atlas_space, coordinate_atlases

        atlas = atlas or str(params.get("atlas", "seitzman2018"))
        space = atlas_space(atlas)
        bold = _bold(session, filters, atlas, space)
        out["bold_preproc"] = bold
        if space is None and atlas not in coordinate_atlases():
            _check_overlap(Path(atlas), bold, session)
        if atlas not in coordinate_atlases():
            out["atlas"] = Path(atlas)
        confounds = _same_run(session, "confounds", bold, keep_space=False)
        if params.get("strategy", "simple") is not None:  # strategy None reads no confounds
            out["confounds"] = _one(session, "confounds", confounds, True, "confounds", {})
        mask = _one(session, "bold_mask", _same_run(session, "bold_mask", bold, True), False,
                    "bold_mask", {})
        if mask is not None:
            out["bold_mask"] = mask
    elif modality == "volumetry":
        out.update(_segmentation(session, filters, required=True))
        if "dseg" not in out:  # probability maps give no lesion locations
            _one(session, "dseg", [], True, "dseg", filters.get("dseg", {}))  # raises
        out["lesion_mask"] = _lesion(session, filters, required=True)
    else:
        raise InputError(f"unknown modality {modality!r}; use dti, fmri or volumetry.")
    return out


def _lesion(session: Any, filters: Mapping[str, Mapping], required: bool) -> Path | None:
    wanted = filters.get("lesion_mask", {})
    paths = _prefer_native(_candidates(session, "lesion_mask", wanted), wanted)
    return _one(session, "lesion_mask", paths, required, "lesion_mask", wanted)


def _bounds_mm(shape: Sequence[int], affine: Any) -> Any:
    import numpy as np

    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in shape[:3]], indexing="ij"))
    corners = corners.reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    return world.min(axis=1), world.max(axis=1)


def _check_overlap(atlas: Path, bold: Path, session: Any) -> None:
    """A label image without a ``space-`` entity must at least cover the same world region
    as the BOLD (half of the smaller field of view): else it is in another space."""
    import nibabel as nib
    import numpy as np

    try:
        a_img, b_img = nib.load(atlas), nib.load(bold)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise InputError(f"{session.name}: cannot read the atlas {atlas} or the BOLD {bold} "
                         f"({exc}); give a readable NIfTI label image.") from exc
    a_lo, a_hi = _bounds_mm(a_img.shape, a_img.affine)
    b_lo, b_hi = _bounds_mm(b_img.shape, b_img.affine)
    inter = np.prod(np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0, None))
    smaller = min(np.prod(a_hi - a_lo), np.prod(b_hi - b_lo))
    if inter < 0.5 * smaller:
        raise InputChoiceError(
            f"{session.name}: the atlas {atlas.name} (world extent {np.round(a_lo)}..."
            f"{np.round(a_hi)} mm) covers {100 * inter / smaller:.0f}% of the field of view of "
            f"{bold.name} ({np.round(b_lo)}...{np.round(b_hi)} mm): they are not in the same "
            "space. Give a label image in the BOLD's space (name it with its space- entity), "
            "or choose BOLD runs in the atlas's space with --bids-filter bold:space=..."
        )


# --------------------------------------------------------------------------------------------
# Inventory: what can run, and where the missing inputs come from
# --------------------------------------------------------------------------------------------

#: For each input: the tools that usually produce it and where BIDS expects it
#: (``{sub}``, ``{ses}``, ``{task}`` and ``{tool}`` are filled per visit).
PRODUCERS: dict[str, tuple[str, str]] = {
    "dwi": ("the scanner export (dcm2niix, HeuDiConv, dcm2bids), with .bval/.bvec",
            "sub-{sub}/ses-{ses}/dwi/sub-{sub}_ses-{ses}_dwi.nii.gz"),
    "t1w": ("the scanner export (dcm2niix, HeuDiConv, dcm2bids)",
            "sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_T1w.nii.gz"),
    "dseg": ("FreeSurfer aseg (fMRIPrep desc-aseg_dseg), SynthSeg, SAMSEG or FSL FAST, with a "
             "dseg.tsv naming the labels",
             "derivatives/{tool}/sub-{sub}/ses-{ses}/anat/"
             "sub-{sub}_ses-{ses}_desc-aseg_dseg.nii.gz"),
    "probseg": ("fMRIPrep or FSL FAST (label-WM/GM/CSF probability maps)",
                "derivatives/{tool}/sub-{sub}/ses-{ses}/anat/"
                "sub-{sub}_ses-{ses}_label-WM_probseg.nii.gz"),
    "lesion_mask": ("a lesion segmentation tool (LST-AI, LST-LPA/LGA in SPM, SAMSEG lesion "
                    "mode) or manual tracing, on the T1w grid",
                    "derivatives/{tool}/sub-{sub}/ses-{ses}/anat/"
                    "sub-{sub}_ses-{ses}_label-lesion_mask.nii.gz"),
    "bold": ("fMRIPrep (--output-spaces MNI152NLin2009cAsym)",
             "derivatives/fmriprep/sub-{sub}/ses-{ses}/func/"
             "sub-{sub}_ses-{ses}_task-{task}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"),
    "confounds": ("fMRIPrep",
                  "derivatives/fmriprep/sub-{sub}/ses-{ses}/func/"
                  "sub-{sub}_ses-{ses}_task-{task}_desc-confounds_timeseries.tsv"),
    "bold_mask": ("fMRIPrep (optional)",
                  "derivatives/fmriprep/sub-{sub}/ses-{ses}/func/"
                  "sub-{sub}_ses-{ses}_task-{task}_space-MNI152NLin2009cAsym_desc-brain_mask"
                  ".nii.gz"),
}
_TOOL_FOR = {"dseg": "freesurfer", "probseg": "fmriprep", "lesion_mask": "lst-ai"}


def _where(name: str, session: Any) -> str:
    sub = session.participant_id.removeprefix("sub-")
    ses = (session.session_id or "").removeprefix("ses-")
    raw_tasks = sorted({parse_entities(p.name).get("task", "") for p in session.files["bold"]})
    task = next((t for t in raw_tasks if t), "<task>")
    path = PRODUCERS[name][1].format(sub=sub, ses=ses, task=task,
                                     tool=_TOOL_FOR.get(name, "<tool>"))
    if not session.session_id:
        path = path.replace(f"ses-{ses}/", "").replace(f"_ses-{ses}", "")
    return f"expected at {path}"


def inventory(
    study: Any,
    *,
    modalities: Sequence[str] = ("dti", "fmri", "volumetry"),
    filters: Mapping[str, Mapping[str, str | None]] | None = None,
    atlas: str = "seitzman2018",
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Any, Any]:
    """Per visit, which analyses can run; per missing input, who makes it and where it goes.

    Returns
    -------
    visits : pandas.DataFrame
        ``participant_id``, ``session_id``, ``months`` and one column per modality: ``"ready"``
        or what blocks it.
    missing : pandas.DataFrame
        ``participant_id``, ``session_id``, ``modality``, ``input``, ``problem``,
        ``produced_by``, ``expected_path`` (BIDS path relative to the dataset root).
    """
    import pandas as pd

    params = params or {}
    rows, missing = [], []
    for session in study:
        row = {"participant_id": session.participant_id, "session_id": session.session_id,
               "months": session.months}
        for modality in modalities:
            try:
                resolve_inputs(session, modality, filters=filters, atlas=atlas,
                               params=params.get(modality, {}))
                row[modality] = "ready"
            except InputError as exc:
                needs = _lacking(session, modality, params.get(modality, {}))
                row[modality] = ("missing " + ", ".join(needs)) if needs else "blocked"
                for name in needs or [None]:
                    producer, path = PRODUCERS.get(name, ("", ""))[0], ""
                    if name is not None:
                        path = _where(name, session).removeprefix("expected at ")
                    missing.append({
                        "participant_id": session.participant_id,
                        "session_id": session.session_id, "modality": modality,
                        "input": name or "", "problem": str(exc) if name is None else "absent",
                        "produced_by": producer, "expected_path": path,
                    })
        rows.append(row)
    columns = ["participant_id", "session_id", "modality", "input", "problem", "produced_by",
               "expected_path"]
    return pd.DataFrame(rows), pd.DataFrame(missing, columns=columns)


def _lacking(session: Any, modality: str, params: Mapping[str, Any]) -> list[str]:
    """Inputs absent at this visit (names of :data:`PRODUCERS`)."""
    has = session.has
    segmentation = has("dseg") or has("probseg")
    need: list[str] = []
    if modality == "dti":
        need += [k for k in ("dwi", "t1w") if not has(k)]
        need += [] if segmentation else ["dseg"]
    elif modality == "fmri":
        need += [] if has("bold_preproc") else ["bold"]
        if params.get("strategy", "simple") is not None and not has("confounds"):
            need.append("confounds")
    elif modality == "volumetry":
        need += [] if has("dseg") else ["dseg"]
        need += [] if has("lesion_mask") else ["lesion_mask"]
    return need
