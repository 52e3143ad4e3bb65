"""Streaming, atomic GGUF writing on top of `gguf.GGUFWriter`.

A GGUF file is header, metadata, tensor infos, then tensor data. The infos (name, shape, type, offset)
must all be known before the first data byte, but the data need not be: we declare every tensor from a
`TensorSpec` (shape and type only), write the header, then ask each spec for its bytes one at a time and
append them (`GGUFWriter.write_tensor_data`). Peak memory is one tensor, whatever the model size.

Atomic: everything goes to a temporary file in the output's directory (same filesystem, so the final
`os.replace` is atomic); the temporary file is removed on any exception, including KeyboardInterrupt
(and SIGTERM/SIGHUP under the CLIs), and by the next write of the same file if its writer was killed.
A file at `outfile` is therefore either absent, the previous version, or complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter

from bitnet.models._tempfiles import new_temp

logger = logging.getLogger(__name__)

__all__ = ["Metadata", "TensorSpec", "WriteResult", "check_output_writable", "tensor_nbytes", "write_gguf"]

# numpy dtype each GGML type's data is handed to the writer in (raw bytes for block-quantized types)
_PLAIN_DTYPES: dict[GGMLQuantizationType, np.dtype[Any]] = {
    GGMLQuantizationType.F32: np.dtype("<f4"),
    GGMLQuantizationType.F16: np.dtype("<f2"),
}


def tensor_nbytes(shape: Sequence[int], qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor of `shape` (numpy order, last axis = ggml ne0) stored as `qtype`."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    if shape[-1] % block:
        raise ValueError(f"{qtype.name} needs a row length that is a multiple of {block}, got {shape[-1]}")
    return n_rows * (shape[-1] // block) * type_size


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its declared layout and a callable that produces its data when needed.

    `shape` is in numpy order (outermost first; the last axis is ggml's ne0, the row length).
    `produce()` returns the tensor's data: an array of `shape` as float32/float16 for F32/F16, or the
    raw block bytes (uint8, any shape, `nbytes` in total) for block-quantized types.
    """

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    produce: Callable[[], npt.NDArray[Any]] = field(repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in the file, in bytes (without alignment padding)."""
        return tensor_nbytes(self.shape, self.qtype)


@dataclass
class Metadata:
    """GGUF key/values in insertion order, with their GGUF value types (inspectable before writing)."""

    entries: dict[str, tuple[Any, GGUFValueType, GGUFValueType | None]] = field(default_factory=dict)

    def _put(self, key: str, value: Any, vtype: GGUFValueType, sub: GGUFValueType | None = None) -> None:
        self.entries[key] = (value, vtype, sub)

    def string(self, key: str, value: str) -> None:
        """Add a UTF-8 string value."""
        self._put(key, value, GGUFValueType.STRING)

    def u32(self, key: str, value: int) -> None:
        """Add an unsigned 32-bit integer value."""
        self._put(key, int(value), GGUFValueType.UINT32)

    def i32(self, key: str, value: int) -> None:
        """Add a signed 32-bit integer value."""
        self._put(key, int(value), GGUFValueType.INT32)

    def f32(self, key: str, value: float) -> None:
        """Add a 32-bit float value."""
        self._put(key, float(value), GGUFValueType.FLOAT32)

    def boolean(self, key: str, value: bool) -> None:
        """Add a boolean value."""
        self._put(key, bool(value), GGUFValueType.BOOL)

    def array(self, key: str, values: Sequence[Any], sub: GGUFValueType) -> None:
        """Add an array whose elements all have GGUF type `sub`."""
        self._put(key, list(values), GGUFValueType.ARRAY, sub)

    def get(self, key: str) -> Any:
        """The value stored under `key` (KeyError if absent)."""
        return self.entries[key][0]

    def __contains__(self, key: object) -> bool:
        return key in self.entries


@dataclass(frozen=True)
class WriteResult:
    """What `write_gguf` wrote."""

    path: Path
    n_tensors: int
    nbytes: int  # size of the final file
    seconds: float


def _not_writable(message: str) -> Exception:
    # imported here: bitnet.models.convert imports this module, so a top-level import would be circular
    from bitnet.errors import OutputNotWritableError

    return OutputNotWritableError(message)


def check_output_writable(outfile: Path) -> None:
    """Raise OutputNotWritableError unless a file can be created next to `outfile` (probed, then removed)."""
    parent = outfile.parent if str(outfile.parent) else Path(".")
    if outfile.is_dir():
        raise _not_writable(
            f"output path {outfile} is a directory: pass a file name such as {outfile}/model.gguf"
        )
    if not parent.is_dir():
        raise _not_writable(
            f"output directory {parent} does not exist: create it (mkdir -p {parent}) "
            "or choose another --outfile"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{outfile.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise _not_writable(
            f"cannot create files in {parent} ({exc.strerror or exc}): choose a writable --outfile location "
            "or fix the directory's permissions"
        ) from exc
    os.close(fd)
    os.unlink(probe)


def _apply_metadata(writer: GGUFWriter, metadata: Metadata) -> None:
    for key, (value, vtype, sub) in metadata.entries.items():
        if key == "general.architecture":
            continue  # GGUFWriter adds it from `arch`
        writer.add_key_value(key, value, vtype, sub_type=sub)


def _checked_data(spec: TensorSpec) -> npt.NDArray[Any]:
    data = np.ascontiguousarray(spec.produce())
    plain = _PLAIN_DTYPES.get(spec.qtype)
    if plain is not None:
        if data.dtype != plain or tuple(data.shape) != spec.shape:
            raise RuntimeError(
                f"tensor {spec.name}: produced {data.dtype}{tuple(data.shape)}, declared {plain}{spec.shape}"
            )
    elif data.dtype != np.uint8 or data.nbytes != spec.nbytes:
        raise RuntimeError(
            f"tensor {spec.name}: produced {data.dtype} with {data.nbytes} bytes, "
            f"declared {spec.qtype.name} with {spec.nbytes} bytes"
        )
    return data


def write_gguf(
    outfile: str | os.PathLike[str],
    arch: str,
    metadata: Metadata,
    tensors: Sequence[TensorSpec],
    *,
    progress: bool = True,
) -> WriteResult:
    """Write a GGUF file atomically, producing tensor data one tensor at a time.

    Args:
        outfile: destination; replaced atomically when the file is complete.
        arch: `general.architecture` (e.g. "bitnet").
        metadata: key/values written after the architecture key, in insertion order.
        tensors: tensor specs in file order; each `produce()` is called once, in order.
        progress: show a tqdm bar over tensor bytes (only on a terminal).

    Raises:
        OutputNotWritableError: the directory is missing/read-only or the disk filled up; no file is left.
    """
    out = Path(outfile)
    check_output_writable(out)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in the write plan")

    start = time.perf_counter()
    # ".model.<pid>-x1y2.gguf.tmp": hidden, matched by the repo's "*.gguf.tmp" ignore rule, and removed
    # by a later write of `out` if this process dies without cleaning up (SIGKILL)
    tmp = new_temp(out)
    writer = GGUFWriter(tmp, arch)
    try:
        _apply_metadata(writer, metadata)
        for spec in tensors:
            if spec.qtype in _PLAIN_DTYPES:
                writer.add_tensor_info(spec.name, spec.shape, _PLAIN_DTYPES[spec.qtype], spec.nbytes)
            else:
                writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), spec.nbytes, spec.qtype)
        with _output_errors(out):
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
        bar = _progress_bar(out.name, sum(t.nbytes for t in tensors), progress)
        try:
            for spec in tensors:
                data = _checked_data(spec)  # errors reading the source propagate unchanged
                with _output_errors(out):
                    writer.write_tensor_data(data)
                del data  # release it before producing the next tensor: peak memory is one tensor
                if bar is not None:
                    bar.update(spec.nbytes)
        finally:
            if bar is not None:
                bar.close()
        with _output_errors(out):
            assert writer.fout is not None
            writer.fout[0].flush()
            os.fsync(writer.fout[0].fileno())
            # The page cache holds the file in the small pieces it was written in; dropped now (clean after
            # the fsync), the engine's first load reads it into huge pages (patch 0014): +4-6% decode
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(writer.fout[0].fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            writer.close()
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
            os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            writer.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return WriteResult(out, len(tensors), out.stat().st_size, time.perf_counter() - start)


@contextlib.contextmanager
def _output_errors(out: Path) -> Iterator[None]:
    """Turn an OSError while writing (disk full, file too large, I/O error) into a typed error."""
    try:
        yield
    except OSError as exc:
        raise _not_writable(
            f"writing {out} failed ({exc.strerror or exc}); no partial file was left. "
            "Free disk space or choose another --outfile location, then retry."
        ) from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _progress_bar(desc: str, total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: draw only on a terminal, so logs and CI output stay clean
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=None)
