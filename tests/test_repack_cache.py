"""The repack cache (kernels/ternary/ggml/ternary-cache.cpp): the first load of a GGUF writes our layout
beside it, later loads map that file instead of repacking, and every load computes the same logits as a
run without any cache: bitwise, on every CPU variant this host runs. A changed model or a damaged file
is never used."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tinymodels import runnable_variants

from bitnet.engine import contract

pytestmark = pytest.mark.engine

TEXT = " ".join(["the cat sat on a mat and the dog ran far away"] * 90)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(TEXT)
    return path


def _model(directory: Path, outtype: str = "tq2_0") -> Path:
    from bitnet.models.synthetic import write_dummy_model

    directory.mkdir(parents=True, exist_ok=True)
    model = directory / f"tiny-{outtype}.gguf"
    write_dummy_model("tiny", model, outtype=outtype, progress=False)
    return model


def _run(
    bin_dir: Path, model: Path, text: Path, out: Path, **env: str
) -> tuple[contract.EngineReport, bytes, str]:
    """llama-perplexity over `text`, every logit saved to `out`: the engine's report and those bytes."""
    done = subprocess.run(
        [str(bin_dir / contract.PERPLEXITY_BINARY), "-m", str(model), "-f", str(text), "-c", "64",
         "--chunks", "3", "-t", "2", "-b", "64", "--kl-divergence-base", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, contract.VARIANT_REPORT_ENV: "1", **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = contract.parse_engine_report(done.stderr)
    assert report.kernels is True, done.stderr[-2000:]
    return report, out.read_bytes(), done.stderr


def _ternary_tensors(model: Path) -> int:
    import gguf

    return sum(t.tensor_type.name in ("TQ1_0", "TQ2_0") for t in gguf.GGUFReader(str(model)).tensors)


def _cache_files(model: Path) -> list[Path]:
    return sorted(model.parent.glob(model.name + ".*" + contract.REPACK_CACHE_SUFFIX))


@pytest.mark.parametrize("variant", runnable_variants())
@pytest.mark.parametrize("outtype", ["tq2_0", "tq1_0"])
def test_a_second_load_maps_the_cache_and_computes_the_same_logits(
    engine_bin_dir: Path, tmp_path: Path, text_file: Path, variant: str, outtype: str
) -> None:
    model = _model(tmp_path / "m", outtype)
    env = {contract.CPU_VARIANT_ENV: variant}
    off, base, _ = _run(engine_bin_dir, model, text_file, tmp_path / "off.bin", **env,
                        **{contract.REPACK_CACHE_ENV: "0"})  # fmt: skip
    assert off.repack_cache == "off" and off.repack_cache_detail == f"({contract.REPACK_CACHE_ENV}=0)"
    assert _cache_files(model) == []

    first, logits, _ = _run(engine_bin_dir, model, text_file, tmp_path / "first.bin", **env)
    name = f"{model.name}.{first.kernels_isa}{contract.REPACK_CACHE_SUFFIX}"
    assert first.repack_cache == "wrote", first
    assert _cache_files(model) == [model.parent / name]
    assert logits == base

    second, logits, _ = _run(engine_bin_dir, model, text_file, tmp_path / "second.bin", **env)
    assert second.repack_cache == "read", second
    # every ternary matrix of the model came from the file
    n = _ternary_tensors(model)
    assert second.repack_cache_detail is not None
    assert second.repack_cache_detail.startswith(f"{n} of {n} tensors")
    assert logits == base


def test_a_changed_model_gets_a_new_cache(engine_bin_dir: Path, tmp_path: Path, text_file: Path) -> None:
    model = _model(tmp_path / "m")
    _, base, _ = _run(engine_bin_dir, model, text_file, tmp_path / "a.bin")
    (cache,) = _cache_files(model)
    before = cache.stat().st_ino
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # e.g. converted again
    report, logits, _ = _run(engine_bin_dir, model, text_file, tmp_path / "b.bin")
    assert report.repack_cache == "wrote" and logits == base
    (cache,) = _cache_files(model)
    assert cache.stat().st_ino != before  # replaced (renamed over), not rewritten in place
    assert _run(engine_bin_dir, model, text_file, tmp_path / "c.bin")[0].repack_cache == "read"


def test_a_damaged_cache_is_deleted_and_not_used(
    engine_bin_dir: Path, tmp_path: Path, text_file: Path
) -> None:
    model = _model(tmp_path / "m")
    _, base, _ = _run(engine_bin_dir, model, text_file, tmp_path / "a.bin")
    (cache,) = _cache_files(model)
    # the buffer's first tensor starts the image at 2 MiB: flip a byte of its first row group's codes
    with cache.open("r+b") as f:
        f.seek(2 << 20)
        byte = f.read(1)
        f.seek(2 << 20)
        f.write(bytes([byte[0] ^ 0x55]))
    report, logits, stderr = _run(engine_bin_dir, model, text_file, tmp_path / "b.bin")
    assert "differs from the model; deleted" in stderr
    assert logits == base  # that tensor and every later one repacked from the GGUF
    n = _ternary_tensors(model)  # the tensors set before the damaged one came from the file
    assert report.repack_cache == "read" and report.repack_cache_detail is not None
    assert int(report.repack_cache_detail.split()[0]) < n and f"of {n} tensors" in report.repack_cache_detail
    assert _cache_files(model) == []
    assert _run(engine_bin_dir, model, text_file, tmp_path / "c.bin")[0].repack_cache == "wrote"


@pytest.mark.parametrize(("written", "wanted"), [("tk2", "tk1"), ("tk1", "tk2")])
def test_a_cache_in_another_layout_is_replaced(
    engine_bin_dir: Path, tmp_path: Path, text_file: Path, written: str, wanted: str
) -> None:
    """A file written for another layout (tuning.json's tq2_base3 changed in an update, or BITNET_LAYOUT)
    is deleted at the first load that wants the other one, and that load's next one writes a fitting
    file: not every later load repacking beside a useless one."""
    model = _model(tmp_path / "m")
    _, base, _ = _run(engine_bin_dir, model, text_file, tmp_path / "a.bin", BITNET_LAYOUT=written)
    assert len(_cache_files(model)) == 1
    report, logits, stderr = _run(engine_bin_dir, model, text_file, tmp_path / "b.bin", BITNET_LAYOUT=wanted)
    assert "is in another layout there; deleted, the next load rebuilds it" in stderr
    n = _ternary_tensors(model)
    assert report.repack_cache == "read" and report.repack_cache_detail is not None
    assert report.repack_cache_detail.startswith(f"0 of {n} tensors")
    assert logits == base  # both layouts compute the same sums
    assert _cache_files(model) == []
    again, logits, _ = _run(engine_bin_dir, model, text_file, tmp_path / "c.bin", BITNET_LAYOUT=wanted)
    assert again.repack_cache == "wrote" and logits == base
    last, logits, _ = _run(engine_bin_dir, model, text_file, tmp_path / "d.bin", BITNET_LAYOUT=wanted)
    assert last.repack_cache == "read" and last.repack_cache_detail is not None
    assert last.repack_cache_detail.startswith(f"{n} of {n} tensors") and logits == base


def test_a_cache_of_another_file_is_not_used(engine_bin_dir: Path, tmp_path: Path, text_file: Path) -> None:
    """Same name, other content (a different dummy seed is not available, so: a TQ1_0 file renamed)."""
    a = _model(tmp_path / "a", "tq2_0")
    b = _model(tmp_path / "b", "tq1_0")
    _, base_b, _ = _run(engine_bin_dir, b, text_file, tmp_path / "b.bin", **{contract.REPACK_CACHE_ENV: "0"})
    _run(engine_bin_dir, a, text_file, tmp_path / "a.bin")
    (cache_a,) = _cache_files(a)
    # put a's cache where b's would be: its header names another inode, size and time
    cache_a.rename(b.parent / cache_a.name.replace(a.name, b.name))
    report, logits, _ = _run(engine_bin_dir, b, text_file, tmp_path / "b2.bin")
    assert report.repack_cache == "wrote" and logits == base_b
