"""The package's architecture, checked on its source (bitnet/ARCHITECTURE.md says why):

- five stages, each a subpackage, imported only downwards: engine < models < runtime < bench < CLI, with
  `bitnet.errors` and `bitnet.paths` below them all (ALLOWED lists every edge);
- models may use the runtime only through `bitnet.runtime`'s public names (its ``__all__``);
- no module imports a private name (``_x``) of another module, nor reads one off an imported module;
  a private *module* (``bitnet/<stage>/_x.py``) may be imported only from inside its own stage;
- no import cycle between modules (lazy imports inside functions count; ``if TYPE_CHECKING`` ones do not);
- every exception class lives in bitnet/errors.py (a private one used only inside its module may stay);
- other modules use only `BitNetRuntime`'s public API.

Each rule is also run on a small synthetic package that breaks it, so the test can fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bitnet import BitNetRuntime

PACKAGE = Path(__file__).resolve().parent.parent / "bitnet"
REPO = PACKAGE.parent

# ------------------------------------------------------------------------------------------ the rules

STAGES = ("core", "engine", "models", "runtime", "bench", "cli", "facade")
# Which stage a module belongs to: the first matching prefix (a subpackage), else by module name.
STAGE_OF_PREFIX = {
    "engine": "engine",
    "models": "models",
    "runtime": "runtime",
    "server": "runtime",  # bitnet.server: the README's name for bitnet.runtime.server (a re-export)
    "bench": "bench",
    "errors": "core",
    "paths": "core",
    "cli": "cli",
    "pipeline": "cli",
    "doctor": "cli",
    "__main__": "cli",
}
# Every edge a stage may have (its own stage included). Anything else is an upward or sideways import.
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "engine": {"core", "engine"},
    "models": {"core", "engine", "models"},
    "runtime": {"core", "engine", "models", "runtime"},
    "bench": {"core", "engine", "models", "runtime", "bench"},
    "cli": {"core", "engine", "models", "runtime", "bench", "cli"},
    # bitnet/__init__.py: the top-level API, re-exports the runtime and the errors; nothing imports it
    "facade": {"core", "runtime"},
}
# Edges allowed only through a stage's public API: models may use `bitnet.runtime`'s exported names
# (to run llama-quantize, to smoke-test a model), never a module inside the runtime.
PUBLIC_API_EDGES: dict[tuple[str, str], str] = {("models", "runtime"): "runtime"}


@dataclass(frozen=True)
class Import:
    """One import statement's effect: `module` imports `target` (a module) and maybe `name` from it."""

    module: str
    target: str
    name: str | None
    line: int
    lazy: bool  # inside a function: runs when called, not at import time
    type_only: bool  # under `if TYPE_CHECKING:`


@dataclass
class Package:
    """A parsed package: its modules (dotted name -> AST) and their imports."""

    name: str
    root: Path
    modules: dict[str, ast.Module] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def parse(cls, root: Path) -> Package:
        pkg = cls(root.name, root)
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            pkg.modules[name] = ast.parse(path.read_text(), filename=str(path))
            pkg.paths[name] = path
        return pkg

    def stage(self, module: str) -> str:
        parts = module.split(".")[1:]
        if not parts:
            return "facade"
        return STAGE_OF_PREFIX.get(parts[0], "unassigned")

    def is_package(self, module: str) -> bool:
        return self.paths[module].name == "__init__.py"

    def imports(self, module: str) -> Iterator[Import]:
        tree = self.modules[module]
        base = module if self.is_package(module) else module.rpartition(".")[0]
        for node, lazy, type_only in _walk_imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == self.name:
                        yield Import(module, alias.name, None, node.lineno, lazy, type_only)
                continue
            source = node.module or ""
            if node.level:  # relative import
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                source = ".".join(anchor + ([source] if source else []))
            if source.split(".")[0] != self.name:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in self.modules:  # `from pkg import module`
                    yield Import(module, sub, None, node.lineno, lazy, type_only)
                else:
                    yield Import(module, source, alias.name, node.lineno, lazy, type_only)


def _walk_imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    def visit(
        node: ast.AST, lazy: bool, type_only: bool
    ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, lazy, type_only
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(child, True, type_only)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.body:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), lazy, True)
                for stmt in child.orelse:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), lazy, type_only)
            else:
                yield from visit(child, lazy, type_only)

    yield from visit(tree, False, False)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_import_problems(pkg: Package) -> list[str]:
    """Private names imported from, or read off, another module; private modules used outside their stage."""
    problems = []
    for module in pkg.modules:
        module_names: dict[str, str] = {}  # local name bound to one of the package's modules
        for imp in pkg.imports(module):
            where = f"{module}:{imp.line}"
            if imp.name is not None and _private(imp.name):
                problems.append(f"{where} imports the private name {imp.name} from {imp.target}")
            private_parts = [p for p in imp.target.split(".") if _private(p)]
            if private_parts and pkg.stage(imp.target) != pkg.stage(module):
                problems.append(f"{where} imports the private module {imp.target} from another stage")
            if imp.name is None:
                module_names[imp.target.rpartition(".")[2]] = imp.target
        for node in ast.walk(pkg.modules[module]):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in module_names
                and _private(node.attr)
            ):
                owner = module_names[node.value.id]
                problems.append(f"{module}:{node.lineno} reads the private name {node.attr} of {owner}")
    return problems


def stage_problems(pkg: Package) -> list[str]:
    """Imports that run up the stages, or into a higher stage other than through its public API."""
    problems = []
    for module in pkg.modules:
        src = pkg.stage(module)
        if src == "unassigned":
            problems.append(f"{module} belongs to no stage: add it to STAGE_OF_PREFIX")
            continue
        for imp in pkg.imports(module):
            dst = pkg.stage(imp.target)
            if dst in ALLOWED[src]:
                continue
            api = PUBLIC_API_EDGES.get((src, dst))
            if api is not None and imp.target == f"{pkg.name}.{api}":
                exported = _exported(pkg, imp.target)
                if imp.name is not None and imp.name in exported:
                    continue
                problems.append(
                    f"{module}:{imp.line} ({src}) uses {imp.target}.{imp.name}, not in its __all__ {exported}"
                )
                continue
            problems.append(f"{module}:{imp.line} ({src}) imports {imp.target} ({dst}): not an allowed edge")
    return problems


def _exported(pkg: Package, module: str) -> list[str]:
    for node in pkg.modules[module].body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def import_cycles(pkg: Package) -> list[list[str]]:
    """Strongly connected groups of modules (import-time and lazy imports, and the parent packages an
    import runs); the top-level package is left out: Python runs it before any of its submodules."""
    graph: dict[str, set[str]] = {m: set() for m in pkg.modules}
    for module in pkg.modules:
        for imp in pkg.imports(module):
            if imp.type_only:
                continue
            parts = imp.target.split(".")
            for i in range(2, len(parts) + 1):  # bitnet.a.b runs bitnet.a's __init__ too,
                target = ".".join(parts[:i])  # unless it is our own parent (it ran before us)
                if target in graph and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    graph.pop(pkg.name, None)
    for edges in graph.values():
        edges.discard(pkg.name)
    return [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            out.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def exception_problems(pkg: Package) -> list[str]:
    """Public exception classes defined anywhere but <pkg>/errors.py."""
    problems = []
    for module, tree in pkg.modules.items():
        if module == f"{pkg.name}.errors":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef) or _private(node.name):
                continue
            bases = [ast.unparse(b) for b in node.bases]
            if any(
                b.endswith(("Error", "Exception", "Exit", "Interrupt")) for b in bases
            ) or node.name.endswith("Error"):
                problems.append(
                    f"{module}:{node.lineno} defines {node.name}: move it to {pkg.name}/errors.py"
                )
    return problems


# ----------------------------------------------------------------------------------- on the package


@pytest.fixture(scope="module")
def package() -> Package:
    return Package.parse(PACKAGE)


def test_every_module_has_a_stage(package: Package) -> None:
    assert [m for m in package.modules if package.stage(m) == "unassigned"] == []
    assert {package.stage(m) for m in package.modules} == set(STAGES)  # the rules see every stage


def test_no_private_name_crosses_a_module(package: Package) -> None:
    assert private_import_problems(package) == []


def test_imports_run_only_down_the_stages(package: Package) -> None:
    assert stage_problems(package) == []


def test_there_is_no_import_cycle(package: Package) -> None:
    assert import_cycles(package) == []


def test_every_exception_class_lives_in_errors(package: Package) -> None:
    assert exception_problems(package) == []


def test_the_checker_sees_the_real_edges(package: Package) -> None:
    """Guards the checker itself: edges that exist must be found (a parser that finds nothing passes all)."""
    edges = {(i.module, i.target) for m in package.modules for i in package.imports(m)}
    assert ("bitnet.bench.sweep", "bitnet.runtime.supervisor") in edges
    assert ("bitnet.models.convert.requantize", "bitnet.runtime") in edges  # the public-API edge
    assert ("bitnet.runtime.runtime", "bitnet.models.formats.check") in edges


# --------------------------------------------------------------------- the rules can fail: a bad package


def _write(root: Path, files: dict[str, str]) -> Package:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Package.parse(root / "pkg")


BAD_PACKAGE = {
    "__init__.py": "",
    "errors.py": "class PkgError(Exception):\n    pass\n",
    "engine/__init__.py": "",
    "engine/build.py": "from pkg.bench.sweep import run\n",  # up: engine -> bench
    "models/__init__.py": "",
    "models/_helpers.py": "def util():\n    pass\n",
    "models/convert.py": (
        "from pkg.models._helpers import util\n"  # a private module of its own stage: fine
        "def f():\n    from pkg.runtime import Runtime\n"  # public API: fine
        "def g():\n    from pkg.runtime.core import _launch\n"  # inside the runtime, and private
    ),
    "runtime/__init__.py": "from pkg.runtime.core import Runtime\n__all__ = ['Runtime']\n",
    "runtime/core.py": (
        "from pkg.models import convert\n"
        "from pkg.models._helpers import util\n"  # a private module of another stage
        "class Runtime:\n    pass\n"
        "def _launch():\n    convert._private_thing()\n"  # reads a private name off a module
    ),
    "bench/__init__.py": "",
    "bench/sweep.py": (
        "import pkg.bench.results\n"  # (a cycle with results, below)
        "class SweepError(Exception):\n    pass\n"  # an exception outside errors.py
        "def run():\n    pass\n"
    ),
    "bench/results.py": "def load():\n    from pkg.bench import sweep\n",  # cycle with sweep
}


def test_a_bad_package_breaks_every_rule(tmp_path: Path) -> None:
    pkg = _write(tmp_path, BAD_PACKAGE)
    private = private_import_problems(pkg)
    assert any("private name _launch from pkg.runtime.core" in p for p in private), private
    assert any("private module pkg.models._helpers from another stage" in p for p in private), private
    assert any("reads the private name _private_thing" in p for p in private), private
    assert not any(p.startswith("pkg.models.convert:1 ") for p in private), private  # own stage: fine
    stages = stage_problems(pkg)
    assert any(p.startswith("pkg.engine.build:1 (engine) imports pkg.bench.sweep") for p in stages), stages
    assert any("pkg.models.convert:5" in p and "pkg.runtime.core" in p for p in stages), stages
    assert not any("pkg.models.convert:3" in p for p in stages), stages  # through the public API
    assert sorted(import_cycles(pkg)) == [
        ["pkg.bench.results", "pkg.bench.sweep"],
        ["pkg.models.convert", "pkg.runtime", "pkg.runtime.core"],  # lazy imports count
    ]
    assert exception_problems(pkg) == ["pkg.bench.sweep:2 defines SweepError: move it to pkg/errors.py"]


def test_a_good_package_passes(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "from pkg.runtime import Runtime\n",
            "errors.py": "class PkgError(Exception):\n    pass\n",
            "engine/__init__.py": "",
            "engine/build.py": "from pkg.errors import PkgError\n",
            "runtime/__init__.py": "from pkg.runtime.core import Runtime\n__all__ = ['Runtime']\n",
            "runtime/core.py": "from pkg.engine import build\nclass Runtime:\n    pass\n",
            "bench/__init__.py": "",
            "bench/sweep.py": "from pkg.runtime.core import Runtime\n",
        },
    )
    assert (private_import_problems(pkg), stage_problems(pkg), import_cycles(pkg)) == ([], [], [])
    assert exception_problems(pkg) == []


# --------------------------------------------------------------------------- BitNetRuntime's public API


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
    sources = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "runtime" / "runtime.py"] + [
        REPO / "tasks.py"
    ]
    found = [use for path in sources for use in private_uses(path, names)]
    assert found == [], "use BitNetRuntime's public API instead: " + ", ".join(found)


@pytest.mark.parametrize("method", ["find_binary", "check_model", "resolve_threads", "inference_command"])
def test_the_public_seams_exist(method: str) -> None:
    assert callable(getattr(BitNetRuntime, method)) and getattr(BitNetRuntime, method).__doc__
