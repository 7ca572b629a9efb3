"""A real `strongroom witness serve` process, asked for cosignatures over HTTP.

The log side is ``WitnessClient``, as the notary uses it; every cosignature it
returns is checked again with ``infra.notes.verified_cosigners``. Each test
uses a fresh tenant origin under the one prefix the witness trusts.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import asyncpg
import httpx
import pytest

from infra.db import tenant_transaction
from infra.embedded import free_port
from infra.eventstore import Actor, EventStore, NewEvent
from infra.keyring import Keyring
from infra.ledger import latest_checkpoint
from infra.notary import CheckpointDirectory, Notary
from infra.notes import (
    COSIGNATURE_KEY_TYPE,
    NOTE_KEY_TYPE,
    Signer,
    Verifier,
    parse_note,
    verified_cosigners,
)
from infra.witness import (
    SIZE_CONTENT_TYPE,
    WitnessClient,
    WitnessEndpoint,
    WitnessState,
)
from tests.unit.test_witness import HOST, SignedLog

STRONGROOM = str(Path(sys.executable).parent / "strongroom")
WITNESS_NAME = "witness.test/w1"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STRONGROOM, *args], capture_output=True, text=True, timeout=60, env=_env(), check=False
    )


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}


@dataclass(frozen=True)
class RunningWitness:
    url: str
    verifier: Verifier
    log_key: Signer
    state: Path
    key_file: Path

    def endpoint(self) -> WitnessEndpoint:
        return WitnessEndpoint(self.verifier, self.url)

    def new_log(self, tag: str = "") -> SignedLog:
        return SignedLog(f"{HOST}/t/{uuid4()}", self.log_key, tag)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWitness]:
    folder = tmp_path_factory.mktemp("witness")
    key_file = folder / "witness.key"
    made = run("witness", "keygen", "--name", WITNESS_NAME, "--out", str(key_file), "--json")
    assert made.returncode == 0, made.stderr
    verifier = Verifier.parse(json.loads(made.stdout)["vkey"])
    log_key = Signer.generate(HOST, NOTE_KEY_TYPE)
    port = free_port()
    state = folder / "witness.sqlite"
    output = (folder / "serve.log").open("w")
    command = [STRONGROOM, "witness", "serve", "--key-file", str(key_file), "--state", str(state)]
    command += ["--log", f"{HOST}/t/={log_key.verifier.vkey}", "--port", str(port)]
    proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=_env())
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_live(proc, url, folder / "serve.log")
        yield RunningWitness(url, verifier, log_key, state, key_file)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        output.close()
    log_text = (folder / "serve.log").read_text()
    assert Signer.parse(key_file.read_text()).skey.split("+", 4)[-1] not in log_text


def _wait_until_live(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"witness serve exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health/live", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"witness serve did not come up: {log.read_text()}")


class Prover:
    """The log's proof source: records which old sizes it was asked for."""

    def __init__(self, log: SignedLog, new_size: int) -> None:
        self.log = log
        self.new_size = new_size
        self.asked: list[int] = []

    async def __call__(self, old_size: int) -> list[bytes]:
        self.asked.append(old_size)
        return self.log.proof(old_size, self.new_size)


async def post(served: RunningWitness, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(f"{served.url}/add-checkpoint", content=body)


# --- Cosignatures through WitnessClient ----------------------------------------------------


async def test_the_client_gets_cosignatures_that_verify(served: RunningWitness) -> None:
    log = served.new_log()
    note = log.checkpoint(5)
    async with WitnessClient(served.endpoint()) as client:
        first = await client.request_cosignatures(note, 0, Prover(log, 5))
        grown = log.checkpoint(13)
        prover = Prover(log, 13)
        second = await client.request_cosignatures(grown, 5, prover)

    assert [s.name for s in first] == [WITNESS_NAME]
    assert WITNESS_NAME in verified_cosigners(note.with_signatures(first), [served.verifier])
    assert WITNESS_NAME in verified_cosigners(grown.with_signatures(second), [served.verifier])
    assert prover.asked == [5]
    head = WitnessState(served.state).head(log.origin)
    assert head is not None and head.size == 13


async def test_the_client_retries_once_with_a_proof_from_the_witness_size(
    served: RunningWitness,
) -> None:
    log = served.new_log()
    async with WitnessClient(served.endpoint()) as client:
        await client.request_cosignatures(log.checkpoint(6), 0, Prover(log, 6))
        note = log.checkpoint(20)
        prover = Prover(log, 20)
        cosignatures = await client.request_cosignatures(note, 0, prover)

    assert prover.asked == [6]
    assert WITNESS_NAME in verified_cosigners(note.with_signatures(cosignatures), [served.verifier])


async def test_the_client_retries_only_once(served: RunningWitness) -> None:
    """Another writer moves the witness on while we fetch the proof: we give up, not loop."""
    log = served.new_log()
    await post(served, log.submission(0, 4))
    prover = Prover(log, 30)

    async def racing_prove(old_size: int) -> list[bytes]:
        other = await post(served, log.submission(old_size, old_size + 2))
        assert other.status_code == 200
        return await prover(old_size)

    async with WitnessClient(served.endpoint()) as client:
        cosignatures = await client.request_cosignatures(log.checkpoint(30), 0, racing_prove)

    assert cosignatures == []
    assert prover.asked == [4]


async def test_the_client_gets_nothing_for_a_bad_proof(served: RunningWitness) -> None:
    log = served.new_log()
    await post(served, log.submission(0, 4))

    async def wrong_proof(old_size: int) -> list[bytes]:
        return log.proof(old_size, 9)

    async with WitnessClient(served.endpoint()) as client:
        cosignatures = await client.request_cosignatures(log.checkpoint(10), 4, wrong_proof)

    assert cosignatures == []
    head = WitnessState(served.state).head(log.origin)
    assert head is not None and head.size == 4


async def test_the_client_keeps_only_cosignatures_from_the_key_it_trusts(
    served: RunningWitness,
) -> None:
    log = served.new_log()
    impostor = Signer.generate(WITNESS_NAME, COSIGNATURE_KEY_TYPE).verifier

    async with WitnessClient(WitnessEndpoint(impostor, served.url)) as client:
        cosignatures = await client.request_cosignatures(log.checkpoint(3), 0, Prover(log, 3))

    assert cosignatures == []


async def test_the_client_gets_nothing_from_a_witness_that_is_down(
    served: RunningWitness, caplog: pytest.LogCaptureFixture
) -> None:
    log = served.new_log()
    nobody = WitnessEndpoint(served.verifier, f"http://user:hunter2@127.0.0.1:{free_port()}")

    async with WitnessClient(nobody, timeout=2) as client:
        assert await client.request_cosignatures(log.checkpoint(3), 0, Prover(log, 3)) == []

    [warning] = [r for r in caplog.records if r.name == "infra.witness"]
    assert warning.levelname == "WARNING"
    assert WITNESS_NAME in warning.getMessage()
    assert "hunter2" not in warning.getMessage()


# --- Refusals over HTTP ----------------------------------------------------------------------


async def test_a_stale_old_size_is_answered_as_text_x_tlog_size(served: RunningWitness) -> None:
    log = served.new_log()
    await post(served, log.submission(0, 8))

    response = await post(served, log.submission(2, 9))

    assert response.status_code == 409
    assert response.headers["content-type"] == SIZE_CONTENT_TYPE
    assert response.text == "8\n"


async def test_a_fork_is_refused_over_http_and_kept_as_evidence(served: RunningWitness) -> None:
    log = served.new_log()
    await post(served, log.submission(0, 8))
    fork = SignedLog(log.origin, served.log_key, tag="fork")

    response = await post(served, fork.submission(8, 8))
    prover = Prover(fork, 8)
    async with WitnessClient(served.endpoint()) as client:
        cosignatures = await client.request_cosignatures(fork.checkpoint(8), 8, prover)

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert cosignatures == [] and prover.asked == []
    records = WitnessState(served.state).refusals(log.origin)
    assert [(r.size, r.reason) for r in records] == [(8, "fork"), (8, "fork")]
    assert records[0].note == fork.checkpoint(8).text()


async def test_the_witness_answers_problems_for_bad_requests(served: RunningWitness) -> None:
    log = served.new_log()
    unsigned = SignedLog(log.origin, Signer.generate(HOST, NOTE_KEY_TYPE))
    stranger = SignedLog("elsewhere.example/log", served.log_key)

    statuses = [
        (await post(served, b"old 0\n")).status_code,
        (await post(served, stranger.submission(0, 2))).status_code,
        (await post(served, unsigned.submission(0, 2))).status_code,
        (await post(served, b"old 0\n\n" + b"x" * 200_000)).status_code,
    ]
    async with httpx.AsyncClient() as http:
        wrong_method = await http.get(f"{served.url}/add-checkpoint")

    assert statuses == [400, 404, 403, 413]
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"] == "application/problem+json"


async def test_a_witness_for_one_tenant_does_not_witness_another(
    served: RunningWitness, tmp_path: Path
) -> None:
    """A tenant's own witness, trusting its exact origin only, refuses its neighbour's log."""
    mine, neighbour = served.new_log(), served.new_log()
    port = free_port()
    command = [STRONGROOM, "witness", "serve", "--key-file", str(served.key_file)]
    command += ["--state", str(tmp_path / "own.sqlite"), "--port", str(port)]
    command += ["--log", f"{mine.origin}={served.log_key.verifier.vkey}"]
    log_file = tmp_path / "own.log"
    with log_file.open("w") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=_env())
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_live(proc, url, log_file)
            own = RunningWitness(url, served.verifier, served.log_key, tmp_path, served.key_file)
            mine_reply = await post(own, mine.submission(0, 3))
            neighbour_reply = await post(own, neighbour.submission(0, 3))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    assert (mine_reply.status_code, neighbour_reply.status_code) == (200, 404)


# --- The CLI ---------------------------------------------------------------------------------


def test_keygen_writes_a_private_cosigner_key_and_prints_its_vkey(tmp_path: Path) -> None:
    key_file = tmp_path / "w.key"

    made = run("witness", "keygen", "--name", "witness.example.com/w9", "--out", str(key_file))

    assert made.returncode == 0, made.stderr
    vkey = made.stdout.strip()
    verifier = Verifier.parse(vkey)
    assert (verifier.name, verifier.key_type) == ("witness.example.com/w9", COSIGNATURE_KEY_TYPE)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    signer = Signer.parse(key_file.read_text())
    assert signer.verifier == verifier
    assert signer.skey not in made.stdout + made.stderr


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    key_file = tmp_path / "w.key"
    run("witness", "keygen", "--name", "w1", "--out", str(key_file))
    before = key_file.read_text()

    again = run("witness", "keygen", "--name", "w1", "--out", str(key_file), "--json")

    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [f"error: {key_file} exists; not overwriting a key"]
    assert key_file.read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keygen", "--name", "has space", "--out", "{dir}/k"], "--name"),
        (
            ["serve", "--key-file", "{dir}/missing", "--state", "{dir}/s", "--log", "a=b"],
            "--key-file",
        ),
        (
            ["serve", "--key-file", "{dir}/log.key", "--state", "{dir}/s", "--log", "a=b"],
            "type 0x04",
        ),
        (["serve", "--key-file", "{dir}/w.key", "--state", "{dir}/s", "--log", "a"], "--log"),
        (
            ["serve", "--key-file", "{dir}/w.key", "--state", "{dir}/no/s", "--log", "{log}"],
            "--state",
        ),
    ],
)
def test_witness_commands_fail_with_one_clear_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    log_key = Signer.generate("log", NOTE_KEY_TYPE)
    (tmp_path / "log.key").write_text(log_key.skey)
    run("witness", "keygen", "--name", "w1", "--out", str(tmp_path / "w.key"))
    filled = [a.format(dir=tmp_path, log=f"o={log_key.verifier.vkey}") for a in args]

    failed = run("witness", *filled)

    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in failed.stderr
    assert log_key.skey not in failed.stderr


# ---- the notary and the witness together -------------------------------------------------


async def test_the_notary_attaches_the_witness_cosignature_to_each_checkpoint(
    served: RunningWitness, pool: asyncpg.Pool, keyring: Keyring, tmp_path: Path
) -> None:
    """The real path: the notary signs, asks the running witness (old size 0 the first
    time, then the previous checkpoint's size with a proof from the stored nodes), and
    stores the note with the cosignature; the witness's memory follows the log."""
    store = EventStore(pool, keyring, log_host=HOST)
    tenant = uuid4()
    client = WitnessClient(served.endpoint())
    notary = Notary(
        pool,
        store,
        [served.log_key],
        directory=CheckpointDirectory(tmp_path / "checkpoints"),
        witnesses=[client.request_cosignatures],
    )
    sizes = []
    for count in (3, 14):
        for i in range(count):
            await store.append(
                tenant,
                [NewEvent(stream="thing-1", type="thing.noted", data={"n": i})],
                expected={"thing-1": None},
                command_id=uuid4(),
                actor=Actor("system", "witness-test"),
            )
        outcome = await notary.sign_tenant(tenant)
        assert outcome.cosigned_by == (WITNESS_NAME,), outcome
        assert outcome.size is not None
        sizes.append(outcome.size)
        async with tenant_transaction(pool, tenant, readonly=True) as conn:
            stored = await latest_checkpoint(conn, tenant)
        assert stored is not None and stored.size == outcome.size
        assert WITNESS_NAME in verified_cosigners(parse_note(stored.note), [served.verifier])
    assert sizes[1] > sizes[0] > 0
