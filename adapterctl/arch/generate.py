"""Regenerate ``adapterctl/arch/data/sdxl.json`` from the real libraries (dev tool).

    python -m adapterctl.arch.generate           # rewrite the file
    python -m adapterctl.arch.generate --check   # exit 1 if the file on disk is stale

The map is derived, not typed in: diffusers and transformers build the actual SDXL
models on the ``meta`` device (no weights, no download), and every ``nn.Linear`` and
``nn.Conv2d`` they contain becomes one entry.  Runtime code reads only the JSON, so it
never needs torch.  Everything SDXL-specific that is *not* in the libraries (the SGM
names kohya writes, LoRA Block Weight labels, kohya prefixes) is computed here by
rule and stored as data, which is what lets another base model arrive as plain JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adapterctl.generated import write_or_check

DATA_DIR = Path(__file__).resolve().parent / "data"
OUTPUT = DATA_DIR / "sdxl.json"

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json, minus the _class_name and
# _diffusers_version bookkeeping.  Written out in full (defaults included) so the map
# does not silently follow a change of default in a future diffusers.
SDXL_UNET_CONFIG: dict = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": True,
}

_CLIP_COMMON: dict = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "pad_token_id": 1,
    "vocab_size": 49408,
}
# CLIP ViT-L/14 text tower (OpenAI); SDXL uses its penultimate hidden state.
SDXL_TE1_CONFIG: dict = {
    **_CLIP_COMMON,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
}
# OpenCLIP ViT-bigG/14 text tower; unlike OpenAI CLIP it was trained with exact gelu.
SDXL_TE2_CONFIG: dict = {
    **_CLIP_COMMON,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}

COMPONENTS = {
    "unet": ("diffusers", "UNet2DConditionModel", SDXL_UNET_CONFIG),
    "text_encoder": ("transformers", "CLIPTextModel", SDXL_TE1_CONFIG),
    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", SDXL_TE2_CONFIG),
}
KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}

# Resnet children are the only UNet leaves whose SGM name is not their diffusers name.
_RESNET_SGM = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_TOP_LEVEL_SGM = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_ATTN_LEAVES = ("to_q", "to_k", "to_v", "to_out.0")


def build_models() -> dict:
    """Instantiate the three SDXL components on ``meta``: shapes and names, zero bytes."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    models = {}
    with init_empty_weights():
        for component, (lib, cls_name, config) in COMPONENTS.items():
            if lib == "diffusers":
                models[component] = getattr(diffusers, cls_name)(**config)
            else:
                cls = getattr(transformers, cls_name)
                models[component] = cls(transformers.CLIPTextConfig(**config))
    return models


def _sgm_inner(kind: str, rest: str) -> str:
    if kind == "resnets":
        return _RESNET_SGM[rest]
    return rest  # attention internals keep their names in SGM


def sgm_name(path: str, config: dict) -> str:
    """SGM (original Stability / kohya) name of a diffusers UNet module path.

    SGM flattens the UNet into input_blocks / middle_block / output_blocks, where each
    numbered block is one resnet (slot 0) plus its optional attention (slot 1); a block
    that only resamples holds the down/up sampler.  Down blocks hold ``L`` layers plus a
    downsampler, up blocks ``L + 1`` layers with the upsampler riding on the last one.
    """
    if path in _TOP_LEVEL_SGM:
        return _TOP_LEVEL_SGM[path]
    L = config["layers_per_block"]
    parts = path.split(".")
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        slot = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, j)]
        return f"middle_block.{slot}.{_sgm_inner(kind, rest)}"
    b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if parts[0] == "down_blocks":
        if kind == "downsamplers":
            assert rest == "conv", path
            return f"input_blocks.{(b + 1) * (L + 1)}.0.op"
        index = 1 + b * (L + 1) + j
        return f"input_blocks.{index}.{0 if kind == 'resnets' else 1}.{_sgm_inner(kind, rest)}"
    if parts[0] == "up_blocks":
        if kind == "upsamplers":
            has_attn = config["up_block_types"][b].startswith("CrossAttn")
            return f"output_blocks.{b * (L + 1) + L}.{2 if has_attn else 1}.{rest}"
        index = b * (L + 1) + j
        return f"output_blocks.{index}.{0 if kind == 'resnets' else 1}.{_sgm_inner(kind, rest)}"
    raise ValueError(f"no SGM rule for UNet module {path!r}")


def lbw_label(sgm: str | None, component: str) -> str | None:
    if component != "unet":
        return "BASE"
    head, _, tail = sgm.partition(".")
    if head == "input_blocks":
        return f"IN{int(tail.split('.')[0]):02d}"
    if head == "middle_block":
        return "MID"
    if head == "output_blocks":
        return f"OUT{int(tail.split('.')[0]):02d}"
    return None  # time_embed, label_emb and out.2 sit outside every LBW slot


def unet_block_and_group(path: str) -> tuple[str, str]:
    parts = path.split(".")
    if parts[0] in ("conv_in", "conv_out"):
        return parts[0], "io"
    if parts[0] in ("time_embedding", "add_embedding"):
        return parts[0], "embed"
    depth = 3 if parts[0] == "mid_block" else 4
    block, inner = ".".join(parts[:depth]), ".".join(parts[depth:])
    kind = parts[depth - 2]
    if kind in ("downsamplers", "upsamplers"):
        return block, "sampler"
    if kind == "resnets":
        return block, "resnet"
    if inner in ("proj_in", "proj_out"):
        return block, "proj"
    leaf = ".".join(parts[depth + 3 :])  # after transformer_blocks.N.<attn1|attn2|ff>
    if parts[depth + 2] in ("attn1", "attn2") and leaf in _ATTN_LEAVES:
        return block, "attn"
    if parts[depth + 2] == "ff":
        return block, "ff"
    raise ValueError(f"unclassified UNet module {path!r}")


def te_block_and_group(component: str, path: str) -> tuple[str, str]:
    if path == "text_projection":
        return f"{component}.text_projection", "te_proj"
    parts = path.split(".")
    if parts[:3] != ["text_model", "encoder", "layers"]:
        raise ValueError(f"unclassified text encoder module {path!r}")
    group = {"self_attn": "te_attn", "mlp": "te_mlp"}[parts[4]]
    return f"{component}.layers.{parts[3]}", group


def describe(models: dict) -> list[dict]:
    import torch

    entries = []
    for component, model in models.items():
        # transformers 5 flattened CLIPTextModel (no ``text_model`` wrapper) and renames
        # weights on load, but every checkpoint and LoRA file on disk still says
        # ``text_model.``; the map records the on-disk name so it is version-independent.
        prefix = "text_model." if component != "unet" and not hasattr(model, "text_model") else ""
        for live_path, module in model.named_modules():
            path = prefix + live_path
            if isinstance(module, torch.nn.Linear):
                kind, fan_in, fan_out, kernel = "linear", module.in_features, module.out_features, None
            elif isinstance(module, torch.nn.Conv2d):
                kind, fan_in, fan_out = "conv", module.in_channels, module.out_channels
                kernel = list(module.kernel_size)
            else:
                continue
            if component == "unet":
                block, group = unet_block_and_group(path)
                sgm = sgm_name(path, SDXL_UNET_CONFIG)
            else:
                block, group = te_block_and_group(component, path)
                sgm = None
            entries.append({
                "name": f"{component}.{path}", "component": component, "path": path,
                "block": block, "kind": kind, "in": fan_in, "out": fan_out, "kernel": kernel,
                "sgm": sgm, "lbw": lbw_label(sgm, component), "group": group,
            })
    # Forward-pass order (SGM numbering) instead of registration order, so that blocks()
    # reads IN00..IN08, MID, OUT00..OUT08 like the LBW lists; the sort is stable, which
    # keeps the library's order inside each SGM slot.
    entries.sort(key=_forward_order)
    _check_flat_names_unique(entries)
    return entries


_SECTION_RANK = {"time_embed": 0, "label_emb": 1, "input_blocks": 2, "middle_block": 3, "output_blocks": 4, "out": 5}


def _forward_order(entry: dict) -> tuple:
    rank = list(COMPONENTS).index(entry["component"])
    if entry["sgm"] is None:
        return (rank,)
    section, *rest = entry["sgm"].split(".")
    numbers = []
    for part in rest:
        if not part.isdigit():
            break
        numbers.append(int(part))
    return (rank, _SECTION_RANK[section], *numbers[:2])


def _check_flat_names_unique(entries: list[dict]) -> None:
    # kohya flattens "." to "_", which is lossy; two modules colliding would make
    # kohya files ambiguous, so refuse to ship such a map.
    seen: dict[str, str] = {}
    for e in entries:
        prefix = KOHYA_PREFIXES[e["component"]]
        for dotted in filter(None, {e["path"], e["sgm"]}):
            flat = f"{prefix}_{dotted.replace('.', '_')}"
            if seen.setdefault(flat, e["name"]) != e["name"]:
                raise ValueError(f"kohya name {flat} is shared by {seen[flat]} and {e['name']}")


def generate(models: dict | None = None) -> dict:
    models = models if models is not None else build_models()
    return {
        "name": "sdxl",
        "format_version": 1,
        "generated_by": "python -m adapterctl.arch.generate",
        "modelspec_architecture": "stable-diffusion-xl-v1-base/lora",
        # How other tools name this base in metadata; lets readers map a header to us.
        "aliases": ["sdxl_base_v1-0", "stable-diffusion-xl-v1-base", "sdxl_base"],
        "components": list(COMPONENTS),
        "kohya_prefixes": dict(KOHYA_PREFIXES),
        "model_classes": {c: f"{lib}.{cls}" for c, (lib, cls, _) in COMPONENTS.items()},
        "configs": {c: cfg for c, (_, _, cfg) in COMPONENTS.items()},
        "modules": describe(models),
    }


def render(data: dict) -> str:
    """Stable text: header keys one per line, then one module per line for clean diffs."""
    lines = ["{"]
    for key, value in data.items():
        if key != "modules":
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)},")
    lines.append('  "modules": [')
    mods = data["modules"]
    lines += [f"    {json.dumps(m)}{',' if i < len(mods) - 1 else ''}" for i, m in enumerate(mods)]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapterctl.arch.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the file on disk instead of writing")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render(generate())
    code = write_or_check(args.output, text, check=args.check, regenerate="python -m adapterctl.arch.generate")
    if code == 0 and not args.check:
        print(f"wrote {args.output} ({len(json.loads(text)['modules'])} modules)")
    return code

if __name__ == "__main__":
    raise SystemExit(main())
