"""Resolve a revision, list a repository, and download one file through huggingface_hub's cache,
verified: the part pull and sync share.

huggingface_hub does not check what it downloads against the Hub's sha256 (a body with a flipped
byte is cached and returned as good), so ``fetch`` does. What a file is checked against:
online, the repository tree at the pinned commit (the LFS sha256 and size; the git blob id for a
small non-LFS file); offline (HF_HUB_OFFLINE=1, or the Hub unreachable), the name of the cached
blob, which is the ETag the Hub sent (the same sha256 for an LFS file); and, in sync, the lock's
sha256 as well. A file that fails is evicted from the cache (blob and snapshot link), so the next
attempt downloads it again instead of trusting the bad copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from adapterctl.hub._client import (SHA1_RE, SHA256_RE, Digest, api, blob_name, digest_file, evict, hub, offline,
                                    repo_cache, snapshot_path)
from adapterctl.hub.errors import EntryNotFound, HubUnreachable, IntegrityError, Offline, hub_errors
from adapterctl.textsafe import clip


@dataclass(frozen=True)
class Expected:
    size: Optional[int] = None
    sha256: Optional[str] = None
    git_sha1: Optional[str] = None
    source: str = "the Hub's tree"


@dataclass(frozen=True)
class Listing:
    repo: str
    revision: Optional[str]  # as asked (None: the default branch)
    commit: str
    files: dict[str, Expected]
    offline: Optional[str] = None  # why the cache was used instead of the Hub


@dataclass(frozen=True)
class Fetched:
    name: str
    path: Path  # in the huggingface_hub cache: read it, never write it
    digest: Digest
    how: str


def listing(repo_id: str, revision: Optional[str], *, token: Optional[str], endpoint: Optional[str],
            offline_ok: bool = True) -> Listing:
    """The files at ``revision``, resolved to a commit. Online unless HF_HUB_OFFLINE is set or the
    Hub cannot be reached, and then from the cache (``offline`` says why)."""
    if not offline():
        try:
            return _online(hub(), repo_id, revision, token, endpoint)
        except HubUnreachable as exc:
            if not offline_ok:
                raise
            reason = exc.message
    else:
        reason = "HF_HUB_OFFLINE is set"
    return _cached(repo_id, revision, reason)


def _online(hf, repo_id, revision, token, endpoint) -> Listing:
    client = api(token, endpoint)
    with hub_errors(repo=repo_id, endpoint=endpoint, token=token, revision=revision):
        # repo_info fails at once when the Hub is unreachable (list_repo_tree retries for ~25 s).
        commit = client.repo_info(repo_id, revision=revision).sha
        if not SHA1_RE.match(commit or ""):
            raise IntegrityError(f"the Hub resolved '{clip(revision or 'main', 80)}' to '{clip(str(commit), 80)}', "
                                 "which is not a commit sha")
        remember_ref(repo_id, revision, commit)
        tree = client.list_repo_tree(repo_id, revision=commit, recursive=True)
        files = {}
        for item in tree:
            if not isinstance(item, hf.hf_api.RepoFile):
                continue
            lfs = getattr(item, "lfs", None)
            if lfs is not None:
                files[item.path] = Expected(size=lfs.size, sha256=lfs.sha256)
            else:
                files[item.path] = Expected(size=item.size, git_sha1=item.blob_id)
    return Listing(repo_id, revision, commit, files)


def _cached(repo_id: str, revision: Optional[str], reason: str) -> Listing:
    base = repo_cache(repo_id)
    commit = revision if revision and SHA1_RE.match(revision) else None
    if commit is None:
        ref = base / "refs" / (revision or "main")
        try:
            commit = ref.read_text(encoding="ascii").strip() if ref.resolve().is_relative_to(base.resolve()) else None
        except (OSError, UnicodeDecodeError):
            commit = None
    root = base / "snapshots" / (commit or "")
    if not commit or not SHA1_RE.match(commit) or not root.is_dir():
        at = f"{clip(revision or 'main', 80)}" + (f" (commit {commit[:12]})" if commit and revision != commit else "")
        raise Offline(f"'{clip(repo_id, 200)}' at {at} has no files in the local cache, and {reason}",
                      hint="pull it once while online (HF_HOME must point at the same cache)")
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for fname in filenames:
            path = Path(dirpath, fname)
            name = path.relative_to(root).as_posix()
            files[name] = _from_blob(path)
    return Listing(repo_id, revision, commit, files, offline=reason)


def remember_ref(repo_id: str, revision: Optional[str], commit: str) -> None:
    """Record branch -> commit in the cache's refs/ (its documented layout, as huggingface_hub does
    when it downloads by branch), so that an offline pull by branch name finds the commit."""
    rev = revision or "main"
    if SHA1_RE.match(rev) or ".." in rev.split("/") or rev.startswith("/") or "\\" in rev:
        return
    path = repo_cache(repo_id) / "refs" / rev
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(commit, encoding="ascii")
        os.replace(tmp, path)
    except OSError:
        pass  # best effort: only offline use by branch name needs it


def _from_blob(pointer: Path) -> Expected:
    blob = blob_name(pointer) or ""
    how = "the cached blob's name (the Hub's ETag)"
    if SHA256_RE.match(blob):
        return Expected(sha256=blob, source=how)
    if SHA1_RE.match(blob):
        return Expected(git_sha1=blob, source=how)
    return Expected(source="nothing (the cache holds copies, not links)")


def fetch(listing: Listing, name: str, *, token: Optional[str], endpoint: Optional[str],
          lock_sha256: Optional[str] = None, lock_size: Optional[int] = None) -> Fetched:
    """Download ``name`` at the listing's commit into the cache (or find it there) and verify it.
    The name must have been checked (``check_remote_name``) by the caller."""
    hf = hub()
    expected = listing.files.get(name)
    if expected is None:
        raise EntryNotFound(f"'{clip(name, 200)}' is not in '{clip(listing.repo, 200)}' at {listing.commit[:12]}",
                            hint=f"list its files with 'adapterctl pull {clip(listing.repo, 200)}@{listing.commit} "
                                 "--json'")
    with hub_errors(repo=listing.repo, endpoint=endpoint, token=token, revision=listing.commit, filename=name):
        try:
            local = Path(hf.hf_hub_download(listing.repo, name, revision=listing.commit, token=token,
                                            endpoint=endpoint))
        except ValueError as exc:  # huggingface_hub's own refusal of a hostile name
            from adapterctl.hub.errors import UnsafeRemoteName

            raise UnsafeRemoteName(f"refusing the repository file '{clip(name, 200)}': {clip(str(exc), 200)}") \
                from None
    pointer = snapshot_path(listing.repo, listing.commit, name)
    digest = digest_file(local)
    problems, checks = _check(digest, expected, lock_sha256, lock_size)
    if problems:
        evict(pointer if pointer.exists() or pointer.is_symlink() else local)
        raise IntegrityError(f"'{clip(name, 200)}' from {clip(listing.repo, 200)}@{listing.commit[:12]} is corrupt: "
                             f"{problems[0]}; nothing was written",
                             hint="the bad copy was removed from the Hugging Face cache; run the command again to "
                                  "download it again")
    if not checks:
        raise IntegrityError(f"'{clip(name, 200)}' cannot be verified: no sha256 is known for it "
                             f"({expected.source}); nothing was written",
                             hint="pull while online, where the Hub's tree gives its sha256")
    return Fetched(name, local, digest, " and ".join(checks))


def _check(digest: Digest, expected: Expected, lock_sha256, lock_size) -> tuple[list[str], list[str]]:
    problems, checks = [], []
    for want_size in (expected.size, lock_size):
        if want_size is not None and digest.size != want_size:
            problems.append(f"{digest.size} bytes, expected {want_size}")
    if expected.sha256:
        if digest.sha256 != expected.sha256:
            problems.append(f"sha256 {digest.sha256[:16]}… is not {expected.sha256[:16]}… ({expected.source})")
        checks.append(f"sha256 matches {expected.source}")
    elif expected.git_sha1:
        if digest.git_sha1 != expected.git_sha1:
            problems.append(f"git blob id {digest.git_sha1[:12]}… is not {expected.git_sha1[:12]}… "
                            f"({expected.source})")
        checks.append(f"git blob id matches {expected.source}")
    if lock_sha256:
        if digest.sha256 != lock_sha256:
            problems.append(f"sha256 {digest.sha256[:16]}… is not the lock's {lock_sha256[:16]}…")
        checks.append("sha256 matches the lock")
    return problems, checks
