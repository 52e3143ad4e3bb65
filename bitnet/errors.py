"""Every typed error the `bitnet` package raises, in one place.

Library code raises these; only the CLIs and invoke tasks turn them into exit codes. Each message says
what was wrong and how to fix it, so `str(error)` is what a user should read.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BenchmarkError",
    "BenchmarkRunError",
    "BenchSpecError",
    "BitNetError",
    "CatalogError",
    "CheckpointDtypeError",
    "ConversionError",
    "CorruptCheckpointError",
    "EngineBuildError",
    "MissingCheckpointFileError",
    "MissingConfigKeyError",
    "ModelDownloadError",
    "ModelFileError",
    "ModelNotFoundError",
    "NumericsCheckError",
    "OutputNotWritableError",
    "PerplexityError",
    "PortInUseError",
    "RuntimeConfigurationError",
    "RuntimeLaunchError",
    "RuntimeTimeoutError",
    "SetupError",
    "StopRequested",
    "TextTooShortError",
    "TokenizerError",
    "TuneError",
    "UnknownArchitectureError",
    "UnknownModelError",
    "UnsupportedCheckpointError",
]

# How many trailing lines of a child's stderr an error keeps, and how many its message shows.
STDERR_TAIL_LINES = 50
_MESSAGE_TAIL_LINES = 15


class BitNetError(Exception):
    """Base class of all errors raised by the `bitnet` package."""


class EngineBuildError(BitNetError, RuntimeError):
    """The llama.cpp engine could not be fetched, patched, configured or built."""


class RuntimeConfigurationError(BitNetError, ValueError):
    """Bad input or setup for the runtime: an invalid argument, a missing model or binary."""


class ModelFileError(RuntimeConfigurationError):
    """A model file is damaged or inconsistent (found by `bitnet.models.formats.check` before the engine).

    Attributes:
        path: the file.
        reason: what is wrong with it (the message adds the file and the fix).
    """

    def __init__(self, message: str, *, path: object = None, reason: str = "") -> None:
        self.path = path
        self.reason = reason
        super().__init__(message)


class PortInUseError(RuntimeConfigurationError):
    """The address a server was asked to bind is taken (or not ours to bind); found before launching.

    Attributes:
        host, port: the address that could not be bound.
    """

    def __init__(self, message: str, *, host: str, port: int) -> None:
        self.host = host
        self.port = port
        super().__init__(message)


class TextTooShortError(RuntimeConfigurationError):
    """The text given to the perplexity tool has fewer than ``2 * ctx_size`` tokens.

    Attributes:
        n_tokens: how many tokens the text has, as the engine counted them; None when the text was
            refused before running it, from its size alone (a text of B bytes has at most B + 2 tokens).
        needed: ``2 * ctx_size``, the tokens llama-perplexity needs.
        ctx_size: the context size that was asked for.
    """

    def __init__(self, message: str, *, n_tokens: int | None, needed: int, ctx_size: int) -> None:
        self.n_tokens = n_tokens
        self.needed = needed
        self.ctx_size = ctx_size
        super().__init__(message)


class PerplexityError(BitNetError, RuntimeError):
    """llama-perplexity exited normally but printed no final estimate (the message says why it could not).

    Attributes:
        log_path: the file holding the run's full output (None if it could not be written).
    """

    def __init__(self, message: str, *, log_path: str | None = None) -> None:
        self.log_path = log_path
        super().__init__(message)


def tail_lines(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    """Return the last `lines` lines of `text` (without a trailing newline)."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:]) if text else ""


class RuntimeLaunchError(BitNetError, RuntimeError):
    """A process could not be started or exited with a non-zero status.

    Attributes:
        command: the argv that was launched (empty when unknown).
        returncode: the exit status; negative for "killed by signal N"; None if it never started or
            its status is unknown.
        stderr_tail: the last lines (up to 50) of what the process wrote to stderr.
        stdout, stderr: everything captured from the process ("" when output was not captured).
    """

    def __init__(
        self,
        message: str,
        *,
        command: Sequence[str] = (),
        returncode: int | None = None,
        stderr_tail: str = "",
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        self.command = tuple(command)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.stderr_tail = stderr_tail or tail_lines(stderr)
        shown = tail_lines(self.stderr_tail, _MESSAGE_TAIL_LINES)
        if shown:
            message = f"{message}\nLast lines of its stderr:\n{_indent(shown)}"
        super().__init__(message)


class RuntimeTimeoutError(RuntimeLaunchError):
    """A supervised process ran past its deadline and was killed (with its process group).

    `stdout`/`stderr` hold what it printed before it was killed; `timeout` is the deadline in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        timeout: float,
        command: Sequence[str] = (),
        returncode: int | None = None,
        stderr_tail: str = "",
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        self.timeout = timeout
        super().__init__(
            message,
            command=command,
            returncode=returncode,
            stderr_tail=stderr_tail,
            stdout=stdout,
            stderr=stderr,
        )


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# ---- conversion (bitnet.models.convert, .synthetic, .formats.writer): all are ConversionError, a
# ValueError; whenever one is raised, no partial output file is left behind.


class ConversionError(BitNetError, ValueError):
    """Base class: the checkpoint or the requested output cannot be converted as asked."""


class MissingCheckpointFileError(ConversionError):
    """A file the conversion needs (config.json, *.safetensors, tokenizer) is not in the model directory."""


class MissingConfigKeyError(ConversionError):
    """config.json lacks a key the architecture needs."""

    def __init__(self, key: str, config_path: object, architecture: str) -> None:
        self.key = key
        super().__init__(
            f"{config_path}: missing key {key!r}, which {architecture} checkpoints need. The config.json is "
            "incomplete or for another model: re-download the checkpoint, or add the key with the value from "
            "the model's card."
        )


class UnknownArchitectureError(ConversionError):
    """config.json names an architecture no converter module is registered for."""


class UnsupportedCheckpointError(ConversionError):
    """A known architecture with a feature our GGUF layout or engine cannot represent exactly."""


class CorruptCheckpointError(ConversionError):
    """A safetensors file is truncated, has a malformed header, or is missing tensors."""


class CheckpointDtypeError(ConversionError):
    """A tensor has a dtype the converter cannot use for its role (e.g. packed weights that are not uint8)."""


class TokenizerError(ConversionError):
    """The tokenizer files are missing, malformed, or of a kind the converter cannot map to GGUF."""


class OutputNotWritableError(ConversionError):
    """The output file cannot be written: missing or read-only directory, disk full, I/O error."""


# ---- measurement (bitnet.bench)


class BenchmarkError(BitNetError, RuntimeError):
    """A benchmark could not be set up or one of its engine runs failed (see `bitnet.bench.sweep`)."""


class BenchSpecError(BenchmarkError, ValueError):
    """A bench spec (file or flags) is invalid; the message names the key, the value and the fix."""


class BenchmarkRunError(BenchmarkError):
    """A run failed and the sweep was asked to stop (``fail_fast``); rows measured so far are stored.

    Attributes:
        run: the `BenchRun` so far (its ``failures`` end with `failure`).
        failure: the failed run, with its stderr tail and log file.
    """

    def __init__(self, run: Any, failure: Any) -> None:  # bitnet.bench.sweep's BenchRun, RunFailure
        self.run = run
        self.failure = failure
        super().__init__(
            f"benchmark stopped after a failed run (fail_fast); {len(run.rows)} rows are stored in "
            f"{run.results_path}.\n{failure.describe()}"
        )


class TuneError(BitNetError):
    """Tuning cannot run: no ternary matrices in the model, no compiler/cmake, a benchmark that failed."""


class NumericsCheckError(BitNetError, RuntimeError):
    """The reference check cannot run: a missing package, file or unsupported architecture."""


# ---- models: catalogue, download, installed models, `invoke setup`


class CatalogError(BitNetError, ValueError):
    """The catalogue file is missing or malformed; the message names the file, entry and field."""


class UnknownModelError(BitNetError, LookupError):
    """A model name that is not in the catalogue; the message lists close matches and all names."""

    def __init__(self, message: str, *, name: str, suggestions: tuple[str, ...]) -> None:
        super().__init__(message)
        self.name = name
        self.suggestions = suggestions


class ModelDownloadError(BitNetError, RuntimeError):
    """A model could not be downloaded or found locally. The message says why and what to do."""

    def __init__(self, message: str, *, repo_id: str | None = None, revision: str | None = None) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.revision = revision


class ModelNotFoundError(BitNetError, LookupError):
    """`invoke models --rm NAME` for a name that is not installed; the message lists what is."""


class SetupError(BitNetError, RuntimeError):
    """A setup step failed; the message names the step and how to go on."""


# ---- not an error: a stop signal unwinding the stack (bitnet.runtime.process.stop_signals)


class StopRequested(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived (see `stop_signals`): unwind, stop children, exit 128 + signum.

    A BaseException like KeyboardInterrupt, so ``except Exception`` clean-up code does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """What shells report for death by this signal: 130 (INT), 143 (TERM), 129 (HUP)."""
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name
