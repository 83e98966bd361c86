"""Constrained (network-level) NBS (Noble & Scheinost 2020): one statistic per pair of
predefined networks, the mean edge statistic of the block of edges between them, with a
family-wise error rate controlled over the blocks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from msimaging.errors import InputError
from msimaging.fmri.nbs.glm import _design_product, _Model, _statistics


def _network_labels(networks: Any, table: pd.DataFrame | None, n_nodes: int) -> np.ndarray:
    """Network name of every node: the node table's ``network`` column (``networks=None``),
    another column of it (a column name), or one label per node (a sequence)."""
    if networks is None or isinstance(networks, str):
        column = "network" if networks is None else networks
        if table is None or column not in table.columns:
            have = "no node table" if table is None else (
                f"a node table with columns {', '.join(map(str, table.columns))}"
            )
            raise InputError(
                f"method='constrained' needs the network of every node: networks="
                f"{networks!r} asks for the node-table column {column!r}, but the data have "
                f"{have}. Pass networks=<one label per node> or Connectome objects (or "
                "nodes=...) whose node table has a 'network' column."
            )
        labels = table[column].to_numpy(dtype=object)
        source = f"node-table column {column!r}"
    else:
        labels = np.asarray(list(networks), dtype=object).ravel()
        source = "networks"
        if len(labels) != n_nodes:
            raise InputError(
                f"networks has {len(labels)} labels for {n_nodes} nodes; give one network "
                "label per node, in the node order of the matrices."
            )
    missing = [i for i, v in enumerate(labels) if v is None or (isinstance(v, float) and v != v)]
    if missing:
        raise InputError(
            f"{source} has no network for node(s) {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}; give every node a network (e.g. "
            "'Unassigned') for method='constrained'."
        )
    return np.asarray([str(v) for v in labels], dtype=object)


def _blocks(labels: np.ndarray, n_nodes: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Block index of every edge (upper triangle order) and the network pair of each block.

    Blocks are the unordered network pairs ``(a, b)`` with ``a <= b`` (sorted names) that
    hold at least one edge; within-network blocks have ``a == b``.
    """
    names, codes = np.unique(labels.astype(str), return_inverse=True)
    iu = np.triu_indices(n_nodes, k=1)
    lo = np.minimum(codes[iu[0]], codes[iu[1]])
    hi = np.maximum(codes[iu[0]], codes[iu[1]])
    pair = lo * len(names) + hi
    present, block = np.unique(pair, return_inverse=True)
    pairs = [(str(names[p // len(names)]), str(names[p % len(names)])) for p in present]
    return block.ravel(), pairs


def _averaging_matrix(block: np.ndarray, n_blocks: int) -> Any:
    """Sparse (E, n_blocks) matrix whose product with edge statistics gives block means."""
    from scipy.sparse import csr_matrix

    counts = np.bincount(block, minlength=n_blocks)
    weights = 1.0 / counts[block]
    return csr_matrix(
        (weights, (np.arange(len(block)), block)), shape=(len(block), n_blocks)
    )


def _block_statistics(model: _Model, product: np.ndarray, directions: tuple[int, ...],
                      averaging: Any) -> np.ndarray:
    """Block statistics (B, n_directions * n_blocks): ``sign * mean t`` or ``mean F``."""
    stats = _statistics(model, product)  # (B, E)
    means = np.asarray((averaging.T @ stats.T).T)  # (B, n_blocks)
    return np.concatenate([sign * means for sign in directions], axis=1)


def _constrained_null_block(
    w: np.ndarray,
    model: _Model,
    perms: np.ndarray | None,
    signs: np.ndarray | None,
    directions: tuple[int, ...],
    averaging: Any,
) -> np.ndarray:
    """Block statistics of every permutation of a block, (B, n_directions * n_blocks)."""
    design = _design_product(model, perms, signs, w.dtype)
    n_block = design.shape[0] // model.q.shape[1]
    product = (design @ w).reshape(n_block, model.q.shape[1], w.shape[1])
    return _block_statistics(model, product, directions, averaging)


def _standardised_max_fwer(null: np.ndarray, observed: np.ndarray, exact: bool,
                           rtol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FWER over the blocks (and directions) from the largest standardised block statistic.

    Parameters
    ----------
    null : (K, m)
        Block statistics of every permutation (row 0 the identity when ``exact``).
    observed : (m,)
        Observed block statistics.

    Returns
    -------
    fwer_p, uncorrected_p : (m,)
        FWER-corrected and per-block (uncorrected) permutation p of the observed blocks.
    max_null : (K',)
        The largest standardised block statistic of each member of the reference set.

    Notes
    -----
    The reference set is the K permutations when the space is enumerated (identity
    included), otherwise the observed map and the K random permutations (so p >= 1/(K+1)).
    Each block's statistic is standardised by the mean and standard deviation of its values
    over the reference set, a function of the whole set that is the same whichever member is
    the observed one, so the test stays exact. Without it the mean of a 6-edge block would
    vary far more under the null than that of a 6,000-edge block, and small blocks would
    fill the null distribution of the maximum.
    """
    reference = null if exact else np.vstack([observed[None], null])
    size = reference.shape[0]
    centre = reference.mean(axis=0)
    spread = reference.std(axis=0)
    spread = np.where(spread > 1e-12 * np.maximum(np.abs(centre), 1.0), spread, np.inf)
    z_reference = (reference - centre) / spread
    z_observed = (observed - centre) / spread
    max_null = z_reference.max(axis=1)
    ordered = np.sort(max_null)
    tol = rtol * np.maximum(np.abs(z_observed), 1.0)
    fwer = (size - np.searchsorted(ordered, z_observed - tol, side="left")) / size
    below = reference < (observed - rtol * np.maximum(np.abs(observed), 1e-300))[None]
    uncorrected = (size - below.sum(axis=0)) / size
    return fwer, uncorrected, max_null
