"""Canonical event bytes: RFC 8785 (JCS) JSON over a restricted value domain.

The domain is strings, integers with magnitude below 2**53, booleans, null,
arrays and objects whose keys are ASCII strings. Floats are refused outright
(their JCS form depends on ECMAScript number formatting, an easy place for two
implementations to disagree). Within that domain JCS is exactly "sorted keys,
no whitespace, minimal escapes, UTF-8", which orjson produces; a property test
checks the output against the reference ``rfc8785`` package byte for byte.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_SAFE_INTEGER = 2**53 - 1
MAX_LEAF_BYTES = 256 * 1024


class CanonicalEncodingError(ValueError):
    """A value cannot be put into a leaf; the message names where it is."""


def check_value(value: Any, path: str = "$") -> None:
    """Raise :class:`CanonicalEncodingError` unless ``value`` is in the leaf domain."""
    if value is None or value is True or value is False:
        return
    if type(value) is str:
        _check_text(value, path)
        return
    if type(value) is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return
        raise CanonicalEncodingError(f"{path}: integer outside ±(2**53-1)")
    if type(value) is float:
        raise CanonicalEncodingError(f"{path}: floats are not allowed in events; use a string")
    if type(value) is list:
        for i, item in enumerate(value):
            check_value(item, f"{path}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise CanonicalEncodingError(f"{path}: object keys must be strings")
            if not key.isascii():
                raise CanonicalEncodingError(f"{path}: an object key is not ASCII")
            check_value(item, f"{path}.{key}")
        return
    raise CanonicalEncodingError(f"{path}: {type(value).__name__} is not a JSON value")


def _check_text(text: str, path: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalEncodingError(f"{path}: string holds a lone surrogate") from None


def _in_domain(value: Any) -> bool:
    """Whether ``value`` is in the leaf domain: :func:`check_value` without the paths.

    Appends check every event's data, so this is the fast answer (no path strings
    built for values that pass); :func:`check_value` runs only to name a failure.
    """
    kind = type(value)
    if kind is str:
        return value.isascii() or _is_utf8(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            if type(item) is str:
                if not item.isascii() and not _is_utf8(item):
                    return False
            elif not _in_domain(item):
                return False
        return True
    if kind is list:
        return all(_in_domain(item) for item in value)
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    return value is None or value is True or value is False


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode(value: Any) -> bytes:
    """The canonical bytes of ``value`` (checked first)."""
    if not _in_domain(value):
        check_value(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as e:  # e.g. a lone surrogate in a string
        raise CanonicalEncodingError(f"$: {e}") from None


def decode(data: bytes) -> Any:
    """Parse leaf bytes (any JSON; use :func:`encode` to check they are canonical)."""
    return orjson.loads(data)
