"""What stays of the model file's mapping once our kernels hold the ternary weights (patches 0011, 0013).

The ternary matrices are copied (repacked) out of the GGUF mapping; the small tensors between them (norms,
scales) move to an ordinary buffer and the mapping is released wherever no weight reads it any more. Only
the big tensors read in place (the embedding / fp16 head) stay mapped, however the page cache holds the file:
in large folios a read of one norm used to map its whole folio, up to 2 MiB of dropped weights with it.
Checked on a running llama-server after it answered, where the process's own page tables say what it maps.
"""

from __future__ import annotations

import http.client
import json
import mmap
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bitnet import BitNetRuntime
from bitnet.engine import contract
from bitnet.runtime.server import ServerHandle, serve

pytest_plugins = ["server_fixtures"]  # fixtures: runtime, no_leftover_processes
pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("no_leftover_processes")]

SMALL = 2 << 20  # tensors under a huge page move out of the mapping
MiB = 1 << 20


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Path:
    """The 125M dummy: a 49 MB f16 embedding (read in place) and 133 small tensors between ternary ones."""
    from bitnet.models.synthetic import write_dummy_model

    path = model_dir / "dummy-125M-mapping.gguf"
    if not path.exists():
        write_dummy_model("125M", path, progress=False)
    return path


def _tensors(model: Path) -> list[tuple[str, str, int]]:
    import gguf

    return [(t.name, t.tensor_type.name, int(t.n_bytes)) for t in gguf.GGUFReader(str(model)).tensors]


def _cache_in_large_folios(model: Path) -> None:
    """Best effort: drop the file's page cache, then read it back through a huge-page-advised mapping, so
    that (on a kernel and file system with large folios) the server finds it in 2 MiB folios."""
    fd = os.open(model, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
            if hasattr(mmap, "MADV_HUGEPAGE"):
                m.madvise(mmap.MADV_HUGEPAGE)
            for off in range(0, len(m), mmap.PAGESIZE):
                m[off]
    finally:
        os.close(fd)


def _mapped_kib(pid: int, model: Path) -> int:
    """Resident KiB of every mapping of `model` in process `pid`."""
    total, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
        if head:
            inside = head.group(1) == str(model)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def _complete(handle: ServerHandle) -> None:
    """One short completion, so every layer's norms and scales have been read."""
    conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=120)
    try:
        body = json.dumps({"prompt": "the cat sat on the mat", "n_predict": 4, "temperature": 0})
        conn.request("POST", "/completion", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200, response.read()[:500]
        assert json.loads(response.read())["tokens_predicted"] >= 1
    finally:
        conn.close()


@contextmanager
def _answering_server(model: Path, runtime: BitNetRuntime, log: Path) -> Iterator[ServerHandle]:
    """llama-server on `model` (libllama's load messages in `log`) after it answered one completion."""
    with serve(
        model,
        runtime=runtime,
        threads=1,
        parallel=1,
        ctx_size=256,
        log_path=log,
        extra_args=["--log-verbosity", "4"],
    ) as handle:
        _complete(handle)
        yield handle


@pytest.fixture
def served(model: Path, runtime: BitNetRuntime, tmp_path: Path) -> Iterator[tuple[ServerHandle, Path]]:
    _cache_in_large_folios(model)
    log = tmp_path / "server.log"
    with _answering_server(model, runtime, log) as handle:
        yield handle, log


def test_only_the_tensors_read_in_place_stay_mapped(served: tuple[ServerHandle, Path], model: Path) -> None:
    handle, log = served
    tensors = _tensors(model)
    ternary = [t for t in tensors if t[1] in ("TQ1_0", "TQ2_0")]
    small = [t for t in tensors if t not in ternary and t[2] < SMALL]
    kept = [t for t in tensors if t not in ternary and t[2] >= SMALL]
    assert ternary and small and [t[0] for t in kept] == ["token_embd.weight"]  # the model is what we think

    text = log.read_text()
    moved = re.search(r"moved (\d+) small tensors \(([\d.]+) MiB\) out of the mapping of file 0", text)
    assert moved, text[-3000:]
    assert int(moved.group(1)) == len(small)
    assert abs(float(moved.group(2)) - sum(t[2] for t in small) / MiB) < 0.01

    # what the server maps of the file: the embedding and at most a 2 MiB block at each of its ends
    resident = _mapped_kib(handle.pid, model) * 1024
    embd = kept[0][2]
    assert embd <= resident <= embd + 2 * SMALL, (resident, embd)


def test_stock_keeps_every_tensor_in_the_mapping(
    model: Path, runtime: BitNetRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without our kernels nothing is copied out of the mapping, so nothing moves and nothing is released."""
    monkeypatch.setenv(contract.KERNELS_ENV, "0")
    log = tmp_path / "server.log"
    with _answering_server(model, runtime, log) as handle:
        text = log.read_text()
        assert "listening on" in text and "small tensors" not in text
        # every tensor's pages (MAP_POPULATE read them all) are still mapped
        assert _mapped_kib(handle.pid, model) * 1024 >= sum(t[2] for t in _tensors(model)) - MiB
