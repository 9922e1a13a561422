"""The origins sidecar: where each pulled file came from, so that ``lock`` can record it and
``sync`` can fetch it again. One JSON file per output directory, merged on every pull:

    {"format": "adapterctl.origins/1",
     "files": {"styles/a.safetensors": {"repo": "user/name", "revision": "<40-hex commit>",
                                        "path": "a.safetensors", "sha256": "<hex>"}}}

Paths are relative to the directory, with '/' separators. A file extracted locally (pull --role
from a combined file) has no entry: its bytes are not the repository's, so sync could not fetch
them again; pulling over a path drops that path's old entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from adapterctl.errors import UsageError
from adapterctl.textsafe import display_path

NAME = ".adapterctl-origins.json"
FORMAT = "adapterctl.origins/1"
_LIMIT = 64 << 20


def read(directory: Path) -> dict[str, dict]:
    """The ``files`` mapping of the sidecar in ``directory`` ({} when there is none)."""
    from adapterctl.io import safe_json

    path = Path(directory) / NAME
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_LIMIT + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read {NAME}: {exc.strerror}", path=display_path(path)) from None
    try:
        doc = safe_json.loads(raw) if len(raw) <= _LIMIT else None
    except safe_json.JsonRejected:
        doc = None
    files = doc.get("files") if isinstance(doc, dict) and doc.get("format") == FORMAT else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        raise UsageError(f"{NAME} is not an {FORMAT} document; refusing to merge into it", path=display_path(path),
                         hint="move it away (it only records where pulled files came from) and pull again")
    return dict(files)


def merged(existing: dict[str, dict], updates: dict[str, Optional[dict]]) -> bytes:
    """The sidecar's new bytes: ``existing`` with ``updates`` applied (None removes an entry)."""
    files = dict(existing)
    for path, origin in updates.items():
        if origin is None:
            files.pop(path, None)
        else:
            files[path] = origin
    doc = {"format": FORMAT, "files": dict(sorted(files.items()))}
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def origin(repo: str, commit: str, path: str, sha256: str) -> dict:
    return {"repo": repo, "revision": commit, "path": path, "sha256": sha256}
