"""Every CLI command on every file of the generated hostile corpus (tests/hostile_corpus.py).

The whole matrix (cases x 11 commands, plus 'validate OUT' on every output written) runs once, in two
child interpreters in parallel, from a module-scoped fixture; then one test per case asserts the
universal contract for that case and lists every broken invariant by command:

- each call finishes within CALL_LIMIT s; each child's peak RSS stays under RSS_LIMIT;
- exit code in {0, 2..6} (validate: 0 or 1); never 70, never a traceback;
- a failing non-validate command prints exactly one stderr line 'error: ...' and nothing else on stdout,
  or with --json one object {"ok": false, "error": {"code", "message", "hint"}};
- --json stdout always parses as strict JSON (no NaN/Infinity tokens);
- no raw control/bidi character (nor an emoji rendered from ':smile:') in stdout or stderr;
- outputs: nothing left after a failure, exactly the output after a success, never a temp file;
  every output opens with safetensors and reads back, and passes 'adapterctl validate';
- the input is unchanged (bytes and mtime); foreign metadata is carried verbatim where asked;
- the per-case expectations of hostile_corpus.Case (exit codes, validate verdict).

A hung call (a regex that backtracks forever) is killed by a watchdog; the rest of that case is skipped.
Set HOSTILE_SUMMARY=/path.json to get every case's results and violations as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import hostile_corpus as H
from _cli_helpers import REPO, cli_env

GOOD_VECTOR = REPO / "spec" / "vectors" / "valid_blora_old_diffusers.safetensors"
CALL_LIMIT = 10.0  # seconds per CLI call (the contract)
WATCHDOG = 11.0  # a call still running after this is killed: it has broken the contract anyway
RSS_LIMIT = 1 << 30  # bytes, peak RSS of a child process
AS_LIMIT = 4 << 30  # address-space cap of a child: a runaway allocation fails fast instead of swapping
TOTAL_LIMIT = 120.0  # seconds for the whole matrix
ALLOWED = {0, 2, 3, 4, 5, 6}
# Raw characters that must never reach a terminal: C0/C1 controls (but \t \n), bidi, zero-width, BOM,
# surrogates (unencodable), and the emoji rich renders for ':smile:'.
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069"
                       "\ufeff\ud800-\udfff\U0001f604]")
NOT_FOREIGN = {"adapterctl.manifest", "adapterctl.format", "lora_adapter_metadata", "modelspec.hash_sha256",
               "modelspec.architecture", "sshs_model_hash", "sshs_legacy_hash"}

# command -> argv builder (input, output dir, case). Writers name their output file with case.out_name.
COMMANDS = {
    "inspect": lambda x, o, c, g: ["inspect", x],
    "inspect_json": lambda x, o, c, g: ["inspect", x, "--json"],
    "inspect_weights_json": lambda x, o, c, g: ["inspect", x, "--weights", "--json"],
    "validate": lambda x, o, c, g: ["validate", x],
    "validate_json": lambda x, o, c, g: ["validate", x, "--json"],
    "validate_batch_json": lambda x, o, c, g: ["validate", x, g, "--json"],
    "split": lambda x, o, c, g: ["split", x, "--keep", "style", "-o", o / c.out_name],
    "convert_kohya": lambda x, o, c, g: ["convert", x, "--to", "kohya", "-o", o / c.out_name],
    "convert_diffusers_json": lambda x, o, c, g: ["convert", x, "--to", "diffusers", "-o", o / c.out_name, "--json"],
    "convert_peft": lambda x, o, c, g: ["convert", x, "--to", "peft", "-o", o / _peft_name(c)],
    "tag": lambda x, o, c, g: ["tag", x, "--preset", "b-lora", "-o", o / c.out_name],
}
WRITERS = ("split", "convert_kohya", "convert_diffusers_json", "convert_peft", "tag")
INSPECTS = ("inspect", "inspect_json", "inspect_weights_json")


def _peft_name(case: H.Case) -> str:
    return case.out_name.removesuffix(".safetensors") + "_peft"


def _out_name(case: H.Case, cmd: str) -> str:
    return _peft_name(case) if cmd == "convert_peft" else case.out_name


# -- the child: runs CLI calls in-process, one JSON line per call on a private fd ------------------

_CHILD = r"""
import io, json, os, resource, sys, time, traceback
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
results = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray C-level writes cannot corrupt the result channel
from adapterctl.cli.main import run
import typer.main as _typer_main
# Harness speed-up only: typer rebuilds the same click command from the function signatures on every
# call (~15 ms); build it once per app object. The command object is stateless between invocations.
_built, _get_command = {}, _typer_main.get_command
_typer_main.get_command = lambda app: _built.get(id(app)) or _built.setdefault(id(app), _get_command(app))

def peak_rss():
    # VmHWM belongs to this process's memory map, so it starts afresh at exec. ru_maxrss does not:
    # Linux carries it across exec from the parent, so a child of a 1 GB pytest process would
    # report 1 GB before doing anything.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def call(argv):
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    real = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    t0 = time.perf_counter()
    try:
        rc = run(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # a real process would print this traceback
        try:
            err.write(traceback.format_exc())
        except BaseException:
            pass
        rc = "uncaught"
    finally:
        sys.stdout, sys.stderr = real
    seconds = time.perf_counter() - t0
    return {"rc": rc, "seconds": seconds, "maxrss": peak_rss(),
            "stdout": out.buffer.getvalue().decode("utf-8", "surrogateescape"),
            "stderr": err.buffer.getvalue().decode("utf-8", "surrogateescape")}

for job in json.load(open(sys.argv[1])):
    res = call(job["argv"])
    results.write(json.dumps({"id": job["id"], "kind": "call", **res}) + "\n")
    results.flush()
    if job["post"] and res["rc"] == 0:
        post = call(["validate", job["post"], "--json"])
        results.write(json.dumps({"id": job["id"], "kind": "post", **post}) + "\n")
        results.flush()
    if peak_rss() > int(sys.argv[3]):
        break  # measured; start a fresh process so the next call's peak is its own
"""


def _run_chunk(jobs: list[dict], workdir: Path, results: dict, procs: list) -> None:
    """Run jobs in a child; on a hang, kill it and go on in a fresh one after the hung case."""
    env = dict(cli_env(), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    pending = list(jobs)
    while pending:
        spec = Path(tempfile.mkstemp(dir=workdir, suffix=".json")[1])
        spec.write_text(json.dumps(pending))
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(spec), str(AS_LIMIT), str(RSS_LIMIT)],
                                env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(proc)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
        done_ids, hung = set(), False
        while True:
            limit = WATCHDOG + (20 if not done_ids else 0)  # first line also pays the import
            try:
                line = lines.get(timeout=limit)
            except queue.Empty:
                hung = True
                proc.kill()
                break
            if line is None:
                break
            rec = json.loads(line)
            results.setdefault(rec["id"], {})[rec["kind"]] = rec
            done_ids.add(rec["id"])
        proc.wait()
        left = [j for j in pending if j["id"] not in done_ids or (j["post"] and results[j["id"]]["call"]["rc"] == 0
                                                                   and "post" not in results[j["id"]])]
        if not left:
            break
        if not hung and proc.returncode == 0 and done_ids:  # left on purpose after a high-RSS call
            pending = left
            continue
        victim = left[0]  # the job that hung or crashed the child
        kind = "post" if victim["id"] in done_ids else "call"
        results.setdefault(victim["id"], {})[kind] = {
            "rc": "timeout" if hung else f"child died ({proc.returncode})", "seconds": WATCHDOG if hung else 0.0,
            "maxrss": 0, "stdout": "", "stderr": ""}
        pending = [j for j in left[1:] if not (hung and j["case"] == victim["case"])]
        for j in left[1:]:
            if hung and j["case"] == victim["case"]:
                results.setdefault(j["id"], {})["call"] = {"rc": "skipped", "seconds": 0.0, "maxrss": 0,
                                                           "stdout": "", "stderr": ""}


# -- fingerprints and output checks (in this process) ---------------------------------------------------

def _fingerprint(path: Path) -> dict:
    out = {}
    for p in sorted([path, *path.rglob("*")] if path.is_dir() else [path]):
        st = os.lstat(p)
        if os.path.islink(p):
            out[str(p)] = ("link", os.readlink(p), st.st_mtime_ns)
        elif p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
            out[str(p)] = (h.hexdigest(), st.st_mtime_ns)
        else:
            out[str(p)] = ("dir", st.st_mtime_ns)
    return out


def _read_back(path: Path) -> tuple[str | None, dict]:
    """Open with safetensors and read every tensor; return (problem, metadata)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            unsupported = []
            for k in f.keys():
                try:
                    f.get_tensor(k)
                except (TypeError, AttributeError):  # bf16/fp8 have no numpy dtype: read those with torch
                    unsupported.append(k)
        if unsupported:
            with safe_open(str(path), "pt") as f:
                for k in unsupported:
                    f.get_tensor(k)
        return None, meta
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return f"safetensors cannot read it back: {type(exc).__name__}: {str(exc)[:160]}", {}


def _input_metadata(path: Path) -> dict:
    f = path / "adapter_model.safetensors" if path.is_dir() else path
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]).get("__metadata__") or {}


def _strict_json(text: str):
    def bad(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=bad)


def _short(text: str, n: int = 160) -> str:
    s = text.strip().splitlines()[0] if text.strip() else "<empty>"
    return ascii(s[:n])


# -- the contract, per case ---------------------------------------------------------------------------

def _codes(expect) -> tuple:
    return expect if isinstance(expect, tuple) else (expect,)


def _check_call(cmd: str, r: dict, case: H.Case, v: list[str]) -> None:
    rc, out, err = r["rc"], r["stdout"], r["stderr"]
    tag = f"{cmd}: "
    if rc == "skipped":
        v.append(tag + "not run (an earlier call of this case hung)")
        return
    if rc == "timeout":
        v.append(tag + f"still running after {WATCHDOG:.0f} s (killed)")
        return
    if rc == "uncaught":
        v.append(tag + f"uncaught exception escaped run(): {_short(err.strip().splitlines()[-1])}")
        return
    if isinstance(rc, str):
        v.append(tag + f"{rc}: {_short(err)}")
        return
    first = _short(err if err.strip() else out)
    if r["seconds"] > CALL_LIMIT:
        v.append(tag + f"took {r['seconds']:.1f} s (limit {CALL_LIMIT:.0f}); exit {rc}")
    if r["maxrss"] > RSS_LIMIT:
        v.append(tag + f"peak RSS {r['maxrss'] >> 20} MiB (limit {RSS_LIMIT >> 20})")
    validate = cmd.startswith("validate")
    if "Traceback" in out + err:
        v.append(tag + f"traceback, exit {rc}: {_short(err.strip().splitlines()[-1] if err.strip() else out)}")
    if rc not in ({0, 1} if validate else ALLOWED):
        v.append(tag + f"exit {rc} not allowed: {first}")
    bad = sorted({ascii(m) for m in FORBIDDEN.findall(out + err)})
    if bad:
        where = "stdout" if FORBIDDEN.search(out) else "stderr"
        v.append(tag + f"raw {' '.join(bad[:6])} in {where} (exit {rc})")
    doc = None
    if cmd.endswith("_json"):
        try:
            doc = _strict_json(out)
        except ValueError as exc:
            v.append(tag + f"--json stdout does not parse ({str(exc)[:80]}); exit {rc}")
    if not validate and rc != 0:
        lines = err.rstrip("\n").split("\n") if err else []
        if len(lines) != 1 or not lines[0].startswith("error: "):
            v.append(tag + f"exit {rc} but stderr is {len(lines)} lines, first {_short(err)}")
        if cmd.endswith("_json"):
            if doc is not None and not (isinstance(doc, dict) and doc.get("ok") is False and isinstance(
                    doc.get("error"), dict) and {"code", "message", "hint"} <= set(doc["error"])):
                v.append(tag + "error JSON is not {ok: false, error: {code, message, hint}}")
        elif out:
            v.append(tag + f"exit {rc} but stdout is not empty: {_short(out)}")
    if not validate and rc == 0 and cmd.endswith("_json") and doc is not None and not (
            isinstance(doc, dict) and doc.get("ok", True) is True):
        v.append(tag + "exit 0 but the JSON result is not an object with ok: true")
    if not validate and case.expect is not None:
        want = _codes(case.inspect if cmd in INSPECTS else case.expect)
        if rc not in want:
            v.append(tag + f"exit {rc}, expected {' or '.join(map(str, want))}: {first}")
    r["doc"] = doc


def _check_validate(res: dict, case: H.Case, v: list[str]) -> None:
    text, js, batch = res["validate"], res["validate_json"], res["validate_batch_json"]
    if not all(isinstance(x["rc"], int) for x in (text, js, batch)):
        return
    status = None
    if isinstance(js.get("doc"), dict) and js["doc"].get("files"):
        status = js["doc"]["files"][0].get("status")
        if (status == "fail") != (js["rc"] == 1):
            v.append(f"validate_json: status {status} but exit {js['rc']}")
    if text["rc"] != js["rc"]:
        v.append(f"validate: exit {text['rc']} but validate --json exits {js['rc']}")
    doc = batch.get("doc")
    if isinstance(doc, dict):
        files = doc.get("files") or []
        if len(files) != 2:
            v.append(f"validate_batch_json: {len(files)} file reports, expected 2")
        else:
            if files[1].get("status") not in ("pass", "warn"):
                v.append(f"validate_batch_json: the good file got {files[1].get('status')}: {files[1].get('checks')}")
            if files[0].get("status") != status:
                v.append(f"validate_batch_json: X got {files[0].get('status')}, alone it gets {status}")
    if case.verdict == "ok" and (js["rc"] != 0 or status not in ("pass", "warn")):
        fails = [c for c in (js.get("doc") or {}).get("files", [{}])[0].get("checks", []) if c.get("status") == "fail"]
        v.append(f"validate: expected pass/warn, got {status} (exit {js['rc']}): {ascii(fails[:2])[:200]}")
    if case.verdict == "fail" and (js["rc"] != 1 or status != "fail"):
        v.append(f"validate: expected fail, got {status} (exit {js['rc']})")


def _check_outputs(res: dict, case: H.Case, outdirs: dict, v: list[str]) -> None:
    preserved = None
    if case.preserve:
        preserved = {k: x for k, x in _input_metadata(case.path).items() if k not in NOT_FOREIGN}
    for cmd in WRITERS:
        r = res[cmd]
        d = outdirs[cmd]
        left = sorted(p.name for p in d.iterdir())
        temps = [p for p in d.rglob("*") if p.name.endswith(".adapterctl-tmp") or ".adapterctl-tmp" in p.name]
        if temps:
            v.append(f"{cmd}: temporary file left: {ascii(temps[0].name)}")
        if r["rc"] != 0:
            if left:
                v.append(f"{cmd}: exit {r['rc']} but the output dir holds {ascii(left)[:120]}")
            continue
        want = _out_name(case, cmd)
        if left != [want]:
            v.append(f"{cmd}: output dir holds {ascii(left)[:120]}, expected [{ascii(want)}]")
            continue
        target = d / want
        # A peft input stays a peft directory through split/tag, whatever -o is called.
        weights = target / "adapter_model.safetensors" if target.is_dir() else target
        problem, meta = _read_back(weights)
        if problem:
            v.append(f"{cmd}: {problem}")
        post = res.get(cmd + ":post")
        if post is None:
            v.append(f"{cmd}: 'validate OUT' did not run")
        elif post["rc"] != 0:
            try:
                checks = [c for c in _strict_json(post["stdout"])["files"][0]["checks"] if c["status"] == "fail"]
            except (ValueError, KeyError, IndexError, TypeError):
                checks = _short(post["stderr"] or post["stdout"])
            v.append(f"{cmd}: 'validate OUT' exits {post['rc']}: {ascii(checks)[:220]}")
        elif post["seconds"] > CALL_LIMIT:
            v.append(f"{cmd}: 'validate OUT' took {post['seconds']:.1f} s")
        if preserved is not None and not problem:
            lost = [k for k, x in preserved.items() if meta.get(k) != x]
            if lost:
                k = lost[0]
                v.append(f"{cmd}: foreign metadata not kept verbatim ({len(lost)} keys), e.g. {ascii(k)[:60]}: "
                         f"{ascii(preserved[k])[:50]} -> {ascii(meta.get(k))[:80]}")


def _violations(case: H.Case, res: dict, outdirs: dict, before, after) -> list[str]:
    v: list[str] = []
    for cmd in COMMANDS:
        _check_call(cmd, res[cmd], case, v)
    _check_validate(res, case, v)
    if "inspect" in res and res["inspect"]["rc"] == 0:
        for text in case.must_show:
            if text not in res["inspect"]["stdout"]:
                v.append(f"inspect: does not show {text!r} literally")
    if "inspect_json" in res and res["inspect_json"]["rc"] == 0:
        for text in case.json_show:
            if text not in res["inspect_json"]["stdout"]:
                v.append(f"inspect_json: does not show {text} (a non-finite number as a JSON string)")
    _check_outputs(res, case, outdirs, v)
    if before != after:
        v.append("input changed (bytes, mtime or directory entries)")
    return v


# -- the matrix ---------------------------------------------------------------------------------------

CASES = {c.name: c for c in H.build(Path("/nonexistent"), write=False)}


class Matrix:
    def __init__(self, root: Path):
        t0 = time.perf_counter()
        self.cases = {c.name: c for c in H.build(root)}
        self.build_seconds = time.perf_counter() - t0
        good = root / "good" / "good.safetensors"
        good.parent.mkdir()
        shutil.copyfile(GOOD_VECTOR, good)
        before = {n: _fingerprint(root / "in" / n) for n in self.cases}
        good_before = _fingerprint(good)
        jobs, self.outdirs, key = [], {}, {}
        order = sorted(self.cases.values(), key=lambda c: -c.cost)
        chunks, load = ([], []), [0.0, 0.0]
        for case in order:  # greedy balance of the two children by cost
            i = load.index(min(load))
            load[i] += case.cost
            chunks[i].append(case)
        work = root / "work"
        work.mkdir()
        job_lists = ([], [])
        for i, chunk in enumerate(chunks):
            for case in chunk:
                self.outdirs[case.name] = {}
                for cmd, argv in COMMANDS.items():
                    out = root / "out" / case.name / cmd  # a fresh directory per writing call
                    if cmd in WRITERS:
                        out.mkdir(parents=True)
                        self.outdirs[case.name][cmd] = out
                    jid = len(key)
                    key[jid] = (case.name, cmd)
                    post = str(out / _out_name(case, cmd)) if cmd in WRITERS else None
                    job_lists[i].append({"id": jid, "case": case.name, "argv": [str(a) for a in argv(
                        case.path, out, case, good)], "post": post})
        raw: dict = {}
        t1 = time.perf_counter()
        procs: list = []
        threads = [threading.Thread(target=_run_chunk, args=(jl, work, raw, procs), daemon=True) for jl in job_lists]
        try:
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        finally:  # interrupted: leave no child running
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        self.run_seconds = time.perf_counter() - t1
        self.results: dict = {n: {} for n in self.cases}
        for jid, (name, cmd) in key.items():
            got = raw.get(jid, {})
            self.results[name][cmd] = got.get("call") or {"rc": "lost", "seconds": 0, "maxrss": 0, "stdout": "",
                                                          "stderr": ""}
            if "post" in got:
                self.results[name][cmd + ":post"] = got["post"]
        self.violations = {}
        for n, c in self.cases.items():
            after = _fingerprint(root / "in" / n)
            self.violations[n] = _violations(c, self.results[n], self.outdirs[n], before[n], after)
        self.good_changed = _fingerprint(good) != good_before
        self.peak_rss = max((r.get("maxrss", 0) for res in self.results.values() for r in res.values()), default=0)
        self.total_seconds = time.perf_counter() - t0
        if os.environ.get("HOSTILE_SUMMARY"):
            self._dump(Path(os.environ["HOSTILE_SUMMARY"]))

    def _dump(self, path: Path) -> None:
        summary = {"build_s": self.build_seconds, "run_s": self.run_seconds, "total_s": self.total_seconds,
                   "peak_rss_mib": self.peak_rss >> 20, "cases": {}}
        for n, c in self.cases.items():
            summary["cases"][n] = {
                "category": c.category, "violations": self.violations[n],
                "calls": {cmd: {"rc": r["rc"], "s": round(r["seconds"], 3), "rss_mib": r.get("maxrss", 0) >> 20,
                                "err": _short(r["stderr"]) if r["stderr"] else ""}
                          for cmd, r in self.results[n].items()}}
        path.write_text(json.dumps(summary, indent=1))


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    yield Matrix(root)
    shutil.rmtree(root, ignore_errors=True)  # ~1 GB of inputs and outputs


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case(matrix, name):
    problems = matrix.violations[name]
    assert not problems, f"{name} [{CASES[name].category}] {CASES[name].path.name!a}:\n  " + "\n  ".join(problems)


def test_listing_reads_every_hostile_file_like_open(matrix):
    """`ls` summarises a file without a manifest from its header alone (header.summarize); every other
    command opens it in full. On every file of the corpus both conclude the same: the same summary, or
    the same refusal with the same message (tests/test_fuzz.py does the same on mutated vectors)."""
    from adapterctl.errors import AdapterError
    from adapterctl.library.read import read_summary

    def outcome(path, full):
        try:
            return ("ok", read_summary(path, full=full)[0])
        except AdapterError as exc:
            return ("refused", type(exc).__name__, exc.message, exc.code)

    disagreements = []
    for name, case in matrix.cases.items():
        fast, full = outcome(case.path, False), outcome(case.path, True)
        if fast != full:
            disagreements.append(f"{name}: {_short(repr(fast))} != {_short(repr(full))}")
    assert not disagreements, "\n".join(disagreements[:5])


def test_corpus_size_and_categories():
    counts = Counter(c.category for c in CASES.values())
    assert len(CASES) >= 150, counts
    assert set(counts) == {"control", "container", "manifest", "metadata", "keys", "lora", "peft", "patterns",
                           "escape"}, counts


def test_matrix_budget(matrix):
    assert not matrix.good_changed, "the shared good file was modified"
    assert matrix.peak_rss <= RSS_LIMIT, f"peak RSS {matrix.peak_rss >> 20} MiB"
    assert matrix.run_seconds < TOTAL_LIMIT, f"matrix took {matrix.run_seconds:.0f} s (limit {TOTAL_LIMIT:.0f})"


def test_checker_flags_each_invariant():
    """The contract checker itself: a clean result passes, and each kind of breakage is caught."""
    case = H.Case("x", "control", Path("x"), 0)

    def flags(cmd="inspect_json", **over) -> list[str]:
        r = {"rc": 0, "seconds": 0.1, "maxrss": 100 << 20, "stdout": '{"ok": true}', "stderr": "", **over}
        v: list[str] = []
        _check_call(cmd, r, case, v)
        return v

    assert flags() == [] and flags("inspect", stdout="fine\tline\n") == []
    err = {"stdout": '{"ok": false, "error": {"code": "c", "message": "m", "hint": null}}'}
    for over in ({"rc": 70}, {"rc": 1}, {"stderr": "Traceback (most recent call last):"}, {"stdout": '{"a": NaN}'},
                 {"stdout": '{"p": "\u202e"}'}, {"stderr": "x\x1b[31m"}, {"stderr": "\U0001f604"},
                 {"seconds": CALL_LIMIT + 1}, {"maxrss": RSS_LIMIT + 1}, {"rc": 3, "stderr": "error: a\nb\n", **err},
                 {"rc": 3, "stderr": "oops\n", **err}, {"rc": 3, "stderr": "error: x\n", "stdout": "[]"},
                 {"rc": "timeout"}, {"rc": "skipped"}, {"rc": "uncaught", "stderr": "Traceback\nValueError: x"}):
        assert flags(**over), over
    assert flags(rc=3, stderr="error: x\n", **err) == ["inspect_json: exit 3, expected 0: 'error: x'"]
    assert flags("inspect", rc=3, stderr="error: x\n", stdout="noise")  # stdout must be empty on error
    assert flags("validate", rc=1, stdout="FAIL") == [] and flags("validate", rc=2, stdout="")
