"""Run llama-server (OpenAI-compatible HTTP) for a model, from Python or the command line.

    from openai import OpenAI
    from bitnet.runtime.server import serve

    with serve("models/tiny.gguf") as server:          # a free port on 127.0.0.1, ready when it returns
        client = OpenAI(base_url=server.base_url, api_key="none")
        print(client.models.list().data[0].id)

`serve()` validates everything before anything starts (the argv comes from
`BitNetRuntime.run_server(dry_run=True)`; the model must be a GGUF; the port must be free), launches
the server in its own process group with its output in a log file (never a pipe that can fill up),
polls ``/health`` until it answers 200 (503 while the model loads), and on exit stops the whole group:
SIGTERM, wait, SIGKILL. `serve_forever()` is what `run_inference_server.py` and `invoke serve` run:
it prints the URL when ready and serves until Ctrl-C or SIGTERM.

Binding anything but a loopback address needs an API key (``api_key=`` or ``$BITNET_API_KEY``), so a
model is never exposed to the network unauthenticated by accident. The key reaches llama-server in
its environment (``LLAMA_API_KEY``), not in its argv, so `ps` does not show it.

Web pages of other origins cannot use the server (our engine patch 0007): a request whose ``Origin`` is
neither the server's own nor in ``cors_origins`` gets 403, and on a loopback address a ``Host`` header that
does not name this machine gets 403 too (DNS rebinding). ``cors_origins=["https://app.example"]`` lets
that page call the server (exact match; ``"*"`` allows any origin).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bitnet.errors import (
    RuntimeConfigurationError,
    RuntimeLaunchError,
    RuntimeTimeoutError,
    StopRequested,
    tail_lines,
)
from bitnet.runtime.address import (
    API_KEY_ENV,
    LLAMA_API_KEY_ENV,
    check_port_free,
    check_single_host,
    connect_host,
    free_port,
    is_loopback,
    require_api_key,
    url_host,
)
from bitnet.runtime.diagnostics import SERVER_BINARY
from bitnet.runtime.process import (
    SIGKILL,
    die_with_parent,
    exit_message,
    group_alive,
    signal_group,
    start_failure_message,
    stop_signals,
)
from bitnet.runtime.runtime import BitNetRuntime, StrPath

__all__ = [
    "API_KEY_ENV",
    "LLAMA_API_KEY_ENV",
    "ServerHandle",
    "check_port_free",
    "cors_args",
    "is_loopback",
    "require_api_key",
    "serve",
    "serve_forever",
    "start_server",
]

log = logging.getLogger(__name__)

_TERMINATE_GRACE_SECONDS = 5.0  # SIGTERM -> this long -> SIGKILL (llama-server stops in ~0.1 s)
_HEALTH_TIMEOUT_SECONDS = 2.0  # one /health request
_POLL_SECONDS = 0.05  # first readiness poll interval; doubles up to _POLL_MAX_SECONDS
_POLL_MAX_SECONDS = 0.5
_LOG_TAIL_BYTES = 64 * 1024


# ---------------------------------------------------------------------- the handle


class ServerHandle:
    """A running llama-server started by `start_server`/`serve`.

    Attributes:
        url: ``http://HOST:PORT`` as a client on this machine reaches it (0.0.0.0 -> 127.0.0.1).
        base_url: ``url + "/v1"``, what ``openai.OpenAI(base_url=...)`` wants.
        host, port: what the server was bound to.
        pid: the server's process id (also its process-group id).
        command: the argv it was started with (the API key is not in it).
        log_path: the file holding the server's stdout and stderr.
        api_key: the key clients must send, or None.
    """

    def __init__(
        self,
        *,
        proc: subprocess.Popen[bytes],
        command: Sequence[str],
        host: str,
        port: int,
        log_path: Path,
        owns_log: bool,
        api_key: str | None,
    ) -> None:
        self._proc = proc
        self._lock = threading.Lock()
        self._stopped = False
        self._owns_log = owns_log
        self.command: tuple[str, ...] = tuple(command)
        self.host = host
        self.port = port
        self.pid = proc.pid
        self.log_path = log_path
        self.api_key = api_key
        self.url = f"http://{url_host(connect_host(host))}:{port}"
        self.base_url = self.url + "/v1"

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running" if self.alive else "dead"
        return f"<ServerHandle {self.url} pid={self.pid} {state}>"

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.stop(check=exc_type is None)

    @property
    def returncode(self) -> int | None:
        """The exit status once the server has exited (negative: killed by that signal), else None."""
        return self._proc.poll()

    @property
    def alive(self) -> bool:
        """True while the server process runs (reaps it if it has exited)."""
        return self._proc.poll() is None

    def stderr_tail(self) -> str:
        """The last lines (up to 50) of the server's log."""
        return _read_tail(self.log_path)

    def check(self, *, grace: float = 0.0) -> None:
        """Return if the server is running; raise `RuntimeLaunchError` (with its log tail) if not.

        A process killed a moment ago closes its sockets before it can be reaped, so right after a
        connection error pass `grace` (seconds) to wait that long for it to finish exiting before
        deciding; a server still running after `grace` passes.
        """
        if grace > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=grace)
        returncode = self._proc.poll()
        if returncode is None:
            return
        if self._stopped:
            raise RuntimeLaunchError(f"the server at {self.url} was stopped; start a new one with serve().")
        raise self._died_error(returncode)

    def stop(self, *, check: bool = False, quiet: bool = False) -> int:
        """Stop the server and everything in its process group: SIGTERM, wait, then SIGKILL.

        Idempotent; returns the exit status. With `check`, raise `RuntimeLaunchError` if the server had
        died on its own (a crash should not pass silently): it had exited before this call, or it ends
        by a signal other than our SIGTERM without our SIGKILL (it was dying already). The log file is
        deleted after a clean stop when `start_server` created it; otherwise it is kept. A crash found
        without `check` is logged as a warning unless `quiet`.
        """
        with self._lock:
            returncode = self._proc.poll()
            died_first = returncode is not None and not self._stopped
            if not self._stopped:
                self._stopped = True
                if returncode is None:
                    log.info("stopping llama-server (pid %d) at %s", self.pid, self.url)
                    returncode, escalated = _terminate(self._proc)
                    died_first = not escalated and returncode < 0 and returncode != -signal.SIGTERM
            returncode = self._proc.wait()
        if died_first:
            error = self._died_error(returncode)
            if check:
                raise error
            if not quiet:
                log.warning("%s", error)
        elif self._owns_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
        return returncode

    def _died_error(self, returncode: int) -> RuntimeLaunchError:
        return RuntimeLaunchError(
            f"{_how_it_ended(self.command, returncode)} while serving at {self.url} (pid {self.pid}). "
            f"Its log: {self.log_path}. Requests in flight were lost; start a new server with serve().",
            command=self.command,
            returncode=returncode,
            stderr_tail=self.stderr_tail(),
        )


def _how_it_ended(command: Sequence[str], returncode: int) -> str:
    """ "llama-server exited with status 1" / "llama-server was killed by signal SIGKILL" (no full stop)."""
    return exit_message(command, returncode).split("\n", 1)[0].rstrip(".")


def _terminate(proc: subprocess.Popen[bytes]) -> tuple[int, bool]:
    """SIGTERM the process group, wait, SIGKILL what is left; return (exit status, SIGKILL was needed)."""
    signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + _TERMINATE_GRACE_SECONDS
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_TERMINATE_GRACE_SECONDS)
    while time.monotonic() < deadline and group_alive(proc.pid):  # children it may have started
        time.sleep(0.02)
    escalated = proc.poll() is None or group_alive(proc.pid)
    if escalated:
        log.warning("llama-server (pid %d) did not stop on SIGTERM; killing it", proc.pid)
        signal_group(proc.pid, SIGKILL)
    return proc.wait(), escalated


def _read_tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _LOG_TAIL_BYTES))
            data = fh.read()
    except OSError:
        return ""
    return tail_lines(data.decode("utf-8", errors="replace"))


# ---------------------------------------------------------------------- starting


def _check_count(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RuntimeConfigurationError(f"{field} must be a positive integer. Got {value!r}.")
    return value


def _extra_list(extra_args: Sequence[str] | None) -> list[str]:
    if extra_args is None:
        return []
    if isinstance(extra_args, (str, bytes)) or not isinstance(extra_args, Sequence):
        raise RuntimeConfigurationError(
            "extra_args must be a list of strings, one per argument (split a command line with "
            f"shlex.split). Got {extra_args!r}."
        )
    return list(extra_args)


_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s,]+", re.IGNORECASE)


def cors_args(cors_origins: Sequence[str] | None) -> list[str]:
    """The llama-server arguments allowing web pages of `cors_origins` to call it (``[]`` for None/empty).

    Each origin is ``"*"`` (any origin) or ``scheme://host[:port]`` exactly as a browser sends it, e.g.
    ``"https://app.example:8443"``; without any, only the server's own origin (its web UI) is allowed.
    """
    if cors_origins is None:
        return []
    if isinstance(cors_origins, (str, bytes)) or not isinstance(cors_origins, Sequence):
        raise RuntimeConfigurationError(
            f"cors_origins must be a list of origins such as ['https://app.example']. Got {cors_origins!r}."
        )
    origins = []
    for origin in cors_origins:
        if not isinstance(origin, str) or not (origin == "*" or _ORIGIN.fullmatch(origin.rstrip("/"))):
            raise RuntimeConfigurationError(
                "each CORS origin must be '*' or scheme://host[:port] as a browser sends it, e.g. "
                f"'https://app.example:8443' (no path, no comma). Got {origin!r}."
            )
        origins.append(origin.rstrip("/"))
    return ["--cors-origins", ",".join(origins)] if origins else []


def _check_timeout(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    raise RuntimeConfigurationError(f"ready_timeout must be a number of seconds > 0. Got {value!r}.")


def start_server(
    model: StrPath,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    threads: int | None = None,
    parallel: int | None = 1,
    ctx_size: int = 2048,
    n_predict: int = 4096,
    temperature: float = 0.8,
    batch_size: int = 512,
    gpu_layers: int | None = None,
    prompt: str | None = None,
    api_key: str | None = None,
    runtime: BitNetRuntime | None = None,
    ready_timeout: float = 60.0,
    extra_args: Sequence[str] | None = None,
    log_path: StrPath | None = None,
    cors_origins: Sequence[str] | None = None,
) -> ServerHandle:
    """Start llama-server for `model` and return once ``/health`` says it is ready.

    Prefer `serve` (a context manager that always stops the server); this is for code that manages
    the lifetime itself and must call ``handle.stop()``.

    Args:
        model: the .gguf file.
        host: address to bind; anything but loopback needs an API key (see `require_api_key`).
        port: port to bind; None picks a free one.
        threads: CPU threads for generation (None: all cores).
        parallel: server slots = requests decoded at once (``-np``); `ctx_size` is shared among them.
            None leaves ``-np`` out: llama-server's own default (4 slots sharing a unified KV cache).
        ctx_size, n_predict, temperature, batch_size, gpu_layers, prompt: as for
            `BitNetRuntime.run_server`; `n_predict` and `temperature` are defaults that each request
            can override. `gpu_layers` None (default) leaves ``-ngl`` out (our build is CPU-only).
            `batch_size` defaults to 512 (llama.cpp's physical batch), not the runtime's 1, so prompts
            are evaluated in blocks.
        api_key: key clients must send (default: ``$BITNET_API_KEY``; loopback servers need none).
        runtime: the `BitNetRuntime` that finds the engine (default: ``BitNetRuntime()``, ./build).
        ready_timeout: seconds to wait for ``/health`` to say ready.
        extra_args: more llama-server arguments, appended verbatim.
        log_path: file for the server's output; default a temporary file, deleted after a clean stop.
        cors_origins: web origins (``"https://app.example:8443"``, or ``"*"`` for any) whose pages may call
            the server from a browser; default None: only the server's own origin (its web UI). See
            `cors_args`.

    Raises:
        RuntimeConfigurationError: a bad argument, a missing/non-GGUF model, no llama-server binary, a
            non-loopback host without a key; `PortInUseError` (a subclass) when the port is taken.
        RuntimeLaunchError: the server exited before it was ready (with the last lines of its log).
        RuntimeTimeoutError: it was not ready within `ready_timeout` (it has been stopped).
    """
    runtime = BitNetRuntime() if runtime is None else runtime
    if not isinstance(host, str) or not host.strip():
        raise RuntimeConfigurationError(
            f"host must be a non-empty string such as '127.0.0.1' or '0.0.0.0'. Got {host!r}."
        )
    check_single_host(host)
    slots = [] if parallel is None else ["-np", str(_check_count(parallel, "parallel"))]
    slots += cors_args(cors_origins)
    timeout = _check_timeout(ready_timeout)
    env = dict(runtime.environment)
    # Validate every argument (and build the argv) before touching the network or the file system.
    command = runtime.run_server(
        model=model,
        host=host,
        port=8080 if port is None else port,
        prompt=prompt,
        n_predict=n_predict,
        ctx_size=ctx_size,
        temperature=temperature,
        threads=threads,
        batch_size=batch_size,
        gpu_layers=gpu_layers,
        dry_run=True,
        extra_args=[*slots, *_extra_list(extra_args)],
    )
    assert isinstance(command, list)
    key = require_api_key(host, api_key, env=env, extra_args=command)
    runtime.check_model(model)
    command[0] = str(runtime.find_binary(SERVER_BINARY))
    if port is None:
        port = free_port(host)
        command[command.index("--port") + 1] = str(port)
    else:
        check_port_free(host, port)
    if key is not None:
        env[LLAMA_API_KEY_ENV] = key
    return _launch(
        command,
        env=env,
        host=host,
        port=port,
        key=key,
        timeout=timeout,
        log_path=log_path,
        build_dir=runtime.build_dir,
    )


def _launch(
    command: list[str],
    *,
    env: dict[str, str],
    host: str,
    port: int,
    key: str | None,
    timeout: float,
    log_path: StrPath | None,
    build_dir: Path,
) -> ServerHandle:
    owns_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"bitnet-server-{port}-", suffix=".log")
        os.close(fd)
        path = Path(name)
    else:
        path = Path(log_path)
    log.info("starting: %s (log: %s)", shlex.join(command), path)
    # The kernel kills the server if we die (even by SIGKILL), but only from the main thread: it fires
    # when the starting *thread* ends, and a server outlives the call that starts it.
    on_main_thread = threading.current_thread() is threading.main_thread()
    try:
        with path.open("ab") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: one killpg stops it and its children
                preexec_fn=die_with_parent() if on_main_thread else None,
            )
    except OSError as exc:
        raise RuntimeLaunchError(start_failure_message(command, exc, build_dir), command=command) from exc
    handle = ServerHandle(
        proc=proc, command=command, host=host, port=port, log_path=path, owns_log=owns_log, api_key=key
    )
    try:
        _wait_ready(handle, proc, timeout)
    except BaseException as exc:  # a launch error, a timeout, Ctrl-C: never leave the server behind
        handle._owns_log = handle._owns_log and not isinstance(exc, RuntimeLaunchError)  # errors cite it
        handle.stop(quiet=True)
        raise
    log.info("llama-server ready at %s (pid %d)", handle.url, handle.pid)
    return handle


def _health(host: str, port: int, timeout: float) -> int | None:
    """GET /health; the status code, or None if nothing answered. No proxies (unlike urllib)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _wait_ready(handle: ServerHandle, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    interval = _POLL_SECONDS
    last: int | None = None
    while True:
        returncode = proc.poll()
        if returncode is not None:
            tail = handle.stderr_tail()
            hint = ""
            if "couldn't bind" in tail:
                hint = f" It could not bind {handle.host}:{handle.port}: pick another port (or port=None)."
            raise RuntimeLaunchError(
                f"{_how_it_ended(handle.command, returncode)} before it was ready.{hint} "
                f"Its log: {handle.log_path}",
                command=handle.command,
                returncode=returncode,
                stderr_tail=tail,
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeTimeoutError(
                f"llama-server was not ready after {timeout:g} s (last /health answer: "
                f"{'none' if last is None else last}; 503 means still loading). Raise ready_timeout for a "
                f"big model, or read its log: {handle.log_path}",
                timeout=timeout,
                command=handle.command,
                stderr_tail=handle.stderr_tail(),
            )
        last = _health(connect_host(handle.host), handle.port, min(_HEALTH_TIMEOUT_SECONDS, remaining))
        if last == 200 and proc.poll() is None:
            return
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 2, _POLL_MAX_SECONDS)


@contextlib.contextmanager
def serve(model: StrPath, **kwargs: Any) -> Iterator[ServerHandle]:
    """Start llama-server for `model`, yield its `ServerHandle` once ready, stop it on exit.

    Takes the keyword arguments of `start_server` (host, port=None for a free port, threads, parallel,
    ctx_size, api_key, cors_origins, runtime, ready_timeout, extra_args, ...) and raises the same errors,
    before the block runs. On exit the server and its process group are stopped (SIGTERM, wait, SIGKILL)
    however the block ends. If the server died on its own during a block that otherwise finished normally,
    the exit raises `RuntimeLaunchError`: a crash is never silent. Use ``handle.check()`` to find out sooner.
    """
    handle = start_server(model, **kwargs)
    try:
        yield handle
    except BaseException:
        handle.stop()
        raise
    handle.stop(check=True)


# ---------------------------------------------------------------------- serving until stopped


def _announce(line: str) -> None:
    print(line, flush=True)  # flushed: whoever started us may be waiting for this line on a pipe


def serve_forever(
    model: StrPath,
    *,
    announce: Callable[[str], None] = _announce,
    poll_interval: float = 0.5,
    **kwargs: Any,
) -> int:
    """Serve `model` until SIGINT (Ctrl-C), SIGTERM or SIGHUP, then stop the server; return the signal.

    Prints (via `announce`) ``ready: URL`` once the server answers, with the OpenAI base URL, the pid and
    the log file. Takes `start_server`'s keyword arguments and raises its errors; raises
    `RuntimeLaunchError` if the server dies while serving. A signal during start-up also stops it
    cleanly. In a thread other than the main one the signals cannot be caught: Ctrl-C then surfaces as
    KeyboardInterrupt in the main thread, and the server is still stopped.
    """
    try:
        with stop_signals(), serve(model, **kwargs) as server:
            key_note = "; clients must send the API key" if server.api_key else ""
            announce(
                f"ready: {server.url}  (OpenAI base_url {server.base_url}; pid {server.pid}; "
                f"log {server.log_path}{key_note}). Ctrl-C stops it."
            )
            while True:
                time.sleep(poll_interval)
                server.check()
    except StopRequested as stop:
        log.info("stopped by %s", signal.Signals(stop.signum).name)
        return stop.signum
