"""docs/event-format.md cannot drift: its worked example and its verifier are checked here.

The example's leaves must be canonical and carry exactly the documented fields; every
hash, node, root and frontier it prints must recompute with ``infra.merkle``; its
personal value must open with the documented AAD. The standalone verifier printed in
the doc is executed as written: it must accept the example and refuse it once a single
byte changes. Nothing here touches anything but the doc file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra import canonical
from infra.eventstore import ACTOR_KINDS, LEAF_FORMAT_VERSION
from infra.keyring import NONCE_SIZE, open_sealed, pii_aad
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

DOC = Path(__file__).resolve().parents[2] / "docs" / "event-format.md"
TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
Verifier = Callable[[str, list[bytes], bytes, bytes], bool]


@cache
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def block_after(marker: str) -> str:
    """The body of the first fenced code block after ``<!-- marker -->``."""
    found = re.search(
        rf"<!-- {re.escape(marker)} -->\s*```[^\n]*\n(.*?)\n```", doc_text(), re.DOTALL
    )
    assert found, f"no code block after <!-- {marker} --> in {DOC.name}"
    return found.group(1)


def assignments(marker: str) -> dict[str, str]:
    """``name = value`` lines of a block; ``#`` lines are comments."""
    values = {}
    for line in block_after(marker).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition(" = ")
        assert sep, f"not a 'name = value' line: {line!r}"
        values[name.strip()] = value.strip()
    return values


def leaves() -> list[bytes]:
    return [line.encode() for line in block_after("example:leaves").splitlines()]


def hashes() -> dict[str, str]:
    return assignments("example:hashes")


def hex_value(name: str) -> bytes:
    return bytes.fromhex(hashes()[name])


def documented_fields() -> set[str]:
    section = doc_text().split("## 2. The leaf", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


@cache
def doc_verifier_namespace() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "event_format_doc_verifier"}
    exec(compile(block_after("verifier"), f"{DOC.name}:verifier", "exec"), namespace)
    return namespace


def doc_verify() -> Verifier:
    verify: Verifier = doc_verifier_namespace()["verify"]
    return verify


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def chain_of(leaf_bytes: list[bytes]) -> bytes:
    chain = ZERO_HASH
    for leaf in leaf_bytes:
        chain = chain_hash(chain, leaf_hash(leaf))
    return chain


# ---- the example -----------------------------------------------------------------------


def test_the_example_has_three_canonical_leaves_with_exactly_the_documented_fields() -> None:
    example = leaves()
    assert len(example) == 3
    fields = documented_fields()
    assert len(fields) == 14
    for leaf in example:
        assert canonical.encode(json.loads(leaf)) == leaf
        assert set(json.loads(leaf)) == fields


def test_the_example_leaves_follow_the_documented_rules() -> None:
    origin = hashes()["origin"]
    decoded = [json.loads(leaf) for leaf in leaves()]
    for seq, event in enumerate(decoded, start=1):
        assert event["v"] == LEAF_FORMAT_VERSION
        assert event["log"] == origin
        assert event["seq"] == seq
        assert event["version"] == seq
        assert TS.fullmatch(event["ts"])
        assert len(base64.b64decode(event["salt"], validate=True)) == 16
        assert event["actor"]["kind"] in ACTOR_KINDS
        assert str(UUID(event["id"])) == event["id"]
        assert str(UUID(event["correlation"])) == event["correlation"]
    assert [e["ts"] for e in decoded] == sorted(e["ts"] for e in decoded)


def test_leaf_one_hex_dump_is_its_bytes() -> None:
    dump = "".join(block_after("example:leaf1-hex").split())
    assert bytes.fromhex(dump) == leaves()[0]
    assert f"Leaf 1 is {len(leaves()[0])} bytes" in doc_text()


def test_the_leaf_and_chain_hashes_recompute() -> None:
    chain = ZERO_HASH
    assert hex_value("chain_hash[0]") == ZERO_HASH
    for seq, leaf in enumerate(leaves(), start=1):
        lh = leaf_hash(leaf)
        assert lh == hashlib.sha256(b"\x00" + leaf).digest()
        assert hex_value(f"leaf_hash[{seq}]") == lh
        chain = chain_hash(chain, lh)
        assert hex_value(f"chain_hash[{seq}]") == chain


def test_the_merkle_node_roots_and_frontier_recompute() -> None:
    lh = [leaf_hash(leaf) for leaf in leaves()]
    assert hex_value("node[1,0]") == node_hash(lh[0], lh[1])
    assert hex_value("root[0]") == EMPTY_ROOT == reference_root([])
    for n in (1, 2, 3):
        assert hex_value(f"root[{n}]") == root_of(lh[:n]) == reference_root(lh[:n])
    assert hex_value("root[3]") == node_hash(node_hash(lh[0], lh[1]), lh[2])

    frontier = Frontier()
    closed = [node for h in lh for node in frontier.append(h)]
    assert [(n.level, n.index, n.hash) for n in closed] == [(1, 0, hex_value("node[1,0]"))]
    assert hex_value("frontier[3]") == frontier.to_bytes()
    assert Frontier.from_bytes(3, hex_value("frontier[3]")).root() == hex_value("root[3]")


def test_the_personal_value_opens_and_is_referenced_by_leaf_one() -> None:
    pv = assignments("example:personal")
    first = json.loads(leaves()[0])
    sealed = bytes.fromhex(pv["sealed"])
    assert hashlib.sha256(sealed).hexdigest() == pv["value_hash"] == first["pii"][pv["field"]]
    tenant = UUID(hashes()["origin"].rsplit("/t/", 1)[1])
    aad = pii_aad(tenant, pv["subject"], pv["field"], UUID(pv["event_id"]))
    assert aad.decode() == pv["aad"]
    assert pv["event_id"] == first["id"]
    key = bytes.fromhex(pv["subject_key"])
    assert open_sealed(key, sealed, aad).decode() == pv["plaintext"]
    nonce, body = sealed[:NONCE_SIZE], sealed[NONCE_SIZE:]
    assert AESGCM(key).decrypt(nonce, body, aad) == pv["plaintext"].encode()
    assert len(sealed) == 12 + len(pv["plaintext"].encode()) + 16


# ---- the standalone verifier ---------------------------------------------------------


def test_the_doc_verifier_imports_only_hashlib_and_json() -> None:
    imported = re.findall(r"^\s*(?:import|from)\s+(\w+)", block_after("verifier"), re.MULTILINE)
    assert set(imported) <= {"hashlib", "json"}


def test_the_doc_verifier_accepts_the_example() -> None:
    verify = doc_verify()
    assert verify(hashes()["origin"], leaves(), hex_value("chain_hash[3]"), hex_value("root[3]"))
    for n in (1, 2):
        chain, root = hex_value(f"chain_hash[{n}]"), hex_value(f"root[{n}]")
        assert verify(hashes()["origin"], leaves()[:n], chain, root)
    assert verify(hashes()["origin"], [], ZERO_HASH, EMPTY_ROOT)


@pytest.mark.parametrize("seq", [1, 2, 3])
def test_the_doc_verifier_refuses_a_flipped_byte_in_any_leaf(seq: int) -> None:
    verify = doc_verify()
    origin, chain, root = hashes()["origin"], hex_value("chain_hash[3]"), hex_value("root[3]")
    example = leaves()
    for index in (0, len(example[seq - 1]) // 2, len(example[seq - 1]) - 1):
        tampered = list(example)
        tampered[seq - 1] = flip_byte(example[seq - 1], index)
        assert not verify(origin, tampered, chain, root)


def test_the_doc_verifier_refuses_a_flipped_byte_in_the_head() -> None:
    verify = doc_verify()
    origin, chain, root = hashes()["origin"], hex_value("chain_hash[3]"), hex_value("root[3]")
    assert not verify(origin, leaves(), flip_byte(chain, 31), root)
    assert not verify(origin, leaves(), chain, flip_byte(root, 0))
    assert not verify(origin.replace("audit", "audjt"), leaves(), chain, root)


def test_the_doc_verifier_refuses_rewritten_leaves_even_with_recomputed_hashes() -> None:
    verify = doc_verify()
    origin = hashes()["origin"]
    first = json.loads(leaves()[0])
    rewrites = {
        "padded": json.dumps(first).encode(),
        "seq as true": canonical.encode({**first, "seq": True}),
        "a float": leaves()[0].replace(b'"version":1}', b'"version":1.0}'),
        "seq 2 first": leaves()[1],
        "duplicate key": leaves()[0].replace(b'{"actor"', b'{"actor":{},"actor"', 1),
    }
    for name, leaf in rewrites.items():
        tampered = [leaf, *leaves()[1:]]
        hashes_ = [leaf_hash(x) for x in tampered]
        assert not verify(origin, tampered, chain_of(tampered), root_of(hashes_)), name


def test_the_doc_verifier_refuses_time_going_backwards() -> None:
    verify = doc_verify()
    second = json.loads(leaves()[1])
    earlier = canonical.encode({**second, "ts": "2026-11-24T17:18:00.000000Z"})
    tampered = [leaves()[0], earlier, leaves()[2]]
    root = root_of(leaf_hash(x) for x in tampered)
    assert not verify(hashes()["origin"], tampered, chain_of(tampered), root)


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "B": 2, "a_": 3, "a": 4, "_": [True, False, None]},
        {"s": '\x00\x01\x08\t\n\x0b\x0c\r\x1f "\\/\x7f\u00e9\u2028\U0001f600'},
        {"n": [0, -1, 2**53 - 1, -(2**53 - 1)], "nested": {"z": {}, "y": []}},
    ],
    ids=["key order", "string escapes", "integers and nesting"],
)
def test_the_doc_canonical_encoder_matches_infra_canonical(value: dict[str, Any]) -> None:
    assert doc_verifier_namespace()["canonical"](value) == canonical.encode(value)
