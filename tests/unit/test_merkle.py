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
    ProofError,
    Range,
    chain_hash,
    consistency_ranges,
    fold_range,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    reference_consistency,
    reference_inclusion,
    reference_root,
    root_of,
    subtree_of_leaves,
    verify_consistency,
    verify_inclusion,
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


# ---- proofs (RFC 9162 §2.1.3, §2.1.4) ---------------------------------------------------

RFC6962_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def range_hashes(ranges: list[Range], hashes: list[bytes]) -> list[bytes]:
    """What the store does, from leaf hashes: complete subtrees, folded per range."""
    subtrees = {
        (n.level, n.index): subtree_of_leaves(hashes[n.index << n.level : (n.index + 1) << n.level])
        for r in ranges
        for n in r.complete_subtrees()
    }
    return [fold_range(r, subtrees) for r in ranges]


def test_the_rfc6962_test_vectors_roots_and_every_proof_between_them() -> None:
    hashes = [leaf_hash(leaf) for leaf in RFC6962_LEAVES]
    for size in range(1, 9):
        root = bytes.fromhex(RFC6962_ROOTS[size - 1])
        assert root_of(hashes[:size]) == root == textbook_mth(RFC6962_LEAVES[:size])
        for index in range(size):
            proof = range_hashes(inclusion_ranges(index, size), hashes[:size])
            verify_inclusion(index, size, hashes[index], proof, root)
        for old in range(1, size + 1):
            proof = range_hashes(consistency_ranges(old, size), hashes[:size])
            old_root = bytes.fromhex(RFC6962_ROOTS[old - 1])
            verify_consistency(old, size, old_root, root, proof)


@given(st.integers(min_value=1, max_value=300), st.data())
def test_proofs_from_ranges_equal_the_textbook_recursion(size: int, data: st.DataObject) -> None:
    hashes = [sha256(i.to_bytes(4, "big")) for i in range(size)]
    root = reference_root(hashes)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = range_hashes(inclusion_ranges(index, size), hashes)
    assert proof == reference_inclusion(index, hashes)
    assert len(proof) <= size.bit_length()
    verify_inclusion(index, size, hashes[index], proof, root)
    old = data.draw(st.integers(min_value=0, max_value=size))
    consistency = range_hashes(consistency_ranges(old, size), hashes)
    assert consistency == reference_consistency(old, hashes)
    verify_consistency(old, size, reference_root(hashes[:old]), root, consistency)


@given(st.integers(min_value=2, max_value=200), st.data())
def test_any_change_to_an_inclusion_proof_is_refused(size: int, data: st.DataObject) -> None:
    hashes = [sha256(i.to_bytes(4, "big")) for i in range(size)]
    root = reference_root(hashes)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = reference_inclusion(index, hashes)
    other = data.draw(st.integers(min_value=0, max_value=size - 1).filter(lambda i: i != index))
    with pytest.raises(ProofError):
        verify_inclusion(other, size, hashes[index], proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, hashes[index], proof, sha256(root))
    with pytest.raises(ProofError):
        verify_inclusion(index, size, sha256(hashes[index]), proof, root)
    if proof:
        at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = [*proof[:at], sha256(proof[at]), *proof[at + 1 :]]
        with pytest.raises(ProofError):
            verify_inclusion(index, size, hashes[index], bad, root)
        with pytest.raises(ProofError):
            verify_inclusion(index, size, hashes[index], proof[:-1], root)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, hashes[index], [*proof, ZERO_HASH], root)


@given(st.integers(min_value=2, max_value=200), st.data())
def test_a_fork_or_a_changed_consistency_proof_is_refused(size: int, data: st.DataObject) -> None:
    hashes = [sha256(i.to_bytes(4, "big")) for i in range(size)]
    old = data.draw(st.integers(min_value=1, max_value=size - 1))
    proof = reference_consistency(old, hashes)
    old_root, root = reference_root(hashes[:old]), reference_root(hashes)
    forked = [*hashes]
    forked[data.draw(st.integers(min_value=0, max_value=old - 1))] = ZERO_HASH
    with pytest.raises(ProofError):
        verify_consistency(old, size, reference_root(forked[:old]), root, proof)
    with pytest.raises(ProofError):
        verify_consistency(old, size, old_root, reference_root(forked), proof)
    at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    with pytest.raises(ProofError):
        verify_consistency(old, size, old_root, root, [*proof[:at], ZERO_HASH, *proof[at + 1 :]])
    with pytest.raises(ProofError):
        verify_consistency(old, size, root, root, [])
    with pytest.raises(ProofError):
        verify_consistency(size, size, old_root, root, [])


def test_proof_arguments_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        inclusion_ranges(3, 3)
    with pytest.raises(ValueError):
        consistency_ranges(4, 3)
    with pytest.raises(ProofError):
        verify_inclusion(0, 0, ZERO_HASH, [], EMPTY_ROOT)
    with pytest.raises(ProofError):
        verify_consistency(0, 3, EMPTY_ROOT, ZERO_HASH, [ZERO_HASH])
