"""Damaged model files: the pre-check (models.formats.check), the engine (patch 0008), serve() and the Python
GGUF reader on a few hundred mutants of the tiny model (tests/gguf_mutants.py makes them, seeded).

Every mutant is damaged. The pre-check either refuses it with ModelFileError or passes it; those it passes
run through llama-completion (4 tokens, a timeout), which must not die of a signal or hang. An exit 0 on a
damaged file is a "wrong success": counted and printed, not failed (a flipped byte inside a token's text
is not detectable without a checksum). The hyper-parameter mutants that aborted, hung or ran with garbage
before are asserted refused, by the pre-check and by the engine alone.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from fakebin import write_model
from gguf_mutants import Mutant, make_mutants

from bitnet import BitNetRuntime
from bitnet.bench.results import inspect_model
from bitnet.errors import BenchmarkError, ModelFileError, RuntimeLaunchError
from bitnet.models.formats.check import check_gguf
from bitnet.runtime.server import serve

ENGINE_TIMEOUT_S = 30.0  # a good run of the tiny model takes ~0.05 s; a hang is a hang
PROMPT = "Once upon a time"

# The hyper-parameter mutants that made the unpatched engine abort (SIGABRT), hang, or exit 0 with
# garbage (gguf_mutants.hyperparameter_mutants names); patch 0008 must make it fail each load with exit 1.
ENGINE_MUST_FAIL = [
    "block_count=0", "block_count=huge", "block_count=2^32-1",
    "rope_dim=0", "rope_dim=odd", "rope_dim>head_dim", "rope_dim=huge",
    "rms_eps=nan", "rms_eps=-1", "rms_eps=inf", "rms_eps=2",
    "rope_base=nan", "rope_base=inf", "rope_base=0", "rope_base=-1",
    "tokenizer=none", "tokenizer=no_vocab",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from bitnet.models.synthetic import write_dummy_model

    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_dummy_model("tiny", path, progress=False)
    return path.read_bytes()


@pytest.fixture(scope="module")
def mutants(tiny_bytes: bytes) -> list[Mutant]:
    return make_mutants(tiny_bytes)


def _write(path: Path, mutant: Mutant) -> Path:
    path.write_bytes(mutant.data)
    return path


def _passes(path: Path, mutant: Mutant, *, semantic: bool = True) -> bool:
    try:
        check_gguf(_write(path, mutant), semantic=semantic, scan=semantic)
    except ModelFileError:
        return False
    return True


def _engine_argv(runtime: BitNetRuntime, model: Path, *, conversation: bool = False) -> list[str]:
    argv = runtime._build_inference_command(
        model=model, prompt=PROMPT, n_predict=4, ctx_size=256, temperature=0, threads=1, batch_size=1,
        gpu_layers=0, conversation=conversation, extra_args=None,
    )  # fmt: skip
    argv[0] = str(runtime._require_binary("llama-completion"))
    return argv


def _run_engine(runtime: BitNetRuntime, model: Path, *, conversation: bool = False) -> tuple[int | None, str]:
    """(exit status, stderr) of llama-completion on `model`; status None: it hung (killed at the timeout)."""
    try:
        proc = subprocess.run(
            _engine_argv(runtime, model, conversation=conversation),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=ENGINE_TIMEOUT_S,
            env=dict(runtime.environment),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, ""
    return proc.returncode, proc.stderr


# ---------------------------------------------------------------------- the pre-check alone


def test_the_valid_models_pass(tiny_bytes: bytes, tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(tiny_bytes)
    header = check_gguf(model)
    assert header.metadata["general.architecture"] == "bitnet" and len(header.tensors) == 146
    check_gguf(write_model(tmp_path / "fake.gguf"))  # the fake-binary tests' placeholder model


def test_precheck_refuses_cleanly_and_in_bounded_time(mutants: list[Mutant], tmp_path: Path) -> None:
    """Each mutant is refused with ModelFileError (naming the file and a fix) or passes; nothing else is
    raised; every one that must be refused is; the check stays fast."""
    path = tmp_path / "m.gguf"
    outcome: Counter[tuple[str, str]] = Counter()
    slowest = 0.0
    for m in mutants:
        _write(path, m)
        start = time.perf_counter()
        try:
            check_gguf(path)
        except ModelFileError as exc:
            outcome[m.group, "refused"] += 1
            message = str(exc)
            assert str(path) in message and exc.reason in message, m.name
            assert "invoke convert" in message or "download" in message, (m.name, message)
        else:
            assert not m.must_refuse, f"{m.name}: the pre-check passed it"
            outcome[m.group, "passed"] += 1
        slowest = max(slowest, time.perf_counter() - start)
    assert len(mutants) >= 300
    assert slowest < 2.0, f"the slowest check took {slowest:.2f} s"
    print(dict(sorted(outcome.items())))


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("block_count=0", "bitnet.block_count = 0"),
        ("rope_dim=0", "rope.dimension_count = 0"),
        ("rope_dim=odd", "even"),
        ("rms_eps=nan", "layer_norm_rms_epsilon = nan is not a finite number"),
        ("rope_base=0", "rope.freq_base = 0.0"),
        ("tokenizer=none", "tokenizer.ggml.model is 'none'"),
        ("bos=n_vocab", "bos_token_id = 4096"),
        ("vocab_size=n-1", "vocab_size is 4095"),
        ("chat_template=int", "chat_template is not a string"),
    ],
)
def test_refusals_name_the_problem(mutants: list[Mutant], tmp_path: Path, name: str, needle: str) -> None:
    (mutant,) = [m for m in mutants if m.name == f"hparam {name}"]
    with pytest.raises(ModelFileError, match="reconvert the checkpoint with `invoke convert`") as info:
        check_gguf(_write(tmp_path / "m.gguf", mutant))
    assert needle in str(info.value)


def test_bad_utf8_absurd_counts_and_nan_values_are_named(mutants: list[Mutant], tmp_path: Path) -> None:
    expected = {
        "utf8 key": "not valid UTF-8",
        "utf8 token 100": "element 100 of 'tokenizer.ggml.tokens'",
        "count n_kv=0x8000000000000000": "key/values, more than",
        "count tokenizer.ggml.tokens count=0x10000000000": "claims 1099511627776 elements",
        "count tokenizer.chat_template length=0x8000000000000000": "claims 9223372036854775808 bytes",
        "values token_embd.weight[12345]=nan": "(F16) holds NaN or infinity (element 12345)",
        "truncate 24": "truncated",
    }
    by_name = {m.name: m for m in mutants}
    for name, needle in expected.items():
        with pytest.raises(ModelFileError, match="download it again") as info:
            check_gguf(_write(tmp_path / "m.gguf", by_name[name]))
        assert needle in str(info.value), (name, str(info.value))


def test_the_runtime_refuses_a_damaged_model_before_starting(mutants: list[Mutant], tmp_path: Path) -> None:
    (mutant,) = [m for m in mutants if m.name == "hparam rope_dim=0"]  # hung the engine at 100% CPU
    runtime = BitNetRuntime(build_dir=tmp_path / "no-build")  # no binary: refused before looking for one
    with pytest.raises(ModelFileError, match="rope.dimension_count"):
        runtime.run_inference(model=_write(tmp_path / "m.gguf", mutant), prompt="hi")


# ---------------------------------------------------------------------- the engine


@pytest.mark.engine
def test_mutants_never_crash_or_hang_the_engine(
    mutants: list[Mutant], engine_build_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pipeline users get: the runtime's pre-check, then llama-completion on what it passes."""
    runtime = BitNetRuntime(build_dir=engine_build_dir)
    path = tmp_path / "m.gguf"
    refused, crashed, hung, failed, wrong = [], [], [], [], []
    for m in mutants:
        _write(path, m)
        try:
            runtime._require_model(path)
        except ModelFileError:
            refused.append(m.name)
            continue
        status, _ = _run_engine(runtime, path)
        if status is None:
            hung.append(m.name)
        elif status < 0:
            crashed.append(f"{m.name} (signal {-status})")
        elif status == 0:
            wrong.append(m.name)
        else:
            failed.append(m.name)
    summary = (
        f"mutants: {len(mutants)} tried, {len(refused)} refused cleanly, {len(crashed)} crashed, "
        f"{len(hung)} hung, {len(wrong)} wrong successes ({len(failed)} more reached the engine and "
        "failed with an error)"
    )
    with capsys.disabled():
        print(f"\n{summary}\nwrong successes: {', '.join(wrong) or 'none'}")
    assert not crashed and not hung, f"{summary}\ncrashed: {crashed}\nhung: {hung}"
    must = [m.name for m in mutants if m.must_refuse]
    assert set(must) <= set(refused), sorted(set(must) - set(refused))


@pytest.mark.engine
def test_the_patched_engine_alone_fails_cleanly_on_bad_hyperparameters(
    mutants: list[Mutant], engine_build_dir: Path, tmp_path: Path
) -> None:
    """Patch 0008, without the pre-check: exit 1 with the reason instead of SIGABRT, a hang or garbage."""
    runtime = BitNetRuntime(build_dir=engine_build_dir)
    by_name = {m.name: m for m in mutants}
    for name in ENGINE_MUST_FAIL:
        status, stderr = _run_engine(runtime, _write(tmp_path / "m.gguf", by_name[f"hparam {name}"]))
        assert status == 1, f"{name}: exit status {status}\n{stderr[-2000:]}"
        assert "invalid" in stderr or "no tokenizer" in stderr, (name, stderr[-2000:])
    for m in mutants:  # every other hyper-parameter mutant: any clean outcome, never a signal or a hang
        if m.group == "hparam" and m.name.removeprefix("hparam ") not in ENGINE_MUST_FAIL:
            status, stderr = _run_engine(runtime, _write(tmp_path / "m.gguf", m))
            assert status is not None and status >= 0, f"{m.name}: exit status {status}\n{stderr[-2000:]}"


@pytest.mark.engine
def test_a_bad_chat_template_is_ignored_without_conversation_and_an_error_with_it(
    mutants: list[Mutant], engine_build_dir: Path, tmp_path: Path
) -> None:
    """A template that does not parse aborted llama-completion even with -no-cnv, which never uses it."""
    runtime = BitNetRuntime(build_dir=engine_build_dir)
    bad = [m for m in mutants if m.group == "template"]
    assert bad
    for m in bad:
        path = _write(tmp_path / "m.gguf", m)
        runtime._require_model(path)  # the pre-check only checks that it is a string
        status, stderr = _run_engine(runtime, path)
        assert status == 0 and "chat template cannot be parsed" in stderr, (m.name, status, stderr[-2000:])
    status, stderr = _run_engine(runtime, path, conversation=True)
    assert status == 1 and "--chat-template" in stderr, (status, stderr[-2000:])


@pytest.mark.engine
def test_serve_refuses_or_reports_a_sample_and_never_hangs(
    mutants: list[Mutant], engine_build_dir: Path, tmp_path: Path
) -> None:
    runtime = BitNetRuntime(build_dir=engine_build_dir)
    rng = random.Random(7)
    passing = [m for m in mutants if _passes(tmp_path / "p.gguf", m)]
    sample = rng.sample([m for m in mutants if m.must_refuse], 10) + rng.sample(passing, 4)
    outcomes: Counter[str] = Counter()
    for i, m in enumerate(sample):
        path = _write(tmp_path / f"m{i}.gguf", m)
        start = time.monotonic()
        try:
            with serve(path, runtime=runtime, threads=1, ready_timeout=60, log_path=tmp_path / f"s{i}.log"):
                got = "started"  # a damaged file that still serves: a wrong success
        except ModelFileError:
            got = "refused"
        except RuntimeLaunchError as exc:  # exited before it was ready; a timeout (a hang) or a signal fails
            assert type(exc) is RuntimeLaunchError and exc.returncode is not None and exc.returncode > 0, (
                m.name,
                str(exc),
            )
            got = "engine error"
        assert time.monotonic() - start < 60, m.name
        assert got == "refused" or not m.must_refuse, (m.name, got)
        outcomes[got] += 1
    print(dict(outcomes))
    assert outcomes["refused"] == 10


# ---------------------------------------------------------------------- the Python GGUF reader


def test_python_reader_raises_only_its_own_error(mutants: list[Mutant], tmp_path: Path) -> None:
    """bench / ppl / serve-bench read the header with `inspect_model`: BenchmarkError or a result, never
    an uncaught UnicodeDecodeError or an out-of-memory. Every mutant its bounded check refuses, and a
    sample of the others (gguf-py's reader takes ~0.2 s on the tiny model's vocabulary)."""
    path = tmp_path / "m.gguf"
    outcome: Counter[str] = Counter()
    rng = random.Random(3)
    for m in mutants:
        if _passes(path, m, semantic=False) and (outcome["read"] >= 20 or rng.random() > 0.3):
            continue
        try:
            inspect_model(path)
        except BenchmarkError:
            outcome["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{m.name}: {type(exc).__name__}: {exc}")
        else:
            outcome["read"] += 1
    print(dict(outcome))
    assert outcome["refused"] > 300 and outcome["read"] > 0
