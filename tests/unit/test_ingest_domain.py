"""Checking other systems' audit events (domain/ingest.py): no I/O, a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidError
from domain.ingest import (
    FLOAT_MESSAGE,
    MAX_BATCH,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    IngestError,
    MalformedBodyError,
    _check_value,
    _fits,
    parse_batch,
    parse_event,
)

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "actor": "user:42",
        "action": "invoice.approved",
        "resource": "invoice/2026-0017",
        "outcome": "success",
        "occurred_at": "2026-11-24T09:59:00Z",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def one(**changes: Any) -> Any:
    return parse_event(orjson.dumps(event(**changes)), now=NOW)


def refused(body: Any, *, batch: bool = False) -> str:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(IngestError) as caught:
        (parse_batch if batch else parse_event)(raw, now=NOW)
    assert isinstance(caught.value, InvalidError)
    return str(caught.value)


def test_a_complete_event_is_accepted_with_its_time_in_utc_and_its_ip_normalised() -> None:
    checked = one(
        occurred_at="2026-11-24T11:30:00.123456789+02:00",
        actor_email="Ada@Example.com",
        source_ip="2001:DB8:0:0::1",
        metadata={"amount": "12.50", "lines": [1, 2, {"sku": "x"}], "ok": True, "n": None},
    )
    assert checked.occurred_at == datetime(2026, 11, 24, 9, 30, 0, 123456, tzinfo=UTC)
    assert checked.occurred_at_text == "2026-11-24T09:30:00.123456Z"
    assert checked.source_ip == "2001:db8::1"
    assert checked.actor_email == "Ada@Example.com"
    assert checked.subject_basis == "ada@example.com"
    assert checked.metadata["lines"][2] == {"sku": "x"}


def test_without_an_email_the_data_subject_is_the_actor() -> None:
    assert one().subject_basis == "user:42"
    assert one().metadata == {}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"actor": ""}, "actor: 1 to 256 printable characters"),
        ({"actor": "x" * 257}, "actor: 1 to 256 printable characters"),
        ({"actor": "a\nb"}, "actor: 1 to 256 printable characters"),
        ({"action": "Invoice.Approved"}, "action: must match"),
        ({"action": "a" * 129}, "action: must match"),
        ({"resource": "r" * 501}, "resource: 1 to 500 printable characters"),
        ({"resource": "a\x00b"}, "resource: 1 to 500 printable characters"),
        ({"outcome": "ok"}, "outcome: must be one of success, failure, denied, error, unknown"),
        ({"actor_email": "nobody"}, "actor_email: not an e-mail address"),
        ({"actor_email": "a b@example.com"}, "actor_email: not an e-mail address"),
        ({"source_ip": "10.0.0.256"}, "source_ip: not an IPv4 or IPv6 address"),
        ({"source_ip": "example.com"}, "source_ip: not an IPv4 or IPv6 address"),
        ({"occurred_at": "2026-11-24T09:59:00"}, "occurred_at: an RFC 3339 date-time"),
        ({"occurred_at": "2026-11-24"}, "occurred_at: an RFC 3339 date-time"),
        ({"occurred_at": "2026-02-30T00:00:00Z"}, "occurred_at: not a valid date and time"),
        ({"occurred_at": "2026-11-24T09:59:00+24:00"}, "occurred_at: not a valid date"),
        ({"occurred_at": "1999-12-31T23:59:59Z"}, "occurred_at: must not be before 2000"),
        ({"occurred_at": "2026-11-24T10:05:01Z"}, "occurred_at: must not be more than 5 min"),
        ({"metadata": {"price": 1.5}}, f"metadata.price: {FLOAT_MESSAGE}"),
        ({"metadata": {"a": [0, 2.0]}}, f"metadata.a[1]: {FLOAT_MESSAGE}"),
        ({"metadata": {"big": 2**53}}, "metadata.big: integers must be within"),
        ({"metadata": {"small": -(2**53)}}, "metadata.small: integers must be within"),
        ({"metadata": {"clé": 1}}, "metadata: object keys must be ASCII"),
        ({"metadata": {"s": "a\x00"}}, "metadata.s: strings must not contain NUL"),
        (
            {"metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}},
            "metadata.a.b.c.d.e.f.g.h: nested deeper",
        ),
        ({"metadata": [1]}, "metadata: expected `object | null`, got `array`"),
        ({"action": 7}, "action: expected `str`, got `int`"),
        ({"outcome": ...}, "outcome: is required"),
        ({"extra": 1}, "extra: is not a field of an audit event"),
    ],
)
def test_a_bad_field_is_refused_naming_the_field(changes: dict[str, Any], message: str) -> None:
    assert refused(event(**changes)).startswith(message)


def test_the_boundaries_are_accepted() -> None:
    one(occurred_at="2026-11-24T10:05:00Z")  # exactly 5 minutes ahead
    one(occurred_at="2000-01-01T00:00:00Z")
    one(actor="x" * 256, resource="r" * 500, action="a" + "b" * 127)
    one(metadata={"max": 2**53 - 1, "min": -(2**53 - 1)})
    one(metadata={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}})  # 8 objects deep


def test_metadata_over_16_kib_is_refused_and_just_under_is_accepted() -> None:
    # {"k":"…"} is 8 bytes around the string
    one(metadata={"k": "x" * (MAX_METADATA_BYTES - 8)})
    message = refused(event(metadata={"k": "x" * (MAX_METADATA_BYTES - 7)}))
    assert message == f"metadata: over {MAX_METADATA_BYTES} bytes as JSON"


def test_a_batch_error_names_the_event_by_index() -> None:
    events = [event() for _ in range(20)]
    events[17]["action"] = "Bad Action"
    assert refused({"events": events}, batch=True).startswith("events[17].action: must match")
    events[17] = event(metadata={"x": 0.1})
    assert refused({"events": events}, batch=True) == f"events[17].metadata.x: {FLOAT_MESSAGE}"
    del events[17]["actor"]
    assert refused({"events": events}, batch=True) == "events[17].actor: is required"


def test_a_batch_holds_1_to_1000_events() -> None:
    assert len(parse_batch(orjson.dumps({"events": [event()] * MAX_BATCH}), now=NOW)) == 1000
    too_many = refused({"events": [event()] * (MAX_BATCH + 1)}, batch=True)
    assert too_many == "events: a batch holds 1 to 1000 events, not 1001"
    assert refused({"events": []}, batch=True).startswith("events: a batch holds 1 to 1000")
    assert refused({"items": []}, batch=True) == "items: is not a field of an audit event"
    assert refused({}, batch=True) == "events: is required"


def test_a_body_that_is_not_json_is_malformed_and_a_non_object_is_invalid() -> None:
    with pytest.raises(MalformedBodyError):
        parse_event(b"{not json", now=NOW)
    with pytest.raises(MalformedBodyError):
        parse_event(b'{"actor": "\\ud800"}', now=NOW)  # a lone surrogate
    assert refused([event()]) == "body: expected `object`, got `array`"


def test_error_messages_never_echo_personal_values() -> None:
    secret = "hidden.person@example.com x"
    message = refused(event(actor_email=secret))
    assert "hidden" not in message
    message = refused(event(source_ip="203.0.113.999"))
    assert "203.0.113" not in message


def test_a_near_future_clock_skew_is_measured_against_the_given_now() -> None:
    later = NOW + timedelta(hours=1)
    body = orjson.dumps(event(occurred_at="2026-11-24T11:00:00Z"))
    assert parse_event(body, now=later).occurred_at == later
    with pytest.raises(IngestError):
        parse_event(body, now=NOW)


metadata_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=4),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.text(alphabet=st.characters(codec="utf-8"), max_size=3), children, max_size=3
        )
    ),
    max_leaves=12,
)


@settings(max_examples=400)
@given(value=st.dictionaries(st.text(max_size=3), metadata_values, max_size=3))
def test_the_fast_metadata_check_agrees_with_the_one_that_names_the_value(value: Any) -> None:
    """Metadata is checked without building paths; a failure is named by _check_value."""
    try:
        _check_value(value, "metadata", 1)
        accepted = True
    except IngestError:
        accepted = False
    assert _fits(value, 1) is accepted


def test_metadata_nested_too_deep_is_refused_with_its_path() -> None:
    deep: Any = 1
    for _ in range(MAX_METADATA_DEPTH):
        deep = [deep]
    assert refused(event(metadata={"a": deep})).startswith("metadata.a")


def test_the_time_of_an_event_reads_back_as_strftime_would_write_it() -> None:
    checked = one(occurred_at="2026-11-24T09:30:00+02:00")
    assert checked.occurred_at_text == "2026-11-24T07:30:00.000000Z"
    assert checked.occurred_at_text == checked.occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
