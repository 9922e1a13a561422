"""Hostile filesystems around the writing commands (spec/FORMAT.md §6).

--force replaces only a regular file, a symlink itself (never what it points to), or a peft output
directory that holds nothing but adapter_config.json / adapter_model.safetensors. Every other target
(special files, directories, anything holding or being the input) is refused: exit 2 or 6, one
'error: ' line, nothing changed anywhere, no '*.adapterctl-tmp' left. Also: read-only and missing
output directories, hostile file names in every line we print, special files as inputs, and
SIGINT / SIGTERM / SIGKILL in the middle of a write.

The big matrices run in one child each (tests/_fs_helpers.run_batch), every call under its own
SIGALRM timeout so that a call that blocks (opening a FIFO) fails alone, by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _cli_helpers import REPO, CliResult, cli_env
from _fs_helpers import (FORBIDDEN, HANG, diff, drop_file_caps, json_or_none, leftovers, link, make_chardev,
                         make_fifo, make_socket, mkdirs, one_error_line, run_batch, tree, wait_mid_write, write)
from test_atomic_kill import _big_blora

VECTORS = REPO / "spec" / "vectors"
GOOD = VECTORS / "valid_blora_old_diffusers.safetensors"
PEFT = VECTORS / "valid_peft_dir"
PEFT_FILES = {"adapter_config.json", "adapter_model.safetensors"}
_CONFIG = {"adapter_config.json": PEFT / "adapter_config.json"}

REFUSE, EXISTS, REPLACE, EITHER = "refuse", "exists", "replace", "either"


def _codes(expect):
    """Exit codes a refusal may use: 2 or 6, exactly 6 (the target exists), one given code, or any failure."""
    return {REFUSE: {2, 6}, EXISTS: {6}}.get(expect, expect if expect == "nonzero" else {expect})


# -- target builders: (case root r, input s) -> (input, target); r holds in/blora.safetensors and out/ ---

def _at(make, name="t.safetensors"):
    return lambda r, s: (s, make(r / "out" / name))


def _peft(p: Path, *extra: str, keep=PEFT_FILES) -> Path:
    """A peft output dir holding `keep` of the two peft files, plus user files `extra`."""
    return mkdirs(p, *extra, copy={n: PEFT / n for n in keep})


def _deep_input(r, s):
    """The input two levels below the target: r/in/a/b/blora.safetensors, target r/in."""
    new = r / "in" / "a" / "b" / s.name
    new.parent.mkdir(parents=True)
    s.rename(new)
    return new, r / "in"


def _beside_input(*extra):
    """Turn the input's own directory into a would-be peft dir: adapter_config.json (+ extra) next to it."""
    def build(r, s):
        shutil.copyfile(PEFT / "adapter_config.json", s.parent / "adapter_config.json")
        for name in extra:
            (s.parent / name).write_text("# my adapter\n")
        return s, s.parent
    return build


def _input_is_weights(r, s):
    """convert DIR/adapter_model.safetensors --to peft -o DIR: the most natural way to lose an input."""
    d = _peft(r / "out" / "p", keep={"adapter_config.json"})
    s.rename(d / "adapter_model.safetensors")
    return d / "adapter_model.safetensors", d


def _hardlink(p: Path, to: Path) -> Path:
    os.link(to, p)
    return p


def _bug_report_in_subdir(r, s):
    """The reported data loss, one level down: DIR/{adapter_config.json, README.md, sub/<input>}."""
    d = _peft(r / "out" / "P", "README.md", "sub/", keep={"adapter_config.json"})
    s.rename(d / "sub" / s.name)
    return d / "sub" / s.name, d


SPECIAL = {"fifo": make_fifo, "chardev": make_chardev, "socket": make_socket}
if os.geteuid() != 0:  # mknod needs root; the other cases still run
    del SPECIAL["chardev"]

FILE_TARGETS = {
    **{name: (REFUSE, _at(make)) for name, make in SPECIAL.items()},
    "directory": (REFUSE, _at(mkdirs)),
    "directory_with_files": (REFUSE, _at(lambda p: mkdirs(p, "notes.txt"))),
    "dir_holding_input": (REFUSE, lambda r, s: (s, s.parent)),
    "ancestor_of_input": (REFUSE, _deep_input),
    "input_itself": (REFUSE, lambda r, s: (s, s)),
    "symlink_to_input": (REFUSE, lambda r, s: (s, link(r / "out" / "t.safetensors", s))),
    "regular_file": (REPLACE, _at(write)),
    # A symlink is replaced itself; what it points to (checked through the tree diff) must survive.
    "symlink_to_file": (REPLACE, _at(lambda p: link(p, write(p.parent / "real.bin", b"keep me")))),
    "dangling_symlink": (REPLACE, _at(lambda p: link(p, p.parent / "nowhere"))),
    "symlink_to_fifo": (REPLACE, _at(lambda p: link(p, make_fifo(p.parent / "real_fifo")))),
    "symlink_to_dir": (EITHER, _at(lambda p: link(p, mkdirs(p.parent / "real_dir", "keep.txt")))),
    # Replacing either name would leave the input's bytes alone; refusing is fine too.
    "hardlink_to_input": (EITHER, lambda r, s: (s, _hardlink(r / "out" / "t.safetensors", s))),
    "symlink_to_input_dir": (EITHER, lambda r, s: (s, link(r / "out" / "t.safetensors", s.parent))),
}

PEFT_TARGETS = {
    **{name: (REFUSE, _at(make, "p")) for name, make in SPECIAL.items()},
    "input_file_itself": (REFUSE, lambda r, s: (s, s)),
    "symlink_to_input": (REFUSE, lambda r, s: (s, link(r / "out" / "p", s))),
    "dir_holding_input": (REFUSE, lambda r, s: (s, s.parent)),
    "ancestor_of_input": (REFUSE, _deep_input),
    "config_and_input": (REFUSE, _beside_input()),
    "bug_report_input_in_dir": (REFUSE, _beside_input("README.md")),
    "bug_report_input_in_subdir": (REFUSE, _bug_report_in_subdir),
    "peft_plus_readme": (REFUSE, _at(lambda p: _peft(p, "README.md"), "p")),
    "peft_plus_subdir": (REFUSE, _at(lambda p: _peft(p, "checkpoint-1/adapter_model.safetensors"), "p")),
    "peft_plus_empty_subdir": (REFUSE, _at(lambda p: _peft(p, "logs/"), "p")),
    "peft_plus_hidden_file": (REFUSE, _at(lambda p: _peft(p, ".notes"), "p")),
    "peft_plus_bin": (REFUSE, _at(lambda p: _peft(p, "adapter_model.bin"), "p")),
    "config_plus_unrelated": (REFUSE, _at(lambda p: _peft(p, "notes.txt", "photo.jpg",
                                                             keep={"adapter_config.json"}), "p")),
    "unrelated_dir": (REFUSE, _at(lambda p: mkdirs(p, "notes.txt"), "p")),
    "peft_weights_is_a_dir": (REFUSE, _at(lambda p: mkdirs(p, "adapter_model.safetensors/x", copy=_CONFIG), "p")),
    "input_is_the_weights_file": (REFUSE, _input_is_weights),
    "peft_two_files": (REPLACE, _at(_peft, "p")),
    "peft_config_only": (REPLACE, _at(lambda p: _peft(p, keep={"adapter_config.json"}), "p")),
    "peft_weights_only": (REPLACE, _at(lambda p: _peft(p, keep={"adapter_model.safetensors"}), "p")),
    "empty_dir": (REPLACE, _at(mkdirs, "p")),
    "regular_file": (EITHER, _at(write, "p")),
    "symlink_to_peft_dir": (EITHER, _at(lambda p: link(p, _peft(p.parent / "real_peft")), "p")),
    "dangling_symlink": (EITHER, _at(lambda p: link(p, p.parent / "nowhere"), "p")),
    "weights_symlink_to_input": (EITHER, lambda r, s: (s, link(_peft(r / "out" / "p", keep={"adapter_config.json"})
                                                                / "adapter_model.safetensors", s).parent)),
}

VERBS = {
    "convert_kohya": lambda s, t: ["convert", s, "--to", "kohya", "-o", t],
    "split": lambda s, t: ["split", s, "--keep", "style", "-o", t],
    "tag": lambda s, t: ["tag", s, "--preset", "b-lora", "-o", t],
    "convert_peft": lambda s, t: ["convert", s, "--to", "peft", "-o", t],
}


def _peft_input(verb, where, force=True):
    """The input is a copy of valid_peft_dir at r/in/peft; the target is where(input, r)."""
    def build(r, s):
        s.unlink()
        src = r / "in" / "peft"
        shutil.copytree(PEFT, src)
        target = where(src, r)
        return src, VERBS[verb](src, target) + (["--force"] if force else []), target
    return build


def _plain(verb, where):
    def build(r, s):
        return s, VERBS[verb](s, where(r)), where(r)
    return build


MORE_CASES = {
    # An output inside the input directory may be allowed, but the input's own files must not change.
    "kohya_inside_input_dir": (EITHER, _peft_input("convert_kohya", lambda s, r: s / "o.safetensors", force=False)),
    "kohya_over_input_weights": (REFUSE, _peft_input("convert_kohya", lambda s, r: s / "adapter_model.safetensors")),
    "kohya_over_input_config": (REFUSE, _peft_input("convert_kohya", lambda s, r: s / "adapter_config.json")),
    "peft_onto_input_dir": (REFUSE, _peft_input("convert_peft", lambda s, r: s)),
    "peft_onto_symlink_to_input_dir": (REFUSE, _peft_input("convert_peft", lambda s, r: link(r / "out" / "p", s))),
    "peft_onto_input_parent": (REFUSE, _peft_input("convert_peft", lambda s, r: s.parent)),
    "peft_inside_input_dir": (EITHER, _peft_input("convert_peft", lambda s, r: s / "sub", force=False)),
    # A missing output parent is an input error (2); a path through a regular file fails on one line.
    "missing_parent_file": (2, _plain("convert_kohya", lambda r: r / "no" / "such" / "x.safetensors")),
    "missing_parent_peft": (2, _plain("convert_peft", lambda r: r / "no" / "such" / "p")),
    "through_a_file": ("nonzero", _plain("split", lambda r: r / "in" / "blora.safetensors" / "x.safetensors")),
    "through_a_file_peft": ("nonzero", _plain("convert_peft", lambda r: r / "in" / "blora.safetensors" / "p")),
}


@dataclass
class Case:
    expect: object  # REFUSE / EXISTS / REPLACE / EITHER, an exact exit code, or "nonzero"
    build: object  # (r, s) -> (input, target) or (input, argv, target)
    verb: str | None = None
    force: bool = False
    peft: bool = False
    root: Path | None = None
    target: Path | None = None
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    result: CliResult | None = None
    validate: CliResult | None = None


def _case_table() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for verbs, targets in ((("convert_kohya", "split", "tag"), FILE_TARGETS), (("convert_peft",), PEFT_TARGETS)):
        for verb in verbs:
            for name, (kind, build) in targets.items():
                for force in (True, False):
                    # Without --force an existing regular target is exit 6; anything else refuses (2 or 6).
                    expect = kind if force else (EXISTS if kind == REPLACE else REFUSE)
                    cases[f"{verb}-{name}-{'force' if force else 'noforce'}"] = Case(
                        expect, build, verb, force, peft=(verb == "convert_peft"))
    for name, (expect, build) in MORE_CASES.items():
        cases[name] = Case(expect, build, peft="peft_" in name)
    return cases


CASES = _case_table()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    base = tmp_path_factory.mktemp("matrix")
    calls, where = [], {}
    for cid, c in CASES.items():
        c.root = base / cid
        mkdirs(c.root / "out")
        (c.root / "in").mkdir()
        shutil.copyfile(GOOD, c.root / "in" / "blora.safetensors")
        built = c.build(c.root, c.root / "in" / "blora.safetensors")
        if len(built) == 2:
            src, c.target = built
            argv = VERBS[c.verb](src, c.target) + (["--force"] if c.force else [])
        else:
            src, argv, c.target = built
        c.before = tree(c.root)
        where[cid] = [len(calls), None]
        calls.append(argv)
        if c.expect in (REPLACE, EITHER):
            where[cid][1] = len(calls)
            calls.append(["validate", c.target])
    results = run_batch(calls, per_call=5)
    for cid, c in CASES.items():
        c.result = results[where[cid][0]]
        c.validate = results[where[cid][1]] if where[cid][1] is not None else None
        c.after = tree(c.root)
    return CASES


def _refusal_problems(c: Case, codes) -> list[str]:
    r = c.result
    problems = []
    if r.rc == HANG:
        return ["the command hung (blocked past its 5 s timeout)"]
    if r.rc in (0, 70) if codes == "nonzero" else r.rc not in codes:
        problems.append(f"exit {r.rc}, want {codes}; stderr {r.stderr[:300]!r}")
    if (e := one_error_line(r)) and r.rc != 0:
        problems.append(e)
    if changed := diff(c.before, c.after):
        problems.append(f"changed: {changed}")
    if left := leftovers(c.root):
        problems.append(f"left behind: {left}")
    return problems


def _replace_problems(c: Case) -> list[str]:
    r = c.result
    if r.rc != 0:
        return [f"exit {r.rc}, want 0; stderr {r.stderr[:300]!r}"]
    problems = []
    rel = str(c.target.relative_to(c.root))
    changed = [d for d in diff(c.before, c.after) if not (d.startswith(rel + ":") or d.startswith(rel + "/"))]
    if changed:
        problems.append(f"changed besides the target: {changed}")
    st = os.lstat(c.target)
    if c.peft:
        if not stat.S_ISDIR(st.st_mode):
            problems.append(f"peft output is not a directory (mode {oct(st.st_mode)})")
        elif extra := set(os.listdir(c.target)) - PEFT_FILES:
            problems.append(f"peft output holds more than the two files: {sorted(extra)}")
    elif not stat.S_ISREG(st.st_mode):
        problems.append(f"output is not a regular file (mode {oct(st.st_mode)})")
    if c.validate.rc != 0:
        problems.append(f"validate OUT exit {c.validate.rc}: {c.validate.stdout[-300:]!r} {c.validate.stderr!r}")
    if left := leftovers(c.root):
        problems.append(f"left behind: {left}")
    return problems


def _ids(*kinds):
    return [cid for cid, c in CASES.items() if c.expect in kinds]


@pytest.mark.parametrize("cid", _ids(REFUSE, EXISTS, 2, "nonzero"))
def test_refused_and_nothing_changed(matrix, cid):
    c = matrix[cid]
    problems = _refusal_problems(c, _codes(c.expect))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("cid", _ids(REPLACE))
def test_force_replaces_and_result_loads(matrix, cid):
    problems = _replace_problems(matrix[cid])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("cid", _ids(EITHER))
def test_replaced_or_cleanly_refused(matrix, cid):
    # Ambiguous targets: either outcome is fine, but never a half-way one or a change elsewhere.
    c = matrix[cid]
    problems = _replace_problems(c) if c.result.rc == 0 else _refusal_problems(c, _codes(REFUSE))
    assert not problems, "\n".join(problems)


# -- read-only output directory, unreadable input (permission bits need the DAC caps dropped) -----------

LOCKED = {  # id -> argv(paths); ro* are chmod 555, locked is chmod 000
    "ro-convert_kohya": lambda p: VERBS["convert_kohya"](p["src"], p["ro"] / "x.safetensors"),
    "ro-convert_kohya_json": lambda p: VERBS["convert_kohya"](p["src"], p["ro"] / "x.safetensors") + ["--json"],
    "ro-split": lambda p: VERBS["split"](p["src"], p["ro"] / "x.safetensors"),
    "ro-tag": lambda p: VERBS["tag"](p["src"], p["ro"] / "x.safetensors"),
    "ro-convert_peft": lambda p: VERBS["convert_peft"](p["src"], p["ro"] / "p"),
    "ro-default_output_beside_input": lambda p: ["convert", p["roin"] / "blora.safetensors", "--to", "diffusers"],
    "ro-default_peft_output_beside_input": lambda p: ["convert", p["roin"] / "blora.safetensors", "--to", "peft"],
    "mode000-inspect": lambda p: ["inspect", p["locked"]],
    "mode000-inspect_json": lambda p: ["inspect", p["locked"], "--json"],
    "mode000-validate": lambda p: ["validate", p["locked"], "--json"],
    "mode000-split": lambda p: VERBS["split"](p["locked"], p["out"] / "x.safetensors"),
    "mode000-convert_kohya": lambda p: VERBS["convert_kohya"](p["locked"], p["out"] / "x.safetensors"),
    "mode000-convert_peft": lambda p: VERBS["convert_peft"](p["locked"], p["out"] / "p"),
    "mode000-tag": lambda p: VERBS["tag"](p["locked"], p["out"] / "x.safetensors"),
}


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    prefix = drop_file_caps()
    if prefix is None:
        pytest.skip("running as root without setpriv: permission bits cannot be enforced")
    base = tmp_path_factory.mktemp("locked")
    paths = {"ro": mkdirs(base / "ro"), "out": mkdirs(base / "out"),
             "roin": mkdirs(base / "roin", copy={"blora.safetensors": GOOD}),
             "src": base / "in" / "blora.safetensors", "locked": base / "in" / "locked.safetensors"}
    mkdirs(base / "in", copy={"blora.safetensors": GOOD, "locked.safetensors": GOOD})
    calls = [argv(paths) for argv in LOCKED.values()]
    modes = {paths["ro"]: 0o555, paths["roin"]: 0o555, paths["locked"]: 0}
    for p, mode in modes.items():
        p.chmod(mode)
    before = tree(base)
    try:
        results = dict(zip(LOCKED, run_batch(calls, per_call=10, prefix=prefix)))
        after, left = tree(base), leftovers(base)
    finally:
        for p in modes:  # give pytest back a tree it can clean up
            p.chmod(0o755 if p.is_dir() else 0o644)
    return results, diff(before, after), left


@pytest.mark.parametrize("cid", list(LOCKED))
def test_permission_denied_is_one_clean_error(locked, cid):
    results, changed, left = locked
    r = results[cid]
    if cid == "mode000-validate" and r.rc == 1:  # a failed check in the report (as in test_bad_inputs)...
        doc = json_or_none(r.stdout)
        assert doc and doc["files"][0]["status"] == "fail", (r.rc, r.stdout, r.stderr)
    elif cid == "mode000-validate":  # ...or refused up front as unreadable, like every other command
        assert r.rc == 2 and one_error_line(r) is None, (r.rc, r.stdout, r.stderr)
    else:
        want = {1, 2} if cid.startswith("ro-") else {2}
        assert r.rc in want, f"exit {r.rc}, want {want}; stderr {r.stderr!r}"
        assert one_error_line(r) is None, one_error_line(r)
        if cid.endswith("_json"):
            doc = json_or_none(r.stdout)
            assert doc and doc["ok"] is False, r.stdout
    assert changed == [] and left == [], f"changed {changed}; left {left}"


# -- hostile file names: nothing we print may carry a raw control or bidi character -------------------

HOSTILE = {"esc": "\x1b[31m", "cr": "\r", "rlo": "\u202e", "ls": "\u2028", "nel": "\u0085", "rlm": "\u200f",
           "fsi": "\u2068", "bom": "\ufeff", "alm": "\u061c",
           "not_utf8": "\udcff"}  # the byte 0xFF in a name, as Python's argv and os.fsdecode spell it
NAME_CALLS = {  # name -> (argv builder (src, dir, ch), expected exit code); in this order, in one batch
    "convert_default_output": (lambda s, d, c: ["convert", s, "--to", "kohya"], 0),
    "convert_o": (lambda s, d, c: ["convert", s, "--to", "diffusers", "-o", d / f"out{c}.safetensors"], 0),
    "convert_o_json": (lambda s, d, c: ["convert", s, "--to", "kohya", "-o", d / f"j{c}.safetensors", "--json"], 0),
    "convert_peft_json": (lambda s, d, c: ["convert", s, "--to", "peft", "-o", d / f"p{c}", "--json"], 0),
    "split": (lambda s, d, c: ["split", s, "--keep", "style", "-o", d / f"s{c}.safetensors"], 0),
    "tag_json": (lambda s, d, c: ["tag", s, "--preset", "b-lora", "-o", d / f"t{c}.safetensors", "--json"], 0),
    "exists": (lambda s, d, c: ["convert", s, "--to", "diffusers", "-o", d / f"out{c}.safetensors"], 6),
    "exists_json": (lambda s, d, c: ["convert", s, "--to", "diffusers", "-o", d / f"out{c}.safetensors", "--json"], 6),
    "missing_input": (lambda s, d, c: ["inspect", d / f"missing{c}.safetensors"], 2),
    "missing_input_json": (lambda s, d, c: ["convert", d / f"missing{c}.safetensors", "--to", "kohya", "--json"], 2),
    "missing_parent": (lambda s, d, c: ["split", s, "--keep", "style", "-o", d / f"no{c}dir" / "x.safetensors"], 2),
}


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    base = tmp_path_factory.mktemp("names")
    keys, calls = [], []
    for tag, ch in HOSTILE.items():
        d = mkdirs(base / tag)
        src = d / f"in{ch}put.safetensors"
        shutil.copyfile(GOOD, src)
        for name, (argv, _rc) in NAME_CALLS.items():
            keys.append((tag, name))
            calls.append(argv(src, d, ch))
    return dict(zip(keys, run_batch(calls, per_call=10)))


@pytest.mark.parametrize("call", list(NAME_CALLS))
@pytest.mark.parametrize("tag", list(HOSTILE))
def test_hostile_names_are_escaped(names, tag, call):
    r = names[(tag, call)]
    want = NAME_CALLS[call][1]
    assert r.rc == want, f"exit {r.rc}, want {want}; stderr {r.stderr!r}"
    raw = {where: sorted({f"U+{ord(m):04X}" for m in FORBIDDEN.findall(text)})
           for where, text in (("stdout", r.stdout), ("stderr", r.stderr))}
    assert raw == {"stdout": [], "stderr": []}, f"raw characters printed: {raw}; stdout {r.stdout[:300]!r}"
    if call.endswith("_json"):
        assert json_or_none(r.stdout) is not None, r.stdout
    elif want == 0:
        assert r.stdout.startswith("Wrote "), r.stdout
    if want:
        assert one_error_line(r) is None, one_error_line(r)


# -- special files and broken links as inputs: every command fails fast, on one line ---------------------

def _loop(p: Path) -> Path:
    (p.parent / "loop_b").symlink_to(p)
    return link(p, p.parent / "loop_b")


BAD_INPUTS = {
    **{name: (lambda m: lambda d: m(d / "x.safetensors"))(make) for name, make in SPECIAL.items()},
    "dir_without_config": lambda d: mkdirs(d / "adapter", "readme.txt", "adapter_model.safetensors.txt"),
    "dangling_symlink": lambda d: link(d / "x.safetensors", d / "gone.safetensors"),
    "symlink_loop": lambda d: _loop(d / "x.safetensors"),
    "symlink_to_fifo": lambda d: link(d / "x.safetensors", make_fifo(d / "fifo")),
}
READERS = {
    "inspect": lambda x, o: ["inspect", x],
    "inspect_json": lambda x, o: ["inspect", x, "--json"],
    "validate": lambda x, o: ["validate", x],
    "validate_json": lambda x, o: ["validate", x, "--json"],
    "split": lambda x, o: ["split", x, "--keep", "style", "-o", o / "o.safetensors"],
    "convert_kohya": lambda x, o: ["convert", x, "--to", "kohya", "-o", o / "o.safetensors"],
    "convert_peft": lambda x, o: ["convert", x, "--to", "peft", "-o", o / "p"],
    "tag": lambda x, o: ["tag", x, "--preset", "b-lora", "-o", o / "o.safetensors", "--force"],
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("badin")
    keys, calls = [], []
    for name, make in BAD_INPUTS.items():
        x = make(mkdirs(base / "in" / name))
        for cmd, argv in READERS.items():
            keys.append((name, cmd))
            calls.append(argv(x, mkdirs(base / "out" / name / cmd)))
    before = tree(base / "in")
    results = dict(zip(keys, run_batch(calls, per_call=5)))
    return base, results, diff(before, tree(base / "in"))


@pytest.mark.parametrize("cmd", list(READERS))
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_fails_fast_on_one_line(bad_inputs, name, cmd):
    base, results, changed = bad_inputs
    r = results[(name, cmd)]
    assert r.rc != HANG, "the command blocked on the input"
    if cmd.startswith("validate"):
        assert r.rc == 1, (r.rc, r.stdout, r.stderr)
        assert "Traceback" not in r.stdout + r.stderr
        doc = json_or_none(r.stdout)
        assert doc["files"][0]["status"] == "fail" if cmd.endswith("_json") else "FAIL" in r.stdout, r.stdout
    else:
        assert r.rc not in (0, 70), f"exit {r.rc}; stderr {r.stderr!r}"
        assert one_error_line(r) is None, one_error_line(r)
    assert os.listdir(base / "out" / name / cmd) == [], "something was written"
    assert not [d for d in changed if d.startswith(name + "/") or d.startswith(name + ":")], changed


# -- signals in the middle of a big write ----------------------------------------------------------------

@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    assert _big_blora(path) > 200e6  # ~330 MB of sparse zeros: ~1.5 s to copy, written in milliseconds
    return path


SIG_MODES = {  # name -> (argv tail, target name, make the old target or None)
    "kohya": (["--to", "kohya"], "t.safetensors", None),
    "kohya_force": (["--to", "kohya", "--force"], "t.safetensors", write),
    "peft": (["--to", "peft"], "p", None),
    "peft_force": (["--to", "peft", "--force"], "p", _peft),
}
SIGNALS = {"sigint": (signal.SIGINT, 130, ("interrupt",)),
           "sigterm": (signal.SIGTERM, 143, ("terminat", "interrupt")),
           "sigkill": (signal.SIGKILL, -signal.SIGKILL, None)}


@pytest.mark.parametrize("sig", list(SIGNALS))
@pytest.mark.parametrize("mode", list(SIG_MODES))
def test_signal_mid_write(big, tmp_path, mode, sig):
    tail, name, make_old = SIG_MODES[mode]
    signum, want_rc, words = SIGNALS[sig]
    out = mkdirs(tmp_path / "out")
    target = out / name
    if make_old:
        make_old(target)
    before, big_before = tree(out), (big.stat().st_mtime_ns, big.stat().st_blocks)
    argv = ["convert", str(big), *tail, "-o", str(target)]
    proc = subprocess.Popen([sys.executable, "-m", "adapterctl.cli.main", *argv],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        link = wait_mid_write(proc, out)
        if proc.poll() is not None:
            pytest.fail(f"the writer finished (exit {proc.returncode}) before the signal: enlarge the input")
        proc.send_signal(signum)
        try:
            _stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 15 s after {sig} (output fd seen: {link!r})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        err, after = stderr.decode("utf-8", "replace"), tree(out)
        changed = diff(before, after)
        problems = []
        if (big.stat().st_mtime_ns, big.stat().st_blocks) != big_before:
            problems.append("the input was written to")
        if proc.returncode != want_rc:
            problems.append(f"exit {proc.returncode}, want {want_rc}")
        if words:
            lines = err.splitlines()
            if not (len(lines) == 1 and lines[0].startswith("error: ") and any(w in err.lower() for w in words)):
                problems.append(f"stderr is not one 'error: ' line saying {'/'.join(words)}: {err[-300:]!r}")
        elif mode.startswith("peft"):
            # A killed peft write may leave its hidden staging directory, nothing else.
            changed = [d for d in changed if not d.split("/")[0].split(":")[0].endswith(".adapterctl-tmp")]
        if changed:
            problems.append(f"output dir changed / left behind: {changed}")
        assert not problems, "\n".join(problems + [f"(signalled with output fd {link!r})"])
    finally:
        for p in out.iterdir():  # partial files are up to 330 MB: do not leave them to pytest's retention
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
