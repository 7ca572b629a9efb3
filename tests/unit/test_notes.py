"""Signed notes, checkpoints, cosignatures and receipts: the C2SP text formats."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from nacl.signing import VerifyKey

from infra.notes import (
    COSIGNATURE_KEY_TYPE,
    NOTE_KEY_TYPE,
    Checkpoint,
    Note,
    NoteError,
    Receipt,
    Signer,
    Verifier,
    cosign,
    parse_note,
    sign_note,
    verified_cosigners,
    verified_signers,
)

ROOT = hashlib.sha256(b"root").digest()


def test_the_key_id_is_the_first_four_bytes_of_the_hash_of_name_newline_type_key() -> None:
    signer = Signer.generate("log.example/t/1")
    public = signer.verifier.public_key
    expected = hashlib.sha256(b"log.example/t/1\n\x01" + public).digest()[:4]
    assert signer.verifier.key_id == expected
    cosigner = Signer.generate("witness.example", COSIGNATURE_KEY_TYPE)
    expected = hashlib.sha256(b"witness.example\n\x04" + cosigner.verifier.public_key).digest()
    assert cosigner.verifier.key_id == expected[:4]


def test_keys_round_trip_through_their_text_forms_and_the_seed_never_shows() -> None:
    for _ in range(50):  # base64 of random keys often holds '+'
        signer = Signer.generate("log.example")
        assert Signer.parse(signer.skey).verifier == signer.verifier
        assert Verifier.parse(signer.verifier.vkey) == signer.verifier
        assert signer.skey.split("+", 4)[-1] not in repr(signer)
    der = base64.b64decode("".join(signer.verifier.pem.splitlines()[1:-1]))
    assert der[-32:] == signer.verifier.public_key and len(der) == 44


@pytest.mark.parametrize(
    "text",
    [
        "log.example+00000000+AQ==",
        "log example+00000000+AQ==",
        "PRIVATE+KEY+log.example+00+AAAA",
        "just-a-name",
    ],
)
def test_malformed_or_mismatched_keys_are_refused(text: str) -> None:
    with pytest.raises(NoteError):
        Verifier.parse(text)
    with pytest.raises(NoteError):
        Signer.parse(text)


def test_a_signed_checkpoint_is_the_c2sp_text_and_verifies_with_ed25519() -> None:
    signer = Signer.generate("log.example")
    body = Checkpoint("log.example/t/1", 42, ROOT).body()
    assert body == f"log.example/t/1\n42\n{base64.b64encode(ROOT).decode()}\n"
    note = Note(body, (sign_note(body, signer),))
    text = note.text()
    name, encoded = text.split("\n\n")[1].removeprefix("\u2014 ").rstrip("\n").split(" ")
    raw = base64.b64decode(encoded)
    assert name == "log.example" and raw[:4] == signer.verifier.key_id
    VerifyKey(signer.verifier.public_key).verify(body.encode(), raw[4:])
    assert parse_note(text) == note
    assert verified_signers(parse_note(text), [signer.verifier]) == [signer.verifier]


def test_unknown_signers_are_ignored_and_a_bad_known_signature_is_an_error() -> None:
    signer, stranger = Signer.generate("log.example"), Signer.generate("log.example")
    body = Checkpoint("log.example/t/1", 1, ROOT).body()
    note = Note(body, (sign_note(body, stranger),))
    assert verified_signers(note, [signer.verifier]) == []
    forged = Note(Checkpoint("log.example/t/1", 2, ROOT).body(), (sign_note(body, signer),))
    with pytest.raises(NoteError, match="does not verify"):
        verified_signers(forged, [signer.verifier])


def test_a_cosignature_signs_the_header_the_time_and_the_body() -> None:
    witness = Signer.generate("witness.example", COSIGNATURE_KEY_TYPE)
    body = Checkpoint("log.example/t/1", 7, ROOT).body()
    line = cosign(body, witness, 1_700_000_000)
    assert line.raw[:4] == witness.verifier.key_id
    assert struct.unpack(">Q", line.raw[4:12]) == (1_700_000_000,)
    message = f"cosignature/v1\ntime 1700000000\n{body}".encode()
    VerifyKey(witness.verifier.public_key).verify(message, line.raw[12:])
    note = Note(body, (line,))
    assert verified_cosigners(note, [witness.verifier]) == {"witness.example": 1_700_000_000}
    moved = Note(Checkpoint("log.example/t/1", 8, ROOT).body(), (line,))
    with pytest.raises(NoteError):
        verified_cosigners(moved, [witness.verifier])
    with pytest.raises(NoteError):
        cosign(body, Signer.generate("log.example", NOTE_KEY_TYPE), 1)


@pytest.mark.parametrize(
    "text",
    [
        "no signatures\n",
        "body\n\n",
        "body\n\nnot a signature line\n",
        "body\n\n\u2014 name !!!\n",
        "body\r\n\n\u2014 name AAAAAAAA\n",
        "body\n\n\u2014 name AAAAAAAA",
    ],
)
def test_malformed_notes_are_refused(text: str) -> None:
    with pytest.raises(NoteError):
        parse_note(text)


@pytest.mark.parametrize(
    "body",
    [
        "origin\n42\n",
        "origin\n042\nAAAA\n",
        "origin\n\u0664\u0662\n" + base64.b64encode(ROOT).decode() + "\n",
        "origin\n42\nAAAA\n",
        "\n42\n" + base64.b64encode(ROOT).decode() + "\n",
    ],
)
def test_malformed_checkpoint_bodies_are_refused(body: str) -> None:
    with pytest.raises(NoteError):
        Checkpoint.parse_body(body)


def test_a_receipt_is_tlog_proof_text_and_parses_back() -> None:
    signer = Signer.generate("log.example")
    body = Checkpoint("log.example/t/1", 5, ROOT).body()
    note = Note(body, (sign_note(body, signer),))
    proof = (hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest())
    receipt = Receipt(3, proof, note)
    text = receipt.text()
    assert text.startswith("c2sp.org/tlog-proof@v1\nindex 3\n")
    assert text.endswith(note.text())
    assert Receipt.parse(text) == receipt
    empty = Receipt(0, (), note)
    assert Receipt.parse(empty.text()) == empty
    for bad in (text.replace("index 3", "index 03"), text.replace("c2sp", "c3sp", 1)):
        with pytest.raises(NoteError):
            Receipt.parse(bad)
