"""The output tensors of a derived adapter: names in the target layout, and for each one where
its bytes come from (a copy from one of the inputs, a new alpha, or a computed factor).

Copies are ordered by input and by position, so that each input is read once, front to back,
and its hash for provenance comes from the same pass (io/writer.py). Computed branches follow,
their down and up written back to back so that one computation serves both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Optional

from adapterctl.arch import ArchMap
from adapterctl.format.manifest import ModuleEntry, TensorKeys
from adapterctl.format.roles import TAGGABLE_ROLES
from adapterctl.io.safetensors_file import SafetensorsFile
from adapterctl.io.writer import OutTensor
from adapterctl.layouts import write as W
from adapterctl.layouts.registry import get, parse_key
from adapterctl.model.origins import BranchKey, Computed, FromInput, Origin, key_of

_COPIED_PARTS = ("down", "up", "magnitude", "router_weight", "router_bias")


@dataclass(frozen=True)
class InputFile:
    """What planning needs of one input: its file, the layout its keys are in, and the alpha
    each branch had when read (an unchanged alpha tensor is copied, a changed one rewritten)."""

    st: SafetensorsFile
    layout: str
    alphas: Mapping[str, float]  # down key -> alpha as read


def plan_tensors(arch: ArchMap, target: str, entries: list[ModuleEntry], origins: Mapping[BranchKey, Origin],
                 inputs: list[InputFile], *, rename: bool) -> tuple[list[OutTensor], list[ModuleEntry]]:
    """``rename``: give every copied branch the target layout's standard names (an explicit convert)."""
    per_module = Counter(e.module for e in entries)
    copies: list[tuple[int, float, OutTensor]] = []
    computed: list[OutTensor] = []
    out_entries: list[ModuleEntry] = []
    for entry in entries:
        qualifier = entry.role if per_module[entry.module] > 1 else None
        origin = origins.get(key_of(entry), FromInput(0))
        if isinstance(origin, Computed):
            tensors, new_entry = _computed(arch, target, entry, origin, qualifier)
            computed.extend(tensors)
        else:
            tensors, new_entry = _copied(arch, target, entry, inputs[origin.index], qualifier, rename=rename)
            copies.extend((origin.index, pos, t) for pos, t in tensors)
        out_entries.append(new_entry)
    copies.sort(key=lambda item: item[:2])
    return [t for _, _, t in copies] + computed, out_entries


def _copied(arch, target, entry: ModuleEntry, src: InputFile, qualifier, *, rename: bool):
    st, old = src.st, entry.tensors
    renaming = rename or target != src.layout or _qualified(old.down)
    names = W.factor_names(arch, entry, target, qualifier=qualifier) if renaming else \
        {k: v for k, v in old.model_dump().items() if v}
    out: list[tuple[float, OutTensor]] = []
    keys: dict[str, Optional[str]] = {}
    for part in _COPIED_PARTS:
        key = getattr(old, part)
        if key is not None:
            keys[part] = names.get(part, key)
            out.append((st.tensors[key].start, OutTensor.copy(st, key, keys[part])))
    alpha_dtype = entry.alpha_dtype
    changed = src.alphas.get(old.down) != entry.alpha
    if old.alpha is not None and not renaming:
        keys["alpha"] = old.alpha  # kohya alphas, or an old diffusers file's network alphas, stay put
    elif get(target).alpha_tensors and (renaming or changed):
        keys["alpha"] = names["alpha"] if renaming else old.down.removesuffix(".lora_down.weight") + ".alpha"
    if "alpha" in keys:
        if old.alpha is not None and not changed and (not renaming or get(src.layout).alpha_tensors):
            out.append((st.tensors[old.alpha].start, OutTensor.copy(st, old.alpha, keys["alpha"])))
        else:  # a new or changed alpha, in the dtype recorded for it (widened only to stay exact)
            alpha_dtype, raw = W.kohya_alpha(entry)
            out.append((st.tensors[old.down].start + 0.5, OutTensor.from_bytes(keys["alpha"], alpha_dtype, (), raw)))
    return out, entry.model_copy(update={"tensors": TensorKeys(**keys), "alpha_dtype": alpha_dtype})


def _computed(arch, target, entry: ModuleEntry, origin: Computed, qualifier):
    if get(target).writable:
        names = W.factor_names(arch, entry, target, qualifier=qualifier)
    else:  # a read-only layout (prune of an old diffusers file): the branch keeps its own names
        names = {"down": entry.tensors.down, "up": entry.tensors.up}
    pending = _Pair(origin, entry)
    down_shape = (entry.rank,) + origin.down_tail
    up_shape = (origin.out_features, entry.rank) + origin.up_tail
    tensors = [OutTensor.lazy(names["down"], entry.dtype, down_shape, lambda: pending.take("down")),
               OutTensor.lazy(names["up"], entry.dtype, up_shape, lambda: pending.take("up"))]
    keys = {"down": names["down"], "up": names["up"]}
    alpha_dtype = None
    if get(target).alpha_tensors:
        alpha_dtype, raw = W.kohya_alpha(entry)
        keys["alpha"] = names["alpha"]
        tensors.append(OutTensor.from_bytes(names["alpha"], alpha_dtype, (), raw))
    return tensors, entry.model_copy(update={"tensors": TensorKeys(**keys), "alpha_dtype": alpha_dtype})


class _Pair:
    """Computes a branch once for its two tensors, and drops the result when both are written."""

    def __init__(self, origin: Computed, entry: ModuleEntry):
        self.origin, self.entry, self.value = origin, entry, None

    def take(self, part: str) -> bytes:
        if self.value is None:
            self.value = self.origin.factor_bytes(self.entry)
        _, data = self.value.pop(part)
        if not self.value:
            self.value = None
        return data


def _qualified(key: str) -> bool:
    """A role-qualified key (two roles on one module), which a rename can make standard again."""
    parsed = parse_key(key)
    return parsed is not None and parsed.qualifier in TAGGABLE_ROLES
