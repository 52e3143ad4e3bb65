"""The reference check: our engine against transformers' BitNet forward pass on one checkpoint.

    from bitnet.bench.numerics import check_reference, format_report
    report = check_reference("models/2B/hf")            # converts to a temporary GGUF if none is given
    print(format_report(report)); assert report.passed

What is compared. transformers defines BitNet b1.58 (`BitNetForCausalLM` with the BitNet linear layers
that `replace_with_bitnet_linear` puts in from the checkpoint's `quantization_config`: ternary weights
with a per-tensor scale, every linear input quantized to int8 per token). For each prompt the reference
runs greedily for `n_new` tokens; along that same path (teacher forcing) the engine is asked, position
by position, for its next-token distribution (llama-server `/completion` with ``n_probs``; the first
position is the whole prompt in one batch, so the prefill GEMM runs; the next ones extend the cached
prompt by one token, so the decode GEMV runs). Per position: both top tokens, the reference's top-1/top-2
gap, KL(reference ‖ engine) and max |Δ log p| over the tokens the engine reported.

Engine settings: f32 KV cache and flash attention off (``EXACT_ENGINE_ARGS``), so that the only
differences left are the int8 activation rounding (which must agree) and float summation order. With
``exact=False`` the engine's defaults run (f16 KV cache): expect larger KL (each f16 K/V rounding can
move an int8 rounding of a later layer's input by one quantum).

The reference is loaded in float32 (bf16 checkpoint tensors widen exactly), so an f32 or bf16 head in
the GGUF computes the same head as the reference; an f16 head rounds the embedding (and q8_0/q4_0 more).
torch and transformers are needed (the `dev` extra); they are imported only when a check runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet.engine.contract import ACT_QUANT_ENV, KERNELS_ENV
from bitnet.errors import NumericsCheckError

__all__ = [
    "DEFAULT_PROMPTS",
    "EXACT_ENGINE_ARGS",
    "CheckReport",
    "PositionResult",
    "check_reference",
    "compare_logprobs",
    "engine_logprobs",
    "format_report",
    "format_summary",
    "MODES",
    "reference_greedy",
    "reference_model",
]

log = logging.getLogger(__name__)

EXACT_ENGINE_ARGS = ("-fa", "off", "-ctk", "f32", "-ctv", "f32")
DEFAULT_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    ",
    # long enough (~250-350 tokens with a Llama-3 or a small BPE vocabulary) that the prompt is one
    # batch of many columns: the engine's GEMM tiles run, not only the one-token GEMV
    "A ternary language model stores each weight as minus one, zero or plus one, with one scale per "
    "matrix. Multiplying by such a matrix needs no multiplications at all, only additions and "
    "subtractions of the input values, which is why these models run well on ordinary processors. "
    "The inputs of every linear layer are rounded to eight-bit integers as well: each token's vector "
    "is divided by its largest absolute value, multiplied by one hundred and twenty-seven, and rounded "
    "to the nearest integer. An engine that rounds in blocks of two hundred and fifty-six values "
    "instead computes a slightly different function, and the difference shows in the probabilities "
    "it assigns to the next token. To check an engine, run the reference implementation and the "
    "engine on the same text, position by position, and compare the two distributions with the "
    "Kullback-Leibler divergence. Agreement of the most likely token matters most where the reference "
    "is confident; where its two best candidates are nearly tied, either choice is acceptable. In "
    "the end, the reader wants to know one thing: does the engine compute the model as it was trained?",
)
# Thresholds of a passing check (exact settings): mean KL per position, and top-token agreement
# wherever the reference is decisive (top-1/top-2 log-prob gap at least DECISIVE_GAP nats).
DEFAULT_MAX_MEAN_KL = 0.002
DECISIVE_GAP = 0.3
# Full distributions up to this vocabulary size; above it the engine reports its top FULL_VOCAB_LIMIT
# tokens (a 128k-entry JSON per position is slow) and KL is taken over those tokens plus one bucket for
# the rest of the probability mass (a lower bound of the full KL; the report says which).
FULL_VOCAB_LIMIT = 4096
_SUPPORTED = ("BitNetForCausalLM", "LlamaForCausalLM")


@dataclass(frozen=True)
class PositionResult:
    """One compared position: the distribution over the token after `prompt + path[:step]`."""

    prompt: int
    step: int
    ref_top: int
    engine_top: int
    ref_gap: float  # reference top-1 minus top-2 log-prob, nats
    kl: float  # KL(reference || engine), nats
    max_abs_dlogp: float  # over the tokens the engine reported

    @property
    def decisive(self) -> bool:
        return self.ref_gap >= DECISIVE_GAP


@dataclass
class CheckReport:
    """What `check_reference` measured, and whether it passes its thresholds."""

    model_dir: Path
    gguf: Path
    positions: list[PositionResult] = field(default_factory=list)
    full_vocab: bool = True
    max_mean_kl: float = DEFAULT_MAX_MEAN_KL
    settings: str = "exact"
    mode: str = "per_token"
    head_type: str = "given"

    @property
    def mean_kl(self) -> float:
        return float(np.mean([p.kl for p in self.positions])) if self.positions else math.nan

    @property
    def max_kl(self) -> float:
        return max((p.kl for p in self.positions), default=math.nan)

    @property
    def max_abs_dlogp(self) -> float:
        return max((p.max_abs_dlogp for p in self.positions), default=math.nan)

    @property
    def top_agree(self) -> int:
        return sum(p.ref_top == p.engine_top for p in self.positions)

    @property
    def decisive_mismatches(self) -> list[PositionResult]:
        return [p for p in self.positions if p.decisive and p.ref_top != p.engine_top]

    @property
    def passed(self) -> bool:
        return bool(self.positions) and self.mean_kl <= self.max_mean_kl and not self.decisive_mismatches


# --- the reference ------------------------------------------------------------------------------------


def _require_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise NumericsCheckError(
            f"the reference check needs torch and transformers ({exc.name} is not installed): "
            "`pip install -e '.[dev]'` (or `pip install torch==2.13.0 transformers`)"
        ) from None
    import torch._dynamo

    # transformers' BitNet helpers are @torch.compile'd: run them eagerly (no C++ toolchain, fast start)
    torch._dynamo.config.disable = True
    return torch


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise NumericsCheckError(f"{path} not found: pass the directory of a Hugging Face checkpoint")
    config: dict[str, Any] = json.loads(path.read_text())
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in _SUPPORTED:
        raise NumericsCheckError(
            f"{path}: architecture {arch!r} has no reference implementation in transformers that this check "
            f"can load (supported: {', '.join(_SUPPORTED)}); 1bitLLM's BitnetForCausalLM needs its own "
            "remote code, which this check does not run"
        )
    if not list(model_dir.glob("*.safetensors")):
        raise NumericsCheckError(f"{model_dir}: no *.safetensors weights found")
    return config


def reference_model(model_dir: str | Path, activation: str | None = None) -> Any:
    """transformers' model for a BitNet checkpoint, in float32, with its BitNet linear layers.

    Built the way transformers' BitNet quantizer builds it (`replace_with_bitnet_linear` with the
    checkpoint's quantization_config: AutoBitLinear offline = weights unpacked by `unpack_weights`, output
    times weight_scale; AutoBitLinear online = `WeightQuant` on master weights; BitLinear = packed buffer,
    output divided by weight_scale); activations int8 per token in every case. `activation` overrides
    hidden_act (tests use it to tell relu² from SiLU).
    """
    torch = _require_torch()
    from safetensors.torch import load_file
    from transformers import BitNetConfig, BitNetForCausalLM, LlamaConfig, LlamaForCausalLM
    from transformers.integrations.bitnet import replace_with_bitnet_linear, unpack_weights
    from transformers.utils.quantization_config import BitNetQuantConfig

    model_dir = Path(model_dir)
    raw = dict(_read_config(model_dir))
    arch = raw.pop("architectures")[0]
    qc = raw.pop("quantization_config", None)
    if not qc or qc.get("quant_method") != "bitnet":
        raise NumericsCheckError(f"{model_dir}/config.json has no bitnet quantization_config")
    for key in ("transformers_version", "model_type", "torch_dtype", "dtype", "auto_map"):
        raw.pop(key, None)
    if activation is not None:
        raw["hidden_act"] = activation
    model: Any
    if arch == "BitNetForCausalLM":
        model = BitNetForCausalLM(BitNetConfig(**raw))
    else:
        model = LlamaForCausalLM(LlamaConfig(**raw))
    linear_class = qc.get("linear_class", "bitlinear")
    quant = BitNetQuantConfig(
        linear_class=linear_class, quantization_mode=qc.get("quantization_mode", "offline")
    )
    replace_with_bitnet_linear(model, modules_to_not_convert=["lm_head"], quantization_config=quant)
    state: dict[str, Any] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    for name, tensor in list(state.items()):
        if tensor.dtype == torch.uint8 and linear_class == "autobitlinear":
            state[name] = unpack_weights(tensor, dtype=torch.float32)  # what BitNetDeserialize does
        elif tensor.is_floating_point() and tensor.dtype != torch.float32:
            state[name] = tensor.float()  # bf16/fp16 widen exactly
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or not set(missing) <= {"lm_head.weight"}:
        raise NumericsCheckError(
            f"{model_dir}: the weights do not match the config (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    if "lm_head.weight" in missing:
        model.tie_weights()
    model.eval()
    return model


def reference_greedy(model: Any, prompt_ids: Sequence[int], n_new: int) -> tuple[list[int], npt.NDArray[Any]]:
    """Greedy continuation and each step's logits (n_new, vocab), recomputing the whole sequence per
    step (no KV cache: the reference is then exactly the model's forward pass)."""
    torch = _require_torch()
    ids = list(prompt_ids)
    logits = []
    with torch.no_grad():
        for _ in range(n_new):
            out = model(torch.tensor([ids])).logits[0, -1].float()
            logits.append(out.numpy().copy())
            ids.append(int(out.argmax()))
    return ids[len(prompt_ids) :], np.stack(logits)


# --- the engine ---------------------------------------------------------------------------------------


def _post(url: str, body: dict[str, Any], timeout: float = 600) -> Any:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace")[:500]
        raise NumericsCheckError(f"llama-server answered {exc.code} to {url}: {detail}") from None


def engine_logprobs(
    base_url: str, prompt_ids: Sequence[int], path: Sequence[int], vocab: int, n_probs: int | None = None
) -> npt.NDArray[np.float64]:
    """Next-token log-probabilities from a running llama-server along `prompt + path`, teacher-forced:
    row i is the distribution after `prompt + path[:i]` (len(path) rows, `vocab` columns; NaN where the
    engine did not report a token). The raw model distribution: softmax of the logits before any sampler.
    """
    n_probs = min(vocab, FULL_VOCAB_LIMIT) if n_probs is None else n_probs
    rows = np.full((len(path), vocab), np.nan)
    for i in range(len(path)):
        body = {
            "prompt": [*prompt_ids, *path[:i]],
            "n_predict": 1,
            "temperature": 0,
            "n_probs": n_probs,
            "cache_prompt": True,  # the first request prefills the prompt; the others decode one token
            "post_sampling_probs": False,
            "return_tokens": True,
        }
        reply = _post(f"{base_url}/completion", body)
        steps = reply.get("completion_probabilities") or []
        if not steps:
            raise NumericsCheckError(
                f"llama-server returned no probabilities at step {i}: {str(reply)[:300]}"
            )
        for entry in steps[0]["top_logprobs"]:
            rows[i, int(entry["id"])] = float(entry["logprob"])
    return rows


def _log_softmax(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def compare_logprobs(
    ref_logits: npt.NDArray[Any], engine: npt.NDArray[np.float64], prompt: int = 0
) -> list[PositionResult]:
    """Per position: top tokens, the reference's gap, KL(ref || engine), max |Δ log p| (see module doc).

    Where the engine reported only some tokens, the rest of its probability mass is one bucket, matched
    with the reference's mass on the same tokens (a lower bound of the full KL)."""
    ref = _log_softmax(ref_logits)
    out = []
    for step, (r, e) in enumerate(zip(ref, engine, strict=True)):
        known = ~np.isnan(e)
        ordered = np.sort(r)
        pr = np.exp(r[known])
        kl = float(np.sum(pr * (r[known] - e[known])))
        rest_ref = max(0.0, 1.0 - float(pr.sum()))
        rest_eng = max(1e-300, 1.0 - float(np.exp(e[known]).sum()))
        if not known.all() and rest_ref > 0:
            kl += rest_ref * (math.log(rest_ref) - math.log(rest_eng))
        out.append(
            PositionResult(
                prompt=prompt,
                step=step,
                ref_top=int(np.argmax(r)),
                engine_top=int(np.nanargmax(e)),
                ref_gap=float(ordered[-1] - ordered[-2]),
                kl=max(kl, 0.0),
                max_abs_dlogp=float(np.abs(r[known] - e[known]).max()),
            )
        )
    return out


# --- the whole check ----------------------------------------------------------------------------------


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise NumericsCheckError(f"{model_dir}: cannot load its tokenizer ({exc})") from None


# What each engine mode sets in its environment (patch 0006, BITNET_KERNELS): `per_token` runs the
# file's own key (our converter writes per_token); `stock` is ggml's own kernels (always per block).
MODES: dict[str, dict[str, str]] = {
    "per_token": {ACT_QUANT_ENV: "per_token"},
    "per_block": {ACT_QUANT_ENV: "per_block"},
    "stock": {KERNELS_ENV: "0"},
}


def check_reference(
    model_dir: str | Path,
    gguf: str | Path | None = None,
    *,
    prompts: Sequence[str] | Sequence[Sequence[int]] = DEFAULT_PROMPTS,
    n_new: int = 16,
    head_types: Sequence[str] = ("f32",),
    modes: Sequence[str] = ("per_token",),
    outtype: str = "tq2_0",
    exact: bool = True,
    max_mean_kl: float = DEFAULT_MAX_MEAN_KL,
    build_dir: str | Path = "build",
    threads: int | None = None,
    env: dict[str, str] | None = None,
) -> list[CheckReport]:
    """Run transformers and our engine on `model_dir` (a Hugging Face BitNet checkpoint) and compare.

    One `CheckReport` per (head type, mode), the reference run once for all of them.

    Args:
        gguf: our GGUF of that checkpoint; None converts one per head type into a temporary directory
            (`outtype`; head f32 by default, so the head adds no rounding of its own). With a GGUF given,
            `head_types` is ignored.
        prompts: texts (tokenized with the checkpoint's tokenizer, BOS as it adds it) or token id lists.
        n_new: positions compared per prompt (the reference's greedy continuation).
        modes: "per_token" (BitNet's definition, what our converter's files run), "per_block" (ggml's
            q8_K in our kernels), "stock" (ggml's own kernels).
        exact: f32 KV cache and flash attention off (see module doc); False runs the engine's defaults.
        max_mean_kl: the pass threshold on mean KL (nats per position).
        env: extra environment for the engine (e.g. ``{"GGML_CPU_VARIANT": "avx2"}``).

    Raises:
        NumericsCheckError: no torch/transformers, no config.json or weights, unsupported architecture,
            an unknown mode, a missing --gguf file.
    """
    from bitnet.models.convert import convert_checkpoint
    from bitnet.runtime.runtime import BitNetRuntime
    from bitnet.runtime.server import serve

    model_dir = Path(model_dir)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise NumericsCheckError(f"unknown mode(s) {bad}: choose from {', '.join(MODES)}")
    _require_torch()
    _read_config(model_dir)
    if gguf is not None and not Path(gguf).is_file():
        raise NumericsCheckError(f"GGUF {gguf} does not exist: pass an existing file or leave --gguf out")
    model = reference_model(model_dir)
    tokenizer: Any = _tokenizer(model_dir) if any(isinstance(p, str) for p in prompts) else None
    token_prompts = [
        list(tokenizer(p)["input_ids"]) if isinstance(p, str) else [int(t) for t in p] for p in prompts
    ]
    vocab = int(model.config.vocab_size)
    n_ctx = int(getattr(model.config, "max_position_embeddings", 0) or 4096)
    if n_new >= n_ctx:
        raise NumericsCheckError(f"n_new {n_new} must be below the model's context ({n_ctx} tokens)")
    # a prompt longer than the model's context is cut (the engine refuses it; the reference would run
    # positions the model was never trained for)
    token_prompts = [ids[: n_ctx - n_new] for ids in token_prompts]
    refs = [reference_greedy(model, ids, n_new) for ids in token_prompts]
    ctx = min(n_ctx, max(256, max(len(p) for p in token_prompts) + n_new + 8))
    settings = "exact (f32 KV cache, flash attention off)" if exact else "engine defaults"
    extra = [*(EXACT_ENGINE_ARGS if exact else ()), "--no-warmup"]
    reports: list[CheckReport] = []
    with tempfile.TemporaryDirectory(prefix="bitnet-check-") as tmp:
        files: list[tuple[str, Path]] = []
        if gguf is not None:
            files.append(("given", Path(gguf)))
        else:
            for head_type in head_types:
                out = Path(tmp) / f"model-{outtype}-{head_type}.gguf"
                log.info("converting %s -> %s", model_dir, out)
                convert_checkpoint(model_dir, out, outtype=outtype, head_type=head_type, progress=False)
                files.append((head_type, out))
        for head_type, path in files:
            for mode in modes:
                runtime = BitNetRuntime(build_dir=build_dir, env={**os.environ, **(env or {}), **MODES[mode]})
                report = CheckReport(
                    model_dir=model_dir,
                    gguf=path,
                    full_vocab=vocab <= FULL_VOCAB_LIMIT,
                    max_mean_kl=max_mean_kl,
                    settings=settings,
                    mode=mode,
                    head_type=head_type,
                )
                with serve(
                    path,
                    runtime=runtime,
                    ctx_size=ctx,
                    threads=threads,
                    parallel=1,
                    extra_args=extra,
                    ready_timeout=600,
                ) as server:
                    for i, (ids, (ref_path, ref_logits)) in enumerate(zip(token_prompts, refs, strict=True)):
                        eng = engine_logprobs(server.url, ids, ref_path, vocab)
                        report.positions += compare_logprobs(ref_logits, eng, prompt=i)
                reports.append(report)
    return reports


def format_summary(reports: Sequence[CheckReport]) -> str:
    """One row per (head, mode): mean and max KL, max |dlog p|, top-token agreement."""
    kl = "KL" if all(r.full_vocab for r in reports) else "KL (top-k bound)"
    lines = [
        f"{'head':>6} {'mode':>10} {'mean ' + kl:>18} {'max KL':>9} {'max|dlogp|':>10} {'top equal':>10} "
        f"{'decisive diff':>13}  result"
    ]
    for r in reports:
        lines.append(
            f"{r.head_type:>6} {r.mode:>10} {r.mean_kl:18.6f} {r.max_kl:9.5f} {r.max_abs_dlogp:10.4f} "
            f"{f'{r.top_agree}/{len(r.positions)}':>10} {len(r.decisive_mismatches):>13}  "
            f"{'PASS' if r.passed else 'FAIL'}"
        )
    return "\n".join(lines)


def format_report(report: CheckReport, tokenizer: Any = None) -> str:
    """The per-position table and the summary line, as `invoke check` prints them."""

    def tok(i: int) -> str:
        if tokenizer is None:
            return str(i)
        return repr(tokenizer.decode([i]))[:14]

    lines = [
        f"reference check: {report.model_dir} vs {report.gguf} ({report.settings}, mode {report.mode})",
        f"{'prompt':>6} {'pos':>4} {'transformers':>14} {'engine':>14} {'gap':>7} {'KL':>9} "
        f"{'max|dlogp|':>10}",
    ]
    for p in report.positions:
        mark = (
            "" if p.ref_top == p.engine_top else ("  <- differs (decisive)" if p.decisive else "  <- differs")
        )
        lines.append(
            f"{p.prompt:>6} {p.step:>4} {tok(p.ref_top):>14} {tok(p.engine_top):>14} {p.ref_gap:7.3f} "
            f"{p.kl:9.6f} {p.max_abs_dlogp:10.5f}{mark}"
        )
    kl_kind = (
        "KL" if report.full_vocab else f"KL over the engine's top {FULL_VOCAB_LIMIT} + rest (lower bound)"
    )
    lines.append(
        f"{len(report.positions)} positions: mean {kl_kind} {report.mean_kl:.6f} nats "
        f"(max {report.max_kl:.6f}, threshold {report.max_mean_kl}), "
        f"max |dlog p| {report.max_abs_dlogp:.5f}, top token equal at "
        f"{report.top_agree}/{len(report.positions)}, decisive mismatches (gap >= {DECISIVE_GAP}): "
        f"{len(report.decisive_mismatches)} -> {'PASS' if report.passed else 'FAIL'}"
    )
    return "\n".join(lines)
