"""A directory of adapters as one library: list it, lock it, verify it against its lock.

    from adapterctl.library import list_library, lock_library, verify_lock
    listing = list_library("adapters")                 # header only, in path order
    lock_library("adapters")                           # -> adapters/adapters.lock
    report = verify_lock("adapters/adapters.lock")     # report.ok, report.differences

Stdlib and adapterctl only (no torch, no huggingface_hub). Names are imported on first use, so
``import adapterctl.library.scan`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "list_library": "listing", "lock_library": "listing", "Listing": "listing", "LockResult": "listing",
    "verify_lock": "verify", "VerifyReport": "verify", "Difference": "verify",
    "read_lock": "lockfile", "LockFile": "lockfile", "LockEntry": "lockfile", "LOCK_FORMAT": "lockfile",
    "LOCK_NAME": "lockfile", "Row": "read", "read_rows": "read", "sha256_file": "read", "scan": "scan",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
