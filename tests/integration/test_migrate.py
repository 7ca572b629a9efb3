"""Migrations: ordered, recorded, transactional, and immutable once applied."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from infra.bootstrap import on_database
from infra.db import OWNER_ROLE
from infra.migrate import MigrationError, available_migrations, migrate
from tests.conftest import Database


@pytest.fixture
async def scratch_url(database: Database) -> AsyncIterator[str]:
    """A new empty database owned by the owner role; the owner's URL to it."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(database.superuser_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} OWNER {OWNER_ROLE}")
        yield on_database(database.owner_url, name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


def write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def test_migrations_apply_in_order_once_and_are_recorded(
    scratch_url: str, tmp_path: Path
) -> None:
    write(tmp_path, "0002_second.sql", "ALTER TABLE first ADD COLUMN b int;")
    write(tmp_path, "0001_first.sql", "CREATE TABLE first (a int);")
    assert await migrate(scratch_url, tmp_path) == ["0001_first", "0002_second"]
    assert await migrate(scratch_url, tmp_path) == []
    assert {"first", "schema_migrations"} <= await tables(scratch_url)
    write(tmp_path, "0003_third.sql", "CREATE TABLE third (c int);")
    assert await migrate(scratch_url, tmp_path) == ["0003_third"]


async def test_a_changed_applied_migration_is_refused(scratch_url: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_first.sql", "CREATE TABLE first (a int);")
    await migrate(scratch_url, tmp_path)
    write(tmp_path, "0001_first.sql", "CREATE TABLE first (a int, sneaky int);")
    with pytest.raises(MigrationError, match="0001_first was changed after it was applied"):
        await migrate(scratch_url, tmp_path)


async def test_a_failing_migration_leaves_nothing_half_applied(
    scratch_url: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_ok.sql", "CREATE TABLE ok (a int);")
    write(tmp_path, "0002_bad.sql", "CREATE TABLE half (a int); SELECT no_such_function();")
    with pytest.raises(MigrationError, match="0002_bad"):
        await migrate(scratch_url, tmp_path)
    assert "half" not in await tables(scratch_url)
    write(tmp_path, "0002_bad.sql", "CREATE TABLE half (a int);")
    assert await migrate(scratch_url, tmp_path) == ["0002_bad"]


def test_badly_named_or_duplicate_numbered_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "1_first.sql", "")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        available_migrations(tmp_path)
    (tmp_path / "1_first.sql").unlink()
    write(tmp_path, "0001_a.sql", "")
    write(tmp_path, "0001_b.sql", "")
    with pytest.raises(MigrationError, match="share a number"):
        available_migrations(tmp_path)


def test_the_shipped_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in available_migrations()]
    assert versions == list(range(1, len(versions) + 1))
