"""Cipher (one AES-GCM set-up for many values) is seal/open_sealed, bound the same way."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.keyring import Cipher, DecryptionError, open_sealed, seal


@given(plaintext=st.binary(max_size=300), aad=st.binary(max_size=80))
def test_a_cipher_and_the_functions_open_each_others_blobs(plaintext: bytes, aad: bytes) -> None:
    key = secrets.token_bytes(32)
    cipher = Cipher(key)
    assert open_sealed(key, cipher.seal(plaintext, aad), aad) == plaintext
    assert cipher.open(seal(key, plaintext, aad), aad) == plaintext


def test_a_blob_opens_only_with_its_key_and_its_associated_data() -> None:
    key = secrets.token_bytes(32)
    cipher = Cipher(key)
    blob = cipher.seal(b"person@example.test", b"tenant|pii:s:e:email|1")
    assert cipher.seal(b"person@example.test", b"tenant|pii:s:e:email|1") != blob  # fresh nonce
    with pytest.raises(DecryptionError):
        cipher.open(blob, b"tenant|pii:s:e:other|1")
    with pytest.raises(DecryptionError):
        Cipher(secrets.token_bytes(32)).open(blob, b"tenant|pii:s:e:email|1")
    with pytest.raises(DecryptionError):
        cipher.open(blob[:-1] + bytes([blob[-1] ^ 1]), b"tenant|pii:s:e:email|1")
    with pytest.raises(DecryptionError):
        cipher.open(b"short", b"")
