"""The leaves the store builds are RFC 8785 canonical, whatever the actor, log or data.

The store assembles each leaf from pre-encoded pieces instead of encoding a dict (see
``EventStore._build_leaves``); these tests hold it to the reference encoder. No I/O:
planning is pure.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.eventstore import Actor, EventStore, NewEvent, _HeadCache, format_ts
from infra.keyring import Keyring, SubjectKey

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)
streams = st.from_regex(r"\A[a-z][a-z0-9_]{0,8}-[A-Za-z0-9][A-Za-z0-9._:-]{0,12}\Z")
types = st.from_regex(r"\A[a-z][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,8}){1,3}\Z")
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet=st.characters(max_codepoint=0x7F)), children, max_size=3)
    ),
    max_leaves=10,
)
events = st.builds(
    NewEvent,
    stream=streams,
    type=types,
    data=st.dictionaries(st.text(alphabet=st.characters(max_codepoint=0x7F)), values),
    personal=st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9_]{0,8}\Z"), texts, max_size=2),
    subject=st.just("subject-1"),
)


def plan_leaves(
    actor: Actor, log_host: str, batch: list[NewEvent], causation: UUID | None
) -> list[bytes]:
    store = EventStore(None, Keyring(secrets.token_bytes(32)), log_host=log_host)  # type: ignore[arg-type]
    pending = store._prepare(
        batch, {e.stream: None for e in batch}, uuid4(), actor, None, causation
    )
    tenant = uuid4()
    head = _HeadCache(origin=f"{log_host}/t/{tenant}", size=5)
    keys = {"subject-1": SubjectKey("subject-1", secrets.token_bytes(32))}
    plan = store._plan(tenant, head, [pending], [0], keys)
    assert not plan.final_rejections
    return plan.leaves


@settings(max_examples=150)
@given(
    actor_id=texts.filter(lambda t: len(t) <= 200),
    kind=st.sampled_from(["user", "api_key", "system", "operator", "platform"]),
    log_host=texts.filter(lambda t: len(t) <= 40),
    batch=st.lists(events, min_size=1, max_size=4),
    causation=st.none() | st.uuids(),
)
async def test_every_leaf_is_its_own_rfc8785_encoding(
    actor_id: str, kind: str, log_host: str, batch: list[NewEvent], causation: UUID | None
) -> None:
    for leaf in plan_leaves(Actor(kind, actor_id), log_host, batch, causation):
        parsed: dict[str, Any] = json.loads(leaf)
        assert rfc8785.dumps(parsed) == leaf
        assert parsed["actor"] == {"kind": kind, "id": actor_id}
        assert parsed["log"].startswith(log_host + "/t/")
        assert parsed["causation"] == (str(causation) if causation else None)


@settings(max_examples=300)
@given(
    moment=st.datetimes(
        min_value=datetime(1000, 1, 1),
        max_value=datetime(9999, 12, 30),
        timezones=st.timezones() | st.just(UTC),
    )
)
def test_timestamps_are_written_as_strftime_would(moment: datetime) -> None:
    """format_ts (the leaf's ``ts``) formats with isoformat, for speed; same text."""
    assert format_ts(moment) == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
