"""bitnet.runtime.rusage: the wrapper the benchmarks run engines through, for their peak RSS and wall time."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from bitnet.runtime.rusage import parse_rusage, rusage_command


def _run(code: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        rusage_command([sys.executable, "-c", code]), capture_output=True, text=True, **kwargs
    )


def test_reports_the_peak_rss_of_the_child_not_of_the_wrapper():
    small = parse_rusage(_run("print('hi')").stderr)
    done = _run("b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); print('ok')")
    big = parse_rusage(done.stderr)
    assert done.returncode == 0 and done.stdout == "ok\n"
    assert small is not None and big is not None
    assert big.max_rss_mb > 300 and small.max_rss_mb < 100  # the 300 MB touched, then not
    assert done.stderr.rstrip().splitlines()[-1].startswith("bitnet-rusage: ")  # after the child's output


def test_exit_status_and_wall_time_are_the_childs():
    t0 = time.monotonic()
    done = _run("import sys, time; time.sleep(0.3); sys.exit(3)")
    usage = parse_rusage(done.stderr)
    assert done.returncode == 3 and usage is not None
    assert 0.3 <= usage.wall_s <= time.monotonic() - t0
    killed = _run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == 128 + signal.SIGKILL and parse_rusage(killed.stderr) is not None


def test_a_term_to_the_wrapper_reaches_the_child():
    proc = subprocess.Popen(
        rusage_command([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM and parse_rusage(err) is not None


def test_no_report_and_bad_usage():
    assert parse_rusage("nothing here\n") is None
    done = subprocess.run(rusage_command([]), capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
    missing = subprocess.run(rusage_command(["/nonexistent/engine"]), capture_output=True, text=True)
    assert missing.returncode == 127 and "cannot start" in missing.stderr
