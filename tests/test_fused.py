"""The engine's fused ops change no bit of what the model computes: the norm -> matmul -> epilogue chains
(BITNET_FUSE, patch 0012), our prompt attention (BITNET_ATTN) and the TK1 layout of TQ2_0 weights
(BITNET_LAYOUT) against the node-by-node graph with ggml's attention and TK2, through llama-server on
the tiny model: the same greedy tokens and the same log-probabilities to the last printed digit, per token
and per block activation quantization. The prompt is longer than 64 tokens, so the prefill runs the
GEMM tiles and our attention; the generation runs the GEMV chains. The engine's report lines show the
fused chains and our attention ran (and did not, when switched off)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_split import PROMPT, _complete

from bitnet.engine.contract import ACT_QUANT_ENV, ATTN_ENV, FUSE_ENV, KERNELS_ENV
from bitnet.runtime.runtime import BitNetRuntime
from bitnet.runtime.server import serve

pytestmark = pytest.mark.engine

LONG_PROMPT = " ".join([PROMPT] * 3)
# (fuse, attn, layout): the reference is everything off
RUNS = [("0", "0", "tk2"), ("1", "1", ""), ("1", "1", "tk1"), ("1", "0", "tk2"), ("0", "1", "tk1")]
CHAINS = ("rms_norm+mul_mat*3+scale", "rms_norm+mul_mat*1+scale+add", "rms_norm+mul_mat*2+scale+relu2")


@pytest.fixture(scope="module")
def tiny_tq2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bitnet.models.synthetic import write_dummy_model

    path = tmp_path_factory.mktemp("fused") / "tiny-tq2_0.gguf"
    write_dummy_model("tiny", path, outtype="tq2_0", head_type="f16", progress=False)
    return path


@pytest.mark.parametrize("act_quant", ["per_token", "per_block"])
def test_fused_ops_give_bitwise_the_node_by_node_output(
    engine_bin_dir: Path, tiny_tq2: Path, tmp_path: Path, act_quant: str
) -> None:
    results = {}
    for fuse, attn, layout in RUNS:
        env = {**os.environ, KERNELS_ENV: "1", FUSE_ENV: fuse, ATTN_ENV: attn, ACT_QUANT_ENV: act_quant,
               "GGML_CPU_VARIANT_REPORT": "1"}  # fmt: skip
        env.pop("BITNET_LAYOUT", None)
        if layout:
            env["BITNET_LAYOUT"] = layout
        log = tmp_path / f"{fuse}{attn}{layout}.log"
        runtime = BitNetRuntime(build_dir=engine_bin_dir.parent, env=env)
        # flash attention on with the default f16 KV cache: the path our prompt attention takes
        with serve(
            tiny_tq2, runtime=runtime, ctx_size=1024, threads=1, log_path=log,
            extra_args=["-fa", "on", "--no-warmup", "-t", "2", "-tb", "2", "-ub", "512"],
        ) as server:  # fmt: skip
            body = _complete(server.url, LONG_PROMPT)
        text = log.read_text()
        assert "bitnet: ternary kernels on" in text
        assert all((f"bitnet: fused chain {c}" in text) == (fuse == "1") for c in CHAINS), text[-3000:]
        assert ("bitnet: prompt attention ours" in text) == (attn == "1"), text[-3000:]
        results[(fuse, attn, layout)] = body
    ref = results[RUNS[0]]
    assert ref["n_prompt"] >= 64, ref["n_prompt"]  # our attention takes >= 64 query rows
    assert len({t for step in ref["probs"] for t in (e["id"] for e in step["top_logprobs"])}) > 10
    for run, got in results.items():
        assert got["tokens"] == ref["tokens"], f"{run}: greedy tokens differ from the unfused graph's"
        assert got["probs"] == ref["probs"], f"{run}: log-probabilities differ from the unfused graph's"
