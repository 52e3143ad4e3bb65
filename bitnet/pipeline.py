"""`invoke setup`: engine → model (synthetic, or download + convert) → smoke generation.

Each step is skipped when its result is already there and verified, so a second run is quick:
the engine build is fingerprinted (bitnet.engine.build); a model file is reused when it is a readable GGUF
of the bitnet architecture that carries the FFN activation key our engine reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from bitnet.engine.build import ProgressFn
from bitnet.engine.contract import (
    ACTIVATION_QUANT,
    HIDDEN_ACTIVATION,
    REPACK_CACHE_ENV,
    REPACK_CACHE_SUFFIX,
    gguf_key,
)
from bitnet.errors import RuntimeLaunchError, SetupError
from bitnet.models.installed import LOCK_NAME, ModelLock, model_path, resolved_revision, write_lock
from bitnet.models.synthetic import write_synthetic

log = logging.getLogger(__name__)

SMOKE_PROMPT = "The capital of France is"


@dataclass
class SetupReport:
    model_name: str
    gguf: Path
    steps: list[str] = field(default_factory=list)  # one human line per step: done / skipped
    smoke_output: str = ""


def verify_gguf(path: Path) -> str | None:
    """Why `path` is not a usable bitnet GGUF (None when it is)."""
    if not path.is_file():
        return "missing"
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path), "r")
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not usable"
        return f"unreadable GGUF ({exc})"
    field_ = reader.get_field("general.architecture")
    arch = bytes(field_.parts[field_.data[0]]).decode() if field_ else None
    if arch not in ("bitnet", "llama"):
        return f"architecture {arch!r} is not one this toolkit writes"
    if arch == "bitnet" and reader.get_field(gguf_key(arch, HIDDEN_ACTIVATION)) is None:
        return "no bitnet.hidden_activation key (made by another converter)"
    if reader.get_field(gguf_key(arch, ACTIVATION_QUANT)) is None:
        return f"no {arch}.activation_quant key (made before per-token activations: runs per block)"
    return None


def setup_model(
    model: str = "tiny",
    *,
    model_dir: str | os.PathLike[str] | None = None,
    build_dir: str | os.PathLike[str] = "build",
    models_dir: str | os.PathLike[str] | None = None,
    outtype: str = "tq2_0",
    head_type: str = "f16",
    smoke_tokens: int = 8,
    build: bool = True,
    revision: str | None = None,
    progress: ProgressFn | None = None,
) -> SetupReport:
    """Build the engine if needed, get `model` as a GGUF, and generate a few tokens with it.

    `model` is a catalogue name (`invoke setup --list`), a repo id, or ignored when `model_dir` (a
    local Hugging Face checkpoint or official .gguf) is given. Synthetic catalogue models are made
    locally and need no network. `revision` downloads that branch/tag/commit instead of the
    catalogue's pin. `progress(phase, done, total)` is told how the engine build goes (as for
    `bitnet.engine.build.build_engine`). The model's folder gets a ``model.lock.json`` saying where it came
    from (the commit a download resolved to included). `models_dir` None: $BITNET_MODELS, else ./models.
    """
    from bitnet.models.catalog import get_model
    from bitnet.models.installed import models_dir as default_models_dir

    steps: list[str] = []
    # the name first: a typo must not cost a 15-minute engine build before it is reported
    entry = None if model_dir is not None or "/" in model else get_model(model)
    if build:
        from bitnet.engine.build import build_engine

        if progress is not None:
            log.info(
                "engine: building or checking %s (log: %s)", build_dir, Path(build_dir) / "logs" / "build.log"
            )
        res = build_engine(build_dir=Path(build_dir), progress=progress)
        steps.append(
            f"engine: {'up to date' if res.skipped else 'built'} ({res.bin_dir}, variant {res.host_variant})"
        )

    models = Path(models_dir) if models_dir is not None else default_models_dir()
    if model_dir is not None:
        name = Path(model_dir).name or "local"
    elif entry is not None:
        name = entry.name
    else:
        name = model.replace("/", "--")  # a repo id: owner--name, like the Hugging Face cache
    out = model_path(name, models, outtype, head_type)
    problem = verify_gguf(out)
    if problem is None:
        steps.append(f"model: {out} already there (verified)")
    elif entry is not None and entry.is_synthetic:
        assert entry.dummy_size is not None
        out.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic(entry.dummy_size, out, outtype=outtype, head_type=head_type, build_dir=build_dir)
        steps.append(f"model: wrote synthetic {entry.dummy_size} model {out}")
        _lock(out, ModelLock(name=name, source="synthetic", outtype=outtype, head_type=head_type))
    else:
        from bitnet.models.convert import convert_checkpoint
        from bitnet.models.hub import resolve_checkpoint

        source = resolve_checkpoint(model_dir if model_dir is not None else model, revision=revision)
        steps.append(f"checkpoint: {source}")
        out.parent.mkdir(parents=True, exist_ok=True)
        report = convert_checkpoint(source, out, outtype=outtype, head_type=head_type, build_dir=build_dir)
        steps.append(f"model: converted to {out} ({report.file_bytes / 1e6:.1f} MB, {report.seconds:.0f} s)")
        commit = resolved_revision(source)
        if model_dir is not None and commit is None:
            lock = ModelLock(
                name=name, source="local", checkpoint=str(source), outtype=outtype, head_type=head_type
            )
        else:
            repo = entry.repo if entry is not None else (model if model_dir is None else None)
            asked = revision if revision is not None else (entry.revision if entry is not None else None)
            lock = ModelLock(
                name=name,
                source="hub",
                repo=repo,
                revision=asked,
                resolved_revision=commit,
                checkpoint=str(source),
                outtype=outtype,
                head_type=head_type,
            )
        _lock(out, lock)
        if lock.source == "hub":
            steps.append(f"lock: {out.parent / LOCK_NAME} ({repo}@{commit or asked or 'main'})")
    still = verify_gguf(out)
    if still is not None:
        raise SetupError(f"the model file {out} is not usable after setup: {still}. Delete it and rerun.")

    output = ""
    if smoke_tokens > 0:
        output = smoke_generate(out, build_dir=build_dir, n_predict=smoke_tokens)
        steps.append(f"smoke: generated {smoke_tokens} tokens")
        # the smoke run's load wrote our kernels' layout beside the model (ternary-cache.cpp)
        for cache in sorted(out.parent.glob(out.name + ".*" + REPACK_CACHE_SUFFIX)):
            steps.append(
                f"repack cache: {cache} ({cache.stat().st_size / 1e6:.1f} MB): later loads map it "
                f"instead of repacking ({REPACK_CACHE_ENV}=0: off)"
            )
    return SetupReport(model_name=name, gguf=out, steps=steps, smoke_output=output)


def _lock(out: Path, lock: ModelLock) -> None:
    write_lock(out.parent, lock)


def smoke_generate(model: Path, *, build_dir: str | os.PathLike[str], n_predict: int = 8) -> str:
    """Greedy-generate a few tokens through the runtime wrapper; return the text. Raise on failure."""
    from bitnet.runtime.runtime import BitNetRuntime
    from bitnet.runtime.supervisor import RuntimeSupervisor

    runtime = BitNetRuntime(build_dir=str(build_dir))

    async def run() -> str:
        async with RuntimeSupervisor(runtime, concurrency=1) as sup:
            res = await sup.run_inference(
                model=str(model),
                prompt=SMOKE_PROMPT,
                n_predict=n_predict,
                temperature=0,
                ctx_size=256,
                batch_size=64,
                timeout=300,
            )
        return res.stdout

    text = asyncio.run(run())  # non-zero exit or timeout raise RuntimeLaunchError
    if not text.startswith(SMOKE_PROMPT):
        raise RuntimeLaunchError(f"smoke generation with {model} printed no continuation: {text[:200]!r}")
    return text
