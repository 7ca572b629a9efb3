"""Load generation: closed loop (N writers, each repeating one operation until a deadline)
and open loop (operations started on a fixed schedule, however long earlier ones take).

Closed loop: every writer runs its operation back to back. An operation started before
the end of the warm-up is not counted; the rate is the counted events divided by the time
from the end of the warm-up to the end of the last counted operation. Latencies (seconds,
from ``time.perf_counter``) are kept in a compact ``array('d')``.
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
PacedOp = Callable[[int], Awaitable[float]]
"""Operation number ``n`` of an open loop; returns the ``time.perf_counter()`` its latency
is measured from (the latency ends when it returns)."""


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
    shed: int = 0
    """Operations an open loop did not start because too many were in flight."""

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
        self.shed += other.shed


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
    shed: int = 0

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
        shed=tally.shed,
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


async def run_paced(op: PacedOp, rate: float, window: Window, *, max_in_flight: int) -> Measurement:
    """Open loop: start operation ``n`` at ``t0 + n / rate`` whether or not earlier ones
    have finished (a late tick starts every operation that is due), until the deadline;
    then wait for all of them. An operation due while ``max_in_flight`` are running is
    not started (``shed``): an overloaded system shows as a lower rate, not as a run
    that never ends. An operation counts when its latency starts after the warm-up; the
    rate is the counted operations over the time from the end of the warm-up to the end
    of the last counted one."""
    interval = 1.0 / rate
    start = time.perf_counter()
    counted_from = start + window.warmup
    deadline = counted_from + window.measure
    tally = Tally()
    running: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        try:
            since = await op(n)
        except Exception as e:
            tally.fail(e)
            return
        tally.record(since, time.perf_counter(), 1, counted_from)

    n = 0
    while (now := time.perf_counter()) < deadline:
        due = int((now - start) / interval) + 1
        while n < due:
            if len(running) < max_in_flight:
                task = asyncio.create_task(one(n))
                running.add(task)
                task.add_done_callback(running.discard)
            else:
                tally.shed += 1
            n += 1
        await asyncio.sleep(max(start + n * interval - time.perf_counter(), 0.0))
    await asyncio.gather(*running)
    return summarize(tally, counted_from)
