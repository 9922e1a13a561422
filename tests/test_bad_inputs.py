"""Every bad input from the issue list, through every command of the real CLI.

Contract checked for inspect, split and convert: exactly one line on stderr, starting 'error:',
no traceback, the documented exit code, nothing on stdout (or, with --json, one parseable error
object), no output or temporary file left behind, the input's bytes and mtime untouched.
'validate' has its own documented contract: a file that cannot be opened is a failed check in the
report (exit 1), never an error line, so one bad file does not hide the verdict on the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from _cli_helpers import REPO, run_cli, run_cli_batch
from _fs_helpers import drop_file_caps

from adapterctl.io.safetensors_file import SafetensorsFile

VECTORS = REPO / "spec" / "vectors"
GOOD_VECTOR = VECTORS / "valid_blora_old_diffusers.safetensors"

# name -> (how to make it in a directory, expected error code, expected exit code)
EXIT = {"input_error": 2, "invalid_file": 3, "unsafe_file": 3, "unknown_architecture": 4, "layout_error": 4,
        "usage_error": 2, "output_exists": 6}


def _copy(vector: str, name: str):
    def make(d: Path) -> Path:
        shutil.copyfile(VECTORS / vector, d / name)
        return d / name
    return make


def _directory(d: Path) -> Path:
    (d / "not_an_adapter").mkdir()
    (d / "not_an_adapter" / "readme.txt").write_text("hello")
    return d / "not_an_adapter"


def _peft_dir_with_pickle(d: Path) -> Path:
    p = d / "peft_pickle"
    p.mkdir()
    (p / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    shutil.copyfile(VECTORS / "invalid_pickle.ckpt", p / "adapter_model.bin")
    return p


def _through_a_file(d: Path) -> Path:
    (d / "plain_file").write_bytes(b"x")
    return d / "plain_file" / "adapter.safetensors"  # ENOTDIR: a path that can never be opened


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "fifo.safetensors")  # opening it would block: the reader must refuse before open()
    return d / "fifo.safetensors"


def _missing(d: Path) -> Path:
    return d / "does_not_exist.safetensors"


BAD: dict[str, tuple] = {
    "truncated": (_copy("invalid_truncated.safetensors", "truncated.safetensors"), "invalid_file"),
    "truncated_length": (_copy("invalid_truncated_length.safetensors", "short.safetensors"), "invalid_file"),
    "header_len_gt_file": (_copy("invalid_header_len_gt_file.safetensors", "hlen.safetensors"), "invalid_file"),
    "header_over_cap": (_copy("invalid_header_over_cap.safetensors", "cap.safetensors"), "invalid_file"),
    "invalid_json": (_copy("invalid_json.safetensors", "json.safetensors"), "invalid_file"),
    "offsets_out_of_range": (_copy("invalid_offsets_out_of_range.safetensors", "oob.safetensors"), "invalid_file"),
    "overlapping_offsets": (_copy("invalid_overlapping_offsets.safetensors", "overlap.safetensors"), "invalid_file"),
    "unknown_dtype": (_copy("invalid_unknown_dtype.safetensors", "dtype.safetensors"), "invalid_file"),
    "shape_size_mismatch": (_copy("invalid_shape_size_mismatch.safetensors", "shape.safetensors"), "invalid_file"),
    "zero_length": (_copy("invalid_zero_length.safetensors", "empty.safetensors"), "invalid_file"),
    "pickle_ckpt": (_copy("invalid_pickle.ckpt", "model.ckpt"), "unsafe_file"),
    "pickle_pt_zip": (_copy("invalid_pickle_renamed.safetensors", "model.pt"), "unsafe_file"),
    "pickle_bin": (_copy("invalid_pickle.ckpt", "pytorch_lora_weights.bin"), "unsafe_file"),
    "pickle_renamed": (_copy("invalid_pickle_renamed.safetensors", "renamed.safetensors"), "unsafe_file"),
    "pickle_renamed_plain": (_copy("invalid_pickle.ckpt", "renamed_plain.safetensors"), "unsafe_file"),
    "peft_dir_with_pickle": (_peft_dir_with_pickle, "unsafe_file"),
    "directory": (_directory, "input_error"),
    "missing": (_missing, "input_error"),
    "path_through_file": (_through_a_file, "input_error"),
    "fifo": (_fifo, "input_error"),
    "unknown_arch_modelspec": (_copy("invalid_unknown_arch_modelspec.safetensors", "sd15ms.safetensors"),
                               "unknown_architecture"),
    "unknown_arch_names": (_copy("invalid_unknown_arch_sd15_names.safetensors", "sd15.safetensors"),
                           "unknown_architecture"),
    "rank_mismatch": (_copy("invalid_rank_mismatch.safetensors", "rank.safetensors"), "layout_error"),
}

# command name -> argv builder (input, fresh output dir)
COMMANDS = {
    "inspect": lambda x, o: ["inspect", x],
    "inspect_json": lambda x, o: ["inspect", x, "--json"],
    "inspect_weights": lambda x, o: ["inspect", x, "--weights"],
    "split": lambda x, o: ["split", x, "--keep", "style", "-o", o / "out.safetensors"],
    "split_json": lambda x, o: ["split", x, "--keep", "style", "-o", o / "out.safetensors", "--json"],
    "convert_kohya": lambda x, o: ["convert", x, "--to", "kohya", "-o", o / "out.safetensors"],
    "convert_diffusers_json": lambda x, o: ["convert", x, "--to", "diffusers", "-o", o / "out.safetensors", "--json"],
    "convert_peft": lambda x, o: ["convert", x, "--to", "peft", "-o", o / "peft_out"],
    "tag": lambda x, o: ["tag", x, "--preset", "b-lora", "-o", o / "out.safetensors", "--force"],
}


def _fingerprint(path: Path):
    """Bytes and mtime of a file, or of every file in a directory; None for what cannot be read."""
    try:
        if path.is_dir():
            return {p.name: _fingerprint(p) for p in sorted(path.iterdir())}
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return ("special", st.st_mode, st.st_mtime_ns)
        return (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns)
    except OSError as exc:
        return ("unreadable", exc.errno)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Run every (bad input, command) pair once, in one interpreter; hand the results to the tests."""
    root = tmp_path_factory.mktemp("bad")
    inputs, before, calls, keys = {}, {}, [], []
    for name, (make, _code) in BAD.items():
        d = root / "in" / name
        d.mkdir(parents=True)
        inputs[name] = make(d)
        before[name] = _fingerprint(d)
        for cmd, argv in COMMANDS.items():
            out = root / "out" / name / cmd
            out.mkdir(parents=True)
            calls.append(argv(inputs[name], out))
            keys.append((name, cmd))
        for cmd in ("validate", "validate_json"):
            calls.append(["validate", inputs[name]] + (["--json"] if cmd == "validate_json" else []))
            keys.append((name, cmd))
    results = dict(zip(keys, run_cli_batch(calls, timeout=120)))
    return root, inputs, before, results


@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_one_error_line_and_exit_code(matrix, name, cmd):
    _root, _inputs, _before, results = matrix
    r = results[(name, cmd)]
    code = BAD[name][1]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert len(r.error_lines) == 1, r.stderr
    assert r.error_lines[0].startswith("error: "), r.stderr
    assert r.rc == EXIT[code], (r.rc, r.stderr)
    if cmd.endswith("_json"):
        doc = json.loads(r.stdout)
        assert doc["ok"] is False and doc["error"]["code"] == code, doc
        assert doc["error"]["message"]
    else:
        assert r.stdout == "", r.stdout


@pytest.mark.parametrize("name", list(BAD))
def test_validate_reports_a_failed_file(matrix, name):
    _root, _inputs, _before, results = matrix
    code = BAD[name][1]
    text, js = results[(name, "validate")], results[(name, "validate_json")]
    for r in (text, js):
        assert r.rc == 1, (r.rc, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout
    assert "FAIL" in text.stdout
    doc = json.loads(js.stdout)
    assert doc["ok"] is False and doc["summary"]["failed"] == 1
    (report,) = doc["files"]
    assert report["status"] == "fail"
    assert any(c["status"] == "fail" and f"[{code}]" in c["message"] for c in report["checks"]), report


def test_nothing_left_behind_and_inputs_untouched(matrix):
    root, _inputs, before, _results = matrix
    for name in BAD:
        assert _fingerprint(root / "in" / name) == before[name], f"{name}: input directory changed"
        for cmd in COMMANDS:
            left = sorted(p.name for p in (root / "out" / name / cmd).iterdir())
            assert left == [], f"{name}/{cmd} left {left}"


def test_default_output_beside_a_bad_input_is_not_created(tmp_path):
    # Without -o the output goes beside the input: a failure must not leave it (or a temp file) there.
    bad = _copy("invalid_truncated.safetensors", "t.safetensors")(tmp_path)
    snapshot = _fingerprint(tmp_path)
    for argv in (["convert", bad, "--to", "diffusers"], ["split", bad, "--keep", "style"], ["convert", bad, "--to", "peft"]):
        r = run_cli(*argv)
        assert r.rc == 3 and len(r.error_lines) == 1 and r.error_lines[0].startswith("error: ")
    assert _fingerprint(tmp_path) == snapshot


def test_unreadable_file(tmp_path):
    prefix = drop_file_caps()
    if prefix is None:
        pytest.skip("running as root without setpriv: chmod 000 cannot make a file unreadable here")
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    target = d / "locked.safetensors"
    shutil.copyfile(GOOD_VECTOR, target)
    target.chmod(0)
    out = d / "out"
    out.mkdir()
    try:
        for argv in (["inspect", target], ["inspect", target, "--json"],
                     ["convert", target, "--to", "kohya", "-o", out / "o.safetensors"],
                     ["split", target, "--keep", "style", "-o", out / "o.safetensors"]):
            r = run_cli(*argv, prefix=prefix)
            assert "Traceback" not in r.stderr
            assert len(r.error_lines) == 1 and r.error_lines[0].startswith("error: "), r.stderr
            # click's own Path check (os.access) may answer before the reader's open() does.
            assert "permission denied" in r.stderr or "is not readable" in r.stderr, r.stderr
            assert r.rc == 2, r.stderr
            if "--json" in argv:
                assert json.loads(r.stdout)["error"]["code"] in ("input_error", "usage_error")
        assert list(out.iterdir()) == []
    finally:
        target.chmod(0o644)


def test_real_subprocess_spot_check():
    # The batch runner calls adapterctl.cli.main.run(); check one case through the real entry point too.
    r = run_cli("inspect", VECTORS / "invalid_header_over_cap.safetensors", "--json")
    assert r.rc == 3 and len(r.error_lines) == 1 and r.error_lines[0].startswith("error: ")
    assert json.loads(r.stdout)["error"]["code"] == "invalid_file"


# -- outputs: overwrite, --force, -o == input, missing directory ------------------------------------

@pytest.fixture
def good(tmp_path) -> Path:
    src = tmp_path / "in" / "blora.safetensors"
    src.parent.mkdir()
    shutil.copyfile(GOOD_VECTOR, src)
    return src


WRITERS = {
    "convert": lambda x, o: ["convert", x, "--to", "kohya", "-o", o],
    "split": lambda x, o: ["split", x, "--keep", "style", "-o", o],
    "tag": lambda x, o: ["tag", x, "--preset", "b-lora", "-o", o],
}


@pytest.mark.parametrize("verb", list(WRITERS))
def test_existing_output_needs_force(tmp_path, good, verb):
    target = tmp_path / "existing.safetensors"
    target.write_bytes(b"precious")
    mtime = target.stat().st_mtime_ns
    src_before = _fingerprint(good)

    r, rj = run_cli_batch([WRITERS[verb](good, target), WRITERS[verb](good, target) + ["--json"]])
    for res in (r, rj):
        assert res.rc == 6, res.stderr
        assert len(res.error_lines) == 1 and res.error_lines[0].startswith("error: ") and "--force" in res.stderr
    assert json.loads(rj.stdout)["error"]["code"] == "output_exists"
    assert target.read_bytes() == b"precious" and target.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.safetensors", "in"]

    forced = run_cli(*WRITERS[verb](good, target), "--force", "--json")
    assert forced.rc == 0, forced.stderr
    assert json.loads(forced.stdout)["ok"] is True
    assert target.read_bytes()[8:9] == b"{"  # replaced by a safetensors file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.safetensors", "in"]  # no temp file left
    assert _fingerprint(good) == src_before


@pytest.mark.parametrize("verb", list(WRITERS))
def test_output_equal_to_input_is_refused(good, verb):
    before = _fingerprint(good.parent)
    link = good.parent / "alias.safetensors"
    link.symlink_to(good.name)
    before_link = _fingerprint(good)
    results = run_cli_batch([WRITERS[verb](good, good), WRITERS[verb](good, good) + ["--force"],
                             WRITERS[verb](good, link) + ["--force"]])
    for r in results:
        assert r.rc == 2, r.stderr
        assert len(r.error_lines) == 1 and r.error_lines[0].startswith("error: ")
        assert "the output is the input" in r.stderr
    link.unlink()
    assert _fingerprint(good.parent) == before and _fingerprint(good) == before_link


def test_peft_output_equal_to_input_directory_is_refused(tmp_path):
    src = tmp_path / "adapter"
    shutil.copytree(VECTORS / "valid_peft_dir", src)
    before = _fingerprint(src)
    r = run_cli("convert", src, "--to", "peft", "-o", src, "--force")
    assert r.rc == 2 and len(r.error_lines) == 1 and r.error_lines[0].startswith("error: "), r.stderr
    assert _fingerprint(src) == before


@pytest.mark.parametrize("verb", list(WRITERS))
def test_missing_output_directory(tmp_path, good, verb):
    target = tmp_path / "no" / "such" / "dir" / "out.safetensors"
    r, rj = run_cli_batch([WRITERS[verb](good, target), WRITERS[verb](good, target) + ["--json"]])
    for res in (r, rj):
        assert res.rc == 2, res.stderr
        assert len(res.error_lines) == 1 and res.error_lines[0].startswith("error: ")
        assert "does not exist" in res.stderr
    assert json.loads(rj.stdout)["error"]["code"] == "input_error"
    assert not (tmp_path / "no").exists()


def test_successful_commands_leave_the_input_untouched(tmp_path, good):
    before = _fingerprint(good)
    calls = [["inspect", good], ["inspect", good, "--weights", "--json"], ["validate", good],
             ["split", good, "--keep", "content", "-o", tmp_path / "c.safetensors"],
             ["convert", good, "--to", "diffusers", "-o", tmp_path / "d.safetensors"],
             ["convert", good, "--to", "peft", "-o", tmp_path / "p"],
             ["tag", good, "--preset", "b-lora", "-o", tmp_path / "t.safetensors"]]
    for argv, r in zip(calls, run_cli_batch(calls)):
        assert r.rc == 0, (argv, r.stderr)
    assert _fingerprint(good) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "d.safetensors", "in", "p",
                                                         "t.safetensors"]


def test_header_length_that_starts_like_a_pickle_is_not_a_pickle(tmp_path):
    """Regression: 0x80 0x02 is also how a 640-byte header length begins (little-endian 0x280)."""
    header = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight":
              {"dtype": "F16", "shape": [1, 640], "data_offsets": [0, 1280]},
              "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight":
              {"dtype": "F16", "shape": [640, 1], "data_offsets": [1280, 2560]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    for length in (0x280, 0x380, 0x480, 0x580):
        body = raw + b" " * (length - len(raw))
        path = tmp_path / f"h{length}.safetensors"
        path.write_bytes(length.to_bytes(8, "little") + body + b"\0" * 2560)
        assert path.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
    results = run_cli_batch([["inspect", p, "--json"] for p in sorted(tmp_path.iterdir())])
    for r in results:
        assert r.rc == 0, r.stderr
        assert json.loads(r.stdout)["modules"] == 1


def test_derived_manifest_is_validated_like_a_read_one(tmp_path):
    """Regression: tagging both branches of a two-role module with one role used to end in exit 70
    ('duplicate tensor names in output'): model_copy skipped the manifest's validators."""
    out = tmp_path / "t.safetensors"
    r = run_cli("tag", VECTORS / "valid_content_style_same_module.safetensors", "--role", "style=unet", "-o", out)
    assert r.rc == 2, r.stderr
    assert len(r.error_lines) == 1 and r.error_lines[0].startswith("error: tag would make an invalid adapter")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_output_header_over_the_cap_is_refused(tmp_path):
    """A file whose header is just under safetensors' cap can grow past it when converted (kohya
    adds alpha tensors and a manifest). The writer refuses (exit 5) instead of writing a file that
    neither adapterctl nor safetensors can read; --strip-metadata is the way out."""
    with SafetensorsFile(GOOD_VECTOR) as st:
        header = {name: {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [t.start, t.end]}
                  for name, t in st.tensors.items()}
        data = st.read_range(st.data_start, st.size - st.data_start)
    pad = 100_000_000 - len(json.dumps(header)) - 64
    header["__metadata__"] = {"padding": "x" * pad}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    assert 99_990_000 < len(raw) <= 100_000_000
    src = tmp_path / "in" / "nearcap.safetensors"
    src.parent.mkdir()
    src.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("convert", src, "--to", "kohya", "-o", out / "k.safetensors", timeout=120)
    assert r.rc == 5, r.stderr
    assert len(r.error_lines) == 1 and "over the 100,000,000-byte cap" in r.stderr
    assert list(out.iterdir()) == []
    r = run_cli("convert", src, "--to", "kohya", "-o", out / "k.safetensors", "--strip-metadata", timeout=120)
    assert r.rc == 0, r.stderr
    assert [p.name for p in out.iterdir()] == ["k.safetensors"]


@pytest.mark.parametrize("argv,hint", [(["splt", "x"], "adapterctl --help"),
                                       (["split", "--bogus", "x"], "adapterctl split --help"),
                                       (["merge", "--bogus"], "adapterctl merge --help")])
def test_a_usage_error_hints_at_the_right_help(argv, hint):
    r = run_cli(*argv)
    assert r.rc == 2
    assert r.stderr.strip().endswith(f"(hint: {hint})"), r.stderr
    assert "adapterctl adapterctl" not in r.stderr
