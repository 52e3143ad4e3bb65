"""nox sessions. Thin: each installs the project and calls pytest, ruff/mypy or a bitnet function.

nox -s tests             # the pytest suite (builds the engine once, cached)
nox -s lint              # ruff over the project, mypy over bitnet/, tasks.py, noxfile.py (no torch)
nox -s tests_matrix      # the suite on every installed Python of 3.10-3.13
"""

from __future__ import annotations

import sys

import nox

nox.options.sessions = ["tests", "lint"]  # `nox` alone; bench/plots/kernels on request
nox.options.reuse_existing_virtualenvs = True

# The interpreter nox itself runs on (any Python >= 3.10, as pyproject says), not a pinned 3.11: the README
# promises >= 3.10 and CI machines have one Python. `nox -s tests_matrix` runs every version it finds.
PYTHON = None
MATRIX = ["3.10", "3.11", "3.12", "3.13"]
# Test/dev/lint dependencies pinned to what installs on our machines (CPython 3.11); other Pythons of the
# matrix resolve their own versions (the pins may not exist for them).
CONSTRAINTS = ".ci/constraints.txt"
RUFF_PATHS = (
    "bitnet",
    "tests",
    "bench",
    "kernels/ternary/cmake",
    "tasks.py",
    "noxfile.py",
    "run_inference.py",
    "run_inference_server.py",
)


def install(session: nox.Session, *args: str) -> None:
    """`pip install ARGS` with the pinned versions on the interpreter they were pinned for."""
    python = session.python or f"{sys.version_info[0]}.{sys.version_info[1]}"  # None: nox's own
    pinned = python == "3.11"
    session.install(*(("-c", CONSTRAINTS) if pinned else ()), *args)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite; extra arguments go to pytest (e.g. `nox -s tests -- -k runtime`)."""
    install(session, "-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=MATRIX)
def tests_matrix(session: nox.Session) -> None:
    """The test suite on each Python of MATRIX that is installed (missing ones are skipped, saying so)."""
    install(session, "-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def kernels(session: nox.Session) -> None:
    """The C kernel tests (ctest) of every ISA variant the host can run, and ARM under qemu-user."""
    install(session, "-e", ".[dev]")
    session.run("pytest", "tests/test_kernels_c.py", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (lint + format) over the project, mypy over the package, tasks.py and noxfile.py (the `lint`
    extra: no torch, a small venv). CI runs it (.ci/run); .pre-commit-config.yaml runs the same checks."""
    install(session, "-e", ".[lint]")
    session.run("ruff", "check", *RUFF_PATHS)
    session.run("ruff", "format", "--check", *RUFF_PATHS)
    session.run("mypy", "bitnet", "tasks.py", "noxfile.py")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: the quick matrix (bench/specs/quick.toml); `-- --full` runs the long one.

    Other arguments go to `invoke bench`, e.g. `nox -s bench -- --reps 3 --threads 1,2`.
    """
    install(session, "-e", ".")
    spec = "full" if "--full" in session.posargs else "quick"
    args = [arg for arg in session.posargs if arg != "--full"]
    session.run("invoke", "build")  # a no-op when the engine is up to date
    session.run("invoke", "bench", "--spec", spec, *args)


@nox.session(python=PYTHON)
def plots(session: nox.Session) -> None:
    """Redraw bench/plots/*.png and *.svg from the rows in bench/results/; arguments go to `invoke plot`."""
    install(session, "-e", ".")
    session.run("invoke", "plot", *session.posargs)
