"""A small GGUF container reader and writer (v2/v3, little-endian) that also reads type id 36 (I2_S).

gguf-py's ``GGUFReader`` refuses a file holding a type it does not know (microsoft's I2_S, a removed type
upstream); this one reads any header and tensor infos, checks that the data lies inside the file, and
sizes I2_S tensors by `bitnet.models.formats.i2s`. Writing our own models goes through
`bitnet.models.formats.writer` (gguf-py, atomic); `write_raw_gguf` writes test fixtures byte for byte.
`bitnet.models.formats.check` is the strict pre-check of a model file before the engine reads it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from bitnet.engine.contract import GGUF_MAGIC
from bitnet.errors import CorruptCheckpointError, UnsupportedCheckpointError
from bitnet.models.formats.i2s import I2S_BLOCK, I2S_TYPE_ID, i2s_nbytes

__all__ = [
    "GGUF_DEFAULT_ALIGNMENT",
    "GGUFTensorInfo",
    "GGUFValue",
    "read_gguf_header",
    "write_raw_gguf",
]

Q = GGMLQuantizationType
GGUF_DEFAULT_ALIGNMENT = 32

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
        if self.type_id == I2S_TYPE_ID:
            return "I2_S"
        try:
            return Q(self.type_id).name
        except ValueError:
            return f"type {self.type_id}"


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


def write_raw_gguf(
    path: str | os.PathLike[str],
    metadata: Mapping[str, GGUFValue],
    tensors: Sequence[tuple[str, tuple[int, ...], int, bytes | npt.NDArray[Any]]],
    *,
    alignment: int = GGUF_DEFAULT_ALIGNMENT,
) -> None:
    """Write a GGUF v3 file byte for byte as given, any type ids (I2_S too): test fixtures use it.

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
