"""Reading the ledger: proofs from the stored Merkle nodes, checkpoints and notary keys.

A proof names O(log n) subtrees (``infra.merkle.Range``); each is made of
complete subtrees, which are either ``merkle_node`` rows (16 leaves or more) or
at most 15 leaf hashes of ``event_log``. Both come back in ONE statement, so a
receipt costs the same few round trips at a thousand events or a billion.

Every function takes a connection already in a transaction of the tenant
(``infra.db.tenant_transaction``): row-level security decides what it sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from infra.merkle import (
    EMPTY_ROOT,
    MIN_STORED_LEVEL,
    Range,
    consistency_ranges,
    fold_range,
    inclusion_ranges,
    subtree_of_leaves,
)
from infra.notes import NOTE_KEY_TYPE, Verifier


class LedgerIntegrityError(RuntimeError):
    """A stored node or leaf hash a proof needs is missing: the store is damaged."""


async def range_hashes(
    conn: asyncpg.Connection, tenant_id: UUID, ranges: Sequence[Range]
) -> list[bytes]:
    """The Merkle Tree Hash of each range, from stored nodes and leaf hashes."""
    stored: set[tuple[int, int]] = set()
    leaf_seqs: set[int] = set()
    for range_ in ranges:
        for node in range_.complete_subtrees():
            if node.level >= MIN_STORED_LEVEL:
                stored.add((node.level, node.index))
            else:
                first = node.index << node.level
                leaf_seqs.update(range(first + 1, first + (1 << node.level) + 1))
    if not stored and not leaf_seqs:
        return []
    levels = [level for level, _ in stored]
    indexes = [index for _, index in stored]
    rows = await conn.fetch(
        "SELECT n.level, n.idx, n.hash FROM merkle_node n "
        "JOIN unnest($2::smallint[], $3::bigint[]) AS w(level, idx) "
        "ON n.level = w.level AND n.idx = w.idx WHERE n.tenant_id = $1 "
        "UNION ALL SELECT -1, seq - 1, leaf_hash FROM event_log "
        "WHERE tenant_id = $1 AND seq = ANY($4::bigint[])",
        tenant_id,
        levels,
        indexes,
        sorted(leaf_seqs),
    )
    nodes: dict[tuple[int, int], bytes] = {}
    leaves: dict[int, bytes] = {}
    for row in rows:
        if row["level"] == -1:
            leaves[row["idx"]] = row["hash"]
        else:
            nodes[(row["level"], row["idx"])] = row["hash"]
    if len(nodes) != len(stored) or len(leaves) != len(leaf_seqs):
        raise LedgerIntegrityError("a Merkle node or leaf hash needed for a proof is missing")
    for range_ in ranges:
        for node in range_.complete_subtrees():
            if node.level < MIN_STORED_LEVEL:
                first = node.index << node.level
                nodes[(node.level, node.index)] = subtree_of_leaves(
                    [leaves[i] for i in range(first, first + (1 << node.level))]
                )
    return [fold_range(range_, nodes) for range_ in ranges]


async def inclusion_proof(
    conn: asyncpg.Connection, tenant_id: UUID, index: int, size: int
) -> list[bytes]:
    return await range_hashes(conn, tenant_id, inclusion_ranges(index, size))


async def consistency_proof(
    conn: asyncpg.Connection, tenant_id: UUID, old_size: int, new_size: int
) -> list[bytes]:
    return await range_hashes(conn, tenant_id, consistency_ranges(old_size, new_size))


async def stored_root(conn: asyncpg.Connection, tenant_id: UUID, size: int) -> bytes:
    """The root of the first ``size`` leaves as the stored nodes say it is."""
    if size == 0:
        return EMPTY_ROOT
    (root,) = await range_hashes(conn, tenant_id, [Range(0, size)])
    return root


# --- Checkpoints and keys -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str
    frontier: bytes
    signed_at: datetime


_CHECKPOINT_COLUMNS = "size, root, note, frontier, signed_at"


def _checkpoint(row: asyncpg.Record) -> StoredCheckpoint:
    return StoredCheckpoint(
        row["size"], row["root"], row["note"], row["frontier"], row["signed_at"]
    )


async def latest_checkpoint(conn: asyncpg.Connection, tenant_id: UUID) -> StoredCheckpoint | None:
    row = await conn.fetchrow(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoint WHERE tenant_id = $1 "
        "ORDER BY size DESC LIMIT 1",
        tenant_id,
    )
    return None if row is None else _checkpoint(row)


async def checkpoint_at(
    conn: asyncpg.Connection, tenant_id: UUID, size: int
) -> StoredCheckpoint | None:
    row = await conn.fetchrow(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoint WHERE tenant_id = $1 AND size = $2",
        tenant_id,
        size,
    )
    return None if row is None else _checkpoint(row)


async def checkpoints_after(
    conn: asyncpg.Connection, tenant_id: UUID, after: int, limit: int
) -> list[StoredCheckpoint]:
    rows = await conn.fetch(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoint WHERE tenant_id = $1 AND size > $2 "
        "ORDER BY size LIMIT $3",
        tenant_id,
        after,
        limit,
    )
    return [_checkpoint(row) for row in rows]


@dataclass(frozen=True, slots=True)
class LedgerKey:
    verifier: Verifier
    valid_from: datetime
    valid_until: datetime | None
    activated_seq: int
    retired_seq: int | None


async def ledger_keys(conn: asyncpg.Connection, tenant_id: UUID) -> list[LedgerKey]:
    """Every notary key that ever signed this tenant's checkpoints, oldest first."""
    rows = await conn.fetch(
        "SELECT name, public_key, valid_from, valid_until, activated_seq, retired_seq "
        "FROM ledger_key WHERE tenant_id = $1 ORDER BY activated_seq, name",
        tenant_id,
    )
    return [
        LedgerKey(
            Verifier(row["name"], NOTE_KEY_TYPE, row["public_key"]),
            row["valid_from"],
            row["valid_until"],
            row["activated_seq"],
            row["retired_seq"],
        )
        for row in rows
    ]
