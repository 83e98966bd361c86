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
  Nichols 2009 on graphs). Each edge gets a *height*. By default (``tfnbs_height="z"``) it is
  on the z scale, as FSL's TFCE scores z maps: ``z = norm.isf(t.sf(t, df))`` (of ``-t`` for
  the negative direction), ``z = norm.isf(f.sf(F, df1, df2))`` for F tests, computed from
  log-p so extreme statistics keep finite, ordered heights. ``tfnbs_height="t"`` takes the
  statistic itself: ``t`` (``-t``), or ``sqrt(F)`` (so that F = t^2 maps use the t scale),
  the ``tfnbs`` package's definition. Its score is ``sum over grid heights h <= height of
  extent(h)^E * h^H * dh``, where ``extent(h)`` is the number of edges of its component in
  the graph of edges with height ``>= h`` (``E = extent_exponent``, default 0.5;
  ``H = height_exponent``, default 2.0: the ``tfnbs`` package's defaults). The grid is
  ``start + dh, start + 2 dh, ..., h_max`` in 100 steps (``dh = (h_max - start) / 100``),
  ``start`` = the height of ``threshold`` (a t, or F, value) or of ``threshold_p``, by
  default 1.65 in height units (z: one-sided p = 0.05 at every df; t: p = 0.05 only for
  large samples, the ``tfnbs`` default). ``h_max`` is the largest height of the observed
  map **and of every permutation**, so one grid (one statistic) serves every permutation
  and the test is exact; the ``tfnbs`` package instead takes each map's own maximum (and 10
  steps during permutations). On the same t map and grid the two give the same scores
  (benchmarks/bench_nbs_tfnbs.py: 1e-12 relative). The z transform is monotone with one df
  for all edges, so the permutation test stays exact; permutations are compared with the z
  grid mapped back to t (sqrt F) by bisection, so no per-edge z is formed for them.
  The FWER p of an edge is the fraction of permutations whose largest score (over both
  directions for ``tail="both"``) is ``>=`` the edge's score; exact p counts the identity,
  so with 5 paired subjects no p is below 1/32 (``tfnbs`` reports 0 there). Components are
  the connected components (per direction) of the edges with p < 0.05; a component's p is
  its smallest edge p and its ``size`` its largest score. When no edge reaches p < 0.05,
  the edges with the smallest p are reported instead, so the result always shows the best
  evidence. ``edge_score_matrix`` (negative for the negative direction) and
  ``edge_p_matrix`` hold every edge; ``parameters`` the height scale (``tfnbs_height``,
  ``height_definition``) and the grid (``start_height``, ``dh``, ``h_max`` in height units,
  ``native_h_max`` in t or sqrt F). *Why z by default*: at small df the heavy tails of t let
  single extreme null edges dominate the largest score (at df = 7 a lone edge at t = 19
  outscores a 66-edge component at t ~ 3), so t heights lose real components that z heights
  find. Measured (benchmarks/results/nbs_tfnbs.json, ``height_comparison``; FWER under the
  null in tests/test_fmri_nbs_tfnbs.py): power (share of
  10 data sets with a significant edge) t -> z: paired n = 8, 264 nodes, 12-node clique,
  effect 1.0 / 1.5 / 2.0: 0 -> 0.1, 0 -> 0.7, 0.2 -> 1.0 (planted edges found at effect 2.0:
  0.2 -> 19.5 of 66); 4 subjects x 3 visits, 30 nodes, 10 rising: trend slope 1.0 0.9 -> 1.0,
  repeated-measures F slope 1.0 0.1 -> 0.3, slope 2.0 both 1.0 (planted edges found 26.8 ->
  35.5 and 4.5 -> 13.4 of 45). Precision (share of significant edges planted, pooled) is
  0.83-0.96 with z against 0.96-1.0 with t (on far fewer edges): edges next to a component
  share its extent. FWER with z (exact, 600 null data sets): paired n = 6 0.057, repeated
  measures 4 x 3 0.035 (0.05 +- 0.018). Neither scale reliably finds the 264-node benchmark's
  effect-1.0 clique (z: 1 of 10; planted t ~ 2 at df 7, near the start): use NBS with
  ``threshold_p`` or constrained NBS there.
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

from msimaging.fmri.nbs._constants import DEFAULT_THRESHOLD_P, METHODS, SIZE_MEASURES, TAILS
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
    "METHODS",
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
