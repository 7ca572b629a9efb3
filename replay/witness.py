"""``strongroom witness``: run a tlog witness that cosigns a log's checkpoints.

``keygen`` writes a cosigner key (type 0x04) and prints its public vkey, which
the log's operator adds to ``STRONGROOM_WITNESSES``. ``serve`` answers
c2sp.org/tlog-witness ``POST /add-checkpoint`` for the logs named with
``--log``. The private key stays in its file and in this process's memory.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import click
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException

from infra.embedded import ensure_port_free
from infra.notes import COSIGNATURE_KEY_TYPE, NoteError, Signer
from infra.witness import (
    MAX_REQUEST_BYTES,
    TrustedLog,
    Witness,
    WitnessState,
    parse_trusted_log,
    problem,
    trusted_logs,
)
from replay.common import CommandFailed, err, friendly_errors, load_settings, out, print_json


def create_witness_app(witness: Witness) -> Litestar:
    @post("/add-checkpoint", operation_id="addCheckpoint", status_code=200)
    async def add_checkpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
        reply = await witness.add_checkpoint(await request.body())
        # Set as a header so litestar adds no charset: clients compare
        # text/x.tlog.size exactly.
        return Response(
            reply.body, status_code=reply.status, headers={"content-type": reply.content_type}
        )

    @get("/health/live", operation_id="getWitnessLiveness")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    def http_problem(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
        reply = problem(exc.status_code, str(exc.detail))
        return Response(
            reply.body, status_code=reply.status, headers={"content-type": reply.content_type}
        )

    return Litestar(
        [add_checkpoint, live],
        openapi_config=None,
        request_max_body_size=MAX_REQUEST_BYTES,
        exception_handlers={HTTPException: http_problem},
    )


@click.group("witness")
def witness_group() -> None:
    """Cosign checkpoints of logs you watch (c2sp.org/tlog-witness)."""


@witness_group.command()
@click.option("--name", required=True, help="The witness name, e.g. witness.example.com/w1")
@click.option("--out", "out_file", required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@friendly_errors
def keygen(name: str, out_file: Path, as_json: bool) -> None:
    """Write a new cosigner private key to --out (mode 0600) and print its public vkey."""
    try:
        signer = Signer.generate(name, COSIGNATURE_KEY_TYPE)
    except NoteError as e:
        raise CommandFailed(f"--name: {e}") from None
    try:
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CommandFailed(f"{out_file} exists; not overwriting a key") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(signer.skey + "\n")
    vkey = signer.verifier.vkey
    if as_json:
        print_json(
            {
                "name": name,
                "key_id": signer.verifier.key_id.hex(),
                "vkey": vkey,
                "key_file": str(out_file),
            }
        )
    else:
        err.print(f"wrote the private key to {out_file}; its public key (vkey):", highlight=False)
        click.echo(vkey)


def _load_signer(path: Path) -> Signer:
    try:
        text = path.read_text()
    except OSError as e:
        raise CommandFailed(f"--key-file {path}: {e.strerror or 'cannot read it'}") from None
    try:
        signer = Signer.parse(text)
    except NoteError as e:
        raise CommandFailed(f"--key-file {path}: {e}") from None
    if signer.key_type != COSIGNATURE_KEY_TYPE:
        raise CommandFailed(f"--key-file {path}: not a cosigner key (type 0x04)")
    return signer


def _load_logs(values: tuple[str, ...]) -> list[TrustedLog]:
    pairs = []
    for value in values:
        try:
            pairs.append(parse_trusted_log(value))
        except ValueError as e:
            raise CommandFailed(f"--log: {e}") from None
    return trusted_logs(pairs)


@witness_group.command()
@click.option(
    "--key-file",
    "key_files",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="A cosigner private key from `witness keygen`; repeat to cosign with two keys.",
)
@click.option("--state", required=True, type=click.Path(path_type=Path), help="sqlite file")
@click.option(
    "--log",
    "logs",
    required=True,
    multiple=True,
    metavar="ORIGIN_OR_PREFIX=VKEY",
    help="A log to witness: its origin (or a prefix ending in /) and its note key. Repeatable.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8710, show_default=True, type=int)
@friendly_errors
def serve(
    key_files: tuple[Path, ...], state: Path, logs: tuple[str, ...], host: str, port: int
) -> None:
    """Answer POST /add-checkpoint with cosignatures for the logs given with --log."""
    settings = load_settings()
    signers = [_load_signer(path) for path in key_files]
    trusted = _load_logs(logs)
    try:
        witness_state = WitnessState.open(state)
    except sqlite3.Error as e:
        raise CommandFailed(f"--state {state}: {e}") from None
    witness = Witness(signers, trusted, witness_state)
    ensure_port_free(host, port)
    config = uvicorn.Config(
        create_witness_app(witness),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
    names = ", ".join(s.verifier.vkey for s in signers)
    out.print(f"witness {names} is up: http://{host}:{port}  (Ctrl-C stops it)", highlight=False)
    uvicorn.Server(config).run()
