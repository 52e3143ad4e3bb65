"""Summarize bench_gemv --jsonl rows into the markdown tables of kernels/ternary/README.md.

    python kernels/ternary/bench/summarize.py rows.jsonl

Rows: one per measurement (variant, impl, op, layout, rows, k, n_threads, median_s, gbps, gops, run).
Several runs of the same configuration are reduced to the median of their medians; ratio columns
compare against stock ggml (impl "ggml", same variant), the scalar variant, and the read roofline
measured at the start of the same run with the same thread count (this VM's bandwidth drifts).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    roof: dict[int, list[float]] = defaultdict(list)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["op"] == "read":
            if r["variant"] != "scalar":
                roof[r["n_threads"]].append(r["gbps"])
            continue
        key = (r["op"], r["variant"], r["impl"], r["layout"], r["rows"], r["k"], r["n_threads"])
        groups[key].append(r)
    # (GB/s, GOPS, % of the read roofline measured in the same run with the same threads)
    med = {k: (statistics.median(x["gbps"] for x in v), statistics.median(x["gops"] for x in v),
               statistics.median(100 * x["gbps"] / x["roofline_gbps"] for x in v)) for k, v in groups.items()}
    roofline = {t: statistics.median(v) for t, v in roof.items()}
    print("read roofline (plain read of the weight pool; min / median / max over runs):",
          ", ".join(f"{t} thr {min(roof[t]):.1f} / {g:.1f} / {max(roof[t]):.1f} GB/s"
                    for t, g in sorted(roofline.items())))
    threads = sorted(roofline)
    for op in ("gemv", "gemm"):
        unit, idx = ("GB/s", 0) if op == "gemv" else ("GOPS", 1)
        what = " of weight bytes (each layout's own size)" if op == "gemv" else ""
        print(f"\n### {op.upper()}: {unit}{what}")
        cols = ["shape", "layout", "variant"]
        for t in threads:
            cols += [f"ours t={t}", f"stock t={t}", f"ours/stock t={t}"]
            if op == "gemv":
                cols.append(f"% roofline t={t}")
        cols.append("ours/scalar t=1")
        print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        keys = sorted({k[1:6] for k in med if k[0] == op and k[2] == "ours" and k[1] != "scalar"},
                      key=lambda k: (k[0], k[2], k[3], k[4]))
        for variant, _, layout, rows, k in keys:
            cells = [f"{rows}x{k}", layout, variant]
            for t in threads:
                ours = med.get((op, variant, "ours", layout, rows, k, t))
                stock = med.get((op, variant, "ggml", layout, rows, k, t))
                cells += [f"{ours[idx]:.1f}" if ours else "-", f"{stock[idx]:.1f}" if stock else "-",
                          f"{ours[idx] / stock[idx]:.2f}x" if ours and stock else "-"]
                if op == "gemv":
                    cells.append(f"{ours[2]:.0f}%" if ours else "-")
            ours1 = med.get((op, variant, "ours", layout, rows, k, 1))
            scalar1 = med.get((op, "scalar", "ours", layout, rows, k, 1))
            cells.append(f"{ours1[idx] / scalar1[idx]:.0f}x" if ours1 and scalar1 else "-")
            print("| " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main(sys.argv[1])
