"""`invoke doctor`: what this machine and engine build can do, as a dict (``--json``) or as text.

report, diagnostics = doctor_report("build", model=None)
print(format_doctor(report))
ok = diagnostics.usable  # False: diagnostics.problems says why
"""

from __future__ import annotations

import os
from typing import Any

from bitnet.engine.build import read_build_info
from bitnet.runtime import BitNetRuntime, RuntimeDiagnostics

__all__ = ["doctor_report", "format_doctor"]


def doctor_report(
    build_dir: str | os.PathLike[str] = "build", model: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], RuntimeDiagnostics]:
    """The runtime's diagnostics of `build_dir` (and `model`, if given) plus what `invoke build` recorded.

    Returns the report (JSON-serialisable with ``default=str``) and the diagnostics it came from.
    """
    diag = BitNetRuntime(build_dir=os.fspath(build_dir)).diagnostics(
        model=None if model is None else str(model)
    )
    report = diag.as_dict()
    report["build_info"] = read_build_info(os.fspath(build_dir))
    return report, diag


def format_doctor(report: dict[str, Any]) -> str:
    """The report as the text `invoke doctor` prints: CPU, build, binaries, engine, kernels, model."""
    cpu = report["cpu"]
    engine = report.get("engine") or {}
    lines = [
        f"CPU:      {cpu['model']} ({cpu['arch']}, {report['cpu_count']} logical cores)",
        f"features: {' '.join(cpu['features']) or '-'}",
        f"build:    {report['build_dir']} variants={report['build_info'].get('variants', '-')}",
    ]
    lines += [f"  {name:18s} {path or 'missing'}" for name, path in report["binaries"].items()]
    lines.append(f"engine:   {engine.get('version', '-')}")
    lines.append(f"variant:  {engine.get('cpu_variant') or '-'} (active for this CPU)")
    isa = engine.get("kernels_isa")
    amx = ", prompts in AMX-INT8 tiles; BITNET_AMX=0 turns them off" if engine.get("gemm_amx") else ""
    lines.append(f"kernels:  {engine.get('kernels', '-')}" + (f" ({isa}{amx})" if isa else ""))
    if report.get("model"):
        lines.append(f"model:    {report['model']} gguf={report['model_is_gguf']}")
        act = report.get("activation_quant")
        if act:
            lines.append(f"numerics: activations {act['mode']} ({act['source']})")
    return "\n".join(lines)
