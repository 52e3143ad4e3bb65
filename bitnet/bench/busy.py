"""Another program busy on the host, for benchmarks of a laptop-like machine (``busy`` in bench specs).

    with busy_host("pinned"):
        ...  # measure

Conditions:
  ``idle``    nothing is started;
  ``pinned``  a Python busy loop pinned to the last core, in its own session (its own autogroup, like any
              other program a user runs: a browser, a compiler);
  ``bursty``  the same loop busy for 8 ms, then asleep for 8 ms: half a core in bursts, as a browser tab
              redrawing 60 times a second takes it;
  ``free``    the same loop, not pinned.

The loop starts before the body and is killed after it; it gets SIGKILL if this process dies (Linux).
`own_busy_load()` is the loops' share of the host's 1-minute load average: it stays raised for a minute or
two after a loop stops, so a run with the host idle right after a busy one must not count it as another
program's load. A bursty loop counts as a whole one (runnable at half of the kernel's 5 s samples: an upper
bound, so that it is never blamed on another program).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bitnet.bench.spec import BUSY_CONDITIONS
from bitnet.runtime.process import die_with_parent

__all__ = ["BURSTS_ARGV", "BUSY_CONDITIONS", "LOOP_ARGV", "busy_host", "own_busy_load"]

LOOP_ARGV = [sys.executable, "-c", "while True: pass"]
BURSTS_ARGV = [sys.executable, "-c",
              "import time\nwhile True:\n t = time.perf_counter() + 0.008\n"
              " while time.perf_counter() < t: pass\n time.sleep(0.008)"]  # fmt: skip
_SETTLE_S = 0.5  # let the scheduler place the loop before measuring
LOADAVG_TAU_S = 60.0  # the 1-minute load average: an exponential average with this time constant
LOADAVG_SAMPLE_S = 5.0  # Linux updates it every 5 s
_FORGET_S = 10 * LOADAVG_TAU_S  # a loop stopped longer ago adds < 5e-5

# (start, end) in time.monotonic() of the busy loops this process ran; end None while it runs
_history: list[tuple[float, float | None]] = []


def _share(now: float, history: list[tuple[float, float | None]]) -> float:
    total = 0.0
    for start, end in history:
        start -= LOADAVG_SAMPLE_S  # an update right after the loop started counted it for a whole period
        if start >= now:
            continue
        stop = now if end is None else min(end, now)
        total += math.exp(-(now - stop) / LOADAVG_TAU_S) - math.exp(-(now - start) / LOADAVG_TAU_S)
    return total


def own_busy_load(now: float | None = None, history: list[tuple[float, float | None]] | None = None) -> float:
    """The share of the 1-minute load average that our busy loops account for at `now` (time.monotonic()):
    each adds 1 while it runs, rising and decaying with the average's 60 s time constant. The kernel updates
    its figure every 5 s, so this takes each loop as started one update early and the larger of the value
    now and one update earlier: rounded so that the loops' share is never blamed on another program."""
    t = time.monotonic() if now is None else now
    h = _history if history is None else history
    return max(_share(t, h), _share(t - LOADAVG_SAMPLE_S, h))


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
    pin = (os.cpu_count() or 1) - 1 if condition in ("pinned", "bursty") else None
    proc = subprocess.Popen(
        BURSTS_ARGV if condition == "bursty" else LOOP_ARGV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_preexec(pin),  # noqa: PLW1509 - affinity and the parent-death signal only
    )
    start = time.monotonic()
    _history[:] = [(a, b) for a, b in _history if b is None or start - b < _FORGET_S]
    _history.append((start, None))
    try:
        time.sleep(_SETTLE_S)
        yield proc
    finally:
        proc.kill()
        proc.wait()
        _history[_history.index((start, None))] = (start, time.monotonic())
