"""Atomic output files: write to a temporary file in the target directory, then rename.

A process killed mid-write leaves the old file (or nothing) at the target path; the only trace is
a hidden ``.<name>.*.adapterctl-tmp`` file beside it. That needs no fsync: the rename is atomic
for every other process. Surviving a power loss does, so ``durable=True`` (CLI ``--fsync``) syncs
the file before the rename and the directory after it; it is off by default, as for ``cp``. Without ``force`` an existing target is never
replaced, and the input of an operation can never be its output.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from adapterctl.errors import InputNotFound, OutputExists, UsageError

TMP_SUFFIX = ".adapterctl-tmp"


def check_output(path: Path, *, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an output that exists (without force), is a directory, or is one of the inputs."""
    for src in inputs:
        try:
            if path.exists() and os.path.samefile(path, src):
                raise UsageError("the output is the input file; inputs are never modified",
                                 path=str(path), hint="choose another -o/--output")
        except OSError:
            pass
    if path.is_dir():
        raise UsageError("output path is a directory", path=str(path))
    if path.exists() and not force:
        raise OutputExists("output exists", path=str(path), hint="pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputNotFound("output directory does not exist", path=str(parent))


@contextmanager
def atomic_write(path: str | os.PathLike, *, force: bool = False, inputs: tuple[Path, ...] = (),
                 durable: bool = False) -> Iterator[BinaryIO]:
    path = Path(path)
    check_output(path, force=force, inputs=inputs)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=parent)
    except PermissionError:
        raise InputNotFound("output directory is not writable", path=str(parent)) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        if force:
            os.replace(tmp, path)
        else:
            # link() fails if the target appeared meanwhile, so a race cannot clobber a file.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExists("output exists", path=str(path), hint="pass --force to overwrite it") from None
            except OSError:
                if path.exists():
                    raise OutputExists("output exists", path=str(path)) from None
                os.replace(tmp, path)  # filesystems without hard links
            tmp.unlink(missing_ok=True)
        if durable:
            _fsync_dir(parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
