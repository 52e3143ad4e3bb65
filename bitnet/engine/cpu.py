"""Host CPU facts: architecture, model name, the SIMD features our engine variants care about.

Read from /proc/cpuinfo on Linux (the flags the kernel reports, i.e. what the OS has enabled), with a
platform-module fallback elsewhere. No third-party dependency.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

# Feature names as we report them -> the /proc/cpuinfo flag that proves it (x86 "flags", ARM "Features").
_X86_FLAGS = {
    "sse4_2": "sse4_2",
    "avx": "avx",
    "f16c": "f16c",
    "fma": "fma",
    "avx2": "avx2",
    "bmi2": "bmi2",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512_vbmi": "avx512vbmi",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx_vnni": "avx_vnni",
    "amx_int8": "amx_int8",
    "amx_tile": "amx_tile",
}
_ARM_FLAGS = {
    "neon": "asimd",
    "dotprod": "asimddp",
    "i8mm": "i8mm",
    "sve": "sve",
    "fp16": "fphp",
}


@dataclass(frozen=True)
class CpuInfo:
    """What the host CPU is and which of the SIMD features we use it has."""

    arch: str  # "x86_64", "aarch64", ...
    model: str
    logical_cores: int
    features: tuple[str, ...] = field(default_factory=tuple)

    def has(self, *names: str) -> bool:
        return all(name in self.features for name in names)

    def as_dict(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "model": self.model,
            "logical_cores": self.logical_cores,
            "features": list(self.features),
        }


def normalize_arch(machine: str) -> str:
    machine = machine.lower()
    if machine in ("amd64", "x86_64", "x64"):
        return "x86_64"
    if machine in ("arm64", "aarch64"):
        return "aarch64"
    return machine


def parse_cpuinfo(text: str, arch: str) -> tuple[str, tuple[str, ...]]:
    """Return (model name, our feature names) from the text of /proc/cpuinfo."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    table = _ARM_FLAGS if arch == "aarch64" else _X86_FLAGS
    features = tuple(name for name, flag in table.items() if flag in flags)
    return model, features


def detect_cpu(cpuinfo_path: str | os.PathLike[str] = "/proc/cpuinfo") -> CpuInfo:
    """Describe the host CPU. Never raises: unknown facts are left empty."""
    arch = normalize_arch(platform.machine())
    model: str = ""
    features: tuple[str, ...] = ()
    with contextlib.suppress(OSError):
        model, features = parse_cpuinfo(Path(cpuinfo_path).read_text(errors="replace"), arch)
    if not model:
        model = platform.processor() or arch
    return CpuInfo(arch=arch, model=model, logical_cores=os.cpu_count() or 1, features=features)
