"""Alternated llama-bench rounds of engine variants, each run kept only if the host was otherwise idle.

    python bench/ab_rounds.py --model M --rounds 8 --args "-t 2 -p 0 -n 64 -r 1 -fa 1" \\
        --variant stock=BITNET_KERNELS:0 --variant ours= \
        --variant old=BITNET_FUSE:0,BITNET_ATTN:0,BITNET_LAYOUT:tk2

Every round runs each variant once (A B C A B C ...). A run counts only if other processes used less than
--others of one core meanwhile (all CPUs' busy time from /proc/stat minus the run's own CPU time);
otherwise it is redone (up to 30 times). Prints each round and the medians with ratios to the first
variant; the ratios are what to quote (this VM's bandwidth changes by 1.5x within minutes). Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import time
from pathlib import Path


def _busy_seconds() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--args", default="-t 2 -p 0 -n 64 -r 1 -fa 1", help="llama-bench arguments")
    ap.add_argument("--bin-dir", default=str(Path(__file__).resolve().parent.parent / "build" / "bin"))
    ap.add_argument("--variant", action="append", default=[], help="NAME=ENV:VAL[,ENV:VAL]")
    ap.add_argument("--others", type=float, default=0.10, help="max other load, in cores")
    a = ap.parse_args()
    variants = []
    for spec in a.variant or ["stock=BITNET_KERNELS:0", "ours="]:
        name, _, rest = spec.partition("=")
        variants.append((name, dict(kv.split(":", 1) for kv in rest.split(",") if kv)))
    ts: dict[str, list[float]] = {n: [] for n, _ in variants}
    redone = 0
    for r in range(a.rounds):
        for name, env in variants:
            for _ in range(30):
                b0, c0, t0 = _busy_seconds(), _children_cpu(), time.time()
                out = subprocess.run(
                    [f"{a.bin_dir}/llama-bench", "-m", a.model, "-o", "jsonl", *a.args.split()],
                    env={**os.environ, **env}, capture_output=True, text=True, check=False,
                )  # fmt: skip
                others = ((_busy_seconds() - b0) - (_children_cpu() - c0)) / (time.time() - t0)
                rows = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
                if not rows:
                    raise SystemExit(f"llama-bench failed for {name}:\n{out.stderr[-2000:]}")
                if others < a.others:
                    break
                redone += 1
                time.sleep(2)
            ts[name].append(rows[0]["avg_ts"])
        print(f"round {r}: " + "  ".join(f"{n} {v[-1]:.2f}" for n, v in ts.items()), flush=True)
    base = statistics.median(ts[variants[0][0]])
    for n, v in ts.items():
        m = statistics.median(v)
        spread = f"min {min(v):.2f}, max {max(v):.2f}"
        print(f"{n}: median {m:.2f} t/s ({spread}), {m / base:.3f}x {variants[0][0]}")
    print(f"runs redone because other processes were busy: {redone}")


if __name__ == "__main__":
    main()
