"""Settings: one frozen object built from ``STRONGROOM_*`` environment variables.

Everything is validated when the object is built, so a bad value stops the
process at start with a message that names the variable and what was expected.
Nothing else in the code reads the environment.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

PREFIX = "STRONGROOM_"
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


class SettingsError(ValueError):
    """A ``STRONGROOM_*`` variable holds a value we cannot use."""

    def __init__(self, variable: str, expected: str) -> None:
        super().__init__(f"{variable}: expected {expected}")
        self.variable = variable
        self.expected = expected


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The whole configuration of one Strongroom process."""

    data_dir: Path = Path(".strongroom")
    host: str = "127.0.0.1"
    port: int = 8700
    database_url: str | None = field(default=None, repr=False)  # holds a password
    """App-role connection (no BYPASSRLS). None: the embedded server."""
    owner_database_url: str | None = field(default=None, repr=False)  # holds a password
    """Owner-role connection used only by migrations. Defaults to ``database_url``."""
    cli_database_url: str | None = field(default=None, repr=False)  # holds a password
    """Investigation-role connection (``strongroom_cli``) for ``events``, ``state``,
    ``timeline``, ``verify``, ``export``... Needed with an external ``database_url``."""
    nats_url: str | None = None
    master_key: bytes | None = field(default=None, repr=False)
    master_key_file: Path | None = None
    log_host: str = "strongroom.localhost"
    """Host part of every tenant log origin: ``<log_host>/t/<tenant uuid>``."""
    db_pool_size: int = 16
    log_level: str = "INFO"
    nats_replicas: int = 1
    """JetStream stream replicas (3 in a 3-node cluster)."""
    nats_max_age: int = 7 * 24 * 3600
    """Seconds JetStream keeps an event message (Postgres keeps the log forever)."""
    nats_duplicate_window: int = 120
    """Seconds within which a re-published event (same Nats-Msg-Id) is dropped."""
    rate_limit_per_minute: int = 6000
    """Requests per minute per principal (session or API key), per API process."""
    notary_key: str | None = field(default=None, repr=False)
    """Notary signing key(s), ``PRIVATE+KEY+...`` one per line; read by the notary only."""
    notary_key_file: Path | None = None
    notary_interval: int = 60
    """Seconds between the notary's rounds."""
    checkpoint_dir: Path | None = None
    """Append-only directory of checkpoint files. Default: ``<data dir>/checkpoints``."""
    witnesses: str = ""
    """Witnesses the notary asks for cosignatures: ``<vkey> <url>[, <vkey> <url> ...]``."""

    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def embedded_nats(self) -> bool:
        return self.nats_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``); ``overrides`` win (CLI flags)."""
        source = os.environ if env is None else env
        values: dict[str, object] = {}

        def take(name: str, parse: Callable[[str, str], object]) -> None:
            raw = source.get(PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = parse(PREFIX + name.upper(), raw)

        take("data_dir", lambda _v, raw: Path(raw))
        take("host", _parse_host)
        take("port", _parse_port)
        take("database_url", _postgres_url)
        take("owner_database_url", _postgres_url)
        take("cli_database_url", _postgres_url)
        take("nats_url", _nats_url)
        take("master_key", _parse_master_key)
        take("master_key_file", lambda _v, raw: Path(raw))
        take("log_host", _parse_log_host)
        take("db_pool_size", _int_between(1, 500))
        take("log_level", _one_of("DEBUG", "INFO", "WARNING", "ERROR"))
        take("nats_replicas", _int_between(1, 5))
        take("nats_max_age", _int_between(60, 365 * 24 * 3600))
        take("nats_duplicate_window", _int_between(1, 24 * 3600))
        take("rate_limit_per_minute", _int_between(1, 10_000_000))
        take("notary_key", lambda _v, raw: raw)
        take("notary_key_file", lambda _v, raw: Path(raw))
        take("notary_interval", _int_between(1, 24 * 3600))
        take("checkpoint_dir", lambda _v, raw: Path(raw))
        take("witnesses", lambda _v, raw: raw)
        flags: dict[str, Callable[[str, str], object]] = {
            "host": _parse_host,
            "port": _parse_port,
            "log_host": _parse_log_host,
        }
        for key, value in overrides.items():
            if value is None:
                continue
            parse = flags.get(key)
            values[key] = parse("--" + key.replace("_", "-"), str(value)) if parse else value
        if "owner_database_url" in values and "database_url" not in values:
            raise SettingsError(
                PREFIX + "DATABASE_URL", "to be set too when STRONGROOM_OWNER_DATABASE_URL is"
            )
        return cls(**values)  # type: ignore[arg-type]

    @property
    def checkpoint_directory(self) -> Path:
        return self.checkpoint_dir or self.data_dir / "checkpoints"

    def load_notary_key_text(self) -> str | None:
        """The notary's signing keys as text: ``STRONGROOM_NOTARY_KEY``, else the key file."""
        if self.notary_key is not None:
            return self.notary_key
        if self.notary_key_file is not None:
            try:
                return self.notary_key_file.read_text()
            except OSError as e:
                raise SettingsError(
                    PREFIX + "NOTARY_KEY_FILE", f"a readable file ({e.strerror})"
                ) from None
        return None

    def load_master_key(self) -> bytes | None:
        """The key-encryption key: ``STRONGROOM_MASTER_KEY``, else the key file, else None."""
        if self.master_key is not None:
            return self.master_key
        if self.master_key_file is not None:
            try:
                raw = self.master_key_file.read_text().strip()
            except OSError as e:
                raise SettingsError(
                    PREFIX + "MASTER_KEY_FILE", f"a readable file ({e.strerror})"
                ) from None
            return _parse_master_key(PREFIX + "MASTER_KEY_FILE", raw)
        return None


def _parse_host(variable: str, raw: str) -> str:
    if not _HOSTNAME.fullmatch(raw) and raw not in ("::1", "::"):
        raise SettingsError(variable, "a host name or IP address, e.g. 127.0.0.1")
    return raw


def _parse_port(variable: str, raw: str) -> int:
    return _int_between(1, 65535)(variable, raw)


def _int_between(low: int, high: int) -> Callable[[str, str], int]:
    def parse(variable: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(variable, f"an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise SettingsError(variable, f"an integer from {low} to {high}")
        return value

    return parse


def _one_of(*choices: str) -> Callable[[str, str], str]:
    def parse(variable: str, raw: str) -> str:
        if raw.upper() not in choices:
            raise SettingsError(variable, "one of " + ", ".join(choices))
        return raw.upper()

    return parse


def _postgres_url(variable: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname or parts.query):
        raise SettingsError(variable, "a URL like postgresql://user:password@host:5432/dbname")
    return raw


def _nats_url(variable: str, raw: str) -> str:
    for server in raw.split(","):
        parts = urlsplit(server.strip())
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise SettingsError(
                variable, "a URL like nats://host:4222 (comma-separated for a cluster)"
            )
    return raw


def _parse_master_key(variable: str, raw: str) -> bytes:
    expected = "32 random bytes in base64 (e.g. `openssl rand -base64 32`)"
    try:
        key = base64.b64decode(raw.strip() + "=" * (-len(raw.strip()) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise SettingsError(variable, expected) from None
    if len(key) != 32:
        raise SettingsError(variable, expected)
    return key


def _parse_log_host(variable: str, raw: str) -> str:
    if not _HOSTNAME.fullmatch(raw):
        raise SettingsError(variable, "a host name such as audit.example.com")
    return raw.lower()
