"""The tenant-scoped, hash-linked event store (PostgreSQL via asyncpg).

Group commit: concurrent appends for one tenant in this process queue up; one
drainer per tenant takes the whole queue as one batch. Different tenants have
different drainers and never wait for each other's locks.

A batch is one statement. The process caches each tenant's head (size, chain
hash, Merkle frontier, last timestamp) and plans against it, without I/O: it
assigns ``seq`` and stream versions, builds the canonical leaves, extends the
chain and the frontier. It then calls ``append_batch()`` (infra/sql/0010), which
takes the head row lock and checks the cached head, every command id (replays),
every expected stream version and every data subject (erased ones take no new
personal data). Either everything is written and the head moves, or nothing is
written and the answer says why; the drainer then corrects its plan (new head,
rejected commands out) and calls again. Nothing of a rejected command is ever
written, and the other commands of its batch still commit.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any, Final
from uuid import UUID

import asyncpg
import orjson

from domain.errors import ConflictError, InvalidError, NotFoundError
from infra import canonical
from infra.db import call_in_tenant, tenant_transaction
from infra.keyring import Cipher, Keyring, SubjectKey, pii_aad
from infra.merkle import MIN_STORED_LEVEL, ZERO_HASH, Frontier
from infra.metrics import APPEND_CALLS

log = logging.getLogger(__name__)

_CALLS: Final = {
    path: APPEND_CALLS.labels(path)
    for path in ("direct", "pipelined", "resent", "careful", "locked")
}
"""The append_batch call counters, by path (labels() costs microseconds per call)."""
LEAF_FORMAT_VERSION: Final = 1
ACTOR_KINDS: Final = frozenset({"user", "api_key", "system", "operator", "platform"})
MAX_EVENTS_PER_COMMAND: Final = 1000
MAX_BATCH_EVENTS: Final = 2000
_MAX_ATTEMPTS: Final = 8
_VERSION_CACHE: Final = 4096
_PIPELINE_DEPTH: Final = 2
"""Batches of one tenant in flight at once: one committing, one planned behind it."""
_STREAM = re.compile(r"^[a-z][a-z0-9_]{0,62}-[A-Za-z0-9][A-Za-z0-9._:-]{0,190}$")
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,62}(\.[a-z][a-z0-9_]{0,62}){1,3}$")
_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_ENVELOPE_ALLOWANCE: Final = 1024
_LEAF: Final = (
    b'{"actor":%b,"causation":%b,"correlation":"%b","data":%b,"id":"%b","log":%b,"pii":%b,'
    b'"salt":"%b","seq":%d,"stream":"%b","ts":"%b","type":"%b","v":%d,"version":%d}'
)
"""The leaf's envelope, keys in RFC 8785 order (see ``_build_leaves``)."""


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
        if not _is_text(self.id, 200):
            raise EventRejectedError("actor id must be 1 to 200 characters of text")


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


@dataclass(frozen=True, slots=True)
class Committed:
    """An event just committed, as the after-commit publisher needs it."""

    seq: int
    stream: str
    type: str
    leaf: bytes
    chain_hash: bytes


CommitListener = Callable[[UUID, Sequence[Committed]], None]
"""Called once per committed batch, in commit order per tenant; must not block."""


Effect = Callable[[asyncpg.Connection], Awaitable[None]]
"""Writes that must commit with a command's events or not at all (see ``append``)."""

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
    data_json: list[bytes]
    """Each event's data, already canonical: put into the leaf as it is."""
    future: asyncio.Future[AppendResult]
    effect: Effect | None = None


@dataclass(slots=True)
class _Flight:
    """A batch sent to ``append_batch`` whose answer has not been taken yet."""

    batch: list[_Pending]
    plan: _Plan
    base_size: int
    base_chain: bytes
    """The head the plan was made on (what ``append_batch`` must find)."""
    behind: bool
    """Planned on the head another flight leaves, not on a committed one."""
    task: asyncio.Future[object] = field(init=False)
    resent: int = 0


@dataclass(slots=True, kw_only=True)
class _Plan:
    """One call of ``append_batch``: its columns, and what each command gets if it commits."""

    frontier: Frontier
    chain: bytes
    ts: datetime
    commands: list[int] = field(default_factory=list)
    """Batch indexes of the commands sent, by their position in the call."""
    results: dict[int, AppendResult] = field(default_factory=dict)
    local_rejections: dict[int, Exception] = field(default_factory=dict)
    """Rejected against earlier commands of this plan: final only if the plan commits."""
    final_rejections: dict[int, Exception] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    arguments: tuple[object, ...] = ()
    seqs: list[int] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    stream_versions: list[int] = field(default_factory=list)
    event_ids: list[UUID] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    leaves: list[bytes] = field(default_factory=list)
    leaf_hashes: list[bytes] = field(default_factory=list)
    chain_hashes: list[bytes] = field(default_factory=list)
    node_levels: list[int] = field(default_factory=list)
    node_indexes: list[int] = field(default_factory=list)
    node_hashes: list[bytes] = field(default_factory=list)
    c_id: list[UUID] = field(default_factory=list)
    c_fingerprint: list[bytes] = field(default_factory=list)
    c_first_seq: list[int] = field(default_factory=list)
    c_count: list[int] = field(default_factory=list)
    x_command: list[int] = field(default_factory=list)
    x_stream: list[str] = field(default_factory=list)
    x_version: list[int] = field(default_factory=list)
    x_any: list[bool] = field(default_factory=list)
    p_hash: list[bytes] = field(default_factory=list)
    p_subject: list[str] = field(default_factory=list)
    p_command: list[int] = field(default_factory=list)
    p_ciphertext: list[bytes] = field(default_factory=list)

    def add(self, pending: _Pending, built: list[_Built], position: int) -> AppendResult:
        """Hash one command's leaves into the chain and the tree."""
        appended = []
        self.c_id.append(pending.command_id)
        self.c_fingerprint.append(pending.fingerprint)
        self.c_first_seq.append(self.frontier.size + 1)
        self.c_count.append(len(built))
        chain = self.chain
        add_leaf = self.frontier.append
        for seq, event, event_id, version, leaf, pii in built:
            lh = sha256(b"\x00" + leaf).digest()
            chain = sha256(chain + lh).digest()
            for node in add_leaf(lh, MIN_STORED_LEVEL):
                self.node_levels.append(node.level)
                self.node_indexes.append(node.index)
                self.node_hashes.append(node.hash)
            self.seqs.append(seq)
            self.streams.append(event.stream)
            self.stream_versions.append(version)
            self.event_ids.append(event_id)
            self.types.append(event.type)
            self.leaves.append(leaf)
            self.leaf_hashes.append(lh)
            self.chain_hashes.append(chain)
            for digest, subject, ciphertext in pii:
                self.p_hash.append(digest)
                self.p_subject.append(subject)
                self.p_command.append(position)
                self.p_ciphertext.append(ciphertext)
            appended.append(Appended(seq, event.stream, version, event_id, lh, chain))
        self.chain = chain
        return AppendResult(tuple(appended))

    def head_after(self, head: _HeadCache) -> _HeadCache:
        """The head ``head`` becomes if this plan commits: what the batch behind it
        is planned on while this one is in flight."""
        return _HeadCache(
            origin=head.origin,
            size=self.frontier.size,
            chain=self.chain,
            frontier=self.frontier,
            last_ts=self.ts,
            versions=head.versions,
            planned_versions=self.versions,
        )

    def to_arguments(self, head: _HeadCache) -> tuple[object, ...]:
        return (
            head.origin,
            head.size,
            head.chain,
            self.frontier.size,
            self.chain,
            self.frontier.to_bytes(),
            self.ts,
            self.seqs,
            self.streams,
            self.stream_versions,
            self.event_ids,
            self.types,
            self.leaves,
            self.leaf_hashes,
            self.chain_hashes,
            self.node_levels,
            self.node_indexes,
            self.node_hashes,
            self.c_id,
            self.c_fingerprint,
            self.c_first_seq,
            self.c_count,
            self.x_command,
            self.x_stream,
            self.x_version,
            self.x_any,
            self.p_hash,
            self.p_subject,
            self.p_command,
            self.p_ciphertext,
        )


@dataclass(slots=True)
class _HeadCache:
    """What this process believes a tenant's head is; ``append_batch`` checks it."""

    origin: str
    size: int = -1
    """-1: not known yet (the first call only fetches it)."""
    chain: bytes = ZERO_HASH
    frontier: Frontier = field(default_factory=Frontier)
    last_ts: datetime | None = None
    versions: OrderedDict[str, int] = field(default_factory=OrderedDict)
    """Recently seen stream versions, used to guess for ``None`` (any) expectations."""
    planned_versions: Mapping[str, int] = field(default_factory=dict)
    """Stream versions of the batch in flight that this head assumes has committed."""

    def version_of(self, stream: str) -> int:
        """The stream's version as far as this process knows (0: not seen)."""
        return self.planned_versions.get(stream) or self.versions.get(stream, 0)

    def commit(self, plan: _Plan) -> None:
        self.size = plan.frontier.size
        self.chain = plan.chain
        self.frontier = plan.frontier
        self.last_ts = plan.ts
        for stream, version in plan.versions.items():
            self.versions[stream] = version
            self.versions.move_to_end(stream)
        while len(self.versions) > _VERSION_CACHE:
            self.versions.popitem(last=False)

    def reloaded(self, answer: dict[str, Any]) -> _HeadCache:
        return _HeadCache(
            origin=answer["origin"],
            size=answer["size"],
            chain=bytes.fromhex(answer["chain"]),
            frontier=Frontier.from_bytes(answer["size"], bytes.fromhex(answer["frontier"])),
            last_ts=datetime.fromisoformat(answer["last_ts"]) if answer["last_ts"] else None,
            versions=self.versions,
        )


_Built = tuple[int, NewEvent, UUID, int, bytes, list[tuple[bytes, str, bytes]]]


def _is_text(value: object, max_length: int) -> bool:
    """A non-empty string that can be stored as text: UTF-8 encodable, no NUL."""
    return (
        isinstance(value, str)
        and len(value) > 0
        and "\x00" not in value
        and _is_encodable(value, max_length)
    )


def _is_encodable(value: object, max_length: int) -> bool:
    if not isinstance(value, str) or len(value) > max_length:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def new_event_ids(count: int) -> list[UUID]:
    """``count`` UUIDv7s (RFC 9562) of this millisecond, from one random read: time-ordered,
    so the event id index grows at its right edge."""
    stamp = (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | 0b10 << 62
    random = os.urandom(10 * count)
    ids = []
    for at in range(0, 10 * count, 10):
        rand = int.from_bytes(random[at : at + 10], "big")
        ids.append(UUID(int=stamp | (rand >> 62 & 0xFFF) << 64 | rand & 0x3FFF_FFFF_FFFF_FFFF))
    return ids


def origin_for(log_host: str, tenant_id: UUID) -> str:
    return f"{log_host}/t/{tenant_id}"


def format_ts(ts: datetime) -> str:
    """``%Y-%m-%dT%H:%M:%S.%fZ`` in UTC (isoformat: a tenth of strftime's cost)."""
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


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
        self._heads: dict[UUID, _HeadCache] = {}
        self._listeners: list[CommitListener] = []
        self._wakeups: dict[UUID, asyncio.Future[None]] = {}

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

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
        effect: Effect | None = None,
    ) -> AppendResult:
        """Append one command's events atomically; see the module docstring.

        ``effect`` runs in the same transaction, under the tenant's row-level
        security, only if the events are written this time (not for a replayed
        command id); if it raises, nothing is written and the error is raised
        here. It is for state that must agree with the log at every instant,
        such as credentials and sessions. A command with an effect is written
        in a transaction of its own, not grouped with others.

        Raises :class:`ConcurrencyError` for a stale expected version,
        :class:`CommandIdReusedError` for a reused command id with other
        content, :class:`EventRejectedError` for events that cannot be leaves.
        """
        pending = self._prepare(events, expected, command_id, actor, correlation, causation)
        pending.effect = effect
        self._queues.setdefault(tenant_id, deque()).append(pending)
        if tenant_id not in self._drainers:
            self._drainers[tenant_id] = asyncio.create_task(self._drain(tenant_id))
        else:
            wakeup = self._wakeups.get(tenant_id)
            if wakeup is not None and not wakeup.done():
                wakeup.set_result(None)
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
        checked: list[NewEvent] = []
        data_json: list[bytes] = []
        valid_streams: set[str] = set()
        valid_types: set[str] = set()
        for i, e in enumerate(events):
            if e.stream not in valid_streams:
                if not _STREAM.fullmatch(e.stream):
                    raise EventRejectedError(f"event {i}: stream must look like category-id")
                if e.stream not in expected:
                    raise EventRejectedError(f"event {i}: no expected version for its stream")
                valid_streams.add(e.stream)
            if e.type not in valid_types:
                if not _EVENT_TYPE.fullmatch(e.type):
                    raise EventRejectedError(f"event {i}: type must look like category.happened")
                valid_types.add(e.type)
            data = e.data
            if type(data) is not dict:
                if not isinstance(data, Mapping):
                    raise EventRejectedError(f"event {i}: data must be an object")
                data = dict(data)
            # Encoding now snapshots the data: a caller changing it later changes nothing.
            try:
                data_bytes = canonical.encode(data)
            except canonical.CanonicalEncodingError as err:
                raise EventRejectedError(f"event {i}: data {err}") from None
            if len(data_bytes) + _ENVELOPE_ALLOWANCE + 80 * len(e.personal) > (
                canonical.MAX_LEAF_BYTES
            ):
                raise EventRejectedError(f"event {i}: leaf over {canonical.MAX_LEAF_BYTES} bytes")
            personal: list[str] = []
            if e.personal:
                # A snapshot of the values (as for data above); no dataclasses.replace:
                # it costs microseconds per event.
                e = NewEvent(  # noqa: PLW2901
                    stream=e.stream,
                    type=e.type,
                    data=e.data,
                    personal=dict(e.personal),
                    subject=e.subject,
                )
                if not _is_text(e.subject, 200):
                    raise EventRejectedError(f"event {i}: personal fields need a data subject")
                for name, value in e.personal.items():
                    if not _FIELD.fullmatch(name) or not _is_encodable(value, 64 * 1024):
                        raise EventRejectedError(f"event {i}: personal field {name!r} is invalid")
                personal = sorted(e.personal)
            # Personal values stay out of the fingerprint: it is kept forever.
            described.append([e.stream, e.type, data_bytes.decode(), personal, e.subject])
            checked.append(e)
            data_json.append(data_bytes)
        for stream, version in expected.items():
            if version is not None and (type(version) is not int or version < 0):
                raise EventRejectedError(f"expected version of {stream} must be >= 0 or None")
        fingerprint = hashlib.sha256(
            orjson.dumps(
                [described, sorted(expected.items()), [actor.kind, actor.id]],
                option=orjson.OPT_SORT_KEYS,
            )
        ).digest()
        return _Pending(
            events=checked,
            expected=expected,
            command_id=command_id,
            actor=actor,
            correlation=correlation or command_id,
            causation=causation,
            fingerprint=fingerprint,
            event_ids=new_event_ids(len(events)),
            data_json=data_json,
            future=asyncio.get_running_loop().create_future(),
        )

    async def _drain(self, tenant_id: UUID) -> None:
        """Write a tenant's queued commands, keeping up to two batches in flight.

        The second batch is planned on the head the first will leave, so Python
        plans it while PostgreSQL commits the first; its call waits on the head row
        lock and then finds exactly that head. Answers are taken in order, so heads
        and commit listeners see commits in commit order. If a batch does not
        commit, the batches behind it were planned on a head that never existed and
        come back ``stale`` having written nothing: once the pipe is empty they are
        written again one at a time, the careful way (``_write_batch``).
        """
        queue = self._queues[tenant_id]
        in_flight: deque[_Flight] = deque()
        try:
            while queue or in_flight:
                if queue and len(in_flight) < _PIPELINE_DEPTH:
                    # With nothing in flight, send half the queue now and plan the rest
                    # behind it while it commits.
                    batch = self._take(queue, half=not in_flight)
                    if not batch:
                        continue
                    try:
                        flight = await self._launch(tenant_id, batch, in_flight)
                    except Exception as e:  # e.g. the subject keys could not be read
                        _fail(batch, e)
                        continue
                    if flight is not None:
                        in_flight.append(flight)
                    else:
                        redo = await self._land_all(tenant_id, in_flight)
                        await self._write_carefully(tenant_id, [*redo, batch])
                    continue
                if not queue and not in_flight[0].task.done():
                    await self._next_event(tenant_id, in_flight[0].task)
                    continue
                redo = await self._land_next(tenant_id, in_flight)
                if redo:
                    redo += await self._land_all(tenant_id, in_flight)
                    await self._write_carefully(tenant_id, redo)
        except BaseException as e:
            for flight in in_flight:
                flight.task.cancel()
                _fail(flight.batch, e)
            raise
        finally:
            del self._drainers[tenant_id]
            if not queue:
                self._queues.pop(tenant_id, None)

    def _take(self, queue: deque[_Pending], *, half: bool = False) -> list[_Pending]:
        """The next batch: commands in arrival order up to the batch size (or to half
        the queue); a command with an effect alone."""
        batch: list[_Pending] = []
        size = 0
        count = (len(queue) + 1) // 2 if half else len(queue)
        while queue and size < self._max_batch_events and len(batch) < count:
            if batch and (batch[0].effect or queue[0].effect):
                break
            pending = queue.popleft()
            if not pending.future.done():
                batch.append(pending)
                size += len(pending.events)
        return batch

    async def _next_event(self, tenant_id: UUID, task: asyncio.Future[object]) -> None:
        """Wait until the oldest call answers or another command is queued."""
        wakeup = asyncio.get_running_loop().create_future()
        self._wakeups[tenant_id] = wakeup
        try:
            await asyncio.wait((task, wakeup), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wakeups.pop(tenant_id, None)

    async def _settle(
        self, batch: list[_Pending], outcomes: Awaitable[list[AppendResult | Exception]]
    ) -> None:
        try:
            answered = await outcomes
        except BaseException as e:
            _fail(batch, e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        for pending, outcome in zip(batch, answered, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)

    async def _launch(
        self, tenant_id: UUID, batch: list[_Pending], in_flight: deque[_Flight]
    ) -> _Flight | None:
        """Plan a batch and send it without waiting, or None: write it the careful way
        (a command with an effect, an unknown head, a locally rejected command, or no
        connection to spare while another batch of this tenant is in flight)."""
        head = self._heads.get(tenant_id)
        if batch[0].effect is not None or head is None or head.size < 0:
            return None
        if in_flight and self._pool.get_idle_size() == 0:
            return None  # a second call would hold a connection other tenants need
        _, live, duplicates = _screen(batch)
        if duplicates or len(live) < len(batch):
            return None
        keys = await self._subject_keys(tenant_id, batch)
        if in_flight:
            head = in_flight[-1].plan.head_after(head)
        plan = self._plan(tenant_id, head, batch, live, keys)
        if plan.final_rejections or plan.local_rejections:
            return None
        flight = _Flight(batch, plan, head.size, head.chain, behind=bool(in_flight))
        self._send(tenant_id, flight, "pipelined" if in_flight else "direct")
        return flight

    def _send(self, tenant_id: UUID, flight: _Flight, path: str) -> None:
        flight.task = asyncio.ensure_future(
            call_in_tenant(self._pool, tenant_id, "append_batch", *flight.plan.arguments)
        )
        _CALLS[path].inc()

    def _land(self, tenant_id: UUID, flight: _Flight, status: str) -> bool:
        """Answer a flight's commands if it committed; False if it wrote nothing."""
        if status != "ok":
            return False
        head = self._heads.get(tenant_id) or self._unknown_head(tenant_id)
        head.commit(flight.plan)
        self._heads[tenant_id] = head
        self._announce(tenant_id, flight.plan)
        for i, pending in enumerate(flight.batch):
            if not pending.future.done():
                pending.future.set_result(flight.plan.results[i])
        return True

    async def _land_next(self, tenant_id: UUID, in_flight: deque[_Flight]) -> list[list[_Pending]]:
        """Land the oldest flight; return its batch if it wrote nothing."""
        flight = in_flight.popleft()
        try:
            raw = await flight.task
        except asyncio.CancelledError as e:
            _fail(flight.batch, e)
            raise
        except Exception as e:
            # It may have committed before the connection failed: forget the head
            # (the next call fetches it) and let the callers retry their command ids.
            self._heads.pop(tenant_id, None)
            _fail(flight.batch, e)
            return []
        status = orjson.loads(str(raw))["status"]
        if self._land(tenant_id, flight, status):
            return []
        head = self._heads.get(tenant_id)
        if (
            status == "stale"
            and flight.behind
            and head is not None
            and (head.size, head.chain) == (flight.base_size, flight.base_chain)
            and flight.resent < 2
        ):
            # Its call took the head lock before the batch ahead of it did, and that
            # batch has committed since: the plan now fits the head exactly.
            flight.resent += 1
            self._send(tenant_id, flight, "resent")
            in_flight.appendleft(flight)
            return []
        return [flight.batch]

    async def _land_all(self, tenant_id: UUID, in_flight: deque[_Flight]) -> list[list[_Pending]]:
        """Land every flight in order; return the batches that wrote nothing."""
        redo = []
        while in_flight:
            redo += await self._land_next(tenant_id, in_flight)
        return redo

    async def _write_carefully(self, tenant_id: UUID, batches: list[list[_Pending]]) -> None:
        for batch in batches:
            await self._settle(batch, self._write_batch(tenant_id, batch))

    async def _write_batch(
        self, tenant_id: UUID, batch: list[_Pending]
    ) -> list[AppendResult | Exception]:
        """Write one batch in as few round trips as the head cache allows (usually one)."""
        outcomes, live, duplicates = _screen(batch)
        keys = await self._subject_keys(tenant_id, [batch[i] for i in live])
        replays: list[tuple[int, int, int]] = []

        effect = batch[0].effect
        locked = False
        for _ in range(_MAX_ATTEMPTS):
            if not live:
                break
            if locked:
                attempt = await self._attempt_locked(tenant_id, batch, live, keys, outcomes)
                if attempt is None:
                    continue
                head, plan, answer = attempt
            else:
                head = self._heads.get(tenant_id) or self._unknown_head(tenant_id)
                if head.size < 0:
                    plan = _Plan(frontier=Frontier(), chain=ZERO_HASH, ts=datetime.now(UTC))
                    plan.arguments = plan.to_arguments(head)
                else:
                    plan = self._plan_live(tenant_id, head, batch, live, keys, outcomes)
                if not plan.commands and head.size >= 0:
                    continue
                _CALLS["careful"].inc()
                if effect is None:
                    raw = await call_in_tenant(
                        self._pool, tenant_id, "append_batch", *plan.arguments
                    )
                    answer = orjson.loads(str(raw))
                else:
                    answer = await self._append_with_effect(tenant_id, plan, effect)
            if answer["status"] == "ok":
                head.commit(plan)
                self._heads[tenant_id] = head
                self._announce(tenant_id, plan)
                for i, result in plan.results.items():
                    outcomes[i] = result
                for i, error in plan.local_rejections.items():
                    outcomes[i] = error
                break
            if answer["status"] == "stale":
                # Another process appended since this one last looked. Planning again
                # on the head in the answer can lose the race again and again to a
                # process that keeps a call waiting on the lock, so the next attempt
                # takes the lock first and plans under it.
                self._heads[tenant_id] = head.reloaded(answer)
                locked = head.size >= 0
                continue
            for r in answer["replays"]:
                i = plan.commands[r["command"]]
                if bytes.fromhex(r["fingerprint"]) != batch[i].fingerprint:
                    outcomes[i] = CommandIdReusedError(
                        "command id was used for a different command"
                    )
                else:
                    replays.append((i, r["first_seq"], r["count"]))
            replayed = {i for i, _, _ in replays}
            for c in answer["conflicts"]:
                i = plan.commands[c["command"]]
                if c["any"]:
                    head.versions[c["stream"]] = c["actual"]
                elif outcomes[i] is None and i not in replayed:
                    outcomes[i] = ConcurrencyError(c["stream"], c["expected"], c["actual"])
            for e in answer["erased"]:
                i = plan.commands[e["command"]]
                outcomes[i] = PersonalDataErasedError(
                    "personal data of an erased subject is refused"
                )
            live = [i for i in live if outcomes[i] is None and i not in replayed]
        else:
            for i in live:
                outcomes[i] = ConflictError("the tenant log is too busy right now; retry")

        if replays:
            await self._fill_replays(tenant_id, replays, outcomes)
        for i, j in duplicates:
            first = outcomes[j]
            outcomes[i] = (
                AppendResult(first.events, replayed=True)
                if isinstance(first, AppendResult)
                else first
            )
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def _plan_live(
        self,
        tenant_id: UUID,
        head: _HeadCache,
        batch: list[_Pending],
        live: list[int],
        keys: Mapping[str, SubjectKey],
        outcomes: list[AppendResult | Exception | None],
    ) -> _Plan:
        """``_plan``, with the commands it rejects for good taken out of ``live``."""
        plan = self._plan(tenant_id, head, batch, live, keys)
        for i, error in plan.final_rejections.items():
            outcomes[i] = error
            live.remove(i)
        return plan

    async def _attempt_locked(
        self,
        tenant_id: UUID,
        batch: list[_Pending],
        live: list[int],
        keys: Mapping[str, SubjectKey],
        outcomes: list[AppendResult | Exception | None],
    ) -> tuple[_HeadCache, _Plan, dict[str, Any]] | None:
        """One attempt holding the head row lock from before planning to commit, so no
        other process can make the plan stale (None: every command was rejected)."""
        effect = batch[0].effect
        async with tenant_transaction(self._pool, tenant_id) as conn:
            row = await conn.fetchrow(
                "SELECT origin, size, chain_hash, frontier, last_ts FROM tenant_log "
                "WHERE tenant_id = $1 FOR UPDATE",
                tenant_id,
            )
            known = self._heads.get(tenant_id) or self._unknown_head(tenant_id)
            head = _HeadCache(origin=known.origin, size=0, versions=known.versions)
            if row is not None:
                head = _HeadCache(
                    origin=row["origin"],
                    size=row["size"],
                    chain=row["chain_hash"],
                    frontier=Frontier.from_bytes(row["size"], row["frontier"]),
                    last_ts=row["last_ts"],
                    versions=known.versions,
                )
            self._heads[tenant_id] = head
            plan = self._plan_live(tenant_id, head, batch, live, keys, outcomes)
            if not plan.commands:
                return None
            _CALLS["locked"].inc()
            answer = await _append_in(conn, tenant_id, plan, effect)
        return head, plan, answer

    async def _append_with_effect(
        self, tenant_id: UUID, plan: _Plan, effect: Effect
    ) -> dict[str, Any]:
        async with tenant_transaction(self._pool, tenant_id) as conn:
            return await _append_in(conn, tenant_id, plan, effect)

    def _announce(self, tenant_id: UUID, plan: _Plan) -> None:
        if not self._listeners:
            return
        committed = [
            Committed(seq, stream, type_, leaf, chain)
            for seq, stream, type_, leaf, chain in zip(
                plan.seqs, plan.streams, plan.types, plan.leaves, plan.chain_hashes, strict=True
            )
        ]
        for listener in self._listeners:
            try:
                listener(tenant_id, committed)
            except Exception:  # a listener must never fail an append that committed
                log.exception("commit listener failed")

    def _unknown_head(self, tenant_id: UUID) -> _HeadCache:
        return _HeadCache(origin=origin_for(self._log_host, tenant_id))

    async def _subject_keys(
        self, tenant_id: UUID, pendings: list[_Pending]
    ) -> Mapping[str, SubjectKey]:
        subjects = {e.subject for p in pendings for e in p.events if e.personal and e.subject}
        if not subjects:
            return {}
        async with tenant_transaction(self._pool, tenant_id) as conn:
            return await self._keyring.subject_keys(conn, tenant_id, subjects, create=True)

    async def _fill_replays(
        self,
        tenant_id: UUID,
        replays: list[tuple[int, int, int]],
        outcomes: list[AppendResult | Exception | None],
    ) -> None:
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            for i, first_seq, count in replays:
                rows = await conn.fetch(
                    "SELECT seq, stream_id, stream_version, event_id, leaf_hash, chain_hash "
                    "FROM event_log WHERE tenant_id = $1 AND seq >= $2 AND seq < $3 ORDER BY seq",
                    tenant_id,
                    first_seq,
                    first_seq + count,
                )
                outcomes[i] = AppendResult(
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

    def _plan(
        self,
        tenant_id: UUID,
        head: _HeadCache,
        batch: list[_Pending],
        live: list[int],
        keys: Mapping[str, SubjectKey],
    ) -> _Plan:
        """Leaves, hashes and checks for the live commands against ``head``; no I/O."""
        now = datetime.now(UTC)
        stamp = max(now, head.last_ts) if head.last_ts else now
        plan = _Plan(frontier=head.frontier.copy(), chain=head.chain, ts=stamp)
        ts = format_ts(stamp)
        versions: dict[str, int] = {}
        for i in live:
            pending = batch[i]
            checks: list[tuple[str, int, bool]] = []
            conflict: ConcurrencyError | None = None
            for stream, expected in pending.expected.items():
                if stream in versions:
                    if expected is not None and expected != versions[stream]:
                        conflict = ConcurrencyError(stream, expected, versions[stream])
                elif expected is None:
                    checks.append((stream, head.version_of(stream), True))
                else:
                    checks.append((stream, expected, False))
            if conflict is not None:
                plan.local_rejections[i] = conflict
                continue
            if any(
                e.personal and e.subject and keys[e.subject].key is None for e in pending.events
            ):
                plan.final_rejections[i] = PersonalDataErasedError(
                    "personal data of an erased subject is refused"
                )
                continue
            assumed = dict(versions)
            assumed.update((stream, version) for stream, version, _ in checks)
            try:
                built = self._build_leaves(
                    tenant_id, head.origin, pending, plan.frontier.size, ts, assumed, keys
                )
            except EventRejectedError as e:
                plan.final_rejections[i] = e
                continue
            position = len(plan.commands)
            plan.commands.append(i)
            for stream, version, is_any in checks:
                plan.x_command.append(position)
                plan.x_stream.append(stream)
                plan.x_version.append(version)
                plan.x_any.append(is_any)
            plan.results[i] = plan.add(pending, built, position)
            for appended in plan.results[i].events:
                versions[appended.stream] = appended.version
        plan.versions = versions
        plan.arguments = plan.to_arguments(head)
        return plan

    def _build_leaves(
        self,
        tenant_id: UUID,
        origin: str,
        pending: _Pending,
        size: int,
        ts: str,
        versions: Mapping[str, int],
        keys: Mapping[str, Any],
    ) -> list[_Built]:
        """The leaves of one command, or :class:`EventRejectedError`; touches no state."""
        built = []
        local_versions: dict[str, int] = {}
        # Every string below but actor, log and data is made of characters JSON never
        # escapes (validated stream/type names, UUIDs, base64, hex, the timestamp), and
        # the keys are in RFC 8785 order, so these bytes are the leaf's canonical form;
        # actor, log and data are encoded canonically on their own. A unit test checks
        # each leaf against canonical.encode of itself.
        actor = canonical.encode({"kind": pending.actor.kind, "id": pending.actor.id})
        causation = b'"%s"' % str(pending.causation).encode() if pending.causation else b"null"
        correlation = str(pending.correlation).encode()
        log = canonical.encode(origin)
        stamp = ts.encode()
        salts = os.urandom(16 * len(pending.events))
        tenant = str(tenant_id)
        ciphers: dict[str, Cipher] = {}
        for offset, (event, event_id) in enumerate(
            zip(pending.events, pending.event_ids, strict=True)
        ):
            version = local_versions.get(event.stream, versions.get(event.stream, 0)) + 1
            local_versions[event.stream] = version
            event_text = str(event_id)
            pii_refs = b"{}"
            pii_rows: list[tuple[bytes, str, bytes]] = []
            if event.personal:
                subject = event.subject
                assert subject is not None
                cipher = ciphers.get(subject)
                if cipher is None:
                    cipher = ciphers[subject] = Cipher(keys[subject].key)
                refs = []
                for name in sorted(event.personal):
                    aad = pii_aad(tenant, subject, name, event_text)
                    ciphertext = cipher.seal(event.personal[name].encode(), aad)
                    digest = hashlib.sha256(ciphertext).digest()
                    # Field names match _FIELD and digests are hex: nothing to escape, and
                    # sorted() is RFC 8785's key order for ASCII names.
                    refs.append(b'"%s":"%s"' % (name.encode(), digest.hex().encode()))
                    pii_rows.append((digest, subject, ciphertext))
                pii_refs = b"{%s}" % b",".join(refs)
            seq = size + offset + 1
            leaf = _LEAF % (
                actor,
                causation,
                correlation,
                pending.data_json[offset],
                event_text.encode(),
                log,
                pii_refs,
                binascii.b2a_base64(salts[16 * offset : 16 * offset + 16], newline=False),
                seq,
                event.stream.encode(),
                stamp,
                event.type.encode(),
                LEAF_FORMAT_VERSION,
                version,
            )
            if len(leaf) > canonical.MAX_LEAF_BYTES:
                raise EventRejectedError(
                    f"event {offset}: leaf over {canonical.MAX_LEAF_BYTES} bytes"
                )
            built.append((seq, event, event_id, version, leaf, pii_rows))
        return built

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
            return await self.decode(conn, tenant_id, rows)

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
            return await self.decode(conn, tenant_id, rows)

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
            return (await self.decode(conn, tenant_id, rows))[0]

    async def decode(
        self, conn: asyncpg.Connection, tenant_id: UUID, rows: Sequence[asyncpg.Record]
    ) -> list[RecordedEvent]:
        """Events from ``event_log`` rows (seq, leaf, leaf_hash, chain_hash), personal
        fields decrypted; ``conn`` is in a transaction of ``tenant_id``."""
        leaves = [orjson.loads(r["leaf"]) for r in rows]
        opened = iter(
            await self.open_personal(
                conn,
                tenant_id,
                [
                    (r["seq"], leaf["id"], leaf["pii"])
                    for r, leaf in zip(rows, leaves, strict=True)
                    if leaf["pii"]
                ],
            )
        )
        events = []
        # Within one page the same actors and correlation ids recur: parse each once.
        actors: dict[tuple[str, str], Actor] = {}
        ids: dict[str, UUID] = {}

        def uuid_of(text: str) -> UUID:
            found = ids.get(text)
            if found is None:
                found = ids[text] = UUID(text)
            return found

        for row, leaf in zip(rows, leaves, strict=True):
            actor = actors.get(key := (leaf["actor"]["kind"], leaf["actor"]["id"]))
            if actor is None:
                actor = actors[key] = Actor(*key)
            events.append(
                RecordedEvent(
                    seq=row["seq"],
                    stream=leaf["stream"],
                    version=leaf["version"],
                    event_id=UUID(leaf["id"]),
                    type=leaf["type"],
                    # The leaf's "%Y-%m-%dT%H:%M:%S.%fZ": fromisoformat reads the Z as UTC.
                    ts=datetime.fromisoformat(leaf["ts"]),
                    actor=actor,
                    causation=uuid_of(leaf["causation"]) if leaf["causation"] else None,
                    correlation=uuid_of(leaf["correlation"]),
                    data=leaf["data"],
                    personal=next(opened) if leaf["pii"] else {},
                    leaf=row["leaf"],
                    leaf_hash=row["leaf_hash"],
                    chain_hash=row["chain_hash"],
                )
            )
        return events

    async def open_personal(
        self,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        leaves: Sequence[tuple[int, str, Mapping[str, str]]],
    ) -> list[dict[str, str | _Erased]]:
        """The personal fields of events, given as their leaves' ``(seq, id, pii)``,
        decrypted (``ERASED`` once their subject is); ``conn`` is in a transaction of
        ``tenant_id``. Raises :class:`EventStoreIntegrityError` for a value missing or
        altered."""
        if not leaves:
            return []
        wanted = [bytes.fromhex(h) for _, _, pii in leaves for h in pii.values()]
        values: dict[bytes, asyncpg.Record] = {
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
        tenant = str(tenant_id)
        ciphers: dict[str, Cipher] = {}  # per subject: a page repeats its people
        opened = []
        for seq, event_id, pii in leaves:
            personal: dict[str, str | _Erased] = {}
            for name, hex_hash in pii.items():
                value = values.get(bytes.fromhex(hex_hash))
                if value is None:
                    raise EventStoreIntegrityError(f"seq {seq}: personal value missing")
                subject_key = keys.get(value["subject_id"])
                if value["ciphertext"] is None or subject_key is None or subject_key.key is None:
                    personal[name] = ERASED
                    continue
                if hashlib.sha256(value["ciphertext"]).hexdigest() != hex_hash:
                    raise EventStoreIntegrityError(f"seq {seq}: personal value altered")
                subject = value["subject_id"]
                cipher = ciphers.get(subject)
                if cipher is None:
                    cipher = ciphers[subject] = Cipher(subject_key.key)
                aad = pii_aad(tenant, subject, name, event_id)
                personal[name] = cipher.open(value["ciphertext"], aad).decode()
            opened.append(personal)
        return opened

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


def _head_from_row(tenant_id: UUID, row: asyncpg.Record) -> LogHead:
    return LogHead(
        tenant_id=tenant_id,
        origin=row["origin"],
        size=row["size"],
        chain_hash=row["chain_hash"],
        frontier=Frontier.from_bytes(row["size"], row["frontier"]),
    )


async def _append_in(
    conn: asyncpg.Connection, tenant_id: UUID, plan: _Plan, effect: Effect | None
) -> dict[str, Any]:
    """Call ``append_batch`` inside the caller's tenant transaction; run ``effect``
    there too if the batch was written."""
    params = ", ".join(f"${i}" for i in range(2, len(plan.arguments) + 2))
    raw = await conn.fetchval(
        f"SELECT append_batch($1::uuid, {params})", tenant_id, *plan.arguments
    )
    answer: dict[str, Any] = orjson.loads(str(raw))
    if answer["status"] == "ok" and effect is not None:
        await effect(conn)
    return answer


def _screen(
    batch: list[_Pending],
) -> tuple[list[AppendResult | Exception | None], list[int], list[tuple[int, int]]]:
    """Outcomes so far, the commands to write, and (later, first) pairs of the same
    command sent twice in one batch (they share the first one's outcome)."""
    outcomes: list[AppendResult | Exception | None] = [None] * len(batch)
    first_of: dict[UUID, int] = {}
    duplicates: list[tuple[int, int]] = []
    live: list[int] = []
    for i, pending in enumerate(batch):
        j = first_of.setdefault(pending.command_id, i)
        if j == i:
            live.append(i)
        elif batch[j].fingerprint != pending.fingerprint:
            outcomes[i] = CommandIdReusedError("command id was used for a different command")
        else:
            duplicates.append((i, j))
    return outcomes, live, duplicates


def _fail(batch: list[_Pending], error: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(_translate(error))


def _translate(error: BaseException) -> BaseException:
    if isinstance(error, asyncpg.UniqueViolationError):
        return ConflictError("a concurrent append won; retry the command")
    return error
