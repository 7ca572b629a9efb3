from __future__ import annotations

import base64
from pathlib import Path

import pytest

from infra.settings import Settings, SettingsError


def test_defaults_match_the_documented_ones() -> None:
    s = Settings.from_env({})
    assert (s.data_dir, s.host, s.port) == (Path(".strongroom"), "127.0.0.1", 8700)
    assert s.embedded_postgres and s.embedded_nats
    assert s.load_master_key() is None


def test_variables_are_read_and_flags_win() -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    env = {
        "STRONGROOM_PORT": "9000",
        "STRONGROOM_HOST": "0.0.0.0",
        "STRONGROOM_DATABASE_URL": "postgresql://app:pw@db:5432/strongroom",
        "STRONGROOM_NATS_URL": "nats://a:4222,nats://b:4222",
        "STRONGROOM_MASTER_KEY": key,
    }
    s = Settings.from_env(env, port=9100)
    assert s.port == 9100 and s.host == "0.0.0.0"
    assert not s.embedded_postgres and not s.embedded_nats
    assert s.load_master_key() == bytes(range(32))


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("STRONGROOM_PORT", "http", "integer from 1 to 65535"),
        ("STRONGROOM_PORT", "70000", "integer from 1 to 65535"),
        ("STRONGROOM_DATABASE_URL", "mysql://x@y/z", "postgresql://"),
        ("STRONGROOM_NATS_URL", "http://x:4222", "nats://"),
        ("STRONGROOM_MASTER_KEY", "c2hvcnQ=", "32 random bytes"),
        ("STRONGROOM_MASTER_KEY", "not base64 at all!", "32 random bytes"),
        ("STRONGROOM_LOG_LEVEL", "LOUD", "one of DEBUG"),
        ("STRONGROOM_HOST", "bad host", "host name"),
        ("STRONGROOM_DB_POOL_SIZE", "0", "integer from 1 to 500"),
        ("STRONGROOM_NATS_REPLICAS", "7", "integer from 1 to 5"),
        ("STRONGROOM_NATS_MAX_AGE", "10", "integer from 60 to"),
        ("STRONGROOM_NATS_DUPLICATE_WINDOW", "0", "integer from 1 to 86400"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_was_expected(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable + ": expected")
    assert expected in str(caught.value)


def test_master_key_never_appears_in_repr() -> None:
    key = base64.b64encode(b"k" * 32).decode()
    s = Settings.from_env({"STRONGROOM_MASTER_KEY": key})
    assert key not in repr(s) and "kkkk" not in repr(s)


def test_master_key_file_is_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.key"
    good.write_text(base64.b64encode(b"x" * 32).decode() + "\n")
    assert Settings.from_env({"STRONGROOM_MASTER_KEY_FILE": str(good)}).load_master_key() == (
        b"x" * 32
    )
    with pytest.raises(SettingsError, match="STRONGROOM_MASTER_KEY_FILE: expected a readable"):
        missing = Settings.from_env({"STRONGROOM_MASTER_KEY_FILE": str(tmp_path / "nope")})
        missing.load_master_key()


def test_command_line_flags_are_checked_like_variables() -> None:
    with pytest.raises(SettingsError, match=r"^--port: expected an integer"):
        Settings.from_env({}, port=0)
    with pytest.raises(SettingsError, match=r"^--host: expected a host name"):
        Settings.from_env({}, host="localhost:8700")
    assert Settings.from_env({}, host="::1", port=8701).port == 8701


def test_a_host_with_a_port_is_refused() -> None:
    with pytest.raises(SettingsError, match="STRONGROOM_HOST"):
        Settings.from_env({"STRONGROOM_HOST": "example.com:80"})


def test_an_owner_url_alone_is_refused_rather_than_silently_using_the_embedded_server() -> None:
    with pytest.raises(SettingsError, match=r"^STRONGROOM_DATABASE_URL: expected to be set too"):
        Settings.from_env({"STRONGROOM_OWNER_DATABASE_URL": "postgresql://o:p@db:5432/s"})
