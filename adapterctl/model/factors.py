"""Reading one branch's factors as numbers, for the ops that compute (prune, merge, reports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adapterctl.errors import InvalidFile, UnsupportedConversion
from adapterctl.format.manifest import ModuleEntry
from adapterctl.io.arrays import read_array
from adapterctl.io.safetensors_file import SafetensorsFile
from adapterctl.lowrank import Factored
from adapterctl.textsafe import clip


def read_branch(st: SafetensorsFile, entry: ModuleEntry, *, path: Path) -> Factored:
    """``entry``'s effective update, factored, in float64. NaN/Inf in a factor is the file's
    fault (exit 3), never a NaN that travels on into an output."""
    if entry.role == "expert":
        raise UnsupportedConversion(f"'{clip(entry.module, 120)}' holds experts, not one plain branch",
                                    hint="collapse them first: adapterctl merge FILE --method experts --mix ...")
    up, down = read_array(st, entry.tensors.up), read_array(st, entry.tensors.down)
    for name, arr in ((entry.tensors.up, up), (entry.tensors.down, down)):
        if not np.isfinite(arr).all():
            raise InvalidFile(f"tensor '{clip(name, 120)}' holds NaN or Inf values", path=str(path),
                              hint="the file is damaged; 'adapterctl validate' lists every such tensor")
    return Factored.of(up, down, entry.scale)


def read_experts(st: SafetensorsFile, entry: ModuleEntry, *, path: Path) -> dict[str, np.ndarray]:
    """An expert branch's arrays: down [n, r, in], up [out, r] or [n, out, r], router [n, d] and [n]."""
    arrays = {}
    for part in ("down", "up", "router_weight", "router_bias"):
        name = getattr(entry.tensors, part)
        if name is None:
            continue
        arr = read_array(st, name).astype(np.float64)
        if not np.isfinite(arr).all():
            raise InvalidFile(f"tensor '{clip(name, 120)}' holds NaN or Inf values", path=str(path),
                              hint="the file is damaged; 'adapterctl validate' lists every such tensor")
        arrays[part] = arr
    return arrays
