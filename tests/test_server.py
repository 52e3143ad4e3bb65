"""The OpenAI-compatible server: `bitnet.server.serve`, run_inference_server.py, the real `openai` client.

Engine tests run our llama-server build on the tiny model (random weights: the text is junk, so they
check structure, not meaning) on 127.0.0.1 only. Every test ends with no process of ours left running.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fakebin import FakeBinaries, write_model
from servertools import TINY_CHAT_TEMPLATE, FdReader, pid_gone

from bitnet import BitNetRuntime, RuntimeConfigurationError, RuntimeLaunchError, RuntimeTimeoutError
from bitnet.errors import ModelFileError, PortInUseError
from bitnet.runtime import server as server_module
from bitnet.runtime.server import ServerHandle, is_loopback, require_api_key, serve

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_TOKENS = 12

pytest_plugins = ["server_fixtures"]  # fixtures: tiny_model, runtime, no_leftover_processes
pytestmark = pytest.mark.usefixtures("no_leftover_processes")


def client_for(handle: ServerHandle, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("api_key", "none")
    return openai.OpenAI(base_url=handle.base_url, max_retries=0, timeout=60, **kwargs)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw_request(handle: ServerHandle, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data


@pytest.fixture
def no_popen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if serve() starts any process."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(server_module.subprocess, "Popen", refuse)


@pytest.fixture(scope="module")
def server(
    tiny_model: Path, runtime: BitNetRuntime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """One server for the round-trip tests: 2 slots, 1 thread (the machine is shared)."""
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    with serve(tiny_model, runtime=runtime, threads=1, parallel=2, log_path=log) as handle:
        yield handle
    assert pid_gone(handle.pid, timeout=0), "serve() returned with the server still running"


# ---------------------------------------------------------------------- round trips with the openai client


@pytest.mark.engine
def test_handle_describes_the_server(server: ServerHandle, tiny_model: Path) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}" and server.base_url == server.url + "/v1"
    assert server.alive and server.returncode is None
    server.check()
    assert Path(f"/proc/{server.pid}/exe").resolve().name == "llama-server"
    assert str(tiny_model) in server.command and server.log_path.exists()
    assert "listening on" in server.log_path.read_text()  # the server's output goes to the log file


@pytest.mark.engine
def test_models_route(server: ServerHandle, tiny_model: Path) -> None:
    models = client_for(server).models.list().data
    assert len(models) == 1 and models[0].id.endswith(tiny_model.name)


@pytest.mark.engine
def test_chat_completion(server: ServerHandle) -> None:
    reply = client_for(server).chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello there"}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and len(reply.choices) == 1
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("length", "stop")
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == MAX_TOKENS


@pytest.mark.engine
def test_chat_completion_stream(server: ServerHandle) -> None:
    stream = client_for(server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    choices = [chunk.choices[0] for chunk in chunks if chunk.choices]
    assert choices[0].delta.role == "assistant"
    text = "".join(c.delta.content or "" for c in choices)
    finished = [c.finish_reason for c in choices if c.finish_reason]
    assert text and finished in (["length"], ["stop"])
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= MAX_TOKENS
    # greedy decoding: the stream says what the non-streamed answer says
    again = client_for(server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert again.choices[0].message.content == text


@pytest.mark.engine
def test_text_completion_stream_and_not(server: ServerHandle) -> None:
    client = client_for(server)
    reply = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=MAX_TOKENS, temperature=0
    )
    assert reply.object == "text_completion" and reply.choices[0].text
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    pieces = list(
        client.completions.create(
            model="tiny", prompt="Once upon a time", max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in pieces if p.choices) == reply.choices[0].text
    assert [p.choices[0].finish_reason for p in pieces if p.choices and p.choices[0].finish_reason] == [
        reply.choices[0].finish_reason
    ]


@pytest.mark.engine
def test_the_models_own_chat_template_is_used(server: ServerHandle) -> None:
    status, props = raw_request(server, "GET", "/props")
    assert status == 200 and props["chat_template"] == TINY_CHAT_TEMPLATE
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    status, applied = raw_request(
        server, "POST", "/apply-template", json.dumps({"messages": messages}).encode()
    )
    assert status == 200 and applied["prompt"] == "SYSTEM: Be terse.\nUSER: hi\nASSISTANT:"


# ---------------------------------------------------------------------- load


@pytest.mark.engine
def test_concurrent_clients_all_get_valid_answers(server: ServerHandle) -> None:
    n_clients, n_requests = 8, 4
    rss_before = rss_kib(server.pid)

    async def one_client(index: int) -> list[tuple[str, str | None, int]]:
        # No retries: a kept-alive connection must serve the next request after a streamed one (patch 0010;
        # upstream's server closed it, and a client reusing it saw "Server disconnected").
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="none", max_retries=0, timeout=120
        ) as c:
            results: list[tuple[str, str | None, int]] = []
            for j in range(n_requests):
                messages: Any = [{"role": "user", "content": f"Client {index} asks question {j}"}]
                if j % 2:  # half streamed, half not
                    text, finish = "", None
                    stream = await c.chat.completions.create(
                        model="tiny", messages=messages, max_tokens=8, stream=True
                    )
                    async for chunk in stream:
                        if chunk.choices:
                            text += chunk.choices[0].delta.content or ""
                            finish = chunk.choices[0].finish_reason or finish
                    results.append((text, finish, -1))
                else:
                    reply = await c.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
                    usage = reply.usage.completion_tokens if reply.usage else 0
                    content = reply.choices[0].message.content or ""
                    results.append((content, reply.choices[0].finish_reason, usage))
            return results

    async def everyone() -> list[list[tuple[str, str | None, int]]]:
        return await asyncio.wait_for(asyncio.gather(*(one_client(i) for i in range(n_clients))), timeout=240)

    results = [r for client_results in asyncio.run(everyone()) for r in client_results]
    assert len(results) == n_clients * n_requests
    for text, finish, completion_tokens in results:
        assert text and finish in ("length", "stop")
        assert completion_tokens == -1 or 0 < completion_tokens <= 8
    server.check()
    # memory stays bounded: the KV cache is allocated at start; 32 requests must not grow the server much
    assert rss_kib(server.pid) - rss_before < 64 * 1024


# ---------------------------------------------------------------------- faults


@pytest.mark.engine
def test_client_disconnect_mid_stream_leaves_the_server_serving(server: ServerHandle) -> None:
    client = client_for(server)
    for _ in range(2):  # both slots: a stuck slot would show as a hang below
        stream = client.completions.create(
            model="tiny", prompt="Once", max_tokens=1000, stream=True, extra_body={"ignore_eos": True}
        )
        received = [chunk for _, chunk in zip(range(3), stream, strict=False)]
        assert len(received) == 3
        stream.close()  # drop the connection mid-stream
    deadline = time.monotonic() + 30
    while True:  # the server notices the closed connection and frees the slot
        status, slots = raw_request(server, "GET", "/slots")
        if status == 200 and not any(slot["is_processing"] for slot in slots):
            break
        assert time.monotonic() < deadline, f"slots still busy after the clients left: {slots}"
        time.sleep(0.1)
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content and reply.choices[0].finish_reason in ("length", "stop")
    server.check()


@pytest.mark.engine
def test_server_killed_mid_stream_then_a_new_one_works(
    tiny_model: Path, runtime: BitNetRuntime, tmp_path: Path
) -> None:
    with (
        pytest.raises(RuntimeLaunchError, match="killed by signal SIGKILL while serving") as on_exit,
        serve(tiny_model, runtime=runtime, threads=1, log_path=tmp_path / "a.log") as handle,
    ):
        stream = client_for(handle).completions.create(
            model="tiny", prompt="Once", max_tokens=2000, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = iter(stream)
        assert next(chunks).choices
        os.kill(handle.pid, signal.SIGKILL)
        with pytest.raises(openai.APIConnectionError):
            for _ in chunks:
                pass
        with pytest.raises(RuntimeLaunchError, match="SIGKILL") as checked:
            handle.check(grace=10)
        assert checked.value.returncode == -signal.SIGKILL and str(handle.log_path) in str(checked.value)
        assert "listening on" in checked.value.stderr_tail
        port = handle.port
    assert on_exit.value.returncode == -signal.SIGKILL  # leaving the block reports the crash too
    assert (tmp_path / "a.log").exists()  # kept for the post-mortem
    with serve(tiny_model, runtime=runtime, threads=1, port=port, log_path=tmp_path / "b.log") as again:
        assert again.port == port
        reply = client_for(again).completions.create(model="tiny", prompt="Hi", max_tokens=4)
        assert reply.choices[0].text


@pytest.mark.engine
def test_port_in_use_is_refused_before_starting(
    tiny_model: Path, runtime: BitNetRuntime, no_popen: None
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError) as info:
            serve(tiny_model, runtime=runtime, port=port, ready_timeout=60).__enter__()
    message = str(info.value)
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert "--port" in message and "port=None" in message
    assert info.value.port == port and isinstance(info.value, RuntimeConfigurationError)


@pytest.mark.engine
def test_api_key_is_required_by_the_server_and_kept_out_of_argv(
    tiny_model: Path, runtime: BitNetRuntime, tmp_path: Path
) -> None:
    key = "test-key-123"
    with serve(tiny_model, runtime=runtime, threads=1, api_key=key, log_path=tmp_path / "s.log") as handle:
        assert handle.api_key == key
        assert key.encode() not in Path(f"/proc/{handle.pid}/cmdline").read_bytes()
        assert key not in " ".join(handle.command)
        with pytest.raises(openai.AuthenticationError):
            client_for(handle, api_key="wrong").models.list()
        reply = client_for(handle, api_key=key).completions.create(model="tiny", prompt="Hi", max_tokens=4)
        assert reply.choices[0].text


# ---------------------------------------------------------------------- refused before anything starts


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.com"])
def test_non_loopback_host_without_key_is_refused(
    host: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, no_popen: None, engine_bin_dir: Path
) -> None:
    monkeypatch.delenv("BITNET_API_KEY", raising=False)
    monkeypatch.delenv("LLAMA_API_KEY", raising=False)
    with (
        pytest.raises(RuntimeConfigurationError) as info,
        serve(tiny_model, host=host, runtime=BitNetRuntime(build_dir=engine_bin_dir.parent)),
    ):
        pass
    message = str(info.value)
    assert f"refusing to serve on {host!r} without an API key" in message
    assert "--api-key" in message and "BITNET_API_KEY" in message and "127.0.0.1" in message


def test_api_key_sources_and_loopback_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITNET_API_KEY", raising=False)
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "LocalHost")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "my-host", "")] == [False] * 5
    assert require_api_key("127.0.0.1", None, env={}) is None
    assert require_api_key("0.0.0.0", None, env={"BITNET_API_KEY": "k1"}) == "k1"
    assert require_api_key("0.0.0.0", "k2", env={"BITNET_API_KEY": "k1"}) == "k2"
    assert require_api_key("0.0.0.0", None, env={"LLAMA_API_KEY": "x"}) is None  # llama-server has one
    assert require_api_key("0.0.0.0", None, env={}, extra_args=["--api-key-file", "keys.txt"]) is None
    for bad in ("", "a,b", "has space"):
        with pytest.raises(RuntimeConfigurationError, match="without commas or whitespace") as info:
            require_api_key("127.0.0.1", bad, env={})
        assert bad == "" or bad not in str(info.value)  # the key itself is never printed


def test_argument_errors_name_the_field(tiny_model: Path, engine_bin_dir: Path, no_popen: None) -> None:
    rt = BitNetRuntime(build_dir=engine_bin_dir.parent)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"parallel": 0}, "parallel"),
        ({"parallel": True}, "parallel"),
        ({"ready_timeout": 0}, "ready_timeout"),
        ({"ready_timeout": float("nan")}, "ready_timeout"),
        ({"port": 70000}, "port"),
        ({"threads": -1}, "threads"),
        ({"ctx_size": 0}, "ctx_size"),
        ({"host": "127.0.0.1,0.0.0.0"}, "host"),
        ({"extra_args": "--foo bar"}, "extra_args"),
    ]
    for kwargs, field in cases:
        with pytest.raises(RuntimeConfigurationError, match=field), serve(tiny_model, runtime=rt, **kwargs):
            pass


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "does not exist"), (b"not a model at all", "is not a GGUF file")],
)
def test_bad_model_file_is_refused_before_starting(
    content: bytes | None, expected: str, tmp_path: Path, engine_bin_dir: Path, no_popen: None
) -> None:
    model = tmp_path / "model.gguf"
    if content is not None:
        model.write_bytes(content)
    with (
        pytest.raises(RuntimeConfigurationError, match=expected) as info,
        serve(model, runtime=BitNetRuntime(build_dir=engine_bin_dir.parent)),
    ):
        pass
    assert "invoke convert" in str(info.value)


@pytest.mark.engine
def test_truncated_gguf_is_refused_before_starting(
    tiny_model: Path, runtime: BitNetRuntime, tmp_path: Path, no_popen: None
) -> None:
    model = tmp_path / "truncated.gguf"
    model.write_bytes(tiny_model.read_bytes()[: 1 << 20])  # the GGUF magic, then cut short
    with (
        pytest.raises(ModelFileError, match="truncated") as info,
        serve(model, runtime=runtime, threads=1, log_path=tmp_path / "s.log"),
    ):
        pass
    assert str(model) in str(info.value) and "download it again" in str(info.value)


# ---------------------------------------------------------------------- start-up failures (fake server)


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[FakeBinaries]:
    bins = FakeBinaries(tmp_path)
    yield bins
    bins.kill_leftovers()


def test_server_that_never_gets_ready_times_out_and_is_stopped(fakes: FakeBinaries, tmp_path: Path) -> None:
    fakes.write("llama-server", sleep=60, grandchild=True, stderr="loading forever\n")
    model = write_model(tmp_path / "m.gguf")
    rt = BitNetRuntime(build_dir=fakes.build_dir)
    with (
        pytest.raises(RuntimeTimeoutError, match="was not ready after 0.5 s") as info,
        serve(model, runtime=rt, ready_timeout=0.5, threads=1, log_path=tmp_path / "s.log"),
    ):
        pass
    assert "loading forever" in info.value.stderr_tail and info.value.timeout == 0.5
    assert (tmp_path / "s.log").exists() and str(tmp_path / "s.log") in str(info.value)
    record = fakes.calls("llama-server")[0]
    assert pid_gone(record["pid"]) and pid_gone(record["grandchild_pid"])


def test_server_that_exits_at_start_reports_its_stderr(fakes: FakeBinaries, tmp_path: Path) -> None:
    fakes.write("llama-server", exit_code=3, stderr="error: no usable backend\n")
    model = write_model(tmp_path / "m.gguf")
    with (
        pytest.raises(RuntimeLaunchError, match="exited with status 3 before it was ready") as info,
        serve(
            model, runtime=BitNetRuntime(build_dir=fakes.build_dir), threads=1, log_path=tmp_path / "s.log"
        ),
    ):
        pass
    assert info.value.returncode == 3 and "no usable backend" in str(info.value)
    argv = fakes.calls("llama-server")[0]["argv"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("-np") + 1] == "1"
    assert argv[argv.index("-b") + 1] == "512" and "-ngl" not in argv


# ---------------------------------------------------------------------- bad requests


BAD_REQUESTS = [
    # (method, path, body, expected status, words in the error)
    ("POST", "/v1/chat/completions", b"{not json", 400, "parse error"),
    ("POST", "/v1/chat/completions", b"{}", 400, "'messages' is required"),
    ("POST", "/v1/chat/completions", {"messages": "hi"}, 400, "to be an array"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "must contain 'content'"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}, 400,
     "max_tokens"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": "hi"},
     400, "temperature"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 3000}]}, 400,
     "exceeds the available context size"),
    ("POST", "/v1/completions", {"max_tokens": 4}, 400, "'prompt' not found"),
    ("POST", "/v1/completions", {"prompt": [1, 2, 99999999], "max_tokens": 4}, 400, "invalid token id"),
    ("POST", "/v1/embeddings", {"input": "hi"}, 501, "--embeddings"),
    ("GET", "/v1/no-such-route", None, 404, "Not Found"),
]  # fmt: skip


@pytest.mark.engine
@pytest.mark.parametrize(("method", "path", "body", "status", "words"), BAD_REQUESTS)
def test_bad_requests_get_an_error_and_the_server_keeps_serving(
    server: ServerHandle, method: str, path: str, body: Any, status: int, words: str
) -> None:
    raw = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    got, answer = raw_request(server, method, path, raw)
    assert got == status
    assert words in answer["error"]["message"]
    assert raw_request(server, "GET", "/health")[0] == 200
    server.check()


# ---------------------------------------------------------------------- run_inference_server.py


def start_cli(
    tiny_model: Path, runtime: BitNetRuntime, *args: str
) -> tuple[subprocess.Popen[bytes], FdReader]:
    proc = subprocess.Popen(
        [sys.executable, "run_inference_server.py", "-m", str(tiny_model), "-t", "1",
         "--build-dir", str(runtime.build_dir), *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from an interactive shell
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, FdReader(proc.stdout.fileno())


@pytest.mark.engine
@pytest.mark.parametrize(
    ("sig", "code", "words"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_server_cli_serves_until_a_signal(
    tiny_model: Path, runtime: BitNetRuntime, sig: int, code: int, words: str
) -> None:
    with socket.socket() as probe:  # a free port, released before the CLI checks it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc, out = start_cli(tiny_model, runtime, "--port", str(port), "-np", "2")
    try:
        assert out.read_until(b"Ctrl-C stops it.", timeout=60), out.data.decode(errors="replace")
        line = next(ln for ln in out.data.decode().splitlines() if ln.startswith("ready: "))
        assert line.startswith(
            f"ready: http://127.0.0.1:{port}  (OpenAI base_url http://127.0.0.1:{port}/v1;"
        )
        pid = int(line.split("pid ")[1].split(";")[0])
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        assert client.completions.create(model="tiny", prompt="Hi", max_tokens=4).choices[0].text
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.drain(5).decode(errors="replace")
    assert words in text and "Traceback" not in text
    assert pid_gone(pid, timeout=0)


@pytest.mark.parametrize("extra", [[], ["--api-key", ""]])
def test_server_cli_refuses_a_public_address_without_a_key(
    tiny_model: Path, extra: list[str], engine_bin_dir: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("BITNET_API_KEY", "LLAMA_API_KEY")}
    done = subprocess.run(
        [sys.executable, "run_inference_server.py", "-m", str(tiny_model), "--host", "0.0.0.0", *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert ("without an API key" if not extra else "must be a non-empty string") in done.stderr


def test_server_cli_dry_run_with_a_key_keeps_it_out_of_the_command(tiny_model: Path) -> None:
    env = {**os.environ, "BITNET_API_KEY": "s3cret"}
    done = subprocess.run(
        [sys.executable, "run_inference_server.py", "-m", str(tiny_model), "--host", "0.0.0.0", "-np", "3",
         "--dry-run"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--host 0.0.0.0" in done.stdout and "-np 3" in done.stdout and "-b 512" in done.stdout
    assert "s3cret" not in done.stdout + done.stderr


# ---------------------------------------------------------------------- the README's client snippet


def readme_snippet() -> str:
    """The README's client snippet, read from README.md itself so the two cannot drift apart."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    found = [b for b in blocks if "from bitnet.server import serve" in b]
    assert len(found) == 1, "README.md must hold exactly one serve() snippet"
    return found[0]


@pytest.mark.engine
def test_readme_snippet_works_as_written(
    tiny_model: Path, engine_bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    where = tmp_path / "models" / "tiny" / "ggml-model-tq2_0.gguf"  # where `invoke setup` puts it
    where.parent.mkdir(parents=True)
    where.symlink_to(tiny_model)
    monkeypatch.chdir(tmp_path)  # a checkout's root
    monkeypatch.setenv("BITNET_BIN_DIR", str(engine_bin_dir))  # ./build is the default; not in tmp_path
    exec(compile(readme_snippet(), "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()


@pytest.mark.engine
def test_a_kept_alive_connection_serves_the_next_request_after_a_stream(server: ServerHandle) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        for _ in range(3):  # upstream closed the connection after each stream: the 2nd request failed
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
            assert reply.status == 200 and b"data: [DONE]" in data
            assert reply.getheader("Connection") != "close"
    finally:
        conn.close()
