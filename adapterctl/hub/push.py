"""Upload adapters and their model card in one commit, or in none when nothing changed.

Order: every input is opened and every derived file written (locally, no request yet), then the
repository is created if needed (and the branch), the files are compared with the branch head
by their sha256 (the Hub's LFS metadata; git blob ids for small files), and only if one differs
is a single commit made, with the head as its parent (a concurrent push makes it fail instead
of being overwritten). The token goes to HfApi and nowhere else.
"""

from __future__ import annotations

import re
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from adapterctl.errors import UsageError
from adapterctl.hub._client import SHA1_RE, api, check_repo_id, digest_bytes, hub
from adapterctl.hub.errors import HubError, hub_errors
from adapterctl.textsafe import clip

_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")
_BRANCH = re.compile(r"^(?!.*\.\.)(?!/)[A-Za-z0-9._/-]{1,200}(?<![/.])$")
README_LIMIT = 1 << 20  # a card larger than this is not merged (it would be rewritten in full)


@dataclass
class PushResult:
    repo: str
    branch: str
    commit: str
    url: str
    up_to_date: bool
    files: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"ok": True, "repo": self.repo, "branch": self.branch, "commit": self.commit, "url": self.url,
                "up_to_date": self.up_to_date, "files": self.files, "notes": self.notes}


def push(files: Iterable[Path], repo_id: str, *, token: Optional[str] = None, private: bool = False,
         revision: Optional[str] = None, commit_message: Optional[str] = None, split_roles: bool = False,
         also: Iterable[str] = (), license: Optional[str] = None, endpoint: Optional[str] = None) -> PushResult:
    from adapterctl.hub import upload

    also = tuple(dict.fromkeys(also))
    for layout in also:
        if layout not in upload.LAYOUTS:
            raise UsageError(f"--also takes {' or '.join(upload.LAYOUTS)}, not '{clip(layout, 40)}'")
    if license is not None and not _LICENSE.match(license):
        raise UsageError(f"'{clip(license, 80)}' is not a Hub license id",
                         hint="e.g. openrail++, apache-2.0, mit, other; 'none' leaves it out")
    branch = revision or "main"
    if SHA1_RE.match(branch) or not _BRANCH.match(branch):
        raise UsageError(f"cannot push to '{clip(branch, 80)}'", hint="--revision names a branch (created if missing)")
    check_repo_id(repo_id)
    files = list(files)
    if not files:
        raise UsageError("nothing to push", hint="adapterctl push FILE... OWNER/NAME")
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="adapterctl-push-")))
        uploads, notes = upload.build(files, stack, workdir, split_roles=split_roles, also=also)
        return _send(uploads, notes, repo_id, branch=branch, token=token, private=private,
                     message=commit_message, license=license, endpoint=endpoint)


def _send(uploads, notes, repo_id: str, *, branch: str, token, private: bool, message, license, endpoint) -> PushResult:
    from adapterctl.hub.card import render

    hf = hub()
    client = api(token, endpoint)
    with hub_errors(repo=repo_id, endpoint=endpoint, token=token, revision=branch) as ctx:
        client.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            client.create_branch(repo_id, branch=branch, exist_ok=True)
        current = client.repo_info(repo_id, revision=branch)
        if private and current.private is False:
            raise UsageError(f"'{clip(repo_id, 200)}' exists and is public; --private does not change that",
                             hint="make it private on the Hub first, or push without --private")
        head = current.sha
        names = [u.name for u in uploads] + ["README.md"]
        remote = {f.path: f for f in client.get_paths_info(repo_id, names, revision=head)} if head else {}
        existing = None
        if "README.md" in remote:
            ctx["filename"] = "README.md"
            existing = _read_card(hf, repo_id, head, remote["README.md"], token, endpoint)
        card = render(repo_id, [u.card_file() for u in uploads], license=license, existing=existing).encode("utf-8")
        card_digest = digest_bytes(card)
        changed = [u for u in uploads if not _same(remote.get(u.name), u.digest)]
        card_changed = not _same(remote.get("README.md"), card_digest)
        listing = [_entry(u, u not in changed) for u in uploads] + [
            {"path": "README.md", "sha256": card_digest.sha256, "size": card_digest.size,
             "status": "unchanged" if not card_changed else "uploaded"}]
        if head and not changed and not card_changed:
            return PushResult(repo_id, branch, head, _commit_url(client, repo_id, head), True, listing, notes)
        ops = [hf.CommitOperationAdd(path_in_repo=u.name, path_or_fileobj=str(u.local)) for u in changed]
        if card_changed:
            ops.append(hf.CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
        ctx["filename"] = None
        info = client.create_commit(repo_id, operations=ops, revision=branch, parent_commit=head,
                                    commit_message=message or _message(changed, card_changed))
    commit = getattr(info, "oid", None)
    if not commit or not SHA1_RE.match(str(commit)):
        raise HubError("the Hub accepted the commit but returned no commit id", hint="check the repository")
    return PushResult(repo_id, branch, commit, _commit_url(client, repo_id, commit), False, listing, notes)


def _same(remote, digest) -> bool:
    """Whether the file at the head is ``digest``, from the Hub's metadata alone (no download)."""
    if remote is None or getattr(remote, "size", None) != digest.size:
        return False
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        return getattr(lfs, "sha256", None) == digest.sha256
    return getattr(remote, "blob_id", None) == digest.git_sha1


def _read_card(hf, repo_id: str, head: str, remote, token, endpoint) -> str:
    if (getattr(remote, "size", 0) or 0) > README_LIMIT:
        raise UsageError(f"the repository's README.md is over {README_LIMIT >> 20} MiB; refusing to merge into it",
                         hint="shorten it, or remove it and push again")
    local = hf.hf_hub_download(repo_id, "README.md", revision=head, token=token, endpoint=endpoint)
    data = Path(local).read_bytes()[:README_LIMIT + 1]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the repository's README.md is not UTF-8; refusing to merge into it",
                         hint="re-save it as UTF-8 and push again") from None


def _entry(u, unchanged: bool) -> dict:
    out = {"path": u.name, "sha256": u.digest.sha256, "size": u.digest.size,
           "status": "unchanged" if unchanged else "uploaded", "layout": u.adapter.layout,
           "roles": u.adapter.roles()}
    if u.source:
        out.update(source=u.source, derived=u.derived)
    return out


def _message(changed, card_changed: bool) -> str:
    names = [u.name for u in changed] + (["README.md"] if card_changed else [])
    shown = ", ".join(clip(n, 80) for n in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"adapterctl push: {shown}"


def _commit_url(client, repo_id: str, commit: str) -> str:
    return f"{client.endpoint.rstrip('/')}/{repo_id}/commit/{commit}"
