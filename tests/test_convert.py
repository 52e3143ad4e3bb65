"""bitnet.models.convert on tiny transformers checkpoints: read the GGUF back with gguf-py's reader and
check the ternary values round-trip exactly, the scales bit for bit, the metadata and the tokenizer;
then every bad input gives a typed error with a useful message and leaves no file behind."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, TokenType
from gguf.quants import quantize
from tinymodels import (
    BOS,
    CHAT_TEMPLATE,
    EOS,
    TinyShape,
    disable_torch_compile,
    make_1bitllm_checkpoint,
    make_checkpoint,
    make_llama_checkpoint,
)

from bitnet.errors import (
    CheckpointDtypeError,
    ConversionError,
    CorruptCheckpointError,
    MissingConfigKeyError,
    OutputNotWritableError,
    TokenizerError,
    UnknownArchitectureError,
    UnsupportedCheckpointError,
)
from bitnet.models.convert import ConversionReport, convert_checkpoint, registered_architectures
from bitnet.models.formats import packing

UNPACK = {Q.TQ2_0: packing.unpack_tq2_0, Q.TQ1_0: packing.unpack_tq1_0, Q.Q8_0: packing.unpack_q8_0}
LINEARS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


# --- helpers -----------------------------------------------------------------------------------------


class Gguf:
    """A GGUF read back with gguf-py: metadata values and tensors by name."""

    def __init__(self, path: Path) -> None:
        self.reader = GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}

    def value(self, key: str) -> Any:
        field = self.reader.get_field(key)
        assert field is not None, f"missing key {key}"
        return field.contents()

    def has(self, key: str) -> bool:
        return self.reader.get_field(key) is not None

    def type(self, name: str) -> Q:
        return Q(self.tensors[name].tensor_type)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self.tensors[name].shape))  # numpy order

    def codes(self, name: str) -> np.ndarray:
        """Ternary codes of a weight (rows, n), checking every block scale is exactly 1."""
        t, qtype = self.tensors[name], self.type(name)
        rows = self.shape(name)[0]
        if qtype in (Q.F16, Q.F32):
            values = np.asarray(t.data).reshape(rows, -1)
            assert set(np.unique(values)) <= {-1.0, 0.0, 1.0}
            return values.astype(np.int8)
        codes, d = UNPACK[qtype](np.asarray(t.data).reshape(rows, -1))
        assert (d == 1.0).all()
        return codes

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.tensors[name].data)


def convert(
    src: Path, tmp_path: Path, name: str = "out.gguf", **kwargs: Any
) -> tuple[ConversionReport, Gguf]:
    out = tmp_path / name
    report = convert_checkpoint(src, out, progress=False, **kwargs)
    return report, Gguf(out)


def hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".probe", ".gguf")))


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The 2B4T layout: packed uint8 + weight_scale, AutoBitLinear offline, relu2, GQA, tied."""
    return make_checkpoint(tmp_path_factory.mktemp("packed") / "ckpt", seed=1)


# --- the 2B4T layout ---------------------------------------------------------------------------------


def test_packed_checkpoint_round_trips_exactly(packed: Any, tmp_path: Path) -> None:
    report, g = convert(packed.path, tmp_path)
    shape = TinyShape()
    assert g.value("general.architecture") == "bitnet"
    assert "output.weight" not in g.tensors  # tied head
    for i in range(shape.layers):
        for gguf_name, hf_name in LINEARS.items():
            w, hf_name_i = f"blk.{i}.{gguf_name}.weight", f"model.layers.{i}.{hf_name}.weight"
            assert g.type(w) == Q.TQ2_0
            np.testing.assert_array_equal(g.codes(w), packed.codes[hf_name_i])
            scale = g.array(f"blk.{i}.{gguf_name}.scale")
            assert scale.dtype == np.float32 and scale.shape == (1,)
            assert scale.tobytes() == np.float32(packed.scales[hf_name_i]).tobytes()  # bit-exact
    hf = hf_tensors(packed.path)
    np.testing.assert_array_equal(g.array("token_embd.weight"), hf["model.embed_tokens.weight"].numpy())
    assert g.type("token_embd.weight") == Q.F16
    for gguf_name, hf_name in [
        ("output_norm.weight", "model.norm.weight"),
        ("blk.1.attn_norm.weight", "model.layers.1.input_layernorm.weight"),
        ("blk.1.ffn_norm.weight", "model.layers.1.post_attention_layernorm.weight"),
        ("blk.1.attn_sub_norm.weight", "model.layers.1.self_attn.attn_sub_norm.weight"),
        ("blk.1.ffn_sub_norm.weight", "model.layers.1.mlp.ffn_sub_norm.weight"),
    ]:
        assert g.type(gguf_name) == Q.F32
        np.testing.assert_array_equal(g.array(gguf_name), hf[hf_name].numpy())
    assert len(g.tensors) == 2 + shape.layers * (4 + 2 * 7) == len(report.tensors)
    assert report.weight_source.startswith("packed uint8 + weight_scale (autobitlinear")


def test_metadata_matches_the_config(packed: Any, tmp_path: Path) -> None:
    _, g = convert(packed.path, tmp_path)
    shape = TinyShape()
    expected = {
        "bitnet.vocab_size": shape.vocab,
        "bitnet.context_length": shape.ctx,
        "bitnet.embedding_length": shape.hidden,
        "bitnet.block_count": shape.layers,
        "bitnet.feed_forward_length": shape.n_ff,
        "bitnet.attention.head_count": shape.heads,
        "bitnet.attention.head_count_kv": shape.kv_heads,
        "bitnet.rope.dimension_count": shape.hidden // shape.heads,
        "bitnet.hidden_activation": "relu2",
        "general.file_type": 37,  # LLAMA_FTYPE_MOSTLY_TQ2_0
    }
    for key, value in expected.items():
        assert g.value(key) == value, key
    assert g.value("bitnet.rope.freq_base") == 500000.0
    assert g.value("bitnet.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)


def test_tokenizer_is_carried_over(packed: Any, tmp_path: Path) -> None:
    _, g = convert(packed.path, tmp_path)
    tj = json.loads((packed.path / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    assert g.value("tokenizer.ggml.model") == "gpt2"
    assert g.value("tokenizer.ggml.pre") == "llama-bpe"
    tokens = g.value("tokenizer.ggml.tokens")
    assert len(tokens) == len(vocab) and all(tokens[i] == t for t, i in vocab.items())
    assert g.value("tokenizer.ggml.merges") == [
        " ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]
    ]
    types = g.value("tokenizer.ggml.token_type")
    assert types[0] == types[1] == TokenType.CONTROL and set(types[2:]) == {TokenType.NORMAL}
    assert tokens[g.value("tokenizer.ggml.bos_token_id")] == BOS
    assert tokens[g.value("tokenizer.ggml.eos_token_id")] == EOS
    assert g.value("tokenizer.ggml.add_bos_token") is True  # from tokenizer.json's TemplateProcessing
    assert g.value("tokenizer.chat_template") == CHAT_TEMPLATE


@pytest.mark.parametrize("activation", ["relu2", "silu"])
def test_activation_is_written(tmp_path: Path, activation: str) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", activation=activation, shape=TinyShape(layers=1))
    report, g = convert(ckpt.path, tmp_path)
    assert g.value("bitnet.hidden_activation") == activation == report.hidden_activation


def test_bitlinear_divides_by_weight_scale(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", linear_class="bitlinear", shape=TinyShape(layers=1))
    _, g = convert(ckpt.path, tmp_path)
    hf = hf_tensors(ckpt.path)
    for gguf_name, hf_name in LINEARS.items():
        ws = hf[f"model.layers.0.{hf_name}.weight_scale"].double().item()
        stored = g.array(f"blk.0.{gguf_name}.scale")[0]
        assert stored == np.float32(1.0 / ws) == ckpt.scales[f"model.layers.0.{hf_name}.weight"]
        assert abs(stored * ws - 1) < 1e-6 and abs(ws - 1) > 0.5  # reciprocal, not the raw value
        np.testing.assert_array_equal(
            g.codes(f"blk.0.{gguf_name}.weight"), ckpt.codes[f"model.layers.0.{hf_name}.weight"]
        )


def test_bf16_weight_scales_are_exact(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", scale_dtype=torch.bfloat16, shape=TinyShape(layers=1))
    _, g = convert(ckpt.path, tmp_path)
    hf = hf_tensors(ckpt.path)
    for gguf_name, hf_name in LINEARS.items():
        ws = hf[f"model.layers.0.{hf_name}.weight_scale"]
        assert ws.dtype == torch.bfloat16
        assert g.array(f"blk.0.{gguf_name}.scale")[0] == ws.float().item()


def test_unpacked_offline_weights(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", weights="unpacked", shape=TinyShape(layers=1))
    report, g = convert(ckpt.path, tmp_path)
    assert report.weight_source.startswith("unpacked F32 + weight_scale")
    for gguf_name, hf_name in LINEARS.items():
        name = f"model.layers.0.{hf_name}.weight"
        np.testing.assert_array_equal(g.codes(f"blk.0.{gguf_name}.weight"), ckpt.codes[name])
        assert g.array(f"blk.0.{gguf_name}.scale")[0] == ckpt.scales[name]


def test_master_weights_are_ternarized_like_transformers(tmp_path: Path) -> None:
    from transformers.integrations.bitnet import WeightQuant

    disable_torch_compile()
    ckpt = make_checkpoint(tmp_path / "ckpt", weights="master", seed=3, shape=TinyShape(layers=1))
    report, g = convert(ckpt.path, tmp_path)
    assert report.weight_source.startswith("F32 master weights")
    hf = hf_tensors(ckpt.path)
    for gguf_name, hf_name in LINEARS.items():
        w = hf[f"model.layers.0.{hf_name}.weight"]
        wq = WeightQuant.forward(None, w).numpy()  # transformers: round(W/s).clamp(-1,1) * s, s = mean|W|
        magnitude = np.abs(wq[wq != 0])
        assert np.unique(magnitude).size == 1
        codes = g.codes(f"blk.0.{gguf_name}.weight")
        np.testing.assert_array_equal(codes, np.sign(wq).astype(np.int8))
        scale = g.array(f"blk.0.{gguf_name}.scale")[0]
        # the same value up to float32 rounding of mean|W| (we accumulate in float64, torch in float32)
        assert abs(int(np.float32(scale).view(np.int32)) - int(np.float32(magnitude[0]).view(np.int32))) <= 2


@pytest.mark.parametrize(("outtype", "qtype"), [("tq1_0", Q.TQ1_0), ("f16", Q.F16), ("f32", Q.F32)])
def test_other_outtypes_hold_ternary_exactly(packed: Any, tmp_path: Path, outtype: str, qtype: Q) -> None:
    _, g = convert(packed.path, tmp_path, outtype=outtype)
    for gguf_name, hf_name in LINEARS.items():
        assert g.type(f"blk.0.{gguf_name}.weight") == qtype
        np.testing.assert_array_equal(
            g.codes(f"blk.0.{gguf_name}.weight"), packed.codes[f"model.layers.0.{hf_name}.weight"]
        )


@pytest.mark.parametrize(("head_type", "qtype"), [("q8_0", Q.Q8_0), ("q4_0", Q.Q4_0), ("f32", Q.F32)])
def test_head_types(packed: Any, tmp_path: Path, head_type: str, qtype: Q) -> None:
    _, g = convert(packed.path, tmp_path, head_type=head_type)
    emb = hf_tensors(packed.path)["model.embed_tokens.weight"].numpy()
    assert g.type("token_embd.weight") == qtype
    expected = emb if qtype == Q.F32 else quantize(emb, qtype)  # gguf-py's quantizers are ggml-exact
    np.testing.assert_array_equal(g.array("token_embd.weight").reshape(expected.shape), expected)


@pytest.mark.engine
@pytest.mark.parametrize("outtype", ["tq2_0", "tq1_0"])
def test_q6_k_head_by_the_engine_leaves_every_other_tensor_exact(
    packed: Any, tmp_path: Path, engine_build_dir: Path, outtype: str
) -> None:
    f16 = tmp_path / "f16.gguf"
    q6k = tmp_path / "q6k.gguf"
    convert_checkpoint(packed.path, f16, outtype=outtype, progress=False)
    report = convert_checkpoint(
        packed.path, q6k, outtype=outtype, head_type="q6_k", progress=False, build_dir=engine_build_dir
    )
    assert report.head_type == "q6_k" and report.file_bytes == q6k.stat().st_size
    a = {t.name: t for t in GGUFReader(str(f16), "r").tensors}
    b = {t.name: t for t in GGUFReader(str(q6k), "r").tensors}
    assert b["token_embd.weight"].tensor_type == Q.Q6_K
    assert a.keys() == b.keys()
    for name, t in a.items():
        if name != "token_embd.weight":
            assert b[name].tensor_type == t.tensor_type, name
            assert np.array_equal(
                np.asarray(b[name].data).view(np.uint8), np.asarray(t.data).view(np.uint8)
            ), name
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_q6_k_head_without_an_engine_says_how_to_build_one(packed: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    plan = convert_checkpoint(packed.path, out / "x.gguf", head_type="q6_k", dry_run=True)
    assert {t.type for t in plan.tensors if t.name == "token_embd.weight"} == {"Q6_K"}
    with pytest.raises(Exception, match="invoke build"):
        convert_checkpoint(packed.path, out / "x.gguf", head_type="q6_k", progress=False,
                           build_dir=tmp_path / "no-engine")  # fmt: skip
    assert leftovers(out) == []


def test_widths_not_multiple_of_256_fall_back_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # hidden 320 (% 32 == 0 -> Q8_0), n_ff 272 (% 32 != 0 -> F16), like 1bitLLM 3B's 3200 / 8640
    shape = TinyShape(hidden=320, n_ff=272, layers=2, heads=5, kv_heads=1)
    ckpt = make_checkpoint(tmp_path / "ckpt", shape=shape)
    with caplog.at_level(logging.WARNING, logger="bitnet.models.convert"):
        report, g = convert(ckpt.path, tmp_path)
    for i in range(2):
        for gguf_name, hf_name in LINEARS.items():
            expected = Q.F16 if gguf_name == "ffn_down" else Q.Q8_0  # ffn_down rows are n_ff long
            name = f"blk.{i}.{gguf_name}.weight"
            assert g.type(name) == expected
            np.testing.assert_array_equal(g.codes(name), ckpt.codes[f"model.layers.{i}.{hf_name}.weight"])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # one line per reason, not one per tensor
    assert any(
        "320 values are not a multiple of 256" in m and "12 tensors" in m and "Q8_0" in m for m in lines
    )
    assert any("272 values" in m and "F16" in m for m in lines)
    assert len(report.notes) == 14


# --- the other architectures -------------------------------------------------------------------------


def test_1bitllm_checkpoint(tmp_path: Path) -> None:
    from transformers.integrations.bitnet import WeightQuant

    disable_torch_compile()
    ckpt = make_1bitllm_checkpoint(tmp_path / "ckpt", seed=2)
    report, g = convert(ckpt.path, tmp_path)
    assert report.hf_architecture == "BitnetForCausalLM" and report.gguf_arch == "bitnet"
    assert g.value("bitnet.hidden_activation") == "silu"
    assert g.value("bitnet.attention.head_count_kv") == 4
    hf = hf_tensors(ckpt.path)
    np.testing.assert_array_equal(
        g.array("blk.0.attn_sub_norm.weight"), hf["model.layers.0.self_attn.inner_attn_ln.weight"].float()
    )
    np.testing.assert_array_equal(
        g.array("blk.0.ffn_sub_norm.weight"), hf["model.layers.0.mlp.ffn_layernorm.weight"].float()
    )
    w = hf["model.layers.0.mlp.up_proj.weight"]
    assert w.dtype == torch.float16
    np.testing.assert_array_equal(
        g.codes("blk.0.ffn_up.weight"), np.sign(WeightQuant.forward(None, w.float()).numpy())
    )
    # SentencePiece vocabulary: scores, byte tokens, the added <pad>, padding to vocab_size
    sp = ckpt.tokenizer
    assert g.value("tokenizer.ggml.model") == "llama" and not g.has("tokenizer.ggml.pre")
    tokens, types, scores = (g.value(f"tokenizer.ggml.{k}") for k in ("tokens", "token_type", "scores"))
    n_sp = sp.get_piece_size()
    assert tokens[:n_sp] == [sp.id_to_piece(i) for i in range(n_sp)]
    assert scores[10] == pytest.approx(sp.get_score(10))
    assert types[0] == TokenType.UNKNOWN and types[1] == TokenType.CONTROL and types[3] == TokenType.BYTE
    assert tokens[n_sp] == "<pad>" and types[n_sp] == TokenType.USER_DEFINED
    assert len(tokens) == 512 and types[-1] == TokenType.UNUSED
    assert (g.value("tokenizer.ggml.bos_token_id"), g.value("tokenizer.ggml.eos_token_id")) == (1, 2)
    assert g.value("tokenizer.ggml.padding_token_id") == n_sp


def test_llama_bitnet_checkpoint_is_written_as_llama(tmp_path: Path) -> None:
    ckpt = make_llama_checkpoint(tmp_path / "ckpt", seed=4)
    report, g = convert(ckpt.path, tmp_path)
    shape = TinyShape()
    assert g.value("general.architecture") == "llama" == report.gguf_arch
    assert not g.has("bitnet.hidden_activation") and not any("sub_norm" in n for n in g.tensors)
    assert g.value("llama.attention.head_count_kv") == shape.kv_heads
    head = hf_tensors(ckpt.path)["lm_head.weight"].numpy()
    np.testing.assert_array_equal(g.array("output.weight"), head)  # untied head kept
    # q/k rows: HF rotate-half order -> ggml NORM rope's interleaved pairs, per head
    hd = shape.hidden // shape.heads
    for gguf_name, n_heads in (("attn_q", shape.heads), ("attn_k", shape.kv_heads)):
        hf_codes = ckpt.codes[f"model.layers.0.self_attn.{gguf_name[-1]}_proj.weight"]
        order = [
            h * hd + half * hd // 2 + i for h in range(n_heads) for i in range(hd // 2) for half in (0, 1)
        ]
        np.testing.assert_array_equal(g.codes(f"blk.0.{gguf_name}.weight"), hf_codes[order])
    np.testing.assert_array_equal(
        g.codes("blk.0.attn_v.weight"), ckpt.codes["model.layers.0.self_attn.v_proj.weight"]
    )


def test_plain_llama_is_refused(tmp_path: Path) -> None:
    ckpt = make_llama_checkpoint(tmp_path / "ckpt")
    config = json.loads((ckpt.path / "config.json").read_text())
    del config["quantization_config"]
    (ckpt.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedCheckpointError, match="not a BitNet checkpoint"):
        convert_checkpoint(ckpt.path, tmp_path / "x.gguf")


def test_untied_head_on_bitnet_arch_is_refused(packed: Any, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in packed.path.iterdir():
        (ckpt / f.name).write_bytes(f.read_bytes())
    state = hf_tensors(ckpt)
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, str(ckpt / "model.safetensors"))
    config = json.loads((ckpt / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedCheckpointError, match="untied lm_head"):
        convert_checkpoint(ckpt, tmp_path / "x.gguf")


def test_registry_lists_the_architectures() -> None:
    assert {"BitNetForCausalLM", "BitnetForCausalLM", "LlamaForCausalLM"} <= set(registered_architectures())


def test_vocab_is_padded_to_the_embedding(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", shape=TinyShape(layers=1, vocab=520), tokenizer=False)
    from tinymodels import save_tokenizer

    save_tokenizer(ckpt.path, vocab_size=512)
    _, g = convert(ckpt.path, tmp_path)
    tokens, types = g.value("tokenizer.ggml.tokens"), g.value("tokenizer.ggml.token_type")
    assert len(tokens) == 520 and tokens[515] == "[PAD515]" and types[515] == TokenType.UNUSED


# --- dry run, streaming, atomic output ---------------------------------------------------------------


def test_dry_run_plans_without_writing(packed: Any, tmp_path: Path) -> None:
    out = tmp_path / "plan.gguf"
    plan = convert_checkpoint(packed.path, out, dry_run=True)
    assert not out.exists() and leftovers(tmp_path) == []
    assert plan.dry_run and plan.file_bytes == 0
    real, g = convert(packed.path, tmp_path)
    assert plan.tensors == real.tensors
    by_name = {t.name: t for t in plan.tensors}
    assert (
        by_name["blk.0.ffn_up.weight"].type == "TQ2_0" and by_name["blk.0.ffn_up.weight"].nbytes == 256 * 66
    )
    assert sum(int(t.n_bytes) for t in g.reader.tensors) == plan.tensor_bytes
    text = plan.format_plan()
    assert "blk.1.ffn_down.weight" in text and "TQ2_0" in text and f"{plan.tensor_bytes:,} bytes" in text


def test_tensors_are_streamed_one_at_a_time(tmp_path: Path) -> None:
    import gc
    import weakref

    from bitnet.models.formats.writer import Metadata, TensorSpec, write_gguf

    alive: list[weakref.ref[np.ndarray]] = []

    def make(i: int) -> Any:
        def produce() -> np.ndarray:
            gc.collect()
            assert all(r() is None for r in alive), "a previous tensor is still held in memory"
            arr = np.full((64, 256), i, dtype=np.float32)
            alive.append(weakref.ref(arr))
            return arr

        return produce

    specs = [TensorSpec(f"t{i}", (64, 256), Q.F32, make(i)) for i in range(5)]
    write_gguf(tmp_path / "s.gguf", "bitnet", Metadata(), specs, progress=False)
    g = Gguf(tmp_path / "s.gguf")
    assert [int(g.array(f"t{i}")[0, 0]) for i in range(5)] == list(range(5))


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    from bitnet.models.formats.writer import Metadata, TensorSpec, write_gguf

    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous version")

    def boom() -> np.ndarray:
        raise KeyboardInterrupt

    specs = [
        TensorSpec("a", (4,), Q.F32, lambda: np.zeros(4, np.float32)),
        TensorSpec("b", (4,), Q.F32, boom),
    ]
    with pytest.raises(KeyboardInterrupt):
        write_gguf(out, "bitnet", Metadata(), specs, progress=False)
    assert out.read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_written_file_has_normal_permissions(packed: Any, tmp_path: Path) -> None:
    convert(packed.path, tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out.gguf").stat().st_mode & 0o777 == 0o666 & ~mask


# --- bad inputs: typed errors, useful messages, nothing left behind ----------------------------------


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(ckpt: Path, **changes: Any) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (ckpt / "config.json").write_text(json.dumps(config))


def _expect_error(ckpt: Path, tmp_path: Path, error: type[Exception], *fragments: str) -> str:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    with pytest.raises(error) as info:
        convert_checkpoint(ckpt, out_dir / "model.gguf", progress=False)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, ValueError)
    assert leftovers(out_dir) == []
    return message


def test_missing_config_key(packed: Any, tmp_path: Path) -> None:
    ckpt = _copy(packed.path, tmp_path / "ckpt")
    _edit_config(ckpt, hidden_size=None)
    _expect_error(ckpt, tmp_path, MissingConfigKeyError, "'hidden_size'", "config.json", "re-download")


def test_missing_config_json(packed: Any, tmp_path: Path) -> None:
    ckpt = _copy(packed.path, tmp_path / "ckpt")
    (ckpt / "config.json").unlink()
    _expect_error(ckpt, tmp_path, ConversionError, "no config.json")


def test_unknown_architecture(packed: Any, tmp_path: Path) -> None:
    ckpt = _copy(packed.path, tmp_path / "ckpt")
    _edit_config(ckpt, architectures=["MistralForCausalLM"])
    _expect_error(ckpt, tmp_path, UnknownArchitectureError, "'MistralForCausalLM'", "BitNetForCausalLM")


def test_truncated_safetensors(packed: Any, tmp_path: Path) -> None:
    ckpt = _copy(packed.path, tmp_path / "ckpt")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) - 1000])
    _expect_error(
        ckpt, tmp_path, CorruptCheckpointError, "model.safetensors", "truncated", "download it again"
    )


@pytest.mark.parametrize("damage", ["garbage_header", "short_file", "huge_length"])
def test_corrupt_safetensors_header(packed: Any, tmp_path: Path, damage: str) -> None:
    ckpt = _copy(packed.path, tmp_path / "ckpt")
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "garbage_header":
        data[8:40] = b"\xff" * 32
    elif damage == "short_file":
        data = data[:5]
    else:
        data[:8] = struct.pack("<Q", 1 << 40)
    path.write_bytes(bytes(data))
    _expect_error(ckpt, tmp_path, CorruptCheckpointError, "model.safetensors", "damaged")


def test_wrong_dtype(packed: Any, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ckpt = _copy(packed.path, tmp_path / "ckpt")
    state = hf_tensors(ckpt)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros((256, 256), dtype=torch.int32)
    save_file(state, str(ckpt / "model.safetensors"))
    _expect_error(ckpt, tmp_path, CheckpointDtypeError, "model.layers.1.mlp.up_proj.weight", "I32", "uint8")


def test_corrupt_packed_values_fail_mid_write_and_keep_the_old_file(packed: Any, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ckpt = _copy(packed.path, tmp_path / "ckpt")
    state = hf_tensors(ckpt)
    state["model.layers.1.mlp.down_proj.weight"][3, 7] = 0xFF  # 2-bit code 3: not ternary
    save_file(state, str(ckpt / "model.safetensors"))
    out = tmp_path / "model.gguf"
    out.write_bytes(b"old")
    with pytest.raises(CorruptCheckpointError, match="down_proj.*code 3"):
        convert_checkpoint(ckpt, out, progress=False)
    assert out.read_bytes() == b"old" and leftovers(tmp_path) == ["model.gguf"]


def test_missing_tensor(packed: Any, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ckpt = _copy(packed.path, tmp_path / "ckpt")
    state = hf_tensors(ckpt)
    del state["model.layers.1.self_attn.attn_sub_norm.weight"]
    save_file(state, str(ckpt / "model.safetensors"))
    _expect_error(ckpt, tmp_path, CorruptCheckpointError, "attn_sub_norm", "incomplete")


def test_missing_tokenizer(packed: Any, tmp_path: Path) -> None:
    ckpt = _copy(packed.path, tmp_path / "ckpt")
    (ckpt / "tokenizer.json").unlink()
    _expect_error(ckpt, tmp_path, ConversionError, "neither tokenizer.json nor tokenizer.model")


def test_unknown_pre_tokenizer(packed: Any, tmp_path: Path) -> None:
    ckpt = _copy(packed.path, tmp_path / "ckpt")
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\s+"
    (ckpt / "tokenizer.json").write_text(json.dumps(tj))
    _expect_error(ckpt, tmp_path, TokenizerError, "unrecognised pre-tokenizer", "llama-bpe")


def test_read_only_output_directory(packed: Any, tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root ignores directory permissions; sysfs refuses new files even to root
        target = Path("/sys/bitnet-test.gguf")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "model.gguf"
    with pytest.raises(OutputNotWritableError, match="cannot create files in .*choose a writable --outfile"):
        convert_checkpoint(packed.path, target, progress=False)
    assert not target.exists()


def test_missing_output_directory(packed: Any, tmp_path: Path) -> None:
    with pytest.raises(OutputNotWritableError, match="does not exist.*mkdir -p"):
        convert_checkpoint(packed.path, tmp_path / "nope" / "model.gguf")


def test_full_disk_leaves_no_partial_file(packed: Any, tmp_path: Path) -> None:
    # A file-size limit makes write() fail with EFBIG exactly as a full disk fails with ENOSPC.
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    script = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
from bitnet.models.convert import convert_checkpoint
from bitnet.errors import OutputNotWritableError
try:
    convert_checkpoint({str(packed.path)!r}, {str(out_dir / "model.gguf")!r}, progress=False)
except OutputNotWritableError as exc:
    print("ERROR:", exc)
    sys.exit(3)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert "no partial file was left" in proc.stdout and "Free disk space" in proc.stdout
    assert leftovers(out_dir) == []


def test_bad_outtype(packed: Any, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="tq2_0, tq1_0"):
        convert_checkpoint(packed.path, tmp_path / "x.gguf", outtype="q4_k")


def test_gguf_input_goes_to_the_i2s_importer(tmp_path: Path) -> None:
    from bitnet.models.synthetic import write_dummy_model

    src = tmp_path / "not-i2s.gguf"
    write_dummy_model("tiny", src, progress=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ConversionError, match="bitnet-b1.58|I2_S"):
        convert_checkpoint(src, out_dir / "x.gguf", progress=False)
    assert leftovers(out_dir) == []


def test_llama_head_dim_other_than_hidden_over_heads_writes_key_lengths() -> None:
    from bitnet.models.convert.base import HParams, add_model_metadata
    from bitnet.models.formats.writer import Metadata

    hp = HParams(512, 3072, 8192, 2, 8, 4, 256, 4096, 1000042.0, 1e-6, "silu", False)  # 8 x 256 != 3072
    md = Metadata()
    add_model_metadata(md, "llama", hp, "x", Q.TQ2_0)
    assert md.get("llama.attention.key_length") == md.get("llama.attention.value_length") == 256
    assert md.get("llama.rope.dimension_count") == 256 and "bitnet.hidden_activation" not in md
