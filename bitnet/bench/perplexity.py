"""Quality check: a model's perplexity on a text file, with the engine's llama-perplexity, as a tidy row.

    from bitnet.bench.perplexity import run_perplexity
    result = run_perplexity("models/2B/ggml-model-tq2_0.gguf", "wikitext-2-raw/wiki.test.raw")
    print(result.report())    # PPL = 17.1234 ± 0.12345 over N chunks of 512 tokens, the row file, ...

llama-perplexity (tools/perplexity/perplexity.cpp in the pinned llama.cpp) cuts the tokenized text into
chunks of ``ctx_size`` tokens, puts BOS first in each, and scores the second half of every chunk (the
first half is context). It prints a running estimate after each chunk, ``[1]17.52,[2]18.01,...`` on
stdout, and ``Final estimate: PPL = 17.1100 +/- 0.12345`` on stderr, where the "+/-" is the standard
error of the mean log-probability carried to the PPL. A text of fewer than ``2 * ctx_size`` tokens is
refused with a message and exit status 0, which we turn into `TextTooShortError`.

Users run it on wikitext-2 (``wiki.test.raw`` from `WIKITEXT2_URL`). Expected for 2B4T
(`REFERENCE_PPL`): 17.11 with the F16 embedding, 17.15 with a Q6_K one (issue 4); run with the default
context (512) over the whole file to compare with them.

The run goes through `RuntimeSupervisor.run_custom` (output captured, optional timeout, the process
group killed on timeout or Ctrl-C), the engine's full output is kept in ``<results_dir>/../logs/``, and
one row of kind "perplexity" is appended to ``<results_dir>/<date>-perplexity-<id>.jsonl`` with the
same identity columns as the llama-bench rows (bitnet.bench.results).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet.bench.recorder import RunRecorder
from bitnet.bench.results import DEFAULT_RESULTS_DIR, inspect_model
from bitnet.bench.spec import VARIANT_ENV, Config
from bitnet.engine.contract import KERNELS_ENV, PERPLEXITY_BINARY, VARIANT_REPORT_ENV, parse_engine_report
from bitnet.engine.cpu import detect_cpu
from bitnet.errors import (
    BenchmarkError,
    PerplexityError,
    RuntimeConfigurationError,
    RuntimeLaunchError,
    RuntimeTimeoutError,
    TextTooShortError,
    tail_lines,
)
from bitnet.runtime.runtime import BitNetRuntime
from bitnet.runtime.supervisor import RuntimeResult, RuntimeSupervisor

__all__ = [
    "MIN_CTX_SIZE",
    "PERPLEXITY_BINARY",
    "REFERENCE_PPL",
    "WIKITEXT2_URL",
    "PerplexityOutput",
    "PerplexityResult",
    "parse_perplexity_output",
    "run_perplexity",
]

log = logging.getLogger(__name__)

# The download named in perplexity.cpp's own comment; wiki.test.raw is inside.
WIKITEXT2_URL = "https://huggingface.co/datasets/ggml-org/ci/resolve/main/wikitext-2-raw-v1.zip"
# What to expect for microsoft/bitnet-b1.58-2B-4T on the whole wiki.test.raw (issue 4), by the type of
# its tied embedding/output head.
REFERENCE_PPL = {"f16": 17.11, "q6_k": 17.15}
# Each chunk scores ctx - ctx/2 - 1 tokens: below this there is too little context for a meaningful number.
MIN_CTX_SIZE = 16
# Tells the engine to name the CPU library it loaded and whether our kernels are on (engine patches).

# Formats printed by tools/perplexity/perplexity.cpp (pinned llama.cpp). The final line is not always at
# the start of a line: the ETA before it ends its own line on stdout, so stderr reads
# "... seconds per pass - ETA 0.00.727.922 I Final estimate: PPL = 9109.3862 +/- 433.43395".
_NUMBER = r"(-?nan|-?inf|[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
_FINAL_RE = re.compile(rf"Final estimate: PPL = {_NUMBER} \+/- {_NUMBER}")
_CHUNK_RE = re.compile(rf"\[(\d+)\]{_NUMBER},")  # "[%d]%.4lf," after each chunk (--ppl-output-type 0)
_PLAN_RE = re.compile(r"over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)")
_NEED_RE = re.compile(r"you need at least (\d+) tokens to evaluate perplexity with a context of (\d+)")
_ONLY_RE = re.compile(r"tokenizes to only (\d+) tokens")
_NO_SPREAD = "Unexpected negative standard deviation of log(prob)"
# bitnet: ternary kernels on (avx512vnni) | bitnet: ternary kernels off (BITNET_KERNELS=0) (avx512vnni)


# ---------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class PerplexityOutput:
    """What one llama-perplexity run printed.

    `ppl_stderr` is the engine's "+/-": the standard error of the mean negative log-likelihood, times
    the PPL. `chunk_ppl` holds the running estimate after each chunk (the last equals `ppl`).
    `n_batch`/`n_seq` are what the engine used: it rounds the batch down to a multiple of the context
    and evaluates ``n_seq = n_batch // ctx_size`` chunks per batch.
    """

    ppl: float
    ppl_stderr: float
    n_chunks: int
    ctx_size: int
    n_batch: int | None
    n_seq: int | None
    chunk_ppl: tuple[float, ...]


def parse_perplexity_output(text: str, *, source: str = "the text") -> PerplexityOutput:
    """Parse llama-perplexity's stdout and stderr (concatenated, in either order).

    `source` names the text file in error messages.

    Raises:
        TextTooShortError: the engine said the text has fewer than 2 × ctx tokens.
        PerplexityError: no final estimate (a non-finite or constant log-likelihood, or output cut short).
    """
    need, only = _NEED_RE.search(text), _ONLY_RE.search(text)
    if need:
        needed, ctx = int(need.group(1)), int(need.group(2))
        n_tokens = int(only.group(1)) if only else None
        raise TextTooShortError(
            _too_short_message(source, ctx, f"tokenizes to only {n_tokens} tokens", n_tokens),
            n_tokens=n_tokens,
            needed=needed,
            ctx_size=ctx,
        )
    chunks = tuple(float(m.group(2)) for m in _CHUNK_RE.finditer(text))
    final = _FINAL_RE.search(text)
    if final is None:
        if _NO_SPREAD in text:
            why = (
                "the engine found no spread in the log-probabilities, which happens when they are not "
                "finite (the model computes NaN/inf: check it loads and generates with `invoke infer`)"
            )
        else:
            why = "its output has no 'Final estimate' line (it may have been cut short)"
        last = f"; the running estimates were {', '.join(f'{p:g}' for p in chunks[-5:])}" if chunks else ""
        raise PerplexityError(f"llama-perplexity gave no perplexity for {source}: {why}{last}.")
    ppl, err = float(final.group(1)), float(final.group(2))
    if not (math.isfinite(ppl) and math.isfinite(err)):
        raise PerplexityError(
            f"llama-perplexity gave a non-finite perplexity for {source} (PPL = {ppl} +/- {err}): the model "
            "computes NaN/inf. Check it with `invoke infer`."
        )
    plan = _PLAN_RE.search(text)
    if plan is None:
        raise PerplexityError(
            f"llama-perplexity printed a final estimate but not how many chunks it scored "
            f"('calculating perplexity over N chunks, n_ctx=...'); is {PERPLEXITY_BINARY} from this toolkit?"
        )
    n_chunks, ctx, n_batch, n_seq = (int(g) for g in plan.groups())
    return PerplexityOutput(
        ppl=ppl,
        ppl_stderr=err,
        n_chunks=n_chunks,
        ctx_size=ctx,
        n_batch=n_batch,
        n_seq=n_seq,
        chunk_ppl=chunks,
    )


def _too_short_message(source: str, ctx_size: int, what: str, n_tokens: int | None) -> str:
    """Say why a text is too short for `ctx_size` and what to do about it."""
    needed = 2 * ctx_size
    fix = "Use a longer text"
    if n_tokens is not None and n_tokens // 2 >= MIN_CTX_SIZE:
        fix += f", or a smaller context: --ctx-size {n_tokens // 2} or less"
    elif n_tokens is None:
        fix += ", or a smaller --ctx-size"
    return (
        f"text file {source} {what}, but perplexity with a context of {ctx_size} tokens needs at least "
        f"2 × {ctx_size} = {needed} tokens. {fix} (wikitext-2's wiki.test.raw: {WIKITEXT2_URL})."
    )


# ---------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class PerplexityResult:
    """One perplexity measurement, as stored in its row.

    `seconds` is the wall time of the engine process (model load included). `chunk_ppl` holds the
    running estimates the engine printed after each chunk. `results_path` is the .jsonl file the row
    went to; `log_path` the engine's full output (None if it could not be written).
    """

    ppl: float
    ppl_stderr: float
    n_chunks: int
    ctx_size: int
    seconds: float
    command: tuple[str, ...]
    chunk_ppl: tuple[float, ...]
    model: Path
    text_file: Path
    text_sha256: str
    n_threads: int
    kernels: str
    results_path: Path
    log_path: Path | None

    def report(self) -> str:
        """What `invoke ppl` prints: the number, where the row is, and what 2B4T is expected to give."""
        refs = ", ".join(f"{ppl} ({head.upper()} embedding)" for head, ppl in REFERENCE_PPL.items())
        lines = [
            f"PPL = {self.ppl:.4f} ± {self.ppl_stderr:.5f} over {self.n_chunks} chunks of "
            f"{self.ctx_size} tokens",
            f"text: {self.text_file.name} (sha256 {self.text_sha256[:12]}); kernels: {self.kernels}; "
            f"threads: {self.n_threads}; {self.seconds:.1f} s",
            f"row: {self.results_path}",
        ]
        if self.log_path is not None:
            lines.append(f"log: {self.log_path}")
        lines.append(
            "expected for bitnet-b1.58-2B-4T on the whole of wikitext-2's wiki.test.raw, --ctx-size 512: "
            + refs
        )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- running


def run_perplexity(
    model: str | os.PathLike[str],
    text_file: str | os.PathLike[str],
    *,
    ctx_size: int = 512,
    batch_size: int = 512,
    threads: int | None = None,
    chunks: int | None = None,
    build_dir: str | os.PathLike[str] = "build",
    results_dir: str | os.PathLike[str] = DEFAULT_RESULTS_DIR,
    runtime: BitNetRuntime | None = None,
    timeout: float | None = None,
) -> PerplexityResult:
    """Measure `model`'s perplexity on `text_file` with llama-perplexity and store one row.

    Args:
        model: a .gguf file.
        text_file: plain text (wikitext-2's ``wiki.test.raw`` for numbers comparable with
            `REFERENCE_PPL`); it must tokenize to at least ``2 * ctx_size`` tokens.
        ctx_size: tokens per chunk (llama-perplexity ``-c``), at least `MIN_CTX_SIZE`.
        batch_size: tokens per decode (``-b``), at least `ctx_size`: every chunk is decoded in one
            batch, ``batch_size // ctx_size`` chunks at a time.
        threads: CPU threads; None uses every core (more than the cores is clamped, with a warning).
        chunks: score only the first N chunks (``--chunks``): quicker, rougher; None scores the whole text.
        build_dir: where to find the engine (``<build_dir>/bin``, then ``$BITNET_BIN_DIR``); ignored
            when `runtime` is given.
        results_dir: the row goes to a new ``<date>-perplexity-<id>.jsonl`` here; the engine's full
            output to ``<results_dir>/../logs/``.
        runtime: the `BitNetRuntime` to use (its environment, e.g. ``BITNET_KERNELS=0`` for stock ggml
            kernels, is the engine's); None makes one for `build_dir` that inherits ``os.environ``.
        timeout: seconds before the engine is killed; None waits as long as it takes (the whole of
            wiki.test.raw takes tens of minutes for a 2B model on 2 cores).

    Raises:
        RuntimeConfigurationError: an invalid argument; a missing or non-GGUF model; a missing, unreadable
            or empty text file; no llama-perplexity binary (with how to build it).
        TextTooShortError: the text has fewer than ``2 * ctx_size`` tokens (says which --ctx-size fits).
        RuntimeLaunchError: the engine could not start or failed (its stderr tail and full log named);
            `RuntimeTimeoutError` past `timeout`.
        PerplexityError: the engine finished without an estimate.
    """
    _check_int(ctx_size, "ctx_size", minimum=MIN_CTX_SIZE)
    _check_int(batch_size, "batch_size", minimum=1)
    if batch_size < ctx_size:
        raise RuntimeConfigurationError(
            f"batch_size ({batch_size}) must be at least ctx_size ({ctx_size}): each chunk of ctx_size "
            f"tokens is decoded in one batch. Pass batch_size={ctx_size} or more."
        )
    if chunks is not None:
        _check_int(chunks, "chunks", minimum=1, none_means="None for the whole text")
    if runtime is None:
        runtime = BitNetRuntime(build_dir=build_dir)
    elif not isinstance(runtime, BitNetRuntime):
        raise RuntimeConfigurationError(f"runtime must be a BitNetRuntime or None. Got {runtime!r}.")
    n_threads = runtime.resolve_threads(threads)
    model_path = runtime.check_model(model)
    text_path, text_sha256, text_bytes = _check_text(text_file, ctx_size)
    binary = runtime.find_binary(PERPLEXITY_BINARY)

    command = [
        str(binary),
        "-m", os.fspath(model_path),
        "-f", os.fspath(text_path),
        "-c", str(ctx_size),
        "-b", str(batch_size),
        "-t", str(n_threads),
    ]  # fmt: skip
    if chunks is not None:
        command += ["--chunks", str(chunks)]
    env = {**runtime.environment, VARIANT_REPORT_ENV: "1"}
    recorder = RunRecorder.start(
        "perplexity", results_dir=results_dir, build_dir=runtime.build_dir, cpu=detect_cpu()
    )
    results_path = recorder.results_path
    log_path = recorder.logs_dir.with_name(f"{results_path.stem}.log")
    log.info(
        "perplexity of %s on %s (%d bytes), context %d, %s chunks, %d threads; nothing more is "
        "printed until it finishes",
        model_path.name, text_path.name, text_bytes, ctx_size, chunks or "all", n_threads,
    )  # fmt: skip

    try:
        outcome = asyncio.run(_run_engine(runtime, command, env, timeout))
    except RuntimeLaunchError as exc:
        written = _write_log(log_path, command, exc.returncode, exc.stdout, exc.stderr)
        raise _with_log(exc, written) from exc
    written = _write_log(log_path, command, outcome.returncode, outcome.stdout, outcome.stderr)
    try:
        parsed = parse_perplexity_output(outcome.stdout + "\n" + outcome.stderr, source=str(text_path))
    except PerplexityError as exc:
        tail = tail_lines(outcome.stderr, 10)
        where = f"\nFull output: {written}" if written else ""
        raise PerplexityError(
            f"{exc}{where}\nLast lines of its stderr:\n{tail}",
            log_path=None if written is None else str(written),
        ) from exc

    kernels = "stock" if env.get(KERNELS_ENV) == "0" else "ours"
    variant = env.get(VARIANT_ENV) or None
    report = parse_engine_report(outcome.stderr)
    fields: dict[str, Any] = {
        "config": Config(kernels=kernels, variant=variant).label,
        "kernels": kernels,
        "kernels_active": report.kernels,
        "kernels_isa": report.kernels_isa,
        "cpu_variant": report.cpu_variant or variant,
        "cpu_variant_requested": variant or "auto",
        "model_name": model_path.stem,
        "model_path": str(model_path),
        **_model_columns(model_path),
        "text_file": text_path.name,
        "text_sha256": text_sha256,
        "text_bytes": text_bytes,
        "ctx_size": parsed.ctx_size,
        "n_batch": parsed.n_batch,
        "n_seq": parsed.n_seq,
        "n_threads": n_threads,
        "chunks_requested": chunks,
        "n_chunks": parsed.n_chunks,
        "ppl": parsed.ppl,
        "ppl_stderr": parsed.ppl_stderr,
        "chunk_ppl": list(parsed.chunk_ppl),
        "seconds": round(outcome.duration, 3),
        "command": shlex.join(command),
    }
    recorder.append([recorder.row(fields)])
    return PerplexityResult(
        ppl=parsed.ppl,
        ppl_stderr=parsed.ppl_stderr,
        n_chunks=parsed.n_chunks,
        ctx_size=parsed.ctx_size,
        seconds=outcome.duration,
        command=tuple(command),
        chunk_ppl=parsed.chunk_ppl,
        model=model_path,
        text_file=text_path,
        text_sha256=text_sha256,
        n_threads=n_threads,
        kernels=kernels,
        results_path=results_path,
        log_path=written,
    )


async def _run_engine(
    runtime: BitNetRuntime, command: Sequence[str], env: Mapping[str, str], timeout: float | None
) -> RuntimeResult:
    async with RuntimeSupervisor(runtime, concurrency=1, env=env) as supervisor:
        return await supervisor.run_custom(command, timeout=timeout)


def _check_int(value: object, field: str, *, minimum: int, none_means: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        alternative = f", or {none_means}" if none_means else ""
        raise RuntimeConfigurationError(
            f"{field} must be an integer >= {minimum}{alternative}. Got {value!r}."
        )


def _check_text(text_file: str | os.PathLike[str], ctx_size: int) -> tuple[Path, str, int]:
    """Return (path, sha256, size in bytes) of a readable, non-blank text that may be long enough.

    The length check here is a bound only (a text of B bytes has at most B + 2 tokens: every token
    covers at least one byte, plus BOS and a SentencePiece-style leading space); the engine counts.
    """
    if not isinstance(text_file, (str, os.PathLike)) or not os.fspath(text_file):
        raise RuntimeConfigurationError(
            f"text_file must be the path of a text file (str or os.PathLike). Got {text_file!r}."
        )
    path = Path(text_file)
    if not path.exists():
        raise RuntimeConfigurationError(
            f"text file {path} does not exist. Pass a plain-text file, e.g. wikitext-2's wiki.test.raw "
            f"(in {WIKITEXT2_URL})."
        )
    if not path.is_file():
        raise RuntimeConfigurationError(f"text file {path} is not a file. Pass a plain-text file.")
    digest = hashlib.sha256()
    size, blank = 0, True
    try:
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
                size += len(block)
                blank = blank and not block.strip()
    except OSError as exc:
        raise RuntimeConfigurationError(
            f"text file {path} cannot be read ({exc.strerror or exc}). Check its permissions."
        ) from exc
    if blank:
        what = "is empty" if size == 0 else f"holds only whitespace ({size} bytes)"
        raise RuntimeConfigurationError(
            f"text file {path} {what}: there is nothing to score. Pass a text of at least "
            f"2 × ctx_size = {2 * ctx_size} tokens, e.g. wikitext-2's wiki.test.raw (in {WIKITEXT2_URL})."
        )
    if size + 2 < 2 * ctx_size:
        raise TextTooShortError(
            _too_short_message(str(path), ctx_size, f"is only {size} bytes (≤ {size + 2} tokens)", None),
            n_tokens=None,
            needed=2 * ctx_size,
            ctx_size=ctx_size,
        )
    return path, digest.hexdigest(), size


def _model_columns(path: Path) -> dict[str, Any]:
    """The model's shape and formats from its GGUF header; none when it cannot be read."""
    try:
        return inspect_model(path).as_row()
    except BenchmarkError as exc:
        log.warning("%s; the row will have no shape or format columns", exc)
        return {}


def _write_log(
    path: Path, command: Sequence[str], returncode: int | None, stdout: str, stderr: str
) -> Path | None:
    """Keep the engine's full output; return the file, or None (with a warning) if it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"$ {shlex.join(command)}\n# exit status: {returncode}\n"
        path.write_text(f"{header}\n## stdout\n{stdout}\n## stderr\n{stderr}")
    except OSError as exc:
        log.warning("could not write the log %s: %s", path, exc)
        return None
    return path


def _with_log(exc: RuntimeLaunchError, log_path: Path | None) -> RuntimeLaunchError:
    """The same error with the log file named (the stderr tail is appended again by the constructor)."""
    head = str(exc).split("\nLast lines of its stderr:")[0]
    message = f"{head}\nFull output: {log_path}" if log_path else head
    common: dict[str, Any] = {
        "command": exc.command,
        "returncode": exc.returncode,
        "stdout": exc.stdout,
        "stderr": exc.stderr,
    }
    if isinstance(exc, RuntimeTimeoutError):
        return RuntimeTimeoutError(message, timeout=exc.timeout, **common)
    return RuntimeLaunchError(message, **common)
