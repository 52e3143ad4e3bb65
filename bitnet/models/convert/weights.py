"""Ternary codes and exact per-tensor scales from the weight sources BitNet checkpoints use.

- Master weights (bf16/fp16/fp32, e.g. 2B-4T-bf16, 1bitLLM): ternarized per tensor exactly as
  transformers' `WeightQuant` does: s = 1 / max(mean|W|, 1e-5) (float32), W_t = clamp(round(W * s), -1, 1)
  (round half to even, like torch.round). The dequantized weight transformers uses is W_t / s, so the
  scale we store is float32(1 / s). mean|W| is accumulated in float64 (torch accumulates float32 in
  another order, so the scale may differ from torch's by an ulp; the codes match except for values
  within an ulp of a rounding boundary).
- Packed uint8 + `weight_scale` (2B-4T): unpacked as `transformers.integrations.bitnet.unpack_weights`
  does (see bitnet.models.formats.packing). What the scale means depends on the config's linear class
  (ref: transformers/integrations/bitnet.py): `AutoBitLinear` computes `F.linear(x, W) * weight_scale`
  -> scale = weight_scale (bit-exact); `BitLinear` computes `y / (input_scale * weight_scale)`
  -> scale = float32(1 / weight_scale). transformers defaults `linear_class` to "bitlinear".
- Unpacked offline weights (float tensors that already hold -1/0/+1, next to a `weight_scale`): the
  same scale rule as packed ones.

The `quantization_config` of released checkpoints (ref: their config.json files): microsoft 2B-4T
{bitnet, autobitlinear, offline}; its -bf16 twin {bitnet, autobitlinear, online}; HF1BitLLM
Llama3-8B-1.58 {quant_method: bitnet} only; tiiuae Falcon3-*-1.58bit {modules_to_not_convert: ["lm_head"],
quant_method: bitnet} (the format tiiuae's onebitllms `quantize_to_1bit` writes, also used for Falcon-E).
Absent keys take transformers' `BitNetQuantConfig` defaults: bitlinear, offline, use_rms_norm false.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet.errors import (
    CheckpointDtypeError,
    CorruptCheckpointError,
    MissingConfigKeyError,
    UnsupportedCheckpointError,
)
from bitnet.models.convert.checkpoint import Checkpoint
from bitnet.models.formats.packing import check_ternary, unpack_hf

__all__ = ["BitNetQuantization", "LinearWeight", "read_linear", "ternarize"]

_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_MIN_MEAN_ABS = np.float32(1e-5)  # transformers' clamp on mean|W|


@dataclass(frozen=True)
class BitNetQuantization:
    """The checkpoint's `quantization_config` (quant_method "bitnet"), or None fields when absent."""

    linear_class: str | None  # "autobitlinear" | "bitlinear" | None (no quantization_config)
    mode: str  # "offline" | "online"
    use_rms_norm: bool
    modules_to_not_convert: tuple[str, ...] = ()  # module name patterns transformers keeps in full precision

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BitNetQuantization | None:
        """Parse `config["quantization_config"]`; None when the checkpoint declares no BitNet quantization."""
        qc = config.get("quantization_config")
        if not isinstance(qc, dict) or qc.get("quant_method") != "bitnet":
            return None
        linear_class = str(qc.get("linear_class", "bitlinear")).lower()  # transformers' default
        if linear_class not in ("autobitlinear", "bitlinear"):
            raise UnsupportedCheckpointError(
                f"quantization_config.linear_class {linear_class!r} is unknown (expected 'autobitlinear' or "
                "'bitlinear'): fix config.json"
            )
        mode = str(qc.get("quantization_mode", "offline")).lower()
        if mode not in ("offline", "online"):
            raise UnsupportedCheckpointError(
                f"quantization_config.quantization_mode {mode!r} is unknown "
                "(expected 'offline' or 'online'): fix config.json"
            )
        skip = qc.get("modules_to_not_convert") or ()
        if isinstance(skip, str) or not all(isinstance(m, str) for m in skip):
            raise UnsupportedCheckpointError(
                f"quantization_config.modules_to_not_convert must be a list of module names, not {skip!r}"
            )
        return cls(linear_class, mode, bool(qc.get("use_rms_norm", False)), tuple(skip))

    def keeps_full_precision(self, module: str) -> bool:
        """Whether transformers leaves linear `module` (e.g. "model.layers.0.mlp.up_proj") unquantized.

        Same matching as transformers' `should_convert_module`: a pattern matches from the start of the
        name up to a module boundary (also as a regex), or as a suffix of it.
        """
        for pattern in self.modules_to_not_convert:
            try:
                if re.match(rf"(?:{pattern})(?:(?<=\.)|(?=\.|$))", module):
                    return True
            except re.error:
                pass  # not a regex: only the literal suffix rule applies
            if module.endswith(pattern):
                return True
        return False


@dataclass(frozen=True)
class LinearWeight:
    """A ternary linear weight: codes (out, in) int8 in {-1,0,1} and the f32 scale that multiplies it."""

    codes: npt.NDArray[np.int8]
    scale: np.float32
    source: str  # "master" | "packed" | "unpacked"


def ternarize(w: npt.NDArray[np.floating[Any]]) -> tuple[npt.NDArray[np.int8], np.float32]:
    """BitNet b1.58 absmean ternarization of one tensor: (codes, scale) with W ≈ codes * scale."""
    w32 = np.asarray(w, dtype=np.float32)
    mean_abs = np.float32(np.abs(w32).mean(dtype=np.float64)) if w32.size else np.float32(0)
    inv = np.float32(1.0) / max(mean_abs, _MIN_MEAN_ABS)  # transformers: scale = 1 / mean|W|.clamp(1e-5)
    codes = np.clip(np.rint(w32 * inv), -1, 1).astype(np.int8)
    return codes, np.float32(1.0 / np.float64(inv))


def _scale_value(ckpt: Checkpoint, name: str) -> np.float64:
    info = ckpt.info(name)
    if info.dtype not in _FLOAT_DTYPES:
        raise CheckpointDtypeError(f"{name} has dtype {info.dtype}; a weight_scale must be a float tensor")
    values = ckpt.read(name).astype(np.float64).ravel()
    if values.size == 0 or not np.all(values == values[0]):
        raise UnsupportedCheckpointError(
            f"{name} holds {values.size} different scales; the GGUF layout keeps one scale per tensor, "
            "so per-channel weight scales cannot be converted exactly"
        )
    if not np.isfinite(values[0]) or values[0] == 0:
        raise CorruptCheckpointError(f"{name} is {values[0]}: a weight scale must be finite and nonzero")
    return np.float64(values[0])


def _apply_scale_rule(ws: np.float64, linear_class: str | None, name: str) -> np.float32:
    if linear_class is None:
        raise MissingConfigKeyError("quantization_config", name, "packed BitNet")
    # AutoBitLinear: y = (x W^T) * weight_scale;  BitLinear: y = (x W^T) / weight_scale
    return np.float32(ws) if linear_class == "autobitlinear" else np.float32(1.0 / ws)


def read_linear(
    ckpt: Checkpoint,
    name: str,
    out_features: int,
    in_features: int,
    quant: BitNetQuantization | None,
) -> LinearWeight:
    """Read linear weight `name` (e.g. "model.layers.0.mlp.up_proj.weight") as ternary codes + scale."""
    info = ckpt.info(name)
    scale_name = name[: -len("weight")] + "weight_scale"
    if info.dtype == "U8":
        if info.shape != (out_features // 4, in_features) or out_features % 4:
            raise CorruptCheckpointError(
                f"{name}: packed shape {list(info.shape)} does not match config "
                f"({out_features}/4, {in_features})"
            )
        if scale_name not in ckpt:
            raise CorruptCheckpointError(f"{name} is packed uint8 but the checkpoint has no {scale_name}")
        try:
            codes = unpack_hf(ckpt.read(name))
        except ValueError as exc:
            raise CorruptCheckpointError(f"{name}: {exc}") from exc
        scale = _apply_scale_rule(_scale_value(ckpt, scale_name), quant.linear_class if quant else None, name)
        return LinearWeight(codes, scale, "packed")
    if info.dtype not in _FLOAT_DTYPES:
        raise CheckpointDtypeError(
            f"{name} has dtype {info.dtype}: expected packed uint8 (with weight_scale) "
            "or float master weights"
        )
    if info.shape != (out_features, in_features):
        raise CorruptCheckpointError(
            f"{name}: shape {list(info.shape)} does not match config ({out_features}, {in_features})"
        )
    w = ckpt.read(name)
    if scale_name in ckpt:  # offline weights stored unpacked: already ternary values
        codes = w.astype(np.int8)
        try:
            check_ternary(codes)
        except ValueError as exc:
            raise CorruptCheckpointError(f"{name} has a weight_scale but is not ternary: {exc}") from exc
        if not np.array_equal(codes, w):
            raise CorruptCheckpointError(f"{name} has a weight_scale but holds non-integer values")
        scale = _apply_scale_rule(_scale_value(ckpt, scale_name), quant.linear_class if quant else None, name)
        return LinearWeight(codes, scale, "unpacked")
    if quant is not None and quant.mode == "offline":
        # transformers' offline layers use a float weight as it is (AutoBitLinear: x W^T * weight_scale,
        # weight_scale defaulting to 1) or cannot load it at all (BitLinear holds packed uint8): ternarizing
        # it here would give a different model.
        raise UnsupportedCheckpointError(
            f"{name} holds {info.dtype} weights without {scale_name}, but quantization_config."
            "quantization_mode is 'offline' (the default), which means prequantized ternary weights. "
            "If these are master weights meant to be ternarized on the fly, the config must say "
            "quantization_mode 'online' (as microsoft/bitnet-b1.58-2B-4T-bf16 does); otherwise the "
            "checkpoint is not a BitNet release (e.g. a Falcon-E 'bfloat16' or 'prequantized' revision): "
            "download its default branch instead"
        )
    codes, scale = ternarize(w)
    return LinearWeight(codes, scale, "master")
