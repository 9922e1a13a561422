"""All-or-nothing writes of several files into a directory (pull, sync).

Files are prepared in a hidden staging directory on the same filesystem as the target: inside
it when it exists, beside it when it does not (then the staging directory simply becomes the
target). Nothing under the target changes until every file is staged and checked; then each is
renamed into place, and if a rename fails, the ones already made are undone (a replaced file
is restored from its backup). Every exit path the process controls removes the staging
directory; a SIGKILL can leave it, hidden (``.adapterctl-stage.*.adapterctl-tmp``), which the
library commands skip.

Existing files: an identical one is kept as is; another one is replaced only with ``force``,
and only if it is a regular file or a link (never a directory, FIFO or device). Directories on
the way to a file must be real directories: a symlinked subdirectory could point anywhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from adapterctl.errors import InputNotFound, OutputExists, UsageError
from adapterctl.hub.errors import IntegrityError
from adapterctl.io.atomic import TMP_SUFFIX, parent_of
from adapterctl.library.read import sha256_file
from adapterctl.textsafe import display_path

_CHUNK = 1 << 20


class Stage:
    def __init__(self, target: Path, *, force: bool):
        self.target = Path(target)
        self.force = force
        self.exists = _is_real_dir(self.target)
        where = self.target if self.exists else parent_of(self.target)
        if not where.is_dir():
            raise InputNotFound("output directory's parent does not exist", path=display_path(where))
        try:
            self.root = Path(tempfile.mkdtemp(prefix=".adapterctl-stage." if self.exists else
                                              f".{self.target.name[:100]}.", suffix=TMP_SUFFIX, dir=where))
        except PermissionError:
            raise InputNotFound("output directory is not writable", path=display_path(where)) from None
        self.files: list[str] = []

    # -- before anything is staged: what would happen to each target path --------------------
    def status(self, rel: str, sha256: Optional[str]) -> str:
        """'new', 'unchanged' (an identical file is there), 'replace' (with force), or 'exists'
        (a file is there and ``sha256`` is not known yet: ask again once it is); OutputExists
        when a different file is there and force is off."""
        dest = self.target / rel
        self._check_parents(rel)
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return "new"
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFREG and sha256 is not None and sha256_file(dest)[0] == sha256:
            return "unchanged"
        if kind not in (stat.S_IFREG, stat.S_IFLNK):
            raise UsageError("a directory or special file is where a pulled file would go; it is never replaced",
                             path=display_path(dest), hint="move it away, or pull into another -o DIR")
        if not self.force:
            if sha256 is None:
                return "exists"
            raise OutputExists("output exists and differs", path=display_path(dest),
                               hint="pass --force to replace it, or pull into another -o DIR")
        return "replace"

    def _check_parents(self, rel: str) -> None:
        here = self.target
        for part in rel.split("/")[:-1]:
            here = here / part
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(st.st_mode):
                raise UsageError("not a real directory on the way to a pulled file (a link or a file)",
                                 path=display_path(here), hint="pull into another -o DIR")

    # -- staging --------------------------------------------------------------------------------
    def copy_verified(self, rel: str, source: Path, sha256: str) -> None:
        """Copy ``source`` into the stage, hashing as it goes: the bytes written are the bytes checked."""
        dest = self._staged(rel)
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(dest, "xb") as out:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise IntegrityError(f"'{display_path(rel)}' changed in the cache after it was verified; nothing was "
                                 "written", hint="run the command again")

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._staged(rel).write_bytes(data)

    def drop(self, rel: str) -> None:
        """Leave ``rel`` out after all (an identical file is already there)."""
        self.files.remove(rel)
        (self.root / rel).unlink(missing_ok=True)

    def path(self, rel: str) -> Path:
        """Where a file made in place (pull --role) goes; the caller writes it there."""
        return self._staged(rel)

    def _staged(self, rel: str) -> Path:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(rel)
        return dest

    # -- commit ---------------------------------------------------------------------------------
    def commit(self) -> None:
        mask = os.umask(0)
        os.umask(mask)
        for rel in self.files:
            os.chmod(self.root / rel, 0o644 & ~mask)
        if not self.exists:
            for dirpath, _dirs, _files in os.walk(self.root):
                os.chmod(dirpath, 0o755 & ~mask)
            if os.path.lexists(self.target):
                raise OutputExists("output directory appeared meanwhile", path=display_path(self.target))
            os.rename(self.root, self.target)
            self.root = None
            return
        done: list[tuple[Path, Optional[Path]]] = []
        made: list[Path] = []
        backups = self.root / ".old"
        try:
            for i, rel in enumerate(self.files):
                dest = self.target / rel
                self._check_parents(rel)
                for parent in reversed(list(dest.relative_to(self.target).parents)[:-1]):
                    here = self.target / parent
                    if not os.path.lexists(here):
                        here.mkdir(mode=0o755 & ~mask)
                        made.append(here)
                backup = None
                if os.path.lexists(dest):
                    backups.mkdir(exist_ok=True)
                    backup = backups / str(i)
                    os.rename(dest, backup)
                done.append((dest, backup))
                os.rename(self.root / rel, dest)
        except BaseException:
            for dest, backup in reversed(done):  # undo: the directory must look as it did
                try:
                    if os.path.lexists(dest) and (backup is None or os.path.lexists(backup)):
                        os.unlink(dest)
                    if backup is not None:
                        os.rename(backup, dest)
                except OSError:
                    pass
            for here in reversed(made):
                try:
                    here.rmdir()
                except OSError:
                    pass
            raise

    def cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


@contextmanager
def staging(target: Path, *, force: bool) -> Iterator[Stage]:
    """A Stage that is committed when the block succeeds and removed on every exit."""
    stage = Stage(target, force=force)
    try:
        yield stage
        stage.commit()
    finally:
        stage.cleanup()


def _is_real_dir(path: Path) -> bool:
    try:
        st = os.stat(path)  # a link to a directory is the user's choice of output: followed
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise InputNotFound(f"cannot use this output directory: {exc.strerror}", path=display_path(path)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError("output must be a directory", path=display_path(path), hint="-o DIR")
    return True
