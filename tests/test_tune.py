"""`invoke tune` (bitnet/bench/tune.py): the model's shapes, bad input, and a real (narrowed) tuning run that
builds and times the kernels' benchmark with candidate tables and writes a table the kernels build with."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from bitnet.bench.tune import host_isa, model_shapes, tune
from bitnet.engine import build as engine
from bitnet.errors import TuneError
from bitnet.models.synthetic import write_dummy_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_tq1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tune") / "tiny-tq1_0.gguf"
    write_dummy_model("tiny", path, outtype="tq1_0", progress=False)
    return path


def _expected_counts(path: Path) -> dict[tuple[int, int, str], int]:
    """Counted here straight from the GGUF reader: every 2-D TQ tensor by (rows, K, type)."""
    reader = gguf.GGUFReader(str(path))
    counts: dict[tuple[int, int, str], int] = {}
    for t in reader.tensors:
        if t.tensor_type.name in ("TQ1_0", "TQ2_0"):
            key = (int(t.shape[1]), int(t.shape[0]), t.tensor_type.name)
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_model_shapes_are_the_ternary_matrices(tiny_tq1: Path):
    shapes = model_shapes(tiny_tq1)
    assert {(s.rows, s.k, s.src_type): s.count for s in shapes} == _expected_counts(tiny_tq1)
    reader = gguf.GGUFReader(str(tiny_tq1))
    n_layers = int(reader.fields["bitnet.block_count"].parts[-1][0])
    assert sum(s.count for s in shapes) == 7 * n_layers  # q k v o gate up down per layer
    assert all(s.src_type == "TQ1_0" and s.k % 256 == 0 for s in shapes)


def test_a_model_without_ternary_matrices_is_refused(tmp_path: Path):
    path = tmp_path / "f32.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((256, 256), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(TuneError, match="no TQ2_0/TQ1_0 matrices"):
        model_shapes(path)


def test_missing_or_garbage_model_gets_a_clear_error(tmp_path: Path):
    with pytest.raises(TuneError, match="not found"):
        model_shapes(tmp_path / "nope.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(TuneError, match="not a readable GGUF"):
        model_shapes(junk)


def test_bad_numbers_are_refused_before_anything_runs(tiny_tq1: Path, tmp_path: Path):
    with pytest.raises(TuneError, match="--cols"):
        tune(tiny_tq1, build_dir=tmp_path, cols=1)
    assert not (tmp_path / "tuning.json").exists()


def test_a_tuned_table_missing_an_isa_or_unreadable_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    base = json.loads(engine.DEFAULT_TUNING_FILE.read_text())
    tuned = tmp_path / engine.TUNED_FILE_NAME
    tuned.write_text(json.dumps(base))
    assert engine.tuning_file(tmp_path) == tuned  # complete: used
    old = {**base, "isa": {k: v for k, v in base["isa"].items() if k != "ssse3"}}
    tuned.write_text(json.dumps(old))  # tuned before the ssse3 kernels existed
    with caplog.at_level("WARNING"):
        assert engine.tuning_file(tmp_path) == engine.DEFAULT_TUNING_FILE
    assert "no entry for ssse3" in caplog.text and "invoke tune" in caplog.text
    tuned.write_text("{not json")
    assert engine.tuning_file(tmp_path) == engine.DEFAULT_TUNING_FILE


def test_invoke_tune_without_model_says_what_to_give():
    done = subprocess.run([sys.executable, "-m", "invoke", "tune"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert "--model is required" in done.stderr + done.stdout


@pytest.mark.slow
def test_tune_measures_candidates_and_writes_a_table_the_build_uses(tiny_tq1: Path, tmp_path: Path):
    _, _, key = host_isa()
    if key == "scalar":
        pytest.skip("the scalar kernels have no tile to tune")
    current = json.loads(engine.DEFAULT_TUNING_FILE.read_text())["isa"][key]
    other = (current["gemm_row_groups"], 2 if current["gemm_cols"] != 2 else 3)
    bogus = (1, 40)  # more columns than any ISA's register budget: the kernels refuse it with #error
    messages: list[str] = []
    res = tune(
        tiny_tq1,
        build_dir=tmp_path,
        tiles=[(current["gemm_row_groups"], current["gemm_cols"]), other, bogus],
        prefetch=[0],
        reps=1,
        cols=16,
        progress=messages.append,
    )
    if res.after == res.before:  # the parameters in use won: the build's table is left alone
        out = tmp_path / "tuning-report.json"
        assert (
            not (tmp_path / "tuning.json").exists()
            and engine.tuning_file(tmp_path) == engine.DEFAULT_TUNING_FILE
        )
    else:
        out = tmp_path / "tuning.json"
        assert engine.tuning_file(tmp_path) == out  # what `invoke build --build-dir tmp_path` would compile
    assert res.out_path == out and out.is_file()
    data = json.loads(out.read_text())
    tuned = data["_tuned"]
    assert tuned["isa"] == key and tuned["before"] == current
    # the untuned ISAs are copied unchanged; the tuned entry is one of the measured candidates
    base = json.loads(engine.DEFAULT_TUNING_FILE.read_text())
    untouched = {k: v for k, v in base["isa"].items() if k != key}
    assert {k: v for k, v in data["isa"].items() if k != key} == untouched
    tiles = {(t["params"]["gemm_row_groups"], t["params"]["gemm_cols"]): t for t in tuned["trials"]
             if t["stage"] == "tile"}  # fmt: skip
    assert set(tiles) == {(current["gemm_row_groups"], current["gemm_cols"]), other, bogus}
    assert tiles[bogus]["seconds"] is None and "rejected at compile time" in tiles[bogus]["note"]
    for tile in ((current["gemm_row_groups"], current["gemm_cols"]), other):
        assert tiles[tile]["seconds"] > 0
    assert (data["isa"][key]["gemm_row_groups"], data["isa"][key]["gemm_cols"]) in {
        (current["gemm_row_groups"], current["gemm_cols"]),
        other,
    }
    # a TQ1_0 model also decides which layout TQ1_0 weights get, from two measured GEMV runs
    assert sorted(t["params"]["tq1_base3"] for t in tuned["trials"] if t["stage"] == "tq1_layout") == [0, 1]
    assert any("rejected" in m for m in messages)
    # the written table is one the kernels' CMake accepts (the header generator validates every field)
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    gen = subprocess.run(
        [cmake, f"-DBITNET_JSON={out}", f"-DBITNET_OUT={tmp_path / 'h.h'}", "-P",
         str(REPO / "tests" / "data" / "gen_tuning_header.cmake")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    header = (tmp_path / "h.h").read_text()
    p = data["isa"][key]
    assert f"BITNET_TUNE_{key.upper()}_GEMM_COLS {p['gemm_cols']}\n" in header
