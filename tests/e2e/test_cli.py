"""The `strongroom` command line, run as a subprocess against real servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from infra.embedded import free_port
from infra.eventstore import Actor, EventStore, NewEvent
from tests.conftest import Database

STRONGROOM = str(Path(sys.executable).parent / "strongroom")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STRONGROOM, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_clean_env(), **(env or {})},
        check=False,
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}


def processes_using(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(str(path) in a for a in cmdline):
            found.append(proc)
    return found


class Up:
    """A `strongroom up` in the background, stopped with SIGTERM."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.proc = subprocess.Popen(
            [STRONGROOM, "up", "--data-dir", str(data_dir), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_env(),
        )

    def wait_ready(self, timeout: float = 60) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate()
            try:
                response = httpx.get(f"http://127.0.0.1:{self.port}/health/ready", timeout=2)
                if response.status_code == 200:
                    body: dict[str, object] = response.json()
                    return body
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("strongroom up did not become ready")

    def terminate(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGTERM)
        stdout, stderr = self.proc.communicate(timeout=60)
        return self.proc.returncode, stdout, stderr


@pytest.fixture
def up_dir(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "sr"
    yield data_dir
    for proc in processes_using(data_dir):
        proc.kill()


def test_up_serves_health_and_sigterm_leaves_nothing_running(up_dir: Path) -> None:
    port = free_port()
    up = Up(up_dir, port)
    body = up.wait_ready()
    assert body["checks"] == {"postgres": True, "nats": True}
    code, stdout, stderr = up.terminate()
    assert code == 0, stderr
    assert f"http://127.0.0.1:{port}" in stdout
    assert "applied" in stderr and "master key" in stderr
    time.sleep(0.5)
    assert processes_using(up_dir) == []
    assert not (up_dir / "run.json").exists()
    secrets_ = [up_dir / "master.key", up_dir / "postgres" / "roles.json"]
    for path in secrets_:
        assert path.stat().st_mode & 0o077 == 0, path

    # A second `up` reuses the data: no new migrations, no new keys.
    key_before = (up_dir / "master.key").read_bytes()
    up = Up(up_dir, port)
    up.wait_ready()
    code, _, stderr = up.terminate()
    assert code == 0
    assert "applied" not in stderr and "generated a development master key" not in stderr
    assert (up_dir / "master.key").read_bytes() == key_before
    assert processes_using(up_dir) == []


def test_up_on_a_taken_port_says_so_in_one_line(up_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("up", "--data-dir", str(up_dir), "--port", str(port))
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert processes_using(up_dir) == []


def test_a_bad_setting_names_the_variable() -> None:
    result = run("up", env={"STRONGROOM_PORT": "eighty"})
    assert result.returncode == 2
    assert "STRONGROOM_PORT: expected an integer from 1 to 65535" in result.stderr
    assert "Traceback" not in result.stderr


def external(database: Database) -> dict[str, str]:
    return {
        "STRONGROOM_DATABASE_URL": database.app_url,
        "STRONGROOM_OWNER_DATABASE_URL": database.owner_url,
        "STRONGROOM_CLI_DATABASE_URL": database.cli_url,
    }


def test_migrate_reports_an_up_to_date_schema(database: Database) -> None:
    result = run("migrate", "--json", env=external(database))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"applied": []}
    result = run("migrate", env=external(database))
    assert "up to date" in result.stdout


async def append_events(store: EventStore, tenant: uuid.UUID, count: int) -> None:
    for i in range(count):
        await store.append(
            tenant,
            [NewEvent(stream=f"thing-{i % 3}", type="thing.noted", data={"n": i})],
            expected={f"thing-{i % 3}": None},
            command_id=uuid.uuid4(),
            actor=Actor("system", "test"),
        )


async def test_verify_passes_an_intact_log_and_names_the_first_bad_seq(
    database: Database, store: EventStore, superuser: asyncpg.Connection
) -> None:
    tenant = uuid.uuid4()
    await append_events(store, tenant, 12)
    head = await store.head(tenant)

    result = run(
        "verify", "--tenant", str(tenant), "--json", "--operator", "auditor-7",
        env=external(database),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["size"] == 12 and report["checked"] == 12
    assert head is not None and report["root"] == head.root.hex()
    # The verification is itself in the tenant's log, after what it verified.
    audit = await store.read_event(tenant, 13)
    assert report["investigation_seq"] == 13
    assert audit.type == "investigation.performed" and audit.actor.id == "auditor-7"
    assert audit.data["command"] == "verify" and audit.data["returned"] == 12

    human = run("verify", "--tenant", str(tenant), env=external(database))
    assert human.returncode == 0 and "intact" in human.stdout

    async with superuser.transaction():
        await superuser.execute("SET LOCAL session_replication_role = replica")
        await superuser.execute(
            "UPDATE event_log SET leaf = overlay(leaf placing '7' from 20 for 1) "
            "WHERE tenant_id = $1 AND seq = 8",
            tenant,
        )
    result = run("verify", "--tenant", str(tenant), "--json", env=external(database))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["first_bad_seq"] == 8 and report["reason"]
    human = run("verify", "--tenant", str(tenant), env=external(database))
    assert human.returncode == 1 and "FIRST BAD SEQ 8" in human.stdout


def test_verify_refuses_a_malformed_tenant_in_one_line(database: Database) -> None:
    result = run("verify", "--tenant", "not-a-uuid", env=external(database))
    assert result.returncode == 2
    assert "--tenant: 'not-a-uuid' is not a UUID" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_of_a_tenant_without_a_log_is_an_error(database: Database) -> None:
    tenant = uuid.uuid4()
    result = run("verify", "--tenant", str(tenant), env=external(database))
    assert result.returncode == 2
    assert f"tenant {tenant} has no log here" in result.stderr


def test_an_unreachable_database_is_one_line_and_debug_shows_the_traceback() -> None:
    nowhere = f"postgresql://x:y@127.0.0.1:{free_port()}/none"
    env = {"STRONGROOM_DATABASE_URL": nowhere, "STRONGROOM_CLI_DATABASE_URL": nowhere}
    result = run("verify", "--tenant", str(uuid.uuid4()), env=env)
    assert result.returncode == 2
    assert "cannot connect to PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr
    debug = run("--debug", "verify", "--tenant", str(uuid.uuid4()), env=env)
    assert "Traceback" in debug.stderr
