"""A library as rows, and its lock: what ``ls`` shows and ``lock`` writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from adapterctl.errors import InputNotFound, UsageError
from adapterctl.library.lockfile import LOCK_NAME, render_lock, write_lock
from adapterctl.library.origins import SIDECAR, load_origins
from adapterctl.library.read import Row, read_rows
from adapterctl.library.scan import SUFFIX, Candidate, check_root, scan
from adapterctl.textsafe import display_path


@dataclass
class Listing:
    root: Path
    rows: list[Row]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (relative dir + '/', reason)
    warnings: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list, repr=False)


def list_library(root: str | os.PathLike, *, sha256: bool = False, jobs: Optional[int] = None,
                 mode: Optional[str] = None) -> Listing:
    """Every adapter under ``root``, header only, in path order. With ``sha256``, each row also
    carries the content digest, the manifest digest and its origin (from a pull sidecar whose
    sha256 for the file still matches; origins cannot be believed without hashing)."""
    found = scan(root, sidecar_name=SIDECAR)
    rows = read_rows(found.candidates, sha256=sha256, jobs=jobs, mode=mode)
    listing = Listing(root=found.root, rows=rows, problems=found.problems, candidates=found.candidates)
    if sha256:
        origins = load_origins(found.root, found.sidecars)
        listing.warnings.extend(origins.warnings)
        for row in rows:
            row.origin = origins.origin_of(row.rel, row.sha256)
    return listing


@dataclass
class LockResult:
    path: Path
    rows: list[Row]
    changed: bool  # False: the same lock was already there (not rewritten)
    warnings: list[str]


def default_lock_path(root: Path) -> Path:
    return root / LOCK_NAME


def lock_library(root: str | os.PathLike, *, output: Optional[Path] = None, force: bool = False,
                 jobs: Optional[int] = None) -> LockResult:
    """Hash and describe every adapter under ``root`` and write the lock (default root/adapters.lock).

    The lock must sit in ``root`` itself: its paths are relative to its own directory, and
    ``verify`` takes that directory as the library. An incomplete view (a directory that cannot
    be listed) is refused rather than locked."""
    root = Path(root)
    check_root(root)
    path = Path(output) if output is not None else default_lock_path(root)
    _check_lock_path(path, root)
    listing = list_library(root, sha256=True, jobs=jobs)
    if listing.problems:
        where, why = listing.problems[0]
        raise InputNotFound(f"{why}; a lock would be incomplete", path=str(root / where),
                            hint="fix the permissions, or move it out of the library")
    unread = next((r for r in listing.rows if r.sha256 is None), None)
    if unread is not None:  # no digest, nothing to lock: an unreadable file, a dangling or looping link
        raise InputNotFound(f"{unread.reason}; a lock would be incomplete", path=str(root / unread.rel),
                            hint="fix or remove it, or move it out of the library")
    text = render_lock(listing.rows)
    inputs = tuple(c.path for c in listing.candidates)
    changed = write_lock(path, text, force=force, inputs=inputs)
    return LockResult(path=path, rows=listing.rows, changed=changed, warnings=listing.warnings)


def _check_lock_path(path: Path, root: Path) -> None:
    if path.name.lower().endswith(SUFFIX):
        raise UsageError(f"a lock named '*{SUFFIX}' would be listed as an adapter of the library",
                         path=str(path), hint=f"name it {LOCK_NAME}")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        same = os.path.samefile(parent, root)
    except OSError:
        same = False
    if not same:
        raise UsageError(f"the lock must be in the library directory {display_path(root)} (its paths are relative "
                         "to its own directory)", path=str(path), hint=f"use -o {display_path(root / path.name)}")
