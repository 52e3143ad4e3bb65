"""Seams between the package's modules: what other modules may use of `BitNetRuntime` is its public API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bitnet import BitNetRuntime

PACKAGE = Path(__file__).resolve().parent.parent / "bitnet"
REPO = PACKAGE.parent


def runtime_private_names() -> set[str]:
    return {name for name in vars(BitNetRuntime) if name.startswith("_") and not name.startswith("__")}


def private_uses(path: Path, names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{path.relative_to(REPO)}:{node.lineno} .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in names
        # a class's own private attributes of the same name (self._build_dir in another class) are theirs
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    ]


def test_no_module_but_runtime_calls_a_private_name_of_the_runtime() -> None:
    names = runtime_private_names()
    assert {"_require_binary", "_require_model", "_resolve_threads"} <= names  # the test can see them
    sources = [p for p in PACKAGE.rglob("*.py") if p.name != "runtime.py"] + [REPO / "tasks.py"]
    found = [use for path in sources for use in private_uses(path, names)]
    assert found == [], "use BitNetRuntime's public API instead: " + ", ".join(found)


@pytest.mark.parametrize("method", ["find_binary", "check_model", "resolve_threads", "inference_command"])
def test_the_public_seams_exist(method: str) -> None:
    assert callable(getattr(BitNetRuntime, method)) and getattr(BitNetRuntime, method).__doc__
