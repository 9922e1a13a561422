"""Map the tensors of any supported layout onto canonical LoRA branches.

Two stages. ``map_layout`` reads the header alone: it names every branch (module, block, rank,
the role its keys spell, its tensors) and makes every check the header allows, alpha tensors'
shapes and dtypes included. ``read_layout`` then reads the one-element alpha tensors and builds
``ModuleEntry`` objects (role-less: roles come from the manifest or inference). A listing of
foreign files needs only the first stage, so it never touches the pages that hold tensor bytes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from pydantic import ValidationError

from adapterctl.arch import ArchMap
from adapterctl.errors import LayoutError
from adapterctl.format.constants import DIFFUSERS_METADATA_KEY
from adapterctl.format.manifest import ModuleEntry
from adapterctl.io import safe_json
from adapterctl.io.safetensors_file import SafetensorsFile, TensorInfo
from adapterctl.layouts import keys as K
from adapterctl.layouts.registry import LAYOUTS, parse_key
from adapterctl.layouts.scaling import SCALAR_DTYPES, PeftScaling, decode_scalar, split_diffusers_metadata
from adapterctl.textsafe import clip

def _groups() -> dict[str, str]:
    # Families of plain (up, down) factors, and which of them loaders treat as one layout.
    return {layout.name: layout.group for layout in LAYOUTS if layout.name != "lycoris"}


class Branch(NamedTuple):
    """One LoRA branch as the header describes it (no tensor byte read)."""

    module: str  # canonical name
    component: str
    block: Optional[str]
    path: str  # the module path within its component
    kind: str  # linear | conv
    rank: int
    dtype: str
    role: Optional[str]  # spelled by the keys: a peft/diffusers role slot, or expert
    experts: Optional[int]
    dora: bool
    tensors: dict[str, str]  # TensorKeys fields
    scaling: Optional[tuple]  # (alpha, scale, rslora, alpha dtype); None: read the alpha tensor
    alpha: Optional[TensorInfo]


@dataclass
class ReadResult:
    layout: str
    entries: list[ModuleEntry]
    branches: list[Branch] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)  # keys no grammar or map knows
    lycoris: dict[str, int] = field(default_factory=dict)  # algorithm -> tensor count
    doubled_prefix: bool = False
    scaling_source: str = "default"  # kohya-alpha | network-alpha | lora_adapter_metadata | peft-config | default
    warnings: list[str] = field(default_factory=list)


def read_layout(st: SafetensorsFile, arch: ArchMap, *, peft_config: Optional[dict] = None) -> ReadResult:
    """Both stages: the header's branches, then their alpha values, as ``ModuleEntry`` objects."""
    result = map_layout(st, arch, peft_config=peft_config)
    result.entries = [_entry(st, b) for b in result.branches]
    return result


def map_layout(st: SafetensorsFile, arch: ArchMap, *, peft_config: Optional[dict] = None) -> ReadResult:
    """The first stage: ``branches`` filled from the header, ``entries`` left empty."""
    parsed: list[K.ParsedKey] = []
    unknown: list[str] = []
    for name in st.tensors:
        p = parse_key(name)
        (parsed.append(p) if p else unknown.append(name))
    lycoris = Counter(p.lycoris for p in parsed if p.family == "lycoris")
    groups_of = _groups()
    factor_families = Counter(p.family for p in parsed if p.family in groups_of)
    if not factor_families and not lycoris:
        raise LayoutError("no LoRA tensors found (unknown key layout)", path=str(st.path),
                          hint=f"first key: {clip(next(iter(st.tensors), '<none>'), 80)}")
    _refuse_mixed_layouts(st, factor_families, groups_of)
    layout = factor_families.most_common(1)[0][0] if factor_families else "lycoris"
    if peft_config is not None:
        layout = "peft"
    result = ReadResult(layout, [], unmapped=unknown, lycoris=dict(lycoris))
    result.doubled_prefix = any(p.doubled_prefix for p in parsed)

    groups: dict[tuple, dict[str, K.ParsedKey]] = {}
    for p in parsed:
        if p.family == "lycoris":
            continue
        slot = groups.setdefault((p.component, p.path, p.qualifier), {})
        if p.part in slot:  # e.g. unet.X and unet.unet.X, or lora_A and lora.down, for one module
            raise _ambiguous(st, slot[p.part].key, p.key)
        slot[p.part] = p

    scaler = _Scaler(st, layout, peft_config)
    result.scaling_source = scaler.source
    lycoris_modules = {(p.component, p.path) for p in parsed if p.family == "lycoris"}
    for (component, path, qualifier), parts in groups.items():
        if set(parts) <= {K.ALPHA, K.DORA_SCALE} and (component, path) in lycoris_modules:
            continue  # the alpha of a LyCORIS module: reported with its algorithm, not as unmapped
        if K.DORA_SCALE in parts:
            result.warnings.append("kohya/LyCORIS dora_scale present: kept within kohya, not converted to "
                                   "diffusers/peft (a different DoRA parametrisation)")
        branch = _branch(st, arch, component, path, qualifier, parts, scaler)
        if branch is None:
            result.unmapped.extend(p.key for p in parts.values())
        else:
            result.branches.append(branch)
    _refuse_duplicate_branches(st, result.branches)
    return result


def _refuse_mixed_layouts(st: SafetensorsFile, families: Counter, group_of: dict[str, str]) -> None:
    """Key families that loaders treat as one layout may mix; a file mixing two groups is read
    differently by each loader (diffusers picks one converter for the whole file, ComfyUI maps both)."""
    groups = sorted({group_of[f] for f in families})
    if len(groups) > 1:
        counts = ", ".join(f"{g} ({sum(n for f, n in families.items() if group_of[f] == g)} keys)"
                           for g in groups)
        raise LayoutError(f"the file mixes key layouts: {counts}; loaders disagree on which to read",
                          path=str(st.path), hint="rebuild the file from one layout")


def _refuse_duplicate_branches(st: SafetensorsFile, branches: list[Branch]) -> None:
    """Two spellings of one module's branch (kohya and diffusers names, say) are an ambiguity."""
    by_module: dict[str, list[Branch]] = {}
    for branch in branches:
        by_module.setdefault(branch.module, []).append(branch)
    for found in by_module.values():
        roles = [b.role for b in found]
        if len(found) > 1 and (None in roles or len(set(roles)) != len(roles)):
            raise _ambiguous(st, found[0].tensors["down"], found[1].tensors["down"])


def _ambiguous(st: SafetensorsFile, first: str, second: str) -> LayoutError:
    return LayoutError(f"keys '{clip(first, 100)}' and '{clip(second, 100)}' name the same LoRA branch; "
                       "refusing to guess which one loaders apply", path=str(st.path),
                       hint="remove one of the two spellings")


def _branch(st, arch, component, path, qualifier, parts, scaler) -> Optional[Branch]:
    expert = K.EXPERT_DOWN in parts
    down_key = parts.get(K.EXPERT_DOWN if expert else K.DOWN)
    up_key = parts.get(K.EXPERT_UP if expert else K.UP)
    if down_key is None and up_key is None:
        if set(parts) <= {K.ALPHA, K.DORA_SCALE}:
            return None  # an alpha whose factors are LyCORIS tensors, reported elsewhere
        raise LayoutError(f"'{clip(path)}' has {sorted(parts)} but no LoRA factors", path=str(st.path))
    if down_key is None or up_key is None:
        have, missing = ("up", "down") if down_key is None else ("down", "up")
        raise LayoutError(f"'{clip((down_key or up_key).key)}': {have} factor without its {missing} partner",
                          path=str(st.path))
    down, up = st.tensors[down_key.key], st.tensors[up_key.key]
    rank = _check_pair(st, down, up, expert)
    canonical = _canonical(arch, component, path, down, up, expert, parts)
    if canonical is None:
        return None
    spec = arch.get(canonical)
    if expert and K.ROUTER_W not in parts:
        raise LayoutError(f"'{clip(canonical)}': expert factors without their router tensors", path=str(st.path))
    alpha_key = parts.get(K.ALPHA)
    scaling = scaler.check(spec.component, spec.path, rank, canonical, alpha_key)
    role = qualifier if qualifier in ("content", "style") else None
    return Branch(
        module=canonical, component=spec.component, block=spec.block, path=spec.path,
        kind="conv" if len(down.shape) == 4 else "linear", rank=rank, dtype=down.dtype,
        role="expert" if expert else role, experts=down.shape[0] if expert else None,
        dora=K.MAGNITUDE in parts or K.DORA_SCALE in parts or scaler.use_dora(spec.component),
        tensors=_tensor_keys(down.name, up.name, parts), scaling=scaling,
        alpha=None if scaling is not None else st.tensors[alpha_key.key])


def _entry(st: SafetensorsFile, b: Branch) -> ModuleEntry:
    """The second stage for one branch: its alpha value read (when stored), then validated."""
    if b.scaling is not None:
        alpha, scale, rslora, alpha_dtype = b.scaling
    else:
        alpha = decode_scalar(b.alpha.dtype, st.read(b.alpha.name))  # dtype and size checked in _branch
        scale, rslora, alpha_dtype = alpha / b.rank, False, b.alpha.dtype
    try:
        return ModuleEntry(
            module=b.module, component=b.component, block=b.block, kind=b.kind, rank=b.rank, alpha=alpha,
            scale=scale, rslora=rslora, alpha_dtype=alpha_dtype, dtype=b.dtype, role=b.role,
            role_source="declared" if b.role else None, experts=b.experts, dora=b.dora, tensors=b.tensors)
    except ValidationError as exc:  # a combination the checks above did not foresee: still the file's fault
        raise LayoutError(f"'{clip(b.path)}': {clip(str(exc.errors()[0].get('msg')), 200)}",
                          path=str(st.path)) from None


def _tensor_keys(down: str, up: str, parts: dict[str, K.ParsedKey]) -> dict[str, str]:
    # A plain dict: ModuleEntry validates it into TensorKeys in one pass (no second __init__).
    keys = {"down": down, "up": up}
    for field_name, part in _OPTIONAL_PARTS:
        if part in parts:
            keys.setdefault(field_name, parts[part].key)
    return keys


# TensorKeys field <- key part; magnitude is peft's vector, else kohya's dora_scale.
_OPTIONAL_PARTS = (("alpha", K.ALPHA), ("magnitude", K.MAGNITUDE), ("magnitude", K.DORA_SCALE),
                   ("router_weight", K.ROUTER_W), ("router_bias", K.ROUTER_B))


def _check_pair(st, down: TensorInfo, up: TensorInfo, expert: bool) -> int:
    if expert:
        # A: [n, r, in]; B: [out, r] shared, or [n, out, r] per expert.
        if len(down.shape) != 3 or len(up.shape) not in (2, 3):
            raise LayoutError(f"'{clip(down.name)}': expert factors must be [n, r, in] and [out, r] or [n, out, r]",
                              path=str(st.path))
        if down.shape[0] == 0:
            raise LayoutError(f"'{clip(down.name)}': zero experts", path=str(st.path))
        rank = down.shape[1]
        up_rank = up.shape[-1]
        if len(up.shape) == 3 and up.shape[0] != down.shape[0]:
            raise LayoutError(f"'{clip(up.name)}': {up.shape[0]} up experts for {down.shape[0]} down experts",
                              path=str(st.path))
    else:
        if len(down.shape) not in (2, 4) or len(up.shape) != len(down.shape):
            raise LayoutError(f"'{clip(down.name)}': LoRA factors must both be 2-D (linear) or 4-D (conv), "
                              f"got {list(down.shape)} and {list(up.shape)}", path=str(st.path))
        rank, up_rank = down.shape[0], up.shape[1]
        if len(up.shape) == 4 and tuple(up.shape[2:]) != (1, 1):
            raise LayoutError(f"'{clip(up.name)}': conv up factor must have a 1x1 kernel", path=str(st.path))
    if rank != up_rank:
        raise LayoutError(f"'{clip(down.name)}': LoRA rank mismatch, down has rank {rank} but up has rank {up_rank}",
                          path=str(st.path))
    if rank == 0:
        raise LayoutError(f"'{clip(down.name)}': rank 0 LoRA factor", path=str(st.path))
    # A rank above min(in, out) adds nothing a smaller one could not hold; it is also how a tiny
    # file could make a factored computation ask for gigabytes (an r x r product).
    fan_in = math.prod(down.shape[2:]) if expert else math.prod(down.shape[1:])
    fan_out = up.shape[-2] if expert else up.shape[0]
    if rank > min(fan_in, fan_out):
        raise LayoutError(f"'{clip(down.name)}': rank {rank} exceeds min(in, out) = {min(fan_in, fan_out)}",
                          path=str(st.path))
    return rank


def _canonical(arch: ArchMap, component, path, down, up, expert, parts) -> Optional[str]:
    any_key = next(iter(parts.values()))
    if any_key.family == "kohya":
        # The flat name is the key up to its first dot: a kohya prefix and module name hold none.
        return arch.kohya_names().get(any_key.key.partition(".")[0])
    candidates = [component] if component else list(arch.components)
    in_features = down.shape[-1] if expert else down.shape[1]
    out_features = up.shape[-2] if expert and len(up.shape) == 3 else up.shape[0]
    matches = []
    for comp in candidates:
        spec = arch.get(f"{comp}.{path}")
        if spec is not None:
            matches.append(spec)
    if len(matches) > 1:  # same path in both text encoders: the widths tell them apart
        exact = [s for s in matches if (s.in_features, s.out_features) == (in_features, out_features)]
        matches = exact or matches[:1]
    return matches[0].name if matches else None


class _Scaler:
    """Knows where this file keeps its alphas, and applies that layout's rule."""

    def __init__(self, st: SafetensorsFile, layout: str, peft_config: Optional[dict]):
        self.st = st
        self.per_component: dict[str, PeftScaling] = {}
        self.single: Optional[PeftScaling] = None
        if peft_config is not None:
            try:
                self.single = PeftScaling.from_config(peft_config, where="adapter_config.json")
            except LayoutError as exc:
                exc.path = str(st.path.parent)
                raise
            self.source = "peft-config"
        elif layout == "kohya":
            self.source = "kohya-alpha"
        elif DIFFUSERS_METADATA_KEY in st.metadata:
            try:
                raw = safe_json.loads(st.metadata[DIFFUSERS_METADATA_KEY])
            except safe_json.JsonRejected as exc:
                raise LayoutError(f"{DIFFUSERS_METADATA_KEY} is not valid JSON ({exc})", path=str(st.path)) from None
            if not isinstance(raw, dict):
                raise LayoutError(f"{DIFFUSERS_METADATA_KEY} is not a JSON object", path=str(st.path))
            try:
                self.per_component = {c: PeftScaling.from_config(cfg, where=f"{DIFFUSERS_METADATA_KEY} {clip(c, 40)}")
                                      for c, cfg in split_diffusers_metadata(raw).items()}
            except LayoutError as exc:
                exc.path = str(st.path)
                raise
            self.source = DIFFUSERS_METADATA_KEY
        else:
            self.source = "network-alpha" if any(k.endswith(".alpha") for k in st.tensors) else "default"

    def _config(self, component: str) -> Optional[PeftScaling]:
        return self.single or self.per_component.get(component)

    def use_dora(self, component: str) -> bool:
        cfg = self._config(component)
        return bool(cfg and cfg.use_dora)

    def check(self, component: str, path: str, rank: int, module: str, alpha_key) -> Optional[tuple]:
        """(alpha, scale, rslora, alpha dtype) when the header settles them; None when the value
        is in the alpha tensor, whose shape and dtype are checked here."""
        cfg = self._config(component)
        if cfg is not None:
            r_declared, alpha, scale = cfg.scale(path)
            if r_declared != rank:
                raise LayoutError(f"'{clip(module)}': config declares rank {r_declared} but tensors have rank {rank}",
                                  path=str(self.st.path))
            return alpha, scale, cfg.use_rslora, None
        if alpha_key is None:
            return float(rank), 1.0, False, None
        info = self.st.tensors[alpha_key.key]
        if info.numel != 1:
            raise LayoutError(f"'{clip(info.name)}': alpha must hold one value, has shape {list(info.shape)}",
                              path=str(self.st.path))
        if info.dtype not in SCALAR_DTYPES:
            raise LayoutError(f"'{clip(info.name)}': alpha stored as unsupported dtype {info.dtype}",
                              path=str(self.st.path))
        return None
