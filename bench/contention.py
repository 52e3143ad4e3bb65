"""Decode throughput with and without another process busy on the host: engine variants alternated.

    python bench/contention.py --model M [--threads 2] [--gen 64] [--rounds 10]
        [--variant NAME=ENV[,ENV...][@BIN_DIR] ...] [--variant-model NAME=PATH] [--variant-args NAME=ARGS]
        [--busy idle,pinned,bursty,free] [--out rows.jsonl]

Each round runs every (busy condition, variant) once, the variants in a rotated order, with one
`llama-bench -p 0 -n GEN -r 1` each (it runs one warm-up pass first). Busy conditions:
  idle    nothing else started;
  pinned  `python -c "while True: pass"` in its own session (setsid: its own autogroup, like any other
          program on the host), pinned to the last core with taskset;
  bursty  like pinned, but busy for 8 ms then asleep for 8 ms (half a core in bursts, as a browser tab
          redrawing at 60 frames a second takes it);
  free    the same as pinned, not pinned;
  pinned-session, free-session: the same in our own session (autogroup), like a child of the benchmark.
The busy process starts before and stops after the condition's runs of the round. Prints the median
t/s per (condition, variant) and the ratios to idle and to the first variant; --out keeps every row.
Variants default to ours (guided chunks), ours with BITNET_SPLIT=static, and stock (BITNET_KERNELS=0).
Never asserts times: a tool for A/B runs, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bitnet.bench.busy import BURSTS_ARGV, LOOP_ARGV  # the same loops as invoke bench --busy

REPO = Path(__file__).resolve().parent.parent


def parse_variant(text: str, default_bin: Path) -> tuple[str, dict[str, str], Path]:
    name, _, rest = text.partition("=")
    rest, _, bin_dir = rest.partition("@")
    env = dict(kv.split(":", 1) for kv in rest.split(",") if kv) if rest else {}
    return name, env, Path(bin_dir) if bin_dir else default_bin


def start_hog(mode: str) -> subprocess.Popen[bytes] | None:
    if mode == "idle":
        return None
    argv = BURSTS_ARGV if mode.startswith("bursty") else LOOP_ARGV
    if mode.startswith(("pinned", "bursty")):
        argv = ["taskset", "-c", str((os.cpu_count() or 1) - 1), *argv]
    if not mode.endswith("-session"):
        argv = ["setsid", *argv]
    hog = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return hog


def stop_hog(hog: subprocess.Popen[bytes] | None) -> None:
    if hog is not None:
        hog.send_signal(signal.SIGTERM)
        hog.wait(timeout=10)


def run_one(
    bin_dir: Path, env: dict[str, str], model: str, threads: int, gen: int, extra: list[str]
) -> float:
    argv = [str(bin_dir / "llama-bench"), "-m", model, "-p", "0", "-n", str(gen), "-t", str(threads),
            "-r", "1", "-o", "json", *extra]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    if out.returncode != 0:
        raise SystemExit(f"llama-bench failed ({out.returncode}): {out.stderr[-1500:]}")
    return float(json.loads(out.stdout)[0]["avg_ts"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--bin-dir", default=str(REPO / "build" / "bin"))
    ap.add_argument("--variant", action="append", default=[], help="NAME=ENV:VAL[,ENV:VAL][@BIN_DIR]")
    ap.add_argument("--variant-model", action="append", default=[], help="NAME=PATH: its own model file")
    ap.add_argument("--variant-args", action="append", default=[], help="NAME=ARGS: more llama-bench args")
    ap.add_argument("--busy", default="idle,pinned")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the busy process on the way out too
    default_bin = Path(a.bin_dir)
    variants = [parse_variant(v, default_bin) for v in a.variant] or [
        ("ours", {}, default_bin),
        ("ours-static", {"BITNET_SPLIT": "static"}, default_bin),
        ("stock", {"BITNET_KERNELS": "0"}, default_bin),
    ]
    models = dict(v.split("=", 1) for v in a.variant_model)
    extras = {k: shlex.split(v) for k, v in (x.split("=", 1) for x in a.variant_args)}
    modes = a.busy.split(",")
    rows: list[dict[str, object]] = []
    out = open(a.out, "a") if a.out else None  # noqa: SIM115
    for r in range(a.rounds):
        for mode in modes:
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            hog = start_hog(mode)
            try:
                for name, env, bin_dir in order:
                    load = os.getloadavg()[0]
                    model = models.get(name, a.model)
                    ts = run_one(bin_dir, env, model, a.threads, a.gen, extras.get(name, []))
                    row = {"round": r, "busy": mode, "variant": name, "tg_ts": round(ts, 3), "load1": load}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if out:
                        out.write(json.dumps(row) + "\n")
                        out.flush()
            finally:
                stop_hog(hog)
    print(
        f"\nmedians of {a.rounds} rounds, tg{a.gen}, {a.threads} threads (t/s; ratio to idle; ratio to "
        f"{variants[0][0]})"
    )
    med = {
        (m, v[0]): statistics.median(
            float(x["tg_ts"]) for x in rows if x["busy"] == m and x["variant"] == v[0]
        )
        for m in modes
        for v in variants
    }
    print("| busy | " + " | ".join(v[0] for v in variants) + " |")
    print("|---|" + "---|" * len(variants))
    for m in modes:
        cells = []
        for v in variants:
            x = med[(m, v[0])]
            cell = f"{x:.1f}"
            if "idle" in modes and m != "idle":
                cell += f" ({x / med[('idle', v[0])]:.0%} of idle)"
            if v is not variants[0]:
                cell += f" [{med[(m, variants[0][0])] / x:.2f}x]"
            cells.append(cell)
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
