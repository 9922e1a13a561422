"""The manifest's JSON Schema, generated from the pydantic models in ``manifest.py``.

    python -m adapterctl.format.schema            # (re)write spec/manifest.schema.json
    python -m adapterctl.format.schema --check    # exit 1 if the file differs from a fresh generation

The models stay the single source of truth. pydantic's schema covers field types, enums and
``extra="forbid"``, but not the cross-field rules of the models' validators; the ones JSON Schema
can state (if/then on one object) are added here and a test checks both sides agree on examples.
The one rule it cannot state, "entries on one module need distinct roles", is a uniqueness
constraint over a projection of array items, which JSON Schema has no keyword for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adapterctl.format.constants import FORMAT_NAME, FORMAT_VERSION
from adapterctl.format.manifest import Manifest
from adapterctl.generated import write_or_check

SCHEMA_ID = f"urn:adapterctl:schema:manifest:{FORMAT_VERSION}"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "spec" / "manifest.schema.json"


def _module_entry_rules() -> list[dict]:
    """ModuleEntry._coherent, in JSON Schema terms (null counts as absent, as in pydantic)."""
    return [
        {   # role 'expert' <=> experts is set; an expert entry names its router.
            "if": {"required": ["role"], "properties": {"role": {"const": "expert"}}},
            "then": {"required": ["experts", "tensors"],
                     "properties": {"experts": {"type": "integer"},
                                    "tensors": {"required": ["router_weight"],
                                                "properties": {"router_weight": {"type": "string"}}}}},
        },
        {
            "if": {"required": ["experts"], "properties": {"experts": {"type": "integer"}}},
            "then": {"required": ["role"], "properties": {"role": {"const": "expert"}}},
        },
        {   # role_source only qualifies a role that is there.
            "if": {"required": ["role_source"], "properties": {"role_source": {"type": "string"}}},
            "then": {"required": ["role"], "properties": {"role": {"type": "string"}}},
        },
    ]


def generate() -> dict:
    body = Manifest.model_json_schema()
    # A stored manifest always carries format and version (readers refuse one without them), so the
    # schema of the stored document requires them even though the model can default them.
    body["required"] = ["format", "version"] + [k for k in body.get("required", []) if k not in ("format", "version")]
    entry = body["$defs"]["ModuleEntry"]
    entry["allOf"] = _module_entry_rules()
    body["$comment"] = ("Not expressible here, enforced by readers: several entries on one module must carry "
                        "distinct, non-null roles.")
    head = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"{FORMAT_NAME} manifest, version {FORMAT_VERSION}",
        "description": ("The document stored as compact JSON under the safetensors __metadata__ key "
                        "'adapterctl.manifest' (see spec/FORMAT.md §4). Generated from "
                        "adapterctl/format/manifest.py by 'python -m adapterctl.format.schema'; do not edit."),
    }
    body.pop("title", None)
    body.pop("description", None)
    return {**head, **body}


def render(schema: dict | None = None) -> str:
    # Key order is pydantic's (field order), which is deterministic; indent for reviewable diffs.
    return json.dumps(generate() if schema is None else schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapterctl.format.schema", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is not the fresh generation")
    parser.add_argument("--output", type=Path, default=DEFAULT_PATH, help=f"default: {DEFAULT_PATH}")
    args = parser.parse_args(argv)
    return write_or_check(args.output, render(), check=args.check, regenerate="python -m adapterctl.format.schema")

if __name__ == "__main__":
    sys.exit(main())
