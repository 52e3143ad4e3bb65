"""Head types gguf-py cannot write (Q6_K): requantize the head of a converted file with llama-quantize.

The converter writes the file with an F16 head; our engine's `llama-quantize --allow-requantize
--token-embedding-type q6_k IN OUT <body type>` then rewrites only the head (and an untied
output.weight). Ternary bodies requantize exactly (TQ2_0/TQ1_0 with block scale 1 decode to {-1,0,1}
and encode back to the same bytes), and we check that: every tensor but the head must come out
byte-identical, or the result is refused. ref: tools/quantize/quantize.cpp of the pinned llama.cpp.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from bitnet.engine.contract import QUANTIZE_BINARY
from bitnet.errors import ConversionError
from bitnet.models._tempfiles import new_temp

# --head-type values done by llama-quantize -> its type name
ENGINE_HEAD_TYPES = {"q6_k": "q6_k"}
# our --outtype -> llama-quantize's file type for the body (kept as it is)
_BODY_FTYPE = {"tq2_0": "TQ2_0", "tq1_0": "TQ1_0", "f16": "F16", "f32": "F32"}
HEAD_TENSORS = ("token_embd.weight", "output.weight")


def requantize_head(
    src: Path, out: Path, *, head_type: str, outtype: str, build_dir: str | os.PathLike[str] = "build"
) -> None:
    """Write `out` = `src` with its head in `head_type`, atomically; every other tensor unchanged."""
    from bitnet.runtime import BitNetRuntime  # the runtime's public API: models sit below it

    binary = BitNetRuntime(build_dir=str(build_dir)).find_binary(QUANTIZE_BINARY)
    qtype = ENGINE_HEAD_TYPES[head_type]
    tmp = new_temp(out)
    try:
        argv = [
            str(binary), "--allow-requantize", "--token-embedding-type", qtype, "--output-tensor-type", qtype,
            str(src), str(tmp), _BODY_FTYPE[outtype],
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise ConversionError(
                f"llama-quantize could not make a {head_type} head (exit {proc.returncode}):\n"
                f"{proc.stderr.strip()[-1500:]}\nUse --head-type q8_0 or f16 instead."
            )
        changed = _changed_body_tensors(src, tmp)
        if changed:
            raise ConversionError(
                f"requantizing the head to {head_type} also changed {', '.join(changed[:5])}; refusing a "
                f"file whose ternary weights are not exact. Use --head-type q8_0 (written by us) instead."
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _changed_body_tensors(a: Path, b: Path) -> list[str]:
    from gguf import GGUFReader

    ra, rb = GGUFReader(str(a), "r"), GGUFReader(str(b), "r")
    tb = {t.name: t for t in rb.tensors}
    changed = []
    for t in ra.tensors:
        if t.name in HEAD_TENSORS:
            continue
        other = tb.get(t.name)
        if (
            other is None
            or other.tensor_type != t.tensor_type
            or not np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(other.data).view(np.uint8))
        ):
            changed.append(t.name)
    return changed
