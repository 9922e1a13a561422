"""JSON from files, parsed with bounded cost and no surprises.

Every JSON document adapterctl reads comes from an untrusted file: the safetensors header, the
manifest and ``lora_adapter_metadata`` inside it, and a peft ``adapter_config.json``. Python's
``json`` would recurse once per nesting level (a RecursionError past ~1,000), turn a 5,000-digit
integer into a ValueError, ``1e400`` into inf, and accept ``NaN``, lone surrogates and duplicate
keys that the Rust safetensors loader rejects. ``loads`` checks nesting depth and number length
with one regex scan *before* parsing and rejects all of the rest, raising ``JsonRejected`` (a
ValueError) with a one-line reason that callers wrap in their own typed error.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64  # the deepest document adapterctl writes (a manifest) nests 5 levels
MAX_NUMBER_CHARS = 40  # a u64 has 20 digits; a float repr fits in 24 characters

# One token per match: a whole string (skipped), a bracket, or an over-long number.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|[-+0-9.eE]{%d,}' % (MAX_NUMBER_CHARS + 1))
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
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise JsonRejected(f"nested deeper than {MAX_DEPTH} levels")
        elif token in "]}":
            depth -= 1
        else:
            raise JsonRejected(f"a number of more than {MAX_NUMBER_CHARS} characters")


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise JsonRejected(f"duplicate key {_short(key)}")
        out[key] = value
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
