"""The engine's row split (BITNET_SPLIT): threads taking guided chunks of rows from a shared counter
instead of fixed halves must not change a single bit of the output. Each row is computed by the same
code in any row range, so the logits of the static split, of the guided default and of tiny chunks
(hundreds per op, so the counter really hands rows from one thread to another) on 1-2 threads are
equal: the same greedy tokens and the same log-probabilities, to the last digit the server prints.
The prompt is one batch of many columns (the GEMM tiles) and the generation is one-token GEMVs and
the fp16/bf16 head GEMV."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bitnet.bench.numerics import EXACT_ENGINE_ARGS
from bitnet.engine.contract import ADAPT_THREADS_ENV, BARRIER_SPIN_ENV, KERNELS_ENV, SPLIT_ENV
from bitnet.runtime.runtime import BitNetRuntime
from bitnet.runtime.server import serve

pytestmark = pytest.mark.engine

PROMPT = (
    "Once upon a time, in a village between two rivers, there lived an old clockmaker who repaired "
    "every clock in the valley except his own, which had stopped at a quarter past three on the night "
    "his daughter left for the city. Every morning the children of the village"
)
N_PREDICT = 24
TINY_CHUNKS = "guided:2:0:1"  # min 0 KiB, max 1 KiB of weights a chunk: 16-row chunks in the tiny model
# (split, threads): the old static split first (the reference), then the default and forced tiny chunks
# (more threads than cores would make the run crawl through spinning barriers on a loaded machine; the
# kernels' ctest group "chunks" covers 3 threads in random interleavings)
RUNS = [("static", 2), ("", 2), (TINY_CHUNKS, 2), ("guided:1:0:1", 2), (TINY_CHUNKS, 1)]
# and the barrier's wait policy (patch 0009): yielding at once, or spinning forever as upstream, is only
# when a thread waits, never what it computes
BARRIER_RUNS = [("0", 2), ("off", 2)]
# and the adaptive thread count (patch 0015): "flip" runs every other graph (prompt and decode steps) on one
# thread fewer, so the rows handed to each thread change from graph to graph, never what a row gets
ADAPT_RUNS = [("flip", 2)]


def _complete(url: str, prompt: str = PROMPT) -> dict[str, Any]:
    body = {
        "prompt": prompt,
        "n_predict": N_PREDICT,
        "temperature": 0,
        "n_probs": 10,
        "cache_prompt": False,
        "post_sampling_probs": False,
        "return_tokens": True,
    }
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(f"{url}/completion", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=300) as reply:
        out = json.loads(reply.read())
    return {
        "tokens": out["tokens"],
        "probs": out["completion_probabilities"],
        "n_prompt": out.get("tokens_evaluated"),
    }


@pytest.fixture(scope="module", params=[("tq2_0", "f16"), ("tq1_0", "bf16")], ids=lambda p: f"{p[0]}-{p[1]}")
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bitnet.models.synthetic import write_dummy_model

    outtype, head = request.param
    path = tmp_path_factory.mktemp("split") / f"tiny-{outtype}-{head}.gguf"
    write_dummy_model("tiny", path, outtype=outtype, head_type=head, progress=False)
    return path


def test_guided_chunks_give_bitwise_the_static_splits_output(
    engine_bin_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    results = {}
    runs = [(s, t, "", "") for s, t in RUNS] + [(TINY_CHUNKS, t, spin, "") for spin, t in BARRIER_RUNS]
    runs += [("", t, "", adapt) for adapt, t in ADAPT_RUNS]
    for split, threads, spin, adapt in runs:
        env = {**os.environ, KERNELS_ENV: "1", "GGML_CPU_VARIANT_REPORT": "1"}
        env.pop(SPLIT_ENV, None)
        env.pop(BARRIER_SPIN_ENV, None)
        env.pop(ADAPT_THREADS_ENV, None)
        if split:
            env[SPLIT_ENV] = split
        if spin:
            env[BARRIER_SPIN_ENV] = spin
        if adapt:
            env[ADAPT_THREADS_ENV] = adapt
        log = tmp_path / f"{split or 'default'}-{threads}-{spin}-{adapt}.log"
        runtime = BitNetRuntime(build_dir=engine_bin_dir.parent, env=env)
        # -t/-tb after the runtime's own -t: 2 threads even on a 1-core machine (the runtime clamps)
        with serve(
            tiny_model, runtime=runtime, ctx_size=512, threads=1, log_path=log,
            extra_args=[*EXACT_ENGINE_ARGS, "--no-warmup", "-t", str(threads), "-tb", str(threads)],
        ) as server:  # fmt: skip
            results[(split, threads, spin, adapt)] = _complete(server.url)
        text = log.read_text()
        assert "bitnet: ternary kernels on" in text
        assert "not understood" not in text
        if adapt:  # the mode took effect (the engine names it when its thread pool starts)
            assert f"adaptive threads: {adapt}" in text
    ref = results[(*RUNS[0], "", "")]
    assert len(ref["tokens"]) == N_PREDICT
    assert len({t for step in ref["probs"] for t in (e["id"] for e in step["top_logprobs"])}) > 10
    for run, got in results.items():
        assert got["tokens"] == ref["tokens"], f"{run}: greedy tokens differ from the static split's"
        assert got["probs"] == ref["probs"], f"{run}: log-probabilities differ from the static split's"


def test_an_unknown_split_value_is_named_and_the_default_runs(engine_bin_dir: Path, tmp_path: Path) -> None:
    import subprocess

    from bitnet.models.synthetic import write_dummy_model

    model = tmp_path / "tiny.gguf"
    write_dummy_model("tiny", model, progress=False)
    exe = str(engine_bin_dir / "llama-completion")
    argv = [exe, "-m", str(model), "-p", "x", "-n", "2", "-no-cnv", "-t", "2"]
    env = {**os.environ, SPLIT_ENV: "sideways"}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BITNET_SPLIT=sideways not understood" in out.stderr
