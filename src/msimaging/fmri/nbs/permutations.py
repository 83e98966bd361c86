"""Permutation sets of the Network-Based Statistic: sign flips and within-block permutations,
random or enumerated (exact inference)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from msimaging.errors import DesignError, InputError
from msimaging.fmri.nbs._constants import _MAX_ENUMERATION


# --------------------------------------------------------------------------------------------
# Permutation sets
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    kind: str  # "sign-flip" or "permutation"
    perms: np.ndarray | None  # (K, n) row indices of the design
    signs: np.ndarray | None  # (K, n) +-1
    exact: bool
    space: int

    @property
    def count(self) -> int:
        arr = self.perms if self.perms is not None else self.signs
        assert arr is not None
        return len(arr)

    def take(self, start: int, stop: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.perms is not None:
            return self.perms[start:stop], None
        assert self.signs is not None
        return None, self.signs[start:stop]


def _plan(
    x: np.ndarray,
    blocks: np.ndarray | None,
    flips: bool,
    n_permutations: int,
    rng: np.random.Generator,
    exact: bool | None = None,
) -> _Plan:
    n = x.shape[0]
    codes = np.zeros(n, int) if blocks is None else np.unique(blocks, return_inverse=True)[1]
    n_blocks = int(codes.max()) + 1
    if flips:
        units = codes if blocks is not None else np.arange(n)
        n_units = int(units.max()) + 1
        space = 2**n_units
        if _enumerate(space, n_permutations, exact):
            k = np.arange(space)[:, None]
            bits = (k >> np.arange(n_units)[None, :]) & 1  # row 0: identity
            unit_signs = 1 - 2 * bits
            exact = True
        else:
            unit_signs = rng.choice(np.array([-1, 1]), size=(n_permutations, n_units))
            exact = False
        return _Plan("sign-flip", None, unit_signs[:, units].astype(np.int8), exact, space)
    # Distinct rearrangements of the design rows within each block (multiset permutations).
    _, row_type = np.unique(x.round(12), axis=0, return_inverse=True)
    row_type = row_type.ravel()
    members = [np.flatnonzero(codes == b) for b in range(n_blocks)]
    space = 1
    for idx in members:
        space *= _multinomial(Counter(row_type[idx].tolist()).values())
    if space == 1:
        raise DesignError(
            "exchange_blocks (or the design) allow no permutation that changes the design: "
            "every block holds one observation or identical design rows; check the blocks, "
            "or use sign flips (sign_flips=True) for one-sample designs."
        )
    if _enumerate(space, n_permutations, exact):
        per_block = [np.array(_arrangements(idx, row_type[idx])) for idx in members]
        # Mixed-radix decoding of 0..space-1 (the order of itertools.product: the last block
        # varies fastest, permutation 0 is the identity), one vectorised gather per block.
        perms = np.empty((space, n), dtype=np.int32)
        k = np.arange(space)
        stride = space
        for idx, arrangements in zip(members, per_block, strict=True):
            stride //= len(arrangements)
            perms[:, idx] = arrangements[(k // stride) % len(arrangements)]
        return _Plan("permutation", perms, None, True, space)
    # Random: shuffle the positions of every block independently.
    order = np.argsort(codes, kind="stable")
    keys = codes[order][None, :] + rng.random((n_permutations, n))
    shuffled = order[np.argsort(keys, axis=1)]
    perms = np.empty((n_permutations, n), dtype=np.int32)
    perms[:, order] = shuffled
    return _Plan("permutation", perms, None, False, space)


def _enumerate(space: int, n_permutations: int, exact: bool | None) -> bool:
    if exact is True and space > _MAX_ENUMERATION:
        raise InputError(
            f"exact=True: the permutation space has {space} elements, too many to enumerate "
            f"(limit {_MAX_ENUMERATION:,}); use exact=None with random permutations."
        )
    return bool(exact) or (exact is None and space <= n_permutations)


def _multinomial(counts: Any) -> int:
    counts = list(counts)
    out = math.factorial(sum(counts))
    for c in counts:
        out //= math.factorial(c)
    return out


def _arrangements(indices: np.ndarray, types: np.ndarray) -> list[np.ndarray]:
    """Every distinct arrangement of a block's design rows, identity first.

    Each arrangement gives, for every position of the block, the observation whose design
    row moves there; observations with identical rows are taken in order.
    """
    pools: dict[int, list[int]] = {}
    for index, kind in zip(indices.tolist(), types.tolist(), strict=True):
        pools.setdefault(kind, []).append(index)
    out = []
    for sequence in _multiset_permutations(types.tolist()):
        taken = {kind: iter(pool) for kind, pool in pools.items()}
        out.append(np.array([next(taken[kind]) for kind in sequence], dtype=np.int32))
    identity = next(i for i, a in enumerate(out) if np.array_equal(a, indices))
    out.insert(0, out.pop(identity))
    return out


def _multiset_permutations(items: list[int]) -> list[list[int]]:
    counts = Counter(items)
    kinds = sorted(counts)
    result: list[list[int]] = []
    current: list[int] = []

    def recurse() -> None:
        if len(current) == len(items):
            result.append(current.copy())
            return
        for kind in kinds:
            if counts[kind]:
                counts[kind] -= 1
                current.append(kind)
                recurse()
                current.pop()
                counts[kind] += 1

    recurse()
    return result
