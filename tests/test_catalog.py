"""The model catalogue (models/catalog.toml) and its loader bitnet.models.catalog."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from bitnet.errors import CatalogError, UnknownModelError
from bitnet.models.catalog import (
    CATALOG_PATH,
    ModelEntry,
    format_bytes,
    format_catalog,
    format_count,
    get_model,
    load_catalog,
    parse_catalog,
)

REQUIRED = {
    # name: (repo, source, hidden_act)
    "2B": ("microsoft/bitnet-b1.58-2B-4T", "packed", "relu2"),
    "2B-bf16": ("microsoft/bitnet-b1.58-2B-4T-bf16", "master", "relu2"),
    "2B-gguf": ("microsoft/bitnet-b1.58-2B-4T-gguf", "i2s_gguf", "relu2"),
    "large": ("1bitLLM/bitnet_b1_58-large", "master", "silu"),
    "3B": ("1bitLLM/bitnet_b1_58-3B", "master", "silu"),
    "8B": ("HF1BitLLM/Llama3-8B-1.58-100B-tokens", "packed", "silu"),
    "falcon3-1B": ("tiiuae/Falcon3-1B-Instruct-1.58bit", "packed", "silu"),
    "falcon3-3B": ("tiiuae/Falcon3-3B-Instruct-1.58bit", "packed", "silu"),
    "falcon3-7B": ("tiiuae/Falcon3-7B-Instruct-1.58bit", "packed", "silu"),
    "falcon3-10B": ("tiiuae/Falcon3-10B-Instruct-1.58bit", "packed", "silu"),
    "falcon-e-1B": ("tiiuae/Falcon-E-1B-Instruct", "packed", "silu"),
    "falcon-e-3B": ("tiiuae/Falcon-E-3B-Instruct", "packed", "silu"),
}


def test_shipped_catalogue_has_the_required_models() -> None:
    catalog = load_catalog()
    for name, (repo, source, act) in REQUIRED.items():
        e = catalog[name]
        assert (e.repo, e.source, e.hidden_act) == (repo, source, act), name
        assert e.allow_patterns and e.download_bytes > 0 and e.params, name
    gguf = catalog["2B-gguf"]
    assert gguf.allow_patterns == ("ggml-model-i2_s.gguf",)
    assert gguf.expected_sha256("ggml-model-i2_s.gguf") is not None
    for name in ("2B", "2B-bf16", "large", "3B", "8B"):
        patterns = catalog[name].allow_patterns
        assert "config.json" in patterns and "*.safetensors" in patterns, name
    assert "tokenizer.model" in catalog["large"].allow_patterns  # SentencePiece


def test_revisions_are_pinned_or_flagged() -> None:
    """A revision is a 40-hex commit, or a branch whose entry says in a comment that it is not pinned."""
    text = CATALOG_PATH.read_text()
    blocks = dict(re.findall(r'^\[models\.("?[^\]"]+"?)\]\n(.*?)(?=^\[|\Z)', text, flags=re.M | re.S))
    for entry in load_catalog().values():
        if entry.is_synthetic:
            assert entry.revision is None
            continue
        if not entry.is_pinned:
            block = blocks.get(entry.name) or blocks[f'"{entry.name}"']
            assert "NOT PINNED" in block, (
                f"{entry.name}: unpinned revision {entry.revision!r} without a comment"
            )
    assert load_catalog()["2B"].is_pinned and load_catalog()["2B-gguf"].is_pinned


def test_synthetic_entries_match_bitnet_dummy() -> None:
    from bitnet.models.synthetic import SIZES

    synthetic = {e.dummy_size or "": e for e in load_catalog().values() if e.is_synthetic}
    assert set(synthetic) == set(SIZES)
    assert synthetic["tiny"].name == "tiny" and synthetic["2B"].name == "dummy-2B"
    for size, e in synthetic.items():
        s = SIZES[size]
        kv = s.n_embd // s.n_head * s.n_head_kv
        per_layer = s.n_embd * (2 * s.n_embd + 2 * kv) + 3 * s.n_embd * s.n_ff + 3 * s.n_embd + s.n_ff
        params = s.n_vocab * s.n_embd + s.n_layer * per_layer + s.n_embd
        assert e.params is not None and abs(e.params - params) / params < 0.01, size
        assert e.hidden_act == s.activation and e.repo is None and e.download_bytes == 0


def test_get_model_lookups() -> None:
    assert get_model("2B").repo == "microsoft/bitnet-b1.58-2B-4T"
    assert get_model("2b-BF16").name == "2B-bf16"  # case-insensitive
    assert get_model("microsoft/bitnet-b1.58-2B-4T-gguf").name == "2B-gguf"  # by repo id
    with pytest.raises(UnknownModelError) as info:
        get_model("falcon3-7")
    msg = str(info.value)
    assert "Did you mean 'falcon3-7B'" in msg
    assert "Known models: 2B, 2B-bf16" in msg and "tiny" in msg
    assert info.value.suggestions[0] == "falcon3-7B"
    with pytest.raises(UnknownModelError) as info:
        get_model("zzzz")
    assert "Did you mean" not in str(info.value) and info.value.suggestions == ()


def test_format_catalog_table() -> None:
    table = format_catalog()
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "REPO", "FORMAT", "PARAMS", "DOWNLOAD", "REVISION"]
    rows = {line.split()[0]: line for line in lines[2:] if line and not line.startswith("*")}
    assert set(rows) == set(load_catalog())
    assert rows["2B-gguf"].split()[1:] == [
        "microsoft/bitnet-b1.58-2B-4T-gguf",
        "i2s_gguf",
        "2.41B",
        "1.19",
        "GB",
        "a1f2f1c765",
    ]
    assert rows["2B-bf16"].split()[-1] == "main*"
    assert rows["large"].split()[-1] == "85d047191d"  # pinned: the first 10 hex digits
    assert "(local, bitnet.models.synthetic)" in rows["tiny"] and "synthetic" in rows["tiny"]
    assert lines[-1].startswith("* not pinned")
    # only what is passed is listed; no footnote without unpinned entries
    one = format_catalog([get_model("2B")])
    assert len(one.splitlines()) == 3 and "not pinned" not in one


@pytest.mark.parametrize(
    ("n", "text"),
    [(2_410_000_000, "2.41B"), (729_000_000, "729M"), (10_300_000_000, "10.3B"), (950, "950"), (None, "-")],
)
def test_format_count(n: int | None, text: str) -> None:
    assert format_count(n) == text


@pytest.mark.parametrize(
    ("n", "text"), [(1_187_801_280, "1.19 GB"), (650_000_000, "650 MB"), (0, "-"), (512, "512 B")]
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


# ---------------------------------------------------------------------------------------------------
# Validation


def _hub_entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "source": "packed",
        "repo": "org/model",
        "revision": "a" * 40,
        "architecture": "BitNetForCausalLM",
        "allow_patterns": ["*.safetensors", "config.json"],
        "download_bytes": 10,
        "params": 10,
        "hidden_act": "relu2",
    }
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


def _parse(**models: dict[str, Any]) -> dict[str, ModelEntry]:
    return parse_catalog({"schema_version": 1, "models": models}, path=Path("cat.toml"))


def test_valid_entry_parses() -> None:
    e = _parse(m=_hub_entry(sha256={"config.json": "b" * 64}))["m"]
    assert e == ModelEntry(
        name="m",
        source="packed",
        architecture="BitNetForCausalLM",
        hidden_act="relu2",
        repo="org/model",
        revision="a" * 40,
        allow_patterns=("*.safetensors", "config.json"),
        download_bytes=10,
        params=10,
        sha256=(("config.json", "b" * 64),),
    )
    assert e.is_pinned and not e.is_synthetic
    assert not _parse(m=_hub_entry(revision="main"))["m"].is_pinned


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (_hub_entry(allow_pattern=["x"]), r"\[models.m\]: unknown field\(s\) allow_pattern"),
        (_hub_entry(repo=None), "missing required field 'repo'"),
        (_hub_entry(repo="just-a-name"), "repo must look like 'owner/name'"),
        (_hub_entry(source="safetensors"), "source must be one of packed, master, i2s_gguf, synthetic"),
        (_hub_entry(hidden_act="gelu"), "hidden_act must be one of relu2, silu"),
        (_hub_entry(allow_patterns=[]), "allow_patterns must be a non-empty list"),
        (_hub_entry(download_bytes="1 GB"), "field 'download_bytes' must be an integer"),
        (_hub_entry(params=True), "field 'params' must be an integer"),
        (_hub_entry(revision=" "), "revision must not be empty"),
        (_hub_entry(sha256={"config.json": "xyz"}), "must be 64 lowercase hex digits"),
        (_hub_entry(sha256={"model.gguf": "b" * 64}), "allow_patterns never downloads"),
        (
            {
                "source": "synthetic",
                "dummy_size": "tiny",
                "architecture": "bitnet",
                "hidden_act": "relu2",
                "repo": "o/r",
            },
            "unknown field\\(s\\) repo for source 'synthetic'",
        ),
        (
            {"source": "synthetic", "architecture": "bitnet", "hidden_act": "relu2"},
            "missing required field 'dummy_size'",
        ),
    ],
)
def test_invalid_entries_are_rejected(entry: dict[str, Any], match: str) -> None:
    with pytest.raises(CatalogError, match=match) as info:
        _parse(m=entry)
    assert str(info.value).startswith("cat.toml")


def test_invalid_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="schema_version must be 1"):
        parse_catalog({"schema_version": 2, "models": {"m": _hub_entry()}})
    with pytest.raises(CatalogError, match="unknown top-level key"):
        parse_catalog({"schema_version": 1, "models": {"m": _hub_entry()}, "model": {}})
    with pytest.raises(CatalogError, match="only in case"):
        _parse(m=_hub_entry(), M=_hub_entry())
    bad = tmp_path / "bad.toml"
    bad.write_text("schema_version = 1\n[models.x\n")
    with pytest.raises(CatalogError, match="not valid TOML"):
        load_catalog(bad)
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "missing.toml")


def test_load_catalog_rereads_an_edited_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'schema_version = 1\n[models.a]\nsource = "synthetic"\ndummy_size = "tiny"\n'
        'architecture = "bitnet"\nhidden_act = "relu2"\n'
    )
    assert list(load_catalog(path)) == ["a"]
    text = path.read_text().replace("[models.a]", "[models.b]")
    path.write_text(text)
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9, path.stat().st_mtime_ns + 10**9))
    assert list(load_catalog(path)) == ["b"]
