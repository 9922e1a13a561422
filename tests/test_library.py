"""adapterctl ls / lock / verify: a library directory, its lock, and what verify catches.

The small library is made of the shipped examples and conformance vectors in nested
directories, a peft directory, a broken file, a hidden directory that must be skipped and a
directory link back to the root that must not be followed. The acceptance test generates 1,000
tiny kohya adapters and changes one byte in one of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from _cli_helpers import REPO, listing, run_cli, run_cli_batch

from adapterctl.arch import load_arch

EXAMPLES = REPO / "adapterctl" / "examples"
VECTORS = REPO / "spec" / "vectors"
SIDECAR = ".adapterctl-origins.json"
REV = "0123456789abcdef0123456789abcdef01234567"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_library(root: Path) -> Path:
    (root / "styles").mkdir(parents=True)
    (root / "misc" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for name in ("blora_example.safetensors", "blora_painting_example.safetensors"):
        shutil.copy(EXAMPLES / name, root / "styles" / name)
    shutil.copy(EXAMPLES / "locon_example.safetensors", root / "misc" / "locon.safetensors")
    shutil.copy(EXAMPLES / "locon_example.safetensors", root / ".hidden" / "skipped.safetensors")
    for name in ("valid_expert_styleinject", "valid_tagged_adapterctl", "valid_kohya_sgm_locon"):
        shutil.copy(VECTORS / f"{name}.safetensors", root / "misc" / "deep" / f"{name}.safetensors")
    shutil.copytree(VECTORS / "valid_peft_dir", root / "peft_adapter")
    shutil.copy(VECTORS / "invalid_json.safetensors", root / "broken.safetensors")
    (root / "notes.txt").write_text("not an adapter")
    os.symlink("..", root / "styles" / "up")  # a loop, if links to directories were followed
    return root


EXPECTED = ["broken.safetensors", "misc/deep/valid_expert_styleinject.safetensors",
            "misc/deep/valid_kohya_sgm_locon.safetensors", "misc/deep/valid_tagged_adapterctl.safetensors",
            "misc/locon.safetensors", "peft_adapter", "styles/blora_example.safetensors",
            "styles/blora_painting_example.safetensors"]


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    return make_library(tmp_path_factory.mktemp("lib") / "adapters")


@pytest.fixture
def fresh(tmp_path) -> Path:
    return make_library(tmp_path / "adapters")


def _json(res) -> dict:
    assert res.rc in (0, 1), res.stderr
    return json.loads(res.stdout)


# -- ls ----------------------------------------------------------------------------------------

def test_ls_lists_every_adapter_once_skipping_hidden_and_not_following_links(lib):
    res = run_cli("ls", lib, "--json", timeout=60)
    assert res.rc == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema"] == "adapterctl.ls/1"
    assert [a["path"] for a in doc["adapters"]] == EXPECTED
    rows = {a["path"]: a for a in doc["adapters"]}
    assert rows["broken.safetensors"]["status"] == "invalid"
    assert "[invalid_file]" in rows["broken.safetensors"]["reason"]
    blora = rows["styles/blora_example.safetensors"]
    assert blora == {"path": "styles/blora_example.safetensors", "kind": "file", "status": "ok", "reason": None,
                     "architecture": "sdxl", "layout": "diffusers-old", "method": "b-lora",
                     "roles": {"content": 80, "style": 80}, "modules": 160, "rank": {"min": 2, "max": 2},
                     "size": (EXAMPLES / "blora_example.safetensors").stat().st_size}
    assert rows["misc/locon.safetensors"]["rank"] == {"min": 2, "max": 4}
    peft = rows["peft_adapter"]
    assert peft["kind"] == "peft" and peft["layout"] == "peft" and peft["status"] == "ok"
    assert peft["size"] == sum(p.stat().st_size for p in (lib / "peft_adapter").iterdir())
    assert doc["summary"] == {"adapters": 8, "invalid": 1, "bytes": sum(a["size"] for a in doc["adapters"]),
                              "scanned": 8}
    assert "sha256" not in blora and doc["warnings"] == []


def test_ls_human_table_and_exit_codes(lib, tmp_path):
    res = run_cli("ls", lib)
    assert res.rc == 0 and res.stderr == ""
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["path", "arch", "layout", "method", "roles", "rank", "size", "status"]
    row = next(line for line in lines if line.startswith("misc/locon.safetensors"))
    assert row.split()[1:] == ["sdxl", "kohya", "locon", "untagged", "23", "2-4", "715.7", "kB", "ok"]
    assert any(line.startswith("peft_adapter/ ") for line in lines)
    assert any(line.startswith("! broken.safetensors: header is not valid JSON") for line in lines)
    assert lines[-1] == "8 adapters, 1 invalid, 4.4 MB"
    assert not any("skipped" in line for line in lines)
    calls = [["ls", tmp_path / "missing"], ["ls", lib / "misc" / "locon.safetensors"], ["ls", lib, "--quiet"],
             ["ls", lib, "--role", "painter"], ["ls", lib, "--arch", "sd15"]]
    missing, a_file, quiet, bad_role, bad_arch = run_cli_batch(calls)
    for bad in (missing, a_file, bad_role, bad_arch):
        assert bad.rc == 2 and len(bad.error_lines) == 1 and bad.stdout == "", bad
    assert "no such directory" in missing.stderr and "not a directory" in a_file.stderr
    assert quiet.rc == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_ls_filters_by_role_and_architecture(lib):
    style, expert, untagged, sdxl, tiny = (_json(r) for r in run_cli_batch([
        ["ls", lib, "--role", "style", "--json"], ["ls", lib, "--role", "expert", "--json"],
        ["ls", lib, "--role", "untagged", "--json"], ["ls", lib, "--arch", "sdxl", "--json"],
        ["ls", lib, "--arch", "sdxl-tiny", "--json"]]))
    assert [a["path"] for a in style["adapters"]] == [
        "misc/deep/valid_tagged_adapterctl.safetensors", "styles/blora_example.safetensors",
        "styles/blora_painting_example.safetensors"]
    assert style["filters"] == {"role": "style", "architecture": None} and style["summary"]["scanned"] == 8
    assert [a["path"] for a in expert["adapters"]] == ["misc/deep/valid_expert_styleinject.safetensors"]
    assert {a["path"] for a in untagged["adapters"]} == {"misc/deep/valid_kohya_sgm_locon.safetensors",
                                                         "misc/locon.safetensors", "peft_adapter"}
    assert len(sdxl["adapters"]) == 7 and all(a["status"] == "ok" for a in sdxl["adapters"])
    assert tiny["adapters"] == [] and tiny["summary"]["adapters"] == 0


def test_ls_sha256_matches_the_bytes_and_the_peft_rule(lib):
    doc = _json(run_cli("ls", lib, "--sha256", "--json"))
    rows = {a["path"]: a for a in doc["adapters"]}
    assert rows["styles/blora_example.safetensors"]["sha256"] == _sha(EXAMPLES / "blora_example.safetensors")
    assert rows["broken.safetensors"]["sha256"] == _sha(VECTORS / "invalid_json.safetensors")
    assert rows["broken.safetensors"]["manifest_sha256"] is None
    config, weights = _sha(lib / "peft_adapter" / "adapter_config.json"), \
        _sha(lib / "peft_adapter" / "adapter_model.safetensors")
    want = hashlib.sha256(f"adapter_config.json\0{config}\nadapter_model.safetensors\0{weights}".encode()).hexdigest()
    assert rows["peft_adapter"]["sha256"] == want
    assert all(a["origin"] is None for a in doc["adapters"])


def test_reader_modes_agree(lib):
    from adapterctl.library.read import read_rows
    from adapterctl.library.scan import scan

    cands = scan(lib).candidates
    serial = read_rows(cands, sha256=True, mode="serial")
    assert read_rows(cands, sha256=True, mode="thread", jobs=2) == serial
    assert read_rows(cands, sha256=True, mode="process", jobs=2) == serial


def test_a_looping_file_link_is_invalid_and_lock_refuses_it(fresh):
    os.symlink("loop.safetensors", fresh / "loop.safetensors")
    ls, lock = run_cli_batch([["ls", fresh, "--json"], ["lock", fresh]])
    row = next(a for a in _json(ls)["adapters"] if a["path"] == "loop.safetensors")
    assert row["status"] == "invalid" and "symbolic links" in row["reason"]
    assert lock.rc == 2 and len(lock.error_lines) == 1 and "a lock would be incomplete" in lock.stderr
    assert not (fresh / "adapters.lock").exists()


# -- lock and verify ---------------------------------------------------------------------------

def test_lock_then_verify_is_clean_and_the_lock_is_canonical(fresh):
    before = listing(fresh)
    first, again, verify, verify_json = run_cli_batch([
        ["lock", fresh, "--json"], ["lock", fresh, "--json"], ["verify", fresh / "adapters.lock"],
        ["verify", fresh / "adapters.lock", "--json"]])
    assert first.rc == 0 and json.loads(first.stdout)["changed"] is True
    assert "1 of 8 files do not open" in first.stderr  # broken.safetensors, locked as invalid
    assert again.rc == 0 and json.loads(again.stdout)["changed"] is False
    text = (fresh / "adapters.lock").read_text()
    doc = json.loads(text)
    assert text == json.dumps(doc, sort_keys=True, indent=2) + "\n"
    assert doc["format"] == "adapterctl.lock/1" and [e["path"] for e in doc["files"]] == EXPECTED
    assert doc["files"][0] == {"path": "broken.safetensors", "sha256": _sha(fresh / "broken.safetensors"),
                               "size": 57, "origin": None, "invalid": doc["files"][0]["invalid"]}
    blora = doc["files"][-2]
    assert set(blora) == {"path", "sha256", "size", "origin", "manifest_sha256", "architecture", "layout", "roles"}
    assert blora["roles"] == {"content": 80, "style": 80} and blora["layout"] == "diffusers-old"
    # The broken file is the one difference: a locked file that does not open fails verify.
    assert verify.rc == 1 and verify.stdout.splitlines()[0].startswith("! broken.safetensors: ")
    (fresh / "broken.safetensors").unlink()
    run_cli("lock", fresh)
    clean = run_cli_batch([["verify", fresh / "adapters.lock"], ["verify", fresh / "adapters.lock", "--json"]])
    assert clean[0].rc == 0 and clean[0].stdout == "ok " + str(fresh / "adapters.lock") + ": 7 files, identical\n"
    report = json.loads(clean[1].stdout)
    assert report["ok"] and report["differences"] == [] and report["files"] == {"locked": 7, "found": 7}
    assert json.loads(verify_json.stdout)["differences"][0]["kind"] == "invalid"
    after = listing(fresh)
    assert {k: v for k, v in after.items() if k != "adapters.lock"} == \
        {k: v for k, v in before.items() if k != "broken.safetensors"}  # inputs untouched


def test_verify_reports_added_removed_modified_and_defaults_to_cwd(fresh):
    (fresh / "broken.safetensors").unlink()
    assert run_cli("lock", fresh).rc == 0
    victim = fresh / "misc" / "locon.safetensors"
    data = bytearray(victim.read_bytes())
    old_sha = _sha(victim)
    data[-5] ^= 0x01
    victim.write_bytes(bytes(data))
    shutil.copy(EXAMPLES / "blora_example.safetensors", fresh / "misc" / "new.safetensors")
    shutil.rmtree(fresh / "peft_adapter")
    res = run_cli("verify", cwd=fresh)  # LOCK defaults to ./adapters.lock
    assert res.rc == 1, res.stderr
    assert res.stdout.splitlines() == [
        f"M misc/locon.safetensors (sha256 {old_sha[:12]}… -> {_sha(victim)[:12]}…)",
        "+ misc/new.safetensors",
        "- peft_adapter",
        "FAIL adapters.lock: 3 differences (1 modified, 1 added, 1 removed)"]
    doc = _json(run_cli("verify", "--json", cwd=fresh))
    assert [(d["kind"], d["path"]) for d in doc["differences"]] == [
        ("modified", "misc/locon.safetensors"), ("added", "misc/new.safetensors"), ("removed", "peft_adapter")]
    assert doc["differences"][0]["locked"] == {"sha256": old_sha, "size": len(data)}
    assert run_cli("verify", "--quiet", cwd=fresh).stdout == ""


def test_lock_output_rules(fresh, tmp_path):
    (fresh / "taken.lock").write_text("my notes\n")
    (fresh / "dir.lock").mkdir()
    calls = [["lock", fresh, "-o", tmp_path / "elsewhere.lock"],
             ["lock", fresh, "-o", fresh / "x.safetensors"],
             ["lock", fresh, "-o", fresh / "taken.lock"],
             ["lock", fresh, "-o", fresh / "dir.lock", "--force"],
             ["lock", fresh, "-o", fresh / "taken.lock", "--force"],
             ["lock", tmp_path / "nope"]]
    outside, named_like_adapter, taken, a_dir, forced, missing = run_cli_batch(calls)
    for res, code in ((outside, 2), (named_like_adapter, 2), (taken, 6), (a_dir, 2), (missing, 2)):
        assert res.rc == code and len(res.error_lines) == 1 and res.stdout == "", (code, res)
    assert forced.rc == 0 and json.loads((fresh / "taken.lock").read_text())["format"] == "adapterctl.lock/1"
    assert not (tmp_path / "elsewhere.lock").exists() and not (fresh / "x.safetensors").exists()


# -- hostile locks -----------------------------------------------------------------------------

def _entry(path: str, **over) -> dict:
    e = {"path": path, "sha256": "0" * 64, "size": 1, "origin": None, "manifest_sha256": "1" * 64,
         "architecture": "sdxl", "layout": "kohya", "roles": {"untagged": 1}}
    e.update(over)
    return e


BAD_LOCKS = {
    "bad-json": b'{"format": "adapterctl.lock/1", "files": [',
    "not-utf8": b'\xff\xfe{}',
    "not-an-object": b'[1, 2]',
    "other-document": json.dumps({"format": "adapterctl.origins/1", "files": {}}).encode(),
    "future-version": json.dumps({"format": "adapterctl.lock/2", "files": []}).encode(),
    "deeply-nested": b'{"format": "adapterctl.lock/1", "files": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "huge-number": json.dumps({"format": "adapterctl.lock/1", "files": [_entry("a.safetensors")]}).replace(
        '"size": 1', '"size": ' + "9" * 400).encode(),
    "size-over-u63": json.dumps({"format": "adapterctl.lock/1", "files": [_entry("a.safetensors", size=2**64)]}).encode(),
    "size-is-bool": json.dumps({"format": "adapterctl.lock/1", "files": [_entry("a.safetensors", size=True)]}).encode(),
    "size-is-float": json.dumps({"format": "adapterctl.lock/1", "files": [_entry("a.safetensors", size=1e300)]}).encode(),
    "dotdot": json.dumps({"format": "adapterctl.lock/1", "files": [_entry("../outside.safetensors")]}).encode(),
    "dotdot-inside": json.dumps({"format": "adapterctl.lock/1", "files": [_entry("a/../../outside.safetensors")]}).encode(),
    "absolute": json.dumps({"format": "adapterctl.lock/1", "files": [_entry("/etc/passwd")]}).encode(),
    "hidden": json.dumps({"format": "adapterctl.lock/1", "files": [_entry(".git/config")]}).encode(),
    "backslash": json.dumps({"format": "adapterctl.lock/1", "files": [_entry("..\\outside.safetensors")]}).encode(),
    "duplicate": json.dumps({"format": "adapterctl.lock/1",
                             "files": [_entry("a.safetensors"), _entry("a.safetensors")]}).encode(),
    "duplicate-key": b'{"format": "adapterctl.lock/1", "format": "adapterctl.lock/1", "files": []}',
    "unknown-key": json.dumps({"format": "adapterctl.lock/1", "files": [_entry("a.safetensors", extra=1)]}).encode(),
    "bad-sha": json.dumps({"format": "adapterctl.lock/1", "files": [_entry("a.safetensors", sha256="xyz")]}).encode(),
    "half-invalid": json.dumps({"format": "adapterctl.lock/1",
                                "files": [_entry("a.safetensors", invalid="broken")]}).encode(),
    "bad-origin": json.dumps({"format": "adapterctl.lock/1", "files": [
        _entry("a.safetensors", origin={"repo": "u/n", "revision": "main", "path": "a.safetensors"})]}).encode(),
    "nan": b'{"format": "adapterctl.lock/1", "files": [{"size": NaN}]}',
}


def test_malformed_locks_are_refused_in_one_line(tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(EXAMPLES / "locon_example.safetensors", outside)
    calls = []
    for name, data in BAD_LOCKS.items():
        d = tmp_path / name
        d.mkdir()
        (d / "adapters.lock").write_bytes(data)
        calls.append(["verify", d / "adapters.lock"])
        calls.append(["verify", d / "adapters.lock", "--json"])
    (tmp_path / "dirlock").mkdir()
    (tmp_path / "dirlock" / "adapters.lock").mkdir()
    calls += [["verify", tmp_path / "dirlock" / "adapters.lock"], ["verify", tmp_path / "missing.lock"]]
    results = run_cli_batch(calls)
    names = [n for n in BAD_LOCKS for _ in (0, 1)] + ["lock-is-a-directory", "missing"]
    for name, res in zip(names, results):
        want = 2 if name in ("lock-is-a-directory", "missing") else 3
        assert res.rc == want, (name, res)
        assert len(res.error_lines) == 1 and res.error_lines[0].startswith("error: "), (name, res.stderr)
    by_name = dict(zip(names[::2], results[::2]))
    assert "lock format 'adapterctl.lock/2' is not supported" in by_name["future-version"].stderr
    assert "nested deeper than" in by_name["deeply-nested"].stderr
    assert "has an empty, '.' or '..' segment" in by_name["dotdot"].stderr
    assert "is absolute" in by_name["absolute"].stderr
    assert json.loads(results[1].stdout)["error"]["code"] == "invalid_file"
    assert outside.read_bytes() == (EXAMPLES / "locon_example.safetensors").read_bytes()


def test_a_lock_path_through_a_directory_link_is_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(EXAMPLES / "locon_example.safetensors", outside / "x.safetensors")
    root = tmp_path / "lib"
    root.mkdir()
    os.symlink(outside, root / "link")
    sha = _sha(outside / "x.safetensors")
    lock = {"format": "adapterctl.lock/1", "files": [_entry("link/x.safetensors", sha256=sha, size=715654)]}
    (root / "adapters.lock").write_text(json.dumps(lock))
    res = run_cli("verify", root / "adapters.lock", "--json")
    assert res.rc == 1
    assert [(d["kind"], d["path"]) for d in json.loads(res.stdout)["differences"]] == [("removed", "link/x.safetensors")]


# -- the origins sidecar -----------------------------------------------------------------------

def test_origins_sidecar_fills_origin_only_while_its_sha256_matches(tmp_path):
    root = tmp_path / "pulled"
    (root / "sub").mkdir(parents=True)
    for name in ("a.safetensors", "b.safetensors"):
        shutil.copy(EXAMPLES / "locon_example.safetensors", root / name)
    shutil.copy(EXAMPLES / "blora_example.safetensors", root / "sub" / "c.safetensors")
    good = {"repo": "user/loras", "revision": REV, "path": "locon.safetensors"}
    files = {"a.safetensors": {**good, "sha256": _sha(root / "a.safetensors")},
             "b.safetensors": {**good, "sha256": "f" * 64}}  # b changed since the pull
    (root / SIDECAR).write_text(json.dumps({"format": "adapterctl.origins/1", "files": files}))
    # A nested sidecar speaks for its own directory, and wins over the root's for its files.
    nested = {"repo": "user/blora", "revision": REV, "path": "c.safetensors", "sha256": _sha(root / "sub" / "c.safetensors")}
    (root / "sub" / SIDECAR).write_text(json.dumps({"format": "adapterctl.origins/1", "files": {"c.safetensors": nested}}))
    ls, lock = run_cli_batch([["ls", root, "--sha256", "--json"], ["lock", root, "--json"]])
    origins = {a["path"]: a["origin"] for a in _json(ls)["adapters"]}
    assert origins == {"a.safetensors": good, "b.safetensors": None,
                       "sub/c.safetensors": {k: v for k, v in nested.items() if k != "sha256"}}
    assert lock.rc == 0 and json.loads(lock.stdout)["with_origin"] == 2
    locked = {e["path"]: e["origin"] for e in json.loads((root / "adapters.lock").read_text())["files"]}
    assert locked == origins
    assert run_cli("verify", root / "adapters.lock").rc == 0
    # The same bytes, another recorded origin: verify says so.
    files["a.safetensors"]["repo"] = "someone/else"
    (root / SIDECAR).write_text(json.dumps({"format": "adapterctl.origins/1", "files": files}))
    res = run_cli("verify", root / "adapters.lock")
    assert res.rc == 1 and res.stdout.splitlines()[0] == (
        f"~ a.safetensors: origin user/loras@{REV[:12]}:locon.safetensors -> someone/else@{REV[:12]}:locon.safetensors")
    # No sidecar at all (a directory filled by sync or by hand) contradicts nothing.
    (root / SIDECAR).unlink()
    (root / "sub" / SIDECAR).unlink()
    assert run_cli("verify", root / "adapters.lock").rc == 0


@pytest.mark.parametrize("sidecar", [b"{not json", json.dumps({"format": "adapterctl.origins/9", "files": {}}).encode(),
                                     json.dumps({"format": "adapterctl.origins/1",
                                                 "files": {"../x.safetensors": {}}}).encode(),
                                     b"[" * 10000])
def test_a_malformed_sidecar_is_ignored_with_a_warning(tmp_path, sidecar):
    shutil.copy(EXAMPLES / "locon_example.safetensors", tmp_path / "a.safetensors")
    (tmp_path / SIDECAR).write_bytes(sidecar)
    res = run_cli("ls", tmp_path, "--sha256", "--json")
    assert res.rc == 0 and len(res.error_lines) == 1 and "ignored" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["adapters"][0]["origin"] is None and len(doc["warnings"]) == 1


# -- acceptance: one changed byte in one of 1,000 files ------------------------------------------

def _tiny_kohya(path: Path, seed: int, names: list[str], arch) -> None:
    """A kohya file of rank-1 branches on small text-encoder modules, written without adapterctl."""
    rng = np.random.default_rng(seed)
    header, blobs, offset = {"__metadata__": {"ss_network_dim": "1"}}, [], 0
    for name in names:
        spec, base = arch.modules[name], arch.kohya_name(name)
        for suffix, shape in (("alpha", []), ("lora_down.weight", [1, spec.in_features]),
                              ("lora_up.weight", [spec.out_features, 1])):
            data = (np.array(1.0, np.float16) if suffix == "alpha" else
                    rng.standard_normal(shape).astype(np.float16)).tobytes()
            header[f"{base}.{suffix}"] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + len(data)]}
            blobs.append(data)
            offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


@pytest.fixture(scope="module")
def thousand(tmp_path_factory) -> Path:
    arch = load_arch("sdxl")
    names = ["text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
             "text_encoder.text_model.encoder.layers.0.self_attn.k_proj"]
    root = tmp_path_factory.mktemp("thousand") / "lib"
    for i in range(1000):
        sub = root / f"d{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        _tiny_kohya(sub / f"a{i:04d}.safetensors", i, names, arch)
    return root


def test_lock_and_verify_catch_one_changed_byte_in_one_of_1000_files(thousand):
    lock = thousand / "adapters.lock"
    first = run_cli("lock", thousand, "--json", timeout=120)
    assert first.rc == 0, first.stderr
    assert json.loads(first.stdout)["files"] == 1000 and json.loads(first.stdout)["invalid"] == 0
    victim = thousand / "d13" / "a0613.safetensors"
    data = bytearray(victim.read_bytes())
    try:
        data[-100] ^= 0x01  # one bit of one factor value: the header, and the reading, are unchanged
        victim.write_bytes(bytes(data))
        res = run_cli("verify", lock, "--json", timeout=120)
    finally:
        data[-100] ^= 0x01
        victim.write_bytes(bytes(data))
    assert res.rc == 1, res.stderr
    doc = json.loads(res.stdout)
    assert [(d["kind"], d["path"]) for d in doc["differences"]] == [("modified", "d13/a0613.safetensors")]
    assert doc["files"] == {"locked": 1000, "found": 1000}


def test_odd_entries_never_hang_and_names_are_escaped(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    os.mkfifo(root / "pipe.safetensors")  # a FIFO must never block the listing or the hashing
    shutil.copy(EXAMPLES / "locon_example.safetensors", root / "evil\x1b[2J\u202e.safetensors")
    os.symlink("missing.safetensors", root / "dangling.safetensors")
    peft_root = shutil.copytree(VECTORS / "valid_peft_dir", tmp_path / "peft_root")
    human, js, sha, peft = run_cli_batch([["ls", root], ["ls", root, "--json"], ["ls", root, "--sha256", "--json"],
                                          ["ls", peft_root, "--json"]], timeout=60)
    assert human.rc == 0 and "\x1b" not in human.stdout and "\u202e" not in human.stdout
    assert "evil\\x1b[2J\\u202e.safetensors" in human.stdout
    rows = {a["path"]: a for a in _json(js)["adapters"]}
    assert set(rows) == {"dangling.safetensors", "evil\\x1b[2J\\u202e.safetensors", "pipe.safetensors"}
    assert rows["pipe.safetensors"]["status"] == "invalid" and "not a regular file" in rows["pipe.safetensors"]["reason"]
    assert rows["dangling.safetensors"]["status"] == "invalid"
    assert {a["path"]: a["status"] for a in _json(sha)["adapters"]}["pipe.safetensors"] == "invalid"
    # A library root that is itself a peft directory: its weights are not listed as a bare file.
    assert _json(peft)["adapters"] == [] and "itself a peft adapter directory" in peft.stderr
    # A name with control characters is locked raw (JSON-escaped) and verifies clean.
    (root / "pipe.safetensors").unlink()
    (root / "dangling.safetensors").unlink()
    lock, verify = run_cli_batch([["lock", root], ["verify", root / "adapters.lock"]])
    assert lock.rc == 0 and verify.rc == 0, (lock, verify)
    assert json.loads((root / "adapters.lock").read_text())["files"][0]["path"] == "evil\x1b[2J\u202e.safetensors"
    assert "\x1b" not in (root / "adapters.lock").read_text()
