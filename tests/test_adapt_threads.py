"""The adaptive thread count (patch 0015): with one core busy, a graph's threads wait at every barrier for the
one that shares its core, so the pool measures each thread's CPU time per graph and tries one thread fewer
when a thread was off its core. These tests run the real engine next to a real busy process: they check that
the engine notices (it tries fewer threads, as its log says), that GGML_ADAPT_THREADS=off turns it off, and
that a value it does not know is named. Whether fewer threads then win is a matter of timing, which tests do
not assert (bench/contention.py measures it); that the thread count never changes the output is
tests/test_split.py's "flip" run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bitnet.bench.busy import busy_host
from bitnet.engine.contract import ADAPT_THREADS_ENV, BENCH_BINARY, KERNELS_ENV

pytestmark = pytest.mark.engine

TRYING = "adaptive threads: trying 1 threads against 2"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 125M shape: a decode step takes milliseconds (the pool judges graphs of >= 1 ms only)."""
    from bitnet.models.synthetic import write_dummy_model

    path = tmp_path_factory.mktemp("adapt") / "dummy-125M.gguf"
    write_dummy_model("125M", path, progress=False)
    return path


@pytest.fixture
def busy_last_core() -> Iterator[None]:
    """The bench's busy loop (bitnet.bench.busy): in its own session, pinned to the last core."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores: one busy, one free")
    with busy_host("pinned") as hog:
        assert hog is not None and hog.poll() is None, "the busy loop did not start"
        yield


def _bench(bin_dir: Path, model: Path, adapt: str, n_gen: int = 64) -> str:
    env = {**os.environ, KERNELS_ENV: "1", ADAPT_THREADS_ENV: adapt}
    argv = [str(bin_dir / BENCH_BINARY), "-m", str(model), "-p", "0", "-n", str(n_gen), "-t", "2", "-r", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f" tg{n_gen} |" in out.stdout, out.stdout
    return out.stderr


@pytest.mark.usefixtures("busy_last_core")
def test_a_busy_core_makes_the_pool_try_one_thread_fewer(engine_bin_dir: Path, model: Path) -> None:
    log = _bench(engine_bin_dir, model, "log", n_gen=128)
    assert "adaptive threads: on, logged" in log
    assert TRYING in log, log[-3000:]
    # every try ends in a decision, each naming the count it keeps
    tries = log.count("adaptive threads: trying")
    decisions = [line for line in log.splitlines() if " threads won " in line or " threads lost " in line]
    assert tries - 1 <= len(decisions) <= tries
    assert all(line.rstrip().endswith(("now 1", "now 2")) for line in decisions)


@pytest.mark.usefixtures("busy_last_core")
def test_off_keeps_the_plans_thread_count_on_a_busy_host(engine_bin_dir: Path, model: Path) -> None:
    log = _bench(engine_bin_dir, model, "off")
    assert "adaptive threads" not in log


def test_an_unknown_value_is_named_and_the_engine_adapts(engine_bin_dir: Path, model: Path) -> None:
    log = _bench(engine_bin_dir, model, "sometimes", n_gen=2)
    assert "GGML_ADAPT_THREADS=sometimes not understood (off, log or flip); adapting" in log
