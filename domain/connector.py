"""A connector: a target system (its kind, a name, non-secret settings) and its credential.

The credential itself never enters an event: events record that one was set,
staged, validated, rejected or purged, with its version and a fingerprint that
reveals nothing (an HMAC under a tenant key, computed by the vault). The
ciphertexts live beside the log (infra/vault.py).

Rotation is a lifecycle, one event per step: ``rotation_started`` and
``paused``; ``credential_staged`` (version n+1); then either
``credential_validated``, ``credential_purged`` (version n),
``rotation_completed`` and ``resumed``, or ``credential_rejected`` and
``resumed`` on the old credential. A rotation interrupted by a crash leaves the
connector paused with ``rotating`` set; a new rotation may then start over (a
staged credential left behind is rejected first).

``config`` is a small JSON object of settings, in the leaf's value domain (no
floats), and a key that names a secret (``password``, ``client_secret``,
``api_key``...) is refused so that nobody puts a secret where it would be logged.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, ClassVar

from eventsourcing.domain import event

from domain.errors import ConflictError, InvalidError
from domain.recorded import RecordedAggregate

MAX_NAME = 200
MAX_CONFIG_BYTES = 4096
MAX_CONFIG_DEPTH = 4
MAX_CONFIG_KEY = 64
MAX_REASON = 300
MAX_SAFE_INTEGER = 2**53 - 1
_KIND = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_CONFIG_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_FINGERPRINT = re.compile(r"^hmac-sha256:[0-9a-f]{16}$")
_SECRET_KEY_ENDINGS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "tokens",
    "apikey",
    "privatekey",
    "secretkey",
    "accesskey",
    "signingkey",
    "encryptionkey",
    "credential",
    "credentials",
)
"""A config key whose letters and digits end with one of these names a secret: ``password``,
``db_password``, ``client_secret``, ``api_key``, ``privateKey``. ``token_url`` or
``private_key_id`` name settings, and pass."""


class InvalidConnectorError(InvalidError):
    pass


class ConnectorStateError(ConflictError):
    """The connector is not in a state that allows this (paused, rotating, no credential)."""


class ConnectorStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


class CredentialKind(StrEnum):
    API_KEY = "api_key"
    CLIENT_SECRET = "client_secret"  # noqa: S105 (a kind, not a secret)
    OAUTH_TOKEN = "oauth_token"  # noqa: S105
    PASSWORD = "password"  # noqa: S105


class PauseReason(StrEnum):
    OPERATOR = "operator"
    ROTATION = "rotation"


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise InvalidConnectorError(
            "a connector kind is a lower-case slug (a letter, then up to 39 letters, digits, "
            "'-' or '_'), e.g. github, aws, generic"
        )
    return kind


def check_name(name: str) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise InvalidConnectorError(f"a connector name is 1 to {MAX_NAME} printable characters")
    return name


def credential_kind(kind: str) -> CredentialKind:
    try:
        return CredentialKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in CredentialKind)
        raise InvalidConnectorError(f"a credential kind is one of {known}") from None


def names_a_secret(key: str) -> bool:
    letters = re.sub(r"[^a-z0-9]", "", key.lower())
    return letters.endswith(_SECRET_KEY_ENDINGS)


def check_config(config: Any) -> dict[str, Any]:
    """A JSON object of non-secret settings, bounded, in the event leaf's value domain."""
    if not isinstance(config, dict):
        raise InvalidConnectorError("config is a JSON object")
    _check_value(config, "config", 0)
    size = len(json.dumps(config, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_CONFIG_BYTES:
        raise InvalidConnectorError(f"config is at most {MAX_CONFIG_BYTES} bytes of JSON")
    return config


def _check_value(value: Any, path: str, depth: int) -> None:
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise InvalidConnectorError(f"{path}: integers are within ±(2**53-1)")
        return
    if isinstance(value, float):
        raise InvalidConnectorError(
            f"{path}: numbers with a fraction are not allowed; use a string"
        )
    if depth >= MAX_CONFIG_DEPTH:
        raise InvalidConnectorError(f"config nests at most {MAX_CONFIG_DEPTH} levels")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii() or not _CONFIG_KEY.fullmatch(key):
                raise InvalidConnectorError(
                    f"{path}: a config key is an ASCII letter then letters, digits, '_', '.' or '-'"
                )
            if len(key) > MAX_CONFIG_KEY:
                raise InvalidConnectorError(
                    f"{path}: a config key is at most {MAX_CONFIG_KEY} long"
                )
            if names_a_secret(key):
                raise InvalidConnectorError(
                    f"{path}.{key}: config holds no secrets; set a credential with "
                    "PUT /v1/connectors/{connector_id}/credential instead"
                )
            _check_value(item, f"{path}.{key}", depth + 1)
        return
    raise InvalidConnectorError(f"{path}: not a JSON value")


def _check_fingerprint(fingerprint: str) -> str:
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise InvalidConnectorError("a fingerprint is hmac-sha256: and 16 hex digits")
    return fingerprint


def _check_reason(reason: str) -> str:
    reason = " ".join(str(reason).split())[:MAX_REASON]
    return reason or "the credential was not accepted"


class Connector(RecordedAggregate):
    category: ClassVar[str] = "connector"

    class Registered(RecordedAggregate.Created):
        kind: str
        name: str
        config: dict[str, Any]

    class ConfigChanged(RecordedAggregate.Event):
        config: dict[str, Any]

    class Paused(RecordedAggregate.Event):
        reason: str

    class Resumed(RecordedAggregate.Event):
        pass

    class CredentialSet(RecordedAggregate.Event):
        version: int
        credential_kind: str
        fingerprint: str

    class RotationStarted(RecordedAggregate.Event):
        from_version: int

    class CredentialStaged(RecordedAggregate.Event):
        version: int
        credential_kind: str
        fingerprint: str

    class CredentialValidated(RecordedAggregate.Event):
        version: int

    class CredentialRejected(RecordedAggregate.Event):
        version: int
        reason: str

    class CredentialPurged(RecordedAggregate.Event):
        version: int

    class RotationCompleted(RecordedAggregate.Event):
        version: int
        previous_version: int
        credential_kind: str
        fingerprint: str

    @classmethod
    def register(cls, kind: str, name: str, config: Any) -> Connector:
        return cls._create(
            cls.Registered,
            kind=check_kind(kind),
            name=check_name(name),
            config=check_config(config),
        )

    def __init__(self, kind: str, name: str, config: dict[str, Any]) -> None:
        self.kind = kind
        self.name = name
        self.config = config
        self.status = ConnectorStatus.ACTIVE
        self.paused_for: PauseReason | None = None
        self.credential_version: int | None = None
        self.credential_kind: CredentialKind | None = None
        self.fingerprint: str | None = None
        self.last_version = 0
        """The highest credential version ever used: versions are never reused."""
        self.rotating = False
        self.staged_version: int | None = None
        self.staged_kind: CredentialKind | None = None
        self.staged_fingerprint: str | None = None
        self.staged_validated = False

    # ---- settings and status -------------------------------------------------------------

    def change_config(self, config: Any) -> None:
        config = check_config(config)
        if config != self.config:
            self._config_changed(config=config)

    @event(ConfigChanged)
    def _config_changed(self, config: dict[str, Any]) -> None:
        self.config = config

    def pause(self) -> None:
        if self.rotating:
            raise ConnectorStateError("the connector's credential is being rotated")
        if self.status is ConnectorStatus.PAUSED:
            raise ConnectorStateError("the connector is already paused")
        self._paused(reason=PauseReason.OPERATOR.value)

    @event(Paused)
    def _paused(self, reason: str) -> None:
        self.status = ConnectorStatus.PAUSED
        self.paused_for = PauseReason(reason)

    def resume(self) -> None:
        if self.rotating:
            raise ConnectorStateError(
                "the connector's credential is being rotated; set the credential again to "
                "finish the rotation"
            )
        if self.status is ConnectorStatus.ACTIVE:
            raise ConnectorStateError("the connector is not paused")
        self._resumed()

    @event(Resumed)
    def _resumed(self) -> None:
        self.status = ConnectorStatus.ACTIVE
        self.paused_for = None
        self.rotating = False

    # ---- the credential ------------------------------------------------------------------

    @property
    def next_version(self) -> int:
        return self.last_version + 1

    def set_first_credential(self, kind: str, fingerprint: str) -> int:
        """The first credential: stored at once, nothing to rotate from. Its version."""
        if self.credential_version is not None:
            raise ConnectorStateError("the connector has a credential; rotate it instead")
        version = self.next_version
        self._credential_set(
            version=version,
            credential_kind=credential_kind(kind).value,
            fingerprint=_check_fingerprint(fingerprint),
        )
        return version

    @event(CredentialSet)
    def _credential_set(self, version: int, credential_kind: str, fingerprint: str) -> None:
        self.credential_version = version
        self.credential_kind = CredentialKind(credential_kind)
        self.fingerprint = fingerprint
        self.last_version = max(self.last_version, version)

    def start_rotation(self) -> None:
        """Pause for a rotation; also restarts an interrupted one (the connector is then
        already rotating, and a credential it had staged is rejected first)."""
        if self.credential_version is None:
            raise ConnectorStateError("the connector has no credential to rotate")
        if self.rotating:
            if self.staged_version is not None:
                self.reject_staged("superseded: the rotation was started again")
            return
        if self.status is not ConnectorStatus.ACTIVE:
            raise ConnectorStateError(
                "a paused connector's credential cannot be rotated; resume it"
            )
        self._rotation_started(from_version=self.credential_version)
        self._paused(reason=PauseReason.ROTATION.value)

    @event(RotationStarted)
    def _rotation_started(self, from_version: int) -> None:
        self.rotating = True

    def stage(self, kind: str, fingerprint: str) -> int:
        """The new credential, stored beside the old one until validated. Its version."""
        if not self.rotating:
            raise ConnectorStateError("a credential is staged only during a rotation")
        if self.staged_version is not None:
            raise ConnectorStateError("a credential is staged already")
        version = self.next_version
        self._staged(
            version=version,
            credential_kind=credential_kind(kind).value,
            fingerprint=_check_fingerprint(fingerprint),
        )
        return version

    @event(CredentialStaged)
    def _staged(self, version: int, credential_kind: str, fingerprint: str) -> None:
        self.staged_version = version
        self.staged_kind = CredentialKind(credential_kind)
        self.staged_fingerprint = fingerprint
        self.staged_validated = False
        self.last_version = max(self.last_version, version)

    def _staged_now(self) -> int:
        if not self.rotating or self.staged_version is None:
            raise ConnectorStateError("no credential is staged")
        return self.staged_version

    def accept_staged(self) -> tuple[int, int]:
        """The validator said yes: validated, the old version purged, the rotation complete,
        the connector resumed. (new version, purged version)"""
        version = self._staged_now()
        old = self.credential_version
        assert old is not None, "a rotation starts from a credential"
        self._validated(version=version)
        self._purged(version=old)
        assert self.staged_kind is not None and self.staged_fingerprint is not None
        self._rotation_completed(
            version=version,
            previous_version=old,
            credential_kind=self.staged_kind.value,
            fingerprint=self.staged_fingerprint,
        )
        self._resumed()
        return version, old

    @event(CredentialValidated)
    def _validated(self, version: int) -> None:
        self.staged_validated = True

    @event(CredentialPurged)
    def _purged(self, version: int) -> None:
        if self.credential_version == version:
            self.credential_version = None

    @event(RotationCompleted)
    def _rotation_completed(
        self, version: int, previous_version: int, credential_kind: str, fingerprint: str
    ) -> None:
        self.credential_version = version
        self.credential_kind = CredentialKind(credential_kind)
        self.fingerprint = fingerprint
        self.rotating = False
        self._clear_staged()

    def reject_staged(self, reason: str) -> int:
        """The validator said no (or a restarted rotation discards it): the staged
        version is rejected; the rotation is still on. Its version."""
        version = self._staged_now()
        self._rejected(version=version, reason=_check_reason(reason))
        return version

    @event(CredentialRejected)
    def _rejected(self, version: int, reason: str) -> None:
        self._clear_staged()

    def abandon_rotation(self) -> None:
        """After a rejection: back to the old credential, resumed."""
        if not self.rotating or self.staged_version is not None:
            raise ConnectorStateError("no rejected rotation to abandon")
        self._resumed()

    def _clear_staged(self) -> None:
        self.staged_version = None
        self.staged_kind = None
        self.staged_fingerprint = None
        self.staged_validated = False
