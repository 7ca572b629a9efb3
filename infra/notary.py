"""The notary: signs a checkpoint of each tenant log that has grown, never a rewritten one.

For a tenant whose log is past its latest checkpoint, one round:

1. Trust only its own past: the latest checkpoint must carry a valid signature
   by one of the configured keys, its stored frontier must give its root, and
   no newer checkpoint may exist in the checkpoint directory (files are the
   notary's memory; a checkpoint row a superuser deleted is found there).
2. Extend its own frontier with the hashes of the new leaves' BYTES (not the
   stored hash column) up to the size it saw, so the new root follows from the
   signed one by construction.
3. Check the store agrees: each stored leaf hash equals the hash of its bytes,
   the stored nodes give the same root, and a consistency proof built from the
   stored nodes verifies from the signed root to the new one. A proof the
   service would later hand out must therefore verify.
4. Sign with every configured key (both keys during a rotation), collect
   witness cosignatures, store the checkpoint row and write its file.

If any check fails it signs nothing for that tenant: a metric, an error log
line (ids and sizes only) and, when the store still accepts appends, a
``ledger.checkpoint_refused`` event in the tenant's own log. It then leaves the
tenant alone until restarted, so an alert is not repeated every interval.

The signing keys live in this object only; they come from a file or the
environment and are never stored in the database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg

from domain.errors import ConflictError, UnavailableError
from infra import metrics
from infra.db import tenant_transaction
from infra.eventstore import Actor, EventStore, NewEvent
from infra.ledger import (
    LedgerIntegrityError,
    StoredCheckpoint,
    consistency_proof,
    latest_checkpoint,
    ledger_keys,
    stored_root,
)
from infra.merkle import EMPTY_ROOT, Frontier, ProofError, leaf_hash, verify_consistency
from infra.notes import (
    Checkpoint,
    Note,
    NoteError,
    Signature,
    Signer,
    Verifier,
    b64,
    parse_note,
    sign_note,
    verified_signers,
)
from infra.settings import PREFIX, Settings, SettingsError
from infra.witness import WitnessClient, parse_witnesses

log = logging.getLogger(__name__)

NOTARY_ACTOR = Actor("system", "notary")
PAGE = 5000
BACKLOG_PAGE = 500
CONCURRENCY = 8
KEY_EVENT_ATTEMPTS = 3

Prove = Callable[[int], Awaitable[list[bytes]]]
Cosigner = Callable[[Note, int, Prove], Awaitable[list[Signature]]]
"""A witness: (signed checkpoint, size of the previous checkpoint, a function
that proves consistency from any size) -> its valid cosignature lines."""


class LedgerEvent:
    KEY_ACTIVATED = "ledger.key_activated"
    KEY_RETIRED = "ledger.key_retired"
    CHECKPOINT_REFUSED = "ledger.checkpoint_refused"


def ledger_stream(tenant_id: UUID) -> str:
    return f"ledger-{tenant_id}"


class Refusal(Exception):
    """The stored log does not extend the notary's last checkpoint."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Outcome:
    tenant_id: UUID
    size: int | None = None
    """The size signed, or None when nothing was signed."""
    refused: str | None = None
    cosigned_by: tuple[str, ...] = ()


class CheckpointDirectory:
    """One file per checkpoint, ``<dir>/<tenant>/<size, 20 digits>.checkpoint``, never rewritten.

    A stand-in for object storage with a retention lock: files are created
    exclusively, fsynced and made read-only.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, tenant_id: UUID, size: int) -> Path:
        return self.root / str(tenant_id) / f"{size:020d}.checkpoint"

    def latest_size(self, tenant_id: UUID) -> int:
        directory = self.root / str(tenant_id)
        if not directory.is_dir():
            return 0
        sizes = [int(p.stem) for p in directory.glob("*.checkpoint") if p.stem.isdigit()]
        return max(sizes, default=0)

    def read(self, tenant_id: UUID, size: int) -> str:
        return self.path(tenant_id, size).read_text(encoding="utf-8")

    def write(self, tenant_id: UUID, size: int, note: str) -> None:
        path = self.path(tenant_id, size)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileExistsError:
            if path.read_text(encoding="utf-8") != note:
                raise Refusal("file-conflict", f"{path.name} exists with other content") from None
            return
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(note)
            f.flush()
            os.fsync(f.fileno())
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class Notary:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        signers: Sequence[Signer],
        *,
        directory: CheckpointDirectory | None = None,
        witnesses: Sequence[Cosigner] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not signers:
            raise ValueError("the notary needs at least one signing key")
        self._pool = pool
        self._store = store
        self._signers = tuple(signers)
        self._verifiers = [s.verifier for s in self._signers]
        self._directory = directory
        self._witnesses = tuple(witnesses)
        self._clock = clock
        self._refused: dict[UUID, str] = {}
        self._announced: set[UUID] = set()

    @property
    def refused(self) -> dict[UUID, str]:
        """Tenants this notary will not sign again until restarted, with the reason code."""
        return dict(self._refused)

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.sign_due()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("notary round failed: %s", type(e).__name__)
            await asyncio.sleep(interval)

    async def sign_due(self) -> list[Outcome]:
        """One round: a checkpoint for every tenant whose log has grown since its last one."""
        outcomes: list[Outcome] = []
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(tenant_id: UUID) -> None:
            async with gate:
                try:
                    outcomes.append(await self.sign_tenant(tenant_id))
                except (ConflictError, UnavailableError, asyncpg.PostgresError, OSError) as e:
                    # One tenant's trouble is not the round's: it is tried again next round.
                    log.warning(
                        "notary skipped tenant %s this round: %s", tenant_id, type(e).__name__
                    )

        after: UUID | None = None
        backlog = 0
        while True:
            rows = await self._pool.fetch(
                "SELECT tenant_id FROM checkpoint_backlog($1, $2)", BACKLOG_PAGE, after
            )
            if not rows:
                break
            backlog += len(rows)
            tenants = [r["tenant_id"] for r in rows if r["tenant_id"] not in self._refused]
            await asyncio.gather(*(one(t) for t in tenants))
            after = rows[-1]["tenant_id"]
        metrics.NOTARY_BACKLOG.set(backlog)
        return outcomes

    async def sign_tenant(self, tenant_id: UUID) -> Outcome:
        if tenant_id in self._refused:
            return Outcome(tenant_id, refused=self._refused[tenant_id])
        try:
            async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
                origin = await conn.fetchval(
                    "SELECT origin FROM tenant_log WHERE tenant_id = $1", tenant_id
                )
                last = await latest_checkpoint(conn, tenant_id)
            if origin is None:
                return Outcome(tenant_id)
            frontier = self._trusted_frontier(tenant_id, origin, last)
            await self._announce_keys(tenant_id)
            return await self._sign(tenant_id, origin, frontier)
        except Refusal as refusal:
            await self._refuse(tenant_id, refusal)
            return Outcome(tenant_id, refused=refusal.code)

    # ---- keys ---------------------------------------------------------------------

    async def _announce_keys(self, tenant_id: UUID) -> None:
        """Make the configured keys the tenant's active ones; each change is an event.

        Once done for a tenant, this process does not look again: its keys do not
        change while it runs (a rotation is a restart)."""
        if tenant_id in self._announced:
            return
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            known = await ledger_keys(conn, tenant_id)
        active = {k.verifier.vkey for k in known if k.valid_until is None}
        configured = {v.vkey: v for v in self._verifiers}
        now = self._clock()
        for vkey, verifier in configured.items():
            if vkey not in active:
                await self._key_event(tenant_id, LedgerEvent.KEY_ACTIVATED, verifier, now)
        for key in known:
            if key.valid_until is None and key.verifier.vkey not in configured:
                await self._key_event(tenant_id, LedgerEvent.KEY_RETIRED, key.verifier, now)
        self._announced.add(tenant_id)

    async def _key_event(
        self, tenant_id: UUID, event_type: str, verifier: Verifier, at: datetime
    ) -> None:
        data = {
            "name": verifier.name,
            "key_id": verifier.key_id.hex(),
            "public_key": b64(verifier.public_key),
            "vkey": verifier.vkey,
            "at": at.isoformat(),
        }

        async def effect(conn: asyncpg.Connection) -> None:
            seq = await conn.fetchval("SELECT size FROM tenant_log WHERE tenant_id = $1", tenant_id)
            if event_type == LedgerEvent.KEY_ACTIVATED:
                await conn.execute(
                    "INSERT INTO ledger_key (tenant_id, name, key_id, public_key, valid_from, "
                    "activated_seq) VALUES ($1, $2, $3, $4, $5, $6) "
                    "ON CONFLICT (tenant_id, name, key_id) DO UPDATE "
                    "SET valid_until = NULL, retired_seq = NULL",
                    tenant_id,
                    verifier.name,
                    verifier.key_id,
                    verifier.public_key,
                    at,
                    seq,
                )
            else:
                await conn.execute(
                    "UPDATE ledger_key SET valid_until = $4, retired_seq = $5 "
                    "WHERE tenant_id = $1 AND name = $2 AND key_id = $3",
                    tenant_id,
                    verifier.name,
                    verifier.key_id,
                    at,
                    seq,
                )

        command_id = uuid4()
        for attempt in range(1, KEY_EVENT_ATTEMPTS + 1):
            try:
                await self._store.append(
                    tenant_id,
                    [NewEvent(stream=ledger_stream(tenant_id), type=event_type, data=data)],
                    expected={ledger_stream(tenant_id): None},
                    command_id=command_id,
                    actor=NOTARY_ACTOR,
                    effect=effect,
                )
                break
            except ConflictError:
                # Another process appended to this tenant at the same moment; the
                # store has reloaded its head, and the same command id keeps a
                # retry from writing the event twice.
                if attempt == KEY_EVENT_ATTEMPTS:
                    raise
        log.info("notary key %s %s for tenant %s", verifier.name, event_type, tenant_id)

    # ---- signing ------------------------------------------------------------------

    async def _sign(self, tenant_id: UUID, origin: str, frontier: Frontier) -> Outcome:
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            size: int = await conn.fetchval(
                "SELECT size FROM tenant_log WHERE tenant_id = $1", tenant_id
            )
        old_size = frontier.size
        old_root = frontier.root() if old_size else EMPTY_ROOT
        if size <= old_size:
            if size < old_size:
                raise Refusal(
                    "shrunk", f"the log has {size} events, the last checkpoint {old_size}"
                )
            return Outcome(tenant_id)
        await self._extend(tenant_id, frontier, size)
        root = frontier.root()
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            try:
                if await stored_root(conn, tenant_id, size) != root:
                    raise Refusal("nodes", "the stored Merkle nodes do not give the leaves' root")
                proof = await consistency_proof(conn, tenant_id, old_size, size)
                verify_consistency(old_size, size, old_root, root, proof)
            except (LedgerIntegrityError, ProofError) as e:
                raise Refusal("consistency", f"no consistency from {old_size}: {e}") from None
        body = Checkpoint(origin, size, root).body()
        note = Note(body, tuple(sign_note(body, signer) for signer in self._signers))
        note = await self._cosign(tenant_id, note, old_size)
        text = note.text()
        signed_at = self._clock()
        async with tenant_transaction(self._pool, tenant_id) as conn:
            inserted = await conn.fetchval(
                "INSERT INTO checkpoint (tenant_id, size, root, note, frontier, signed_at) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING size",
                tenant_id,
                size,
                root,
                text,
                frontier.to_bytes(),
                signed_at,
            )
        if inserted is None:
            return Outcome(tenant_id)
        if self._directory is not None:
            await asyncio.to_thread(self._directory.write, tenant_id, size, text)
        metrics.CHECKPOINTS_SIGNED.inc()
        cosigners = tuple(
            s.name for s in note.signatures if s.name not in {v.name for v in self._verifiers}
        )
        return Outcome(tenant_id, size=size, cosigned_by=cosigners)

    def _trusted_frontier(
        self, tenant_id: UUID, origin: str, last: StoredCheckpoint | None
    ) -> Frontier:
        on_file = self._directory.latest_size(tenant_id) if self._directory else 0
        if last is None:
            if on_file:
                raise Refusal("missing", f"checkpoint {on_file} is on file but not stored")
            return Frontier()
        if on_file > last.size:
            raise Refusal("missing", f"checkpoint {on_file} is on file but not stored")
        try:
            note = parse_note(last.note)
            checkpoint = Checkpoint.parse_body(note.body)
            signed_by = verified_signers(note, self._verifiers)
            frontier = Frontier.from_bytes(last.size, last.frontier)
        except (NoteError, ValueError) as e:
            raise Refusal("last-checkpoint", f"the last checkpoint is malformed: {e}") from None
        if not signed_by:
            raise Refusal(
                "last-checkpoint",
                f"checkpoint {last.size} is signed by no configured key (rotate with an overlap)",
            )
        if (
            checkpoint.origin != origin
            or checkpoint.size != last.size
            or checkpoint.root != last.root
            or frontier.root() != last.root
        ):
            raise Refusal("last-checkpoint", f"checkpoint {last.size} does not match its row")
        on_file_note = (
            self._directory.read(tenant_id, last.size)
            if self._directory is not None and on_file == last.size
            else last.note
        )
        if on_file_note != last.note:
            raise Refusal("last-checkpoint", f"checkpoint {last.size} differs from its file")
        return frontier

    async def _extend(self, tenant_id: UUID, frontier: Frontier, size: int) -> None:
        """Append the hashes of leaves ``frontier.size + 1 .. size``, computed from their bytes."""
        while frontier.size < size:
            async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
                rows = await conn.fetch(
                    "SELECT seq, leaf, leaf_hash FROM event_log WHERE tenant_id = $1 "
                    "AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
                    tenant_id,
                    frontier.size,
                    size,
                    PAGE,
                )
            if not rows:
                raise Refusal("missing-event", f"event {frontier.size + 1} is missing")
            for row in rows:
                seq = row["seq"]
                if seq != frontier.size + 1:
                    raise Refusal("missing-event", f"event {frontier.size + 1} is missing")
                computed = leaf_hash(row["leaf"])
                if computed != row["leaf_hash"]:
                    raise Refusal("leaf", f"the leaf at seq {seq} does not match its stored hash")
                frontier.append(computed)

    async def _cosign(self, tenant_id: UUID, note: Note, old_size: int) -> Note:
        if not self._witnesses:
            return note
        size = Checkpoint.parse_body(note.body).size

        async def prove(from_size: int) -> list[bytes]:
            async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
                return await consistency_proof(conn, tenant_id, from_size, size)

        results = await asyncio.gather(
            *(witness(note, old_size, prove) for witness in self._witnesses),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("a witness failed: %s", type(result).__name__)
                continue
            for signature in result:
                metrics.COSIGNATURES.labels(signature.name).inc()
            note = note.with_signatures(result)
        return note

    async def _refuse(self, tenant_id: UUID, refusal: Refusal) -> None:
        self._refused[tenant_id] = refusal.code
        metrics.NOTARY_REFUSALS.labels(refusal.code).inc()
        metrics.NOTARY_REFUSED_TENANTS.set(len(self._refused))
        log.error(
            "ALERT notary refused to sign tenant %s (%s): %s",
            tenant_id,
            refusal.code,
            refusal.detail,
        )
        try:
            await self._store.append(
                tenant_id,
                [
                    NewEvent(
                        stream=ledger_stream(tenant_id),
                        type=LedgerEvent.CHECKPOINT_REFUSED,
                        data={"reason": refusal.code, "detail": refusal.detail},
                    )
                ],
                expected={ledger_stream(tenant_id): None},
                command_id=uuid4(),
                actor=NOTARY_ACTOR,
            )
        except Exception as e:  # the alert must not hide the refusal
            log.error("could not record the refusal for tenant %s: %s", tenant_id, type(e).__name__)


def build_notary(settings: Settings, pool: asyncpg.Pool, store: EventStore) -> Notary:
    """The notary of a worker process, its keys read now (and held by it alone)."""
    text = settings.load_notary_key_text()
    if text is None:
        raise SettingsError(PREFIX + "NOTARY_KEY", "a notary signing key (or NOTARY_KEY_FILE)")
    try:
        signers = load_signers(text)
    except NoteError as e:
        raise SettingsError(PREFIX + "NOTARY_KEY", f"PRIVATE+KEY+... lines ({e})") from None
    return Notary(
        pool,
        store,
        signers,
        directory=CheckpointDirectory(settings.checkpoint_directory),
        witnesses=witness_cosigners(settings.witnesses),
    )


def load_or_create_dev_notary_key(data_dir: Path, name: str) -> Path:
    """For development only: a notary key file in the data dir, made on first start."""
    path = data_dir / "notary.key"
    if path.exists():
        return path
    signer = Signer.generate(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.skey + "\n")
    print(
        f"WARNING: generated a development notary key at {path} (public key "
        f"{signer.verifier.vkey}). In production set STRONGROOM_NOTARY_KEY_FILE to a key "
        "kept offline from the database; whoever holds it can sign checkpoints.",
        file=sys.stderr,
    )
    return path


def witness_cosigners(spec: str) -> list[Cosigner]:
    if not spec.strip():
        return []
    try:
        endpoints = parse_witnesses(spec)
    except ValueError as e:
        raise SettingsError(PREFIX + "WITNESSES", f"'<vkey> <url>' pairs ({e})") from None
    return [WitnessClient(endpoint).request_cosignatures for endpoint in endpoints]


def load_signers(text: str) -> list[Signer]:
    """Signer keys, one ``PRIVATE+KEY+...`` per line (two during a rotation's overlap)."""
    signers = [Signer.parse(line) for line in text.splitlines() if line.strip()]
    if not signers:
        raise NoteError("no signing key found")
    return signers
