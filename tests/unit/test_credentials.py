"""Secrets' formats and checks (no I/O)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from infra.credentials import (
    API_KEY_PREFIX,
    PasswordHasher,
    PasswordPolicy,
    WeakPasswordError,
    api_key_checksum_ok,
    new_api_key,
    new_recovery_codes,
    new_totp_secret,
    normalize_password,
    recovery_code_hash,
    totp_match,
)
from infra.ratelimit import Gcra

AT = datetime(2026, 11, 24, 12, 0, 15, tzinfo=UTC)


def test_an_api_key_has_the_scannable_prefix_and_a_valid_checksum() -> None:
    key = new_api_key()
    assert key.startswith(API_KEY_PREFIX)
    assert api_key_checksum_ok(key)


@pytest.mark.parametrize("position", [len(API_KEY_PREFIX), len(API_KEY_PREFIX) + 10, -1])
def test_one_changed_character_fails_the_checksum(position: int) -> None:
    key = new_api_key()
    changed = "B" if key[position] != "B" else "C"
    typo = key[:position] + changed + (key[position + 1 :] if position != -1 else "")
    assert not api_key_checksum_ok(typo)


def test_keys_carry_at_least_128_random_bits() -> None:
    random_part = new_api_key()[len(API_KEY_PREFIX) :].split("_")[0]
    assert len(random_part) * math.log2(62) >= 128


def test_recovery_codes_are_ten_distinct_codes_of_at_least_112_bits() -> None:
    codes = new_recovery_codes()
    assert len(set(codes)) == 10
    for code in codes:
        assert len(code.replace("-", "")) * 5 >= 112
    assert recovery_code_hash(codes[0]) == recovery_code_hash(codes[0].upper().replace("-", " "))


def test_totp_secrets_are_160_bits() -> None:
    assert len(new_totp_secret()) * 5 == 160


def test_a_totp_code_matches_its_step_and_one_step_of_drift_but_never_twice() -> None:
    secret = new_totp_secret()
    totp = pyotp.TOTP(secret)
    code = totp.at(AT)
    step = totp_match(secret, code, at=AT, after_step=0)
    assert step == int(AT.timestamp()) // 30
    assert totp_match(secret, code, at=AT + timedelta(seconds=30), after_step=0) == step
    assert totp_match(secret, code, at=AT + timedelta(seconds=90), after_step=0) is None
    assert totp_match(secret, code, at=AT, after_step=step) is None
    assert totp_match(secret, "12345", at=AT, after_step=0) is None


def test_passwords_are_8_to_128_characters_after_normalization() -> None:
    with pytest.raises(WeakPasswordError):
        normalize_password("short")
    with pytest.raises(WeakPasswordError):
        normalize_password("x" * 129)
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in "password")  # NFKC folds these
    assert normalize_password(fullwidth) == b"password"


async def test_a_password_hash_is_a_phc_argon2id_string_that_verifies() -> None:
    hasher = PasswordHasher(PasswordPolicy(memory_kib=19 * 1024, iterations=2, lanes=1))
    phc = await hasher.hash("correct horse")
    assert phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await hasher.verify(phc, "correct horse")
    assert not await hasher.verify(phc, "correct horsf")
    assert not await hasher.verify(None, "correct horse")
    assert not hasher.needs_rehash(phc)
    stronger = PasswordHasher(PasswordPolicy(memory_kib=32 * 1024, iterations=3, lanes=1))
    assert stronger.needs_rehash(phc)


def test_gcra_allows_a_burst_then_the_sustained_rate() -> None:
    now = [0.0]
    limit = Gcra("test", rate=10, period=10, burst=3, clock=lambda: now[0])
    assert [limit.check("k").allowed for _ in range(4)] == [True, True, True, False]
    assert limit.check("other").allowed
    now[0] = 1.0
    assert limit.check("k").allowed
    assert not limit.check("k").allowed
    denied = limit.check("k")
    assert denied.retry_after == 1
