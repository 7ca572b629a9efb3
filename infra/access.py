"""Access requests, signed approvals and grants: the command handlers and the expiry worker.

The rules are the domain's (domain/access.py); this module loads aggregates, signs
decisions, saves, and talks to the target system:

- Each tenant has an Ed25519 approval key, made on first use. Its private half is sealed
  with the tenant key (infra/sql/0018_governance.sql); its public half is published in the
  tenant's log (``approval_key.created``) and at ``GET /v1/access/approval-keys``, so anyone
  can check a decision's signature from the event alone (:func:`verify_decision`).
- Execution saves the executed request and the new grant in ONE append (with the grant's
  row in ``grant_schedule``), so concurrent executions race on the request's stream version
  and exactly one wins; the others get a 409.
- A connector kind may have a :class:`Provisioner` that grants and takes back access in the
  target system. It receives the connector's credential from the vault's audited
  ``use_credential``, the only way to read one; its outcome is recorded on the grant.
  Kinds without a provisioner are recorded only.
- :class:`GrantExpiry` ends grants when they run out, across tenants, from
  ``grants_due()`` (ids and times only).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID, uuid4

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from domain.access import (
    AccessPolicy,
    AccessRequest,
    Decision,
    Grant,
    GrantStateError,
    TenantAccessPolicy,
)
from domain.connector import Connector, ConnectorStatus
from domain.errors import ConflictError, InvalidError, NotFoundError
from domain.permissions import PermissionDeniedError
from infra.db import tenant_transaction
from infra.eventstore import (
    Actor,
    AppendResult,
    ConcurrencyError,
    Effect,
    EventStore,
    NewEvent,
)
from infra.identity import Clock, Principal, Written, position_of, utc_now
from infra.keyring import Keyring, object_aad, open_sealed, seal
from infra.repository import EventRegistry, Repository

log = logging.getLogger(__name__)

APPROVAL_KEY_CREATED = "approval_key.created"
APPROVAL_KEY_RETIRED = "approval_key.retired"
EXPIRY_ACTOR = Actor("system", "grant-expiry")
DECISION_ATTEMPTS = 3
"""A decision saved while another decision on the same request landed is redone on the
fresh request this many times (each decision is independent of the others)."""


def approval_key_stream(tenant_id: UUID) -> str:
    return f"approval_key-{tenant_id}"


def approval_key_id(public_key: bytes) -> str:
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:16]


def public_key_pem(public_key: bytes) -> str:
    key = Ed25519PublicKey.from_public_bytes(public_key)
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def verify_decision(public_key: bytes, manifest: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the approval key's Ed25519 signature of ``manifest``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, manifest)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class ApprovalKey:
    key_id: str
    public_key: bytes
    created_at: datetime
    retired_at: datetime | None


class _KeyRace(Exception):
    """Another process made the tenant's approval key first."""


class _RetiredKey(Exception):
    """The key this process signed with was retired meanwhile (by another process)."""


@dataclass(frozen=True, slots=True)
class KeyRotated:
    key: ApprovalKey
    retired: str | None
    """The key id it replaces (None: the tenant had none yet)."""
    position: int


class ApprovalKeys:
    """Each tenant's approval signing key: made on first use, kept sealed, cached unsealed."""

    def __init__(
        self, pool: asyncpg.Pool, store: EventStore, keyring: Keyring, clock: Clock
    ) -> None:
        self._pool = pool
        self._store = store
        self._keyring = keyring
        self._clock = clock
        self._signers: dict[UUID, tuple[str, Ed25519PrivateKey]] = {}
        self._making: dict[UUID, asyncio.Lock] = {}

    async def signer(self, tenant_id: UUID) -> tuple[str, Ed25519PrivateKey]:
        cached = self._signers.get(tenant_id)
        if cached is not None:
            return cached
        async with self._making.setdefault(tenant_id, asyncio.Lock()):
            for _ in range(2):
                found = await self._load(tenant_id)
                if found is None:
                    try:
                        found = await self._create(tenant_id)
                    except _KeyRace:
                        continue
                self._signers[tenant_id] = found
                return found
        raise ConflictError("the approval key is being made; try again")

    async def _load(self, tenant_id: UUID) -> tuple[str, Ed25519PrivateKey] | None:
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            row = await conn.fetchrow(
                "SELECT key_id, sealed_private, tenant_key_version FROM approval_key "
                "WHERE tenant_id = $1 AND retired_at IS NULL",
                tenant_id,
            )
            if row is None:
                return None
            version = row["tenant_key_version"]
            tenant_key = await self._keyring.tenant_key(conn, tenant_id, version)
        raw = open_sealed(
            tenant_key,
            row["sealed_private"],
            object_aad(tenant_id, f"approval-key:{row['key_id']}", version),
        )
        return row["key_id"], Ed25519PrivateKey.from_private_bytes(raw)

    async def _create(self, tenant_id: UUID) -> tuple[str, Ed25519PrivateKey]:
        key_id, private, _, _ = await self._make(
            tenant_id, retiring=None, actor=Actor("system", "approval-keys")
        )
        return key_id, private

    async def rotate(self, tenant_id: UUID, actor: Actor) -> KeyRotated:
        """Retire the key in use (its public half stays published: what it signed still
        verifies) and make a new one, in one append. A decision signed meanwhile by any
        process with the old key is not saved: ``decide`` signs it again."""
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            retiring = await conn.fetchval(
                "SELECT key_id FROM approval_key WHERE tenant_id = $1 AND retired_at IS NULL",
                tenant_id,
            )
            version = await conn.fetchval(
                "SELECT max(stream_version) FROM event_log WHERE tenant_id = $1 AND stream_id = $2",
                tenant_id,
                approval_key_stream(tenant_id),
            )
        try:
            key_id, private, result, created_at = await self._make(
                tenant_id, retiring=retiring, actor=actor, stream_version=version
            )
        except _KeyRace:  # the first key, made meanwhile by a decision
            raise ConflictError("the approval key was made meanwhile; try again") from None
        self._signers[tenant_id] = (key_id, private)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        key = ApprovalKey(key_id, public, created_at, None)
        return KeyRotated(key, retiring, result.last_seq)

    async def _make(
        self,
        tenant_id: UUID,
        *,
        retiring: str | None,
        actor: Actor,
        stream_version: int | None = None,
    ) -> tuple[str, Ed25519PrivateKey, AppendResult, datetime]:
        private = Ed25519PrivateKey.generate()
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        key_id = approval_key_id(public)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            version, tenant_key = await self._keyring.primary_tenant_key(conn, tenant_id)
        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        sealed = seal(tenant_key, raw, object_aad(tenant_id, f"approval-key:{key_id}", version))
        now = self._clock()

        async def effect(conn: asyncpg.Connection) -> None:
            if retiring is not None:
                status = await conn.execute(
                    "UPDATE approval_key SET retired_at = $3 "
                    "WHERE tenant_id = $1 AND key_id = $2 AND retired_at IS NULL",
                    tenant_id,
                    retiring,
                    now,
                )
                if status != "UPDATE 1":
                    raise ConflictError("the approval key was rotated meanwhile; try again")
            try:
                await conn.execute(
                    "INSERT INTO approval_key (tenant_id, key_id, public_key, sealed_private, "
                    "tenant_key_version, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    tenant_id,
                    key_id,
                    public,
                    sealed,
                    version,
                    now,
                )
            except asyncpg.UniqueViolationError:
                if retiring is not None:
                    raise ConflictError("the approval key was made meanwhile; try again") from None
                raise _KeyRace from None

        stream = approval_key_stream(tenant_id)
        events = [
            NewEvent(
                stream=stream,
                type=APPROVAL_KEY_CREATED,
                data={
                    "key_id": key_id,
                    "algorithm": "Ed25519",
                    "public_key": base64.b64encode(public).decode(),
                    "created_at": now.isoformat(),
                },
            )
        ]
        if retiring is not None:
            retired = {"key_id": retiring, "retired_at": now.isoformat(), "successor": key_id}
            events.insert(0, NewEvent(stream=stream, type=APPROVAL_KEY_RETIRED, data=retired))
        try:
            result = await self._store.append(
                tenant_id,
                events,
                # A concurrent rotation or first key fails here (409) or in the effect.
                expected={stream: stream_version},
                command_id=uuid4(),
                actor=actor,
                effect=effect,
            )
        except ConcurrencyError:
            if stream_version is None and retiring is None:
                raise _KeyRace from None  # the first key, made by another process
            raise
        return key_id, private, result, now

    async def still_in_use(self, conn: asyncpg.Connection, tenant_id: UUID, key_id: str) -> None:
        """In the transaction that records a decision: the key it was signed with is the
        one in use, and stays so until commit (a rotation waits). Else :class:`_RetiredKey`
        and this process forgets its signer."""
        in_use = await conn.fetchval(
            "SELECT true FROM approval_key WHERE tenant_id = $1 AND key_id = $2 "
            "AND retired_at IS NULL FOR SHARE",
            tenant_id,
            key_id,
        )
        if not in_use:
            self._signers.pop(tenant_id, None)
            raise _RetiredKey

    async def published(self, tenant_id: UUID) -> list[ApprovalKey]:
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            rows = await conn.fetch(
                "SELECT key_id, public_key, created_at, retired_at FROM approval_key "
                "WHERE tenant_id = $1 ORDER BY created_at, key_id",
                tenant_id,
            )
        return [ApprovalKey(**dict(r)) for r in rows]


# ---- provisioning in the target system ------------------------------------------------------


class Secret(Protocol):
    def reveal(self) -> str: ...


class CredentialSource(Protocol):
    """The vault's audited read of a connector's credential (infra/vault.py)."""

    async def use_credential(
        self,
        tenant_id: UUID,
        connector_id: UUID,
        *,
        purpose: str,
        actor: Actor,
        correlation: UUID | None = None,
    ) -> Secret: ...


class Provisioner(Protocol):
    """Grants and takes back access in one kind of target system.

    Returns a short, secret-free note for the log (or None); raises on failure.
    """

    async def grant(self, connector: Connector, grant: Grant, credential: Secret) -> str | None: ...

    async def revoke(
        self, connector: Connector, grant: Grant, credential: Secret
    ) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Decided:
    request_id: UUID
    decision: Decision
    approval_id: UUID | None
    key_id: str
    signature: bytes
    manifest: bytes
    decided_at: datetime
    position: int


@dataclass
class AccessService:
    """Command handlers for the tenant's access policy, requests, decisions and grants."""

    pool: asyncpg.Pool
    store: EventStore
    keyring: Keyring
    credentials: CredentialSource | None
    clock: Clock = utc_now
    provisioners: dict[str, Provisioner] = field(default_factory=dict)
    keys: ApprovalKeys = field(init=False)
    repository: Repository = field(init=False)

    def __post_init__(self) -> None:
        self.keys = ApprovalKeys(self.pool, self.store, self.keyring, self.clock)
        self.repository = Repository(
            self.store, EventRegistry([AccessRequest, Grant, TenantAccessPolicy, Connector])
        )

    # ---- the policy ----

    async def policy(self, tenant_id: UUID) -> tuple[AccessPolicy, int]:
        """The tenant's policy and its stream version (0: never set, the defaults)."""
        try:
            adopted = await self.repository.get(tenant_id, TenantAccessPolicy, tenant_id)
        except NotFoundError:
            return AccessPolicy(), 0
        return adopted.policy, adopted.version

    async def set_policy(self, principal: Principal, policy: AccessPolicy) -> Written:
        tenant_id = principal.tenant_id
        try:
            adopted = await self.repository.get(tenant_id, TenantAccessPolicy, tenant_id)
        except NotFoundError:
            adopted = TenantAccessPolicy.adopt(tenant_id, policy, by=principal.member_id)
        else:
            adopted.change(policy, by=principal.member_id)
        result = await self.repository.save(
            tenant_id, adopted, command_id=uuid4(), actor=principal.actor
        )
        return Written(position_of(result), {"version": adopted.version})

    # ---- requests ----

    async def _connector(self, tenant_id: UUID, connector_id: UUID) -> Connector:
        try:
            return await self.repository.get(tenant_id, Connector, connector_id)
        except NotFoundError:
            raise InvalidError(f"no connector {connector_id} in this tenant") from None

    async def request(self, tenant_id: UUID, request_id: UUID) -> AccessRequest:
        return await self.repository.get(tenant_id, AccessRequest, request_id)

    async def submit(
        self,
        principal: Principal,
        *,
        connector_id: UUID,
        resource: str,
        access_level: str,
        justification: str,
        duration: timedelta,
        items: int,
    ) -> Written:
        await self._connector(principal.tenant_id, connector_id)
        policy, _ = await self.policy(principal.tenant_id)
        request = AccessRequest.submit(
            requester_id=principal.member_id,
            requester_permissions=principal.permissions,
            connector_id=connector_id,
            resource=resource,
            access_level=access_level,
            justification=justification,
            duration=duration,
            items=items,
            policy=policy,
            now=self.clock(),
        )
        result = await self.repository.save(
            principal.tenant_id, request, command_id=uuid4(), actor=principal.actor
        )
        return Written(position_of(result), {"request": request})

    async def edit(
        self,
        principal: Principal,
        request_id: UUID,
        *,
        connector_id: UUID,
        resource: str,
        access_level: str,
        justification: str,
        duration: timedelta,
        items: int,
    ) -> Written:
        request = await self.request(principal.tenant_id, request_id)
        if connector_id != request.connector_id:
            await self._connector(principal.tenant_id, connector_id)
        policy, _ = await self.policy(principal.tenant_id)
        request.edit(
            by=principal.member_id,
            connector_id=connector_id,
            resource=resource,
            access_level=access_level,
            justification=justification,
            duration=duration,
            items=items,
            policy=policy,
            now=self.clock(),
        )
        result = await self.repository.save(
            principal.tenant_id, request, command_id=uuid4(), actor=principal.actor
        )
        return Written(position_of(result), {"request": request})

    async def withdraw(self, principal: Principal, request_id: UUID) -> Written:
        request = await self.request(principal.tenant_id, request_id)
        request.withdraw(by=principal.member_id, now=self.clock())
        result = await self.repository.save(
            principal.tenant_id, request, command_id=uuid4(), actor=principal.actor
        )
        return Written(position_of(result), {"request": request})

    async def decide(self, principal: Principal, request_id: UUID, decision: Decision) -> Decided:
        """Sign and record an approval or a rejection of the request's current content."""
        for attempt in range(DECISION_ATTEMPTS):
            request = await self.request(principal.tenant_id, request_id)
            # After the load: an unknown request is a 404 before any key is made.
            key_id, private = await self.keys.signer(principal.tenant_id)
            now = self.clock()
            manifest = request.approval_manifest(principal.member_id, decision, now)
            signature = private.sign(manifest)
            approval_id = uuid4() if decision is Decision.APPROVE else None
            record = request.reject if approval_id is None else request.approve
            record(
                approver_id=principal.member_id,
                approver_permissions=principal.permissions,
                signature=signature,
                key_id=key_id,
                now=now,
                **({} if approval_id is None else {"approval_id": approval_id}),
            )

            async def signed_in_use(conn: asyncpg.Connection, key_id: str = key_id) -> None:
                await self.keys.still_in_use(conn, principal.tenant_id, key_id)

            try:
                result = await self.repository.save(
                    principal.tenant_id,
                    request,
                    command_id=uuid4(),
                    actor=principal.actor,
                    effect=signed_in_use,
                )
            except ConcurrencyError:
                if attempt + 1 == DECISION_ATTEMPTS:
                    raise
                continue
            except _RetiredKey:  # rotated by another process: sign again with the new key
                if attempt + 1 == DECISION_ATTEMPTS:
                    raise ConflictError("the approval key was just rotated; try again") from None
                continue
            return Decided(
                request_id=request_id,
                decision=decision,
                approval_id=approval_id,
                key_id=key_id,
                signature=signature,
                manifest=manifest,
                decided_at=now,
                position=position_of(result),
            )
        raise AssertionError("unreachable")

    async def execute(self, principal: Principal, request_id: UUID) -> Written:
        """Consume the approvals once: the executed request and its grant in one append."""
        tenant_id = principal.tenant_id
        request = await self.request(tenant_id, request_id)
        if principal.member_id != request.requester_id:
            raise PermissionDeniedError("only the requester executes an approved request")
        connector = await self._connector(tenant_id, request.connector_id)
        if connector.status is not ConnectorStatus.ACTIVE:
            raise ConflictError("the connector is paused; execute when it is resumed")
        grant = request.execute(uuid4(), self.clock())

        async def schedule(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO grant_schedule (tenant_id, grant_id, expires_at) VALUES ($1, $2, $3)",
                tenant_id,
                grant.id,
                grant.expires_at,
            )

        result = await self.repository.save(
            tenant_id,
            request,
            grant,
            command_id=uuid4(),
            actor=principal.actor,
            correlation=request.id,
            effect=schedule,
        )
        position = position_of(result)
        position = max(position, await self._provision(tenant_id, connector, grant, "grant"))
        return Written(position, {"grant": grant})

    async def revoke(self, principal: Principal, grant_id: UUID, reason: str | None) -> Written:
        tenant_id = principal.tenant_id
        grant = await self.repository.get(tenant_id, Grant, grant_id)
        grant.revoke(by=principal.member_id, reason=reason, now=self.clock())
        result = await self.repository.save(
            tenant_id,
            grant,
            command_id=uuid4(),
            actor=principal.actor,
            correlation=grant.request_id,
            effect=_unschedule(tenant_id, grant.id),
        )
        position = await self._take_back(tenant_id, grant)
        return Written(max(position_of(result), position), {"grant": grant})

    async def expire(self, tenant_id: UUID, grant_id: UUID) -> bool:
        """End one grant that ran out (the worker's step). True when its schedule row is
        gone afterwards: expired now, or found ended already (a stale row, removed)."""
        grant = await self.repository.get(tenant_id, Grant, grant_id)
        try:
            grant.expire(self.clock())
        except GrantStateError:
            if not (grant.expired or grant.revoked):
                return False  # not due after all (clocks apart): the next round retries
            async with tenant_transaction(self.pool, tenant_id) as conn:
                await _unschedule(tenant_id, grant_id)(conn)
            return True
        await self.repository.save(
            tenant_id,
            grant,
            command_id=uuid4(),
            actor=EXPIRY_ACTOR,
            correlation=grant.request_id,
            effect=_unschedule(tenant_id, grant.id),
        )
        await self._take_back(tenant_id, grant)
        return True

    async def _take_back(self, tenant_id: UUID, grant: Grant) -> int:
        try:
            connector = await self.repository.get(tenant_id, Connector, grant.connector_id)
        except NotFoundError:
            return 0
        return await self._provision(tenant_id, connector, grant, "revoke")

    async def _provision(
        self, tenant_id: UUID, connector: Connector, grant: Grant, step: str
    ) -> int:
        """Run the connector kind's provisioner for ``step`` and record what it did."""
        provisioner = self.provisioners.get(connector.kind)
        if provisioner is None or self.credentials is None:
            return 0
        ok, detail = True, None
        try:
            credential = await self.credentials.use_credential(
                tenant_id,
                connector.id,
                purpose=f"{step} access for grant {grant.id}",
                actor=EXPIRY_ACTOR if step == "revoke" else Actor("system", "grant-executor"),
                correlation=grant.request_id,
            )
            act = provisioner.grant if step == "grant" else provisioner.revoke
            detail = await act(connector, grant, credential)
        except Exception as exc:
            # Only the class: a target system's message may quote the credential.
            ok, detail = False, f"failed: {type(exc).__name__}"
            log.warning(
                "provisioning %s for grant %s failed: %s", step, grant.id, type(exc).__name__
            )
        grant.record_provisioning(step=step, ok=ok, detail=detail, now=self.clock())
        result = await self.repository.save(
            tenant_id,
            grant,
            command_id=uuid4(),
            actor=Actor("system", "grant-executor"),
            correlation=grant.request_id,
        )
        return position_of(result)


def _unschedule(tenant_id: UUID, grant_id: UUID) -> Effect:
    async def effect(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "DELETE FROM grant_schedule WHERE tenant_id = $1 AND grant_id = $2",
            tenant_id,
            grant_id,
        )

    return effect


class GrantExpiry:
    """Ends grants as they run out, in every tenant. Several may run: the stream version
    makes each expiry happen once."""

    def __init__(self, service: AccessService, *, poll_seconds: float = 1.0, batch: int = 100):
        self.service = service
        self.poll_seconds = poll_seconds
        self.batch = batch

    async def run_once(self) -> int:
        """Work off every grant due now; the number of schedule rows cleared."""
        cleared = 0
        while True:
            rows = await self.service.pool.fetch(
                "SELECT tenant_id, grant_id FROM grants_due($1, $2)",
                self.service.clock(),
                self.batch,
            )
            progress = 0
            for row in rows:
                try:
                    progress += await self.service.expire(row["tenant_id"], row["grant_id"])
                except ConflictError:
                    continue  # another worker, or a revocation, got there first
                except NotFoundError:
                    log.error("grant %s is scheduled but has no events", row["grant_id"])
            cleared += progress
            if len(rows) < self.batch or not progress:
                return cleared

    async def run(self) -> None:
        while True:
            until = None
            try:
                await self.run_once()
                until = await self.service.pool.fetchval("SELECT next_grant_expiry()")
            except Exception as exc:  # a worker loop outlives one bad round
                log.warning("grant expiry round failed: %s", type(exc).__name__)
            wait = self.poll_seconds
            if until is not None:
                wait = min(wait, max(0.0, (until - self.service.clock()).total_seconds()))
            await asyncio.sleep(wait)
