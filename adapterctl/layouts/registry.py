"""Every layout adapterctl reads, in one plain list (order = the order keys are tried).

Adding a layout is one module (see base.py) and one line here; the writable layouts,
``convert --to``'s choices and the docs' layout table derive from this list.
"""

from __future__ import annotations

import functools
from typing import Optional

from adapterctl.errors import UsageError
from adapterctl.layouts.base import Layout
from adapterctl.layouts.diffusers import Diffusers, DiffusersLegacyAttn, DiffusersOld
from adapterctl.layouts.keys import ParsedKey
from adapterctl.layouts.kohya import Kohya
from adapterctl.layouts.lycoris import Lycoris
from adapterctl.layouts.peft import Peft

# Kohya's prefixes first (plain LoRA, then LyCORIS suffixes); the processor-era pattern before
# the suffix grammar it would otherwise resemble; peft's prefix before plain diffusers.
LAYOUTS: list[Layout] = [Kohya(), Lycoris(), DiffusersLegacyAttn(), Peft(), DiffusersOld(), Diffusers()]


def get(name: str) -> Layout:
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    raise UsageError(f"unknown layout '{name}'", hint=f"known: {', '.join(l.name for l in LAYOUTS)}")


def writable() -> tuple[str, ...]:
    """The layouts adapterctl writes, kohya first (the most widely loaded)."""
    return tuple(sorted((l.name for l in LAYOUTS if l.writable), key=lambda n: (n != "kohya", n)))


def writer(name: str) -> Layout:
    for layout in LAYOUTS:
        if layout.name == name and layout.writable:
            return layout
    raise UsageError(f"unknown target layout '{name}'", hint=f"choose one of: {', '.join(writable())}")


CACHED_KEY_CHARS = 256  # real keys are under 150 characters; longer ones are parsed each time
CACHED_KEYS = 1 << 14  # the keys of several full SDXL adapters; with the length cap, a few MB at most


def parse_key(key: str) -> Optional[ParsedKey]:
    """Return what a tensor key is, or None when no layout's grammar knows it."""
    # Adapters for one base model share their key names, so a library read (`ls` opens every
    # file) parses each name once. The cache holds only short keys: bounded whatever files claim.
    if len(key) <= CACHED_KEY_CHARS:
        return _parse_cached(key)
    return _parse(key)


@functools.lru_cache(maxsize=CACHED_KEYS)
def _parse_cached(key: str) -> Optional[ParsedKey]:
    return _parse(key)  # ParsedKey is frozen: one instance can serve every file


def _parse(key: str) -> Optional[ParsedKey]:
    for layout in LAYOUTS:
        parsed = layout.parse(key)
        if parsed is not None:
            return parsed
    return None
