"""`invoke doctor`: what this machine and engine build can do, as a dict (``--json``) or as text.

report, diagnostics = doctor_report("build", model=None)
print(format_doctor(report))
ok = diagnostics.usable  # False: diagnostics.problems says why

With ``memory=True`` it also measures read bandwidth (bitnet.bench.roofline): fresh memory with one reader
per core and, for a model file well past the last-level cache, the file's cached pages as the engine maps
them, with the warning of `mapped_read_note` when they read clearly slower (a VM effect that sets decode).
"""

from __future__ import annotations

import os
from typing import Any

from bitnet.engine.build import read_build_info
from bitnet.runtime import BitNetRuntime, RuntimeDiagnostics

__all__ = ["doctor_report", "format_doctor"]


def doctor_report(
    build_dir: str | os.PathLike[str] = "build",
    model: str | os.PathLike[str] | None = None,
    *,
    memory: bool = False,
) -> tuple[dict[str, Any], RuntimeDiagnostics]:
    """The runtime's diagnostics of `build_dir` (and `model`, if given) plus what `invoke build` recorded.

    Returns the report (JSON-serialisable with ``default=str``) and the diagnostics it came from. With
    `memory`, ``report["memory"]`` holds the read-bandwidth probes (a few seconds).
    """
    diag = BitNetRuntime(build_dir=os.fspath(build_dir)).diagnostics(
        model=None if model is None else str(model)
    )
    report = diag.as_dict()
    report["build_info"] = read_build_info(os.fspath(build_dir))
    if memory:
        report["memory"] = memory_report(model, n_threads=diag.cpu_count or 1)
    return report, diag


def memory_report(model: str | os.PathLike[str] | None, *, n_threads: int) -> dict[str, Any]:
    """Fresh-memory read bandwidth and, for a big enough `model`, its mapped pages' (None where skipped)."""
    from bitnet.bench import roofline

    fresh = roofline.probe_bandwidth(n_threads)
    mapped = None if model is None else roofline.probe_model_pages(n_threads, model)
    return {
        "threads": n_threads,
        "fresh_gbs": fresh.gbs,
        "model_pages_gbs": None if mapped is None else mapped.gbs,
        "note": None if mapped is None else roofline.mapped_read_note(fresh, mapped),
    }


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
    mem = report.get("memory")
    if mem:
        line = f"memory:   {mem['fresh_gbs']:.1f} GB/s read, fresh memory, {mem['threads']} thread(s)"
        if mem.get("model_pages_gbs") is not None:
            share = 100 * mem["model_pages_gbs"] / mem["fresh_gbs"] if mem["fresh_gbs"] else 0.0
            line += f"; {mem['model_pages_gbs']:.1f} GB/s through the model's cached pages ({share:.0f} %)"
        lines.append(line)
        if mem.get("note"):
            lines.append(f"warning:  {mem['note']}")
    return "\n".join(lines)
