"""The CLIs: run_inference.py, run_inference_server.py and `python -m bitnet`.

Options map onto the runtime's argv; bad values exit 2, launch failures 1, Ctrl-C 130. In-process
calls cover the mapping; real subprocesses cover the shims, logging set-up and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakebin import FAKE_DEVICES_OUTPUT, FAKE_VERSION_OUTPUT, FakeBinaries, assert_gone, write_model

from bitnet import BitNetRuntime
from bitnet.cli import inference_main, main, server_main

REPO_ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["fakebin"]  # fixtures: fakes, model

NAME = "llama-completion"


def run_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------- dry run and option mapping


def test_dry_run_prints_the_shell_quoted_command(
    fakes: FakeBinaries, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = 'it\'s $HOME; rm -rf / `x` "quoted"'
    code = inference_main(
        ["-m", str(model), "-p", prompt, "-t", "1", "--build-dir", str(fakes.build_dir), "--dry-run"]
    )
    assert code == 0
    out = capsys.readouterr().out
    expected = BitNetRuntime(build_dir=fakes.build_dir).run_inference(
        model=model, prompt=prompt, threads=1, dry_run=True
    )
    assert isinstance(expected, list)
    assert out == shlex.join(expected) + "\n"
    assert shlex.split(out) == expected
    assert fakes.calls() == []  # nothing ran


def test_short_options_map_onto_the_argv(
    fakes: FakeBinaries, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["-m", str(model), "-p", "Hi", "-n", "5", "-c", "64", "-temp", "0", "-b", "4", "--gpu-layers", "2"]
    args += [
        "-cnv",
        "-t",
        "1",
        "--build-dir",
        str(fakes.build_dir),
        "--dry-run",
        "--extra-args",
        "--top-k",
        "40",
    ]
    assert inference_main(args) == 0
    assert shlex.split(capsys.readouterr().out) == [
        str(fakes.build_dir / "bin" / NAME), "-m", str(model), "-sys", "Hi", "-n", "5", "-c", "64", "-t", "1",
        "--temp", "0.0", "-b", "4", "-ngl", "2", "-cnv", "--top-k", "40",
    ]  # fmt: skip


def test_long_options_and_defaults(
    fakes: FakeBinaries, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--model",
        str(model),
        "--prompt",
        "Hi",
        "--n-predict",
        "7",
        "--ctx-size",
        "99",
        "--temperature",
        "1.5",
    ]
    args += ["--batch-size", "2", "--threads", "AUTO", "--build-dir", str(fakes.build_dir), "--dry-run"]
    assert inference_main(args) == 0
    argv = shlex.split(capsys.readouterr().out)
    expected = BitNetRuntime(build_dir=fakes.build_dir).run_inference(
        model=model, prompt="Hi", n_predict=7, ctx_size=99, temperature=1.5, batch_size=2, dry_run=True
    )
    assert argv == expected
    assert "-no-cnv" in argv and "-ngl" not in argv  # CPU-only engine: no GPU flag, no GPU warnings


def test_server_options_map_onto_the_argv(
    fakes: FakeBinaries, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["-m", str(model), "--host", "0.0.0.0", "--port", "9090", "-t", "1", "-p", "ignored prompt"]
    args += ["--build-dir", str(fakes.build_dir), "--dry-run", "--extra-args", "--api-key", "s e c"]
    assert server_main(args) == 0
    assert shlex.split(capsys.readouterr().out) == [
        str(fakes.build_dir / "bin" / "llama-server"), "-m", str(model), "-c", "2048", "-t", "1",
        "-n", "4096", "--temp", "0.8", "--host", "0.0.0.0", "--port", "9090", "-cb", "-b", "512",
        "--api-key", "s e c",
    ]  # fmt: skip


@pytest.mark.parametrize("level", ["debug", "Warning", "ERROR", "critical"])
def test_log_level_accepts_any_case(fakes: FakeBinaries, level: str) -> None:
    args = [
        "-m",
        "m.gguf",
        "-p",
        "hi",
        "--build-dir",
        str(fakes.build_dir),
        "--dry-run",
        "--log-level",
        level,
    ]
    assert inference_main(args) == 0


# ---------------------------------------------------------------------- argparse errors: exit 2

INFERENCE_ERRORS = [
    (["-n", "0"], "-n/--n-predict"),
    (["-n", "ten"], "-n/--n-predict"),
    (["-c", "-1"], "-c/--ctx-size"),
    (["-t", "0"], "-t/--threads"),
    (["-t", "many"], "-t/--threads"),
    (["-temp", "-0.5"], "-temp/--temperature"),
    (["-temp", "nan"], "-temp/--temperature"),
    (["-temp", "inf"], "-temp/--temperature"),
    (["-b", "0"], "-b/--batch-size"),
    (["--gpu-layers", "-1"], "-ngl/--gpu-layers"),
    (["--log-level", "loud"], "--log-level"),
    (["-p", "   "], "-p/--prompt"),
]


@pytest.mark.parametrize(("extra", "option"), INFERENCE_ERRORS)
def test_inference_range_errors_exit_2(
    capsys: pytest.CaptureFixture[str], extra: list[str], option: str
) -> None:
    args = {"-m": "m.gguf", "-p": "hi"}
    args.update(dict(zip(extra[::2], extra[1::2], strict=True)))
    with pytest.raises(SystemExit) as info:
        inference_main([item for pair in args.items() for item in pair] + ["--dry-run"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and extra[1].strip().lower() in err.lower()


@pytest.mark.parametrize(
    ("extra", "option"),
    [(["--port", "0"], "--port"), (["--port", "65536"], "--port"), (["--port", "http"], "--port"),
     (["--host", ""], "--host"), (["-n", "-5"], "-n/--n-predict")],
)  # fmt: skip
def test_server_range_errors_exit_2(
    capsys: pytest.CaptureFixture[str], extra: list[str], option: str
) -> None:
    with pytest.raises(SystemExit) as info:
        server_main(["-m", "m.gguf", *extra, "--dry-run"])
    assert info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("entry", "args", "missing"),
    [(inference_main, ["-p", "hi"], "-m/--model"), (inference_main, ["-m", "m.gguf"], "-p/--prompt"),
     (server_main, [], "-m/--model")],
)  # fmt: skip
def test_missing_required_options_exit_2(
    capsys: pytest.CaptureFixture[str], entry: Any, args: list[str], missing: str
) -> None:
    with pytest.raises(SystemExit) as info:
        entry([*args, "--dry-run"])
    assert info.value.code == 2
    assert f"required: {missing}" in capsys.readouterr().err


# ---------------------------------------------------------------------- real runs: exit 0 and 1


def test_successful_run_exits_0(fakes: FakeBinaries, model: Path, capfd: pytest.CaptureFixture[str]) -> None:
    fakes.write(NAME, stdout="a story\n")
    args = [
        "-m",
        str(model),
        "-p",
        "Tell",
        "-t",
        "1",
        "--build-dir",
        str(fakes.build_dir),
        "--extra-args",
        "--seed",
        "3",
    ]
    assert inference_main(args) == 0
    assert "a story" in capfd.readouterr().out
    assert fakes.calls(NAME)[0]["argv"][-2:] == ["--seed", "3"]


def test_launch_failure_exits_1_with_the_message(
    fakes: FakeBinaries, model: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    fakes.write(NAME, exit_code=3, stderr="llama: model is corrupt\n")
    assert inference_main(["-m", str(model), "-p", "hi", "--build-dir", str(fakes.build_dir)]) == 1
    err = capfd.readouterr().err
    assert "error: llama-completion exited with status 3" in err
    assert "model is corrupt" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("setup", "expected"), [("no-model", "does not exist"), ("no-binary", "invoke build --build-dir")]
)
def test_setup_problems_exit_1_with_the_fix(
    fakes: FakeBinaries, tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, expected: str
) -> None:
    model = tmp_path / "model.gguf"
    if setup == "no-model":
        fakes.write(NAME)
    else:
        write_model(model)
    assert inference_main(["-m", str(model), "-p", "hi", "--build-dir", str(fakes.build_dir)]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert fakes.calls() == []


# ---------------------------------------------------------------------- --diagnostics


def test_diagnostics_exit_1_when_unusable(fakes: FakeBinaries, capsys: pytest.CaptureFixture[str]) -> None:
    assert inference_main(["--diagnostics", "--build-dir", str(fakes.build_dir)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] is False
    assert report["binaries"][NAME] is None
    assert any("invoke build" in problem for problem in report["problems"])


def test_diagnostics_exit_0_when_usable(
    fakes: FakeBinaries, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.write(NAME, version_output=FAKE_VERSION_OUTPUT, devices_output=FAKE_DEVICES_OUTPUT)
    assert inference_main(["--diagnostics", "-m", str(model), "--build-dir", str(fakes.build_dir)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert out.startswith('{\n  "')  # indented JSON
    assert report["usable"] is True and report["model_is_gguf"] is True
    assert report["engine"]["version"] == "6543 (abc1234)"
    assert report["engine"]["cpu_variant"] == "avx2"


def test_diagnostics_of_a_non_gguf_model_exit_1(
    fakes: FakeBinaries, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.write(NAME, version_output=FAKE_VERSION_OUTPUT)
    model = write_model(tmp_path / "model.bin", magic=b"\x00\x01\x02\x03")
    assert inference_main(["--diagnostics", "-m", str(model), "--build-dir", str(fakes.build_dir)]) == 1
    assert json.loads(capsys.readouterr().out)["model_is_gguf"] is False


def test_server_diagnostics_needs_llama_server(
    fakes: FakeBinaries, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.write(NAME, version_output=FAKE_VERSION_OUTPUT)
    assert server_main(["--diagnostics", "--build-dir", str(fakes.build_dir)]) == 1
    assert json.loads(capsys.readouterr().out)["usable"] is False
    fakes.write("llama-server")
    assert server_main(["--diagnostics", "--build-dir", str(fakes.build_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["usable"] is True


# ---------------------------------------------------------------------- python -m bitnet


@pytest.mark.parametrize(("args", "code"), [([], 2), (["bogus"], 2), (["--help"], 0)])
def test_module_dispatcher(capsys: pytest.CaptureFixture[str], args: list[str], code: int) -> None:
    assert main(args) == code
    captured = capsys.readouterr()
    assert "usage: python -m bitnet {infer,serve}" in (captured.out if code == 0 else captured.err)


def test_module_dispatcher_runs_both_clis(fakes: FakeBinaries, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["-m", "m.gguf", "-t", "1", "--build-dir", str(fakes.build_dir), "--dry-run"]
    assert main(["infer", "-p", "hi", *common]) == 0
    assert shlex.split(capsys.readouterr().out)[0].endswith(NAME)
    assert main(["serve", *common]) == 0
    assert shlex.split(capsys.readouterr().out)[0].endswith("llama-server")


# ---------------------------------------------------------------------- real processes: shims, Ctrl-C


def test_shims_and_module_run_as_programs(fakes: FakeBinaries) -> None:
    common = ["-m", "m.gguf", "-t", "99", "--build-dir", str(fakes.build_dir), "--dry-run"]
    infer = run_script("run_inference.py", "-p", "hi there", *common)
    assert infer.returncode == 0, infer.stderr
    assert shlex.split(infer.stdout)[0] == str(fakes.build_dir / "bin" / NAME)
    assert "WARNING" in infer.stderr and "more than the" in infer.stderr  # the CLI configured logging
    quiet = run_script("run_inference.py", "-p", "hi there", *common, "--log-level", "error")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == infer.stdout
    serve = run_script("run_inference_server.py", *common)
    assert serve.returncode == 0, serve.stderr
    assert shlex.split(serve.stdout)[0] == str(fakes.build_dir / "bin" / "llama-server")
    module = run_script("-m", "bitnet", "infer", "-p", "hi there", *common)
    assert module.returncode == 0 and module.stdout == infer.stdout
    bad = run_script("run_inference.py", "-p", "hi", "-m", "m.gguf", "-n", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("script", "binary"), [("run_inference.py", NAME), ("run_inference_server.py", "llama-server")]
)
def test_ctrl_c_exits_130_and_stops_the_engine(
    fakes: FakeBinaries, model: Path, script: str, binary: str
) -> None:
    fakes.write(binary, sleep=60, grandchild=True)
    args = [sys.executable, script, "-m", str(model), "-p", "hi", "--build-dir", str(fakes.build_dir)]
    proc = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Python only turns SIGINT into KeyboardInterrupt if SIGINT was not ignored when it started
        # (it is in some background/CI shells): start the CLI with the default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        record = fakes.wait_for_call(binary)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert_gone(record["pid"], timeout=0)  # the CLI reaped its child before exiting
    assert_gone(record["grandchild_pid"], ours=False)


@pytest.mark.parametrize("verbose", [False, True])
def test_engine_log_is_shown_only_when_asked_but_kept_for_errors(
    fakes: FakeBinaries, model: Path, capfd: pytest.CaptureFixture[str], verbose: bool
) -> None:
    fakes.write(NAME, stdout="the text\n", stderr="llama_model_loader: 25 lines of this\n")
    args = ["-m", str(model), "-p", "hi", "--build-dir", str(fakes.build_dir)] + (["-v"] if verbose else [])
    assert inference_main(args) == 0
    out, err = capfd.readouterr()
    assert "the text" in out and ("llama_model_loader" in err) == verbose
    fakes.write(NAME, stderr="llama_model_loader: failed to load model\n", exit_code=1)
    assert inference_main(args[:-1] if verbose else args) == 1
    err = capfd.readouterr().err
    assert "failed to load model" in err  # the log's tail is part of the error even when hidden
