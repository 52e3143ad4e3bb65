"""Import microsoft's official I2_S GGUF (microsoft/bitnet-b1.58-2B-4T-gguf) losslessly into our GGUF.

The file comes from microsoft/BitNet's llama.cpp fork: architecture string ``bitnet-b1.58``, 332
tensors for 2B4T (210 I2_S linear weights, 121 F32 norms, one F16 ``token_embd``; tied head, no
``output.weight``), general.file_type 40. Upstream llama.cpp and gguf-py refuse it: type id 36 is a
removed type there (gguf-py's ``GGUFReader`` raises ValueError on ``GGMLQuantizationType(36)``), so this
module reads the GGUF container itself (:class:`I2SModel`) and writes a standard ``bitnet`` GGUF with
upstream ternary types through ``bitnet.models.formats.writer``.

I2_S layout (the x86 layout; ref: microsoft/BitNet ``src/ggml-bitnet-mad.cpp`` ``quantize_i2_s`` and
``ggml_vec_dot_i2_i8_s``; REFERENCE.md section 2). The ONE place the bit order is declared is
``_I2S_SHIFTS`` below, used by both :func:`pack_i2s` and :func:`read_i2s_tensor`:

- a tensor of n elements (flattened in C order, ne0 fastest) is stored as n/4 bytes of 2-bit codes,
  then one little-endian float32 scale at byte n/4, then padding up to n/4 + 32 bytes in total;
- code c = w + 1 for a ternary weight w in {-1, 0, +1} (c = 3 never occurs);
- the codes form blocks of 128 values in 32 bytes; byte b (0..31) of block k holds elements
  128k + b, 128k + b + 32, 128k + b + 64, 128k + b + 96 in bits 7:6, 5:4, 3:2, 1:0 respectively;
- the weight is w * scale (the scale is max|W| of the already-ternarized tensor, i.e. BitNet's
  per-tensor absmean scale). microsoft's ARM builds since late 2025 write a different 64-value layout;
  such files are ISA-specific and are not what the official repo ships.

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
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, NamedTuple

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from bitnet.engine.contract import GGUF_MAGIC
from bitnet.models.convert.base import (
    ACTIVATION_QUANT,
    FILE_TYPES,
    HEAD_TYPES,
    OUT_TYPES,
    head_spec,
    ternary_qtype,
)
from bitnet.models.convert.errors import (
    ConversionError,
    CorruptCheckpointError,
    UnsupportedCheckpointError,
)
from bitnet.models.formats import packing
from bitnet.models.formats.writer import Metadata, TensorSpec, tensor_nbytes, write_gguf

if TYPE_CHECKING:
    from bitnet.models.convert import ConversionReport

logger = logging.getLogger(__name__)

__all__ = [
    "I2S_ARCH",
    "I2S_BLOCK",
    "I2S_TYPE_ID",
    "GGUFTensorInfo",
    "GGUFValue",
    "I2SModel",
    "I2STensor",
    "i2s_nbytes",
    "import_i2s_gguf",
    "iter_i2s_model",
    "pack_i2s",
    "read_i2s_tensor",
    "write_i2s_gguf",
]

Q = GGMLQuantizationType

I2S_TYPE_ID = 36  # GGML_TYPE_I2_S in microsoft/BitNet's fork (upstream: a removed type)
I2S_FILE_TYPE = 40  # LLAMA_FTYPE_MOSTLY_I2_S in the fork
I2S_ARCH = "bitnet-b1.58"  # general.architecture of the official file
TARGET_ARCH = "bitnet"  # upstream llama.cpp LLM_ARCH_BITNET
HIDDEN_ACTIVATION = "relu2"  # 2B4T's config.json hidden_act; written as bitnet.hidden_activation

I2S_BLOCK = 128  # values per block
I2S_BLOCK_BYTES = 32  # bytes per block
I2S_TAIL_BYTES = 32  # f32 scale + padding after the packed codes
# Bit position of each group g = 0..3 of a block (elements 32g .. 32g+31): group g of byte b sits in
# bits _I2S_SHIFTS[g]+1 : _I2S_SHIFTS[g]. THE declaration of the I2_S bit order.
_I2S_SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint8)

GGUF_DEFAULT_ALIGNMENT = 32

Codes = npt.NDArray[np.int8]


# --- the I2_S tensor layout: one pack/unpack pair ------------------------------------------------------


def i2s_nbytes(n: int) -> int:
    """Bytes an I2_S tensor of ``n`` elements occupies in the file: n/4 codes + 32 (scale, padding)."""
    return n // 4 + I2S_TAIL_BYTES


def _check_n(n: int) -> None:
    if n <= 0 or n % I2S_BLOCK:
        raise ValueError(f"I2_S needs a positive element count that is a multiple of {I2S_BLOCK}, got {n}")


def pack_i2s(codes: npt.ArrayLike, scale: float) -> npt.NDArray[np.uint8]:
    """Pack ternary codes (any shape, flattened in C order; size a multiple of 128) and a per-tensor
    scale into the bytes of one I2_S tensor (``i2s_nbytes(n)`` bytes; the padding is zero)."""
    flat = np.asarray(codes).reshape(-1)
    _check_n(flat.size)
    packing.check_ternary(flat)
    c = (flat.astype(np.int8) + 1).astype(np.uint8).reshape(-1, 4, I2S_BLOCK_BYTES)  # (block, group, byte)
    packed = np.bitwise_or.reduce(c << _I2S_SHIFTS[None, :, None], axis=1).astype(np.uint8)
    out = np.zeros(i2s_nbytes(flat.size), dtype=np.uint8)
    out[: flat.size // 4] = packed.reshape(-1)
    out[flat.size // 4 : flat.size // 4 + 4] = np.array([scale], dtype="<f4").view(np.uint8)
    return out


def read_i2s_tensor(
    raw: bytes | bytearray | memoryview | npt.NDArray[np.uint8], n: int
) -> tuple[Codes, np.float32]:
    """Decode one I2_S tensor of ``n`` elements: ``(codes int8 of shape (n,), scale float32)``.

    ``raw`` must hold at least n/4 + 4 bytes (the file stores n/4 + 32). Raises ValueError for code 3,
    which I2_S never writes (the data is corrupt or not I2_S).
    """
    _check_n(n)
    if isinstance(raw, np.ndarray):
        buf = raw.reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size < n // 4 + 4:
        raise ValueError(f"I2_S tensor of {n} elements needs {n // 4 + 4} bytes, got {buf.size}")
    packed = buf[: n // 4].reshape(-1, 1, I2S_BLOCK_BYTES)  # (block, 1, byte)
    c = (packed >> _I2S_SHIFTS[None, :, None]) & 3  # (block, group, byte) -> element 128k + 32g + b
    bad = np.flatnonzero(c.reshape(-1) == 3)
    if bad.size:
        raise ValueError(f"I2_S code 3 at element {int(bad[0])} ({bad.size} such codes): not valid I2_S data")
    codes = c.reshape(-1).astype(np.int8) - 1
    scale = np.frombuffer(buf[n // 4 : n // 4 + 4].tobytes(), dtype="<f4")[0]
    return codes, np.float32(scale)


# --- the GGUF container (v2/v3, little-endian): a small reader and writer ------------------------------
# ref: ggml/docs/gguf.md; gguf-py gguf_reader.py / gguf_writer.py. Header: magic "GGUF", u32 version,
# u64 tensor count, u64 KV count; KVs (string key, u32 value type, value); tensor infos (string name,
# u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset relative to the data section); padding to
# general.alignment (default 32); tensor data, each tensor at an aligned offset. Strings are u64 length
# + UTF-8 bytes; arrays are u32 element type + u64 count + elements.

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_MAX_STRING = 1 << 24  # sanity bounds against corrupt length fields
_MAX_ARRAY = 1 << 28
_MAX_DIMS = 4


@dataclass(frozen=True)
class GGUFValue:
    """A metadata value with its GGUF type (``sub_type`` is the element type of an ARRAY)."""

    value: Any
    type: GGUFValueType
    sub_type: GGUFValueType | None = None


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where a tensor's data is: ``ne`` in ggml order (ne0 = row length first), absolute ``offset``."""

    name: str
    ne: tuple[int, ...]
    type_id: int
    offset: int
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Numpy order (outermost first; the last axis is ne0)."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        """Number of elements."""
        return int(np.prod(self.ne, dtype=np.int64))

    @property
    def type_name(self) -> str:
        """ "I2_S" or the gguf-py type name."""
        return "I2_S" if self.type_id == I2S_TYPE_ID else Q(self.type_id).name


class _Reader:
    """Sequential little-endian reads with file-position-aware errors."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size = f, path, size

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise CorruptCheckpointError(
                f"{self.path}: truncated GGUF header (needed {n} bytes at {self.f.tell()})"
            )
        return data

    def scalar(self, vtype: GGUFValueType) -> Any:
        fmt = _SCALAR_FORMATS[vtype]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar(GGUFValueType.UINT64)
        if n > _MAX_STRING:
            raise CorruptCheckpointError(
                f"{self.path}: string length {n} at byte {self.f.tell()} is implausible"
            )
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptCheckpointError(
                f"{self.path}: invalid UTF-8 string in the GGUF header ({exc})"
            ) from None

    def value_type(self) -> GGUFValueType:
        raw = self.scalar(GGUFValueType.UINT32)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise CorruptCheckpointError(
                f"{self.path}: unknown GGUF value type {raw} at byte {self.f.tell() - 4}"
            ) from None

    def value(self, vtype: GGUFValueType) -> GGUFValue:
        if vtype == GGUFValueType.STRING:
            return GGUFValue(self.string(), vtype)
        if vtype != GGUFValueType.ARRAY:
            return GGUFValue(self.scalar(vtype), vtype)
        sub = self.value_type()
        count = self.scalar(GGUFValueType.UINT64)
        if count > _MAX_ARRAY:
            raise CorruptCheckpointError(f"{self.path}: array of {count} elements is implausible")
        if sub == GGUFValueType.STRING:
            return GGUFValue([self.string() for _ in range(count)], vtype, sub)
        if sub == GGUFValueType.ARRAY:
            raise UnsupportedCheckpointError(f"{self.path}: nested GGUF arrays are not supported")
        fmt = _SCALAR_FORMATS[sub]
        items = np.frombuffer(self.take(count * struct.calcsize(fmt)), dtype=np.dtype(fmt))
        return GGUFValue(items.tolist(), vtype, sub)


def _tensor_nbytes(path: Path, name: str, ne: tuple[int, ...], type_id: int) -> int:
    n = int(np.prod(ne, dtype=np.int64))
    if type_id == I2S_TYPE_ID:
        if n % I2S_BLOCK:
            raise CorruptCheckpointError(
                f"{path}: I2_S tensor {name} has {n} elements, not a multiple of {I2S_BLOCK}"
            )
        return i2s_nbytes(n)
    try:
        block, type_size = GGML_QUANT_SIZES[Q(type_id)]
    except (ValueError, KeyError):
        raise UnsupportedCheckpointError(
            f"{path}: tensor {name} has ggml type id {type_id}, which this importer does not know "
            f"(it reads I2_S = {I2S_TYPE_ID} and the standard types; TL1/TL2 files from microsoft/BitNet are "
            "tied to its kernels and not supported)"
        ) from None
    if ne[0] % block:
        raise CorruptCheckpointError(f"{path}: tensor {name} row length {ne[0]} is not a multiple of {block}")
    return n // block * type_size


def read_gguf_header(path: str | os.PathLike[str]) -> tuple[dict[str, GGUFValue], list[GGUFTensorInfo]]:
    """Read a GGUF file's metadata and tensor infos (tolerating type 36 = I2_S); data is not read.

    Checks that every tensor's data lies inside the file and that tensors do not overlap.
    """
    p = Path(path)
    size = p.stat().st_size
    with p.open("rb") as f:
        r = _Reader(f, p, size)
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise CorruptCheckpointError(f"{p}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
        version = r.scalar(GGUFValueType.UINT32)
        if version not in (2, 3):
            swapped = " (a big-endian GGUF?)" if version > 0xFFFF else ""
            raise UnsupportedCheckpointError(
                f"{p}: GGUF version {version}{swapped} is not supported (2 and 3 are)"
            )
        n_tensors = r.scalar(GGUFValueType.UINT64)
        n_kv = r.scalar(GGUFValueType.UINT64)
        metadata: dict[str, GGUFValue] = {}
        for _ in range(n_kv):
            key = r.string()
            metadata[key] = r.value(r.value_type())
        raw_infos = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.scalar(GGUFValueType.UINT32)
            if not 1 <= n_dims <= _MAX_DIMS:
                raise CorruptCheckpointError(f"{p}: tensor {name} has {n_dims} dimensions")
            ne = tuple(int(r.scalar(GGUFValueType.UINT64)) for _ in range(n_dims))
            type_id = r.scalar(GGUFValueType.UINT32)
            offset = r.scalar(GGUFValueType.UINT64)
            raw_infos.append((name, ne, type_id, offset))
        alignment = int(
            metadata.get("general.alignment", GGUFValue(GGUF_DEFAULT_ALIGNMENT, GGUFValueType.UINT32)).value
        )
        if alignment <= 0 or alignment & (alignment - 1):
            raise CorruptCheckpointError(f"{p}: general.alignment {alignment} is not a power of two")
        data_start = -(-f.tell() // alignment) * alignment
    infos = []
    for name, ne, type_id, offset in raw_infos:
        nbytes = _tensor_nbytes(p, name, ne, type_id)
        if offset % alignment:
            raise CorruptCheckpointError(f"{p}: tensor {name} offset {offset} is not aligned to {alignment}")
        infos.append(GGUFTensorInfo(name, ne, type_id, data_start + offset, nbytes))
    end = data_start
    for info in sorted(infos, key=lambda t: t.offset):
        if info.offset < end:
            raise CorruptCheckpointError(
                f"{p}: tensor {info.name} overlaps the previous tensor or the header"
            )
        end = info.offset + info.nbytes
    if end > size:
        raise CorruptCheckpointError(
            f"{p}: truncated: tensor data needs {end} bytes, the file has {size}. Download it again."
        )
    names = [t.name for t in infos]
    if len(set(names)) != len(names):
        raise CorruptCheckpointError(f"{p}: duplicate tensor names")
    return metadata, infos


def _write_value(f: IO[bytes], v: GGUFValue) -> None:
    def string(s: str) -> None:
        b = s.encode("utf-8")
        f.write(struct.pack("<Q", len(b)) + b)

    if v.type == GGUFValueType.STRING:
        string(v.value)
    elif v.type == GGUFValueType.ARRAY:
        assert v.sub_type is not None, "an ARRAY value needs its sub_type"
        f.write(struct.pack("<IQ", v.sub_type, len(v.value)))
        for item in v.value:
            if v.sub_type == GGUFValueType.STRING:
                string(item)
            else:
                f.write(struct.pack(_SCALAR_FORMATS[v.sub_type], item))
    else:
        f.write(struct.pack(_SCALAR_FORMATS[v.type], v.value))


def write_i2s_gguf(
    path: str | os.PathLike[str],
    metadata: Mapping[str, GGUFValue],
    tensors: Sequence[tuple[str, tuple[int, ...], int, bytes | npt.NDArray[Any]]],
    *,
    alignment: int = GGUF_DEFAULT_ALIGNMENT,
) -> None:
    """Write a GGUF v3 file in microsoft's I2_S flavour (tests build fixtures with it).

    ``tensors`` are ``(name, ne, type_id, data)`` with ``ne`` in ggml order and ``data`` the exact bytes
    (for I2_S: :func:`pack_i2s`'s output). Not atomic: for fixtures, not for user outputs.
    """
    with open(path, "wb") as f:
        f.write(GGUF_MAGIC + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
        for key, value in metadata.items():
            b = key.encode("utf-8")
            f.write(struct.pack("<Q", len(b)) + b + struct.pack("<I", value.type))
            _write_value(f, value)
        offset = 0
        blobs = []
        for name, ne, type_id, data in tensors:
            b = name.encode("utf-8")
            f.write(struct.pack("<Q", len(b)) + b + struct.pack("<I", len(ne)))
            f.write(struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", type_id, offset))
            raw = (
                bytes(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
                if isinstance(data, np.ndarray)
                else bytes(data)
            )
            blobs.append(raw)
            offset += -(-len(raw) // alignment) * alignment
        f.write(b"\0" * (-f.tell() % alignment))
        for raw in blobs:
            f.write(raw + b"\0" * (-len(raw) % alignment))


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
