"""Calibrated ZipLoRA inside the merge driver: the options, the report, and the call into torch.

``merge(..., base=...)`` (zip only) learns the mergers through the base model's UNet on the
reference images (adapterctl/torch/zip_calibrate.py) before the output is planned; everything
else about the merge is the data-free zip's. torch is imported only when a base is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from adapterctl.errors import UsageError
from adapterctl.ops.merge_report import MergeReport
from adapterctl.ops.methods.base import MergeMethod
from adapterctl.textsafe import clip


@dataclass
class CalibratedMergeReport(MergeReport):
    """A zip merge's report with ``--base``: ``calibration`` is what the run found
    (``adapterctl.torch.zip_calibrate.Calibration``: the mergers, loss and overlap histories),
    or None when there was nothing to calibrate."""

    calibration: Optional[object] = None

    def to_dict(self) -> dict:
        out = super().to_dict()
        cal = self.calibration
        if cal is not None:
            out["calibration"] = {**cal.args(), "device": cal.device, "seconds": cal.seconds,
                                  "stopped_early": cal.stopped_early, "data_free_modules": list(cal.data_free),
                                  "loss_history": list(cal.loss_history),
                                  "overlap_history": list(cal.overlap_history)}
        return out


_CALIBRATION_FLAGS = (("content_image", "--content-image"), ("style_image", "--style-image"),
                      ("content_prompt", "--content-prompt"), ("style_prompt", "--style-prompt"),
                      ("calibration_steps", "--calibration-steps"), ("revision", "--revision"),
                      ("resolution", "resolution"), ("progress", "progress"))


def calibration_request(meth: MergeMethod, base, **given) -> Optional[dict]:
    """The calibration options when ``base`` is given (zip only), else None; options that only
    calibration takes are refused without it. Checked before anything is read."""
    if base is None:
        for key, flag in _CALIBRATION_FLAGS:
            if given.get(key) is not None:
                raise UsageError(f"{flag} is used only when calibrating zip on a base model",
                                 hint="add --base MODEL (with --method zip), or drop it")
        return None
    if meth.name != "zip":
        raise UsageError(f"--base calibrates zip's mergers on images; merge --method {meth.name} takes no base model",
                         hint="use --method zip, or drop --base")
    if isinstance(base, str) and not base.strip():
        raise UsageError("--base is empty", hint="pass --base tiny, a diffusers folder, a checkpoint or a Hub id")
    for key, flag, low, high in (("calibration_steps", "--calibration-steps", 1, 100_000),
                                 ("resolution", "resolution", 64, 8192)):
        value = given.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not low <= value <= high):
            raise UsageError(f"{flag} must be an integer from {low} to {high}, not {clip(repr(value), 40)}")
    return {"base": base, **given}


def calibrate_zip(adapters, planned_parts, content_index: Optional[int], params, request: dict,
                   seed: Optional[int], report: MergeReport):
    """ZipLoRA's own calibration (adapterctl/torch/zip_calibrate.py) of every module both the
    content and the style input carry, on their reference images; None when no UNet module is
    shared (then the data-free mergers are used, with a note)."""
    from adapterctl.ops.methods.base import weighted

    shared = [m for m, (parts, _) in planned_parts.items() if len({i for i, _ in parts}) == 2]
    if content_index is None or not any(m.startswith("unet.") for m in shared):
        report.notes.append("--base: no UNet module carries both a content and a style branch, so there is nothing "
                            "to calibrate on images" + ("; data-free mergers were used" if shared else ""))
        return None
    from adapterctl.torch.base import BaseModel, load_base
    from adapterctl.torch.references import references
    from adapterctl.torch.zip_calibrate import STEPS, calibrate

    c, s = adapters[content_index], adapters[1 - content_index]
    refs = references(c, s, content_image=request["content_image"], style_image=request["style_image"],
                      content_prompt=request["content_prompt"], style_prompt=request["style_prompt"])
    base = request["base"]
    model = base if isinstance(base, BaseModel) else load_base(str(base), revision=request["revision"])
    branches = {}
    for module, (parts, factors) in planned_parts.items():
        pair = [None, None]
        for (index, entry), factor in zip(parts, factors):
            pair[0 if index == content_index else 1] = weighted(adapters[index].branch(entry), factor)
        branches[module] = tuple(pair)
    steps = request["calibration_steps"]
    result = calibrate(c, s, model, content_image=refs[0].image, style_image=refs[1].image,
                       content_prompt=refs[0].prompt, style_prompt=refs[1].prompt, axis=params.axis,
                       lam=params.lam, steps=STEPS if steps is None else steps, seed=0 if seed is None else seed,
                       resolution=request["resolution"] or refs[0].resolution or refs[1].resolution,
                       progress=request["progress"], branches=branches)
    report.notes.extend([*refs[0].notes, *refs[1].notes, *result.notes, result.summary()])
    return result
