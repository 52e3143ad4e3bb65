"""Hostile requests against our llama-server build (engine patch 0007-server-hardening): each test sends
what used to crash the server, exhaust its memory, answer 500, or let a web page of another origin drive
it, and checks the answer and that the server still serves a normal request afterwards.

Real llama-server on the tiny model, real HTTP (http.client / raw sockets, so nothing is retried or
rewritten on the way), 127.0.0.1 only except where a test needs a non-loopback bind.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from servertools import add_chat_template

from bitnet import BitNetRuntime, RuntimeConfigurationError
from bitnet.runtime.server import ServerHandle, cors_args, serve

REPO_ROOT = Path(__file__).resolve().parent.parent
GIB_KIB = 1024 * 1024  # /proc/PID/status counts in KiB

pytest_plugins = ["server_fixtures"]  # fixtures: tiny_model, runtime, no_leftover_processes
pytestmark = pytest.mark.usefixtures("no_leftover_processes")


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        return self.json()["error"]


def request(
    handle: ServerHandle,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    content_type: str | None = "application/json",
) -> Reply:
    """One request; `headers` may override Host. No proxies, no retries."""
    conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=120)
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = dict(headers or {})
    if raw is not None and content_type is not None:
        sent.setdefault("Content-Type", content_type)
    if handle.api_key:
        sent.setdefault("Authorization", f"Bearer {handle.api_key}")
    try:
        conn.putrequest(method, path, skip_host="Host" in sent, skip_accept_encoding=True)
        for key, value in sent.items():
            conn.putheader(key, value)
        if raw is not None:
            conn.putheader("Content-Length", str(len(raw)))
        conn.endheaders(raw)
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def chat_body(content: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 2, "temperature": 0, **extra}


def assert_still_serving(handle: ServerHandle) -> None:
    """The server is alive and answers a normal chat request through the openai client."""
    handle.check(grace=0.5)
    client = openai.OpenAI(
        base_url=handle.base_url, api_key=handle.api_key or "none", max_retries=0, timeout=60
    )
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=2, temperature=0
    )
    assert reply.choices[0].finish_reason in ("length", "stop")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of `pid`, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(line.split()[1])
    return found


@pytest.fixture(scope="module")
def server(
    tiny_model: Path, runtime: BitNetRuntime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """The default server: 2 slots of 1024 tokens, 1 thread (the machine is shared)."""
    log = tmp_path_factory.mktemp("hardening-log") / "server.log"
    with serve(tiny_model, runtime=runtime, threads=1, parallel=2, log_path=log) as handle:
        yield handle


ALLOWED = "http://allowed.example:3000"


@pytest.fixture(scope="module")
def strict(
    tiny_model: Path, runtime: BitNetRuntime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """A server with one allowed web origin and a 64 KiB body limit."""
    log = tmp_path_factory.mktemp("hardening-log") / "strict.log"
    with serve(
        tiny_model, runtime=runtime, threads=1, parallel=1, log_path=log, cors_origins=[ALLOWED],
        extra_args=["--max-body-size", "65536"],
    ) as handle:  # fmt: skip
        yield handle


# ---------------------------------------------------------------------- 1. nesting and size


@pytest.mark.engine
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_deeply_nested_json_is_refused_before_parsing(server: ServerHandle, path: str) -> None:
    # ~260 KB: the recursive JSON parser used to overflow the stack (SIGSEGV) on this
    deep = b"[" * 130_000 + b"]" * 130_000
    head = chat_body() if path.endswith("chat/completions") else {"prompt": "Hi", "max_tokens": 2}
    body = json.dumps(head).encode()[:-1] + b', "metadata": ' + deep + b"}"
    reply = request(server, "POST", path, body)
    assert reply.status == 400, reply.body[:300]
    assert reply.error["type"] == "invalid_request_error" and "nested deeper than" in reply.error["message"]
    # ordinary nesting (and brackets inside strings) is fine
    fine = json.dumps({**head, "metadata": [[[{"a": [[["[[[[{{{"]]]}]]]}).encode()
    assert request(server, "POST", path, fine).status == 200
    assert_still_serving(server)


def paren_grammar(depth: int) -> str:
    return "root ::= " + "(" * depth + '"a"' + ")" * depth


def chained_grammar(n_rules: int) -> str:
    return "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(n_rules)) + f'r{n_rules} ::= "a"\n'


@pytest.mark.engine
@pytest.mark.parametrize(
    ("path", "grammar"),
    [
        ("/v1/completions", paren_grammar(20_000)),
        ("/v1/chat/completions", paren_grammar(20_000)),
        ("/v1/completions", chained_grammar(65_536)),
    ],
    ids=["nested-completions", "nested-chat", "chained-rules"],
)
def test_deep_or_huge_grammar_is_an_error_not_a_crash(server: ServerHandle, path: str, grammar: str) -> None:
    head = chat_body() if path.endswith("chat/completions") else {"prompt": "Hi", "max_tokens": 2}
    reply = request(server, "POST", path, {**head, "grammar": grammar})
    assert reply.status == 400, reply.body[:300]
    assert "grammar" in reply.error["message"]
    # a grammar of ordinary depth still constrains the output
    small = request(server, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 3, "temperature": 0,
                                                         "grammar": paren_grammar(50)})  # fmt: skip
    assert small.status == 200 and small.json()["choices"][0]["text"] == "a"
    assert_still_serving(server)


@pytest.mark.engine
def test_body_over_the_limit_gets_413_without_being_read(server: ServerHandle) -> None:
    # announce 20 MiB (the default limit is 8 MiB) and send only the start: the answer comes anyway
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (20 * 1024 * 1024) + b'{"messages": "' + b"a" * 4096
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert "--max-body-size" in json.loads(body)["error"]["message"]
    assert_still_serving(server)


@pytest.mark.engine
def test_max_body_size_flag_sets_the_limit(strict: ServerHandle) -> None:
    reply = request(strict, "POST", "/v1/chat/completions", chat_body("x" * 70_000))
    assert reply.status == 413 and reply.error["code"] == 413
    assert request(strict, "POST", "/v1/chat/completions", chat_body("x" * 1000)).status == 200


# ---------------------------------------------------------------------- 2. sizes that allocate


HUGE = 2**31 - 1


def assert_small_growth(handle: ServerHandle, body: dict[str, Any]) -> None:
    """`body` on /v1/completions is served (clamped) or refused, and the server's memory barely grows."""
    before = memory_kib(handle.pid)
    reply = request(handle, "POST", "/v1/completions", body)
    assert reply.status in (200, 400), reply.body[:300]  # never a crash
    handle.check(grace=0.5)
    after = memory_kib(handle.pid)
    assert after["VmRSS"] - before["VmRSS"] < GIB_KIB, (before, after)
    assert after["VmHWM"] - before["VmHWM"] < GIB_KIB, (before, after)  # the peak, not just what is left
    assert_still_serving(handle)


@pytest.mark.engine
@pytest.mark.parametrize(
    "params",
    [
        {"dry_penalty_last_n": HUGE, "dry_multiplier": 0.8},  # 8 bytes per unit: 16 GB, kept afterwards
        {"repeat_last_n": HUGE, "repeat_penalty": 1.1},  # 4 bytes per unit: 8 GB
    ],
    ids=lambda p: next(iter(p)),
)
def test_huge_sampler_windows_do_not_allocate(server: ServerHandle, params: dict[str, Any]) -> None:
    assert_small_growth(server, {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, **params})


@pytest.mark.engine
@pytest.mark.parametrize(
    "params",
    [
        {"n_probs": HUGE},
        {"min_keep": HUGE},
        {"top_k": HUGE},
        {"n_keep": HUGE, "n_discard": HUGE},
        {"max_tokens": HUGE, "stop": [" ", "e", "a", "o", "t"]},
    ],
    ids=lambda p: next(iter(p)),
)
def test_other_huge_sizes_are_bounded(server: ServerHandle, params: dict[str, Any]) -> None:
    assert_small_growth(server, {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, **params})


# ---------------------------------------------------------------------- 3. malformed values


MALFORMED = [
    # (path, raw body, words in the error); all used to answer 500 or be taken silently
    ("/v1/chat/completions", b"hello, not json", "parse error"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "UTF-8"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
     "parse error"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
     "1e999"),
    ("/v1/completions", json.dumps({"prompt": [1, 5, 2**40], "max_tokens": 2}).encode(), "invalid token id"),
    ("/v1/completions", json.dumps({"prompt": ["Hi", 2**40], "max_tokens": 2}).encode(), "invalid token id"),
    ("/v1/completions", json.dumps({"prompt": [1, 5, -3], "max_tokens": 2}).encode(), "invalid token id"),
    ("/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 2, "logit_bias": [[2**40, 5]]}).encode(),
     "invalid token id"),
    ("/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 2, "logit_bias": {str(2**40): 5}}).encode(),
     "invalid token id"),
    ("/detokenize", json.dumps({"tokens": [1, 999_999]}).encode(), "invalid token id"),
    ("/detokenize", json.dumps({"tokens": [-5]}).encode(), "invalid token id"),
    ("/detokenize", json.dumps({"tokens": [2**40]}).encode(), "invalid token id"),
]  # fmt: skip


@pytest.mark.engine
@pytest.mark.parametrize(("path", "body", "words"), MALFORMED)
def test_malformed_values_get_400(server: ServerHandle, path: str, body: bytes, words: str) -> None:
    reply = request(server, "POST", path, body)
    assert reply.status == 400, reply.body[:300]
    assert reply.error["type"] == "invalid_request_error" and words in reply.error["message"]
    assert request(server, "GET", "/health").status == 200
    server.check()


# ---------------------------------------------------------------------- 4. browsers and DNS rebinding


EVIL = "http://evil.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


@pytest.mark.engine
def test_foreign_origin_is_refused_and_never_echoed(server: ServerHandle) -> None:
    reply = request(server, "POST", "/v1/chat/completions", chat_body(), headers={"Origin": EVIL})
    assert reply.status == 403 and "--cors-origins" in reply.error["message"]
    assert "access-control-allow-origin" not in reply.headers
    preflight = request(server, "OPTIONS", "/v1/chat/completions", headers={"Origin": EVIL, **PREFLIGHT})
    assert preflight.status == 403
    assert not any(k.startswith("access-control-") for k in preflight.headers)
    for origin in ("null", "http://127.0.0.1:1", f"http://127.0.0.1.evil.example:{server.port}"):
        assert request(server, "GET", "/v1/models", headers={"Origin": origin}).status == 403, origin


@pytest.mark.engine
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_same_origin_requests_work_like_the_web_ui(server: ServerHandle, host: str) -> None:
    authority = f"{host}:{server.port}"
    same = {"Origin": f"http://{authority}", "Host": authority}
    reply = request(server, "POST", "/v1/chat/completions", chat_body(), headers=same)
    assert reply.status == 200, reply.body[:300]
    assert request(server, "GET", "/props", headers=same).status == 200
    page = request(server, "GET", "/", headers={"Host": authority, "Accept-Encoding": "gzip"})
    assert page.status in (200, 404)  # the UI (gzip only, as browsers take it), if built


@pytest.mark.engine
@pytest.mark.parametrize(
    ("content_type", "origin", "status"),
    [
        ("text/plain", None, 415),
        ("text/plain;charset=UTF-8", "same", 415),
        ("multipart/form-data; boundary=x", None, 415),
        ("application/x-www-form-urlencoded", "same", 415),
        ("application/x-www-form-urlencoded", None, 200),  # `curl -d '{...}'` without -H keeps working
        ("application/json", "same", 200),
        (None, None, 200),
    ],
)
def test_bodies_a_page_can_send_without_preflight_get_415(
    server: ServerHandle, content_type: str | None, origin: str | None, status: int
) -> None:
    headers = {"Origin": f"http://127.0.0.1:{server.port}"} if origin else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    reply = request(server, "POST", "/v1/chat/completions", chat_body(), headers=headers, content_type=None)
    assert reply.status == status, reply.body[:300]
    if status == 415:
        assert "application/json" in reply.error["message"]


@pytest.mark.engine
@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example", 403),
        ("evil.example:{port}", 403),
        ("127.0.0.1.nip.io:{port}", 403),
        ("localhost:{port}", 200),
        ("LOCALHOST", 200),
        ("127.0.0.1:{port}", 200),
        ("127.1.2.3:{port}", 200),
        ("[::1]:{port}", 200),
    ],
)
def test_loopback_server_answers_only_loopback_host_names(
    server: ServerHandle, host: str, status: int
) -> None:
    reply = request(server, "GET", "/v1/models", headers={"Host": host.format(port=server.port)})
    assert reply.status == status, reply.body[:300]
    if status == 403:
        assert "Host" in reply.error["message"]


@pytest.mark.engine
def test_non_loopback_bind_skips_the_host_check(
    tiny_model: Path, runtime: BitNetRuntime, tmp_path: Path
) -> None:
    with serve(
        tiny_model, runtime=runtime, host="0.0.0.0", api_key="hardening-key", threads=1, parallel=1,
        log_path=tmp_path / "public.log",
    ) as handle:  # fmt: skip
        reply = request(handle, "GET", "/v1/models", headers={"Host": f"my-server.lan:{handle.port}"})
        assert reply.status == 200, reply.body[:300]
        assert request(handle, "GET", "/v1/models", headers={"Origin": EVIL}).status == 403


@pytest.mark.engine
def test_allowed_origins_get_exactly_their_origin_back(strict: ServerHandle) -> None:
    reply = request(strict, "POST", "/v1/chat/completions", chat_body(), headers={"Origin": ALLOWED})
    assert reply.status == 200, reply.body[:300]
    assert reply.headers["access-control-allow-origin"] == ALLOWED and "Origin" in reply.headers["vary"]
    preflight = request(strict, "OPTIONS", "/v1/chat/completions", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert preflight.status == 200 and preflight.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in preflight.headers["access-control-allow-methods"]
    for other in (EVIL, "http://allowed.example:3001", "https://allowed.example:3000"):
        refused = request(strict, "POST", "/v1/chat/completions", chat_body(), headers={"Origin": other})
        assert refused.status == 403 and "access-control-allow-origin" not in refused.headers, other


def test_cors_origins_become_one_flag() -> None:
    assert cors_args(None) == [] and cors_args([]) == []
    assert cors_args(["https://app.example:8443", "http://b.example/", "*"]) == [
        "--cors-origins", "https://app.example:8443,http://b.example,*"
    ]  # fmt: skip
    bad_values = ("https://app.example", ["app.example"], ["https://a.example/path"], ["https://a,https://b"])
    for bad in (*bad_values, [""], [None]):
        with pytest.raises(RuntimeConfigurationError, match="origin"):
            cors_args(bad)  # type: ignore[arg-type]


def test_server_cli_passes_repeated_cors_origins(tiny_model: Path) -> None:
    done = subprocess.run(
        [sys.executable, "run_inference_server.py", "-m", str(tiny_model), "--cors-origin", "https://a.example",
         "--cors-origin", "http://b.example:8000", "--dry-run"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--cors-origins https://a.example,http://b.example:8000" in done.stdout
    bad = subprocess.run(
        [sys.executable, "run_inference_server.py", "-m", str(tiny_model), "--cors-origin", "a.example",
         "--dry-run"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "CORS origin" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------- 5. control tokens typed into a chat


def tokenize(handle: ServerHandle, text: str, *, special: bool, bos: bool = False) -> list[int]:
    reply = request(
        handle, "POST", "/tokenize", {"content": text, "parse_special": special, "add_special": bos}
    )
    assert reply.status == 200
    return reply.json()["tokens"]


def prompt_tokens(handle: ServerHandle, content: str) -> int:
    reply = request(handle, "POST", "/v1/chat/completions", chat_body(content, max_tokens=1))
    assert reply.status == 200, reply.body[:300]
    return reply.json()["usage"]["prompt_tokens"]


@pytest.mark.engine
def test_control_token_text_in_a_message_stays_text(server: ServerHandle) -> None:
    eos = "<|end_of_text|>"  # the tiny vocabulary's EOS, a control token
    assert tokenize(server, eos, special=True) == [1]  # what parse_special makes of it
    as_text = tokenize(server, eos, special=False)
    assert len(as_text) > 1
    # an ordinary message is tokenized as before: the whole rendered prompt, specials parsed
    prompt = request(server, "POST", "/apply-template", chat_body("Hello"))
    assert prompt_tokens(server, "Hello") == len(
        tokenize(server, prompt.json()["prompt"], special=True, bos=True)
    )
    # typed control-token text: the template's parts with specials, the typed text as plain text
    content = f"Hi {eos}{eos} there"
    rendered = request(server, "POST", "/apply-template", chat_body(content)).json()["prompt"]
    head, tail = rendered.split(content)
    expected = (
        tokenize(server, head + "Hi ", special=True, bos=True)
        + as_text
        + as_text
        + tokenize(server, " there" + tail, special=True)
    )
    assert prompt_tokens(server, content) == len(expected)  # was 2 control tokens in the prompt


@pytest.mark.engine
def test_control_token_text_a_template_alters_is_refused(
    tiny_model: Path, runtime: BitNetRuntime, model_dir: Path, tmp_path: Path
) -> None:
    upper = "{% for m in messages %}USER: {{ m['content'] | upper }}\n{% endfor %}ASSISTANT:"
    model = add_chat_template(tiny_model, model_dir / "tiny-upper.gguf", upper)
    with serve(model, runtime=runtime, threads=1, parallel=1, log_path=tmp_path / "upper.log") as handle:
        reply = request(handle, "POST", "/v1/chat/completions", chat_body("Hi <|end_of_text|>"))
        assert reply.status == 400, reply.body[:300]
        assert "control token" in reply.error["message"]
        assert request(handle, "POST", "/v1/chat/completions", chat_body("Hi there")).status == 200
