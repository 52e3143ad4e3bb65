"""Typed errors of the checkpoint → GGUF converter and the synthetic-model generator.

All subclass `ConversionError` (a `ValueError` and a `bitnet.errors.BitNetError`), so callers can catch
one class; each message says what was wrong and how to fix it. Whenever one of these is raised, no
partial output file is left behind.
"""

from __future__ import annotations

from bitnet.errors import BitNetError

__all__ = [
    "CheckpointDtypeError",
    "ConversionError",
    "CorruptCheckpointError",
    "MissingCheckpointFileError",
    "MissingConfigKeyError",
    "OutputNotWritableError",
    "TokenizerError",
    "UnknownArchitectureError",
    "UnsupportedCheckpointError",
]


class ConversionError(BitNetError, ValueError):
    """Base class: the checkpoint or the requested output cannot be converted as asked."""


class MissingCheckpointFileError(ConversionError):
    """A file the conversion needs (config.json, *.safetensors, tokenizer) is not in the model directory."""


class MissingConfigKeyError(ConversionError):
    """config.json lacks a key the architecture needs."""

    def __init__(self, key: str, config_path: object, architecture: str) -> None:
        self.key = key
        super().__init__(
            f"{config_path}: missing key {key!r}, which {architecture} checkpoints need. The config.json is "
            "incomplete or for another model: re-download the checkpoint, or add the key with the value from "
            "the model's card."
        )


class UnknownArchitectureError(ConversionError):
    """config.json names an architecture no converter module is registered for."""


class UnsupportedCheckpointError(ConversionError):
    """A known architecture with a feature our GGUF layout or engine cannot represent exactly."""


class CorruptCheckpointError(ConversionError):
    """A safetensors file is truncated, has a malformed header, or is missing tensors."""


class CheckpointDtypeError(ConversionError):
    """A tensor has a dtype the converter cannot use for its role (e.g. packed weights that are not uint8)."""


class TokenizerError(ConversionError):
    """The tokenizer files are missing, malformed, or of a kind the converter cannot map to GGUF."""


class OutputNotWritableError(ConversionError):
    """The output file cannot be written: missing or read-only directory, disk full, I/O error."""
