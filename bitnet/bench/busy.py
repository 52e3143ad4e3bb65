"""Another program busy on the host, for benchmarks of a laptop-like machine (``busy`` in bench specs).

    with busy_host("pinned"):
        ...  # measure

Conditions:
  ``idle``    nothing is started;
  ``pinned``  a Python busy loop pinned to the last core, in its own session (its own autogroup, like any
              other program a user runs: a browser, a compiler);
  ``free``    the same loop, not pinned.

The loop starts before the body and is killed after it; it gets SIGKILL if this process dies (Linux).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bitnet.bench.spec import BUSY_CONDITIONS
from bitnet.runtime.process import die_with_parent

__all__ = ["BUSY_CONDITIONS", "busy_host"]

_LOOP = [sys.executable, "-c", "while True: pass"]
_SETTLE_S = 0.5  # let the scheduler place the loop before measuring


def _preexec(pin: int | None) -> Callable[[], None]:
    tie = die_with_parent()

    def run() -> None:
        if tie is not None:
            tie()
        if pin is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {pin})

    return run


@contextmanager
def busy_host(condition: str) -> Iterator[subprocess.Popen[bytes] | None]:
    """Run the body with `condition` (one of BUSY_CONDITIONS) on the host; yields the busy process."""
    if condition not in BUSY_CONDITIONS:
        raise ValueError(f"busy condition {condition!r}: choose one of {', '.join(BUSY_CONDITIONS)}.")
    if condition == "idle":
        yield None
        return
    pin = (os.cpu_count() or 1) - 1 if condition == "pinned" else None
    proc = subprocess.Popen(
        _LOOP,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_preexec(pin),  # noqa: PLW1509 - affinity and the parent-death signal only
    )
    try:
        time.sleep(_SETTLE_S)
        yield proc
    finally:
        proc.kill()
        proc.wait()
