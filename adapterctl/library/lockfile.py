"""The lock file: what a library holds, byte for byte, in a form CI can check and ``sync`` can fetch.

    {"files": [{"architecture": "sdxl", "layout": "kohya", "manifest_sha256": "<hex>",
                "origin": {"path": "painting.safetensors", "repo": "user/name", "revision": "<40 hex>"},
                "path": "styles/painting.safetensors", "roles": {"content": 80, "style": 80},
                "sha256": "<hex>", "size": 12345}],
     "format": "adapterctl.lock/1"}

Written atomically, ASCII JSON (a UTF-8 subset: other characters as ``\\uXXXX``), sorted keys,
2-space indent, trailing newline, entries sorted by path, so the same library always gives the
same bytes. A lock is read as untrusted input: bounded size, bounded JSON, strict types, no
unknown keys, only paths a scan of the library could produce (docs/library.md has the rules).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapterctl.errors import InputNotFound, InvalidFile, OutputExists, UsageError
from adapterctl.io import safe_json
from adapterctl.library.paths import path_problem
from adapterctl.library.read import Row
from adapterctl.textsafe import clip, display_path

LOCK_FORMAT = "adapterctl.lock/1"
LOCK_NAME = "adapters.lock"
MAX_LOCK_BYTES = 64 * 1024 * 1024  # about 100,000 entries
_HEX64 = r"^[0-9a-f]{64}$"
_SIZE_MAX = (1 << 63) - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LockOrigin(_Strict):
    repo: str = Field(min_length=1, max_length=1000)
    revision: str = Field(pattern=r"^[0-9a-f]{40}$")
    path: str = Field(min_length=1, max_length=1000)


class LockEntry(_Strict):
    path: str
    sha256: str = Field(pattern=_HEX64)
    size: int = Field(ge=0, le=_SIZE_MAX)
    origin: Optional[LockOrigin] = None
    # An adapter that opens: its manifest digest and what it is. One that does not: the reason.
    manifest_sha256: Optional[str] = Field(None, pattern=_HEX64)
    architecture: Optional[str] = Field(None, min_length=1, max_length=200)
    layout: Optional[str] = Field(None, min_length=1, max_length=200)
    roles: Optional[dict[str, int]] = None
    invalid: Optional[str] = Field(None, max_length=4000)

    @model_validator(mode="after")
    def _one_kind(self):
        problem = path_problem(self.path)
        if problem:
            raise ValueError(f"path {clip(repr(self.path), 80)} {problem}")
        described = (self.manifest_sha256, self.architecture, self.layout, self.roles)
        if self.invalid is None and any(v is None for v in described):
            raise ValueError("an entry needs manifest_sha256, architecture, layout and roles, or invalid")
        if self.invalid is not None and any(v is not None for v in described):
            raise ValueError("an invalid entry carries no manifest fields")
        if self.roles is not None and (len(self.roles) > 16 or any(n < 0 for n in self.roles.values())):
            raise ValueError("roles must map at most 16 names to counts")
        return self


class LockFile(_Strict):
    format: Literal["adapterctl.lock/1"]
    files: list[LockEntry]

    @model_validator(mode="after")
    def _unique(self):
        seen: set[str] = set()
        for entry in self.files:
            if entry.path in seen:
                raise ValueError(f"path {clip(repr(entry.path), 80)} appears twice")
            seen.add(entry.path)
        return self

    def by_path(self) -> dict[str, LockEntry]:
        return {e.path: e for e in self.files}


# -- reading ------------------------------------------------------------------------------

def read_lock(path: str | os.PathLike) -> LockFile:
    """Parse and check a lock file. Missing or not a regular file: InputNotFound (exit 2); not
    a lock, an unknown format version, or any bad field: InvalidFile (exit 3), in one line."""
    path = Path(path)
    doc = _load(path)
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith("adapterctl.lock/"):
        raise InvalidFile(f"not an adapterctl lock file (no \"format\": \"{LOCK_FORMAT}\")", path=str(path))
    if fmt != LOCK_FORMAT:
        raise InvalidFile(f"lock format '{clip(fmt, 60)}' is not supported (this adapterctl reads {LOCK_FORMAT})",
                          path=str(path), hint="upgrade adapterctl, or re-create the lock with 'adapterctl lock'")
    try:
        return LockFile.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "document"
        msg = str(err.get("msg")).removeprefix("Value error, ")
        raise InvalidFile(f"bad lock at '{clip(where, 80)}': {clip(msg, 200)}", path=str(path)) from None


def _load(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    except FileNotFoundError:
        raise InputNotFound("no such lock file", path=str(path),
                            hint="create one with 'adapterctl lock DIR'") from None
    except OSError as exc:
        raise InputNotFound(f"cannot open: {exc.strerror}", path=str(path)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # checked before open(), which refuses a directory with its own error
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise InputNotFound("is a directory, expected a lock file", path=str(path),
                                hint=f"the lock is usually DIR/{LOCK_NAME}")
        raise InputNotFound("not a regular file", path=str(path))
    with open(fd, "rb", buffering=0) as fh:
        raw = fh.read(MAX_LOCK_BYTES + 1)
    if len(raw) > MAX_LOCK_BYTES:
        raise InvalidFile(f"lock file is larger than {MAX_LOCK_BYTES} bytes", path=str(path))
    try:
        return safe_json.loads(raw)
    except safe_json.JsonRejected as exc:
        raise InvalidFile(f"lock file is not valid JSON: {exc}", path=str(path)) from None


def is_lock_file(path: Path) -> bool:
    """Whether ``path`` holds an adapterctl lock of any version: what ``lock`` may replace unasked."""
    try:
        doc = _load(path)
    except (InputNotFound, InvalidFile):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("format"), str) and doc["format"].startswith("adapterctl.lock/")


# -- writing ------------------------------------------------------------------------------

def entry_of(row: Row) -> dict:
    """The lock entry of a row read with sha256."""
    if row.sha256 is None or row.size is None:
        raise ValueError(f"{row.rel}: a lock entry needs the sha256 and size")
    try:
        row.rel.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"file name {display_path(row.rel)} is not UTF-8; a lock cannot name it",
                         hint="rename the file") from None
    problem = path_problem(row.rel)
    if problem:
        raise UsageError(f"file name {display_path(row.rel)} {problem}; a lock cannot name it", hint="rename the file")
    entry: dict = {"path": row.rel, "sha256": row.sha256, "size": row.size, "origin": row.origin}
    if row.status == "ok":
        entry.update(manifest_sha256=row.manifest_sha256, architecture=row.architecture, layout=row.layout,
                     roles=dict(row.roles))
    else:
        entry["invalid"] = row.reason or "does not open as an adapter"
    return entry


def render_lock(rows: list[Row]) -> str:
    entries = sorted((entry_of(r) for r in rows), key=lambda e: e["path"])
    doc = {"format": LOCK_FORMAT, "files": entries}
    LockFile.model_validate(json.loads(json.dumps(doc)))  # what we write, we can read back
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


def write_lock(path: Path, text: str, *, force: bool, inputs: tuple[Path, ...] = ()) -> bool:
    """Write ``text`` at ``path`` atomically; False when the same bytes are already there.

    An existing adapterctl lock is replaced without --force: re-locking is the normal workflow,
    and the lock is what this command writes. Anything else there needs --force, and even then
    only a regular file or a link is replaced (atomic_write's rules), never an input.
    """
    from adapterctl.io.atomic import atomic_write, check_output

    data = text.encode("ascii")
    if os.path.lexists(path):
        check_output(path, force=True, inputs=inputs)  # a directory, FIFO or input: refused even with --force
        if is_lock_file(path):
            if _same_bytes(path, data):
                return False
        elif not force:
            raise OutputExists("exists and is not an adapterctl lock file", path=str(path),
                               hint="pass --force to replace it, or choose another -o")
        force = True
    with atomic_write(path, force=force, inputs=inputs) as fh:
        fh.write(data)
    return True


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(data) + 1) == data
    except OSError:
        return False
