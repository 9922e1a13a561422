"""peft's ``rank_pattern`` / ``alpha_pattern``, matched in linear time.

The patterns come from untrusted files (``lora_adapter_metadata`` in a safetensors header, or a
peft ``adapter_config.json``). peft matches them with Python's backtracking ``re``, so a 20 KB
file holding ``(.|.)*Z`` hangs any loader that does the same. adapterctl matches with RE2
(google-re2), whose time is linear in the input whatever the pattern, and refuses what RE2 cannot
express (lookaround, backreferences) instead of falling back to a backtracking engine.

Semantics are peft's: a pattern ``p`` matches a module path when ``(.*\\.)?(p)`` matches the
whole path (so a plain path matches itself and any dotted suffix-aligned occurrence), and the
*first* matching pattern in file order wins. To find the first match without trying every
pattern on every module, the patterns are grouped in chunks of about sqrt(n); one RE2 alternation
per chunk says whether any member matches, and only a matching chunk is searched member by member.
Each chunk and each member is compiled at most once, members only when first needed.
"""

from __future__ import annotations

import math
from typing import Generic, Optional, TypeVar

from adapterctl.errors import LayoutError

MAX_PATTERNS = 20_000  # per table; real files list at most one per module (~1,100 for SDXL)
MAX_PATTERN_CHARS = 1_024
_MIN_CHUNK = 32

V = TypeVar("V")


class PatternTable(Generic[V]):
    """An ordered pattern -> value table with peft's first-match rule."""

    def __init__(self, patterns: dict[str, V], *, where: str):
        self.where = where
        self.keys = list(patterns)
        self.values = [patterns[k] for k in self.keys]
        if len(self.keys) > MAX_PATTERNS:
            raise LayoutError(f"{where}: {len(self.keys)} rank/alpha patterns, more than the {MAX_PATTERNS} "
                              "adapterctl reads")
        for key in self.keys:
            if not key or len(key) > MAX_PATTERN_CHARS:
                raise LayoutError(f"{where}: a rank/alpha pattern is empty or longer than {MAX_PATTERN_CHARS} "
                                  "characters")
        self._single: dict[int, object] = {}
        self._chunks: list[tuple[int, int, object]] = []
        self._cache: dict[str, Optional[int]] = {}

    def lookup(self, module_path: str, default: V) -> V:
        index = self.first_match(module_path)
        return default if index is None else self.values[index]

    def first_match(self, module_path: str) -> Optional[int]:
        if not self.keys:
            return None
        if module_path not in self._cache:
            self._cache[module_path] = self._search(module_path)
        return self._cache[module_path]

    # -- matching ---------------------------------------------------------------------------
    def _search(self, path: str) -> Optional[int]:
        self._compile()
        for start, end, combined in self._chunks:
            if combined is not None and not combined.fullmatch(path):
                continue
            for i in range(start, end):
                if self._member(i).fullmatch(path):
                    return i
        return None

    def _member(self, i: int):
        # Compiled on first use: most files match few chunks, and one combined compile per chunk
        # is far cheaper than one compile per pattern.
        if i not in self._single:
            self._single[i] = _compile(_anchored(self.keys[i]), self.where, self.keys[i])
        return self._single[i]

    def _compile(self) -> None:
        if self._chunks:
            return
        size = max(_MIN_CHUNK, math.isqrt(len(self.keys)))
        for start in range(0, len(self.keys), size):
            end = min(start + size, len(self.keys))
            members = "|".join(f"(?:{k})" for k in self.keys[start:end])
            try:
                combined = _compile(_anchored(members), self.where, None)
            except LayoutError:
                # An invalid member, or too large for RE2's memory budget: compiling the members
                # one by one either names the bad pattern or lets the chunk be searched slowly.
                for i in range(start, end):
                    self._member(i)
                combined = None
            self._chunks.append((start, end, combined))


def _anchored(pattern: str) -> str:
    return rf"(?:.*\.)?(?:{pattern})"


def _options():
    import re2

    options = re2.Options()
    options.never_capture = True  # groups only group; duplicate names across patterns are harmless
    options.log_errors = False  # RE2 would print parse errors on stderr itself
    return options


def _compile(pattern: str, where: str, original: Optional[str]):
    import re2

    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        if original is None:
            raise LayoutError(f"{where}: patterns too large to combine") from None
        from adapterctl.textsafe import clip

        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise LayoutError(f"{where}: rank/alpha pattern '{clip(original, 80)}' is not a regular expression "
                          f"adapterctl can match ({clip(reason, 80)})",
                          hint="patterns are matched with RE2: lookaround and backreferences are not supported") from None
