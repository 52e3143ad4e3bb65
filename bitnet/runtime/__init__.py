"""Stage 3, the runtime: launching the engine's programs and talking to them.

The public API of this stage is what this module exports; lower stages (models) may use only these
names (see bitnet/ARCHITECTURE.md).
"""

from bitnet.runtime.diagnostics import RuntimeDiagnostics
from bitnet.runtime.runtime import BitNetRuntime, StrPath
from bitnet.runtime.supervisor import RuntimeResult, RuntimeSupervisor

__all__ = ["BitNetRuntime", "RuntimeDiagnostics", "RuntimeResult", "RuntimeSupervisor", "StrPath"]
