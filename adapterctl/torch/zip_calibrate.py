"""Calibrated ZipLoRA: the merger vectors learned through the real UNet on the reference images.

ZipLoRA (arXiv 2311.13600) merges a content LoRA L_c and a style LoRA L_s module by module as
ΔW_m = ΔW_c·diag(m_c) + ΔW_s·diag(m_s) and learns the mergers with the frozen base model D:

    L = ‖(D⊕L_m)(x_c, p_c) − (D⊕L_c)(x_c, p_c)‖² + ‖(D⊕L_m)(x_s, p_s) − (D⊕L_s)(x_s, p_s)‖²
        + λ·Σ_layers mean_j |m_c[j]·m_s[j]|

x_c, x_s are noised latents of the content and style reference images (a random timestep and
seeded noise per step), p_c, p_s each LoRA's own prompt; ‖·‖² is the mean squared error over
the UNet's output (as diffusers' trainers compute it), and the overlap term is, per layer, the
mean over the vector, summed over layers: it starts at the number of calibrated layers. The two
targets are computed without gradients. Adam (lr 0.01) runs at most 100 steps from m = 1, and
stops early once the overlap term is at most ``OVERLAP_TOL`` per layer (mean over layers).

Only modules where both LoRAs have a branch get mergers; a module only one of them has applies
that branch as it is in every pass. UNet modules are calibrated; text-encoder modules that both
LoRAs share get the data-free mergers (lowrank/ziplora.py) and are applied when the prompts are
encoded (targets through each LoRA's own text-encoder branches, the merged model through the
merged ones), since the prompt embeddings are computed once, not per step.

``loss_start``/``loss_end`` are measured on a fixed evaluation set (per image ``EVAL_DRAWS``
timesteps spread over the schedule, seeded noise), with the mergers at 1 and at the end, so the
two are comparable; the per-step training losses (one random timestep each) are the history.

In the model each module gets the branches ``content`` and ``style`` (the targets, no mergers)
and ``zip_content`` and ``zip_style`` (the merged model: the same factor tensors, shared, plus
the mergers); ``layers.set_active`` picks which apply in each forward pass. The base model's
modules are restored when calibration ends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from adapterctl.errors import UsageError
from adapterctl.lowrank.factored import Factored
from adapterctl.lowrank.ziplora import find_mergers
from adapterctl.textsafe import clip
from adapterctl.torch.base import BaseModel
from adapterctl.torch.encode import PromptEmbeds, encode_image, encode_prompt, unet_inputs
from adapterctl.torch.images import LoadedImage, load_image
from adapterctl.torch.references import ImageArg
from adapterctl.torch.layers import Adapted, Branch, adapt, live_path, set_active

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter

LAM = 0.01
LR = 0.01
STEPS = 100
OVERLAP_TOL = 1e-3  # stop when the mean over layers of mean_j |m_c m_s| is at most this
EVAL_DRAWS = 4  # fixed (timestep, noise) draws per image for loss_start / loss_end
_CONTENT, _STYLE = "content", "style"
_ZIP = {_CONTENT: "zip_content", _STYLE: "zip_style"}
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")

Branches = Mapping[str, tuple[Optional[Factored], Optional[Factored]]]


@dataclass
class Calibration:
    m_content: dict[str, np.ndarray]  # module -> merger (float64), the size fold() takes
    m_style: dict[str, np.ndarray]
    calibrated: tuple[str, ...]  # modules whose mergers were learned through the UNet
    data_free: tuple[str, ...]  # shared text-encoder modules: data-free mergers
    loss_history: list[float]  # training loss of each step (before its update)
    overlap_history: list[float]  # Σ_layers mean |m_c m_s| after each step
    loss_start: float  # evaluation loss (fixed draws), mergers at 1
    loss_end: float  # the same, with the final mergers
    overlap_start: float
    overlap_end: float
    steps: int  # optimizer steps run
    stopped_early: bool
    seconds: float
    device: str
    base: str
    revision: Optional[str]
    content_image_sha256: str
    style_image_sha256: str
    content_prompt: str
    style_prompt: str
    resolution: int
    seed: int
    lam: float
    lr: float
    max_steps: int
    axis: str
    notes: list[str] = field(default_factory=list)

    def mergers(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {name: (self.m_content[name], self.m_style[name]) for name in self.m_content}

    def args(self) -> dict:
        """What the merge's provenance record keeps of this run (JSON scalars only)."""
        out = {"calibrated": True, "base": clip(self.base, 200)}
        if self.revision:
            out["base_revision"] = clip(self.revision, 80)
        out.update({
            "calibration_steps": self.steps, "calibration_max_steps": self.max_steps, "calibration_lr": self.lr,
            "calibration_seed": self.seed, "calibration_resolution": self.resolution,
            "calibration_modules": len(self.calibrated), "calibration_loss_start": self.loss_start,
            "calibration_loss_end": self.loss_end, "calibration_overlap_start": self.overlap_start,
            "calibration_overlap_end": self.overlap_end,
            "content_image_sha256": self.content_image_sha256, "style_image_sha256": self.style_image_sha256,
            "content_prompt": clip(self.content_prompt, 300), "style_prompt": clip(self.style_prompt, 300),
        })
        return out

    def summary(self) -> str:
        return (f"calibrated zip on {clip(self.base, 80)}: {self.steps} steps on {self.device} in "
                f"{self.seconds:.1f} s, {len(self.calibrated)} modules; loss {self.loss_start:.4g} -> "
                f"{self.loss_end:.4g}, overlap {self.overlap_start:.4g} -> {self.overlap_end:.4g}")


# -- calibration ----------------------------------------------------------------------------------

def calibrate(content: "Adapter", style: "Adapter", base: BaseModel, *, content_image: ImageArg,
              style_image: ImageArg, content_prompt: Optional[str], style_prompt: Optional[str],
              axis: str = "input", lam: float = LAM, lr: float = LR, steps: int = STEPS, seed: int = 0,
              resolution: Optional[int] = None, progress: Optional[Callable[[int, int, float, float], None]] = None,
              branches: Optional[Branches] = None, device: Optional[str] = None,
              tolerance: float = OVERLAP_TOL) -> Calibration:
    """Learn the mergers of every module both LoRAs have, through ``base``'s UNet.

    ``branches``: module -> (content branch or None, style branch or None), as the merge picked
    and weighted them; by default every branch of ``content`` (its ``content``-role branches if
    it has any) and of ``style`` (likewise). ``progress(step, steps, loss, overlap)`` is called
    after each step. The base model is left as it was (its modules restored), apart from being
    moved to ``device`` (default: CUDA when available)."""
    _check(axis, lam, lr, steps, tolerance)
    for adapter in (content, style):
        if adapter.arch.name != base.arch.name:
            raise UsageError(f"{clip(adapter.path.name, 120)} is for {adapter.arch.name} but the base model is "
                             f"{base.arch.name}", hint="calibrate on the base model the adapters were trained for")
    if branches is None:
        branches = _own_branches(content, style)
    refs = [r if isinstance(r, LoadedImage) else load_image(r) for r in (content_image, style_image)]
    prompts = [content_prompt or "", style_prompt or ""]
    resolution = int(resolution or base.resolution)
    started = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = base.pipe
    if dev.type != "cpu":
        pipe.to(dev)
    unet = pipe.unet
    models = {name: getattr(pipe, name, None) for name in _COMPONENTS}
    names = sorted(branches)
    for name in names:
        component = name.partition(".")[0]
        if models.get(component) is None:
            raise UsageError(f"'{clip(name, 120)}' is in {component}, which the base model does not have loaded")
    grad_flags = {p: p.requires_grad for m in models.values() if m is not None for p in m.parameters()}
    was_training = unet.training
    wrappers: dict[str, Adapted] = {}
    try:
        latents = [encode_image(pipe, ref, resolution, flip=False, device=dev) for ref in refs]
        for m in models.values():
            if m is not None:
                m.requires_grad_(False)
        unet.eval()
        wrappers = adapt(models, names)
        pairs, te_mergers = _build(wrappers, branches, axis, lam, dev)
        te_wrappers = [w for n, w in wrappers.items() if not n.startswith("unet.")]
        unet_wrappers = [w for n, w in wrappers.items() if n.startswith("unet.")]
        embeds = {}
        for i, role in enumerate((_CONTENT, _STYLE)):
            set_active(te_wrappers, (role,))
            own = encode_prompt(pipe, prompts[i], dev)
            set_active(te_wrappers, tuple(_ZIP.values()))
            embeds[role] = (own, encode_prompt(pipe, prompts[i], dev) if te_wrappers else own)
        set_active(te_wrappers, None)
        run = _Runner(unet, unet_wrappers, pipe, latents, embeds, dev)
        result = run.optimise(pairs, lam=lam, lr=lr, steps=steps, seed=seed, tolerance=tolerance, progress=progress)
    finally:
        set_active(wrappers.values(), None)
        _unwrap(models, wrappers)
        for p, flag in grad_flags.items():
            p.requires_grad_(flag)
        unet.train(was_training)
    losses, overlaps, loss_start, loss_end, overlap_start, overlap_end, stopped = result
    m_content, m_style = {}, {}
    for name, (mc, ms, repeat) in pairs.items():
        m_content[name] = np.repeat(mc.detach().double().cpu().numpy(), repeat)
        m_style[name] = np.repeat(ms.detach().double().cpu().numpy(), repeat)
    for name, (mc, ms) in te_mergers.items():
        m_content[name], m_style[name] = mc, ms
    notes = []
    if te_mergers:
        notes.append(f"{len(te_mergers)} shared text-encoder modules got data-free mergers (only the UNet's are "
                     "calibrated on the images)")
    return Calibration(
        m_content=m_content, m_style=m_style, calibrated=tuple(pairs), data_free=tuple(te_mergers),
        loss_history=losses, overlap_history=overlaps, loss_start=loss_start, loss_end=loss_end,
        overlap_start=overlap_start, overlap_end=overlap_end, steps=len(losses), stopped_early=stopped,
        seconds=time.perf_counter() - started, device=dev.type, base=base.name, revision=base.revision,
        content_image_sha256=refs[0].sha256, style_image_sha256=refs[1].sha256, content_prompt=prompts[0],
        style_prompt=prompts[1], resolution=resolution, seed=seed, lam=lam, lr=lr, max_steps=steps, axis=axis,
        notes=notes)


def _check(axis, lam, lr, steps, tolerance) -> None:
    if axis not in ("input", "output"):
        raise UsageError(f"axis must be 'input' or 'output', not {clip(repr(axis), 40)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100_000:
        raise UsageError(f"calibration steps must be an integer from 1 to 100000, not {clip(repr(steps), 40)}")
    for label, value in (("lambda", lam), ("lr", lr), ("tolerance", tolerance)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UsageError(f"calibration {label} must be a finite number >= 0, not {clip(repr(value), 40)}")
    if lr == 0:
        raise UsageError("calibration lr must be above 0")


def _own_branches(content: "Adapter", style: "Adapter") -> dict:
    out: dict[str, list] = {}
    for slot, (adapter, role) in enumerate(((content, _CONTENT), (style, _STYLE))):
        entries = [e for e in adapter.manifest.modules if e.role == role] or \
            [e for e in adapter.manifest.modules if e.role != "expert"]
        for e in entries:
            out.setdefault(e.module, [None, None])[slot] = adapter.branch(e)
    return {k: tuple(v) for k, v in out.items()}


def _branch(module: torch.nn.Module, f: Factored, name: str, dev: torch.device) -> Branch:
    """A frozen branch holding ``f`` (its scale folded into ``up``; alpha = rank)."""
    b = Branch(module, f.rank, generator=torch.Generator().manual_seed(0))  # the init draw is overwritten
    if f.down.shape[1] != math.prod(b.down.shape[1:]) or f.up.shape[0] != b.up.shape[0]:
        raise UsageError(f"'{clip(name, 120)}' is {f.up.shape[0]} x {f.down.shape[1]} in the adapter but "
                         f"{b.up.shape[0]} x {math.prod(b.down.shape[1:])} in the base model",
                         hint="calibrate on the base model the adapters were trained for")
    with torch.no_grad():
        b.down.copy_(torch.from_numpy(f.down.reshape(b.down.shape)).float())
        b.up.copy_(torch.from_numpy((f.up * f.scale).reshape(b.up.shape)).float())
    b.requires_grad_(False)
    return b.to(dev)


def _build(wrappers: dict[str, Adapted], branches: Branches, axis: str, lam: float, dev: torch.device):
    """Put the branches in; return the UNet's trainable merger pairs (name -> (m_c, m_s, repeat))
    and the shared text-encoder modules' data-free mergers (name -> (m_c, m_s))."""
    pairs, te = {}, {}
    for name in sorted(wrappers):
        wrapper = wrappers[name]
        made = {}
        for role, f in zip((_CONTENT, _STYLE), branches[name]):
            if f is None:
                continue
            own = _branch(wrapper.base, f, name, dev)
            twin = Branch(wrapper.base, f.rank, generator=torch.Generator().manual_seed(0)).to(dev)
            twin.down, twin.up = own.down, own.up  # the same tensors: the merged model's copy
            wrapper.branches[role] = own
            wrapper.branches[_ZIP[role]] = twin
            made[role] = twin
        if len(made) < 2:
            continue
        mc, ms = made[_CONTENT].add_merger(axis), made[_STYLE].add_merger(axis)
        if name.startswith("unet."):
            conv = made[_CONTENT].conv
            repeat = math.prod(wrapper.base.kernel_size) if conv and axis == "input" else 1
            pairs[name] = (mc, ms, repeat)
        else:
            found = find_mergers(*branches[name], axis=axis, lam=lam)
            with torch.no_grad():
                mc.copy_(torch.from_numpy(found.m_content).float())
                ms.copy_(torch.from_numpy(found.m_style).float())
            mc.requires_grad_(False)
            ms.requires_grad_(False)
            te[name] = (found.m_content, found.m_style)
    return pairs, te


def _unwrap(models: dict, wrappers: dict[str, Adapted]) -> None:
    for name, wrapper in wrappers.items():
        component, _, path = name.partition(".")
        model = models[component]
        parent_path, _, leaf = live_path(model, component, path).rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        if leaf.isdigit():
            parent[int(leaf)] = wrapper.base
        else:
            setattr(parent, leaf, wrapper.base)


class _Runner:
    """The UNet passes of the loss: the two targets (no gradients) and the merged model on both
    images in one batch."""

    def __init__(self, unet, wrappers, pipe, latents, embeds: dict[str, tuple[PromptEmbeds, PromptEmbeds]], dev):
        from diffusers import DDPMScheduler

        self.unet, self.wrappers, self.latents, self.dev = unet, wrappers, latents, dev
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.timesteps = int(self.scheduler.config.num_train_timesteps)
        self.dtype = next(unet.parameters()).dtype
        self.autocast = dev.type == "cuda"
        self.embeds = embeds

    def noisy(self, index: int, t: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        latent, ids = self.latents[index].sample(gen, False)
        noise = torch.randn(latent.shape, generator=gen)
        return self.scheduler.add_noise(latent.to(self.dev), noise.to(self.dev), t.to(self.dev)), ids

    def cond(self, role: str, merged: bool, ids: torch.Tensor, n: int) -> dict:
        e = self.embeds[role][1 if merged else 0]
        c = unet_inputs(e, ids, self.dev, self.dtype)
        return {"encoder_hidden_states": c["encoder_hidden_states"].expand(n, -1, -1),
                "added_cond_kwargs": {k: v.expand(n, -1) for k, v in c["added_cond_kwargs"].items()}}

    def forward(self, x, t, cond: dict, roles) -> torch.Tensor:
        set_active(self.wrappers, roles)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.unet(x.to(self.dtype), t.to(self.dev), **cond).sample.float()

    def merged(self, xs, ts, ids) -> torch.Tensor:
        """The merged model on the content draws then the style draws, one batch."""
        conds = [self.cond(role, True, ids[i], xs[i].shape[0]) for i, role in enumerate((_CONTENT, _STYLE))]
        cond = {"encoder_hidden_states": torch.cat([c["encoder_hidden_states"] for c in conds]),
                "added_cond_kwargs": {k: torch.cat([c["added_cond_kwargs"][k] for c in conds])
                                      for k in conds[0]["added_cond_kwargs"]}}
        return self.forward(torch.cat(xs), torch.cat(ts), cond, tuple(_ZIP.values()))

    @torch.no_grad()
    def targets(self, xs, ts, ids) -> list[torch.Tensor]:
        return [self.forward(xs[i], ts[i], self.cond(role, False, ids[i], xs[i].shape[0]), (role,))
                for i, role in enumerate((_CONTENT, _STYLE))]

    def optimise(self, pairs: dict, *, lam, lr, steps, seed, tolerance, progress):
        mergers = [(mc, ms) for mc, ms, _ in pairs.values()]

        def overlap() -> torch.Tensor:
            if not mergers:
                return torch.zeros((), device=self.dev)
            return torch.stack([(mc * ms).abs().mean() for mc, ms in mergers]).sum()

        # The evaluation set: per image EVAL_DRAWS timesteps spread over the schedule, seeded noise.
        gen = torch.Generator().manual_seed(seed)
        ts = torch.tensor([int((k + 0.5) * self.timesteps / EVAL_DRAWS) for k in range(EVAL_DRAWS)])
        xs, ids = [], []
        for i in range(2):
            drawn = [self.noisy(i, ts[k:k + 1], gen) for k in range(EVAL_DRAWS)]
            xs.append(torch.cat([x for x, _ in drawn]))
            ids.append(drawn[0][1])
        eval_ts = [ts, ts]
        eval_targets = self.targets(xs, eval_ts, ids)

        @torch.no_grad()
        def evaluate() -> float:
            pred = self.merged(xs, eval_ts, ids)
            mse = F.mse_loss(pred[:EVAL_DRAWS], eval_targets[0]) + F.mse_loss(pred[EVAL_DRAWS:], eval_targets[1])
            return float(mse + lam * overlap())

        loss_start = evaluate()
        with torch.no_grad():
            overlap_start = float(overlap())
        losses: list[float] = []
        overlaps: list[float] = []
        stopped = False
        params = [p for pair in mergers for p in pair]
        if params:
            optimizer = torch.optim.Adam(params, lr=lr)
            gen = torch.Generator().manual_seed(seed + 1)
            limit = tolerance * len(mergers)
            for step in range(steps):
                t = [torch.randint(0, self.timesteps, (1,), generator=gen) for _ in range(2)]
                drawn = [self.noisy(i, t[i], gen) for i in range(2)]
                x, step_ids = [d[0] for d in drawn], [d[1] for d in drawn]
                target = self.targets(x, t, step_ids)
                pred = self.merged(x, t, step_ids)
                loss = F.mse_loss(pred[:1], target[0]) + F.mse_loss(pred[1:], target[1]) + lam * overlap()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise UsageError(f"the calibration loss became {value} at step {step + 1}; nothing was written",
                                     hint="lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    now = float(overlap())
                losses.append(value)
                overlaps.append(now)
                if progress is not None:
                    progress(step + 1, steps, value, now)
                if now <= limit:
                    stopped = step + 1 < steps
                    break
        loss_end = evaluate()
        with torch.no_grad():
            overlap_end = float(overlap())
        return losses, overlaps, loss_start, loss_end, overlap_start, overlap_end, stopped
