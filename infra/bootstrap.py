"""Database, roles and passwords for the embedded server.

On an external server an operator creates these once (docs/operations.md); on
the embedded one ``strongroom up`` does it as the superuser. Four roles:

- ``strongroom_owner`` owns the schema and runs migrations;
- ``strongroom_app`` is what every process connects as: NOSUPERUSER,
  NOBYPASSRLS, owns nothing, sees only what row-level security shows it;
- ``strongroom_cli`` is what the investigation commands connect as: the same
  limits, and fewer grants (the log and its keys; no credential table);
- the superuser is used for this bootstrap only.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from infra.db import APP_ROLE, CLI_ROLE, OWNER_ROLE

DATABASE = "strongroom"


@dataclass(frozen=True, slots=True)
class DatabaseUrls:
    owner: str
    app: str
    cli: str | None = None
    """The investigation role; None when an external deployment did not configure it."""


def _with_credentials(url: str, user: str, password: str, database: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user)}:{quote(password)}@{host}:{parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, "/" + database, parts.query, ""))


def on_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


_ROLES = ((OWNER_ROLE, ""), (APP_ROLE, " NOINHERIT"), (CLI_ROLE, " NOINHERIT"))


def _role_passwords(path: Path) -> dict[str, str]:
    """The roles' passwords, kept in ``path`` (0600); a role added later gets one too."""
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [role for role, _ in _ROLES if role not in stored]
    if not missing:
        return stored
    passwords = {**stored, **{role: secrets.token_urlsafe(32) for role in missing}}
    staging = path.with_name(path.name + ".new")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(passwords, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staging, path)
    return passwords


async def prepare_embedded_database(superuser_url: str, secrets_dir: Path) -> DatabaseUrls:
    """Create (or update) the roles and the database; return their URLs."""
    passwords = _role_passwords(secrets_dir / "roles.json")
    conn = await asyncpg.connect(superuser_url)
    try:
        for role, extra in _ROLES:
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            verb = "ALTER" if exists else "CREATE"
            password = passwords[role].replace("'", "''")
            await conn.execute(
                f"{verb} ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
                f"{extra} PASSWORD '{password}'"
            )
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f"CREATE DATABASE {DATABASE} OWNER {OWNER_ROLE} ENCODING 'UTF8'")
    finally:
        await conn.close()
    conn = await asyncpg.connect(on_database(superuser_url, DATABASE))
    try:
        await conn.execute(
            f"""REVOKE ALL ON SCHEMA public FROM PUBLIC;
                ALTER SCHEMA public OWNER TO {OWNER_ROLE};
                GRANT USAGE ON SCHEMA public TO {APP_ROLE}, {CLI_ROLE};
                REVOKE CREATE ON SCHEMA public FROM {APP_ROLE}, {CLI_ROLE};
                ALTER ROLE {APP_ROLE} SET idle_in_transaction_session_timeout = '30s';
                ALTER ROLE {CLI_ROLE} SET idle_in_transaction_session_timeout = '30s';"""
        )
    finally:
        await conn.close()
    return DatabaseUrls(
        owner=_with_credentials(superuser_url, OWNER_ROLE, passwords[OWNER_ROLE], DATABASE),
        app=_with_credentials(superuser_url, APP_ROLE, passwords[APP_ROLE], DATABASE),
        cli=_with_credentials(superuser_url, CLI_ROLE, passwords[CLI_ROLE], DATABASE),
    )
