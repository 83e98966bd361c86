"""Connected components of supra-threshold edges: observed components and the largest
component of every permutation in a block."""

from __future__ import annotations

import functools

import numpy as np

from msimaging.fmri.nbs.glm import _design_product, _Model, _stat_at, _supra


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------
def _block_max_sizes(
    b_idx: np.ndarray,
    e_idx: np.ndarray,
    weights: np.ndarray | None,
    n_block: int,
    n_nodes: int,
    iu: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Largest component size of each of the block's graphs, all in one block-diagonal graph."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    out = np.zeros(n_block)
    if not len(e_idx):
        return out
    offset = b_idx.astype(np.int64) * n_nodes
    rows = offset + iu[0][e_idx]
    cols = offset + iu[1][e_idx]
    total = n_block * n_nodes
    graph = csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(total, total))
    _, labels = connected_components(graph, directed=False)
    present, comp = np.unique(labels[rows], return_inverse=True)
    sizes = np.bincount(comp, weights=weights, minlength=len(present))
    owner = np.zeros(len(present), dtype=np.int64)
    owner[comp] = b_idx
    np.maximum.at(out, owner, sizes)
    return out


def _edge_component_sizes(rows: np.ndarray, cols: np.ndarray, n_total: int) -> np.ndarray:
    """Size (edges) of the component that holds each edge ``(rows[k], cols[k])``.

    ``rows`` must be sorted (as the upper-triangle edges of a block of graphs are, when taken
    in ``np.flatnonzero`` order), so the CSR matrix is built without a sort. When the edges
    touch few of the ``n_total`` node ids, the ids are first made compact.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(rows):
        return np.zeros(0)
    if 8 * len(rows) < n_total:  # sparse: relabel the touched nodes 0..m-1 (order kept)
        ids, inverse = np.unique(np.concatenate([rows, cols]), return_inverse=True)
        rows, cols = inverse[: len(rows)], inverse[len(rows):]
        n_total = len(ids)
    indptr = np.zeros(n_total + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_total), out=indptr[1:])
    graph = csr_matrix(
        (np.ones(len(rows), dtype=np.int8), cols, indptr), shape=(n_total, n_total)
    )
    _, labels = connected_components(graph, directed=False)
    comp = labels[rows]
    return np.bincount(comp)[comp].astype(np.float64)


def _null_block(
    w: np.ndarray,
    model: _Model,
    perms: np.ndarray | None,
    signs: np.ndarray | None,
    directions: tuple[int, ...],
    threshold: float,
    intensity: bool,
    n_nodes: int,
) -> np.ndarray:
    """Largest component size per permutation and direction, shape (B, n_directions)."""
    iu = _upper_indices(n_nodes)
    design = _design_product(model, perms, signs, w.dtype)
    n_block = design.shape[0] // model.q.shape[1]
    product = (design @ w).reshape(n_block, model.q.shape[1], w.shape[1])
    out = np.zeros((n_block, len(directions)))
    for d, sign in enumerate(directions):
        b_idx, e_idx, stats = _supra(model, product, threshold, sign)
        weights = None
        if intensity:
            if stats is None:
                stats = _stat_at(model, product, b_idx, e_idx, sign)
            weights = stats.astype(np.float64) - threshold
        out[:, d] = _block_max_sizes(b_idx, e_idx, weights, n_block, n_nodes, iu)
    return out


@functools.lru_cache(maxsize=4)
def _upper_indices(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n_nodes, k=1)


def _observed_components(
    stat: np.ndarray,
    threshold: float,
    sign: int,
    intensity: bool,
    n_nodes: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """(nodes, edge indices, statistics, size) of each observed component of one direction."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    iu = np.triu_indices(n_nodes, k=1)
    supra = np.flatnonzero(sign * stat > threshold)
    if not len(supra):
        return []
    rows, cols = iu[0][supra], iu[1][supra]
    graph = csr_matrix((np.ones(len(supra), np.int8), (rows, cols)), shape=(n_nodes, n_nodes))
    _, labels = connected_components(graph, directed=False)
    out = []
    for label in np.unique(labels[rows]):
        edges = supra[labels[rows] == label]
        nodes = np.unique(np.r_[iu[0][edges], iu[1][edges]])
        values = stat[edges]
        size = float(np.sum(sign * values - threshold)) if intensity else float(len(edges))
        out.append((nodes, edges, values, size))
    return out
