"""JSON from files, parsed with bounded cost and no surprises.

Every JSON document adapterctl reads comes from an untrusted file: the safetensors header, the
manifest and ``lora_adapter_metadata`` inside it, and a peft ``adapter_config.json``. Python's
``json`` would recurse once per nesting level (a RecursionError past ~1,000), turn a 5,000-digit
integer into a ValueError, ``1e400`` into inf, and accept ``NaN``, lone surrogates and duplicate
keys that the Rust safetensors loader rejects. ``loads`` checks nesting depth, number length and
the number of values with C-speed scans *before* parsing (so the objects a parse creates stay a
small multiple of the text), and rejects all of the rest, raising ``JsonRejected`` (a ValueError)
with a one-line reason that callers wrap in their own typed error.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64  # the deepest document adapterctl writes (a manifest) nests 5 levels
MAX_NUMBER_CHARS = 40  # a u64 has 20 digits; a float repr fits in 24 characters

MAX_ITEMS = 4_000_000  # array elements + object members: bounds the Python objects a parse makes

# The fast way to drop strings copies the text and makes an object per piece: only for documents
# of modest size (an adapter header of thousands of tensors is well within both limits).
SPLIT_MAX_CHARS = 4_000_000
SPLIT_MAX_QUOTES = 200_000

_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_ESCAPE = re.compile(r"\\[\s\S]")
# Bytes of the skeleton mapped for the number scan (number characters -> 'n', the rest -> ' ') and
# for the depth scan (brackets -> +1 / -1 as signed bytes, everything else deleted).
_NUMBER_CHARS = bytes(ord("n") if chr(b) in "-+0123456789.eE" else ord(" ") for b in range(256))
_LONG_RUN = b"n" * (MAX_NUMBER_CHARS + 1)
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonRejected(ValueError):
    pass


def loads(text: str | bytes) -> Any:
    """Parse a JSON document under the limits above; raise JsonRejected with a reason."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRejected(f"not UTF-8 (byte {exc.start})") from None
    _check_shape(text)
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                           parse_float=_finite_float)
    except JsonRejected:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise JsonRejected(_first_line(exc)) from None
    if _SURROGATE_ESCAPE.search(text):
        _check_surrogates(value)
    return value


def _check_shape(text: str) -> None:
    # Every step runs in C, so a 100 MB header costs about a second whatever its shape. Strings
    # go first, so that brackets, digits and commas inside them do not count.
    skeleton = _without_strings(text).encode("utf-8", "surrogatepass")
    if _LONG_RUN in skeleton.translate(_NUMBER_CHARS):
        raise JsonRejected(f"a number of more than {MAX_NUMBER_CHARS} characters")
    if skeleton.count(b",") > MAX_ITEMS:
        raise JsonRejected(f"more than {MAX_ITEMS:,} values")
    steps = skeleton.translate(_DEPTH_STEP, _NOT_BRACKET)
    if steps and max(accumulate(array("b", steps))) > MAX_DEPTH:
        raise JsonRejected(f"nested deeper than {MAX_DEPTH} levels")


def _without_strings(text: str) -> str:
    """``text`` with every string literal replaced by ``""``."""
    if len(text) > SPLIT_MAX_CHARS or text.count('"') > SPLIT_MAX_QUOTES:
        return _STRINGS.sub('""', text)  # builds only the skeleton: memory stays the text's size
    if "\\" in text:  # escape pairs first (left to right, as a parser pairs them): then a quote ends a string
        text = _ESCAPE.sub("", text)
    pieces = text.split('"')
    if len(pieces) % 2 == 0:  # an odd number of quotes: an unterminated string, left to the regex
        return _STRINGS.sub('""', text)
    # Without escapes, the pieces between quotes alternate outside / inside a string: 3-4x faster
    # than the substitution on a safetensors header (bench/bench_ls.py reads a thousand of them).
    return '""'.join(pieces[0::2])


def _no_duplicates(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):  # only then look for the culprit
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonRejected(f"duplicate key {_short(key)}")
            seen.add(key)
    return out


def _no_constant(name: str):
    raise JsonRejected(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRejected(f"number {_short(text)} overflows a 64-bit float")
    return value


def _check_surrogates(value: Any) -> None:
    # Escapes like "\ud800" decode to lone surrogates, which no UTF-8 writer can encode and
    # safetensors' serde_json rejects. Only walked when the text holds such an escape at all.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_string(item)
        elif isinstance(item, dict):
            for key, sub in item.items():
                _check_string(key)
                stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonRejected("a string holds a lone UTF-16 surrogate escape") from None


def _short(text: str) -> str:
    from adapterctl.textsafe import clip

    return repr(clip(text, 60))


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__
