"""Error types raised by the library.

Library code raises; only the CLI turns an error into a one-line message and an exit code.
Every error carries an optional ``hint``: the next thing the user could try.
"""

from __future__ import annotations


class AdapterError(Exception):
    """Base class for every error adapterctl raises on purpose."""

    exit_code = 1
    code = "error"

    def __init__(self, message: str, *, hint: str | None = None, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidFile(AdapterError):
    """The input is not a well-formed safetensors file (truncated, bad header, bad offsets...)."""

    exit_code = 3
    code = "invalid_file"


class UnsafeFile(InvalidFile):
    """The input is a pickle or another format we refuse to deserialize."""

    code = "unsafe_file"


class InputNotFound(AdapterError):
    """A path that should be a readable file is missing, unreadable, or a directory."""

    exit_code = 2
    code = "input_error"


class UnknownArchitecture(AdapterError):
    code = "unknown_architecture"
    exit_code = 4


class LayoutError(AdapterError):
    """The tensors are readable but cannot be mapped onto an adapter (unknown keys, bad pairing)."""

    code = "layout_error"
    exit_code = 4


class UnsupportedConversion(AdapterError):
    """Converting would lose information (LyCORIS, DoRA into kohya, two roles on a module...)."""

    code = "unsupported_conversion"
    exit_code = 5


class OutputExists(AdapterError):
    code = "output_exists"
    exit_code = 6


class UsageError(AdapterError):
    code = "usage_error"
    exit_code = 2


class ValidationFailed(AdapterError):
    code = "validation_failed"
    exit_code = 1


class MissingExtra(AdapterError):
    """An optional dependency (torch, diffusers, Pillow) is not installed."""

    code = "missing_extra"
    exit_code = 2


class BaseModelNotFound(InputNotFound):
    """``--base`` names nothing that can be loaded here (not cached, Hub unreachable, bad folder)."""

    code = "base_not_found"


class TrainingInterrupted(AdapterError):
    """Training stopped on a signal after saving a checkpoint; the message says where."""

    code = "interrupted"
    exit_code = 130
