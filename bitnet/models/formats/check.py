"""A bounded structural and semantic check of a GGUF model file, run before the engine sees it.

llama.cpp trusts much of a GGUF: a damaged or hand-edited file can abort it (SIGABRT), hang it, or let
it run and print garbage (see the README's "What bad input gets"). `check_gguf` reads only the header
(key/values and tensor infos) through a read-only mmap, with every count and length checked against
the bytes left in the file before anything is allocated from it, and raises `ModelFileError` naming
the file, what is wrong and how to fix it.

Rules (``check_gguf(path)``; ``semantic=False`` keeps only the structural ones):

- structure: magic ``GGUF``; version 2 or 3; tensor and KV counts that fit in the file; keys and
  strings of bounded length and valid UTF-8; known value types, no nested arrays; array counts that
  fit in the file; no duplicate keys; ``general.alignment`` a power of two; tensor infos with a name
  of at most 63 bytes, 1..4 positive dimensions, a known ggml type whose block divides the row, an
  aligned offset, data inside the file and no two tensors overlapping or sharing a name.
- hyper-parameters (``general.architecture`` = A): ``A.block_count`` 1..512, ``A.embedding_length``,
  ``A.context_length`` and ``A.feed_forward_length`` positive and bounded, ``A.attention.head_count``
  dividing the embedding, ``head_count_kv`` dividing ``head_count``, ``A.rope.dimension_count`` even,
  > 0 and <= the head dimension, ``A.rope.freq_base`` finite > 0, RMS/layer-norm epsilons finite,
  > 0 and < 1, every float ``A.*`` key finite.
- vocabulary: ``tokenizer.ggml.model`` one the engine can run (not ``none``); ``tokenizer.ggml.tokens``
  an array of strings as long as ``token_embd.weight`` has rows (and as ``A.vocab_size``, ``output``
  rows, the scores and token types); every ``tokenizer.ggml.*_token_id`` inside the vocabulary;
  ``tokenizer.chat_template`` a string; ``token_embd.weight`` rows as long as the embedding; token
  types 0..6, finite scores, every merge a pair ``"A B"``.
- values (``scan=True``): no NaN/inf in the float (F32/F16/BF16) tensors: norms, per-tensor scales,
  embeddings. Tensors up to `SCAN_FULL_BYTES` are read whole; larger ones (the embedding of a real
  model is hundreds of MB) in `SCAN_SAMPLES` evenly spaced windows, so the scan stays in the tens of
  milliseconds: widespread damage (a zeroed or garbled range) is caught, one bad row may not be. The
  ternary weights' per-block f16 scales are not scanned (that would read every weight page).

The cost is one pass over the header: well under a second even for a 128k-token vocabulary.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitnet.engine.contract import GGUF_MAGIC
from bitnet.errors import ModelFileError
from bitnet.models.formats.i2s import I2S_TYPE_ID  # not loadable by this engine: `invoke convert` imports it
from bitnet.models.formats.reader import GGUFTensorInfo

__all__ = [
    "GGUFHeader",
    "check_gguf",
    "read_gguf_header",
]

DEFAULT_ALIGNMENT = 32
MAX_KEY_BYTES = 65535  # the GGUF spec bounds keys to 2^16 - 1 bytes
MAX_STRING_BYTES = 64 << 20  # a chat template or token is KBs; 64 MiB is "corrupt length field"
MAX_TENSOR_NAME_BYTES = 63  # GGML_MAX_NAME - 1
MAX_DIMS = 4
MAX_BLOCK_COUNT = 512  # LLAMA_MAX_LAYERS
MAX_WIDTH = 1 << 20  # embedding / feed-forward / vocabulary sizes
MAX_CONTEXT = 1 << 24
SCAN_FULL_BYTES = 8 << 20
SCAN_SAMPLES = 32
SCAN_WINDOW_BYTES = 256 << 10

# fixes, appended to every message
FIX_DAMAGED = (
    "The file is damaged (a truncated or corrupted download or copy?): download it again "
    "(`invoke download`) or reconvert the checkpoint (`invoke convert`)."
)
FIX_METADATA = (
    "Its metadata is not what a converter writes: reconvert the checkpoint with `invoke convert` "
    "(or download the model again)."
)

# GGUF value types (ggml/docs/gguf.md): id -> (name, struct format or None for STRING/ARRAY)
(_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64,
 _FLOAT64) = range(13)  # fmt: skip
_SCALAR_FORMATS = {
    _UINT8: "<B",
    _INT8: "<b",
    _UINT16: "<H",
    _INT16: "<h",
    _UINT32: "<I",
    _INT32: "<i",
    _FLOAT32: "<f",
    _BOOL: "<B",
    _UINT64: "<Q",
    _INT64: "<q",
    _FLOAT64: "<d",
}
_TYPE_NAMES = {
    _UINT8: "uint8", _INT8: "int8", _UINT16: "uint16", _INT16: "int16", _UINT32: "uint32",
    _INT32: "int32", _FLOAT32: "float32", _BOOL: "bool", _STRING: "string", _ARRAY: "array",
    _UINT64: "uint64", _INT64: "int64", _FLOAT64: "float64",
}  # fmt: skip
_INT_TYPES = frozenset({_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _UINT64, _INT64})
_FLOAT_TYPES = frozenset({_FLOAT32, _FLOAT64})

# ggml types: id -> (name, elements per block, bytes per block). The engine's ggml (pinned llama.cpp);
# ids 4, 5 (Q4_2/Q4_3) and 31..33, 36..38 are removed types it refuses.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}  # fmt: skip
# float tensor types -> (their bits as unsigned ints, exponent mask): all exponent bits set = NaN or inf
_FLOAT_TENSOR_MASKS: dict[int, tuple[np.dtype[Any], int]] = {
    0: (np.dtype("<u4"), 0x7F800000),  # F32
    1: (np.dtype("<u2"), 0x7C00),  # F16
    30: (np.dtype("<u2"), 0x7F80),  # BF16
}

# tokenizer.ggml.model values the engine has a tokenizer for (llama-vocab.cpp); "none"/"no_vocab" load a
# model without one, which our generation tools cannot run.
TOKENIZER_MODELS = frozenset(
    {"llama", "gpt2", "bert", "t5", "rwkv", "plamo2", "gemma4", "hybriddna", "whitespace"}
)
MAX_TOKEN_TYPE = 6  # llama_token_type: undefined, normal, unknown, control, user-defined, unused, byte
_SPECIAL_ID = re.compile(r"tokenizer\.ggml\.\w+_token_id")


@dataclass(frozen=True)
class GGUFHeader:
    """What `read_gguf_header` found. `metadata` maps keys to Python values (arrays of numbers as numpy
    arrays, arrays of strings as lists); `types` maps keys to (GGUF type id, element type id or None)."""

    path: Path
    version: int
    metadata: Mapping[str, Any]
    types: Mapping[str, tuple[int, int | None]]
    tensors: tuple[GGUFTensorInfo, ...]
    alignment: int
    data_start: int
    file_size: int
    tensor_by_name: Mapping[str, GGUFTensorInfo] = field(default_factory=dict)


class _Damaged(Exception):
    """Internal: a structural problem (message without the path)."""


class _BadMetadata(Exception):
    """Internal: a semantic problem (message without the path)."""


class _Cursor:
    """Bounded little-endian reads from a buffer: every read checks the bytes left first."""

    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise _Damaged(
                f"truncated: {what} needs {n} bytes at byte {self.pos}, the file has "
                f"{max(self.size - self.pos, 0)} left"
            )

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        start = self.pos
        n = self.scalar("<Q", f"the length of {what}")
        if n > limit:
            raise _Damaged(f"{what} at byte {start} claims {n} bytes (at most {limit} are plausible)")
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Damaged(
                f"{what} at byte {start} is not valid UTF-8 ({exc.reason} at offset {exc.start})"
            ) from None


def _value_type(cur: _Cursor, what: str) -> int:
    at = cur.pos
    vtype = cur.scalar("<I", f"the type of {what}")
    if vtype not in _TYPE_NAMES:
        raise _Damaged(f"{what} has unknown value type {vtype} (byte {at}); GGUF types are 0..12")
    return int(vtype)


def _read_value(cur: _Cursor, key: str) -> tuple[Any, int, int | None]:
    vtype = _value_type(cur, f"key {key!r}")
    if vtype == _STRING:
        return cur.string(f"the value of {key!r}"), vtype, None
    if vtype != _ARRAY:
        return cur.scalar(_SCALAR_FORMATS[vtype], f"the value of {key!r}"), vtype, None
    sub = _value_type(cur, f"the elements of {key!r}")
    at = cur.pos
    count = cur.scalar("<Q", f"the element count of {key!r}")
    if sub == _ARRAY:
        raise _Damaged(f"key {key!r} is an array of arrays, which GGUF models never hold")
    item = 8 if sub == _STRING else struct.calcsize(_SCALAR_FORMATS[sub])  # a string is >= its length field
    if count > (cur.size - cur.pos) // item:
        raise _Damaged(
            f"key {key!r} claims {count} elements (byte {at}) but only {cur.size - cur.pos} bytes are left"
        )
    if sub == _STRING:
        return [cur.string(f"element {i} of {key!r}") for i in range(count)], vtype, sub
    fmt = _SCALAR_FORMATS[sub]
    values = np.frombuffer(cur.buf, dtype=np.dtype(fmt), count=count, offset=cur.pos).copy()
    cur.pos += count * item
    return values, vtype, sub


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and structurally check a GGUF file's header (no tensor data is read).

    Raises:
        ModelFileError: the file cannot be read, or its header is damaged (see the module's rules).
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 24:
                head = fh.read(24)
                if head[:4] != GGUF_MAGIC:
                    raise _Damaged(f"not a GGUF file: it starts with {head[:4]!r}, not {GGUF_MAGIC!r}")
                raise _Damaged(f"truncated: {size} bytes is shorter than a GGUF header (24 bytes)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse(p, mm, size)
    except _Damaged as exc:
        raise _error(p, str(exc), FIX_DAMAGED) from None
    except _BadMetadata as exc:  # the I2_S tensor rule
        raise _error(p, str(exc), FIX_METADATA) from None
    except OSError as exc:
        raise ModelFileError(
            f"model file {p} cannot be read ({exc.strerror or exc}). Check that it exists and its "
            "permissions.",
            path=p,
            reason=str(exc),
        ) from exc


def _parse(p: Path, mm: mmap.mmap, size: int) -> GGUFHeader:
    cur = _Cursor(mm, size)
    magic = bytes(mm[:4])
    if magic != GGUF_MAGIC:
        raise _Damaged(f"not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}")
    cur.pos = 4
    version = cur.scalar("<I", "the version")
    if version not in (2, 3):
        hint = " (a big-endian GGUF?)" if version > 0xFFFF else ""
        raise _Damaged(f"GGUF version {version}{hint} is not one the engine reads (2 or 3)")
    n_tensors = cur.scalar("<Q", "the tensor count")
    n_kv = cur.scalar("<Q", "the key/value count")
    # smallest possible KV: 8 (key length) + 4 (type) + 1 (uint8); tensor info: 8 + 4 + 8 + 4 + 8
    if n_kv > (size - cur.pos) // 13:
        raise _Damaged(f"the header claims {n_kv} key/values, more than a {size}-byte file can hold")
    if n_tensors > (size - cur.pos) // 32:
        raise _Damaged(f"the header claims {n_tensors} tensors, more than a {size}-byte file can hold")
    metadata: dict[str, Any] = {}
    types: dict[str, tuple[int, int | None]] = {}
    for i in range(n_kv):
        key = cur.string(f"key {i}", limit=MAX_KEY_BYTES)
        if key in metadata:
            raise _Damaged(f"key {key!r} appears twice")
        value, vtype, sub = _read_value(cur, key)
        metadata[key], types[key] = value, (vtype, sub)
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        alignment = metadata["general.alignment"]
        if types["general.alignment"][0] != _UINT32 or alignment <= 0 or alignment & (alignment - 1):
            raise _Damaged(f"general.alignment {alignment!r} is not a power of two (uint32)")
    raw: list[tuple[str, tuple[int, ...], int, int]] = []
    for i in range(n_tensors):
        name = cur.string(f"the name of tensor {i}", limit=1 << 16)
        if len(name.encode()) > MAX_TENSOR_NAME_BYTES:
            raise _Damaged(f"tensor name {name[:80]!r} is longer than {MAX_TENSOR_NAME_BYTES} bytes")
        n_dims = cur.scalar("<I", f"the dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Damaged(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} are possible)")
        ne = tuple(int(cur.scalar("<q", f"the shape of tensor {name!r}")) for _ in range(n_dims))
        type_id = cur.scalar("<I", f"the type of tensor {name!r}")
        offset = cur.scalar("<Q", f"the offset of tensor {name!r}")
        raw.append((name, ne, type_id, offset))
    data_start = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, ne, type_id, offset in raw:
        tensors.append(_tensor(name, ne, type_id, offset, data_start, alignment, size))
    by_name: dict[str, GGUFTensorInfo] = {}
    end, previous = data_start, "the header"
    for t in sorted(tensors, key=lambda t: t.offset):
        if t.name in by_name:
            raise _Damaged(f"two tensors are named {t.name!r}")
        by_name[t.name] = t
        if t.offset < end:
            raise _Damaged(f"tensor {t.name!r} (byte {t.offset}) overlaps {previous}")
        end, previous = t.offset + t.nbytes, f"tensor {t.name!r}"
    return GGUFHeader(p, version, metadata, types, tuple(tensors), alignment, data_start, size, by_name)


def _tensor(
    name: str, ne: tuple[int, ...], type_id: int, offset: int, data_start: int, alignment: int, size: int
) -> GGUFTensorInfo:
    if any(n <= 0 for n in ne):
        raise _Damaged(f"tensor {name!r} has shape {list(ne)}: every dimension must be positive")
    n = math.prod(ne)
    if n > size * 8:  # no known type stores more than 8 elements per byte... or 1 per bit
        raise _Damaged(f"tensor {name!r} has shape {list(ne)}: {n} elements cannot fit in a {size}-byte file")
    if type_id == I2S_TYPE_ID:
        raise _BadMetadata(
            f"tensor {name!r} is I2_S (type 36, microsoft/BitNet's format), which this engine cannot load; "
            "import the file with `invoke convert` (it converts I2_S to TQ2_0)"
        )
    if type_id not in GGML_TYPES:
        raise _Damaged(f"tensor {name!r} has unknown ggml type {type_id}")
    tname, block, block_bytes = GGML_TYPES[type_id]
    if ne[0] % block:
        raise _Damaged(f"tensor {name!r} ({tname}) has rows of {ne[0]} elements, not a multiple of {block}")
    nbytes = n // block * block_bytes
    if offset % alignment:
        raise _Damaged(f"tensor {name!r} has offset {offset}, not a multiple of the alignment {alignment}")
    start = data_start + offset
    if start + nbytes > size:
        raise _Damaged(
            f"truncated: tensor {name!r} needs bytes {start}..{start + nbytes}, the file has {size}"
        )
    return GGUFTensorInfo(name, ne, type_id, start, nbytes)


def _error(path: Path, reason: str, fix: str) -> ModelFileError:
    return ModelFileError(f"model file {path} cannot be used: {reason}. {fix}", path=path, reason=reason)


# ---------------------------------------------------------------------- hyper-parameters and vocabulary


def _int(h: GGUFHeader, key: str, *, required: bool, low: int, high: int) -> int | None:
    if key not in h.metadata:
        if required:
            raise _BadMetadata(f"the key {key} is missing")
        return None
    vtype, _ = h.types[key]
    value = h.metadata[key]
    if vtype not in _INT_TYPES:
        raise _BadMetadata(f"{key} is a {_TYPE_NAMES[vtype]}, not an integer")
    if not low <= value <= high:
        raise _BadMetadata(f"{key} = {value} is outside {low}..{high}")
    return int(value)


def _ints(h: GGUFHeader, key: str, *, required: bool, low: int, high: int, n_layer: int) -> list[int] | None:
    """A per-model integer that llama.cpp also accepts as one value per layer (an array)."""
    if h.types.get(key, (None, None))[0] != _ARRAY:
        value = _int(h, key, required=required, low=low, high=high)
        return None if value is None else [value]
    _, sub = h.types[key]
    values = h.metadata[key]
    if sub not in _INT_TYPES or len(values) != n_layer:
        raise _BadMetadata(f"{key} is an array but not of {n_layer} integers (one per layer)")
    bad = [int(v) for v in values if not low <= v <= high]
    if bad:
        raise _BadMetadata(f"{key} holds {bad[0]}, outside {low}..{high}")
    return [int(v) for v in values]


def _float(h: GGUFHeader, key: str) -> float | None:
    if key not in h.metadata:
        return None
    vtype, _ = h.types[key]
    if vtype not in _FLOAT_TYPES:
        raise _BadMetadata(f"{key} is a {_TYPE_NAMES[vtype]}, not a float")
    return float(h.metadata[key])


def _check_hparams(h: GGUFHeader) -> None:
    arch = h.metadata.get("general.architecture")
    if h.types.get("general.architecture", (None,))[0] != _STRING or not arch:
        raise _BadMetadata("general.architecture is missing or not a non-empty string")
    a = arch
    n_layer = _int(h, f"{a}.block_count", required=True, low=1, high=MAX_BLOCK_COUNT)
    assert n_layer is not None
    n_embd = _int(h, f"{a}.embedding_length", required=True, low=1, high=MAX_WIDTH)
    assert n_embd is not None
    _int(h, f"{a}.context_length", required=True, low=1, high=MAX_CONTEXT)
    _ints(h, f"{a}.feed_forward_length", required=True, low=0, high=MAX_WIDTH, n_layer=n_layer)
    heads = _ints(h, f"{a}.attention.head_count", required=True, low=0, high=n_embd, n_layer=n_layer)
    assert heads is not None
    if heads[0] == 0:  # a per-layer array may hold 0 for layers without attention; not all of them
        raise _BadMetadata(f"{a}.attention.head_count is 0 (for the first layer)")
    for n_head in heads:
        if n_head and n_embd % n_head:
            raise _BadMetadata(f"{a}.attention.head_count {n_head} does not divide the embedding ({n_embd})")
    kv_heads = _ints(h, f"{a}.attention.head_count_kv", required=False, low=0, high=n_embd, n_layer=n_layer)
    for layer in range(n_layer if kv_heads else 0):
        n_head = heads[layer if len(heads) > 1 else 0]
        n_kv = kv_heads[layer if len(kv_heads) > 1 else 0] if kv_heads else 1
        if n_head and (n_kv == 0 or n_head % n_kv):
            raise _BadMetadata(f"{a}.attention.head_count_kv {n_kv} does not divide head_count {n_head}")
    key_length = _int(h, f"{a}.attention.key_length", required=False, low=1, high=MAX_WIDTH)
    head_dim = key_length or n_embd // heads[0]
    rope_dim = _int(h, f"{a}.rope.dimension_count", required=False, low=0, high=1 << 31)
    if rope_dim is not None and (rope_dim <= 0 or rope_dim % 2 or rope_dim > head_dim):
        raise _BadMetadata(
            f"{a}.rope.dimension_count = {rope_dim}: it must be even, > 0 and at most the head "
            f"dimension {head_dim}"
        )
    for key, kind in h.types.items():
        if key.startswith(f"{a}.") and kind[0] in _FLOAT_TYPES and not math.isfinite(h.metadata[key]):
            raise _BadMetadata(f"{key} = {h.metadata[key]} is not a finite number")
    base = _float(h, f"{a}.rope.freq_base")
    if base is not None and not base > 0:
        raise _BadMetadata(f"{a}.rope.freq_base = {base}: it must be > 0")
    for name in ("layer_norm_rms_epsilon", "layer_norm_epsilon"):
        eps = _float(h, f"{a}.attention.{name}")
        if eps is not None and not 0 < eps < 1:
            raise _BadMetadata(f"{a}.attention.{name} = {eps}: it must be > 0 and < 1")
    _check_vocab(h, a, n_embd)


def _check_vocab(h: GGUFHeader, a: str, n_embd: int) -> None:
    model = h.metadata.get("tokenizer.ggml.model")
    if h.types.get("tokenizer.ggml.model", (None,))[0] != _STRING:
        raise _BadMetadata("tokenizer.ggml.model is missing or not a string")
    if model not in TOKENIZER_MODELS:
        raise _BadMetadata(
            f"tokenizer.ggml.model is {model!r}; the engine can run {', '.join(sorted(TOKENIZER_MODELS))} "
            "(a model without a tokenizer cannot generate text)"
        )
    if h.types.get("tokenizer.ggml.tokens") != (_ARRAY, _STRING):
        raise _BadMetadata("tokenizer.ggml.tokens is missing or not an array of strings")
    n_vocab = len(h.metadata["tokenizer.ggml.tokens"])
    if not 0 < n_vocab <= MAX_WIDTH * 4:
        raise _BadMetadata(f"the vocabulary has {n_vocab} tokens")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if key in h.metadata and (h.types[key][0] != _ARRAY or len(h.metadata[key]) != n_vocab):
            raise _BadMetadata(f"{key} is not an array of {n_vocab} values (one per token)")
    types = h.metadata.get("tokenizer.ggml.token_type")
    if (
        isinstance(types, np.ndarray)
        and types.size
        and not (types.min() >= 0 and types.max() <= MAX_TOKEN_TYPE)
    ):
        raise _BadMetadata(f"tokenizer.ggml.token_type holds a type outside 0..{MAX_TOKEN_TYPE}")
    scores = h.metadata.get("tokenizer.ggml.scores")
    if isinstance(scores, np.ndarray) and scores.dtype.kind == "f" and not np.isfinite(scores).all():
        raise _BadMetadata("tokenizer.ggml.scores holds NaN or infinity")
    merges = h.metadata.get("tokenizer.ggml.merges")
    if isinstance(merges, list):
        bad_merge = next(
            (i for i, m in enumerate(merges) if not isinstance(m, str) or " " not in m[1:]), None
        )
        if bad_merge is not None:
            raise _BadMetadata(f"tokenizer.ggml.merges[{bad_merge}] is not a pair 'A B'")
    size = _int(h, f"{a}.vocab_size", required=False, low=0, high=1 << 32)
    if size is not None and size != n_vocab:
        raise _BadMetadata(f"{a}.vocab_size is {size} but tokenizer.ggml.tokens has {n_vocab} tokens")
    embd = h.tensor_by_name.get("token_embd.weight")
    if embd is None:
        raise _BadMetadata("the tensor token_embd.weight is missing")
    if len(embd.ne) != 2 or embd.ne[0] != n_embd or embd.ne[1] != n_vocab:
        raise _BadMetadata(
            f"token_embd.weight has shape {list(embd.ne)}, not [{n_embd}, {n_vocab}] "
            "(embedding length, tokens in tokenizer.ggml.tokens)"
        )
    out = h.tensor_by_name.get("output.weight")
    if out is not None and (len(out.ne) != 2 or out.ne[1] != n_vocab):
        raise _BadMetadata(f"output.weight has shape {list(out.ne)}, not [{n_embd}, {n_vocab}]")
    for key, (vtype, _) in h.types.items():
        if _SPECIAL_ID.fullmatch(key):
            token = h.metadata[key]
            if vtype not in _INT_TYPES or not 0 <= token < n_vocab:
                raise _BadMetadata(f"{key} = {token!r} is not a token id of the {n_vocab}-token vocabulary")
    if "tokenizer.chat_template" in h.metadata and h.types["tokenizer.chat_template"][0] != _STRING:
        raise _BadMetadata("tokenizer.chat_template is not a string")


# ---------------------------------------------------------------------- NaN/inf scan


def _windows(t: GGUFTensorInfo) -> Iterator[tuple[int, int]]:
    """(absolute offset, bytes) ranges of `t` to scan: all of it, or evenly spaced samples."""
    if t.nbytes <= SCAN_FULL_BYTES:
        yield t.offset, t.nbytes
        return
    step = (t.nbytes - SCAN_WINDOW_BYTES) // (SCAN_SAMPLES - 1)
    for i in range(SCAN_SAMPLES):
        start = t.offset + (i * step) // 8 * 8  # keep element alignment
        yield start, SCAN_WINDOW_BYTES


def _scan_values(h: GGUFHeader) -> None:
    with h.path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for t in h.tensors:
            if t.type_id not in _FLOAT_TENSOR_MASKS:
                continue
            dtype, mask = _FLOAT_TENSOR_MASKS[t.type_id]
            for start, nbytes in _windows(t):
                bits = np.frombuffer(mm, dtype=dtype, count=nbytes // dtype.itemsize, offset=start)
                bad = np.flatnonzero((bits & mask) == mask)
                del bits  # release the buffer export before the mmap closes
                if bad.size:
                    element = (start - t.offset) // dtype.itemsize + int(bad[0])
                    raise _Damaged(
                        f"tensor {t.name!r} ({t.type_name}) holds NaN or infinity (element {element}"
                        f"{', and more' if bad.size > 1 else ''})"
                    )


def check_gguf(path: str | os.PathLike[str], *, semantic: bool = True, scan: bool = True) -> GGUFHeader:
    """Check that `path` is a GGUF model the engine can load and run (rules: see the module docstring).

    Returns the parsed header. `semantic=False` checks only the container structure (for tools that
    read any GGUF); `scan=False` skips the NaN/inf scan of the float tensors.

    Raises:
        ModelFileError: the file is unreadable, damaged, or its metadata is inconsistent; the message
            names the file, the problem and the fix.
    """
    p = Path(path)
    header = read_gguf_header(p)
    try:
        if semantic:
            _check_hparams(header)
        if scan:
            _scan_values(header)
    except _BadMetadata as exc:
        raise _error(p, str(exc), FIX_METADATA) from None
    except _Damaged as exc:
        raise _error(p, str(exc), FIX_DAMAGED) from None
    except OSError as exc:
        reason = f"it cannot be read ({exc.strerror or exc})"
        raise _error(p, reason, "Check the file and its permissions.") from exc
    return header
