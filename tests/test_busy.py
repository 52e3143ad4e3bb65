"""bitnet.bench.busy: the busy loop benchmarks run beside the engine (bench specs' `busy`)."""

from __future__ import annotations

import math
import os
import time

import pytest

from bitnet.bench.busy import LOADAVG_TAU_S, busy_host, own_busy_load


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


def test_bursty_loop_is_pinned_in_its_own_session_and_both_runs_and_sleeps():
    with busy_host("bursty") as proc:
        assert proc is not None and _alive(proc.pid)
        assert os.sched_getaffinity(proc.pid) == {(os.cpu_count() or 1) - 1}
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)
        states = set()
        for _ in range(400):  # 8 ms busy, 8 ms asleep: both states show within a few samples
            with open(f"/proc/{proc.pid}/stat") as fh:
                states.add(fh.read().split(")")[-1].split()[0])
            if {"R", "S"} <= states:
                break
            time.sleep(0.003)
        assert {"R", "S"} <= states, states
        pid = proc.pid
    assert not _alive(pid)


def test_unknown_condition():
    with pytest.raises(ValueError, match="idle, pinned, bursty, free"), busy_host("loaded"):
        pass


def test_the_loops_share_of_the_load_average_rises_and_decays_with_a_60_s_time_constant():
    assert own_busy_load(1000.0, []) == 0.0
    running = [(1000.0, None)]
    early, later = own_busy_load(1001.0, running), own_busy_load(1060.0, running)
    assert 0.08 < early < 0.2  # counted from one 5 s update before it started
    assert later == pytest.approx(1 - math.exp(-65 / LOADAVG_TAU_S))
    assert own_busy_load(5000.0, running) == pytest.approx(1.0)
    stopped = [(0.0, 1000.0)]  # ran long, stopped at t = 1000 s
    assert own_busy_load(1000.0, stopped) == pytest.approx(1.0)
    # one update later the kernel may not have decayed yet: the share is read 5 s back, never lower
    assert own_busy_load(1005.0, stopped) == pytest.approx(1.0)
    assert own_busy_load(1065.0, stopped) == pytest.approx(math.exp(-1.0))
    two = [(0.0, 1000.0), (1000.0, None)]  # a second loop right after the first: they add up
    now = math.exp(-65 / LOADAVG_TAU_S) + 1 - math.exp(-70 / LOADAVG_TAU_S)
    update_before = math.exp(-1.0) + 1 - math.exp(-65 / LOADAVG_TAU_S)
    assert own_busy_load(1065.0, two) == pytest.approx(max(now, update_before))
    assert own_busy_load(999.0, [(1000.0, None)]) > 0.0  # an update just after the start counts it
    assert own_busy_load(990.0, [(1000.0, None)]) == 0.0
