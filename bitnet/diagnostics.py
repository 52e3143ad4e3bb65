"""Health report of a BitNet runtime: which llama.cpp binaries exist, the model, CPU, engine build.

`BitNetRuntime.diagnostics()` fills `RuntimeDiagnostics`; the CLIs print it as JSON with --diagnostics.
The binary and environment-variable names the toolkit relies on are declared here once.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "BIN_DIR_ENV",
    "DIAGNOSTIC_BINARIES",
    "GGUF_MAGIC",
    "INFERENCE_BINARY",
    "KERNELS_ENV",
    "SERVER_BINARY",
    "RuntimeDiagnostics",
    "is_gguf_file",
    "probe_engine",
]

INFERENCE_BINARY = "llama-completion"  # llama.cpp's one-shot text tool; llama-cli is a chat front end
SERVER_BINARY = "llama-server"
DIAGNOSTIC_BINARIES = (
    INFERENCE_BINARY,
    "llama-cli",
    SERVER_BINARY,
    "llama-bench",
    "llama-quantize",
    "llama-perplexity",
)
BIN_DIR_ENV = "BITNET_BIN_DIR"  # extra directory searched for the binaries after <build_dir>/bin
KERNELS_ENV = "BITNET_KERNELS"  # "0" turns our BitNet kernels off in the engine
VERSION_TIMEOUT_SECONDS = 10.0
GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file

# The CPU library ggml chose, as our engine patch reports it (`ggml: CPU variant libggml-cpu-avx2.so`,
# with GGML_CPU_VARIANT_REPORT=1) or upstream logs it (`load_backend: loaded CPU backend from
# /path/libggml-cpu-avx2.so`) -> "avx2". ref: kernels/patches/0002-cpu-variants-chosen-list-and-forcing.patch
_CPU_VARIANT_RE = re.compile(
    r"(?:CPU variant|loaded CPU backend from) \S*?ggml-cpu-([A-Za-z0-9_]+)\.(?:so|dll|dylib)\b"
)
_VARIANT_REPORT_ENV = "GGML_CPU_VARIANT_REPORT"
# Our kernels, as the engine reports them when its CPU backend registers (same switch):
# `bitnet: ternary kernels on (avx512vnni)` / `... off (BITNET_KERNELS=0) (avx2)`. ref: patch 0004.
_KERNELS_RE = re.compile(r"bitnet: ternary kernels (on|off)\b[^\n]*\(([^()\n]*)\)")


@dataclass(frozen=True)
class RuntimeDiagnostics:
    """What `BitNetRuntime.diagnostics()` found: binaries, model, CPU and engine build.

    `binaries` maps each llama.cpp tool name to its resolved path, or None when it was not found.
    `engine` is None when llama-completion is missing; otherwise it holds "version" and "built_with"
    (the text after "version:" / "built with" in `llama-completion --version`), "cpu_variant" (the
    ggml CPU library the engine loaded, e.g. "avx2", or None), "kernels" ("ours" or "off", from
    $BITNET_KERNELS), "binary" and "error" (None when the version probe worked).
    """

    build_dir: str
    bin_dir_override: str | None
    binaries: Mapping[str, str | None]
    model: str | None
    model_present: bool
    model_is_gguf: bool
    cpu_count: int
    cpu: Mapping[str, object]
    engine: Mapping[str, object] | None
    activation_quant: Mapping[str, object] | None = None  # activation_quant_mode() of the model, if any

    def is_usable(self, binary: str = INFERENCE_BINARY) -> bool:
        """True when `binary` was found and, if a model was given, the model is a GGUF file."""
        if self.binaries.get(binary) is None:
            return False
        return self.model is None or self.model_is_gguf

    @property
    def usable(self) -> bool:
        """True when inference can run: llama-completion found and the model (if given) is a GGUF."""
        return self.is_usable(INFERENCE_BINARY)

    @property
    def problems(self) -> list[str]:
        """Human sentences, one per problem found, each saying how to fix it. Empty when all is well."""
        problems = []
        build = f"invoke build --build-dir {shlex.quote(self.build_dir)}"
        for name in (INFERENCE_BINARY, SERVER_BINARY):
            if self.binaries.get(name) is None:
                problems.append(
                    f"{name} was not found in {self.build_dir}/bin (or ${BIN_DIR_ENV}): "
                    f"build the engine with `{build}`, or set {BIN_DIR_ENV} to the directory holding it."
                )
        if self.model is not None and not self.model_present:
            problems.append(
                f"the model {self.model} does not exist or is not a file: pass the path of a .gguf file "
                "(`invoke download` and `invoke convert` make one)."
            )
        elif self.model is not None and not self.model_is_gguf:
            problems.append(
                f"the model {self.model} is not a GGUF file (it does not start with b'GGUF'): "
                "convert the checkpoint with `invoke convert` and pass the .gguf it writes."
            )
        if self.engine is not None and self.engine.get("error"):
            problems.append(f"{self.engine['error']}; rebuild the engine with `{build}`.")
        return problems

    def as_dict(self) -> dict[str, object]:
        """A JSON-serialisable dict of every field plus "usable" and "problems"."""
        return {
            "build_dir": self.build_dir,
            "bin_dir_override": self.bin_dir_override,
            "binaries": dict(self.binaries),
            "model": self.model,
            "model_present": self.model_present,
            "model_is_gguf": self.model_is_gguf,
            "cpu_count": self.cpu_count,
            "cpu": dict(self.cpu),
            "engine": None if self.engine is None else dict(self.engine),
            "activation_quant": None if self.activation_quant is None else dict(self.activation_quant),
            "usable": self.usable,
            "problems": self.problems,
        }


def probe_engine(binary: str, env: Mapping[str, str], timeout: float | None = None) -> dict[str, object]:
    """Ask `binary` (llama-completion) about the engine build, running it in `env`.

    ``<binary> --version`` gives "version" and "built_with" (the text after ``version:`` and
    ``built with``); ``<binary> --list-devices`` with ``GGML_CPU_VARIANT_REPORT=1`` makes ggml load its
    CPU backend and name the library it chose, giving "cpu_variant" (``libggml-cpu-avx2.so`` -> "avx2";
    upstream's ``load_backend: loaded CPU backend from ...`` line is understood too). "kernels" ("ours"
    or "off") and "kernels_isa" come from the engine's own `bitnet: ternary kernels ...` line in the same
    probe; an engine that prints none (built without our kernels, or a stand-in) falls back to the
    environment: "off" when ``BITNET_KERNELS=0``, else "ours". Never raises: a probe that cannot start,
    fails or hangs (past `timeout`, default 10 s) is described in "error".
    """
    limit = VERSION_TIMEOUT_SECONDS if timeout is None else timeout
    info: dict[str, object] = {
        "binary": binary,
        "version": None,
        "built_with": None,
        "cpu_variant": None,
        "kernels": "off" if env.get(KERNELS_ENV) == "0" else "ours",
        "kernels_isa": None,  # e.g. "avx512vnni", when the engine reports its kernels
        "error": None,
    }
    version_text, version_error = _probe([binary, "--version"], env, limit)
    devices_text, devices_error = _probe([binary, "--list-devices"], {**env, _VARIANT_REPORT_ENV: "1"}, limit)
    info["error"] = version_error or devices_error
    for line in (version_text + "\n" + devices_text).splitlines():
        line = line.strip()
        if line.startswith("version:") and info["version"] is None:
            info["version"] = line.removeprefix("version:").strip()
        elif line.startswith("built with") and info["built_with"] is None:
            info["built_with"] = line.removeprefix("built with").strip()
        match = _CPU_VARIANT_RE.search(line)
        if match and info["cpu_variant"] is None:
            info["cpu_variant"] = match.group(1)
        kernels = _KERNELS_RE.search(line)
        if kernels:  # what the engine says beats what the environment suggests
            info["kernels"] = "ours" if kernels.group(1) == "on" else "off"
            info["kernels_isa"] = kernels.group(2)
    return info


ACT_QUANT_ENV = "BITNET_ACT_QUANT"  # per_token | per_block: overrides the file's key (patch 0006)


def activation_quant_mode(model: str | os.PathLike[str], env: Mapping[str, str]) -> dict[str, object]:
    """How the engine will quantize the input of the model's ternary matmuls, decided as patch 0006
    decides it: ``$BITNET_ACT_QUANT`` if set, else the file's ``<arch>.activation_quant`` key, else
    per_block. "mode" is what runs ("per_block" whenever our kernels are off: stock ggml has no
    per-token path), "requested" what the file or variable asks for, "source" where that came from.
    Never raises: an unreadable file gives mode None and the reason in "source"."""
    from bitnet.convert.i2s import read_gguf_header

    try:
        metadata, _ = read_gguf_header(model)
    except Exception as exc:  # noqa: BLE001 - a report, not a validator
        return {"mode": None, "requested": None, "source": f"unreadable GGUF ({exc})"}
    arch_value = metadata.get("general.architecture")
    arch = str(arch_value.value) if arch_value is not None else "?"
    key = f"{arch}.activation_quant"
    requested, source = None, f"no {key} key"
    if key in metadata:
        requested, source = str(metadata[key].value), f"GGUF key {key}"
    if env.get(ACT_QUANT_ENV):
        requested, source = env[ACT_QUANT_ENV], ACT_QUANT_ENV
    stock = env.get(KERNELS_ENV) == "0"
    mode = "per_block" if stock or requested is None else requested
    if stock and requested == "per_token":
        source += "; stock kernels (BITNET_KERNELS=0) run per_block"
    return {"mode": mode, "requested": requested or "per_block", "source": source}


def _probe(argv: list[str], env: Mapping[str, str], limit: float) -> tuple[str, str | None]:
    """Run `argv`, return (stdout + stderr, None) or (what it printed, why it failed)."""
    what = f"`{shlex.join(argv)}`"
    try:
        proc = subprocess.run(
            argv, env=dict(env), stdin=subprocess.DEVNULL, capture_output=True, timeout=limit
        )
    except subprocess.TimeoutExpired:
        return "", f"{what} did not finish within {limit:g} s"
    except OSError as exc:
        return "", f"{what} could not start ({exc.strerror or exc})"
    text = (proc.stdout + b"\n" + proc.stderr).decode("utf-8", errors="replace")
    if proc.returncode != 0:
        return text, f"{what} exited with status {proc.returncode}"
    return text, None


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """True when `path` is a readable file starting with the GGUF magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False
