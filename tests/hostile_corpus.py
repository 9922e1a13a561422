"""A generated corpus of hostile adapter FILES (nothing checked in): every case is built from bytes here.

    python tests/hostile_corpus.py [DIR]     # build into DIR (default: a temp dir), print counts per category

``build(root)`` returns one ``Case`` per file or peft directory. Most cases start from a tiny B-LoRA
(one rank-1 branch on the content block, one on the style block, ~10 KB), because then every command
of the matrix - split --keep style, tag --preset b-lora, convert to peft - has a real job to do, and
any refusal is the hostile part's doing. Files are written by hand (no adapterctl code runs here),
so the corpus cannot drift with the library it tests.

``expect``: the exit code of every reading command (inspect, split, convert, tag), or None where only
the universal invariants apply. ``inspect`` overrides it for the three inspect calls; ``verdict`` is
what ``validate`` must say ("ok" = pass or warn, "fail"); by default it follows ``expect``.
"""

from __future__ import annotations

import json
import struct
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

# -- modules (SDXL map names, hard-coded so no library code is needed to build the corpus) -------------
C = "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # B-LoRA content block, 1280 -> 1280
S = "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q"  # B-LoRA style block, 1280 -> 1280
Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # 640 -> 640
SGM = {C: "output_blocks.0.1.transformer_blocks.0.attn1.to_q", S: "output_blocks.1.1.transformer_blocks.0.attn1.to_q",
       Q: "input_blocks.4.1.transformer_blocks.0.attn1.to_q"}
BLOCK = {C: "up_blocks.0.attentions.0", S: "up_blocks.0.attentions.1", Q: "down_blocks.1.attentions.0"}
WIDTH = {C: (1280, 1280), S: (1280, 1280), Q: (640, 640)}
ROLE = {C: "content", S: "style"}
WEIRD = {"esc": "\x1b[31m", "cr": "\r", "rlo": "\u202e", "ls": "\u2028", "nel": "\u0085", "fs": "\u001c",
         "rlm": "\u200f"}
BIG = "9" * 5000  # an integer literal with more digits than Python parses by default (4300)


@dataclass
class Case:
    name: str
    category: str
    path: Path
    expect: Optional[int | tuple[int, ...]] = None  # exit code(s) of inspect/split/convert/tag
    inspect: Optional[int | tuple[int, ...]] = None  # overrides expect for the inspect calls
    verdict: Optional[str] = None  # validate X: "ok" (pass/warn) or "fail"
    preserve: bool = False  # outputs must carry the input's foreign metadata verbatim
    must_show: tuple[str, ...] = ()  # literal text that 'inspect X' must print
    json_show: tuple[str, ...] = ()  # literal text that 'inspect X --json' must print (e.g. '"NaN"')
    out_name: str = "out.safetensors"  # file name of -o outputs (hostile in the escaping cases)
    cost: float = 0.2  # rough seconds for all its calls, to balance the parallel chunks

    def __post_init__(self):
        if self.inspect is None:
            self.inspect = self.expect
        if self.verdict is None and self.expect is not None:
            codes = self.expect if isinstance(self.expect, tuple) else (self.expect,)
            self.verdict = "ok" if codes == (0,) else ("fail" if 0 not in codes else None)


# -- tensors and raw files --------------------------------------------------------------------------

def _vals(n: int, seed: int) -> list[float]:
    # Integer hash of the index, exact in fp16 (same recipe as spec/vectors/make_vectors.py).
    return [(((i + 1) * 2654435761 + seed * 40503) % 2001 - 1000) / 32768 for i in range(n)]


def enc(dtype: str, values: list[float]) -> bytes:
    if dtype in ("F16", "F32", "F64"):
        return struct.pack(f"<{len(values)}{ {'F16': 'e', 'F32': 'f', 'F64': 'd'}[dtype]}", *values)
    if dtype == "BF16":
        return b"".join(struct.pack("<f", v)[2:] for v in values)
    if dtype in ("F8_E4M3", "F8_E5M2"):  # exponents 0110-0111 / 01100-01111: finite, around 0.01-1
        return bytes((0x30 + (i * 7) % 16) | (0x80 if i % 3 == 0 else 0) for i in range(len(values)))
    fmt = {"I8": "b", "U8": "B", "BOOL": "B", "I16": "h", "U16": "H", "I32": "i", "U32": "I", "I64": "q", "U64": "Q"}
    return struct.pack(f"<{len(values)}{fmt[dtype]}", *[int(abs(v) * 4) % 2 for v in values])


def t(name: str, dtype: str, shape: tuple, raw: Optional[bytes] = None, seed: int = 1):
    n = 1
    for d in shape:
        n *= d
    return (name, dtype, list(shape), enc(dtype, _vals(n, seed)) if raw is None else raw)


def keys(layout: str, path: str) -> tuple[str, str, str]:
    """(down, up, alpha) tensor names of one UNet module in a layout."""
    if layout in ("kohya", "kohya-dn"):
        base = "lora_unet_" + (SGM[path] if layout == "kohya" else path).replace(".", "_")
        return f"{base}.lora_down.weight", f"{base}.lora_up.weight", f"{base}.alpha"
    if layout == "legacy":
        head = path.rsplit(".", 1)[0]
        return f"unet.{head}.processor.to_q_lora.down.weight", f"unet.{head}.processor.to_q_lora.up.weight", ""
    pre, a, b = {"diffusers": ("unet.", "lora_A", "lora_B"), "old": ("unet.", "lora.down", "lora.up"),
                 "doubled": ("unet.unet.", "lora.down", "lora.up"), "peft": ("base_model.model.", "lora_A", "lora_B"),
                 "content": ("unet.", "lora_A.content", "lora_B.content"),
                 "style": ("unet.", "lora_A.style", "lora_B.style")}[layout]
    return f"{pre}{path}.{a}.weight", f"{pre}{path}.{b}.weight", f"{pre}{path}.alpha"


def pair(layout: str, path: str, rank: int = 1, dtype: str = "F16", seed: int = 1, alpha=None,
         alpha_dtype: str = "F16", down_raw=None, up_raw=None) -> list:
    i, o = WIDTH[path]
    dn, up, al = keys(layout, path)
    out = [t(dn, dtype, (rank, i), down_raw, seed), t(up, dtype, (o, rank), up_raw, seed + 1)]
    if alpha is not None:
        out.append(t(al, alpha_dtype, (), alpha if isinstance(alpha, bytes) else enc(alpha_dtype, [alpha])))
    return out


def blora(layout: str = "old", **kw) -> list:
    """Both B-LoRA modules; kohya gets F16 alpha tensors = 1 (as kohya writes them)."""
    if layout in ("kohya", "kohya-dn"):
        kw.setdefault("alpha", 1.0)
    lc, ls = ("content", "style") if layout == "qualified" else (layout, layout)
    return pair(lc, C, seed=11, **kw) + pair(ls, S, seed=13, **kw)


def header(tensors: list, meta: Optional[dict] = None) -> tuple[dict, bytes]:
    h: dict = {"__metadata__": dict(meta)} if meta is not None else {}
    data, off = [], 0
    for name, dtype, shape, raw in tensors:
        h[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        data.append(raw)
        off += len(raw)
    return h, b"".join(data)


def raw_file(path: Path, head: dict | bytes | str, data: bytes = b"", *, header_len: Optional[int] = None,
             ascii_json: bool = True) -> Path:
    if isinstance(head, dict):
        head = json.dumps(head, separators=(",", ":"), ensure_ascii=ascii_json)
    body = head.encode("utf-8", "surrogatepass") if isinstance(head, str) else head
    path.write_bytes((len(body) if header_len is None else header_len).to_bytes(8, "little") + body + data)
    return path


def st_file(path: Path, tensors: list, meta: Optional[dict] = None, *, edit: Optional[Callable] = None,
            ascii_json: bool = True) -> Path:
    """A safetensors file; ``edit(header)`` may break the header (or return replacement JSON text)."""
    h, data = header(tensors, meta)
    if edit is not None:
        replaced = edit(h)
        if replaced is not None:
            return raw_file(path, replaced, data)
    return raw_file(path, h, data, ascii_json=ascii_json)


# -- manifests, diffusers metadata, peft directories ------------------------------------------------

def manifest(layout: str, tensors: list, *, alpha: float = 1.0, alpha_dtype: Optional[str] = None) -> dict:
    """A hand-built adapterctl manifest for the two B-LoRA branches in ``tensors`` (as tag would write it)."""
    mods = []
    for path in (C, S):
        down, up, al = keys(ROLE[path] if layout == "qualified" else layout, path)
        names = {n for n, *_ in tensors}
        entry = {"module": f"unet.{path}", "component": "unet", "block": BLOCK[path], "kind": "linear", "rank": 1,
                 "alpha": alpha, "scale": alpha, "rslora": False, "dtype": "F16", "role": ROLE[path],
                 "role_source": "declared", "dora": False,
                 "tensors": {"down": down, "up": up, **({"alpha": al} if al in names else {})}}
        if alpha_dtype:
            entry["alpha_dtype"] = alpha_dtype
        mods.append(entry)
    layout = {"qualified": "diffusers", "old": "diffusers-old"}.get(layout, layout)
    return {"format": "adapterctl.lora", "version": 1, "architecture": "sdxl", "layout": layout, "method": "b-lora",
            "preset": "b-lora", "role_rules": [{"selector": BLOCK[C], "role": "content"},
                                              {"selector": BLOCK[S], "role": "style"}],
            "modules": mods, "provenance": {"sources": [], "operations": []}}


def with_manifest(path: Path, layout: str = "diffusers", edit: Optional[Callable] = None, text: Optional[str] = None,
                  alpha: float = 1.0) -> Path:
    """B-LoRA (kohya: alpha tensors = ``alpha``) + a manifest, edited by ``edit(m)`` or replaced by ``text``."""
    tensors = blora(layout, **({"alpha": alpha} if layout == "kohya" else {}))
    m = manifest(layout, tensors, alpha=alpha, alpha_dtype="F16" if layout == "kohya" else None)
    if edit is not None:
        edit(m)
    raw = text if text is not None else json.dumps(m, separators=(",", ":"))
    return st_file(path, tensors, {"adapterctl.format": "adapterctl.lora/1", "adapterctl.manifest": raw})


def dmeta(**over) -> dict:
    """diffusers lora_adapter_metadata fields for the B-LoRA pair (rank 1, alpha 1)."""
    cfg = {"unet.r": 1, "unet.lora_alpha": 1.0, "unet.rank_pattern": {}, "unet.alpha_pattern": {},
           "unet.target_modules": [C, S], "unet.use_rslora": False, "unet.use_dora": False}
    cfg.update({f"unet.{k}": v for k, v in over.items()})
    return cfg


def with_dmeta(path: Path, text: Optional[str] = None, pad: int = 0, **over) -> Path:
    meta = {"lora_adapter_metadata": text if text is not None else json.dumps(dmeta(**over))}
    if pad:
        meta["ss_padding"] = "p" * pad
    return st_file(path, blora("diffusers"), meta)


def peft_dir(d: Path, config: dict | bytes | str | None = None, name: str = "adapter", **over) -> Path:
    p = d / name
    p.mkdir()
    st_file(p / "adapter_model.safetensors", blora("peft"), {"format": "pt"})
    if config is None:
        config = {"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["to_q"], "rank_pattern": {},
                  "alpha_pattern": {}, "use_rslora": False, "use_dora": False, "lora_dropout": 0.0, "bias": "none",
                  "task_type": None, **over}
    if isinstance(config, dict):
        config = json.dumps(config)
    (p / "adapter_config.json").write_bytes(config if isinstance(config, bytes) else config.encode("utf-8"))
    return p


def put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def nested(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def _sub(old: str, new: str) -> Callable[[dict], str]:
    """An edit that swaps one literal in the serialised header (for tokens json.dumps cannot write)."""
    def edit(h: dict) -> str:
        s = json.dumps(h, separators=(",", ":"))
        assert old in s, old
        return s.replace(old, new, 1)
    return edit


def _missing(old: str):
    raise AssertionError(f"corpus bug: {old!r} is not in the header")


def _nonfinite(dtype: str, kind: str) -> bytes:
    """A style down factor [1, 1280] whose first value is NaN or Inf in ``dtype``."""
    bad = {("F16", "nan"): b"\x00\x7e", ("F16", "inf"): b"\x00\x7c", ("BF16", "nan"): b"\xc0\x7f",
           ("BF16", "inf"): b"\x80\x7f", ("F32", "nan"): struct.pack("<f", float("nan")),
           ("F32", "inf"): struct.pack("<f", float("-inf")), ("F64", "nan"): struct.pack("<d", float("nan")),
           ("F64", "inf"): struct.pack("<d", float("inf")), ("F8_E4M3", "nan"): b"\x7f",
           ("F8_E5M2", "inf"): b"\x7c", ("F8_E5M2", "nan"): b"\x7e"}[(dtype, kind)]
    good = enc(dtype, _vals(1280, 13))
    return bad + good[len(bad):]


# -- the corpus ------------------------------------------------------------------------------------

def build(root: Path, *, write: bool = True) -> list[Case]:
    """Write every case under ``root/in/<name>/``; ``write=False`` only lists them (for test ids)."""
    root = Path(root)
    cases: list[Case] = []
    F = "f.safetensors"

    def add(name: str, category: str, make: Callable[[Path], Path], expect=None, **kw) -> None:
        d = root / "in" / name
        if write:
            d.mkdir(parents=True)
        cases.append(Case(name, category, Path(make(d)) if write else d, expect, **kw))

    nan_rule = {"expect": 3, "inspect": 0, "verdict": "fail"}  # NaN/Inf alpha: shown, failed, never written

    # control: good files of every layout read; they must pass everything, so the matrix can fail.
    for lay in ("old", "diffusers", "kohya", "kohya-dn", "doubled", "legacy", "qualified"):
        add(f"ctl_{lay}", "control", lambda d, lay=lay: st_file(d / F, blora(lay)), 0)
    for dt in ("BF16", "F32", "F64"):
        add(f"ctl_factors_{dt}", "control", lambda d, dt=dt: st_file(d / F, blora("old", dtype=dt)), 0)
    add("ctl_diffusers_meta", "control", lambda d: with_dmeta(d / F), 0)
    add("ctl_peft_dir", "control", lambda d: peft_dir(d), 0)
    for lay in ("diffusers", "old", "qualified"):
        add(f"ctl_manifest_{lay}", "control", lambda d, lay=lay: with_manifest(d / F, lay), 0)
    add("ctl_manifest_kohya", "control", lambda d: with_manifest(d / F, "kohya", alpha=2.0), 0)
    add("ctl_kohya_ss_meta", "control", lambda d: st_file(d / F, blora("kohya"), {
        "ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0", "ss_tag_frequency": "{}",
        "modelspec.title": "kept"}), 0, preserve=True)

    # container: the safetensors envelope itself is broken (readers exit 3, validate fails).
    def cut(n):
        def make(d):
            b = st_file(d / F, blora()).read_bytes()
            (d / F).write_bytes(b[:n])
            return d / F
        return make
    for name, n in (("trunc_in_header", 40), ("trunc_in_data", -100), ("trunc_len_field", 5), ("only_len_field", 8)):
        add(f"c_{name}", "container", cut(n), 3)
    add("c_empty", "container", lambda d: raw_file(d / F, b""), 3)
    for name, n in (("hlen_gt_file", 1 << 20), ("hlen_u64_max", 2 ** 64 - 1), ("hlen_cap_plus_one", 104857601)):
        add(f"c_{name}", "container", lambda d, n=n: raw_file(d / F, *header(blora()), header_len=n), 3)

    def hundred_mb(d: Path) -> Path:
        # 100_000_010 bytes of real JSON (a B-LoRA header + spaces): over safetensors' 100_000_000 cap,
        # under adapterctl's 100 MiB one. safetensors refuses it, so adapterctl must too.
        h, data = header(blora())
        body = json.dumps(h, separators=(",", ":")).encode()
        with open(d / F, "wb") as fh:
            fh.write((100_000_010).to_bytes(8, "little") + body)
            fh.write(b" " * (100_000_010 - len(body)))
            fh.write(data)
        return d / F
    add("c_hlen_100M_real", "container", hundred_mb, 3, cost=3)
    # Damage to the serialised header of a good B-LoRA: text -> text (one replacement each).
    def rep(old: str, new: str) -> Callable[[bytes], bytes]:
        return lambda text: text.replace(old.encode(), new.encode(), 1) if old.encode() in text else _missing(old)

    def junk(raw: bytes) -> Callable[[bytes], bytes]:  # bytes that are not UTF-8 inside a tensor name
        return lambda text: text.replace(b"lora.down", b"lora" + raw + b"down", 1)
    shape, offs, dt = '"shape":[1,1280]', "[0,2560]", '"dtype":"F16"'
    entry = '{"dtype":"F16","shape":[1,1280],"data_offsets":[0,2560]}'
    damage = {
        "json_unterminated": lambda text: b'{"a":', "json_trailing_comma": lambda text: text[:-1] + b",}",
        "json_single_quotes": lambda text: b"{'a': 1}", "json_array": lambda text: b"[]",
        "json_string": lambda text: b'"x"', "json_number": lambda text: b"1", "json_null": lambda text: b"null",
        "json_nul_padding": lambda text: text + b"\0" * 8, "json_bom": lambda text: "\ufeff".encode() + text,
        "nan_literal_in_entry": rep(offs + "}", offs + ',"x":NaN}'),
        "dup_tensor_key": rep("}}", "}," + json.dumps(keys("old", C)[0]) + ":" + entry + "}"),
        "dup_dtype_field": rep('{"dtype":"F16"', '{"dtype":"F32","dtype":"F16"'),
        "deep_in_entry": rep(shape, '"shape":' + nested()),
        "digits5000_shape": rep(shape, f'"shape":[{BIG},1280]'), "digits5000_offset": rep(offs, f"[0,{BIG}]"),
        "offset_negative": rep(offs, "[-2560,0]"), "offset_float": rep(offs, "[0,2560.0]"),
        "offset_exp": rep(offs, "[0,2.56e3]"), "offset_reversed": rep(offs, "[2560,0]"),
        "offset_string": rep(offs, '["0","2560"]'), "offset_three": rep(offs, "[0,2560,2560]"),
        "shape_negative": rep(shape, '"shape":[-1,-1280]'), "shape_float": rep(shape, '"shape":[1.0,1280]'),
        "shape_bool": rep(shape, '"shape":[true,1280]'), "shape_string": rep(shape, '"shape":"1x1280"'),
        "shape_overflow": rep(shape, f'"shape":[{2 ** 32},{2 ** 32},{2 ** 32}]'),
        "shape_u64_wrap": rep(shape, f'"shape":[{2 ** 63},2]'),  # 2**63 * 2 * 2 bytes wraps to 0 in u64
        "dtype_unknown": rep(dt, '"dtype":"Q4_K"'), "dtype_lowercase": rep(dt, '"dtype":"f16"'),
        "dtype_null": rep(dt, '"dtype":null'), "dtype_missing": rep(dt + ",", ""),
        "entry_not_object": rep(entry, offs),
        "invalid_utf8_key": junk(b"\xff\xfe"), "overlong_utf8": junk(b"\xc0\xaf"),
        "cesu_surrogate": junk(b"\xed\xa0\x80"),
    }
    for name, fn in damage.items():
        def make(d, fn=fn):
            h, data = header(blora())
            return raw_file(d / F, fn(json.dumps(h, separators=(",", ":")).encode()), data)
        add(f"c_{name}", "container", make, 3)
    # A zero-size tensor with a dimension past u64: adapterctl's ints are unbounded, safetensors' are not.
    add("c_zero_size_dim_2e70", "container", lambda d: st_file(d / F, blora() + [("note", "F16", [0, 2 ** 70], b"")]),
        3)
    add("c_deep_metadata", "container",
        lambda d: st_file(d / F, blora(), {"k": "v"}, edit=_sub('{"k":"v"}', nested())), 3)

    def layout_damage(kind):
        def make(d):
            h, data = header(blora())
            ents = [v for k, v in h.items() if k != "__metadata__"]
            if kind == "gap":
                for e in ents[1:]:
                    e["data_offsets"] = [o + 2 for o in e["data_offsets"]]
                data = data[:2560] + b"\0\0" + data[2560:]
            elif kind == "overlap":
                ents[1]["data_offsets"] = [1280, 3840]
                data = data[:3840] + data[5120:]
                for e in ents[2:]:
                    e["data_offsets"] = [o - 1280 for o in e["data_offsets"]]
            elif kind == "trailing":
                data += b"\0" * 16
            elif kind == "beyond_end":
                ents[-1]["data_offsets"] = [o + 4096 for o in ents[-1]["data_offsets"]]
            return raw_file(d / F, h, data)
        return make
    for kind in ("gap", "overlap", "trailing", "beyond_end"):
        add(f"c_{kind}", "container", layout_damage(kind), 3)
    # Lone surrogates: valid JSON syntax, but not Unicode text; safetensors (serde_json) refuses them.
    add("c_surrogate_tensor_name", "container", lambda d: st_file(d / F, blora() + [t("note\ud800", "F16", (1,))]), 3)
    add("c_surrogate_meta_key", "container", lambda d: st_file(d / F, blora(), {"k\ud800": "v"}), 3)
    add("c_surrogate_meta_value", "container", lambda d: st_file(d / F, blora(), {"k": "v\udc80"}), 3)
    add("c_surrogate_pair_ok", "container", lambda d: st_file(d / F, blora(), {"k": "\U0001f600"}), 0, preserve=True)
    for name, value, exp in (("null", None, 0), ("list", [], 3), ("empty_string", "", 3), ("zero", 0, 3),
                             ("false", False, 3), ("int_value", {"k": 1}, 3), ("null_value", {"k": None}, 3),
                             ("nested_value", {"k": {"a": "b"}}, 3)):
        add(f"c_meta_{name}", "container",
            lambda d, v=value: st_file(d / F, blora(), {}, edit=lambda h: h.update({"__metadata__": v})), exp)
    add("c_pickle_magic", "container", lambda d: raw_file(d / F, b"\x80\x04\x95" + b"x" * 40), 3)
    add("c_zip_magic", "container", lambda d: put(d / F, b"PK\x03\x04" + b"\0" * 60), 3)
    add("c_no_tensors", "container", lambda d: raw_file(d / F, b"{}"), 4)
    add("c_metadata_only", "container", lambda d: raw_file(d / F, {"__metadata__": {"a": "b"}}), 4)
    return _manifest_metadata_keys(root, cases, add, F, nan_rule)


def _manifest_metadata_keys(root: Path, cases: list, add, F: str, nan_rule: dict) -> list[Case]:
    def m_edit(fn, layout="diffusers", alpha=1.0):
        return lambda d: with_manifest(d / F, layout, edit=fn, alpha=alpha)

    def m_text(old, new, layout="diffusers"):
        def make(d):
            m = manifest(layout, blora(layout))
            text = json.dumps(m, separators=(",", ":"))
            assert old in text, old
            return with_manifest(d / F, layout, text=text.replace(old, new))
        return make

    def ent(i, **kw):  # edit module entry i of the manifest
        return lambda m: m["modules"][i].update(kw)

    # manifest: the typed manifest is broken or disagrees with the tensors (readers exit 3).
    for name, make in {
        "not_json": lambda d: with_manifest(d / F, text="{not json"),
        "array": lambda d: with_manifest(d / F, text="[]"),
        "null": lambda d: with_manifest(d / F, text="null"),
        "deep": lambda d: with_manifest(d / F, text='{"format":"adapterctl.lora","version":1,"x":' + nested() + "}"),
        "version_2": m_edit(lambda m: m.update(version=2)),
        "version_string": m_edit(lambda m: m.update(version="1")),
        "version_true": m_edit(lambda m: m.update(version=True)),
        "version_float": m_edit(lambda m: m.update(version=1.0)),
        "version_5000_digits": m_text('"version":1', f'"version":{BIG}'),
        "format_wrong": m_edit(lambda m: m.update(format="adapterctl.lorax")),
        "kohya_alpha_400_vs_tensor_2": m_edit(lambda m: [e.update(alpha=400.0, scale=400.0) for e in m["modules"]],
                                               "kohya", alpha=2.0),
        "kohya_alpha_dtype_bf16_vs_f16": m_edit(ent(0, alpha_dtype="BF16"), "kohya", alpha=2.0),
        "alpha_4_vs_implicit_1": m_edit(lambda m: [e.update(alpha=4.0, scale=4.0) for e in m["modules"]]),
        "scale_5_vs_alpha_1": m_edit(ent(0, scale=5.0)),
        "rank_2": m_edit(ent(0, rank=2)),
        "rank_0": m_edit(ent(0, rank=0)),
        "rank_negative": m_edit(ent(0, rank=-1)),
        "rank_5000_digits": m_text('"rank":1', f'"rank":{BIG}'),
        "dtype_f32_vs_f16": m_edit(ent(0, dtype="F32")),
        "kind_conv": m_edit(ent(0, kind="conv")),
        "block_wrong": m_edit(ent(0, block="up_blocks.0.attentions.2")),
        "component_te": m_edit(ent(0, component="text_encoder")),
        "role_vs_qualified_key": m_edit(lambda m: (ent(0, role="style")(m), ent(1, role="content")(m)), "qualified"),
        "alpha_key_is_factor": m_edit(lambda m: (lambda k: k.update(alpha=k["down"]))(m["modules"][0]["tensors"]),
                                      "kohya"),
        "same_tensors_two_roles": m_edit(lambda m: m["modules"].append(dict(m["modules"][0], role="style"))),
        "alpha_nan": m_text('"alpha":1.0', '"alpha":NaN'),
        "alpha_infinity": m_text('"alpha":1.0', '"alpha":Infinity'),
        "alpha_1e400": m_text('"alpha":1.0', '"alpha":1e400'),
        "scale_nan": m_text('"scale":1.0', '"scale":NaN'),
        "unknown_top_field": m_edit(lambda m: m.update(extra_field=1)),
        "unknown_entry_field": m_edit(ent(0, extra_field=1)),
        "unknown_tensors_field": m_edit(lambda m: m["modules"][0]["tensors"].update(extra="x")),
        "layout_mismatch": m_edit(lambda m: m.update(layout="kohya")),
        "missing_tensor": m_edit(lambda m: m["modules"][0]["tensors"].update(down="nope.lora_A.weight")),
        "missing_branch": m_edit(lambda m: m["modules"].pop()),
        "empty_modules": m_edit(lambda m: m.update(modules=[])),
        "module_unknown": m_edit(ent(0, module="unet.no_such_block.to_q")),
        "experts_on_plain": m_edit(ent(0, experts=2)),
        "role_source_without_role": m_edit(ent(0, role=None)),
    }.items():
        add(f"m_{name}", "manifest", make, 3)
    for name, arch in (("arch_ls", "sdxl\u2028"), ("arch_spaced", " SDXL "), ("arch_fs", "sdxl\u001c")):
        add(f"m_{name}", "manifest", m_edit(lambda m, a=arch: m.update(architecture=a)), (3, 4))
    add("m_free_strings_hostile", "manifest", m_edit(lambda m: m.update(
        method="b-lora\x1b[2J\u202e", preset="b-lora\u200f",
        provenance={"sources": [{"sha256": "\x1b]0;x\x07", "name": "n\u2028"}],
                    "operations": [{"op": "tag\x1b[31m", "tool": "t\u0085", "at": "\u202e"}]})))

    # metadata: foreign metadata is hostile but legal; it must be shown escaped and kept verbatim.
    def meta_file(meta, layout="old"):
        return lambda d: st_file(d / F, blora(layout), meta, ascii_json=False)
    unit = "\u202e\x1b[31m\u0085a\u0301\u0302\u0303 \u200f\u2028\x1cz:smile:"  # 16 chars, mostly escapable
    big = unit * 30_000  # ~0.9 MB of UTF-8 / JSON per value
    add("md_60mb_unicode", "metadata", meta_file({f"ss_odd_{i}{unit}": big for i in range(66)}), 0, preserve=True,
        cost=65)
    add("md_emoji_codes", "metadata", meta_file({"ss_tag": ":smile: :+1: :thumbs_up:", ":smile:": ":smile:"}), 0,
        preserve=True, must_show=(":smile:",))
    link = "[link=file:///etc/passwd]click[/link]"
    add("md_rich_markup", "metadata", meta_file({"ss_markup": "[red]x[/red]", "ss_close": "[/]", "ss_link": link,
                                                  "modelspec.title": "[bold]t"}),
        0, preserve=True, must_show=("[red]x[/red]", link))
    add("md_hash_markers", "metadata", meta_file({"ss_a": "@@sha256-0x@@", "ss_b": "x @@sha256-hex@@ y",
                                                  "ss_c": "@@source-sha256@@", "modelspec.title": "@@sha256-0x@@",
                                                  "@@sha256-hex@@": "marker as key"}), 0, preserve=True)
    add("md_hash_markers_kohya", "metadata", meta_file({
        "ss_output_name": "@@sha256-hex@@@@source-sha256@@", "sshs_model_hash": "stale", "sshs_legacy_hash": "stale"},
        "kohya"), 0, preserve=True)
    add("md_20k_keys", "metadata", meta_file({f"k{i:06d}": "v" for i in range(20_000)}), 0, preserve=True, cost=4)
    add("md_1mb_ascii_value", "metadata", meta_file({"ss_long": "a" * 1_000_000}), 0, preserve=True)
    add("md_empty_key_and_value", "metadata", meta_file({"": "", " ": " "}), 0, preserve=True)
    add("md_deep_json_in_string", "metadata",
        meta_file({"ss_network_args": nested(), "lora_adapter_metadata_x": nested()}), 0, preserve=True)
    add("md_adapter_metadata_on_kohya", "metadata", meta_file({"lora_adapter_metadata": "not json"}, "kohya"), 0,
        preserve=True)
    add("md_format_key_without_manifest", "metadata", meta_file({"adapterctl.format": "adapterctl.lora/99"}))
    add("md_modelspec_odd", "metadata", meta_file({"modelspec.date": "\x1b[2J", "modelspec.title": "\u202etitle",
                                                   "modelspec.author": "a\u0085b"}), 0, preserve=True)

    # keys: two spellings of one module + branch must be refused (exit 4), never silently merged.
    ks = lambda *groups: [x for g in groups for x in g]  # noqa: E731
    te = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    te_kohya = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    te_both = [t(f"{te}.lora_A.weight", "F16", (1, 768)), t(f"{te}.lora_B.weight", "F16", (768, 1)),
               t(f"{te_kohya}.lora_down.weight", "F16", (1, 768), seed=5),
               t(f"{te_kohya}.lora_up.weight", "F16", (768, 1), seed=6)]
    for name, tensors in {
        "doubled_and_single_prefix": ks(blora("old"), pair("doubled", S, seed=21)),
        "loraA_and_lora_down": ks(blora("diffusers"), pair("old", S, seed=21)),
        "kohya_and_diffusers_same": ks(blora("diffusers"), pair("kohya", S, seed=21, alpha=1.0)),
        "kohya_sgm_and_dn_same": ks(blora("kohya"), pair("kohya-dn", S, seed=21, alpha=1.0)),
        "legacy_and_old_same": ks(blora("old"), pair("legacy", S, seed=21)),
        "peft_prefix_and_unet_same": ks(blora("diffusers"), pair("peft", S, seed=21)),
        "qualified_plus_plain": ks(blora("diffusers"), pair("content", C, seed=21)),
        "te_diffusers_and_kohya_same": ks(blora("diffusers"), te_both),
        "down_without_up": ks(pair("old", C), pair("old", S)[:1]),
        "up_without_down": ks(pair("old", C), pair("old", S)[1:]),
        "conv_up_3x3": ks(pair("old", C), shaped(S, (1, 1280, 1, 1), (1280, 1, 3, 3))),
        "factors_3d": ks(pair("old", C), shaped(S, (1, 1, 1280), (1280, 1, 1))),
        "factors_1d": ks(pair("old", C), shaped(S, (1280,), (1280,))),
        "rank_mismatch": ks(pair("old", C), shaped(S, (2, 1280), (1280, 3))),
    }.items():
        add(f"k_{name}", "keys", lambda d, tensors=tensors: st_file(d / F, tensors), 4)
    ex = f"unet.{S}.lora_"
    expert = [t(ex + "experts_A.weight", "F16", (0, 1, 1280)), t(ex + "experts_B.weight", "F16", (1280, 1)),
              t(ex + "router.weight", "F16", (0, 1280)), t(ex + "router.bias", "F16", (0,))]
    add("k_expert_zero_experts", "keys", lambda d: st_file(d / F, ks(pair("diffusers", C), expert)), (3, 4))
    routerless = [t(ex + "experts_A.weight", "F16", (2, 1, 1280)), t(ex + "experts_B.weight", "F16", (1280, 1))]
    add("k_expert_without_router", "keys", lambda d: st_file(d / F, ks(pair("diffusers", C), routerless)), 4)
    for name, tensors in {
        "kohya_and_diffusers_other_modules": ks(pair("kohya", C, alpha=1.0), pair("diffusers", S)),
        "alpha_without_factors": ks(blora("diffusers"), [t(f"unet.{Q}.alpha", "F16", ())]),
        "peft_default_qualifier": [t(n.replace("lora_A.", "lora_A.default.").replace("lora_B.", "lora_B.default."), *r)
                                   for n, *r in blora("diffusers")],
        "mixed_factor_dtypes": ks(pair("old", C), pair("old", S)[:1], [t(keys("old", S)[1], "F32", (1280, 1))]),
        "kohya_empty_flat_name": ks(blora("kohya"), [t("lora_unet_.lora_down.weight", "F16", (1, 4))]),
    }.items():
        add(f"k_{name}", "keys", lambda d, tensors=tensors: st_file(d / F, tensors))
    return _lora_peft_patterns_escape(root, cases, add, F, nan_rule)


def shaped(path: str, down: tuple, up: tuple, layout: str = "old") -> list:
    """A down/up pair of one module with arbitrary shapes."""
    dn, un, _ = keys(layout, path)
    return [t(dn, "F16", down), t(un, "F16", up, seed=2)]


def _lora_peft_patterns_escape(root: Path, cases: list, add, F: str, nan_rule: dict) -> list[Case]:
    def kohya_alpha(value, dtype):  # a B-LoRA in kohya layout whose two alpha tensors hold ``value``
        return lambda d: st_file(d / F, blora("kohya", alpha=value, alpha_dtype=dtype))

    # lora: numerically hostile factors and alphas.
    add("l_rank_0", "lora", lambda d: st_file(d / F, pair("old", C) + shaped(S, (0, 1280), (1280, 0))), (3, 4))
    # rank 40000 on a 640 -> 640 module, the other dims 1 wide: 160 KB on disk, GBs if anything densifies.
    add("l_rank_40000_thin", "lora", lambda d: st_file(d / F, blora() + shaped(Q, (40000, 1), (1, 40000))), (3, 4))
    add("l_rank_641_on_640", "lora", lambda d: st_file(d / F, blora() + pair("old", Q, rank=641)), (3, 4), cost=1)
    nan, inf = float("nan"), float("inf")
    for name, value, dtype, shown in (("nan_F16", nan, "F16", '"NaN"'), ("pinf_F32", inf, "F32", '"Infinity"'),
                                      ("ninf_F16", -inf, "F16", '"-Infinity"'), ("nan_BF16", nan, "BF16", '"NaN"'),
                                      ("nan_F64", nan, "F64", '"NaN"')):
        add(f"l_alpha_{name}", "lora", kohya_alpha(value, dtype), json_show=(shown,), **nan_rule)
    for name, value, dtype in (("zero", 0.0, "F16"), ("negative", -1.0, "F16"), ("huge_F64", 1e308, "F64"),
                               ("f16_max", 65504.0, "F16"), ("subnormal_F32", 1e-45, "F32"),
                               ("I64_big", 2 ** 62, "I64")):
        add(f"l_alpha_{name}", "lora", kohya_alpha(value, dtype))
    for dtype, raw in (("F8_E4M3", b"\x38"), ("BOOL", b"\x01"), ("U64", b"\xff" * 8), ("U16", b"\x01\x00"),
                       ("I8", b"\x01")):
        add(f"l_alpha_dtype_{dtype}", "lora", kohya_alpha(raw, dtype))
    no_alpha = [x for x in blora("kohya") if not x[0].endswith(".alpha")]
    for name, shape in (("two_elements", (2,)), ("shape_1x1x1", (1, 1, 1))):
        tensors = no_alpha + [t(keys("kohya", C)[2], "F16", ()),
                              t(keys("kohya", S)[2], "F16", shape, enc("F16", [1.0] * (2 if shape == (2,) else 1)))]
        add(f"l_alpha_{name}", "lora", lambda d, ts=tensors: st_file(d / F, ts), (3, 4) if shape == (2,) else None)
    for dtype, kinds in (("F16", ("nan", "inf")), ("BF16", ("nan", "inf")), ("F32", ("nan", "inf")),
                         ("F64", ("nan", "inf")), ("F8_E4M3", ("nan",)), ("F8_E5M2", ("nan", "inf"))):
        for kind in kinds:
            add(f"l_factor_{kind}_{dtype}", "lora", lambda d, dt=dtype, k=kind: st_file(
                d / F, pair("old", C, dtype=dt) + pair("old", S, dtype=dt, down_raw=_nonfinite(dt, k))), verdict="fail")
    for dtype in ("F8_E4M3", "F8_E5M2"):
        add(f"l_factors_finite_{dtype}", "lora", lambda d, dt=dtype: st_file(d / F, blora(dtype=dt)), 0)
    add("l_factors_all_zero", "lora", lambda d: st_file(d / F, blora(down_raw=b"\0" * 2560, up_raw=b"\0" * 2560)), 0)
    add("l_factors_I8", "lora", lambda d: st_file(d / F, blora(dtype="I8")))
    add("l_factors_BOOL", "lora", lambda d: st_file(d / F, blora(dtype="BOOL")))
    add("l_factors_huge_F32", "lora",
        lambda d: st_file(d / F, blora(dtype="F32", up_raw=struct.pack("<f", 3e38) * 1280)))

    # peft: adapter_config.json is hostile.
    P = lambda **kw: lambda d: peft_dir(d, **kw)  # noqa: E731
    base_cfg = json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["to_q"]})
    Ptext = lambda old, new: lambda d: peft_dir(d, base_cfg.replace(old, new))  # noqa: E731
    for name, make in (
            ("r_0", P(r=0)), ("r_string", P(r="8")), ("r_true", P(r=True)), ("r_1e400", Ptext('"r": 1', '"r": 1e400')),
            ("r_5000_digits", Ptext('"r": 1', f'"r": {BIG}')), ("r_negative", P(r=-1)), ("r_float", P(r=1.5)),
            ("r_null", P(r=None)), ("alpha_string", P(lora_alpha="1")),
            ("use_rslora_string_false", P(use_rslora="false")),
            ("config_array", lambda d: peft_dir(d, "[]")), ("config_string", lambda d: peft_dir(d, '"x"')),
            ("config_null", lambda d: peft_dir(d, "null")),
            ("config_invalid_utf8", lambda d: peft_dir(d, b'{"r": 1, "x": "\xff\xfe"}')),
            ("config_deep", lambda d: peft_dir(d, '{"r": 1, "x": ' + nested() + "}")),
            ("config_bom", lambda d: peft_dir(d, "\ufeff" + base_cfg)),
            ("config_nan_unused_field", P(lora_dropout=float("nan"))),
            ("peft_type_loha", P(peft_type="LOHA")), ("peft_type_null", P(peft_type=None)),
            ("rank_pattern_list", P(rank_pattern=[1, 2]))):
        add(f"p_{name}", "peft", make)
    # NaN / Infinity are not JSON and 1e400 is not a double: refused like any invalid config (3 or 4).
    add("p_alpha_nan", "peft", Ptext('"lora_alpha": 1', '"lora_alpha": NaN'), (3, 4))
    add("p_alpha_infinity", "peft", Ptext('"lora_alpha": 1', '"lora_alpha": Infinity'), (3, 4))
    add("p_config_20mb", "peft", lambda d: peft_dir(d, json.dumps({"r": 1, "lora_alpha": 1, "x": "y" * 20_000_000})),
        cost=1)

    def special(kind):
        def make(d):
            p = peft_dir(d)
            cfg, weights = p / "adapter_config.json", p / "adapter_model.safetensors"
            cfg.unlink()
            if kind == "devzero":  # st_size 0, endless bytes: a size check alone does not stop the read
                cfg.symlink_to("/dev/zero")
            elif kind == "config_dir":
                cfg.mkdir()
            else:
                cfg.write_text(base_cfg)
                data = weights.read_bytes()
                weights.unlink()
                if kind == "weights_truncated":
                    weights.write_bytes(data[:-10])
            return p
        return make
    add("p_config_devzero", "peft", special("devzero"), cost=2)
    add("p_config_is_dir", "peft", special("config_dir"))
    add("p_weights_missing", "peft", special("weights_missing"))
    add("p_weights_truncated", "peft", special("weights_truncated"), 3)

    # patterns: rank_pattern / alpha_pattern are regexes in peft; a hostile one must not hang a reader.
    dm = lambda **over: lambda d: with_dmeta(d / F, **over)  # noqa: E731
    add("s_catastrophic_rank_pattern", "patterns", dm(pad=20_000, rank_pattern={"(.|.)*Z": 1}), (0, 4), cost=1)
    add("s_catastrophic_peft_alpha_pattern", "patterns", P(alpha_pattern={"(.|.)*Z": 2}), (0, 4), cost=1)
    add("s_nested_quantifier", "patterns", dm(rank_pattern={"(a*)*b": 1}), (0, 4))
    # 10_000 exact paths that match nothing (5000 per dict, ~1.6 MB), then the two real modules.
    decoys = [f"down_blocks.{i % 9}.attentions.{i % 7}.transformer_blocks.{i}.attn1.processor.to_q.{'x' * 90}"
              for i in range(10_000)]
    add("s_10k_exact_patterns", "patterns", dm(
        rank_pattern={**dict.fromkeys(decoys[:5000], 7), C: 1, S: 1},
        alpha_pattern={**dict.fromkeys(decoys[5000:], 7.0), C: 2.0}), 0, cost=40)
    for name, over in (("invalid_regex", {"rank_pattern": {"(": 1}}), ("lookahead", {"rank_pattern": {"(?=x)": 1}}),
                       ("backreference", {"rank_pattern": {r"(a)\1": 1}}),
                       ("pattern_1mb", {"alpha_pattern": {"a" * 1_000_000: 2.0}})):
        add(f"s_{name}", "patterns", dm(**over), (0, 4))
    for name, over in (("rank_value_0", {"rank_pattern": {C: 0}}), ("rank_value_negative", {"rank_pattern": {C: -1}}),
                       ("rank_value_string", {"rank_pattern": {C: "x"}}),
                       ("alpha_value_string", {"alpha_pattern": {C: "x"}}),
                       ("alpha_value_0", {"alpha_pattern": {C: 0}}),
                       ("use_rslora_string", {"use_rslora": "false"}),
                       ("patterns_not_objects", {"rank_pattern": "x", "alpha_pattern": 3})):
        add(f"s_{name}", "patterns", dm(**over))
    dtext = json.dumps(dmeta(alpha_pattern={C: 1.0}))
    for name, old, new, exp in (("alpha_pattern_nan", f'"{C}": 1.0', f'"{C}": NaN', (3, 4)),
                                ("lora_alpha_1e400", '"unet.lora_alpha": 1.0', '"unet.lora_alpha": 1e400', (3, 4)),
                                ("r_5000_digits", '"unet.r": 1', f'"unet.r": {BIG}', None)):
        add(f"s_{name}", "patterns", dm(text=dtext.replace(old, new)), exp)
    for name, text in (("meta_not_json", "{"), ("meta_array", "[]"), ("meta_deep", '{"unet.r": ' + nested() + "}")):
        add(f"s_{name}", "patterns", dm(text=text))

    # escape: control/bidi characters in file and directory names (one case per character, since the
    # 'Wrote ...' line echoes them), tensor names and metadata (all characters at once).
    every = "".join(WEIRD.values()) + "\u061c\u200b\u2066\ufeff\u2060\x7f\x9b"
    for kind, ch in WEIRD.items():
        def named(d, ch=ch):
            sub = d / f"dir{ch}"
            sub.mkdir()
            return st_file(sub / f"in{ch}.safetensors", blora(), {f"k{ch}": f"v{ch}"}, ascii_json=False)
        add(f"e_file_{kind}", "escape", named, 0, preserve=True, out_name=f"out{ch}.safetensors")
    odd = lambda name, shape=(1,): [t(name, "F16", shape)]  # noqa: E731
    add("e_unmapped_tensor", "escape", lambda d: st_file(d / F, blora() + odd(f"note{every}"), ascii_json=False))
    add("e_error_quotes_name", "escape", lambda d: st_file(
        d / f"bad{every}.safetensors", odd(f"x{every}.lora.down.weight"),
        edit=lambda h: h[f"x{every}.lora.down.weight"].update(dtype=f"Q{every}")), 3)
    add("e_unpaired_key", "escape",
        lambda d: st_file(d / F, blora() + odd(f"unet.x{every}.lora_A.weight", (1, 4)), ascii_json=False), 4)
    add("e_meta_every_char", "escape",
        lambda d: st_file(d / F, blora(), {f"k{every}": f"v{every}", "ss_x": every}, ascii_json=False), 0,
        preserve=True)
    add("e_peft_dir_name", "escape", lambda d: peft_dir(d, name="peft" + every), 0, out_name="o" + every)
    return cases


def main(argv: list[str]) -> int:
    import tempfile

    root = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="hostile-"))
    root.mkdir(parents=True, exist_ok=True)
    cases = build(root)
    for category, n in Counter(c.category for c in cases).items():
        print(f"{category:10s} {n:4d}")
    print(f"{'total':10s} {len(cases):4d}   (in {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
