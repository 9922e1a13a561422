"""What differs between training methods inside the shared loop (train.py): the branches each
adapted module gets, their parameter groups, and the method's own steps (UnZipLoRA's masks).

A branch's key inside ``Adapted.branches`` is its role ('content', 'style'), or ``UNTAGGED``
for a method whose file carries no roles (plain LoRA, block-wise).
"""

from __future__ import annotations

from typing import Optional

import torch

from adapterctl.arch import ArchMap, role_presets
from adapterctl.torch.layers import Adapted, Branch
from adapterctl.torch.recipe import TrainConfig, TrainMethod

UNTAGGED = "lora"


class MethodHooks:
    """B-LoRA, plain LoRA and block-wise LoRA: one branch per module, role by block (B-LoRA)."""

    def __init__(self, method: TrainMethod, arch: ArchMap, config: TrainConfig):
        self.method, self.arch, self.config = method, arch, config

    def role_of(self, module: str) -> str:
        if self.method.preset is None:
            return UNTAGGED
        block = self.arch.block_of(module)
        for role, selectors in role_presets(self.arch.name)[self.method.preset].roles.items():
            if block in selectors:
                return role
        return UNTAGGED

    def build(self, wrappers: dict[str, Adapted], init: torch.Generator) -> dict[str, tuple[str, ...]]:
        """Create the branches, in sorted module order so that the init draws are reproducible."""
        roles = {}
        for name in sorted(wrappers):
            wrapper = wrappers[name]
            role = self.role_of(name)
            wrapper.branches[role] = Branch(wrapper.base, self.rank_for(wrapper), alpha=self.alpha_for(wrapper),
                                            generator=init)
            roles[name] = (role,)
        return roles

    def rank_for(self, wrapper: Adapted) -> int:
        conv = isinstance(wrapper.base, torch.nn.Conv2d)
        return self.config.conv_rank if conv and self.config.conv_rank else self.config.rank

    def alpha_for(self, wrapper: Adapted) -> Optional[float]:
        return self.config.alpha  # None: alpha = rank, scale 1 (the reference's)

    def param_groups(self, params: list[tuple[str, torch.nn.Parameter]], config: TrainConfig) -> list[dict]:
        return [{"params": [p for _, p in params], "lr": config.lr}]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Method state a checkpoint must carry besides the parameters."""
        return {}

    def before_forward(self, step: int) -> None:
        pass

    def extra_loss(self) -> Optional[torch.Tensor]:
        return None

    def after_backward(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

