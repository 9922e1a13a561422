"""The reference images and prompts of a content and a style LoRA, for calibrated ZipLoRA: the
ones given, else the ones each adapter's ``train`` provenance records (adapterctl/torch/export.py
writes the image path relative to the adapter's folder, and the image's sha256)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from adapterctl.errors import UsageError
from adapterctl.textsafe import clip
from adapterctl.torch.images import LoadedImage, load_image

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter

ImageArg = Union[str, Path, LoadedImage]
_CONTENT, _STYLE = "content", "style"


@dataclass(frozen=True)
class Reference:
    """One LoRA's reference image and prompt, and where they came from."""

    image: LoadedImage
    prompt: str
    notes: tuple[str, ...] = ()
    resolution: Optional[int] = None  # the training resolution the adapter records, if any


def references(content: "Adapter", style: "Adapter", *, content_image: Optional[ImageArg] = None,
               style_image: Optional[ImageArg] = None, content_prompt: Optional[str] = None,
               style_prompt: Optional[str] = None) -> tuple[Reference, Reference]:
    """Each LoRA's reference image and prompt: the ones given, else the ones its ``train``
    operation records (the image found relative to the adapter's folder, then as recorded, and
    its sha256 checked), and the training resolution it records. Raises a one-line
    ``UsageError`` naming the flag to pass."""
    return (_reference(content, _CONTENT, content_image, content_prompt),
            _reference(style, _STYLE, style_image, style_prompt))


def _train_args(adapter: "Adapter") -> dict:
    for op in reversed(adapter.manifest.provenance.operations):
        if op.op == "train":
            return dict(op.args)
    return {}


def _reference(adapter: "Adapter", role: str, image: Optional[ImageArg], prompt: Optional[str]) -> Reference:
    flag = f"--{role}-image"
    name = clip(adapter.path.name, 120)
    args = _train_args(adapter)
    notes = []
    if image is not None:
        loaded = image if isinstance(image, LoadedImage) else load_image(image)
    else:
        recorded = args.get("image")
        if not isinstance(recorded, str) or not recorded.strip():
            raise UsageError(f"no {role} reference image: pass {flag}",
                             hint=f"{name} records no training image in its provenance")
        found = _find(adapter, recorded)
        if found is None:
            raise UsageError(f"no {role} reference image: pass {flag}",
                             hint=f"{name} was trained on '{clip(recorded, 120)}', which is neither next to it nor "
                                  "at that path")
        loaded = load_image(found)
        want = args.get("image_sha256")
        if isinstance(want, str) and want.strip():
            if loaded.sha256 != want.strip().lower():
                raise UsageError(f"the {role} reference image {clip(str(found), 160)} is not the one {name} was "
                                 f"trained on (its sha256 differs from the recorded one): pass {flag}")
        else:
            notes.append(f"{name} records no sha256 for its training image; used {clip(str(found), 160)} unchecked")
    if prompt is None:
        recorded = args.get(f"{role}_prompt") or args.get("prompt")
        if isinstance(recorded, str):
            prompt = recorded
        else:
            prompt = ""
            notes.append(f"no {role} prompt given or recorded in {name}: calibrating it with the empty prompt "
                         f"(pass --{role}-prompt)")
    recorded = args.get("resolution")
    resolution = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) and \
        64 <= recorded <= 8192 else None
    return Reference(loaded, prompt, tuple(notes), resolution)


def _find(adapter: "Adapter", recorded: str) -> Optional[Path]:
    candidates = []
    try:
        candidates = [adapter.path.parent / recorded, Path(recorded)]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
    except (OSError, ValueError):  # a recorded path with a NUL byte, or one too long
        return None
    return None
