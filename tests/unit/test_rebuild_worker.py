"""What a rebuild's helper process reports when it fails: never a value a driver quotes."""

from __future__ import annotations

from infra.keyring import TenantKeyError
from infra.rebuild_worker import _innermost, _reported


class UniqueViolation(Exception):
    """Stands for a driver's error whose message quotes the offending key."""


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as e:
        return e


def test_a_foreign_error_is_reported_by_class_and_place_never_by_message() -> None:
    error = raised(UniqueViolation("Key (email)=(ada@example.com) already exists"))
    text = _reported(error)
    assert text.startswith("UniqueViolation at test_rebuild_worker.py:")
    assert "ada@example.com" not in text


def test_our_own_errors_keep_their_message() -> None:
    error = TenantKeyError("tenant 1: key version 1 does not open under the master key")
    assert _reported(error) == f"TenantKeyError: {error}"


def test_the_innermost_of_a_group_is_reported() -> None:
    inner = UniqueViolation("Key (email)=(ada@example.com) already exists")
    group = BaseExceptionGroup("tasks", [ExceptionGroup("inner", [inner])])
    assert _innermost(group) is inner
