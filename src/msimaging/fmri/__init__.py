"""Functional connectivity: node time series, connectomes, graph metrics and figures.

- :func:`extract_timeseries` — cleaned node time series from a BOLD run (nilearn maskers:
  coordinate spheres such as Seitzman 2018 / Power 2011 / Dosenbach 2010 shipped inside
  nilearn, label or probabilistic images; fMRIPrep confounds with the "simple", "scrubbing" or
  "compcor" strategy) as a :class:`TimeSeries`;
- :func:`connectivity` — correlation, partial correlation, tangent or covariance matrices
  (Fisher z optional) as :class:`Connectome` objects with ``to_frame()``, ``to_networkx()``,
  ``graph_metrics()``, ``save()`` (BEP017 relmat + node table) and an HTML view in Jupyter;
  :func:`load_connectome` reads one back;
- figures (:mod:`msimaging.fmri.plotting`): :func:`plot_adjacency` (ordered by network),
  :func:`plot_connectogram` (circular, by hemisphere and network), :func:`plot_glass_brain`
  (node size = degree) and :func:`view_connectome_html` (self-contained 3-D view), each able
  to highlight a subnetwork;
- the Network-Based Statistic (:mod:`msimaging.fmri.nbs`): :func:`nbs` (any GLM design and
  contrast, t or F, Freedman-Lane covariates, exchange blocks, extent or intensity, exact
  enumeration when the permutation space is small) and the designs :func:`nbs_paired`,
  :func:`nbs_two_sample`, :func:`nbs_one_sample`, :func:`nbs_repeated_measures` (F across
  visits), :func:`nbs_trend` (within-subject linear trend over months) and
  :func:`nbs_pairwise` (paired, every pair of visits), returning an
  :class:`NBSResult` (components, hubs, network pairs, tables, graph, figures).
"""

from msimaging.fmri.connectome import KINDS, Connectome, connectivity, load_connectome
from msimaging.fmri.nbs import (
    NBSComponent,
    NBSResult,
    nbs,
    nbs_one_sample,
    nbs_paired,
    nbs_pairwise,
    nbs_repeated_measures,
    nbs_trend,
    nbs_two_sample,
)
from msimaging.fmri.plotting import (
    network_colors,
    plot_adjacency,
    plot_connectogram,
    plot_glass_brain,
    view_connectome_html,
)
from msimaging.fmri.timeseries import STRATEGIES, TimeSeries, extract_timeseries

__all__ = [
    "KINDS",
    "STRATEGIES",
    "Connectome",
    "NBSComponent",
    "NBSResult",
    "TimeSeries",
    "connectivity",
    "extract_timeseries",
    "load_connectome",
    "nbs",
    "nbs_one_sample",
    "nbs_paired",
    "nbs_pairwise",
    "nbs_repeated_measures",
    "nbs_trend",
    "nbs_two_sample",
    "network_colors",
    "plot_adjacency",
    "plot_connectogram",
    "plot_glass_brain",
    "view_connectome_html",
]
