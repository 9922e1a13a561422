"""Regenerate the architecture maps in ``adapterctl/arch/data`` from the real libraries (dev tool).

    python -m adapterctl.arch.generate           # rewrite sdxl.json, sdxl-tiny.json (+ its tokenizer)
    python -m adapterctl.arch.generate --check   # exit 1 if a file on disk is stale

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

from adapterctl.arch import configs
from adapterctl.generated import write_or_check

DATA_DIR = Path(__file__).resolve().parent / "data"
OUTPUT = DATA_DIR / "sdxl.json"

# name -> (configs, modelspec architecture, aliases other tools write). The configs are in configs.py.
ARCHITECTURES = {
    "sdxl": (configs.SDXL, "stable-diffusion-xl-v1-base/lora", ["sdxl_base_v1-0", "stable-diffusion-xl-v1-base",
                                                                 "sdxl_base"]),
    # Not a model anyone publishes for: its own modelspec name, so no tool mistakes it for SDXL.
    "sdxl-tiny": (configs.SDXL_TINY, "adapterctl-sdxl-tiny/lora", []),
}
COMPONENT_CLASSES = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
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


def build_models(name: str = "sdxl") -> dict:
    """Instantiate the three components of ``name`` on ``meta``: shapes and names, zero bytes."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    models = {}
    component_configs = ARCHITECTURES[name][0]["configs"]
    with init_empty_weights():
        for component, (lib, cls_name) in COMPONENT_CLASSES.items():
            config = component_configs[component]
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


def describe(models: dict, unet_config: dict) -> list[dict]:
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
                sgm = sgm_name(path, unet_config)
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
    rank = list(COMPONENT_CLASSES).index(entry["component"])
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


def generate(name: str = "sdxl", models: dict | None = None) -> dict:
    spec, modelspec, aliases = ARCHITECTURES[name]
    models = models if models is not None else build_models(name)
    return {
        "name": name,
        "format_version": 1,
        "generated_by": "python -m adapterctl.arch.generate",
        "modelspec_architecture": modelspec,
        # How other tools name this base in metadata; lets readers map a header to us.
        "aliases": aliases,
        "components": list(COMPONENT_CLASSES),
        "kohya_prefixes": dict(KOHYA_PREFIXES),
        "model_classes": {c: f"{lib}.{cls}" for c, (lib, cls) in COMPONENT_CLASSES.items()},
        "configs": spec["configs"],
        "pipeline": spec["pipeline"],
        "modules": describe(models, spec["configs"]["unet"]),
    }


def tokenizer_files() -> dict[str, str]:
    """The tiny tokenizer's vocabulary: byte-level BPE symbols (GPT-2's byte-to-unicode table,
    which CLIP uses), each also with CLIP's end-of-word mark, then the two specials; no merges."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    others = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(next(shifted)) for _ in others]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == configs.TINY_VOCAB_SIZE
    vocab = {token: i for i, token in enumerate(tokens)}
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", "merges.txt": "#version: 0.2\n"}


def outputs() -> dict[Path, str]:
    """Every generated file: path -> text."""
    files = {DATA_DIR / f"{name}.json": render(generate(name)) for name in ARCHITECTURES}
    folder = DATA_DIR / configs.SDXL_TINY["pipeline"]["tokenizer_files"]
    files.update({folder / fname: text for fname, text in tokenizer_files().items()})
    return files


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
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    parser.add_argument("--output", type=Path, help="write (or check) only the sdxl map, at this path")
    args = parser.parse_args(argv)
    files = {args.output: render(generate("sdxl"))} if args.output else outputs()
    code = 0
    for path, text in files.items():
        code |= write_or_check(path, text, check=args.check, regenerate="python -m adapterctl.arch.generate")
        if not args.check:
            print(f"wrote {path}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
