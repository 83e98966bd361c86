"""msimaging.volumetry — tissue volumes and T2 lesions from any segmentation, offline.

- :func:`tissue_volumes`: hard (label image) or soft (probability maps) volumes in mL and as a
  fraction of ICV, for FreeSurfer/SynthSeg/SAMSEG, fMRIPrep, FSL FAST or any segmentation with
  a BIDS ``dseg.tsv``; the label convention comes from the dataset unless ``labels=`` is given
  (:mod:`msimaging.segmentation`); :func:`volume_change` from baseline.
- :func:`label_lesions`, :func:`lesion_table`, :func:`classify_lesions`: lesions as connected
  components, one row per lesion, location classes and lesion load per class.
- :func:`match_lesions`: lesion tracks across visits (new, disappeared, enlarging, ...).
- :func:`plot_lesions`, :func:`plot_lesion_evolution`: lesions by class on slices; tracks.
- :func:`volumetry_session`: all of one visit, written as derivatives.
- :func:`fill_lesions`: seeded ring-sampling lesion filling of a T1 image.
"""

from msimaging.volumetry.filling import fill_lesions
from msimaging.volumetry.labels import CONVENTIONS, TISSUE_CLASSES, LabelConvention
from msimaging.volumetry.lesions import (
    CLASSES,
    MIN_SIZE_PRESETS,
    classify_lesions,
    label_lesions,
    lesion_load,
    lesion_table,
)
from msimaging.volumetry.longitudinal import CATEGORIES, CHANGE_PRESETS, match_lesions
from msimaging.volumetry.plotting import CLASS_COLORS, plot_lesion_evolution, plot_lesions
from msimaging.volumetry.session import VolumetrySession, volumetry_session
from msimaging.volumetry.tissue import REGIONS, tissue_volumes, volume_change

__all__ = [
    "CATEGORIES",
    "CHANGE_PRESETS",
    "CLASSES",
    "CLASS_COLORS",
    "CONVENTIONS",
    "MIN_SIZE_PRESETS",
    "REGIONS",
    "TISSUE_CLASSES",
    "LabelConvention",
    "VolumetrySession",
    "classify_lesions",
    "fill_lesions",
    "label_lesions",
    "lesion_load",
    "lesion_table",
    "match_lesions",
    "plot_lesion_evolution",
    "plot_lesions",
    "tissue_volumes",
    "volume_change",
    "volumetry_session",
]
