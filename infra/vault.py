"""The connector secrets vault: connectors' commands, their sealed credentials, their use.

Credentials are sealed with AES-256-GCM under a per-tenant vault data key,
AAD ``tenant|connector:<id>:credential:<version>|<vault key version>``, so a
ciphertext moved to another row, connector, version or tenant does not open.
The data keys form a keyset (``vault_key``): one primary seals, older ones
only open; each is wrapped by a tenant key, and tenant key rotation re-wraps
them without touching a credential's ciphertext (infra/sql/0019_vault.sql).

Every command saves the connector's events with its ``connector_credential``
change as an effect, in one transaction, so the table and the log agree at
every instant. A rotation is three such transactions: start (paused), stage,
verdict. The validator runs between the last two, outside any transaction; a
crash anywhere leaves a state the next ``set_credential`` starts over from.

The only way to read a plaintext credential is :meth:`Vault.use_credential`
(for the grant executor; no route reaches it). Each use appends
``vault.credential_used`` in the transaction that reads the row, before the
value is returned.
"""

from __future__ import annotations

import secrets as random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from uuid import UUID, uuid4

import asyncpg

from domain.connector import Connector, ConnectorStatus, credential_kind
from domain.errors import ConflictError, InvalidError
from domain.tenant import Tenant
from infra.credentials import derive_key, keyed_hash
from infra.db import tenant_transaction
from infra.eventstore import Actor, AppendResult, Effect, EventStore, NewEvent
from infra.identity import Clock, Principal, Written, position_of, utc_now
from infra.keyring import (
    KEY_SIZE,
    DecryptionError,
    Keyring,
    object_aad,
    open_sealed,
    seal,
    wrapped_key_aad,
)
from infra.repository import EventRegistry, Repository

MAX_SECRET_CHARS: Final = 8192
MAX_SECRET_BYTES: Final = 8192
MAX_PURPOSE: Final = 200
CREDENTIAL_USED: Final = "vault.credential_used"
DATA_KEY_ROTATED: Final = "vault.data_key_rotated"
FINGERPRINT_KEY_VERSION: Final = 1
"""Fingerprints use a key derived from the tenant's first key (like e-mail lookup keys),
so a credential keeps its fingerprint across tenant key rotations."""


class CredentialRejectedError(InvalidError):
    """The connector's validator refused the new credential; the old one stays in use."""


class InvalidCredentialError(InvalidError):
    pass


class _KeysMovedError(ConflictError):
    """Data keys were added between counting them and rotating: count again."""


class Secret:
    """A plaintext credential that does not print: ``repr``, ``str`` and f-strings show
    a mask; :meth:`reveal` gives the value to the code that must send it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled")


@dataclass(frozen=True, slots=True)
class Validation:
    ok: bool
    reason: str | None = None
    """Why not (shown to the caller and recorded in the event): never the secret."""


class CredentialValidator(Protocol):
    """Checks a new credential against its target system before the old one is purged."""

    async def validate(self, connector: Connector, secret: Secret) -> Validation: ...


class ShapeValidator:
    """The default for kinds without a validator of their own: the shape only (not empty,
    printable, at most 8 KiB of UTF-8). It cannot know whether the target accepts it."""

    async def validate(self, connector: Connector, secret: Secret) -> Validation:
        value = secret.reveal()
        if not value.strip():
            return Validation(False, "the credential is empty")
        if not value.isprintable():
            return Validation(False, "the credential holds characters that are not printable")
        if len(value.encode()) > MAX_SECRET_BYTES:
            return Validation(False, f"the credential is over {MAX_SECRET_BYTES} bytes")
        return Validation(True)


class Validators:
    """The validator of each connector kind; a kind without one gets :class:`ShapeValidator`."""

    def __init__(self, default: CredentialValidator | None = None) -> None:
        self.default: CredentialValidator = default or ShapeValidator()
        self._by_kind: dict[str, CredentialValidator] = {}

    def register(self, kind: str, validator: CredentialValidator) -> None:
        self._by_kind[kind] = validator

    def unregister(self, kind: str) -> None:
        self._by_kind.pop(kind, None)

    def for_kind(self, kind: str) -> CredentialValidator:
        return self._by_kind.get(kind, self.default)


def credential_aad(tenant_id: UUID, connector_id: UUID, version: int, key_version: int) -> bytes:
    return object_aad(tenant_id, f"connector:{connector_id}:credential:{version}", key_version)


def vault_stream(tenant_id: UUID) -> str:
    return f"vault-{tenant_id}"


def _check_secret(secret: str) -> str:
    if not isinstance(secret, str) or not 1 <= len(secret) <= MAX_SECRET_CHARS:
        raise InvalidCredentialError(f"a credential is 1 to {MAX_SECRET_CHARS} characters")
    return secret


def _check_purpose(purpose: str) -> str:
    purpose = purpose.strip()
    if not 1 <= len(purpose) <= MAX_PURPOSE or not purpose.isprintable():
        raise InvalidError(f"a purpose is 1 to {MAX_PURPOSE} printable characters")
    return purpose


def _safe_reason(reason: str | None, secret: str) -> str:
    """The validator's reason, unless it would repeat the secret."""
    reason = (reason or "").strip()
    if not reason or secret in reason:
        return "the validator refused the credential"
    return reason


class Vault:
    """Connector commands, sealed credentials and their audited use, for one process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        keyring: Keyring,
        *,
        clock: Clock = utc_now,
        validators: Validators | None = None,
    ) -> None:
        self.pool = pool
        self.store = store
        self.keyring = keyring
        self.clock = clock
        self.validators = validators or Validators()
        self.repository = Repository(store, EventRegistry([Connector, Tenant]))

    # ---- keys ----------------------------------------------------------------------------

    async def fingerprint(self, tenant_id: UUID, secret: str) -> str:
        """``hmac-sha256:`` and the first 16 hex digits of the secret's HMAC under a key
        derived from the tenant key: equal secrets match, and nothing else can be told."""
        async with tenant_transaction(self.pool, tenant_id, readonly=True) as conn:
            tenant_key = await self.keyring.tenant_key(conn, tenant_id, FINGERPRINT_KEY_VERSION)
        key = derive_key(tenant_key, "connector credential fingerprint")
        return "hmac-sha256:" + keyed_hash(key, secret).hex()[:16]

    async def _data_key(
        self, conn: asyncpg.Connection, tenant_id: UUID, version: int | None = None
    ) -> tuple[int, bytes]:
        """A vault data key: the primary (made on first use), or a given version."""
        query = (
            "SELECT version, tenant_key_version, wrapped FROM vault_key WHERE tenant_id = $1 AND "
            + ("is_primary" if version is None else "version = $2")
        )
        args: tuple[Any, ...] = (tenant_id,) if version is None else (tenant_id, version)
        row = await conn.fetchrow(query, *args)
        if row is None and version is None:
            await self._insert_data_key(conn, tenant_id, 1, if_absent=True)
            row = await conn.fetchrow(query, *args)
        if row is None:
            raise DecryptionError(f"vault key version {version} is missing")
        tenant_key = await self.keyring.tenant_key(conn, tenant_id, row["tenant_key_version"])
        aad = wrapped_key_aad(tenant_id, f"vault-key:{row['version']}", row["tenant_key_version"])
        return row["version"], open_sealed(tenant_key, row["wrapped"], aad)

    async def _insert_data_key(
        self, conn: asyncpg.Connection, tenant_id: UUID, version: int, *, if_absent: bool
    ) -> None:
        tenant_version, tenant_key = await self.keyring.primary_tenant_key(conn, tenant_id)
        wrapped = seal(
            tenant_key,
            random.token_bytes(KEY_SIZE),
            wrapped_key_aad(tenant_id, f"vault-key:{version}", tenant_version),
        )
        await conn.execute(
            "INSERT INTO vault_key (tenant_id, version, tenant_key_version, wrapped, is_primary) "
            "VALUES ($1, $2, $3, $4, true)" + (" ON CONFLICT DO NOTHING" if if_absent else ""),
            tenant_id,
            version,
            tenant_version,
            wrapped,
        )

    async def rotate_data_key(self, principal: Principal | None, tenant_id: UUID) -> Written:
        """A new primary vault data key: new credentials are sealed under it, the older
        keys still open what they sealed. Recorded as ``vault.data_key_rotated``."""
        async with tenant_transaction(self.pool, tenant_id, readonly=True) as conn:
            current = await conn.fetchval(
                "SELECT max(version) FROM vault_key WHERE tenant_id = $1", tenant_id
            )
        new_version = (current or 0) + 1

        async def effect(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE vault_key SET is_primary = false WHERE tenant_id = $1 AND is_primary",
                tenant_id,
            )
            try:
                await self._insert_data_key(conn, tenant_id, new_version, if_absent=False)
            except asyncpg.UniqueViolationError:
                raise ConflictError("the vault keyset moved on; rotate again") from None

        actor = principal.actor if principal else Actor("system", "vault")
        result = await self._audit(
            tenant_id, DATA_KEY_ROTATED, {"version": new_version}, actor=actor, effect=effect
        )
        return Written(position_of(result), {"version": new_version})

    async def rotate_tenant_key(self, principal: Principal) -> Written:
        """A new primary tenant key, every subject key and vault data key re-wrapped under
        it (Keyring.rotate_tenant_key), recorded as ``tenant.key_rotated`` in the same
        transaction. Retried when keys were added between counting and rotating."""
        for _ in range(3):
            written = await self._rotate_tenant_key_once(principal)
            if written is not None:
                return written
        raise ConflictError("keys kept changing during the rotation; try again")

    async def _rotate_tenant_key_once(self, principal: Principal) -> Written | None:
        tenant_id = principal.tenant_id
        tenant = await self.repository.get(tenant_id, Tenant, tenant_id)
        async with tenant_transaction(self.pool, tenant_id) as conn:
            current, _key = await self.keyring.primary_tenant_key(conn, tenant_id)
            counts = await _wrapped_counts(conn, tenant_id, None)
        tenant.record_key_rotation(from_version=current, to_version=current + 1, **counts)

        async def effect(conn: asyncpg.Connection) -> None:
            new_version = await self.keyring.rotate_tenant_key(conn, tenant_id)
            if new_version != current + 1:
                raise ConflictError("the tenant key moved on; rotate again")
            if await _wrapped_counts(conn, tenant_id, new_version) != counts:
                raise _KeysMovedError

        try:
            result = await self.repository.save(
                tenant_id, tenant, command_id=uuid4(), actor=principal.actor, effect=effect
            )
        except _KeysMovedError:
            return None
        values = {"from_version": current, "to_version": current + 1, **counts}
        return Written(position_of(result), values)

    # ---- connectors ----------------------------------------------------------------------

    async def get(self, tenant_id: UUID, connector_id: UUID) -> Connector:
        return await self.repository.get(tenant_id, Connector, connector_id)

    async def _save(
        self, principal: Principal, connector: Connector, effect: Effect | None = None
    ) -> int:
        result = await self.repository.save(
            principal.tenant_id,
            connector,
            command_id=uuid4(),
            actor=principal.actor,
            effect=effect,
        )
        return position_of(result)

    async def register(
        self, principal: Principal, *, kind: str, name: str, config: Mapping[str, Any]
    ) -> Written:
        connector = Connector.register(kind, name, dict(config))
        position = await self._save(principal, connector)
        return Written(position, {"connector_id": connector.id})

    async def change_config(
        self, principal: Principal, connector_id: UUID, config: Mapping[str, Any]
    ) -> Written:
        connector = await self.get(principal.tenant_id, connector_id)
        connector.change_config(dict(config))
        return Written(await self._save(principal, connector))

    async def pause(self, principal: Principal, connector_id: UUID) -> Written:
        connector = await self.get(principal.tenant_id, connector_id)
        connector.pause()
        return Written(await self._save(principal, connector))

    async def resume(self, principal: Principal, connector_id: UUID) -> Written:
        connector = await self.get(principal.tenant_id, connector_id)
        connector.resume()
        return Written(await self._save(principal, connector))

    # ---- credentials ---------------------------------------------------------------------

    def _insert_credential(
        self, tenant_id: UUID, connector_id: UUID, version: int, secret: str, state: str
    ) -> Effect:
        async def insert(conn: asyncpg.Connection) -> None:
            key_version, key = await self._data_key(conn, tenant_id)
            sealed = seal(
                key,
                secret.encode(),
                credential_aad(tenant_id, connector_id, version, key_version),
            )
            await conn.execute(
                "INSERT INTO connector_credential (tenant_id, connector_id, version, "
                "vault_key_version, sealed, state) VALUES ($1, $2, $3, $4, $5, $6)",
                tenant_id,
                connector_id,
                version,
                key_version,
                sealed,
                state,
            )

        return insert

    async def set_credential(
        self, principal: Principal, connector_id: UUID, kind: str, secret: str
    ) -> Written:
        """Store a connector's first credential, or rotate to a new one.

        Rotation: ``rotation_started`` + ``paused``; ``credential_staged``; the
        kind's validator; then ``credential_validated``, ``credential_purged``,
        ``rotation_completed``, ``resumed`` (the old row deleted, the staged one
        active), or ``credential_rejected``, ``resumed`` (the staged row deleted)
        and :class:`CredentialRejectedError`.
        """
        tenant_id = principal.tenant_id
        kind = credential_kind(kind).value
        secret = _check_secret(secret)
        connector = await self.get(tenant_id, connector_id)
        fingerprint = await self.fingerprint(tenant_id, secret)
        if connector.credential_version is None:
            version = connector.set_first_credential(kind, fingerprint)
            insert = self._insert_credential(tenant_id, connector_id, version, secret, "active")
            return Written(await self._save(principal, connector, insert))

        async def drop_staged(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "DELETE FROM connector_credential WHERE tenant_id = $1 AND connector_id = $2 "
                "AND state = 'staged'",
                tenant_id,
                connector_id,
            )

        connector.start_rotation()
        await self._save(principal, connector, drop_staged)
        version = connector.stage(kind, fingerprint)
        staged = self._insert_credential(tenant_id, connector_id, version, secret, "staged")
        await self._save(principal, connector, staged)

        verdict = await self._validate(connector, secret)
        if not verdict.ok:
            reason = _safe_reason(verdict.reason, secret)
            connector.reject_staged(reason)
            connector.abandon_rotation()
            await self._save(principal, connector, drop_staged)
            raise CredentialRejectedError(f"the credential was not accepted: {reason}")

        new, old = connector.accept_staged()

        async def promote(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "DELETE FROM connector_credential WHERE tenant_id = $1 AND connector_id = $2 "
                "AND version = $3",
                tenant_id,
                connector_id,
                old,
            )
            promoted = await conn.execute(
                "UPDATE connector_credential SET state = 'active' WHERE tenant_id = $1 "
                "AND connector_id = $2 AND version = $3 AND state = 'staged'",
                tenant_id,
                connector_id,
                new,
            )
            if promoted != "UPDATE 1":
                raise ConflictError("the staged credential is gone; set the credential again")

        return Written(await self._save(principal, connector, promote))

    async def _validate(self, connector: Connector, secret: str) -> Validation:
        validator = self.validators.for_kind(connector.kind)
        try:
            return await validator.validate(connector, Secret(secret))
        except Exception as e:  # a failing validator is a refusal, never a 500
            return Validation(False, f"the validator failed ({type(e).__name__})")

    async def use_credential(
        self,
        tenant_id: UUID,
        connector_id: UUID,
        *,
        purpose: str,
        actor: Actor,
        correlation: UUID | None = None,
    ) -> Secret:
        """The plaintext credential of an active connector, for the grant executor.

        ``vault.credential_used`` (connector, version, purpose, fingerprint) is
        appended in the transaction that reads the sealed row, so there is no
        use without its event, and no event for a read that failed.
        """
        purpose = _check_purpose(purpose)
        connector = await self.get(tenant_id, connector_id)
        if connector.rotating:
            raise ConflictError("the connector's credential is being rotated")
        if connector.status is not ConnectorStatus.ACTIVE:
            raise ConflictError("the connector is paused")
        version = connector.credential_version
        if version is None:
            raise ConflictError("the connector has no credential")
        opened: list[str] = []

        async def read(conn: asyncpg.Connection) -> None:
            row = await conn.fetchrow(
                "SELECT vault_key_version, sealed FROM connector_credential WHERE tenant_id = $1 "
                "AND connector_id = $2 AND version = $3 AND state = 'active'",
                tenant_id,
                connector_id,
                version,
            )
            if row is None:
                raise ConflictError("the connector's credential changed; try again")
            key_version, key = await self._data_key(conn, tenant_id, row["vault_key_version"])
            aad = credential_aad(tenant_id, connector_id, version, key_version)
            opened.append(open_sealed(key, row["sealed"], aad).decode())

        data = {
            "connector_id": str(connector_id),
            "version": version,
            "purpose": purpose,
            "fingerprint": connector.fingerprint,
        }
        await self._audit(
            tenant_id, CREDENTIAL_USED, data, actor=actor, effect=read, correlation=correlation
        )
        return Secret(opened[0])

    async def _audit(
        self,
        tenant_id: UUID,
        event_type: str,
        data: Mapping[str, Any],
        *,
        actor: Actor,
        effect: Effect,
        correlation: UUID | None = None,
    ) -> AppendResult:
        stream = vault_stream(tenant_id)
        return await self.store.append(
            tenant_id,
            [NewEvent(stream=stream, type=event_type, data=dict(data))],
            expected={stream: None},
            command_id=uuid4(),
            actor=actor,
            correlation=correlation,
            effect=effect,
        )


async def _wrapped_counts(
    conn: asyncpg.Connection, tenant_id: UUID, version: int | None
) -> dict[str, int]:
    """Live wrapped data keys of the tenant (under tenant key ``version``, or any)."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM subject_key WHERE tenant_id = $1 AND wrapped IS NOT NULL "
        "AND ($2::integer IS NULL OR tenant_key_version = $2)) AS subject_keys, "
        "(SELECT count(*) FROM vault_key WHERE tenant_id = $1 "
        "AND ($2::integer IS NULL OR tenant_key_version = $2)) AS vault_keys",
        tenant_id,
        version,
    )
    assert row is not None
    return {"subject_keys": int(row["subject_keys"]), "vault_keys": int(row["vault_keys"])}
