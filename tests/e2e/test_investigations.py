"""The investigation commands (`strongroom events|timeline|state|tenants|replay dry-run`),
run as subprocesses against the real stack of the test session.

One known scenario per module: tenant A with three members (one invites the
others, one of them joins, changes role and is deactivated by an API key), a key
issued and revoked, auth events whose data names a member, and a quiet tenant B.
Every command that reads A's log appends ``investigation.performed`` to it, so
expectations are computed from the store right before each command runs.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import json
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from domain.apikey import ApiKey
from domain.member import Member
from domain.permissions import Permission
from domain.roles import Role
from domain.tenant import Tenant
from infra.db import tenant_transaction
from infra.embedded import free_port
from infra.eventstore import Actor, EventStore, NewEvent, RecordedEvent
from infra.repository import EventRegistry, Repository
from tests.conftest import Database
from tests.e2e.conftest import sign_checkpoint
from tests.e2e.test_cli import STRONGROOM, _clean_env, external

SETUP = Actor("system", "setup")
AUDIT = "investigation.performed"
DEADLINE = 60.0


# ---- running the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(database: Database, nats_url: str, master_key: bytes) -> dict[str, str]:
    return {
        **external(database),
        "STRONGROOM_NATS_URL": nats_url,
        "STRONGROOM_MASTER_KEY": base64.b64encode(master_key).decode(),
        "COLUMNS": "200",
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STRONGROOM, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_clean_env(), **env},
        check=False,
    )


def cli_many(
    env: dict[str, str], *commands: tuple[str, ...]
) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands side by side (each subprocess spends most of a second starting)."""
    with ThreadPoolExecutor(max_workers=3) as workers:
        return list(workers.map(lambda args: cli(env, *args), commands))


def ok_json(env: dict[str, str], *args: str) -> Any:
    result = cli(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def seqs(views: list[dict[str, Any]]) -> list[int]:
    return [v["seq"] for v in views]


def recorded_line(seq: int) -> str:
    return f"recorded as investigation.performed at seq {seq}"


# ---- the scenario ----------------------------------------------------------------------------


@dataclass
class Scenario:
    tenant: uuid.UUID
    other: uuid.UUID
    owner: uuid.UUID
    bob: uuid.UUID
    carol: uuid.UUID
    key: uuid.UUID
    emails: dict[str, str]
    at: dict[str, int]
    """Named steps -> their seq in A's log."""


async def _save(repository: Repository, tenant: uuid.UUID, actor: Actor, *aggregates: Any) -> int:
    result = await repository.save(tenant, *aggregates, command_id=uuid.uuid4(), actor=actor)
    assert result is not None
    return result.last_seq


async def _auth(
    store: EventStore, tenant: uuid.UUID, type_: str, data: dict[str, Any], actor: Actor
) -> int:
    stream = f"auth-{tenant}"
    result = await store.append(
        tenant,
        [NewEvent(stream=stream, type=type_, data=data)],
        expected={stream: None},
        command_id=uuid.uuid4(),
        actor=actor,
    )
    return result.last_seq


async def _pause() -> None:
    # Distinct recorded_at between steps, so --since/--until can fall between them.
    await asyncio.sleep(0.005)


@pytest.fixture(scope="module")
async def scenario(store: EventStore) -> Scenario:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    repository = Repository(store, EventRegistry([Tenant, Member, ApiKey]))
    tag = tenant.hex[:8]
    emails = {n: f"{n}-{tag}@example.com" for n in ("owner", "bob", "carol")}
    at: dict[str, int] = {}

    at["created"] = await _save(
        repository, tenant, SETUP, Tenant.create("Acme", f"acme-{tag}", tenant_id=tenant)
    )
    await _pause()
    owner = Member.invite(tenant, emails["owner"], Role.OWNER)
    at["owner_invited"] = await _save(repository, tenant, SETUP, owner)
    await _pause()
    as_owner = Actor("user", str(owner.id))
    bob = Member.invite(tenant, emails["bob"], Role.REQUESTER)
    at["bob_invited"] = await _save(repository, tenant, as_owner, bob)
    await _pause()
    carol = Member.invite(tenant, emails["carol"], Role.AUDITOR)
    at["carol_invited"] = await _save(repository, tenant, as_owner, carol)
    await _pause()
    bob.join()
    at["bob_joined"] = await _save(repository, tenant, Actor("user", str(bob.id)), bob)
    await _pause()
    at["bob_login"] = await _auth(
        store,
        tenant,
        "auth.login_succeeded",
        {"member_id": str(bob.id)},
        Actor("user", str(bob.id)),
    )
    await _pause()
    bob.change_role(Role.APPROVER)
    at["bob_role"] = await _save(repository, tenant, as_owner, bob)
    await _pause()
    key = ApiKey.issue(
        member_id=owner.id,
        issuer_role=Role.OWNER,
        name="ci",
        prefix=f"sr_{tag}",
        scopes=frozenset({Permission.MEMBERS_MANAGE}),
        expires_at=None,
        now=datetime.now(UTC),
    )
    at["key_issued"] = await _save(repository, tenant, as_owner, key)
    await _pause()
    bob.deactivate()
    at["bob_deactivated"] = await _save(repository, tenant, Actor("api_key", str(key.id)), bob)
    await _pause()
    at["bob_login_failed"] = await _auth(
        store, tenant, "auth.login_failed", {"member_id": str(bob.id)}, Actor("system", "auth")
    )
    await _pause()
    key.revoke()
    at["key_revoked"] = await _save(repository, tenant, as_owner, key)

    await _save(repository, other, SETUP, Tenant.create("Other", f"other-{tag}", tenant_id=other))
    stranger = Member.invite(other, f"stranger-{tag}@example.com", Role.OWNER)
    await _save(repository, other, SETUP, stranger)
    return Scenario(tenant, other, owner.id, bob.id, carol.id, key.id, emails, at)


async def whole_log(store: EventStore, tenant: uuid.UUID) -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    while True:
        page = await store.read_log(tenant, after=events[-1].seq if events else 0, limit=1000)
        if not page:
            return events
        events.extend(page)


async def audits(store: EventStore, tenant: uuid.UUID) -> list[RecordedEvent]:
    return [e for e in await whole_log(store, tenant) if e.type == AUDIT]


def _mentions(value: Any, needle: str) -> bool:
    if isinstance(value, dict):
        return any(_mentions(v, needle) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, needle) for v in value)
    return isinstance(value, str) and value == needle


def touches(event: RecordedEvent, subject: str) -> bool:
    """Independently of the SQL: the stream, its id part, or any value in the data."""
    return (
        event.stream == subject
        or event.stream.split("-", 1)[-1] == subject
        or _mentions(event.data, subject)
    )


def by_actor(event: RecordedEvent, actor_id: str, kind: str | None = None) -> bool:
    return event.actor.id == actor_id and (kind is None or event.actor.kind == kind)


def operator() -> str:
    return f"inv-{uuid.uuid4().hex[:8]}"


# ---- 1. events list --------------------------------------------------------------------------


async def test_events_list_filters_pages_and_decrypts(
    env: dict[str, str], store: EventStore, scenario: Scenario
) -> None:
    s, tenant = scenario, str(scenario.tenant)
    log = await whole_log(store, s.tenant)
    ts = {e.seq: e.ts for e in log}
    bob_stream = f"member-{s.bob}"
    since, until = ts[s.at["bob_joined"]], ts[s.at["key_issued"]]
    # Halfway between two events (given in another zone): the bound falls between them.
    between = ts[s.at["bob_login"]] + (ts[s.at["bob_role"]] - ts[s.at["bob_login"]]) / 2
    base = ("events", "list", "--tenant", tenant, "--json")
    # The commands run side by side and each appends its audit event: bound the
    # unfiltered ones to the scenario.
    end = ts[s.at["key_revoked"]].isoformat()
    (
        everything,
        stream,
        types,
        actor_id,
        actor_kind,
        actor_wrong_kind,
        key_actor,
        subject,
        window,
        half_window,
    ) = [
        json.loads(r.stdout) if r.returncode == 0 else pytest.fail(r.stderr)
        for r in cli_many(
            env,
            (*base, "--until", end, "--limit", "1000"),
            (*base, "--stream", bob_stream),
            (*base, "--type", "member.invited", "--type", "apikey.revoked"),
            (*base, "--actor", str(s.owner)),
            (*base, "--actor", f"user:{s.owner}"),
            (*base, "--actor", f"system:{s.owner}"),
            (*base, "--actor", f"api_key:{s.key}"),
            (*base, "--subject", str(s.bob)),
            (*base, "--since", since.isoformat(), "--until", until.isoformat()),
            (
                *base,
                "--since",
                between.astimezone(timezone(timedelta(hours=2))).isoformat(),
                "--until",
                end,
            ),
        )
    ]
    assert seqs(everything["events"]) == [e.seq for e in log]
    assert everything["next"] is None and everything["tenant"] == tenant
    for view, event in zip(everything["events"], log, strict=True):
        assert view["recorded_at"] == event.ts.isoformat()
        assert datetime.fromisoformat(view["recorded_at"]) == event.ts
        assert (view["type"], view["stream"], view["version"]) == (
            event.type,
            event.stream,
            event.version,
        )
        assert view["actor"] == {"kind": event.actor.kind, "id": event.actor.id}
    invited = {v["stream"]: v for v in everything["events"] if v["type"] == "member.invited"}
    assert invited[bob_stream]["data"]["email"] == s.emails["bob"]
    assert (
        invited[bob_stream]["data"]["role"] == "requester" and invited[bob_stream]["erased"] == []
    )

    assert seqs(stream["events"]) == [
        s.at[k] for k in ("bob_invited", "bob_joined", "bob_role", "bob_deactivated")
    ]
    assert {v["stream"] for v in stream["events"]} == {bob_stream}
    assert seqs(types["events"]) == [
        s.at[k] for k in ("owner_invited", "bob_invited", "carol_invited", "key_revoked")
    ]
    by_owner = [
        s.at[k] for k in ("bob_invited", "carol_invited", "bob_role", "key_issued", "key_revoked")
    ]
    assert seqs(actor_id["events"]) == by_owner
    assert seqs(actor_kind["events"]) == by_owner
    assert actor_wrong_kind["events"] == []
    assert seqs(key_actor["events"]) == [s.at["bob_deactivated"]]
    assert key_actor["events"][0]["type"] == "member.deactivated"
    # Bob's own stream and the auth events whose data names him.
    assert seqs(subject["events"]) == [
        s.at[k]
        for k in (
            "bob_invited",
            "bob_joined",
            "bob_login",
            "bob_role",
            "bob_deactivated",
            "bob_login_failed",
        )
    ]
    assert seqs(window["events"]) == list(range(s.at["bob_joined"], s.at["key_issued"] + 1))
    assert seqs(half_window["events"])[0] == s.at["bob_role"]
    assert seqs(half_window["events"]) == [e.seq for e in log if e.seq >= s.at["bob_role"]]

    # --after and --limit page through, with `next` as the cursor; a filter skips ahead.
    # The table for people (and its audit line) and --jsonl run alongside.
    who = operator()
    invites = (*base[:-1], "--type", "member.invited", "--limit", "2")
    paged, page1, page2, human, lines = cli_many(
        env,
        (*base, "--after", "3", "--limit", "2"),
        (*invites, "--json"),
        (*invites, "--json", "--after", str(s.at["bob_invited"])),
        (*base[:-1], "--stream", bob_stream, "--operator", who),
        (*base[:-1], "--type", "member.invited", "--jsonl"),
    )
    for result in (paged, page1, page2, human, lines):
        assert result.returncode == 0, result.stderr
    paged_view = json.loads(paged.stdout)
    assert seqs(paged_view["events"]) == [4, 5] and paged_view["next"] == 5
    first, second = json.loads(page1.stdout), json.loads(page2.stdout)
    assert seqs(first["events"]) == [s.at["owner_invited"], s.at["bob_invited"]]
    assert first["next"] == s.at["bob_invited"]
    assert seqs(second["events"]) == [s.at["carol_invited"]] and second["next"] is None

    assert "member.role_changed" in human.stdout and f"api_key:{s.key}" in human.stdout
    assert f"tenant {tenant}: 4 event(s)" in human.stdout
    assert s.emails["bob"] in human.stdout
    (human_audit,) = [e for e in await audits(store, s.tenant) if e.actor.id == who]
    assert human.stderr.strip().splitlines()[-1] == recorded_line(human_audit.seq)

    rows = [json.loads(line) for line in lines.stdout.splitlines()]
    assert seqs(rows) == [s.at["owner_invited"], s.at["bob_invited"], s.at["carol_invited"]]
    assert rows[2]["data"]["email"] == s.emails["carol"]

    # Erased: the field is null and named in `erased`; the rest of the event is intact.
    assert await store.shred_subject(s.tenant, f"member-{s.carol}") == 1
    erased, human = cli_many(
        env,
        (*base, "--stream", f"member-{s.carol}"),
        (*base[:-1], "--stream", f"member-{s.carol}"),
    )
    assert erased.returncode == 0 and human.returncode == 0, erased.stderr + human.stderr
    (view,) = json.loads(erased.stdout)["events"]
    assert view["data"]["email"] is None and view["erased"] == ["email"]
    assert view["data"]["role"] == "auditor" and view["type"] == "member.invited"
    assert s.emails["carol"] not in erased.stdout
    assert "(erased)" in human.stdout and s.emails["carol"] not in human.stdout


# ---- 2. events show --------------------------------------------------------------------------


async def test_events_show_gives_hashes_and_the_covering_checkpoint(
    env: dict[str, str], store: EventStore, pool: asyncpg.Pool, scenario: Scenario
) -> None:
    s, tenant = scenario, str(scenario.tenant)
    seq = s.at["bob_invited"]
    stored = await store.read_event(s.tenant, seq)
    before = ok_json(env, "events", "show", "--tenant", tenant, str(seq))
    event = before["event"]
    assert event["seq"] == seq and event["id"] == str(stored.event_id)
    assert event["leaf_hash"] == stored.leaf_hash.hex()
    assert event["chain_hash"] == stored.chain_hash.hex()
    assert event["data"]["email"] == s.emails["bob"] and event["type"] == "member.invited"
    assert event["receipt"] == {
        "covered_by_checkpoint": None,
        "checkpoint_signed_at": None,
        "latest_checkpoint": None,
    }
    audit = await store.read_event(s.tenant, before["investigation_seq"])
    assert audit.type == AUDIT and audit.data["filters"] == {"seq": seq}

    size = await sign_checkpoint(pool, store, tenant)
    assert size >= before["investigation_seq"]
    async with tenant_transaction(pool, s.tenant, readonly=True) as conn:
        signed_at = await conn.fetchval(
            "SELECT signed_at FROM checkpoint WHERE tenant_id = $1 AND size = $2", s.tenant, size
        )
    assert signed_at is not None
    after = ok_json(env, "events", "show", "--tenant", tenant, str(seq))
    assert after["event"]["receipt"] == {
        "covered_by_checkpoint": size,
        "checkpoint_signed_at": signed_at.isoformat(),
        "latest_checkpoint": size,
    }
    # The show's own audit event came after the checkpoint: not covered yet.
    later = after["investigation_seq"]
    assert later > size
    uncovered, human = cli_many(
        env,
        ("events", "show", "--tenant", tenant, str(later), "--json"),
        ("events", "show", "--tenant", tenant, str(seq)),
    )
    assert uncovered.returncode == 0, uncovered.stderr
    receipt = json.loads(uncovered.stdout)["event"]["receipt"]
    assert receipt["covered_by_checkpoint"] is None and receipt["latest_checkpoint"] == size
    assert human.returncode == 0, human.stderr
    assert stored.leaf_hash.hex() in human.stdout and stored.chain_hash.hex() in human.stdout
    assert f"covered by the checkpoint of size {size}" in human.stdout
    assert s.emails["bob"] in human.stdout
    assert (
        human.stderr.strip()
        .splitlines()[-1]
        .startswith("recorded as investigation.performed at seq ")
    )


# ---- 3. the audit event ----------------------------------------------------------------------


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [STRONGROOM, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_clean_env(), **env},
    )


class Lines:
    """A child's stdout lines, read by a thread so the test can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:
            for line in stdout:
                self._lines.put(line)

        threading.Thread(target=read, daemon=True).start()

    def take(self, count: int) -> list[str]:
        deadline = time.monotonic() + DEADLINE
        found: list[str] = []
        while len(found) < count:
            try:
                found.append(self._lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"only {len(found)} of {count} lines: {found}") from None
        return found

    def rest(self) -> list[str]:
        found: list[str] = []
        while not self._lines.empty():
            found.append(self._lines.get())
        return found


async def wait_for_audit(store: EventStore, tenant: uuid.UUID, who: str) -> RecordedEvent:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = [e for e in await audits(store, tenant) if e.actor.id == who]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no investigation by {who}")


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


async def test_every_investigation_command_records_one_audit_event_in_that_tenant(
    env: dict[str, str],
    store: EventStore,
    scenario: Scenario,
    tmp_path: Path,
    stopped: list[subprocess.Popen[str]],
) -> None:
    s, tenant = scenario, str(scenario.tenant)
    other_before = await whole_log(store, s.other)
    names = {
        c: operator()
        for c in ("list", "show", "timeline", "state", "dry-run", "verify", "export", "tail")
    }
    until = s.at["key_revoked"]
    commands = {
        "list": ("events", "list", "--type", "member.invited", "--limit", "10"),
        "show": ("events", "show", str(s.at["bob_role"])),
        "timeline": ("timeline", "--actor", f"user:{s.owner}", "--until", "2999-01-01T00:00Z"),
        "state": ("state", f"member-{s.bob}", "--as-of-version", "2"),
        "dry-run": ("replay", "dry-run", "members", "--until", str(until)),
        "verify": ("verify",),
        "export": ("export", "evidence", str(tmp_path / "bundle")),
    }
    results = cli_many(
        env,
        *[
            (*args, "--tenant", tenant, "--operator", names[c], "--json")
            for c, args in commands.items()
        ],
        ("events", "list", "--tenant", tenant, "--stream", f"member-{s.bob}", "--json"),
    )
    outputs = {}
    for c, result in zip([*commands, "os-user"], results, strict=True):
        assert result.returncode == 0, (c, result.stderr)
        outputs[c] = json.loads(result.stdout)

    tail = start(env, "events", "tail", "--tenant", tenant, "--operator", names["tail"], "--jsonl")
    stopped.append(tail)
    tail_audit = await wait_for_audit(store, s.tenant, names["tail"])
    tail.send_signal(signal.SIGINT)
    _, tail_err = tail.communicate(timeout=DEADLINE)
    assert tail.returncode == 0, tail_err

    recorded = await audits(store, s.tenant)
    for c, name in names.items():
        mine = [e for e in recorded if e.actor == Actor("operator", name)]
        assert len(mine) == 1, (c, mine)
        if c != "tail":
            assert outputs[c]["investigation_seq"] == mine[0].seq
    by = {c: next(e for e in recorded if e.actor.id == name) for c, name in names.items()}
    expected = {
        "list": ("events list", {"type": ["member.invited"], "limit": 10}, 3),
        "show": ("events show", {"seq": s.at["bob_role"]}, 1),
        "timeline": (
            "timeline",
            {"actor": f"user:{s.owner}", "until": "2999-01-01T00:00:00+00:00", "limit": 100},
            5,
        ),
        "state": ("state", {"stream": f"member-{s.bob}", "as_of": "version:2"}, 2),
        "dry-run": (
            "replay dry-run",
            {"projection": "members", "until": until, "keep": False},
            until,
        ),
        "verify": (
            "verify",
            {"ok": True, "size": outputs["verify"]["size"]},
            outputs["verify"]["size"],
        ),
        "export": (
            "export evidence",
            {"from": 1, "to": outputs["export"]["to"], "out": "bundle"},
            outputs["export"]["events"],
        ),
        "tail": ("events tail", {"after": tail_audit.seq - 1, "follow": True}, None),
    }
    for c, (command, filters, returned) in expected.items():
        event = by[c]
        assert (event.data["command"], event.data["filters"], event.data["returned"]) == (
            command,
            filters,
            returned,
        ), c
        assert event.stream.startswith("investigation-") and event.version == 1
        assert event.data["os_user"] == getpass.getuser()
    assert len(outputs["list"]["events"]) == 3
    assert outputs["verify"]["ok"] is True
    assert outputs["export"]["events"] == outputs["export"]["to"]

    # Without --operator: the OS user.
    (by_os_user,) = [e for e in recorded if e.seq == outputs["os-user"]["investigation_seq"]]
    assert by_os_user.actor == Actor("operator", getpass.getuser())
    assert by_os_user.data["returned"] == len(outputs["os-user"]["events"]) == 4

    # Nothing in the other tenant's log.
    assert await whole_log(store, s.other) == other_before


async def test_the_audit_event_is_committed_before_the_first_byte_of_output(
    env: dict[str, str],
    store: EventStore,
    scenario: Scenario,
    stopped: list[subprocess.Popen[str]],
) -> None:
    tenant = str(scenario.tenant)
    runs = (
        ("events list", ("events", "list", "--json")),
        ("timeline", ("timeline", "--subject", str(scenario.bob))),
    )
    for command, args in runs:
        who = operator()
        proc = start(env, *args, "--tenant", tenant, "--operator", who)
        stopped.append(proc)
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=DEADLINE)
        assert first != ""  # something was printed: the audit event must exist already
        mine = [e for e in await audits(store, scenario.tenant) if e.actor.id == who]
        assert len(mine) == 1
        assert mine[0].data["command"] == command

    human = cli(env, "timeline", "--tenant", tenant, "--actor", f"api_key:{scenario.key}")
    assert human.returncode == 0, human.stderr
    last = (await audits(store, scenario.tenant))[-1]
    assert last.data["command"] == "timeline" and last.data["returned"] == 1
    assert human.stderr.strip().splitlines()[-1] == recorded_line(last.seq)
    assert "member.deactivated" in human.stdout


# ---- 4. timeline -----------------------------------------------------------------------------


async def test_timeline_of_an_actor_and_of_a_subject_is_the_log_order_across_streams(
    env: dict[str, str], store: EventStore, scenario: Scenario
) -> None:
    s, tenant = scenario, str(scenario.tenant)
    log = await whole_log(store, s.tenant)
    want_actor = [e.seq for e in log if by_actor(e, str(s.owner), "user")]
    want_subject = [e.seq for e in log if touches(e, str(s.bob))]
    # Earlier investigations with --subject <bob> touched him too (their filters name him).
    assert any(log[i - 1].type == AUDIT for i in want_subject)
    actor, subject, bare_jsonl = cli_many(
        env,
        ("timeline", "--tenant", tenant, "--actor", f"user:{s.owner}", "--json"),
        ("timeline", "--tenant", tenant, "--subject", str(s.bob), "--json"),
        ("timeline", "--tenant", tenant, "--actor", str(s.owner), "--jsonl"),
    )
    for result in (actor, subject, bare_jsonl):
        assert result.returncode == 0, result.stderr
    actor_events = json.loads(actor.stdout)["events"]
    subject_events = json.loads(subject.stdout)["events"]
    assert seqs(actor_events) == want_actor
    assert {v["stream"] for v in actor_events} == {
        f"member-{s.bob}",
        f"member-{s.carol}",
        f"apikey-{s.key}",
    }
    assert seqs(subject_events) == want_subject
    assert seqs(subject_events) == sorted(set(seqs(subject_events)))
    assert {v["stream"].split("-", 1)[0] for v in subject_events} == {
        "member",
        "auth",
        "investigation",
    }
    assert [json.loads(line)["seq"] for line in bare_jsonl.stdout.splitlines()] == want_actor

    both = cli(env, "timeline", "--tenant", tenant, "--actor", "x", "--subject", "y")
    neither = cli(env, "timeline", "--tenant", tenant)
    for result in (both, neither):
        assert result.returncode == 2 and "give --actor or --subject (exactly one)" in result.stderr


# ---- 5. state --------------------------------------------------------------------------------


def member_state(member: Member) -> dict[str, Any]:
    return {
        "id": str(member.id),
        "tenant_id": str(member.tenant_id),
        "email": member.email,
        "role": member.role.value,
        "active": member.active,
        "joined": member.joined,
        "mfa_enabled": member.mfa_enabled,
    }


async def test_state_as_of_a_version_a_seq_and_a_time_equals_the_aggregate_then(
    env: dict[str, str], store: EventStore, scenario: Scenario
) -> None:
    s, tenant = scenario, str(scenario.tenant)
    repository = Repository(store, EventRegistry([Tenant, Member, ApiKey]))
    stream = f"member-{s.bob}"
    deactivated = await store.read_event(s.tenant, s.at["bob_deactivated"])
    created = await store.read_event(s.tenant, s.at["created"])
    base = ("state", "--tenant", tenant, stream)
    results = cli_many(
        env,
        (*base, "--as-of-version", "3", "--json"),
        (*base, "--as-of-seq", str(s.at["bob_login"]), "--json"),
        (*base, "--as-of", deactivated.ts.isoformat(), "--diff-from", "version:1", "--json"),
        (*base, "--as-of", created.ts.isoformat()),
        ("state", "--tenant", tenant, f"member-{uuid.uuid4()}"),
        ("state", "--tenant", tenant, f"auth-{s.tenant}"),
        (*base, "--as-of-seq", "5", "--as-of-version", "2"),
        (*base, "--as-of-version", "9"),
        (*base, "--as-of-seq", "999999999"),
        (*base, "--as-of-version", "2", "--diff-from", "version:1"),
    )
    at_version, at_seq, at_time = (json.loads(r.stdout) for r in results[:3])

    v3 = await repository.get(s.tenant, Member, s.bob, version=3)
    assert at_version["state"] == member_state(v3)
    assert (at_version["version"], at_version["seq"]) == (3, s.at["bob_role"])
    assert at_version["state"]["role"] == "approver" and at_version["state"]["active"] is True
    assert at_version["aggregate"] == "Member" and at_version["as_of"] == "version:3"

    v2 = await repository.get(s.tenant, Member, s.bob, to_seq=s.at["bob_login"])
    assert at_seq["state"] == member_state(v2)
    assert (at_seq["version"], at_seq["seq"]) == (2, s.at["bob_joined"])
    assert at_seq["state"]["role"] == "requester" and at_seq["state"]["joined"] is True

    v4 = await repository.get(s.tenant, Member, s.bob, to_seq=s.at["bob_deactivated"])
    assert at_time["state"] == member_state(v4) and at_time["version"] == 4
    assert at_time["state"]["active"] is False
    v1 = await repository.get(s.tenant, Member, s.bob, version=1)
    assert at_time["diff_from"]["state"] == member_state(v1)
    assert at_time["changes"] == [
        {"field": "active", "before": True, "after": False},
        {"field": "joined", "before": False, "after": True},
        {"field": "role", "before": "requester", "after": "approver"},
    ]
    audit = await store.read_event(s.tenant, at_time["investigation_seq"])
    assert audit.data["filters"] == {
        "stream": stream,
        "as_of": deactivated.ts.isoformat(),
        "diff_from": "version:1",
    }

    messages = [
        f"is before the first event of {stream}",
        f"tenant {tenant} has no stream member-",
        f"'auth-{s.tenant}' is not an aggregate's stream",
        "give at most one of --as-of-seq, --as-of-version, --as-of",
        f"{stream} has 4 versions, not 9",
        "seq 999999999 is past the end of the log",
    ]
    for result, message in zip(results[3:9], messages, strict=True):
        assert result.returncode == 2, (message, result.stdout)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr

    human = results[9]
    assert human.returncode == 0, human.stderr
    # The state, then one changed field: joined, false -> true.
    changed = [line.split() for line in human.stdout.splitlines() if line.count("│") == 4]
    assert changed == [["│", "joined", "│", "false", "│", "true", "│"]]
    assert s.emails["bob"] in human.stdout and "requester" in human.stdout
    assert human.stderr.strip().splitlines()[-1].startswith("recorded as investigation.performed")


# ---- 6. replay dry-run -----------------------------------------------------------------------


async def _live_members(superuser: asyncpg.Connection, tenant: uuid.UUID) -> list[dict[str, Any]]:
    rows = await superuser.fetch(
        "SELECT * FROM proj_members.members_view WHERE tenant_id = $1 ORDER BY member_id", tenant
    )
    position = await superuser.fetch(
        "SELECT * FROM proj_members.position WHERE tenant_id = $1", tenant
    )
    return [dict(r) for r in rows] + [dict(r) for r in position]


async def _scratch(superuser: asyncpg.Connection) -> set[str]:
    rows = await superuser.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'scratch\\_%'"
    )
    return {r["nspname"] for r in rows}


async def test_dry_run_rebuilds_the_directory_as_of_a_seq_without_touching_the_live_one(
    env: dict[str, str], store: EventStore, scenario: Scenario, superuser: asyncpg.Connection
) -> None:
    s, tenant = scenario, str(scenario.tenant)
    rebuilt = cli(env, "replay", "rebuild", "members", "--tenant", tenant, "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    live = await _live_members(superuser, s.tenant)
    bob_live = next(r for r in live if r.get("member_id") == s.bob)
    assert bob_live["active"] is False  # the live directory: bob was deactivated
    scratch_before = await _scratch(superuser)

    until = s.at["key_issued"]  # before bob's deactivation
    copy = ok_json(env, "replay", "dry-run", "members", "--tenant", tenant, "--until", str(until))
    assert copy["until"] == until and copy["events"] == until and copy["failed_at"] is None
    assert copy["schema"] is None and copy["truncated"] == []
    repository = Repository(store, EventRegistry([Tenant, Member, ApiKey]))
    expected = []
    for member_id in sorted((s.owner, s.bob, s.carol), key=str):
        member = await repository.get(s.tenant, Member, member_id, to_seq=until)
        expected.append(
            {
                "member_id": str(member_id),
                "email": member.email,
                "role": member.role.value,
                "active": member.active,
                "version": member.version,
            }
        )
    rows = copy["tables"]["members_view"]
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    bob = next(r for r in rows if r["member_id"] == str(s.bob))
    assert bob["active"] is True and bob["role"] == "approver" and bob["version"] == 3
    assert all(r["tenant_id"] == tenant for r in rows)

    assert await _live_members(superuser, s.tenant) == live
    assert await _scratch(superuser) == scratch_before

    kept = ok_json(
        env, "replay", "dry-run", "members", "--tenant", tenant, "--until", str(until), "--keep"
    )
    schema = kept["schema"]
    try:
        assert schema is not None and schema.startswith("scratch_members_")
        assert await _scratch(superuser) == scratch_before | {schema}
        assert kept["tables"] == copy["tables"]
        count = await superuser.fetchval(f'SELECT count(*) FROM "{schema}".members_view')
        assert count == 3
    finally:
        if schema:
            await superuser.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    human = cli(env, "replay", "dry-run", "members", "--tenant", tenant, "--until", str(until))
    assert human.returncode == 0, human.stderr
    assert f"members.members_view as of seq {until}: 3 row(s)" in human.stdout
    assert human.stderr.strip().splitlines()[-1].startswith("recorded as investigation.performed")
    assert await _scratch(superuser) == scratch_before


# ---- 7. tenants list -------------------------------------------------------------------------


async def test_tenants_list_includes_the_scenario_tenants_with_their_sizes(
    env: dict[str, str], store: EventStore, scenario: Scenario, superuser: asyncpg.Connection
) -> None:
    expected = {}
    for tenant in (scenario.tenant, scenario.other):
        head = await store.head(tenant)
        assert head is not None
        signed = await superuser.fetchval(
            "SELECT COALESCE(max(size), 0) FROM checkpoint WHERE tenant_id = $1", tenant
        )
        expected[str(tenant)] = (head.size, signed)
    listed = ok_json(env, "tenants", "list")
    found = {e["tenant"]: (e["events"], e["signed_size"]) for e in listed["tenants"]}
    assert {t: found.get(t) for t in expected} == expected
    assert expected[str(scenario.other)] == (2, 0)  # no investigation ever touched it
    # Listing tenants reads no log, so it records nothing.
    after = await store.head(scenario.tenant)
    assert after is not None and after.size == expected[str(scenario.tenant)][0]

    human = cli(env, "tenants", "list")
    assert human.returncode == 0, human.stderr
    assert str(scenario.tenant) in human.stdout and str(scenario.other) in human.stdout


# ---- 8. events tail --------------------------------------------------------------------------


async def test_tail_follows_new_events_in_order_and_stops_on_sigint(
    env: dict[str, str], store: EventStore, scenario: Scenario, stopped: list[subprocess.Popen[str]]
) -> None:
    s, tenant = scenario, str(scenario.tenant)
    head = await store.head(s.tenant)
    assert head is not None
    who, typed = operator(), operator()
    everything = start(
        env,
        "events",
        "tail",
        "--tenant",
        tenant,
        "--jsonl",
        "--after",
        str(head.size),
        "--operator",
        who,
    )
    failures = start(
        env,
        "events", "tail", "--tenant", tenant, "--jsonl", "--type", "auth.login_failed",
        "--after", str(head.size), "--operator", typed,
    )  # fmt: skip
    stopped.extend([everything, failures])
    lines, failed_lines = Lines(everything), Lines(failures)
    audit_seqs = [(await wait_for_audit(store, s.tenant, w)).seq for w in (who, typed)]

    appended = []
    for i, type_ in enumerate(["auth.login_succeeded", "auth.login_failed"] * 3):
        data = {"member_id": str(s.bob), "n": i}
        appended.append(await _auth(store, s.tenant, type_, data, Actor("system", "auth")))

    # From --after on: the tails' own audit events, then what was appended.
    want = sorted(audit_seqs) + appended
    seen = [json.loads(line) for line in lines.take(len(want))]
    assert seqs(seen) == want
    assert [v["data"].get("n") for v in seen[2:]] == list(range(6))
    only_failed = [json.loads(line) for line in failed_lines.take(3)]
    assert seqs(only_failed) == appended[1::2]
    assert {v["type"] for v in only_failed} == {"auth.login_failed"}

    for proc in (everything, failures):
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr
    assert lines.rest() == [] and failed_lines.rest() == []


# ---- 9. bad input ----------------------------------------------------------------------------


async def test_bad_input_is_one_clear_line_and_a_non_zero_exit(
    env: dict[str, str], store: EventStore, scenario: Scenario, database: Database
) -> None:
    s, tenant = scenario, str(scenario.tenant)
    head = await store.head(s.tenant)
    assert head is not None
    stranger = str(uuid.uuid4())
    listing = ("events", "list", "--tenant", tenant)
    cases: list[tuple[tuple[str, ...], str]] = [
        (("events", "list", "--tenant", stranger), f"tenant {stranger} has no log here"),
        (("timeline", "--tenant", stranger, "--actor", "x"), f"tenant {stranger} has no log here"),
        (("verify", "--tenant", stranger), f"tenant {stranger} has no log here"),
        (
            ("export", "evidence", "--tenant", stranger, "/nonexistent/b"),
            f"tenant {stranger} has no log here",
        ),
        (("events", "list", "--tenant", "not-a-uuid"), "--tenant: 'not-a-uuid' is not a UUID"),
        (
            ("replay", "dry-run", "nope", "--tenant", tenant, "--until", "1"),
            "no projection named 'nope'",
        ),
        ((*listing, "--since", "yesterday"), "--since: 'yesterday' is not an ISO 8601 time"),
        ((*listing, "--until", "2026-11-24T10:00"), "--until: '2026-11-24T10:00' needs a zone"),
        ((*listing, "--limit", "0"), "--limit: 1 to 10000"),
        ((*listing, "--actor", ""), "--actor: 1 to 256 characters of text"),
        ((*listing, "--operator", " "), "no operator: give --operator NAME"),
        (
            ("events", "show", "--tenant", tenant, str(head.size + 1000)),
            f"no event at seq {head.size + 1000} (the log has {head.size})",
        ),
        (
            ("replay", "dry-run", "members", "--tenant", tenant, "--until", str(head.size + 1000)),
            f"--until {head.size + 1000} is past the end of the log ({head.size})",
        ),
    ]
    results = cli_many(env, *[args for args, _ in cases])

    no_cli_url = {k: v for k, v in env.items() if k != "STRONGROOM_CLI_DATABASE_URL"}
    dead = f"postgresql://nobody:nothing@127.0.0.1:{free_port()}/strongroom"
    unreachable = {
        **env,
        "STRONGROOM_DATABASE_URL": dead,
        "STRONGROOM_OWNER_DATABASE_URL": dead,
        "STRONGROOM_CLI_DATABASE_URL": dead,
    }
    more = [
        (no_cli_url, listing, "set STRONGROOM_CLI_DATABASE_URL"),
        (no_cli_url, ("tenants", "list"), "needs STRONGROOM_CLI_DATABASE_URL"),
        (unreachable, listing, "cannot connect to PostgreSQL"),
    ]
    with ThreadPoolExecutor(max_workers=3) as workers:
        results += list(workers.map(lambda c: cli(c[0], *c[1]), more))

    for (args, message), result in zip(
        [*cases, *[(c[1], c[2]) for c in more]], results, strict=True
    ):
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stdout == ""

    # A refused command records nothing.
    after = await store.head(s.tenant)
    assert after is not None and after.size == head.size

    debug = cli(env, "--debug", "events", "list", "--tenant", stranger)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "TenantNotFoundError" in debug.stderr
    assert database.cli_url not in debug.stderr


# ---- 10. the investigation role --------------------------------------------------------------


async def test_the_cli_role_sees_one_tenant_at_a_time_and_no_credentials(
    database: Database, scenario: Scenario, superuser: asyncpg.Connection
) -> None:
    a, b = scenario.tenant, scenario.other
    conn = await asyncpg.connect(database.cli_url)
    try:
        assert await conn.fetchval("SELECT current_user") == "strongroom_cli"
        assert await conn.fetchval("SELECT count(*) FROM event_log") == 0
        assert await conn.fetchval("SELECT count(*) FROM tenant_log") == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(a))
            seen = await conn.fetch("SELECT DISTINCT tenant_id FROM event_log")
            assert [r["tenant_id"] for r in seen] == [a]
            assert (
                await conn.fetchval("SELECT count(*) FROM event_log WHERE tenant_id = $1", b) == 0
            )
            assert (
                await conn.fetchval("SELECT count(*) FROM tenant_log WHERE tenant_id = $1", b) == 0
            )
        for table in ("account", "session", "api_key"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f"SELECT * FROM {table} LIMIT 1")
        for statement in (
            "UPDATE event_log SET event_type = event_type WHERE tenant_id = $1",
            "DELETE FROM event_log WHERE tenant_id = $1",
            "INSERT INTO tenant_log (tenant_id) VALUES ($1)",
        ):
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(a))
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(
                        statement, a if "tenant_log" not in statement else uuid.uuid4()
                    )
    finally:
        await conn.close()
    role = await superuser.fetchrow(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles "
        "WHERE rolname = 'strongroom_cli'"
    )
    assert dict(role) == {
        "rolsuper": False,
        "rolbypassrls": False,
        "rolcreaterole": False,
        "rolcreatedb": False,
    }
