"""Untrusted strings never reach a terminal raw (spec/FORMAT.md §22).

Files carry ESC/CSI sequences, BEL, NUL, C1 controls and bidi overrides in metadata keys and
values, in tensor names, in the free-form fields of a stored manifest, and in the file name
itself. Whatever inspect prints (text, --json, --markdown), and whatever an error line says,
must show them escaped.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from _cli_helpers import run_cli_batch

from adapterctl.arch import load_arch
from adapterctl.io.writer import OutTensor, write_safetensors

# Every character a terminal may act on: C0 except newline, DEL, C1, line/paragraph separators,
# bidi embeddings/overrides/isolates. (Tab is allowed: it only moves the cursor.)
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
EVIL = "\x1b[31mRED\x1b[0m\x1b]0;pwned\x07\u202egnp.exe\u2066x\u2069\x9b2J\x00nul\u2028"
MARKUP = "[/oops][bold]"  # rich markup: a stray closing tag makes an unescaped print raise MarkupError

ARCH = load_arch("sdxl")
Q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


def _f16(n: int) -> bytes:
    return struct.pack(f"<{n}e", *([0.001] * n))


def _lora_tensors(names: tuple[str, str]) -> list[OutTensor]:
    return [OutTensor.from_bytes(names[0], "F16", (1, 640), _f16(640)),
            OutTensor.from_bytes(names[1], "F16", (640, 1), _f16(640))]


def _metadata_and_keys_file(path: Path) -> None:
    base = ARCH.kohya_name(Q)
    tensors = _lora_tensors((f"{base}.lora_down.weight", f"{base}.lora_up.weight"))
    tensors += _lora_tensors((f"lora_unet_{EVIL}.lora_down.weight", f"lora_unet_{EVIL}.lora_up.weight"))
    tensors.append(OutTensor.from_bytes(f"{EVIL}.unknown", "F16", (2,), _f16(2)))
    meta = {"modelspec.title": EVIL, "modelspec.description": EVIL * 3, "ss_output_name": EVIL,
            f"key{EVIL}": f"value{EVIL}", "ss_tag_frequency": json.dumps({EVIL: {EVIL: 1}})}
    write_safetensors(path, tensors, meta, force=True)


def _manifest_file(path: Path, *, block: str | None = None) -> None:
    """A stored manifest whose free-form strings (not checked against the tensors) are hostile.
    (A hostile ``dtype`` is refused: it must equal the tensors', like every field they determine.)
    With ``block``, the entry's block is that string, which readers refuse (it must match the map)."""
    spec = ARCH.get(Q)
    down, up = f"{Q}.lora_A.weight", f"{Q}.lora_B.weight"
    manifest = {
        "format": "adapterctl.lora", "version": 1, "architecture": "sdxl", "layout": "diffusers",
        "method": f"lora{EVIL}{MARKUP}", "preset": f"p{EVIL}{MARKUP}",
        "role_rules": [{"selector": f"{spec.block}{EVIL}", "role": "style"}],
        "modules": [{"module": Q, "component": "unet", "block": block or spec.block, "kind": "linear", "rank": 1,
                     "alpha": 1.0, "scale": 1.0, "dtype": "F16", "alpha_dtype": f"a{EVIL}",
                     "role": "style", "role_source": "declared", "tensors": {"down": down, "up": up}}],
        "provenance": {"sources": [{"sha256": f"0{EVIL}", "name": f"src{EVIL}", "layout": f"l{EVIL}"}],
                       "operations": [{"op": f"op{EVIL}", "args": {EVIL: EVIL}, "tool": f"t{EVIL}",
                                       "at": f"now{EVIL}"}]},
    }
    meta = {"adapterctl.format": "adapterctl.lora/1", "adapterctl.manifest": json.dumps(manifest),
            "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}
    write_safetensors(path, _lora_tensors((down, up)), meta, force=True)


def _bad_block_file(path: Path) -> None:
    _manifest_file(path, block=f"blk{EVIL}{MARKUP}")


def _bad_file(path: Path) -> None:
    """Invalid: an unknown dtype on a tensor whose name is hostile, so the error message quotes it."""
    header = {EVIL: {"dtype": f"X{EVIL}", "shape": [1], "data_offsets": [0, 2]},
              "__metadata__": {EVIL: EVIL}}
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0\0")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ctl")
    out = {}
    for name, make in (("metadata", _metadata_and_keys_file), ("manifest", _manifest_file), ("bad", _bad_file),
                       ("bad_block", _bad_block_file)):
        # The file name is hostile too: paths are echoed in reports and error lines.
        path = d / f"{name}{EVIL.replace(chr(0), '')}.safetensors"
        make(path)
        out[name] = path
    return out


MODES = {"text": [], "json": ["--json"], "markdown": ["--markdown"], "weights": ["--weights"],
         "weights_json": ["--weights", "--json"]}


@pytest.fixture(scope="module")
def results(files):
    calls, keys = [], []
    for fname, path in files.items():
        for mode, extra in MODES.items():
            calls.append(["inspect", path, *extra])
            keys.append((fname, "inspect", mode))
        for mode, extra in (("text", []), ("json", ["--json"])):
            calls.append(["validate", path, *extra])
            keys.append((fname, "validate", mode))
        calls.append(["convert", path, "--to", "kohya", "-o", path.parent / f"out_{fname}.safetensors", "--force"])
        keys.append((fname, "convert", "text"))
    return dict(zip(keys, run_cli_batch(calls)))


def _raw(text: str) -> list[str]:
    return sorted({repr(m) for m in RAW_CONTROL.findall(text)})


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fname", ["metadata", "manifest"])
def test_inspect_never_prints_raw_controls(results, fname, mode):
    r = results[(fname, "inspect", mode)]
    assert r.rc == 0, r.stderr
    assert _raw(r.stdout) == [], f"raw control characters on stdout: {_raw(r.stdout)}"
    assert _raw(r.stderr) == []
    if mode.endswith("json"):
        # Escaped for display, i.e. the JSON string itself holds a visible backslash escape,
        # not a JSON \u001b escape that a consumer would turn back into ESC.
        doc = json.loads(r.stdout)
        assert _raw(json.dumps(doc, ensure_ascii=False)) == []


def test_escapes_are_visible_not_dropped(results):
    out = results[("metadata", "inspect", "text")].stdout
    assert "\\x1b[31mRED" in out and "\\u202e" in out


def test_markup_in_manifest_strings_is_printed_literally(results):
    for mode in ("text", "weights"):
        out = results[("manifest", "inspect", mode)].stdout
        # method and preset both show the markup as text, neither is interpreted
        assert out.count(MARKUP) >= 2, out


@pytest.mark.parametrize("cmd,mode", [("validate", "text"), ("validate", "json"), ("convert", "text")])
@pytest.mark.parametrize("fname", ["metadata", "manifest"])
def test_other_commands_never_print_raw_controls(results, fname, cmd, mode):
    r = results[(fname, cmd, mode)]
    assert _raw(r.stdout) == [] and _raw(r.stderr) == [], (r.stdout, r.stderr)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fname", ["bad", "bad_block"])
def test_error_lines_never_print_raw_controls(results, fname, mode):
    r = results[(fname, "inspect", mode)]
    assert r.rc == 3
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert _raw(r.stderr) == [] and _raw(r.stdout) == []
    if mode.endswith("json"):
        assert _raw(json.loads(r.stdout)["error"]["message"]) == []
