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

    def append(self, leaf_hash_: bytes) -> list[Node]:
        """Add one leaf; return the complete subtrees (level >= 1) this closes."""
        closed: list[Node] = []
        h = leaf_hash_
        index = self.size
        level = 0
        while (self.size >> level) & 1:
            h = node_hash(self._hashes.pop(), h)
            level += 1
            index >>= 1
            closed.append(Node(level, index, h))
        self._hashes.append(h)
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
