"""The base model: ``--base tiny``, a local diffusers folder, a single-file checkpoint, or a Hub id.

Every route ends in a diffusers ``StableDiffusionXLPipeline`` and the architecture map whose
module names and shapes it has, so training and generation never guess which base they run on.

- ``tiny``: built here from the ``sdxl-tiny`` map's configs with fixed seeds, and its tokenizer
  from the two small vocabulary files shipped beside the map: no download, the same pipeline
  every time, on any machine. Its weights are random, so its images are noise; it exists so that
  the demo and the tests run the real code paths on a CPU in seconds.
- a folder: ``from_pretrained`` with safetensors only (a folder of pickles is refused).
- a ``.safetensors`` file: ``from_single_file`` with the configs this package ships, so it works
  offline; it still needs the CLIP tokenizer files, which are too large to ship, in the cache.
- anything else is a Hub repo id, fetched with huggingface_hub into its cache (safetensors and
  configs only); the commit it resolved to is recorded in the adapter's provenance.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from adapterctl.arch import ArchMap, known_architectures, load_arch
from adapterctl.errors import BaseModelNotFound, InvalidFile, UnsafeFile, UsageError
from adapterctl.textsafe import clip

DEFAULT_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
TINY = "tiny"
TINY_ARCH = "sdxl-tiny"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
# What a pipeline needs from a Hub repo: configs, tokenizers and the safetensors weights (no
# pickles, no fp16 duplicates, no single-file copy of the whole model).
_HUB_FILES = ["model_index.json", "*/config.json", "scheduler/scheduler_config.json", "tokenizer*/*",
              "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
              "text_encoder/model.safetensors", "text_encoder_2/model.safetensors"]
_NOT_FOUND_HINT = ("pass a local diffusers folder or .safetensors checkpoint with --base PATH, "
                   "or --base tiny to try adapterctl without a download")
# The fields that make a UNet this architecture's shape (weights may be any fine-tune of it).
_SHAPE_FIELDS = ("block_out_channels", "transformer_layers_per_block", "cross_attention_dim", "layers_per_block",
                 "attention_head_dim", "down_block_types", "up_block_types", "in_channels",
                 "projection_class_embeddings_input_dim")
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass
class BaseModel:
    pipe: object  # diffusers.StableDiffusionXLPipeline
    arch: ArchMap
    name: str  # "tiny", a repo id, or the path as given
    revision: Optional[str]  # the Hub commit, when it came from the Hub

    @property
    def resolution(self) -> int:
        return int(self.arch.pipeline_config("native_resolution"))


def load_base(spec: str = DEFAULT_BASE, *, revision: Optional[str] = None,
              dtype: torch.dtype = torch.float32) -> BaseModel:
    spec = (spec or "").strip()
    if spec == TINY:
        pipe = build_tiny()
        return BaseModel(pipe if dtype == torch.float32 else pipe.to(dtype=dtype), load_arch(TINY_ARCH), TINY, None)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _checked(_from_folder(path, dtype), spec, None)
    if path.exists():
        return _checked(_from_single_file(path, dtype), spec, None)
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/") and not _REPO_ID.match(spec):
        raise BaseModelNotFound(f"base model '{clip(spec, 200)}' does not exist", hint=_NOT_FOUND_HINT)
    if not _REPO_ID.match(spec):
        raise BaseModelNotFound(f"'{clip(spec, 200)}' is neither a path nor a Hugging Face repo id",
                                hint=_NOT_FOUND_HINT)
    folder, commit = _from_hub(spec, revision)
    return _checked(_from_folder(folder, dtype), spec, commit)


def build_tiny(seed: int = 0):
    """The embedded tiny SDXL pipeline, identical on every call and machine (random weights)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    arch = load_arch(TINY_ARCH)
    models = {}
    with _seeded(seed):
        models["unet"] = UNet2DConditionModel.from_config(arch.config("unet"))
        models["text_encoder"] = CLIPTextModel(CLIPTextConfig(**arch.config("text_encoder")))
        models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**arch.config("text_encoder_2")))
        models["vae"] = AutoencoderKL.from_config(_strip(arch.pipeline_config("vae")))
    vocab = arch.tokenizer_dir()
    tokenizers = {name: CLIPTokenizer(vocab=json.loads((vocab / "vocab.json").read_text(encoding="utf-8")),
                                      merges=[], **_tokenizer_args(arch.pipeline_config(name)))
                  for name in ("tokenizer", "tokenizer_2")}
    scheduler = EulerDiscreteScheduler.from_config(_strip(arch.pipeline_config("scheduler")))
    pipe = StableDiffusionXLPipeline(scheduler=scheduler, **models, **tokenizers)
    for model in models.values():
        model.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _seeded:
    """Fixed CPU RNG for building models, restored afterwards (the caller's seed is theirs)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.state)


def _strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _tokenizer_args(config: dict) -> dict:
    return {k: v for k, v in config.items() if k in ("model_max_length", "bos_token", "eos_token", "unk_token",
                                                      "pad_token")}


def write_config_folder(arch: ArchMap, dest: Path) -> Path:
    """A diffusers pipeline folder with every config (and the tokenizer files when the map ships
    them) but no weights: what ``from_single_file(config=...)`` needs to work offline."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model_index.json").write_text(json.dumps(arch.pipeline_config("model_index")), encoding="utf-8")
    parts = {"unet/config.json": {"_class_name": "UNet2DConditionModel", **arch.config("unet")},
             "vae/config.json": arch.pipeline_config("vae"),
             "scheduler/scheduler_config.json": arch.pipeline_config("scheduler"),
             "text_encoder/config.json": {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
                                          **arch.config("text_encoder")},
             "text_encoder_2/config.json": {"architectures": ["CLIPTextModelWithProjection"],
                                            "model_type": "clip_text_model", **arch.config("text_encoder_2")},
             "tokenizer/tokenizer_config.json": arch.pipeline_config("tokenizer"),
             "tokenizer_2/tokenizer_config.json": arch.pipeline_config("tokenizer_2")}
    for rel, body in parts.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(json.dumps(body, indent=1), encoding="utf-8")
    vocab = arch.tokenizer_dir()
    if vocab is not None:
        for folder in ("tokenizer", "tokenizer_2"):
            for name in ("vocab.json", "merges.txt"):
                shutil.copyfile(vocab / name, dest / folder / name)
    return dest


def _from_folder(path: Path, dtype):
    from diffusers import StableDiffusionXLPipeline

    if not (path / "model_index.json").is_file():
        raise BaseModelNotFound(f"{clip(str(path), 200)} is not a diffusers pipeline folder (no model_index.json)",
                                hint=_NOT_FOUND_HINT)
    try:
        pipe = StableDiffusionXLPipeline.from_pretrained(str(path), dtype=dtype, local_files_only=True,
                                                         use_safetensors=True)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many types for a bad folder; one line each
        raise InvalidFile(f"cannot load the base model folder: {_reason(exc)}", path=str(path),
                          hint="it must be an SDXL diffusers folder with .safetensors weights") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _from_single_file(path: Path, dtype):
    from diffusers import StableDiffusionXLPipeline

    if path.suffix.lower() != ".safetensors":
        raise UnsafeFile("only .safetensors checkpoints are loaded (a .ckpt or .bin holds pickles, which can run "
                         "code)", path=str(path))
    with tempfile.TemporaryDirectory(prefix="adapterctl-config-") as tmp:
        config = write_config_folder(load_arch("sdxl"), Path(tmp))
        try:
            pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(config), dtype=dtype,
                                                              local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise InvalidFile(f"cannot load the checkpoint as SDXL: {_reason(exc)}", path=str(path),
                              hint="single files also need the SDXL CLIP tokenizers in the Hugging Face cache; "
                                   "a diffusers folder needs nothing else") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _from_hub(repo: str, revision: Optional[str]) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    failure = None
    attempts = (True,) if os.environ.get("HF_HUB_OFFLINE") else (True, False)
    for local_only in attempts:  # the cache first: no network round trip when it is there
        try:
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=_HUB_FILES,
                                            local_files_only=local_only))
            return folder, folder.name  # snapshots/<commit>
        except Exception as exc:  # noqa: BLE001 - offline, not found, gated, unreachable: all one line
            failure = exc
    raise BaseModelNotFound(f"cannot load base model '{clip(repo, 200)}'"
                            f"{'@' + clip(revision, 60) if revision else ''}: it is not in the Hugging Face cache "
                            f"and the Hub did not provide it ({_reason(failure)})", hint=_NOT_FOUND_HINT)


def _checked(pipe, name: str, revision: Optional[str]) -> BaseModel:
    config = dict(pipe.unet.config)
    for arch_name in known_architectures():
        arch = load_arch(arch_name)
        try:
            want = arch.config("unet")
        except KeyError:
            continue
        if all(_same(config.get(f), want.get(f)) for f in _SHAPE_FIELDS):
            return BaseModel(pipe, arch, name, revision)
    raise UsageError(f"base model '{clip(name, 200)}' is not an architecture adapterctl knows "
                     f"(UNet block_out_channels {clip(repr(config.get('block_out_channels')), 60)})",
                     hint=f"known: {', '.join(known_architectures())}")


def _same(a, b) -> bool:
    norm = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)
    return norm(a) == norm(b)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return clip(text, 240)
