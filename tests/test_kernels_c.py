"""The C tests of our ternary kernels (kernels/ternary, issue 5), run through ctest.

A session fixture configures and builds the CMake project once into a temp dir (cmake + ninja from the
environment, `CMAKE_BUILD_PARALLEL_LEVEL` defaults to 1 so we stay polite on shared machines); each ISA
variant is then one pytest case running `ctest -L ^<variant>$`. A case fails if the build fails, ctest
reports a failure, or ctest ran no test; it is *skipped*, not passed, when the host CPU cannot run the
variant (every test binary exits 77 after its CPU check) -- ctest itself would count those as passed.

The aarch64 variants are cross-compiled with kernels/ternary/cmake/aarch64-linux-gnu.cmake and run under
qemu-user when `aarch64-linux-gnu-gcc` and `qemu-aarch64` are installed
(CI: `apt-get install -y gcc-aarch64-linux-gnu qemu-user`); otherwise those cases skip with that reason.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bitnet.engine.build import load_pin

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
KERNELS_DIR = REPO_ROOT / "kernels" / "ternary"
TOOLCHAIN_AARCH64 = KERNELS_DIR / "cmake" / "aarch64-linux-gnu.cmake"

_MACHINE = platform.machine().lower()
HOST_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}.get(_MACHINE, _MACHINE)


def _host_has_avx_vnni() -> bool:
    try:
        return " avx_vnni " in (Path("/proc/cpuinfo").read_text() + " ").replace("\n", " ")
    except OSError:
        return False


# The variants CMakeLists.txt builds: kernels/engine.toml's list for each architecture (the scalar
# reference, the engine's variants, the kernel-only ones). "avxvnni" (VEX vpdpbusd) is run where the CPU
# has AVX-VNNI; elsewhere test_avxvnni_library_uses_vex_vpdpbusd checks it was built, and "avxvnni_evex"
# runs the same code with the EVEX encoding on AVX-512 VNNI hosts.
BUILT = {arch: [v.name for v in load_pin().kernel_variants_for(arch)] for arch in ("x86_64", "aarch64")}
VARIANTS = {
    "x86_64": [v for v in BUILT["x86_64"] if v != "avxvnni" or _host_has_avx_vnni()],
    "aarch64": BUILT["aarch64"],
}
CROSS_TOOLS = ("aarch64-linux-gnu-gcc", "qemu-aarch64")
CROSS_INSTALL_HINT = "apt-get install -y gcc-aarch64-linux-gnu qemu-user"

BUILD_TIMEOUT_S = 1800
CTEST_TIMEOUT_S = 1200


@dataclass(frozen=True)
class KernelBuild:
    build_dir: Path
    log: Path


def _tool(name: str) -> str:
    """cmake/ninja/ctest from PATH or from the running interpreter's environment (a venv's bin/)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(
            f"{name} not found: install it with `pip install cmake ninja` (the dev extras) or your "
            f"package manager",
            pytrace=False,
        )
    return found


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _run_logged(argv: list[str], log: Path, timeout: float) -> str:
    """Run argv (no shell), append the command and its output to log, return the output; fail with the
    log's tail if the command fails."""
    env = dict(os.environ)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", "1")
    proc = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    with log.open("a") as fh:
        fh.write("$ " + " ".join(argv) + "\n" + proc.stdout + f"[exit {proc.returncode}]\n")
    if proc.returncode != 0 and Path(argv[0]).name != "ctest":
        pytest.fail(
            f"{' '.join(argv)} failed with exit {proc.returncode}; log {log}:\n{_tail(log)}", pytrace=False
        )
    return proc.stdout


def _build(build_dir: Path, extra_args: list[str]) -> KernelBuild:
    log = build_dir.parent / f"{build_dir.name}.log"
    _run_logged(
        [
            _tool("cmake"),
            "-S",
            str(KERNELS_DIR),
            "-B",
            str(build_dir),
            "-G",
            "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}",
            f"-DPython3_EXECUTABLE={sys.executable}",  # reads kernels/engine.toml (cmake/bitnet_variants.py)
            *extra_args,
        ],
        log,
        BUILD_TIMEOUT_S,
    )
    _run_logged([_tool("cmake"), "--build", str(build_dir)], log, BUILD_TIMEOUT_S)
    return KernelBuild(build_dir, log)


@pytest.fixture(scope="session")
def native_build(tmp_path_factory: pytest.TempPathFactory) -> KernelBuild:
    return _build(tmp_path_factory.mktemp("kernels") / "native", [])


@pytest.fixture(scope="session")
def aarch64_build(tmp_path_factory: pytest.TempPathFactory) -> KernelBuild:
    if HOST_ARCH == "aarch64":
        pytest.skip("the host is aarch64: the native build already runs the neon/dotprod variants")
    missing = [t for t in CROSS_TOOLS if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (for the aarch64 cross build: {CROSS_INSTALL_HINT})")
    return _build(
        tmp_path_factory.mktemp("kernels") / "aarch64", [f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN_AARCH64}"]
    )


@dataclass(frozen=True)
class CtestSummary:
    total: int
    failed: int
    skipped: int
    output: str


_SUMMARY = re.compile(r"(\d+)% tests passed(?:, (\d+) tests? failed)? out of (\d+)")


def parse_ctest(output: str) -> CtestSummary:
    """Counts from ctest's summary; skipped tests (SKIP_RETURN_CODE) are counted from their status lines
    because ctest's percentage counts them as passed."""
    if "No tests were found" in output:
        return CtestSummary(0, 0, 0, output)
    m = _SUMMARY.search(output)
    if not m:
        raise AssertionError(f"no ctest summary line in its output:\n{output[-3000:]}")
    skipped = len(re.findall(r"\*\*\*Skipped", output))
    return CtestSummary(total=int(m.group(3)), failed=int(m.group(2) or 0), skipped=skipped, output=output)


def _ctest(build: KernelBuild, label: str, *extra: str) -> tuple[str, CtestSummary]:
    """Run the tests labelled `label` (anchored) in `build`; ctest's output and its summary."""
    output = _run_logged(
        [_tool("ctest"), "--test-dir", str(build.build_dir), "-L", f"^{label}$", "--output-on-failure",
         "--timeout", "600", *extra],
        build.log,
        CTEST_TIMEOUT_S,
    )  # fmt: skip
    return output, parse_ctest(output)


def _run_variant(build: KernelBuild, variant: str) -> None:
    output, s = _ctest(build, variant)
    assert s.total > 0, f"ctest ran no test for variant {variant} (log {build.log}):\n{output[-3000:]}"
    assert s.failed == 0, (
        f"{s.failed} of {s.total} C tests failed for {variant} (log {build.log}):\n{output[-6000:]}"
    )
    if s.skipped == s.total:
        pytest.skip(
            f"this CPU cannot run the {variant} variant (all {s.total} tests exited 77 after the CPU check)"
        )
    assert s.skipped == 0, f"{s.skipped} of {s.total} {variant} tests skipped, the rest ran:\n{output}"


def test_cmake_builds_the_variants_of_engine_toml(native_build: KernelBuild) -> None:
    """CMakeLists.txt reads the variant list from kernels/engine.toml (cmake/bitnet_variants.py)."""
    cache = (native_build.build_dir / "CMakeCache.txt").read_text()
    built = re.search(r"^BITNET_VARIANTS:STRING=(.*)$", cache, flags=re.M)
    assert built is not None and built.group(1).split(";") == BUILT.get(HOST_ARCH, ["scalar"])


@pytest.mark.parametrize("variant", VARIANTS.get(HOST_ARCH, ["scalar"]))
def test_kernels_native(native_build: KernelBuild, variant: str) -> None:
    """Every ISA variant this host can run equals the scalar reference bit for bit (see tests/test_main.c)."""
    _run_variant(native_build, variant)


@pytest.mark.skipif(HOST_ARCH != "x86_64", reason="AMX-INT8 is an x86-64 extension")
def test_kernels_amx_gemm(native_build: KernelBuild) -> None:
    """The AMX-INT8 tile GEMM of the avx512vnni build (Sapphire Rapids and later) equals the reference and the
    vpdpbusd path bit for bit (tests/test_main.c group amx); skipped, saying why, where the CPU or the OS has
    no AMX tiles."""
    output, s = _ctest(native_build, "amx", "-V")
    assert s.total > 0, f"ctest has no amx test (is the avx512 variant built?):\n{output[-3000:]}"
    assert s.failed == 0, f"the AMX GEMM test failed (log {native_build.log}):\n{output[-6000:]}"
    if s.skipped == s.total:
        reason = re.search(r"SKIP: (.*)", output)
        pytest.skip(reason.group(1) if reason else "the amx test exited 77 (no AMX on this host)")
    assert "+ AMX GEMM" in output, f"the amx test passed without running the AMX path:\n{output[-3000:]}"


@pytest.mark.skipif(HOST_ARCH != "x86_64", reason="x86-64 variant")
def test_avxvnni_library_uses_vex_vpdpbusd(native_build: KernelBuild) -> None:
    """The AVX-VNNI library is built and really holds the VEX-encoded vpdpbusd (what Alder Lake and later
    run), whether or not this CPU can execute it; its arithmetic is tested through avxvnni_evex."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.fail("objdump not found: install binutils", pytrace=False)
    lib = native_build.build_dir / "libbitnet_kernels_avxvnni.a"
    assert lib.is_file(), f"{lib} was not built (does the compiler accept -mavxvnni? gcc >= 11 does)"
    text = subprocess.run([objdump, "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "{vex} vpdpbusd" in text, "the avxvnni library has no VEX vpdpbusd: it fell back to another ISA"
    assert "zmm" not in text, "the avxvnni library uses 512-bit registers, which AVX-VNNI CPUs lack"


@pytest.mark.parametrize("variant", VARIANTS["aarch64"])
def test_kernels_aarch64_qemu(aarch64_build: KernelBuild, variant: str) -> None:
    """The aarch64 variants, cross-compiled and run under qemu-user (reduced shape list: --quick)."""
    _run_variant(aarch64_build, variant)


def test_parse_ctest_counts_skips_and_failures() -> None:
    """The summary parser sees failures, skips (which ctest counts as passed) and empty runs."""
    ok = parse_ctest("1/1 Test #1: a ....   Passed\n\n100% tests passed out of 1\n")
    assert (ok.total, ok.failed, ok.skipped) == (1, 0, 0)
    skipped = parse_ctest(
        "1/1 Test #1: a ....***Skipped   0.00 sec\n100% tests passed, 0 tests failed out of 1\n"
    )
    assert (skipped.total, skipped.failed, skipped.skipped) == (1, 0, 1)
    failed = parse_ctest("67% tests passed, 1 tests failed out of 3\n")
    assert (failed.total, failed.failed) == (3, 1)
    assert parse_ctest("Test project /x\nNo tests were found!!!\n").total == 0
    with pytest.raises(AssertionError, match="no ctest summary"):
        parse_ctest("garbage")
