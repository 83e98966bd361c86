"""Segmentation label conventions: which label values are which tissue class.

Volumetry is segmentation-agnostic: a label image from FreeSurfer (``aseg``), SynthSeg,
SAMSEG, fMRIPrep (``dseg``), FSL FAST or the synthetic study is mapped onto a small set of
tissue classes, and every measure is computed from those classes. A custom convention is a
mapping ``class -> label values``.

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

Label values of 0 are background. A label value found in an image but absent from the
convention is an error (never silently dropped), so a wrong convention cannot go unnoticed.

References
----------
FreeSurfer colour table (``FreeSurferColorLUT.txt``, aseg values 2–85, 251–255); SynthSeg
(Billot et al. 2023, Med Image Anal) uses the aseg values; SAMSEG (Cerri et al. 2021,
NeuroImage) adds 99 = lesions; fMRIPrep ``dseg``: 1 GM, 2 WM, 3 CSF; FSL FAST ``_seg``:
1 CSF, 2 GM, 3 WM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from msimaging.errors import InputError

__all__ = ["CONVENTIONS", "TISSUE_CLASSES", "LabelConvention", "label_convention"]

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
    classes : mapping class -> tuple of int
        Label values per tissue class (see :data:`TISSUE_CLASSES`); classes a convention does
        not have are absent.
    """

    name: str
    classes: Mapping[str, tuple[int, ...]]

    def has(self, *classes: str) -> bool:
        """True when the convention labels every one of ``classes``."""
        return all(self.classes.get(c) for c in classes)

    def lookup(self, max_label: int) -> np.ndarray:
        """Array mapping each label value 0..max_label to a class index (-1 = unknown,
        len(TISSUE_CLASSES) = background)."""
        table = np.full(max_label + 1, -1, np.int16)
        table[0] = len(TISSUE_CLASSES)
        for k, cls in enumerate(TISSUE_CLASSES):
            values = [v for v in self.classes.get(cls, ()) if v <= max_label]
            table[values] = k
        return table

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(sorted({v for vals in self.classes.values() for v in vals}))


def _aseg(lesion_values: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {
        "cortical_gm": (3, 42),
        "deep_gm": (10, 11, 12, 13, 26, 49, 50, 51, 52, 58),
        "other_gm": (17, 18, 28, 53, 54, 60, 80, 81, 82),
        "cerebral_wm": (2, 41, 251, 252, 253, 254, 255),
        "brainstem": (16,),
        "cerebellum": (7, 8, 46, 47),
        "lesion": lesion_values,
        "lateral_ventricles": (4, 5, 31, 43, 44, 63),
        "csf": (14, 15, 24, 72),
        "other_brain": (30, 62, 85),
    }


#: Built-in conventions. FreeSurfer's WM-hypointensities (77–79) are its lesion label.
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
    "freesurfer": LabelConvention("freesurfer", _aseg((77, 78, 79))),
    "synthseg": LabelConvention("synthseg", _aseg(())),
    "samseg": LabelConvention("samseg", _aseg((77, 78, 79, 99))),
    "fmriprep": LabelConvention("fmriprep", {"gm": (1,), "wm": (2,), "csf": (3,)}),
    "fsl_fast": LabelConvention("fsl_fast", {"csf": (1,), "gm": (2,), "wm": (3,)}),
}
CONVENTIONS["aseg"] = CONVENTIONS["freesurfer"]


def label_convention(labels: Any, argument: str = "labels") -> LabelConvention:
    """The :class:`LabelConvention` named by ``labels`` (a built-in name, a convention, or a
    mapping ``class -> label values``)."""
    if isinstance(labels, LabelConvention):
        return labels
    if isinstance(labels, str):
        key = labels.lower().replace("-", "_")
        if key not in CONVENTIONS:
            raise InputError(
                f"{argument}={labels!r} is not a known label convention; supported: "
                f"{', '.join(sorted(CONVENTIONS))}, or pass a mapping tissue class -> label "
                f"values (classes: {', '.join(TISSUE_CLASSES)})."
            )
        return CONVENTIONS[key]
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
        return LabelConvention("custom", classes)
    raise InputError(
        f"{argument} must be a convention name ({', '.join(sorted(CONVENTIONS))}) or a mapping "
        f"tissue class -> label values, not {type(labels).__name__}."
    )
