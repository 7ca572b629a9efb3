"""Leaf, node and chain hashes and the incremental RFC 9162 Merkle frontier."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.merkle import (
    EMPTY_ROOT,
    ZERO_HASH,
    Frontier,
    chain_hash,
    leaf_hash,
    node_hash,
    reference_root,
    root_of,
)

hashes = st.binary(min_size=32, max_size=32)
hash_lists = st.lists(hashes, max_size=70)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def textbook_mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 over leaf *data*, written out independently of infra.merkle."""
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return sha256(b"\x00" + leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return sha256(b"\x01" + textbook_mth(leaves[:k]) + textbook_mth(leaves[k:]))


def test_the_empty_tree_root_is_the_hash_of_nothing() -> None:
    assert (
        bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        == EMPTY_ROOT
    )
    assert Frontier().root() == EMPTY_ROOT
    assert reference_root([]) == EMPTY_ROOT
    assert root_of([]) == EMPTY_ROOT


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"leaf") == sha256(b"\x00leaf")
    left, right = sha256(b"l"), sha256(b"r")
    assert node_hash(left, right) == sha256(b"\x01" + left + right)


def test_the_chain_starts_from_32_zero_bytes_and_hashes_previous_then_leaf() -> None:
    assert bytes(32) == ZERO_HASH
    leaves = [b"one", b"two", b"three"]
    chain = ZERO_HASH
    for leaf in leaves:
        expected = sha256(chain + sha256(b"\x00" + leaf))
        chain = chain_hash(chain, leaf_hash(leaf))
        assert chain == expected
    assert chain_hash(ZERO_HASH, leaf_hash(b"one")) == sha256(bytes(32) + sha256(b"\x00one"))


@given(st.lists(st.binary(max_size=20), max_size=40))
def test_the_reference_root_is_the_textbook_rfc9162_tree_hash(leaves: list[bytes]) -> None:
    assert reference_root([leaf_hash(leaf) for leaf in leaves]) == textbook_mth(leaves)


@given(hash_lists)
def test_the_frontier_root_equals_the_reference_root_for_every_prefix(
    leaf_hashes: list[bytes],
) -> None:
    frontier = Frontier()
    assert frontier.root() == reference_root([])
    for n, h in enumerate(leaf_hashes, start=1):
        frontier.append(h)
        assert frontier.size == n
        assert frontier.root() == reference_root(leaf_hashes[:n])
    assert root_of(leaf_hashes) == reference_root(leaf_hashes)


@given(hash_lists)
def test_appending_returns_exactly_the_complete_subtrees_it_closes(
    leaf_hashes: list[bytes],
) -> None:
    frontier = Frontier()
    seen: set[tuple[int, int]] = set()
    for n, h in enumerate(leaf_hashes, start=1):
        closed = frontier.append(h)
        for node in closed:
            width = 1 << node.level
            first = node.index * width
            assert node.level >= 1
            assert first + width == n, "a node is returned when its last leaf arrives"
            assert node.hash == reference_root(leaf_hashes[first : first + width])
            assert (node.level, node.index) not in seen
            seen.add((node.level, node.index))
        complete = {
            (level, index) for level in range(1, n.bit_length() + 1) for index in range(n >> level)
        }
        assert seen == complete


@given(hash_lists, st.lists(hashes, max_size=10))
def test_a_frontier_round_trips_through_its_bytes(
    leaf_hashes: list[bytes], more: list[bytes]
) -> None:
    frontier = Frontier()
    for h in leaf_hashes:
        frontier.append(h)
    packed = frontier.to_bytes()
    assert len(packed) == 32 * frontier.size.bit_count()
    again = Frontier.from_bytes(frontier.size, packed)
    assert again.size == frontier.size
    assert again.to_bytes() == packed
    assert again.root() == frontier.root()
    for h in more:
        assert again.append(h) == frontier.append(h)
    assert again.root() == reference_root(leaf_hashes + more)


def test_a_copy_is_independent_of_its_original() -> None:
    frontier = Frontier()
    frontier.append(sha256(b"a"))
    copy = frontier.copy()
    copy.append(sha256(b"b"))
    assert frontier.size == 1
    assert frontier.root() == sha256(b"a")


def test_a_frontier_with_the_wrong_number_of_hashes_is_refused() -> None:
    with pytest.raises(ValueError, match="hashes"):
        Frontier(3, [ZERO_HASH])
    with pytest.raises(ValueError, match="hashes"):
        Frontier.from_bytes(4, ZERO_HASH * 2)
    with pytest.raises(ValueError, match="whole number"):
        Frontier.from_bytes(1, ZERO_HASH + b"x")
