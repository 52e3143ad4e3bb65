"""BitNetRuntime: validation, binary lookup, argv, environment, execution and diagnostics.

Launches real child processes (fake llama binaries from tests/fakebin.py); nothing is mocked.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakebin import FAKE_DEVICES_OUTPUT, FAKE_VERSION_OUTPUT, FakeBinaries, assert_gone, write_model

import bitnet
from bitnet import BitNetRuntime, RuntimeConfigurationError, RuntimeLaunchError
from bitnet.runtime import diagnostics as diagnostics_module
from bitnet.runtime import runtime as runtime_module

pytest_plugins = ["fakebin"]  # fixtures: fakes, model

NAME = "llama-completion"


@pytest.fixture(autouse=True)
def _restore_runtime_logger_level() -> Iterator[None]:
    logger = logging.getLogger("bitnet.runtime.runtime")
    level = logger.level
    yield
    logger.setLevel(level)


def make_runtime(fakes: FakeBinaries, **kwargs: Any) -> BitNetRuntime:
    return BitNetRuntime(build_dir=fakes.build_dir, **kwargs)


# ---------------------------------------------------------------------- construction and properties


def test_package_exports_the_api() -> None:
    expected = {
        "BitNetRuntime",
        "RuntimeConfigurationError",
        "RuntimeDiagnostics",
        "RuntimeLaunchError",
        "RuntimeTimeoutError",
        "RuntimeResult",
        "RuntimeSupervisor",
    }
    assert expected <= set(bitnet.__all__)
    assert all(hasattr(bitnet, name) for name in expected)
    assert issubclass(bitnet.RuntimeConfigurationError, ValueError)
    assert issubclass(bitnet.RuntimeLaunchError, RuntimeError)
    assert issubclass(bitnet.RuntimeTimeoutError, bitnet.RuntimeLaunchError)


def test_cpu_count_is_read_once_at_construction(monkeypatch: pytest.MonkeyPatch, fakes: FakeBinaries) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(os, "cpu_count", lambda: 37)
        rt = make_runtime(fakes)
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert rt.cpu_count == 37
    argv = rt.run_inference(model="m.gguf", prompt="hi", dry_run=True)
    assert isinstance(argv, list)
    assert argv[argv.index("-t") + 1] == "37"


def test_cpu_count_none_means_one(monkeypatch: pytest.MonkeyPatch, fakes: FakeBinaries) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(os, "cpu_count", lambda: None)
        rt = make_runtime(fakes)
    assert rt.cpu_count == 1


def test_properties_are_read_only(fakes: FakeBinaries) -> None:
    rt = make_runtime(fakes, env={"A": "1"})
    with pytest.raises(AttributeError):
        rt.cpu_count = 4  # type: ignore[misc]
    with pytest.raises(AttributeError):
        rt.last_execution_timestamp = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        rt.environment["B"] = "2"  # type: ignore[index]
    assert rt.last_execution_timestamp is None


def test_environment_is_a_copy_of_env(fakes: FakeBinaries) -> None:
    env = {"A": "1"}
    rt = make_runtime(fakes, env=env)
    env["B"] = "2"
    assert dict(rt.environment) == {"A": "1"}


def test_env_none_inherits_os_environ(
    monkeypatch: pytest.MonkeyPatch, fakes: FakeBinaries, model: Path
) -> None:
    rt = make_runtime(fakes)
    monkeypatch.setenv("BITNET_TEST_MARK", "inherited")  # after construction: read at launch time
    assert rt.environment["BITNET_TEST_MARK"] == "inherited"
    fakes.write(NAME)
    assert rt.run_inference(model=model, prompt="hi") == 0
    assert fakes.calls()[0]["env"]["BITNET_TEST_MARK"] == "inherited"


@pytest.mark.parametrize("env", [{}, {"ONLY": "this"}])
def test_env_is_exactly_what_the_child_gets(
    monkeypatch: pytest.MonkeyPatch, fakes: FakeBinaries, model: Path, env: dict[str, str]
) -> None:
    monkeypatch.setenv("BITNET_TEST_MARK", "must-not-leak")
    rt = make_runtime(fakes, env=env)
    assert dict(rt.environment) == env
    fakes.write(NAME)
    assert rt.run_inference(model=model, prompt="hi") == 0
    assert fakes.calls()[0]["env"] == env


@pytest.mark.parametrize("env", [{1: "a"}, {"A": 1}, {"": "x"}, {"A=B": "x"}, ["A=1"]])
def test_bad_env_is_rejected(fakes: FakeBinaries, env: Any) -> None:
    with pytest.raises(RuntimeConfigurationError, match="env must"):
        make_runtime(fakes, env=env)


@pytest.mark.parametrize("build_dir", ["", None, 42])
def test_bad_build_dir_is_rejected(build_dir: Any) -> None:
    with pytest.raises(RuntimeConfigurationError, match="build_dir"):
        BitNetRuntime(build_dir=build_dir)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("debug", logging.DEBUG),
        ("Warning", logging.WARNING),
        ("ERROR", logging.ERROR),
        (logging.INFO, 20),
        (5, 5),
    ],
)
def test_log_level_sets_only_the_module_logger(fakes: FakeBinaries, level: Any, expected: int) -> None:
    package_level = logging.getLogger("bitnet").level
    root_level = logging.getLogger().level
    make_runtime(fakes, log_level=level)
    assert logging.getLogger("bitnet.runtime.runtime").level == expected
    assert logging.getLogger("bitnet").level == package_level
    assert logging.getLogger().level == root_level


@pytest.mark.parametrize("level", ["loud", "", True, -1, 2.5, None])
def test_bad_log_level_is_rejected(fakes: FakeBinaries, level: Any) -> None:
    with pytest.raises(RuntimeConfigurationError, match="log_level") as info:
        make_runtime(fakes, log_level=level)
    assert repr(level) in str(info.value)


def test_library_adds_no_log_handlers(fakes: FakeBinaries, model: Path) -> None:
    names = ["", "bitnet", "bitnet.runtime.runtime", "bitnet.runtime.supervisor"]
    before = {name: list(logging.getLogger(name).handlers) for name in names}
    root_level = logging.getLogger().level
    fakes.write(NAME, version_output=FAKE_VERSION_OUTPUT)
    rt = make_runtime(fakes, log_level="DEBUG")
    rt.run_inference(model=model, prompt="hi", threads=rt.cpu_count + 1, dry_run=True)  # logs a warning
    rt.run_inference(model=model, prompt="hi")
    rt.diagnostics(model=model)
    assert {name: list(logging.getLogger(name).handlers) for name in names} == before
    assert logging.getLogger().level == root_level


# ---------------------------------------------------------------------- validation

INFERENCE_BASE = {"model": "m.gguf", "prompt": "hi"}
SERVER_BASE = {"model": "m.gguf"}
NAN, INF = math.nan, math.inf

# (field, bad value, text the message must contain besides the field name)
SHARED_BAD: list[tuple[str, Any, str]] = [
    *[
        (f, v, repr(v))
        for f in ("n_predict", "ctx_size", "batch_size")
        for v in (0, -1, True, 1.5, "8", None)
    ],
    *[("temperature", v, repr(v)) for v in (-0.1, NAN, INF, -INF, True, "0.8", None)],
    *[("threads", v, repr(v)) for v in (0, -2, True, 2.0, "4")],
    *[("gpu_layers", v, repr(v)) for v in (-1, True, 1.5, "0")],
    *[("model", v, repr(v)) for v in (None, "", 42)],
    ("extra_args", "--top-k 40", "'--top-k 40'"),
    ("extra_args", ["--top-k", 40], "40"),
    ("extra_args", 5, "5"),
    ("dry_run", "yes", "'yes'"),
]
INFERENCE_BAD = SHARED_BAD + [
    *[("prompt", v, repr(v)) for v in ("", "   \n", None, 5)],
    *[("conversation", v, repr(v)) for v in ("yes", 1, None)],
]
SERVER_BAD = SHARED_BAD + [
    *[("port", v, repr(v)) for v in (0, 65536, -1, True, 80.0, "8080", None)],
    *[("host", v, repr(v)) for v in ("", "  ", None, 127)],
    *[("prompt", v, repr(v)) for v in ("", "  ", 5)],
]


def _invoke(rt: BitNetRuntime, method: str, field: str, value: Any) -> Any:
    kwargs: dict[str, Any] = dict(INFERENCE_BASE if method == "run_inference" else SERVER_BASE)
    kwargs["dry_run"] = True
    kwargs[field] = value
    return getattr(rt, method)(**kwargs)


@pytest.mark.parametrize(
    ("method", "field", "value", "shown"),
    [("run_inference", *case) for case in INFERENCE_BAD] + [("run_server", *case) for case in SERVER_BAD],
)
def test_invalid_argument_is_rejected_naming_field_and_value(
    fakes: FakeBinaries, method: str, field: str, value: Any, shown: str
) -> None:
    rt = make_runtime(fakes)
    with pytest.raises(RuntimeConfigurationError) as info:
        _invoke(rt, method, field, value)
    message = str(info.value)
    assert field in message
    assert shown in message


@pytest.mark.parametrize(
    ("method", "field", "value"),
    [
        ("run_inference", "temperature", 0),
        ("run_inference", "temperature", 0.0),
        ("run_inference", "temperature", 2),
        ("run_inference", "n_predict", 1),
        ("run_inference", "gpu_layers", 0),
        ("run_inference", "gpu_layers", None),
        ("run_inference", "conversation", True),
        ("run_inference", "prompt", "  padded prompt  "),
        ("run_inference", "model", Path("m.gguf")),
        ("run_inference", "extra_args", ("--seed", "1")),
        ("run_server", "port", 1),
        ("run_server", "port", 65535),
        ("run_server", "prompt", None),
        ("run_server", "host", "0.0.0.0"),
    ],
)
def test_edge_values_are_accepted(fakes: FakeBinaries, method: str, field: str, value: Any) -> None:
    argv = _invoke(make_runtime(fakes), method, field, value)
    assert isinstance(argv, list) and argv


def test_temperature_zero_means_greedy(fakes: FakeBinaries) -> None:
    argv = make_runtime(fakes).run_inference(model="m.gguf", prompt="hi", temperature=0, dry_run=True)
    assert isinstance(argv, list)
    assert argv[argv.index("--temp") + 1] == "0.0"


def test_prompt_is_passed_verbatim(fakes: FakeBinaries) -> None:
    argv = make_runtime(fakes).run_inference(model="m.gguf", prompt="  two\nlines ", dry_run=True)
    assert isinstance(argv, list)
    assert argv[argv.index("-p") + 1] == "  two\nlines "


def test_threads_default_to_all_cores(fakes: FakeBinaries) -> None:
    rt = make_runtime(fakes)
    argv = rt.run_inference(model="m.gguf", prompt="hi", dry_run=True)
    assert isinstance(argv, list)
    assert argv[argv.index("-t") + 1] == str(rt.cpu_count)


def test_threads_above_core_count_are_clamped_with_a_warning(
    fakes: FakeBinaries, caplog: pytest.LogCaptureFixture
) -> None:
    rt = make_runtime(fakes)
    with caplog.at_level(logging.WARNING, logger="bitnet.runtime.runtime"):
        argv = rt.run_inference(model="m.gguf", prompt="hi", threads=rt.cpu_count + 3, dry_run=True)
    assert isinstance(argv, list)
    assert argv[argv.index("-t") + 1] == str(rt.cpu_count)
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name == "bitnet.runtime.runtime"
    ]
    assert len(warnings) == 1
    assert str(rt.cpu_count + 3) in warnings[0].getMessage()


def test_threads_within_core_count_are_not_clamped(
    fakes: FakeBinaries, caplog: pytest.LogCaptureFixture
) -> None:
    rt = make_runtime(fakes)
    with caplog.at_level(logging.WARNING, logger="bitnet.runtime.runtime"):
        argv = rt.run_inference(model="m.gguf", prompt="hi", threads=1, dry_run=True)
    assert isinstance(argv, list)
    assert argv[argv.index("-t") + 1] == "1"
    assert not caplog.records


def test_server_prompt_is_ignored_with_a_warning(
    fakes: FakeBinaries, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bitnet.runtime.runtime"):
        argv = make_runtime(fakes).run_server(model="m.gguf", prompt="You are terse.", dry_run=True)
    assert isinstance(argv, list)
    assert "You are terse." not in argv and "-p" not in argv
    assert any("no start-up prompt" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- argv


def test_inference_argv_is_exact(fakes: FakeBinaries, model: Path) -> None:
    binary = fakes.write(NAME)
    argv = make_runtime(fakes).run_inference(
        model=model,
        prompt="Hello world",
        n_predict=16,
        ctx_size=512,
        temperature=0.25,
        threads=1,
        batch_size=8,
        gpu_layers=None,
        dry_run=True,
        extra_args=["--seed", "1"],
    )
    assert argv == [
        str(binary), "-m", str(model), "-p", "Hello world", "-n", "16", "-c", "512", "-t", "1",
        "--temp", "0.25", "-b", "8", "-no-cnv", "--seed", "1",
    ]  # fmt: skip


def test_conversation_argv_is_exact(fakes: FakeBinaries, model: Path) -> None:
    binary = fakes.write(NAME)
    argv = make_runtime(fakes).run_inference(
        model=model, prompt="Be brief.", threads=1, gpu_layers=3, conversation=True, dry_run=True
    )
    assert argv == [
        str(binary), "-m", str(model), "-sys", "Be brief.", "-n", "128", "-c", "2048", "-t", "1",
        "--temp", "0.8", "-b", "512", "-ngl", "3", "-cnv",
    ]  # fmt: skip


def test_server_argv_is_exact(fakes: FakeBinaries, model: Path) -> None:
    binary = fakes.write("llama-server")
    argv = make_runtime(fakes).run_server(
        model=model, host="0.0.0.0", port=9000, threads=1, dry_run=True, extra_args=["--api-key", "k"]
    )
    assert argv == [
        str(binary), "-m", str(model), "-c", "2048", "-t", "1", "-n", "4096", "--temp", "0.8",
        "--host", "0.0.0.0", "--port", "9000", "-cb", "-b", "512", "--api-key", "k",
    ]  # fmt: skip


def test_dry_run_needs_neither_binary_nor_model(fakes: FakeBinaries) -> None:
    rt = make_runtime(fakes)
    argv = rt.run_inference(model="missing.gguf", prompt="hi", dry_run=True)
    assert isinstance(argv, list)
    assert argv[0] == str(fakes.build_dir / "bin" / NAME)
    assert argv[argv.index("-m") + 1] == "missing.gguf"
    server = rt.run_server(model="missing.gguf", dry_run=True)
    assert isinstance(server, list)
    assert server[0] == str(fakes.build_dir / "bin" / "llama-server")


# ---------------------------------------------------------------------- model checks (real runs)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "does not exist"),
        ("directory", "is not a file"),
        ("zip", "not a GGUF file"),
        ("empty", "not a GGUF file"),
    ],
)
def test_model_must_be_an_existing_gguf_file(
    fakes: FakeBinaries, tmp_path: Path, setup: str, expected: str
) -> None:
    fakes.write(NAME)
    path = tmp_path / "model.gguf"
    if setup == "directory":
        path.mkdir()
    elif setup == "zip":
        write_model(path, magic=b"PK\x03\x04")
    elif setup == "empty":
        path.write_bytes(b"")
    with pytest.raises(RuntimeConfigurationError, match=expected) as info:
        make_runtime(fakes).run_inference(model=path, prompt="hi")
    assert str(path) in str(info.value)
    assert fakes.calls() == []


def test_run_server_checks_the_model_too(fakes: FakeBinaries, tmp_path: Path) -> None:
    fakes.write("llama-server")
    with pytest.raises(RuntimeConfigurationError, match="does not exist"):
        make_runtime(fakes).run_server(model=tmp_path / "nope.gguf")
    assert fakes.calls() == []


# ---------------------------------------------------------------------- binary resolution


def test_binary_resolution_order(fakes: FakeBinaries) -> None:
    override = fakes.root / "override"
    rt = make_runtime(fakes, env={"BITNET_BIN_DIR": str(override)})
    bin_dir = fakes.build_dir / "bin"
    expected = [
        bin_dir / NAME,
        bin_dir / "Release" / f"{NAME}.exe",
        bin_dir / f"{NAME}.exe",
        override / NAME,
        override / f"{NAME}.exe",
    ]
    assert list(rt._candidate_binaries(NAME)) == expected
    for path in expected:
        fakes.write(NAME, path=path)
    for path in expected:  # each one wins while every earlier one is gone
        assert rt._resolve_binary(NAME, required=False) == path
        path.unlink()
    assert rt._resolve_binary(NAME, required=False) is None


def test_bin_dir_override_from_os_environ(monkeypatch: pytest.MonkeyPatch, fakes: FakeBinaries) -> None:
    override = fakes.root / "override"
    binary = fakes.write(NAME, path=override / NAME)
    rt = make_runtime(fakes, env={})
    assert rt._resolve_binary(NAME, required=False) is None
    monkeypatch.setenv("BITNET_BIN_DIR", str(override))
    assert rt._require_binary(NAME) == binary


def test_bin_dir_override_prefers_the_launch_environment(
    monkeypatch: pytest.MonkeyPatch, fakes: FakeBinaries
) -> None:
    mine, other = fakes.root / "mine", fakes.root / "other"
    fakes.write(NAME, path=other / NAME)
    binary = fakes.write(NAME, path=mine / NAME)
    monkeypatch.setenv("BITNET_BIN_DIR", str(other))
    rt = make_runtime(fakes, env={"BITNET_BIN_DIR": str(mine)})
    assert rt._require_binary(NAME) == binary


def test_bin_dir_override_is_used_by_real_runs(fakes: FakeBinaries, model: Path) -> None:
    override = fakes.root / "override"
    binary = fakes.write(NAME, path=override / NAME)
    rt = make_runtime(fakes, env={"BITNET_BIN_DIR": str(override)})
    argv = rt.run_inference(model=model, prompt="hi", dry_run=True)
    assert isinstance(argv, list) and argv[0] == str(binary)
    assert rt.run_inference(model=model, prompt="hi") == 0
    assert len(fakes.calls(NAME)) == 1


def test_non_executable_file_and_directory_are_skipped(fakes: FakeBinaries) -> None:
    fakes.write(NAME, executable=False)
    (fakes.build_dir / "bin" / "Release" / f"{NAME}.exe").mkdir(parents=True)
    fallback = fakes.write(NAME, path=fakes.build_dir / "bin" / f"{NAME}.exe")
    assert make_runtime(fakes)._require_binary(NAME) == fallback


def test_missing_binary_hint_lists_every_path_and_the_build_command(tmp_path: Path) -> None:
    fakes = FakeBinaries(tmp_path)
    build_dir = tmp_path / "my build"
    (build_dir / "bin").mkdir(parents=True)
    fakes.write(NAME, path=build_dir / "bin" / NAME, executable=False)
    rt = BitNetRuntime(build_dir=build_dir, env={})
    with pytest.raises(RuntimeConfigurationError) as info:
        rt.run_inference(model=write_model(tmp_path / "m.gguf"), prompt="hi")
    message = str(info.value)
    for path in rt._candidate_binaries(NAME):
        assert str(path) in message
    assert "not executable" in message and "chmod +x" in message
    assert "BITNET_BIN_DIR" in message
    assert f"invoke build --build-dir '{build_dir}'" in message


# ---------------------------------------------------------------------- execution


def test_successful_run_streams_output_and_sets_timestamp(
    fakes: FakeBinaries, model: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    fakes.write(NAME, stdout="generated text\n", stderr="llama_model_load: done\n")
    rt = make_runtime(fakes)
    assert rt.last_execution_timestamp is None
    before = time.time()
    assert rt.run_inference(model=model, prompt="hi") == 0
    stamp = rt.last_execution_timestamp
    assert stamp is not None and before <= stamp <= time.time()
    out, err = capfd.readouterr()
    assert "generated text" in out
    assert "llama_model_load: done" in err
    assert fakes.calls()[0]["argv"] == rt.run_inference(model=model, prompt="hi", dry_run=True)[1:]


def test_command_runs_without_a_shell(
    fakes: FakeBinaries, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    prompt = "$(touch pwned1) `touch pwned2`; touch pwned3 | cat > pwned4"
    fakes.write(NAME)
    make_runtime(fakes).run_inference(model=model, prompt=prompt)
    argv = fakes.calls()[0]["argv"]
    assert argv[argv.index("-p") + 1] == prompt
    assert not list(tmp_path.glob("pwned*"))


def test_nonzero_exit_raises_with_returncode_and_stderr_tail(
    fakes: FakeBinaries, model: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lines = "".join(f"stderr line {i}\n" for i in range(60))
    fakes.write(NAME, exit_code=3, stderr=lines)
    rt = make_runtime(fakes)
    with pytest.raises(RuntimeLaunchError) as info:
        rt.run_inference(model=model, prompt="hi")
    error = info.value
    assert error.returncode == 3
    assert error.stderr_tail.splitlines() == [f"stderr line {i}" for i in range(10, 60)]
    assert "exited with status 3" in str(error) and "stderr line 59" in str(error)
    assert error.command[0].endswith(NAME)
    assert rt.last_execution_timestamp is None
    assert "stderr line 0" in capfd.readouterr().err  # the whole stderr was streamed through


def test_death_by_signal_is_reported(fakes: FakeBinaries, model: Path) -> None:
    fakes.write(NAME, self_signal=signal.SIGABRT)
    with pytest.raises(RuntimeLaunchError, match="killed by signal SIGABRT") as info:
        make_runtime(fakes).run_inference(model=model, prompt="hi")
    assert info.value.returncode == -signal.SIGABRT


def test_execute_rejects_empty_and_shell_string_commands(fakes: FakeBinaries) -> None:
    rt = make_runtime(fakes)
    with pytest.raises(RuntimeConfigurationError, match="empty"):
        rt._execute([])
    with pytest.raises(RuntimeConfigurationError, match="not a shell string"):
        rt._execute("llama-completion -p hi")


def test_execute_reports_a_program_that_cannot_start(fakes: FakeBinaries, tmp_path: Path) -> None:
    rt = make_runtime(fakes)
    with pytest.raises(RuntimeLaunchError, match="no such file") as info:
        rt._execute([str(tmp_path / "does-not-exist")])
    assert info.value.returncode is None
    assert "invoke build --build-dir" in str(info.value)
    not_executable = fakes.write("plain", path=tmp_path / "plain", executable=False)
    with pytest.raises(RuntimeLaunchError, match="permission denied") as info:
        rt._execute([str(not_executable)])
    assert "chmod +x" in str(info.value)


@pytest.mark.parametrize("ignore_sigterm", [False, True])
def test_ctrl_c_terminates_the_child_and_its_group(
    fakes: FakeBinaries, model: Path, monkeypatch: pytest.MonkeyPatch, ignore_sigterm: bool
) -> None:
    monkeypatch.setattr(runtime_module, "_TERMINATE_GRACE_SECONDS", 0.5)
    fakes.write(NAME, sleep=60, grandchild=True, ignore_sigterm=ignore_sigterm)
    rt = make_runtime(fakes)

    def press_ctrl_c() -> None:
        fakes.wait_for_call(NAME)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        rt.run_inference(model=model, prompt="hi")
    assert time.monotonic() - started < 30  # generous: the fake would sleep 60 s
    record = fakes.calls(NAME)[0]
    assert_gone(record["pid"], timeout=0)  # reaped before the exception left run_inference
    assert_gone(record["grandchild_pid"], ours=False)
    assert rt.last_execution_timestamp is None


# ---------------------------------------------------------------------- diagnostics


def test_diagnostics_without_engine_is_unusable_and_says_how_to_fix(fakes: FakeBinaries) -> None:
    rt = make_runtime(fakes, env={})
    report = rt.diagnostics()
    assert not report.usable
    assert report.engine is None
    assert dict(report.binaries) == {name: None for name in diagnostics_module.DIAGNOSTIC_BINARIES}
    assert report.cpu_count == rt.cpu_count
    assert report.cpu["arch"]
    assert report.problems and all(
        f"invoke build --build-dir {fakes.build_dir}" in p for p in report.problems
    )
    data = json.loads(json.dumps(report.as_dict()))
    assert data["usable"] is False and data["problems"] == report.problems


def test_diagnostics_reports_engine_binaries_and_model(fakes: FakeBinaries, model: Path) -> None:
    for name in diagnostics_module.DIAGNOSTIC_BINARIES:
        fakes.write(name, version_output=FAKE_VERSION_OUTPUT, devices_output=FAKE_DEVICES_OUTPUT)
    report = make_runtime(fakes, env={"BITNET_KERNELS": "0"}).diagnostics(model=model)
    assert report.usable and report.is_usable("llama-server")
    assert report.problems == []
    assert report.binaries[NAME] == str(fakes.bin_dir / NAME)
    assert report.model == str(model) and report.model_present and report.model_is_gguf
    assert report.engine is not None
    assert report.engine["version"] == "6543 (abc1234)"
    assert report.engine["built_with"] == "cc (GCC) 13.2.0 for x86_64-linux-gnu"
    assert report.engine["cpu_variant"] == "avx2"
    assert report.engine["kernels"] == "off"
    assert report.engine["error"] is None
    assert json.loads(json.dumps(report.as_dict()))["engine"]["cpu_variant"] == "avx2"


def test_diagnostics_kernels_default_to_ours_and_variant_may_be_absent(fakes: FakeBinaries) -> None:
    fakes.write(
        NAME, version_output="version: 1 (x)\nbuilt with clang\n", devices_output="Available devices:\n"
    )
    report = make_runtime(fakes, env={}).diagnostics()
    assert report.engine is not None
    assert report.engine["kernels"] == "ours"
    assert report.engine["cpu_variant"] is None
    assert report.usable  # no model given: the binary is enough
    assert not report.is_usable("llama-server")


def test_diagnostics_understands_upstream_backend_log_line(fakes: FakeBinaries) -> None:
    upstream = "load_backend: loaded CPU backend from /opt/llama/bin/libggml-cpu-haswell.so\n"
    fakes.write(NAME, version_output=FAKE_VERSION_OUTPUT, devices_output=upstream)
    report = make_runtime(fakes, env={}).diagnostics()
    assert report.engine is not None and report.engine["cpu_variant"] == "haswell"


@pytest.mark.parametrize(("setup", "problem"), [("missing", "does not exist"), ("zip", "not a GGUF file")])
def test_diagnostics_flags_a_bad_model(fakes: FakeBinaries, tmp_path: Path, setup: str, problem: str) -> None:
    fakes.write(NAME, version_output=FAKE_VERSION_OUTPUT)
    fakes.write("llama-server")
    path = tmp_path / "model.gguf"
    if setup == "zip":
        write_model(path, magic=b"PK\x03\x04")
    report = make_runtime(fakes).diagnostics(model=path)
    assert not report.usable
    assert report.model_present == (setup == "zip")
    assert not report.model_is_gguf
    assert len(report.problems) == 1 and problem in report.problems[0]


def test_diagnostics_reports_a_failing_and_a_hanging_engine(
    fakes: FakeBinaries, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes.write(NAME, version_output="error: cannot load\n", version_exit=1)
    fakes.write("llama-server")
    report = make_runtime(fakes).diagnostics()
    assert report.engine is not None and "exited with status 1" in str(report.engine["error"])
    assert any("rebuild the engine" in p for p in report.problems)

    monkeypatch.setattr(diagnostics_module, "VERSION_TIMEOUT_SECONDS", 0.5)
    for record in fakes.record_dir.iterdir():
        record.unlink()
    fakes.write(NAME, sleep=30)  # no answer to --version or --list-devices: it just sleeps
    started = time.monotonic()
    report = make_runtime(fakes).diagnostics()
    assert time.monotonic() - started < 20
    assert report.engine is not None and "did not finish within 0.5 s" in str(report.engine["error"])
    calls = fakes.calls(NAME)
    assert [call["argv"] for call in calls] == [["--version"], ["--list-devices"]]
    for call in calls:
        assert_gone(call["pid"], timeout=0)


def test_diagnostics_shows_the_bin_dir_override(fakes: FakeBinaries) -> None:
    override = fakes.root / "override"
    fakes.write(NAME, path=override / NAME, version_output=FAKE_VERSION_OUTPUT)
    report = make_runtime(fakes, env={"BITNET_BIN_DIR": str(override)}).diagnostics()
    assert report.bin_dir_override == str(override)
    assert report.binaries[NAME] == str(override / NAME)
    assert report.usable
