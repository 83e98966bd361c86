"""Network-Based Statistic (Zalesky, Fornito & Bullmore 2010) on stacks of connectivity matrices.

:func:`nbs` fits a general linear model at every edge of a stack of connectivity matrices,
thresholds the edge statistics, finds the connected components of the supra-threshold edges
and gives each component a family-wise error (FWER) corrected p-value from the permutation
distribution of the largest component. :func:`nbs_paired`, :func:`nbs_two_sample`,
:func:`nbs_one_sample` and :func:`nbs_repeated_measures` build the usual designs.

Conventions
-----------
* **Statistic.** A contrast vector gives a t statistic, a contrast matrix with several rows
  an F statistic (both the ordinary least-squares GLM statistics; the two-sample t is the
  pooled-variance t and the paired t the one-sample t of the differences, as in MATLAB NBS
  and bctpy's ``nbs_bct``).
* **Threshold.** An edge is supra-threshold when its statistic is *strictly* above the
  threshold (``t > threshold``; ``-t > threshold`` for the negative direction), as in bctpy.
  The threshold is a statistic value (``threshold=3.1``) or an uncorrected one-sided p-value
  per edge (``threshold_p=0.001``, the default) converted with the model's degrees of
  freedom. A t threshold of 3.1 is p = 0.001 only for large samples: at 4 degrees of freedom
  it is p = 0.018, and on null data (264 nodes, paired n = 5) hundreds of edges pass and
  form one giant component; such thresholds raise an :class:`~msimaging.errors.MSImagingWarning`
  giving the uncorrected p they correspond to.
* **Component size.** ``size="extent"``: the number of edges of the component;
  ``size="intensity"``: the sum over its edges of (statistic − threshold), the "Intensity"
  of MATLAB NBS. Components have at least one edge (isolated nodes are not components).
* **Tails.** ``tail="right"`` tests a positive contrast (t > threshold), ``"left"`` a
  negative one (−t > threshold). ``"both"`` runs the positive and the negative analyses
  *separately*: every component is either positive or negative, never a merged mixture (as
  bctpy's ``tail="both"`` does by thresholding |t|). Their p-values come from one null
  distribution, the largest component of either direction in each permutation, so the FWER
  is controlled over both directions together: these are two-sided p-values. F tests have
  only ``"right"``.
* **Permutations.** Nuisance regressors (every part of the design that the contrast does not
  test, including ``covariates``) are handled by Freedman–Lane: the residuals of the
  nuisance-only model are permuted (or sign-flipped) and the full model is refitted.
  Designs whose tested regressors are constant within every exchange block (one-sample,
  paired differences) use sign flips (of whole blocks when exchange blocks are given);
  others permute observations (within exchange blocks when given).
* **Exact inference.** When the whole permutation space is no larger than
  ``n_permutations`` (2^n sign flips; the distinct rearrangements of the design rows, e.g.
  ``n choose n1`` for two samples or ``(k!)^n`` for k visits permuted within n subjects) it
  is enumerated, identity included, and the p-value of a component is the exact fraction
  ``#{permutations with max component size >= observed size} / #permutations``. Otherwise
  ``n_permutations`` permutations are drawn at random with ``seed`` and
  ``p = (1 + count) / (1 + n_permutations)``.
* **Smallest attainable p.** Every result reports ``smallest_p``: the number of permutations
  that reproduce the observed statistic map (the identity, and its mirror image for
  two-sided tests or relabelled visits for repeated measures) over the number of
  permutations. With 5 paired subjects there are 2^5 = 32 sign flips: one-sided the
  smallest p is 1/32 = 0.031; two-sided (``tail="both"``) the flip of every sign mirrors the
  observed map, so the smallest p is 2/32 = 0.0625 and a two-sided claim needs p < 0.0625
  at best, which is never below 0.05. Three visits in 5 subjects give (3!)^5 = 7,776
  within-subject permutations, of which the 3! global relabellings of the visits reproduce
  the F map: the smallest p is 1/(3!)^4 = 0.00077.

Methods (``method=``)
---------------------
Every design takes ``method="nbs"`` (default, above), ``"tfnbs"`` or ``"constrained"``. All
three use the same GLM statistic, the same permutations (exact enumeration, identity
included, whenever the space is small) and report the same ``smallest_p``.

* **Threshold-free NBS** (``method="tfnbs"``; Baggio et al. 2018, the TFCE of Smith &
  Nichols 2009 on graphs). Each edge gets a *height*: ``t`` (``-t`` for the negative
  direction), or ``sqrt(F)`` for F tests (so that F = t^2 maps use the same scale, start and
  exponents). Its score is ``sum over grid heights h <= height of extent(h)^E * h^H * dh``,
  where ``extent(h)`` is the number of edges of its component in the graph of edges with
  height ``>= h`` (``E = extent_exponent``, default 0.5; ``H = height_exponent``, default
  2.0: the ``tfnbs`` package's defaults). The grid is ``start + dh, start + 2 dh, ...,
  h_max`` in 100 steps (``dh = (h_max - start) / 100``), ``start`` = ``threshold`` (t, or F
  for F tests) or the height of ``threshold_p``, by default 1.65 (the ``tfnbs`` default).
  ``h_max`` is the largest height of the observed map **and of every permutation**, so one
  grid (one statistic) serves every permutation and the test is exact; the ``tfnbs`` package
  instead takes each map's own maximum (and 10 steps during permutations). On the same t map
  and grid the two give the same scores (benchmarks/bench_nbs_tfnbs.py: 1e-12 relative).
  The FWER p of an edge is the fraction of permutations whose largest score (over both
  directions for ``tail="both"``) is ``>=`` the edge's score; exact p counts the identity,
  so with 5 paired subjects no p is below 1/32 (``tfnbs`` reports 0 there). Components are
  the connected components (per direction) of the edges with p < 0.05; a component's p is
  its smallest edge p and its ``size`` its largest score. When no edge reaches p < 0.05,
  the edges with the smallest p are reported instead, so the result always shows the best
  evidence. ``edge_score_matrix`` (negative for the negative direction) and
  ``edge_p_matrix`` hold every edge; ``parameters`` the grid. At small df the heavy tails of
  t let single extreme edges dominate the scores (t = 40 alone scores more than a clique of
  t = 5 at df = 4): below about 10 df prefer NBS with ``threshold_p``.
* **Constrained NBS** (``method="constrained"``; Noble & Scheinost 2020). Edges are grouped
  into blocks by the (unordered) pair of networks of their nodes; ``networks`` is None (the
  node table's ``network`` column), a node-table column name, or one label per node. The
  block statistic is the mean edge statistic of the block (mean t, signed by direction; mean
  F for F tests) over *all* its edges (``tfnbs``'s ``cnbs`` averages only the positive part of
  t). The FWER over blocks (and both directions) comes from the permutation distribution of
  the largest *standardised* block statistic: each block's statistic is centred and scaled
  by its mean and standard deviation over the permutations (the whole set, so the test stays
  exact); without it a 6-edge block's mean would vary far more than a 600-edge block's and
  fill the null of the maximum. Blocks with p < 0.05 become components (all their edges),
  or, when none, the blocks with the smallest p; ``network_table`` lists every block and
  direction with ``statistic``, ``p_uncorrected`` and ``p_value``. No threshold applies.

Speed and memory
----------------
All edges and a block of permutations are processed at once by matrix algebra. With ``Q`` an
orthonormal basis of the (reparametrised) design and ``W`` the nuisance residuals of the
data, normalised per edge, the statistics of B permutations come from one product
``(Q' P_b)_b @ W`` (for sign flips ``P_b`` is a diagonal of signs: ``S @ W``); the threshold
is applied to it without forming the statistic where possible. Components are found by one
``scipy.sparse.csgraph.connected_components`` call per block (the B supra-threshold graphs
as one block-diagonal graph). The block size follows a memory budget (``memory_mb``, 256 MB
by default, shared by the ``n_jobs`` workers) and blocks run in parallel with joblib. The
edge data of the permutation engine are float32: the per-edge normalisation bounds every
entry of the product by 1, so the statistics have a relative error near 1e-6; the observed
statistics are computed in float64. TFNBS and constrained NBS keep the data in float64 (a
mirrored or relabelled map must reproduce the observed scores); TFNBS calls
``connected_components`` once per grid height for the whole block (both directions), forms t
only where the product reaches the grid's start, and drops an edge from the loop as soon as
it is alone in its component (its remaining terms are then known): at 264 nodes, paired 8
subjects, about 1.7 ms per permutation on one core, 90x faster than ``tfnbs`` on the same
100-step grid.

Package layout (one idea per module; the public names are re-exported here)
---------------------------------------------------------------------------
* :mod:`~msimaging.fmri.nbs.designs`: the public entry points (:func:`nbs` and the designs).
* :mod:`~msimaging.fmri.nbs.inputs`: validation of matrices, design, contrast and labels.
* :mod:`~msimaging.fmri.nbs.glm`: the GLM (orthonormal bases, statistics, thresholds).
* :mod:`~msimaging.fmri.nbs.permutations`: sign flips and permutations, random or enumerated.
* :mod:`~msimaging.fmri.nbs.components`: connected components of supra-threshold edges.
* :mod:`~msimaging.fmri.nbs.engine`: observed statistics, null distribution, p-values.
* :mod:`~msimaging.fmri.nbs.threshold_free`: TFNBS heights, grid and scores.
* :mod:`~msimaging.fmri.nbs.constrained`: network blocks and their FWER.
* :mod:`~msimaging.fmri.nbs.results`: :class:`NBSComponent` and :class:`NBSResult`.
* :mod:`~msimaging.fmri.nbs._constants`: accepted options, defaults and tolerances.
"""

from msimaging.fmri.nbs._constants import DEFAULT_THRESHOLD_P, SIZE_MEASURES, TAILS
from msimaging.fmri.nbs.designs import (
    nbs,
    nbs_one_sample,
    nbs_paired,
    nbs_pairwise,
    nbs_repeated_measures,
    nbs_trend,
    nbs_two_sample,
)
from msimaging.fmri.nbs.results import NBSComponent, NBSResult

__all__ = [
    "DEFAULT_THRESHOLD_P",
    "SIZE_MEASURES",
    "TAILS",
    "NBSComponent",
    "NBSResult",
    "nbs",
    "nbs_one_sample",
    "nbs_paired",
    "nbs_pairwise",
    "nbs_repeated_measures",
    "nbs_trend",
    "nbs_two_sample",
]
