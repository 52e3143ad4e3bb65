"""Fixtures of the server and chat tests, loaded by them with ``pytest_plugins = ["server_fixtures"]``:
the tiny model with a chat template, a runtime on the session's engine, and the check that a test
leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servertools import TINY_CHAT_TEMPLATE, add_chat_template, descendants, processes_using

from bitnet import BitNetRuntime


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this session's server/chat test models live (engine processes are found by this path)."""
    return tmp_path_factory.mktemp("server-models")


@pytest.fixture(scope="session")
def tiny_model(model_dir: Path) -> Path:
    """The offline default model (bitnet.models.synthetic "tiny"), with a chat template added."""
    from bitnet.models.synthetic import write_dummy_model

    plain = model_dir / "tiny-plain.gguf"
    write_dummy_model("tiny", plain, progress=False)
    return add_chat_template(plain, model_dir / "tiny.gguf", TINY_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def runtime(engine_bin_dir: Path) -> BitNetRuntime:
    """A runtime on the engine the session fixture built."""
    return BitNetRuntime(build_dir=engine_bin_dir.parent)


@pytest.fixture
def no_leftover_processes(model_dir: Path) -> Iterator[None]:
    """After the test, no process it started is left: not our descendants, not orphans on our models."""
    before = descendants(os.getpid()) | processes_using(model_dir)  # e.g. a module-scoped server
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = (descendants(os.getpid()) | processes_using(model_dir)) - before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    details = {}
    for pid in left:  # do not leak into the next test, but fail this one
        with contextlib.suppress(OSError):
            details[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()[:120]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {details or left}"
