"""Run a command and report its peak resident memory and wall time (``python -m bitnet.runtime.rusage ARGV``).

The benchmarks launch engines through `RuntimeSupervisor` (asyncio), which reaps its children without
their resource usage. This wrapper sits between: it starts ARGV (same stdin/stdout/stderr, tied to the
wrapper's life with PR_SET_PDEATHSIG), waits for it with ``os.wait4`` and, after ARGV's own output,
writes one line to stderr::

    bitnet-rusage: max_rss_kb=1520312 wall_s=2.481

``max_rss_kb`` is the kernel's ru_maxrss of that process (its peak RSS, KiB); ``wall_s`` runs from just
before the start to the end of the wait. The exit status is ARGV's (128 + N when a signal N ended it).
SIGINT, SIGTERM and SIGHUP sent to the wrapper are passed on to ARGV.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bitnet.runtime.process import die_with_parent

__all__ = ["RUSAGE_LINE", "Usage", "parse_rusage", "rusage_command"]

RUSAGE_LINE = "bitnet-rusage: max_rss_kb={rss} wall_s={wall:.3f}"
_RUSAGE_RE = re.compile(r"^bitnet-rusage: max_rss_kb=(\d+) wall_s=([0-9.]+)$", re.M)


@dataclass(frozen=True)
class Usage:
    """What the wrapper reported about one process."""

    max_rss_kb: int
    wall_s: float

    @property
    def max_rss_mb(self) -> float:
        return self.max_rss_kb / 1024


def rusage_command(argv: Sequence[str], python: str | None = None) -> list[str]:
    """`argv` wrapped so that its peak RSS and wall time are reported (see `parse_rusage`)."""
    return [python or sys.executable, "-m", "bitnet.runtime.rusage", "--", *map(str, argv)]


def parse_rusage(stderr: str) -> Usage | None:
    """The wrapper's report from a process's stderr (the last one), or None if there is none."""
    found = _RUSAGE_RE.findall(stderr)
    if not found:
        return None
    rss, wall = found[-1]
    return Usage(int(rss), float(wall))


def main(args: Sequence[str]) -> int:
    argv = list(args[1:] if args and args[0] == "--" else args)
    if not argv:
        print("usage: python -m bitnet.runtime.rusage -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, preexec_fn=die_with_parent())  # noqa: PLW1509 - only prctl
    except OSError as exc:
        print(f"bitnet.runtime.rusage: cannot start {argv[0]}: {exc}", file=sys.stderr)
        return 127

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue
    wall = time.monotonic() - start
    sys.stdout.flush()
    print(RUSAGE_LINE.format(rss=usage.ru_maxrss, wall=wall), file=sys.stderr, flush=True)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
