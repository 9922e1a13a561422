"""What a training run does, as one validated model: the method, its targets, and every recipe value.

The defaults are the papers' (DESIGN.md §1): B-LoRA trains rank 64 on the two B-LoRA blocks'
attention q/k/v/out at lr 5e-5 for 1000 steps at 1024 px with the prompt "A [v]"; UnZipLoRA
trains a content and a style LoRA on every UNet attention module for 600 steps, its mergers at
lr 5e-3. Two defaults follow the base model rather than the paper, because the paper's values
do not exist there: the resolution is the base's native one (1024 for SDXL, 128 for tiny), and
on tiny the rank is capped at 8 (its widest attention layer is 64 wide).

Methods are a plain list (``METHODS``); each says which modules it adapts, which roles their
branches carry, and what it changes in the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapterctl.arch import ArchMap, lbw_list, lbw_presets, target_presets
from adapterctl.errors import UsageError
from adapterctl.textsafe import clip

MethodName = Literal["b-lora", "unziplora", "blockwise", "lora"]
Precision = Literal["auto", "no", "fp16", "bf16"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: MethodName = "b-lora"
    rank: Optional[int] = Field(None, ge=1, le=1024, description="LoRA rank (default 64; 8 on tiny)")
    conv_rank: Optional[int] = Field(None, ge=1, le=1024, description="blockwise: LoCon rank for the blocks' convs")
    alpha: Optional[float] = Field(None, gt=0, description="LoRA alpha (default: the rank, i.e. scale 1)")
    lr: float = Field(5e-5, gt=0, le=1.0)
    merger_lr: float = Field(5e-3, gt=0, le=10.0, description="unziplora: learning rate of the merger vectors")
    steps: Optional[int] = Field(None, ge=1, le=1_000_000, description="default 1000; unziplora 600")
    resolution: Optional[int] = Field(None, ge=64, le=4096, description="default: the base model's native size")
    prompt: Optional[str] = Field(None, max_length=1000)
    content_prompt: str = Field("A [c]", max_length=1000)
    style_prompt: str = Field("A picture in [s] style", max_length=1000)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    weight_decay: float = Field(1e-4, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    flip: bool = False
    blocks: tuple[str, ...] = ()
    precision: Precision = "auto"
    gradient_checkpointing: bool = False
    # UnZipLoRA column separation (DESIGN.md §1).
    mask_every: int = Field(200, ge=1)
    mask_top: float = Field(0.1, gt=0, le=1)
    overlap_lambda: float = Field(0.5, ge=0)

    @field_validator("prompt", "content_prompt", "style_prompt")
    @classmethod
    def _printable(cls, value):
        if value is not None and any(ord(c) < 32 for c in value):
            raise ValueError("prompts may not contain control characters")
        return value

    def resolved(self, arch: ArchMap, native_resolution: int) -> "TrainConfig":
        """Fill the defaults that depend on the method and the base model."""
        method = get_method(self.method)
        tiny = arch.name == "sdxl-tiny"
        changes = {
            "rank": self.rank or (8 if tiny else 64),
            "steps": self.steps or method.default_steps,
            "resolution": self.resolution or native_resolution,
            "prompt": self.prompt or method.default_prompt,
        }
        if self.method == "blockwise" and not self.blocks:
            raise UsageError("train --method blockwise needs --blocks (block ids, LBW names such as OUT01, or a "
                             "preset such as b-lora)")
        if self.method != "blockwise" and (self.blocks or self.conv_rank):
            raise UsageError(f"--blocks and --conv-rank choose the blocks of --method blockwise, not {self.method}")
        if changes["resolution"] % 32:
            raise UsageError(f"--resolution {changes['resolution']} is not a multiple of 32 (the VAE's 8x and the "
                             "UNet's two downsamplings)")
        return self.model_copy(update=changes)

    def fingerprint(self) -> dict:
        """Everything that shapes the trajectory; a checkpoint resumes only under the same values
        (steps may grow: a resumed run can be extended)."""
        return self.model_dump(mode="json", exclude={"steps"})


@dataclass(frozen=True)
class TrainMethod:
    name: str
    summary: str
    default_steps: int
    default_prompt: str
    output_method: str  # the manifest's method field
    roles: tuple[str, ...] = ()  # per module: one branch per role ('' = untagged)
    preset: Optional[str] = None  # role preset naming which block carries which role
    target_preset: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def targets(self, arch: ArchMap, config: TrainConfig) -> list[str]:
        if self.name == "blockwise":
            return blockwise_targets(arch, config)
        return target_presets(arch.name)[self.target_preset].modules(arch)


METHODS: list[TrainMethod] = [
    TrainMethod("b-lora", "B-LoRA: one LoRA on the two B-LoRA blocks; content and style separable by block",
                1000, "A [v]", "b-lora", preset="b-lora", target_preset="b-lora"),
    TrainMethod("unziplora", "UnZipLoRA: a content and a style LoRA trained jointly, prompt/column/block separated",
                600, "A [c] in [s] style", "unziplora", roles=("content", "style"), target_preset="unziplora"),
    TrainMethod("blockwise", "Block-wise LoRA: attention (and with --conv-rank, convs) of the blocks you choose",
                1000, "A [v]", "lora"),
    TrainMethod("lora", "plain DreamBooth-LoRA on every UNet attention layer, for comparison",
                1000, "A [v]", "lora", target_preset="unziplora"),
]


def method_names() -> list[str]:
    return [m.name for m in METHODS]


def get_method(name: str) -> TrainMethod:
    for m in METHODS:
        if m.name == name:
            return m
    raise UsageError(f"unknown training method '{clip(name, 60)}'", hint=f"choose one of: {', '.join(method_names())}")


def check_ranks(arch: ArchMap, targets: list[str], config: TrainConfig) -> None:
    """A rank above min(in, out) of a module is refused by every reader (ours included): say so
    before training, not after."""
    for name in targets:
        spec = arch.modules[name]
        rank = config.conv_rank if spec.kind == "conv" and config.conv_rank else config.rank
        fan_in = spec.in_features * (spec.kernel[0] * spec.kernel[1] if spec.kernel else 1)
        if rank > min(fan_in, spec.out_features):
            raise UsageError(f"rank {rank} exceeds {name} ({spec.in_features} -> {spec.out_features} on "
                             f"{arch.name})", hint=f"use --rank {min(fan_in, spec.out_features)} or less")


def blockwise_targets(arch: ArchMap, config: TrainConfig) -> list[str]:
    """The attention modules (and convs with --conv-rank) of the chosen blocks. A block is a block
    id, an LBW label (OUT01) or an LBW preset name (b-lora); anything else is refused."""
    blocks: list[str] = []
    labels = set(lbw_list(20, arch.name)) | set(lbw_list(12, arch.name))
    presets = lbw_presets(arch.name)
    for raw in config.blocks:
        for item in filter(None, (part.strip() for part in raw.split(","))):
            if item in arch.blocks():
                blocks.append(item)
            elif item.upper() in labels:
                blocks += sorted({s.block for s in arch.modules.values() if s.lbw == item.upper()
                                  and s.component == "unet"})
            elif item in presets:
                weights = presets[item]
                names = lbw_list(len(weights), arch.name)
                for label, w in zip(names, weights):
                    if w and label != "BASE":
                        blocks += sorted({s.block for s in arch.modules.values() if s.lbw == label
                                          and s.component == "unet" and s.group == "attn"})
            else:
                raise UsageError(f"block '{clip(item, 80)}' does not exist in {arch.name}",
                                 hint="use a block id such as up_blocks.0.attentions.1, an LBW name such as OUT01, "
                                      "or a preset such as b-lora ('adapterctl inspect --blocks' lists them)")
    wanted = set(blocks)
    groups = {"attn"} | ({"resnet", "sampler"} if config.conv_rank else set())
    picked = [n for n, s in arch.modules.items() if s.block in wanted and s.group in groups
              and (s.group == "attn" or s.kind == "conv")]
    if not picked:
        raise UsageError(f"the chosen blocks ({clip(', '.join(sorted(wanted)), 200)}) hold no attention layers",
                         hint="pass --conv-rank to train their convolutions")
    return picked

