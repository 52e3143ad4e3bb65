"""models.formats.packing: every pack/unpack pair round-trips exactly (hypothesis), and our bytes are ggml's:
equal to gguf-py's quantizers (which gguf-py's own tests check bit for bit against ggml's C code) and to
transformers' pack_weights for the HF layout."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitnet.models.formats import packing

PAIRS = {
    "tq2_0": (packing.pack_tq2_0, packing.unpack_tq2_0, 256, Q.TQ2_0),
    "tq1_0": (packing.pack_tq1_0, packing.unpack_tq1_0, 256, Q.TQ1_0),
    "q8_0": (packing.pack_q8_0_ternary, packing.unpack_q8_0, 32, Q.Q8_0),
}


@st.composite
def ternary(draw: st.DrawFn, multiple: int, max_blocks: int = 3, max_rows: int = 4) -> np.ndarray:
    rows = draw(st.integers(1, max_rows))
    cols = multiple * draw(st.integers(1, max_blocks))
    return draw(hnp.arrays(np.int8, (rows, cols), elements=st.integers(-1, 1)))


@pytest.mark.parametrize("fmt", PAIRS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_is_exact(fmt: str, data: st.DataObject) -> None:
    pack, unpack, multiple, qtype = PAIRS[fmt]
    codes = data.draw(ternary(multiple))
    packed = pack(codes)
    block_elems, block_bytes = 256 if multiple == 256 else 32, {Q.TQ2_0: 66, Q.TQ1_0: 54, Q.Q8_0: 34}[qtype]
    assert packed.dtype == np.uint8
    assert packed.shape == (codes.shape[0], codes.shape[1] // block_elems * block_bytes)
    back, d = unpack(packed)
    np.testing.assert_array_equal(back, codes)
    assert (d == 1.0).all()  # block scale exactly 1: the real scale lives in the .scale tensor
    np.testing.assert_array_equal(pack(back), packed)  # and the other direction


@pytest.mark.parametrize("fmt", ["tq2_0", "tq1_0"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bytes_equal_gguf_py_quantizer(fmt: str, data: st.DataObject) -> None:
    pack, _, _, qtype = PAIRS[fmt]
    codes = data.draw(ternary(256))
    codes[:, ::256] = data.draw(st.sampled_from([-1, 1]))  # ggml writes d = max|x|: 0.0 for an all-zero block
    np.testing.assert_array_equal(pack(codes), quantize(codes.astype(np.float32), qtype))


@pytest.mark.parametrize("fmt", PAIRS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_gguf_py_dequantizes_our_bytes_to_the_codes(fmt: str, data: st.DataObject) -> None:
    pack, _, multiple, qtype = PAIRS[fmt]
    codes = data.draw(ternary(multiple))
    np.testing.assert_array_equal(dequantize(pack(codes), qtype), codes.astype(np.float32))


def test_all_zero_block_differs_from_ggml_only_in_d() -> None:
    codes = np.zeros((1, 256), dtype=np.int8)
    ours, ggml = packing.pack_tq2_0(codes), quantize(codes.astype(np.float32), Q.TQ2_0)
    np.testing.assert_array_equal(ours[:, :64], ggml[:, :64])
    assert ours[0, 64:].tobytes() == b"\x00\x3c" and ggml[0, 64:].tobytes() == b"\x00\x00"


@settings(max_examples=60, deadline=None)
@given(codes=ternary(4, max_blocks=4, max_rows=3).map(lambda a: a.T.copy()))  # rows % 4 == 0
def test_hf_pack_matches_transformers(codes: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    from transformers.integrations.bitnet import pack_weights

    ours = packing.pack_hf(codes)
    theirs = pack_weights(torch.from_numpy(codes.copy())).numpy()  # pack_weights mutates its input
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(packing.unpack_hf(ours), codes)


def test_hf_unpack_matches_transformers_on_random_bytes() -> None:
    torch = pytest.importorskip("torch")
    from tinymodels import disable_torch_compile

    disable_torch_compile()
    from transformers.integrations.bitnet import unpack_weights

    rng = np.random.default_rng(0)
    trits = rng.integers(0, 3, size=(4, 6, 64), dtype=np.uint8)  # valid 2-bit codes only
    packed = trits[0] | trits[1] << 2 | trits[2] << 4 | trits[3] << 6
    theirs = unpack_weights(torch.from_numpy(packed), dtype=torch.float32).numpy()
    np.testing.assert_array_equal(packing.unpack_hf(packed), theirs.astype(np.int8))


def test_unused_code_three_is_rejected() -> None:
    with pytest.raises(ValueError, match="code 3"):
        packing.unpack_hf(np.array([[0b11]], dtype=np.uint8))
    bad = packing.pack_tq2_0(np.zeros((1, 256), dtype=np.int8))
    bad[0, 0] = 0xFF
    with pytest.raises(ValueError, match="code 3"):
        packing.unpack_tq2_0(bad)


@pytest.mark.parametrize("fmt", PAIRS)
def test_non_ternary_and_bad_widths_are_rejected(fmt: str) -> None:
    pack, _, multiple, _ = PAIRS[fmt]
    with pytest.raises(ValueError, match="outside"):
        pack(np.full((1, multiple), 2, dtype=np.int8))
    with pytest.raises(ValueError, match="multiple"):
        pack(np.zeros((1, multiple + 1), dtype=np.int8))


@pytest.mark.parametrize(
    ("gen", "unpack", "pack"),
    [
        (packing.random_tq2_0, packing.unpack_tq2_0, packing.pack_tq2_0),
        (packing.random_tq1_0, packing.unpack_tq1_0, packing.pack_tq1_0),
    ],
)
def test_random_packed_generators_emit_valid_uniform_ternary(gen: Any, unpack: Any, pack: Any) -> None:
    data = gen(np.random.default_rng(1), 64, 512)
    codes, d = unpack(data)
    assert (d == 1.0).all()
    np.testing.assert_array_equal(pack(codes), data)  # canonical bytes only
    counts = np.bincount((codes.ravel() + 1).astype(np.int64), minlength=3) / codes.size
    np.testing.assert_allclose(counts, 1 / 3, atol=0.01)  # 32768 draws: 3 sigma ~ 0.008
