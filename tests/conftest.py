"""One real PostgreSQL (and NATS, when a test asks) per test session.

Embedded servers under a temporary directory by default; with
``STRONGROOM_DATABASE_URL`` (app role), ``STRONGROOM_OWNER_DATABASE_URL``,
``STRONGROOM_CLI_DATABASE_URL`` and
``STRONGROOM_TEST_SUPERUSER_URL`` set, those servers are used instead (and
``STRONGROOM_NATS_URL`` for NATS). Tests isolate themselves by using fresh
tenant ids: the log is append-only, so nothing is ever cleaned up.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from infra.bootstrap import DATABASE, on_database, prepare_embedded_database
from infra.db import create_pool
from infra.embedded import EmbeddedNats, EmbeddedPostgres
from infra.eventstore import EventStore
from infra.keyring import Keyring
from infra.migrate import migrate
from infra.readmodels import ensure_projections
from projections import ALL as ALL_PROJECTIONS

LOG_HOST = "test.strongroom.localhost"


@dataclass(frozen=True)
class Database:
    superuser_url: str
    owner_url: str
    app_url: str
    cli_url: str
    """The investigation role (strongroom_cli)."""


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("strongroom")


@pytest.fixture(scope="session")
def database(data_dir: Path) -> Iterator[Database]:
    if os.environ.get("STRONGROOM_DATABASE_URL"):
        db = Database(
            superuser_url=os.environ["STRONGROOM_TEST_SUPERUSER_URL"],
            owner_url=os.environ["STRONGROOM_OWNER_DATABASE_URL"],
            app_url=os.environ["STRONGROOM_DATABASE_URL"],
            cli_url=os.environ["STRONGROOM_CLI_DATABASE_URL"],
        )
        asyncio.run(migrate(db.owner_url))
        asyncio.run(ensure_projections(db.owner_url, ALL_PROJECTIONS))
        yield db
        return
    server = EmbeddedPostgres(data_dir / "postgres")
    try:
        superuser_url = server.start()
        urls = asyncio.run(prepare_embedded_database(superuser_url, data_dir / "postgres"))
        asyncio.run(migrate(urls.owner))
        asyncio.run(ensure_projections(urls.owner, ALL_PROJECTIONS))
        assert urls.cli is not None
        yield Database(superuser_url, urls.owner, urls.app, urls.cli)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(data_dir: Path) -> Iterator[str]:
    if os.environ.get("STRONGROOM_NATS_URL"):
        yield os.environ["STRONGROOM_NATS_URL"]
        return
    server = EmbeddedNats(data_dir / "nats")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def pool(database: Database) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database.app_url, min_size=2, max_size=40)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def master_key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture(scope="session")
def keyring(master_key: bytes) -> Keyring:
    return Keyring(master_key)


@pytest.fixture(scope="session")
async def store(pool: asyncpg.Pool, keyring: Keyring) -> EventStore:
    return EventStore(pool, keyring, log_host=LOG_HOST)


@pytest.fixture
async def superuser(database: Database) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(on_database(database.superuser_url, DATABASE))
    yield conn
    await conn.close()
