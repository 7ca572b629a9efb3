"""Evidence bundles: one tenant log's leaves, checkpoints, proofs and keys, checked offline.

A bundle is a directory, or the same files in a tar. ``export_evidence`` writes
one from the store; ``verify_bundle`` checks one with nothing but the files
(and, ideally, keys the auditor got elsewhere). Layout, for events ``from..to``:

- ``leaves.jsonl``: line i is the exact leaf of seq ``from + i`` followed by
  ``\\n`` (canonical JSON holds no raw newline, so a line is a leaf);
- ``hashes.txt``: line i is ``<leaf hash hex> <chain hash hex>`` of that seq, as
  the store recorded them, so a failure names its seq;
- ``prefix.json`` (only when ``from > 1``): the chain hash of seq ``from - 1``
  and the Merkle frontier at that size (the complete subtrees of leaves
  ``[0, from - 1)``), so roots are computable without the earlier leaves.
  Nothing vouches for them but the signed roots they lead to;
- ``checkpoints/<size, 20 digits>.checkpoint``: every signed checkpoint whose
  size lies in ``[from, to]``, as signed notes (log signatures and witness
  cosignatures);
- ``consistency/<old>-<new>.proof``: RFC 9162 consistency proof between
  consecutive checkpoints, one base64 hash per line;
- ``keys/log-keys.json`` (the notary keys with their validity),
  ``keys/<key id>.pem`` (each for openssl) and ``keys/witness-keys.txt``
  (witness vkeys, one per line);
- ``README.md`` for the auditor, and ``manifest.json``: origin, tenant, range,
  counts and the SHA-256 of every other file. It is checked first; it is not
  signed, so it only catches damage: the signatures are what prove.

Verification reads the leaves once, hashes them in a tight loop and reports
the first failure with its kind and its seq or checkpoint size. Keys from the
bundle are trusted only when the caller gives none, and the report says so.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import itertools
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any
from uuid import UUID

import asyncpg
import msgspec

from domain.errors import StrongroomError
from infra.db import tenant_transaction
from infra.ledger import (
    LedgerIntegrityError,
    LedgerKey,
    StoredCheckpoint,
    checkpoints_after,
    ledger_keys,
    range_hashes,
)
from infra.merkle import (
    HASH_SIZE,
    ZERO_HASH,
    Frontier,
    ProofError,
    Range,
    consistency_ranges,
    subtree_of_leaves,
    verify_consistency,
)
from infra.notes import (
    COSIGNATURE_KEY_TYPE,
    NOTE_KEY_TYPE,
    Checkpoint,
    NoteError,
    Verifier,
    format_hashes,
    parse_note,
    unb64,
    verified_cosigners,
    verified_signers,
)
from infra.verify import LeafError, check_leaf

FORMAT = "strongroom-evidence/1"
MANIFEST = "manifest.json"
README = "README.md"
LEAVES = "leaves.jsonl"
HASHES = "hashes.txt"
PREFIX = "prefix.json"
LOG_KEYS = "keys/log-keys.json"
WITNESS_KEYS = "keys/witness-keys.txt"
CHECKPOINTS = "checkpoints"
PROOFS = "consistency"
PAGE = 5000
PROOF_PAGE = 200
BLOCK = 1 << 20
HASH_LINE = 2 * 2 * HASH_SIZE + 2
"""``<64 hex> <64 hex>\\n``: fixed width, so the verifier slices instead of parsing."""

_CHECKPOINT_NAME = re.compile(r"^checkpoints/(\d{20})\.checkpoint$")
_PROOF_NAME = re.compile(r"^consistency/(\d{20})-(\d{20})\.proof$")
_PEM_NAME = re.compile(r"^keys/[0-9a-f]{8}\.pem$")
_FIXED_NAMES = frozenset({README, LEAVES, HASHES, PREFIX, LOG_KEYS, WITNESS_KEYS})


class EvidenceError(StrongroomError):
    """An export cannot be made as asked, or a bundle cannot be opened at all."""


def checkpoint_name(size: int) -> str:
    return f"{CHECKPOINTS}/{size:020d}.checkpoint"


def proof_name(old_size: int, new_size: int) -> str:
    return f"{PROOFS}/{old_size:020d}-{new_size:020d}.proof"


def pem_name(verifier: Verifier) -> str:
    return f"keys/{verifier.key_id.hex()}.pem"


# --- The manifest and small files ---------------------------------------------------


class Counts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    events: int
    checkpoints: int
    consistency_proofs: int
    log_keys: int
    witness_keys: int


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: str
    origin: str
    tenant: str
    first: int = msgspec.field(name="from")
    last: int = msgspec.field(name="to")
    exported_at: str
    last_checkpoint: int | None
    counts: Counts
    files: dict[str, str]
    """Path inside the bundle -> lowercase hex SHA-256 of its bytes."""


class LogKeyEntry(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    key_id: str
    vkey: str
    public_key_pem: str
    valid_from: str
    valid_until: str | None
    activated_seq: int
    retired_seq: int | None


class SubtreeEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: int
    index: int
    """The subtree of leaves ``[index * 2**level, (index + 1) * 2**level)``."""
    hash: str


class PrefixEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    size: int
    chain_hash: str
    frontier: list[SubtreeEntry]


_json = msgspec.json.Encoder(order="sorted")


def _pretty(value: object) -> bytes:
    return msgspec.json.format(_json.encode(value), indent=2) + b"\n"


# --- Export ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportReport:
    path: Path
    tenant_id: UUID
    origin: str
    first: int
    last: int
    events: int
    """Leaves written: fewer than ``last - first + 1`` only if the store lost some."""
    checkpoints: int
    last_checkpoint: int | None
    uncovered: int
    """Events after the last checkpoint of the range: checked by hash and chain only."""
    bytes: int


class _Sink:
    """A bundle file being written, hashed as it goes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("xb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def close(self) -> str:
        self._file.close()
        return self._hash.hexdigest()


class _BundleWriter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.digests: dict[str, str] = {}
        self.size = 0

    def sink(self, name: str) -> _Sink:
        return _Sink(self.root / name)

    def closed(self, name: str, sink: _Sink) -> None:
        self.digests[name] = sink.close()
        self.size += sink.size

    def write(self, files: Sequence[tuple[str, bytes]]) -> None:
        for name, data in files:
            sink = self.sink(name)
            sink.write(data)
            self.closed(name, sink)

    async def put(self, *files: tuple[str, bytes]) -> None:
        await asyncio.to_thread(self.write, files)


async def export_evidence(
    pool: asyncpg.Pool,
    tenant_id: UUID,
    out: Path,
    *,
    first: int | None = None,
    last: int | None = None,
    witnesses: Sequence[Verifier] = (),
    progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    before_publish: Callable[[ExportReport], Awaitable[object]] | None = None,
) -> ExportReport:
    """Write the bundle of events ``first..last`` (default: the whole log) to ``out``.

    ``out`` ending in ``.tar`` is a tar file, anything else a directory; neither
    may exist. Everything is read in one read-only transaction of the tenant,
    the leaves a page at a time. ``progress(done, total)`` after each page.
    ``before_publish(report)`` is awaited once the bundle is complete and before it
    appears at ``out`` (the audit event of the export): if it raises, nothing does.
    """
    for witness in witnesses:
        if witness.key_type != COSIGNATURE_KEY_TYPE:
            raise EvidenceError(f"{witness.name} is not a witness (cosigner) key")
    output = await asyncio.to_thread(_Output.claim, out)
    try:
        report = await _export(
            pool,
            tenant_id,
            _BundleWriter(output.staging),
            first,
            last,
            witnesses,
            progress,
            clock,
            out,
        )
        if before_publish is not None:
            await before_publish(report)
        await asyncio.to_thread(output.finish)
        return report
    except BaseException:
        await asyncio.to_thread(output.abandon)
        raise


@dataclass(slots=True)
class _Output:
    """Where a bundle goes: claimed before anything is read, so nothing is overwritten."""

    path: Path
    staging: Path
    tar_fd: int | None = None
    """For a tar: the claimed file, written once the staged files are complete."""

    @classmethod
    def claim(cls, out: Path) -> _Output:
        try:
            if out.name.endswith(".tar"):
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                staging = Path(tempfile.mkdtemp(prefix=".evidence-", dir=out.parent))
                return cls(out, staging, fd)
            out.mkdir(mode=0o755)
        except FileExistsError:
            raise EvidenceError(f"{out} exists; an export never overwrites") from None
        return cls(out, out)

    def finish(self) -> None:
        if self.tar_fd is not None:
            fd, self.tar_fd = self.tar_fd, None
            _pack(self.staging, fd)
            shutil.rmtree(self.staging)

    def abandon(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.tar_fd is not None:
            os.close(self.tar_fd)
        if self.staging != self.path:
            with suppress(FileNotFoundError):
                self.path.unlink()


async def _export(
    pool: asyncpg.Pool,
    tenant_id: UUID,
    writer: _BundleWriter,
    first: int | None,
    last: int | None,
    witnesses: Sequence[Verifier],
    progress: Callable[[int, int], None] | None,
    clock: Callable[[], datetime],
    out: Path,
) -> ExportReport:
    async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
        head = await conn.fetchrow(
            "SELECT origin, size FROM tenant_log WHERE tenant_id = $1", tenant_id
        )
        if head is None or head["size"] == 0:
            raise EvidenceError(f"tenant {tenant_id} has no log here")
        origin: str = head["origin"]
        size: int = head["size"]
        first = 1 if first is None else first
        last = size if last is None else last
        if not 1 <= first <= last:
            raise EvidenceError(f"--from {first} --to {last} is not a range of events")
        if last > size:
            raise EvidenceError(f"the log has {size} events, not {last}")
        try:
            if first > 1:
                await writer.put((PREFIX, _pretty(await _prefix(conn, tenant_id, first - 1))))
            events = await _export_leaves(conn, tenant_id, writer, first, last, progress)
            sizes = await _export_checkpoints(conn, tenant_id, writer, first, last)
        except LedgerIntegrityError as e:
            raise EvidenceError(f"{e}; run strongroom verify --tenant {tenant_id}") from None
        keys = await ledger_keys(conn, tenant_id)
    await writer.put(
        *((pem_name(k.verifier), k.verifier.pem.encode()) for k in keys),
        (LOG_KEYS, _pretty({"keys": [_key_entry(k) for k in keys]})),
        (WITNESS_KEYS, "".join(w.vkey + "\n" for w in witnesses).encode()),
    )
    last_checkpoint = sizes[-1] if sizes else None
    manifest = Manifest(
        format=FORMAT,
        origin=origin,
        tenant=str(tenant_id),
        first=first,
        last=last,
        exported_at=clock().astimezone(UTC).isoformat(),
        last_checkpoint=last_checkpoint,
        counts=Counts(
            events=last - first + 1,
            checkpoints=len(sizes),
            consistency_proofs=max(len(sizes) - 1, 0),
            log_keys=len(keys),
            witness_keys=len(witnesses),
        ),
        files={},
    )
    await writer.put((README, readme(manifest, [k.verifier for k in keys]).encode()))
    manifest = msgspec.structs.replace(manifest, files=dict(sorted(writer.digests.items())))
    await writer.put((MANIFEST, _pretty(manifest)))
    return ExportReport(
        path=out,
        tenant_id=tenant_id,
        origin=origin,
        first=first,
        last=last,
        events=events,
        checkpoints=len(sizes),
        last_checkpoint=last_checkpoint,
        uncovered=last - (last_checkpoint or first - 1),
        bytes=writer.size,
    )


async def _prefix(conn: asyncpg.Connection, tenant_id: UUID, size: int) -> PrefixEntry:
    nodes = Range(0, size).complete_subtrees()
    ranges = [Range(n.index << n.level, (n.index + 1) << n.level) for n in nodes]
    hashes = await range_hashes(conn, tenant_id, ranges)
    chain = await conn.fetchval(
        "SELECT chain_hash FROM event_log WHERE tenant_id = $1 AND seq = $2", tenant_id, size
    )
    if chain is None:
        raise EvidenceError(f"event {size} is missing from the store; run strongroom verify")
    return PrefixEntry(
        size=size,
        chain_hash=bytes(chain).hex(),
        frontier=[
            SubtreeEntry(level=n.level, index=n.index, hash=h.hex())
            for n, h in zip(nodes, hashes, strict=True)
        ],
    )


async def _export_leaves(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    writer: _BundleWriter,
    first: int,
    last: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Copy the leaves as they are, gaps and all: the verifier is the one that judges."""
    leaves = await asyncio.to_thread(writer.sink, LEAVES)
    hashes = await asyncio.to_thread(writer.sink, HASHES)
    cursor = await conn.cursor(
        "SELECT seq, leaf, leaf_hash, chain_hash FROM event_log "
        "WHERE tenant_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq",
        tenant_id,
        first,
        last,
    )
    written = 0
    while rows := await cursor.fetch(PAGE):
        for row in rows:
            if b"\n" in row["leaf"]:
                raise EvidenceError(
                    f"the leaf of seq {row['seq']} holds a newline, so it is not canonical "
                    "JSON; run strongroom verify --tenant"
                )
        leaf_text = b"".join(bytes(r["leaf"]) + b"\n" for r in rows)
        hash_text = "".join(
            f"{bytes(r['leaf_hash']).hex()} {bytes(r['chain_hash']).hex()}\n" for r in rows
        ).encode()
        await asyncio.to_thread(leaves.write, leaf_text)
        await asyncio.to_thread(hashes.write, hash_text)
        written += len(rows)
        if progress is not None:
            progress(written, last - first + 1)
    await asyncio.to_thread(writer.closed, LEAVES, leaves)
    await asyncio.to_thread(writer.closed, HASHES, hashes)
    return written


async def _export_checkpoints(
    conn: asyncpg.Connection, tenant_id: UUID, writer: _BundleWriter, first: int, last: int
) -> list[int]:
    """Each checkpoint of sizes ``first..last``, and a proof between each consecutive pair."""
    sizes: list[int] = []
    after = first - 1
    while True:
        page = [
            c for c in await checkpoints_after(conn, tenant_id, after, PROOF_PAGE) if c.size <= last
        ]
        if not page:
            return sizes
        await _export_page(conn, tenant_id, writer, sizes[-1] if sizes else None, page)
        sizes.extend(c.size for c in page)
        after = page[-1].size


async def _export_page(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    writer: _BundleWriter,
    previous: int | None,
    page: list[StoredCheckpoint],
) -> None:
    files = [(checkpoint_name(c.size), c.note.encode()) for c in page]
    pairs = []
    for checkpoint in page:
        if previous is not None:
            pairs.append((previous, checkpoint.size))
        previous = checkpoint.size
    # One statement for a page of proofs: each is O(log n) stored hashes.
    ranges = [consistency_ranges(old, new) for old, new in pairs]
    hashes = await range_hashes(conn, tenant_id, [r for rs in ranges for r in rs])
    start = 0
    for (old, new), rs in zip(pairs, ranges, strict=True):
        files.append(
            (proof_name(old, new), format_hashes(hashes[start : start + len(rs)]).encode())
        )
        start += len(rs)
    await writer.put(*files)


def _key_entry(key: LedgerKey) -> LogKeyEntry:
    return LogKeyEntry(
        name=key.verifier.name,
        key_id=key.verifier.key_id.hex(),
        vkey=key.verifier.vkey,
        public_key_pem=key.verifier.pem,
        valid_from=key.valid_from.astimezone(UTC).isoformat(),
        valid_until=None
        if key.valid_until is None
        else key.valid_until.astimezone(UTC).isoformat(),
        activated_seq=key.activated_seq,
        retired_seq=key.retired_seq,
    )


def _pack(staging: Path, fd: int) -> None:
    """The staged files as a tar: README and manifest first, then in name order."""
    names = sorted(
        (p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()),
        key=lambda n: (n not in (README, MANIFEST), n != README, n),
    )
    mtime = int(time.time())
    with (
        os.fdopen(fd, "wb") as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in names:
            info = tar.gettarinfo(str(staging / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            info.mtime = mtime
            with (staging / name).open("rb") as f:
                tar.addfile(info, f)
        tar.close()
        raw.flush()
        os.fsync(raw.fileno())


# --- Reading a bundle ----------------------------------------------------------------


class _Files:
    """The regular files of a bundle, by their path inside it."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()


class _DirectoryFiles(_Files):
    def __init__(self, root: Path) -> None:
        self._root = root
        self._names: list[str] = []
        self.odd: list[str] = []
        """Entries that are not regular files (symlinks, devices): never read."""
        for path in sorted(root.rglob("*")):
            name = path.relative_to(root).as_posix()
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                self.odd.append(name)
            elif path.is_file():
                self._names.append(name)

    def names(self) -> list[str]:
        return self._names

    def open(self, name: str) -> IO[bytes]:
        return (self._root / name).open("rb")


class _TarFiles(_Files):
    def __init__(self, tar: tarfile.TarFile) -> None:
        self._tar = tar
        self._members: dict[str, tarfile.TarInfo] = {}
        self.odd: list[str] = []
        for member in tar.getmembers():
            name = PurePosixPath(member.name).as_posix()
            if member.isdir():
                continue
            if not member.isfile() or name in self._members:
                self.odd.append(name)
            else:
                self._members[name] = member

    def names(self) -> list[str]:
        return sorted(self._members)

    def open(self, name: str) -> IO[bytes]:
        f = self._tar.extractfile(self._members[name])
        assert f is not None
        return f


@contextmanager
def _open_files(path: Path) -> Iterator[_DirectoryFiles | _TarFiles]:
    if path.is_dir():
        yield _DirectoryFiles(path)
        return
    if not path.is_file():
        raise EvidenceError(f"no bundle at {path}")
    try:
        with tarfile.open(path, mode="r:") as tar:
            yield _TarFiles(tar)
    except tarfile.TarError:
        raise EvidenceError(f"{path} is not a directory or a readable tar file") from None


# --- Verification --------------------------------------------------------------------


class FailureKind:
    MANIFEST = "manifest"
    """A file is missing, extra, or not what the manifest says; the manifest is malformed."""
    FORMAT = "format"
    """A file is malformed (a checkpoint's, a proof's, the prefix's or a key file's syntax)."""
    SIGNATURE = "signature"
    WITNESS = "witness"
    CHECKPOINT = "checkpoint"
    """A checkpoint names another log, another size than its file, or lies outside the range."""
    LEAF = "leaf"
    CHAIN = "chain"
    ROOT = "root"
    CONSISTENCY = "consistency"
    COUNT = "count"


@dataclass(frozen=True, slots=True)
class Failure:
    kind: str
    reason: str
    seq: int | None = None
    checkpoint: int | None = None
    """The size of the checkpoint concerned."""
    file: str | None = None


class _Failed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def _fail(kind: str, reason: str, **where: Any) -> _Failed:
    return _Failed(Failure(kind, reason, **where))


class KeySource:
    GIVEN = "given"
    BUNDLE = "bundle"


@dataclass(slots=True)
class BundleReport:
    ok: bool = False
    failure: Failure | None = None
    origin: str | None = None
    tenant: str | None = None
    first: int | None = None
    last: int | None = None
    events: int = 0
    """Leaves checked (hash, chain, seq and log), in order from ``first``."""
    checkpoints: int = 0
    """Checkpoints whose signatures, cosignatures and root held."""
    consistency_proofs: int = 0
    covered_to: int | None = None
    """The size of the last checkpoint: events up to it are under a signed root."""
    log_keys: str = KeySource.GIVEN
    log_key_names: list[str] = field(default_factory=list)
    witnesses: str = KeySource.GIVEN
    witness_names: list[str] = field(default_factory=list)
    witness_threshold: int = 0
    cosignatures: dict[str, int] = field(default_factory=dict)
    """Witness name -> checkpoints it validly cosigned."""
    root: bytes | None = None
    """The Merkle root at ``last``, from the leaves."""
    full: bool = False
    seconds: float = 0.0

    @property
    def uncovered(self) -> int:
        """Events after the last checkpoint: checked by hash and chain only."""
        if self.first is None or self.last is None:
            return 0
        return self.last - (self.covered_to or self.first - 1)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def verify_bundle(
    path: Path,
    *,
    log_keys: Sequence[Verifier] | None = None,
    witnesses: Sequence[Verifier] | None = None,
    witness_threshold: int = 0,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BundleReport:
    """Check everything in the bundle at ``path``; the report names the first failure.

    ``log_keys`` / ``witnesses``: the keys the caller trusts; None takes the
    bundle's own (trust on first use, and the report says so). Each checkpoint
    needs a valid signature by a log key and ``witness_threshold`` valid
    cosignatures. ``full`` parses every leaf (canonical form, ``v``, ``ts`` order)
    instead of locating ``seq`` and ``log`` by the canonical key order.
    """
    for key in log_keys or ():
        if key.key_type != NOTE_KEY_TYPE:
            raise EvidenceError(f"{key.name} is not a log (note) key")
    for key in witnesses or ():
        if key.key_type != COSIGNATURE_KEY_TYPE:
            raise EvidenceError(f"{key.name} is not a witness (cosigner) key")
    if witness_threshold < 0:
        raise EvidenceError("the witness threshold must not be negative")
    if witnesses is not None and witness_threshold > len(witnesses):
        raise EvidenceError(
            f"a threshold of {witness_threshold} witnesses needs as many witness keys, "
            f"not {len(witnesses)}"
        )
    report = BundleReport(witness_threshold=witness_threshold, full=full)
    started = time.perf_counter()
    with _open_files(path) as files, ThreadPoolExecutor(1) as pool:
        try:
            _Verification(path, files, pool, report, log_keys, witnesses, progress).run()
            report.ok = True
        except _Failed as failed:
            report.failure = failed.failure
    report.seconds = time.perf_counter() - started
    return report


class _Verification:
    background: Future[dict[str, str]]

    def __init__(
        self,
        path: Path,
        files: _DirectoryFiles | _TarFiles,
        pool: ThreadPoolExecutor,
        report: BundleReport,
        log_keys: Sequence[Verifier] | None,
        witnesses: Sequence[Verifier] | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.path = path
        self.files = files
        self.pool = pool
        self.report = report
        self.given_log_keys = log_keys
        self.given_witnesses = witnesses
        self.progress = progress
        self.roots: dict[int, bytes] = {}

    def run(self) -> None:
        manifest = self.manifest()
        self.report.origin = manifest.origin
        self.report.tenant = manifest.tenant
        self.report.first, self.report.last = manifest.first, manifest.last
        try:
            log_keys, witnesses = self.keys()
            sizes = self.checkpoints(manifest, log_keys, witnesses)
            self.leaves(manifest, sizes)
            self.consistency(sizes)
        finally:
            # Whatever else failed, a file that is not the manifest's is the first failure.
            for name, digest in self.background.result().items():
                _check_digest(manifest, name, digest)
        self.report.covered_to = sizes[-1] if sizes else None

    # ---- manifest -----------------------------------------------------------------

    def manifest(self) -> Manifest:
        names = self.files.names()
        if self.files.odd:
            raise _fail(
                FailureKind.MANIFEST,
                "the bundle holds something that is not a regular file",
                file=self.files.odd[0],
            )
        if MANIFEST not in names:
            raise _fail(FailureKind.MANIFEST, "the bundle has no manifest.json", file=MANIFEST)
        try:
            manifest = msgspec.json.decode(self.files.read(MANIFEST), type=Manifest)
        except msgspec.DecodeError as e:
            raise _fail(
                FailureKind.MANIFEST, f"manifest.json is malformed: {e}", file=MANIFEST
            ) from None
        if manifest.format != FORMAT:
            raise _fail(
                FailureKind.MANIFEST,
                f"manifest.json is of format {manifest.format!r}, not {FORMAT!r}",
                file=MANIFEST,
            )
        if not manifest.origin.endswith(f"/t/{manifest.tenant}"):
            raise _fail(FailureKind.MANIFEST, "the origin does not name the tenant", file=MANIFEST)
        if not 1 <= manifest.first <= manifest.last:
            raise _fail(FailureKind.MANIFEST, "from..to is not a range of events", file=MANIFEST)
        listed = set(manifest.files)
        present = set(names) - {MANIFEST}
        sizes = self._checkpoint_sizes(manifest)
        proofs = {proof_name(old, new) for old, new in itertools.pairwise(sizes)}
        required = {LEAVES, HASHES, LOG_KEYS, WITNESS_KEYS} | (
            {PREFIX} if manifest.first > 1 else set()
        )
        problems = [
            (listed - present, "a file the manifest lists is missing"),
            (present - listed, "a file is not in the manifest"),
            (
                {
                    n
                    for n in listed
                    if not (
                        n in _FIXED_NAMES
                        or _CHECKPOINT_NAME.match(n)
                        or n in proofs
                        or _PEM_NAME.match(n)
                    )
                },
                "not a file a bundle holds (or a proof between checkpoints not consecutive)",
            ),
            (required - listed, "a required file is missing"),
            (
                {PREFIX} & listed if manifest.first == 1 else set(),
                "a bundle from seq 1 has no prefix",
            ),
        ]
        for offending, reason in problems:
            if offending:
                raise _fail(FailureKind.MANIFEST, reason, file=min(offending))
        for name in sorted(listed - {HASHES, LEAVES}):
            _check_digest(manifest, name, _sha256_of(self.files, name))
        counts = manifest.counts
        expected = {
            "events": (counts.events, manifest.last - manifest.first + 1),
            "checkpoints": (counts.checkpoints, len(sizes)),
            "consistency_proofs": (
                counts.consistency_proofs,
                sum(1 for n in listed if _PROOF_NAME.match(n)),
            ),
            "last_checkpoint": (manifest.last_checkpoint, sizes[-1] if sizes else None),
        }
        for what, (claimed, actual) in expected.items():
            if claimed != actual:
                raise _fail(
                    FailureKind.MANIFEST,
                    f"the manifest says {what} {claimed}, the bundle holds {actual}",
                    file=MANIFEST,
                )
        # The two big files are hashed by another thread while the leaves are checked.
        self.background = self.pool.submit(_digests, self.path, [HASHES, LEAVES])
        return manifest

    @staticmethod
    def _checkpoint_sizes(manifest: Manifest) -> list[int]:
        return sorted(int(m.group(1)) for n in manifest.files if (m := _CHECKPOINT_NAME.match(n)))

    # ---- keys ---------------------------------------------------------------------

    def keys(self) -> tuple[list[Verifier], list[Verifier]]:
        if self.given_log_keys is not None:
            log_keys = list(self.given_log_keys)
        else:
            self.report.log_keys = KeySource.BUNDLE
            try:
                entries = msgspec.json.decode(
                    self.files.read(LOG_KEYS), type=dict[str, list[LogKeyEntry]]
                )["keys"]
                log_keys = [Verifier.parse(e.vkey) for e in entries]
            except (msgspec.DecodeError, KeyError, NoteError) as e:
                raise _fail(
                    FailureKind.FORMAT, f"the log keys are malformed: {e}", file=LOG_KEYS
                ) from None
            if any(k.key_type != NOTE_KEY_TYPE for k in log_keys):
                raise _fail(FailureKind.FORMAT, "a log key is not a note key", file=LOG_KEYS)
        if self.given_witnesses is not None:
            witnesses = list(self.given_witnesses)
        else:
            self.report.witnesses = KeySource.BUNDLE
            try:
                lines = self.files.read(WITNESS_KEYS).decode("ascii").splitlines()
                witnesses = [Verifier.parse(line) for line in lines if line.strip()]
            except (UnicodeDecodeError, NoteError) as e:
                raise _fail(
                    FailureKind.FORMAT, f"the witness keys are malformed: {e}", file=WITNESS_KEYS
                ) from None
            if any(k.key_type != COSIGNATURE_KEY_TYPE for k in witnesses):
                raise _fail(
                    FailureKind.FORMAT, "a witness key is not a cosigner key", file=WITNESS_KEYS
                )
        self.report.log_key_names = [k.name for k in log_keys]
        self.report.witness_names = [k.name for k in witnesses]
        return log_keys, witnesses

    # ---- checkpoints --------------------------------------------------------------

    def checkpoints(
        self, manifest: Manifest, log_keys: list[Verifier], witnesses: list[Verifier]
    ) -> list[int]:
        """Parse and check the signatures of every checkpoint; remember their roots."""
        sizes = self._checkpoint_sizes(manifest)
        threshold = self.report.witness_threshold
        for size in sizes:
            name = checkpoint_name(size)
            where = {"checkpoint": size, "file": name}
            try:
                note = parse_note(self.files.read(name).decode("utf-8"))
                checkpoint = Checkpoint.parse_body(note.body)
            except (UnicodeDecodeError, NoteError) as e:
                raise _fail(FailureKind.FORMAT, f"not a checkpoint: {e}", **where) from None
            if checkpoint.origin != manifest.origin:
                raise _fail(FailureKind.CHECKPOINT, "the checkpoint is of another log", **where)
            if checkpoint.size != size:
                raise _fail(
                    FailureKind.CHECKPOINT,
                    f"the checkpoint is of size {checkpoint.size}, its file name says {size}",
                    **where,
                )
            if not manifest.first <= size <= manifest.last:
                raise _fail(FailureKind.CHECKPOINT, "the checkpoint lies outside from..to", **where)
            try:
                signed_by = verified_signers(note, log_keys)
            except NoteError as e:
                raise _fail(FailureKind.SIGNATURE, str(e), **where) from None
            if not signed_by:
                raise _fail(
                    FailureKind.SIGNATURE, "no signature by any of the trusted log keys", **where
                )
            try:
                cosigned = verified_cosigners(note, witnesses)
            except NoteError as e:
                raise _fail(FailureKind.WITNESS, str(e), **where) from None
            if len(cosigned) < threshold:
                raise _fail(
                    FailureKind.WITNESS,
                    f"{len(cosigned)} valid cosignature(s) of the {threshold} required",
                    **where,
                )
            for witness in cosigned:
                self.report.cosignatures[witness] = self.report.cosignatures.get(witness, 0) + 1
            self.roots[size] = checkpoint.root
        return sizes

    # ---- leaves -------------------------------------------------------------------

    def prefix(self, manifest: Manifest) -> tuple[Frontier, bytes]:
        if manifest.first == 1:
            return Frontier(), ZERO_HASH
        where = {"file": PREFIX}
        try:
            prefix = msgspec.json.decode(self.files.read(PREFIX), type=PrefixEntry)
            chain = bytes.fromhex(prefix.chain_hash)
            hashes = [bytes.fromhex(e.hash) for e in prefix.frontier]
        except (msgspec.DecodeError, ValueError) as e:
            raise _fail(FailureKind.FORMAT, f"prefix.json is malformed: {e}", **where) from None
        if prefix.size != manifest.first - 1:
            raise _fail(
                FailureKind.FORMAT,
                f"the prefix is of size {prefix.size}, not {manifest.first - 1}",
                **where,
            )
        subtrees = [(n.level, n.index) for n in Range(0, prefix.size).complete_subtrees()]
        if [(e.level, e.index) for e in prefix.frontier] != subtrees:
            raise _fail(FailureKind.FORMAT, "the prefix's subtrees are not its frontier", **where)
        if len(chain) != HASH_SIZE or any(len(h) != HASH_SIZE for h in hashes):
            raise _fail(FailureKind.FORMAT, "a prefix hash is not 32 bytes", **where)
        return Frontier(prefix.size, hashes), chain

    def leaves(self, manifest: Manifest, sizes: list[int]) -> None:
        """Every leaf in order: its ``seq`` and ``log``, its hash, the chain, the roots.

        This is the hot path. Leaves are read in blocks and handled in segments
        that end at a multiple of ``2**TREE_LEVEL`` or at a checkpoint, so a segment
        is one complete subtree for ``_Tree`` and one bulk comparison with
        hashes.txt; an exact per-leaf diagnosis runs only once something differs.
        """
        prefix, chain = self.prefix(manifest)
        tree = _Tree(prefix)
        first, last = manifest.first, manifest.last
        total = last - first + 1
        checkpoints = iter(sizes)
        next_checkpoint = next(checkpoints, 0)
        segment = _Segment(manifest.origin, self.report.full)
        seq = first - 1
        try:
            with self.files.open(LEAVES) as leaves, self.files.open(HASHES) as hashes:
                for lines in _lines(leaves, seq):
                    at = 0
                    while at < len(lines):
                        end = min(
                            (seq | TREE_MASK) + 1,
                            next_checkpoint if next_checkpoint > seq else last,
                            seq + len(lines) - at,
                        )
                        if end == seq:  # lines remain after seq ``last``
                            raise _fail(
                                FailureKind.COUNT,
                                f"leaves.jsonl holds more than {total} lines",
                                seq=last + 1,
                            )
                        count = end - seq
                        leaf_hashes, chain = segment.check(
                            lines[at : at + count], hashes.read(HASH_LINE * count), seq, chain
                        )
                        tree.add(leaf_hashes)
                        seq = end
                        at += count
                        if seq == next_checkpoint:
                            self._check_root(tree.frontier(), seq)
                            next_checkpoint = next(checkpoints, 0)
                    if self.progress is not None:
                        self.progress(seq - first + 1, total)
                if seq < last:
                    raise _fail(
                        FailureKind.COUNT,
                        f"leaves.jsonl ends at seq {seq}, the manifest says {last}",
                        seq=seq + 1,
                    )
                if hashes.read(1):
                    raise _fail(
                        FailureKind.COUNT,
                        "hashes.txt has more lines than leaves.jsonl",
                        file=HASHES,
                    )
        except _Failed as failed:
            # Every leaf before a failing one was checked in full.
            if failed.failure.seq is not None:
                seq = failed.failure.seq - 1
            raise
        finally:
            self.report.events = seq - first + 1
        self.report.root = tree.frontier().root()

    def _check_root(self, frontier: Frontier, size: int) -> None:
        computed = frontier.root()
        if computed != self.roots[size]:
            raise _fail(
                FailureKind.ROOT,
                f"the leaves give the root {computed.hex()}, the signed checkpoint "
                f"{self.roots[size].hex()}",
                checkpoint=size,
                file=checkpoint_name(size),
            )
        self.report.checkpoints += 1

    # ---- consistency --------------------------------------------------------------

    def consistency(self, sizes: list[int]) -> None:
        names = set(self.files.names())
        for old, new in itertools.pairwise(sizes):
            name = proof_name(old, new)
            where = {"checkpoint": new, "file": name}
            if name not in names:
                raise _fail(
                    FailureKind.CONSISTENCY, f"no consistency proof from {old} to {new}", **where
                )
            try:
                lines = self.files.read(name).decode("ascii").splitlines()
                proof = [unb64(line, "a proof line") for line in lines]
            except (UnicodeDecodeError, NoteError) as e:
                raise _fail(FailureKind.FORMAT, f"not a proof: {e}", **where) from None
            try:
                verify_consistency(old, new, self.roots[old], self.roots[new], proof)
            except ProofError as e:
                raise _fail(FailureKind.CONSISTENCY, f"from {old} to {new}: {e}", **where) from None
            self.report.consistency_proofs += 1


TREE_LEVEL = 8
TREE_MASK = (1 << TREE_LEVEL) - 1
_SPACES = b" " * (TREE_MASK + 1)
_NEWLINES = b"\n" * (TREE_MASK + 1)


def _lines(leaves: IO[bytes], seq: int) -> Iterator[list[bytes]]:
    """The lines of ``leaves`` (seq ``seq + 1`` on) without their newlines, in lists that
    end at a multiple of ``TREE_MASK + 1`` (but the last), so blocks stay whole subtrees."""
    carry = b""
    held: list[bytes] = []
    while block := leaves.read(BLOCK):
        lines = block.split(b"\n")
        lines[0] = carry + lines[0]
        carry = lines.pop()
        if held:
            lines[:0] = held
        cut = len(lines) - ((seq + len(lines)) & TREE_MASK)
        if cut <= 0:
            held = lines
            continue
        held = lines[cut:]
        del lines[cut:]
        seq += len(lines)
        yield lines
    if held:
        seq += len(held)
        yield held
    if carry:
        raise _fail(FailureKind.LEAF, "the last line of leaves.jsonl has no newline", seq=seq + 1)


class _Tree:
    """A Merkle frontier that takes a complete aligned block of leaves as one subtree.

    ``upper`` is the frontier over blocks of ``2**TREE_LEVEL`` leaves, ``tail``
    the one over the leaves of the block being filled; together (bits above
    and below ``TREE_LEVEL`` of the size) they are the whole tree's frontier.
    A whole block costs one ``subtree_of_leaves`` instead of a ``Frontier.append``
    per leaf, which is most of the difference at hundreds of thousands of leaves.
    """

    def __init__(self, frontier: Frontier) -> None:
        hashes = frontier.to_bytes()
        above = frontier.size >> TREE_LEVEL
        cut = HASH_SIZE * above.bit_count()
        self.upper = Frontier.from_bytes(above, hashes[:cut])
        self.tail = Frontier.from_bytes(frontier.size & TREE_MASK, hashes[cut:])

    def add(self, leaf_hashes: list[bytes]) -> None:
        if not self.tail.size and len(leaf_hashes) == TREE_MASK + 1:
            self.upper.append(subtree_of_leaves(leaf_hashes))
            return
        for leaf_hash in leaf_hashes:
            self.tail.append(leaf_hash)
            if self.tail.size > TREE_MASK:
                self.upper.append(self.tail.root())
                self.tail = Frontier()

    def frontier(self) -> Frontier:
        size = (self.upper.size << TREE_LEVEL) + self.tail.size
        return Frontier.from_bytes(size, self.upper.to_bytes() + self.tail.to_bytes())


class _Segment:
    """The per-leaf checks of a run of consecutive leaves, and their hashes."""

    def __init__(self, origin: str, full: bool) -> None:
        self.origin = origin
        self.full = full
        self.log_member = f',"log":"{origin}'.encode()
        self.last_ts = ""

    def check(
        self, leaves: list[bytes], recorded: bytes, seq: int, chain: bytes
    ) -> tuple[list[bytes], bytes]:
        """Check ``leaves`` (seq ``seq + 1`` on) against ``recorded`` lines of hashes.txt.

        Returns their leaf hashes and the last chain hash. Each check runs over
        the whole segment at C speed (comprehensions, ``map``); only when one
        fails does a leaf-by-leaf pass find where. The first failure in leaf
        order wins, a leaf's own check before its hashes.
        """
        sha256 = hashlib.sha256
        leaf_hashes = [sha256(b"\x00" + leaf).digest() for leaf in leaves]
        chains: list[bytes] = []
        append = chains.append
        for leaf_hash in leaf_hashes:
            chain = sha256(chain + leaf_hash).digest()
            append(chain)
        bad_leaf = self._parsed(leaves, seq) if self.full else self._located(leaves, seq)
        bad_hashes = _compare(leaf_hashes, chains, recorded, seq)
        failures = [f for f in (bad_leaf, bad_hashes) if f is not None]
        if failures:
            raise min(failures, key=lambda f: f.failure.seq or 0)
        return leaf_hashes, chain

    def _located(self, leaves: list[bytes], seq: int) -> _Failed | None:
        """``seq`` and ``log`` where canonical key order puts them, without parsing.

        Top-level keys are sorted and nothing after ``seq`` (stream, ts, type, v,
        version) can hold a quote, so the last ``,"seq":`` is the top-level one;
        the last ``","pii":{`` before it ends the top-level ``log`` (``pii`` holds
        only hex strings). ``full`` checks the same by parsing.
        """
        n = len(leaves)
        seq_at = list(map(bytes.rfind, leaves, itertools.repeat(b',"seq":', n)))
        markers = [b',"seq":%d,"' % s for s in range(seq + 1, seq + n + 1)]
        pii_at = list(
            map(bytes.rfind, leaves, itertools.repeat(b'","pii":{', n), itertools.repeat(0), seq_at)
        )
        log_member, length = self.log_member, len(self.log_member)
        if (
            min(seq_at, default=0) >= 0
            and min(pii_at, default=0) >= 0
            and all(map(bytes.startswith, leaves, markers, seq_at))
            and all(
                map(
                    bytes.startswith,
                    leaves,
                    itertools.repeat(log_member),
                    [p - length for p in pii_at],
                )
            )
        ):
            return None
        for leaf, marker, at, pii in zip(leaves, markers, seq_at, pii_at, strict=True):
            seq += 1
            if at < 0 or not leaf.startswith(marker, at):
                return _fail(FailureKind.LEAF, f"the line of seq {seq} holds another seq", seq=seq)
            if pii < 0 or not leaf.startswith(log_member, pii - length):
                return _fail(FailureKind.LEAF, "the leaf's log is not the bundle's origin", seq=seq)
        raise AssertionError("a located check failed and no leaf fails it")

    def _parsed(self, leaves: list[bytes], seq: int) -> _Failed | None:
        for leaf in leaves:
            seq += 1
            if (failed := self._parsed_failure(leaf, seq)) is not None:
                return failed
        return None

    def _parsed_failure(self, leaf: bytes, seq: int) -> _Failed | None:
        try:
            parsed = check_leaf(leaf, {"v": 1, "log": self.origin, "seq": seq})
        except LeafError as e:
            return _fail(FailureKind.LEAF, e.reason, seq=seq)
        ts = parsed.get("ts")
        if not isinstance(ts, str) or ts < self.last_ts:
            return _fail(FailureKind.LEAF, "the leaf's ts is before its predecessor's", seq=seq)
        self.last_ts = ts
        return None


def _compare(
    leaf_hashes: list[bytes], chains: list[bytes], recorded: bytes, seq: int
) -> _Failed | None:
    """The hashes of seq ``seq + 1`` on vs their lines of hashes.txt, all at once."""
    n = len(leaf_hashes)
    recorded = recorded[: HASH_LINE * n]
    if (
        len(recorded) == HASH_LINE * n
        and recorded[64::HASH_LINE] == _SPACES[:n]
        and recorded[129::HASH_LINE] == _NEWLINES[:n]
        and binascii.hexlify(b"".join(map(bytes.__add__, leaf_hashes, chains)))
        == recorded.translate(None, b" \n")
    ):
        return None
    for i, (leaf_hash, chain) in enumerate(zip(leaf_hashes, chains, strict=True)):
        line = recorded[HASH_LINE * i : HASH_LINE * (i + 1)]
        if line != b"%s %s\n" % (leaf_hash.hex().encode(), chain.hex().encode()):
            return _hash_line_failure(line, leaf_hash, seq + i + 1)
    raise AssertionError("the bulk comparison failed and no line differs")


def _hash_line_failure(recorded: bytes, leaf_hash: bytes, seq: int) -> _Failed:
    """Why a line of hashes.txt disagrees (off the hot path: only once it does)."""
    if not recorded:
        return _fail(FailureKind.COUNT, "hashes.txt ends before leaves.jsonl", seq=seq, file=HASHES)
    if (
        len(recorded) != HASH_LINE
        or recorded[64:65] != b" "
        or recorded[-1:] != b"\n"
        or not _LOWER_HEX.fullmatch(recorded[:64] + recorded[65:129])
    ):
        return _fail(
            FailureKind.FORMAT, "not a line of two lowercase hex hashes", seq=seq, file=HASHES
        )
    if bytes.fromhex(recorded[:64].decode()) != leaf_hash:
        return _fail(
            FailureKind.LEAF, "the leaf's bytes do not hash to its recorded leaf hash", seq=seq
        )
    return _fail(
        FailureKind.CHAIN,
        "the recorded chain hash does not follow from the previous one and this leaf",
        seq=seq,
    )


_LOWER_HEX = re.compile(rb"[0-9a-f]{128}")


def _check_digest(manifest: Manifest, name: str, digest: str) -> None:
    if digest != manifest.files[name]:
        raise _fail(FailureKind.MANIFEST, "the file's SHA-256 is not the manifest's", file=name)


def _digests(path: Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of ``names`` through a handle of their own (a tar's is not shareable)."""
    with _open_files(path) as files:
        return {name: _sha256_of(files, name) for name in names}


def _sha256_of(files: _Files, name: str) -> str:
    digest = hashlib.sha256()
    with files.open(name) as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


# --- The auditor's README ----------------------------------------------------------------


def readme(manifest: Manifest, keys: Sequence[Verifier]) -> str:
    """The bundle's README.md: what is in it, and how to check it without our code."""
    first, last, offset = manifest.first, manifest.last, manifest.first - 1
    key_lines = (
        "".join(f"- `{k.name}`, key id `{k.key_id.hex()}`: `{pem_name(k)}`\n" for k in keys)
        or "- (none: no checkpoint was ever signed for this log)\n"
    )
    covered = (
        f"Events {first}..{manifest.last_checkpoint} are under the signed root of checkpoint "
        f"{manifest.last_checkpoint}; "
        if manifest.last_checkpoint
        else "No checkpoint lies in this range, so no event is under a signed root; "
    )
    prefix = (
        f"\nThe bundle starts after seq 1, so `{PREFIX}` carries the chain hash of seq "
        f"{offset} and the Merkle frontier at size {offset} (the complete subtrees of the "
        "earlier leaves). Nothing vouches for them but the signed roots they lead to: a "
        "forged prefix fails at the first checkpoint.\n"
        if first > 1
        else ""
    )
    return _README.format(
        origin=manifest.origin,
        tenant=manifest.tenant,
        first=first,
        last=last,
        offset=offset,
        count=last - first + 1,
        exported_at=manifest.exported_at,
        keys=key_lines,
        covered=covered,
        uncovered=last - (manifest.last_checkpoint or offset),
        files=_files_table(first),
        prefix=prefix,
    )


def _files_table(first: int) -> str:
    line_seq = "i" if first == 1 else f"i + {first - 1}"
    rows = [
        ("manifest.json", "origin, tenant, range, counts, the SHA-256 of every other file"),
        (LEAVES, f"line i holds the exact leaf of seq {line_seq}, then a newline"),
        (HASHES, f"line i is `<leaf hash> <chain hash>` (hex) of seq {line_seq}, as recorded"),
        *(
            [(PREFIX, "the chain hash and Merkle frontier before the first leaf")]
            if first > 1
            else []
        ),
        ("checkpoints/<size>.checkpoint", "signed checkpoints (C2SP notes, with cosignatures)"),
        ("consistency/<old>-<new>.proof", "RFC 9162 proof between consecutive checkpoints"),
        (LOG_KEYS, "the log's notary keys: vkey, PEM, validity (for reading, not enforced)"),
        ("keys/<key id>.pem", "each notary key as a PEM, for `openssl pkeyutl -verify`"),
        (WITNESS_KEYS, "the witness (cosigner) vkeys the exporter named, one per line"),
    ]
    return "| file | what |\n|---|---|\n" + "".join(f"| `{n}` | {w} |\n" for n, w in rows)


_README = """\
# Evidence bundle: {origin}

Events {first}..{last} ({count}) of the log of tenant `{tenant}`, exported {exported_at}.
{covered}{uncovered} event(s) after the last checkpoint are checked by their hashes and the
hash chain only.
{prefix}
Check everything with `strongroom verify THIS_BUNDLE --key VKEY`, with the log key you got
out of band (repeatable), and to require witnesses `--witness VKEY --witness-threshold N`.
Without `--key` the keys in this bundle are used and the summary says so: whoever made a
bundle could have put keys of their own in it.

The checks run in this order, and the first failure is reported with its kind and its seq
or checkpoint size: the manifest (every file listed, present and with its SHA-256); each
checkpoint (its log, its size, a valid signature by a trusted log key, enough valid witness
cosignatures); each leaf in seq order (its `seq` and `log`, its hash and chain hash against
`hashes.txt`, and at each checkpoint's size the Merkle root against the signed one); the
consistency proof between each pair of consecutive checkpoints.

## Files

{files}
Log keys in this bundle:
{keys}
Compare their key ids with the keys you were given before you trust anything here.

## The bytes of one leaf

Each leaf is canonical JSON (RFC 8785), which never holds a raw newline, so a line is a
leaf. The leaf of seq S is on line S - {offset}; its exact bytes are that line without its
newline. With bash, coreutils and openssl:

```bash
N=$((S - {offset}))
sed -n "${{N}}p" leaves.jsonl | head -c -1 > leaf.bin
{{ printf '\\000'; cat leaf.bin; }} | openssl dgst -sha256 -r   # the leaf hash
sed -n "${{N}}p" hashes.txt                                     # starts with the same hash
```

The chain hash of seq S is SHA-256(chain hash of S - 1 || leaf hash of S), the one of seq 0
being 32 zero bytes. The Merkle root of the first n leaves is the RFC 9162 Merkle Tree Hash
of their leaf hashes; it must equal the root in the checkpoint of size n.

## Checkpoints and consistency

`docs/auditor/verify-consistency.sh` in the Strongroom sources checks a pair by itself:

```bash
verify-consistency.sh checkpoints/OLD.checkpoint checkpoints/NEW.checkpoint \\
    consistency/OLD-NEW.proof keys/KEYID.pem KEY_NAME '{origin}'
```

What no bundle can prove: that the log holds nothing after seq {last}, or that this range is
all there was to see. Compare `to` and the last checkpoint with what you asked for.
"""
