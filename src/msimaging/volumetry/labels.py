"""Segmentation label conventions (moved to :mod:`msimaging.segmentation`).

The label model is shared by volumetry, DTI and the pipeline, so it lives in the shared core;
this module re-exports the old names so existing imports keep working.
"""

from __future__ import annotations

from msimaging.segmentation import (
    BACKGROUND,
    CONVENTIONS,
    CSF_CLASSES,
    GM_CLASSES,
    INFRATENTORIAL_CLASSES,
    TISSUE_CLASSES,
    WM_CLASSES,
    LabelConvention,
    label_convention,
)

__all__ = [
    "BACKGROUND",
    "CONVENTIONS",
    "CSF_CLASSES",
    "GM_CLASSES",
    "INFRATENTORIAL_CLASSES",
    "TISSUE_CLASSES",
    "WM_CLASSES",
    "LabelConvention",
    "label_convention",
]
