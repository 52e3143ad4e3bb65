"""Download checkpoints from the Hugging Face Hub, or use a local one.

Downloads go through ``huggingface_hub.snapshot_download``: only the files an entry needs
(``allow_patterns``), at its pinned revision, into the standard Hugging Face cache, with the library's
own resumable transfers and progress bars. Everything the library configures from the environment is
left to it, by passing ``None`` through: ``HF_HOME`` / ``HF_HUB_CACHE`` (where the cache is),
``HF_HUB_OFFLINE=1`` (cache only, no network), ``HF_TOKEN`` (gated or private repos),
``HF_HUB_DISABLE_PROGRESS_BARS``, ``HF_ENDPOINT``. Note that huggingface_hub reads most of these once,
when it is imported; set them before starting Python.

Every failure the Hub can produce is turned into :class:`ModelDownloadError` with a message that says
what went wrong and how to go on without the Hub (ref: huggingface_hub ``errors.py`` and
``snapshot_download``'s documented exceptions).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import importlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from bitnet.errors import ModelDownloadError, UnknownModelError
from bitnet.models.catalog import ModelEntry, get_model, load_catalog

log = logging.getLogger(__name__)
_HF_HTTP_LOGGER = "huggingface_hub.utils._http"


class _OneLinePerRetry(logging.Filter):
    """huggingface_hub logs two warnings per failed attempt (the error, then "Retrying in Ns"), and with
    a root handler configured each shows twice: 24 lines for one offline download. Keep one line per
    attempt, saying why it failed and when the next one starts."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = ""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if " thrown while requesting " in text:
            self.reason = text.split(" thrown while requesting ")[0].strip("'\"")
            return False
        if text.startswith("Retrying in "):
            record.msg, record.args = f"download attempt failed ({self.reason or 'no answer'}); {text}", ()
        return True


@contextlib.contextmanager
def _quiet_retries() -> Iterator[None]:
    http_log = logging.getLogger(_HF_HTTP_LOGGER)
    library = logging.getLogger("huggingface_hub")
    one_line = _OneLinePerRetry()
    http_log.addFilter(one_line)
    # the library prints through its own handler; propagating too would print every line twice
    propagate = library.propagate
    library.propagate = not library.handlers
    try:
        yield
    finally:
        http_log.removeFilter(one_line)
        library.propagate = propagate


LIBRARY_NAME = "bitnet-toolkit"  # sent in the Hub's user agent

# How to proceed without the Hub; appended to every "cannot reach / not cached" message.
OFFLINE_HELP = (
    "To continue without the Hugging Face Hub:\n"
    "  - use a cache that already holds the model: set HF_HUB_OFFLINE=1 and point HF_HOME (or\n"
    "    HF_HUB_CACHE) at it, e.g. a cache copied from a machine with network access;\n"
    "  - use a local checkpoint directory: --model-dir DIR (config.json + *.safetensors + tokenizer,\n"
    "    or a .gguf file);\n"
    "  - use a synthetic model that needs no download: invoke setup --model tiny"
)


@dataclass(frozen=True)
class _Target:
    repo_id: str
    revision: str | None
    allow_patterns: tuple[str, ...] | None
    sha256: Mapping[str, str]


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "the network failed", for whichever HTTP stack huggingface_hub uses
    (httpx2 in huggingface_hub 1.x/2.x, requests in 0.x)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, OfflineModeIsEnabled]
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found.extend(t for n in names if isinstance(t := getattr(mod, n, None), type))
    return tuple(found)


_CONNECTION_ERRORS = _connection_errors()


def _resolve_target(
    entry_or_repo: ModelEntry | str,
    revision: str | None,
    allow_patterns: Sequence[str] | str | None,
) -> _Target:
    if isinstance(entry_or_repo, str) and "/" not in entry_or_repo:
        # A catalogue short name ("2B"); unknown names raise UnknownModelError with suggestions.
        entry_or_repo = get_model(entry_or_repo)
    patterns: tuple[str, ...] | None
    if isinstance(allow_patterns, str):
        patterns = (allow_patterns,)
    elif allow_patterns is not None:
        patterns = tuple(allow_patterns)
    else:
        patterns = None
    if isinstance(entry_or_repo, ModelEntry):
        entry = entry_or_repo
        if entry.is_synthetic or entry.repo is None:
            raise ModelDownloadError(
                f"{entry.name!r} is a synthetic model: there is nothing to download. Create it with "
                f"`invoke setup --model {entry.name}` (bitnet.models.synthetic.write_dummy_model)."
            )
        if not entry.is_pinned and revision is None:
            log.warning(
                "%s (%s) is not pinned to a commit; downloading branch %r",
                entry.name,
                entry.repo,
                entry.revision,
            )
        # An explicit revision overrides the pin, so the catalogued checksums may not apply to it.
        sha = dict(entry.sha256) if revision is None or revision == entry.revision else {}
        return _Target(
            repo_id=entry.repo,
            revision=revision if revision is not None else entry.revision,
            allow_patterns=patterns if patterns is not None else entry.allow_patterns,
            sha256=sha,
        )
    return _Target(repo_id=entry_or_repo, revision=revision, allow_patterns=patterns, sha256={})


def _cache_location(
    cache_dir: str | os.PathLike[str] | None, local_dir: str | os.PathLike[str] | None
) -> str:
    if local_dir is not None:
        return str(local_dir)
    return str(cache_dir) if cache_dir is not None else str(hf_constants.HF_HUB_CACHE)


def _offline_mode() -> bool:
    return bool(hf_constants.HF_HUB_OFFLINE)


def _map_error(exc: BaseException, target: _Target, where: str) -> ModelDownloadError:
    """Turn an exception from huggingface_hub into a ModelDownloadError with a helpful message."""
    repo, rev = target.repo_id, target.revision or "main"
    ref = f"{repo}@{rev}"

    def err(message: str) -> ModelDownloadError:
        return ModelDownloadError(message, repo_id=repo, revision=rev)

    # Order matters: GatedRepoError is a RepositoryNotFoundError, and LocalEntryNotFoundError is also
    # an OSError (FileNotFoundError).
    if isinstance(exc, GatedRepoError):
        return err(
            f"{repo} is gated: accept its conditions at https://huggingface.co/{repo} with your account, "
            "then log in with `hf auth login` or set HF_TOKEN to a token of that account."
        )
    if isinstance(exc, RepositoryNotFoundError):
        return err(
            f"{repo} was not found on the Hugging Face Hub, or it is private and the token in use "
            "(HF_TOKEN or `hf auth login`) has no access. Check the name; `invoke setup --list` shows the "
            "catalogued models."
        )
    if isinstance(exc, RevisionNotFoundError):
        return err(
            f"revision {rev!r} does not exist in {repo}. If it is the catalogue's pin "
            "(models/catalog.toml), the repository history was rewritten: update the pin, or pass another "
            "revision (e.g. --revision main)."
        )
    if isinstance(exc, LocalEntryNotFoundError):
        # Raised by snapshot_download (nothing usable cached; IncompleteSnapshotError when its cached file
        # listing shows missing files) or by hf_hub_download for a single missing file. The chained
        # cause names the file or the network error.
        cause = exc.__cause__ or exc.__context__
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        if type(exc).__name__ == "IncompleteSnapshotError":
            what = f"The cached copy of {ref} in {where} is incomplete ({exc})."
        elif _offline_mode():
            what = (
                f"{ref} is not (or not completely) in the Hugging Face cache at {where}, and "
                f"HF_HUB_OFFLINE is set, so nothing can be downloaded ({detail}). Unset HF_HUB_OFFLINE "
                "on a machine with network access to download it."
            )
        else:
            what = (
                f"Cannot reach the Hugging Face Hub ({hf_constants.ENDPOINT}) to download {ref} ({detail}), "
                f"and it is not (completely) in the cache at {where}."
            )
        return err(f"{what}\n{OFFLINE_HELP}")
    if isinstance(exc, _CONNECTION_ERRORS):
        return err(
            f"The connection to the Hugging Face Hub failed while downloading {ref} "
            f"({type(exc).__name__}: {exc}). Run the command again to resume: completed files and partial "
            f"downloads stay in {where}.\n{OFFLINE_HELP}"
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        auth = " Log in with `hf auth login` or set HF_TOKEN." if status in (401, 403) else ""
        return err(
            f"The Hugging Face Hub refused the download of {ref} (HTTP {status}): {exc}.{auth}\n"
            + OFFLINE_HELP
        )
    if isinstance(exc, HFValidationError):
        return err(f"{repo!r} is not a valid Hugging Face repo id ('owner/name'): {exc}")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return err(
            f"No space left on the device while downloading {ref} into {where}. Free some space, or put the "
            "cache on a larger disk with HF_HOME / HF_HUB_CACHE (or --local-dir)."
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return err(
            f"Cannot write the download of {ref} into {where} ({exc}). Make it writable, or choose another "
            "location with HF_HOME / HF_HUB_CACHE (or --local-dir)."
        )
    return err(f"Downloading {ref} failed: {type(exc).__name__}: {exc}")


def sha256_file(path: Path, *, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (memory stays flat for multi-GB files)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verify(snapshot: Path, target: _Target) -> None:
    """Check the snapshot holds what was asked for, and the catalogued checksums."""
    files = [p for p in snapshot.rglob("*") if p.is_file() and ".cache" not in p.relative_to(snapshot).parts]
    if target.allow_patterns:
        rel = [p.relative_to(snapshot).as_posix() for p in files]
        if not any(fnmatch.fnmatch(r, pat) for r in rel for pat in target.allow_patterns):
            raise ModelDownloadError(
                f"{target.repo_id}@{target.revision or 'main'} has no file matching "
                f"{list(target.allow_patterns)} (snapshot {snapshot}). The repository layout changed or the "
                "patterns are wrong.",
                repo_id=target.repo_id,
                revision=target.revision,
            )
    for filename, expected in sorted(target.sha256.items()):
        path = snapshot / filename
        if not path.is_file():
            raise ModelDownloadError(
                f"{filename} is missing from the snapshot of {target.repo_id} at {snapshot}.",
                repo_id=target.repo_id,
                revision=target.revision,
            )
        actual = sha256_file(path)
        if actual != expected:
            raise ModelDownloadError(
                f"{path} has sha256 {actual}, expected {expected} (models/catalog.toml). The file is "
                "corrupt or the repository changed: delete it from the cache and download again.",
                repo_id=target.repo_id,
                revision=target.revision,
            )


def download_model(
    entry_or_repo: ModelEntry | str,
    *,
    revision: str | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    allow_patterns: Sequence[str] | str | None = None,
) -> Path:
    """Download a checkpoint (or find it in the cache) and return the local snapshot directory.

    ``entry_or_repo`` is a catalogue entry, a catalogue short name (``"2B"``) or a repo id
    (``"owner/name"``). For catalogue entries the pinned ``revision`` and the entry's ``allow_patterns``
    are used unless given explicitly; catalogued sha256 sums are checked after the download.

    ``cache_dir=None`` uses the Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``); ``local_dir`` puts
    plain files in that directory instead; ``token=None`` lets huggingface_hub use ``HF_TOKEN`` or the
    saved login. With ``HF_HUB_OFFLINE=1`` only the cache is consulted. Interrupted downloads resume on
    the next call (huggingface_hub keeps ``.incomplete`` files).

    Raises :class:`ModelDownloadError` (hub unreachable and not cached, gated/missing repo, unknown
    revision, disk full, checksum mismatch) and :class:`bitnet.models.catalog.UnknownModelError`.
    """
    target = _resolve_target(entry_or_repo, revision, allow_patterns)
    where = _cache_location(cache_dir, local_dir)
    log.info(
        "fetching %s@%s (%s) into %s",
        target.repo_id,
        target.revision or "main",
        ", ".join(target.allow_patterns) if target.allow_patterns else "all files",
        where,
    )
    try:
        with _quiet_retries():
            path = snapshot_download(
                target.repo_id,
                revision=target.revision,
                cache_dir=Path(cache_dir) if cache_dir is not None else None,
                local_dir=Path(local_dir) if local_dir is not None else None,
                token=token,
                allow_patterns=list(target.allow_patterns) if target.allow_patterns else None,
                library_name=LIBRARY_NAME,
            )
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise _map_error(exc, target, where) from exc
    snapshot = Path(path)
    _verify(snapshot, target)
    log.info("%s@%s is at %s", target.repo_id, target.revision or "main", snapshot)
    return snapshot


def _looks_like_path(text: str) -> bool:
    """A string meant as a filesystem path rather than a repo id or a catalogue name."""
    return (
        text.startswith((".", "/", "~", os.sep))
        or (os.altsep is not None and os.altsep in text)
        or text.count("/") >= 2
        or text.endswith(".gguf")
    )


def _check_local_checkpoint(path: Path) -> Path:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelDownloadError(
                f"{path} is a file but not a .gguf; pass a checkpoint directory "
                "(config.json + *.safetensors) or a .gguf file."
            )
        return path
    has_config = (path / "config.json").is_file()
    ggufs = sorted(path.glob("*.gguf"))
    if not has_config and not ggufs:
        raise ModelDownloadError(
            f"{path} is not a model checkpoint: it has neither config.json (Hugging Face checkpoint) nor a "
            ".gguf file."
        )
    if has_config and not any(path.glob("*.safetensors")) and not ggufs:
        raise ModelDownloadError(
            f"{path} has config.json but no *.safetensors weights; the download may be incomplete "
            "(re-run it) or the checkpoint uses another format (only safetensors are supported)."
        )
    return path


def resolve_checkpoint(
    name_or_dir: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """Turn what a user typed after ``--model`` / ``--model-dir`` into a local checkpoint path.

    In order: an existing directory (``config.json`` + ``*.safetensors``, or ``*.gguf``) or ``.gguf``
    file is used as it is; a string that looks like a path but does not exist is an error; a catalogue
    short name (``2B``) or a repo id (``owner/name``) is downloaded with :func:`download_model`
    (a cache hit costs nothing, and works with ``HF_HUB_OFFLINE=1``). Synthetic catalogue names raise
    :class:`ModelDownloadError`: they are made by ``bitnet.models.synthetic``, not downloaded.
    """
    text = os.fspath(name_or_dir)
    path = Path(text).expanduser()
    if path.exists():
        return _check_local_checkpoint(path.resolve())
    if isinstance(name_or_dir, os.PathLike) or _looks_like_path(text):
        raise ModelDownloadError(f"local checkpoint {path} does not exist.")
    if "/" in text:
        known = [
            e for e in load_catalog().values() if e.repo is not None and e.repo.casefold() == text.casefold()
        ]
        target: ModelEntry | str = known[0] if len(known) == 1 else text
    else:
        try:
            target = get_model(text)
        except UnknownModelError as exc:
            raise UnknownModelError(
                f"{exc} (and {text!r} is not an existing directory)",
                name=exc.name,
                suggestions=exc.suggestions,
            ) from None
    return download_model(target, revision=revision, cache_dir=cache_dir, token=token)
