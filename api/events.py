"""The tenant log over HTTP: a page at a time, or as a live Server-Sent Events stream.

Both read the event store itself, not a read model, so neither is ever behind the
log. The stream catches up from the store a page at a time and then follows NATS.
A message on ``strongroom.events.<tenant>.>`` is only a wake-up that carries a seq,
as it is for the projection runner. A seq at or below the stream's cursor is dropped.
A higher one makes the stream read the store from its cursor on. So a lost, late,
repeated or reordered message never shows as a gap or a duplicate, and nothing sent
comes from the message itself. While NATS is down the stream polls the store (every
``POLL_SECONDS``). At every heartbeat it reads the store too, and checks the
caller's credential again.

Bounded: the NATS callback keeps only the highest seq announced, whatever the
client's speed; the store is read ``STREAM_PAGE`` events at a time, and each page
is written only as fast as the client takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final
from uuid import UUID

import anyio
import msgspec
from litestar import Controller, Request, get
from litestar.exceptions import ClientException
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import Stream
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from api.access import credential_of, principal_of, requires
from api.schemas import Body
from domain.errors import UnauthenticatedError
from domain.permissions import Permission
from infra.broker import SUBJECT_PREFIX
from infra.db import tenant_transaction
from infra.eventstore import RecordedEvent
from infra.identity import Principal
from infra.runtime import Runtime

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0
"""A ``: keepalive`` comment, a credential check and a store read this often."""
POLL_SECONDS = 1.0
"""How often a stream reads the store while NATS is down."""
STREAM_PAGE = 200
WRITE_BYTES: Final = 64 * 1024
"""Frames are sent in writes of about this size, not one write per event."""
MAX_LIMIT: Final = 1000
MAX_TYPES: Final = 20
MAX_FILTER_LENGTH: Final = 256
MAX_SEQ: Final = 2**63 - 1
SUBSCRIPTION_PENDING_MESSAGES: Final = 1000
SUBSCRIPTION_PENDING_BYTES: Final = 8 * 1024 * 1024
"""Beyond these nats-py drops announcements (a slow consumer); the store fills in."""
EVENT_STREAM: Final = "text/event-stream"

_PAGE_SQL: Final = """
    SELECT seq, leaf, leaf_hash, chain_hash FROM event_log
    WHERE tenant_id = $1 AND seq > $2 AND seq <= $3
      AND ($4::text[] IS NULL OR event_type = ANY($4::text[]))
      AND ($5::text IS NULL OR stream_id = $5)
    ORDER BY seq LIMIT $6
"""


class ActorView(Body):
    kind: str
    id: str


class EventView(Body):
    seq: int
    id: UUID
    stream: str
    version: int
    type: str
    recorded_at: datetime
    actor: ActorView
    data: dict[str, Any]
    """The event's data, personal fields decrypted (null once erased)."""
    erased: list[str]
    """Personal fields whose data subject was erased (crypto-shredded)."""


class EventPage(Body):
    items: list[EventView]
    next: int | None
    """The last seq returned, for ``after``; null at the end of the log."""


@dataclass(frozen=True, slots=True)
class Filters:
    types: tuple[str, ...] = ()
    stream: str | None = None


def _filters(types: Sequence[str] | None, stream: str | None) -> Filters:
    types = tuple(dict.fromkeys(types or ()))
    if len(types) > MAX_TYPES:
        raise ClientException(f"at most {MAX_TYPES} type filters")
    # PostgreSQL text cannot hold NUL: refused here, not failed in the query.
    for value in (*types, *([stream] if stream is not None else [])):
        if not 1 <= len(value) <= MAX_FILTER_LENGTH or "\x00" in value:
            raise ClientException(f"a filter is 1 to {MAX_FILTER_LENGTH} characters of text")
    return Filters(types, stream)


def _view(event: RecordedEvent) -> EventView:
    data = dict(event.data)
    erased = []
    for name, value in event.personal.items():
        if isinstance(value, str):
            data[name] = value
        else:
            data[name] = None
            erased.append(name)
    return EventView(
        seq=event.seq,
        id=event.event_id,
        stream=event.stream,
        version=event.version,
        type=event.type,
        recorded_at=event.ts,
        actor=ActorView(kind=event.actor.kind, id=event.actor.id),
        data=data,
        erased=erased,
    )


@dataclass(frozen=True, slots=True)
class Page:
    events: list[RecordedEvent]
    read_to: int
    """How far the log was read: the last event's seq if more follow, else the head
    (so a cursor moves over the events the filters left out)."""
    more: bool
    """Whether events that pass the filters follow this page."""


async def read_events(
    runtime: Runtime, tenant_id: UUID, *, after: int, limit: int, filters: Filters
) -> Page:
    """Up to ``limit`` events after ``after`` that pass ``filters``, in seq order."""
    async with tenant_transaction(runtime.pool, tenant_id, readonly=True) as conn:
        head = await conn.fetchval("SELECT size FROM tenant_log WHERE tenant_id = $1", tenant_id)
        head = int(head or 0)
        if head <= after:
            return Page([], after, more=False)
        rows = await conn.fetch(
            _PAGE_SQL,
            tenant_id,
            after,
            head,
            list(filters.types) or None,
            filters.stream,
            limit + 1,
        )
        events = await runtime.store.decode(conn, tenant_id, rows[:limit])
    more = len(rows) > limit
    return Page(events, events[-1].seq if more else head, more)


class EventController(Controller):
    path = "/v1/events"
    tags = ["events"]

    @get(
        "/",
        operation_id="listEvents",
        summary="The tenant log in seq order, a page at a time",
        opt=requires(Permission.EVENTS_READ),
    )
    async def list_page(
        self,
        request: Request[Any, Any, Any],
        after: Annotated[int, QueryParameter(ge=0, le=MAX_SEQ)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 100,
        types: Annotated[
            list[str] | None,
            QueryParameter(name="type", description="exact event type; may be repeated"),
        ] = None,
        stream: Annotated[
            str | None, QueryParameter(min_length=1, max_length=MAX_FILTER_LENGTH)
        ] = None,
    ) -> EventPage:
        runtime: Runtime = request.app.state.runtime
        principal = principal_of(request.scope)
        filters = _filters(types, stream)
        page = await read_events(
            runtime, principal.tenant_id, after=after, limit=limit, filters=filters
        )
        return EventPage(
            items=[_view(e) for e in page.events],
            next=page.read_to if page.more else None,
        )

    @get(
        "/stream",
        operation_id="streamEvents",
        summary="The tenant log as Server-Sent Events: catch up, then follow live",
        description="Resumes after `Last-Event-ID` (or `after`). Each event's `id:` is its "
        "seq, `event:` its type, `data:` one JSON object as in listEvents. A `: keepalive` "
        "comment comes every heartbeat; the stream closes when the credential stops "
        "granting events:read.",
        opt=requires(Permission.EVENTS_READ),
        media_type=EVENT_STREAM,
    )
    async def stream_live(
        self,
        request: Request[Any, Any, Any],
        after: Annotated[int, QueryParameter(ge=0, le=MAX_SEQ)] = 0,
        types: Annotated[
            list[str] | None,
            QueryParameter(name="type", description="exact event type; may be repeated"),
        ] = None,
        stream: Annotated[
            str | None, QueryParameter(min_length=1, max_length=MAX_FILTER_LENGTH)
        ] = None,
        last_event_id: Annotated[
            str | None,
            HeaderParameter(
                name="Last-Event-ID", description="resume after this seq; wins over after"
            ),
        ] = None,
    ) -> Stream:
        runtime: Runtime = request.app.state.runtime
        principal = principal_of(request.scope)
        filters = _filters(types, stream)
        if last_event_id is not None:
            if (
                not (last_event_id.isascii() and last_event_id.isdigit())
                or len(last_event_id) > len(str(MAX_SEQ))  # before int() reads it
                or int(last_event_id) > MAX_SEQ
            ):
                raise ClientException("Last-Event-ID must be a log position (a whole number)")
            after = int(last_event_id)
        token = credential_of(request.scope)
        if token is None:  # the access check authenticated this request with it
            raise UnauthenticatedError("authentication required")
        follower = _Follower(runtime, principal, token, after, filters)
        return Stream(
            follower.events(), media_type=EVENT_STREAM, headers={"X-Accel-Buffering": "no"}
        )


_ENCODER = msgspec.json.Encoder()
_KEEPALIVE = b": keepalive\n\n"


def _frame(event: RecordedEvent) -> bytes:
    """One SSE event. JSON escapes newlines, and a type has none, so each is one line."""
    data = _ENCODER.encode(_view(event))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), data)


class _Announcements:
    """The highest seq NATS announced for the tenant, and a wake-up when one comes."""

    def __init__(self) -> None:
        self.seq = 0
        self.wake = asyncio.Event()

    async def on_message(self, msg: Msg) -> None:
        try:
            seq = int((msg.headers or {}).get("Strongroom-Seq", ""))
        except ValueError:
            return
        self.seq = max(self.seq, seq)
        self.wake.set()


class _Follower:
    """One stream: its cursor (the last seq read), its subscription and its heartbeat."""

    def __init__(
        self, runtime: Runtime, principal: Principal, token: str, after: int, filters: Filters
    ) -> None:
        self._runtime = runtime
        self._principal = principal
        self._token = token
        self._cursor = after
        self._filters = filters
        self._announced = _Announcements()
        self._subscription: Subscription | None = None

    async def events(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._follow():
                yield chunk
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the client resumes with Last-Event-ID
            log.warning("event stream ended (%s)", type(e).__name__)
        finally:
            await self._unsubscribe()

    async def _follow(self) -> AsyncIterator[bytes]:
        tenant_id = self._principal.tenant_id
        read, was_live = True, False
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        while True:
            live = await self._subscribed()
            if live and not was_live:
                live = await self._flushed()
                read = True  # what was committed while NATS was away was never announced
            was_live = live
            if read:
                page = await read_events(
                    self._runtime,
                    tenant_id,
                    after=self._cursor,
                    limit=STREAM_PAGE,
                    filters=self._filters,
                )
                chunk = bytearray()  # few writes, each awaited at the client's pace
                for event in page.events:
                    chunk += _frame(event)
                    if len(chunk) >= WRITE_BYTES:
                        yield bytes(chunk)
                        chunk.clear()
                if chunk:
                    yield bytes(chunk)
                self._cursor = page.read_to
                read = page.more
            if not read:
                wait = min(next_beat - time.monotonic(), POLL_SECONDS)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.0)):
                        await self._announced.wake.wait()
                woke = self._announced.wake.is_set()
                # Cleared before the read it may cause, so a later announcement wakes us again.
                self._announced.wake.clear()
                read = (woke and self._announced.seq > self._cursor) or not live
            if time.monotonic() >= next_beat:
                if not await self._still_allowed():
                    yield b": closed: the credential no longer grants events:read\n\n"
                    return
                yield _KEEPALIVE
                next_beat = time.monotonic() + HEARTBEAT_SECONDS
                read = True  # an announcement NATS lost shows up here at the latest

    async def _subscribed(self) -> bool:
        """Whether NATS announcements can reach us now; subscribes on first connection
        (nats-py renews the subscription after a reconnect)."""
        client = self._runtime.broker.client_now()
        if client is None:
            return False
        if self._subscription is None:
            self._subscription = await client.subscribe(
                f"{SUBJECT_PREFIX}.{self._principal.tenant_id}.>",
                cb=self._announced.on_message,
                pending_msgs_limit=SUBSCRIPTION_PENDING_MESSAGES,
                pending_bytes_limit=SUBSCRIPTION_PENDING_BYTES,
            )
        return True

    async def _flushed(self) -> bool:
        """A round trip to the server, so it holds our interest before the store is read:
        an event committed after that read is then announced to us."""
        client = self._runtime.broker.client_now()
        if client is None:
            return False
        try:
            await client.flush(timeout=1)
        except Exception:
            return False
        return True

    async def _still_allowed(self) -> bool:
        """The credential checked again, as the access middleware checks each request."""
        identity = self._runtime.identity
        try:
            if self._principal.kind == "api_key":
                principal = await identity.api_keys.authenticate(self._token)
            else:
                principal = await identity.sessions.authenticate(self._token)
        except UnauthenticatedError:
            return False
        return (
            principal.tenant_id == self._principal.tenant_id
            and Permission.EVENTS_READ in principal.permissions
        )

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        # Shielded: this runs while the response's task group is cancelled (a disconnect).
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await subscription.unsubscribe()
