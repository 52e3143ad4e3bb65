"""bitnet.bench.busy: the busy loop benchmarks run beside the engine (bench specs' `busy`)."""

from __future__ import annotations

import os

import pytest

from bitnet.bench.busy import busy_host


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pinned_loop_runs_on_the_last_core_in_its_own_session_and_stops():
    with busy_host("pinned") as proc:
        assert proc is not None and _alive(proc.pid)
        assert os.sched_getaffinity(proc.pid) == {(os.cpu_count() or 1) - 1}
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)  # its own session, like another program
        pid = proc.pid
    assert not _alive(pid)


def test_free_loop_is_not_pinned_and_idle_starts_nothing():
    with busy_host("free") as proc:
        assert proc is not None and os.sched_getaffinity(proc.pid) == os.sched_getaffinity(0)
    with busy_host("idle") as nothing:
        assert nothing is None


def test_the_loop_stops_when_the_body_raises():
    with pytest.raises(RuntimeError), busy_host("pinned") as proc:
        assert proc is not None
        pid = proc.pid
        raise RuntimeError("measurement failed")
    assert not _alive(pid)


def test_unknown_condition():
    with pytest.raises(ValueError, match="idle, pinned, free"), busy_host("loaded"):
        pass
