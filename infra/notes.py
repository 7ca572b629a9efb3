"""Signed notes, checkpoints and cosignatures: the C2SP text formats, with Ed25519.

- signed note (c2sp.org/signed-note): a body of newline-terminated lines, an
  empty line, then signature lines ``— <key name> <base64(key id || signature)>``.
- checkpoint (c2sp.org/tlog-checkpoint): the body ``<origin>\\n<size>\\n<base64 root>\\n``.
- cosignature/v1 (c2sp.org/tlog-cosignature): a witness signs
  ``cosignature/v1\\ntime <t>\\n`` + the checkpoint body; its signature bytes are
  ``key id || u64 big-endian t || Ed25519 signature``.
- key id = ``SHA-256(name || 0x0A || type || public key)[:4]``, type 0x01 for a
  note signer, 0x04 for a cosigner.
- keys as text: verifier ``<name>+<hex key id>+<base64(type || public key)>``;
  signer ``PRIVATE+KEY+<name>+<hex key id>+<base64(type || seed)>`` (the format
  of golang.org/x/mod/sumdb/note, so Go tooling reads our keys and notes).

Pure: no I/O. Everything an auditor checks offline is in here and in
``infra.merkle``; the shell scripts under ``docs/auditor/`` do the same with openssl.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from infra.merkle import HASH_SIZE

SIGNATURE_DASH = "\u2014"
NOTE_KEY_TYPE = 0x01
COSIGNATURE_KEY_TYPE = 0x04
COSIGNATURE_HEADER = "cosignature/v1\n"
MAX_NOTE_BYTES = 64 * 1024
_NAME = re.compile(r"^[^\s+\u2014]{1,255}$")


class NoteError(ValueError):
    """A note, checkpoint, key or signature is malformed or does not verify."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise NoteError(f"{what} is not standard base64") from None


def check_key_name(name: str) -> str:
    if not _NAME.match(name):
        raise NoteError("a key name is 1-255 characters without spaces, '+' or '\u2014'")
    return name


def key_id(name: str, key_type: int, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([key_type]) + public_key).digest()[:4]


# --- Keys ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verifier:
    """A public key that checks note signatures (type 0x01) or cosignatures (type 0x04)."""

    name: str
    key_type: int
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.key_type, self.public_key)

    @property
    def vkey(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([self.key_type]) + self.public_key)}"

    @property
    def pem(self) -> str:
        """The SubjectPublicKeyInfo PEM that ``openssl pkeyutl -verify`` takes."""
        der = bytes.fromhex("302a300506032b6570032100") + self.public_key
        body = b64(der)
        return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<hex key id>+<base64 key>")
        name, hex_id, encoded = parts
        check_key_name(name)
        raw = unb64(encoded, "the verifier key")
        if len(raw) != 33 or raw[0] not in (NOTE_KEY_TYPE, COSIGNATURE_KEY_TYPE):
            raise NoteError("a verifier key holds a type byte (0x01 or 0x04) and 32 key bytes")
        verifier = cls(name, raw[0], raw[1:])
        if hex_id.lower() != verifier.key_id.hex():
            raise NoteError("the verifier key's id does not match its name and key")
        return verifier

    def verify_bytes(self, message: bytes, signature: bytes) -> bool:
        try:
            VerifyKey(self.public_key).verify(message, signature)
        except (BadSignatureError, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class Signer:
    """A private Ed25519 key with its name. Its repr never shows the seed."""

    name: str
    key_type: int
    _key: SigningKey

    def __repr__(self) -> str:
        return f"Signer({self.name!r}, key id {self.verifier.key_id.hex()})"

    @classmethod
    def generate(cls, name: str, key_type: int = NOTE_KEY_TYPE) -> Signer:
        return cls(check_key_name(name), key_type, SigningKey.generate())

    @classmethod
    def parse(cls, skey: str) -> Signer:
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key is PRIVATE+KEY+<name>+<hex key id>+<base64 seed>")
        name, hex_id, encoded = parts[2:]
        check_key_name(name)
        raw = unb64(encoded, "the signer key")
        if len(raw) != 33 or raw[0] not in (NOTE_KEY_TYPE, COSIGNATURE_KEY_TYPE):
            raise NoteError("a signer key holds a type byte (0x01 or 0x04) and a 32-byte seed")
        signer = cls(name, raw[0], SigningKey(raw[1:]))
        if hex_id.lower() != signer.verifier.key_id.hex():
            raise NoteError("the signer key's id does not match its name and key")
        return signer

    @property
    def skey(self) -> str:
        encoded = b64(bytes([self.key_type]) + bytes(self._key))
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{encoded}"

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.key_type, bytes(self._key.verify_key))

    def sign_bytes(self, message: bytes) -> bytes:
        return self._key.sign(message).signature


# --- Notes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    raw: bytes
    """Key id (4 bytes) followed by the signature bytes."""

    @property
    def key_id(self) -> bytes:
        return self.raw[:4]

    def line(self) -> str:
        return f"{SIGNATURE_DASH} {self.name} {b64(self.raw)}\n"


@dataclass(frozen=True, slots=True)
class Note:
    body: str
    """Newline-terminated lines, the last one ending in ``\\n``; what signatures cover."""
    signatures: tuple[Signature, ...]

    def text(self) -> str:
        return self.body + "\n" + "".join(s.line() for s in self.signatures)

    def with_signatures(self, more: Iterable[Signature]) -> Note:
        seen = {(s.name, s.raw) for s in self.signatures}
        added = tuple(s for s in more if (s.name, s.raw) not in seen)
        return Note(self.body, self.signatures + added)


def parse_note(text: str) -> Note:
    if len(text.encode()) > MAX_NOTE_BYTES:
        raise NoteError("the note is too large")
    if "\r" in text or any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("a note holds no control characters besides newlines")
    body, sep, rest = text.partition("\n\n")
    if not sep or not body:
        raise NoteError("a note is a body, an empty line, then signature lines")
    body += "\n"
    if not rest.endswith("\n"):
        raise NoteError("every signature line ends with a newline")
    signatures = []
    for line in rest[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != SIGNATURE_DASH:
            raise NoteError("a signature line is '\u2014 <key name> <base64 signature>'")
        raw = unb64(parts[2], "a signature")
        if len(raw) < 5:
            raise NoteError("a signature is a 4-byte key id and the signature bytes")
        signatures.append(Signature(check_key_name(parts[1]), raw))
    return Note(body, tuple(signatures))


def sign_note(body: str, signer: Signer) -> Signature:
    return Signature(signer.name, signer.verifier.key_id + signer.sign_bytes(body.encode()))


def verified_signers(note: Note, verifiers: Iterable[Verifier]) -> list[Verifier]:
    """The note signers (type 0x01) among ``verifiers`` whose signature on the body verifies.

    Lines from unknown keys are ignored, as the spec says; a line with a known
    name and key id but a bad signature is an error (a forgery, not noise).
    """
    message = note.body.encode()
    good: list[Verifier] = []
    for verifier in verifiers:
        if verifier.key_type != NOTE_KEY_TYPE:
            continue
        for sig in note.signatures:
            if sig.name != verifier.name or sig.key_id != verifier.key_id:
                continue
            if not verifier.verify_bytes(message, sig.raw[4:]):
                raise NoteError(f"the signature of {verifier.name} does not verify")
            good.append(verifier)
            break
    return good


# --- Checkpoints -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{b64(self.root)}\n"

    @classmethod
    def parse_body(cls, body: str) -> Checkpoint:
        lines = body.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint body is origin, size and root hash lines")
        origin, size_text, root_text = lines[:3]
        if not origin:
            raise NoteError("the checkpoint origin is empty")
        if not (size_text.isascii() and size_text.isdigit()) or (
            size_text != "0" and size_text.startswith("0")
        ):
            raise NoteError("the checkpoint size is not a decimal without leading zeros")
        root = unb64(root_text, "the checkpoint root")
        if len(root) != HASH_SIZE:
            raise NoteError("the checkpoint root is not 32 bytes")
        return cls(origin, int(size_text), root)


def cosignature_message(body: str, timestamp: int) -> bytes:
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{body}".encode()


def cosign(body: str, signer: Signer, timestamp: int) -> Signature:
    """A cosignature/v1 over a checkpoint body by a witness key (type 0x04)."""
    if signer.key_type != COSIGNATURE_KEY_TYPE:
        raise NoteError("a cosignature needs a cosigner key (type 0x04)")
    if not 0 <= timestamp < 2**63:
        raise NoteError("a cosignature timestamp is a POSIX time below 2^63")
    signature = signer.sign_bytes(cosignature_message(body, timestamp))
    return Signature(signer.name, signer.verifier.key_id + struct.pack(">Q", timestamp) + signature)


def verified_cosigners(note: Note, witnesses: Sequence[Verifier]) -> dict[str, int]:
    """Witness name -> cosignature time, for each of ``witnesses`` with a valid cosignature."""
    good: dict[str, int] = {}
    for witness in witnesses:
        if witness.key_type != COSIGNATURE_KEY_TYPE:
            continue
        for sig in note.signatures:
            if sig.name != witness.name or sig.key_id != witness.key_id:
                continue
            if len(sig.raw) != 4 + 8 + 64:
                raise NoteError(f"the cosignature of {witness.name} is not 76 bytes")
            (timestamp,) = struct.unpack(">Q", sig.raw[4:12])
            message = cosignature_message(note.body, timestamp)
            if not witness.verify_bytes(message, sig.raw[12:]):
                raise NoteError(f"the cosignature of {witness.name} does not verify")
            good[witness.name] = timestamp
            break
    return good


# --- Receipts (c2sp.org/tlog-proof@v1) -------------------------------------------------

PROOF_HEADER = "c2sp.org/tlog-proof@v1\n"


@dataclass(frozen=True, slots=True)
class Receipt:
    index: int
    """Zero-based: the event with ``seq`` s is leaf ``s - 1``."""
    proof: tuple[bytes, ...]
    checkpoint: Note

    def text(self) -> str:
        lines = "".join(b64(h) + "\n" for h in self.proof)
        return f"{PROOF_HEADER}index {self.index}\n{lines}\n{self.checkpoint.text()}"

    @classmethod
    def parse(cls, text: str) -> Receipt:
        if not text.startswith(PROOF_HEADER):
            raise NoteError("a receipt starts with 'c2sp.org/tlog-proof@v1'")
        head, sep, note_text = text[len(PROOF_HEADER) :].partition("\n\n")
        if not sep:
            raise NoteError("a receipt is index and proof lines, an empty line, a checkpoint")
        lines = head.split("\n")
        if lines and lines[0].startswith("extra "):
            lines = lines[1:]
        if not lines or not lines[0].startswith("index "):
            raise NoteError("a receipt names the leaf index on its 'index' line")
        index_text = lines[0][len("index ") :]
        if not (index_text.isascii() and index_text.isdigit()) or (
            index_text != "0" and index_text.startswith("0")
        ):
            raise NoteError("the receipt index is not a decimal without leading zeros")
        proof = tuple(unb64(line, "a proof line") for line in lines[1:])
        if any(len(h) != HASH_SIZE for h in proof):
            raise NoteError("a proof line is not a 32-byte hash")
        return cls(int(index_text), proof, parse_note(note_text))


def format_hashes(hashes: Sequence[bytes]) -> str:
    """A proof as text: one base64 hash per line (the consistency proof route's body)."""
    return "".join(b64(h) + "\n" for h in hashes)
