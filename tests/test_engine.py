"""The engine build: pin verification, patching, toolchain checks, and the real built binaries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bitnet.engine import build as engine
from bitnet.engine.cpu import detect_cpu
from bitnet.errors import EngineBuildError
from bitnet.paths import REPO_ROOT

# --------------------------------------------------------------------------------------------------
# pin, source and patches (no compiler needed)


def test_pin_is_complete_and_has_variants_for_this_host():
    pin = engine.load_pin()
    assert len(pin.sha256) == 64 and int(pin.sha256, 16) >= 0
    assert "llama-completion" in pin.targets and "llama-server" in pin.targets
    host = pin.variants_for(detect_cpu().arch)
    assert host, "kernels/engine.toml defines no CPU variant for this architecture"
    assert not any("NATIVE" in f for v in pin.variants for f in v.features)


def test_the_per_token_tag_is_spelled_the_same_in_the_patch_and_the_kernel_header():
    """Patch 0006 tags per-token matmuls in llama.cpp (which cannot include our header); the buffer type
    reads the tag with the header's names. A mismatch would silently run every model per block."""
    root = REPO_ROOT
    header = (root / "kernels/ternary/include/bitnet_kernels.h").read_text()
    patch = (root / "kernels/patches/0006-bitnet-per-token-activation-quant.patch").read_text()
    slot = re.search(r"#define BITNET_OP_PARAM_ACT_QUANT (\d+)", header)
    tag = re.search(r"#define BITNET_ACT_PER_TOKEN_TAG (0x[0-9a-f]+)", header)
    assert slot and tag
    assert re.findall(r"^\+.*op_params\[(\d+)\] = (0x[0-9a-f]+);", patch, flags=re.M) == [
        (slot.group(1), tag.group(1))
    ]


def test_checksum_mismatch_is_refused(tmp_path: Path):
    pin = engine.load_pin()
    fake = tmp_path / "llama.cpp" / pin.archive
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not the pinned archive")
    with pytest.raises(EngineBuildError, match="sha256 mismatch") as err:
        engine.fetch_archive(pin, tmp_path)
    assert pin.sha256 in str(err.value) and "Refusing" in str(err.value)
    # nothing was extracted
    dest = tmp_path / "src"
    with pytest.raises(EngineBuildError, match="sha256 mismatch"):
        engine.prepare_source(pin, tmp_path, dest)
    assert not dest.exists()


def _fake_llama_tree(root: Path) -> Path:
    (root / "ggml").mkdir(parents=True)
    (root / "CMakeLists.txt").write_text("project(fake)\n")
    (root / "src").mkdir()
    (root / "src" / "a.txt").write_text("one\ntwo\nthree\n")
    return root


def _patch(path: Path, old: str, new: str) -> Path:
    path.write_text(
        "--- a/src/a.txt\n+++ b/src/a.txt\n@@ -1,3 +1,3 @@\n one\n-" + old + "\n+" + new + "\n three\n"
    )
    return path


def test_patches_apply_to_a_copy_of_a_user_checkout(tmp_path: Path):
    user = _fake_llama_tree(tmp_path / "user")
    good = _patch(tmp_path / "0001-good.patch", "two", "TWO")
    dest = engine.prepare_source(
        engine.load_pin(), tmp_path / "cache", tmp_path / "b" / "llama.cpp", llama_src=user, patches=[good]
    )
    assert (dest / "src" / "a.txt").read_text() == "one\nTWO\nthree\n"
    assert (user / "src" / "a.txt").read_text() == "one\ntwo\nthree\n", "the user's tree was modified"


def test_a_patch_that_does_not_apply_stops_with_its_name(tmp_path: Path):
    user = _fake_llama_tree(tmp_path / "user")
    bad = _patch(tmp_path / "0007-stale.patch", "zwei", "ZWEI")
    dest = tmp_path / "b" / "llama.cpp"
    with pytest.raises(EngineBuildError, match="0007-stale.patch does not apply") as err:
        engine.prepare_source(engine.load_pin(), tmp_path / "cache", dest, llama_src=user, patches=[bad])
    assert "kernels/patches" in str(err.value)
    assert not dest.exists(), "a half-patched tree was left behind"
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")], "temp dir left behind"


def test_llama_src_must_look_like_llama_cpp(tmp_path: Path):
    with pytest.raises(EngineBuildError, match="does not look like a llama.cpp checkout"):
        engine.prepare_source(engine.load_pin(), tmp_path, tmp_path / "d", llama_src=tmp_path)


def test_missing_tools_are_named_with_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with pytest.raises(EngineBuildError) as err:
        engine.check_toolchain(tmp_path, search_path=str(empty))
    msg = str(err.value)
    assert "cmake not found" in msg and "pip install cmake" in msg
    assert "no C/C++ compiler" in msg and "apt-get install build-essential" in msg


def test_low_disk_is_refused_before_building(tmp_path: Path):
    with pytest.raises(EngineBuildError, match="GiB free"):
        engine.check_toolchain(tmp_path, min_free=1 << 60)


def test_unknown_isa_lists_the_choices():
    with pytest.raises(EngineBuildError, match="choose from"):
        engine.select_variants(engine.load_pin(), "avx9000", "x86_64")
    chosen = engine.select_variants(engine.load_pin(), "avx2", "x86_64")
    assert [v.name for v in chosen] == ["avx2"]


def test_extract_skips_the_submodule_git_link(tmp_path: Path):
    # The sdist's vendor/llama.cpp has a `.git` file pointing at a parent repo; git apply would follow it.
    src = tmp_path / "pkg-1.0" / "vendor" / "llama.cpp"
    src.mkdir(parents=True)
    (src / ".git").write_text("gitdir: ../../.git/modules/vendor/llama.cpp\n")
    (src / "CMakeLists.txt").write_text("x\n")
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "pkg-1.0", arcname="pkg-1.0")
    out = tmp_path / "out"
    engine._extract_subdir(archive, "vendor/llama.cpp", out)
    assert (out / "CMakeLists.txt").exists() and not (out / ".git").exists()


# --------------------------------------------------------------------------------------------------
# the web UI flag: --ui / --no-ui / auto (fake node, npm and cmake; no real npm run)


def _fake_tool(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    tool = bin_dir / name
    tool.write_text("#!/bin/sh\n" + body + "\n")
    tool.chmod(0o755)
    return tool


def _node_dir(tmp_path: Path, version: str | None, npm: bool = True) -> Path:
    """A PATH directory with a fake `node` printing `version` (none if None) and a fake `npm`."""
    d = tmp_path / f"node-{version}-{npm}"
    d.mkdir()
    if version:
        _fake_tool(d, "node", f"echo {version}")
    if npm:
        _fake_tool(d, "npm", "exit 0")
    return d


@pytest.mark.parametrize(
    ("version", "npm", "problem"),
    [
        ("v20.20.2", True, None),
        ("v22.1.0", True, None),
        ("v18.19.1", True, "older than 20"),
        (None, True, "node not found"),
        ("v20.20.2", False, "npm not found"),
        ("garbage", True, "not a Node.js version"),
    ],
)
def test_ui_tools_are_detected_by_node_version(tmp_path: Path, version, npm, problem):
    found = engine.ui_tool_problem(str(_node_dir(tmp_path, version, npm)))
    assert found is None if problem is None else problem in found


def test_ui_auto_builds_with_node_20_and_skips_older_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv("PATH", str(_node_dir(tmp_path, "v20.0.0")))
    assert engine.resolve_ui(None) is True
    assert engine.resolve_ui(False) is False
    monkeypatch.setenv("PATH", str(_node_dir(tmp_path, "v18.19.1")))
    with caplog.at_level("WARNING", logger="bitnet.engine.build"):
        assert engine.resolve_ui(None) is False
    [line] = [r.getMessage() for r in caplog.records]
    assert "web UI not built" in line and "older than 20" in line
    assert "apt-get install nodejs npm" in line and "invoke build --ui" in line
    assert "\n" not in line
    with pytest.raises(EngineBuildError, match=r"cannot build the web UI \(--ui\): .*older than 20"):
        engine.resolve_ui(True)
    caplog.clear()
    assert engine.resolve_ui(False) is False and not caplog.records  # --no-ui: not even a hint


def test_invoke_build_ui_without_node_fails_before_building(tmp_path: Path):
    """`invoke build --ui` with only an old node on PATH: exit 1 with how to get the UI, nothing built."""
    fake = _node_dir(tmp_path, "v18.19.1")
    build_dir = tmp_path / "b"
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "build", "--ui", "--build-dir", str(build_dir)],
        cwd=repo, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot build the web UI (--ui)" in done.stderr and "older than 20" in done.stderr
    assert "apt-get install nodejs npm" in done.stderr and "invoke build --ui" in done.stderr
    assert not build_dir.exists() or not any(build_dir.iterdir()), "something was built"


def test_invoke_build_ui_flag_is_tri_state(monkeypatch: pytest.MonkeyPatch):
    from invoke import Collection
    from invoke.parser import Parser

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))  # tasks.py, as invoke finds it
    import tasks

    for argv, expected in (([], None), (["--ui"], True), (["--no-ui"], False)):
        parsed = Parser(contexts=Collection.from_module(tasks).to_contexts()).parse_argv(["build", *argv])
        assert parsed[0].as_kwargs["ui"] is expected, argv


FAKE_CMAKE = """#!{python}
# records each call; configure saves its -D arguments, build makes the binaries and (LLAMA_BUILD_UI=ON)
# a ui.h with assets, like scripts/ui-assets.cmake
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_CMAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[0] == "-S":
    build = Path(args[args.index("-B") + 1])
    (build / "CMakeCache.txt").write_text("\\n".join(a for a in args if a.startswith("-D")) + "\\n")
else:
    build = Path(args[args.index("--build") + 1])
    (build / "bin").mkdir(exist_ok=True)
    for t in args[args.index("--target") + 1 : args.index("-j")]:
        (build / "bin" / t).write_text("")
    ui = (build / "tools" / "ui")
    ui.mkdir(parents=True, exist_ok=True)
    on = "-DLLAMA_BUILD_UI=ON" in (build / "CMakeCache.txt").read_text()
    (ui / "ui.h").write_text("#define LLAMA_UI_HAS_ASSETS 1\\n" if on else "/* #undef */\\n")
    if on:
        (ui / "dist").mkdir(exist_ok=True)
        (ui / "dist" / "index.html").write_text("<html></html>")
    print("[1/1] Building CXX object ui.cpp.o")
"""


def test_the_ui_flag_is_part_of_the_build_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Switching --ui/--no-ui reconfigures (LLAMA_BUILD_UI changes); the same flag again does not; --no-ui
    removes an earlier UI build (llama.cpp would embed those stale assets); npm's cache is ours; the
    prebuilt-UI download stays off."""
    fake = _node_dir(tmp_path, "v20.20.2")
    cmake = _fake_tool(fake, "cmake", "")
    cmake.write_text(FAKE_CMAKE.format(python=sys.executable))
    calls = tmp_path / "cmake-calls.jsonl"
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CMAKE_LOG", str(calls))
    src = _fake_llama_tree(tmp_path / "src")
    monkeypatch.setattr(engine, "prepare_source", lambda *a, **k: src)
    build_dir, cache = tmp_path / "b", tmp_path / "cache"

    def build(ui: bool | None) -> tuple[list[str] | None, engine.BuildResult]:
        calls.write_text("")
        res = engine.build_engine(build_dir=build_dir, isa="avx2" if detect_cpu().arch == "x86_64" else "all",
                                  ui=ui, cache=cache)  # fmt: skip
        configure = [json.loads(line) for line in calls.read_text().splitlines() if line.startswith('["-S"')]
        return (configure[0] if configure else None), res

    configured, res = build(False)
    assert configured and "-DLLAMA_BUILD_UI=OFF" in configured and "-DLLAMA_USE_PREBUILT_UI=OFF" in configured
    assert not res.ui and engine.read_build_info(build_dir)["ui"] is False
    assert build(False)[0] is None, "the same flag reconfigured"
    configured, res = build(None)  # auto, node v20 + npm on PATH
    assert configured and "-DLLAMA_BUILD_UI=ON" in configured, "switching the UI on did not reconfigure"
    assert res.ui and engine.ui_embedded(build_dir) and engine.read_build_info(build_dir)["ui"] is True
    assert build(True)[0] is None
    configured, res = build(False)
    assert configured and "-DLLAMA_BUILD_UI=OFF" in configured
    assert not (build_dir / "tools" / "ui" / "dist").exists(), "--no-ui left the earlier UI to be embedded"


def test_ui_requested_but_not_embedded_is_an_error_naming_the_npm_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """llama.cpp's UI step only warns when npm fails; with --ui the build must fail and say why."""
    fake = _node_dir(tmp_path, "v20.20.2")
    _fake_tool(fake, "cmake", "").write_text(
        FAKE_CMAKE.format(python=sys.executable)
        .replace('print("[1/1]', 'print("-- UI: npm ci failed (1)")\nprint("[1/1]')
        .replace('"#define LLAMA_UI_HAS_ASSETS 1\\n" if on else ', "")
    )
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CMAKE_LOG", str(tmp_path / "calls"))
    src = _fake_llama_tree(tmp_path / "src")
    monkeypatch.setattr(engine, "prepare_source", lambda *a, **k: src)
    isa = "avx2" if detect_cpu().arch == "x86_64" else "all"
    with pytest.raises(EngineBuildError, match=r"web UI build failed: UI: npm ci failed \(1\)"):
        engine.build_engine(build_dir=tmp_path / "b", isa=isa, ui=True, cache=tmp_path / "cache")
    res = engine.build_engine(build_dir=tmp_path / "b", isa=isa, ui=None, cache=tmp_path / "cache")
    assert not res.ui  # auto: a warning, the engine is still usable


# --------------------------------------------------------------------------------------------------
# the real engine (built once per session by the fixture)


@pytest.mark.engine
def test_second_build_is_a_no_op(engine_build_dir: Path):
    exe = engine_build_dir / "bin" / "llama-completion"
    before = exe.stat().st_mtime_ns
    res = engine.build_engine(build_dir=engine_build_dir)
    assert res.skipped
    assert exe.stat().st_mtime_ns == before
    info = engine.read_build_info(engine_build_dir)
    assert info["patches"] == [p.name for p in engine.patch_files()]


@pytest.mark.engine
@pytest.mark.parametrize("tool", ["llama-completion", "llama-server", "llama-bench", "llama-cli"])
def test_binaries_report_their_version(engine_bin_dir: Path, tool: str):
    out = subprocess.run(
        [str(engine_bin_dir / tool), "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "version:" in out.stdout + out.stderr


def _loaded_variant(bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # Backends load before the model; a missing model ends the run right after. Patch 0002 reports the
    # chosen variant synchronously on stderr when GGML_CPU_VARIANT_REPORT is set.
    return subprocess.run(
        [str(bin_dir / "llama-completion"), "-m", "/nonexistent/probe.gguf", "-p", "x", "-n", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GGML_CPU_VARIANT_REPORT": "1", **env},
    )


@pytest.mark.engine
def test_best_variant_is_loaded_and_one_can_be_forced(engine_bin_dir: Path):
    pin = engine.load_pin()
    cpu = detect_cpu()
    built = engine.read_build_info(engine_bin_dir.parent)["variants"]
    expected = engine.best_variant([v for v in pin.variants if v.name in built], cpu)
    assert expected is not None
    out = _loaded_variant(engine_bin_dir)
    assert f"ggml: CPU variant libggml-cpu-{expected.name}.so" in out.stderr
    runnable = [v.name for v in pin.variants_for(cpu.arch) if v.name in built and cpu.has(*v.requires)]
    forced = runnable[0]  # the most basic one
    out = _loaded_variant(engine_bin_dir, GGML_CPU_VARIANT=forced)
    assert f"ggml: CPU variant libggml-cpu-{forced}.so" in out.stderr
    out = _loaded_variant(engine_bin_dir, GGML_CPU_VARIANT="no-such-variant")
    assert "GGML_CPU_VARIANT=no-such-variant: no such CPU variant" in out.stderr


@pytest.mark.engine
@pytest.mark.parametrize("outtype", ["tq2_0", "tq1_0"])
def test_ternary_weights_use_our_buffer_type_unless_switched_off(
    engine_bin_dir: Path, tmp_path: Path, outtype: str
):
    from bitnet.models.synthetic import write_dummy_model

    model = tmp_path / f"tiny-{outtype}.gguf"
    write_dummy_model("tiny", model, outtype=outtype)
    argv = [str(engine_bin_dir / "llama-completion"), "-m", str(model), "-p", "x", "-n", "1", "-no-cnv", "-v"]
    sizes = {}
    for kernels in ("1", "0"):
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=120,
            env={**os.environ, "BITNET_KERNELS": kernels, "GGML_CPU_VARIANT_REPORT": "1"},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        # llama.cpp first sizes the model without allocating (0.00 MiB), then loads it
        found = re.findall(r"CPU_BITNET model buffer size =\s+([0-9.]+) MiB", out.stderr)
        sizes[kernels] = max((float(v) for v in found), default=0.0)
        assert ("bitnet: ternary kernels on" in out.stderr) == (kernels == "1")
    # the ternary matrices go there, nothing else: the fp16 tied embedding/head (token_embd.weight) stays
    # mapped from the file (a copy would double its memory); our GEMV still runs its decode matmul
    import gguf

    tensors = gguf.GGUFReader(str(model)).tensors
    assert any(t.name == "token_embd.weight" and t.tensor_type.name == "F16" for t in tensors)
    ours = [t for t in tensors if t.tensor_type.name in ("TQ1_0", "TQ2_0")]
    expected_mib = sum(int(t.n_bytes) for t in ours) / 2**20
    # each tensor starts on a page (the repack cache maps whole pages of its file): < 4 KiB more per tensor
    padding_mib = len(ours) * 4096 / 2**20
    assert expected_mib * 0.99 <= sizes["1"] <= expected_mib * 1.05 + padding_mib + 0.1, (
        f"CPU_BITNET holds {sizes['1']} MiB, expected the ternary weights = {expected_mib:.2f} MiB"
    )
    assert sizes["0"] == 0.0, "BITNET_KERNELS=0 still used our buffer type"


@pytest.mark.engine
@pytest.mark.slow
def test_invoke_build_isa_gives_a_forced_variant_that_doctor_reports(engine_build_dir: Path, tmp_path: Path):
    # A second build dir with one variant only; ccache (paths relative to the build dir) makes it cheap,
    # and without the web UI (its npm build would add ~2 min and is not what this test is about).
    cpu = detect_cpu()
    runnable = [v.name for v in engine.load_pin().variants_for(cpu.arch) if cpu.has(*v.requires)]
    forced = runnable[0] if len(runnable) == 1 else runnable[-2]  # not the one the host would pick anyway
    build_dir = tmp_path / "b"
    repo = Path(__file__).resolve().parent.parent
    # a table from `invoke tune` in the build dir is what this build compiles the kernels with
    isa_key = {v.name: v.kernel_isa for v in engine.load_pin().variants}[forced]
    table = json.loads(engine.DEFAULT_TUNING_FILE.read_text())
    table["isa"][isa_key]["prefetch_bytes"] = 320  # a value no checked-in entry uses
    build_dir.mkdir()
    (build_dir / engine.TUNED_FILE_NAME).write_text(json.dumps(table))
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "build", "--isa", forced, "--no-ui", "--build-dir", str(build_dir)],
        cwd=repo, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in (build_dir / "bin").glob("libggml-cpu-*.so")) == [
        f"libggml-cpu-{forced}.so"
    ]
    doctor = subprocess.run(
        [sys.executable, "-m", "invoke", "doctor", "--build-dir", str(build_dir), "--json-out"],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert doctor.returncode == 0, doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["engine"]["cpu_variant"] == forced
    assert report["build_info"]["variants"] == [forced]
    assert report["build_info"]["tuning_file"] == str(build_dir / engine.TUNED_FILE_NAME)
    header = build_dir / "ggml" / "src" / f"bitnet-ggml-cpu-{forced}" / "bitnet_tuning.h"
    assert f"BITNET_TUNE_{isa_key.upper()}_PREFETCH_BYTES 320\n" in header.read_text()


@pytest.mark.engine
@pytest.mark.parametrize("kernels", ["1", "0"])
def test_doctor_reports_what_the_engine_says_about_our_kernels(engine_build_dir: Path, kernels: str):
    from bitnet.runtime.runtime import BitNetRuntime

    report = BitNetRuntime(
        build_dir=str(engine_build_dir), env={**os.environ, "BITNET_KERNELS": kernels}
    ).diagnostics()
    engine_info = report.engine or {}
    assert engine_info["kernels"] == ("ours" if kernels == "1" else "off")
    # the ISA of the kernels inside the loaded CPU variant, as the engine itself printed it
    expected_isa = {v.name: v.kernel_isa for v in engine.load_pin().variants}  # engine.toml's kernel_isa
    assert expected_isa["sse42"] == "ssse3" and expected_isa["avx512"] == "avx512vnni"  # the table is read
    assert engine_info["kernels_isa"] == expected_isa[str(engine_info["cpu_variant"])]
    # prompts in AMX tiles where our avx512vnni kernels run on a CPU with AMX-INT8, and only there
    amx_host = detect_cpu().has("amx_tile", "amx_int8") and engine_info["kernels_isa"] == "avx512vnni"
    assert engine_info["gemm_amx"] is (kernels == "1" and amx_host)


# ---------------------------------------------------------------- the ISA variants: one list, engine.toml


def test_tuning_json_is_keyed_by_the_kernel_isas_of_engine_toml():
    pin = engine.load_pin()
    table = json.loads(engine.DEFAULT_TUNING_FILE.read_text())
    assert set(table["isa"]) == pin.kernel_isas()
    assert "neon-dotprod" in pin.kernel_isas()  # dotprod's kernel ISA, spelled as the kernels report it


def test_every_variant_has_a_kernel_isa_and_flags():
    pin = engine.load_pin()
    for v in pin.variants + pin.kernel_variants:
        assert v.kernel_isa, v
        assert v.cflags or v.name == "scalar", v
    names = [v.name for v in pin.kernel_variants_for("x86_64")]
    assert names[0] == "scalar" and {"sse42", "avx2", "avxvnni", "avx512", "avxvnni_evex"} <= set(names)
    assert [v.name for v in pin.kernel_variants_for("aarch64")] == ["scalar", "neon", "dotprod"]


def test_the_engine_compiles_the_kernel_sources_of_engine_toml():
    """kernels/ternary/ggml/ggml-cpu-ternary.cmake (the engine's list) names the same C sources as engine.toml
    (which the kernels' own CMake project reads), so the two builds cannot drift apart."""
    text = (engine.KERNELS_DIR / "ggml" / "ggml-cpu-ternary.cmake").read_text()
    in_engine = re.findall(r'"\$\{BITNET_KERNELS_DIR\}/(src/[\w.]+\.c)"', text)
    assert in_engine == list(engine.load_pin().kernel_sources) and len(in_engine) >= 7


def test_the_cmake_variant_table_is_generated_from_engine_toml(tmp_path: Path):
    """cmake/bitnet_variants.py (what CMakeLists.txt runs) turns engine.toml into the variant table."""
    script = engine.KERNELS_DIR / "cmake" / "bitnet_variants.py"
    out = tmp_path / "v.cmake"
    subprocess.run([sys.executable, str(script), str(engine.ENGINE_TOML), str(out)], check=True)
    text = out.read_text()
    pin = engine.load_pin()
    for arch in ("x86_64", "aarch64"):
        names = " ".join(v.name for v in pin.kernel_variants_for(arch))
        assert f"set(BITNET_VARIANTS_{arch} {names})" in text
    assert "set(BITNET_ISA_aarch64_dotprod neon-dotprod)" in text
    assert "set(BITNET_FLAGS_x86_64_avxvnni -msse4.2 -mavx -mf16c -mfma -mavx2 -mbmi2 -mavxvnni)" in text
