"""The typed model of a consumer profile: which key forms a consumer applies, per component and
module group, and how it derives each branch's scale. One JSON file per consumer in ``data/``,
validated by this model (a test loads every file), so a profile is data, not code.

Key forms name how a branch's tensors are spelled (layouts/ modules): ``kohya-sgm``
(``lora_unet_output_blocks_1_1_...``), ``kohya-diffusers-names`` (``lora_unet_up_blocks_0_...``),
``diffusers`` (``unet.<path>.lora_A.weight``), ``diffusers-old`` (``unet.<path>.lora.down.weight``),
``diffusers-legacy-attn`` (``...attn1.processor.to_q_lora.down.weight``), ``peft``
(``base_model.model.<path>.lora_A.weight`` with adapter_config.json).

Module groups are the architecture map's ``group`` values (arch/data/sdxl.json): attn, ff, proj,
resnet, sampler, embed, io (UNet); te_attn, te_mlp, te_proj (text encoders).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

KeyForm = Literal["kohya-sgm", "kohya-diffusers-names", "diffusers", "diffusers-old", "diffusers-legacy-attn",
                  "peft"]
Group = Literal["attn", "ff", "proj", "resnet", "sampler", "embed", "io", "te_attn", "te_mlp", "te_proj"]
Component = Literal["unet", "text_encoder", "text_encoder_2"]
ScaleSource = Literal["alpha_tensor", "lora_adapter_metadata", "adapter_config", "network_alpha_tensor",
                      "ss_network_alpha"]

DATA = Path(__file__).resolve().parent / "data"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    repo: str = Field(description="owner/name of the consumer's repository")
    version: str = Field(description="release tag or commit the profile describes")
    path: str = Field(description="file in that repository the behaviour was read from")
    functions: list[str] = Field(default_factory=list, description="functions or classes that do it")


class Reads(_Strict):
    """The module groups of one component that the consumer applies when spelled in ``form``."""

    form: KeyForm
    component: Component
    groups: list[Group]
    note: Optional[str] = None


class CommonAlpha(_Strict):
    """Branches whose own alpha the consumer replaces with its component's most common alpha."""

    forms: list[KeyForm]
    groups: list[Group]


class Scale(_Strict):
    """How the consumer turns stored numbers into the factor of up @ down, in order of precedence."""

    sources: list[ScaleSource] = Field(description="what it reads, first match wins")
    default: float = Field(1.0, description="the scale when none of the sources is present")
    per_module: bool = Field(True, description="False: one value for many modules (diffusers' kohya converter)")
    common_alpha: Optional[CommonAlpha] = Field(None, description="the branches that get the component's most "
                                                                  "common alpha instead of their own")
    note: Optional[str] = None


class Profile(_Strict):
    consumer: Literal["comfyui", "a1111", "forge", "diffusers", "peft", "kohya"]
    title: str
    version: str
    sources: list[Source] = Field(min_length=1)
    reads: list[Reads]
    scale: Scale
    unplaced_keys: Literal["skipped_silently", "skipped_with_log", "error"] = Field(
        description="what happens to a key it cannot place")
    quirks: list[str] = Field(default_factory=list, description="mis-scalings and losses worth a verdict")
    fix: Optional[str] = Field(None, description="the adapterctl command that writes what it loads completely")
    convert_to: Literal["kohya", "diffusers", "peft"] = Field(description="the layout `convert --for` writes for it")
    all_or_nothing_over: Optional[int] = Field(None, description="more unplaced keys than this: nothing of the "
                                                                 "file is applied (Forge)")

    def applies(self, form: str, component: str, group: str) -> bool:
        return any(r.form == form and r.component == component and group in r.groups for r in self.reads)


def names() -> list[str]:
    """The tools with a recorded profile, from the file names alone (cheap enough for --help)."""
    return sorted(p.stem for p in DATA.glob("*.json"))


def check_names(tools) -> tuple[str, ...]:
    """``tools`` without repeats, each one with a profile; else a UsageError naming the choices."""
    from adapterctl.errors import UsageError

    known = names()
    for tool in tools:
        if tool not in known:
            raise UsageError(f"unknown tool '{tool}' for --for", hint=f"choose from: {', '.join(known)}")
    return tuple(dict.fromkeys(tools))


@lru_cache(maxsize=None)
def load_profiles() -> dict[str, Profile]:
    profiles = {}
    for path in sorted(DATA.glob("*.json")):
        profile = Profile.model_validate(json.loads(path.read_text(encoding="utf-8")))
        profiles[profile.consumer] = profile
    return profiles
