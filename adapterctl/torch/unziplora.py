"""UnZipLoRA: a content and a style LoRA trained jointly from one image (DESIGN.md §1, seed 002).

The three separations, as implemented here:

- **Prompt separation.** The base UNet is conditioned on ``--prompt`` ("A [c] in [s] style");
  in every cross-attention ``to_k``/``to_v``, the content branch reads the embeddings of
  ``--content-prompt`` and the style branch those of ``--style-prompt`` instead.
- **Column separation**, in every module outside the free blocks below. Each branch has a merger
  vector over the module's output columns (init 1, clamped to [0, 1], lr ``--merger-lr``) and a
  column mask. Until the first selection round all columns are open. Every ``mask_every`` steps
  each column j of each branch is scored by Σᵢ |ΔW ⊙ ∂L/∂ΔW|ⱼᵢ (ΔW before merger and mask, the
  gradient that of the module's effective update, so a closed column can still win later);
  content picks its top ``mask_top`` share among the columns neither branch holds, then style
  among the rest, and the picks are OR-ed into the masks: the two masks stay disjoint. The loss
  adds λ·mean|m_c·mask_c ⊙ m_s·mask_s| (λ = ``overlap_lambda``, 0.5).
- **Block separation.** In the role preset ``unziplora``'s blocks (content: up_blocks.0.attentions
  .0 and .2; style: up_blocks.0.attentions.1 and up_blocks.1.attentions.0-2) only that role's
  LoRA is trained, on all columns, with no merger or mask. Our reading of the paper's figure
  ("in these blocks, all LoRA columns are fully trained without masks"): the other LoRA is absent.

The exported file holds both roles on every column-separated module (two branches per module,
the format's role slots) with merger and mask folded into ``up``, so ``split --keep style``
gives the style LoRA alone.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from adapterctl.arch import role_presets
from adapterctl.torch.layers import Adapted, Branch
from adapterctl.torch.methods import MethodHooks

ROLES = ("content", "style")
_CROSS_KV = (".attn2.to_k", ".attn2.to_v")


class UnZipHooks(MethodHooks):
    def build(self, wrappers: dict[str, Adapted], init: torch.Generator) -> dict[str, tuple[str, ...]]:
        free = {role: set(blocks) for role, blocks in role_presets(self.arch.name)["unziplora"].roles.items()}
        self.separated: dict[str, Adapted] = {}
        roles = {}
        for name in sorted(wrappers):
            wrapper = wrappers[name]
            block = self.arch.block_of(name)
            owner = next((role for role in ROLES if block in free.get(role, ())), None)
            mine = (owner,) if owner else ROLES
            for role in mine:
                branch = Branch(wrapper.base, self.config.rank, alpha=self.config.alpha, generator=init)
                if name.endswith(_CROSS_KV):
                    branch.context = role  # prompt separation
                if owner is None:
                    branch.add_merger("output")
                    branch.mask = torch.ones(branch.out_features)
                wrapper.branches[role] = branch
            if owner is None:
                self.separated[name] = wrapper
            roles[name] = mine
        self._captured: dict[str, dict] = {}
        self._handles: list = []
        return roles

    def param_groups(self, params, config):
        lora = [p for name, p in params if not name.endswith(".merger")]
        mergers = [p for name, p in params if name.endswith(".merger")]
        groups = [{"params": lora, "lr": config.lr}]
        if mergers:
            groups.append({"params": mergers, "lr": config.merger_lr, "weight_decay": 0.0})
        return groups

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}:{role}.mask": w.branches[role].mask for name, w in sorted(self.separated.items())
                for role in ROLES}

    def extra_loss(self) -> Optional[torch.Tensor]:
        if not self.separated or not self.config.overlap_lambda:
            return None
        terms = [(w.branches["content"].column_gate() * w.branches["style"].column_gate()).abs().mean()
                 for w in self.separated.values()]
        return self.config.overlap_lambda * torch.stack(terms).mean()

    def overlap(self) -> float:
        """The overlap term without λ (reported by the trainer and the tests)."""
        if not self.separated:
            return 0.0
        with torch.no_grad():
            return float(torch.stack([(w.branches["content"].column_gate() * w.branches["style"].column_gate())
                                      .abs().mean() for w in self.separated.values()]).mean())

    # -- column selection -----------------------------------------------------------------
    def _scoring(self, step: int) -> bool:
        return (step + 1) % self.config.mask_every == 0

    def before_forward(self, step: int) -> None:
        if not self._scoring(step):
            return
        for name, wrapper in self.separated.items():
            self._handles.append(wrapper.register_forward_hook(self._capture(name)))

    def _capture(self, name: str):
        def hook(module: Adapted, args, output):
            record = {"x": args[0].detach()}
            self._captured[name] = record
            if output.requires_grad:
                output.register_hook(lambda g: record.__setitem__("g", g.detach()))
        return hook

    def after_backward(self, step: int) -> None:
        if not self._scoring(step):
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        with torch.no_grad():
            for name, wrapper in self.separated.items():
                record = self._captured.pop(name, None)
                if record is None or "g" not in record:
                    continue
                self._select(wrapper, record["x"], record["g"])
        self._captured.clear()

    def _select(self, wrapper: Adapted, x: torch.Tensor, g: torch.Tensor) -> None:
        content, style = wrapper.branches["content"], wrapper.branches["style"]
        first = bool(content.mask.all()) and bool(style.mask.all())  # still all open: no round yet
        taken = torch.zeros_like(content.mask, dtype=torch.bool)
        if not first:
            taken = (content.mask > 0) | (style.mask > 0)
        k = max(1, math.ceil(self.config.mask_top * content.out_features))
        for branch in (content, style):
            source = wrapper.contexts[branch.context] if branch.context is not None else x
            score = _column_scores(branch, source, g)
            score[taken] = -1.0  # a column belongs to one branch at most
            picked = torch.topk(score, k).indices
            picked = picked[score[picked] >= 0]
            new = torch.zeros_like(taken)
            new[picked] = True
            old = torch.zeros_like(taken) if first else branch.mask > 0
            branch.mask.copy_((old | new).to(branch.mask.dtype))
            taken |= new

    def after_step(self, step: int) -> None:
        with torch.no_grad():
            for wrapper in self.separated.values():
                for role in ROLES:
                    wrapper.branches[role].merger.clamp_(0.0, 1.0)


def _column_scores(branch: Branch, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Σᵢ |ΔW ⊙ ∂L/∂ΔW| per output column: ∂L/∂ΔW = Σ_tokens gᵀx for y = (W + ΔW)x."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    g2 = g.reshape(-1, g.shape[-1]).float()
    if x2.shape[0] != g2.shape[0]:  # a substituted context has its own token count: pair per sample
        return torch.zeros(branch.out_features)
    grad = g2.T @ x2  # [out, in]
    delta = branch.scale * (branch.up.detach().float() @ branch.down.detach().float())
    return (delta * grad).abs().sum(dim=1).cpu()
