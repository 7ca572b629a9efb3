"""`strongroom worker`, `projections` and `replay rebuild`, as subprocesses on the real stack."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from domain.member import Member
from domain.roles import Role
from infra.eventstore import Actor, EventStore
from infra.repository import EventRegistry, Repository
from tests.conftest import Database
from tests.e2e.test_cli import STRONGROOM, _clean_env, external, run


@pytest.fixture
def env(database: Database, nats_url: str, master_key: bytes) -> dict[str, str]:
    return {
        **external(database),
        "STRONGROOM_NATS_URL": nats_url,
        "STRONGROOM_MASTER_KEY": base64.b64encode(master_key).decode(),
    }


@pytest.fixture
def projections_worker(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [STRONGROOM, "worker", "projections"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_clean_env(), **env},
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


async def invite_members(store: EventStore, tenant: uuid.UUID, count: int) -> int:
    repository = Repository(store, EventRegistry([Member]))
    last = 0
    for i in range(count):
        member = Member.invite(tenant, f"m{i}@example.com", Role.REQUESTER)
        if i % 2:
            member.change_role(Role.APPROVER)
        result = await repository.save(
            tenant, member, command_id=uuid.uuid4(), actor=Actor("system", "e2e")
        )
        assert result is not None
        last = result.last_seq
    return last


def status(env: dict[str, str], *extra: str) -> dict[str, object]:
    result = run("projections", "status", "--json", *extra, env=env)
    assert result.returncode == 0, result.stderr
    members: dict[str, object] = next(
        p for p in json.loads(result.stdout)["projections"] if p["projection"] == "members"
    )
    return members


def partition(env: dict[str, str], tenant: uuid.UUID) -> dict[str, object] | None:
    parts = status(env, "--all")["partitions"]
    assert isinstance(parts, list)
    return next((p for p in parts if p["tenant"] == str(tenant)), None)


def wait_caught_up(env: dict[str, str], tenant: uuid.UUID, head: int) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = partition(env, tenant)
        if found is not None and found["position"] == head:
            return found
        time.sleep(0.5)
    raise AssertionError(f"members did not reach {head} for {tenant}")


async def test_the_projections_worker_catches_up_and_stops_cleanly_on_sigterm(
    env: dict[str, str], store: EventStore, projections_worker: subprocess.Popen[str]
) -> None:
    tenant = uuid.uuid4()
    head = await invite_members(store, tenant, 5)
    found = wait_caught_up(env, tenant, head)
    assert found["state"] == "caught up" and found["lag"] == 0

    human = run("projections", "status", "--all", env={**env, "COLUMNS": "200"})
    assert human.returncode == 0 and str(tenant) in human.stdout and "caught up" in human.stdout

    projections_worker.send_signal(signal.SIGTERM)
    _, stderr = projections_worker.communicate(timeout=60)
    assert projections_worker.returncode == 0, stderr
    assert "Traceback" not in stderr


async def test_rebuild_of_one_tenant_reports_its_events_and_keeps_the_position(
    env: dict[str, str], store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid.uuid4()
    head = await invite_members(store, tenant, 4)
    result = run("replay", "rebuild", "members", "--tenant", str(tenant), "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["projection"] == "members" and report["tenant"] == str(tenant)
    assert report["events"] == head and report["parked"] == []
    found = partition(env, tenant)
    assert found is not None and found["position"] == head

    human = run("replay", "rebuild", "members", "--tenant", str(tenant), env=env)
    assert human.returncode == 0 and "events/s" in human.stdout


async def test_rebuild_of_every_tenant_with_helper_processes_reports_each_ones_events(
    env: dict[str, str], store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid.uuid4()
    head = await invite_members(store, tenant, 3)
    args = ("replay", "rebuild", "members", "--workers", "2", "--events-per-worker", "1")
    result = run(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tenant"] is None and str(tenant) not in report["parked"]  # others: tests'
    assert len(report["events_per_process"]) == 2
    assert sum(report["events_per_process"]) == report["events"] >= head
    found = partition(env, tenant)
    assert found is not None and found["position"] == head

    one = run("replay", "rebuild", "members", "--workers", "1", env=env)
    assert one.returncode == 0 and "processes" in one.stdout, one.stderr
    bad = run("replay", "rebuild", "members", "--workers", "0", env=env)
    assert bad.returncode == 2 and "--workers" in bad.stderr


async def test_retry_unparks_a_parked_partition(
    env: dict[str, str], store: EventStore, superuser: asyncpg.Connection
) -> None:
    tenant = uuid.uuid4()
    await invite_members(store, tenant, 1)
    nothing = run("projections", "retry", "members", "--tenant", str(tenant), env=env)
    assert nothing.returncode == 0 and "nothing is parked" in nothing.stdout

    await superuser.execute(
        "INSERT INTO proj_members.position (tenant_id, last_seq, parked_seq, parked_error, "
        "parked_at) VALUES ($1, 0, 1, 'ValueError at members.py:1', now())",
        tenant,
    )
    parked = status(env)
    assert isinstance(parked["partitions"], list)
    assert any(p["tenant"] == str(tenant) and p["state"] == "parked" for p in parked["partitions"])

    result = run("projections", "retry", "members", "--tenant", str(tenant), "--json", env=env)
    assert result.returncode == 0, result.stderr
    [unparked] = json.loads(result.stdout)["unparked"]
    assert unparked["tenant"] == str(tenant) and unparked["parked_seq"] == 1
    found = partition(env, tenant)
    assert found is not None and found["state"] == "behind"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("replay", "rebuild", "nope"), "no projection named 'nope'"),
        (("replay", "rebuild", "members", "--tenant", "x"), "--tenant: 'x' is not a UUID"),
        (("projections", "retry", "nope"), "no projection named 'nope'"),
    ],
)
def test_bad_pipeline_arguments_are_one_line_errors(
    env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = run(*args, env=env)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_rebuild_of_a_tenant_without_a_log_is_an_error(env: dict[str, str]) -> None:
    tenant = uuid.uuid4()
    result = run("replay", "rebuild", "members", "--tenant", str(tenant), env=env)
    assert result.returncode == 2
    assert f"tenant {tenant} has no log" in result.stderr
