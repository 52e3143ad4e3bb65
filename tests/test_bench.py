"""bitnet.bench.sweep, .spec, .llama_bench: specs, llama-bench parsing, thread clamping,
the sweep loop (A B A B order, failures, fail_fast) against a fake llama-bench, and the whole
pipeline on the real engine and the tiny model. No test asserts a time."""

from __future__ import annotations

import json
import logging
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from benchhelpers import FAKE_TS, fake_calls, is_load_probe, write_fake_llama_bench

from bitnet.bench.llama_bench import (
    llama_bench_command,
    loaded_cpu_variant,
    parse_llama_bench_output,
    resolve_variants,
)
from bitnet.bench.results import inspect_model, load_results
from bitnet.bench.spec import (
    DEFAULT_MODEL,
    Config,
    ModelRequest,
    expand_configs,
    expand_threads,
    load_spec,
    parse_spec,
    spec_from_flags,
)
from bitnet.bench.sweep import plan_jobs, run_bench
from bitnet.engine.cpu import CpuInfo
from bitnet.errors import BenchmarkError, BenchmarkRunError, BenchSpecError

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline default model, written once for this module by bitnet.models.synthetic."""
    from bitnet.models.synthetic import write_dummy_model

    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    write_dummy_model("tiny", path, progress=False)
    return path


@pytest.fixture
def not_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "broken.gguf"
    path.write_text("this is not a model\n")
    return path


# ---------------------------------------------------------------------------------------- parsing


def test_parse_real_llama_bench_json_capture():
    """Output captured once from build/bin/llama-bench -m tiny.gguf -p 16 -n 4 -r 1 -o json."""
    entries = parse_llama_bench_output((DATA / "llama_bench_tiny.json").read_text())
    assert [(e["n_prompt"], e["n_gen"]) for e in entries] == [(16, 0), (0, 4)]
    for e in entries:
        tokens = e["n_prompt"] + e["n_gen"]
        # avg_ts is tokens per second of the average sample: consistent with avg_ns as printed
        assert e["avg_ts"] == pytest.approx(tokens * 1e9 / e["avg_ns"], rel=1e-5)
        assert len(e["samples_ts"]) == len(e["samples_ns"]) == 1
        assert isinstance(e["n_threads"], int) and e["n_threads"] > 0
        assert {"build_commit", "cpu_info", "model_type", "stddev_ts"} <= set(e)


def test_parse_jsonl_written_by_hand():
    lines = [
        {"n_prompt": 512, "n_gen": 0, "n_threads": 8, "avg_ts": 26.6, "samples_ts": [26.5, 26.7]},
        {"n_prompt": 0, "n_gen": 128, "n_threads": 8, "avg_ts": 10.8, "samples_ts": [10.8, 10.8]},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    assert parse_llama_bench_output(text) == lines


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "no results"),
        ("[\n", "not valid JSON"),  # what a run that failed to load its model leaves on stdout
        ("[]", "no test results"),
        ('[{"n_prompt": 1, "n_gen": 0}]', "lacks n_threads, avg_ts"),
        ("loading model...\n", "not valid JSON"),
    ],
)
def test_parse_rejects_unusable_output(text: str, needle: str):
    with pytest.raises(BenchmarkError, match=needle):
        parse_llama_bench_output(text)


def test_command_is_one_repetition_with_json_output():
    argv = llama_bench_command("bin/llama-bench", "m.gguf", n_prompt=512, n_gen=128, n_threads=2)
    assert argv[:3] == ["bin/llama-bench", "-m", "m.gguf"]
    assert argv[3:] == ["-p", "512", "-n", "128", "-t", "2", "-r", "1", "-o", "json"]


def test_loaded_cpu_variant_from_stderr():
    stderr = "load_backend: loaded CPU backend from /b/bin/libggml-cpu-avx512.so\n"
    assert loaded_cpu_variant(stderr) == "avx512"
    assert loaded_cpu_variant("llama_bench: error: failed\n") is None


# ---------------------------------------------------------------------------------------- threads, configs


def test_threads_above_the_cores_are_clamped_with_a_warning():
    threads, warnings = expand_threads([1, 8, "all"], cores=2)
    assert threads == [1, 2]
    assert len(warnings) == 1 and "threads=8" in warnings[0] and "2 cores" in warnings[0]


def test_thread_ranges_walk_powers_of_two_up_to_the_cores():
    assert expand_threads(["1..all"], cores=12) == ([1, 2, 4, 8, 12], [])
    assert expand_threads(["3..8"], cores=16)[0] == [3, 4, 8]
    for bad in (0, -1, "some", "4..2", True):
        with pytest.raises(BenchSpecError, match="threads"):
            expand_threads([bad], cores=4)


def test_configs_cross_isa_unless_an_item_names_its_own():
    configs = expand_configs(["stock", "stock+sse42"], ["auto", "avx2"])
    assert [c.label for c in configs] == ["ours", "ours+avx2", "stock", "stock+avx2", "stock+sse42"]
    # None removes the variable: a BITNET_ACT_QUANT in the user's shell never leaks into ours/stock runs
    assert Config("stock", "avx2").env() == {
        "BITNET_KERNELS": "0",
        "BITNET_ACT_QUANT": None,
        "BITNET_AMX": None,
        "GGML_CPU_VARIANT": "avx2",
    }
    assert Config("perblock").env() == {
        "BITNET_KERNELS": "1",
        "BITNET_ACT_QUANT": "per_block",
        "BITNET_AMX": None,
        "GGML_CPU_VARIANT": None,
    }
    # noamx prices the AMX-INT8 GEMM in the same run (BITNET_AMX=0 keeps our GEMM on vpdpbusd)
    assert Config("noamx").env() == {
        "BITNET_KERNELS": "1",
        "BITNET_ACT_QUANT": None,
        "BITNET_AMX": "0",
        "GGML_CPU_VARIANT": None,
    }
    assert Config().env() == {
        "BITNET_KERNELS": "1",
        "BITNET_ACT_QUANT": None,
        "BITNET_AMX": None,
        "GGML_CPU_VARIANT": None,
    }
    with pytest.raises(BenchSpecError, match="two kernel"):
        expand_configs(["ours+stock"])


def test_resolve_variants_checks_the_cpu_and_the_build(tmp_path: Path):
    for name in ("sse42", "avx2"):
        (tmp_path / f"libggml-cpu-{name}.so").write_bytes(b"")
    avx2_cpu = CpuInfo("x86_64", "t", 2, ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"))
    assert resolve_variants(["all"], bin_dir=tmp_path, cpu=avx2_cpu) == ["sse42", "avx2"]
    assert resolve_variants(["auto", "avx2", "avx2"], bin_dir=tmp_path, cpu=avx2_cpu) == [None, "avx2"]
    with pytest.raises(BenchSpecError, match="lacks avx512f"):
        resolve_variants(["avx512"], bin_dir=tmp_path, cpu=avx2_cpu)
    with pytest.raises(BenchSpecError, match="unknown CPU variant 'avx3'"):
        resolve_variants(["avx3"], bin_dir=tmp_path, cpu=avx2_cpu)
    (tmp_path / "libggml-cpu-avx2.so").unlink()
    with pytest.raises(BenchSpecError, match="not built.*invoke build"):
        resolve_variants(["avx2"], bin_dir=tmp_path, cpu=avx2_cpu)


# ---------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize("name", ["quick", "full"])
def test_bundled_specs_load_and_expand(name: str):
    spec = load_spec(name)
    assert spec.name == name and spec.description and spec.baseline == "stock"
    jobs, _ = plan_jobs(spec, cores=4, variants_for=lambda isa: [None] if list(isa) == ["auto"] else ["avx2"])
    assert jobs and all(j.n_prompt or j.n_gen for j in jobs)
    assert {j.config.kernels for j in jobs} == {"ours", "stock"}
    assert len({j.key for j in jobs}) == len(jobs)  # a measurement asked for twice runs once


def test_full_spec_covers_the_issue_matrix():
    spec = load_spec("full")
    sizes = {m.size for s in spec.sweeps for m in s.models}
    formats = {(m.outtype, m.head_type) for s in spec.sweeps for m in s.models}
    assert {"125M", "2B", "7B"} <= sizes
    assert {("tq2_0", "f16"), ("tq1_0", "f16"), ("tq2_0", "q8_0"), ("tq2_0", "q4_0")} <= formats
    assert any("1..all" in s.threads for s in spec.sweeps) and any("all" in s.isa for s in spec.sweeps)


def test_spec_sweeps_inherit_and_override_the_top_level():
    spec = parse_spec(
        {
            "reps": 2,
            "n_gen": 16,
            "models": [{"size": "tiny"}],
            "sweep": [{"name": "a"}, {"name": "b", "n_gen": 0, "models": [{"file": "x.gguf"}]}],
        },
        name="t",
    )
    a, b = spec.sweeps
    assert (a.n_gen, a.n_prompt, a.models) == (16, 512, (ModelRequest(size="tiny"),))
    assert (b.n_gen, b.models) == (0, (ModelRequest(file=Path("x.gguf")),))
    assert spec.with_overrides(n_gen=4, reps=1).sweeps[1].n_gen == 4


def test_model_entries_expand_to_every_combination():
    spec = parse_spec({"models": [{"size": ["tiny", "2B"], "outtype": ["tq2_0", "tq1_0"]}]}, name="t")
    labels = [m.label for m in spec.sweeps[0].models]
    assert labels == ["tiny", "tiny-tq1_0-f16", "2B", "2B-tq1_0-f16"]
    assert spec.sweeps[0].models[1].path(Path("models")) == Path("models/tiny/ggml-model-tq1_0.gguf")


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"models": [{"size": "tiny"}], "repz": 3}, "unknown key repz"),
        ({"models": [{"size": "5B"}]}, "unknown model size '5B'"),
        ({"models": [{"size": "tiny", "file": "a.gguf"}]}, "exactly one of size or file"),
        ({"models": [{"size": "tiny", "head_type": "q9_9"}]}, "not a GGML type"),
        ({"models": [{"size": "tiny"}], "threads": [0]}, "positive"),
        ({"models": [{"size": "tiny"}], "n_prompt": 0, "n_gen": 0}, "nothing would run"),
        ({"models": [{"size": "tiny"}], "reps": 0}, "reps must be a positive integer"),
        ({"threads": [1]}, "has no models"),
        ({"models": [{"size": "tiny"}], "compare": ["stock+ours"]}, "two kernel choices"),
    ],
)
def test_invalid_specs_say_what_is_wrong(data: dict, needle: str):
    with pytest.raises(BenchSpecError, match=needle):
        parse_spec(data, name="bad")


def test_spec_files_by_path_and_errors_name_the_file(tmp_path: Path):
    path = tmp_path / "mine.toml"
    path.write_text('reps = 1\n[[models]]\nsize = "tiny"\n')
    assert load_spec(path).reps == 1 and load_spec(path).name == "mine"
    path.write_text("reps = \n")
    with pytest.raises(BenchSpecError, match="mine.toml.*TOML"):
        load_spec(path)
    with pytest.raises(BenchSpecError, match="not found.*quick"):
        load_spec("no-such-spec")


def test_flags_defaults_are_the_2b_shape_pp512_tg128_all_cores():
    spec = spec_from_flags()
    (sweep,) = spec.sweeps
    assert (sweep.models, sweep.n_prompt, sweep.n_gen, sweep.threads, spec.reps) == (
        (DEFAULT_MODEL,), 512, 128, ("all",), 5
    )  # fmt: skip
    # ours against stock unless told otherwise; "ours" alone on request
    assert [c.label for c in expand_configs(sweep.compare)] == ["ours", "stock"]
    (alone,) = spec_from_flags(compare=["ours"]).sweeps
    assert [c.label for c in expand_configs(alone.compare)] == ["ours"]
    with pytest.raises(BenchSpecError, match="either --model"):
        spec_from_flags(model="a.gguf", size="2B")


# ------------------------------------------------------------------------------------ sweeps (fake engine)


def _spec_file(tmp_path: Path, *models: Path, reps: int = 2) -> Path:
    entries = "".join(f'[[models]]\nfile = "{m}"\n' for m in models)
    path = tmp_path / "spec.toml"
    path.write_text(f'reps = {reps}\nn_prompt = 8\nn_gen = 4\nthreads = [1]\ncompare = ["stock"]\n{entries}')
    return path


def _run(tmp_path: Path, **kwargs):
    kwargs.setdefault("roofline", False)
    return run_bench(
        build_dir=tmp_path / "build",
        results_dir=tmp_path / "bench" / "results",
        plots_dir=tmp_path / "bench" / "plots",
        models_dir=tmp_path / "models",
        progress=False,
        **kwargs,
    )


def test_every_row_has_peak_rss_and_the_load_probe_of_its_config(tmp_path: Path, tiny_model: Path):
    """Each measurement is preceded by a one-token load probe of the same config (A: probe, run; B: ...);
    rows carry the run's peak RSS (runtime.rusage) and the probe's wall time, and the table shows both."""
    write_fake_llama_bench(tmp_path / "build")
    run = _run(tmp_path, model=tiny_model, threads=1, n_prompt=8, n_gen=4, reps=2, compare="stock")
    calls = fake_calls(tmp_path / "build", probes=True)
    assert [(c["kernels"], is_load_probe(c)) for c in calls] == [("1", True), ("1", False), ("0", True),
                                                                  ("0", False)] * 2  # fmt: skip
    stored = load_results(run.results_path)
    assert stored["max_rss_mb"].notna().all() and (stored["max_rss_mb"] > 5).all()  # a Python process
    assert stored["load_s"].notna().all() and (stored["load_s"] > 0).all()
    assert "peak RSS MB" in run.table and "load s" in run.table
    write_fake_llama_bench(tmp_path / "build2")
    quiet = run_bench(build_dir=tmp_path / "build2", results_dir=tmp_path / "r2", plots_dir=None,
                      model=tiny_model, threads=1, n_prompt=8, n_gen=0, reps=1, load_probe=False,
                      roofline=False, progress=False)  # fmt: skip
    assert not any(is_load_probe(c) for c in fake_calls(tmp_path / "build2", probes=True))
    assert load_results(quiet.results_path)["load_s"].isna().all() and "load s" not in quiet.table


def test_peer_binaries_run_in_the_same_rounds_on_their_own_model(tmp_path: Path, tiny_model: Path):
    """--compare-bin NAME=PATH: the peer's llama-bench runs between ours and stock in every round, on
    --compare-model's file with --compare-args, without our engine switches; its rows share the model
    name, so the table gives it a ratio against stock."""
    write_fake_llama_bench(tmp_path / "build")
    peer_bin = write_fake_llama_bench(tmp_path / "ik", ts={"1": 120.0})
    peer_model = tmp_path / "ik-model.gguf"
    peer_model.write_bytes(tiny_model.read_bytes())
    run = _run(tmp_path, model=tiny_model, threads=1, n_prompt=8, n_gen=0, reps=2, compare="stock",
               compare_bin=[f"ik={peer_bin}"], compare_model=[f"ik={peer_model}"],
               compare_args=["ik=-fa 1 --repack 0"], engine_args="-lm none")  # fmt: skip
    assert run.ok, run.report()
    ours, peer = fake_calls(tmp_path / "build"), fake_calls(tmp_path / "ik")
    assert [c["kernels"] for c in ours] == ["1", "0"] * 2 and len(peer) == 2
    for call in ours:  # --engine-args: our configs (ours and stock) only, and their load probes too
        assert call["argv"][-2:] == ["-lm", "none"]
    assert all(c["argv"][-2:] == ["-lm", "none"] for c in fake_calls(tmp_path / "build", probes=True))
    for call in peer:
        argv = call["argv"]
        assert argv[argv.index("-m") + 1] == str(peer_model) and argv[-4:] == ["-fa", "1", "--repack", "0"]
        assert "-lm" not in argv
        assert call["kernels"] is None and call["variant"] is None
    stored = load_results(run.results_path)
    assert list(stored["config"])[:3] == ["ours", "stock", "ik"]  # ours, stock, the peer: one round
    ik = stored[stored["config"] == "ik"]
    assert set(ik["model_name"]) == {"tiny"} and set(ik["model_path"]) == {str(peer_model)}
    assert set(ik["engine_binary"]) == {str(peer_bin)} and set(ik["avg_ts"]) == {120.0}
    assert set(ik["engine_args"]) == {"-fa 1 --repack 0"}
    assert set(stored[stored["config"] != "ik"]["engine_args"]) == {"-lm none"}
    line = next(ln for ln in run.table.splitlines() if " ik " in f" {ln} ")
    assert "1.20x" in line  # 120 / 100 (stock), same model and test
    assert "ours ÷ this" in run.table


def test_busy_conditions_run_each_cell_with_and_without_a_busy_loop(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
):
    """busy = idle,pinned: every cell runs with nothing else and with bench.busy's loop on the host; the
    loop's own share of the load average does not flag its rows."""
    monkeypatch.setattr("bitnet.bench.busy._history", [])  # no loops of earlier tests in this process
    write_fake_llama_bench(tmp_path / "build")
    run = _run(tmp_path, model=tiny_model, threads=1, n_prompt=0, n_gen=4, reps=2, compare="stock",
               busy="idle,pinned", load_probe=False)  # fmt: skip
    calls = fake_calls(tmp_path / "build")
    assert [(c["kernels"], c["busy_loops"]) for c in calls][:4] == [("1", 0), ("0", 0), ("1", 1), ("0", 1)]
    stored = load_results(run.results_path)
    assert list(stored["busy"]) == ["idle", "idle", "pinned", "pinned"] * 2
    share = list(stored["busy_load"])
    # none before any loop ran; while one runs, its share of the 1-minute average (it only just started:
    # more than one 5 s update's worth, well under 1); the next repetition's idle runs still carry it
    assert share[:2] == [0.0, 0.0]
    assert all(0.08 < x < 0.5 for x in share[2:4])
    assert all(0.08 < x < 0.5 for x in share[4:6])
    assert "pinned" in run.table and "busy" in run.table
    with pytest.raises(BenchSpecError, match="not a host condition"):
        _run(tmp_path, model=tiny_model, threads=1, n_prompt=0, n_gen=4, reps=1, busy="loaded")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"compare_bin": ["ik"]}, "NAME=VALUE"),
        ({"compare_bin": ["ik=/nonexistent/llama-bench"]}, "not an executable file"),
        ({"compare_bin": ["stock=/bin/true"]}, "not one of our configs"),
        ({"compare_bin": ["ik=/bin/true"], "compare_model": ["bn=/x.gguf"]}, "which no --compare-bin"),
        ({"compare_bin": ["ik=/bin/true"], "compare_model": ["ik=/nonexistent.gguf"]}, "does not exist"),
        ({"compare_bin": ["ik=/bin/true"], "compare_args": ["ik=-t 4"]}, "must not set -t"),
        ({"compare_bin": ["ik=/bin/true", "ik=/bin/false"]}, "twice"),
        ({"engine_args": "-lm none -r 3"}, "engine_args must not set -r"),
    ],
)
def test_bad_peer_flags_are_refused_before_anything_runs(tmp_path: Path, tiny_model: Path, flags, message):
    write_fake_llama_bench(tmp_path / "build")
    with pytest.raises(BenchSpecError, match=message):
        _run(tmp_path, model=tiny_model, threads=1, n_prompt=8, n_gen=0, reps=1, **flags)
    assert fake_calls(tmp_path / "build", probes=True) == []


def test_a_spec_file_can_name_peers(tmp_path: Path, tiny_model: Path):
    spec = tmp_path / "peers.toml"
    spec.write_text(
        f'reps = 1\nn_prompt = 8\nn_gen = 0\nthreads = [1]\nbaseline = "ik"\nload = false\n'
        f'engine_args = ["-lm", "none"]\n[[models]]\nfile = "{tiny_model}"\n'
        f'[[peer]]\nname = "ik"\nbinary = "/bin/true"\nargs = "-fa 1"\n'
    )
    parsed = load_spec(spec)
    assert parsed.engine_args == ("-lm", "none")
    assert [(p.name, p.binary, p.model, p.args) for p in parsed.peers] == [
        ("ik", Path("/bin/true"), None, ("-fa", "1"))
    ]
    assert parsed.baseline == "ik" and parsed.load is False
    spec.write_text(spec.read_text() + "bogus = 1\n")
    with pytest.raises(BenchSpecError, match="bogus"):
        load_spec(spec)


def test_configs_alternate_within_each_repetition(tmp_path: Path, tiny_model: Path):
    write_fake_llama_bench(tmp_path / "build")
    run = _run(tmp_path, model=tiny_model, threads=1, n_prompt=8, n_gen=4, reps=3, compare="stock")
    assert [c["kernels"] for c in fake_calls(tmp_path / "build")] == ["1", "0"] * 3  # A B A B A B
    assert run.ok and len(run.rows) == 3 * 2 * 2  # reps x configs x (pp, tg)
    stored = load_results(run.results_path)
    assert len(stored) == 12 and set(stored["rep"]) == {0, 1, 2}
    by_config = stored.groupby("config")["avg_ts"].median()
    assert by_config["ours"] == FAKE_TS["1"] and by_config["stock"] == FAKE_TS["0"]
    assert "1.50x" in run.table and "vs stock" in run.table  # 150 / 100


def test_threads_flag_above_the_cores_is_clamped(tmp_path: Path, tiny_model: Path, caplog, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    write_fake_llama_bench(tmp_path / "build")
    with caplog.at_level(logging.WARNING):
        run = _run(tmp_path, model=tiny_model, threads=8, n_prompt=8, n_gen=0, reps=1, compare="ours")
    (call,) = fake_calls(tmp_path / "build")
    assert call["argv"][call["argv"].index("-t") + 1] == "2"
    assert any("threads=8" in w and "2 cores" in w for w in run.warnings)
    assert "threads=8 is more than the 2 cores" in caplog.text
    assert "threads=8" in run.report()


def test_rows_carry_identity_shape_and_roofline(tmp_path: Path, tiny_model: Path, monkeypatch):
    from bitnet.bench.roofline import Bandwidth

    probed: list[tuple[int, object]] = []

    def fake_probe(n: int, *, path=None, passes: int = 7) -> Bandwidth:
        probed.append((n, path))
        if path is None:
            return Bandwidth(3.0, (3.0,), n, 1 << 20)
        return Bandwidth(1.5, (1.5,), n, 1 << 20, mapped_file=str(path))  # the file's pages: half as fast

    monkeypatch.setattr("bitnet.bench.sweep.probe_bandwidth", fake_probe)
    monkeypatch.setattr("bitnet.bench.roofline.probe_bandwidth", fake_probe)  # under probe_model_pages
    monkeypatch.setattr("bitnet.bench.roofline.llc_bytes", lambda: 1 << 10)  # let the tiny model count as big
    write_fake_llama_bench(tmp_path / "build")
    run = _run(tmp_path, model=tiny_model, threads=1, n_prompt=8, n_gen=4, reps=1, isa="sse42", roofline=True,
               compare="ours")  # fmt: skip
    df = load_results(run.results_path)
    info = inspect_model(tiny_model)
    assert set(df["kind"]) == {"bandwidth", "llama-bench"}
    # fresh memory, then the decoded model's mapped pages; the gap is a warning that says what to do
    resolved = [(n, None if p is None else Path(p).resolve()) for n, p in probed]
    assert resolved == [(1, None), (1, tiny_model.resolve())]
    bw_rows = df[df["kind"] == "bandwidth"]
    assert bw_rows["mapped_file"].isna().sum() == 1 and bw_rows["bandwidth_gbs"].tolist() == [3.0, 1.5]
    assert bw_rows["mapped_file"].iloc[1] == str(probed[1][1])
    (note,) = [w for w in run.warnings if "cached pages" in w]
    assert f"{tiny_model.name}'s cached pages read at 1.5 GB/s, 50 % of fresh memory" in note
    assert "--load-mode none" in note
    assert f"1.5 GB/s through the cached pages of {tiny_model.name}" in run.report()
    rows = df[df["kind"] == "llama-bench"].set_index("test")
    assert list(rows.index) == ["pp8", "tg4"]
    tg = rows.loc["tg4"]
    assert tg["config"] == "ours+sse42" and tg["cpu_variant"] == "sse42"  # as the loader said on stderr
    assert tg["bytes_per_token"] == info.bytes_per_token and tg["n_layer"] == info.n_layer
    assert tg["head_format"] == "f16" and tg["weight_format"] == "tq2_0"
    bound = 3.0e9 / info.bytes_per_token
    assert tg["roofline_ts"] == pytest.approx(bound)
    assert tg["roofline_frac"] == pytest.approx(FAKE_TS["1"] / bound)
    assert pd.isna(rows.loc["pp8", "roofline_frac"])  # prefill has no bandwidth bound
    for col in ("repo_commit", "engine_pin", "cpu_model", "cpu_flags", "date", "run_id", "samples_ts"):
        assert rows[col].notna().all(), col


def test_a_failed_run_is_reported_with_its_log_and_the_sweep_continues(
    tmp_path: Path, tiny_model: Path, not_gguf: Path
):
    write_fake_llama_bench(tmp_path / "build")
    run = _run(tmp_path, spec=_spec_file(tmp_path, not_gguf, tiny_model, reps=2))
    assert not run.ok and len(run.failures) == 2 * 2  # the broken model, both configs, both reps
    assert len(fake_calls(tmp_path / "build")) == 8  # nothing was skipped
    assert {r["model_name"] for r in run.rows} == {"tiny"} and len(run.rows) == 2 * 2 * 2
    failure = run.failures[0]
    assert failure.returncode == 1 and "failed to load model" in failure.stderr_tail
    assert failure.log_path is not None and "failed to load model" in failure.log_path.read_text()
    assert "broken" in failure.describe() and str(failure.log_path) in run.report()


def test_fail_fast_stops_at_the_first_failure_and_keeps_earlier_rows(
    tmp_path: Path, tiny_model: Path, not_gguf: Path
):
    write_fake_llama_bench(tmp_path / "build")
    with pytest.raises(BenchmarkRunError) as err:
        _run(tmp_path, spec=_spec_file(tmp_path, tiny_model, not_gguf), fail_fast=True)
    assert len(fake_calls(tmp_path / "build")) == 3  # tiny ours, tiny stock, broken ours: stop
    message = str(err.value)
    assert "fail_fast" in message and "failed to load model" in message and "broken" in message
    assert len(err.value.run.rows) == 4 and len(load_results(err.value.run.results_path)) == 4


def test_output_that_is_not_json_is_a_failure(tmp_path: Path, tiny_model: Path):
    write_fake_llama_bench(tmp_path / "build", garbage=True)
    run = _run(tmp_path, model=tiny_model, threads=1, n_prompt=8, n_gen=0, reps=1, compare="ours")
    (failure,) = run.failures
    assert failure.returncode == 0 and "not valid JSON" in failure.message
    assert not run.results_path.exists()  # no rows, no file


def test_missing_model_file_and_engine_fail_before_anything_runs(tmp_path: Path):
    write_fake_llama_bench(tmp_path / "build")
    with pytest.raises(BenchSpecError, match="does not exist"):
        _run(tmp_path, model=tmp_path / "nope.gguf")
    assert fake_calls(tmp_path / "build") == []
    from bitnet.errors import RuntimeConfigurationError

    with pytest.raises(RuntimeConfigurationError, match="llama-bench not found"):
        run_bench(build_dir=tmp_path / "empty", model=tmp_path / "nope.gguf", progress=False)


def test_synthetic_models_are_made_once_and_remade_when_their_shape_changed(tmp_path: Path):
    from benchhelpers import write_bitnet_gguf

    from bitnet.bench.sweep import prepare_model
    from bitnet.models.synthetic import SIZES

    request = ModelRequest(size="tiny")
    path = request.path(tmp_path)
    path.parent.mkdir(parents=True)
    write_bitnet_gguf(path)  # a 1-layer file where the tiny model goes: made by an older generator
    assert prepare_model(request, tmp_path) == path
    assert inspect_model(path).n_layer == SIZES["tiny"].n_layer
    stamp = path.stat().st_mtime_ns
    assert prepare_model(request, tmp_path) == path and path.stat().st_mtime_ns == stamp  # reused


# ---------------------------------------------------------------------------------------- the real engine


@pytest.mark.engine
def test_pipeline_end_to_end_on_the_tiny_model(
    engine_bin_dir: Path, tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
):
    import matplotlib.image

    from bitnet.bench.plots import make_figures
    from bitnet.models.synthetic import SIZES

    monkeypatch.setattr(
        "bitnet.bench.roofline.default_buffer_bytes", lambda: 64 << 20
    )  # plumbing, not numbers
    monkeypatch.setattr("bitnet.bench.roofline.llc_bytes", lambda: 1 << 10)  # let the tiny model count as big
    run = run_bench(
        build_dir=engine_bin_dir.parent,
        model=tiny_model,
        threads="1,2",
        n_prompt=16,
        n_gen=4,
        reps=1,
        compare="stock",
        results_dir=tmp_path / "results",
        plots_dir=tmp_path / "plots",
        progress=False,
    )
    assert run.ok, run.report()
    df = load_results(tmp_path / "results")
    rows = df[df["kind"] == "llama-bench"]
    assert len(rows) == 2 * 2 * 2  # threads x configs x tests
    assert set(rows["test"]) == {"pp16", "tg4"} and set(rows["n_threads"]) == {1, 2}
    assert (rows["avg_ts"] > 0).all() and rows["samples_ts"].map(len).eq(1).all()
    # the model's shape comes from its GGUF; its bytes match what llama-bench itself reports (tied head)
    shape = SIZES["tiny"]
    assert (rows["n_layer"] == shape.n_layer).all() and (rows["n_embd"] == shape.n_embd).all()
    assert (rows["bytes_per_token"] == rows["model_size"]).all()
    assert set(rows["cpu_variant"]) <= {p.name[12:-3] for p in engine_bin_dir.glob("libggml-cpu-*.so")}
    assert rows["run_id"].nunique() == 1 and rows["repo_commit"].notna().all()  # the recorder's header
    tg = rows[rows["test"] == "tg4"]
    assert (tg["roofline_frac"] > 0).all() and rows[rows["test"] == "pp16"]["roofline_frac"].isna().all()
    assert "vs stock" in run.table and "tg4" in run.table

    names = {p.name for p in run.plots}
    assert {"threads.png", "threads.svg", "speedup.png", "roofline.png", "roofline.svg"} <= names
    for path in run.plots:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            width, height = struct.unpack(">II", path.read_bytes()[16:24])
            assert width > 100 and height > 100 and matplotlib.image.imread(path).ndim == 3
        else:
            assert ET.parse(path).getroot().tag.endswith("svg")
    # the threads plot shows one line per config, through the stored medians
    ax_pp, ax_tg = make_figures(df)["threads"].axes
    for ax, test in ((ax_pp, "pp16"), (ax_tg, "tg4")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"ours", "stock"}
        for config, line in lines.items():
            want = rows[(rows["test"] == test) & (rows["config"] == config)].sort_values("n_threads")
            assert list(line.get_xdata()) == [1, 2]
            assert list(line.get_ydata()) == pytest.approx(list(want["avg_ts"]))


@pytest.mark.engine
def test_real_engine_failure_is_reported_and_the_sweep_continues(
    engine_bin_dir: Path, tmp_path: Path, tiny_model: Path, not_gguf: Path
):
    spec = _spec_file(tmp_path, not_gguf, tiny_model, reps=1)
    common = dict(build_dir=engine_bin_dir.parent, results_dir=tmp_path / "r", plots_dir=None, progress=False)
    run = run_bench(spec=spec, roofline=False, **common)
    assert len(run.failures) == 2 and all(f.returncode == 1 for f in run.failures)
    assert all("failed to load model" in f.stderr_tail for f in run.failures)
    assert {r["model_name"] for r in run.rows} == {"tiny"} and len(run.rows) == 4
    with pytest.raises(BenchmarkRunError, match="failed to load model"):
        run_bench(spec=spec, roofline=False, fail_fast=True, **common)


def test_default_model_is_a_converted_model_else_the_2b_shape_never_tiny(tmp_path: Path, tiny_model: Path):
    import shutil

    from bitnet.bench.spec import TINY_MODEL
    from bitnet.bench.sweep import default_model
    from bitnet.models.installed import ModelLock, write_lock

    request, note = default_model(tmp_path)
    assert request == DEFAULT_MODEL and request.size == "2B" and request != TINY_MODEL
    assert "2B4T" in note and "--size tiny" in note
    synthetic = tmp_path / "tiny"  # what `invoke setup --model tiny` leaves: still not a real model
    synthetic.mkdir()
    shutil.copy(tiny_model, synthetic / "ggml-model-tq2_0.gguf")
    write_lock(synthetic, ModelLock(name="tiny", source="synthetic"))
    assert default_model(tmp_path)[0] == DEFAULT_MODEL
    real = tmp_path / "2B"
    real.mkdir()
    shutil.copy(tiny_model, real / "ggml-model-tq2_0.gguf")
    write_lock(real, ModelLock(name="2B", source="hub", repo="microsoft/bitnet-b1.58-2B-4T"))
    request, note = default_model(tmp_path)
    assert request.file == real / "ggml-model-tq2_0.gguf" and str(real) in note


def test_rows_record_the_load_average_and_say_when_they_are_unreliable(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
):
    loads = iter([0.5, 0.7, 9.0, 9.5])  # quiet around the first run, busy around the second
    monkeypatch.setattr("bitnet.bench.sweep.load_average", lambda: next(loads))
    monkeypatch.setattr("bitnet.bench.sweep.own_busy_load", lambda: 0.0)  # no busy loop of ours, ever
    monkeypatch.setattr("bitnet.bench.sweep.detect_cpu", lambda: CpuInfo("x86_64", "Fake CPU", 2, ("avx2",)))
    write_fake_llama_bench(tmp_path / "build")
    run = _run(tmp_path, model=tiny_model, threads=1, n_prompt=0, n_gen=4, reps=1, compare="stock")
    stored = load_results(run.results_path)
    assert list(stored["load_avg_1m"]) == [0.7, 9.5] and list(stored["unreliable"]) == [False, True]
    assert stored["spread"].isna().all()  # -r 1: llama-bench took one sample
    assert "!L" in run.table and "load average (9.50 at worst)" in run.report()


def test_bench_never_deletes_the_serving_plot(tmp_path: Path, tiny_model: Path):
    from bitnet.bench.plots import render_plots
    from bitnet.bench.results import ResultsWriter

    plots = tmp_path / "bench" / "plots"
    serving = tmp_path / "bench" / "results" / "20260101-000000-serving-s1.jsonl"
    row = {"kind": "serving", "run_id": "s1", "concurrency": 1, "tokens_per_s": 5.0}
    ResultsWriter(serving).append([row])
    render_plots(serving, plots, names=["serving"], owner="serve-bench")  # what `invoke serve-bench` draws
    before = (plots / "serving.png").read_bytes()
    write_fake_llama_bench(tmp_path / "build")
    run = _run(tmp_path, model=tiny_model, threads=1, n_prompt=8, n_gen=4, reps=1, compare="stock")
    assert {p.name for p in run.plots} == {f"{n}.{e}" for n in ("threads", "speedup") for e in ("png", "svg")}
    assert (plots / "serving.png").read_bytes() == before and (plots / "serving.svg").exists()
