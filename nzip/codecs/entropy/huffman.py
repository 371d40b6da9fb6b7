"""Length-limited canonical Huffman codes over bytes, and their decode tables.

Canonical: codes are assigned in order of (length, symbol), so the 256 code lengths are
the whole table; decoders rebuild the codes from them (the compiled decoder in
_entropy.c fills its lookup table in that same order).
"""

from __future__ import annotations

import heapq

import numpy as np



def code_lengths(counts: np.ndarray, limit: int) -> np.ndarray:
    """Huffman code lengths (uint8[256], 0 for absent symbols), none longer than limit."""
    symbols = [int(s) for s in np.flatnonzero(counts)]
    lengths = np.zeros(256, np.int64)
    if len(symbols) == 0:
        return lengths.astype(np.uint8)
    if len(symbols) == 1:
        lengths[symbols[0]] = 1
        return lengths.astype(np.uint8)
    # plain Huffman on (count, tiebreak, members)
    heap = [(int(counts[s]), s, [s]) for s in symbols]
    heapq.heapify(heap)
    tiebreak = 256
    while len(heap) > 1:
        c1, _, m1 = heapq.heappop(heap)
        c2, _, m2 = heapq.heappop(heap)
        for s in m1:
            lengths[s] += 1
        for s in m2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tiebreak, m1 + m2))
        tiebreak += 1
    if lengths.max() > limit:
        _limit_lengths(lengths, counts, limit, symbols)
    return lengths.astype(np.uint8)


def _limit_lengths(lengths: np.ndarray, counts: np.ndarray, limit: int, symbols: list[int]) -> None:
    """Clip to `limit`, then restore the Kraft inequality by lengthening the codes whose
    extra bit costs least per unit of code space freed."""
    lengths[lengths > limit] = limit
    kraft = sum(1 << (limit - int(lengths[s])) for s in symbols)
    budget = 1 << limit
    while kraft > budget:
        best, best_ratio = -1, None
        for s in symbols:
            l = int(lengths[s])
            if l < limit:
                ratio = int(counts[s]) / (1 << (limit - l - 1))
                if best_ratio is None or ratio < best_ratio:
                    best, best_ratio = s, ratio
        kraft -= 1 << (limit - int(lengths[best]) - 1)
        lengths[best] += 1
    # use leftover code space: shorten the most frequent codes while it fits
    for s in sorted(symbols, key=lambda s: -int(counts[s])):
        while lengths[s] > 1 and kraft + (1 << (limit - int(lengths[s]))) <= budget:
            kraft += 1 << (limit - int(lengths[s]))
            lengths[s] -= 1


def _canonical_order(lengths: np.ndarray) -> np.ndarray:
    """Present symbols sorted by (length, symbol): the order canonical codes are given in."""
    present = np.flatnonzero(lengths)
    return present[np.argsort(lengths[present], kind="stable")]


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of each symbol (uint32[256]): in (length, symbol) order each code is
    the previous one plus one, shifted left by the growth in length."""
    order = _canonical_order(lengths)
    codes = np.zeros(256, np.uint32)
    if order.size == 0:
        return codes
    lens = lengths[order].astype(np.int64)
    max_len = int(lens[-1])
    # every code, left-aligned to max_len bits, is the running sum of the code space
    # taken by the codes before it; shifting back gives the code itself
    space = np.int64(1) << (max_len - lens)
    starts = np.concatenate([[0], np.cumsum(space)[:-1]])
    codes[order] = (starts >> (max_len - lens)).astype(np.uint32)
    return codes
