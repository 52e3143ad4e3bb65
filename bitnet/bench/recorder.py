"""One recorder for every measurement the toolkit stores: llama-bench sweeps (`invoke bench`), serving
(`invoke serve-bench`), perplexity (`invoke ppl`) and kernel tuning (`invoke tune`).

A `RunRecorder` is made once per run. It owns what every row of the run shares and what used to be
rebuilt by each benchmark:

- the run id (uuid4 hex) and the file its rows go to, ``<results_dir>/<UTC stamp>-<name>-<id[:8]>.jsonl``,
  written through `bitnet.bench.results.ResultsWriter` (atomic first write, whole lines after);
- the identity columns (STYLE.md 11): this repo's commit and whether it is dirty, the engine pin and
  build fingerprint, the host's CPU (`run_identity`);
- the row header: ``schema``, ``kind``, ``run_id``, ``date`` then the identity, then the row's own fields;
- where the run's logs go, ``<results_dir>/../logs/<results file stem>/``.

    rec = RunRecorder.start("perplexity", results_dir=DEFAULT_RESULTS_DIR, build_dir="build")
    rec.append([rec.row({"ppl": 17.1, ...})])
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bitnet.bench.results import SCHEMA_VERSION, ResultsWriter
from bitnet.engine.build import load_pin, read_build_info
from bitnet.engine.cpu import CpuInfo, detect_cpu
from bitnet.errors import BitNetError
from bitnet.paths import REPO_ROOT

__all__ = ["RunRecorder", "now_iso", "run_identity"]


def now_iso() -> str:
    """The current UTC time as ISO 8601 with a Z, to the second: the ``date`` of a row."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            # --no-optional-locks: `git status` must not refresh the index (other git users may hold it)
            ["git", "--no-optional-locks", "-C", str(REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def run_identity(build_dir: str | os.PathLike[str], cpu: CpuInfo) -> dict[str, Any]:
    """Columns every row of a run shares: this repo's commit, the engine pin and build, the host.

    ``repo_dirty`` is True when tracked files differ from the commit (read-only ``git status``);
    ``engine_build`` is the first 12 hex digits of the build fingerprint `invoke build` recorded.
    """
    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        pin = load_pin()
        engine_pin: str | None = f"{pin.package}=={pin.version}"
    except BitNetError:
        engine_pin = None
    fingerprint = read_build_info(Path(build_dir)).get("fingerprint")
    return {
        "repo_commit": _git("rev-parse", "HEAD"),
        "repo_dirty": None if status is None else bool(status),
        "engine_pin": engine_pin,
        "engine_build": str(fingerprint)[:12] if fingerprint else None,
        "cpu_model": cpu.model,
        "cpu_arch": cpu.arch,
        "cpu_flags": " ".join(cpu.features),
        "cpu_cores": cpu.logical_cores,
    }


@dataclass
class RunRecorder:
    """One measurement run: its id, its rows' file and logs dir, and the columns every row shares.

    Attributes:
        kind: the ``kind`` column of its rows: "llama-bench", "serving", "perplexity", "tune".
        run_id: uuid4 hex; its first 8 digits name the results file.
        results_path: the JSONL file the rows are appended to (created by the first `append`).
        logs_dir: where the run's log files go (created when one is written).
        identity: `run_identity`'s columns.
        cpu: the host CPU the identity describes.
    """

    kind: str
    run_id: str
    results_path: Path
    logs_dir: Path
    identity: dict[str, Any]
    cpu: CpuInfo
    writer: ResultsWriter = field(init=False)

    def __post_init__(self) -> None:
        self.writer = ResultsWriter(self.results_path)

    @classmethod
    def start(
        cls,
        kind: str,
        *,
        results_dir: str | os.PathLike[str],
        build_dir: str | os.PathLike[str],
        name: str | None = None,
        cpu: CpuInfo | None = None,
    ) -> RunRecorder:
        """A new run of `kind` whose rows go to ``<results_dir>/<stamp>-<name or kind>-<id>.jsonl``."""
        run_id = uuid.uuid4().hex
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        results_path = Path(results_dir) / f"{stamp}-{name or kind}-{run_id[:8]}.jsonl"
        cpu = detect_cpu() if cpu is None else cpu
        return cls(
            kind=kind,
            run_id=run_id,
            results_path=results_path,
            logs_dir=Path(results_dir).parent / "logs" / results_path.stem,
            identity=run_identity(build_dir, cpu),
            cpu=cpu,
        )

    def header(self, kind: str | None = None) -> dict[str, Any]:
        """The first columns of every row: schema, kind, run id, date, then the identity."""
        return {
            "schema": SCHEMA_VERSION,
            "kind": kind or self.kind,
            "run_id": self.run_id,
            "date": now_iso(),
            **self.identity,
        }

    def row(self, fields: Mapping[str, Any], *, kind: str | None = None) -> dict[str, Any]:
        """A tidy row: `header` then `fields` (a field named like a header column replaces it)."""
        return {**self.header(kind), **fields}

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Store `rows` now (an interrupted run keeps every row appended before)."""
        self.writer.append(rows)

    def log_path(self, name: str) -> Path:
        """Where the run's log file `name` goes (its directory is made)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        return self.logs_dir / name
