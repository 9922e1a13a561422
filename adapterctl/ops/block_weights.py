"""Per-block weights, as users write them: an LBW vector or named blocks.

    0,0,0,0,0,0,1,1,0,0,0,0             12 or 20 LBW values for SDXL (the lists in the architecture data)
    b-lora                              an LBW preset name from the architecture data
    up_blocks.0.attentions.1=0.8        selector=weight, comma-separated; any selector 'split' accepts

A module the spec does not cover keeps weight 1. A later named selector wins over an earlier one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from adapterctl.arch import ArchMap, lbw_list, lbw_presets
from adapterctl.errors import UsageError
from adapterctl.textsafe import clip


@dataclass(frozen=True)
class BlockWeights:
    """weight(module) for one parsed spec; 1.0 where the spec says nothing."""

    spec: str
    lbw: Optional[tuple[float, ...]] = None
    named: dict[str, float] = field(default_factory=dict)

    def weight(self, arch: ArchMap, module: str) -> float:
        if self.lbw is not None:
            slot = arch.lbw_index(module, len(self.lbw))
            return 1.0 if slot is None else self.lbw[slot]
        return self.named.get(module, 1.0)


def parse_block_weights(arch: ArchMap, spec: str, *, flag: str = "--block-weights") -> BlockWeights:
    text = spec.strip()
    presets = lbw_presets(arch.name)
    if text in presets:
        return _lbw(arch, spec, presets[text], flag)
    if "=" not in text:
        values = [_number(v, spec, flag) for v in text.split(",")]
        return _lbw(arch, spec, values, flag)
    named: dict[str, float] = {}
    for item in (p for p in text.split(",") if p.strip()):
        selector, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"{flag} '{clip(spec, 80)}': '{clip(item, 60)}' is not SELECTOR=WEIGHT",
                             hint="mix no LBW values with named blocks")
        modules = arch.resolve_selector(selector.strip())
        if not modules:
            raise UsageError(f"{flag}: '{clip(selector.strip(), 80)}' matches no block or module of "
                             f"{arch.name}", hint="see block ids with: adapterctl inspect FILE")
        weight = _number(value, spec, flag)
        named.update({m: weight for m in modules})
    return BlockWeights(spec=spec, named=named)


def _lbw(arch: ArchMap, spec: str, values: list[float], flag: str) -> BlockWeights:
    lengths = _lbw_lengths(arch)
    if len(values) not in lengths:
        raise UsageError(f"{flag} has {len(values)} values; {arch.name} LBW lists have "
                         f"{' or '.join(str(n) for n in lengths)}",
                         hint=f"e.g. {','.join(['0'] * 6 + ['1', '1'] + ['0'] * 4)}, a preset "
                              f"({', '.join(sorted(lbw_presets(arch.name)))}), or BLOCK=WEIGHT")
    lbw_list(len(values), arch.name)  # the list exists (raises a UsageError otherwise)
    return BlockWeights(spec=spec, lbw=tuple(values))


def _lbw_lengths(arch: ArchMap) -> list[int]:
    found = []
    for n in range(1, 64):
        try:
            lbw_list(n, arch.name)
        except UsageError:
            continue
        found.append(n)
    return found


def _number(text: str, spec: str, flag: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise UsageError(f"{flag} '{clip(spec, 80)}': '{clip(text.strip(), 40)}' is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag} '{clip(spec, 80)}': weights must be finite")
    return value
