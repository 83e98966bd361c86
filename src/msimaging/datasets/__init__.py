"""Built-in datasets generated on the fly (nothing is downloaded).

- :func:`make_synthetic_study`: the synthetic longitudinal MS study (BIDS + derivatives) with
  planted effects and ``ground_truth.json`` — the default input of ``make demo`` and the
  fixture of the test suite, also usable for power analysis of a trial design.
- :func:`make_example_layout`: a small BIDS tree with tiny random images, for file-discovery
  tests and benchmarks.
"""

from __future__ import annotations

from typing import Any

from msimaging.datasets.layout import make_example_layout

__all__ = ["make_example_layout", "make_synthetic_study"]


def __getattr__(name: str) -> Any:
    # The generator pulls in numpy/scipy/nibabel/nilearn data: import it on first use.
    if name == "make_synthetic_study":
        from msimaging.datasets.synthetic import make_synthetic_study

        return make_synthetic_study
    raise AttributeError(f"module 'msimaging.datasets' has no attribute {name!r}")
