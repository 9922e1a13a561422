"""Checking a library against its lock: what was added, removed, modified, or no longer opens.

The library is the lock's own directory. Nothing named in the lock is ever opened: the directory
is scanned as ``lock`` scans it and the two lists are compared by path, so a path in a hostile
lock cannot lead outside the root (and such paths are refused when the lock is read anyway).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from adapterctl.library.listing import list_library
from adapterctl.library.lockfile import LockEntry, read_lock
from adapterctl.library.read import Row

# Order of the kinds for one path, as the report lists them.
KINDS = ("removed", "added", "modified", "manifest", "origin", "invalid", "unreadable")


@dataclass
class Difference:
    kind: str  # one of KINDS
    path: str
    locked: Any = None
    now: Any = None
    reason: Optional[str] = None


@dataclass
class VerifyReport:
    lock: Path
    root: Path
    locked: int  # entries in the lock
    found: int  # adapters in the directory now
    differences: list[Difference] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def verify_lock(lock_path: str | os.PathLike, *, jobs: Optional[int] = None) -> VerifyReport:
    lock_path = Path(lock_path)
    lock = read_lock(lock_path)
    root = lock_path.parent if str(lock_path.parent) else Path(".")
    listing = list_library(root, sha256=True, jobs=jobs)
    locked = lock.by_path()
    now = {r.rel: r for r in listing.rows}
    out = VerifyReport(lock=lock_path, root=root, locked=len(locked), found=len(now), warnings=listing.warnings)
    diffs = out.differences
    diffs += [Difference("removed", p, locked=_content(locked[p])) for p in locked.keys() - now.keys()]
    diffs += [Difference("added", p, now=_content(now[p])) for p in now.keys() - locked.keys()]
    for p in locked.keys() & now.keys():
        diffs += _compare(locked[p], now[p])
    diffs += [Difference("invalid", r.rel, reason=r.reason) for r in listing.rows if r.status != "ok"]
    diffs += [Difference("unreadable", where, reason=why) for where, why in listing.problems]
    diffs.sort(key=lambda d: (d.path, KINDS.index(d.kind)))
    return out


def _content(x: LockEntry | Row) -> dict:
    return {"sha256": x.sha256, "size": x.size}


def _compare(entry: LockEntry, row: Row) -> list[Difference]:
    if (entry.sha256, entry.size) != (row.sha256, row.size):
        return [Difference("modified", row.rel, locked=_content(entry), now=_content(row))]
    out = []
    # Same bytes, another reading: adapterctl itself changed how it reads the file.
    if entry.manifest_sha256 != row.manifest_sha256 and row.status == "ok":
        out.append(Difference("manifest", row.rel, locked=entry.manifest_sha256, now=row.manifest_sha256))
    # A sidecar that names these very bytes with another origin contradicts the lock; no sidecar
    # entry at all (a directory filled by sync, or by hand) says nothing either way.
    locked_origin = entry.origin.model_dump() if entry.origin is not None else None
    if row.origin is not None and row.origin != locked_origin:
        out.append(Difference("origin", row.rel, locked=locked_origin, now=row.origin))
    return out
