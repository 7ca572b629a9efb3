"""What every ``strongroom`` command shares: consoles, error handling, settings."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from domain.errors import StrongroomError
from infra import logcontext
from infra.bootstrap import DatabaseUrls
from infra.db import DatabaseUnavailableError, create_pool
from infra.embedded import EmbeddedServerError, PortInUseError
from infra.local import database_urls
from infra.migrate import MigrationError
from infra.readmodels import ProjectionDefinitionError, RebuildError
from infra.settings import Settings, SettingsError

F = TypeVar("F", bound=Callable[..., Any])

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    StrongroomError,
    SettingsError,
    PortInUseError,
    EmbeddedServerError,
    DatabaseUnavailableError,
    MigrationError,
    ProjectionDefinitionError,
    RebuildError,
    OSError,
)

out = Console()
err = Console(stderr=True)


class CommandFailed(click.ClickException):
    """An expected failure: one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        err.print(f"[red]error:[/red] {self.message}", highlight=False, soft_wrap=True)


class InternalFailure(CommandFailed):
    """A bug or an unforeseen condition: exit code 3, details only with --debug.

    The exception's text is not shown: driver errors can quote row values.
    """

    exit_code = 3


def friendly_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as e:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            raise CommandFailed(str(e) or type(e).__name__) from None
        except (click.ClickException, click.exceptions.Exit, SystemExit, KeyboardInterrupt):
            raise
        except Exception as e:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            raise InternalFailure(
                f"unexpected {type(e).__name__}; run with --debug for details"
            ) from None

    return wrapper  # type: ignore[return-value]


def load_settings(**overrides: Any) -> Settings:
    settings = Settings.from_env(**overrides)
    logcontext.install(settings.log_level)
    return settings


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@contextmanager
def progress_bar(enabled: bool, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr, fed ``(done, total)``; None when not ``enabled``."""
    if not enabled:
        yield None
        return
    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*Progress.get_default_columns()[:1], *columns, console=err) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextmanager
def spinner(enabled: bool, label: str) -> Iterator[None]:
    """A spinner on stderr while work of unknown length runs."""
    if not enabled:
        yield
        return
    with err.status(label):
        yield


def parse_tenant(value: str) -> UUID:
    """``--tenant``: a UUID, or one clear error."""
    try:
        return UUID(value)
    except ValueError:
        raise CommandFailed(f"--tenant: {value!r} is not a UUID") from None


@asynccontextmanager
async def cli_pool(
    settings: Settings, *, max_size: int = 4
) -> AsyncIterator[tuple[asyncpg.Pool, DatabaseUrls]]:
    """A pool of the investigation role (``strongroom_cli``), and the URLs it came from."""
    async with database_urls(settings) as urls:
        if urls.cli is None:
            raise CommandFailed(
                "needs STRONGROOM_CLI_DATABASE_URL: investigations connect as the "
                "strongroom_cli role; set STRONGROOM_CLI_DATABASE_URL to its URL "
                "(docs/operations.md)"
            )
        pool = await create_pool(urls.cli, min_size=1, max_size=max_size)
        try:
            yield pool, urls
        finally:
            await pool.close()
