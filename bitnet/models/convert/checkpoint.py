"""Lazy, validated reading of Hugging Face checkpoints: config.json and safetensors, tensor by tensor.

We parse safetensors ourselves instead of `safetensors.safe_open(framework="numpy")` because numpy has
no bfloat16 (safe_open raises on every BF16 tensor, the dtype of most BitNet checkpoints) and because
we want truncation and header damage reported as typed errors before any output is written.

Format (ref: https://github.com/huggingface/safetensors, "Format"): 8-byte little-endian u64 N, then N
bytes of JSON mapping tensor name -> {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
to byte 8 + N; row-major, little-endian) plus an optional "__metadata__" entry. Files are memory-mapped:
reading a tensor touches only its own bytes, and BF16 is widened to float32 one tensor (or one slice of
rows) at a time.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet.errors import CheckpointDtypeError, CorruptCheckpointError, MissingCheckpointFileError

__all__ = ["Checkpoint", "TensorInfo", "load_config"]

# safetensors dtype -> numpy dtype as stored (BF16 is read as raw uint16 and widened)
_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit on the JSON header


def load_config(model_dir: Path) -> dict[str, Any]:
    """Read `model_dir/config.json` (MissingCheckpointFileError/CorruptCheckpointError if absent/bad)."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise MissingCheckpointFileError(
            f"{model_dir} has no config.json: pass the directory of a Hugging Face checkpoint "
            "(the one holding config.json and *.safetensors)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(f"{path} is not valid JSON ({exc}): re-download the checkpoint") from exc
    if not isinstance(config, dict):
        raise CorruptCheckpointError(f"{path} must hold a JSON object: re-download the checkpoint")
    return config


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, as declared by its file's header."""

    name: str
    dtype: str  # safetensors dtype string, e.g. "BF16", "U8"
    shape: tuple[int, ...]
    file: Path
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))


class _File:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.tensors: dict[str, TensorInfo] = {}
        self._mm: mmap.mmap | None = None
        self._parse_header()

    def _corrupt(self, what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{self.path}: {what}. The file is truncated or damaged: delete it and download it again."
        )

    def _parse_header(self) -> None:
        with self.path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise self._corrupt(
                    f"only {len(head)} bytes, shorter than the 8-byte safetensors header length"
                )
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, self.size - 8):
                raise self._corrupt(f"header length {n} exceeds the file size {self.size}")
            raw = fh.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._corrupt(f"header is not valid JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise self._corrupt("header is not a JSON object")
        base = 8 + n
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = str(entry["dtype"])
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as exc:
                raise self._corrupt(f"malformed header entry for tensor {name!r}") from exc
            info = TensorInfo(name, dtype, shape, self.path, base + begin, base + end)
            if dtype in _DTYPES and info.end - info.begin != info.numel * _DTYPES[dtype].itemsize:
                raise self._corrupt(f"tensor {name!r} declares {end - begin} bytes for {dtype}{list(shape)}")
            if not 0 <= begin <= end or info.end > self.size:
                raise self._corrupt(
                    f"tensor {name!r} ends at byte {info.end} but the file has only {self.size} bytes"
                )
            self.tensors[name] = info

    def buffer(self) -> mmap.mmap:
        if self._mm is None:
            with self.path.open("rb") as fh:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None


class Checkpoint:
    """All safetensors files of a checkpoint directory, indexed by tensor name, read lazily."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        files = self._find_files(model_dir)
        self._files = [_File(f) for f in files]
        self._index: dict[str, _File] = {}
        for f in self._files:
            for name in f.tensors:
                if name in self._index:
                    raise CorruptCheckpointError(
                        f"tensor {name!r} appears in both {self._index[name].path.name} and {f.path.name}: "
                        "remove the stale file from the checkpoint directory"
                    )
                self._index[name] = f
        self._check_index(model_dir)

    @staticmethod
    def _find_files(model_dir: Path) -> list[Path]:
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(weight_map.values()))
            except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
                raise CorruptCheckpointError(
                    f"{index} is malformed ({exc}): re-download the checkpoint"
                ) from exc
            missing = [n for n in names if not (model_dir / n).is_file()]
            if missing:
                raise MissingCheckpointFileError(
                    f"{model_dir} lacks {', '.join(missing)} listed in {index.name}: finish the download"
                )
            return [model_dir / n for n in names]
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            hint = (
                " (found PyTorch *.bin files: re-save them as safetensors)"
                if any(model_dir.glob("*.bin"))
                else ""
            )
            raise MissingCheckpointFileError(f"{model_dir} has no *.safetensors files{hint}")
        return files

    def _check_index(self, model_dir: Path) -> None:
        index = model_dir / "model.safetensors.index.json"
        if not index.is_file():
            return
        weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        absent = [n for n, fname in weight_map.items() if n not in self._index]
        if absent:
            raise CorruptCheckpointError(
                f"{len(absent)} tensors listed in {index.name} are missing from their files "
                f"(e.g. {absent[0]!r}): the shards are incomplete or from another revision; "
                "re-download the checkpoint"
            )

    def names(self) -> list[str]:
        """All tensor names."""
        return list(self._index)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def info(self, name: str) -> TensorInfo:
        """Header facts of tensor `name` (CorruptCheckpointError if the checkpoint lacks it)."""
        try:
            return self._index[name].tensors[name]
        except KeyError:
            raise CorruptCheckpointError(
                f"checkpoint {self.model_dir} has no tensor {name!r}: it is incomplete or not the "
                "architecture its config.json names; re-download it"
            ) from None

    def read(self, name: str, rows: tuple[int, int] | None = None) -> npt.NDArray[Any]:
        """Read a tensor (or rows [start, stop) of its first axis) as a numpy array.

        Floating types come back as float32 (BF16 widened exactly, F16 exactly) except F64; integer types
        keep their dtype. The result is a fresh array, independent of the memory map.
        """
        info = self.info(name)
        if info.dtype not in _DTYPES:
            raise CheckpointDtypeError(
                f"tensor {name!r} in {info.file.name} has dtype {info.dtype}, which the converter "
                "cannot read "
                "(supported: " + ", ".join(_DTYPES) + ")"
            )
        dt = _DTYPES[info.dtype]
        shape = info.shape
        begin = info.begin
        if rows is not None:
            row_elems = int(np.prod(shape[1:], dtype=np.int64))
            start, stop = rows
            begin += start * row_elems * dt.itemsize
            shape = (stop - start, *shape[1:])
        count = int(np.prod(shape, dtype=np.int64))
        buf = self._index[name].buffer()
        arr = np.frombuffer(buf, dtype=dt, count=count, offset=begin).reshape(shape)
        if info.dtype == "BF16":
            # bf16 is the top half of an f32: shift into place (exact)
            return (arr.astype(np.uint32) << 16).view(np.float32)
        if info.dtype == "F16":
            return arr.astype(np.float32)
        return arr.copy()

    def close(self) -> None:
        """Release the memory maps."""
        for f in self._files:
            f.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
