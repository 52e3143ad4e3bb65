"""bitnet.models.hub against real huggingface_hub code: a hand-built HF cache (HF_HUB_OFFLINE=1) and a tiny
in-process fake Hub on 127.0.0.1 that speaks the few Hub HTTP routes snapshot_download uses. No test
talks to the internet.

huggingface_hub reads HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE / HF_ENDPOINT once, at import. `hf_env`
therefore sets the environment variables *and* the module constants derived from them, exactly as a
fresh interpreter would; `test_environment_variables_alone_are_honoured` proves the plain-env path in a
subprocess. HF_TOKEN is read at call time, so it is only set in the environment.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http as hf_http

from bitnet.errors import ModelDownloadError, UnknownModelError
from bitnet.models.catalog import ModelEntry, get_model
from bitnet.models.hub import download_model, resolve_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40

# ---------------------------------------------------------------------------------------------------
# Environment and cache helpers


def _git_blob_sha1(data: bytes) -> str:
    """The git object id the Hub reports as a small file's etag / tree `oid`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def make_hf_cache(
    hub_cache: Path,
    repo_id: str,
    files: dict[str, bytes],
    *,
    commit: str = COMMIT_A,
    refs: tuple[str, ...] = ("main",),
    tree_listing: dict[str, bytes] | None = None,
) -> Path:
    """Lay out a model in a Hugging Face cache the way huggingface_hub stores it and return the
    snapshot dir (ref: huggingface_hub file_download.py `_hf_hub_download_to_cache_dir`,
    `repo_folder_name`, `_cache_commit_hash_for_specific_revision`; _tree_cache.py):

        <hub_cache>/models--{org}--{name}/blobs/<etag>             file contents
                                         /snapshots/<commit>/<path>  relative symlink ../../blobs/<etag>
                                         /refs/<branch>              the commit hash, no newline
                                         /trees/<commit>.json        optional: the repo's file listing,
                                                                     used to detect incomplete snapshots
    """
    storage = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        etag = hashlib.sha256(data).hexdigest()  # LFS files are stored under their sha256
        (storage / "blobs" / etag).write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(storage / "blobs" / etag, link.parent))
    for ref in refs:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # read back with f.read(): no trailing newline
    if tree_listing is not None:
        (storage / "trees").mkdir(exist_ok=True)
        listing = {
            "format_version": 1,
            "files": {p: {"size": len(d), "blob_id": _git_blob_sha1(d)} for p, d in tree_listing.items()},
        }
        (storage / "trees" / f"{commit}.json").write_text(json.dumps(listing))
    return snapshot


@pytest.fixture
def hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Path]:
    """Point huggingface_hub at a fresh HF_HOME under tmp_path; returns a setter for more variables.

    Calling the returned function with e.g. ``HF_HUB_OFFLINE="1"`` or ``HF_ENDPOINT=url`` sets the
    variable and the constant huggingface_hub derived from it at import time.
    """
    home = tmp_path / "hf_home"
    hub_cache = home / "hub"
    hub_cache.mkdir(parents=True)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    # An endpoint nothing listens on: a test that forgets to configure the Hub cannot reach the internet.
    _set_endpoint(monkeypatch, f"http://127.0.0.1:{_closed_port()}")

    def setenv(**env: str) -> Path:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
            if key == "HF_HUB_OFFLINE":
                monkeypatch.setattr(
                    hf_constants, "HF_HUB_OFFLINE", value.upper() in {"1", "ON", "YES", "TRUE"}
                )
            elif key == "HF_ENDPOINT":
                _set_endpoint(monkeypatch, value)
            elif key == "HF_HUB_CACHE":
                monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", value)
        return hub_cache

    return setenv


def _set_endpoint(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """HF_ENDPOINT feeds two constants: the API base and the file-resolve URL template."""
    url = url.rstrip("/")
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------
# A fake Hub: the routes snapshot_download + hf_hub_download use, with the Hub's error headers
# (ref: huggingface_hub hf_api.py model_info / _iter_repo_tree_pages, file_download.py
# get_hf_file_metadata, utils/_http.py hf_raise_for_status).


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = COMMIT_A
    gated_token: str | None = None  # when set, only "Bearer <gated_token>" gets in


@dataclass
class FakeHub:
    url: str
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, auth)

    def file_requests(self, method: str = "GET") -> list[str]:
        """Paths of files fetched through /resolve/, in request order."""
        return [
            p.split("/resolve/", 1)[1].split("/", 1)[1]
            for m, p, _ in self.requests
            if m == method and "/resolve/" in p
        ]


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _reply(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, send_body: bool = True
    ) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _error(self, status: int, code: str, send_body: bool) -> None:
        self._reply(status, json.dumps({"error": code}).encode(), {"X-Error-Code": code}, send_body)

    def _serve(self, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        auth = self.headers.get("Authorization")
        self.hub.requests.append((self.command, path, auth))
        api = path.startswith("/api/models/")
        parts = path.removeprefix("/api/models/" if api else "/").split("/")
        repo_id = "/".join(parts[:2])
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404 if auth else 401, "RepoNotFound", send_body)
        if repo.gated_token is not None and auth != f"Bearer {repo.gated_token}":
            return self._error(403, "GatedRepo", send_body)
        kind, rev = parts[2], parts[3]
        if rev not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", send_body)
        if api and kind == "revision":
            info = {"id": repo_id, "sha": repo.commit, "siblings": [{"rfilename": f} for f in repo.files]}
            return self._reply(
                200, json.dumps(info).encode(), {"Content-Type": "application/json"}, send_body
            )
        if api and kind == "tree":
            tree = [
                {"type": "file", "path": f, "size": len(d), "oid": _git_blob_sha1(d)}
                for f, d in repo.files.items()
            ]
            return self._reply(
                200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, send_body
            )
        if not api and kind == "resolve":
            filename = "/".join(parts[4:])
            if filename not in repo.files:
                return self._error(404, "EntryNotFound", send_body)
            data = repo.files[filename]
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{_git_blob_sha1(data)}"'}
            return self._reply(200, data, headers, send_body)
        return self._error(404, "EntryNotFound", send_body)


@pytest.fixture
def fake_hub(hf_env: Callable[..., Path]) -> Iterator[FakeHub]:
    """A fake Hub on an ephemeral 127.0.0.1 port, set as HF_ENDPOINT."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    hub = FakeHub(url=f"http://127.0.0.1:{server.server_address[1]}")
    _Handler.hub = hub
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    hf_env(HF_ENDPOINT=hub.url)
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _entry(**overrides: object) -> ModelEntry:
    fields: dict[str, object] = {
        "name": "test-model",
        "source": "packed",
        "architecture": "BitNetForCausalLM",
        "hidden_act": "relu2",
        "repo": "org/model",
        "revision": COMMIT_A,
        "allow_patterns": ("config.json", "*.safetensors"),
        "download_bytes": 1000,
        "params": 1000,
    }
    fields.update(overrides)
    return ModelEntry(**fields)  # type: ignore[arg-type]


REPO_FILES = {
    "config.json": b'{"architectures": ["BitNetForCausalLM"]}',
    "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    "pytorch_model.bin": b"not wanted " * 100,
    "README.md": b"# model card",
}


# ---------------------------------------------------------------------------------------------------
# Offline: hand-built cache, HF_HUB_OFFLINE=1


def test_offline_cache_hit_resolves_pinned_snapshot(hf_env: Callable[..., Path]) -> None:
    hub_cache = hf_env(HF_HUB_OFFLINE="1")
    # refs/main points at a newer commit; the pin must win.
    make_hf_cache(
        hub_cache, "org/model", {"config.json": b"old", "model.safetensors": b"w0"}, commit=COMMIT_A, refs=()
    )
    make_hf_cache(
        hub_cache, "org/model", {"config.json": b"new", "model.safetensors": b"w1"}, commit=COMMIT_B
    )

    pinned = download_model(_entry(revision=COMMIT_A))
    assert pinned == hub_cache / "models--org--model" / "snapshots" / COMMIT_A
    assert (pinned / "config.json").read_bytes() == b"old"

    by_branch = download_model("org/model")  # no revision: main -> refs/main -> COMMIT_B
    assert by_branch.name == COMMIT_B
    assert (by_branch / "config.json").read_bytes() == b"new"


def test_offline_cache_miss_says_how_to_go_on(hf_env: Callable[..., Path]) -> None:
    hub_cache = hf_env(HF_HUB_OFFLINE="1")
    make_hf_cache(hub_cache, "org/model", {"config.json": b"{}"})
    with pytest.raises(ModelDownloadError) as info:
        download_model("org/other-model", revision=COMMIT_A)
    msg = str(info.value)
    assert "org/other-model@" + COMMIT_A in msg
    assert str(hub_cache) in msg
    assert "HF_HUB_OFFLINE" in msg
    assert "--model-dir" in msg
    assert "invoke setup --model tiny" in msg
    assert info.value.repo_id == "org/other-model"


def test_offline_incomplete_snapshot_respects_allow_patterns(hf_env: Callable[..., Path]) -> None:
    hub_cache = hf_env(HF_HUB_OFFLINE="1")
    cached = {"config.json": REPO_FILES["config.json"], "model.safetensors": REPO_FILES["model.safetensors"]}
    make_hf_cache(hub_cache, "org/model", cached, tree_listing=REPO_FILES)

    # Only the needed files are cached: fine with the entry's allow_patterns ...
    assert download_model(_entry()).name == COMMIT_A
    # ... but asking for every file finds the snapshot incomplete (README.md, pytorch_model.bin missing).
    with pytest.raises(ModelDownloadError, match="not completely") as info:
        download_model("org/model", revision=COMMIT_A)
    msg = str(info.value)
    assert "README.md" in msg or "pytorch_model.bin" in msg  # the first missing file fetched
    assert "--model-dir" in msg


def test_checksums_from_the_catalogue_are_verified(hf_env: Callable[..., Path]) -> None:
    hub_cache = hf_env(HF_HUB_OFFLINE="1")
    data = b"GGUF fake"
    make_hf_cache(hub_cache, "org/gguf", {"m.gguf": data})
    good = _entry(
        repo="org/gguf", allow_patterns=("m.gguf",), sha256=(("m.gguf", hashlib.sha256(data).hexdigest()),)
    )
    assert (download_model(good) / "m.gguf").read_bytes() == data
    bad = _entry(repo="org/gguf", allow_patterns=("m.gguf",), sha256=(("m.gguf", "0" * 64),))
    with pytest.raises(ModelDownloadError, match="sha256"):
        download_model(bad)


def test_patterns_matching_nothing_are_an_error(hf_env: Callable[..., Path]) -> None:
    hub_cache = hf_env(HF_HUB_OFFLINE="1")
    make_hf_cache(hub_cache, "org/model", {"README.md": b"card"})
    with pytest.raises(ModelDownloadError, match="no file matching"):
        download_model(_entry())


def test_synthetic_entries_are_not_downloaded(hf_env: Callable[..., Path]) -> None:
    with pytest.raises(ModelDownloadError, match="synthetic") as info:
        download_model(get_model("tiny"))
    assert "invoke setup --model tiny" in str(info.value)


def test_environment_variables_alone_are_honoured(tmp_path: Path) -> None:
    """A fresh interpreter configured only by HF_HOME + HF_HUB_OFFLINE finds the cache: we pass None
    through and huggingface_hub does the rest."""
    home = tmp_path / "home"
    make_hf_cache(home / "hub", "org/model", {"config.json": b"{}", "model.safetensors": b"w"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    code = (
        "from bitnet.models.hub import download_model, ModelDownloadError\n"
        "print(download_model('org/model'))\n"
        "try:\n    download_model('org/missing')\n"
        "except ModelDownloadError as e:\n    print('MISS', 'HF_HUB_OFFLINE' in str(e))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out == [str(home / "hub" / "models--org--model" / "snapshots" / COMMIT_A), "MISS True"]


# ---------------------------------------------------------------------------------------------------
# Online against the fake Hub


def test_download_fetches_only_allowed_files_then_works_offline(
    fake_hub: FakeHub, hf_env: Callable[..., Path]
) -> None:
    fake_hub.repos["org/model"] = FakeRepo(files=dict(REPO_FILES))
    snapshot = download_model(_entry())

    assert sorted(fake_hub.file_requests("GET")) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors"]
    assert (snapshot / "model.safetensors").read_bytes() == REPO_FILES["model.safetensors"]
    assert all(f"/{COMMIT_A}/" in p for m, p, _ in fake_hub.requests if "/resolve/" in p)  # the pinned commit

    # The cache huggingface_hub wrote is found offline, with no request at all.
    seen = len(fake_hub.requests)
    hf_env(HF_HUB_OFFLINE="1")
    assert download_model(_entry()) == snapshot
    assert len(fake_hub.requests) == seen


def test_download_into_local_dir(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.repos["org/model"] = FakeRepo(files=dict(REPO_FILES))
    target = tmp_path / "checkpoint"
    out = download_model("org/model", local_dir=target, allow_patterns=["*.json"])
    assert out == target.resolve()
    assert (target / "config.json").read_bytes() == REPO_FILES["config.json"]
    assert not (target / "model.safetensors").exists()
    assert fake_hub.file_requests("GET") == ["config.json"]


def test_hf_token_from_environment_is_sent(
    fake_hub: FakeHub, hf_env: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.repos["org/model"] = FakeRepo(files=dict(REPO_FILES))
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    download_model(_entry())
    auths = {auth for _, _, auth in fake_hub.requests}
    assert auths == {"Bearer hf_from_env"}

    # An explicit token wins over the environment.
    fake_hub.requests.clear()
    download_model(_entry(revision="main"), token="hf_explicit", cache_dir=hf_env() / "other")
    assert {auth for _, _, auth in fake_hub.requests} == {"Bearer hf_explicit"}


def test_gated_repo(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.repos["org/model"] = FakeRepo(files=dict(REPO_FILES), gated_token="hf_ok")
    with pytest.raises(ModelDownloadError) as info:
        download_model(_entry())
    msg = str(info.value)
    assert "gated" in msg and "HF_TOKEN" in msg and "hf auth login" in msg
    assert "https://huggingface.co/org/model" in msg

    monkeypatch.setenv("HF_TOKEN", "hf_ok")
    assert (download_model(_entry()) / "config.json").is_file()


def test_repository_not_found(fake_hub: FakeHub) -> None:
    with pytest.raises(ModelDownloadError, match="not found on the Hugging Face Hub") as info:
        download_model("org/nope")
    assert "HF_TOKEN" in str(info.value)


def test_revision_not_found(fake_hub: FakeHub) -> None:
    fake_hub.repos["org/model"] = FakeRepo(files=dict(REPO_FILES))
    with pytest.raises(ModelDownloadError) as info:
        download_model(_entry(revision=COMMIT_B))
    msg = str(info.value)
    assert f"revision {COMMIT_B!r} does not exist in org/model" in msg
    assert "models/catalog.toml" in msg


class _NoSleepTime:
    """Stands in for the `time` module inside huggingface_hub's HTTP retry loop: same clock, no waiting."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> _NoSleepTime:
    """huggingface_hub retries a failed connection 5 times over ~23 s; skip the waiting in tests."""
    fake = _NoSleepTime()
    monkeypatch.setattr(hf_http, "time", fake)
    return fake


def test_unreachable_hub_without_cache(hf_env: Callable[..., Path], no_backoff: _NoSleepTime) -> None:
    hf_env(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(ModelDownloadError) as info:
        download_model(_entry())
    msg = str(info.value)
    assert msg.startswith("Cannot reach the Hugging Face Hub")
    assert "org/model@" + COMMIT_A in msg
    assert "HF_HUB_OFFLINE=1" in msg and "--model-dir" in msg and "invoke setup --model tiny" in msg


def test_unreachable_hub_falls_back_to_cache(hf_env: Callable[..., Path], no_backoff: _NoSleepTime) -> None:
    hub_cache = hf_env(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    make_hf_cache(hub_cache, "org/model", {"config.json": b"{}", "model.safetensors": b"w"})
    assert download_model(_entry()).name == COMMIT_A


# ---------------------------------------------------------------------------------------------------
# resolve_checkpoint


def test_resolve_local_directory(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"w")
    assert resolve_checkpoint(ckpt) == ckpt.resolve()
    assert resolve_checkpoint(str(ckpt)) == ckpt.resolve()

    gguf_dir = tmp_path / "g"
    gguf_dir.mkdir()
    (gguf_dir / "model.gguf").write_bytes(b"GGUF")
    assert resolve_checkpoint(gguf_dir) == gguf_dir.resolve()
    assert resolve_checkpoint(gguf_dir / "model.gguf") == (gguf_dir / "model.gguf").resolve()


def test_resolve_rejects_bad_local_paths(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelDownloadError, match="neither config.json"):
        resolve_checkpoint(empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(ModelDownloadError, match="no \\*.safetensors"):
        resolve_checkpoint(empty)
    with pytest.raises(ModelDownloadError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(ModelDownloadError, match="does not exist"):
        resolve_checkpoint("./surely/not/here")


def test_resolve_catalogue_name_offline(hf_env: Callable[..., Path]) -> None:
    hub_cache = hf_env(HF_HUB_OFFLINE="1")
    entry = get_model("2B")
    assert entry.revision is not None
    make_hf_cache(
        hub_cache, entry.repo or "", {"config.json": b"{}", "model.safetensors": b"w"}, commit=entry.revision
    )
    assert (
        resolve_checkpoint("2B")
        == hub_cache / "models--microsoft--bitnet-b1.58-2B-4T" / "snapshots" / entry.revision
    )
    # The repo id of a catalogued model uses the catalogue's pin too.
    assert resolve_checkpoint("microsoft/bitnet-b1.58-2B-4T").name == entry.revision


def test_resolve_unknown_name_suggests(hf_env: Callable[..., Path]) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_checkpoint("2B-ggfu")
    assert "'2B-gguf'" in str(info.value)
    assert "not an existing directory" in str(info.value)
    with pytest.raises(ModelDownloadError, match="synthetic"):
        resolve_checkpoint("tiny")


def test_a_failing_download_logs_one_line_per_attempt(
    hf_env: Callable[..., Path], no_backoff: _NoSleepTime
) -> None:
    import logging

    class Collect(logging.Handler):
        lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    library = logging.getLogger("huggingface_hub")  # the library prints through its own handler
    collect = Collect()
    library.addHandler(collect)
    hf_env(HF_ENDPOINT="http://no-such-host.invalid")  # a name that never resolves: the client retries
    try:
        with pytest.raises(ModelDownloadError, match="Cannot reach the Hugging Face Hub"):
            download_model(_entry())
    finally:
        library.removeHandler(collect)
    lines = [line for line in Collect.lines if "Retry" in line or "thrown while" in line]
    assert len(no_backoff.sleeps) >= 2
    assert len(lines) == len(set(lines)) == len(no_backoff.sleeps)  # one line per retried attempt
    assert all(line.startswith("download attempt failed (") and "Retrying in" in line for line in lines)
