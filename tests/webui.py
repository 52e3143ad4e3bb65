"""Drive llama-server's web UI in headless Chromium, for tests/test_webui.py and bench/screenshot_webui.py.

A small client of the Chrome DevTools Protocol over one WebSocket (the `websockets` package): the only
binary is the system's Chromium (Debian's `chromium`), with no driver whose version must match the
browser's (chromedriver) and no browser build of a framework's own (Playwright) to download.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# The pinned UI's elements (tools/ui/src/lib/components/app/chat): the chat input is a textarea or, with
# the rich editor, a contenteditable; the answer is rendered as markdown inside the assistant message.
INPUT = "form textarea, form [contenteditable='true']"
ASSISTANT = "[aria-label='Assistant message with actions']"
ANSWER = ASSISTANT + " .markdown-content"
USER = "[aria-label='User message with actions']"


def find_chromium() -> str | None:
    """$BITNET_CHROMIUM, else the first Chromium/Chrome on PATH."""
    env = os.environ.get("BITNET_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page; a context manager that leaves no process or profile behind."""

    def __init__(self, executable: str, *, width: int = 1280, height: int = 860, timeout: float = 60.0):
        from websockets.sync.client import connect

        self.timeout = timeout
        self._ids = itertools.count(1)
        self._stack = contextlib.ExitStack()  # the WebSocket, closed first on close()
        self._profile = Path(tempfile.mkdtemp(prefix="bitnet-chromium-"))
        argv = [
            executable,
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-extensions",
            "--hide-scrollbars",
            "--mute-audio",
            "--force-device-scale-factor=1",
            f"--window-size={width},{height}",
            f"--user-data-dir={self._profile}",
            "--remote-debugging-port=0",  # Chromium picks a port and writes it to DevToolsActivePort
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self._log = (self._profile / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            port = self._devtools_port()
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
            self._ws = self._stack.enter_context(connect(ws_url, max_size=None, open_timeout=10))
            self.send("Page.enable")
            # the page's viewport exactly (the window size would include the headless browser's frame)
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                      deviceScaleFactor=1, mobile=False)  # fmt: skip
        except BaseException:
            self.close()
            raise

    def _devtools_port(self) -> int:
        marker = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(marker.read_text().splitlines()[0])
            time.sleep(0.1)
        raise TimeoutError(f"chromium opened no DevTools port in {self.timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, n: int = 1500) -> str:
        try:
            return (self._profile / "chromium.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ protocol

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events in between are dropped)."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {method} in {self.timeout:.0f} s")
            reply = json.loads(self._ws.recv(timeout=left))
            if reply.get("id") != msg_id:
                continue
            if "error" in reply:
                raise RuntimeError(f"{method} failed: {reply['error']}")
            result: dict[str, Any] = reply.get("result", {})
            return result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression!r} threw: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, *, timeout: float | None = None) -> Any:
        """Poll `expression` until it is truthy; return its value, or fail saying what did not happen."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText.slice(0, 800) : ''")
                raise TimeoutError(f"timed out waiting for {what}; the page shows: {text!r}")
            time.sleep(0.2)

    # ------------------------------------------------------------------ page actions

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        loaded = "document.readyState === 'complete' && location.href !== 'about:blank'"
        self.wait_for(loaded, f"{url} to load")

    def insert_text(self, text: str) -> None:
        """Type into the focused element (real input events, as from an IME)."""
        self.send("Input.insertText", text=text)

    def press_enter(self) -> None:
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13}
        self.send("Input.dispatchKeyEvent", type="keyDown", text="\r", **key)
        self.send("Input.dispatchKeyEvent", type="keyUp", **key)

    def scroll_to_top(self) -> None:
        """Scroll every scrolled element (the UI scrolls its message list, not the window) to its top."""
        self.evaluate("[document.scrollingElement, ...document.querySelectorAll('*')]"
                      ".forEach(e => { if (e && e.scrollTop > 0) e.scrollTop = 0; })")  # fmt: skip

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Stop Chromium and every process it started (its process group), remove its profile."""
        with contextlib.suppress(Exception):
            self._stack.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # helpers (zygote, renderers) left in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def chat_once(browser: Browser, url: str, message: str, *, timeout: float = 180.0) -> str:
    """Open the chat at `url`, send `message` as a user would (type, Enter), return the assistant's answer
    once it is complete (non-empty, and the UI offers Send again instead of Stop)."""
    browser.open(url)
    q = json.dumps
    browser.wait_for(f"!!document.querySelector({q(INPUT)})", "the chat input", timeout=timeout)
    browser.evaluate(f"document.querySelector({q(INPUT)}).focus()")
    browser.insert_text(message)
    browser.wait_for(
        f"(e => (e.value ?? e.innerText).includes({q(message)}))(document.querySelector({q(INPUT)}))",
        "the typed message in the chat input",
    )
    browser.press_enter()
    sent = f"[...document.querySelectorAll({q(USER)})].some(e => e.innerText.includes({q(message)}))"
    browser.wait_for(sent, "the sent message in the conversation", timeout=timeout)
    done = (
        f"(() => {{ const a = [...document.querySelectorAll({q(ANSWER)})].pop();"
        " const busy = [...document.querySelectorAll('form button')]"
        ".some(b => b.innerText.trim() === 'Stop');"
        " return a && !busy && a.innerText.trim() ? a.innerText.trim() : ''; })()"
    )
    answer: str = browser.wait_for(done, "a complete assistant answer", timeout=timeout)
    return answer
