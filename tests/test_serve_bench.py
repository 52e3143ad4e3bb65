"""The serving benchmark (bitnet.bench.serving): real llama-server on the tiny model, real `openai` clients,
rows stored and read back, the serving plot drawn from them, failures counted instead of raised.

Plumbing only: no test asserts a time, only that measured values are consistent with each other.
"""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from servertools import pid_gone

from bitnet import BitNetRuntime
from bitnet.bench import serving as serve_bench_module
from bitnet.bench.results import load_results
from bitnet.bench.serving import format_serving_table, load_serving_run, run_serving_bench
from bitnet.errors import BenchmarkError, BenchSpecError
from bitnet.runtime.server import ServerHandle

pytest_plugins = ["server_fixtures"]  # fixtures: tiny_model, runtime, no_leftover_processes
pytestmark = pytest.mark.usefixtures("no_leftover_processes")

SERVING_COLUMNS = {
    "kind", "run_id", "date", "config", "kernels", "kernels_reported", "cpu_variant",
    "repo_commit", "engine_pin", "cpu_model", "model_name", "weight_format", "n_threads", "concurrency",
    "parallel", "ctx_size", "n_requests", "requests_ok", "errors", "error_messages", "max_tokens",
    "n_prompt", "completion_tokens", "wall_s", "tokens_per_s", "latency_p50_s", "latency_p95_s",
    "samples_latency_s", "peak_rss_bytes", "rss_ready_bytes",
}  # fmt: skip


def _bench(tiny_model: Path, runtime: BitNetRuntime, results: Path, **kwargs: Any) -> list[dict[str, Any]]:
    kwargs = {"concurrency": (1, 2), "requests_per_client": 2, "max_tokens": 8, "threads": 1, **kwargs}
    return run_serving_bench(tiny_model, runtime=runtime, results_dir=results, timeout=120, **kwargs)


@pytest.mark.engine
def test_rows_are_stored_sane_and_plotted(tiny_model: Path, runtime: BitNetRuntime, tmp_path: Path) -> None:
    import matplotlib.image

    from bitnet.bench.plots import make_figures, render_plots

    returned = _bench(tiny_model, runtime, tmp_path / "results")
    df = load_results(tmp_path / "results")
    assert list(df["kind"]) == ["serving", "serving"] and set(df.columns) >= SERVING_COLUMNS
    assert df["run_id"].nunique() == 1 and list(df["tokens_per_s"]) == [r["tokens_per_s"] for r in returned]
    assert list(df["concurrency"]) == [1, 2] and list(df["n_requests"]) == [2, 4]
    assert list(df["parallel"]) == [1, 2]  # parallel=None: a slot per client
    assert (df["errors"] == 0).all() and (df["requests_ok"] == df["n_requests"]).all()
    assert df["error_messages"].map(len).eq(0).all() and df["server_error"].isna().all()
    # every request generated exactly max_tokens (ignore_eos) from the same prompt
    assert (df["completion_tokens"] == df["n_requests"] * 8).all() and (df["n_prompt"] > 0).all()
    assert (df["tokens_per_s"] > 0).all()
    assert df["tokens_per_s"].to_numpy() == pytest.approx((df["completion_tokens"] / df["wall_s"]).to_numpy())
    assert ((df["latency_p95_s"] >= df["latency_p50_s"]) & (df["latency_p50_s"] > 0)).all()
    assert list(df["samples_latency_s"].map(len)) == [2, 4]
    assert all(max(s) <= w for s, w in zip(df["samples_latency_s"], df["wall_s"], strict=True))
    assert (df["peak_rss_bytes"] >= df["rss_ready_bytes"]).all() and (df["rss_ready_bytes"] > 0).all()
    # identity: the server ran what it was asked, on a CPU library of this build, with 1 thread
    assert (df["n_threads"] == 1).all() and (df["model_name"] == tiny_model.stem).all()
    built = {p.name[len("libggml-cpu-") : -3] for p in runtime.build_dir.glob("bin/libggml-cpu-*.so")}
    assert set(df["cpu_variant"]) <= built
    assert set(df["kernels_reported"]) == {"on"} and set(df["config"]) == {"ours"}

    table = format_serving_table(load_serving_run(tmp_path / "results", returned[0]["run_id"]))
    lines = table.splitlines()
    assert "clients" in table and "p95 s" in table
    # header, titles, 2 rows; then only notes (a busy machine adds the "!L unreliable" one)
    assert len(lines) >= 4 and all(line.startswith(("!L", "vs stock")) for line in lines[4:]), table

    written = render_plots(tmp_path / "results", tmp_path / "plots")
    png = tmp_path / "plots" / "serving.png"
    assert png in written and (tmp_path / "plots" / "serving.svg") in written
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and min(struct.unpack(">II", data[16:24])) > 100
    assert matplotlib.image.imread(png).ndim == 3
    ax_tp, ax_lat = make_figures(df)["serving"].axes
    (line,) = ax_tp.get_lines()
    assert list(line.get_xdata()) == [1, 2]
    assert list(line.get_ydata()) == pytest.approx(list(df["tokens_per_s"]))
    lat = {line.get_label(): list(line.get_ydata()) for line in ax_lat.get_lines()}
    assert lat == {"all p50": pytest.approx(list(df["latency_p50_s"])),
                   "all p95": pytest.approx(list(df["latency_p95_s"]))}  # fmt: skip


@pytest.mark.engine
def test_a_server_killed_during_a_level_is_recorded_and_the_next_level_runs(
    tiny_model: Path, runtime: BitNetRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measure = serve_bench_module._measure_level
    killed: list[int] = []

    async def kill_at_one_client(handle: ServerHandle, **kwargs: Any) -> Any:
        if kwargs["concurrency"] == 1:  # the server dies after it said it was ready, before any answer
            os.kill(handle.pid, signal.SIGKILL)
            assert pid_gone(handle.pid)
            killed.append(handle.pid)
        return await measure(handle, **kwargs)

    monkeypatch.setattr(serve_bench_module, "_measure_level", kill_at_one_client)
    rows = _bench(tiny_model, runtime, tmp_path / "results")  # does not raise: level 2 was answered
    assert len(killed) == 1
    dead, alive = load_results(tmp_path / "results").to_dict("records")
    assert (dead["errors"], dead["requests_ok"], dead["n_requests"]) == (2, 0, 2)
    assert pd.isna(dead["tokens_per_s"]) and pd.isna(dead["latency_p50_s"])  # no answer: no measurement
    assert any("Connection" in m for m in dead["error_messages"]), dead["error_messages"]
    assert "SIGKILL" in dead["server_error"] and Path(dead["server_log"]).is_file()
    assert pd.isna(dead["peak_rss_bytes"]) and pd.isna(alive["server_error"])
    assert alive["errors"] == 0 and alive["tokens_per_s"] > 0 and [r["errors"] for r in rows] == [2, 0]
    Path(dead["server_log"]).unlink()


@pytest.mark.engine
def test_requests_the_server_refuses_are_counted_and_all_failing_raises(
    tiny_model: Path, runtime: BitNetRuntime, tmp_path: Path
) -> None:
    # a prompt of ~500 tokens against one 256-token slot: llama-server answers 400 to every request
    with pytest.raises(BenchmarkError, match="every request failed") as info:
        _bench(tiny_model, runtime, tmp_path / "results", concurrency=1, prompt="hello there " * 250,
               ctx_size=256)  # fmt: skip
    message = str(info.value)
    assert "2 of 2" in message and "exceeds the available context size" in message
    assert "ctx_size" in message and str(tmp_path / "results") in message
    (row,) = load_results(tmp_path / "results").to_dict("records")
    assert (row["errors"], row["requests_ok"], row["ctx_size"]) == (2, 0, 256)
    assert len(row["error_messages"]) == 1 and "400" in row["error_messages"][0]
    assert pd.isna(row["server_error"])  # the server itself was fine


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": "1,x"}, "comma-separated"),
        ({"concurrency": 65}, "1 to 64"),
        ({"requests_per_client": 0}, "requests_per_client"),
        ({"max_tokens": True}, "max_tokens"),
        ({"kernels": "fast"}, "'ours'"),
        ({"compare": "stock,avx"}, "'avx'"),
        ({"prompt": " "}, "prompt"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_arguments_are_refused_before_any_server_starts(
    kwargs: dict[str, Any], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve_bench_module, "start_server", _refuse)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(BenchSpecError, match=needle):
        run_serving_bench(model, results_dir=tmp_path, **kwargs)
    with pytest.raises(BenchSpecError, match="does not exist"):
        run_serving_bench(tmp_path / "missing.gguf", results_dir=tmp_path)
    assert not list(tmp_path.glob("*.jsonl"))


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a server was started")


def test_table_shows_configs_and_the_ratio_to_stock_only_when_both_ran() -> None:
    def row(config: str, c: int, tps: float | None) -> dict[str, Any]:
        return {"kind": "serving", "config": config, "concurrency": c, "parallel": c, "n_requests": 4 * c,
                "tokens_per_s": tps, "latency_p50_s": 0.5, "latency_p95_s": 0.75, "errors": 0,
                "peak_rss_bytes": 64 << 20, "model_name": "tiny", "max_tokens": 32, "n_threads": 2,
                "cpu_model": "Fake CPU"}  # fmt: skip

    both = format_serving_table(pd.DataFrame([row("ours", 1, 30.0), row("stock", 1, 20.0),
                                              row("ours", 2, 50.0), row("stock", 2, None)]))  # fmt: skip
    lines = both.splitlines()
    assert lines[0] == "tiny · 32 tokens/request · 2 server thread(s) · Fake CPU"
    assert "vs stock" in lines[1] and "config" in lines[1]
    assert lines[2].split()[-1] == "1.50x" and lines[3].split()[-1] == "1.00x"
    assert lines[4].split()[-1] == "-" and " - " in lines[5]  # stock at 2 clients has no throughput
    alone = format_serving_table(pd.DataFrame([row("ours", 1, 30.0)]))
    assert "vs stock" not in alone and "config" not in alone and "30.0" in alone and "0.750" in alone


def test_table_flags_levels_measured_on_a_busy_machine() -> None:
    def row(c: int, load: float, cores: int) -> dict[str, Any]:
        unreliable = load > cores
        return {"kind": "serving", "config": "ours", "concurrency": c, "parallel": c, "n_requests": 4 * c,
                "tokens_per_s": 10.0 * c, "latency_p50_s": 0.5, "latency_p95_s": 0.75, "errors": 0,
                "model_name": "tiny", "max_tokens": 32, "n_threads": 2, "cpu_model": "Fake CPU",
                "cpu_cores": cores, "load_avg_1m": load, "unreliable": unreliable}  # fmt: skip

    table = format_serving_table(pd.DataFrame([row(1, 0.5, 2), row(2, 3.25, 2)]))
    lines = table.splitlines()
    assert lines[1].split()[0] == "!" and lines[3].startswith("!L") and not lines[2].startswith("!")
    assert "!L unreliable: the 1-minute load average (3.25 at worst) exceeded" in table
    assert "!" not in format_serving_table(pd.DataFrame([row(1, 0.5, 2)]))


def test_serving_spec_file_gives_the_run_arguments_and_bad_ones_are_refused(tmp_path):
    """bench/specs/serve.toml (kind = "serve") is what `invoke serve-bench --spec serve` runs."""
    from bitnet.bench.serving import load_serve_spec
    from bitnet.bench.spec import load_spec

    assert load_serve_spec("serve") == {
        "requests_per_client": 4, "max_tokens": 32, "concurrency": [1, 2, 4, 8], "compare": ["stock"]
    }  # fmt: skip
    with pytest.raises(BenchSpecError, match="serving spec"):
        load_spec("serve")
    with pytest.raises(BenchSpecError, match='kind = "serve"'):
        load_serve_spec("quick")
    bad = tmp_path / "s.toml"
    for body, message in (
        ('kind = "serve"\nconcurency = [1]\n', "unknown key"),
        ('kind = "serve"\nconcurrency = [0]\n', "concurrency"),
        ('kind = "serve"\ncompare = ["avx2"]\n', "compare"),
        ('kind = "serve"\nmax_tokens = -1\n', "max_tokens"),
    ):
        bad.write_text(body)
        with pytest.raises(BenchSpecError, match=message):
            load_serve_spec(bad)
    bad.unlink()
    with pytest.raises(BenchSpecError, match="cannot read"):
        load_serve_spec(bad)


def test_every_bench_spec_in_the_repo_parses():
    from bitnet.bench.serving import load_serve_spec
    from bitnet.bench.spec import SPEC_DIR, load_spec

    specs = sorted(SPEC_DIR.glob("*.toml"))
    assert {p.stem for p in specs} >= {"quick", "full", "busy", "serve"}
    for path in specs:
        spec = load_serve_spec(path) if 'kind = "serve"' in path.read_text() else load_spec(path)
        assert spec
    assert load_spec("busy").sweeps[0].busy == ("idle", "pinned", "bursty")
