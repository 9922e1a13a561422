"""What an adapter file's header says on its own, before any tensor byte is read.

``Adapter.open`` and the library listing share these readings: the stored manifest, the
architecture the metadata names, the method the branches suggest. ``summarize`` is the listing's
header-only path for a file without a stored manifest. It makes every check ``Adapter.open``
makes except reading the one-element alpha tensors, whose values never decide whether a file
opens (``validate`` judges them). So it never touches the pages that hold tensor bytes: those
are scattered through the file, and on a library larger than the page cache each one is a disk
read (bench/bench_ls.py). tests/test_fuzz.py checks that both paths give the same verdicts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from adapterctl.arch import ArchMap, known_architectures, load_arch
from adapterctl.errors import InvalidFile, UnknownArchitecture
from adapterctl.format import roles as _roles
from adapterctl.format.constants import FORMAT_NAME, FORMAT_VERSION, MANIFEST_KEY
from adapterctl.format.manifest import Manifest
from adapterctl.io import safe_json
from adapterctl.io.safetensors_file import SafetensorsFile
from adapterctl.layouts.read import ReadResult, map_layout
from adapterctl.textsafe import clip

# modelspec.architecture / ss_base_model_version values we know, mapped to architecture maps.
ARCH_HINTS = {"stable-diffusion-xl-v1-base": "sdxl", "sdxl_base_v1-0": "sdxl", "sdxl": "sdxl"}


@dataclass(frozen=True)
class Summary:
    """What a listing shows of one adapter."""

    architecture: str
    layout: str
    method: str
    roles: dict[str, int]  # role or 'untagged' -> branches, in branch order
    modules: int
    rank_min: Optional[int]
    rank_max: Optional[int]

    @classmethod
    def of(cls, arch: ArchMap, manifest: Manifest) -> "Summary":
        return cls.build(arch.name, manifest.layout, manifest.method, [(e.role, e.rank) for e in manifest.modules])

    @classmethod
    def build(cls, architecture: str, layout: str, method: str,
              branches: list[tuple[Optional[str], int]]) -> "Summary":
        """From each branch's (role or None, rank), in branch order."""
        ranks = [rank for _, rank in branches]
        return cls(architecture, layout, method, dict(Counter(role or "untagged" for role, _ in branches)),
                   len(branches), min(ranks, default=None), max(ranks, default=None))


def open_source(path: Path) -> tuple[SafetensorsFile, Optional[dict]]:
    """The safetensors file behind an adapter path, and the peft config when it is a peft directory."""
    if path.is_dir():
        from adapterctl.layouts.peft_dir import read_peft_dir

        file_path, peft_config = read_peft_dir(path)
        return SafetensorsFile(file_path), peft_config
    return SafetensorsFile(path), None


def summarize(path: Path, st: SafetensorsFile, peft_config: Optional[dict] = None) -> Optional[Summary]:
    """The header-only summary of an adapter without a stored manifest; None when the file stores
    one (checking it against the tensors needs the alpha values: open it with ``Adapter``)."""
    if MANIFEST_KEY in st.metadata:  # the full open parses and checks it (once)
        return None
    arch = load_arch(guess_arch(st))
    result = map_layout(st, arch, peft_config=peft_config)
    require_mapped(result, arch, path)
    preset = _roles.inferred_preset(arch, result.branches)
    role_of = _roles.preset_roles(arch, preset) if preset else {}
    return Summary.build(arch.name, layout_of(result), guess_method(result, preset),
                         [(b.role or role_of.get(b.module), b.rank) for b in result.branches])


def stored_manifest(st: SafetensorsFile) -> Optional[Manifest]:
    raw = st.metadata.get(MANIFEST_KEY)
    if raw is None:
        return None
    try:
        head = safe_json.loads(raw)
    except safe_json.JsonRejected as exc:
        raise InvalidFile(f"{MANIFEST_KEY} is not valid JSON ({exc})", path=str(st.path)) from None
    if not isinstance(head, dict) or head.get("format") != FORMAT_NAME:
        raise InvalidFile(f"{MANIFEST_KEY} is not an {FORMAT_NAME} document", path=str(st.path))
    if type(head.get("version")) is not int or head.get("version") != FORMAT_VERSION:  # not true, not 1.0
        raise InvalidFile(f"manifest version {head.get('version')!r} is not supported (this is version "
                          f"{FORMAT_VERSION})", path=str(st.path), hint="upgrade adapterctl")
    from pydantic import ValidationError

    try:
        return Manifest.model_validate(head)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise InvalidFile(f"invalid manifest at '{clip(where, 120)}': {clip(str(err.get('msg')), 200)}",
                          path=str(st.path)) from None


def guess_arch(st: SafetensorsFile) -> str:
    for key in ("modelspec.architecture", "ss_base_model_version"):
        value = st.metadata.get(key)
        if value:
            base = value.split("/")[0]
            if base in ARCH_HINTS:
                return ARCH_HINTS[base]
            for candidate in (value, base):  # a map's own modelspec name or alias (sdxl-tiny)
                try:
                    return load_arch(candidate).name
                except UnknownArchitecture:
                    pass
            raise UnknownArchitecture(f"{key} says '{clip(base, 60)}', which has no architecture map",
                                      path=str(st.path), hint=f"known: {', '.join(known_architectures())}")
    return "sdxl"


def require_mapped(result: ReadResult, arch: ArchMap, path: Path) -> None:
    if not result.branches and not result.lycoris:
        raise UnknownArchitecture(f"none of the {len(result.unmapped)} LoRA tensors match the {arch.name} map",
                                  path=str(path), hint="is this adapter for another base model?")


def layout_of(result: ReadResult) -> str:
    """The manifest's layout: a LyCORIS file keeps kohya names."""
    return result.layout if result.layout != "lycoris" else "kohya"


def guess_method(result: ReadResult, preset: Optional[str]) -> str:
    if preset == "b-lora":
        return "b-lora"
    if result.lycoris:
        return "lycoris-" + "+".join(sorted(result.lycoris))
    if any(b.role == "expert" for b in result.branches):
        return "styleinject"
    return "locon" if any(b.kind == "conv" for b in result.branches) else "lora"
