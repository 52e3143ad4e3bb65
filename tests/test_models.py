"""Installed-model management: `invoke setup` writes a lock with the revision a download resolved to,
`invoke models` lists what is on disk from the files themselves, `invoke models --rm` removes one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_hub import COMMIT_A, hf_env, make_hf_cache  # noqa: F401 - hf_env is a fixture
from tinymodels import make_checkpoint

from bitnet.errors import ModelNotFoundError, UnknownModelError
from bitnet.models.installed import (
    LOCK_NAME,
    ModelLock,
    format_models,
    list_models,
    models_dir,
    read_lock,
    remove_model,
    resolved_revision,
    write_lock,
)
from bitnet.pipeline import setup_model

REPO = Path(__file__).resolve().parent.parent


def invoke(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_models_dir_follows_the_environment(tmp_path: Path) -> None:
    assert models_dir({}) == Path("models")
    assert models_dir({"BITNET_MODELS": str(tmp_path)}) == tmp_path


def test_resolved_revision_reads_the_cache_layout(tmp_path: Path) -> None:
    assert resolved_revision(tmp_path / "models--a--b" / "snapshots" / COMMIT_A) == COMMIT_A
    assert resolved_revision(tmp_path / "snapshots" / "main") is None
    assert resolved_revision(tmp_path / "ckpt") is None


def test_lock_round_trip_and_damaged_lock(tmp_path: Path) -> None:
    lock = ModelLock(name="m", source="hub", repo="o/m", revision="main", resolved_revision=COMMIT_A)
    write_lock(tmp_path, lock)
    back = read_lock(tmp_path)
    assert back is not None and back.resolved_revision == COMMIT_A and back.created and back.pinned
    (tmp_path / LOCK_NAME).write_text("{not json")
    assert read_lock(tmp_path) is None


def test_setup_checks_the_name_before_building(tmp_path: Path) -> None:
    build = tmp_path / "never-built"
    with pytest.raises(UnknownModelError):
        setup_model("2b-gguff", build_dir=build, models_dir=tmp_path / "models")
    assert not build.exists()  # nothing was built (or even configured) for a typo


@pytest.mark.engine
def test_setup_from_the_hub_cache_records_the_resolved_commit_then_list_and_remove(
    engine_build_dir: Path,
    tmp_path: Path,
    hf_env: Callable[..., Path],  # noqa: F811
) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", activation="relu2", seed=3)
    files = {p.name: p.read_bytes() for p in ckpt.path.iterdir() if p.is_file()}
    hub_cache = hf_env(HF_HUB_OFFLINE="1")
    make_hf_cache(hub_cache, "org/tiny-bitnet", files, commit=COMMIT_A)  # refs/main -> COMMIT_A
    root = tmp_path / "models"

    report = setup_model("org/tiny-bitnet", build_dir=engine_build_dir, models_dir=root, smoke_tokens=0)
    lock = read_lock(report.gguf.parent)
    assert lock is not None and lock.source == "hub" and lock.repo == "org/tiny-bitnet"
    assert lock.revision is None and lock.resolved_revision == COMMIT_A  # asked for main, got this
    assert any(COMMIT_A in step for step in report.steps)

    installed = list_models(root)
    assert [m.name for m in installed] == ["org--tiny-bitnet"]
    model = installed[0]
    assert (model.weight_type, model.head_type, model.activation, model.numerics) == (
        "TQ2_0", "F16", "relu2", "per_token",
    )  # fmt: skip
    assert model.size_bytes == report.gguf.stat().st_size and model.problem is None
    table = format_models(installed, root)
    assert COMMIT_A[:12] in table and "org/tiny-bitnet" in table

    listed = invoke("models", "--models-dir", str(root), "--json-out")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert rows[0]["lock"]["resolved_revision"] == COMMIT_A and rows[0]["path"] == str(report.gguf)

    refused = invoke("models", "--models-dir", str(root), "--rm", "org--tiny-bitnet")  # no TTY, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr + refused.stdout
    assert report.gguf.exists()
    unknown = invoke("models", "--models-dir", str(root), "--rm", "nope", "--yes")
    assert unknown.returncode == 1 and "org--tiny-bitnet" in unknown.stderr + unknown.stdout
    removed = invoke("models", "--models-dir", str(root), "--rm", "org--tiny-bitnet", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert not report.gguf.parent.exists() and list_models(root) == []
    assert "no models in" in invoke("models", "--models-dir", str(root)).stdout


def test_listing_survives_a_damaged_file_and_remove_refuses_paths(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    found = list_models(tmp_path)
    assert len(found) == 1 and found[0].problem and "unreadable" in found[0].problem
    assert "unreadable" in format_models(found, tmp_path)
    for bad in ("..", "broken/x.gguf", "", "missing"):
        with pytest.raises(ModelNotFoundError, match="broken"):
            remove_model(bad, tmp_path)
    assert (tmp_path / "broken" / "x.gguf").exists()
