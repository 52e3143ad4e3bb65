"""Llama-architecture checkpoints trained with BitNet b1.58 quantization (HF1BitLLM Llama3-8B-1.58,
tiiuae Falcon3-*-1.58bit, Falcon-E): `LlamaForCausalLM` + `quantization_config.quant_method: bitnet`.

They have no sub-norms, so they do not match the engine's bitnet graph (which requires attn_sub_norm
and ffn_sub_norm); we write them as GGUF arch "llama" with ternary TQ weights and the same per-tensor
`.scale` tensors, which llama.cpp loads for every architecture (llama-model.cpp, generic ".scale" pass).
The llama graph uses NORM (pairwise) RoPE, so q/k rows are permuted from HF's rotate-half layout, and it
takes an untied `output.weight` when the checkpoint has one. SiLU only (the llama graph has no other).
"""

from __future__ import annotations

from typing import Any, ClassVar

from bitnet.convert.base import ArchConverter, register
from bitnet.convert.errors import UnsupportedCheckpointError


@register("LlamaForCausalLM")
class LlamaBitNetConverter(ArchConverter):
    """`LlamaForCausalLM` with BitNet quantization → GGUF arch "llama" with ternary weights."""

    gguf_arch = "llama"
    attn_sub_norm = None
    ffn_sub_norm = None
    permute_qk = True
    untied_head_ok = True
    activations = ("silu",)
    config_defaults: ClassVar[dict[str, Any]] = {
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    }

    def check(self) -> None:
        """Only BitNet-quantized Llama checkpoints: plain Llama weights are not ternary."""
        if self.quant is None:
            raise UnsupportedCheckpointError(
                f"{self.config_path}: LlamaForCausalLM without quantization_config.quant_method 'bitnet' "
                "is a full-precision Llama, not a BitNet checkpoint; use llama.cpp's own converter for it"
            )
        super().check()
