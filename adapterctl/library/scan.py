"""Finding the adapters of a library directory, without opening any of them.

A library is every ``*.safetensors`` file under a directory, recursively, plus peft adapter
directories (``adapter_config.json`` beside ``adapter_model.safetensors``: one entry, named by the
directory). Hidden files and directories (a name starting with '.') are skipped: that is where
``.adapterctl-origins.json``, ``.cache``, ``.git`` and our own temporary files live.

Symbolic links: a link to a directory is never followed (so a link loop cannot hang the walk, and
nothing outside the root is listed through one); a link to a file is listed like the file it names
(a Hugging Face cache snapshot is made of such links). A peft directory's own
``adapter_model.safetensors`` belongs to its directory entry and is not listed again; the rest of
the directory is still walked.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from adapterctl.errors import InputNotFound
from adapterctl.layouts.peft_dir import CONFIG_NAME, WEIGHTS_NAME

SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Candidate:
    """One adapter of the library, found by name: ``rel`` uses '/' separators (as in a lock)."""

    rel: str
    path: Path  # root / rel, for opening
    kind: str  # "file" | "peft"


@dataclass
class Scan:
    root: Path
    candidates: list[Candidate] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (relative dir + '/', reason)
    sidecars: list[str] = field(default_factory=list)  # relative dirs ('' = root) holding an origins sidecar


def check_root(root: Path) -> None:
    """A library root must be an existing directory (a link to one is fine): else one line, exit 2."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise InputNotFound("no such directory", path=str(root)) from None
    except OSError as exc:
        raise InputNotFound(f"cannot use this directory: {exc.strerror}", path=str(root)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputNotFound("is not a directory; a library is a directory of adapters", path=str(root),
                            hint="for one file, use 'adapterctl inspect FILE'")


def scan(root: str | os.PathLike, *, sidecar_name: str | None = None) -> Scan:
    """Every adapter under ``root``, sorted by relative path (plain code-point order of the '/' path).

    A directory that cannot be listed is a problem, not an error: the caller decides (ls warns,
    lock refuses to write an incomplete lock, verify reports it)."""
    root = Path(root)
    check_root(root)
    result = Scan(root=root)
    # An explicit stack instead of os.walk: scandir entries carry the type bits, so a listing
    # costs one getdents per directory and no stat for ordinary files and directories.
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        here = root / rel_dir if rel_dir else root
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except OSError as exc:
            result.problems.append((rel_dir + "/", f"cannot list directory: {exc.strerror or exc}"))
            continue
        names = {e.name for e in entries}
        if sidecar_name is not None and sidecar_name in names:
            result.sidecars.append(rel_dir)
        peft = CONFIG_NAME in names and WEIGHTS_NAME in names
        if peft and rel_dir:
            result.candidates.append(Candidate(rel_dir, here, "peft"))
        elif peft:  # its entry would have no name relative to itself
            result.problems.append(("./", "the library root is itself a peft adapter directory; list its parent "
                                          "to include it"))
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if _is_dir(entry):
                stack.append(rel)
            elif name.lower().endswith(SUFFIX) and not (peft and name == WEIGHTS_NAME):
                result.candidates.append(Candidate(rel, here / name, "file"))
    result.candidates.sort(key=lambda c: c.rel)
    result.problems.sort()
    result.sidecars.sort()
    return result


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False
