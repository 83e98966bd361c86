"""The synthetic longitudinal MS study: anatomy, lesions, DWI, BOLD and clinical data with
planted effects, written as BIDS with a ground truth computed from the written images."""

from msimaging.datasets.synthetic.study import PRESETS, Effects, Preset, make_synthetic_study

__all__ = ["PRESETS", "Effects", "Preset", "make_synthetic_study"]
