"""Online verification of one tenant's log against its own stored bytes.

Everything is recomputed from the leaves: each leaf hash, the hash chain, every
stored Merkle node and the root, and each leaf's own fields against the row's
index columns and the tenant's origin. The head row says how long the log must
be, so a truncated tail is caught too. The report names the first bad ``seq``.

This detects any change that was not also made consistently to every later
hash and the head; that last kind of rewrite is what signed checkpoints and
witnesses catch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from infra import canonical
from infra.db import tenant_transaction
from infra.eventstore import format_ts
from infra.merkle import MIN_STORED_LEVEL, ZERO_HASH, Frontier, Node, chain_hash, leaf_hash

PAGE = 5000


@dataclass(frozen=True, slots=True)
class VerifyReport:
    tenant_id: UUID
    size: int
    """The size the head row claims."""
    checked: int
    ok: bool
    first_bad_seq: int | None = None
    reason: str | None = None
    root: bytes | None = None


class _Bad(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


async def verify_tenant(
    pool: asyncpg.Pool,
    tenant_id: UUID,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Recompute and compare everything; ``progress(checked, size)`` after each page."""
    async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
        head = await conn.fetchrow(
            "SELECT origin, size, chain_hash, frontier FROM tenant_log WHERE tenant_id = $1",
            tenant_id,
        )
    if head is None:
        return VerifyReport(tenant_id, 0, 0, ok=True, root=Frontier().root())
    size: int = head["size"]
    frontier = Frontier()
    chain = ZERO_HASH
    expected_seq = 1
    try:
        while expected_seq <= size:
            async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
                rows = await conn.fetch(
                    "SELECT seq, stream_id, stream_version, event_id, event_type, recorded_at, "
                    "leaf, leaf_hash, chain_hash FROM event_log "
                    "WHERE tenant_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq LIMIT $4",
                    tenant_id,
                    expected_seq,
                    size,
                    PAGE,
                )
                if not rows:
                    raise _Bad(
                        expected_seq,
                        f"the log ends at seq {expected_seq - 1}, the head says {size}",
                    )
                closed: list[tuple[int, Node]] = []
                for row in rows:
                    if row["seq"] != expected_seq:
                        raise _Bad(expected_seq, "event missing")
                    _check_leaf(row, head["origin"])
                    lh = leaf_hash(row["leaf"])
                    if lh != row["leaf_hash"]:
                        raise _Bad(row["seq"], "leaf hash does not match the leaf bytes")
                    chain = chain_hash(chain, lh)
                    if chain != row["chain_hash"]:
                        raise _Bad(row["seq"], "chain hash does not match")
                    closed.extend(
                        (row["seq"], node)
                        for node in frontier.append(lh)
                        if node.level >= MIN_STORED_LEVEL
                    )
                    expected_seq += 1
                await _check_nodes(conn, tenant_id, closed)
            if progress is not None:
                progress(expected_seq - 1, size)
        if chain != head["chain_hash"]:
            raise _Bad(size, "the head's chain hash does not match the log")
        if frontier.to_bytes() != head["frontier"]:
            raise _Bad(size, "the head's Merkle frontier does not match the log")
        async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
            # One statement, one snapshot: an append commits its rows and its head together.
            beyond = await conn.fetchval(
                "SELECT min(e.seq) FROM event_log e JOIN tenant_log h USING (tenant_id) "
                "WHERE e.tenant_id = $1 AND e.seq > h.size",
                tenant_id,
            )
        if beyond is not None:
            raise _Bad(beyond, "a row lies beyond the head: it was not appended by the store")
    except _Bad as bad:
        return VerifyReport(
            tenant_id, size, bad.seq - 1, ok=False, first_bad_seq=bad.seq, reason=bad.reason
        )
    return VerifyReport(tenant_id, size, size, ok=True, root=frontier.root())


class LeafError(ValueError):
    """A leaf is not canonical JSON, or one of its fields is not what it must be."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def check_leaf(leaf: bytes, expected: Mapping[str, object]) -> dict[str, Any]:
    """The parsed leaf, if its bytes are canonical JSON of an object with ``expected`` fields.

    Shared by this online check and the offline one of evidence bundles
    (``infra.evidence``). Values compare with their JSON type, so ``true`` is not ``1``.
    """
    try:
        parsed = orjson.loads(leaf)
        canonical_again = canonical.encode(parsed)
    except (orjson.JSONDecodeError, canonical.CanonicalEncodingError):
        raise LeafError("leaf is not canonical JSON") from None
    if canonical_again != leaf:
        raise LeafError("leaf is not in canonical form")
    if not isinstance(parsed, dict):
        raise LeafError("leaf is not a JSON object")
    for name, value in expected.items():
        found = parsed.get(name)
        if type(found) is not type(value) or found != value:
            raise LeafError(f"leaf field {name!r} is not {value!r}", name)
    return parsed


def _check_leaf(row: asyncpg.Record, origin: str) -> None:
    seq = row["seq"]
    expected = {
        "log": origin,
        "seq": seq,
        "id": str(row["event_id"]),
        "type": row["event_type"],
        "stream": row["stream_id"],
        "version": row["stream_version"],
        "ts": format_ts(row["recorded_at"]),
    }
    try:
        check_leaf(bytes(row["leaf"]), expected)
    except LeafError as e:
        reason = e.reason if e.field is None else f"leaf field {e.field!r} does not match its row"
        raise _Bad(seq, reason) from None


async def _check_nodes(
    conn: asyncpg.Connection, tenant_id: UUID, closed: list[tuple[int, Node]]
) -> None:
    if not closed:
        return
    stored = {
        (r["level"], r["idx"]): r["hash"]
        for r in await conn.fetch(
            "SELECT n.level, n.idx, n.hash FROM merkle_node n "
            "JOIN unnest($2::smallint[], $3::bigint[]) AS w(level, idx) "
            "ON n.level = w.level AND n.idx = w.idx WHERE n.tenant_id = $1",
            tenant_id,
            [node.level for _, node in closed],
            [node.index for _, node in closed],
        )
    }
    for seq, node in closed:
        if stored.get((node.level, node.index)) != node.hash:
            raise _Bad(seq, f"Merkle node level {node.level} index {node.index} does not match")
