"""bitnet.models.convert.i2s: the I2_S bit layout, the tolerant GGUF reader, and the lossless import of a
small fake official I2_S GGUF (arch "bitnet-b1.58", I2_S linears, F32 norms, F16 token_embd) into a
"bitnet" GGUF read back with gguf-py's own reader."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as VT
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet.errors import ConversionError, CorruptCheckpointError, UnsupportedCheckpointError
from bitnet.models.convert.i2s import I2SModel, import_i2s_gguf, iter_i2s_model
from bitnet.models.formats import packing
from bitnet.models.formats.i2s import I2S_TYPE_ID, i2s_nbytes, pack_i2s, read_i2s_tensor
from bitnet.models.formats.reader import GGUFValue, read_gguf_header
from bitnet.models.formats.reader import write_raw_gguf as write_i2s_gguf

# ---------------------------------------------------------------------------------------------------
# The bit layout


def reference_pack(codes: np.ndarray, scale: float) -> bytes:
    """Scalar transliteration of microsoft/BitNet src/ggml-bitnet-mad.cpp `quantize_i2_s` (x86 path)."""
    # for (i = 0; i < n / 128; i++) for (j = 0; j < 128; j++) {
    #     group_idx = j / 32; group_pos = j % 32;
    #     i2_weight[i * 32 + group_pos] |= q8[i * 128 + j] << (6 - 2 * group_idx); }
    # *(float *)(i2_weight + n / 4) = i2_scale;   // the tensor is n / 4 + 32 bytes
    n = codes.size
    out = bytearray(n // 4 + 32)
    q8 = [int(c) + 1 for c in codes.reshape(-1)]
    for i in range(n // 128):
        for j in range(128):
            out[i * 32 + j % 32] |= q8[i * 128 + j] << (6 - 2 * (j // 32))
    out[n // 4 : n // 4 + 4] = struct.pack("<f", scale)
    return bytes(out)


def test_bit_order_golden_bytes() -> None:
    codes = np.zeros(128, dtype=np.int8)
    codes[0] = 1  # byte 0, bits 7:6 -> code 2 -> 0b10......
    codes[32] = -1  # byte 0, bits 5:4 -> code 0
    codes[96] = 1  # byte 0, bits 1:0 -> code 2
    codes[33] = 1  # byte 1, bits 5:4 -> code 2
    raw = pack_i2s(codes, 0.5)
    # all-zero weights are code 1 = 0b01 in every slot: 0x55
    assert raw[0] == 0b10_00_01_10
    assert raw[1] == 0b01_10_01_01
    assert set(raw[2:32].tolist()) == {0x55}
    assert raw[32:36].tobytes() == struct.pack("<f", 0.5)
    assert raw.size == 64 and not raw[36:].any()


def test_pack_matches_the_c_reference_loop() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(-1, 2, size=384, dtype=np.int8)
    assert pack_i2s(codes, 1.25).tobytes() == reference_pack(codes, 1.25)


@settings(max_examples=60, deadline=None)
@given(
    blocks=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(width=32, allow_nan=False, allow_infinity=False),
)
def test_pack_then_read_round_trips(blocks: int, seed: int, scale: float) -> None:
    codes = np.random.default_rng(seed).integers(-1, 2, size=blocks * 128, dtype=np.int8)
    raw = pack_i2s(codes, scale)
    assert raw.size == i2s_nbytes(codes.size)
    got, got_scale = read_i2s_tensor(raw.tobytes(), codes.size)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, codes)
    assert np.float32(scale).tobytes() == got_scale.tobytes()  # bit-exact, including -0.0


@settings(max_examples=40, deadline=None)
@given(blocks=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_read_then_pack_round_trips_bytes(blocks: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = blocks * 128
    slots = rng.integers(0, 3, size=(n // 4, 4), dtype=np.uint8)  # valid codes 0..2 in each 2-bit slot
    raw = bytearray(
        (slots[:, 0] << 6 | slots[:, 1] << 4 | slots[:, 2] << 2 | slots[:, 3]).astype(np.uint8).tobytes()
    )
    raw += struct.pack("<f", float(rng.random())) + bytes(28)
    codes, scale = read_i2s_tensor(bytes(raw), n)
    assert pack_i2s(codes, float(scale)).tobytes() == bytes(raw)


def test_read_rejects_bad_input() -> None:
    raw = bytearray(pack_i2s(np.zeros(128, dtype=np.int8), 1.0).tobytes())
    raw[5] |= 0b11  # element 128*0 + 96 + 5 gets code 3
    with pytest.raises(ValueError, match="code 3 at element 101"):
        read_i2s_tensor(bytes(raw), 128)
    with pytest.raises(ValueError, match="multiple of 128"):
        read_i2s_tensor(bytes(64), 64)
    with pytest.raises(ValueError, match="needs 36 bytes"):
        read_i2s_tensor(bytes(34), 128)
    with pytest.raises(ValueError, match="outside"):
        pack_i2s(np.full(128, 2, dtype=np.int8), 1.0)


# ---------------------------------------------------------------------------------------------------
# The GGUF container


def test_container_round_trip_and_gguf_py_agrees(tmp_path: Path) -> None:
    md = {
        "general.architecture": GGUFValue("test", VT.STRING),
        "u8": GGUFValue(7, VT.UINT8),
        "i16": GGUFValue(-3, VT.INT16),
        "u32": GGUFValue(4_000_000_000, VT.UINT32),
        "i64": GGUFValue(-(2**40), VT.INT64),
        "f32": GGUFValue(0.5, VT.FLOAT32),
        "f64": GGUFValue(1e-300, VT.FLOAT64),
        "flag": GGUFValue(True, VT.BOOL),
        "names": GGUFValue(["a", "ü", ""], VT.ARRAY, VT.STRING),
        "ints": GGUFValue([1, -2, 3], VT.ARRAY, VT.INT32),
    }
    f32 = np.arange(6, dtype="<f4").reshape(2, 3)
    f16 = np.arange(8, dtype="<f2").reshape(2, 4)
    path = tmp_path / "plain.gguf"
    write_i2s_gguf(path, md, [("a", (3, 2), int(Q.F32), f32), ("b", (4, 2), int(Q.F16), f16)])

    metadata, infos = read_gguf_header(path)
    assert metadata == md
    assert [(t.name, t.shape, t.type_id) for t in infos] == [("a", (2, 3), 0), ("b", (2, 4), 1)]

    # gguf-py reads the same file the same way (it knows every type used here) ...
    reader = gguf.GGUFReader(path)
    assert reader.fields["u32"].contents() == 4_000_000_000
    assert reader.fields["names"].contents() == ["a", "ü", ""]
    np.testing.assert_array_equal(reader.tensors[0].data, f32)
    np.testing.assert_array_equal(reader.tensors[1].data, f16)
    assert [t.data_offset for t in reader.tensors] == [t.offset for t in infos]

    # ... but refuses type 36, which is why the importer has its own reader.
    i2s_path = tmp_path / "i2s.gguf"
    write_i2s_gguf(i2s_path, md, [("w", (128, 1), I2S_TYPE_ID, pack_i2s(np.zeros(128, np.int8), 1.0))])
    with pytest.raises(ValueError):
        gguf.GGUFReader(i2s_path)
    assert read_gguf_header(i2s_path)[1][0].nbytes == 128 // 4 + 32


# ---------------------------------------------------------------------------------------------------
# A fake official file: 2 layers, hidden 256, 4 heads / 2 KV heads (head_dim 64), FFN 384 (a multiple
# of 128 but not of 256, so ffn_down exercises the exact fallback type), vocab 300.

N_EMBD, N_FF, N_LAYER, N_HEAD, N_HEAD_KV, N_VOCAB = 256, 384, 2, 4, 2, 300
KV = N_EMBD // N_HEAD * N_HEAD_KV


def _linears() -> dict[str, tuple[int, int]]:
    return {
        "attn_q": (N_EMBD, N_EMBD),
        "attn_k": (KV, N_EMBD),
        "attn_v": (KV, N_EMBD),
        "attn_output": (N_EMBD, N_EMBD),
        "ffn_gate": (N_FF, N_EMBD),
        "ffn_up": (N_FF, N_EMBD),
        "ffn_down": (N_EMBD, N_FF),
    }


def make_official_like(path: Path, *, seed: int = 0, corrupt: str | None = None) -> dict[str, Any]:
    """Write a small GGUF shaped like ggml-model-i2_s.gguf; return the values that went in."""
    rng = np.random.default_rng(seed)
    tokens = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"t{i}" for i in range(N_VOCAB - 2)]
    a = "bitnet-b1.58"
    md = {
        "general.architecture": GGUFValue(a, VT.STRING),
        "general.name": GGUFValue("bitnet2b", VT.STRING),
        f"{a}.vocab_size": GGUFValue(N_VOCAB, VT.UINT32),
        f"{a}.context_length": GGUFValue(4096, VT.UINT32),
        f"{a}.embedding_length": GGUFValue(N_EMBD, VT.UINT32),
        f"{a}.block_count": GGUFValue(N_LAYER, VT.UINT32),
        f"{a}.feed_forward_length": GGUFValue(N_FF, VT.UINT32),
        f"{a}.rope.dimension_count": GGUFValue(N_EMBD // N_HEAD, VT.UINT32),
        f"{a}.attention.head_count": GGUFValue(N_HEAD, VT.UINT32),
        f"{a}.attention.head_count_kv": GGUFValue(N_HEAD_KV, VT.UINT32),
        f"{a}.rope.freq_base": GGUFValue(500000.0, VT.FLOAT32),
        f"{a}.attention.layer_norm_rms_epsilon": GGUFValue(1e-5, VT.FLOAT32),
        "general.file_type": GGUFValue(40, VT.UINT32),
        "tokenizer.ggml.model": GGUFValue("gpt2", VT.STRING),
        "tokenizer.ggml.tokens": GGUFValue(tokens, VT.ARRAY, VT.STRING),
        "tokenizer.ggml.token_type": GGUFValue([3, 3] + [1] * (N_VOCAB - 2), VT.ARRAY, VT.INT32),
        "tokenizer.ggml.merges": GGUFValue(["t 1", "t 2"], VT.ARRAY, VT.STRING),
        "tokenizer.ggml.bos_token_id": GGUFValue(0, VT.UINT32),
        "general.quantization_version": GGUFValue(2, VT.UINT32),
    }
    values: dict[str, Any] = {}
    tensors: list[tuple[str, tuple[int, ...], int, Any]] = []
    embd = (rng.standard_normal((N_VOCAB, N_EMBD)) * 0.02).astype("<f2")
    values["token_embd.weight"] = embd
    tensors.append(("token_embd.weight", (N_EMBD, N_VOCAB), int(Q.F16), embd))
    for i in range(N_LAYER):
        for norm, size in (
            ("attn_norm", N_EMBD),
            ("ffn_norm", N_EMBD),
            ("attn_sub_norm", N_EMBD),
            ("ffn_sub_norm", N_FF),
        ):
            w = rng.standard_normal(size).astype("<f4")
            values[f"blk.{i}.{norm}.weight"] = w
            tensors.append((f"blk.{i}.{norm}.weight", (size,), int(Q.F32), w))
        for name, (out_f, in_f) in _linears().items():
            codes = rng.integers(-1, 2, size=(out_f, in_f), dtype=np.int8)
            scale = np.float32(rng.uniform(0.5, 3.0))
            values[f"blk.{i}.{name}.weight"] = (codes, scale)
            raw = pack_i2s(codes, float(scale))
            if corrupt == "code3" and i == 1 and name == "ffn_up":
                raw[10] = 0xFF
            tensors.append((f"blk.{i}.{name}.weight", (in_f, out_f), I2S_TYPE_ID, raw))
    out_norm = rng.standard_normal(N_EMBD).astype("<f4")
    values["output_norm.weight"] = out_norm
    tensors.append(("output_norm.weight", (N_EMBD,), int(Q.F32), out_norm))
    if corrupt == "arch":
        md["general.architecture"] = GGUFValue("llama", VT.STRING)
    if corrupt == "tl2":
        tensors.append(("blk.0.extra.weight", (128, 1), 38, bytes(64)))
    write_i2s_gguf(path, md, tensors)
    if corrupt == "truncate":
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size - 100)
    return values


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("i2s") / "ggml-model-i2_s.gguf"
    return path, make_official_like(path)


def test_iter_yields_exact_values(official: tuple[Path, dict[str, Any]]) -> None:
    path, values = official
    seen = 0
    for name, shape, data, scale in iter_i2s_model(path):
        expected = values[name]
        if isinstance(expected, tuple):
            codes, exp_scale = expected
            assert data.dtype == np.int8 and shape == codes.shape
            np.testing.assert_array_equal(data, codes)
            assert scale is not None and scale.tobytes() == exp_scale.tobytes()
        else:
            assert scale is None and data.dtype == expected.dtype and shape == expected.shape
            np.testing.assert_array_equal(data, expected)
        seen += 1
    assert seen == len(values) == 1 + N_LAYER * 11 + 1


def test_bitnet_metadata(official: tuple[Path, dict[str, Any]]) -> None:
    md = I2SModel(official[0]).bitnet_metadata()
    assert not [k for k in md if k.startswith("bitnet-b1.58")]
    assert md["bitnet.block_count"].value == N_LAYER
    assert md["bitnet.rope.freq_base"] == GGUFValue(500000.0, VT.FLOAT32)
    assert md["bitnet.hidden_activation"] == GGUFValue("relu2", VT.STRING)
    assert md["tokenizer.ggml.pre"] == GGUFValue("llama-bpe", VT.STRING)
    assert "general.file_type" not in md and "general.architecture" not in md


def _tensor(reader: gguf.GGUFReader, name: str) -> Any:
    return next(t for t in reader.tensors if t.name == name)


@pytest.mark.parametrize("outtype", ["tq2_0", "tq1_0"])
def test_import_is_lossless(official: tuple[Path, dict[str, Any]], tmp_path: Path, outtype: str) -> None:
    path, values = official
    out = tmp_path / f"model-{outtype}.gguf"
    report = import_i2s_gguf(path, out, outtype=outtype, progress=False)
    assert report.file_bytes == out.stat().st_size > 0
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left

    reader = gguf.GGUFReader(out)
    field = reader.fields
    assert field["general.architecture"].contents() == "bitnet"
    assert field["bitnet.hidden_activation"].contents() == "relu2"
    assert field["bitnet.embedding_length"].contents() == N_EMBD
    assert field["bitnet.attention.head_count_kv"].contents() == N_HEAD_KV
    assert field["general.file_type"].contents() == (37 if outtype == "tq2_0" else 36)  # MOSTLY_TQ2_0 / TQ1_0
    assert field["tokenizer.ggml.tokens"].contents()[:2] == ["<|begin_of_text|>", "<|end_of_text|>"]
    assert field["tokenizer.ggml.pre"].contents() == "llama-bpe"
    assert not [k for k in field if k.startswith("bitnet-b1.58")]

    unpack = {Q.TQ2_0: packing.unpack_tq2_0, Q.TQ1_0: packing.unpack_tq1_0, Q.Q8_0: packing.unpack_q8_0}
    n_ternary = 0
    for name, expected in values.items():
        t = _tensor(reader, name)
        if isinstance(expected, tuple):
            codes, scale = expected
            # rows of 384 values (ffn_down) are not a multiple of 256: exact Q8_0 fallback
            want = Q.Q8_0 if name.endswith("ffn_down.weight") else Q[outtype.upper()]
            assert t.tensor_type == want, name
            got, d = unpack[want](np.asarray(t.data).reshape(codes.shape[0], -1))
            np.testing.assert_array_equal(got, codes)
            assert np.all(d == 1.0)
            s = _tensor(reader, name.removesuffix(".weight") + ".scale")
            assert s.tensor_type == Q.F32 and s.data.shape == (1,)
            assert s.data.tobytes() == scale.tobytes()  # the f32 scale, bit for bit
            n_ternary += 1
        else:
            assert t.tensor_type == (Q.F16 if name == "token_embd.weight" else Q.F32), name
            np.testing.assert_array_equal(np.asarray(t.data).reshape(expected.shape), expected)
    assert n_ternary == N_LAYER * 7
    assert len(reader.tensors) == len(values) + n_ternary  # + one .scale per ternary weight


def test_dry_run_plans_without_writing(official: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "never.gguf"
    report = import_i2s_gguf(official[0], out, dry_run=True, head_type="q8_0")
    assert not out.exists()
    plan = {t.name: t for t in report.tensors}
    assert plan["blk.0.attn_q.weight"].type == "TQ2_0"
    assert plan["blk.0.attn_q.scale"].type == "F32" and plan["blk.0.attn_q.scale"].shape == (1,)
    assert plan["blk.1.ffn_down.weight"].type == "Q8_0"
    assert plan["token_embd.weight"].type == "Q8_0"
    assert any("ffn_down" in n and "384" in n for n in report.notes)
    assert report.hidden_activation == "relu2" and report.gguf_arch == "bitnet"
    assert "blk.1.ffn_down.weight" in report.format_plan()


def test_convert_checkpoint_routes_gguf_here(official: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    from bitnet.models.convert import convert_checkpoint

    out = tmp_path / "via-convert.gguf"
    report = convert_checkpoint(official[0], out, progress=False)
    assert report.hf_architecture.startswith("bitnet-b1.58")
    assert gguf.GGUFReader(out).fields["general.architecture"].contents() == "bitnet"


@pytest.mark.parametrize(
    ("corrupt", "error", "match"),
    [
        ("truncate", CorruptCheckpointError, "truncated"),
        ("arch", UnsupportedCheckpointError, "expected 'bitnet-b1.58'"),
        ("tl2", UnsupportedCheckpointError, "type id 38"),
        ("code3", CorruptCheckpointError, "blk.1.ffn_up.weight: I2_S code 3"),
    ],
)
def test_bad_inputs_leave_no_output(tmp_path: Path, corrupt: str, error: type[Exception], match: str) -> None:
    src = tmp_path / "src" / "bad.gguf"
    src.parent.mkdir()
    make_official_like(src, corrupt=corrupt)
    outdir = tmp_path / "out"
    outdir.mkdir()
    with pytest.raises(error, match=match):
        import_i2s_gguf(src, outdir / "model.gguf", progress=False)
    assert list(outdir.iterdir()) == []


def test_not_a_gguf(tmp_path: Path) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(CorruptCheckpointError, match="not a GGUF file"):
        I2SModel(p)
    with pytest.raises(ConversionError, match="outtype"):
        import_i2s_gguf(p, tmp_path / "o.gguf", outtype="q4_0")
