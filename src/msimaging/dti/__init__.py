"""Diffusion tensor imaging: tensor fitting, NAWM regions and ROI tables across visits.

- :func:`fit_tensor` — FA/MD/AD/RD, v1, colour FA and a residual QC map (fast vectorised
  OLS/WLS, or dipy's OLS/WLS/NLLS/RESTORE);
- :func:`nawm_rois` — normal-appearing WM whole/left/right (lesions and an optional
  perilesional margin removed, hemispheres split at the midsagittal plane through MNI);
- :func:`roi_stats` — tidy table of map values per region;
- :func:`dti_session` — one visit end to end (fit, T1w->DWI and MNI registration, NAWM,
  table, derivatives).
"""

from msimaging.dti.rois import ROI, nawm_rois, roi_stats
from msimaging.dti.session import DTISession, dti_session
from msimaging.dti.tensor import METHODS, TensorFit, fit_tensor

__all__ = [
    "METHODS",
    "ROI",
    "DTISession",
    "TensorFit",
    "dti_session",
    "fit_tensor",
    "nawm_rois",
    "roi_stats",
]
