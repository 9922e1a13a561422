"""spec/manifest.schema.json: generated from the pydantic models, and in agreement with them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from adapterctl.adapter import Adapter
from adapterctl.errors import InvalidFile
from adapterctl.format import schema as S
from adapterctl.format.constants import MANIFEST_KEY
from adapterctl.format.manifest import Manifest
from adapterctl.io.safetensors_file import SafetensorsFile
from adapterctl.io.writer import OutTensor, write_safetensors

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "spec" / "vectors"
SCHEMA_PATH = REPO / "spec" / "manifest.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# -- the file is the generation -------------------------------------------------------------------

def test_committed_schema_is_the_fresh_generation():
    assert SCHEMA_PATH.read_text(encoding="utf-8") == S.render(), \
        "spec/manifest.schema.json drifted from the models: run python -m adapterctl.format.schema"


def test_generation_is_deterministic():
    assert S.render() == S.render()


def test_check_mode_detects_drift(tmp_path, capsys):
    out = tmp_path / "schema.json"
    assert S.main(["--output", str(out)]) == 0
    assert S.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace('"Block id from', '"Block ID from'))
    assert S.main(["--check", "--output", str(out)]) == 1
    assert "stale" in capsys.readouterr().err
    assert S.main(["--check", "--output", str(tmp_path / "missing.json")]) == 1


def test_schema_header(validator):
    schema = validator.schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == S.SCHEMA_ID and schema["title"] and schema["description"]
    assert {"format", "version", "architecture", "layout", "method", "modules"} <= set(schema["required"])


# -- manifests the library really writes validate -----------------------------------------------

def _stored(path: Path) -> dict:
    with SafetensorsFile(path) as st:
        return json.loads(st.metadata[MANIFEST_KEY])


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, dict]:
    """Manifests from files written by adapterctl itself, covering every role shape and layout."""
    d = tmp_path_factory.mktemp("written")
    out = {"vector_tagged": _stored(VECTORS / "valid_tagged_adapterctl.safetensors")}
    jobs = {
        "blora_tag_kohya": ("valid_blora_old_diffusers", lambda a: a.tag(preset="b-lora").convert("kohya")),
        "blora_split_style": ("valid_blora_old_diffusers", lambda a: a.split(keep=["style"])),
        "locon_diffusers": ("valid_kohya_sgm_locon", lambda a: a.convert("diffusers")),
        "diffusers_to_kohya": ("valid_diffusers_metadata", lambda a: a.convert("kohya")),
        "same_module_roles": ("valid_content_style_same_module", lambda a: a.split(keep=["content", "style"])),
        "experts": ("valid_expert_styleinject", lambda a: a.split(keep=["expert"])),
        "peft_unet": ("valid_peft_dir", lambda a: a.convert("diffusers")),
    }
    for name, (vector, op) in jobs.items():
        src = VECTORS / vector if (VECTORS / vector).is_dir() else VECTORS / f"{vector}.safetensors"
        with Adapter.open(src) as adapter:
            op(adapter).save(d / f"{name}.safetensors")
        out[name] = _stored(d / f"{name}.safetensors")
    return out


def test_written_manifests_validate(validator, written):
    for name, manifest in written.items():
        errors = [e.message for e in validator.iter_errors(manifest)]
        assert errors == [], f"{name}: {errors}"
        Manifest.model_validate(manifest)  # and the models accept what they wrote


def test_written_manifests_cover_the_shapes(written):
    roles = {e.get("role") for m in written.values() for e in m["modules"]}
    assert {"content", "style", "expert", None} <= roles
    assert {m["layout"] for m in written.values()} >= {"kohya", "diffusers"}
    same = [e["module"] for e in written["same_module_roles"]["modules"]]
    assert len(same) != len(set(same)), "expected two entries on one module"


# -- invalid manifests: both sides refuse ---------------------------------------------------------

def _base(written) -> dict:
    return copy.deepcopy(written["blora_tag_kohya"])


def _expert(written) -> dict:
    return copy.deepcopy(written["experts"])


def _mutations(written) -> dict[str, dict]:
    cases = {}

    m = _expert(written)
    del m["modules"][0]["tensors"]["router_weight"]
    cases["expert_without_router"] = m

    m = _expert(written)
    m["modules"][0]["tensors"]["router_weight"] = None
    cases["expert_with_null_router"] = m

    m = _expert(written)
    del m["modules"][0]["experts"]
    cases["expert_without_count"] = m

    m = _base(written)
    m["modules"][0]["experts"] = 2
    cases["experts_on_a_style_entry"] = m

    m = _base(written)
    m["modules"][0]["role"] = "texture"
    cases["unknown_role"] = m

    m = _base(written)
    del m["modules"][0]["role"]
    cases["role_source_without_role"] = m

    m = _base(written)
    m["modules"][0]["rank"] = 0
    cases["rank_zero"] = m

    m = _base(written)
    m["modules"][0]["component"] = "vae"
    cases["unknown_component"] = m

    m = _base(written)
    m["layout"] = "ckpt"
    cases["unknown_layout"] = m

    m = _base(written)
    m["version"] = 2
    cases["future_version"] = m

    m = _base(written)
    m["modules"][0]["surprise"] = True
    cases["extra_field"] = m

    m = _base(written)
    m["role_rules"] = [{"selector": "up_blocks.0.attentions.1", "role": "vibe"}]
    cases["unknown_role_in_rule"] = m
    return cases


def test_mutations_start_from_valid_documents(validator, written):
    for doc in (_base(written), _expert(written)):
        assert validator.is_valid(doc)
        Manifest.model_validate(doc)


@pytest.mark.parametrize("case", ["expert_without_router", "expert_with_null_router", "expert_without_count",
                                  "experts_on_a_style_entry", "unknown_role", "role_source_without_role",
                                  "rank_zero", "unknown_component", "unknown_layout", "future_version",
                                  "extra_field", "unknown_role_in_rule"])
def test_rejected_by_models_and_schema(validator, written, case):
    doc = _mutations(written)[case]
    with pytest.raises(ValidationError):
        Manifest.model_validate(doc)
    assert not validator.is_valid(doc), f"schema accepts {case}"


def test_two_untagged_entries_on_one_module(validator, written):
    doc = copy.deepcopy(written["same_module_roles"])
    for entry in doc["modules"]:
        entry.pop("role", None)
        entry.pop("role_source", None)
    with pytest.raises(ValidationError, match="distinct roles"):
        Manifest.model_validate(doc)
    # JSON Schema has no keyword for "unique by a projection of the items": the schema says so
    # instead of pretending, and readers (which use the models) refuse the document.
    assert "distinct" in validator.schema["$comment"]


def test_same_role_twice_on_one_module(written):
    doc = copy.deepcopy(written["same_module_roles"])
    for entry in doc["modules"]:
        entry["role"] = "style"
    with pytest.raises(ValidationError, match="distinct roles"):
        Manifest.model_validate(doc)


def test_missing_format_and_version_refused_by_schema_and_reader(validator, written, tmp_path):
    doc = _base(written)
    del doc["format"], doc["version"]
    assert not validator.is_valid(doc)
    # The models could default them, but a reader must not: a header without them is not ours.
    down = "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
    path = tmp_path / "noversion.safetensors"
    tensors = [OutTensor.from_bytes(down, "F16", (1, 1), b"\0\0")]
    write_safetensors(path, tensors, {MANIFEST_KEY: json.dumps(doc)})
    with pytest.raises(InvalidFile, match="not an adapterctl.lora document"):
        Adapter.open(path)
