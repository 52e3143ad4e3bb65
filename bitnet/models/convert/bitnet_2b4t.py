"""microsoft/bitnet-b1.58-2B-4T and its -bf16 twin: transformers' `BitNetForCausalLM`.

Llama-shaped with BitNet's sub-norms (RMSNorm before o_proj and before down_proj), squared-ReLU FFN
(`hidden_act: relu2`), GQA (20 heads, 5 KV heads), tied embeddings, RoPE theta 500000 in HF's
rotate-half layout, which the engine's bitnet graph applies as NEOX rope (no q/k permutation).
Weights: packed uint8 + `weight_scale` (AutoBitLinear, scale multiplies) in -2B-4T, bf16 master weights
in -2B-4T-bf16. Defaults below are transformers' `BitNetConfig` defaults.
"""

from __future__ import annotations

from typing import Any, ClassVar

from bitnet.models.convert.base import ArchConverter, register


@register("BitNetForCausalLM")
class BitNet2B4TConverter(ArchConverter):
    """`BitNetForCausalLM` (transformers) → GGUF arch "bitnet"."""

    gguf_arch = "bitnet"
    attn_sub_norm = "self_attn.attn_sub_norm"
    ffn_sub_norm = "mlp.ffn_sub_norm"
    config_defaults: ClassVar[dict[str, Any]] = {
        "hidden_act": "relu2",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    }
