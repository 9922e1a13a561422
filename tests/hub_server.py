"""A Hugging Face Hub-protocol test server, written here with the standard library only.

The real Hub is unreachable from the test machines and no ready-made Hub-compatible server accepts uploads, so
this implements, over real HTTP on 127.0.0.1, what the real huggingface_hub 2.4 client uses with
HF_HUB_DISABLE_XET=1, learnt from its source (hf_api.py, _commit_api.py, lfs.py, file_download.py): each route
in _ROUTES below, with what it answers, and nothing the client does not need. State: tests/_hub_store.py. Use:

    with HubServer(tmp_path / "hub") as hub:   # 127.0.0.1, OS-assigned port, one thread; stops on exit
        HfApi(endpoint=hub.url, token=hub.token)    # or HF_ENDPOINT=hub.url in a subprocess

Like the real Hub, a new repo starts with an "initial commit" holding the default .gitattributes, and that file
decides (with size > 10 MB and NUL bytes in the sample) which files go through LFS. Revisions are branch names or
full 40-hex commit ids. A wrong Bearer token gets 401 "Invalid credentials in Authorization header" on every
endpoint; writes need the right one; private repos answer 401 RepoNotFound without it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from _hub_store import (
    LFS_SIZE_LIMIT,
    HubError,
    Store,
    dir_json,
    dirs_of,
    file_json,
    git_blob_sha1,
    lfs_pointer,
    matches,
    parse_range,
)

__all__ = ["HubServer", "HubError", "LFS_SIZE_LIMIT", "git_blob_sha1", "lfs_pointer"]
INVALID_TOKEN = "Invalid credentials in Authorization header"  # the Hub's words; the client keys on them

_REPO = r"^/api/models/(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", r"^/api/repos/create$", "create_repo"),  # 409 + {"url"} when it exists (create_repo exist_ok)
    ("DELETE", r"^/api/repos/delete$", "delete_repo"),
    ("GET", r"^/api/whoami-v2$", "whoami"),
    ("POST", r"^/api/validate-yaml$", "validate_yaml"),  # create_commit calls it when README.md changes
    ("GET", _REPO + r"(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),  # sha, siblings (size, lfs with ?blobs=1)
    ("POST", _REPO + r"/preupload/(?P<rev>[^/]+)$", "preupload"),  # uploadMode, shouldIgnore, current oid
    ("POST", _REPO + r"/commit/(?P<rev>[^/]+)$", "commit"),  # NDJSON: header, file, lfsFile, deletedFile/Folder
    ("GET", _REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),  # ?recursive ?expand, Link pages
    ("POST", _REPO + r"/paths-info/(?P<rev>[^/]+)$", "paths_info"),  # form-encoded, as the client sends it
    ("GET", _REPO + r"/commits/(?P<rev>[^/]+)$", "list_commits"),  # newest first, Link pages
    ("GET", _REPO + r"/refs$", "refs"),
    ("POST", _REPO + r"/branch/(?P<branch>[^/]+)$", "create_branch"),  # {"startingPoint"}; 409 when it exists
    ("DELETE", _REPO + r"/branch/(?P<branch>[^/]+)$", "delete_branch"),
    ("POST", r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$", "lfs_batch"),  # upload + verify actions
    ("POST", r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/verify$", "lfs_verify"),
    ("PUT", r"^/_lfs/(?P<oid>[0-9a-f]{64})$", "lfs_put"),  # the "signed URL": only after a batch call named it
    ("GET", r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),  # X-Repo-Commit, ETag,
    ("HEAD", r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),  # X-Linked-*, Range
]
_ROUTES = [(m, re.compile(p), name) for m, p, name in _ROUTES]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server: _HTTPServer

    def log_message(self, format, *args):  # quiet: tests read hub.requests instead
        pass

    def _dispatch(self) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        with hub._lock:
            hub.requests.append((self.command, split.path))
        try:
            self.body = self._read_body()  # always read whole, so an early error keeps the connection usable
            self.authed = self._check_token()
            for method, pattern, name in _ROUTES:
                m = pattern.match(split.path)
                if m and method == self.command:
                    args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                    with hub.store.lock:
                        getattr(self, "do_" + name)(**args)
                    return
            raise HubError(404, f"No route for {self.command} {split.path}")
        except HubError as e:
            headers = dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message
            self._json({"error": e.message}, e.status, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-response: nothing to answer
        except Exception as e:  # malformed input, or a server bug: 400 (a 5xx would make the client retry)
            hub.errors.append(traceback.format_exc())
            self.close_connection = True
            self._json({"error": f"Test server could not handle the request: {e!r}"}, 400)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _check_token(self) -> bool:
        auth = self.headers.get("Authorization")
        if not auth:
            return False
        if auth != f"Bearer {self.server.hub.token}":
            raise HubError(401, INVALID_TOKEN)
        return True

    def _need_write(self) -> None:
        if not self.authed:
            raise HubError(401, "You must be authenticated to write to this repo")

    def _send(self, status: int, body: bytes, headers: dict, length: int | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "Malformed JSON body") from None

    def _paged(self, items: list) -> None:
        # cursor pagination with a GitHub-style Link header, as huggingface_hub's paginate() follows
        size = self.server.hub.page_size
        start = int(self.query.get("cursor", ["0"])[0])
        if size is None:
            return self._json(items)
        headers = {}
        if start + size < len(items):
            host = self.server.hub.url
            rest = "&".join(f"{k}={v[0]}" for k, v in self.query.items() if k != "cursor")
            headers["Link"] = f'<{host}{urlsplit(self.path).path}?{rest}&cursor={start + size}>; rel="next"'
        self._json(items[start : start + size], headers=headers)

    def _store_repo(self, repo: str) -> tuple[Store, dict]:
        store = self.server.hub.store
        return store, store.repo(repo, authed=self.authed)

    # -- repos ---------------------------------------------------------------------------------------------------
    def do_create_repo(self):
        self._need_write()
        body, hub = self._json_body(), self.server.hub
        if body.get("type", "model") != "model":
            raise HubError(400, "This test server only hosts model repos")
        name, org = body.get("name"), body.get("organization") or hub.user
        if not name or not re.fullmatch(r"[\w.-]+", name) or not re.fullmatch(r"[\w.-]+", org):
            raise HubError(400, "Invalid repo name")
        repo_id = f"{org}/{name}"
        if repo_id in hub.store.repos:
            return self._json({"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}, 409)
        hub.store.create_repo(repo_id, private=body.get("visibility") == "private" or bool(body.get("private")))
        self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def do_delete_repo(self):
        self._need_write()
        body, store = self._json_body(), self.server.hub.store
        repo_id = f"{body.get('organization') or self.server.hub.user}/{body.get('name')}"
        store.repo(repo_id, authed=True)
        del store.repos[repo_id]
        store.save()
        self._json({})

    def do_whoami(self):
        if not self.authed:
            raise HubError(401, INVALID_TOKEN)
        user = self.server.hub.user
        token = {"displayName": "test", "role": "write"}
        self._json({"type": "user", "id": "0" * 24, "name": user, "fullname": user, "orgs": [],
                    "auth": {"type": "access_token", "accessToken": token}})

    def do_validate_yaml(self):
        self._json({"errors": [], "warnings": []})

    def do_repo_info(self, repo, rev="main"):
        store, r = self._store_repo(repo)
        sha = store.resolve(r, rev)
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path, f in sorted(store.tree(r, sha).items()):
            sib = {"rfilename": path}
            if blobs:
                sib.update(size=f["size"], blobId=f["oid"])
                if f["lfs"]:
                    sib["lfs"] = file_json(path, f)["lfs"] | {"sha256": f["sha256"]}
            siblings.append(sib)
        self._json({"_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
                    "author": repo.split("/")[0], "sha": sha, "lastModified": r["commits"][sha]["date"],
                    "createdAt": r["created"], "private": r["private"], "gated": False, "disabled": False,
                    "downloads": 0, "likes": 0, "tags": [], "siblings": siblings})

    def do_refs(self, repo):
        _, r = self._store_repo(repo)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in sorted(r["refs"].items())]
        out = {"branches": branches, "converts": [], "tags": []}
        if self.query.get("include_prs"):
            out["pullRequests"] = []
        self._json(out)

    def do_create_branch(self, repo, branch):
        self._need_write()
        store, r = self._store_repo(repo)
        if branch in r["refs"]:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        r["refs"][branch] = store.resolve(r, self._json_body().get("startingPoint") or "main")
        store.save()
        self._json({})

    def do_delete_branch(self, repo, branch):
        self._need_write()
        store, r = self._store_repo(repo)
        if branch not in r["refs"] or branch == "main":
            raise HubError(404 if branch not in r["refs"] else 403, f"Cannot delete branch {branch}")
        del r["refs"][branch]
        store.save()
        self._json({})

    # -- reading trees and history -------------------------------------------------------------------------------
    def do_tree(self, repo, rev, path=""):
        store, r = self._store_repo(repo)
        sha = store.resolve(r, rev)
        tree, path = store.tree(r, sha), path.strip("/")
        dirs = dirs_of(tree)
        if path and path not in dirs:
            raise HubError(404, f"Path {path} not found in tree", "EntryNotFound")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[0].lower() in ("1", "true")
        prefix = path + "/" if path else ""

        def wanted(p):
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

        items = [dir_json(d, tree) for d in sorted(dirs) if wanted(d)]
        items += [file_json(p, f) for p, f in sorted(tree.items()) if wanted(p)]
        if expand:
            for item in items:
                item["lastCommit"] = store.last_commit(r, sha, item["path"])
        self._paged(items)

    def do_paths_info(self, repo, rev):
        store, r = self._store_repo(repo)
        sha = store.resolve(r, rev)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            form = self._json_body()
            paths, expand = form.get("paths", []), bool(form.get("expand"))
        else:
            form = parse_qs(self.body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["False"])[0].lower() == "true"
        tree = store.tree(r, sha)
        dirs, out = dirs_of(tree), []
        for p in paths:
            p = p.strip("/")
            item = file_json(p, tree[p]) if p in tree else dir_json(p, tree) if p in dirs else None
            if item is not None:
                if expand:
                    item["lastCommit"] = store.last_commit(r, sha, p)
                out.append(item)
        self._json(out)

    def do_list_commits(self, repo, rev):
        store, r = self._store_repo(repo)
        user = self.server.hub.user
        items = []
        for sha in store.history(r, store.resolve(r, rev)):
            c = r["commits"][sha]
            items.append({"id": sha, "title": c["title"], "message": c["message"], "date": c["date"],
                          "authors": [{"user": user, "avatar": ""}]})
        self._paged(items)

    # -- downloads -----------------------------------------------------------------------------------------------
    def do_resolve(self, repo, rev, path):
        hub = self.server.hub
        store, r = self._store_repo(repo)
        sha = store.resolve(r, rev)
        f = store.tree(r, sha).get(path)
        if f is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        size = f["size"]
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha, "Accept-Ranges": "bytes",
                   "ETag": f'"{f["sha256"] if f["lfs"] else f["oid"]}"'}
        if f["lfs"]:
            headers.update({"X-Linked-Etag": f'"{f["sha256"]}"', "X-Linked-Size": str(size)})
        start, end = parse_range(self.headers.get("Range"), size)
        status = 206 if self.headers.get("Range") else 200
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if self.command == "HEAD":
            return self._send(status, b"", headers, length=end - start)
        data = store.read_blob(f["sha256"])
        if hub._corrupt.pop((repo, path), False) and data:
            flipped = bytearray(data)
            flipped[len(data) // 2] ^= 0x01  # same length, same headers: only a content check can notice
            data = bytes(flipped)
        self._send(status, data[start:end], headers)

    # -- uploads -------------------------------------------------------------------------------------------------
    def do_preupload(self, repo, rev):
        self._need_write()
        store, r = self._store_repo(repo)
        sha = store.resolve(r, rev)
        body = self._json_body()
        ignore = body.get("gitIgnore")
        ignore = store.text_at(r, sha, ".gitignore") if ignore is None else ignore
        ignore_patterns = [p.strip() for p in (ignore or "").splitlines() if p.strip() and not p.startswith("#")]
        tree, files = store.tree(r, sha), []
        for item in body.get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            sample = base64.b64decode(item.get("sample", ""))
            lfs = store.is_lfs(r, sha, path, size, sample[:512])
            out = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                   "shouldIgnore": any(matches(path, p) for p in ignore_patterns)}
            if path in tree:  # lets the client skip unchanged files (it compares with its own oid)
                out["oid"] = tree[path]["sha256"] if tree[path]["lfs"] else tree[path]["oid"]
            files.append(out)
        self._json({"files": files, "commitOid": sha})

    def do_lfs_batch(self, repo):
        self._need_write()
        store, _ = self._store_repo(repo)
        body, url = self._json_body(), self.server.hub.url
        if body.get("operation") != "upload":
            raise HubError(400, "Only the upload operation is supported")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            out = {"oid": oid, "size": size, "authenticated": True}
            if not store.has_blob(oid, size):
                store.pending_lfs.add(oid)
                out["actions"] = {"upload": {"href": f"{url}/_lfs/{oid}", "expires_in": 3600},
                                  "verify": {"href": f"{url}/{repo}.git/info/lfs/objects/verify"}}
            objects.append(out)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def do_lfs_put(self, oid):
        store = self.server.hub.store
        if oid not in store.pending_lfs:
            raise HubError(403, "No upload was prepared for this object")
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, "Uploaded bytes do not match the object id")
        store.put_blob(self.body)
        store.pending_lfs.discard(oid)
        self._send(200, b"", {"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    def do_lfs_verify(self, repo):
        self._need_write()
        store, _ = self._store_repo(repo)
        body = self._json_body()
        if not store.has_blob(body.get("oid", ""), body.get("size")):
            raise HubError(404, "Object not found or wrong size")
        self._json({"success": True})

    def do_commit(self, repo, rev):
        self._need_write()
        store, r = self._store_repo(repo)
        if self.query.get("create_pr"):
            raise HubError(400, "This test server does not do pull requests")
        if rev not in r["refs"]:
            raise HubError(404, f"Invalid rev id: {rev} is not a branch", "RevisionNotFound")
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, "Malformed NDJSON") from None
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line must be the header")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent and parent != r["refs"][rev]:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        tree = store.apply(r, r["refs"][rev], lines[1:])
        sha = store.new_commit(r, rev, tree, header.get("summary", ""), header.get("description", ""))
        url = f"{self.server.hub.url}/{repo}/commit/{sha}"
        self._json({"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None,
                    "commit": {"oid": sha, "url": url}, "hookOutput": ""})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class HubServer:
    """Start with `with HubServer(dir) as hub:`; see the module docstring for the protocol."""

    def __init__(self, root: str | os.PathLike, *, user: str = "test-user", token: str | None = None,
                 page_size: int | None = None):
        self.root = Path(root)
        self.user = user
        self.token = token or "hf_test_" + secrets.token_hex(12)
        self.page_size = page_size  # None: tree and commit listings in one page; N: N per page + Link header
        self.requests: list[tuple[str, str]] = []  # (method, path without query), in arrival order
        self.errors: list[str] = []  # tracebacks of requests the server could not handle (answered 400)
        self.store = Store(self.root)
        self._lock = threading.Lock()
        self._corrupt: dict[tuple[str, str], bool] = {}
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> HubServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # a short poll interval keeps stop() (and so each test's teardown) fast
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-server",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test helpers (direct state access, no HTTP) -------------------------------------------------------------
    def corrupt_next(self, repo_id: str, filename: str) -> None:
        """The next GET /resolve of `filename` serves its bytes with the middle byte flipped (headers unchanged)."""
        with self.store.lock:
            self._corrupt[(repo_id, filename)] = True

    def commits(self, repo_id: str, revision: str = "main") -> list[str]:
        """Commit ids reachable from `revision`, newest first (the last is the repo's "initial commit")."""
        with self.store.lock:
            repo = self.store.repos[repo_id]
            return self.store.history(repo, self.store.resolve(repo, revision))

    def files(self, repo_id: str, revision: str = "main") -> dict[str, dict]:
        """{path: {"sha256", "size", "lfs", "oid"}} at `revision` (includes the initial .gitattributes)."""
        with self.store.lock:
            repo = self.store.repos[repo_id]
            return {p: dict(f) for p, f in self.store.tree(repo, self.store.resolve(repo, revision)).items()}

    def commit_files(self, repo_id: str, files: dict[str, bytes | None], message: str = "direct commit",
                     revision: str = "main") -> str:
        """Commit straight into the store, without HTTP or path checks (e.g. to plant a hostile "../x" name).

        `files` maps paths to bytes (added, LFS or not as preupload would decide) or None (deleted). Returns the
        new commit id.
        """
        with self.store.lock:
            store, repo = self.store, self.store.repos[repo_id]
            if revision not in repo["refs"]:
                raise ValueError(f"commit_files needs a branch name, got {revision!r}")
            head = store.resolve(repo, revision)
            tree = dict(store.tree(repo, head))
            for path, data in files.items():
                if data is None:
                    tree.pop(path, None)
                else:
                    lfs = store.is_lfs(repo, head, path, len(data), data[:512])
                    tree[path] = store.entry(store.put_blob(data), len(data), lfs, data)
            return store.new_commit(repo, revision, tree, message, "")

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """The stored bytes of `path` at `revision`."""
        return self.store.read_blob(self.files(repo_id, revision)[path]["sha256"])
