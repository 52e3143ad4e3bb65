"""The I2_S tensor layout of microsoft/BitNet's llama.cpp fork: one pack/unpack pair.

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

Read by `bitnet.models.formats.reader` (type id 36 in a GGUF) and imported into our GGUF by
`bitnet.models.convert.i2s`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bitnet.models.formats import packing

__all__ = [
    "I2S_ARCH",
    "I2S_BLOCK",
    "I2S_BLOCK_BYTES",
    "I2S_FILE_TYPE",
    "I2S_TAIL_BYTES",
    "I2S_TYPE_ID",
    "Codes",
    "i2s_nbytes",
    "pack_i2s",
    "read_i2s_tensor",
]

I2S_TYPE_ID = 36  # GGML_TYPE_I2_S in microsoft/BitNet's fork (upstream: a removed type)
I2S_FILE_TYPE = 40  # LLAMA_FTYPE_MOSTLY_I2_S in the fork
I2S_ARCH = "bitnet-b1.58"  # general.architecture of the official file

I2S_BLOCK = 128  # values per block
I2S_BLOCK_BYTES = 32  # bytes per block
I2S_TAIL_BYTES = 32  # f32 scale + padding after the packed codes
# Bit position of each group g = 0..3 of a block (elements 32g .. 32g+31): group g of byte b sits in
# bits _I2S_SHIFTS[g]+1 : _I2S_SHIFTS[g]. THE declaration of the I2_S bit order.
_I2S_SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint8)

Codes = npt.NDArray[np.int8]


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
