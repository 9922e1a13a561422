"""Everything a training step needs that does not change between steps, computed once.

The reference B-LoRA trainer encodes the prompt once but runs the VAE encoder on the same image
at every one of its 1000 steps. Here the image's latent *distribution* (mean and std) is
encoded once per image, and per flip when flip augmentation is on; a step draws its latent from
it with the trainer's generator, which is the same distribution the reference samples from, at
no cost. The prompt embeddings and SDXL's micro-conditioning are computed once too, and then the
VAE and both text encoders can be freed before the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from adapterctl.torch.images import LoadedImage, prepare, to_tensor


@dataclass
class PromptEmbeds:
    """SDXL conditioning: per-token embeddings of both encoders (concatenated) and the pooled TE2 output."""

    tokens: torch.Tensor  # [1, 77, cross_attention_dim]
    pooled: torch.Tensor  # [1, text_encoder_2 projection_dim]

    def to(self, device, dtype=None) -> "PromptEmbeds":
        return PromptEmbeds(self.tokens.to(device, dtype), self.pooled.to(device, dtype))


@dataclass
class ImageLatents:
    """The VAE's latent distribution of one image (and of its mirror image), scaled for the UNet."""

    mean: torch.Tensor  # [1, 4, h, w], already times the VAE scaling factor
    std: torch.Tensor
    flipped_mean: Optional[torch.Tensor]
    flipped_std: Optional[torch.Tensor]
    time_ids: torch.Tensor  # [1, 6]: original size, crop top-left, target size
    flipped_time_ids: Optional[torch.Tensor]

    def sample(self, generator: torch.Generator, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent, time_ids) for one step: mean + std * noise, the noise from ``generator``."""
        mean, std, ids = ((self.flipped_mean, self.flipped_std, self.flipped_time_ids) if flip
                          else (self.mean, self.std, self.time_ids))
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + std * noise.to(mean.device), ids


@torch.no_grad()
def encode_prompt(pipe, prompt: str, device="cpu") -> PromptEmbeds:
    """Both text encoders once, the way the SDXL pipeline conditions its UNet (penultimate hidden
    states concatenated; pooled output of the second encoder)."""
    tokens, _, pooled, _ = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    return PromptEmbeds(tokens.detach().float(), pooled.detach().float())


@torch.no_grad()
def encode_image(pipe, image: LoadedImage, resolution: int, *, flip: bool, device="cpu") -> ImageLatents:
    vae = pipe.vae
    dtype = next(vae.parameters()).dtype
    factor = vae.config.scaling_factor
    out = {}
    for mirrored in ((False, True) if flip else (False,)):
        array, crop = prepare(image, resolution, flip=mirrored)
        pixels = to_tensor(array).to(device, dtype)
        dist = vae.encode(pixels).latent_dist
        height, width = image.original_size
        ids = torch.tensor([[height, width, crop[0], crop[1], resolution, resolution]], dtype=torch.float32)
        out[mirrored] = (dist.mean.float() * factor, dist.std.float() * factor, ids)
    flipped = out.get(True, (None, None, None))
    return ImageLatents(*out[False][:2], flipped[0], flipped[1], out[False][2], flipped[2])


def free_encoders(pipe) -> None:
    """Drop the VAE and both text encoders (and their GPU memory) once everything is encoded."""
    import gc

    for name in ("vae", "text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            setattr(pipe, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unet_inputs(prompt: PromptEmbeds, time_ids: torch.Tensor, device, dtype) -> dict:
    """Keyword arguments for ``unet(...)`` beyond the latent and the timestep."""
    return {"encoder_hidden_states": prompt.tokens.to(device, dtype),
            "added_cond_kwargs": {"text_embeds": prompt.pooled.to(device, dtype),
                                  "time_ids": time_ids.to(device, dtype)}}
