"""The demo tour: the shipped example adapters, then (with the training extra) the whole loop on
the embedded tiny base: train two B-LoRAs, inspect, split, merge with ZipLoRA, convert, generate
a content x style grid, validate. Returns a result dict; never prints."""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from adapterctl.adapter import Adapter
from adapterctl.examples.make import BLORA, HERE, LOCON
from adapterctl.validate import validate_path

TRAIN_STEPS = 30  # the recipe's other values are the paper's; tiny's images are noise either way
SAMPLE_STEPS = 8
CALIBRATION_STEPS = 30


def run_demo(workdir: Optional[Path], *, log: Callable[[str], None], train: bool = True) -> dict:
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="adapterctl-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    steps: list[dict] = []
    started = time.perf_counter()

    def step(what: str, **facts) -> None:
        steps.append({"step": what, **facts})
        log(f"• {what}: " + ", ".join(f"{k}={v}" for k, v in facts.items()))

    _file_tour(work, step)
    trained = train and all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "transformers", "PIL"))
    if trained:
        _training_tour(work, step)
    else:
        step("skip training", reason="the training extra is not installed (pip install 'adapterctl[train]')")
    files = sorted(work.glob("*.safetensors"))
    verdicts = {f.name: validate_path(f).status(strict=True) for f in files}
    step("validate --strict outputs", **verdicts)
    return {"ok": all(v == "pass" for v in verdicts.values()), "workdir": str(work), "trained": trained,
            "seconds": round(time.perf_counter() - started, 1), "steps": steps}


def _file_tour(work: Path, step) -> None:
    blora_path, locon_path = HERE / BLORA, HERE / LOCON
    with Adapter.open(blora_path) as blora:
        step("inspect B-LoRA example", layout=blora.layout, method=blora.method, roles=blora.roles())
        outputs = {}
        for role in ("content", "style"):
            saved = blora.split(keep=[role]).save(work / f"blora.{role}.safetensors", force=True)
            outputs[role] = saved.path
            step(f"split --keep {role}", output=saved.path.name, tensors=saved.tensors)
        kohya = Adapter.open(outputs["style"]).convert("kohya").save(work / "blora.style.kohya.safetensors", force=True)
        step("convert style to kohya (SGM names)", output=kohya.path.name, tensors=kohya.tensors)

    with Adapter.open(locon_path) as locon:
        step("inspect kohya LoCon example", layout=locon.layout, modules=len(locon.modules), method=locon.method)
        diff = locon.convert("diffusers").save(work / "locon.diffusers.safetensors", force=True)
        step("convert kohya -> diffusers", output=diff.path.name, tensors=diff.tensors)
        back = Adapter.open(diff.path).convert("kohya").save(work / "locon.roundtrip.safetensors", force=True)
        same = _same_tensors(locon_path, back.path)
        step("convert diffusers -> kohya", output=back.path.name, bit_exact_round_trip=same)
        if not same:
            raise RuntimeError("round trip changed tensor bytes")


def _training_tour(work: Path, step) -> None:
    import adapterctl
    from adapterctl.examples.images import HERE as IMAGES, PAINTING, SCENE
    from adapterctl.torch import job, quiet_libraries
    from adapterctl.torch.apply import AdapterSpec
    from adapterctl.torch.base import load_base
    from adapterctl.torch.generate import grid
    from adapterctl.torch.recipe import TrainConfig

    quiet_libraries()
    config = TrainConfig(steps=TRAIN_STEPS)
    trained = {}
    for image in (SCENE, PAINTING):
        target = work / f"{Path(image).stem}.b-lora.safetensors"
        planned = job.plan([IMAGES / image], config, output=target, base="tiny", force=True, resume=None,
                           layout="kohya")
        (outcome,) = job.train_images(planned, config, base="tiny", force=True)
        trained[image] = target
        step(f"train B-LoRA on {image} (--base tiny, random weights: images are noise)", output=target.name,
             steps=outcome.steps, s_per_step=round(outcome.seconds / outcome.steps, 3),
             loss=f"{outcome.losses[0]:.3f}->{outcome.losses[-1]:.3f}")
    scene, painting = trained[SCENE], trained[PAINTING]
    with adapterctl.open(scene) as a:
        (op,) = a.manifest.provenance.operations
        step("inspect the trained adapter", arch=a.arch.name, layout=a.layout, method=a.method, roles=a.roles(),
             recorded=f"{op.op}: {op.args['steps']} steps, lr {op.args['lr']}, image sha256 {op.args['image_sha256'][:12]}")
    with adapterctl.open(painting) as a:
        saved = a.split(keep=["style"]).save(work / "sample_painting.style.safetensors", force=True)
        step("split --keep style", output=saved.path.name, tensors=saved.tensors)
    with adapterctl.open(scene) as c, adapterctl.open(painting) as s:
        merged = adapterctl.merge([c, s], "zip", content=0, style=1, measure_quality=True)
        saved = merged.save(work / "scene_x_painting.zip.safetensors", force=True)
        step("merge --content scene --style painting --method zip", output=saved.path.name,
             method=merged.manifest.method, interference_vs_direct=_ratio(merged.report))
    with adapterctl.open(scene) as c, adapterctl.open(painting) as s:
        # Calibrated: the mergers learned through the tiny UNet on the two images, which the
        # trained files' provenance points to (no --content-image/--style-image needed).
        calibrated = adapterctl.merge([c, s], "zip", content=0, style=1, base="tiny",
                                      calibration_steps=CALIBRATION_STEPS)
        cal = calibrated.report.calibration
        done = calibrated.save(work / "scene_x_painting.zip-calibrated.safetensors", force=True)
        step("merge --method zip --base tiny (calibrated on the recorded images)", output=done.path.name,
             steps=cal.steps, loss=f"{cal.loss_start:.4f}->{cal.loss_end:.4f}",
             overlap=f"{cal.overlap_start:.2f}->{cal.overlap_end:.2f}")
    with adapterctl.open(saved.path) as z:
        diff = z.convert("diffusers").save(work / "scene_x_painting.zip.diffusers.safetensors", force=True)
        step("convert zip -> diffusers", output=diff.path.name, tensors=diff.tensors)
    base = load_base("tiny")
    picture = grid(base, "A [v] in [v] style", [AdapterSpec(scene, "content")], [AdapterSpec(painting, "style")],
                   [0, 1], steps=SAMPLE_STEPS)
    picture.save(work / "grid.png")
    step("generate --grid (no content, scene:content) x (no style, painting:style) x seeds 0, 1; noise on tiny", output="grid.png",
         size=f"{picture.width}x{picture.height}")


def _ratio(report) -> str:
    ratio = report.to_dict()["overall"].get("ratio") if report is not None else None
    return "n/a" if ratio is None else f"{ratio:.3f}"


def _same_tensors(a: Path, b: Path) -> bool:
    from adapterctl.io.safetensors_file import SafetensorsFile

    with SafetensorsFile(a) as fa, SafetensorsFile(b) as fb:
        if set(fa.tensors) != set(fb.tensors):
            return False
        return all(fa.tensors[n].dtype == fb.tensors[n].dtype and fa.read(n) == fb.read(n) for n in fa.tensors)
