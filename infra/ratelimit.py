"""GCRA rate limits (the generic cell rate algorithm), in this process's memory.

One limiter per policy; a key is (tenant, principal) or an IP address. GCRA
keeps one timestamp per key (the theoretical arrival time), allows bursts of
``burst`` and a sustained ``rate`` per ``period``. Limits are per API process:
behind a load balancer with N processes a client gets up to N times the rate.
The hard limit on failed logins (100 per account per hour) is not here: it is
counted in PostgreSQL (infra/sessions.py), so it holds across processes.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from domain.errors import RateLimitedError

MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    reset_seconds: int
    retry_after: int


class Gcra:
    def __init__(
        self,
        name: str,
        *,
        rate: int,
        period: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.rate = rate
        self.period = period
        self.burst = burst or rate
        self._interval = period / rate
        self._tolerance = self._interval * (self.burst - 1)
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._clock = clock

    @property
    def policy(self) -> str:
        """The ``RateLimit-Policy`` item (draft-ietf-httpapi-ratelimit-headers): the
        sustained quota per window; GCRA also lets ``burst`` through at once."""
        return f'"{self.name}";q={self.rate};w={int(self.period)}'

    def check(self, key: str) -> Decision:
        now = self._clock()
        tat = max(self._tat.get(key, now), now)
        allow_at = tat - self._tolerance
        if now < allow_at:
            retry = allow_at - now
            return Decision(False, 0, math.ceil(tat - now), math.ceil(retry))
        new_tat = tat + self._interval
        self._tat[key] = new_tat
        self._tat.move_to_end(key)
        if len(self._tat) > MAX_KEYS:
            self._tat.popitem(last=False)
        slack = now - (new_tat - self._tolerance)
        remaining = int(slack / self._interval) + 1 if slack >= 0 else 0
        return Decision(True, remaining, math.ceil(new_tat - now), 0)

    def take(self, key: str) -> Decision:
        decision = self.check(key)
        if not decision.allowed:
            raise RateLimitedError(
                "too many requests; slow down",
                retry_after=decision.retry_after,
                policy=self.policy,
            )
        return decision


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The policies the API applies (per process)."""

    principal: Gcra
    anonymous_ip: Gcra
    login_ip: Gcra

    @classmethod
    def default(cls, per_principal_per_minute: int = 6000) -> RateLimits:
        return cls(
            principal=Gcra(
                "principal",
                rate=per_principal_per_minute,
                period=60,
                burst=max(1, per_principal_per_minute // 10),
            ),
            anonymous_ip=Gcra("ip", rate=300, period=60, burst=60),
            login_ip=Gcra("login-ip", rate=30, period=60, burst=10),
        )
