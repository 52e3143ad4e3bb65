"""Op-level test of our ggml-cpu buffer type CPU_BITNET (kernels/ternary/ggml/ternary-buft.cpp).

tests/ops/test_bitnet_ops.cpp builds one MUL_MAT / GET_ROWS graph with the weight in CPU_BITNET and the
same graph with it in the plain CPU buffer, computes both on the engine's CPU backend with 1, 2 and 3
threads, and compares each with the other and with a double-precision reference (NMSE; thresholds and
why in the .cpp). Here: compile it against the engine's libggml and run it on every CPU variant this
host can run, with our kernels on (BITNET_KERNELS=1) and off (=0: CPU_BITNET must then be absent, and
stock ggml is checked against the reference alone).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bitnet.engine import build as engine
from bitnet.engine.cpu import detect_cpu

pytestmark = pytest.mark.engine

SRC = Path(__file__).resolve().parent / "ops" / "test_bitnet_ops.cpp"
FUSED_SRC = Path(__file__).resolve().parent / "ops" / "test_bitnet_fused.cpp"

# Lines the program prints per run, one per (case, thread count): per ternary type 35 MUL_MAT shapes
# (K=256: 3 row counts x 6 column counts + 1 with 512 columns; K=2560: 12; K=6912: 5), 2 types; the fp16
# head (in the plain buffer, by both of its names): MUL_MAT with 1, 4 and 7 columns + GET_ROWS; all x 3
# thread counts.
N_TERNARY = 2 * 36 * 3
N_HEAD_MUL_MAT = 2 * 3 * 3
N_CASES = N_TERNARY + N_HEAD_MUL_MAT + 2 * 3
CASE = re.compile(r"^  (?P<name>(?:MUL_MAT|GET_ROWS)\(\S+\)(?:\[\S+\])?):.*  (?P<verdict>OK|FAIL)\b", re.M)

_CPU = detect_cpu()
_VARIANTS = engine.load_pin().variants_for(_CPU.arch)


def _head(variant: engine.Variant) -> str:
    """What CPU_BITNET does with the fp16 head here: our fp16 GEMV needs hardware FMA + F16C (or NEON);
    on the other variants (sse42) the buffer type leaves the head to ggml."""
    native = variant.arch == "aarch64" or {"f16c", "fma"} <= set(variant.requires)
    return "ours" if native else "ggml"


def _compile(src: Path, engine_build_dir: Path, out: Path) -> Path:
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH (apt-get install g++)")
    bin_dir = engine_build_dir / "bin"
    argv = [
        cxx, "-O1", "-std=c++17", "-Wall", "-Wextra",
        f"-I{engine_build_dir / 'llama.cpp' / 'ggml' / 'include'}",
        str(src), "-o", str(out),
        str(bin_dir / "libggml.so"), str(bin_dir / "libggml-base.so"), f"-Wl,-rpath,{bin_dir}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def ops_binary(engine_build_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compile(SRC, engine_build_dir, tmp_path_factory.mktemp("ops") / "test_bitnet_ops")


@pytest.fixture(scope="module")
def fused_binary(engine_build_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compile(FUSED_SRC, engine_build_dir, tmp_path_factory.mktemp("ops") / "test_bitnet_fused")


def _run(
    binary: Path, bin_dir: Path, variant: str, kernels: str, *args: str, fuse: str = "1"
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BITNET_KERNELS": kernels,
        "BITNET_FUSE": fuse,
        "GGML_CPU_VARIANT": variant,
        "GGML_CPU_VARIANT_REPORT": "1",
    }
    return subprocess.run(
        [str(binary), "--bin-dir", str(bin_dir), *args], capture_output=True, text=True, timeout=300, env=env
    )


def _runnable(engine_build_dir: Path, variant: engine.Variant) -> None:
    if not _CPU.has(*variant.requires):
        missing = [f for f in variant.requires if not _CPU.has(f)]
        pytest.skip(f"this CPU cannot run the {variant.name} variant (no {', '.join(missing)})")
    if variant.name not in engine.read_build_info(engine_build_dir)["variants"]:
        pytest.skip(f"the engine in {engine_build_dir} was built without the {variant.name} variant")


@pytest.mark.parametrize("kernels", ["1", "0"])
@pytest.mark.parametrize("variant", _VARIANTS, ids=lambda v: v.name)
def test_cpu_bitnet_ops_match_ggml_and_the_reference(
    ops_binary: Path, engine_build_dir: Path, variant: engine.Variant, kernels: str
) -> None:
    _runnable(engine_build_dir, variant)
    head = _head(variant)
    done = _run(ops_binary, engine_build_dir / "bin", variant.name, kernels, "--head", head)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    # the forced variant is the one that ran, and the kernel switch was honoured (patches 0002, 0004)
    assert f"ggml: CPU variant libggml-cpu-{variant.name}.so" in done.stderr, done.stderr
    state = "on" if kernels == "1" else "off"
    assert f"bitnet: ternary kernels {state}" in done.stderr, done.stderr
    cases = CASE.findall(done.stdout)
    assert [name for name, verdict in cases if verdict != "OK"] == []
    assert len(cases) == N_CASES, f"{len(cases)} case lines, expected {N_CASES}\n{done.stdout[-3000:]}"
    assert f"{N_CASES}/{N_CASES} cases OK" in done.stdout
    if kernels == "1":
        # Proof that CPU_BITNET's MUL_MATs ran our code, not ggml's: every ternary weight was repacked
        # into our layout (ggml's TQ kernels cannot read it, yet the results matched the reference),
        # and the head GEMV/GEMM was >= 100x closer to the exact product than ggml's fp16-activation path
        # (with several columns also bitwise the one-column GEMV of each column).
        assert "extra buffer types: CPU_BITNET" in done.stdout
        # 12 ternary weights per type, 2 types
        assert "our kernels: 24/24 ternary weights repacked in CPU_BITNET" in done.stdout
        n_ours = N_HEAD_MUL_MAT if head == "ours" else 0
        assert f"fp16 head GEMV/GEMM ours in {n_ours}/{N_HEAD_MUL_MAT} cases" in done.stdout
    else:
        assert "CPU_BITNET" not in done.stdout.split("extra buffer types:")[1].splitlines()[0]
        assert "CPU_BITNET not registered (as expected)" in done.stdout


def test_one_wrong_weight_fails_every_ternary_case(ops_binary: Path, engine_build_dir: Path) -> None:
    """The comparison can fail: one weight changed in the CPU_BITNET copy of each ternary matrix (the
    reference and the plain copy keep it) must turn every ternary line into FAIL and nothing else."""
    best = engine.best_variant(
        [v for v in _VARIANTS if v.name in engine.read_build_info(engine_build_dir)["variants"]], _CPU
    )
    assert best is not None
    done = _run(
        ops_binary, engine_build_dir / "bin", best.name, "1", "--corrupt-one-weight", "--threads", "2"
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    cases = CASE.findall(done.stdout)
    ternary = [verdict for name, verdict in cases if "type=tq" in name]
    others = [verdict for name, verdict in cases if "type=tq" not in name]
    assert len(ternary) == N_TERNARY // 3 and set(ternary) == {"FAIL"}
    assert len(others) == (N_CASES - N_TERNARY) // 3 and set(others) == {"OK"}


# The chains ternary-fuse.cpp runs as one op (its "bitnet: fused chain ..." lines): the bitnet layer's four
# and two MUL_MATs sharing an input without a norm (the case whose normalized input is read twice).
FUSED_KINDS = [
    "rms_norm+mul_mat*3+scale",
    "rms_norm+mul_mat*1+scale+add",
    "rms_norm+mul_mat*2+scale+relu2",
    "mul_mat*2",
]
FUSED_CASE = re.compile(r"^  (?P<name>\S+) nth=\d+: .*  (?P<verdict>OK|FAIL)$", re.M)


@pytest.mark.parametrize("fuse", ["1", "0"])
@pytest.mark.parametrize("variant", _VARIANTS, ids=lambda v: v.name)
def test_fused_chains_equal_the_nodes_one_by_one(
    fused_binary: Path, engine_build_dir: Path, variant: engine.Variant, fuse: str
) -> None:
    """Norm + Q/K/V, norm + wo + residual, norm + up/gate + relu^2, norm + down + residual: computed as one
    graph (our fused op, on buffers ggml's graph allocator reuses in place) they give bitwise the floats of
    the same nodes computed one graph each, on every variant, 1-3 threads, per token and per block. With
    BITNET_FUSE=0 nothing is fused (and both sides are ggml's nodes)."""
    _runnable(engine_build_dir, variant)
    done = _run(fused_binary, engine_build_dir / "bin", variant.name, "1", fuse=fuse)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert f"ggml: CPU variant libggml-cpu-{variant.name}.so" in done.stderr, done.stderr
    cases = FUSED_CASE.findall(done.stdout)
    assert len(cases) == 270, done.stdout[-3000:]
    assert [name for name, verdict in cases if verdict != "OK"] == []
    ran = set(re.findall(r"^bitnet: fused chain (\S+)$", done.stderr, re.M))
    assert ran == (set(FUSED_KINDS) if fuse == "1" else set()), done.stderr


@pytest.mark.parametrize("variant", _VARIANTS, ids=lambda v: v.name)
def test_prompt_attention_equals_ggmls_tiled_kernel(
    fused_binary: Path, engine_build_dir: Path, variant: engine.Variant
) -> None:
    """ternary-attn.cpp reorganizes ggml's tiled flash attention (conversions shared by the query heads of
    a key/value head, vectorized) without changing a row's arithmetic: its output hashes equal ggml's own
    (BITNET_ATTN=0) for GQA 1/2/4, head sizes 64/128, 64..300 query rows, causal masks, 1-3 threads."""
    _runnable(engine_build_dir, variant)
    lines = {}
    for attn in ("1", "0"):
        # BITNET_ATTN is read once per process: one run per setting
        env = {**os.environ, "BITNET_KERNELS": "1", "BITNET_ATTN": attn, "GGML_CPU_VARIANT": variant.name,
               "GGML_CPU_VARIANT_REPORT": "1"}  # fmt: skip
        done = subprocess.run(
            [str(fused_binary), "--bin-dir", str(engine_build_dir / "bin"), "--attention"],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert ("bitnet: prompt attention ours" in done.stderr) == (attn == "1"), done.stderr
        lines[attn] = re.findall(r"^  ATTN\(.*$", done.stdout, re.M)
    assert len(lines["1"]) == 12
    assert all(re.search(r"nonzero=(\d+)/\1$", line) for line in lines["1"]), lines["1"]
    assert lines["1"] == lines["0"]
