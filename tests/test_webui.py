"""The browser chat: llama-server's web UI, built into our engine by `invoke build` (--ui), used the way a
person uses it: headless Chromium opens `/`, types a message, presses Enter, and an answer appears.

Skipped (saying which) only when the engine was built without the UI or no Chromium is installed; CI
installs both (.ci/run). The tiny model's weights are random, so the answer is junk: the test checks
that one arrives, not what it says.
"""

from __future__ import annotations

import gzip
import urllib.request
from pathlib import Path

import pytest
from webui import ASSISTANT, Browser, chat_once, find_chromium

from bitnet import BitNetRuntime
from bitnet.engine import build as engine
from bitnet.runtime.server import serve

pytest_plugins = ["server_fixtures"]  # fixtures: tiny_model, runtime, no_leftover_processes
pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("no_leftover_processes")]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if not found:
        pytest.skip(
            "no Chromium found (chromium, chromium-browser, google-chrome or $BITNET_CHROMIUM): "
            "`apt-get install chromium` to run the browser test"
        )
    return found


@pytest.fixture(scope="module")
def ui_build(engine_build_dir: Path) -> Path:
    if not engine.ui_embedded(engine_build_dir):
        pytest.skip(
            f"the engine in {engine_build_dir} was built without the web UI (no Node.js >= "
            f"{engine.MIN_NODE_MAJOR} and npm at build time): {engine.UI_HINT}"
        )
    return engine_build_dir


@pytest.mark.slow
def test_chat_in_a_real_browser(
    ui_build: Path, chromium: str, tiny_model: Path, runtime: BitNetRuntime, tmp_path: Path
) -> None:
    with serve(
        tiny_model, runtime=runtime, threads=1, n_predict=48, log_path=tmp_path / "server.log"
    ) as server:
        url = f"http://127.0.0.1:{server.port}/"
        # the page comes from the binary, gzip-compressed as llama.cpp embeds it (it answers 415 to a
        # client that does not accept gzip; every browser does)
        request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=30) as page:
            assert page.status == 200 and "text/html" in page.headers["Content-Type"]
            assert b"<html" in gzip.decompress(page.read()).lower()
        with Browser(chromium) as browser:
            try:
                answer = chat_once(browser, url, "Hello from the browser test")
            except TimeoutError as exc:
                browser.screenshot(tmp_path / "failed.png")
                pytest.fail(f"{exc}\n(screenshot: {tmp_path / 'failed.png'}; server log: {server.log_path})")
            assert answer.strip()
            assert browser.evaluate(f"document.querySelectorAll({ASSISTANT!r}).length") == 1
        server.check()  # the server did not die serving the UI
