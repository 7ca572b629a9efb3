"""Hashes of the tenant log: leaf hashes, the hash chain and the RFC 9162 Merkle tree.

- ``leaf_hash = SHA-256(0x00 || leaf)``
- ``chain_hash_n = SHA-256(chain_hash_{n-1} || leaf_hash_n)``, ``chain_hash_0`` = 32 zero bytes
- ``node = SHA-256(0x01 || left || right)`` (RFC 9162 §2.1)

The tree is kept incrementally as a *frontier*: the roots of the perfect
subtrees that make up the first ``size`` leaves, largest (leftmost) first, one
per set bit of ``size``. Appending a leaf merges equal-sized subtrees, and each
merge is a complete subtree; the store records those of level >=
``MIN_STORED_LEVEL`` as ``merkle_node`` rows (level 0 are the leaf hashes in the
event log). Any inclusion or consistency proof is then a handful of reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import sha256

HASH_SIZE = 32
MIN_STORED_LEVEL = 4
"""Only complete subtrees of 16 or more leaves are stored; a smaller one is
recomputed from at most 16 leaf hashes. That keeps proofs at O(log n) reads
while writing about one node row per eight events instead of one per event."""
ZERO_HASH = bytes(HASH_SIZE)
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def chain_hash(previous: bytes, leaf_hash_: bytes) -> bytes:
    return hashlib.sha256(previous + leaf_hash_).digest()


@dataclass(frozen=True, slots=True)
class Node:
    """A complete subtree: ``level`` 2**level leaves starting at leaf ``index * 2**level``."""

    level: int
    index: int
    hash: bytes


class Frontier:
    """The right edge of the Merkle tree over the first ``size`` leaves."""

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes")
        self.size = size
        self._hashes = list(hashes)

    @classmethod
    def from_bytes(cls, size: int, packed: bytes) -> Frontier:
        if len(packed) % HASH_SIZE:
            raise ValueError("packed frontier is not a whole number of hashes")
        hashes = [packed[i : i + HASH_SIZE] for i in range(0, len(packed), HASH_SIZE)]
        return cls(size, hashes)

    def to_bytes(self) -> bytes:
        return b"".join(self._hashes)

    def copy(self) -> Frontier:
        return Frontier(self.size, self._hashes)

    def append(self, leaf_hash_: bytes, min_level: int = 1) -> list[Node]:
        """Add one leaf; return the complete subtrees of ``min_level`` or more it closes."""
        closed: list[Node] = []
        h = leaf_hash_
        index = self.size
        level = 0
        hashes = self._hashes
        while (self.size >> level) & 1:
            h = sha256(b"\x01" + hashes.pop() + h).digest()
            level += 1
            index >>= 1
            if level >= min_level:
                closed.append(Node(level, index, h))
        hashes.append(h)
        self.size += 1
        return closed

    def root(self) -> bytes:
        """RFC 9162 Merkle Tree Hash of the first ``size`` leaves."""
        if not self._hashes:
            return EMPTY_ROOT
        root = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            root = node_hash(h, root)
        return root


def root_of(leaf_hashes: Iterable[bytes]) -> bytes:
    frontier = Frontier()
    for h in leaf_hashes:
        frontier.append(h)
    return frontier.root()


def reference_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The textbook recursive MTH of RFC 9162 §2.1.1, for tests and independent checks."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(reference_root(leaf_hashes[:k]), reference_root(leaf_hashes[k:]))


# --- Proofs (RFC 9162 §2.1.3 and §2.1.4) -------------------------------------------
#
# A proof is a list of subtree hashes. Every subtree a proof names is a range
# ``[start, end)`` of leaves whose ``start`` is a multiple of the largest power
# of two not above its width; it is either complete (a stored node, or at most
# 15 leaf hashes) or the right edge of the tree, which is the fold of the
# complete subtrees its width's bits describe. ``Range`` names them so the
# store can fetch every hash of a proof in one round trip.


@dataclass(frozen=True, slots=True)
class Range:
    """The leaves ``[start, end)``; their Merkle Tree Hash is a proof element."""

    start: int
    end: int

    def complete_subtrees(self) -> list[Node]:
        """The complete subtrees this range is made of, left to right (largest first)."""
        nodes: list[Node] = []
        start = self.start
        width = self.end - self.start
        for level in range(width.bit_length() - 1, -1, -1):
            if width >> level & 1:
                nodes.append(Node(level, start >> level, b""))
                start += 1 << level
        return nodes


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """PATH(index, D[0:size]) as ranges, from the leaf's sibling up to the root's child."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    ranges: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if index < start + k:
            ranges.append(Range(start + k, end))
            end = start + k
        else:
            ranges.append(Range(start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[Range]:
    """PROOF(old_size, D[0:new_size]) as ranges (RFC 9162 §2.1.4.1); empty when old is 0."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    ranges: list[Range] = []
    start, end, m, whole = 0, new_size, old_size, True
    while m != end - start:
        k = _largest_power_of_two_below(end - start)
        if m <= k:
            ranges.append(Range(start + k, end))
            end = start + k
        else:
            ranges.append(Range(start, start + k))
            start += k
            m -= k
            whole = False
    if not whole:
        ranges.append(Range(start, end))
    ranges.reverse()
    return ranges


def fold_range(range_: Range, subtree_hash: dict[tuple[int, int], bytes]) -> bytes:
    """The hash of ``range_`` from the hashes of its complete subtrees, keyed (level, index)."""
    hashes = [subtree_hash[(n.level, n.index)] for n in range_.complete_subtrees()]
    result = hashes[-1]
    for h in reversed(hashes[:-1]):
        result = node_hash(h, result)
    return result


def subtree_of_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """The hash of a complete subtree given all its leaf hashes (a power of two of them)."""
    level = list(leaf_hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


class ProofError(ValueError):
    """A proof does not verify; the message says why."""


def root_from_inclusion(index: int, size: int, leaf_hash_: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root that ``proof`` implies for the leaf at ``index``."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is not below the tree size {size}")
    fn, sn, r = index, size - 1, leaf_hash_
    for p in proof:
        _check_hash(p)
        if sn == 0:
            raise ProofError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is too short")
    return r


def verify_inclusion(
    index: int, size: int, leaf_hash_: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    if root_from_inclusion(index, size, leaf_hash_, proof) != root:
        raise ProofError("the inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2, plus the empty cases tlog-witness defines (old size 0 or equal)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"the old size {old_size} is above the new size {new_size}")
    if old_size in (0, new_size):
        if proof:
            raise ProofError("a consistency proof from size 0 or to the same size must be empty")
        if old_size == new_size and old_root != new_root:
            raise ProofError("two different roots for the same size: the log forked")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    for p in path:
        _check_hash(p)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is too short")
    if fr != old_root:
        raise ProofError("the consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("the consistency proof does not lead to the new root")


def _check_hash(h: bytes) -> None:
    if len(h) != HASH_SIZE:
        raise ProofError("a proof hash is not 32 bytes")


def reference_inclusion(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The textbook recursive PATH of RFC 9162 §2.1.3.1, for tests."""
    n = len(leaf_hashes)
    if n <= 1:
        return []
    k = _largest_power_of_two_below(n)
    if index < k:
        return [*reference_inclusion(index, leaf_hashes[:k]), reference_root(leaf_hashes[k:])]
    return [*reference_inclusion(index - k, leaf_hashes[k:]), reference_root(leaf_hashes[:k])]


def reference_consistency(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The textbook recursive PROOF of RFC 9162 §2.1.4.1, for tests."""

    def subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
        n = len(leaves)
        if m == n:
            return [] if whole else [reference_root(leaves)]
        k = _largest_power_of_two_below(n)
        if m <= k:
            return [*subproof(m, leaves[:k], whole), reference_root(leaves[k:])]
        return [*subproof(m - k, leaves[k:], False), reference_root(leaves[:k])]

    if old_size in (0, len(leaf_hashes)):
        return []
    return subproof(old_size, leaf_hashes, True)
