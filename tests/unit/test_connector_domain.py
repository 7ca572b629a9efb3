"""Connectors in the domain, without I/O: given events, when a command, then events or an
error."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import pytest

from domain.connector import (
    Connector,
    ConnectorStateError,
    ConnectorStatus,
    CredentialKind,
    InvalidConnectorError,
    check_config,
    names_a_secret,
)
from domain.errors import ConflictError, InvalidError
from domain.recorded import event_classes
from domain.tenant import Tenant
from infra import canonical
from infra.eventstore import Actor, RecordedEvent
from infra.repository import EventRegistry, Repository

FP1 = "hmac-sha256:0123456789abcdef"
FP2 = "hmac-sha256:fedcba9876543210"
FP3 = "hmac-sha256:00112233445566aa"


def registered(**config: Any) -> Connector:
    """Given: a registered connector (its events collected)."""
    connector = Connector.register("github", "Acme GitHub", config or {"org": "acme"})
    connector.collect_events()
    return connector


def with_credential() -> Connector:
    connector = registered()
    connector.set_first_credential("api_key", FP1)
    connector.collect_events()
    return connector


def status(connector: Connector) -> ConnectorStatus:
    """Read afresh (mypy would keep the status an earlier assert narrowed it to)."""
    return connector.status


def types(connector: Connector) -> list[str]:
    return [type(e).__name__ for e in connector.collect_events()]


# ---- registration and settings ---------------------------------------------------------


def test_every_lifecycle_step_has_its_event_type() -> None:
    assert set(event_classes(Connector)) == {
        "connector.registered",
        "connector.config_changed",
        "connector.paused",
        "connector.resumed",
        "connector.credential_set",
        "connector.rotation_started",
        "connector.credential_staged",
        "connector.credential_validated",
        "connector.credential_rejected",
        "connector.credential_purged",
        "connector.rotation_completed",
    }


def test_a_registered_connector_is_active_without_a_credential() -> None:
    connector = Connector.register("aws", "  Prod account ", {"region": "eu-west-1", "n": 3})
    assert types(connector) == ["Registered"]
    assert (connector.kind, connector.name, connector.status) == (
        "aws",
        "Prod account",
        ConnectorStatus.ACTIVE,
    )
    assert connector.credential_version is None and connector.fingerprint is None


@pytest.mark.parametrize("kind", ["GitHub", "", "1aws", "a b", "x" * 41, "git/hub"])
def test_a_kind_is_a_lower_case_slug(kind: str) -> None:
    with pytest.raises(InvalidConnectorError, match="slug"):
        Connector.register(kind, "n", {})


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "tab\there", "line\nbreak"])
def test_a_name_is_1_to_200_printable_characters(name: str) -> None:
    with pytest.raises(InvalidConnectorError, match="name"):
        Connector.register("generic", name, {})


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "secret",
        "client_secret",
        "clientSecret",
        "token",
        "access-token",
        "api_key",
        "apiKey",
        "private_key",
        "PRIVATE.KEY",
        "credentials",
    ],
)
def test_config_keys_that_name_a_secret_are_refused_with_a_pointer_to_the_credential(
    key: str,
) -> None:
    assert names_a_secret(key)
    with pytest.raises(InvalidConnectorError, match="config holds no secrets; set a credential"):
        Connector.register("generic", "n", {key: "hunter2"})
    with pytest.raises(InvalidConnectorError, match="no secrets"):
        Connector.register("generic", "n", {"auth": {"nested": [{key: "x"}]}})


@pytest.mark.parametrize("key", ["token_url", "private_key_id", "secret_name", "org", "region"])
def test_config_keys_that_name_a_setting_pass(key: str) -> None:
    assert not names_a_secret(key)
    assert check_config({key: "x"}) == {key: "x"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([], "JSON object"),
        ({"ratio": 0.5}, "fraction"),
        ({"n": 2**53}, "2\\*\\*53"),
        ({"a": {"b": {"c": {"d": {"e": 1}}}}}, "nests at most"),
        ({"x" * 65: 1}, "at most 64"),
        ({"1st": 1}, "ASCII letter"),
        ({"ключ": 1}, "ASCII letter"),
        ({"big": "x" * 5000}, "4096 bytes"),
        ({"when": object()}, "not a JSON value"),
    ],
)
def test_config_is_a_small_json_object_in_the_leaf_domain(config: Any, message: str) -> None:
    with pytest.raises(InvalidConnectorError, match=message):
        check_config(config)


def test_a_config_change_is_an_event_only_when_something_changes() -> None:
    connector = registered(org="acme")
    connector.change_config({"org": "acme"})
    assert types(connector) == []
    connector.change_config({"org": "acme-labs", "teams": ["ops", "sec"]})
    assert types(connector) == ["ConfigChanged"]
    assert connector.config == {"org": "acme-labs", "teams": ["ops", "sec"]}


def test_pause_and_resume_each_once() -> None:
    connector = registered()
    connector.pause()
    assert connector.status is ConnectorStatus.PAUSED
    with pytest.raises(ConnectorStateError, match="already paused"):
        connector.pause()
    connector.resume()
    with pytest.raises(ConnectorStateError, match="not paused"):
        connector.resume()
    assert types(connector) == ["Paused", "Resumed"]
    assert status(connector) is ConnectorStatus.ACTIVE


# ---- the first credential --------------------------------------------------------------


def test_the_first_credential_is_set_at_once_as_version_1() -> None:
    connector = registered()
    assert connector.set_first_credential("client_secret", FP1) == 1
    assert types(connector) == ["CredentialSet"]
    assert connector.credential_version == 1
    assert connector.credential_kind is CredentialKind.CLIENT_SECRET
    assert connector.fingerprint == FP1


def test_a_second_credential_is_a_rotation_not_a_set() -> None:
    connector = with_credential()
    with pytest.raises(ConnectorStateError, match="rotate it instead"):
        connector.set_first_credential("api_key", FP2)


@pytest.mark.parametrize("kind", ["ssh_key", "", "API_KEY"])
def test_a_credential_kind_is_one_of_four(kind: str) -> None:
    with pytest.raises(InvalidConnectorError, match="api_key, client_secret"):
        registered().set_first_credential(kind, FP1)


@pytest.mark.parametrize("fingerprint", ["", "sha256:0123456789abcdef", "hmac-sha256:XYZ"])
def test_a_fingerprint_has_one_shape(fingerprint: str) -> None:
    with pytest.raises(InvalidConnectorError, match="fingerprint"):
        registered().set_first_credential("api_key", fingerprint)


# ---- rotation --------------------------------------------------------------------------


def test_a_successful_rotation_pauses_stages_validates_purges_completes_and_resumes() -> None:
    connector = with_credential()
    connector.start_rotation()
    assert types(connector) == ["RotationStarted", "Paused"]
    assert connector.status is ConnectorStatus.PAUSED and connector.rotating
    assert connector.stage("oauth_token", FP2) == 2
    assert types(connector) == ["CredentialStaged"]
    assert connector.credential_version == 1, "the old credential stays until validated"
    assert connector.accept_staged() == (2, 1)
    events = connector.collect_events()
    assert [type(e).__name__ for e in events] == [
        "CredentialValidated",
        "CredentialPurged",
        "RotationCompleted",
        "Resumed",
    ]
    purged = events[1]
    assert isinstance(purged, Connector.CredentialPurged) and purged.version == 1
    assert status(connector) is ConnectorStatus.ACTIVE and not connector.rotating
    assert (connector.credential_version, connector.credential_kind, connector.fingerprint) == (
        2,
        CredentialKind.OAUTH_TOKEN,
        FP2,
    )


def test_a_rejected_credential_leaves_the_old_one_in_use_and_resumes() -> None:
    connector = with_credential()
    connector.start_rotation()
    connector.stage("api_key", FP2)
    connector.collect_events()
    assert connector.reject_staged("401 from the target\n  system") == 2
    connector.abandon_rotation()
    events = connector.collect_events()
    assert [type(e).__name__ for e in events] == ["CredentialRejected", "Resumed"]
    rejected = events[0]
    assert isinstance(rejected, Connector.CredentialRejected)
    assert rejected.reason == "401 from the target system"
    assert (connector.credential_version, connector.fingerprint) == (1, FP1)
    assert connector.status is ConnectorStatus.ACTIVE and not connector.rotating
    connector.start_rotation()
    assert connector.stage("api_key", FP3) == 3, "a rejected version number is never reused"


def test_a_rejection_reason_is_bounded_and_never_empty() -> None:
    connector = with_credential()
    connector.start_rotation()
    connector.stage("api_key", FP2)
    connector.reject_staged("x" * 5000)
    rejected = connector.collect_events()[-1]
    assert isinstance(rejected, Connector.CredentialRejected) and len(rejected.reason) == 300
    connector.start_rotation()
    connector.stage("api_key", FP3)
    connector.reject_staged("   ")
    rejected = connector.collect_events()[-1]
    assert isinstance(rejected, Connector.CredentialRejected) and rejected.reason


def test_rotation_only_from_an_active_connector_with_a_credential() -> None:
    with pytest.raises(ConnectorStateError, match="no credential"):
        registered().start_rotation()
    connector = with_credential()
    connector.pause()
    with pytest.raises(ConnectorStateError, match="paused connector"):
        connector.start_rotation()


def test_a_credential_is_staged_only_during_a_rotation_and_only_once() -> None:
    connector = with_credential()
    with pytest.raises(ConnectorStateError, match="only during a rotation"):
        connector.stage("api_key", FP2)
    connector.start_rotation()
    connector.stage("api_key", FP2)
    with pytest.raises(ConnectorStateError, match="staged already"):
        connector.stage("api_key", FP3)


def test_no_verdict_without_a_staged_credential() -> None:
    connector = with_credential()
    connector.start_rotation()
    with pytest.raises(ConnectorStateError, match="no credential is staged"):
        connector.accept_staged()
    with pytest.raises(ConnectorStateError, match="no credential is staged"):
        connector.reject_staged("no")


def test_a_rotating_connector_cannot_be_paused_or_resumed_by_hand() -> None:
    connector = with_credential()
    connector.start_rotation()
    with pytest.raises(ConnectorStateError, match="being rotated"):
        connector.resume()
    with pytest.raises(ConnectorStateError, match="being rotated"):
        connector.pause()


def test_an_interrupted_rotation_starts_over_and_rejects_what_it_had_staged() -> None:
    connector = with_credential()
    connector.start_rotation()
    connector.collect_events()
    connector.start_rotation()  # crashed after rotation_started: nothing more to record
    assert types(connector) == []
    connector.stage("api_key", FP2)
    connector.collect_events()
    connector.start_rotation()  # crashed after staging: the staged version is discarded
    events = connector.collect_events()
    assert [type(e).__name__ for e in events] == ["CredentialRejected"]
    assert connector.stage("api_key", FP3) == 3
    connector.accept_staged()
    assert (connector.credential_version, connector.status) == (3, ConnectorStatus.ACTIVE)


def test_no_event_holds_anything_but_ids_versions_kinds_and_fingerprints() -> None:
    connector = registered()
    connector.set_first_credential("password", FP1)
    connector.start_rotation()
    connector.stage("password", FP2)
    connector.reject_staged("wrong")
    connector.abandon_rotation()
    for e in connector.collect_events():
        fields = set(vars(e)) - {"originator_id", "originator_version", "timestamp"}
        assert fields <= {"version", "credential_kind", "fingerprint", "reason", "from_version"}


# ---- the event format ------------------------------------------------------------------


def test_a_connector_replays_from_its_leaves_to_the_same_state() -> None:
    registry = EventRegistry([Connector])
    connector = Connector.register("generic", "Vault", {"url": "https://x.example", "n": 1})
    connector.set_first_credential("api_key", FP1)
    connector.change_config({"url": "https://y.example"})
    connector.start_rotation()
    connector.stage("client_secret", FP2)
    connector.accept_staged()
    connector.pause()
    recorded = []
    for e in connector.collect_events():
        new = registry.to_new_event(e)
        assert new.personal == {}
        recorded.append(
            RecordedEvent(
                seq=e.originator_version,
                stream=new.stream,
                version=e.originator_version,
                event_id=uuid4(),
                type=new.type,
                ts=e.timestamp,
                actor=Actor(kind="system", id="test"),
                causation=None,
                correlation=uuid4(),
                data=json.loads(canonical.encode(dict(new.data))),
                personal={},
                leaf=b"",
                leaf_hash=b"",
                chain_hash=b"",
            )
        )
    replayed = Repository(None, registry).fold(recorded)  # type: ignore[arg-type]
    assert isinstance(replayed, Connector)
    for name in ("kind", "name", "config", "status", "credential_version", "fingerprint"):
        assert getattr(replayed, name) == getattr(connector, name), name
    assert replayed.credential_kind is CredentialKind.CLIENT_SECRET
    assert replayed.last_version == 2 and not replayed.rotating


# ---- the tenant key --------------------------------------------------------------------


def test_a_tenant_key_rotation_is_recorded_one_version_at_a_time() -> None:
    tenant = Tenant.create("Acme", "acme")
    tenant.collect_events()
    assert tenant.key_version == 1
    with pytest.raises(ConflictError, match="moved on"):
        tenant.record_key_rotation(from_version=2, to_version=3, subject_keys=0, vault_keys=0)
    with pytest.raises(ConflictError, match="moved on"):
        tenant.record_key_rotation(from_version=1, to_version=3, subject_keys=0, vault_keys=0)
    with pytest.raises(InvalidError, match="not negative"):
        tenant.record_key_rotation(from_version=1, to_version=2, subject_keys=-1, vault_keys=0)
    tenant.record_key_rotation(from_version=1, to_version=2, subject_keys=5, vault_keys=1)
    [rotated] = tenant.collect_events()
    assert isinstance(rotated, Tenant.KeyRotated)
    assert (rotated.from_version, rotated.to_version, rotated.subject_keys) == (1, 2, 5)
    assert tenant.key_version == 2
