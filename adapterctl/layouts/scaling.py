"""How each layout turns stored numbers into the effective scale of delta_W = scale * up @ down.

- kohya: scale = alpha / rank; a missing alpha means alpha = rank; alpha may be any numeric dtype.
- peft (and diffusers' ``lora_adapter_metadata``, which holds LoraConfig fields): per module,
  r and lora_alpha come from rank_pattern / alpha_pattern when a pattern matches, else from the
  defaults; scale = alpha / r, or alpha / sqrt(r) with use_rslora.
- diffusers without metadata or alpha tensors: scale = 1 (what diffusers assumes).
"""

from __future__ import annotations

import functools
import math
import re
import struct
from dataclasses import dataclass, field

from adapterctl.errors import LayoutError

_SCALAR_FORMATS = {"F16": "<e", "F32": "<f", "F64": "<d", "I64": "<q", "I32": "<i", "I16": "<h",
                   "I8": "<b", "U8": "<B"}


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
    """The scaling-relevant subset of a peft LoraConfig."""

    r: int = 8
    lora_alpha: float = 8.0
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    use_dora: bool = False

    @classmethod
    def from_config(cls, config: dict, *, where: str) -> "PeftScaling":
        try:
            return cls(
                r=int(config.get("r", 8)),
                lora_alpha=float(config.get("lora_alpha", 8)),
                rank_pattern={str(k): int(v) for k, v in (config.get("rank_pattern") or {}).items()},
                alpha_pattern={str(k): float(v) for k, v in (config.get("alpha_pattern") or {}).items()},
                use_rslora=bool(config.get("use_rslora", False)),
                use_dora=bool(config.get("use_dora", False)),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise LayoutError(f"{where}: invalid LoRA config ({exc})") from None

    def rank_alpha(self, module_path: str) -> tuple[int, float]:
        r = self.rank_pattern.get(_match_pattern(self.rank_pattern, module_path), self.r)
        alpha = self.alpha_pattern.get(_match_pattern(self.alpha_pattern, module_path), self.lora_alpha)
        return int(r), float(alpha)

    def scale(self, module_path: str) -> tuple[int, float, float]:
        r, alpha = self.rank_alpha(module_path)
        return r, alpha, (alpha / math.sqrt(r) if self.use_rslora else alpha / r)


def _match_pattern(patterns: dict, module_path: str) -> str | None:
    # Same rule as peft: the first pattern that matches a dotted suffix of the module path wins.
    for pattern in patterns:
        if _pattern_regex(pattern).match(module_path):
            return pattern
    return None


@functools.lru_cache(maxsize=8192)
def _pattern_regex(pattern: str) -> "re.Pattern[str]":
    # Compiled once per pattern. Files we write carry one exact-path pattern per exceptional module
    # (hundreds), more than re's own 512-entry cache holds, so relying on it recompiled every
    # pattern for every module: O(modules x patterns) compiles, ~30 s for a tiny SDXL LoRA.
    # 8192 covers both pattern dicts of the largest map we ship.
    try:
        return re.compile(rf"(.*\.)?({pattern})$")
    except re.error as exc:
        raise LayoutError(f"rank/alpha pattern '{pattern[:80]}' is not a valid regular expression ({exc})") from None


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
