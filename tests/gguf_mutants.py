"""Damaged variants ("mutants") of a valid GGUF file, for tests/test_gguf_mutants.py.

`layout` walks a GGUF (v3, little-endian) and records where each field sits; `make_mutants` derives a
deterministic (seeded) corpus from it: truncations, byte flips in the header, absurd counts, sizes and
lengths, odd hyper-parameters, bad UTF-8 and NaN/inf in float tensors. Each mutant is the whole file's
bytes; hyper-parameter mutants rewrite one key/value (the tensor data and infos are kept, re-padded).
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass, field

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_SCALAR = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<B",
    10: "<Q",
    11: "<q",
    12: "<d",
}
STRING, ARRAY, UINT32, INT32, FLOAT32, UINT8 = 8, 9, 4, 5, 6, 0


@dataclass
class KV:
    key: str
    start: int  # the key's length field
    type_at: int  # the value type field
    value_at: int  # the value (a string's length field; an array's element type)
    end: int
    vtype: int
    sub: int | None = None
    value: object = None
    elements: list[int] = field(default_factory=list)  # offsets of a string array's length fields


@dataclass
class TensorField:
    name: str
    start: int
    n_dims_at: int
    ne_at: list[int]
    type_at: int
    offset_at: int
    end: int
    ne: tuple[int, ...]
    type_id: int
    offset: int


@dataclass
class Layout:
    data: bytes
    kvs: dict[str, KV]
    tensors: dict[str, TensorField]
    header_end: int  # end of the tensor infos
    data_start: int
    alignment: int


def layout(data: bytes) -> Layout:
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        return data[pos - n : pos].decode()

    kvs: dict[str, KV] = {}
    for _ in range(n_kv):
        start = pos
        key = string()
        type_at = pos
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        kv = KV(key, start, type_at, pos, 0, vtype)
        if vtype == STRING:
            kv.value = string()
        elif vtype == ARRAY:
            sub, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            kv.sub = sub
            if sub == STRING:
                for _ in range(count):
                    kv.elements.append(pos)
                    string()
            else:
                pos += count * struct.calcsize(_SCALAR[sub])
            kv.value = count
        else:
            (kv.value,) = struct.unpack_from(_SCALAR[vtype], data, pos)
            pos += struct.calcsize(_SCALAR[vtype])
        kv.end = pos
        kvs[key] = kv
    tensors: dict[str, TensorField] = {}
    for _ in range(n_tensors):
        start = pos
        name = string()
        n_dims_at = pos
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        ne_at = [pos + 8 * i for i in range(n_dims)]
        ne = struct.unpack_from(f"<{n_dims}Q", data, pos)
        pos += 8 * n_dims
        type_id, offset = struct.unpack_from("<IQ", data, pos)
        tensors[name] = TensorField(
            name, start, n_dims_at, ne_at, pos, pos + 4, pos + 12, ne, type_id, offset
        )
        pos += 12
    alignment = int(kvs["general.alignment"].value) if "general.alignment" in kvs else 32  # type: ignore[call-overload]
    return Layout(data, kvs, tensors, pos, -(-pos // alignment) * alignment, alignment)


@dataclass(frozen=True)
class Mutant:
    name: str
    group: str  # truncate | flip | count | hparam | utf8 | values
    data: bytes
    must_refuse: bool = False  # the pre-check has to refuse it (the engine aborts, hangs or runs garbage)


def _put(data: bytes, at: int, fmt: str, value: object) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, at, value)
    return bytes(b)


def _enc_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _enc_value(vtype: int, value: object) -> bytes:
    if vtype == STRING:
        return _enc_string(value if isinstance(value, bytes) else str(value).encode())
    return struct.pack(_SCALAR[vtype], value)


def with_kv(
    lay: Layout, key: str, vtype: int | None, value: object = None, *, raw_key: bytes | None = None
) -> bytes:
    """The file with `key` set to (vtype, value) (added if missing; deleted when vtype is None).

    `value` of an ARRAY is ``(sub_type, [items])``. The tensor infos and data are kept; the data section
    is re-padded to the alignment after the new header."""
    d = lay.data
    parts: list[bytes] = []
    n_kv = 0
    found = False
    for kv in lay.kvs.values():
        if kv.key != key:
            parts.append(d[kv.start : kv.end])
            n_kv += 1
            continue
        found = True
        if vtype is not None:
            parts.append(_encode_kv(raw_key or key.encode(), vtype, value))
            n_kv += 1
    if not found and vtype is not None:
        parts.append(_encode_kv(raw_key or key.encode(), vtype, value))
        n_kv += 1
    first_tensor = min((t.start for t in lay.tensors.values()), default=lay.header_end)
    head = d[:16] + struct.pack("<Q", n_kv) + b"".join(parts) + d[first_tensor : lay.header_end]
    head += b"\0" * (-len(head) % lay.alignment)
    return head + d[lay.data_start :]


def _encode_kv(key: bytes, vtype: int, value: object) -> bytes:
    out = _enc_string(key) + struct.pack("<I", vtype)
    if vtype != ARRAY:
        return out + _enc_value(vtype, value)
    sub, items = value  # type: ignore[misc]
    return out + struct.pack("<IQ", sub, len(items)) + b"".join(_enc_value(sub, v) for v in items)


def hyperparameter_mutants(lay: Layout) -> list[Mutant]:
    """Each odd hyper-parameter that made the engine abort, hang or print garbage, plus siblings."""
    arch = str(lay.kvs["general.architecture"].value)
    a = f"{arch}."
    nan, inf = float("nan"), float("inf")
    cases: list[tuple[str, str, int | None, object]] = [
        ("block_count=0", a + "block_count", UINT32, 0),
        ("block_count=huge", a + "block_count", UINT32, 100_000),
        ("block_count=2^32-1", a + "block_count", UINT32, 0xFFFFFFFF),
        ("block_count missing", a + "block_count", None, None),
        ("block_count=string", a + "block_count", STRING, "8"),
        ("rope_dim=0", a + "rope.dimension_count", UINT32, 0),
        ("rope_dim=odd", a + "rope.dimension_count", UINT32, 63),
        ("rope_dim>head_dim", a + "rope.dimension_count", UINT32, 128),
        ("rope_dim=huge", a + "rope.dimension_count", UINT32, 1 << 30),
        ("rms_eps=nan", a + "attention.layer_norm_rms_epsilon", FLOAT32, nan),
        ("rms_eps=-1", a + "attention.layer_norm_rms_epsilon", FLOAT32, -1.0),
        ("rms_eps=0", a + "attention.layer_norm_rms_epsilon", FLOAT32, 0.0),
        ("rms_eps=inf", a + "attention.layer_norm_rms_epsilon", FLOAT32, inf),
        ("rms_eps=2", a + "attention.layer_norm_rms_epsilon", FLOAT32, 2.0),
        ("rope_base=nan", a + "rope.freq_base", FLOAT32, nan),
        ("rope_base=inf", a + "rope.freq_base", FLOAT32, inf),
        ("rope_base=0", a + "rope.freq_base", FLOAT32, 0.0),
        ("rope_base=-1", a + "rope.freq_base", FLOAT32, -10000.0),
        ("embedding_length=0", a + "embedding_length", UINT32, 0),
        ("embedding_length=255", a + "embedding_length", UINT32, 255),
        ("embedding_length=huge", a + "embedding_length", UINT32, 1 << 30),
        ("head_count=0", a + "attention.head_count", UINT32, 0),
        ("head_count=3", a + "attention.head_count", UINT32, 3),
        ("head_count_kv=0", a + "attention.head_count_kv", UINT32, 0),
        ("head_count_kv=3", a + "attention.head_count_kv", UINT32, 3),
        ("context_length=0", a + "context_length", UINT32, 0),
        ("feed_forward_length=huge", a + "feed_forward_length", UINT32, 1 << 30),
        ("vocab_size=n-1", a + "vocab_size", UINT32, 4095),
        ("architecture missing", "general.architecture", None, None),
        ("architecture=empty", "general.architecture", STRING, ""),
        ("tokenizer=none", "tokenizer.ggml.model", STRING, "none"),
        ("tokenizer=no_vocab", "tokenizer.ggml.model", STRING, "no_vocab"),
        ("tokenizer=unknown", "tokenizer.ggml.model", STRING, "sentencepiece-ish"),
        ("tokenizer missing", "tokenizer.ggml.model", None, None),
        ("tokens missing", "tokenizer.ggml.tokens", None, None),
        ("token_type short", "tokenizer.ggml.token_type", ARRAY, (INT32, [1] * 10)),
        ("bos=n_vocab", "tokenizer.ggml.bos_token_id", UINT32, 4096),
        ("bos=2^32-1", "tokenizer.ggml.bos_token_id", UINT32, 0xFFFFFFFF),
        ("eos=huge", "tokenizer.ggml.eos_token_id", UINT32, 1 << 20),
        ("eos=-1", "tokenizer.ggml.eos_token_id", INT32, -1),
        ("chat_template=int", "tokenizer.chat_template", UINT32, 7),
        ("chat_template=array", "tokenizer.chat_template", ARRAY, (STRING, [b"{{ x }}"])),
        ("alignment=3", "general.alignment", UINT32, 3),
        ("alignment=0", "general.alignment", UINT32, 0),
    ]
    out = [Mutant(f"hparam {name}", "hparam", with_kv(lay, key, vt, v), True) for name, key, vt, v in cases]
    # Templates the engine cannot parse. Whether the pre-check refuses them is not asserted (it checks only
    # that the template is a string); the engine must not abort on them in -no-cnv mode (patch 0008).
    for i, template in enumerate(["{% if %}", "{{ messages[0]['content'] ", "{% for x in %}{% endfor %}",
                                  "{% endif %}", "{{ (((( }}"]):  # fmt: skip
        out.append(Mutant(f"chat_template bad jinja {i}", "template", with_kv(lay, "tokenizer.chat_template",
                                                                              STRING, template)))  # fmt: skip
    return out


def utf8_mutants(lay: Layout) -> list[Mutant]:
    bad = b"\xff\xfe\xc3("
    tokens = lay.kvs["tokenizer.ggml.tokens"]
    out = [
        Mutant(
            "utf8 key", "utf8", with_kv(lay, "general.name", STRING, "x", raw_key=b"general.na\xffme"), True
        ),
        Mutant("utf8 general.name", "utf8", with_kv(lay, "general.name", STRING, b"dummy" + bad), True),
        Mutant(
            "utf8 chat_template",
            "utf8",
            with_kv(lay, "tokenizer.chat_template", STRING, b"{{ x }}" + bad),
            True,
        ),
        Mutant(
            "utf8 architecture", "utf8", with_kv(lay, "general.architecture", STRING, b"bit\xffnet"), True
        ),
    ]
    for i in (5, 100, len(tokens.elements) - 1):  # overwrite a token's first byte with 0xff (same length)
        at = tokens.elements[i] + 8
        out.append(Mutant(f"utf8 token {i}", "utf8", _put(lay.data, at, "<B", 0xFF), True))
    name = next(iter(lay.tensors.values()))
    out.append(Mutant("utf8 tensor name", "utf8", _put(lay.data, name.start + 8, "<B", 0xFF), True))
    return out


def count_mutants(lay: Layout) -> list[Mutant]:
    """Absurd counts, sizes, lengths, types and offsets in place (the file keeps its size)."""
    d = lay.data
    huge = [1 << 63, 1 << 40, 1 << 32, 0xFFFFFFFFFFFFFFFF]
    out: list[Mutant] = []

    def add(name: str, at: int, fmt: str, value: int) -> None:
        out.append(Mutant(f"count {name}={value:#x}", "count", _put(d, at, fmt, value), True))

    n_tensors, n_kv = struct.unpack_from("<QQ", d, 8)
    for v in [*huge, n_tensors + 1, n_tensors * 1000]:
        add("n_tensors", 8, "<Q", v)
    for v in [*huge, n_kv + 1, n_kv * 1000]:
        add("n_kv", 16, "<Q", v)
    add("version", 4, "<I", 1)
    add("version", 4, "<I", 4)
    add("version", 4, "<I", 0x03000000)
    kvs = lay.kvs
    tokens, merges = kvs["tokenizer.ggml.tokens"], kvs["tokenizer.ggml.merges"]
    ttype = kvs["tokenizer.ggml.token_type"]
    for kv in (tokens, merges, ttype):
        for v in [*huge, 1 << 28, int(kv.value) + 1]:  # type: ignore[call-overload]
            add(f"{kv.key} count", kv.value_at + 4, "<Q", v)
        add(f"{kv.key} element type", kv.value_at, "<I", 13)
        add(f"{kv.key} element type", kv.value_at, "<I", ARRAY)
    for key in ("general.architecture", "tokenizer.chat_template", "tokenizer.ggml.pre"):
        kv = kvs[key]
        for v in [*huge, 1 << 24, 1 << 30, len(lay.data)]:
            add(f"{key} length", kv.value_at, "<Q", v)
        for v in [1 << 63, 1 << 20, 70000]:
            add(f"{key} key length", kv.start, "<Q", v)
        add(f"{key} value type", kv.type_at, "<I", 13)
        add(f"{key} value type", kv.type_at, "<I", 0xFFFFFFFF)
    for i in (0, len(tokens.elements) // 2, len(tokens.elements) - 1):
        for v in [1 << 63, 1 << 33, 1 << 20]:
            add(f"token {i} length", tokens.elements[i], "<Q", v)
    names = list(lay.tensors)
    for name in (names[0], names[1], names[len(names) // 2], names[-1]):
        t = lay.tensors[name]
        for v in [1 << 63, 1 << 20, 64]:
            add(f"{name} name length", t.start, "<Q", v)
        for v in [0, 5, 0xFFFFFFFF]:
            add(f"{name} n_dims", t.n_dims_at, "<I", v)
        for v in [0, 0xFFFFFFFFFFFFFFFF, 1 << 40]:
            add(f"{name} ne0", t.ne_at[0], "<Q", v)
        for v in [t.ne[0] * 2, t.ne[0] + 1]:  # may still fit (alignment padding): the engine's shape check
            out.append(Mutant(f"count {name} ne0={v:#x}", "count", _put(d, t.ne_at[0], "<Q", v)))
        for v in [36, 99, 0xFFFFFFFF, 31]:
            add(f"{name} type", t.type_at, "<I", v)
        for v in [t.offset + 1, t.offset + lay.alignment, 1 << 60, len(d)]:
            add(f"{name} offset", t.offset_at, "<Q", v)
    return out


def truncation_mutants(lay: Layout, rng: random.Random, n: int) -> list[Mutant]:
    """Cuts anywhere before the end of the last tensor's data (cutting the padding after it is harmless)."""
    last = max(lay.tensors.values(), key=lambda t: t.offset)
    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(last.type_id)]
    data_end = lay.data_start + last.offset + math.prod(last.ne) // block * block_bytes
    cuts = {0, 3, 4, 8, 16, 23, 24, 25, lay.header_end, lay.data_start, data_end - 1, data_end - 4}
    cuts |= {kv.start + 3 for kv in list(lay.kvs.values())[:8]}
    cuts |= {rng.randrange(24, lay.data_start) for _ in range(n // 2)}
    while len(cuts) < n:
        cuts.add(rng.randrange(lay.data_start, data_end))
    return [Mutant(f"truncate {c}", "truncate", lay.data[:c], True) for c in sorted(cuts)]


def flip_mutants(lay: Layout, rng: random.Random, n: int) -> list[Mutant]:
    """Random single-byte changes in the header region (any of the KV and tensor-info bytes)."""
    out = []
    for _ in range(n):
        at = rng.randrange(4, lay.header_end)
        b = bytearray(lay.data)
        b[at] ^= rng.randrange(1, 256)
        out.append(Mutant(f"flip {at}", "flip", bytes(b)))
    return out


def value_mutants(lay: Layout) -> list[Mutant]:
    """NaN/inf written into the float tensors (embedding, norms, per-tensor scales)."""
    out = []
    picks = [
        ("token_embd.weight", 0),
        ("token_embd.weight", 12345),
        ("output_norm.weight", 7),
        ("blk.0.attn_norm.weight", 0),
        ("blk.3.ffn_sub_norm.weight", 100),
        ("blk.5.attn_q.scale", 0),
    ]
    nan, inf = float("nan"), float("inf")
    for name, element in picks:
        t = lay.tensors[name]
        fmt = "<e" if t.type_id == 1 else "<f"  # F16 or F32
        at = lay.data_start + t.offset + element * struct.calcsize(fmt)
        out.append(Mutant(f"values {name}[{element}]=nan", "values", _put(lay.data, at, fmt, nan), True))
        out.append(Mutant(f"values {name}[{element}]=inf", "values", _put(lay.data, at, fmt, inf), True))
    return out


def make_mutants(
    data: bytes, *, seed: int = 1234, n_truncations: int = 60, n_flips: int = 150
) -> list[Mutant]:
    lay = layout(data)
    rng = random.Random(seed)
    return [
        *truncation_mutants(lay, rng, n_truncations),
        *flip_mutants(lay, rng, n_flips),
        *count_mutants(lay),
        *hyperparameter_mutants(lay),
        *utf8_mutants(lay),
        *value_mutants(lay),
    ]
