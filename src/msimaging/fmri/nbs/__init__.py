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
statistics are computed in float64.

Package layout (one idea per module; the public names are re-exported here)
---------------------------------------------------------------------------
* :mod:`~msimaging.fmri.nbs.designs`: the public entry points (:func:`nbs` and the designs).
* :mod:`~msimaging.fmri.nbs.inputs`: validation of matrices, design, contrast and labels.
* :mod:`~msimaging.fmri.nbs.glm`: the GLM (orthonormal bases, statistics, thresholds).
* :mod:`~msimaging.fmri.nbs.permutations`: sign flips and permutations, random or enumerated.
* :mod:`~msimaging.fmri.nbs.components`: connected components of supra-threshold edges.
* :mod:`~msimaging.fmri.nbs.engine`: observed statistics, null distribution, p-values.
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
