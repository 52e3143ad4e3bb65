"""Health report of a BitNet runtime: which llama.cpp binaries exist, the model, CPU, engine build.

`BitNetRuntime.diagnostics()` fills `RuntimeDiagnostics`; the CLIs print it as JSON with --diagnostics.
The binary and environment-variable names the toolkit relies on are declared here once.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from bitnet.engine.contract import (
    ACT_QUANT_ENV,
    BENCH_BINARY,
    BIN_DIR_ENV,
    CHAT_BINARY,
    GGUF_MAGIC,
    INFERENCE_BINARY,
    KERNELS_ENV,
    PERPLEXITY_BINARY,
    QUANTIZE_BINARY,
    SERVER_BINARY,
    VARIANT_REPORT_ENV,
    parse_engine_report,
)

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

DIAGNOSTIC_BINARIES = (
    INFERENCE_BINARY,
    CHAT_BINARY,
    SERVER_BINARY,
    BENCH_BINARY,
    QUANTIZE_BINARY,
    PERPLEXITY_BINARY,
)
VERSION_TIMEOUT_SECONDS = 10.0


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
    or "off"), "kernels_isa" and "gemm_amx" come from the engine's own `bitnet: ternary kernels ...` line
    in the same probe; an engine that prints none (built without our kernels, or a stand-in) falls back to the
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
        "gemm_amx": None,  # True when the kernels run prompts in AMX-INT8 tiles (Sapphire Rapids and later)
        "error": None,
    }
    version_text, version_error = _probe([binary, "--version"], env, limit)
    devices_text, devices_error = _probe([binary, "--list-devices"], {**env, VARIANT_REPORT_ENV: "1"}, limit)
    info["error"] = version_error or devices_error
    for line in (version_text + "\n" + devices_text).splitlines():
        line = line.strip()
        if line.startswith("version:") and info["version"] is None:
            info["version"] = line.removeprefix("version:").strip()
        elif line.startswith("built with") and info["built_with"] is None:
            info["built_with"] = line.removeprefix("built with").strip()
        report = parse_engine_report(line)
        if report.cpu_variant and info["cpu_variant"] is None:
            info["cpu_variant"] = report.cpu_variant
        if report.kernels is not None:  # what the engine says beats what the environment suggests
            info["kernels"] = "ours" if report.kernels else "off"
            info["kernels_isa"] = report.kernels_isa
            info["gemm_amx"] = report.gemm_amx
    return info


def activation_quant_mode(model: str | os.PathLike[str], env: Mapping[str, str]) -> dict[str, object]:
    """How the engine will quantize the input of the model's ternary matmuls, decided as patch 0006
    decides it: ``$BITNET_ACT_QUANT`` if set, else the file's ``<arch>.activation_quant`` key, else
    per_block. "mode" is what runs ("per_block" whenever our kernels are off: stock ggml has no
    per-token path), "requested" what the file or variable asks for, "source" where that came from.
    Never raises: an unreadable file gives mode None and the reason in "source"."""
    from bitnet.models.formats.reader import read_gguf_header

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
