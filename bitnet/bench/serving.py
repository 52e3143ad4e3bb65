"""End-to-end serving benchmark: llama-server under N concurrent clients, stored as tidy rows.

    from bitnet.bench.serving import default_model, run_serving_bench
    rows = run_serving_bench(default_model(), concurrency=(1, 2, 4, 8), compare="stock")

For each concurrency level N (and each engine config, alternating ours/stock within a level: A B A B),
a fresh llama-server is started on 127.0.0.1 (bitnet.runtime.server), one warm-up request is sent, then N
asyncio clients (the `openai` package's AsyncOpenAI, one connection pool each, like N users) each send
`requests_per_client` non-streamed chat completions one after the other. Every request is greedy
(temperature 0, a fixed seed) and generates exactly `max_tokens` tokens (``ignore_eos``) from a prompt
evaluated in full (``cache_prompt: false``), so each request is the same amount of work.

A level yields one row of kind "serving" (bitnet.bench.results) with the identity columns of
`invoke bench` rows and:

    concurrency, parallel, ctx_size          clients; server slots (-np); total context (-c)
    n_requests, requests_ok, errors          requests sent, answered, failed (failures are counted,
    error_messages, server_error            never raised; distinct messages are kept)
    max_tokens, n_prompt, completion_tokens  tokens asked per request; prompt tokens per request; total
    wall_s, tokens_per_s                     level wall time (first request sent -> last answer, s);
                                             completion tokens of answered requests / wall_s
    latency_p50_s, latency_p95_s,            per-request latency (time.monotonic, s) of answered
    latency_mean_s, samples_latency_s        requests; numpy percentiles (linear interpolation)
    peak_rss_bytes, rss_ready_bytes          the server's VmHWM after the level; VmRSS when ready
    kernels_reported                         "on"/"off" as the engine itself logged it

Why a server per level rather than one for all: by default the server gets one slot per client
(``parallel=None``), which is a different server configuration for each level; VmHWM is a high-water
mark over a process's life, so only a fresh process makes it a per-level number; no KV cache or
allocator state carries over from one level to the next; and a server that dies spoils one level
only. A start costs well under a second for small models (the weights are mmapped from the page cache).

The clients run on the same machine as the server and share its cores; the numbers include that
client overhead (small for non-streamed requests), as a local deployment would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bitnet.bench.recorder import RunRecorder
from bitnet.bench.results import (
    DEFAULT_RESULTS_DIR,
    LOAD_PER_CORE_LIMIT,
    inspect_model,
    load_average,
    load_results,
    reliability,
)
from bitnet.bench.spec import VARIANT_ENV
from bitnet.bench.sweep import DEFAULT_PLOTS_DIR
from bitnet.engine.contract import KERNELS_ENV, SERVER_BINARY, VARIANT_REPORT_ENV, parse_engine_report
from bitnet.engine.cpu import detect_cpu
from bitnet.errors import BenchmarkError, BenchSpecError, RuntimeLaunchError
from bitnet.runtime.runtime import BitNetRuntime, StrPath
from bitnet.runtime.server import ServerHandle, start_server

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PROMPT",
    "MAX_CONCURRENCY",
    "default_model",
    "format_serving_table",
    "load_serve_spec",
    "load_serving_run",
    "run_serving_bench",
    "serve_bench",
    "ServingRun",
]

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = (1, 2, 4, 8)
DEFAULT_PROMPT = "Explain in a short paragraph why ternary weights make language models fast on a CPU."
DEFAULT_LEVEL_TIMEOUT = 600.0  # seconds for all requests of one level; what is unanswered by then fails
MAX_CONCURRENCY = 64  # loopback load stays bounded: clients per level
MAX_REQUESTS_PER_CLIENT = 1000
SEED = 0  # every request's sampling seed (greedy anyway: temperature 0)
_SLOT_CTX_STEP = 256  # llama.cpp gives a slot at least 256 tokens of context; we round up to a multiple
_TEMPLATE_TOKENS = 64  # room for the chat template's own tokens around the prompt
_WARMUP_TOKENS = 4
_MAX_ERROR_MESSAGES = 5  # distinct error messages kept per row
_ERROR_CHARS = 300
_LOG_HEAD_BYTES = 64 * 1024  # the engine reports its CPU variant and kernels in its first lines
# With GGML_CPU_VARIANT_REPORT=1 our engine logs at start-up "ggml: CPU variant libggml-cpu-avx2.so"
# (bitnet.runtime.diagnostics reads that) and "bitnet: ternary kernels on (avx2)" (kernels/patches/0004).
_KERNEL_CHOICES = ("ours", "stock")


# ---------------------------------------------------------------------------------------- arguments


def _positive(value: object, field: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise BenchSpecError(f"{field} must be an integer from 1 to {limit}. Got {value!r}.")
    return value


def _levels(concurrency: int | str | Sequence[int]) -> list[int]:
    """1,2,4 / "1,2,4" / 4 -> [1, 2, 4] (order kept, duplicates dropped), each 1..MAX_CONCURRENCY."""
    items: list[Any]
    if isinstance(concurrency, str):
        items = [s.strip() for s in concurrency.split(",") if s.strip()]
        try:
            items = [int(s) for s in items]
        except ValueError:
            raise BenchSpecError(
                f"concurrency must be comma-separated client counts such as 1,2,4,8. Got {concurrency!r}."
            ) from None
    elif isinstance(concurrency, int):
        items = [concurrency]
    else:
        items = list(concurrency)
    if not items:
        raise BenchSpecError("concurrency is empty: give at least one client count, e.g. 1,2,4,8.")
    return list(dict.fromkeys(_positive(n, "each concurrency level", MAX_CONCURRENCY) for n in items))


def _configs(kernels: str | None, compare: str | Sequence[str], env: Mapping[str, str]) -> list[str | None]:
    """The kernel choices to run: `kernels` (None = as `env` says) then each of `compare`, deduplicated."""
    extra = [s.strip() for s in compare.split(",")] if isinstance(compare, str) else list(compare)
    choices: list[str | None] = [kernels, *(s for s in extra if s)]
    for choice in choices:
        if choice is not None and choice not in _KERNEL_CHOICES:
            raise BenchSpecError(
                f"kernels {choice!r} is not understood: use 'ours' (BITNET_KERNELS=1), 'stock' "
                "(BITNET_KERNELS=0) or None to keep the environment's setting."
            )
    seen: dict[str, str | None] = {}
    for choice in choices:
        seen.setdefault(_label(choice, env), choice)
    return list(seen.values())


def _label(kernels: str | None, env: Mapping[str, str]) -> str:
    """The config a kernel choice runs: "ours" or "stock" (None: "stock" only if BITNET_KERNELS=0)."""
    if kernels is not None:
        return kernels
    return "stock" if env.get(KERNELS_ENV) == "0" else "ours"


def _server_env(base: Mapping[str, str], kernels: str | None) -> dict[str, str]:
    env = dict(base)
    if kernels is not None:
        env[KERNELS_ENV] = "1" if kernels == "ours" else "0"
    env[VARIANT_REPORT_ENV] = "1"  # the engine names its CPU library and kernel state in its log
    return env


def _slot_ctx(prompt: str, max_tokens: int) -> int:
    """Context a slot needs: prompt + template + generated tokens, rounded up to a multiple of 256.

    The prompt's UTF-8 length in bytes bounds its token count (a token covers at least one byte).
    """
    need = len(prompt.encode()) + _TEMPLATE_TOKENS + max_tokens
    return -(-need // _SLOT_CTX_STEP) * _SLOT_CTX_STEP


_SERVE_SPEC_KEYS = {"kind", "description", "model", "concurrency", "requests", "max_tokens", "compare",
                    "parallel", "threads", "timeout"}  # fmt: skip


def load_serve_spec(name_or_path: str | Path) -> dict[str, Any]:
    """Read a serving spec (``kind = "serve"`` in bench/specs/NAME.toml or a .toml path) into the
    keyword arguments of `run_serving_bench` (``model``: a GGUF file; without it `default_model`'s choice).
    Flags given to ``invoke serve-bench`` override it.

    Raises:
        BenchSpecError: missing file, not TOML, not a serve spec, or an unknown key or bad value.
    """
    from bitnet.bench.spec import SPEC_DIR, tomllib  # tomli on Python 3.10

    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SPEC_DIR / f"{name_or_path}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BenchSpecError(
            f"cannot read serving spec {path}: {exc}. Give a TOML file or a name in {SPEC_DIR}."
        ) from exc
    if data.get("kind") != "serve":
        raise BenchSpecError(
            f'{path} is not a serving spec: it needs kind = "serve" (use it with invoke bench).'
        )
    unknown = set(data) - _SERVE_SPEC_KEYS
    if unknown:
        raise BenchSpecError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(_SERVE_SPEC_KEYS))}."
        )
    out: dict[str, Any] = {}
    names = {"requests": "requests_per_client", "max_tokens": "max_tokens", "parallel": "parallel",
             "threads": "threads"}  # fmt: skip
    for key, arg in names.items():
        if key in data:
            out[arg] = _positive(data[key], f"{path}: {key}", 1_000_000)
    if "timeout" in data:
        if (
            isinstance(data["timeout"], bool)
            or not isinstance(data["timeout"], (int, float))
            or data["timeout"] <= 0
        ):
            raise BenchSpecError(f"{path}: timeout must be a number of seconds > 0. Got {data['timeout']!r}.")
        out["timeout"] = float(data["timeout"])
    if "concurrency" in data:
        out["concurrency"] = _levels(data["concurrency"])
    if "compare" in data:
        compare = data["compare"]
        items = [compare] if isinstance(compare, str) else compare
        if not isinstance(items, list) or not all(c in ("ours", "stock") for c in items):
            raise BenchSpecError(f'{path}: compare must be a list of "ours"/"stock". Got {compare!r}.')
        out["compare"] = items
    if "model" in data:
        if not isinstance(data["model"], str) or not data["model"]:
            raise BenchSpecError(f"{path}: model must be the path of a GGUF file. Got {data['model']!r}.")
        out["model"] = data["model"]
    return out


def default_model(models_dir: StrPath | None = None) -> Path:
    """The model `invoke serve-bench` measures when given none: the same choice as `invoke bench`
    (the newest converted model, else the synthetic 2B4T shape in ``<models_dir>/dummy-2B/``, generated if
    missing or made by an older generator). Logs which one and why."""
    from bitnet.bench.sweep import default_model as bench_default
    from bitnet.bench.sweep import prepare_model

    request, note = bench_default()
    log.info("%s", note)
    from bitnet.models.installed import models_dir as default_models_dir

    return prepare_model(request, default_models_dir() if models_dir is None else Path(models_dir))


# ---------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class _Answer:
    """One request: its latency (s) and token counts when answered, or why it failed."""

    latency_s: float | None
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Level:
    """What the clients of one level saw: the answers that finished, in finishing order, and the time."""

    answers: list[_Answer]
    n_requests: int
    wall_s: float
    timeout: float

    @property
    def unfinished(self) -> int:
        return self.n_requests - len(self.answers)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"[:_ERROR_CHARS]


async def _ask(client: Any, request: Mapping[str, Any]) -> _Answer:
    """Send one chat completion; a failure (HTTP error, lost connection, timeout) becomes an answer."""
    import openai

    start = time.monotonic()
    try:
        reply = await client.chat.completions.create(**request)
    except openai.OpenAIError as exc:
        return _Answer(None, error=_describe(exc))
    latency = time.monotonic() - start
    usage = reply.usage
    if usage is None or not usage.completion_tokens:
        return _Answer(None, error=f"the reply reports no generated tokens (usage: {usage})")
    return _Answer(latency, int(usage.completion_tokens), int(usage.prompt_tokens))


async def _measure_level(
    handle: ServerHandle,
    *,
    concurrency: int,
    requests_per_client: int,
    request: Mapping[str, Any],
    timeout: float,
) -> _Level:
    """`concurrency` clients × `requests_per_client` sequential requests against `handle`, all at once.

    Requests still unanswered `timeout` seconds after the first was sent are cancelled (their
    connections closed, which frees the server's slot) and count as failures.
    """
    import openai

    key = handle.api_key or "none"
    clients = [
        # no retries: a retry would hide a failure and stretch a latency
        openai.AsyncOpenAI(base_url=handle.base_url, api_key=key, max_retries=0, timeout=timeout)
        for _ in range(concurrency)
    ]
    answers: list[_Answer] = []

    async def client_loop(client: Any) -> None:
        for _ in range(requests_per_client):
            answers.append(await _ask(client, request))

    try:
        # first-request costs (graph allocation, weights paged in) are not part of the level
        first = await _ask(clients[0], {**request, "max_tokens": _WARMUP_TOKENS})
        if first.error:
            log.warning("warm-up request failed: %s", first.error)
        start = time.monotonic()
        tasks = [asyncio.create_task(client_loop(c)) for c in clients]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        wall = time.monotonic() - start
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a bug in the loop itself is raised, not counted
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return _Level(answers, concurrency * requests_per_client, wall, timeout)


def _status_bytes(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM) in bytes; None if unreadable (not Linux, gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _log_head(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            return fh.read(_LOG_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _option(command: Sequence[str], flag: str) -> int | None:
    try:
        return int(command[list(command).index(flag) + 1])
    except (ValueError, IndexError):
        return None


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _level_columns(level: _Level) -> dict[str, Any]:
    """The measurement columns of a row, from what the clients saw."""
    ok = [a for a in level.answers if a.error is None and a.latency_s is not None]
    latencies = [a.latency_s for a in ok if a.latency_s is not None]
    errors = [a.error for a in level.answers if a.error is not None]
    if level.unfinished:
        errors += [f"no answer within the level's timeout of {level.timeout:g} s"] * level.unfinished
    tokens = sum(a.completion_tokens for a in ok)
    prompt_tokens = [a.prompt_tokens for a in ok if a.prompt_tokens is not None]
    return {
        "n_requests": level.n_requests,
        "requests_ok": len(ok),
        "errors": len(errors),
        "error_messages": list(dict.fromkeys(errors))[:_MAX_ERROR_MESSAGES],
        "n_prompt": int(np.median(prompt_tokens)) if prompt_tokens else None,
        "completion_tokens": tokens,
        "wall_s": level.wall_s,
        "tokens_per_s": tokens / level.wall_s if ok and level.wall_s > 0 else None,
        "latency_p50_s": _percentile(latencies, 50),
        "latency_p95_s": _percentile(latencies, 95),
        "latency_mean_s": float(np.mean(latencies)) if latencies else None,
        "samples_latency_s": latencies,
    }


@dataclass
class _Bench:
    """Everything a level needs, prepared once before the first server starts."""

    model: Path
    runtime: BitNetRuntime
    requests_per_client: int
    max_tokens: int
    prompt: str
    parallel: int | None
    threads: int | None
    ctx_size: int | None
    timeout: float
    ready_timeout: float
    recorder: RunRecorder
    static: dict[str, Any]  # the model columns every row shares

    def run_level(self, concurrency: int, kernels: str | None) -> dict[str, Any]:
        """Start a server, load it with `concurrency` clients, stop it; return the level's row."""
        env = self.runtime.environment
        runtime = BitNetRuntime(build_dir=self.runtime.build_dir, env=_server_env(env, kernels))
        slots = self.parallel or concurrency
        ctx = self.ctx_size or slots * _slot_ctx(self.prompt, self.max_tokens)
        request = {
            "model": self.static["model_name"],
            "messages": [{"role": "user", "content": self.prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "seed": SEED,
            "stream": False,
            # llama-server options: generate exactly max_tokens; evaluate every prompt in full
            "extra_body": {"ignore_eos": True, "cache_prompt": False},
        }
        label = _label(kernels, env)
        what = f"{concurrency} client(s) x {self.requests_per_client} request(s), {slots} slot(s), {label}"
        log.info("serving level: %s", what)
        load_before = load_average()
        load: float | None = load_before
        handle = start_server(
            self.model,
            runtime=runtime,
            threads=self.threads,
            parallel=slots,
            ctx_size=ctx,
            temperature=0.0,
            ready_timeout=self.ready_timeout,
        )
        server_error: str | None = None
        server_log: str | None = None
        try:
            head = _log_head(handle.log_path)
            rss_ready = _status_bytes(handle.pid, "VmRSS")
            level = asyncio.run(
                _measure_level(
                    handle,
                    concurrency=concurrency,
                    requests_per_client=self.requests_per_client,
                    request=request,
                    timeout=self.timeout,
                )
            )
            peak = _status_bytes(handle.pid, "VmHWM")
            load = max((v for v in (load_before, load_average()) if v is not None), default=None)
            try:
                handle.check(grace=1.0 if level.unfinished or any(a.error for a in level.answers) else 0.0)
            except RuntimeLaunchError as exc:
                server_error = str(exc).split("\n", 1)[0]
                server_log = str(handle.log_path)  # kept: stop() does not delete the log of a crash
                log.error("%s", server_error)
        finally:
            handle.stop(quiet=True)
        engine = parse_engine_report(head)
        reported = None if engine.kernels is None else ("on" if engine.kernels else "off")
        if reported and (reported == "on") != (label == "ours"):
            log.warning("%s: the engine reports its ternary kernels %s", what, reported)
        fields: dict[str, Any] = {
            "spec": "serving",
            "config": label,
            "kernels": label,
            "kernels_reported": reported,
            "cpu_variant": engine.cpu_variant,
            "cpu_variant_requested": env.get(VARIANT_ENV) or "auto",
            **self.static,
            "n_threads": _option(handle.command, "-t"),
            "concurrency": concurrency,
            "parallel": slots,
            "ctx_size": ctx,
            "requests_per_client": self.requests_per_client,
            "max_tokens": self.max_tokens,
            "seed": SEED,
            **_level_columns(level),
            "peak_rss_bytes": peak,
            "rss_ready_bytes": rss_ready,
            "server_error": server_error,
            "server_log": server_log,
            "load_avg_1m": load,  # the machine's 1-minute load average while the level ran
            "unreliable": reliability(load, self.recorder.identity.get("cpu_cores"), None) != "",
        }
        row = self.recorder.row(fields)
        if row["errors"]:
            failed = f"{row['errors']} of {row['n_requests']} request(s) failed"
            log.warning("%s: %s: %s", what, failed, "; ".join(row["error_messages"]))
        return row


# ---------------------------------------------------------------------------------------- entry point


def run_serving_bench(
    model: StrPath,
    *,
    concurrency: int | str | Sequence[int] = DEFAULT_CONCURRENCY,
    requests_per_client: int = 4,
    max_tokens: int = 32,
    prompt: str = DEFAULT_PROMPT,
    parallel: int | None = None,
    threads: int | None = None,
    ctx_size: int | None = None,
    results_dir: StrPath = DEFAULT_RESULTS_DIR,
    runtime: BitNetRuntime | None = None,
    kernels: str | None = None,
    compare: str | Sequence[str] = (),
    timeout: float = DEFAULT_LEVEL_TIMEOUT,
    ready_timeout: float = 300.0,
) -> list[dict[str, Any]]:
    """Measure llama-server throughput and latency under each concurrency level; store and return rows.

    Each level starts its own server on 127.0.0.1 (see the module docstring for why), sends one
    untimed warm-up request, then runs `concurrency` clients that each send `requests_per_client`
    greedy chat completions of exactly `max_tokens` tokens, and stops the server. One row per level
    and config (kind "serving") is appended to ``<results_dir>/<date>-serving-<run id>.jsonl`` as soon
    as it is measured; the rows are also returned (the same dicts, in order).

    Args:
        model: the .gguf file to serve.
        concurrency: client counts, e.g. (1, 2, 4, 8) or "1,2,4,8"; each 1..64.
        requests_per_client: requests each client sends one after the other (1..1000).
        max_tokens: tokens generated per request.
        prompt: the user message of every request.
        parallel: server slots (``-np``); None gives each level one slot per client.
        threads: server threads (None: all cores; above the cores is clamped with a warning).
        ctx_size: total server context (``-c``, shared by the slots); None sizes it so that the prompt
            and `max_tokens` fit in every slot.
        results_dir: where the .jsonl file goes.
        runtime: finds the engine and gives the server's environment (default ``BitNetRuntime()``).
        kernels: None runs the engine as the environment says; "stock" sets BITNET_KERNELS=0 for the
            server, "ours" BITNET_KERNELS=1.
        compare: more kernel choices to run at every level after `kernels` ("stock", or "ours,stock"),
            alternating within each level so that drift hits every config alike.
        timeout: seconds for all requests of a level; those unanswered by then are failures. The
            untimed warm-up request before them has a limit of its own of the same length.
        ready_timeout: seconds a server may take to load the model.

    A failed request (an HTTP error, a lost connection, a server that died, the timeout) is counted in
    the row's ``errors`` with its message in ``error_messages``; it is not raised. A level where nothing
    was answered has no throughput or latency (null).

    Raises:
        BenchSpecError: a bad argument or a missing model file (before any server starts).
        RuntimeConfigurationError: llama-server is not built.
        RuntimeLaunchError, RuntimeTimeoutError: a server did not start (rows measured so far are stored).
        BenchmarkError: every request of every level failed (the rows, with their errors, are stored).
    """
    levels = _levels(concurrency)
    requests_per_client = _positive(requests_per_client, "requests_per_client", MAX_REQUESTS_PER_CLIENT)
    max_tokens = _positive(max_tokens, "max_tokens", 1 << 20)
    if parallel is not None:
        parallel = _positive(parallel, "parallel", MAX_CONCURRENCY)
    if ctx_size is not None:
        ctx_size = _positive(ctx_size, "ctx_size", 1 << 24)
    if not isinstance(prompt, str) or not prompt.strip():
        raise BenchSpecError(f"prompt must be a non-empty string. Got {prompt!r}.")
    for value, name in ((timeout, "timeout"), (ready_timeout, "ready_timeout")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise BenchSpecError(f"{name} must be a number of seconds > 0. Got {value!r}.")
    runtime = BitNetRuntime() if runtime is None else runtime
    configs = _configs(kernels, compare, runtime.environment)
    path = Path(model)
    if not path.is_file():
        raise BenchSpecError(
            f"model file {path} does not exist: pass an existing .gguf file (default_model() makes the "
            "offline tiny one)."
        )
    binary = runtime.find_binary(SERVER_BINARY)
    assert binary is not None
    recorder = RunRecorder.start(
        "serving", results_dir=results_dir, build_dir=runtime.build_dir, cpu=detect_cpu()
    )

    bench = _Bench(
        model=path,
        runtime=runtime,
        requests_per_client=requests_per_client,
        max_tokens=max_tokens,
        prompt=prompt,
        parallel=parallel,
        threads=threads,
        ctx_size=ctx_size,
        timeout=float(timeout),
        ready_timeout=float(ready_timeout),
        recorder=recorder,
        static={"model_name": path.stem, "model_path": str(path), **inspect_model(path).as_row()},
    )
    rows: list[dict[str, Any]] = []
    for n in levels:
        for choice in configs:  # configs innermost: A B A B
            row = bench.run_level(n, choice)
            recorder.append([row])
            rows.append(row)
    if not any(row["requests_ok"] for row in rows):
        first = next((m for row in rows for m in row["error_messages"]), "unknown")
        failed = f"{sum(r['errors'] for r in rows)} of {sum(r['n_requests'] for r in rows)}"
        raise BenchmarkError(
            f"every request failed ({failed}); the first error: {first}. The rows, with their errors, are in "
            f"{recorder.results_path}. Check that the model serves with `invoke serve --model {path}`; a "
            "context error needs a larger ctx_size or a shorter prompt."
        )
    return rows


@dataclass
class ServingRun:
    """What `serve_bench` did: the rows (as stored), where they are, the table and the plots drawn."""

    rows: list[dict[str, Any]]
    results_path: Path
    table: str
    plots: list[Path]
    plots_dir: Path | None

    @property
    def failed(self) -> int:
        """Requests that failed, over all levels."""
        return sum(int(r["errors"]) for r in self.rows)

    @property
    def error_messages(self) -> list[str]:
        """The distinct error messages of the failed requests."""
        return sorted({m for r in self.rows for m in r["error_messages"]})

    def report(self) -> str:
        """Everything `invoke serve-bench` prints after a run."""
        lines = [self.table, f"rows: {self.results_path}"]
        if self.plots_dir is not None:
            lines.append(f"plots: {self.plots_dir} ({len(self.plots)} files)")
        return "\n".join(lines)


def serve_bench(
    model: StrPath | None = None,
    *,
    spec: str | Path | None = None,
    build_dir: StrPath = "build",
    results_dir: StrPath = DEFAULT_RESULTS_DIR,
    plots_dir: StrPath | None = DEFAULT_PLOTS_DIR,
    **options: Any,
) -> ServingRun:
    """`invoke serve-bench`: `run_serving_bench` with the serving `spec` (`load_serve_spec`), `options`
    overriding it (an option that is None is not given), on `model` (else the spec's, else
    `default_model()`); then the table of the stored rows and the serving plot of this run only (none
    when `plots_dir` is None).

    `options` are `run_serving_bench`'s (concurrency, requests_per_client, max_tokens, compare, ...).
    Raises what `load_serve_spec` and `run_serving_bench` raise; failed requests are in the rows
    (`ServingRun.failed`).
    """
    given = load_serve_spec(spec) if spec else {}
    given.update({k: v for k, v in options.items() if v is not None})
    chosen = model or given.pop("model", None) or default_model()
    given.pop("model", None)
    rows = run_serving_bench(
        chosen, runtime=BitNetRuntime(build_dir=build_dir), results_dir=results_dir, **given
    )
    stored = load_serving_run(results_dir, rows[0]["run_id"])
    path = Path(results_dir) / stored["source"].iloc[0]
    plots: list[Path] = []
    if plots_dir is not None:  # the serving plot of this run only: never another task's files
        from bitnet.bench.plots import render_plots

        plots = render_plots(path, plots_dir, names=["serving"], owner="serve-bench")
    return ServingRun(
        rows=rows,
        results_path=path,
        table=format_serving_table(stored),
        plots=plots,
        plots_dir=None if plots_dir is None else Path(plots_dir),
    )


# ---------------------------------------------------------------------------------------- reading


def load_serving_run(results_dir: StrPath, run_id: str) -> pd.DataFrame:
    """The stored "serving" rows of one run (by its ``run_id``), read back from `results_dir`."""
    df = load_results(results_dir)
    if df.empty or "kind" not in df or "run_id" not in df:
        return pd.DataFrame()
    return df[(df["kind"] == "serving") & (df["run_id"] == run_id)].reset_index(drop=True)


def format_serving_table(df: pd.DataFrame) -> str:
    """A text table of "serving" rows: concurrency, slots, requests, t/s, p50, p95, errors, peak RSS.

    A ``config`` column and a ratio of t/s against "stock" at the same concurrency are shown when
    more than one config ran.
    """
    rows = df[df["kind"] == "serving"] if "kind" in df else df
    if rows.empty:
        return "(no serving results)"
    several = "config" in rows and rows["config"].nunique() > 1
    table = pd.DataFrame()
    flagged = "unreliable" in rows and rows["unreliable"].fillna(False).astype(bool).any()
    if flagged:
        table["!"] = ["!L" if bad else "" for bad in rows["unreliable"].fillna(False).astype(bool)]
    if several:
        table["config"] = rows["config"]
    table["clients"] = rows["concurrency"]
    table["slots"] = rows["parallel"]
    table["requests"] = rows["n_requests"]
    table["t/s"] = rows["tokens_per_s"].map(lambda v: _fmt(v, 1))
    table["p50 s"] = rows["latency_p50_s"].map(lambda v: _fmt(v, 3))
    table["p95 s"] = rows["latency_p95_s"].map(lambda v: _fmt(v, 3))
    table["errors"] = rows["errors"]
    if "peak_rss_bytes" in rows:
        table["peak RSS MiB"] = rows["peak_rss_bytes"].map(_mib)
    notes = []
    if several and "stock" in set(rows["config"]):
        stock = rows[rows["config"] == "stock"].groupby("concurrency")["tokens_per_s"].median()
        base = rows["concurrency"].map(stock).to_numpy(dtype=float)
        ratio = rows["tokens_per_s"].to_numpy(dtype=float) / base
        table["vs stock"] = ["-" if np.isnan(r) else f"{r:.2f}x" for r in ratio]
        notes.append("vs stock = t/s / t/s of stock at the same concurrency (same run)")
    if flagged:
        worst = rows["load_avg_1m"].max()
        notes.append(
            f"!L unreliable: the 1-minute load average ({worst:.2f} at worst) exceeded the "
            f"{LOAD_PER_CORE_LIMIT:g} x cores limit while the level ran: other work competed for the cores"
        )
    first = rows.iloc[0]
    header = (
        f"{first.get('model_name')} · {first.get('max_tokens')} tokens/request · "
        f"{first.get('n_threads')} server thread(s) · {first.get('cpu_model')}"
    )
    return "\n".join([header, table.to_string(index=False), *notes])


def _fmt(value: Any, digits: int) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _mib(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{value / 2**20:.0f}"
