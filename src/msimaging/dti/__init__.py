"""Diffusion tensor imaging: tensor fitting, NAWM regions and ROI tables across visits.

- :func:`fit_tensor` — FA/MD/AD/RD, v1, colour FA and a residual QC map (fast vectorised
  OLS/WLS, or dipy's OLS/WLS/NLLS/RESTORE);
- :func:`nawm_rois` — normal-appearing WM whole/left/right (lesions and an optional
  perilesional margin removed, hemispheres split at the midsagittal plane through MNI);
- :func:`roi_stats` — tidy table of map values per region;
- :func:`dti_session` — one visit end to end (fit, T1w->DWI and MNI registration, NAWM,
  table, derivatives);
- tracts (:mod:`msimaging.dti.tracts`): :func:`bundle` tracks an offline tract definition
  (:mod:`msimaging.atlases.tracts`), :func:`tract_metrics` / :func:`tract_profiles` measure
  it (lesion-aware, 100-node profiles), :func:`tracts_from_atlas` uses a user's tract atlas
  instead, :func:`tract_session` runs a visit's tract stage.
"""

from msimaging.dti.rois import ROI, nawm_rois, roi_stats
from msimaging.dti.session import DTISession, TractStage, dti_session, tract_session
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
    "DTISession",
    "TensorFit",
    "TractBundle",
    "TractStage",
    "bundle",
    "clean_bundle",
    "dti_session",
    "fit_tensor",
    "nawm_rois",
    "plot_profiles",
    "plot_tract_overlay",
    "roi_stats",
    "tract_metrics",
    "tract_profiles",
    "tract_session",
    "tracts_from_atlas",
]
