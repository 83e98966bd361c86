"""msimaging.report — one self-contained HTML study report from tidy tables and figures.

:func:`build_report` reads the derivatives (``group/*.tsv``, ``figures/*.png``) and the BIDS
``phenotype/`` tables, runs :func:`msimaging.stats.compare_visits` per section and writes a
single offline HTML file (figures embedded, no scripts, every input text escaped).
"""

from msimaging.report.html import build_report

__all__ = ["build_report"]
