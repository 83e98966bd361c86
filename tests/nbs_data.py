"""Test data shared by the NBS test modules: symmetric random stacks and planted effects."""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from msimaging.errors import MSImagingWarning


def symmetric(rng: np.random.Generator, n: int, n_nodes: int, scale: float = 1.0) -> np.ndarray:
    """(n, N, N) symmetric matrices with independent N(0, scale²) upper-triangle edges."""
    iu = np.triu_indices(n_nodes, k=1)
    out = np.zeros((n, n_nodes, n_nodes))
    out[:, iu[0], iu[1]] = rng.normal(0.0, scale, size=(n, len(iu[0])))
    return out + np.swapaxes(out, 1, 2)


def plant(stack: np.ndarray, nodes: list[int], effect: float) -> np.ndarray:
    """Add ``effect`` to every edge among ``nodes`` (not the diagonal)."""
    out = stack.copy()
    for i, j in itertools.combinations(nodes, 2):
        out[:, i, j] += effect
        out[:, j, i] += effect
    return out


def quiet(function, *args, **kwargs):
    """Call ``function`` with msimaging's advisory warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MSImagingWarning)
        return function(*args, **kwargs)
