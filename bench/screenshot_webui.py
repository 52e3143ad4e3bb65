"""Screenshot of the browser chat after one exchange, for the README (bench/figures/webui-chat.png).

    python bench/screenshot_webui.py [--model M.gguf] [--build-dir build] [--out PNG] [--message TEXT]

Serves the model with our llama-server (`bitnet.runtime.server.serve`, built with the web UI: `invoke build
--ui`), opens `/` in headless Chromium, sends one message and saves the page once the answer is complete.
Without --model it uses the offline tiny model (random weights: the answer is junk, the page is real).
Uses the browser driver of the tests (tests/webui.py, which needs `websockets` and a system Chromium).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from servertools import TINY_CHAT_TEMPLATE, add_chat_template  # noqa: E402
from webui import Browser, chat_once, find_chromium  # noqa: E402

from bitnet import BitNetRuntime  # noqa: E402
from bitnet.engine import build as engine  # noqa: E402
from bitnet.runtime.server import serve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="GGUF with a chat template (default: the tiny offline model)")
    ap.add_argument("--build-dir", default=str(ROOT / "build"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "figures" / "webui-chat.png"))
    ap.add_argument("--message", default="Hello! What can a 1.58-bit model do on a CPU?")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=760)
    args = ap.parse_args(argv)

    if not engine.ui_embedded(args.build_dir):
        sys.exit(f"error: the engine in {args.build_dir} has no web UI; {engine.UI_HINT}")
    chromium = find_chromium()
    if not chromium:
        sys.exit("error: no Chromium found; `apt-get install chromium` (or set $BITNET_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="bitnet-shot-") as tmp:
        model = Path(args.model) if args.model else None
        if model is None:
            from bitnet.models.synthetic import write_dummy_model

            plain = Path(tmp) / "tiny-plain.gguf"
            write_dummy_model("tiny", plain, progress=False)
            model = add_chat_template(plain, Path(tmp) / "tiny.gguf", TINY_CHAT_TEMPLATE)
        runtime = BitNetRuntime(build_dir=args.build_dir)
        with (
            serve(model, runtime=runtime, n_predict=48, log_path=Path(tmp) / "server.log") as server,
            Browser(chromium, width=args.width, height=args.height) as browser,
        ):
            answer = chat_once(browser, f"http://127.0.0.1:{server.port}/", args.message)
            browser.scroll_to_top()  # the question and the answer, not only the answer
            time.sleep(0.5)
            out = browser.screenshot(Path(args.out))
    print(f"answer: {answer[:80]!r}...")
    print(f"screenshot: {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
