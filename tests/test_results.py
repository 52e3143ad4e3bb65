"""bitnet.bench.results and .roofline: model inspection, atomic row storage, loading, the comparison
table (only what varies, ratio vs the baseline) and the roofline fields. Inputs are built by hand."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from benchhelpers import bench_row, write_bitnet_gguf

from bitnet.bench import roofline
from bitnet.bench.results import (
    ResultsWriter,
    bench_test_name,
    default_baseline,
    format_table,
    inspect_model,
    load_results,
    summarize,
)
from bitnet.bench.roofline import (
    Bandwidth,
    add_roofline,
    llc_bytes,
    mapped_probe_meaningful,
    mapped_read_note,
    probe_bandwidth,
)
from bitnet.errors import BenchmarkError

TQ2_0_BLOCK = 66  # bytes per 256 weights: 64 bytes of 2-bit codes + an fp16 scale (ggml-common.h)

# ---------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("tied", [True, False])
def test_inspect_model_counts_the_head_once_and_skips_an_untied_embedding(tmp_path: Path, tied: bool):
    path = tmp_path / "m.gguf"
    write_bitnet_gguf(path, tied=tied, n_embd=256, n_vocab=512)
    info = inspect_model(path)
    linears = 7 * 256 * TQ2_0_BLOCK  # q k v o gate up down, 256 rows of one block each
    embedding = 512 * 256 * 2  # F16
    norm = 256 * 4
    assert info.model_bytes == linears + norm + embedding * (1 if tied else 2)
    assert (
        info.bytes_per_token == linears + norm + embedding
    )  # the head once; an untied embedding is a lookup
    assert info.head_bytes == embedding
    assert (info.weight_format, info.head_format, info.arch) == ("tq2_0", "f16", "bitnet")
    assert (info.n_layer, info.n_embd, info.n_ff, info.n_vocab, info.n_head) == (1, 256, 256, 512, 4)


def test_inspect_model_refuses_a_file_that_is_not_gguf(tmp_path: Path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"not a gguf at all")
    with pytest.raises(BenchmarkError, match="x.gguf as a GGUF file"):
        inspect_model(path)


def test_names_of_tests_follow_llama_bench():
    assert (
        bench_test_name(512, 0),
        bench_test_name(0, 128),
        bench_test_name(512, 128),
        bench_test_name(0, 32, 1024),
    ) == (
        "pp512",
        "tg128",
        "pp512+tg128",
        "tg32 @ d1024",
    )


# ---------------------------------------------------------------------------------------- storage


def test_writer_creates_then_appends_complete_lines(tmp_path: Path):
    path = tmp_path / "results" / "run.jsonl"
    writer = ResultsWriter(path)
    writer.append([{"a": np.int64(1), "b": float("nan"), "p": Path("/m.gguf"), "s": [np.float32(0.5)]}])
    writer.append([{"a": 2}, {"a": 3, "b": float("inf")}])
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"a": 1, "b": None, "p": "/m.gguf", "s": [0.5]},
        {"a": 2},
        {"a": 3, "b": None},
    ]
    assert writer.count == 3 and list(path.parent.iterdir()) == [path]  # no temporary file left over


def test_writer_leaves_no_partial_file_when_creation_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        ResultsWriter(tmp_path / "run.jsonl").append([{"a": 1}])
    assert list(tmp_path.iterdir()) == []


def test_load_results_reads_a_dir_skips_a_torn_line_and_names_the_source(tmp_path: Path, caplog):
    ResultsWriter(tmp_path / "20260101-a.jsonl").append([bench_row(avg_ts=1.0), bench_row(avg_ts=2.0)])
    second = tmp_path / "20260102-b.jsonl"
    ResultsWriter(second).append([bench_row(avg_ts=3.0)])
    with second.open("a") as fh:
        fh.write('{"kind": "llama-bench", "avg_')  # a run killed in the middle of a write
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        df = load_results(tmp_path)
    assert list(df["avg_ts"]) == [1.0, 2.0, 3.0]
    assert list(df["source"]) == ["20260101-a.jsonl"] * 2 + ["20260102-b.jsonl"]
    assert "20260102-b.jsonl:2" in caplog.text
    assert len(load_results([second])) == 1
    with pytest.raises(BenchmarkError, match="no benchmark results at .*missing.*invoke bench"):
        load_results(tmp_path / "missing")


# ---------------------------------------------------------------------------------------- comparing


def _ab_rows(ours: list[float], stock: list[float], **fields: object) -> list[dict]:
    rows = []
    for rep, (a, b) in enumerate(zip(ours, stock, strict=True)):
        rows.append(bench_row(rep=rep, config="ours", kernels="ours", avg_ts=a, **fields))
        rows.append(bench_row(rep=rep, config="stock", kernels="stock", avg_ts=b, **fields))
    return rows


def test_summary_has_median_spread_and_ratio_vs_stock():
    df = pd.DataFrame(_ab_rows([10.0, 12.0, 11.0], [5.0, 7.0, 6.0]))
    summary = summarize(df)
    assert list(summary["config"]) == ["ours", "stock"]
    ours, stock = summary.iloc[0], summary.iloc[1]
    assert (ours["n"], ours["median_ts"], ours["mean_ts"], ours["sd_ts"]) == (3, 11.0, 11.0, 1.0)
    assert ours["ratio"] == pytest.approx(11.0 / 6.0) and stock["ratio"] == 1.0
    assert summary.attrs["baseline"] == "stock"


def test_with_peers_each_line_says_how_far_ours_is_ahead_of_it():
    rows = _ab_rows([12.0, 12.0], [4.0, 4.0]) + [
        bench_row(rep=r, config="ik", kernels=None, avg_ts=8.0) for r in range(2)
    ]
    summary = summarize(pd.DataFrame(rows))
    over = dict(zip(summary["config"], summary["ours_over"], strict=True))
    assert over == {"ours": 1.0, "stock": 3.0, "ik": 1.5}
    ik_line = next(ln for ln in format_table(pd.DataFrame(rows)).splitlines() if " ik " in f" {ln} ")
    assert ik_line.split()[-2:] == ["2.00x", "1.50x"]  # vs stock, then ours ÷ ik
    assert "ours_over" not in summarize(pd.DataFrame(_ab_rows([12.0], [4.0])))  # no peer: no column


def test_table_shows_only_what_varies_and_says_the_rest_once():
    # steady repetitions: no cell is flagged unreliable (see the reliability tests)
    rows = _ab_rows([10.9, 11.1], [5.0, 5.0], n_threads=1) + _ab_rows([20.9, 21.1], [9.9, 10.1], n_threads=2)
    table = format_table(pd.DataFrame(rows))
    header, columns, *body = table.splitlines()
    assert "model_name=tiny" in header and "cpu_model=Fake CPU" in header
    assert columns.split()[:3] == ["threads", "test", "config"] and "vs stock" in columns
    assert "model_name" not in columns and "cpu_model" not in columns
    assert "2.20x" in body[0] and "1.00x" in body[1]  # 11 / 5 at 1 thread
    assert "2.10x" in body[2]  # 21 / 10 at 2 threads
    assert "ratio = median t/s / median t/s of stock" in table


def test_baseline_can_be_chosen_and_falls_back_with_a_note():
    df = pd.DataFrame(_ab_rows([10.0], [5.0]))
    assert "0.50x" in format_table(df, baseline="ours")
    table = format_table(df, baseline="stock+avx2")
    assert "baseline 'stock+avx2' did not run" in table and "2.00x" in table
    assert default_baseline(["ours", "ours+avx2", "stock+avx2"]) == "stock+avx2"
    assert default_baseline(["ours", "ours+avx2"]) == "ours" and default_baseline([]) is None


def test_single_config_has_no_ratio_and_llama_bench_sd_is_used_for_one_rep():
    df = pd.DataFrame([bench_row(avg_ts=7.0, stddev_ts=0.25), bench_row(avg_ts=3.0, n_prompt=64, n_gen=0)])
    summary = summarize(df)
    assert "ratio" not in summary and list(summary["test"]) == ["tg128", "pp64"]
    assert summary.iloc[0]["sd_ts"] == 0.25
    assert "vs " not in format_table(df)
    assert format_table(pd.DataFrame()) == "(no llama-bench results)"


# ---------------------------------------------------------------------------------------- roofline


def test_roofline_fields_on_decode_rows_only(monkeypatch: pytest.MonkeyPatch):
    # a 32 MiB last-level cache, whatever this host's sysfs says (a Sapphire Rapids VM reported 480 MiB,
    # under which a 1 GB-per-token model is "cache-sized" and gets no roofline)
    monkeypatch.setattr(roofline, "llc_bytes", lambda *a, **k: 32 * 1024**2)
    bw = Bandwidth(gbs=20.0, samples_gbs=(19.0, 20.0, 21.0), n_threads=2, buffer_bytes=1 << 28)
    tg = {"n_prompt": 0, "n_gen": 128, "avg_ts": 10.0, "bytes_per_token": 1_000_000_000}
    add_roofline(tg, bw)
    assert (tg["bandwidth_gbs"], tg["roofline_ts"], tg["roofline_frac"]) == (20.0, 20.0, 0.5)
    pp = {"n_prompt": 512, "n_gen": 0, "avg_ts": 30.0, "bytes_per_token": 1_000_000_000}
    add_roofline(pp, bw)
    assert pp["roofline_frac"] is None and pp["roofline_ts"] is None
    unknown = {"n_prompt": 0, "n_gen": 128, "avg_ts": 10.0, "bytes_per_token": None}
    add_roofline(unknown, bw)
    assert unknown["roofline_frac"] is None
    in_cache = {"n_prompt": 0, "n_gen": 128, "avg_ts": 900.0, "bytes_per_token": 3_500_000}  # tiny model
    add_roofline(in_cache, bw)
    assert in_cache["roofline_frac"] is None  # cache-resident: no memory-bandwidth bound to compare with
    assert bw.as_row()["kind"] == "bandwidth" and bw.as_row()["samples_gbs"] == [19.0, 20.0, 21.0]


def test_bandwidth_probe_reports_every_pass():
    bw = probe_bandwidth(2, buffer_bytes=4 << 20, passes=3)
    assert bw.n_threads == 2 and len(bw.samples_gbs) == 3 and bw.buffer_bytes == 4 << 20
    assert bw.gbs == sorted(bw.samples_gbs)[1] and bw.gbs > 0
    with pytest.raises(ValueError, match="positive"):
        probe_bandwidth(0)


def test_bandwidth_probe_reads_a_files_mapped_pages(tmp_path: Path):
    model = tmp_path / "m.gguf"
    model.write_bytes(np.arange(1 << 20, dtype=np.uint64).tobytes())  # 8 MiB
    bw = probe_bandwidth(2, path=model, passes=2)
    assert bw.mapped_file == str(model) and bw.buffer_bytes == 8 << 20
    assert len(bw.samples_gbs) == 2 and bw.gbs > 0
    assert bw.as_row()["mapped_file"] == str(model)
    assert probe_bandwidth(1, path=model, buffer_bytes=1 << 20, passes=1).buffer_bytes == 1 << 20
    with pytest.raises(ValueError, match="cannot probe the mapped pages of .*missing.gguf"):
        probe_bandwidth(2, path=tmp_path / "missing.gguf")
    with pytest.raises(ValueError, match="cannot probe the mapped pages of .*Is a directory"):
        probe_bandwidth(1, path=tmp_path)  # opened and mapped before any reader starts
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="too small to probe"):
        probe_bandwidth(2, path=tmp_path / "empty.gguf")


def test_mapped_probe_only_for_files_well_past_the_cache(tmp_path: Path, monkeypatch):
    small, big = tmp_path / "small.gguf", tmp_path / "big.gguf"
    small.write_bytes(bytes(4096))
    big.write_bytes(bytes(8192))
    monkeypatch.setattr("bitnet.bench.roofline.llc_bytes", lambda: 3000)  # meaningful from 2 x 3000 bytes
    assert not mapped_probe_meaningful(small) and mapped_probe_meaningful(big)
    assert mapped_probe_meaningful(tmp_path / "missing.gguf")  # the probe itself reports it


def test_mapped_pages_slower_than_fresh_memory_are_a_warning():
    fresh = Bandwidth(27.0, (27.0,), 2, 1 << 30)
    slow = Bandwidth(17.5, (17.5,), 2, 1 << 30, mapped_file="/m/ggml-model-tq2_0.gguf")
    note = mapped_read_note(fresh, slow)
    assert note is not None
    assert note.startswith("ggml-model-tq2_0.gguf's cached pages read at 17.5 GB/s, 65 % of fresh memory")
    assert "27.0 GB/s, 2 thread(s)" in note and "--load-mode none" in note
    nearly = Bandwidth(25.0, (25.0,), 2, 1 << 30, mapped_file="/m/x.gguf")  # 93 % of fresh memory
    assert mapped_read_note(fresh, nearly) is None


def test_llc_size_from_sysfs(tmp_path: Path):
    for index, size in (("index0", "32K"), ("index2", "1024K"), ("index3", "32768K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    assert llc_bytes(tmp_path) == 32 * 1024 * 1024
    assert llc_bytes(tmp_path / "none") is None


def test_one_measurement_of_one_sample_has_no_spread():
    df = pd.DataFrame([bench_row(avg_ts=7.0, stddev_ts=0.0, samples_ts=[7.0])])
    assert pd.isna(summarize(df).iloc[0]["sd_ts"])  # llama-bench -r 1 reports 0, which says nothing
    assert "7.00 ± -" in format_table(df)
    df = pd.DataFrame([bench_row(avg_ts=7.0, stddev_ts=0.5, samples_ts=[6.5, 7.5])])
    assert summarize(df).iloc[0]["sd_ts"] == 0.5


# ---------------------------------------------------------------------------------------- reliability


def test_a_cell_is_unreliable_when_the_machine_was_busy_or_its_repetitions_disagree():
    from bitnet.bench.results import LOAD_PER_CORE_LIMIT, SPREAD_LIMIT, reliability

    assert (LOAD_PER_CORE_LIMIT, SPREAD_LIMIT) == (1.0, 0.10)
    quiet = {"cpu_cores": 2, "load_avg_1m": 1.9}
    rows = (
        _ab_rows([10.0, 10.5, 10.2], [5.0, 5.1, 5.0], n_threads=1, **quiet)  # steady, quiet: reliable
        + _ab_rows([2.0, 20.0, 10.0], [5.0, 5.1, 5.0], n_threads=2, **quiet)  # ours spreads 180%
    )
    busy = {"n_threads": 4, "cpu_cores": 2}  # ours ran while the load average was 3.5 on 2 cores
    rows.append(bench_row(config="ours", kernels="ours", avg_ts=9.0, load_avg_1m=3.5, **busy))
    rows.append(bench_row(config="stock", kernels="stock", avg_ts=4.0, load_avg_1m=0.5, **busy))
    summary = summarize(pd.DataFrame(rows))
    flags = {(r.n_threads, r.config): r.unreliable_rules for r in summary.itertuples()}
    assert flags == {(1, "ours"): "", (1, "stock"): "", (2, "ours"): "S", (2, "stock"): "", (4, "ours"): "L",
                     (4, "stock"): ""}  # fmt: skip
    assert list(summary["unreliable"]) == [False, False, True, False, True, False]
    assert summary.loc[2, "spread"] == pytest.approx(18.0 / 10.0)
    table = format_table(pd.DataFrame(rows))
    lines = table.splitlines()
    assert lines[1].split()[0] == "!"  # the marker column comes first
    assert lines[4].startswith("!S") and lines[6].startswith("!L") and not lines[2].startswith("!")
    assert "!S unreliable: its repetitions spread (max - min) / median = 180% at worst, above 10%" in table
    assert "!L unreliable: the 1-minute load average (3.50 at worst) exceeded" in table
    assert reliability(None, None, None) == "" and reliability(2.5, 2, 0.5) == "LS"


def test_a_steady_quiet_table_has_no_marker_column_and_one_measurement_uses_its_own_samples():
    steady = pd.DataFrame(_ab_rows([10.0, 10.1], [5.0, 5.0], cpu_cores=4, load_avg_1m=1.0))
    assert "!" not in format_table(steady) and not summarize(steady)["unreliable"].any()
    one = pd.DataFrame([bench_row(avg_ts=2431.76, stddev_ts=3548.76, samples_ts=[100.0, 8000.0, 2431.76])])
    (cell,) = summarize(one).itertuples()
    assert cell.unreliable and cell.unreliable_rules == "S"
    assert "!S" in format_table(one) and "2431.76 ± 3548.76" in format_table(one)


def test_doctor_memory_check_measures_and_says_when_the_model_pages_are_slow(tmp_path: Path, monkeypatch):
    from bitnet.doctor import format_doctor, memory_report

    model = tmp_path / "m.gguf"
    model.write_bytes(np.arange(1 << 20, dtype=np.uint64).tobytes())  # 8 MiB
    monkeypatch.setattr("bitnet.bench.roofline.llc_bytes", lambda: 1 << 20)  # 8 MiB counts as well past it
    monkeypatch.setattr("bitnet.bench.roofline.default_buffer_bytes", lambda: 16 << 20)
    real = memory_report(model, n_threads=1)  # both probes, for real
    assert real["threads"] == 1 and real["fresh_gbs"] > 0 and real["model_pages_gbs"] > 0
    assert memory_report(None, n_threads=1)["model_pages_gbs"] is None  # no model: fresh memory only

    base = {"cpu": {"model": "x", "arch": "x86_64", "features": []}, "cpu_count": 2, "build_dir": "build",
            "build_info": {}, "binaries": {}, "engine": {}}  # fmt: skip
    slow = Bandwidth(17.3, (17.3,), 2, 1 << 30, mapped_file=str(model))
    note = mapped_read_note(Bandwidth(29.6, (29.6,), 2, 1 << 30), slow)
    text = format_doctor(
        {**base, "memory": {"threads": 2, "fresh_gbs": 29.6, "model_pages_gbs": 17.3, "note": note}}
    )
    assert "memory:   29.6 GB/s read, fresh memory, 2 thread(s); 17.3 GB/s through the model's" in text
    assert "cached pages (58 %)" in text
    assert "warning:  m.gguf's cached pages read at 17.3 GB/s" in text and "--load-mode none" in text
    fine = format_doctor(
        {**base, "memory": {"threads": 2, "fresh_gbs": 29.6, "model_pages_gbs": 28.0, "note": None}}
    )
    assert "(95 %)" in fine and "warning" not in fine
    assert "memory" not in format_doctor(base)
