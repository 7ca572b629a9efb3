"""The ledger for auditors: signed checkpoints, notary keys, receipts and proofs.

Texts an auditor checks with openssl are served as they are signed (the
checkpoint notes, c2sp.org/tlog-proof@v1 receipts, one base64 hash per line
for consistency proofs, the leaf's exact bytes); JSON wraps them for programs.
Proofs are built from the stored Merkle nodes: a handful of reads, whatever the
size of the log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get
from litestar.exceptions import ValidationException
from litestar.params import PathParameter, QueryParameter

from api.access import principal_of, requires
from domain.errors import NotFoundError
from domain.permissions import Permission
from infra.db import tenant_transaction
from infra.ledger import (
    StoredCheckpoint,
    checkpoint_at,
    checkpoints_after,
    consistency_proof,
    inclusion_proof,
    latest_checkpoint,
    ledger_keys,
)
from infra.notes import Receipt, b64, format_hashes, parse_note
from infra.runtime import Runtime

TEXT = "text/plain; charset=utf-8"
MAX_POSITION = 2**63 - 1
"""Sizes and seqs are PostgreSQL bigints: larger numbers are a 400, not a query."""


class Body(msgspec.Struct, kw_only=True):
    pass


class LedgerKeyView(Body):
    name: str
    key_id: str
    """Hex, the 4 bytes that prefix each of this key's signatures."""
    vkey: str
    """``<name>+<hex key id>+<base64(0x01 || public key)>`` (signed-note verifier key)."""
    public_key_pem: str
    """The Ed25519 public key for ``openssl pkeyutl -verify``."""
    valid_from: datetime
    valid_until: datetime | None
    activated_seq: int
    retired_seq: int | None


class LedgerKeys(Body):
    keys: list[LedgerKeyView]


class CheckpointView(Body):
    size: int
    root: str
    """Base64 of the Merkle root, as in the note."""
    signed_at: datetime
    note: str
    """The signed note, byte for byte (log signatures and witness cosignatures)."""


class CheckpointPage(Body):
    items: list[CheckpointView]
    next_after: int | None


class ReceiptView(Body):
    seq: int
    index: int
    """Zero-based leaf index (``seq - 1``)."""
    leaf: str
    """Base64 of the leaf's exact bytes (canonical JSON)."""
    leaf_hash: str
    checkpoint_size: int
    receipt: str
    """c2sp.org/tlog-proof@v1: index, inclusion proof, the signed checkpoint."""


def _view(checkpoint: StoredCheckpoint) -> CheckpointView:
    return CheckpointView(
        size=checkpoint.size,
        root=b64(checkpoint.root),
        signed_at=checkpoint.signed_at,
        note=checkpoint.note,
    )


def _tenant(request: Request[Any, Any, Any]) -> tuple[asyncpg.Pool, UUID]:
    """The pool and the caller's tenant: every ledger read is in that tenant's transaction."""
    runtime: Runtime = request.app.state.runtime
    return runtime.pool, principal_of(request.scope).tenant_id


def _text(body: str) -> Response[str]:
    return Response(content=body, media_type=TEXT)


class LedgerController(Controller):
    path = "/v1"
    tags = ["ledger"]

    @get(
        "/ledger/keys",
        operation_id="listLedgerKeys",
        summary="The notary keys that sign this tenant's checkpoints, with their validity",
        opt=requires(Permission.LEDGER_READ),
    )
    async def keys(self, request: Request[Any, Any, Any]) -> LedgerKeys:
        pool, tenant_id = _tenant(request)
        async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
            keys = await ledger_keys(conn, tenant_id)
        return LedgerKeys(
            keys=[
                LedgerKeyView(
                    name=k.verifier.name,
                    key_id=k.verifier.key_id.hex(),
                    vkey=k.verifier.vkey,
                    public_key_pem=k.verifier.pem,
                    valid_from=k.valid_from,
                    valid_until=k.valid_until,
                    activated_seq=k.activated_seq,
                    retired_seq=k.retired_seq,
                )
                for k in keys
            ]
        )

    @get(
        "/ledger/checkpoint",
        operation_id="getLatestCheckpoint",
        summary="The latest signed checkpoint, as the signed note text",
        opt=requires(Permission.LEDGER_READ),
        media_type=TEXT,
    )
    async def latest(self, request: Request[Any, Any, Any]) -> Response[str]:
        pool, tenant_id = _tenant(request)
        async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
            checkpoint = await latest_checkpoint(conn, tenant_id)
        if checkpoint is None:
            raise NotFoundError("no checkpoint has been signed for this log yet")
        return _text(checkpoint.note)

    @get(
        "/ledger/checkpoints",
        operation_id="listCheckpoints",
        summary="Signed checkpoints in size order, after a size",
        opt=requires(Permission.LEDGER_READ),
    )
    async def list_checkpoints(
        self,
        request: Request[Any, Any, Any],
        after: Annotated[int, QueryParameter(ge=0, le=MAX_POSITION)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> CheckpointPage:
        pool, tenant_id = _tenant(request)
        async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
            rows = await checkpoints_after(conn, tenant_id, after, limit)
        return CheckpointPage(
            items=[_view(c) for c in rows],
            next_after=rows[-1].size if len(rows) == limit else None,
        )

    @get(
        "/ledger/checkpoints/{size:int}",
        operation_id="getCheckpoint",
        summary="The signed checkpoint of one size, as the signed note text",
        opt=requires(Permission.LEDGER_READ),
        media_type=TEXT,
    )
    async def one_checkpoint(
        self,
        request: Request[Any, Any, Any],
        size: Annotated[int, PathParameter(ge=1, le=MAX_POSITION)],
    ) -> Response[str]:
        pool, tenant_id = _tenant(request)
        async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
            checkpoint = await checkpoint_at(conn, tenant_id, size)
        if checkpoint is None:
            raise NotFoundError(f"no checkpoint of size {size}")
        return _text(checkpoint.note)

    @get(
        "/ledger/consistency",
        operation_id="getConsistencyProof",
        summary="RFC 9162 consistency proof between two sizes, one base64 hash per line",
        opt=requires(Permission.LEDGER_READ),
        media_type=TEXT,
    )
    async def consistency(
        self,
        request: Request[Any, Any, Any],
        from_size: Annotated[int, QueryParameter(name="from", ge=1, le=MAX_POSITION)],
        to_size: Annotated[int, QueryParameter(name="to", ge=1, le=MAX_POSITION)],
    ) -> Response[str]:
        if from_size > to_size:
            raise ValidationException("'from' must not be above 'to'")
        pool, tenant_id = _tenant(request)
        async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
            size = await conn.fetchval(
                "SELECT size FROM tenant_log WHERE tenant_id = $1", tenant_id
            )
            if to_size > (size or 0):
                raise NotFoundError(f"the log has {size or 0} events, not {to_size}")
            proof = await consistency_proof(conn, tenant_id, from_size, to_size)
        return _text(format_hashes(proof))

    async def _receipt(self, request: Request[Any, Any, Any], seq: int) -> ReceiptView:
        pool, tenant_id = _tenant(request)
        async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
            row = await conn.fetchrow(
                "SELECT e.leaf, e.leaf_hash, c.size, c.note FROM event_log e, LATERAL ("
                "SELECT size, note FROM checkpoint WHERE tenant_id = $1 "
                "ORDER BY size DESC LIMIT 1) c WHERE e.tenant_id = $1 AND e.seq = $2",
                tenant_id,
                seq,
            )
            if row is None:
                latest = await latest_checkpoint(conn, tenant_id)
                if latest is None:
                    raise NotFoundError("no checkpoint has been signed for this log yet")
                raise NotFoundError(f"no event at seq {seq}")
            if row["size"] < seq:
                raise NotFoundError(
                    f"event {seq} is not covered by a checkpoint yet (the latest covers "
                    f"1..{row['size']}); ask again after the notary's next round"
                )
            proof = await inclusion_proof(conn, tenant_id, seq - 1, row["size"])
        receipt = Receipt(seq - 1, tuple(proof), parse_note(row["note"]))
        return ReceiptView(
            seq=seq,
            index=seq - 1,
            leaf=b64(row["leaf"]),
            leaf_hash=b64(row["leaf_hash"]),
            checkpoint_size=row["size"],
            receipt=receipt.text(),
        )

    @get(
        "/events/{seq:int}/receipt",
        operation_id="getEventReceipt",
        summary="An event's leaf bytes and its receipt against the latest checkpoint",
        opt=requires(Permission.LEDGER_READ),
    )
    async def receipt(
        self,
        request: Request[Any, Any, Any],
        seq: Annotated[int, PathParameter(ge=1, le=MAX_POSITION)],
    ) -> ReceiptView:
        return await self._receipt(request, seq)

    @get(
        "/events/{seq:int}/receipt.tlog-proof",
        operation_id="getEventReceiptText",
        summary="An event's receipt as c2sp.org/tlog-proof@v1 text (for the auditor scripts)",
        opt=requires(Permission.LEDGER_READ),
        media_type=TEXT,
    )
    async def receipt_text(
        self,
        request: Request[Any, Any, Any],
        seq: Annotated[int, PathParameter(ge=1, le=MAX_POSITION)],
    ) -> Response[str]:
        return _text((await self._receipt(request, seq)).receipt)

    @get(
        "/events/{seq:int}/leaf",
        operation_id="getEventLeaf",
        summary="An event's leaf: the exact bytes its hash covers",
        opt=requires(Permission.LEDGER_READ),
        media_type="application/octet-stream",
    )
    async def leaf(
        self,
        request: Request[Any, Any, Any],
        seq: Annotated[int, PathParameter(ge=1, le=MAX_POSITION)],
    ) -> Response[bytes]:
        pool, tenant_id = _tenant(request)
        async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
            leaf = await conn.fetchval(
                "SELECT leaf FROM event_log WHERE tenant_id = $1 AND seq = $2", tenant_id, seq
            )
        if leaf is None:
            raise NotFoundError(f"no event at seq {seq}")
        return Response(content=bytes(leaf), media_type="application/octet-stream")
