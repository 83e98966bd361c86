"""Figures of lesions: where they are (by location class) and how they evolve across visits.

* :func:`plot_lesions`: axial slices through the lesions of one visit, each lesion coloured by
  its location class over a background image (FLAIR or T1w), with counts in the legend.
* :func:`plot_lesion_evolution`: lesion tracks per patient by evolution category (stacked bars)
  and each track's volume across visits.

Both draw on a :class:`matplotlib.figure.Figure` without pyplot (Agg, headless, workers) and,
with ``path``, save atomically (``.png``/``.svg``/``.pdf``).
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from msimaging.derivatives import save_figure
from msimaging.errors import DependencyError, InputError
from msimaging.io import ImageLike, check_same_grid, load_image, load_mask
from msimaging.volumetry.lesions import CLASSES, _lesions
from msimaging.volumetry.longitudinal import CATEGORIES

__all__ = ["CLASS_COLORS", "plot_lesion_evolution", "plot_lesions"]

#: Colour of each location class (colour-blind-safe Okabe–Ito palette).
CLASS_COLORS: dict[str, str] = {
    "infratentorial": "#0072B2",
    "periventricular": "#E69F00",
    "juxtacortical": "#009E73",
    "deep_wm": "#CC79A7",
    "unknown": "#D55E00",
}
_CATEGORY_COLORS = {
    "new": "#D55E00", "enlarging": "#E69F00", "stable": "#999999", "shrinking": "#56B4E9",
    "disappeared": "#009E73", "transient": "#F0E442", "merged": "#0072B2", "split": "#CC79A7",
}


def _matplotlib():
    try:
        from matplotlib.colors import to_rgba
        from matplotlib.patches import Patch

        # A matplotlib Figure that Jupyter displays (_repr_png_), still built without pyplot.
        from msimaging.display import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency of nilearn
        raise DependencyError(
            "Plotting needs matplotlib: pip install 'msimaging[report]' (or pip install "
            "matplotlib)."
        ) from exc
    return Figure, Patch, to_rgba


def plot_lesions(
    background: ImageLike,
    lesion_mask: ImageLike,
    seg: ImageLike | None = None,
    *,
    labels: Any = None,
    n_slices: int = 8,
    title: str | None = None,
    path: Any = None,
    **lesion_options: Any,
):
    """Axial slices through a visit's lesions, coloured by location class.

    Parameters
    ----------
    background : image
        FLAIR or T1w on the lesion mask's grid.
    lesion_mask : image
        Binary lesion mask.
    seg : image, optional
        Segmentation for the location classes (see :func:`lesion_table`); without it every
        lesion is drawn in one colour.
    labels : str, LabelConvention or mapping, optional
        Label convention of ``seg`` (default: from the dataset's ``dseg.tsv``, else
        detected; see :func:`msimaging.segmentation.resolve_convention`).
    n_slices : int
        Number of axial slices, spread over the slices that hold lesions.
    title : str, optional
    path : str or os.PathLike, optional
        Save the figure there (``.png``, ``.svg``, ``.pdf``).
    **lesion_options
        Passed to :func:`lesion_table` (connectivity, min_size, contact_mm, order, ...).

    Returns
    -------
    msimaging.display.Figure
        A :class:`matplotlib.figure.Figure` that Jupyter shows as an image.
    """
    Figure, Patch, to_rgba = _matplotlib()
    if not isinstance(n_slices, int) or n_slices < 1:
        raise InputError(f"n_slices must be a positive integer, got {n_slices!r}.")
    bg = load_image(background, name="background", ndim=3)
    mask_img = load_mask(lesion_mask, name="lesion_mask", reference=bg,
                         reference_name="background", allow_empty=True,
                         threshold=lesion_options.get("threshold"))
    if seg is not None:
        check_same_grid(bg, seg, names=("background", "seg"))
    table, ids, _ = _lesions(mask_img, seg, labels=labels, **lesion_options)
    # Reorient to RAS: slices then show the patient's right on the image right (neurological).
    bg_ras = nib.as_closest_canonical(bg)
    ids_ras = np.asanyarray(
        nib.as_closest_canonical(nib.Nifti1Image(ids, mask_img.affine)).dataobj
    )
    data = np.asanyarray(bg_ras.dataobj).astype(float)
    class_of = np.array(["none", *table["location"].tolist()], dtype=object)
    z_with = np.flatnonzero(ids_ras.any(axis=(0, 1)))
    if z_with.size == 0:
        z_with = np.array([data.shape[2] // 2])
    picks = np.unique(z_with[np.linspace(0, z_with.size - 1, min(n_slices, z_with.size))
                             .round().astype(int)])
    cols = min(4, picks.size)
    rows = int(np.ceil(picks.size / cols))
    fig = Figure(figsize=(3.0 * cols, 3.2 * rows + 0.9), constrained_layout=True)
    lo, hi = np.percentile(data[data > 0], [1, 99.5]) if (data > 0).any() else (0, 1)
    for k, z in enumerate(picks):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(data[:, :, z].T, origin="lower", cmap="gray", vmin=lo, vmax=hi,
                  interpolation="nearest")
        overlay = np.zeros((*data.shape[:2], 4))
        slice_ids = ids_ras[:, :, z]
        for location in np.unique(class_of[slice_ids[slice_ids > 0]]):
            overlay[class_of[slice_ids] == location] = to_rgba(CLASS_COLORS[location], 0.85)
        overlay[slice_ids == 0] = 0
        ax.imshow(overlay.transpose(1, 0, 2), origin="lower", interpolation="nearest")
        world_z = (bg_ras.affine @ [0, 0, z, 1])[2]
        ax.set_title(f"z = {world_z:.0f} mm", fontsize=9)
        ax.set_axis_off()
    counts = table["location"].value_counts()
    shown = [c for c in (*CLASSES, "unknown") if counts.get(c, 0)]
    handles = [
        Patch(color=CLASS_COLORS[c], label=f"{c.replace('_', ' ')} ({counts[c]})") for c in shown
    ]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles),
                   frameon=False, fontsize=9)
    total_ml = table["volume_mm3"].sum() / 1000.0
    fig.suptitle(title or f"{len(table)} lesions, {total_ml:.2f} mL (axial, neurological view: "
                 "right on the right)", fontsize=10)
    save_figure(fig, path)
    return fig


def plot_lesion_evolution(tracks: pd.DataFrame, *, title: str | None = None, path: Any = None):
    """Lesion tracks by evolution category per patient, and each track's volume over visits.

    Parameters
    ----------
    tracks : pandas.DataFrame
        :func:`match_lesions` rows of one or more patients (``participant_id`` set).
    title : str, optional
    path : str or os.PathLike, optional
        Save the figure there.

    Returns
    -------
    msimaging.display.Figure
        A :class:`matplotlib.figure.Figure` that Jupyter shows as an image.
    """
    Figure, _, _ = _matplotlib()
    if not isinstance(tracks, pd.DataFrame) or "category" not in tracks.columns:
        raise InputError("tracks must be the DataFrame match_lesions() returned.")
    visits = [c.removeprefix("volume_mm3_") for c in tracks.columns
              if c.startswith("volume_mm3_")]
    if not visits:
        raise InputError("tracks has no volume_mm3_<visit> columns; pass match_lesions() output.")
    subject = tracks["participant_id"].fillna("subject") if "participant_id" in tracks else (
        pd.Series(["subject"] * len(tracks)))
    counts = pd.crosstab(subject, tracks["category"]).reindex(
        columns=[c for c in CATEGORIES if c in set(tracks["category"])], fill_value=0
    )
    fig = Figure(figsize=(11, 4.2), constrained_layout=True)
    ax = fig.add_subplot(1, 2, 1)
    left = np.zeros(len(counts))
    for category in counts.columns:
        ax.barh(counts.index.astype(str), counts[category], left=left,
                color=_CATEGORY_COLORS[category], label=category)
        left += counts[category].to_numpy()
    ax.invert_yaxis()
    ax.set_xlabel("lesion tracks")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8,
               frameon=False, title="category", title_fontsize=8)
    ax.set_title("Evolution from first to last visit", fontsize=10)
    ax2 = fig.add_subplot(1, 2, 2)
    volumes = tracks[[f"volume_mm3_{v}" for v in visits]].to_numpy() / 1000.0
    x = np.arange(len(visits))
    for row, category in zip(volumes, tracks["category"], strict=True):
        ax2.plot(x, row, color=_CATEGORY_COLORS[category], alpha=0.8, marker="o", ms=3, lw=1)
    ax2.set_xticks(x, visits)
    ax2.set_ylabel("lesion volume (mL)")
    ax2.set_title("Each track's volume", fontsize=10)
    fig.suptitle(title or f"{len(tracks)} lesion tracks", fontsize=11)
    save_figure(fig, path)
    return fig
