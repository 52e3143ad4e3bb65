"""`BitNetRuntime`: prepares and launches llama.cpp executables (the engine `invoke build` produces).

The runtime validates every argument before anything runs (raising `RuntimeConfigurationError` with
the field and the value), finds the binary in the build dir, and runs it as an argv list, never through
a shell. It is synchronous; `bitnet.runtime.supervisor.RuntimeSupervisor` runs the same commands under asyncio
with timeouts and a concurrency limit.

Environment variables (read from the runtime's launch environment first, then from `os.environ`):

- ``BITNET_BIN_DIR``: a directory searched for the llama.cpp binaries after ``<build_dir>/bin``.
- ``BITNET_KERNELS``: ``0`` turns our BitNet kernels off in the engine; reported by `diagnostics()`.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, overload

from bitnet.engine.cpu import detect_cpu
from bitnet.errors import ModelFileError, RuntimeConfigurationError, RuntimeLaunchError, RuntimeTimeoutError
from bitnet.models.formats.check import check_gguf
from bitnet.runtime.diagnostics import (
    BIN_DIR_ENV,
    DIAGNOSTIC_BINARIES,
    GGUF_MAGIC,
    INFERENCE_BINARY,
    KERNELS_ENV,
    SERVER_BINARY,
    RuntimeDiagnostics,
    activation_quant_mode,
    is_gguf_file,
    probe_engine,
)
from bitnet.runtime.process import (
    StderrTee,
    check_command,
    check_env,
    check_timeout,
    die_with_parent,
    exit_message,
    start_failure_message,
    terminate_sync,
)

__all__ = [
    "BIN_DIR_ENV",
    "DIAGNOSTIC_BINARIES",
    "INFERENCE_BINARY",
    "KERNELS_ENV",
    "SERVER_BINARY",
    "BitNetRuntime",
    "RuntimeDiagnostics",
]

log = logging.getLogger(__name__)

STREAM_FLAG = "--no-display-prompt"  # stream(): only the new text on stdout
_TERMINATE_GRACE_SECONDS = 3.0  # SIGTERM -> this long -> SIGKILL
_PIPE_DRAIN_SECONDS = 2.0  # how long to wait for a pipe to close once the child has exited
_LOG_LEVELS = {
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.FATAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "NOTSET": logging.NOTSET,
}
StrPath = str | os.PathLike[str]


class _StreamTimeout(Exception):
    """stream()'s deadline passed (internal)."""


class BitNetRuntime:
    """Prepares and launches llama.cpp executables.

    Args:
        build_dir: the engine build dir; binaries are looked up in ``<build_dir>/bin``.
        env: the environment the binaries run in. None inherits ``os.environ`` (as it is at launch
            time); any mapping, including ``{}``, is used exactly as given.
        log_level: level for this module's logger (an int or a name in any case). The runtime never
            adds handlers or touches other loggers; configure logging in your application.

    Binary lookup for a tool ``name``, first executable regular file wins:
    ``<build_dir>/bin/<name>``, ``<build_dir>/bin/Release/<name>.exe``, ``<build_dir>/bin/<name>.exe``,
    then ``$BITNET_BIN_DIR/<name>`` and ``$BITNET_BIN_DIR/<name>.exe``, where ``BITNET_BIN_DIR`` is read
    from the launch environment first, then from ``os.environ``.
    """

    def __init__(
        self,
        *,
        build_dir: StrPath = "build",
        env: Mapping[str, str] | None = None,
        log_level: int | str = logging.INFO,
    ) -> None:
        if not isinstance(build_dir, (str, os.PathLike)) or not os.fspath(build_dir):
            raise RuntimeConfigurationError(
                f"build_dir must be a non-empty path (str or os.PathLike). Got {build_dir!r}."
            )
        self._build_dir = Path(build_dir)
        self._env: dict[str, str] | None = None if env is None else check_env(env)
        log.setLevel(self._coerce_log_level(log_level))
        self._cpu_count = os.cpu_count() or 1
        self._last_execution_timestamp: float | None = None

    def __repr__(self) -> str:
        return f"BitNetRuntime(build_dir={str(self._build_dir)!r}, cpu_count={self._cpu_count})"

    # ------------------------------------------------------------------ read-only properties

    @property
    def build_dir(self) -> Path:
        """The engine build dir this runtime looks in."""
        return self._build_dir

    @property
    def cpu_count(self) -> int:
        """Logical cores, read once from ``os.cpu_count()`` when the runtime was created."""
        return self._cpu_count

    @property
    def environment(self) -> Mapping[str, str]:
        """Read-only view of the environment launched binaries get."""
        return MappingProxyType(dict(os.environ) if self._env is None else self._env)

    @property
    def last_execution_timestamp(self) -> float | None:
        """``time.time()`` when the last successful run finished; None until one has."""
        return self._last_execution_timestamp

    # ------------------------------------------------------------------ public API

    @overload
    def run_inference(
        self,
        *,
        model: StrPath,
        prompt: str,
        n_predict: int = 128,
        ctx_size: int = 2048,
        temperature: float = 0.8,
        threads: int | None = None,
        batch_size: int = 512,
        gpu_layers: int | None = None,
        conversation: bool = False,
        dry_run: Literal[True],
        extra_args: Sequence[str] | None = None,
        timeout: float | None = None,
        engine_log: bool = True,
    ) -> list[str]: ...

    @overload
    def run_inference(
        self,
        *,
        model: StrPath,
        prompt: str,
        n_predict: int = 128,
        ctx_size: int = 2048,
        temperature: float = 0.8,
        threads: int | None = None,
        batch_size: int = 512,
        gpu_layers: int | None = None,
        conversation: bool = False,
        dry_run: Literal[False] = False,
        extra_args: Sequence[str] | None = None,
        timeout: float | None = None,
        engine_log: bool = True,
    ) -> int: ...

    def run_inference(
        self,
        *,
        model: StrPath,
        prompt: str,
        n_predict: int = 128,
        ctx_size: int = 2048,
        temperature: float = 0.8,
        threads: int | None = None,
        batch_size: int = 512,
        gpu_layers: int | None = None,
        conversation: bool = False,
        dry_run: bool = False,
        extra_args: Sequence[str] | None = None,
        timeout: float | None = None,
        engine_log: bool = True,
    ) -> list[str] | int:
        """Generate text from `prompt` with ``llama-completion``.

        One-shot by default (``-no-cnv``: print the prompt and its continuation, then exit);
        ``conversation=True`` passes ``-cnv`` (interactive chat, `prompt` becomes the system prompt).
        `temperature` 0 is greedy decoding. `threads` None uses every core; more than the cores is
        clamped with a warning. `gpu_layers` None omits ``-ngl``. `extra_args` are appended verbatim.
        `batch_size` is how many prompt tokens are processed at once: 512 by default (the seed's 1 made
        a 500-token prompt ~15x slower; pass 1 to get that back).

        With ``dry_run=True`` the arguments are validated and the argv is returned as a list; neither
        the binary nor the model has to exist (a missing binary shows as ``<build_dir>/bin/<name>``).
        Otherwise the model and binary are checked, the command runs with its output streamed
        through, and 0 is returned. `timeout` (seconds, None = no limit) bounds the whole run: past
        it the engine and its process group are stopped and `RuntimeTimeoutError` is raised.
        ``engine_log=False`` keeps the engine's log (loading, timings: ~25 lines) off stderr; its last
        lines still go into the error if it fails.

        Raises:
            RuntimeConfigurationError: an invalid argument, a missing/non-GGUF model or a missing binary;
                `ModelFileError` (a subclass) for a damaged model file (see `bitnet.models.formats.check`).
            RuntimeLaunchError: the binary could not start or exited non-zero.
            RuntimeTimeoutError: it ran past `timeout` (a `RuntimeLaunchError`).
        """
        if not isinstance(dry_run, bool):
            raise RuntimeConfigurationError(f"dry_run must be True or False. Got {dry_run!r}.")
        if not isinstance(engine_log, bool):
            raise RuntimeConfigurationError(f"engine_log must be True or False. Got {engine_log!r}.")
        limit = check_timeout(timeout)
        command = self._build_inference_command(
            model=model,
            prompt=prompt,
            n_predict=n_predict,
            ctx_size=ctx_size,
            temperature=temperature,
            threads=threads,
            batch_size=batch_size,
            gpu_layers=gpu_layers,
            conversation=conversation,
            extra_args=extra_args,
        )
        if dry_run:
            return command
        self._require_model(model)
        command[0] = str(self._require_binary(INFERENCE_BINARY))
        return self._execute(command, timeout=limit, engine_log=engine_log)

    def stream(
        self,
        *,
        model: StrPath,
        prompt: str,
        n_predict: int = 128,
        ctx_size: int = 2048,
        temperature: float = 0.8,
        threads: int | None = None,
        batch_size: int = 512,
        gpu_layers: int | None = None,
        extra_args: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[str]:
        """Generate from `prompt` with ``llama-completion`` and yield the new text as it is produced.

        The prompt is not repeated; the pieces joined are the whole continuation. The engine's log is
        kept for errors, not printed. Leaving the loop early (``break``, an exception, closing the
        generator) stops the engine and its process group before control returns. Arguments as for
        `run_inference` (`batch_size` defaults to 512: prompts are read in big batches).

        Raises:
            RuntimeConfigurationError: bad arguments, a missing/bad model or binary (at the call, before
                anything runs; the engine starts at the first ``next()``).
            RuntimeLaunchError: (while iterating) the engine could not start or exited non-zero.
            RuntimeTimeoutError: (while iterating) it ran longer than `timeout` seconds.
        """
        limit = check_timeout(timeout)
        command = self._build_inference_command(
            model=model,
            prompt=prompt,
            n_predict=n_predict,
            ctx_size=ctx_size,
            temperature=temperature,
            threads=threads,
            batch_size=batch_size,
            gpu_layers=gpu_layers,
            conversation=False,
            extra_args=[STREAM_FLAG, *_check_extra_args(extra_args)],
        )
        self._require_model(model)
        command[0] = str(self._require_binary(INFERENCE_BINARY))
        return self._stream(command, limit)

    def _stream(self, argv: list[str], timeout: float | None) -> Iterator[str]:
        log.info("streaming: %s", shlex.join(argv))
        try:
            proc = subprocess.Popen(
                argv,
                env=dict(self.environment),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        except OSError as exc:
            raise RuntimeLaunchError(start_failure_message(argv, exc, self._build_dir), command=argv) from exc
        assert proc.stdout is not None and proc.stderr is not None
        tee = StderrTee(proc.stderr, None)
        tee.start()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = proc.stdout.fileno()
        finished = False
        try:
            while True:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    raise _StreamTimeout
                ready, _, _ = select.select([fd], [], [], wait)
                if not ready:
                    continue
                chunk = os.read(fd, 65536)
                text = decoder.decode(chunk, final=not chunk)
                if text:
                    yield text
                if not chunk:
                    break
            returncode = proc.wait(
                timeout=None if deadline is None else max(deadline - time.monotonic(), 0.0)
            )
            finished = True
        except (_StreamTimeout, subprocess.TimeoutExpired):
            terminate_sync(proc, _TERMINATE_GRACE_SECONDS)
            finished = True
            tee.finish(_PIPE_DRAIN_SECONDS)
            assert timeout is not None
            raise RuntimeTimeoutError(
                f"{Path(argv[0]).name} ran longer than the timeout of {timeout:g} s and was stopped.\n"
                f"Command: {shlex.join(argv)}\nPass a larger timeout (or None) if it needs longer.",
                timeout=timeout,
                command=argv,
                returncode=proc.returncode,
                stderr_tail=tee.tail(),
            ) from None
        finally:
            if not finished:  # the consumer left early (GeneratorExit), Ctrl-C, StopRequested
                terminate_sync(proc, _TERMINATE_GRACE_SECONDS)
            proc.stdout.close()
            tee.finish(_PIPE_DRAIN_SECONDS)
        if returncode != 0:
            raise RuntimeLaunchError(
                exit_message(argv, returncode), command=argv, returncode=returncode, stderr_tail=tee.tail()
            )
        self._last_execution_timestamp = time.time()

    @overload
    def run_server(
        self,
        *,
        model: StrPath,
        host: str = "127.0.0.1",
        port: int = 8080,
        prompt: str | None = None,
        n_predict: int = 4096,
        ctx_size: int = 2048,
        temperature: float = 0.8,
        threads: int | None = None,
        batch_size: int = 512,
        gpu_layers: int | None = None,
        dry_run: Literal[True],
        extra_args: Sequence[str] | None = None,
    ) -> list[str]: ...

    @overload
    def run_server(
        self,
        *,
        model: StrPath,
        host: str = "127.0.0.1",
        port: int = 8080,
        prompt: str | None = None,
        n_predict: int = 4096,
        ctx_size: int = 2048,
        temperature: float = 0.8,
        threads: int | None = None,
        batch_size: int = 512,
        gpu_layers: int | None = None,
        dry_run: Literal[False] = False,
        extra_args: Sequence[str] | None = None,
    ) -> int: ...

    def run_server(
        self,
        *,
        model: StrPath,
        host: str = "127.0.0.1",
        port: int = 8080,
        prompt: str | None = None,
        n_predict: int = 4096,
        ctx_size: int = 2048,
        temperature: float = 0.8,
        threads: int | None = None,
        batch_size: int = 512,
        gpu_layers: int | None = None,
        dry_run: bool = False,
        extra_args: Sequence[str] | None = None,
    ) -> list[str] | int:
        """Serve the model over HTTP with ``llama-server`` (OpenAI-compatible routes, ``-cb``).

        `prompt` is validated (None or a non-empty string) but not passed on: llama-server has no
        start-up prompt flag, so a warning is logged and it is ignored. `batch_size` defaults to 512,
        not 1 as in the original API: this llama-server aborts at load with `-b 1`. Other arguments,
        `dry_run` and the errors raised are as for `run_inference`. Blocks until the server exits.
        """
        if not isinstance(dry_run, bool):
            raise RuntimeConfigurationError(f"dry_run must be True or False. Got {dry_run!r}.")
        command = self._build_server_command(
            model=model,
            host=host,
            port=port,
            prompt=prompt,
            n_predict=n_predict,
            ctx_size=ctx_size,
            temperature=temperature,
            threads=threads,
            batch_size=batch_size,
            gpu_layers=gpu_layers,
            extra_args=extra_args,
        )
        if dry_run:
            return command
        self._require_model(model)
        command[0] = str(self._require_binary(SERVER_BINARY))
        return self._execute(command)

    def find_binary(self, name: str) -> Path:
        """The path of llama.cpp binary `name` (``<build_dir>/bin``, then ``$BITNET_BIN_DIR``).

        Raises:
            RuntimeConfigurationError: it is not there; the message lists each path tried and how to
                build the engine.
        """
        return self._require_binary(name)

    def check_model(self, model: StrPath) -> Path:
        """Check that `model` is a usable GGUF file before anything is launched; return its path.

        Raises:
            RuntimeConfigurationError: it is missing, a directory, or not a GGUF file;
                `ModelFileError` (a subclass) when its structure or hyper-parameters are damaged.
        """
        return self._require_model(model)

    def resolve_threads(self, threads: int | None) -> int:
        """The thread count a command will get: all cores for None, more than the cores clamped (with a
        warning). Raises `RuntimeConfigurationError` for anything but a positive int or None."""
        return self._resolve_threads(threads)

    def inference_command(self, **kwargs: Any) -> list[str]:
        """The validated llama-completion argv for `run_inference`'s arguments; nothing is launched and
        neither the binary nor the model has to exist (``run_inference(dry_run=True)``, typed)."""
        return self.run_inference(dry_run=True, **kwargs)

    def server_command(self, **kwargs: Any) -> list[str]:
        """The validated llama-server argv for `run_server`'s arguments; nothing is launched."""
        return self.run_server(dry_run=True, **kwargs)

    def diagnostics(self, *, model: StrPath | None = None) -> RuntimeDiagnostics:
        """Check the setup, reporting problems instead of raising: binaries, model, CPU, engine build.

        When llama-completion is found it is run once with ``--version`` (10 s timeout) in the
        launch environment to read the engine's version, compiler and loaded CPU variant.
        """
        model_path = None if model is None else self._model_path(model)
        binaries = {}
        for name in DIAGNOSTIC_BINARIES:
            found = self._resolve_binary(name, required=False)
            binaries[name] = None if found is None else str(found)
        model_present = model_path is not None and model_path.is_file()
        completion = binaries[INFERENCE_BINARY]
        env = self.environment
        return RuntimeDiagnostics(
            build_dir=str(self._build_dir),
            bin_dir_override=self._bin_dir_override(),
            binaries=MappingProxyType(binaries),
            model=None if model_path is None else str(model_path),
            model_present=model_present,
            model_is_gguf=model_present and model_path is not None and is_gguf_file(model_path),
            cpu_count=self._cpu_count,
            cpu=MappingProxyType(detect_cpu().as_dict()),
            engine=None if completion is None else MappingProxyType(probe_engine(completion, env)),
            activation_quant=(
                MappingProxyType(activation_quant_mode(model_path, env))
                if model_path is not None and model_present and is_gguf_file(model_path)
                else None
            ),
        )

    # ------------------------------------------------------------------ command builders

    def _build_inference_command(
        self,
        *,
        model: StrPath,
        prompt: str,
        n_predict: int,
        ctx_size: int,
        temperature: float,
        threads: int | None,
        batch_size: int,
        gpu_layers: int | None,
        conversation: bool,
        extra_args: Sequence[str] | None,
    ) -> list[str]:
        """Validate the arguments and return the llama-completion argv (no file-system checks)."""
        model_arg = os.fspath(self._model_path(model))
        _ensure_prompt(prompt, required=True)
        self._ensure_positive(n_predict, "n_predict")
        self._ensure_positive(ctx_size, "ctx_size")
        self._ensure_temperature(temperature)
        self._ensure_positive(batch_size, "batch_size")
        if not isinstance(conversation, bool):
            raise RuntimeConfigurationError(f"conversation must be True or False. Got {conversation!r}.")
        n_threads = self._resolve_threads(threads)
        ngl = self._resolve_gpu_layers(gpu_layers)
        extra = _check_extra_args(extra_args)
        command = [
            self._binary_for_command(INFERENCE_BINARY),
            "-m", model_arg,
            # in chat mode llama-completion takes `-p` as the first user turn; ours is the system prompt
            "-sys" if conversation else "-p", prompt,
            "-n", str(n_predict),
            "-c", str(ctx_size),
            "-t", str(n_threads),
            "--temp", _format_temperature(temperature),
            "-b", str(batch_size),
        ]  # fmt: skip
        if ngl is not None:
            command += ["-ngl", str(ngl)]
        command.append("-cnv" if conversation else "-no-cnv")
        return command + extra

    def _build_server_command(
        self,
        *,
        model: StrPath,
        host: str,
        port: int,
        prompt: str | None,
        n_predict: int,
        ctx_size: int,
        temperature: float,
        threads: int | None,
        batch_size: int,
        gpu_layers: int | None,
        extra_args: Sequence[str] | None,
    ) -> list[str]:
        """Validate the arguments and return the llama-server argv (no file-system checks)."""
        model_arg = os.fspath(self._model_path(model))
        if not isinstance(host, str) or not host.strip():
            raise RuntimeConfigurationError(
                f"host must be a non-empty string such as '127.0.0.1' or '0.0.0.0'. Got {host!r}."
            )
        self._ensure_port(port)
        _ensure_prompt(prompt, required=False)
        self._ensure_positive(n_predict, "n_predict")
        self._ensure_positive(ctx_size, "ctx_size")
        self._ensure_temperature(temperature)
        self._ensure_positive(batch_size, "batch_size")
        n_threads = self._resolve_threads(threads)
        ngl = self._resolve_gpu_layers(gpu_layers)
        extra = _check_extra_args(extra_args)
        if prompt is not None:
            log.warning(
                "llama-server has no start-up prompt; ignoring prompt=%r. Send it with each request "
                "(e.g. as the system message of /v1/chat/completions).",
                prompt,
            )
        command = [
            self._binary_for_command(SERVER_BINARY),
            "-m", model_arg,
            "-c", str(ctx_size),
            "-t", str(n_threads),
            "-n", str(n_predict),
            "--temp", _format_temperature(temperature),
            "--host", host,
            "--port", str(port),
            "-cb",
            "-b", str(batch_size),
        ]  # fmt: skip
        if ngl is not None:
            command += ["-ngl", str(ngl)]
        return command + extra

    # ------------------------------------------------------------------ validation helpers

    def _coerce_log_level(self, level: int | str) -> int:
        """Return the numeric level for an int or a level name in any case."""
        if isinstance(level, str) and level.strip().upper() in _LOG_LEVELS:
            return _LOG_LEVELS[level.strip().upper()]
        if isinstance(level, int) and not isinstance(level, bool) and level >= 0:
            return level
        raise RuntimeConfigurationError(
            f"log_level must be a logging level such as logging.INFO or one of "
            f"{', '.join(sorted(_LOG_LEVELS))} (any case). Got {level!r}."
        )

    def _ensure_positive(self, value: int, field: str) -> None:
        """Reject anything but an int > 0 (bools and floats included)."""
        if not _is_int(value) or value <= 0:
            raise RuntimeConfigurationError(f"{field} must be a positive integer. Got {value!r}.")

    def _ensure_temperature(self, value: float) -> None:
        """Accept a finite number >= 0 (0 = greedy decoding)."""
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise RuntimeConfigurationError(
                f"temperature must be a finite number >= 0 (0 means greedy decoding). Got {value!r}."
            )

    def _ensure_port(self, value: int) -> None:
        """Accept an int port in 1-65535."""
        if not _is_int(value) or not 1 <= value <= 65535:
            raise RuntimeConfigurationError(f"port must be an integer in 1-65535. Got {value!r}.")

    def _resolve_threads(self, requested: int | None) -> int:
        """None -> all cores; <= 0 rejected; more than the cores -> clamped, with a warning."""
        if requested is None:
            return self._cpu_count
        if not _is_int(requested) or requested <= 0:
            raise RuntimeConfigurationError(
                f"threads must be a positive integer, or None for all {self._cpu_count} cores. "
                f"Got {requested!r}."
            )
        if requested > self._cpu_count:
            log.warning(
                "threads=%d is more than the %d cores of this machine; using %d",
                requested,
                self._cpu_count,
                self._cpu_count,
            )
            return self._cpu_count
        return requested

    def _resolve_gpu_layers(self, value: int | None) -> int | None:
        """None -> no ``-ngl`` flag; otherwise an int >= 0."""
        if value is None:
            return None
        if not _is_int(value) or value < 0:
            raise RuntimeConfigurationError(
                f"gpu_layers must be an integer >= 0, or None to omit -ngl. Got {value!r}."
            )
        return value

    def _model_path(self, model: StrPath) -> Path:
        if not isinstance(model, (str, os.PathLike)) or not os.fspath(model):
            raise RuntimeConfigurationError(
                f"model must be the path of a .gguf file (str or os.PathLike). Got {model!r}."
            )
        return Path(model)

    def _require_model(self, model: StrPath) -> Path:
        """Return the model path after checking it is an existing, readable GGUF file that passes
        `bitnet.models.formats.check` (header, hyper-parameters, vocabulary, no NaN in float tensors).

        Raises:
            RuntimeConfigurationError: missing, not a file or unreadable; `ModelFileError` (a subclass)
                when it is not a GGUF, or a damaged or inconsistent one.
        """
        path = self._model_path(model)
        if not path.exists():
            raise RuntimeConfigurationError(
                f"model file {path} does not exist. Pass the path of a .gguf file "
                "(`invoke download` and `invoke convert` make one)."
            )
        if not path.is_file():
            raise RuntimeConfigurationError(f"model {path} is not a file. Pass the path of a .gguf file.")
        try:
            with path.open("rb") as fh:
                magic = fh.read(len(GGUF_MAGIC))
        except OSError as exc:
            raise RuntimeConfigurationError(
                f"model file {path} cannot be read ({exc.strerror or exc}). Check its permissions."
            ) from exc
        if magic != GGUF_MAGIC:
            raise ModelFileError(
                f"model {path} is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}. "
                "Convert the checkpoint with `invoke convert` and pass the .gguf it writes.",
                path=path,
                reason="not a GGUF file",
            )
        # The engine aborts, hangs or prints garbage on some damaged files: refuse them here (ModelFileError).
        check_gguf(path)
        return path

    # ------------------------------------------------------------------ binaries

    def _bin_dir_override(self) -> str | None:
        value = self.environment.get(BIN_DIR_ENV) or os.environ.get(BIN_DIR_ENV)
        return value or None

    def _candidate_binaries(self, name: str) -> Iterable[Path]:
        """Every path tried for binary `name`, in lookup order (see the class docstring)."""
        bin_dir = self._build_dir / "bin"
        candidates = [bin_dir / name, bin_dir / "Release" / f"{name}.exe", bin_dir / f"{name}.exe"]
        override = self._bin_dir_override()
        if override:
            candidates += [Path(override) / name, Path(override) / f"{name}.exe"]
        return candidates

    def _resolve_binary(self, name: str, *, required: bool) -> Path | None:
        """Return the first candidate that is an executable regular file.

        When none is and `required` is True, raise `RuntimeConfigurationError` with the hint.
        """
        candidates = list(self._candidate_binaries(name))
        for path in candidates:
            if path.is_file() and os.access(path, os.X_OK):
                log.debug("using %s", path)
                return path
        if required:
            raise RuntimeConfigurationError(self._missing_binary_hint(name, candidates))
        return None

    def _require_binary(self, name: str) -> Path:
        """Return the path of binary `name` or raise `RuntimeConfigurationError` saying how to build it."""
        path = self._resolve_binary(name, required=True)
        assert path is not None
        return path

    def _binary_for_command(self, name: str) -> str:
        found = self._resolve_binary(name, required=False)
        return str(found if found is not None else self._build_dir / "bin" / name)

    def _missing_binary_hint(self, name: str, candidates: Iterable[Path]) -> str:
        """Say where `name` was looked for, why each candidate failed, and how to build it."""
        lines = [f"{name} not found. Tried:"]
        for path in candidates:
            if path.is_file():
                why = f"exists but is not executable (chmod +x {shlex.quote(str(path))})"
            elif path.exists():
                why = "exists but is not a regular file"
            else:
                why = "missing"
            lines.append(f"  {path}  ({why})")
        if not self._bin_dir_override():
            lines.append(f"  (${BIN_DIR_ENV} is not set)")
        lines.append(
            f"Build the engine with `invoke build --build-dir {shlex.quote(str(self._build_dir))}`, "
            f"or set {BIN_DIR_ENV} to a directory that holds {name}."
        )
        return "\n".join(lines)

    # ------------------------------------------------------------------ running

    def _execute(
        self, command: Sequence[str], *, timeout: float | None = None, engine_log: bool = True
    ) -> int:
        """Run `command` (an argv, no shell) in the launch environment, return 0 when it exits 0.

        The child's stdout goes straight to ours; its stderr is copied through to ``sys.stderr`` while
        the last lines are kept for the error. The child runs in its own process group so that on
        Ctrl-C, SIGTERM/SIGHUP under `stop_signals`, a timeout (or any other exception while waiting)
        the whole group is terminated, then killed after a short grace period, before the exception
        propagates; and it dies with us if we are killed (`die_with_parent`; this thread waits for it).

        Raises:
            RuntimeLaunchError: the command could not start, or exited non-zero (with the stderr tail).
            RuntimeTimeoutError: it ran longer than `timeout` seconds.
        """
        argv = check_command(command)
        log.info("running: %s", shlex.join(argv))
        try:
            proc = subprocess.Popen(
                argv,
                env=dict(self.environment),
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        except OSError as exc:
            message = start_failure_message(argv, exc, self._build_dir)
            raise RuntimeLaunchError(message, command=argv) from exc
        assert proc.stderr is not None
        tee = StderrTee(proc.stderr, sys.stderr if engine_log else None)
        tee.start()
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            assert timeout is not None
            log.warning("%s timed out after %g s: stopping it", Path(argv[0]).name, timeout)
            terminate_sync(proc, _TERMINATE_GRACE_SECONDS)
            tee.finish(_PIPE_DRAIN_SECONDS)
            raise RuntimeTimeoutError(
                f"{Path(argv[0]).name} ran longer than the timeout of {timeout:g} s and was stopped.\n"
                f"Command: {shlex.join(argv)}\nPass a larger timeout (or None) if it needs longer.",
                timeout=timeout,
                command=argv,
                returncode=proc.returncode,
                stderr_tail=tee.tail(),
            ) from None
        except BaseException:  # KeyboardInterrupt, StopRequested: never leave the engine running
            log.warning("interrupted: stopping %s (pid %d)", Path(argv[0]).name, proc.pid)
            terminate_sync(proc, _TERMINATE_GRACE_SECONDS)
            raise
        finally:
            tee.finish(_PIPE_DRAIN_SECONDS)
        if returncode != 0:
            raise RuntimeLaunchError(
                exit_message(argv, returncode), command=argv, returncode=returncode, stderr_tail=tee.tail()
            )
        self._last_execution_timestamp = time.time()
        return 0


# ---------------------------------------------------------------------- module helpers


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ensure_prompt(prompt: str | None, *, required: bool) -> None:
    if prompt is None and not required:
        return
    if not isinstance(prompt, str) or not prompt.strip():
        allowed = "a non-empty string" if required else "None or a non-empty string"
        raise RuntimeConfigurationError(f"prompt must be {allowed}. Got {prompt!r}.")


def _format_temperature(value: float) -> str:
    return repr(float(value))  # 0 -> "0.0", 0.8 -> "0.8": full precision, parseable by strtof


def _check_extra_args(extra_args: Sequence[str] | None) -> list[str]:
    if extra_args is None:
        return []
    if isinstance(extra_args, (str, bytes)) or not isinstance(extra_args, Sequence):
        raise RuntimeConfigurationError(
            "extra_args must be a list of strings, one per argument (split a command line with "
            f"shlex.split). Got {extra_args!r}."
        )
    bad = [arg for arg in extra_args if not isinstance(arg, str)]
    if bad:
        raise RuntimeConfigurationError(f"extra_args must contain only strings. Got {bad[0]!r}.")
    return list(extra_args)
