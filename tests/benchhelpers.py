"""Helpers for the benchmark tests: a scriptable fake llama-bench, hand-made rows, small GGUF files.

The fake llama-bench reads its argv like the real one (-m -p -n -t -r -o json), refuses a model that
does not start with the GGUF magic exactly as the real tool does (prints ``[``, "failed to load model"
on stderr, exit 1), and otherwise prints a JSON array with one entry per test whose ``avg_ts`` depends
on the kernels switch (so ours and stock are told apart), plus the ggml loader's stderr line. Each
call is appended to ``calls.jsonl`` next to it (argv and the two environment switches), in order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FAKE_TS = {"1": 150.0, "0": 100.0}  # avg_ts the fake reports with BITNET_KERNELS=1 / =0

_FAKE = r"""#!{python}
import json, os, sys
args = sys.argv[1:]
opt = {{args[i]: args[i + 1] for i in range(0, len(args) - 1, 2)}}
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls.jsonl"), "a") as fh:
    loops = 0  # bitnet.bench.busy's busy loops running now
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as c:
                loops += b"while True: pass" in c.read()
        except OSError:
            pass
    fh.write(json.dumps({{"argv": args, "kernels": os.environ.get("BITNET_KERNELS"),
                         "variant": os.environ.get("GGML_CPU_VARIANT"), "busy_loops": loops}}) + "\n")
sys.stderr.write("load_backend: loaded CPU backend from %s/libggml-cpu-%s.so\n"
                 % (here, os.environ.get("GGML_CPU_VARIANT") or "avx2"))
model = opt["-m"]
with open(model, "rb") as fh:
    magic = fh.read(4)
if magic != b"GGUF":
    sys.stdout.write("[\n")
    sys.stderr.write("llama_bench: error: failed to load model '%s'\n" % model)
    sys.exit(1)
if {garbage!r}:
    sys.stdout.write("warming up... done\n")
    sys.exit(0)
ts = {ts!r}[os.environ.get("BITNET_KERNELS", "1")]
tests = [(int(opt["-p"]), 0), (0, int(opt["-n"]))]
out = []
for p, g in tests:
    if not (p or g):
        continue
    ns = int(1e9 * (p or g) / ts)
    out.append({{"build_commit": "fake", "build_number": 1, "cpu_info": "Fake CPU", "backends": "CPU",
                "model_filename": model, "model_type": "bitnet ?B TQ2_0", "model_size": 1000,
                "model_n_params": 2000, "n_batch": 2048, "n_ubatch": 512, "n_threads": int(opt["-t"]),
                "type_k": "f16", "type_v": "f16", "flash_attn": -1, "repack": True, "n_prompt": p, "n_gen": g,
                "n_depth": 0, "test_time": "2026-01-01T00:00:00Z", "avg_ns": ns, "stddev_ns": 0,
                "avg_ts": ts, "stddev_ts": 0.0, "samples_ns": [ns], "samples_ts": [ts]}})
sys.stdout.write(json.dumps(out, indent=2) + "\n")
"""


def write_fake_llama_bench(
    build_dir: Path, *, garbage: bool = False, ts: dict[str, float] | None = None
) -> Path:
    """Write the fake llama-bench into ``<build_dir>/bin`` (with two fake CPU variant libraries); `ts`
    replaces FAKE_TS (avg_ts by BITNET_KERNELS, "1" when unset)."""
    bin_dir = build_dir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "llama-bench"
    path.write_text(_FAKE.format(python=sys.executable, ts=ts or FAKE_TS, garbage=garbage))
    path.chmod(0o755)
    for variant in ("sse42", "avx2"):
        (bin_dir / f"libggml-cpu-{variant}.so").write_bytes(b"\x7fELF fake")
    return path


def is_load_probe(call: dict[str, Any]) -> bool:
    """True for bitnet.bench.sweep's load probe (``-p 1 -n 0``), which precedes each measurement."""
    argv = call["argv"]
    return argv[argv.index("-p") + 1] == "1" and argv[argv.index("-n") + 1] == "0"


def fake_calls(build_dir: Path, *, probes: bool = False) -> list[dict[str, Any]]:
    """Every call the fake llama-bench recorded, in order; load probes only with `probes`."""
    log = build_dir / "bin" / "calls.jsonl"
    if not log.exists():
        return []
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return calls if probes else [c for c in calls if not is_load_probe(c)]


def bench_row(**fields: Any) -> dict[str, Any]:
    """A llama-bench row as bitnet.bench.sweep stores it, with defaults for what a test ignores."""
    row: dict[str, Any] = {
        "kind": "llama-bench",
        "run_id": "r1",
        "date": "2026-01-01T00:00:00Z",
        "rep": 0,
        "config": "ours",
        "kernels": "ours",
        "cpu_variant": "avx2",
        "cpu_variant_requested": "auto",
        "cpu_model": "Fake CPU",
        "engine_pin": "llama-cpp-python==0.3.36",
        "repo_commit": "abc",
        "model_name": "tiny",
        "model_n_params": 3_000_000,
        "weight_format": "tq2_0",
        "head_format": "f16",
        "n_threads": 2,
        "n_prompt": 0,
        "n_gen": 128,
        "avg_ts": 10.0,
        "stddev_ts": 0.0,
        "roofline_frac": None,
        "roofline_ts": None,
    }
    row.update(fields)
    if "test" not in fields:
        row["test"] = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
    return row


def write_bitnet_gguf(path: Path, *, tied: bool = True, n_embd: int = 256, n_vocab: int = 512) -> None:
    """A minimal 'bitnet' GGUF (1 layer, TQ2_0 linears, F16 embedding, optional untied F16 output)."""
    from gguf import GGMLQuantizationType, GGUFWriter

    from bitnet.models.formats.packing import random_tq2_0

    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), "bitnet")
    w.add_block_count(1)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_embd)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_vocab_size(n_vocab)
    w.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, n_embd)).astype(np.float16))
    if not tied:
        w.add_tensor("output.weight", rng.standard_normal((n_vocab, n_embd)).astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        packed = random_tq2_0(rng, n_embd, n_embd)
        w.add_tensor(f"blk.0.{name}.weight", packed, raw_dtype=GGMLQuantizationType.TQ2_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
