"""Plots of stored benchmark rows (bitnet.bench.results), headless, PNG and SVG.

Figures are drawn only from rows read back from ``bench/results/*.jsonl``, never from a run's memory,
so ``invoke plot`` redraws exactly what ``invoke bench`` drew (STYLE.md 11). matplotlib is used through
its object API with the Agg canvas: no pyplot, no global backend switch, no display needed.

    threads        t/s vs threads, a panel per model and test, a line per configuration
    model_size     t/s vs parameters (log-log), when at least two model sizes were measured
    speedup        ratio of medians vs the baseline config within one run, exactly as the table's
    roofline       decode t/s as % of the read-bandwidth bound (bitnet.bench.roofline)
    serving        tokens/s and latency vs concurrent clients, when "serving" rows exist

Readable by default: `render_plots` draws the latest run only (of llama-bench rows and of serving rows)
unless runs are named or all are asked for; series are named by what varies, in short (config names;
a short commit, machine or date only when several runs are compared); each series of a figure has its
own colour from a fixed palette; each model gets its own panels (a tiny model at 8000 t/s must not
flatten a 2B one at 20); figures are at most MAX_WIDTH_PX wide, many panels or bars wrap into rows.
Each point is the median over repetitions; a vertical bar spans the fastest and slowest repetition
(and the footer says so only when a plot draws such bars). A cell `bitnet.bench.results.reliability` flags
is drawn hollow (lines) or hatched (bars).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bitnet.bench.results import bench_rows, cell_reliability, load_results, summarize, varying_columns
from bitnet.errors import BenchmarkError

__all__ = [
    "BENCH_PLOT_NAMES",
    "DPI",
    "MAX_WIDTH_PX",
    "PALETTE",
    "PLOT_NAMES",
    "PlotFiles",
    "describe_runs",
    "make_figures",
    "render_plots",
    "select_runs",
    "speedups",
]

log = logging.getLogger(__name__)

PLOT_NAMES = ("threads", "model_size", "speedup", "roofline", "serving")
BENCH_PLOT_NAMES = ("threads", "model_size", "speedup", "roofline")  # what `invoke bench` draws
SERVING_PLOT_NAMES = ("serving",)  # what `invoke serve-bench` draws
DPI = 130
MAX_WIDTH_PX = 1600  # no figure is wider: many panels or bars wrap into rows instead
MAX_HEIGHT_PX = 2400
_MAX_W = MAX_WIDTH_PX / DPI
_MAX_H = MAX_HEIGHT_PX / DPI
_BARS_PER_PANEL = 8  # categories of a bar chart per row of panels
# Colour-blind-safe first (Okabe-Ito), then tab10's; a figure's series take them in order, never twice.
PALETTE = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
    "#8c564b", "#7f7f7f", "#bcbd22", "#17becf", "#9467bd", "#d62728", "#2ca02c", "#1f77b4",
)  # fmt: skip
# Columns that tell series apart, most telling first (varying_columns keeps those that vary). The
# model has panels of its own; "run" is a short label, set only when several runs are drawn together.
_SERIES_COLUMNS = ("config", "busy", "cpu_variant", "n_threads", "run")
_SHORT = {"model_name": "", "model": "", "format": "", "config": "", "n_threads": "t=", "cpu_variant": "",
          "run": "", "test": "", "busy": "host "}  # fmt: skip
# What a cell of `summarize` is besides its config: a ratio compares cells equal in these.
_CELL_COLUMNS = (
    "cpu_model", "engine_pin", "repo_commit", "model_name", "weight_format", "head_format", "n_threads",
    "busy", "test",
)  # fmt: skip
_UNRELIABLE_LABEL = "hollow/hatched: unreliable (see table)"


# ---------------------------------------------------------------------------------------- runs


def _run_keys(df: pd.DataFrame) -> pd.Series:
    """Which run each row belongs to: its ``run_id``, else the file it came from."""
    source = df["source"] if "source" in df else pd.Series("rows", index=df.index)
    if "run_id" not in df:
        return source.astype(str)
    return df["run_id"].astype(object).where(df["run_id"].notna(), source).astype(str)


def _latest_run(df: pd.DataFrame) -> str | None:
    if df.empty:
        return None
    keys = _run_keys(df)
    dates = df["date"].astype(str) if "date" in df else pd.Series("", index=df.index)
    sources = df["source"].astype(str) if "source" in df else pd.Series("", index=df.index)
    order = pd.DataFrame({"key": keys, "date": dates, "source": sources}).groupby("key", sort=False).max()
    return str(order.sort_values(["date", "source"]).index[-1])


def select_runs(df: pd.DataFrame, runs: Sequence[str] = (), *, all_runs: bool = False) -> pd.DataFrame:
    """The rows to plot: those of `runs` (run ids or their prefixes, or result file names), of every
    run with `all_runs`, else of the latest llama-bench run and the latest serving run.

    Raises:
        BenchmarkError: a name in `runs` matches no stored run.
    """
    if df.empty or all_runs:
        return df
    keys = _run_keys(df)
    if runs:
        sources = df["source"].astype(str) if "source" in df else pd.Series("", index=df.index)
        mask = pd.Series(False, index=df.index)
        for name in runs:
            hit = keys.str.startswith(name) | (sources == name) | (sources == f"{name}.jsonl")
            if not hit.any():
                known = ", ".join(sorted({k[:8] for k in keys}))
                raise BenchmarkError(f"no stored run {name!r}: pass a run id (or its start) of {known}.")
            mask |= hit
        return df[mask]
    kinds = df["kind"] if "kind" in df else pd.Series("llama-bench", index=df.index)
    chosen = {_latest_run(df[kinds == kind]) for kind in ("llama-bench", "serving")} - {None}
    return df[keys.isin(chosen)]


def describe_runs(df: pd.DataFrame) -> list[str]:
    """One line per run in `df`: id, spec, date, file, number of rows."""
    if df.empty:
        return []
    lines = []
    for key, part in df.groupby(_run_keys(df), sort=False):
        first = part.iloc[0]
        bits = [str(key)[:8]]
        if "spec" in part and pd.notna(first.get("spec")):
            bits.append(f"spec {first['spec']}")
        if "date" in part and part["date"].notna().any():
            bits.append(str(part["date"].dropna().min())[:16].replace("T", " "))
        if "source" in part:
            bits.append(str(first["source"]))
        bits.append(f"{len(part)} rows")
        lines.append(", ".join(bits))
    return lines


def _with_run_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` with a short ``run`` column telling its runs apart (constant when there is one run):
    the machine and commit when they differ, else (or also, if still ambiguous) the run's start time."""
    rows = rows.copy()
    keys = _run_keys(rows)
    if keys.nunique() <= 1:
        rows["run"] = "-"
        return rows
    per_run = rows.groupby(keys, sort=False).first()
    parts: list[list[str]] = [[] for _ in range(len(per_run))]
    for col, width in (("cpu_model", 16), ("repo_commit", 7)):
        if col in per_run and per_run[col].astype(str).nunique() > 1:
            for bits, value in zip(parts, per_run[col].astype(str), strict=True):
                bits.append(value[:width])
    labels = [" ".join(bits) for bits in parts]
    if len(set(labels)) < len(labels):
        starts = rows.groupby(keys, sort=False)["date"].min() if "date" in rows else None
        for i, key in enumerate(per_run.index):
            when = str(starts[key])[5:16].replace("T", " ") if starts is not None else ""
            labels[i] = " ".join(filter(None, [labels[i], when]))
    if len(set(labels)) < len(labels):
        labels = [f"{label} {str(key)[:6]}".strip() for label, key in zip(labels, per_run.index, strict=True)]
    rows["run"] = keys.map(dict(zip(per_run.index, labels, strict=True)))
    return rows


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


class _Colours:
    """A colour per series label, from PALETTE in order of first use: never the same one twice."""

    def __init__(self) -> None:
        self.by_label: dict[str, str] = {}

    def __call__(self, label: str) -> str:
        if label not in self.by_label:
            n = len(self.by_label)
            self.by_label[label] = PALETTE[n] if n < len(PALETTE) else _extra_colour(n - len(PALETTE))
        return self.by_label[label]


def _extra_colour(i: int) -> str:
    """Beyond the palette: distinct hues around the colour wheel (golden-angle steps), darker."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.55 + 0.3 * (i % 2))
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _new_figure(
    panels: int, *, ncols: int | None = None, panel_w: float = 5.6, panel_h: float = 3.6
) -> tuple[Figure, list[Any]]:
    """A figure of `panels` panels in rows of `ncols` (default up to 3), never wider than MAX_WIDTH_PX
    or taller than MAX_HEIGHT_PX at DPI."""
    ncols = max(1, min(panels, ncols or 3))
    nrows = math.ceil(panels / ncols)
    size = (min(panel_w * ncols, _MAX_W), min(panel_h * nrows + 0.9, _MAX_H))
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[panels:]:
        fig.delaxes(ax)
    return fig, axes[:panels]


def _caption(fig: Figure, rows: pd.DataFrame, *, bars: bool = False, extra: Sequence[str] = ()) -> None:
    """Say what was measured on what: CPU, engine, date range, what a point is, and whether ours ==
    stock. "bars: min–max" only when the figure draws such bars (`bars`)."""
    bits = []
    if "cpu_model" in rows and rows["cpu_model"].nunique() == 1:
        bits.append(str(rows["cpu_model"].iloc[0]))
    if "engine_pin" in rows and rows["engine_pin"].nunique() == 1:
        bits.append(str(rows["engine_pin"].iloc[0]))
    if "date" in rows and rows["date"].notna().any():
        dates = sorted(str(d)[:10] for d in rows["date"].dropna())
        bits.append(dates[0] if dates[0] == dates[-1] else f"{dates[0]} – {dates[-1]}")
    if "rep" in rows:
        bits.append("median of repetitions" + (", bars: min–max" if bars else ""))
    bits.extend(extra)
    fig.text(0.01, 0.005, " · ".join(bits), fontsize=7, color="0.35", ha="left", va="bottom", wrap=True)
    engine: Any = fig.get_layout_engine()
    engine.set(rect=(0, 0.05, 1, 0.95))  # keep the caption clear of the axes


def _legend(fig: Figure, *, unreliable: bool) -> None:
    """One legend for the whole figure (series are the same in every panel), above the panels."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if unreliable:
        handles[_UNRELIABLE_LABEL] = Line2D([], [], marker="o", linestyle="none", markerfacecolor="white",
                                            markeredgecolor="0.3")  # fmt: skip
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside upper center", fontsize=8,
                   ncols=min(len(handles), 4), frameon=False)  # fmt: skip


def _line(ax: Any, part: pd.DataFrame, x: str, y: str, label: str, colour: str) -> tuple[bool, bool]:
    """Median of `y` per `x` as a line with markers, a min–max bar at each point with a spread, and
    hollow markers where the cell is unreliable. Returns (drew a bar, drew an unreliable point)."""
    stats = part.groupby(x)[y].agg(["median", "min", "max"]).sort_index()
    xs = stats.index.to_numpy()
    ax.plot(xs, stats["median"].to_numpy(), marker="o", label=label, color=colour)
    spread = stats["max"] > stats["min"]
    if spread.any():
        ax.vlines(xs[spread.to_numpy()], stats["min"][spread].to_numpy(), stats["max"][spread].to_numpy(),
                  color=colour, alpha=0.5)  # fmt: skip
    flags = cell_reliability(part, [x], value=y).set_index(x)["unreliable"].reindex(stats.index)
    bad = flags.fillna(False).astype(bool).to_numpy()
    if bad.any():
        ax.scatter(xs[bad], stats["median"].to_numpy()[bad], s=40, facecolors="white", edgecolors=colour,
                   linewidths=1.5, zorder=3, label="_unreliable")  # fmt: skip
    return bool(spread.any()), bool(bad.any())


def _model_label(rows: pd.DataFrame) -> pd.Series:
    """The model of each row: its name ("2B-tq1_0-f16"), else its formats."""
    if "model_name" in rows:
        return rows["model_name"].astype(str)
    return pd.Series("model", index=rows.index)


# ---------------------------------------------------------------------------------------- figures


def plot_threads(df: pd.DataFrame) -> Figure | None:
    """t/s vs threads: a panel per model and test, a line per combination of what else varies."""
    rows = bench_rows(df)
    if rows.empty:
        return None
    rows = _with_run_labels(rows)
    rows["model"] = _model_label(rows)
    tests = list(dict.fromkeys(rows["test"]))
    models = list(dict.fromkeys(rows["model"]))
    panels = [(m, t) for m in models for t in tests if ((rows["model"] == m) & (rows["test"] == t)).any()]
    keys = varying_columns(rows, _SERIES_COLUMNS, exclude=["n_threads"])
    colours = _Colours()
    fig, axes = _new_figure(len(panels), ncols=min(len(tests), 3))
    bars = hollow = False
    for ax, (model, test) in zip(axes, panels, strict=True):
        part = rows[(rows["model"] == model) & (rows["test"] == test)]
        for label, series in _groups(part, keys):
            drew_bars, drew_hollow = _line(ax, series, "n_threads", "avg_ts", label, colours(label))
            bars, hollow = bars or drew_bars, hollow or drew_hollow
        title = f"{test} ({'decode' if _is_decode(test) else 'prefill'})"
        ax.set_title(title if len(models) == 1 else f"{title} · {model}", fontsize=10)
        ax.set_xlabel("threads")
        ax.set_ylabel("tokens/s")
        ax.set_xticks(sorted(part["n_threads"].unique()))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    _legend(fig, unreliable=hollow)
    _caption(fig, rows, bars=bars)
    return fig


def plot_model_size(df: pd.DataFrame) -> Figure | None:
    """t/s vs model parameters (log-log, so sizes far apart in speed stay readable), a panel per test;
    needs two or more sizes."""
    rows = bench_rows(df)
    if rows.empty or "model_n_params" not in rows or rows["model_n_params"].nunique() < 2:
        return None
    rows = _with_run_labels(rows)
    rows["params_b"] = rows["model_n_params"].astype(float) / 1e9
    tests = list(dict.fromkeys(rows["test"]))
    keys = varying_columns(rows, _SERIES_COLUMNS)
    colours = _Colours()
    fig, axes = _new_figure(len(tests))
    bars = hollow = False
    for ax, test in zip(axes, tests, strict=True):
        for label, series in _groups(rows[rows["test"] == test], keys):
            drew_bars, drew_hollow = _line(ax, series, "params_b", "avg_ts", label, colours(label))
            bars, hollow = bars or drew_bars, hollow or drew_hollow
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(test, fontsize=10)
        ax.set_xlabel("parameters (billions)")
        ax.set_ylabel("tokens/s (log)")
        ax.grid(alpha=0.3, which="both")
    _legend(fig, unreliable=hollow)
    _caption(fig, rows, bars=bars)
    return fig


def speedups(df: pd.DataFrame, *, baseline: str | None = None) -> pd.DataFrame:
    """The table's ratios: `summarize` per run (median / the baseline config's median, same model,
    threads and test), for every config but the baseline. Runs are never pooled.

    Columns: ``category`` (the format, plus model / threads when they vary), ``series`` (the config
    and the run, when several), ``test``, ``speedup``, ``baseline``, ``unreliable`` (either cell is).
    Empty when no run has two configs.
    """
    columns = ["category", "series", "test", "speedup", "baseline", "unreliable"]
    rows = bench_rows(df)
    if rows.empty or "config" not in rows:
        return pd.DataFrame(columns=columns)
    rows = _with_run_labels(rows)
    records = []
    for _, part in rows.groupby("run", sort=False):
        if part["config"].nunique() < 2:
            continue
        summary = summarize(part, baseline=baseline)
        base, constant = summary.attrs["baseline"], summary.attrs["constant"]
        others = [c for c in summary.columns if c in _CELL_COLUMNS]
        base_cells = summary[summary["config"] == base].set_index(others)["unreliable"]
        base_cells = base_cells[~base_cells.index.duplicated()]
        formats = part.groupby(part["model_name"].astype(str))[["weight_format", "head_format"]].first()
        for cell in summary[(summary["config"] != base) & summary["ratio"].notna()].to_dict("records"):
            model = str(cell.get("model_name", constant.get("model_name", "-")))
            weight, head = formats.loc[model] if model in formats.index else ("?", "?")
            key = tuple(cell[c] for c in others) if len(others) > 1 else cell[others[0]]
            records.append({
                "model": model, "format": f"{weight} / {head} head",
                "n_threads": cell.get("n_threads", constant.get("n_threads")), "test": cell["test"],
                "config": cell["config"], "run": str(part["run"].iloc[0]), "speedup": float(cell["ratio"]),
                "busy": str(cell.get("busy", constant.get("busy", "idle"))),
                "baseline": base, "unreliable": bool(cell["unreliable"] or base_cells.get(key, False)),
            })  # fmt: skip
    if not records:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame.from_records(records)
    suffix = "-" + out["format"].str.replace(" / ", "-").str.removesuffix(" head")
    out["model"] = [m.removesuffix(s) for m, s in zip(out["model"], suffix, strict=True)]
    shown = ["format"]
    if out.groupby("format")["model"].nunique().max() > 1:
        shown.append("model")  # the format alone does not tell the models apart
    if out["n_threads"].nunique() > 1:
        shown.append("n_threads")
    if out["busy"].nunique() > 1:
        shown.append("busy")  # the host condition (bitnet.bench.busy)
    out["category"] = [
        "\n".join(_label(shown, tuple(r[c] for c in shown)).split(", ")) for _, r in out.iterrows()
    ]
    series_keys = [c for c in ("config", "run") if out[c].nunique() > 1]
    out["series"] = [_label(series_keys, tuple(r[c] for c in series_keys)) if series_keys else ""
                     for _, r in out.iterrows()]  # fmt: skip
    return out[columns]


def plot_speedup(df: pd.DataFrame) -> Figure | None:
    """Grouped bars: each config's ratio to the baseline (as in the table), per format; a bar per test
    (and per config / run when several; then a row of panels per test). Many formats wrap into rows."""
    data = speedups(df)
    if data.empty:
        return None
    categories = list(dict.fromkeys(data["category"]))
    tests = list(dict.fromkeys(data["test"]))
    bar_series = list(dict.fromkeys(zip(data["series"], data["test"], strict=True)))
    split = len(bar_series) > 4 and len(tests) > 1  # many bars per format: a row of panels per test
    groups = [[b for b in bar_series if b[1] == t] for t in tests] if split else [bar_series]
    widest = max(len(g) for g in groups)
    per_category = max(0.9, 0.32 * widest)
    per_panel = max(1, min(_BARS_PER_PANEL, int((_MAX_W - 1.5) // per_category)))
    panels = []
    for group in groups:
        in_group = data["test"].isin({t for _, t in group})
        cats = [c for c in categories if (in_group & (data["category"] == c)).any()]
        for i in range(0, len(cats), per_panel):
            chunk = cats[i : i + per_panel]
            here = data[in_group & data["category"].isin(chunk)]
            present = [b for b in group if ((here["series"] == b[0]) & (here["test"] == b[1])).any()]
            panels.append((present, chunk))
    width_in = max(6.4, per_category * min(per_panel, len(categories)) + 1.5)
    fig, axes = _new_figure(len(panels), ncols=1, panel_w=width_in, panel_h=3.8 if len(panels) < 3 else 2.8)
    colours = _Colours()
    hatched = False
    for ax, (group, chunk) in zip(axes, panels, strict=True):
        width = 0.8 / len(group)
        for i, (series, test) in enumerate(group):
            label = (series or test) if split else f"{series} {test}".strip()
            part = (
                data[(data["series"] == series) & (data["test"] == test)].set_index("category").reindex(chunk)
            )
            xs = [c + (i - (len(group) - 1) / 2) * width for c in range(len(chunk))]
            bad = part["unreliable"].fillna(False).astype(bool).to_numpy()
            bars = ax.bar(xs, part["speedup"].to_numpy(), width=width, label=label, color=colours(label))
            for bar, flag in zip(bars, bad, strict=True):
                if flag:
                    bar.set_hatch("///")
                    bar.set_edgecolor("white")
            hatched = hatched or bool(bad.any())
            texts = ["" if pd.isna(v) else f"{v:.2f}x" + ("!" if b else "")
                     for v, b in zip(part["speedup"], bad, strict=True)]  # fmt: skip
            ax.bar_label(bars, labels=texts, fontsize=6 if len(group) > 4 else 7,
                         rotation=90 if len(group) > 4 else 0, padding=2)  # fmt: skip
        ax.axhline(1.0, color="0.3", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(chunk)), chunk, fontsize=8)
        ax.set_ylabel("× baseline t/s")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # room for the labels
        if split:
            ax.set_title(group[0][1], fontsize=9)
    bases = sorted(set(data["baseline"]))
    title = f"Ratio to {' / '.join(bases)} (median ÷ median, within one run)"
    axes[0].set_title(f"{title}: {panels[0][0][0][1]}" if split else title, fontsize=10)
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if hatched:
        handles["hatched, x.xx!: unreliable (see table)"] = Patch(
            facecolor="0.6", hatch="///", edgecolor="white"
        )
    fig.legend(list(handles.values()), list(handles), loc="outside upper center", fontsize=8,
               ncols=min(len(handles), 4), frameon=False)  # fmt: skip
    _caption(fig, bench_rows(df), extra=["ratios as in the table (bitnet.bench.results.summarize)"])
    return fig


def plot_roofline(df: pd.DataFrame) -> Figure | None:
    """Bars: decode t/s as % of bandwidth ÷ bytes per token, per what varies; a line at 100 %."""
    rows = bench_rows(df)
    if rows.empty or "roofline_frac" not in rows:
        return None
    rows = rows[rows["roofline_frac"].notna()]
    if rows.empty:
        return None
    rows = _with_run_labels(rows)
    keys = varying_columns(rows, ("model_name", *_SERIES_COLUMNS)) + (
        ["test"] if rows["test"].nunique() > 1 else []
    )
    labels, values, bounds, bad = [], [], [], []
    for label, part in _groups(rows, keys):
        labels.append(label.replace(", ", "\n"))
        values.append(100 * float(part["roofline_frac"].median()))
        bounds.append(float(part["roofline_ts"].median()))
        part = part.assign(_cell=0)
        bad.append(bool(cell_reliability(part, ["_cell"])["unreliable"].iloc[0]))
    chunks = [
        list(range(i, min(i + _BARS_PER_PANEL, len(labels)))) for i in range(0, len(labels), _BARS_PER_PANEL)
    ]
    fig, axes = _new_figure(len(chunks), ncols=1, panel_w=max(6.4, 1.1 * len(chunks[0]) + 1.0), panel_h=4.0)
    for ax, chunk in zip(axes, chunks, strict=True):
        heights = [values[i] for i in chunk]
        bars = ax.bar(range(len(chunk)), heights, label="decode t/s ÷ roofline", color=PALETTE[0])
        for bar, i in zip(bars, chunk, strict=True):
            if bad[i]:
                bar.set_hatch("///")
                bar.set_edgecolor("white")
        texts = [f"{values[i]:.0f}% of {bounds[i]:.0f} t/s" + ("!" if bad[i] else "") for i in chunk]
        ax.bar_label(bars, labels=texts, fontsize=7)
        ax.axhline(100, color="0.3", linewidth=0.8, linestyle="--", label="bandwidth bound")
        ax.set_xticks(range(len(chunk)), [labels[i] for i in chunk], fontsize=8)
        ax.set_ylabel("% of read-bandwidth roofline")
        ax.set_ylim(0, max(110.0, max(values) * 1.15))
    axes[0].set_title("Decode vs memory-bandwidth bound (bytes per token ÷ GB/s)", fontsize=10)
    axes[0].legend(fontsize=8, loc="upper right")
    _caption(fig, rows, extra=["hatched, !: unreliable (see table)"] if any(bad) else [])
    return fig


def plot_serving(df: pd.DataFrame) -> Figure | None:
    """Throughput and latency (p50, p95) vs concurrent clients from "serving" rows."""
    if df.empty or "kind" not in df:
        return None
    rows = df[df["kind"] == "serving"]
    if rows.empty or "concurrency" not in rows or "tokens_per_s" not in rows:
        return None
    rows = _with_run_labels(rows)
    keys = varying_columns(rows, _SERIES_COLUMNS)
    colours = _Colours()
    fig, (ax_tp, ax_lat) = _new_figure(2)
    bars = hollow = False
    for label, part in _groups(rows, keys):
        colour = colours(label)
        drew_bars, drew_hollow = _line(ax_tp, part, "concurrency", "tokens_per_s", label, colour)
        bars, hollow = bars or drew_bars, hollow or drew_hollow
        for col, style in (("latency_p50_s", "-"), ("latency_p95_s", ":")):
            if col in part and part[col].notna().any():
                stats = part.groupby("concurrency")[col].median().sort_index()
                ax_lat.plot(stats.index.to_numpy(), stats.to_numpy(), style, marker="o", color=colour,
                            label=f"{label} {col.split('_')[1]}")  # fmt: skip
    ax_tp.set(title="llama-server throughput", xlabel="concurrent clients", ylabel="generated tokens/s")
    ax_lat.set(title="request latency", xlabel="concurrent clients", ylabel="seconds")
    for ax in (ax_tp, ax_lat):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _caption(fig, rows, bars=bars, extra=["hollow: unreliable"] if hollow else [])
    return fig


_PLOTTERS: dict[str, Callable[[pd.DataFrame], Figure | None]] = {
    "threads": plot_threads,
    "model_size": plot_model_size,
    "speedup": plot_speedup,
    "roofline": plot_roofline,
    "serving": plot_serving,
}


def make_figures(df: pd.DataFrame, names: Iterable[str] = PLOT_NAMES) -> dict[str, Figure]:
    """Every plot of `names` the rows in `df` support, by name (see `PLOT_NAMES`). Draws all the rows
    given: choose runs first with `select_runs`."""
    figures = {}
    for name in names:
        fig = _PLOTTERS[name](df)
        if fig is not None:
            figures[name] = fig
    return figures


# ---------------------------------------------------------------------------------------- files


class PlotFiles(list[Path]):
    """The files `render_plots` wrote (a list of paths), and ``runs``: a line per run they show."""

    runs: list[str]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def render_plots(
    results: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    runs: Sequence[str] = (),
    all_runs: bool = False,
    names: Sequence[str] = PLOT_NAMES,
    owner: str = "plot",
) -> PlotFiles:
    """Load the rows in `results` (a results dir, a .jsonl file or several), choose runs
    (`select_runs`: the latest by default; every run of the files when `results` names files), and
    write each plot of `names` they support to `out_dir` as ``<name>.png`` and ``<name>.svg``.

    Files belong to the task that wrote them (`owner`: "bench", "serve-bench", "plot"), listed with
    their hashes in ``<out_dir>/.owner-<owner>.json``. A plot this owner wrote before that the rows no
    longer support is removed, unless another task has since rewritten it; no other file is touched.
    """
    sources = [results] if isinstance(results, (str, os.PathLike)) else list(results)
    df = load_results(sources)
    files_named = all(Path(s).is_file() for s in sources)
    df = select_runs(df, runs, all_runs=all_runs or (files_named and not runs))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = PlotFiles()
    written.runs = describe_runs(df)
    figures = make_figures(df, names)
    for name, fig in figures.items():
        for ext in ("png", "svg"):
            path = out / f"{name}.{ext}"
            tmp = out / f".{name}.tmp.{ext}"
            metadata = {"Date": None} if ext == "svg" else None  # reproducible SVG: no timestamp
            fig.savefig(tmp, format=ext, dpi=DPI, metadata=metadata)
            os.replace(tmp, path)
            written.append(path)
    manifest = out / f".owner-{owner}.json"
    try:
        before = json.loads(manifest.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        before = {}
    for filename, digest in before.items():
        path = out / filename
        stale = Path(filename).stem in names and path not in written
        if stale and path.is_file() and _digest(path) == digest:
            path.unlink()
    tmp_manifest = out / f".owner-{owner}.json.tmp"
    tmp_manifest.write_text(json.dumps({"files": {p.name: _digest(p) for p in written}}, indent=1) + "\n")
    os.replace(tmp_manifest, manifest)
    log.debug("wrote %d plot files to %s from %s", len(written), out, "; ".join(written.runs) or "no rows")
    return written
