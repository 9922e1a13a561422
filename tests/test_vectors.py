"""Conformance vectors (spec/vectors): golden bytes, and the real CLI's verdict on each."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from _cli_helpers import CliResult, run_cli, run_cli_batch

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "spec" / "vectors"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
NAMES = [f.__name__ for f in gen.VALID] + list(gen.INVALID)


def _files(root: Path) -> dict[str, bytes]:
    """Every generated file under root (vectors, peft directory contents, expected files)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in ("make_vectors.py", "README.md") and "__pycache__" not in p.parts:
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vectors")
    gen.write_vectors(out)
    return out


def test_regeneration_is_byte_identical(regenerated):
    fresh = _files(regenerated)
    committed = _files(VECTORS)
    # Recorded inspect outputs of valid vectors are not regenerated here; they are checked by running the CLI.
    committed_vectors = {k: v for k, v in committed.items()
                         if not (k.endswith(gen.EXPECTED_SUFFIX) and k[: -len(gen.EXPECTED_SUFFIX)] not in gen.INVALID)}
    assert sorted(fresh) == sorted(committed_vectors), "vector set changed: run python spec/vectors/make_vectors.py"
    changed = [k for k in fresh if fresh[k] != committed_vectors[k]]
    assert not changed, f"regeneration differs for {changed}: the writer's output drifted (or regenerate and commit)"


def test_every_vector_has_an_expected_file():
    for name in NAMES:
        assert (VECTORS / f"{name}{gen.EXPECTED_SUFFIX}").is_file(), name
    stray = {p.name[: -len(gen.EXPECTED_SUFFIX)] for p in VECTORS.glob(f"*{gen.EXPECTED_SUFFIX}")} - set(NAMES)
    assert not stray, f"expected files without a vector: {stray}"


def test_vectors_are_small():
    for path in gen.vector_paths(VECTORS):
        size = sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size
        assert size < 32 * 1024, f"{path.name} is {size} bytes; vectors should stay a few KB"


@pytest.fixture(scope="module")
def cli_results() -> dict[str, CliResult]:
    """``adapterctl inspect NAME --json`` for every vector, run from the vectors directory.

    All calls go through the CLI's root ``run()`` in one child interpreter (a cold start per vector
    costs ~0.4 s of CPU); ``test_real_entry_point_agrees`` checks that the real entry point gives
    the same answer.
    """
    paths = gen.vector_paths(VECTORS)
    results = run_cli_batch([["inspect", p.name, "--json"] for p in paths], cwd=VECTORS)
    return {gen.vector_name(p): r for p, r in zip(paths, results)}


@pytest.mark.parametrize("name", ["valid_tagged_adapterctl", "valid_peft_dir", "invalid_pickle_renamed",
                                  "invalid_rank_mismatch"])
def test_real_entry_point_agrees(name, cli_results):
    path = next(p for p in gen.vector_paths(VECTORS) if gen.vector_name(p) == name)
    real = run_cli("inspect", path.name, "--json", cwd=VECTORS)
    assert (real.rc, real.stdout, real.stderr) == (cli_results[name].rc, cli_results[name].stdout,
                                                   cli_results[name].stderr)


@pytest.mark.parametrize("name", NAMES)
def test_cli_matches_expected(name, cli_results):
    expected = json.loads((VECTORS / f"{name}{gen.EXPECTED_SUFFIX}").read_text(encoding="utf-8"))
    rc, stdout, stderr = cli_results[name].rc, cli_results[name].stdout, cli_results[name].stderr
    assert "Traceback" not in stderr
    if "error" in expected:
        want = expected["error"]
        assert rc == want["exit"], (rc, stderr)
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        doc = json.loads(stdout)
        assert doc["ok"] is False
        assert doc["error"]["code"] == want["code"]
        assert want["message_contains"] in doc["error"]["message"]
    else:
        assert rc == 0, stderr
        assert stderr == ""
        got = gen.recorded(stdout)
        assert got == expected, "inspect output changed: review, then python spec/vectors/make_vectors.py"


def test_valid_vectors_cover_the_issue_list():
    # The cases the spec promises readers handle; renaming a vector must not silently drop one.
    by_name = {n: json.loads((VECTORS / f"{n}{gen.EXPECTED_SUFFIX}").read_text()) for n in NAMES if n.startswith("valid_")}
    assert by_name["valid_blora_old_diffusers"]["roles"]["style"]["source"] == "inferred"
    assert by_name["valid_blora_doubled_prefix"]["doubled_prefix"] is True
    assert by_name["valid_tagged_adapterctl"]["manifest"] == "stored"
    assert by_name["valid_diffusers_metadata"]["scaling"] == "lora_adapter_metadata"
    assert by_name["valid_kohya_sgm_locon"]["kinds"] == {"conv": 2, "linear": 2}
    assert by_name["valid_expert_styleinject"]["expert_modules"] == 2
    assert by_name["valid_lycoris_loha"]["lycoris"] == {"loha": 8}
    assert by_name["valid_peft_dir"]["layout"] == "peft"
    same = by_name["valid_content_style_same_module"]["roles"]
    assert set(same) == {"content", "style"}
    escaped = json.dumps(by_name["valid_control_chars"], ensure_ascii=False)
    assert "\\\\x1b" in escaped and "\\\\u202e" in escaped and "\x1b" not in escaped and "\u202e" not in escaped
