"""Constants of the Network-Based Statistic: accepted options, defaults and tolerances."""

from __future__ import annotations

#: Accepted ``size`` values: number of edges, or sum of (statistic − threshold).
SIZE_MEASURES = ("extent", "intensity")
#: Accepted ``tail`` values.
TAILS = ("right", "left", "both")
#: Accepted ``method`` values: components of supra-threshold edges (NBS), threshold-free NBS
#: (TFNBS: every edge scored by integrating component extent over thresholds) and constrained
#: (network-level) NBS (one statistic per pair of predefined networks).
METHODS = ("nbs", "tfnbs", "constrained")
#: Accepted ``tfnbs_height`` values: TFNBS heights on the z scale (``norm.isf`` of the edge's
#: one-sided p; the default) or the statistic itself (t, or sqrt(F); the ``tfnbs`` package).
TFNBS_HEIGHTS = ("z", "t")
#: Uncorrected one-sided p per edge used when neither ``threshold`` nor ``threshold_p`` is
#: given (the df-aware version of MATLAB NBS's t = 3.1, which is p = 0.001 for large samples).
DEFAULT_THRESHOLD_P = 0.001

# Residual sums of squares (of unit-norm edge data) are floored here: a perfect fit gives a
# huge, finite statistic instead of a division by zero.
_RSS_FLOOR = 1e-12
# Relative tolerance when comparing intensity sizes computed in float32 (permutations) with
# the float64 observed size, so that permutations reproducing the observed map count.
_INTENSITY_RTOL = 1e-5
# Bytes per edge and permutation of the block engine besides the product itself (a mask and
# up to five float32 temporaries on the general path).
_BLOCK_OVERHEAD_BYTES = 24
# Largest permutation space that exact=True enumerates.
_MAX_ENUMERATION = 1_000_000

# TFNBS: start of the threshold grid in height units when neither ``threshold`` nor
# ``threshold_p`` is given (z: one-sided p = 0.05 at every df; with tfnbs_height="t", t or
# sqrt(F): the ``tfnbs`` package's default, p = 0.05 for large samples), and the number of
# grid steps (``tfnbs``'s default for scoring).
_TFNBS_START = 1.65
_TFNBS_STEPS = 100
# TFNBS and constrained NBS report as components the edges (blocks) with FWER p below this.
_REPORT_ALPHA = 0.05
# Relative tolerance when comparing TFNBS scores and block statistics with their null, so that
# permutations reproducing the observed map (mirror image, relabelled visits) count.
_SCORE_RTOL = 1e-9
# TFNBS: relative tolerance of "height >= grid height" (the grid's top is the largest height
# itself; maps that reproduce it with other rounding must reach it too).
_GRID_RTOL = 1e-10
