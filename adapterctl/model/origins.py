"""Where the factors of an output branch come from: a byte copy from one input, or a computation.

A derived adapter lists its branches in its manifest; ``Adapter.origins`` maps a branch key
(module, role) to one of these. A branch without an entry is copied from the adapter's own
source, which is what every single-file op (tag, split, convert) produces.

A computed branch is a producer of ``Factored`` that the writer calls when it reaches the
branch, so one module is computed, written and freed at a time: peak memory is bounded by
the largest module, not the file. Its output rank is fixed when it is planned (the header is
written before any data), so a producer that yields fewer components is zero-padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Union

from adapterctl.format.manifest import ModuleEntry

if TYPE_CHECKING:  # numpy stays out of inspect/validate, which import this module
    from adapterctl.lowrank import Factored

BranchKey = tuple[str, Optional[str]]  # (module, role): unique within a manifest


def key_of(entry: ModuleEntry) -> BranchKey:
    return entry.module, entry.role


@dataclass(frozen=True)
class FromInput:
    """Copy the branch's tensors, byte for byte, from input ``index`` of the derived adapter."""

    index: int


@dataclass(frozen=True)
class Computed:
    """Factors computed on demand, shaped like the source's: ``out_features`` rows of up, and
    ``down_tail``/``up_tail`` after the rank axis ((in,) or (in, kh, kw); () or (1, 1))."""

    produce: Callable[[], "Factored"]
    out_features: int
    down_tail: tuple[int, ...]
    up_tail: tuple[int, ...] = ()

    def factor_bytes(self, entry: ModuleEntry) -> dict[str, tuple[tuple[int, ...], bytes]]:
        """{'down': (shape, bytes), 'up': (shape, bytes)} for ``entry``: its rank, scale and dtype."""
        import numpy as np

        from adapterctl.io.arrays import to_bytes

        f = self.produce()
        if f.rank > entry.rank:
            raise ValueError(f"{entry.module}: computed rank {f.rank} exceeds the planned {entry.rank}")
        f = f.with_scale(entry.scale)
        up, down = f.up, f.down
        if f.rank < entry.rank:  # fewer non-zero components than planned: zero-pad
            pad = entry.rank - f.rank
            up = np.concatenate([up, np.zeros((up.shape[0], pad))], axis=1)
            down = np.concatenate([down, np.zeros((pad, down.shape[1]))], axis=0)
        down_shape = (entry.rank,) + self.down_tail
        up_shape = (up.shape[0], entry.rank) + self.up_tail
        return {"down": (down_shape, to_bytes(down.reshape(down_shape), entry.dtype)),
                "up": (up_shape, to_bytes(up.reshape(up_shape), entry.dtype))}


Origin = Union[FromInput, Computed]
