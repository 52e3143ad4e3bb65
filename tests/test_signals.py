"""No orphans, no leftovers: every entry point stops its engine on SIGINT, SIGTERM and SIGHUP (exit
130/143/129), the engine dies with its parent even on SIGKILL, and interrupted writes leave no temp file
(or, after SIGKILL, the next write of the same file removes it).

Entry points × signals run against fake engines (quick, and they spawn a grandchild the process-group
kill must reach); the real engine and real server cover the signals a fake could hide.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakebin import FakeBinaries, assert_gone, is_running
from servertools import FdReader, pid_gone, processes_using

from bitnet import BitNetRuntime
from bitnet.errors import StopRequested
from bitnet.models._tempfiles import new_temp, remove_stale_temps
from bitnet.runtime.process import die_with_parent, stop_signals

REPO_ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["fakebin", "server_fixtures"]

SIGNALS = [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "SIGTERM"),
    (signal.SIGHUP, 129, "SIGHUP"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def entry_argv(entry: str, model: Path, build_dir: Path) -> tuple[list[str], str]:
    """The command line of `entry` on `model`, and the engine binary it starts."""
    py = sys.executable
    if entry == "run_inference.py":
        return [py, entry, "-m", str(model), "-p", "hi", "--build-dir", str(build_dir)], "llama-completion"
    if entry == "run_inference_server.py":
        port = str(free_port())
        return [py, entry, "-m", str(model), "--port", port, "--build-dir", str(build_dir)], "llama-server"
    if entry == "invoke infer":
        argv = [py, "-m", "invoke", "infer", "--model", str(model), "--prompt", "hi"]
        return [*argv, "--build-dir", str(build_dir)], "llama-completion"
    assert entry == "invoke serve"
    argv = [py, "-m", "invoke", "serve", "--model", str(model), "--port", str(free_port())]
    return [*argv, "--build-dir", str(build_dir)], "llama-server"


def start(argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from an interactive shell: some CI shells start background jobs with SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,  # type: ignore[call-overload]
    )


ENTRIES = ["run_inference.py", "run_inference_server.py", "invoke infer", "invoke serve"]


@pytest.mark.parametrize(("sig", "code", "words"), SIGNALS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_each_entry_point_stops_its_engine_on_a_signal(
    fakes: FakeBinaries, model: Path, entry: str, sig: int, code: int, words: str
) -> None:
    argv, binary = entry_argv(entry, model, fakes.build_dir)
    fakes.write(binary, sleep=60, grandchild=True)
    proc = start(argv)
    try:
        record = fakes.wait_for_call(binary)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert words in err and "Traceback" not in err
    assert_gone(record["pid"], ours=False, timeout=0)  # stopped before the entry point exited
    assert_gone(record["grandchild_pid"], ours=False)  # its whole process group


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_engine_dies_with_its_parent_even_on_sigkill(
    fakes: FakeBinaries, model: Path, entry: str
) -> None:
    """SIGKILL cannot be caught; the kernel kills the engine for us (PR_SET_PDEATHSIG)."""
    argv, binary = entry_argv(entry, model, fakes.build_dir)
    fakes.write(binary, sleep=60)
    proc = start(argv)
    try:
        record = fakes.wait_for_call(binary)
        assert is_running(record["pid"])
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert_gone(record["pid"], ours=False)


def test_die_with_parent_kills_the_child_when_the_parent_exits() -> None:
    """Even a parent that just returns (no handler runs, nothing is stopped) takes the child along."""
    code = (
        "import subprocess, sys\n"
        "from bitnet.runtime.process import die_with_parent\n"
        "hook = die_with_parent()\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], preexec_fn=hook)\n"
        "print(p.pid, flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=True
    )
    assert die_with_parent() is not None  # Linux: the test is meaningful here
    pid = int(out.stdout)
    assert_gone(pid, ours=False)  # its parent exited normally: the kernel killed the sleeper


def test_stop_signals_turn_each_signal_into_stop_requested() -> None:
    for sig, code, _ in SIGNALS:
        with pytest.raises(StopRequested) as info, stop_signals():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises before this ends
        assert info.value.signum == sig and info.value.exit_code == code
        assert signal.getsignal(sig) is not None and signal.getsignal(sig) != signal.SIG_IGN


# ---------------------------------------------------------------------- the real engine


def wait_for_engine(model: Path, name: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in processes_using(model):
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith(name[:15]):
                return pid
        time.sleep(0.05)
    raise AssertionError(f"{name} did not start on {model}")


@pytest.mark.engine
@pytest.mark.usefixtures("no_leftover_processes")
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGKILL, -signal.SIGKILL)]
)
def test_run_inference_stops_the_real_engine(
    tiny_model: Path, runtime: BitNetRuntime, sig: int, code: int
) -> None:
    """A chat waiting for its next line (stdin open, nothing typed), as in a terminal being closed."""
    proc = subprocess.Popen(
        [sys.executable, "run_inference.py", "-m", str(tiny_model), "-p", "You are terse.", "-cnv", "-n", "4",
         "-t", "1", "--build-dir", str(runtime.build_dir)],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        engine = wait_for_engine(tiny_model, "llama-completion")
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == code
        # checked while its stdin is still open: at EOF the chat would end by itself
        assert pid_gone(engine, timeout=10), f"llama-completion {engine} outlived run_inference.py"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    assert "Traceback" not in err


@pytest.mark.engine
@pytest.mark.usefixtures("no_leftover_processes")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGHUP, 129), (signal.SIGKILL, -signal.SIGKILL)])
def test_server_cli_stops_the_real_server(
    tiny_model: Path, runtime: BitNetRuntime, sig: int, code: int
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "run_inference_server.py", "-m", str(tiny_model), "-t", "1", "--port", str(port),
         "--build-dir", str(runtime.build_dir)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    out = FdReader(proc.stdout.fileno())
    try:
        assert out.read_until(b"Ctrl-C stops it.", timeout=60), out.data.decode(errors="replace")
        line = next(ln for ln in out.data.decode().splitlines() if ln.startswith("ready: "))
        server_pid = int(line.split("pid ")[1].split(";")[0])
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert pid_gone(server_pid, timeout=10), "llama-server outlived run_inference_server.py"


# ---------------------------------------------------------------------- temp files of interrupted writes


def temps_of(out: Path) -> list[Path]:
    return sorted(
        p for p in out.parent.iterdir() if p.name.startswith(f".{out.stem}") and p.name.endswith(".tmp")
    )


def start_dummy_write(out: Path) -> subprocess.Popen[str]:
    """`invoke dummy` of a model big enough (~200 MB) to be caught mid-write."""
    return start([sys.executable, "-m", "invoke", "dummy", "--size", "350M", "--outfile", str(out)])


def wait_for_temp(proc: subprocess.Popen[str], out: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in temps_of(out) if p.stat().st_size > 1_000_000]
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the write never started")


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_an_interrupted_write_removes_its_temp_file(tmp_path: Path, sig: int, code: int) -> None:
    out = tmp_path / "model.gguf"
    proc = start_dummy_write(out)
    try:
        wait_for_temp(proc, out)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert temps_of(out) == [] and not out.exists()
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_later_write_removes_the_temp_of_a_killed_writer(tmp_path: Path) -> None:
    from bitnet.models.synthetic import write_dummy_model

    out = tmp_path / "model.gguf"
    proc = start_dummy_write(out)
    try:
        left = wait_for_temp(proc, out)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert left.exists()  # SIGKILL: nobody could clean up
    other = tmp_path / ".other.4242-abc.gguf.tmp"  # another file's temp is not ours to remove
    other.write_bytes(b"x")
    write_dummy_model("tiny", out, progress=False)
    assert not left.exists() and temps_of(out) == [] and out.stat().st_size > 0
    assert other.exists()


def test_stale_temp_rules(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = new_temp(out)
    assert mine.name.startswith(f".m.{os.getpid()}-") and mine.name.endswith(".gguf.tmp")
    of_dead = tmp_path / f".m.{dead.pid}-xyz.gguf.tmp"
    of_dead_tagged = tmp_path / f".m-f16head.{dead.pid}-xyz.gguf.tmp"
    legacy_old, legacy_new = tmp_path / ".m-ab12cd.gguf.tmp", tmp_path / ".m-ef34gh.gguf.tmp"
    for path in (of_dead, of_dead_tagged, legacy_old, legacy_new):
        path.write_bytes(b"x")
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    unrelated = [tmp_path / "m.gguf.tmp", tmp_path / ".n.1-x.gguf.tmp", tmp_path / "m.gguf"]
    for path in unrelated:
        path.write_bytes(b"x")
    removed = remove_stale_temps(out)
    assert sorted(removed) == sorted([of_dead, of_dead_tagged, legacy_old])
    assert mine.exists() and legacy_new.exists() and all(p.exists() for p in unrelated)
    with pytest.raises(ValueError, match="tag"):
        new_temp(out, "../x")


# ---------------------------------------------------------------------- run_inference's timeout


def test_run_inference_timeout_stops_the_engine(fakes: FakeBinaries, model: Path) -> None:
    from bitnet import RuntimeTimeoutError

    fakes.write("llama-completion", sleep=60, grandchild=True, stderr="loading\n")
    runtime = BitNetRuntime(build_dir=fakes.build_dir)
    with pytest.raises(RuntimeTimeoutError, match="ran longer than the timeout of 0.5 s") as info:
        runtime.run_inference(model=model, prompt="hi", timeout=0.5)
    record = fakes.calls("llama-completion")[0]
    assert_gone(record["pid"], timeout=0)
    assert_gone(record["grandchild_pid"], ours=False)
    assert info.value.timeout == 0.5 and "loading" in info.value.stderr_tail
    for bad in (0, -1, float("nan"), True, "5"):
        with pytest.raises(ValueError, match="timeout"):
            runtime.run_inference(model=model, prompt="hi", timeout=bad)  # type: ignore[arg-type]


def test_run_inference_cli_timeout_exits_124(fakes: FakeBinaries, model: Path) -> None:
    fakes.write("llama-completion", sleep=60)
    argv, _ = entry_argv("run_inference.py", model, fakes.build_dir)
    done = subprocess.run(
        [*argv, "--timeout", "0.5"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 124, done.stderr
    assert "ran longer than the timeout" in done.stderr and "Traceback" not in done.stderr
    assert_gone(fakes.calls("llama-completion")[0]["pid"], ours=False, timeout=0)
