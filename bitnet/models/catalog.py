"""The model catalogue: short names (``2B``, ``large``, ``tiny``...) mapped to checkpoints.

The data lives in ``models/catalog.toml`` (see the field list at the top of that file); this module loads
it, validates every entry strictly (unknown keys are errors, so a typo cannot silently drop a field) and
offers look-ups for the CLI and ``invoke setup``:

    >>> entry = get_model("2B")
    >>> entry.repo, entry.source
    ('microsoft/bitnet-b1.58-2B-4T', 'packed')
    >>> print(format_catalog())          # the table behind `invoke setup --list`
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from bitnet.errors import CatalogError, UnknownModelError
from bitnet.paths import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only (needs the `tomli` dependency there)
    import tomli as tomllib

CATALOG_PATH = REPO_ROOT / "models" / "catalog.toml"
SCHEMA_VERSION = 1

Source = Literal["packed", "master", "i2s_gguf", "synthetic"]
SOURCES: tuple[str, ...] = get_args(Source)
HIDDEN_ACTS = ("relu2", "silu")

# A pinned revision is a full git commit hash; anything else ("main", a tag) can move under us.
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Hugging Face repo ids: "owner/name", letters, digits, "-", "_", "." (huggingface_hub validates further).
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

_COMMON_KEYS = {"description", "source", "architecture", "hidden_act", "params"}
_HUB_KEYS = _COMMON_KEYS | {"repo", "revision", "allow_patterns", "download_bytes", "sha256"}
_SYNTHETIC_KEYS = _COMMON_KEYS | {"dummy_size"}


@dataclass(frozen=True)
class ModelEntry:
    """One catalogue entry. Hub entries have ``repo``/``revision``/``allow_patterns``; synthetic ones
    have ``dummy_size`` (the size argument of ``bitnet.models.synthetic.write_dummy_model``)."""

    name: str
    source: Source
    architecture: str
    hidden_act: str
    description: str = ""
    repo: str | None = None
    revision: str | None = None
    allow_patterns: tuple[str, ...] = ()
    download_bytes: int = 0
    params: int | None = None
    dummy_size: str | None = None
    sha256: tuple[tuple[str, str], ...] = ()  # (filename in the repo, expected sha256), sorted

    @property
    def is_synthetic(self) -> bool:
        """True for models made locally by ``bitnet.models.synthetic`` (nothing to download)."""
        return self.source == "synthetic"

    @property
    def is_pinned(self) -> bool:
        """True when ``revision`` is a full commit hash (immutable), False for branches/tags."""
        return self.revision is not None and COMMIT_RE.fullmatch(self.revision) is not None

    def expected_sha256(self, filename: str) -> str | None:
        """The catalogued sha256 of ``filename`` (a path inside the repo), or None."""
        return dict(self.sha256).get(filename)


def _fail(path: Path, name: str | None, message: str) -> CatalogError:
    where = f"{path}" if name is None else f"{path}: [models.{name}]"
    return CatalogError(f"{where}: {message}")


def _get(
    table: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    path: Path,
    name: str,
    *,
    required: bool,
) -> Any:
    if key not in table:
        if required:
            raise _fail(path, name, f"missing required field {key!r}")
        return None
    value = table[key]
    # bool is an int subclass: `params = true` must not pass as a count.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _fail(path, name, f"field {key!r} must be {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise _fail(path, name, f"field {key!r} must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {str: "a string", int: "an integer", list: "a list", dict: "a table"}[k] for k in kinds
    )


def _parse_entry(name: str, table: Any, path: Path) -> ModelEntry:
    if not isinstance(table, dict):
        raise _fail(path, name, "must be a table")
    if not NAME_RE.fullmatch(name):
        raise _fail(path, name, "names use letters, digits, '.', '_' and '-' only")
    source = _get(table, "source", str, path, name, required=True)
    if source not in SOURCES:
        raise _fail(path, name, f"source must be one of {', '.join(SOURCES)}; got {source!r}")
    allowed = _SYNTHETIC_KEYS if source == "synthetic" else _HUB_KEYS
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(
            path,
            name,
            f"unknown field(s) {', '.join(unknown)} for source {source!r}; allowed: {sorted(allowed)}",
        )

    hidden_act = _get(table, "hidden_act", str, path, name, required=True)
    if hidden_act not in HIDDEN_ACTS:
        raise _fail(path, name, f"hidden_act must be one of {', '.join(HIDDEN_ACTS)}; got {hidden_act!r}")
    architecture = _get(table, "architecture", str, path, name, required=True)
    description = _get(table, "description", str, path, name, required=False) or ""
    params = _get(table, "params", int, path, name, required=source != "synthetic")
    if params is not None and params <= 0:
        raise _fail(path, name, f"params must be positive, got {params}")

    if source == "synthetic":
        dummy_size = _get(table, "dummy_size", str, path, name, required=True)
        return ModelEntry(
            name=name,
            source=cast(Source, source),
            architecture=architecture,
            hidden_act=hidden_act,
            description=description,
            params=params,
            dummy_size=dummy_size,
        )

    repo = _get(table, "repo", str, path, name, required=True)
    if not REPO_ID_RE.fullmatch(repo):
        raise _fail(path, name, f"repo must look like 'owner/name', got {repo!r}")
    revision = _get(table, "revision", str, path, name, required=True)
    if not revision.strip():
        raise _fail(path, name, "revision must not be empty (a commit hash, or 'main' while unpinned)")
    patterns = _get(table, "allow_patterns", list, path, name, required=True)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise _fail(path, name, "allow_patterns must be a non-empty list of non-empty strings")
    download_bytes = _get(table, "download_bytes", int, path, name, required=True)
    if download_bytes <= 0:
        raise _fail(path, name, f"download_bytes must be positive, got {download_bytes}")
    sha_table = _get(table, "sha256", dict, path, name, required=False) or {}
    for filename, digest in sha_table.items():
        if not isinstance(digest, str) or not SHA256_RE.fullmatch(digest):
            raise _fail(path, name, f"sha256 of {filename!r} must be 64 lowercase hex digits, got {digest!r}")
        if not any(fnmatch.fnmatch(filename, p) for p in patterns):
            raise _fail(path, name, f"sha256 names {filename!r}, which allow_patterns never downloads")
    return ModelEntry(
        name=name,
        source=cast(Source, source),
        architecture=architecture,
        hidden_act=hidden_act,
        description=description,
        repo=repo,
        revision=revision,
        allow_patterns=tuple(patterns),
        download_bytes=download_bytes,
        params=params,
        sha256=tuple(sorted(sha_table.items())),
    )


def parse_catalog(data: Mapping[str, Any], *, path: Path = CATALOG_PATH) -> dict[str, ModelEntry]:
    """Validate already-parsed TOML data and return ``{name: ModelEntry}`` in file order."""
    unknown = sorted(set(data) - {"schema_version", "models"})
    if unknown:
        raise _fail(path, None, f"unknown top-level key(s) {', '.join(unknown)}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _fail(path, None, f"schema_version must be {SCHEMA_VERSION}, got {version!r}")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise _fail(path, None, "no [models.<name>] tables")
    entries = {name: _parse_entry(name, table, path) for name, table in models.items()}
    folded: dict[str, str] = {}
    for name in entries:
        other = folded.setdefault(name.casefold(), name)
        if other != name:
            raise _fail(
                path, name, f"differs from {other!r} only in case; names are looked up case-insensitively"
            )
    return entries


@functools.lru_cache(maxsize=8)
def _load_cached(path: Path, mtime_ns: int) -> dict[str, ModelEntry]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from exc
    return parse_catalog(data, path=path)


def load_catalog(path: str | Path | None = None) -> dict[str, ModelEntry]:
    """Load and validate the catalogue (default ``models/catalog.toml`` of this checkout).

    Returns a fresh ``{name: ModelEntry}`` dict in file order. Raises :class:`CatalogError` when the file
    is missing or malformed.
    """
    p = Path(path) if path is not None else CATALOG_PATH
    try:
        mtime_ns = p.stat().st_mtime_ns
    except FileNotFoundError:
        raise CatalogError(
            f"model catalogue not found at {p}; it ships in the source tree (models/catalog.toml): "
            "run from a checkout of the toolkit or pass the catalogue path"
        ) from None
    return dict(_load_cached(p.resolve(), mtime_ns))


def get_model(name: str, *, catalog: Mapping[str, ModelEntry] | None = None) -> ModelEntry:
    """Look up a catalogue entry by short name (case-insensitive) or by its Hugging Face repo id.

    Raises :class:`UnknownModelError` whose message suggests close matches and lists every known name.
    """
    entries = load_catalog() if catalog is None else catalog
    if name in entries:
        return entries[name]
    by_fold = {n.casefold(): e for n, e in entries.items()}
    if name.casefold() in by_fold:
        return by_fold[name.casefold()]
    by_repo = [e for e in entries.values() if e.repo is not None and e.repo.casefold() == name.casefold()]
    if len(by_repo) == 1:
        return by_repo[0]

    folded_names = {n.casefold(): n for n in entries}
    close = difflib.get_close_matches(name.casefold(), list(folded_names), n=3, cutoff=0.6)
    suggestions = tuple(folded_names[c] for c in close)
    hint = f" Did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} Known models: {', '.join(entries)}. "
        "`invoke setup --list` shows them with sizes; a local checkpoint is used with --model-dir DIR.",
        name=name,
        suggestions=suggestions,
    )


def format_count(n: int | None) -> str:
    """2_410_000_000 -> '2.41B', 729_000_000 -> '729M' (decimal units, 3 significant digits)."""
    if n is None:
        return "-"
    for div, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def format_bytes(n: int) -> str:
    """1_187_801_280 -> '1.19 GB' (decimal units, like the Hub's file listings); 0 -> '-'."""
    if n <= 0:
        return "-"
    for div, unit in ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "kB")):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n} B"


def format_catalog(entries: Iterable[ModelEntry] | None = None) -> str:
    """A plain-text table of the catalogue for ``invoke setup --list``.

    Columns: name, repo (``(local)`` for synthetic models), format (the source), params, approximate
    download size and revision (first 10 hex digits when pinned; an unpinned branch is marked with ``*``).
    """
    rows_in = list(load_catalog().values() if entries is None else entries)
    header = ("NAME", "REPO", "FORMAT", "PARAMS", "DOWNLOAD", "REVISION")
    rows = [header]
    any_unpinned = False
    for e in rows_in:
        if e.is_synthetic:
            revision = "-"
        elif e.is_pinned:
            revision = (e.revision or "")[:10]
        else:
            revision = f"{e.revision}*"
            any_unpinned = True
        rows.append(
            (
                e.name,
                e.repo or "(local, bitnet.models.synthetic)",
                e.source,
                format_count(e.params),
                format_bytes(e.download_bytes),
                revision,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {3, 4}  # numbers right-aligned
    lines = [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(r)
        ).rstrip()
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any_unpinned:
        lines.append("* not pinned to a commit: the download follows the branch.")
    return "\n".join(lines)
