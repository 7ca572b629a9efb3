"""Finding the database from the command line.

Three cases: external servers (``STRONGROOM_DATABASE_URL``), the embedded
server of a running ``strongroom up`` (it leaves ``run.json`` in the data dir,
with ports and its pid, never a secret), or an embedded server started just
for this command and stopped after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from infra.bootstrap import DatabaseUrls, prepare_embedded_database
from infra.embedded import EmbeddedPostgres
from infra.settings import Settings

RUN_FILE = "run.json"


@dataclass(frozen=True, slots=True)
class RunInfo:
    pid: int
    postgres_port: int | None
    nats_url: str | None
    api_url: str


def write_run_info(data_dir: Path, info: RunInfo) -> None:
    path = data_dir / RUN_FILE
    path.write_text(json.dumps(asdict(info)))


def remove_run_info(data_dir: Path) -> None:
    with suppress(FileNotFoundError):
        (data_dir / RUN_FILE).unlink()


def read_run_info(data_dir: Path) -> RunInfo | None:
    """The running ``up`` of this data dir, if its process is still alive."""
    try:
        raw = json.loads((data_dir / RUN_FILE).read_text())
        info = RunInfo(**raw)
    except (FileNotFoundError, ValueError, TypeError):
        return None
    if info.pid == os.getpid() or not psutil.pid_exists(info.pid):
        return None
    return info


def port_of(url: str) -> int | None:
    return urlsplit(url).port


@asynccontextmanager
async def database_urls(settings: Settings) -> AsyncIterator[DatabaseUrls]:
    if settings.database_url is not None:
        yield DatabaseUrls(
            owner=settings.owner_database_url or settings.database_url,
            app=settings.database_url,
            cli=settings.cli_database_url,
        )
        return
    pg_dir = settings.data_dir / "postgres"
    running = read_run_info(settings.data_dir)
    if running is not None and running.postgres_port is not None:
        password = (pg_dir / "superuser.password").read_text().strip()
        superuser = f"postgresql://postgres:{password}@127.0.0.1:{running.postgres_port}/postgres"
        yield await prepare_embedded_database(superuser, pg_dir)
        return
    server = EmbeddedPostgres(pg_dir)
    try:
        yield await prepare_embedded_database(server.start(), pg_dir)
    finally:
        server.stop()
