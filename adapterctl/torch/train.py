"""The training loop shared by every method: one image in, trained LoRA branches out.

    result = train(config, image, base, checkpoint=path)     # TrainResult: branches, losses, stop

What it does before the loop is where it beats the reference trainers (encode.py): the image's
latent distribution and the prompt embeddings are computed once, then the VAE and both text
encoders are freed; only the chosen modules get LoRA branches and only those are trainable.
Every random draw of a step (latent sample, noise, timestep, flip) comes from one generator whose
state goes into checkpoints, so a resumed run is the uninterrupted run, bit for bit on a CPU.

The library never installs signal handlers: the caller passes ``should_stop``, checked between
steps; a stop writes a checkpoint and returns with ``stopped`` set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from adapterctl.errors import UsageError
from adapterctl.torch.base import BaseModel
from adapterctl.torch.checkpoint import load_checkpoint, save_checkpoint
from adapterctl.torch.encode import encode_image, encode_prompt, free_encoders, unet_inputs
from adapterctl.torch.images import LoadedImage
from adapterctl.torch.layers import Adapted, adapt, trainable
from adapterctl.torch.methods import MethodHooks
from adapterctl.torch.recipe import TrainConfig, TrainMethod, check_ranks, get_method
from adapterctl.torch.unziplora import UnZipHooks


@dataclass
class Progress:
    step: int
    steps: int
    loss: float
    seconds: float


@dataclass
class TrainResult:
    config: TrainConfig
    wrappers: dict[str, Adapted]
    roles: dict[str, tuple[str, ...]]  # module -> roles of its branches, in file order
    losses: list[float]
    seconds: float
    resumed_from: int = 0
    stopped: bool = False  # interrupted: a checkpoint was written, no adapter should be
    checkpoint: Optional[Path] = None
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    @property
    def steps_done(self) -> int:
        return len(self.losses)


def pick_device() -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device("cuda"), dtype
    return torch.device("cpu"), torch.float32


def train(config: TrainConfig, image: LoadedImage, base: BaseModel, *, fingerprint: dict,
          checkpoint: Optional[Path] = None, checkpoint_every: Optional[int] = None, resume: Optional[Path] = None,
          progress: Optional[Callable[[Progress], None]] = None,
          should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """``config`` must be ``resolved`` for ``base``. ``fingerprint``: what a checkpoint must match
    (the config plus the image's and base model's identity)."""
    method = get_method(config.method)
    device, half = pick_device()
    # Mixed precision on a GPU: frozen weights in bf16/fp16, LoRA weights and optimizer in fp32.
    weights_dtype = torch.float32 if config.precision == "no" or device.type == "cpu" else \
        {"auto": half, "fp16": torch.float16, "bf16": torch.bfloat16}[config.precision]
    pipe = base.pipe
    if device.type == "cuda":
        # Only the encoders go to the GPU now, the UNet once they are freed: the peak is the larger
        # of the two sets, not their sum (the whole fp32 SDXL pipeline alone is ~14 GB). The VAE
        # encodes in fp32, as SDXL's VAE overflows in fp16.
        for name in ("text_encoder", "text_encoder_2"):
            getattr(pipe, name).to(device, weights_dtype)
        pipe.vae.to(device, torch.float32)
    latents = encode_image(pipe, image, config.resolution, flip=config.flip, device=device)
    prompts = {"base": encode_prompt(pipe, config.prompt, device)}
    if method.name == "unziplora":
        prompts["content"] = encode_prompt(pipe, config.content_prompt, device)
        prompts["style"] = encode_prompt(pipe, config.style_prompt, device)
    free_encoders(pipe)

    unet = pipe.unet
    unet.requires_grad_(False)
    if device.type != "cpu" or weights_dtype != torch.float32:  # a no-op .to() still warns in diffusers
        unet.to(device, weights_dtype)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    targets = method.targets(base.arch, config)
    check_ranks(base.arch, targets, config)
    contexts = {role: p.tokens.to(device, weights_dtype) for role, p in prompts.items() if role != "base"}
    wrappers = adapt({"unet": unet}, targets, contexts=contexts)
    hooks = hooks_for(method, base.arch, config)
    init = torch.Generator().manual_seed(config.seed)
    roles = hooks.build(wrappers, init)
    for w in wrappers.values():
        w.branches.to(device)
    params = trainable(wrappers)
    optimizer, notes = _optimizer(hooks.param_groups(params, config), config, device)
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    timesteps = noise_scheduler.config.num_train_timesteps
    alphas = noise_scheduler.alphas_cumprod.to(device)
    gen = torch.Generator().manual_seed(config.seed + 1)
    state_tensors = {**{name: p for name, p in params}, **hooks.state_tensors()}
    losses: list[float] = []
    if resume is not None:
        restored = load_checkpoint(resume, fingerprint=fingerprint, tensors=state_tensors, optimizer=optimizer,
                                   params=params, generator=gen)
        if restored.step > config.steps:
            raise UsageError(f"the checkpoint is at step {restored.step}, past --steps {config.steps}")
        losses = restored.losses
    start = len(losses)
    cond = unet_inputs(prompts["base"], latents.time_ids, device, weights_dtype)
    cond_flipped = unet_inputs(prompts["base"], latents.flipped_time_ids, device, weights_dtype) \
        if config.flip else None
    trainable_params = [p for _, p in params]

    def write_checkpoint() -> Optional[Path]:
        if checkpoint is None:
            return None
        return save_checkpoint(checkpoint, step=len(losses), fingerprint=fingerprint, losses=losses,
                               tensors=state_tensors, optimizer=optimizer, params=params, generator=gen)

    started = time.perf_counter()
    for step in range(start, config.steps):
        if should_stop():
            saved = write_checkpoint()
            return TrainResult(config, wrappers, roles, losses, time.perf_counter() - started, start, True, saved,
                               device.type, notes)
        flip = config.flip and bool(torch.randint(0, 2, (1,), generator=gen))
        latent, _ = latents.sample(gen, flip)
        noise = torch.randn(latent.shape, generator=gen).to(device)
        t = torch.randint(0, timesteps, (1,), generator=gen).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = (a.sqrt() * latent + (1 - a).sqrt() * noise).to(weights_dtype)  # DDPM forward process
        hooks.before_forward(step)
        with torch.autocast(device.type, dtype=weights_dtype, enabled=device.type == "cuda"):
            pred = unet(noisy, t, **(cond_flipped if flip else cond)).sample
        loss = F.mse_loss(pred.float(), noise.float())  # epsilon prediction, as SDXL was trained
        extra = hooks.extra_loss()
        total = loss + extra if extra is not None else loss
        total.backward()
        hooks.after_backward(step)
        torch.nn.utils.clip_grad_norm_(trainable_params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        hooks.after_step(step)
        value = float(total.detach())
        if not math.isfinite(value):
            raise UsageError(f"the loss became {value} at step {step + 1}; nothing was written",
                             hint="lower --lr, or use --precision no")
        losses.append(value)
        if progress is not None:
            progress(Progress(step + 1, config.steps, value, time.perf_counter() - started))
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
            write_checkpoint()
    return TrainResult(config, wrappers, roles, losses, time.perf_counter() - started, start, False, None,
                       device.type, notes)


def hooks_for(method: TrainMethod, arch, config: TrainConfig) -> MethodHooks:
    return (UnZipHooks if method.name == "unziplora" else MethodHooks)(method, arch, config)


def _optimizer(groups: list[dict], config: TrainConfig, device: torch.device):
    """AdamW as in the reference (weight decay 1e-4); its 8-bit form on a GPU with bitsandbytes."""
    notes = []
    if device.type == "cuda":
        try:
            import bitsandbytes as bnb  # optional: the reference's memory saver

            notes.append("optimizer: bitsandbytes AdamW8bit")
            return bnb.optim.AdamW8bit(groups, lr=config.lr, weight_decay=config.weight_decay), notes
        except ImportError:
            notes.append("optimizer: AdamW (install bitsandbytes for the 8-bit optimizer)")
    # foreach=False: the per-parameter loop, whose arithmetic does not depend on how tensors are grouped.
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, foreach=False), notes
