"""Binary layouts of ternary weights, declared once: one vectorized pack/unpack pair per format.

Ternary codes are int8 arrays with values in {-1, 0, +1}, shape (rows, n) in numpy order: a row is one
output channel, `n` (ggml's ne0) the input dimension. Packed data is a uint8 array of shape
(rows, bytes_per_row), exactly the bytes ggml reads.

Formats (QK_K = 256 values per block):

- TQ2_0 (ggml, 66 bytes/block, 2.0625 bit/weight). ref: ggml/src/ggml-common.h `block_tq2_0`,
  ggml-quants.c `quantize_row_tq2_0_ref`. Layout: `qs[64]` then fp16 `d`. Trit t = w + 1 in {0, 1, 2}.
  The block is two 128-value halves; in half h, byte m (0..31) holds values h*128 + l*32 + m for
  l = 0..3 in bits 2l..2l+1 (l = 0 in the low bits).
- TQ1_0 (ggml, 54 bytes/block, 1.6875 bit/weight). ref: `block_tq1_0`, `quantize_row_tq1_0_ref`.
  Layout: `qs[48]`, `qh[4]`, fp16 `d`. Five trits per byte as a base-3 number, the first value most
  significant, then stored as ceil(v * 256 / 243) so trit k is read back as ((q * 3^k) mod 256) * 3 >> 8.
  qs[0:32]: byte m holds values m + 32n (n = 0..4, values 0..159); qs[32:48]: byte m holds values
  160 + m + 16n (values 160..239); qh[0:4]: byte j holds values 240 + j + 4n (n = 0..3) as four trits
  followed by a zero fifth trit.
- Q8_0 holding ternary values (34 bytes per 32 values): fp16 `d` then 32 int8. ref: `block_q8_0`.
  The fallback for rows whose length is not a multiple of 256 (e.g. 1bitLLM 3B: 3200, 8640).
- transformers' packed checkpoints (`transformers.integrations.bitnet.pack_weights`): uint8 of shape
  (out/4, in); stored value is w + 1 in 2 bits; packed row r holds original rows r, r+R, r+2R, r+3R
  (R = out/4) in bits 0-1, 2-3, 4-5, 6-7.

Every ternary block we write has d = 1.0 (0x3C00, exact in fp16); the exact per-tensor f32 scale goes
into the engine's `<name>.scale` tensor. ggml's reference quantizer sets d = max|x| of the block, which
is also 1.0 for any block holding a nonzero ternary value (it writes 0.0 for an all-zero block; both
decode to the same zeros).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

QK_K = 256
QK8_0 = 32
TQ2_0_BLOCK_BYTES = 66  # 64 qs + 2 d
TQ1_0_BLOCK_BYTES = 54  # 48 qs + 4 qh + 2 d
Q8_0_BLOCK_BYTES = 34  # 2 d + 32 qs

_FP16_ONE = np.array([1.0], dtype="<f2").view(np.uint8)  # bytes 0x00 0x3C
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
_TQ1_WEIGHTS5 = np.array([81, 27, 9, 3, 1], dtype=np.uint16)  # first value = most significant trit
_TQ1_WEIGHTS4 = np.array([81, 27, 9, 3], dtype=np.uint16)  # qh: four trits, fifth trit 0

Codes = npt.NDArray[np.int8]
Packed = npt.NDArray[np.uint8]

__all__ = [
    "QK_K",
    "QK8_0",
    "bf16_to_f32",
    "check_ternary",
    "f32_to_bf16",
    "pack_hf",
    "pack_q8_0_ternary",
    "pack_tq1_0",
    "pack_tq2_0",
    "random_tq1_0",
    "random_tq2_0",
    "unpack_hf",
    "unpack_q8_0",
    "unpack_tq1_0",
    "unpack_tq2_0",
]


def _as_rows(codes: npt.ArrayLike, multiple: int, fmt: str) -> tuple[Codes, int, int]:
    arr = np.asarray(codes)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise ValueError(f"{fmt}: expected a 2-D (rows, n) array of ternary codes, got shape {arr.shape}")
    rows, n = arr.shape
    if n % multiple:
        raise ValueError(f"{fmt}: row length {n} is not a multiple of {multiple}")
    return arr.astype(np.int8, copy=False), rows, n


def check_ternary(codes: npt.NDArray[np.integer]) -> None:
    """Raise ValueError unless every value of `codes` is -1, 0 or +1."""
    if codes.size and (codes.min() < -1 or codes.max() > 1):
        raise ValueError(f"values outside {{-1, 0, 1}} (min {codes.min()}, max {codes.max()})")


def _trits(codes: Codes) -> npt.NDArray[np.uint8]:
    check_ternary(codes)
    return (codes + 1).astype(np.uint8)


def _split_blocks(data: npt.ArrayLike, block_bytes: int, fmt: str) -> tuple[Packed, int, int]:
    arr = np.asarray(data, dtype=np.uint8)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    rows, nbytes = arr.shape
    if nbytes % block_bytes:
        raise ValueError(f"{fmt}: {nbytes} bytes per row is not a multiple of the {block_bytes}-byte block")
    return arr.reshape(rows, nbytes // block_bytes, block_bytes), rows, nbytes // block_bytes


def _block_d(blocks: Packed, start: int) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(blocks[..., start : start + 2]).view("<f2")[..., 0].astype(np.float32)


# --- TQ2_0 -------------------------------------------------------------------------------------------


def pack_tq2_0(codes: npt.ArrayLike) -> Packed:
    """Pack ternary codes (rows, n), n % 256 == 0, into TQ2_0 blocks with d = 1.0."""
    arr, rows, n = _as_rows(codes, QK_K, "TQ2_0")
    nb = n // QK_K
    t = _trits(arr).reshape(rows, nb, 2, 4, 32)  # (row, block, half, l, m)
    qs = t[:, :, :, 0] | (t[:, :, :, 1] << 2) | (t[:, :, :, 2] << 4) | (t[:, :, :, 3] << 6)
    out = np.empty((rows, nb, TQ2_0_BLOCK_BYTES), dtype=np.uint8)
    out[:, :, :64] = qs.reshape(rows, nb, 64)
    out[:, :, 64:] = _FP16_ONE
    return out.reshape(rows, nb * TQ2_0_BLOCK_BYTES)


def unpack_tq2_0(data: npt.ArrayLike) -> tuple[Codes, npt.NDArray[np.float32]]:
    """Unpack TQ2_0 rows into (codes (rows, n) int8, block scales d (rows, n/256) float32)."""
    blocks, rows, nb = _split_blocks(data, TQ2_0_BLOCK_BYTES, "TQ2_0")
    qs = blocks[:, :, :64].reshape(rows, nb, 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 4, 1)
    t = (qs >> shifts) & 3
    if (t == 3).any():
        raise ValueError("TQ2_0: found the unused 2-bit code 3")
    codes = t.reshape(rows, nb * QK_K).astype(np.int8) - np.int8(1)
    return codes, _block_d(blocks, 64)


# --- TQ1_0 -------------------------------------------------------------------------------------------


def _tq1_round(v: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint8]:
    # ceiling division by 243 = 3^5, so trits decode with a multiply and a shift (ggml-quants.c)
    return ((v * 256 + (243 - 1)) // 243).astype(np.uint8)


def pack_tq1_0(codes: npt.ArrayLike) -> Packed:
    """Pack ternary codes (rows, n), n % 256 == 0, into TQ1_0 blocks with d = 1.0."""
    arr, rows, n = _as_rows(codes, QK_K, "TQ1_0")
    nb = n // QK_K
    t = _trits(arr).reshape(rows, nb, QK_K).astype(np.uint16)
    a = t[:, :, :160].reshape(rows, nb, 5, 32)  # value m + 32n -> [n, m]
    b = t[:, :, 160:240].reshape(rows, nb, 5, 16)  # value 160 + m + 16n
    c = t[:, :, 240:].reshape(rows, nb, 4, 4)  # value 240 + j + 4n
    out = np.empty((rows, nb, TQ1_0_BLOCK_BYTES), dtype=np.uint8)
    out[:, :, 0:32] = _tq1_round(np.einsum("rbnm,n->rbm", a, _TQ1_WEIGHTS5))
    out[:, :, 32:48] = _tq1_round(np.einsum("rbnm,n->rbm", b, _TQ1_WEIGHTS5))
    out[:, :, 48:52] = _tq1_round(np.einsum("rbnj,n->rbj", c, _TQ1_WEIGHTS4))
    out[:, :, 52:] = _FP16_ONE
    return out.reshape(rows, nb * TQ1_0_BLOCK_BYTES)


def _tq1_trits(q: Packed, count: int) -> npt.NDArray[np.uint8]:
    # (..., bytes) -> (..., count, bytes): trit k = ((q * 3^k) mod 256) * 3 >> 8
    prod = q[..., None, :] * _POW3[:count, None]  # uint8 arithmetic wraps mod 256
    return ((prod.astype(np.uint16) * 3) >> 8).astype(np.uint8)


def unpack_tq1_0(data: npt.ArrayLike) -> tuple[Codes, npt.NDArray[np.float32]]:
    """Unpack TQ1_0 rows into (codes (rows, n) int8, block scales d (rows, n/256) float32)."""
    blocks, rows, nb = _split_blocks(data, TQ1_0_BLOCK_BYTES, "TQ1_0")
    out = np.empty((rows, nb, QK_K), dtype=np.uint8)
    out[:, :, :160] = _tq1_trits(blocks[:, :, 0:32], 5).reshape(rows, nb, 160)
    out[:, :, 160:240] = _tq1_trits(blocks[:, :, 32:48], 5).reshape(rows, nb, 80)
    out[:, :, 240:] = _tq1_trits(blocks[:, :, 48:52], 4).reshape(rows, nb, 16)
    codes = out.reshape(rows, nb * QK_K).astype(np.int8) - np.int8(1)
    return codes, _block_d(blocks, 52)


# --- Q8_0 holding ternary values ---------------------------------------------------------------------


def pack_q8_0_ternary(codes: npt.ArrayLike) -> Packed:
    """Pack ternary codes (rows, n), n % 32 == 0, into Q8_0 blocks with d = 1.0 (exact)."""
    arr, rows, n = _as_rows(codes, QK8_0, "Q8_0")
    check_ternary(arr)
    nb = n // QK8_0
    out = np.empty((rows, nb, Q8_0_BLOCK_BYTES), dtype=np.uint8)
    out[:, :, :2] = _FP16_ONE
    out[:, :, 2:] = arr.reshape(rows, nb, QK8_0).view(np.uint8)
    return out.reshape(rows, nb * Q8_0_BLOCK_BYTES)


def unpack_q8_0(data: npt.ArrayLike) -> tuple[Codes, npt.NDArray[np.float32]]:
    """Unpack Q8_0 rows into (int8 values (rows, n), block scales d (rows, n/32) float32)."""
    blocks, rows, nb = _split_blocks(data, Q8_0_BLOCK_BYTES, "Q8_0")
    qs = np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8).reshape(rows, nb * QK8_0)
    return qs, _block_d(blocks, 0)


# --- transformers' packed uint8 checkpoints ----------------------------------------------------------


def pack_hf(codes: npt.ArrayLike) -> Packed:
    """Pack ternary codes (out, in), out % 4 == 0, as `transformers...bitnet.pack_weights` does."""
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[0] % 4:
        raise ValueError(f"HF packing needs a 2-D array with rows % 4 == 0, got shape {arr.shape}")
    t = _trits(arr.astype(np.int8, copy=False)).reshape(4, arr.shape[0] // 4, arr.shape[1])
    return (t[0] | (t[1] << 2) | (t[2] << 4) | (t[3] << 6)).astype(np.uint8)


def unpack_hf(packed: npt.ArrayLike) -> Codes:
    """Unpack a transformers-packed uint8 tensor (R, in) into ternary codes (4R, in).

    Same order as `transformers.integrations.bitnet.unpack_weights`: output rows [i*R, (i+1)*R) come
    from bits 2i..2i+1. Raises ValueError on the unused 2-bit code 3 (transformers would silently
    decode it as +2, which no ternary format can hold).
    """
    arr = np.asarray(packed)
    if arr.dtype != np.uint8:
        raise ValueError(f"packed weights must be uint8, got {arr.dtype}")
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape((4,) + (1,) * arr.ndim)
    t = (arr[None] >> shifts) & 3
    if (t == 3).any():
        raise ValueError("packed weights contain the unused 2-bit code 3 (not a ternary checkpoint?)")
    return (t.astype(np.int8) - np.int8(1)).reshape((4 * arr.shape[0], *arr.shape[1:]))


# --- random ternary data generated directly in packed form (synthetic models) ------------------------

# Every byte value that holds 4 valid TQ2_0 trits (3^4 = 81 of the 256 byte values).
_TQ2_BYTES = np.array(
    [
        a | (b << 2) | (c << 4) | (d << 6)
        for a in range(3)
        for b in range(3)
        for c in range(3)
        for d in range(3)
    ],
    dtype=np.uint8,
)
# Every TQ1_0 qs byte (5 trits, 243 values) and qh byte (4 trits + a zero trit, 81 values).
_TQ1_QS_BYTES = _tq1_round(np.arange(243, dtype=np.uint16))
_TQ1_QH_BYTES = _tq1_round(np.arange(81, dtype=np.uint16) * 3)


def random_tq2_0(rng: np.random.Generator, rows: int, n: int) -> Packed:
    """Uniformly random ternary weights (rows, n) already packed as TQ2_0 (d = 1.0), no float detour."""
    if n % QK_K:
        raise ValueError(f"TQ2_0: row length {n} is not a multiple of {QK_K}")
    nb = n // QK_K
    out = np.empty((rows, nb, TQ2_0_BLOCK_BYTES), dtype=np.uint8)
    out[:, :, :64] = _TQ2_BYTES[rng.integers(0, 81, size=(rows, nb, 64), dtype=np.uint8)]
    out[:, :, 64:] = _FP16_ONE
    return out.reshape(rows, nb * TQ2_0_BLOCK_BYTES)


def random_tq1_0(rng: np.random.Generator, rows: int, n: int) -> Packed:
    """Uniformly random ternary weights (rows, n) already packed as TQ1_0 (d = 1.0)."""
    if n % QK_K:
        raise ValueError(f"TQ1_0: row length {n} is not a multiple of {QK_K}")
    nb = n // QK_K
    out = np.empty((rows, nb, TQ1_0_BLOCK_BYTES), dtype=np.uint8)
    out[:, :, :48] = _TQ1_QS_BYTES[rng.integers(0, 243, size=(rows, nb, 48), dtype=np.uint8)]
    out[:, :, 48:52] = _TQ1_QH_BYTES[rng.integers(0, 81, size=(rows, nb, 4), dtype=np.uint8)]
    out[:, :, 52:] = _FP16_ONE
    return out.reshape(rows, nb * TQ1_0_BLOCK_BYTES)


def f32_to_bf16(values: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """float32 -> bfloat16 bit patterns, rounded to nearest even (what torch's `.to(torch.bfloat16)`
    does); NaN stays a quiet NaN. Exact for values that are bfloat16 already, e.g. a bf16 checkpoint's
    embedding widened to float32 by the reader: such a head is stored bit for bit."""
    u = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype("<u2")
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        rounded[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype("<u2")
    return rounded


def bf16_to_f32(bits: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """bfloat16 bit patterns -> float32, exactly (a bfloat16 is the top half of a float32)."""
    return (np.asarray(bits, dtype="<u2").astype("<u4") << np.uint32(16)).view("<f4")
