"""Escaping for strings that come from files, file names and paths: they are untrusted input.

Everything shown to a person or written as JSON passes through ``escape`` or ``clip``, so that no
control, format, bidi, line-separator or lone-surrogate character from a file reaches a terminal
or a log raw. ``clip`` truncates *before* escaping: escaping a 60 MB metadata value in full only
to show its first 2,000 characters cost seconds and gigabytes.
"""

from __future__ import annotations

import os
import re

# Unicode categories Cc (controls), Cf (format: bidi overrides, zero-width, soft hyphen...),
# Cs (surrogates: a lone one crashes any UTF-8 encoder), Zl and Zp (U+2028/U+2029 end a line in
# JavaScript and some terminals). Generated from unicodedata 14.0 (Python 3.11); fixed here so
# that importing this module costs nothing.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f"
    "\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_TABLE: dict[int, str] = {}


def escape(text: str) -> str:
    """Replace every unsafe character with a visible escape (``\\x1b``, ``\\u202e``, ``\\U000e0001``)."""
    if _UNSAFE.search(text) is None:
        return text
    # str.translate runs in C; a regex callback per character took seconds on hostile metadata.
    out = text.translate(_table())
    return _UNSAFE.sub(_escape_match, out) if _ASTRAL.search(out) else out


def _table() -> dict[int, str]:
    if not _TABLE:  # built on first use (~20 ms): the unsafe characters of the BMP
        for code in range(0x10000):
            if _UNSAFE.match(chr(code)):
                _TABLE[code] = _escape_char(code)
    return _TABLE


def clip(text: str, limit: int = 120) -> str:
    """Escape at most about ``limit`` characters of ``text``; longer text ends with '…'."""
    if len(text) <= limit:
        return escape(text)
    return escape(text[: limit - 1]) + "…"


def display_path(path: str | os.PathLike) -> str:
    """A path or file name as it may be printed or put in JSON: escaped (not clipped: PATH_MAX
    bounds it, and a script may need all of it). Undecodable bytes show as ``\\udcXX``."""
    return escape(os.fsdecode(path))


def _escape_match(match: "re.Match[str]") -> str:
    return _escape_char(ord(match.group()))


def _escape_char(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
