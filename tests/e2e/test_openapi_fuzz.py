"""Schemathesis over every operation of the served OpenAPI document.

The fuzzer gets tenants of its own. Before each operation the owner's session steps
up (so step-up routes are open), and the operation is sent generated requests, valid
and invalid, with that session as ``Authorization: Bearer`` (the platform token for
the platform route). Every response must be no server error and match the documented
status, body, media type and headers (errors: the problem+json ``default``).
Hypothesis runs derandomized, without shrinking and without its example database,
so a run is reproducible and bounded.

Requests go through the ``api`` fixture's client on the test's event loop (where
the runtime's pool lives); Hypothesis drives the generation from a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation, BaseSchema

from infra.ratelimit import Gcra, RateLimits
from tests.e2e.conftest import PASSWORD, Api, TenantWorld, create_tenant, issue_api_key, login

EXAMPLES = {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 8}
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]
"""Schemathesis' default checks, minus those that are not about our answers being right:
status_code_conformance: vacuous here, since every operation documents a ``default``
  problem+json response (any status is "documented"); ``documented_success`` below holds
  each 2xx to the statuses the operation lists, and the ``default`` makes
  response_schema_conformance hold every error body to the Problem schema.
negative_data_rejection / positive_data_acceptance: they judge a status by the shape of
  the request alone, but a well-formed body with a made-up invite token, challenge, slug
  or e-mail address is rightly refused (401, 422), and generated ids name nothing (404).
use_after_free / ensure_resource_availability / ignored_auth / missing_required_header /
  unsupported_method: stateful or coverage-phase checks; this run uses neither phase,
  and the document declares no security scheme for ignored_auth to probe.
max_response_time: a shared CI runner's timing says nothing about correctness."""
OWN_TENANT = {"changeTenantSettings", "changePassword", "stepUp", "confirmMfa"}
"""Operations whose effects would change what the other operations see (MFA made
mandatory, the password the harness logs in with, failed attempts counting toward the
account's 100 an hour): each runs in a tenant of its own.
The rest share one tenant; the session they use is renewed after a logout and
replaced after a successful step-up, as a client would."""
PLATFORM_OPERATIONS = {"createTenant"}
ENDLESS = {"streamEvents"}
"""Streams that never end: the test client would wait for them forever. Their
parameters are tested against a real server in tests/e2e/test_events_api.py."""

T = TypeVar("T")
Operation = APIOperation[Any, Any, Any, Any]
AnyCase = Case[Any]


@dataclass
class Target:
    """A tenant, its owner's current session, and real ids for path parameters."""

    world: TenantWorld
    token: str
    path_ids: dict[str, str]

    def after(self, name: str, response: httpx.Response) -> bool:
        """Follow the session through the response; whether a new login is needed."""
        if name == "stepUp" and response.status_code == 200:
            self.token = response.json()["token"]
        return name == "logout" and response.is_success


@pytest.fixture(scope="module")
async def schema(api: Api) -> BaseSchema:
    response = await api.request("GET", "/schema/openapi.json")
    assert response.status_code == 200, response.text
    loaded: BaseSchema = schemathesis.openapi.from_dict(response.json())
    return loaded


@pytest.fixture(scope="module", autouse=True)
def generous_address_limits(api: Api) -> None:
    """Every generated request comes from one client address: the per-address login
    limit (10 in a burst) would answer nearly all of them 429 before any handler ran.
    The limits have their own tests; here they are raised, not removed."""
    limits = api.runtime.identity.limits
    api.runtime.identity.limits = RateLimits(
        principal=limits.principal,
        anonymous_ip=Gcra("ip", rate=100_000, period=60),
        login_ip=Gcra("login-ip", rate=100_000, period=60),
    )


def operations(schema: BaseSchema) -> list[Operation]:
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # an operation schemathesis cannot read
        found.append(result.ok())
    assert found, "the document lists no operations"
    return found


def documented_success(case: AnyCase, response: httpx.Response) -> str | None:
    """A 2xx answer must be one the document lists for the operation."""
    if 200 <= response.status_code < 300:
        documented = case.operation.responses.status_codes
        if str(response.status_code) not in documented:
            return f"{response.status_code} is not documented (documented: {documented})"
    return None


_HTTPX_ARGS = {"method", "url", "headers", "params", "cookies", "json", "content", "data"}


def to_httpx(case: AnyCase, token: str) -> dict[str, Any]:
    """The case as arguments of the ``api`` fixture's (httpx) client, with the credential."""
    kwargs = case.as_transport_kwargs(base_url="", headers={"Authorization": f"Bearer {token}"})
    headers = kwargs.get("headers") or {}
    for name in [h for h in headers if h.lower() == "strongroom-min-position"]:
        # A position the log has not reached makes the read wait 5 s and answer 503 (its
        # own tests cover that); a malformed one still goes out and must be a 400.
        if str(headers[name]).isascii() and str(headers[name]).isdigit():
            headers[name] = "0"
    cookies = kwargs.pop("cookies", None)
    if cookies:  # as a header: httpx deprecates per-request cookies
        kwargs["headers"] = {
            **(kwargs.get("headers") or {}),
            "Cookie": "; ".join(f"{name}={value}" for name, value in cookies.items()),
        }
    data = kwargs.pop("data", None)
    if isinstance(data, (bytes, str)):
        kwargs["content"] = data
    elif data is not None:
        kwargs["data"] = data
    return {k: v for k, v in kwargs.items() if k in _HTTPX_ARGS}


@dataclass
class Fuzzer:
    """Drives Hypothesis from a worker thread; the requests run on the test's loop."""

    api: Api
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def operation(self, operation: Operation, target: Target) -> tuple[int, list[str]]:
        """Send the operation's generated cases; return how many were sent, what failed."""
        sent = 0
        failures: list[str] = []
        for mode, examples in EXAMPLES.items():
            try:
                n, found = self.mode(operation, target, mode, examples)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to negate
                continue
            sent += n
            failures += found[: 3 - len(failures)]
        return sent, failures

    def mode(
        self, operation: Operation, target: Target, mode: GenerationMode, examples: int
    ) -> tuple[int, list[str]]:
        api = self.api
        name = operation.definition.raw.get("operationId", operation.label)
        strategy = operation.as_strategy(generation_mode=mode)
        ids = {p: v for p, v in target.path_ids.items() if f"{{{p}}}" in operation.path}
        if ids:  # some of the cases aim at a real member or key of the tenant
            strategy = st.one_of(
                strategy, operation.as_strategy(generation_mode=mode, path_parameters=ids)
            )
        sent = 0
        failures: list[str] = []

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def send(case: AnyCase) -> None:
            nonlocal sent
            token = api.platform_token if name in PLATFORM_OPERATIONS else target.token
            response = self.run(api.client.request(**to_httpx(case, token)))
            sent += 1
            if target.after(name, response):
                target.token = self.run(login(api, target.world.slug, target.world.owner.email))
            problems: list[str] = []
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as group:
                problems.extend(f"{f.title}: {f.message}" for f in group.exceptions)
            wrong = documented_success(case, response)
            if wrong:
                problems.append(wrong)
            if problems:
                failures.append(
                    f"{operation.label} ({mode.value}) -> {response.status_code}: "
                    + "; ".join(problems)
                    + f"\n    {case.as_curl_command()}\n    {response.text[:300]}"
                )

        send()
        return sent, failures


async def target_for(api: Api) -> Target:
    world = await create_tenant(api, with_roles=())
    invited = await api.request(
        "POST",
        "/v1/members",
        world.owner.token,
        json={"email": f"member@{world.slug}.example", "role": "readonly"},
    )
    assert invited.status_code == 201, invited.text
    accepted = await api.request(
        "POST",
        "/v1/invites/accept",
        json={"token": invited.json()["invite_token"], "password": PASSWORD},
    )
    assert accepted.status_code == 200, accepted.text
    key = await issue_api_key(api, world.owner, ["members:read"])
    ids = {"member_id": invited.json()["member_id"], "key_id": key["key_id"]}
    return Target(world, world.owner.token, ids)


async def step_up(api: Api, target: Target) -> None:
    response = await api.request(
        "POST", "/v1/auth/step-up", target.token, json={"password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    target.token = response.json()["token"]


async def test_no_operation_answers_generated_requests_with_a_server_error_or_off_schema(
    api: Api, schema: BaseSchema
) -> None:
    fuzzer = Fuzzer(api, asyncio.get_running_loop())
    shared = await target_for(api)
    report: list[str] = []
    for operation in operations(schema):
        name = operation.definition.raw.get("operationId")
        if name in ENDLESS:
            continue
        target = await target_for(api) if name in OWN_TENANT else shared
        await step_up(api, target)
        sent, failures = await asyncio.to_thread(fuzzer.operation, operation, target)
        assert sent > 0, operation.label
        report.extend(failures)
    assert not report, "\n".join(report)
