"""The converter registry and the machinery shared by Llama-shaped BitNet checkpoints.

An architecture module subclasses `ArchConverter`, sets a few class attributes (GGUF arch, tensor
names, config defaults) and registers itself for the `architectures[0]` strings of config.json with
`@register(...)`. `ArchConverter.plan()` turns the checkpoint into a list of `TensorSpec`s whose data is
produced lazily, one tensor at a time, while the GGUF is written.

GGUF tensor names (llama.cpp `LLM_TENSOR_*`): token_embd, output_norm, [output], blk.N.attn_norm,
blk.N.attn_{q,k,v,output}, blk.N.attn_sub_norm, blk.N.ffn_norm, blk.N.ffn_{gate,up,down},
blk.N.ffn_sub_norm; a ternary `X.weight` comes with `X.scale`, an f32 tensor of shape {1} that the
graph multiplies into the matmul result (llama-graph.cpp `build_lora_mm(w, cur, w_s)`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, LlamaFileType
from gguf.quants import quantize

from bitnet.engine.contract import HIDDEN_ACTIVATION, gguf_key
from bitnet.errors import (
    CheckpointDtypeError,
    CorruptCheckpointError,
    MissingConfigKeyError,
    UnknownArchitectureError,
    UnsupportedCheckpointError,
)
from bitnet.models.convert.checkpoint import Checkpoint
from bitnet.models.convert.weights import BitNetQuantization, read_linear
from bitnet.models.formats import packing
from bitnet.models.formats.writer import Metadata, TensorSpec, tensor_nbytes

logger = logging.getLogger(__name__)

__all__ = [
    "ACTIVATION_QUANT",
    "ACTIVATION_QUANT_MODES",
    "HEAD_TYPES",
    "OUT_TYPES",
    "ArchConverter",
    "HParams",
    "add_model_metadata",
    "converter_for",
    "head_spec",
    "register",
    "registered_architectures",
    "ternary_qtype",
]

Q = GGMLQuantizationType
# --outtype: the ternary linear weights. f16/f32 hold ternary values exactly (reference/debug files).
OUT_TYPES: dict[str, Q] = {"tq2_0": Q.TQ2_0, "tq1_0": Q.TQ1_0, "f16": Q.F16, "f32": Q.F32}
FILE_TYPES: dict[Q, LlamaFileType] = {
    Q.TQ2_0: LlamaFileType.MOSTLY_TQ2_0,
    Q.TQ1_0: LlamaFileType.MOSTLY_TQ1_0,
    Q.F16: LlamaFileType.MOSTLY_F16,
    Q.F32: LlamaFileType.ALL_F32,
}
# --head-type: the (tied) token embedding / output head. gguf-py 0.19 has no Q6_K quantizer, so q6_k is
# not offered; `llama-quantize --token-embedding-type q6_k` can requantize a converted file.
# bf16 stores a bf16 checkpoint's embedding bit for bit (f16 rounds it, and overflows past 65504).
HEAD_TYPES: dict[str, Q] = {"f16": Q.F16, "bf16": Q.BF16, "f32": Q.F32, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}

# ternary codes -> bytes of each type that holds them exactly (formats.packing declares the layouts)
_TERNARY_PACKERS: dict[Q, Callable[[npt.NDArray[np.int8]], npt.NDArray[Any]]] = {
    Q.TQ2_0: packing.pack_tq2_0,
    Q.TQ1_0: packing.pack_tq1_0,
    Q.Q8_0: packing.pack_q8_0_ternary,
    Q.F16: lambda c: c.astype("<f2"),
    Q.F32: lambda c: c.astype("<f4"),
}
# `{arch}.activation_quant`: how the engine quantizes the input of a ternary matmul. "per_token" is BitNet
# b1.58's definition; "per_block" (ggml's q8_K, what stock ggml computes) is the engine's fallback.
ACTIVATION_QUANT = "per_token"
ACTIVATION_QUANT_MODES = ("per_token", "per_block")
_EMBED_CHUNK_ROWS = 8192  # rows of the embedding converted per step (bounds the f32 temporary)

_REGISTRY: dict[str, type[ArchConverter]] = {}


def register(*hf_architectures: str) -> Callable[[type[ArchConverter]], type[ArchConverter]]:
    """Class decorator: handle checkpoints whose config.json `architectures[0]` is one of these names."""

    def deco(cls: type[ArchConverter]) -> type[ArchConverter]:
        for name in hf_architectures:
            if name in _REGISTRY:
                raise RuntimeError(
                    f"architecture {name} registered twice ({_REGISTRY[name].__name__}, {cls.__name__})"
                )
            _REGISTRY[name] = cls
        return cls

    return deco


def registered_architectures() -> list[str]:
    """The config.json architecture names a converter is registered for."""
    return sorted(_REGISTRY)


def converter_for(config: dict[str, Any], config_path: Path) -> type[ArchConverter]:
    """The converter class for this config.json (UnknownArchitectureError if none)."""
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs:
        raise MissingConfigKeyError("architectures", config_path, "Hugging Face")
    arch = str(archs[0])
    try:
        return _REGISTRY[arch]
    except KeyError:
        raise UnknownArchitectureError(
            f"{config_path}: architecture {arch!r} is not a BitNet architecture this converter knows. "
            f"Supported: {', '.join(registered_architectures())}. "
            "For an official I2_S GGUF pass the .gguf file."
        ) from None


def ternary_qtype(outtype: Q, row_len: int) -> tuple[Q, str | None]:
    """The type a ternary tensor with rows of `row_len` values is written as, and why if not `outtype`.

    TQ1_0/TQ2_0 need row_len % 256 == 0; otherwise Q8_0 (row_len % 32 == 0) or F16, both exact.
    """
    block = {Q.TQ2_0: 256, Q.TQ1_0: 256}.get(outtype, 1)
    if row_len % block == 0:
        return outtype, None
    fallback = Q.Q8_0 if row_len % 32 == 0 else Q.F16
    return fallback, f"rows of {row_len} values are not a multiple of 256 ({outtype.name} blocks)"


def head_spec(
    name: str, rows: int, cols: int, head: Q, read_rows: Callable[[int, int], npt.NDArray[np.float32]]
) -> tuple[TensorSpec, str | None]:
    """Spec for an embedding/head matrix (rows, cols) converted in chunks of rows from float32."""
    qtype, note = head, None
    block = {Q.Q8_0: 32, Q.Q4_0: 32}.get(head, 1)
    if cols % block:
        qtype, note = Q.F16, f"{name}: rows of {cols} values do not fit {head.name} blocks, written as F16"

    def produce() -> npt.NDArray[Any]:
        if qtype in (Q.F16, Q.F32):
            out = np.empty((rows, cols), dtype=_np_dtype(qtype))
        elif qtype == Q.BF16:
            out = np.empty((rows, cols), dtype="<u2")
        else:
            out = np.empty((rows, tensor_nbytes((cols,), qtype)), dtype=np.uint8)
        for start in range(0, rows, _EMBED_CHUNK_ROWS):  # fill in place: one f32 chunk at a time
            stop = min(rows, start + _EMBED_CHUNK_ROWS)
            chunk = read_rows(start, stop)
            if qtype in (Q.F16, Q.F32):
                out[start:stop] = chunk
            elif qtype == Q.BF16:
                out[start:stop] = packing.f32_to_bf16(chunk)
            else:
                out[start:stop] = quantize(chunk, qtype)
        return out.view(np.uint8) if qtype == Q.BF16 else out

    return TensorSpec(name, (rows, cols), qtype, produce), note


def _np_dtype(q: Q) -> str:
    return "<f2" if q == Q.F16 else "<f4"


def add_model_metadata(md: Metadata, arch: str, hp: HParams, name: str, outtype: Q) -> None:
    """General keys + `{arch}.*` hyper-parameters (llama.cpp llama-arch.cpp LLM_KV_* names)."""
    md.string("general.type", "model")
    md.string("general.name", name)
    md.u32("general.file_type", int(FILE_TYPES[outtype]))
    md.u32("general.quantization_version", 2)  # GGML_QNT_VERSION
    md.u32(f"{arch}.vocab_size", hp.n_vocab)
    md.u32(f"{arch}.context_length", hp.n_ctx)
    md.u32(f"{arch}.embedding_length", hp.n_embd)
    md.u32(f"{arch}.block_count", hp.n_layer)
    md.u32(f"{arch}.feed_forward_length", hp.n_ff)
    md.u32(f"{arch}.attention.head_count", hp.n_head)
    md.u32(f"{arch}.attention.head_count_kv", hp.n_head_kv)
    md.f32(f"{arch}.rope.freq_base", hp.rope_theta)
    md.u32(f"{arch}.rope.dimension_count", hp.head_dim)
    if hp.head_dim * hp.n_head != hp.n_embd:  # llama only (bitnet requires equality)
        md.u32(f"{arch}.attention.key_length", hp.head_dim)
        md.u32(f"{arch}.attention.value_length", hp.head_dim)
    md.f32(f"{arch}.attention.layer_norm_rms_epsilon", hp.rms_eps)
    if arch == "bitnet":  # read by our engine patch (src/models/bitnet.cpp); absent -> SiLU
        md.string(gguf_key("bitnet", HIDDEN_ACTIVATION), hp.activation)
    # BitNet b1.58 quantizes each linear layer's input to int8 per token (transformers' ActQuant); our
    # engine patch 0006 reads this key (absent -> ggml's per-256-block q8_K, with a warning).
    md.string(f"{arch}.activation_quant", ACTIVATION_QUANT)


@dataclass(frozen=True)
class HParams:
    """The hyper-parameters the GGUF metadata and the tensor shapes need."""

    n_vocab: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    rope_theta: float
    rms_eps: float
    activation: str  # "relu2" | "silu"
    tied: bool


class ArchConverter:
    """Base converter for Llama-shaped BitNet checkpoints (HF names `model.layers.N.self_attn.q_proj`...)."""

    gguf_arch: ClassVar[str] = "bitnet"
    # config.json defaults of the HF config class (used when a key is absent)
    config_defaults: ClassVar[dict[str, Any]] = {}
    # HF module names of the sub-norms (None: the architecture has none)
    attn_sub_norm: ClassVar[str | None] = "self_attn.attn_sub_norm"
    ffn_sub_norm: ClassVar[str | None] = "mlp.ffn_sub_norm"
    permute_qk: ClassVar[bool] = False  # HF rotate-half -> ggml NORM rope needs a row permutation of q/k
    untied_head_ok: ClassVar[bool] = False  # can the GGUF arch hold a separate output.weight?
    activations: ClassVar[tuple[str, ...]] = ("relu2", "silu")

    _LINEARS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    )

    def __init__(self, model_dir: Path, config: dict[str, Any], ckpt: Checkpoint) -> None:
        self.model_dir = model_dir
        self.config = config
        self.ckpt = ckpt
        self.config_path = model_dir / "config.json"
        self.quant = BitNetQuantization.from_config(config)
        self.check()
        self.hp = self.hparams()

    # --- config -------------------------------------------------------------------------------------

    @property
    def hf_architecture(self) -> str:
        """config.json's architectures[0]."""
        return str(self.config["architectures"][0])

    def cfg(self, key: str, required: bool = True) -> Any:
        """A config value or the class default; MissingConfigKeyError if required and absent."""
        if key in self.config and self.config[key] is not None:
            return self.config[key]
        if key in self.config_defaults:
            return self.config_defaults[key]
        if required:
            raise MissingConfigKeyError(key, self.config_path, self.hf_architecture)
        return None

    def check(self) -> None:
        """Reject checkpoints this architecture module cannot convert exactly (override to add checks)."""
        if self.quant is None:
            return
        if self.quant.use_rms_norm:
            # transformers' BitLinear/AutoBitLinear then normalise each linear's input with their own
            # RMSNorm (`<linear>.rms_norm.weight`) before quantizing it; q/k/v and gate/up each get a
            # different norm of the same input, which neither engine graph can express.
            raise UnsupportedCheckpointError(
                f"{self.config_path}: quantization_config.use_rms_norm=true puts an RMSNorm inside every "
                "linear layer, which neither the bitnet nor the llama graph of the engine has, so this "
                "checkpoint cannot be converted exactly. No released BitNet model we know of sets it; if "
                "the model was trained without those norms, remove use_rms_norm from config.json"
            )
        n_layer = self.config.get("num_hidden_layers")
        layers = range(int(n_layer)) if isinstance(n_layer, int) else range(0)
        kept = [
            f"model.layers.{i}.{suffix}"
            for i in layers
            for _, suffix in self._LINEARS
            if self.quant.keeps_full_precision(f"model.layers.{i}.{suffix}")
        ]
        if kept:
            raise UnsupportedCheckpointError(
                f"{self.config_path}: quantization_config.modules_to_not_convert "
                f"{list(self.quant.modules_to_not_convert)} keeps {len(kept)} decoder linear layers in "
                f"full precision (e.g. {kept[0]}); this converter writes every decoder linear as ternary "
                "and would change the model. Only the output head (lm_head) may be excluded"
            )

    def rope_theta(self) -> float:
        """rope_theta from the config (old `rope_theta` or transformers-5 `rope_parameters`)."""
        params = self.config.get("rope_parameters") or {}
        scaling = self.config.get("rope_scaling") or {}
        kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if kind != "default":
            raise UnsupportedCheckpointError(
                f"{self.config_path}: rope type {kind!r} is not supported by this converter (only plain RoPE)"
            )
        theta = params.get("rope_theta", self.config.get("rope_theta"))
        return float(theta if theta is not None else self.cfg("rope_theta"))

    def hparams(self) -> HParams:
        """Hyper-parameters from config.json (MissingConfigKeyError names any missing key)."""
        n_embd = int(self.cfg("hidden_size"))
        n_head = int(self.cfg("num_attention_heads"))
        n_head_kv = int(self.cfg("num_key_value_heads", required=False) or n_head)
        head_dim = int(self.cfg("head_dim", required=False) or n_embd // n_head)
        act = str(self.cfg("hidden_act")).lower()
        act = {"swish": "silu", "relu_squared": "relu2"}.get(act, act)
        if act not in self.activations:
            raise UnsupportedCheckpointError(
                f"{self.config_path}: hidden_act {act!r} is not supported for {self.hf_architecture} "
                f"(supported: {', '.join(self.activations)})"
            )
        if n_head % n_head_kv or (self.gguf_arch == "bitnet" and head_dim * n_head != n_embd):
            raise UnsupportedCheckpointError(
                f"{self.config_path}: {n_head} heads of {head_dim} with {n_head_kv} KV heads and hidden_size "
                f"{n_embd}: the engine's {self.gguf_arch} graph needs heads % KV heads == 0"
                + (" and heads x head_dim == hidden_size" if self.gguf_arch == "bitnet" else "")
            )
        return HParams(
            n_vocab=int(self.cfg("vocab_size")),
            n_embd=n_embd,
            n_ff=int(self.cfg("intermediate_size")),
            n_layer=int(self.cfg("num_hidden_layers")),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ctx=int(self.cfg("max_position_embeddings")),
            rope_theta=self.rope_theta(),
            rms_eps=float(self.cfg("rms_norm_eps")),
            activation=act,
            tied=bool(self.cfg("tie_word_embeddings")),
        )

    # --- metadata -----------------------------------------------------------------------------------

    def metadata(self, md: Metadata, outtype: Q) -> None:
        """Add the general keys and the architecture's hyper-parameter keys (`{arch}.*`) to `md`."""
        add_model_metadata(md, self.gguf_arch, self.hp, self.model_dir.name or "model", outtype)

    # --- tensors ------------------------------------------------------------------------------------

    def _norm_spec(self, gguf_name: str, hf_name: str, size: int) -> TensorSpec:
        info = self.ckpt.info(hf_name)
        if info.shape != (size,):
            raise CorruptCheckpointError(
                f"{hf_name}: shape {list(info.shape)}, expected [{size}] from config.json"
            )
        if info.dtype not in ("F32", "F16", "BF16", "F64"):
            raise CheckpointDtypeError(f"{hf_name} has dtype {info.dtype}; norm weights must be float")
        return TensorSpec(gguf_name, (size,), Q.F32, lambda: self.ckpt.read(hf_name).astype("<f4"))

    def _permute(self, codes: npt.NDArray[np.int8], n_heads: int) -> npt.NDArray[np.int8]:
        # HF rotates halves (i, i + d/2); ggml's NORM rope rotates pairs (2i, 2i + 1): within each head,
        # reorder rows [0..d/2) and [d/2..d) into interleaved pairs.
        rows, cols = codes.shape
        return codes.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)

    def _linear_specs(
        self, gguf_name: str, hf_name: str, out_f: int, in_f: int, outtype: Q
    ) -> tuple[list[TensorSpec], str | None]:
        info = self.ckpt.info(hf_name)
        if info.dtype not in ("U8", "F32", "F16", "BF16", "F64"):
            raise CheckpointDtypeError(
                f"{hf_name} has dtype {info.dtype}: expected packed uint8 (with weight_scale) "
                "or float master weights"
            )
        qtype, why = ternary_qtype(outtype, in_f)
        scales: dict[str, np.float32] = {}
        permute_heads = 0
        if self.permute_qk and gguf_name.endswith(("attn_q", "attn_k")):
            permute_heads = self.hp.n_head if gguf_name.endswith("attn_q") else self.hp.n_head_kv

        def weight() -> npt.NDArray[Any]:
            lw = read_linear(self.ckpt, hf_name, out_f, in_f, self.quant)
            scales[gguf_name] = lw.scale
            codes = self._permute(lw.codes, permute_heads) if permute_heads else lw.codes
            return _TERNARY_PACKERS[qtype](codes)

        def scale() -> npt.NDArray[np.float32]:
            s = scales.pop(gguf_name, None)
            if s is None:  # weight not produced first (only if a caller reorders the plan)
                s = read_linear(self.ckpt, hf_name, out_f, in_f, self.quant).scale
            return np.array([s], dtype="<f4")

        specs = [
            TensorSpec(f"{gguf_name}.weight", (out_f, in_f), qtype, weight),
            TensorSpec(f"{gguf_name}.scale", (1,), Q.F32, scale),
        ]
        return specs, (
            f"{gguf_name}.weight: {why}, written as {qtype.name} (holds ternary exactly)" if why else None
        )

    def _head_source(self) -> tuple[str | None, bool]:
        """(HF name of a separate output head or None, whether an lm_head tensor was ignored as tied)."""
        has_head = "lm_head.weight" in self.ckpt
        if self.hp.tied:
            return None, has_head
        if not has_head:
            raise CorruptCheckpointError(
                f"{self.config_path} says tie_word_embeddings=false but the checkpoint has no lm_head.weight"
            )
        if not self.untied_head_ok:
            raise UnsupportedCheckpointError(
                f"{self.hf_architecture} with an untied lm_head: the engine's {self.gguf_arch} graph always "
                "uses the token embedding as the output head, so this checkpoint cannot be converted exactly"
            )
        return "lm_head.weight", False

    def plan(self, outtype: Q, head: Q) -> tuple[list[TensorSpec], list[str]]:
        """All tensors in file order, plus notes (fallback types, ignored tensors) for the report."""
        hp = self.hp
        notes: list[str] = []
        emb_name = "model.embed_tokens.weight"
        emb = self.ckpt.info(emb_name)
        if emb.shape != (hp.n_vocab, hp.n_embd):
            raise CorruptCheckpointError(
                f"{emb_name}: shape {list(emb.shape)}, expected [{hp.n_vocab}, {hp.n_embd}]"
            )
        specs: list[TensorSpec] = []
        spec, note = head_spec("token_embd.weight", hp.n_vocab, hp.n_embd, head, self._rows_reader(emb_name))
        specs.append(spec)
        notes += [note] if note else []
        specs.append(self._norm_spec("output_norm.weight", "model.norm.weight", hp.n_embd))
        head_name, ignored = self._head_source()
        if ignored:
            notes.append("lm_head.weight ignored: tie_word_embeddings=true (the head is token_embd)")
        if head_name is not None:
            spec, note = head_spec("output.weight", hp.n_vocab, hp.n_embd, head, self._rows_reader(head_name))
            specs.append(spec)
            notes += [note] if note else []
        q_out, kv_out = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        dims = {
            "attn_q": (q_out, hp.n_embd),
            "attn_k": (kv_out, hp.n_embd),
            "attn_v": (kv_out, hp.n_embd),
            "attn_output": (hp.n_embd, q_out),
            "ffn_gate": (hp.n_ff, hp.n_embd),
            "ffn_up": (hp.n_ff, hp.n_embd),
            "ffn_down": (hp.n_embd, hp.n_ff),
        }
        for i in range(hp.n_layer):
            hf, blk = f"model.layers.{i}.", f"blk.{i}."
            specs.append(self._norm_spec(blk + "attn_norm.weight", hf + "input_layernorm.weight", hp.n_embd))
            specs.append(
                self._norm_spec(blk + "ffn_norm.weight", hf + "post_attention_layernorm.weight", hp.n_embd)
            )
            if self.attn_sub_norm:
                specs.append(
                    self._norm_spec(
                        blk + "attn_sub_norm.weight", f"{hf}{self.attn_sub_norm}.weight", hp.n_embd
                    )
                )
            if self.ffn_sub_norm:
                specs.append(
                    self._norm_spec(blk + "ffn_sub_norm.weight", f"{hf}{self.ffn_sub_norm}.weight", hp.n_ff)
                )
            for gguf_suffix, hf_suffix in self._LINEARS:
                out_f, in_f = dims[gguf_suffix]
                lin, note = self._linear_specs(
                    blk + gguf_suffix, f"{hf}{hf_suffix}.weight", out_f, in_f, outtype
                )
                specs += lin
                notes += [note] if note else []
        self._check_unused(specs)
        return specs, notes

    def _rows_reader(self, hf_name: str) -> Callable[[int, int], npt.NDArray[np.float32]]:
        info = self.ckpt.info(hf_name)
        if info.dtype not in ("F32", "F16", "BF16", "F64"):
            raise CheckpointDtypeError(
                f"{hf_name} has dtype {info.dtype}; embedding/head weights must be float"
            )
        return lambda a, b: self.ckpt.read(hf_name, rows=(a, b)).astype(np.float32)

    def _check_unused(self, specs: list[TensorSpec]) -> None:
        """Fail loudly if the checkpoint holds tensors the plan does not account for (a mapping bug)."""
        known = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
        for i in range(self.hp.n_layer):
            hf = f"model.layers.{i}."
            known |= {hf + "input_layernorm.weight", hf + "post_attention_layernorm.weight"}
            known |= {f"{hf}{s}.weight" for s in (self.attn_sub_norm, self.ffn_sub_norm) if s}
            for _, suffix in self._LINEARS:
                known |= {f"{hf}{suffix}.weight", f"{hf}{suffix}.weight_scale"}
        extra = [n for n in self.ckpt.names() if n not in known and not n.endswith("rotary_emb.inv_freq")]
        if extra:
            raise UnsupportedCheckpointError(
                f"{self.hf_architecture} checkpoint has {len(extra)} tensors this converter does not map "
                f"(e.g. {extra[0]!r}); converting without them would change the model"
            )
