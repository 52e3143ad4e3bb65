"""Shared fixtures. The engine is built once per test session (and cached between sessions by the
build's own fingerprint + ccache), into $BITNET_TEST_BUILD_DIR or the repo's build/ dir, the same
place `invoke build` uses, so running the tests after the README's first command rebuilds nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def engine_build_dir() -> Path:
    """Build (or verify) the engine and return its build dir."""
    from bitnet.engine.build import build_engine

    build_dir = Path(os.environ.get("BITNET_TEST_BUILD_DIR", REPO_ROOT / "build"))
    result = build_engine(build_dir=build_dir)
    return result.build_dir


@pytest.fixture(scope="session")
def engine_bin_dir(engine_build_dir: Path) -> Path:
    """The bin dir holding llama-completion, llama-server, llama-bench and the CPU variant libraries."""
    return engine_build_dir / "bin"
