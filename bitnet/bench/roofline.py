"""Read-bandwidth roofline for decode: bytes read per token ÷ memory bandwidth bounds tokens/s.

Generating one token reads every weight once (bitnet.bench.results.ModelInfo.bytes_per_token), and at
batch 1 there is too little arithmetic per byte for compute to matter, so decode t/s cannot exceed
``bandwidth / bytes_per_token``. The probe measures the bandwidth the way decode uses it: N readers
(processes) each stream through their own slice of a buffer much larger than the last-level cache,
several passes, median.

It reads, never writes, the buffer during a pass: a read-only stream is what weights see. Numbers are
a little below STREAM-style copy figures; the point is a consistent bound on the same machine, taken
in the same run as the measurement. ref: DESIGN.md "Numbers that set the bar" (~20 GB/s, 2 threads).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Bandwidth", "add_roofline", "llc_bytes", "probe_bandwidth"]

log = logging.getLogger(__name__)

_MIN_BUFFER = 256 * 1024**2  # bytes; never smaller than this, whatever the cache
_MAX_BUFFER = 1024**3
MEANINGFUL_LLC_MULTIPLE = 4  # roofline only for models reading >= 4 x the LLC per token
_DEFAULT_LLC = 32 * 1024**2
_LLC_MULTIPLE = 16  # buffer >= 16 × the last-level cache, so the cache holds < 7 % of it


@dataclass(frozen=True)
class Bandwidth:
    """A read-bandwidth measurement: median and per-pass GB/s (10^9 bytes/s) with N threads."""

    gbs: float
    samples_gbs: tuple[float, ...]
    n_threads: int
    buffer_bytes: int

    def as_row(self) -> dict[str, Any]:
        """The fields of a "bandwidth" result row."""
        return {
            "kind": "bandwidth",
            "n_threads": self.n_threads,
            "bandwidth_gbs": self.gbs,
            "samples_gbs": list(self.samples_gbs),
            "buffer_bytes": self.buffer_bytes,
        }


def llc_bytes(sys_cpu: str | os.PathLike[str] = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Size of the largest cache of CPU 0 in bytes, from sysfs; None where sysfs does not say."""
    best = None
    for size_file in Path(sys_cpu).glob("index*/size"):
        try:
            text = size_file.read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            size = int(digits) * scale
            best = size if best is None else max(best, size)
    return best


def default_buffer_bytes() -> int:
    """16 × the last-level cache, at least 256 MiB, at most 1 GiB."""
    llc = llc_bytes() or 32 * 1024**2
    return max(_MIN_BUFFER, min(_MAX_BUFFER, _LLC_MULTIPLE * llc))


def probe_bandwidth(n_threads: int, *, buffer_bytes: int | None = None, passes: int = 7) -> Bandwidth:
    """Measure read bandwidth with `n_threads` readers summing their own slice of a large buffer.

    Readers are processes, not threads: numpy's reductions do not run in parallel from Python threads
    (two threads summing two arrays took twice as long as one here), so a thread probe reported one
    core's bandwidth (~33 GB/s) where two cores read ~55 GB/s (the kernels' C probe, same machine).
    Each reader fills its slice first (pages resident), then every pass starts all readers at a barrier
    and times until the last one finishes. The first pass is a warm-up. Returns the median of `passes`.
    """
    if n_threads <= 0 or passes <= 0:
        raise ValueError(f"n_threads and passes must be positive, got {n_threads} and {passes}")
    size = buffer_bytes or default_buffer_bytes()
    words = max(size // 8, n_threads)
    ctx: Any = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    start, done = ctx.Barrier(n_threads + 1), ctx.Barrier(n_threads + 1)
    counts = [words // n_threads + (1 if i < words % n_threads else 0) for i in range(n_threads)]
    readers = [ctx.Process(target=_reader, args=(n, passes + 1, start, done), daemon=True) for n in counts]
    for r in readers:
        r.start()
    samples = []
    try:
        for i in range(passes + 1):
            start.wait(timeout=600)
            t0 = time.perf_counter()
            done.wait(timeout=600)
            seconds = max(time.perf_counter() - t0, 1e-9)
            if i:
                samples.append(words * 8 / seconds / 1e9)
    finally:
        for r in readers:
            r.join(timeout=60)
            if r.is_alive():
                r.kill()
    result = Bandwidth(
        gbs=statistics.median(samples), samples_gbs=tuple(samples), n_threads=n_threads, buffer_bytes=size
    )
    log.info("read bandwidth with %d reader(s): %.1f GB/s (%d MiB buffer)", n_threads, result.gbs, size >> 20)
    return result


def _reader(n_words: int, passes: int, start: Any, done: Any) -> None:
    data = np.ones(n_words, dtype=np.float64)
    for _ in range(passes):
        start.wait(timeout=600)
        float(data.sum())  # a reduction: reads every byte once
        done.wait(timeout=600)


def add_roofline(row: MutableMapping[str, Any], bandwidth: Bandwidth | None) -> None:
    """Set ``bandwidth_gbs``, ``roofline_ts`` and ``roofline_frac`` on a decode (tg) row.

    Rows that are not pure decode (n_gen == 0 or a prompt in the same test), rows without
    ``bytes_per_token``, no bandwidth, or a model whose bytes per token are under
    `MEANINGFUL_LLC_MULTIPLE` × the last-level cache (the tiny test model: "3 % of roofline" meant
    nothing) leave the fields None.
    """
    row["bandwidth_gbs"] = row["roofline_ts"] = row["roofline_frac"] = None
    bytes_per_token = row.get("bytes_per_token")
    if bandwidth is None or not bytes_per_token or not row.get("n_gen") or row.get("n_prompt"):
        return
    if float(bytes_per_token) < MEANINGFUL_LLC_MULTIPLE * (llc_bytes() or _DEFAULT_LLC):
        return  # a model that (nearly) fits in the cache is not bound by memory bandwidth at all
    bound = bandwidth.gbs * 1e9 / float(bytes_per_token)
    row["bandwidth_gbs"] = bandwidth.gbs
    row["roofline_ts"] = bound
    avg = row.get("avg_ts")
    row["roofline_frac"] = None if avg is None else float(avg) / bound
