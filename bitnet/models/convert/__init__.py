"""Hugging Face BitNet checkpoint → GGUF (arch "bitnet" or "llama", ternary TQ2_0/TQ1_0 weights).

    from bitnet.models.convert import convert_checkpoint
    report = convert_checkpoint("models/2B/hf", "models/2B/model.gguf", outtype="tq2_0", head_type="f16")

One module per architecture registers itself (`bitnet_2b4t`, `bitnet_1bitllm`, `llama_bitnet`); a
`.gguf` input (the official I2_S file) goes to `bitnet.models.convert.i2s.import_i2s_gguf`. The output is
written atomically and streamed tensor by tensor; every failure raises a `ConversionError` subclass
and leaves no partial file.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitnet.errors import ConversionError, MissingCheckpointFileError, UnsupportedCheckpointError
from bitnet.models.convert import bitnet_1bitllm, bitnet_2b4t, llama_bitnet  # noqa: F401  (registration)
from bitnet.models.convert.base import HEAD_TYPES, OUT_TYPES, converter_for, registered_architectures
from bitnet.models.convert.checkpoint import Checkpoint, load_config
from bitnet.models.convert.requantize import ENGINE_HEAD_TYPES, HEAD_TENSORS, requantize_head
from bitnet.models.convert.tokenizer import load_vocab
from bitnet.models.formats.writer import Metadata, TensorSpec, check_output_writable, write_gguf

logger = logging.getLogger(__name__)

__all__ = [
    "HEAD_TYPES",
    "OUT_TYPES",
    "ConversionReport",
    "PlannedTensor",
    "convert_checkpoint",
    "registered_architectures",
]


@dataclass(frozen=True)
class PlannedTensor:
    """One line of the tensor plan: what is (or would be) written."""

    name: str
    shape: tuple[int, ...]  # numpy order: (rows, row length)
    type: str  # GGML type name, e.g. "TQ2_0"
    nbytes: int


@dataclass
class ConversionReport:
    """What a conversion did (or, with dry_run, would do)."""

    source: Path
    outfile: Path
    dry_run: bool
    hf_architecture: str
    gguf_arch: str
    outtype: str
    head_type: str
    hidden_activation: str | None
    weight_source: str  # e.g. "packed uint8 + weight_scale (autobitlinear: y * weight_scale)"
    tokenizer: str  # e.g. "gpt2/llama-bpe, 128256 tokens"
    tensors: list[PlannedTensor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # fallback types, ignored tensors
    metadata: dict[str, Any] = field(default_factory=dict)  # scalar GGUF keys (arrays summarised)
    file_bytes: int = 0  # size of the written file (0 for a dry run)
    seconds: float = 0.0

    @property
    def tensor_bytes(self) -> int:
        """Sum of the tensors' data sizes."""
        return sum(t.nbytes for t in self.tensors)

    def format_plan(self) -> str:
        """The tensor plan as an aligned text table (what `--dry-run` prints)."""
        width = max((len(t.name) for t in self.tensors), default=4)
        lines = [f"{'name':<{width}}  {'shape':>16}  {'type':<6}  {'bytes':>12}"]
        for t in self.tensors:
            lines.append(
                f"{t.name:<{width}}  {'x'.join(map(str, t.shape)):>16}  {t.type:<6}  {t.nbytes:>12,}"
            )
        lines.append(f"{len(self.tensors)} tensors, {self.tensor_bytes:,} bytes of tensor data")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _weight_source(conv: Any) -> str:
    first = "model.layers.0.self_attn.q_proj.weight"
    info = conv.ckpt.info(first)
    if info.dtype == "U8" or f"{first[:-6]}weight_scale" in conv.ckpt:
        rule = (
            "y * weight_scale"
            if conv.quant and conv.quant.linear_class == "autobitlinear"
            else "y / weight_scale"
        )
        kind = "packed uint8" if info.dtype == "U8" else f"unpacked {info.dtype}"
        return f"{kind} + weight_scale ({conv.quant.linear_class if conv.quant else '?'}: {rule})"
    return f"{info.dtype} master weights, ternarized per tensor (absmean)"


def _summarise(md: Metadata) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (value, _vtype, _sub) in md.entries.items():
        out[key] = f"[{len(value)} items]" if isinstance(value, list) else value
    return out


def convert_checkpoint(
    model_dir: str | os.PathLike[str],
    outfile: str | os.PathLike[str],
    *,
    outtype: str = "tq2_0",
    head_type: str = "f16",
    dry_run: bool = False,
    progress: bool = True,
    build_dir: str | os.PathLike[str] = "build",
) -> ConversionReport:
    """Convert a Hugging Face BitNet checkpoint directory (or an official I2_S .gguf) to our GGUF.

    Args:
        model_dir: directory with config.json, *.safetensors and tokenizer files; or a `.gguf` file.
        outfile: the GGUF to write (atomically; an existing file is replaced only on success).
        outtype: ternary weight type: "tq2_0" (default), "tq1_0", or "f16"/"f32" for reference files.
        head_type: tied embedding / output head type: "f16" (default), "f32", "q8_0", "q4_0", or
            "q6_k" (written with an f16 head, then requantized by the engine's llama-quantize; every
            other tensor is checked to come out byte-identical).
        dry_run: plan only: validate inputs and return the tensor plan without writing anything.
        progress: show a progress bar over tensor bytes (on a terminal).
        build_dir: the engine build whose llama-quantize makes a q6_k head.

    Raises:
        ConversionError: a subclass saying what is wrong (missing config key, unknown architecture,
            corrupt/truncated safetensors, wrong dtype, unwritable output, ...) and how to fix it.
    """
    src, out = Path(model_dir), Path(outfile)
    outtype, head_type = outtype.lower(), head_type.lower()
    if outtype not in OUT_TYPES:
        raise ConversionError(f"outtype {outtype!r} is not one of {', '.join(OUT_TYPES)}")
    if head_type in ENGINE_HEAD_TYPES:
        return _convert_with_engine_head(
            model_dir, out, outtype=outtype, head_type=head_type, dry_run=dry_run, progress=progress,
            build_dir=build_dir,
        )  # fmt: skip
    if head_type not in HEAD_TYPES:
        choices = ", ".join([*HEAD_TYPES, *ENGINE_HEAD_TYPES])
        raise ConversionError(f"head_type {head_type!r} is not one of {choices}")
    if src.is_file() and src.suffix == ".gguf":
        return _import_gguf(
            src, out, outtype=outtype, head_type=head_type, dry_run=dry_run, progress=progress
        )
    if not src.is_dir():
        raise MissingCheckpointFileError(f"{src} is neither a checkpoint directory nor a .gguf file")
    if not dry_run:
        check_output_writable(out)  # fail before reading gigabytes

    start = time.perf_counter()
    config = load_config(src)
    with Checkpoint(src) as ckpt:
        conv = converter_for(config, src / "config.json")(src, config, ckpt)
        qtype, head = OUT_TYPES[outtype], HEAD_TYPES[head_type]
        vocab = load_vocab(src, config)
        vocab.pad_to(conv.hp.n_vocab)
        md = Metadata()
        conv.metadata(md, qtype)
        vocab.add_to(md)
        specs, notes = conv.plan(qtype, head)
        report = ConversionReport(
            source=src,
            outfile=out,
            dry_run=dry_run,
            hf_architecture=conv.hf_architecture,
            gguf_arch=conv.gguf_arch,
            outtype=outtype,
            head_type=head_type,
            hidden_activation=conv.hp.activation if conv.gguf_arch == "bitnet" else None,
            weight_source=_weight_source(conv),
            tokenizer=f"{vocab.model}/{vocab.pre or '-'}, {len(vocab.tokens)} tokens",
            tensors=[_planned(s) for s in specs],
            notes=notes,
            metadata=_summarise(md),
        )
        for line in _grouped(notes):
            logger.warning("%s", line)
        if not dry_run:
            result = write_gguf(out, conv.gguf_arch, md, specs, progress=progress)
            report.file_bytes = result.nbytes
    report.seconds = time.perf_counter() - start
    return report


def _convert_with_engine_head(
    model_dir: str | os.PathLike[str],
    out: Path,
    *,
    outtype: str,
    head_type: str,
    dry_run: bool,
    progress: bool,
    build_dir: str | os.PathLike[str],
) -> ConversionReport:
    """Convert with an f16 head into a temp file, then let llama-quantize requantize just the head."""
    from bitnet.models._tempfiles import new_temp

    if dry_run:
        report = convert_checkpoint(model_dir, out, outtype=outtype, head_type="f16", dry_run=True)
        report.tensors = [
            _as_head_type(t, head_type) if t.name in HEAD_TENSORS else t for t in report.tensors
        ]
    else:
        check_output_writable(out)
        tmp = new_temp(out, "-f16head")
        try:
            report = convert_checkpoint(model_dir, tmp, outtype=outtype, head_type="f16", progress=progress)
            requantize_head(tmp, out, head_type=head_type, outtype=outtype, build_dir=build_dir)
        finally:
            tmp.unlink(missing_ok=True)
        report.outfile = out
        report.file_bytes = out.stat().st_size
    report.head_type = head_type
    return report


def _as_head_type(t: PlannedTensor, head_type: str) -> PlannedTensor:
    import gguf

    qtype = gguf.GGMLQuantizationType[head_type.upper()]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = 1
    for d in t.shape:
        n *= d
    return PlannedTensor(t.name, t.shape, qtype.name, n // block * type_size)


def _planned(spec: TensorSpec) -> PlannedTensor:
    return PlannedTensor(spec.name, spec.shape, spec.qtype.name, spec.nbytes)


def _grouped(notes: list[str]) -> list[str]:
    """One line per distinct reason (a 3B model has 100+ tensors falling back for the same reason)."""
    groups: dict[str, list[str]] = {}
    for note in notes:
        name, _, why = note.partition(": ")
        groups.setdefault(why or name, []).append(name if why else "")
    return [
        f"{why} ({len(names)} tensors, e.g. {names[0]})" if names[0] else why for why, names in groups.items()
    ]


def _import_gguf(
    src: Path, out: Path, *, outtype: str, head_type: str, dry_run: bool, progress: bool
) -> ConversionReport:
    try:
        i2s = importlib.import_module("bitnet.models.convert.i2s")
    except ModuleNotFoundError as exc:
        if exc.name != "bitnet.models.convert.i2s":
            raise
        raise UnsupportedCheckpointError(
            f"{src} is a GGUF file; importing official I2_S GGUFs needs bitnet.models.convert.i2s, "
            "which this install lacks"
        ) from exc
    report: ConversionReport = i2s.import_i2s_gguf(
        src, out, outtype=outtype, head_type=head_type, dry_run=dry_run, progress=progress
    )
    return report
