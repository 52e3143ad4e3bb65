"""Every typed error the `bitnet` package raises, in one place.

Library code raises these; only the CLIs and invoke tasks turn them into exit codes. Each message says
what was wrong and how to fix it, so `str(error)` is what a user should read.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BitNetError",
    "EngineBuildError",
    "ModelFileError",
    "PerplexityError",
    "PortInUseError",
    "RuntimeConfigurationError",
    "RuntimeLaunchError",
    "RuntimeTimeoutError",
    "TextTooShortError",
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
