"""The servers a benchmark run talks to, and a description of the machine it runs on.

By default a fresh embedded PostgreSQL (fsync on) in a temporary directory, bootstrapped
and migrated exactly like ``strongroom up`` (read-model schemas included); with
``STRONGROOM_DATABASE_URL`` (app role) and ``STRONGROOM_OWNER_DATABASE_URL`` set, those
servers are used instead. Likewise an embedded NATS JetStream unless ``STRONGROOM_NATS_URL``
is set. Whatever the run starts, it stops, and the temporary directories are removed.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from infra.bootstrap import prepare_embedded_database
from infra.embedded import EmbeddedNats, EmbeddedPostgres
from infra.migrate import migrate
from infra.readmodels import ensure_projections
from projections import ALL as ALL_PROJECTIONS


@dataclass(frozen=True, slots=True)
class BenchDatabase:
    owner_url: str
    app_url: str
    embedded: bool


@contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    """Yield a migrated database; stop and delete an embedded one afterwards."""
    app_url = os.environ.get("STRONGROOM_DATABASE_URL")
    owner_url = os.environ.get("STRONGROOM_OWNER_DATABASE_URL")
    if app_url and owner_url:
        asyncio.run(_migrate(owner_url))
        yield BenchDatabase(owner_url=owner_url, app_url=app_url, embedded=False)
        return
    temp_dir = Path(tempfile.mkdtemp(prefix="strongroom-bench-"))
    server = EmbeddedPostgres(temp_dir / "postgres")
    try:
        superuser_url = server.start()
        urls = asyncio.run(prepare_embedded_database(superuser_url, temp_dir / "postgres"))
        asyncio.run(_migrate(urls.owner))
        yield BenchDatabase(owner_url=urls.owner, app_url=urls.app, embedded=True)
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)


async def _migrate(owner_url: str) -> None:
    await migrate(owner_url)
    await ensure_projections(owner_url, ALL_PROJECTIONS)


@contextmanager
def bench_nats() -> Iterator[str]:
    """Yield a NATS URL (JetStream on); stop and delete an embedded server afterwards."""
    url = os.environ.get("STRONGROOM_NATS_URL")
    if url:
        yield url
        return
    temp_dir = Path(tempfile.mkdtemp(prefix="strongroom-bench-nats-"))
    server = EmbeddedNats(temp_dir / "nats")
    try:
        yield server.start()
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_count() -> int:
    """What ``nproc`` prints: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


async def postgres_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT current_setting('server_version')"))
    finally:
        await conn.close()


def machine_info(db: BenchDatabase) -> dict[str, str | int | bool]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": cpu_count(),
        "cpu": cpu_model(),
        "postgres": asyncio.run(postgres_version(db.owner_url)),
        "python": platform.python_version(),
        "embedded_postgres": db.embedded,
    }
