"""The `strongroom` entry point tunes the garbage collector once start-up is done.

Run in a child process: freezing is for a process's start-up, and would keep this
test session's garbage alive.
"""

from __future__ import annotations

import subprocess
import sys

from infra.collector import GC_FIRST_GENERATION

PROBE = """
import atexit, gc, sys
atexit.register(lambda: print(gc.get_freeze_count(), gc.get_threshold()[0]))
from replay.cli import main
sys.argv = ["strongroom", "--version"]
print(gc.get_freeze_count(), gc.get_threshold()[0])
main()
"""


def test_the_entry_point_freezes_start_up_and_collects_the_young_less_often() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    before, _version, after = done.stdout.strip().splitlines()
    assert before == "0 700"  # CPython's defaults, before main()
    frozen, first = map(int, after.split())
    assert frozen > 10_000  # modules, click commands, ... out of the collector's scans
    assert first == GC_FIRST_GENERATION
