"""How each layout turns stored numbers into the effective scale of delta_W = scale * up @ down.

- kohya: scale = alpha / rank; a missing alpha means alpha = rank; alpha may be any numeric dtype.
- peft (and diffusers' ``lora_adapter_metadata``, which holds LoraConfig fields): per module,
  r and lora_alpha come from rank_pattern / alpha_pattern when a pattern matches, else from the
  defaults; scale = alpha / r, or alpha / sqrt(r) with use_rslora.
- diffusers without metadata or alpha tensors: scale = 1 (what diffusers assumes).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from adapterctl.errors import LayoutError
from adapterctl.layouts.patterns import PatternTable

_SCALAR_FORMATS = {"F16": "<e", "F32": "<f", "F64": "<d", "I64": "<q", "I32": "<i", "I16": "<h",
                   "I8": "<b", "U8": "<B"}
SCALAR_DTYPES = frozenset(_SCALAR_FORMATS) | {"BF16"}  # what decode_scalar reads: checkable from the header


def decode_scalar(dtype: str, raw: bytes) -> float:
    """Read a one-element alpha tensor of any numeric dtype without numpy."""
    if dtype == "BF16":
        return struct.unpack("<f", b"\x00\x00" + raw[:2])[0]
    fmt = _SCALAR_FORMATS.get(dtype)
    if fmt is None:
        raise LayoutError(f"alpha stored as unsupported dtype {dtype}")
    return float(struct.unpack(fmt, raw[: struct.calcsize(fmt)])[0])


def encode_scalar(dtype: str, value: float) -> bytes:
    """The inverse of ``decode_scalar``; bf16 rounds to nearest even, integer dtypes truncate."""
    if dtype == "BF16":
        bits = struct.unpack("<I", struct.pack("<f", value))[0]
        bits += 0x7FFF + ((bits >> 16) & 1)
        return struct.pack("<H", (bits >> 16) & 0xFFFF)
    fmt = _SCALAR_FORMATS[dtype]
    return struct.pack(fmt, value if dtype.startswith("F") else int(value))


@dataclass
class PeftScaling:
    """The scaling-relevant subset of a peft LoraConfig, checked field by field.

    Every value comes from an untrusted file, so types are checked rather than coerced: ``bool("false")``
    is True, ``int(8.7)`` is 8 and ``float("nan")`` is a number, and each would silently change
    the scale that a loader applies.
    """

    r: int = 8
    lora_alpha: float = 8.0
    rank_pattern: PatternTable = field(default_factory=lambda: PatternTable({}, where=""))
    alpha_pattern: PatternTable = field(default_factory=lambda: PatternTable({}, where=""))
    use_rslora: bool = False
    use_dora: bool = False

    def __post_init__(self):
        # Plain dicts are accepted for convenience (API and tests); they get the same table.
        for name in ("rank_pattern", "alpha_pattern"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, PatternTable(value, where=name))

    @classmethod
    def from_config(cls, config: dict, *, where: str) -> "PeftScaling":
        if not isinstance(config, dict):
            raise LayoutError(f"{where}: LoRA config is not a JSON object")
        ranks = _mapping(config.get("rank_pattern"), f"{where}: rank_pattern")
        alphas = _mapping(config.get("alpha_pattern"), f"{where}: alpha_pattern")
        return cls(
            r=_rank(config.get("r", 8), f"{where}: r"),
            lora_alpha=_alpha(config.get("lora_alpha", 8), f"{where}: lora_alpha"),
            rank_pattern=PatternTable({k: _rank(v, f"{where}: rank_pattern value") for k, v in ranks.items()},
                                      where=f"{where}: rank_pattern"),
            alpha_pattern=PatternTable({k: _alpha(v, f"{where}: alpha_pattern value") for k, v in alphas.items()},
                                       where=f"{where}: alpha_pattern"),
            use_rslora=_flag(config.get("use_rslora"), f"{where}: use_rslora"),
            use_dora=_flag(config.get("use_dora"), f"{where}: use_dora"),
        )

    def rank_alpha(self, module_path: str) -> tuple[int, float]:
        return self.rank_pattern.lookup(module_path, self.r), self.alpha_pattern.lookup(module_path, self.lora_alpha)

    def scale(self, module_path: str) -> tuple[int, float, float]:
        r, alpha = self.rank_alpha(module_path)
        return r, alpha, (alpha / math.sqrt(r) if self.use_rslora else alpha / r)


MAX_RANK = 1 << 20  # far above any real LoRA; the module's own min(in, out) is checked per branch


def _rank(value, where: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_RANK:
        raise LayoutError(f"{where} must be an integer from 1 to {MAX_RANK}, got {_show(value)}")
    return value


def _alpha(value, where: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or abs(value) > 1e30:
        raise LayoutError(f"{where} must be a finite number, got {_show(value)}")
    return float(value)


def _flag(value, where: str) -> bool:
    if value is None:
        return False
    if type(value) is not bool:
        raise LayoutError(f"{where} must be true or false, got {_show(value)}")
    return value


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LayoutError(f"{where} must be an object, got {_show(value)}")
    return value


def _show(value) -> str:
    from adapterctl.textsafe import clip

    return clip(repr(value), 40)


def split_diffusers_metadata(raw: dict) -> dict[str, dict]:
    """diffusers packs each component's LoraConfig as '<component>.<field>' keys."""
    per: dict[str, dict] = {}
    for key, value in raw.items():
        component, _, fieldname = key.partition(".")
        if fieldname:
            per.setdefault(component, {})[fieldname] = value
    return per


def compact_patterns(paths_to_rank_alpha: dict[str, tuple[int, float]]) -> dict:
    """Choose the most common (r, alpha) as defaults and list only the exceptions as patterns.

    Exact module paths are used as patterns; peft anchors them at a dotted boundary, so a path
    only ever matches itself.
    """
    if not paths_to_rank_alpha:
        return {"r": 1, "lora_alpha": 1.0, "rank_pattern": {}, "alpha_pattern": {}}
    counts: dict[tuple[int, float], int] = {}
    for pair in paths_to_rank_alpha.values():
        counts[pair] = counts.get(pair, 0) + 1
    (r0, a0), _ = max(counts.items(), key=lambda item: item[1])
    rank_pattern = {p: r for p, (r, _) in paths_to_rank_alpha.items() if r != r0}
    alpha_pattern = {p: a for p, (_, a) in paths_to_rank_alpha.items() if a != a0}
    return {"r": r0, "lora_alpha": a0, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern}
