"""The Llama-style BitNet converter on tiny checkpoints whose config.json is a released model's own.

Each checkpoint keeps every key and value of the real config.json (quantization_config verbatim, including
HF1BitLLM's file that states `quantization_config` twice) and scales down only the sizes: hidden_size,
intermediate_size, num_hidden_layers, vocab_size, head_dim (kept = hidden / heads, as in the real files)
and the special-token ids (they index the tiny tokenizer). Weights are stored as those repos store them:
bf16 embedding, head and norms; linear weights packed 4 per uint8 by transformers' own `pack_weights`
next to a bf16 `weight_scale` of shape [1] that transformers' default `BitLinear` divides by.

Sources of the configs (Hugging Face file pages, read through public mirrors/search, not fetched here):
- tiiuae/Falcon3-1B-Instruct-1.58bit, config.json at b932224b67d2b686e9e687fd74a6179476e037eb (unchanged
  since the release commit 4d9a9de); Falcon3-3B-Base-1.58bit at a7bb5926 and -10B-Base-1.58bit at
  af04ff88. Not here: the Instruct 3B/7B/10B files (not found) and Falcon3-7B-Base-1.58bit (the copy found
  is cut before vocab_size; it adds an `auto_map` to remote code that the converter does not read).
- HF1BitLLM/Llama3-8B-1.58-100B-tokens: config.json (970 bytes); its text as published in the identical
  970-byte copy Rushi2901/bitnet_b1_58-xl (its _name_or_path is the HF1BitLLM author's training path).

Reference numerics: transformers' LlamaForCausalLM with its BitNet layers built by
`replace_with_bitnet_linear` from the quantization_config exactly as written (so absent keys take
`BitNetQuantConfig`'s defaults: bitlinear, offline) and the modules_to_not_convert rule of transformers'
quantizer (None -> its default skip list, the output head). The engine comparison uses the tolerances and
helpers of tests/test_convert_e2e.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_convert import LINEARS as GGUF_LINEARS
from test_convert import convert
from test_convert_e2e import N_NEW, assert_engine_matches, engine_bin, engine_greedy  # noqa: F401
from tinymodels import BOS, EOS, PROMPT, disable_torch_compile, greedy, incomplete_utf8_ids, save_tokenizer

from bitnet.errors import UnsupportedCheckpointError
from bitnet.models.convert import convert_checkpoint

# --- the released config.json files, verbatim ---------------------------------------------------------

FALCON3_1B_INSTRUCT = """{
  "_name_or_path": "/home/ec2-user/checkpoints/falcon3-1b-1bit/hf-1bit",
  "architectures": [
    "LlamaForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "eos_token_id": 11,
  "head_dim": 256,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "is_bitnet_config": true,
  "max_position_embeddings": 8192,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 8,
  "num_hidden_layers": 18,
  "num_key_value_heads": 4,
  "pretraining_tp": 1,
  "quantization_config": {
    "modules_to_not_convert": [
      "lm_head"
    ],
    "quant_method": "bitnet"
  },
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000042,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.48.0.dev0",
  "use_cache": true,
  "vocab_size": 131072
}
"""

FALCON3_3B_BASE = """{
  "_name_or_path": "/home/ubuntu/hang/Checkpoints/Falcon3-3B-BITNET-FT-16BT/hf_bitnet",
  "activation": "swiglu",
  "architectures": [
    "LlamaForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 11,
  "eos_token_id": 11,
  "head_dim": 256,
  "hidden_act": "silu",
  "hidden_size": 3072,
  "initializer_range": 0.02,
  "intermediate_size": 9216,
  "is_bitnet_config": true,
  "max_position_embeddings": 4096,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 12,
  "num_hidden_layers": 22,
  "num_key_value_heads": 4,
  "parallel_attn": false,
  "pretraining_tp": 1,
  "quantization_config": {
    "modules_to_not_convert": [
      "lm_head"
    ],
    "quant_method": "bitnet"
  },
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000042,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.47.0.dev0",
  "use_cache": true,
  "vocab_size": 131072
}
"""

FALCON3_10B_BASE = """{
  "_name_or_path": "/efs/qiyang/checkpoint/Falcon3-10B-BitNet/hf_bitnet",
  "architectures": [
    "LlamaForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 11,
  "head_dim": 256,
  "hidden_act": "silu",
  "hidden_size": 3072,
  "initializer_range": 0.02,
  "intermediate_size": 23040,
  "is_bitnet_config": true,
  "max_position_embeddings": 32768,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 12,
  "num_hidden_layers": 40,
  "num_key_value_heads": 4,
  "pretraining_tp": 1,
  "quantization_config": {
    "modules_to_not_convert": [
      "lm_head"
    ],
    "quant_method": "bitnet"
  },
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000042,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.46.0.dev0",
  "use_cache": true,
  "vocab_size": 131072
}
"""

# quantization_config appears twice; JSON parsers (Python's, transformers') keep the last one.
HF1BITLLM_LLAMA3_8B = """{
  "_name_or_path": "/fsx/mohamed/scripts_training/quantized_model_llama_8B_10",
  "architectures": [
    "LlamaForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128009,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "is_bitnet_config": true,
  "max_position_embeddings": 8192,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "quantization_config": {
    "modules_to_not_convert": null,
    "quant_method": "bitnet"
  },
  "rms_norm_eps": 1e-05,
  "rope_interleaved": false,
  "rope_scaling": null,
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.44.0.dev0",
  "use_cache": true,
  "vocab_size": 128256,
  "quantization_config": {
    "quant_method": "bitnet"
  }
}
"""

REAL = {
    "falcon3-1b-instruct": FALCON3_1B_INSTRUCT,
    "falcon3-3b-base": FALCON3_3B_BASE,
    "falcon3-10b-base": FALCON3_10B_BASE,
    "hf1bitllm-llama3-8b": HF1BITLLM_LLAMA3_8B,
}
# Seeds whose tiny models are decisive over N_NEW greedy steps (top-1/top-2 logit gap > 2 * TOL, checked by
# assert_engine_matches) and where no int8 rounding of an activation flips between torch and ggml. Such a
# flip (float32 summation order, e.g. in RoPE at these thetas) moves this model's log-probs by 0.1-0.3
# nats; it happened for 4 of the first 10 seeds of each config, so these are chosen, like
# test_convert_e2e's. Scales, q/k permutation and rope theta are checked exactly by
# test_released_config_converts_exactly.
SEEDS = {"falcon3-1b-instruct": 5, "hf1bitllm-llama3-8b": 3}
VOCAB = 512


def scale_down(text: str, hidden: int, n_ff: int, layers: int = 2) -> str:
    """The config text with only its sizes replaced (textually: duplicate keys and order survive)."""
    heads = json.loads(text)["num_attention_heads"]
    sizes = {
        "hidden_size": hidden,
        "intermediate_size": n_ff,
        "num_hidden_layers": layers,
        "vocab_size": VOCAB,
        "head_dim": hidden // heads,
        "bos_token_id": 0,  # ids of the tiny tokenizer's BOS/EOS
        "eos_token_id": 1,
    }
    for key, value in sizes.items():
        text = re.sub(rf'("{key}": )[0-9.e+-]+', rf"\g<1>{value}", text)
    return text


# --- tiny checkpoints in the released storage format --------------------------------------------------


def _bf16(a: np.ndarray) -> torch.Tensor:
    """float -> bf16 tensor whose values are also exact in fp16 (the GGUF head type)."""
    t = torch.from_numpy(np.asarray(a, dtype=np.float32)).to(torch.bfloat16)
    t[t.float().abs() < 2.0**-14] = 0  # below fp16's normal range
    return t


@dataclass
class RealCheckpoint:
    path: Path
    config: dict[str, Any]
    codes: dict[str, np.ndarray] = field(default_factory=dict)  # HF linear module -> int8 (out, in)
    weight_scale: dict[str, torch.Tensor] = field(default_factory=dict)  # as stored (bf16, [1])
    tokenizer: Any = None


def make_real_checkpoint(model_dir: Path, text: str, seed: int) -> RealCheckpoint:
    """config.json `text` (already scaled down) + bf16/packed-uint8 safetensors + the tiny BPE tokenizer."""
    from safetensors.torch import save_file
    from transformers.integrations.bitnet import pack_weights

    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(text)
    cfg = json.loads(text)
    ckpt = RealCheckpoint(model_dir, cfg, tokenizer=save_tokenizer(model_dir, VOCAB))
    rng = np.random.default_rng(seed)
    hidden, n_ff = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q_out, kv_out = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    quiet = [0, 1, *incomplete_utf8_ids(ckpt.tokenizer)]  # as tinymodels: never generated
    emb = rng.standard_normal((VOCAB, hidden)) * 0.02
    emb[quiet] *= 0.05
    head = rng.standard_normal((VOCAB, hidden)) * 0.02
    head[quiet] *= 0.05
    tensors = {
        "model.embed_tokens.weight": _bf16(emb),
        "lm_head.weight": _bf16(head),
        "model.norm.weight": _bf16(rng.uniform(6.0, 10.0, hidden)),
    }
    shapes = {
        "self_attn.q_proj": (q_out, hidden),
        "self_attn.k_proj": (kv_out, hidden),
        "self_attn.v_proj": (kv_out, hidden),
        "self_attn.o_proj": (hidden, q_out),
        "mlp.gate_proj": (n_ff, hidden),
        "mlp.up_proj": (n_ff, hidden),
        "mlp.down_proj": (hidden, n_ff),
    }
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        tensors[pre + "input_layernorm.weight"] = _bf16(rng.uniform(0.5, 1.5, hidden))
        tensors[pre + "post_attention_layernorm.weight"] = _bf16(rng.uniform(0.5, 1.5, hidden))
        for module, (out_f, in_f) in shapes.items():
            codes = rng.integers(-1, 2, size=(out_f, in_f), dtype=np.int8)
            # BitLinear divides by weight_scale (= 1/mean|W| of the master weight): unit-RMS outputs
            ws = _bf16(np.array([np.sqrt(2 / 3 * in_f) / rng.uniform(0.8, 1.2)]))
            name = pre + module
            ckpt.codes[name], ckpt.weight_scale[name] = codes, ws
            tensors[name + ".weight"] = pack_weights(torch.from_numpy(codes.copy()))
            tensors[name + ".weight_scale"] = ws
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    return ckpt


def reference_model(ckpt: RealCheckpoint) -> Any:
    """transformers' LlamaForCausalLM with the BitNet layers its quantizer builds from this config.json."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.integrations.bitnet import replace_with_bitnet_linear
    from transformers.utils.quantization_config import BitNetQuantConfig

    disable_torch_compile()
    raw = dict(ckpt.config)
    qc = BitNetQuantConfig(**{k: v for k, v in raw.pop("quantization_config").items() if k != "quant_method"})
    for k in ("architectures", "transformers_version", "model_type", "auto_map", "_name_or_path"):
        raw.pop(k, None)
    model = LlamaForCausalLM(LlamaConfig(**raw))
    assert model.model.embed_tokens.weight.dtype == torch.float32  # BitLinear computes in this dtype
    skip = qc.modules_to_not_convert
    if skip is None:  # transformers' quantizer: its default skip list (the output embedding)
        from transformers.quantizers.base import get_keys_to_not_convert

        skip = get_keys_to_not_convert(model)
    replace_with_bitnet_linear(model, modules_to_not_convert=skip, quantization_config=qc)
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_file(str(ckpt.path / "model.safetensors")).items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    assert not unexpected and not missing, (missing, unexpected)  # the storage format is transformers'
    model.eval()
    return model


# --- the converter on the released key sets (GGUF read back) ------------------------------------------


SHAPES = {  # (hidden, n_ff): hidden / heads must give whole heads; rows stay multiples of 256
    "falcon3-1b-instruct": (256, 256),
    "falcon3-3b-base": (768, 512),
    "falcon3-10b-base": (768, 512),
    "hf1bitllm-llama3-8b": (256, 256),
}


@pytest.mark.parametrize("model", sorted(REAL))
def test_released_config_converts_exactly(model: str, tmp_path: Path) -> None:
    hidden, n_ff = SHAPES[model]
    text = scale_down(REAL[model], hidden, n_ff)
    real = json.loads(REAL[model])
    ckpt = make_real_checkpoint(tmp_path / "ckpt", text, seed=1)
    report, g = convert(ckpt.path, tmp_path)
    cfg = ckpt.config
    heads, kv_heads = real["num_attention_heads"], real["num_key_value_heads"]
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (heads, kv_heads)  # unscaled

    assert g.value("general.architecture") == "llama" == report.gguf_arch
    assert report.hidden_activation is None and not g.has("bitnet.hidden_activation")  # llama: SiLU
    assert g.value("llama.rope.freq_base") == np.float32(real["rope_theta"])
    assert g.value("llama.attention.layer_norm_rms_epsilon") == np.float32(real["rms_norm_eps"])
    assert g.value("llama.context_length") == real["max_position_embeddings"]
    assert (g.value("llama.attention.head_count"), g.value("llama.attention.head_count_kv")) == (
        heads,
        kv_heads,
    )
    head_dim = hidden // heads
    assert g.value("llama.rope.dimension_count") == head_dim
    assert g.value("llama.block_count") == 2 and g.value("llama.vocab_size") == VOCAB
    assert "bitlinear: y / weight_scale" in report.weight_source

    # untied head (tie_word_embeddings false): output.weight is lm_head, token_embd the embedding
    tensors = _hf_tensors(ckpt.path)
    np.testing.assert_array_equal(g.array("output.weight"), tensors["lm_head.weight"].float().numpy())
    np.testing.assert_array_equal(
        g.array("token_embd.weight"), tensors["model.embed_tokens.weight"].float().numpy()
    )
    assert not np.array_equal(g.array("output.weight"), g.array("token_embd.weight"))

    for i in range(2):
        for gguf_name, module in GGUF_LINEARS.items():
            name = f"model.layers.{i}.{module}"
            codes = ckpt.codes[name]
            n = {"attn_q": heads, "attn_k": kv_heads}.get(gguf_name)
            if n:  # HF rotate-half rows -> ggml NORM rope pairs, per head
                hd = head_dim
                codes = codes[
                    [h * hd + half * hd // 2 + j for h in range(n) for j in range(hd // 2) for half in (0, 1)]
                ]
            np.testing.assert_array_equal(g.codes(f"blk.{i}.{gguf_name}.weight"), codes, err_msg=name)
            # BitLinear: y = x W^T / weight_scale, so the GGUF scale is 1/weight_scale, bit for bit in f32
            ws = float(ckpt.weight_scale[name].float())
            assert g.array(f"blk.{i}.{gguf_name}.scale").tolist() == [np.float32(1.0 / ws)], name
        np.testing.assert_array_equal(
            g.array(f"blk.{i}.attn_norm.weight"),
            tensors[f"model.layers.{i}.input_layernorm.weight"].float().numpy(),
        )
    assert (g.value("tokenizer.ggml.bos_token_id"), g.value("tokenizer.ggml.eos_token_id")) == (0, 1)
    assert g.value("tokenizer.ggml.tokens")[:2] == [BOS, EOS]
    assert g.value("tokenizer.ggml.pre") == "llama-bpe"


def _hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_the_scaled_configs_keep_every_real_key(tmp_path: Path) -> None:
    """scale_down changes sizes only: same keys (and duplicate), same values for everything else."""
    sized = {"hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "head_dim"}
    sized |= {"bos_token_id", "eos_token_id"}
    for model, text in REAL.items():
        small = scale_down(text, 256, 256)
        assert re.findall(r'"(\w+)":', small) == re.findall(r'"(\w+)":', text), model
        real, tiny = json.loads(text), json.loads(small)
        assert {k: v for k, v in real.items() if k not in sized} == {
            k: v for k, v in tiny.items() if k not in sized
        }, model
    assert HF1BITLLM_LLAMA3_8B.count('"quantization_config"') == 2
    assert json.loads(HF1BITLLM_LLAMA3_8B)["quantization_config"] == {"quant_method": "bitnet"}


# --- what the converter refuses, and says so ---------------------------------------------------------


def _edited(tmp_path: Path, edit: dict[str, Any]) -> RealCheckpoint:
    text = scale_down(FALCON3_1B_INSTRUCT, 256, 256)
    cfg = json.loads(text)
    cfg["quantization_config"].update(edit)
    return make_real_checkpoint(tmp_path / "ckpt", json.dumps(cfg, indent=2), seed=2)


def test_decoder_layers_kept_in_full_precision_are_refused(tmp_path: Path) -> None:
    ckpt = _edited(tmp_path, {"modules_to_not_convert": ["lm_head", "down_proj"]})
    with pytest.raises(
        UnsupportedCheckpointError, match=r"keeps 2 decoder linear layers.*model\.layers\.0\.mlp"
    ):
        convert_checkpoint(ckpt.path, tmp_path / "x.gguf", progress=False)
    assert not (tmp_path / "x.gguf").exists()


def test_a_layer_prefix_is_matched_at_module_boundaries(tmp_path: Path) -> None:
    """transformers' rule: "model.layers.1" excludes layer 1 (7 linears), not layer 11 or layer 0."""
    ckpt = _edited(tmp_path, {"modules_to_not_convert": ["lm_head", "model.layers.1"]})
    with pytest.raises(
        UnsupportedCheckpointError, match=r"keeps 7 decoder .*model\.layers\.1\.self_attn\.q_proj"
    ):
        convert_checkpoint(ckpt.path, tmp_path / "x.gguf", progress=False)


def test_rms_norm_inside_the_linear_layers_is_refused(tmp_path: Path) -> None:
    ckpt = _edited(tmp_path, {"use_rms_norm": True, "rms_norm_eps": 1e-5})
    with pytest.raises(UnsupportedCheckpointError, match="use_rms_norm.*cannot be converted exactly"):
        convert_checkpoint(ckpt.path, tmp_path / "x.gguf", progress=False)


def test_offline_float_weights_without_scales_are_refused(tmp_path: Path) -> None:
    """A Falcon3/Falcon-E style config over bf16 weights (e.g. a 'bfloat16' revision given a BitNet config)
    must not be ternarized: transformers' offline layers would not ternarize them either."""
    from safetensors.torch import save_file

    ckpt = _edited(tmp_path, {})
    state = {k: v for k, v in _hf_tensors(ckpt.path).items() if not k.endswith("weight_scale")}
    for name, codes in ckpt.codes.items():
        state[name + ".weight"] = torch.from_numpy(codes.astype(np.float32) * 0.01).to(torch.bfloat16)
    save_file(state, str(ckpt.path / "model.safetensors"))
    with pytest.raises(UnsupportedCheckpointError, match="quantization_mode 'online'.*default branch"):
        convert_checkpoint(ckpt.path, tmp_path / "x.gguf", progress=False)


def test_unknown_quantization_mode_is_refused(tmp_path: Path) -> None:
    ckpt = _edited(tmp_path, {"quantization_mode": "dynamic"})
    with pytest.raises(UnsupportedCheckpointError, match="quantization_mode 'dynamic' is unknown"):
        convert_checkpoint(ckpt.path, tmp_path / "x.gguf", progress=False)


# --- against transformers, through the engine ---------------------------------------------------------


@pytest.mark.engine
@pytest.mark.parametrize("model", sorted(SEEDS))
def test_released_config_matches_transformers(engine_bin: Path, model: str, tmp_path: Path) -> None:  # noqa: F811
    ckpt = make_real_checkpoint(tmp_path / "ckpt", scale_down(REAL[model], 256, 256), seed=SEEDS[model])
    ids = ckpt.tokenizer.encode(PROMPT).ids
    gguf = tmp_path / f"{model}.gguf"
    convert_checkpoint(ckpt.path, gguf, progress=False)
    engine = engine_greedy(engine_bin, gguf, ids, VOCAB, tmp_path)
    assert_engine_matches(engine, greedy(reference_model(ckpt), ids, N_NEW), model)
