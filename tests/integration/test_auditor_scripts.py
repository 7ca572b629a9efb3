"""The auditor's openssl-only scripts accept what the log signs and reject every tampering.

Logs of several sizes are built with ``infra.merkle`` and signed with
``infra.notes``, exactly as the service serves them (receipts carry extra
signature lines: a rotated key with the same name, another log, a witness
cosignature). Each rejection asserts the script's ``FAIL`` reason; where the
reason is a proof failure it must be the very message ``infra.merkle`` gives
for the same input, so the shell and the Python verifier agree case by case.
The RFC 6962 test vectors check the scripts against hashes our code did not make.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from infra.merkle import (
    ProofError,
    leaf_hash,
    reference_consistency,
    reference_inclusion,
    reference_root,
    verify_consistency,
    verify_inclusion,
)
from infra.notes import (
    COSIGNATURE_KEY_TYPE,
    NOTE_KEY_TYPE,
    Checkpoint,
    Note,
    Receipt,
    Signature,
    Signer,
    cosign,
    format_hashes,
    key_id,
    parse_note,
    sign_note,
)
from tests.auditor_scripts import (
    KEY_FILE,
    LEAF_FILE,
    NEW_FILE,
    OLD_FILE,
    PROOF_FILE,
    RECEIPT_FILE,
    SCRIPTS,
    accepted,
    fail_reason,
    run_in,
    run_verify_consistency,
    run_verify_receipt,
)

NAME = "audit.example.com"
ORIGIN = "audit.example.com/t/0b6f3c1e-5d2a-4c7e-9a41-2f8d6e3b7c90"
OTHER_ORIGIN = "audit.example.com/t/5d0c1a4e-8a44-4a57-9f0e-2b7d3c9e6f11"
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "auditor-guide.md"


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@dataclass
class Keys:
    log: Signer
    rotated: Signer  # same name, another key: its lines must be skipped, not trusted
    other_log: Signer
    witness: Signer


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        log=Signer.generate(NAME),
        rotated=Signer.generate(NAME),
        other_log=Signer.generate("other.example.com"),
        witness=Signer.generate("witness.example.org", COSIGNATURE_KEY_TYPE),
    )


@dataclass
class Log:
    keys: Keys
    size: int
    origin: str = ORIGIN
    seed: str = "main"
    leaves: list[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.leaves = []
        for seq in range(1, self.size + 1):
            salt = base64.b64encode(hashlib.sha256(f"{self.seed}/{seq}".encode()).digest()[:16])
            self.leaves.append(
                b'{"log":"%s","salt":"%s","seq":%d,"type":"test.appended"}'
                % (self.origin.encode(), salt, seq)
            )

    def hashes(self, size: int) -> list[bytes]:
        return [leaf_hash(leaf) for leaf in self.leaves[:size]]

    def root(self, size: int) -> bytes:
        return reference_root(self.hashes(size))

    def note(self, size: int) -> Note:
        """The checkpoint as the service serves it: ours among unrelated signature lines."""
        body = Checkpoint(self.origin, size, self.root(size)).body()
        return Note(
            body,
            (
                sign_note(body, self.keys.rotated),
                sign_note(body, self.keys.log),
                sign_note(body, self.keys.other_log),
                cosign(body, self.keys.witness, 1_700_000_000),
            ),
        )

    def checkpoint(self, size: int) -> str:
        return self.note(size).text()

    def receipt(self, index: int, size: int) -> Receipt:
        return Receipt(index, tuple(reference_inclusion(index, self.hashes(size))), self.note(size))

    def proof(self, old: int, new: int) -> list[bytes]:
        return reference_consistency(old, self.hashes(new))


def only_signature(note: Note, signer: Signer) -> Note:
    return Note(note.body, (sign_note(note.body, signer),))


def inclusion_failure(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> str:
    """The reason infra.merkle rejects this inclusion; the tampering must be a real one."""
    with pytest.raises(ProofError) as raised:
        verify_inclusion(index, size, leaf_hash(leaf), proof, root)
    return str(raised.value)


def consistency_failure(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> str:
    with pytest.raises(ProofError) as raised:
        verify_consistency(old, new, old_root, new_root, proof)
    return str(raised.value)


# --- Receipts ----------------------------------------------------------------------------

SIZES = (1, 2, 3, 8, 33)
SAMPLED = (0, 1, 15, 16, 31, 32)
"""Leaves tried in the 33-leaf log (every leaf of the smaller ones): both edges of each
subtree boundary, and the lone right-most leaf."""


@pytest.mark.parametrize("size", SIZES)
def test_every_receipt_of_a_log_is_accepted(tmp_path: Path, keys: Keys, size: int) -> None:
    log = Log(keys, size)
    root = base64.b64encode(log.root(size)).decode()
    for index in range(size) if size <= 8 else SAMPLED:
        result = run_verify_receipt(
            tmp_path,
            log.leaves[index],
            log.receipt(index, size).text(),
            keys.log.verifier.pem,
            NAME,
            ORIGIN,
        )
        assert accepted(result) == (
            f"OK leaf index {index} (event seq {index + 1}) is in {ORIGIN} at tree size {size},"
            f" root {root}, signed by {NAME} (key id {keys.log.verifier.key_id.hex()})"
        )


def test_receipts_of_earlier_checkpoints_and_with_an_extra_line_are_accepted(
    tmp_path: Path, keys: Keys
) -> None:
    log = Log(keys, 100)
    for index, size in [(0, 1), (0, 64), (63, 64), (64, 65), (40, 100), (99, 100)]:
        receipt = log.receipt(index, size).text()
        result = run_verify_receipt(
            tmp_path, log.leaves[index], receipt, keys.log.verifier.pem, NAME, ORIGIN
        )
        assert accepted(result).startswith(f"OK leaf index {index} (event seq {index + 1}) ")
    with_extra = receipt.replace("\nindex ", "\nextra c29tZSBjb250ZXh0\nindex ", 1)
    assert Receipt.parse(with_extra) == Receipt.parse(receipt)
    accepted(
        run_verify_receipt(
            tmp_path, log.leaves[99], with_extra, keys.log.verifier.pem, NAME, ORIGIN
        )
    )


def test_a_leaf_is_hashed_byte_for_byte(tmp_path: Path, keys: Keys) -> None:
    """NUL bytes, newlines and non-ASCII in a leaf reach the hash unchanged."""
    leaves = [
        b"",
        b"\x00",
        b"\n",
        b"a\x00b\n\n",
        "caf\u00e9 \u2014 \U0001f512".encode(),
        bytes(range(256)),
    ]
    hashes = [leaf_hash(leaf) for leaf in leaves]
    body = Checkpoint(ORIGIN, len(leaves), reference_root(hashes)).body()
    note = Note(body, (sign_note(body, keys.log),))
    for index, leaf in enumerate(leaves):
        receipt = Receipt(index, tuple(reference_inclusion(index, hashes)), note).text()
        accepted(run_verify_receipt(tmp_path, leaf, receipt, keys.log.verifier.pem, NAME, ORIGIN))
        for tampered in (leaf + b"\n", leaf[:-1], b"\x00" + leaf):
            if tampered == leaf:
                continue
            result = run_verify_receipt(
                tmp_path, tampered, receipt, keys.log.verifier.pem, NAME, ORIGIN
            )
            assert fail_reason(result) == "the inclusion proof does not lead to the root"


CASES = [(1, 0), (3, 2), (8, 0), (33, 32)]


@pytest.mark.parametrize(("size", "index"), CASES)
def test_a_changed_leaf_byte_is_rejected(tmp_path: Path, keys: Keys, size: int, index: int) -> None:
    log = Log(keys, size)
    receipt = log.receipt(index, size)
    leaf = log.leaves[index]
    for at in (0, len(leaf) // 2, len(leaf) - 1):
        tampered = flip(leaf, at)
        expected = inclusion_failure(index, size, tampered, receipt.proof, log.root(size))
        result = run_verify_receipt(
            tmp_path, tampered, receipt.text(), keys.log.verifier.pem, NAME, ORIGIN
        )
        assert fail_reason(result) == expected == "the inclusion proof does not lead to the root"


@pytest.mark.parametrize(("size", "index"), [c for c in CASES if c[0] > 1])
def test_a_changed_proof_line_is_rejected(
    tmp_path: Path, keys: Keys, size: int, index: int
) -> None:
    log = Log(keys, size)
    receipt = log.receipt(index, size)
    for k in range(len(receipt.proof)):
        proof = list(receipt.proof)
        proof[k] = flip(proof[k], 31)
        tampered = Receipt(index, tuple(proof), receipt.checkpoint).text()
        expected = inclusion_failure(index, size, log.leaves[index], proof, log.root(size))
        result = run_verify_receipt(
            tmp_path, log.leaves[index], tampered, keys.log.verifier.pem, NAME, ORIGIN
        )
        assert fail_reason(result) == expected


@pytest.mark.parametrize(("size", "index"), CASES)
def test_a_changed_index_is_rejected(tmp_path: Path, keys: Keys, size: int, index: int) -> None:
    log = Log(keys, size)
    receipt = log.receipt(index, size)
    for other in sorted({0, index - 1, index + 1, size - 1, size, size + 5} - {index}):
        if other < 0:
            continue
        tampered = Receipt(other, receipt.proof, receipt.checkpoint).text()
        expected = inclusion_failure(other, size, log.leaves[index], receipt.proof, log.root(size))
        result = run_verify_receipt(
            tmp_path, log.leaves[index], tampered, keys.log.verifier.pem, NAME, ORIGIN
        )
        assert fail_reason(result) == expected


@pytest.mark.parametrize(("size", "index"), CASES)
def test_a_removed_or_added_proof_line_is_rejected(
    tmp_path: Path, keys: Keys, size: int, index: int
) -> None:
    log = Log(keys, size)
    receipt = log.receipt(index, size)
    variants = [(*receipt.proof, log.root(size)), (log.hashes(size)[index], *receipt.proof)]
    if receipt.proof:
        variants += [receipt.proof[:-1], receipt.proof[1:]]
    for proof in variants:
        tampered = Receipt(index, proof, receipt.checkpoint).text()
        expected = inclusion_failure(index, size, log.leaves[index], proof, log.root(size))
        assert expected in {"the inclusion proof is too long", "the inclusion proof is too short"}
        result = run_verify_receipt(
            tmp_path, log.leaves[index], tampered, keys.log.verifier.pem, NAME, ORIGIN
        )
        assert fail_reason(result) == expected


@pytest.mark.parametrize(("size", "index"), [(1, 0), (7, 3), (33, 20)])
def test_a_changed_checkpoint_size_is_rejected(
    tmp_path: Path, keys: Keys, size: int, index: int
) -> None:
    log = Log(keys, size)
    receipt = log.receipt(index, size)
    leaf, pem = log.leaves[index], keys.log.verifier.pem
    for other in (size + 1, size - 1, 2 * size):
        body = receipt.checkpoint.body.replace(f"\n{size}\n", f"\n{other}\n", 1)
        forged = Note(body, receipt.checkpoint.signatures)
        result = run_verify_receipt(
            tmp_path, leaf, Receipt(index, receipt.proof, forged).text(), pem, NAME, ORIGIN
        )
        assert fail_reason(result) == f"the signature of {NAME} on the checkpoint does not verify"


@pytest.mark.parametrize(("size", "index"), [(1, 0), (7, 3), (33, 20)])
def test_a_wrong_size_signed_by_the_log_is_judged_like_rfc_9162(
    tmp_path: Path, keys: Keys, size: int, index: int
) -> None:
    """A size the log itself signed wrongly is caught only when the proof's shape disagrees.

    Leaf 3 has a path of the same shape in any tree of 5 to 8 leaves, so a receipt
    cannot tell those sizes apart: the script accepts exactly when infra.merkle does, and
    consistency proofs between checkpoints are what pin the size down.
    """
    log = Log(keys, size)
    receipt = log.receipt(index, size)
    leaf, pem = log.leaves[index], keys.log.verifier.pem
    rejected = 0
    for other in (size + 1, size - 1, 2 * size):
        body = receipt.checkpoint.body.replace(f"\n{size}\n", f"\n{other}\n", 1)
        signed = only_signature(Note(body, ()), keys.log)
        result = run_verify_receipt(
            tmp_path, leaf, Receipt(index, receipt.proof, signed).text(), pem, NAME, ORIGIN
        )
        try:
            verify_inclusion(index, other, leaf_hash(leaf), receipt.proof, log.root(size))
        except ProofError as error:
            assert fail_reason(result) == str(error)
            rejected += 1
        else:
            accepted(result)
    assert rejected >= 1


@pytest.mark.parametrize(("size", "index"), [(1, 0), (8, 5), (33, 32)])
def test_a_receipt_not_signed_by_the_given_key_is_rejected(
    tmp_path: Path, keys: Keys, size: int, index: int
) -> None:
    log = Log(keys, size)
    receipt = log.receipt(index, size)
    leaf, pem, log_id = log.leaves[index], keys.log.verifier.pem, keys.log.verifier.key_id.hex()
    no_signature = f"the checkpoint has no signature by {NAME} (key id {log_id})"

    by_rotated = Receipt(
        index, receipt.proof, only_signature(receipt.checkpoint, keys.rotated)
    ).text()
    assert (
        fail_reason(run_verify_receipt(tmp_path, leaf, by_rotated, pem, NAME, ORIGIN))
        == no_signature
    )

    # The right key's name and id in front of a signature that is not its own: a forgery.
    ours = next(s for s in receipt.checkpoint.signatures if s.key_id == keys.log.verifier.key_id)
    for raw in (flip(ours.raw, 67), flip(ours.raw, 10), ours.raw[:-1]):
        forged = Note(receipt.checkpoint.body, (Signature(NAME, raw),))
        result = run_verify_receipt(
            tmp_path, leaf, Receipt(index, receipt.proof, forged).text(), pem, NAME, ORIGIN
        )
        assert fail_reason(result) == f"the signature of {NAME} on the checkpoint does not verify"

    # Verifying with another key, or under another name, finds no signature of ours.
    other_pem = keys.rotated.verifier.pem
    rotated_id = keys.rotated.verifier.key_id.hex()
    result = run_verify_receipt(tmp_path, leaf, by_rotated, other_pem, NAME, ORIGIN)
    accepted(result)  # the rotated key did sign this one
    result = run_verify_receipt(tmp_path, leaf, receipt.text(), other_pem, NAME, ORIGIN)
    accepted(result)  # and the served receipt carries its line too
    only_ours = Receipt(index, receipt.proof, only_signature(receipt.checkpoint, keys.log)).text()
    result = run_verify_receipt(tmp_path, leaf, only_ours, other_pem, NAME, ORIGIN)
    assert fail_reason(result) == f"the checkpoint has no signature by {NAME} (key id {rotated_id})"
    renamed_id = key_id("audit.example.net", NOTE_KEY_TYPE, keys.log.verifier.public_key).hex()
    result = run_verify_receipt(tmp_path, leaf, receipt.text(), pem, "audit.example.net", ORIGIN)
    assert (
        fail_reason(result)
        == f"the checkpoint has no signature by audit.example.net (key id {renamed_id})"
    )


def test_a_receipt_of_another_log_is_rejected(tmp_path: Path, keys: Keys) -> None:
    log = Log(keys, 7)
    receipt = log.receipt(3, 7).text()
    pem = keys.log.verifier.pem
    result = run_verify_receipt(tmp_path, log.leaves[3], receipt, pem, NAME, OTHER_ORIGIN)
    assert fail_reason(result) == f"the checkpoint is for the log '{ORIGIN}', not '{OTHER_ORIGIN}'"
    other = Log(keys, 7, origin=OTHER_ORIGIN)
    result = run_verify_receipt(
        tmp_path, other.leaves[3], other.receipt(3, 7).text(), pem, NAME, ORIGIN
    )
    assert fail_reason(result) == f"the checkpoint is for the log '{OTHER_ORIGIN}', not '{ORIGIN}'"
    result = run_verify_receipt(tmp_path, log.leaves[3], receipt, pem, NAME, ORIGIN + "/")
    assert fail_reason(result) == f"the checkpoint is for the log '{ORIGIN}', not '{ORIGIN}/'"


def test_malformed_receipts_and_keys_are_rejected_with_a_reason(tmp_path: Path, keys: Keys) -> None:
    log = Log(keys, 3)
    leaf, pem = log.leaves[1], keys.log.verifier.pem
    good = log.receipt(1, 3).text()
    line = good.split("\n")[2]
    not_decimal = "the receipt index is not a decimal of at most 18 digits without leading zeros"
    not_a_hash = "proof line 1 of the receipt is not a base64 SHA-256 hash"
    root_line = base64.b64encode(log.root(3)).decode()
    size_not_decimal = (
        "the size of the checkpoint is not a decimal of at most 18 digits without leading zeros"
    )
    not_a_checkpoint = "the checkpoint does not start with origin, size and root lines"
    cases = [
        (good.replace("@v1", "@v2", 1), "the receipt does not start with c2sp.org/tlog-proof@v1"),
        ("", "the receipt does not start with c2sp.org/tlog-proof@v1"),
        (good.replace("index 1\n", "", 1), "the receipt has no 'index' line"),
        (good.replace("index 1\n", "index 01\n", 1), not_decimal),
        (good.replace("index 1\n", "index -1\n", 1), not_decimal),
        (good.replace("index 1\n", "index 1 \n", 1), not_decimal),
        (good.replace("index 1\n", "index 1234567890123456789\n", 1), not_decimal),
        (good.replace(line, line[:-2] + "==", 1), not_a_hash),
        (good.replace(line, line + "AAAA", 1), not_a_hash),
        (good.split("\n\n")[0] + "\n", "the receipt has no empty line before its checkpoint"),
        (good.replace("\n", "\r\n"), "the receipt holds control characters other than newlines"),
        (good[:-1], "the receipt does not end with a newline"),
        (good.split("\u2014")[0], "the checkpoint has no signature lines"),
        (good.replace("\u2014 ", "- ", 1), "the checkpoint has a malformed signature line"),
        (good + "x" * 70_000 + "\n", "the receipt is larger than 65536 bytes"),
        (good.replace(f"\n{ORIGIN}\n3\n", f"\n{ORIGIN}\n03\n"), size_not_decimal),
        (good.replace(f"\n{ORIGIN}\n3\n", f"\n{ORIGIN}\n-3\n"), size_not_decimal),
        (
            good.replace(root_line, root_line[:-1] + "A"),
            "the root of the checkpoint is not a base64 SHA-256 hash",
        ),
        (good.replace(f"\n3\n{root_line}\n", "\n"), not_a_checkpoint),
    ]
    for receipt, reason in cases:
        result = run_verify_receipt(tmp_path, leaf, receipt, pem, NAME, ORIGIN)
        assert fail_reason(result) == reason, receipt[:200]

    private = keys.log.skey
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    for key, reason in [
        (private, "the public key file is not a PEM public key"),
        ("", "the public key file is not a PEM public key"),
        (ec_pem, "the public key is not an Ed25519 key"),
    ]:
        assert fail_reason(run_verify_receipt(tmp_path, leaf, good, key, NAME, ORIGIN)) == reason
    for name in ("", "a b", "a+b", "a\u2014b"):
        result = run_verify_receipt(tmp_path, leaf, good, pem, name, ORIGIN)
        assert fail_reason(result).startswith("the key name is not 1-255 characters")


def test_wrong_arguments_get_a_usage_line_and_missing_files_a_reason(
    tmp_path: Path, keys: Keys
) -> None:
    script = str(SCRIPTS / "verify-receipt.sh")
    result = run_in(tmp_path, {}, [script, LEAF_FILE])
    assert fail_reason(result) == "usage: verify-receipt.sh LEAF RECEIPT PUBKEY_PEM KEY_NAME ORIGIN"
    result = run_in(tmp_path, {}, [script, LEAF_FILE, RECEIPT_FILE, KEY_FILE, NAME, ORIGIN])
    assert fail_reason(result) == f"cannot read the leaf ({LEAF_FILE})"
    result = run_in(
        tmp_path, {LEAF_FILE: b"x"}, [script, LEAF_FILE, RECEIPT_FILE, KEY_FILE, NAME, ORIGIN]
    )
    assert fail_reason(result) == f"cannot read the public key file ({KEY_FILE})"


def test_the_scripts_leave_nothing_behind(tmp_path: Path, keys: Keys) -> None:
    """Their work directory is removed on exit, whether they accept or reject."""
    log = Log(keys, 5)
    receipt = log.receipt(2, 5).text()
    for leaf in (log.leaves[2], b"tampered"):
        before = set(tmp_path.glob("run-*"))
        run_verify_receipt(tmp_path, leaf, receipt, keys.log.verifier.pem, NAME, ORIGIN)
        (run_dir,) = set(tmp_path.glob("run-*")) - before
        assert {p.name for p in run_dir.iterdir()} == {LEAF_FILE, RECEIPT_FILE, KEY_FILE}
    before = set(tmp_path.glob("run-*"))
    proof = format_hashes(log.proof(2, 5))
    run_verify_consistency(
        tmp_path, log.checkpoint(2), log.checkpoint(5), proof, keys.log.verifier.pem, NAME, ORIGIN
    )
    (run_dir,) = set(tmp_path.glob("run-*")) - before
    assert {p.name for p in run_dir.iterdir()} == {OLD_FILE, NEW_FILE, PROOF_FILE, KEY_FILE}


# --- Consistency -------------------------------------------------------------------------

PAIRS = [
    (0, 5), (1, 1), (1, 2), (2, 5), (3, 7), (4, 8), (7, 8), (8, 16), (16, 33), (32, 33),
    (33, 33), (5, 100), (99, 100),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new"), PAIRS)
def test_consistency_between_checkpoints_is_accepted(
    tmp_path: Path, keys: Keys, old: int, new: int
) -> None:
    log = Log(keys, new)
    proof = format_hashes(log.proof(old, new))
    result = run_verify_consistency(
        tmp_path,
        log.checkpoint(old),
        log.checkpoint(new),
        proof,
        keys.log.verifier.pem,
        NAME,
        ORIGIN,
    )
    old_root = base64.b64encode(log.root(old)).decode()
    new_root = base64.b64encode(log.root(new)).decode()
    assert accepted(result) == (
        f"OK {ORIGIN} grew from size {old} (root {old_root}) to size {new} (root {new_root})"
        f" by appending only; both signed by {NAME} (key id {keys.log.verifier.key_id.hex()})"
    )


TAMPER_PAIRS = [(1, 2), (3, 7), (6, 8), (31, 33)]


@pytest.mark.parametrize(("old", "new"), TAMPER_PAIRS)
def test_a_changed_consistency_proof_line_is_rejected(
    tmp_path: Path, keys: Keys, old: int, new: int
) -> None:
    log = Log(keys, new)
    good = log.proof(old, new)
    old_cp, new_cp, pem = log.checkpoint(old), log.checkpoint(new), keys.log.verifier.pem
    for k in range(len(good)):
        proof = list(good)
        proof[k] = flip(proof[k], 0)
        expected = consistency_failure(old, new, log.root(old), log.root(new), proof)
        result = run_verify_consistency(
            tmp_path, old_cp, new_cp, format_hashes(proof), pem, NAME, ORIGIN
        )
        assert fail_reason(result) == expected
    for proof in (good[:-1], good[1:], [*good, log.root(new)], [log.root(old), *good]):
        expected = consistency_failure(old, new, log.root(old), log.root(new), proof)
        result = run_verify_consistency(
            tmp_path, old_cp, new_cp, format_hashes(proof), pem, NAME, ORIGIN
        )
        assert fail_reason(result) == expected


@pytest.mark.parametrize(("old", "new"), TAMPER_PAIRS)
def test_swapped_checkpoints_are_rejected(tmp_path: Path, keys: Keys, old: int, new: int) -> None:
    log = Log(keys, new)
    proof = format_hashes(log.proof(old, new))
    result = run_verify_consistency(
        tmp_path,
        log.checkpoint(new),
        log.checkpoint(old),
        proof,
        keys.log.verifier.pem,
        NAME,
        ORIGIN,
    )
    assert fail_reason(result) == f"the old size {new} is above the new size {old}"


@pytest.mark.parametrize(
    ("old", "new"), [(1, 1), (3, 3), (1, 2), (3, 7), (4, 8), (8, 16), (16, 33), (33, 33)]
)
def test_a_forked_old_checkpoint_is_rejected(
    tmp_path: Path, keys: Keys, old: int, new: int
) -> None:
    """The log signed two different histories of the same size: the proof exposes it."""
    log, fork = Log(keys, new), Log(keys, new, seed="fork")
    forked_old = fork.checkpoint(old)  # validly signed by the log's own key
    proof = log.proof(old, new)
    expected = consistency_failure(old, new, fork.root(old), log.root(new), proof)
    assert expected in {
        "two different roots for the same size: the log forked",
        "the consistency proof does not lead to the old root",
        # A power-of-two old tree starts the path with its own root; the new root exposes it.
        "the consistency proof does not lead to the new root",
    }
    result = run_verify_consistency(
        tmp_path,
        forked_old,
        log.checkpoint(new),
        format_hashes(proof),
        keys.log.verifier.pem,
        NAME,
        ORIGIN,
    )
    assert fail_reason(result) == expected
    # The fork's own proof does not reach the real new root either.
    if old != new:
        fork_proof = fork.proof(old, new)
        expected = consistency_failure(old, new, fork.root(old), log.root(new), fork_proof)
        result = run_verify_consistency(
            tmp_path,
            forked_old,
            log.checkpoint(new),
            format_hashes(fork_proof),
            keys.log.verifier.pem,
            NAME,
            ORIGIN,
        )
        assert (
            fail_reason(result) == expected == "the consistency proof does not lead to the new root"
        )


def test_consistency_with_a_wrong_key_or_log_is_rejected(tmp_path: Path, keys: Keys) -> None:
    log = Log(keys, 7)
    proof = format_hashes(log.proof(3, 7))
    pem, log_id = keys.log.verifier.pem, keys.log.verifier.key_id.hex()
    old_cp, new_cp = log.checkpoint(3), log.checkpoint(7)
    stranger = Signer.generate(NAME)
    only_stranger = [only_signature(log.note(n), stranger).text() for n in (3, 7)]

    result = run_verify_consistency(tmp_path, only_stranger[0], new_cp, proof, pem, NAME, ORIGIN)
    assert fail_reason(result) == f"the old checkpoint has no signature by {NAME} (key id {log_id})"
    result = run_verify_consistency(tmp_path, old_cp, only_stranger[1], proof, pem, NAME, ORIGIN)
    assert fail_reason(result) == f"the new checkpoint has no signature by {NAME} (key id {log_id})"
    stranger_id = stranger.verifier.key_id.hex()
    result = run_verify_consistency(
        tmp_path, old_cp, new_cp, proof, stranger.verifier.pem, NAME, ORIGIN
    )
    assert (
        fail_reason(result)
        == f"the old checkpoint has no signature by {NAME} (key id {stranger_id})"
    )
    result = run_verify_consistency(tmp_path, old_cp, new_cp, proof, pem, NAME, OTHER_ORIGIN)
    assert (
        fail_reason(result) == f"the old checkpoint is for the log '{ORIGIN}', not '{OTHER_ORIGIN}'"
    )
    other = Log(keys, 7, origin=OTHER_ORIGIN)
    result = run_verify_consistency(tmp_path, old_cp, other.checkpoint(7), proof, pem, NAME, ORIGIN)
    assert (
        fail_reason(result) == f"the new checkpoint is for the log '{OTHER_ORIGIN}', not '{ORIGIN}'"
    )
    tampered_new = new_cp.replace("\n7\n", "\n8\n", 1)
    result = run_verify_consistency(tmp_path, old_cp, tampered_new, proof, pem, NAME, ORIGIN)
    assert fail_reason(result) == f"the signature of {NAME} on the new checkpoint does not verify"


def test_malformed_consistency_proofs_are_rejected_with_a_reason(
    tmp_path: Path, keys: Keys
) -> None:
    log = Log(keys, 7)
    pem = keys.log.verifier.pem
    good = format_hashes(log.proof(3, 7))
    first = good.split("\n")[0]
    cases = [
        (3, 7, "", "the consistency proof is empty"),
        (3, 3, good, "a consistency proof from size 0 or to the same size must be empty"),
        (0, 7, good, "a consistency proof from size 0 or to the same size must be empty"),
        (
            3,
            7,
            good.replace(first, first[:20], 1),
            "line 1 of the consistency proof is not a base64 SHA-256 hash",
        ),
        (3, 7, good + "\n", "line 5 of the consistency proof is not a base64 SHA-256 hash"),
        (
            3,
            7,
            good.replace("\n", "\r\n"),
            "the consistency proof holds control characters other than newlines",
        ),
        (3, 7, good[:-1], "the consistency proof does not end with a newline"),
    ]
    assert good.count("\n") == 4
    for old, new, proof, reason in cases:
        result = run_verify_consistency(
            tmp_path, log.checkpoint(old), log.checkpoint(new), proof, pem, NAME, ORIGIN
        )
        assert fail_reason(result) == reason, (old, new, proof)
    script = str(SCRIPTS / "verify-consistency.sh")
    result = run_in(tmp_path, {}, [script, OLD_FILE, NEW_FILE, PROOF_FILE])
    usage = "verify-consistency.sh OLD_CHECKPOINT NEW_CHECKPOINT PROOF PUBKEY_PEM KEY_NAME ORIGIN"
    assert fail_reason(result) == f"usage: {usage}"


# --- RFC 6962 test vectors ---------------------------------------------------------------
# The reference test data of RFC 6962 implementations (certificate-transparency,
# transparency-dev/merkle): eight leaves and the root of every prefix. They were not
# made by our code, so agreeing with them checks the scripts' hashing independently.

VECTOR_LEAVES = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
VECTOR_ROOTS = {
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
VECTOR_INCLUSION = {  # (index, size): path
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
VECTOR_CONSISTENCY = {  # (old, new): proof
    (1, 8): VECTOR_INCLUSION[(0, 8)],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}


def vector_checkpoint(size: int, signer: Signer) -> str:
    body = Checkpoint(ORIGIN, size, bytes.fromhex(VECTOR_ROOTS[size])).body()
    return Note(body, (sign_note(body, signer),)).text()


def test_the_rfc_6962_vectors_verify(tmp_path: Path, keys: Keys) -> None:
    pem = keys.log.verifier.pem
    leaves = [bytes.fromhex(x) for x in VECTOR_LEAVES]
    hashes = [leaf_hash(leaf) for leaf in leaves]
    for (index, size), path in VECTOR_INCLUSION.items():
        proof = tuple(bytes.fromhex(h) for h in path)
        receipt = Receipt(index, proof, parse_note(vector_checkpoint(size, keys.log))).text()
        accepted(run_verify_receipt(tmp_path, leaves[index], receipt, pem, NAME, ORIGIN))
    for size in (3, 5, 6):
        for index in range(size):
            proof = tuple(reference_inclusion(index, hashes[:size]))
            text = Receipt(index, proof, parse_note(vector_checkpoint(size, keys.log))).text()
            accepted(run_verify_receipt(tmp_path, leaves[index], text, pem, NAME, ORIGIN))
    for (old, new), path in VECTOR_CONSISTENCY.items():
        proof_text = format_hashes([bytes.fromhex(h) for h in path])
        old_cp, new_cp = vector_checkpoint(old, keys.log), vector_checkpoint(new, keys.log)
        accepted(run_verify_consistency(tmp_path, old_cp, new_cp, proof_text, pem, NAME, ORIGIN))
    # The vectors' root of size 7 is not the root of size 8: a checkpoint that lies is caught.
    lying = Receipt(
        5,
        tuple(bytes.fromhex(h) for h in VECTOR_INCLUSION[(5, 8)]),
        parse_note(vector_checkpoint(7, keys.log)),
    )
    expected = inclusion_failure(5, 7, leaves[5], lying.proof, bytes.fromhex(VECTOR_ROOTS[7]))
    result = run_verify_receipt(tmp_path, leaves[5], lying.text(), pem, NAME, ORIGIN)
    assert fail_reason(result) == expected


# --- The guide ---------------------------------------------------------------------------


def guide_block(marker: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    found = re.search(rf"<!-- {re.escape(marker)} -->\s*```[^\n]*\n(.*?)\n```", text, re.DOTALL)
    assert found, f"no code block after <!-- {marker} --> in {GUIDE.name}"
    return found.group(1)


def run_by_hand(tmp_path: Path, files: dict[str, bytes], *markers: str, **variables: str) -> str:
    """Run the guide's blocks as written, after the variables it tells the reader to set."""
    preamble = "".join(
        f"{k}={shlex.quote(v)}\n" for k, v in {"NAME": NAME, "ORIGIN": ORIGIN, **variables}.items()
    )
    script = preamble + "\n".join(guide_block(marker) for marker in markers)
    result = run_in(tmp_path, files, ["-c", script])
    return result.stdout + result.stderr


def test_the_guides_key_steps_compute_the_key_id(tmp_path: Path, keys: Keys) -> None:
    output = run_by_hand(tmp_path, {KEY_FILE: keys.log.verifier.pem.encode()}, "by-hand:key")
    assert (
        output
        == f" 30 2a 30 05 06 03 2b 65 70 03 21 00\nkey id: {keys.log.verifier.key_id.hex()}\n"
    )


def test_the_guides_vkey_steps_make_the_same_pem(tmp_path: Path, keys: Keys) -> None:
    verifiers = [keys.log.verifier]
    while not any("+" in v.vkey.split("+", 2)[2] for v in verifiers):
        verifiers.append(Signer.generate(NAME).verifier)  # a key whose base64 holds a '+'
    for verifier in verifiers:
        before = set(tmp_path.glob("run-*"))
        output = run_by_hand(tmp_path, {}, "by-hand:vkey", VKEY=verifier.vkey)
        assert output == " 01\n"
        (run_dir,) = set(tmp_path.glob("run-*")) - before
        assert (run_dir / KEY_FILE).read_text() == verifier.pem


RECEIPT_OK = ["origin: ok", "Signature Verified Successfully", "index: ok", "root: ok"]


@pytest.mark.parametrize(("size", "index"), [(1, 0), (7, 3), (8, 7), (33, 17)])
def test_the_guides_receipt_steps_accept_a_good_receipt(
    tmp_path: Path, keys: Keys, size: int, index: int
) -> None:
    log = Log(keys, size)
    files = {
        LEAF_FILE: log.leaves[index],
        RECEIPT_FILE: log.receipt(index, size).text().encode(),
        KEY_FILE: keys.log.verifier.pem.encode(),
    }
    output = run_by_hand(tmp_path, files, "by-hand:key", "by-hand:receipt")
    assert [line for line in output.splitlines() if line in RECEIPT_OK] == RECEIPT_OK, output
    assert f"index {index} in a tree of {size} leaves, root {log.root(size).hex()}" in output
    assert f"leaf hash: {leaf_hash(log.leaves[index]).hex()}" in output


def test_the_guides_receipt_steps_show_each_tampering(tmp_path: Path, keys: Keys) -> None:
    log = Log(keys, 7)
    receipt = log.receipt(3, 7)
    proof = list(receipt.proof)
    proof[1] = flip(proof[1], 5)
    forged = Note(receipt.checkpoint.body.replace("\n7\n", "\n8\n"), receipt.checkpoint.signatures)
    cases = [
        (flip(log.leaves[3], 9), receipt, ORIGIN, "root: MISMATCH"),
        (log.leaves[3], Receipt(3, tuple(proof), receipt.checkpoint), ORIGIN, "root: MISMATCH"),
        (
            log.leaves[3],
            Receipt(3, receipt.proof[:-1], receipt.checkpoint),
            ORIGIN,
            "root: MISMATCH",
        ),
        (
            log.leaves[3],
            Receipt(3, (*receipt.proof, proof[1]), receipt.checkpoint),
            ORIGIN,
            "root: MISMATCH",
        ),
        (log.leaves[3], Receipt(2, receipt.proof, receipt.checkpoint), ORIGIN, "root: MISMATCH"),
        (
            log.leaves[3],
            Receipt(9, receipt.proof, receipt.checkpoint),
            ORIGIN,
            "index: NOT IN THE TREE",
        ),
        (
            log.leaves[3],
            Receipt(3, receipt.proof, forged),
            ORIGIN,
            "Signature Verification Failure",
        ),
        (log.leaves[3], receipt, OTHER_ORIGIN, "origin: WRONG LOG"),
    ]
    for leaf, tampered, origin, verdict in cases:
        files = {
            LEAF_FILE: leaf,
            RECEIPT_FILE: tampered.text().encode(),
            KEY_FILE: keys.log.verifier.pem.encode(),
        }
        output = run_by_hand(tmp_path, files, "by-hand:key", "by-hand:receipt", ORIGIN=origin)
        assert verdict in output.splitlines(), output
        assert not set(RECEIPT_OK) <= set(output.splitlines()), output


CONSISTENCY_OK = [
    "old origin: ok",
    "Signature Verified Successfully",
    "new origin: ok",
    "Signature Verified Successfully",
    "sizes: ok",
    "old root: ok",
    "new root: ok",
]


@pytest.mark.parametrize(("old", "new"), [(1, 2), (3, 7), (4, 8), (6, 8), (16, 33), (31, 33)])
def test_the_guides_consistency_steps_accept_a_good_proof(
    tmp_path: Path, keys: Keys, old: int, new: int
) -> None:
    log = Log(keys, new)
    files = {
        OLD_FILE: log.checkpoint(old).encode(),
        NEW_FILE: log.checkpoint(new).encode(),
        PROOF_FILE: format_hashes(log.proof(old, new)).encode(),
        KEY_FILE: keys.log.verifier.pem.encode(),
    }
    output = run_by_hand(tmp_path, files, "by-hand:key", "by-hand:consistency")
    assert [line for line in output.splitlines() if line in CONSISTENCY_OK] == CONSISTENCY_OK, (
        output
    )


def test_the_guides_consistency_steps_show_each_tampering(tmp_path: Path, keys: Keys) -> None:
    log, fork = Log(keys, 8), Log(keys, 8, seed="fork")
    good = log.proof(3, 7)
    changed = list(good)
    changed[2] = flip(changed[2], 0)
    # A stranger's signature behind our name and key id: the line is found, and fails.
    stranger_sig = sign_note(log.note(3).body, Signer.generate(NAME))
    forged_id = Signature(NAME, keys.log.verifier.key_id + stranger_sig.raw[4:])
    forged = Note(log.note(3).body, (forged_id,)).text()
    cases = [
        (log.checkpoint(3), log.checkpoint(7), changed, "old root: MISMATCH"),
        (fork.checkpoint(3), log.checkpoint(7), good, "old root: MISMATCH"),
        (fork.checkpoint(4), log.checkpoint(8), log.proof(4, 8), "new root: MISMATCH"),
        (log.checkpoint(3), log.checkpoint(7), good[:-1], "new root: MISMATCH"),
        (log.checkpoint(3), log.checkpoint(7), [*good, good[0]], "new root: MISMATCH"),
        (log.checkpoint(7), log.checkpoint(3), good, "sizes: NOT OLD < NEW"),
        (forged, log.checkpoint(7), good, "Signature Verification Failure"),
        (
            Log(keys, 3, origin=OTHER_ORIGIN).checkpoint(3),
            log.checkpoint(7),
            good,
            "old origin: WRONG LOG",
        ),
    ]
    for old_cp, new_cp, proof, verdict in cases:
        files = {
            OLD_FILE: old_cp.encode(),
            NEW_FILE: new_cp.encode(),
            PROOF_FILE: format_hashes(proof).encode(),
            KEY_FILE: keys.log.verifier.pem.encode(),
        }
        output = run_by_hand(tmp_path, files, "by-hand:key", "by-hand:consistency")
        assert verdict in output.splitlines(), (verdict, output)
        assert [line for line in output.splitlines() if line in CONSISTENCY_OK] != CONSISTENCY_OK
