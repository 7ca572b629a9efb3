"""Envelope encryption: master key -> tenant keys -> subject keys -> personal values.

Every layer is AES-256-GCM with a 96-bit random nonce; a sealed blob is
``nonce || ciphertext || tag``. The associated data binds each blob to where it
belongs (``tenant_id|object_id|key_version``), so a blob pasted onto another row,
tenant or key version fails to open. The master key comes from the environment
or a key file and is never written to the database.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_SIZE = 12
KEY_SIZE = 32


class KeyringError(Exception):
    """Base for key problems."""


class DecryptionError(KeyringError):
    """A sealed value does not open: wrong key, wrong place, or tampered."""


class TenantKeyError(DecryptionError):
    """A tenant's key does not open under the master key (or is missing): the master
    key is wrong, or the tenant's key row was altered. Every sealed value of the tenant
    is out of reach, not one."""


class Cipher:
    """AES-256-GCM under one key: set up once (that costs about as much as sealing a
    short value), then seal and open many values."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except (InvalidTag, ValueError):
            raise DecryptionError("sealed value does not open in this place") from None


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """One value under ``key``; :class:`Cipher` for many."""
    return Cipher(key).seal(plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    return Cipher(key).open(blob, aad)


def _aad(tenant_id: UUID | str, object_id: str, key_version: int) -> bytes:
    return f"{tenant_id}|{object_id}|{key_version}".encode()


def object_aad(tenant_id: UUID, object_id: str, key_version: int) -> bytes:
    """AAD binding a ciphertext to its tenant, its object and its key version."""
    return _aad(tenant_id, object_id, key_version)


def wrapped_key_aad(tenant_id: UUID | str, key_id: str, tenant_key_version: int) -> bytes:
    """AAD of a data key wrapped by a tenant key: ``key_id`` is ``subject-key:<subject>``
    or ``vault-key:<version>``, bound to the version of the tenant key that wraps it."""
    return _aad(tenant_id, key_id, tenant_key_version)


def pii_aad(tenant_id: UUID | str, subject_id: str, field: str, event_id: UUID | str) -> bytes:
    """AAD of a personal value: ids as UUIDs or as their ``str()`` (callers with the text
    at hand, such as a leaf's ``id``, skip formatting it again)."""
    return _aad(tenant_id, f"pii:{subject_id}:{event_id}:{field}", 1)


def load_or_create_dev_master_key(data_dir: Path) -> bytes:
    """For development only: a master key kept in the data dir, made on first start."""
    path = data_dir / "master.key"
    if path.exists():
        return base64.b64decode(path.read_text().strip())
    key = secrets.token_bytes(KEY_SIZE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode() + "\n")
    print(
        f"WARNING: generated a development master key at {path}. "
        "In production set STRONGROOM_MASTER_KEY or STRONGROOM_MASTER_KEY_FILE "
        "from a secrets manager; whoever holds it can unwrap every tenant key.",
        file=sys.stderr,
    )
    return key


@dataclass(frozen=True, slots=True)
class SubjectKey:
    subject_id: str
    key: bytes | None
    """None: the subject has been erased."""


class Keyring:
    """Unwraps and creates tenant and subject keys inside a tenant transaction.

    Unwrapped tenant keys are cached in memory per (tenant, version); subject
    keys are not cached, so a shred is effective for the next read everywhere.
    """

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != KEY_SIZE:
            raise ValueError("the master key is 32 bytes")
        self._master = master_key
        self._tenant_keys: dict[tuple[UUID, int], bytes] = {}

    async def primary_tenant_key(
        self, conn: asyncpg.Connection, tenant_id: UUID
    ) -> tuple[int, bytes]:
        row = await conn.fetchrow(
            "SELECT version, wrapped FROM tenant_key WHERE tenant_id = $1 AND is_primary",
            tenant_id,
        )
        if row is None:
            key = secrets.token_bytes(KEY_SIZE)
            wrapped = seal(self._master, key, _aad(tenant_id, "tenant-key", 1))
            await conn.execute(
                "INSERT INTO tenant_key (tenant_id, version, wrapped) VALUES ($1, 1, $2) "
                "ON CONFLICT DO NOTHING",
                tenant_id,
                wrapped,
            )
            row = await conn.fetchrow(
                "SELECT version, wrapped FROM tenant_key WHERE tenant_id = $1 AND is_primary",
                tenant_id,
            )
            assert row is not None
        return row["version"], self._unwrap_tenant_key(tenant_id, row["version"], row["wrapped"])

    async def tenant_key(self, conn: asyncpg.Connection, tenant_id: UUID, version: int) -> bytes:
        cached = self._tenant_keys.get((tenant_id, version))
        if cached is not None:
            return cached
        wrapped = await conn.fetchval(
            "SELECT wrapped FROM tenant_key WHERE tenant_id = $1 AND version = $2",
            tenant_id,
            version,
        )
        if wrapped is None:
            raise TenantKeyError(f"tenant {tenant_id}: key version {version} is missing")
        return self._unwrap_tenant_key(tenant_id, version, wrapped)

    def _unwrap_tenant_key(self, tenant_id: UUID, version: int, wrapped: bytes) -> bytes:
        cached = self._tenant_keys.get((tenant_id, version))
        if cached is None:
            try:
                cached = open_sealed(self._master, wrapped, _aad(tenant_id, "tenant-key", version))
            except DecryptionError:
                raise TenantKeyError(
                    f"tenant {tenant_id}: key version {version} does not open under the "
                    "master key (a wrong master key, or the key's row altered)"
                ) from None
            self._tenant_keys[(tenant_id, version)] = cached
        return cached

    async def subject_keys(
        self,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        subject_ids: set[str],
        *,
        create: bool,
    ) -> dict[str, SubjectKey]:
        """Keys for ``subject_ids``; with ``create``, new subjects get a key.

        Creating takes a row lock on each subject (``FOR SHARE``), so a
        concurrent shred either happens before (and the write is refused) or
        waits until the write commits (and erases it too).
        """
        if not subject_ids:
            return {}
        wanted = sorted(subject_ids)
        lock = " FOR SHARE" if create else ""
        rows = await conn.fetch(
            "SELECT subject_id, tenant_key_version, wrapped FROM subject_key "
            f"WHERE tenant_id = $1 AND subject_id = ANY($2::text[]){lock}",
            tenant_id,
            wanted,
        )
        found = {r["subject_id"]: r for r in rows}
        missing = [s for s in wanted if s not in found]
        if missing and create:
            version, tenant_key = await self.primary_tenant_key(conn, tenant_id)
            new_keys = [secrets.token_bytes(KEY_SIZE) for _ in missing]
            await conn.execute(
                "INSERT INTO subject_key (tenant_id, subject_id, tenant_key_version, wrapped) "
                "SELECT $1, s, $2, w FROM unnest($3::text[], $4::bytea[]) AS t(s, w) "
                "ON CONFLICT DO NOTHING",
                tenant_id,
                version,
                missing,
                [
                    seal(tenant_key, k, wrapped_key_aad(tenant_id, f"subject-key:{s}", version))
                    for s, k in zip(missing, new_keys, strict=True)
                ],
            )
            rows = await conn.fetch(
                "SELECT subject_id, tenant_key_version, wrapped FROM subject_key "
                "WHERE tenant_id = $1 AND subject_id = ANY($2::text[]) FOR SHARE",
                tenant_id,
                missing,
            )
            found.update({r["subject_id"]: r for r in rows})
        keys: dict[str, SubjectKey] = {}
        ciphers: dict[int, Cipher] = {}  # per tenant key version, for this call only
        tenant = str(tenant_id)
        for subject, row in found.items():
            if row["wrapped"] is None:
                keys[subject] = SubjectKey(subject, None)
                continue
            version = row["tenant_key_version"]
            cipher = ciphers.get(version)
            if cipher is None:
                cipher = ciphers[version] = Cipher(await self.tenant_key(conn, tenant_id, version))
            aad = wrapped_key_aad(tenant, f"subject-key:{subject}", version)
            keys[subject] = SubjectKey(subject, cipher.open(row["wrapped"], aad))
        return keys

    async def rotate_tenant_key(self, conn: asyncpg.Connection, tenant_id: UUID) -> int:
        """A new primary tenant key; every wrapped data key is re-wrapped under it.

        Run inside the tenant's transaction. The old versions stay, decrypt only:
        what was sealed under a tenant key directly (TOTP secrets, idempotent
        responses, approval keys, e-mail lookup keys derived from version 1) keeps
        its version and opens as before. The wrapped data keys (subject keys,
        vault data keys) are unwrapped and sealed again under the new version;
        the ciphertexts of values under them are not touched, so nothing else
        changes. Erased subject keys stay erased. Two rotations of one tenant
        are serialized by the lock on its key rows. Returns the new version.
        """
        await self.primary_tenant_key(conn, tenant_id)  # a tenant without a key gets one
        current = await conn.fetchval(
            "SELECT max(version) FROM (SELECT version FROM tenant_key WHERE tenant_id = $1 "
            "FOR UPDATE) AS k",
            tenant_id,
        )
        new_version = int(current) + 1
        new_key = secrets.token_bytes(KEY_SIZE)
        await conn.execute(
            "UPDATE tenant_key SET is_primary = false WHERE tenant_id = $1 AND is_primary",
            tenant_id,
        )
        await conn.execute(
            "INSERT INTO tenant_key (tenant_id, version, wrapped, is_primary) "
            "VALUES ($1, $2, $3, true)",
            tenant_id,
            new_version,
            seal(self._master, new_key, _aad(tenant_id, "tenant-key", new_version)),
        )
        for table, id_column, label in _WRAPPED_KEY_TABLES:
            rows = await conn.fetch(
                f"SELECT {id_column}::text AS id, tenant_key_version, wrapped FROM {table} "
                "WHERE tenant_id = $1 AND wrapped IS NOT NULL AND tenant_key_version <> $2 "
                "FOR UPDATE",
                tenant_id,
                new_version,
            )
            ids, wrapped = [], []
            for row in rows:
                old_key = await self.tenant_key(conn, tenant_id, row["tenant_key_version"])
                key_id = f"{label}:{row['id']}"
                data_key = open_sealed(
                    old_key,
                    row["wrapped"],
                    wrapped_key_aad(tenant_id, key_id, row["tenant_key_version"]),
                )
                ids.append(row["id"])
                wrapped.append(
                    seal(new_key, data_key, wrapped_key_aad(tenant_id, key_id, new_version))
                )
            if ids:
                await conn.execute(
                    f"UPDATE {table} AS k SET wrapped = t.w, tenant_key_version = $2 "
                    "FROM unnest($3::text[], $4::bytea[]) AS t(i, w) "
                    f"WHERE k.tenant_id = $1 AND k.{id_column}::text = t.i",
                    tenant_id,
                    new_version,
                    ids,
                    wrapped,
                )
        return new_version


_WRAPPED_KEY_TABLES = (
    ("subject_key", "subject_id", "subject-key"),
    ("vault_key", "version", "vault-key"),
)
"""The tables of data keys wrapped by a tenant key: (table, key id column, AAD label)."""
