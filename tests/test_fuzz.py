"""Property-based fuzzing of everything that parses untrusted input: the safetensors header, the stored
manifest, tensor key names, and whole files through ``adapterctl.open`` and the inspect report.

Deterministic (derandomize=True, no example database). ADAPTERCTL_FUZZ_SCALE=10 runs 10x the examples.
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors import safe_open

import _fuzz_strategies as S
import adapterctl
from adapterctl.arch import known_architectures, load_arch
from adapterctl.errors import AdapterError
from adapterctl.format.constants import DIFFUSERS_METADATA_KEY, MANIFEST_KEY
from adapterctl.layouts.registry import writable
from adapterctl.format.manifest import Manifest, ModuleEntry, TensorKeys
from adapterctl.io.safetensors_file import SafetensorsFile
from adapterctl.layouts.keys import ParsedKey
from adapterctl.layouts.lycoris import SUFFIXES as LYCORIS_SUFFIXES
from adapterctl.layouts.registry import parse_key
from adapterctl.layouts.write import factor_names
from adapterctl.report import inspect_report

SCALE = float(os.environ.get("ADAPTERCTL_FUZZ_SCALE", "1"))


def fuzz(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example,
                                           HealthCheck.filter_too_much])


# Raw control, C1, bidi, zero-width, BOM and lone surrogates: must never reach a report unescaped (§22).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")
PARTS = {"down", "up", "alpha", "magnitude", "dora_scale", "expert_down", "expert_up", "router_weight", "router_bias",
         *LYCORIS_SUFFIXES}  # a LyCORIS key's part is its suffix
_NP = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1"}


def _write(tmp_path, data: bytes, name: str = "f.safetensors"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _header_or_none(path):
    """SafetensorsFile(path), or None when it refuses with an AdapterError; anything else propagates."""
    try:
        return SafetensorsFile(path)
    except AdapterError:
        return None


def _open_or_none(path):
    try:
        return adapterctl.open(path)
    except AdapterError:
        return None


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def _assert_report_ok(adapter):
    report = inspect_report(adapter)
    json.dumps(report, allow_nan=False)  # ValueError: the report holds NaN/inf (not valid JSON)
    for s in _strings(report):
        assert not UNSAFE.search(s), f"unescaped control/bidi character in report string {s!r}"


def _scalar(st_file, name: str) -> float:
    info = st_file.tensors[name]
    raw = st_file.read(name)
    if info.dtype == "BF16":
        return float(np.frombuffer(b"\0\0" + raw[:2], "<f4")[0])
    return float(np.frombuffer(raw, _NP[info.dtype])[0])


# -- 1. header reader --------------------------------------------------------------------------------
@fuzz(400)
@given(data=st.one_of(S.raw_file(), S.json_header_file()))
def test_header_reader_arbitrary_bytes(tmp_path, data):
    """SafetensorsFile on arbitrary bytes / JSON-ish headers raises only AdapterError subclasses.

    The header is the first thing read from a downloaded file: a RecursionError, ValueError (4300-digit
    int limit) or UnicodeError escaping here crashes the CLI with a traceback instead of exit code 3.
    """
    st_file = _header_or_none(_write(tmp_path, data))
    if st_file is not None:
        st_file.close()


@fuzz(300)
@given(case=S.mutated_vector())
def test_header_reader_mutated_vectors(tmp_path, case):
    """Flipped/inserted/deleted header bytes, bad length fields, truncation, appended bytes and structural
    JSON edits of the valid vectors raise only AdapterError subclasses: real corruption looks like this."""
    st_file = _header_or_none(_write(tmp_path, case))
    if st_file is not None:
        st_file.close()


# -- 2. differential against safetensors ----------------------------------------------------------
def _assert_safetensors_agrees(path, ours: SafetensorsFile):
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            theirs = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
            arrays = {k: f.get_tensor(k) for k, (dt, _) in theirs.items() if dt in _NP}
    except Exception as exc:  # noqa: BLE001 - any refusal by the real loader is the finding
        raise AssertionError(f"adapterctl accepted a file that safetensors rejects: {exc}") from None
    assert theirs == {k: (t.dtype, t.shape) for k, t in ours.tensors.items()}, "tensor names/dtypes/shapes differ"
    assert meta == ours.metadata, "metadata differs"
    for name, arr in arrays.items():
        assert arr.tobytes() == ours.read(name), f"tensor bytes of {name!r} differ"


@st.composite
def _candidate_file(draw):
    if draw(st.integers(0, 3)) == 0:
        return draw(S.mutated_vector())
    text, data = draw(S.near_valid_header())
    return S.with_length(S.encode_header(text, draw), data)


@fuzz(400)
@given(data=_candidate_file())
def test_accepted_files_load_in_safetensors(tmp_path, data):
    """Whatever adapterctl accepts, safetensors accepts too, with the same names, dtypes, shapes,
    metadata and bytes: FORMAT.md §1.1 promises that any safetensors loader reads our files unchanged,
    and a file we validate and then hand to diffusers/ComfyUI must not fail there."""
    path = _write(tmp_path, data)
    ours = _header_or_none(path)
    if ours is not None:
        with ours:
            _assert_safetensors_agrees(path, ours)


def test_header_cap_matches_safetensors(tmp_path):
    """safetensors refuses headers over 100_000_000 bytes (not 100 MiB): a header just above that is valid
    JSON for us, so adapterctl must refuse it as well."""
    n = 100_000_008
    path = _write(tmp_path, S.with_length(b"{}" + b" " * (n - 2)))
    ours = _header_or_none(path)
    try:
        if ours is not None:
            _assert_safetensors_agrees(path, ours)
    finally:
        if ours is not None:
            ours.close()
        path.unlink()


# -- 3. stored manifest ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tagged_files(tmp_path_factory):
    """Two adapterctl-written files: a B-LoRA tagged diffusers-old file and a kohya LoCon with F16 alphas."""
    out = tmp_path_factory.mktemp("tagged")
    with adapterctl.open(S.VECTORS_DIR / "valid_blora_old_diffusers.safetensors") as a:
        a.tag(preset="b-lora").save(out / "tagged.safetensors")
    with adapterctl.open(S.VECTORS_DIR / "valid_kohya_sgm_locon.safetensors") as a:
        a.convert("kohya").save(out / "kohya.safetensors")
    return _Quiet({name: S.split_file((out / f"{name}.safetensors").read_bytes()) for name in ("tagged", "kohya")})


class _Quiet(dict):
    def __repr__(self):
        return "<tagged_files>"


def _base_manifest(tagged_files, which: str) -> dict:
    return json.loads(tagged_files[which][0]["__metadata__"][MANIFEST_KEY])


NUMS = [math.nan, math.inf, -math.inf, 1e308, 10**30, -1, 0, 0.5, 2, 1, True, "1", None]
ARCH_VARIANTS = ["SDXL", " sdxl", "sdxl\n", "sdxl\t", "sdxl\x1b[31m", "sdxl\u202e", "sdxl\x00", "\ufeffsdxl",
                 "stable-diffusion-xl-v1-base", "Stable-Diffusion-XL-v1-base\t", "sd15", "", "ＳＤＸＬ", "sdxl/lora"]
ENTRY_FIELDS = ["module", "component", "block", "kind", "rank", "alpha", "scale", "rslora", "alpha_dtype",
                "dtype", "role", "role_source", "experts", "dora", "tensors"]
OPS = ["number", "number", "swap", "alpha_at_factor", "dup", "role", "arch", "layout", "module", "enum",
       "drop_entry", "drop_field", "tree", "tensor_key", "version"]


def _mutate_manifest(draw, m: dict, table: list, log: list) -> dict:
    keys = sorted({k for e in m["modules"] for k in e["tensors"].values()})
    arch_modules = st.sampled_from(sorted(load_arch("sdxl").modules)[:50] + [e["module"] for e in m["modules"]])
    for op in draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=3)):
        if not isinstance(m, dict) or not isinstance(m.get("modules"), list):
            break
        mods = m["modules"]
        good = [i for i, x in enumerate(mods) if isinstance(x, dict) and isinstance(x.get("tensors"), dict)]
        if not good and op not in ("arch", "layout", "tree", "version"):
            continue
        i = draw(st.sampled_from(good)) if good else None
        e = mods[i] if good else None
        if op == "number":
            field = draw(st.sampled_from(["alpha", "scale", "rank", "experts"]))
            raw_nums = st.sampled_from(["NaN", "1e400", "9" * 5000]).map(lambda t: S.raw(t, table))
            e[field] = draw(st.sampled_from(NUMS) | raw_nums)
            log.append(f"modules[{i}].{field} = {S._short(e[field], table)}")
        elif op == "swap":
            j, part = draw(st.sampled_from(good)), draw(st.sampled_from(["down", "up", "alpha"]))
            e["tensors"][part], mods[j]["tensors"][part] = mods[j]["tensors"].get(part), e["tensors"].get(part)
            log.append(f"swap tensors.{part} of modules[{i}] and modules[{j}]")
        elif op == "alpha_at_factor":
            e["tensors"]["alpha"] = draw(st.sampled_from(keys))
            log.append(f"modules[{i}].tensors.alpha = {e['tensors']['alpha']!r}")
        elif op == "dup":
            role = draw(st.sampled_from(["content", "style", None]))
            mods.append(json.loads(json.dumps(e)) | {"role": role, "role_source": "declared"})
            log.append(f"duplicate modules[{i}] with role {role!r}")
        elif op == "role":
            e["role"] = draw(st.sampled_from([None, "content", "style", "expert", "Content"]))
            e["role_source"] = draw(st.sampled_from([None, "declared", "inferred", "x"]))
            log.append(f"modules[{i}].role, role_source = {e['role']!r}, {e['role_source']!r}")
        elif op == "arch":
            m["architecture"] = draw(st.sampled_from(ARCH_VARIANTS))
            log.append(f"architecture = {m['architecture']!r}")
        elif op == "layout":
            m["layout"] = draw(st.sampled_from(["kohya", "diffusers", "diffusers-old", "diffusers-legacy-attn",
                                                "peft", "KOHYA", ""]))
            log.append(f"layout = {m['layout']!r}")
        elif op == "module":
            e["module"] = draw(arch_modules | arch_modules.map(lambda s: s + "\x1b[2J") | S.TEXT)
            log.append(f"modules[{i}].module = {e['module']!r}")
        elif op == "enum":
            field = draw(st.sampled_from(["component", "block", "kind", "dtype", "alpha_dtype", "method", "preset"]))
            value = draw(st.sampled_from(["unet", "text_encoder", "conv", "linear", "F16", "U8", "BF16", "conv_in",
                                          "down_blocks.1.resnets.0", "\x1b]0;pwned\x07", "a\u202eb"]) | S.TEXT)
            (m if field in ("method", "preset") else e)[field] = value
            log.append(f"{'' if field in ('method', 'preset') else f'modules[{i}].'}{field} = {value!r}")
        elif op == "drop_entry":
            mods.remove(e)
            log.append(f"delete modules[{i}]")
        elif op == "drop_field":
            where = draw(st.sampled_from(["", f"modules[{i}].", f"modules[{i}].tensors."]))
            target = {"": m, f"modules[{i}].": e}.get(where, e["tensors"])
            if target:
                key = draw(st.sampled_from(sorted(target)))
                del target[key]
                log.append(f"delete {where}{key}")
        elif op == "tree":
            m = S.mutate_tree(draw, m, table, log)
        elif op == "tensor_key":
            part = draw(st.sampled_from(["down", "up", "alpha", "magnitude"]))
            e["tensors"][part] = draw(st.sampled_from(keys) | S.TEXT)
            log.append(f"modules[{i}].tensors.{part} = {e['tensors'][part]!r}")
        elif op == "version":
            m["version"] = draw(st.sampled_from([1, 1.0, "1", 2, 0, True, None]))
            log.append(f"version = {m['version']!r}")
    return m


class _Text(str):
    ops: tuple = ()

    def __repr__(self):
        return f"<manifest after {list(self.ops)}>"


@st.composite
def mutated_manifest(draw, base: dict):
    """The manifest JSON with 1-3 semantic mutations (a str whose repr lists them)."""
    table: list = []
    log: list = []
    text = S.encode_json(_mutate_manifest(draw, json.loads(json.dumps(base)), table, log), table)
    if draw(st.integers(0, 9)) == 0:  # raw text damage as well
        i = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(["", "}", ",", "\ufeff", "\ud800", "[" * 5000]))
        text = text[:i] + junk + text[i + 1:]
        log.append(f"text[{i}] = {junk[:8]!r}")
    out = _Text(text)
    out.ops = tuple(log)
    return out


def _file_with_manifest(tagged_files, which: str, text: str) -> bytes:
    header, blob = tagged_files[which]
    header = json.loads(json.dumps(header))
    header["__metadata__"][MANIFEST_KEY] = text
    return S.with_length(S.pad8(json.dumps(header).encode()), blob)


def _assert_manifest_agrees(a):
    """Every entry of the (stored) manifest agrees with the tensors it names."""
    st_file, m = a.source, a.manifest
    assert m.architecture in known_architectures(), f"architecture {m.architecture!r} is not a map key"
    named = []
    for e in m.modules:
        names = [k for k in e.tensors.model_dump().values() if k]
        assert all(k in st_file.tensors for k in names), f"{e.module}: names a missing tensor"
        named += names
        down, up = parse_key(e.tensors.down), parse_key(e.tensors.up)
        assert down and up and (down.part, up.part) in {("down", "up"), ("expert_down", "expert_up")}
        assert (down.component, down.path, down.qualifier) == (up.component, up.path, up.qualifier)
        shape = st_file.tensors[e.tensors.down].shape
        assert e.rank == (shape[1] if down.part == "expert_down" else shape[0]), f"{e.module}: rank {e.rank} vs {shape}"
        assert e.kind == ("conv" if len(shape) == 4 else "linear")
        spec = a.arch.get(e.module)
        assert spec is not None and (spec.block, spec.component) == (e.block, e.component)
        assert e.dtype == st_file.tensors[e.tensors.down].dtype, f"{e.module}: dtype {e.dtype!r} is not the tensors'"
        if m.layout == "kohya":
            base = e.tensors.down.removesuffix(".lora_down.weight")
            alpha_key = base + ".alpha" if base + ".alpha" in st_file.tensors else None
            assert e.tensors.alpha == alpha_key, f"{e.module}: alpha key {e.tensors.alpha!r}, expected {alpha_key!r}"
            alpha = _scalar(st_file, alpha_key) if alpha_key else float(e.rank)
            assert e.alpha == alpha, f"{e.module}: manifest alpha {e.alpha!r}, alpha tensor holds {alpha!r}"
            assert math.isclose(e.scale, alpha / e.rank), f"{e.module}: scale {e.scale!r} != {alpha}/{e.rank}"
        elif e.tensors.alpha is None and DIFFUSERS_METADATA_KEY not in st_file.metadata:
            assert e.scale == 1.0, f"{e.module}: scale {e.scale!r}, but a diffusers file without alphas has scale 1"
    assert len(named) == len(set(named)), "a tensor is named by two manifest entries"
    downs = {k for k in st_file.tensors if (p := parse_key(k)) and p.part in ("down", "expert_down")}
    assert downs <= {e.tensors.down for e in m.modules}, "a LoRA branch is missing from the manifest"


@fuzz(300)
@given(data=st.data(), which=st.sampled_from(["tagged", "kohya"]))
def test_stored_manifest_agrees_with_tensors(tmp_path, tagged_files, data, which):
    """A mutated stored manifest is either refused with an AdapterError or agrees with the tensors:
    alpha/scale/rank/keys of every entry, no tensor named twice, every branch listed, and the report stays
    clean JSON. FORMAT.md §14: a manifest that disagrees with the tensors must be rejected, because every
    later operation (convert's alpha tensors, split, inspect) trusts it instead of re-reading the tensors."""
    text = data.draw(mutated_manifest(_base_manifest(tagged_files, which)), label="manifest")
    a = _open_or_none(_write(tmp_path, _file_with_manifest(tagged_files, which, text)))
    if a is not None:
        with a:
            _assert_manifest_agrees(a)
            _assert_report_ok(a)


@fuzz(300)
@given(data=st.data(), which=st.sampled_from(["tagged", "kohya"]))
def test_manifest_parser_raises_only_value_errors(tagged_files, data, which):
    """Manifest.model_validate_json / from_json on mutated manifest JSON raise only pydantic's
    ValidationError, and model_validate on the parsed dict only a ValueError: callers turn exactly these
    into an InvalidFile, so anything else escapes as a crash. (Observed: the JSON entry points raise only
    ValidationError; model_validate raises UnicodeEncodeError, a ValueError but not a ValidationError,
    when a validator message quotes a lone surrogate, e.g. modules[0].module = "\\ud800" with a
    role_source but no role.)"""
    text = data.draw(mutated_manifest(_base_manifest(tagged_files, which)), label="manifest")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    for parse, arg, allowed in ((Manifest.model_validate_json, text, ValidationError),
                                (Manifest.from_json, text, ValidationError), (Manifest.model_validate, parsed, ValueError)):
        try:
            parse(arg)
        except allowed:
            pass


# -- 4. key grammar -------------------------------------------------------------------------------
_KEY_PIECES = st.sampled_from(["lora_unet_", "lora_te1_", "lora_te_", "unet.", "unet.unet.", "text_encoder.",
                               "text_encoder_2.", "base_model.model.", "down_blocks.0.", "processor.", ""])
_KEY_SUFFIXES = st.sampled_from([".lora_down.weight", ".alpha", ".lora_A.weight", ".lora_B.content.weight",
                                 ".lora_magnitude_vector", ".lora_magnitude_vector.weight", ".lora.up.weight",
                                 ".to_q_lora.down.weight", ".lora_router.bias", ".hada_w1_a", "."])


@fuzz(1500)
@given(key=S.TEXT | st.text() | st.tuples(_KEY_PIECES, S.TEXT, _KEY_PIECES, S.TEXT, _KEY_SUFFIXES).map("".join))
def test_parse_key_total(key):
    """parse_key is total on arbitrary text (controls, surrogates): it returns None or a ParsedKey for that
    exact key with a known part; a raise here would abort reading a whole file over one odd tensor name."""
    pk = parse_key(key)
    assert pk is None or (isinstance(pk, ParsedKey) and pk.key == key and pk.part in PARTS)


def test_parse_key_cache_is_bounded_and_exact():
    """parse_key memoises short keys only (a library shares its key names): a cached answer is the
    uncached one, and a long key is never kept (bounded whatever a file claims)."""
    from adapterctl.layouts import registry

    key = "lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight"
    assert parse_key(key) == registry._parse(key) and parse_key(key) is parse_key(key)
    long_key = "lora_unet_" + "x" * registry.CACHED_KEY_CHARS + ".alpha"
    before = registry._parse_cached.cache_info().currsize
    assert parse_key(long_key) == registry._parse(long_key) is not None
    assert registry._parse_cached.cache_info().currsize == before
    assert registry._parse_cached.cache_info().maxsize == registry.CACHED_KEYS


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(alphabet='ab"\\[]{},:\x1f'), inner,
                                                                 max_size=4),
    max_leaves=24)


@fuzz(500)
@given(value=_JSON_VALUES, ensure_ascii=st.booleans())
def test_json_skeleton_matches_the_string_pattern(value, ensure_ascii):
    """The shape check drops string literals with str.split when it can; on every valid document that
    must give exactly what the careful regular expression gives, and the parse must be json's."""
    from adapterctl.io import safe_json

    text = json.dumps(value, ensure_ascii=ensure_ascii)
    assert safe_json._without_strings(text) == safe_json._STRINGS.sub('""', text)
    assert safe_json.loads(text) == value


@fuzz(500)
@given(text=st.text(alphabet='"\\[]{}:,0123456789.eE-+ abnultrf\u00e9\x00'))
def test_json_loads_rejects_or_agrees(text):
    """On arbitrary text (odd quotes, stray backslashes), safe_json either refuses with JsonRejected
    or returns what json does: the fast skeleton never lets a malformed document through."""
    from adapterctl.io import safe_json

    try:
        got = safe_json.loads(text)
    except safe_json.JsonRejected:
        return
    assert got == json.loads(text)


def test_json_shape_limits_ignore_strings():
    """Brackets, digits and commas inside strings do not count toward depth, number length or items,
    on both paths (split and regex); outside strings they do."""
    from adapterctl.io import safe_json

    inside = json.dumps({"a": "[" * 100 + "9" * 100 + "\\\"" + "{" * 100})
    assert safe_json.loads(inside)["a"].startswith("[[")
    for doc, reason in (("[" * 65 + "]" * 65, "nested deeper"), ("[" + "9" * 41 + "]", "more than 40 characters")):
        for padded in (doc, "[" + json.dumps("\"" * 10) + "," + doc + "]"):  # plain, and with escapes
            with pytest.raises(safe_json.JsonRejected, match=reason):
                safe_json.loads(padded)
    big = "[" + json.dumps("y" * (safe_json.SPLIT_MAX_CHARS + 1)) + "," + "[" * 64 + "]" * 64 + "]"
    with pytest.raises(safe_json.JsonRejected, match="nested deeper"):  # the regex path, by size
        safe_json.loads(big)


def test_factor_names_round_trip():
    """For every SDXL module, every writable layout, with/without role qualifier and DoRA: the keys the
    writer produces parse back to the same branch and the right part. Otherwise adapterctl writes files
    it (or any reader using the same grammar) cannot read back."""
    arch = load_arch("sdxl")
    kohya = arch.kohya_names()
    failures = []
    for spec in arch.modules.values():
        for dora in (False, True):
            entry = ModuleEntry(module=spec.name, component=spec.component, block=spec.block, kind=spec.kind,
                                rank=4, alpha=4.0, scale=1.0, dtype="F16", dora=dora,
                                tensors=TensorKeys(down="d", up="u", magnitude="m.dora_scale" if dora else None))
            for target in writable():
                for qual in ((None,) if target == "kohya" else (None, "content", "style")):
                    names = factor_names(arch, entry, target, **({"qualifier": qual} if qual else {}))
                    for part, key in names.items():
                        pk = parse_key(key)
                        want = "dora_scale" if part == "magnitude" and target == "kohya" else part
                        ok = pk is not None and pk.part == want and pk.qualifier == qual
                        if ok and target == "kohya":
                            ok = kohya.get(key.split(".")[0]) == spec.name
                        elif ok:
                            ok = pk.path == spec.path and pk.component == (spec.component if target == "diffusers" else None)
                        if not ok:
                            failures.append((spec.name, target, qual, part, key, pk))
    assert not failures, f"{len(failures)} keys do not parse back, e.g. {failures[:3]}"


# -- 5. whole files ---------------------------------------------------------------------------------
@fuzz(400)
@given(case=S.mutated_vector())
def test_open_mutated_vectors(tmp_path, case):
    """adapterctl.open on corrupted vectors raises only AdapterError subclasses; when it opens, the inspect
    report is valid JSON (no NaN/inf: a corrupted F16 alpha decodes to NaN) and every string in it is
    escaped (FORMAT.md §22), since `inspect --json` output goes to terminals, logs and CI tools."""
    a = _open_or_none(_write(tmp_path, case))
    if a is not None:
        with a:
            _assert_report_ok(a)


def _listing_outcome(path, *, full: bool):
    """What the library listing concludes about one file: the header-only path or the full open."""
    from adapterctl.library.read import read_summary

    try:
        return ("ok", read_summary(path, full=full)[0])
    except AdapterError as exc:
        return ("refused", type(exc).__name__, exc.message, exc.code)


@fuzz(400)
@given(case=st.one_of(S.mutated_vector(pool=S.FOREIGN_VECTORS), st.sampled_from(sorted(S.FOREIGN_VECTORS.values())),
                      S.mutated_vector()))
def test_listing_summary_matches_open(tmp_path, case):
    """`ls` reads a file without a manifest from its header alone (header.summarize, no alpha value
    read); `inspect` and every other command open it in full. On valid and corrupted files alike both
    must conclude the same: ok with the same architecture, layout, method, roles and ranks, or the
    same refusal with the same message. Otherwise `ls` would call ok a file that inspect refuses."""
    path = _write(tmp_path, bytes(case))
    assert _listing_outcome(path, full=False) == _listing_outcome(path, full=True)


_SAME_SIZE_DTYPES = {1: ["U8", "I8", "BOOL", "F8_E4M3"], 2: ["F16", "BF16", "I16", "U16"], 4: ["F32", "I32", "U32"],
                     8: ["F64", "I64", "U64"]}


def _header_edits(buf: bytes):
    """Every single-tensor edit that keeps the file a valid safetensors file: a key renamed past
    every grammar, a dtype of the same width, a shape with the same number of elements."""
    head, data = S.split_file(buf)
    for name in [k for k in head if k != "__metadata__"]:
        spec = head[name]
        width = {d: w for w, ds in _SAME_SIZE_DTYPES.items() for d in ds}[spec["dtype"]]
        edits = [("rename", {**{k: v for k, v in head.items() if k != name}, name + "_x": spec})]
        edits += [(f"dtype {d}", {**head, name: {**spec, "dtype": d}})
                  for d in _SAME_SIZE_DTYPES[width] if d != spec["dtype"]]
        shape = spec["shape"]
        for new in ([int(np.prod(shape))], [1, *shape], shape[::-1], []):
            if new != shape and int(np.prod(new)) == int(np.prod(shape)):
                edits.append((f"shape {new}", {**head, name: {**spec, "shape": new}}))
        for what, edited in edits:
            yield f"{name} {what}", S.with_length(S.pad8(json.dumps(edited).encode()), data)


def test_listing_summary_matches_open_on_header_edits(tmp_path):
    """The deterministic half of the check above: every single-tensor edit of every stripped vector
    (a branch losing its partner, router or alpha; an alpha of an unreadable dtype or the wrong
    shape; conv and linear shapes swapped) gets the same conclusion from both paths."""
    checked, disagreements = 0, []
    for vector, buf in S.FOREIGN_VECTORS.items():
        for what, edited in _header_edits(buf):
            path = _write(tmp_path, edited)
            fast, full = _listing_outcome(path, full=False), _listing_outcome(path, full=True)
            checked += 1
            if fast != full:
                disagreements.append(f"{vector}: {what}: {fast} != {full}")
    assert checked > 500 and not disagreements, "\n".join(disagreements[:5])


def test_foreign_vectors_take_the_header_path(tmp_path):
    """The stripped vectors really exercise the header-only path (no manifest, summarize answers),
    and it reads no tensor byte: SafetensorsFile.read is never called."""
    from adapterctl.header import open_source, summarize

    answered = 0
    for i, buf in enumerate(S.FOREIGN_VECTORS.values()):
        path = _write(tmp_path, buf, f"{i}.safetensors")
        st_file, _ = open_source(path)
        with st_file:
            st_file.read = None  # any tensor read fails with a TypeError
            try:
                answered += summarize(path, st_file) is not None
            except AdapterError:
                pass
    assert answered >= len(S.FOREIGN_VECTORS) - 2, answered


@fuzz(300)
@given(data=st.data(), which=st.sampled_from(["tagged", "kohya", "vector"]))
def test_error_messages_are_escaped(tmp_path, tagged_files, data, which):
    """The message and hint of every AdapterError from a hostile file contain no raw control/bidi
    characters: the CLI prints them verbatim on stderr (FORMAT.md §22: strings from files are escaped)."""
    if which == "vector":
        blob = data.draw(S.mutated_vector(), label="file")
    else:
        text = data.draw(mutated_manifest(_base_manifest(tagged_files, which)), label="manifest")
        blob = _file_with_manifest(tagged_files, which, text)
    try:
        adapterctl.open(_write(tmp_path, blob)).close()
    except AdapterError as exc:
        for text in (exc.message, exc.hint or ""):
            assert not UNSAFE.search(text), f"unescaped character in error: {text!r}"
