"""Diffusion tensor imaging: tensor fitting, NAWM regions and ROI tables across visits.

- :func:`fit_tensor` — FA/MD/AD/RD, v1, colour FA and a residual QC map (fast vectorised
  OLS/WLS, or dipy's OLS/WLS/NLLS/RESTORE);
- :func:`nawm_rois` — normal-appearing WM whole/left/right (lesions and an optional
  perilesional margin removed, hemispheres split at the midsagittal plane through MNI);
- :func:`roi_stats` — tidy table of map values per region;
- orientations (:mod:`msimaging.dti.orientations`): :func:`fit_csd` (dipy CSD),
  :class:`Peaks` from CSD or tensor fits, :func:`load_peaks` / :func:`save_peaks` for MRtrix
  ``sh2peaks`` images; all of them track like a tensor fit;
- :func:`dti_session` — one visit end to end (fit, T1w->DWI and MNI registration, NAWM,
  table, derivatives);
- tracts (:mod:`msimaging.dti.tracts`): :func:`bundle` tracks an offline tract definition
  (:mod:`msimaging.atlases.tracts`), :func:`tract_metrics` / :func:`tract_profiles` measure
  it (lesion-aware, 100-node profiles), :func:`tracts_from_atlas` uses a user's tract atlas
  instead, :func:`tract_session` runs a visit's tract stage.
"""

from msimaging.dti.orientations import (
    CSDFit,
    Peaks,
    fit_csd,
    load_peaks,
    peaks_from_csd,
    peaks_from_tensor,
    save_peaks,
)
from msimaging.dti.rois import ROI, nawm_rois, roi_stats
from msimaging.dti.session import (
    TRACT_MODEL_LABELS,
    DTISession,
    TractStage,
    dti_session,
    tract_desc,
    tract_session,
)
from msimaging.dti.tensor import METHODS, TensorFit, fit_tensor
from msimaging.dti.tracts import (
    TractBundle,
    bundle,
    clean_bundle,
    plot_profiles,
    plot_tract_overlay,
    tract_metrics,
    tract_profiles,
    tracts_from_atlas,
)

__all__ = [
    "METHODS",
    "ROI",
    "TRACT_MODEL_LABELS",
    "CSDFit",
    "DTISession",
    "Peaks",
    "TensorFit",
    "TractBundle",
    "TractStage",
    "bundle",
    "clean_bundle",
    "dti_session",
    "fit_csd",
    "fit_tensor",
    "load_peaks",
    "nawm_rois",
    "peaks_from_csd",
    "peaks_from_tensor",
    "plot_profiles",
    "plot_tract_overlay",
    "roi_stats",
    "save_peaks",
    "tract_desc",
    "tract_metrics",
    "tract_profiles",
    "tract_session",
    "tracts_from_atlas",
]
