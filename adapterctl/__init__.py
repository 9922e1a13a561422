"""adapterctl: typed LoRA adapter files for diffusion models.

The top level stays cheap to import: heavy modules load on first use.
"""

from __future__ import annotations

from adapterctl.version import __version__

__all__ = ["open", "merge", "merge_methods", "Adapter", "AdapterError", "__version__"]


def open(path, *, arch: str | None = None):  # noqa: A001 - mirrors the builtin on purpose
    """Open an adapter file (or peft directory) lazily; only the header is read."""
    from adapterctl.adapter import Adapter

    return Adapter.open(path, arch=arch)


def merge(adapters, method: str, **options):
    """Merge opened adapters into a derived one; ``save`` computes and writes it. See
    ``adapterctl.ops.merge.merge`` for the options and ``merge_methods()`` for the methods."""
    from adapterctl.ops.merge import merge as _merge

    return _merge(adapters, method, **options)


def merge_methods() -> dict[str, str]:
    """Registered merge methods: name -> one-line summary."""
    from adapterctl.ops.registry import METHODS

    return {m.name: m.summary for m in METHODS}


def __getattr__(name: str):
    if name == "Adapter":
        from adapterctl.adapter import Adapter

        return Adapter
    if name == "AdapterError":
        from adapterctl.errors import AdapterError

        return AdapterError
    raise AttributeError(name)
