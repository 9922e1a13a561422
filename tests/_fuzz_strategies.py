"""Hypothesis strategies and file builders for tests/test_fuzz.py (untrusted-input fuzzing)."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

from hypothesis import strategies as st

VECTORS_DIR = Path(__file__).resolve().parents[1] / "spec" / "vectors"
VECTORS = {p.name: p.read_bytes() for p in sorted(VECTORS_DIR.glob("valid_*.safetensors"))}
VECTORS["valid_peft_dir/adapter_model.safetensors"] = (VECTORS_DIR / "valid_peft_dir" / "adapter_model.safetensors").read_bytes()


def _without_manifest(buf: bytes) -> bytes:
    """The vector as a foreign tool would have written it: no adapterctl keys in the metadata."""
    n = int.from_bytes(buf[:8], "little")
    head = json.loads(buf[8:8 + n])
    meta = {k: v for k, v in head.pop("__metadata__", {}).items() if not k.startswith("adapterctl.")}
    text = json.dumps({**({"__metadata__": meta} if meta else {}), **head}, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)
    return struct.pack("<Q", len(text)) + text + buf[8 + n:]


# The same vectors stripped of their manifests: what the header-only listing path reads.
FOREIGN_VECTORS = {name: _without_manifest(buf) for name, buf in VECTORS.items()}

DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
ODD_DTYPES = ["F8_E8M0", "C64", "F4", "f32", "", "F32 ", "STR"]  # unknown to us (some known to safetensors)

# Characters that make display or parsing interesting: C0/C1 controls, bidi, zero-width, BOM, surrogates.
NASTY = "\x00\x07\x1b\x7f\x85\x9b\u061c\u200b\u200e\u200f\u2028\u2029\u202a\u202e\u2060\u2066\u2069\ufeff\ud800\udfff"
CHARS = st.one_of(st.characters(), st.sampled_from(NASTY), st.integers(0xD800, 0xDFFF).map(chr))
TEXT = st.text(CHARS, max_size=12)

# -- JSON written as text: literals json.dumps cannot produce --------------------------------------
RAW_LITERALS = ["NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "0.0", "1E5",
                "9007199254740993", "18446744073709551616", "-1", '"\\ud800"', '"\\udfff"', '"a\\ud800b"',
                '"\\u0000"', '"\\u001b[31m"', '"\\u202e"', "true", "false", "null", '""', "[]", "{}"]
DEPTHS = st.one_of(st.sampled_from([1, 50, 900, 1000, 1100, 3000, 20000]), st.integers(1, 5000))


def deep_text(depth: int, kind: int = 0) -> str:
    return ["[" * depth + "]" * depth, '{"a":' * depth + "0" + "}" * depth, "[" * depth + "0" + "]" * depth][kind % 3]


RAW_VALUE = st.one_of(
    st.sampled_from(RAW_LITERALS),
    st.integers(4200, 6000).map(lambda n: "9" * n),                       # beyond int_max_str_digits
    st.integers(19, 60).map(lambda n: "1" * n),                           # beyond u64 / i64
    st.tuples(DEPTHS, st.integers(0, 2)).map(lambda t: deep_text(*t)),
)
_SENTINEL = "\ue000RAW\ue001"
_SENTINEL_RE = re.compile(r'"\\ue000RAW\\ue001(\d+)"')


def raw(text: str, table: list) -> str:
    table.append(text)
    return f"{_SENTINEL}{len(table) - 1}"


def encode_json(obj, table: list | None = None) -> str:
    """json.dumps, then splice in raw JSON text (NaN, huge ints, deep nesting...) at sentinel strings."""
    text = json.dumps(obj, allow_nan=True)
    if table:
        text = _SENTINEL_RE.sub(lambda m: table[int(m.group(1))], text)
    return text


def json_scalar_text():
    return st.one_of(RAW_VALUE, TEXT.map(json.dumps), TEXT.map(lambda s: json.dumps(s, ensure_ascii=False)),
                     st.integers().map(str), st.floats().map(lambda f: json.dumps(f, allow_nan=True)))


def json_text(max_leaves: int = 8):
    """Arbitrary JSON-ish text (sometimes invalid: NaN, lone surrogates, too deep, huge numbers)."""
    return st.recursive(json_scalar_text(), lambda kids: st.one_of(
        st.lists(kids, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(TEXT.map(json.dumps) | st.sampled_from(['"\\ud800"', '"a"']), kids),
                 max_size=4).map(lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")),
        max_leaves=max_leaves)


def py_json(table: list):
    """Python JSON values (floats include NaN/inf); draws may embed raw text via encode_json's table."""
    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([0, -1, 2**31, 2**64, 10**30]),
                     st.floats(), TEXT, RAW_VALUE.map(lambda t: raw(t, table)))
    return st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3),
                        max_leaves=5)


# -- safetensors files -------------------------------------------------------------------------------
class Blob(bytes):
    """File bytes with a short repr, so falsifying examples stay readable; ``ops`` says how it was made."""

    ops: tuple = ()

    def __repr__(self):
        body = bytes(self)
        shown = repr(body[:300]) + (f"...<{len(body)} bytes>" if len(body) > 300 else "")
        return f"Blob({shown}, ops={list(self.ops)})" if self.ops else f"Blob({shown})"


def blob(data: bytes, ops=()) -> Blob:
    b = Blob(data)
    b.ops = tuple(ops)
    return b


def with_length(header: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def pad8(header: bytes) -> bytes:
    return header + b" " * (-(len(header) + 8) % 8)


def split_file(buf: bytes):
    n = int.from_bytes(buf[:8], "little")
    return json.loads(buf[8:8 + n]), buf[8 + n:]


@st.composite
def near_valid_header(draw):
    """A well-formed-looking header with correct offsets plus perturbations -> (header text, data)."""
    n = draw(st.integers(0, 4))
    name_st = st.one_of(TEXT, st.sampled_from(["a", "lora_unet_x.alpha", "__metadata__", "", " "]))
    names = draw(st.lists(name_st, min_size=n, max_size=n, unique=True))
    specs, off = [], 0
    for name in names:
        odd = draw(st.integers(0, 7)) == 0
        dtype = draw(st.sampled_from(ODD_DTYPES if odd else sorted(DTYPE_SIZES)))
        if draw(st.integers(0, 3)) == 0:  # zero elements, but dimensions that overflow u64 (or its product)
            shape = draw(st.sampled_from([[2**64, 0], [2**70, 0], [2**40, 2**40, 0], [0, 2**63], [2**32, 2**32, 0]]))
        else:
            shape = draw(st.lists(st.integers(0, 3), max_size=3))
        size = math.prod(shape) * DTYPE_SIZES.get(dtype, 1)
        specs.append((name, dtype, shape, [off, off + size]))
        off += size
    data = draw(st.binary(min_size=off, max_size=off))
    items = []
    for name, dtype, shape, offsets in specs:
        fields = [f'"dtype":{json.dumps(dtype)}', f'"shape":{json.dumps(shape)}', f'"data_offsets":{json.dumps(offsets)}']
        if draw(st.integers(0, 3)) == 0:
            fields.append(f'{json.dumps(draw(TEXT))}:{draw(json_text(3))}')
        fields = draw(st.permutations(fields))
        key = json.dumps(name, ensure_ascii=draw(st.integers(0, 4)) > 0)
        items.append(f'{key}:{{{",".join(fields)}}}')
    meta = draw(st.one_of(st.none(), st.dictionaries(TEXT, TEXT, max_size=3).map(json.dumps), st.none(),
                          st.sampled_from(["null", "0", '""', "[]", "false", "{}", '{"a":1}', '{"a":null}']),
                          json_text(3)))
    if meta is not None:
        items.insert(draw(st.integers(0, len(items))), f'"__metadata__":{meta}')
    ws = st.sampled_from(["", " ", "\n", "\t", "\r\n "])
    text = draw(ws) + "{" + ",".join(draw(st.permutations(items))) + "}" + draw(ws)
    return text, data


def encode_header(text: str, draw) -> bytes:
    raw_bytes = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8 (CESU)
    if draw(st.integers(0, 9)) == 0:
        bad = draw(st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x00", b"\x80"]))
        i = draw(st.integers(0, len(raw_bytes)))
        raw_bytes = raw_bytes[:i] + bad + raw_bytes[i:]
    return raw_bytes


@st.composite
def json_header_file(draw):
    """8-byte length + JSON-ish header (+ data); the length is usually exact, sometimes not."""
    if draw(st.booleans()):
        text, data = draw(near_valid_header())
    else:
        text, data = draw(json_text()), draw(st.binary(max_size=16))
    header = encode_header(text, draw)
    length = draw(st.one_of(st.just(None), st.just(None), st.integers(0, len(header) + 16),
                            st.integers(0, 2**64 - 1)))
    return blob(with_length(header, data, length))


@st.composite
def raw_file(draw):
    length = draw(st.one_of(st.integers(0, 80), st.integers(0, 2**64 - 1)))
    tail = draw(st.binary(max_size=96))
    return blob(draw(st.one_of(st.binary(max_size=64), st.just(struct.pack("<Q", length) + tail))))


SPECIAL_SCALARS = {  # NaN, inf, -inf, zero, -zero for 2/4/8-byte floats (as F16/BF16, F32, F64)
    2: [b"\x00\x7e", b"\x00\x7c", b"\x00\xfc", b"\x00\x00", b"\x00\x80", b"\xc0\x7f", b"\x80\x7f"],
    4: [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff", b"\x00" * 4],
    8: [b"\x00" * 6 + b"\xf8\x7f", b"\x00" * 6 + b"\xf0\x7f", b"\x00" * 8, b"\xff" * 7 + b"\x7f"],
}
HEADER_BYTES = b'{}[],:"\\ 0123456789-.eEnNtfIal\x00\xff\x80'


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _short(value, table: list) -> str:
    text = encode_json(value, table)
    return text if len(text) <= 80 else f"{text[:60]}...<{len(text)} chars>"


def mutate_tree(draw, obj, table: list, log: list):
    """Replace, delete or add one node somewhere in a parsed JSON tree (in place; returns the root)."""
    path = draw(st.sampled_from(list(_paths(obj))))
    value = draw(py_json(table))
    if not path:
        log.append(f"header = {_short(value, table)}")
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    action = draw(st.sampled_from(["replace", "delete", "add", "rename"]))
    if action == "rename" and isinstance(parent, dict):  # e.g. a tensor loses its role or router suffix
        new = draw(st.sampled_from([path[-1][:-1], path[-1] + "x", path[-1].upper()]) | TEXT)
        parent[new] = parent.pop(path[-1])
        log.append(f"rename {list(path)} -> {new!r}")
        return obj
    log.append(f"{action} {list(path)} " + ("" if action == "delete" else _short(value, table)))
    if action == "delete":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[draw(TEXT)] = value
    else:
        parent[path[-1]] = value
    return obj


@st.composite
def mutated_vector(draw, structural: bool = True, pool: dict | None = None):
    """A valid vector (of ``pool``, default VECTORS) with 1-3 byte-level or structural header
    mutations -> Blob whose ops say which."""
    pool = VECTORS if pool is None else pool
    name = draw(st.sampled_from(sorted(pool)))
    buf = bytearray(pool[name])
    ops = ["flip", "set", "insert", "delete", "length", "truncate", "append", "data"]
    ops += ["tree", "tree", "tree", "meta", "scalar"] if structural else []
    log = [name]
    for op in draw(st.lists(st.sampled_from(ops), min_size=1, max_size=3)):
        n = int.from_bytes(buf[:8].ljust(8, b"\0"), "little")
        lo, hi = (8, 8 + n) if 8 + n <= len(buf) and n > 0 else (0, max(len(buf), 1))
        pos = draw(st.integers(lo, hi - 1)) if hi > lo else 0
        if op == "flip" and buf:
            bit = draw(st.integers(0, 7))
            buf[pos % len(buf)] ^= 1 << bit
            log.append(f"flip byte {pos} bit {bit}")
        elif op == "set" and buf:
            buf[pos % len(buf)] = draw(st.sampled_from(HEADER_BYTES))
            log.append(f"set byte {pos} = {bytes([buf[pos % len(buf)]])!r}")
        elif op == "insert":
            chunk = draw(st.binary(min_size=1, max_size=4)
                         | st.lists(st.sampled_from(HEADER_BYTES), min_size=1, max_size=4).map(bytes))
            buf[pos:pos] = chunk
            fix = draw(st.booleans()) and len(buf) >= 8
            if fix:
                buf[:8] = struct.pack("<Q", (n + len(chunk)) % 2**64)
            log.append(f"insert {chunk!r} at {pos}" + (" (length fixed)" if fix else ""))
        elif op == "delete":
            k = draw(st.integers(1, 8))
            del buf[pos:pos + k]
            fix = draw(st.booleans()) and len(buf) >= 8 and n >= k
            if fix:
                buf[:8] = struct.pack("<Q", n - k)
            log.append(f"delete {k} bytes at {pos}" + (" (length fixed)" if fix else ""))
        elif op == "length" and len(buf) >= 8:
            new = draw(st.one_of(st.integers(max(n - 9, 0), n + 9), st.integers(0, 2**64 - 1),
                                 st.sampled_from([0, 1, 2**63, 100_000_000, 100 * 2**20, 2**64 - 1])))
            buf[:8] = struct.pack("<Q", new % 2**64)
            log.append(f"length {n} -> {new}")
        elif op == "truncate":
            cut = draw(st.integers(0, len(buf)))
            del buf[cut:]
            log.append(f"truncate at {cut}")
        elif op == "append":
            extra = draw(st.binary(min_size=1, max_size=16))
            buf += extra
            log.append(f"append {extra!r}")
        elif op == "data" and len(buf) > 8 + n:
            i, v = draw(st.integers(8 + n, len(buf) - 1)), draw(st.integers(0, 255))
            buf[i] = v
            log.append(f"data byte {i} = {v:#04x}")
        elif op == "scalar":  # a one-element tensor (alpha) becomes NaN/inf/zero/random
            try:
                header, _ = split_file(bytes(buf))
                small = sorted(k for k, v in header.items()
                               if k != "__metadata__" and v["data_offsets"][1] - v["data_offsets"][0] in (2, 4, 8))
            except (ValueError, RecursionError, TypeError, AttributeError, KeyError, IndexError):
                continue
            if small:
                name_ = draw(st.sampled_from(small))
                a, b = header[name_]["data_offsets"]
                value = draw(st.sampled_from(SPECIAL_SCALARS[b - a]) | st.binary(min_size=b - a, max_size=b - a))
                buf[8 + n + a:8 + n + b] = value
                log.append(f"tensor {name_!r} bytes = {value!r}")
        elif op in ("tree", "meta"):
            try:
                header, data = split_file(bytes(buf))
                table: list = []
                if op == "meta" and isinstance(header, dict):
                    meta = header.setdefault("__metadata__", {})
                    if isinstance(meta, dict):
                        key = draw(st.sampled_from(sorted(meta)) | TEXT) if meta else draw(TEXT)
                        meta[key] = draw(TEXT)
                        log.append(f"__metadata__[{key!r}] = {meta[key]!r}")
                else:
                    header = mutate_tree(draw, header, table, log)
                text = encode_json(header, table)
            except (ValueError, RecursionError):
                continue  # the header no longer parses: byte-level mutations only
            buf = bytearray(with_length(pad8(text.encode("utf-8", "surrogatepass")), data))
    return blob(bytes(buf), log)
