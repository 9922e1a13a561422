"""validate: findings, strictness and exit codes on real files."""

import json
import subprocess
import sys

import numpy as np

import adapterctl
from adapterctl.examples.make import BLORA, HERE, LOCON
from adapterctl.io.safetensors_file import SafetensorsFile
from adapterctl.io.writer import OutTensor, write_safetensors
from adapterctl.validate import validate_path


def cli(*args):
    return subprocess.run([sys.executable, "-m", "adapterctl.cli.main", *map(str, args)],
                          capture_output=True, text=True)


def test_examples_pass():
    for name in (BLORA, LOCON):
        assert validate_path(HERE / name).status(strict=True) == "pass"


def test_nan_is_a_failure(tmp_path):
    bad = tmp_path / "nan.safetensors"
    with SafetensorsFile(HERE / LOCON) as st:
        victim = next(n for n in st.tensors if n.endswith("lora_up.weight"))
        tensors = []
        for n in st.tensors:
            if n == victim:
                arr = np.frombuffer(st.read(n), dtype=np.float16).copy()
                arr[3] = np.nan
                tensors.append(OutTensor.from_bytes(n, "F16", st.tensors[n].shape, arr.tobytes()))
            else:
                tensors.append(OutTensor.copy(st, n))
        write_safetensors(bad, tensors, dict(st.metadata))
    report = validate_path(bad)
    finite = next(c for c in report.checks if c.name == "finite")
    assert finite.status == "fail" and victim in finite.message
    assert validate_path(bad, weights=False).status(strict=False) == "pass"  # --no-weights skips the read
    r = cli("validate", bad, HERE / LOCON, "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["summary"] == {"files": 2, "failed": 1, "warned": 0}


def test_strict_turns_warnings_into_failures(tmp_path):
    tagged = tmp_path / "partly.safetensors"
    with adapterctl.open(HERE / LOCON) as a:
        a.tag(roles=["style=up_blocks.0.attentions.0"]).save(tagged)
    assert validate_path(tagged).status(strict=False) == "warn"  # untagged modules in a tagged file
    assert cli("validate", tagged).returncode == 0
    assert cli("validate", tagged, "--strict").returncode == 1


def test_unreadable_file_is_a_failed_check_not_a_crash(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    report = validate_path(junk)
    assert report.status(strict=False) == "fail" and report.checks[0].name == "structure"
    r = cli("validate", junk, HERE / BLORA)
    assert r.returncode == 1 and "Traceback" not in r.stderr
