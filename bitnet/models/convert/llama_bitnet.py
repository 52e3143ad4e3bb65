"""Llama-architecture checkpoints trained with BitNet b1.58 quantization (HF1BitLLM Llama3-8B-1.58,
tiiuae Falcon3-*-1.58bit, Falcon-E): `LlamaForCausalLM` + `quantization_config.quant_method: bitnet`.

They have no sub-norms, so they do not match the engine's bitnet graph (which requires attn_sub_norm
and ffn_sub_norm); we write them as GGUF arch "llama" with ternary TQ weights and the same per-tensor
`.scale` tensors, which llama.cpp loads for every architecture (llama-model.cpp, generic ".scale" pass).
The llama graph uses NORM (pairwise) RoPE, so q/k rows are permuted from HF's rotate-half layout, and it
takes an untied `output.weight` when the checkpoint has one. SiLU only (the llama graph has no other).

Released configs (ref: their config.json; tests/test_convert_real_configs.py copies their key sets):
HF1BitLLM Llama3-8B-1.58 (32 heads / 8 KV, rope_theta 500000, untied, `quantization_config` written twice
in the file: JSON keeps the last, {quant_method: bitnet}); Falcon3-{1,3,7,10}B-*-1.58bit (head_dim 256,
rope_theta 1000042, eps 1e-6, untied, vocab 131072, {modules_to_not_convert: [lm_head], quant_method:
bitnet}, `is_bitnet_config: true`). Both store packed uint8 weights + a bf16 `weight_scale` [1] that
transformers' default BitLinear divides by.
"""

from __future__ import annotations

from typing import Any, ClassVar

from bitnet.errors import UnsupportedCheckpointError
from bitnet.models.convert.base import ArchConverter, register


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
                "is a full-precision Llama, not a BitNet checkpoint. If it is the bf16 or fine-tuning "
                "variant of a BitNet model (e.g. the 'bfloat16' or 'prequantized' revision of tiiuae "
                "Falcon-E), download the repo's default branch, which holds the ternary model; a real "
                "full-precision Llama is for llama.cpp's own converter"
            )
        super().check()
