"""`invoke tune`: measure the ternary kernels' tile parameters for this CPU and a model's shapes.

The kernels take their tiling from a table (kernels/ternary/tuning.json, one entry per ISA; compiled into
the kernels as constants). This module finds better values for the host's ISA by measurement:

1. read the model's ternary matrices (rows x K, type, how many of each) from its GGUF;
2. for each candidate entry, build the kernels' micro-benchmark (bench/bench_gemv.c) with a candidate
   table (`-DBITNET_TUNING_FILE`) and time the model's shapes: the GEMM tile (row groups x columns) on
   prefill-sized batches, then the GEMV prefetch distance, then (TQ1_0 models) which layout TQ1_0 gets;
   a candidate the kernels reject at compile time (register budget, ``#error``) is reported and skipped;
3. measure the winner against the current entry again, alternating A B A B, and keep the current entry
   unless the winner is faster there too (noise must not move the table);
4. write the whole table, with the tuned entry and a ``_tuned`` record of every measurement, to
   ``<build-dir>/tuning.json``. `invoke build` compiles the engine with that file when it exists
   (bitnet.engine.build.tuning_file); nothing is generated into tracked sources.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitnet.bench.recorder import RunRecorder
from bitnet.engine.build import DEFAULT_TUNING_FILE, KERNELS_DIR, TUNED_FILE_NAME, best_variant, load_pin
from bitnet.engine.cpu import CpuInfo, detect_cpu
from bitnet.errors import TuneError

log = logging.getLogger(__name__)

# GEMM tiles worth trying per kernel ISA (engine.toml `kernel_isa`): (row groups, columns); the kernels'
# #error checks have the last word.
_TILES: dict[str, list[tuple[int, int]]] = {
    "avx512vnni": [(rg, c) for rg in (1, 2) for c in (2, 4, 6, 8)],
    "ssse3": [(1, c) for c in (1, 2)],
    "avx2": [(1, c) for c in (2, 3, 4, 5, 6)],
    "avxvnni": [(1, c) for c in (2, 3, 4, 5, 6)],
    "neon": [(1, c) for c in (1, 2, 3, 4)],
    "neon-dotprod": [(1, c) for c in (2, 4, 6, 8)],
    "scalar": [],
}
_PREFETCH = (0, 512, 2048)


@dataclass(frozen=True)
class MatShape:
    rows: int
    k: int
    src_type: str  # "TQ2_0" or "TQ1_0"
    count: int


@dataclass
class Trial:
    params: dict[str, int]
    stage: str
    seconds: float | None  # weighted sum over the model's matrices; None if rejected
    note: str = ""


@dataclass
class TuneResult:
    out_path: Path
    isa: str
    variant: str
    before: dict[str, int]
    after: dict[str, int]
    trials: list[Trial] = field(default_factory=list)
    confirm: dict[str, float] = field(default_factory=dict)  # "current"/"tuned" -> median seconds

    def report(self, *, table_used_by_build: bool = True) -> str:
        """What `invoke tune` prints: the changed parameters and where the table is (or that none changed).

        `table_used_by_build`: the table went to ``<build-dir>/tuning.json``, which `invoke build` reads.
        """
        changed = {
            k: (self.before[k], self.after[k]) for k in self.after if self.before.get(k) != self.after[k]
        }
        if not changed:
            return (
                f"tuned {self.isa}: the parameters in use were already the fastest measured; nothing to "
                f"rebuild\nmeasurements: {self.out_path}"
            )
        lines = [
            f"tuned {self.isa}: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()),
            f"table: {self.out_path}",
        ]
        if table_used_by_build:
            lines.append(
                "run `invoke build` to compile the engine with it (it reads <build-dir>/tuning.json)"
            )
        return "\n".join(lines)


def model_shapes(model: Path) -> list[MatShape]:
    """The ternary 2-D weights of a GGUF: distinct (rows, K, type) with how many matrices have them."""
    from gguf import GGMLQuantizationType

    from bitnet.models.formats.check import check_gguf

    path = Path(model)
    if not path.is_file():
        raise TuneError(
            f"model {path} not found: give a GGUF file (e.g. models/dummy-2B/ggml-model-tq2_0.gguf)"
        )
    try:
        header = check_gguf(path, semantic=False, scan=False)  # bounded: a damaged header is refused
    except (ValueError, OSError) as exc:
        raise TuneError(f"{path} is not a readable GGUF file: {exc}") from exc
    names = {int(GGMLQuantizationType.TQ2_0): "TQ2_0", int(GGMLQuantizationType.TQ1_0): "TQ1_0"}
    counts: Counter[tuple[int, int, str]] = Counter()
    for t in header.tensors:
        kind = names.get(t.type_id)
        shape = list(t.ne)
        if kind is None or len(shape) != 2 or shape[0] % 256:
            continue
        counts[(shape[1], shape[0], kind)] += 1  # ggml ne = (K, rows)
    if not counts:
        raise TuneError(
            f"{path} has no TQ2_0/TQ1_0 matrices with K a multiple of 256: nothing our kernels run. "
            "Tune with a ternary model (`invoke convert`/`invoke dummy` make one)."
        )
    return [MatShape(r, k, s, n) for (r, k, s), n in sorted(counts.items())]


def host_isa(cpu: CpuInfo | None = None) -> tuple[str, str, str]:
    """(engine variant, kernels CMake variant, tuning.json ISA key) the engine runs on this CPU."""
    cpu = cpu or detect_cpu()
    pin = load_pin()
    v = best_variant(pin.variants_for(cpu.arch), cpu)
    if v is None or not v.kernel_isa:
        raise TuneError(
            f"no engine CPU variant of ours runs on this {cpu.arch} CPU ({cpu.model}): nothing to tune"
        )
    return v.name, v.name, v.kernel_isa  # the kernels' CMake project names its variants as the engine


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise TuneError(f"{name} not found: `pip install -e .` installs it into the venv")
    return found


class _Bench:
    """The kernels' micro-benchmark for one CMake variant, rebuilt per candidate table."""

    def __init__(self, work: Path, cmake_variant: str, jobs: int) -> None:
        self.work = work
        self.variant = cmake_variant
        self.jobs = jobs
        self.build_dir = work / "build"
        self.log = work / "tune.log"
        self.exe = self.build_dir / f"bench_gemv_{cmake_variant}"

    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        with self.log.open("a") as fh:
            fh.write("$ " + " ".join(argv) + f"\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]\n")
        return proc

    def build(self, table: Path) -> str | None:
        """Build with `table`; None on success, else the compiler's first error line."""
        cmake = _tool("cmake")
        conf = self._run([
            cmake, "-S", str(KERNELS_DIR), "-B", str(self.build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}", "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DBITNET_TUNING_FILE={table}",
        ])  # fmt: skip
        if conf.returncode != 0:
            raise TuneError(f"configuring the kernels failed; see {self.log}")
        target = ["--target", self.exe.name, "-j", str(self.jobs)]
        b = self._run([cmake, "--build", str(self.build_dir), *target])
        if b.returncode == 0:
            return None
        errors = [ln for ln in (b.stdout + b.stderr).splitlines() if "error" in ln]
        return errors[0].strip() if errors else f"build failed (see {self.log})"

    def run(self, shapes: Sequence[MatShape], *, gemm: bool, layouts: str, threads: int, cols: int,
            reps: int) -> list[dict[str, Any]]:  # fmt: skip
        argv = [
            str(self.exe), "--jsonl", "--threads", str(threads), "--reps", str(reps), "--cols", str(cols),
            "--layouts", layouts, "--shapes", ",".join(f"{s.rows}x{s.k}" for s in shapes),
            "--no-gemv" if gemm else "--no-gemm", "--pool-mb", "64",
        ]  # fmt: skip
        # The tile parameters shape the vpdpbusd GEMM: on an AMX host the GEMM would run on the tile unit,
        # which they do not touch, so the tile stage measures the vpdpbusd path (BITNET_AMX=0).
        proc = self._run(argv, env={**os.environ, "BITNET_AMX": "0"} if gemm else None)
        if proc.returncode != 0:
            raise TuneError(f"the kernel benchmark failed (exit {proc.returncode}); see {self.log}")
        rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        # "ours" only: not stock ggml's rows, nor the AMX GEMM on packed activations ("ours-packed")
        return [r for r in rows if r.get("op") in ("gemm", "gemv") and r.get("impl", "ours") == "ours"]


def _layout_of(src_type: str, entry: dict[str, int]) -> str:
    key = "tq1_base3" if src_type == "TQ1_0" else "tq2_base3"
    return "tk1" if entry.get(key) else "tk2"


def _layout_fn(entry: dict[str, int]) -> Callable[[MatShape], str]:
    return lambda s: _layout_of(s.src_type, entry)


def _weighted_seconds(rows: list[dict[str, Any]], shapes: Sequence[MatShape], op: str,
                      layout_of: Callable[[MatShape], str]) -> float:  # fmt: skip
    """Sum over the model's matrices of the measured median time of their shape (and layout)."""
    total = 0.0
    for s in shapes:
        hit = [r for r in rows if r["op"] == op and r["rows"] == s.rows and r["k"] == s.k
               and r["layout"] == layout_of(s)]  # fmt: skip
        if not hit:
            raise TuneError(f"the benchmark printed no {op} result for {s.rows}x{s.k} {layout_of(s)}")
        total += s.count * float(hit[0]["median_s"])
    return total


def tune(
    model: Path | str,
    *,
    build_dir: Path | str = "build",
    out: Path | str | None = None,
    threads: int = 0,
    cols: int = 128,
    reps: int = 5,
    tiles: Sequence[tuple[int, int]] | None = None,
    prefetch: Sequence[int] | None = None,
    min_gain: float = 0.02,
    cpu: CpuInfo | None = None,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Measure tile parameters for the host ISA on `model`'s shapes and write the table (see module doc).

    `tiles` / `prefetch` narrow the candidate lists (tests use this to stay short). The tuned entry
    replaces the current one only if it is at least `min_gain` (a fraction) faster when re-measured.
    """
    shapes = model_shapes(Path(model))
    if threads < 0 or cols < 2 or reps < 1:
        raise TuneError("--threads must be >= 0 (0 = all cores), --cols >= 2 and --reps >= 1")
    nth = threads or os.cpu_count() or 1
    say = progress or (lambda msg: log.info("%s", msg))
    variant, cm_variant, key = host_isa(cpu)
    base = json.loads(DEFAULT_TUNING_FILE.read_text())
    current = dict(base["isa"][key])
    out_path = Path(out) if out else Path(build_dir) / TUNED_FILE_NAME
    work = Path(build_dir) / "tune"
    work.mkdir(parents=True, exist_ok=True)
    bench = _Bench(work, cm_variant, jobs=os.cpu_count() or 1)
    trials: list[Trial] = []
    has_tq1 = any(s.src_type == "TQ1_0" for s in shapes)

    def table_with(entry: dict[str, int], name: str) -> Path:
        data = json.loads(json.dumps(base))
        data["isa"][key] = entry
        path = work / f"{name}.json"
        path.write_text(json.dumps(data, indent=2))
        return path

    def measure(entry: dict[str, int], stage: str) -> float | None:
        err = bench.build(table_with(entry, "candidate"))
        if err:
            trials.append(Trial(dict(entry), stage, None, f"rejected at compile time: {err}"))
            say(f"  {stage} {entry}: rejected ({err[:100]})")
            return None
        gemm = stage == "tile"
        layouts = ",".join(sorted({_layout_of(s.src_type, entry) for s in shapes}))
        rows = bench.run(shapes, gemm=gemm, layouts=layouts, threads=nth, cols=cols, reps=reps)
        op = "gemm" if gemm else "gemv"
        secs = _weighted_seconds(rows, shapes, op, _layout_fn(entry))
        trials.append(Trial(dict(entry), stage, secs))
        say(f"  {stage} {entry}: {secs * 1e3:.3f} ms")
        return secs

    best = dict(current)
    say(f"tuning {key} (engine variant {variant}) on {len(shapes)} shapes of {model}, {nth} threads")
    tile_list = list(_TILES.get(key, []) if tiles is None else tiles)

    def fastest(cands: list[dict[str, int]], stage: str, fallback: dict[str, int]) -> dict[str, int]:
        """The candidate with the least measured time; `fallback` if every one was rejected."""
        timed = [(secs, cand) for cand in cands if (secs := measure(cand, stage)) is not None]
        return min(timed, key=lambda t: t[0])[1] if timed else fallback

    if tile_list:
        best = fastest([{**best, "gemm_row_groups": rg, "gemm_cols": c} for rg, c in tile_list], "tile", best)
    pf_list = list(_PREFETCH if prefetch is None else prefetch)
    if len(pf_list) > 1:
        best = fastest([{**best, "prefetch_bytes": pf} for pf in pf_list], "prefetch", best)
    if has_tq1:
        best = fastest([{**best, "tq1_base3": b3} for b3 in (0, 1)], "tq1_layout", best)

    confirm: dict[str, float] = {}
    if best != current:
        # Same binary cannot hold both tables (compile-time constants): build each once, then alternate runs.
        exes: dict[str, Path] = {}
        for name, entry in (("current", current), ("tuned", best)):
            if bench.build(table_with(entry, name)):
                raise TuneError(f"the {name} table no longer builds; see {bench.log}")
            exe = work / f"bench_{name}"
            shutil.copy2(bench.exe, exe)
            exes[name] = exe
        times: dict[str, list[float]] = {"current": [], "tuned": []}
        for _ in range(3):
            for name, entry in (("current", current), ("tuned", best)):
                total = 0.0
                for gemm in (True, False):
                    bench.exe = exes[name]
                    layouts = ",".join(sorted({_layout_of(s.src_type, entry) for s in shapes}))
                    rows = bench.run(shapes, gemm=gemm, layouts=layouts, threads=nth, cols=cols, reps=reps)
                    op = "gemm" if gemm else "gemv"
                    total += _weighted_seconds(rows, shapes, op, _layout_fn(entry))
                times[name].append(total)
        confirm = {name: statistics.median(v) for name, v in times.items()}
        say(f"confirm (A B A B, GEMM+GEMV): current {confirm['current'] * 1e3:.3f} ms, "
            f"tuned {confirm['tuned'] * 1e3:.3f} ms")  # fmt: skip
        if confirm["tuned"] > confirm["current"] * (1.0 - min_gain):
            say(f"the tuned entry is not {min_gain:.0%} faster when re-measured: keeping the current one")
            best = dict(current)

    data = json.loads(json.dumps(base))
    data["isa"][key] = best
    # run id, date and identity columns (repo commit, engine build, CPU) as every measurement has them
    recorder = RunRecorder.start("tune", results_dir=work, build_dir=build_dir, cpu=cpu or detect_cpu())
    data["_tuned"] = {
        **recorder.header(),
        "model": str(model),
        "isa": key,
        "engine_variant": variant,
        "threads": nth,
        "gemm_cols_measured": cols,
        "reps": reps,
        "shapes": [s.__dict__ for s in shapes],
        "before": current,
        "after": best,
        "confirm_median_s": confirm,
        "trials": [t.__dict__ for t in trials],
    }
    if best == current and not out:
        # Nothing to change: leave the table the build uses alone (a new file there would make the next
        # `invoke build` recompile every kernel object for the same numbers); keep the measurements.
        out_path = out_path.with_name("tuning-report.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, out_path)
    return TuneResult(out_path, key, variant, current, best, trials, confirm)
