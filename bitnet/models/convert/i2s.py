"""Import microsoft's official I2_S GGUF (microsoft/bitnet-b1.58-2B-4T-gguf) losslessly into our GGUF.

The file comes from microsoft/BitNet's llama.cpp fork: architecture string ``bitnet-b1.58``, 332
tensors for 2B4T (210 I2_S linear weights, 121 F32 norms, one F16 ``token_embd``; tied head, no
``output.weight``), general.file_type 40. Upstream llama.cpp and gguf-py refuse it: type id 36 is a
removed type there (gguf-py's ``GGUFReader`` raises ValueError on ``GGMLQuantizationType(36)``), so this
module reads the GGUF container itself (:class:`I2SModel`) and writes a standard ``bitnet`` GGUF with
upstream ternary types through ``bitnet.models.formats.writer``.

The I2_S tensor layout (bit order, scale, padding) is declared in `bitnet.models.formats.i2s`; the
GGUF container is read by `bitnet.models.formats.reader`.

Import: every I2_S tensor becomes a ternary ``X.weight`` (TQ2_0 by default, TQ1_0, or an exact fallback
type when rows are not a multiple of 256) plus ``X.scale``, an F32 tensor of shape (1,) holding the exact
f32 scale, which the engine's bitnet graph multiplies into the matmul result. Norms stay F32, the F16
token embedding becomes the chosen head type. Metadata keys ``bitnet-b1.58.*`` are renamed ``bitnet.*``,
and ``bitnet.hidden_activation = "relu2"`` is added: the official file has no activation key, which is
why microsoft's engine runs 2B4T with SiLU (microsoft/BitNet #588, #602).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFValueType

from bitnet.errors import ConversionError, CorruptCheckpointError, UnsupportedCheckpointError
from bitnet.models.convert.base import (
    ACTIVATION_QUANT,
    FILE_TYPES,
    HEAD_TYPES,
    OUT_TYPES,
    head_spec,
    ternary_qtype,
)
from bitnet.models.formats import packing
from bitnet.models.formats.i2s import I2S_ARCH, I2S_TYPE_ID, read_i2s_tensor
from bitnet.models.formats.reader import GGUFTensorInfo, GGUFValue, read_gguf_header
from bitnet.models.formats.writer import Metadata, TensorSpec, tensor_nbytes, write_gguf

if TYPE_CHECKING:
    from bitnet.models.convert import ConversionReport

logger = logging.getLogger(__name__)

__all__ = [
    "I2SModel",
    "I2STensor",
    "import_i2s_gguf",
    "iter_i2s_model",
]

Q = GGMLQuantizationType

TARGET_ARCH = "bitnet"  # upstream llama.cpp LLM_ARCH_BITNET
HIDDEN_ACTIVATION = "relu2"  # 2B4T's config.json hidden_act; written as bitnet.hidden_activation


# --- the model ---------------------------------------------------------------------------------------


class I2STensor(NamedTuple):
    """One tensor of an I2_S model: ternary int8 codes + f32 scale for I2_S, else the float array."""

    name: str
    shape: tuple[int, ...]  # numpy order
    data: npt.NDArray[Any]  # int8 codes in {-1, 0, 1} (I2_S) or float32/float16 values
    scale: np.float32 | None  # per-tensor scale of an I2_S tensor, None otherwise


_PLAIN: dict[int, np.dtype[Any]] = {int(Q.F32): np.dtype("<f4"), int(Q.F16): np.dtype("<f2")}


class I2SModel:
    """An official I2_S GGUF opened for reading: metadata, tensor infos, and lazy tensor access.

    Tensor data is memory-mapped; :meth:`read` decodes one tensor at a time, so iterating over a 2B
    model holds at most one decoded tensor (plus what the caller keeps).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.metadata, self.tensors = read_gguf_header(self.path)
        arch = self.metadata.get("general.architecture")
        if arch is None or arch.value != I2S_ARCH:
            found = arch.value if arch is not None else "none"
            raise UnsupportedCheckpointError(
                f"{self.path}: general.architecture is {found!r}, expected {I2S_ARCH!r} (the official "
                "microsoft/bitnet-b1.58-2B-4T-gguf file). Other GGUFs need no import: run them directly, or "
                "convert their Hugging Face checkpoint with `invoke convert --model-dir DIR`."
            )
        for t in self.tensors:
            if t.type_id != I2S_TYPE_ID and t.type_id not in _PLAIN:
                raise UnsupportedCheckpointError(
                    f"{self.path}: tensor {t.name} is {t.type_name}; "
                    "the importer handles I2_S, F32 and F16 tensors"
                )
        self._data: np.memmap[Any, np.dtype[np.uint8]] | None = None

    def _raw(self, info: GGUFTensorInfo) -> npt.NDArray[np.uint8]:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._data[info.offset : info.offset + info.nbytes]

    def info(self, name: str) -> GGUFTensorInfo:
        """The tensor info of ``name`` (KeyError if absent)."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def read(self, info: GGUFTensorInfo) -> I2STensor:
        """Decode one tensor: I2_S -> (int8 codes of ``info.shape``, scale); F32/F16 -> a memmap view."""
        raw = self._raw(info)
        if info.type_id == I2S_TYPE_ID:
            try:
                codes, scale = read_i2s_tensor(raw, info.n_elements)
            except ValueError as exc:
                raise CorruptCheckpointError(f"{self.path}: tensor {info.name}: {exc}") from None
            if not np.isfinite(scale):
                raise CorruptCheckpointError(
                    f"{self.path}: tensor {info.name} has a non-finite scale {scale}"
                )
            return I2STensor(info.name, info.shape, codes.reshape(info.shape), scale)
        return I2STensor(info.name, info.shape, raw.view(_PLAIN[info.type_id]).reshape(info.shape), None)

    def read_scale(self, info: GGUFTensorInfo) -> np.float32:
        """The f32 scale of an I2_S tensor, without decoding its codes."""
        if info.type_id != I2S_TYPE_ID:
            raise ValueError(f"{info.name} is {info.type_name}, not I2_S")
        at = info.n_elements // 4
        return np.float32(self._raw(info)[at : at + 4].view("<f4")[0])

    def __iter__(self) -> Iterator[I2STensor]:
        for info in self.tensors:
            yield self.read(info)

    def close(self) -> None:
        """Drop the memory map (arrays already returned keep it alive until they are freed)."""
        self._data = None

    def __enter__(self) -> I2SModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bitnet_metadata(self) -> dict[str, GGUFValue]:
        """The metadata for a ``bitnet`` GGUF: ``bitnet-b1.58.*`` renamed ``bitnet.*``; file type, alignment
        and architecture left for the writer; ``bitnet.hidden_activation`` = relu2 and
        ``bitnet.activation_quant`` = per_token added; and
        ``tokenizer.ggml.pre`` = llama-bpe added when a Llama-3 vocabulary lacks it (the official file
        omits it, and llama.cpp then splits text with the wrong regex)."""
        out: dict[str, GGUFValue] = {}
        prefix = I2S_ARCH + "."
        for key, value in self.metadata.items():
            if key in (
                "general.architecture",
                "general.file_type",
                "general.alignment",
                "general.quantization_version",
            ):
                continue
            out[TARGET_ARCH + "." + key[len(prefix) :] if key.startswith(prefix) else key] = value
        for required in ("block_count", "embedding_length", "feed_forward_length", "attention.head_count"):
            if f"{TARGET_ARCH}.{required}" not in out:
                raise CorruptCheckpointError(f"{self.path}: metadata key {prefix}{required} is missing")
        out.setdefault(f"{TARGET_ARCH}.hidden_activation", GGUFValue(HIDDEN_ACTIVATION, GGUFValueType.STRING))
        out.setdefault(f"{TARGET_ARCH}.activation_quant", GGUFValue(ACTIVATION_QUANT, GGUFValueType.STRING))
        tokens = out.get("tokenizer.ggml.tokens")
        model = out.get("tokenizer.ggml.model")
        if (
            "tokenizer.ggml.pre" not in out
            and model is not None
            and model.value == "gpt2"
            and tokens is not None
            and "<|begin_of_text|>" in tokens.value
        ):
            out["tokenizer.ggml.pre"] = GGUFValue("llama-bpe", GGUFValueType.STRING)
        return out


def iter_i2s_model(path: str | os.PathLike[str]) -> Iterator[I2STensor]:
    """Yield ``(name, shape, data, scale)`` for every tensor of an official I2_S GGUF, in file order.

    I2_S tensors come as int8 ternary codes with their float32 scale, F32/F16 tensors as arrays with
    scale None. For the model metadata use ``I2SModel(path).metadata`` (as stored) or
    ``.bitnet_metadata()`` (renamed for the ``bitnet`` architecture).
    """
    with I2SModel(path) as model:
        yield from model


# --- import ------------------------------------------------------------------------------------------


def _ternary_packer(qtype: Q) -> Any:
    return {
        Q.TQ2_0: packing.pack_tq2_0,
        Q.TQ1_0: packing.pack_tq1_0,
        Q.Q8_0: packing.pack_q8_0_ternary,
        Q.F16: lambda c: c.astype("<f2"),
        Q.F32: lambda c: c.astype("<f4"),
    }[qtype]


def _plan(model: I2SModel, outtype: Q, head: Q) -> tuple[list[TensorSpec], list[str]]:
    specs: list[TensorSpec] = []
    notes: list[str] = []
    if any(t.name == "output.weight" for t in model.tensors):
        raise UnsupportedCheckpointError(
            f"{model.path}: has a separate output.weight; the engine's bitnet graph always uses "
            "token_embd as the output head, so this file cannot be imported exactly"
        )
    for info in model.tensors:
        if info.type_id == I2S_TYPE_ID:
            if len(info.shape) != 2 or not info.name.endswith(".weight"):
                raise UnsupportedCheckpointError(
                    f"{model.path}: I2_S tensor {info.name} is not a 2-D .weight matrix"
                )
            qtype, why = ternary_qtype(outtype, info.shape[-1])
            if why:
                notes.append(f"{info.name}: {why}, written as {qtype.name} (holds ternary exactly)")

            def weight(info: GGUFTensorInfo = info, qtype: Q = qtype) -> npt.NDArray[Any]:
                return np.asarray(_ternary_packer(qtype)(model.read(info).data))

            def scale(info: GGUFTensorInfo = info) -> npt.NDArray[np.float32]:
                return np.array([model.read_scale(info)], dtype="<f4")

            specs.append(TensorSpec(info.name, info.shape, qtype, weight))
            specs.append(TensorSpec(info.name.removesuffix(".weight") + ".scale", (1,), Q.F32, scale))
        elif info.name == "token_embd.weight":
            rows, cols = info.shape

            def read_rows(a: int, b: int, info: GGUFTensorInfo = info) -> npt.NDArray[np.float32]:
                return np.asarray(model.read(info).data[a:b], dtype=np.float32)

            spec, note = head_spec(info.name, rows, cols, head, read_rows)
            specs.append(spec)
            notes += [note] if note else []
        else:
            # norms (and any other float tensor) are kept exactly, as F32
            def plain(info: GGUFTensorInfo = info) -> npt.NDArray[np.float32]:
                return np.asarray(model.read(info).data, dtype="<f4")

            specs.append(TensorSpec(info.name, info.shape, Q.F32, plain))
    if not any(s.name == "token_embd.weight" for s in specs):
        raise CorruptCheckpointError(f"{model.path}: no token_embd.weight tensor")
    return specs, notes


def _to_writer_metadata(values: Mapping[str, GGUFValue], outtype: Q) -> Metadata:
    md = Metadata()
    md.string("general.type", "model")
    for key, v in values.items():
        md.entries[key] = (v.value, v.type, v.sub_type)
    md.u32("general.file_type", int(FILE_TYPES[outtype]))
    md.u32("general.quantization_version", 2)  # GGML_QNT_VERSION
    return md


def import_i2s_gguf(
    path: str | os.PathLike[str],
    outfile: str | os.PathLike[str],
    *,
    outtype: str = "tq2_0",
    head_type: str = "f16",
    dry_run: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Import an official I2_S GGUF into a ``bitnet`` GGUF with upstream types, losslessly.

    Ternary values and per-tensor f32 scales are kept exactly (``X.weight`` as ``outtype`` with block
    scale 1.0, ``X.scale`` as F32); norms stay F32; ``token_embd`` becomes ``head_type``. Written
    atomically by ``bitnet.models.formats.writer.write_gguf``; with ``dry_run`` only the plan is returned.

    Returns a ``bitnet.models.convert.ConversionReport``. Raises ``ConversionError`` subclasses (corrupt or
    truncated file, unsupported tensor types, unwritable output).
    """
    from bitnet.models.convert import ConversionReport, PlannedTensor  # noqa: F811  (the package imports us lazily)

    start = time.perf_counter()
    src, out = Path(path), Path(outfile)
    outtype, head_type = outtype.lower(), head_type.lower()
    if outtype not in OUT_TYPES:
        raise ConversionError(f"outtype {outtype!r} is not one of {', '.join(OUT_TYPES)}")
    if head_type not in HEAD_TYPES:
        raise ConversionError(f"head_type {head_type!r} is not one of {', '.join(HEAD_TYPES)}")
    qtype, head = OUT_TYPES[outtype], HEAD_TYPES[head_type]
    with I2SModel(src) as model:
        values = model.bitnet_metadata()
        md = _to_writer_metadata(values, qtype)
        specs, notes = _plan(model, qtype, head)
        tokens = values.get("tokenizer.ggml.tokens")
        model_kind = values.get("tokenizer.ggml.model")
        pre = values.get("tokenizer.ggml.pre")
        if "tokenizer.ggml.pre" not in model.metadata and pre is not None:
            notes.append(f"tokenizer.ggml.pre was missing; set to {pre.value!r} (Llama-3 vocabulary)")
        report = ConversionReport(
            source=src,
            outfile=out,
            dry_run=dry_run,
            hf_architecture=f"{I2S_ARCH} (I2_S GGUF)",
            gguf_arch=TARGET_ARCH,
            outtype=outtype,
            head_type=head_type,
            hidden_activation=str(values[f"{TARGET_ARCH}.hidden_activation"].value),
            weight_source="I2_S ternary codes + per-tensor f32 scale (y * scale)",
            tokenizer=(
                f"{model_kind.value if model_kind else '-'}/{pre.value if pre else '-'}, "
                f"{len(tokens.value) if tokens else 0} tokens"
            ),
            tensors=[
                PlannedTensor(s.name, s.shape, s.qtype.name, tensor_nbytes(s.shape, s.qtype)) for s in specs
            ],
            notes=notes,
            metadata={
                k: (f"[{len(v.value)} items]" if isinstance(v.value, list) else v.value)
                for k, v in values.items()
            },
        )
        for note in notes:
            logger.warning("%s", note)
        if not dry_run:
            result = write_gguf(out, TARGET_ARCH, md, specs, progress=progress)
            report.file_bytes = result.nbytes
    report.seconds = time.perf_counter() - start
    return report
