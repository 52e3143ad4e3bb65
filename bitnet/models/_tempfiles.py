"""Hidden temporary files next to an output, named so that a later writer can tell whether their
writer is dead (private to the package).

Every atomic write (GGUF files above all: hundreds of MB) goes to ``.<stem><tag>.<pid>-<random><suffix>.tmp``
in the output's directory and is renamed over the output when complete. The writer removes it on any
exception (Ctrl-C, and SIGTERM/SIGHUP once the CLIs turn them into exceptions); a writer killed outright
(SIGKILL, power loss) cannot, so `new_temp` first removes the temps of the same output whose pid no
longer runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Temps of the naming used before pids were recorded (".model-x1y2.gguf.tmp"): removed once this old,
# since no live writer leaves its file untouched that long.
LEGACY_STALE_SECONDS = 3600.0


def new_temp(out: Path, tag: str = "") -> Path:
    """Create an empty hidden temp file for `out` (same directory) and return its path.

    `tag` (letters, digits, "-") tells apart several temps of one write, e.g. "-f16head". Stale temps
    of `out` left by dead writers are removed first.
    """
    if not re.fullmatch(r"[-\w]*", tag):
        raise ValueError(f"temp tag must be letters, digits, '_' or '-'. Got {tag!r}.")
    remove_stale_temps(out)
    parent = out.parent if str(out.parent) else Path(".")
    fd, name = tempfile.mkstemp(
        prefix=f".{out.stem}{tag}.{os.getpid()}-", suffix=f"{out.suffix}.tmp", dir=parent
    )
    os.close(fd)
    return Path(name)


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove the temps of `out` whose writer process is gone; return what was removed."""
    parent = out.parent if str(out.parent) else Path(".")
    ours = re.compile(rf"\.{re.escape(out.stem)}(?:-[-\w]*)?\.(?P<pid>\d+)-\w+{re.escape(out.suffix)}\.tmp")
    legacy = re.compile(rf"\.{re.escape(out.stem)}-[-\w]*{re.escape(out.suffix)}\.tmp")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = ours.fullmatch(entry.name)
        if match:
            stale = not _pid_alive(int(match["pid"]))
        elif legacy.fullmatch(entry.name):
            stale = False
            with contextlib.suppress(OSError):
                stale = now - entry.stat().st_mtime > LEGACY_STALE_SECONDS
        else:
            continue
        if stale and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
                log.info("removed %s, left by an interrupted write of %s", entry.name, out.name)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to judge
        return True
    try:  # a zombie is dead: it can write nothing more
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"
