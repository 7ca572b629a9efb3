"""The tenant-scoped, hash-linked event store (PostgreSQL via asyncpg).

An append is one transaction per tenant batch: lock the tenant head
(``SELECT ... FOR UPDATE``), check each command's expected stream versions,
assign gapless ``seq``, build the canonical leaf bytes, extend the hash chain
and the Merkle frontier, insert everything with multi-row ``INSERT ... SELECT
FROM unnest(...)``, move the head, commit.

Group commit: concurrent appends for one tenant in this process queue up; one
drainer per tenant takes the whole queue into a single transaction, rejects the
stale or invalid commands one by one (nothing of a rejected command is written)
and answers every caller after the commit. Different tenants have different
drainers and never wait for each other's locks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg
import orjson

from domain.errors import ConflictError, InvalidError, NotFoundError
from infra import canonical
from infra.db import tenant_transaction
from infra.keyring import Keyring, SubjectErasedError, open_sealed, pii_aad, seal
from infra.merkle import ZERO_HASH, Frontier, chain_hash, leaf_hash

LEAF_FORMAT_VERSION: Final = 1
ACTOR_KINDS: Final = frozenset({"user", "api_key", "system", "operator", "platform"})
MAX_EVENTS_PER_COMMAND: Final = 1000
MAX_BATCH_EVENTS: Final = 2000
_STREAM = re.compile(r"^[a-z][a-z0-9_]{0,62}-[A-Za-z0-9][A-Za-z0-9._:-]{0,190}$")
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,62}(\.[a-z][a-z0-9_]{0,62}){1,3}$")
_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_ENVELOPE_ALLOWANCE: Final = 1024


class EventRejectedError(InvalidError):
    """An event cannot be written as given (bad name, value outside the leaf domain, too big)."""


class ConcurrencyError(ConflictError):
    """A stream is not at the version the command expected; nothing was written."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream} is at version {actual}, the command expected {expected}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class CommandIdReusedError(ConflictError):
    """A command id was used before for a command with different content."""


class PersonalDataErasedError(ConflictError):
    """The command carries personal data of a data subject that was erased."""


class EventStoreIntegrityError(RuntimeError):
    """Stored rows contradict each other (tampering or a bug); never expected."""


class _Erased:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<erased>"


ERASED: Final = _Erased()
"""The value of a personal field whose data subject was crypto-shredded."""


@dataclass(frozen=True, slots=True)
class Actor:
    kind: str
    id: str

    def __post_init__(self) -> None:
        if self.kind not in ACTOR_KINDS:
            raise EventRejectedError(f"actor kind must be one of {sorted(ACTOR_KINDS)}")
        if not self.id or len(self.id) > 200:
            raise EventRejectedError("actor id must be 1 to 200 characters")


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEvent:
    """An event to append. ``personal`` values are encrypted under ``subject``'s key."""

    stream: str
    type: str
    data: Mapping[str, Any]
    personal: Mapping[str, str] = field(default_factory=dict)
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    seq: int
    stream: str
    version: int
    event_id: UUID
    leaf_hash: bytes
    chain_hash: bytes


@dataclass(frozen=True, slots=True)
class AppendResult:
    events: tuple[Appended, ...]
    replayed: bool = False
    """True when the command id had been seen: nothing was written this time."""

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    seq: int
    stream: str
    version: int
    event_id: UUID
    type: str
    ts: datetime
    actor: Actor
    causation: UUID | None
    correlation: UUID
    data: dict[str, Any]
    personal: dict[str, str | _Erased]
    leaf: bytes
    leaf_hash: bytes
    chain_hash: bytes


@dataclass(frozen=True, slots=True)
class LogHead:
    tenant_id: UUID
    origin: str
    size: int
    chain_hash: bytes
    frontier: Frontier

    @property
    def root(self) -> bytes:
        return self.frontier.root()


ExpectedVersions = Mapping[str, int | None]
"""Per stream: the version it must be at now (0: must not exist yet), or None for any."""


@dataclass(slots=True)
class _Pending:
    events: Sequence[NewEvent]
    expected: ExpectedVersions
    command_id: UUID
    actor: Actor
    correlation: UUID
    causation: UUID | None
    fingerprint: bytes
    event_ids: list[UUID]
    future: asyncio.Future[AppendResult]


@dataclass(slots=True)
class _Batch:
    """What one transaction writes, column by column."""

    seqs: list[int] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    event_ids: list[UUID] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    leaves: list[bytes] = field(default_factory=list)
    leaf_hashes: list[bytes] = field(default_factory=list)
    chain_hashes: list[bytes] = field(default_factory=list)
    node_levels: list[int] = field(default_factory=list)
    node_indexes: list[int] = field(default_factory=list)
    node_hashes: list[bytes] = field(default_factory=list)
    commands: list[tuple[UUID, bytes, int, int]] = field(default_factory=list)
    pii: list[tuple[bytes, str, bytes]] = field(default_factory=list)


def origin_for(log_host: str, tenant_id: UUID) -> str:
    return f"{log_host}/t/{tenant_id}"


def format_ts(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventStore:
    """Append to and read from tenant logs. One instance per process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: Keyring,
        *,
        log_host: str,
        max_batch_events: int = MAX_BATCH_EVENTS,
    ) -> None:
        self._pool = pool
        self._keyring = keyring
        self._log_host = log_host
        self._max_batch_events = max_batch_events
        self._queues: dict[UUID, deque[_Pending]] = {}
        self._drainers: dict[UUID, asyncio.Task[None]] = {}

    # ---- append -----------------------------------------------------------------

    async def append(
        self,
        tenant_id: UUID,
        events: Sequence[NewEvent],
        *,
        expected: ExpectedVersions,
        command_id: UUID,
        actor: Actor,
        correlation: UUID | None = None,
        causation: UUID | None = None,
    ) -> AppendResult:
        """Append one command's events atomically; see the module docstring.

        Raises :class:`ConcurrencyError` for a stale expected version,
        :class:`CommandIdReusedError` for a reused command id with other
        content, :class:`EventRejectedError` for events that cannot be leaves.
        """
        pending = self._prepare(events, expected, command_id, actor, correlation, causation)
        self._queues.setdefault(tenant_id, deque()).append(pending)
        if tenant_id not in self._drainers:
            self._drainers[tenant_id] = asyncio.create_task(self._drain(tenant_id))
        return await pending.future

    def _prepare(
        self,
        events: Sequence[NewEvent],
        expected: ExpectedVersions,
        command_id: UUID,
        actor: Actor,
        correlation: UUID | None,
        causation: UUID | None,
    ) -> _Pending:
        if not events:
            raise EventRejectedError("a command appends at least one event")
        if len(events) > MAX_EVENTS_PER_COMMAND:
            raise EventRejectedError(f"a command appends at most {MAX_EVENTS_PER_COMMAND} events")
        described = []
        for i, e in enumerate(events):
            where = f"event {i}"
            if not _STREAM.match(e.stream):
                raise EventRejectedError(f"{where}: stream must look like category-id")
            if not _EVENT_TYPE.match(e.type):
                raise EventRejectedError(f"{where}: type must look like category.happened")
            if e.stream not in expected:
                raise EventRejectedError(f"{where}: no expected version for its stream")
            try:
                data_bytes = canonical.encode(dict(e.data))
            except canonical.CanonicalEncodingError as err:
                raise EventRejectedError(f"{where}: data {err}") from None
            if len(data_bytes) + _ENVELOPE_ALLOWANCE + 80 * len(e.personal) > (
                canonical.MAX_LEAF_BYTES
            ):
                raise EventRejectedError(f"{where}: leaf over {canonical.MAX_LEAF_BYTES} bytes")
            if e.personal:
                if not e.subject or len(e.subject) > 200:
                    raise EventRejectedError(f"{where}: personal fields need a data subject")
                for name, value in e.personal.items():
                    if not _FIELD.match(name) or not isinstance(value, str):
                        raise EventRejectedError(f"{where}: personal field {name!r} is invalid")
            # Personal values stay out of the fingerprint: it is kept forever.
            described.append([e.stream, e.type, data_bytes.decode(), sorted(e.personal), e.subject])
        for stream, version in expected.items():
            if version is not None and (type(version) is not int or version < 0):
                raise EventRejectedError(f"expected version of {stream} must be >= 0 or None")
        fingerprint = hashlib.sha256(
            orjson.dumps([described, sorted(expected.items())], option=orjson.OPT_SORT_KEYS)
        ).digest()
        return _Pending(
            events=events,
            expected=expected,
            command_id=command_id,
            actor=actor,
            correlation=correlation or command_id,
            causation=causation,
            fingerprint=fingerprint,
            event_ids=[uuid4() for _ in events],
            future=asyncio.get_running_loop().create_future(),
        )

    async def _drain(self, tenant_id: UUID) -> None:
        queue = self._queues[tenant_id]
        try:
            while queue:
                batch: list[_Pending] = []
                size = 0
                while queue and size < self._max_batch_events:
                    pending = queue.popleft()
                    if not pending.future.done():
                        batch.append(pending)
                        size += len(pending.events)
                if not batch:
                    continue
                try:
                    outcomes = await self._write_batch(tenant_id, batch)
                except BaseException as e:
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(_translate(e))
                    if isinstance(e, asyncio.CancelledError):
                        raise
                    continue
                for pending, outcome in zip(batch, outcomes, strict=True):
                    if pending.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        pending.future.set_exception(outcome)
                    else:
                        pending.future.set_result(outcome)
        finally:
            del self._drainers[tenant_id]
            if not queue:
                self._queues.pop(tenant_id, None)

    async def _write_batch(
        self, tenant_id: UUID, batch: list[_Pending]
    ) -> list[AppendResult | Exception]:
        async with tenant_transaction(self._pool, tenant_id) as conn:
            head, last_ts = await self._lock_head(conn, tenant_id)
            known = {
                r["command_id"]: r
                for r in await conn.fetch(
                    "SELECT command_id, fingerprint, first_seq, event_count FROM command_log "
                    "WHERE tenant_id = $1 AND command_id = ANY($2::uuid[])",
                    tenant_id,
                    list({p.command_id for p in batch}),
                )
            }
            streams = sorted({e.stream for p in batch for e in p.events})
            versions: dict[str, int] = {
                r["stream_id"]: r["version"] or 0
                for r in await conn.fetch(
                    "SELECT s.stream_id, (SELECT e.stream_version FROM event_log e "
                    "  WHERE e.tenant_id = $1 AND e.stream_id = s.stream_id "
                    "  ORDER BY e.stream_version DESC LIMIT 1) AS version "
                    "FROM unnest($2::text[]) AS s(stream_id)",
                    tenant_id,
                    streams,
                )
            }
            subjects = {e.subject for p in batch for e in p.events if e.personal and e.subject}
            keys = await self._keyring.subject_keys(conn, tenant_id, subjects, create=True)

            frontier = head.frontier.copy()
            chain = head.chain_hash
            now = datetime.now(UTC)
            stamp = max(now, last_ts) if last_ts else now
            ts = format_ts(stamp)
            out = _Batch()
            outcomes: list[AppendResult | Exception] = []
            in_batch: dict[UUID, tuple[bytes, AppendResult]] = {}
            replays: list[tuple[int, int, int]] = []  # (outcome index, first seq, count)

            for pending in batch:
                seen = known.get(pending.command_id)
                earlier = in_batch.get(pending.command_id)
                if seen is not None or earlier is not None:
                    fingerprint = seen["fingerprint"] if seen is not None else earlier[0]  # type: ignore[index]
                    if fingerprint != pending.fingerprint:
                        outcomes.append(
                            CommandIdReusedError("command id was used for a different command")
                        )
                    elif earlier is not None:
                        outcomes.append(AppendResult(earlier[1].events, replayed=True))
                    else:
                        assert seen is not None
                        replays.append((len(outcomes), seen["first_seq"], seen["event_count"]))
                        outcomes.append(AppendResult(()))
                    continue
                conflict = _check_expected(pending, versions)
                if conflict is not None:
                    outcomes.append(conflict)
                    continue
                erased = [
                    e.subject
                    for e in pending.events
                    if e.personal and e.subject and keys[e.subject].key is None
                ]
                if erased:
                    outcomes.append(
                        PersonalDataErasedError("personal data of an erased subject is refused")
                    )
                    continue
                try:
                    built = self._build_leaves(
                        tenant_id, head.origin, pending, frontier.size, ts, versions, keys
                    )
                except EventRejectedError as e:
                    outcomes.append(e)
                    continue
                appended = []
                first_seq = frontier.size + 1
                for seq, event, event_id, version, leaf, pii in built:
                    lh = leaf_hash(leaf)
                    chain = chain_hash(chain, lh)
                    for node in frontier.append(lh):
                        out.node_levels.append(node.level)
                        out.node_indexes.append(node.index)
                        out.node_hashes.append(node.hash)
                    out.seqs.append(seq)
                    out.streams.append(event.stream)
                    out.versions.append(version)
                    out.event_ids.append(event_id)
                    out.types.append(event.type)
                    out.leaves.append(leaf)
                    out.leaf_hashes.append(lh)
                    out.chain_hashes.append(chain)
                    out.pii.extend(pii)
                    versions[event.stream] = version
                    appended.append(Appended(seq, event.stream, version, event_id, lh, chain))
                out.commands.append(
                    (pending.command_id, pending.fingerprint, first_seq, len(appended))
                )
                result = AppendResult(tuple(appended))
                in_batch[pending.command_id] = (pending.fingerprint, result)
                outcomes.append(result)

            if out.seqs:
                await self._insert(conn, tenant_id, stamp, out)
                await conn.execute(
                    "UPDATE tenant_log SET size = $2, chain_hash = $3, frontier = $4, last_ts = $5 "
                    "WHERE tenant_id = $1",
                    tenant_id,
                    frontier.size,
                    chain,
                    frontier.to_bytes(),
                    stamp,
                )
            for index, first_seq, count in replays:
                rows = await conn.fetch(
                    "SELECT seq, stream_id, stream_version, event_id, leaf_hash, chain_hash "
                    "FROM event_log WHERE tenant_id = $1 AND seq >= $2 AND seq < $3 ORDER BY seq",
                    tenant_id,
                    first_seq,
                    first_seq + count,
                )
                outcomes[index] = AppendResult(
                    tuple(
                        Appended(
                            r["seq"],
                            r["stream_id"],
                            r["stream_version"],
                            r["event_id"],
                            r["leaf_hash"],
                            r["chain_hash"],
                        )
                        for r in rows
                    ),
                    replayed=True,
                )
        return outcomes

    def _build_leaves(
        self,
        tenant_id: UUID,
        origin: str,
        pending: _Pending,
        size: int,
        ts: str,
        versions: Mapping[str, int],
        keys: Mapping[str, Any],
    ) -> list[tuple[int, NewEvent, UUID, int, bytes, list[tuple[bytes, str, bytes]]]]:
        """The leaves of one command, or :class:`EventRejectedError`; touches no state."""
        built = []
        local_versions: dict[str, int] = {}
        actor = {"kind": pending.actor.kind, "id": pending.actor.id}
        causation = str(pending.causation) if pending.causation else None
        correlation = str(pending.correlation)
        for offset, (event, event_id) in enumerate(
            zip(pending.events, pending.event_ids, strict=True)
        ):
            version = local_versions.get(event.stream, versions.get(event.stream, 0)) + 1
            local_versions[event.stream] = version
            pii_refs: dict[str, str] = {}
            pii_rows: list[tuple[bytes, str, bytes]] = []
            if event.personal:
                assert event.subject is not None
                subject_key = keys[event.subject].key
                for name, value in sorted(event.personal.items()):
                    aad = pii_aad(tenant_id, event.subject, name, event_id)
                    ciphertext = seal(subject_key, value.encode(), aad)
                    digest = hashlib.sha256(ciphertext).digest()
                    pii_refs[name] = digest.hex()
                    pii_rows.append((digest, event.subject, ciphertext))
            seq = size + offset + 1
            leaf = orjson.dumps(
                {
                    "v": LEAF_FORMAT_VERSION,
                    "log": origin,
                    "seq": seq,
                    "ts": ts,
                    "id": str(event_id),
                    "type": event.type,
                    "stream": event.stream,
                    "version": version,
                    "actor": actor,
                    "causation": causation,
                    "correlation": correlation,
                    "salt": base64.b64encode(secrets.token_bytes(16)).decode(),
                    "data": event.data,
                    "pii": pii_refs,
                },
                option=orjson.OPT_SORT_KEYS,
            )
            if len(leaf) > canonical.MAX_LEAF_BYTES:
                raise EventRejectedError(
                    f"event {offset}: leaf over {canonical.MAX_LEAF_BYTES} bytes"
                )
            built.append((seq, event, event_id, version, leaf, pii_rows))
        return built

    async def _insert(
        self, conn: asyncpg.Connection, tenant_id: UUID, recorded_at: datetime, out: _Batch
    ) -> None:
        await conn.execute(
            "INSERT INTO event_log (tenant_id, seq, stream_id, stream_version, event_id, "
            "event_type, recorded_at, leaf, leaf_hash, chain_hash) "
            "SELECT $1, s, st, v, id, ty, $2, l, lh, ch FROM unnest("
            "$3::bigint[], $4::text[], $5::int[], $6::uuid[], $7::text[], $8::bytea[], "
            "$9::bytea[], $10::bytea[]) AS t(s, st, v, id, ty, l, lh, ch)",
            tenant_id,
            recorded_at,
            out.seqs,
            out.streams,
            out.versions,
            out.event_ids,
            out.types,
            out.leaves,
            out.leaf_hashes,
            out.chain_hashes,
        )
        if out.node_hashes:
            await conn.execute(
                "INSERT INTO merkle_node (tenant_id, level, idx, hash) "
                "SELECT $1, lv, ix, h FROM unnest($2::smallint[], $3::bigint[], $4::bytea[]) "
                "AS t(lv, ix, h)",
                tenant_id,
                out.node_levels,
                out.node_indexes,
                out.node_hashes,
            )
        await conn.execute(
            "INSERT INTO command_log (tenant_id, command_id, fingerprint, first_seq, event_count) "
            "SELECT $1, c, f, s, n FROM unnest($2::uuid[], $3::bytea[], $4::bigint[], $5::int[]) "
            "AS t(c, f, s, n)",
            tenant_id,
            *map(list, zip(*out.commands, strict=True)),
        )
        if out.pii:
            await conn.execute(
                "INSERT INTO pii_value (tenant_id, value_hash, subject_id, ciphertext) "
                "SELECT $1, h, s, c FROM unnest($2::bytea[], $3::text[], $4::bytea[]) "
                "AS t(h, s, c)",
                tenant_id,
                *map(list, zip(*out.pii, strict=True)),
            )

    async def _lock_head(
        self, conn: asyncpg.Connection, tenant_id: UUID
    ) -> tuple[LogHead, datetime | None]:
        sql = (
            "SELECT origin, size, chain_hash, frontier, last_ts FROM tenant_log "
            "WHERE tenant_id = $1 FOR UPDATE"
        )
        row = await conn.fetchrow(sql, tenant_id)
        if row is None:
            await conn.execute(
                "INSERT INTO tenant_log (tenant_id, origin, size, chain_hash, frontier) "
                "VALUES ($1, $2, 0, $3, '') ON CONFLICT DO NOTHING",
                tenant_id,
                origin_for(self._log_host, tenant_id),
                ZERO_HASH,
            )
            row = await conn.fetchrow(sql, tenant_id)
            assert row is not None
        return _head_from_row(tenant_id, row), row["last_ts"]

    # ---- reads ------------------------------------------------------------------

    async def head(self, tenant_id: UUID) -> LogHead | None:
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            row = await conn.fetchrow(
                "SELECT origin, size, chain_hash, frontier FROM tenant_log WHERE tenant_id = $1",
                tenant_id,
            )
        return None if row is None else _head_from_row(tenant_id, row)

    async def read_stream(
        self,
        tenant_id: UUID,
        stream: str,
        *,
        to_version: int | None = None,
        to_seq: int | None = None,
    ) -> list[RecordedEvent]:
        """A stream's events in order, optionally only up to a version or a log position."""
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            rows = await conn.fetch(
                "SELECT seq, leaf, leaf_hash, chain_hash FROM event_log "
                "WHERE tenant_id = $1 AND stream_id = $2 "
                "AND ($3::int IS NULL OR stream_version <= $3) "
                "AND ($4::bigint IS NULL OR seq <= $4) ORDER BY stream_version",
                tenant_id,
                stream,
                to_version,
                to_seq,
            )
            return await self._decode(conn, tenant_id, rows)

    async def read_log(
        self, tenant_id: UUID, *, after: int = 0, limit: int = 1000
    ) -> list[RecordedEvent]:
        """One page of the tenant log: events with ``seq > after``, at most ``limit``."""
        if not 1 <= limit <= 10_000:
            raise InvalidError("limit must be between 1 and 10000")
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            rows = await conn.fetch(
                "SELECT seq, leaf, leaf_hash, chain_hash FROM event_log "
                "WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                tenant_id,
                after,
                limit,
            )
            return await self._decode(conn, tenant_id, rows)

    async def read_event(self, tenant_id: UUID, seq: int) -> RecordedEvent:
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            rows = await conn.fetch(
                "SELECT seq, leaf, leaf_hash, chain_hash FROM event_log "
                "WHERE tenant_id = $1 AND seq = $2",
                tenant_id,
                seq,
            )
            if not rows:
                raise NotFoundError(f"no event at seq {seq}")
            return (await self._decode(conn, tenant_id, rows))[0]

    async def _decode(
        self, conn: asyncpg.Connection, tenant_id: UUID, rows: Sequence[asyncpg.Record]
    ) -> list[RecordedEvent]:
        leaves = [orjson.loads(r["leaf"]) for r in rows]
        wanted = [bytes.fromhex(h) for leaf in leaves for h in leaf["pii"].values()]
        values: dict[bytes, asyncpg.Record] = {}
        keys: dict[str, Any] = {}
        if wanted:
            values = {
                r["value_hash"]: r
                for r in await conn.fetch(
                    "SELECT value_hash, subject_id, ciphertext FROM pii_value "
                    "WHERE tenant_id = $1 AND value_hash = ANY($2::bytea[])",
                    tenant_id,
                    wanted,
                )
            }
            subjects = {r["subject_id"] for r in values.values()}
            keys = await self._keyring.subject_keys(conn, tenant_id, subjects, create=False)
        events = []
        for row, leaf in zip(rows, leaves, strict=True):
            personal: dict[str, str | _Erased] = {}
            for name, hex_hash in leaf["pii"].items():
                value = values.get(bytes.fromhex(hex_hash))
                if value is None:
                    raise EventStoreIntegrityError(f"seq {row['seq']}: personal value missing")
                subject_key = keys.get(value["subject_id"])
                if value["ciphertext"] is None or subject_key is None or subject_key.key is None:
                    personal[name] = ERASED
                    continue
                if hashlib.sha256(value["ciphertext"]).hexdigest() != hex_hash:
                    raise EventStoreIntegrityError(f"seq {row['seq']}: personal value altered")
                aad = pii_aad(tenant_id, value["subject_id"], name, UUID(leaf["id"]))
                personal[name] = open_sealed(subject_key.key, value["ciphertext"], aad).decode()
            events.append(
                RecordedEvent(
                    seq=row["seq"],
                    stream=leaf["stream"],
                    version=leaf["version"],
                    event_id=UUID(leaf["id"]),
                    type=leaf["type"],
                    ts=datetime.strptime(leaf["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
                    actor=Actor(leaf["actor"]["kind"], leaf["actor"]["id"]),
                    causation=UUID(leaf["causation"]) if leaf["causation"] else None,
                    correlation=UUID(leaf["correlation"]),
                    data=leaf["data"],
                    personal=personal,
                    leaf=row["leaf"],
                    leaf_hash=row["leaf_hash"],
                    chain_hash=row["chain_hash"],
                )
            )
        return events

    # ---- erasure ----------------------------------------------------------------

    async def shred_subject(self, tenant_id: UUID, subject_id: str) -> int:
        """Crypto-shred a data subject: delete its key and its ciphertexts.

        Hashes, chain and Merkle tree are untouched, so every proof still
        verifies; the personal fields read as erased from now on. Returns the
        number of personal values erased. (The erasure event is the caller's.)
        """
        async with tenant_transaction(self._pool, tenant_id) as conn:
            await conn.execute(
                "INSERT INTO subject_key (tenant_id, subject_id, erased_at) "
                "VALUES ($1, $2, now()) ON CONFLICT (tenant_id, subject_id) DO UPDATE "
                "SET wrapped = NULL, tenant_key_version = NULL, "
                "erased_at = COALESCE(subject_key.erased_at, now())",
                tenant_id,
                subject_id,
            )
            status = await conn.execute(
                "UPDATE pii_value SET ciphertext = NULL "
                "WHERE tenant_id = $1 AND subject_id = $2 AND ciphertext IS NOT NULL",
                tenant_id,
                subject_id,
            )
        return int(status.split()[-1])


def _check_expected(pending: _Pending, versions: Mapping[str, int]) -> ConcurrencyError | None:
    for stream, expected in pending.expected.items():
        actual = versions.get(stream, 0)
        if expected is not None and expected != actual:
            return ConcurrencyError(stream, expected, actual)
    return None


def _head_from_row(tenant_id: UUID, row: asyncpg.Record) -> LogHead:
    return LogHead(
        tenant_id=tenant_id,
        origin=row["origin"],
        size=row["size"],
        chain_hash=row["chain_hash"],
        frontier=Frontier.from_bytes(row["size"], row["frontier"]),
    )


def _translate(error: BaseException) -> BaseException:
    if isinstance(error, asyncpg.UniqueViolationError):
        return ConflictError("a concurrent append won; retry the command")
    if isinstance(error, SubjectErasedError):
        return PersonalDataErasedError(str(error))
    return error
