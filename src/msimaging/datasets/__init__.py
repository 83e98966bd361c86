"""Built-in datasets generated on the fly (nothing is downloaded).

- :func:`make_example_layout`: a small BIDS tree (raw + fMRIPrep-style + segmentation
  derivatives) with tiny images, for discovery tests, the demo and benchmarks.
- ``make_synthetic_study`` (planned, issue 3): the synthetic longitudinal MS study with
  planted effects and ground truth.
"""

from msimaging.datasets.layout import make_example_layout

__all__ = ["make_example_layout"]
