"""Download adapters from a Hub repository into a directory: pinned to a commit, verified by
sha256, written all together or not at all, and recorded in the directory's origins sidecar.

Order: resolve the revision to a commit and list the tree; choose the files; refuse any name
that could land outside the directory (before a byte is downloaded); check what is already
there; download each file through huggingface_hub's cache and verify it (fetch.py); extract a
role locally if asked and no per-role file exists; then move everything into place (stage.py)
and merge the sidecar (origins.py).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from adapterctl.errors import UsageError
from adapterctl.hub import origins
from adapterctl.hub._client import api, check_remote_name, check_repo_id, digest_file, hub, snapshot_path
from adapterctl.hub.errors import EntryNotFound, Offline, hub_errors
from adapterctl.hub.fetch import Listing, fetch, listing
from adapterctl.textsafe import clip, display_path

ROLES = ("content", "style", "expert", "untagged")
_PROBE_LIMIT = 64  # headers read to find a role's file; a repository with more must name FILE


@dataclass
class PullResult:
    repo: str
    revision: Optional[str]
    commit: str
    output: Path
    files: list[dict] = field(default_factory=list)
    offline: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"ok": True, "repo": self.repo, "revision": self.revision, "commit": self.commit,
                "output": display_path(self.output), "origins": display_path(self.output / origins.NAME),
                "offline": self.offline, "files": self.files, "notes": self.notes}


@dataclass(frozen=True)
class _Pick:
    name: str  # in the repository
    role: Optional[str] = None  # extract this role locally


def split_ref(ref: str, revision: Optional[str]) -> tuple[str, Optional[str]]:
    """'owner/name@rev' -> ('owner/name', 'rev'); --revision may say it instead, not both."""
    repo, at, rev = ref.partition("@")
    if at and revision is not None:
        raise UsageError("give the revision once: REPO@REVISION or --revision", hint=f"adapterctl pull {clip(repo)}")
    if at and not rev:
        raise UsageError(f"'{clip(ref, 200)}' ends with '@' and no revision")
    return repo, (rev if at else revision)


def pull(repo_id: str, revision: Optional[str] = None, filename: Optional[str] = None, role: Optional[str] = None,
         out_dir: Path = Path("."), token: Optional[str] = None, endpoint: Optional[str] = None,
         force: bool = False) -> PullResult:
    from adapterctl.hub.stage import staging

    check_repo_id(repo_id)
    if role is not None and role not in ROLES:
        raise UsageError(f"unknown role '{clip(role, 40)}'", hint=f"choose {', '.join(ROLES)}")
    if filename is not None:
        check_remote_name(filename)
    out_dir = Path(out_dir)
    updates: dict[str, Optional[dict]] = {}
    with staging(out_dir, force=force) as stage:  # checks the directory before any request
        existing = origins.read(out_dir) if stage.exists else {}
        found = listing(repo_id, revision, token=token, endpoint=endpoint)
        result = PullResult(repo_id, revision, found.commit, out_dir, offline=found.offline)
        picks = _choose(found, filename, role, token, endpoint, result.notes)
        for pick in picks:  # every name, before any download
            check_remote_name(pick.name)
        for pick in picks:
            rel = pick.name if pick.role is None else _role_name(pick.name, pick.role)
            want = found.files[pick.name].sha256 if pick.role is None else None
            stage.status(rel, want)  # refuses a conflicting file before the download
        for pick in picks:
            got = fetch(found, pick.name, token=token, endpoint=endpoint)
            entry = {"repo_path": pick.name, "verified": True, "how": got.how}
            if pick.role is None:
                rel, sha, size = pick.name, got.digest.sha256, got.digest.size
                updates[rel] = origins.origin(repo_id, found.commit, pick.name, sha)
                status = stage.status(rel, sha)
                if status != "unchanged":
                    stage.copy_verified(rel, got.path, sha)
            else:
                rel = _role_name(pick.name, pick.role)
                sha, size = _extract(got.path, pick.role, stage.path(rel))
                status = stage.status(rel, sha)
                if status == "unchanged":
                    stage.drop(rel)  # the same bytes are there already, with whatever origin they have
                else:
                    updates[rel] = None  # not the repository's bytes: sync could not fetch them again
                entry.update(role=pick.role, source_sha256=got.digest.sha256)
            status = {"new": "written", "replace": "replaced"}.get(status, status)
            result.files.append({"path": rel, "sha256": sha, "size": size, "status": status, **entry})
        sidecar = origins.merged(existing, updates)
        if _current(out_dir / origins.NAME) != sidecar:
            stage.write_bytes(origins.NAME, sidecar)
    return result


def _choose(found: Listing, filename, role, token, endpoint, notes: list[str]) -> list[_Pick]:
    if filename is not None:
        if filename not in found.files and found.offline:
            raise Offline(f"'{clip(filename, 200)}' of '{clip(found.repo, 200)}' at {found.commit[:12]} is not in the "
                          f"local cache, and {found.offline}", hint="pull it once while online")
        if filename not in found.files:
            raise EntryNotFound(f"'{clip(filename, 200)}' is not in '{clip(found.repo, 200)}' at "
                                f"{found.commit[:12]}", hint=_files_hint(found))
        if role is None:
            return [_Pick(filename)]
        roles = _roles(found, filename, token, endpoint)
        return [_Pick(filename, None if roles == {role} else role)]
    adapters = sorted(n for n in found.files if n.endswith(".safetensors"))
    if not adapters:
        raise EntryNotFound(f"'{clip(found.repo, 200)}' has no .safetensors file at {found.commit[:12]}",
                            hint=_files_hint(found))
    if role is None:
        return [_Pick(n) for n in adapters]
    if len(adapters) > _PROBE_LIMIT:
        raise UsageError(f"'{clip(found.repo, 200)}' has {len(adapters)} adapter files; name the one to take "
                         f"--role {role} from", hint="adapterctl pull REPO FILE --role ROLE")
    known = {n: _roles(found, n, token, endpoint) for n in adapters}
    alone = [n for n in adapters if known[n] == {role}]
    if alone:
        pick = _preferred(alone)
        if len(alone) > 1:
            notes.append(f"took {clip(pick, 120)} for --role {role}; also there: "
                         + ", ".join(clip(n, 80) for n in alone if n != pick))
        return [_Pick(pick)]
    holding = [n for n in adapters if known[n] is not None and role in known[n]]
    if not holding and len(adapters) == 1:
        holding = adapters  # no stored manifest: its roles are inferred once it is here
    if not holding:
        raise EntryNotFound(f"no file in '{clip(found.repo, 200)}' declares the role '{role}'",
                            hint="name the file to extract it from: adapterctl pull REPO FILE --role ROLE")
    pick = _preferred(holding)
    notes.append(f"no {role}-only file in the repository: extracted {role} from {clip(pick, 120)} locally")
    return [_Pick(pick, role)]


def _preferred(names: list[str]) -> str:
    """The plainest of equivalent files: 'x.style.safetensors' before its 'x.style.kohya' copy."""
    return min(names, key=lambda n: (len(n), n))


def _roles(found: Listing, name: str, token, endpoint) -> Optional[set[str]]:
    """The roles a file's stored manifest declares, from its header alone (a range request, or
    the cached file offline); None when it has no manifest or the header cannot be read."""
    metadata = None
    if found.offline is None:
        hf = hub()
        with hub_errors(repo=found.repo, endpoint=endpoint, token=token, revision=found.commit, filename=name):
            try:
                parsed = api(token, endpoint).parse_safetensors_file_metadata(found.repo, name, revision=found.commit)
                metadata = parsed.metadata
            except (hf.errors.SafetensorsParsingError, hf.errors.NotASafetensorsRepoError):
                return None
    else:
        local = snapshot_path(found.repo, found.commit, name)
        if not local.exists():
            return None
        from adapterctl.io.safetensors_file import SafetensorsFile

        try:
            with SafetensorsFile(local) as st:
                metadata = dict(st.metadata)
        except Exception:  # noqa: BLE001 - an unreadable header only means "roles unknown"
            return None
    return _manifest_roles(metadata or {})


def _manifest_roles(metadata: dict) -> Optional[set[str]]:
    from adapterctl.format.constants import MANIFEST_KEY
    from adapterctl.format.manifest import Manifest

    raw = metadata.get(MANIFEST_KEY)
    if not isinstance(raw, str):
        return None
    try:
        manifest = Manifest.from_json(raw)
    except ValueError:
        return None
    return {e.role or "untagged" for e in manifest.modules}


def _extract(cached: Path, role: str, dest: Path) -> tuple[str, int]:
    """Write ``role``'s branches of the (verified) cached file to ``dest``; (sha256, size)."""
    from adapterctl.adapter import Adapter
    from adapterctl.hub.upload import pinned

    with Adapter.open(cached) as adapter:
        have = adapter.roles()
        if role not in have:
            raise UsageError(f"the file has no '{role}' branches (it has {', '.join(sorted(have))})",
                             hint="choose one of its roles with --role")
        pinned(adapter.split(keep=[role]), adapter).save(dest)
    written = digest_file(dest)  # SaveResult.sha256 covers the data region only; origins and locks hash the file
    return written.sha256, written.size


def _role_name(name: str, role: str) -> str:
    head, tail = posixpath.split(name)
    stem = tail.removesuffix(".safetensors")
    return posixpath.join(head, f"{stem}.{role}.safetensors") if head else f"{stem}.{role}.safetensors"


def _current(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _files_hint(found: Listing) -> str:
    names = sorted(found.files)
    shown = ", ".join(clip(n, 60) for n in names[:8]) + (", …" if len(names) > 8 else "")
    return f"it has: {shown}" if names else "it has no files"
