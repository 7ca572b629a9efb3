"""An investigation: an operator read a tenant's log from the command line.

Every investigation command (``strongroom events``, ``state``, ``timeline``,
``verify``, ``export evidence``, ``replay dry-run``) records one before it shows
anything, in the tenant's own log, where the tenant sees it like any other event:
who ran it, which command, with which filters, and how many events it returned.
The operator is the event's actor (kind ``operator``); the filters are ids, types,
positions and times, never personal data.
"""

from __future__ import annotations

from typing import Any, ClassVar

from domain.errors import InvalidError
from domain.recorded import RecordedAggregate

COMMANDS = frozenset(
    {
        "events list",
        "events show",
        "events tail",
        "state",
        "timeline",
        "verify",
        "export evidence",
        "replay dry-run",
    }
)
MAX_FILTERS = 20
MAX_FILTER_TEXT = 256


class InvalidInvestigationError(InvalidError):
    pass


def check_operator(operator: str) -> str:
    """The operator's identity as the actor id: 1 to 200 printable characters."""
    operator = operator.strip()
    if not 1 <= len(operator) <= 200 or not operator.isprintable():
        raise InvalidInvestigationError("the operator is 1 to 200 printable characters")
    return operator


def _check_filters(filters: dict[str, Any]) -> dict[str, Any]:
    if len(filters) > MAX_FILTERS:
        raise InvalidInvestigationError(f"at most {MAX_FILTERS} filters")
    for name, value in filters.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and not isinstance(v, str | int | bool):
                raise InvalidInvestigationError(f"filter {name}: text, a number or a flag")
            if isinstance(v, str) and len(v) > MAX_FILTER_TEXT:
                raise InvalidInvestigationError(
                    f"filter {name}: at most {MAX_FILTER_TEXT} characters"
                )
    return dict(filters)


class Investigation(RecordedAggregate):
    category: ClassVar[str] = "investigation"

    class Performed(RecordedAggregate.Created):
        command: str
        filters: dict[str, Any]
        returned: int | None
        """How many events the command showed or exported (None: a live follow)."""
        os_user: str | None
        host: str | None

    @classmethod
    def perform(
        cls,
        *,
        command: str,
        filters: dict[str, Any],
        returned: int | None,
        os_user: str | None = None,
        host: str | None = None,
    ) -> Investigation:
        if command not in COMMANDS:
            raise InvalidInvestigationError(f"unknown investigation command {command!r}")
        if returned is not None and returned < 0:
            raise InvalidInvestigationError("returned is a count")
        return cls._create(
            cls.Performed,
            command=command,
            filters=_check_filters(filters),
            returned=returned,
            os_user=os_user,
            host=host,
        )

    def __init__(
        self,
        command: str,
        filters: dict[str, Any],
        returned: int | None,
        os_user: str | None,
        host: str | None,
    ) -> None:
        self.command = command
        self.filters = filters
        self.returned = returned
        self.os_user = os_user
        self.host = host
