"""``adapterctl train`` as a library call: one adapter per image, checked up front, written atomically.

    outcomes = train_images(["a.png", "b.png"], TrainConfig(method="b-lora"), base="tiny")

Everything a file or flag can get wrong is checked before the first step: every image decodes
and is large enough, every output (and checkpoint) path is writable and not an input, the blocks
exist, and a ``--resume`` checkpoint exists. A run that fails or is interrupted leaves no
adapter behind; an interrupted one leaves its checkpoint, and ``resume`` continues it exactly.

Under ``accelerate launch`` (or torchrun), each process takes every WORLD_SIZE-th image starting
at its RANK, on its own GPU: images are independent, so no process group is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from adapterctl.arch import load_arch
from adapterctl.errors import UsageError
from adapterctl.io.atomic import check_output
from adapterctl.textsafe import display_path
from adapterctl.torch.base import TINY, TINY_ARCH, BaseModel, load_base
from adapterctl.torch.images import LoadedImage, load_image
from adapterctl.torch.recipe import TrainConfig, check_ranks, get_method


@dataclass
class Planned:
    image: LoadedImage
    output: Path
    checkpoint: Path


@dataclass
class Outcome:
    planned: Planned
    steps: int
    resumed_from: int
    losses: list[float]
    seconds: float
    device: str
    saved: object  # ops.save.SaveResult
    notes: list[str]


def process_share() -> tuple[int, int]:
    """(rank, world size) under accelerate launch / torchrun; (0, 1) otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        return 0, 1
    return (rank, world) if world > 1 and 0 <= rank < world else (0, 1)


def fingerprint(resolved: TrainConfig, image_sha256: str, base: str, revision: Optional[str], arch: str) -> dict:
    """What a checkpoint must match to be resumed: the recipe, the image and the base model."""
    return {**resolved.fingerprint(), "image_sha256": image_sha256, "base": base, "base_revision": revision,
            "architecture": arch}


def plan(images: list[Path], config: TrainConfig, *, output: Optional[Path], base: str, force: bool,
         resume: Optional[Path], layout: str) -> list[Planned]:
    if not images:
        raise UsageError("train needs at least one image")
    method = get_method(config.method)
    # The base's module names and widths, known before it loads (every non-tiny base is SDXL-shaped;
    # load_base checks that): blocks and ranks are refused now, not after minutes of loading.
    arch = load_arch(TINY_ARCH if base == TINY else "sdxl")
    resolved = config.resolved(arch, 1024)
    check_ranks(arch, method.targets(arch, resolved), resolved)
    rank, world = process_share()
    if resume is not None:
        if len(images) != 1:
            raise UsageError("--resume continues one run: give the one image it was trained on")
        if not Path(resume).is_file():
            raise UsageError(f"--resume {display_path(resume)}: no such checkpoint file")
    mine = images[rank::world]
    loaded = [load_image(p) for p in mine]  # every image is checked before any training starts
    if resume is not None:
        from adapterctl.torch.checkpoint import check_checkpoint

        image = loaded[0] if loaded else load_image(images[0])  # (a process with no share still checks)
        native = arch.pipeline_config("native_resolution")
        head = fingerprint(config.resolved(arch, native), image.sha256, base, None, arch.name)
        check_checkpoint(Path(resume), head, unknown=("base_revision",))  # known once the base is loaded
    directory = output is not None and (len(images) > 1 or output.is_dir() or str(output).endswith(os.sep))
    planned: list[Planned] = []
    suffix = "" if layout == "peft" else ".safetensors"
    for image in loaded:
        name = f"{image.path.stem}.{method.name}{suffix}"
        target = (output / name if directory else output) if output is not None else Path(name)
        ckpt = Path(str(target) + ".ckpt.safetensors")
        inputs = tuple(i.path for i in loaded)
        check_output(target, force=force, inputs=inputs)
        if resume is None or Path(resume).absolute() != ckpt.absolute():
            check_output(ckpt, force=force, inputs=inputs)
        planned.append(Planned(image, target, ckpt))
    outputs = [p.output.absolute() for p in planned]
    if len(set(outputs)) != len(outputs):
        raise UsageError("two images would be written to one output (same file name)",
                         hint="give -o a directory and distinct image names")
    return planned


def train_images(planned: list[Planned], config: TrainConfig, *, base: str, revision: Optional[str] = None,
                 layout: str = "kohya", save_dtype: str = "F32", checkpoint_every: Optional[int] = None,
                 resume: Optional[Path] = None, force: bool = False,
                 progress: Optional[Callable] = None, should_stop: Callable[[], bool] = lambda: False,
                 on_base: Optional[Callable[[BaseModel], None]] = None) -> list[Outcome]:
    """Train and save each planned image. Raises ``TrainingInterrupted`` after writing a checkpoint
    when ``should_stop`` turns true."""
    from adapterctl.errors import TrainingInterrupted
    from adapterctl.torch.export import to_adapter
    from adapterctl.torch.train import train

    outcomes = []
    for item in planned:
        model = load_base(base, revision=revision)  # fresh per image: training wraps its UNet
        if on_base is not None:
            on_base(model)
        resolved = config.resolved(model.arch, model.resolution)
        result = train(resolved, item.image, model, checkpoint=item.checkpoint,
                       fingerprint=fingerprint(resolved, item.image.sha256, model.name, model.revision,
                                               model.arch.name),
                       checkpoint_every=checkpoint_every, resume=resume,
                       progress=(lambda p, item=item: progress(item, p)) if progress else None,
                       should_stop=should_stop)
        if result.stopped:
            where = display_path(result.checkpoint) if result.checkpoint else "nowhere"
            raise TrainingInterrupted(
                f"interrupted at step {result.steps_done} of {resolved.steps}; checkpoint saved to {where}",
                hint=f"continue with the same command plus --resume {where}")
        adapter = to_adapter(result, item.image, model, layout=layout, save_dtype=save_dtype, output=item.output)
        saved = adapter.save(item.output, force=force, protect=(item.image.path,))
        if item.checkpoint.exists() and (checkpoint_every or resume):
            item.checkpoint.unlink()  # the adapter supersedes it; a stale one would only mislead a resume
        outcomes.append(Outcome(item, result.steps_done, result.resumed_from, result.losses, result.seconds,
                                result.device, saved, result.notes + list(item.image.notes)))
        del model, result, adapter
    return outcomes
