"""The engine contract: bitnet/engine/contract.py, kernels/ternary/include/bitnet_contract.h and our llama.cpp
patches spell every shared name the same; the report parser reads what the real engine prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bitnet.engine import contract
from bitnet.engine.cpu import detect_cpu

REPO = Path(__file__).resolve().parent.parent
HEADER = REPO / "kernels" / "ternary" / "include" / "bitnet_contract.h"
PATCHES = REPO / "kernels" / "patches"


def header_strings() -> dict[str, str]:
    return dict(re.findall(r'#define (BITNET_\w+)\s+"((?:[^"\\]|\\.)*)"', HEADER.read_text()))


def added_patch_lines() -> str:
    return "".join(
        line
        for p in sorted(PATCHES.glob("*.patch"))
        for line in p.read_text().splitlines(True)
        if line.startswith("+")
    )


@pytest.mark.parametrize(
    ("macro", "python"),
    [
        ("BITNET_ENV_KERNELS", contract.KERNELS_ENV),
        ("BITNET_ENV_ACT_QUANT", contract.ACT_QUANT_ENV),
        ("BITNET_ENV_CPU_VARIANT", contract.CPU_VARIANT_ENV),
        ("BITNET_ENV_VARIANT_REPORT", contract.VARIANT_REPORT_ENV),
        ("BITNET_ENV_SPLIT", contract.SPLIT_ENV),
        ("BITNET_ENV_BARRIER_SPIN", contract.BARRIER_SPIN_ENV),
        ("BITNET_ENV_FUSE", contract.FUSE_ENV),
        ("BITNET_ENV_ATTN", contract.ATTN_ENV),
        ("BITNET_ENV_AMX", contract.AMX_ENV),
        ("BITNET_ENV_REPACK_CACHE", contract.REPACK_CACHE_ENV),
        ("BITNET_GGUF_HIDDEN_ACTIVATION", contract.HIDDEN_ACTIVATION),
        ("BITNET_GGUF_ACTIVATION_QUANT", contract.ACTIVATION_QUANT),
    ],
)
def test_header_and_python_agree(macro: str, python: str) -> None:
    assert header_strings()[macro] == python


@pytest.mark.parametrize(
    ("macro", "in_patch"),
    [
        ("BITNET_ENV_CPU_VARIANT", True),
        ("BITNET_ENV_VARIANT_REPORT", True),
        ("BITNET_ENV_BARRIER_SPIN", True),
        ("BITNET_ENV_ACT_QUANT", True),
        ("BITNET_GGUF_HIDDEN_ACTIVATION", True),
        ("BITNET_GGUF_ACTIVATION_QUANT", True),
        ("BITNET_REPORT_CPU_VARIANT", True),
        ("BITNET_REPORT_ACT_QUANT", True),
    ],
)
def test_patches_spell_the_headers_strings(macro: str, in_patch: bool) -> None:
    """The patches cannot include our header (they edit llama.cpp's own files), so they repeat it."""
    assert (header_strings()[macro] in added_patch_lines()) == in_patch


@pytest.mark.parametrize(
    "line_fmt",
    ["BITNET_REPORT_CPU_VARIANT", "BITNET_REPORT_KERNELS", "BITNET_REPORT_ACT_QUANT"],
)
def test_the_parser_reads_what_the_header_prints(line_fmt: str) -> None:
    fmt = header_strings()[line_fmt].replace("\\n", "\n")
    args = {
        "BITNET_REPORT_CPU_VARIANT": ("libggml-cpu-avx2.so",),
        "BITNET_REPORT_KERNELS": ("off (BITNET_KERNELS=0)", "avx512vnni"),
        "BITNET_REPORT_ACT_QUANT": ("per_block", "BITNET_ACT_QUANT"),
    }[line_fmt]
    sample = fmt % args
    report = contract.parse_engine_report("noise\n" + sample + "more noise\n")
    if line_fmt == "BITNET_REPORT_CPU_VARIANT":
        assert report.cpu_variant == "avx2"
    elif line_fmt == "BITNET_REPORT_KERNELS":
        assert report.kernels is False and report.kernels_isa == "avx512vnni"
    else:
        assert (report.act_quant, report.act_quant_source) == ("per_block", "BITNET_ACT_QUANT")


@pytest.mark.parametrize(
    ("state", "kernels", "amx"),
    [("on", True, False), ("on, AMX-INT8 GEMM", True, True), ("off (BITNET_KERNELS=0)", False, False)],
)
def test_the_parser_reads_whether_the_gemm_runs_in_amx_tiles(state: str, kernels: bool, amx: bool) -> None:
    fmt = header_strings()["BITNET_REPORT_KERNELS"].replace("\\n", "\n")
    report = contract.parse_engine_report(fmt % (state, "avx512vnni"))
    assert (report.kernels, report.gemm_amx, report.kernels_isa) == (kernels, amx, "avx512vnni")


@pytest.mark.parametrize(
    ("what", "state", "detail"),
    [
        ("read 210 of 210 tensors from /m/x.gguf.avx2.bitnet-repack", "read", "210 of 210"),
        ("wrote 56 tensors to /m/x.gguf.avx2.bitnet-repack", "wrote", "56 tensors"),
        ("off (BITNET_REPACK_CACHE=0)", "off", "BITNET_REPACK_CACHE=0"),
        ("not written (/m/x.gguf.avx2.bitnet-repack: No space left on device)", "not written", "No space"),
    ],
)
def test_the_parser_reads_the_repack_cache_line(what: str, state: str, detail: str) -> None:
    fmt = header_strings()["BITNET_REPORT_REPACK_CACHE"].replace("\\n", "\n")
    report = contract.parse_engine_report("noise\n" + fmt % what + "more noise\n")
    assert report.repack_cache == state
    assert report.repack_cache_detail is not None and detail in report.repack_cache_detail


def test_nothing_reported_is_none() -> None:
    assert contract.parse_engine_report("") == contract.EngineReport()


@pytest.mark.engine
def test_the_real_engine_report_parses(engine_bin_dir: Path, tmp_path: Path) -> None:
    import os
    import subprocess

    from bitnet.models.synthetic import write_dummy_model

    model = tmp_path / "tiny.gguf"
    write_dummy_model("tiny", model, progress=False)
    env = {**os.environ, contract.VARIANT_REPORT_ENV: "1", contract.ACT_QUANT_ENV: "per_block"}
    done = subprocess.run(
        [str(engine_bin_dir / contract.INFERENCE_BINARY), "-m", str(model), "-p", "hi", "-n", "1", "-no-cnv",
         "-t", "1"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = contract.parse_engine_report(done.stderr)
    assert report.cpu_variant and report.kernels is True and report.kernels_isa
    assert (report.act_quant, report.act_quant_source) == ("per_block", contract.ACT_QUANT_ENV)
    # prompts run in AMX tiles exactly where the avx512vnni kernels run on a CPU with AMX-INT8
    cpu = detect_cpu()
    assert report.gemm_amx == (report.kernels_isa == "avx512vnni" and cpu.has("amx_tile", "amx_int8")), (
        done.stderr[-2000:]
    )
    off = subprocess.run(
        [str(engine_bin_dir / contract.INFERENCE_BINARY), "-m", str(model), "-p", "hi", "-n", "1", "-no-cnv",
         "-t", "1"],
        capture_output=True, text=True, timeout=120, env={**env, contract.AMX_ENV: "0"},
    )  # fmt: skip
    assert off.returncode == 0 and contract.parse_engine_report(off.stderr).gemm_amx is False
