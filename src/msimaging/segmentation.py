"""One segmentation model: which label values are which tissue class, read from the dataset.

Every analysis that needs tissue (volumetry, NAWM for DTI, the pipeline) goes through this
module, so a segmentation from FreeSurfer (``aseg``, ``aparc+aseg``), SynthSeg, SAMSEG,
fMRIPrep (``dseg``, ``desc-aseg_dseg``, ``label-WM_probseg``), FSL FAST or any tool that
writes a BIDS ``dseg.tsv`` is mapped onto the same small set of tissue classes.

Where the convention comes from (:func:`resolve_convention`), first match wins:

1. ``labels=`` given by the caller (or ``--config``): a built-in name, a
   :class:`LabelConvention` or a mapping tissue class -> label values;
2. the BIDS label table of the segmentation (:func:`find_label_table`): ``<stem>.tsv`` next to
   the image, else the nearest applicable ``*_dseg.tsv`` up to the dataset root (BIDS
   inheritance, e.g. fMRIPrep's ``desc-aseg_dseg.tsv``); label names are mapped to tissue
   classes by :func:`tissue_class` (FreeSurfer LUT, SynthSeg, SAMSEG, FSL/fMRIPrep and BIDS
   abbreviations, case/space/hyphen/underscore-insensitive);
3. detection from the label values present (:func:`detect_convention`): an aseg-like set is
   FreeSurfer (SAMSEG when 99 = Lesions is present); a 3-class {1, 2, 3} image is fMRIPrep
   (1 GM, 2 WM, 3 CSF) or FSL FAST (1 CSF, 2 GM, 3 WM), told apart by anatomy (WM is the
   innermost class, CSF the outermost);
4. otherwise an :class:`~msimaging.errors.InputError` listing the values found, the known
   conventions and how to pass ``labels=``.

Nothing here depends on how msimaging's own synthetic study writes data: its ``dseg.tsv``
is read like any other dataset's (its names are in the name table), and the ``"synthetic"``
convention is only used when asked for by name.

Tissue classes
--------------
``cortical_gm``        supratentorial cortex (cerebral cortex only)
``deep_gm``            basal ganglia and thalamus (caudate, putamen, pallidum, accumbens, thalamus)
``other_gm``           other subcortical grey matter (hippocampus, amygdala, ventral DC)
``gm``                 grey matter not split into the above (fMRIPrep, FAST)
``cerebral_wm``        cerebral white matter (incl. corpus callosum)
``wm``                 white matter not split into cerebral / cerebellar (fMRIPrep, FAST)
``brainstem``          brainstem
``cerebellum``         cerebellar cortex and white matter
``lesion``             white-matter lesions labelled in the segmentation itself
``lateral_ventricles`` lateral ventricles (incl. inferior horns and choroid plexus)
``csf``                other CSF (extraventricular, 3rd/4th ventricles)
``other_brain``        other parenchyma (vessels, optic chiasm)

Label value 0, and label values whose table name is background or non-brain head tissue
(``Unknown``, ``Skull``, SAMSEG's ``Soft_Nonbrain_Tissue``, ...), are outside the
intracranial volume. A label value present in an image that the convention does not know is an
error (never silently dropped), so a wrong convention cannot go unnoticed.

References
----------
FreeSurfer colour table (``FreeSurferColorLUT.txt``: aseg values 2-85, 251-255, cortical
parcels 1000-2999, WM parcels 3000-4999, 5001/5002); SynthSeg (Billot et al. 2023, Med Image
Anal) uses the aseg values and names; SAMSEG (Cerri et al. 2021, NeuroImage) adds 99 =
Lesions; fMRIPrep ``dseg``: 1 GM, 2 WM, 3 CSF (sMRIPrep remaps FAST's order);
FSL FAST ``_seg``: 1 CSF, 2 GM, 3 WM; BIDS specification, "Segmentations" (``dseg.tsv``
columns ``index``, ``name``, optional ``abbreviation``, ``color``, ``mapping``) and common
image-derived labels (BG, GM, WM, CSF, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from msimaging.errors import InputError
from msimaging.io import ImageLike, check_input_file, describe, load_image

__all__ = [
    "BACKGROUND",
    "CONVENTIONS",
    "CSF_CLASSES",
    "GM_CLASSES",
    "INFRATENTORIAL_CLASSES",
    "TISSUE_CLASSES",
    "WM_CLASSES",
    "LabelConvention",
    "Segmentation",
    "TissueMask",
    "convention_from_names",
    "convention_from_table",
    "detect_convention",
    "find_label_table",
    "label_convention",
    "load_segmentation",
    "read_label_table",
    "resolve_convention",
    "tissue_class",
    "white_matter",
]

TISSUE_CLASSES: tuple[str, ...] = (
    "cortical_gm",
    "deep_gm",
    "other_gm",
    "gm",
    "cerebral_wm",
    "wm",
    "brainstem",
    "cerebellum",
    "lesion",
    "lateral_ventricles",
    "csf",
    "other_brain",
)
#: Class index of background (outside the intracranial volume) in class images.
BACKGROUND = len(TISSUE_CLASSES)

#: Classes inside the intracranial volume but not brain parenchyma.
CSF_CLASSES = ("lateral_ventricles", "csf")
#: Classes that hold white matter (lesions are removed from them to give NAWM).
WM_CLASSES = ("cerebral_wm", "wm")
#: Classes that hold grey matter.
GM_CLASSES = ("cortical_gm", "deep_gm", "other_gm", "gm")
#: Infratentorial tissue.
INFRATENTORIAL_CLASSES = ("brainstem", "cerebellum")


@dataclass(frozen=True)
class LabelConvention:
    """Label values of each tissue class in one segmentation convention.

    Attributes
    ----------
    name : str
        Built-in name (``"freesurfer"``, ``"fmriprep"`` ...), ``"custom"`` for a mapping, or
        ``"dseg.tsv"`` for a convention read from a label table.
    classes : mapping class -> tuple of int
        Label values per tissue class (see :data:`TISSUE_CLASSES`); classes a convention does
        not have are absent.
    source : str
        Where the convention came from: ``"built-in"``, ``"given"`` (``labels=``),
        ``"dseg.tsv:<path>"`` or ``"detected: <why>"``.
    background : tuple of int
        Label values besides 0 that lie outside the intracranial volume (table names such as
        ``Unknown`` or ``Skull``); they are not counted anywhere.
    unknown : mapping int -> str
        Label-table entries whose names map to no tissue class. Harmless unless the value is
        present in the image, which is then an error naming them.
    """

    name: str
    classes: Mapping[str, tuple[int, ...]]
    source: str = "built-in"
    background: tuple[int, ...] = ()
    unknown: Mapping[int, str] = field(default_factory=dict)

    def has(self, *classes: str) -> bool:
        """True when the convention labels every one of ``classes``."""
        return all(self.classes.get(c) for c in classes)

    def lookup(self, max_label: int) -> np.ndarray:
        """Array mapping each label value 0..max_label to a class index (-1 = unknown,
        :data:`BACKGROUND` = background)."""
        table = np.full(max_label + 1, -1, np.int16)
        table[0] = BACKGROUND
        table[[v for v in self.background if v <= max_label]] = BACKGROUND
        for k, cls in enumerate(TISSUE_CLASSES):
            values = [v for v in self.classes.get(cls, ()) if v <= max_label]
            table[values] = k
        return table

    @property
    def values(self) -> tuple[int, ...]:
        """Every label value the convention maps to a tissue class."""
        return tuple(sorted({v for vals in self.classes.values() for v in vals}))

    def values_of(self, *classes: str) -> tuple[int, ...]:
        """Label values of ``classes`` (e.g. ``values_of(*WM_CLASSES)``)."""
        return tuple(sorted({v for c in classes for v in self.classes.get(c, ())}))

    def summary(self) -> str:
        """One line for messages and sidecars: name, source and the WM label values."""
        wm = ", ".join(str(v) for v in self.values_of(*WM_CLASSES)) or "none"
        return f"convention {self.name!r} ({self.source}; WM labels {wm})"


def _aseg(lesion_values: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {
        "cortical_gm": (3, 42),
        "deep_gm": (9, 10, 11, 12, 13, 26, 48, 49, 50, 51, 52, 58),
        "other_gm": (17, 18, 27, 28, 53, 54, 59, 60, 80, 81, 82),
        "cerebral_wm": (2, 41, 251, 252, 253, 254, 255),
        "brainstem": (16,),
        "cerebellum": (7, 8, 46, 47),
        "lesion": lesion_values,
        "lateral_ventricles": (4, 5, 31, 43, 44, 63),
        "csf": (14, 15, 24, 72),
        "other_brain": (30, 62, 85),
    }


#: Built-in conventions. FreeSurfer's WM-hypointensities (77-79) are its lesion label;
#: ``"synthetic"`` is msimaging's synthetic study, used only when asked for by name.
CONVENTIONS: dict[str, LabelConvention] = {
    "synthetic": LabelConvention(
        "synthetic",
        {
            "csf": (1,),
            "cortical_gm": (2,),
            "cerebral_wm": (3,),
            "deep_gm": (4,),
            "lateral_ventricles": (5,),
            "brainstem": (6,),
            "cerebellum": (7,),
            "lesion": (8,),
        },
    ),
    "freesurfer": LabelConvention("freesurfer", _aseg((25, 57, 77, 78, 79))),
    "synthseg": LabelConvention("synthseg", _aseg(())),
    "samseg": LabelConvention("samseg", _aseg((25, 57, 77, 78, 79, 99))),
    "fmriprep": LabelConvention("fmriprep", {"gm": (1,), "wm": (2,), "csf": (3,)}),
    "fsl_fast": LabelConvention("fsl_fast", {"csf": (1,), "gm": (2,), "wm": (3,)}),
}
CONVENTIONS["aseg"] = CONVENTIONS["freesurfer"]


def _known_conventions() -> str:
    return ", ".join(sorted(CONVENTIONS))


def label_convention(labels: Any, argument: str = "labels") -> LabelConvention:
    """The :class:`LabelConvention` named by ``labels`` (a built-in name, a convention, or a
    mapping ``class -> label values``); its ``source`` is ``"given"``."""
    if isinstance(labels, LabelConvention):
        return labels
    if isinstance(labels, str):
        key = labels.lower().replace("-", "_")
        if key not in CONVENTIONS:
            raise InputError(
                f"{argument}={labels!r} is not a known label convention; supported: "
                f"{_known_conventions()}, or pass a mapping tissue class -> label "
                f"values (classes: {', '.join(TISSUE_CLASSES)})."
            )
        return replace(CONVENTIONS[key], source="given")
    if isinstance(labels, Mapping):
        classes: dict[str, tuple[int, ...]] = {}
        seen: dict[int, str] = {}
        for cls, values in labels.items():
            if cls not in TISSUE_CLASSES:
                raise InputError(
                    f"{argument} has an unknown tissue class {cls!r}; use one of "
                    f"{', '.join(TISSUE_CLASSES)}."
                )
            vals = (values,) if np.isscalar(values) else tuple(values)
            try:
                ints = tuple(int(v) for v in vals)
            except (TypeError, ValueError):
                raise InputError(
                    f"{argument}[{cls!r}] must be label values (integers), got {values!r}."
                ) from None
            if any(v <= 0 or v != float(w) for v, w in zip(ints, vals, strict=True)):
                raise InputError(
                    f"{argument}[{cls!r}] must hold positive integer label values (0 is "
                    f"background), got {values!r}."
                )
            for v in ints:
                if v in seen:
                    raise InputError(
                        f"{argument}: label value {v} is given for both {seen[v]!r} and "
                        f"{cls!r}; each label value belongs to one tissue class."
                    )
                seen[v] = cls
            classes[cls] = ints
        if not classes:
            raise InputError(f"{argument} is an empty mapping; give class -> label values.")
        return LabelConvention("custom", classes, source="given")
    raise InputError(
        f"{argument} must be a convention name ({_known_conventions()}) or a mapping "
        f"tissue class -> label values, not {type(labels).__name__}."
    )


# --------------------------------------------------------------------------------------------
# Names -> tissue classes
# --------------------------------------------------------------------------------------------

# Keys are names lower-cased with every non-alphanumeric character and the hemisphere words
# (left/right/lh/rh) removed, so "Left-Cerebral-White-Matter", "left cerebral white matter"
# (SynthSeg's CSV) and "Right_Cerebral_White_Matter" are one key.
_NAMES: dict[str, tuple[str, ...]] = {
    "background": (
        "background", "unknown", "bg", "clearlabel", "nonbrain", "nb", "skull", "head",
        "softnonbraintissue", "nonbraintissue", "fluidinsideeyes", "headextracerebral",
        "eyes", "eye", "air", "bone", "scalp", "skin",
    ),
    "cortical_gm": (
        "cerebralcortex", "cortex", "corticalgm", "cortical", "corticalgreymatter",
        "corticalgraymatter", "cgm", "ctx", "insula", "operculum", "cerebralgm",
    ),
    "deep_gm": (
        "thalamus", "thalamusproper", "thalamusunused", "caudate", "putamen", "pallidum",
        "globuspallidus", "accumbensarea", "accumbens", "deepgm", "deepgreymatter",
        "deepgraymatter", "basalganglia", "subcorticalgm", "subcorticalgreymatter",
        "subcorticalgraymatter", "scgm", "sgm", "dgm", "th",
    ),
    "other_gm": (
        "hippocampus", "amygdala", "ventraldc", "substancianigra", "substantianigra",
        "nonwmhypointensities", "claustrum",
    ),
    "gm": ("gm", "greymatter", "graymatter", "grey", "gray"),
    "cerebral_wm": (
        "cerebralwhitematter", "cerebralwm", "unsegmentedwhitematter", "ccposterior",
        "ccmidposterior", "cccentral", "ccmidanterior", "ccanterior", "corpuscallosum", "cc",
        "wmcrowns",
    ),
    "wm": ("wm", "whitematter", "white"),
    "brainstem": ("brainstem", "bs", "pons", "medulla", "midbrain"),
    "cerebellum": (
        "cerebellumcortex", "cerebellumwhitematter", "cerebellum", "cerebellargm",
        "cerebellarwm", "cerebellargreymatter", "cerebellargraymatter",
        "cerebellarwhitematter", "cbm", "cbgm", "cbwm", "cerebellarcortex",
    ),
    "lesion": (
        "wmhypointensities", "lesion", "lesions", "wmlesion", "wmlesions", "whitematterlesion",
        "whitematterlesions", "mslesion", "mslesions", "wmh", "whitematterhyperintensities",
        "wmhyperintensities", "t2lesion", "t2lesions", "flairlesion", "l",
    ),
    "lateral_ventricles": (
        "lateralventricle", "lateralventricles", "inflatvent", "inferiorlateralventricle",
        "choroidplexus", "lv", "lventricle",
    ),
    "csf": (
        "csf", "3rdventricle", "4thventricle", "5thventricle", "thirdventricle",
        "fourthventricle", "cerebrospinalfluid", "extracerebralcsf", "extraventricularcsf",
        "ventricularcsf",
    ),
    "other_brain": ("vessel", "opticchiasm", "vs", "vascularstructure", "vessels"),
}
_NAME_TO_CLASS: dict[str, str] = {key: cls for cls, keys in _NAMES.items() for key in keys}
_HEMISPHERE_WORDS = {"left", "right", "lh", "rh"}


def _name_key(name: str) -> tuple[str, list[str]]:
    words = [w for w in re.split(r"[^a-z0-9]+", str(name).lower()) if w]
    kept = [w for w in words if w not in _HEMISPHERE_WORDS]
    return "".join(kept), kept


def tissue_class(name: str) -> str | None:
    """The tissue class of a label name, ``"background"``, or None when the name is unknown.

    Case, spaces, hyphens, underscores and hemisphere words (Left/Right/lh/rh) are ignored.
    Besides the exact names (FreeSurfer LUT, SynthSeg, SAMSEG, BIDS abbreviations, fMRIPrep
    and FAST GM/WM/CSF, the synthetic study's names), FreeSurfer cortical parcels
    (``ctx-lh-*``, ``ctx_rh_*``) are cortex and white-matter parcels (``wm-lh-*``) are
    cerebral WM.
    """
    key, words = _name_key(name)
    if key in _NAME_TO_CLASS:
        return _NAME_TO_CLASS[key]
    if not words:
        return None
    if words[0] == "ctx" and len(words) > 1:  # aparc+aseg cortical parcels
        return "cortical_gm"
    if words[0] == "wm" and len(words) > 1 and "hypointensities" not in key:  # wmparc
        return "cerebral_wm"
    return None


def convention_from_names(
    names: Mapping[int, str],
    *,
    abbreviations: Mapping[int, str] | None = None,
    source: str = "names",
    strict: bool = True,
) -> LabelConvention:
    """A :class:`LabelConvention` from a label table (index -> name).

    Parameters
    ----------
    names : mapping int -> str
        Label value -> name (the ``index`` and ``name`` columns of a ``dseg.tsv``).
    abbreviations : mapping int -> str, optional
        Label value -> abbreviation (BIDS ``abbreviation`` column), used when the name is
        not recognised (e.g. ``GM``, ``WM``, ``CSF``, ``L``).
    source : str
        Recorded as the convention's ``source`` (e.g. ``"dseg.tsv:<path>"``).
    strict : bool
        Raise an InputError listing every name that maps to no tissue class (default).
        With ``strict=False`` they are kept in ``LabelConvention.unknown`` and only become an
        error if an image holding those values is read (:func:`load_segmentation`).

    Returns
    -------
    LabelConvention
        Named ``"dseg.tsv"``.
    """
    classes: dict[str, list[int]] = {}
    background: list[int] = []
    unknown: dict[int, str] = {}
    for index, name in names.items():
        value = int(index)
        cls = tissue_class(name)
        if cls is None and abbreviations and abbreviations.get(index):
            cls = tissue_class(abbreviations[index])
        if value == 0 or cls == "background":
            if value:
                background.append(value)
            continue
        if cls is None:
            unknown[value] = str(name)
            continue
        classes.setdefault(cls, []).append(value)
    if unknown and strict:
        shown = ", ".join(f"{v} = {n!r}" for v, n in list(unknown.items())[:12])
        raise InputError(
            f"label table ({source}) has names msimaging cannot map to a tissue class: "
            f"{shown}{' ...' if len(unknown) > 12 else ''}. Rename them to FreeSurfer LUT or "
            "BIDS names (e.g. 'Left-Cerebral-White-Matter', 'GM', 'WM', 'CSF', 'Lesion'), or "
            f"pass labels= as a mapping tissue class -> label values (classes: "
            f"{', '.join(TISSUE_CLASSES)})."
        )
    return LabelConvention(
        "dseg.tsv",
        {c: tuple(sorted(v)) for c, v in classes.items()},
        source=source,
        background=tuple(sorted(background)),
        unknown=unknown,
    )


# --------------------------------------------------------------------------------------------
# BIDS label tables
# --------------------------------------------------------------------------------------------

_NIFTI = (".nii.gz", ".nii", ".mgz")


def _split_name(filename: str) -> tuple[dict[str, str], str]:
    """BIDS entities and suffix of a file name (extension removed)."""
    stem = filename
    for ext in (*_NIFTI, ".tsv"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    parts = stem.split("_")
    entities = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if sep:
            entities[key] = value
    last = parts[-1]
    return entities, last if "-" not in last else ""


def _dataset_root(folder: Path) -> Path | None:
    for parent in (folder, *folder.parents):
        if (parent / "dataset_description.json").is_file():
            return parent
    return None


def find_label_table(seg_path: str | os.PathLike[str]) -> Path | None:
    """The BIDS label table (``dseg.tsv``) that describes a segmentation image, or None.

    Looks for ``<stem>.tsv`` next to the image (``sub-01_dseg.nii.gz`` ->
    ``sub-01_dseg.tsv``; any name, so ``aseg.nii.gz`` -> ``aseg.tsv``), then applies the
    BIDS inheritance principle: in the image's folder and each parent up to the dataset root
    (the nearest folder holding ``dataset_description.json``), a ``*.tsv`` whose suffix is the
    image's (``dseg``) and whose entities are a subset of the image's applies; the nearest
    folder wins, then the most specific file (most entities). For example fMRIPrep's
    ``desc-aseg_dseg.tsv`` at its derivative root describes every
    ``sub-*_desc-aseg_dseg.nii.gz``, but not the 3-class ``sub-*_dseg.nii.gz``. Outside a
    dataset only the image's own folder is searched.
    """
    path = Path(seg_path)
    name = path.name
    for ext in _NIFTI:
        if name.endswith(ext):
            same = path.with_name(name[: -len(ext)] + ".tsv")
            if same.is_file():
                return same
            if os.path.lexists(same):  # a FIFO, folder or broken link where the table goes
                check_input_file(same, f"label table '{same}' of '{path}'")
            break
    entities, suffix = _split_name(name)
    if not suffix:
        return None
    folder = path.parent
    root = _dataset_root(folder)
    folders = [folder] if root is None else [
        p for p in (folder, *folder.parents) if p == root or root in p.parents
    ]
    for where in folders:
        best: tuple[int, Path] | None = None
        try:
            candidates = sorted(where.glob(f"*{suffix}.tsv"))
        except OSError:
            continue
        for candidate in candidates:
            their, their_suffix = _split_name(candidate.name)
            if their_suffix != suffix or not candidate.is_file():
                continue
            applies = all(entities.get(k) == v for k, v in their.items())
            if applies and (best is None or len(their) > best[0]):
                best = (len(their), candidate)
        if best is not None:
            return best[1]
    return None


def read_label_table(path: str | os.PathLike[str]) -> tuple[dict[int, str], dict[int, str]]:
    """Read a BIDS ``dseg.tsv``: (index -> name, index -> abbreviation).

    Required columns ``index`` (non-negative integers, unique) and ``name`` (non-empty);
    ``abbreviation``, ``color`` and ``mapping`` are optional (abbreviations are returned,
    the others ignored). Raises InputError naming the file and the fault.
    """
    import pandas as pd

    path = check_input_file(path, f"label table '{path}'")  # a FIFO would block read_csv
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(
            f"label table '{path}' cannot be read as a tab-separated table ({exc}); a BIDS "
            "dseg.tsv has a header line 'index<TAB>name' and one row per label."
        ) from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("index", "name") if c not in table.columns]
    if missing:
        raise InputError(
            f"label table '{path}' has no {' or '.join(repr(c) for c in missing)} column "
            f"(columns: {', '.join(map(repr, table.columns))}); BIDS dseg.tsv files need "
            "'index' and 'name' separated by tabs."
        )
    raw = table["index"].str.strip()
    bad = raw[~raw.str.fullmatch(r"\d+")]
    if len(bad):
        raise InputError(
            f"label table '{path}': 'index' must hold non-negative integers; row(s) "
            f"{', '.join(str(i + 2) for i in bad.index[:5])} hold {', '.join(map(repr, bad[:5]))}."
        )
    index = raw.astype(np.int64)
    duplicated = index[index.duplicated()]
    if len(duplicated):
        raise InputError(
            f"label table '{path}' lists index {int(duplicated.iloc[0])} more than once; "
            "each label value needs one row."
        )
    names = table["name"].str.strip()
    empty = names[names == ""]
    if len(empty):
        raise InputError(
            f"label table '{path}': row(s) {', '.join(str(i + 2) for i in empty.index[:5])} "
            "have an empty 'name'; give every label a name."
        )
    out = dict(zip(index.tolist(), names.tolist(), strict=True))
    abbreviations = {}
    if "abbreviation" in table.columns:
        abbreviations = {
            i: a.strip() for i, a in zip(index.tolist(), table["abbreviation"], strict=True)
            if a.strip() and a.strip().lower() != "n/a"
        }
    return out, abbreviations


def convention_from_table(
    path: str | os.PathLike[str], *, strict: bool = False
) -> LabelConvention:
    """:func:`convention_from_names` of a ``dseg.tsv`` (source ``"dseg.tsv:<path>"``)."""
    names, abbreviations = read_label_table(path)
    return convention_from_names(
        names, abbreviations=abbreviations, source=f"dseg.tsv:{path}", strict=strict
    )


# --------------------------------------------------------------------------------------------
# Detection from the values present
# --------------------------------------------------------------------------------------------

_ASEG_VALUES = frozenset(CONVENTIONS["samseg"].values)


def _is_aseg_value(values: np.ndarray) -> np.ndarray:
    # Cortical parcels (aparc+aseg 1000-2999) and WM parcels (wmparc 3000-4999, 5001/5002).
    parcel = ((values >= 1000) & (values < 5000)) | (values == 5001) | (values == 5002)
    return np.isin(values, list(_ASEG_VALUES)) | parcel


def _aseg_with_parcels(base: LabelConvention, values: np.ndarray, why: str) -> LabelConvention:
    classes = {c: tuple(v) for c, v in base.classes.items()}
    cortex = values[(values >= 1000) & (values < 3000)]
    wm = values[((values >= 3000) & (values < 5000)) | (values == 5001) | (values == 5002)]
    if cortex.size:
        classes["cortical_gm"] = (*classes["cortical_gm"], *map(int, cortex))
    if wm.size:
        classes["cerebral_wm"] = (*classes["cerebral_wm"], *map(int, wm))
    return LabelConvention(base.name, classes, source=f"detected: {why}")


def detect_convention(
    data: np.ndarray, *, zooms: Any = None, what: str = "seg"
) -> LabelConvention:
    """Guess the convention of a label image that has no label table, from its values.

    - An aseg-like set (every non-zero value a FreeSurfer aseg/aparc value, with cerebral WM
      2/41 and cortex 3/42 or parcels 1000-2999, at least 4 distinct values) is
      ``"freesurfer"``, or ``"samseg"`` when 99 (Lesions) is present.
    - Exactly the values {1, 2, 3}: fMRIPrep (1 GM, 2 WM, 3 CSF) or FSL FAST (1 CSF, 2 GM,
      3 WM). They are told apart by anatomy, not by file names: each label's median depth
      (distance in mm from the outside of the labelled head, ``distance_transform_edt``) is
      computed; WM must be the innermost class and CSF the outermost. An order matching
      neither convention is an error.
    - Anything else is an InputError listing the values, the known conventions and how to
      pass ``labels=``.

    Parameters
    ----------
    data : ndarray
        3-D integer label array.
    zooms : sequence of 3 float, optional
        Voxel size in mm (for the depth; default 1 mm).
    what : str
        How to name the image in messages.
    """
    values = np.unique(data)
    present = values[values != 0].astype(np.int64)
    shown = ", ".join(str(v) for v in present[:20]) + (" ..." if present.size > 20 else "")
    if present.size >= 4 and _is_aseg_value(present).all():
        has_wm = bool(np.isin([2, 41], present).any())
        has_ctx = bool(np.isin([3, 42], present).any() or ((present >= 1000)
                                                         & (present < 3000)).any())
        if has_wm and has_ctx:
            base = CONVENTIONS["samseg" if 99 in present else "freesurfer"]
            why = "aseg values" + (" with 99 = Lesions" if 99 in present else "")
            return _aseg_with_parcels(base, present, why)
    if present.tolist() == [1, 2, 3]:
        return _three_class(data, zooms, what)
    raise InputError(
        f"{what} has no label table (BIDS dseg.tsv next to it or inherited from the dataset "
        f"root) and its label values ({shown}) match no convention msimaging can detect "
        "(FreeSurfer/SynthSeg/SAMSEG aseg values; a 3-class {1, 2, 3} fMRIPrep or FSL FAST "
        f"image). Known conventions: {_known_conventions()}. Pass labels=<name> or a mapping "
        "tissue class -> label values (e.g. labels={'cerebral_wm': [2, 41], "
        "'cortical_gm': [3, 42]}; in the pipeline config: {\"volumetry\": {\"labels\": ...}, "
        "\"dti\": {\"labels\": ...}}), or write a dseg.tsv (columns index, name) next to it."
    )


def _three_class(data: np.ndarray, zooms: Any, what: str) -> LabelConvention:
    from scipy import ndimage

    sampling = np.ones(3) if zooms is None else np.asarray(zooms, float)[:3]
    # Medians need no full resolution: a 1 mm whole head (16 M voxels) is read every 2nd
    # voxel, which bounds the distance transform's memory (~1 GB at full size).
    step = max(1, int(np.ceil((data.size / 4e6) ** (1 / 3))))
    data = data[::step, ::step, ::step]
    sampling = tuple(sampling * step)
    head = data > 0
    # Depth of each labelled voxel: distance (mm) to the nearest unlabelled voxel; the grid
    # edge counts as outside, so a head touching the border is measured the same way.
    depth = ndimage.distance_transform_edt(np.pad(head, 1), sampling=sampling)[1:-1, 1:-1, 1:-1]
    median = {v: float(np.median(depth[data == v])) for v in (1, 2, 3)}
    order = sorted(median, key=median.get)  # outermost first
    spread = median[order[2]] - median[order[0]]
    described = ", ".join(f"{v}: {median[v]:.1f} mm" for v in (1, 2, 3))
    if order == [3, 1, 2]:
        name = "fmriprep"  # CSF (3) outermost, GM (1), WM (2) innermost
    elif order == [1, 2, 3]:
        name = "fsl_fast"  # CSF (1) outermost, GM (2), WM (3) innermost
    else:
        name = None
    distinct = len({round(m, 6) for m in median.values()}) == 3
    if name is None or not distinct or spread <= 0:
        raise InputError(
            f"{what} holds labels 1, 2, 3 without a label table, and their depths (median "
            f"distance from the outside of the labelled head: {described}) do not identify "
            "fMRIPrep (1 GM, 2 WM, 3 CSF: 2 innermost, 3 outermost) or FSL FAST (1 CSF, 2 GM, "
            "3 WM: 3 innermost, 1 outermost). Pass labels='fmriprep' or labels='fsl_fast' (or "
            "a mapping), or write a dseg.tsv next to the image."
        )
    return replace(
        CONVENTIONS[name], source=f"detected: labels 1-3 by depth ({described})"
    )


# --------------------------------------------------------------------------------------------
# Resolution and the result object
# --------------------------------------------------------------------------------------------


def _path_of(seg: Any) -> Path | None:
    if isinstance(seg, str | os.PathLike):
        return Path(seg)
    if isinstance(seg, nib.spatialimages.SpatialImage):
        filename = seg.get_filename()
        return Path(filename) if filename else None
    return None


def resolve_convention(
    seg: ImageLike, labels: Any = None, *, data: np.ndarray | None = None, name: str = "seg"
) -> LabelConvention:
    """The label convention of ``seg``: ``labels`` > ``dseg.tsv`` > detection > error.

    Parameters
    ----------
    seg : path or nibabel image
        The label image (a loaded image's file name is used to find its table).
    labels : str, LabelConvention or mapping, optional
        Explicit convention (``--config``); wins over everything (source ``"given"``).
    data : ndarray, optional
        The image's label array when already loaded (for detection).
    name : str
        How to name ``seg`` in messages.

    Returns
    -------
    LabelConvention
        With ``source`` ``"given"``, ``"dseg.tsv:<path>"`` or ``"detected: <why>"``.
    """
    if labels is not None:
        convention = label_convention(labels)
        return convention if convention.source != "built-in" else replace(
            convention, source="given"
        )
    path = _path_of(seg)
    table = find_label_table(path) if path is not None else None
    if table is not None:
        return convention_from_table(table)
    img = None
    if data is None:
        img = load_image(seg, name=name, ndim=3)
        data = np.asanyarray(img.dataobj)
    zooms = None
    if isinstance(seg, nib.spatialimages.SpatialImage):
        zooms = seg.header.get_zooms()[:3]
    elif img is not None:
        zooms = img.header.get_zooms()[:3]
    elif path is not None and path.exists():
        zooms = nib.load(path).header.get_zooms()[:3]
    return detect_convention(_integer_labels(data, describe(seg, name)), zooms=zooms,
                             what=describe(seg, name))


def _integer_labels(data: np.ndarray, what: str) -> np.ndarray:
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        raise InputError(
            f"{what} has non-integer values, so it is not a label image. For probability "
            "maps (label-GM/WM/CSF_probseg) pass a mapping {'GM': img, 'WM': img, 'CSF': img} "
            "for volumes, or the WM map as wm_mask for DTI."
        )
    data = data.astype(np.int64)
    if data.size and data.min() < 0:
        raise InputError(f"{what} has negative label values; a label image holds values >= 0.")
    return data


@dataclass(frozen=True)
class Segmentation:
    """A label image mapped onto tissue classes (see :func:`load_segmentation`).

    Attributes
    ----------
    img : nibabel.Nifti1Image
        The label image (its grid is the grid of every mask).
    classes : ndarray of int16
        Class index per voxel: position in :data:`TISSUE_CLASSES`, :data:`BACKGROUND` outside.
    convention : LabelConvention
        The convention used, with its ``source``.
    what : str
        How the input is named in messages (``seg '<path>'``).
    """

    img: nib.Nifti1Image
    classes: np.ndarray
    convention: LabelConvention
    what: str

    def mask(self, *classes: str) -> np.ndarray:
        """Boolean mask of the union of ``classes`` on the segmentation grid."""
        for cls in classes:
            if cls not in TISSUE_CLASSES:
                raise InputError(
                    f"unknown tissue class {cls!r}; use one of {', '.join(TISSUE_CLASSES)}."
                )
        index = [TISSUE_CLASSES.index(c) for c in classes]
        return np.isin(self.classes, index)

    def mask_image(self, *classes: str) -> nib.Nifti1Image:
        """:meth:`mask` as a uint8 0/1 image on the segmentation grid."""
        return nib.Nifti1Image(self.mask(*classes).astype(np.uint8), self.img.affine)

    @property
    def wm(self) -> np.ndarray:
        """White matter: cerebral WM and unsplit WM (lesions labelled in the segmentation
        are not WM here; add :attr:`lesion` for WM including lesions)."""
        return self.mask(*WM_CLASSES)

    @property
    def cortex(self) -> np.ndarray:
        """Cerebral cortex (``cortical_gm``); empty for GM/WM/CSF-only conventions."""
        return self.mask("cortical_gm")

    @property
    def gm(self) -> np.ndarray:
        """All grey matter."""
        return self.mask(*GM_CLASSES)

    @property
    def lateral_ventricles(self) -> np.ndarray:
        return self.mask("lateral_ventricles")

    @property
    def csf(self) -> np.ndarray:
        """All CSF, ventricles included."""
        return self.mask(*CSF_CLASSES)

    @property
    def lesion(self) -> np.ndarray:
        """Lesions labelled in the segmentation itself (FreeSurfer 77-79, SAMSEG 99 ...)."""
        return self.mask("lesion")

    @property
    def brain(self) -> np.ndarray:
        """Parenchyma: everything inside the ICV but CSF."""
        return (self.classes != BACKGROUND) & ~self.csf

    def n_voxels(self) -> dict[str, int]:
        """Voxel count per tissue class (every class, 0 when absent)."""
        counts = np.bincount(self.classes.ravel(), minlength=BACKGROUND + 1)
        return {c: int(counts[k]) for k, c in enumerate(TISSUE_CLASSES)}

    def describe(self, *classes: str) -> str:
        """``<what> (convention ..., labels ...)`` for messages and sidecars."""
        classes = classes or WM_CLASSES
        values = ", ".join(str(v) for v in self.convention.values_of(*classes)) or "none"
        return (
            f"{self.what} (convention {self.convention.name!r} from {self.convention.source}; "
            f"{'/'.join(classes)} labels {values})"
        )


#: Largest label value mapped through a dense lookup table; above it (a corrupt voxel such as
#: 2**40) labels are mapped through their distinct values, never an array over max(label).
_DENSE_LOOKUP_MAX = 1 << 20


def _classes_of(data: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """Class index per voxel (-1 = unknown label); memory bounded whatever the label values."""
    known_max = max(max(convention.values, default=0), max(convention.background, default=0))
    max_label = int(data.max()) if data.size else 0
    if max_label <= max(_DENSE_LOOKUP_MAX, known_max):
        return convention.lookup(max(max_label, known_max))[data]
    values, inverse = np.unique(data, return_inverse=True)
    table = convention.lookup(known_max)
    in_table = values <= known_max
    mapped = np.full(values.shape, -1, np.int16)
    mapped[in_table] = table[values[in_table]]
    return mapped[inverse].reshape(data.shape)


def load_segmentation(seg: ImageLike, labels: Any = None, *, name: str = "seg") -> Segmentation:
    """Load a label image and map it onto tissue classes.

    The convention is resolved by :func:`resolve_convention` (``labels`` > ``dseg.tsv`` >
    detection > error).

    Raises
    ------
    InputError
        Non-integer or negative values; label values the convention does not know (listing
        them, with their table names when known, and the conventions known).
    """
    what = describe(seg, name)
    img = load_image(seg, name=name, ndim=3)
    data = _integer_labels(np.asanyarray(img.dataobj), what)
    convention = resolve_convention(seg, labels, data=data, name=name)
    classes = _classes_of(data, convention)
    if (classes < 0).any():
        unknown = np.unique(data[classes < 0])
        shown = ", ".join(
            f"{v}" + (f" ({convention.unknown[int(v)]!r})" if int(v) in convention.unknown
                      else "")
            for v in unknown[:10]
        )
        raise InputError(
            f"{what} contains label values the {convention.name!r} convention "
            f"({convention.source}) does not know: {shown}{' ...' if unknown.size > 10 else ''}."
            f" Check that labels= names the segmentation's convention (supported: "
            f"{_known_conventions()}), pass a mapping tissue class -> label values, or name "
            "them in the dseg.tsv with FreeSurfer/BIDS names."
        )
    return Segmentation(nib.Nifti1Image(data.astype(np.int32), img.affine),
                        classes.astype(np.int16), convention, what)


# --------------------------------------------------------------------------------------------
# White matter from a mask, a probability map or a segmentation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TissueMask:
    """A binary tissue mask and where it came from (see :func:`white_matter`).

    Attributes
    ----------
    img : nibabel.Nifti1Image
        uint8 0/1 mask on the input's grid.
    n_voxels : int
    source : str
        What the mask was made from, for messages and sidecars: e.g. ``seg '<path>'
        (convention 'freesurfer' from dseg.tsv:...; cerebral_wm/wm labels 2, 41, ...)`` or
        ``wm_mask '<path>' (probability map > 0.5)``.
    convention : LabelConvention or None
        The label convention when the mask came from a segmentation.
    """

    img: nib.Nifti1Image
    n_voxels: int
    source: str
    convention: LabelConvention | None = None


def _is_probseg(seg: Any, data: np.ndarray) -> bool:
    path = _path_of(seg)
    if path is not None and _split_name(path.name)[1] == "probseg":
        return True
    return data.dtype.kind == "f" and not np.array_equal(data, np.round(data))


def white_matter(
    image: ImageLike,
    labels: Any = None,
    *,
    threshold: float | None = None,
    name: str = "wm_mask",
) -> TissueMask:
    """White-matter mask from a binary mask, a probability map or a segmentation.

    - A probability map (BIDS ``label-WM_probseg`` from fMRIPrep/FAST, or any image with
      non-integer values in [0, 1]) is thresholded: voxels with probability > ``threshold``
      (default 0.5, i.e. more likely WM than not) are WM.
    - A 0/1 image is the mask itself.
    - Any other integer image is a segmentation: WM = the ``cerebral_wm`` and ``wm`` classes
      of its convention (:func:`load_segmentation`: ``labels`` > ``dseg.tsv`` > detection).
      Lesions labelled in the segmentation are not WM (so NAWM excludes them).

    Parameters
    ----------
    image : path or nibabel image
    labels : str, LabelConvention or mapping, optional
        Convention of a segmentation (ignored for masks and probability maps).
    threshold : float, optional
        Probability threshold (default 0.5 for probability maps; not used otherwise).
    name : str
        How to name the input in messages.
    """
    what = describe(image, name)
    img = load_image(image, name=name, ndim=3)
    data = np.asanyarray(img.dataobj)
    if threshold is not None and not (np.isfinite(threshold) and 0 <= threshold < 1):
        raise InputError(f"threshold for {what} must be in [0, 1), got {threshold!r}.")
    if _is_probseg(image, data) or threshold is not None:
        if data.size and (data.min() < -1e-6 or data.max() > 1 + 1e-6):
            raise InputError(
                f"{what} is read as a probability map but has values outside [0, 1] "
                f"({data.min():.3g} to {data.max():.3g}); give a probseg, a 0/1 mask or a "
                "label image."
            )
        cut = 0.5 if threshold is None else float(threshold)
        mask = np.asarray(data > cut)
        return TissueMask(nib.Nifti1Image(mask.astype(np.uint8), img.affine),
                          int(mask.sum()), f"{what} (probability map > {cut:g})")
    values = np.unique(data)
    if np.isin(values, (0, 1)).all():
        mask = data.astype(bool)
        return TissueMask(nib.Nifti1Image(mask.astype(np.uint8), img.affine),
                          int(mask.sum()), f"{what} (binary mask)")
    seg = load_segmentation(image, labels, name=name)
    mask = seg.wm
    return TissueMask(seg.mask_image(*WM_CLASSES), int(mask.sum()), seg.describe(),
                      seg.convention)
