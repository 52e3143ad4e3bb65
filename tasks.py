"""invoke tasks: the toolkit's command line. Each task parses its flags and calls into `bitnet/`.

invoke setup --model tiny        # build the engine, make/download + convert a model, smoke-run it
invoke build [--isa avx2]        # build the pinned llama.cpp with our patches
invoke doctor                    # what this machine and build can do
invoke --help <task>             # flags of a task
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from invoke import Task, task
from invoke.exceptions import Exit
from invoke.parser import Argument

ROOT = Path(__file__).resolve().parent


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the toolkit's typed errors into a clean message and exit code, not a traceback; and
    SIGTERM/SIGHUP (a closed terminal) into the same unwinding as Ctrl-C: children stopped, temp
    files removed, exit 143/129."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from bitnet.errors import BitNetError, StopRequested
    from bitnet.runtime.process import stop_signals

    try:
        with stop_signals():
            yield
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None
    except StopRequested as stop:
        raise Exit(
            "interrupted" if stop.exit_code == 130 else f"stopped by {stop.name}", code=stop.exit_code
        ) from None
    except (BitNetError, ValueError, FileNotFoundError) as exc:
        raise Exit(f"error: {exc}", code=1) from None


def _progress_bar() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = tqdm(total=total, desc=phase, unit="step", file=sys.stderr)
        bar.total = total
        bar.n = done
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close


class _OptionalBool(Argument):
    """A --flag / --no-flag pair whose value is None when neither is given (the "auto" default)."""

    @property
    def value(self) -> Any:
        return self._value

    @value.setter
    def value(self, arg: Any) -> None:
        self.set_value(arg, cast=True)


class _AutoFlagTask(Task):
    """A task whose `auto_flags` parameters (default None) take --x / --no-x / neither = auto."""

    auto_flags = ("ui",)

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        args = super().get_arguments(ignore_unknown_help)

        def tri_state(a: Argument) -> Argument:
            # kind=bool with default True makes invoke accept --no-x; the value stays None unless given
            return _OptionalBool(names=a.names, kind=bool, default=True, help=a.help)

        return [tri_state(a) if a.name in self.auto_flags else a for a in args]


@task(
    auto_shortflags=False,
    klass=_AutoFlagTask,
    help={
        "isa": "CPU variants to build: 'all' (default; the best one is picked at run time) or names "
        "from kernels/engine.toml, e.g. 'avx2' or 'sse42,avx512'",
        "jobs": "parallel compile jobs (default: all cores)",
        "llama_src": "build from your own llama.cpp checkout instead of the pinned source",
        "build_dir": "where the build tree and bin/ go (default: build)",
        "clean": "delete the build dir first",
        "ui": "--ui: embed llama-server's browser chat (built with npm; needs Node.js >= 20), --no-ui: "
        "do not; default: when Node.js >= 20 and npm are found",
    },
)
def build(c, isa="all", jobs=0, llama_src="", build_dir="build", clean=False, ui=None):
    """Build the pinned llama.cpp engine with our BitNet patches into <build-dir>/bin."""
    from bitnet.engine.build import build_engine

    with _user_errors():
        update, close = _progress_bar()
        try:
            res = build_engine(
                build_dir=build_dir,
                isa=isa,
                jobs=jobs or None,
                llama_src=llama_src or None,
                clean=clean,
                progress=update,
                ui=ui,
            )
        finally:
            close()
    state = "up to date" if res.skipped else f"built in {res.seconds:.0f} s"
    print(f"engine {state}: {res.bin_dir}")
    print(f"CPU variants: {', '.join(res.variants)}; this CPU runs: {res.host_variant or 'none!'}")
    print("web UI: " + ("built; `invoke serve` shows the chat at /" if res.ui else "not built (see --ui)"))
    print(f"log: {res.log_path}")


@task(
    auto_shortflags=False,
    help={
        "model": "GGUF whose ternary matrix shapes are tuned for (required)",
        "threads": "threads the kernels run with (default: all cores)",
        "cols": "prompt columns per GEMM measurement (default 128)",
        "reps": "timed repetitions per measurement, median kept (default 5)",
        "build_dir": "engine build dir; the table goes to <build-dir>/tuning.json (default: build)",
        "out": "write the table here instead (the engine build only reads <build-dir>/tuning.json)",
    },
)
def tune(c, model="", threads=0, cols=128, reps=5, build_dir="build", out=""):
    """Measure the kernels' tile parameters for this CPU on a model's shapes (`invoke build` uses them)."""
    from bitnet.bench.tune import tune as run_tune

    if not model:
        raise Exit("error: --model is required, e.g. `invoke tune --model models/tiny/ggml-model-tq2_0.gguf`")
    with _user_errors():
        res = run_tune(model, build_dir=build_dir, out=out or None, threads=threads, cols=cols, reps=reps,
                       progress=print)  # fmt: skip
    print(res.report(table_used_by_build=not out))


@task(
    auto_shortflags=False,
    help={
        "build_dir": "engine build dir (default: build)",
        "model": "also check this GGUF file",
        "json_out": "print JSON instead of text",
        "memory": "also measure read bandwidth: fresh memory, and the model file's cached pages as the "
        "engine maps them (a few seconds; warns when the pages read clearly slower, as on some VMs)",
    },
)
def doctor(c, build_dir="build", model="", json_out=False, memory=False):
    """Report CPU features, the engine build, its active CPU variant and kernels, and problems."""
    from bitnet.doctor import doctor_report, format_doctor

    with _user_errors():
        report, diag = doctor_report(build_dir, model=model or None, memory=memory)
    print(json.dumps(report, indent=2, default=str) if json_out else format_doctor(report))
    if not diag.usable:
        for problem in diag.problems:
            print(f"problem: {problem}", file=sys.stderr)
        raise Exit(code=1)


@task(
    auto_shortflags=False,
    help={
        "build_dir": "engine build dir to delete (default: build)",
        "cache": "also delete the download/ccache cache",
    },
)
def clean(c, build_dir="build", cache=False):
    """Delete the engine build (and with --cache the cached sources and ccache)."""
    import shutil

    from bitnet.engine.build import cache_root

    for path in [Path(build_dir)] + ([cache_root()] if cache else []):
        if path.exists():
            print(f"removing {path}")
            shutil.rmtree(path)


@task(
    auto_shortflags=False,
    help={
        "model": "catalogue name (see `invoke setup --list`) or a Hugging Face repo id",
        "revision": "commit/branch to download (default: the catalogue's pinned revision)",
        "local_dir": "put plain files here instead of the Hugging Face cache",
    },
)
def download(c, model="2B", revision="", local_dir=""):
    """Download a checkpoint from Hugging Face (only the files needed; HF_TOKEN, HF_HOME honoured)."""
    from bitnet.models.hub import download_model

    with _user_errors():
        path = download_model(model, revision=revision or None, local_dir=local_dir or None)
    print(path)


@task(
    auto_shortflags=False,
    help={
        "model_dir": "checkpoint dir (config.json + safetensors + tokenizer) or an official I2_S .gguf",
        "outtype": "ternary weight type: tq2_0 (default), tq1_0; f16/f32 for reference files",
        "head_type": "tied embedding/output head: f16 (default), bf16 (lossless for bf16 checkpoints), f32, "
        "q8_0, q4_0, q6_k (via llama-quantize)",
        "build_dir": "engine build dir (its llama-quantize makes q6_k heads; default: build)",
        "outfile": "GGUF to write (default: <model-dir>/ggml-model-<outtype>.gguf)",
        "dry_run": "print the tensor plan (name, shape, type, bytes) and write nothing",
    },
)
def convert(c, model_dir="", outtype="tq2_0", head_type="f16", outfile="", dry_run=False, build_dir="build"):
    """Convert a Hugging Face BitNet checkpoint (or the official I2_S GGUF) to our GGUF."""
    from bitnet.models.convert import convert_checkpoint

    if not model_dir:
        raise Exit("error: --model-dir is required (a checkpoint directory or .gguf file)", code=2)
    src = Path(model_dir)
    out = Path(outfile) if outfile else (src if src.is_dir() else src.parent) / f"ggml-model-{outtype}.gguf"
    with _user_errors():
        report = convert_checkpoint(
            src, out, outtype=outtype, head_type=head_type, dry_run=dry_run, build_dir=build_dir
        )
    if dry_run:
        print(report.format_plan())  # the plan, then its notes
        return
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {report.outfile} ({report.file_bytes / 1e6:.1f} MB) in {report.seconds:.1f} s")


@task(
    auto_shortflags=False,
    help={
        "model_dir": "Hugging Face BitNet checkpoint dir (config.json + safetensors + tokenizer)",
        "gguf": "our GGUF of it (default: convert one per --head-type into a temporary dir)",
        "head_type": "head(s) of the temporary GGUFs, comma-separated: f32 (default, lossless), bf16, f16",
        "outtype": "ternary type of the temporary GGUFs: tq2_0 (default) or tq1_0",
        "modes": "comma-separated: per_token (default: the model's definition), per_block, stock",
        "n_new": "positions compared per prompt (default 16)",
        "prompt": "a prompt to use instead of the built-in three (repeatable)",
        "max_kl": "pass threshold: mean KL(transformers || engine) per position, nats (default 0.002)",
        "defaults": "run the engine with its default settings (f16 KV cache) instead of exact ones",
        "table": "print only the summary table, not every position",
        "threads": "engine threads (default: all cores)",
        "build_dir": "engine build dir (default: build)",
    },
    iterable=["prompt"],
)
def check(
    c,
    model_dir="",
    gguf="",
    head_type="f32",
    outtype="tq2_0",
    modes="per_token",
    n_new=16,
    prompt=None,
    max_kl=0.002,
    defaults=False,
    table=False,
    threads=0,
    build_dir="build",
):
    """Check the engine against transformers on a checkpoint: per-position top tokens, KL, max |dlog p|.

    Exits 1 when a per_token run's mean KL is above --max-kl or a decisive top token differs (gap >= 0.3
    nats); per_block and stock runs are reported for comparison only."""
    from bitnet.bench.numerics import DEFAULT_PROMPTS, check_reference, format_report, format_summary

    if not model_dir:
        raise Exit("error: --model-dir is required (a Hugging Face BitNet checkpoint directory)", code=2)
    with _user_errors():
        reports = check_reference(
            model_dir,
            gguf or None,
            prompts=list(prompt) if prompt else DEFAULT_PROMPTS,
            n_new=int(n_new),
            head_types=[h.strip() for h in head_type.split(",") if h.strip()],
            modes=[m.strip() for m in modes.split(",") if m.strip()],
            outtype=outtype,
            exact=not defaults,
            max_mean_kl=float(max_kl),
            build_dir=build_dir,
            threads=int(threads) or None,
        )
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError):
            tokenizer = None
    if not table:
        for report in reports:
            print(format_report(report, tokenizer))
            print()
    print(format_summary(reports))
    if any(r.mode == "per_token" and not r.passed for r in reports):
        raise Exit("reference check FAILED (see the table above)", code=1)


@task(
    auto_shortflags=False,
    help={
        "size": "tiny (few MB, real tokenizer), 125M, 350M, 700M, 1.3B, 2B (exact 2B4T shape), 3B, 7B, 13B",
        "outtype": "tq2_0 (default) or tq1_0",
        "head_type": "tied embedding/head: f16 (default), bf16, f32, q8_0, q4_0, q6_k (via llama-quantize)",
        "outfile": "GGUF to write (default: where `invoke setup` puts it, models/dummy-2B/...)",
        "seed": "random seed (default 0)",
    },
)
def dummy(c, size="tiny", outtype="tq2_0", head_type="f16", outfile="", seed=0):
    """Write a synthetic BitNet GGUF with random ternary weights and real shapes (no network)."""
    import time

    from bitnet.models.synthetic import synthetic_model_path, write_synthetic

    out = Path(outfile) if outfile else synthetic_model_path(size, outtype, head_type)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with _user_errors():
        write_synthetic(size, out, outtype=outtype, head_type=head_type, seed=seed)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - started:.1f} s")


@task(
    auto_shortflags=False,
    help={
        "model": "catalogue name (default: tiny, synthetic and offline) or Hugging Face repo id",
        "model_dir": "use this local checkpoint dir / .gguf instead of downloading",
        "outtype": "ternary weight type: tq2_0 (default) or tq1_0",
        "head_type": "tied embedding/head: f16 (default), bf16, f32, q8_0, q4_0, q6_k (via llama-quantize)",
        "build_dir": "engine build dir (default: build)",
        "list": "list the catalogue and exit",
        "revision": "download this branch, tag or commit instead of the catalogue's pin",
    },
)
def setup(  # noqa: A002
    c,
    model="tiny",
    model_dir="",
    outtype="tq2_0",
    head_type="f16",
    build_dir="build",
    list=False,
    revision="",
):
    """Build the engine if needed, get the model (make / download + convert) and smoke-run it."""
    if list:
        from bitnet.models.catalog import format_catalog

        print(format_catalog())
        return
    from bitnet.pipeline import setup_model

    with _user_errors():
        update, close = _progress_bar()
        try:
            report = setup_model(
                model,
                model_dir=model_dir or None,
                build_dir=build_dir,
                outtype=outtype,
                head_type=head_type,
                revision=revision or None,
                progress=update,
            )
        finally:
            close()
    for step in report.steps:
        print(step)
    print(f"ready: {report.gguf}")
    print(f"try:   python run_inference.py -m {report.gguf} -p 'Hello' -n 32 -temp 0")


@task(
    auto_shortflags=False,
    help={
        "rm": "remove this installed model (its whole folder under the models dir)",
        "yes": "do not ask before removing",
        "json_out": "print the list as JSON",
        "models_dir": "models directory (default: $BITNET_MODELS, else ./models)",
    },
)
def models(c, rm="", yes=False, json_out=False, models_dir=""):
    """List installed models (size, types, activation, numerics, source and revision) or remove one."""
    from bitnet.models import installed

    root = Path(models_dir) if models_dir else installed.models_dir()
    with _user_errors():
        if not rm:
            found = installed.list_models(root)
            if json_out:
                print(json.dumps([m.as_dict() for m in found], indent=2, default=str))
            else:
                print(installed.format_models(found, root))
            return
        folder = installed.find_model(rm, root)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        if not yes:
            if not sys.stdin.isatty():
                raise Exit(f"error: not removing {folder} without confirmation: pass --yes", code=2)
            answer = input(f"remove {folder} ({size / 1e6:.1f} MB)? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise Exit("kept", code=1)
        installed.remove_model(rm, root)
        print(f"removed {folder} ({size / 1e6:.1f} MB)")


@task(
    auto_shortflags=False,
    help={
        "model": "path of the .gguf model (e.g. models/tiny/ggml-model-tq2_0.gguf from `invoke setup`)",
        "prompt": "text to continue",
        "n": "tokens to generate (default 128)",
        "temp": "sampling temperature; 0 = greedy, reproducible (default 0.8)",
        "threads": "CPU threads (default: all cores)",
        "ctx_size": "context size in tokens (default 2048)",
        "build_dir": "engine build dir (default: build)",
        "verbose": "show the engine's log (loading, timings) on stderr",
        "timeout": "stop the engine after this many seconds (default: no limit)",
    },
)
def infer(
    c,
    model="",
    prompt="",
    n=128,
    temp=0.8,
    threads=0,
    ctx_size=2048,
    build_dir="build",
    verbose=False,
    timeout=0.0,
):
    """One-shot generation through BitNetRuntime.run_inference: prints the prompt and its continuation."""
    from bitnet.runtime.runtime import BitNetRuntime

    if not model or not prompt:
        raise Exit("error: --model and --prompt are required", code=2)
    with _user_errors():
        BitNetRuntime(build_dir=build_dir).run_inference(
            model=model,
            prompt=prompt,
            n_predict=n,
            temperature=float(temp),
            threads=threads or None,
            ctx_size=ctx_size,
            batch_size=512,
            engine_log=verbose,
            timeout=float(timeout) if timeout else None,
        )


@task(
    auto_shortflags=False,
    help={
        "model": "path of the .gguf model (e.g. models/tiny/ggml-model-tq2_0.gguf from `invoke setup`)",
        "host": "address to bind (default 127.0.0.1); any other needs --api-key or $BITNET_API_KEY",
        "port": "port to bind (default 8080; 0 picks a free one)",
        "threads": "CPU threads (default: all cores)",
        "parallel": "requests decoded at once (server slots; default: llama-server's 4 sharing the context)",
        "ctx_size": "context size in tokens, shared by the slots (default 2048)",
        "api_key": "key clients must send; prefer $BITNET_API_KEY (a command line shows in `ps`)",
        "build_dir": "engine build dir (default: build)",
        "ready_timeout": "seconds to wait for the model to load (default 300)",
        "cors_origin": "let web pages of this origin (e.g. https://app.example:8443, or '*') call the server "
        "from a browser; repeatable (default: only the server's own web UI)",
    },
    iterable=["cors_origin"],
)
def serve(
    c,
    model="",
    host="127.0.0.1",
    port=8080,
    threads=0,
    parallel=0,
    ctx_size=2048,
    api_key="",
    build_dir="build",
    ready_timeout=300,
    cors_origin=None,
):
    """Serve a model over OpenAI-compatible HTTP (llama-server) until Ctrl-C; prints "ready: URL"."""
    import signal

    from bitnet.runtime.runtime import BitNetRuntime
    from bitnet.runtime.server import serve_forever

    if not model:
        raise Exit("error: --model is required (a .gguf file; `invoke setup --model tiny` makes one)", code=2)
    with _user_errors():
        signum = serve_forever(
            model,
            runtime=BitNetRuntime(build_dir=build_dir),
            host=host,
            port=port or None,
            threads=threads or None,
            parallel=parallel or None,
            ctx_size=ctx_size,
            api_key=api_key or None,
            ready_timeout=float(ready_timeout),
            cors_origins=list(cors_origin or []) or None,
        )
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    raise Exit(f"{what}; server stopped", code=128 + signum)


@task(
    auto_shortflags=False,
    help={
        "model": "GGUF file to benchmark (default: newest converted model, else synthetic 2B4T)",
        "size": "synthetic model instead of --model: tiny 125M 350M 700M 1.3B 2B 3B 7B 13B",
        "outtype": "ternary format of a --size model: tq2_0 (default) or tq1_0",
        "head_type": "embedding/head format of a --size model: f16 (default), bf16, q8_0, q4_0",
        "threads": "thread counts: 8, 1,2,4 or 1..all (default: all cores; above the cores is clamped)",
        "prompt_tokens": "prefill test ppN, llama-bench -p (default 512; 0 skips prefill)",
        "gen_tokens": "decode test tgN, llama-bench -n (default 128; 0 skips decode)",
        "reps": "repetitions (default 5); the configs alternate A B A B within each",
        "compare": "configs besides ours (default without --spec: stock; 'ours' runs ours alone), e.g. "
        "stock,avx2,stock+avx2",
        "isa": "CPU variants to run every config on: auto (default), all, or e.g. avx2,avx512",
        "spec": "bench spec: quick, full (bench/specs/*.toml) or a .toml path; flags override it",
        "baseline": "config the ratio column divides by (default: stock when it ran)",
        "build_dir": "engine build dir (default: build)",
        "results_dir": "where the rows go (default: bench/results)",
        "plots_dir": "where the plots go (default: bench/plots)",
        "fail_fast": "stop at the first failed engine run (default: report it and go on)",
        "no_plots": "do not draw plots after the run",
        "no_roofline": "skip the read-bandwidth probe (no %-of-roofline column)",
        "compare_bin": "NAME=PATH: another engine's llama-bench (e.g. ik_llama.cpp's, built by you) run "
        "in the same rounds; repeatable",
        "compare_model": "NAME=FILE: that peer's own model file (default: the benchmarked model); repeatable",
        "compare_args": "'NAME=ARGS': extra llama-bench arguments for that peer, e.g. 'ik=-fa 1 -rtr 1'",
        "engine_args": "extra llama-bench arguments for our own configs (ours, stock, variants), e.g. "
        "'-lm none' (weights read into fresh memory instead of mapped)",
        "no_load": "skip the load probe per config and repetition (no load s column)",
        "busy": "host conditions to measure under: idle (default), pinned (a busy loop on the last core), "
        "bursty (that loop busy 8 ms of every 16, like a browser tab), free (the loop unpinned), "
        "e.g. idle,pinned",
    },
    iterable=["compare_bin", "compare_model", "compare_args"],
)
def bench(
    c,
    model="",
    size="",
    outtype="tq2_0",
    head_type="f16",
    threads="",
    prompt_tokens=-1,
    gen_tokens=-1,
    reps=0,
    compare="",
    isa="",
    spec="",
    baseline="",
    build_dir="build",
    results_dir="",
    plots_dir="",
    fail_fast=False,
    no_plots=False,
    no_roofline=False,
    compare_bin=None,
    compare_model=None,
    compare_args=None,
    no_load=False,
    busy="",
    engine_args="",
):
    """End-to-end throughput with llama-bench: stores tidy rows, prints a table, draws plots."""
    from bitnet.bench.results import DEFAULT_RESULTS_DIR
    from bitnet.bench.sweep import DEFAULT_PLOTS_DIR, run_bench

    with _user_errors():
        run = run_bench(
            model=model or None,
            size=size or None,
            outtype=outtype,
            head_type=head_type,
            threads=threads or None,
            n_prompt=None if prompt_tokens < 0 else prompt_tokens,
            n_gen=None if gen_tokens < 0 else gen_tokens,
            reps=reps or None,
            compare=compare or None,
            isa=isa or None,
            spec=spec or None,
            baseline=baseline or None,
            build_dir=build_dir,
            results_dir=results_dir or DEFAULT_RESULTS_DIR,
            plots_dir=None if no_plots else (plots_dir or DEFAULT_PLOTS_DIR),
            fail_fast=fail_fast,
            roofline=False if no_roofline else None,
            compare_bin=compare_bin or None,
            compare_model=compare_model or None,
            compare_args=compare_args or None,
            load_probe=False if no_load else None,
            busy=busy or None,
            engine_args=engine_args or None,
        )
    print(run.report())
    if not run.ok:
        raise Exit(f"{len(run.failures)} engine run(s) failed; see the logs named above", code=1)


@task(
    auto_shortflags=False,
    help={
        "results": "results dir or .jsonl files, comma-separated (default: bench/results); files: all "
        "their runs are drawn",
        "run": "run ids (or their first characters) to draw, comma-separated (default: the latest run)",
        "all": "draw every stored run together (default: the latest llama-bench run and serving run)",
        "out_dir": "where the PNG and SVG files go (default: bench/plots)",
    },
)
def plot(c, results="", run="", all=False, out_dir=""):
    """Redraw the benchmark plots (PNG + SVG) from the stored rows of the latest run (or those asked)."""
    from bitnet.bench.results import DEFAULT_RESULTS_DIR
    from bitnet.bench.sweep import DEFAULT_PLOTS_DIR, render_plots

    with _user_errors():
        sources = [s for s in results.split(",") if s] or [DEFAULT_RESULTS_DIR]
        runs = [r for r in run.split(",") if r]
        written = render_plots(sources, out_dir or DEFAULT_PLOTS_DIR, runs=runs, all_runs=all, owner="plot")
    if not written:
        raise Exit(f"no benchmark rows to plot in {', '.join(map(str, sources))}: run `invoke bench`", code=1)
    runs_shown = getattr(written, "runs", [])
    latest = not (all or runs or len(runs_shown) > 1 or any(Path(s).is_file() for s in sources))
    hint = " (the latest; --run ID or --all for others)" if latest else ""
    print(f"plotted {len(runs_shown)} run(s){hint}:")
    for line in runs_shown:
        print(f"  {line}")
    for path in written:
        print(path)


@task(
    auto_shortflags=False,
    help={
        "model": "path of the .gguf model",
        "text": "text file to score, e.g. wiki.test.raw from wikitext-2-raw-v1.zip (see the README)",
        "ctx_size": "tokens per chunk, llama-perplexity -c (default 512, as for the 2B4T reference); "
        "the text needs at least twice as many",
        "chunks": "score only the first N chunks (default: the whole text): quicker, rougher",
        "threads": "CPU threads (default: all cores)",
        "build_dir": "engine build dir (default: build)",
    },
)
def ppl(c, model="", text="", ctx_size=512, chunks=0, threads=0, build_dir="build"):
    """Perplexity of a model on a text file (llama-perplexity); stores a row in bench/results/."""
    from bitnet.bench.perplexity import run_perplexity

    if not model or not text:
        raise Exit("error: --model and --text are required, e.g. --text wikitext-2-raw/wiki.test.raw", code=2)
    with _user_errors():
        result = run_perplexity(
            model,
            text,
            ctx_size=ctx_size,
            batch_size=max(512, ctx_size),
            threads=threads or None,
            chunks=chunks or None,
            build_dir=build_dir,
        )
    print(result.report())


@task(
    auto_shortflags=False,
    help={
        "model": "GGUF file to serve (default as in invoke bench: the newest converted model, else 2B4T)",
        "spec": 'serving spec: serve (bench/specs/serve.toml) or a .toml path with kind = "serve"; flags '
        "override it",
        "concurrency": "concurrent clients, one level each: e.g. 1,2,4,8 (default; each 1..64)",
        "requests": "requests each client sends, one after the other (default 4)",
        "max_tokens": "tokens generated per request (default 32; exactly this many: EOS is ignored)",
        "compare": "kernel choices besides the environment's, alternating per level: stock, ours",
        "parallel": "server slots (default: one per client at each level)",
        "threads": "server threads (default: all cores; above the cores is clamped)",
        "timeout": "seconds for all requests of one level; unanswered ones count as errors (default 600)",
        "build_dir": "engine build dir (default: build)",
        "results_dir": "where the rows go (default: bench/results)",
        "plots_dir": "where the plots go (default: bench/plots)",
        "no_plots": "do not redraw the plots",
    },
)
def serve_bench(
    c,
    model="",
    spec="",
    concurrency="",
    requests=0,
    max_tokens=0,
    compare="",
    parallel=0,
    threads=0,
    timeout=0,
    build_dir="build",
    results_dir="",
    plots_dir="",
    no_plots=False,
):
    """llama-server throughput and latency under N concurrent clients (loopback): rows, table, plots."""
    import logging

    from bitnet.bench.results import DEFAULT_RESULTS_DIR
    from bitnet.bench.serving import serve_bench as run
    from bitnet.bench.sweep import DEFAULT_PLOTS_DIR

    with _user_errors():
        for name in ("httpx", "httpx2"):  # the openai client logs every request at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        result = run(
            model or None,
            spec=spec or None,
            concurrency=concurrency or None,
            requests_per_client=int(requests) or None,
            max_tokens=int(max_tokens) or None,
            compare=compare or None,
            parallel=int(parallel) or None,
            threads=int(threads) or None,
            timeout=float(timeout) or None,
            build_dir=build_dir,
            results_dir=results_dir or DEFAULT_RESULTS_DIR,
            plots_dir=None if no_plots else (plots_dir or DEFAULT_PLOTS_DIR),
        )
    print(result.report())
    if result.failed:
        raise Exit(f"{result.failed} request(s) failed: {'; '.join(result.error_messages)}", code=1)
