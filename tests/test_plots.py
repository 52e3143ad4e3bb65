"""bitnet.bench.plots: every figure is drawn from stored rows, has the expected series and values, and is
written as valid PNG and SVG. Rows are built by hand with known medians."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from benchhelpers import bench_row
from matplotlib.collections import LineCollection, PathCollection

from bitnet.bench.plots import (
    DPI,
    MAX_WIDTH_PX,
    PALETTE,
    PLOT_NAMES,
    make_figures,
    render_plots,
    select_runs,
    speedups,
)
from bitnet.bench.results import ResultsWriter, load_results, summarize

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
ISSUE5 = RESULTS / "20261126-172256-issue5-8d743e5a.jsonl"


def _legend_labels(fig) -> list[str]:
    (legend,) = fig.legends
    return [text.get_text() for text in legend.get_texts()]


def _pixels(fig) -> tuple[float, float]:
    width, height = fig.get_size_inches()
    return width * DPI, height * DPI


# Three repetitions each; medians are the middle values.
TS = {
    ("ours", 1, "pp64"): [40.0, 44.0, 42.0],
    ("stock", 1, "pp64"): [20.0, 21.0, 22.0],
    ("ours", 2, "pp64"): [80.0, 84.0, 82.0],
    ("stock", 2, "pp64"): [40.0, 41.0, 42.0],
    ("ours", 1, "tg16"): [9.0, 10.0, 30.0],
    ("stock", 1, "tg16"): [5.0, 5.0, 5.0],
    ("ours", 2, "tg16"): [15.0, 16.0, 17.0],
    ("stock", 2, "tg16"): [8.0, 8.0, 8.0],
}


def _threads_rows() -> list[dict]:
    rows = []
    for (config, threads, test), values in TS.items():
        p, g = (64, 0) if test == "pp64" else (0, 16)
        for rep, ts in enumerate(values):
            roof = {"roofline_frac": ts / 20.0, "roofline_ts": 20.0} if g else {}
            fields = {"config": config, "kernels": config, "n_threads": threads, "rep": rep, "avg_ts": ts}
            rows.append(bench_row(n_prompt=p, n_gen=g, **fields, **roof))
    return rows


def test_threads_plot_has_a_line_per_config_through_the_medians():
    fig = make_figures(pd.DataFrame(_threads_rows()))["threads"]
    ax_pp, ax_tg = fig.axes
    assert ax_pp.get_title().startswith("pp64") and ax_tg.get_title().startswith("tg16")
    for ax, test in ((ax_pp, "pp64"), (ax_tg, "tg16")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"ours", "stock"}
        for config, line in lines.items():
            assert list(line.get_xdata()) == [1, 2]
            assert list(line.get_ydata()) == [sorted(TS[(config, n, test)])[1] for n in (1, 2)]
    # the spread bar of ours at 1 thread, tg16, spans the slowest and the fastest repetition
    segments = [
        seg for coll in ax_tg.collections if isinstance(coll, LineCollection) for seg in coll.get_segments()
    ]
    assert any(seg[0][0] == 1 and {seg[0][1], seg[1][1]} == {9.0, 30.0} for seg in segments)
    # ... and the cells whose repetitions spread over 10% are drawn hollow: ours (9, 10, 30), (15, 16, 17)
    (hollow,) = [coll for coll in ax_tg.collections if isinstance(coll, PathCollection)]
    assert [list(xy) for xy in hollow.get_offsets()] == [[1, 10.0], [2, 16.0]]
    assert not [coll for coll in ax_pp.collections if isinstance(coll, PathCollection)]
    assert _legend_labels(fig) == ["ours", "stock", "hollow/hatched: unreliable (see table)"]


def test_speedup_is_ours_over_stock_per_format():
    rows = _threads_rows() + [
        {**row, "model_name": "tiny-tq1_0-f16", "weight_format": "tq1_0", "avg_ts": row["avg_ts"] / 2}
        for row in _threads_rows()
        if row["config"] == "ours"
    ]
    rows += [
        {**row, "model_name": "tiny-tq1_0-f16", "weight_format": "tq1_0"}
        for row in _threads_rows()
        if row["config"] == "stock"
    ]
    data = speedups(pd.DataFrame(rows))
    got = {
        (c.split("\n")[0], c.split("\n")[-1], t): s
        for c, t, s in data[["category", "test", "speedup"]].values
    }
    assert got[("tq2_0 / f16 head", "t=1", "pp64")] == pytest.approx(42.0 / 21.0)
    assert got[("tq1_0 / f16 head", "t=2", "tg16")] == pytest.approx((16.0 / 2) / 8.0)
    ax = make_figures(pd.DataFrame(rows))["speedup"].axes[0]
    assert [c.get_label() for c in ax.containers] == ["pp64", "tg16"]
    heights = [bar.get_height() for bar in ax.containers[1]]
    assert heights == pytest.approx(list(data[data["test"] == "tg16"]["speedup"]))


def test_no_speedup_plot_without_stock_rows():
    rows = [row for row in _threads_rows() if row["config"] == "ours"]
    assert speedups(pd.DataFrame(rows)).empty
    assert "speedup" not in make_figures(pd.DataFrame(rows)) and "threads" in make_figures(pd.DataFrame(rows))


def test_roofline_bars_are_median_percent_of_the_bound():
    ax = make_figures(pd.DataFrame(_threads_rows()))["roofline"].axes[0]
    heights = [bar.get_height() for bar in ax.containers[0]]
    labels = [tick.get_text() for tick in ax.get_xticklabels()]
    want = {
        f"{c}\nt={n}": 100 * sorted(TS[(c, n, "tg16")])[1] / 20.0 for c in ("ours", "stock") for n in (1, 2)
    }
    assert dict(zip(labels, heights, strict=True)) == pytest.approx(want)


def test_model_size_plot_needs_two_sizes_and_uses_parameters():
    small = [bench_row(model_name="125M", model_n_params=125_000_000, avg_ts=50.0)]
    assert "model_size" not in make_figures(pd.DataFrame(small))
    big = [bench_row(model_name="2B", model_n_params=2_400_000_000, avg_ts=10.0)]
    ax = make_figures(pd.DataFrame(small + big))["model_size"].axes[0]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == pytest.approx([0.125, 2.4]) and list(line.get_ydata()) == [50.0, 10.0]
    assert ax.get_xscale() == "log"


def test_serving_plot_from_serving_rows():
    rows = [
        {"kind": "serving", "config": "ours", "concurrency": c, "tokens_per_s": tps, "latency_p50_s": p50,
         "latency_p95_s": p95}
        for c, tps, p50, p95 in ((1, 10.0, 1.0, 1.5), (2, 18.0, 1.2, 2.0), (4, 30.0, 1.9, 3.5))
    ]  # fmt: skip
    figures = make_figures(pd.DataFrame(rows))
    assert set(figures) == {"serving"}
    ax_tp, ax_lat = figures["serving"].axes
    (line,) = ax_tp.get_lines()
    assert list(line.get_xdata()) == [1, 2, 4] and list(line.get_ydata()) == [10.0, 18.0, 30.0]
    assert sorted(line.get_label() for line in ax_lat.get_lines()) == ["all p50", "all p95"]


def test_render_writes_valid_png_and_svg_from_stored_rows_and_drops_only_its_own_stale_ones(tmp_path: Path):
    results = tmp_path / "results"
    serving = [{"kind": "serving", "run_id": "s1", "concurrency": 1, "tokens_per_s": 5.0}]
    ResultsWriter(results / "serving.jsonl").append(serving)
    render_plots(results / "serving.jsonl", tmp_path / "plots", names=["serving"], owner="serve-bench")
    ResultsWriter(results / "run.jsonl").append(_threads_rows())
    out = tmp_path / "plots"
    (out / "model_size.png").write_bytes(b"a user's picture")  # not written by any task: never touched
    first = render_plots(results / "run.jsonl", out, names=["threads", "roofline", "speedup"], owner="bench")
    assert {p.name for p in first} == {
        f"{n}.{e}" for n in ("threads", "speedup", "roofline") for e in ("png", "svg")
    }
    # the next bench run has no stock rows: its own stale speedup plot goes, the serving plot stays
    ResultsWriter(results / "run2.jsonl").append([r for r in _threads_rows() if r["config"] == "ours"])
    written = render_plots(
        results / "run2.jsonl", out, names=["threads", "roofline", "speedup"], owner="bench"
    )
    assert {p.name for p in written} == {f"{n}.{e}" for n in ("threads", "roofline") for e in ("png", "svg")}
    assert not (out / "speedup.png").exists() and not (out / "speedup.svg").exists()
    assert (out / "serving.png").exists() and (out / "serving.svg").exists()
    assert (out / "model_size.png").read_bytes() == b"a user's picture"
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*.tmp*"))
    for path in written:
        data = path.read_bytes()
        if path.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            width, height = struct.unpack(">II", data[16:24])
            assert width >= 600 and height >= 400
        else:
            root = ET.fromstring(data)
            assert root.tag == "{http://www.w3.org/2000/svg}svg"
            assert b'id="line2d_' in data or b'id="patch_' in data  # lines or bars were drawn
    assert set(PLOT_NAMES) >= {p.stem for p in written}


def test_render_of_nothing_writes_nothing(tmp_path: Path):
    (tmp_path / "results").mkdir()
    assert render_plots(tmp_path / "results", tmp_path / "plots") == []


# ---------------------------------------------------------------------------------------- readability


def _many_runs_rows() -> list[dict]:
    """Eight runs on other machines and commits, with a tiny model 400x faster than the 2B one."""
    rows = []
    for run in range(8):
        for model, params, ts in (("tiny", 3_000_000, 8000.0), ("2B", 2_400_000_000, 20.0)):
            for config, factor in (("ours", 1.5), ("stock", 1.0)):
                for n_threads in (1, 2, 4, 8):
                    for n_prompt, n_gen in ((512, 0), (0, 128)):
                        rows.append(bench_row(
                            run_id=f"run{run}", date=f"2026-11-2{run}T10:00:00Z", repo_commit=f"{run:x}" * 40,
                            cpu_model=f"CPU model {run % 3}", model_name=model, model_n_params=params,
                            config=config, kernels=config, n_threads=n_threads, n_prompt=n_prompt,
                            n_gen=n_gen, avg_ts=ts * factor * n_threads * (1 + run / 100),
                            roofline_frac=0.5 if n_gen else None, roofline_ts=40.0 if n_gen else None,
                        ))  # fmt: skip
    return rows


def test_render_plots_the_latest_run_by_default_and_says_which(tmp_path: Path):
    rows = _many_runs_rows()
    for run in range(8):
        ResultsWriter(tmp_path / "results" / f"2026112{run}-run{run}.jsonl").append(
            [r for r in rows if r["run_id"] == f"run{run}"]
        )
    df = load_results(tmp_path / "results")
    assert set(select_runs(df)["run_id"]) == {"run7"}
    assert set(select_runs(df, ["run3"])["run_id"]) == {"run3"} and select_runs(df, all_runs=True) is df
    written = render_plots(tmp_path / "results", tmp_path / "plots")
    assert written.runs == ["run7, 2026-11-27 10:00, 20261127-run7.jsonl, 32 rows"]
    everything = render_plots(tmp_path / "results", tmp_path / "all", all_runs=True)
    assert len(everything.runs) == 8
    with pytest.raises(Exception, match="no stored run 'nope'"):
        select_runs(df, ["nope"])


def test_figures_of_many_runs_stay_readable():
    figures = make_figures(pd.DataFrame(_many_runs_rows()))
    for name, fig in figures.items():
        width, height = _pixels(fig)
        assert width <= MAX_WIDTH_PX and height <= 2400, (name, width, height)
    threads = figures["threads"]
    labels = _legend_labels(threads)
    # short and distinct: config and machine/commit, never a 40-digit hash
    assert len(labels) == len(set(labels)) == 16 and all(len(label) <= 40 for label in labels)
    assert "ours, CPU model 0 0000000" in labels
    # a distinct palette colour for every series of the figure
    colours = [line.get_color() for line in threads.axes[0].get_lines()]
    assert len(set(colours)) == len(colours) == 16 and set(colours) <= set(PALETTE)
    # the tiny model and the 2B model never share an axis
    for ax in threads.axes:
        assert ("tiny" in ax.get_title()) != ("2B" in ax.get_title())
    assert figures["model_size"].axes[0].get_yscale() == "log"


def test_min_max_footer_only_when_the_plot_draws_bars():
    def footer(fig) -> str:
        return " ".join(text.get_text() for text in fig.texts)

    figures = make_figures(pd.DataFrame(_threads_rows()))
    assert "bars: min–max" in footer(figures["threads"])
    assert "bars: min–max" not in footer(figures["speedup"]) and "bars: min–max" not in footer(
        figures["roofline"]
    )
    steady = [bench_row(config=c, kernels=c, rep=r, avg_ts=10.0) for c in ("ours", "stock") for r in range(3)]
    assert "bars: min–max" not in footer(make_figures(pd.DataFrame(steady))["threads"])
    assert "median of repetitions" in footer(make_figures(pd.DataFrame(steady))["threads"])


# ---------------------------------------------------------------------------------------- the table's ratios


def _table_ratios(df: pd.DataFrame) -> dict:
    summary = summarize(df)
    cells = summary[summary["config"] != summary.attrs["baseline"]]
    keys = [c for c in ("model_name", "n_threads", "busy", "test", "config") if c in cells]
    return {tuple(cell[keys]): cell["ratio"] for _, cell in cells.iterrows()}


def test_speedup_plot_shows_the_tables_ratios_for_the_committed_issue5_run():
    df = load_results(ISSUE5)
    want = _table_ratios(df)
    assert want[("2B", 2, "tg128", "ours")] == pytest.approx(37.24 / 23.39, abs=1e-3)  # README: 1.59x
    ax = make_figures(df)["speedup"].axes[0]
    got = [bar.get_height() for container in ax.containers for bar in container]
    assert sorted(got) == pytest.approx(sorted(want.values()))


def test_speedups_of_several_runs_are_never_pooled():
    # two runs of the same cells: pooling medians across runs gives neither run's ratio
    first = [
        bench_row(run_id="a", config=c, kernels=c, rep=r, avg_ts=v)
        for c, v in (("ours", 30.0), ("stock", 20.0))
        for r in range(3)
    ]
    later = "2026-01-02T00:00:00Z"
    second = [
        bench_row(run_id="b", config="ours", kernels="ours", rep=r, avg_ts=12.0, date=later) for r in range(3)
    ]
    df = pd.DataFrame(first + second)
    data = speedups(df)
    assert list(data["speedup"]) == pytest.approx([1.5])  # run a's 30 / 20; run b has no stock
    assert data["speedup"].iloc[0] == pytest.approx(summarize(df[df["run_id"] == "a"])["ratio"].iloc[0])


def test_committed_rows_plot_the_tables_ratio_per_run():
    df = load_results(RESULTS)
    data = speedups(df)
    table = {}
    for _, run in df.groupby("run_id"):
        if bench_rows_configs(run) > 1:
            table.update({(run["run_id"].iloc[0], *k): v for k, v in _table_ratios(run).items()})
    assert sorted(data["speedup"]) == pytest.approx(sorted(table.values()))


def bench_rows_configs(df: pd.DataFrame) -> int:
    return df[df["kind"] == "llama-bench"]["config"].nunique()
