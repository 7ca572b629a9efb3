"""Identity security over HTTP (issue #4; ../shared/design/SECURITY.md).

Secrets never leak (responses, logs, events); a TOTP code works once, with one
step of drift; failures are counted and the 101st in an hour is refused;
recovery codes work once; sessions expire (idle, absolute), rotate on login and
step-up, and end on logout; sensitive routes need a recent authentication; API
keys are refused once revoked, expired, retired or mistyped (a mistyped key
before any database query); ``Idempotency-Key`` replays, refuses or waits.

Time moves with the injected ``api.clock``, never with sleeps. The app and its
runtime live on the test client's portal loop, so direct database work goes
through ``_on_app_loop``.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar, cast
from uuid import UUID

import pyotp
import pytest

from domain.errors import UnauthenticatedError
from domain.roles import Role
from infra.apikeys import ApiKeys
from infra.db import tenant_transaction
from infra.eventstore import RecordedEvent
from infra.idempotency import fingerprint
from infra.identity import IdentityContext
from infra.ratelimit import Gcra, RateLimits
from tests.e2e.conftest import (
    PASSWORD,
    Api,
    Member,
    TenantWorld,
    create_tenant,
    enroll_totp,
    issue_api_key,
    login,
)

T = TypeVar("T")
SESSION_TOKEN = re.compile(r"^srs_[0-9A-Za-z]{33}$")
"""192 random bits in base62 (SECURITY.md asks for at least 128)."""
STEP_UP_CHALLENGE = 'error="insufficient_user_authentication"'


@pytest.fixture(scope="module", autouse=True)
def per_ip_limits_out_of_the_way(api: Api) -> Iterator[None]:
    """Every test-client request comes from one address, and this module logs in far
    more often than the per-IP login policy allows a single address; the per-account
    limit (counted in PostgreSQL) is what this module tests, so the in-memory per-IP
    limiters get room here."""
    identity = api.runtime.identity
    saved = identity.limits
    identity.limits = RateLimits(
        principal=saved.principal,
        anonymous_ip=Gcra("ip", rate=100_000, period=60),
        login_ip=Gcra("login-ip", rate=100_000, period=60),
    )
    yield
    identity.limits = saved


# ---- helpers -----------------------------------------------------------------------------


def _on_app_loop(api: Api, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` where the app's pool and event store live (the client's portal)."""
    return cast(T, api.client.blocking_portal.call(work))


def _events(api: Api, tenant_id: str) -> list[RecordedEvent]:
    async def read() -> list[RecordedEvent]:
        return await api.runtime.store.read_log(UUID(tenant_id), limit=10_000)

    return _on_app_loop(api, read)


def _failures(api: Api, world: TenantWorld, email: str, kind: str | None = None) -> int:
    """Rows in ``auth_failure`` for the account key of ``email`` (all kinds, or one)."""
    tenant_id = UUID(world.tenant_id)

    async def count() -> int:
        async with tenant_transaction(api.runtime.pool, tenant_id) as conn:
            key = await api.runtime.identity.ctx.email_key(conn, tenant_id, email)
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM auth_failure WHERE tenant_id = $1 "
                    "AND account_key = $2 AND ($3::text IS NULL OR kind = $3)",
                    tenant_id,
                    key,
                    kind,
                )
            )

    return _on_app_loop(api, count)


async def _attempt_login(api: Api, world: TenantWorld, email: str, password: str) -> Any:
    return await api.request(
        "POST",
        "/v1/auth/login",
        json={"tenant": world.slug, "email": email, "password": password},
    )


async def _challenge(api: Api, world: TenantWorld, member: Member) -> str:
    """A password login of a member with TOTP: the challenge for the second factor."""
    response = await _attempt_login(api, world, member.email, member.password)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "mfa_required"
    return str(response.json()["token"])


async def _second_factor(api: Api, challenge: str, **factor: str) -> Any:
    return await api.request("POST", "/v1/auth/mfa", json={"challenge": challenge, **factor})


def _at_a_fresh_totp_step(api: Api) -> None:
    """Move the clock about four 30 s steps on, to 15 s into a step.

    Every step within one of now is then later than any step used so far, and
    the step cannot change while the test computes a code and sends it.
    """
    now = api.clock().timestamp()
    api.clock.advance(timedelta(seconds=120 + 15 - now % 30))


def _totp(member: Member) -> pyotp.TOTP:
    assert member.totp_secret is not None
    return pyotp.TOTP(member.totp_secret)


def _wrong_code(member: Member, api: Api) -> str:
    """A six-digit code that is valid for no step within the drift window."""
    totp = _totp(member)
    now = api.clock()
    valid = {totp.at(now + timedelta(seconds=30 * d)) for d in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)


async def _get(api: Api, token: str, path: str = "/v1/auth/sessions") -> int:
    response = await api.request("GET", path, token)
    return int(response.status_code)


# ---- canary secrets ----------------------------------------------------------------------


@contextmanager
def _every_logger_into(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """caplog at DEBUG on the root logger, and also on loggers that do not propagate
    to it (litestar's own)."""
    caplog.set_level(logging.DEBUG)
    detached = [
        lg
        for lg in logging.root.manager.loggerDict.values()
        if isinstance(lg, logging.Logger) and not lg.propagate
    ]
    levels = {lg: lg.level for lg in detached}
    for lg in detached:
        lg.addHandler(caplog.handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for lg in detached:
            lg.removeHandler(caplog.handler)
            lg.setLevel(levels[lg])


def _record_text(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(vars(record))]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    parts.extend(p for p in (record.exc_text, record.stack_info) if p)
    return "\n".join(parts)


def _needles(secret: str) -> set[str]:
    """The secret, and the part of it that is secret once a public prefix is cut."""
    needles = {secret}
    if secret.startswith("sr_live_"):
        needles.add(secret[len("sr_live_") + 4 :])  # the listed prefix shows 4 characters
    for prefix in ("srs_", "sri_", "srp_"):
        if secret.startswith(prefix):
            needles.add(secret[len(prefix) :])
    if re.fullmatch(r"[0-9a-z]{4}(-[0-9a-z]{4}){5}", secret):
        needles.add(secret.replace("-", ""))
    return needles


async def test_canary_secrets_appear_only_in_their_one_time_display(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    canaries: dict[str, tuple[str, set[str]]] = {}
    responses: list[tuple[str, Any]] = []

    def plant(name: str, secret: str, *shown_in: str) -> str:
        canaries[name] = (secret, set(shown_in))
        return secret

    async def call(label: str, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        response = await api.request(method, path, token, **kw)
        responses.append((label, response))
        return response

    def expect(response: Any, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        return response.json() if response.content else {}

    slug = f"canary-{secrets.token_hex(4)}"
    owner_email, admin_email = f"owner@{slug}.example", f"admin@{slug}.example"
    owner_pw = plant("owner password", f"canary-owner-{secrets.token_hex(12)}")
    admin_pw = plant("admin password", f"canary-admin-{secrets.token_hex(12)}")
    wrong_pw = plant("a wrong password", f"canary-wrong-{secrets.token_hex(12)}")
    new_pw = plant("owner's new password", f"canary-new-{secrets.token_hex(12)}")
    plant("platform token", api.platform_token)

    def login_body(email: str, password: str, tenant: str = slug) -> dict[str, Any]:
        return {"json": {"tenant": tenant, "email": email, "password": password}}

    with _every_logger_into(caplog):
        created = expect(
            await call(
                "tenant created",
                "POST",
                "/v1/tenants",
                api.platform_token,
                json={"name": "Canary", "slug": slug, "owner_email": owner_email},
            ),
            201,
        )
        tenant_id = created["tenant_id"]
        invite = plant("owner invite", created["invite_token"], "tenant created")
        accept = {"json": {"token": invite, "password": owner_pw}}
        expect(await call("owner joined", "POST", "/v1/invites/accept", **accept), 200)
        expect(await call("invite reused", "POST", "/v1/invites/accept", **accept), 401)
        s1 = expect(
            await call(
                "owner login", "POST", "/v1/auth/login", **login_body(owner_email, owner_pw)
            ),
            200,
        )["token"]
        plant("owner session 1", s1, "owner login")

        invited = expect(
            await call(
                "admin invited",
                "POST",
                "/v1/members",
                s1,
                json={"email": admin_email, "role": "admin"},
            ),
            201,
        )
        admin_invite = plant("admin invite", invited["invite_token"], "admin invited")
        expect(
            await call(
                "admin joined",
                "POST",
                "/v1/invites/accept",
                json={"token": admin_invite, "password": admin_pw},
            ),
            200,
        )
        expect(
            await call(
                "admin wrong password",
                "POST",
                "/v1/auth/login",
                **login_body(admin_email, wrong_pw),
            ),
            401,
        )
        expect(
            await call(
                "unknown tenant",
                "POST",
                "/v1/auth/login",
                **login_body(admin_email, admin_pw, "nope"),
            ),
            401,
        )
        admin_session = expect(
            await call(
                "admin login", "POST", "/v1/auth/login", **login_body(admin_email, admin_pw)
            ),
            200,
        )["token"]
        plant("admin session", admin_session, "admin login")

        secret = expect(await call("mfa started", "POST", "/v1/account/mfa", s1), 200)["secret"]
        plant("totp secret", secret, "mfa started")
        owner = Member("", owner_email, Role.OWNER, s1, owner_pw, secret)
        codes = expect(
            await call(
                "mfa confirmed",
                "POST",
                "/v1/account/mfa/confirm",
                s1,
                json={"code": _totp(owner).at(api.clock())},
            ),
            200,
        )["recovery_codes"]
        for i, code in enumerate(codes):
            plant(f"recovery code {i}", code, "mfa confirmed")
        expect(await call("owner logout", "POST", "/v1/auth/logout", s1), 204)
        expect(await call("logged-out session used", "GET", "/v1/auth/sessions", s1), 401)

        challenge = expect(
            await call(
                "owner login, mfa", "POST", "/v1/auth/login", **login_body(owner_email, owner_pw)
            ),
            200,
        )["token"]
        plant("challenge 1", challenge, "owner login, mfa")
        expect(
            await call(
                "wrong code",
                "POST",
                "/v1/auth/mfa",
                json={"challenge": challenge, "code": _wrong_code(owner, api)},
            ),
            401,
        )
        s2 = expect(
            await call(
                "recovery code login",
                "POST",
                "/v1/auth/mfa",
                json={"challenge": challenge, "recovery_code": codes[0]},
            ),
            200,
        )["token"]
        plant("owner session 2", s2, "recovery code login")

        _at_a_fresh_totp_step(api)
        s3 = expect(
            await call(
                "step-up",
                "POST",
                "/v1/auth/step-up",
                s2,
                json={"password": owner_pw, "code": _totp(owner).at(api.clock())},
            ),
            200,
        )["token"]
        plant("owner session 3", s3, "step-up")
        new_codes = expect(
            await call("recovery codes regenerated", "POST", "/v1/account/recovery-codes", s3),
            200,
        )["recovery_codes"]
        for i, code in enumerate(new_codes):
            plant(f"new recovery code {i}", code, "recovery codes regenerated")

        issued = expect(
            await call(
                "key issued",
                "POST",
                "/v1/api-keys",
                s3,
                json={"name": "ci", "scopes": ["members:read"]},
            ),
            201,
        )
        key = plant("api key", issued["key"], "key issued")
        expect(await call("key used", "GET", "/v1/members", key), 200)
        rotated = expect(
            await call(
                "key rotated",
                "POST",
                f"/v1/api-keys/{issued['key_id']}/rotate",
                s3,
                json={"overlap_seconds": 600},
            ),
            201,
        )
        successor = plant("successor api key", rotated["key"], "key rotated")
        expect(await call("successor used", "GET", "/v1/members", successor), 200)
        expect(await call("keys listed", "GET", "/v1/api-keys?all=true", s3), 200)
        expect(await call("sessions listed", "GET", "/v1/auth/sessions", s3), 200)
        expect(await call("tenant read", "GET", "/v1/tenant", s3), 200)
        expect(
            await call(
                "password changed", "PUT", "/v1/account/password", s3, json={"password": new_pw}
            ),
            204,
        )

        _at_a_fresh_totp_step(api)
        challenge_2 = expect(
            await call(
                "login, new password", "POST", "/v1/auth/login", **login_body(owner_email, new_pw)
            ),
            200,
        )["token"]
        plant("challenge 2", challenge_2, "login, new password")
        s4 = expect(
            await call(
                "totp login",
                "POST",
                "/v1/auth/mfa",
                json={"challenge": challenge_2, "code": _totp(owner).at(api.clock())},
            ),
            200,
        )["token"]
        plant("owner session 4", s4, "totp login")
        expect(
            await call(
                "unknown field beside a password",
                "POST",
                "/v1/auth/login",
                json={"tenant": slug, "email": owner_email, "password": new_pw, "admin": True},
            ),
            400,
        )
        expect(
            await call(
                "password of the wrong type",
                "POST",
                "/v1/auth/login",
                json={"tenant": slug, "email": owner_email, "password": [new_pw]},
            ),
            400,
        )
        expect(await call("others revoked", "POST", "/v1/auth/sessions/revoke-others", s4), 200)
        expect(await call("key revoked", "DELETE", f"/v1/api-keys/{rotated['key_id']}", s4), 204)
        expect(await call("revoked key used", "GET", "/v1/members", successor), 401)
        expect(await call("final logout", "POST", "/v1/auth/logout", s4), 204)

    leaks: list[str] = []
    for label, response in responses:
        headers = "".join(f"{k}: {v}\n" for k, v in response.headers.items())
        seen = response.text + "\n" + headers
        for name, (secret, shown_in) in canaries.items():
            if label not in shown_in and any(n in seen for n in _needles(secret)):
                leaks.append(f"{name} in the response to {label!r}")
    for label, response in responses:  # the scan sees what it looks for
        for name, (secret, shown_in) in canaries.items():
            if label in shown_in:
                assert secret in response.text, (name, label)

    records = caplog.records
    assert any(r.name == "httpx" for r in records), "the log capture saw nothing"
    for record in records:
        text = _record_text(record)
        for name, (secret, _) in canaries.items():
            if any(n in text for n in _needles(secret)):
                leaks.append(f"{name} in a log record of {record.name}: {record.getMessage()}")

    events = _events(api, tenant_id)
    types = {e.type for e in events}
    assert {
        "auth.login_succeeded",
        "auth.login_failed",
        "auth.mfa_failed",
        "auth.stepped_up",
        "auth.logged_out",
        "auth.sessions_revoked",
    } <= types, types
    for event in events:
        stored = [
            event.leaf.decode(),
            json.dumps(event.data, default=str),
            repr(event.personal),
            repr(event.actor),
        ]
        for name, (secret, _) in canaries.items():
            if any(n in text for n in _needles(secret) for text in stored):
                leaks.append(f"{name} in event {event.seq} ({event.type})")
    assert leaks == []


# ---- TOTP --------------------------------------------------------------------------------


async def test_a_totp_code_is_accepted_once_only(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    owner = world.owner
    await enroll_totp(api, owner)
    _at_a_fresh_totp_step(api)
    code = _totp(owner).at(api.clock())

    challenge = await _challenge(api, world, owner)
    assert await _get(api, challenge) == 401  # a challenge is no session
    first = await _second_factor(api, challenge, code=code)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "authenticated"
    assert await _get(api, first.json()["token"]) == 200
    assert (await _second_factor(api, challenge, code=code)).status_code == 401  # challenge spent

    replay = await _second_factor(api, await _challenge(api, world, owner), code=code)
    assert replay.status_code == 401
    assert replay.headers["content-type"].startswith("application/problem+json")
    assert "token" not in replay.json()


async def test_a_totp_code_one_step_early_or_late_is_accepted_and_two_steps_are_not(
    api: Api,
) -> None:
    world = await create_tenant(api, with_roles=())
    owner = world.owner
    await enroll_totp(api, owner)
    _at_a_fresh_totp_step(api)
    totp, now, step = _totp(owner), api.clock(), timedelta(seconds=30)

    for off_by_two in (now - 2 * step, now + 2 * step):
        refused = await _second_factor(
            api, await _challenge(api, world, owner), code=totp.at(off_by_two)
        )
        assert refused.status_code == 401, off_by_two

    late = await _second_factor(api, await _challenge(api, world, owner), code=totp.at(now - step))
    assert late.status_code == 200, late.text
    early = await _second_factor(api, await _challenge(api, world, owner), code=totp.at(now + step))
    assert early.status_code == 200, early.text
    # The current step is older than the last one accepted: a code never goes back in time.
    older = await _second_factor(api, await _challenge(api, world, owner), code=totp.at(now))
    assert older.status_code == 401


async def test_a_wrong_totp_code_counts_as_a_failure_and_is_audited(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    owner = world.owner
    await enroll_totp(api, owner)
    before = _failures(api, world, owner.email, "mfa")

    wrong = await _second_factor(
        api, await _challenge(api, world, owner), code=_wrong_code(owner, api)
    )
    password_wrong = await _attempt_login(api, world, owner.email, "not the password at all")

    assert wrong.status_code == 401
    assert wrong.json() == password_wrong.json()  # one generic answer for every failure
    assert _failures(api, world, owner.email, "mfa") == before + 1
    failed = [e for e in _events(api, world.tenant_id) if e.type == "auth.mfa_failed"]
    assert [e.data for e in failed] == [{"member_id": owner.member_id, "reason": "code"}]


# ---- throttling --------------------------------------------------------------------------


async def test_the_101st_failure_in_an_hour_is_refused_even_with_the_right_password(
    api: Api,
) -> None:
    world = await create_tenant(api, with_roles=())
    owner = world.owner
    tenant_id = UUID(world.tenant_id)
    earlier = api.clock() - timedelta(minutes=10)

    async def ninety_nine_failures() -> None:
        async with tenant_transaction(api.runtime.pool, tenant_id) as conn:
            key = await api.runtime.identity.ctx.email_key(conn, tenant_id, owner.email)
            await conn.executemany(
                "INSERT INTO auth_failure (tenant_id, account_key, failed_at, kind) "
                "VALUES ($1, $2, $3, 'password')",
                [(tenant_id, key, earlier)] * 99,
            )

    _on_app_loop(api, ninety_nine_failures)
    assert (await _attempt_login(api, world, owner.email, PASSWORD)).status_code == 200
    hundredth = await _attempt_login(api, world, owner.email, "still not the password")
    assert hundredth.status_code == 401
    assert _failures(api, world, owner.email) == 100

    blocked = await _attempt_login(api, world, owner.email, PASSWORD)
    assert blocked.status_code == 429, blocked.text
    assert blocked.headers["content-type"].startswith("application/problem+json")
    assert blocked.headers["ratelimit-policy"] == '"account";q=100;w=3600'
    retry_after = int(blocked.headers["retry-after"])
    assert 0 < retry_after <= 3600
    assert blocked.headers["ratelimit"] == f'"account";r=0;t={retry_after}'
    assert "token" not in blocked.json()
    assert _failures(api, world, owner.email) == 100  # a refused attempt checks nothing
    throttled = [
        e
        for e in _events(api, world.tenant_id)
        if e.type == "auth.login_failed" and e.data["reason"] == "throttled"
    ]
    assert [e.data["member_id"] for e in throttled] == [owner.member_id]

    api.clock.advance(timedelta(seconds=retry_after))
    assert await login(api, world.slug, owner.email)


async def test_failed_logins_over_http_are_counted_per_account(api: Api) -> None:
    world = await create_tenant(api, with_roles=(Role.ADMIN,))
    owner, admin = world.owner, world.members[Role.ADMIN]
    for n in range(3):
        response = await _attempt_login(api, world, owner.email, f"wrong password {n}")
        assert response.status_code == 401
    assert _failures(api, world, owner.email, "password") == 3
    assert _failures(api, world, owner.email.upper()) == 3  # one account, however it is typed
    assert _failures(api, world, admin.email) == 0


async def test_an_unknown_email_fails_like_a_wrong_password_and_is_audited(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    unknown = f"nobody@{world.slug}.example"

    wrong_password = await _attempt_login(api, world, world.owner.email, "not the password")
    unknown_email = await _attempt_login(api, world, unknown, "not the password")

    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json() == unknown_email.json()
    assert wrong_password.headers["www-authenticate"] == unknown_email.headers["www-authenticate"]
    assert _failures(api, world, unknown) == 1
    failed = [e for e in _events(api, world.tenant_id) if e.type == "auth.login_failed"]
    anonymous = [e for e in failed if e.data["member_id"] is None]
    assert [e.personal.get("email") for e in anonymous] == [unknown]
    assert [e.data["reason"] for e in anonymous] == ["credentials"]
    assert [e.data["member_id"] for e in failed if e not in anonymous] == [world.owner.member_id]


# ---- recovery codes ----------------------------------------------------------------------


async def test_each_recovery_code_works_once_and_regenerating_voids_the_old_set(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    owner = world.owner
    codes = await enroll_totp(api, owner)
    assert len(set(codes)) == 10

    first = await _second_factor(api, await _challenge(api, world, owner), recovery_code=codes[0])
    assert first.status_code == 200, first.text
    again = await _second_factor(api, await _challenge(api, world, owner), recovery_code=codes[0])
    assert again.status_code == 401
    typed = codes[1].replace("-", "").upper()  # separators and case do not matter
    second = await _second_factor(api, await _challenge(api, world, owner), recovery_code=typed)
    assert second.status_code == 200, second.text

    regenerated = await api.request("POST", "/v1/account/recovery-codes", second.json()["token"])
    assert regenerated.status_code == 200, regenerated.text
    new_codes = regenerated.json()["recovery_codes"]
    assert len(new_codes) == 10 and not set(new_codes) & set(codes)
    old = await _second_factor(api, await _challenge(api, world, owner), recovery_code=codes[2])
    assert old.status_code == 401
    new = await _second_factor(api, await _challenge(api, world, owner), recovery_code=new_codes[0])
    assert new.status_code == 200, new.text
    methods = [
        e.data["method"] for e in _events(api, world.tenant_id) if e.type == "auth.login_succeeded"
    ]
    assert methods.count("recovery_code") == 3


# ---- sessions ----------------------------------------------------------------------------


async def test_a_session_idles_out_after_30_minutes_without_requests(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    token = world.owner.token
    api.clock.advance(timedelta(minutes=29))
    assert await _get(api, token) == 200
    api.clock.advance(timedelta(minutes=29))  # 58 minutes after login, 29 idle
    assert await _get(api, token) == 200
    api.clock.advance(timedelta(minutes=30, seconds=1))
    assert await _get(api, token) == 401


async def test_a_session_ends_12_hours_after_login_however_active_it_is(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    token = world.owner.token
    for _ in range(35):  # every 20 minutes, up to 11 h 40 min after login
        api.clock.advance(timedelta(minutes=20))
        assert await _get(api, token) == 200
    api.clock.advance(timedelta(minutes=20))
    assert await _get(api, token) == 401


async def test_every_login_starts_a_new_session_with_a_new_token(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    owner = world.owner
    second = await login(api, world.slug, owner.email)
    third = await login(api, world.slug, owner.email)
    tokens = {owner.token, second, third}
    assert len(tokens) == 3
    assert all(SESSION_TOKEN.fullmatch(t) for t in tokens)
    listed = await api.request("GET", "/v1/auth/sessions", third)
    assert listed.status_code == 200
    assert len(listed.json()) == 3
    assert [s["current"] for s in listed.json()].count(True) == 1


async def test_step_up_replaces_the_session_token_and_the_old_one_stops_working(
    api: Api,
) -> None:
    world = await create_tenant(api, with_roles=())
    old = world.owner.token
    stepped = await api.request("POST", "/v1/auth/step-up", old, json={"password": PASSWORD})
    assert stepped.status_code == 200, stepped.text
    new = stepped.json()["token"]
    assert new != old and SESSION_TOKEN.fullmatch(new)
    assert await _get(api, old) == 401
    assert await _get(api, new) == 200
    again = await api.request("POST", "/v1/auth/step-up", old, json={"password": PASSWORD})
    assert again.status_code == 401


async def test_logout_ends_the_session_on_the_server(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    token = world.owner.token
    other = await login(api, world.slug, world.owner.email)
    out = await api.request("POST", "/v1/auth/logout", token)
    assert out.status_code == 204
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert await _get(api, token) == 401
    assert (await api.request("POST", "/v1/auth/logout", token)).status_code == 401
    assert await _get(api, other) == 200


async def test_revoking_other_sessions_keeps_only_the_current_one(api: Api) -> None:
    world = await create_tenant(api, with_roles=(Role.ADMIN,))
    owner, admin = world.owner, world.members[Role.ADMIN]
    second = await login(api, world.slug, owner.email)
    third = await login(api, world.slug, owner.email)
    revoked = await api.request("POST", "/v1/auth/sessions/revoke-others", second)
    assert revoked.status_code == 200
    assert revoked.json() == {"revoked": 2}
    assert await _get(api, owner.token) == 401
    assert await _get(api, third) == 401
    assert await _get(api, second) == 200
    assert await _get(api, admin.token) == 200  # another member's sessions are not touched


async def test_the_host_session_cookie_authenticates(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    api.client.cookies.clear()
    try:
        response = await api.request(
            "POST",
            "/v1/auth/login",
            json={
                "tenant": world.slug,
                "email": world.owner.email,
                "password": PASSWORD,
                "cookie": True,
            },
        )
        assert response.status_code == 200, response.text
        token = response.json()["token"]
        set_cookie = response.headers["set-cookie"]
        attributes = [a.strip() for a in set_cookie.split(";")]
        assert attributes[0] == f"__Host-strongroom_session={token}"
        assert {"Path=/", "Secure", "HttpOnly", "SameSite=Strict"} <= set(attributes)
        assert not any(a.lower().startswith("domain") for a in attributes)
        api.client.cookies.clear()

        cookie = {"Cookie": f"__Host-strongroom_session={token}"}
        assert (await api.request("GET", "/v1/auth/sessions", headers=cookie)).status_code == 200
        wrong_name = {"Cookie": f"strongroom_session={token}"}
        assert (
            await api.request("GET", "/v1/auth/sessions", headers=wrong_name)
        ).status_code == 401
        logout = await api.request("POST", "/v1/auth/logout", headers=cookie)
        assert logout.status_code == 204
        assert (await api.request("GET", "/v1/auth/sessions", headers=cookie)).status_code == 401
    finally:
        api.client.cookies.clear()


# ---- step-up ------------------------------------------------------------------------------


async def test_sensitive_routes_need_an_authentication_within_the_last_five_minutes(
    api: Api,
) -> None:
    world = await create_tenant(api, with_roles=(Role.READONLY,))
    owner, target = world.owner, world.members[Role.READONLY]
    api.clock.advance(timedelta(minutes=5, seconds=30))

    change_role = ("PUT", f"/v1/members/{target.member_id}/role", {"role": "auditor"}, 204)
    issue_key = ("POST", "/v1/api-keys", {"name": "ci", "scopes": ["members:read"]}, 201)
    for method, path, body, _ in (change_role, issue_key):
        refused = await api.request(method, path, owner.token, json=body)
        assert refused.status_code == 401, (path, refused.text)
        assert STEP_UP_CHALLENGE in refused.headers["www-authenticate"]
        assert refused.headers["www-authenticate"].startswith("Bearer ")
        assert refused.json()["type"].endswith("/step-up-required")
    assert await _get(api, owner.token, "/v1/members") == 200  # the session itself is fine

    wrong = await api.request(
        "POST", "/v1/auth/step-up", owner.token, json={"password": "nope!!!!"}
    )
    assert wrong.status_code == 401
    stepped = await api.request(
        "POST", "/v1/auth/step-up", owner.token, json={"password": PASSWORD}
    )
    assert stepped.status_code == 200, stepped.text
    fresh = stepped.json()["token"]
    for method, path, body, status in (change_role, issue_key):
        done = await api.request(method, path, fresh, json=body)
        assert done.status_code == status, (path, done.text)

    api.clock.advance(timedelta(minutes=5, seconds=30))
    later = await api.request("POST", "/v1/api-keys", fresh, json=issue_key[2])
    assert later.status_code == 401
    assert STEP_UP_CHALLENGE in later.headers["www-authenticate"]


# ---- API keys ----------------------------------------------------------------------------


async def test_a_revoked_api_key_is_refused_on_the_next_request(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    issued = await issue_api_key(api, world.owner, ["members:read"])
    assert await _get(api, issued["key"], "/v1/members") == 200
    revoked = await api.request("DELETE", f"/v1/api-keys/{issued['key_id']}", world.owner.token)
    assert revoked.status_code == 204
    refused = await api.request("GET", "/v1/members", issued["key"])
    assert refused.status_code == 401
    assert refused.headers["content-type"].startswith("application/problem+json")


class _NoDatabase:
    """A pool whose every use fails: the point is that no query is made."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            self.asked.append(name)
            raise AssertionError(f"the database was asked ({name})")

        return refuse


def _typo(key: str, at: int) -> str:
    return key[:at] + ("A" if key[at] != "A" else "B") + key[at + 1 :]


async def test_an_api_key_with_a_bad_checksum_is_refused_without_a_database_query(
    api: Api, master_key: bytes
) -> None:
    world = await create_tenant(api, with_roles=())
    key = (await issue_api_key(api, world.owner, ["members:read"]))["key"]
    pool = _NoDatabase()
    ctx = IdentityContext(
        cast(Any, pool), api.runtime.store, api.runtime.keyring, master_key, clock=api.clock
    )
    offline = ApiKeys(ctx)
    mistyped = [
        _typo(key, len("sr_live_") + 10),  # in the random part
        _typo(key, len(key) - 1),  # in the checksum
        key[:-1],
        key + "0",
        key.replace("sr_live_", "sr_test_"),
    ]
    for bad in mistyped:
        with pytest.raises(UnauthenticatedError):
            await offline.authenticate(bad)
    assert pool.asked == []
    with pytest.raises(AssertionError, match="the database was asked"):
        await offline.authenticate(key)  # a well-formed key does reach the database
    assert len(pool.asked) == 1  # one statement finds and checks the key

    for bad in mistyped:
        assert await _get(api, bad, "/v1/members") == 401
    assert await _get(api, key, "/v1/members") == 200


async def test_an_expired_api_key_is_refused(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    expires_at = api.clock() + timedelta(minutes=10)
    issued = await api.request(
        "POST",
        "/v1/api-keys",
        world.owner.token,
        json={"name": "short", "scopes": ["members:read"], "expires_at": expires_at.isoformat()},
    )
    assert issued.status_code == 201, issued.text
    key = issued.json()["key"]
    assert await _get(api, key, "/v1/members") == 200
    api.clock.advance(timedelta(minutes=9, seconds=50))
    assert await _get(api, key, "/v1/members") == 200
    api.clock.advance(timedelta(seconds=11))
    assert await _get(api, key, "/v1/members") == 401


async def test_a_rotated_key_works_alongside_its_successor_until_the_overlap_ends(
    api: Api,
) -> None:
    world = await create_tenant(api, with_roles=())
    old = await issue_api_key(api, world.owner, ["members:read"])
    rotated = await api.request(
        "POST",
        f"/v1/api-keys/{old['key_id']}/rotate",
        world.owner.token,
        json={"overlap_seconds": 600},
    )
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["key"] != old["key"] and new["scopes"] == ["members:read"]
    assert await _get(api, old["key"], "/v1/members") == 200
    assert await _get(api, new["key"], "/v1/members") == 200
    api.clock.advance(timedelta(seconds=590))
    assert await _get(api, old["key"], "/v1/members") == 200
    api.clock.advance(timedelta(seconds=11))
    assert await _get(api, old["key"], "/v1/members") == 401
    assert await _get(api, new["key"], "/v1/members") == 200
    fresh = await login(api, world.slug, world.owner.email)  # rotating needs a recent login
    again = await api.request("POST", f"/v1/api-keys/{old['key_id']}/rotate", fresh, json={})
    assert again.status_code == 409, again.text  # a retired key has no second successor


# ---- Idempotency-Key ----------------------------------------------------------------------


async def test_a_repeated_idempotency_key_replays_the_first_response_byte_for_byte(
    api: Api,
) -> None:
    world = await create_tenant(api, with_roles=())
    token = world.owner.token
    request = {
        "json": {"email": f"replayed@{world.slug}.example", "role": "readonly"},
        "headers": {"Idempotency-Key": "invite-replayed-1"},
    }
    first = await api.request("POST", "/v1/members", token, **request)
    assert first.status_code == 201, first.text
    logged = len(_events(api, world.tenant_id))

    again = await api.request("POST", "/v1/members", token, **request)
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    for name in ("content-type", "strongroom-position", "cache-control"):
        assert again.headers[name] == first.headers[name]
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert len(_events(api, world.tenant_id)) == logged
    invited = [e for e in _events(api, world.tenant_id) if e.type == "member.invited"]
    assert len(invited) == 2  # the owner at tenant creation, and this one once


async def test_an_idempotency_key_reused_for_another_request_is_a_422(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    token, key = world.owner.token, {"Idempotency-Key": "invite-reused"}
    first = await api.request(
        "POST",
        "/v1/members",
        token,
        json={"email": "a@example.com", "role": "readonly"},
        headers=key,
    )
    assert first.status_code == 201
    logged = len(_events(api, world.tenant_id))
    other_body = await api.request(
        "POST",
        "/v1/members",
        token,
        json={"email": "b@example.com", "role": "readonly"},
        headers=key,
    )
    assert other_body.status_code == 422, other_body.text
    assert other_body.headers["content-type"].startswith("application/problem+json")
    other_path = await api.request(
        "POST",
        f"/v1/members/{first.json()['member_id']}/deactivate",
        token,
        headers=key,
    )
    assert other_path.status_code == 422
    assert len(_events(api, world.tenant_id)) == logged


async def test_an_idempotency_key_whose_first_request_is_still_running_is_a_409(
    api: Api,
) -> None:
    """The first request is held by its claim row, written as the app writes it."""
    world = await create_tenant(api, with_roles=())
    owner, tenant_id = world.owner, UUID(world.tenant_id)
    body = json.dumps({"email": "held@example.com", "role": "readonly"}).encode()

    async def claim() -> None:
        async with tenant_transaction(api.runtime.pool, tenant_id) as conn:
            await conn.execute(
                "INSERT INTO idempotency_key (tenant_id, principal, key, fingerprint) "
                "VALUES ($1, $2, $3, $4)",
                tenant_id,
                f"member:{owner.member_id}",
                "held",
                fingerprint("POST", "/v1/members", body),
            )

    _on_app_loop(api, claim)
    logged = len(_events(api, world.tenant_id))
    headers = {"Idempotency-Key": "held", "Content-Type": "application/json"}
    running = await api.request("POST", "/v1/members", owner.token, content=body, headers=headers)
    assert running.status_code == 409, running.text
    assert running.headers["content-type"].startswith("application/problem+json")
    assert "idempotent-replayed" not in running.headers
    different = await api.request(
        "POST", "/v1/members", owner.token, content=body.replace(b"held", b"else"), headers=headers
    )
    assert different.status_code == 422
    assert len(_events(api, world.tenant_id)) == logged


async def test_idempotency_keys_belong_to_one_principal(api: Api) -> None:
    world = await create_tenant(api, with_roles=(Role.ADMIN,))
    owner, admin = world.owner, world.members[Role.ADMIN]
    key = {"Idempotency-Key": "shared-key"}
    by_owner = await api.request(
        "POST",
        "/v1/members",
        owner.token,
        json={"email": "o@example.com", "role": "readonly"},
        headers=key,
    )
    by_admin = await api.request(
        "POST",
        "/v1/members",
        admin.token,
        json={"email": "a@example.com", "role": "readonly"},
        headers=key,
    )
    assert by_owner.status_code == by_admin.status_code == 201, by_admin.text
    assert "idempotent-replayed" not in by_admin.headers
    assert by_admin.json()["member_id"] != by_owner.json()["member_id"]

    api_key = await issue_api_key(api, owner, ["members:invite"])
    same_request_other_credential = await api.request(
        "POST",
        "/v1/members",
        api_key["key"],
        json={"email": "o@example.com", "role": "readonly"},
        headers=key,
    )
    assert same_request_other_credential.status_code == 409  # ran again: the e-mail is taken
    assert "idempotent-replayed" not in same_request_other_credential.headers

    replay = await api.request(
        "POST",
        "/v1/members",
        owner.token,
        json={"email": "o@example.com", "role": "readonly"},
        headers=key,
    )
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == by_owner.content
