"""nox sessions. Thin: each installs the project and calls pytest, ruff/mypy or a bitnet function.

nox -s tests             # the pytest suite (builds the engine once, cached)
nox -s lint              # ruff + mypy over bitnet/
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite; extra arguments go to pytest (e.g. `nox -s tests -- -k runtime`)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the project, mypy over the package."""
    session.install("-e", ".[dev]")
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
