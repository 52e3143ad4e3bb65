"""`invoke setup`: the offline default end to end, idempotence, and what happens to bad model files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitnet.pipeline import model_path, setup_model, verify_gguf

REPO = Path(__file__).resolve().parent.parent


def test_verify_gguf_names_the_problem(tmp_path: Path):
    assert verify_gguf(tmp_path / "nope.gguf") == "missing"
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    assert "unreadable GGUF" in (verify_gguf(junk) or "")
    import gguf

    other = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(other), "bitnet")
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert "hidden_activation" in (verify_gguf(other) or "")


def test_model_path_is_stable_and_safe():
    assert model_path("2B", Path("models"), "tq2_0", "f16") == Path("models/2B/ggml-model-tq2_0.gguf")
    assert model_path("a/b c", Path("m"), "tq1_0", "q8_0") == Path("m/a_b_c/ggml-model-tq1_0-head_q8_0.gguf")


@pytest.mark.engine
def test_setup_tiny_offline_is_idempotent_and_repairs_a_bad_file(engine_build_dir: Path, tmp_path: Path):
    first = setup_model("tiny", build_dir=engine_build_dir, models_dir=tmp_path)
    assert any("wrote synthetic" in s for s in first.steps)
    assert first.smoke_output.startswith("The capital of France is")
    assert len(first.smoke_output) > len("The capital of France is")
    # the smoke run wrote the repack cache beside the model; setup says where
    caches = sorted(first.gguf.parent.glob(first.gguf.name + ".*.bitnet-repack"))
    assert len(caches) == 1 and any(s.startswith(f"repack cache: {caches[0]} (") for s in first.steps)
    mtime = first.gguf.stat().st_mtime_ns

    second = setup_model("tiny", build_dir=engine_build_dir, models_dir=tmp_path)
    assert any("already there (verified)" in s for s in second.steps)
    assert second.gguf.stat().st_mtime_ns == mtime
    assert second.smoke_output == first.smoke_output  # greedy: same text

    first.gguf.write_bytes(b"GGUF truncated")
    third = setup_model("tiny", build_dir=engine_build_dir, models_dir=tmp_path)
    assert any("wrote synthetic" in s for s in third.steps)
    assert verify_gguf(third.gguf) is None


def test_setup_unknown_model_exits_cleanly_with_suggestions():
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "setup", "--model", "2b-gguff"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "2B-gguf" in proc.stderr + proc.stdout


def test_every_task_of_the_surface_is_declared():
    listing = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"], cwd=REPO, capture_output=True, text=True
    )
    assert listing.returncode == 0, listing.stderr
    # the first word of each indented line is a task name: compared whole, so "serve" is not found
    # inside "serve-bench"
    lines = [line.split() for line in listing.stdout.splitlines() if line.startswith("  ")]
    declared = {words[0] for words in lines if words}
    expected = {
        "build", "download", "convert", "check", "dummy", "setup", "models", "infer", "serve", "bench",
        "serve-bench", "plot", "ppl", "tune", "doctor", "clean",
    }  # fmt: skip
    assert expected <= declared, f"missing: {sorted(expected - declared)}"
