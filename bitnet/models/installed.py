"""Installed models: what `invoke setup` put on disk, where it came from, and removing it.

One models directory: ``$BITNET_MODELS`` if set, else ``./models`` (the checkout's, where `invoke`
runs). Each model lives in ``<models>/<name>/`` with its GGUF file(s) and a ``model.lock.json`` that
records where it came from: the catalogue name, the Hugging Face repo, the revision asked for and the
commit it resolved to (so an unpinned catalogue entry still leaves a reproducible record), the converter
settings, and when. `invoke models` lists them; `invoke models --rm NAME` removes one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bitnet.engine.contract import ACTIVATION_QUANT, HIDDEN_ACTIVATION, gguf_key
from bitnet.errors import ModelNotFoundError

MODELS_ENV = "BITNET_MODELS"
LOCK_NAME = "model.lock.json"
LOCK_SCHEMA = 1


def models_dir(env: dict[str, str] | None = None) -> Path:
    """The models directory: $BITNET_MODELS, else ./models."""
    value = (os.environ if env is None else env).get(MODELS_ENV, "").strip()
    return Path(value).expanduser() if value else Path("models")


@dataclass(frozen=True)
class ModelLock:
    """Where an installed model came from (``model.lock.json``)."""

    name: str
    source: str  # "hub", "local", "synthetic"
    repo: str | None = None
    revision: str | None = None  # what was asked for ("main", a commit, None for the default branch)
    resolved_revision: str | None = None  # the commit the download resolved to, when known
    checkpoint: str | None = None  # local checkpoint dir or file converted
    outtype: str | None = None
    head_type: str | None = None
    created: str = ""
    schema: int = LOCK_SCHEMA

    @property
    def pinned(self) -> bool:
        return self.resolved_revision is not None


def model_path(name: str, models_dir: Path, outtype: str, head_type: str) -> Path:
    """Where a model lives: ``<models_dir>/<name>/ggml-model-<outtype>[-head_<head>].gguf``.

    The one naming scheme of the toolkit: `invoke setup`, `invoke dummy` and the benchmarks' synthetic
    models (`bitnet.models.synthetic.synthetic_model_path`) all use it, so `invoke models` lists them all.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    suffix = outtype if head_type == "f16" else f"{outtype}-head_{head_type}"
    return models_dir / safe / f"ggml-model-{suffix}.gguf"


def resolved_revision(snapshot: Path) -> str | None:
    """The commit a Hugging Face cache snapshot dir stands for (``.../snapshots/<commit>``), else None."""
    snapshot = Path(snapshot)
    if snapshot.parent.name == "snapshots" and len(snapshot.name) == 40:
        try:
            int(snapshot.name, 16)
        except ValueError:
            return None
        return snapshot.name
    return None


def write_lock(model_dir: Path, lock: ModelLock) -> Path:
    """Write ``model.lock.json`` into `model_dir` atomically; returns its path."""
    data = asdict(lock)
    data["created"] = data["created"] or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    path = model_dir / LOCK_NAME
    tmp = model_dir / f".{LOCK_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_lock(model_dir: Path) -> ModelLock | None:
    """The lock of `model_dir`, or None if it has none (or an unreadable one)."""
    try:
        data = json.loads((model_dir / LOCK_NAME).read_text())
        known = {f for f in ModelLock.__dataclass_fields__}
        return ModelLock(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class InstalledModel:
    """One GGUF under the models directory, described from its own metadata and its lock."""

    name: str
    path: Path
    size_bytes: int
    architecture: str | None
    weight_type: str | None  # the ternary tensors' type (TQ2_0, TQ1_0, ...)
    head_type: str | None  # token_embd.weight's type
    activation: str | None  # FFN activation (relu2 / silu)
    numerics: str | None  # activation quantization (per_token / per_block; None = per_block, old file)
    lock: ModelLock | None
    created: str
    problem: str | None = None  # why the file could not be read, if it could not

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def _describe(path: Path, name: str) -> InstalledModel:
    lock = read_lock(path.parent)
    stat = path.stat()
    created = lock.created if lock and lock.created else _iso(stat.st_mtime)
    info: dict[str, str | None] = {
        "architecture": None,
        "weight": None,
        "head": None,
        "act": None,
        "aq": None,
    }
    problem = None
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path), "r")
        arch = _string_field(reader, "general.architecture")
        info["architecture"] = arch
        if arch:
            info["act"] = _string_field(reader, gguf_key(arch, HIDDEN_ACTIVATION))
            info["aq"] = _string_field(reader, gguf_key(arch, ACTIVATION_QUANT))
        types: dict[str, int] = {}
        for tensor in reader.tensors:
            tname = tensor.tensor_type.name
            if tensor.name == "token_embd.weight":
                info["head"] = tname
            elif tensor.name.endswith(".weight") and len(tensor.shape) == 2:
                types[tname] = types.get(tname, 0) + 1
        info["weight"] = max(types, key=lambda t: types[t]) if types else None
    except Exception as exc:  # noqa: BLE001 - a damaged file is listed with its problem, not fatal
        problem = f"unreadable: {type(exc).__name__}: {exc}"[:200]
    return InstalledModel(
        name=name,
        path=path,
        size_bytes=stat.st_size,
        architecture=info["architecture"],
        weight_type=info["weight"],
        head_type=info["head"],
        activation=info["act"],
        numerics=info["aq"] or (None if problem else "per_block"),
        lock=lock,
        created=created,
        problem=problem,
    )


def _string_field(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not field.data:
        return None
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (UnicodeDecodeError, IndexError, TypeError):
        return None


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="seconds")


def list_models(root: Path | None = None) -> list[InstalledModel]:
    """Every ``*.gguf`` in `root`'s model folders (one level deep), sorted by name then file."""
    root = models_dir() if root is None else Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for gguf in sorted(folder.glob("*.gguf")):
            if gguf.is_file():
                found.append(_describe(gguf, folder.name))
    return found


def format_models(models: Sequence[InstalledModel], root: Path) -> str:
    """The table `invoke models` prints."""
    if not models:
        return (
            f"no models in {root} (make one with `invoke setup --model tiny`; list the catalogue with --list)"
        )
    rows = [("name", "size", "weights", "head", "act", "numerics", "source", "revision", "created", "path")]
    for m in models:
        lock = m.lock
        source = (lock.repo or lock.checkpoint or lock.source) if lock else "?"
        if lock is None:
            revision = "? (no lock)"
        elif lock.source != "hub":
            revision = "-"
        elif lock.resolved_revision:
            revision = lock.resolved_revision[:12]
        else:
            revision = f"{lock.revision or 'main'} (unresolved)"
        rows.append(
            (
                m.name,
                _size(m.size_bytes),
                m.weight_type or "?",
                m.head_type or "?",
                m.activation or "?",
                m.numerics or "?",
                source,
                revision,
                m.created[:10],
                str(m.path) + (f"  [{m.problem}]" if m.problem else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    total = sum(m.size_bytes for m in models)
    lines.append(f"{len(models)} file(s), {_size(total)} in {root}")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def find_model(name: str, root: Path | None = None) -> Path:
    """The folder of installed model `name`, or `ModelNotFoundError` listing what is installed."""
    root = models_dir() if root is None else Path(root)
    folder = root / name
    if (
        name
        and "/" not in name
        and name not in (".", "..")
        and folder.is_dir()
        and any(folder.glob("*.gguf"))
    ):
        return folder
    installed = sorted({m.name for m in list_models(root)})
    raise ModelNotFoundError(
        f"no installed model named {name!r} in {root}. Installed: {', '.join(installed) or 'none'}. "
        "(`invoke models` lists them.)"
    )


def remove_model(name: str, root: Path | None = None) -> Path:
    """Delete installed model `name` (its whole folder); return the folder removed."""
    folder = find_model(name, root)
    shutil.rmtree(folder)
    return folder
