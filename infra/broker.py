"""The NATS connection and the JetStream stream that carries the tenant logs.

The connection is opened in the background so a process starts even if NATS
is late; nats-py reconnects by itself once connected. On every (re)connect the
stream is created if missing and its limits brought to the configured values.

Stream ``STRONGROOM_EVENTS``: subjects ``strongroom.events.<tenant>.<category>``,
file storage, limits retention (messages age out after ``max_age``; Postgres
keeps the log), duplicates dropped by ``Nats-Msg-Id`` within ``duplicate_window``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from uuid import UUID

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)

STREAM_NAME = "STRONGROOM_EVENTS"
SUBJECT_PREFIX = "strongroom.events"
MAX_ASYNC_PENDING = 4000


def subject_for(tenant_id: UUID, stream: str) -> str:
    return f"{SUBJECT_PREFIX}.{tenant_id}.{stream.split('-', 1)[0]}"


def message_id(tenant_id: UUID, seq: int) -> str:
    """``Nats-Msg-Id``: JetStream drops a second message with the same id."""
    return f"{tenant_id}:{seq}"


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    replicas: int = 1
    max_age_seconds: int = 7 * 24 * 3600
    duplicate_window_seconds: int = 120

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=STREAM_NAME,
            description="Strongroom tenant logs (Postgres is the source of truth)",
            subjects=[f"{SUBJECT_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=self.replicas,
            max_age=float(self.max_age_seconds),
            duplicate_window=float(self.duplicate_window_seconds),
            max_msg_size=512 * 1024,
            allow_direct=True,
        )


async def ensure_stream(js: JetStreamContext, policy: StreamPolicy) -> None:
    """Create the stream if missing, else bring its limits to ``policy``."""
    config = policy.config()
    try:
        info = await js.stream_info(STREAM_NAME)
    except NotFoundError:
        await js.add_stream(config)
        log.info("created JetStream stream %s", STREAM_NAME)
        return
    current = info.config
    if (
        current.max_age != config.max_age
        or current.duplicate_window != config.duplicate_window
        or current.num_replicas != config.num_replicas
    ):
        await js.update_stream(config)
        log.info("updated JetStream stream %s limits", STREAM_NAME)


class Broker:
    def __init__(self, url: str, policy: StreamPolicy | None = None) -> None:
        self._url = url
        self._policy = policy or StreamPolicy()
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._ready = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect_until_done())

    async def _connect_until_done(self) -> None:
        delay = 0.2
        while True:
            client: Client | None = None
            try:
                client = await nats.connect(
                    self._url.split(","),
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    reconnected_cb=self._reconnected,
                )
                js = client.jetstream(timeout=5, publish_async_max_pending=MAX_ASYNC_PENDING)
                await ensure_stream(js, self._policy)
            except Exception as e:
                log.warning("NATS JetStream not ready yet (%s); retrying", type(e).__name__)
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._client, self._js = client, js
            self._ready.set()
            return

    async def _reconnected(self) -> None:
        if self._js is not None:
            try:
                await ensure_stream(self._js, self._policy)
            except Exception as e:
                log.warning("could not check the JetStream stream (%s)", type(e).__name__)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    def jetstream_now(self) -> JetStreamContext | None:
        """The JetStream context if connected right now, else None (do not wait)."""
        return self._js if self.connected else None

    def client_now(self) -> Client | None:
        """The core client if connected right now, else None (do not wait): for plain
        subscriptions, which nats-py renews by itself after a reconnect."""
        return self._client if self.connected else None

    async def jetstream(self) -> JetStreamContext:
        """The JetStream context, waiting for the first connection if needed."""
        await self._ready.wait()
        assert self._js is not None
        return self._js

    async def ping(self) -> bool:
        """True when connected and the server answers a round trip within a second."""
        client = self._client
        if client is None or not client.is_connected:
            return False
        try:
            await client.flush(timeout=1)
        except Exception:
            return False
        return True

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._client is not None and not self._client.is_closed:
            # Not drain(): it waits for pull subscriptions' queues that nobody empties.
            # Publishes were awaited by their owners; unacknowledged messages come again.
            with contextlib.suppress(Exception):
                await self._client.flush(timeout=2)
            await self._client.close()
