"""Benchmark results as tidy rows: what a row holds, how it is stored, loaded and compared.

One row per measurement, one JSON object per line in ``bench/results/*.jsonl`` (one file per run).
Rows of kind "llama-bench" keep llama-bench's own field names (``n_prompt``, ``n_gen``, ``n_threads``,
``avg_ts``, ``stddev_ts``, ``samples_ts``, ``model_type``, ``build_commit``, ``cpu_info``, ...) and add
identity columns, so a row read years later still says what was measured on what:

    run_id, date (UTC, ISO 8601), spec, sweep, rep    which run, and which repetition within it
    test                                              "pp512", "tg128" (llama-bench's names)
    config, kernels                                   "stock+avx2"; ours|stock (BITNET_KERNELS)
    cpu_variant, cpu_variant_requested                the ggml CPU library it loaded; what we forced
    repo_commit, repo_dirty, engine_pin, engine_build this repo's git commit; the llama.cpp pin; build
    cpu_model, cpu_arch, cpu_flags, cpu_cores         the host (bitnet.engine.cpu)
    model_name, model_path, n_layer, n_embd, n_ff,    the model, from its GGUF metadata
    n_vocab, n_head, n_head_kv, weight_format,
    head_format, model_bytes, head_bytes,
    bytes_per_token                                   weights read per generated token (see ModelInfo)
    bandwidth_gbs, roofline_ts, roofline_frac         decode rows only (bitnet.bench.roofline)
    load_avg_1m, spread, unreliable                   the host's 1-minute load average while it ran
                                                      (the higher of before and after), llama-bench's
                                                      own (max-min)/median, whether a rule of
                                                      `reliability` fired for the row

Other kinds share the file: "bandwidth" rows (the read-bandwidth probe: n_threads, bandwidth_gbs,
samples_gbs, buffer_bytes; mapped_file empty for fresh memory, else the model file whose cached pages were
read) and "serving" rows (llama-server under load: concurrency, tokens_per_s,
latency_p50_s, latency_p95_s, plus the identity columns). ref: llama.cpp scripts/compare-llama-bench.py
and pyperf's metadata for the idea of comparing only what varies.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bitnet.bench.spec import REPO_ROOT
from bitnet.errors import BenchmarkError

__all__ = [
    "DEFAULT_RESULTS_DIR",
    "LLAMA_BENCH_FIELDS",
    "ModelInfo",
    "ResultsWriter",
    "bench_rows",
    "default_baseline",
    "format_table",
    "inspect_model",
    "load_average",
    "load_results",
    "summarize",
    "bench_test_name",
    "cell_reliability",
    "reliability",
    "varying_columns",
]

log = logging.getLogger(__name__)

DEFAULT_RESULTS_DIR = REPO_ROOT / "bench" / "results"
SCHEMA_VERSION = 1

# The llama-bench JSON fields a row keeps (GPU/offload-only fields are dropped).
LLAMA_BENCH_FIELDS = (
    "build_commit", "build_number", "cpu_info", "backends", "model_filename", "model_type", "model_size",
    "model_n_params", "n_batch", "n_ubatch", "n_threads", "type_k", "type_v", "flash_attn", "repack",
    "n_prompt", "n_gen", "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
    "samples_ns", "samples_ts",
)  # fmt: skip

# Columns that tell measurements apart, in the order tables show them. `weight_format`/`head_format`
# are shown only when `model_name` does not already say them; `cpu_variant` only when `config` does not.
KEY_COLUMNS = (
    "cpu_model", "engine_pin", "repo_commit", "model_name", "weight_format", "head_format", "n_threads",
    "busy", "config", "cpu_variant",
)  # fmt: skip
# A peer engine (bitnet.bench.spec.Peer) runs the same model_name from its own file and format: there
# weight_format follows config.
_DERIVED = {
    "weight_format": ("model_name", "config"),
    "head_format": ("model_name", "config"),
    "cpu_variant": ("config",),
}

# When a measurement is not to be trusted (`reliability`): the machine was busier than it has cores
# (the 1-minute load average above LOAD_PER_CORE_LIMIT × cores: something else competed for them), or
# the repetitions disagree by more than SPREAD_LIMIT: (max - min) / median.
LOAD_PER_CORE_LIMIT = 1.0
SPREAD_LIMIT = 0.10


# ---------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelInfo:
    """What a GGUF file is, for the identity columns and the roofline.

    `bytes_per_token` is what generating one token reads: every tensor once, except that the token
    embedding is only looked up (one row) unless it is also the output head (tied, as in BitNet), in
    which case it counts once, as the head. `head_bytes` is that head's share.
    """

    arch: str
    n_layer: int | None
    n_embd: int | None
    n_ff: int | None
    n_vocab: int | None
    n_head: int | None
    n_head_kv: int | None
    weight_format: str | None
    head_format: str | None
    n_params: int
    model_bytes: int
    head_bytes: int
    bytes_per_token: int

    def as_row(self) -> dict[str, Any]:
        """The identity columns this contributes to a row."""
        row = asdict(self)
        row["model_arch"] = row.pop("arch")
        row.pop("n_params")  # llama-bench reports model_n_params itself
        return row


def inspect_model(path: str | os.PathLike[str]) -> ModelInfo:
    """Read shape, formats and bytes per token from a GGUF file's header (no tensor data is read).

    Raises:
        BenchmarkError: the file cannot be read, is not a GGUF file or its header is damaged.
    """
    from gguf import GGUFReader

    from bitnet.errors import ModelFileError
    from bitnet.models.formats.check import check_gguf

    try:
        # gguf-py's reader trusts the counts and lengths in the file (absurd ones exhausted memory) and
        # decodes strings lazily (bad UTF-8 raised later): it only sees headers our bounded check passed.
        check_gguf(path, semantic=False, scan=False)
        reader = GGUFReader(path)
        fields = {key: f.contents() for key, f in reader.fields.items() if not key.startswith("tokenizer.")}
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        n_tokens = None if tokens is None else len(tokens.data)
    except (ModelFileError, OSError, ValueError, KeyError, IndexError) as exc:
        raise BenchmarkError(f"cannot read {path} as a GGUF file: {exc}") from exc

    def field(key: str) -> Any:
        return fields.get(key)

    arch = str(field("general.architecture") or "unknown")
    tensors = {t.name: t for t in reader.tensors}
    types: dict[str, int] = {}
    for t in reader.tensors:
        if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) >= 2:
            name = t.tensor_type.name.lower()
            types[name] = types.get(name, 0) + int(t.n_bytes)
    embd, output = tensors.get("token_embd.weight"), tensors.get("output.weight")
    head = output if output is not None else embd
    total = sum(int(t.n_bytes) for t in reader.tensors)
    skipped = int(embd.n_bytes) if embd is not None and output is not None else 0
    n_vocab = field(f"{arch}.vocab_size") or n_tokens or None
    if n_vocab is None and embd is not None:
        n_vocab = int(embd.shape[-1])
    return ModelInfo(
        arch=arch,
        n_layer=_int(field(f"{arch}.block_count")),
        n_embd=_int(field(f"{arch}.embedding_length")),
        n_ff=_int(field(f"{arch}.feed_forward_length")),
        n_vocab=_int(n_vocab),
        n_head=_int(field(f"{arch}.attention.head_count")),
        n_head_kv=_int(field(f"{arch}.attention.head_count_kv")),
        weight_format=max(types, key=lambda k: types[k]) if types else None,
        head_format=None if head is None else head.tensor_type.name.lower(),
        n_params=sum(int(t.n_elements) for t in reader.tensors),
        model_bytes=total,
        head_bytes=0 if head is None else int(head.n_bytes),
        bytes_per_token=total - skipped,
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def bench_test_name(n_prompt: int, n_gen: int, n_depth: int = 0) -> str:
    """llama-bench's test names: "pp512", "tg128", "pp512+tg128", with "@d<depth>" for a depth."""
    parts = ([f"pp{n_prompt}"] if n_prompt else []) + ([f"tg{n_gen}"] if n_gen else [])
    name = "+".join(parts) or "none"
    return f"{name} @ d{n_depth}" if n_depth else name


# ---------------------------------------------------------------------------------------- storage


class ResultsWriter:
    """Append rows to one JSONL file so that it only ever holds complete lines.

    The first batch creates the file atomically (a temporary file in the same directory, renamed);
    later batches are appended as complete lines in a single ``write`` on an ``O_APPEND`` descriptor.
    A run that is interrupted keeps every measurement written before the interruption.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Write `rows` (JSON-serialisable after numpy/Path conversion; NaN becomes null)."""
        data = "".join(
            json.dumps(_clean(dict(row)), allow_nan=False, sort_keys=False) + "\n" for row in rows
        ).encode()
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        else:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        self.count += data.count(b"\n")


def _clean(value: Any) -> Any:
    """numpy scalars -> Python, Path -> str, non-finite floats -> None, recursively."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def load_results(paths_or_dir: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Load stored rows into a DataFrame (one row per measurement, a ``source`` column naming the file).

    Accepts a results directory (every ``*.jsonl`` in it, in name order, i.e. by date), one file, or
    several. A line that is not valid JSON (a run killed mid-write on a filesystem without atomic
    appends) is skipped with a warning. Missing paths raise `BenchmarkError`.
    """
    if isinstance(paths_or_dir, (str, os.PathLike)):
        paths_or_dir = [paths_or_dir]
    files: list[Path] = []
    for item in paths_or_dir:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(path.glob("*.jsonl")))
        elif path.is_file():
            files.append(path)
        else:
            raise BenchmarkError(
                f"no benchmark results at {path}: run `invoke bench` first or pass a .jsonl file."
            )
    records: list[dict[str, Any]] = []
    for path in files:
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("%s:%d is not a complete JSON row; skipping it", path, lineno)
                continue
            if isinstance(record, dict):
                record["source"] = path.name
                records.append(record)
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------------------------------- comparing


def default_baseline(configs: Sequence[str]) -> str | None:
    """The config ratios divide by: "stock" if it ran, else the first stock config, else the first."""
    if not configs:
        return None
    if "stock" in configs:
        return "stock"
    return next((c for c in configs if c.startswith("stock")), configs[0])


def bench_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The llama-bench rows of `df` that have a result, with a ``test`` column (a copy)."""
    if df.empty or "avg_ts" not in df:
        return pd.DataFrame()
    rows = df[df["kind"] == "llama-bench"] if "kind" in df else df
    rows = rows[rows["avg_ts"].notna()].copy()
    if "test" not in rows:
        rows["test"] = [
            bench_test_name(int(p), int(g)) for p, g in zip(rows["n_prompt"], rows["n_gen"], strict=True)
        ]
    return rows


def varying_columns(rows: pd.DataFrame, columns: Iterable[str], exclude: Sequence[str] = ()) -> list[str]:
    """The `columns` whose values differ between `rows` (missing counts as a value), minus `exclude`.

    A derived column (weight_format, head_format from model_name or a peer's config; cpu_variant from
    config) is left out when a column it derives from varies and already tells the rows apart the same way.
    """
    cols = [
        c for c in columns if c in rows and c not in exclude and rows[c].astype(str).nunique(dropna=False) > 1
    ]
    kept = []
    for col in cols:
        if any(
            parent in cols and rows.groupby(rows[parent].astype(str))[col].nunique(dropna=False).max() <= 1
            for parent in _DERIVED.get(col, ())
        ):
            continue
        kept.append(col)
    return kept


def load_average() -> float | None:
    """The host's 1-minute load average (os.getloadavg), or None where there is none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def relative_spread(values: Iterable[float]) -> float | None:
    """(max - min) / median of `values`; None for fewer than two finite values or a zero median."""
    finite = [f for f in map(_float, values) if f is not None]
    if len(finite) < 2:
        return None
    median = float(np.median(finite))
    return (max(finite) - min(finite)) / median if median > 0 else None


def reliability(load_avg: float | None, cores: int | None, spread: float | None) -> str:
    """The rules that make a measurement unreliable, as letters: "L" load, "S" spread ("" if none).

    "L": the 1-minute load average exceeded LOAD_PER_CORE_LIMIT × `cores` while it ran; "S": its
    relative spread (`relative_spread`) exceeds SPREAD_LIMIT. Unknown values fire no rule.
    """
    load, n, sp = _float(load_avg), _float(cores), _float(spread)
    rules = ""
    if load is not None and n is not None and load > LOAD_PER_CORE_LIMIT * n:
        rules += "L"
    if sp is not None and sp > SPREAD_LIMIT:
        rules += "S"
    return rules


def _float(value: Any) -> float | None:
    """`value` as a finite float, else None (missing, NaN, not a number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def cell_reliability(rows: pd.DataFrame, group: list[str], *, value: str = "avg_ts") -> pd.DataFrame:
    """Per group of `rows` (by the columns `group`, in order of first appearance): the group columns,
    ``spread`` of `value` (llama-bench's own samples for a single measurement), ``load_avg_1m`` (the
    highest recorded), ``unreliable_rules`` (`reliability`'s letters) and ``unreliable``."""
    keys = [rows[c] for c in group]
    if "samples_ts" in rows and value == "avg_ts":  # one measurement: its own samples, if it took several
        own = rows["samples_ts"].map(lambda s: relative_spread(s) if isinstance(s, list) else None)
    else:
        own = pd.Series([None] * len(rows), index=rows.index)
    grouped = rows.groupby(keys, sort=False, dropna=False)
    spread = grouped[value].agg(lambda v: np.nan if (r := relative_spread(v)) is None else r).astype(float)
    single = grouped[value].count() <= 1
    first_own = own.astype(float).groupby(keys, sort=False, dropna=False).first()
    spread = spread.where(~single, first_own)

    def highest(col: str) -> pd.Series:
        if col not in rows:
            return pd.Series(np.nan, index=spread.index)
        return pd.to_numeric(rows[col], errors="coerce").groupby(keys, sort=False, dropna=False).max()

    # a benchmark's own busy loop (bitnet.bench.busy, column busy_load) is the condition measured, not noise
    load, cores = highest("load_avg_1m") - highest("busy_load").fillna(0.0), highest("cpu_cores")
    triples = zip(load.to_numpy(), cores.to_numpy(), spread.to_numpy(), strict=True)
    rules = [reliability(lv, c, sp) for lv, c, sp in triples]
    out = (
        spread.index.to_frame(index=False, name=group)
        if len(group) > 1
        else pd.DataFrame({group[0]: spread.index})
    )
    out["spread"] = spread.to_numpy()
    out["load_avg_1m"] = load.to_numpy()
    out["unreliable_rules"] = rules
    out["unreliable"] = [bool(r) for r in rules]
    return out


def summarize(df: pd.DataFrame, *, baseline: str | None = None) -> pd.DataFrame:
    """Aggregate llama-bench rows: one line per (what varies) × test.

    Columns: the key columns that vary between rows, ``test``, ``n`` (measurements), ``median_ts``,
    ``mean_ts``, ``sd_ts`` (between repetitions; llama-bench's own stddev when there is one
    measurement), ``roofline_frac`` (median, decode rows), ``ratio`` = median / the baseline
    config's median for the same model, threads and test (only when ``config`` varies), ``ours_over`` =
    ours' median / this line's (when configs besides ours and one other ran, e.g. peers), and whether
    the cell can be trusted: ``spread`` ((max - min) / median of its repetitions; llama-bench's own
    samples for one measurement), ``load_avg_1m`` (the highest the rows recorded), ``unreliable_rules``
    (the letters of `reliability` that fired: L load, S spread) and ``unreliable`` (any fired).
    """
    rows = bench_rows(df)
    if rows.empty:
        return pd.DataFrame(columns=["test", "n", "median_ts", "mean_ts", "sd_ts", "ratio"])
    keys = varying_columns(rows, KEY_COLUMNS)
    configs = [c for c in keys if c in ("config", "cpu_variant")]
    others = [c for c in keys if c not in configs] + ["test"]
    group = [*others, *configs]  # the configs of one measurement side by side
    for col in group:
        if col != "n_threads":
            rows[col] = rows[col].astype(object).where(rows[col].notna(), "-").astype(str)
    grouped = rows.groupby(group, sort=False, dropna=False)
    out = grouped["avg_ts"].agg(n="count", median_ts="median", mean_ts="mean", sd_ts="std").reset_index()
    if "stddev_ts" in rows:  # one measurement: no spread between reps; llama-bench's own, if it had -r > 1
        own = rows["stddev_ts"].astype(float)
        if "samples_ts" in rows:
            own = own.where(rows["samples_ts"].map(lambda s: isinstance(s, list) and len(s) > 1))
        out["sd_ts"] = out["sd_ts"].where(
            out["n"] > 1, own.groupby([rows[c] for c in group], sort=False, dropna=False).first().to_numpy()
        )
    if "roofline_frac" in rows and rows["roofline_frac"].notna().any():
        out["roofline_frac"] = grouped["roofline_frac"].median().to_numpy()
    for col in ("max_rss_mb", "load_s"):  # memory and time to a loaded model (bitnet.bench.sweep)
        if col in rows and rows[col].notna().any():
            out[col] = grouped[col].median().to_numpy()
    cells = cell_reliability(rows, group)
    for col in ("spread", "load_avg_1m", "unreliable_rules", "unreliable"):
        out[col] = cells[col].to_numpy()
    # Order by the non-config keys (threads numerically, the rest as first measured), stable.
    order = [
        out[c].to_numpy()
        if c == "n_threads"
        else out[c].map({v: i for i, v in enumerate(dict.fromkeys(out[c]))})
        for c in reversed(others)
    ]
    out = out.iloc[np.lexsort(order)].reset_index(drop=True)
    if "config" in keys:
        seen = list(dict.fromkeys(rows["config"]))
        base = baseline if baseline in seen else default_baseline(seen)
        if baseline and baseline != base:
            out.attrs["note"] = f"baseline {baseline!r} did not run; ratios are against {base!r}"
        ref = out[out["config"] == base].set_index(others)["median_ts"]
        ref = ref[~ref.index.duplicated()]
        idx = pd.MultiIndex.from_frame(out[others]) if len(others) > 1 else pd.Index(out[others[0]])
        out["ratio"] = out["median_ts"].to_numpy() / ref.reindex(idx).to_numpy()
        out.attrs["baseline"] = base
        if "ours" in seen and len(seen) > 2:  # peers beside ours and stock: how far ahead of each are we
            mine = out[out["config"] == "ours"].set_index(others)["median_ts"]
            mine = mine[~mine.index.duplicated()]
            out["ours_over"] = mine.reindex(idx).to_numpy() / out["median_ts"].to_numpy()
    constant = [c for c in KEY_COLUMNS if c in rows and rows[c].notna().any() and rows[c].nunique() == 1]
    out.attrs["constant"] = {c: rows[c].dropna().iloc[0] for c in constant}
    return out


def format_table(df: pd.DataFrame, *, baseline: str | None = None) -> str:
    """A text table of `summarize(df)`: median t/s, mean ± sd, n, roofline %, ratio vs the baseline.

    Only the columns that vary are shown. A footnote says when "ours" and "stock" are the same code
    (an engine without our kernels yet) and which config is the baseline. A cell that `reliability`
    flags gets "!" and the letters of its rules in the first column, and a footnote per rule that fired.
    """
    summary = summarize(df, baseline=baseline)
    if summary.empty:
        return "(no llama-bench results)"
    table = pd.DataFrame()
    flagged = summary["unreliable"].any()
    if flagged:
        table["!"] = ["!" + r if r else "" for r in summary["unreliable_rules"]]
    for col in summary.columns:
        if col in ("n", "median_ts", "mean_ts", "sd_ts", "roofline_frac", "ratio", "spread", "load_avg_1m",
                   "unreliable_rules", "unreliable", "max_rss_mb", "load_s", "ours_over"):  # fmt: skip
            continue
        values = summary[col].str[:12] if col == "repo_commit" else summary[col]
        table[col.replace("n_threads", "threads")] = values
    table["n"] = summary["n"]
    table["t/s (median)"] = summary["median_ts"].map(lambda v: f"{v:.2f}")
    table["mean ± sd"] = [
        f"{m:.2f} ± {_fmt(s)}" for m, s in zip(summary["mean_ts"], summary["sd_ts"], strict=True)
    ]
    if "roofline_frac" in summary:
        table["% roofline"] = summary["roofline_frac"].map(lambda v: "-" if pd.isna(v) else f"{100 * v:.0f}%")
    if "max_rss_mb" in summary:
        table["peak RSS MB"] = summary["max_rss_mb"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}")
    if "load_s" in summary:
        table["load s"] = summary["load_s"].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")
    notes = []
    if "ratio" in summary:
        base = summary.attrs.get("baseline")
        table[f"vs {base}"] = summary["ratio"].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}x")
        notes.append(f"ratio = median t/s / median t/s of {base} (same model, threads, test)")
    if "ours_over" in summary:
        table["ours ÷ this"] = summary["ours_over"].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}x")
        notes.append("ours ÷ this = ours' median t/s / this line's (same model, threads, test)")
    if "max_rss_mb" in summary:
        notes.append("peak RSS MB: median peak resident memory of the llama-bench processes")
    if "load_s" in summary:
        notes.append(
            "load s: median wall time of a one-token llama-bench run (process start to exit: the model read "
            "or mapped, repacked, one token run)"
        )
    if "note" in summary.attrs:
        notes.append(f"note: {summary.attrs['note']}")
    if flagged:
        rules = "".join(summary["unreliable_rules"])
        if "L" in rules:
            worst = summary["load_avg_1m"].max()
            notes.append(
                f"!L unreliable: the 1-minute load average ({worst:.2f} at worst) exceeded the "
                f"{LOAD_PER_CORE_LIMIT:g} x cores limit while it ran: other work competed for the cores"
            )
        if "S" in rules:
            worst = summary["spread"].max()
            notes.append(
                f"!S unreliable: its repetitions spread (max - min) / median = {100 * worst:.0f}% at worst, "
                f"above {100 * SPREAD_LIMIT:.0f}%: rerun on a quieter machine or with more --reps"
            )
    same = ", ".join(
        f"{k.replace('n_threads', 'threads')}={str(v)[:12] if k == 'repo_commit' else v}"
        for k, v in summary.attrs["constant"].items()
    )
    header = [f"all rows: {same}"] if same else []
    return "\n".join([*header, table.to_string(index=False), *notes])


def _fmt(value: float) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.2f}"
