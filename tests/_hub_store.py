"""State of the Hub test server (tests/hub_server.py): repos, commits, trees and content-addressed blobs.

A repo is {"private", "created", "refs": {branch: commit id}, "commits": {id: commit}}; a commit is {"parent",
"tree", "title", "message", "date"}; a tree is {path: {"sha256", "size", "lfs", "oid"}} where "oid" is the git
blob sha1 the real Hub reports (of the bytes, or of the LFS pointer for LFS files). Bytes live in blobs/<sha256>;
everything else in state.json, so a server restarted on the same directory sees the same repos.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import threading
from datetime import datetime, timezone
from pathlib import Path

LFS_SIZE_LIMIT = 10 * 1024 * 1024
_LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz "
    "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar "
    "*.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
).split()
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _LFS_PATTERNS).encode()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def matches(path: str, pattern: str) -> bool:
    # git semantics, roughly: a pattern without an inner '/' matches any path component
    anchored = "/" in pattern.rstrip("/")
    pattern = pattern.strip("/")
    if not anchored:
        return any(fnmatch.fnmatchcase(part, pattern) for part in path.split("/"))
    return fnmatch.fnmatchcase(path, pattern) or path.startswith(pattern + "/")


def parse_range(header: str | None, size: int) -> tuple[int, int]:
    """[start, end) of a single "bytes=a-b" / "bytes=a-" / "bytes=-n" Range header; the whole file without one."""
    if not header:
        return 0, size
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m or not (m.group(1) or m.group(2)):
        raise HubError(416, "Bad range", headers={"Content-Range": f"bytes */{size}"})
    if m.group(1):
        start, end = int(m.group(1)), min(int(m.group(2)) + 1 if m.group(2) else size, size)
    else:
        start, end = max(size - int(m.group(2)), 0), size
    if start >= size or start >= end:
        raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class Store:
    """Repos, commits and blobs. Blobs are content-addressed files; the rest is one JSON file."""

    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        state = root / "state.json"
        self.repos: dict[str, dict] = json.loads(state.read_text()) if state.exists() else {}
        self.pending_lfs: set[str] = set()  # oids a batch call allowed to be PUT

    def save(self) -> None:
        tmp = self.root / "state.json.tmp"
        tmp.write_text(json.dumps(self.repos, indent=1, sort_keys=True))
        os.replace(tmp, self.root / "state.json")

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blobs / sha
        if not path.exists():
            tmp = path.with_name(f"{sha}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def has_blob(self, sha: str, size: int | None = None) -> bool:
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            return False  # also keeps a client's "oid" from naming any file outside blobs/
        path = self.blobs / sha
        return path.is_file() and (size is None or path.stat().st_size == size)

    def read_blob(self, sha: str) -> bytes:
        return (self.blobs / sha).read_bytes()

    def repo(self, repo_id: str, *, authed: bool) -> dict:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo["private"] and not authed:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def resolve(self, repo: dict, rev: str) -> str:
        if rev in repo["refs"]:
            return repo["refs"][rev]
        if rev.startswith("refs/heads/") and rev[11:] in repo["refs"]:
            return repo["refs"][rev[11:]]
        if re.fullmatch(r"[0-9a-f]{40}", rev) and rev in repo["commits"]:
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def tree(self, repo: dict, sha: str) -> dict[str, dict]:
        return repo["commits"][sha]["tree"]

    def history(self, repo: dict, sha: str | None) -> list[str]:
        out = []
        while sha is not None:
            out.append(sha)
            sha = repo["commits"][sha]["parent"]
        return out

    def entry(self, data_sha: str, size: int, lfs: bool, data: bytes | None = None) -> dict:
        if lfs:
            data = lfs_pointer(data_sha, size)  # git stores the pointer, so that is what the oid hashes
        elif data is None:
            data = self.read_blob(data_sha)
        oid = git_blob_sha1(data)
        return {"sha256": data_sha, "size": size, "lfs": lfs, "oid": oid}

    def new_commit(self, repo: dict, branch: str, tree: dict, title: str, message: str) -> str:
        parent = repo["refs"].get(branch)
        date = _now()
        payload = json.dumps([parent, tree, title, message, date, len(repo["commits"])], sort_keys=True)
        sha = hashlib.sha1(payload.encode()).hexdigest()
        repo["commits"][sha] = {"parent": parent, "tree": tree, "title": title, "message": message, "date": date}
        repo["refs"][branch] = sha
        self.save()
        return sha

    def create_repo(self, repo_id: str, private: bool) -> None:
        repo = {"private": private, "created": _now(), "refs": {}, "commits": {}}
        self.repos[repo_id] = repo
        sha = self.put_blob(GITATTRIBUTES)
        tree = {".gitattributes": self.entry(sha, len(GITATTRIBUTES), False, GITATTRIBUTES)}
        self.new_commit(repo, "main", tree, "initial commit", "")

    def text_at(self, repo: dict, sha: str, path: str) -> str | None:
        f = self.tree(repo, sha).get(path)
        return self.read_blob(f["sha256"]).decode("utf-8", "replace") if f else None

    def apply(self, repo: dict, head: str, operations: list[dict]) -> dict:
        """The tree of `head` with the commit endpoint's NDJSON operations applied (file, lfsFile, deleted*)."""
        tree = dict(self.tree(repo, head))
        for line in operations:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise HubError(400, f"Invalid path: {path!r}")
            if key == "file":
                data = base64.b64decode(value["content"])
                tree[path] = self.entry(self.put_blob(data), len(data), False, data)
            elif key == "lfsFile":
                size = value.get("size")
                if not self.has_blob(value["oid"], size):
                    raise HubError(400, f"LFS object {value['oid']} for {path} was never uploaded")
                size = size if size is not None else (self.blobs / value["oid"]).stat().st_size
                tree[path] = self.entry(value["oid"], size, True)
            elif key == "deletedFile":
                if tree.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                gone = [p for p in tree if p.startswith(path.rstrip("/") + "/")]
                if not gone:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del tree[p]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        return tree

    def is_lfs(self, repo: dict, head: str, path: str, size: int, sample: bytes) -> bool:
        # as the real Hub decides: the repo's .gitattributes, size over 10 MB, or binary content
        attrs = self.text_at(repo, head, ".gitattributes") or ""
        patterns = [line.split()[0] for line in attrs.splitlines() if "filter=lfs" in line]
        return size > LFS_SIZE_LIMIT or b"\0" in sample or any(matches(path, p) for p in patterns)

    def last_commit(self, repo: dict, head: str, path: str) -> dict:
        # the newest commit whose tree differs from its parent's at `path` (file or folder)
        def snapshot(sha):
            tree = self.tree(repo, sha) if sha else {}
            return sorted((p, f["oid"]) for p, f in tree.items() if p == path or p.startswith(path + "/"))

        for sha in self.history(repo, head):
            commit = repo["commits"][sha]
            if snapshot(sha) != snapshot(commit["parent"]):
                return {"id": sha, "title": commit["title"], "date": commit["date"]}
        commit = repo["commits"][head]
        return {"id": head, "title": commit["title"], "date": commit["date"]}


def file_json(path: str, f: dict) -> dict:
    out = {"type": "file", "oid": f["oid"], "size": f["size"], "path": path}
    if f["lfs"]:
        out["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": len(lfs_pointer(f["sha256"], f["size"]))}
    return out


def dir_json(path: str, tree: dict) -> dict:
    inside = sorted(f"{p} {f['oid']}" for p, f in tree.items() if p.startswith(path + "/"))
    return {"type": "directory", "oid": hashlib.sha1("\n".join(inside).encode()).hexdigest(), "size": 0, "path": path}


def dirs_of(tree: dict) -> set[str]:
    out = set()
    for p in tree:
        parts = p.split("/")[:-1]
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return out
