"""Make a directory match a lock file: every locked file present with its sha256, fetched from its
origin (repo at a pinned commit) when it is missing or differs.

All fetched files are verified (the Hub's tree and the lock's sha256 and size) and staged before
any is moved into the directory; on any failure the directory is left exactly as it was. A file
already there with the locked sha256 is kept; one that differs is replaced by the locked bytes
(that is what sync is for); directories and special files are never replaced. Entries without
an origin must already be present and intact. The origins sidecar gets an entry for each file
with an origin, as pull would have written it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from adapterctl.errors import InputNotFound, UsageError, ValidationFailed
from adapterctl.hub import origins
from adapterctl.hub._client import SHA1_RE, SHA256_RE, check_remote_name, check_repo_id
from adapterctl.layouts.peft_dir import CONFIG_NAME, WEIGHTS_NAME
from adapterctl.library.read import peft_digest, sha256_file
from adapterctl.textsafe import clip, display_path

LOCK_FORMAT = "adapterctl.lock/1"
_LOCK_LIMIT = 64 << 20
_PEFT = (CONFIG_NAME, WEIGHTS_NAME)  # a peft directory, in the order peft_digest takes


@dataclass
class SyncResult:
    lock: Path
    output: Path
    files: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        counts: dict[str, int] = {}
        for f in self.files:
            counts[f["status"]] = counts.get(f["status"], 0) + 1
        return {"ok": True, "lock": display_path(self.lock), "output": display_path(self.output),
                "counts": counts, "files": self.files}


@dataclass(frozen=True)
class _Entry:
    path: str
    sha256: str
    size: Optional[int]
    origin: Optional[dict]


def read_lock(lock: Path) -> list[_Entry]:
    from adapterctl.io import safe_json

    try:
        with open(lock, "rb") as fh:
            raw = fh.read(_LOCK_LIMIT + 1)
    except OSError as exc:
        raise InputNotFound(f"cannot read the lock file: {exc.strerror}", path=display_path(lock)) from None
    try:
        doc = safe_json.loads(raw) if len(raw) <= _LOCK_LIMIT else None
    except safe_json.JsonRejected as exc:
        raise UsageError(f"the lock file is not valid JSON ({clip(str(exc), 200)})", path=display_path(lock)) from None
    if not isinstance(doc, dict) or doc.get("format") != LOCK_FORMAT or not isinstance(doc.get("files"), list):
        raise UsageError(f"not an {LOCK_FORMAT} document", path=display_path(lock), hint="make one with adapterctl lock")
    entries, seen = [], set()
    for i, item in enumerate(doc["files"]):
        entries.append(_entry(item, i, lock))
        if entries[-1].path in seen:
            raise UsageError(f"the lock lists '{clip(entries[-1].path, 200)}' twice", path=display_path(lock))
        seen.add(entries[-1].path)
    return entries


def _entry(item, i: int, lock: Path) -> _Entry:
    def bad(why: str) -> UsageError:
        return UsageError(f"lock entry {i}: {why}", path=display_path(lock))

    if not isinstance(item, dict):
        raise bad("not an object")
    path, sha, size, origin = item.get("path"), item.get("sha256"), item.get("size"), item.get("origin")
    if not isinstance(path, str):
        raise bad("no path")
    check_remote_name(path)  # relative, no '..', no hidden segment: it is written under DIR
    if not isinstance(sha, str) or not SHA256_RE.match(sha):
        raise bad("sha256 is not 64 lowercase hex digits")
    if size is not None and (type(size) is not int or size < 0):
        raise bad("size is not a non-negative integer")
    if origin is not None:
        if not isinstance(origin, dict) or not all(isinstance(origin.get(k), str) for k in ("repo", "revision", "path")):
            raise bad("origin needs repo, revision and path")
        if not SHA1_RE.match(origin["revision"]):
            raise bad(f"origin revision '{clip(origin['revision'], 60)}' is not a 40-hex commit sha (a lock pins "
                      "commits)")
        check_repo_id(origin["repo"])
        check_remote_name(origin["path"])
        origin = {k: origin[k] for k in ("repo", "revision", "path")}
    return _Entry(path, sha, size, origin)


def sync(lock: Path, out_dir: Optional[Path] = None, *, token: Optional[str] = None,
         endpoint: Optional[str] = None) -> SyncResult:
    from adapterctl.hub.fetch import fetch, listing
    from adapterctl.hub.stage import staging

    lock = Path(lock)
    entries = read_lock(lock)
    out_dir = Path(out_dir) if out_dir is not None else lock.parent
    result = SyncResult(lock, out_dir)
    updates: dict[str, Optional[dict]] = {}
    listings: dict[tuple[str, str], object] = {}
    with staging(out_dir, force=True) as stage:
        existing = origins.read(out_dir) if stage.exists else {}
        missing = []
        for e in entries:  # what is already right, before any request
            present = _present(out_dir / e.path, e) if stage.exists else False
            if e.origin is not None:
                updates[e.path] = origins.origin(e.origin["repo"], e.origin["revision"], e.origin["path"], e.sha256)
            if present:
                result.files.append({"path": e.path, "status": "present", "sha256": e.sha256})
            elif e.origin is None:
                missing.append(e)
            else:
                stage.status(e.path, e.sha256)  # a directory or special file in the way: refused now
        if missing:
            first = missing[0]
            raise ValidationFailed(f"{len(missing)} locked file(s) without an origin are missing or differ (first: "
                                   f"'{clip(first.path, 200)}'); nothing was changed",
                                   hint="restore them, or lock again after pulling them from a repository")
        done = {f["path"] for f in result.files}
        for e in entries:
            if e.origin is None or e.path in done:
                continue
            key = (e.origin["repo"], e.origin["revision"])
            if key not in listings:
                listings[key] = listing(key[0], key[1], token=token, endpoint=endpoint)
            got = fetch(listings[key], e.origin["path"], token=token, endpoint=endpoint, lock_sha256=e.sha256,
                        lock_size=e.size)
            status = stage.status(e.path, e.sha256)
            stage.copy_verified(e.path, got.path, e.sha256)
            result.files.append({"path": e.path, "status": "fetched" if status == "new" else "replaced",
                                 "sha256": e.sha256, "repo": e.origin["repo"], "revision": e.origin["revision"],
                                 "repo_path": e.origin["path"], "how": got.how})
        sidecar = origins.merged(existing, updates)
        current = out_dir / origins.NAME
        if not current.is_file() or current.read_bytes() != sidecar:
            stage.write_bytes(origins.NAME, sidecar)
    result.files.sort(key=lambda f: f["path"])
    return result


def _present(path: Path, e: _Entry) -> bool:
    """Whether ``path`` holds the locked bytes: a regular file, or a peft directory hashed as lock does."""
    try:
        if path.is_file():
            return (e.size is None or path.stat().st_size == e.size) and sha256_file(path)[0] == e.sha256
        if path.is_dir() and all((path / n).is_file() and not (path / n).is_symlink() for n in _PEFT):
            return peft_digest(*(sha256_file(path / n)[0] for n in _PEFT)) == e.sha256
    except (OSError, InputNotFound):  # gone or replaced by a non-file since the check above
        return False
    return False

