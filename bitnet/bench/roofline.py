"""Read-bandwidth roofline for decode: bytes read per token ÷ memory bandwidth bounds tokens/s.

Generating one token reads every weight once (bitnet.bench.results.ModelInfo.bytes_per_token), and at
batch 1 there is too little arithmetic per byte for compute to matter, so decode t/s cannot exceed
``bandwidth / bytes_per_token``. The probe measures the bandwidth the way decode uses it: N readers
(processes) each stream through their own slice of a buffer much larger than the last-level cache,
several passes, median.

It reads, never writes, the buffer during a pass: a read-only stream is what weights see. Numbers are
a little below STREAM-style copy figures; the point is a consistent bound on the same machine, taken
in the same run as the measurement. ref: DESIGN.md "Numbers that set the bar" (~20 GB/s, 2 threads).

With ``path`` the probe streams a file's cached pages through a shared read-only mapping instead (the
pages llama.cpp maps the model from, advised for huge pages as our loader does). On a machine they are
the same memory; on some VMs they are not: on the 2-core Firecracker VMs of 2026-12-07 a model file's
page-cache pages read at 15.7-17.8 GB/s where fresh memory read at 27-28 (2 threads), and decode followed
(llama-bench tg64 13.3 t/s mapped vs 20.8 with `--load-mode none`, stock 7.6 vs 11.3), changing with
where the file happened to be cached. `mapped_read_note` turns such a gap into a warning.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Bandwidth",
    "add_roofline",
    "llc_bytes",
    "mapped_probe_meaningful",
    "mapped_read_note",
    "probe_bandwidth",
    "probe_model_pages",
]

log = logging.getLogger(__name__)

_MIN_BUFFER = 256 * 1024**2  # bytes; never smaller than this, whatever the cache
_MAX_BUFFER = 1024**3
MEANINGFUL_LLC_MULTIPLE = 4  # roofline only for models reading >= 4 x the LLC per token
_DEFAULT_LLC = 32 * 1024**2
_LLC_MULTIPLE = 16  # buffer >= 16 × the last-level cache, so the cache holds < 7 % of it
MAPPED_LLC_MULTIPLE = 2  # the mapped-pages probe: files (up to the 1 GiB it reads) >= 2 x the cache
SLOW_MAPPED_FRACTION = 0.8  # mapped pages read below this share of fresh memory: worth a warning


@dataclass(frozen=True)
class Bandwidth:
    """A read-bandwidth measurement: median and per-pass GB/s (10^9 bytes/s) with N threads."""

    gbs: float
    samples_gbs: tuple[float, ...]
    n_threads: int
    buffer_bytes: int
    mapped_file: str | None = None  # None: fresh anonymous memory; else the file whose mapped pages were read

    def as_row(self) -> dict[str, Any]:
        """The fields of a "bandwidth" result row."""
        return {
            "kind": "bandwidth",
            "n_threads": self.n_threads,
            "bandwidth_gbs": self.gbs,
            "samples_gbs": list(self.samples_gbs),
            "buffer_bytes": self.buffer_bytes,
            "mapped_file": self.mapped_file,
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


def probe_bandwidth(
    n_threads: int,
    *,
    buffer_bytes: int | None = None,
    passes: int = 7,
    path: str | os.PathLike[str] | None = None,
) -> Bandwidth:
    """Measure read bandwidth with `n_threads` readers summing their own slice of a large buffer.

    Readers are processes, not threads: numpy's reductions do not run in parallel from Python threads
    (two threads summing two arrays took twice as long as one here), so a thread probe reported one
    core's bandwidth (~33 GB/s) where two cores read ~55 GB/s (the kernels' C probe, same machine).
    Each reader fills its slice first (pages resident), then every pass starts all readers at a barrier
    and times until the last one finishes. The first pass is a warm-up. Returns the median of `passes`.
    With `path`, the buffer is the first `buffer_bytes` (default: up to 1 GiB) of that file, mapped
    read-only and shared; the warm-up pass reads it into the page cache if it is not there yet.
    """
    if n_threads <= 0 or passes <= 0:
        raise ValueError(f"n_threads and passes must be positive, got {n_threads} and {passes}")
    if path is not None:
        try:
            file_bytes = os.path.getsize(path)
        except OSError as exc:
            raise ValueError(f"cannot probe the mapped pages of {path}: {exc.strerror or exc}") from exc
        size = min(buffer_bytes or _MAX_BUFFER, file_bytes)
        if size < 8 * n_threads:
            raise ValueError(f"{path} is too small to probe ({file_bytes} bytes)")
        try:  # here, not only in the readers: a reader that fails would leave the others at the barrier
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ):
                pass
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot probe the mapped pages of {path}: {exc}") from exc
    else:
        size = buffer_bytes or default_buffer_bytes()
    words = max(size // 8, n_threads)
    ctx: Any = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    start, done = ctx.Barrier(n_threads + 1), ctx.Barrier(n_threads + 1)
    counts = [words // n_threads + (1 if i < words % n_threads else 0) for i in range(n_threads)]
    firsts = [sum(counts[:i]) for i in range(n_threads)]
    source = None if path is None else os.fspath(path)
    readers = [
        ctx.Process(target=_reader, args=(n, first, source, passes + 1, start, done), daemon=True)
        for n, first in zip(counts, firsts, strict=True)
    ]
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
        gbs=statistics.median(samples),
        samples_gbs=tuple(samples),
        n_threads=n_threads,
        buffer_bytes=size,
        mapped_file=source,
    )
    log.info(
        "read bandwidth with %d reader(s): %.1f GB/s (%d MiB of %s)",
        n_threads,
        result.gbs,
        size >> 20,
        "fresh memory" if path is None else f"{path}, mapped",
    )
    return result


def _reader(n_words: int, first: int, path: str | None, passes: int, start: Any, done: Any) -> None:
    if path is None:
        data = np.ones(n_words, dtype=np.float64)
    else:
        with open(path, "rb") as f:
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            mapping.madvise(mmap.MADV_HUGEPAGE)  # as the engine's loader advises the model mapping
        # integers: the file's bytes as floats would include NaNs and subnormals (slow adds on some CPUs)
        data = np.frombuffer(mapping, dtype=np.uint64, count=n_words, offset=first * 8)
    for _ in range(passes):
        start.wait(timeout=600)
        data.sum()  # a reduction: reads every byte once (uint64 sums wrap, which is fine here)
        done.wait(timeout=600)


def mapped_probe_meaningful(path: str | os.PathLike[str]) -> bool:
    """True for a file of at least `MAPPED_LLC_MULTIPLE` × the last-level cache: the probe streams up to
    1 GiB of it over and over, and a stream over twice the cache finds none of it there (each line is
    evicted before the stream comes back to it), while a smaller file's pages stay in the cache between
    passes, which says nothing about where it sits in memory. (Looser than the roofline's 4 ×: the 2-core
    VMs report a 480 MiB L3, and the 2B model's 1.2 GB would not count.)"""
    try:
        size = os.path.getsize(path)
    except OSError:
        return True  # let the probe say what is wrong with it
    return min(size, _MAX_BUFFER) >= MAPPED_LLC_MULTIPLE * (llc_bytes() or _DEFAULT_LLC)


def probe_model_pages(n_threads: int, model: str | os.PathLike[str]) -> Bandwidth | None:
    """`probe_bandwidth` through `model`'s mapped pages (5 passes), None where that would mean nothing
    (`mapped_probe_meaningful`). Raises ValueError for a file it cannot map."""
    if not mapped_probe_meaningful(model):
        return None
    return probe_bandwidth(n_threads, path=model, passes=5)


def mapped_read_note(fresh: Bandwidth, mapped: Bandwidth) -> str | None:
    """A warning when a model file's mapped pages read clearly slower than fresh memory, else None."""
    if fresh.gbs <= 0 or mapped.gbs >= SLOW_MAPPED_FRACTION * fresh.gbs:
        return None
    name = Path(mapped.mapped_file or "?").name
    share = 100 * mapped.gbs / fresh.gbs
    return (
        f"{name}'s cached pages read at {mapped.gbs:.1f} GB/s, {share:.0f} % of fresh memory "
        f"({fresh.gbs:.1f} GB/s, {fresh.n_threads} thread(s)): decode on this host depends on where in "
        "memory the file was cached (seen on VMs whose memory is backed unevenly). Compare configs within "
        "one run (they read the same pages); to read the weights into fresh memory instead, run the engine "
        "with `--load-mode none` (run_inference.py ... --extra-args --load-mode none; a slower load)"
    )


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
