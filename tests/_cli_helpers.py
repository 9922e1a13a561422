"""Running the real adapterctl CLI from tests: one subprocess per call, or many calls in one.

A cold CLI start costs ~0.3 s of CPU, so the big matrices (every bad input x every command) run
their calls inside a single child process through ``adapterctl.cli.main.run`` with fresh
stdout/stderr per call; spot checks still go through ``python -m adapterctl.cli.main``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class CliResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.splitlines()


def cli_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ADAPTERCTL_DEBUG", None)  # the CLI must never need it to stay on one line
    env["COLUMNS"] = "200"
    return env


def run_cli(*args: str | os.PathLike, cwd: Path | None = None, timeout: float = 60,
            prefix: tuple[str, ...] = (), **kw) -> CliResult:
    """``prefix`` wraps the interpreter, e.g. in setpriv to drop capabilities."""
    proc = subprocess.run([*prefix, sys.executable, "-m", "adapterctl.cli.main", *map(str, args)], cwd=cwd,
                          env=cli_env(), capture_output=True, timeout=timeout, **kw)
    return CliResult(proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8"))


_BATCH = r"""
import io, json, os, sys, traceback
from adapterctl.cli.main import run

jobs = json.loads(sys.stdin.read())
real_out, real_err, real_env, real_cwd = sys.stdout, sys.stderr, dict(os.environ), os.getcwd()
results = []
for job in jobs:
    os.environ.update(job["env"])
    os.chdir(job["cwd"] or real_cwd)
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    sys.stdout, sys.stderr = out, err
    try:
        rc = run(job["argv"])
    except SystemExit as exc:  # what the real entry point would turn into an exit code
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # a real process would print this traceback and exit 1
        err.write(traceback.format_exc())
        rc = 1
    finally:
        sys.stdout, sys.stderr = real_out, real_err
        os.environ.clear()
        os.environ.update(real_env)
        os.chdir(real_cwd)
    results.append({"rc": rc, "stdout": out.buffer.getvalue().decode("utf-8"),
                    "stderr": err.buffer.getvalue().decode("utf-8")})
real_out.write(json.dumps(results))
"""


def run_cli_jobs(jobs: list[tuple[list, Path | None, dict[str, str]]], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, timeout: float = 120) -> list[CliResult]:
    """Run each (argv, cwd, extra environment) through the CLI's ``run()`` in one fresh interpreter,
    in order; ``env`` is the interpreter's environment (default ``cli_env()``)."""
    payload = [{"argv": [str(a) for a in argv], "cwd": str(job_cwd) if job_cwd else None, "env": extra}
               for argv, job_cwd, extra in jobs]
    proc = subprocess.run([sys.executable, "-c", _BATCH], input=json.dumps(payload).encode(), cwd=cwd,
                          env=env or cli_env(), capture_output=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-3000:]
    return [CliResult(r["rc"], r["stdout"], r["stderr"]) for r in json.loads(proc.stdout)]


def listing(d: Path) -> dict[str, str]:
    """Every entry under d (hidden ones too), with a hash of each file's bytes."""
    import hashlib

    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), d) + "/"] = "dir"
        for name in files:
            p = os.path.join(root, name)
            out[os.path.relpath(p, d)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def run_cli_batch(calls: list[list[str | os.PathLike]], *, cwd: Path | None = None,
                  timeout: float = 120) -> list[CliResult]:
    """Run each argv through the CLI's ``run()`` in one fresh interpreter, in order."""
    return run_cli_jobs([(argv, None, {}) for argv in calls], cwd=cwd, timeout=timeout)
