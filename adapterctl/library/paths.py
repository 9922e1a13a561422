"""Relative library paths as locks and sidecars spell them, checked before anything trusts them.

A lock or an origins sidecar is untrusted input: a path in one could point anywhere (``..``,
an absolute path, a hidden ``.git/config``). Only paths that a scan of the library itself could
produce are accepted, so a path from a lock never names anything outside its root.
"""

from __future__ import annotations

from typing import Optional

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux


def path_problem(rel: object) -> Optional[str]:
    """Why ``rel`` is not a library path ('a/b.safetensors': relative, '/' separators, no '.', '..',
    hidden or empty segment, no backslash or NUL), or None when it is one."""
    if not isinstance(rel, str) or not rel:
        return "is not a non-empty string"
    if len(rel) > MAX_PATH_CHARS:
        return f"is longer than {MAX_PATH_CHARS} characters"
    if "\0" in rel or "\\" in rel:
        return "holds a NUL or backslash"
    if rel.startswith("/"):
        return "is absolute"
    for segment in rel.split("/"):
        if segment in ("", ".", ".."):
            return "has an empty, '.' or '..' segment"
        if segment.startswith("."):
            return "has a hidden segment"
    return None
