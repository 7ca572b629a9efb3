"""The investigation audit event: what an operator ran, checked before it is recorded."""

from __future__ import annotations

import pytest

from domain.investigation import (
    COMMANDS,
    InvalidInvestigationError,
    Investigation,
    check_operator,
)
from domain.recorded import event_classes


def test_an_investigation_records_the_command_its_filters_and_the_count() -> None:
    investigation = Investigation.perform(
        command="events list",
        filters={"actor": "api_key:k-1", "type": ["member.invited"], "limit": 50},
        returned=3,
        os_user="alice",
        host="bastion-1",
    )
    (performed,) = investigation.collect_events()
    assert isinstance(performed, Investigation.Performed)
    assert performed.command == "events list"
    assert performed.filters == {"actor": "api_key:k-1", "type": ["member.invited"], "limit": 50}
    assert performed.returned == 3
    assert (performed.os_user, performed.host) == ("alice", "bastion-1")
    assert investigation.stream == f"investigation-{investigation.id}"


def test_the_event_type_is_investigation_performed() -> None:
    assert set(event_classes(Investigation)) == {"investigation.performed"}


def test_a_live_follow_records_no_count() -> None:
    investigation = Investigation.perform(
        command="events tail", filters={"after": 10, "follow": True}, returned=None
    )
    assert investigation.returned is None


@pytest.mark.parametrize(
    ("command", "filters", "returned", "message"),
    [
        ("events delete", {}, 0, "unknown investigation command"),
        ("events list", {}, -1, "returned is a count"),
        ("events list", {f"f{i}": i for i in range(21)}, 0, "at most 20 filters"),
        ("events list", {"stream": "x" * 257}, 0, "at most 256 characters"),
        ("events list", {"type": ["ok", "y" * 257]}, 0, "at most 256 characters"),
        ("events list", {"nested": {"a": 1}}, 0, "text, a number or a flag"),
    ],
)
def test_bad_investigations_are_refused(
    command: str, filters: dict[str, object], returned: int, message: str
) -> None:
    with pytest.raises(InvalidInvestigationError, match=message):
        Investigation.perform(command=command, filters=filters, returned=returned)


def test_every_audited_command_is_known() -> None:
    assert {
        "events list",
        "events show",
        "events tail",
        "state",
        "timeline",
        "verify",
        "export evidence",
        "replay dry-run",
    } == COMMANDS


@pytest.mark.parametrize("operator", ["", "   ", "x" * 201, "tab\there", "nl\nhere"])
def test_an_operator_is_1_to_200_printable_characters(operator: str) -> None:
    with pytest.raises(InvalidInvestigationError):
        check_operator(operator)


def test_an_operator_is_trimmed() -> None:
    assert check_operator("  alice@corp  ") == "alice@corp"
