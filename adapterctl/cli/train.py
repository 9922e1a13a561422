"""adapterctl train: train a LoRA from one photo (B-LoRA by default), tagged and ready for every other command.

The defaults are the B-LoRA paper's recipe: rank 64 on the two B-LoRA blocks, lr 5e-5, 1000 steps,
1024 px, prompt "A [v]". The image's latents and the prompt embeddings are computed once and the
VAE and text encoders freed before the loop. The adapter is written in the kohya layout with SGM
names and one alpha, which loads completely in diffusers, ComfyUI and A1111; its manifest says
which block carries content and which style, and how it was trained.

--base tiny is an embedded toy model with SDXL's module names and random weights: it trains in
seconds on a CPU and its images are noise. Use it to try the tool, not to make adapters.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli.options import ForceOpt, JsonOpt, QuietOpt
from adapterctl.cli.output import Output
from adapterctl.textsafe import display_path

# Choices shown in --help; tests check them against the library's lists (recipe.METHODS, layouts).
_METHODS = "b-lora, unziplora, blockwise or lora"
_LAYOUTS = "kohya, diffusers or peft"
BaseOpt = Annotated[str, typer.Option("--base", help="Base model: a Hub repo id (cached), a diffusers folder, an "
                                                     ".safetensors checkpoint, or 'tiny' (embedded, CPU, noise).")]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="Hub revision (branch, tag or commit).")]


def register(app: typer.Typer) -> None:
    app.command("train", help=command_help(
        __doc__,
        examples=[
            "adapterctl train photo.png",
            "adapterctl train photo.png --base tiny --steps 20 -o try.safetensors",
            "adapterctl train photo.png --method unziplora --steps 600",
            "adapterctl train photo.png --method blockwise --blocks OUT01,OUT02 --conv-rank 8",
            "accelerate launch --num_processes 4 -m adapterctl.cli.main train a.png b.png c.png d.png",
        ]))(train_cmd)


def train_cmd(
    images: Annotated[list[Path], typer.Argument(help="Photos; one adapter is trained per image.",
                                                 show_default=False, readable=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file (one image) or directory "
                                                   "(default: IMAGE.METHOD.safetensors here).")] = None,
    method: Annotated[str, typer.Option("--method", "-m", help=f"{_METHODS}.")] = "b-lora",
    base: BaseOpt = "stabilityai/stable-diffusion-xl-base-1.0",
    revision: RevisionOpt = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Training steps (1000; unziplora 600).",
                                                 min=1)] = None,
    rank: Annotated[Optional[int], typer.Option("--rank", help="LoRA rank (64; 8 on tiny).", min=1)] = None,
    alpha: Annotated[Optional[float], typer.Option("--alpha", help="LoRA alpha (default: the rank).")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 5e-5,
    resolution: Annotated[Optional[int], typer.Option("--resolution", help="Training size in px (the base's "
                                                      "native: 1024; tiny 128).")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Training prompt ('A [v]'; unziplora "
                                                  "'A [c] in [s] style').")] = None,
    content_prompt: Annotated[str, typer.Option("--content-prompt", help="unziplora: the content LoRA's "
                                                "prompt.")] = "A [c]",
    style_prompt: Annotated[str, typer.Option("--style-prompt", help="unziplora: the style LoRA's "
                                              "prompt.")] = "A picture in [s] style",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the LoRA init and of every step's draws.",
                                      min=0)] = 0,
    flip: Annotated[bool, typer.Option("--flip", help="Random horizontal flips (both latents cached).")] = False,
    blocks: Annotated[Optional[list[str]], typer.Option("--blocks", help="blockwise: block ids, LBW names (OUT01) "
                                                        "or an LBW preset (b-lora); comma-separated.")] = None,
    conv_rank: Annotated[Optional[int], typer.Option("--conv-rank", help="blockwise: also train the blocks' "
                                                     "convs (LoCon) at this rank.", min=1)] = None,
    merger_lr: Annotated[float, typer.Option("--merger-lr", help="unziplora: merger learning rate.")] = 5e-3,
    mask_every: Annotated[int, typer.Option("--mask-every", help="unziplora: steps between column selections.",
                                            min=1)] = 200,
    precision: Annotated[str, typer.Option("--precision", help="GPU weights: auto (bf16, else fp16), fp16, bf16 "
                                           "or no; the CPU always trains in fp32.")] = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing",
                                                         help="Recompute activations (less memory).")] = False,
    checkpoint_every: Annotated[Optional[int], typer.Option("--checkpoint-every", help="Write OUT.ckpt.safetensors "
                                                            "every N steps.", min=1)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue from a checkpoint (same image and "
                                                   "flags; --steps may grow).", dir_okay=False)] = None,
    layout: Annotated[Optional[str], typer.Option("--layout", help=f"Output layout: {_LAYOUTS} (default kohya; "
                                                  "unziplora: diffusers, whose role slots hold both LoRAs).")] = None,
    save_dtype: Annotated[str, typer.Option("--save-dtype", help="float32, float16 or bfloat16.")] = "float32",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl import torch as extra

    extra.require()
    from adapterctl.errors import UsageError
    from adapterctl.torch.export import SAVE_DTYPES
    from adapterctl.torch.recipe import TrainConfig, get_method

    layout = _layout(get_method(method).name, layout)
    if save_dtype not in SAVE_DTYPES:
        raise UsageError(f"--save-dtype {save_dtype!r} is not one of float32, float16, bfloat16")
    config = _config(TrainConfig, method=method, rank=rank, alpha=alpha, lr=lr, steps=steps, resolution=resolution,
                     prompt=prompt, content_prompt=content_prompt, style_prompt=style_prompt, seed=seed, flip=flip,
                     blocks=tuple(blocks or ()), conv_rank=conv_rank, merger_lr=merger_lr, mask_every=mask_every,
                     precision=precision, gradient_checkpointing=gradient_checkpointing)
    out = Output(json_mode=json_out, quiet=quiet)
    from adapterctl.cli import _env
    from adapterctl.torch import job

    extra.quiet_libraries()
    if not _env.USER_PINNED_THREADS:
        extra.use_all_cores(base)
    planned = job.plan(images, config, output=output, base=base, force=force, resume=resume, layout=layout)
    for item in planned:
        for note in item.image.notes:
            out.note(f"{display_path(item.image.path)}: {note}")
    progress = _Progress(out, len(planned))
    with _StopOnSignal() as stop:
        try:
            outcomes = job.train_images(planned, config, base=base, revision=revision, layout=layout,
                                        save_dtype=SAVE_DTYPES[save_dtype], checkpoint_every=checkpoint_every,
                                        resume=resume, force=force, progress=progress.update,
                                        should_stop=stop.requested, on_base=progress.base_loaded)
        finally:
            progress.close()
    out.result({"ok": True, "adapters": [_summary(o) for o in outcomes]}, _render)


def _layout(method: str, layout: Optional[str]) -> str:
    from adapterctl.errors import UsageError

    if layout is not None and layout not in ("kohya", "diffusers", "peft"):
        raise UsageError(f"--layout {layout!r} is not one of {_LAYOUTS}")
    if method == "unziplora":
        # Two LoRAs on one module: only role slots can hold them in one file (spec/FORMAT.md rule 18).
        if layout not in (None, "diffusers"):
            raise UsageError(f"unziplora writes a content and a style LoRA on the same modules, which only the "
                             f"diffusers layout's role slots hold; --layout {layout} cannot",
                             hint=f"train with the default layout, then 'adapterctl split FILE --keep style' and "
                                  f"'adapterctl convert FILE.style.safetensors --to {layout}'")
        return "diffusers"
    return layout or "kohya"


def _config(cls, **values):
    from pydantic import ValidationError

    from adapterctl.errors import UsageError

    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "--" + ".".join(str(p) for p in err.get("loc", ())).replace("_", "-")
        raise UsageError(f"{where}: {str(err.get('msg')).removeprefix('Value error, ')}") from None


def _summary(o) -> dict:
    losses = o.losses
    window = max(1, len(losses) // 10)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    return {"image": display_path(o.planned.image.path), "image_sha256": o.planned.image.sha256,
            "output": display_path(o.planned.output), "sha256": o.saved.sha256, "bytes": o.saved.bytes,
            "steps": o.steps, "resumed_from": o.resumed_from, "seconds": round(o.seconds, 3),
            "seconds_per_step": round(o.seconds / max(1, o.steps - o.resumed_from), 4), "device": o.device,
            "loss": {"first": first, "last": last, "min": min(losses), "max": max(losses), "mean_window": window},
            "notes": list(o.notes)}


def _render(console, data: dict) -> None:
    for a in data["adapters"]:
        loss = a["loss"]
        console.print(f"Wrote {a['output']} ({a['steps']} steps, {a['seconds_per_step']:.3f} s/step on "
                      f"{a['device']}; loss {loss['first']:.4f} -> {loss['last']:.4f}, means of "
                      f"{loss['mean_window']} steps)", markup=False, highlight=False)


class _Progress:
    """A rich bar with loss, it/s and ETA on a terminal; a plain line per 10% otherwise; nothing
    with --quiet or --json (the result then says it all)."""

    def __init__(self, out: Output, images: int):
        self.out, self.images, self.bar, self.task, self.current, self.last_line = out, images, None, None, None, -1
        self.enabled = not (out.quiet or out.json_mode)
        self.tty = self.enabled and sys.stderr.isatty()

    def base_loaded(self, base) -> None:
        if self.enabled:
            self.out.note(f"base model: {base.name}{'@' + base.revision[:12] if base.revision else ''} "
                          f"({base.arch.name}{'; random weights, its images are noise' if base.name == 'tiny' else ''})")

    def update(self, item, p) -> None:
        if not self.enabled:
            return
        name = display_path(item.image.path)
        if self.tty:
            self._bar(name, p)
        elif p.step * 10 // p.steps != self.last_line or p.step == p.steps:
            self.last_line = p.step * 10 // p.steps
            rate = p.step / p.seconds if p.seconds > 0 else 0.0
            sys.stderr.write(f"{name}: step {p.step}/{p.steps} loss {p.loss:.4f} {rate:.2f} it/s\n")
            sys.stderr.flush()

    def _bar(self, name: str, p) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self.bar is None:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.2f} it/s"),
                                TimeRemainingColumn(), console=self.out.err, transient=False)
            self.bar.start()
        if self.current != name:
            self.task = self.bar.add_task(name.replace("[", "\\["), total=p.steps, loss=p.loss, rate=0.0)
            self.current = name
        self.bar.update(self.task, completed=p.step, loss=p.loss, rate=p.step / p.seconds if p.seconds > 0 else 0.0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _StopOnSignal:
    """While training, Ctrl-C (and SIGTERM/SIGHUP) asks the loop to stop at the next step, which
    writes a checkpoint; a second signal stops at once (the CLI's usual handler)."""

    def __init__(self):
        self.flag = False
        self.previous = {}

    def requested(self) -> bool:
        return self.flag

    def _handler(self, signum, frame):
        self.flag = True
        for sig, handler in self.previous.items():  # the next signal interrupts for real
            signal.signal(sig, handler)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                self.previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (an embedding application): no handler
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


