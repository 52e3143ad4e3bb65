"""Write the kernels' variant table from kernels/engine.toml as CMake code (run by CMakeLists.txt).

    python3 bitnet_variants.py <engine.toml> <out.cmake>

engine.toml's [[variant]] and [[kernel_variant]] entries are THE list of ISA variants; this turns them into
    BITNET_VARIANTS_<arch>   the variant names of an architecture (scalar reference first)
    BITNET_FLAGS_<name>      the variant's compiler flags (`cflags`)
    BITNET_ISA_<name>        the kernels' ISA with those flags (`kernel_isa`: bitnet_isa(), tuning.json key)
    BITNET_KERNEL_SOURCES    the C sources ([kernels] sources)
The file is rewritten only when its content changes. Standard library only (tomllib, Python >= 3.11;
tomli on 3.10).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def cmake_code(data: dict) -> str:
    lines = ["# Generated from kernels/engine.toml by cmake/bitnet_variants.py. Do not edit: edit the TOML."]
    entries = [v for v in data.get("kernel_variant", []) if v["name"] == "scalar"]
    entries += data.get("variant", []) + [v for v in data.get("kernel_variant", []) if v["name"] != "scalar"]
    by_arch: dict[str, list[str]] = {}
    for v in entries:
        name, arch = v["name"], v["arch"]
        by_arch.setdefault(arch, []).append(name)
        flags = " ".join(v.get("cflags", []))
        lines.append(
            f"set(BITNET_FLAGS_{arch}_{name} {flags})" if flags else f'set(BITNET_FLAGS_{arch}_{name} "")'
        )
        lines.append(f"set(BITNET_ISA_{arch}_{name} {v['kernel_isa']})")
    for arch, names in by_arch.items():
        lines.append(f"set(BITNET_VARIANTS_{arch} {' '.join(names)})")
    lines.append(f"set(BITNET_KERNEL_SOURCES {' '.join(data['kernels']['sources'])})")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    toml_path, out_path = Path(argv[1]), Path(argv[2])
    text = cmake_code(tomllib.loads(toml_path.read_text()))
    if not out_path.is_file() or out_path.read_text() != text:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
