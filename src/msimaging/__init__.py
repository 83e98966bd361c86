"""msimaging: longitudinal imaging analysis in multiple sclerosis.

Subpackages are imported on first use, so ``import msimaging`` stays light::

    import msimaging
    msimaging.dti        # imported here, with its dependencies

Layers (lower never imports higher): ``cli``/``report`` > ``pipeline`` >
``dti``/``fmri``/``volumetry``/``stats`` > ``datasets`` > shared core
(``bids``, ``derivatives``, ``registration``, ``atlases``, ``segmentation``) > ``io`` >
``errors``.
"""

from __future__ import annotations

import importlib
from typing import Any

from msimaging._version import __version__

__all__ = [
    "__version__",
    "atlases",
    "bids",
    "datasets",
    "derivatives",
    "dti",
    "errors",
    "fmri",
    "io",
    "pipeline",
    "registration",
    "report",
    "segmentation",
    "stats",
    "volumetry",
]

_SUBMODULES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"msimaging.{name}")
    raise AttributeError(f"module 'msimaging' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
