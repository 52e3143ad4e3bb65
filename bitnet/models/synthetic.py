"""Synthetic BitNet GGUFs: real shapes, random ternary weights, no download.

    from bitnet.models.synthetic import write_dummy_model
    write_dummy_model("2B", "models/dummy-2B.gguf")      # exactly the 2B4T shape, ~1.2 GB, seconds
    write_dummy_model("tiny", "models/tiny.gguf")        # ~3 MB, real trained tokenizer: the offline default

Ternary weights are generated directly as packed TQ2_0/TQ1_0 bytes (random indices into the table of
valid bytes, formats.packing.random_tq*_0), never through floats; the embedding is random normal F16
(or random Q8_0/Q4_0 blocks). Everything is a pure function of (size, outtype, head_type, seed).

Every size carries the same small byte-level BPE tokenizer, trained at generation time with the
`tokenizers` library on the Python documentation that ships with CPython (`pydoc_data.topics`), with
Llama-3's pre-tokenizer (so the engine runs it as "llama-bpe"); larger vocabularies are padded with
unused tokens. Scales: each linear gets s = 1/sqrt(2/3 * n_in) (uniform trits have E[w^2] = 2/3), so a
unit-RMS input gives a unit-RMS output. The tiny model is shaped so that greedy decoding is not an echo
of the prompt: a small embedding (std 0.01) next to unit-RMS layer outputs (larger embeddings make the
tied head favour the current token: repetition loops), 8 layers, and a large final-norm weight (8) for
well-separated logits (DESIGN.md, "Testing without the internet"). Tokens that are not printable text on
their own (BOS/EOS, control bytes, partial UTF-8) get ~zero embedding rows, so greedy output is text.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType

from bitnet.errors import ConversionError
from bitnet.models import installed
from bitnet.models.convert.base import HEAD_TYPES, OUT_TYPES, HParams, add_model_metadata
from bitnet.models.convert.tokenizer import LLAMA3_SPLIT_REGEX, GGUFVocab, vocab_from_tokenizer_json
from bitnet.models.formats import packing
from bitnet.models.formats.writer import Metadata, TensorSpec, WriteResult, write_gguf

logger = logging.getLogger(__name__)

__all__ = ["SIZES", "TINY_SPECIAL_TOKENS", "DummyShape", "train_tiny_tokenizer", "write_dummy_model"]

Q = GGMLQuantizationType
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
TINY_SPECIAL_TOKENS = (BOS, EOS)
TINY_VOCAB = 4096  # trained BPE size (ids 0, 1 are BOS, EOS)


@dataclass(frozen=True)
class DummyShape:
    """Shape of a synthetic model; widths are multiples of 256 so every linear is TQ-packable."""

    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    n_ctx: int = 4096
    activation: str = "relu2"
    rope_theta: float = 500000.0


# BitNet b1.58 paper sizes use LLaMA shapes and LLaMA's 32000-token vocabulary (ref: arXiv 2402.17764,
# Table 1/2 and 1bitLLM's reproductions); "2B" is microsoft/bitnet-b1.58-2B-4T exactly.
SIZES: dict[str, DummyShape] = {
    "tiny": DummyShape(256, 512, 8, 4, 2, TINY_VOCAB, n_ctx=2048),
    "125M": DummyShape(768, 2048, 12, 12, 12, 32000),
    "350M": DummyShape(1024, 2816, 24, 16, 16, 32000),
    "700M": DummyShape(1536, 4096, 24, 16, 16, 32000),
    "1.3B": DummyShape(2048, 5632, 24, 16, 16, 32000),
    "2B": DummyShape(2560, 6912, 30, 20, 5, 128256),
    "3B": DummyShape(3072, 8192, 26, 24, 24, 32000),
    "7B": DummyShape(4096, 11008, 32, 32, 32, 32000),
    "13B": DummyShape(5120, 13824, 40, 40, 40, 32000),
}
_EMBED_STD = 0.05
_TINY_EMBED_STD = 0.01  # smaller = fewer repetition loops in greedy output (measured over seeds/prompts)
_TINY_OUTPUT_NORM = 8.0


def _training_text() -> list[str]:
    from pydoc_data.topics import topics  # ships with CPython: ~465 kB of English technical prose

    text = "\n\n".join(topics[key] for key in sorted(topics))
    return [text[i : i + 16384] for i in range(0, len(text), 16384)]


def train_tiny_tokenizer(vocab_size: int = TINY_VOCAB) -> Any:
    """Train the deterministic byte-level BPE tokenizer (Llama-3 pre-tokenizer) on pydoc_data.topics.

    Returns a `tokenizers.Tokenizer`; ids 0 and 1 are BOS and EOS, BOS is prepended by the
    post-processor (as Llama-3's tokenizer does), merges are ignored for whole-vocabulary words
    (Llama-3's `ignore_merges`, which the engine's "llama-bpe" applies too).
    """
    try:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConversionError(
            "the tiny model's tokenizer needs the `tokenizers` package: pip install tokenizers"
        ) from exc
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return tok


def _printable(text: str) -> bool:
    # U+FFFD is what the byte-level decoder makes of partial UTF-8; isprintable() accepts it
    return "\ufffd" not in text and all(c.isprintable() or c in "\n\t" for c in text)


# A plain-text chat template for the tiny model (its tokenizer has no chat special tokens); assistant turns
# end with EOS. llama-server's jinja and llama-completion's template detection both accept it.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}SYSTEM: {{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}USER: {{ message['content'] }}\n"
    "{% else %}ASSISTANT: {{ message['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _tiny_vocab() -> tuple[GGUFVocab, list[int]]:
    """The GGUF vocabulary and the ids of tokens that are not printable text on their own (BOS/EOS,
    control bytes, partial UTF-8): their embedding rows are scaled to ~0 so greedy never picks them."""
    from tokenizers import decoders

    tok = train_tiny_tokenizer()
    specials = {"bos_token": BOS, "eos_token": EOS}
    vocab = vocab_from_tokenizer_json(
        json.loads(tok.to_str()), specials, source="tiny", chat_template=TINY_CHAT_TEMPLATE
    )
    byte_level = decoders.ByteLevel()
    quiet = [
        i
        for t, i in tok.get_vocab().items()
        if t in TINY_SPECIAL_TOKENS or not _printable(byte_level.decode([t]))
    ]
    return vocab, sorted(quiet)


def _ternary_spec(name: str, rows: int, cols: int, qtype: Q, rng: np.random.Generator) -> list[TensorSpec]:
    def weight() -> npt.NDArray[Any]:
        if qtype == Q.TQ2_0:
            return packing.random_tq2_0(rng, rows, cols)
        if qtype == Q.TQ1_0:
            return packing.random_tq1_0(rng, rows, cols)
        codes = rng.integers(-1, 2, size=(rows, cols), dtype=np.int8)
        return codes.astype("<f2" if qtype == Q.F16 else "<f4")

    scale = np.array([1.0 / math.sqrt(2.0 / 3.0 * cols)], dtype="<f4")
    return [
        TensorSpec(f"{name}.weight", (rows, cols), qtype, weight),
        TensorSpec(f"{name}.scale", (1,), Q.F32, lambda: scale),
    ]


def _embedding_spec(
    rows: int, cols: int, head: Q, rng: np.random.Generator, std: float, quiet: list[int]
) -> TensorSpec:
    def produce() -> npt.NDArray[Any]:
        if head in (Q.F16, Q.F32):
            out = np.empty((rows, cols), dtype="<f2" if head == Q.F16 else "<f4")
            for start in range(0, rows, 8192):  # bounded f32 temporaries
                stop = min(rows, start + 8192)
                out[start:stop] = rng.standard_normal((stop - start, cols), dtype=np.float32) * std
            out[quiet] *= 0.05
            return out
        if head == Q.BF16:  # random normal rounded to bf16, handed to the writer as raw bytes
            bits = np.empty((rows, cols), dtype="<u2")
            for start in range(0, rows, 8192):
                stop = min(rows, start + 8192)
                bits[start:stop] = packing.f32_to_bf16(
                    rng.standard_normal((stop - start, cols), dtype=np.float32) * std
                )
            bits[quiet] = packing.f32_to_bf16(packing.bf16_to_f32(bits[quiet]) * np.float32(0.05))
            return bits.view(np.uint8)
        # random blocks directly: Q8_0 = fp16 d + 32 int8; Q4_0 = fp16 d + 16 bytes of nibbles
        nb = cols // 32
        block_bytes = 34 if head == Q.Q8_0 else 18
        out = np.empty((rows, nb, block_bytes), dtype=np.uint8)
        levels = 127 if head == Q.Q8_0 else 8
        out[:, :, :2] = np.array([3 * std / levels], dtype="<f2").view(np.uint8)
        out[quiet, :, :2] = np.array([0.15 * std / levels], dtype="<f2").view(np.uint8)
        if head == Q.Q8_0:
            out[:, :, 2:] = rng.integers(-127, 128, size=(rows, nb, 32), dtype=np.int8).view(np.uint8)
        else:
            out[:, :, 2:] = rng.integers(0, 256, size=(rows, nb, 16), dtype=np.uint8)
        return out.reshape(rows, nb * block_bytes)

    return TensorSpec("token_embd.weight", (rows, cols), head, produce)


def _const_spec(name: str, size: int, value: float) -> TensorSpec:
    return TensorSpec(name, (size,), Q.F32, lambda: np.full(size, value, dtype="<f4"))


def write_dummy_model(
    size: str,
    outfile: str | os.PathLike[str],
    *,
    outtype: str = "tq2_0",
    head_type: str = "f16",
    seed: int = 0,
    progress: bool = True,
) -> WriteResult:
    """Write a synthetic BitNet GGUF (arch "bitnet") of a named size with random ternary weights.

    Args:
        size: one of `SIZES` ("tiny", "125M", "350M", "700M", "1.3B", "2B", "3B", "7B", "13B").
        outfile: destination, written atomically.
        outtype: "tq2_0" (default), "tq1_0", "f16" or "f32" for the ternary linear weights.
        head_type: tied embedding type: "f16" (default), "bf16", "f32", "q8_0", "q4_0".
        seed: the file is a deterministic function of (size, outtype, head_type, seed).
        progress: progress bar over tensor bytes (on a terminal).
    """
    if size not in SIZES:
        raise ConversionError(f"unknown dummy size {size!r}: choose one of {', '.join(SIZES)}")
    if outtype.lower() not in OUT_TYPES or head_type.lower() not in HEAD_TYPES:
        raise ConversionError(
            f"outtype must be one of {', '.join(OUT_TYPES)} and head_type one of {', '.join(HEAD_TYPES)}"
        )
    shape = SIZES[size]
    qtype, head = OUT_TYPES[outtype.lower()], HEAD_TYPES[head_type.lower()]
    hp = HParams(
        n_vocab=shape.n_vocab,
        n_embd=shape.n_embd,
        n_ff=shape.n_ff,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_head_kv=shape.n_head_kv,
        head_dim=shape.n_embd // shape.n_head,
        n_ctx=shape.n_ctx,
        rope_theta=shape.rope_theta,
        rms_eps=1e-5,
        activation=shape.activation,
        tied=True,
    )
    md = Metadata()
    add_model_metadata(md, "bitnet", hp, f"bitnet-dummy-{size}", qtype)
    md.string("general.description", f"synthetic BitNet b1.58 model, random ternary weights (seed {seed})")
    vocab, quiet = _tiny_vocab()
    vocab.pad_to(hp.n_vocab)
    vocab.add_to(md)

    rng = np.random.default_rng([seed, list(SIZES).index(size)])
    kv = hp.n_head_kv * hp.head_dim
    specs = [
        _embedding_spec(
            hp.n_vocab, hp.n_embd, head, rng, _TINY_EMBED_STD if size == "tiny" else _EMBED_STD, quiet
        ),
        _const_spec("output_norm.weight", hp.n_embd, _TINY_OUTPUT_NORM if size == "tiny" else 1.0),
    ]
    for i in range(hp.n_layer):
        blk = f"blk.{i}."
        specs += [
            _const_spec(blk + n, hp.n_embd, 1.0)
            for n in ("attn_norm.weight", "ffn_norm.weight", "attn_sub_norm.weight")
        ]
        specs.append(_const_spec(blk + "ffn_sub_norm.weight", hp.n_ff, 1.0))
        for name, rows, cols in (
            ("attn_q", hp.n_embd, hp.n_embd),
            ("attn_k", kv, hp.n_embd),
            ("attn_v", kv, hp.n_embd),
            ("attn_output", hp.n_embd, hp.n_embd),
            ("ffn_gate", hp.n_ff, hp.n_embd),
            ("ffn_up", hp.n_ff, hp.n_embd),
            ("ffn_down", hp.n_embd, hp.n_ff),
        ):
            specs += _ternary_spec(blk + name, rows, cols, qtype, rng)
    result = write_gguf(outfile, "bitnet", md, specs, progress=progress)
    logger.info(
        "wrote %s: %d tensors, %.1f MB in %.1f s",
        result.path,
        result.n_tensors,
        result.nbytes / 1e6,
        result.seconds,
    )
    return result


def synthetic_name(size: str) -> str:
    """The catalogue name of the synthetic model of `size`: "tiny", else "dummy-<size>" (catalog.toml)."""
    return "tiny" if size == "tiny" else f"dummy-{size}"


def synthetic_model_path(
    size: str,
    outtype: str = "tq2_0",
    head_type: str = "f16",
    models_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where the synthetic model of `size` in these formats lives: what `invoke setup --model <name>`,
    `invoke dummy` and the benchmarks make and look for (`models_dir` None: $BITNET_MODELS, else ./models)."""
    root = installed.models_dir() if models_dir is None else Path(models_dir)
    return installed.model_path(synthetic_name(size), root, outtype, head_type)


def write_synthetic(
    size: str,
    out: Path,
    *,
    outtype: str = "tq2_0",
    head_type: str = "f16",
    seed: int = 0,
    build_dir: str | os.PathLike[str] = "build",
    progress: bool = True,
) -> Path:
    """`write_dummy_model`'s model; a head type only the engine can write (q6_k) is requantized by it."""
    from bitnet.models._tempfiles import new_temp
    from bitnet.models.convert.requantize import ENGINE_HEAD_TYPES, requantize_head

    if head_type.lower() not in ENGINE_HEAD_TYPES:
        write_dummy_model(size, out, outtype=outtype, head_type=head_type, seed=seed, progress=progress)
        return out
    tmp = new_temp(out, "-f16head")
    try:
        write_dummy_model(size, tmp, outtype=outtype, head_type="f16", seed=seed, progress=progress)
        requantize_head(tmp, out, head_type=head_type.lower(), outtype=outtype.lower(), build_dir=build_dir)
    finally:
        tmp.unlink(missing_ok=True)
    return out
