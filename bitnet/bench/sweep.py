"""End-to-end benchmarks: llama-bench over a matrix of models × threads × engine configs, as tidy rows.

    from bitnet.bench.sweep import run_bench
    run = run_bench(size="2B", threads=[2], compare=["stock"], reps=5)
    print(run.report())

Each measurement is one llama-bench process (``-r 1 -o json``) launched through `RuntimeSupervisor`,
and the loop is repetitions outermost, configs innermost: A B A B ..., so slow drift on a shared
machine (thermal, other jobs) hits every config alike and ratios come from one run (STYLE.md 12).
Every run's rows are appended to ``bench/results/<date>-<spec>-<id>.jsonl`` as soon as they exist
(bitnet.bench.results), so an interrupted sweep keeps what it measured. A failed engine run is reported
with the tail of its stderr and a log file; the sweep goes on, or stops with ``fail_fast``.

Configs are set through the engine's environment: ``BITNET_KERNELS=0`` selects stock ggml kernels
(issue 5), ``GGML_CPU_VARIANT=<name>`` forces a CPU variant library (our engine patch 0002). A peer
(`bitnet.bench.spec.Peer`: another engine's llama-bench, e.g. ik_llama.cpp's, on its own model file)
is one more config in the same A B A B rounds.

Memory and load: every llama-bench run goes through `bitnet.runtime.rusage`, so its rows carry ``max_rss_mb``
(the process's peak RSS). Before it, with the spec's ``load`` on (the default), a load probe of the same
binary, model and threads runs ``-p 1 -n 0 -r 1``: its wall time, process start to exit, is the
row's ``load_s`` (time to a loaded model: the weights read or mapped, repacked, one token computed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitnet.bench.busy import busy_host, own_busy_load
from bitnet.bench.llama_bench import (
    BENCH_BINARY,
    llama_bench_command,
    loaded_cpu_variant,
    parse_llama_bench_output,
    resolve_variants,
)
from bitnet.bench.recorder import RunRecorder
from bitnet.bench.results import (
    DEFAULT_RESULTS_DIR,
    LLAMA_BENCH_FIELDS,
    ModelInfo,
    bench_test_name,
    format_table,
    inspect_model,
    load_average,
    load_results,
    relative_spread,
    reliability,
)
from bitnet.bench.roofline import (
    Bandwidth,
    add_roofline,
    mapped_read_note,
    probe_bandwidth,
    probe_model_pages,
)
from bitnet.bench.spec import (
    DEFAULT_MODEL,
    REPO_ROOT,
    BenchSpec,
    Config,
    ModelRequest,
    Peer,
    expand_configs,
    expand_threads,
    load_spec,
    models_from_flags,
    peers_from_flags,
    spec_from_flags,
)
from bitnet.engine.cpu import detect_cpu
from bitnet.errors import (
    BenchmarkError,
    BenchmarkRunError,
    BenchSpecError,
    BitNetError,
    RuntimeLaunchError,
    tail_lines,
)
from bitnet.runtime.runtime import BitNetRuntime
from bitnet.runtime.rusage import parse_rusage, rusage_command
from bitnet.runtime.supervisor import RuntimeSupervisor

__all__ = [
    "DEFAULT_MODELS_DIR",
    "DEFAULT_PLOTS_DIR",
    "BenchRun",
    "Job",
    "RunFailure",
    "format_table",
    "plan_jobs",
    "prepare_model",
    "render_plots",
    "run_bench",
]

log = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = None  # None: bitnet.models.installed.models_dir(), i.e. $BITNET_MODELS, else ./models
DEFAULT_PLOTS_DIR = REPO_ROOT / "bench" / "plots"
_MODEL_COLUMNS = tuple(f.name for f in dataclasses.fields(ModelInfo))


# ---------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Job:
    """One cell of the matrix: run `model` with `n_threads` threads under `config`, once per rep."""

    sweep: str
    model: ModelRequest
    n_threads: int
    config: Config
    n_prompt: int
    n_gen: int
    busy: str = "idle"  # bitnet.bench.busy condition of the host while it runs

    @property
    def key(self) -> tuple[Any, ...]:
        """Two sweeps asking for the same measurement share it."""
        return (self.model, self.n_threads, self.config, self.n_prompt, self.n_gen, self.busy)

    def describe(self) -> str:
        """How progress lines and failures name a job, e.g. ``2B t=2 stock (pp512 tg128)``."""
        tests = " ".join(bench_test_name(p, g) for p, g in ((self.n_prompt, 0), (0, self.n_gen)) if p or g)
        host = "" if self.busy == "idle" else f" busy={self.busy}"
        return f"{self.model.label} t={self.n_threads} {self.config.label}{host} ({tests})"


def plan_jobs(
    spec: BenchSpec, *, cores: int, variants_for: Callable[[Sequence[str]], list[str | None]]
) -> tuple[list[Job], list[str]]:
    """Expand every sweep of `spec` into jobs (deduplicated, in spec order) and clamping warnings."""
    jobs: dict[tuple[Any, ...], Job] = {}
    warnings: list[str] = []
    for sweep in spec.sweeps:
        threads, clamped = expand_threads(sweep.threads, cores)
        warnings.extend(w for w in clamped if w not in warnings)
        configs = expand_configs(sweep.compare, variants_for(sweep.isa)) + [p.config for p in spec.peers]
        for model in sweep.models:
            for n in threads:
                for busy in sweep.busy:
                    for config in configs:
                        job = Job(sweep.name, model, n, config, sweep.n_prompt, sweep.n_gen, busy)
                        jobs.setdefault(job.key, job)
    return list(jobs.values()), warnings


def prepare_model(request: ModelRequest, models_dir: Path) -> Path:
    """The model's path; a synthetic one is generated (bitnet.models.synthetic) if missing."""
    path = request.path(models_dir)
    if request.file is not None:
        if not path.is_file():
            raise BenchSpecError(f"model file {path} does not exist: pass an existing .gguf file.")
        return path
    try:
        from bitnet.models.synthetic import SIZES, write_synthetic
    except ImportError as exc:
        raise BenchmarkError(
            f"cannot generate {path}: bitnet.models.synthetic is unavailable ({exc}). Pass --model."
        ) from exc
    if path.is_file() and _matches(path, request, SIZES.get(str(request.size))):
        return path
    log.info("generating synthetic model %s (%s, head %s) -> %s", request.size, request.outtype,
             request.head_type, path)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # q6_k: the engine's llama-quantize writes the head (write_synthetic says which need it)
        write_synthetic(
            str(request.size), path, outtype=request.outtype, head_type=request.head_type, progress=False
        )
    except BitNetError as exc:
        raise BenchmarkError(f"cannot generate the synthetic model {request.label}: {exc}") from exc
    return path


def _matches(path: Path, request: ModelRequest, shape: Any) -> bool:
    """True if a synthetic model made earlier has the shape and formats bitnet.models.synthetic makes now."""
    try:
        info = inspect_model(path)
    except BenchmarkError:
        return False
    want = (request.outtype, request.head_type)
    if shape is None or (info.weight_format, info.head_format) != want:
        return False
    same = (info.n_layer, info.n_embd, info.n_ff, info.n_vocab) == (
        shape.n_layer, shape.n_embd, shape.n_ff, shape.n_vocab
    )  # fmt: skip
    if not same:
        log.info("%s was made for an older shape of the %s model; making it again", path, request.size)
    return same


# ---------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class RunFailure:
    """One engine run that failed: what it was, how it ended, where its full log is."""

    job: Job
    rep: int
    message: str
    returncode: int | None
    stderr_tail: str
    log_path: Path | None

    def describe(self) -> str:
        lines = [f"FAILED {self.job.describe()} rep {self.rep + 1}: {self.message.splitlines()[0]}"]
        if self.stderr_tail:
            lines += ["  " + line for line in tail_lines(self.stderr_tail, 10).splitlines()]
        if self.log_path:
            lines.append(f"  full log: {self.log_path}")
        return "\n".join(lines)


@dataclass
class BenchRun:
    """What `run_bench` did: where the rows are, what failed, the table and the plots."""

    run_id: str
    spec: BenchSpec
    results_path: Path
    jobs: list[Job]
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[RunFailure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bandwidth: dict[int, Bandwidth] = field(default_factory=dict)
    # the same probe through each decoded model file's mapped pages: (threads, file) -> bandwidth
    mapped_bandwidth: dict[tuple[int, str], Bandwidth] = field(default_factory=dict)
    model_note: str | None = None  # which model was chosen by default, and why
    table: str = ""
    plots: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every engine run succeeded."""
        return not self.failures

    def report(self) -> str:
        """Everything a user should read after a run, as text."""
        cells, reps = len(self.jobs), self.spec.reps
        parts = [f"spec {self.spec.name}: {cells} model/threads/config cell(s) × {reps} repetition(s)"]
        if self.model_note:
            parts.append(self.model_note)
        parts += [f"warning: {w}" for w in self.warnings]
        for n, b in sorted(self.bandwidth.items()):
            mapped = [m for (mn, _), m in sorted(self.mapped_bandwidth.items()) if mn == n]
            through = "".join(
                f"; {m.gbs:.1f} GB/s through the cached pages of {Path(m.mapped_file or '?').name}"
                for m in mapped
            )
            parts.append(f"read bandwidth, {n} thread(s): {b.gbs:.1f} GB/s (fresh memory){through}")
        if self.table:
            parts += ["", self.table, ""]
        parts += [f.describe() for f in self.failures]
        parts.append(f"rows: {self.results_path} ({len(self.rows)} new)")
        if self.plots:
            parts.append(
                f"plots: {', '.join(sorted({str(p.parent) for p in self.plots}))} ({len(self.plots)} files)"
            )
        return "\n".join(parts)


def _engine_env(base: Mapping[str, str], config: Config) -> dict[str, str]:
    env = dict(base)
    for key, value in config.env().items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass
class _Sweep:
    """Everything the measuring loop needs, prepared before the first run."""

    run: BenchRun
    runtime: BitNetRuntime
    binary: Path
    paths: dict[ModelRequest, Path]
    infos: dict[ModelRequest, ModelInfo | None]
    recorder: RunRecorder
    fail_fast: bool
    progress: bool
    peer_infos: dict[str, ModelInfo | None] = field(default_factory=dict)

    async def measure_all(self) -> None:
        """Every job once per repetition, configs alternating; rows stored after each run."""
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        run, spec = self.run, self.run.spec
        supervisors = {
            job.config: RuntimeSupervisor(
                self.runtime, concurrency=1, env=_engine_env(self.runtime.environment, job.config)
            )
            for job in run.jobs
        }
        bar = tqdm(total=spec.reps * len(run.jobs), desc=f"bench {spec.name}", unit="run", file=sys.stderr,
                   disable=not self.progress)  # fmt: skip
        # While the bar is drawn, log records (ours and the supervisor's "running: ...") are printed
        # through tqdm.write so they do not tear the bar; the handlers are restored afterwards.
        redirect = logging_redirect_tqdm() if self.progress else contextlib.nullcontext()
        with bar, redirect:
            for rep in range(spec.reps):
                for job in run.jobs:  # configs innermost: A B A B within each repetition
                    bar.set_postfix_str(job.describe(), refresh=True)
                    with busy_host(job.busy):
                        await self.measure(supervisors[job.config], job, rep)
                    bar.update(1)

    def peer(self, job: Job) -> Peer | None:
        return next((p for p in self.run.spec.peers if p.config == job.config), None)

    def command(self, job: Job, n_prompt: int, n_gen: int) -> list[str]:
        """The llama-bench argv of `job` (ours or its peer's binary, model and extra arguments)."""
        peer = self.peer(job)
        binary = peer.binary if peer else self.binary
        model = peer.model if peer and peer.model else self.paths[job.model]
        command = llama_bench_command(binary, model, n_prompt=n_prompt, n_gen=n_gen, n_threads=job.n_threads)
        return command + list(peer.args if peer else self.run.spec.engine_args)

    async def probe_load(self, supervisor: RuntimeSupervisor, job: Job) -> float | None:
        """Seconds from start to exit of a one-token llama-bench run of `job` (None if it failed)."""
        try:
            result = await supervisor.run_custom(
                rusage_command(self.command(job, 1, 0)), timeout=self.run.spec.timeout
            )
        except RuntimeLaunchError as exc:
            warning = f"load probe of {job.describe()} failed: {str(exc).splitlines()[0]}"
            if warning not in self.run.warnings:
                self.run.warnings.append(warning)
                log.warning("%s", warning)
            return None
        usage = parse_rusage(result.stderr)
        return usage.wall_s if usage else None

    async def measure(self, supervisor: RuntimeSupervisor, job: Job, rep: int) -> None:
        """One llama-bench process: its rows are stored, or its failure recorded (and raised if asked)."""
        load_s = await self.probe_load(supervisor, job) if self.run.spec.load else None
        command = self.command(job, job.n_prompt, job.n_gen)
        stdout = stderr = ""
        returncode: int | None = 0
        samples = [(load_average(), own_busy_load())]  # the load average, and our busy loops' share of it
        try:
            result = await supervisor.run_custom(rusage_command(command), timeout=self.run.spec.timeout)
            stdout, stderr = result.stdout, result.stderr
            entries = parse_llama_bench_output(stdout)
        except RuntimeLaunchError as exc:  # non-zero exit, timeout, could not start
            stdout, stderr, returncode = exc.stdout, exc.stderr, exc.returncode
            self.fail(job, rep, command, str(exc).split("\nLast lines")[0], returncode, stdout, stderr)
            return
        except BenchmarkError as exc:  # exit 0 but no usable JSON
            self.fail(job, rep, command, str(exc), returncode, stdout, stderr)
            return
        samples.append((load_average(), own_busy_load()))
        # the sample (before or after the run) where other programs' share was the higher
        known = [(v, own) for v, own in samples if v is not None]
        load, busy_load = max(known, key=lambda s: s[0] - s[1]) if known else (None, None)
        usage = parse_rusage(stderr)
        rows = [self.row(entry, job, rep, stderr, load, busy_load) for entry in entries]
        for row in rows:
            row["max_rss_mb"] = round(usage.max_rss_mb, 1) if usage else None
            row["load_s"] = round(load_s, 3) if load_s is not None else None
        self.recorder.append(rows)
        self.run.rows.extend(rows)

    def fail(
        self,
        job: Job,
        rep: int,
        command: list[str],
        message: str,
        returncode: int | None,
        stdout: str,
        stderr: str,
    ) -> None:
        """Record a failed run with a log file holding its full output; raise when `fail_fast`."""
        safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{job.model.label}-{job.config.label}")
        name = f"{len(self.run.failures) + 1:03d}-{safe}-t{job.n_threads}-rep{rep + 1}.log"
        path: Path | None = None
        try:
            path = self.recorder.log_path(name)
            path.write_text(
                f"$ {shlex.join(command)}\n# exit status: {returncode}\n# {message}\n"
                f"\n## stdout\n{stdout}\n## stderr\n{stderr}"
            )
        except OSError as exc:
            log.warning("could not write the failure log %s: %s", path, exc)
            path = None
        failure = RunFailure(job, rep, message, returncode, tail_lines(stderr), path)
        self.run.failures.append(failure)
        log.error("%s", failure.describe())
        if self.fail_fast:
            raise BenchmarkRunError(self.run, failure)

    def row(
        self,
        entry: Mapping[str, Any],
        job: Job,
        rep: int,
        stderr: str,
        load: float | None = None,
        busy_load: float | None = None,
    ) -> dict[str, Any]:
        """A tidy row: identity columns, llama-bench's fields, the model's shape, the roofline, and
        whether it can be trusted (`load` is the 1-minute load average while it ran, `busy_load` our own
        busy loops' share of it then, bitnet.bench.busy.own_busy_load)."""
        n_prompt, n_gen = int(entry["n_prompt"]), int(entry["n_gen"])
        peer = self.peer(job)
        info = self.peer_infos.get(peer.name) if peer and peer.model else self.infos.get(job.model)
        fields: dict[str, Any] = {
            "spec": self.run.spec.name,
            "sweep": job.sweep,
            "rep": rep,
            "test": bench_test_name(n_prompt, n_gen, int(entry.get("n_depth") or 0)),
            "config": job.config.label,
            "kernels": job.config.kernels,
            "cpu_variant": loaded_cpu_variant(stderr) or job.config.variant,
            "cpu_variant_requested": job.config.variant or "auto",
            "busy": job.busy,
            # our busy loops' share of the load average (this run's, and what earlier runs' left)
            "busy_load": round(busy_load, 3)
            if busy_load is not None
            else (0.0 if job.busy == "idle" else 1.0),
            "model_name": job.model.label,  # a peer's own file is the same model in its format
            "model_path": str(peer.model if peer and peer.model else self.paths[job.model]),
            "engine_binary": str(peer.binary if peer else self.binary),
            "engine_args": shlex.join(peer.args if peer else self.run.spec.engine_args),
            **{k: entry.get(k) for k in LLAMA_BENCH_FIELDS},
        }
        row = self.recorder.row(fields)
        row.update(info.as_row() if info else dict.fromkeys(_MODEL_COLUMNS))
        row.pop("arch", None)
        add_roofline(row, self.run.bandwidth.get(int(entry["n_threads"])))
        samples = entry.get("samples_ts")
        row["load_avg_1m"] = load
        row["spread"] = relative_spread(samples) if isinstance(samples, list) else None
        own = None if load is None else load - row["busy_load"]
        row["unreliable"] = reliability(own, row.get("cpu_cores"), row["spread"]) != ""
        return row


def render_plots(
    results: str | Path | Sequence[str | Path] = DEFAULT_RESULTS_DIR,
    out_dir: str | Path = DEFAULT_PLOTS_DIR,
    **options: Any,
) -> list[Path]:
    """Draw the plots the stored rows in `results` (a dir, .jsonl file(s)) support into `out_dir`.

    See `bitnet.bench.plots.render_plots` (its `options`: runs, all_runs, names, owner); imported lazily so
    that importing this module stays cheap.
    """
    from bitnet.bench.plots import render_plots as _render

    return _render(results, out_dir, **options)


# ---------------------------------------------------------------------------------------- entry point


def default_model(models_root: Path | None = None) -> tuple[ModelRequest, str]:
    """The model `invoke bench` measures when given none, and a line saying which and why.

    The newest model `invoke setup` converted from a real checkpoint (it has a lock whose source is the
    Hub or a local checkpoint), else the synthetic 2B4T shape. Never the tiny test model.
    """
    from bitnet.models.installed import list_models, models_dir

    real = [
        m
        for m in list_models(models_dir() if models_root is None else models_root)
        if m.problem is None and m.lock is not None and m.lock.source in ("hub", "local")
    ]
    if real:
        newest = max(real, key=lambda m: m.created)
        return ModelRequest(file=newest.path), (
            f"model: {newest.path} (the newest model `invoke setup` converted; --model F or --size S "
            "picks another)"
        )
    return DEFAULT_MODEL, (
        "model: the synthetic BitNet b1.58 2B4T shape (hidden 2560, ffn 6912, 30 layers, vocab 128256; "
        "random ternary weights, made once into models/dummy-2B/): no converted model is installed. "
        "--model F benchmarks a file, --size tiny the test model"
    )


def run_bench(
    *,
    model: str | Path | None = None,
    size: str | None = None,
    outtype: str = "tq2_0",
    head_type: str = "f16",
    threads: int | str | Sequence[int | str] | None = None,
    n_prompt: int | None = None,
    n_gen: int | None = None,
    reps: int | None = None,
    compare: str | Sequence[str] | None = None,
    isa: str | Sequence[str] | None = None,
    spec: str | Path | BenchSpec | None = None,
    baseline: str | None = None,
    compare_bin: str | Sequence[str] | None = None,
    compare_model: str | Sequence[str] | None = None,
    compare_args: str | Sequence[str] | None = None,
    load_probe: bool | None = None,
    busy: str | Sequence[str] | None = None,
    engine_args: str | Sequence[str] | None = None,
    build_dir: str | Path = "build",
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    plots_dir: str | Path | None = DEFAULT_PLOTS_DIR,
    models_dir: str | Path | None = DEFAULT_MODELS_DIR,
    fail_fast: bool = False,
    roofline: bool | None = None,
    progress: bool = True,
    env: Mapping[str, str] | None = None,
) -> BenchRun:
    """Run a benchmark matrix with llama-bench, store its rows, make the table and the plots.

    Without `spec`, the matrix is one model (`model` file, or synthetic `size`; default the tiny
    offline model, generated into `models_dir` if missing) × `threads` (default all cores) × configs
    ("ours" plus each `compare` item, e.g. "stock", on each `isa` variant), pp`n_prompt` (512) and
    tg`n_gen` (128), `reps` (5) times. With `spec` (a name in bench/specs, a TOML path or a
    `BenchSpec`), the flags given override the spec's values in every sweep. Thread counts above the
    host's cores are clamped, with a warning (logged and in `BenchRun.warnings`).

    `compare_bin` ("NAME=PATH", repeatable) adds peers: another engine's llama-bench, run in the same
    rounds on `compare_model` ("NAME=FILE", default: the benchmarked model) with `compare_args`
    ("NAME=ARGS"); see `bitnet.bench.spec.Peer`. `load_probe` overrides the spec's ``load``. `busy`
    ("idle,pinned") measures every cell under each host condition of `bitnet.bench.busy`.
    `engine_args` ("-lm none" or a list) are appended to every run of our own configs, not peers'.

    A failed engine run is recorded in `BenchRun.failures` (with its stderr tail and a log file under
    ``<results_dir>/../logs/``) and the sweep continues; with `fail_fast` it raises instead.

    Raises:
        BenchSpecError: an invalid spec or flag (before anything runs).
        RuntimeConfigurationError: llama-bench is not built.
        BenchmarkError: with `fail_fast`, the first failed run; or a synthetic model could not be made.
    """
    base = spec_from_flags() if spec is None else spec if isinstance(spec, BenchSpec) else load_spec(spec)
    chosen = models_from_flags(model=model, size=size, outtype=outtype, head_type=head_type)
    model_note = None
    if spec is None and chosen is None:
        default, model_note = default_model()
        chosen = (default,)
        log.info("%s", model_note)
    bench_spec = base.with_overrides(
        models=chosen,
        threads=_as_list(threads),
        n_prompt=n_prompt,
        n_gen=n_gen,
        reps=reps,
        compare=_as_list(compare),
        isa=_as_list(isa),
        baseline=baseline,
        busy=_as_list(busy),
        engine_args=engine_args,
        peers=peers_from_flags(
            _as_peer_list(compare_bin), _as_peer_list(compare_model), _as_peer_list(compare_args)
        ),
    )
    if roofline is not None:
        bench_spec = dataclasses.replace(bench_spec, roofline=roofline)
    if load_probe is not None:
        bench_spec = dataclasses.replace(bench_spec, load=load_probe)
    for peer in bench_spec.peers:
        peer.check()

    runtime = BitNetRuntime(build_dir=build_dir, env=env)
    binary = runtime.find_binary(BENCH_BINARY)
    assert binary is not None
    cpu = detect_cpu()
    jobs, warnings = plan_jobs(
        bench_spec,
        cores=runtime.cpu_count,
        variants_for=lambda isa_items: resolve_variants(isa_items, bin_dir=binary.parent, cpu=cpu),
    )
    for warning in warnings:
        log.warning("%s", warning)
    paths: dict[ModelRequest, Path] = {}
    infos: dict[ModelRequest, ModelInfo | None] = {}
    from bitnet.models.installed import models_dir as default_models_dir

    root = default_models_dir() if models_dir is None else Path(models_dir)
    for request in dict.fromkeys(job.model for job in jobs):
        paths[request] = prepare_model(request, root)
        try:
            infos[request] = inspect_model(paths[request])
        except BenchmarkError as exc:
            log.warning("%s; its rows will have no shape or bytes-per-token columns", exc)
            infos[request] = None

    peer_infos: dict[str, ModelInfo | None] = {}
    for peer in bench_spec.peers:
        if peer.model is not None:
            try:
                peer_infos[peer.name] = inspect_model(peer.model)
            except BenchmarkError as exc:  # e.g. a type only that engine knows (ik_llama.cpp's IQ2_BN)
                log.info("peer %s: %s; its rows will have no shape columns", peer.name, exc)
                peer_infos[peer.name] = None

    recorder = RunRecorder.start(
        "llama-bench", results_dir=results_dir, build_dir=build_dir, name=bench_spec.name, cpu=cpu
    )
    run = BenchRun(
        run_id=recorder.run_id,
        spec=bench_spec,
        results_path=recorder.results_path,
        jobs=jobs,
        warnings=warnings,
        model_note=model_note,
    )
    if bench_spec.roofline:
        for n in sorted({j.n_threads for j in jobs if j.n_gen}):
            run.bandwidth[n] = probe_bandwidth(n)
            recorder.append([recorder.row({"spec": bench_spec.name, **run.bandwidth[n].as_row()})])
            for model in sorted({str(paths[j.model]) for j in jobs if j.n_gen and j.n_threads == n}):
                try:
                    mapped = probe_model_pages(n, model)
                except ValueError as exc:
                    log.warning("%s", exc)
                    continue
                if mapped is None:
                    continue
                run.mapped_bandwidth[(n, model)] = mapped
                recorder.append([recorder.row({"spec": bench_spec.name, **mapped.as_row()})])
                note = mapped_read_note(run.bandwidth[n], mapped)
                if note:
                    run.warnings.append(note)

    sweep = _Sweep(
        run=run,
        runtime=runtime,
        binary=binary,
        paths=paths,
        infos=infos,
        recorder=recorder,
        fail_fast=fail_fast,
        progress=progress,
        peer_infos=peer_infos,
    )
    asyncio.run(sweep.measure_all())
    if run.rows:
        run.table = format_table(load_results(run.results_path), baseline=bench_spec.baseline)
        if plots_dir is not None:
            from bitnet.bench.plots import BENCH_PLOT_NAMES

            # only the plots of llama-bench rows, from this run: never another task's files (serving.png)
            run.plots = render_plots(run.results_path, plots_dir, names=BENCH_PLOT_NAMES, owner="bench")
    return run


def _as_peer_list(value: str | Sequence[str] | None) -> list[str] | None:
    """Peer flags: one "NAME=VALUE" string (values may hold commas and spaces) or a list of them."""
    if not value:
        return None
    return [value] if isinstance(value, str) else list(value)


def _as_list(value: Any) -> list[Any] | None:
    """None stays None; "1,2" and 8 become lists; lists pass through."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (int, Path)):
        return [value]
    return list(value)
