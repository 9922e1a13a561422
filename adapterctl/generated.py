"""Files generated from code (the arch map, the manifest schema, the CLI reference).

Each generator writes its file, or with ``--check`` fails when the file on disk is stale;
the tests run the checks, so generated files cannot drift from their source.
"""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(path: Path, text: str, *, check: bool, regenerate: str) -> int:
    """Return a process exit code: 1 when checking a stale or missing file, else 0."""
    if check:
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != text:
            sys.stderr.write(f"{path} is stale: run '{regenerate}' and commit the result\n")
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    return 0
