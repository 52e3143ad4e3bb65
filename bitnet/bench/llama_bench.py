"""The llama-bench adapter: its argv, its JSON output, and what a result row says about the engine.

Everything here is about the tool and the host it runs on, not about sweeps (bitnet.bench.sweep):

- `llama_bench_command` builds the argv of one measurement (``-r 1 -o json``);
- `parse_llama_bench_output` reads ``-o json`` / ``-o jsonl`` output (fields as in
  tools/llama-bench/llama-bench.cpp ``test::get_fields``, plus ``samples_ns``/``samples_ts``);
- `loaded_cpu_variant` reads which ggml CPU library the engine loaded from its stderr;
- `resolve_variants` checks ISA variant names against kernels/engine.toml, the CPU and the build;
- `run_identity` collects the columns every row of a run shares (repo, engine, host).
"""

from __future__ import annotations

import json
import mmap
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bitnet.bench.spec import REPO_ROOT
from bitnet.engine.build import load_pin, read_build_info
from bitnet.engine.contract import BENCH_BINARY, KERNELS_ENV, parse_engine_report
from bitnet.engine.cpu import CpuInfo
from bitnet.errors import BenchmarkError, BenchSpecError, BitNetError

__all__ = [
    "BENCH_BINARY",
    "engine_has_kernel_switch",
    "llama_bench_command",
    "loaded_cpu_variant",
    "now_iso",
    "parse_llama_bench_output",
    "resolve_variants",
    "run_identity",
]

# ggml's loader logs `load_backend: loaded CPU backend from /path/libggml-cpu-avx2.so` on stderr.
_KERNEL_SWITCH = KERNELS_ENV.encode()  # our kernels read this variable; an engine without it has none
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


def engine_has_kernel_switch(bin_dir: Path) -> bool:
    """True if an engine library next to llama-bench contains the string BITNET_KERNELS.

    Our kernels (issue 5) read that variable; until they are in the engine, "ours" and "stock" run the
    same code, and results and tables say so.
    """
    for lib in sorted(bin_dir.glob("lib*.so*")) + sorted(bin_dir.glob("*.dll")):
        try:
            with lib.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                if mm.find(_KERNEL_SWITCH) >= 0:
                    return True
        except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
            continue
    return False


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


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            # --no-optional-locks: `git status` must not refresh the index (other git users may hold it)
            ["git", "--no-optional-locks", "-C", str(REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def run_identity(build_dir: Path, bin_dir: Path, cpu: CpuInfo) -> dict[str, Any]:
    """Columns every row of a run shares: this repo's commit, the engine pin and build, the host.

    ``repo_dirty`` is True when tracked files differ from the commit (read-only ``git status``);
    ``engine_build`` is the first 12 hex digits of the build fingerprint `invoke build` recorded.
    """
    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        pin = load_pin()
        engine_pin: str | None = f"{pin.package}=={pin.version}"
    except BitNetError:
        engine_pin = None
    fingerprint = read_build_info(build_dir).get("fingerprint")
    return {
        "repo_commit": _git("rev-parse", "HEAD"),
        "repo_dirty": None if status is None else bool(status),
        "engine_pin": engine_pin,
        "engine_build": str(fingerprint)[:12] if fingerprint else None,
        "kernels_in_engine": engine_has_kernel_switch(bin_dir),
        "cpu_model": cpu.model,
        "cpu_arch": cpu.arch,
        "cpu_flags": " ".join(cpu.features),
        "cpu_cores": cpu.logical_cores,
    }


def now_iso() -> str:
    """The current UTC time as ISO 8601 with a Z, to the second: the ``date`` of a row."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
