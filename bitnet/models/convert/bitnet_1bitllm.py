"""1bitLLM/bitnet_b1_58-{large,xl,3B}: the community reproduction `BitnetForCausalLM` (remote code).

Same graph as 2B4T's (sub-norms, tied embeddings, rotate-half RoPE) but SiLU-gated FFN, no GQA,
fp16 master weights that we ternarize per tensor, a SentencePiece tokenizer, and sub-norm modules named
`self_attn.inner_attn_ln` and `mlp.ffn_layernorm` (ref: llama.cpp gguf-py tensor_mapping.py, "bitnet").
The 3B model's widths (3200, 8640) are not multiples of 256: those tensors fall back to Q8_0/F16.
Defaults follow the Llama config class its remote code derives from.
"""

from __future__ import annotations

from typing import Any, ClassVar

from bitnet.models.convert.base import ArchConverter, register


@register("BitnetForCausalLM")
class BitNet1bitLLMConverter(ArchConverter):
    """`BitnetForCausalLM` (1bitLLM) → GGUF arch "bitnet" with `hidden_activation` = silu."""

    gguf_arch = "bitnet"
    attn_sub_norm = "self_attn.inner_attn_ln"
    ffn_sub_norm = "mlp.ffn_layernorm"
    config_defaults: ClassVar[dict[str, Any]] = {
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    }
