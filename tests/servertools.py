"""Shared helpers for the server and chat tests: a chat template for the tiny model, process
bookkeeping through /proc, and a reader for output that arrives on a file descriptor.

The fixtures built on these live in `server_fixtures.py` (loaded with ``pytest_plugins``).
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from pathlib import Path

# A chat template the engine recognises both through jinja (llama-server) and through its built-in
# template detection (llama-completion without --jinja: "USER: " + "ASSISTANT: " + "SYSTEM: " is
# llama.cpp's vicuna-orca format). It ends assistant turns with the tiny vocabulary's EOS.
from bitnet.models.synthetic import TINY_CHAT_TEMPLATE as TINY_CHAT_TEMPLATE  # noqa: E402  (re-exported)


def add_chat_template(src: Path, dst: Path, template: str) -> Path:
    """Copy GGUF `src` to `dst` with ``tokenizer.chat_template`` set (tensors copied byte for byte)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dst, arch=arch, endianess=reader.endianess)
    new = {gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(gguf.GGUFValueType.STRING, template)}
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # its progress bar
        copy_with_new_metadata(reader, writer, new, [])
    return dst


# ---------------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of `pid`, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0]


def descendants(root: int) -> set[int]:
    """Every live or zombie process below `root` (by parent pid, read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def processes_using(path: Path) -> set[int]:
    """Processes whose command line mentions `path`: engine processes on our models, even orphans
    that were re-parented to init and so are no longer our descendants."""
    needle = str(path).encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in Path(entry, "cmdline").read_bytes():
                    stat = _stat(int(entry.name))
                    if stat is not None and stat[1] != "Z":
                        found.add(int(entry.name))
    return found


def pid_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once `pid` no longer runs (gone or a zombie), polling up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        stat = _stat(pid)
        if stat is None or stat[1] == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


class FdReader:
    """Accumulates what arrives on a file descriptor (a pipe or a pty master), with timeouts."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = b""
        self.closed = False

    def read_until(self, marker: bytes, timeout: float, start: int = 0) -> bool:
        """Read until `marker` occurs in data[start:] (True) or `timeout` s pass / EOF (False)."""
        deadline = time.monotonic() + timeout
        while marker not in self.data[start:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return False
            ready, _, _ = select.select([self.fd], [], [], min(remaining, 0.2))
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the pty's other side closed
                    chunk = b""
                if not chunk:
                    self.closed = True
                self.data += chunk
        return True

    def drain(self, timeout: float) -> bytes:
        """Read until EOF or `timeout`; return everything read so far."""
        self.read_until(b"\0never\0", timeout)
        return self.data
