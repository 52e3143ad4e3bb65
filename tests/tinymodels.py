"""Tiny BitNet checkpoints made by transformers itself, for converter and engine tests (no network).

`make_checkpoint` builds a transformers `BitNetForCausalLM` config, fills its weights with a chosen
recipe and saves a real checkpoint directory (config.json, model.safetensors, tokenizer files):

- weights="packed": uint8 weights from transformers' own `pack_weights` + `weight_scale`, with
  `quantization_config` {bitnet, linear_class, offline} (the microsoft/bitnet-b1.58-2B-4T layout);
- weights="master": float master weights (ternarized when loaded; the -bf16 repo's layout), with
  quantization_config {bitnet, autobitlinear, online};
- weights="unpacked": float tensors holding -1/0/+1 next to a `weight_scale` (offline, not packed).

Shaping (DESIGN.md "Testing without the internet"): the token embedding is small (std 0.02) next to the
layers' unit-RMS outputs, so the last hidden state is not just the input token's embedding (no echo),
and the final norm weight is large (~8) so the logits are well separated. All values that the GGUF
stores in 16-bit (the F16 embedding) are exactly representable in fp16.

`reference_model` loads a checkpoint the way transformers' BitNet quantizer does (`replace_with_bitnet_
linear` + the checkpoint's own tensors), so the reference numerics are transformers', not ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
PROMPT = "The function returns the value of the attribute"

_torch_compile_off = False


def disable_torch_compile() -> None:
    """transformers' BitNet helpers are @torch.compile'd; run them eagerly (no C++ toolchain, fast)."""
    global _torch_compile_off
    if not _torch_compile_off:
        import torch._dynamo

        torch._dynamo.config.disable = True
        _torch_compile_off = True


@dataclass(frozen=True)
class TinyShape:
    """Shape of a tiny test model. hidden = n_ff = 256 means every linear's input is exactly one
    256-value block, so the engine's per-block int8 activation quantization equals transformers'
    per-token quantization (see test_convert_e2e.py)."""

    hidden: int = 256
    n_ff: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 512
    ctx: int = 256


@dataclass
class TinyCheckpoint:
    """A saved tiny checkpoint plus the exact values the converter must reproduce."""

    path: Path
    config: dict[str, Any]
    codes: dict[str, np.ndarray] = field(default_factory=dict)  # HF weight name -> int8 (out, in)
    scales: dict[str, np.float32] = field(default_factory=dict)  # HF weight name -> multiplier of codes
    tokenizer: Any = None  # tokenizers.Tokenizer


def save_tokenizer(model_dir: Path, vocab_size: int = 512, chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """Train the tiny byte-level BPE tokenizer and save it as transformers would (tokenizer.json + config)."""
    from transformers import PreTrainedTokenizerFast

    from bitnet.models.synthetic import train_tiny_tokenizer

    tok = train_tiny_tokenizer(vocab_size)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(model_dir)
    return tok


def incomplete_utf8_ids(tok: Any) -> list[int]:
    """Ids of byte-level BPE tokens whose bytes are not valid UTF-8 on their own (e.g. a lone 0x80)."""
    from tokenizers import decoders

    byte_level = decoders.ByteLevel()
    vocab: dict[str, int] = tok.get_vocab()
    return sorted(i for t, i in vocab.items() if "\ufffd" in byte_level.decode([t]))


def _ternary(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-1, 2, size=shape, dtype=np.int8)


def make_checkpoint(
    model_dir: Path,
    *,
    shape: TinyShape | None = None,
    activation: str = "relu2",
    weights: str = "packed",
    linear_class: str = "autobitlinear",
    scale_dtype: torch.dtype = torch.float32,
    architecture: str = "BitNetForCausalLM",
    seed: int = 0,
    tokenizer: bool = True,
    embedding: str = "f16-exact",
) -> TinyCheckpoint:
    """Write a tiny BitNet checkpoint directory (see the module docstring for the recipes).

    `embedding`: "f16-exact" (float32 values an F16 head holds exactly) or "bf16" (a bf16 tensor, as in
    microsoft/bitnet-b1.58-2B-4T: a BF16 head holds it exactly, an F16 one rounds its smallest values)."""
    from safetensors.torch import save_file
    from transformers import BitNetConfig, BitNetForCausalLM

    disable_torch_compile()
    s = shape or TinyShape()
    model_dir.mkdir(parents=True, exist_ok=True)
    cfg = BitNetConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.n_ff,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        hidden_act=activation,
        max_position_embeddings=s.ctx,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
    )
    names = list(BitNetForCausalLM(cfg).state_dict())  # parameter names and order, as transformers has them
    shapes = {k: tuple(v.shape) for k, v in BitNetForCausalLM(cfg).state_dict().items()}
    rng = np.random.default_rng(seed)
    ckpt = TinyCheckpoint(model_dir, {})
    ckpt.tokenizer = save_tokenizer(model_dir, s.vocab) if tokenizer else None
    quiet = [0, 1] + (incomplete_utf8_ids(ckpt.tokenizer) if tokenizer else [])
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        if name == "lm_head.weight":
            continue  # tied: save_pretrained does not store it either
        shp = shapes[name]
        if name == "model.embed_tokens.weight":
            emb = rng.standard_normal(shp) * 0.02
            # Rows ~0 for BOS/EOS (greedy never stops early) and for tokens that are not complete UTF-8
            # (llama-server withholds those tokens' probabilities until the character completes).
            emb[quiet] *= 0.05
            if embedding == "bf16":  # stored as bf16, like the released 2B4T embedding
                tensors[name] = torch.from_numpy(emb.astype(np.float32)).to(torch.bfloat16)
            else:  # fp16-exact float32: the F16 GGUF embedding is lossless
                tensors[name] = torch.from_numpy(emb.astype(np.float16).astype(np.float32))
        elif name == "model.norm.weight":
            tensors[name] = torch.from_numpy(rng.uniform(6.0, 10.0, shp).astype(np.float32))
        elif name.endswith("norm.weight"):
            tensors[name] = torch.from_numpy(rng.uniform(0.5, 1.5, shp).astype(np.float32))
        elif name.endswith("_proj.weight"):
            out_f, in_f = shp
            if weights == "master":
                # ternarized scale = mean|W| = 0.8 std, so std 1.25/sqrt(n_in) gives ~unit-RMS outputs
                std = rng.uniform(0.8, 1.2) * 1.25 / np.sqrt(in_f)
                tensors[name] = torch.from_numpy((rng.standard_normal(shp) * std).astype(np.float32))
                continue
            codes = _ternary(rng, shp)
            # unit-RMS outputs for unit-RMS inputs (E[w^2] = 2/3), +-20% so tensors differ
            scale = rng.uniform(0.8, 1.2) / np.sqrt(2 / 3 * in_f)
            # AutoBitLinear multiplies the output by weight_scale, BitLinear divides by it
            ws = torch.tensor([scale if linear_class == "autobitlinear" else 1.0 / scale], dtype=scale_dtype)
            ws64 = ws.double().item()  # the stored value, exactly
            ckpt.codes[name] = codes
            ckpt.scales[name] = np.float32(ws64 if linear_class == "autobitlinear" else 1.0 / ws64)
            if weights == "packed":
                from transformers.integrations.bitnet import pack_weights

                tensors[name] = pack_weights(torch.from_numpy(codes.copy()))
            else:
                tensors[name] = torch.from_numpy(codes.astype(np.float32))
            tensors[name[: -len("weight")] + "weight_scale"] = ws
        else:
            raise AssertionError(f"unexpected parameter {name}")
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict()
    config["architectures"] = [architecture]
    mode = "online" if weights == "master" else "offline"
    config["quantization_config"] = {
        "quant_method": "bitnet",
        "linear_class": linear_class,
        "quantization_mode": mode,
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    ckpt.config = config
    return ckpt


def reference_model(model_dir: Path, activation: str | None = None) -> Any:
    """transformers' model for a tiny checkpoint with its BitNet linear layers (the package's loader,
    bitnet.bench.numerics.reference_model: what `invoke check` runs). `activation` overrides hidden_act."""
    from bitnet.bench.numerics import reference_model as load

    return load(model_dir, activation=activation)


def greedy(model: Any, prompt_ids: list[int], n_new: int) -> tuple[list[int], np.ndarray]:
    """Greedy continuation (full recompute per step, no KV cache) and each step's logits (n_new, vocab)."""
    from bitnet.bench.numerics import reference_greedy

    return reference_greedy(model, prompt_ids, n_new)


def save_sentencepiece_tokenizer(model_dir: Path, vocab_size: int = 500) -> Any:
    """Train a small SentencePiece BPE model (LlamaTokenizer layout: <unk>=0, <s>=1, </s>=2) + configs."""
    import io
    from pydoc_data.topics import topics

    import sentencepiece as spm

    buf = io.BytesIO()
    lines = [line for key in sorted(topics) for line in topics[key].splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        num_threads=1,
        minloglevel=2,
    )
    (model_dir / "tokenizer.model").write_bytes(buf.getvalue())
    (model_dir / "added_tokens.json").write_text(json.dumps({"<pad>": vocab_size}))
    tok_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "tokenizer_class": "LlamaTokenizer",
    }
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def rewrite_tensors(model_dir: Path, rename: dict[str, str], dtype: torch.dtype | None = None) -> None:
    """Rename tensors (substring replacement) and optionally cast float tensors, in place."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(model_dir / "model.safetensors"))
    out = {}
    for name, t in state.items():
        for old, new in rename.items():
            name = name.replace(old, new)
        out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    save_file(out, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


def make_1bitllm_checkpoint(
    model_dir: Path, *, seed: int = 0, shape: TinyShape | None = None
) -> TinyCheckpoint:
    """A 1bitLLM-style `BitnetForCausalLM`: SiLU, fp16 master weights, `inner_attn_ln`/`ffn_layernorm`
    sub-norm names, SentencePiece tokenizer, no GQA, model_type "llama"."""
    s = shape or TinyShape(kv_heads=4)
    ckpt = make_checkpoint(
        model_dir,
        shape=s,
        activation="silu",
        weights="master",
        architecture="BitnetForCausalLM",
        seed=seed,
        tokenizer=False,
    )
    rewrite_tensors(
        model_dir, {"attn_sub_norm": "inner_attn_ln", "ffn_sub_norm": "ffn_layernorm"}, torch.float16
    )
    config = ckpt.config
    config.pop("quantization_config")  # 1bitLLM quantizes in its own remote code
    config.update(
        model_type="llama",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=s.vocab - 12,
        weight_bits=1,
        input_bits=8,
        torch_dtype="float16",
    )
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    ckpt.tokenizer = save_sentencepiece_tokenizer(model_dir, s.vocab - 12)
    return ckpt


def make_llama_checkpoint(
    model_dir: Path,
    *,
    seed: int = 0,
    linear_class: str = "bitlinear",
    tied: bool = False,
    shape: TinyShape | None = None,
) -> TinyCheckpoint:
    """A Llama3-8B-1.58-style `LlamaForCausalLM` with BitNet quantization_config and packed weights (no
    sub-norms), with an untied fp16-exact lm_head unless `tied`."""
    s = shape or TinyShape()
    ckpt = make_checkpoint(
        model_dir,
        shape=s,
        activation="silu",
        weights="packed",
        linear_class=linear_class,
        architecture="LlamaForCausalLM",
        seed=seed,
    )
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(str(model_dir / "model.safetensors")).items() if "sub_norm" not in k}
    if not tied:
        rng = np.random.default_rng(seed + 1000)
        head = rng.standard_normal((s.vocab, s.hidden)) * 0.02
        head[[0, 1, *incomplete_utf8_ids(ckpt.tokenizer)]] *= 0.05  # as make_checkpoint's embedding
        state["lm_head.weight"] = torch.from_numpy(head.astype(np.float16).astype(np.float32))
    save_file(state, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    config = ckpt.config
    config.update(
        model_type="llama", tie_word_embeddings=tied, rope_theta=config["rope_parameters"]["rope_theta"]
    )
    config.pop("rope_parameters")
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    return ckpt


def llama_reference_model(model_dir: Path) -> Any:
    """transformers' LlamaForCausalLM with its BitNet linear layers (as the BitNet quantizer builds it)."""
    return reference_model(model_dir)


def runnable_variants() -> list[str]:
    """The engine's CPU variants this host can run (each carries our kernels for its ISA)."""
    from bitnet.engine.build import load_pin
    from bitnet.engine.cpu import detect_cpu

    cpu = detect_cpu()
    return [v.name for v in load_pin().variants_for(cpu.arch) if cpu.has(*v.requires)]


# The checkpoints of tests/test_numerics.py, for `invoke check` by hand (the README's numerics table):
#     python tests/tinymodels.py /tmp/tiny-ckpts        # writes one directory per recipe
NUMERICS_SHAPE = TinyShape(hidden=512, n_ff=1280, layers=2, heads=4, kv_heads=2, vocab=512, ctx=512)
NUMERICS_RECIPES: dict[str, dict[str, str]] = {
    # the 2B4T recipe: packed AutoBitLinear, relu², bf16 embedding
    "relu2-packed-autobitlinear": {
        "activation": "relu2",
        "weights": "packed",
        "linear_class": "autobitlinear",
        "embedding": "bf16",
    },
    "silu-master-online": {"activation": "silu", "weights": "master", "linear_class": "autobitlinear"},
    "relu2-packed-bitlinear": {"activation": "relu2", "weights": "packed", "linear_class": "bitlinear"},
    "silu-packed-bitlinear": {"activation": "silu", "weights": "packed", "linear_class": "bitlinear"},
}


def write_numerics_checkpoints(root: Path) -> list[Path]:
    """The four test_numerics checkpoints (same seeds) under `root`, one directory per recipe."""
    out = []
    for i, (name, recipe) in enumerate(NUMERICS_RECIPES.items()):
        make_checkpoint(root / name, shape=NUMERICS_SHAPE, seed=100 + i, **recipe)  # type: ignore[arg-type]
        out.append(root / name)
    return out


if __name__ == "__main__":
    import sys

    for path in write_numerics_checkpoints(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-checkpoints")):
        print(path)
