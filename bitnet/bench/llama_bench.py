"""The llama-bench adapter: its argv, its JSON output, and what a result row says about the engine.

Everything here is about the tool and the host it runs on, not about sweeps (bitnet.bench.sweep):

- `llama_bench_command` builds the argv of one measurement (``-r 1 -o json``);
- `parse_llama_bench_output` reads ``-o json`` / ``-o jsonl`` output (fields as in
  tools/llama-bench/llama-bench.cpp ``test::get_fields``, plus ``samples_ns``/``samples_ts``);
- `loaded_cpu_variant` reads which ggml CPU library the engine loaded from its stderr;
- `resolve_variants` checks ISA variant names against kernels/engine.toml, the CPU and the build.

What every row of a run shares (run id, identity columns, the row header) is `bitnet.bench.recorder`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bitnet.engine.build import load_pin
from bitnet.engine.contract import BENCH_BINARY, parse_engine_report
from bitnet.engine.cpu import CpuInfo
from bitnet.errors import BenchmarkError, BenchSpecError, BitNetError

__all__ = [
    "BENCH_BINARY",
    "llama_bench_command",
    "loaded_cpu_variant",
    "parse_llama_bench_output",
    "resolve_variants",
]

_REQUIRED_FIELDS = ("n_prompt", "n_gen", "n_threads", "avg_ts")


def llama_bench_command(
    binary: str | Path, model: str | Path, *, n_prompt: int, n_gen: int, n_threads: int, reps: int = 1
) -> list[str]:
    """The argv of one measurement: prefill ``pp<n_prompt>`` and decode ``tg<n_gen>``, JSON output.

    llama-bench runs one warm-up pass of each test before the `reps` timed ones.
    """
    return [
        str(binary),
        "-m", str(model),
        "-p", str(n_prompt),
        "-n", str(n_gen),
        "-t", str(n_threads),
        "-r", str(reps),
        "-o", "json",
    ]  # fmt: skip


def parse_llama_bench_output(text: str) -> list[dict[str, Any]]:
    """Parse what ``llama-bench -o json`` (one array) or ``-o jsonl`` (one object a line) printed.

    Raises:
        BenchmarkError: nothing printed, invalid JSON (e.g. a run that died after ``[``), or an
            entry without the fields every test has (n_prompt, n_gen, n_threads, avg_ts).
    """
    text = text.strip()
    if not text:
        raise BenchmarkError("llama-bench printed no results on stdout")
    try:
        if text.startswith("["):
            data = json.loads(text)
        else:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise BenchmarkError(
            f"llama-bench output is not valid JSON ({exc}); it begins {text[:120]!r}"
        ) from exc
    if not isinstance(data, list) or not data:
        raise BenchmarkError(f"llama-bench printed no test results (expected a JSON array): {text[:120]!r}")
    for entry in data:
        missing = [k for k in _REQUIRED_FIELDS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise BenchmarkError(f"a llama-bench result lacks {', '.join(missing)}: {str(entry)[:200]}")
    return data


def loaded_cpu_variant(stderr: str) -> str | None:
    """The ggml CPU variant library the engine loaded ("avx2", ...), from its stderr; None if unsaid."""
    return parse_engine_report(stderr).cpu_variant


def resolve_variants(isa: Sequence[str], *, bin_dir: Path, cpu: CpuInfo) -> list[str | None]:
    """Turn ``isa`` items into CPU variants to force with GGML_CPU_VARIANT (None = ggml's choice).

    "auto" is None; "all" is every variant library in `bin_dir` this CPU can run; a name must be a
    variant of kernels/engine.toml for this CPU's architecture, runnable here, and built.

    Raises:
        BenchSpecError: naming the variant, why it cannot run, and the fix.
    """
    built = {p.name.removeprefix("libggml-cpu-").split(".")[0] for p in bin_dir.glob("libggml-cpu-*.*")}
    try:
        known = {v.name: v for v in load_pin().variants_for(cpu.arch)}
    except BitNetError:
        known = {}
    out: list[str | None] = []
    for item in isa:
        names: list[str | None]
        if item == "auto":
            names = [None]
        elif item == "all":
            names = [n for n, v in known.items() if cpu.has(*v.requires) and n in built]
            if not names:
                raise BenchSpecError(
                    f"isa 'all': {bin_dir} holds no CPU variant library this CPU can run; "
                    "build them with `invoke build --isa all`."
                )
        elif item not in known:
            choices = ", ".join(known) or "none"
            raise BenchSpecError(
                f"unknown CPU variant {item!r} for {cpu.arch}: choose {choices}, auto or all."
            )
        elif not cpu.has(*known[item].requires):
            lacking = ", ".join(r for r in known[item].requires if not cpu.has(r))
            raise BenchSpecError(f"this CPU cannot run the {item} variant: it lacks {lacking}.")
        elif item not in built:
            raise BenchSpecError(
                f"the {item} variant is not built in {bin_dir}: run `invoke build --isa all`."
            )
        else:
            names = [item]
        out.extend(n for n in names if n not in out)
    return out
