"""bitnet.plots: every figure is drawn from stored rows, has the expected series and values, and is
written as valid PNG and SVG. Rows are built by hand with known medians."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from benchhelpers import bench_row

from bitnet.plots import PLOT_NAMES, make_figures, render_plots, speedups
from bitnet.results import ResultsWriter

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
    segments = [seg for coll in ax_tg.collections for seg in coll.get_segments()]
    assert any(seg[0][0] == 1 and {seg[0][1], seg[1][1]} == {9.0, 30.0} for seg in segments)


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
    got = {(c.split("\n")[0], c.split("\n")[-1], t): s for c, t, s in data.itertuples(index=False)}
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


def test_render_writes_valid_png_and_svg_from_stored_rows_and_drops_stale_ones(tmp_path: Path):
    results = tmp_path / "results"
    ResultsWriter(results / "run.jsonl").append(_threads_rows())
    out = tmp_path / "plots"
    out.mkdir()
    (out / "serving.png").write_bytes(b"old")  # from an earlier run with serving rows
    written = render_plots(results, out)
    assert {p.name for p in written} == {
        f"{n}.{e}" for n in ("threads", "speedup", "roofline") for e in ("png", "svg")
    }
    assert not (out / "serving.png").exists() and not list(out.glob(".*"))
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
