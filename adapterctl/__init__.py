"""adapterctl: typed LoRA adapter files for diffusion models.

The top level stays cheap to import: heavy modules load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["open", "Adapter", "AdapterError", "__version__"]


def open(path, *, arch: str | None = None):  # noqa: A001 - mirrors the builtin on purpose
    """Open an adapter file (or peft directory) lazily; only the header is read."""
    from adapterctl.adapter import Adapter

    return Adapter.open(path, arch=arch)


def __getattr__(name: str):
    if name == "Adapter":
        from adapterctl.adapter import Adapter

        return Adapter
    if name == "AdapterError":
        from adapterctl.errors import AdapterError

        return AdapterError
    raise AttributeError(name)
