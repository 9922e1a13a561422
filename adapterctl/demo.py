"""The demo tour over the shipped example adapters. Returns a result dict; never prints."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Optional

from adapterctl.adapter import Adapter
from adapterctl.examples.make import BLORA, HERE, LOCON
from adapterctl.validate import validate_path


def run_demo(workdir: Optional[Path], *, log: Callable[[str], None]) -> dict:
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="adapterctl-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    steps: list[dict] = []

    def step(what: str, **facts) -> None:
        steps.append({"step": what, **facts})
        log(f"• {what}: " + ", ".join(f"{k}={v}" for k, v in facts.items()))

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

    files = sorted(work.glob("*.safetensors"))
    verdicts = {f.name: validate_path(f).status(strict=False) for f in files}
    step("validate outputs", **verdicts)
    return {"ok": all(v != "fail" for v in verdicts.values()), "workdir": str(work), "steps": steps}


def _same_tensors(a: Path, b: Path) -> bool:
    from adapterctl.io.safetensors_file import SafetensorsFile

    with SafetensorsFile(a) as fa, SafetensorsFile(b) as fb:
        if set(fa.tensors) != set(fb.tensors):
            return False
        return all(fa.tensors[n].dtype == fb.tensors[n].dtype and fa.read(n) == fb.read(n) for n in fa.tensors)
