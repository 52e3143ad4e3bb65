"""nox sessions. Thin: each installs the project and calls pytest, ruff/mypy or a bitnet function.

nox -s tests             # the pytest suite (builds the engine once, cached)
nox -s lint              # ruff + mypy over bitnet/ (no torch in its venv)
nox -s tests_matrix      # the suite on every installed Python of 3.10-3.13
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]  # `nox` alone; bench/plots/kernels on request
nox.options.reuse_existing_virtualenvs = True

# The interpreter nox itself runs on (any Python >= 3.10, as pyproject says), not a pinned 3.11: the README
# promises >= 3.10 and CI machines have one Python. `nox -s tests_matrix` runs every version it finds.
PYTHON = None
MATRIX = ["3.10", "3.11", "3.12", "3.13"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite; extra arguments go to pytest (e.g. `nox -s tests -- -k runtime`)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=MATRIX)
def tests_matrix(session: nox.Session) -> None:
    """The test suite on each Python of MATRIX that is installed (missing ones are skipped, saying so)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def kernels(session: nox.Session) -> None:
    """The C kernel tests (ctest) of every ISA variant the host can run, and ARM under qemu-user."""
    session.install("-e", ".[dev]")
    session.run("pytest", "tests/test_kernels_c.py", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the project, mypy over the package (the `lint` extra: no torch, a small venv)."""
    session.install("-e", ".[lint]")
    session.run(
        "ruff",
        "check",
        "bitnet",
        "tests",
        "tasks.py",
        "noxfile.py",
        "run_inference.py",
        "run_inference_server.py",
    )
    session.run("mypy", "bitnet")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: the quick matrix (bench/specs/quick.toml); `-- --full` runs the long one.

    Other arguments go to `invoke bench`, e.g. `nox -s bench -- --reps 3 --threads 1,2`.
    """
    session.install("-e", ".")
    spec = "full" if "--full" in session.posargs else "quick"
    args = [arg for arg in session.posargs if arg != "--full"]
    session.run("invoke", "build")  # a no-op when the engine is up to date
    session.run("invoke", "bench", "--spec", spec, *args)


@nox.session(python=PYTHON)
def plots(session: nox.Session) -> None:
    """Redraw bench/plots/*.png and *.svg from the rows in bench/results/; arguments go to `invoke plot`."""
    session.install("-e", ".")
    session.run("invoke", "plot", *session.posargs)
