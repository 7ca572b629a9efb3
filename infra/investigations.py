"""What the investigation commands read, and the audit event each one writes first.

Everything here runs as the investigation role (``strongroom_cli``), one tenant at a
time, inside :func:`infra.db.tenant_transaction`, so row-level security is what
keeps tenants apart, as it is for the app. Reads come from the event store itself
(never a read model), with personal fields decrypted unless their subject was
erased; an event never holds a secret.

Filters that have no column of their own are matched on the leaf: the leaf is
canonical JSON (RFC 8785), so an actor ``{"id": …, "kind": …}`` has exactly one byte
form, found with ``position()`` before the exact JSON test runs on the few rows
that contain it. Times become a seq range by a binary search over the primary key
(``ts`` never decreases along ``seq``). No filter needs a new index on the hot
append path; each scans the tenant's log once at most (``docs/investigations.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal
from uuid import UUID

import asyncpg
import msgspec
import nats
import orjson
from nats.aio.client import Client as Nats

from domain.access import AccessRequest, Grant, TenantAccessPolicy
from domain.apikey import ApiKey
from domain.connector import Connector
from domain.errors import InvalidError, NotFoundError
from domain.investigation import Investigation, check_operator
from domain.member import Member
from domain.recorded import RecordedAggregate
from domain.tenant import Tenant
from infra.broker import SUBJECT_PREFIX
from infra.db import tenant_transaction
from infra.eventstore import ACTOR_KINDS, ERASED, Actor, EventStore, RecordedEvent
from infra.repository import EventRegistry, Repository

AGGREGATES: Final[tuple[type[RecordedAggregate], ...]] = (
    Tenant,
    Member,
    ApiKey,
    Investigation,
    Connector,
    AccessRequest,
    Grant,
    TenantAccessPolicy,
)
MAX_LIMIT: Final = 10_000
MAX_FILTER_LENGTH: Final = 256
MAX_TYPES: Final = 20
MAX_SEQ: Final = 2**63 - 1
FOLLOW_PAGE: Final = 500
POLL_SECONDS: Final = 1.0
"""How often a follow reads the store without a NATS announcement."""


class TenantNotFoundError(NotFoundError):
    pass


class InvalidFilterError(InvalidError):
    pass


# ---- who is investigating ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operator:
    """Who ran a command: the actor of its audit event."""

    name: str
    os_user: str | None
    host: str | None

    @classmethod
    def resolve(cls, given: str | None) -> Operator:
        """``--operator``, else the OS user; refused when neither is known."""
        try:
            os_user: str | None = getpass.getuser()
        except (OSError, KeyError):
            os_user = None
        name = given if given is not None else os_user
        if name is None or not name.strip():
            raise InvalidFilterError("no operator: give --operator NAME")
        return cls(check_operator(name), os_user, socket.gethostname() or None)


# ---- filters ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActorFilter:
    id: str
    kind: str | None = None

    @classmethod
    def parse(cls, text: str) -> ActorFilter:
        """``kind:id`` (kind one of the actor kinds) or a bare ``id``."""
        _check_text("--actor", text)
        kind, sep, rest = text.partition(":")
        if sep and kind in ACTOR_KINDS:
            _check_text("--actor", rest)
            return cls(rest, kind)
        return cls(text)

    def needle(self) -> bytes:
        """The actor's bytes in a canonical leaf (``id`` sorts before ``kind``)."""
        head = b'"actor":{"id":' + orjson.dumps(self.id) + b","
        return head if self.kind is None else head + b'"kind":' + orjson.dumps(self.kind) + b"}"

    def as_json(self) -> bytes:
        return orjson.dumps({"id": self.id, **({"kind": self.kind} if self.kind else {})})

    def __str__(self) -> str:
        return self.id if self.kind is None else f"{self.kind}:{self.id}"


def _check_text(name: str, value: str) -> str:
    if not 1 <= len(value) <= MAX_FILTER_LENGTH or "\x00" in value:
        raise InvalidFilterError(f"{name}: 1 to {MAX_FILTER_LENGTH} characters of text")
    return value


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which events of a tenant's log: every filter given must hold."""

    stream: str | None = None
    types: tuple[str, ...] = ()
    actor: ActorFilter | None = None
    subject: str | None = None
    """A stream, an aggregate id, or any id that appears as a value in the data."""
    since: datetime | None = None
    until: datetime | None = None
    after: int = 0
    limit: int = 100

    def __post_init__(self) -> None:
        if self.stream is not None:
            _check_text("--stream", self.stream)
        if self.subject is not None:
            _check_text("--subject", self.subject)
        if len(set(self.types)) > MAX_TYPES:
            raise InvalidFilterError(f"at most {MAX_TYPES} --type filters")
        for t in self.types:
            _check_text("--type", t)
        for name, when in (("--since", self.since), ("--until", self.until)):
            if when is not None and when.tzinfo is None:
                raise InvalidFilterError(f"{name}: a time with a zone (e.g. 2026-11-24T10:00Z)")
        if self.since and self.until and self.since > self.until:
            raise InvalidFilterError("--since is after --until")
        if not 0 <= self.after <= MAX_SEQ:
            raise InvalidFilterError("--after: a seq, 0 or more")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidFilterError(f"--limit: 1 to {MAX_LIMIT}")

    def audit_filters(self) -> dict[str, Any]:
        """The filters given, as the audit event records them."""
        found: dict[str, Any] = {
            "stream": self.stream,
            "type": list(self.types) or None,
            "actor": str(self.actor) if self.actor else None,
            "subject": self.subject,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "after": self.after or None,
            "limit": self.limit,
        }
        return {k: v for k, v in found.items() if v is not None}


_SELECT: Final = """
    SELECT seq, leaf, leaf_hash, chain_hash FROM event_log
    WHERE tenant_id = $1 AND seq > $2 AND seq <= $3
      AND ($4::text[] IS NULL OR event_type = ANY($4::text[]))
      AND ($5::text IS NULL OR stream_id = $5)
      AND ($6::bytea IS NULL OR (position($6 IN leaf) > 0
           AND convert_from(leaf, 'UTF8')::jsonb -> 'actor' @> $7::jsonb))
      AND ($8::text IS NULL OR stream_id = $8
           OR substr(stream_id, strpos(stream_id, '-') + 1) = $8
           OR (position($9 IN leaf) > 0
               AND jsonb_path_exists(convert_from(leaf, 'UTF8')::jsonb -> 'data',
                                     '$.** ? (@ == $s)', jsonb_build_object('s', $8::text))))
    ORDER BY seq LIMIT $10
"""


@dataclass(frozen=True, slots=True)
class Page:
    events: list[RecordedEvent]
    read_to: int
    """How far the log was read (the next ``after``): past the events filtered out."""
    more: bool


@dataclass(frozen=True, slots=True)
class Coverage:
    """Which signed checkpoint covers an event (its receipt can be made against it)."""

    checkpoint_size: int | None
    signed_at: datetime | None
    latest_size: int | None


@dataclass(frozen=True, slots=True)
class TenantEntry:
    tenant_id: UUID
    slug: str | None
    created_at: datetime | None
    size: int
    checkpoint_size: int


# ---- time travel --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    """A point in a stream's history: the latest, a log seq, a stream version or a time."""

    kind: Literal["latest", "seq", "version", "time"]
    seq: int | None = None
    version: int | None = None
    time: datetime | None = None

    @classmethod
    def parse(cls, text: str) -> Point:
        """``seq:N``, ``version:V``, ``latest`` or an ISO 8601 time with a zone."""
        kind, sep, rest = text.partition(":")
        if sep and kind in ("seq", "version"):
            try:
                number = int(rest)
            except ValueError:
                raise InvalidFilterError(f"{text!r}: {kind}:N with a whole number") from None
            return cls.at_seq(number) if kind == "seq" else cls.at_version(number)
        if text == "latest":
            return cls("latest")
        return cls.at_time(parse_time(text, "a point"))

    @classmethod
    def at_seq(cls, seq: int) -> Point:
        if not 1 <= seq <= MAX_SEQ:
            raise InvalidFilterError("a seq is 1 or more")
        return cls("seq", seq=seq)

    @classmethod
    def at_version(cls, version: int) -> Point:
        if not 1 <= version <= 2**31 - 1:
            raise InvalidFilterError("a version is 1 or more")
        return cls("version", version=version)

    @classmethod
    def at_time(cls, when: datetime) -> Point:
        if when.tzinfo is None:
            raise InvalidFilterError("a time needs a zone (e.g. 2026-11-24T10:00Z)")
        return cls("time", time=when)

    def __str__(self) -> str:
        if self.kind == "seq":
            return f"seq:{self.seq}"
        if self.kind == "version":
            return f"version:{self.version}"
        if self.kind == "time":
            assert self.time is not None
            return self.time.isoformat()
        return "latest"


def parse_time(text: str, what: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidFilterError(f"{what}: {text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise InvalidFilterError(f"{what}: {text!r} needs a zone (e.g. Z or +01:00)")
    return when


@dataclass(frozen=True, slots=True)
class StateAt:
    """An aggregate as it was at a point: the fold of its stream up to there."""

    stream: str
    aggregate: str
    point: Point
    version: int
    seq: int
    recorded_at: datetime
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    field: str
    before: Any
    after: Any


def diff(before: StateAt, after: StateAt) -> list[Change]:
    """Fields that differ between two states of one aggregate, in field order."""
    names = list(dict.fromkeys([*before.state, *after.state]))
    missing = object()
    changes = []
    for name in names:
        a, b = before.state.get(name, missing), after.state.get(name, missing)
        if a != b:
            changes.append(Change(name, None if a is missing else a, None if b is missing else b))
    return changes


# ---- views ----------------------------------------------------------------------------------


def event_view(event: RecordedEvent, *, hashes: bool = False) -> dict[str, Any]:
    """An event for people and scripts: personal fields in place, null once erased."""
    data = dict(event.data)
    erased = []
    for name, value in event.personal.items():
        if value is ERASED:
            data[name] = None
            erased.append(name)
        else:
            data[name] = value
    view: dict[str, Any] = {
        "seq": event.seq,
        "id": str(event.event_id),
        "stream": event.stream,
        "version": event.version,
        "type": event.type,
        "recorded_at": event.ts.isoformat(),
        "actor": {"kind": event.actor.kind, "id": event.actor.id},
        "causation": str(event.causation) if event.causation else None,
        "correlation": str(event.correlation),
        "data": data,
        "erased": erased,
    }
    if hashes:
        view["leaf_hash"] = event.leaf_hash.hex()
        view["chain_hash"] = event.chain_hash.hex()
    return view


def state_view(aggregate: RecordedAggregate) -> dict[str, Any]:
    """An aggregate's public attributes as JSON values (sets sorted)."""
    fields = {k: v for k, v in vars(aggregate).items() if not k.startswith("_")}
    state: dict[str, Any] = msgspec.to_builtins(
        {"id": aggregate.id, **fields}, order="sorted", str_keys=True
    )
    return state


async def list_tenants(pool: asyncpg.Pool) -> list[TenantEntry]:
    """Every tenant with its slug and sizes, through ``tenant_catalogue()`` only."""
    rows = await pool.fetch("SELECT * FROM tenant_catalogue()")
    return [
        TenantEntry(r["tenant_id"], r["slug"], r["created_at"], r["size"], r["checkpoint_size"])
        for r in rows
    ]


# ---- the investigator -----------------------------------------------------------------------


@dataclass(slots=True)
class Investigator:
    """The investigation commands' reads, and their audit events, for one operator."""

    pool: asyncpg.Pool
    store: EventStore
    operator: Operator
    repository: Repository = field(init=False)
    _registry: EventRegistry = field(init=False)

    def __post_init__(self) -> None:
        self._registry = EventRegistry(AGGREGATES)
        self.repository = Repository(self.store, self._registry)

    async def head_size(self, tenant_id: UUID) -> int:
        """The size of the tenant's log; :class:`TenantNotFoundError` if it has none."""
        async with tenant_transaction(self.pool, tenant_id, readonly=True) as conn:
            return await _size(conn, tenant_id)

    # -- the audit event

    async def record(
        self,
        tenant_id: UUID,
        command: str,
        filters: dict[str, Any],
        returned: int | None,
    ) -> int:
        """Append ``investigation.performed`` to the tenant's log; return its seq.

        Called before anything is shown: a command whose audit event cannot be
        written shows nothing.
        """
        investigation = Investigation.perform(
            command=command,
            filters=filters,
            returned=returned,
            os_user=self.operator.os_user,
            host=self.operator.host,
        )
        result = await self.repository.save(
            tenant_id,
            investigation,
            command_id=uuid.uuid4(),
            actor=Actor("operator", self.operator.name),
        )
        assert result is not None
        return result.last_seq

    # -- the log

    async def list_events(self, tenant_id: UUID, query: EventQuery) -> Page:
        """Up to ``query.limit`` events that pass every filter, in seq order."""
        async with tenant_transaction(self.pool, tenant_id, readonly=True) as conn:
            size = await _size(conn, tenant_id)
            after, upto = query.after, size
            if query.since is not None:
                after = max(after, await _first_seq_at(conn, tenant_id, query.since, upto) - 1)
            if query.until is not None:
                upto = min(upto, await _last_seq_until(conn, tenant_id, query.until, upto))
            if upto <= after:
                return Page([], max(query.after, min(after, upto)), more=False)
            actor, subject = query.actor, query.subject
            rows = await conn.fetch(
                _SELECT,
                tenant_id,
                after,
                upto,
                list(query.types) or None,
                query.stream,
                actor.needle() if actor else None,
                actor.as_json().decode() if actor else None,
                subject,
                orjson.dumps(subject) if subject is not None else None,
                query.limit + 1,
            )
            events = await self.store.decode(conn, tenant_id, rows[: query.limit])
        more = len(rows) > query.limit
        return Page(events, events[-1].seq if more else upto, more)

    async def event(self, tenant_id: UUID, seq: int) -> tuple[RecordedEvent, Coverage]:
        """One event in full, and the first signed checkpoint that covers it."""
        async with tenant_transaction(self.pool, tenant_id, readonly=True) as conn:
            size = await _size(conn, tenant_id)
            if not 1 <= seq <= size:
                raise NotFoundError(f"no event at seq {seq} (the log has {size})")
            rows = await conn.fetch(
                "SELECT seq, leaf, leaf_hash, chain_hash FROM event_log "
                "WHERE tenant_id = $1 AND seq = $2",
                tenant_id,
                seq,
            )
            events = await self.store.decode(conn, tenant_id, rows)
            covering = await conn.fetchrow(
                "SELECT size, signed_at FROM checkpoint WHERE tenant_id = $1 AND size >= $2 "
                "ORDER BY size LIMIT 1",
                tenant_id,
                seq,
            )
            latest = await conn.fetchval(
                "SELECT max(size) FROM checkpoint WHERE tenant_id = $1", tenant_id
            )
        coverage = Coverage(
            covering["size"] if covering else None,
            covering["signed_at"] if covering else None,
            latest,
        )
        return events[0], coverage

    async def follow(
        self,
        tenant_id: UUID,
        query: EventQuery,
        wake: asyncio.Event,
        *,
        poll_seconds: float = POLL_SECONDS,
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Pages of new events after ``query.after``, forever: read when ``wake`` is set
        (an announcement) or every ``poll_seconds``. The store is the source; a lost or
        repeated announcement only changes when it is read."""
        cursor = query.after
        while True:
            wake.clear()
            page = await self.list_events(
                tenant_id, dataclasses.replace(query, after=cursor, limit=FOLLOW_PAGE, until=None)
            )
            cursor = page.read_to
            if page.events:
                yield page.events
            if page.more:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), poll_seconds)

    # -- time travel

    def _aggregate_of(self, stream: str) -> type[RecordedAggregate]:
        category = stream.split("-", 1)[0]
        for aggregate in AGGREGATES:
            if aggregate.category == category:
                return aggregate
        known = ", ".join(a.category for a in AGGREGATES)
        raise InvalidFilterError(
            f"{stream!r} is not an aggregate's stream (categories with state: {known})"
        )

    async def state(self, tenant_id: UUID, stream: str, point: Point) -> StateAt:
        """The aggregate of ``stream`` as it was at ``point`` (fold up to there)."""
        _check_text("STREAM", stream)
        aggregate_class = self._aggregate_of(stream)
        async with tenant_transaction(self.pool, tenant_id, readonly=True) as conn:
            size = await _size(conn, tenant_id)
            first = await conn.fetchrow(
                "SELECT seq, recorded_at FROM event_log "
                "WHERE tenant_id = $1 AND stream_id = $2 AND stream_version = 1",
                tenant_id,
                stream,
            )
            if first is None:
                raise NotFoundError(f"tenant {tenant_id} has no stream {stream}")
            to_seq: int | None = None
            if point.kind == "seq":
                assert point.seq is not None
                if point.seq > size:
                    raise InvalidFilterError(
                        f"seq {point.seq} is past the end of the log (size {size})"
                    )
                to_seq = point.seq
            elif point.kind == "time":
                assert point.time is not None
                to_seq = await _last_seq_until(conn, tenant_id, point.time, size)
                if to_seq < first["seq"]:
                    raise InvalidFilterError(
                        f"{point} is before the first event of {stream} "
                        f"(seq {first['seq']} at {first['recorded_at'].isoformat()})"
                    )
            if to_seq is not None and to_seq < first["seq"]:
                raise InvalidFilterError(
                    f"{stream} did not exist yet at {point} (its first event is seq {first['seq']})"
                )
            rows = await conn.fetch(
                "SELECT seq, leaf, leaf_hash, chain_hash FROM event_log "
                "WHERE tenant_id = $1 AND stream_id = $2 "
                "AND ($3::int IS NULL OR stream_version <= $3) "
                "AND ($4::bigint IS NULL OR seq <= $4) ORDER BY stream_version",
                tenant_id,
                stream,
                point.version,
                to_seq,
            )
            recorded = await self.store.decode(conn, tenant_id, rows)
        if point.kind == "version" and recorded[-1].version < (point.version or 0):
            raise InvalidFilterError(
                f"{stream} has {recorded[-1].version} versions, not {point.version}"
            )
        aggregate = self.repository.fold(recorded)
        assert aggregate is not None and isinstance(aggregate, aggregate_class)
        last = recorded[-1]
        return StateAt(
            stream,
            aggregate_class.__name__,
            point,
            last.version,
            last.seq,
            last.ts,
            state_view(aggregate),
        )


async def _size(conn: asyncpg.Connection, tenant_id: UUID) -> int:
    """The size of the tenant's log; :class:`TenantNotFoundError` if it has none."""
    size = await conn.fetchval("SELECT size FROM tenant_log WHERE tenant_id = $1", tenant_id)
    if size is None:
        raise TenantNotFoundError(f"tenant {tenant_id} has no log here")
    return int(size)


async def _recorded_at(conn: asyncpg.Connection, tenant_id: UUID, seq: int) -> datetime:
    when: datetime = await conn.fetchval(
        "SELECT recorded_at FROM event_log WHERE tenant_id = $1 AND seq = $2", tenant_id, seq
    )
    return when


async def _first_seq_at(
    conn: asyncpg.Connection, tenant_id: UUID, when: datetime, size: int
) -> int:
    """The first seq recorded at or after ``when`` (``size + 1`` if none): a binary
    search by primary key, as ``recorded_at`` never decreases along ``seq``."""
    low, high = 1, size + 1
    while low < high:
        middle = (low + high) // 2
        if await _recorded_at(conn, tenant_id, middle) >= when:
            high = middle
        else:
            low = middle + 1
    return low


async def _last_seq_until(
    conn: asyncpg.Connection, tenant_id: UUID, when: datetime, size: int
) -> int:
    """The last seq recorded at or before ``when`` (0 if none)."""
    low, high = 1, size + 1  # the first seq recorded after ``when``
    while low < high:
        middle = (low + high) // 2
        if await _recorded_at(conn, tenant_id, middle) > when:
            high = middle
        else:
            low = middle + 1
    return low - 1


# ---- live announcements ---------------------------------------------------------------------

CONNECT_SECONDS: Final = 5.0


async def _quiet(_error: Exception) -> None:
    """nats-py's default logs every failed reconnect; the follower polls meanwhile."""


@contextlib.asynccontextmanager
async def announcements(
    nats_url: str | None, tenant_id: UUID, on_unavailable: Callable[[str], None]
) -> AsyncIterator[asyncio.Event]:
    """An event set whenever NATS announces a new event of the tenant.

    Without NATS (no URL, or unreachable) the event is never set and the follower
    polls; ``on_unavailable`` is told why, once.
    """
    wake = asyncio.Event()
    client: Nats | None = None
    if nats_url is None:
        on_unavailable("no NATS configured")
    else:
        try:
            # Reconnecting forever once connected, but a first connection that never
            # comes (nats-py would retry it forever too) gives up after a few seconds.
            client = await asyncio.wait_for(
                nats.connect(
                    nats_url.split(","),
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=_quiet,
                ),
                CONNECT_SECONDS,
            )
        except (OSError, TimeoutError, nats.errors.Error) as e:
            on_unavailable(f"NATS unreachable ({type(e).__name__})")

    async def announced(_msg: Any) -> None:
        wake.set()

    try:
        if client is not None:
            await client.subscribe(f"{SUBJECT_PREFIX}.{tenant_id}.>", cb=announced)
        yield wake
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
