"""Options of a run, checked before any work: config sections, keys and values, the atlas.

Everything here reads only the options (and, for a label-image atlas, its header): it runs in
well under a second, before the dataset is scanned, any task runs or any Dask cluster starts,
so that a typo costs a second instead of an hour of DTI work.

The known keys of each section come from the code that uses them, never from a second list:
the participant sections from :data:`msimaging.pipeline.tasks.DEFAULTS` (every parameter a
task accepts has a default there), the ``group`` section from the keyword arguments of
:func:`msimaging.pipeline.run_group`. The allowed values come from the library's own
constants (:data:`msimaging.fmri.STRATEGIES`, :data:`msimaging.fmri.KINDS`,
:data:`msimaging.dti.METHODS`, the NBS tails, the group-level NBS designs
:data:`msimaging.pipeline.group.NBS_DESIGNS`, the coordinate atlases).
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from msimaging.errors import InputError
from msimaging.pipeline.tasks import DEFAULTS, MODALITIES

__all__ = [
    "ATLAS_SPACE_PREFIX",
    "SECTIONS",
    "ConfigError",
    "atlas_space",
    "check_atlas",
    "check_config",
    "coordinate_atlases",
    "known_parameters",
]

#: Sections of a ``--config`` file: one per modality, ``group``, and ``inputs`` (filters).
SECTIONS: tuple[str, ...] = (*MODALITIES, "group", "inputs")

#: Coordinate atlases are given in MNI152 space; BOLD runs must be in a ``space-MNI152*``.
ATLAS_SPACE_PREFIX = "MNI152"

# run_group keywords that are not study parameters.
# tract_model: the group level follows [dti] tract_model (from the provenance records), not a
# group key of its own.
_GROUP_NOT_CONFIG = frozenset({"progress", "tract_model"})


class ConfigError(InputError):
    """A command-line option or ``--config`` entry is invalid (command line: exit 64)."""


def coordinate_atlases() -> tuple[str, ...]:
    """Names of the built-in coordinate atlases, as :func:`extract_timeseries` accepts them."""
    from msimaging.fmri.timeseries import COORDINATE_ATLASES

    return tuple(sorted(COORDINATE_ATLASES))


def _atlas_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())  # the normalisation extract_timeseries uses


def check_atlas(atlas: Any, where: str = "--atlas") -> str:
    """A known coordinate atlas name (returned in canonical form) or an existing label image
    (returned as an absolute path, its header read to check it is a 3-D or 4-D image).

    Raises
    ------
    ConfigError
        Naming the known atlases when ``atlas`` is neither.
    """
    known = coordinate_atlases()
    if not isinstance(atlas, str) or not atlas.strip():
        raise ConfigError(f"{where} must be an atlas name ({', '.join(known)}) or the path "
                          f"of a label image, got {atlas!r}.")
    if _atlas_key(atlas) in known:
        return _atlas_key(atlas)
    path = Path(atlas).expanduser()
    if path.is_file():
        import nibabel as nib

        try:
            img = nib.load(path)
        except Exception as exc:  # nibabel raises several types for unreadable files
            raise ConfigError(f"{where} {atlas!r} is a file but not an image nibabel can read "
                              f"({exc}); give a NIfTI label image.") from exc
        if len(img.shape) not in (3, 4):
            raise ConfigError(f"{where} {atlas!r} has shape {img.shape}: a label image is "
                              "3-D (one integer label per region) or 4-D (one map per region).")
        return str(path.resolve())
    close = difflib.get_close_matches(_atlas_key(atlas), known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"{where} {atlas!r} is neither a known atlas ({', '.join(known)}) nor an existing label "
        f"image file.{hint} Give one of these names or the path of a NIfTI label image."
    )


def atlas_space(atlas: str) -> str | None:
    """The space an atlas (as returned by :func:`check_atlas`) lives in: ``"MNI152"`` for the
    coordinate atlases, the ``space-`` entity of a label image's name, or None (unknown:
    then its grid is compared with each BOLD run's)."""
    if atlas in coordinate_atlases():
        return ATLAS_SPACE_PREFIX
    # Atlas files are not subject files: TemplateFlow names them tpl-<space>_atlas-<a>_dseg.
    parts = Path(atlas).name.split(".")[0].split("_")
    entities = dict(p.split("-", 1) for p in parts if "-" in p)
    return entities.get("space") or entities.get("tpl")


def _group_defaults() -> dict[str, Any]:
    from msimaging.pipeline.group import run_group

    return {
        name: p.default
        for name, p in inspect.signature(run_group).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in _GROUP_NOT_CONFIG
    }


def known_parameters() -> dict[str, dict[str, Any]]:
    """Parameters each config section accepts, with their defaults (``inputs`` excluded)."""
    return {**{m: dict(DEFAULTS[m]) for m in MODALITIES}, "group": _group_defaults()}


def _choices() -> dict[tuple[str, str], tuple[Any, ...]]:
    """Allowed values, asked from the library rather than copied."""
    from msimaging.dti.session import TRACT_MODELS
    from msimaging.dti.tensor import METHODS
    from msimaging.fmri.connectome import KINDS
    from msimaging.fmri.nbs import METHODS as NBS_METHODS
    from msimaging.fmri.nbs import TAILS
    from msimaging.fmri.timeseries import STRATEGIES
    from msimaging.pipeline.group import NBS_DESIGNS

    return {
        ("dti", "method"): tuple(METHODS),
        ("dti", "figures"): ("first", "all", "none", True, False),
        ("dti", "tract_model"): tuple(TRACT_MODELS),
        ("dti", "mni_reference"): ("subject", "visit"),
        ("fmri", "strategy"): tuple(STRATEGIES),
        ("fmri", "kind"): tuple(KINDS),
        ("group", "nbs_tail"): tuple(TAILS),
        ("group", "nbs_design"): tuple(NBS_DESIGNS),
        ("group", "nbs_method"): tuple(NBS_METHODS),
    }


def _probability(value: Any) -> str | None:
    if not 0 < value < 1:
        return "must be a probability strictly between 0 and 1"
    return None


def _positive(value: Any) -> str | None:
    return None if value >= 1 else "must be at least 1"


#: Extra checks of one value: return a message when the value is wrong, else None.
VALUE_CHECKS: dict[tuple[str, str], Callable[[Any], str | None]] = {
    ("group", "nbs_threshold_p"): _probability,
    ("group", "n_permutations"): _positive,
}


def _type_problem(value: Any, default: Any) -> str | None:
    """Type rule from the default: booleans stay booleans, numbers stay numbers."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "must be an integer"
    if isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok and math.isfinite(value) else "must be a finite number"
    return None


def _show(values: tuple[Any, ...]) -> str:
    return ", ".join("null" if v is None else repr(v) for v in values)


def check_config(config: Mapping[str, Any], where: str = "--config") -> dict[str, Any]:
    """Check every section, key and value of a run's configuration before any work.

    Parameters
    ----------
    config : mapping
        ``{section: {key: value}}`` with sections from :data:`SECTIONS`.
    where : str
        How to name the source in messages (e.g. ``"--config study.toml"``).

    Returns
    -------
    dict
        The same configuration, with the atlas in canonical form and ``inputs`` normalised.

    Raises
    ------
    ConfigError
        An unknown section or key (the message names it and lists the known keys of that
        section), a value of the wrong type or outside the library's choices.
    """
    from msimaging.pipeline.inputs import check_filters

    if not isinstance(config, Mapping):
        raise ConfigError(f"{where} must hold a mapping section -> parameters, "
                          f"got {type(config).__name__}.")
    unknown = [s for s in config if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(map(repr, unknown))}; the "
                          f"sections are {', '.join(SECTIONS)}.")
    known = known_parameters()
    choices = _choices()
    out: dict[str, Any] = {}
    for section, values in config.items():
        if section == "inputs":
            out["inputs"] = check_filters(values, f"{where} [inputs]")
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: section {section!r} must be a table of key = value, "
                              f"got {values!r}.")
        accepted = known[section]
        for key in values:
            if key not in accepted:
                close = difflib.get_close_matches(str(key), list(accepted), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"{where}: unknown key {key!r} in section [{section}]{hint}; the known "
                    f"keys of [{section}] are {', '.join(accepted)}."
                )
        checked = dict(values)
        for key, value in values.items():
            name = f"{where}: {section}.{key} = {value!r}"
            allowed = choices.get((section, key))
            if allowed is not None:
                norm = value.lower() if isinstance(value, str) else value
                if norm == "none" and None in allowed:
                    norm = None
                if norm not in allowed:
                    raise ConfigError(f"{name} is not one of {_show(allowed)}.")
                checked[key] = norm
                continue
            if section == "fmri" and key == "atlas":
                checked[key] = check_atlas(value, f"{where}: fmri.atlas")
                continue
            problem = _type_problem(value, accepted[key])
            if problem is None and (section, key) in VALUE_CHECKS:
                problem = VALUE_CHECKS[(section, key)](value)
            if problem:
                raise ConfigError(f"{name} {problem} (default: {accepted[key]!r}).")
        out[section] = checked
    return out
