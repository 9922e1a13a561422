#!/usr/bin/env python
"""Library benchmark: ``adapterctl ls DIR --json`` over 1,000 adapters, against a minimal header read.

    .venv/bin/python bench/bench_ls.py --runs 5

What it does, in one run:

1. Generates a library of ``--count`` (1,000) B-LoRA-shaped kohya adapters: the 160 modules the
   B-LoRA trainer adapts (``target_presets("sdxl")["b-lora"]``: to_q/k/v/out.0 of attn1 and attn2
   in the ten transformer blocks of up_blocks.0.attentions.0 and .1), rank 4, fp16 factors and
   fp16 alphas (= rank), SGM kohya names, a few ``ss_*`` metadata keys, no adapterctl manifest
   (so every open infers the roles, as for a file from sd-scripts). 3.6 MB each, 3.6 GB in all,
   in ten sub-directories. Each file's factor bytes are a different slice of one pool of finite
   random fp16 values, so every file has its own sha256.

2. Times, as subprocesses (cold interpreter, warm page cache: one untimed warm-up, then
   ``--runs`` interleaved rounds, best and median), what a user runs and two floors:

   * ``adapterctl ls DIR --json``;
   * the minimal header read (baseline): a plain Python loop that walks DIR and, for each file,
     reads the 8-byte header length and the JSON header and parses it with ``json.loads``;
   * ``find DIR -name '*.safetensors' -printf '%s %p\\n'``: the walk alone.

   With ``--cold`` (root on Linux), ``ls`` and the minimal read are timed again with the page
   cache dropped before every run: what a first listing after a reboot, or of a library larger
   than the cache, costs.

3. Times the library's reader in one process (no CLI start) in its three modes, serial, threads
   and a fork pool, on the same files: the measurement behind the reader's default.

4. Times ``adapterctl lock`` and ``adapterctl verify`` (sha256 of every byte) and checks the
   results: ``ls`` lists every file as ok with content 80 / style 80 at rank 4, the lock verifies
   clean, and one byte changed in one file makes ``verify`` exit 1 naming exactly that file.

Prints a table and writes ``ls-results.json`` in ``--out-dir``; ``--json`` prints it instead.
The library is deleted at the end unless ``--keep`` (re-generating takes seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = HERE / "out"
GEN_VERSION = 1
TARGET_S = 3.0  # issue 9: ls over 1,000 adapters in under 3 s on 2 cores
MARKER = ".bench-ls.json"  # hidden: ls skips it

sys.path.insert(0, str(HERE))
from bench_files import machine_info, spawn  # noqa: E402 - the house harness: wait4 timing, contention

MINIMAL_READ = r"""
import json, os, struct, sys
out = []
for root, dirs, files in os.walk(sys.argv[1]):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(files):
        if name.startswith(".") or not name.endswith(".safetensors"):
            continue
        path = os.path.join(root, name)
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        out.append({"path": path, "tensors": len(header) - ("__metadata__" in header)})
json.dump(out, sys.stdout)
"""

MODES = r"""
import json, sys, time
from adapterctl.library.scan import scan
from adapterctl.library.read import read_rows
root, runs = sys.argv[1], int(sys.argv[2])
cands = scan(root).candidates
read_rows(cands[:8], mode="serial")  # imports and the architecture map, outside the timings
out = {}
for mode in ("serial", "thread", "process"):
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        rows = read_rows(cands, mode=mode, jobs=2)
        walls.append(time.perf_counter() - t0)
    assert len(rows) == len(cands) and all(r.status == "ok" for r in rows), mode
    out[mode] = walls
print(json.dumps(out))
"""


# ----------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------
def plan(rank: int) -> list[tuple[str, str, list[int]]]:
    """[(tensor name, dtype, shape)] of one file, sorted by name as safetensors.save_file sorts."""
    from adapterctl.arch import load_arch, target_presets

    arch = load_arch("sdxl")
    out = []
    for name in target_presets("sdxl")["b-lora"].modules(arch):
        spec, base = arch.modules[name], arch.kohya_name(name)
        out += [(f"{base}.alpha", "F16", []), (f"{base}.lora_down.weight", "F16", [rank, spec.in_features]),
                (f"{base}.lora_up.weight", "F16", [spec.out_features, rank])]
    return sorted(out)


def _header(tensors, metadata: dict[str, str]) -> tuple[bytes, list[tuple[str, int, int]]]:
    header: dict = {"__metadata__": metadata}
    spans, offset = [], 0
    for name, dtype, shape in tensors:
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        spans.append((name, offset, n))
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8), spans


def generate(out_dir: Path, count: int, rank: int = 4, seed: int = 0) -> Path:
    """The library directory; reused when a complete one with the same parameters is there."""
    import numpy as np

    key = {"v": GEN_VERSION, "count": count, "rank": rank, "seed": seed}
    lib = out_dir / f"ls-library-{count}-r{rank}"
    marker = lib / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == key:
        return lib
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    tensors = plan(rank)
    rng = np.random.default_rng(seed)
    per_file = sum(2 * max(1, int(np.prod(s))) for _, _, s in tensors)
    u = rng.integers(0, 1 << 16, size=per_file // 2 + 4096 * 8, dtype=np.uint16)
    # Finite fp16: random sign and mantissa, biased exponent 5..12 (magnitudes 2^-10..2^-3).
    pool = ((u & np.uint16(0x83FF)) | ((((u >> 10) & np.uint16(7)) + np.uint16(5)) << np.uint16(10))).tobytes()
    alpha = np.array(rank, dtype=np.float16).tobytes()
    for i in range(count):
        metadata = {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_module": "networks.lora",
                    "ss_network_dim": str(rank), "ss_network_alpha": str(rank), "ss_output_name": f"blora_{i:04d}",
                    "ss_training_comment": "adapterctl bench_ls"}
        raw, spans = _header(tensors, metadata)
        start = (i * 8 * 7919) % (len(pool) - per_file)  # a different slice per file (8-byte steps)
        body = bytearray(pool[start:start + per_file])
        for name, offset, n in spans:
            if name.endswith(".alpha"):
                body[offset:offset + n] = alpha
        sub = lib / f"set{i % 10:02d}"
        sub.mkdir(exist_ok=True)
        with open(sub / f"blora_{i:04d}.safetensors", "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            fh.write(body)
    marker.write_text(json.dumps(key))
    return lib


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------
def _adapterctl() -> list[str]:
    script = Path(sys.executable).parent / "adapterctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "adapterctl.cli.main"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ADAPTERCTL_DEBUG", None)
    return env


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (Linux, root only; every process on the machine loses it)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("1\n")
        return True
    except OSError:
        return False


def time_commands(cmds: dict[str, list[str]], runs: int, out: Path, log, *, cold: bool = False) -> dict:
    """Best and median of ``runs`` interleaved rounds; warm: after one untimed warm-up; cold: with
    the page cache dropped before every run (the .pyc files are then read from disk too)."""
    env = _env()
    for cid, argv in cmds.items():  # warm-up: page cache, .pyc files
        if cold:
            break
        res = spawn(argv, stdout_path=out / f"ls-{cid}.stdout", env=env)
        if res["rc"] != 0:
            raise SystemExit(f"FAILED: {cid} exited {res['rc']}\n{res['stderr']}")
    runs_of: dict[str, list[dict]] = {cid: [] for cid in cmds}
    for r in range(runs):
        for cid, argv in cmds.items():
            if cold and not drop_page_cache():
                raise SystemExit("FAILED: --cold needs root on Linux (writes /proc/sys/vm/drop_caches)")
            res = spawn(argv, stdout_path=out / f"ls-{cid}.stdout", env=env)
            if res["rc"] != 0:
                raise SystemExit(f"FAILED: {cid} exited {res['rc']}\n{res['stderr']}")
            runs_of[cid].append(res)
        log(f"{'cold ' if cold else ''}round {r + 1}/{runs}: " + ", ".join(f"{c} {v[-1]['wall_s']:.2f}s" for c, v in runs_of.items()))
    return {cid: {"argv": argv, "best_s": min(x["wall_s"] for x in runs_of[cid]),
                  "median_s": statistics.median(x["wall_s"] for x in runs_of[cid]),
                  "cpu_s_median": statistics.median(x["cpu_s"] for x in runs_of[cid]),
                  "peak_rss_mb": max(x["peak_rss_kib"] for x in runs_of[cid]) / 1024,
                  "contention_cores_median": statistics.median(x["contention"] or 0 for x in runs_of[cid]),
                  "walls_s": [x["wall_s"] for x in runs_of[cid]]}
            for cid, argv in cmds.items()}


def time_modes(lib: Path, runs: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", MODES, str(lib), str(runs)], capture_output=True, text=True,
                          env=_env(), timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"FAILED: reader modes\n{proc.stderr[-3000:]}")
    return {mode: {"best_s": min(w), "median_s": statistics.median(w)} for mode, w in json.loads(proc.stdout).items()}


def check_and_time_lock(lib: Path, count: int, log) -> dict:
    """lock, verify (timed once each), then one changed byte: verify must name exactly that file."""
    env, tool = _env(), _adapterctl()
    lock = lib / "adapters.lock"
    out: dict = {}
    for cid, argv in (("lock", [*tool, "lock", str(lib), "--json"]), ("verify", [*tool, "verify", str(lock), "--json"])):
        res = spawn(argv, env=env)
        if res["rc"] != 0:
            raise SystemExit(f"CHECK FAILED: {cid} exited {res['rc']}\n{res['stderr']}")
        out[cid] = {"argv": argv, "wall_s": res["wall_s"], "cpu_s": res["cpu_s"],
                    "peak_rss_mb": res["peak_rss_kib"] / 1024}
        log(f"{cid}: {res['wall_s']:.2f}s")
    locked = json.loads(lock.read_text())
    if len(locked["files"]) != count:
        raise SystemExit(f"CHECK FAILED: the lock holds {len(locked['files'])} files, expected {count}")
    victim = lib / locked["files"][count // 2]["path"]
    size = victim.stat().st_size
    with open(victim, "r+b") as fh:
        fh.seek(size - 3)
        old = fh.read(1)
        fh.seek(size - 3)
        fh.write(bytes([old[0] ^ 0x01]))
    try:
        proc = subprocess.run([*tool, "verify", str(lock), "--json"], capture_output=True, text=True, env=env)
    finally:
        with open(victim, "r+b") as fh:
            fh.seek(size - 3)
            fh.write(old)
    doc = json.loads(proc.stdout)
    got = [(d["kind"], d["path"]) for d in doc["differences"]]
    want = [("modified", locked["files"][count // 2]["path"])]
    if proc.returncode != 1 or got != want:
        raise SystemExit(f"CHECK FAILED: one changed byte gave exit {proc.returncode} and {got}, expected 1 and {want}")
    out["one_byte_check"] = f"exit 1, differences {got}"
    lock.unlink()
    return out


def check_ls(stdout: Path, count: int, rank: int) -> str:
    doc = json.loads(stdout.read_text())
    rows = doc["adapters"]
    bad = [r for r in rows if r["status"] != "ok" or r["roles"] != {"content": 80, "style": 80}
           or r["rank"] != {"min": rank, "max": rank} or r["method"] != "b-lora"]
    if len(rows) != count or bad:
        raise SystemExit(f"CHECK FAILED: ls listed {len(rows)} adapters ({len(bad)} not as generated), expected {count}")
    return f"{count} adapters, all ok, kohya b-lora, content 80 / style 80, rank {rank}"


# ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000, help="adapters in the library (default 1000)")
    ap.add_argument("--rank", type=int, default=4, help="LoRA rank of every module (default 4)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each command (default 5)")
    ap.add_argument("--mode-runs", type=int, default=3, help="timed runs of each reader mode (0: skip)")
    ap.add_argument("--no-lock", action="store_true", help="skip timing lock/verify and the one-byte check")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--keep", action="store_true", help="keep the generated library for the next run")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument("--generate-only", action="store_true", help="make (or find) the library, print its path")
    ap.add_argument("--cold", action="store_true",
                    help="also time ls and the minimal read with the page cache dropped before every run (root "
                         "on Linux; it empties the cache for every process on the machine)")
    args = ap.parse_args(argv)
    if args.generate_only:
        print(generate(args.out_dir, args.count, args.rank))
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # In a child: Linux charges an exec'd child's peak RSS with its parent's, so the timing parent
    # never imports numpy or adapterctl.
    made = subprocess.run([sys.executable, __file__, "--generate-only", "--count", str(args.count), "--rank",
                           str(args.rank), "--out-dir", str(args.out_dir)], capture_output=True, text=True,
                          env=_env())
    if made.returncode != 0:
        raise SystemExit(f"FAILED: generating the library\n{made.stderr[-3000:]}")
    lib = Path(made.stdout.strip())
    files = sorted(lib.rglob("*.safetensors"))
    total = sum(p.stat().st_size for p in files)
    log(f"library: {lib} ({len(files)} files, {total / 1e9:.2f} GB; ready in {time.perf_counter() - t0:.1f} s)")
    load_before = os.getloadavg()
    try:
        cmds = {"ls": [*_adapterctl(), "ls", str(lib), "--json"],
                "minimal-read": [sys.executable, "-c", MINIMAL_READ, str(lib)],
                "find": ["find", str(lib), "-name", "*.safetensors", "-printf", "%s %p\\n"]}
        timings = time_commands(cmds, args.runs, args.out_dir, log)
        checks = {"ls": check_ls(args.out_dir / "ls-ls.stdout", args.count, args.rank)}
        cold = {}
        if args.cold:
            cold = time_commands({c: cmds[c] for c in ("ls", "minimal-read")}, args.runs, args.out_dir, log,
                                 cold=True)
            checks["ls cold"] = check_ls(args.out_dir / "ls-ls.stdout", args.count, args.rank)
        modes = time_modes(lib, args.mode_runs) if args.mode_runs > 0 else {}
        lock = {} if args.no_lock else check_and_time_lock(lib, args.count, log)
        if lock:
            checks["one_byte"] = lock.pop("one_byte_check")
    finally:
        if not args.keep:
            shutil.rmtree(lib, ignore_errors=True)
    load_after = os.getloadavg()
    base = timings["minimal-read"]["best_s"]
    judged = args.count == 1000 and args.rank == 4
    best = timings["ls"]["best_s"]
    results = {
        "schema": "adapterctl.bench-ls/1",
        "machine": machine_info(args.out_dir), "affinity_cores": len(os.sched_getaffinity(0)),
        "load_average": {"before": load_before, "after": load_after},
        "library": {"files": len(files), "bytes": total, "rank": args.rank, "modules_per_file": 160,
                    "what": "kohya B-LoRA-shaped, fp16, no manifest, 10 sub-directories"},
        "runs": args.runs, "commands": timings, "cold": cold or None,
        "ratios": {"ls / minimal-read": best / base, "ls / find": best / timings["find"]["best_s"]},
        "reader_modes": modes, "lock_verify": lock, "checks": checks,
        "target": {"rule": f"ls best < {TARGET_S} s", "value": round(best, 3),
                   "met": (best < TARGET_S) if judged else None},
    }
    (args.out_dir / "ls-results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores ({results['affinity_cores']} usable); load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{'command':<14} {'best s':>8} {'median s':>9} {'CPU s':>7} {'RSS MB':>7} {'others':>7}  x minimal-read")
    for cid, t in timings.items():
        print(f"{cid:<14} {t['best_s']:8.3f} {t['median_s']:9.3f} {t['cpu_s_median']:7.2f} {t['peak_rss_mb']:7.0f} "
              f"{t['contention_cores_median']:7.2f}  {t['best_s'] / base:.2f}")
    for cid, t in cold.items():
        print(f"{cid + ' cold':<14} {t['best_s']:8.3f} {t['median_s']:9.3f} {t['cpu_s_median']:7.2f} "
              f"{t['peak_rss_mb']:7.0f} {t['contention_cores_median']:7.2f}  "
              f"{t['best_s'] / cold['minimal-read']['best_s']:.2f} (cold)")
    for mode, t in modes.items():
        print(f"reader {mode:<7} {t['best_s']:8.3f} {t['median_s']:9.3f}   (in-process, 2 jobs)")
    for cid, t in lock.items():
        print(f"{cid:<14} {t['wall_s']:8.3f} {'':>9} {t['cpu_s']:7.2f} {t['peak_rss_mb']:7.0f}  (one run)")
    for k, v in checks.items():
        print(f"ok  {k}: {v}")
    mark = {True: "met", False: "MISSED", None: "not judged at this size"}[results["target"]["met"]]
    print(f"target ls < {TARGET_S} s: {best:.3f} s ({mark})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
