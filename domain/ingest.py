"""Audit events that other systems record in a tenant's log: what one must look like.

An integrating system sends its own audit events (who did what to which resource,
with what outcome, when) as JSON. This module turns a request body into checked
:class:`ExternalAuditEvent` values, or refuses it whole with an error that names the
field, and in a batch the event's index (``events[17].action: ...``), so the caller
can fix its input. It decodes with msgspec (shape and JSON types, in C) and checks
the rest here; it does no I/O and reads no clock (``now`` is passed in).

Values stay inside what a leaf can hold (infra/canonical.py): no floats, integers
within ±(2^53-1), ASCII object keys. Strings refuse NUL, which PostgreSQL text and
jsonb cannot store.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import msgspec

from domain.errors import InvalidError

MAX_BATCH: Final = 1000
MAX_ACTOR: Final = 256
MAX_RESOURCE: Final = 500
MAX_EMAIL: Final = 254
MAX_METADATA_BYTES: Final = 16 * 1024
MAX_METADATA_DEPTH: Final = 8
"""Nesting of objects and arrays in ``metadata``, itself included."""
MAX_SAFE_INTEGER: Final = 2**53 - 1
OUTCOMES: Final = ("success", "failure", "denied", "error", "unknown")
FUTURE_SLACK: Final = timedelta(minutes=5)
"""How far ahead of our clock ``occurred_at`` may be (the other system's clock skew)."""
EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
FLOAT_MESSAGE: Final = "metadata numbers must be integers; send decimals as strings"

_ACTION = re.compile(r"[a-z][a-z0-9_.:-]{0,127}")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_OUTCOMES = frozenset(OUTCOMES)
_SPACE = re.compile(r"\s")
_MISSING = re.compile(r"Object missing required field `(.+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(.+)`")


class IngestError(InvalidError):
    """An audit event (or batch) is refused; the message names the field."""


class MalformedBodyError(IngestError):
    """The body is not JSON at all."""


class AuditEventIn(msgspec.Struct, forbid_unknown_fields=True):
    """One audit event as sent: shapes only; :func:`check_event` checks the values."""

    actor: str
    action: str
    resource: str
    outcome: str
    occurred_at: str
    actor_email: str | None = None
    source_ip: str | None = None
    metadata: dict[str, Any] | None = None


class AuditBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    events: list[AuditEventIn]


_ONE = msgspec.json.Decoder(AuditEventIn)
_BATCH = msgspec.json.Decoder(AuditBatchIn)
_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class ExternalAuditEvent:
    """A checked audit event of another system. ``actor_email`` and ``source_ip`` are
    personal data; ``source_ip`` is normalised (``2001:db8::1``, not ``2001:DB8:0::1``)."""

    actor: str
    action: str
    resource: str
    outcome: str
    occurred_at: datetime
    """In UTC."""
    metadata: dict[str, Any]
    actor_email: str | None = None
    source_ip: str | None = None

    @property
    def occurred_at_text(self) -> str:
        """``%Y-%m-%dT%H:%M:%S.%fZ`` (isoformat: a tenth of strftime's cost)."""
        return self.occurred_at.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

    @property
    def subject_basis(self) -> str:
        """Whose personal data this is: the e-mail address (lower-cased) if given, else
        the other system's actor id. Erasing that person shreds it in every event."""
        return self.actor_email.lower() if self.actor_email is not None else self.actor


def parse_event(body: bytes, *, now: datetime) -> ExternalAuditEvent:
    """One event from a request body (a JSON object)."""
    return check_event(_decode(_ONE, body), now=now)


def parse_batch(body: bytes, *, now: datetime) -> list[ExternalAuditEvent]:
    """A batch from a request body (``{"events": [...]}``, 1 to :data:`MAX_BATCH`)."""
    events = _decode(_BATCH, body).events
    if not 1 <= len(events) <= MAX_BATCH:
        raise IngestError(f"events: a batch holds 1 to {MAX_BATCH} events, not {len(events)}")
    return check_batch(events, now=now)


def check_batch(events: Sequence[AuditEventIn], *, now: datetime) -> list[ExternalAuditEvent]:
    return [check_event(e, now=now, where=f"events[{i}].") for i, e in enumerate(events)]


def check_event(raw: AuditEventIn, *, now: datetime, where: str = "") -> ExternalAuditEvent:
    """The checked event, or :class:`IngestError` naming ``<where><field>``."""
    if not _ACTION.fullmatch(raw.action):
        raise IngestError(f"{where}action: must match {_ACTION.pattern}")
    if raw.outcome not in _OUTCOMES:
        raise IngestError(f"{where}outcome: must be one of {', '.join(OUTCOMES)}")
    return ExternalAuditEvent(
        actor=_text(raw.actor, MAX_ACTOR, where, "actor"),
        action=raw.action,
        resource=_text(raw.resource, MAX_RESOURCE, where, "resource"),
        outcome=raw.outcome,
        occurred_at=_occurred_at(raw.occurred_at, now, where),
        metadata=_metadata(raw.metadata, where),
        actor_email=None if raw.actor_email is None else _email(raw.actor_email, where),
        source_ip=None if raw.source_ip is None else _ip(raw.source_ip, where),
    )


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        raise IngestError(_validation_message(str(e))) from None
    except msgspec.DecodeError:
        raise MalformedBodyError("the body is not valid JSON (UTF-8)") from None


def _validation_message(text: str) -> str:
    """msgspec's "Expected `str`, got `int` - at `$.events[3].actor`" as
    "events[3].actor: expected `str`, got `int`"."""
    message, _, at = text.rpartition(" - at `")
    if not message:
        message, at = text, "$`"
    path = at.rstrip("`").removeprefix("$").removeprefix(".")
    if found := _MISSING.fullmatch(message):
        path, message = _join(path, found.group(1)), "is required"
    elif found := _UNKNOWN.fullmatch(message):
        path, message = _join(path, found.group(1)), "is not a field of an audit event"
    elif message:
        message = message[0].lower() + message[1:]
    return f"{path or 'body'}: {message}"


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _text(value: str, max_length: int, where: str, name: str) -> str:
    if not 1 <= len(value) <= max_length or not value.isprintable():
        raise IngestError(f"{where}{name}: 1 to {max_length} printable characters")
    return value


def _email(value: str, where: str) -> str:
    local, _, domain = value.rpartition("@")
    if (
        not local
        or not domain
        or len(value) > MAX_EMAIL
        or not value.isprintable()
        or _SPACE.search(value)
    ):
        raise IngestError(f"{where}actor_email: not an e-mail address")
    return value


def _ip(value: str, where: str) -> str:
    normalised = _normalised_ip(value)
    if normalised is None:
        raise IngestError(f"{where}source_ip: not an IPv4 or IPv6 address")
    return normalised


@functools.lru_cache(maxsize=4096)
def _normalised_ip(value: str) -> str | None:
    """Cached: a batch's addresses repeat, and parsing one costs microseconds."""
    if len(value) > 64:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _occurred_at(value: str, now: datetime, where: str) -> datetime:
    field = f"{where}occurred_at"
    found = _RFC3339.fullmatch(value)
    if found is None:
        raise IngestError(
            f"{field}: an RFC 3339 date-time with an offset, e.g. 2026-11-24T10:00:00Z"
        )
    year, month, day, hour, minute, second, fraction, zulu, sign, oh, om = found.groups()
    try:
        offset = timedelta(0) if zulu else timedelta(hours=int(oh), minutes=int(om))
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=timezone(-offset if sign == "-" else offset),
        ).astimezone(UTC)
    except (ValueError, OverflowError):
        raise IngestError(f"{field}: not a valid date and time") from None
    if moment < EARLIEST:
        raise IngestError(f"{field}: must not be before 2000-01-01T00:00:00Z")
    if moment > now + FUTURE_SLACK:
        raise IngestError(f"{field}: must not be more than 5 minutes in the future")
    return moment


def _metadata(value: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not _fits(value, 1):
        _check_value(value, f"{where}metadata", 1)  # raises, naming the value
    if len(_ENCODER.encode(value)) > MAX_METADATA_BYTES:
        raise IngestError(f"{where}metadata: over {MAX_METADATA_BYTES} bytes as JSON")
    return dict(value)


def _fits(value: Any, depth: int) -> bool:
    """Whether :func:`_check_value` would accept ``value``, without building the path
    of every value on the way (that is only needed to name a bad one)."""
    kind = type(value)
    if kind is str:
        return "\x00" not in value
    if kind is dict:
        if depth > MAX_METADATA_DEPTH:
            return False
        for key, item in value.items():
            if not key.isascii() or "\x00" in key:
                return False
            if type(item) is str:
                if "\x00" in item:
                    return False
            elif not _fits(item, depth + 1):
                return False
        return True
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    if kind is list:
        return depth <= MAX_METADATA_DEPTH and all(_fits(item, depth + 1) for item in value)
    return value is None or kind is bool


def _check_value(value: Any, path: str, depth: int) -> None:
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise IngestError(f"{path}: strings must not contain NUL (\\u0000)")
    elif kind is int:
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise IngestError(
                f"{path}: integers must be within ±(2^53-1); send big ones as strings"
            )
    elif kind is float:
        raise IngestError(f"{path}: {FLOAT_MESSAGE}")
    elif kind is dict:
        if depth > MAX_METADATA_DEPTH:
            raise IngestError(f"{path}: nested deeper than {MAX_METADATA_DEPTH} levels")
        for key, item in value.items():
            if not key.isascii() or "\x00" in key:
                raise IngestError(f"{path}: object keys must be ASCII without NUL")
            _check_value(item, f"{path}.{key}", depth + 1)
    elif kind is list:
        if depth > MAX_METADATA_DEPTH:
            raise IngestError(f"{path}: nested deeper than {MAX_METADATA_DEPTH} levels")
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]", depth + 1)
    elif value is not None and kind is not bool:
        raise IngestError(f"{path}: {kind.__name__} is not a JSON value")
