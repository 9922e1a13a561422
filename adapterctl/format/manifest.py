"""The typed manifest: the single source of truth for what an adapterctl file declares.

The JSON Schema in ``spec/manifest.schema.json`` is generated from these models
(``python -m adapterctl.format.schema``) and a test fails when the two drift.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapterctl.format.constants import FORMAT_NAME, FORMAT_VERSION

Role = Literal["content", "style", "expert"]
Component = Literal["unet", "text_encoder", "text_encoder_2"]
Layout = Literal["kohya", "diffusers", "diffusers-old", "diffusers-legacy-attn", "peft"]
Kind = Literal["linear", "conv"]


def _name(module: str) -> str:
    # Error messages may quote file content: escaped and clipped, so that building the error can
    # neither fail (a lone surrogate) nor flood a terminal.
    from adapterctl.textsafe import clip

    return clip(module, 120)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorKeys(_Strict):
    """Names of the tensors of one LoRA branch inside the safetensors file."""

    down: str = Field(description="Down/A factor: [rank, in] (linear), [rank, in, kh, kw] (conv), "
                                  "or [n, rank, in] for experts.")
    up: str = Field(description="Up/B factor: [out, rank] (linear), [out, rank, 1, 1] (conv), "
                                "or [out, rank] / [n, out, rank] for experts.")
    alpha: Optional[str] = Field(None, description="Scalar alpha tensor (kohya layout), if stored.")
    magnitude: Optional[str] = Field(None, description="DoRA magnitude vector, if any.")
    router_weight: Optional[str] = Field(None, description="Expert router weight [n, d].")
    router_bias: Optional[str] = Field(None, description="Expert router bias [n].")


class ModuleEntry(_Strict):
    """One LoRA branch on one module. Two entries may share a module if their roles differ."""

    module: str = Field(description="Canonical module name: component + '.' + diffusers/transformers path.")
    component: Component
    block: Optional[str] = Field(None, description="Block id from the architecture map.")
    kind: Kind
    rank: int = Field(ge=1)
    alpha: float = Field(description="Alpha as the source declared it (kohya/peft semantics).")
    scale: float = Field(description="Effective multiplier: delta_W = scale * up @ down.")
    rslora: bool = Field(False, description="scale = alpha / sqrt(rank) (rsLoRA) instead of alpha / rank.")
    alpha_dtype: Optional[str] = Field(None, description="dtype of the stored alpha tensor (kohya), kept so that "
                                                         "a round trip back to kohya is bit-exact.")
    dtype: str
    role: Optional[Role] = None
    role_source: Optional[Literal["declared", "inferred"]] = None
    experts: Optional[int] = Field(None, ge=1, description="Number of parallel experts (role 'expert').")
    dora: bool = False
    tensors: TensorKeys

    @model_validator(mode="after")
    def _coherent(self):
        if (self.role == "expert") != (self.experts is not None):
            raise ValueError(f"{_name(self.module)}: 'experts' is set exactly when role is 'expert'")
        if self.role == "expert" and self.tensors.router_weight is None:
            raise ValueError(f"{_name(self.module)}: an expert entry needs router tensors")
        if self.role is None and self.role_source is not None:
            raise ValueError(f"{_name(self.module)}: role_source without a role")
        return self


class RoleRule(_Strict):
    selector: str = Field(description="Block id, canonical module name, or glob over either.")
    role: Role


class Operation(_Strict):
    op: str
    args: dict[str, str | int | float | bool | list[str] | list[float] | None] = Field(default_factory=dict)
    tool: str = Field(description="'adapterctl <version>' or another tool's name")
    at: str = Field(description="UTC timestamp, ISO 8601")
    inputs: Optional[list[int]] = Field(None, description="For an operation that read several files (merge): "
                                                         "their indices in provenance.sources, in argument order.")


class Source(_Strict):
    sha256: str = Field(description="sha256 of the source's tensor data region (hex).")
    name: Optional[str] = None
    layout: Optional[str] = None


class Provenance(_Strict):
    sources: list[Source] = Field(default_factory=list)
    operations: list[Operation] = Field(default_factory=list)


class Manifest(_Strict):
    """The document stored as JSON under ``adapterctl.manifest`` in the safetensors header."""

    format: Literal["adapterctl.lora"] = FORMAT_NAME
    version: Literal[1] = FORMAT_VERSION
    architecture: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
                              description="Key of an architecture map, e.g. 'sdxl', exactly as the map names itself.")
    layout: Layout
    method: str = Field(description="What made it: lora, locon, b-lora, unziplora, ziplora, merged, styleinject...")
    preset: Optional[str] = Field(None, description="Role preset applied, e.g. 'b-lora'.")
    role_rules: list[RoleRule] = Field(default_factory=list)
    modules: list[ModuleEntry]
    provenance: Provenance = Field(default_factory=Provenance)

    @model_validator(mode="after")
    def _unique_branches(self):
        seen: dict[str, list[Optional[str]]] = {}
        for entry in self.modules:
            roles = seen.setdefault(entry.module, [])
            if roles and (entry.role is None or None in roles or entry.role in roles):
                raise ValueError(f"{_name(entry.module)}: a module may carry several entries only with distinct roles")
            roles.append(entry.role)
        return self

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        return cls.model_validate_json(text)
