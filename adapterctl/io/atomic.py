"""Atomic outputs that touch nothing but their target.

A file is written into an *anonymous* temporary file in the target directory (Linux
``O_TMPFILE``), checked, and only then given its name. A process killed at any point before that
(even by SIGKILL) leaves nothing behind: the kernel frees a file that never had a name. Where
``O_TMPFILE`` is unavailable, a hidden ``.<name>.*.adapterctl-tmp`` file is used instead and
removed on every exit path the process controls (errors, SIGINT, SIGTERM; see cli/main.py).

What may be replaced, and only with ``force``: a regular file, or a symbolic link (the link
itself is replaced; the file it points to is never written). Never a directory, FIFO, device or
socket, and never an input of the operation. Directory outputs (peft) have their own, stricter
rule in ``check_directory_output``.

No fsync by default: the rename is atomic for every other process. ``durable=True`` (CLI
``--fsync``) syncs the file before it is named and the directory after, to survive a power loss.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Optional

from adapterctl.errors import InputNotFound, OutputExists, UsageError

TMP_SUFFIX = ".adapterctl-tmp"

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def parent_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _lstat(path: Path) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ENOTDIR (a path through a file), ELOOP, EACCES...
        raise InputNotFound(f"cannot use this output path: {exc.strerror}", path=str(path)) from None


def refuse_inputs(path: Path, inputs: Iterable[Path]) -> None:
    """The output must not be an input, nor (for a directory output) contain one."""
    for src in inputs:
        try:
            if os.path.samefile(path, src):
                raise UsageError("the output is the input file; inputs are never modified", path=str(path),
                                 hint="choose another -o/--output")
        except OSError:
            pass


def check_output(path: Path, *, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse an output that exists (without force), is not a regular file or link, or is an input."""
    refuse_inputs(path, inputs)
    if _replaceable(path) and not force:
        raise OutputExists("output exists", path=str(path), hint="pass --force to overwrite it")
    _existing_parent(path)


@contextmanager
def atomic_write(path: str | os.PathLike, *, force: bool = False, inputs: tuple[Path, ...] = (),
                 durable: bool = False, verify: Optional[Callable[[int], None]] = None) -> Iterator[BinaryIO]:
    """Yield a file to write; on success name it ``path``. ``verify(fd)`` runs before naming."""
    path = Path(path)
    check_output(path, force=force, inputs=inputs)
    parent = parent_of(path)
    fd, tmp = _open_temp(parent, path.name)
    try:
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            if verify is not None:
                verify(fh.fileno())
            if durable:
                os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), 0o644 & ~_umask())
            if tmp is None:  # anonymous: give it a name only now
                tmp = _link_anonymous(fh.fileno(), path, parent, force=force)
        if tmp is not None:
            _rename_named(tmp, path, force=force)
        if durable:
            _fsync_dir(parent)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def _open_temp(parent: Path, name: str) -> tuple[int, Optional[Path]]:
    """(fd, None) for an anonymous O_TMPFILE file; (fd, path) for a hidden named one."""
    flag = getattr(os, "O_TMPFILE", 0)
    with _writable(parent):
        if flag and os.path.isdir("/proc/self/fd"):
            try:
                return os.open(parent, flag | os.O_RDWR, 0o600), None
            except OSError as exc:
                if isinstance(exc, PermissionError) or exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR,
                                                                         errno.EINVAL, errno.ENOENT):
                    raise
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name[:100]}.", suffix=TMP_SUFFIX, dir=parent)
    return fd, Path(tmp_name)


def _link_anonymous(fd: int, path: Path, parent: Path, *, force: bool) -> Optional[Path]:
    """Name an O_TMPFILE file. Without force, at ``path`` directly (None is returned: done); with
    force, at a hidden name that ``_rename_named`` then moves over the old file."""
    if not force:
        # link() fails if the target appeared meanwhile, so a race cannot clobber a file.
        try:
            _name_fd(fd, path)
        except FileExistsError:
            raise OutputExists("output exists", path=str(path), hint="pass --force to overwrite it") from None
        return None
    hidden = parent / f".{path.name[:100]}.{secrets.token_hex(6)}{TMP_SUFFIX}"
    _name_fd(fd, hidden)
    return hidden


def _name_fd(fd: int, path: Path) -> None:
    # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names an O_TMPFILE file. Python calls plain
    # link() (which would link the magic symlink itself) unless a dir_fd is given, so give one.
    dir_fd = os.open(parent_of(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=dir_fd, follow_symlinks=True)
    finally:
        os.close(dir_fd)


def _rename_named(tmp: Path, path: Path, *, force: bool) -> None:
    if force:
        _replaceable(path)
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExists("output exists", path=str(path), hint="pass --force to overwrite it") from None
    except OSError:
        if os.path.lexists(path):
            raise OutputExists("output exists", path=str(path)) from None
        os.replace(tmp, path)  # filesystems without hard links
    tmp.unlink(missing_ok=True)


def _replaceable(path: Path) -> bool:
    """Whether something is at ``path``; raise if it is what a file output may never replace.

    Checked when the command starts and again right before the rename, so a FIFO or directory
    that appeared meanwhile stays."""
    st = _lstat(path)
    if st is None:
        return False
    kind = stat.S_IFMT(st.st_mode)
    if kind not in (stat.S_IFREG, stat.S_IFLNK):
        raise UsageError(f"output path is {_KINDS.get(kind, 'not a regular file')}; adapterctl replaces only "
                         "regular files", path=str(path), hint="choose another -o/--output")
    return True


def _existing_parent(path: Path) -> Path:
    parent = parent_of(path)
    if not parent.is_dir():
        raise InputNotFound("output directory does not exist", path=str(parent))
    return parent


@contextmanager
def _writable(parent: Path) -> Iterator[None]:
    try:
        yield
    except PermissionError:
        raise InputNotFound("output directory is not writable", path=str(parent)) from None


def check_directory_output(path: Path, *, force: bool, inputs: Iterable[Path], allowed: frozenset[str]) -> None:
    """A directory output may replace only a real directory that holds nothing but ``allowed``
    regular files (what adapterctl itself would write there), and that neither is, nor contains,
    nor lies above an input. Anything else is refused before a byte is written."""
    refuse_inputs(path, inputs)
    st = _lstat(path)
    if st is not None:
        kind = stat.S_IFMT(st.st_mode)
        if kind != stat.S_IFDIR:
            what = "a symbolic link" if kind == stat.S_IFLNK else _KINDS.get(kind, "a file")
            raise UsageError(f"output must be a directory, and {what} is there", path=str(path),
                             hint="choose another -o/--output")
        if not force:
            raise OutputExists("output directory exists", path=str(path), hint="pass --force to replace it")
        real = os.path.realpath(path)
        for src in inputs:
            inside = os.path.realpath(src)
            if inside == real or inside.startswith(real.rstrip(os.sep) + os.sep):
                raise UsageError("the output directory holds an input; inputs are never modified", path=str(path),
                                 hint="choose another -o/--output")
        for entry in _entries(path):
            if entry.name not in allowed or not entry.is_file(follow_symlinks=False):
                from adapterctl.textsafe import clip

                raise UsageError(f"refusing to replace a directory that holds '{clip(entry.name, 80)}'; --force "
                                 f"replaces only a directory holding nothing but {', '.join(sorted(allowed))}",
                                 path=str(path), hint="choose another -o/--output")
    _existing_parent(path)


def _entries(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError as exc:
        raise InputNotFound(f"cannot list the output directory: {exc.strerror}", path=str(path)) from None


@contextmanager
def atomic_directory(path: str | os.PathLike, *, force: bool, inputs: tuple[Path, ...] = (),
                     allowed: frozenset[str], verify: Optional[Callable[[Path], None]] = None) -> Iterator[Path]:
    """Yield a hidden staging directory beside ``path``; on success it replaces ``path``.

    The staging directory is removed on every exit path the process controls. A SIGKILL can leave
    it (a hidden ``.<name>.*.adapterctl-tmp`` directory); the target is then untouched.
    """
    path = Path(path)
    check_directory_output(path, force=force, inputs=inputs, allowed=allowed)
    parent = parent_of(path)
    with _writable(parent):
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name[:100]}.", suffix=TMP_SUFFIX, dir=parent))
    try:
        yield staging
        if verify is not None:
            verify(staging)
        os.chmod(staging, 0o755 & ~_umask())
        if os.path.lexists(path):
            check_directory_output(path, force=force, inputs=inputs, allowed=allowed)  # unchanged meanwhile?
            graveyard = Path(tempfile.mkdtemp(prefix=f".{path.name[:100]}.old.", suffix=TMP_SUFFIX, dir=parent))
            old, swapped = graveyard / "old", False
            try:
                os.rename(path, old)
                try:
                    os.rename(staging, path)
                    swapped = True
                except BaseException:
                    os.rename(old, path)  # put the old directory back before anything else
                    raise
            finally:
                if swapped or not os.path.lexists(old):  # never delete an old directory that is not replaced
                    shutil.rmtree(graveyard, ignore_errors=True)
        else:
            try:
                os.rename(staging, path)
            except OSError as exc:
                if os.path.lexists(path):
                    raise OutputExists("output directory exists", path=str(path)) from None
                raise exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
