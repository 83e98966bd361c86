"""msimaging.stats — longitudinal statistics that stay honest at n = 5.

- :func:`compare_visits`: per-visit medians/IQR, changes from baseline, Friedman with an exact
  permutation p, Kendall's W, exact Wilcoxon post hoc with Holm, FDR across measures, optional
  mixed model — on any tidy table (imaging or clinical).
- :func:`friedman_exact`, :func:`wilcoxon_exact`, :func:`kendalls_w`, :func:`holm`: the exact
  building blocks.
- :func:`read_phenotype`: BIDS ``phenotype/*.tsv`` as tidy rows.
"""

from msimaging.stats.exact import fdr_bh, friedman_exact, holm, kendalls_w, wilcoxon_exact
from msimaging.stats.longitudinal import VisitComparison, compare_visits
from msimaging.stats.phenotype import read_phenotype

__all__ = [
    "VisitComparison",
    "compare_visits",
    "fdr_bh",
    "friedman_exact",
    "holm",
    "kendalls_w",
    "read_phenotype",
    "wilcoxon_exact",
]
