"""What every Hub command shares: importing huggingface_hub (quietly), the client, file digests,
the cache's layout, and the rule for names that may be written locally."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from adapterctl.errors import MissingExtra
from adapterctl.hub.errors import UnsafeRemoteName
from adapterctl.textsafe import clip

_CHUNK = 1 << 20
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_quieted = False


def hub():
    """huggingface_hub, imported on first use, with its progress bars and log lines off: the
    command's own output is the only thing on stdout/stderr (--json stays parseable)."""
    global _quieted
    try:
        import huggingface_hub
        # Submodules by name: the package's attributes are lazy, its submodules are not attributes until imported.
        import huggingface_hub.constants  # noqa: F401
        import huggingface_hub.errors  # noqa: F401
        import huggingface_hub.hf_api  # noqa: F401
        import huggingface_hub.utils  # noqa: F401
    except ImportError:
        raise MissingExtra("push, pull and sync need huggingface_hub",
                           hint="pip install 'adapterctl[hub]'") from None
    if not _quieted:
        huggingface_hub.utils.disable_progress_bars()
        huggingface_hub.utils.logging.set_verbosity_error()
        _quieted = True
    return huggingface_hub


def offline() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub read it at import or as the environment says now."""
    return bool(hub().is_offline_mode()) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def endpoint() -> Optional[str]:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def api(token: Optional[str], endpoint_url: Optional[str]):
    """An HfApi; ``token=None`` lets huggingface_hub use HF_TOKEN or the saved login."""
    from adapterctl.version import __version__

    return hub().HfApi(endpoint=endpoint_url, token=token, library_name="adapterctl", library_version=__version__)


def check_repo_id(repo_id: str) -> None:
    """Refuse a malformed repository id before any request (one line, no traceback)."""
    from adapterctl.errors import UsageError

    try:
        hub().utils.validate_repo_id(repo_id)
    except ValueError:
        raise UsageError(f"'{clip(repo_id, 200)}' is not a valid repository id", hint="write it as OWNER/NAME") from None
    if "/" not in repo_id:
        raise UsageError(f"'{clip(repo_id, 200)}' has no owner", hint="write it as OWNER/NAME")


@dataclass(frozen=True)
class Digest:
    sha256: str
    git_sha1: str  # git's blob id: what the Hub reports for a file stored outside LFS
    size: int


def digest_file(path: Path) -> Digest:
    size = os.stat(path).st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    seen = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
            seen += len(chunk)
    if seen != size:  # changed while read: the git id above would be wrong
        return digest_bytes(Path(path).read_bytes())
    return Digest(sha256.hexdigest(), sha1.hexdigest(), size)


def digest_bytes(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest(), hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest(),
                  len(data))


# -- the huggingface_hub cache (its documented layout) ------------------------------------------
def cache_dir() -> Path:
    return Path(hub().constants.HF_HUB_CACHE)


def repo_cache(repo_id: str) -> Path:
    return cache_dir() / ("models--" + repo_id.replace("/", "--"))


def snapshot_path(repo_id: str, commit: str, name: str) -> Path:
    return repo_cache(repo_id) / "snapshots" / commit / Path(*name.split("/"))


def blob_name(pointer: Path) -> Optional[str]:
    """The blob a snapshot entry links to. Its name is the Hub's ETag when the file was fetched:
    the sha256 for an LFS file, the git blob id for a small one. None where the cache holds
    copies instead of links (no symlink support)."""
    try:
        return Path(os.readlink(pointer)).name
    except OSError:
        return None


def evict(pointer: Path) -> None:
    """Remove a corrupted download from the cache (its blob and the snapshot link), so that the
    next pull fetches it again instead of trusting the bad copy."""
    try:
        target = pointer.resolve(strict=True) if pointer.is_symlink() else None
    except OSError:
        target = None
    for path in (target, pointer):
        if path is not None:
            try:
                path.unlink()
            except OSError:
                pass


# -- remote names -------------------------------------------------------------------------------
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_remote_name(name: str) -> str:
    """A repository path that may be written under the output directory, or UnsafeRemoteName.
    Checked before anything is downloaded. Hidden segments are refused too: the library (ls,
    lock, sync) skips hidden files, so such a file would be pulled and then never seen."""
    shown = clip(name, 200)
    reason = None
    if not name or name.startswith("/") or _DRIVE.match(name):
        reason = "is absolute"
    elif "\\" in name:
        reason = "contains a backslash"
    elif _CONTROL.search(name):
        reason = "contains a control character"
    else:
        for part in name.split("/"):
            if part in ("", ".", ".."):
                reason = "has an empty, '.' or '..' segment"
                break
            if part.startswith("."):
                raise UnsafeRemoteName(f"refusing the repository file '{shown}': it has a hidden segment, which "
                                       "ls, lock and sync skip", hint="nothing was downloaded; name another FILE")
    if reason:
        raise UnsafeRemoteName(f"refusing the repository file '{shown}': its name {reason} and could be written "
                               "outside the output directory",
                               hint="nothing was downloaded; ask the repository's owner to rename it")
    return name
