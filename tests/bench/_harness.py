"""Closed-loop load generation: N writers, each repeating one operation until a deadline.

Every writer runs its operation back to back. An operation started before the end of
the warm-up is not counted; the rate is the counted events divided by the time from the
end of the warm-up to the end of the last counted operation. Latencies (seconds, from
``time.perf_counter``) are kept in a compact ``array('d')``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

AsyncOp = Callable[[int], Awaitable[int]]
"""One command by writer ``i``; returns the number of events it wrote."""
SyncOp = Callable[[int], int]


@dataclass(frozen=True, slots=True)
class Window:
    """Warm-up and measuring time of one row, in seconds."""

    warmup: float
    measure: float


@dataclass(slots=True)
class Tally:
    """What one writer (or all of them, merged) did."""

    latencies: array[float] = field(default_factory=lambda: array("d"))
    events: int = 0
    total_events: int = 0
    errors: int = 0
    first_error: str | None = None
    last_end: float = 0.0

    def record(self, started: float, ended: float, events: int, counted_from: float) -> None:
        self.total_events += events
        if started >= counted_from:
            self.latencies.append(ended - started)
            self.events += events
            self.last_end = max(self.last_end, ended)

    def fail(self, error: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(error).__name__}: {error}"

    def merge(self, other: Tally) -> None:
        self.latencies.extend(other.latencies)
        self.events += other.events
        self.total_events += other.total_events
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.last_end = max(self.last_end, other.last_end)


@dataclass(frozen=True, slots=True)
class Measurement:
    events: int
    commands: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    first_error: str | None
    total_events: int
    """Events written including the warm-up (for checks against the log head)."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def percentile(ordered: array[float] | list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(tally: Tally, counted_from: float) -> Measurement:
    ordered = sorted(tally.latencies)
    return Measurement(
        events=tally.events,
        commands=len(ordered),
        seconds=max(tally.last_end - counted_from, 0.0),
        p50_ms=percentile(ordered, 0.50) * 1000,
        p99_ms=percentile(ordered, 0.99) * 1000,
        errors=tally.errors,
        first_error=tally.first_error,
        total_events=tally.total_events,
    )


async def run_async(op: AsyncOp, writers: int, window: Window) -> Measurement:
    """Run ``writers`` coroutines over ``op`` with asyncio.gather."""
    counted_from = time.perf_counter() + window.warmup
    deadline = counted_from + window.measure
    tally = Tally()

    async def writer(index: int) -> None:
        while (started := time.perf_counter()) < deadline:
            try:
                events = await op(index)
            except Exception as e:
                tally.fail(e)
                continue
            tally.record(started, time.perf_counter(), events, counted_from)

    await asyncio.gather(*(writer(i) for i in range(writers)))
    return summarize(tally, counted_from)


def run_threads(op: SyncOp, writers: int, window: Window) -> Measurement:
    """Run ``writers`` threads over ``op``; each keeps its own tally, merged at the end."""
    counted_from = time.perf_counter() + window.warmup
    deadline = counted_from + window.measure
    tallies = [Tally() for _ in range(writers)]

    def writer(index: int) -> None:
        tally = tallies[index]
        while (started := time.perf_counter()) < deadline:
            try:
                events = op(index)
            except Exception as e:
                tally.fail(e)
                continue
            tally.record(started, time.perf_counter(), events, counted_from)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = Tally()
    for tally in tallies:
        merged.merge(tally)
    return summarize(merged, counted_from)
