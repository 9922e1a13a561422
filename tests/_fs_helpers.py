"""Helpers for the hostile-filesystem tests: special files made inside tmp_path, whole-tree
fingerprints, and a batch CLI runner whose every call has its own timeout.

Special files are always created by the test under tmp_path (never /dev/...): a FIFO, a character
device with the numbers of /dev/null (we run as root, so mknod works), a bound unix socket.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from _cli_helpers import CliResult, cli_env

from adapterctl.io.atomic import TMP_SUFFIX

# Raw characters that must never reach a terminal or a JSON consumer unescaped (\t and \n are fine).
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e"
                       "\u2060-\u2069\ufeff\ud800-\udfff]")

HANG = -999  # rc recorded for a call that ran past its own timeout


def make_fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


def make_chardev(p: Path) -> Path:
    os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # same numbers as /dev/null: reads give EOF
    return p


def make_socket(p: Path) -> Path:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(p))
    s.close()  # the socket inode stays on disk after close
    return p


def mkdirs(p: Path, *entries: str, copy: dict[str, Path] | None = None) -> Path:
    """Directory p holding user files `entries` ('name/' is an empty subdirectory) and copies {name: source}."""
    p.mkdir(parents=True)
    for name, source in (copy or {}).items():
        shutil.copyfile(source, p / name)
    for name in entries:
        (p / name).parent.mkdir(parents=True, exist_ok=True)
        (p / name).mkdir() if name.endswith("/") else (p / name).write_text(f"user data: {name}\n")
    return p


def link(p: Path, to: Path) -> Path:
    p.symlink_to(to)
    return p


def write(p: Path, data: bytes = b"old output") -> Path:
    p.write_bytes(data)
    return p


def tree(root: Path) -> dict[str, tuple]:
    """Everything under root, not following symlinks: type, inode, and content hash + mtime for files.

    Directory mtimes are left out on purpose: a temp file created and removed again is not a change
    the user can see, and the leftover check catches one that stays."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(mode):
                out[rel] = ("dir", st.st_ino, stat.S_IMODE(mode))
            elif stat.S_ISREG(mode):
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 64 << 20 else st.st_size
                out[rel] = ("file", st.st_ino, digest, st.st_mtime_ns, stat.S_IMODE(mode))
            else:
                out[rel] = ("special", stat.S_IFMT(mode), st.st_ino, st.st_rdev)
    return out


def leftovers(root: Path) -> list[str]:
    """Names ending in the writer's temp suffix, anywhere under root."""
    return sorted(str(Path(d, n).relative_to(root)) for d, ds, fs in os.walk(root) for n in ds + fs
                  if n.endswith(TMP_SUFFIX))


def diff(before: dict, after: dict) -> list[str]:
    """'path: appeared (file)', 'path: vanished (dir)', 'path: special became file', 'path: file changed'."""
    out = []
    for k in sorted(set(before) | set(after)):
        b, a = before.get(k), after.get(k)
        if b == a:
            continue
        if b is None:
            out.append(f"{k}: appeared ({a[0]})")
        elif a is None:
            out.append(f"{k}: vanished ({b[0]})")
        elif a[0] != b[0]:
            out.append(f"{k}: {b[0]} became {a[0]}")
        else:
            out.append(f"{k}: {b[0]} changed")
    return out


_BATCH = r"""
import io, json, signal, sys, traceback
from adapterctl.cli.main import run

class Hang(BaseException):
    pass

def alarm(*_):
    raise Hang()

# Python installs handlers without SA_RESTART, so a blocking open() of a FIFO is interrupted too.
signal.signal(signal.SIGALRM, alarm)
jobs = json.loads(sys.stdin.read())
real_out, real_err = sys.stdout, sys.stderr
results = []
for argv, limit in jobs:
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape", write_through=True)
    sys.stdout, sys.stderr = out, err
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        rc = run(argv)
    except Hang:
        rc = -999
        err.write("HANG: the call ran past its timeout\n")
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        err.write(traceback.format_exc())
        rc = 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout, sys.stderr = real_out, real_err
    # Undecodable bytes come back as lone surrogates, which FORBIDDEN flags as raw bytes on the terminal.
    results.append({"rc": rc, "stdout": out.buffer.getvalue().decode("utf-8", "surrogateescape"),
                    "stderr": err.buffer.getvalue().decode("utf-8", "surrogateescape")})
real_out.write(json.dumps(results))
"""


def run_batch(calls: list[list], *, per_call: float = 10, prefix: tuple[str, ...] = (),
              cwd: Path | None = None) -> list[CliResult]:
    """Run each argv through ``adapterctl.cli.main.run`` in one child, each under its own SIGALRM timeout,
    so one hanging call (e.g. a FIFO opened for writing) is reported as rc HANG instead of stalling all."""
    jobs = [[[os.fsdecode(a) if isinstance(a, os.PathLike) else str(a) for a in argv], per_call] for argv in calls]
    proc = subprocess.run([*prefix, sys.executable, "-c", _BATCH], input=json.dumps(jobs).encode(), cwd=cwd,
                          env=cli_env(), capture_output=True, timeout=per_call * len(calls) + 60)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    return [CliResult(r["rc"], r["stdout"], r["stderr"]) for r in json.loads(proc.stdout)]


def drop_file_caps() -> tuple[str, ...] | None:
    """A command prefix under which permission bits apply, or None if that cannot be had."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return None
    # root ignores permission bits through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH; without them,
    # a mode-000 file is unreadable even to its owner, and everything else root owns still opens.
    caps = "-dac_override,-dac_read_search"
    return (setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--")


def one_error_line(r: CliResult) -> str | None:
    """None when stderr is exactly one 'error: ' line without a traceback, else what is wrong."""
    lines = r.stderr.splitlines()
    if "Traceback" in r.stderr + r.stdout:
        return f"traceback: {r.stderr[-400:]!r}"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"stderr is not one 'error: ' line: {r.stderr[:400]!r}"
    return None


def json_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def wait_mid_write(proc: subprocess.Popen, out: Path, *, min_bytes=4 << 20, limit=1.5) -> str | None:
    """Until the process holds a file in `out` with min_bytes written (any name: an O_TMPFILE shows as
    '/out/#123 (deleted)'), or `limit` seconds have passed. Returns the fd's link, or None."""
    prefix, start = f"{out}/", time.monotonic()
    fd_dir = f"/proc/{proc.pid}/fd"
    while proc.poll() is None and time.monotonic() - start < limit:
        try:
            for fd in os.listdir(fd_dir):
                link = os.readlink(f"{fd_dir}/{fd}")
                if link.startswith(prefix) and os.stat(f"{fd_dir}/{fd}").st_size >= min_bytes:
                    return link
        except OSError:  # an fd closed under us, or the process exited
            pass
        time.sleep(0.002)
    return None
