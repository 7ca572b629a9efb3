"""The cyclic garbage collector, tuned for a long-running process (its entry point's)."""

from __future__ import annotations

import gc
from typing import Final

GC_FIRST_GENERATION: Final = 20_000
"""Net allocations between collections of the youngest generation (CPython: 700)."""


def tune_collector() -> None:
    """Once per process, after start-up: keep the cyclic garbage collector off what
    start-up made, and run it less often.

    What is imported and built by then (modules, the app and its routes, click's
    commands) lives as long as the process. ``gc.freeze`` takes it out of the
    collector's scans: a full collection walked ~70,000 such objects, ~40 ms on the
    2-core machine, during which the event loop stands still. The youngest generation
    is collected every 20,000 net allocations instead of 700: a page of 1,000 events
    allocates tens of thousands of short-lived objects, which reference counting frees
    anyway. Rebuild (benchmark row 8) spent ~0.55 s of ~3 s in the collector per
    100,000 events; ~0.03 s after this. Call it from a process's entry point, never
    from library code: frozen objects are never collected, which is right for a
    process's start-up, wrong for a test session.
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_FIRST_GENERATION, second, third)
