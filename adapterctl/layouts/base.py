"""One layout: how its tensor keys read, and (for the ones we write) how to name and describe a branch.

Each layout is one module (kohya.py, diffusers.py with its old variants, peft.py, lycoris.py)
and one entry in ``registry.LAYOUTS``. The writable layouts, ``convert --to``'s choices and the
layout table in the docs all derive from that list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Optional

from adapterctl.errors import UnsupportedConversion

if TYPE_CHECKING:
    from adapterctl.arch import ArchMap
    from adapterctl.format.manifest import ModuleEntry
    from adapterctl.layouts.keys import ParsedKey


class Layout:
    name: ClassVar[str]  # the manifest's 'layout' value (and the key family it reads)
    summary: ClassVar[str]  # one line for the docs
    group: ClassVar[str]  # layouts that loaders treat as one (a file may not mix groups)
    writable: ClassVar[bool] = False
    directory: ClassVar[bool] = False  # written as a directory (peft), not one file
    alpha_tensors: ClassVar[bool] = False  # each branch's scale is a stored alpha tensor (kohya)
    example: ClassVar[str] = ""  # one down-factor key, for the docs

    def parse(self, key: str) -> Optional["ParsedKey"]:
        """What ``key`` is in this layout's grammar, or None."""
        return None

    def factor_names(self, arch: "ArchMap", entry: "ModuleEntry", qualifier: Optional[str]) -> dict[str, str]:
        """Tensor names for one branch: 'down', 'up', maybe 'alpha' and 'magnitude'."""
        raise UnsupportedConversion(f"adapterctl reads the {self.name} layout but does not write it",
                                    hint="convert to kohya, diffusers or peft")

    def header_metadata(self, entries: list["ModuleEntry"], arch: "ArchMap") -> dict[str, str]:
        """Header metadata a loader needs to apply the branches' scales (beyond alpha tensors)."""
        return {}
