"""Plots of stored benchmark rows (bitnet.results), headless, PNG and SVG.

Figures are drawn only from rows read back from ``bench/results/*.jsonl``, never from a run's memory,
so ``invoke plot`` redraws exactly what ``invoke bench`` drew (STYLE.md 11). matplotlib is used through
its object API with the Agg canvas: no pyplot, no global backend switch, no display needed.

    threads        t/s vs threads, one panel per test (pp512, tg128), a line per configuration
    model_size     t/s vs parameters (log x), when at least two model sizes were measured
    speedup        ours ÷ stock per weight/head format and test, when both ran
    roofline       decode t/s as % of the read-bandwidth bound (bitnet.roofline)
    serving        tokens/s and latency vs concurrent clients, when "serving" rows exist

Each point is the median over repetitions; a vertical bar spans the fastest and slowest repetition.
Series and categories are named by the identity columns that vary, and only those.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bitnet.results import bench_rows, load_results, varying_columns

__all__ = ["PLOT_NAMES", "make_figures", "render_plots"]

log = logging.getLogger(__name__)

PLOT_NAMES = ("threads", "model_size", "speedup", "roofline", "serving")
# Columns that tell series apart, most telling first (bitnet.results.varying_columns keeps those that vary).
_SERIES_COLUMNS = (
    "model_name", "weight_format", "head_format", "config", "cpu_variant", "n_threads", "cpu_model",
    "engine_pin", "repo_commit",
)  # fmt: skip
_SHORT = {"model_name": "", "config": "", "n_threads": "t=", "weight_format": "", "head_format": "head ",
          "cpu_variant": "", "cpu_model": "", "engine_pin": "", "repo_commit": "@", "format": "",
          "cpu_variant_requested": "variant "}  # fmt: skip


# ---------------------------------------------------------------------------------------- helpers


def _label(keys: Sequence[str], values: Any) -> str:
    values = values if isinstance(values, tuple) else (values,)
    parts = [f"{_SHORT.get(k, k + '=')}{v}" for k, v in zip(keys, values, strict=True)]
    return ", ".join(parts) or "all"


def _groups(rows: pd.DataFrame, keys: list[str]) -> Iterable[tuple[str, pd.DataFrame]]:
    if not keys:
        yield "all", rows
        return
    for values, part in rows.groupby(keys, sort=False, dropna=False):
        yield _label(keys, values), part


def _is_decode(test: str) -> bool:
    return test.startswith("tg")


def _new_figure(ncols: int = 1, *, categories: int = 0) -> tuple[Figure, list[Any]]:
    """A figure of `ncols` panels; a bar chart of many `categories` gets wider (~1.1 inch each)."""
    fig = Figure(figsize=(max(6.4 * ncols, 1.1 * categories), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _caption(fig: Figure, rows: pd.DataFrame) -> None:
    """Say what was measured on what: CPU, engine, date range, and whether ours == stock."""
    bits = []
    if "cpu_model" in rows and rows["cpu_model"].nunique() == 1:
        bits.append(str(rows["cpu_model"].iloc[0]))
    if "engine_pin" in rows and rows["engine_pin"].nunique() == 1:
        bits.append(str(rows["engine_pin"].iloc[0]))
    if "date" in rows and rows["date"].notna().any():
        dates = sorted(str(d)[:10] for d in rows["date"].dropna())
        bits.append(dates[0] if dates[0] == dates[-1] else f"{dates[0]} – {dates[-1]}")
    if "rep" in rows:
        bits.append("median of repetitions, bars: min–max")
    if (
        "kernels" in rows
        and rows["kernels"].nunique() > 1
        and "kernels_in_engine" in rows
        and not rows["kernels_in_engine"].fillna(False).astype(bool).all()
    ):
        bits.append("engine without our kernels yet: ours = stock")
    fig.text(0.01, 0.005, " · ".join(bits), fontsize=7, color="0.35", ha="left", va="bottom", wrap=True)
    engine: Any = fig.get_layout_engine()
    engine.set(rect=(0, 0.06, 1, 0.94))  # keep the caption clear of the axes


def _line(ax: Any, part: pd.DataFrame, x: str, y: str, label: str) -> None:
    """Median of `y` per `x` as a line with markers; a min–max bar at each point."""
    stats = part.groupby(x)[y].agg(["median", "min", "max"]).sort_index()
    (line,) = ax.plot(stats.index.to_numpy(), stats["median"].to_numpy(), marker="o", label=label)
    xs = stats.index.to_numpy()
    ax.vlines(xs, stats["min"].to_numpy(), stats["max"].to_numpy(), color=line.get_color(), alpha=0.5)


# ---------------------------------------------------------------------------------------- figures


def plot_threads(df: pd.DataFrame) -> Figure | None:
    """t/s vs threads: a panel per test, a line per combination of what varies besides threads."""
    rows = bench_rows(df)
    if rows.empty:
        return None
    tests = list(dict.fromkeys(rows["test"]))
    keys = varying_columns(rows, _SERIES_COLUMNS, exclude=["n_threads"])
    fig, axes = _new_figure(len(tests))
    for ax, test in zip(axes, tests, strict=True):
        part = rows[rows["test"] == test]
        for label, series in _groups(part, keys):
            _line(ax, series, "n_threads", "avg_ts", label)
        ax.set_title(f"{test} ({'decode' if _is_decode(test) else 'prefill'})")
        ax.set_xlabel("threads")
        ax.set_ylabel("tokens/s")
        ax.set_xticks(sorted(part["n_threads"].unique()))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _caption(fig, rows)
    return fig


def plot_model_size(df: pd.DataFrame) -> Figure | None:
    """t/s vs model parameters (log x), a panel per test; needs two or more sizes."""
    rows = bench_rows(df)
    if rows.empty or "model_n_params" not in rows or rows["model_n_params"].nunique() < 2:
        return None
    rows["params_b"] = rows["model_n_params"].astype(float) / 1e9
    tests = list(dict.fromkeys(rows["test"]))
    keys = varying_columns(rows, _SERIES_COLUMNS, exclude=["model_name"])
    fig, axes = _new_figure(len(tests))
    for ax, test in zip(axes, tests, strict=True):
        for label, series in _groups(rows[rows["test"] == test], keys):
            _line(ax, series, "params_b", "avg_ts", label)
        ax.set_xscale("log")
        ax.set_title(test)
        ax.set_xlabel("parameters (billions)")
        ax.set_ylabel("tokens/s")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    _caption(fig, rows)
    return fig


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Median ours ÷ median stock for each format (weights / head) and test, matched on everything else.

    Columns: ``category`` (the format, plus model / threads / forced variant when those vary among
    the pairs), ``test``, ``speedup``. Empty when no measurement has both kernels.
    """
    rows = bench_rows(df)
    if rows.empty or "kernels" not in rows or not {"ours", "stock"} <= set(rows["kernels"]):
        return pd.DataFrame(columns=["category", "test", "speedup"])
    rows["format"] = rows["weight_format"].astype(str) + " / " + rows["head_format"].astype(str) + " head"
    extras = [c for c in ("model_name", "n_threads", "cpu_variant_requested") if c in rows]
    for col in extras:
        rows[col] = rows[col].astype(str)
    if "model_name" in rows:  # "2B-tq1_0-f16" -> "2B": the format is in the category already
        suffix = "-" + rows["weight_format"].astype(str) + "-" + rows["head_format"].astype(str)
        rows["model_name"] = [
            m[: -len(x)] if m.endswith(x) else m for m, x in zip(rows["model_name"], suffix, strict=True)
        ]
    med = (
        rows.groupby(["format", *extras, "test", "kernels"], sort=False)["avg_ts"].median().unstack("kernels")
    )
    med = med.dropna(subset=["ours", "stock"])
    out = pd.DataFrame({"speedup": med["ours"] / med["stock"]}).reset_index()
    shown = ["format", *(c for c in extras if out[c].nunique() > 1)]
    if "model_name" in shown and out.groupby("format")["model_name"].nunique().max() <= 1:
        shown.remove("model_name")  # the format already tells the models apart
    out["category"] = [
        "\n".join(_label(shown, tuple(r[c] for c in shown)).split(", ")) for _, r in out.iterrows()
    ]
    return out[["category", "test", "speedup"]]


def plot_speedup(df: pd.DataFrame) -> Figure | None:
    """Grouped bars: speedup of our kernels over stock ggml per format, a bar per test."""
    data = speedups(df)
    if data.empty:
        return None
    categories = list(dict.fromkeys(data["category"]))
    tests = list(dict.fromkeys(data["test"]))
    fig, (ax,) = _new_figure(categories=len(categories))
    width = 0.8 / len(tests)
    for i, test in enumerate(tests):
        part = data[data["test"] == test].set_index("category").reindex(categories)
        xs = [c + (i - (len(tests) - 1) / 2) * width for c in range(len(categories))]
        bars = ax.bar(xs, part["speedup"].to_numpy(), width=width, label=test)
        ax.bar_label(bars, fmt="%.2fx", fontsize=7)
    ax.axhline(1.0, color="0.3", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(categories)), categories, fontsize=8)
    ax.set_ylabel("speedup vs stock (× median t/s)")
    ax.set_title("Our kernels vs stock ggml, same binary")
    ax.legend(fontsize=8)
    _caption(fig, bench_rows(df))
    return fig


def plot_roofline(df: pd.DataFrame) -> Figure | None:
    """Bars: decode t/s as % of bandwidth ÷ bytes per token, per what varies; a line at 100 %."""
    rows = bench_rows(df)
    if rows.empty or "roofline_frac" not in rows:
        return None
    rows = rows[rows["roofline_frac"].notna()]
    if rows.empty:
        return None
    keys = varying_columns(rows, _SERIES_COLUMNS) + (["test"] if rows["test"].nunique() > 1 else [])
    labels, values, bounds = [], [], []
    for label, part in _groups(rows, keys):
        labels.append(label.replace(", ", "\n"))
        values.append(100 * float(part["roofline_frac"].median()))
        bounds.append(float(part["roofline_ts"].median()))
    fig, (ax,) = _new_figure(categories=len(labels))
    bars = ax.bar(range(len(labels)), values, label="decode t/s ÷ roofline")
    ax.bar_label(bars, labels=[f"{v:.0f}% of {b:.0f} t/s" for v, b in zip(values, bounds, strict=True)],
                 fontsize=7)  # fmt: skip
    ax.axhline(100, color="0.3", linewidth=0.8, linestyle="--", label="bandwidth bound")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("% of read-bandwidth roofline")
    ax.set_ylim(0, max(110.0, max(values) * 1.15))
    ax.set_title("Decode vs memory-bandwidth bound (bytes per token ÷ GB/s)")
    ax.legend(fontsize=8, loc="upper right")
    _caption(fig, rows)
    return fig


def plot_serving(df: pd.DataFrame) -> Figure | None:
    """Throughput and latency (p50, p95) vs concurrent clients from "serving" rows."""
    if df.empty or "kind" not in df:
        return None
    rows = df[df["kind"] == "serving"]
    if rows.empty or "concurrency" not in rows or "tokens_per_s" not in rows:
        return None
    keys = varying_columns(rows, _SERIES_COLUMNS)
    fig, (ax_tp, ax_lat) = _new_figure(2)
    for label, part in _groups(rows, keys):
        _line(ax_tp, part, "concurrency", "tokens_per_s", label)
        for col, style in (("latency_p50_s", "-"), ("latency_p95_s", ":")):
            if col in part and part[col].notna().any():
                stats = part.groupby("concurrency")[col].median().sort_index()
                ax_lat.plot(stats.index.to_numpy(), stats.to_numpy(), style, marker="o",
                            label=f"{label} {col.split('_')[1]}")  # fmt: skip
    ax_tp.set(title="llama-server throughput", xlabel="concurrent clients", ylabel="generated tokens/s")
    ax_lat.set(title="request latency", xlabel="concurrent clients", ylabel="seconds")
    for ax in (ax_tp, ax_lat):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _caption(fig, rows)
    return fig


_PLOTTERS: dict[str, Callable[[pd.DataFrame], Figure | None]] = {
    "threads": plot_threads,
    "model_size": plot_model_size,
    "speedup": plot_speedup,
    "roofline": plot_roofline,
    "serving": plot_serving,
}


def make_figures(df: pd.DataFrame) -> dict[str, Figure]:
    """Every plot the rows in `df` (from `load_results`) support, by name (see `PLOT_NAMES`)."""
    figures = {}
    for name, plotter in _PLOTTERS.items():
        fig = plotter(df)
        if fig is not None:
            figures[name] = fig
    return figures


def render_plots(
    results: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Load the rows in `results` (a results dir, a .jsonl file or several) and write every plot they
    support to `out_dir` as ``<name>.png`` and ``<name>.svg``; return the paths written.

    A plot of `PLOT_NAMES` the rows no longer support is removed from `out_dir`, so the directory never
    shows a stale picture next to fresh ones.
    """
    df = load_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures = make_figures(df)
    for name in PLOT_NAMES:
        if name not in figures:
            for ext in ("png", "svg"):
                (out / f"{name}.{ext}").unlink(missing_ok=True)
            continue
        for ext in ("png", "svg"):
            path = out / f"{name}.{ext}"
            tmp = out / f".{name}.tmp.{ext}"
            metadata = {"Date": None} if ext == "svg" else None  # reproducible SVG: no timestamp
            figures[name].savefig(tmp, format=ext, dpi=130, metadata=metadata)
            os.replace(tmp, path)
            written.append(path)
    log.info("wrote %d plot files to %s", len(written), out)
    return written
