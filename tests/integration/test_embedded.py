"""The embedded PostgreSQL and NATS servers: auth, persistence, crash restart, clean stop.

These are the only tests that start their own servers, each in its own ``tmp_path``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest

from infra.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
    PortInUseError,
    ensure_port_free,
    free_port,
)


def processes_mentioning(path: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes with ``path`` somewhere in their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(str(path) in arg for arg in proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "postgres")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats")
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def test_postgres_answers_queries_with_the_superuser_url(postgres: EmbeddedPostgres) -> None:
    url = postgres.superuser_url
    assert url.startswith("postgresql://postgres:")
    assert "@127.0.0.1:" in url
    assert postgres.start() == url

    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT current_user") == "postgres"
        assert await conn.fetchval("SHOW fsync") == "on"
        assert await conn.fetchval("SHOW max_connections") == "300"
        assert await conn.fetchval("SHOW unix_socket_directories") == ""
    finally:
        await conn.close()


async def test_postgres_requires_the_password(postgres: EmbeddedPostgres) -> None:
    password = (postgres.data_dir / "superuser.password").read_text().strip()
    assert postgres.password_path.stat().st_mode & 0o777 == 0o600
    wrong = postgres.superuser_url.replace(f":{password}@", ":not-the-password@")

    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(postgres.superuser_url.replace(f":{password}@", "@"))


def test_postgres_stop_leaves_no_process(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "postgres")
    server.start()
    assert processes_mentioning(server.pgdata)

    server.stop()
    server.stop()

    assert processes_mentioning(server.pgdata) == []
    assert not (server.pgdata / "postmaster.pid").exists()
    with pytest.raises(EmbeddedServerError):
        _ = server.superuser_url


async def test_postgres_second_start_reuses_the_data(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "postgres")
    try:
        conn = await asyncpg.connect(server.start())
        await conn.execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('still here')")
        await conn.close()
        server.stop()

        again = EmbeddedPostgres(tmp_path / "postgres")
        try:
            conn = await asyncpg.connect(again.start())
            assert await conn.fetchval("SELECT note FROM kept") == "still here"
            await conn.close()
        finally:
            again.stop()
    finally:
        server.stop()


async def test_postgres_starts_again_after_a_crash(tmp_path: Path) -> None:
    crashed = EmbeddedPostgres(tmp_path / "postgres")
    crashed.start()
    pid = int((crashed.pgdata / "postmaster.pid").read_text().split()[0])
    psutil.Process(pid).kill()
    psutil.wait_procs([psutil.Process(pid)], timeout=5)

    server = EmbeddedPostgres(tmp_path / "postgres")
    try:
        conn = await asyncpg.connect(server.start())
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        server.stop()
        crashed.stop()
    assert processes_mentioning(server.pgdata) == []


def test_postgres_refuses_a_data_dir_in_use(postgres: EmbeddedPostgres) -> None:
    intruder = EmbeddedPostgres(postgres.data_dir)

    with pytest.raises(EmbeddedServerError, match="in use"):
        intruder.start()
    intruder.stop()

    assert processes_mentioning(postgres.pgdata)


async def test_nats_keeps_jetstream_data_across_a_crash(nats_server: EmbeddedNats) -> None:
    url = nats_server.url
    assert url.startswith("nats://127.0.0.1:")
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="EVENTS", subjects=["events.>"])
    ack = await js.publish("events.created", b"hello")
    await nc.close()

    nats_server.kill()
    assert nats_server.start() == url

    nc = await nats.connect(url)
    try:
        msg = await nc.jetstream().get_msg("EVENTS", ack.seq)
        assert msg.data == b"hello"
        assert msg.subject == "events.created"
    finally:
        await nc.close()
    assert (nats_server.store_dir / "jetstream").is_dir()


def test_nats_stop_leaves_no_process(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    with server:
        assert processes_mentioning(server.data_dir)

    server.stop()
    assert processes_mentioning(server.data_dir) == []


def test_ensure_port_free_raises_on_a_bound_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]

        with pytest.raises(PortInUseError) as raised:
            ensure_port_free("127.0.0.1", port)

    assert str(raised.value) == f"port {port} on 127.0.0.1 is already in use"


def test_free_port_is_free() -> None:
    ensure_port_free("127.0.0.1", free_port())
