"""Streaming from Python: `BitNetRuntime.stream` and `RuntimeSupervisor.stream` yield the generated
text as the real engine produces it; joined, it is exactly what the non-streaming run prints after the
prompt; leaving early (break, cancel, timeout) leaves no process."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from servertools import processes_using

from bitnet import BitNetRuntime, RuntimeConfigurationError, RuntimeTimeoutError
from bitnet.runtime.supervisor import RuntimeSupervisor

pytest_plugins = ["server_fixtures"]  # fixtures: tiny_model, runtime, no_leftover_processes
pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("no_leftover_processes")]

PROMPT = "Once upon a time"
ARGS = {"prompt": PROMPT, "n_predict": 48, "temperature": 0, "threads": 1, "ctx_size": 256}


def reference_text(runtime: BitNetRuntime, model: Path) -> str:
    """The non-streaming run's output (captured by the supervisor), without the echoed prompt."""

    async def run() -> str:
        async with RuntimeSupervisor(runtime, concurrency=1) as sup:
            return (await sup.run_inference(model=model, batch_size=512, timeout=120, **ARGS)).stdout

    out = asyncio.run(run())
    assert out.startswith(PROMPT), out[:80]
    return out[len(PROMPT) :]


def test_stream_yields_pieces_that_add_up_to_the_plain_run(tiny_model: Path, runtime: BitNetRuntime) -> None:
    pieces = list(runtime.stream(model=tiny_model, timeout=120, **ARGS))
    assert len(pieces) >= 2 and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == reference_text(runtime, tiny_model)
    assert not any(PROMPT in p for p in pieces[:1])  # the prompt is not echoed


def test_leaving_a_stream_early_stops_the_engine(tiny_model: Path, runtime: BitNetRuntime) -> None:
    stream = runtime.stream(model=tiny_model, **{**ARGS, "n_predict": 100_000, "ctx_size": 4096})
    first = next(stream)
    assert first and processes_using(tiny_model)  # the engine runs while we hold the stream
    stream.close()
    assert processes_using(tiny_model) == set()  # stopped before close() returned


def test_stream_timeout_stops_the_engine(tiny_model: Path, runtime: BitNetRuntime) -> None:
    # -cnv-less generation that never ends: ignore EOS and a context larger than what 0.5 s can fill
    args = {**ARGS, "n_predict": 1_000_000, "ctx_size": 8192, "extra_args": ["--ignore-eos"]}
    with pytest.raises(RuntimeTimeoutError, match="timeout of 0.5 s"):
        for _ in runtime.stream(model=tiny_model, timeout=0.5, **args):
            pass
    assert processes_using(tiny_model) == set()


def test_stream_arguments_are_checked_at_the_call(tiny_model: Path, runtime: BitNetRuntime) -> None:
    with pytest.raises(RuntimeConfigurationError, match="n_predict"):
        runtime.stream(model=tiny_model, prompt="hi", n_predict=0)
    with pytest.raises(RuntimeConfigurationError, match="does not exist"):
        runtime.stream(model=tiny_model.with_name("missing.gguf"), prompt="hi")


def test_async_stream_matches_and_cancelling_leaves_no_process(
    tiny_model: Path, runtime: BitNetRuntime
) -> None:
    expected = reference_text(runtime, tiny_model)

    async def scenario() -> list[str]:
        async with RuntimeSupervisor(runtime, concurrency=1) as sup:
            pieces = [p async for p in sup.stream(model=tiny_model, timeout=120, **ARGS)]

            started = asyncio.Event()

            async def consume() -> None:
                endless = {**ARGS, "n_predict": 100_000, "ctx_size": 4096, "extra_args": ["--ignore-eos"]}
                async with contextlib.aclosing(sup.stream(model=tiny_model, **endless)) as stream:
                    async for _ in stream:
                        started.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(started.wait(), 60)
            assert processes_using(tiny_model)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert processes_using(tiny_model) == set()  # stopped before the cancellation completed
            # the slot was given back: a further stream runs
            again = [p async for p in sup.stream(model=tiny_model, timeout=120, **ARGS)]
            assert "".join(again) == "".join(pieces)
            return pieces

    pieces = asyncio.run(scenario())
    assert len(pieces) >= 2 and "".join(pieces) == expected


def test_async_stream_timeout(tiny_model: Path, runtime: BitNetRuntime) -> None:
    async def scenario() -> None:
        sup = RuntimeSupervisor(runtime, concurrency=1)
        endless = {**ARGS, "n_predict": 1_000_000, "ctx_size": 8192, "extra_args": ["--ignore-eos"]}
        with pytest.raises(RuntimeTimeoutError, match="stream timed out after 0.5"):
            async for _ in sup.stream(model=tiny_model, timeout=0.5, **endless):
                pass
        assert processes_using(tiny_model) == set()

    asyncio.run(scenario())


def test_readme_streaming_snippet_works_as_written(
    tiny_model: Path, engine_bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import re

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    found = [b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "rt.stream(" in b]
    assert len(found) == 1, "README.md must hold exactly one streaming snippet"
    where = tmp_path / "models" / "tiny" / "ggml-model-tq2_0.gguf"  # where `invoke setup` puts it
    where.parent.mkdir(parents=True)
    where.symlink_to(tiny_model)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BITNET_BIN_DIR", str(engine_bin_dir))
    exec(compile(found[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert len(out.strip()) > 10
