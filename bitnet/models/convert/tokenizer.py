"""Tokenizer → GGUF vocabulary: byte-level BPE from tokenizer.json, SentencePiece from tokenizer.model.

GGUF keys written (ref: gguf-py constants `Keys.Tokenizer`; llama.cpp src/llama-vocab.cpp reads them):
tokenizer.ggml.model ("gpt2" = byte-level BPE, "llama" = SentencePiece), tokenizer.ggml.pre (BPE
pre-tokenizer name; llama.cpp picks its split regex by this name), tokens, token_type, scores (SPM),
merges (BPE), bos/eos/unknown/padding ids, add_bos_token / add_eos_token, tokenizer.chat_template.

Token types (gguf TokenType): 1 normal, 2 unknown, 3 control (special added tokens), 4 user-defined
(non-special added tokens), 5 unused (padding up to the embedding's row count), 6 byte (SPM <0xNN>).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFValueType, TokenType

from bitnet.errors import MissingCheckpointFileError, TokenizerError
from bitnet.models.formats.writer import Metadata

logger = logging.getLogger(__name__)

__all__ = ["LLAMA3_SPLIT_REGEX", "GGUFVocab", "load_vocab", "vocab_from_tokenizer_json"]

# Llama-3's pre-tokenizer split regex, as it appears in its tokenizer.json (Split, behavior Isolated).
# llama.cpp: tokenizer.ggml.pre "llama-bpe" -> LLAMA_VOCAB_PRE_TYPE_LLAMA3, which applies this regex
# (rewritten without the (?i:...) group) and `ignore_merges` (a word found whole in the vocab is one token).
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# GPT-2's regex (ByteLevel pre-tokenizer with use_regex=True): llama.cpp pre "gpt-2".
_PRE_BY_REGEX = {LLAMA3_SPLIT_REGEX: "llama-bpe"}


@dataclass
class GGUFVocab:
    """A tokenizer in GGUF terms (see the module docstring for the keys)."""

    model: str
    pre: str | None
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unknown, padding
    add_bos: bool | None = None
    add_eos: bool | None = None
    chat_template: str | None = None

    def pad_to(self, n_vocab: int) -> None:
        """Append unused placeholder tokens up to `n_vocab` (the embedding's rows); error if over."""
        if len(self.tokens) > n_vocab:
            raise TokenizerError(
                f"the tokenizer has {len(self.tokens)} tokens but the model's embedding has only "
                f"{n_vocab} rows: "
                "the tokenizer files belong to another model"
            )
        for i in range(len(self.tokens), n_vocab):
            self.tokens.append(f"[PAD{i}]")
            self.token_types.append(TokenType.UNUSED)
            if self.scores is not None:
                self.scores.append(-1000.0)

    def add_to(self, md: Metadata) -> None:
        """Write the tokenizer keys into `md`."""
        md.string("tokenizer.ggml.model", self.model)
        if self.pre is not None:
            md.string("tokenizer.ggml.pre", self.pre)
        md.array("tokenizer.ggml.tokens", self.tokens, GGUFValueType.STRING)
        md.array("tokenizer.ggml.token_type", [int(t) for t in self.token_types], GGUFValueType.INT32)
        if self.scores is not None:
            md.array("tokenizer.ggml.scores", self.scores, GGUFValueType.FLOAT32)
        if self.merges:
            md.array("tokenizer.ggml.merges", self.merges, GGUFValueType.STRING)
        for kind in ("bos", "eos", "unknown", "padding"):
            if kind in self.special_ids:
                md.u32(f"tokenizer.ggml.{kind}_token_id", self.special_ids[kind])
        if self.add_bos is not None:
            md.boolean("tokenizer.ggml.add_bos_token", self.add_bos)
        if self.add_eos is not None:
            md.boolean("tokenizer.ggml.add_eos_token", self.add_eos)
        if self.chat_template:
            md.string("tokenizer.chat_template", self.chat_template)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(
            f"{path} is unreadable or not JSON ({exc}): re-download the tokenizer files"
        ) from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _chat_template(model_dir: Path, tok_config: dict[str, Any]) -> str | None:
    tmpl = tok_config.get("chat_template")
    if isinstance(tmpl, list):  # [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
        tmpl = named.get("default") or next(iter(named.values()), None)
    if isinstance(tmpl, str):
        return tmpl
    jinja = model_dir / "chat_template.jinja"  # transformers >= 4.43 saves it as its own file
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else None


def _special_ids(
    token_to_id: dict[str, int], tok_config: dict[str, Any], config: dict[str, Any], defaults: dict[str, int]
) -> dict[str, int]:
    ids = dict(defaults)
    for kind, cfg_key, tok_key in (
        ("bos", "bos_token_id", "bos_token"),
        ("eos", "eos_token_id", "eos_token"),
        ("padding", "pad_token_id", "pad_token"),
        ("unknown", None, "unk_token"),
    ):
        value = config.get(cfg_key) if cfg_key else None
        if isinstance(value, list):  # e.g. eos_token_id: [128001, 128009]
            value = value[0] if value else None
        if isinstance(value, int):
            ids[kind] = value
        text = _token_text(tok_config.get(tok_key))
        if text is not None and text in token_to_id:  # tokenizer_config wins, as in transformers
            ids[kind] = token_to_id[text]
    return ids


def _template_adds(post: Any) -> tuple[bool, bool] | None:
    """(adds a special first token, adds a special last token) from a TemplateProcessing post-processor."""
    if not isinstance(post, dict):
        return None
    if post.get("type") == "Sequence":
        for sub in post.get("processors", []):
            found = _template_adds(sub)
            if found is not None:
                return found
        return None
    if post.get("type") != "TemplateProcessing":
        return None
    single = post.get("single", [])
    first = single[0].get("SpecialToken") if single and isinstance(single[0], dict) else None
    last = single[-1].get("SpecialToken") if single and isinstance(single[-1], dict) else None
    return first is not None, last is not None


def vocab_from_tokenizer_json(
    tj: dict[str, Any],
    tok_config: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    *,
    source: str = "tokenizer.json",
    chat_template: str | None = None,
) -> GGUFVocab:
    """A byte-level BPE tokenizer.json (parsed) as a GGUF vocabulary ("gpt2" model).

    `tok_config` (tokenizer_config.json) and `config` (config.json) supply special tokens and
    add_bos/add_eos when the tokenizer.json's post-processor does not.
    """
    tok_config, config = tok_config or {}, config or {}
    model = tj.get("model") or {}
    vocab: dict[str, int] = model.get("vocab") or {}
    if not vocab:
        raise TokenizerError(f"{source} has an empty BPE vocabulary")
    pre = _bpe_pre_name(tj.get("pre_tokenizer"), source)
    added = {int(t["id"]): t for t in tj.get("added_tokens", []) if isinstance(t, dict) and "id" in t}
    n = max(max(vocab.values()), max(added, default=-1)) + 1
    tokens: list[str | None] = [None] * n
    types = [int(TokenType.NORMAL)] * n
    for text, idx in vocab.items():
        tokens[idx] = text
    for idx, tok in added.items():
        tokens[idx] = str(tok["content"])
        types[idx] = int(TokenType.CONTROL if tok.get("special") else TokenType.USER_DEFINED)
    for idx, maybe in enumerate(tokens):
        if maybe is None:
            tokens[idx] = f"[PAD{idx}]"
            types[idx] = int(TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    token_to_id = {t: i for i, t in enumerate(tokens) if t is not None}
    ids = _special_ids(token_to_id, tok_config, config, {})
    adds = _template_adds(tj.get("post_processor"))
    add_bos = tok_config.get("add_bos_token", adds[0] if adds else None)
    add_eos = tok_config.get("add_eos_token", adds[1] if adds else None)
    return GGUFVocab(
        model="gpt2",
        pre=pre,
        tokens=[t or "" for t in tokens],
        token_types=types,
        merges=merges,
        special_ids=ids,
        add_bos=bool(add_bos) if add_bos is not None else None,
        add_eos=bool(add_eos) if add_eos is not None else None,
        chat_template=chat_template,
    )


def _bpe_pre_name(pre_tok: Any, source: str) -> str:
    """Map tokenizer.json's pre_tokenizer to llama.cpp's pre-tokenizer name."""
    parts = (
        pre_tok.get("pretokenizers", [])
        if isinstance(pre_tok, dict) and pre_tok.get("type") == "Sequence"
        else [pre_tok]
    )
    regexes = [
        p["pattern"].get("Regex")
        for p in parts
        if isinstance(p, dict) and p.get("type") == "Split" and isinstance(p.get("pattern"), dict)
    ]
    byte_level = [p for p in parts if isinstance(p, dict) and p.get("type") == "ByteLevel"]
    if not byte_level:
        raise TokenizerError(
            f"{source}: BPE without a ByteLevel pre-tokenizer is not a GPT-2/Llama-3 style "
            "tokenizer; provide a SentencePiece tokenizer.model instead"
        )
    if len(regexes) == 1 and regexes[0] in _PRE_BY_REGEX:
        return _PRE_BY_REGEX[regexes[0]]
    if not regexes and byte_level[0].get("use_regex", True):
        return "gpt-2"
    raise TokenizerError(
        f"{source}: unrecognised pre-tokenizer split {regexes!r}. The engine selects its split "
        "regex by name and we know only Llama-3's ('llama-bpe') and GPT-2's ('gpt-2'); converting with a "
        "wrong one would silently tokenize differently. Please report this tokenizer."
    )


def _spm_vocab(model_dir: Path, tok_config: dict[str, Any], config: dict[str, Any]) -> GGUFVocab:
    try:
        import sentencepiece as spm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TokenizerError(
            "reading tokenizer.model needs the sentencepiece package: pip install sentencepiece"
        ) from exc
    path = model_dir / "tokenizer.model"
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise TokenizerError(f"{path} is not a SentencePiece model ({exc}): re-download it") from exc
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(int(TokenType.UNKNOWN))
        elif sp.is_control(i):
            types.append(int(TokenType.CONTROL))
        elif sp.is_unused(i):
            types.append(int(TokenType.UNUSED))
        elif sp.is_byte(i):
            types.append(int(TokenType.BYTE))
        else:  # the Python API cannot tell USER_DEFINED pieces from normal ones
            types.append(int(TokenType.NORMAL))
    added: dict[str, int] = {}
    if (model_dir / "added_tokens.json").is_file():
        added.update({str(k): int(v) for k, v in _read_json(model_dir / "added_tokens.json").items()})
    if (model_dir / "tokenizer.json").is_file():
        for t in _read_json(model_dir / "tokenizer.json").get("added_tokens", []):
            added.setdefault(str(t["content"]), int(t["id"]))
    for text, idx in sorted(added.items(), key=lambda kv: kv[1]):
        if idx < len(tokens):
            continue  # an SP piece re-declared as added token
        if idx != len(tokens):
            raise TokenizerError(f"added token {text!r} has id {idx}, leaving a gap after {len(tokens) - 1}")
        tokens.append(text)
        scores.append(-1000.0)
        types.append(int(TokenType.USER_DEFINED))
    defaults = {
        k: v for k, v in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unknown", sp.unk_id())) if v >= 0
    }
    if sp.pad_id() >= 0:
        defaults["padding"] = sp.pad_id()
    ids = _special_ids({t: i for i, t in enumerate(tokens)}, tok_config, config, defaults)
    return GGUFVocab(
        model="llama",
        pre=None,
        tokens=tokens,
        token_types=types,
        scores=scores,
        special_ids=ids,
        add_bos=bool(tok_config.get("add_bos_token", True)),  # LlamaTokenizer's defaults
        add_eos=bool(tok_config.get("add_eos_token", False)),
        chat_template=_chat_template(model_dir, tok_config),
    )


def _is_byte_level(tj: dict[str, Any]) -> bool:
    pre = tj.get("pre_tokenizer")
    parts = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    return any(isinstance(p, dict) and p.get("type") == "ByteLevel" for p in parts)


def load_vocab(model_dir: Path, config: dict[str, Any]) -> GGUFVocab:
    """Read the checkpoint's tokenizer: tokenizer.json (byte-level BPE) or tokenizer.model (SentencePiece)."""
    tok_config = (
        _read_json(model_dir / "tokenizer_config.json")
        if (model_dir / "tokenizer_config.json").is_file()
        else {}
    )
    tj_path = model_dir / "tokenizer.json"
    tj = _read_json(tj_path) if tj_path.is_file() else None
    if tj is not None and (tj.get("model") or {}).get("type") == "BPE" and _is_byte_level(tj):
        return vocab_from_tokenizer_json(
            tj, tok_config, config, source=str(tj_path), chat_template=_chat_template(model_dir, tok_config)
        )
    if (model_dir / "tokenizer.model").is_file():
        return _spm_vocab(model_dir, tok_config, config)
    if tj is not None:
        raise TokenizerError(
            f"{tj_path}: tokenizer model type {(tj.get('model') or {}).get('type')!r} is not supported "
            "(supported: byte-level BPE in tokenizer.json, SentencePiece in tokenizer.model)"
        )
    raise MissingCheckpointFileError(
        f"{model_dir} has neither tokenizer.json nor tokenizer.model: "
        "download the tokenizer files with the weights"
    )
