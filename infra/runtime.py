"""Wiring: builds every long-lived client of one process, in one place.

Nothing connects at import time; entry points (the API's lifespan, CLI
commands) open a :class:`Runtime` and close it when they stop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import asyncpg

from infra.broker import Broker
from infra.db import create_pool
from infra.eventstore import EventStore
from infra.keyring import Keyring
from infra.settings import Settings


def strongroom_version() -> str:
    try:
        return version("strongroom")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where this process finds its servers, once embedded ones are started."""

    app_database_url: str
    nats_url: str
    master_key: bytes


@dataclass(slots=True)
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    keyring: Keyring
    store: EventStore
    broker: Broker

    @classmethod
    async def open(cls, settings: Settings, endpoints: Endpoints) -> Runtime:
        pool = await create_pool(endpoints.app_database_url, max_size=settings.db_pool_size)
        keyring = Keyring(endpoints.master_key)
        broker = Broker(endpoints.nats_url)
        broker.start()
        store = EventStore(pool, keyring, log_host=settings.log_host)
        return cls(settings, pool, keyring, store, broker)

    async def readiness(self) -> dict[str, bool]:
        async def postgres() -> bool:
            try:
                async with asyncio.timeout(2):
                    return bool(await self.pool.fetchval("SELECT 1") == 1)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return False

        pg, nats_ok = await asyncio.gather(postgres(), self.broker.ping())
        return {"postgres": pg, "nats": nats_ok}

    async def close(self) -> None:
        await self.broker.close()
        await self.pool.close()
