"""Secrets people and programs present: passwords, tokens, API keys, TOTP, recovery codes.

Nothing here stores anything. Each secret has one function that makes it and
one that turns it into what may be stored: a PHC Argon2id string (passwords),
SHA-256 (session and invite tokens, recovery codes: high-entropy, so a plain
hash is enough), or HMAC-SHA256 under a server secret (API keys, and e-mail
lookup keys under a per-tenant key).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import datetime

import pyotp
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from domain.errors import InvalidError

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 128
API_KEY_PREFIX = "sr_live_"
SESSION_PREFIX = "srs_"
INVITE_PREFIX = "sri_"
PLATFORM_PREFIX = "srp_"
TOKEN_BYTES = 24
"""192 bits for every random token (sessions, invites, API keys)."""
RECOVERY_CODES = 10
_RECOVERY_BYTES = 15
"""120 bits per recovery code."""


class WeakPasswordError(InvalidError):
    pass


def derive_key(master: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose, derived from a secret key (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        master
    )


def sha256(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def keyed_hash(key: bytes, value: str) -> bytes:
    return hmac.new(key, value.encode(), hashlib.sha256).digest()


# ---- passwords ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    """Argon2id parameters: OWASP's floor is m=19 MiB, t=2, p=1."""

    memory_kib: int = 19 * 1024
    iterations: int = 2
    lanes: int = 1

    @property
    def phc_parameters(self) -> str:
        return f"m={self.memory_kib},t={self.iterations},p={self.lanes}"


def normalize_password(password: str) -> bytes:
    """NFKC, as NIST SP 800-63B asks, then the length rules (no composition rules)."""
    normalized = unicodedata.normalize("NFKC", password)
    if len(normalized) < MIN_PASSWORD_CHARS:
        raise WeakPasswordError(f"a password has at least {MIN_PASSWORD_CHARS} characters")
    if len(normalized) > MAX_PASSWORD_CHARS:
        raise WeakPasswordError(f"a password has at most {MAX_PASSWORD_CHARS} characters")
    return normalized.encode()


class PasswordHasher:
    """Argon2id PHC strings; hashing runs in a thread (it takes tens of ms)."""

    def __init__(self, policy: PasswordPolicy | None = None) -> None:
        self.policy = policy or PasswordPolicy()
        self._dummy: str | None = None

    def _hash(self, material: bytes) -> str:
        kdf = Argon2id(
            salt=secrets.token_bytes(16),
            length=32,
            iterations=self.policy.iterations,
            lanes=self.policy.lanes,
            memory_cost=self.policy.memory_kib,
        )
        return kdf.derive_phc_encoded(material)

    async def hash(self, password: str) -> str:
        material = normalize_password(password)
        return await asyncio.to_thread(self._hash, material)

    @staticmethod
    def _verify(material: bytes, phc: str) -> bool:
        try:
            Argon2id.verify_phc_encoded(material, phc)
        except (InvalidKey, ValueError):
            return False
        return True

    async def verify(self, phc: str | None, password: str) -> bool:
        """Whether ``password`` matches; with ``phc`` None, spends the same time and
        answers False (so an unknown account is not told apart by timing)."""
        material = unicodedata.normalize("NFKC", password).encode()[: MAX_PASSWORD_CHARS * 4]
        if phc is None:
            if self._dummy is None:
                self._dummy = await asyncio.to_thread(self._hash, b"not a password")
            await asyncio.to_thread(self._verify, material, self._dummy)
            return False
        return await asyncio.to_thread(self._verify, material, phc)

    def needs_rehash(self, phc: str) -> bool:
        parts = phc.split("$")
        return len(parts) != 6 or parts[1] != "argon2id" or parts[3] != self.policy.phc_parameters


# ---- tokens -------------------------------------------------------------------------


def base62(data: bytes, width: int | None = None) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(_BASE62[rest])
    text = "".join(reversed(digits)) or "0"
    return text.rjust(width, "0") if width else text


_TOKEN_CHARS = 33
"""base62 digits of TOKEN_BYTES random bytes, zero-padded."""


def new_token(prefix: str) -> str:
    return prefix + base62(secrets.token_bytes(TOKEN_BYTES), _TOKEN_CHARS)


def token_shape(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}[0-9A-Za-z]{{{_TOKEN_CHARS}}}$")


_API_KEY = re.compile(rf"^{API_KEY_PREFIX}([0-9A-Za-z]{{{_TOKEN_CHARS}}})_([0-9A-Za-z]{{6}})$")


def _crc(random_part: str) -> str:
    return base62(zlib.crc32(random_part.encode()).to_bytes(4, "big"), 6)


def new_api_key() -> str:
    """``sr_live_<33 base62 = 192 random bits>_<crc32 of them, 6 base62>``."""
    random_part = base62(secrets.token_bytes(TOKEN_BYTES), _TOKEN_CHARS)
    return f"{API_KEY_PREFIX}{random_part}_{_crc(random_part)}"


def api_key_checksum_ok(key: str) -> bool:
    """The format and the checksum: a typo is refused before any database lookup."""
    match = _API_KEY.fullmatch(key)
    return match is not None and hmac.compare_digest(match.group(2), _crc(match.group(1)))


def api_key_display_prefix(key: str) -> str:
    """What lists show: the type prefix and the first 4 random characters."""
    return key[: len(API_KEY_PREFIX) + 4]


# ---- TOTP (RFC 6238) ------------------------------------------------------------------

TOTP_STEP_SECONDS = 30


def new_totp_secret() -> str:
    """160 random bits, base32 (32 characters), as RFC 4226 recommends."""
    return pyotp.random_base32(32)


def totp_uri(secret: str, *, account: str, issuer: str) -> str:
    return pyotp.TOTP(secret, interval=TOTP_STEP_SECONDS).provisioning_uri(
        name=account, issuer_name=issuer
    )


def totp_match(secret: str, code: str, *, at: datetime, after_step: int) -> int | None:
    """The time step ``code`` is valid for (±1 step of drift), if it is later than
    ``after_step``: a code accepted once is never accepted again."""
    if not re.fullmatch(r"\d{6}", code):
        return None
    totp = pyotp.TOTP(secret, interval=TOTP_STEP_SECONDS)
    now_step = int(at.timestamp()) // TOTP_STEP_SECONDS
    for step in (now_step - 1, now_step, now_step + 1):
        if step > after_step and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


# ---- recovery codes -----------------------------------------------------------------

_RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """Each 24 base32 characters (120 bits), shown in six groups of 4."""
    codes = []
    for _ in range(count):
        number = int.from_bytes(secrets.token_bytes(_RECOVERY_BYTES), "big")
        chars = []
        for _ in range(24):
            number, rest = divmod(number, 32)
            chars.append(_RECOVERY_ALPHABET[rest])
        text = "".join(chars)
        codes.append("-".join(text[i : i + 4] for i in range(0, 24, 4)))
    return codes


def recovery_code_hash(code: str) -> bytes:
    """SHA-256 of the code without separators or case."""
    return sha256(re.sub(r"[\s-]", "", code).lower())
