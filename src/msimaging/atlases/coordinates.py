"""Coordinate atlases (sphere centres in MNI mm) read offline from nilearn's package data.

Nothing is downloaded: nilearn ships the Seitzman 2018, Power 2011 and Dosenbach 2010 node
tables inside its wheel (``nilearn/datasets/data``). The files are located without importing
nilearn, read once (cached) and returned as fresh :class:`pandas.DataFrame` copies, so callers
may modify what they get.

Every table has the columns ``node`` (0-based row index, the order of the source file),
``x_mm``, ``y_mm``, ``z_mm`` (MNI coordinates) and ``hemisphere``; the others depend on what
the source provides (see each loader).

Hemisphere rule
---------------
``"L"`` when ``x_mm < -MIDLINE_TOLERANCE_MM``, ``"R"`` when ``x_mm > MIDLINE_TOLERANCE_MM``,
``"M"`` (midline) otherwise, with :data:`MIDLINE_TOLERANCE_MM` = 2 mm: about half a 4–5 mm
sphere radius, so a midline node is one whose sphere straddles both hemispheres about equally.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from msimaging.errors import DependencyError, InputError

__all__ = [
    "MIDLINE_TOLERANCE_MM",
    "hemisphere_of",
    "load_dosenbach_2010",
    "load_power_2011",
    "load_seitzman_2018",
]

#: Half-width (mm) of the band around x = 0 whose nodes are labelled ``"M"`` (midline).
MIDLINE_TOLERANCE_MM = 2.0

_SEITZMAN_ROIS = "seitzman_2018_ROIs_300inVol_MNI_allInfo.txt"
_SEITZMAN_LABELS = "seitzman_2018_ROIs_anatomicalLabels.txt"
_POWER = "power_2011.csv"
_DOSENBACH = "dosenbach_2010.csv"


def hemisphere_of(x_mm, midline_tolerance_mm: float = MIDLINE_TOLERANCE_MM) -> np.ndarray:
    """Hemisphere labels ("L", "R", "M") of MNI x coordinates.

    Parameters
    ----------
    x_mm : array-like of float
        MNI x coordinates in mm (negative = left).
    midline_tolerance_mm : float, default 2.0
        Nodes with ``|x_mm| <= midline_tolerance_mm`` are labelled ``"M"``.

    Returns
    -------
    ndarray of str
        ``"L"``, ``"R"`` or ``"M"`` for each coordinate.
    """
    x = np.asarray(x_mm, dtype=float)
    return np.where(
        x < -midline_tolerance_mm, "L", np.where(x > midline_tolerance_mm, "R", "M")
    ).astype(object)


def _nilearn_data_file(name: str) -> Path:
    # find_spec locates the package without importing it (nilearn's import is slow).
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise DependencyError(
            f"The coordinate atlas file {name!r} ships with nilearn, which is not installed: "
            "install it with `pip install nilearn` (a core dependency of msimaging)."
        )
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.is_file():
        raise InputError(
            f"The coordinate atlas file {name!r} is missing from nilearn's package data "
            f"(looked for {path}): reinstall nilearn (`pip install --force-reinstall nilearn`) "
            "or upgrade it to >= 0.11."
        )
    return path


def _with_hemisphere(frame: pd.DataFrame) -> pd.DataFrame:
    frame["hemisphere"] = hemisphere_of(frame["x_mm"].to_numpy())
    return frame


@functools.lru_cache(maxsize=1)
def _seitzman_2018() -> pd.DataFrame:
    rois = pd.read_csv(_nilearn_data_file(_SEITZMAN_ROIS), sep=r"\s+")
    labels_path = _nilearn_data_file(_SEITZMAN_LABELS)
    with labels_path.open() as handle:
        header = handle.readline().strip()
    # Header "0=cortexMid,1=cortexL,..." then one integer code per ROI.
    try:
        names = {int(k): v for k, v in (item.split("=", 1) for item in header.split(","))}
    except ValueError as exc:
        raise InputError(
            f"The first line of {labels_path} should read '0=cortexMid,1=cortexL,...' but is "
            f"{header!r}: reinstall nilearn."
        ) from exc
    codes = np.loadtxt(labels_path, skiprows=1, dtype=int, ndmin=1)
    if codes.shape[0] != len(rois):
        raise InputError(
            f"{labels_path} has {codes.shape[0]} labels but {_SEITZMAN_ROIS} has {len(rois)} "
            "ROIs: the two files must have one row per ROI; reinstall nilearn."
        )
    frame = pd.DataFrame(
        {
            "node": np.arange(len(rois)),
            "x_mm": rois["x"].to_numpy(float),
            "y_mm": rois["y"].to_numpy(float),
            "z_mm": rois["z"].to_numpy(float),
            "radius_mm": rois["radius(mm)"].to_numpy(float),
            "network": rois["netName"].astype(str).to_numpy(object),
            "structure": pd.Series(codes).map(names).astype(object).to_numpy(),
        }
    )
    frame.attrs.update(atlas="seitzman_2018", space="MNI", reference="Seitzman et al. 2018")
    return _with_hemisphere(frame)


@functools.lru_cache(maxsize=1)
def _power_2011() -> pd.DataFrame:
    rois = pd.read_csv(_nilearn_data_file(_POWER))
    frame = pd.DataFrame(
        {
            "node": np.arange(len(rois)),
            "roi": rois["ROI"].to_numpy(int),
            "x_mm": rois["X"].to_numpy(float),
            "y_mm": rois["Y"].to_numpy(float),
            "z_mm": rois["Z"].to_numpy(float),
            # Power et al. 2011 modelled nodes as 10 mm diameter spheres.
            "radius_mm": np.full(len(rois), 5.0),
        }
    )
    frame.attrs.update(atlas="power_2011", space="MNI", reference="Power et al. 2011")
    return _with_hemisphere(frame)


@functools.lru_cache(maxsize=1)
def _dosenbach_2010() -> pd.DataFrame:
    rois = pd.read_csv(_nilearn_data_file(_DOSENBACH))
    frame = pd.DataFrame(
        {
            "node": np.arange(len(rois)),
            "roi": rois["number"].to_numpy(int),
            "x_mm": rois["x"].to_numpy(float),
            "y_mm": rois["y"].to_numpy(float),
            "z_mm": rois["z"].to_numpy(float),
            # Dosenbach et al. 2010 used 10 mm diameter spheres.
            "radius_mm": np.full(len(rois), 5.0),
            "network": rois["network"].astype(str).to_numpy(object),
            "region": rois["name"].astype(str).to_numpy(object),
        }
    )
    frame.attrs.update(atlas="dosenbach_2010", space="MNI", reference="Dosenbach et al. 2010")
    return _with_hemisphere(frame)


def load_seitzman_2018() -> pd.DataFrame:
    """Seitzman et al. (2018) 300-node coordinate atlas (MNI), read from nilearn's package data.

    Returns
    -------
    pandas.DataFrame
        One row per node (300), in the order of the source file, with columns

        - ``node``: 0–299;
        - ``x_mm``, ``y_mm``, ``z_mm``: MNI sphere centres (mm);
        - ``radius_mm``: the published sphere radius (4 or 5 mm);
        - ``network``: network name (13 networks, e.g. ``"DefaultMode"``, plus
          ``"unassigned"``);
        - ``structure``: decoded anatomical label (``cortexMid``, ``cortexL``, ``cortexR``,
          ``hippocampus``, ``amygdala``, ``basalGanglia``, ``thalamus``, ``cerebellum``);
        - ``hemisphere``: ``"L"``, ``"R"`` or ``"M"`` (see :func:`hemisphere_of`).

    Raises
    ------
    DependencyError
        If nilearn is not installed.
    InputError
        If a packaged file is missing or malformed.

    Notes
    -----
    Read once per process; each call returns an independent copy.
    """
    return _seitzman_2018().copy()


def load_power_2011() -> pd.DataFrame:
    """Power et al. (2011) 264-node coordinate atlas (MNI), read from nilearn's package data.

    Returns
    -------
    pandas.DataFrame
        Columns ``node`` (0–263), ``roi`` (the source's 1-based ROI number), ``x_mm``,
        ``y_mm``, ``z_mm``, ``radius_mm`` (5 mm, the published 10 mm diameter spheres) and
        ``hemisphere``. nilearn's file carries no network labels, so there is no ``network``
        column.

    Raises
    ------
    DependencyError
        If nilearn is not installed.
    InputError
        If the packaged file is missing.
    """
    return _power_2011().copy()


def load_dosenbach_2010() -> pd.DataFrame:
    """Dosenbach et al. (2010) 160-node coordinate atlas (MNI), from nilearn's package data.

    Returns
    -------
    pandas.DataFrame
        Columns ``node`` (0–159), ``roi`` (1-based source number), ``x_mm``, ``y_mm``,
        ``z_mm``, ``radius_mm`` (5 mm), ``network`` (``default``, ``fronto-parietal``,
        ``cingulo-opercular``, ``sensorimotor``, ``occipital``, ``cerebellum``), ``region``
        (e.g. ``"vmPFC"``) and ``hemisphere``.

    Raises
    ------
    DependencyError
        If nilearn is not installed.
    InputError
        If the packaged file is missing.
    """
    return _dosenbach_2010().copy()
