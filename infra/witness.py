"""The witness: cosign a log's checkpoints only after checking that the log only grew.

Both sides of c2sp.org/tlog-witness ``add-checkpoint``:

- ``Witness`` answers a submission (``old <size>``, consistency proof lines, an
  empty line, a signed checkpoint) with cosignature/v1 lines, or refuses it with
  the status the spec names. Its state is one sqlite file holding, per origin,
  the latest checkpoint it cosigned, plus every refused submission that carried
  a valid log signature (a fork, signed by the log, is evidence).
- ``WitnessClient`` is what the log's notary calls: it submits a checkpoint,
  retries once when the witness says its old size is stale, and keeps only the
  cosignatures that verify against the witness key it was configured with.

The check against the stored size and the write of the new one happen in one
``BEGIN IMMEDIATE`` transaction, so two submissions racing from the same old
size cannot both win, and a slow small one cannot roll back a fast large one
(the A/B race in the spec). An asyncio lock keeps one process's requests from
queueing on sqlite's busy timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx

from infra.merkle import HASH_SIZE, ProofError, verify_consistency
from infra.notes import (
    COSIGNATURE_KEY_TYPE,
    MAX_NOTE_BYTES,
    NOTE_KEY_TYPE,
    Checkpoint,
    Note,
    NoteError,
    Signature,
    Signer,
    Verifier,
    b64,
    cosign,
    parse_note,
    unb64,
    verified_cosigners,
    verified_signers,
)

log = logging.getLogger(__name__)

MAX_PROOF_LINES = 63
MAX_REQUEST_BYTES = MAX_NOTE_BYTES + 4096
"""A note, plus 63 proof lines of 45 bytes and the old size line."""
MAX_SIZE = 2**63 - 1
"""sqlite integers are signed 64-bit; no log of ours comes near."""
SIZE_CONTENT_TYPE = "text/x.tlog.size"
COSIGNATURES_CONTENT_TYPE = "text/plain; charset=utf-8"
PROBLEM_CONTENT_TYPE = "application/problem+json"
DEFAULT_TIMEOUT = 5.0
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)


class Reply(NamedTuple):
    status: int
    content_type: str
    body: bytes


def problem(status: int, detail: str) -> Reply:
    """An RFC 9457 problem; the 409 for a stale old size is ``size_conflict`` instead."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return Reply(status, PROBLEM_CONTENT_TYPE, json.dumps(body).encode())


def size_conflict(latest: int) -> Reply:
    return Reply(409, SIZE_CONTENT_TYPE, f"{latest}\n".encode())


# --- Requests ----------------------------------------------------------------------------


class MalformedRequestError(ValueError):
    """The body is not ``old <size>``, proof lines, an empty line and a signed checkpoint."""


@dataclass(frozen=True, slots=True)
class Submission:
    old_size: int
    proof: tuple[bytes, ...]
    note: Note
    checkpoint: Checkpoint


def _decimal(text: str, what: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise MalformedRequestError(f"{what} is not a decimal without leading zeros")
    value = int(text)
    if value > MAX_SIZE:
        raise MalformedRequestError(f"{what} is above 2^63 - 1")
    return value


def parse_submission(body: bytes) -> Submission:
    if len(body) > MAX_REQUEST_BYTES:
        raise MalformedRequestError("the request body is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequestError("the request body is not UTF-8") from None
    # Neither the old size line nor a proof line is empty, so the first empty
    # line ends the proof; the checkpoint's own empty line comes after it.
    head, sep, note_text = text.partition("\n\n")
    if not sep:
        raise MalformedRequestError("no empty line before the checkpoint")
    lines = head.split("\n")
    if not lines[0].startswith("old "):
        raise MalformedRequestError("the first line is not 'old <size>'")
    old_size = _decimal(lines[0][len("old ") :], "the old size")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise MalformedRequestError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    try:
        proof = tuple(unb64(line, "a consistency proof line") for line in lines[1:])
        if any(len(h) != HASH_SIZE for h in proof):
            raise MalformedRequestError("a consistency proof line is not a 32-byte hash")
        note = parse_note(note_text)
        checkpoint = Checkpoint.parse_body(note.body)
    except NoteError as e:
        raise MalformedRequestError(str(e)) from None
    if checkpoint.size > MAX_SIZE:
        raise MalformedRequestError("the checkpoint size is above 2^63 - 1")
    return Submission(old_size, proof, note, checkpoint)


def submission_text(old_size: int, proof: Sequence[bytes], note: Note) -> str:
    lines = "".join(b64(h) + "\n" for h in proof)
    return f"old {old_size}\n{lines}\n{note.text()}"


# --- Which logs the witness trusts ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustedLog:
    """A log's origin, or an origin prefix ending in ``/`` (one log per tenant), and its keys."""

    origin: str
    verifiers: tuple[Verifier, ...]

    @property
    def is_prefix(self) -> bool:
        return self.origin.endswith("/")

    def covers(self, origin: str) -> bool:
        if self.is_prefix:
            return origin.startswith(self.origin) and len(origin) > len(self.origin)
        return origin == self.origin


def parse_trusted_log(text: str) -> tuple[str, Verifier]:
    """``ORIGIN_OR_PREFIX=VKEY``, as the ``--log`` option of ``strongroom witness serve``."""
    origin, sep, vkey = text.partition("=")
    origin = origin.strip()
    if not sep or not origin or not vkey.strip():
        raise ValueError("a log is ORIGIN=VKEY, or ORIGIN_PREFIX/=VKEY")
    try:
        verifier = Verifier.parse(vkey)
    except NoteError as e:
        raise ValueError(f"the key of log {origin}: {e}") from None
    if verifier.key_type != NOTE_KEY_TYPE:
        raise ValueError(f"the key of log {origin} is not a note signer key (type 0x01)")
    return origin, verifier


def trusted_logs(pairs: Iterable[tuple[str, Verifier]]) -> list[TrustedLog]:
    """Group (origin, key) pairs by origin: during a key rotation a log has two keys."""
    keys: dict[str, list[Verifier]] = {}
    for origin, verifier in pairs:
        known = keys.setdefault(origin, [])
        if verifier not in known:
            known.append(verifier)
    return [TrustedLog(origin, tuple(verifiers)) for origin, verifiers in keys.items()]


def _verifiers_for(logs: Sequence[TrustedLog], origin: str) -> tuple[Verifier, ...] | None:
    """The exact origin's keys, else those of the longest prefix that covers it."""
    covering = [entry for entry in logs if entry.covers(origin)]
    if not covering:
        return None
    exact = [entry for entry in covering if not entry.is_prefix]
    return (exact or sorted(covering, key=lambda e: len(e.origin)))[-1].verifiers


# --- State -------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    size INTEGER NOT NULL,
    note TEXT NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS refusals_by_origin ON refusals (origin, id);
"""


@dataclass(frozen=True, slots=True)
class Head:
    """The latest checkpoint this witness cosigned for one origin."""

    size: int
    root: bytes
    note: str
    at: int


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str
    """What the refusals table records: a short word, e.g. ``fork``."""
    detail: str
    latest_size: int | None = None
    """Set when the old size was stale: the answer is then this size as text/x.tlog.size."""


@dataclass(frozen=True, slots=True)
class RefusalRecord:
    origin: str
    size: int
    note: str
    reason: str
    at: int


def judge(sub: Submission, head: Head | None) -> Refusal | None:
    """Whether ``sub`` may be cosigned, given the latest cosigned checkpoint. Pure."""
    cp = sub.checkpoint
    if sub.old_size > cp.size:
        return Refusal(
            400, "old-size-above-checkpoint", "the old size is above the checkpoint size"
        )
    if sub.old_size == 0 and sub.proof:
        return Refusal(400, "proof-from-zero", "a proof from old size 0 must be empty")
    latest = head.size if head is not None else 0
    forked = head is not None and cp.size == head.size and cp.root != head.root
    if sub.old_size != latest:
        reason = "fork" if forked else "old-size-mismatch"
        return Refusal(409, reason, f"the latest cosigned size is {latest}", latest)
    if head is None:
        return None
    if sub.old_size == cp.size:
        if sub.proof:
            return Refusal(422, "inconsistent", "a proof to the same size must be empty")
        if forked:
            return Refusal(409, "fork", "another root hash for the cosigned size: the log forked")
        return None
    try:
        verify_consistency(sub.old_size, cp.size, head.root, cp.root, sub.proof)
    except ProofError as e:
        return Refusal(422, "inconsistent", str(e))
    return None


class WitnessState:
    """The sqlite file: latest cosigned checkpoint per origin, and refused submissions.

    Every method is blocking; ``Witness`` calls them in a thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(cls, path: Path) -> WitnessState:
        """Create the file and its tables if missing (WAL, so readers never block the writer)."""
        state = cls(path)
        db = state._connect()
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_SCHEMA)
        finally:
            db.close()
        return state

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        # Persisted before we answer, as the spec demands: fsync on every commit.
        db.execute("PRAGMA synchronous = FULL")
        return db

    def commit(self, sub: Submission, clock: Callable[[], float]) -> tuple[Refusal | None, int]:
        """Judge ``sub`` against the stored head and record the outcome, atomically.

        Returns the refusal (or None) and the time of the decision, which is
        never before the stored head's: a cosignature's time orders the sizes.
        """
        cp = sub.checkpoint
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT size, root, note, at FROM checkpoints WHERE origin = ?", (cp.origin,)
                ).fetchone()
                head = Head(*row) if row is not None else None
                refusal = judge(sub, head)
                at = max(int(clock()), head.at if head is not None else 0)
                if refusal is None:
                    db.execute(
                        "INSERT INTO checkpoints (origin, size, root, note, at)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET"
                        " size = excluded.size, root = excluded.root,"
                        " note = excluded.note, at = excluded.at",
                        (cp.origin, cp.size, cp.root, sub.note.text(), at),
                    )
                else:
                    db.execute(
                        "INSERT INTO refusals (origin, size, note, reason, at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (cp.origin, cp.size, sub.note.text(), refusal.reason, at),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()
        return refusal, at

    def head(self, origin: str) -> Head | None:
        db = self._connect()
        try:
            row = db.execute(
                "SELECT size, root, note, at FROM checkpoints WHERE origin = ?", (origin,)
            ).fetchone()
        finally:
            db.close()
        return Head(*row) if row is not None else None

    def refusals(self, origin: str) -> list[RefusalRecord]:
        db = self._connect()
        try:
            rows = db.execute(
                "SELECT origin, size, note, reason, at FROM refusals WHERE origin = ? ORDER BY id",
                (origin,),
            ).fetchall()
        finally:
            db.close()
        return [RefusalRecord(*row) for row in rows]


# --- The witness -------------------------------------------------------------------------


class Witness:
    """Answers ``add-checkpoint`` for the logs it trusts, with one cosignature per key."""

    def __init__(
        self,
        signers: Sequence[Signer],
        logs: Sequence[TrustedLog],
        state: WitnessState,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not signers:
            raise ValueError("a witness needs at least one cosigner key")
        if any(s.key_type != COSIGNATURE_KEY_TYPE for s in signers):
            raise ValueError("a witness key is a cosigner key (type 0x04)")
        self.signers = tuple(signers)
        self.logs = tuple(logs)
        self.state = state
        self._clock = clock
        self._lock = asyncio.Lock()

    async def add_checkpoint(self, body: bytes) -> Reply:
        try:
            sub = parse_submission(body)
        except MalformedRequestError as e:
            return problem(400, str(e))
        verifiers = _verifiers_for(self.logs, sub.checkpoint.origin)
        if verifiers is None:
            return problem(404, "this witness does not know the checkpoint's origin")
        try:
            signed = verified_signers(sub.note, verifiers)
        except NoteError:
            signed = []
        if not signed:
            return problem(403, "no signature verifies against a key trusted for this origin")
        async with self._lock:
            refusal, at = await asyncio.to_thread(self.state.commit, sub, self._clock)
        if refusal is None:
            body_text = sub.note.body
            lines = "".join(cosign(body_text, s, at).line() for s in self.signers)
            return Reply(200, COSIGNATURES_CONTENT_TYPE, lines.encode())
        log.info(
            "refused a checkpoint of %s at size %d: %s",
            sub.checkpoint.origin,
            sub.checkpoint.size,
            refusal.reason,
        )
        if refusal.latest_size is not None:
            return size_conflict(refusal.latest_size)
        return problem(refusal.status, refusal.detail)


# --- The log's side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WitnessEndpoint:
    """A witness as a log sees it: its cosigner key and its submission prefix URL."""

    verifier: Verifier
    url: str

    @property
    def add_checkpoint_url(self) -> str:
        return self.url.rstrip("/") + "/add-checkpoint"


def parse_witnesses(text: str) -> list[WitnessEndpoint]:
    """``<vkey> <url>[, <vkey> <url> ...]`` (a setting value); empty text is no witness.

    Messages name the witness by position and never quote the URL, which may
    carry credentials.
    """
    if not text.strip():
        return []
    endpoints: list[WitnessEndpoint] = []
    for n, item in enumerate(text.split(","), 1):
        parts = item.split()
        if len(parts) != 2:
            raise ValueError(f"witness {n}: expected '<vkey> <url>', got {len(parts)} words")
        vkey, url = parts
        try:
            verifier = Verifier.parse(vkey)
        except NoteError as e:
            raise ValueError(f"witness {n}: {e}") from None
        if verifier.key_type != COSIGNATURE_KEY_TYPE:
            raise ValueError(f"witness {n}: {verifier.name} is not a cosigner key (type 0x04)")
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"witness {n}: the URL is not http(s)://<host>[/<prefix>]")
        if parsed.query or parsed.fragment:
            raise ValueError(f"witness {n}: the URL has a query or fragment; give the prefix only")
        if any(e.verifier == verifier for e in endpoints):
            raise ValueError(f"witness {n}: the key of {verifier.name} is listed twice")
        endpoints.append(WitnessEndpoint(verifier, url))
    return endpoints


class WitnessRefusedError(Exception):
    """The witness did not cosign; the message is safe to log."""


Prove = Callable[[int], Awaitable[Sequence[bytes]]]
"""A consistency proof from the given old size to the checkpoint being submitted."""


class WitnessClient:
    """Asks one witness to cosign checkpoints; never raises, never blocks the log for long.

    A witness that is down, slow, or refuses only costs its cosignature: the
    caller gets ``[]`` and a warning is logged.
    """

    def __init__(
        self,
        endpoint: WitnessEndpoint,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._own_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> WitnessClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def request_cosignatures(
        self, note: Note, old_size: int, prove: Prove
    ) -> list[Signature]:
        """The witness's valid cosignatures on ``note``, submitted as grown from ``old_size``.

        On a 409 with the witness's latest size, ``prove`` is asked for a proof
        from that size and the submission is retried once.
        """
        name = self.endpoint.verifier.name
        try:
            return await self._request(note, old_size, prove)
        except WitnessRefusedError as e:
            log.warning("witness %s did not cosign: %s", name, e)
        except Exception as e:
            # The text of a driver or network error is not ours to log: it may
            # quote a URL with credentials or a row; the type is enough to act on.
            log.warning("witness %s did not cosign: %s", name, type(e).__name__)
        return []

    async def _request(self, note: Note, old_size: int, prove: Prove) -> list[Signature]:
        size = Checkpoint.parse_body(note.body).size
        response = await self._submit(note, old_size, size, prove)
        if response.status_code == 409 and _media_type(response) == SIZE_CONTENT_TYPE:
            latest = _parse_size(response.text)
            if latest > size:
                raise WitnessRefusedError(
                    f"it has cosigned size {latest}, above this checkpoint's {size}"
                )
            response = await self._submit(note, latest, size, prove)
        if response.status_code != 200:
            raise WitnessRefusedError(f"it answered {response.status_code}")
        return self._verified(note, response.text)

    async def _submit(self, note: Note, old: int, size: int, prove: Prove) -> httpx.Response:
        proof = [] if old in (0, size) or old > size else list(await prove(old))
        body = submission_text(old, proof, note).encode()
        return await self._http.post(
            self.endpoint.add_checkpoint_url,
            content=body,
            headers={"content-type": "text/plain; charset=utf-8"},
        )

    def _verified(self, note: Note, text: str) -> list[Signature]:
        try:
            lines = parse_note(note.body + "\n" + text).signatures
        except NoteError:
            raise WitnessRefusedError("its answer is not signature lines") from None
        verifier = self.endpoint.verifier
        good: list[Signature] = []
        for sig in lines:
            if sig.name != verifier.name or sig.key_id != verifier.key_id:
                continue
            try:
                if verified_cosigners(Note(note.body, (sig,)), [verifier]):
                    good.append(sig)
            except NoteError as e:
                log.warning("witness %s: dropped a cosignature: %s", verifier.name, e)
        if not good:
            raise WitnessRefusedError("no cosignature from its key verifies")
        return good


def _media_type(response: httpx.Response) -> str:
    content_type = str(response.headers.get("content-type", ""))
    return content_type.split(";", maxsplit=1)[0].strip().lower()


def _parse_size(text: str) -> int:
    if not text.endswith("\n") or not _DECIMAL.fullmatch(text[:-1]):
        raise WitnessRefusedError("its 409 answer is not a tree size")
    return int(text[:-1])
