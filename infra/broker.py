"""The NATS connection: opened in the background so the API starts even if NATS is late.

nats-py reconnects by itself once connected; this only covers the first
connect. Publishing and consuming arrive with the projection workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
from nats.aio.client import Client

log = logging.getLogger(__name__)


class Broker:
    def __init__(self, url: str) -> None:
        self._url = url
        self._client: Client | None = None
        self._connecting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect_until_done())

    async def _connect_until_done(self) -> None:
        delay = 0.2
        while True:
            try:
                self._client = await nats.connect(
                    self._url.split(","),
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                )
                return
            except Exception as e:
                log.warning("NATS not reachable yet (%s); retrying", type(e).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

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
            await self._client.drain()
