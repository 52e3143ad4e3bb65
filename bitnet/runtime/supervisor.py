"""`RuntimeSupervisor`: async orchestrator for launching llama.cpp binaries.

Runs the commands `BitNetRuntime` builds (or any argv) under asyncio with a concurrency limit, an
optional timeout and captured output. `timeout` bounds the whole call, the time spent queued for a
free slot included (a caller asking for 1 s gets an answer in about 1 s); `queue_timeout` bounds just
the wait for a slot. Each child runs in its own process group; on timeout or when the
awaiting task is cancelled the whole group is terminated (SIGTERM, then SIGKILL after a short grace)
and reaped before the exception propagates, so no process outlives the call. When a command exits,
whatever it left running in its process group is killed too.

    async with RuntimeSupervisor(BitNetRuntime(), concurrency=2) as supervisor:
        result = await supervisor.run_inference(model="m.gguf", prompt="Hi", temperature=0, timeout=120)
        print(result.stdout, result.duration)
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from bitnet.errors import RuntimeConfigurationError, RuntimeLaunchError, RuntimeTimeoutError
from bitnet.runtime.diagnostics import INFERENCE_BINARY, SERVER_BINARY
from bitnet.runtime.process import (
    SIGKILL,
    check_command,
    check_env,
    check_timeout,
    die_with_parent,
    exit_message,
    group_alive,
    signal_group,
    start_failure_message,
)
from bitnet.runtime.runtime import STREAM_FLAG, BitNetRuntime

__all__ = ["RuntimeResult", "RuntimeSupervisor"]

log = logging.getLogger(__name__)

_TERMINATE_GRACE_SECONDS = 2.0  # SIGTERM -> this long -> SIGKILL
_PIPE_DRAIN_SECONDS = 2.0  # how long to wait for the output pipes to close once the child is gone
_POLL_SECONDS = 0.05
_STREAM_STDERR_BYTES = 64 * 1024  # the engine log kept by a stream, for its errors


@dataclass(frozen=True)
class RuntimeResult:
    """The outcome of one supervised command.

    `started_at`/`completed_at` are ``time.monotonic()`` readings (use `duration`); `started_wall` is
    ``time.time()`` at launch. `stdout`/`stderr` are "" when the supervisor does not capture output.
    """

    command: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    started_at: float
    completed_at: float
    started_wall: float | None = None

    @property
    def duration(self) -> float:
        """Seconds the command ran (monotonic clock)."""
        return self.completed_at - self.started_at


class _Collector(asyncio.SubprocessProtocol):
    """Buffers a child's output as it arrives (so a timeout keeps what was printed) and signals exit."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_stdout: Callable[[bytes | None], None] | None = None,
    ) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exited: asyncio.Future[None] = loop.create_future()  # the child was reaped
        self.closed: asyncio.Future[None] = loop.create_future()  # ... and all its pipes closed
        self._on_stdout = on_stdout  # streaming: stdout chunks go here (None at EOF), not to .stdout

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        chunk = data.encode() if isinstance(data, str) else data
        if fd == 1 and self._on_stdout is not None:
            self._on_stdout(chunk)
            return
        (self.stdout if fd == 1 else self.stderr).extend(chunk)
        if fd == 2 and self._on_stdout is not None:  # a stream may run long: keep its log's tail only
            del self.stderr[:-_STREAM_STDERR_BYTES]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and self._on_stdout is not None:
            self._on_stdout(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def text(self) -> tuple[str, str]:
        return (
            self.stdout.decode("utf-8", errors="replace"),
            self.stderr.decode("utf-8", errors="replace"),
        )


class RuntimeSupervisor:
    """Async orchestrator for launching llama.cpp binaries.

    Args:
        runtime: the `BitNetRuntime` that validates arguments and finds binaries.
        concurrency: how many commands may run at once (default: the runtime's cpu count).
        capture_output: capture stdout/stderr into the result (True) or let them go to ours (False).
            stdin is always /dev/null: several children cannot share a terminal.
        env: the environment for launched commands; None uses the runtime's environment.
    """

    def __init__(
        self,
        runtime: BitNetRuntime,
        *,
        concurrency: int | None = None,
        capture_output: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(runtime, BitNetRuntime):
            raise RuntimeConfigurationError(f"runtime must be a BitNetRuntime. Got {runtime!r}.")
        if concurrency is None:
            concurrency = runtime.cpu_count
        elif isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency <= 0:
            raise RuntimeConfigurationError(
                f"concurrency must be a positive integer, or None for the cpu count. Got {concurrency!r}."
            )
        if not isinstance(capture_output, bool):
            raise RuntimeConfigurationError(f"capture_output must be True or False. Got {capture_output!r}.")
        self._runtime = runtime
        self._concurrency = concurrency
        self._capture_output = capture_output
        self._env = None if env is None else check_env(env)
        self._semaphore = asyncio.Semaphore(concurrency)
        self._closed = False
        self._closed_event = asyncio.Event()

    @property
    def concurrency(self) -> int:
        """How many commands may run at once."""
        return self._concurrency

    @property
    def closed(self) -> bool:
        """True once `close()` was called."""
        return self._closed

    async def __aenter__(self) -> RuntimeSupervisor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Refuse new launches, including those waiting for a slot; running commands finish.

        Idempotent. Every later or still-queued `run_*` call raises `RuntimeLaunchError`.
        """
        self._closed = True
        self._closed_event.set()

    async def run_inference(
        self, *, timeout: float | None = None, queue_timeout: float | None = None, **kwargs: Any
    ) -> RuntimeResult:
        """Run llama-completion with `BitNetRuntime.run_inference`'s arguments (validated the same way).

        `timeout`: seconds for the whole call, queueing included (None: no limit); `queue_timeout`:
        seconds to wait for a free slot (None: up to `timeout`). Either raises `RuntimeTimeoutError`;
        a command that never got a slot was never started.
        """
        command = self._prepare(self._runtime.run_inference, INFERENCE_BINARY, kwargs)
        return await self._launch(command, timeout=timeout, queue_timeout=queue_timeout)

    def stream(
        self, *, timeout: float | None = None, queue_timeout: float | None = None, **kwargs: Any
    ) -> AsyncIterator[str]:
        """Async iterator of the text llama-completion generates, as it is produced (prompt excluded).

        Takes `BitNetRuntime.stream`'s arguments (validated here, at the call). Waits for a slot like the
        other launches; `timeout` covers queueing and the whole generation. Leaving early (``break``
        inside ``async with contextlib.aclosing(...)``, cancelling the consuming task, a timeout)
        stops the engine and its process group before control returns.
        """
        kwargs = {"batch_size": 512, **kwargs}
        kwargs["extra_args"] = [STREAM_FLAG, *(kwargs.get("extra_args") or ())]
        command = self._prepare(self._runtime.run_inference, INFERENCE_BINARY, kwargs)
        return self._stream(command, check_timeout(timeout), check_timeout(queue_timeout, "queue_timeout"))

    async def run_server(
        self, *, timeout: float | None = None, queue_timeout: float | None = None, **kwargs: Any
    ) -> RuntimeResult:
        """Run llama-server with `BitNetRuntime.run_server`'s arguments; returns when it exits."""
        command = self._prepare(self._runtime.run_server, SERVER_BINARY, kwargs)
        return await self._launch(command, timeout=timeout, queue_timeout=queue_timeout)

    async def run_custom(
        self,
        command: Sequence[str | os.PathLike[str]],
        *,
        timeout: float | None = None,
        queue_timeout: float | None = None,
    ) -> RuntimeResult:
        """Execute a fully specified argv (no shell; items may be paths) under supervision."""
        return await self._launch(command, timeout=timeout, queue_timeout=queue_timeout)

    # ------------------------------------------------------------------ internals

    def _prepare(self, build: Callable[..., object], binary: str, kwargs: dict[str, Any]) -> list[str]:
        self._raise_if_closed()
        if "dry_run" in kwargs:
            raise RuntimeConfigurationError(
                "dry_run is not a supervisor option: call the BitNetRuntime method with dry_run=True "
                "to get the argv without running it."
            )
        command = build(dry_run=True, **kwargs)
        assert isinstance(command, list)
        self._runtime.check_model(kwargs["model"])
        command[0] = str(self._runtime.find_binary(binary))
        return command

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise RuntimeLaunchError(
                "supervisor is closed: close() was called, so it launches nothing more. "
                "Create a new RuntimeSupervisor to run further commands."
            )

    async def _stream(
        self, argv: list[str], limit: float | None, queue_limit: float | None
    ) -> AsyncIterator[str]:
        started = time.monotonic()
        await self._take_slot(argv, limit, queue_limit)
        try:
            loop = asyncio.get_running_loop()
            chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
            log.info("streaming: %s", shlex.join(argv))
            try:
                transport, protocol = await loop.subprocess_exec(
                    lambda: _Collector(loop, on_stdout=chunks.put_nowait),
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=dict(self._runtime.environment if self._env is None else self._env),
                    start_new_session=True,
                    preexec_fn=die_with_parent(),
                )
            except OSError as exc:
                message = start_failure_message(argv, exc, self._runtime.build_dir)
                raise RuntimeLaunchError(message, command=argv) from exc
            pid = transport.get_pid()
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            finished = False

            def remaining() -> float | None:
                return None if limit is None else max(limit - (time.monotonic() - started), 0.0)

            async def timed_out() -> RuntimeTimeoutError:
                nonlocal finished
                assert limit is not None
                await _stop_group(pid, protocol)
                finished = True
                return RuntimeTimeoutError(
                    f"stream timed out after {limit:g} seconds (queueing included): "
                    f"{shlex.join(argv)}\nThe engine was stopped. Pass a larger timeout.",
                    timeout=limit,
                    command=argv,
                    returncode=transport.get_returncode(),
                    stderr=protocol.text()[1],
                )

            try:
                while True:
                    try:
                        chunk = await asyncio.wait_for(chunks.get(), remaining())
                    except asyncio.TimeoutError:
                        raise await timed_out() from None
                    text = decoder.decode(chunk or b"", final=chunk is None)
                    if text:
                        yield text
                    if chunk is None:
                        break
                # stdout closed: the engine is exiting (within the same deadline)
                done, _ = await asyncio.wait({protocol.exited}, timeout=remaining())
                if not done:
                    raise await timed_out()
                await _reap_leftovers(pid, protocol)
                finished = True
            finally:
                if not finished:  # the consumer left or was cancelled: stop the engine first
                    await _stop_group(pid, protocol)
                transport.close()
            returncode = transport.get_returncode()
            if returncode != 0:
                assert returncode is not None
                raise RuntimeLaunchError(
                    exit_message(argv, returncode),
                    command=argv,
                    returncode=returncode,
                    stderr=protocol.text()[1],
                )
        finally:
            self._semaphore.release()

    async def _take_slot(self, argv: list[str], limit: float | None, queue_limit: float | None) -> None:
        """Acquire a slot within the smaller of the limits, or raise `RuntimeTimeoutError`."""
        wait_limit = min((x for x in (limit, queue_limit) if x is not None), default=None)
        if not await self._acquire_slot(wait_limit):
            assert wait_limit is not None
            which = "queue_timeout" if wait_limit == queue_limit and wait_limit != limit else "timeout"
            raise RuntimeTimeoutError(
                f"no free slot within the {which} of {wait_limit:g} s: all {self._concurrency} slots "
                f"stayed busy, so {shlex.join(argv)} was not started. Raise the {which}, the "
                "supervisor's concurrency, or wait for running commands to finish.",
                timeout=wait_limit,
                command=argv,
            )

    async def _launch(
        self,
        command: Sequence[str | os.PathLike[str]],
        *,
        timeout: float | None,
        queue_timeout: float | None,
    ) -> RuntimeResult:
        argv = check_command(command)
        limit = check_timeout(timeout)
        queue_limit = check_timeout(queue_timeout, "queue_timeout")
        started = time.monotonic()
        await self._take_slot(argv, limit, queue_limit)
        try:
            remaining = None if limit is None else max(limit - (time.monotonic() - started), 1e-3)
            return await self._run(argv, remaining, limit)
        finally:
            self._semaphore.release()

    async def _acquire_slot(self, limit: float | None) -> bool:
        """Take a concurrency slot (True), or False when `limit` seconds pass first; raise as soon as
        the supervisor is closed while queued."""
        self._raise_if_closed()
        if not self._semaphore.locked():
            await self._semaphore.acquire()  # free slot: returns at once
            return True
        acquire = asyncio.ensure_future(self._semaphore.acquire())
        closed = asyncio.ensure_future(self._closed_event.wait())
        got_slot = False
        try:
            await asyncio.wait({acquire, closed}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
            got_slot = acquire.done() and not acquire.cancelled() and acquire.exception() is None
        finally:
            closed.cancel()
            if not got_slot:  # closed, or we were cancelled: give back a slot that arrives late
                acquire.add_done_callback(self._release_if_acquired)
                acquire.cancel()
        if not self._closed:
            return got_slot  # False: the limit passed first
        if got_slot:
            self._semaphore.release()
        self._raise_if_closed()
        return False  # pragma: no cover - _raise_if_closed raised

    def _release_if_acquired(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._semaphore.release()

    async def _run(self, argv: list[str], limit: float | None, whole: float | None) -> RuntimeResult:
        loop = asyncio.get_running_loop()
        env = dict(self._runtime.environment if self._env is None else self._env)
        pipe = subprocess.PIPE if self._capture_output else None
        log.info("running: %s", shlex.join(argv))
        started_wall, started = time.time(), time.monotonic()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _Collector(loop),
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=pipe,
                stderr=pipe,
                env=env,
                start_new_session=True,  # pid == process-group id: one killpg reaches its children
                preexec_fn=die_with_parent(),  # the loop's thread waits for it, so it outlives the child
            )
        except OSError as exc:
            message = start_failure_message(argv, exc, self._runtime.build_dir)
            raise RuntimeLaunchError(message, command=argv) from exc
        pid = transport.get_pid()
        try:
            done, _ = await asyncio.wait({protocol.exited}, timeout=limit)
            if not done:
                assert limit is not None  # without a limit, wait() returns only when the child exited
                assert whole is not None
                log.warning("%s timed out after %g s: killing process group %d", argv[0], whole, pid)
                await _stop_group(pid, protocol)
                stdout, stderr = protocol.text()
                raise RuntimeTimeoutError(
                    f"Command timed out after {whole:g} seconds (queueing included): {shlex.join(argv)}\n"
                    "It was killed with its process group; what it printed so far is in the error's "
                    "stdout/stderr. Pass a larger timeout if it needs longer.",
                    timeout=whole,
                    command=argv,
                    returncode=transport.get_returncode(),
                    stdout=stdout,
                    stderr=stderr,
                )
            await _reap_leftovers(pid, protocol)
        except asyncio.CancelledError:
            log.warning("cancelled: killing process group %d (%s)", pid, argv[0])
            await _stop_group(pid, protocol)
            raise
        finally:
            transport.close()
        completed = time.monotonic()
        returncode = transport.get_returncode()
        assert returncode is not None
        stdout, stderr = protocol.text()
        if returncode != 0:
            raise RuntimeLaunchError(
                exit_message(argv, returncode),
                command=argv,
                returncode=returncode,
                stdout=stdout,
                stderr=stderr,
            )
        return RuntimeResult(
            command=tuple(argv),
            returncode=returncode,
            stdout=stdout,
            stderr=stderr,
            started_at=started,
            completed_at=completed,
            started_wall=started_wall,
        )


async def _stop_group(pid: int, protocol: _Collector) -> None:
    """SIGTERM process group `pid`, SIGKILL whatever is left after the grace period, wait for the exit.

    If this task is cancelled while waiting, SIGKILL is still sent before the cancellation propagates.
    """
    signal_group(pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + _TERMINATE_GRACE_SECONDS
        await asyncio.wait({protocol.exited}, timeout=_TERMINATE_GRACE_SECONDS)
        while time.monotonic() < deadline and group_alive(pid):
            await asyncio.sleep(_POLL_SECONDS)
    finally:
        if not protocol.exited.done() or group_alive(pid):
            signal_group(pid, SIGKILL)
        if not protocol.exited.done():  # in case it left its group (a session leader cannot)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, SIGKILL)
    await asyncio.wait({protocol.exited})  # SIGKILL cannot be ignored: this is the reaping
    await asyncio.wait({protocol.closed}, timeout=_PIPE_DRAIN_SECONDS)


async def _reap_leftovers(pid: int, protocol: _Collector) -> None:
    """After the child exited: kill what it left in its process group, let the pipes drain."""
    if group_alive(pid):
        log.debug("process group %d outlived its leader: killing it", pid)
        signal_group(pid, SIGKILL)
    await asyncio.wait({protocol.closed}, timeout=_PIPE_DRAIN_SECONDS)
