"""Idempotency keys for command routes (draft-ietf-httpapi-idempotency-key-header).

A key is unique per (tenant, principal, key) and kept 24 hours with the
SHA-256 fingerprint of method + path + body. The first request claims it; a
repeat with the same fingerprint gets the first response byte for byte, with
another fingerprint 422, and while the first is still running 409. The stored
response is sealed (AES-256-GCM) under the tenant key, or for platform routes
under a key derived from the master key, because it may hold a one-time
secret (an invite token, a new API key). A claim left running for longer than
``ABANDONED_AFTER`` (its process died) may be taken over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import asyncpg
import orjson

from domain.errors import ConflictError, InvalidError
from infra.db import tenant_transaction
from infra.keyring import Keyring, object_aad, open_sealed, seal

KEPT_FOR = timedelta(hours=24)
ABANDONED_AFTER = timedelta(seconds=60)
MAX_KEY_LENGTH = 255


class IdempotencyKeyReusedError(InvalidError):
    pass


class IdempotencyInFlightError(ConflictError):
    pass


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode()):
        digest.update(len(part).to_bytes(4, "big") + part)
    digest.update(body)
    return digest.digest()


def _pack(response: StoredResponse) -> bytes:
    return orjson.dumps(
        {"status": response.status, "headers": response.headers, "body": response.body.hex()}
    )


def _unpack(raw: bytes) -> StoredResponse:
    data = orjson.loads(raw)
    return StoredResponse(
        data["status"], [(k, v) for k, v in data["headers"]], bytes.fromhex(data["body"])
    )


class IdempotencyStore:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring, platform_key: bytes) -> None:
        self._pool = pool
        self._keyring = keyring
        self._platform_key = platform_key

    async def claim(
        self, tenant_id: UUID | None, principal: str, key: str, print_: bytes
    ) -> StoredResponse | None:
        """Claim the key (None: go ahead) or return the first response to replay."""
        if tenant_id is None:
            return await self._claim_platform(key, print_)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            await conn.execute(
                "DELETE FROM idempotency_key WHERE tenant_id = $1 AND principal = $2 "
                "AND key = $3 AND (created_at < now() - $4::interval OR "
                "(completed_at IS NULL AND created_at < now() - $5::interval))",
                tenant_id,
                principal,
                key,
                KEPT_FOR,
                ABANDONED_AFTER,
            )
            inserted = await conn.fetchval(
                "INSERT INTO idempotency_key (tenant_id, principal, key, fingerprint) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
                tenant_id,
                principal,
                key,
                print_,
            )
            if inserted:
                return None
            row = await conn.fetchrow(
                "SELECT fingerprint, completed_at, response, key_version FROM idempotency_key "
                "WHERE tenant_id = $1 AND principal = $2 AND key = $3",
                tenant_id,
                principal,
                key,
            )
            assert row is not None
            self._check(row, print_)
            sealing_key = await self._keyring.tenant_key(conn, tenant_id, row["key_version"])
        aad = object_aad(tenant_id, f"idempotency:{principal}:{key}", row["key_version"])
        return _unpack(open_sealed(sealing_key, row["response"], aad))

    async def _claim_platform(self, key: str, print_: bytes) -> StoredResponse | None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM platform_idempotency_key WHERE key = $1 AND (created_at < now() - "
                "$2::interval OR (completed_at IS NULL AND created_at < now() - $3::interval))",
                key,
                KEPT_FOR,
                ABANDONED_AFTER,
            )
            inserted = await conn.fetchval(
                "INSERT INTO platform_idempotency_key (key, fingerprint) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING RETURNING true",
                key,
                print_,
            )
            if inserted:
                return None
            row = await conn.fetchrow(
                "SELECT fingerprint, completed_at, response FROM platform_idempotency_key "
                "WHERE key = $1",
                key,
            )
        assert row is not None
        self._check(row, print_)
        return _unpack(open_sealed(self._platform_key, row["response"], f"pk:{key}".encode()))

    @staticmethod
    def _check(row: asyncpg.Record, print_: bytes) -> None:
        if row["fingerprint"] != print_:
            raise IdempotencyKeyReusedError("this Idempotency-Key was used for a different request")
        if row["completed_at"] is None:
            raise IdempotencyInFlightError("a request with this Idempotency-Key is still running")

    async def complete(
        self, tenant_id: UUID | None, principal: str, key: str, response: StoredResponse
    ) -> None:
        if tenant_id is None:
            await self._pool.execute(
                "UPDATE platform_idempotency_key SET completed_at = now(), response = $2 "
                "WHERE key = $1",
                key,
                seal(self._platform_key, _pack(response), f"pk:{key}".encode()),
            )
            return
        async with tenant_transaction(self._pool, tenant_id) as conn:
            version, sealing_key = await self._keyring.primary_tenant_key(conn, tenant_id)
            aad = object_aad(tenant_id, f"idempotency:{principal}:{key}", version)
            await conn.execute(
                "UPDATE idempotency_key SET completed_at = now(), response = $4, "
                "key_version = $5 WHERE tenant_id = $1 AND principal = $2 AND key = $3",
                tenant_id,
                principal,
                key,
                seal(sealing_key, _pack(response), aad),
                version,
            )

    async def release(self, tenant_id: UUID | None, principal: str, key: str) -> None:
        """Forget a claim whose request failed in a way worth retrying (5xx, 409, 429)."""
        if tenant_id is None:
            await self._pool.execute(
                "DELETE FROM platform_idempotency_key WHERE key = $1 AND completed_at IS NULL",
                key,
            )
            return
        async with tenant_transaction(self._pool, tenant_id) as conn:
            await conn.execute(
                "DELETE FROM idempotency_key WHERE tenant_id = $1 AND principal = $2 "
                "AND key = $3 AND completed_at IS NULL",
                tenant_id,
                principal,
                key,
            )
