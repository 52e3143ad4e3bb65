"""Fake llama.cpp binaries for tests: small executable Python scripts in a temporary build dir.

Each fake records one JSON file per run in `record_dir` (argv, pid, process group, the environment it
was started with, start/end wall-clock times, its grandchild's pid) and can print, sleep, fail, kill
itself with a signal, ignore SIGTERM, spawn a grandchild that sleeps, or answer ``--version`` and
``--list-devices`` like our engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# What our engine prints for `--version`, and for `--list-devices` with GGML_CPU_VARIANT_REPORT=1.
FAKE_VERSION_OUTPUT = "version: 6543 (abc1234)\nbuilt with cc (GCC) 13.2.0 for x86_64-linux-gnu\n"
FAKE_DEVICES_OUTPUT = "ggml: CPU variant libggml-cpu-avx2.so\nAvailable devices:\n  (none)\n"

_SCRIPT = r"""#!{python}
# Fake {name} written by tests/fakebin.py.
import json, os, signal, subprocess, sys, time

CONFIG = json.loads({config!r})


def started_env():
    # The environment as it was at exec time (Python may add LC_CTYPE to os.environ itself).
    try:
        with open("/proc/self/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return dict(os.environ)
    pairs = (item.decode("utf-8", "replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)
    return dict(pairs)


def save(record):
    path = os.path.join(CONFIG["record_dir"], "%s-%d.json" % (CONFIG["name"], os.getpid()))
    with open(path + ".tmp", "w") as fh:
        json.dump(record, fh)
    os.replace(path + ".tmp", path)


if CONFIG["ignore_sigterm"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild too
args = sys.argv[1:]
if args == ["--version"] and CONFIG["version_output"] is not None:
    sys.stderr.write(CONFIG["version_output"])
    sys.exit(CONFIG["version_exit"])
if args == ["--list-devices"] and CONFIG["devices_output"] is not None:
    # like our engine patch: the chosen CPU variant is only reported on request
    report = os.environ.get("GGML_CPU_VARIANT_REPORT") == "1"
    lines = CONFIG["devices_output"].splitlines(True)
    sys.stderr.write("".join(line for line in lines if report or "ggml-cpu" not in line))
    sys.exit(0)
record = {{
    "name": CONFIG["name"], "argv": args, "pid": os.getpid(), "pgid": os.getpgrp(),
    "env": started_env(), "start": time.time(), "end": None, "grandchild_pid": None,
}}
if CONFIG["grandchild"]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    record["grandchild_pid"] = child.pid
save(record)
sys.stdout.write(CONFIG["stdout"])
sys.stdout.flush()
sys.stderr.write(CONFIG["stderr"])
sys.stderr.flush()
time.sleep(CONFIG["sleep"])
record["end"] = time.time()
save(record)
if CONFIG["self_signal"]:
    os.kill(os.getpid(), CONFIG["self_signal"])
sys.exit(CONFIG["exit_code"])
"""


class FakeBinaries:
    """A temporary build dir (`build_dir`/bin) holding fake binaries, and what they recorded."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.build_dir = root / "build"
        self.bin_dir = self.build_dir / "bin"
        self.record_dir = root / "records"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.record_dir.mkdir(parents=True, exist_ok=True)

    def write(
        self,
        name: str = "llama-completion",
        *,
        path: Path | None = None,
        exit_code: int = 0,
        sleep: float = 0.0,
        stdout: str = "",
        stderr: str = "",
        ignore_sigterm: bool = False,
        grandchild: bool = False,
        self_signal: int = 0,
        version_output: str | None = None,
        version_exit: int = 0,
        devices_output: str | None = None,
        executable: bool = True,
    ) -> Path:
        """Write the fake `name` at `path` (default ``<build_dir>/bin/<name>``) and return its path.

        Without `version_output` / `devices_output`, ``--version`` / ``--list-devices`` are ordinary runs.
        """
        target = path if path is not None else self.bin_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "name": name,
            "record_dir": str(self.record_dir),
            "exit_code": exit_code,
            "sleep": sleep,
            "stdout": stdout,
            "stderr": stderr,
            "ignore_sigterm": ignore_sigterm,
            "grandchild": grandchild,
            "self_signal": self_signal,
            "version_output": version_output,
            "version_exit": version_exit,
            "devices_output": devices_output,
        }
        target.write_text(_SCRIPT.format(python=sys.executable, name=name, config=json.dumps(config)))
        mode = 0o755 if executable else 0o644
        target.chmod(mode)
        assert bool(target.stat().st_mode & stat.S_IXUSR) == executable
        return target

    def calls(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every recorded run (of `name`, or of any fake), oldest first."""
        records = []
        for path in self.record_dir.glob("*.json"):
            record = json.loads(path.read_text())
            if name is None or record["name"] == name:
                records.append(record)
        return sorted(records, key=lambda r: r["start"])

    def wait_for_call(self, name: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
        """Block until a fake has started (and recorded itself); return its record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.calls(name)
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no fake {name or ''} started within {timeout} s")

    async def await_call(self, name: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
        """`wait_for_call` for coroutines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.calls(name)
            if found:
                return found[0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no fake {name or ''} started within {timeout} s")

    def kill_leftovers(self) -> None:
        """Test teardown: SIGKILL any recorded process still running, so a failing test leaks nothing."""
        for record in self.calls():
            for pid in (record["pid"], record["grandchild_pid"]):
                if pid and is_running(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def write_model(path: Path, magic: bytes = b"GGUF") -> Path:
    """A minimal GGUF that passes the runtime's checks (bitnet.models.formats.check): the hyper-parameters, a
    4-token vocabulary and a zero token_embd.weight; no layers, so a real engine would refuse it."""

    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text.encode())) + text.encode()

    def kv(key: str, vtype: int, payload: bytes) -> bytes:
        return string(key) + struct.pack("<I", vtype) + payload

    n_embd, tokens = 32, ["<s>", "</s>", "a", "b"]
    hparams = {"block_count": 1, "embedding_length": n_embd, "context_length": 64, "feed_forward_length": 64,
               "attention.head_count": 2, "attention.head_count_kv": 1}  # fmt: skip
    kvs = [kv("general.architecture", 8, string("bitnet")), kv("tokenizer.ggml.model", 8, string("gpt2"))]
    kvs += [kv(f"bitnet.{key}", 4, struct.pack("<I", value)) for key, value in hparams.items()]
    kvs.append(
        kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, len(tokens)) + b"".join(map(string, tokens)))
    )
    info = string("token_embd.weight") + struct.pack("<IQQIQ", 2, n_embd, len(tokens), 0, 0)  # F32, offset 0
    header = magic + struct.pack("<IQQ", 3, 1, len(kvs)) + b"".join(kvs) + info
    path.write_bytes(header + bytes(-len(header) % 32) + bytes(4 * n_embd * len(tokens)))
    return path


def is_running(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def assert_gone(pid: int, *, ours: bool = True, timeout: float = 10.0) -> None:
    """Assert that process `pid` is gone, polling for up to `timeout` s.

    For our own children (`ours`) that means reaped: ``os.kill(pid, 0)`` raises ProcessLookupError.
    A grandchild is reaped by init, which may be slow, so a zombie (dead, not yet reaped) also counts.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if not ours and not is_running(pid):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} is still there {timeout} s later")
        time.sleep(0.02)


# --- fixtures of test_runtime, test_supervisor and test_cli (loaded with pytest_plugins = ["fakebin"]) --


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[FakeBinaries]:
    """A temporary build dir for fake llama binaries; whatever they left running is killed after."""
    bins = FakeBinaries(tmp_path)
    yield bins
    bins.kill_leftovers()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A minimal file that passes the runtime's GGUF check."""
    return write_model(tmp_path / "model.gguf")
