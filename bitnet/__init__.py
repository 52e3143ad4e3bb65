"""BitNet b1.58 CPU toolkit: build the llama.cpp engine, convert checkpoints, run, serve and benchmark."""

from bitnet.errors import ModelFileError, RuntimeConfigurationError, RuntimeLaunchError, RuntimeTimeoutError
from bitnet.runtime import BitNetRuntime, RuntimeDiagnostics, RuntimeResult, RuntimeSupervisor

__version__ = "0.1.0"

__all__ = [
    "BitNetRuntime",
    "ModelFileError",
    "RuntimeConfigurationError",
    "RuntimeDiagnostics",
    "RuntimeLaunchError",
    "RuntimeResult",
    "RuntimeSupervisor",
    "RuntimeTimeoutError",
    "__version__",
]
