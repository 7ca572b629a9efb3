"""A helper process of a rebuild (see ``infra.readmodels.rebuild``); never run by hand.

Its parent writes the setup (pickled, base64, one line) and then one line per tenant to
build, "<tenant> <size>", on its standard input, and closes it when there is no more
work. It builds up to the setup's concurrency of tenants at a time into the copy named
in the setup, with a pool of its own, and answers on its standard output: "ready" once
connected, "p <events built so far>" after each page, "d <tenant> <0|1>" once a tenant
is done (1: the projection failed on one of its events, and it is parked in the copy).
On any other failure it prints the error on its standard error and exits with 1.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from uuid import UUID

from infra.collector import tune_collector
from infra.db import create_pool
from infra.eventstore import EventStore
from infra.keyring import Keyring
from infra.projector import Applier, describe
from infra.readmodels import _build_tenant, _Built, _HelperSetup, _pooled

Say = Callable[[str], None]


def _answers() -> Say:
    """The answers to the parent, on a descriptor of their own: standard output now
    points at standard error, so a print() anywhere in this process cannot break them."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def say(line: str) -> None:
        answers.write(line + "\n")
        answers.flush()

    return say


async def _serve(say: Say) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # The pipe is our parent's alone: what it pickled is what the rebuild runs anyway.
    setup = pickle.loads(base64.b64decode(await reader.readline()))  # noqa: S301
    if not isinstance(setup, _HelperSetup):
        raise TypeError("the first line is not a rebuild helper's setup")
    pool = await create_pool(setup.spec.app_url, min_size=1, max_size=setup.concurrency)
    try:
        keyring = Keyring(setup.spec.master_key)
        store = EventStore(pool, keyring, log_host=setup.spec.log_host)
        applier = Applier(store, setup.projection, schema=setup.schema)
        built = _Built(0, lambda done, _total: say(f"p {done}"))

        async def build(tenant_id: UUID, size: int) -> None:
            parked: set[UUID] = set()
            transactions = _pooled(pool, tenant_id)
            await _build_tenant(transactions, applier, tenant_id, size, built, parked)
            say(f"d {tenant_id} {int(tenant_id in parked)}")

        say("ready")
        async with asyncio.TaskGroup() as tasks:
            while line := await reader.readline():
                tenant, size = line.decode().split()
                tasks.create_task(build(UUID(tenant), int(size)))
    finally:
        await pool.close()


def _innermost(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _reported(error: BaseException) -> str:
    """What the parent shows: our own errors' messages (they name tenants and keys, never
    data); for any other, its class and where, since a driver's message can quote a
    value (a unique violation quotes the key, an e-mail address perhaps)."""
    if type(error).__module__.split(".")[0] in ("infra", "domain"):
        return f"{type(error).__name__}: {error}"
    return describe(error)


def main() -> None:
    say = _answers()
    tune_collector()
    try:
        asyncio.run(_serve(say))
    except BaseException as e:
        traceback.print_exc()
        # The last line is what the parent reports.
        print(_reported(_innermost(e)), file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
