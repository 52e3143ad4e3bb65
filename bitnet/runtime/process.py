"""Process plumbing shared by `bitnet.runtime.runtime`, `.supervisor` and `.server`.

Children are started in their own session (``start_new_session=True``), so their pid is also their
process-group id and one ``killpg`` reaches everything they spawned. On Linux they also get
``PR_SET_PDEATHSIG``: if we die, even by SIGKILL, the kernel kills them, so an engine never outlives us.
The CLIs turn SIGINT, SIGTERM and SIGHUP into `StopRequested` (`stop_signals`), so closing a terminal
or ``kill`` unwinds through the same clean-up as Ctrl-C.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import ctypes.util
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TextIO

from bitnet.errors import RuntimeConfigurationError, StopRequested, tail_lines

SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)
_TAIL_BYTES = 64 * 1024  # raw stderr kept to cut the last lines from
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = tuple(
    sig for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if sig
)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM/SIGHUP into `StopRequested`; ignore repeats while we clean up.

    Only the main thread can set signal handlers; elsewhere this does nothing (Ctrl-C still raises
    KeyboardInterrupt in the main thread). The previous handlers come back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
        raise StopRequested(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    return prctl


_PRCTL = _load_prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies, however it dies.

    Linux only (None elsewhere: children are still stopped by our handlers, but not after SIGKILL).
    The kernel sends the signal when the *thread* that started the child ends, so call this from a
    thread that outlives the child: the main thread, or one that waits for the child (as
    `BitNetRuntime.run_inference` and the supervisor's event loop do). If we died between fork and
    prctl, the child exits at once instead of running on unparented.
    """
    if _PRCTL is None:
        return None
    prctl, parent = _PRCTL, os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(128 + signal.SIGKILL)

    return preexec


def check_command(command: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Return `command` as a list of str after checking it is a non-empty argv (not a shell string)."""
    if isinstance(command, (str, bytes)) or not isinstance(command, Sequence):
        raise RuntimeConfigurationError(
            f"command must be a list of arguments (an argv, not a shell string). Got {command!r}."
        )
    if not command:
        raise RuntimeConfigurationError("command must not be empty: give at least the program to run.")
    argv = []
    for arg in command:
        if not isinstance(arg, (str, os.PathLike)):
            raise RuntimeConfigurationError(f"command arguments must be strings or paths. Got {arg!r}.")
        argv.append(os.fspath(arg))
    return argv


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of `env` after checking it maps non-empty names (without "=") to strings."""
    if not isinstance(env, Mapping):
        raise RuntimeConfigurationError(f"env must be a mapping of str to str, or None. Got {env!r}.")
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key or "=" in key:
            raise RuntimeConfigurationError(
                f"env must map variable names to string values. Got {key!r}: {value!r}."
            )
    return dict(env)


def check_timeout(timeout: object, field: str = "timeout") -> float | None:
    """Return `timeout` as float seconds (None = no limit) after checking it is finite and > 0."""
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise RuntimeConfigurationError(
            f"{field} must be a finite number of seconds > 0, or None for no limit. Got {timeout!r}."
        )
    return float(timeout)


def exit_message(argv: Sequence[str], returncode: int) -> str:
    """Say how `argv` ended (exit status or signal) and where to look next."""
    name = Path(argv[0]).name
    if returncode < 0:
        try:
            what = f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            what = f"was killed by signal {-returncode}"
    else:
        what = f"exited with status {returncode}"
    return (
        f"{name} {what}.\nCommand: {shlex.join(argv)}\n"
        "Its stderr says why; `BitNetRuntime.diagnostics()` (CLI: --diagnostics) checks the engine "
        "and the model."
    )


def start_failure_message(argv: Sequence[str], exc: OSError, build_dir: Path) -> str:
    """Say why `argv` could not start (`exc` from exec) and how to fix it."""
    program = argv[0]
    build = f"invoke build --build-dir {shlex.quote(str(build_dir))}"
    if isinstance(exc, PermissionError):
        return (
            f"cannot start {program}: permission denied. Make it executable (chmod +x "
            f"{shlex.quote(program)}) or rebuild the engine with `{build}`."
        )
    if isinstance(exc, FileNotFoundError):
        return (
            f"cannot start {program}: no such file (or its interpreter is missing). Check the path, "
            f"or build the engine with `{build}`."
        )
    return f"cannot start {program}: {exc.strerror or exc}. Check the path and rebuild with `{build}`."


def signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (POSIX) or to `pid` itself; gone is fine."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(pid, sig)
        else:  # pragma: no cover - Windows
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """True while any process of group `pgid` exists (POSIX; always False elsewhere)."""
    if not hasattr(os, "killpg"):  # pragma: no cover - Windows
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_sync(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the child's process group, wait up to `grace` seconds, then SIGKILL what is left."""
    signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    while time.monotonic() < deadline and group_alive(proc.pid):
        time.sleep(0.05)
    if proc.poll() is None or group_alive(proc.pid):
        signal_group(proc.pid, SIGKILL)
    if proc.poll() is None:  # in case it left its group (a session leader cannot)
        proc.kill()
    proc.wait()


class StderrTee(threading.Thread):
    """Copy a child's stderr pipe to `sink` (None: nowhere) as it arrives, keeping the last bytes for
    error messages."""

    def __init__(self, source: IO[bytes], sink: TextIO | None) -> None:
        super().__init__(name="bitnet-stderr-tee", daemon=True)
        self._source = source
        self._sink = sink
        self._tail = bytearray()
        self._lock = threading.Lock()

    def run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self._source.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)  # returns as soon as anything is there: no line buffering
            except OSError:
                break
            if not chunk:
                break
            with self._lock:
                self._tail += chunk
                del self._tail[:-_TAIL_BYTES]
            if self._sink is None:
                continue
            try:
                self._sink.write(decoder.decode(chunk))
                self._sink.flush()
            except (OSError, ValueError):  # our stderr closed or replaced: keep draining the pipe
                pass

    def finish(self, timeout: float) -> None:
        """Wait up to `timeout` s for the pipe to close (a grandchild may hold it open), then close it."""
        self.join(timeout)
        if not self.is_alive():
            self._source.close()

    def tail(self) -> str:
        """The last lines (up to 50) the child wrote to stderr."""
        with self._lock:
            data = bytes(self._tail)
        return tail_lines(data.decode("utf-8", errors="replace"))
