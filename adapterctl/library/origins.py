"""Where a library file came from: the pull origins sidecar ``.adapterctl-origins.json``.

``adapterctl pull`` writes it in its output directory (and merges with an existing one):

    {"format": "adapterctl.origins/1",
     "files": {"<path relative to that directory>": {"repo": "user/name", "revision": "<40 hex>",
                                                     "path": "<path in the repo>", "sha256": "<64 hex>"}}}

A file's origin is believed only while the sidecar's sha256 for it is still the file's sha256:
a file edited or replaced after the pull has no origin. Sidecars may sit in any directory of the
library; the nearest one to a file wins. A sidecar is untrusted input (bounded read, bounded
JSON, every field checked); a malformed one is ignored as a whole, with a warning.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from adapterctl.io import safe_json
from adapterctl.library.paths import path_problem
from adapterctl.textsafe import clip, display_path

SIDECAR = ".adapterctl-origins.json"
FORMAT = "adapterctl.origins/1"
MAX_BYTES = 16 * 1024 * 1024
_REVISION = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_FIELD = 1000


@dataclass
class Origins:
    """Library-relative path -> (sha256, origin) from every sidecar found, nearest first."""

    by_path: dict[str, tuple[str, dict]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def origin_of(self, rel: str, sha256: Optional[str]) -> Optional[dict]:
        """The origin of ``rel`` if a sidecar names it with this very sha256, else None."""
        found = self.by_path.get(rel)
        if found is None or sha256 is None or found[0] != sha256:
            return None
        return dict(found[1])


def load_origins(root: Path, sidecar_dirs: list[str]) -> Origins:
    """Read the sidecars in ``sidecar_dirs`` (library-relative, '' for the root)."""
    out = Origins()
    # Deepest directory first, so that the nearest sidecar's claim on a file is the one kept.
    for rel_dir in sorted(sidecar_dirs, key=lambda d: (-d.count("/") - bool(d), d)):
        where = (root / rel_dir / SIDECAR) if rel_dir else root / SIDECAR
        try:
            files = _read(where)
        except ValueError as exc:
            out.warnings.append(f"{display_path(where)}: ignored ({exc})")
            continue
        for rel, (sha, origin) in files.items():
            out.by_path.setdefault(f"{rel_dir}/{rel}" if rel_dir else rel, (sha, origin))
    return out


def _read(path: Path) -> dict[str, tuple[str, dict]]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ValueError(f"cannot open: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError("not a regular file")
    with open(fd, "rb", buffering=0) as fh:
        raw = fh.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes")
    try:
        doc = safe_json.loads(raw)
    except safe_json.JsonRejected as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        shown = doc.get("format") if isinstance(doc, dict) else None
        raise ValueError(f"format {clip(repr(shown), 60)} is not {FORMAT}")
    files = doc.get("files")
    if not isinstance(files, dict):
        raise ValueError("'files' is not an object")
    out = {}
    for rel, entry in files.items():
        problem = path_problem(rel)
        if problem:
            raise ValueError(f"path {clip(repr(rel), 80)} {problem}")
        out[rel] = _entry(rel, entry)
    return out


def _entry(rel: str, entry: object) -> tuple[str, dict]:
    def bad(what: str) -> ValueError:
        return ValueError(f"entry {clip(repr(rel), 80)}: {what}")

    if not isinstance(entry, dict):
        raise bad("is not an object")
    repo, revision, path, sha = (entry.get(k) for k in ("repo", "revision", "path", "sha256"))
    for name, value in (("repo", repo), ("path", path)):
        if not isinstance(value, str) or not value or len(value) > _MAX_FIELD:
            raise bad(f"'{name}' is not a non-empty string")
    if not isinstance(revision, str) or not _REVISION.fullmatch(revision):
        raise bad("'revision' is not a 40-hex commit sha")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise bad("'sha256' is not 64 lowercase hex digits")
    return sha, {"repo": repo, "revision": revision, "path": path}
