"""The engine contract: every name the Python side and our patched llama.cpp must spell the same.

Binary names, environment variables, GGUF keys and the lines the engine prints about itself live
here once; the C side's spellings are in ``kernels/ternary/include/bitnet_contract.h`` and in our
patches, and tests/test_contract.py checks that the three agree. Modules import from here instead of
re-typing a string (or a regex for a log line) of their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ACT_QUANT_ENV",
    "ACT_QUANT_MODES",
    "ADAPT_THREADS_ENV",
    "AMX_ENV",
    "ATTN_ENV",
    "BARRIER_SPIN_ENV",
    "BENCH_BINARY",
    "BIN_DIR_ENV",
    "CPU_VARIANT_ENV",
    "EngineReport",
    "FUSE_ENV",
    "GGUF_MAGIC",
    "INFERENCE_BINARY",
    "KERNELS_ENV",
    "PERPLEXITY_BINARY",
    "QUANTIZE_BINARY",
    "REPACK_CACHE_ENV",
    "REPACK_CACHE_SUFFIX",
    "SERVER_BINARY",
    "SPLIT_ENV",
    "VARIANT_REPORT_ENV",
    "gguf_key",
    "parse_engine_report",
]

# ---------------------------------------------------------------------------------------- binaries

INFERENCE_BINARY = "llama-completion"  # one-shot text; llama-cli is a chat front end
SERVER_BINARY = "llama-server"
BENCH_BINARY = "llama-bench"
PERPLEXITY_BINARY = "llama-perplexity"
QUANTIZE_BINARY = "llama-quantize"
CHAT_BINARY = "llama-cli"

# ---------------------------------------------------------------------------------------- environment

KERNELS_ENV = "BITNET_KERNELS"  # "0": stock ggml kernels in the same binary (patch 0004)
ACT_QUANT_ENV = "BITNET_ACT_QUANT"  # per_token | per_block: overrides the file's key (patch 0006)
CPU_VARIANT_ENV = "GGML_CPU_VARIANT"  # force libggml-cpu-<name> (patch 0002)
VARIANT_REPORT_ENV = "GGML_CPU_VARIANT_REPORT"  # "1": the engine prints the lines parsed below
BARRIER_SPIN_ENV = "GGML_BARRIER_SPIN"  # spins before a waiting thread yields its core, or "off" (patch 0009)
ADAPT_THREADS_ENV = "GGML_ADAPT_THREADS"  # off | log | flip: threads per graph on a busy host (patch 0015)
SPLIT_ENV = "BITNET_SPLIT"  # "static": the fixed row split instead of guided chunks (ternary-buft.cpp)
FUSE_ENV = "BITNET_FUSE"  # "0": norm/matmul/epilogue chains node by node (ternary-fuse.cpp, patch 0012)
AMX_ENV = "BITNET_AMX"  # "0": the ternary GEMM without AMX-INT8 tiles (kernels/ternary/src/avx512vnni.c)
ATTN_ENV = "BITNET_ATTN"  # "0": prompt attention by ggml's own tiled kernel (ternary-attn.cpp)
REPACK_CACHE_ENV = "BITNET_REPACK_CACHE"  # "0": no repack cache file beside the model (ternary-cache.cpp)
BIN_DIR_ENV = "BITNET_BIN_DIR"  # ours: extra directory searched for the binaries

# The repack cache: the weights in our layout, kept beside a memory-mapped GGUF for the next load,
# one file per kernel ISA: <model>.gguf.<isa>.bitnet-repack
REPACK_CACHE_SUFFIX = ".bitnet-repack"

ACT_QUANT_MODES = ("per_token", "per_block")

# ---------------------------------------------------------------------------------------- GGUF

GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file
HIDDEN_ACTIVATION = "hidden_activation"  # <arch>.hidden_activation: relu2 | silu (patch 0001)
ACTIVATION_QUANT = "activation_quant"  # <arch>.activation_quant: per_token | per_block (patch 0006)


def gguf_key(arch: str, name: str) -> str:
    """An architecture-scoped GGUF key, e.g. ``gguf_key("bitnet", HIDDEN_ACTIVATION)``."""
    return f"{arch}.{name}"


# ---------------------------------------------------------------------------------------- report lines

# What the engine prints about itself on stderr (patches 0002, 0004, 0006; upstream's loader line):
#   ggml: CPU variant libggml-cpu-avx2.so                    (with GGML_CPU_VARIANT_REPORT=1)
#   load_backend: loaded CPU backend from /path/libggml-cpu-avx2.so          (upstream, any build)
#   bitnet: ternary kernels on (avx512vnni)  /  ... off (BITNET_KERNELS=0) (avx2)
#   bitnet: ternary kernels on, AMX-INT8 GEMM (avx512vnni)   (prompts in AMX tiles; BITNET_AMX=0: without)
#   bitnet: activation quantization per_token (file)  /  ... per_block (BITNET_ACT_QUANT)
#   bitnet: repack cache read 210 of 210 tensors from PATH  /  ... wrote 210 tensors to PATH  /
#           ... off (BITNET_REPACK_CACHE=0)  /  ... not written (PATH: reason)      (once per model load)
CPU_VARIANT_RE = re.compile(
    r"(?:CPU variant|loaded CPU backend from) \S*?ggml-cpu-([A-Za-z0-9_]+)\.(?:so|dll|dylib)\b"
)
KERNELS_RE = re.compile(r"bitnet: ternary kernels (on|off)\b([^\n]*)")
ACT_QUANT_RE = re.compile(r"bitnet: activation quantization (\w+) \(([^()\n]*)\)")
REPACK_CACHE_RE = re.compile(r"bitnet: repack cache (read|wrote|off|not written)\b([^\n]*)")
_LAST_PAREN = re.compile(r"\(([^()\n]*)\)\s*$")


@dataclass(frozen=True)
class EngineReport:
    """What an engine run said about itself; None for whatever it did not say."""

    cpu_variant: str | None = None  # the libggml-cpu-<variant> ggml loaded
    kernels: bool | None = None  # our ternary kernels on/off
    kernels_isa: str | None = None  # the kernels' instruction set (last parenthesis of the line)
    kernels_detail: str | None = None  # the whole text after on/off, e.g. "(BITNET_KERNELS=0) (avx2)"
    gemm_amx: bool | None = None  # the kernels run prompts (GEMM) in AMX-INT8 tiles
    act_quant: str | None = None  # per_token / per_block
    act_quant_source: str | None = None  # where the mode came from: file, BITNET_ACT_QUANT, default
    repack_cache: str | None = None  # read / wrote / off / not written: the first load's repack cache
    repack_cache_detail: str | None = None  # the rest of that line (counts and path, or the reason)


def parse_engine_report(text: str) -> EngineReport:
    """Read the engine's self-report lines (above) out of its stderr; the first of each kind wins."""
    variant = CPU_VARIANT_RE.search(text)
    kernels = KERNELS_RE.search(text)
    act = ACT_QUANT_RE.search(text)
    cache = REPACK_CACHE_RE.search(text)
    isa = None
    if kernels:
        paren = _LAST_PAREN.search(kernels.group(2))
        isa = paren.group(1) if paren else None
    return EngineReport(
        cpu_variant=variant.group(1) if variant else None,
        kernels=None if kernels is None else kernels.group(1) == "on",
        kernels_isa=isa,
        kernels_detail=kernels.group(2).strip() if kernels else None,
        gemm_amx=None if kernels is None else "AMX" in kernels.group(2),
        act_quant=act.group(1) if act else None,
        act_quant_source=act.group(2) if act else None,
        repack_cache=cache.group(1) if cache else None,
        repack_cache_detail=cache.group(2).strip() if cache else None,
    )
