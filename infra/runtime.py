"""Wiring: builds every long-lived client of one process, in one place.

Nothing connects at import time; entry points (the API's lifespan, CLI
commands) open a :class:`Runtime` and close it when they stop. What runs in
the background is chosen by the entry point: ``strongroom up`` runs the relay
and every projection inside the API process; ``serve`` runs none of them
(``strongroom worker relay|projections`` do, as their own processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import asyncpg

from infra.access import AccessService, GrantExpiry
from infra.broker import Broker, StreamPolicy
from infra.db import create_pool
from infra.eventstore import EventStore
from infra.ingest import Ingestor
from infra.keyring import Keyring
from infra.notary import build_notary
from infra.positions import PositionWaiter
from infra.projector import ProjectionRunner
from infra.publisher import Publisher, Relay
from infra.services import IdentityServices
from infra.settings import Settings
from infra.vault import Vault
from projections.base import Projection

log = logging.getLogger(__name__)


@functools.cache
def strongroom_version() -> str:
    """Read once: ``importlib.metadata`` parses the package's METADATA file on every call."""
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


@dataclass(frozen=True, slots=True)
class Workers:
    """Background work a process runs besides serving."""

    relay: bool = False
    projections: tuple[Projection, ...] = ()
    notary: bool = False
    """Sign checkpoints; needs the notary key in the settings."""
    grant_expiry: bool = False
    """End access grants as they run out (any number of processes may)."""


@dataclass(slots=True)
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    keyring: Keyring
    store: EventStore
    broker: Broker
    publisher: Publisher
    positions: PositionWaiter
    identity: IdentityServices
    access: AccessService
    ingest: Ingestor
    vault: Vault
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def open(
        cls, settings: Settings, endpoints: Endpoints, workers: Workers | None = None
    ) -> Runtime:
        workers = workers or Workers()
        pool = await create_pool(endpoints.app_database_url, max_size=settings.db_pool_size)
        keyring = Keyring(endpoints.master_key)
        broker = Broker(
            endpoints.nats_url,
            StreamPolicy(
                replicas=settings.nats_replicas,
                max_age_seconds=settings.nats_max_age,
                duplicate_window_seconds=settings.nats_duplicate_window,
            ),
        )
        broker.start()
        store = EventStore(pool, keyring, log_host=settings.log_host)
        publisher = Publisher(broker, pool)
        store.add_commit_listener(publisher.committed)
        publisher.start()
        positions = PositionWaiter(pool, endpoints.app_database_url)
        positions.start()
        identity = IdentityServices.build(
            pool,
            store,
            keyring,
            endpoints.master_key,
            rate_limit_per_minute=settings.rate_limit_per_minute,
        )
        ingest = Ingestor(pool, store, keyring, clock=identity.ctx.now)
        vault = Vault(pool, store, keyring, clock=identity.ctx.now)
        access = AccessService(pool, store, keyring, credentials=vault, clock=identity.ctx.now)
        runtime = cls(
            settings,
            pool,
            keyring,
            store,
            broker,
            publisher,
            positions,
            identity,
            access,
            ingest=ingest,
            vault=vault,
        )
        if workers.relay:
            runtime.tasks.append(asyncio.create_task(Relay(pool, broker).run()))
        for projection in workers.projections:
            runner = ProjectionRunner(pool, store, broker, projection)
            runtime.tasks.append(asyncio.create_task(runner.run()))
        if workers.grant_expiry:
            runtime.tasks.append(asyncio.create_task(GrantExpiry(access).run()))
        if workers.notary:
            notary = build_notary(settings, pool, store)
            runtime.tasks.append(asyncio.create_task(notary.run(settings.notary_interval)))
        return runtime

    async def readiness(self) -> dict[str, bool]:
        async def postgres() -> bool:
            try:
                async with asyncio.timeout(2):
                    return bool(await self.pool.fetchval("SELECT 1") == 1)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return False

        pg, nats_ok = await asyncio.gather(postgres(), self.broker.ping())
        return {"postgres": pg, "nats": nats_ok}

    async def wait_closed(self) -> None:
        """Run until a background worker stops (it only stops by failing)."""
        if self.tasks:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.Event().wait()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.publisher.close()
        await self.positions.close()
        await self.broker.close()
        await self.pool.close()
