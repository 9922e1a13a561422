"""Tiny SDXL-topology models and random LoRA files, for interop tests against real diffusers/peft.

The UNet keeps SDXL's exact block structure (block types, layers_per_block 2, transformer
layers [1, 2, 10], linear projections, text_time added conditioning), so every module name of
the real SDXL UNet exists here and the SGM <-> diffusers mapping is exercised for real; only the
widths are tiny. Channels must stay strictly increasing, or the resnets that change width in
SDXL (and therefore carry ``conv_shortcut``) would lose it.

Nothing is downloaded: every model is built from the configs stored in adapterctl's own SDXL map.

Vocabulary used below:
- *canonical*: adapterctl's module name, ``<component>.<path as stored in checkpoints>``;
- *live name*: the module's name inside the torch model. transformers 5 flattens
  ``CLIPTextModel`` (no ``text_model.`` level) but keeps it in ``CLIPTextModelWithProjection``,
  while files on disk spell ``text_model.`` for both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from adapterctl.arch import load_arch

ARCH = load_arch("sdxl")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")

# Tiny widths. TE widths differ so the two text encoders stay distinguishable by shape, like in SDXL.
TE1_WIDTH, TE2_WIDTH, TIME_DIM = 16, 24, 8

ATTN_PROJ = ("to_q", "to_k", "to_v", "to_out.0")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def unet_config() -> dict:
    cfg = ARCH.config("unet")
    cfg.update(
        block_out_channels=[16, 32, 64],
        norm_num_groups=8,
        attention_head_dim=[1, 2, 4],  # SDXL's quirk: this field holds head *counts*
        cross_attention_dim=TE1_WIDTH + TE2_WIDTH,
        addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=6 * TIME_DIM + TE2_WIDTH,
        sample_size=16,
    )
    return cfg


def _te_config(component: str, width: int):
    from transformers import CLIPTextConfig

    cfg = ARCH.config(component)
    cfg.update(hidden_size=width, intermediate_size=2 * width, num_attention_heads=2, num_hidden_layers=2,
               projection_dim=width, vocab_size=64, max_position_embeddings=8)
    return CLIPTextConfig(**cfg)


def build_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(unet_config()).eval()


def build_text_encoders(seed: int = 0):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return (CLIPTextModel(_te_config("text_encoder", TE1_WIDTH)).eval(),
            CLIPTextModelWithProjection(_te_config("text_encoder_2", TE2_WIDTH)).eval())


def build_models(seed: int = 0, *, text_encoders: bool = True) -> dict[str, torch.nn.Module]:
    models = {"unet": build_unet(seed)}
    if text_encoders:
        models["text_encoder"], models["text_encoder_2"] = build_text_encoders(seed)
    return models


def file_path(component: str, live_name: str) -> str:
    """The module path a checkpoint spells for a live module name."""
    # Only the flattened CLIPTextModel lacks the level; text_projection sits outside it anyway.
    if component.startswith("text_encoder") and live_name.startswith(("encoder.", "embeddings.")):
        return "text_model." + live_name
    return live_name


def canonical(component: str, live_name: str) -> str:
    return f"{component}.{file_path(component, live_name)}"


def live_modules(models: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """canonical name -> every Linear/Conv2d a LoRA can target, over all given models."""
    out = {}
    for component, model in models.items():
        for name, module in model.named_modules():
            if type(module) in (torch.nn.Linear, torch.nn.Conv2d):
                out[canonical(component, name)] = module
    return out


# ---------------------------------------------------------------------------------------------
# Module selections
# ---------------------------------------------------------------------------------------------

def spec(name: str):
    return ARCH.get(name)


def is_attn(name: str) -> bool:
    s = spec(name)
    return s is not None and s.group in ("attn", "te_attn")


def one_block_each(names: Iterable[str]) -> list[str]:
    """Every module kind and block, but only transformer_blocks.0 of each attention (204 of 794
    UNet modules): enough to cover every key shape of a layout at a third of the load time."""
    return [n for n in names if ".transformer_blocks." not in n or ".transformer_blocks.0." in n]


def blora_modules(block: str) -> list[str]:
    """The 80 B-LoRA targets of one block: attn1/attn2 q/k/v/out.0 of transformer_blocks 0..9."""
    return [f"unet.{block}.transformer_blocks.{t}.attn{a}.{p}"
            for t in range(10) for a in (1, 2) for p in ATTN_PROJ]


# ---------------------------------------------------------------------------------------------
# Random LoRA branches and their on-disk layouts
# ---------------------------------------------------------------------------------------------

@dataclass
class Branch:
    canonical: str
    down: torch.Tensor  # [r, in] or [r, in, kh, kw]
    up: torch.Tensor  # [out, r] or [out, r, 1, 1]
    alpha: Optional[float] = None  # None: no alpha tensor in the file
    alpha_dtype: torch.dtype = torch.float32

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def delta(self) -> np.ndarray:
        up = self.up.double().reshape(self.up.shape[0], -1).numpy()
        down = self.down.double().reshape(self.rank, -1).numpy()
        return self.scale * up @ down


def random_branches(models: dict[str, torch.nn.Module], names: Iterable[str], *, seed: int = 0,
                    rank: int | Callable[[str], int] = 4,
                    alpha: Callable[[str], Optional[tuple[float, torch.dtype]]] = lambda name: None,
                    dtype: torch.dtype = torch.float16) -> dict[str, Branch]:
    """One random LoRA branch per canonical name, shaped for the live module it targets.

    Both factors are non-zero (unlike a fresh training init) so that a branch silently dropped
    or misplaced by a loader shows up as a ΔW mismatch.
    """
    live = live_modules(models)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        module = live[name]
        r = rank(name) if callable(rank) else rank
        if isinstance(module, torch.nn.Conv2d):
            down_shape = (r, module.in_channels, *module.kernel_size)
            up_shape = (module.out_channels, r, 1, 1)
        else:
            down_shape, up_shape = (r, module.in_features), (module.out_features, r)
        down = (torch.randn(down_shape, generator=gen) * 0.5).to(dtype)
        up = (torch.randn(up_shape, generator=gen) * 0.5).to(dtype)
        a = alpha(name)
        out[name] = Branch(name, down, up, *(a if a else (None,)))
    return out


def kohya_state_dict(branches: dict[str, Branch], *, sgm: bool = True) -> dict[str, torch.Tensor]:
    """kohya keys; ``sgm=False`` writes diffusers module names after ``lora_unet_`` (some trainers do)."""
    sd = {}
    for name, b in branches.items():
        base = ARCH.kohya_name(name, sgm=sgm)
        sd[f"{base}.lora_down.weight"] = b.down
        sd[f"{base}.lora_up.weight"] = b.up
        if b.alpha is not None:
            sd[f"{base}.alpha"] = torch.tensor(b.alpha, dtype=b.alpha_dtype)  # 0-d, as sd-scripts writes it
    return sd


def diffusers_state_dict(branches: dict[str, Branch], *, style: str = "peft",
                         unet_prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """diffusers-family keys.

    style 'peft': ``<component>.<path>.lora_A.weight``; 'old': ``.lora.down.weight`` (UNet) and
    ``.lora_linear_layer.down.weight`` (text encoders, the old diffusers TE naming);
    'legacy-attn': attention q/k/v/out as ``<attn>.processor.to_q_lora.down.weight`` (UNet) or
    ``<self_attn>.to_q_lora.down.weight`` (TE), everything else as in 'old'.
    """
    sd = {}
    for name, b in branches.items():
        s = spec(name)
        prefix = unet_prefix if s.component == "unet" else f"{s.component}."
        path = s.path
        if style == "peft":
            keys = (f"{path}.lora_A.weight", f"{path}.lora_B.weight")
        elif style == "legacy-attn" and is_attn(name):
            parent, _, proj = path.removesuffix(".0").rpartition(".")
            if s.component == "unet":
                keys = (f"{parent}.processor.{proj}_lora.down.weight", f"{parent}.processor.{proj}_lora.up.weight")
            else:
                legacy = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}[proj]
                keys = (f"{parent}.{legacy}_lora.down.weight", f"{parent}.{legacy}_lora.up.weight")
        elif style in ("old", "legacy-attn"):
            inner = "lora" if s.component == "unet" else "lora_linear_layer"
            keys = (f"{path}.{inner}.down.weight", f"{path}.{inner}.up.weight")
        else:
            raise ValueError(style)
        sd[prefix + keys[0]] = b.down
        sd[prefix + keys[1]] = b.up
    return sd


def save(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


# ---------------------------------------------------------------------------------------------
# Oracles: what diffusers/peft actually put into the model, and what adapterctl reads
# ---------------------------------------------------------------------------------------------

def peft_deltas(models: dict[str, torch.nn.Module], adapter: str) -> dict[str, np.ndarray]:
    """canonical -> scaling * B @ A, for every module where peft attached ``adapter``."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for component, model in models.items():
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
                continue
            live = name.removeprefix("base_model.model.")
            a = module.lora_A[adapter].weight.detach().double()
            b = module.lora_B[adapter].weight.detach().double()
            delta = module.scaling[adapter] * b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)
            out[canonical(component, live)] = delta.numpy()
    return out


def peft_magnitudes(models: dict[str, torch.nn.Module], adapter: str) -> dict[str, np.ndarray]:
    from peft.tuners.lora import LoraLayer

    out = {}
    for component, model in models.items():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and adapter in module.lora_magnitude_vector:
                live = name.removeprefix("base_model.model.")
                out[canonical(component, live)] = module.lora_magnitude_vector[adapter].weight.detach().double().numpy()
    return out


def diffusers_load(path: Path, models: dict[str, torch.nn.Module], adapter: str = "probe") -> dict[str, np.ndarray]:
    """Load a LoRA file the way an SDXL pipeline does, then read back what peft attached.

    Same calls as ``StableDiffusionXLPipeline.load_lora_weights`` minus the pipeline object:
    ``lora_state_dict(..., unet_config=...)`` (maps SGM names, converts kohya) then
    ``load_lora_into_unet`` / ``load_lora_into_text_encoder`` with the file's metadata.
    """
    from diffusers import StableDiffusionXLPipeline as P

    unet = models["unet"]
    sd, alphas, metadata = P.lora_state_dict(str(path), unet_config=unet.config, return_lora_metadata=True)
    P.load_lora_into_unet(sd, alphas, unet, adapter_name=adapter, metadata=metadata)
    for component in ("text_encoder", "text_encoder_2"):
        if component in models:
            P.load_lora_into_text_encoder(sd, alphas, models[component], prefix=component,
                                          adapter_name=adapter, metadata=metadata)
    return peft_deltas(models, adapter)


def adapterctl_deltas(adapter) -> dict[str, np.ndarray]:
    from adapterctl.stats import factors

    out = {}
    for entry in adapter.modules:
        b, a = factors(adapter, entry)
        assert entry.module not in out, f"{entry.module} read twice"
        out[entry.module] = b @ a
    return out


def assert_same_deltas(got: dict[str, np.ndarray], want: dict[str, np.ndarray], *, what: str = "") -> None:
    """Same module set, and per module the same ΔW to float rounding."""
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"{what}: module sets differ; missing {missing[:5]} ({len(missing)}), " \
                                      f"extra {extra[:5]} ({len(extra)})"
    bad = [name for name in want if got[name].shape != want[name].shape
           or not np.allclose(got[name], want[name], rtol=1e-6, atol=1e-9)]
    assert not bad, f"{what}: ΔW differs in {len(bad)} modules, e.g. {bad[:5]}"


def quiet_loaders() -> None:
    """diffusers/peft warn per module on purpose in some tests; keep the log readable."""
    for name in ("diffusers", "peft", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
