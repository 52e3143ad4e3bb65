"""RuntimeSupervisor: results, failures, timeouts, cancellation, close() and the concurrency limit.

Every test launches real child processes (fake llama binaries) under `asyncio.run`; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from fakebin import FakeBinaries, assert_gone

from bitnet import (
    BitNetRuntime,
    RuntimeConfigurationError,
    RuntimeLaunchError,
    RuntimeResult,
    RuntimeSupervisor,
    RuntimeTimeoutError,
)
from bitnet.runtime import supervisor as supervisor_module

pytest_plugins = ["fakebin"]  # fixtures: fakes, model

NAME = "llama-completion"


@pytest.fixture
def rt(fakes: FakeBinaries) -> BitNetRuntime:
    return BitNetRuntime(build_dir=fakes.build_dir)


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "_TERMINATE_GRACE_SECONDS", 0.5)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end at the same instant as a start does not overlap)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


# ---------------------------------------------------------------------- construction and validation


@pytest.mark.parametrize("concurrency", [0, -1, True, 1.5, "2"])
def test_bad_concurrency_is_rejected(rt: BitNetRuntime, concurrency: Any) -> None:
    with pytest.raises(RuntimeConfigurationError, match="concurrency") as info:
        RuntimeSupervisor(rt, concurrency=concurrency)
    assert repr(concurrency) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"capture_output": "yes"}, "capture_output"), ({"env": {"A": 1}}, "env"), ({"env": ["A"]}, "env")],
)
def test_bad_options_are_rejected(rt: BitNetRuntime, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(RuntimeConfigurationError, match=field):
        RuntimeSupervisor(rt, **kwargs)


def test_runtime_must_be_a_bitnet_runtime() -> None:
    with pytest.raises(RuntimeConfigurationError, match="BitNetRuntime"):
        RuntimeSupervisor("build")  # type: ignore[arg-type]


def test_default_concurrency_is_the_runtime_cpu_count(
    monkeypatch: pytest.MonkeyPatch, fakes: FakeBinaries
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(os, "cpu_count", lambda: 7)
        rt = BitNetRuntime(build_dir=fakes.build_dir)
    assert RuntimeSupervisor(rt).concurrency == 7


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf, True, "5"])
def test_bad_timeout_is_rejected_before_launching(
    fakes: FakeBinaries, rt: BitNetRuntime, timeout: Any
) -> None:
    binary = fakes.write("tool")
    with pytest.raises(RuntimeConfigurationError, match="timeout") as info:
        asyncio.run(RuntimeSupervisor(rt).run_custom([str(binary)], timeout=timeout))
    assert repr(timeout) in str(info.value)
    assert fakes.calls() == []


@pytest.mark.parametrize(
    ("command", "expected"), [([], "empty"), ("tool --flag", "not a shell string"), ([1], "strings or paths")]
)
def test_bad_command_is_rejected(rt: BitNetRuntime, command: Any, expected: str) -> None:
    with pytest.raises(RuntimeConfigurationError, match=expected):
        asyncio.run(RuntimeSupervisor(rt).run_custom(command))


# ---------------------------------------------------------------------- results and failures


def test_run_custom_returns_a_result_with_captured_output(fakes: FakeBinaries, rt: BitNetRuntime) -> None:
    binary = fakes.write("tool", stdout="out text\n", stderr="err text\n", sleep=0.2)
    before_mono, before_wall = time.monotonic(), time.time()
    result = asyncio.run(RuntimeSupervisor(rt).run_custom([binary, "--flag", "a b"]))
    after_mono = time.monotonic()
    assert isinstance(result, RuntimeResult)
    assert result.command == (str(binary), "--flag", "a b")
    assert result.returncode == 0
    assert result.stdout == "out text\n" and result.stderr == "err text\n"
    assert before_mono <= result.started_at <= result.completed_at <= after_mono
    assert result.duration == result.completed_at - result.started_at >= 0.2
    assert result.started_wall is not None and result.started_wall >= before_wall
    assert fakes.calls("tool")[0]["argv"] == ["--flag", "a b"]
    with pytest.raises(AttributeError):
        result.returncode = 1  # type: ignore[misc]


def test_nonzero_exit_raises_and_keeps_the_output(fakes: FakeBinaries, rt: BitNetRuntime) -> None:
    lines = "".join(f"problem {i}\n" for i in range(60))
    binary = fakes.write("tool", exit_code=7, stdout="some output\n", stderr=lines)
    with pytest.raises(RuntimeLaunchError) as info:
        asyncio.run(RuntimeSupervisor(rt).run_custom([binary]))
    error = info.value
    assert not isinstance(error, RuntimeTimeoutError)
    assert error.returncode == 7
    assert error.stderr == lines and error.stdout == "some output\n"
    assert error.stderr_tail.splitlines() == [f"problem {i}" for i in range(10, 60)]
    assert "exited with status 7" in str(error) and "problem 59" in str(error)


def test_program_that_cannot_start_raises_launch_error(rt: BitNetRuntime, tmp_path: Path) -> None:
    with pytest.raises(RuntimeLaunchError, match="no such file") as info:
        asyncio.run(RuntimeSupervisor(rt).run_custom([tmp_path / "missing-tool"]))
    assert info.value.returncode is None


def test_capture_output_false_lets_output_through(
    fakes: FakeBinaries, rt: BitNetRuntime, capfd: pytest.CaptureFixture[str]
) -> None:
    binary = fakes.write("tool", stdout="to the terminal\n", stderr="diagnostic line\n")
    result = asyncio.run(RuntimeSupervisor(rt, capture_output=False).run_custom([binary]))
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    out, err = capfd.readouterr()
    assert "to the terminal" in out and "diagnostic line" in err


def test_env_overrides_the_runtime_environment(fakes: FakeBinaries) -> None:
    binary = fakes.write("tool")
    rt = BitNetRuntime(build_dir=fakes.build_dir, env={"FROM_RUNTIME": "1"})
    asyncio.run(RuntimeSupervisor(rt).run_custom([binary]))
    asyncio.run(RuntimeSupervisor(rt, env={"FROM_SUPERVISOR": "2"}).run_custom([binary]))
    asyncio.run(RuntimeSupervisor(rt, env={}).run_custom([binary]))
    assert [call["env"] for call in fakes.calls("tool")] == [
        {"FROM_RUNTIME": "1"},
        {"FROM_SUPERVISOR": "2"},
        {},
    ]


def test_processes_left_behind_after_exit_are_killed(fakes: FakeBinaries, rt: BitNetRuntime) -> None:
    binary = fakes.write("tool", grandchild=True, stdout="done\n")  # the grandchild keeps the pipes open
    started = time.monotonic()
    result = asyncio.run(RuntimeSupervisor(rt).run_custom([binary]))
    assert time.monotonic() - started < 30  # generous: the grandchild would sleep 600 s
    assert result.stdout == "done\n"
    assert_gone(fakes.calls("tool")[0]["grandchild_pid"], ours=False)


# ---------------------------------------------------------------------- runtime commands


def test_run_inference_uses_the_runtime_argv(fakes: FakeBinaries, rt: BitNetRuntime, model: Path) -> None:
    fakes.write(NAME, stdout="Once upon a time\n")
    kwargs: dict[str, Any] = {
        "model": model,
        "prompt": "Once",
        "n_predict": 8,
        "temperature": 0,
        "threads": 1,
    }
    expected = rt.run_inference(dry_run=True, **kwargs)
    result = asyncio.run(RuntimeSupervisor(rt).run_inference(timeout=30, **kwargs))
    assert list(result.command) == expected
    assert result.stdout == "Once upon a time\n"
    assert fakes.calls(NAME)[0]["argv"] == expected[1:]


def test_run_server_uses_the_runtime_argv(fakes: FakeBinaries, rt: BitNetRuntime, model: Path) -> None:
    fakes.write("llama-server")
    kwargs: dict[str, Any] = {"model": model, "port": 8181, "threads": 1}
    expected = rt.run_server(dry_run=True, **kwargs)
    result = asyncio.run(RuntimeSupervisor(rt).run_server(**kwargs))
    assert list(result.command) == expected
    assert fakes.calls("llama-server")[0]["argv"] == expected[1:]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"n_predict": 0}, "n_predict must be a positive integer. Got 0."),
        ({"temperature": math.nan}, "temperature"),
        ({"model": "missing.gguf"}, "does not exist"),
        ({"dry_run": True}, "dry_run is not a supervisor option"),
    ],
)
def test_run_inference_validates_like_the_runtime(
    fakes: FakeBinaries, rt: BitNetRuntime, model: Path, kwargs: dict[str, Any], expected: str
) -> None:
    fakes.write(NAME)
    with pytest.raises(RuntimeConfigurationError, match=expected):
        asyncio.run(RuntimeSupervisor(rt).run_inference(**{"model": model, "prompt": "hi", **kwargs}))
    assert fakes.calls() == []


def test_run_inference_needs_the_binary(rt: BitNetRuntime, model: Path) -> None:
    with pytest.raises(RuntimeConfigurationError, match="invoke build --build-dir"):
        asyncio.run(RuntimeSupervisor(rt).run_inference(model=model, prompt="hi"))


# ---------------------------------------------------------------------- timeouts and cancellation


@pytest.mark.usefixtures("short_grace")
@pytest.mark.parametrize("ignore_sigterm", [False, True])
def test_timeout_kills_the_process_group_and_keeps_partial_output(
    fakes: FakeBinaries, rt: BitNetRuntime, ignore_sigterm: bool
) -> None:
    binary = fakes.write(
        "tool",
        stdout="partial out\n",
        stderr="partial err\n",
        sleep=60,
        grandchild=True,
        ignore_sigterm=ignore_sigterm,
    )

    async def scenario() -> RuntimeTimeoutError:
        with pytest.raises(RuntimeTimeoutError) as info:
            await RuntimeSupervisor(rt).run_custom([binary], timeout=1)
        record = fakes.calls("tool")[0]
        assert_gone(record["pid"], timeout=0)  # killed and reaped before the error was raised
        return info.value

    started = time.monotonic()
    error = asyncio.run(scenario())
    assert time.monotonic() - started < 30  # generous: the fake would sleep 60 s
    assert str(error).startswith("Command timed out after 1 seconds")
    assert isinstance(error, RuntimeLaunchError) and error.timeout == 1.0
    assert error.stdout == "partial out\n" and error.stderr == "partial err\n"
    assert_gone(fakes.calls("tool")[0]["grandchild_pid"], ours=False)


@pytest.mark.usefixtures("short_grace")
@pytest.mark.parametrize("ignore_sigterm", [False, True])
def test_cancelling_the_task_kills_the_child(
    fakes: FakeBinaries, rt: BitNetRuntime, ignore_sigterm: bool
) -> None:
    binary = fakes.write("tool", sleep=60, grandchild=True, ignore_sigterm=ignore_sigterm)

    async def scenario() -> dict[str, Any]:
        task = asyncio.create_task(RuntimeSupervisor(rt).run_custom([binary]))
        record = await fakes.await_call("tool")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_gone(record["pid"], timeout=0)  # reaped before the cancellation completed
        return record

    started = time.monotonic()
    record = asyncio.run(scenario())
    assert time.monotonic() - started < 30
    assert_gone(record["grandchild_pid"], ours=False)


def test_cancelling_a_queued_launch_frees_its_place(fakes: FakeBinaries, rt: BitNetRuntime) -> None:
    slow = fakes.write("slow", sleep=0.5)
    fast = fakes.write("fast")

    async def scenario() -> RuntimeResult:
        supervisor = RuntimeSupervisor(rt, concurrency=1)
        running = asyncio.create_task(supervisor.run_custom([slow]))
        await fakes.await_call("slow")
        queued = asyncio.create_task(supervisor.run_custom([fast]))
        await asyncio.sleep(0.1)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        await running
        # a leaked slot would make this wait forever
        return await asyncio.wait_for(supervisor.run_custom([fast]), timeout=20)

    assert asyncio.run(scenario()).returncode == 0
    assert len(fakes.calls("fast")) == 1


@pytest.mark.parametrize("which", ["timeout", "queue_timeout"])
def test_time_queued_for_a_slot_counts(fakes: FakeBinaries, rt: BitNetRuntime, which: str) -> None:
    """A call queued behind a long one fails at its limit, while the long one still runs; the queued
    command is never started (it used to wait for the slot, then start its own clock: 14 s for 1 s)."""
    slow = fakes.write("slow", sleep=60)
    fast = fakes.write("fast")

    async def scenario() -> RuntimeTimeoutError:
        supervisor = RuntimeSupervisor(rt, concurrency=1)
        running = asyncio.create_task(supervisor.run_custom([slow], timeout=120))
        await fakes.await_call("slow")
        with pytest.raises(RuntimeTimeoutError) as info:
            await supervisor.run_custom([fast], **{which: 0.5})
        assert not running.done()  # failed at its own limit, not when the slot came free
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        return info.value

    error = asyncio.run(scenario())
    assert f"no free slot within the {which} of 0.5 s" in str(error) and error.timeout == 0.5
    assert fakes.calls("fast") == []


def test_queue_timeout_does_not_limit_the_run(fakes: FakeBinaries, rt: BitNetRuntime) -> None:
    slow = fakes.write("slow", sleep=1.5, stdout="done\n")
    result = asyncio.run(RuntimeSupervisor(rt, concurrency=1).run_custom([slow], queue_timeout=0.1))
    assert result.stdout == "done\n"


@pytest.mark.parametrize("value", [0, -1, math.nan, True])
def test_bad_queue_timeout_is_rejected(fakes: FakeBinaries, rt: BitNetRuntime, value: Any) -> None:
    binary = fakes.write("tool")
    with pytest.raises(RuntimeConfigurationError, match="queue_timeout"):
        asyncio.run(RuntimeSupervisor(rt).run_custom([binary], queue_timeout=value))
    assert fakes.calls("tool") == []


# ---------------------------------------------------------------------- close()


def test_close_rejects_queued_and_later_launches(fakes: FakeBinaries, rt: BitNetRuntime, model: Path) -> None:
    slow = fakes.write("slow", sleep=2, stdout="finished\n")
    fast = fakes.write("fast")
    fakes.write(NAME)

    async def scenario() -> None:
        supervisor = RuntimeSupervisor(rt, concurrency=1)
        running = asyncio.create_task(supervisor.run_custom([slow]))
        await fakes.await_call("slow")
        queued = [asyncio.create_task(supervisor.run_custom([fast])) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in queued)
        await supervisor.close()
        for task in queued:
            with pytest.raises(RuntimeLaunchError, match="supervisor is closed"):
                await task
        assert not running.done()  # the queued launches failed at once, not after the running one
        assert (await running).stdout == "finished\n"  # work already running is not affected
        with pytest.raises(RuntimeLaunchError, match="supervisor is closed"):
            await supervisor.run_custom([fast])
        with pytest.raises(RuntimeLaunchError, match="supervisor is closed"):
            await supervisor.run_inference(model=model, prompt="hi")
        await supervisor.close()  # idempotent
        assert supervisor.closed

    asyncio.run(scenario())
    assert fakes.calls("fast") == [] and fakes.calls(NAME) == []


def test_async_with_closes_the_supervisor(fakes: FakeBinaries, rt: BitNetRuntime) -> None:
    binary = fakes.write("tool")

    async def scenario() -> RuntimeSupervisor:
        async with RuntimeSupervisor(rt) as supervisor:
            assert (await supervisor.run_custom([binary])).returncode == 0
        with pytest.raises(RuntimeLaunchError, match="supervisor is closed"):
            await supervisor.run_custom([binary])
        return supervisor

    assert asyncio.run(scenario()).closed
    assert len(fakes.calls("tool")) == 1


# ---------------------------------------------------------------------- concurrency limit


@pytest.mark.parametrize("limit", [1, 3, None])
def test_concurrency_limit_is_measured_by_overlapping_children(
    monkeypatch: pytest.MonkeyPatch, fakes: FakeBinaries, limit: int | None
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(os, "cpu_count", lambda: 2)  # the default limit (None) is the runtime's cpu count
        rt = BitNetRuntime(build_dir=fakes.build_dir)
    expected = 2 if limit is None else limit
    binary = fakes.write("tool", sleep=0.3)

    async def scenario() -> list[RuntimeResult]:
        supervisor = RuntimeSupervisor(rt, concurrency=limit)
        return await asyncio.gather(*(supervisor.run_custom([binary]) for _ in range(2 * expected + 1)))

    results = asyncio.run(scenario())
    assert all(result.returncode == 0 for result in results)
    calls = fakes.calls("tool")
    assert len(calls) == 2 * expected + 1
    assert max_overlap([(call["start"], call["end"]) for call in calls]) == expected
