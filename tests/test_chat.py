"""Interactive chat (`run_inference.py -cnv`) driven through a pseudo-terminal, and one-shot inference.

A person types into a terminal: the chat is started on a pty with a controlling terminal, the test
waits for llama-completion's prompt marker ("> " on a new line), types a message, reads the answer up
to the next marker, and quits with Ctrl-D (llama-completion's -cnv mode has no /exit command: an
empty read, i.e. EOF, ends it; ref: tools/completion/completion.cpp "EOF by user"). The tiny model's
text is junk: the tests check the shape of the exchange, not its meaning.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import termios
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servertools import FdReader

from bitnet import BitNetRuntime

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT_MARKER = b"\n> "
ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")
# -n counts the user's turn too (completion.cpp subtracts the input's tokens from what is left), so it
# must cover the templated message plus an answer; 64 does for a short message on the tiny model.
N_PREDICT = "64"

pytest_plugins = ["server_fixtures"]  # fixtures: tiny_model, runtime, no_leftover_processes
pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("no_leftover_processes")]


@dataclass
class Terminal:
    proc: subprocess.Popen[bytes]
    master: int
    slave: int
    out: FdReader

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def text(self, start: int = 0) -> str:
        return ANSI.sub(b"", self.out.data[start:]).decode("utf-8", errors="replace").replace("\r", "")


@pytest.fixture
def chat(tiny_model: Path, runtime: BitNetRuntime) -> Iterator[Terminal]:
    """`run_inference.py -cnv` on a pty that is its controlling terminal, as in a shell."""
    master, slave = os.openpty()

    def as_a_shell_would() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty becomes our controlling terminal: Ctrl-C works
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(
        [sys.executable, "run_inference.py", "-m", str(tiny_model), "-p", "You are terse.", "-cnv",
         "-n", N_PREDICT, "-temp", "0", "-t", "1", "--build-dir", str(runtime.build_dir)],
        cwd=REPO_ROOT, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=as_a_shell_would,
    )  # fmt: skip
    term = Terminal(proc, master, slave, FdReader(master))
    try:
        yield term
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
        os.close(slave)


def test_chat_in_a_terminal(chat: Terminal) -> None:
    assert chat.out.read_until(PROMPT_MARKER, timeout=60), chat.text()
    assert "chat template is not available" not in chat.text()  # the model's own template is used
    start = len(chat.out.data)
    chat.type(b"Hello there\r")
    assert chat.out.read_until(PROMPT_MARKER, timeout=60, start=start), chat.text(start)
    exchange = chat.text(start)
    assert exchange.startswith("Hello there\n")  # what we typed, echoed
    answer = exchange[len("Hello there\n") : exchange.rindex("\n> ")]
    assert answer.strip(), f"no answer in {exchange!r}"
    chat.type(b"\x04")  # Ctrl-D on an empty line: end of input, the chat ends
    # exit status 0 is the clean end; its "EOF by user" line is not checked: llama.cpp's logger writes
    # from a thread and sometimes loses the last lines at exit.
    assert chat.proc.wait(timeout=30) == 0, chat.text()


def test_chat_prompt_is_the_system_prompt(chat: Terminal) -> None:
    assert chat.out.read_until(PROMPT_MARKER, timeout=60), chat.text()
    assert "SYSTEM: You are terse." in chat.text()  # the model's template, system turn
    chat.type(b"\x04")
    assert chat.proc.wait(timeout=30) == 0


def test_ctrl_c_ends_the_chat_and_gives_the_terminal_back(chat: Terminal) -> None:
    assert chat.out.read_until(PROMPT_MARKER, timeout=60), chat.text()
    # llama-completion reads keys raw, without echo, while it waits for input
    assert not termios.tcgetattr(chat.slave)[3] & termios.ECHO
    chat.type(b"\x03")  # Ctrl-C: SIGINT to the foreground process group, i.e. our CLI
    assert chat.proc.wait(timeout=30) == 130, chat.text()
    assert chat.out.read_until(b"interrupted", timeout=10), chat.text()
    text = chat.text()
    assert "interrupted" in text and "Traceback" not in text
    lflag = termios.tcgetattr(chat.slave)[3]
    assert lflag & termios.ECHO and lflag & termios.ICANON, "the terminal was left without echo"


def test_one_shot_inference_is_greedy_and_repeatable(tiny_model: Path, runtime: BitNetRuntime) -> None:
    argv = [
        sys.executable, "run_inference.py", "-m", str(tiny_model), "-p", "Once upon a time", "-n", "8",
        "-temp", "0", "-t", "1", "--build-dir", str(runtime.build_dir), "--log-level", "warning",
    ]  # fmt: skip
    first, second = (
        subprocess.run(
            argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
        for _ in range(2)
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Once upon a time") and len(first.stdout.strip()) > len("Once upon a time")
    assert first.stdout == second.stdout  # greedy decoding is deterministic
